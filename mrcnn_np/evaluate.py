"""COCO-style evaluation (AP, AP50, AP75, ... AR) for boxes and masks, in NumPy.

The numbers are those of pycocotools' ``COCOeval`` (``evaluate``,
``accumulate``, ``summarize``) with its default parameters, on the same
inputs; ``tests/reference/test_eval_pycocotools.py`` checks them to 1e-6.

Shape shorthand
---------------
I images, G ground-truth objects of one image, D detections of one image,
K categories, T IoU thresholds (10: 0.50, 0.55, ..., 0.95), R recall points
(101: 0.00, 0.01, ..., 1.00), A area ranges (4: all, small, medium, large),
M max-detection settings (3: 1, 10, 100), H, W mask height and width.

Boxes are ``(x1, y1, x2, y2)`` float pixels, width ``x2 - x1`` (no +1),
exactly as pycocotools' ``[x, y, w, h]`` with ``w = x2 - x1``.

The rules, as pycocotools applies them
--------------------------------------
* IoU. Boxes: intersection / union of the rectangles. Masks: pixel counts.
  Against a *crowd* ground truth the IoU is intersection / detection area
  (a detection may cover any part of a crowd). Two empty regions have IoU 0.
* Per image and category, detections are sorted by score (stable mergesort,
  so equal scores keep their input order) and only the first ``max_dets[-1]``
  are kept. ``max_dets`` therefore counts per image *and per category*.
* Ground truth is *ignored* if it is a crowd or its area lies outside the
  area range (bounds inclusive). Ignored objects are neither counted in the
  recall denominator nor penalised when missed.
* Greedy matching, one detection at a time in score order, for every IoU
  threshold t: the detection takes, among the still-free ground truths with
  IoU >= t, a non-ignored one if there is any, the one with the highest IoU,
  and on equal IoU the later one in input order. Crowd ground truths never
  become taken (they can absorb any number of detections). A detection
  matched to an ignored ground truth is ignored; an unmatched detection whose
  own area is outside the area range is ignored too.
* Accumulation per category, area range and max-dets: all images'
  detections (the first ``max_det`` of each image and category) are sorted
  by score (stable, images in increasing ``image_id`` order), TP and FP are
  cumulated, ``recall = TP / #non-ignored GT``, ``precision = TP / (TP + FP
  + eps)`` made monotone (running maximum from the right), then read at the
  101 recall points by ``searchsorted(recall, r, side="left")`` (0 past the
  last detection). Categories with no non-ignored ground truth get -1 and
  are left out of every mean.

What "area" means
-----------------
Ground truth: the ``area`` entry if the dict has one (COCO json files store
the polygon area there), else the mask pixel count when ``masks`` is given,
else the box area ``w * h`` -- this for both ``iou_type`` values, as COCO
uses the segmentation area to bin objects even for box AP. Detections: the
mask pixel count for ``iou_type="segm"`` and the box area ``w * h`` for
``"bbox"``, which is what ``COCO.loadRes`` computes for results files that
carry only segmentations, resp. only boxes. (``loadRes`` uses the *box* area
when a results file carries both; pass ``area`` in the detection dicts to
reproduce that.)

Speed: IoU matrices are computed per image at once (bit-packed masks with a
popcount for the intersections); the greedy matching runs for all
(image, category) groups, area ranges and thresholds together, one step per
detection rank (at most ``max_dets[-1]`` steps); accumulation is vectorised
over area ranges and thresholds.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from mrcnn_np._checks import (check_array, check_coordinates, check_finite, check_float, check_positive_int,
                              check_rng, check_sequence, check_str)

__all__ = [
    "IOU_THRESHOLDS",
    "RECALL_THRESHOLDS",
    "AREA_RANGES",
    "AREA_LABELS",
    "MAX_DETS",
    "STAT_NAMES",
    "COCOEvalResult",
    "coco_evaluate",
    "summarize",
    "box_iou_coco",
    "mask_iou_coco",
    "evaluate_image_naive",
    "PRCurve",
    "precision_recall_curve",
    "simulate_detections",
]

# np.linspace, not np.arange, as pycocotools: arange(.5, .951, .05)[5] is not 0.75.
IOU_THRESHOLDS = np.linspace(0.5, 0.95, int(np.round((0.95 - 0.5) / 0.05)) + 1, endpoint=True)
RECALL_THRESHOLDS = np.linspace(0.0, 1.00, int(np.round((1.00 - 0.0) / 0.01)) + 1, endpoint=True)
AREA_RANGES = ((0.0, 1e5**2), (0.0, 32.0**2), (32.0**2, 96.0**2), (96.0**2, 1e5**2))
AREA_LABELS = ("all", "small", "medium", "large")
MAX_DETS = (1, 10, 100)
STAT_NAMES = (
    "AP", "AP50", "AP75", "AP_small", "AP_medium", "AP_large",
    "AR1", "AR10", "AR100", "AR_small", "AR_medium", "AR_large",
)


class COCOEvalResult(NamedTuple):
    """What :func:`coco_evaluate` returns.

    stats: (12,) float64, in the order of ``STAT_NAMES`` (-1 where undefined).
    precision: (T, R, K, A, M) interpolated precision (-1 for categories
        without non-ignored ground truth in that area range).
    recall: (T, K, A, M) final recall (-1 likewise).
    scores: (T, R, K, A, M) score of the detection at which each recall point
        was read (0 past the last detection, -1 as above).
    category_ids: (K,) the categories along the K axis.
    iou_thresholds: (T,), recall_thresholds: (R,), area_ranges: (A, 2),
    max_dets: (M,) the settings used.
    """

    stats: np.ndarray
    precision: np.ndarray
    recall: np.ndarray
    scores: np.ndarray
    category_ids: np.ndarray
    iou_thresholds: np.ndarray
    recall_thresholds: np.ndarray
    area_ranges: np.ndarray
    max_dets: tuple

    def as_dict(self):
        """``{"AP": ..., "AP50": ..., ...}`` as plain floats."""
        return {name: float(v) for name, v in zip(STAT_NAMES, self.stats)}


# --------------------------------------------------------------------------- IoU

def _xyxy_to_xywh(boxes):
    boxes = np.asarray(boxes, dtype=np.float64)
    out = boxes.copy()
    out[:, 2] = boxes[:, 2] - boxes[:, 0]
    out[:, 3] = boxes[:, 3] - boxes[:, 1]
    return out


def box_iou_coco(dt_boxes, gt_boxes, iscrowd=None):
    """IoU of detections against ground truth, pycocotools' ``bbIou`` formula.

    dt_boxes: (D, 4) xyxy; gt_boxes: (G, 4) xyxy; iscrowd: (G,) bool or None.
    Returns (D, G) float64. Computed in float64 on ``[x, y, w, h]`` with
    ``w = x2 - x1`` exactly as the C code (right edge ``x + w``), so that
    thresholds compare the same numbers. Crowd columns: intersection / dt area.
    No overlap (width or height <= 0) gives 0. Boxes must be finite (a list is
    fine); iscrowd holds bools or 0/1 numbers.
    """
    d = _xyxy_to_xywh(_check_boxes("dt_boxes", dt_boxes))
    g = _xyxy_to_xywh(_check_boxes("gt_boxes", gt_boxes))
    iscrowd = np.zeros(len(g), dtype=bool) if iscrowd is None else _as_flags("iscrowd", iscrowd, len(g))
    return _box_iou_coco(d, g, iscrowd)


def _box_iou_coco(d, g, iscrowd):
    """:func:`box_iou_coco` on checked (D, 4), (G, 4) float64 xywh boxes and (G,) bool iscrowd."""
    da = d[:, 2] * d[:, 3]
    ga = g[:, 2] * g[:, 3]
    w = np.minimum(d[:, None, 2] + d[:, None, 0], g[None, :, 2] + g[None, :, 0]) - np.maximum(
        d[:, None, 0], g[None, :, 0]
    )
    h = np.minimum(d[:, None, 3] + d[:, None, 1], g[None, :, 3] + g[None, :, 1]) - np.maximum(
        d[:, None, 1], g[None, :, 1]
    )
    ok = (w > 0) & (h > 0)
    inter = np.where(ok, w * h, 0.0)
    union = np.where(iscrowd[None, :], da[:, None], da[:, None] + ga[None, :] - inter)
    safe = np.where(ok, union, 1.0)
    return np.where(ok, inter / np.where(safe > 0, safe, 1.0), 0.0)


def _pack_masks(masks):
    """(N, H, W) bool -> (N, L) uint64 bit-packed rows (zero padded)."""
    n = masks.shape[0]
    flat = masks.reshape(n, masks.shape[1] * masks.shape[2])
    packed = np.packbits(flat, axis=1)
    pad = (-packed.shape[1]) % 8
    if pad:
        packed = np.concatenate([packed, np.zeros((n, pad), np.uint8)], axis=1)
    return np.ascontiguousarray(packed).view(np.uint64)


_HAS_POPCOUNT = hasattr(np, "bitwise_count")
_MATCH_BUDGET = 4_000_000  # elements of the (groups, A, T, G) working arrays per matching chunk
_PAIR_BUDGET = 2_000_000  # uint64 words of the (D, G, L) AND of packed masks per chunk (16 MB)


def _mask_counts(dt_masks, gt_masks):
    """Pixel counts: (D,) dt areas, (G,) gt areas, (D, G) intersections (int64).

    The (D, G, L) AND of the packed masks is formed a block of detections at a
    time, so memory stays bounded for large images (800 x 1333 masks are 16,700
    words each; 100 x 50 pairs of them at once would be 670 MB).
    """
    if _HAS_POPCOUNT:
        pd = _pack_masks(dt_masks)
        pg = _pack_masks(gt_masks)
        da = np.bitwise_count(pd).sum(axis=1, dtype=np.int64)
        ga = np.bitwise_count(pg).sum(axis=1, dtype=np.int64)
        inter = np.empty((len(pd), len(pg)), dtype=np.int64)
        step = max(1, _PAIR_BUDGET // max(1, pg.size))
        for s in range(0, len(pd), step):
            inter[s:s + step] = np.bitwise_count(pd[s:s + step, None, :] & pg[None, :, :]).sum(
                axis=2, dtype=np.int64)
    else:  # pragma: no cover - numpy < 2.0
        fd = dt_masks.reshape(len(dt_masks), -1).astype(np.float64)
        fg = gt_masks.reshape(len(gt_masks), -1).astype(np.float64)
        da = fd.sum(1).astype(np.int64)
        ga = fg.sum(1).astype(np.int64)
        inter = np.rint(fd @ fg.T).astype(np.int64)
    return da, ga, inter


def mask_iou_coco(dt_masks, gt_masks, iscrowd=None):
    """IoU of detection masks against ground-truth masks (pycocotools ``rleIou``).

    dt_masks: (D, H, W) bool; gt_masks: (G, H, W) bool; iscrowd: (G,) bool or None.
    Returns (D, G) float64 = intersection / union pixel counts, or
    intersection / dt area for crowd columns; 0 where the denominator is 0.
    Masks may also be 0/1 integers; both must have one (H, W).
    """
    dt_masks = _as_bool_masks("dt_masks", dt_masks)
    gt_masks = _as_bool_masks("gt_masks", gt_masks)
    if dt_masks.shape[1:] != gt_masks.shape[1:]:
        raise ValueError(f"gt_masks must have the (H, W) of dt_masks {dt_masks.shape[1:]}, got {gt_masks.shape[1:]}")
    da, ga, inter = _mask_counts(dt_masks, gt_masks)
    iscrowd = np.zeros(len(ga), dtype=bool) if iscrowd is None else _as_flags("iscrowd", iscrowd, len(ga))
    union = np.where(iscrowd[None, :], da[:, None], da[:, None] + ga[None, :] - inter)
    return np.where((inter > 0) & (union > 0), inter / np.maximum(union, 1), 0.0)


# --------------------------------------------------------------------- validation

def _as_bool_masks(name, masks, n=None):
    masks = np.asarray(masks) if not isinstance(masks, np.ndarray) else masks
    check_array(name, masks, ndim=3)
    if n is not None and masks.shape[0] != n:
        raise ValueError(f"{name} must have shape ({n}, H, W) (one mask per box), got {masks.shape}")
    if masks.dtype.kind == "b":
        return masks
    if masks.dtype.kind in "iu":
        return masks != 0
    raise TypeError(f"{name} must have a bool (or 0/1 integer) dtype, got {masks.dtype}; threshold soft masks first")


def _as_flags(name, value, n):
    """(n,) bool from bools or 0/1 numbers (an array or a list); NaN, other values, a
    complex or str dtype raise."""
    arr = np.asarray(value)
    check_array(name, arr, shape=(n,))
    if arr.dtype.kind == "b":
        return arr
    if arr.dtype.kind not in "iuf":
        raise TypeError(f"{name} must hold bools (or 0/1 numbers), got dtype {arr.dtype}")
    if arr.size and not ((arr == 0) | (arr == 1)).all():
        raise ValueError(f"{name} must hold bools (or 0/1 numbers), got other values")
    return arr != 0


def _check_boxes(name, boxes):
    boxes = check_array(name, np.asarray(boxes), shape=("G" if ("ground" in name or "gt" in name) else "D", 4))
    if boxes.size and boxes.dtype.kind not in "iuf":
        raise TypeError(f"{name} must have a numeric dtype, got {boxes.dtype}")
    # finite, and small enough that areas stay finite in float64 (the IoU is computed there)
    check_coordinates(name, boxes, np.float64)
    return boxes


def _numbers(name, value):
    """float64 array of real numbers (an array or nested lists); a str, complex or
    ragged input raises TypeError naming ``name`` instead of casting."""
    try:
        arr = np.asarray(value)
    except ValueError:  # ragged
        raise ValueError(f"{name} must be a rectangular array of numbers, got {value!r}") from None
    if arr.size and arr.dtype.kind not in "iuf":
        raise TypeError(f"{name} must hold real numbers, got dtype {arr.dtype}")
    return arr.astype(np.float64)


def _areas(name, value, n):
    """(n,) finite float64 areas from numbers (an array or a list)."""
    arr = check_array(name, np.asarray(value), shape=(n,))
    if arr.size and arr.dtype.kind not in "iuf":
        raise TypeError(f"{name} must have a numeric dtype, got {arr.dtype}")
    return check_finite(name, arr.astype(np.float64))


def _check_labels(name, labels, n):
    labels = check_array(name, np.asarray(labels), shape=(n,))
    if n and labels.dtype.kind not in "iu":  # an empty list arrives as float64
        raise TypeError(f"{name} must have an integer dtype, got {labels.dtype}")
    return labels


def _prepare_image(i, gt, dt, iou_type):
    """Validate one image's dicts; return arrays needed for evaluation."""
    where = f"ground_truth[{i}]"
    if not isinstance(gt, dict):
        raise TypeError(f"{where} must be a dict, got {type(gt).__name__}")
    if not isinstance(dt, dict):
        raise TypeError(f"detections[{i}] must be a dict, got {type(dt).__name__}")
    for key in ("boxes", "labels"):
        if key not in gt:
            raise ValueError(f"{where} is missing the key {key!r}")
    for key in ("boxes", "labels", "scores"):
        if key not in dt:
            raise ValueError(f"detections[{i}] is missing the key {key!r}")
    if "image_id" in gt and "image_id" in dt and gt["image_id"] != dt["image_id"]:
        raise ValueError(
            f"detections[{i}]['image_id'] must equal ground_truth[{i}]['image_id'] ({gt['image_id']}), "
            f"got {dt['image_id']} (the lists are paired by position)"
        )
    gb = _check_boxes(f"{where}['boxes']", gt["boxes"])
    g = gb.shape[0]
    gl = _check_labels(f"{where}['labels']", gt["labels"], g)
    db = _check_boxes(f"detections[{i}]['boxes']", dt["boxes"])
    d = db.shape[0]
    dl = _check_labels(f"detections[{i}]['labels']", dt["labels"], d)
    ds = check_array(f"detections[{i}]['scores']", np.asarray(dt["scores"], dtype=np.float64), shape=(d,))
    check_finite(f"detections[{i}]['scores']", ds)
    crowd = np.zeros(g, dtype=bool)
    if gt.get("iscrowd") is not None:
        crowd = _as_flags(f"{where}['iscrowd']", gt["iscrowd"], g)
    gmasks = dmasks = None
    if gt.get("masks") is not None:
        gmasks = _as_bool_masks(f"{where}['masks']", gt["masks"], g)
    if dt.get("masks") is not None:  # checked even when unused (bbox): a bad one is a mistake
        dmasks = _as_bool_masks(f"detections[{i}]['masks']", dt["masks"], d)
    if iou_type == "segm":
        if gmasks is None:
            raise ValueError(f"{where} needs 'masks' for iou_type='segm'")
        if dmasks is None:
            raise ValueError(f"detections[{i}] needs 'masks' for iou_type='segm'")
        if dmasks.shape[1:] != gmasks.shape[1:]:
            raise ValueError(
                f"detections[{i}]['masks'] must have the image size {gmasks.shape[1:]} of "
                f"{where}['masks'], got {dmasks.shape[1:]}"
            )
    # areas
    if gt.get("area") is not None:
        garea = _areas(f"{where}['area']", gt["area"], g)
    elif gmasks is not None:
        garea = gmasks.reshape(g, gmasks.shape[1] * gmasks.shape[2]).sum(axis=1).astype(np.float64)
    else:
        gx = _xyxy_to_xywh(gb)
        garea = gx[:, 2] * gx[:, 3]
    if dt.get("area") is not None:
        darea = _areas(f"detections[{i}]['area']", dt["area"], d)
    elif iou_type == "segm":
        darea = None  # filled from the mask counts
    else:
        dx = _xyxy_to_xywh(db)
        darea = dx[:, 2] * dx[:, 3]
    return gb, gl.astype(np.int64), crowd, gmasks, garea, db, dl.astype(np.int64), ds, dmasks, darea


