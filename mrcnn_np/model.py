"""The whole Mask R-CNN: parameters, training forward/backward, prediction.

This module only composes the stages; each lives (and is tested) in its own
module::

    images (N, 3, H, W)
      -> backbone_forward (fpn.py: ResNet body + FPN)     pyramid P2..P6 (N, D, H_l, W_l)
      -> rpn_head_forward (rpn.py), on P2..P6             objectness (N, A, H_l, W_l), deltas (N, 4A, H_l, W_l)
      -> concat_box_prediction_layers_forward            (N, T), (N, T, 4)
      -> decode_proposals + filter_proposals             proposals, list of (K_i, 4)   [no gradient]
      -> [train] rpn_targets + rpn_loss                  loss_objectness, loss_rpn_box_reg
      -> [train] select_training_samples (roi_heads.py)  S_i sampled RoIs, labels, targets [no gradient]
      -> multiscale_roi_align_forward (roi_align.py), on P2..P5, 7x7    (R, D, 7, 7)
      -> box_head_forward -> fastrcnn_loss               loss_classifier, loss_box_reg
         [test] postprocess_detections                   boxes, scores, labels
      -> multiscale_roi_align_forward, 14x14, on the positive RoIs [train] / detections [test]
      -> mask_head_forward -> maskrcnn_loss              loss_mask
         [test] maskrcnn_inference                       masks (E_i, 1, 28, 28) per image

It is the twin of torchvision's ``GeneralizedRCNN.forward`` with
``RegionProposalNetwork.forward`` and ``RoIHeads.forward`` of
``maskrcnn_resnet50_fpn`` (v1), without the transform: the input here is an
already normalised, padded batch plus the valid size of each image
(``image_sizes``), and ``predict`` returns boxes in that batch frame and
28 x 28 mask probabilities (resizing back and pasting are the transform's
job). :func:`detect` is the whole inference pipeline on raw images:
``transform.transform_forward`` -> :func:`predict` -> ``transform.postprocess``.

Shape shorthand: N images; H, W the padded batch size; D FPN channels;
A anchors per location; T anchors of one image over all levels; G
ground-truth objects of one image; S sampled RoIs of one image; P positive
RoIs; E_i detections of image i; K+1 classes with
background (label 0).
Boxes are (x1, y1, x2, y2) in batch pixels.

Where gradients flow: every loss is differentiated with respect to the
trainable parameters. The pyramid feeds the RPN head (all five levels), the
box RoIAlign and the mask RoIAlign (P2..P5): its gradient is the SUM of the
three. Proposals, anchor and RoI targets, and both samplings are constants
(torchvision detaches the proposals). Frozen BN parameters never get a
gradient, nor do the backbone stages below ``config.trainable_layers``.

Handoff conventions (every stage follows them; the README's "Conventions" says the same):

* Feature maps of several levels travel as a LIST in level order. The pyramid
  is ``[P2, P3, P4, P5, P6]`` (``pyramid[l]`` is P{l+2}; ``fpn.PYRAMID_LEVELS``
  names the entries, torchvision's keys are "0".."3", "pool") from
  ``backbone_forward`` through the RPN head (all five) to
  ``multiscale_roi_align_forward`` (``pyramid[:4]``, P2..P5), and back:
  ``dpyramid`` is a list of the same length (None: no gradient for that level).
  The per-level outputs (objectness, deltas, anchors, RoIAlign's per-level
  gradients) are lists in the same order. The one dict of maps is the ResNet
  body's ``{"C2": .., "C5": ..}``, read by name by the FPN alone (torchvision's
  ``IntermediateLayerGetter`` output).
* A stage with parameters (``backbone``/``bottleneck``/``resnet``, ``fpn``,
  ``rpn_head``, ``box_head``, ``mask_head``) has ``out, cache =
  X_forward(params, input)`` and ``grads, dinput = X_backward(dout, cache)``:
  always that pair. ``grads`` is a new dict keyed like ``params`` (the keys the
  stage trains); ``dinput`` has the type of the forward's input (an array, the
  pyramid list, the C2..C5 dict), or is None when the caller did not ask for
  it (``return_input_grad=False``, ``need_dx=False``). No flag changes the
  shape of a result.
* An op (``ops.*``, ``roi_align``, ``multiscale_roi_align``,
  ``concat_box_prediction_layers``) takes its weights as arrays and its backward
  returns the gradients of its differentiable array inputs in the forward's
  argument order: one array (``dx``), or a tuple (``dx, dw, db`` of conv2d and
  linear; ``dbox_cls, dbox_regression``), an entry None when not computed.
  Frozen BN's arrays are buffers, so ``frozen_batch_norm_backward`` gives dx.
* A loss returns its value(s), then the gradient of each input it
  differentiates, in one call (``rpn_loss``, ``fastrcnn_loss``, ``maskrcnn_loss``).
* :func:`backward` ends the chain: it returns the grads dict alone (the images
  get no gradient). No backward modifies ``dout``. Only private helpers
  (leading underscore, e.g. ``backbone._bottleneck_backward``) write gradients
  into a dict they are given, for speed.

Bad input (README, "Conventions"): the public functions are the boundary. They
refuse NaN/inf in params, images and targets, degenerate or overflowing target
boxes (ValueError naming the argument), then run every stage unchecked with
floating-point warnings off (``_checks.quiet_math``): exp underflowing to 0 in
a sigmoid or a softmax is the right answer, not a warning. Finite inputs so
large that the arithmetic still overflows make ``predict``/``detect`` raise a
ValueError (non-finite detections); ``forward_train`` returns the non-finite
losses (``train`` stops on them).

Randomness: only the two samplers draw, from the ``rng`` given to
``forward_train``, in a fixed order: first the RPN anchors of image 0, 1, ...
(two permutations each: positives, negatives), then the RoIs of image 0, 1, ...
The same seed gives the same losses bit for bit.
"""
from __future__ import annotations

