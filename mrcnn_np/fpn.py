"""Feature pyramid network: lateral 1x1, top-down nearest upsample + add, 3x3 output convs (chapter 03).

torchvision's ``FeaturePyramidNetwork`` with the ``LastLevelMaxPool`` extra
block, as used by ``maskrcnn_resnet50_fpn``. With L input levels C2..C{L+1}
(L = 4 for a ResNet: C2..C5) and D output channels (256)::

    M{L+1} = inner_{L-1}(C{L+1})                              lateral 1x1 conv
    M{k}   = inner_{k-2}(C{k}) + upsample_nearest(M{k+1}, size of C{k})   k = L..2
    P{k}   = layer_{k-2}(M{k})                                3x3 conv, padding 1
    P{L+2} = max_pool2d(P{L+1}, kernel_size=1, stride=2)      (P6: every other cell of P5)

``upsample_nearest`` takes the source cell ``floor(dst * in / out)`` (torch's
``mode="nearest"``), so odd sizes work: a 13x13 map onto 25x25 copies
rows 0..11 twice and row 12 once. P6 feeds only the RPN.

Shape shorthand: N images; C_k channels of input level k; D output channels;
H_k x W_k spatial size of level k (P_k has the size of C_k; P6 has
``ceil(H_5 / 2) x ceil(W_5 / 2)``).

Parameters (torchvision ``state_dict`` names, i = 0..L-1 for C2..C{L+1})::

    backbone.fpn.inner_blocks.{i}.0.weight  (D, C_{i+2}, 1, 1)   .bias (D,)
    backbone.fpn.layer_blocks.{i}.0.weight  (D, D, 3, 3)         .bias (D,)

Keys outside ``backbone.fpn.`` are ignored. Every FPN parameter is trained.

``init_resnet_fpn_backbone``, ``backbone_forward`` and ``backbone_backward``
chain the ResNet body (``mrcnn_np.backbone``) and the FPN: image in, pyramid
out, as torchvision's ``BackboneWithFPN``.

The pyramid is a LIST in level order, ``pyramid[l]`` = P{l+2}: [P2, P3, P4, P5, P6]
for a ResNet. It keeps that one type from here to RoIAlign (the RPN head reads
all five, ``multiscale_roi_align`` the first four) and back: ``dpyramid`` is a
list of the same length (see ``mrcnn_np.model``, "Handoff conventions").
:data:`PYRAMID_LEVELS` names the entries where a name is needed (figures,
traces); torchvision's ``OrderedDict`` keys for them are "0", "1", "2", "3", "pool".
The body's outputs stay a dict {"C2": .., "C5": ..}, keyed like torchvision's
``IntermediateLayerGetter`` (see ``mrcnn_np.backbone``).
"""
from __future__ import annotations

import re
from typing import Any, NamedTuple

import numpy as np

from ._checks import (
    check_array,
    check_bool,
    check_float_dtype,
    check_grad_list,
    check_params,
    check_positive_int,
    check_rng,
    quiet_math,
)
from .backbone import (EXPANSION, _check_trainable_layers, _resnet_backward, _resnet_forward, _resnet_infer,
                       check_resnet_params, init_resnet)
from .ops.conv import _conv2d_backward, _conv2d_forward, _conv2d_fused
from .ops.pool import _max_pool2d, _max_pool2d_backward, _max_pool2d_forward
from .ops.resize import _add_upsampled_nearest, _upsample_nearest_backward, _upsample_nearest_cache

__all__ = [
    "FPNCache",
    "BackboneCache",
    "init_resnet_fpn_backbone",
    "backbone_forward",
    "backbone_backward",
    "init_fpn",
    "fpn_structure",
    "check_fpn_params",
    "fpn_forward",
    "fpn_backward",
    "fpn_level_names",
    "PYRAMID_LEVELS",
]

#: names of the pyramid levels of a ResNet-FPN in list order: ``pyramid[l]`` is
#: ``PYRAMID_LEVELS[l]``; torchvision's keys for them: "0", "1", "2", "3", "pool".
#: The RPN reads all five, the RoI heads the first four (P6 feeds only the RPN).
PYRAMID_LEVELS = ("P2", "P3", "P4", "P5", "P6")

PREFIX = "backbone.fpn."
_BLOCK_KEY = re.compile(r"backbone\.fpn\.(inner|layer)_blocks\.(\d+)\.")


