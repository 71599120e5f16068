"""Blocked-GEMM convolution: the engine behind ``mrcnn_np.ops.conv``.

A kernel (see ``mrcnn_np.kernels``): no checks, arguments as ``ops.conv`` has
checked them (stride, padding, dilation as (h, w) int pairs, x and w of one
float dtype, the kernel fitting the padded input), results equal to the naive
loops ``ops.conv.conv2d_naive`` / ``conv_transpose2d_naive`` up to the
summation order of the GEMMs (``tests/test_conv.py``, ``tests/test_kernels.py``).
Shape shorthand as in ``ops.conv``: N, C, H, W input, F filters, KH, KW kernel,
Ho, Wo output, K = C*KH*KW.

Entry points: :func:`conv2d_forward`, :func:`conv2d_backward`,
:func:`conv_transpose2d_forward`, :func:`conv_transpose2d_backward` (no bias:
the caller adds it and sums its gradient).

How it works
------------
A convolution is ``w.reshape(F, K) @ cols`` with ``cols`` the unrolled receptive
fields (im2col). Materialising the whole im2col matrix (C*KH*KW x Ho*Wo) costs a
fresh, page-faulting allocation KH*KW times the size of the input: slower than
the copy itself, and large at detection resolutions (2304 x 40000 floats for a
3x3, 256-channel conv on a 200x200 map). The fast paths therefore walk the
output in blocks of whole output rows (or, when images are small, of whole
images), unroll one block into a reused buffer of about ``_BLOCK_BYTES`` (it
stays in cache) and run that block's GEMM straight into the result: the same
arithmetic as one big GEMM with a fraction of the memory traffic.

Strided convolutions first split the padded input into its stride phases
``P[a][b] = xpad[:, :, a::sh, b::sw]``; every kernel tap then reads a contiguous
run of one phase, so each copy is a plain strided-slice copy with unit inner
stride. Stride-1 convolutions on large images copy even less (:func:`_gemm_rows`).
The backward scatters column gradients back onto the stride phases (col2im,
one strided slice addition per kernel tap), except where it is cheaper as a
forward convolution.

Fast paths and their measured speed-ups
---------------------------------------
Each one is checked against the naive loops (also with tiny block budgets,
which send small problems through every path). Speed-ups are float32, min of
repeats, same process, 2-core build machine (shared), path on vs off;
``benchmarks/bench_conv.py`` gives the ratios to GEMM.

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
  forward 1.18x to 1.25x, backward 1.12x (page faults 7600 -> 4200 per pair).
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
- Stacked kernel rows in :func:`_gemm_rows` for convs of at most ``_STACK_ROWS_MAX_F``
  filters: one GEMM of (KH*F, C*KW) over all rows of the block instead of KH GEMMs of F
  rows (OpenBLAS is slow at M = 64), partial sums added in the same order: the same bits.
  One thread, CPU time, paired (bias + ReLU fused): 64 x 200 x 200 -> 64 (layer1's 3x3)
  0.96x, 64 x 100 x 100 0.92x, 32 x 128 x 128 0.77x.
- Wide rows for stride-1 convs of small maps (output rows of at most ``_WIDE_MAX_WO``,
  :func:`_gemm_wide`): the images laid end to end on one channel-major grid with shared zero
  separators, so each (channel, tap) row of the columns is one contiguous run and the whole
  im2col one copy; the outputs off the image are computed and dropped (1.15x the products at
  14 x 14). One thread, CPU time, forward / backward against the per-tap blocked engine: mask
  head 25 x 32 x 14 x 14 (3x3, 32 filters) 1.80 -> 1.60 / 3.65 -> 3.23 ms, 4 x 32 x 32 x 32
  1.32 -> 1.25 / 2.59 -> 2.45 ms, 4 x 32 x 8 x 8 0.144 -> 0.107 / 0.303 -> 0.244 ms. The
  forward (and dx, a forward conv) is the same dot product per output, bit for bit. The
  weight gradient keeps the per-tap columns: on wide rows it would also sum the dropped
  (zero) positions, which moves its bits (by 5.5e-7 of the largest entry on the shapes
  model, measured), and a bit-identical training step is worth more than its ~10 %.
- Stride-1 input gradient as a forward conv of ``dout`` with the flipped kernel
  instead of col2im (KH*KW slice additions): 1.16x, 1.38x, and 1.27x for the
  mask head's 64x256x14x14.
- Tiling transposed conv (stride = kernel, the mask head's 2x2 upsampler): one
  GEMM and one interleaving copy per block of images: backward 1.20x, forward
  1.07x (64x256x14x14) against the col2im path. The interleave is one copy per
  kernel tap (unit-stride source rows) rather than one 6-D transposed copy:
  forward 85 -> 65 ms (1.31x).
- Fused inference conv (:func:`conv2d_fused`, the backbone, FPN and RPN head of
  ``predict``): bias, residual sum and ReLU applied to each output block right after its
  GEMM, outputs in memory reused from dead ones (``kernels.arena``: no page faults), no
  columns kept; plus :func:`conv1x1_stacked` (the RPN head's two 1x1 convs as one GEMM).
  Bit for bit the unfused steps. 800 px, one thread, CPU time, old and new code
  alternating call by call (``benchmarks/bench_paired.py``, median of per-call ratios):
  backbone + FPN 0.90-0.92x, RPN head 0.97x, ``predict`` 0.96x. Blocking the 1x1 GEMMs by
  columns to run the epilogue in cache was slower (narrow GEMMs, short strided rows):
  64 -> 256 at 200 x 200, GEMM + three passes 13.2 ms, in 256 KB..2 MB blocks 17.7-24 ms.
  The training convs take the same epilogue (:func:`conv2d_forward`'s ``bias``, ``residual``,
  ``relu``; bit for bit, their outputs fresh memory, kept for the backward): 800 px backbone
  training forward 0.97x paired; no change on the 32-channel shapes model (its passes are
  over arrays that fit in cache).
- The mask head's inference convs (:func:`conv2d_infer`, :func:`conv_stack_infer`): the RoIs
  on the wide grid, each output the sum of KH kernel-row partial sums (float32 rounding
  from :func:`conv2d_forward`), the kernel rows stacked into one GEMM for F <= 64, the bias
  and ReLU applied per block, and the activations kept on the grid from one conv to the
  next (each conv's block columns one copy with runs as long as the block, instead of KW
  copies with runs of one image row): the same bits as the row-unrolled version before,
  shapes model (400 RoIs, 32 channels) mask head 100 -> 77 ms, ``predict`` 0.87-0.88x
  paired (``benchmarks/bench_paired.py``); 100 RoIs of 256 channels unchanged (GEMM-bound).
- Weight gradient of a 1x1 conv over a batch of small maps as one GEMM over all
  images (:func:`_batched_outer`): 1.2x to 1.5x (e.g. 4x2048x4x4 -> 256) against
  per-image products summed.

Tried and dropped: copying on worker threads (no gain on the shared 2 cores);
the wide-row forward on large maps (pad once, each tap a contiguous run of ``Ho*Wp``
columns, crop the ``Wp - Wo`` junk columns afterwards), with or without an im2col copy:
no faster on 256x64x64 and 1.15x to 1.3x slower on the other two benchmark shapes (their
rows are long already; it pays on small maps only, see above).
Also dropped, measured: Winograd F(2x2, 3x3) for the inference 3x3 convs (its transforms as
NumPy passes cost more than the products they save: 256 -> 256 at 200 x 200 310 ms against
319 ms direct, 0.3-0.85x on the smaller maps, 1.2x only for 100 RoIs of 14 x 14); a
two-stage unroll of the per-tap columns (rows first, then whole blocks: 0.6-1.4x the speed,
slower on most shapes); channel-major col2im accumulators, so that the tap additions of a
strided conv's input gradient run over matching layouts (0.85-1.05x the speed); the 4
transposed-conv taps of the mask predictor as one stacked GEMM (the same bits; 0.8x the
time at 32 channels, 0.9-1.2x at 256 from run to run).
Not taken (it moves the training bits, and so the demo's AP): the small stride-1 convs'
training forward, input gradient and weight gradient kernel row by kernel row on the wide
grid (the KW shifted copies Y of :func:`_wide_chain`, the weight gradient as
``dgrid @ Y_p.T`` per kernel row): 12-20 % less time per conv on the shapes model's
13 x 32 x 14 x 14 and 4 x 32 x 32 x 32, slower on 4 x 4 maps and on one 25 x 25 image of
512 channels (1.15x); taken only on grids of 2,048 positions or more, the shapes training
step 0.94x and 0.96x of the code without it (paired, 30 and 40 calls). A row-phase stem
(the 7x7 stride-2 conv on 3 channels as one GEMM per row phase over C*KW column-strided
copies instead of C*KH*KW) was slower: 1.95 -> 3.3 ms forward.
Also dropped: splitting stride-2 float32 columns by reading each pair as one
uint64 and keeping a half by an integer cast (2x faster on a contiguous
source, no faster than the strided copy once rows are strided too).
"""
from __future__ import annotations

