"""Sweep NMS: the engine behind ``boxes.nms`` and ``boxes.batched_nms``.

A kernel (see ``mrcnn_np.kernels``): no checks. :func:`nms_ranked` takes the
boxes already sorted by decreasing score (``boxes._score_order``: ties by
increasing index), finite, of one float dtype, their categories in the same
order (or None), and the threshold t as a scalar of the boxes' dtype
(``boxes._threshold_as``), and returns which of them the greedy rule keeps.
The result equals ``boxes.nms_naive`` bit for bit (``tests/test_boxes.py``,
``tests/test_kernels.py``).

Measured speed-ups
------------------
``benchmarks/bench_nms.py --cpu --naive`` (float32, threshold 0.7, process CPU
time, min of 7 repeats, 2-core build machine under load), ours against
``nms_naive`` and torchvision's C++ ``nms`` / ``batched_nms``:

    case                     kept   ours ms  naive ms  torchvision ms  ours/tv
    nms uniform 6000         5747      14.1     254.2            74.8     0.19
    nms clustered 6000        427       5.7      11.0             8.0     0.71
    nms uniform 12000       11132      31.8     866.3           318.7     0.10
    nms clustered 12000       529      11.5      24.8            20.9     0.55
    batched 5 lvl 10000      9865      22.2                     94.5     0.23

The uniform cases (most boxes survive) are where a greedy loop, torchvision's
included, pays O(N * kept); the sweep pays about O(N * window).

Few boxes (at most ``_DENSE_ENTRIES`` = 131,072 IoU entries, the sum over
categories of their squared sizes) skip the sweep, whose setup (sorts,
windows, bands, blocks) then costs more than the IoUs: every IoU of a
category is computed at once and a greedy walk visits the rows that hit
something (``_greedy_dense``; same ``pair_iou`` numbers, so also bit for bit
``nms_naive``). The RPN of the shapes model (``batched_nms`` of 5 levels x 128
boxes per image): 2.3 ms -> 0.6 ms a call; one category of 128 / 256 boxes
1.0 -> 0.12 ms / 1.3 -> 0.34 ms; at 362 boxes 2.6 -> 1.3 ms; at 512 they are
even (float32, min of 15, same process, 2-core build machine).

How it gets the result of ``nms_naive`` without one IoU row per kept box
-----------------------------------------------------------------------

The greedy rule. Sort the boxes by decreasing score; call the position in
that order the box's *rank*. Walk the ranks: a box not yet removed is kept
and removes every later box whose IoU with it is > t. Whether box r is kept
depends only on the boxes of lower rank, so the walk can be cut anywhere:
decide ranks < r one way and ranks >= r another, and the result is the same.
The sweep does exactly that with two methods (phases), below.

1. Which pairs can matter: an x window. For boxes p, q with widths w_p, w_q
   and overlap iw in x: the intersection is at most iw * min(h_p, h_q) and
   the union at least max(area_p, area_q), so
       IoU <= iw / max(w_p, w_q),   and since iw <= min(w_p, w_q),
       IoU <= min(w_p, w_q) / max(w_p, w_q).
   Hence IoU > t > 0 needs
     (a) max(w) < min(w) / t <= w_p / t    (widths within a factor 1 / t);
     (b) |x1_q - x1_p| <= max(w) - iw < (1 - t) * max(w)   (if x1_q >= x1_p,
         iw <= x2_p - x1_q = w_p - (x1_q - x1_p); the other side alike);
     (c) x1_q < x2_p when x1_q >= x1_p (else they do not meet in x).
   With (a) and max(w) <= wmax (the widest box), (b) and (c) say that q's x1
   lies in the open window of p
       (x1_p - reach_p,  min(x2_p, x1_p + reach_p)),
       reach_p = (1 - t) * min(wmax, w_p / t),
   which holds for the window of either box of a pair. So sort by x1 once:
   a box's partners form one contiguous run of that order, a few boxes long
   for typical boxes. And by (a), in width bands [base^k, base^(k+1)) with
   base >= 1 / t a partner of a box is in the same band or an adjacent one.

2. Rounding. What decides is the *computed* IoU (``kernels.iou.pair_iou``, in the
   boxes' dtype) > t; the bounds above are about the exact IoU of the same
   coordinates. Each step of the formula rounds once (relative error 2^-24
   in float32) and union >= max(area) keeps its subtraction from cancelling,
   so the two differ by less than 1e-5, provided no area is subnormal (below
   ``finfo.tiny``: float32 boxes smaller than ~1e-19 px; an overflow to inf
   only makes the computed IoU 0 or NaN, never > t). Windows, bands and
   the pre-filter of phase 2 therefore use t' = t - 1e-3 (_IOU_MARGIN): a
   pair with computed IoU > t has exact IoU > t', so it is always a
   candidate; the margin only adds candidates, which the exact test then
   rejects. The window ends are computed in float64 and widened by 1e-9 of
   the coordinate scale. If some area is subnormal, t' = 0 instead: windows
   become "the boxes meet in x" (reach = wmax, one band), still exact because
   a computed intersection is > 0 only when the boxes overlap.
   So ``nms`` equals ``nms_naive`` bit for bit (the tests check it).

Phase 1, the kept-box loop (_loop_kept): walk the ranks; each kept box
   computes IoU with the boxes of its x window only and removes those above
   t. Cheap while each kept box removes many (a dense cluster is cleared by
   its best box). The x-ordered arrays are rebuilt without the removed boxes
   whenever half of them have been removed, so windows stay short. When the
   kept boxes stop removing much (fewer than _MIN_REMOVED_PER_KEPT each over
   _PROBE kept boxes) the loop hands the remaining ranks to phase 2.
Phase 2, the pair sweep (_suppression_pairs, _block_pairs): for the boxes
   still undecided, find *all* pairs with IoU > t at once: per width band,
   boxes x-sorted, rows of consecutive boxes against the union of their
   windows as one dense block (a division-free superset test
   inter > t' * union, then the window and the exact IoU on the survivors).
   Then _greedy_from_pairs walks the pair list in rank order; only boxes
   that suppress something cost a Python step. If there are more than
   _MAX_PAIRS_PER_BOX * N + 4096 pairs, phase 1 finishes the job instead.

batched_nms: the categories are laid side by side on the x axis, far apart
(no window reaches another category), and also compared directly. A box of
zero or negative width or height has IoU 0 with everything and takes no part.
"""
from __future__ import annotations

