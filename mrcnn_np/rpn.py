"""The region proposal network: head, anchor targets, loss and proposals.

The RPN slides one small network over every FPN level. At each location of a
level it predicts, for each of the A anchors centred there, one objectness
logit (is there an object?) and four box deltas (how to move the anchor onto
it). Training compares these with targets built by matching anchors to the
ground truth; inference decodes the deltas into boxes, keeps the best, and
removes duplicates with NMS. The result, a few hundred to a few thousand
boxes per image, goes to the RoI heads as *proposals*.

Shape shorthand:
    N   images in the batch
    C   channels of every FPN level (256 in the reference)
    H, W  height and width of one level's feature map
    A   anchors per location (3 in the reference: one size, three ratios)
    T   anchors of one image over all levels, ``sum_l H_l * W_l * A``
    G   ground-truth boxes of one image
    K   proposals kept for one image

Naming (as in detectron2's RPN): ``pred_*`` are network outputs, ``gt_*``
ground truth, ``*_per_level`` lists over FPN levels, ``*_per_image`` lists
over images.

Boxes are ``(x1, y1, x2, y2)`` in input-image pixels. The anchor order
everywhere is: level, then location row-major (y, then x), then anchor
(fastest) — the order of ``anchors.pyramid_anchors`` and of
``concat_box_prediction_layers_forward``.

Where gradients flow:
    features -> head -> (objectness, deltas) -> rpn_loss: yes, every step has
    a backward. Targets (labels, regression targets) and the sampling are
    constants. Proposals are built from *detached* outputs: no gradient flows
    from the RoI heads back into the RPN through the boxes (as torchvision,
    which calls ``.detach()`` before decoding).

Reference semantics: torchvision ``models/detection/rpn.py`` (v1
``maskrcnn_resnet50_fpn``): ``RPNHead``, ``concat_box_prediction_layers``,
``RegionProposalNetwork.assign_targets_to_anchors / compute_loss /
filter_proposals``.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ._checks import (
    check_array,
    check_bool,
    check_coordinates,
    check_finite,
    check_float,
    check_float_dtype,
    check_hw_pair,
    check_positive_int,
    check_rng,
    check_same_dtype,
    quiet_math,
)
from .boxes import (_box_iou, _clip_boxes_to_image, _decode_boxes, _encode_boxes, _nms, _remove_small_boxes,
                    _upcast16)
from .kernels.topk import smallest_k
from .matching import BELOW_LOW_THRESHOLD, BETWEEN_THRESHOLDS, _balanced_positive_negative_sampler, _matcher
from .ops.activations import _relu_backward, _sigmoid
from .ops.conv import _conv1x1_stacked, _conv2d_backward, _conv2d_forward, _conv2d_fused, _conv2d_relu_forward
from .ops.losses import _bce_with_logits, _smooth_l1

__all__ = [
    "PROPOSAL_PRESETS",
    "RPN_BOX_WEIGHTS",
    "RPN_PARAM_NAMES",
    "init_rpn_head",
    "rpn_head_forward",
    "rpn_head_backward",
    "RPNHeadCache",
    "RPNHeadLevelCache",
    "concat_box_prediction_layers_forward",
    "concat_box_prediction_layers_backward",
    "ConcatCache",
    "assign_targets_to_anchors",
    "rpn_targets",
    "sample_anchors",
    "rpn_loss_from_samples",
    "rpn_loss",
    "decode_proposals",
    "filter_proposals",
    "generate_proposals",
]

#: torchvision's defaults for ``maskrcnn_resnet50_fpn``: proposals kept per level
#: before NMS (``pre_nms_top_n``) and per image after it (``post_nms_top_n``).
PROPOSAL_PRESETS = {
    "train": {"pre_nms_top_n": 2000, "post_nms_top_n": 2000},
    "test": {"pre_nms_top_n": 1000, "post_nms_top_n": 1000},
}

#: Box-coder weights of the RPN (the RoI heads use (10, 10, 5, 5)).
RPN_BOX_WEIGHTS = (1.0, 1.0, 1.0, 1.0)

_PREFIX = "rpn.head."
#: Parameter names of the head, torchvision ``state_dict`` names.
RPN_PARAM_NAMES = tuple(
    _PREFIX + n
    for n in (
        "conv.0.0.weight", "conv.0.0.bias",
        "cls_logits.weight", "cls_logits.bias",
        "bbox_pred.weight", "bbox_pred.bias",
    )
)
_CONV_W, _CONV_B, _CLS_W, _CLS_B, _BOX_W, _BOX_B = RPN_PARAM_NAMES


# --------------------------------------------------------------------------- head


@quiet_math
def init_rpn_head(in_channels, num_anchors, *, rng, dtype=np.float32):
    """Parameters of the RPN head, as torchvision's ``RPNHead`` initialises them.

    in_channels: C, channels of every FPN level.
    num_anchors: A, anchors per location.
    rng: ``np.random.Generator``.
    Returns a dict (torchvision names): ``rpn.head.conv.0.0.weight`` (C, C, 3, 3),
    ``rpn.head.conv.0.0.bias`` (C,), ``rpn.head.cls_logits.weight`` (A, C, 1, 1),
    ``rpn.head.cls_logits.bias`` (A,), ``rpn.head.bbox_pred.weight`` (4A, C, 1, 1),
    ``rpn.head.bbox_pred.bias`` (4A,). Weights normal(0, 0.01), biases 0.
    """
    c = check_positive_int("in_channels", in_channels)
    a = check_positive_int("num_anchors", num_anchors)
    check_rng(rng)
    dtype = check_float_dtype(dtype)
    shapes = {_CONV_W: (c, c, 3, 3), _CLS_W: (a, c, 1, 1), _BOX_W: (4 * a, c, 1, 1)}
    params = {}
    for w_name, b_name in ((_CONV_W, _CONV_B), (_CLS_W, _CLS_B), (_BOX_W, _BOX_B)):
        shape = shapes[w_name]
        params[w_name] = (rng.standard_normal(shape) * 0.01).astype(dtype)
        params[b_name] = np.zeros(shape[0], dtype=dtype)
    return params


class RPNHeadLevelCache(NamedTuple):
    """What one level's backward needs: the caches of conv3x3, ReLU and both 1x1 convs."""
    conv: tuple
    relu: tuple
    cls_logits: tuple
    bbox_pred: tuple
    hidden_shape: tuple  # (N, C, H, W) of the ReLU output