# ----------------------------------------------------------------------- matching

def _match_groups(ious, gt_notig, gt_crowd, det_out, thresholds):
    """Greedy matching for a batch of (image, category) groups.

    ious: list of (D_n, G_n) arrays, detections already in score order.
    gt_notig: list of (A, G_n) bool (True = counted ground truth).
    gt_crowd: list of (G_n,) bool. det_out: list of (A, D_n) bool (area out of range).
    thresholds: (T,). Returns lists of (A, T, D_n) bool ``matched`` and ``ignored``.
    """
    n_groups = len(ious)
    A = gt_notig[0].shape[0] if n_groups else 0
    T = len(thresholds)
    thr = np.minimum(thresholds, 1 - 1e-10)
    out_m = [None] * n_groups
    out_i = [None] * n_groups
    # chunks of similar G so that padding stays small and memory bounded
    order = sorted(range(n_groups), key=lambda n: (ious[n].shape[1], ious[n].shape[0]))
    budget = _MATCH_BUDGET
    start = 0
    while start < n_groups:
        stop = start + 1
        while stop < n_groups and (stop - start + 1) * A * T * max(ious[order[stop]].shape[1], 1) <= budget:
            stop += 1
        gmax = ious[order[stop - 1]].shape[1]
        chunk = sorted(order[start:stop], key=lambda n: -ious[n].shape[0])
        _match_chunk(chunk, ious, gt_notig, gt_crowd, det_out, thr, gmax, A, T, out_m, out_i)
        start = stop
    return out_m, out_i


