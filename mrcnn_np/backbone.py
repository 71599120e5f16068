"""ResNet backbone with bottleneck blocks and frozen batch norm (chapter 02).

The convolutional base of Mask R-CNN, built the way torchvision builds
``resnet50`` for ``maskrcnn_resnet50_fpn`` (ResNet "v1.5"):

- stem: 7x7 stride-2 conv (no bias, padding 3) -> frozen BN -> ReLU ->
  3x3 stride-2 max-pool (padding 1);
- ``layer1`` .. ``layer4``: bottleneck blocks; stage s (1..4) has
  ``planes = width * 2**(s-1)`` inner channels and ``4 * planes`` output
  channels; its first block has stride 1 (layer1) or 2 (layers 2-4) and a
  projection shortcut ``downsample`` (1x1 conv with that stride + frozen BN);
- a bottleneck block::

      out = relu(bn1(conv1_1x1(x)))
      out = relu(bn2(conv2_3x3(out, stride)))        # the stride is HERE (v1.5)
      out = bn3(conv3_1x1(out))
      out = relu(out + (bn_d(conv_d_1x1(x, stride)) if first block else x))

- outputs C2, C3, C4, C5 = the outputs of layer1..layer4, at strides 4, 8, 16,
  32 of the input. ResNet-50 has (3, 4, 6, 3) blocks, ResNet-101
  (3, 4, 23, 3); the block counts and the width are read from the parameter
  dict, so every depth and the tiny test/notebook variants share this code.

Shape shorthand: N images, 3 colour channels, H x W input; C_s channels and
H_s x W_s spatial size at level s, ``C_s = 4 * width * 2**(s-2)`` and
``H_s = ceil(H / 2**s)`` for any H (each stride-2 step -- the 7x7 conv with
padding 3, the 3x3 max-pool and 3x3 convs with padding 1, the 1x1 shortcut --
maps n to ``(n - 1) // 2 + 1 = ceil(n / 2)``, and ceil halvings compose).

Parameters: one flat dict with torchvision's ``state_dict`` names, so that a
torchvision ResNet-FPN backbone loads with no mapping table::

    backbone.body.conv1.weight                      (width, 3, 7, 7)
    backbone.body.bn1.{weight,bias,running_mean,running_var}   (width,)
    backbone.body.layer{s}.{b}.conv{1,2,3}.weight
    backbone.body.layer{s}.{b}.bn{1,2,3}.{weight,bias,running_mean,running_var}
    backbone.body.layer{s}.0.downsample.0.weight    (4 planes, in, 1, 1)
    backbone.body.layer{s}.0.downsample.1.{weight,bias,running_mean,running_var}

Keys outside ``backbone.body.`` are ignored, so the whole model's dict can be
passed in.

Frozen BN is a fixed per-channel affine map, so by default it is folded into
the convolution before it (``resnet_forward(..., fold_bn=True)``): one conv
with weight ``w * scale`` and bias ``shift`` replaces conv + BN, the same
function with one pass over the activations fewer; ``fold_bn=False`` runs the
two ops one after the other (``ops.norm.frozen_batch_norm_forward``), as the
notebook shows them. Both give the same numbers up to rounding (tested). The
bound: with K = C*KH*KW, u = 2**-24 (float32; 2**-53 float64) and
gamma_n = n u / (1 - n u), each output of either path is within
``gamma_(K+2) * |scale| * sum_k |w_k x_k| + u |y|`` of the exact value (the
folded weight ``w * scale`` or the product by ``scale`` adds one rounding to
the K of the dot product, the shift one more), so the two differ by at most
twice that per conv; through a whole ResNet-50 at 224 x 224 with random
weights and statistics, float32, the folded and unfolded C2..C5 differ by at
most 1.9e-6 of their largest value (each is within 1.4e-6 of float64). Folding
is used in training too (its backward multiplies dL/d(w * scale) by scale);
``fold_bn=False`` keeps the step-by-step path for teaching.

Which parameters get gradients (a decision, documented here):

- Frozen BN: ``FrozenBatchNorm2d`` in the reference holds weight, bias,
  running_mean and running_var as *buffers*, so none of the four is trained.
  ``resnet_backward`` returns gradients for the convolution weights only.
- ``trainable_layers``: torchvision's ``maskrcnn_resnet50_fpn`` trains only
  ``layer2``..``layer4`` (``trainable_backbone_layers=3``); ``conv1`` and
  ``layer1`` stay at their ImageNet values. ``resnet_backward(...,
  trainable_layers=k)`` returns the weight gradients of the last k of
  (conv1, layer1, layer2, layer3, layer4) and stops the backward pass as early
  as it can. The default 5 is the full mathematical gradient (used by the
  gradient checks); pass ``REFERENCE_TRAINABLE_LAYERS`` (3) to train as the
  reference does. ``resnet_trainable_keys`` lists the matching keys.
"""
from __future__ import annotations

