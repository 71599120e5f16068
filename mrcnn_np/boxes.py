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
"""
from __future__ import annotations

import math
import numbers

import numpy as np

from ._checks import check_array, check_finite, check_float, check_same_dtype

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
    check_finite(name, boxes)
    return boxes


def _check_scores(name, scores, n, boxes_name="boxes"):
    check_array(name, scores, ndim=1, dtype_kind="f")
    if scores.shape[0] != n:
        raise ValueError(
            f"{name} must have shape ({n},) to match {boxes_name} ({n}, 4), got {scores.shape}"
        )
    check_finite(name, scores)
    return scores


def _check_weights(weights, dtype):
    try:
        w = np.asarray(weights, dtype=np.float64)
    except (TypeError, ValueError):
        raise TypeError(f"weights must be 4 real numbers, got {weights!r}") from None
    if w.shape != (4,):
        raise ValueError(f"weights must have shape (4,), got {w.shape}")
    if not (np.isfinite(w).all() and (w > 0).all()):
        raise ValueError(f"weights must be 4 positive finite numbers, got {weights!r}")
    return w.astype(dtype)


# --------------------------------------------------------------------------- geometry
def box_area(boxes):
    """Area of each box; twin of ``torchvision.ops.box_area``.

    boxes: (N, 4) float xyxy. Returns (N,) of the same dtype,
    ``(x2 - x1) * (y2 - y1)`` (negative for an inverted box, as torchvision).
    """
    _check_boxes("boxes", boxes)
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def _pair_iou(ax1, ay1, ax2, ay2, aa, bx1, by1, bx2, by2, ba):
    """IoU of broadcast pairs; the ONE formula every IoU here goes through.

    a* and b* are coordinate arrays that broadcast together; aa, ba the areas.
    ``inter = max(min(x2) - max(x1), 0) * max(min(y2) - max(y1), 0)``,
    ``iou = inter / (aa + ba - inter)``, and 0 where the union is <= 0
    (two degenerate boxes), where torchvision would give NaN.
    Keeping a single formula makes ``nms`` and ``nms_naive`` agree bit for bit.
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


def box_iou(boxes1, boxes2):
    """Pairwise intersection over union; twin of ``torchvision.ops.box_iou``.

    boxes1: (N, 4) float xyxy; boxes2: (M, 4), same dtype.
    Returns (N, M) of that dtype, ``iou[i, j] = area(b1_i & b2_j) / area(b1_i | b2_j)``.
    Difference from torchvision: where the union is 0 (both boxes degenerate)
    the IoU is 0 instead of NaN (no silent NaN, and NaN never passes a ``>``
    test anyway, so matching and NMS behave the same).
    """
    _check_boxes("boxes1", boxes1)
    _check_boxes("boxes2", boxes2)
    check_same_dtype(boxes1=boxes1, boxes2=boxes2)
    a1 = (boxes1[:, 2] - boxes1[:, 0]) * (boxes1[:, 3] - boxes1[:, 1])
    a2 = (boxes2[:, 2] - boxes2[:, 0]) * (boxes2[:, 3] - boxes2[:, 1])
    c = boxes1[:, :, None]  # (N, 4, 1): c[:, k] is coordinate k as a column
    return _pair_iou(c[:, 0], c[:, 1], c[:, 2], c[:, 3], a1[:, None],
                     boxes2[:, 0], boxes2[:, 1], boxes2[:, 2], boxes2[:, 3], a2)


def _check_size(size):
    if not isinstance(size, (tuple, list)) or len(size) != 2:
        raise ValueError(f"size must be a pair (height, width), got {size!r}")
    for v in size:
        if isinstance(v, bool) or not isinstance(v, numbers.Real) or not v >= 0:
            raise ValueError(f"size must be a pair of non-negative numbers (height, width), got {size!r}")
    return size