def _match_chunk(chunk, ious, gt_notig, gt_crowd, det_out, thr, gmax, A, T, out_m, out_i):
    N = len(chunk)
    dcount = np.array([ious[n].shape[0] for n in chunk])
    dmax = int(dcount.max())
    iou = np.full((N, dmax, gmax), -1.0)
    notig = np.zeros((N, A, gmax), dtype=bool)
    crowd = np.zeros((N, gmax), dtype=bool)
    valid = np.zeros((N, gmax), dtype=bool)
    for j, n in enumerate(chunk):
        dn, gn = ious[n].shape
        iou[j, :dn, :gn] = ious[n]
        notig[j, :, :gn] = gt_notig[n]
        crowd[j, :gn] = gt_crowd[n]
        valid[j, :gn] = True
    # rank of each gt for each detection by (iou, index): stable sort -> later index wins ties
    srt = np.argsort(iou, axis=2, kind="stable")
    rank = np.empty_like(srt)
    np.put_along_axis(rank, srt, np.broadcast_to(np.arange(gmax), srt.shape), axis=2)
    free = np.broadcast_to(valid[:, None, None, :], (N, A, T, gmax)).copy()
    matched = np.zeros((N, A, T, dmax), dtype=bool)
    ignored = np.zeros((N, A, T, dmax), dtype=bool)
    prio = notig[:, :, None, :].astype(np.int64) * gmax  # (N, A, 1, G)
    for d in range(dmax):
        n_act = int(np.count_nonzero(dcount > d))  # groups are sorted by D, descending
        cand = free[:n_act] & (iou[:n_act, d, None, None, :] >= thr[None, None, :, None])
        key = np.where(cand, prio[:n_act] + rank[:n_act, d, None, None, :], -1)
        best = key.argmax(axis=3)
        bestkey = np.take_along_axis(key, best[..., None], axis=3)[..., 0]
        ok = bestkey >= 0
        matched[:n_act, :, :, d] = ok
        ignored[:n_act, :, :, d] = ok & (bestkey < gmax)
        take = ok & ~np.take_along_axis(
            np.broadcast_to(crowd[:n_act, None, None, :], cand.shape), best[..., None], axis=3
        )[..., 0]
        nn, aa, tt = np.nonzero(take)
        free[nn, aa, tt, best[nn, aa, tt]] = False
    for j, n in enumerate(chunk):
        dn = dcount[j]
        m = matched[j, :, :, :dn]
        ig = ignored[j, :, :, :dn] | (~m & det_out[n][:, None, :])
        out_m[n] = m
        out_i[n] = ig