import math
import numbers
from typing import Any, NamedTuple

import numpy as np

from ._checks import (check_array, check_coordinates, check_float_dtype, check_hw_pair, check_positive_int,
                      check_rng, check_sequence, quiet_math)
from .anchors import _pyramid_anchors
from .backbone import ResNetStructure, check_resnet_params, resnet_trainable_keys
from .config import MaskRCNNConfig
from .fpn import _backbone_backward, _backbone_forward, _backbone_infer, check_fpn_params, init_resnet_fpn_backbone
from .roi_align import _multiscale_roi_align_backward, _multiscale_roi_align_forward
from .transform import postprocess, transform_forward
from .roi_heads import (
    BOX_HEAD_KEYS,
    _box_head_backward,
    _box_head_forward,
    _box_head_infer,
    _fastrcnn_loss,
    init_box_head,
    init_mask_head,
    _mask_head_backward,
    _mask_head_forward,
    _mask_head_infer,
    mask_head_keys,
    _maskrcnn_inference,
    _maskrcnn_loss,
    _postprocess_detections,
    _select_positive_proposals,
    _select_training_samples,
)
from .rpn import (
    RPN_PARAM_NAMES,
    _concat_box_prediction_layers_backward,
    _concat_box_prediction_layers_forward,
    _decode_proposals,
    _filter_proposals,
    init_rpn_head,
    _rpn_head_backward,
    _rpn_head_forward,
    _rpn_head_infer,
    _rpn_loss_from_samples,
    _sample_anchors,
    _rpn_targets,
)

__all__ = [
    "LOSS_NAMES",
    "ModelCache",
    "init_params",
    "trainable_keys",
    "forward_train",
    "backward",
    "loss_and_grads",
    "predict",
    "detect",
    "roi_scales",
]

#: the keys of the loss dict, in torchvision's order (RoI heads, then RPN)
LOSS_NAMES = ("loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness", "loss_rpn_box_reg")

#: the RoI heads pool from pyramid[:_ROI_LEVELS] = P2..P5 (torchvision's
#: MultiScaleRoIAlign(featmap_names=["0", "1", "2", "3"])); the RPN reads all of it
_ROI_LEVELS = 4
_FPN_INPUTS = ("C2", "C3", "C4", "C5")         # the body's outputs the FPN reads


class ModelCache(NamedTuple):
    """What ``backward`` needs, plus the intermediate values worth looking at.

    config: MaskRCNNConfig; dtype; keys: the trainable keys (gradient order);
    backbone: BackboneCache; rpn_head: RPNHeadCache; concat: ConcatCache;
    box_pool, mask_pool: MultiScaleRoIAlignCache; box_head: BoxHeadCache;
    mask_head: MaskHeadCache;
    dobjectness (N, T), dpred_bbox_deltas (N, T, 4): gradients of
        loss_objectness and loss_rpn_box_reg (each of its own loss);
    dclass_logits (S, K+1), dbox_regression (S, 4(K+1)), dmask_logits
        (P, K+1, 28, 28): gradients of loss_classifier, loss_box_reg, loss_mask;
    info: dict of intermediate values (no gradient): "anchors" (list of L
        (H_l*W_l*A, 4)), "proposals" / "proposal_scores" (lists over images),
        "rpn_labels" (N, T), "rpn_sampled_positive" / "rpn_sampled_negative" (N, T)
        bool (the anchors in the RPN losses), "sampled_proposals", "sampled_labels",
        "matched_idxs", "regression_targets" (lists over images),
        "mask_proposals", "pos_matched_idxs" (lists over images),
        "class_logits", "box_regression", "mask_logits".
    """

    config: Any
    dtype: np.dtype
    keys: tuple
    backbone: Any
    rpn_head: Any
    concat: Any
    box_pool: Any
    box_head: Any
    mask_pool: Any
    mask_head: Any
    dobjectness: np.ndarray
    dpred_bbox_deltas: np.ndarray
    dclass_logits: np.ndarray
    dbox_regression: np.ndarray
    dmask_logits: np.ndarray
    info: dict


# =========================================================================== parameters


def _check_config(config):
    if not isinstance(config, MaskRCNNConfig):
        raise TypeError(f"config must be a MaskRCNNConfig, got {type(config).__name__}")
    return config


@quiet_math
def init_params(config, *, rng, dtype=np.float32):
    """Random parameters of the whole model, initialised as torchvision does.

    config: MaskRCNNConfig; rng: np.random.Generator; dtype: float dtype.
    Returns one flat dict with torchvision ``state_dict`` names, drawn in this
    order: ``backbone.body.*`` and ``backbone.fpn.*`` (``init_resnet_fpn_backbone``:
    Kaiming-normal convs, identity frozen BN, FPN kaiming_uniform(a=1)),
    ``rpn.head.*`` (normal std 0.01, bias 0), ``roi_heads.box_head.*`` /
    ``box_predictor.*`` (torch Linear default), ``roi_heads.mask_head.*`` /
    ``mask_predictor.*`` (Kaiming normal, fan_out).
    """
    config = _check_config(config)
    check_rng(rng)
    dtype = check_float_dtype(dtype)
    d = config.fpn_channels
    params = init_resnet_fpn_backbone(config.backbone_layers, width=config.backbone_width,
                                      out_channels=d, rng=rng, dtype=dtype)
    params.update(init_rpn_head(d, config.num_anchors_per_location, rng=rng, dtype=dtype))
    params.update(init_box_head(d, config.box_roi_output_size, config.representation_size,
                                config.num_classes, rng=rng, dtype=dtype))
    params.update(init_mask_head(d, config.mask_layers, config.mask_dim_reduced, config.num_classes,
                                 rng=rng, dtype=dtype))
    return params


