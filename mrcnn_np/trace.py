"""Every intermediate of inference, named; and three diagnostics built on them.

:func:`trace` takes the arguments of ``model.detect`` and returns, for each
image, an :class:`ImageTrace`: the transformed input, the pyramid, the anchors
and their objectness, the RPN's top-k anchors and proposals before and after
NMS, the pooled RoI features, the box head's scores and per-class boxes, the
detections before the score threshold and before NMS, the mask logits and the
final detections. It is not a second pipeline: ``model.detect`` and
:func:`trace` run the same private function (``model._detect`` ->
``model._predict``), which fills a recorder dict only when one is given
(``detect`` gives none, so recording costs it nothing), and the stages that
hide intermediates inside a loop (``rpn.filter_proposals``,
``roi_heads.postprocess_detections``) fill the same recorder through their
optional ``record=`` argument. So ``trace(...)[i].detections`` is
``detect(...)[i]`` bit for bit.

Shape shorthand (one image): h, w the image after resizing (its valid region
in the batch), Hp, Wp the padded batch, H0, W0 the original image; D FPN
channels; L = 5 RPN levels P2..P6 with H_l, W_l their grids (of the padded
batch) and A anchors per location; A_l = H_l W_l A the anchors of level l;
T = sum A_l; Kt = sum_l min(rpn_pre_nms_top_n_test, A_l) the per-level top-k;
B the proposals before NMS; R the proposals (the RoIs the heads get); K+1
classes with background 0; E the detections; M = 28 the mask side.

Coordinates: every box is (x1, y1, x2, y2) float pixels of the RESIZED image
(the frame the network works in), except ``detections`` and ``masks``, which
are in ORIGINAL image pixels, as ``detect`` returns them. Level numbers are
absolute (2 = P2, ..., 6 = P6).

The fields of an :class:`ImageTrace` (attributes; ``t["name"]`` also works):

input
    image (3, h, w)             normalised, resized input, WITHOUT the batch padding
    padded_size (Hp, Wp)        the batch it was padded into (multiple of size_divisible)
    scale (float, float)        (h / H0, w / W0): the resize ratios actually applied per axis
                                (torchvision's nominal factor min(min_size / short, max_size / long)
                                differs from them only by the floor of the new size)
    image_size (h, w)           after resizing; original_size (H0, W0)
backbone
    level_names                 ("P2", "P3", "P4", "P5", "P6") (``fpn.PYRAMID_LEVELS``)
    features                    list [P2 (D, H_2, W_2), ..., P6 (D, H_6, W_6)], the model's
                                pyramid (a list in level order, as ``fpn``): features[l] is
                                level_names[l]
RPN (lists over the 5 levels, in level_names order, aligned with each other)
    anchors                     list of (A_l, 4) (shared by every image of the batch)
    objectness_logits           list of (A_l,); objectness_probs: their sigmoid
    rpn_deltas                  list of (A_l, 4), the predicted (dx, dy, dw, dh)
proposals
    top_anchor_indices (Kt,)    the per-level top-k anchors (by logit), indices into the
                                concatenation of ``anchors``, level by level
    top_anchor_levels (Kt,)     their level, 2..6; top_anchor_scores (Kt,): sigmoid
    top_anchors (Kt, 4)         the anchors themselves, before refinement
    top_anchors_refined (Kt, 4) the anchors moved by their deltas (decoded, NOT yet clipped)
    proposals_before_nms (B, 4), proposal_scores_before_nms (B,),
    proposal_rpn_levels_before_nms (B,)  after clipping, small-box removal and the
                                RPN score threshold: the input of the per-level NMS
    proposals (R, 4), proposal_scores (R,)  after NMS and the post-NMS top-k: exactly
                                what the RoI heads get, sorted by decreasing score
    proposal_levels (R,)        the FPN level (2..5) ``roi_align.level_mapper`` assigns
                                each proposal, the level its box features are pooled from
    roi_features (R, D, 7, 7)   the box head's RoIAlign output
box head
    class_logits (R, K+1); class_scores (R, K+1) softmax, rows sum to 1
    box_regression (R, 4(K+1)) the predicted deltas
    refined_boxes (R, K+1, 4)   every RoI decoded with every class's deltas and clipped to
                                the image; column 0 is the background's (never a detection)
    detections_before_threshold dict "boxes" (R K, 4), "scores" (R K,), "labels" (R K,):
                                every (RoI, foreground class) pair, RoI-major
    detections_before_nms       the same keys, after score > box_score_thresh and
                                removing boxes smaller than 1e-2: the input of per-class NMS
mask head
    mask_logits (E, M, M)       the mask head's logits of each detection, its class's channel
    mask_probs (E, M, M)        their sigmoid (= predictions["masks"][:, 0])
    masks (E, 1, H0, W0)        the probabilities pasted into the original image
                                (= detections["masks"]; ``> 0.5`` for binary masks)
output
    predictions                 ``model.predict``'s dict for the image (resized frame, M x M masks)
    detections                  ``model.detect``'s dict: "boxes", "labels", "scores", "masks",
                                bit-identical

Diagnostics: :func:`rpn_recall` (how many ground-truth objects a stage of the
RPN covers, overall and by size), :func:`iou_matrix` (ground truth x
prediction box or mask IoU of one image), :func:`confusion_summary` (a
per-class confusion matrix with background, greedy matching by score).
"""
from __future__ import annotations

