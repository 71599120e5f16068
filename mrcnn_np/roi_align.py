"""RoIAlign, the FPN level mapper and multi-level RoIAlign (chapter 06).

RoIAlign turns a box of any size on a feature map into a fixed ``ph x pw`` grid
of features, without rounding the box to whole cells: every output bin is the
average of a few bilinearly interpolated sample points. Twin of torchvision's
``torchvision.ops.roi_align`` (same arguments, same numbers); the level mapper
is the twin of ``torchvision.ops.poolers.LevelMapper`` and the multi-level
version of ``torchvision.ops.MultiScaleRoIAlign``.

Shape shorthand
---------------
N images, C channels, H, W feature-map height and width, K boxes (rois),
ph, pw pooled output height and width (``output_size``), gh, gw sampling grid
per bin (points per bin along y and x), L pyramid levels.

Coordinates and the pixel model behind ``aligned``
--------------------------------------------------
Boxes are ``(K, 5)`` rows ``[batch_index, x1, y1, x2, y2]`` in input-image
pixels; ``spatial_scale`` (e.g. 1/16) maps them onto the feature map.
Feature cell ``(i, j)`` stores the value *at* the continuous point
``(y, x) = (i, j)``: bilinear interpolation between integer coordinates.

But a pixel is a unit square: pixel ``j`` covers ``[j, j + 1)`` and its centre
is at ``j + 0.5``. A box edge at ``x1`` in pixel-corner units therefore lies
at ``x1 - 0.5`` in the "value at integer points" units of the interpolation.

* ``aligned=False`` (Mask R-CNN v1, torchvision's default) ignores that
  half-pixel: the scaled box is used as is, so every sample lands half a cell
  too far right and down. It also clamps a box's width and height to at least
  one cell, so a tiny box still samples a one-cell neighbourhood.
* ``aligned=True`` shifts the scaled box by ``-0.5`` so that sampling happens
  in pixel-centre units (a box ``[0, W]`` covers exactly the map's ``W``
  cells), and does not clamp the size.

The sampling rule, per box (exactly torchvision's CPU kernel)::

    offset   = 0.5 if aligned else 0
    start    = (x1, y1) * spatial_scale - offset
    size     = (x2 - x1, y2 - y1) * spatial_scale       (>= 1 if not aligned)
    bin      = size / (pw, ph)
    grid     = sampling_ratio if sampling_ratio > 0 else ceil(size / pooled)
    sample i = start + p * bin + (i + 0.5) * bin / grid,   i = 0 .. grid-1
    out      = sum of bilinear(sample) over the grid / (gh * gw)

``bilinear(y, x)`` is 0 when ``y < -1``, ``y > H``, ``x < -1`` or ``x > W``
(the sample still counts in the average); otherwise a coordinate ``<= 0``
becomes 0, and one whose floor is ``>= H - 1`` (``W - 1``) uses the last
row (column) for both neighbours.

With ``aligned=True`` and adaptive sampling, an empty or inverted box
(``x2 <= x1`` or ``y2 <= y1``) has a grid of no points and its output is 0;
torchvision's CPU kernel returns the same 0 for some of those boxes and
fails ("cannot create std::vector larger than max_size()") on the others.

Implementation
--------------
RoIAlign is linear in the feature map: ``out = M @ features`` for a sparse
matrix ``M`` with one row per output bin ``(k, p, q)`` and one column per
feature cell ``(n, h, w)`` (``roi_align_matrix``). Row ``(k, p, q)`` holds,
for each of the bin's ``gh * gw`` samples, the four bilinear weights above
divided by ``gh * gw``, on the four neighbour cells; a cell shared by several
samples is stored once with the summed weight, zero weights are dropped.
``M`` is built vectorised, with no loop over single boxes, bins or samples
(only over memory-bounded chunks of boxes and, with adaptive sampling, over
the distinct grid sizes ``(gh, gw)``, boxes of one size together): the
weights factor into a y part and an x part (``w = wy * wx``, and the "outside
[-1, H] x [-1, W] gives 0" rule factors too), so the neighbours and weights
are computed once per box row (ph of them) and per box column (pw), and the
entries of bin ``(p, q)`` are the outer product of row p's and column q's.

With the features laid out channels last, ``(N*H*W, C)``, the forward is one
sparse times dense product ``M @ F`` and the backward one product with the
transpose, ``M^T @ dout`` (a scatter-add), both scipy's compiled kernels
through the public ``scipy.sparse`` API. That alone, single-threaded, is
faster than torchvision's C++ CPU kernel on the benchmark
(``benchmarks/bench_roi_align.py``: 512 boxes on a (1, 256, 50, 50) float32
map, sampling_ratio 2; 2-core machine under load, float32 GEMM at 62 GFLOP/s
in the same process, min of repeats): 7x7 forward 17 ms vs 75 ms, forward +
backward 30 ms vs 527 ms; 14x14 forward 84 ms vs 311 ms, forward + backward
127 ms vs 2059 ms. (A thread pool over box blocks plus scipy's private
in-place kernels were tried and removed: 1.05x to 1.7x faster depending on
the load, not worth two more code paths.)

When channels are few and sampling grids large (mask targets: adaptive
sampling of big boxes on (G, 1, H, W) masks) the full matrix would be
mostly build cost, and the separable form is used instead (chosen by an
operation count, see ``_use_separable``): ``out = S @ (A_y @ features)``,
first every box row interpolated along y, then along x
(``roi_align_separable``); e.g. 128 mask targets of 28x28 from eight
600x800 masks, boxes 40 to 400 px: 22 ms instead of 121 ms. Both forms give
the same numbers up to rounding.
``roi_align_naive`` is the formula as loops.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import scipy.sparse as sp

from ._checks import check_array, check_finite, check_float, check_pair, check_positive_int

__all__ = [
    "RoIAlignCache",
    "MultiScaleRoIAlignCache",
    "roi_align_forward",
    "roi_align_backward",
    "roi_align_naive",
    "roi_align_matrix",
    "roi_align_separable",
    "roi_sample_points",
    "roi_pool_naive",
    "level_mapper",
    "multiscale_roi_align_forward",
    "multiscale_roi_align_backward",
]


class RoIAlignCache(NamedTuple):
    """What ``roi_align_backward`` needs.

    matrix: scipy CSR matrix (K*ph*pw, N*H*W), the linear map of the forward.
    input_shape: (N, C, H, W).
    output_size: (ph, pw).
    dtype: dtype of the input.
    separable: None, or ``(a_y, s)`` from ``roi_align_separable`` when the
        forward used the separable form (then ``matrix`` is None).
    """

    matrix: object
    input_shape: tuple
    output_size: tuple
    dtype: np.dtype
    separable: tuple = None


class MultiScaleRoIAlignCache(NamedTuple):
    """What ``multiscale_roi_align_backward`` needs.

    levels: (K,) int64 absolute level of each box (k_min .. k_max).
    k_min: level of ``features[0]``.
    indices: list, per level, of the (K_l,) box indices routed to it.
    caches: list, per level, of the ``RoIAlignCache`` (None if no box).
    feature_shapes: list of (N, C, H_l, W_l).
    output_shape: (K, C, ph, pw).
    dtype: dtype of the features.
    """

    levels: np.ndarray
    k_min: int
    indices: list
    caches: list
    feature_shapes: list
    output_shape: tuple
    dtype: np.dtype


# ---------------------------------------------------------------------------
# argument checks
# ---------------------------------------------------------------------------


def _check_sampling_ratio(sampling_ratio):
    """Any int (<= 0 means adaptive); bools and floats are rejected."""
    if isinstance(sampling_ratio, bool) or not isinstance(sampling_ratio, (int, np.integer)):
        raise TypeError(f"sampling_ratio must be an int, got {type(sampling_ratio).__name__}")


def _check_roi_args(input, boxes, output_size, spatial_scale, sampling_ratio, aligned):
    check_array("input", input, shape=("N", "C", "H", "W"), dtype_kind="f")
    if input.shape[2] < 1 or input.shape[3] < 1:
        raise ValueError(f"input must have H >= 1 and W >= 1, got shape {input.shape}")
    check_array("boxes", boxes, shape=("K", 5), dtype_kind="fiu")
    ph, pw = check_pair("output_size", output_size)
    spatial_scale = check_float("spatial_scale", spatial_scale)
    if spatial_scale <= 0:
        raise ValueError(f"spatial_scale must be > 0, got {spatial_scale}")
    _check_sampling_ratio(sampling_ratio)
    if not isinstance(aligned, (bool, np.bool_)):
        raise TypeError(f"aligned must be a bool, got {type(aligned).__name__}")
    n = input.shape[0]
    if boxes.shape[0]:
        check_finite("boxes", boxes)
        bidx = boxes[:, 0]
        if np.any(bidx != np.round(bidx)):
            bad = bidx[bidx != np.round(bidx)][0]
            raise ValueError(f"boxes[:, 0] (batch index) must be integer-valued, got {bad}")
        if bidx.min() < 0 or bidx.max() >= n:
            bad = bidx[(bidx < 0) | (bidx >= n)][0]
            raise ValueError(
                f"boxes[:, 0] (batch index) must be in [0, {n - 1}] for input with N={n}, "
                f"got {bad:g}"
            )
    return (ph, pw), spatial_scale, int(sampling_ratio), bool(aligned)


def _check_matrix_args(input_shape, boxes, output_size, spatial_scale, sampling_ratio, aligned,
                       dtype):
    """``_check_roi_args`` for the matrix builders, given a shape and a dtype."""
    if not (isinstance(input_shape, (tuple, list)) and len(input_shape) == 4):
        raise ValueError(f"input_shape must be (N, C, H, W), got {input_shape!r}")
    n, _, h, w = (check_positive_int("input_shape", v, minimum=0) for v in input_shape)
    dtype = np.dtype(dtype)
    like = np.empty((n, 0, h, w), dtype=dtype)  # no data: shape and dtype only
    return _check_roi_args(like, boxes, output_size, spatial_scale, sampling_ratio,
                           aligned) + (dtype,)


# ---------------------------------------------------------------------------
# geometry shared by the fast path and the figures
# ---------------------------------------------------------------------------


def _roi_geometry(boxes, output_size, spatial_scale, sampling_ratio, aligned, dtype):
    """Per box: start (K, 2) [y, x], bin size (K, 2), grid (K, 2) int, count (K,).

    All arithmetic in ``dtype`` (the feature dtype), as torchvision does.
    """
    ph, pw = output_size
    dt = np.dtype(dtype).type
    b = boxes[:, 1:].astype(dtype)
    scale = dt(spatial_scale)
    offset = dt(0.5) if aligned else dt(0.0)
    x1 = b[:, 0] * scale - offset
    y1 = b[:, 1] * scale - offset
    x2 = b[:, 2] * scale - offset
    y2 = b[:, 3] * scale - offset
    rw = x2 - x1
    rh = y2 - y1
    if not aligned:
        rw = np.maximum(rw, dt(1.0))
        rh = np.maximum(rh, dt(1.0))
    bin_h = rh / dt(ph)
    bin_w = rw / dt(pw)
    if sampling_ratio > 0:
        gh = np.full(len(b), sampling_ratio, dtype=np.int64)
        gw = gh.copy()
    else:
        gh = np.ceil(rh / dt(ph)).astype(np.int64)
        gw = np.ceil(rw / dt(pw)).astype(np.int64)
    count = np.maximum(gh * gw, 1)
    start = np.stack([y1, x1], axis=1)
    binsz = np.stack([bin_h, bin_w], axis=1)
    grid = np.stack([gh, gw], axis=1)
    return start, binsz, grid, count


def _axis_samples(start, binsz, pooled, grid, dtype, width=None):
    """Sample coordinates along one axis: (Kg, pooled, width).

    grid: int (shared by the boxes) or (Kg,) ints, the samples per bin of each
    box; width: the padded number of samples (default: the largest grid).
    Entries ``i >= grid`` of a box are padding (meaningless coordinates).
    """
    grid = np.asarray(grid)
    if width is None:
        width = int(grid.max(initial=0))
    dt = np.dtype(dtype).type
    p = np.arange(pooled, dtype=dtype)[None, :, None]
    i = np.arange(width, dtype=dtype)[None, None, :]
    s = start[:, None, None]
    b = binsz[:, None, None]
    g = grid.astype(dtype).reshape(-1, 1, 1) if grid.ndim else dt(grid)
    return s + p * b + (i + dt(0.5)) * b / g


def _axis_bilinear(coord, size):
    """Torchvision's bilinear rule along one axis, element-wise.

    coord: array of sample coordinates; size: H or W.
    Returns (lo, hi, w_lo, w_hi): int64 neighbour indices (always in range) and
    their weights, which are 0 for a sample outside [-1, size].
    """
    dtype = coord.dtype
    valid = (coord >= -1) & (coord <= size)
    c = np.clip(coord, 0, size).astype(dtype, copy=False)  # y <= 0 -> 0
    lo = np.floor(c).astype(np.int64)
    last = lo >= size - 1
    lo = np.where(last, size - 1, lo)
    hi = np.where(last, size - 1, lo + 1)
    c = np.where(last, lo.astype(dtype), c)
    frac = c - lo.astype(dtype)
    w_hi = np.where(valid, frac, 0).astype(dtype, copy=False)
    w_lo = np.where(valid, 1 - frac, 0).astype(dtype, copy=False)
    return lo, hi, w_lo, w_hi


def _sort_rows(key, *arrays):
    """Sort every row (last axis) of ``key`` and reorder ``arrays`` the same way.

    One stable 1-D argsort of ``row * span + key`` instead of a per-row sort
    (rows here are short, so a per-row sort is dominated by call overhead).
    key: (R, m) non-negative ints.
    """
    r, m = key.shape
    span = int(key.max(initial=0)) + 1
    order = np.argsort((np.arange(r)[:, None] * span + key).reshape(-1), kind="stable")
    return [a.reshape(-1)[order].reshape(r, m) for a in arrays]


def _merge_repeats(idx, w):
    """Sum the weights of repeated indices along the last axis.

    idx (..., m) int, w (..., m): per row, m (index, weight) pairs, e.g. the two
    neighbours of each of a bin's samples along one axis (neighbouring samples
    often share a row). Returns (idx, w): each distinct index once with its
    total weight, and weight 0 on the other entries (dropped later with the
    other zero weights). When m > 8 the last axis is also cut to the largest
    number of distinct non-zero-weight indices of any row (at most H or W).
    """
    shape = idx.shape
    idx2, w2 = idx.reshape(-1, shape[-1]), w.reshape(-1, shape[-1])
    if idx2.size == 0:
        return idx, w
    idx2, w2 = _sort_rows(idx2, idx2, w2)
    first = np.ones(idx2.shape, dtype=bool)
    first[:, 1:] = idx2[:, 1:] != idx2[:, :-1]
    merged = np.zeros_like(w2)
    merged[first] = np.add.reduceat(w2.reshape(-1), np.flatnonzero(first.reshape(-1)))
    if shape[-1] > 8:  # stored entries first, then cut the padding shared by every row
        idx2, merged = _sort_rows((merged == 0).astype(np.int64), idx2, merged)
        keep = max(int(np.count_nonzero(merged, axis=-1).max()), 1)
        idx2, merged = idx2[:, :keep], merged[:, :keep]
    return idx2.reshape(shape[:-1] + (-1,)), merged.reshape(shape[:-1] + (-1,))


def _axis_weights(input_shape, boxes, output_size, spatial_scale, sampling_ratio, aligned,
                  dtype, *, pad=False):
    """The 1-D interpolation weights of every box, one chunk of boxes at a time.

    Yields ``(kk, yi, wy, xi, wx)`` for chunks of boxes ``kk`` (int64 indices)
    sharing a sampling grid: yi, wy (Kg, ph, my) row indices and weights of
    each bin row (all its samples' two neighbours, repeats merged, divided by
    the sample count gh*gw); xi, wx (Kg, pw, mx) the same for bin columns.
    The weights of bin (p, q) on cell (h, w) are ``wy[p] * wx[q]`` summed
    over the entries with ``yi == h`` and ``xi == w`` (outer product).
    Boxes with an empty grid (no sample points) are skipped: their output is 0.
    pad: put all boxes in one pass, each padded to the largest grid with
    zero-weight samples (cheap for 1-D weights; the full matrix instead groups
    boxes by grid, since padding would multiply its 2-D entries).
    """
    _, _, height, width = input_shape
    ph, pw = output_size
    dtype = np.dtype(dtype)
    k = boxes.shape[0]
    start, binsz, grid, count = _roi_geometry(boxes, (ph, pw), spatial_scale, sampling_ratio,
                                              aligned, dtype)
    nonempty = (grid[:, 0] > 0) & (grid[:, 1] > 0)
    if not (k and np.any(nonempty)):
        return
    which = np.flatnonzero(nonempty)
    if pad:  # one pass, every box padded to the largest grid (zero weights)
        groups = [which]
    else:  # one pass per distinct sampling grid (one when sampling_ratio > 0)
        pairs, group = np.unique(grid[nonempty], axis=0, return_inverse=True)
        groups = [which[group.reshape(-1) == g] for g in range(len(pairs))]
    for members in groups:
        gh_max, gw_max = (int(v) for v in grid[members].max(axis=0))
        my, mx = min(2 * gh_max, height + 1), min(2 * gw_max, width + 1)
        # bound the temporaries: about _CHUNK_ENTRIES entries at a time
        per_box = (ph * my + pw * mx) * 16 if pad else ph * pw * my * mx
        step = max(1, _CHUNK_ENTRIES // per_box)
        for c0 in range(0, len(members), step):
            kk = members[c0:c0 + step]
            gh, gw = grid[kk, 0], grid[kk, 1]
            ys = _axis_samples(start[kk, 0], binsz[kk, 0], ph, gh, dtype)  # (Kg, ph, Gh)
            xs = _axis_samples(start[kk, 1], binsz[kk, 1], pw, gw, dtype)  # (Kg, pw, Gw)
            ylo, yhi, wylo, wyhi = _axis_bilinear(ys, height)
            xlo, xhi, wxlo, wxhi = _axis_bilinear(xs, width)
            # padding samples (i >= the box's grid) get weight 0
            vy = (np.arange(ys.shape[2]) < gh[:, None])[:, None, :].astype(dtype)
            vx = (np.arange(xs.shape[2]) < gw[:, None])[:, None, :].astype(dtype)
            inv_count = (dtype.type(1) / count[kk].astype(dtype))[:, None, None]  # 1/(gh*gw)
            yi, wy = _merge_repeats(np.concatenate([ylo, yhi], axis=2),
                                    np.concatenate([wylo * vy, wyhi * vy], axis=2) * inv_count)
            xi, wx = _merge_repeats(np.concatenate([xlo, xhi], axis=2),
                                    np.concatenate([wxlo * vx, wxhi * vx], axis=2))
            yield kk, yi, wy, xi, wx


def _rows_in_order(parts, n_rows):
    """True when the parts' rows, concatenated, are 0, 1, ..., n_rows - 1."""
    rows = np.concatenate([p[0] for p in parts]) if parts else np.zeros(0, dtype=np.int64)
    return len(rows) == n_rows and bool(np.all(rows == np.arange(n_rows)))


