"""Fully connected layer, forward and backward (torch ``F.linear`` layout).

Shape shorthand: N rows (samples or RoIs), I input features, O output features.

    out = x @ w.T + b        x (N, I), w (O, I), b (O,)

The weight is stored (O, I), torch's ``nn.Linear.weight`` layout, so
torchvision weights (``roi_heads.box_head.fc6.weight`` ...) load unchanged.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .._checks import check_array, check_same_dtype, quiet_math


class LinearCache(NamedTuple):
    """What ``linear_backward`` needs: the input x (N, I), the weight w (O, I)
    and whether a bias was used."""

    x: np.ndarray
    w: np.ndarray
    has_bias: bool


@quiet_math
def linear_forward(x, w, b):
    """Affine map ``x @ w.T + b`` (twin of torch ``F.linear``).

    x: (N, I) floating.
    w: (O, I), same dtype as x.
    b: (O,) same dtype, or None for no bias.
    Returns (out (N, O), LinearCache).
    """
    x = check_array("x", x, shape=("N", "I"), dtype_kind="f")
    w = check_array("w", w, shape=("O", x.shape[1]), dtype_kind="f")
    if b is not None:
        b = check_array("b", b, shape=(w.shape[0],), dtype_kind="f")
    check_same_dtype(x=x, w=w, b=b)
    return _linear_forward(x, w, b)


def _linear_forward(x, w, b):
    """:func:`linear_forward` without the checks (for the stages)."""
    out = x @ w.T
    if b is not None:
        out += b
    return out, LinearCache(x, w, b is not None)


@quiet_math
def linear_backward(dout, cache):
    """Gradients of ``linear_forward``.

    dout: (N, O), x's dtype.
    cache: LinearCache.
    Returns (dx (N, I), dw (O, I), db (O,) or None when the forward had no bias):
    dx = dout @ w, dw = dout.T @ x, db = sum of dout over rows.
    """
    if not isinstance(cache, LinearCache):
        raise TypeError(f"cache must be a LinearCache, got {type(cache).__name__}")
    n, o = cache.x.shape[0], cache.w.shape[0]
    dout = check_array("dout", dout, shape=(n, o), dtype_kind="f")
    check_same_dtype(x=cache.x, dout=dout)
    return _linear_backward(dout, cache)


def _linear_backward(dout, cache):
    """:func:`linear_backward` without the checks (for the stages)."""
    dx = dout @ cache.w
    dw = dout.T @ cache.x
    db = dout.sum(axis=0) if cache.has_bias else None
    return dx, dw, db