def clip_boxes_to_image(boxes, size):
    """Clamp boxes inside an image; twin of ``torchvision.ops.clip_boxes_to_image``.

    boxes: (..., 4k) float xyxy (any leading shape; k boxes side by side as in
    decoded class-specific boxes). size: (height, width) of the image.
    Returns a new array of the same shape and dtype with x in [0, width] and
    y in [0, height].
    """
    check_array("boxes", boxes, dtype_kind="f")
    if boxes.ndim < 1 or boxes.shape[-1] % 4 != 0:
        raise ValueError(f"boxes must have shape (..., 4k), got {boxes.shape}")
    height, width = _check_size(size)
    out = boxes.copy()
    np.clip(out[..., 0::2], 0, width, out=out[..., 0::2])
    np.clip(out[..., 1::2], 0, height, out=out[..., 1::2])
    return out


def remove_small_boxes(boxes, min_size):
    """Indices of boxes at least ``min_size`` wide and tall; twin of
    ``torchvision.ops.remove_small_boxes``.

    boxes: (N, 4) float xyxy; min_size: float >= 0.
    Returns keep (K,) int64, increasing, where ``w >= min_size and h >= min_size``.
    """
    _check_boxes("boxes", boxes)
    min_size = check_float("min_size", min_size, minimum=0.0)
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
    non-positive width or height (the log would be -inf or NaN).
    """
    _check_boxes("reference_boxes", reference_boxes)
    _check_boxes("proposals", proposals)
    check_same_dtype(reference_boxes=reference_boxes, proposals=proposals)
    if reference_boxes.shape[0] != proposals.shape[0]:
        raise ValueError(
            f"proposals must have shape ({reference_boxes.shape[0]}, 4) to match "
            f"reference_boxes, got {proposals.shape}"
        )
    wx, wy, ww, wh = _check_weights(weights, reference_boxes.dtype)
    ex_w = proposals[:, 2] - proposals[:, 0]
    ex_h = proposals[:, 3] - proposals[:, 1]
    gt_w = reference_boxes[:, 2] - reference_boxes[:, 0]
    gt_h = reference_boxes[:, 3] - reference_boxes[:, 1]
    for name, w, h in (("proposals", ex_w, ex_h), ("reference_boxes", gt_w, gt_h)):
        if w.size and not ((w > 0).all() and (h > 0).all()):
            raise ValueError(f"{name} must have positive widths and heights, got a degenerate box")
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
    casts boxes to the codes' dtype); non-finite codes raise ValueError.
    """
    check_array("rel_codes", rel_codes, ndim=2, dtype_kind="f")
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
    wx, wy, ww, wh = _check_weights(weights, dtype)
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
    _check_boxes("boxes", boxes)
    _check_scores("scores", scores, boxes.shape[0])
    check_same_dtype(boxes=boxes, scores=scores)
    return check_float("iou_threshold", iou_threshold, minimum=0.0)


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
    iou_threshold = _threshold_as(boxes.dtype, _check_nms_args(boxes, scores, iou_threshold))
    order = _score_order(scores)
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    keep = []
    while order.size:
        i = order[0]
        keep.append(i)
        rest = order[1:]
        iou = _pair_iou(boxes[i, 0], boxes[i, 1], boxes[i, 2], boxes[i, 3], area[i],
                        boxes[rest, 0], boxes[rest, 1], boxes[rest, 2], boxes[rest, 3], area[rest])
        order = rest[~(iou > iou_threshold)]
    return np.asarray(keep, dtype=np.int64)


def batched_nms_naive(boxes, scores, idxs, iou_threshold):
    """``nms`` run separately on each value of ``idxs`` (a loop over the values);
    reference for :func:`batched_nms`. Same arguments and result."""
    iou_threshold = _check_nms_args(boxes, scores, iou_threshold)
    _check_idxs(idxs, boxes.shape[0])
    keep = [np.flatnonzero(idxs == v)[nms_naive(boxes[idxs == v], scores[idxs == v], iou_threshold)]
            for v in np.unique(idxs)]
    keep = np.sort(np.concatenate(keep)) if keep else np.zeros(0, np.int64)
    return keep[_score_order(scores[keep])].astype(np.int64)  # ties: increasing index


