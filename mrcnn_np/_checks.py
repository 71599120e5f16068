"""Argument checks shared by every public function.

Each helper raises ``TypeError`` or ``ValueError`` whose message names the
argument, says what was expected and what came, e.g.
``rois must have shape (R, 5), got (12, 4)``. They return the array so a call
can be written inline: ``x = check_array("x", x, ndim=4)``.
"""
from __future__ import annotations

import functools
import math
import numbers

import numpy as np


def check_array(name, value, *, ndim=None, shape=None, dtype_kind=None):
    """Check that ``value`` is an ndarray and return it.

    ndim: required number of dimensions, or None.
    shape: tuple whose entries are ints or None (any size) or strings used only
        to describe the dimension in the message, e.g. ``("R", 5)``.
    dtype_kind: string of allowed ``dtype.kind`` letters, e.g. ``"f"`` or
        ``"iu"``, or None.
    """
    if not isinstance(value, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray, got {type(value).__name__}")
    if shape is not None:
        ndim = len(shape)
    if ndim is not None and value.ndim != ndim:
        want = describe_shape(shape) if shape is not None else f"{ndim} dimensions"
        raise ValueError(f"{name} must have shape {want}, got {value.shape}")
    if shape is not None:
        for want, got in zip(shape, value.shape):
            if isinstance(want, numbers.Integral) and want != got:
                raise ValueError(
                    f"{name} must have shape {describe_shape(shape)}, got {value.shape}"
                )
    if dtype_kind is not None and value.dtype.kind not in dtype_kind:
        kinds = {"f": "floating", "i": "signed integer", "u": "unsigned integer", "b": "bool"}
        want = " or ".join(kinds.get(k, k) for k in dtype_kind)
        raise TypeError(f"{name} must have a {want} dtype, got {value.dtype}")
    return value


def describe_shape(shape):
    """``("N", "C", None, 4)`` -> ``"(N, C, *, 4)"``."""
    parts = ["*" if s is None else str(s) for s in shape]
    return "(" + ", ".join(parts) + (",)" if len(parts) == 1 else ")")


#: the largest int a size, count or index may be: it must fit numpy's int64
#: (a larger one cannot size an array or index into one)
MAX_INT = 2**63 - 1


def check_positive_int(name, value, *, minimum=1, maximum=MAX_INT):
    """Check an integer hyper-parameter (bools are rejected) and return it as int.

    It must lie in [minimum, maximum]; the default maximum is :data:`MAX_INT`.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    if value > maximum:
        raise ValueError(f"{name} must be <= {maximum}, got {value}")
    return int(value)


def check_pair(name, value, *, minimum=1):
    """Accept an int or a pair of ints (as torch's ``_pair``) and return a tuple."""
    if isinstance(value, (tuple, list)):
        if len(value) != 2:
            raise ValueError(f"{name} must be an int or a pair of ints, got {value!r}")
        return tuple(check_positive_int(name, v, minimum=minimum) for v in value)
    v = check_positive_int(name, value, minimum=minimum)
    return (v, v)


def check_float(name, value, *, minimum=None, maximum=None):
    """Check a real-valued hyper-parameter and return it as float."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    value = float(value)
    if not np.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name} must be <= {maximum}, got {value}")
    return value


def check_same_dtype(**arrays):
    """All given arrays (None entries skipped) share one dtype; else TypeError."""
    items = [(k, v) for k, v in arrays.items() if v is not None]
    if not items:
        return
    first_name, first = items[0]
    for name, arr in items[1:]:
        if arr.dtype != first.dtype:
            raise TypeError(
                f"{name} must have the dtype of {first_name} ({first.dtype}), got {arr.dtype}"
            )


def check_rng(rng, name="rng"):
    """Check that ``rng`` is a ``numpy.random.Generator`` and return it.

    All randomness in the library comes from an explicit Generator, so the
    same seed gives the same result bit for bit; a legacy ``RandomState`` or a
    bare seed is refused rather than silently converted.
    """
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"{name} must be a numpy.random.Generator, got {type(rng).__name__}")
    return rng


def check_finite(name, array):
    """Raise ValueError if ``array`` holds NaN or inf; return it."""
    if array.size and not np.isfinite(array).all():
        raise ValueError(f"{name} must be finite, got NaN or inf entries")
    return array


def check_param_dict(params, *, finite=True):
    """A non-empty dict of float arrays of one dtype (finite unless ``finite=False``),
    as ``model.init_params`` makes; returns that dtype."""
    if not isinstance(params, dict) or not params:
        raise TypeError(f"params must be a non-empty dict of arrays (model.init_params), got {params!r:.60}")
    dtype = None
    for key, value in params.items():
        check_array(f"params[{key!r}]", value, dtype_kind="f")
        dtype = value.dtype if dtype is None else dtype
        if value.dtype != dtype:
            raise TypeError(f"params[{key!r}] must have the dtype of the others ({dtype}), got {value.dtype}")
        if finite:
            check_finite(f"params[{key!r}]", value)
    return dtype


def check_params(params, expected, *, dtype=None, dtype_source="the input's", prefix=None, context=""):
    """Check a flat parameter dict against the keys (and shapes) a block expects.

    params: dict of arrays keyed by torchvision state_dict names; keys outside
        the block are allowed (the whole model's dict can be passed).
    expected: dict key -> shape tuple, or -> None to check only presence.
    dtype: required dtype of every checked array, or None.
    dtype_source: what the dtype must match, for the message ("the input's").
    prefix: when given, any key of ``params`` starting with it that is not in
        ``expected`` is an error (an extra layer is a bug, not a no-op).
    context: appended to the unexpected-key message (e.g. the structure found).
    Raises ValueError (TypeError for types and dtypes) naming the key.
    """
    if not isinstance(params, dict):
        raise TypeError(f"params must be a dict of arrays, got {type(params).__name__}")
    if dtype is not None:
        dtype = check_float_dtype(dtype)
    for key, shape in expected.items():
        if key not in params:
            raise ValueError(f"params is missing {key!r}")
        value = params[key]
        if not isinstance(value, np.ndarray):
            raise TypeError(f"params[{key!r}] must be a numpy.ndarray, got {type(value).__name__}")
        if value.dtype.kind != "f":
            raise TypeError(f"params[{key!r}] must have a floating dtype, got {value.dtype}")
        if shape is not None and value.shape != tuple(shape):
            raise ValueError(f"params[{key!r}] must have shape {tuple(shape)}, got {value.shape}")
        if dtype is not None and value.dtype != dtype:
            raise TypeError(
                f"params[{key!r}] must have dtype {np.dtype(dtype)} ({dtype_source}), got {value.dtype}"
            )
    if prefix is not None:
        for key in params:
            if key.startswith(prefix) and key not in expected:
                raise ValueError(f"params has unexpected key {key!r}{context}")


def check_float_dtype(dtype, name="dtype"):
    """Return ``np.dtype(dtype)``; TypeError unless it is a floating dtype (None is refused:
    ``np.dtype(None)`` would silently mean float64)."""
    if dtype is None:
        raise TypeError(f"{name} must be a floating dtype, got None")
    try:
        dtype = np.dtype(dtype)
    except TypeError:
        raise TypeError(f"{name} must be a floating dtype, got {dtype!r}") from None
    if dtype.kind != "f":
        raise TypeError(f"{name} must be a floating dtype, got {dtype}")
    return dtype


def check_grad_dict(name, grads, shapes, dtype):
    """Check a dict of upstream gradients, e.g. ``dfeatures`` or ``dpyramid``.

    grads: dict key -> array; any subset of ``shapes``' keys (a missing key
        means a zero gradient for that output).
    shapes: dict key -> the forward output's shape.
    dtype: the forward's dtype; every gradient must have it.
    """
    if not isinstance(grads, dict):
        raise TypeError(f"{name} must be a dict, got {type(grads).__name__}")
    dtype = np.dtype(dtype)
    for key, value in grads.items():
        if key not in shapes:
            raise ValueError(f"{name} has unexpected key {key!r}; expected some of {tuple(shapes)}")
        check_array(f"{name}[{key!r}]", value, shape=shapes[key], dtype_kind="f")
        if value.dtype != dtype:
            raise TypeError(f"{name}[{key!r}] must have dtype {dtype}, got {value.dtype}")


def check_grad_list(name, grads, shapes, dtype):
    """Check a list of upstream gradients of a multi-level output, e.g. ``dpyramid``.

    grads: list (or tuple) with one entry per level, each an array or None
        (a zero gradient for that level).
    shapes: the forward outputs' shapes, level order.
    dtype: the forward's dtype; every gradient must have it.
    """
    if isinstance(grads, dict) or not isinstance(grads, (list, tuple)):
        raise TypeError(f"{name} must be a list of {len(shapes)} per-level arrays (None for zero), "
                        f"got {type(grads).__name__}")
    if len(grads) != len(shapes):
        raise ValueError(f"{name} must have one entry per level ({len(shapes)}), got {len(grads)}")
    dtype = np.dtype(dtype)
    for i, (value, shape) in enumerate(zip(grads, shapes)):
        if value is None:
            continue
        check_array(f"{name}[{i}]", value, shape=shape, dtype_kind="f")
        if value.dtype != dtype:
            raise TypeError(f"{name}[{i}] must have dtype {dtype}, got {value.dtype}")


def check_hw_pair(name, value, *, minimum=1):
    """Check an (h, w) pair of ints (image size, grid size) and return it as a tuple.

    Unlike :func:`check_pair` a bare int is refused: a size is always two numbers.
    A 1-D integer ndarray of length 2 is accepted. Raises ValueError naming ``name``.
    """
    if isinstance(value, np.ndarray):
        value = tuple(value.tolist())
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise ValueError(f"{name} must be a pair of ints (h, w), got {value!r}")
    for v in value:
        if isinstance(v, bool) or not isinstance(v, numbers.Integral):
            raise ValueError(f"{name} must be a pair of ints (h, w), got {value!r}")
        if v < minimum:
            raise ValueError(f"{name} entries must be >= {minimum}, got {value!r}")
        if v > MAX_INT:
            raise ValueError(f"{name} entries must be <= {MAX_INT}, got {value!r}")
    return int(value[0]), int(value[1])


# --------------------------------------------------------------------------- flags, types, paths, coordinates


def check_bool(name, value):
    """A flag: ``bool`` or ``numpy.bool_`` (a str or None would be silently truthy); returns bool."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    raise TypeError(f"{name} must be a bool, got {type(value).__name__}")


def check_instance(name, value, cls, what=None):
    """``isinstance(value, cls)`` or TypeError naming ``name`` (e.g. a cache from the forward)."""
    if not isinstance(value, cls):
        if what is None:
            what = " or ".join(c.__name__ for c in cls) if isinstance(cls, tuple) else cls.__name__
        raise TypeError(f"{name} must be a {what}, got {type(value).__name__}")
    return value


def check_sequence(name, value, *, length=None, what="list"):
    """A list or tuple (not a str, dict or array), optionally of ``length`` entries; returns it."""
    if not isinstance(value, (list, tuple)):
        raise TypeError(f"{name} must be a {what}, got {type(value).__name__}")
    if length is not None and len(value) != length:
        raise ValueError(f"{name} must have {length} entries, got {len(value)}")
    return value


def check_indices(indices, n, name="indices"):
    """Ints in [0, n), the positions of dataset items (a list, a tuple or a 1-D integer array);
    returns them as a list of ints."""
    if isinstance(indices, np.ndarray):
        if indices.ndim != 1 or (indices.size and indices.dtype.kind not in "iu"):
            raise TypeError(f"{name} must be a 1-D array of ints, got {indices.dtype} {indices.shape}")
        indices = indices.tolist()
    if isinstance(indices, (str, bytes, dict)) or not hasattr(indices, "__iter__"):
        raise TypeError(f"{name} must be a sequence of ints, got {type(indices).__name__}")
    indices = list(indices)
    for i in indices:
        if isinstance(i, bool) or not isinstance(i, (int, np.integer)):
            raise TypeError(f"{name} must be ints, got {i!r}")
        if not 0 <= i < n:
            raise ValueError(f"{name} must be in [0, {n}) (the dataset's length), got {i}")
    return [int(i) for i in indices]


def check_flags(name, flags, n):
    """One bool per item (a list or tuple of n bools); returns them as a list of bools."""
    if isinstance(flags, (str, bytes, dict)) or not hasattr(flags, "__len__") or len(flags) != n:
        raise ValueError(f"{name} must be None or one bool per index ({n}), got {flags!r:.60}")
    for f in flags:
        if not isinstance(f, (bool, np.bool_)):
            raise TypeError(f"{name} must be bools, got {f!r}")
    return [bool(f) for f in flags]


def check_callable(name, value):
    """A callable (a function, a lambda) or TypeError naming ``name``; returns it."""
    if not callable(value):
        raise TypeError(f"{name} must be callable, got {type(value).__name__}")
    return value


def check_str(name, value, choices=None):
    """A str, optionally one of ``choices``; returns it."""
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str, got {type(value).__name__}")
    if choices is not None and value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}; got {value!r}")
    return value


def check_path(name, value):
    """A str or os.PathLike file-system path; returns it as a ``pathlib.Path``."""
    import os
    from pathlib import Path

    if isinstance(value, bool) or not isinstance(value, (str, os.PathLike)):
        raise TypeError(f"{name} must be a path (str or os.PathLike), got {type(value).__name__}")
    return Path(value)


def coordinate_limit(dtype):
    """The largest coordinate magnitude whose box arithmetic stays finite in ``dtype``.

    An area is a product of two differences and a union a sum of three areas, so
    coordinates up to ``sqrt(max) / 4`` keep every area, intersection and union
    below ``max / 2`` (float32: 4.6e18 pixels, float64: 3.4e153); beyond that a box
    is not a box of any image, and its IoU would be inf / inf.
    """
    return float(np.sqrt(np.finfo(dtype).max)) / 4


def check_coordinates(name, array, dtype=None):
    """Finite coordinates (boxes, points) small enough for box arithmetic in ``dtype``
    (default the array's; see :func:`coordinate_limit`); ValueError naming ``name``."""
    if array.size:
        peak = float(np.abs(array).max())
        limit = coordinate_limit(array.dtype if dtype is None else dtype)
        if not peak <= limit:  # NaN fails too
            if not math.isfinite(peak):
                raise ValueError(f"{name} must be finite, got NaN or inf entries")
            raise ValueError(f"{name} must have coordinates of magnitude at most {limit:.3g}, got {peak:.3g}")
    return array


def quiet_math(fn):
    """Run a layer's math with every floating-point warning off (``np.errstate(all="ignore")``).

    The README's non-finite policy: a layer (ops, backbone, FPN, heads) lets NaN
    and inf through as torch does -- inf * 0 is NaN, a huge activation overflows
    to inf -- without a RuntimeWarning; the user-facing boundary refuses them
    instead. A fresh ``errstate`` per call, so nesting and threads are safe.
    """
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with np.errstate(all="ignore"):
            return fn(*args, **kwargs)

    return wrapper