def trainable_keys(params, config):
    """The parameter keys that get gradients and updates, in ``params`` order.

    params: the model's parameter dict; config: MaskRCNNConfig.
    Everything except the backbone stages below ``config.trainable_layers``
    (of conv1, layer1, ..., layer4, counted from the top) and except every
    frozen-BN array (weight, bias, running_mean, running_var are buffers in
    the reference). The FPN, the RPN head and the RoI heads are always trained.
    """
    config = _check_config(config)
    if not isinstance(params, dict):
        raise TypeError(f"params must be a dict of arrays, got {type(params).__name__}")
    body = set(resnet_trainable_keys(params, trainable_layers=config.trainable_layers))
    heads = set(RPN_PARAM_NAMES) | set(BOX_HEAD_KEYS) | set(mask_head_keys(params))
    return [k for k in params
            if k in body or k in heads or k.startswith("backbone.fpn.")]


def _check_params(params, config, dtype):
    """Structure of params vs config, and one dtype (the images'): every array the
    stages read has its shape, so they run unchecked (``_backbone_forward`` ...).
    Returns (ResNetStructure, FPN input names) for ``_backbone_forward``."""
    if not isinstance(params, dict):
        raise TypeError(f"params must be a dict of arrays, got {type(params).__name__}")
    for key, value in params.items():
        if not isinstance(value, np.ndarray):
            raise TypeError(f"params[{key!r}] must be a numpy.ndarray, got {type(value).__name__}")
        if value.dtype != dtype:
            raise TypeError(f"params[{key!r}] must have the dtype of images ({dtype}), got {value.dtype}")
        if not np.isfinite(value).all():  # the boundary refuses NaN/inf (README, "Conventions")
            raise ValueError(f"params[{key!r}] must be finite, got NaN or inf entries")
    structure = check_resnet_params(params, dtype=dtype)
    if structure.layers != config.backbone_layers or structure.width != config.backbone_width:
        raise ValueError(
            f"params hold a ResNet of width {structure.width} and blocks {structure.layers}, but config says "
            f"backbone_width={config.backbone_width}, backbone_layers={config.backbone_layers}"
        )
    ins, d = check_fpn_params(params, dtype=dtype)
    if d != config.fpn_channels or len(ins) != 4:
        raise ValueError(f"params hold an FPN of {len(ins)} levels and {d} channels, but config says "
                         f"fpn_channels={config.fpn_channels}")
    body = list(config.backbone_out_channels)
    if list(ins) != body:
        raise ValueError(f"params hold an FPN on inputs of {ins} channels, but the ResNet body outputs "
                         f"C2..C5 with {body}")
    in_names = _FPN_INPUTS
    for key, (shape, fields) in _expected_head_shapes(config).items():
        if key not in params:
            raise ValueError(f"params is missing {key!r}")
        if params[key].shape != shape:
            raise ValueError(f"params[{key!r}] has shape {params[key].shape}, but config ({fields}) "
                             f"gives {shape}")
    extra = f"roi_heads.mask_head.{len(config.mask_layers)}.0.weight"
    if extra in params:
        raise ValueError(f"params hold {extra!r}: more mask-head layers than config.mask_layers="
                         f"{config.mask_layers}")
    return structure, in_names


def _expected_head_shapes(config):
    """{key: (shape, the config fields that fix it)} of the RPN, box and mask heads."""
    d, a, k1 = config.fpn_channels, config.num_anchors_per_location, config.num_classes
    rep, s = config.representation_size, config.box_roi_output_size
    out = {
        "rpn.head.conv.0.0.weight": ((d, d, 3, 3), "fpn_channels"),
        "rpn.head.conv.0.0.bias": ((d,), "fpn_channels"),
        "rpn.head.cls_logits.weight": ((a, d, 1, 1), "fpn_channels, aspect_ratios"),
        "rpn.head.cls_logits.bias": ((a,), "aspect_ratios"),
        "rpn.head.bbox_pred.weight": ((4 * a, d, 1, 1), "fpn_channels, aspect_ratios"),
        "rpn.head.bbox_pred.bias": ((4 * a,), "aspect_ratios"),
        "roi_heads.box_head.fc6.weight": ((rep, d * s * s), "representation_size, fpn_channels, box_roi_output_size"),
        "roi_heads.box_head.fc6.bias": ((rep,), "representation_size"),
        "roi_heads.box_head.fc7.weight": ((rep, rep), "representation_size"),
        "roi_heads.box_head.fc7.bias": ((rep,), "representation_size"),
        "roi_heads.box_predictor.cls_score.weight": ((k1, rep), "num_classes, representation_size"),
        "roi_heads.box_predictor.cls_score.bias": ((k1,), "num_classes"),
        "roi_heads.box_predictor.bbox_pred.weight": ((4 * k1, rep), "num_classes, representation_size"),
        "roi_heads.box_predictor.bbox_pred.bias": ((4 * k1,), "num_classes"),
    }
    c = d
    for i, width in enumerate(config.mask_layers):
        out[f"roi_heads.mask_head.{i}.0.weight"] = ((width, c, 3, 3), "mask_layers, fpn_channels")
        out[f"roi_heads.mask_head.{i}.0.bias"] = ((width,), "mask_layers")
        c = width
    dr = config.mask_dim_reduced
    out["roi_heads.mask_predictor.conv5_mask.weight"] = ((c, dr, 2, 2), "mask_layers, mask_dim_reduced")
    out["roi_heads.mask_predictor.conv5_mask.bias"] = ((dr,), "mask_dim_reduced")
    out["roi_heads.mask_predictor.mask_fcn_logits.weight"] = ((k1, dr, 1, 1), "num_classes, mask_dim_reduced")
    out["roi_heads.mask_predictor.mask_fcn_logits.bias"] = ((k1,), "num_classes")
    return out