# --- fast NMS --------------------------------------------------------------
#
# How ``nms`` gets the result of ``nms_naive`` without one IoU row per kept box.
#
# The greedy rule. Sort the boxes by decreasing score; call the position in
# that order the box's *rank*. Walk the ranks: a box not yet removed is kept
# and removes every later box whose IoU with it is > t. Whether box r is kept
# depends only on the boxes of lower rank, so the walk can be cut anywhere:
# decide ranks < r one way and ranks >= r another, and the result is the same.
# ``nms`` does exactly that with two methods (phases), below.
#
# 1. Which pairs can matter: an x window. For boxes p, q with widths w_p, w_q
#    and overlap iw in x: the intersection is at most iw * min(h_p, h_q) and
#    the union at least max(area_p, area_q), so
#        IoU <= iw / max(w_p, w_q),   and since iw <= min(w_p, w_q),
#        IoU <= min(w_p, w_q) / max(w_p, w_q).
#    Hence IoU > t > 0 needs
#      (a) max(w) < min(w) / t <= w_p / t    (widths within a factor 1 / t);
#      (b) |x1_q - x1_p| <= max(w) - iw < (1 - t) * max(w)   (if x1_q >= x1_p,
#          iw <= x2_p - x1_q = w_p - (x1_q - x1_p); the other side alike);
#      (c) x1_q < x2_p when x1_q >= x1_p (else they do not meet in x).
#    With (a) and max(w) <= wmax (the widest box), (b) and (c) say that q's x1
#    lies in the open window of p
#        (x1_p - reach_p,  min(x2_p, x1_p + reach_p)),
#        reach_p = (1 - t) * min(wmax, w_p / t),
#    which holds for the window of either box of a pair. So sort by x1 once:
#    a box's partners form one contiguous run of that order, a few boxes long
#    for typical boxes. And by (a), in width bands [base^k, base^(k+1)) with
#    base >= 1 / t a partner of a box is in the same band or an adjacent one.
#
# 2. Rounding. What decides is the *computed* IoU (box_iou's formula, in the
#    boxes' dtype) > t; the bounds above are about the exact IoU of the same
#    coordinates. Each step of the formula rounds once (relative error 2^-24
#    in float32) and union >= max(area) keeps its subtraction from cancelling,
#    so the two differ by less than 1e-5, provided no area is subnormal (below
#    ``finfo.tiny``: float32 boxes smaller than ~1e-19 px; an overflow to inf
#    only makes the computed IoU 0 or NaN, never > t). Windows, bands and
#    the pre-filter of phase 2 therefore use t' = t - 1e-3 (_IOU_MARGIN): a
#    pair with computed IoU > t has exact IoU > t', so it is always a
#    candidate; the margin only adds candidates, which the exact test then
#    rejects. The window ends are computed in float64 and widened by 1e-9 of
#    the coordinate scale. If some area is subnormal, t' = 0 instead: windows
#    become "the boxes meet in x" (reach = wmax, one band), still exact because
#    a computed intersection is > 0 only when the boxes overlap.
#    So ``nms`` equals ``nms_naive`` bit for bit (the tests check it).
#
# Phase 1, the kept-box loop (_loop_kept): walk the ranks; each kept box
#    computes IoU with the boxes of its x window only and removes those above
#    t. Cheap while each kept box removes many (a dense cluster is cleared by
#    its best box). The x-ordered arrays are rebuilt without the removed boxes
#    whenever half of them have been removed, so windows stay short. When the
#    kept boxes stop removing much (fewer than _MIN_REMOVED_PER_KEPT each over
#    _PROBE kept boxes) the loop hands the remaining ranks to phase 2.
# Phase 2, the pair sweep (_suppression_pairs, _block_pairs): for the boxes
#    still undecided, find *all* pairs with IoU > t at once: per width band,
#    boxes x-sorted, rows of consecutive boxes against the union of their
#    windows as one dense block (a division-free superset test
#    inter > t' * union, then the window and the exact IoU on the survivors).
#    Then _greedy_from_pairs walks the pair list in rank order; only boxes
#    that suppress something cost a Python step. If there are more than
#    _MAX_PAIRS_PER_BOX * N + 4096 pairs, phase 1 finishes the job instead.
#
# batched_nms: the categories are laid side by side on the x axis, far apart
# (no window reaches another category), and also compared directly. A box of
# zero or negative width or height has IoU 0 with everything and takes no part.