def evaluate_image_naive(ious, gt_ignore, gt_crowd, det_out_of_range, threshold):
    """pycocotools' ``evaluateImg`` inner loop, one threshold, plain Python (for tests).

    ious: (D, G) with detections in score order; gt_ignore: (G,) bool;
    gt_crowd: (G,) bool; det_out_of_range: (D,) bool; threshold: float.
    Returns (matched (D,) bool, ignored (D,) bool, gt_match (G,) int: index of
    the detection that took it, or -1).
    """
    ious = _numbers("ious", ious)
    check_array("ious", ious, shape=("D", "G"))
    check_finite("ious", ious)
    D, G = ious.shape
    gt_ignore = _as_flags("gt_ignore", gt_ignore, G)
    gt_crowd = _as_flags("gt_crowd", gt_crowd, G)
    det_out_of_range = _as_flags("det_out_of_range", det_out_of_range, D)
    threshold = check_float("threshold", threshold, minimum=0.0, maximum=1.0)
    order = np.argsort(np.asarray(gt_ignore, dtype=np.int64), kind="mergesort")  # ignore last
    gtm = -np.ones(G, dtype=np.int64)
    matched = np.zeros(D, dtype=bool)
    ignored = np.zeros(D, dtype=bool)
    for d in range(D):
        best = min(threshold, 1 - 1e-10)
        m = -1
        for g in order:
            if gtm[g] >= 0 and not gt_crowd[g]:
                continue
            if m > -1 and not gt_ignore[m] and gt_ignore[g]:
                break
            if ious[d, g] < best:
                continue
            best = ious[d, g]
            m = g
        if m == -1:
            continue
        matched[d] = True
        ignored[d] = bool(gt_ignore[m])
        gtm[m] = d
    ignored |= ~matched & np.asarray(det_out_of_range, bool)
    return matched, ignored, gtm


