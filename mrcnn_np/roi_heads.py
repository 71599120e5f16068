"""The RoI heads of Mask R-CNN: targets, box head, mask head, losses, post-processing.

The RPN hands over a few hundred to a few thousand proposals per image. The
RoI heads then do two jobs on each of them:

* the **box branch** pools a 7x7 feature patch per RoI (RoIAlign), runs two
  fully connected layers and predicts, per RoI, K+1 class logits and one set of
  four box deltas per class;
* the **mask branch** pools a 14x14 patch per *positive* RoI, runs four 3x3
  convolutions, a 2x2 transposed convolution and a 1x1 convolution, and
  predicts one 28x28 mask logit map per class.

Training needs targets: :func:`select_training_samples` matches proposals (plus
the ground-truth boxes themselves) to the ground truth, samples 512 RoIs per
image with at most 25 % positives, and encodes regression targets;
:func:`project_masks_on_boxes` cuts the 28x28 mask targets out of the
ground-truth masks. Inference turns logits into final detections
(:func:`postprocess_detections`), mask probabilities
(:func:`maskrcnn_inference`) and full-image masks
(:func:`paste_masks_in_image`).

Every public name is the snake_case twin of torchvision's
``models/detection/roi_heads.py`` / ``faster_rcnn.py`` / ``mask_rcnn.py``
piece of the same name, with the same argument order and meaning; each
docstring names its twin and says where ours differs.

Shape shorthand
---------------
    N      images in the batch
    G      ground-truth objects of one image
    R      proposals (RoIs); of one image, or of the batch when concatenated
    S      sampled RoIs of one image (at most ``batch_size_per_image``)
    P      positive RoIs (the mask branch sees only those)
    K+1    classes including background: torchvision's ``num_classes``
           (91 for COCO); label 0 is background
    C      channels of the pooled features (256 in the reference)
    Hb, Wb pooled side of the box branch (7) ; Hm, Wm of the mask branch (14)
    M      side of the mask logits and targets (28 = 2 * 14)
    D      detections of one image
    H, W   image height and width

Coordinates: a box is ``(x1, y1, x2, y2)`` in input-image pixels (floats),
width ``x2 - x1`` (no +1). RoIs given to RoIAlign are ``(R, 5)``
``[batch_index, x1, y1, x2, y2]``.

Naming: ``gt_*`` ground truth, ``*_per_image`` or a plain list: one entry per
image (as torchvision's ``list[Tensor]``), ``pred_*`` / ``*_logits`` network
outputs.

Where gradients flow and where they stop
-----------------------------------------
Proposals, their matching, the sampling, regression targets and mask targets
are constants (torchvision detaches proposals before the heads). Gradients flow

    pooled features -> box head -> (class_logits, box_regression) -> fastrcnn_loss
    pooled features -> mask head -> mask_logits -> maskrcnn_loss

and the pooled features' gradient goes back through RoIAlign (not here) into
the FPN. Post-processing and pasting have no gradient.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ._checks import (
    check_array,
    check_coordinates,
    check_finite,
    check_float,
    check_float_dtype,
    check_hw_pair,
    check_params,
    check_positive_int,
    check_rng,
    check_same_dtype,
    quiet_math,
)
from .boxes import (
    _box_iou,
    _clip_boxes_to_image,
    _decode_boxes,
    _encode_boxes,
    _nms,
    _remove_small_boxes,
    _check_weights,
)
from .matching import BELOW_LOW_THRESHOLD, BETWEEN_THRESHOLDS, _balanced_positive_negative_sampler, _matcher
from .ops.activations import _relu_backward, _relu_forward, _relu_inplace, _sigmoid, _softmax
from .ops.conv import (
    _conv2d_backward,
    _conv2d_forward,
    _conv2d_relu_forward,
    _conv_stack_infer,
    _conv_transpose2d_backward,
    _conv_transpose2d_forward,
)
from .ops.linear import _linear_backward, _linear_forward
from .ops.losses import _bce_with_logits, _smooth_l1, _softmax_cross_entropy
from .ops.resize import resize_bilinear
from .roi_align import _roi_align_forward, _roi_align_method

__all__ = [
    "BOX_CODER_WEIGHTS",
    "BOX_HEAD_KEYS",
    "mask_head_keys",
    "add_gt_proposals",
    "assign_targets_to_proposals",
    "subsample",
    "select_training_samples",
    "select_positive_proposals",
    "init_box_head",
    "box_head_forward",
    "box_head_backward",
    "BoxHeadCache",
    "fastrcnn_loss",
    "init_mask_head",
    "mask_head_forward",
    "mask_head_backward",
    "MaskHeadCache",
    "MaskConvLayerCache",
    "project_masks_on_boxes",
    "maskrcnn_loss",
    "maskrcnn_inference",
    "postprocess_detections",
    "expand_boxes",
    "expand_masks",
    "paste_masks_in_image",
    "paste_masks_in_image_naive",
]

#: ``BoxCoder`` weights (wx, wy, ww, wh) of the box head (the RPN uses 1, 1, 1, 1).
BOX_CODER_WEIGHTS = (10.0, 10.0, 5.0, 5.0)

_BOX_HEAD = "roi_heads.box_head."
_BOX_PRED = "roi_heads.box_predictor."
_MASK_HEAD = "roi_heads.mask_head."
_MASK_PRED = "roi_heads.mask_predictor."

#: Parameter names of the box branch, in forward order.
BOX_HEAD_KEYS = tuple(
    f"{prefix}{layer}.{kind}"
    for prefix, layer in ((_BOX_HEAD, "fc6"), (_BOX_HEAD, "fc7"),
                          (_BOX_PRED, "cls_score"), (_BOX_PRED, "bbox_pred"))
    for kind in ("weight", "bias")
)


# =========================================================================== checks
def _p(key):
    """How an error names a parameter: ``params['key']``."""
    return f"params[{key!r}]"


def _check_list(name, value):
    if not isinstance(value, (list, tuple)):
        raise TypeError(f"{name} must be a list with one entry per image, got {type(value).__name__}")
    return list(value)


def _check_lists(num_images, **lists):
    """Check that every keyword argument is a list of ``num_images`` entries; return them as lists."""
    out = []
    for name, value in lists.items():
        value = _check_list(name, value)
        if len(value) != num_images:
            raise ValueError(f"{name} must have one entry per image ({num_images}), got {len(value)}")
        out.append(value)
    return out


def _check_boxes(name, boxes, *, dtype=None):
    check_array(name, boxes, shape=("N", 4), dtype_kind="f")
    # finite, and small enough for the areas of an IoU (float16 is measured in float32)
    check_coordinates(name, boxes, np.promote_types(boxes.dtype, np.float32))
    if dtype is not None and boxes.dtype != dtype:
        raise TypeError(f"{name} must have dtype {dtype} (as the other boxes), got {boxes.dtype}")
    return boxes


def _check_box_list(name, boxes_per_image):
    """A list of (R_i, 4) float arrays sharing one dtype; returns the list."""
    boxes_per_image = _check_list(name, boxes_per_image)
    dtype = None
    for i, b in enumerate(boxes_per_image):
        _check_boxes(f"{name}[{i}]", b, dtype=dtype)
        dtype = b.dtype
    return boxes_per_image


def _concat_or_array(name, value, *, ndim, dtype_kind):
    """torchvision passes per-image lists; accept such a list (concatenated) or one array."""
    if isinstance(value, (list, tuple)):
        parts = [check_array(f"{name}[{i}]", v, ndim=ndim, dtype_kind=dtype_kind)
                 for i, v in enumerate(value)]
        if not parts:
            raise ValueError(f"{name} must have at least one image, got an empty list")
        return np.concatenate(parts, axis=0)
    return check_array(name, value, ndim=ndim, dtype_kind=dtype_kind)


# =========================================================================== RoI targets
def add_gt_proposals(proposals, gt_boxes):
    """Append each image's ground-truth boxes to its proposals.

    Twin of ``RoIHeads.add_gt_proposals``. Early in training the RPN proposes
    little of use; the ground-truth boxes guarantee some positives (each has
    IoU 1 with itself).
    proposals: list of (R_i, 4) float; gt_boxes: list of (G_i, 4), same dtype.
    Returns a list of (R_i + G_i, 4): proposals first, then the GT boxes.
    """
    proposals = _check_box_list("proposals", proposals)
    (gt_boxes,) = _check_lists(len(proposals), gt_boxes=gt_boxes)
    for i, (p, g) in enumerate(zip(proposals, gt_boxes)):
        _check_boxes(f"gt_boxes[{i}]", g, dtype=p.dtype)
    return _add_gt_proposals(proposals, gt_boxes)


def _add_gt_proposals(proposals, gt_boxes):
    """:func:`add_gt_proposals` without the checks (for the stages)."""
    return [np.concatenate([p, g], axis=0) for p, g in zip(proposals, gt_boxes)]


def assign_targets_to_proposals(proposals, gt_boxes, gt_labels, *, fg_iou_thresh=0.5,
                                bg_iou_thresh=0.5):
    """Match every proposal to a ground-truth object and give it a class label.

    Twin of ``RoIHeads.assign_targets_to_proposals`` (with its ``Matcher(0.5,
    0.5, allow_low_quality_matches=False)``).
    proposals: list of (R_i, 4); gt_boxes: list of (G_i, 4); gt_labels: list of
    (G_i,) int >= 1.
    Returns (matched_idxs, labels), two lists of (R_i,) int64:

    * matched_idxs[i][r]: the GT index with the highest IoU (ties: lowest
      index), clamped at 0 for background, as torchvision (so it indexes a GT
      box even for background; only positives ever use it);
    * labels[i][r]: that GT's label if IoU >= fg_iou_thresh, 0 (background) if
      IoU < bg_iou_thresh, -1 (ignored) in between — which cannot happen at
      the default 0.5 / 0.5.

    An image with no ground truth gets all zeros (all background).
    """
    proposals = _check_box_list("proposals", proposals)
    gt_boxes, gt_labels = _check_lists(len(proposals), gt_boxes=gt_boxes, gt_labels=gt_labels)
    fg, bg = _check_iou_thresholds(fg_iou_thresh, bg_iou_thresh)
    for i, (p, g, lab) in enumerate(zip(proposals, gt_boxes, gt_labels)):
        _check_boxes(f"gt_boxes[{i}]", g, dtype=p.dtype)
        check_array(f"gt_labels[{i}]", lab, shape=(g.shape[0],), dtype_kind="iu")
        if lab.size and lab.min() < 1:
            raise ValueError(f"gt_labels[{i}] must be >= 1 (0 is background), got {lab.min()}")
    return _assign_targets_to_proposals(proposals, gt_boxes, gt_labels, fg, bg)


def _check_iou_thresholds(fg_iou_thresh, bg_iou_thresh):
    fg = check_float("fg_iou_thresh", fg_iou_thresh, minimum=0.0, maximum=1.0)
    bg = check_float("bg_iou_thresh", bg_iou_thresh, minimum=0.0, maximum=1.0)
    if bg > fg:  # (the matcher's low <= high)
        raise ValueError(f"bg_iou_thresh must be <= fg_iou_thresh ({fg}), got {bg}")
    return fg, bg


def _assign_targets_to_proposals(proposals, gt_boxes, gt_labels, fg_iou_thresh, bg_iou_thresh):
    """:func:`assign_targets_to_proposals` without the checks (for the stages)."""
    fg, bg = fg_iou_thresh, bg_iou_thresh
    matched_idxs, labels = [], []
    for p, g, lab in zip(proposals, gt_boxes, gt_labels):
        r = p.shape[0]
        if g.shape[0] == 0:
            matched_idxs.append(np.zeros(r, dtype=np.int64))
            labels.append(np.zeros(r, dtype=np.int64))
            continue
        matches = _matcher(_box_iou(g, p), fg, bg, allow_low_quality_matches=False)
        clamped = np.maximum(matches, 0)
        lab_i = lab.astype(np.int64)[clamped]
        lab_i[matches == BELOW_LOW_THRESHOLD] = 0
        lab_i[matches == BETWEEN_THRESHOLDS] = -1
        matched_idxs.append(clamped)
        labels.append(lab_i)
    return matched_idxs, labels


def subsample(labels, *, rng, batch_size_per_image=512, positive_fraction=0.25):
    """Indices of the RoIs sampled for training, per image.

    Twin of ``RoIHeads.subsample`` (``BalancedPositiveNegativeSampler(512,
    0.25)``): at most ``int(512 * 0.25) = 128`` positives, negatives fill up to
    512. labels: list of (R_i,) int (>= 1 positive, 0 negative, -1 ignored).
    Returns a list of (S_i,) int64 sorted increasing (torchvision's
    ``where(pos | neg)``, so positives and negatives are interleaved by index).
    Images are sampled one after the other from the same ``rng``.
    """
    labels = _check_list("labels", labels)
    check_rng(rng)
    for i, lab in enumerate(labels):
        check_array(f"labels[{i}]", lab, ndim=1, dtype_kind="iu")
    batch = check_positive_int("batch_size_per_image", batch_size_per_image)
    fraction = check_float("positive_fraction", positive_fraction, minimum=0.0, maximum=1.0)
    return _subsample(labels, rng, batch, fraction)


def _subsample(labels, rng, batch_size_per_image, positive_fraction):
    """:func:`subsample` without the checks (for the stages)."""
    out = []
    for lab in labels:
        pos, neg = _balanced_positive_negative_sampler(lab, batch_size_per_image, positive_fraction, rng)
        out.append(np.flatnonzero(pos | neg).astype(np.int64))
    return out


def select_training_samples(proposals, targets, *, rng, fg_iou_thresh=0.5, bg_iou_thresh=0.5,
                            batch_size_per_image=512, positive_fraction=0.25,
                            bbox_reg_weights=BOX_CODER_WEIGHTS):
    """Sampled RoIs with their labels, matched GT indices and regression targets.

    Twin of ``RoIHeads.select_training_samples``: add the GT boxes to the
    proposals, match (IoU >= 0.5 foreground, else background), sample 512 per
    image with at most 25 % positives, and encode each sampled RoI's matched
    GT box relative to it with weights (10, 10, 5, 5).

    proposals: list over images of (R_i, 4) float xyxy (constants: no gradient).
    targets: list over images of dicts with "boxes" (G_i, 4) float and
        "labels" (G_i,) int >= 1 (other keys such as "masks" are ignored here).
    rng: ``np.random.Generator`` for the sampler.
    Returns (proposals, matched_idxs, labels, regression_targets), lists over
    images of (S_i, 4) float, (S_i,) int64, (S_i,) int64 (0 = background),
    (S_i, 4) float (the proposals' dtype).

    ``matched_idxs`` says which GT object each sampled RoI belongs to; for
    the positives it is what the mask targets need. For background RoIs it is
    0 (clamped) and meaningless.

    Differences from torchvision: GT boxes are cast to the proposals' dtype (as
    torchvision) and must have positive width and height; for an image with no
    GT at all the regression targets are zeros (torchvision encodes against a
    dummy all-zero box, giving -inf; they are never used).
    """
    proposals = _check_box_list("proposals", proposals)
    (targets,) = _check_lists(len(proposals), targets=targets)
    check_rng(rng)
    for i, t in enumerate(targets):
        if not isinstance(t, dict) or "boxes" not in t or "labels" not in t:
            raise ValueError(f"targets[{i}] must be a dict with 'boxes' and 'labels', got {t!r:.80}")
        g = _check_boxes(f"targets[{i}]['boxes']", t["boxes"])
        if g.size and not ((g[:, 2] > g[:, 0]).all() and (g[:, 3] > g[:, 1]).all()):
            raise ValueError(f"targets[{i}]['boxes'] must have positive widths and heights, got a degenerate box")
        lab = check_array(f"targets[{i}]['labels']", t["labels"], shape=(g.shape[0],), dtype_kind="iu")
        if lab.size and lab.min() < 1:
            raise ValueError(f"targets[{i}]['labels'] must be >= 1 (0 is background), got {lab.min()}")
    for i, p in enumerate(proposals):  # every sampled RoI is encoded: log of its width and height
        if p.dtype == np.float16:
            raise TypeError(f"proposals[{i}] must be float32 or float64, got float16 (the box coder refuses it)")
        if p.size and not ((p[:, 2] > p[:, 0]).all() and (p[:, 3] > p[:, 1]).all()):
            raise ValueError(f"proposals[{i}] must have positive widths and heights, got a degenerate box")
    fg, bg = _check_iou_thresholds(fg_iou_thresh, bg_iou_thresh)
    batch = check_positive_int("batch_size_per_image", batch_size_per_image)
    fraction = check_float("positive_fraction", positive_fraction, minimum=0.0, maximum=1.0)
    weights = _check_weights(bbox_reg_weights, proposals[0].dtype if proposals else np.float64, "bbox_reg_weights")
    return _select_training_samples(proposals, targets, rng, fg, bg, batch, fraction, weights)


def _select_training_samples(proposals, targets, rng, fg_iou_thresh, bg_iou_thresh, batch_size_per_image,
                             positive_fraction, bbox_reg_weights):
    """:func:`select_training_samples` without the checks (for ``model``)."""
    gt_boxes = [t["boxes"].astype(p.dtype, copy=False) for p, t in zip(proposals, targets)]
    gt_labels = [t["labels"] for t in targets]
    proposals = _add_gt_proposals(proposals, gt_boxes)
    matched_idxs, labels = _assign_targets_to_proposals(proposals, gt_boxes, gt_labels, fg_iou_thresh,
                                                        bg_iou_thresh)
    sampled_inds = _subsample(labels, rng, batch_size_per_image, positive_fraction)
    out_props, out_idxs, out_labels, out_targets = [], [], [], []
    for p, m, lab, g, s in zip(proposals, matched_idxs, labels, gt_boxes, sampled_inds):
        p, m, lab = p[s], m[s], lab[s]
        if g.shape[0] == 0:
            reg = np.zeros((p.shape[0], 4), dtype=p.dtype)
        else:
            reg = _encode_boxes(g[m], p, np.asarray(bbox_reg_weights, dtype=p.dtype))
        out_props.append(p)
        out_idxs.append(m)
        out_labels.append(lab)
        out_targets.append(reg)
    return out_props, out_idxs, out_labels, out_targets


def select_positive_proposals(proposals, labels, matched_idxs):
    """The positive RoIs of each image and their GT indices, for the mask branch.

    The few lines at the start of torchvision's ``RoIHeads.forward`` mask
    branch (training): ``pos = where(labels > 0)``.
    proposals, labels, matched_idxs: lists over images of (S_i, 4), (S_i,), (S_i,)
    as returned by :func:`select_training_samples`.
    Returns (mask_proposals, pos_matched_idxs): lists of (P_i, 4) and (P_i,) int64.
    """
    proposals = _check_box_list("proposals", proposals)
    labels, matched_idxs = _check_lists(len(proposals), labels=labels, matched_idxs=matched_idxs)
    for i, (p, lab, m) in enumerate(zip(proposals, labels, matched_idxs)):
        check_array(f"labels[{i}]", lab, shape=(p.shape[0],), dtype_kind="iu")
        check_array(f"matched_idxs[{i}]", m, shape=(p.shape[0],), dtype_kind="iu")
    return _select_positive_proposals(proposals, labels, matched_idxs)


def _select_positive_proposals(proposals, labels, matched_idxs):
    """:func:`select_positive_proposals` without the checks (for ``model``)."""
    mask_proposals, pos_matched_idxs = [], []
    for p, lab, m in zip(proposals, labels, matched_idxs):
        pos = np.flatnonzero(lab > 0)
        mask_proposals.append(p[pos])
        pos_matched_idxs.append(m[pos].astype(np.int64))
    return mask_proposals, pos_matched_idxs


# =========================================================================== init helpers
def _linear_default_init(rng, out_features, in_features, dtype):
    """torch ``nn.Linear`` default: kaiming_uniform(a=sqrt(5)) on the weight, i.e.
    U(-1/sqrt(fan_in), 1/sqrt(fan_in)), and the same bound for the bias."""
    bound = 1.0 / np.sqrt(in_features)
    w = rng.uniform(-bound, bound, size=(out_features, in_features)).astype(dtype)
    b = rng.uniform(-bound, bound, size=(out_features,)).astype(dtype)
    return w, b


def _kaiming_normal_fan_out(rng, shape, fan_out, dtype):
    """torch ``kaiming_normal_(mode="fan_out", nonlinearity="relu")``: N(0, 2 / fan_out)."""
    return (rng.standard_normal(shape) * np.sqrt(2.0 / fan_out)).astype(dtype)


# =========================================================================== box head
class BoxHeadCache(NamedTuple):
    """Caches of the box branch, in forward order.

    pooled_shape: (R, C, Hb, Wb) of the input; fc6, fc7, cls_score, bbox_pred:
    LinearCache; relu6, relu7: ReluCache.
    """

    pooled_shape: tuple
    fc6: tuple
    relu6: tuple
    fc7: tuple
    relu7: tuple
    cls_score: tuple
    bbox_pred: tuple


@quiet_math
def init_box_head(in_channels=256, resolution=7, representation_size=1024, num_classes=91, *,
                  rng, dtype=np.float32):
    """Parameters of ``TwoMLPHead`` + ``FastRCNNPredictor`` (torchvision init).

    in_channels: C of the pooled features; resolution: pooled side (7);
    representation_size: width of fc6 and fc7 (1024); num_classes: K+1,
    background included (torchvision's meaning: 91 for COCO, 4 for shapes).
    Every layer has torch's ``nn.Linear`` default init (weights and biases
    U(-1/sqrt(fan_in), 1/sqrt(fan_in))), which is what torchvision leaves.
    Returns a dict with keys ``roi_heads.box_head.fc6.weight`` (1024, C*7*7),
    ``...fc6.bias``, ``...fc7.weight/bias``, ``roi_heads.box_predictor.
    cls_score.weight`` (K+1, 1024) / ``.bias``, ``...bbox_pred.weight``
    (4(K+1), 1024) / ``.bias``.
    """
    c = check_positive_int("in_channels", in_channels)
    res = check_positive_int("resolution", resolution)
    rep = check_positive_int("representation_size", representation_size)
    k = check_positive_int("num_classes", num_classes, minimum=2)
    check_rng(rng)
    dtype = check_float_dtype(dtype)
    params = {}
    for name, (out_f, in_f) in (
        (_BOX_HEAD + "fc6", (rep, c * res * res)),
        (_BOX_HEAD + "fc7", (rep, rep)),
        (_BOX_PRED + "cls_score", (k, rep)),
        (_BOX_PRED + "bbox_pred", (4 * k, rep)),
    ):
        params[name + ".weight"], params[name + ".bias"] = _linear_default_init(rng, out_f, in_f, dtype)
    return params


@quiet_math
def box_head_forward(params, pooled):
    """The box branch: ``TwoMLPHead`` then ``FastRCNNPredictor``.

        x = flatten(pooled)                       (R, C*Hb*Wb)
        x = relu(fc6(x)); x = relu(fc7(x))        (R, 1024)
        class_logits = cls_score(x)               (R, K+1)
        box_regression = bbox_pred(x)             (R, 4(K+1)), class k's deltas at 4k:4k+4

    params: dict with the eight ``BOX_HEAD_KEYS`` (extra keys ignored).
    pooled: (R, C, Hb, Wb) float, RoIAligned features (R may be 0).
    Returns ((class_logits, box_regression), BoxHeadCache).
    """
    check_array("pooled", pooled, ndim=4, dtype_kind="f")
    check_params(params, dict.fromkeys(BOX_HEAD_KEYS), dtype=pooled.dtype)
    w6 = params[_BOX_HEAD + "fc6.weight"]
    flat_dim = int(np.prod(pooled.shape[1:]))
    if w6.ndim != 2 or w6.shape[1] != flat_dim:
        raise ValueError(
            f"pooled must have C*Hb*Wb = {w6.shape[1] if w6.ndim == 2 else '?'} features per RoI "
            f"to match roi_heads.box_head.fc6.weight {w6.shape}, got shape {pooled.shape}"
        )
    _check_box_head_shapes(params)
    return _box_head_forward(params, pooled)


def _check_box_head_shapes(params):
    """fc6 (H6, I), fc7 (H7, H6), cls_score (K+1, H7), bbox_pred (4(K+1), H7), biases to match."""
    rep = params[_BOX_HEAD + "fc6.weight"].shape[0]
    rep7 = check_array(_p(_BOX_HEAD + "fc7.weight"), params[_BOX_HEAD + "fc7.weight"], shape=(None, rep)).shape[0]
    k1 = check_array(_p(_BOX_PRED + "cls_score.weight"), params[_BOX_PRED + "cls_score.weight"],
                     shape=(None, rep7)).shape[0]
    box_rows = params[_BOX_PRED + "bbox_pred.weight"].shape[0]
    if box_rows != 4 * k1:
        raise ValueError(f"params['roi_heads.box_predictor.bbox_pred.weight'] must have 4 * {k1} rows, "
                         f"got {box_rows}")
    check_array(_p(_BOX_PRED + "bbox_pred.weight"), params[_BOX_PRED + "bbox_pred.weight"], shape=(4 * k1, rep7))
    for name, n in (("fc6", rep), ("fc7", rep7)):
        check_array(_p(f"{_BOX_HEAD}{name}.bias"), params[f"{_BOX_HEAD}{name}.bias"], shape=(n,))
    for name, n in (("cls_score", k1), ("bbox_pred", 4 * k1)):
        check_array(_p(f"{_BOX_PRED}{name}.bias"), params[f"{_BOX_PRED}{name}.bias"], shape=(n,))


def _box_head_forward(params, pooled):
    """:func:`box_head_forward` without the checks (for ``model``)."""
    x = pooled.reshape(pooled.shape[0], int(np.prod(pooled.shape[1:])))  # (R, C*Hb*Wb), R may be 0
    x, c6 = _linear_forward(x, params[_BOX_HEAD + "fc6.weight"], params[_BOX_HEAD + "fc6.bias"])
    x, r6 = _relu_forward(x)
    x, c7 = _linear_forward(x, params[_BOX_HEAD + "fc7.weight"], params[_BOX_HEAD + "fc7.bias"])
    x, r7 = _relu_forward(x)
    class_logits, cc = _linear_forward(x, params[_BOX_PRED + "cls_score.weight"],
                                       params[_BOX_PRED + "cls_score.bias"])
    box_regression, cb = _linear_forward(x, params[_BOX_PRED + "bbox_pred.weight"],
                                         params[_BOX_PRED + "bbox_pred.bias"])
    return (class_logits, box_regression), BoxHeadCache(pooled.shape, c6, r6, c7, r7, cc, cb)


def _box_head_infer(params, pooled):
    """:func:`box_head_forward` for inference (no checks): the same (class_logits,
    box_regression), no caches, ReLUs in place."""
    x = pooled.reshape(pooled.shape[0], int(np.prod(pooled.shape[1:])))
    x = _relu_inplace(_linear_forward(x, params[_BOX_HEAD + "fc6.weight"], params[_BOX_HEAD + "fc6.bias"])[0])
    x = _relu_inplace(_linear_forward(x, params[_BOX_HEAD + "fc7.weight"], params[_BOX_HEAD + "fc7.bias"])[0])
    class_logits = _linear_forward(x, params[_BOX_PRED + "cls_score.weight"], params[_BOX_PRED + "cls_score.bias"])[0]
    box_regression = _linear_forward(x, params[_BOX_PRED + "bbox_pred.weight"],
                                     params[_BOX_PRED + "bbox_pred.bias"])[0]
    return class_logits, box_regression


@quiet_math
def box_head_backward(dout, cache):
    """Gradients of :func:`box_head_forward`.

    dout: (dclass_logits (R, K+1), dbox_regression (R, 4(K+1))); either may be
        None (treated as zeros).
    cache: BoxHeadCache.
    Returns (grads, dpooled): grads a dict with the eight ``BOX_HEAD_KEYS``,
    dpooled (R, C, Hb, Wb). The hidden activation feeds both predictors, so
    their input gradients add.
    """
    if not isinstance(cache, BoxHeadCache):
        raise TypeError(f"cache must be a BoxHeadCache, got {type(cache).__name__}")
    if not isinstance(dout, (tuple, list)) or len(dout) != 2:
        raise TypeError("dout must be a pair (dclass_logits, dbox_regression)")
    dcls, dbox = dout
    r = cache.pooled_shape[0]
    dt = cache.fc6.x.dtype
    if dcls is None:
        dcls = np.zeros((r, cache.cls_score.w.shape[0]), dtype=dt)
    if dbox is None:
        dbox = np.zeros((r, cache.bbox_pred.w.shape[0]), dtype=dt)
    check_array("dclass_logits", dcls, shape=(r, cache.cls_score.w.shape[0]), dtype_kind="f")
    check_array("dbox_regression", dbox, shape=(r, cache.bbox_pred.w.shape[0]), dtype_kind="f")
    for name, d in (("dclass_logits", dcls), ("dbox_regression", dbox)):
        if d.dtype != dt:
            raise TypeError(f"{name} must have the dtype of the forward pass ({dt}), got {d.dtype}")
    return _box_head_backward((dcls, dbox), cache)


def _box_head_backward(dout, cache):
    """:func:`box_head_backward` without the checks (for ``model``): both gradients given."""
    dcls, dbox = dout
    grads = {}
    dx_c, grads[_BOX_PRED + "cls_score.weight"], grads[_BOX_PRED + "cls_score.bias"] = \
        _linear_backward(dcls, cache.cls_score)
    dx_b, grads[_BOX_PRED + "bbox_pred.weight"], grads[_BOX_PRED + "bbox_pred.bias"] = \
        _linear_backward(dbox, cache.bbox_pred)
    dx = _relu_backward(dx_c + dx_b, cache.relu7)
    dx, grads[_BOX_HEAD + "fc7.weight"], grads[_BOX_HEAD + "fc7.bias"] = _linear_backward(dx, cache.fc7)
    dx = _relu_backward(dx, cache.relu6)
    dx, grads[_BOX_HEAD + "fc6.weight"], grads[_BOX_HEAD + "fc6.bias"] = _linear_backward(dx, cache.fc6)
    return grads, dx.reshape(cache.pooled_shape)


@quiet_math
def fastrcnn_loss(class_logits, box_regression, labels, regression_targets):
    """Classification and box-regression losses of the box branch, with gradients.

    Twin of torchvision's ``fastrcnn_loss``:

        loss_classifier = mean_r CE(class_logits[r], labels[r])          over all S sampled RoIs
        loss_box_reg    = sum_{r: labels[r] > 0} smoothL1_{1/9}(
                              box_regression[r, 4 l_r : 4 l_r + 4] - regression_targets[r]) / S

    Only the ground-truth class's four deltas of a positive RoI enter the box
    loss; background RoIs and the other classes' deltas get exactly zero
    gradient. Note the division by S (all sampled RoIs), not by the positives.

    class_logits: (S, K+1) float. box_regression: (S, 4(K+1)), same dtype.
    labels: (S,) int in [0, K], or a list of per-image (S_i,) (concatenated,
        as torchvision's ``list[Tensor]``).
    regression_targets: (S, 4) float or a list of per-image (S_i, 4) (constants;
        cast to box_regression's dtype).
    Returns (loss_classifier, loss_box_reg, dclass_logits (S, K+1),
    dbox_regression (S, 4(K+1))): losses are scalars of the logits' dtype; each
    gradient is that of its own loss.
    S == 0 gives two zero losses and empty gradients (torchvision gives nan).
    """
    check_array("class_logits", class_logits, shape=("S", "K+1"), dtype_kind="f")
    s, k1 = class_logits.shape
    check_array("box_regression", box_regression, shape=(s, 4 * k1), dtype_kind="f")
    check_same_dtype(class_logits=class_logits, box_regression=box_regression)
    labels = _concat_or_array("labels", labels, ndim=1, dtype_kind="iu")
    regression_targets = _concat_or_array("regression_targets", regression_targets, ndim=2, dtype_kind="f")
    if labels.shape != (s,):
        raise ValueError(f"labels must have shape ({s},) to match class_logits, got {labels.shape}")
    if regression_targets.shape != (s, 4):
        raise ValueError(f"regression_targets must have shape ({s}, 4), got {regression_targets.shape}")
    if s and (labels.min() < 0 or labels.max() >= k1):
        raise ValueError(f"labels must be in [0, {k1 - 1}], got values in [{labels.min()}, {labels.max()}]")
    for name, arr in (("class_logits", class_logits), ("box_regression", box_regression)):
        check_finite(name, arr)
    return _fastrcnn_loss(class_logits, box_regression, labels, regression_targets)


def _fastrcnn_loss(class_logits, box_regression, labels, regression_targets):
    """:func:`fastrcnn_loss` without the checks (for ``model``): labels (S,) and
    regression_targets (S, 4) arrays, or per-image lists of them."""
    if isinstance(labels, (list, tuple)):
        labels = np.concatenate(labels, axis=0)
    if isinstance(regression_targets, (list, tuple)):
        regression_targets = np.concatenate(regression_targets, axis=0)
    s, k1 = class_logits.shape
    dt = class_logits.dtype.type
    if s == 0:
        return dt(0), dt(0), np.zeros_like(class_logits), np.zeros_like(box_regression)
    loss_cls, dcls = _softmax_cross_entropy(class_logits, labels, reduction="mean")
    pos = np.flatnonzero(labels > 0)
    labels_pos = labels[pos]
    box = box_regression.reshape(s, k1, 4)
    dbox = np.zeros_like(box)
    if pos.size:
        sel = box[pos, labels_pos]
        tgt = regression_targets[pos].astype(box.dtype, copy=False)
        box_sum, dsel = _smooth_l1(sel, tgt, beta=1.0 / 9, reduction="sum")
        dbox[pos, labels_pos] = dsel / dt(s)
        loss_box = dt(box_sum / dt(s))
    else:
        loss_box = dt(0)
    return dt(loss_cls), loss_box, dcls, dbox.reshape(s, 4 * k1)


# =========================================================================== mask head
class MaskConvLayerCache(NamedTuple):
    """Caches of one ``mask_head.{i}`` layer: its 3x3 convolution and its ReLU."""

    conv: tuple  # Conv2dCache
    relu: tuple  # ReluCache


class MaskHeadCache(NamedTuple):
    """Caches of the mask branch, in forward order.

    convs: tuple of MaskConvLayerCache for mask_head.0 .. mask_head.{L-1};
    conv5_mask: ConvTranspose2dCache; relu5: ReluCache; logits: Conv2dCache;
    num_layers: L (4 in the reference).
    num_rois: P (may be 0: the convolutions accept an empty batch, and every
    gradient is then exactly 0).
    """

    convs: tuple
    conv5_mask: tuple
    relu5: tuple
    logits: tuple
    num_layers: int
    num_rois: int


def _mask_head_layer_keys(i):
    return f"{_MASK_HEAD}{i}.0.weight", f"{_MASK_HEAD}{i}.0.bias"


@quiet_math
def init_mask_head(in_channels=256, layers=(256, 256, 256, 256), dim_reduced=256, num_classes=91, *,
                   rng, dtype=np.float32):
    """Parameters of ``MaskRCNNHeads`` + ``MaskRCNNPredictor`` (torchvision init).

    in_channels: C of the pooled 14x14 features; layers: output channels of
    each 3x3 convolution (four of 256); dim_reduced: channels of the 2x2
    transposed convolution (256); num_classes: K+1, background included.

    Names are those of torchvision's current ``maskrcnn_resnet50_fpn``
    ``state_dict``: ``roi_heads.mask_head.{i}.0.weight`` / ``.bias`` for
    i = 0..3 (``MaskRCNNHeads`` is a Sequential of ``Conv2dNormActivation``;
    the older names ``mask_fcn1..4`` are only accepted by its
    ``_load_from_state_dict`` and remapped to these),
    ``roi_heads.mask_predictor.conv5_mask.weight`` (C_last, dim_reduced, 2, 2)
    and ``roi_heads.mask_predictor.mask_fcn_logits.weight`` (K+1, dim_reduced, 1, 1).

    Init as torchvision: every weight kaiming_normal(fan_out, relu), i.e.
    N(0, 2 / fan_out) with torch's fan_out = weight.shape[0] * kh * kw (for the
    transposed conv that is in_channels * 4); the 3x3 conv biases are 0; the
    predictor's biases keep torch's default U(+-1/sqrt(fan_in)) with fan_in =
    weight.shape[1] * kh * kw (torchvision leaves their zero-init commented out).
    """
    c = check_positive_int("in_channels", in_channels)
    if not isinstance(layers, (tuple, list)) or len(layers) == 0:
        raise ValueError(f"layers must be a non-empty sequence of channel counts, got {layers!r}")
    layers = [check_positive_int("layers", v) for v in layers]
    dr = check_positive_int("dim_reduced", dim_reduced)
    k = check_positive_int("num_classes", num_classes, minimum=2)
    check_rng(rng)
    dtype = check_float_dtype(dtype)
    params = {}
    prev = c
    for i, out_c in enumerate(layers):
        wk, bk = _mask_head_layer_keys(i)
        params[wk] = _kaiming_normal_fan_out(rng, (out_c, prev, 3, 3), out_c * 9, dtype)
        params[bk] = np.zeros(out_c, dtype=dtype)
        prev = out_c
    params[_MASK_PRED + "conv5_mask.weight"] = _kaiming_normal_fan_out(rng, (prev, dr, 2, 2), prev * 4, dtype)
    bound = 1.0 / np.sqrt(dr * 4)
    params[_MASK_PRED + "conv5_mask.bias"] = rng.uniform(-bound, bound, size=dr).astype(dtype)
    params[_MASK_PRED + "mask_fcn_logits.weight"] = _kaiming_normal_fan_out(rng, (k, dr, 1, 1), k, dtype)
    bound = 1.0 / np.sqrt(dr)
    params[_MASK_PRED + "mask_fcn_logits.bias"] = rng.uniform(-bound, bound, size=k).astype(dtype)
    return params


def _count_mask_layers(params):
    n = 0
    while _mask_head_layer_keys(n)[0] in params:
        n += 1
    return n


def mask_head_keys(params):
    """Parameter names of the mask branch present in ``params``, in forward order."""
    if not isinstance(params, dict):
        raise TypeError(f"params must be a dict of arrays, got {type(params).__name__}")
    keys = [k for i in range(_count_mask_layers(params)) for k in _mask_head_layer_keys(i)]
    return tuple(keys) + tuple(f"{_MASK_PRED}{layer}.{kind}" for layer in ("conv5_mask", "mask_fcn_logits")
                               for kind in ("weight", "bias"))


@quiet_math
def mask_head_forward(params, pooled, *, dilation=1):
    """The mask branch: ``MaskRCNNHeads`` then ``MaskRCNNPredictor``.

        x = relu(conv3x3_i(x))  for i = 0..3      (P, 256, 14, 14), padding = dilation
        x = relu(conv5_mask(x))                   (P, 256, 28, 28)  2x2 transposed conv, stride 2
        mask_logits = mask_fcn_logits(x)          (P, K+1, 28, 28)  1x1 conv

    params: dict with ``mask_head_keys(params)`` (extra keys ignored; the
        number of 3x3 layers is read from the keys present).
    pooled: (P, C, Hm, Wm) float, RoIAligned features of the positive RoIs
        (training) or of the detections (inference); P may be 0.
    dilation: of the 3x3 convolutions (1 in the reference).
    Returns (mask_logits (P, K+1, 2Hm, 2Wm), MaskHeadCache).
    """
    check_array("pooled", pooled, ndim=4, dtype_kind="f")
    if not isinstance(params, dict):
        raise TypeError(f"params must be a dict of arrays, got {type(params).__name__}")
    n_layers = _count_mask_layers(params)
    if n_layers == 0:
        raise ValueError(f"params is missing {_mask_head_layer_keys(0)[0]!r}")
    check_params(params, dict.fromkeys(mask_head_keys(params)), dtype=pooled.dtype)
    d = check_positive_int("dilation", dilation)
    w0 = params[_mask_head_layer_keys(0)[0]]
    if w0.ndim != 4 or pooled.shape[1] != w0.shape[1]:
        raise ValueError(
            f"pooled must have {w0.shape[1] if w0.ndim == 4 else '?'} channels to match "
            f"{_mask_head_layer_keys(0)[0]} {w0.shape}, got shape {pooled.shape}"
        )
    if min(pooled.shape[1:]) == 0:
        raise ValueError(f"pooled must have non-empty C, Hm, Wm, got {pooled.shape}")
    _check_mask_head_shapes(params, n_layers)
    return _mask_head_forward(params, pooled, dilation=d)


def _check_mask_head_shapes(params, n_layers):
    """Each 3x3 conv (C_i, C_{i-1}, 3, 3), conv5_mask (C_last, D, 2, 2), mask_fcn_logits
    (K+1, D, 1, 1), and every bias to match."""
    c = params[_mask_head_layer_keys(0)[0]].shape[1]
    for i in range(n_layers):
        wk, bk = _mask_head_layer_keys(i)
        c = check_array(_p(wk), params[wk], shape=(None, c, 3, 3)).shape[0]
        check_array(_p(bk), params[bk], shape=(c,))
    d = check_array(_p(_MASK_PRED + "conv5_mask.weight"), params[_MASK_PRED + "conv5_mask.weight"],
                    shape=(c, None, 2, 2)).shape[1]
    check_array(_p(_MASK_PRED + "conv5_mask.bias"), params[_MASK_PRED + "conv5_mask.bias"], shape=(d,))
    k1 = check_array(_p(_MASK_PRED + "mask_fcn_logits.weight"), params[_MASK_PRED + "mask_fcn_logits.weight"],
                     shape=(None, d, 1, 1)).shape[0]
    check_array(_p(_MASK_PRED + "mask_fcn_logits.bias"), params[_MASK_PRED + "mask_fcn_logits.bias"], shape=(k1,))


def _mask_head_forward(params, pooled, *, dilation=1):
    """:func:`mask_head_forward` without the checks (for ``model``)."""
    n_layers = _count_mask_layers(params)
    d = dilation
    num_rois = pooled.shape[0]
    x = pooled  # P == 0 is fine: the convolutions accept an empty batch
    convs = []
    for i in range(n_layers):
        wk, bk = _mask_head_layer_keys(i)
        x, cc, rc = _conv2d_relu_forward(x, params[wk], params[bk], 1, d, d)
        convs.append(MaskConvLayerCache(cc, rc))
    x, c5 = _conv_transpose2d_forward(x, params[_MASK_PRED + "conv5_mask.weight"],
                                      params[_MASK_PRED + "conv5_mask.bias"], stride=2, padding=0)
    x, r5 = _relu_forward(x)
    logits, cl = _conv2d_forward(x, params[_MASK_PRED + "mask_fcn_logits.weight"],
                                 params[_MASK_PRED + "mask_fcn_logits.bias"])
    return logits, MaskHeadCache(tuple(convs), c5, r5, cl, n_layers, num_rois)


_INFER_BLOCK_ROIS = 64  # RoIs of the mask predictor's tap products at a time (they stay in cache)


def _mask_head_infer(params, pooled, *, dilation=1):
    """:func:`mask_head_forward` for inference (no checks): its mask logits (P, K+1, 2Hm, 2Wm)
    up to float32 rounding, with no caches and the ReLUs in place. The 3x3 convs run
    ``ops.conv._conv_stack_infer`` (the RoIs laid end to end on one zero-padded grid from the
    first conv to the last; each sum split in three partial sums, one per kernel row: see
    ``kernels.conv.conv2d_infer`` for the bound).

    The predictor runs at the Hm x Wm input resolution. The 2x2 stride-2 transposed conv
    paints one 2x2 cell per input pixel, so output pixel (2i + p, 2j + q) depends only on
    input pixel (i, j) through tap (p, q); for each of the four taps

        y_pq = relu(w5[:, :, p, q]^T x + b5)          (D, P*Hm*Wm)
        logits[:, :, p::2, q::2] = wl y_pq + bl        (K+1, P*Hm*Wm)

    The same dot products as the training path (which forms the (P, D, 28, 28)
    activation, 40 MB for 400 detections at D = 32, and then the 1x1 conv): only the
    K+1 logit channels are interleaved, and blocks of RoIs stay in cache.
    """
    d = dilation
    keys = [_mask_head_layer_keys(i) for i in range(_count_mask_layers(params))]
    x = _conv_stack_infer(pooled, [params[wk] for wk, _ in keys], [params[bk] for _, bk in keys], d, d)
    r, c, h, w = x.shape
    w5 = params[_MASK_PRED + "conv5_mask.weight"]  # (C, D, 2, 2)
    b5 = params[_MASK_PRED + "conv5_mask.bias"][:, None]
    wl = params[_MASK_PRED + "mask_fcn_logits.weight"][:, :, 0, 0]  # (K+1, D)
    bl = params[_MASK_PRED + "mask_fcn_logits.bias"][:, None]
    k1 = wl.shape[0]
    taps = [(p, q, np.ascontiguousarray(w5[:, :, p, q].T)) for p in range(2) for q in range(2)]
    logits = np.empty((r, k1, h, 2, w, 2), dtype=x.dtype)
    for r0 in range(0, r, _INFER_BLOCK_ROIS):
        r1 = min(r, r0 + _INFER_BLOCK_ROIS)
        xc = np.ascontiguousarray(x[r0:r1].transpose(1, 0, 2, 3)).reshape(c, -1)  # (C, rb*Hm*Wm)
        for p, q, w_pq in taps:
            y = w_pq @ xc
            y += b5
            z = wl @ _relu_inplace(y)
            z += bl
            logits[r0:r1, :, :, p, :, q] = z.reshape(k1, r1 - r0, h, w).transpose(1, 0, 2, 3)
    return logits.reshape(r, k1, 2 * h, 2 * w)


@quiet_math
def mask_head_backward(dmask_logits, cache):
    """Gradients of :func:`mask_head_forward`.

    dmask_logits: (P, K+1, M, M). cache: MaskHeadCache.
    Returns (grads, dpooled): grads a dict keyed like ``mask_head_keys``,
    dpooled (P, C, Hm, Wm).
    """
    if not isinstance(cache, MaskHeadCache):
        raise TypeError(f"cache must be a MaskHeadCache, got {type(cache).__name__}")
    want = (cache.num_rois,) + cache.logits.w.shape[:1] + tuple(cache.relu5.positive.shape[2:])
    check_array("dmask_logits", dmask_logits, shape=want, dtype_kind="f")
    if dmask_logits.dtype != cache.logits.w.dtype:
        raise TypeError(f"dmask_logits must have the dtype of the forward pass ({cache.logits.w.dtype}), "
                        f"got {dmask_logits.dtype}")
    return _mask_head_backward(dmask_logits, cache)


def _mask_head_backward(dmask_logits, cache):
    """:func:`mask_head_backward` without the checks (for ``model``)."""
    grads = {}
    dx, grads[_MASK_PRED + "mask_fcn_logits.weight"], grads[_MASK_PRED + "mask_fcn_logits.bias"] = \
        _conv2d_backward(dmask_logits, cache.logits)
    dx = _relu_backward(dx, cache.relu5)
    dx, grads[_MASK_PRED + "conv5_mask.weight"], grads[_MASK_PRED + "conv5_mask.bias"] = \
        _conv_transpose2d_backward(dx, cache.conv5_mask)
    for i in reversed(range(cache.num_layers)):
        layer = cache.convs[i]
        wk, bk = _mask_head_layer_keys(i)
        dx = _relu_backward(dx, layer.relu)
        dx, grads[wk], grads[bk] = _conv2d_backward(dx, layer.conv)
    return grads, dx


# =========================================================================== mask targets and loss
@quiet_math
def project_masks_on_boxes(gt_masks, boxes, matched_idxs, M):
    """Mask targets: each RoI's GT mask cut out and resampled to M x M.

    Twin of torchvision's ``project_masks_on_boxes``, which calls
    ``roi_align(gt_masks[:, None], [matched_idx, box], (M, M), 1.0)``, i.e.
    spatial_scale 1, sampling_ratio -1 (adaptive: ceil(box side / M) samples
    per bin), aligned=False. So the target is *soft*: pixel j of the GT mask
    is taken to sit at coordinate j (not j + 0.5), and a sample point between
    a one-pixel and a zero-pixel gets an interpolated value.

    gt_masks: (G, H, W) bool or float, the GT masks of one image (constants).
    boxes: (P, 4) float xyxy, the positive RoIs.
    matched_idxs: (P,) int in [0, G), which GT mask each RoI targets.
    M: int >= 1, the target side (28).
    Returns (P, M, M) in the boxes' dtype, values in [0, 1] (float16 boxes are
    computed in float32: their RoIAlign geometry would overflow).
    """
    check_array("gt_masks", gt_masks, ndim=3, dtype_kind="fbiu")
    _check_boxes("boxes", boxes)
    p = boxes.shape[0]
    check_array("matched_idxs", matched_idxs, shape=(p,), dtype_kind="iu")
    m = check_positive_int("M", M)
    g = gt_masks.shape[0]
    if p and (matched_idxs.min() < 0 or matched_idxs.max() >= g):
        raise ValueError(
            f"matched_idxs must be in [0, {g}) for gt_masks with G={g}, "
            f"got values in [{matched_idxs.min()}, {matched_idxs.max()}]"
        )
    if p and min(gt_masks.shape[1:]) < 1:
        raise ValueError(f"gt_masks must have H >= 1 and W >= 1, got shape {gt_masks.shape}")
    if boxes.dtype == np.float16:
        return _project_masks_on_boxes(gt_masks, boxes.astype(np.float32), matched_idxs, m).astype(np.float16)
    return _project_masks_on_boxes(gt_masks, boxes, matched_idxs, m)


def _project_masks_on_boxes(gt_masks, boxes, matched_idxs, M):
    """:func:`project_masks_on_boxes` without the checks (for the stages)."""
    if boxes.shape[0] == 0:
        return np.zeros((0, M, M), dtype=boxes.dtype)
    rois = np.concatenate([matched_idxs.astype(boxes.dtype)[:, None], boxes], axis=1)
    masks = gt_masks.astype(boxes.dtype, copy=False)[:, None]
    out, _ = _roi_align_forward(masks, rois, (M, M), 1.0, -1, False)
    return out[:, 0]


@quiet_math
def maskrcnn_loss(mask_logits, proposals, gt_masks, gt_labels, mask_matched_idxs):
    """Mask loss: per-pixel BCE on the GT class's channel of each positive RoI.

    Twin of torchvision's ``maskrcnn_loss``:

        loss = mean over p, i, j of BCEWithLogits(mask_logits[p, l_p, i, j], target[p, i, j])

    with ``l_p`` the label of RoI p's matched GT object and ``target`` from
    :func:`project_masks_on_boxes`. The other K channels of a RoI get exactly
    zero gradient: classes do not compete for a pixel (a sigmoid per class,
    not a softmax over classes).

    mask_logits: (P, K+1, M, M) float, for the positive RoIs of all images in
        order.
    proposals: list over images of (P_i, 4), the positive RoIs (constants);
        sum P_i = P.
    gt_masks: list over images of (G_i, H_i, W_i) bool/float.
    gt_labels: list over images of (G_i,) int.
    mask_matched_idxs: list over images of (P_i,) int in [0, G_i).
    Returns (loss, dmask_logits (P, K+1, M, M)). P == 0 gives loss 0 and a zero
    gradient (torchvision returns ``mask_logits.sum() * 0``).
    """
    check_array("mask_logits", mask_logits, ndim=4, dtype_kind="f")
    p_total, k1, mh, mw = mask_logits.shape
    if mh != mw:
        raise ValueError(f"mask_logits must have shape (P, K+1, M, M), got {mask_logits.shape}")
    proposals = _check_box_list("proposals", proposals)
    n = len(proposals)
    gt_masks, gt_labels, mask_matched_idxs = _check_lists(
        n, gt_masks=gt_masks, gt_labels=gt_labels, mask_matched_idxs=mask_matched_idxs)
    count = sum(p.shape[0] for p in proposals)
    if count != p_total:
        raise ValueError(f"mask_logits must have {count} rows (the proposals), got shape {mask_logits.shape}")
    labels, targets = [], []
    for i in range(n):
        gm = check_array(f"gt_masks[{i}]", gt_masks[i], ndim=3, dtype_kind="fbiu")
        gl = check_array(f"gt_labels[{i}]", gt_labels[i], shape=(gm.shape[0],), dtype_kind="iu")
        idx = check_array(f"mask_matched_idxs[{i}]", mask_matched_idxs[i],
                          shape=(proposals[i].shape[0],), dtype_kind="iu")
        if idx.size and (idx.min() < 0 or idx.max() >= gm.shape[0]):
            raise ValueError(f"mask_matched_idxs[{i}] must be in [0, {gm.shape[0]}), got "
                             f"values in [{idx.min()}, {idx.max()}]")
        lab = gl[idx].astype(np.int64)
        if lab.size and (lab.min() < 0 or lab.max() >= k1):
            raise ValueError(f"gt_labels[{i}] must be in [0, {k1 - 1}] for mask_logits with K+1={k1}")
        if idx.size and min(gm.shape[1:]) < 1:
            raise ValueError(f"gt_masks[{i}] must have H >= 1 and W >= 1, got shape {gm.shape}")
        labels.append(lab)
    if p_total and not np.isfinite(mask_logits[np.arange(p_total), np.concatenate(labels)]).all():
        raise ValueError("mask_logits must be finite on the GT class channels, got NaN or inf")
    return _maskrcnn_loss(mask_logits, proposals, gt_masks, gt_labels, mask_matched_idxs)


def _project_masks_per_image(gt_masks, boxes, matched_idxs, M):
    """:func:`project_masks_on_boxes` of every image (lists over images) -> list of (P_i, M, M).

    Images whose masks have one size and whose RoIAlign takes one form
    (``roi_align._roi_align_method``) are pooled by ONE RoIAlign: their masks
    stacked, each RoI's mask index moved by the masks before it. The sparse rows
    of a RoI hold the same weights in the same order either way, so every target
    is the same, bit for bit, as image by image (tested); the shapes model's 4
    images: 2.5 -> 1.4 ms.
    """
    out = [None] * len(boxes)
    groups = {}
    for i, (gm, b, idx) in enumerate(zip(gt_masks, boxes, matched_idxs)):
        if b.shape[0] == 0:
            out[i] = np.zeros((0, M, M), dtype=b.dtype)
            continue
        rois = np.concatenate([idx.astype(b.dtype)[:, None], b], axis=1)
        form = _roi_align_method((gm.shape[0], 1) + gm.shape[1:], rois, (M, M), 1.0, -1, False)
        groups.setdefault((gm.shape[1:], form), []).append((i, rois))
    for (_, form), members in groups.items():
        masks, rois, offset = [], [], 0
        for i, r in members:
            masks.append(gt_masks[i].astype(r.dtype, copy=False))
            r = r.copy()
            r[:, 0] += offset
            rois.append(r)
            offset += gt_masks[i].shape[0]
        pooled, _ = _roi_align_forward(np.concatenate(masks)[:, None], np.concatenate(rois), (M, M), 1.0, -1,
                                       False, form)
        for (i, r), part in zip(members, np.split(pooled[:, 0], np.cumsum([len(r) for _, r in members])[:-1])):
            out[i] = part
    return out


def _maskrcnn_loss(mask_logits, proposals, gt_masks, gt_labels, mask_matched_idxs):
    """:func:`maskrcnn_loss` without the checks (for ``model``)."""
    p_total, _, mh, _ = mask_logits.shape
    labels = [gl[idx].astype(np.int64) for gl, idx in zip(gt_labels, mask_matched_idxs)]
    targets = _project_masks_per_image(gt_masks, [p.astype(mask_logits.dtype, copy=False) for p in proposals],
                                       mask_matched_idxs, mh)
    dt = mask_logits.dtype.type
    dlogits = np.zeros_like(mask_logits)
    if p_total == 0:
        return dt(0), dlogits
    labels = np.concatenate(labels)
    targets = np.concatenate(targets)
    rows = np.arange(p_total)
    selected = mask_logits[rows, labels]
    loss, dsel = _bce_with_logits(selected, targets.astype(selected.dtype, copy=False), reduction="mean")
    dlogits[rows, labels] = dsel
    return dt(loss), dlogits


@quiet_math
def maskrcnn_inference(x, labels):
    """Mask probabilities of the predicted class of each detection.

    Twin of torchvision's ``maskrcnn_inference``: ``sigmoid(x)[d, labels[d]]``.
    x: (D, K+1, M, M) mask logits of the detections of all images, in order.
    labels: list over images of (D_i,) int, the predicted classes (sum D_i = D).
    Returns a list over images of (D_i, M, M) probabilities in [0, 1].
    Difference: torchvision keeps a channel axis, (D_i, 1, M, M).
    """
    check_array("x", x, ndim=4, dtype_kind="f")
    labels = _check_list("labels", labels)
    parts = [check_array(f"labels[{i}]", lab, ndim=1, dtype_kind="iu") for i, lab in enumerate(labels)]
    counts = [len(lab) for lab in parts]
    if sum(counts) != x.shape[0]:
        raise ValueError(f"x must have {sum(counts)} rows (the labels), got shape {x.shape}")
    lab = np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, np.int64)
    if lab.size and (lab.min() < 0 or lab.max() >= x.shape[1]):
        raise ValueError(f"labels must be in [0, {x.shape[1] - 1}], got values in [{lab.min()}, {lab.max()}]")
    return _maskrcnn_inference(x, parts)


def _maskrcnn_inference(x, labels):
    """:func:`maskrcnn_inference` without the checks (for ``model``)."""
    if not labels:
        return []
    counts = [len(lab) for lab in labels]
    lab = np.concatenate(labels).astype(np.int64)
    probs = _sigmoid(x[np.arange(x.shape[0]), lab])
    return np.split(probs, np.cumsum(counts)[:-1])


# =========================================================================== inference
@quiet_math
def postprocess_detections(class_logits, box_regression, proposals, image_shapes, *,
                           score_thresh=0.05, nms_thresh=0.5, detections_per_img=100,
                           bbox_reg_weights=BOX_CODER_WEIGHTS, record=None):
    """Final detections from the box branch's outputs (no gradient).

    Twin of ``RoIHeads.postprocess_detections``. Per image:

    1. softmax over the K+1 class logits of each RoI;
    2. decode the RoI with every class's deltas (weights 10, 10, 5, 5) and clip
       to the image: each RoI becomes K candidate boxes, one per foreground class;
    3. drop the background column, keep candidates with score > score_thresh,
       drop boxes narrower or shorter than 1e-2;
    4. NMS at nms_thresh within each class (``batched_nms``), then keep the
       ``detections_per_img`` highest scores.

    class_logits: (R, K+1) float, R = sum of R_i over images.
    box_regression: (R, 4(K+1)), same dtype.
    proposals: list over images of (R_i, 4), the RoIs the logits belong to.
    image_shapes: list over images of (height, width) ints.
    score_thresh, nms_thresh: in [0, 1]; detections_per_img: int >= 1.
    Returns (boxes, scores, labels): lists over images of (D_i, 4) float,
    (D_i,) float sorted decreasing, (D_i,) int64 in [1, K].

    record: None (default: nothing is kept), or a dict that receives, as lists
    over images, the intermediates of each step (used by ``mrcnn_np.trace``; the
    results are the same): "class_scores" (R_i, K+1) softmax (step 1);
    "refined_boxes" (R_i, K+1, 4) decoded and clipped, background column
    included (step 2); "before_threshold" and "before_nms", dicts of "boxes"
    (B, 4), "scores" (B,), "labels" (B,) int64: every (RoI, foreground class)
    pair, RoI-major (B = R_i K), and what remains after the score threshold and
    the small-box removal (step 3), the input of step 4.
    """
    if record is not None and not isinstance(record, dict):
        raise TypeError(f"record must be None or a dict, got {type(record).__name__}")
    check_array("class_logits", class_logits, shape=("R", "K+1"), dtype_kind="f")
    r, k1 = class_logits.shape
    check_array("box_regression", box_regression, shape=(r, 4 * k1), dtype_kind="f")
    check_same_dtype(class_logits=class_logits, box_regression=box_regression)
    if r and not (np.isfinite(class_logits).all() and np.isfinite(box_regression).all()):
        raise ValueError("class_logits and box_regression must be finite, got NaN or inf")
    proposals = _check_box_list("proposals", proposals)
    (image_shapes,) = _check_lists(len(proposals), image_shapes=image_shapes)
    shapes = [check_hw_pair(f"image_shapes[{i}]", s) for i, s in enumerate(image_shapes)]
    counts = [p.shape[0] for p in proposals]
    if sum(counts) != r:
        raise ValueError(f"class_logits must have {sum(counts)} rows (the proposals), got {r}")
    # a probability and an IoU threshold in [0, 1]; at least one detection an image
    score_thresh = check_float("score_thresh", score_thresh, minimum=0.0, maximum=1.0)
    nms_thresh = check_float("nms_thresh", nms_thresh, minimum=0.0, maximum=1.0)
    top = check_positive_int("detections_per_img", detections_per_img)
    weights = _check_weights(bbox_reg_weights, class_logits.dtype, "bbox_reg_weights")
    return _postprocess_detections(class_logits, box_regression, proposals, shapes, score_thresh=score_thresh,
                                   nms_thresh=nms_thresh, detections_per_img=top, bbox_reg_weights=weights,
                                   record=record)


def _postprocess_detections(class_logits, box_regression, proposals, image_shapes, *, score_thresh,
                            nms_thresh, detections_per_img, bbox_reg_weights, record=None):
    """:func:`postprocess_detections` without the checks (for ``model``): image_shapes
    (h, w) int pairs, bbox_reg_weights 4 numbers."""
    r, k1 = class_logits.shape
    shapes, top = image_shapes, detections_per_img
    counts = [p.shape[0] for p in proposals]
    dtype = class_logits.dtype
    all_props = (np.concatenate(proposals).astype(dtype, copy=False) if proposals
                 else np.zeros((0, 4), dtype))
    pred_boxes = _decode_boxes(box_regression, all_props,
                               np.asarray(bbox_reg_weights, dtype=dtype)).reshape(r, k1, 4)
    pred_scores = _softmax(class_logits, axis=-1) if r else np.zeros((0, k1), dtype)
    starts = np.cumsum([0] + counts)
    if record is not None:
        for key in ("class_scores", "refined_boxes", "before_threshold", "before_nms"):
            record[key] = []
    all_boxes, all_scores, all_labels = [], [], []
    for i, (h, w) in enumerate(shapes):
        boxes = _clip_boxes_to_image(pred_boxes[starts[i]:starts[i + 1]], (h, w))
        scores = pred_scores[starts[i]:starts[i + 1]]
        if record is not None:
            record["class_scores"].append(scores)
            record["refined_boxes"].append(boxes)
        labels = np.broadcast_to(np.arange(k1, dtype=np.int64), scores.shape)
        boxes = boxes[:, 1:].reshape(-1, 4)
        scores = scores[:, 1:].reshape(-1)
        labels = labels[:, 1:].reshape(-1)
        if record is not None:
            record["before_threshold"].append({"boxes": boxes, "scores": scores, "labels": labels})
        inds = np.flatnonzero(scores > score_thresh)
        boxes, scores, labels = boxes[inds], scores[inds], labels[inds]
        keep = _remove_small_boxes(boxes, 1e-2)
        boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
        if record is not None:
            record["before_nms"].append({"boxes": boxes, "scores": scores, "labels": labels})
        keep = _nms(boxes, scores, labels, nms_thresh)[:top]  # batched_nms
        all_boxes.append(boxes[keep])
        all_scores.append(scores[keep])
        all_labels.append(labels[keep])
    return all_boxes, all_scores, all_labels


@quiet_math
def expand_boxes(boxes, scale):
    """Scale boxes about their centres; twin of torchvision's ``expand_boxes``.

    boxes: (D, 4) float xyxy; scale: float > 0. Returns (D, 4) float.
    """
    _check_boxes("boxes", boxes)
    scale = check_float("scale", scale, minimum=0.0)
    w_half = (boxes[:, 2] - boxes[:, 0]) * 0.5 * scale
    h_half = (boxes[:, 3] - boxes[:, 1]) * 0.5 * scale
    x_c = (boxes[:, 2] + boxes[:, 0]) * 0.5
    y_c = (boxes[:, 3] + boxes[:, 1]) * 0.5
    return np.stack([x_c - w_half, y_c - h_half, x_c + w_half, y_c + h_half], axis=1).astype(boxes.dtype)


@quiet_math
def expand_masks(mask, padding):
    """Zero-pad masks on all four sides; twin of torchvision's ``expand_masks``.

    mask: (D, M, M) float; padding: int >= 0.
    Returns (padded (D, M + 2 padding, M + 2 padding), scale = (M + 2 padding) / M),
    the factor by which the box must grow so the padded mask covers it as the
    original mask covered the box.
    """
    check_array("mask", mask, ndim=3, dtype_kind="f")
    if mask.shape[1] != mask.shape[2] or mask.shape[2] == 0:
        raise ValueError(f"mask must have shape (D, M, M) with M >= 1, got {mask.shape}")
    pad = check_positive_int("padding", padding, minimum=0)
    m = mask.shape[-1]
    padded = np.pad(mask, ((0, 0), (pad, pad), (pad, pad)))
    return padded, float(m + 2 * pad) / m


def _check_paste_args(masks, boxes, img_shape, padding):
    """Checked (masks (D, M, M), with_channel, h, w, pad); masks may be torchvision's (D, 1, M, M)."""
    check_array("masks", masks, dtype_kind="f")
    with_channel = masks.ndim == 4 and masks.shape[1] == 1
    if with_channel:
        masks = masks[:, 0]
    if masks.ndim != 3 or masks.shape[1] != masks.shape[2] or masks.shape[1] == 0:
        raise ValueError(f"masks must have shape (D, M, M) or (D, 1, M, M) with M >= 1, got {masks.shape}")
    d = masks.shape[0]
    check_array("boxes", boxes, shape=(d, 4), dtype_kind="f")
    check_finite("boxes", boxes)
    h, w = check_hw_pair("img_shape", img_shape)
    pad = check_positive_int("padding", padding, minimum=0)
    # the grown box is cast to int64: it must fit, with room (torch's cast would wrap around)
    m = masks.shape[-1]
    limit = 2.0 ** 60 / ((m + 2 * pad) / m)
    if d and float(np.abs(boxes).max()) > limit:
        raise ValueError(f"boxes must have coordinates of magnitude at most {limit:.3g} to be pasted "
                         f"(the grown box is cast to int64), got {float(np.abs(boxes).max()):.3g}")
    return masks, with_channel, h, w, pad