class FPNCache(NamedTuple):
    """Cache of ``fpn_forward``.

    inner: tuple of L Conv2dCache (lateral 1x1, level order C2..);
    upsample: tuple of L-1 resize caches, ``upsample[i]`` took M{i+3} onto
        level i's size (None-free, level order);
    layer: tuple of L Conv2dCache (3x3 output convs);
    pool: MaxPool2dCache of the extra level;
    in_names: the input level names ("C2", .., "C{L+1}");
    out_shapes: the L+1 output shapes, level order (P2, .., P{L+2}); dtype.
    """

    inner: tuple
    upsample: tuple
    layer: tuple
    pool: Any
    in_names: tuple
    out_shapes: tuple
    dtype: np.dtype


def fpn_level_names(num_levels):
    """(("C2", ..), ("P2", .., "P{L+2}")) for L input levels."""
    num_levels = check_positive_int("num_levels", num_levels)
    ins = tuple(f"C{k}" for k in range(2, num_levels + 2))
    outs = tuple(f"P{k}" for k in range(2, num_levels + 3))
    return ins, outs


def _keys(i):
    return (f"{PREFIX}inner_blocks.{i}.0.weight", f"{PREFIX}inner_blocks.{i}.0.bias",
            f"{PREFIX}layer_blocks.{i}.0.weight", f"{PREFIX}layer_blocks.{i}.0.bias")


@quiet_math
def init_fpn(in_channels_list, out_channels=256, *, rng, dtype=np.float32):
    """Random FPN parameters, initialised as torchvision's FeaturePyramidNetwork.

    in_channels_list: channels of C2, C3, ... (e.g. [256, 512, 1024, 2048]).
    out_channels: D, the pyramid width (256).
    rng: np.random.Generator. dtype: float dtype.
    Returns {key: array}: inner 1x1 weights (D, C_i, 1, 1), layer 3x3 weights
    (D, D, 3, 3), biases (D,).

    Weights: ``kaiming_uniform_(a=1)``: U(-b, b) with ``b = sqrt(3 / fan_in)``
    (gain sqrt(2 / (1 + a^2)) = 1), fan_in = C_in * k * k. Biases 0.
    """
    check_rng(rng)
    if not isinstance(in_channels_list, (list, tuple)) or len(in_channels_list) == 0:
        raise ValueError(f"in_channels_list must be a non-empty list of ints, got {in_channels_list!r}")
    ins = [check_positive_int("in_channels_list", c) for c in in_channels_list]
    d = check_positive_int("out_channels", out_channels)
    dtype = check_float_dtype(dtype)

    def uniform(shape):
        bound = np.sqrt(3.0 / (shape[1] * shape[2] * shape[3]))
        return rng.uniform(-bound, bound, size=shape).astype(dtype)

    params = {}
    for i, c in enumerate(ins):
        kw, kb, lw, lb = _keys(i)
        params[kw] = uniform((d, c, 1, 1))
        params[kb] = np.zeros(d, dtype)
        params[lw] = uniform((d, d, 3, 3))
        params[lb] = np.zeros(d, dtype)
    return params


def fpn_structure(params):
    """(in_channels_list, out_channels) read from an FPN parameter dict.

    The number of levels L is one more than the largest block index among the
    ``backbone.fpn.{inner,layer}_blocks.{i}.*`` keys; every
    ``inner_blocks.{i}.0.weight`` for i < L must exist (ValueError naming it).
    """
    if not isinstance(params, dict):
        raise TypeError(f"params must be a dict, got {type(params).__name__}")
    if not all(isinstance(k, str) for k in params):
        raise TypeError(f"params keys must be str, got {[k for k in params if not isinstance(k, str)][:3]}")
    indices = [int(m.group(2)) for k in params if (m := _BLOCK_KEY.match(k))]
    num = max(indices) + 1 if indices else 1
    ins = []
    for i in range(num):
        key = _keys(i)[0]
        if key not in params:
            raise ValueError(f"params is missing {key!r}")
        w = params[key]
        if not hasattr(w, "shape") or len(w.shape) != 4:
            raise ValueError(f"params[{key!r}] must have shape (D, C, 1, 1), got {getattr(w, 'shape', None)}")
        ins.append(int(w.shape[1]))
    return ins, int(params[_keys(0)[0]].shape[0])