_BLOCK_ELEMENTS = 1 << 20       # IoU entries per dense block of the pair sweep
_ROWS_PER_BLOCK = 96            # rows per dense block (Python overhead vs wasted entries)
_IOU_MARGIN = 1e-3              # t' = t - margin in windows, bands and pre-filter (rounding)
_MAX_PAIRS_PER_BOX = 64         # pair budget of the sweep, per box
_PROBE = 32                     # kept boxes per check of the loop's yield
_MIN_REMOVED_PER_KEPT = 8.0     # below this yield the loop hands over to the sweep
_COMPACT_MIN = 32               # the loop drops removed boxes from views larger than this


class _Sweep:
    """Per-rank data for both phases; boxes sorted by decreasing score (rank order).

    b: (N, 4) boxes in rank order; groups: (N,) categories in rank order, or
    None; iou_threshold: t as a scalar of the boxes' dtype (``_threshold_as``).
    Holds, all (N,) by rank: ``area`` (dtype), ``valid`` (positive width and
    height), ``key`` = x1 (float64, categories moved apart), the open window
    (``back``, ``fwd``) of a partner's key, the width ``band``, ``g`` (category
    index, or None); ``xorder`` (N,) ranks sorted by key; ``t`` and ``t_window``
    (the t' of windows, bands and the phase-2 pre-filter).
    """

    def __init__(self, b, groups, iou_threshold):
        n = b.shape[0]
        self.n, self.b, self.t = n, b, iou_threshold
        self.area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
        x1 = b[:, 0].astype(np.float64)
        x2 = b[:, 2].astype(np.float64)
        w = x2 - x1
        h = b[:, 3].astype(np.float64) - b[:, 1]
        self.valid = (w > 0) & (h > 0)  # the others have IoU 0 with every box
        self.g = None
        if groups is not None:  # category c moves right by c * (2 * span + 1)
            span = float(x2.max() - x1.min())
            _, g = np.unique(groups, return_inverse=True)
            self.g = g.reshape(-1)
            offset = self.g * (2.0 * span + 1.0) - x1.min()
            x1 = x1 + offset
            x2 = x2 + offset
        normal = not (self.area[self.valid] < np.finfo(b.dtype).tiny).any()
        t = min(float(iou_threshold) - _IOU_MARGIN, 1.0) if normal else 0.0
        self.t_window = max(t, 0.0)
        wmax = max(float(np.max(w)), 0.0)
        reach = (1.0 - t) * np.minimum(wmax, w / t) if t > 0 else np.full(n, wmax)
        slack = 1e-9 * (float(np.abs(x2).max()) + float(np.abs(x1).max()) + 1.0)
        self.key = x1
        self.back = x1 - reach - slack                  # partner: back < key < fwd
        self.fwd = np.minimum(x2, x1 + reach) + slack
        self.xorder = np.argsort(x1, kind="stable")
        self.band = np.zeros(n, np.int64)
        if t > 0:  # bands of ratio base >= 1 / t': partners in the same or the next band
            base = max(1.0 / t, 1.5)
            self.band[self.valid] = np.floor(np.log(w[self.valid]) / math.log(base)).astype(np.int64)