# ------------------------------------------------------------------------ driver

def coco_evaluate(
    ground_truth,
    detections,
    *,
    iou_type="bbox",
    category_ids=None,
    max_dets=MAX_DETS,
    iou_thresholds=None,
    area_ranges=AREA_RANGES,
):
    """COCO AP/AR of ``detections`` against ``ground_truth`` (pycocotools COCOeval).

    ground_truth: list of I dicts, one per image, with ``boxes`` (G, 4) xyxy,
        ``labels`` (G,) int, and optionally ``masks`` (G, H, W) bool (required
        for ``iou_type="segm"``), ``iscrowd`` (G,) bool, ``area`` (G,) float,
        ``image_id`` int (images are accumulated in increasing image_id order,
        default: list position).
    detections: list of I dicts, paired by position with ``ground_truth``,
        with ``boxes`` (D, 4), ``labels`` (D,), ``scores`` (D,), and ``masks``
        (D, H, W) bool for ``"segm"``; optionally ``area`` (D,).
    iou_type: ``"bbox"`` or ``"segm"``.
    category_ids: the K categories to evaluate (default: the sorted distinct
        ground-truth labels). Objects and detections of other labels are
        left out, as pycocotools does for categories not in ``catIds``.
    max_dets: (M,) increasing; iou_thresholds: (T,) (default 0.50:0.05:0.95);
    area_ranges: (A, 2) inclusive [lo, hi]; the first must be "all" and the
        12 stats assume the default four.

    Returns a :class:`COCOEvalResult` (``stats`` (12,), ``precision``
    (T, R, K, A, M), ``recall`` (T, K, A, M), ...).
    """
    if iou_type not in ("bbox", "segm"):
        raise ValueError(f"iou_type must be 'bbox' or 'segm', got {iou_type!r}")
    if not isinstance(ground_truth, (list, tuple)):
        raise TypeError(f"ground_truth must be a list of dicts, got {type(ground_truth).__name__}")
    if not isinstance(detections, (list, tuple)):
        raise TypeError(f"detections must be a list of dicts, got {type(detections).__name__}")
    if len(ground_truth) != len(detections):
        raise ValueError(
            f"detections must have one dict per ground_truth image ({len(ground_truth)}), got {len(detections)}"
        )
    check_sequence("max_dets", max_dets, what="sequence of positive ints")
    max_dets = tuple(sorted(check_positive_int("max_dets", m) for m in max_dets))
    if not max_dets:
        raise ValueError("max_dets must not be empty")
    thresholds = IOU_THRESHOLDS if iou_thresholds is None else _numbers("iou_thresholds", iou_thresholds)
    check_array("iou_thresholds", thresholds, shape=("T",))
    if thresholds.size == 0 or not np.all((thresholds >= 0) & (thresholds <= 1)):
        raise ValueError(f"iou_thresholds must be a non-empty list of values in [0, 1], got {thresholds}")
    area_ranges = _numbers("area_ranges", area_ranges)
    check_array("area_ranges", area_ranges, shape=("A", 2))
    if len(area_ranges) == 0 or not np.all(area_ranges[:, 0] <= area_ranges[:, 1]):
        raise ValueError(f"area_ranges must be non-empty [lo, hi] rows with lo <= hi, got {area_ranges.tolist()}")
    T, R, A, M = len(thresholds), len(RECALL_THRESHOLDS), len(area_ranges), len(max_dets)
    max_det = max_dets[-1]

    prepared = [_prepare_image(i, gt, dt, iou_type) for i, (gt, dt) in enumerate(zip(ground_truth, detections))]
    # image order as pycocotools: sorted image ids
    ids = [gt.get("image_id", i) for i, gt in enumerate(ground_truth)]
    if len(set(ids)) != len(ids):
        raise ValueError("ground_truth image_id values must be unique")
    image_order = np.argsort(np.asarray(ids), kind="stable") if ids else np.zeros(0, np.int64)
    if category_ids is None:
        labels = [p[1] for p in prepared]
        category_ids = np.unique(np.concatenate(labels)) if labels else np.zeros(0, np.int64)
    else:
        ids = np.asarray(category_ids)
        if ids.ndim != 1 or (ids.size and ids.dtype.kind not in "iu"):
            raise TypeError(f"category_ids must be a sequence of ints, got {category_ids!r}")
    category_ids = np.unique(np.asarray(category_ids, dtype=np.int64))
    K = len(category_ids)
    cat_index = {int(c): k for k, c in enumerate(category_ids)}

    # per-group material
    g_ious, g_notig, g_crowd, g_out, g_meta = [], [], [], [], []  # matched groups
    npig = np.zeros((K, A), dtype=np.int64)
    lone = []  # detections of groups without ground truth: (k, img, scores, out)
    for rank_img, i in enumerate(image_order):
        gb, gl, crowd, gmasks, garea, db, dl, ds, dmasks, darea = prepared[i]
        gsel_all = np.isin(gl, category_ids)
        dsel_all = np.isin(dl, category_ids)
        if not gsel_all.any() and not dsel_all.any():
            continue
        img_ious = None
        if gsel_all.any() and dsel_all.any():
            if iou_type == "segm":
                dcount, gcount, inter = _mask_counts(dmasks, gmasks)
                union = np.where(crowd[None, :], dcount[:, None], dcount[:, None] + gcount[None, :] - inter)
                img_ious = np.where((inter > 0) & (union > 0), inter / np.maximum(union, 1), 0.0)
                if darea is None:
                    darea = dcount.astype(np.float64)
            else:
                img_ious = _box_iou_coco(_xyxy_to_xywh(db), _xyxy_to_xywh(gb), crowd)
        if darea is None:  # segm detections without ground truth in this image
            darea = dmasks.reshape(len(dmasks), dmasks.shape[1] * dmasks.shape[2]).sum(axis=1).astype(np.float64)
        g_notig_all = (~crowd)[None, :] & (garea[None, :] >= area_ranges[:, :1]) & (garea[None, :] <= area_ranges[:, 1:])
        d_out_all = (darea[None, :] < area_ranges[:, :1]) | (darea[None, :] > area_ranges[:, 1:])
        for c in np.unique(np.concatenate([gl[gsel_all], dl[dsel_all]])):
            k = cat_index[int(c)]
            gidx = np.flatnonzero(gl == c)
            didx = np.flatnonzero(dl == c)
            if len(gidx):
                npig[k] += g_notig_all[:, gidx].sum(axis=1)
            if len(didx) == 0:
                continue
            didx = didx[np.argsort(-ds[didx], kind="mergesort")][:max_det]
            if len(gidx) == 0:
                lone.append((k, rank_img, ds[didx], d_out_all[:, didx]))
                continue
            g_ious.append(img_ious[np.ix_(didx, gidx)])
            g_notig.append(g_notig_all[:, gidx])
            g_crowd.append(crowd[gidx])
            g_out.append(d_out_all[:, didx])
            g_meta.append((k, rank_img, ds[didx]))

    out_m, out_i = _match_groups(g_ious, g_notig, g_crowd, g_out, thresholds)
    # every kept detection: category, image rank, rank in its image, score, (A, T) matched / ignored
    per_group = [(k, img, sc, m, ig) for (k, img, sc), m, ig in zip(g_meta, out_m, out_i)]
    per_group += [
        (k, img, sc, np.zeros((A, T, len(sc)), dtype=bool), np.broadcast_to(out[:, None, :], (A, T, len(sc))))
        for k, img, sc, out in lone
    ]
    sizes = [len(g[2]) for g in per_group]
    det_k = np.repeat(np.array([g[0] for g in per_group], dtype=np.int64), sizes)
    det_img = np.repeat(np.array([g[1] for g in per_group], dtype=np.int64), sizes)
    det_rank = np.concatenate([np.arange(n) for n in sizes]) if sizes else np.zeros(0, np.int64)
    det_score = np.concatenate([g[2] for g in per_group]) if sizes else np.zeros(0)
    det_m = np.concatenate([g[3] for g in per_group], axis=2) if sizes else np.zeros((A, T, 0), dtype=bool)
    det_i = np.concatenate([g[4] for g in per_group], axis=2) if sizes else np.zeros((A, T, 0), dtype=bool)

    precision = -np.ones((T, R, K, A, M))
    recall = -np.ones((T, K, A, M))
    scores = -np.ones((T, R, K, A, M))
    # concatenation order of pycocotools: (category), image order, rank in image
    base = np.lexsort((det_rank, det_img, det_k))
    for k in range(K):
        sel = base[det_k[base] == k]
        for mi, md in enumerate(max_dets):
            s = sel[det_rank[sel] < md]
            order = np.argsort(-det_score[s], kind="mergesort")
            s = s[order]
            sc_sorted = det_score[s]
            nd = len(s)
            tps = det_m[:, :, s] & ~det_i[:, :, s]  # (A, T, nd)
            fps = ~det_m[:, :, s] & ~det_i[:, :, s]
            tp_sum = np.cumsum(tps, axis=2).astype(np.float64)
            fp_sum = np.cumsum(fps, axis=2).astype(np.float64)
            for a in range(A):
                if npig[k, a] == 0:
                    continue
                rc = tp_sum[a] / npig[k, a]  # (T, nd)
                pr = tp_sum[a] / (fp_sum[a] + tp_sum[a] + np.spacing(1))
                pr = np.maximum.accumulate(pr[:, ::-1], axis=1)[:, ::-1]
                recall[:, k, a, mi] = rc[:, -1] if nd else 0.0
                for t in range(T):
                    inds = np.searchsorted(rc[t], RECALL_THRESHOLDS, side="left")
                    inside = inds < nd
                    q = np.zeros(R)
                    ss = np.zeros(R)
                    q[inside] = pr[t, inds[inside]]
                    ss[inside] = sc_sorted[inds[inside]]
                    # pycocotools stops filling at the first index past the end
                    precision[t, :, k, a, mi] = q
                    scores[t, :, k, a, mi] = ss
    stats = _stats(precision, recall, thresholds, max_dets)
    return COCOEvalResult(
        stats=stats, precision=precision, recall=recall, scores=scores,
        category_ids=category_ids, iou_thresholds=np.array(thresholds),
        recall_thresholds=RECALL_THRESHOLDS.copy(), area_ranges=area_ranges, max_dets=max_dets,
    )