def _integer_expanded_boxes(masks, boxes, padding):
    padded, scale = expand_masks(masks, padding)
    # torchvision: expand_boxes(...).to(torch.int64) -- truncation toward zero
    ibox = np.trunc(expand_boxes(boxes, scale)).astype(np.int64)
    return padded, ibox


def _paste_taps(lo, hi, start, stop, n_src, dtype):
    """Bilinear taps along one axis of one paste, for the visible part of the box.

    The integer box covers image indices lo..hi inclusive; the padded mask (n_src
    samples) is resized by torch's align_corners=False bilinear rule to
    n_box = max(hi - lo + 1, 1) samples, and image index y in [start, stop)
    reads it at local index t = y - lo:
    ``src = max((t + 0.5) * n_src / n_box - 0.5, 0)``, blending samples
    ``i0 = floor(src)`` and ``i1 = min(i0 + 1, n_src - 1)`` with weights
    ``1 - (src - i0)`` and ``src - i0``. Arithmetic in ``dtype`` (float32 for
    float32 masks), as torch's CPU kernel and ``ops.resize``.
    Returns (i0, i1, w0, w1), each of length stop - start.
    """
    dt = np.dtype(dtype).type
    n_box = max(hi - lo + 1, 1)
    t = np.arange(start - lo, stop - lo).astype(dtype)
    src = np.maximum((t + dt(0.5)) * (dt(n_src) / dt(n_box)) - dt(0.5), dt(0))
    i0 = np.minimum(np.floor(src).astype(np.int64), n_src - 1)
    i1 = np.where(i0 < n_src - 1, i0 + 1, i0)
    w1 = np.clip(src - i0.astype(dtype), dt(0), dt(1))
    return i0, i1, dt(1) - w1, w1


