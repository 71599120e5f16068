"""Box geometry: area, IoU, clipping, the box coder and non-maximum suppression.

Shape shorthand: N, M boxes; k classes side by side in a code array (N, 4k).

Coordinates: a box is ``(x1, y1, x2, y2)`` in input-image pixels, floating point,
with width ``x2 - x1`` and height ``y2 - y1`` (no "+1"). A box with
``x2 <= x1`` or ``y2 <= y1`` is degenerate: its area is <= 0 and its IoU with
anything is 0.

Every function here is a twin of a torchvision function (``torchvision.ops``
or ``torchvision.models.detection._utils.BoxCoder``) with the same name,
argument order and meaning; the docstring of each names its twin and says
where ours differs. Nothing here has a gradient: in Mask R-CNN gradients stop
at proposals, and the box coder's targets are constants.

dtype: results keep the dtype of the input boxes (float32 or float64); index
results are int64. Two box arrays given to one function must share a dtype.

NMS: ``nms_naive`` is the greedy rule as a loop, the definition and the
reference. ``nms`` and ``batched_nms`` check their arguments once and call
the sweep of ``mrcnn_np.kernels.nms`` (x windows, width bands, a kept-box loop
and a pair sweep), which equals ``nms_naive`` bit for bit; its docstring has
the proof and the measured speed-ups against torchvision.
"""
from __future__ import annotations

import math
import numbers

import numpy as np

from ._checks import check_array, check_coordinates, check_finite, check_float, check_same_dtype
from .kernels import nms as _kernel
from .kernels.iou import pair_iou

__all__ = [
    "box_area",
    "box_iou",
    "clip_boxes_to_image",
    "remove_small_boxes",
    "nms",
    "nms_naive",
    "batched_nms",
    "batched_nms_naive",
    "encode_boxes",
    "decode_boxes",
    "DEFAULT_BBOX_XFORM_CLIP",
]

#: torchvision's ``BoxCoder`` clamp for dw, dh before ``exp``: log(1000 / 16),
#: i.e. a decoded box is at most 62.5 times wider/taller than its reference.
DEFAULT_BBOX_XFORM_CLIP = math.log(1000.0 / 16)


# --------------------------------------------------------------------------- checks
def _check_boxes(name, boxes):
    check_array(name, boxes, shape=("N", 4), dtype_kind="f")
    # finite, and small enough that areas and unions stay finite (float16 boxes are
    # computed in float32, see _upcast16)
    check_coordinates(name, boxes, np.promote_types(boxes.dtype, np.float32))
    return boxes


def _refuse16(name, array):
    if array.dtype == np.float16:
        raise TypeError(f"{name} must be float32 or float64, got float16 (the box coder refuses it: cast to float32)")


def _upcast16(*arrays):
    """float16 arrays as float32, others unchanged: torchvision's ``_upcast``.

    An area overflows float16 at 256 x 256 pixels (its largest value is 65504), so
    ``box_area``, ``box_iou`` and the NMS functions compute float16 boxes in float32
    (torchvision's ``box_area``/``box_iou`` do the same; its CPU ``nms`` refuses
    float16). The cast is exact.
    """
    return tuple(a.astype(np.float32) if a.dtype == np.float16 else a for a in arrays)


def _check_scores(name, scores, n, boxes_name="boxes"):
    check_array(name, scores, ndim=1, dtype_kind="f")
    if scores.shape[0] != n:
        raise ValueError(
            f"{name} must have shape ({n},) to match {boxes_name} ({n}, 4), got {scores.shape}"
        )
    check_finite(name, scores)
    return scores


def _check_weights(weights, dtype, name="weights"):
    if isinstance(weights, (str, bytes, dict)) or not all(
            isinstance(v, numbers.Real) and not isinstance(v, bool) for v in np.ravel(np.asarray(weights, object))):
        raise TypeError(f"{name} must be 4 real numbers, got {weights!r}")
    w = np.asarray(weights, dtype=np.float64)
    if w.shape != (4,):
        raise ValueError(f"{name} must have shape (4,), got {w.shape}")
    if not (np.isfinite(w).all() and (w > 0).all()):
        raise ValueError(f"{name} must be 4 positive finite numbers, got {weights!r}")
    return w.astype(dtype)


