"""Resizing: nearest-neighbour upsampling and bilinear resizing, with backward.

Shape shorthand: N images, C channels, H x W input, h x w output (``size``).

Nearest (torch ``F.interpolate(mode="nearest")``, used by the FPN top-down
path): output pixel (i, j) copies input pixel

    (floor(i * H / h), floor(j * W / w))

evaluated exactly as torch evaluates it: a float32 scale ``s = float32(H) /
float32(h)`` and ``floorf(float32(i) * s)``, clamped to H - 1 (torch's
``nearest_idx``; h == H copies and h == 2H takes ``i >> 1``). Float32
rounding makes this differ from the exact rational floor in rare cases where
``i * H / h`` is an integer, e.g. H = 2, h = 94, i = 47: 1/47 rounds down to
0.021276595 in float32 and 47 times that rounds to 0.99999994, so torch (and
this code) read row 0, not row 1. The factor-2 upsampling of the FPN (image
sides padded to a multiple of 32) is never affected.
``tests/reference/test_ops_torch.py`` checks every H, h <= 160 against torch.

Bilinear (torch ``F.interpolate(mode="bilinear", align_corners=False,
antialias=False)``, used to resize images and to paste masks): pixel centres
are aligned, so output index i samples the input at

    src = (i + 0.5) * H / h - 0.5,   clamped below at 0,

and blends rows ``y0 = floor(src)`` and ``y1 = min(y0 + 1, H - 1)`` with weights
``1 - (src - y0)`` and ``src - y0``; columns likewise. Without antialias a
strong downscale skips input pixels (only two taps per axis), as in torch.
Both maps are linear in x, so the backward is the transpose (adjoint): each
output gradient is scattered back onto the input pixels it read, with the
same weights. Coordinates and weights are computed in x's dtype, as torch's
CPU kernel does.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .._checks import check_array, check_pair, check_same_dtype, quiet_math


class UpsampleNearestCache(NamedTuple):
    """rows: (h,) int64 source row of each output row; cols: (w,) source column;
    x_shape: input shape (N, C, H, W); dtype: x's dtype."""

    rows: np.ndarray
    cols: np.ndarray
    x_shape: tuple
    dtype: np.dtype


class BilinearTaps(NamedTuple):
    """Interpolation along one axis of length n_in -> n_out.

    i0, i1: (n_out,) int64 lower / upper source index (i1 = i0 at the last
        input index); w0, w1: (n_out,) weights in the input's dtype, w0 + w1 = 1.
    """

    i0: np.ndarray
    i1: np.ndarray
    w0: np.ndarray
    w1: np.ndarray


class ResizeBilinearCache(NamedTuple):
    """rows, cols: BilinearTaps for the second-last and last axes;
    x_shape: input shape (*, H, W)."""

    rows: BilinearTaps
    cols: BilinearTaps
    x_shape: tuple


def _nearest_index(n_in, n_out):
    """torch's nearest source index for dst in [0, n_out): ~floor(dst * n_in / n_out)."""
    dst = np.arange(n_out, dtype=np.int64)
    if n_out == n_in:
        return dst
    if n_out == 2 * n_in:
        return dst >> 1
    scale = np.float32(n_in) / np.float32(n_out)
    src = np.floor(dst.astype(np.float32) * scale).astype(np.int64)
    return np.minimum(src, n_in - 1)