import numbers
from typing import Any, NamedTuple

import numpy as np

from ._checks import (
    check_array,
    check_bool,
    check_float_dtype,
    check_grad_dict,
    check_params,
    check_positive_int,
    check_rng,
    quiet_math,
)
from .ops.activations import _relu_backward, _relu_forward
from .ops.conv import _conv2d_backward, _conv2d_forward, _conv2d_fused, _conv2d_relu_forward, conv_output_size
from .ops.norm import frozen_batch_norm_backward, frozen_batch_norm_forward
from .ops.pool import _max_pool2d, _max_pool2d_backward, _max_pool2d_forward

__all__ = [
    "RESNET_BLOCKS",
    "EXPANSION",
    "STAGE_NAMES",
    "FEATURE_NAMES",
    "REFERENCE_TRAINABLE_LAYERS",
    "BN_EPS",
    "ResNetStructure",
    "ConvBNCache",
    "BottleneckCache",
    "ResNetCache",
    "init_resnet",
    "resnet_structure",
    "resnet_expected_shapes",
    "check_resnet_params",
    "resnet_feature_shapes",
    "resnet_conv_specs",
    "resnet_receptive_fields",
    "resnet_forward",
    "resnet_backward",
    "resnet_trainable_keys",
    "bottleneck_forward",
    "bottleneck_backward",
]

PREFIX = "backbone.body."
#: block counts of the bottleneck ResNets (torchvision's resnet50/101/152)
RESNET_BLOCKS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}
#: bottleneck expansion: a stage outputs 4 x its inner width
EXPANSION = 4
#: the five groups torchvision's ``trainable_layers`` counts from the top
STAGE_NAMES = ("conv1", "layer1", "layer2", "layer3", "layer4")
#: output names, outputs of layer1..layer4
FEATURE_NAMES = ("C2", "C3", "C4", "C5")
#: torchvision maskrcnn_resnet50_fpn's default trainable_backbone_layers
REFERENCE_TRAINABLE_LAYERS = 3
#: FrozenBatchNorm2d's eps
BN_EPS = 1e-5
_BN_FIELDS = ("weight", "bias", "running_mean", "running_var")


class ResNetStructure(NamedTuple):
    """width: stem channels (64 for ResNet-50); layers: blocks per stage (4 ints)."""

    width: int
    layers: tuple


class ConvSpec(NamedTuple):
    """One convolution of the network, with the BN that follows it.

    conv: weight key; bn: key prefix of its frozen BN (``<bn>.weight`` ...);
    in_channels, out_channels, kernel, stride, padding: ints.
    """

    conv: str
    bn: str
    in_channels: int
    out_channels: int
    kernel: int
    stride: int
    padding: int


class ConvBNCache(NamedTuple):
    """conv + frozen BN.

    spec: ConvSpec; conv: Conv2dCache; bn: FrozenBatchNormCache (unfolded) or
    None; scale: (C_out,) BN scale ``weight / sqrt(var + eps)`` when the BN was
    folded into the conv, else None. Folded, ``conv.w`` is the parameter itself,
    not the folded copy ``w * scale`` the conv ran with: the backward folds it
    again (the same product, the same bits), so the cache holds no second copy
    of the weights.
    """

    spec: ConvSpec
    conv: Any
    bn: Any
    scale: Any


class BottleneckCache(NamedTuple):
    """Caches of one bottleneck block, in forward order.

    conv_bn1, relu1, conv_bn2, relu2, conv_bn3: the main path;
    downsample: ConvBNCache of the projection shortcut, or None (identity);
    relu_out: the ReLU after the residual sum.
    """

    conv_bn1: ConvBNCache
    relu1: Any
    conv_bn2: ConvBNCache
    relu2: Any
    conv_bn3: ConvBNCache
    downsample: Any
    relu_out: Any


class ResNetCache(NamedTuple):
    """Cache of ``resnet_forward``.

    structure: ResNetStructure; stem: ConvBNCache; stem_relu, pool: op caches
        (all three None when conv1 ran frozen, ``_resnet_forward(frozen=...)``);
    stages: list of 4 lists of BottleneckCache (layer1..layer4; lists, so that a
        consuming backward can drop each block's cache once it has used it; None
        for a stage that ran frozen);
    input_shape: (N, 3, H, W); feature_shapes: {"C2": shape, ...}; dtype.
    """

    structure: ResNetStructure
    stem: ConvBNCache
    stem_relu: Any
    pool: Any
    stages: tuple
    input_shape: tuple
    feature_shapes: dict
    dtype: np.dtype


# --------------------------------------------------------------------------- structure