class _XView:
    """Phase 1's x-ordered copy of the boxes still in play: not removed, rank >= start.

    X1, Y1, X2, Y2, A (M,) coordinates and areas in x order, R (M,) their
    ranks, G (M,) categories or None; per rank, (N,) int64 arrays (entries of
    ranks outside the view unused): ``pos`` its x position in the view and its
    window ``[lo, hi)`` of positions.
    """

    def __init__(self, sw, removed, start):
        live = ~removed
        live[:start] = False
        ranks = sw.xorder[live[sw.xorder]]
        self.size = ranks.size
        self.R = ranks
        bx = sw.b[ranks]
        self.X1, self.Y1, self.X2, self.Y2 = (np.ascontiguousarray(bx[:, k]) for k in range(4))
        self.A = sw.area[ranks]
        self.G = None if sw.g is None else sw.g[ranks]
        keys = sw.key[ranks]
        self.pos = np.zeros(sw.n, np.int64)   # entries of ranks not in the view are unused
        self.lo = np.zeros(sw.n, np.int64)
        self.hi = np.zeros(sw.n, np.int64)
        self.pos[ranks] = np.arange(ranks.size)
        self.lo[ranks] = np.searchsorted(keys, sw.back[ranks], side="right")
        self.hi[ranks] = np.searchsorted(keys, sw.fwd[ranks], side="left")


def _loop_kept(sw, removed, start, stop_when_unproductive):
    """Phase 1: the greedy walk from rank ``start``; each kept box scores only
    the boxes of its x window and removes those above the threshold.

    removed: (N,) bool by rank, updated in place. Cost O(K * window) plus
    ~15 us of NumPy calls per kept box: cheap when each kept box removes many
    (dense overlaps); torchvision's O(N * K) loop with a spatial filter. With
    ``stop_when_unproductive`` it returns early once the last ``_PROBE`` kept
    boxes removed fewer than ``_MIN_REMOVED_PER_KEPT`` each. Returns the first
    rank not yet decided (N when done).
    """
    n, t, valid = sw.n, sw.t, sw.valid.tolist()
    r = start
    view = _XView(sw, removed, start)
    removed_in_view = kept_since = removed_since = 0
    # The IoU below is _pair_iou's formula written out for one box against a
    # slice (same operations, same values) without its zero-union guard: there
    # a raw division gives 0/0 = NaN or a value <= 0, and neither passes "> t"
    # (t >= 0), exactly as _pair_iou's 0 does not. errstate silences just that.
    with np.errstate(invalid="ignore", divide="ignore"):
        while r < n:
            if removed[r]:
                r += 1
                continue
            v = view
            p, lo, hi = int(v.pos[r]), int(v.lo[r]), int(v.hi[r])
            nvict = 0
            if hi > lo and valid[r]:
                iw = np.minimum(v.X2[lo:hi], v.X2[p])
                iw -= np.maximum(v.X1[lo:hi], v.X1[p])
                np.maximum(iw, 0, out=iw)
                ih = np.minimum(v.Y2[lo:hi], v.Y2[p])
                ih -= np.maximum(v.Y1[lo:hi], v.Y1[p])
                np.maximum(ih, 0, out=ih)
                iw *= ih                                   # intersection
                union = np.add(v.A[lo:hi], v.A[p], out=ih)
                union -= iw
                hit = np.divide(iw, union, out=iw) > t
                ranks = v.R[lo:hi]
                hit &= ranks > r
                if v.G is not None:
                    hit &= v.G[lo:hi] == v.G[p]
                victims = ranks[hit]
                removed[victims] = True
                nvict = victims.size   # may count a box twice: only steers the heuristics
            r += 1
            removed_in_view += nvict
            if 2 * removed_in_view > view.size > _COMPACT_MIN:
                view = _XView(sw, removed, r)
                removed_in_view = 0
            if stop_when_unproductive:
                kept_since += 1
                removed_since += nvict
                if kept_since == _PROBE:
                    if removed_since < _MIN_REMOVED_PER_KEPT * _PROBE:
                        return r
                    kept_since = removed_since = 0
    return n