def _bilinear_taps(n_in, n_out, dtype):
    """Source taps of torch's align_corners=False bilinear along one axis.

    Computed in ``dtype`` arithmetic (float32 for float32 input, as torch's
    CPU kernel does), so the weights match torch's to the last bit or two;
    float16 coordinates are computed in float32 (torch's ``opmath`` type: a
    float16 index would be wrong beyond 2048) and only the weights rounded.
    """
    ct = np.promote_types(dtype, np.float32)
    one, half = ct.type(1), ct.type(0.5)
    scale = ct.type(n_in) / ct.type(n_out)
    if ct == np.float32:
        # torch's kernel rounds (dst + 0.5) * scale - 0.5 once (a fused multiply-add);
        # in float64 the product and difference are exact, so one cast rounds once too
        # (two float32 roundings put large float32 images up to 3e-5 off torch's)
        src = ((np.arange(n_out) + 0.5) * np.float64(scale) - 0.5).astype(ct)
    else:
        src = (np.arange(n_out, dtype=ct) + half) * scale - half
    src = np.maximum(src, ct.type(0))
    i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    i1 = np.where(i0 < n_in - 1, i0 + 1, i0)
    w1 = np.clip(src - i0.astype(ct), ct.type(0), one)
    return BilinearTaps(i0, i1, (one - w1).astype(dtype), w1.astype(dtype))