def _block_specs(stage, block, in_channels, planes, stride):
    """ConvSpecs (conv1, conv2, conv3, downsample or None) of one bottleneck block."""
    p = f"{PREFIX}layer{stage}.{block}."
    out = planes * EXPANSION
    c1 = ConvSpec(p + "conv1.weight", p + "bn1", in_channels, planes, 1, 1, 0)
    c2 = ConvSpec(p + "conv2.weight", p + "bn2", planes, planes, 3, stride, 1)
    c3 = ConvSpec(p + "conv3.weight", p + "bn3", planes, out, 1, 1, 0)
    down = None
    if block == 0:
        down = ConvSpec(p + "downsample.0.weight", p + "downsample.1", in_channels, out, 1, stride, 0)
    return c1, c2, c3, down


def resnet_conv_specs(structure):
    """Every convolution of a ResNet with its frozen BN, grouped as the forward runs.

    structure: ResNetStructure (or a (width, layers) pair).
    Returns (stem ConvSpec, [stage][block] -> (conv1, conv2, conv3, downsample|None)).
    Stage s uses ``planes = width * 2**(s-1)``; the first block of each stage
    has the stage's stride (1 for layer1, else 2) on conv2 and on downsample.
    """
    width, layers = _check_structure(structure)
    stem = ConvSpec(PREFIX + "conv1.weight", PREFIX + "bn1", 3, width, 7, 2, 3)
    stages = []
    in_ch = width
    for s, n_blocks in enumerate(layers, start=1):
        planes = width * 2 ** (s - 1)
        blocks = []
        for b in range(n_blocks):
            stride = (1 if s == 1 else 2) if b == 0 else 1
            blocks.append(_block_specs(s, b, in_ch, planes, stride))
            in_ch = planes * EXPANSION
        stages.append(blocks)
    return stem, stages


def _check_structure(structure):
    """A ResNetStructure, or a (width, layers) pair checked and made one."""
    if isinstance(structure, ResNetStructure):
        return structure
    if not isinstance(structure, (tuple, list)) or len(structure) != 2:
        raise TypeError(f"structure must be a ResNetStructure or a (width, layers) pair, got {structure!r}")
    width, layers = structure
    if not isinstance(layers, (tuple, list)) or len(layers) != 4:
        raise ValueError(f"structure must be (width, 4 block counts), got {structure!r}")
    return ResNetStructure(check_positive_int("structure width", width),
                           tuple(check_positive_int("structure block counts", n) for n in layers))


def _all_specs(structure):
    stem, stages = resnet_conv_specs(structure)
    yield 0, stem
    for s, blocks in enumerate(stages, start=1):
        for specs in blocks:
            for spec in specs:
                if spec is not None:
                    yield s, spec


def resnet_expected_shapes(structure):
    """{key: shape} of every parameter a ResNet of this structure must have.

    structure: ResNetStructure or (width, layers).
    """
    shapes = {}
    for _, spec in _all_specs(structure):
        shapes[spec.conv] = (spec.out_channels, spec.in_channels, spec.kernel, spec.kernel)
        for f in _BN_FIELDS:
            shapes[f"{spec.bn}.{f}"] = (spec.out_channels,)
    return shapes


def _normalize_layers(layers):
    if isinstance(layers, numbers.Integral) and not isinstance(layers, bool):
        if int(layers) not in RESNET_BLOCKS:
            raise ValueError(
                f"depth must be one of {sorted(RESNET_BLOCKS)} (bottleneck ResNets), got {layers}"
            )
        return RESNET_BLOCKS[int(layers)]
    if not isinstance(layers, (tuple, list)) or len(layers) != 4:
        raise ValueError(f"layers must be a depth (50, 101, 152) or 4 block counts, got {layers!r}")
    return tuple(check_positive_int("layers", n) for n in layers)


def resnet_structure(params):
    """Read (width, block counts) from a parameter dict.

    params: dict with the ``backbone.body.*`` keys (other keys ignored).
    width is ``backbone.body.conv1.weight.shape[0]``; the blocks of stage s are
    counted as long as ``backbone.body.layer{s}.{b}.conv1.weight`` exists.
    Returns ResNetStructure. Raises ValueError naming a missing key.
    """
    if not isinstance(params, dict):
        raise TypeError(f"params must be a dict, got {type(params).__name__}")
    key = PREFIX + "conv1.weight"
    if key not in params:
        raise ValueError(f"params is missing {key!r}")
    w = params[key]
    if not hasattr(w, "shape") or len(w.shape) != 4:
        raise ValueError(f"params[{key!r}] must have shape (width, 3, 7, 7), got {getattr(w, 'shape', None)}")
    width = int(w.shape[0])
    layers = []
    for s in range(1, 5):
        b = 0
        while f"{PREFIX}layer{s}.{b}.conv1.weight" in params:
            b += 1
        if b == 0:
            raise ValueError(f"params is missing {PREFIX + f'layer{s}.0.conv1.weight'!r}")
        layers.append(b)
    return ResNetStructure(width, tuple(layers))