# --------------------------------------------------------------------------- geometry
def box_area(boxes):
    """Area of each box; twin of ``torchvision.ops.box_area``.

    boxes: (N, 4) float xyxy, finite. Returns (N,) of the same dtype (float32 for
    float16 boxes, computed in float32 as torchvision does),
    ``(x2 - x1) * (y2 - y1)``. Kept as torchvision has it on purpose: a box
    inverted along one axis (x2 < x1 or y2 < y1, not both) gets a NEGATIVE area,
    not an error (the twin's semantics; ``box_iou`` and NMS treat such a box as
    degenerate, IoU 0).
    """
    _check_boxes("boxes", boxes)
    (boxes,) = _upcast16(boxes)
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def box_iou(boxes1, boxes2):
    """Pairwise intersection over union; twin of ``torchvision.ops.box_iou``.

    boxes1: (N, 4) float xyxy; boxes2: (M, 4), same dtype; finite.
    Returns (N, M) of that dtype, ``iou[i, j] = area(b1_i & b2_j) / area(b1_i | b2_j)``
    (float16 boxes: computed and returned in float32, as torchvision's ``_upcast``).
    Difference from torchvision: where the union is 0 (both boxes degenerate)
    the IoU is 0 instead of NaN (no silent NaN, and NaN never passes a ``>``
    test anyway, so matching and NMS behave the same).
    ``inter = max(min(x2) - max(x1), 0) * max(min(y2) - max(y1), 0)`` and
    ``iou = inter / (area1 + area2 - inter)``, written in place by
    ``kernels.iou.pair_iou``: the one formula ``nms`` and ``nms_naive`` share.
    """
    _check_boxes("boxes1", boxes1)
    _check_boxes("boxes2", boxes2)
    check_same_dtype(boxes1=boxes1, boxes2=boxes2)
    return _box_iou(*_upcast16(boxes1, boxes2))


def _box_iou(boxes1, boxes2):
    """:func:`box_iou` without the checks (for the stages)."""
    a1 = (boxes1[:, 2] - boxes1[:, 0]) * (boxes1[:, 3] - boxes1[:, 1])
    a2 = (boxes2[:, 2] - boxes2[:, 0]) * (boxes2[:, 3] - boxes2[:, 1])
    c = boxes1[:, :, None]  # (N, 4, 1): c[:, k] is coordinate k as a column
    return pair_iou(c[:, 0], c[:, 1], c[:, 2], c[:, 3], a1[:, None],
                    boxes2[:, 0], boxes2[:, 1], boxes2[:, 2], boxes2[:, 3], a2)


def _check_size(size):
    if not isinstance(size, (tuple, list)) or len(size) != 2:
        raise ValueError(f"size must be a pair (height, width), got {size!r}")
    for v in size:
        if isinstance(v, bool) or not isinstance(v, numbers.Real) or not 0 <= v < math.inf:
            raise ValueError(f"size must be a pair of finite non-negative numbers (height, width), got {size!r}")
    return size


def clip_boxes_to_image(boxes, size):
    """Clamp boxes inside an image; twin of ``torchvision.ops.clip_boxes_to_image``.

    boxes: (..., 4k) float xyxy (any leading shape; k boxes side by side as in
    decoded class-specific boxes), finite. size: (height, width) of the image.
    Returns a new array of the same shape and dtype with x in [0, width] and
    y in [0, height]. Like torchvision's, any number of leading axes is
    accepted, a single box (4,) included: only the last axis must hold whole
    boxes. float16 is clipped in float16 (exact: a clamp does not round).
    """
    check_array("boxes", boxes, dtype_kind="f")
    if boxes.ndim < 1 or boxes.shape[-1] % 4 != 0:
        raise ValueError(f"boxes must have shape (..., 4k), got {boxes.shape}")
    check_finite("boxes", boxes)
    return _clip_boxes_to_image(boxes, _check_size(size))


def _clip_boxes_to_image(boxes, size):
    """:func:`clip_boxes_to_image` without the checks (for the stages)."""
    height, width = size
    out = boxes.copy()
    np.clip(out[..., 0::2], 0, width, out=out[..., 0::2])
    np.clip(out[..., 1::2], 0, height, out=out[..., 1::2])
    return out


def remove_small_boxes(boxes, min_size):
    """Indices of boxes at least ``min_size`` wide and tall; twin of
    ``torchvision.ops.remove_small_boxes``.

    boxes: (N, 4) float xyxy, finite; min_size: float >= 0.
    Returns keep (K,) int64, increasing, where ``w >= min_size and h >= min_size``
    (float16 boxes: widths computed in float32, so that no difference overflows).
    """
    _check_boxes("boxes", boxes)
    return _remove_small_boxes(*_upcast16(boxes), check_float("min_size", min_size, minimum=0.0))


def _remove_small_boxes(boxes, min_size):
    """:func:`remove_small_boxes` without the checks (for the stages)."""
    ws = boxes[:, 2] - boxes[:, 0]
    hs = boxes[:, 3] - boxes[:, 1]
    return np.flatnonzero((ws >= min_size) & (hs >= min_size)).astype(np.int64)