def _sum_into(values, idx, n, axis):
    """Adjoint of ``np.take(x, idx, axis)`` for a NON-DECREASING ``idx``.

    values: array whose ``axis`` has len(idx) entries. Returns an array with
    ``n`` entries on ``axis``: entry k is the sum of the values taken from k.
    A run of equal indices is contiguous, so ``np.add.reduceat`` sums each run
    in one vectorised call (no Python loop, no slow ``np.add.at``).
    """
    m = len(idx)
    if m % n == 0 and np.array_equal(idx, np.arange(m) // (m // n)):
        # every source index used by one run of m // n (integer upsampling, e.g.
        # the FPN's factor 2): a reshape and a sum, faster than reduceat
        k = m // n
        shape = values.shape[:axis] + (n, k) + values.shape[axis + 1:]
        v = values.reshape(shape)
        if k > 4:
            return v.sum(axis=axis + 1)
        # a few terms: added one slice at a time, the same order as the sum's (first term,
        # then each next), bit for bit, without a reduction over a 2-long axis (the FPN's
        # top-down backward, 4 x 32 x 32 x 32: 0.36 -> 0.06 ms)
        take = lambda j: v[(slice(None),) * (axis + 1) + (j,)]  # noqa: E731
        out = take(0) + take(1) if k > 1 else take(0).copy()
        for j in range(2, k):
            out += take(j)
        return out
    uniq, first = np.unique(idx, return_index=True)
    sums = np.add.reduceat(values, first, axis=axis)
    shape = list(values.shape)
    shape[axis] = n
    out = np.zeros(shape, dtype=values.dtype)
    index = [slice(None)] * values.ndim
    index[axis] = uniq
    out[tuple(index)] = sums
    return out


def _check_size(size):
    return check_pair("size", size)


@quiet_math
def upsample_nearest_forward(x, size):
    """Nearest-neighbour resize to ``size`` (twin of ``F.interpolate(mode="nearest")``).

    x: (N, C, H, W) floating.
    size: int or (h, w), the output size.
    Returns (out (N, C, h, w), UpsampleNearestCache).
    """
    x = _check_nearest_input(x)
    return _upsample_nearest_forward(x, _check_size(size))


def _upsample_nearest_forward(x, size):
    """:func:`upsample_nearest_forward` without the checks (for the stages): size (h, w)."""
    cache = _upsample_nearest_cache(x, size)
    if tuple(size) == x.shape[2:]:  # (the transform's masks at scale 1) a copy: the gather's values
        out = x.copy()
    else:
        out = x[:, :, cache.rows[:, None], cache.cols[None, :]]
    return out, cache


def _upsample_nearest_cache(x, size):
    """The :class:`UpsampleNearestCache` of ``upsample_nearest_forward(x, size)``, without the
    upsampled map (for a caller that adds it in place, :func:`_add_upsampled_nearest`)."""
    h, w = size
    N, C, H, W = x.shape
    return UpsampleNearestCache(_nearest_index(H, h), _nearest_index(W, w), x.shape, x.dtype)


def _add_upsampled_nearest(dst, x):
    """``dst += upsample_nearest(x, dst.shape[-2:])`` in place (the FPN's top-down sum into
    the lateral map it owns), no cache; returns dst. The same sums as
    ``dst + upsample_nearest_forward(x, ...)`` bit for bit (one float addition per value);
    an exact 2x upsampling (the FPN's, on sizes that are multiples of 32) repeats each
    column of ``x`` twice and adds that to both rows of each pair: 256 x 200 x 200, 6.6 ms
    against 17 ms for ``x`` broadcast over each 2 x 2 block (an inner loop of 2) and 16 ms
    for the gather alone (one thread, CPU time)."""
    N, C, h, w = dst.shape
    H, W = x.shape[2:]
    if (h, w) == (2 * H, 2 * W):
        wide = np.repeat(x, 2, axis=3)  # (N, C, H, w): x's columns, each twice
        dst.reshape(N, C, H, 2, w)[...] += wide[:, :, :, None, :]
    else:
        dst += _upsample_nearest_forward(x, (h, w))[0]
    return dst


def _check_nearest_input(x):
    x = check_array("x", x, shape=("N", "C", "H", "W"), dtype_kind="f")
    if x.shape[2] == 0 or x.shape[3] == 0:
        raise ValueError(f"x must have H, W >= 1, got shape {x.shape}")
    return x


@quiet_math
def upsample_nearest_backward(dout, cache):
    """Adjoint of ``upsample_nearest_forward``.

    dout: (N, C, h, w), x's dtype. cache: UpsampleNearestCache.
    Returns dx (N, C, H, W): each input pixel gets the sum of dout over the
    output pixels that copied it (0 if none did, when downsampling).
    """
    if not isinstance(cache, UpsampleNearestCache):
        raise TypeError(f"cache must be an UpsampleNearestCache, got {type(cache).__name__}")
    n, c, big_h, big_w = cache.x_shape
    dout = check_array("dout", dout, shape=(n, c, len(cache.rows), len(cache.cols)),
                       dtype_kind="f")
    check_same_dtype(x=np.empty(0, cache.dtype), dout=dout)
    return _upsample_nearest_backward(dout, cache)


def _upsample_nearest_backward(dout, cache):
    """:func:`upsample_nearest_backward` without the checks (for the stages)."""
    big_h, big_w = cache.x_shape[2:]
    d = _sum_into(dout, cache.rows, big_h, axis=2)
    return _sum_into(d, cache.cols, big_w, axis=3)


@quiet_math
def upsample_nearest_naive(x, size):
    """Loop reference of ``upsample_nearest_forward``: x (N, C, H, W) -> (N, C, h, w)."""
    x = _check_nearest_input(x)
    h, w = _check_size(size)
    n, c, big_h, big_w = x.shape
    out = np.empty((n, c, h, w), dtype=x.dtype)
    def source(i, n_in, n_out):  # torch's nearest_idx, one index at a time
        if n_out == n_in:
            return i
        if n_out == 2 * n_in:
            return i >> 1
        scale = np.float32(n_in) / np.float32(n_out)
        return min(int(np.floor(np.float32(i) * scale)), n_in - 1)

    for i in range(h):
        for j in range(w):
            out[:, :, i, j] = x[:, :, source(i, big_h, h), source(j, big_w, w)]
    return out


def _check_bilinear_input(x):
    x = check_array("x", x, dtype_kind="f")
    if x.ndim < 2:
        raise ValueError(f"x must have shape (*, H, W) with at least 2 dimensions, got {x.shape}")
    if x.shape[-2] == 0 or x.shape[-1] == 0:
        raise ValueError(f"x must have H, W >= 1, got shape {x.shape}")
    return x


@quiet_math
def resize_bilinear_forward(x, size):
    """Bilinear resize of the LAST TWO axes to ``size`` (align_corners=False).

    Twin of ``F.interpolate(x, size, mode="bilinear", align_corners=False)``
    (no antialias), but any leading shape is allowed: (N, C, H, W) feature
    maps, (C, H, W) images, (H, W) masks.
    x: (*, H, W) floating.
    size: int or (h, w).
    Returns (out (*, h, w) in x's dtype, ResizeBilinearCache).
    """
    x = _check_bilinear_input(x)
    return _resize_bilinear_forward(x, _check_size(size))


def _resize_bilinear_forward(x, size):
    """:func:`resize_bilinear_forward` without the checks (for the stages): size (h, w)."""
    h, w = size
    rows = _bilinear_taps(x.shape[-2], h, x.dtype)
    cols = _bilinear_taps(x.shape[-1], w, x.dtype)
    if (h, w) == x.shape[-2:]:
        # same size: a copy, as torch's CPU kernel does (weights 1 and 0: the formula below
        # gives the same values, but for -0.0 next to a positive value, made +0.0, and a
        # non-finite neighbour, made NaN by its weight 0). The shapes model's transform
        # (128 -> 128) spends 1.5 ms a step less.
        return x.copy(), ResizeBilinearCache(rows, cols, x.shape)
    t = x[..., rows.i0, :] * rows.w0[:, None] + x[..., rows.i1, :] * rows.w1[:, None]
    out = t[..., cols.i0] * cols.w0 + t[..., cols.i1] * cols.w1
    return out, ResizeBilinearCache(rows, cols, x.shape)


@quiet_math
def resize_bilinear_backward(dout, cache):
    """Adjoint of ``resize_bilinear_forward``.

    dout: (*, h, w), x's dtype. cache: ResizeBilinearCache.
    Returns dx (*, H, W).
    """
    if not isinstance(cache, ResizeBilinearCache):
        raise TypeError(f"cache must be a ResizeBilinearCache, got {type(cache).__name__}")
    lead, (big_h, big_w) = cache.x_shape[:-2], cache.x_shape[-2:]
    want = tuple(lead) + (len(cache.rows.i0), len(cache.cols.i0))
    dout = check_array("dout", dout, shape=want, dtype_kind="f")
    check_same_dtype(x=cache.rows.w0, dout=dout)
    cols, rows = cache.cols, cache.rows
    ndim = dout.ndim
    dt_cols = (_sum_into(dout * cols.w0, cols.i0, big_w, axis=ndim - 1)
               + _sum_into(dout * cols.w1, cols.i1, big_w, axis=ndim - 1))
    return (_sum_into(dt_cols * rows.w0[:, None], rows.i0, big_h, axis=ndim - 2)
            + _sum_into(dt_cols * rows.w1[:, None], rows.i1, big_h, axis=ndim - 2))


@quiet_math
def resize_bilinear(x, size):
    """``resize_bilinear_forward`` without the cache, for images and masks.

    x: (*, H, W) floating (cast a bool mask to float first). size: int or (h, w).
    Returns (*, h, w).
    """
    return resize_bilinear_forward(x, size)[0]


@quiet_math
def resize_bilinear_naive(x, size):
    """Loop reference of ``resize_bilinear``, written straight from torch's
    per-pixel formula (four neighbours, weights from the clamped source
    coordinate). x: (*, H, W) -> (*, h, w)."""
    x = _check_bilinear_input(x)
    h, w = _check_size(size)
    big_h, big_w = x.shape[-2:]
    out = np.empty(x.shape[:-2] + (h, w), dtype=x.dtype)
    for i in range(h):
        sy = max((i + 0.5) * big_h / h - 0.5, 0.0)
        y0 = int(sy)
        y1 = y0 + 1 if y0 < big_h - 1 else y0
        ly = sy - y0
        for j in range(w):
            sx = max((j + 0.5) * big_w / w - 0.5, 0.0)
            x0 = int(sx)
            x1 = x0 + 1 if x0 < big_w - 1 else x0
            lx = sx - x0
            out[..., i, j] = ((1 - ly) * ((1 - lx) * x[..., y0, x0] + lx * x[..., y0, x1])
                              + ly * ((1 - lx) * x[..., y1, x0] + lx * x[..., y1, x1]))
    return out