def _assemble_csr(row_count, ncols, parts, in_order, dtype):
    """A CSR matrix from pieces.

    row_count: (R,) stored entries per row. parts: list of (rows, cols,
    weights): the entries of the given rows, row by row in that order.
    in_order: the parts, concatenated, already list every row in order.
    """
    n_rows = len(row_count)
    indptr = np.zeros(n_rows + 1, dtype=np.int64)
    np.cumsum(row_count, out=indptr[1:])
    nnz = int(indptr[-1])
    idx_dtype = np.int32 if max(ncols, nnz) < 2**31 - 1 else np.int64
    if in_order:
        indices = np.concatenate([p[1] for p in parts]).astype(idx_dtype, copy=False) \
            if parts else np.zeros(0, dtype=idx_dtype)
        data = np.concatenate([p[2] for p in parts]) if parts else np.zeros(0, dtype=dtype)
    else:
        indices = np.zeros(nnz, dtype=idx_dtype)
        data = np.zeros(nnz, dtype=dtype)
        for rows, cols, weights in parts:
            counts = row_count[rows]
            # destination of each entry: its row's start plus its rank in the row
            first = np.repeat(indptr[rows] - (np.cumsum(counts) - counts), counts)
            pos = first + np.arange(len(cols))
            indices[pos] = cols
            data[pos] = weights
    return sp.csr_matrix((data, indices, indptr.astype(idx_dtype)), shape=(n_rows, ncols))