def check_resnet_params(params, dtype=None):
    """Validate a ResNet parameter dict and return its ResNetStructure.

    Every expected key must be present with its exact shape; no other key may
    start with ``backbone.body.``; with ``dtype`` given, every array must have
    it. Raises ValueError (TypeError for a dtype) naming the key.
    """
    structure = resnet_structure(params)
    expected = resnet_expected_shapes(structure)
    check_params(
        params, expected, dtype=dtype, prefix=PREFIX,
        context=f" for a ResNet of width {structure.width} and blocks {structure.layers}",
    )
    return structure


# --------------------------------------------------------------------------- init


@quiet_math
def init_resnet(layers=None, *, depth=None, width=64, rng, dtype=np.float32):
    """Random ResNet parameters, initialised as torchvision's ResNet.

    layers: a depth (50, 101, 152) or 4 block counts, e.g. (1, 1, 1, 1);
        ``depth=`` is an alias; default ResNet-50.
    width: stem channels (64 in every torchvision ResNet; small values give
        the tiny variants used by tests and notebooks).
    rng: np.random.Generator. dtype: float dtype of every array.
    Returns {key: array} with the shapes of ``resnet_expected_shapes``.

    Convolutions: Kaiming normal, ``mode="fan_out"``, ReLU gain:
    ``std = sqrt(2 / (out_channels * k * k))``. Frozen BN: weight 1, bias 0,
    running_mean 0, running_var 1 (torchvision's ``zero_init_residual`` is
    False by default, so bn3 is not zeroed either). No fc layer: detection
    drops it.
    """
    check_rng(rng)
    if layers is not None and depth is not None:
        raise ValueError(f"give layers or depth, not both (got layers={layers!r}, depth={depth!r})")
    if layers is None:
        layers = 50 if depth is None else depth
    structure = ResNetStructure(check_positive_int("width", width), _normalize_layers(layers))
    dtype = check_float_dtype(dtype)
    params = {}
    for _, spec in _all_specs(structure):
        shape = (spec.out_channels, spec.in_channels, spec.kernel, spec.kernel)
        std = np.sqrt(2.0 / (spec.out_channels * spec.kernel * spec.kernel))
        params[spec.conv] = (rng.standard_normal(shape) * std).astype(dtype)
        params[f"{spec.bn}.weight"] = np.ones(spec.out_channels, dtype)
        params[f"{spec.bn}.bias"] = np.zeros(spec.out_channels, dtype)
        params[f"{spec.bn}.running_mean"] = np.zeros(spec.out_channels, dtype)
        params[f"{spec.bn}.running_var"] = np.ones(spec.out_channels, dtype)
    return params


# --------------------------------------------------------------------------- shapes only


def resnet_feature_shapes(input_shape, *, layers=50, width=64):
    """Shapes of C2..C5 for an input shape, without running a convolution.

    input_shape: (N, 3, H, W). layers: depth or 4 block counts; width: stem width.
    Returns {"C2": (N, C, H2, W2), ..., "C5": ...} following the same specs
    (kernel, stride, padding) as ``resnet_forward``. For ResNet-50 and a
    1024x1024 image: C2 (1, 256, 256, 256), C3 (1, 512, 128, 128),
    C4 (1, 1024, 64, 64), C5 (1, 2048, 32, 32).
    """
    if not isinstance(input_shape, (tuple, list)) or len(input_shape) != 4 or not all(
            isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= 1 for v in input_shape) \
            or input_shape[1] != 3:
        raise ValueError(f"input_shape must be (N, 3, H, W) positive ints, got {input_shape!r}")
    structure = ResNetStructure(check_positive_int("width", width), _normalize_layers(layers))
    stem, stages = resnet_conv_specs(structure)
    n, _, h, w = (int(v) for v in input_shape)

    def conv(hw, spec):
        return tuple(conv_output_size(v, spec.kernel, stride=spec.stride, padding=spec.padding) for v in hw)

    hw = conv((h, w), stem)
    hw = tuple(conv_output_size(v, 3, stride=2, padding=1) for v in hw)  # max-pool
    shapes = {}
    for name, blocks in zip(FEATURE_NAMES, stages):
        for c1, c2, c3, _ in blocks:
            hw = conv(conv(conv(hw, c1), c2), c3)
        shapes[name] = (n, blocks[-1][2].out_channels) + hw
    return shapes


