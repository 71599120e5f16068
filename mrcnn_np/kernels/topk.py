"""The k smallest entries of each row, in stable-sort order: the engine of a per-level top-k.

A kernel (see ``mrcnn_np.kernels``): no checks. :func:`smallest_k` is
``np.argsort(x, axis=1, kind="stable")[:, :k]`` exactly (ties to the lower index),
without sorting the whole row: ``np.argpartition`` finds the k-th smallest value, the
entries below it and the first (lowest-index) ties at it are the k chosen ones, and only
those are sorted (stably, in index order, so ties keep their index order). The RPN's
per-level top-k of the shapes model (4 x 6,144 anchors of P2, k = 128): 0.46 -> 0.12 ms
(one thread). Rows with NaN take the full sort (argsort's NaN-last order).
"""
from __future__ import annotations

import numpy as np

__all__ = ["smallest_k"]


def smallest_k(x, k):
    """``np.argsort(x, axis=1, kind="stable")[:, :k]`` for a 2-D float or int array.

    x: (R, n); k: int in [0, n]. Returns (R, k) int64 indices.
    """
    R, n = x.shape
    if k >= n or k <= 0 or 4 * k >= n or (x.dtype.kind == "f" and np.isnan(x).any()):
        return np.argsort(x, axis=1, kind="stable")[:, :max(k, 0)].astype(np.int64, copy=False)
    rows = np.arange(R)[:, None]
    part = np.argpartition(x, k - 1, axis=1)[:, :k]
    kth = x[rows, part].max(axis=1, keepdims=True)      # the k-th smallest value of each row
    below = x < kth
    tie = x == kth
    need = k - below.sum(axis=1, keepdims=True)         # ties to take, lowest index first
    chosen = below | (tie & (np.cumsum(tie, axis=1) <= need))
    idx = np.nonzero(chosen)[1].reshape(R, k)           # ascending index within each row
    order = np.argsort(x[rows, idx], axis=1, kind="stable")
    return idx[rows, order].astype(np.int64, copy=False)