def roi_align_matrix(input_shape, boxes, output_size, *, spatial_scale=1.0, sampling_ratio=-1,
                     aligned=False, dtype=np.float64):
    """The sparse matrix of RoIAlign: ``out = M @ features``.

    input_shape: (N, C, H, W) (C is not used).
    boxes: (K, 5) ``[batch_index, x1, y1, x2, y2]``.
    Returns a scipy CSR matrix of shape (K*ph*pw, N*H*W) and dtype ``dtype``;
    row ``(k*ph + p)*pw + q`` holds the weights of bin ``(p, q)`` of box ``k``
    on feature cell ``(n*H + h)*W + w``: the bilinear weights of all its
    samples divided by the sample count ``gh*gw``, a cell shared by several
    samples stored once with the summed weight, zero weights not stored.
    Other arguments as in ``roi_align_forward``.

    Bilinear weights factor into a y part and an x part (and so does the
    "outside [-1, H] x [-1, W] gives 0" rule), so the weights of bin (p, q)
    are the outer product of the y weights of row p and the x weights of
    column q; these are computed once per box row and column.
    """
    (ph, pw), spatial_scale, sampling_ratio, aligned, dtype = _check_matrix_args(
        input_shape, boxes, output_size, spatial_scale, sampling_ratio, aligned, dtype)
    n, _, height, width = input_shape
    k = boxes.shape[0]
    bins = ph * pw
    ncols = n * height * width
    idx_dtype = np.int32 if ncols < 2**31 - 1 else np.int64
    base = boxes[:, 0].astype(np.int64) * (height * width)
    row_count = np.zeros(k * bins, dtype=np.int64)
    parts = []
    for kk, yi, wy, xi, wx in _axis_weights(input_shape, boxes, (ph, pw), spatial_scale,
                                            sampling_ratio, aligned, dtype):
        # Entries of row (k, p, q): every y neighbour times every x neighbour.
        # Both pair axes are flattened into one of length my*mx first, so the
        # broadcast products below run long inner loops.
        my, mx = yi.shape[2], xi.shape[2]
        wy16 = np.repeat(wy, mx, axis=2)  # (Kg, ph, my*mx)
        wx16 = np.tile(wx, (1, 1, my))  # (Kg, pw, my*mx)
        ky16 = np.repeat(wy != 0, mx, axis=2)
        kx16 = np.tile(wx != 0, (1, 1, my))
        yb = (base[kk, None, None] + yi * width).astype(idx_dtype)
        yb16 = np.repeat(yb, mx, axis=2)
        xi16 = np.tile(xi.astype(idx_dtype), (1, 1, my))
        keep = np.flatnonzero(ky16[:, :, None, :] & kx16[:, None, :, :])
        weight = (wy16[:, :, None, :] * wx16[:, None, :, :]).reshape(-1).take(keep)
        cell = (yb16[:, :, None, :] + xi16[:, None, :, :]).reshape(-1).take(keep)
        rows = (kk[:, None] * bins + np.arange(bins)[None, :]).reshape(-1)
        ny = np.count_nonzero(wy, axis=2)  # (Kg, ph) stored y neighbours per box row
        nx = np.count_nonzero(wx, axis=2)
        row_count[rows] = (ny[:, :, None] * nx[:, None, :]).reshape(-1)
        parts.append((rows, cell, weight))
    return _assemble_csr(row_count, ncols, parts, _rows_in_order(parts, k * bins), dtype)