def resnet_receptive_fields(*, layers=50):
    """Stride and receptive field (pixels, along the 3x3 path) after each stage.

    layers: depth or 4 block counts (the width does not matter).
    Returns {"conv1": (stride, rf), "maxpool": ..., "C2": ..., ..., "C5": ...}.
    One layer with kernel k and stride s maps (jump j, field r) to
    ``(j * s, r + (k - 1) * j)``: each new tap reaches j input pixels further.
    The 1x1 convs add nothing; each block's 3x3 adds 2 j. ResNet-50:
    C2 (4, 35), C3 (8, 91), C4 (16, 267), C5 (32, 427).
    """
    structure = ResNetStructure(1, _normalize_layers(layers))
    stem, stages = resnet_conv_specs(structure)
    jump, rf = 1, 1
    out = {}

    def step(k, s):
        nonlocal jump, rf
        rf += (k - 1) * jump
        jump *= s

    step(stem.kernel, stem.stride)
    out["conv1"] = (jump, rf)
    step(3, 2)
    out["maxpool"] = (jump, rf)
    for name, blocks in zip(FEATURE_NAMES, stages):
        for c1, c2, c3, _ in blocks:
            for c in (c1, c2, c3):
                step(c.kernel, c.stride)
        out[name] = (jump, rf)
    return out


# --------------------------------------------------------------------------- forward / backward pieces


def _conv_bn_forward(params, spec, x, fold_bn):
    """conv + frozen BN: (out, ConvBNCache). fold_bn: the BN folded into the conv's weight
    and bias (:func:`_fold_bn`), else the conv, then ``frozen_batch_norm_forward``."""
    w = params[spec.conv]
    bn = [params[f"{spec.bn}.{f}"] for f in _BN_FIELDS]
    if not fold_bn:
        out, conv_cache = _conv2d_forward(x, w, None, spec.stride, spec.padding)
        out, bn_cache = frozen_batch_norm_forward(out, *bn, eps=BN_EPS)
        return out, ConvBNCache(spec, conv_cache, bn_cache, None)
    w_folded, shift, scale = _fold_bn(params, spec, x.dtype)
    out, conv_cache = _conv2d_forward(x, w_folded, shift, spec.stride, spec.padding)
    return out, ConvBNCache(spec, conv_cache._replace(w=params[spec.conv]), None, scale)


def _conv_bn_relu_forward(params, spec, x, fold_bn, *, residual=None):
    """``relu(bn(conv(x)) + residual)``: (out, ConvBNCache, ReluCache), bit for bit
    :func:`_conv_bn_forward`, ``+= residual`` and ``_relu_forward`` in turn. Folded, the
    bias, residual and ReLU are applied as the conv's GEMMs finish
    (``ops.conv._conv2d_relu_forward``)."""
    if not fold_bn:
        out, cache = _conv_bn_forward(params, spec, x, fold_bn)
        if residual is not None:
            out += residual  # ``out`` is a fresh array
        out, relu_cache = _relu_forward(out)
        return out, cache, relu_cache
    w_folded, shift, scale = _fold_bn(params, spec, x.dtype)
    out, conv_cache, relu_cache = _conv2d_relu_forward(x, w_folded, shift, spec.stride, spec.padding,
                                                       residual=residual)
    return out, ConvBNCache(spec, conv_cache._replace(w=params[spec.conv]), None, scale), relu_cache


def _fold_bn(params, spec, dtype):
    """The conv of ``spec`` with its frozen BN folded in: (weight * scale, shift, scale).

    conv(x, w) * scale + shift == conv(x, w * scale) + shift, with
    ``scale = weight / sqrt(var + eps)`` and ``shift = bias - mean * scale``.
    """
    w = params[spec.conv]
    weight, bias, mean, var = (params[f"{spec.bn}.{f}"] for f in _BN_FIELDS)
    denom = var + np.dtype(dtype).type(BN_EPS)
    if np.any(~(denom > 0)):
        raise ValueError(f"params[{spec.bn + '.running_var'!r}] + eps must be > 0, got min {denom.min()}")
    scale = weight / np.sqrt(denom)
    shift = bias - mean * scale
    return w * scale[:, None, None, None], shift, scale


def _conv_bn_infer(params, spec, x, *, residual=None, relu=False, reuse=True):
    """conv + frozen BN (folded) for inference, no cache: the output of :func:`_conv_bn_forward`,
    plus ``residual`` when given, then the ReLU when ``relu``, bit for bit as those steps in
    turn (``ops.conv._conv2d_fused`` applies them block by block as the GEMMs finish; reuse:
    its output on memory reused from dead arrays, see there)."""
    w_folded, shift, _ = _fold_bn(params, spec, x.dtype)
    return _conv2d_fused(x, w_folded, shift, spec.stride, spec.padding, residual=residual, relu=relu,
                         reuse=reuse)


def _conv_bn_backward(dout, cache, grads, *, need_dx=True, need_dw=True):
    if cache.scale is None:
        d = frozen_batch_norm_backward(dout, cache.bn)
        dx, dw, _ = _conv2d_backward(d, cache.conv, need_dx=need_dx)
    else:
        # the folded conv's weight is w * scale (folded again here, as _fold_bn did),
        # so dL/dw = dL/d(w*scale) * scale
        conv = cache.conv._replace(w=cache.conv.w * cache.scale[:, None, None, None])
        dx, dw, _ = _conv2d_backward(dout, conv, need_dx=need_dx)
        dw = dw * cache.scale[:, None, None, None]
    if need_dw:
        grads[cache.spec.conv] = dw
    return dx if need_dx else None