class RPNHeadCache(NamedTuple):
    levels: list         # RPNHeadLevelCache per level
    param_shapes: dict   # name -> shape, to build the summed gradients
    dtype: np.dtype


def _check_head_params(params):
    if not isinstance(params, dict):
        raise TypeError(f"params must be a dict of arrays, got {type(params).__name__}")
    missing = [k for k in RPN_PARAM_NAMES if k not in params]
    if missing:
        raise ValueError(f"params must contain the RPN head keys, missing {missing}")
    def p(key):  # the name an error gives: the params entry
        return f"params[{key!r}]"

    w = check_array(p(_CONV_W), params[_CONV_W], ndim=4, dtype_kind="f")
    c = w.shape[0]
    check_array(p(_CONV_W), w, shape=(c, c, 3, 3))
    a = check_array(p(_CLS_W), params[_CLS_W], shape=(None, c, 1, 1), dtype_kind="f").shape[0]
    check_array(p(_BOX_W), params[_BOX_W], shape=(4 * a, c, 1, 1), dtype_kind="f")
    check_array(p(_CONV_B), params[_CONV_B], shape=(c,), dtype_kind="f")
    check_array(p(_CLS_B), params[_CLS_B], shape=(a,), dtype_kind="f")
    check_array(p(_BOX_B), params[_BOX_B], shape=(4 * a,), dtype_kind="f")
    check_same_dtype(**{p(k): params[k] for k in RPN_PARAM_NAMES})
    return c, a


def _check_features(features, channels, dtype):
    if isinstance(features, dict):
        raise TypeError("features must be a list of per-level arrays (e.g. [P2, ..., P6]), got a dict")
    if not isinstance(features, (list, tuple)) or len(features) == 0:
        raise TypeError(f"features must be a non-empty list of (N, C, H, W) arrays, got {features!r:.60}")
    n = None
    for i, x in enumerate(features):
        check_array(f"features[{i}]", x, shape=("N", channels, "H", "W"), dtype_kind="f")
        if x.dtype != dtype:
            raise TypeError(f"features[{i}] must have the dtype of the parameters ({dtype}), got {x.dtype}")
        if n is None:
            n = x.shape[0]
        elif x.shape[0] != n:
            raise ValueError(f"features[{i}] must have N = {n} images like features[0], got {x.shape[0]}")
    return n


@quiet_math
def rpn_head_forward(params, features):
    """Run the shared RPN head on every level (torchvision ``RPNHead.forward``).

    params: dict from ``init_rpn_head`` (or loaded torchvision weights).
    features: list of L arrays (N, C, H_l, W_l), e.g. [P2, P3, P4, P5, P6].
    Returns ((objectness, pred_bbox_deltas), cache):
        objectness: list of L arrays (N, A, H_l, W_l), logits (sigmoid -> probability);
        pred_bbox_deltas: list of L arrays (N, 4A, H_l, W_l), channel ``4a + j`` is
            coordinate j in (dx, dy, dw, dh) of anchor a.
    Per level: ``t = relu(conv3x3(x) + b)``, ``objectness = conv1x1(t)``,
    ``deltas = conv1x1(t)``; the same weights on every level.
    """
    c, _ = _check_head_params(params)
    _check_features(features, c, params[_CONV_W].dtype)
    return _rpn_head_forward(params, features)


def _rpn_head_forward(params, features):
    """:func:`rpn_head_forward` without the checks (for ``model``)."""
    objectness, deltas, caches = [], [], []
    for x in features:
        t, conv_cache, relu_cache = _conv2d_relu_forward(x, params[_CONV_W], params[_CONV_B], padding=1)
        logits, cls_cache = _conv2d_forward(t, params[_CLS_W], params[_CLS_B])
        d, box_cache = _conv2d_forward(t, params[_BOX_W], params[_BOX_B])
        objectness.append(logits)
        deltas.append(d)
        caches.append(RPNHeadLevelCache(conv_cache, relu_cache, cls_cache, box_cache, t.shape))
    dtype = params[_CONV_W].dtype
    shapes = {k: params[k].shape for k in RPN_PARAM_NAMES}
    return (objectness, deltas), RPNHeadCache(caches, shapes, dtype)


def _rpn_head_infer(params, features):
    """:func:`rpn_head_forward` for inference (no checks): the same (objectness, deltas),
    no caches, bias and ReLU applied as the 3x3 conv's blocks finish
    (``ops.conv._conv2d_fused``). The two 1x1 convs read the same ``t``, so they run as one
    1x1 conv with the A objectness filters and the 4A delta filters stacked where that keeps
    the bits (``ops.conv._conv1x1_stacked``: one pass over ``t`` instead of two).
    """
    objectness, deltas = [], []
    for x in features:
        t = _conv2d_fused(x, params[_CONV_W], params[_CONV_B], padding=1, relu=True)
        logits, d = _conv1x1_stacked(t, (params[_CLS_W], params[_BOX_W]), (params[_CLS_B], params[_BOX_B]))
        objectness.append(logits)
        deltas.append(d)
    return objectness, deltas