# --------------------------------------------------------------------------- box coder
def encode_boxes(reference_boxes, proposals, weights):
    """Regression targets that move ``proposals`` onto ``reference_boxes``.

    Twin of ``torchvision.models.detection._utils.encode_boxes`` (used by
    ``BoxCoder.encode``). Argument order as torchvision: the boxes to reach
    (ground truth) first, the boxes we start from (anchors / proposals) second.

    reference_boxes: (N, 4) float xyxy, the targets g.
    proposals: (N, 4) float xyxy, the references a, same dtype.
    weights: 4 positive numbers (wx, wy, ww, wh): (1, 1, 1, 1) in the RPN,
        (10, 10, 5, 5) in the box head.
    Returns (N, 4) of the dtype of the boxes::

        dx = wx * (gcx - acx) / aw      dw = ww * log(gw / aw)
        dy = wy * (gcy - acy) / ah      dh = wh * log(gh / ah)

    with centres ``cx = x1 + 0.5 * w``. Raises ValueError for a box with
    non-positive width or height (the log would be -inf or NaN). float16 is
    refused (TypeError; cast to float32): its 11-bit significand cannot carry
    a regression target.
    """
    _check_boxes("reference_boxes", reference_boxes)
    _check_boxes("proposals", proposals)
    check_same_dtype(reference_boxes=reference_boxes, proposals=proposals)
    _refuse16("reference_boxes", reference_boxes)
    if reference_boxes.shape[0] != proposals.shape[0]:
        raise ValueError(
            f"proposals must have shape ({reference_boxes.shape[0]}, 4) to match "
            f"reference_boxes, got {proposals.shape}"
        )
    weights = _check_weights(weights, reference_boxes.dtype)
    for name, b in (("proposals", proposals), ("reference_boxes", reference_boxes)):
        if b.size and not ((b[:, 2] > b[:, 0]).all() and (b[:, 3] > b[:, 1]).all()):
            raise ValueError(f"{name} must have positive widths and heights, got a degenerate box")
    return _encode_boxes(reference_boxes, proposals, weights)


def _encode_boxes(reference_boxes, proposals, weights):
    """:func:`encode_boxes` without the checks (for the stages): weights (4,) in the boxes' dtype."""
    wx, wy, ww, wh = weights
    ex_w = proposals[:, 2] - proposals[:, 0]
    ex_h = proposals[:, 3] - proposals[:, 1]
    gt_w = reference_boxes[:, 2] - reference_boxes[:, 0]
    gt_h = reference_boxes[:, 3] - reference_boxes[:, 1]
    ex_cx = proposals[:, 0] + 0.5 * ex_w
    ex_cy = proposals[:, 1] + 0.5 * ex_h
    gt_cx = reference_boxes[:, 0] + 0.5 * gt_w
    gt_cy = reference_boxes[:, 1] + 0.5 * gt_h
    dx = wx * (gt_cx - ex_cx) / ex_w
    dy = wy * (gt_cy - ex_cy) / ex_h
    dw = ww * np.log(gt_w / ex_w)
    dh = wh * np.log(gt_h / ex_h)
    return np.stack([dx, dy, dw, dh], axis=1)