def roi_align_separable(input_shape, boxes, output_size, *, spatial_scale=1.0, sampling_ratio=-1,
                        aligned=False, dtype=np.float64):
    """RoIAlign as two sparse factors: ``out = S @ (A_y @ features)``.

    The separable form of ``roi_align_matrix``, cheaper when boxes are large
    and channels few (e.g. mask targets: RoIAlign of (G, 1, H, W) masks with
    adaptive sampling), because it never forms the (pair, pair) products.
    input_shape: (N, C, H, W); boxes: (K, 5); other arguments as in
    ``roi_align_forward``.
    Returns ``(a_y, s)``, scipy CSR matrices:
    a_y (K*ph, N*H): row ``k*ph + p`` holds bin row p's weights on feature
    rows ``n*H + h`` (features laid out (N*H, W*C)), so ``Z = a_y @ F`` is
    every box row interpolated along y, for all W columns;
    s (K*ph*pw, K*ph*W): row ``(k*ph + p)*pw + q`` holds bin column q's
    weights on entries ``(k*ph + p)*W + w`` of ``Z`` laid out (K*ph*W, C).
    """
    (ph, pw), spatial_scale, sampling_ratio, aligned, dtype = _check_matrix_args(
        input_shape, boxes, output_size, spatial_scale, sampling_ratio, aligned, dtype)
    n, _, height, width = input_shape
    k = boxes.shape[0]
    count_y = np.zeros(k * ph, dtype=np.int64)
    count_s = np.zeros(k * ph * pw, dtype=np.int64)
    parts_y, parts_s = [], []
    base = boxes[:, 0].astype(np.int64) * height
    for kk, yi, wy, xi, wx in _axis_weights(input_shape, boxes, (ph, pw), spatial_scale,
                                            sampling_ratio, aligned, dtype, pad=True):
        rows_y = (kk[:, None] * ph + np.arange(ph)[None, :]).reshape(-1)
        keep_y = np.flatnonzero(wy != 0)
        count_y[rows_y] = np.count_nonzero(wy, axis=2).reshape(-1)
        parts_y.append((rows_y, (base[kk, None, None] + yi).reshape(-1).take(keep_y),
                        wy.reshape(-1).take(keep_y)))
        # s: bin (k, p, q) reads Z's row (k, p) at the x neighbours of column q
        zrow = (kk[:, None] * ph + np.arange(ph)[None, :]) * width  # (Kg, ph)
        cols = zrow[:, :, None, None] + xi[:, None, :, :]  # (Kg, ph, pw, mx)
        wts = np.broadcast_to(wx[:, None, :, :], cols.shape)
        keep_s = np.flatnonzero(np.broadcast_to((wx != 0)[:, None, :, :], cols.shape))
        rows_s = (kk[:, None] * (ph * pw) + np.arange(ph * pw)[None, :]).reshape(-1)
        count_s[rows_s] = np.broadcast_to(np.count_nonzero(wx, axis=2)[:, None, :],
                                          (len(kk), ph, pw)).reshape(-1)
        parts_s.append((rows_s, cols.reshape(-1).take(keep_s), wts.reshape(-1).take(keep_s)))
    a_y = _assemble_csr(count_y, n * height, parts_y, _rows_in_order(parts_y, k * ph), dtype)
    s = _assemble_csr(count_s, k * ph * width, parts_s, _rows_in_order(parts_s, k * ph * pw),
                      dtype)
    return a_y, s


