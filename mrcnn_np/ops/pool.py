"""Max pooling, forward and backward (torch's ``F.max_pool2d`` semantics).

Shape shorthand: N images, C channels, H x W input, Ho x Wo output,
KH x KW kernel, SH x SW stride, PH x PW padding.

    Ho = floor((H + 2 PH - KH) / SH) + 1        (likewise Wo; ceil_mode=False)

Padding is -inf, so a padded cell never wins. Ties go to the FIRST maximum in
the window's row-major scan order, as torch does, and only that element
receives the gradient. A NaN in a window wins the window (it propagates), as
in torch.

In Mask R-CNN's FPN, P6 is ``max_pool2d(P5, kernel_size=1, stride=2)``: a plain
subsampling of every other row and column.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .._checks import check_array, check_pair


class MaxPool2dCache(NamedTuple):
    """What ``max_pool2d_backward`` needs.

    argmax: (N, C, Ho, Wo) int64, flat index ``i * KW + j`` of the winning
        kernel offset (i down, j right) inside each window.
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


def max_pool2d_forward(x, *, kernel_size, stride=None, padding=0):
    """Max pooling over KH x KW windows (twin of torch ``F.max_pool2d``).

    x: (N, C, H, W) floating.
    kernel_size: int or (KH, KW).
    stride: int or (SH, SW); None means kernel_size (torch's default).
    padding: int or (PH, PW), each at most half the kernel; padded cells are -inf.
    Returns (out (N, C, Ho, Wo) in x's dtype, MaxPool2dCache).

    Vectorised: one pass per kernel offset (KH*KW passes), each over all
    windows at once.
    """
    x, (kh, kw), (sh, sw), (ph, pw), (ho, wo) = _pool_params(x, kernel_size, stride, padding)
    n, c, h, w = x.shape
    if ph or pw:
        xp = np.full((n, c, h + 2 * ph, w + 2 * pw), -np.inf, dtype=x.dtype)
        xp[:, :, ph:ph + h, pw:pw + w] = x
    else:
        xp = x
    out = None
    argmax = np.zeros((n, c, ho, wo), dtype=np.int64)
    for i in range(kh):
        for j in range(kw):
            v = xp[:, :, i:i + sh * (ho - 1) + 1:sh, j:j + sw * (wo - 1) + 1:sw]
            if out is None:
                out = v.copy()
                continue
            # strictly greater keeps the first maximum; a NaN wins once and stays
            better = (v > out) | (np.isnan(v) & ~np.isnan(out))
            out = np.where(better, v, out)
            argmax[better] = i * kw + j
    cache = MaxPool2dCache(argmax, x.shape, x.dtype, (kh, kw), (sh, sw), (ph, pw))
    return out, cache


def max_pool2d_backward(dout, cache):
    """Gradient of ``max_pool2d_forward``: each window's dout goes to its winner.

    dout: (N, C, Ho, Wo), dtype of the forward input.
    cache: MaxPool2dCache from the forward.
    Returns dx (N, C, H, W). Overlapping windows (stride < kernel) add up.
    """
    if not isinstance(cache, MaxPool2dCache):
        raise TypeError(f"cache must be a MaxPool2dCache, got {type(cache).__name__}")
    dout = check_array("dout", dout, shape=cache.argmax.shape, dtype_kind="f")
    n, c, h, w = cache.x_shape
    (kh, kw), (sh, sw), (ph, pw) = cache.kernel_size, cache.stride, cache.padding
    _, _, ho, wo = dout.shape
    dxp = np.zeros((n, c, h + 2 * ph, w + 2 * pw), dtype=np.result_type(dout.dtype, cache.dtype))
    for i in range(kh):
        for j in range(kw):
            hit = cache.argmax == i * kw + j
            dxp[:, :, i:i + sh * (ho - 1) + 1:sh, j:j + sw * (wo - 1) + 1:sw] += np.where(hit, dout, 0)
    return dxp[:, :, ph:ph + h, pw:pw + w].copy() if (ph or pw) else dxp


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
                    best, best_idx = -np.inf, -1
                    for i in range(kh):
                        for j in range(kw):
                            y, xx = oy * sh - ph + i, ox * sw - pw + j
                            if not (0 <= y < h and 0 <= xx < w):
                                continue
                            v = x[b, ch, y, xx]
                            if best_idx < 0 or v > best or (np.isnan(v) and not np.isnan(best)):
                                best, best_idx = v, y * w + xx
                    out[b, ch, oy, ox] = best
                    idx[b, ch, oy, ox] = best_idx
    return out, idx
