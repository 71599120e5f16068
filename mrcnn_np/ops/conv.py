"""2-D convolution and transposed convolution: naive loops and im2col + GEMM.

Shape shorthand
---------------
N images, C input channels, F filters (output channels), H, W input height and
width, KH, KW kernel height and width, Ho, Wo output height and width,
K = C * KH * KW the length of one unrolled receptive field.

Layouts are torch's, so weights move over unchanged:

- ``conv2d``: x (N, C, H, W), w (F, C, KH, KW), b (F,), out (N, F, Ho, Wo) with
  ``Ho = (H + 2*ph - dh*(KH - 1) - 1) // sh + 1`` (likewise Wo). As in every deep
  learning library this is a cross-correlation (the kernel is not flipped)::

      out[n, f, i, j] = b[f] + sum_{c, p, q} w[f, c, p, q]
                                * xpad[n, c, i*sh + p*dh, j*sw + q*dw]

- ``conv_transpose2d`` (torch's ``ConvTranspose2d``): x (N, C_in, H, W),
  w (C_in, C_out, KH, KW), out (N, C_out, Ho, Wo) with
  ``Ho = (H - 1)*sh - 2*ph + dh*(KH - 1) + 1 + output_padding``. It is the
  adjoint of ``conv2d`` with respect to its input: every input pixel scatters a
  copy of its kernel, scaled by its value, into the output::

      full[n, o, i*sh + p*dh, j*sw + q*dw] += x[n, c, i, j] * w[c, o, p, q]
      out = full[:, :, ph:ph + Ho, pw:pw + Wo] + b

The fast paths unroll the receptive fields of the padded input into columns
(im2col) so that the convolution is a matrix product ``w.reshape(F, K) @ cols``;
the backward scatters a matrix of column gradients back onto the image (col2im:
a loop over the KH*KW kernel taps, each adding one strided slice).
``im2col``/``col2im`` are the plain, unblocked versions, kept for teaching and tests.

Fast paths and why each exists
------------------------------
Each one is checked against the naive loops in ``tests/test_conv.py`` (also with
tiny block budgets, which send small problems through every path). Speed-ups are
float32, min of repeats, same process, 2-core build machine (shared), path on vs
off; ``benchmarks/bench_conv.py`` gives the ratios to GEMM.

- 1x1, stride 1, no padding: one GEMM on ``x`` itself, no copy.
- Blocked engine (:func:`_gemm_im2col`): columns are unrolled in cache-sized
  blocks of output rows (or of whole small images) into one reused buffer, never
  as the whole matrix: 1.09x (256x64x64, 3x3) and 1.29x (64x128x128, 3x3) on the
  forward against one full im2col matrix.
- Stride phases (:func:`_phases`): a strided conv first splits the padded input
  into its sh*sw phases, so every tap copy has a unit inner stride: the 7x7
  stride-2 stem (3x256x256) unrolls its columns in 0.48 ms against 0.90 ms for
  one strided-view copy. Each phase is cut straight from x with only its zero
  border written (no padded copy of x first): the four phases of 128x200x200
  (layer2.0.conv2, 3x3 stride 2) in 7.8 ms against 19.6 ms; that conv's
  backward 1.22x to 1.33x, forward 1.06x to 1.11x.
- Reused column buffer (:func:`_scratch`): the block buffer of the engines is
  kept between calls (one per thread, up to ``4 * _BLOCK_BYTES``) instead of a
  fresh ``np.empty`` per call, whose pages the kernel faults in and zeroes again
  whenever malloc hands back fresh memory (it depends on what was allocated and
  freed in between, so the gain shows in a sequence of different ops, not in a
  loop over one conv): layer2.0.conv2 with forward and backward alternating,
  forward 1.18x to 1.25x, backward 1.12x (page faults 7600 -> 4200 per pair);
  ``_REUSE = False`` switches it off (for A/B timing).
  Both changes together (old vs new module, same process): layer2.0.conv2
  forward 1.08x, backward 1.41x; the other benchmark shapes within 3 %; the
  whole ResNet-50-FPN forward at 800x800 1.03x to 1.07x (59 % -> 62-64 % of
  the GEMM rate).
- Row unrolling for large stride-1 maps (:func:`_gemm_rows`): KW shifted copies,
  KH GEMMs on strided views, padding written in place: forward 1.01x / 1.16x,
  backward 1.05x / 1.24x (same two shapes) against the per-tap blocked engine.
  Its partial-sum buffer is a reused scratch buffer too: a fresh 4 MB
  ``np.empty`` per call cost 1-2 ms of page faults on 64x128x128 (forward
  1.27-1.43x -> 1.15-1.18x of its GEMM).
- Stride-1 input gradient as a forward conv of ``dout`` with the flipped kernel
  instead of col2im (KH*KW slice additions): 1.16x, 1.38x, and 1.27x for the
  mask head's 64x256x14x14.
- Tiling transposed conv (stride = kernel, the mask head's 2x2 upsampler): one
  GEMM and one interleaving copy per block of images: backward 1.20x, forward
  1.07x (64x256x14x14) against the col2im path. The interleave is one copy per
  kernel tap (unit-stride source rows) rather than one 6-D transposed copy:
  forward 85 -> 65 ms (1.31x).
- Weight gradient of a 1x1 conv over a batch of small maps as one GEMM over all
  images (:func:`_batched_outer`): 1.2x to 1.5x (e.g. 4x2048x4x4 -> 256) against
  per-image products summed.

Tried and dropped: copying on worker threads (no gain on the shared 2 cores);
a "wide-row" forward (pad once, each tap a contiguous run of ``Ho*Wp`` columns,
crop the ``Wp - Wo`` junk columns afterwards), with or without an im2col copy:
no faster on 256x64x64 and 1.15x to 1.3x slower on the other two benchmark shapes.
Also dropped: splitting stride-2 float32 columns by reading each pair as one
uint64 and keeping a half by an integer cast (2x faster on a contiguous
source, no faster than the strided copy once rows are strided too).
"""
from __future__ import annotations

import threading
from typing import NamedTuple

import numpy as np
from numpy.lib.stride_tricks import as_strided

