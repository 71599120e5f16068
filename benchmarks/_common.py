"""Helpers shared by the benchmark scripts: best-of timing and the GEMM rate.

Every benchmark reports its op next to a bare float32 GEMM measured in the
same process, because on a shared 2-core machine absolute times swing
several-fold while the ratio to GEMM stays meaningful. Run the scripts with
``env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE`` on machines that set those
variables (they halve NumPy's GEMM).
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

try:  # run from a checkout without ``pip install -e .``
    import mrcnn_np  # noqa: F401
except ImportError:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def best_of(fn, repeats, *, clock=time.perf_counter):
    """Run ``fn()`` ``repeats`` times; return (best seconds, last result)."""
    best, out = float("inf"), None
    for _ in range(repeats):
        t0 = clock()
        out = fn()
        best = min(best, clock() - t0)
    return best, out


def best_seconds(fn, repeats, *, clock=time.perf_counter):
    """Best wall time of ``repeats`` calls of ``fn()``, in seconds."""
    return best_of(fn, repeats, clock=clock)[0]


def gemm_gflops(m=1024, k=1024, n=1024, *, repeats=5, rng=None, clock=time.perf_counter):
    """Best float32 GFLOP/s of an (m, k) @ (k, n) product, timed by ``clock`` (wall or CPU time)."""
    rng = np.random.default_rng(0) if rng is None else rng
    a = rng.standard_normal((m, k), dtype=np.float32)
    b = rng.standard_normal((k, n), dtype=np.float32)
    t = best_seconds(lambda: a @ b, repeats, clock=clock)
    return 2 * m * k * n / t / 1e9
