"""Frozen batch normalisation (torchvision ``ops.misc.FrozenBatchNorm2d``).

Shape shorthand: N images, C channels, H x W spatial.

    y = (x - mean) / sqrt(var + eps) * weight + bias

computed, as torchvision does, as one per-channel affine map
``y = x * scale + shift`` with ``scale = weight / sqrt(var + eps)`` and
``shift = bias - mean * scale``. The statistics are never updated and the
affine parameters are not trained: the ResNet backbone of
``maskrcnn_resnet50_fpn`` uses ``FrozenBatchNorm2d`` everywhere, because
detection batches (1-2 large images per GPU) are too small to estimate batch
statistics, so the ImageNet values are kept fixed.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .._checks import check_array, check_float, check_same_dtype, quiet_math


class FrozenBatchNormCache(NamedTuple):
    """scale: (C,) ``weight / sqrt(var + eps)``, the only thing dx needs;
    x_shape: (N, C, H, W)."""

    scale: np.ndarray
    x_shape: tuple


@quiet_math
def frozen_batch_norm_forward(x, weight, bias, running_mean, running_var, *, eps=1e-5):
    """Per-channel affine normalisation with fixed statistics.

    x: (N, C, H, W) floating.
    weight, bias, running_mean, running_var: (C,) each, x's dtype
        (state_dict names ``*.weight``, ``*.bias``, ``*.running_mean``,
        ``*.running_var``); running_var + eps must be > 0.
    eps: float >= 0 (torchvision's FrozenBatchNorm2d default 1e-5).
    Returns (out (N, C, H, W), FrozenBatchNormCache).
    """
    x = check_array("x", x, shape=("N", "C", "H", "W"), dtype_kind="f")
    c = x.shape[1]
    params = {}
    for name, value in (("weight", weight), ("bias", bias),
                        ("running_mean", running_mean), ("running_var", running_var)):
        params[name] = check_array(name, value, shape=(c,), dtype_kind="f")
    check_same_dtype(x=x, **params)
    eps = check_float("eps", eps, minimum=0.0)
    denom = params["running_var"] + x.dtype.type(eps)
    if np.any(~(denom > 0)):
        raise ValueError(
            f"running_var + eps must be > 0 in every channel, got min {denom.min()}"
        )
    scale = params["weight"] / np.sqrt(denom)
    shift = params["bias"] - params["running_mean"] * scale
    out = x * scale[:, None, None] + shift[:, None, None]
    return out, FrozenBatchNormCache(scale, x.shape)


@quiet_math
def frozen_batch_norm_backward(dout, cache):
    """Gradient of ``frozen_batch_norm_forward`` with respect to x only.

    dout: (N, C, H, W), x's dtype. cache: FrozenBatchNormCache.
    Returns dx (N, C, H, W) = dout * scale (per channel).

    No gradient is returned for weight, bias, running_mean or running_var,
    on purpose: in the reference (torchvision's ``FrozenBatchNorm2d``) they
    are buffers, not parameters, so the optimiser never changes them. The
    layer is a fixed affine map, and its only derivative that matters is the
    one that carries the gradient back to x.
    """
    if not isinstance(cache, FrozenBatchNormCache):
        raise TypeError(f"cache must be a FrozenBatchNormCache, got {type(cache).__name__}")
    dout = check_array("dout", dout, shape=cache.x_shape, dtype_kind="f")
    check_same_dtype(x=cache.scale, dout=dout)
    return dout * cache.scale[:, None, None]