from .._checks import check_array, check_pair, check_same_dtype

__all__ = [
    "Conv2dCache",
    "ConvTranspose2dCache",
    "conv2d_forward",
    "conv2d_backward",
    "conv2d_naive",
    "conv2d_backward_naive",
    "conv_transpose2d_forward",
    "conv_transpose2d_backward",
    "conv_transpose2d_naive",
    "conv_output_size",
    "im2col",
    "col2im",
]


class Conv2dCache(NamedTuple):
    """What ``conv2d_backward`` needs.

    x: the input (N, C, H, W) (a reference, not a copy).
    w: the weight (F, C, KH, KW).
    has_bias: whether a bias was given (then ``db`` is returned, else None).
    stride, padding, dilation: (h, w) pairs.
    """

    x: np.ndarray
    w: np.ndarray
    has_bias: bool
    stride: tuple
    padding: tuple
    dilation: tuple


class ConvTranspose2dCache(NamedTuple):
    """What ``conv_transpose2d_backward`` needs.

    x: the input (N, C_in, H, W) (a reference, not a copy).
    w: the weight (C_in, C_out, KH, KW).
    has_bias: whether a bias was given.
    stride, padding, dilation: (h, w) pairs.
    out_hw: (Ho, Wo) of the output (output_padding included).
    """

    x: np.ndarray
    w: np.ndarray
    has_bias: bool
    stride: tuple
    padding: tuple
    dilation: tuple
    out_hw: tuple


# --------------------------------------------------------------------------- checks


def conv_output_size(size, kernel, *, stride=1, padding=0, dilation=1):
    """Output length of a convolution along one axis.

    ``(size + 2*padding - dilation*(kernel - 1) - 1) // stride + 1``.
    """
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def _check_conv_args(x, w, b, stride, padding, dilation, *, transposed):
    x = check_array("x", x, ndim=4, dtype_kind="f")
    w = check_array("w", w, ndim=4, dtype_kind="f")
    check_same_dtype(x=x, w=w)
    stride = check_pair("stride", stride, minimum=1)
    padding = check_pair("padding", padding, minimum=0)
    dilation = check_pair("dilation", dilation, minimum=1)
    if transposed:
        if w.shape[0] != x.shape[1]:
            raise ValueError(
                f"w must have shape (C_in, C_out, KH, KW) with C_in = x.shape[1] = "
                f"{x.shape[1]} input channels, got w {w.shape} for x {x.shape}"
            )
        n_out = w.shape[1]
    else:
        if w.shape[1] != x.shape[1]:
            raise ValueError(
                f"w must have shape (F, C, KH, KW) with C = x.shape[1] = {x.shape[1]} "
                f"channels, got w {w.shape} for x {x.shape}"
            )
        n_out = w.shape[0]
    if min(w.shape) == 0:
        raise ValueError(f"w must have no empty dimension, got {w.shape}")
    if min(x.shape[1:]) == 0:  # an empty batch (N = 0, e.g. no RoIs) is fine
        raise ValueError(f"x must have non-empty C, H, W, got {x.shape}")
    if b is not None:
        b = check_array("b", b, shape=(n_out,), dtype_kind="f")
        check_same_dtype(x=x, b=b)
    return x, w, b, stride, padding, dilation


def _check_kernel_fits(x, w, padding, dilation):
    H, W = x.shape[2:]
    KH, KW = w.shape[2:]
    (ph, pw), (dh, dw) = padding, dilation
    eh, ew = dh * (KH - 1) + 1, dw * (KW - 1) + 1
    if eh > H + 2 * ph or ew > W + 2 * pw:
        raise ValueError(
            f"w kernel ({KH}, {KW}) with dilation {dilation} spans ({eh}, {ew}) pixels, "
            f"larger than the padded input ({H + 2 * ph}, {W + 2 * pw}) "
            f"(x {x.shape}, padding {padding})"
        )


# --------------------------------------------------------------------------- im2col


def _pad(x, padding):
    ph, pw = padding
    if ph == 0 and pw == 0:
        return x
    N, C, H, W = x.shape
    xp = np.zeros((N, C, H + 2 * ph, W + 2 * pw), dtype=x.dtype)
    xp[:, :, ph:ph + H, pw:pw + W] = x
    return xp


def im2col(x, kernel_size, *, stride=1, padding=0, dilation=1):
    """Unroll every receptive field of ``x`` into a column.

    x: (N, C, H, W). kernel_size, stride, padding, dilation: int or pair.
    Returns cols (N, C*KH*KW, Ho*Wo), C-contiguous, rows ordered (c, p, q) as
    ``w.reshape(F, -1)``, so that ``w.reshape(F, -1) @ cols[n]`` is the
    convolution of image n, flattened to (F, Ho*Wo).
    For a 1x1 kernel with stride 1 and no padding the result is a view of x.
    """
    x = check_array("x", x, ndim=4)
    KH, KW = check_pair("kernel_size", kernel_size)
    stride = check_pair("stride", stride)
    padding = check_pair("padding", padding, minimum=0)
    dilation = check_pair("dilation", dilation)
    N, C, H, W = x.shape
    (sh, sw), (dh, dw) = stride, dilation
    Ho = conv_output_size(H, KH, stride=sh, padding=padding[0], dilation=dh)
    Wo = conv_output_size(W, KW, stride=sw, padding=padding[1], dilation=dw)
    if Ho < 1 or Wo < 1:
        raise ValueError(
            f"kernel_size ({KH}, {KW}) does not fit x {x.shape} with padding {padding}"
        )
    if KH == 1 and KW == 1 and padding == (0, 0):
        if stride == (1, 1):
            return np.ascontiguousarray(x).reshape(N, C, H * W)
        return np.ascontiguousarray(x[:, :, ::sh, ::sw][:, :, :Ho, :Wo]).reshape(N, C, Ho * Wo)
    xp = _pad(x, padding)
    sN, sC, sH, sW = xp.strides
    view = as_strided(
        xp,
        shape=(N, C, KH, KW, Ho, Wo),
        strides=(sN, sC, dh * sH, dw * sW, sh * sH, sw * sW),
        writeable=False,
    )
    cols = np.empty((N, C, KH, KW, Ho, Wo), dtype=x.dtype)
    np.copyto(cols, view)
    return cols.reshape(N, C * KH * KW, Ho * Wo)