import dataclasses
import numbers
from typing import NamedTuple

import numpy as np

from . import model as _model
from ._checks import check_array, check_coordinates, check_finite, check_float, check_positive_int
from .boxes import box_iou
from .evaluate import box_iou_coco, mask_iou_coco
from .fpn import PYRAMID_LEVELS
from .ops.activations import sigmoid
from .transform import resize_boxes

__all__ = [
    "ImageTrace",
    "trace",
    "RecallReport",
    "rpn_recall",
    "iou_matrix",
    "ConfusionSummary",
    "confusion_summary",
    "SIZE_BUCKETS",
    "RECALL_STAGES",
]

#: names of the object size buckets of :func:`rpn_recall`, smallest first
SIZE_BUCKETS = ("small", "medium", "large")

#: the box sets of an ImageTrace that :func:`rpn_recall` can measure, in pipeline order
RECALL_STAGES = ("anchors", "top_anchors", "top_anchors_refined", "proposals_before_nms", "proposals")


@dataclasses.dataclass(frozen=True, repr=False, eq=False)
class ImageTrace:
    """Every intermediate of inference for one image (see the module docstring for
    each field's shape and frame). Fields are attributes; ``t["name"]`` also works,
    and ``t.keys()`` lists them in pipeline order."""

    # input
    image: np.ndarray
    padded_size: tuple
    scale: tuple
    image_size: tuple
    original_size: tuple
    # backbone
    level_names: tuple
    features: list
    # RPN
    anchors: list
    objectness_logits: list
    objectness_probs: list
    rpn_deltas: list
    # proposals
    top_anchor_indices: np.ndarray
    top_anchor_levels: np.ndarray
    top_anchor_scores: np.ndarray
    top_anchors: np.ndarray
    top_anchors_refined: np.ndarray
    proposals_before_nms: np.ndarray
    proposal_scores_before_nms: np.ndarray
    proposal_rpn_levels_before_nms: np.ndarray
    proposals: np.ndarray
    proposal_scores: np.ndarray
    proposal_levels: np.ndarray
    roi_features: np.ndarray
    # box head
    class_logits: np.ndarray
    class_scores: np.ndarray
    box_regression: np.ndarray
    refined_boxes: np.ndarray
    detections_before_threshold: dict
    detections_before_nms: dict
    # mask head
    mask_logits: np.ndarray
    mask_probs: np.ndarray
    masks: np.ndarray
    # output
    predictions: dict
    detections: dict

    def keys(self):
        """The field names, in pipeline order."""
        return [f.name for f in dataclasses.fields(self)]

    def __getitem__(self, name):
        if not isinstance(name, str) or name not in self.keys():
            raise KeyError(f"ImageTrace has no field {name!r}; fields: {', '.join(self.keys())}")
        return getattr(self, name)

    def __contains__(self, name):
        return isinstance(name, str) and name in self.keys()

    def as_dict(self):
        """{field name: value} (the same objects, not copies)."""
        return {k: getattr(self, k) for k in self.keys()}

    def __repr__(self):
        parts = []
        for k in self.keys():
            v = getattr(self, k)
            if isinstance(v, np.ndarray):
                parts.append(f"{k}={v.shape}")
            elif isinstance(v, tuple):
                parts.append(f"{k}={v}")
            elif isinstance(v, list):
                parts.append(f"{k}=[{len(v)} levels]")
            elif isinstance(v, dict) and "boxes" in v:
                parts.append(f"{k}={len(v['boxes'])} boxes")
        return "ImageTrace(" + ", ".join(parts) + ")"