# =========================================================================== input checks


def _check_images(images):
    check_array("images", images, shape=("N", 3, "H", "W"), dtype_kind="f")
    if min(images.shape) == 0:
        raise ValueError(f"images must have no empty dimension, got {images.shape}")
    if not np.isfinite(images).all():
        raise ValueError("images must be finite, got NaN or inf entries")
    return images


def _check_image_sizes(image_sizes, images):
    n, _, h, w = images.shape
    if image_sizes is None:
        return [(h, w)] * n
    if not isinstance(image_sizes, (list, tuple)) or len(image_sizes) != n:
        raise ValueError(f"image_sizes must be a list of {n} (h, w) pairs (one per image), got {image_sizes!r:.80}")
    out = []
    for i, s in enumerate(image_sizes):
        hi, wi = check_hw_pair(f"image_sizes[{i}]", s)
        if hi > h or wi > w:
            raise ValueError(f"image_sizes[{i}] must fit in the batch ({h}, {w}), got {(hi, wi)}")
        out.append((hi, wi))
    return out


def _check_targets(targets, n, num_classes):
    if not isinstance(targets, (list, tuple)):
        raise TypeError(f"targets must be a list of dicts (one per image), got {type(targets).__name__}")
    if len(targets) != n:
        raise ValueError(f"targets must have one dict per image ({n}), got {len(targets)}")
    for i, t in enumerate(targets):
        if not isinstance(t, dict):
            raise TypeError(f"targets[{i}] must be a dict, got {type(t).__name__}")
        for key in ("boxes", "labels", "masks"):
            if key not in t:
                raise ValueError(f"targets[{i}] is missing {key!r} (needs 'boxes', 'labels', 'masks')")
        boxes = check_array(f"targets[{i}]['boxes']", t["boxes"], shape=("G", 4), dtype_kind="f")
        g = boxes.shape[0]
        # finite, and small enough for the areas of the IoU (float16 is measured in float32)
        check_coordinates(f"targets[{i}]['boxes']", boxes, np.promote_types(boxes.dtype, np.float32))
        if g and not ((boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()):
            raise ValueError(f"targets[{i}]['boxes'] must have x2 > x1 and y2 > y1, got a degenerate box")
        labels = check_array(f"targets[{i}]['labels']", t["labels"], shape=(g,), dtype_kind="iu")
        if g and (labels.min() < 1 or labels.max() >= num_classes):
            raise ValueError(f"targets[{i}]['labels'] must be in [1, {num_classes - 1}] (num_classes="
                             f"{num_classes}, 0 is background), got values in [{labels.min()}, {labels.max()}]")
        masks = check_array(f"targets[{i}]['masks']", t["masks"], shape=(g, "H_i", "W_i"), dtype_kind="biuf")
        if masks.size and masks.dtype != bool and not (masks.min() >= 0 and masks.max() <= 1):
            raise ValueError(f"targets[{i}]['masks'] must hold values in [0, 1] (binary or soft masks), "
                             f"got values in [{masks.min()}, {masks.max()}]")
    return list(targets)


def _check_loss_weights(loss_weights):
    if loss_weights is None:
        return dict.fromkeys(LOSS_NAMES, 1.0)
    if not isinstance(loss_weights, dict):
        raise TypeError(f"loss_weights must be a dict {{loss name: weight}}, got {type(loss_weights).__name__}")
    out = dict.fromkeys(LOSS_NAMES, 1.0)
    for k, v in loss_weights.items():
        if k not in out:
            raise ValueError(f"loss_weights has unknown key {k!r}; expected some of {LOSS_NAMES}")
        if isinstance(v, bool) or not isinstance(v, numbers.Real):
            raise TypeError(f"loss_weights[{k!r}] must be a real number, got {type(v).__name__}")
        if not math.isfinite(v):
            raise ValueError(f"loss_weights[{k!r}] must be finite, got {v!r}")
        out[k] = float(v)
    return out


# =========================================================================== shared pieces


def roi_scales(pyramid_shapes, batch_hw):
    """Spatial scales of P2..P5 for the RoI poolers: ``2 ** round(log2(H_l / H))``.

    pyramid_shapes: the (N, D, H_l, W_l) shapes of P2..P5; batch_hw: (H, W) of the
    padded batch. Gives 1/4, 1/8, 1/16, 1/32 for any batch padded to a multiple of 32.

    Deliberate difference from torchvision's ``MultiScaleRoIAlign``: it infers the
    scales once, on its first batch, from the LARGEST VALID image height
    (``image_shapes``) and caches them. For a first batch whose tallest image is much
    shorter than the padding (e.g. 40 rows padded to 64) that rounds P2's scale to 1/2
    and every later batch pools from the wrong place. The padded height always gives
    the true stride; for any ordinary first batch both agree.
    """
    check_sequence("pyramid_shapes", pyramid_shapes, what="list of (N, D, H_l, W_l) shapes")
    for i, shape in enumerate(pyramid_shapes):
        if not isinstance(shape, (tuple, list)) or len(shape) != 4:
            raise ValueError(f"pyramid_shapes[{i}] must be an (N, D, H_l, W_l) shape, got {shape!r}")
        for j, v in enumerate(shape):  # N, D, H_l, W_l: ints, H_l >= 1 (the scale is H_l / H)
            check_positive_int(f"pyramid_shapes[{i}][{j}]", v, minimum=1 if j == 2 else 0)
    check_hw_pair("batch_hw", batch_hw)
    return _roi_scales(pyramid_shapes, batch_hw)


def _roi_scales(pyramid_shapes, batch_hw):
    """:func:`roi_scales` on checked shapes."""
    H = batch_hw[0]
    return tuple(float(2.0 ** np.round(np.log2(shape[2] / H))) for shape in pyramid_shapes)


def _rois(boxes_per_image, dtype):
    """List over images of (R_i, 4) -> (R, 5) [batch index, x1, y1, x2, y2]."""
    parts = [np.concatenate([np.full((b.shape[0], 1), i, dtype=dtype), b.astype(dtype, copy=False)], axis=1)
             for i, b in enumerate(boxes_per_image)]
    return np.concatenate(parts, axis=0) if parts else np.zeros((0, 5), dtype)


def _roi_features(pyramid, batch_hw):
    """The levels the RoI heads pool from (P2..P5, the head of the pyramid list) and their
    scales (see :func:`roi_scales`)."""
    roi_feats = pyramid[:_ROI_LEVELS]
    return roi_feats, _roi_scales([f.shape for f in roi_feats], batch_hw)


def _box_branch(params, roi_feats, scales, boxes, config, record=None, infer=False):
    """RoIAlign (7x7) of ``boxes`` (list over images) and the box head.

    Returns ((class_logits (R, K+1), box_regression (R, 4(K+1))), pool cache, head cache).
    record: None, or a dict that receives "roi_features" (R, D, 7, 7), the pooled
    input of the head, and "roi_levels" (R,), the level (2..5) each RoI was pooled from.
    infer: the head's inference path (``_box_head_infer``: no cache; head cache None).
    """
    side = config.box_roi_output_size
    pooled, pool_cache = _multiscale_roi_align_forward(
        roi_feats, _rois(boxes, roi_feats[0].dtype), (side, side), scales, config.box_roi_sampling_ratio)
    if record is not None:
        record.update(roi_features=pooled, roi_levels=pool_cache.levels)
    if infer:
        return _box_head_infer(params, pooled), pool_cache, None
    out, head_cache = _box_head_forward(params, pooled)
    return out, pool_cache, head_cache


def _mask_branch(params, roi_feats, scales, boxes, config, infer=False):
    """RoIAlign (14x14) of ``boxes`` and the mask head: (mask_logits (R, K+1, 28, 28), caches).
    infer: the head's inference path (``_mask_head_infer``; head cache None)."""
    side = config.mask_roi_output_size
    pooled, pool_cache = _multiscale_roi_align_forward(
        roi_feats, _rois(boxes, roi_feats[0].dtype), (side, side), scales, config.mask_roi_sampling_ratio)
    if infer:
        return _mask_head_infer(params, pooled), pool_cache, None
    logits, head_cache = _mask_head_forward(params, pooled)
    return logits, pool_cache, head_cache


def _rpn_forward(params, pyramid, images, config, image_sizes, training, record=None):
    """Head, anchors, flattening and proposals. Returns (head outputs, caches, proposals, info).

    record: None, or a dict for :func:`_propose` to fill. Not training: the head's
    inference path (``_rpn_head_infer``), head cache None.
    """
    if training:
        (obj_levels, del_levels), head_cache = _rpn_head_forward(params, pyramid)
    else:
        (obj_levels, del_levels), head_cache = _rpn_head_infer(params, pyramid), None
    grids = tuple(tuple(f.shape[-2:]) for f in pyramid)
    anchors = _pyramid_anchors(tuple(images.shape[-2:]), grids, config.anchor_sizes, config.aspect_ratios,
                               images.dtype)
    (objectness, deltas), concat_cache = _concat_box_prediction_layers_forward(obj_levels, del_levels)
    counts = [a.shape[0] for a in anchors]
    pre = config.rpn_pre_nms_top_n_train if training else config.rpn_pre_nms_top_n_test
    post = config.rpn_post_nms_top_n_train if training else config.rpn_post_nms_top_n_test
    proposals, scores = _propose(objectness, deltas, anchors, image_sizes, counts, config=config,
                                 pre_nms_top_n=pre, post_nms_top_n=post, record=record)
    return objectness, deltas, head_cache, concat_cache, anchors, proposals, scores


def _propose(objectness, deltas, anchors, image_sizes, counts, *, config, pre_nms_top_n, post_nms_top_n,
             record=None):
    """The RPN's proposals: every anchor decoded by its deltas, then ``filter_proposals``
    (no gradient: the deltas and logits are detached, as torchvision).

    objectness (N, T), deltas (N, T, 4), anchors (list over levels), image_sizes,
    counts (anchors per level). Returns (proposals, scores), lists over images.
    record: None, or a dict that receives "decoded" (N, T, 4), every anchor
    refined by its deltas (before clipping), and what ``filter_proposals`` records.
    """
    boxes = _decode_proposals(deltas, np.concatenate(anchors, axis=0))
    if record is not None:
        record["decoded"] = boxes
    return _filter_proposals(boxes, objectness, image_sizes, counts, pre_nms_top_n=pre_nms_top_n,
                             post_nms_top_n=post_nms_top_n, nms_thresh=config.rpn_nms_thresh,
                             score_thresh=config.rpn_score_thresh, record=record)


# =========================================================================== training


@quiet_math
def forward_train(params, images, targets, config, *, rng, image_sizes=None):
    """The five training losses of Mask R-CNN (twin of ``GeneralizedRCNN.forward`` in train mode,
    after the transform).

    params: flat dict (``init_params``), every array in images' dtype.
    images: (N, 3, H, W) float, normalised and padded batch.
    targets: list of N dicts: "boxes" (G, 4) float xyxy in batch pixels,
        "labels" (G,) int in [1, num_classes - 1], "masks" (G, H_i, W_i)
        bool / uint8 / float in the image frame (G may be 0).
    config: MaskRCNNConfig. rng: np.random.Generator (both samplers).
    image_sizes: list of N (h, w), the valid region of each image (proposals
        are clipped to it); default the full (H, W).
    Returns (losses, cache): losses {"loss_classifier", "loss_box_reg",
    "loss_mask", "loss_objectness", "loss_rpn_box_reg"} as Python floats;
    cache a ModelCache for ``backward``.
    """
    config = _check_config(config)
    images = _check_images(images)
    check_rng(rng)
    structure, in_names = _check_params(params, config, images.dtype)
    n = images.shape[0]
    sizes = _check_image_sizes(image_sizes, images)
    targets = _check_targets(targets, n, config.num_classes)
    # every argument is valid now: the stages below run without checking again
    dtype = images.dtype
    keys = tuple(trainable_keys(params, config))

    # backbone + FPN
    # (the body's groups below config.trainable_layers keep no cache: backward never walks them)
    pyramid, backbone_cache = _backbone_forward(params, images, structure, in_names,
                                                frozen=5 - config.trainable_layers)

    # RPN: proposals (detached), then anchor targets, sample, loss
    objectness, deltas, head_cache, concat_cache, anchors, proposals, proposal_scores = _rpn_forward(
        params, pyramid, images, config, sizes, training=True)
    gt_boxes = [t["boxes"] for t in targets]
    rpn_labels, rpn_reg_targets = _rpn_targets(np.concatenate(anchors, axis=0), gt_boxes,
                                               config.rpn_fg_iou_thresh, config.rpn_bg_iou_thresh)
    rpn_pos, rpn_neg = _sample_anchors(rpn_labels, rng, config.rpn_batch_size_per_image,
                                       config.rpn_positive_fraction)
    loss_objectness, loss_rpn_box_reg, dobj, ddel = _rpn_loss_from_samples(
        objectness, deltas, rpn_labels, rpn_reg_targets, rpn_pos, rpn_neg)

    # RoI heads: sample RoIs (constants), box branch
    sampled, matched_idxs, labels, reg_targets = _select_training_samples(
        proposals, targets, rng, config.box_fg_iou_thresh, config.box_bg_iou_thresh,
        config.box_batch_size_per_image, config.box_positive_fraction, config.bbox_reg_weights)
    roi_feats, scales = _roi_features(pyramid, images.shape[2:])
    (class_logits, box_regression), box_pool_cache, box_head_cache = _box_branch(
        params, roi_feats, scales, sampled, config)
    loss_classifier, loss_box_reg, dcls, dreg = _fastrcnn_loss(class_logits, box_regression, labels,
                                                                reg_targets)

    # mask branch on the positive RoIs
    mask_proposals, pos_matched_idxs = _select_positive_proposals(sampled, labels, matched_idxs)
    mask_logits, mask_pool_cache, mask_head_cache = _mask_branch(
        params, roi_feats, scales, mask_proposals, config)
    loss_mask, dmask = _maskrcnn_loss(mask_logits, mask_proposals, [t["masks"] for t in targets],
                                      [t["labels"] for t in targets], pos_matched_idxs)

    losses = {
        "loss_classifier": float(loss_classifier),
        "loss_box_reg": float(loss_box_reg),
        "loss_mask": float(loss_mask),
        "loss_objectness": float(loss_objectness),
        "loss_rpn_box_reg": float(loss_rpn_box_reg),
    }
    info = {
        "anchors": anchors, "proposals": proposals, "proposal_scores": proposal_scores,
        "rpn_labels": rpn_labels, "rpn_sampled_positive": rpn_pos, "rpn_sampled_negative": rpn_neg,
        "sampled_proposals": sampled, "sampled_labels": labels,
        "matched_idxs": matched_idxs, "regression_targets": reg_targets,
        "mask_proposals": mask_proposals, "pos_matched_idxs": pos_matched_idxs,
        "class_logits": class_logits, "box_regression": box_regression, "mask_logits": mask_logits,
    }
    cache = ModelCache(
        config=config, dtype=dtype, keys=keys,
        backbone=backbone_cache, rpn_head=head_cache, concat=concat_cache,
        box_pool=box_pool_cache, box_head=box_head_cache, mask_pool=mask_pool_cache,
        mask_head=mask_head_cache, dobjectness=dobj, dpred_bbox_deltas=ddel,
        dclass_logits=dcls, dbox_regression=dreg, dmask_logits=dmask, info=info,
    )
    return losses, cache


def _scaled(d, w):
    """w * d as a new array in d's dtype (d itself is never modified)."""
    return d * d.dtype.type(w) if w != 1.0 else d


@quiet_math
def backward(cache, *, loss_weights=None):
    """Gradient of ``sum_k loss_weights[k] * losses[k]`` with respect to every trainable parameter.

    cache: ModelCache from ``forward_train`` (not modified: backward can be
        called again with other weights).
    loss_weights: {loss name: float}, missing names weigh 1; default all 1.
    Returns {key: array} for ``trainable_keys(params, config)``, each shaped
    and typed like the parameter. The pyramid's gradient is the sum of what
    the RPN head (P2..P6), the box RoIAlign and the mask RoIAlign (P2..P5)
    send back; proposals and targets are constants.
    """
    if not isinstance(cache, ModelCache):
        raise TypeError(f"cache must be the ModelCache from forward_train, got {type(cache).__name__}")
    return _backward(cache._asdict(), _check_loss_weights(loss_weights), release=False)


def _backward(c, w, *, release):
    """:func:`backward` on ``c``, the ModelCache's fields as a dict, ``w`` the checked loss weights.

    release: ``c`` is the caller's to consume (``loss_and_grads``): each cache is
    dropped from it once its backward has run, and the backbone's caches block by
    block during the walk down (``fpn._backbone_backward(release=True)``), so the
    step's peak memory holds what is still to come, not the whole forward. The
    gradients are the same bits either way.
    """
    take = c.pop if release else c.__getitem__
    config, keys = c["config"], c["keys"]
    if release:
        c.pop("info")  # (logits, anchors, proposals ...: nothing the backward reads)

    # RPN head (first, so that the RoI heads' pyramid gradients add onto its as they come:
    # the same sums in the same order, rpn + box + mask, without holding three pyramids)
    dobj = _scaled(take("dobjectness"), w["loss_objectness"])
    ddel = _scaled(take("dpred_bbox_deltas"), w["loss_rpn_box_reg"])
    dobj_levels, ddel_levels = _concat_box_prediction_layers_backward((dobj, ddel), take("concat"))
    del dobj, ddel
    rpn_grads, dpyramid = _rpn_head_backward((dobj_levels, ddel_levels), take("rpn_head"))
    del dobj_levels, ddel_levels
    dpyramid = list(dpyramid)

    # RoI heads: box branch, then mask branch, each back to the pyramid through RoIAlign
    # (the pyramid feeds three consumers: gradients add, the RoI heads' on P2..P5)
    dcls = _scaled(take("dclass_logits"), w["loss_classifier"])
    dreg = _scaled(take("dbox_regression"), w["loss_box_reg"])
    box_grads, dbox_pooled = _box_head_backward((dcls, dreg), take("box_head"))
    del dcls, dreg
    dfeat = _multiscale_roi_align_backward(dbox_pooled, take("box_pool"))
    del dbox_pooled
    for i in range(_ROI_LEVELS):
        dpyramid[i] += dfeat[i]  # in place: the RPN head's fresh gradients (P2 at 800 px: 41 MB)
    del dfeat
    dmask = _scaled(take("dmask_logits"), w["loss_mask"])
    mask_grads, dmask_pooled = _mask_head_backward(dmask, take("mask_head"))
    del dmask
    dfeat = _multiscale_roi_align_backward(dmask_pooled, take("mask_pool"))
    del dmask_pooled
    for i in range(_ROI_LEVELS):
        dpyramid[i] += dfeat[i]
    del dfeat
    backbone_grads, _ = _backbone_backward(dpyramid, take("backbone"), config.trainable_layers, release=release)

    everything = {**backbone_grads, **rpn_grads, **box_grads, **mask_grads}
    missing = [k for k in keys if k not in everything]
    if missing:  # every stage returns a gradient for each of its trainable parameters
        raise RuntimeError(f"no stage returned a gradient for trainable {missing[:3]} ...")
    return {k: everything[k] for k in keys}


@quiet_math
def loss_and_grads(params, images, targets, config, *, rng, image_sizes=None, loss_weights=None):
    """``forward_train`` then ``backward``: returns (losses, grads).

    The cache never leaves this call, so the backward consumes it (``_backward(release=True)``:
    each stage's cache is freed once its gradient is computed), which lowers the step's peak
    memory; the results are those of ``backward(forward_train(...)[1])``, bit for bit."""
    w = _check_loss_weights(loss_weights)
    losses, cache = forward_train(params, images, targets, config, rng=rng, image_sizes=image_sizes)
    fields = cache._asdict()
    del cache  # ``fields`` holds the only references now
    return losses, _backward(fields, w, release=True)


# =========================================================================== inference


@quiet_math
def predict(params, images, config, *, image_sizes=None):
    """Detections of every image (twin of ``GeneralizedRCNN.forward`` in eval mode, before
    ``transform.postprocess``).

    params: flat dict; images: (N, 3, H, W) float normalised batch;
    config: MaskRCNNConfig (the ``*_test`` RPN numbers and the box_* post-processing);
    image_sizes: list of N (h, w) valid regions (boxes are clipped to them);
        default the full (H, W).
    Returns a list of N dicts: "boxes" (E_i, 4) in batch pixels, "labels"
    (E_i,) int64 in [1, K], "scores" (E_i,) sorted decreasing, "masks"
    (E_i, 1, M, M) probabilities (M = 2 * mask_roi_output_size = 28), all in
    images' dtype (labels int64). E_i may be 0. Deterministic (no rng).
    Memory: the inference path takes its large arrays from a per-thread pool of
    buffers (``kernels.arena``) that keeps the memory of dead arrays for the next
    call -- about 200 MB after an 800 px image, at most 768 MB a thread;
    ``mrcnn_np.kernels.arena.release()`` gives it back.
    """
    config = _check_config(config)
    images = _check_images(images)
    _check_params(params, config, images.dtype)
    sizes = _check_image_sizes(image_sizes, images)
    return _check_finite_detections(_predict(params, images, config, sizes))


def _check_finite_detections(preds):
    """Finite inputs can still overflow the arithmetic (values near the dtype's largest):
    say so, naming the inputs, rather than return NaN boxes or scores."""
    for p in preds:
        for key in ("boxes", "scores", "masks"):
            if not np.isfinite(p[key]).all():
                raise ValueError(f"images or params are too large: the model's arithmetic overflowed "
                                 f"(non-finite detection {key})")
    return preds


def _predict(params, images, config, sizes, record=None):
    """:func:`predict` on checked arguments: the one inference path (``detect`` and
    ``mrcnn_np.trace`` run it too).

    record: None (nothing is kept; the default), or a dict that receives every
    intermediate, batched as the stages produce them: "pyramid" (list [P2, .., P6]),
    "objectness" (N, T) logits, "rpn_deltas" (N, T, 4), "anchors" (list over
    levels), "rpn" (what ``_propose`` / ``filter_proposals`` record),
    "proposals" / "proposal_scores" (lists over images), "roi_features",
    "roi_levels" (``_box_branch``), "class_logits" (R, K+1), "box_regression"
    (R, 4(K+1)), "postprocess" (what ``postprocess_detections`` records),
    "mask_logits" (E, K+1, M, M) of the detections of all images.

    Every stage runs its inference path (``_backbone_infer``, ``_rpn_head_infer``,
    ``_box_head_infer``, ``_mask_head_infer``): no caches for a backward, ReLUs in
    place, the mask predictor at 14 x 14 (see ``roi_heads._mask_head_infer``). Boxes,
    scores and labels are those of the training forwards bit for bit; the mask head's
    convs split each sum in three partial sums (``kernels.conv.conv2d_infer``), so mask
    probabilities differ from the training forward's by float32 rounding (measured:
    at most 1.3e-6 on the shapes model, 2.1e-5 on a 320 px ResNet-50-FPN with random
    weights).
    """
    rec = record is not None
    structure = ResNetStructure(config.backbone_width, config.backbone_layers)  # (_check_params: params agree)
    pyramid = _backbone_infer(params, images, structure, _FPN_INPUTS)
    rpn_record = {} if rec else None
    objectness, deltas, _, _, anchors, proposals, proposal_scores = _rpn_forward(
        params, pyramid, images, config, sizes, training=False, record=rpn_record)
    roi_feats, scales = _roi_features(pyramid, images.shape[2:])
    box_record = {} if rec else None
    (class_logits, box_regression), _, _ = _box_branch(params, roi_feats, scales, proposals, config,
                                                       record=box_record, infer=True)
    post_record = {} if rec else None
    boxes, scores, labels = _postprocess_detections(
        class_logits, box_regression, proposals, sizes, score_thresh=config.box_score_thresh,
        nms_thresh=config.box_nms_thresh, detections_per_img=config.box_detections_per_img,
        bbox_reg_weights=config.bbox_reg_weights, record=post_record)
    mask_logits, _, _ = _mask_branch(params, roi_feats, scales, boxes, config, infer=True)
    probs = _maskrcnn_inference(mask_logits, labels)
    if rec:
        record.update(pyramid=pyramid, objectness=objectness, rpn_deltas=deltas, anchors=anchors,
                      rpn=rpn_record, proposals=proposals, proposal_scores=proposal_scores,
                      class_logits=class_logits, box_regression=box_regression,
                      postprocess=post_record, mask_logits=mask_logits, **box_record)
    return [{"boxes": boxes[i], "labels": labels[i], "scores": scores[i], "masks": probs[i][:, None]}
            for i in range(images.shape[0])]


@quiet_math
def detect(params, images, config):
    """Detect objects in raw images: transform, :func:`predict`, map back (torchvision's
    ``MaskRCNN(images)`` in eval mode).

    params: flat dict; images: list of N (3, H_i, W_i) float images in [0, 1]
    (any sizes; resized, normalised and batched by ``transform.transform_forward``
    with the config's min_size, max_size, image_mean, image_std, size_divisible).
    Returns a list of N dicts in ORIGINAL image pixels: "boxes" (E_i, 4), "labels"
    (E_i,) int64, "scores" (E_i,) sorted decreasing, "masks" (E_i, 1, H_i, W_i) soft
    probabilities pasted into the image (``> 0.5`` gives the binary masks). Boxes are
    mapped back with float32 ratios, as torchvision does, so an edge clipped to the
    resized image can exceed the original by a float32 rounding (~1e-7 relative).
    ``mrcnn_np.trace.trace`` runs the same code and keeps every intermediate.
    """
    return _detect(params, images, config)


def _detect(params, images, config, record=None):
    """:func:`detect`, optionally filling ``record`` (see :func:`_predict`) with, in
    addition, "batch" (N, 3, Hp, Wp), "image_sizes" (resized (h, w) per image),
    "original_sizes" and "predictions" (:func:`predict`'s output)."""
    config = _check_config(config)
    if not isinstance(images, (list, tuple)):
        raise TypeError(f"images must be a list of (3, H, W) arrays, got {type(images).__name__}")
    if not images:
        raise ValueError("images must hold at least one image, got an empty list")
    batch, image_sizes, _ = transform_forward(
        list(images), None, min_size=config.min_size, max_size=config.max_size,
        mean=config.image_mean, std=config.image_std, size_divisible=config.size_divisible)
    batch = _check_images(batch)
    _check_params(params, config, batch.dtype)
    preds = _check_finite_detections(_predict(params, batch, config, image_sizes, record))
    original_sizes = [tuple(np.shape(im)[-2:]) for im in images]
    if record is not None:
        record.update(batch=batch, image_sizes=image_sizes, original_sizes=original_sizes, predictions=preds)
    return postprocess(preds, image_sizes, original_sizes)
