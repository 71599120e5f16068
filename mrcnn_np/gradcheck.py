"""Numeric gradients, relative error and the adjoint test.

Used by the tests and the notebooks to prove every backward pass against the
math. Run them in float64: central differences with ``h = 1e-6`` are accurate
to about 1e-9 relative there, so a relative error below 1e-6 separates a
correct backward from a wrong one by orders of magnitude.

Shapes are whatever the function takes; ``f`` maps arrays to a scalar or an
array, and the checks reduce it with an upstream gradient ``dout`` so that
``sum(f(x) * dout)`` is the scalar whose gradient the backward returns.
"""
from __future__ import annotations

import numpy as np

from ._checks import check_array


def numeric_gradient(f, x, dout=None, *, h=1e-6, indices=None):
    """Central-difference gradient of ``sum(f(x) * dout)`` with respect to ``x``.

    f: callable taking no arguments that reads ``x`` (modified in place here and
        restored afterwards) and returns an array or a scalar.
    x: float64 array, any shape.
    dout: array shaped like ``f()``'s output, or None for a scalar ``f``.
    indices: optional iterable of multi-indices into ``x``; only those entries
        are computed (the rest of the result is 0). Use it to check a few
        entries of a large tensor.
    Returns an array shaped like ``x``.
    """
    check_array("x", x)
    if x.dtype != np.float64:
        raise TypeError(f"x must be float64 for a numeric gradient, got {x.dtype}")
    grad = np.zeros_like(x)
    if indices is None:
        indices = np.ndindex(*x.shape)
    for idx in indices:
        idx = tuple(int(i) for i in np.atleast_1d(idx)) if not isinstance(idx, tuple) else idx
        old = x[idx]
        x[idx] = old + h
        plus = _reduce(f(), dout)
        x[idx] = old - h
        minus = _reduce(f(), dout)
        x[idx] = old
        grad[idx] = (plus - minus) / (2 * h)
    return grad


def _reduce(value, dout):
    value = np.asarray(value, dtype=np.float64)
    if dout is None:
        if value.size != 1:
            raise ValueError(
                f"f returned shape {value.shape}; pass dout to reduce a non-scalar output"
            )
        return float(value.reshape(()))
    if value.shape != np.shape(dout):
        raise ValueError(f"dout must have the shape of f's output {value.shape}, got {np.shape(dout)}")
    return float(np.sum(value * dout))


def relative_error(a, b, *, floor=1e-8):
    """``max|a - b| / max(max|a|, max|b|, floor)``: one number for two arrays.

    A scale-aware error: entries near zero do not blow it up the way an
    element-wise ratio would.
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"a and b must have the same shape, got {a.shape} and {b.shape}")
    if a.size == 0:
        return 0.0
    scale = max(np.max(np.abs(a)), np.max(np.abs(b)), floor)
    return float(np.max(np.abs(a - b)) / scale)


def adjoint_error(forward, adjoint, x_shape, y_shape, *, rng, dtype=np.float64):
    """Dot-product test of a linear map: ``|<A x, y> - <x, A^T y>|`` relative.

    forward: x -> A x, with x of shape ``x_shape``.
    adjoint: y -> A^T y, with y of shape ``y_shape`` (the output shape).
    Returns the relative mismatch; a correct pair gives ~1e-15 in float64.
    """
    x = rng.standard_normal(x_shape).astype(dtype)
    y = rng.standard_normal(y_shape).astype(dtype)
    ax = forward(x)
    aty = adjoint(y)
    if np.shape(ax) != tuple(y_shape):
        raise ValueError(f"forward must return shape {tuple(y_shape)}, got {np.shape(ax)}")
    if np.shape(aty) != tuple(x_shape):
        raise ValueError(f"adjoint must return shape {tuple(x_shape)}, got {np.shape(aty)}")
    lhs = float(np.sum(ax * y))
    rhs = float(np.sum(x * aty))
    return abs(lhs - rhs) / max(abs(lhs), abs(rhs), 1e-30)