import math

import numpy as np

from .iou import pair_iou

__all__ = ["nms_ranked"]


_BLOCK_ELEMENTS = 1 << 20       # IoU entries per dense block of the pair sweep
_ROWS_PER_BLOCK = 96            # rows per dense block (Python overhead vs wasted entries)
_IOU_MARGIN = 1e-3              # t' = t - margin in windows, bands and pre-filter (rounding)
_MAX_PAIRS_PER_BOX = 64         # pair budget of the sweep, per box
_PROBE = 32                     # kept boxes per check of the loop's yield
_MIN_REMOVED_PER_KEPT = 8.0     # below this yield the loop hands over to the sweep
_COMPACT_MIN = 32               # the loop drops removed boxes from views larger than this
_DENSE_ENTRIES = 1 << 17        # up to this many IoU entries (sum of squared category sizes): dense path


class _Sweep:
    """Per-rank data for both phases; boxes sorted by decreasing score (rank order).

    b: (N, 4) boxes in rank order; groups: (N,) categories in rank order, or
    None; iou_threshold: t as a scalar of the boxes' dtype (``boxes._threshold_as``).
    Holds, all (N,) by rank: ``area`` (dtype), ``valid`` (positive width and
    height), ``key`` = x1 (float64, categories moved apart), the open window
    (``back``, ``fwd``) of a partner's key, the width ``band``, ``g`` (category
    index, or None); ``xorder`` (N,) ranks sorted by key; ``t`` and ``t_window``
    (the t' of windows, bands and the phase-2 pre-filter).
    """

    def __init__(self, b, groups, iou_threshold):
        n = b.shape[0]
        self.n, self.b, self.t = n, b, iou_threshold
        self.area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
        x1 = b[:, 0].astype(np.float64)
        x2 = b[:, 2].astype(np.float64)
        w = x2 - x1
        h = b[:, 3].astype(np.float64) - b[:, 1]
        self.valid = (w > 0) & (h > 0)  # the others have IoU 0 with every box
        self.g = None
        if groups is not None:  # category c moves right by c * (2 * span + 1)
            span = float(x2.max() - x1.min())
            _, g = np.unique(groups, return_inverse=True)
            self.g = g.reshape(-1)
            offset = self.g * (2.0 * span + 1.0) - x1.min()
            x1 = x1 + offset
            x2 = x2 + offset
        normal = not (self.area[self.valid] < np.finfo(b.dtype).tiny).any()
        t = min(float(iou_threshold) - _IOU_MARGIN, 1.0) if normal else 0.0
        self.t_window = max(t, 0.0)
        wmax = max(float(np.max(w)), 0.0)
        reach = (1.0 - t) * np.minimum(wmax, w / t) if t > 0 else np.full(n, wmax)
        slack = 1e-9 * (float(np.abs(x2).max()) + float(np.abs(x1).max()) + 1.0)
        self.key = x1
        self.back = x1 - reach - slack                  # partner: back < key < fwd
        self.fwd = np.minimum(x2, x1 + reach) + slack
        self.xorder = np.argsort(x1, kind="stable")
        self.band = np.zeros(n, np.int64)
        if t > 0:  # bands of ratio base >= 1 / t': partners in the same or the next band
            base = max(1.0 / t, 1.5)
            self.band[self.valid] = np.floor(np.log(w[self.valid]) / math.log(base)).astype(np.int64)