def check_fpn_params(params, dtype=None):
    """Validate FPN parameters; return (in_channels_list, out_channels).

    Every key must be present with its shape; no other ``backbone.fpn.`` key
    may exist; with ``dtype``, every array must have it. Errors name the key.
    """
    ins, d = fpn_structure(params)
    expected = {}
    for i, c in enumerate(ins):
        kw, kb, lw, lb = _keys(i)
        expected.update({kw: (d, c, 1, 1), kb: (d,), lw: (d, d, 3, 3), lb: (d,)})
    check_params(params, expected, dtype=dtype, dtype_source="the features'", prefix=PREFIX,
                 context=f" for an FPN with {len(ins)} levels")
    return ins, d


def _check_features(features, ins):
    if not isinstance(features, dict):
        raise TypeError(f"features must be a dict, got {type(features).__name__}")
    in_names, _ = fpn_level_names(len(ins))
    for key in features:
        if key not in in_names:
            raise ValueError(f"features has unexpected key {key!r}; the FPN parameters expect {in_names}")
    n = dtype = None
    for name, c in zip(in_names, ins):
        if name not in features:
            raise ValueError(f"features is missing {name!r}; the FPN parameters expect {in_names}")
        f = check_array(f"features[{name!r}]", features[name], shape=("N", c, "H", "W"), dtype_kind="f")
        if min(f.shape) == 0:
            raise ValueError(f"features[{name!r}] must have no empty dimension, got {f.shape}")
        if n is None:
            n, dtype = f.shape[0], f.dtype
        elif f.shape[0] != n:
            raise ValueError(
                f"features[{name!r}] must have batch size {n} (as {in_names[0]}), got {f.shape[0]}"
            )
        elif f.dtype != dtype:
            raise TypeError(f"features[{name!r}] must have dtype {dtype} (as {in_names[0]}), got {f.dtype}")
    return in_names, dtype


@quiet_math
def fpn_forward(params, features):
    """FPN forward (torchvision ``FeaturePyramidNetwork`` + ``LastLevelMaxPool``).

    params: dict with the ``backbone.fpn.*`` keys (validated by name).
    features: {"C2": (N, C_2, H_2, W_2), ..., "C{L+1}": ...}, one entry per
        inner block, channels as the inner weights say, one dtype.
    Returns (pyramid, cache): pyramid a list of L+1 arrays in level order,
    [P2 (N, D, H_2, W_2), ..., P{L+1} (N, D, H_{L+1}, W_{L+1}),
    P{L+2} (N, D, ceil(H_{L+1}/2), ceil(W_{L+1}/2))], and an FPNCache.
    """
    ins, _ = fpn_structure(params)
    in_names, dtype = _check_features(features, ins)
    check_fpn_params(params, dtype=dtype)
    return _fpn_forward(params, features, in_names)


def _fpn_forward(params, features, in_names):
    """:func:`fpn_forward` without the checks; in_names: ("C2", ..., "C{L+1}")."""
    num = len(in_names)
    dtype = features[in_names[0]].dtype
    inner, layer = [None] * num, [None] * num
    ups = [None] * (num - 1)
    outs = [None] * num
    top = num - 1
    kw, kb, lw, lb = _keys(top)
    last, inner[top] = _conv2d_forward(features[in_names[top]], params[kw], params[kb])
    outs[top], layer[top] = _conv2d_forward(last, params[lw], params[lb], padding=1)
    for i in range(num - 2, -1, -1):
        kw, kb, lw, lb = _keys(i)
        lateral, inner[i] = _conv2d_forward(features[in_names[i]], params[kw], params[kb])
        # lateral + upsample(last), added in place into the conv's fresh output (no cache holds
        # it) without forming the upsampled map (P2 at 800 px: 41 MB), as _fpn_infer
        ups[i] = _upsample_nearest_cache(last, lateral.shape[-2:])
        last = _add_upsampled_nearest(lateral, last)
        outs[i], layer[i] = _conv2d_forward(last, params[lw], params[lb], padding=1)
    extra, pool = _max_pool2d_forward(outs[top], (1, 1), (2, 2), (0, 0))
    pyramid = outs + [extra]
    shapes = tuple(p.shape for p in pyramid)
    cache = FPNCache(tuple(inner), tuple(ups), tuple(layer), pool, in_names, shapes, dtype)
    return pyramid, cache