# ---------------------------------------------------------------------------
# fast forward / backward
# ---------------------------------------------------------------------------

_CHUNK_ENTRIES = 1 << 22  # (pair, pair) products built at a time in roi_align_matrix
_METHOD = None  # None: choose per call; "matrix" or "separable" to force one (tests)


def _use_separable(input_shape, boxes, output_size, spatial_scale, sampling_ratio, aligned):
    """Pick the cheaper form from a rough operation count.

    The full matrix costs about (build + product) per stored weight, and it
    stores up to (2*gh)*(2*gw) weights per bin; the separable form costs a
    y pass over every column of every box row (W*C per weight of a_y) plus
    2*gw weights per bin. Many channels favour the matrix, large sampling
    grids (adaptive sampling of big boxes) and few channels the separable.
    ``_METHOD`` ("matrix" or "separable") overrides the choice (tests).
    """
    if _METHOD is not None:
        return _METHOD == "separable"
    n, c, height, width = input_shape
    ph, pw = output_size
    if boxes.shape[0] == 0:
        return False
    _, _, grid, _ = _roi_geometry(boxes, output_size, spatial_scale, sampling_ratio, aligned,
                                  np.float64)
    my = np.minimum(2 * np.maximum(grid[:, 0], 0), height + 1).astype(np.float64)
    mx = np.minimum(2 * np.maximum(grid[:, 1], 0), width + 1).astype(np.float64)
    cost_matrix = np.sum(ph * pw * my * mx) * (20.0 + 0.5 * c)
    cost_separable = (np.sum(ph * my) * 0.5 * width * c + np.sum(ph * pw * mx) * (20.0 + c)
                      + boxes.shape[0] * ph * width * c)
    return bool(cost_separable < cost_matrix)


