"""Max pooling, forward and backward (torch's ``F.max_pool2d`` semantics).

Shape shorthand: N images, C channels, H x W input, Ho x Wo output,
KH x KW kernel, SH x SW stride, PH x PW padding.

    Ho = floor((H + 2 PH - KH) / SH) + 1        (likewise Wo; ceil_mode=False)

Padding is -inf, so a padded cell never wins. Ties go to the FIRST maximum in
the window's row-major scan order, as torch does, and only that element
receives the gradient. Two corner cases follow torch's CPU loop
(``if val > maxval or isnan(val)``, starting from the first in-bounds cell):
a NaN in a window wins the window (it propagates) and the LAST NaN in scan
order gets the gradient; a window whose real cells are all -inf gives -inf and
its first in-bounds cell gets the gradient (never a padded cell).

In Mask R-CNN's FPN, P6 is ``max_pool2d(P5, kernel_size=1, stride=2)``: a plain
subsampling of every other row and column.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .._checks import check_array, check_pair, check_same_dtype, quiet_math
from ..kernels.pool import max_pool2d_separable
from .activations import keep_where  # kernels.elementwise.keep_where (ops.activations imports the kernel)


class MaxPool2dCache(NamedTuple):
    """What ``max_pool2d_backward`` needs.

    argmax: (N, C, Ho, Wo) int16 (int32 for kernels of more than 32767
        cells), flat index ``i * KW + j`` of the winning kernel offset (i down,
        j right) inside each window.
    x_shape: (N, C, H, W) of the input.
    dtype: input dtype.
    kernel_size, stride, padding: (h, w) pairs.
    """

    argmax: np.ndarray
    x_shape: tuple
    dtype: np.dtype
    kernel_size: tuple
    stride: tuple
    padding: tuple


def _phase_shape(x_shape, kernel_size, stride, padding):
    """Rows/cols of each stride phase: the padded input, rounded up to a
    multiple of the stride and large enough for every window."""
    (_, _, h, w), (kh, kw), (sh, sw), (ph, pw) = x_shape, kernel_size, stride, padding
    hq = -(-max(h + 2 * ph, kh) // sh) + (kh - 1) // sh + 1
    wq = -(-max(w + 2 * pw, kw) // sw) + (kw - 1) // sw + 1
    return hq, wq


def _window_views(xs, kernel_size, stride, out_hw):
    """One view per kernel offset (i, j), in row-major order, each (N, C, Ho, Wo).

    xs: (SH, SW, N, C, Hq, Wq), the stride phases of the padded input: element
    (a, b, n, c, q, r) is padded pixel (q * SH + a, r * SW + b). Window (oy, ox)
    reads padded pixel (oy * SH + i, ox * SW + j) = phase (i % SH, j % SW) at
    (oy + i // SH, ox + j // SW), so every view is a contiguous slice.
    """
    (kh, kw), (sh, sw), (ho, wo) = kernel_size, stride, out_hw
    return [xs[i % sh, j % sw, :, :, i // sh:i // sh + ho, j // sw:j // sw + wo]
            for i in range(kh) for j in range(kw)]


def _pool_params(x, kernel_size, stride, padding):
    x = check_array("x", x, shape=("N", "C", "H", "W"), dtype_kind="f")
    kh, kw = check_pair("kernel_size", kernel_size)
    sh, sw = (kh, kw) if stride is None else check_pair("stride", stride)
    ph, pw = check_pair("padding", padding, minimum=0)
    if ph > kh // 2 or pw > kw // 2:
        raise ValueError(
            f"padding must be at most half the kernel_size {(kh, kw)}, got {(ph, pw)}"
        )
    _, _, h, w = x.shape
    if h + 2 * ph < kh or w + 2 * pw < kw:
        raise ValueError(
            f"kernel_size {(kh, kw)} is larger than the padded input "
            f"{(h + 2 * ph, w + 2 * pw)} (x has shape {x.shape}, padding {(ph, pw)})"
        )
    ho = (h + 2 * ph - kh) // sh + 1
    wo = (w + 2 * pw - kw) // sw + 1
    return x, (kh, kw), (sh, sw), (ph, pw), (ho, wo)


@quiet_math
def max_pool2d_forward(x, *, kernel_size, stride=None, padding=0):
    """Max pooling over KH x KW windows (twin of torch ``F.max_pool2d``).

    x: (N, C, H, W) floating.
    kernel_size: int or (KH, KW).
    stride: int or (SH, SW); None means kernel_size (torch's default).
    padding: int or (PH, PW), each at most half the kernel; padded cells are -inf.
    Returns (out (N, C, Ho, Wo) in x's dtype, MaxPool2dCache).

    Vectorised: the padded input is split once into its SH x SW stride phases,
    so each of the KH*KW kernel offsets is a contiguous slice; one pass per
    offset takes the running maximum, and a second pass, from the last offset
    to the first, records the first offset that attains it.
    """
    x, ksize, strides, pads, _ = _pool_params(x, kernel_size, stride, padding)
    return _max_pool2d_forward(x, ksize, strides, pads)


def _max_pool2d_forward(x, kernel_size, stride, padding):
    """:func:`max_pool2d_forward` without the checks (for the stages): (h, w) pairs."""
    n, c, h, w = x.shape
    ksize, strides, pads = kernel_size, stride, padding
    (kh, kw), (sh, sw), (ph, pw) = ksize, strides, pads
    ho, wo = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
    if kh == kw == 1:  # a plain subsampling (FPN's P6): no window, no phases
        out = x[:, :, :sh * (ho - 1) + 1:sh, :sw * (wo - 1) + 1:sw].copy()
        return out, MaxPool2dCache(np.zeros(out.shape, np.int16), x.shape, x.dtype, ksize,
                                   strides, pads)
    out, views = _max_pool2d(x, ksize, strides, pads, keep_views=True)
    idt = np.int16 if kh * kw < 2 ** 15 else np.int32
    argmax = np.zeros((n, c, ho, wo), dtype=idt)
    taken = views[0] == out  # the first offset that attains the maximum wins
    for k in range(1, len(views)):  # (a masked copy per offset is 4x slower: 0.86 ms at 4x8x64x64)
        hit = np.greater(views[k] == out, taken)  # attains it, and no earlier offset did
        taken |= hit
        argmax += np.multiply(hit, idt(k), dtype=idt)
    if np.isneginf(out).any():  # all real cells -inf: torch keeps its first in-bounds cell
        np.copyto(argmax, _first_inbounds_offset(x.shape, ksize, strides, pads, (ho, wo)),
                  where=np.isneginf(out))
    if np.isnan(out).any():  # torch's `val > maxval or isnan(val)`: the last NaN wins
        for k, v in enumerate(views):
            np.copyto(argmax, k, where=np.isnan(v))
    cache = MaxPool2dCache(argmax, x.shape, x.dtype, ksize, strides, pads)
    return out, cache


def _max_pool2d(x, kernel_size, stride, padding, keep_views=False, reuse=True):
    """The pooled maximum alone (inference: no winner indices, no cache): out (N, C, Ho, Wo).
    (h, w) pairs, unchecked. keep_views: also return the KH*KW window views (the forward
    reads them again to find the winners); without, ``kernels.pool.max_pool2d_separable`` (the same
    values, up to the sign of a zero maximum)."""
    n, c, h, w = x.shape
    (kh, kw), (sh, sw), (ph, pw) = kernel_size, stride, padding
    ho, wo = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
    if kh == kw == 1:
        out = x[:, :, :sh * (ho - 1) + 1:sh, :sw * (wo - 1) + 1:sw].copy()
        return (out, None) if keep_views else out
    if not keep_views:  # the maximum alone: columns, then rows (kernels.pool)
        out = max_pool2d_separable(x, kernel_size, stride, padding, (ho, wo), reuse)
        if out is not None:
            return out
    hq, wq = _phase_shape(x.shape, kernel_size, stride, padding)
    buf = np.full((n, c, hq * sh, wq * sw), -np.inf, dtype=x.dtype)
    buf[:, :, ph:ph + h, pw:pw + w] = x
    xs = np.ascontiguousarray(buf.reshape(n, c, hq, sh, wq, sw).transpose(3, 5, 0, 1, 2, 4))
    views = _window_views(xs, kernel_size, stride, (ho, wo))
    out = views[0].copy()
    for v in views[1:]:
        np.maximum(out, v, out=out)  # propagates NaN, as torch
    return (out, views) if keep_views else out


def _first_inbounds_offset(x_shape, kernel_size, stride, padding, out_hw):
    """(Ho, Wo) flat kernel offset ``i * KW + j`` of each window's first
    in-bounds cell in row-major scan order (its top-left unpadded cell)."""
    (kh, kw), (sh, sw), (ph, pw), (ho, wo) = kernel_size, stride, padding, out_hw
    i0 = np.maximum(ph - np.arange(ho) * sh, 0)
    j0 = np.maximum(pw - np.arange(wo) * sw, 0)
    return i0[:, None] * kw + j0[None, :]


@quiet_math
def max_pool2d_backward(dout, cache):
    """Gradient of ``max_pool2d_forward``: each window's dout goes to its winner.

    dout: (N, C, Ho, Wo), the dtype of the forward input (else TypeError).
    cache: MaxPool2dCache from the forward.
    Returns dx (N, C, H, W). Overlapping windows (stride < kernel) add up.
    """
    if not isinstance(cache, MaxPool2dCache):
        raise TypeError(f"cache must be a MaxPool2dCache, got {type(cache).__name__}")
    dout = check_array("dout", dout, shape=cache.argmax.shape, dtype_kind="f")
    check_same_dtype(x=np.empty(0, cache.dtype), dout=dout)
    return _max_pool2d_backward(dout, cache)


def _max_pool2d_backward(dout, cache):
    """:func:`max_pool2d_backward` without the checks (for the stages)."""
    n, c, h, w = cache.x_shape
    (kh, kw), (sh, sw), (ph, pw) = cache.kernel_size, cache.stride, cache.padding
    ho, wo = dout.shape[2:]
    if kh == kw == 1:
        dx = np.zeros((n, c, h, w), dtype=dout.dtype)
        dx[:, :, :sh * (ho - 1) + 1:sh, :sw * (wo - 1) + 1:sw] = dout
        return dx
    hq, wq = _phase_shape(cache.x_shape, cache.kernel_size, cache.stride, cache.padding)
    dxs = np.zeros((sh, sw, n, c, hq, wq), dtype=dout.dtype)
    for k, view in enumerate(_window_views(dxs, cache.kernel_size, cache.stride, (ho, wo))):
        view += keep_where(cache.argmax == k, dout)  # np.where(..., dout, 0) bit for bit, faster
    dxp = dxs.transpose(2, 3, 4, 0, 5, 1).reshape(n, c, hq * sh, wq * sw)
    return np.ascontiguousarray(dxp[:, :, ph:ph + h, pw:pw + w])


@quiet_math
def max_pool2d_naive(x, *, kernel_size, stride=None, padding=0):
    """Loop reference of ``max_pool2d_forward`` (for tests and notebooks).

    x: (N, C, H, W). Returns (out (N, C, Ho, Wo), argmax (N, C, Ho, Wo)) where
    argmax holds the flat index ``row * W + col`` of the winner in the
    UNPADDED input (as torch's ``return_indices=True``).
    """
    x, (kh, kw), (sh, sw), (ph, pw), (ho, wo) = _pool_params(x, kernel_size, stride, padding)
    n, c, h, w = x.shape
    out = np.empty((n, c, ho, wo), dtype=x.dtype)
    idx = np.empty((n, c, ho, wo), dtype=np.int64)
    for b in range(n):
        for ch in range(c):
            for oy in range(ho):
                for ox in range(wo):
                    # torch's CPU loop: start at the first in-bounds cell with
                    # -inf, take a cell if it is larger or NaN
                    y0, x0 = max(oy * sh - ph, 0), max(ox * sw - pw, 0)
                    best, best_idx = -np.inf, y0 * w + x0
                    for i in range(kh):
                        for j in range(kw):
                            y, xx = oy * sh - ph + i, ox * sw - pw + j
                            if not (0 <= y < h and 0 <= xx < w):
                                continue
                            v = x[b, ch, y, xx]
                            if v > best or np.isnan(v):
                                best, best_idx = v, y * w + xx
                    out[b, ch, oy, ox] = best
                    idx[b, ch, oy, ox] = best_idx
    return out, idx