@quiet_math
def rpn_head_backward(douts, cache):
    """Backward of ``rpn_head_forward``.

    douts: (dobjectness, dpred_bbox_deltas), lists of L arrays shaped like the
        forward's outputs; an entry may be None (no gradient from that level).
    cache: from ``rpn_head_forward``.
    Returns (grads, dfeatures): grads is a dict with the six parameter names,
    each the SUM over levels (the weights are shared); dfeatures is a list of L
    arrays (N, C, H_l, W_l), the gradient that flows on into the FPN.
    """
    if not isinstance(cache, RPNHeadCache):
        raise TypeError(f"cache must be the RPNHeadCache from rpn_head_forward, got {type(cache).__name__}")
    if not isinstance(douts, (tuple, list)) or len(douts) != 2:
        raise TypeError("douts must be a pair (dobjectness, dpred_bbox_deltas) of per-level lists")
    dobj, ddel = douts
    num_levels = len(cache.levels)
    for name, d in (("dobjectness", dobj), ("dpred_bbox_deltas", ddel)):
        if not isinstance(d, (list, tuple)) or len(d) != num_levels:
            raise ValueError(f"{name} must be a list of {num_levels} per-level arrays, got {type(d).__name__}"
                             f" of length {len(d) if isinstance(d, (list, tuple)) else '-'}")
    for lvl, lc in enumerate(cache.levels):
        for d, wn, label in ((dobj[lvl], _CLS_W, "dobjectness"), (ddel[lvl], _BOX_W, "dpred_bbox_deltas")):
            if d is None:
                continue
            n, _, h, w = lc.hidden_shape
            channels = cache.param_shapes[wn][0]
            check_array(f"{label}[{lvl}]", d, shape=(n, channels, h, w), dtype_kind="f")
            if d.dtype != cache.dtype:
                raise TypeError(f"{label}[{lvl}] must have the dtype of the forward pass ({cache.dtype}), "
                                f"got {d.dtype}")
    return _rpn_head_backward(douts, cache)


def _rpn_head_backward(douts, cache):
    """:func:`rpn_head_backward` without the checks (for ``model``)."""
    dobj, ddel = douts
    grads = {k: np.zeros(shape, dtype=cache.dtype) for k, shape in cache.param_shapes.items()}
    dfeatures = []
    for lvl, lc in enumerate(cache.levels):
        dt = np.zeros(lc.hidden_shape, dtype=cache.dtype)
        for d, sub, wn, bn in ((dobj[lvl], lc.cls_logits, _CLS_W, _CLS_B),
                               (ddel[lvl], lc.bbox_pred, _BOX_W, _BOX_B)):
            if d is None:
                continue
            dt_part, dw, db = _conv2d_backward(d, sub)
            grads[wn] += dw
            grads[bn] += db
            dt += dt_part
        dt = _relu_backward(dt, lc.relu)
        dx, dw, db = _conv2d_backward(dt, lc.conv)
        grads[_CONV_W] += dw
        grads[_CONV_B] += db
        dfeatures.append(dx)
    return grads, dfeatures


# ------------------------------------------------------------ flatten / unflatten


class ConcatCache(NamedTuple):
    """Per-level output shapes, to un-flatten gradients."""
    objectness_shapes: list  # (N, A, H_l, W_l) per level
    deltas_shapes: list      # (N, 4A, H_l, W_l) per level


def concat_box_prediction_layers_forward(box_cls, box_regression):
    """Flatten per-level head outputs into the anchor order (torchvision
    ``concat_box_prediction_layers``, but keeping the image axis).

    box_cls: list of L arrays (N, A, H_l, W_l).
    box_regression: list of L arrays (N, 4A, H_l, W_l).
    Returns ((objectness, pred_bbox_deltas), cache):
        objectness (N, T) and pred_bbox_deltas (N, T, 4), T = sum_l H_l*W_l*A,
        ordered level, then location (y, then x), then anchor — the order of
        ``pyramid_anchors``: entry ``(y*W + x)*A + a`` of a level is
        ``box_cls[l][:, a, y, x]``.
    torchvision returns (N*T, 1) and (N*T, 4); reshape if you need that.
    """
    if not isinstance(box_cls, (list, tuple)) or not isinstance(box_regression, (list, tuple)):
        raise TypeError("box_cls and box_regression must be lists of per-level arrays")
    if len(box_cls) != len(box_regression) or len(box_cls) == 0:
        raise ValueError(f"box_cls and box_regression must be non-empty lists of the same length, "
                         f"got {len(box_cls)} and {len(box_regression)}")
    for lvl, (o, d) in enumerate(zip(box_cls, box_regression)):
        check_array(f"box_cls[{lvl}]", o, shape=("N", "A", "H", "W"), dtype_kind="f")
        n, a, h, w = o.shape
        check_array(f"box_regression[{lvl}]", d, shape=(n, 4 * a, h, w), dtype_kind="f")
    n0 = box_cls[0].shape[0]
    for lvl, o in enumerate(box_cls):
        if o.shape[0] != n0:
            raise ValueError(f"box_cls[{lvl}] must have N = {n0} images, got {o.shape[0]}")
    return _concat_box_prediction_layers_forward(box_cls, box_regression)