@quiet_math
def paste_masks_in_image(masks, boxes, img_shape, padding=1):
    """Paste M x M mask probabilities into full-image masks (no gradient).

    Twin of torchvision's ``paste_masks_in_image``. For each detection:

    1. pad the mask with ``padding`` zero pixels on every side (M+2 wide) and
       grow the box about its centre by (M + 2 padding) / M, so the padded
       mask maps onto the grown box as the mask mapped onto the box;
    2. cast the grown box to integers by truncation toward zero (torch's
       ``.to(int64)``), giving pixels x1..x2 and y1..y2 *inclusive*;
    3. resize the padded mask bilinearly (align_corners=False) to
       (max(y2 - y1 + 1, 1), max(x2 - x1 + 1, 1)) and write it at rows y1..y2,
       columns x1..x2, keeping only what falls inside the image.

    The zero border makes the mask fade out smoothly at the box's edge
    instead of being cut off. Output is soft; thresholding (0.5) is the
    caller's.

    This loops over detections, as torchvision does, on purpose: the result
    is (D, H, W) and almost all zeros, and the work per detection should be
    its box area, not the image area. (A loop-free form exists — resizing is
    separable, so each paste is ``Ty @ padded @ Tx.T`` with (H, M+2) and
    (W, M+2) interpolation matrices that are zero outside the box — but it
    does H x W work per detection and measured 10-20x slower for 100
    detections on an 800 x 1066 image.) Inside the loop only the visible part
    of the box is interpolated, with vectorised gathers (columns, then rows).
    :func:`paste_masks_in_image_naive` follows torchvision's steps literally
    (resize the whole box with ``ops.resize``, then crop) as an independent check.

    masks: (D, M, M) float probabilities, or torchvision's (D, 1, M, M).
    boxes: (D, 4) float xyxy, finite. img_shape: (H, W) ints. padding: int >= 0.
    Returns (D, H, W) in the masks' dtype, or (D, 1, H, W) for (D, 1, M, M)
    masks, as torchvision. Difference: a box that lies completely outside the
    image pastes nothing (torchvision's slicing wraps around or raises there;
    boxes from :func:`postprocess_detections` are clipped to the image, so this
    does not arise in the model).
    """
    masks, with_channel, h, w, pad = _check_paste_args(masks, boxes, img_shape, padding)
    out = _paste_masks_in_image(masks, boxes, h, w, pad)
    return out[:, None] if with_channel else out


