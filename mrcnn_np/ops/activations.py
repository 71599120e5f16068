"""Element-wise activations: ReLU and sigmoid pairs, stable sigmoid and softmax.

Shape shorthand: any shape ``(*)``; every output has the input's shape and dtype.

    relu(x)    = max(x, 0)            d/dx = 1 if x > 0 else 0 (0 at x = 0, as torch)
    sigmoid(x) = 1 / (1 + exp(-x))    d/dx = s (1 - s)
    softmax(x)_k = exp(x_k - m) / sum_j exp(x_j - m),  m = max_j x_j
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .._checks import check_array, check_same_dtype, quiet_math
from ..kernels.elementwise import keep_where


class ReluCache(NamedTuple):
    """positive: bool mask (*) of ``x > 0``; dtype: x's dtype."""

    positive: np.ndarray
    dtype: np.dtype


class SigmoidCache(NamedTuple):
    """out: the sigmoid output (*), enough for its derivative s (1 - s)."""

    out: np.ndarray


@quiet_math
def relu_forward(x):
    """ReLU (twin of torch ``F.relu``). x: (*) floating. Returns (out (*), ReluCache)."""
    x = check_array("x", x, dtype_kind="f")
    return _relu_forward(x)


def _relu_forward(x):
    """:func:`relu_forward` without the checks (for the stages)."""
    positive = x > 0
    return np.maximum(x, x.dtype.type(0)), ReluCache(positive, x.dtype)


def _relu_inplace(x):
    """ReLU written over x, for inference (the values of :func:`relu_forward`, no mask, no
    copy): only for an x the caller owns. Returns x."""
    return np.maximum(x, x.dtype.type(0), out=x)


@quiet_math
def relu_backward(dout, cache):
    """dout: (*) shaped like x, x's dtype. Returns dx (*) = dout where x > 0, else 0."""
    if not isinstance(cache, ReluCache):
        raise TypeError(f"cache must be a ReluCache, got {type(cache).__name__}")
    dout = check_array("dout", dout, shape=cache.positive.shape, dtype_kind="f")
    check_same_dtype(x=np.empty(0, cache.dtype), dout=dout)
    return _relu_backward(dout, cache)


def _relu_backward(dout, cache):
    """:func:`relu_backward` without the checks (for the stages)."""
    return keep_where(cache.positive, dout)  # np.where(positive, dout, 0), bit for bit


@quiet_math
def sigmoid(x):
    """Numerically stable logistic function, no cache (x (*) floating -> (*)).

    Uses ``exp(-|x|)``, which never overflows: for x >= 0 it is
    ``1 / (1 + e)``, for x < 0 ``e / (1 + e)``.
    """
    x = check_array("x", x, dtype_kind="f")
    return _sigmoid(x)


def _sigmoid(x):
    """:func:`sigmoid` without the checks (for the stages)."""
    with np.errstate(under="ignore"):
        e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1 / (1 + e), e / (1 + e)).astype(x.dtype, copy=False)


@quiet_math
def sigmoid_forward(x):
    """Sigmoid (twin of torch ``torch.sigmoid``). x: (*). Returns (out (*), SigmoidCache)."""
    out = sigmoid(x)
    return out, SigmoidCache(out)


@quiet_math
def sigmoid_backward(dout, cache):
    """dout: (*) shaped like x, x's dtype. Returns dx (*) = dout * s * (1 - s)."""
    if not isinstance(cache, SigmoidCache):
        raise TypeError(f"cache must be a SigmoidCache, got {type(cache).__name__}")
    dout = check_array("dout", dout, shape=cache.out.shape, dtype_kind="f")
    check_same_dtype(x=cache.out, dout=dout)
    s = cache.out
    return dout * s * (1 - s)


@quiet_math
def softmax(x, axis=-1):
    """Numerically stable softmax along ``axis`` (no gradient; twin of ``F.softmax``).

    x: (*) floating, finite (a row that is all -inf has no softmax).
    axis: int, the axis that sums to 1.
    Returns an array of x's shape and dtype.
    """
    x = check_array("x", x, dtype_kind="f")
    if isinstance(axis, bool) or not isinstance(axis, (int, np.integer)):
        raise TypeError(f"axis must be an int, got {type(axis).__name__}")
    if not -x.ndim <= axis < x.ndim:
        raise ValueError(f"axis must be in [{-x.ndim}, {x.ndim}), got {axis}")
    return _softmax(x, axis)


def _softmax(x, axis=-1):
    """:func:`softmax` without the checks (for the stages)."""
    z = x - x.max(axis=axis, keepdims=True)
    with np.errstate(under="ignore"):
        e = np.exp(z)
    return e / e.sum(axis=axis, keepdims=True)