def _concat_box_prediction_layers_forward(box_cls, box_regression):
    """:func:`concat_box_prediction_layers_forward` without the checks (for ``model``)."""
    obj_flat, del_flat = [], []
    for o, d in zip(box_cls, box_regression):
        n, a, h, w = o.shape
        obj_flat.append(o.transpose(0, 2, 3, 1).reshape(n, -1))
        del_flat.append(d.reshape(n, a, 4, h, w).transpose(0, 3, 4, 1, 2).reshape(n, -1, 4))
    cache = ConcatCache([o.shape for o in box_cls], [d.shape for d in box_regression])
    return (np.concatenate(obj_flat, axis=1), np.concatenate(del_flat, axis=1)), cache


def concat_box_prediction_layers_backward(douts, cache):
    """Backward of the flattening: split and un-permute the gradients.

    douts: (dobjectness (N, T), dpred_bbox_deltas (N, T, 4)).
    Returns (dbox_cls, dbox_regression): lists of per-level arrays shaped as
    the forward's inputs.
    """
    if not isinstance(cache, ConcatCache):
        raise TypeError(f"cache must be a ConcatCache, got {type(cache).__name__}")
    if not isinstance(douts, (tuple, list)) or len(douts) != 2:
        raise TypeError(f"douts must be a pair (dobjectness, dpred_bbox_deltas), got {type(douts).__name__}")
    dobj, ddel = douts
    n = cache.objectness_shapes[0][0]
    total = sum(a * h * w for (_, a, h, w) in cache.objectness_shapes)
    check_array("dobjectness", dobj, shape=(n, total), dtype_kind="f")
    check_array("dpred_bbox_deltas", ddel, shape=(n, total, 4), dtype_kind="f")
    check_same_dtype(dobjectness=dobj, dpred_bbox_deltas=ddel)
    return _concat_box_prediction_layers_backward(douts, cache)


def _concat_box_prediction_layers_backward(douts, cache):
    """:func:`concat_box_prediction_layers_backward` without the checks (for ``model``)."""
    dobj, ddel = douts
    n = cache.objectness_shapes[0][0]
    out_o, out_d = [], []
    start = 0
    for (_, a, h, w) in cache.objectness_shapes:
        stop = start + h * w * a
        out_o.append(np.ascontiguousarray(dobj[:, start:stop].reshape(n, h, w, a).transpose(0, 3, 1, 2)))
        out_d.append(np.ascontiguousarray(
            ddel[:, start:stop].reshape(n, h, w, a, 4).transpose(0, 3, 4, 1, 2).reshape(n, 4 * a, h, w)))
        start = stop
    return out_o, out_d


# --------------------------------------------------------------------- targets


def assign_targets_to_anchors(anchors, gt_boxes, *, high_threshold=0.7, low_threshold=0.3,
                              allow_low_quality_matches=True):
    """Label the anchors of one image and find the box each should regress to.

    Twin of torchvision's ``RegionProposalNetwork.assign_targets_to_anchors``
    for one image. No gradient.

    anchors: (T, 4) float.
    gt_boxes: (G, 4) float (G may be 0).
    Returns (labels, matched_gt_boxes):
        labels (T,) int64: 1 positive (IoU >= high, or the best anchor of some
        GT, ties included), 0 negative (IoU < low), -1 ignored (in between);
        matched_gt_boxes (T, 4) anchors' dtype: the GT box of the anchor's best
        match (torchvision's ``gt_boxes[matched_idxs.clamp(min=0)]``, so
        negatives and ignored anchors carry GT 0; only positives are used).
    With G == 0 every anchor is negative and the matched boxes are zeros.
    gt_boxes of another float dtype are cast to the anchors' dtype.
    """
    anchors = check_array("anchors", anchors, shape=("T", 4), dtype_kind="f")
    gt_boxes = check_array("gt_boxes", gt_boxes, shape=("G", 4), dtype_kind="f")
    # finite and small enough for the IoU's areas (float16 is cast to the anchors' dtype)
    check_coordinates("anchors", anchors, np.promote_types(anchors.dtype, np.float32))
    check_coordinates("gt_boxes", gt_boxes, np.promote_types(anchors.dtype, np.float32))
    high, low = _check_thresholds(high_threshold, low_threshold)
    return _assign_targets_to_anchors(anchors, gt_boxes, high, low, check_bool("allow_low_quality_matches", allow_low_quality_matches))


def _check_thresholds(high_threshold, low_threshold):
    """The matcher's thresholds, checked as ``matching.matcher`` checks them."""
    high = check_float("high_threshold", high_threshold, minimum=0.0, maximum=1.0)
    low = check_float("low_threshold", low_threshold, minimum=0.0, maximum=1.0)
    if low > high:
        raise ValueError(f"low_threshold must be <= high_threshold ({high}), got {low}")
    return high, low


def _assign_targets_to_anchors(anchors, gt_boxes, high_threshold, low_threshold, allow_low_quality_matches=True):
    """:func:`assign_targets_to_anchors` without the checks (for ``model``)."""
    t = anchors.shape[0]
    if gt_boxes.shape[0] == 0:
        return np.zeros(t, dtype=np.int64), np.zeros((t, 4), dtype=anchors.dtype)
    gt_boxes = gt_boxes.astype(anchors.dtype, copy=False)  # as torchvision: GT in the anchors' dtype
    quality = _box_iou(*_upcast16(gt_boxes, anchors))  # (G, T); float16 in float32 (boxes.box_iou's rule)
    matched_idxs = _matcher(quality, high_threshold, low_threshold, allow_low_quality_matches)
    matched = gt_boxes[np.maximum(matched_idxs, 0)].astype(anchors.dtype, copy=False)
    labels = (matched_idxs >= 0).astype(np.int64)
    labels[matched_idxs == BELOW_LOW_THRESHOLD] = 0
    labels[matched_idxs == BETWEEN_THRESHOLDS] = -1
    return labels, matched