@quiet_math
def bottleneck_forward(params, specs, x, *, fold_bn=True):
    """One bottleneck block.

    params: parameter dict; specs: (conv1, conv2, conv3, downsample|None)
    ConvSpecs from ``resnet_conv_specs``; x: (N, C_in, H, W);
    fold_bn: see ``resnet_forward``.
    Returns (out (N, 4*planes, H', W'), BottleneckCache), H' = H / stride.
    """
    if not (isinstance(specs, (tuple, list)) and len(specs) == 4
            and all(isinstance(s, ConvSpec) for s in specs[:3]) and isinstance(specs[3], (ConvSpec, type(None)))):
        raise TypeError("specs must be (conv1, conv2, conv3, downsample or None) ConvSpecs from resnet_conv_specs")
    check_array("x", x, shape=("N", specs[0].in_channels, "H", "W"), dtype_kind="f")
    if min(x.shape) == 0:
        raise ValueError(f"x must have no empty dimension, got {x.shape}")
    expected = {}
    for spec in specs:
        if spec is not None:
            expected[spec.conv] = (spec.out_channels, spec.in_channels, spec.kernel, spec.kernel)
            expected.update({f"{spec.bn}.{f}": (spec.out_channels,) for f in _BN_FIELDS})
    check_params(params, expected, dtype=x.dtype)
    return _bottleneck_forward(params, specs, x, check_bool("fold_bn", fold_bn))


def _bottleneck_forward(params, specs, x, fold_bn=True):
    """:func:`bottleneck_forward` without the checks (``resnet_forward`` checked once)."""
    s1, s2, s3, sd = specs
    out, cb1, r1 = _conv_bn_relu_forward(params, s1, x, fold_bn)
    out, cb2, r2 = _conv_bn_relu_forward(params, s2, out, fold_bn)
    if sd is not None:
        identity, cbd = _conv_bn_forward(params, sd, x, fold_bn)
    else:
        identity, cbd = x, None
    out, cb3, r3 = _conv_bn_relu_forward(params, s3, out, fold_bn, residual=identity)  # relu(bn3(conv3) + identity)
    return out, BottleneckCache(cb1, r1, cb2, r2, cb3, cbd, r3)


@quiet_math
def bottleneck_backward(dout, cache, *, need_dx=True, need_dw=True):
    """Backward of ``bottleneck_forward``.

    dout: (N, 4*planes, H', W'); cache: BottleneckCache.
    Returns (grads, dx): grads {conv weight key: array} of the block's three or
    four convs ({} without ``need_dw``); dx (N, C_in, H, W), the main path plus
    the shortcut, or None without ``need_dx``.
    """
    if not isinstance(cache, BottleneckCache):
        raise TypeError(f"cache must be a BottleneckCache, got {type(cache).__name__}")
    check_array("dout", dout, shape=cache.relu_out.positive.shape, dtype_kind="f")
    if dout.dtype != cache.relu_out.dtype:
        raise TypeError(f"dout must have the dtype of the forward pass ({cache.relu_out.dtype}), got {dout.dtype}")
    grads = {}
    dx = _bottleneck_backward(dout, cache, grads, need_dx=check_bool("need_dx", need_dx),
                              need_dw=check_bool("need_dw", need_dw))
    return grads, dx


def _bottleneck_backward(dout, cache, grads, *, need_dx=True, need_dw=True):
    """:func:`bottleneck_backward` without the checks (``resnet_backward`` checked once);
    writes the weight gradients into ``grads`` (private: accumulates in place) and
    returns dx (None without need_dx)."""
    d = _relu_backward(dout, cache.relu_out)
    # the residual sum forks the gradient: same d to the main path and the shortcut
    dm = _conv_bn_backward(d, cache.conv_bn3, grads, need_dw=need_dw)
    dm = _relu_backward(dm, cache.relu2)
    dm = _conv_bn_backward(dm, cache.conv_bn2, grads, need_dw=need_dw)
    dm = _relu_backward(dm, cache.relu1)
    dm = _conv_bn_backward(dm, cache.conv_bn1, grads, need_dx=need_dx, need_dw=need_dw)
    if cache.downsample is not None:
        ds = _conv_bn_backward(d, cache.downsample, grads, need_dx=need_dx, need_dw=need_dw)
    else:
        ds = d
    if not need_dx:
        return None
    dm += ds
    return dm


def _zero_grads(stage_specs, dtype, grads):
    """Zero weight gradients for every conv of one stage (no gradient reached it)."""
    for specs in stage_specs:
        for spec in specs:
            if spec is not None:
                grads[spec.conv] = np.zeros(
                    (spec.out_channels, spec.in_channels, spec.kernel, spec.kernel), dtype
                )