def _mean_defined(s):
    s = s[s > -1]
    return float(np.mean(s)) if s.size else -1.0


def _stats(precision, recall, thresholds, max_dets):
    """The 12 numbers of pycocotools' ``summarize`` (``_summarizeDets``)."""
    def one(ap, iou_thr=None, area=0, md=100):
        mind = [i for i, m in enumerate(max_dets) if m == md]
        s = precision if ap else recall
        if area >= s.shape[-2]:  # fewer area ranges than COCO's four: that stat is undefined
            return -1.0
        if iou_thr is not None:
            s = s[np.where(iou_thr == thresholds)[0]]
        if ap:
            s = s[:, :, :, [area]][..., mind]
        else:
            s = s[:, :, [area]][..., mind]
        return _mean_defined(s)

    m = list(max_dets) + [max_dets[-1]] * (3 - len(max_dets))
    return np.array([
        one(1),
        one(1, iou_thr=0.5, md=m[2]),
        one(1, iou_thr=0.75, md=m[2]),
        one(1, area=1, md=m[2]),
        one(1, area=2, md=m[2]),
        one(1, area=3, md=m[2]),
        one(0, md=m[0]),
        one(0, md=m[1]),
        one(0, md=m[2]),
        one(0, area=1, md=m[2]),
        one(0, area=2, md=m[2]),
        one(0, area=3, md=m[2]),
    ])