@quiet_math
def fpn_backward(dpyramid, cache):
    """Backward of ``fpn_forward``.

    dpyramid: list of L+1 gradients in level order (P2, .., P{L+2}), each
        shaped like the forward's output, in its dtype, or None (counts as zero).
    cache: FPNCache.
    Returns (grads, dfeatures): grads {key: array} for all 4L FPN parameters;
    dfeatures {"C2": ..., "C{L+1}": ...} shaped like the features.

    Where a value forks the gradients add: the top output P{L+1} also feeds
    the extra level (so dP6 lands on every other cell of P5's gradient), and
    each merged map M{k+1} feeds both its own 3x3 conv and, upsampled, M{k}
    (so its gradient is its conv's dx plus the upsample's adjoint of M{k}'s).
    """
    if not isinstance(cache, FPNCache):
        raise TypeError(f"cache must be an FPNCache, got {type(cache).__name__}")
    check_grad_list("dpyramid", dpyramid, cache.out_shapes, cache.dtype)
    return _fpn_backward(dpyramid, cache)


def _fpn_backward(dpyramid, cache, need=None):
    """:func:`fpn_backward` without the checks (for ``model``). need: None (every input's
    gradient), or the input names whose gradient is wanted (the others are left out of
    dfeatures and never computed: a frozen body stage below reads none)."""

    def dout(level):
        if dpyramid[level] is not None:
            return dpyramid[level]
        return np.zeros(cache.out_shapes[level], cache.dtype)

    num = len(cache.inner)
    top = num - 1
    d_top = dout(top)
    if dpyramid[num] is not None:
        d_top = d_top + _max_pool2d_backward(dpyramid[num], cache.pool)
    grads, dfeatures = {}, {}
    running = None  # gradient of M{k} arriving from below through the upsample
    for i in range(num):
        kw, kb, lw, lb = _keys(i)
        dp = d_top if i == top else dout(i)
        dm, grads[lw], grads[lb] = _conv2d_backward(dp, cache.layer[i])
        if running is not None:
            dm += running
        if i < top:
            running = _upsample_nearest_backward(dm, cache.upsample[i])
        name = cache.in_names[i]
        want = need is None or name in need
        dc, grads[kw], grads[kb] = _conv2d_backward(dm, cache.inner[i], need_dx=want)
        if want:
            dfeatures[name] = dc
    ordered = {}
    for i in range(num):
        for k in _keys(i):
            ordered[k] = grads[k]
    return ordered, dfeatures


# --------------------------------------------------------------------------- body + FPN together


class BackboneCache(NamedTuple):
    """Cache of ``backbone_forward``: ``body`` (ResNetCache) and ``fpn`` (FPNCache)."""

    body: Any
    fpn: Any


@quiet_math
def init_resnet_fpn_backbone(layers=50, *, width=64, out_channels=256, rng, dtype=np.float32):
    """Parameters of a ResNet body + FPN (twin of torchvision's ``resnet_fpn_backbone``
    with ``weights=None``: random init as torchvision).

    layers: depth (50, 101, 152) or 4 block counts; width: stem channels (64);
    out_channels: FPN width D (256); rng: np.random.Generator; dtype: float dtype.
    Returns one dict with the ``backbone.body.*`` and ``backbone.fpn.*`` keys;
    the FPN's in_channels are the stage outputs ``4 * width * 2**(s-1)``.
    """
    params = init_resnet(layers, width=width, rng=rng, dtype=dtype)
    ins = [EXPANSION * width * 2 ** s for s in range(4)]
    params.update(init_fpn(ins, out_channels, rng=rng, dtype=dtype))
    return params


@quiet_math
def backbone_forward(params, x, *, fold_bn=True):
    """ResNet body then FPN (twin of torchvision's ``BackboneWithFPN.forward``).

    params: dict with the ``backbone.body.*`` and ``backbone.fpn.*`` keys.
    x: (N, 3, H, W) normalised images. fold_bn: see ``resnet_forward``.
    Returns (pyramid, BackboneCache): pyramid the list [P2 (N, D, H/4, W/4), ...,
    P6 (N, D, H/64, W/64)] (:data:`PYRAMID_LEVELS`); sizes round up when H, W are
    not multiples of 64.
    """
    x = check_array("x", x, shape=("N", 3, "H", "W"), dtype_kind="f")
    if min(x.shape) == 0:
        raise ValueError(f"x must have no empty dimension, got {x.shape}")
    return _backbone_forward(params, x, *_check_backbone_params(params, x.dtype),
                             fold_bn=check_bool("fold_bn", fold_bn))