def _suppression_pairs(sw, alive, max_pairs):
    """All pairs (i, j) of alive boxes, rank i < rank j, with IoU > threshold.

    alive: (N,) bool by rank. Returns (src, dst) rank arrays or None when
    there are more than ``max_pairs``. Boxes are grouped in width bands (a
    partner is in the same band or the next) and x-sorted within a band; each
    band is swept against itself (forward windows) and against the next band
    (two-sided windows), see ``_block_pairs``.
    """
    idx = np.flatnonzero(alive & sw.valid)
    bands = sw.band[idx]
    o = np.lexsort((sw.key[idx], bands))
    idx, bands = idx[o], bands[o]
    heads = np.flatnonzero(np.r_[True, bands[1:] != bands[:-1]]) if idx.size else np.zeros(0, np.int64)
    ends = np.r_[heads[1:], idx.size].astype(np.int64)
    members = {int(bands[h]): idx[h:e] for h, e in zip(heads, ends)}
    t_pre = sw.b.dtype.type(sw.t_window)
    srcs, dsts = [], []
    total = 0
    for k, rows in members.items():
        for cols, same in ((rows, True), (members.get(k + 1), False)):
            if cols is None:
                continue
            for src, dst in _block_pairs(sw, rows, cols, same, t_pre):
                total += src.size
                if total > max_pairs:
                    return None
                srcs.append(src)
                dsts.append(dst)
    if not srcs:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(srcs), np.concatenate(dsts)