def decode_boxes(rel_codes, boxes, weights, bbox_xform_clip=DEFAULT_BBOX_XFORM_CLIP):
    """Apply regression codes to boxes; twin of torchvision's ``BoxCoder.decode_single``.

    rel_codes: (N, 4k) float deltas, k >= 1 sets side by side (one per class
        in the box head), each (dx, dy, dw, dh).
    boxes: (N, 4) float xyxy references (anchors / proposals), same dtype.
    weights: 4 positive numbers (wx, wy, ww, wh), the ones used to encode.
    bbox_xform_clip: dw/wx... are divided by the weights, then dw and dh are
        clamped from above at this value before ``exp`` (default log(1000/16));
        at most log(largest float of the dtype), so that ``exp`` stays finite.
    Returns (N, 4k) xyxy boxes of the same dtype::

        cx' = dx / wx * w + cx     w' = exp(min(dw / ww, clip)) * w
        x1' = cx' - 0.5 * w'       x2' = cx' + 0.5 * w'   (same for y)

    Differences from torchvision: boxes and codes must share a dtype (torchvision
    casts boxes to the codes' dtype); non-finite codes raise ValueError, and so
    do codes so large that the decoded boxes overflow (a very negative dw/dh
    just gives a zero width/height: exp underflows to 0, silently); float16 is
    refused (TypeError; cast to float32).
    """
    check_array("rel_codes", rel_codes, ndim=2, dtype_kind="f")
    _refuse16("rel_codes", rel_codes)
    if rel_codes.shape[1] == 0 or rel_codes.shape[1] % 4 != 0:
        raise ValueError(f"rel_codes must have shape (N, 4k) with k >= 1, got {rel_codes.shape}")
    _check_boxes("boxes", boxes)
    check_same_dtype(rel_codes=rel_codes, boxes=boxes)
    if rel_codes.shape[0] != boxes.shape[0]:
        raise ValueError(
            f"boxes must have shape ({rel_codes.shape[0]}, 4) to match rel_codes, got {boxes.shape}"
        )
    check_finite("rel_codes", rel_codes)
    dtype = rel_codes.dtype
    # exp(clip) must be finite in the dtype (88.7 for float32, 709.8 for float64)
    clip = check_float("bbox_xform_clip", bbox_xform_clip, maximum=math.log(np.finfo(dtype).max))
    weights = _check_weights(weights, dtype)
    with np.errstate(over="ignore", under="ignore", invalid="ignore"):
        out = _decode_boxes(rel_codes, boxes, weights, clip)
    if out.size and not np.isfinite(out).all():
        raise ValueError("rel_codes are too large: the decoded boxes overflow the dtype")
    return out


def _decode_boxes(rel_codes, boxes, weights, bbox_xform_clip=DEFAULT_BBOX_XFORM_CLIP):
    """:func:`decode_boxes` without the checks (for the stages): weights (4,) in the codes' dtype."""
    dtype, clip = rel_codes.dtype, bbox_xform_clip
    wx, wy, ww, wh = weights
    widths = boxes[:, 2] - boxes[:, 0]
    heights = boxes[:, 3] - boxes[:, 1]
    ctr_x = boxes[:, 0] + 0.5 * widths
    ctr_y = boxes[:, 1] + 0.5 * heights
    dx = rel_codes[:, 0::4] / wx
    dy = rel_codes[:, 1::4] / wy
    dw = np.minimum(rel_codes[:, 2::4] / ww, dtype.type(clip))
    dh = np.minimum(rel_codes[:, 3::4] / wh, dtype.type(clip))
    pred_ctr_x = dx * widths[:, None] + ctr_x[:, None]
    pred_ctr_y = dy * heights[:, None] + ctr_y[:, None]
    half_w = 0.5 * (np.exp(dw) * widths[:, None])
    half_h = 0.5 * (np.exp(dh) * heights[:, None])
    out = np.stack(
        [pred_ctr_x - half_w, pred_ctr_y - half_h, pred_ctr_x + half_w, pred_ctr_y + half_h],
        axis=2,
    )
    return out.reshape(rel_codes.shape)


# --------------------------------------------------------------------------- NMS
def _check_nms_args(boxes, scores, iou_threshold):
    """Checked (boxes, scores, iou_threshold); float16 boxes and scores as float32."""
    _check_boxes("boxes", boxes)
    _check_scores("scores", scores, boxes.shape[0])
    check_same_dtype(boxes=boxes, scores=scores)
    # an IoU lies in [0, 1]: a threshold outside it is a mistake, not a setting
    iou_threshold = check_float("iou_threshold", iou_threshold, minimum=0.0, maximum=1.0)
    return (*_upcast16(boxes, scores), iou_threshold)


def _check_idxs(idxs, n):
    check_array("idxs", idxs, ndim=1, dtype_kind="iu")
    if idxs.shape[0] != n:
        raise ValueError(f"idxs must have shape ({n},) to match boxes ({n}, 4), got {idxs.shape}")
    return idxs


def _threshold_as(dtype, iou_threshold):
    """The threshold as a ``dtype`` scalar t' with ``iou > t'`` exactly when the
    real number ``iou > iou_threshold`` (the Python float).

    torchvision's C++ kernel compares a float IoU with a double threshold; a
    plain ``float32_array > 0.3`` in NumPy 2 would compare with float32(0.3),
    which is rounded *up* and so keeps a box whose IoU is exactly 0.3f. We take
    the largest ``dtype`` value <= the threshold instead.
    """
    # a computed IoU is never above 1, so every threshold >= 1 removes nothing;
    # clamping keeps the cast finite (1e40 would overflow float32)
    iou_threshold = min(iou_threshold, 2.0)
    t = np.asarray(iou_threshold, dtype=dtype)[()]
    if float(t) > iou_threshold:
        t = np.nextafter(t, dtype.type(-np.inf))
    return t