def _split(array, counts):
    """Rows of ``array`` split into consecutive blocks of ``counts`` rows."""
    return np.split(array, np.cumsum(counts)[:-1]) if len(counts) else []


def trace(params, images, config):
    """Run ``model.detect`` and keep every intermediate, one :class:`ImageTrace` per image.

    params: flat dict (``model.init_params`` or a checkpoint); images: list of
    N (3, H_i, W_i) float images in [0, 1]; config: MaskRCNNConfig — exactly
    the arguments of ``model.detect``, checked by the same code (a wrong type
    or shape raises TypeError / ValueError naming the argument).
    Returns a list of N ImageTrace. ``trace(...)[i].detections`` equals
    ``model.detect(...)[i]`` bit for bit: both run ``model._detect``; this one
    passes it a recorder. The arrays are views of the batched intermediates
    (do not modify them in place).
    """
    record = {}
    with np.errstate(all="ignore"):  # as model.detect: checked inputs, layer math silent
        detections = _model._detect(params, images, config, record=record)
    return _per_image(record, detections)


def _per_image(rec, detections):
    """Cut the batched record of ``model._detect`` into one ImageTrace per image."""
    batch, sizes, originals = rec["batch"], rec["image_sizes"], rec["original_sizes"]
    rpn, post = rec["rpn"], rec["postprocess"]
    anchors = list(rec["anchors"])
    counts = [a.shape[0] for a in anchors]
    all_anchors = np.concatenate(anchors, axis=0)
    level_names = PYRAMID_LEVELS
    k_rpn_min = int(level_names[0][1:])  # P2 -> 2
    proposal_counts = [p.shape[0] for p in rec["proposals"]]
    roi_features = _split(rec["roi_features"], proposal_counts)
    roi_levels = _split(rec["roi_levels"], proposal_counts)
    class_logits = _split(rec["class_logits"], proposal_counts)
    box_regression = _split(rec["box_regression"], proposal_counts)
    det_counts = [p["labels"].shape[0] for p in rec["predictions"]]
    mask_logits = _split(rec["mask_logits"], det_counts)
    out = []
    for i, ((h, w), (h0, w0)) in enumerate(zip(sizes, originals)):
        pred = rec["predictions"][i]
        logits = _split(rec["objectness"][i], counts)
        top = rpn["top_indices"][i]
        before_boxes, before_scores, before_lvl = rpn["before_nms"][i]
        out.append(ImageTrace(
            image=batch[i, :, :h, :w],
            padded_size=(int(batch.shape[2]), int(batch.shape[3])),
            scale=(h / h0, w / w0),
            image_size=(h, w),
            original_size=(int(h0), int(w0)),
            level_names=level_names,
            features=[level[i] for level in rec["pyramid"]],
            anchors=anchors,
            objectness_logits=logits,
            objectness_probs=[sigmoid(lg) for lg in logits],
            rpn_deltas=_split(rec["rpn_deltas"][i], counts),
            top_anchor_indices=top,
            top_anchor_levels=rpn["top_levels"] + k_rpn_min,
            top_anchor_scores=rpn["top_scores"][i],
            top_anchors=all_anchors[top],
            top_anchors_refined=rpn["decoded"][i, top],
            proposals_before_nms=before_boxes,
            proposal_scores_before_nms=before_scores,
            proposal_rpn_levels_before_nms=before_lvl + k_rpn_min,
            proposals=rec["proposals"][i],
            proposal_scores=rec["proposal_scores"][i],
            proposal_levels=roi_levels[i],
            roi_features=roi_features[i],
            class_logits=class_logits[i],
            class_scores=post["class_scores"][i],
            box_regression=box_regression[i],
            refined_boxes=post["refined_boxes"][i],
            detections_before_threshold=post["before_threshold"][i],
            detections_before_nms=post["before_nms"][i],
            mask_logits=mask_logits[i][np.arange(det_counts[i]), pred["labels"]],
            mask_probs=pred["masks"][:, 0],
            masks=detections[i]["masks"],
            predictions=pred,
            detections=detections[i],
        ))
    return out


