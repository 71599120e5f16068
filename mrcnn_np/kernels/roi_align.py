"""RoIAlign as sparse linear maps: the engine behind ``mrcnn_np.roi_align``.

A kernel (see ``mrcnn_np.kernels``): no checks, arguments as
``roi_align._check_roi_args`` returns them (output_size an (ph, pw) pair,
spatial_scale a float > 0, sampling_ratio an int, aligned a bool, boxes
(K, 5) finite with valid batch indices), results equal to the loops of
``roi_align.roi_align_naive`` up to rounding (``tests/test_roi_align.py``,
``tests/test_kernels.py``). The sampling rule and the shape shorthand
(N, C, H, W, K boxes, ph, pw, gh, gw) are those of ``roi_align``'s docstring.

Entry points: :func:`roi_align_forward` / :func:`roi_align_backward`, the two
linear maps :func:`roi_align_matrix` and :func:`roi_align_separable`, the cost
model :func:`cheaper_form` that picks one, and the per-box geometry
(:func:`roi_geometry`, :func:`axis_samples`, :func:`box_sample_points`) shared with
``roi_sample_points``.

How it works, and what it gains
-------------------------------
RoIAlign is linear in the feature map: ``out = M @ features`` for a sparse
matrix ``M`` with one row per output bin ``(k, p, q)`` and one column per
feature cell ``(n, h, w)`` (``roi_align_matrix``). Row ``(k, p, q)`` holds,
for each of the bin's ``gh * gw`` samples, the four bilinear weights of the
sampling rule divided by ``gh * gw``, on the four neighbour cells; a cell shared by several
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
operation count, see :func:`cheaper_form`): ``out = S @ (A_y @ features)``,
first every box row interpolated along y, then along x
(``roi_align_separable``); e.g. 128 mask targets of 28x28 from eight
600x800 masks, boxes 40 to 400 px: 22 ms instead of 121 ms. Both forms give
the same numbers up to rounding.
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from . import arena

__all__ = [
    "roi_geometry",
    "axis_samples",
    "box_sample_points",
    "roi_align_matrix",
    "roi_align_separable",
    "cheaper_form",
    "roi_align_forward",
    "roi_align_backward",
]

_CHUNK_ENTRIES = 1 << 22  # (pair, pair) products built at a time in roi_align_matrix


# ---------------------------------------------------------------------------
# geometry: the sampling rule, vectorised over boxes
# ---------------------------------------------------------------------------


def roi_geometry(boxes, output_size, spatial_scale, sampling_ratio, aligned, dtype):
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


def axis_samples(start, binsz, pooled, grid, dtype, width=None):
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


def box_sample_points(box, output_size, spatial_scale, sampling_ratio, aligned):
    """Sample coordinates of ONE box (4,) ``x1, y1, x2, y2``, in float64: (ys (ph, gh),
    xs (pw, gw)), for ``roi_align.roi_sample_points``."""
    (ph, pw), rois = output_size, np.concatenate([[0.0], box])[None]
    start, binsz, grid, _ = roi_geometry(rois, (ph, pw), spatial_scale, sampling_ratio, aligned, np.float64)
    gh, gw = (max(int(g), 0) for g in grid[0])
    ys = axis_samples(start[:, 0], binsz[:, 0], ph, gh, np.float64)[0] if gh else np.zeros((ph, 0))
    xs = axis_samples(start[:, 1], binsz[:, 1], pw, gw, np.float64)[0] if gw else np.zeros((pw, 0))
    return ys, xs


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


# ---------------------------------------------------------------------------
# the sparse matrices
# ---------------------------------------------------------------------------


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
    start, binsz, grid, count = roi_geometry(boxes, (ph, pw), spatial_scale, sampling_ratio,
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
            ys = axis_samples(start[kk, 0], binsz[kk, 0], ph, gh, dtype)  # (Kg, ph, Gh)
            xs = axis_samples(start[kk, 1], binsz[kk, 1], pw, gw, dtype)  # (Kg, pw, Gw)
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


def roi_align_matrix(input_shape, boxes, output_size, spatial_scale, sampling_ratio, aligned, dtype):
    """The sparse matrix of RoIAlign: ``out = M @ features``.

    input_shape: (N, C, H, W) (C is not used).
    boxes: (K, 5) ``[batch_index, x1, y1, x2, y2]``.
    Returns a scipy CSR matrix of shape (K*ph*pw, N*H*W) and dtype ``dtype``;
    row ``(k*ph + p)*pw + q`` holds the weights of bin ``(p, q)`` of box ``k``
    on feature cell ``(n*H + h)*W + w``: the bilinear weights of all its
    samples divided by the sample count ``gh*gw``, a cell shared by several
    samples stored once with the summed weight, zero weights not stored.
    Other arguments as in ``roi_align.roi_align_forward``, already checked.

    Bilinear weights factor into a y part and an x part (and so does the
    "outside [-1, H] x [-1, W] gives 0" rule), so the weights of bin (p, q)
    are the outer product of the y weights of row p and the x weights of
    column q; these are computed once per box row and column.
    """
    ph, pw = output_size
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


def roi_align_separable(input_shape, boxes, output_size, spatial_scale, sampling_ratio, aligned, dtype):
    """RoIAlign as two sparse factors: ``out = S @ (A_y @ features)``.

    The separable form of ``roi_align_matrix``, cheaper when boxes are large
    and channels few (e.g. mask targets: RoIAlign of (G, 1, H, W) masks with
    adaptive sampling), because it never forms the (pair, pair) products.
    input_shape: (N, C, H, W); boxes: (K, 5); other arguments as in
    ``roi_align.roi_align_forward``, already checked.
    Returns ``(a_y, s)``, scipy CSR matrices:
    a_y (K*ph, N*H): row ``k*ph + p`` holds bin row p's weights on feature
    rows ``n*H + h`` (features laid out (N*H, W*C)), so ``Z = a_y @ F`` is
    every box row interpolated along y, for all W columns;
    s (K*ph*pw, K*ph*W): row ``(k*ph + p)*pw + q`` holds bin column q's
    weights on entries ``(k*ph + p)*W + w`` of ``Z`` laid out (K*ph*W, C).
    """
    ph, pw = output_size
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


def cheaper_form(input_shape, boxes, output_size, spatial_scale, sampling_ratio, aligned):
    """The cheaper form, "matrix" or "separable", from a rough operation count.

    The full matrix costs about (build + product) per stored weight, and it
    stores up to (2*gh)*(2*gw) weights per bin; the separable form costs a
    y pass over every column of every box row (W*C per weight of a_y) plus
    2*gw weights per bin. Many channels favour the matrix, large sampling
    grids (adaptive sampling of big boxes) and few channels the separable.
    """
    n, c, height, width = input_shape
    ph, pw = output_size
    if boxes.shape[0] == 0:
        return "matrix"
    _, _, grid, _ = roi_geometry(boxes, output_size, spatial_scale, sampling_ratio, aligned,
                                  np.float64)
    my = np.minimum(2 * np.maximum(grid[:, 0], 0), height + 1).astype(np.float64)
    mx = np.minimum(2 * np.maximum(grid[:, 1], 0), width + 1).astype(np.float64)
    cost_matrix = np.sum(ph * pw * my * mx) * (20.0 + 0.5 * c)
    cost_separable = (np.sum(ph * my) * 0.5 * width * c + np.sum(ph * pw * mx) * (20.0 + c)
                      + boxes.shape[0] * ph * width * c)
    return "separable" if cost_separable < cost_matrix else "matrix"


# ---------------------------------------------------------------------------
# forward / backward
# ---------------------------------------------------------------------------


_TRANSPOSE_ROWS_BYTES = 2**20  # channels-last copy in blocks of rows of about this many bytes


def _channels_last(x):
    """``np.ascontiguousarray(x.transpose(0, 2, 3, 1))`` on memory reused between calls
    (``arena``), copied in blocks of rows: a transposing copy of a map larger than the cache
    reads each channel at a stride of H*W values; a block of rows keeps its source lines in
    cache. P2 of an 800 px image (256 x 200 x 200 float32): 19.6 -> 15-16 ms alone (one
    thread, CPU time), and no page faults on the 41 MB result (twice in ``predict``: box and
    mask branch)."""
    n, c, h, w = x.shape
    out = arena.empty((n, h, w, c), x.dtype)
    rows = max(1, _TRANSPOSE_ROWS_BYTES // max(1, c * w * x.itemsize))
    for i0 in range(0, h, rows):
        np.copyto(out[:, i0:i0 + rows], x[:, :, i0:i0 + rows].transpose(0, 2, 3, 1))
    return out


def roi_align_forward(input, boxes, output_size, spatial_scale, sampling_ratio, aligned, method):
    """RoIAlign of input (N, C, H, W) over boxes (K, 5) with the linear map ``method``.

    method: "matrix" (:func:`roi_align_matrix`) or "separable"
    (:func:`roi_align_separable`). Returns ``(out, matrix, separable)``: out
    (K, C, ph, pw) in the input's dtype, and the map for the backward, the CSR
    matrix (then separable is None) or the pair ``(a_y, s)`` (then matrix is None).
    """
    n, c, h, w = input.shape
    ph, pw = output_size
    k = boxes.shape[0]
    args = (spatial_scale, sampling_ratio, aligned, input.dtype)
    cells = _channels_last(input)  # row (n, h, w) of `cells` is the C-vector of one feature cell
    if method == "separable":
        a_y, s = roi_align_separable(input.shape, boxes, output_size, *args)
        z = a_y @ cells.reshape(n * h, w * c)  # (K*ph, W*C): box rows interpolated along y
        flat = s @ z.reshape(k * ph * w, c)  # (K*ph*pw, C): then along x
        matrix, separable = None, (a_y, s)
    else:
        matrix = roi_align_matrix(input.shape, boxes, output_size, *args)
        flat = matrix @ cells.reshape(n * h * w, c)  # (K*ph*pw, C)
        separable = None
    # dtype: scipy computes float16 in float32; the result keeps the input's dtype
    out = np.ascontiguousarray(flat.reshape(k, ph, pw, c).transpose(0, 3, 1, 2),
                               dtype=input.dtype)
    return out, matrix, separable


def roi_align_backward(dout, input_shape, dtype, matrix, separable):
    """Gradient with respect to the feature map: dout (K, C, ph, pw) -> (N, C, H, W).

    ``M^T @ dout`` (a scatter-add by scipy's compiled transpose product), or
    back through the x pass and then the y pass of the separable form.
    matrix, separable: as :func:`roi_align_forward` returned them.
    """
    n, c, h, w = input_shape
    k = dout.shape[0]
    ph, pw = dout.shape[2:]
    # (K*ph*pw, C), channels last, in the forward's dtype (a new array: dout is untouched)
    flat = np.ascontiguousarray(dout.transpose(0, 2, 3, 1), dtype=dtype)
    flat = flat.reshape(k * ph * pw, c)
    if separable is None:
        grad = matrix.T @ flat  # (N*H*W, C)
    else:
        a_y, s = separable
        dz = s.T @ flat  # (K*ph*W, C): back through the x pass
        grad = a_y.T @ dz.reshape(k * ph, w * c)  # (N*H, W*C): back through the y pass
    return np.ascontiguousarray(grad.reshape(n, h, w, c).transpose(0, 3, 1, 2), dtype=dtype)