class _XView:
    """Phase 1's x-ordered copy of the boxes still in play: not removed, rank >= start.

    X1, Y1, X2, Y2, A (M,) coordinates and areas in x order, R (M,) their
    ranks, G (M,) categories or None; per rank, (N,) int64 arrays (entries of
    ranks outside the view unused): ``pos`` its x position in the view and its
    window ``[lo, hi)`` of positions.
    """

    def __init__(self, sw, removed, start):
        live = ~removed
        live[:start] = False
        ranks = sw.xorder[live[sw.xorder]]
        self.size = ranks.size
        self.R = ranks
        bx = sw.b[ranks]
        self.X1, self.Y1, self.X2, self.Y2 = (np.ascontiguousarray(bx[:, k]) for k in range(4))
        self.A = sw.area[ranks]
        self.G = None if sw.g is None else sw.g[ranks]
        keys = sw.key[ranks]
        self.pos = np.zeros(sw.n, np.int64)   # entries of ranks not in the view are unused
        self.lo = np.zeros(sw.n, np.int64)
        self.hi = np.zeros(sw.n, np.int64)
        self.pos[ranks] = np.arange(ranks.size)
        self.lo[ranks] = np.searchsorted(keys, sw.back[ranks], side="right")
        self.hi[ranks] = np.searchsorted(keys, sw.fwd[ranks], side="left")