# =========================================================================== diagnostics


def _check_box_array(name, boxes):
    boxes = check_array(name, boxes, shape=(None, 4), dtype_kind="fiu")
    # finite, and small enough for float64 areas (the IoUs here are computed in float64)
    check_coordinates(name, boxes, np.float64)
    return boxes


def _check_traces(traces):
    if isinstance(traces, ImageTrace):
        return [traces], True
    if not isinstance(traces, (list, tuple)):
        raise TypeError(f"traces must be an ImageTrace or a list of them, got {type(traces).__name__}")
    for i, t in enumerate(traces):
        if not isinstance(t, ImageTrace):
            raise TypeError(f"traces[{i}] must be an ImageTrace (from trace()), got {type(t).__name__}")
    return list(traces), False


def _check_thresholds(name, values, *, minimum, maximum=None, increasing=False):
    if isinstance(values, numbers.Real) and not isinstance(values, bool):
        values = (values,)
    if not isinstance(values, (list, tuple)) or not values:
        raise TypeError(f"{name} must be a non-empty sequence of numbers, got {values!r}")
    out = tuple(check_float(f"{name}[{i}]", v, minimum=minimum, maximum=maximum) for i, v in enumerate(values))
    if increasing and any(b <= a for a, b in zip(out, out[1:])):
        raise ValueError(f"{name} must be strictly increasing, got {out}")
    return out


def _fraction(hits, total):
    return hits / total if total else float("nan")


class RecallReport(NamedTuple):
    """What :func:`rpn_recall` measured.

    recall: {IoU threshold: fraction of all GT boxes covered} (NaN if there is no GT);
    recall_by_size: {"small" / "medium" / "large": {threshold: fraction}} (NaN for an
        empty bucket); num_gt: int; num_gt_by_size: {bucket: int};
    best_iou: list over images of (G_i,) float64, each GT's best IoU with the stage's boxes
        (0 if there is none); num_covering: list over images of (G_i,) int64, how many of
        the stage's boxes reach IoU >= count_threshold with each GT;
    size: list over images of (G_i,) float64, sqrt(area) of each GT in original pixels;
    iou_thresholds, size_thresholds, count_threshold, stage: the arguments.
    """

    recall: dict
    recall_by_size: dict
    num_gt: int
    num_gt_by_size: dict
    best_iou: list
    num_covering: list
    size: list
    iou_thresholds: tuple
    size_thresholds: tuple
    count_threshold: float
    stage: str


def _stage_boxes(t, stage):
    if stage == "anchors":
        return np.concatenate(t.anchors, axis=0)
    return getattr(t, stage)


