"""Speed engines: the fast paths behind the stage modules, kept apart from the math.

A kernel computes exactly what the naive reference of its stage module
computes (``ops.conv.conv2d_naive``, ``roi_align.roi_align_naive``,
``boxes.nms_naive``), only faster, with no Python loop over pixels, boxes or
samples. It

- trusts its inputs: it does no checks. The public function of the stage
  module checks its arguments once and then calls the kernel;
- is tested against the naive version (``tests/test_kernels.py``, and the
  fast-equals-naive tests of each stage), on random shapes, float32 and float64;
- is imported only by the stage modules and by ``benchmarks/``. It is not public
  API: names, signatures and tuning constants may change with the engine.

Each kernel's module docstring states its measured speed-ups.

- ``kernels.conv``       blocked-GEMM convolution and transposed convolution
                         (``ops.conv``)
- ``kernels.roi_align``  RoIAlign as a sparse matrix or as two separable sparse
                         factors, and the cost model that picks one (``roi_align``)
- ``kernels.iou``        the one pairwise IoU formula, in place (``boxes``)
- ``kernels.nms``        the sweep NMS: x windows, width bands, a kept-box loop
                         and a pair sweep (``boxes.nms``, ``boxes.batched_nms``)
- ``kernels.elementwise`` ``np.where(mask, x, 0)`` as a bit mask (``ops.activations``)
- ``kernels.topk``       the k smallest of each row in stable-sort order, without
                         sorting the row (a per-level top-k)
- ``kernels.pool``       max pooling as a pass over the columns, then the rows
                         (``ops.pool``'s inference path)
- ``kernels.arena``      ``np.empty`` from a per-thread pool of buffers no array
                         refers to any more (the inference path's outputs)
"""