def _loop_kept(sw, removed, start, stop_when_unproductive):
    """Phase 1: the greedy walk from rank ``start``; each kept box scores only
    the boxes of its x window and removes those above the threshold.

    removed: (N,) bool by rank, updated in place. Cost O(K * window) plus
    ~15 us of NumPy calls per kept box: cheap when each kept box removes many
    (dense overlaps); torchvision's O(N * K) loop with a spatial filter. With
    ``stop_when_unproductive`` it returns early once the last ``_PROBE`` kept
    boxes removed fewer than ``_MIN_REMOVED_PER_KEPT`` each. Returns the first
    rank not yet decided (N when done).
    """
    n, t, valid = sw.n, sw.t, sw.valid.tolist()
    r = start
    view = _XView(sw, removed, start)
    removed_in_view = kept_since = removed_since = 0
    # The IoU below is pair_iou's formula written out for one box against a
    # slice (same operations, same values) without its zero-union guard: there
    # a raw division gives 0/0 = NaN or a value <= 0, and neither passes "> t"
    # (t >= 0), exactly as pair_iou's 0 does not. errstate silences just that.
    with np.errstate(invalid="ignore", divide="ignore"):
        while r < n:
            if removed[r]:
                r += 1
                continue
            v = view
            p, lo, hi = int(v.pos[r]), int(v.lo[r]), int(v.hi[r])
            nvict = 0
            if hi > lo and valid[r]:
                iw = np.minimum(v.X2[lo:hi], v.X2[p])
                iw -= np.maximum(v.X1[lo:hi], v.X1[p])
                np.maximum(iw, 0, out=iw)
                ih = np.minimum(v.Y2[lo:hi], v.Y2[p])
                ih -= np.maximum(v.Y1[lo:hi], v.Y1[p])
                np.maximum(ih, 0, out=ih)
                iw *= ih                                   # intersection
                union = np.add(v.A[lo:hi], v.A[p], out=ih)
                union -= iw
                hit = np.divide(iw, union, out=iw) > t
                ranks = v.R[lo:hi]
                hit &= ranks > r
                if v.G is not None:
                    hit &= v.G[lo:hi] == v.G[p]
                victims = ranks[hit]
                removed[victims] = True
                nvict = victims.size   # may count a box twice: only steers the heuristics
            r += 1
            removed_in_view += nvict
            if 2 * removed_in_view > view.size > _COMPACT_MIN:
                view = _XView(sw, removed, r)
                removed_in_view = 0
            if stop_when_unproductive:
                kept_since += 1
                removed_since += nvict
                if kept_since == _PROBE:
                    if removed_since < _MIN_REMOVED_PER_KEPT * _PROBE:
                        return r
                    kept_since = removed_since = 0
    return n


def _suppression_pairs(sw, alive, max_pairs):
    """All pairs (i, j) of alive boxes, rank i < rank j, with IoU > threshold.

    alive: (N,) bool by rank. Returns (src, dst) rank arrays or None when
    there are more than ``max_pairs``. Boxes are grouped in width bands (a
    partner is in the same band or the next) and x-sorted within a band; each
    band is swept against itself (forward windows) and against the next band
    (two-sided windows), see ``_block_pairs``.
    """
    idx = np.flatnonzero(alive & sw.valid)
    bands = sw.band[idx]
    o = np.lexsort((sw.key[idx], bands))
    idx, bands = idx[o], bands[o]
    heads = np.flatnonzero(np.r_[True, bands[1:] != bands[:-1]]) if idx.size else np.zeros(0, np.int64)
    ends = np.r_[heads[1:], idx.size].astype(np.int64)
    members = {int(bands[h]): idx[h:e] for h, e in zip(heads, ends)}
    t_pre = sw.b.dtype.type(sw.t_window)
    srcs, dsts = [], []
    total = 0
    for k, rows in members.items():
        for cols, same in ((rows, True), (members.get(k + 1), False)):
            if cols is None:
                continue
            for src, dst in _block_pairs(sw, rows, cols, same, t_pre):
                total += src.size
                if total > max_pairs:
                    return None
                srcs.append(src)
                dsts.append(dst)
    if not srcs:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(srcs), np.concatenate(dsts)