def rpn_recall(traces, gt_boxes, *, iou_thresholds=(0.5, 0.7), size_thresholds=(24.0, 40.0),
               count_threshold=0.5, stage="proposals"):
    """How many ground-truth objects the RPN covers: the fraction of GT boxes with at
    least one box of ``stage`` at IoU >= t, overall and per object size.

    traces: list of ImageTrace (from :func:`trace`), or one ImageTrace.
    gt_boxes: list of (G_i, 4) float xyxy in ORIGINAL image pixels, one per trace (as the
        dataset gives them; one array for one ImageTrace). They are mapped into the
        resized frame the proposals live in with ``transform.resize_boxes`` (as the
        transform maps training targets) and compared there with ``boxes.box_iou``.
    iou_thresholds: IoU thresholds t (default 0.5 and 0.7, the RoI head's foreground
        and the RPN's positive thresholds).
    size_thresholds: (s1, s2), increasing: a GT of side s = sqrt(area) in original
        pixels is "small" if s < s1, "medium" if s1 <= s < s2, "large" otherwise.
        The default (24, 40) cuts the shapes data's 15..64 px objects into three
        equal ranges of log-size (COCO's areas 32^2 and 96^2 would put all of them
        in "small" and "medium"); give (32, 96) for COCO's buckets.
    count_threshold: the IoU at which :attr:`RecallReport.num_covering` counts boxes.
    stage: which boxes of the trace: "proposals" (default: what the heads get),
        "proposals_before_nms", "top_anchors_refined", "top_anchors" or "anchors" (all),
        to see where the RPN loses an object.
    Returns a :class:`RecallReport`.
    """
    traces, single = _check_traces(traces)
    if single:
        gt_boxes = [gt_boxes]
    if not isinstance(gt_boxes, (list, tuple)):
        raise TypeError(f"gt_boxes must be a list of (G, 4) arrays (one per trace), got {type(gt_boxes).__name__}")
    if len(gt_boxes) != len(traces):
        raise ValueError(f"gt_boxes must have one array per trace ({len(traces)}), got {len(gt_boxes)}")
    gts = [_check_box_array(f"gt_boxes[{i}]", g) for i, g in enumerate(gt_boxes)]
    thresholds = _check_thresholds("iou_thresholds", iou_thresholds, minimum=0.0, maximum=1.0)
    size_thresholds = _check_thresholds("size_thresholds", size_thresholds, minimum=0.0, increasing=True)
    if len(size_thresholds) != 2:
        raise ValueError(f"size_thresholds must be two numbers (s1, s2), got {size_thresholds}")
    count_threshold = check_float("count_threshold", count_threshold, minimum=0.0, maximum=1.0)
    if stage not in RECALL_STAGES:
        raise ValueError(f"stage must be one of {RECALL_STAGES}, got {stage!r}")

    best, covering, sides = [], [], []
    for t, g in zip(traces, gts):
        g = g.astype(np.float64)
        resized = resize_boxes(g, t.original_size, t.image_size)
        boxes = _stage_boxes(t, stage).astype(np.float64)
        iou = box_iou(resized, boxes)                                  # (G, P)
        best.append(iou.max(axis=1) if iou.shape[1] else np.zeros(len(g)))
        covering.append((iou >= count_threshold).sum(axis=1).astype(np.int64))
        sides.append(np.sqrt(np.maximum(g[:, 2] - g[:, 0], 0) * np.maximum(g[:, 3] - g[:, 1], 0)))
    best_all = np.concatenate(best) if best else np.zeros(0)
    side_all = np.concatenate(sides) if sides else np.zeros(0)
    s1, s2 = size_thresholds
    bucket_masks = {"small": side_all < s1, "medium": (side_all >= s1) & (side_all < s2), "large": side_all >= s2}
    recall = {thr: _fraction(int((best_all >= thr).sum()), best_all.size) for thr in thresholds}
    by_size = {name: {thr: _fraction(int((best_all[m] >= thr).sum()), int(m.sum())) for thr in thresholds}
               for name, m in bucket_masks.items()}
    return RecallReport(recall=recall, recall_by_size=by_size, num_gt=int(best_all.size),
                        num_gt_by_size={name: int(m.sum()) for name, m in bucket_masks.items()},
                        best_iou=best, num_covering=covering, size=sides, iou_thresholds=thresholds,
                        size_thresholds=size_thresholds, count_threshold=count_threshold, stage=stage)


def _as_bool_masks(name, masks):
    """(G, H, W) or (G, 1, H, W) bool / int / float -> (G, H, W) bool (floats: > 0.5)."""
    check_array(name, masks, dtype_kind="biuf")
    if masks.ndim == 4 and masks.shape[1] == 1:
        masks = masks[:, 0]
    if masks.ndim != 3:
        raise ValueError(f"{name} must have shape (G, H, W) or (G, 1, H, W), got {masks.shape}")
    if masks.dtype.kind == "f":
        check_finite(name, masks)
        return masks > 0.5
    return masks != 0 if masks.dtype.kind != "b" else masks