# --------------------------------------------------------------------------- public forward / backward


@quiet_math
def resnet_forward(params, x, *, fold_bn=True):
    """ResNet body forward (torchvision's ``IntermediateLayerGetter`` over a ResNet).

    params: dict with the ``backbone.body.*`` keys (validated: missing, extra or
        mis-shaped keys raise ValueError naming the key; dtype must be x's).
    x: (N, 3, H, W) floating (normalised image batch).
    fold_bn: compute each conv + frozen BN as ONE conv with weight
        ``w * scale`` and bias ``shift`` (``scale = weight / sqrt(var + eps)``,
        ``shift = bias - mean * scale``): the same function, one pass over
        the activations fewer, forward and backward. False runs
        ``frozen_batch_norm_forward`` after a bias-free conv, step by step.
        Both give the same numbers up to rounding.
    Returns (features, cache): features {"C2": (N, 4w, H/4, W/4),
    "C3": (N, 8w, H/8, W/8), "C4": (N, 16w, H/16, W/16), "C5": (N, 32w, H/32, W/32)}
    (w = width, sizes rounded up for H, W not multiples of 32), and a ResNetCache.
    """
    x = check_array("x", x, shape=("N", 3, "H", "W"), dtype_kind="f")
    if min(x.shape) == 0:
        raise ValueError(f"x must have no empty dimension, got {x.shape}")
    structure = check_resnet_params(params, dtype=x.dtype)
    return _resnet_forward(params, x, structure, check_bool("fold_bn", fold_bn))


def _resnet_forward(params, x, structure, fold_bn=True, frozen=0):
    """:func:`resnet_forward` without the checks: params already validated
    (``check_resnet_params``, which returned ``structure``).

    frozen: the groups below this one (0 = conv1, 1..4 = layer1..layer4) run their
    inference path (``_resnet_infer``'s, the same bits) and keep no cache: their
    fields of the ResNetCache are None (``stem``, ``stem_relu``, ``pool`` for
    conv1, ``stages[s - 1]`` for layer s). For a backward that never walks them
    (``model``: below ``trainable_layers``, no input gradient), as torch keeps
    nothing for a frozen layer. Only with ``fold_bn`` (the inference path folds).
    """
    stem_spec, stage_specs = resnet_conv_specs(structure)
    frozen = frozen if fold_bn else 0
    if frozen > 0:
        # (fresh memory, reuse=False: these arrays live in the step, see ops.conv._conv2d_fused)
        out = _max_pool2d(_conv_bn_infer(params, stem_spec, x, relu=True, reuse=False), (3, 3), (2, 2), (1, 1),
                          reuse=False)
        stem = stem_relu = pool = None
    else:
        out, stem, stem_relu = _conv_bn_relu_forward(params, stem_spec, x, fold_bn)
        out, pool = _max_pool2d_forward(out, (3, 3), (2, 2), (1, 1))
    features = {}
    stages = []
    for s, (name, blocks) in enumerate(zip(FEATURE_NAMES, stage_specs), start=1):
        if s < frozen:
            for specs in blocks:
                out = _bottleneck_infer(params, specs, out, reuse=False)
            stages.append(None)
        else:
            caches = []
            for specs in blocks:
                out, c = _bottleneck_forward(params, specs, out, fold_bn)
                caches.append(c)
            stages.append(caches)
        features[name] = out
    shapes = {k: v.shape for k, v in features.items()}
    cache = ResNetCache(structure, stem, stem_relu, pool, stages, x.shape, shapes, x.dtype)
    return features, cache


def _bottleneck_infer(params, specs, x, reuse=True):
    """One bottleneck block for inference: :func:`_bottleneck_forward`'s output, bit for bit,
    no cache (bias, residual sum and ReLU applied by each conv to its own output)."""
    s1, s2, s3, sd = specs
    y = _conv_bn_infer(params, s1, x, relu=True, reuse=reuse)
    y = _conv_bn_infer(params, s2, y, relu=True, reuse=reuse)
    identity = _conv_bn_infer(params, sd, x, reuse=reuse) if sd is not None else x
    return _conv_bn_infer(params, s3, y, residual=identity, relu=True, reuse=reuse)  # relu(bn3(conv3(y)) + identity)


def _resnet_infer(params, x, structure):
    """:func:`resnet_forward` for inference (no checks): the same features, bit for bit,
    but no caches are kept, so each activation is freed once the next is computed (and its
    memory reused: ``kernels.arena``), the ReLUs run in place and the max-pool finds no
    winners. Returns the features dict."""
    stem_spec, stage_specs = resnet_conv_specs(structure)
    out = _conv_bn_infer(params, stem_spec, x, relu=True)
    out = _max_pool2d(out, (3, 3), (2, 2), (1, 1))
    features = {}
    for name, blocks in zip(FEATURE_NAMES, stage_specs):
        for specs in blocks:
            out = _bottleneck_infer(params, specs, out)
        features[name] = out
    return features