def summarize(stats, *, iou_type=None):
    """The familiar 12-line COCO table as a string (the caller prints it).

    stats: (12,) array, or a :class:`COCOEvalResult`.
    iou_type: optional label ("bbox"/"segm") put in a header line.
    """
    if isinstance(stats, COCOEvalResult):
        stats = stats.stats
    stats = _numbers("stats", stats)
    if stats.shape != (12,):
        raise ValueError(f"stats must have shape (12,), got {stats.shape}")
    check_finite("stats", stats)
    if iou_type is not None:
        check_str("iou_type", iou_type)
    rows = [
        (1, "0.50:0.95", "all", 100), (1, "0.50", "all", 100), (1, "0.75", "all", 100),
        (1, "0.50:0.95", "small", 100), (1, "0.50:0.95", "medium", 100), (1, "0.50:0.95", "large", 100),
        (0, "0.50:0.95", "all", 1), (0, "0.50:0.95", "all", 10), (0, "0.50:0.95", "all", 100),
        (0, "0.50:0.95", "small", 100), (0, "0.50:0.95", "medium", 100), (0, "0.50:0.95", "large", 100),
    ]
    fmt = " {:<18} {} @[ IoU={:<9} | area={:>6s} | maxDets={:>3d} ] = {:0.3f}"
    lines = [f"IoU metric: {iou_type}"] if iou_type else []
    for (ap, iou, area, md), v in zip(rows, stats):
        lines.append(fmt.format(
            "Average Precision" if ap else "Average Recall", "(AP)" if ap else "(AR)", iou, area, md, v
        ))
    return "\n".join(lines)


# ------------------------------------------------------------ teaching helpers

class PRCurve(NamedTuple):
    """One precision-recall curve, every intermediate quantity kept (see
    :func:`precision_recall_curve`). D ranked detections, R recall points."""

    order: np.ndarray  # (D,) indices of the input detections, best score first
    scores: np.ndarray  # (D,) sorted scores
    tp: np.ndarray  # (D,) bool: counted as true positive
    fp: np.ndarray  # (D,) bool: counted as false positive (ignored ones are neither)
    tp_cum: np.ndarray  # (D,) cumulative TP
    fp_cum: np.ndarray  # (D,) cumulative FP
    recall: np.ndarray  # (D,) tp_cum / num_gt
    precision: np.ndarray  # (D,) tp_cum / (tp_cum + fp_cum + eps)
    envelope: np.ndarray  # (D,) running max of precision from the right
    recall_thresholds: np.ndarray  # (R,)
    sampled: np.ndarray  # (R,) envelope read at the recall thresholds (0 beyond)
    ap: float  # mean of ``sampled``


def precision_recall_curve(scores, is_tp, num_gt, *, ignored=None, recall_thresholds=RECALL_THRESHOLDS):
    """COCO's interpolated precision-recall curve for one category and one IoU threshold.

    scores: (D,) detection scores; is_tp: (D,) bool (matched to a ground truth);
    num_gt: number of counted ground-truth objects (> 0); ignored: (D,) bool
    detections that count neither way (matched to crowd/ignored objects).
    Returns :class:`PRCurve`; ``ap`` equals ``coco_evaluate``'s precision
    averaged over the recall points for the same matches.
    scores must be finite; is_tp, ignored: bools or 0/1 numbers; recall_thresholds:
    (R,) values in [0, 1], R >= 1.
    """
    scores = _numbers("scores", scores)
    check_array("scores", scores, shape=("D",))
    check_finite("scores", scores)
    is_tp = _as_flags("is_tp", is_tp, len(scores))
    if check_float("num_gt", num_gt) <= 0:
        raise ValueError(f"num_gt must be > 0, got {num_gt}")
    ignored = np.zeros_like(is_tp) if ignored is None else _as_flags("ignored", ignored, len(scores))
    rt = _numbers("recall_thresholds", recall_thresholds)
    check_array("recall_thresholds", rt, shape=("R",))
    if rt.size == 0 or not ((rt >= 0) & (rt <= 1)).all():
        raise ValueError(f"recall_thresholds must be a non-empty list of values in [0, 1], got {rt}")
    order = np.argsort(-scores, kind="mergesort")
    tp = is_tp[order] & ~ignored[order]
    fp = ~is_tp[order] & ~ignored[order]
    tp_cum = np.cumsum(tp).astype(np.float64)
    fp_cum = np.cumsum(fp).astype(np.float64)
    recall = tp_cum / num_gt
    precision = tp_cum / (fp_cum + tp_cum + np.spacing(1))
    envelope = np.maximum.accumulate(precision[::-1])[::-1] if len(precision) else precision
    idx = np.searchsorted(recall, rt, side="left")
    inside = idx < len(recall)
    sampled = np.zeros(len(rt))
    sampled[inside] = envelope[idx[inside]]
    return PRCurve(order, scores[order], tp, fp, tp_cum, fp_cum, recall, precision, envelope, rt, sampled,
                   float(sampled.mean()))