import threading
from typing import NamedTuple

import numpy as np

from . import arena

__all__ = [
    "conv2d_forward",
    "conv2d_infer",
    "conv_stack_infer",
    "conv2d_fused",
    "conv1x1_stacked",
    "conv2d_backward",
    "conv_transpose2d_forward",
    "conv_transpose2d_backward",
]

# --------------------------------------------------------------------------- helpers


def _pad(x, padding):
    ph, pw = padding
    if ph == 0 and pw == 0:
        return x
    N, C, H, W = x.shape
    xp = np.zeros((N, C, H + 2 * ph, W + 2 * pw), dtype=x.dtype)
    xp[:, :, ph:ph + H, pw:pw + W] = x
    return xp


def _outer(a, b):
    """``a @ b.T`` for a (M, L), b (K, L) -> (M, K) (a view of a new array).

    A weight gradient: a long sum (L = output pixels) per entry. OpenBLAS is
    faster with the larger of M, K as the rows of its product, so for M < K this
    computes ``(b @ a.T).T``: the same dot product per entry, bit for bit
    (``tests/test_kernels.py``), 1.3x to 2x faster for the F < C*KH*KW of most
    convs (32 x 288 over 4704 pixels: 1.36 -> 0.84 ms; the 8 x 147 stem 1.87 -> 0.92 ms;
    one thread), and no slower elsewhere (M > K keeps ``a @ b.T``). Only for K >= 32:
    with two threads OpenBLAS splits a product of 20..31 rows and a long sum
    differently (measured: bits differ), never for 32 rows or more.
    """
    if a.shape[0] >= b.shape[0] or b.shape[0] < 32:
        return a @ b.T
    return (b @ a.T).T  # (an out= of shape (M, K) would make NumPy pick a @ b.T again)


def _batched_outer(a, b):
    """``sum_n a[n] @ b[n].T`` for a (N, M, L), b (N, K, L) -> (M, K)."""
    N, M, L = a.shape
    K = b.shape[1]
    if N == 1:
        return _outer(a[0], b[0])
    if N * M * K <= a.size + b.size:  # N small products are cheaper than the copies
        return np.matmul(a, b.transpose(0, 2, 1)).sum(axis=0)
    # one GEMM over all images: (M, N*L) @ (N*L, K), at the price of two copies
    a2 = np.ascontiguousarray(a.transpose(1, 0, 2)).reshape(M, N * L)
    b2 = np.ascontiguousarray(b.transpose(1, 0, 2)).reshape(K, N * L)
    return _outer(a2, b2)


def _is_tiling(KH, KW, stride, padding, dilation, out_hw, in_hw):
    """Transposed conv whose kernel stamps tile the output exactly (stride = kernel)."""
    return (stride == (KH, KW) and padding == (0, 0) and dilation == (1, 1)
            and tuple(out_hw) == (in_hw[0] * KH, in_hw[1] * KW))


def _weight_matrix(w):
    return np.ascontiguousarray(w).reshape(w.shape[0], -1)


# --------------------------------------------------------------------------- blocked GEMM engine

_BLOCK_BYTES = 16 * 2**20
_CACHE_BLOCK_BYTES = 2**20
_SMALL_GEMM = 2**20  # above OpenBLAS's small-matrix threshold (M*N*K <= 100**3)
_SCRATCH = threading.local()


def _scratch(slot, n, dtype):
    """A 1-D buffer of n elements, reused between calls on this thread (contents undefined).

    A fresh buffer of several MB is a fresh mmap: the kernel faults in and zeroes
    every page on first touch. Keeping one buffer per slot and thread pays that once.
    """
    dtype = np.dtype(dtype)
    nbytes = n * dtype.itemsize
    if nbytes > 4 * _BLOCK_BYTES:
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