def iou_matrix(gt, pred, *, kind="box"):
    """Ground truth x prediction IoU of one image.

    kind "box": gt (G, 4), pred (P, 4) float xyxy in one frame; ``boxes.box_iou``
        in float64.
    kind "mask": gt (G, H, W), pred (P, H, W) or (P, 1, H, W) (``detect``'s "masks")
        masks of one size; bool, 0/1 integers, or float probabilities binarised at
        > 0.5 (as ``detect``'s masks are meant to be); pixel IoU
        (``evaluate.mask_iou_coco``; 0 where both masks are empty).
    Returns (G, P) float64: entry [g, p] is IoU(gt g, prediction p).
    """
    if kind == "box":
        gt = _check_box_array("gt", gt)
        pred = _check_box_array("pred", pred)
        return box_iou(gt.astype(np.float64), pred.astype(np.float64))
    if kind == "mask":
        g = _as_bool_masks("gt", gt)
        p = _as_bool_masks("pred", pred)
        if g.shape[1:] != p.shape[1:]:
            raise ValueError(f"gt and pred masks must have the same (H, W), got {g.shape[1:]} and {p.shape[1:]}")
        if not len(g) or not len(p):
            return np.zeros((len(g), len(p)))
        return mask_iou_coco(p, g).T
    raise ValueError(f"kind must be 'box' or 'mask', got {kind!r}")


class ConfusionSummary(NamedTuple):
    """What :func:`confusion_summary` counted (class 0 is background).

    matrix: (K+1, K+1) int64, rows the ground-truth class, columns the predicted
        class: [c, c] true positives; [g, p] a GT of class g claimed by a detection
        of class p (a confusion); [g, 0] a missed GT of class g; [0, p] a false
        positive of class p (it matched no GT); [0, 0] is always 0.
    true_positives, false_positives, false_negatives: (K+1,) int64 per class (entry 0
        is 0): the diagonal, the column sums off the diagonal (detections of class c
        that are not a correct match), the row sums off the diagonal (GTs of class c
        not found as class c).
    precision, recall: (K+1,) float64, TP / (TP + FP) and TP / (TP + FN), NaN where
        the denominator is 0 (and at 0).
    iou_threshold, score_threshold: the arguments.
    """

    matrix: np.ndarray
    true_positives: np.ndarray
    false_positives: np.ndarray
    false_negatives: np.ndarray
    precision: np.ndarray
    recall: np.ndarray
    iou_threshold: float
    score_threshold: float


def _check_labelled(name, d, *, with_scores, num_classes):
    if with_scores and isinstance(d, ImageTrace):
        d = d.detections
    if not isinstance(d, dict):
        raise TypeError(f"{name} must be a dict, got {type(d).__name__}")
    keys = ("boxes", "labels", "scores") if with_scores else ("boxes", "labels")
    for k in keys:
        if k not in d:
            raise ValueError(f"{name} is missing {k!r} (needs {', '.join(map(repr, keys))})")
    boxes = _check_box_array(f"{name}['boxes']", d["boxes"])
    n = boxes.shape[0]
    labels = check_array(f"{name}['labels']", d["labels"], shape=(n,), dtype_kind="iu")
    if n and (labels.min() < 1 or labels.max() >= num_classes):
        raise ValueError(f"{name}['labels'] must be in [1, {num_classes - 1}] (num_classes={num_classes}), "
                         f"got values in [{labels.min()}, {labels.max()}]")
    scores = None
    if with_scores:
        scores = check_array(f"{name}['scores']", d["scores"], shape=(n,), dtype_kind="f")
        check_finite(f"{name}['scores']", scores)
    return boxes.astype(np.float64), labels.astype(np.int64), scores


def _greedy(ious, det_order, det_free, gt_free, allowed, threshold):
    """COCO's greedy assignment: each detection, best score first, takes the free GT
    (allowed[d, g]) of highest IoU >= threshold (ties to the lower GT index).
    Marks both as taken; returns the (det, gt) pairs."""
    pairs = []
    for d in det_order:
        if not det_free[d]:
            continue
        cand = np.where(gt_free & allowed[d] & (ious[d] >= threshold), ious[d], -1.0)
        if cand.size == 0 or cand.max() < 0:
            continue
        g = int(np.argmax(cand))
        det_free[d] = False
        gt_free[g] = False
        pairs.append((d, g))
    return pairs