def col2im(cols, x_shape, kernel_size, *, stride=1, padding=0, dilation=1):
    """Adjoint of :func:`im2col`: add every column back onto its receptive field.

    cols: (N, C*KH*KW, Ho*Wo). x_shape: (N, C, H, W) of the image.
    Returns (N, C, H, W); overlapping fields add up, padding is dropped.
    """
    KH, KW = check_pair("kernel_size", kernel_size)
    stride = check_pair("stride", stride)
    padding = check_pair("padding", padding, minimum=0)
    dilation = check_pair("dilation", dilation)
    N, C, H, W = (int(v) for v in x_shape)
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    Ho = conv_output_size(H, KH, stride=sh, padding=ph, dilation=dh)
    Wo = conv_output_size(W, KW, stride=sw, padding=pw, dilation=dw)
    cols = check_array("cols", cols, shape=(N, C * KH * KW, Ho * Wo))
    if KH == 1 and KW == 1 and padding == (0, 0) and stride == (1, 1):
        return cols.reshape(N, C, H, W).copy()
    c6 = cols.reshape(N, C, KH, KW, Ho, Wo)
    xp = np.zeros((N, C, H + 2 * ph, W + 2 * pw), dtype=cols.dtype)
    for p in range(KH):
        hs = slice(p * dh, p * dh + sh * (Ho - 1) + 1, sh)
        for q in range(KW):
            ws = slice(q * dw, q * dw + sw * (Wo - 1) + 1, sw)
            xp[:, :, hs, ws] += c6[:, :, p, q]
    return _crop(xp, padding, H, W)


def _batched_outer(a, b):
    """``sum_n a[n] @ b[n].T`` for a (N, M, L), b (N, K, L) -> (M, K)."""
    N, M, L = a.shape
    K = b.shape[1]
    if N == 1:
        return a[0] @ b[0].T
    if N * M * K <= a.size + b.size:  # N small products are cheaper than the copies
        return np.matmul(a, b.transpose(0, 2, 1)).sum(axis=0)
    # one GEMM over all images: (M, N*L) @ (N*L, K), at the price of two copies
    a2 = np.ascontiguousarray(a.transpose(1, 0, 2)).reshape(M, N * L)
    b2 = np.ascontiguousarray(b.transpose(1, 0, 2)).reshape(K, N * L)
    return a2 @ b2.T


def _is_tiling(KH, KW, stride, padding, dilation, out_hw, in_hw):
    """Transposed conv whose kernel stamps tile the output exactly (stride = kernel)."""
    return (stride == (KH, KW) and padding == (0, 0) and dilation == (1, 1)
            and tuple(out_hw) == (in_hw[0] * KH, in_hw[1] * KW))


def _weight_matrix(w):
    return np.ascontiguousarray(w).reshape(w.shape[0], -1)


# --------------------------------------------------------------------------- blocked GEMM engine
#
# Materialising the whole im2col matrix (C*KH*KW x Ho*Wo) costs a fresh, page-faulting
# allocation KH*KW times the size of the input: slower than the copy itself, and large
# at detection resolutions (2304 x 40000 floats for a 3x3, 256-channel conv on a
# 200x200 map). The fast paths therefore walk the output in blocks of whole output rows
# (or, when images are small, of whole images), unroll one block into a reused buffer
# of about _BLOCK_BYTES (it stays in cache) and run that block's GEMM straight into the
# result: the same arithmetic as one big GEMM with a fraction of the memory traffic.
#
# Strided convolutions first split the padded input into its stride phases
# P[a][b] = xpad[:, :, a::sh, b::sw]; every kernel tap then reads a contiguous run of
# one phase, so each copy is a plain strided-slice copy with unit inner stride.
# Stride-1 convolutions on large images copy even less (see :func:`_gemm_rows`).
# Measured speed-ups of each path: see the module docstring.

_BLOCK_BYTES = 16 * 2**20
_SCRATCH = threading.local()
_REUSE = True


def _scratch(slot, n, dtype):
    """A 1-D buffer of n elements, reused between calls on this thread (contents undefined).

    A fresh buffer of several MB is a fresh mmap: the kernel faults in and zeroes
    every page on first touch. Keeping one buffer per slot and thread pays that once.
    """
    dtype = np.dtype(dtype)
    nbytes = n * dtype.itemsize
    if not _REUSE or nbytes > 4 * _BLOCK_BYTES:
        return np.empty(n, dtype=dtype)
    store = getattr(_SCRATCH, "bufs", None)
    if store is None:
        store = _SCRATCH.bufs = {}
    raw = store.get(slot)
    if raw is None or raw.size < nbytes:
        raw = store[slot] = np.empty(nbytes, dtype=np.uint8)
    return raw[:nbytes].view(dtype)


class _Taps(NamedTuple):
    """Where each kernel tap reads in the stride phases of the padded input.

    taps: list of (p, q, a, b, oh, ow): tap (p, q) reads phase (a, b) from row oh
    and column ow on, i.e. ``p*dh = oh*sh + a`` and ``q*dw = ow*sw + b``.
    """

    taps: list
    stride: tuple


def _taps(KH, KW, stride, dilation):
    (sh, sw), (dh, dw) = stride, dilation
    taps = []
    for p in range(KH):
        oh, a = divmod(p * dh, sh)
        for q in range(KW):
            ow, b = divmod(q * dw, sw)
            taps.append((p, q, a, b, oh, ow))
    return _Taps(taps, stride)