def roi_align_forward(input, boxes, output_size, *, spatial_scale=1.0, sampling_ratio=-1,
                      aligned=False):
    """RoIAlign forward; twin of ``torchvision.ops.roi_align``.

    input: (N, C, H, W) float feature map.
    boxes: (K, 5) rows ``[batch_index, x1, y1, x2, y2]`` in image pixels
        (batch_index integer-valued in [0, N)).
    output_size: int or (ph, pw).
    spatial_scale: feature cells per image pixel (e.g. 1/16), > 0.
    sampling_ratio: sample points per bin along each axis; <= 0 means
        adaptive, ``ceil(roi_size / output_size)`` per box and axis.
    aligned: shift the box by -0.5 cell (pixel-centre model, see module doc).
    Returns ``(out, cache)``: out (K, C, ph, pw) in the input's dtype.
    """
    output_size, spatial_scale, sampling_ratio, aligned = _check_roi_args(
        input, boxes, output_size, spatial_scale, sampling_ratio, aligned)
    n, c, h, w = input.shape
    ph, pw = output_size
    k = boxes.shape[0]
    kw = dict(spatial_scale=spatial_scale, sampling_ratio=sampling_ratio, aligned=aligned,
              dtype=input.dtype)
    # channels last: row (n, h, w) of `cells` is the C-vector of one feature cell
    cells = np.ascontiguousarray(input.transpose(0, 2, 3, 1))
    if _use_separable(input.shape, boxes, output_size, spatial_scale, sampling_ratio, aligned):
        a_y, s = roi_align_separable(input.shape, boxes, output_size, **kw)
        z = a_y @ cells.reshape(n * h, w * c)  # (K*ph, W*C): box rows interpolated along y
        flat = s @ z.reshape(k * ph * w, c)  # (K*ph*pw, C): then along x
        cache = RoIAlignCache(matrix=None, input_shape=tuple(input.shape),
                              output_size=output_size, dtype=input.dtype, separable=(a_y, s))
    else:
        matrix = roi_align_matrix(input.shape, boxes, output_size, **kw)
        flat = matrix @ cells.reshape(n * h * w, c)  # (K*ph*pw, C)
        cache = RoIAlignCache(matrix=matrix, input_shape=tuple(input.shape),
                              output_size=output_size, dtype=input.dtype)
    # dtype: scipy computes float16 in float32; the result keeps the input's dtype
    out = np.ascontiguousarray(flat.reshape(k, ph, pw, c).transpose(0, 3, 1, 2),
                               dtype=input.dtype)
    return out, cache


def roi_align_backward(dout, cache):
    """RoIAlign backward: gradient with respect to the feature map.

    dout: (K, C, ph, pw) upstream gradient (not modified).
    cache: from ``roi_align_forward``.
    Returns dinput (N, C, H, W): every bin's gradient spread over the four
    neighbours of each of its samples with the forward's weights
    (``M^T @ dout``, a scatter-add done by scipy's compiled transpose product).
    """
    n, c, h, w = cache.input_shape
    ph, pw = cache.output_size
    rows = (cache.matrix if cache.separable is None else cache.separable[1]).shape[0]
    k = rows // (ph * pw)
    check_array("dout", dout, shape=(k, c, ph, pw), dtype_kind="f")
    # (K*ph*pw, C), channels last, in the forward's dtype (a new array: dout is untouched)
    flat = np.ascontiguousarray(dout.transpose(0, 2, 3, 1), dtype=cache.dtype)
    flat = flat.reshape(k * ph * pw, c)
    if cache.separable is None:
        grad = cache.matrix.T @ flat  # (N*H*W, C)
    else:
        a_y, s = cache.separable
        dz = s.T @ flat  # (K*ph*W, C): back through the x pass
        grad = a_y.T @ dz.reshape(k * ph, w * c)  # (N*H, W*C): back through the y pass
    return np.ascontiguousarray(grad.reshape(n, h, w, c).transpose(0, 3, 1, 2), dtype=cache.dtype)


# ---------------------------------------------------------------------------
# figures helper
# ---------------------------------------------------------------------------


def roi_sample_points(box, output_size, *, spatial_scale=1.0, sampling_ratio=-1, aligned=False):
    """Where RoIAlign samples one box (for figures and notebooks).

    box: (4,) ``x1, y1, x2, y2`` in image pixels.
    Returns ``(ys, xs)``: ys (ph, gh) and xs (pw, gw) sample coordinates on the
    feature map (the value of cell ``(i, j)`` sits at ``(y, x) = (i, j)``);
    bin ``(p, q)`` averages the ``gh * gw`` points ``(ys[p, a], xs[q, b])``.
    Computed in float64.
    """
    box = np.asarray(box, dtype=np.float64)
    if box.shape != (4,):
        raise ValueError(f"box must have shape (4,), got {box.shape}")
    rois = np.concatenate([[0.0], box])[None]  # (1, 5), batch index 0
    (ph, pw), spatial_scale, sampling_ratio, aligned = _check_roi_args(
        np.zeros((1, 1, 1, 1)), rois, output_size, spatial_scale, sampling_ratio, aligned)
    start, binsz, grid, _ = _roi_geometry(rois, (ph, pw), spatial_scale, sampling_ratio, aligned,
                                          np.float64)
    gh, gw = (max(int(g), 0) for g in grid[0])
    ys = _axis_samples(start[:, 0], binsz[:, 0], ph, gh, np.float64)[0] if gh else np.zeros((ph, 0))
    xs = _axis_samples(start[:, 1], binsz[:, 1], pw, gw, np.float64)[0] if gw else np.zeros((pw, 0))
    return ys, xs