def _paste_masks_in_image(masks, boxes, h, w, pad):
    """:func:`paste_masks_in_image` on checked (D, M, M) masks."""
    out = np.zeros((masks.shape[0], h, w), dtype=masks.dtype)
    if masks.shape[0] == 0:
        return out
    padded, ibox = _integer_expanded_boxes(masks, boxes, pad)
    n_src = padded.shape[-1]
    for i, (x1, y1, x2, y2) in enumerate(ibox.tolist()):
        x_0, x_1 = max(x1, 0), min(x2 + 1, w)
        y_0, y_1 = max(y1, 0), min(y2 + 1, h)
        if x_1 <= x_0 or y_1 <= y_0:
            continue
        r0, r1, rw0, rw1 = _paste_taps(y1, y2, y_0, y_1, n_src, masks.dtype)
        c0, c1, cw0, cw1 = _paste_taps(x1, x2, x_0, x_1, n_src, masks.dtype)
        m = padded[i]
        cols = m[:, c0] * cw0 + m[:, c1] * cw1                         # (M+2, visible w)
        out[i, y_0:y_1, x_0:x_1] = cols[r0] * rw0[:, None] + cols[r1] * rw1[:, None]
    return out


@quiet_math
def paste_masks_in_image_naive(masks, boxes, img_shape, padding=1):
    """Loop reference of :func:`paste_masks_in_image`, step by step as torchvision's
    ``paste_mask_in_image``: resize each padded mask to its integer box with
    ``ops.resize.resize_bilinear`` and copy the part inside the image.
    masks (D, M, M), boxes (D, 4), img_shape (H, W) -> (D, H, W); (D, 1, M, M) ->
    (D, 1, H, W)."""
    masks, with_channel, h, w, pad = _check_paste_args(masks, boxes, img_shape, padding)
    out = np.zeros((masks.shape[0], h, w), dtype=masks.dtype)
    if masks.shape[0] == 0:
        return out[:, None] if with_channel else out
    padded, ibox = _integer_expanded_boxes(masks, boxes, pad)
    for i in range(masks.shape[0]):
        x1, y1, x2, y2 = (int(v) for v in ibox[i])
        bw = max(x2 - x1 + 1, 1)
        bh = max(y2 - y1 + 1, 1)
        resized = resize_bilinear(padded[i], (bh, bw))
        x_0, x_1 = max(x1, 0), min(x2 + 1, w)
        y_0, y_1 = max(y1, 0), min(y2 + 1, h)
        if x_1 > x_0 and y_1 > y_0:
            out[i, y_0:y_1, x_0:x_1] = resized[y_0 - y1:y_1 - y1, x_0 - x1:x_1 - x1]
    return out[:, None] if with_channel else out