def _phase_span(a, s, p, n, nq):
    """Phase positions t0..t1-1 (of nq) whose padded index a + s*t - p lies in 0..n-1."""
    t0 = min(nq, max(0, -((a - p) // s)))
    t1 = max(t0, min(nq, (n - 1 + p - a) // s + 1))
    return t0, t1


def _phases(x, padding, taps):
    """Contiguous stride phases {(a, b): xpad[:, :, a::sh, b::sw]} that some tap reads.

    x: the unpadded input (N, C, H, W); padding: (ph, pw). For a stride > 1 each
    phase is cut straight from x (one strided copy, zeros written only on the
    border), never from a padded copy of x.
    """
    sh, sw = taps.stride
    if (sh, sw) == (1, 1):
        return {(0, 0): _pad(x, padding)}
    N, C, H, W = x.shape
    ph, pw = padding
    Hp, Wp = H + 2 * ph, W + 2 * pw
    phases = {}
    for a, b in sorted({(a, b) for _, _, a, b, _, _ in taps.taps}):
        hq, wq = len(range(a, Hp, sh)), len(range(b, Wp, sw))
        t0, t1 = _phase_span(a, sh, ph, H, hq)
        u0, u1 = _phase_span(b, sw, pw, W, wq)
        d = np.empty((N, C, hq, wq), dtype=x.dtype)
        d[:, :, :t0] = 0
        d[:, :, t1:] = 0
        d[:, :, t0:t1, :u0] = 0
        d[:, :, t0:t1, u1:] = 0
        if t1 > t0 and u1 > u0:
            r0, c0 = a + sh * t0 - ph, b + sw * u0 - pw
            d[:, :, t0:t1, u0:u1] = x[:, :, r0:r0 + sh * (t1 - t0 - 1) + 1:sh,
                                      c0:c0 + sw * (u1 - u0 - 1) + 1:sw]
        phases[a, b] = d
    return phases


def _blocks(N, Ho, Wo, K, itemsize):
    """Split the N x Ho output rows into blocks whose unrolled columns fit the budget.

    Returns (blocks, most columns in a block); a block (n0, n1, i0, i1) is images
    n0..n1-1 and output rows i0..i1-1: one image and some rows, or whole images.
    """
    rows = max(1, _BLOCK_BYTES // max(K * Wo * itemsize, 1))
    if rows >= Ho:
        per = max(1, rows // Ho)
        blocks = [(n, min(N, n + per), 0, Ho) for n in range(0, N, per)]
        return blocks, min(N, per) * Ho * Wo
    blocks = [(n, n + 1, i, min(Ho, i + rows)) for n in range(N) for i in range(0, Ho, rows)]
    return blocks, rows * Wo


def _unroll_block(cols6, phases, taps, n0, n1, i0, i1):
    """im2col of one block, one copy per kernel tap: ``cols6[:, p, q] = window of (p, q)``.

    cols6: (C, KH, KW, nb, r, Wo) buffer for images n0..n1-1, output rows i0..i1-1;
    phases from :func:`_phases`.
    """
    Wo = cols6.shape[-1]
    for p, q, a, b, oh, ow in taps.taps:
        src = phases[a, b][n0:n1, :, oh + i0:oh + i1, ow:ow + Wo]
        np.copyto(cols6[:, p, q], src.transpose(1, 0, 2, 3))


def _scatter_block(dphases, cols6, taps, n0, n1, i0, i1):
    """col2im of one block: add ``cols6[:, p, q]`` onto the window of tap (p, q).

    dphases: {(a, b): (N, C, Hq, Wq)} accumulators, one per stride phase.
    """
    Wo = cols6.shape[-1]
    for p, q, a, b, oh, ow in taps.taps:
        dst = dphases[a, b][n0:n1, :, oh + i0:oh + i1, ow:ow + Wo]
        dst += cols6[:, p, q].transpose(1, 0, 2, 3)


def _gemm_im2col(phases, taps, shape, *, wm=None, out=None, src=None, dw=None):
    """Block by block, unroll the receptive fields into columns ``cols`` (K, block) and
    compute ``out[n][:, block] = wm @ cols`` (wm (F, K), out (N, F, Ho*Wo)) and/or
    ``dw += src[n][:, block] @ cols.T`` (src (N, F2, Ho*Wo), dw (F2, K), in place).

    shape: (N, C, KH, KW, Ho, Wo).
    """
    N, C, KH, KW, Ho, Wo = shape
    K = C * KH * KW
    dtype = next(iter(phases.values())).dtype
    blocks, ncols = _blocks(N, Ho, Wo, K, dtype.itemsize)
    buf = _scratch("cols", K * ncols, dtype)
    tmp = np.empty_like(dw) if dw is not None else None
    for n0, n1, i0, i1 in blocks:
        nb, r = n1 - n0, i1 - i0
        cols6 = buf[:K * nb * r * Wo].reshape(C, KH, KW, nb, r, Wo)
        _unroll_block(cols6, phases, taps, n0, n1, i0, i1)
        cols = cols6.reshape(K, nb * r * Wo)
        if nb == 1:
            if wm is not None:
                np.matmul(wm, cols, out=out[n0, :, i0 * Wo:i1 * Wo])
            if dw is not None:
                np.matmul(src[n0, :, i0 * Wo:i1 * Wo], cols.T, out=tmp)
                dw += tmp
        else:  # whole images side by side, columns ordered (n, i, j)
            if wm is not None:
                res = wm @ cols
                out[n0:n1] = res.reshape(-1, nb, Ho * Wo).transpose(1, 0, 2)
            if dw is not None:
                s2 = np.ascontiguousarray(src[n0:n1].transpose(1, 0, 2)).reshape(-1, nb * Ho * Wo)
                np.matmul(s2, cols.T, out=tmp)
                dw += tmp


def _use_rows(N, C, KH, KW, Ho, Wo, stride, itemsize):
    """Stride-1 convs on large images take the row-unrolled path (:func:`_gemm_rows`)."""
    return stride == (1, 1) and KH > 1 and C * KH * KW * Ho * Wo * itemsize > _BLOCK_BYTES


def _gemm_rows(x, padding, KH, KW, dilation, out_hw, *, wk=None, out=None, src=None, dwk=None):
    """Stride-1 im2col GEMMs that copy only KW (not KH*KW) shifted copies of the input.

    For a block of output rows i0..i0+r, ``Y[c, q, t, j] = xpad[n, c, i0 + t, j + q*dw]``
    (t < r + dh*(KH-1)) is KW shifted copies of the input rows. For kernel row p the
    (C*KW, r*Wo) column matrix of that row's taps is then ``Y[:, :, p*dh:p*dh + r]``, a
    strided view with no copy, and the block's output is the sum of KH GEMMs:
    ``out = sum_p wk[p] @ Y_p``. A third of the copying of im2col for a 3x3 kernel, for
    KH-1 additions of the (smaller) output block.

    The zero padding is written straight into Y (no padded copy of x is made).

    x: input (N, C, H, W); padding: (ph, pw); out_hw: (Ho, Wo).
    wk: (KH, F, C*KW) weights by kernel row, out: (N, F, Ho*Wo), written;
    src: (N, F2, Ho*Wo), dwk: (KH, F2, C*KW): ``dwk[p] += src[n][:, block] @ Y_p.T``.
    """
    N, C, H, W = x.shape
    ph, pw = padding
    Ho, Wo = out_hw
    dh, dw = dilation
    ext = dh * (KH - 1)
    rows = max(1, min(Ho, _BLOCK_BYTES // (C * KW * Wo * x.itemsize)))
    buf = _scratch("cols", C * KW * (rows + ext) * Wo, x.dtype)
    tmp = _scratch("rows_out", wk.shape[1] * rows * Wo, x.dtype) if wk is not None else None
    tmp_dw = np.empty_like(dwk[0]) if dwk is not None else None
    for n in range(N):
        for i0 in range(0, Ho, rows):
            r = min(rows, Ho - i0)
            R = r + ext
            y = buf[:C * KW * R * Wo].reshape(C, KW, R, Wo)
            # padded rows i0 .. i0+R-1 are x rows i0-ph ..; keep those inside x
            t0 = min(R, max(0, ph - i0))
            t1 = max(t0, min(R, H + ph - i0))
            y[:, :, :t0] = 0
            y[:, :, t1:] = 0
            for q in range(KW):
                # padded columns q*dw .. q*dw+Wo-1 are x columns q*dw-pw ..
                j0 = min(Wo, max(0, pw - q * dw))
                j1 = max(j0, min(Wo, W + pw - q * dw))
                yq = y[:, q, t0:t1]
                yq[:, :, :j0] = 0
                yq[:, :, j1:] = 0
                if t1 > t0 and j1 > j0:  # else this part of the block is all padding
                    np.copyto(yq[:, :, j0:j1], x[n, :, i0 + t0 - ph:i0 + t1 - ph,
                                                 j0 + q * dw - pw:j1 + q * dw - pw])
            yf = y.reshape(C * KW, R * Wo)
            row_views = [yf[:, p * dh * Wo:(p * dh + r) * Wo] for p in range(KH)]
            if wk is not None:
                o = out[n, :, i0 * Wo:(i0 + r) * Wo]
                np.matmul(wk[0], row_views[0], out=o)
                t = tmp[:wk.shape[1] * r * Wo].reshape(-1, r * Wo)
                for p in range(1, KH):
                    np.matmul(wk[p], row_views[p], out=t)
                    o += t
            if dwk is not None:
                s = src[n, :, i0 * Wo:(i0 + r) * Wo]
                for p in range(KH):
                    np.matmul(s, row_views[p].T, out=tmp_dw)
                    dwk[p] += tmp_dw


def _gemm_col2im(wmT, src, dphases, taps, shape):
    """``dphases += col2im(wmT @ src)``, block by block.

    wmT: (K, F) with K = C*KH*KW; src: (N, F, Ho*Wo); dphases: stride-phase
    accumulators of the padded image (see :func:`_phases`); shape: (N, C, KH, KW, Ho, Wo).
    """
    N, C, KH, KW, Ho, Wo = shape
    K = C * KH * KW
    blocks, ncols = _blocks(N, Ho, Wo, K, wmT.itemsize)
    buf = _scratch("cols", K * ncols, wmT.dtype)
    for n0, n1, i0, i1 in blocks:
        nb, r = n1 - n0, i1 - i0
        cols = buf[:K * nb * r * Wo].reshape(K, nb * r * Wo)
        if nb == 1:
            np.matmul(wmT, src[n0, :, i0 * Wo:i1 * Wo], out=cols)
        else:
            s2 = np.ascontiguousarray(src[n0:n1].transpose(1, 0, 2)).reshape(-1, nb * Ho * Wo)
            np.matmul(wmT, s2, out=cols)
        _scatter_block(dphases, cols.reshape(C, KH, KW, nb, r, Wo), taps, n0, n1, i0, i1)


def _zero_phases(shape, taps, dtype):
    """Zeroed accumulators for every stride phase of a padded image of ``shape``."""
    N, C, Hp, Wp = shape
    sh, sw = taps.stride
    used = sorted({(a, b) for _, _, a, b, _, _ in taps.taps})
    return {(a, b): np.zeros((N, C, len(range(a, Hp, sh)), len(range(b, Wp, sw))), dtype=dtype)
            for a, b in used}


def _assemble(dphases, shape, taps, padding, H, W):
    """Interleave the phase accumulators into the padded image and crop the padding."""
    sh, sw = taps.stride
    if (sh, sw) == (1, 1):
        dxp = dphases[0, 0]
    else:
        dxp = np.zeros(shape, dtype=next(iter(dphases.values())).dtype)
        for (a, b), d in dphases.items():
            dxp[:, :, a::sh, b::sw] = d
    return _crop(dxp, padding, H, W)


def _crop(xp, padding, H, W):
    ph, pw = padding
    if ph == 0 and pw == 0 and xp.shape[2:] == (H, W):
        return xp
    return np.ascontiguousarray(xp[:, :, ph:ph + H, pw:pw + W])


def _is_pointwise(KH, KW, stride, padding):
    return KH == 1 and KW == 1 and stride == (1, 1) and padding == (0, 0)


# --------------------------------------------------------------------------- conv2d


def conv2d_forward(x, w, b, *, stride=1, padding=0, dilation=1):
    """2-D convolution (cross-correlation), torch's ``F.conv2d`` with groups=1.

    x: (N, C, H, W) float. w: (F, C, KH, KW), same dtype. b: (F,) or None.
    stride, padding, dilation: int or (h, w) pair; padding is zeros.
    Returns out (N, F, Ho, Wo) in x's dtype and a :class:`Conv2dCache`.

    im2col + GEMM: ``out[n] = w.reshape(F, K) @ cols[n]`` with cols the unrolled
    receptive fields (see :func:`im2col`), computed in cache-sized blocks of
    output rows. A 1x1 stride-1 conv is one GEMM on x itself.
    """
    x, w, b, stride, padding, dilation = _check_conv_args(
        x, w, b, stride, padding, dilation, transposed=False
    )
    _check_kernel_fits(x, w, padding, dilation)
    N, C, H, W = x.shape
    F, _, KH, KW = w.shape
    Ho = conv_output_size(H, KH, stride=stride[0], padding=padding[0], dilation=dilation[0])
    Wo = conv_output_size(W, KW, stride=stride[1], padding=padding[1], dilation=dilation[1])
    wm = _weight_matrix(w)
    if _is_pointwise(KH, KW, stride, padding):
        out = np.matmul(wm, np.ascontiguousarray(x).reshape(N, C, H * W))
    elif _use_rows(N, C, KH, KW, Ho, Wo, stride, x.itemsize):
        out = np.empty((N, F, Ho * Wo), dtype=x.dtype)
        wk = np.ascontiguousarray(w.transpose(2, 0, 1, 3)).reshape(KH, F, C * KW)
        _gemm_rows(x, padding, KH, KW, dilation, (Ho, Wo), wk=wk, out=out)
    else:
        out = np.empty((N, F, Ho * Wo), dtype=x.dtype)
        taps = _taps(KH, KW, stride, dilation)
        phases = _phases(x, padding, taps)
        _gemm_im2col(phases, taps, (N, C, KH, KW, Ho, Wo), wm=wm, out=out)
    out = out.reshape(N, F, Ho, Wo)
    if b is not None:
        out += b.reshape(1, F, 1, 1)
    cache = Conv2dCache(x, w, b is not None, stride, padding, dilation)
    return out, cache


def conv2d_backward(dout, cache):
    """Gradients of ``conv2d_forward``.

    dout: (N, F, Ho, Wo). cache: the :class:`Conv2dCache` from the forward.
    Returns (dx (N, C, H, W), dw (F, C, KH, KW), db (F,) or None).

    ``dw = sum_n dout[n] (F, Ho*Wo) @ cols[n].T`` and ``dx = col2im(w^T @ dout)``:
    the input gradient is the transposed convolution of dout with the same
    weight. The columns are unrolled again here (block by block) rather than
    kept from the forward, so the cache holds only x and w.
    """
    x, w, has_bias, stride, padding, dilation = cache
    N, C, H, W = x.shape
    F, _, KH, KW = w.shape
    Ho = conv_output_size(H, KH, stride=stride[0], padding=padding[0], dilation=dilation[0])
    Wo = conv_output_size(W, KW, stride=stride[1], padding=padding[1], dilation=dilation[1])
    dout = check_array("dout", dout, shape=(N, F, Ho, Wo), dtype_kind="f")
    check_same_dtype(x=x, dout=dout)
    d2 = np.ascontiguousarray(dout).reshape(N, F, Ho * Wo)
    wm = _weight_matrix(w)
    if _is_pointwise(KH, KW, stride, padding):
        x2 = np.ascontiguousarray(x).reshape(N, C, H * W)
        dw = _batched_outer(d2, x2)
        dx = np.matmul(wm.T, d2).reshape(N, C, H, W)
    else:
        shape6 = (N, C, KH, KW, Ho, Wo)
        taps = _taps(KH, KW, stride, dilation)
        rows = _use_rows(N, C, KH, KW, Ho, Wo, stride, x.itemsize)
        if rows:
            dwk = np.zeros((KH, F, C * KW), dtype=x.dtype)
            _gemm_rows(x, padding, KH, KW, dilation, (Ho, Wo), src=d2, dwk=dwk)
            dw = dwk.reshape(KH, F, C, KW).transpose(1, 2, 0, 3)
        else:
            dw = np.zeros((F, C * KH * KW), dtype=x.dtype)
            _gemm_im2col(_phases(x, padding, taps), taps, shape6, src=d2, dw=dw)
        back_pad = tuple(d * (k - 1) - p for d, k, p in zip(dilation, (KH, KW), padding))
        if stride == (1, 1) and min(back_pad) >= 0:
            # stride 1: dx is the convolution of dout, padded by d*(k-1) - p, with the
            # kernel flipped in space and its channel axes swapped; as a forward conv it
            # copies dout KW (or KH*KW) times instead of adding KH*KW slices into dx.
            w_flip = w[:, :, ::-1, ::-1].transpose(1, 0, 2, 3)  # (C, F, KH, KW)
            dx = np.empty((N, C, H * W), dtype=x.dtype)
            if rows:
                wk = np.ascontiguousarray(w_flip.transpose(2, 0, 1, 3)).reshape(KH, C, F * KW)
                _gemm_rows(dout, back_pad, KH, KW, dilation, (H, W), wk=wk, out=dx)
            else:  # (the taps of a stride-1 conv are the same for x and dout)
                _gemm_im2col(_phases(dout, back_pad, taps), taps, (N, F, KH, KW, H, W),
                             wm=_weight_matrix(w_flip), out=dx)
            dx = dx.reshape(N, C, H, W)
        else:
            xp_shape = (N, C, H + 2 * padding[0], W + 2 * padding[1])
            dphases = _zero_phases(xp_shape, taps, x.dtype)
            _gemm_col2im(np.ascontiguousarray(wm.T), d2, dphases, taps, shape6)
            dx = _assemble(dphases, xp_shape, taps, padding, H, W)
    db = dout.sum(axis=(0, 2, 3)) if has_bias else None
    return dx, np.ascontiguousarray(dw).reshape(w.shape), db


def conv2d_naive(x, w, b, *, stride=1, padding=0, dilation=1):
    """Loop version of :func:`conv2d_forward` (for tests and the notebook).

    out[n, f, i, j] = b[f] + sum(w[f] * window(n, i, j)): one dot product of
    the filter with the (dilated) input window per output pixel.
    Same arguments and result as ``conv2d_forward`` (without the cache).
    """
    x, w, b, stride, padding, dilation = _check_conv_args(
        x, w, b, stride, padding, dilation, transposed=False
    )
    _check_kernel_fits(x, w, padding, dilation)
    N, C, H, W = x.shape
    F, _, KH, KW = w.shape
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    Ho = conv_output_size(H, KH, stride=sh, padding=ph, dilation=dh)
    Wo = conv_output_size(W, KW, stride=sw, padding=pw, dilation=dw)
    xp = np.zeros((N, C, H + 2 * ph, W + 2 * pw), dtype=x.dtype)
    xp[:, :, ph:ph + H, pw:pw + W] = x
    out = np.zeros((N, F, Ho, Wo), dtype=x.dtype)
    for n in range(N):
        for f in range(F):
            for i in range(Ho):
                for j in range(Wo):
                    window = xp[n, :, i * sh:i * sh + dh * (KH - 1) + 1:dh,
                                j * sw:j * sw + dw * (KW - 1) + 1:dw]
                    out[n, f, i, j] = np.sum(window * w[f])
            if b is not None:
                out[n, f] += b[f]
    return out


def conv2d_backward_naive(dout, x, w, *, stride=1, padding=0, dilation=1):
    """Loop version of the conv2d backward (for tests and the notebook).

    Every output pixel (n, f, i, j) used the window ``xpad[n, :, i*sh + p*dh,
    j*sw + q*dw]`` and the filter ``w[f]``, so it sends ``dout[n, f, i, j] * w[f]``
    back to that window and ``dout[n, f, i, j] * window`` to ``dw[f]``.
    dout: (N, F, Ho, Wo), x: (N, C, H, W), w: (F, C, KH, KW).
    Returns (dx, dw, db) with db = dout summed over n, i, j.
    """
    x, w, _, stride, padding, dilation = _check_conv_args(
        x, w, None, stride, padding, dilation, transposed=False
    )
    N, C, H, W = x.shape
    F, _, KH, KW = w.shape
    (sh, sw), (ph, pw), (dh, dw_) = stride, padding, dilation
    xp = np.zeros((N, C, H + 2 * ph, W + 2 * pw), dtype=x.dtype)
    xp[:, :, ph:ph + H, pw:pw + W] = x
    dxp = np.zeros_like(xp)
    dw = np.zeros_like(w)
    Ho, Wo = dout.shape[2:]
    for n in range(N):
        for f in range(F):
            for i in range(Ho):
                for j in range(Wo):
                    hs = slice(i * sh, i * sh + dh * (KH - 1) + 1, dh)
                    ws = slice(j * sw, j * sw + dw_ * (KW - 1) + 1, dw_)
                    dxp[n, :, hs, ws] += dout[n, f, i, j] * w[f]
                    dw[f] += dout[n, f, i, j] * xp[n, :, hs, ws]
    dx = dxp[:, :, ph:ph + H, pw:pw + W].copy()
    return dx, dw, dout.sum(axis=(0, 2, 3))


# --------------------------------------------------------------------------- conv_transpose2d


def _transpose_output_size(size, kernel, stride, padding, dilation, output_padding=0):
    return (size - 1) * stride - 2 * padding + dilation * (kernel - 1) + 1 + output_padding


def _check_transpose_args(x, w, b, stride, padding, dilation, output_padding):
    x, w, b, stride, padding, dilation = _check_conv_args(
        x, w, b, stride, padding, dilation, transposed=True
    )
    output_padding = check_pair("output_padding", output_padding, minimum=0)
    for op, s, d in zip(output_padding, stride, dilation):
        if op >= max(s, d):
            raise ValueError(
                f"output_padding must be smaller than stride or dilation, got "
                f"output_padding {output_padding}, stride {stride}, dilation {dilation}"
            )
    H, W = x.shape[2:]
    KH, KW = w.shape[2:]
    Ho = _transpose_output_size(H, KH, stride[0], padding[0], dilation[0], output_padding[0])
    Wo = _transpose_output_size(W, KW, stride[1], padding[1], dilation[1], output_padding[1])
    if Ho < 1 or Wo < 1:
        raise ValueError(
            f"padding {padding} crops the whole output of the transposed convolution: "
            f"x {x.shape}, w {w.shape}, stride {stride} give ({Ho}, {Wo})"
        )
    return x, w, b, stride, padding, dilation, output_padding, (Ho, Wo)


def conv_transpose2d_forward(x, w, b, *, stride=1, padding=0, dilation=1, output_padding=0):
    """Transposed convolution, torch's ``F.conv_transpose2d`` (groups=1).

    x: (N, C_in, H, W). w: (C_in, C_out, KH, KW) (torch's ConvTranspose2d layout),
    same dtype. b: (C_out,) or None. stride, padding, dilation: int or pair.
    output_padding: int or pair, each < stride or < dilation (as torch): extra
    rows/columns added at the bottom/right, which makes the map the exact adjoint
    of a strided conv2d whose stride does not divide its padded input.
    Returns out (N, C_out, Ho, Wo),
    ``Ho = (H - 1)*sh - 2*ph + dh*(KH - 1) + 1 + output_padding_h``,
    and a :class:`ConvTranspose2dCache`.

    It is ``conv2d``'s input gradient: with ``w`` read as a conv2d weight
    (F = C_in, C = C_out), ``conv_transpose2d(x, w)`` equals ``conv2d_backward``'s
    dx for dout = x. Computed as ``cols = w^T . x`` (one GEMM) then col2im.
    """
    x, w, b, stride, padding, dilation, output_padding, (Ho, Wo) = _check_transpose_args(
        x, w, b, stride, padding, dilation, output_padding
    )
    N, Cin, H, W = x.shape
    _, Cout, KH, KW = w.shape
    x2 = np.ascontiguousarray(x).reshape(N, Cin, H * W)
    wm = _weight_matrix(w)  # (C_in, C_out*KH*KW)
    if _is_pointwise(KH, KW, stride, padding) and (Ho, Wo) == (H, W):
        out = np.matmul(wm.T, x2).reshape(N, Cout, Ho, Wo)
    elif _is_tiling(KH, KW, stride, padding, dilation, (Ho, Wo), (H, W)):
        # every input pixel paints its own KH x KW block (the mask head's 2x2,
        # stride-2 upsampler): one GEMM over all images, then one copy that
        # interleaves the blocks
        # (in blocks of images, so that the GEMM result stays in cache)
        wmT = np.ascontiguousarray(wm.T)  # (C_out*KH*KW, C_in)
        out = np.empty((N, Cout, H, KH, W, KW), dtype=x.dtype)
        per = max(1, _BLOCK_BYTES // (wmT.shape[0] * H * W * x.itemsize))
        for n0 in range(0, N, per):
            n1 = min(N, n0 + per)
            xc = np.ascontiguousarray(x[n0:n1].transpose(1, 0, 2, 3)).reshape(Cin, -1)
            res = (wmT @ xc).reshape(Cout, KH, KW, n1 - n0, H, W)  # (C_out*KH*KW, nb*H*W)
            for p in range(KH):  # one copy per tap: unit-stride source rows
                for q in range(KW):
                    out[n0:n1, :, :, p, :, q] = res[:, p, q].transpose(1, 0, 2, 3)
        out = out.reshape(N, Cout, Ho, Wo)
    else:
        taps = _taps(KH, KW, stride, dilation)
        outp_shape = (N, Cout, Ho + 2 * padding[0], Wo + 2 * padding[1])
        dphases = _zero_phases(outp_shape, taps, x.dtype)
        _gemm_col2im(np.ascontiguousarray(wm.T), x2, dphases, taps, (N, Cout, KH, KW, H, W))
        out = _assemble(dphases, outp_shape, taps, padding, Ho, Wo)
    if b is not None:
        out += b.reshape(1, Cout, 1, 1)
    cache = ConvTranspose2dCache(x, w, b is not None, stride, padding, dilation, (Ho, Wo))
    return out, cache


def conv_transpose2d_backward(dout, cache):
    """Gradients of ``conv_transpose2d_forward``.

    dout: (N, C_out, Ho, Wo). cache: the :class:`ConvTranspose2dCache`.
    Returns (dx (N, C_in, H, W), dw (C_in, C_out, KH, KW), db (C_out,) or None).
    dx is the ordinary convolution of dout with w (read as (F=C_in, C=C_out, KH, KW)).
    """
    x, w, has_bias, stride, padding, dilation, (Ho, Wo) = cache
    N, Cin, H, W = x.shape
    _, Cout, KH, KW = w.shape
    dout = check_array("dout", dout, shape=(N, Cout, Ho, Wo), dtype_kind="f")
    check_same_dtype(x=x, dout=dout)
    x2 = np.ascontiguousarray(x).reshape(N, Cin, H * W)
    wm = _weight_matrix(w)  # (C_in, C_out*KH*KW)
    if _is_pointwise(KH, KW, stride, padding) and (Ho, Wo) == (H, W):
        d2 = np.ascontiguousarray(dout).reshape(N, Cout, H * W)
        dx = np.matmul(wm, d2)
        dw = _batched_outer(x2, d2)
    elif _is_tiling(KH, KW, stride, padding, dilation, (Ho, Wo), (H, W)):
        dx = np.empty((N, Cin, H * W), dtype=x.dtype)
        dw = np.zeros_like(wm)
        d6 = dout.reshape(N, Cout, H, KH, W, KW)
        per = max(1, _BLOCK_BYTES // (wm.shape[1] * H * W * x.itemsize))
        for n0 in range(0, N, per):
            n1 = min(N, n0 + per)
            cols = np.ascontiguousarray(d6[n0:n1].transpose(1, 3, 5, 0, 2, 4))
            cols = cols.reshape(wm.shape[1], -1)
            dx[n0:n1] = (wm @ cols).reshape(Cin, n1 - n0, H * W).transpose(1, 0, 2)
            xc = np.ascontiguousarray(x[n0:n1].transpose(1, 0, 2, 3)).reshape(Cin, -1)
            dw += xc @ cols.T
    else:
        dx = np.empty((N, Cin, H * W), dtype=x.dtype)
        dw = np.zeros_like(wm)
        taps = _taps(KH, KW, stride, dilation)
        phases = _phases(dout, padding, taps)
        _gemm_im2col(phases, taps, (N, Cout, KH, KW, H, W), wm=wm, out=dx, src=x2, dw=dw)
    dx = dx.reshape(N, Cin, H, W)
    db = dout.sum(axis=(0, 2, 3)) if has_bias else None
    return dx, dw.reshape(w.shape), db


def conv_transpose2d_naive(x, w, b, *, stride=1, padding=0, dilation=1, output_padding=0):
    """Loop version of :func:`conv_transpose2d_forward` (for tests and the notebook).

    Each input pixel x[n, c, i, j] adds ``x[n, c, i, j] * w[c]`` (a C_out x KH x KW
    block) to the full output at rows ``i*sh + p*dh``, columns ``j*sw + q*dw``;
    the result is then cropped by ``padding`` on every side (``output_padding``
    extra rows/columns kept at the bottom/right) and the bias added.
    """
    x, w, b, stride, padding, dilation, output_padding, (Ho, Wo) = _check_transpose_args(
        x, w, b, stride, padding, dilation, output_padding
    )
    N, Cin, H, W = x.shape
    _, Cout, KH, KW = w.shape
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    full = np.zeros((N, Cout, max(Ho + 2 * ph, (H - 1) * sh + dh * (KH - 1) + 1),
                     max(Wo + 2 * pw, (W - 1) * sw + dw * (KW - 1) + 1)), dtype=x.dtype)
    for n in range(N):
        for c in range(Cin):
            for i in range(H):
                for j in range(W):
                    full[n, :, i * sh:i * sh + dh * (KH - 1) + 1:dh,
                         j * sw:j * sw + dw * (KW - 1) + 1:dw] += x[n, c, i, j] * w[c]
    out = full[:, :, ph:ph + Ho, pw:pw + Wo].copy()
    if b is not None:
        out += b.reshape(1, Cout, 1, 1)
    return out