def confusion_summary(gts, dets, num_classes, *, iou_threshold=0.5, score_threshold=0.5):
    """Per-class confusion matrix of detections against ground truth, with background.

    gts: list over images of dicts with "boxes" (G_i, 4) float xyxy and "labels"
        (G_i,) int in [1, K] (e.g. ``data.shapes.ShapesDataset`` samples).
    dets: list over images of dicts with "boxes" (E_i, 4) in the same frame,
        "labels" (E_i,) and "scores" (E_i,) (``model.detect``'s output), or ImageTrace
        (its ``detections`` are used).
    num_classes: K+1, background included (``config.num_classes``).
    iou_threshold: a detection and a GT match at box IoU >= this (default 0.5), IoU as
        pycocotools computes it (``evaluate.box_iou_coco``).
    score_threshold: detections scoring below it are ignored (default 0.5).

    Matching, per image, detections in order of decreasing score (stable):
      1. as COCO: each detection takes the still-unmatched GT OF ITS CLASS with the
         highest IoU >= iou_threshold (ties to the lower GT index; pycocotools takes
         the last of exactly tied GTs), so the diagonal is COCO's true positives at
         this threshold;
      2. then each still-unmatched detection, in the same order, takes the
         still-unmatched GT of ANY class with the highest IoU >= iou_threshold: a
         confusion, counted at [GT class, detected class];
      3. every GT left is a miss ([class, 0]), every detection left a false positive
         ([0, class]).
    Returns a :class:`ConfusionSummary`.
    """
    k1 = check_positive_int("num_classes", num_classes, minimum=2)
    iou_threshold = check_float("iou_threshold", iou_threshold, minimum=0.0, maximum=1.0)
    score_threshold = check_float("score_threshold", score_threshold)
    for name, value in (("gts", gts), ("dets", dets)):
        if not isinstance(value, (list, tuple)):
            raise TypeError(f"{name} must be a list (one entry per image), got {type(value).__name__}")
    if len(gts) != len(dets):
        raise ValueError(f"gts and dets must have one entry per image, got {len(gts)} and {len(dets)}")
    matrix = np.zeros((k1, k1), dtype=np.int64)
    for i, (gt, det) in enumerate(zip(gts, dets)):
        g_boxes, g_labels, _ = _check_labelled(f"gts[{i}]", gt, with_scores=False, num_classes=k1)
        d_boxes, d_labels, d_scores = _check_labelled(f"dets[{i}]", det, with_scores=True, num_classes=k1)
        keep = np.flatnonzero(d_scores >= score_threshold)
        d_boxes, d_labels, d_scores = d_boxes[keep], d_labels[keep], d_scores[keep]
        order = np.argsort(-d_scores, kind="mergesort")               # pycocotools' order
        ious = box_iou_coco(d_boxes, g_boxes) if len(d_boxes) and len(g_boxes) else np.zeros(
            (len(d_boxes), len(g_boxes)))
        det_free = np.ones(len(d_boxes), bool)
        gt_free = np.ones(len(g_boxes), bool)
        same = d_labels[:, None] == g_labels[None, :]
        for d, g in _greedy(ious, order, det_free, gt_free, same, iou_threshold):      # 1.
            matrix[g_labels[g], d_labels[d]] += 1
        for d, g in _greedy(ious, order, det_free, gt_free, np.ones_like(same), iou_threshold):  # 2.
            matrix[g_labels[g], d_labels[d]] += 1
        np.add.at(matrix, (g_labels[gt_free], 0), 1)                   # 3.
        np.add.at(matrix, (0, d_labels[det_free]), 1)
    tp = np.diag(matrix).copy()
    tp[0] = 0
    fp = matrix.sum(axis=0) - np.diag(matrix)
    fn = matrix.sum(axis=1) - np.diag(matrix)
    fp[0] = fn[0] = 0
    precision = np.full(k1, np.nan)
    recall = np.full(k1, np.nan)
    np.divide(tp, tp + fp, out=precision, where=(tp + fp) > 0)
    np.divide(tp, tp + fn, out=recall, where=(tp + fn) > 0)
    precision[0] = recall[0] = np.nan
    return ConfusionSummary(matrix=matrix, true_positives=tp, false_positives=fp, false_negatives=fn,
                            precision=precision, recall=recall, iou_threshold=iou_threshold,
                            score_threshold=score_threshold)