def _score_order(scores):
    """Indices by decreasing score; ties keep increasing index (a stable sort).

    torchvision's CPU ``nms`` gives the same order for equal scores.
    """
    return np.argsort(-scores, kind="stable").astype(np.int64)


def nms_naive(boxes, scores, iou_threshold):
    """Textbook greedy NMS (one IoU row per kept box); reference for ``nms``.

    Same arguments and result as :func:`nms`. Cost O(N * K) for K kept boxes.
    """
    boxes, scores, iou_threshold = _check_nms_args(boxes, scores, iou_threshold)
    iou_threshold = _threshold_as(boxes.dtype, iou_threshold)
    order = _score_order(scores)
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    keep = []
    while order.size:
        i = order[0]
        keep.append(i)
        rest = order[1:]
        iou = pair_iou(boxes[i, 0], boxes[i, 1], boxes[i, 2], boxes[i, 3], area[i],
                       boxes[rest, 0], boxes[rest, 1], boxes[rest, 2], boxes[rest, 3], area[rest])
        order = rest[~(iou > iou_threshold)]
    return np.asarray(keep, dtype=np.int64)


def batched_nms_naive(boxes, scores, idxs, iou_threshold):
    """``nms`` run separately on each value of ``idxs`` (a loop over the values);
    reference for :func:`batched_nms`. Same arguments and result."""
    boxes, scores, iou_threshold = _check_nms_args(boxes, scores, iou_threshold)
    _check_idxs(idxs, boxes.shape[0])
    keep = [np.flatnonzero(idxs == v)[nms_naive(boxes[idxs == v], scores[idxs == v], iou_threshold)]
            for v in np.unique(idxs)]
    keep = np.sort(np.concatenate(keep)) if keep else np.zeros(0, np.int64)
    return keep[_score_order(scores[keep])].astype(np.int64)  # ties: increasing index


def _nms(boxes, scores, idxs, iou_threshold):
    """nms / batched_nms on checked arguments: the score order and the threshold
    as torchvision has them, then the sweep of ``kernels.nms`` (idxs None: one category)."""
    order = _score_order(scores)
    if order.size == 0:
        return order
    t = _threshold_as(boxes.dtype, iou_threshold)
    groups = None if idxs is None else idxs[order]
    return order[_kernel.nms_ranked(boxes[order], groups, t)]


def nms(boxes, scores, iou_threshold):
    """Greedy non-maximum suppression; twin of ``torchvision.ops.nms``.

    boxes: (N, 4) float xyxy; scores: (N,) same dtype; iou_threshold: float in [0, 1].
    Returns keep (K,) int64: indices of the kept boxes by decreasing score.
    Visiting boxes by decreasing score, a box is removed when its IoU with an
    already kept box is > iou_threshold. Equal scores are visited in
    increasing index order (a stable sort), as torchvision's CPU kernel does.
    The IoU (computed in the boxes' dtype) is compared with the threshold as
    a real number, as torchvision compares float IoU with a double threshold.

    Fast path (``kernels.nms``): boxes are sorted by x once, so a box is
    only compared with the boxes in its x window. A kept-box loop runs while
    each kept box removes many others (dense clusters), then the boxes still
    undecided are scored pairwise in dense blocks and a greedy pass over the
    pair list visits only the boxes that suppress something.
    Equal to :func:`nms_naive` bit for bit (same IoU formula).

    iou_threshold must lie in [0, 1] (ValueError otherwise); float16 boxes and
    scores are computed in float32 (torchvision's CPU nms refuses float16; in
    float16 every IoU of boxes above 256 px would overflow).
    """
    boxes, scores, iou_threshold = _check_nms_args(boxes, scores, iou_threshold)
    return _nms(boxes, scores, None, iou_threshold)


def batched_nms(boxes, scores, idxs, iou_threshold):
    """NMS within each category; twin of ``torchvision.ops.batched_nms``.

    boxes: (N, 4) float xyxy; scores: (N,) same dtype; idxs: (N,) int category
    (class, FPN level, image) of each box; iou_threshold: float in [0, 1].
    Returns keep (K,) int64 by decreasing score (ties by increasing index).
    Boxes of different categories never suppress each other, so the result
    equals running :func:`nms` on each category and merging by score, exactly
    (torchvision's coordinate-offset trick can differ from that in the last
    float bit; ours tests the category directly). iou_threshold and float16:
    as :func:`nms`.
    """
    boxes, scores, iou_threshold = _check_nms_args(boxes, scores, iou_threshold)
    _check_idxs(idxs, boxes.shape[0])
    return _nms(boxes, scores, idxs, iou_threshold)