def _check_trainable_layers(trainable_layers):
    if isinstance(trainable_layers, bool) or not isinstance(trainable_layers, numbers.Integral):
        raise TypeError(f"trainable_layers must be an int, got {type(trainable_layers).__name__}")
    if not 0 <= trainable_layers <= 5:
        raise ValueError(f"trainable_layers must be in [0, 5], got {trainable_layers}")
    return int(trainable_layers)


@quiet_math
def resnet_backward(dfeatures, cache, *, trainable_layers=5, return_input_grad=False):
    """Backward of ``resnet_forward``.

    dfeatures: dict with any of "C2".."C5" (a missing level counts as zero),
        each shaped like the forward's feature, in its dtype.
    cache: ResNetCache.
    trainable_layers: 0..5, as torchvision's ``trainable_backbone_layers``:
        gradients are returned for the conv weights of the last k groups of
        (conv1, layer1, layer2, layer3, layer4). 5 (default) = every conv;
        3 = the reference (``REFERENCE_TRAINABLE_LAYERS``). The walk stops
        below the lowest trainable group unless the input gradient is wanted.
    return_input_grad: also compute dx (N, 3, H, W) (the walk then goes down
        to the stem whatever ``trainable_layers`` is).
    Returns (grads, dx): grads {conv weight key: array shaped like the weight};
    dx with return_input_grad, else None. Frozen BN parameters and statistics
    never get a gradient (they are buffers in the reference).
    """
    if not isinstance(cache, ResNetCache):
        raise TypeError(f"cache must be a ResNetCache, got {type(cache).__name__}")
    check_grad_dict("dfeatures", dfeatures, cache.feature_shapes, cache.dtype)
    trainable_layers = _check_trainable_layers(trainable_layers)
    return _resnet_backward(dfeatures, cache, trainable_layers, check_bool("return_input_grad", return_input_grad))


def _resnet_backward(dfeatures, cache, trainable_layers=5, return_input_grad=False, release=False):
    """:func:`resnet_backward` without the checks (for ``model``).

    release: the cache is consumed (``model.loss_and_grads``, whose cache no one
    else sees): each block's cache is dropped from ``cache.stages`` once its
    backward has run, so the walk's memory shrinks as it goes down."""
    # group index: 0 = conv1 (stem), 1..4 = layer1..layer4
    lowest_trained = 5 - trainable_layers
    lowest_visited = 0 if return_input_grad else lowest_trained
    _, stage_specs = resnet_conv_specs(cache.structure)
    grads = {}
    d = None
    for s in range(4, 0, -1):
        if s < lowest_visited:
            break
        name = FEATURE_NAMES[s - 1]
        if name in dfeatures:
            df = dfeatures.pop(name) if release else dfeatures[name]  # (model's own dict)
            d = df if d is None else d + df
            del df
        train = s >= lowest_trained
        if d is None:  # nothing flows here: zero gradients, nothing below either
            if train:
                _zero_grads(stage_specs[s - 1], cache.dtype, grads)
            continue
        blocks = cache.stages[s - 1]
        for b in range(len(blocks) - 1, -1, -1):
            need_dx = b > 0 or s > lowest_visited
            d = _bottleneck_backward(d, blocks[b], grads, need_dx=need_dx, need_dw=train)
            if release:
                blocks[b] = None
    if lowest_visited == 0:
        if d is None:
            if lowest_trained == 0:
                grads[cache.stem.spec.conv] = np.zeros(
                    cache.stem.conv.w.shape, cache.dtype
                )
            dx = np.zeros(cache.input_shape, cache.dtype) if return_input_grad else None
        else:
            d = _max_pool2d_backward(d, cache.pool)
            d = _relu_backward(d, cache.stem_relu)
            dx = _conv_bn_backward(d, cache.stem, grads, need_dx=return_input_grad,
                                   need_dw=lowest_trained == 0)
    else:
        dx = None
    # report in the forward's key order
    ordered = {}
    for _, spec in _all_specs(cache.structure):
        if spec.conv in grads:
            ordered[spec.conv] = grads[spec.conv]
    return ordered, dx


def resnet_trainable_keys(params, *, trainable_layers):
    """Keys of the conv weights that ``resnet_backward`` returns for this ``trainable_layers``.

    params: ResNet parameter dict (its structure is read from it).
    trainable_layers: 0..5 (no default, on purpose: pass
        ``REFERENCE_TRAINABLE_LAYERS`` (3) for torchvision's Mask R-CNN, 5 for all).
    Returns a list of keys, forward order. With 3 it is every conv of
    layer2..layer4.
    """
    trainable_layers = _check_trainable_layers(trainable_layers)
    structure = resnet_structure(params)
    lowest = 5 - trainable_layers
    return [spec.conv for group, spec in _all_specs(structure) if group >= lowest]