def _block_pairs(sw, rows, cols, same, t_pre):
    """Yield (src, dst) rank pairs with IoU > t between ``rows`` and ``cols``.

    rows, cols: rank indices, each sorted by x key. same: rows is cols (a box
    is paired only with the boxes after it in x order). Row p's candidates are
    the cols with key in (back_p, fwd_p); consecutive rows form dense blocks
    (rows x column range), scored with a division-free superset test, then
    the window and the exact IoU (box_iou's formula) on the few survivors.
    """
    kc = sw.key[cols]
    m = rows.size
    hi = np.searchsorted(kc, sw.fwd[rows], side="left")
    if same:
        lo = np.arange(1, m + 1)
        hi = np.maximum(hi, lo)
    else:
        lo = np.searchsorted(kc, sw.back[rows], side="right")
        hi = np.maximum(hi, lo)
    if not (hi > lo).any():
        return
    b, area = sw.b, sw.area
    RX1, RY1, RX2, RY2 = (b[rows, k][:, None] for k in range(4))
    RA = area[rows][:, None]
    CX1, CY1, CX2, CY2 = (np.ascontiguousarray(b[cols, k]) for k in range(4))
    CA = area[cols]
    G = sw.g
    i = 0
    while i < m:
        width = int(hi[i] - lo[i])
        nrows = max(1, min(_ROWS_PER_BLOCK, _BLOCK_ELEMENTS // max(width + _ROWS_PER_BLOCK, 1)))
        j = min(m, i + nrows)
        c0, c1 = int(lo[i:j].min()), int(hi[i:j].max())
        if c1 > c0:
            r, c = slice(i, j), slice(c0, c1)
            iw = np.minimum(RX2[r], CX2[c]) - np.maximum(RX1[r], CX1[c])
            ih = np.minimum(RY2[r], CY2[c]) - np.maximum(RY1[r], CY1[c])
            np.maximum(iw, 0, out=iw)
            np.maximum(ih, 0, out=ih)
            inter = np.multiply(iw, ih, out=iw)
            union = np.add(RA[r], CA[c], out=ih)
            union -= inter
            union *= t_pre
            pi, qj = np.nonzero(inter > union)
            pi += i
            qj += c0
            ok = (qj >= lo[pi]) & (qj < hi[pi])
            p, q = rows[pi[ok]], cols[qj[ok]]
            if G is not None:
                keep = G[p] == G[q]
                p, q = p[keep], q[keep]
            if p.size:
                iou = _pair_iou(b[p, 0], b[p, 1], b[p, 2], b[p, 3], area[p],
                                b[q, 0], b[q, 1], b[q, 2], b[q, 3], area[q])
                hit = iou > sw.t
                if hit.any():
                    p, q = p[hit], q[hit]
                    yield np.minimum(p, q), np.maximum(p, q)
        i = j


def _greedy_from_pairs(removed, src, dst):
    """Greedy pass over the pair list, in rank order: a source still alive is
    kept and removes its partners. Updates ``removed`` (by rank) in place.

    Only boxes that suppress something are visited (a box nobody suppresses
    is kept without a visit); one vectorised assignment per kept one.
    """
    if src.size == 0:
        return removed
    order = np.argsort(src, kind="stable")
    src = src[order]
    dst = dst[order]
    heads = np.flatnonzero(np.r_[True, src[1:] != src[:-1]])
    ends = np.r_[heads[1:], src.size]
    for s, a, e in zip(src[heads].tolist(), heads.tolist(), ends.tolist()):
        if not removed[s]:
            removed[dst[a:e]] = True
    return removed


def _nms_sorted(boxes, scores, groups, iou_threshold, *, max_pairs=None, probe=True):
    """Shared body of nms / batched_nms (arguments already checked).

    Phase 1 (``probe``): the windowed kept-box loop, while each kept box
    removes many others (dense clusters: the top box of each cluster clears
    most of it). Phase 2: the pair sweep over the boxes still undecided, then
    the greedy pass over its pair list; if the pairs exceed ``max_pairs``
    (default ``_MAX_PAIRS_PER_BOX * N + 4096``) the loop finishes the job.
    Both phases apply the greedy rule in rank order, so any split between
    them gives the same result (tests force each path).
    """
    order = _score_order(scores)
    n = order.size
    if n == 0:
        return order
    t = _threshold_as(boxes.dtype, iou_threshold)
    b = boxes[order]
    g = None if groups is None else groups[order]
    sw = _Sweep(b, g, t)
    removed = np.zeros(n, dtype=bool)
    start = _loop_kept(sw, removed, 0, stop_when_unproductive=True) if probe else 0
    if start < n:
        if max_pairs is None:
            max_pairs = _MAX_PAIRS_PER_BOX * n + 4096
        alive = ~removed
        alive[:start] = False  # decided already (kept ones have done their removing)
        pairs = _suppression_pairs(sw, alive, max_pairs)
        if pairs is None:
            _loop_kept(sw, removed, start, stop_when_unproductive=False)
        else:
            _greedy_from_pairs(removed, *pairs)
    return order[~removed]


def nms(boxes, scores, iou_threshold):
    """Greedy non-maximum suppression; twin of ``torchvision.ops.nms``.

    boxes: (N, 4) float xyxy; scores: (N,) same dtype; iou_threshold: float >= 0.
    Returns keep (K,) int64: indices of the kept boxes by decreasing score.
    Visiting boxes by decreasing score, a box is removed when its IoU with an
    already kept box is > iou_threshold. Equal scores are visited in
    increasing index order (a stable sort), as torchvision's CPU kernel does.
    The IoU (computed in the boxes' dtype) is compared with the threshold as
    a real number, as torchvision compares float IoU with a double threshold.

    Fast path (see ``_nms_sorted``): boxes are sorted by x once, so a box is
    only compared with the boxes in its x window. A kept-box loop runs while
    each kept box removes many others (dense clusters), then the boxes still
    undecided are scored pairwise in dense blocks and a greedy pass over the
    pair list visits only the boxes that suppress something.
    Equal to :func:`nms_naive` bit for bit (same IoU formula).
    """
    iou_threshold = _check_nms_args(boxes, scores, iou_threshold)
    return _nms_sorted(boxes, scores, None, iou_threshold)


def batched_nms(boxes, scores, idxs, iou_threshold):
    """NMS within each category; twin of ``torchvision.ops.batched_nms``.

    boxes: (N, 4) float xyxy; scores: (N,) same dtype; idxs: (N,) int category
    (class, FPN level, image) of each box; iou_threshold: float >= 0.
    Returns keep (K,) int64 by decreasing score (ties by increasing index).
    Boxes of different categories never suppress each other, so the result
    equals running :func:`nms` on each category and merging by score, exactly
    (torchvision's coordinate-offset trick can differ from that in the last
    float bit; ours tests the category directly).
    """
    iou_threshold = _check_nms_args(boxes, scores, iou_threshold)
    _check_idxs(idxs, boxes.shape[0])
    return _nms_sorted(boxes, scores, idxs, iou_threshold)
