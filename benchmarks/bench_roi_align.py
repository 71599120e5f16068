"""Speed of mrcnn_np.roi_align against torchvision's C++ CPU kernel.

Problem (the box and mask heads of Mask R-CNN on one FPN level): 512 random
boxes on a (1, 256, 50, 50) float32 feature map (an 800x800 image at stride
16, spatial_scale 1/16), sampling_ratio 2, outputs 7x7 and 14x14. Times, in
the same process and interleaved:

- forward (``roi_align_forward``) and forward + backward (``+ roi_align_backward``);
- torchvision's ``roi_align`` forward and forward + autograd backward, when
  torch is importable (run this script with a Python that has torchvision);
- a dense float32 GEMM (1024 x 1024 x 1024) for scale: RoIAlign does
  ``2 * nnz * C`` flops (nnz = stored weights of its sparse matrix), and the
  ratio of its GFLOP/s to GEMM's shows how far a gather-bound op is from the
  machine's arithmetic peak.

Prints milliseconds (min over repeats, numpy and torchvision interleaved: the
machine is shared); the GEMM rate is the best of probes taken between rows.
Run with the OpenBLAS overrides of the build machine removed, e.g.
``env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/bench_roi_align.py``.
"""
from __future__ import annotations

import argparse
import sys

import numpy as np

from _common import best_seconds  # noqa: E402  (also puts the checkout on sys.path)

from mrcnn_np.roi_align import roi_align_backward, roi_align_forward  # noqa: E402


def random_boxes(rng, k, image=800):
    """(k, 5) boxes inside an image, sides log-uniform in [16, 512] px."""
    wh = np.exp(rng.uniform(np.log(16), np.log(512), (k, 2)))
    x1y1 = rng.uniform(0, 1, (k, 2)) * (image - wh)
    return np.column_stack([np.zeros(k), x1y1, x1y1 + wh]).astype(np.float32)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--boxes", type=int, default=512)
    args = parser.parse_args(argv)
    try:
        import torch
        import torchvision
        torch.set_num_threads(2)
    except ImportError:
        torch = torchvision = None

    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 256, 50, 50), dtype=np.float32)
    boxes = random_boxes(rng, args.boxes)
    kw = dict(spatial_scale=1 / 16, sampling_ratio=2, aligned=False)

    a = rng.standard_normal((1024, 1024), dtype=np.float32)
    b = rng.standard_normal((1024, 1024), dtype=np.float32)
    t_gemm = best_seconds(lambda: a @ b, args.repeats)  # probed again after every row; min kept
    rows = []
    for size in (7, 14):
        out, cache = roi_align_forward(x, boxes, size, **kw)
        dout = rng.standard_normal(out.shape, dtype=np.float32)
        flops = 2.0 * cache.matrix.nnz * x.shape[1]

        def np_fwd():
            roi_align_forward(x, boxes, size, **kw)

        def np_fwd_bwd():
            _, c = roi_align_forward(x, boxes, size, **kw)
            roi_align_backward(dout, c)

        tv_fwd = tv_fwd_bwd = None
        if torch is not None:
            xt = torch.tensor(x)
            bt = torch.tensor(boxes)
            dt = torch.tensor(dout)
            want = torchvision.ops.roi_align(xt, bt, size, **kw).numpy()
            err = float(np.abs(out - want).max())
            assert err < 1e-4, f"mismatch with torchvision: {err}"

            def tv_fwd():
                with torch.no_grad():
                    torchvision.ops.roi_align(xt, bt, size, **kw)

            def tv_fwd_bwd():
                xg = xt.clone().requires_grad_(True)
                torchvision.ops.roi_align(xg, bt, size, **kw).backward(dt)

        for name, fn, tfn, nflop in (("fwd", np_fwd, tv_fwd, flops),
                                     ("fwd+bwd", np_fwd_bwd, tv_fwd_bwd, 2 * flops)):
            t = tt = float("inf")
            for _ in range(args.repeats):  # interleaved, so both see the same load
                t = min(t, best_seconds(fn, 1))
                if tfn is not None:
                    tt = min(tt, best_seconds(tfn, 1))
            rows.append((size, name, t, tt, nflop))
            t_gemm = min(t_gemm, best_seconds(lambda: a @ b, 3))

    gemm_gflops = 2 * 1024**3 / t_gemm / 1e9
    print(f"float32 GEMM 1024^3: {t_gemm * 1e3:.1f} ms, {gemm_gflops:.0f} GFLOP/s")
    print(f"{args.boxes} boxes on {x.shape} float32, sampling_ratio 2, spatial_scale 1/16")
    header = f"{'output':>6} {'pass':>8} {'numpy ms':>9} {'GFLOP/s':>8} {'/GEMM':>6}"
    if torch is not None:
        header += f" {'torchvision ms':>15} {'speed-up':>9}"
    print(header)
    for size, name, t, tt, nflop in rows:
        gf = nflop / t / 1e9
        line = f"{size:>4}^2 {name:>8} {t * 1e3:9.1f} {gf:8.1f} {gf / gemm_gflops:6.3f}"
        if torch is not None:
            line += f" {tt * 1e3:15.1f} {tt / t:8.1f}x"
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