def rpn_targets(anchors, gt_boxes_per_image, *, high_threshold=0.7, low_threshold=0.3,
                allow_low_quality_matches=True):
    """Labels and regression targets for a batch (all images share the anchors).

    anchors: (T, 4) float, or a list of per-level arrays (concatenated in order).
    gt_boxes_per_image: list of N arrays (G_i, 4).
    Returns (labels (N, T) int64, regression_targets (N, T, 4) anchors' dtype).
    Regression targets are ``encode_boxes(matched_gt, anchors, (1, 1, 1, 1))``
    on positive anchors and 0 elsewhere (torchvision encodes every anchor, but
    only positives enter the loss; encoding zero boxes would take log(0)).
    No gradient.
    """
    anchors = _concat_anchors(anchors)
    # the positives are encoded (log of width ratios): boxes finite, small enough for
    # their areas, and not degenerate (torchvision would give inf / NaN targets)
    if anchors.dtype == np.float16:  # the box coder's rule (boxes.encode_boxes)
        raise TypeError("anchors must be float32 or float64, got float16 (regression targets are not encoded "
                        "in float16: cast to float32)")
    limit_dtype = np.promote_types(anchors.dtype, np.float32)
    _check_encodable("anchors", anchors, limit_dtype)
    if not isinstance(gt_boxes_per_image, (list, tuple)):
        raise TypeError(f"gt_boxes_per_image must be a list of (G, 4) arrays, got "
                        f"{type(gt_boxes_per_image).__name__}")
    for i, gt in enumerate(gt_boxes_per_image):
        check_array(f"gt_boxes_per_image[{i}]", gt, shape=("G", 4), dtype_kind="f")
        _check_encodable(f"gt_boxes_per_image[{i}]", gt, limit_dtype)
    high, low = _check_thresholds(high_threshold, low_threshold)
    return _rpn_targets(anchors, gt_boxes_per_image, high, low, check_bool("allow_low_quality_matches", allow_low_quality_matches))