def _phases(x, padding, taps, alloc=np.empty):
    """Contiguous stride phases {(a, b): xpad[:, :, a::sh, b::sw]} that some tap reads.

    x: the unpadded input (N, C, H, W); padding: (ph, pw). For a stride > 1 each
    phase is cut straight from x (one strided copy, zeros written only on the
    border), never from a padded copy of x. alloc: ``np.empty`` or ``arena.empty``.
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
        d = alloc((N, C, hq, wq), x.dtype)
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


def _blocks(N, Ho, Wo, K, itemsize, image_bytes=None):
    """Split the N x Ho output rows into blocks whose unrolled columns fit the budget.

    Returns (blocks, most columns in a block); a block (n0, n1, i0, i1) is images
    n0..n1-1 and output rows i0..i1-1: one image and some rows, or whole images.
    image_bytes: the budget of a block of whole images (default ``_BLOCK_BYTES``).
    """
    rows = max(1, _BLOCK_BYTES // max(K * Wo * itemsize, 1))
    if rows >= Ho:
        per = max(1, (image_bytes or _BLOCK_BYTES) // max(K * Ho * Wo * itemsize, 1))
        blocks = [(n, min(N, n + per), 0, Ho) for n in range(0, N, per)]
        return blocks, min(N, per) * Ho * Wo
    blocks = [(n, n + 1, i, min(Ho, i + rows)) for n in range(N) for i in range(0, Ho, rows)]
    return blocks, rows * Wo


def _strided(a, offset, shape, strides):
    """A view of the C-contiguous array ``a`` from flat element ``offset`` with the given shape
    and strides in elements (``np.lib.stride_tricks.as_strided`` costs 5-10 us a call)."""
    item = a.itemsize
    return np.ndarray(shape, a.dtype, a, offset * item, tuple(s * item for s in strides))


def _unroll_block(cols6, phases, taps, n0, n1, i0, i1):
    """im2col of one block: ``cols6[:, p, q] = window of (p, q)``.

    cols6: (C, KH, KW, nb, r, Wo) buffer for images n0..n1-1, output rows i0..i1-1;
    phases from :func:`_phases`. Without dilation, the taps reading one stride phase
    (all of them for stride 1) are ONE strided view of it, copied at once (the same
    values as one copy per tap, with a Python call per phase instead of per tap: the
    small maps of the shapes model are that overhead, 40 us a conv at 4 x 4).
    """
    Wo = cols6.shape[-1]
    C, KH, KW, nb, r, _ = cols6.shape
    sh, sw = taps.stride
    if all(ph.flags.c_contiguous for ph in phases.values()) and all(
            p == oh * sh + a and q == ow * sw + b for p, q, a, b, oh, ow in taps.taps):  # no dilation
        for (a, b), ph in phases.items():
            N_, C_, hq, wq = ph.shape
            src = _strided(ph, ((n0 * C_) * hq + i0) * wq,
                           (C, len(range(a, KH, sh)), len(range(b, KW, sw)), nb, r, Wo),
                           (hq * wq, wq, 1, C_ * hq * wq, wq, 1))
            np.copyto(cols6[:, a::sh, b::sw], src)
        return
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


def _gemm_im2col(phases, taps, shape, *, wm=None, out=None, src=None, dw=None, keep=None, epi=None):
    """Block by block, unroll the receptive fields into columns ``cols`` (K, block) and
    compute ``out[n][:, block] = wm @ cols`` (wm (F, K), out (N, F, Ho*Wo)) and/or
    ``dw += src[n][:, block] @ cols.T`` (src (N, F2, Ho*Wo), dw (F2, K), in place).

    shape: (N, C, KH, KW, Ho, Wo).
    keep: None (blocks in the reused scratch buffer), or a 1-D array of K*N*Ho*Wo
    values that receives every block's (K, block) columns, block after block, for
    :func:`_dw_from_cols` (then the blocks are those of the weight gradient; the
    forward's are the same dot products, see below).
    epi: None or an :class:`_Epilogue` applied to each output block once it is computed.
    """
    N, C, KH, KW, Ho, Wo = shape
    K = C * KH * KW
    dtype = next(iter(phases.values())).dtype
    blocks, ncols = _blocks(N, Ho, Wo, K, dtype.itemsize)
    if dw is None and keep is None and blocks and blocks[0][2:] == (0, Ho):
        # A forward product of whole images in blocks of about _CACHE_BLOCK_BYTES stays in
        # cache for its GEMM (mask head 24 x 32 x 14 x 14: 2.0 -> 1.45 ms). Each column is
        # the same dot product in any block, unless a block's GEMM is small enough
        # (F*K*columns <= 1e6) for OpenBLAS's small-matrix kernel, which sums in another
        # order (measured): then the blocks stay as they were. (The weight gradient sums
        # over the columns, so its blocks never change.)
        small, ncols_small = _blocks(N, Ho, Wo, K, dtype.itemsize, _CACHE_BLOCK_BYTES)
        least = min(n1 - n0 for n0, n1, _, _ in small) * Ho * Wo
        if len(small) > len(blocks) and wm.shape[0] * K * least > _SMALL_GEMM:
            blocks, ncols = small, ncols_small
    buf = _scratch("cols", K * ncols, dtype) if keep is None else keep
    for n0, n1, i0, i1 in blocks:
        nb, r = n1 - n0, i1 - i0
        at = K * (n0 * Ho * Wo + i0 * Wo) if keep is not None else 0  # (blocks run in order)
        cols6 = buf[at:at + K * nb * r * Wo].reshape(C, KH, KW, nb, r, Wo)
        _unroll_block(cols6, phases, taps, n0, n1, i0, i1)
        cols = cols6.reshape(K, nb * r * Wo)
        if wm is not None:
            if nb == 1:
                np.matmul(wm, cols, out=out[n0, :, i0 * Wo:i1 * Wo])
            else:  # whole images side by side (i0, i1 = 0, Ho), columns ordered (n, i, j)
                out[n0:n1] = (wm @ cols).reshape(-1, nb, Ho * Wo).transpose(1, 0, 2)
            if epi is not None:
                epi(out, n0, n1, i0 * Wo, i1 * Wo)
        if dw is not None:
            _add_dw_block(dw, src, cols, n0, n1, i0, i1, Wo)


_WIDE_MAX_WO = 32  # stride-1 convs with output rows this short take the wide-row path


def _use_wide(C, KH, KW, Ho, Wo, stride, padding):
    """Stride-1 convs of small maps (short output rows) take the wide-row path (:func:`_gemm_wide`)."""
    return stride == (1, 1) and KH * KW > 1 and Wo <= _WIDE_MAX_WO


def _wide_layout(H, W, KH, KW, padding, dilation):
    """The grid of :func:`_gemm_wide`: zero separators of (sh, sw) rows/columns between images and
    rows, shared by neighbours; returns (sh, sw, Hq, Wq) with Hq = H + sh, Wq = W + sw.

    A separator must hold each side's padding (pw on the left, reach - pw on the right, reach =
    dw*(KW-1)) and leave room for the output row (Wo = W + 2pw - reach <= Wq).
    """
    (ph, pw), (dh, dw) = padding, dilation
    rh, rw = dh * (KH - 1), dw * (KW - 1)
    sh = max(ph, rh - ph, 2 * ph - rh)
    sw = max(pw, rw - pw, 2 * pw - rw)
    return sh, sw, H + sh, W + sw


def _wide_input(x, layout, tail, alloc=np.empty):
    """Channel-major copy on the grid of :func:`_wide_layout`, laid end to end:
    ``xw[c, sh*Wq + n*Hq*Wq + t*Wq + sw + u] = x[n, c, t, u]``, zero elsewhere (the first sh rows,
    the separators, and ``tail`` values after the last image). alloc: ``np.empty`` or
    ``arena.empty``."""
    N, C, H, W = x.shape
    sh, sw, Hq, Wq = layout
    head, L = sh * Wq, N * Hq * Wq
    xw = alloc((C, head + L + tail), x.dtype)
    xw[:, :head] = 0
    xw[:, head + L:] = 0
    v = xw[:, head:head + L].reshape(C, N, Hq, Wq)
    v[:, :, H:] = 0
    v[:, :, :H, :sw] = 0
    v[:, :, :H, sw:] = x.transpose(1, 0, 2, 3)
    return xw


def _wide_blocks(N, per_image, F, K, itemsize, budget):
    """Blocks of whole images whose wide columns take about ``budget`` bytes, unless a block's
    GEMM would fall to OpenBLAS's small-matrix kernel (see :func:`_gemm_im2col`): one block."""
    per = max(1, budget // max(K * per_image * itemsize, 1))
    blocks = [(n, min(N, n + per)) for n in range(0, N, per)]
    least = min(n1 - n0 for n0, n1 in blocks) * per_image
    if len(blocks) > 1 and F * K * least <= _SMALL_GEMM:
        blocks = [(0, N)]
    return blocks


def _gemm_wide(x, padding, KH, KW, dilation, out_hw, wm, out, epi=None):
    """Stride-1 im2col GEMMs on "wide" rows: one contiguous copy per (channel, tap).

    Lay the images out channel-major on one grid (:func:`_wide_input`): row after row of
    ``Wq = W + sw`` values (sw zero separator columns, then the image row), image after image
    of ``Hq = H + sh`` rows (the image, then sh zero separator rows), the separators shared by
    neighbours as the zero padding of both. The output is computed at every grid position
    ``l = (n*Hq + i)*Wq + j``, and the input of tap (p, q) there is
    ``xw[c, o + l + p*dh*Wq + q*dw]`` (o = (sh - ph)*Wq + sw - pw): for each (c, p, q) ONE
    contiguous run over all positions. So the columns of a block of images are a single copy
    of a strided view with runs as long as the block, instead of KH*KW copies whose inner runs
    are one output row (14 values in the mask head, where the copying cost as much as the
    GEMM). The price: the positions i >= Ho or j >= Wo are computed and dropped (15*15/14*14 =
    1.15x the products at 14 x 14 with a 3x3 kernel, 1.06x at 32 x 32).

    x: (N, C, H, W); padding (ph, pw); out_hw (Ho, Wo); wm (F, K), out (N, F, Ho*Wo):
    ``out = wm @ cols``, each output the same dot product, in the same order, as
    :func:`_gemm_im2col`'s (bit for bit where no block's GEMM is small enough for
    OpenBLAS's small-matrix kernel; blocks as :func:`_gemm_im2col` chooses them). Only the
    forward: the weight gradient would sum over the dropped positions too, which moves its
    bits (the weight gradient keeps :func:`_gemm_im2col`).
    """
    N, C, H, W = x.shape
    (ph, pw), (dh, dwl), (Ho, Wo) = padding, dilation, out_hw
    if N == 0 or Ho * Wo == 0:
        return
    layout = sh, sw, Hq, Wq = _wide_layout(H, W, KH, KW, padding, dilation)
    per_image = Hq * Wq
    K = C * KH * KW
    o = (sh - ph) * Wq + sw - pw
    xw = _wide_input(x, layout, o + dh * (KH - 1) * Wq + dwl * (KW - 1))
    blocks = _wide_blocks(N, per_image, wm.shape[0], K, xw.itemsize, _CACHE_BLOCK_BYTES)
    ncols = max(n1 - n0 for n0, n1 in blocks) * per_image
    buf = _scratch("cols", K * ncols, x.dtype)
    for n0, n1 in blocks:
        Lb = (n1 - n0) * per_image
        view = _strided(xw, o + n0 * per_image, (C, KH, KW, Lb), (xw.shape[1], dh * Wq, dwl, 1))
        cols = buf[:K * Lb].reshape(K, Lb)
        np.copyto(cols.reshape(C, KH, KW, Lb), view)
        res = (wm @ cols).reshape(-1, n1 - n0, Hq, Wq)
        out.reshape(N, -1, Ho, Wo)[n0:n1] = res[:, :, :Ho, :Wo].transpose(1, 0, 2, 3)
        if epi is not None:
            epi(out, n0, n1, 0, Ho * Wo)


def _dw_from_cols(cols, src, shape, dw):
    """``dw += src @ cols.T`` from the columns kept by the forward (:func:`_gemm_im2col`'s
    ``keep``, block after block), in the blocks and the order of :func:`_gemm_im2col`'s
    weight gradient: the same products on the same (contiguous) blocks, so the same bits,
    without unrolling x again.

    cols: 1-D, K*N*Ho*Wo; src: (N, F2, Ho*Wo); shape: (N, C, KH, KW, Ho, Wo); dw (F2, K).
    """
    N, C, KH, KW, Ho, Wo = shape
    K = C * KH * KW
    blocks, _ = _blocks(N, Ho, Wo, K, cols.itemsize)
    for n0, n1, i0, i1 in blocks:
        at = K * (n0 * Ho * Wo + i0 * Wo)
        _add_dw_block(dw, src, cols[at:at + K * (n1 - n0) * (i1 - i0) * Wo].reshape(K, -1), n0, n1, i0, i1, Wo)


def _add_dw_block(dw, src, cols, n0, n1, i0, i1, Wo):
    """``dw += src-block @ cols.T`` for one block of :func:`_blocks` (K, block) columns: output
    rows i0..i1-1 of image n0, or whole images n0..n1-1 side by side (columns ordered (n, i, j))."""
    if n1 - n0 == 1:
        dw += _outer(src[n0, :, i0 * Wo:i1 * Wo], cols)
    else:
        dw += _outer(np.ascontiguousarray(src[n0:n1].transpose(1, 0, 2)).reshape(src.shape[1], -1), cols)


def _use_rows(N, C, KH, KW, Ho, Wo, stride, itemsize):
    """Stride-1 convs on large images take the row-unrolled path (:func:`_gemm_rows`)."""
    return stride == (1, 1) and KH > 1 and C * KH * KW * Ho * Wo * itemsize > _BLOCK_BYTES


_STACK_ROWS_MAX_F = 64  # _gemm_rows stacks the kernel rows' weights into one GEMM up to this many filters


def _stacks_rows(KH, F):
    """Whether :func:`_kernel_row_sums` runs the kernel rows as one stacked GEMM."""
    return KH >= 2 and F <= _STACK_ROWS_MAX_F


def _kernel_row_sums(wk, yf, step, width, out, tmp):
    """``out = sum_p wk[p] @ yf[:, p*step:p*step + width]``, kernel row by kernel row, summed
    in row order: the GEMMs of :func:`_gemm_rows` and :func:`_wide_chain`.

    wk: (KH, F, C*KW); yf: (C*KW, cols) with cols >= (KH-1)*step + width; out: (F, width).
    tmp: scratch of at least ``KH*F*cols`` values (F <= _STACK_ROWS_MAX_F: ONE GEMM of the
    kernel rows' weights stacked, M = KH*F, over all of yf; kernel row p's partial sums are
    then rows p*F.. of the result, p*step columns further on; OpenBLAS runs M = F slowly for
    few filters) or ``F*width`` (one GEMM per kernel row). The same products, summed in the
    same order, either way: the same bits.
    """
    KH, F, _ = wk.shape
    if _stacks_rows(KH, F):
        z = tmp[:KH * F * yf.shape[1]].reshape(KH * F, yf.shape[1])
        np.matmul(wk.reshape(KH * F, -1), yf, out=z)
        np.add(z[:F, :width], z[F:2 * F, step:step + width], out=out)
        for p in range(2, KH):
            out += z[p * F:(p + 1) * F, p * step:p * step + width]
        return
    np.matmul(wk[0], yf[:, :width], out=out)
    t = tmp[:F * width].reshape(F, width)
    for p in range(1, KH):
        np.matmul(wk[p], yf[:, p * step:p * step + width], out=t)
        out += t


def _kernel_row_tmp_size(KH, F, cols, width):
    """Values of ``tmp`` :func:`_kernel_row_sums` needs for yf of ``cols`` columns."""
    return KH * F * cols if _stacks_rows(KH, F) else F * width


def _gemm_rows(x, padding, KH, KW, dilation, out_hw, *, wk=None, out=None, src=None, dwk=None, epi=None):
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
    tmp = None
    if wk is not None:  # kernel rows stacked into one GEMM for few filters (layer1's 64)
        tmp = _scratch("rows_out", _kernel_row_tmp_size(KH, wk.shape[1], (rows + ext) * Wo, rows * Wo), x.dtype)
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
            if wk is not None:  # kernel row p reads the rows of Y from p*dh on
                _kernel_row_sums(wk, yf, dh * Wo, r * Wo, out[n, :, i0 * Wo:(i0 + r) * Wo], tmp)
                if epi is not None:
                    epi(out, n, n + 1, i0 * Wo, (i0 + r) * Wo)
            if dwk is not None:
                s = src[n, :, i0 * Wo:(i0 + r) * Wo]
                for p in range(KH):
                    dwk[p] += _outer(s, yf[:, p * dh * Wo:(p * dh + r) * Wo])


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


# --------------------------------------------------------------------------- entry points


_KEEP_COLS_BYTES = 16 * 2**20  # conv2d_forward(keep_cols=True) keeps the columns up to this size


def _conv_into(out, x, w, stride, padding, dilation, out_hw, *, epi=None, alloc=np.empty, keep_cols=False):
    """``out[:] = conv2d(x, w)`` (out (N, F, Ho*Wo)) by the path that fits the problem, for
    :func:`conv2d_forward` and :func:`conv2d_fused`: a 1x1 stride-1 conv is one GEMM on x
    itself; large stride-1 maps take the row-unrolled path (:func:`_gemm_rows`), small ones
    the wide rows (:func:`_gemm_wide`); the others (strided convs) the blocked per-tap engine
    on the stride phases (:func:`_gemm_im2col`).
    epi: None or an :class:`_Epilogue` applied to each output block after its GEMM.
    alloc: where a strided conv's phases come from (``np.empty`` or ``arena.empty``).
    keep_cols: keep the per-tap engine's columns when it runs and they take at most
    ``_KEEP_COLS_BYTES``. Returns those columns (1-D), else None.
    """
    N, C, H, W = x.shape
    F, _, KH, KW = w.shape
    Ho, Wo = out_hw
    cols = None
    if _is_pointwise(KH, KW, stride, padding):
        np.matmul(_weight_matrix(w), np.ascontiguousarray(x).reshape(N, C, H * W), out=out)
        if epi is not None:
            epi(out, 0, N, 0, Ho * Wo)
    elif _use_rows(N, C, KH, KW, Ho, Wo, stride, x.itemsize):
        wk = np.ascontiguousarray(w.transpose(2, 0, 1, 3)).reshape(KH, F, C * KW)
        _gemm_rows(x, padding, KH, KW, dilation, (Ho, Wo), wk=wk, out=out, epi=epi)
    elif _use_wide(C, KH, KW, Ho, Wo, stride, padding):
        _gemm_wide(x, padding, KH, KW, dilation, (Ho, Wo), _weight_matrix(w), out, epi=epi)
    else:
        taps = _taps(KH, KW, stride, dilation)
        K = C * KH * KW
        if keep_cols and 0 < K * N * Ho * Wo * x.itemsize <= _KEEP_COLS_BYTES:
            cols = np.empty(K * N * Ho * Wo, dtype=x.dtype)
        _gemm_im2col(_phases(x, padding, taps, alloc), taps, (N, C, KH, KW, Ho, Wo), wm=_weight_matrix(w),
                     out=out, keep=cols, epi=epi)
    return cols


def conv2d_forward(x, w, stride, padding, dilation, out_hw, keep_cols=False, bias=None, residual=None, relu=False):
    """conv2d: x (N, C, H, W), w (F, C, KH, KW) -> (N, F, Ho, Wo), then ``+ bias``, ``+ residual``
    and the ReLU when given, in that order.

    stride, padding, dilation: (h, w) pairs; out_hw: (Ho, Wo). The path is chosen by
    :func:`_conv_into` (the 1x1 GEMM, row-unrolled, wide rows, per-tap engine).
    bias (F,), residual (N, F, Ho, Wo), relu: applied to each block of the output right after
    its GEMM (:class:`_Epilogue`), bit for bit the passes over the whole output one after the
    other, but while the block is in cache and without a new array for each.
    keep_cols: return (out, cols): the per-tap engine's unrolled columns
    (1-D, K*N*Ho*Wo: its blocks' (K, block) matrices end to end) when it ran and they take at most ``_KEEP_COLS_BYTES``, else None;
    :func:`conv2d_backward` takes them back (``cols=``) and does not unroll x again.
    """
    N, F = x.shape[0], w.shape[0]
    Ho, Wo = out_hw
    out = np.empty((N, F, Ho * Wo), dtype=x.dtype)
    cols = _conv_into(out, x, w, stride, padding, dilation, out_hw, epi=_epilogue(bias, residual, relu, out.shape),
                      keep_cols=keep_cols)
    out = out.reshape(N, F, Ho, Wo)
    return (out, cols) if keep_cols else out


_INFER_BLOCK_BYTES = 2**21  # columns of one block of images in conv2d_infer (they stay in cache)
_INFER_MAX_BLOCKS = 8  # ... in at most this many blocks


def _infer_eligible(x, w, stride):
    """conv2d_infer's own path: stride-1 convs with a kernel taller than one row over several
    small images (the mask head's 3x3 convs over hundreds of RoIs; maps too large for the
    row-unrolled engine, see :func:`_use_rows`); others take conv2d_fused."""
    N, C, H, W = x.shape
    KH, KW = w.shape[2:]
    small_maps = not _use_rows(N, C, KH, KW, H, W, stride, x.itemsize)
    return stride == (1, 1) and KH > 1 and N >= 2 and small_maps


def conv2d_infer(x, w, stride, padding, dilation, out_hw, bias=None, relu=False):
    """conv2d for inference: ``relu(conv2d_forward(x, w) + bias)`` up to float32 rounding.

    x (N, C, H, W), w (F, C, KH, KW); bias: (F,) or None; relu: whether to clamp at 0.
    Stride-1 convs of many small images (the mask head's 3x3 convs over hundreds of
    14 x 14 RoIs) run on the wide grid of :func:`_gemm_wide`, kernel row by kernel row
    (:func:`_wide_chain`): each output is the sum of KH partial sums, one per kernel row,
    so it differs from :func:`conv2d_forward` (one sum over all C*KH*KW products) by
    float32 rounding only: both are within gamma_K * sum_k |w_k x_k| of the exact value
    (gamma_K = K u / (1 - K u), u = 2**-24, K = C*KH*KW), so they differ by at most
    twice that. Other convs: :func:`conv2d_fused` (bit for bit ``conv2d_forward``, then
    the bias and ReLU).
    """
    if not _infer_eligible(x, w, stride):
        return conv2d_fused(x, w, stride, padding, dilation, out_hw, bias=bias, relu=relu)
    return _wide_chain(x, [(w, bias)], padding, dilation, out_hw, relu)


def conv_stack_infer(x, weights, biases, padding, dilation):
    """``x -> relu(conv(x, w_k) + b_k)`` for each layer k in turn, for inference: a stack of
    stride-1 convs that keep the map size (the mask head's four 3x3 convs).

    weights: list of (F_k, C_k, KH, KW) of one kernel size (C_k = F_{k-1}); biases: list of
    (F_k,) or None; padding, dilation: (h, w) pairs with 2*padding = dilation*(KH-1, KW-1).
    Each layer's values are :func:`conv2d_infer`'s, bit for bit; the activations between
    layers stay on the wide grid of the first (:func:`_wide_chain`), so only the input is
    laid out on it and only the output is cropped from it. Other inputs: :func:`conv2d_infer`
    layer by layer.
    """
    if not weights:
        return x
    N, C, H, W = x.shape
    KH, KW = weights[0].shape[2:]
    same = all(w.shape[2:] == (KH, KW) for w in weights) and all(
        2 * p == d * (k - 1) for p, d, k in zip(padding, dilation, (KH, KW)))
    if same and _infer_eligible(x, weights[0], (1, 1)):
        return _wide_chain(x, list(zip(weights, biases)), padding, dilation, (H, W), True)
    for w, b in zip(weights, biases):
        out_hw = tuple(n + 2 * p - d * (k - 1) for n, p, d, k in zip(x.shape[2:], padding, dilation, w.shape[2:]))
        x = conv2d_infer(x, w, (1, 1), padding, dilation, out_hw, bias=b, relu=True)
    return x


def _wide_chain(x, layers, padding, dilation, out_hw, relu):
    """Stride-1 convs, one after the other, on the wide grid of :func:`_wide_layout` (the images
    channel-major, end to end, zero separators shared by neighbours as their padding).

    For a block of images, the KW copies ``Y[c, q, m] = xw[c, o + q*dw + m]`` are one copy of a
    strided view with runs as long as the block (the grid puts tap (p, q) of output position l
    at ``xw[c, o + l + p*dh*Wq + q*dw]``), and kernel row p's partial sums for every output of
    the block are ONE product with the columns of Y from ``p*dh*Wq`` on: ``wk[p] @ Y_p``
    (:func:`_kernel_row_sums`, as :func:`_gemm_rows`); they are added in kernel-row order,
    then the bias and ReLU (:class:`_Epilogue`) while the block is in cache. The positions off the images are
    computed and dropped (15 * 15 / (14 * 14) = 1.15x the products at 14 x 14).

    layers: list of (w, bias or None); every layer but the last must keep the map size (its
    output then lands on the grid positions of its input, and becomes the next layer's input
    once the separators are zeroed again). relu: clamp every layer's output at 0 (layers
    before the last always are). Returns the last layer's output (N, F, Ho, Wo), out_hw its size.
    """
    N, C, H, W = x.shape
    KH, KW = layers[0][0].shape[2:]
    (ph, pw), (dh, dw), (Ho, Wo) = padding, dilation, out_hw
    layout = sh, sw, Hq, Wq = _wide_layout(H, W, KH, KW, padding, dilation)
    head, per_image = sh * Wq, Hq * Wq
    L = N * per_image
    o = (sh - ph) * Wq + sw - pw  # tap (0, 0) of output position l reads xw[c, o + l]
    ext = dh * (KH - 1) * Wq  # kernel row KH-1 reads this far past a block
    tail = o + ext + dw * (KW - 1)
    xw = _wide_input(x, layout, tail, alloc=arena.empty)
    out = None
    for k, (w, bias) in enumerate(layers):
        F = w.shape[0]
        last = k == len(layers) - 1
        wk = np.ascontiguousarray(w.transpose(2, 0, 1, 3)).reshape(KH, F, C * KW)  # row p: (F, (c, q))
        epi = _epilogue(bias, None, relu or not last, (1, F, N * per_image))  # None: nothing to apply
        if last:
            out = arena.empty((N, F, Ho, Wo), x.dtype)
        else:
            nxt = arena.empty((F, xw.shape[1]), x.dtype)
        per = max(1, min(N, _INFER_BLOCK_BYTES // (C * KW * per_image * x.itemsize)))
        per = max(per, -(-N // _INFER_MAX_BLOCKS))  # few GEMM calls: each one a BLAS thread may stall
        Lmax = per * per_image
        ybuf = _scratch("cols", C * KW * (Lmax + ext), x.dtype)
        obuf = _scratch("rows_out", F * Lmax + _kernel_row_tmp_size(KH, F, Lmax + ext, Lmax), x.dtype)
        for n0 in range(0, N, per):
            n1 = min(N, n0 + per)
            Lb = (n1 - n0) * per_image
            y = ybuf[:C * KW * (Lb + ext)].reshape(C, KW, Lb + ext)
            np.copyto(y, _strided(xw, o + n0 * per_image, (C, KW, Lb + ext), (xw.shape[1], dw, 1)))
            ob = obuf[:F * Lb].reshape(F, Lb)
            _kernel_row_sums(wk, y.reshape(C * KW, Lb + ext), dh * Wq, Lb, ob, obuf[F * Lmax:])
            if epi is not None:
                epi(ob[None], 0, 1, 0, Lb)
            if last:
                out[n0:n1] = ob.reshape(F, n1 - n0, Hq, Wq)[:, :, :Ho, :Wo].transpose(1, 0, 2, 3)
            else:  # output (i, j) of image n is grid position head + sw + l: its input pixel's
                nxt[:, head + sw + n0 * per_image:head + sw + n1 * per_image] = ob
        if not last:  # the values that landed on separators (outputs off the image) are zeroed
            nxt[:, :head + sw] = 0
            nxt[:, head + L:] = 0
            grid = nxt[:, head:head + L].reshape(F, N, Hq, Wq)
            grid[:, :, H:] = 0
            grid[:, :, :H, :sw] = 0
            xw, C = nxt, F
    return out


class _Epilogue(NamedTuple):
    """What :func:`conv2d_fused` does to each block of the output once its GEMM has run:
    ``o += bias``, ``o += residual``, ``o = max(o, 0)``, in that order (the order of the
    unfused stage code, so the same bits), on ``out[n0:n1, :, c0:c1]`` while it is still
    warm in cache, instead of one pass over the whole output per step.

    bias: (F, 1) or None; residual: (N, F, Ho*Wo) or None; relu: bool.
    """

    bias: np.ndarray
    residual: np.ndarray
    relu: bool

    def __call__(self, out, n0, n1, c0, c1):
        o = out[n0:n1, :, c0:c1]
        if self.bias is not None:
            o += self.bias
        if self.residual is not None:
            o += self.residual[n0:n1, :, c0:c1]
        if self.relu:
            np.maximum(o, o.dtype.type(0), out=o)


def _epilogue(bias, residual, relu, shape):
    """The :class:`_Epilogue` of an output of ``shape`` (N, F, Ho*Wo), or None when there is
    nothing to apply. bias (F,) or None; residual (N, F, Ho, Wo) or None."""
    if bias is None and residual is None and not relu:
        return None
    N, F, L = shape
    return _Epilogue(None if bias is None else bias.reshape(F, 1),
                     None if residual is None else residual.reshape(N, F, L), bool(relu))


def conv2d_fused(x, w, stride, padding, dilation, out_hw, bias=None, residual=None, relu=False, reuse=True):
    """``relu(conv2d_forward(x, w) + bias + residual)`` for inference, bit for bit.

    x (N, C, H, W), w (F, C, KH, KW); bias (F,) or None; residual (N, F, Ho, Wo) or None;
    relu: whether to clamp at 0 (``np.maximum``: NaN passes, as torch). The same GEMMs
    on the same blocks as :func:`conv2d_forward` (the 1x1, row-unrolled, wide-row and
    per-tap paths; ``tests/test_kernels.py`` checks the bits), but

    - the output comes from :func:`arena.empty`, memory reused between calls instead of
      fresh pages (800 px backbone + FPN: about 10,000 page faults and 0.06-0.1 s of
      system time a forward before);
    - bias, residual and ReLU are applied to each output block right after its GEMM
      (:class:`_Epilogue`), not as whole passes afterwards;
    - a strided conv keeps no columns for a backward (``keep_cols``).

    reuse: False takes the output (and a strided conv's phases) from ``np.empty``: for the
    frozen layers of a training step, where reused memory parked in the pool between steps
    would only add to the step's peak (measured: +119 MB at 800 px).
    """
    N, F = x.shape[0], w.shape[0]
    Ho, Wo = out_hw
    alloc = arena.empty if reuse else np.empty
    out = alloc((N, F, Ho * Wo), x.dtype)
    _conv_into(out, x, w, stride, padding, dilation, out_hw, epi=_epilogue(bias, residual, relu, out.shape),
               alloc=alloc)
    return out.reshape(N, F, Ho, Wo)


def conv1x1_stacked(x, ws, biases):
    """Several 1x1 stride-1 convs of the same x, with bias: a list of (N, F_i, H, W) outputs,
    bit for bit :func:`conv2d_fused` of each (the RPN head's objectness and deltas).

    Where every single GEMM is large enough for OpenBLAS's regular kernel
    (``F_i * C * H * W > _SMALL_GEMM``), the filters are stacked into one GEMM, one pass
    over x instead of one per conv, and the outputs are views of its result; the small-matrix
    kernel sums in another order, so smaller maps keep one GEMM per conv (same bits).
    ws: list of (F_i, C, 1, 1); biases: list of (F_i,).
    """
    N, C, H, W = x.shape
    if min(w.shape[0] for w in ws) * C * H * W <= _SMALL_GEMM:
        return [conv2d_fused(x, w, (1, 1), (0, 0), (1, 1), (H, W), b) for w, b in zip(ws, biases)]
    out = conv2d_fused(x, np.concatenate(ws), (1, 1), (0, 0), (1, 1), (H, W), np.concatenate(biases))
    splits = np.cumsum([w.shape[0] for w in ws])[:-1]
    return np.split(out, splits, axis=1)


def conv2d_backward(dout, x, w, stride, padding, dilation, need_dx=True, cols=None):
    """Gradients of :func:`conv2d_forward`: dout (N, F, Ho, Wo) -> (dx (N, C, H, W), dw (F, C, KH, KW)).

    ``dw = sum_n dout[n] @ cols[n].T`` with the columns unrolled again block by
    block (or ``cols``, kept by ``conv2d_forward(keep_cols=True)``: the same bits,
    no second unroll); ``dx = col2im(w^T @ dout)``, or for stride 1 a forward conv
    of dout with the flipped kernel. need_dx False: dx is None, not computed (the
    stem's input is the image): ResNet's 7x7 stem on 4 x 3 x 128 x 128, 5.4 -> 1.5 ms.
    """
    N, C, H, W = x.shape
    F, _, KH, KW = w.shape
    Ho, Wo = dout.shape[2:]
    d2 = np.ascontiguousarray(dout).reshape(N, F, Ho * Wo)
    wm = _weight_matrix(w)
    if _is_pointwise(KH, KW, stride, padding):
        x2 = np.ascontiguousarray(x).reshape(N, C, H * W)
        dw = _batched_outer(d2, x2)
        dx = np.matmul(wm.T, d2).reshape(N, C, H, W) if need_dx else None
    else:
        shape6 = (N, C, KH, KW, Ho, Wo)
        taps = _taps(KH, KW, stride, dilation)
        rows = _use_rows(N, C, KH, KW, Ho, Wo, stride, x.itemsize)
        if rows:
            dwk = np.zeros((KH, F, C * KW), dtype=x.dtype)
            _gemm_rows(x, padding, KH, KW, dilation, (Ho, Wo), src=d2, dwk=dwk)
            dw = dwk.reshape(KH, F, C, KW).transpose(1, 2, 0, 3)
        else:  # (not wide rows: summing their dropped positions too would move dw's bits)
            dw = np.zeros((F, C * KH * KW), dtype=x.dtype)
            if cols is not None:
                _dw_from_cols(cols, d2, shape6, dw)
            else:
                _gemm_im2col(_phases(x, padding, taps), taps, shape6, src=d2, dw=dw)
        back_pad = tuple(d * (k - 1) - p for d, k, p in zip(dilation, (KH, KW), padding))
        if not need_dx:
            dx = None
        elif stride == (1, 1) and min(back_pad) >= 0:
            # stride 1: dx is the convolution of dout, padded by d*(k-1) - p, with the
            # kernel flipped in space and its channel axes swapped; as a forward conv it
            # copies dout KW (or KH*KW) times instead of adding KH*KW slices into dx.
            w_flip = w[:, :, ::-1, ::-1].transpose(1, 0, 2, 3)  # (C, F, KH, KW)
            dx = np.empty((N, C, H * W), dtype=x.dtype)
            if rows:
                wk = np.ascontiguousarray(w_flip.transpose(2, 0, 1, 3)).reshape(KH, C, F * KW)
                _gemm_rows(dout, back_pad, KH, KW, dilation, (H, W), wk=wk, out=dx)
            elif _use_wide(F, KH, KW, H, W, stride, back_pad):
                _gemm_wide(dout, back_pad, KH, KW, dilation, (H, W), _weight_matrix(w_flip), dx)
            else:  # (the taps of a stride-1 conv are the same for x and dout)
                _gemm_im2col(_phases(dout, back_pad, taps), taps, (N, F, KH, KW, H, W),
                             wm=_weight_matrix(w_flip), out=dx)
            dx = dx.reshape(N, C, H, W)
        else:
            xp_shape = (N, C, H + 2 * padding[0], W + 2 * padding[1])
            dphases = _zero_phases(xp_shape, taps, x.dtype)
            _gemm_col2im(np.ascontiguousarray(wm.T), d2, dphases, taps, shape6)
            dx = _assemble(dphases, xp_shape, taps, padding, H, W)
    return dx, np.ascontiguousarray(dw).reshape(w.shape)


def conv_transpose2d_forward(x, w, stride, padding, dilation, out_hw):
    """Transposed conv without bias: x (N, C_in, H, W), w (C_in, C_out, KH, KW) -> (N, C_out, Ho, Wo).

    out_hw: (Ho, Wo), output_padding included. ``cols = w^T . x`` (one GEMM)
    then col2im; the pointwise and the tiling (stride = kernel) cases are
    one GEMM and a copy.
    """
    N, Cin, H, W = x.shape
    _, Cout, KH, KW = w.shape
    Ho, Wo = out_hw
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
    return out


def conv_transpose2d_backward(dout, x, w, stride, padding, dilation):
    """Gradients of :func:`conv_transpose2d_forward`: dout (N, C_out, Ho, Wo) ->
    (dx (N, C_in, H, W), dw (C_in, C_out, KH, KW)).

    dx is the ordinary convolution of dout with w (read as (F=C_in, C=C_out, KH, KW)).
    """
    N, Cin, H, W = x.shape
    _, Cout, KH, KW = w.shape
    Ho, Wo = dout.shape[2:]
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
            dw += _outer(xc, cols)
    else:
        dx = np.empty((N, Cin, H * W), dtype=x.dtype)
        dw = np.zeros_like(wm)
        taps = _taps(KH, KW, stride, dilation)
        phases = _phases(dout, padding, taps)
        _gemm_im2col(phases, taps, (N, Cout, KH, KW, H, W), wm=wm, out=dx, src=x2, dw=dw)
    return dx.reshape(N, Cin, H, W), dw.reshape(w.shape)