# ---------------------------------------------------------------------------
# naive reference
# ---------------------------------------------------------------------------


def _bilinear_naive(fmap, y, x):
    """Torchvision's bilinear interpolation of fmap (C, H, W) at one point -> (C,)."""
    _, height, width = fmap.shape
    if y < -1.0 or y > height or x < -1.0 or x > width:
        return np.zeros(fmap.shape[0], dtype=fmap.dtype)
    y = max(y, 0 * y)  # in [-1, 0]: moved to 0 (0 * y: a zero of y's dtype)
    x = max(x, 0 * x)
    y_low, x_low = int(y), int(x)  # floor, as y, x >= 0
    if y_low >= height - 1:
        y_low = y_high = height - 1
        y = fmap.dtype.type(y_low)
    else:
        y_high = y_low + 1
    if x_low >= width - 1:
        x_low = x_high = width - 1
        x = fmap.dtype.type(x_low)
    else:
        x_high = x_low + 1
    ly, lx = y - y_low, x - x_low
    hy, hx = 1 - ly, 1 - lx
    return (hy * hx * fmap[:, y_low, x_low] + hy * lx * fmap[:, y_low, x_high]
            + ly * hx * fmap[:, y_high, x_low] + ly * lx * fmap[:, y_high, x_high])


def roi_align_naive(input, boxes, output_size, *, spatial_scale=1.0, sampling_ratio=-1,
                    aligned=False):
    """RoIAlign with loops over boxes, bins and samples (reference for tests).

    Same arguments and result as ``roi_align_forward`` (without the cache):
    input (N, C, H, W), boxes (K, 5) -> out (K, C, ph, pw).
    """
    (ph, pw), spatial_scale, sampling_ratio, aligned = _check_roi_args(
        input, boxes, output_size, spatial_scale, sampling_ratio, aligned)
    dt = input.dtype.type
    k, c = boxes.shape[0], input.shape[1]
    out = np.zeros((k, c, ph, pw), dtype=input.dtype)
    offset = dt(0.5) if aligned else dt(0.0)
    for r in range(k):
        b, x1, y1, x2, y2 = (dt(v) for v in boxes[r])
        fmap = input[int(b)]
        start_x = x1 * dt(spatial_scale) - offset
        start_y = y1 * dt(spatial_scale) - offset
        roi_w = x2 * dt(spatial_scale) - offset - start_x
        roi_h = y2 * dt(spatial_scale) - offset - start_y
        if not aligned:  # force a malformed box to be at least 1x1
            roi_w, roi_h = max(roi_w, dt(1)), max(roi_h, dt(1))
        bin_h, bin_w = roi_h / dt(ph), roi_w / dt(pw)
        grid_h = sampling_ratio if sampling_ratio > 0 else int(math.ceil(roi_h / dt(ph)))
        grid_w = sampling_ratio if sampling_ratio > 0 else int(math.ceil(roi_w / dt(pw)))
        count = max(grid_h * grid_w, 1)
        for p in range(ph):
            for q in range(pw):
                total = np.zeros(c, dtype=input.dtype)
                for iy in range(grid_h):
                    y = start_y + dt(p) * bin_h + (dt(iy) + dt(0.5)) * bin_h / dt(grid_h)
                    for ix in range(grid_w):
                        x = start_x + dt(q) * bin_w + (dt(ix) + dt(0.5)) * bin_w / dt(grid_w)
                        total += _bilinear_naive(fmap, y, x)
                out[r, :, p, q] = total / dt(count)
    return out


def _round_half_up(v):
    """C's ``round``: halves away from zero (numpy's ``round`` goes to even)."""
    return int(math.copysign(math.floor(abs(float(v)) + 0.5), v))


def roi_pool_naive(input, boxes, output_size, *, spatial_scale=1.0):
    """RoI Pool (Fast R-CNN), loops; twin of ``torchvision.ops.roi_pool``.

    Shown beside RoIAlign in chapter 06 to make its quantisation visible: the
    box is rounded to whole cells and each bin, rounded outwards to whole
    cells, is max-pooled. No gradient (teaching helper only).
    input (N, C, H, W), boxes (K, 5) -> out (K, C, ph, pw); empty bins give 0.
    """
    (ph, pw), spatial_scale, _, _ = _check_roi_args(input, boxes, output_size, spatial_scale,
                                                    1, False)
    _, c, height, width = input.shape
    out = np.zeros((boxes.shape[0], c, ph, pw), dtype=input.dtype)
    for r, (b, x1, y1, x2, y2) in enumerate(boxes):
        sx, sy = _round_half_up(x1 * spatial_scale), _round_half_up(y1 * spatial_scale)
        ex, ey = _round_half_up(x2 * spatial_scale), _round_half_up(y2 * spatial_scale)
        roi_w, roi_h = max(ex - sx + 1, 1), max(ey - sy + 1, 1)
        bin_h, bin_w = roi_h / ph, roi_w / pw
        for p in range(ph):
            h0 = min(max(int(math.floor(p * bin_h)) + sy, 0), height)
            h1 = min(max(int(math.ceil((p + 1) * bin_h)) + sy, 0), height)
            for q in range(pw):
                w0 = min(max(int(math.floor(q * bin_w)) + sx, 0), width)
                w1 = min(max(int(math.ceil((q + 1) * bin_w)) + sx, 0), width)
                if h1 > h0 and w1 > w0:
                    out[r, :, p, q] = input[int(b), :, h0:h1, w0:w1].max(axis=(1, 2))
    return out


# ---------------------------------------------------------------------------
# FPN level mapper and multi-level RoIAlign
# ---------------------------------------------------------------------------


