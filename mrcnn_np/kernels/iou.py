"""The pairwise IoU formula, in place: shared by ``boxes`` and ``kernels.nms``.

A kernel (see ``mrcnn_np.kernels``): no checks; coordinates and areas of one
float dtype, finite. Kept apart so that ``boxes.box_iou``, ``boxes.nms_naive``
and the sweep NMS compute the very same numbers (``nms`` equals ``nms_naive``
bit for bit because both compare the output of this one function).

Written in place, so that ``box_iou`` of 100 ground-truth boxes against 200k
anchors peaks at about three result-sized arrays. Measured
(``benchmarks/bench_nms.py --cpu``, float32, process CPU time, min of 7
repeats, 2-core build machine under load): ``box_iou`` of 12,000 x 100 boxes
7.0 ms, torchvision's ``box_iou`` 60.0 ms (0.12x), equal results.
"""
from __future__ import annotations

import numpy as np

__all__ = ["pair_iou"]


def pair_iou(ax1, ay1, ax2, ay2, aa, bx1, by1, bx2, by2, ba):
    """IoU of broadcast pairs; the ONE formula every IoU of ``boxes`` goes through.

    a* and b* are coordinate arrays that broadcast together; aa, ba the areas.
    ``inter = max(min(x2) - max(x1), 0) * max(min(y2) - max(y1), 0)``,
    ``iou = inter / (aa + ba - inter)``, and 0 where the union is <= 0
    (two degenerate boxes), where torchvision would give NaN.
    Keeping a single formula (``box_iou``, ``nms_naive`` and the sweep of
    ``kernels.nms`` all call it) makes ``nms`` and ``nms_naive`` agree bit for bit.
    """
    # written in place (peak memory ~3 result-sized arrays for box_iou of
    # 100 ground-truth boxes against 200k anchors)
    iw = np.minimum(ax2, bx2)
    iw -= np.maximum(ax1, bx1)
    np.maximum(iw, 0, out=iw)
    ih = np.minimum(ay2, by2)
    ih -= np.maximum(ay1, by1)
    np.maximum(ih, 0, out=ih)
    iw *= ih                                   # intersection
    union = np.add(aa, ba, out=ih)
    union -= iw
    positive = union > 0
    np.divide(iw, union, out=iw, where=positive)
    if not positive.all():
        iw[~positive] = 0
    return iw