def _check_backbone_params(params, dtype=None):
    """Validate the ResNet body and FPN parameters together (``check_resnet_params``,
    ``check_fpn_params``, and the FPN's inputs are the body's C2..C5).
    Returns (ResNetStructure, FPN in_names ("C2", ..., "C5"))."""
    structure = check_resnet_params(params, dtype=dtype)
    ins, _ = check_fpn_params(params, dtype=dtype)
    body = [EXPANSION * structure.width * 2 ** s for s in range(4)]
    if list(ins) != body:
        raise ValueError(f"params hold an FPN on {len(ins)} levels of {ins} channels, but the ResNet body "
                         f"(width {structure.width}) outputs C2..C5 with {body}")
    return structure, fpn_level_names(len(ins))[0]


def _fpn_infer(params, features, in_names):
    """:func:`fpn_forward`'s pyramid for inference (no checks, no cache), bit for bit: the
    top-down sum is added in place into the lateral map (``lateral += upsample(last)``, one
    float addition per value as ``lateral + upsample(last)``) and each conv's bias is added
    block by block (``ops.conv._conv2d_fused``)."""
    num = len(in_names)
    outs = [None] * num
    top = num - 1
    kw, kb, lw, lb = _keys(top)
    last = _conv2d_fused(features[in_names[top]], params[kw], params[kb])
    outs[top] = _conv2d_fused(last, params[lw], params[lb], padding=1)
    for i in range(num - 2, -1, -1):
        kw, kb, lw, lb = _keys(i)
        lateral = _conv2d_fused(features[in_names[i]], params[kw], params[kb])
        last = _add_upsampled_nearest(lateral, last)  # lateral + upsample_nearest(last)
        outs[i] = _conv2d_fused(last, params[lw], params[lb], padding=1)
    return outs + [_max_pool2d(outs[top], (1, 1), (2, 2), (0, 0))]


def _backbone_infer(params, x, structure, in_names):
    """:func:`backbone_forward` for inference (no checks): the same pyramid, bit for bit,
    with no caches kept (``backbone._resnet_infer``: activations freed as they are used,
    ReLUs in place; :func:`_fpn_infer`)."""
    return _fpn_infer(params, _resnet_infer(params, x, structure), in_names)


def _backbone_forward(params, x, structure, in_names, fold_bn=True, frozen=0):
    """:func:`backbone_forward` without the checks (``_check_backbone_params`` gave
    structure and in_names). frozen: the body's groups below it keep no cache
    (``backbone._resnet_forward``)."""
    features, body = _resnet_forward(params, x, structure, fold_bn, frozen)
    pyramid, fpn = _fpn_forward(params, features, in_names)
    return pyramid, BackboneCache(body, fpn)


@quiet_math
def backbone_backward(dpyramid, cache, *, trainable_layers=5, return_input_grad=False):
    """Backward of ``backbone_forward``.

    dpyramid: list of 5 gradients [dP2, ..., dP6] (None = zero); cache: BackboneCache.
    trainable_layers, return_input_grad: as ``resnet_backward`` (pass
    ``backbone.REFERENCE_TRAINABLE_LAYERS`` to train as torchvision's Mask R-CNN).
    Returns (grads, dx): grads {key: array} (the FPN's 16 arrays and the
    trainable body convs); dx (N, 3, H, W) with return_input_grad, else None.
    """
    if not isinstance(cache, BackboneCache):
        raise TypeError(f"cache must be a BackboneCache, got {type(cache).__name__}")
    check_grad_list("dpyramid", dpyramid, cache.fpn.out_shapes, cache.fpn.dtype)
    trainable_layers = _check_trainable_layers(trainable_layers)
    return _backbone_backward(dpyramid, cache, trainable_layers, check_bool("return_input_grad", return_input_grad))


def _backbone_backward(dpyramid, cache, trainable_layers=5, return_input_grad=False, release=False):
    """:func:`backbone_backward` without the checks (for ``model``).

    release: the caller passes its only reference to ``cache`` and gives it up
    (``model.loss_and_grads``): the FPN's cache is dropped before the body's walk,
    and the body's block caches as the walk passes them (``_resnet_backward``)."""
    body, fpn = cache
    del cache
    # the body's walk reads C{s+1}'s gradient only for the stages s it visits
    lowest_visited = 0 if return_input_grad else 5 - trainable_layers
    need = {f"C{s + 1}" for s in range(max(lowest_visited, 1), 5)}
    fpn_grads, dfeatures = _fpn_backward(dpyramid, fpn, need)
    del fpn
    body_grads, dx = _resnet_backward(dfeatures, body, trainable_layers, return_input_grad, release=release)
    return {**body_grads, **fpn_grads}, dx
