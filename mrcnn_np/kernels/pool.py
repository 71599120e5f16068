"""Max pooling for inference as two separable passes (``ops.pool``'s inference path).

A kernel (see ``mrcnn_np.kernels``): no checks. Tested against ``ops.pool.max_pool2d_naive``
(``tests/test_inference_paths.py``).
"""
from __future__ import annotations

import numpy as np

from . import arena

__all__ = ["max_pool2d_separable", "separable_taps"]


def separable_taps(n, k, s, p, n_out):
    """[(tap, first output, end output)] along one axis: outputs o whose tap t reads the
    input index o*s + t - p inside 0..n-1; the tap t = p first (it covers every output
    unless the kernel is even and p = k/2: then None)."""
    spans = []
    for t in [p] + [t for t in range(k) if t != p]:
        o0 = max(0, -(-(p - t) // s))
        o1 = min(n_out, (n - 1 + p - t) // s + 1)
        if o1 > o0:
            spans.append((t, o0, o1))
    if not spans or spans[0][1:] != (0, n_out):
        return None
    return spans


def max_pool2d_separable(x, kernel_size, stride, padding, out_hw, reuse=True):
    """Max pooling of x (N, C, H, W) -> (N, C, Ho, Wo) for inference, padding -inf; None when
    the split does not apply (an even kernel padded by half: the caller's path).

    A KH x KW window maximum is the maximum over KH rows of the maxima over KW columns, so
    the columns are pooled first (KW strided slices of x, each over the outputs whose tap
    lies inside the image: the -inf padding is never written) and then the rows of that (KH
    slices). The values of :func:`max_pool2d_naive` (a maximum is exact; a NaN in a window
    gives NaN, as ``np.maximum``), except possibly the sign of a zero maximum where a window
    holds both -0.0 and +0.0. ResNet's stem pool (3x3, stride 2, padding 1) of 1 x 64 x 400
    x 400 float32: 15 ms against 32 ms for the stride phases of the padded input and nine
    slice maxima (one thread, CPU time, paired). The outputs come from ``kernels.arena``
    unless ``reuse`` is False."""
    alloc = arena.empty if reuse else np.empty
    N, C, H, W = x.shape
    (kh, kw), (sh, sw), (ph, pw), (ho, wo) = kernel_size, stride, padding, out_hw
    cols = separable_taps(W, kw, sw, pw, wo)
    rows = separable_taps(H, kh, sh, ph, ho)
    if cols is None or rows is None:
        return None
    m = alloc((N, C, H, wo), x.dtype)  # maxima over the columns of each window
    for i, (q, j0, j1) in enumerate(cols):
        c0 = j0 * sw + q - pw
        src = x[:, :, :, c0:c0 + sw * (j1 - j0 - 1) + 1:sw]
        if i == 0:
            np.copyto(m, src)
        else:
            np.maximum(m[:, :, :, j0:j1], src, out=m[:, :, :, j0:j1])
    out = alloc((N, C, ho, wo), x.dtype)
    for i, (p, i0, i1) in enumerate(rows):
        r0 = i0 * sh + p - ph
        src = m[:, :, r0:r0 + sh * (i1 - i0 - 1) + 1:sh]
        if i == 0:
            np.copyto(out, src)
        else:
            np.maximum(out[:, :, i0:i1], src, out=out[:, :, i0:i1])
    return out