def _check_encodable(name, boxes, dtype):
    check_coordinates(name, boxes, dtype)
    if boxes.size and not ((boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()):
        raise ValueError(f"{name} must have positive widths and heights (x2 > x1, y2 > y1), got a degenerate box")


def _rpn_targets(anchors, gt_boxes_per_image, high_threshold, low_threshold, allow_low_quality_matches=True):
    """:func:`rpn_targets` without the checks (for ``model``): anchors (T, 4)."""
    n, t = len(gt_boxes_per_image), anchors.shape[0]
    labels = np.zeros((n, t), dtype=np.int64)
    targets = np.zeros((n, t, 4), dtype=anchors.dtype)
    weights = np.asarray(RPN_BOX_WEIGHTS, dtype=anchors.dtype)
    for i, gt in enumerate(gt_boxes_per_image):
        lab, matched = _assign_targets_to_anchors(anchors, gt, high_threshold, low_threshold,
                                                  allow_low_quality_matches)
        labels[i] = lab
        pos = lab == 1
        if np.any(pos):
            targets[i, pos] = _encode_boxes(matched[pos], anchors[pos], weights)
    return labels, targets


def _concat_anchors(anchors):
    if isinstance(anchors, (list, tuple)):
        if len(anchors) == 0:
            raise ValueError("anchors must be a (T, 4) array or a non-empty list of per-level arrays")
        for i, a in enumerate(anchors):
            check_array(f"anchors[{i}]", a, shape=(None, 4), dtype_kind="f")
        return np.concatenate(anchors, axis=0)
    return check_array("anchors", anchors, shape=("T", 4), dtype_kind="f")


# ------------------------------------------------------------------------ loss


def sample_anchors(labels, *, rng, batch_size_per_image=256, positive_fraction=0.5):
    """Sample the anchors that enter the loss, image by image.

    labels: (N, T) int (1 / 0 / -1 from ``rpn_targets``).
    rng: ``np.random.Generator``.
    Returns (pos_mask, neg_mask), two (N, T) bool arrays; per image at most
    ``int(batch_size_per_image * positive_fraction)`` positives and at most
    ``batch_size_per_image`` anchors in all (``balanced_positive_negative_sampler``).
    """
    labels = check_array("labels", labels, shape=("N", "T"), dtype_kind="iuf")
    if labels.dtype.kind == "f":
        check_finite("labels", labels)
    return _sample_anchors(labels, check_rng(rng), *_check_sampler_args(batch_size_per_image, positive_fraction))


def _check_sampler_args(batch_size_per_image, positive_fraction):
    return (check_positive_int("batch_size_per_image", batch_size_per_image),
            check_float("positive_fraction", positive_fraction, minimum=0.0, maximum=1.0))


def _sample_anchors(labels, rng, batch_size_per_image, positive_fraction):
    """:func:`sample_anchors` without the checks (for ``model``)."""
    pos = np.zeros(labels.shape, dtype=bool)
    neg = np.zeros(labels.shape, dtype=bool)
    for i in range(labels.shape[0]):  # a loop over images, not anchors
        pos[i], neg[i] = _balanced_positive_negative_sampler(labels[i], batch_size_per_image,
                                                             positive_fraction, rng)
    return pos, neg


def _check_loss_inputs(objectness, pred_bbox_deltas, labels, regression_targets):
    objectness = check_array("objectness", objectness, shape=("N", "T"), dtype_kind="f")
    n, t = objectness.shape
    check_array("pred_bbox_deltas", pred_bbox_deltas, shape=(n, t, 4), dtype_kind="f")
    check_array("labels", labels, shape=(n, t), dtype_kind="iuf")
    check_array("regression_targets", regression_targets, shape=(n, t, 4), dtype_kind="f")
    check_same_dtype(objectness=objectness, pred_bbox_deltas=pred_bbox_deltas)
    if labels.size and not np.isin(labels, (-1, 0, 1)).all():
        bad = labels[~np.isin(labels, (-1, 0, 1))]
        raise ValueError(f"labels must be 1 (positive), 0 (negative) or -1 (ignored), got {bad[0]}")
    for name, arr in (("objectness", objectness), ("pred_bbox_deltas", pred_bbox_deltas)):
        check_finite(name, arr)
    return n, t


@quiet_math
def rpn_loss_from_samples(objectness, pred_bbox_deltas, labels, regression_targets, pos_mask, neg_mask):
    """The RPN loss on a given sample (deterministic part of torchvision's ``compute_loss``).

    objectness: (N, T) logits; pred_bbox_deltas: (N, T, 4); labels: (N, T)
    (1 / 0 / -1); regression_targets: (N, T, 4); pos_mask, neg_mask: (N, T)
    bool from ``sample_anchors``. With S = number of sampled anchors in the
    whole batch (positives and negatives):

        loss_objectness = (1/S) * sum_{sampled} BCE(objectness, label)
        loss_rpn_box_reg = (1/S) * sum_{sampled positives} smooth_l1_{beta=1/9}(deltas - targets)

    (smooth L1 summed over the 4 coordinates). Returns (loss_objectness,
    loss_rpn_box_reg, dobjectness (N, T), dpred_bbox_deltas (N, T, 4)): the
    two losses as Python floats and their gradients (zero off the sample).
    With nothing sampled both losses are 0 (torchvision would give NaN).
    """
    _check_loss_inputs(objectness, pred_bbox_deltas, labels, regression_targets)
    for name, m in (("pos_mask", pos_mask), ("neg_mask", neg_mask)):
        check_array(name, m, shape=objectness.shape, dtype_kind="b")
    if np.any(pos_mask & neg_mask):
        raise ValueError("pos_mask and neg_mask must be disjoint, got anchors in both")
    if np.any(labels[pos_mask] != 1) or np.any(labels[neg_mask] != 0):
        raise ValueError("pos_mask must select labels == 1 and neg_mask labels == 0")
    return _rpn_loss_from_samples(objectness, pred_bbox_deltas, labels, regression_targets, pos_mask, neg_mask)


def _rpn_loss_from_samples(objectness, pred_bbox_deltas, labels, regression_targets, pos_mask, neg_mask):
    """:func:`rpn_loss_from_samples` without the checks (for ``model``)."""
    dtype = objectness.dtype
    sampled = pos_mask | neg_mask
    num_sampled = int(sampled.sum())
    dobj = np.zeros_like(objectness)
    ddel = np.zeros_like(pred_bbox_deltas)
    if num_sampled == 0:
        return 0.0, 0.0, dobj, ddel
    logits = objectness[sampled]
    targets = pos_mask[sampled].astype(dtype)
    loss_obj, dlogits = _bce_with_logits(logits, targets, reduction="mean")
    dobj[sampled] = dlogits
    loss_box = 0.0
    if np.any(pos_mask):
        lb, dd = _smooth_l1(pred_bbox_deltas[pos_mask],
                            regression_targets[pos_mask].astype(dtype, copy=False),
                            beta=1.0 / 9.0, reduction="sum")
        loss_box = float(lb) / num_sampled
        ddel[pos_mask] = dd / dtype.type(num_sampled)
    return float(loss_obj), loss_box, dobj, ddel


@quiet_math
def rpn_loss(objectness, pred_bbox_deltas, labels, regression_targets, *, rng,
             batch_size_per_image=256, positive_fraction=0.5):
    """torchvision ``RegionProposalNetwork.compute_loss``: sample, then loss.

    objectness: (N, T) logits; pred_bbox_deltas: (N, T, 4) (both from
    ``concat_box_prediction_layers_forward``); labels: (N, T) int 1 / 0 / -1;
    regression_targets: (N, T, 4) (both from ``rpn_targets``); rng: the
    sampler's ``np.random.Generator``.
    Returns (loss_objectness, loss_rpn_box_reg, dobjectness (N, T),
    dpred_bbox_deltas (N, T, 4)). The sample is a constant: gradients flow
    to objectness and deltas only. = ``sample_anchors`` then
    ``rpn_loss_from_samples`` (call those two to see or fix the sample).
    """
    _check_loss_inputs(objectness, pred_bbox_deltas, labels, regression_targets)
    return _rpn_loss(objectness, pred_bbox_deltas, labels, regression_targets, check_rng(rng),
                     *_check_sampler_args(batch_size_per_image, positive_fraction))


def _rpn_loss(objectness, pred_bbox_deltas, labels, regression_targets, rng, batch_size_per_image,
              positive_fraction):
    """:func:`rpn_loss` without the checks (for ``model``)."""
    pos, neg = _sample_anchors(labels, rng, batch_size_per_image, positive_fraction)
    return _rpn_loss_from_samples(objectness, pred_bbox_deltas, labels, regression_targets, pos, neg)


# ------------------------------------------------------------------- proposals


@quiet_math
def decode_proposals(pred_bbox_deltas, anchors):
    """Apply the predicted deltas to the anchors (``BoxCoder.decode``, weights 1).

    pred_bbox_deltas: (N, T, 4), detached (no gradient flows back through the result).
    anchors: (T, 4), or a list of per-level arrays.
    Returns proposals (N, T, 4), same dtype. dw, dh are clamped at log(1000/16).
    """
    anchors = _concat_anchors(anchors)
    check_array("pred_bbox_deltas", pred_bbox_deltas, shape=("N", anchors.shape[0], 4), dtype_kind="f")
    check_finite("anchors", anchors)
    check_finite("pred_bbox_deltas", pred_bbox_deltas)
    return _decode_proposals(pred_bbox_deltas, anchors)


def _decode_proposals(pred_bbox_deltas, anchors):
    """:func:`decode_proposals` without the checks (for ``model``): anchors (T, 4)."""
    n, t, _ = pred_bbox_deltas.shape
    boxes = np.broadcast_to(anchors.astype(pred_bbox_deltas.dtype, copy=False), (n, t, 4)).reshape(-1, 4)
    out = _decode_boxes(pred_bbox_deltas.reshape(-1, 4), boxes,
                        np.asarray(RPN_BOX_WEIGHTS, dtype=pred_bbox_deltas.dtype))
    return out.reshape(n, t, 4)


def _check_image_shapes(image_shapes, n):
    if not isinstance(image_shapes, (list, tuple)) or len(image_shapes) != n:
        raise ValueError(f"image_shapes must be a list of {n} (height, width) pairs, got {image_shapes!r:.80}")
    return [check_hw_pair(f"image_shapes[{i}]", s) for i, s in enumerate(image_shapes)]


@quiet_math
def filter_proposals(proposals, objectness, image_shapes, num_anchors_per_level, *,
                     pre_nms_top_n, post_nms_top_n, nms_thresh=0.7, score_thresh=0.0,
                     min_size=1e-3, record=None):
    """Keep the best proposals of each image (torchvision ``RegionProposalNetwork.filter_proposals``).

    proposals: (N, T, 4) decoded boxes; objectness: (N, T) logits (detached);
    image_shapes: list of N (height, width) pairs; num_anchors_per_level: list
    of L ints summing to T (``H_l * W_l * A``).
    Steps, per image:
      1. per level, the ``pre_nms_top_n`` highest logits (all if fewer);
      2. scores = sigmoid(logits);
      3. clip boxes to the image; drop boxes with a side < ``min_size``;
      4. drop scores < ``score_thresh``;
      5. NMS with IoU ``nms_thresh`` separately per level (``batched_nms``);
      6. keep the ``post_nms_top_n`` best.
    Returns (boxes_per_image, scores_per_image): lists of N arrays (K_i, 4)
    and (K_i,), sorted by decreasing score, K_i <= post_nms_top_n. Presets:
    ``PROPOSAL_PRESETS["train"]`` (2000 / 2000) and ``["test"]`` (1000 / 1000).
    Ties in the per-level top-k go to the lower anchor index.

    record: None (default: nothing is kept), or a dict that receives the
    intermediates (used by ``mrcnn_np.trace``; the results are the same):
    "top_indices" (N, sum_l k_l) int, the anchors of step 1 (indices into T,
    level by level); "top_levels" (sum_l k_l,) int, their level index 0..L-1;
    "top_scores" (N, sum_l k_l), their sigmoid scores (step 2); and
    "before_nms": a list over images of (boxes (B_i, 4), scores (B_i,),
    level index (B_i,)) after steps 3-4, the input of step 5.
    """
    if record is not None and not isinstance(record, dict):
        raise TypeError(f"record must be None or a dict, got {type(record).__name__}")
    objectness = check_array("objectness", objectness, shape=("N", "T"), dtype_kind="f")
    n, t = objectness.shape
    check_array("proposals", proposals, shape=(n, t, 4), dtype_kind="f")
    check_finite("objectness", objectness)
    check_finite("proposals", proposals)
    shapes = _check_image_shapes(image_shapes, n)
    if not isinstance(num_anchors_per_level, (list, tuple)) or len(num_anchors_per_level) == 0:
        raise TypeError("num_anchors_per_level must be a non-empty list of ints")
    counts = [check_positive_int(f"num_anchors_per_level[{i}]", c, minimum=0)
              for i, c in enumerate(num_anchors_per_level)]
    if sum(counts) != t:
        raise ValueError(f"num_anchors_per_level must sum to T = {t}, got {sum(counts)}")
    pre = check_positive_int("pre_nms_top_n", pre_nms_top_n)
    post = check_positive_int("post_nms_top_n", post_nms_top_n)
    nms_thresh = check_float("nms_thresh", nms_thresh, minimum=0.0, maximum=1.0)
    score_thresh = check_float("score_thresh", score_thresh)
    min_size = check_float("min_size", min_size, minimum=0.0)
    return _filter_proposals(proposals, objectness, shapes, counts, pre_nms_top_n=pre, post_nms_top_n=post,
                             nms_thresh=nms_thresh, score_thresh=score_thresh, min_size=min_size, record=record)


def _filter_proposals(proposals, objectness, image_shapes, num_anchors_per_level, *, pre_nms_top_n,
                      post_nms_top_n, nms_thresh=0.7, score_thresh=0.0, min_size=1e-3, record=None):
    """:func:`filter_proposals` without the checks (for ``model``): image_shapes a list
    of (h, w) int pairs, num_anchors_per_level a list of ints, thresholds floats."""
    n = objectness.shape[0]
    shapes, counts = image_shapes, num_anchors_per_level
    pre, post = pre_nms_top_n, post_nms_top_n

    # 1. per-level top-k (stable: ties to the lower index)
    top_idx, top_lvl = [], []
    offset = 0
    for lvl, count in enumerate(counts):
        k = min(pre, count)
        if k > 0:
            ob = objectness[:, offset:offset + count]
            order = smallest_k(-ob, k)  # np.argsort(-ob, axis=1, kind="stable")[:, :k], without the full sort
            top_idx.append(order + offset)
            top_lvl.append(np.full(k, lvl, dtype=np.int64))
        offset += count
    if not top_idx:  # no anchors at all
        if record is not None:
            empty = (np.zeros((0, 4), dtype=proposals.dtype), np.zeros(0, dtype=objectness.dtype),
                     np.zeros(0, dtype=np.int64))
            record.update(top_indices=np.zeros((n, 0), np.int64), top_levels=np.zeros(0, np.int64),
                          top_scores=np.zeros((n, 0), objectness.dtype), before_nms=[empty] * n)
        return ([np.zeros((0, 4), dtype=proposals.dtype) for _ in range(n)],
                [np.zeros(0, dtype=objectness.dtype) for _ in range(n)])
    idx = np.concatenate(top_idx, axis=1)                     # (N, sum k)
    levels = np.concatenate(top_lvl)                          # (sum k,)
    rows = np.arange(n)[:, None]
    scores_all = _sigmoid(objectness[rows, idx])              # 2.
    boxes_all = proposals[rows, idx]
    if record is not None:
        record.update(top_indices=idx, top_levels=levels, top_scores=scores_all, before_nms=[])

    final_boxes, final_scores = [], []
    for i in range(n):  # a loop over images
        boxes = _clip_boxes_to_image(boxes_all[i], shapes[i])  # 3.
        scores, lvl = scores_all[i], levels
        keep = _remove_small_boxes(boxes, min_size)
        boxes, scores, lvl = boxes[keep], scores[keep], lvl[keep]
        keep = np.flatnonzero(scores >= score_thresh)         # 4.
        boxes, scores, lvl = boxes[keep], scores[keep], lvl[keep]
        if record is not None:
            record["before_nms"].append((boxes, scores, lvl))
        keep = _nms(boxes, scores, lvl, nms_thresh)[:post]     # 5. and 6. (batched_nms)
        final_boxes.append(boxes[keep])
        final_scores.append(scores[keep])
    return final_boxes, final_scores


@quiet_math
def generate_proposals(objectness, pred_bbox_deltas, anchors, image_shapes, *, mode=None,
                       pre_nms_top_n=None, post_nms_top_n=None, nms_thresh=0.7,
                       score_thresh=0.0, min_size=1e-3):
    """Head outputs -> proposals: flatten, decode, filter (the inference half of
    torchvision's ``RegionProposalNetwork.forward``). No gradient.

    objectness: list of L arrays (N, A, H_l, W_l); pred_bbox_deltas: list of L
    arrays (N, 4A, H_l, W_l) (from ``rpn_head_forward``).
    anchors: list of L arrays (H_l*W_l*A, 4) (``pyramid_anchors``), shared by the images.
    image_shapes: list of N (height, width).
    mode: "train" or "test" picks ``PROPOSAL_PRESETS``; or give pre_nms_top_n
    and post_nms_top_n explicitly (they override the preset).
    Returns (boxes_per_image, scores_per_image) as ``filter_proposals``.
    """
    if mode is not None and mode not in PROPOSAL_PRESETS:
        raise ValueError(f"mode must be one of {sorted(PROPOSAL_PRESETS)} or None, got {mode!r}")
    preset = PROPOSAL_PRESETS[mode] if mode is not None else {}
    pre = pre_nms_top_n if pre_nms_top_n is not None else preset.get("pre_nms_top_n")
    post = post_nms_top_n if post_nms_top_n is not None else preset.get("post_nms_top_n")
    if pre is None or post is None:
        raise ValueError("mode must be 'train' or 'test' when pre_nms_top_n / post_nms_top_n are not given")
    if not isinstance(anchors, (list, tuple)):
        raise TypeError("anchors must be a list of per-level (H*W*A, 4) arrays")
    for name, value in (("objectness", objectness), ("pred_bbox_deltas", pred_bbox_deltas)):
        if not isinstance(value, (list, tuple)) or len(value) == 0:
            raise TypeError(f"{name} must be a non-empty list of per-level arrays, got {type(value).__name__}")
    if not (len(objectness) == len(pred_bbox_deltas) == len(anchors)):
        raise ValueError(f"objectness, pred_bbox_deltas and anchors must have one entry per level, got "
                         f"{len(objectness)}, {len(pred_bbox_deltas)} and {len(anchors)}")
    for lvl, (o, d) in enumerate(zip(objectness, pred_bbox_deltas)):
        check_array(f"objectness[{lvl}]", o, shape=("N", "A", "H", "W"), dtype_kind="f")
        n, a, h, w = o.shape
        check_array(f"pred_bbox_deltas[{lvl}]", d, shape=(n, 4 * a, h, w), dtype_kind="f")
    (obj, deltas), _ = concat_box_prediction_layers_forward(objectness, pred_bbox_deltas)
    counts = [int(o.shape[1] * o.shape[2] * o.shape[3]) for o in objectness]
    for lvl, (a, c) in enumerate(zip(anchors, counts)):
        check_array(f"anchors[{lvl}]", a, shape=(c, 4), dtype_kind="f")
    proposals = decode_proposals(deltas, anchors)
    return filter_proposals(proposals, obj, image_shapes, counts, pre_nms_top_n=pre,
                            post_nms_top_n=post, nms_thresh=nms_thresh,
                            score_thresh=score_thresh, min_size=min_size)