def _block_pairs(sw, rows, cols, same, t_pre):
    """Yield (src, dst) rank pairs with IoU > t between ``rows`` and ``cols``.

    rows, cols: rank indices, each sorted by x key. same: rows is cols (a box
    is paired only with the boxes after it in x order). Row p's candidates are
    the cols with key in (back_p, fwd_p); consecutive rows form dense blocks
    (rows x column range), scored with a division-free superset test, then
    the window and the exact IoU (box_iou's formula) on the few survivors.
    """
    kc = sw.key[cols]
    m = rows.size
    hi = np.searchsorted(kc, sw.fwd[rows], side="left")
    if same:
        lo = np.arange(1, m + 1)
        hi = np.maximum(hi, lo)
    else:
        lo = np.searchsorted(kc, sw.back[rows], side="right")
        hi = np.maximum(hi, lo)
    if not (hi > lo).any():
        return
    b, area = sw.b, sw.area
    RX1, RY1, RX2, RY2 = (b[rows, k][:, None] for k in range(4))
    RA = area[rows][:, None]
    CX1, CY1, CX2, CY2 = (np.ascontiguousarray(b[cols, k]) for k in range(4))
    CA = area[cols]
    G = sw.g
    i = 0
    while i < m:
        width = int(hi[i] - lo[i])
        nrows = max(1, min(_ROWS_PER_BLOCK, _BLOCK_ELEMENTS // max(width + _ROWS_PER_BLOCK, 1)))
        j = min(m, i + nrows)
        c0, c1 = int(lo[i:j].min()), int(hi[i:j].max())
        if c1 > c0:
            r, c = slice(i, j), slice(c0, c1)
            iw = np.minimum(RX2[r], CX2[c]) - np.maximum(RX1[r], CX1[c])
            ih = np.minimum(RY2[r], CY2[c]) - np.maximum(RY1[r], CY1[c])
            np.maximum(iw, 0, out=iw)
            np.maximum(ih, 0, out=ih)
            inter = np.multiply(iw, ih, out=iw)
            union = np.add(RA[r], CA[c], out=ih)
            union -= inter
            union *= t_pre
            pi, qj = np.nonzero(inter > union)
            pi += i
            qj += c0
            ok = (qj >= lo[pi]) & (qj < hi[pi])
            p, q = rows[pi[ok]], cols[qj[ok]]
            if G is not None:
                keep = G[p] == G[q]
                p, q = p[keep], q[keep]
            if p.size:
                iou = pair_iou(b[p, 0], b[p, 1], b[p, 2], b[p, 3], area[p],
                                b[q, 0], b[q, 1], b[q, 2], b[q, 3], area[q])
                hit = iou > sw.t
                if hit.any():
                    p, q = p[hit], q[hit]
                    yield np.minimum(p, q), np.maximum(p, q)
        i = j


def _greedy_from_pairs(removed, src, dst):
    """Greedy pass over the pair list, in rank order: a source still alive is
    kept and removes its partners. Updates ``removed`` (by rank) in place.

    Only boxes that suppress something are visited (a box nobody suppresses
    is kept without a visit); one vectorised assignment per kept one.
    """
    if src.size == 0:
        return removed
    order = np.argsort(src, kind="stable")
    src = src[order]
    dst = dst[order]
    heads = np.flatnonzero(np.r_[True, src[1:] != src[:-1]])
    ends = np.r_[heads[1:], src.size]
    for s, a, e in zip(src[heads].tolist(), heads.tolist(), ends.tolist()):
        if not removed[s]:
            removed[dst[a:e]] = True
    return removed


def _dense_cost(groups, n):
    """IoU entries of the dense path: sum over categories of (boxes in it)^2."""
    if groups is None:
        return n * n
    counts = np.unique(groups, return_counts=True)[1]
    return int((counts.astype(np.int64) ** 2).sum())


def _greedy_dense(b, groups, t):
    """Greedy NMS by rank with every IoU of a category computed at once: keep (N,) bool.

    For few boxes (``_DENSE_ENTRIES``) this beats the sweep, whose setup (sorts,
    windows, bands, blocks) costs more than the IoUs themselves. The categories are
    stacked (G, m, m), each padded to the largest with point boxes at the origin
    (IoU 0 with every box, and after every real box in rank order, so they suppress
    nothing): ONE ``pair_iou`` call (row box first, as ``nms_naive`` scores a kept box
    against the later ones: the same numbers, element by element), ``hit[g, i, j]`` =
    IoU > t for j > i, then the greedy rule for all categories at once by
    :func:`_greedy_fixed_point`. (Before: a ``pair_iou`` call per category and a Python
    step per box that removes something: the shapes model's RPN, 5 levels of <= 128
    proposals an image, 0.57 -> 0.2 ms.)
    """
    n = b.shape[0]
    if groups is None:
        members = [np.arange(n)]
    else:  # ranks of each category, in rank order
        order = np.argsort(groups, kind="stable")
        g = groups[order]
        members = np.split(order, np.flatnonzero(g[1:] != g[:-1]) + 1)
    members = [r for r in members if r.size >= 2]
    keep = np.ones(n, dtype=bool)
    if not members:
        return keep
    m = max(r.size for r in members)
    if len(members) * m * m > 2 * sum(r.size ** 2 for r in members):  # uneven sizes: padding
        for r in members:                                               # would waste the most
            keep[r] = _greedy_dense(b[r], None, t)
        return keep
    idx = np.full((len(members), m), n, dtype=np.int64)  # n: the padding point box
    for k, r in enumerate(members):
        idx[k, :r.size] = r
    bp = np.concatenate([b, np.zeros((1, 4), dtype=b.dtype)])
    x1, y1, x2, y2 = (bp[idx, k] for k in range(4))  # (G, m) each
    a = (x2 - x1) * (y2 - y1)
    iou = pair_iou(x1[:, :, None], y1[:, :, None], x2[:, :, None], y2[:, :, None], a[:, :, None],
                   x1[:, None, :], y1[:, None, :], x2[:, None, :], y2[:, None, :], a[:, None, :])
    hit = iou > t
    hit &= ~np.tri(m, dtype=bool)  # (G, m, m): hit[g, i, j] for j > i, i may remove the later j
    kept = _greedy_fixed_point(hit)
    for k, r in enumerate(members):
        keep[r] = kept[k, :r.size]
    return keep


def _greedy_fixed_point(hit):
    """The greedy rule on stacked strictly upper-triangular (G, m, m) hit matrices:
    keep (G, m) bool.

    Box j is kept iff no kept box i < j hits it: ``keep = ~(keep @ hit)``. Iterating that
    map from all-kept fixes box 0 at once and, by induction, boxes 0..k after k + 1 rounds
    (box k depends only on the boxes before it), so it stops at the greedy answer, its
    only fixed point, after (longest chain of removals) + 1 rounds (2 to 7 on the shapes
    model's RPN) instead of a Python step per box that removes something. The products
    count hits exactly (0/1 values, sums far below 2**24).
    """
    h = hit.astype(np.float32)
    keep = np.ones(hit.shape[:2], dtype=bool)
    while True:
        new = (keep.astype(np.float32)[:, None, :] @ h)[:, 0, :] == 0
        if np.array_equal(new, keep):
            return keep
        keep = new


def nms_ranked(b, groups, t, *, max_pairs=None, probe=True, dense=None):
    """Greedy NMS of boxes in rank order: keep (N,) bool, True for a kept box.

    b: (N, 4) boxes sorted by decreasing score; groups: (N,) categories in the
    same order, or None (one category); t: the threshold as a scalar of b's
    dtype (a box is removed when its IoU with a kept box of higher rank is > t).

    dense: None (default) takes the dense path (``_greedy_dense``) when the
    categories hold at most ``_DENSE_ENTRIES`` IoU pairs in all, else the sweep;
    True / False force one (tests). The sweep:
    Phase 1 (``probe``): the windowed kept-box loop, while each kept box
    removes many others (dense clusters: the top box of each cluster clears
    most of it). Phase 2: the pair sweep over the boxes still undecided, then
    the greedy pass over its pair list; if the pairs exceed ``max_pairs``
    (default ``_MAX_PAIRS_PER_BOX * N + 4096``) the loop finishes the job.
    Both phases apply the greedy rule in rank order, so any split between
    them gives the same result (tests force each path).
    """
    n = b.shape[0]
    if n == 0:
        return np.zeros(0, dtype=bool)
    if dense is None:
        dense = _dense_cost(groups, n) <= _DENSE_ENTRIES
    if dense:
        return _greedy_dense(b, groups, t)
    sw = _Sweep(b, groups, t)
    removed = np.zeros(n, dtype=bool)
    start = _loop_kept(sw, removed, 0, stop_when_unproductive=True) if probe else 0
    if start < n:
        if max_pairs is None:
            max_pairs = _MAX_PAIRS_PER_BOX * n + 4096
        alive = ~removed
        alive[:start] = False  # decided already (kept ones have done their removing)
        pairs = _suppression_pairs(sw, alive, max_pairs)
        if pairs is None:
            _loop_kept(sw, removed, start, stop_when_unproductive=False)
        else:
            _greedy_from_pairs(removed, *pairs)
    return ~removed