def simulate_detections(ground_truth, *, noise, rng, drop=0.0, false_positives=0.0, num_classes=None):
    """Noisy copies of ground truth, to see how AP reacts (a stand-in detector).

    ground_truth: list of dicts with ``boxes`` (G, 4), ``labels`` (G,), and
        optionally ``masks`` (G, H, W) bool.
    noise: in [0, 1000]; each object is shifted by a whole-pixel offset drawn from
        N(0, noise * s) per axis, s = sqrt(box area) (mask and box together),
        and the box corners get an extra N(0, noise * s / 2) each.
    rng: np.random.Generator. drop: probability to miss an object.
    false_positives: mean number (Poisson, at most 1e6) of random boxes added per image,
        with a random label in 1..num_classes (default: the largest label seen).
    Scores: kept objects U(0.3, 1), false positives U(0, 0.8).
    Returns a list of detection dicts (``boxes`` float64, ``labels``,
    ``scores``, ``masks`` when the ground truth has masks).
    """
    check_rng(rng)
    # bounded so that every offset and count stays finite and drawable (noise 1000 already
    # throws every object a thousand sizes away)
    noise = check_float("noise", noise, minimum=0.0, maximum=1e3)
    drop = check_float("drop", drop, minimum=0.0, maximum=1.0)
    false_positives = check_float("false_positives", false_positives, minimum=0.0, maximum=1e6)
    check_sequence("ground_truth", ground_truth, what="list of dicts")
    checked = []
    for i, g in enumerate(ground_truth):
        where = f"ground_truth[{i}]"
        if not isinstance(g, dict):
            raise TypeError(f"{where} must be a dict, got {type(g).__name__}")
        for key in ("boxes", "labels"):
            if key not in g:
                raise ValueError(f"{where} is missing the key {key!r}")
        boxes = _check_boxes(f"{where}['boxes']", g["boxes"]).astype(np.float64)
        labels = _check_labels(f"{where}['labels']", g["labels"], len(boxes)).astype(np.int64)
        masks = g.get("masks")
        if masks is not None:
            masks = _as_bool_masks(f"{where}['masks']", masks, len(boxes))
            if 0 in masks.shape[1:]:
                raise ValueError(f"{where}['masks'] must have a non-empty image size (H, W), got {masks.shape}")
        checked.append((boxes, labels, masks))
    if num_classes is None:
        num_classes = max([int(np.max(labels)) for _, labels, _ in checked if len(labels)] + [1])
    num_classes = check_positive_int("num_classes", num_classes)
    out = []
    for boxes, labels, masks in checked:
        has_masks = masks is not None
        if has_masks:
            H, W = masks.shape[1:]
        else:
            H = W = int(np.ceil(boxes[:, 2:].max())) + 1 if len(boxes) else 1
        keep = rng.random(len(boxes)) >= drop
        nb, nl, ns, nm = [], [], [], []
        for j in np.flatnonzero(keep):
            b = boxes[j]
            side = np.sqrt(max((b[2] - b[0]) * (b[3] - b[1]), 1.0))
            dy, dx = np.rint(rng.normal(0, noise * side, 2)).astype(int)
            nb.append(b + np.array([dx, dy, dx, dy]) + rng.normal(0, noise * side / 2, 4))
            nl.append(labels[j])
            ns.append(rng.uniform(0.3, 1.0))
            if has_masks:
                nm.append(_shift_mask(masks[j], dy, dx))
        for _ in range(rng.poisson(false_positives)):
            wh = rng.uniform(0.1, 0.4, 2) * (W, H)
            xy = rng.uniform(0, 1, 2) * ((W, H) - wh)
            b = np.concatenate([xy, xy + wh])
            nb.append(b)
            nl.append(int(rng.integers(1, num_classes + 1)))
            ns.append(rng.uniform(0.0, 0.8))
            if has_masks:
                m = np.zeros((H, W), dtype=bool)
                x1, y1, x2, y2 = np.rint(b).astype(int)
                m[y1:y2, x1:x2] = True
                nm.append(m)
        det = {"boxes": np.array(nb, dtype=np.float64).reshape(-1, 4), "labels": np.array(nl, dtype=np.int64),
               "scores": np.array(ns, dtype=np.float64)}
        if has_masks:
            det["masks"] = np.array(nm, dtype=bool).reshape(-1, H, W)
        out.append(det)
    return out


def _shift_mask(mask, dy, dx):
    """Shift a (H, W) mask by whole pixels, filling with False (no wrap-around)."""
    H, W = mask.shape
    out = np.zeros_like(mask)
    ys, yd = (slice(0, H - dy), slice(dy, H)) if dy >= 0 else (slice(-dy, H), slice(0, H + dy))
    xs, xd = (slice(0, W - dx), slice(dx, W)) if dx >= 0 else (slice(-dx, W), slice(0, W + dx))
    if abs(dy) < H and abs(dx) < W:
        out[yd, xd] = mask[ys, xs]
    return out
