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

from ._checks import (check_array, check_callable, check_finite, check_float, check_float_dtype,
                      check_positive_int, check_rng)


def numeric_gradient(f, x, dout=None, *, h=1e-6, indices=None):
    """Central-difference gradient of ``sum(f(x) * dout)`` with respect to ``x``.

    f: callable taking no arguments that reads ``x`` (modified in place here and
        restored afterwards) and returns an array or a scalar.
    x: float64 array, any shape.
    dout: array shaped like ``f()``'s output, or None for a scalar ``f``.
    indices: optional iterable of multi-indices into ``x``; only those entries
        are computed (the rest of the result is 0). Use it to check a few
        entries of a large tensor.
    h: the step, a finite float > 0.
    Returns an array shaped like ``x``.
    """
    check_callable("f", f)
    check_array("x", x)
    if x.dtype != np.float64:
        raise TypeError(f"x must be float64 for a numeric gradient, got {x.dtype}")
    if dout is not None:
        _real_array("dout", dout)
    h = check_float("h", h)
    if not h > 0:
        raise ValueError(f"h must be > 0, got {h}")
    grad = np.zeros_like(x)
    if indices is None:
        indices = np.ndindex(*x.shape)
    elif isinstance(indices, (str, bytes, dict)) or not hasattr(indices, "__iter__"):
        raise TypeError(f"indices must be an iterable of multi-indices into x, got {type(indices).__name__}")
    for idx in indices:
        idx = _index("indices", idx, x.shape)
        old = x[idx]
        x[idx] = old + h
        plus = _reduce(f(), dout)
        x[idx] = old - h
        minus = _reduce(f(), dout)
        x[idx] = old
        grad[idx] = (plus - minus) / (2 * h)
    return grad


def _index(name, idx, shape):
    """A multi-index into an array of ``shape`` as a tuple of ints, or ValueError naming ``name``."""
    flat = np.atleast_1d(np.asarray(idx, dtype=object)).tolist() if not isinstance(idx, tuple) else list(idx)
    if len(flat) != len(shape) or not all(
            isinstance(i, (int, np.integer)) and not isinstance(i, bool) and -n <= i < n for i, n in zip(flat, shape)):
        raise ValueError(f"{name} must hold multi-indices into x of shape {shape}, got {idx!r}")
    return tuple(int(i) for i in flat)


def _reduce(value, dout):
    value = np.asarray(value)
    if value.dtype.kind not in "biuf":
        raise TypeError(f"f must return real numbers, got dtype {value.dtype}")
    value = value.astype(np.float64)
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
    element-wise ratio would. a, b: finite real arrays (NaN or inf raise
    ValueError: a gradient that is not finite is not close to anything).
    floor: float > 0.
    """
    a, b = _real_array("a", a), _real_array("b", b)
    if a.shape != b.shape:
        raise ValueError(f"a and b must have the same shape, got {a.shape} and {b.shape}")
    floor = check_float("floor", floor)
    if not floor > 0:
        raise ValueError(f"floor must be > 0, got {floor}")
    if a.size == 0:
        return 0.0
    scale = max(np.max(np.abs(a)), np.max(np.abs(b)), floor)
    return float(np.max(np.abs(a - b)) / scale)


def _real_array(name, value):
    arr = np.asarray(value)
    if arr.size and arr.dtype.kind not in "biuf":
        raise TypeError(f"{name} must hold real numbers, got dtype {arr.dtype}")
    return check_finite(name, arr.astype(np.float64))


def _shape(name, value):
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        value = (value,)
    if not isinstance(value, (tuple, list)):
        raise TypeError(f"{name} must be a tuple of ints, got {type(value).__name__}")
    return tuple(check_positive_int(name, v, minimum=0) for v in value)


def adjoint_error(forward, adjoint, x_shape, y_shape, *, rng, dtype=np.float64):
    """Dot-product test of a linear map: ``|<A x, y> - <x, A^T y>|`` relative.

    forward: x -> A x, with x of shape ``x_shape``.
    adjoint: y -> A^T y, with y of shape ``y_shape`` (the output shape).
    rng: np.random.Generator; dtype: a floating dtype.
    Returns the relative mismatch; a correct pair gives ~1e-15 in float64.
    """
    check_callable("forward", forward)
    check_callable("adjoint", adjoint)
    x_shape, y_shape = _shape("x_shape", x_shape), _shape("y_shape", y_shape)
    check_rng(rng)
    dtype = check_float_dtype(dtype)
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