def level_mapper(boxes, *, k_min=2, k_max=5, canonical_scale=224, canonical_level=4, eps=1e-6):
    """FPN level of each box; twin of ``torchvision.ops.poolers.LevelMapper``.

    ``k = floor(canonical_level + log2(sqrt(area) / canonical_scale) + eps)``
    clamped to ``[k_min, k_max]`` (Lin et al., FPN, eq. 1 with k0 = 4).
    boxes: (K, 4) ``x1, y1, x2, y2`` in image pixels.
    Returns (K,) int64 absolute levels (torchvision's ``LevelMapper`` returns
    ``k - k_min``, an index into the list of feature maps). A box with zero
    (or negative) area goes to ``k_min``.
    """
    check_array("boxes", boxes, shape=("K", 4), dtype_kind="fiu")
    check_finite("boxes", boxes)
    k_min = check_positive_int("k_min", k_min, minimum=0)
    k_max = check_positive_int("k_max", k_max, minimum=k_min)
    canonical_scale = check_float("canonical_scale", canonical_scale, minimum=0)
    if canonical_scale <= 0:
        raise ValueError(f"canonical_scale must be > 0, got {canonical_scale}")
    canonical_level = check_float("canonical_level", canonical_level)
    eps = check_float("eps", eps, minimum=0)
    b = boxes.astype(np.float64) if boxes.dtype.kind != "f" else boxes
    area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    size = np.sqrt(np.maximum(area, 0))
    with np.errstate(divide="ignore"):  # log2(0) = -inf -> k_min below
        k = np.floor(canonical_level + np.log2(size / canonical_scale) + eps)
    return np.clip(k, k_min, k_max).astype(np.int64)


def _levels_from_scales(scales):
    """(k_min, k_max) from the first and last scale, as torchvision's MultiScaleRoIAlign."""
    lvl = [-math.log2(s) for s in scales]
    k_min, k_max = int(round(lvl[0])), int(round(lvl[-1]))
    for i, (s, v) in enumerate(zip(scales, lvl)):
        if abs(v - round(v)) > 1e-6:
            raise ValueError(f"scales must be powers of 1/2, got scales[{i}] = {s}")
        if int(round(v)) != k_min + i:
            raise ValueError(
                f"scales must halve from one level to the next (1/4, 1/8, ...), got {tuple(scales)}"
            )
    return k_min, k_max


def multiscale_roi_align_forward(features, boxes, output_size, *, scales, sampling_ratio=2,
                                 canonical_scale=224, canonical_level=4):
    """RoIAlign over FPN levels; twin of ``torchvision.ops.MultiScaleRoIAlign``.

    features: list of L arrays (N, C, H_l, W_l), e.g. [P2, P3, P4, P5].
    boxes: (K, 5) ``[batch_index, x1, y1, x2, y2]`` in image pixels.
    output_size: int or (ph, pw).
    scales: L spatial scales, e.g. (1/4, 1/8, 1/16, 1/32); k_min and k_max are
        ``-log2`` of the first and the last (as torchvision infers them).
    sampling_ratio: as in ``roi_align_forward``; aligned is False (v1).
    canonical_scale, canonical_level: the level mapper's 224 and k0 = 4.
    Each box is pooled from the level ``level_mapper`` picks for it.
    Returns ``(out, cache)``: out (K, C, ph, pw), row k belongs to box k.
    """
    if not isinstance(features, (list, tuple)) or not features:
        raise TypeError(
            f"features must be a non-empty list of arrays, got {type(features).__name__}")
    for i, f in enumerate(features):
        check_array(f"features[{i}]", f, shape=("N", "C", "H", "W"), dtype_kind="f")
        if f.shape[:2] != features[0].shape[:2] or f.dtype != features[0].dtype:
            raise ValueError(
                f"features[{i}] must share N, C and dtype with features[0] "
                f"{features[0].shape[:2]} {features[0].dtype}, got {f.shape[:2]} {f.dtype}"
            )
    scales = tuple(check_float(f"scales[{i}]", s) for i, s in enumerate(scales))
    if len(scales) != len(features):
        raise ValueError(
            f"scales must have one entry per feature map ({len(features)}), got {len(scales)}")
    if any(s <= 0 for s in scales):
        raise ValueError(f"scales must be > 0, got {scales}")
    k_min, k_max = _levels_from_scales(scales)
    check_array("boxes", boxes, shape=("K", 5), dtype_kind="fiu")
    ph, pw = check_pair("output_size", output_size)
    _check_sampling_ratio(sampling_ratio)
    n, c = features[0].shape[:2]
    levels = level_mapper(boxes[:, 1:], k_min=k_min, k_max=k_max,
                          canonical_scale=canonical_scale, canonical_level=canonical_level)
    out = np.zeros((boxes.shape[0], c, ph, pw), dtype=features[0].dtype)
    indices, caches = [], []
    for i, (fmap, scale) in enumerate(zip(features, scales)):
        idx = np.flatnonzero(levels == k_min + i)
        indices.append(idx)
        if idx.size == 0:
            caches.append(None)
            continue
        out[idx], cache = roi_align_forward(fmap, boxes[idx], (ph, pw), spatial_scale=scale,
                                            sampling_ratio=sampling_ratio, aligned=False)
        caches.append(cache)
    cache = MultiScaleRoIAlignCache(levels=levels, k_min=k_min, indices=indices, caches=caches,
                                    feature_shapes=[f.shape for f in features],
                                    output_shape=out.shape, dtype=out.dtype)
    return out, cache


def multiscale_roi_align_backward(dout, cache):
    """Backward of ``multiscale_roi_align_forward``.

    dout: (K, C, ph, pw) (not modified).
    Returns a list of L gradients, one per feature map, shaped like it
    (zeros for a level that received no box).
    """
    check_array("dout", dout, shape=cache.output_shape, dtype_kind="f")
    grads = []
    for idx, sub, shape in zip(cache.indices, cache.caches, cache.feature_shapes):
        if sub is None:
            grads.append(np.zeros(shape, dtype=cache.dtype))
        else:
            grads.append(roi_align_backward(dout[idx], sub))
    return grads
