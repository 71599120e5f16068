"""Reused memory for the arrays of the inference path: :func:`empty` is ``np.empty`` from a pool.

A kernel (see ``mrcnn_np.kernels``): no checks. Each large array the inference path
allocates (a conv's output, the max-pool's, the FPN's merged maps) is fresh memory from
``malloc``, which for arrays of megabytes is a fresh ``mmap``: the kernel faults in and
zeroes every page on first touch, and gives the pages back when the array dies. On the
800 px backbone + FPN that was about 10,000 page faults and 0.06-0.1 s of system time per
forward (one thread, CPU time; out of 1.5-1.8 s), every call again.

:func:`empty` hands out views of byte buffers kept in a per-thread pool. A buffer is free
when nothing but the pool refers to it: every array NumPy derives from a view (reshape,
transpose, slice, ``.view``) keeps a reference to the buffer itself (``base`` always
points at the owner of the memory), so a buffer is only handed out again once every
array on it is gone. Arrays returned to the caller (the pyramid, the detections' inputs)
therefore stay valid for as long as the caller keeps them; the pool only recycles what
nobody can see any more.

The pool holds at most ``MAX_BYTES`` (free or in use) per thread; :func:`release` drops
the free buffers (their memory goes back to ``malloc``). Arrays below ``MIN_BYTES`` come
from ``np.empty`` (``malloc``'s heap serves them without faults).
"""
from __future__ import annotations

import sys
import threading

import numpy as np

__all__ = ["empty", "release", "pooled_bytes"]

MIN_BYTES = 2**18
MAX_BYTES = 768 * 2**20
_ALIGN = 2**16
_LOCAL = threading.local()


def _bufs():
    bufs = getattr(_LOCAL, "bufs", None)
    if bufs is None:
        bufs = _LOCAL.bufs = []
    return bufs


def _refs_when_free():
    probe = [np.empty(1, np.uint8)]
    return sys.getrefcount(probe[0])  # the list's reference and the call's argument


_FREE_REFS = _refs_when_free()


def empty(shape, dtype):
    """``np.empty(shape, dtype)`` (C order), its memory possibly reused from an earlier array
    of this thread that no longer exists. shape: tuple of ints."""
    dtype = np.dtype(dtype)
    count = 1
    for s in shape:
        count *= s
    nbytes = count * dtype.itemsize
    if nbytes < MIN_BYTES:
        return np.empty(shape, dtype)
    bufs = _bufs()
    best, best_size = -1, 0
    for i in range(len(bufs)):
        size = bufs[i].size
        if size >= nbytes and (best < 0 or size < best_size) and sys.getrefcount(bufs[i]) == _FREE_REFS:
            best, best_size = i, size
    if best < 0:
        size = -(-nbytes // _ALIGN) * _ALIGN
        total = sum(b.size for b in bufs)
        if total + size > MAX_BYTES:
            release()
            total = sum(b.size for b in bufs)
            if total + size > MAX_BYTES:
                return np.empty(shape, dtype)
        bufs.append(np.empty(size, np.uint8))
        best = len(bufs) - 1
    return bufs[best][:nbytes].view(dtype).reshape(shape)


def release():
    """Drop this thread's free buffers (in-use ones stay with the arrays that use them)."""
    bufs = _bufs()
    bufs[:] = [bufs[i] for i in range(len(bufs)) if sys.getrefcount(bufs[i]) != _FREE_REFS]


def pooled_bytes():
    """(bytes held by this thread's pool, bytes of it in use)."""
    bufs = _bufs()
    used = sum(bufs[i].size for i in range(len(bufs)) if sys.getrefcount(bufs[i]) != _FREE_REFS)
    return sum(b.size for b in bufs), used
