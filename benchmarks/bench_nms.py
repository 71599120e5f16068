"""Speed of mrcnn_np.boxes.nms / box_iou, side by side with torchvision's C++ ops.

Cases (float32, threshold 0.7, scores uniform in [0, 1)):

- ``uniform``: N boxes with top-left corners uniform in a 1000x1000 image and
  sides uniform in [10, 100): few overlaps, most boxes survive (the expensive
  case for a greedy loop: torchvision's kernel is O(N * kept)).
- ``clustered``: N boxes around 20 objects (sides 30..150 px), centres jittered
  by 10 % of the object size and sides by x0.8..1.25, like the proposals of an
  RPN: dense overlaps, a few hundred survive.
- ``batched``: the proposal layer's case, 5 FPN levels of N/5 uniform boxes, by
  ``batched_nms`` with the level as the category.
- ``box_iou`` of 12,000 x 100 boxes (anchors against ground truth).

For each it prints the time per call in ms (min over repeats, since the
machine is shared), the number of boxes kept, and torchvision's time and the
ratio ours / torchvision when torch is importable. ``--cpu`` reports process
CPU time instead of wall time (steadier when other jobs load the machine; both
NMS implementations run on one core) (run this script with a
Python that has torchvision, e.g. ``/work/tv/bin/python``). The results are
also checked to be equal to torchvision's. For scale it also prints the time of
a 1024^3 float32 GEMM in the same process.

Run with the OpenBLAS overrides of the build machine removed:
``env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/bench_nms.py``.
"""
from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from _common import best_of  # noqa: E402  (also puts the checkout on sys.path)

from mrcnn_np.boxes import batched_nms, box_iou, nms, nms_naive  # noqa: E402


def uniform_boxes(rng, n):
    xy = rng.uniform(0, 1000, (n, 2))
    wh = rng.uniform(10, 100, (n, 2))
    return np.concatenate([xy, xy + wh], 1).astype(np.float32), rng.random(n).astype(np.float32)


def clustered_boxes(rng, n, k=20):
    centre = rng.uniform(0, 1000, (k, 2))
    size = rng.uniform(30, 150, (k, 2))
    i = rng.integers(0, k, n)
    ctr = centre[i] + rng.normal(0, 0.1, (n, 2)) * size[i]
    wh = size[i] * rng.uniform(0.8, 1.25, (n, 2))
    return np.concatenate([ctr - wh / 2, ctr + wh / 2], 1).astype(np.float32), rng.random(n).astype(np.float32)


_CLOCK = time.perf_counter


def _best(fn, repeats):
    return best_of(fn, repeats, clock=_CLOCK)  # _CLOCK is switched by --cpu


def _torch():
    try:
        import torch
        import torchvision
    except ImportError:
        return None, None
    torch.set_num_threads(2)
    return torch, torchvision


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--no-torch", action="store_true")
    parser.add_argument("--naive", action="store_true", help="also time nms_naive")
    parser.add_argument("--cpu", action="store_true",
                        help="process CPU time instead of wall time (busy machine)")
    args = parser.parse_args(argv)
    torch, tv = (None, None) if args.no_torch else _torch()
    rng = np.random.default_rng(0)

    a = rng.standard_normal((1024, 1024), dtype=np.float32)
    t_gemm, _ = _best(lambda: a @ a, args.repeats)
    print(f"numpy {np.__version__}; float32 GEMM 1024^3: {t_gemm * 1e3:.2f} ms "
          f"({2 * 1024**3 / t_gemm / 1e9:.0f} GFLOP/s); min of {args.repeats} repeats, "
          f"{'CPU' if args.cpu else 'wall'} time below")
    global _CLOCK
    _CLOCK = time.process_time if args.cpu else time.perf_counter  # GEMM above: wall time
    head = f"{'case':22s} {'kept':>6s} {'ours ms':>9s}"
    if args.naive:
        head += f" {'naive ms':>9s}"
    if torch is not None:
        head += f" {'torchvision ms':>15s} {'ours/tv':>8s}"
    print(head)

    cases = []
    for n in (6000, 12000):
        for name, gen in (("uniform", uniform_boxes), ("clustered", clustered_boxes)):
            b, s = gen(rng, n)
            cases.append((f"nms {name} {n}", "nms", b, s, None))
    b, s = uniform_boxes(rng, 10000)
    cases.append(("batched 5 lvl 10000", "batched", b, s, np.repeat(np.arange(5), 2000)))

    for name, kind, b, s, idxs in cases:
        if kind == "nms":
            t, keep = _best(lambda: nms(b, s, 0.7), args.repeats)
        else:
            t, keep = _best(lambda: batched_nms(b, s, idxs, 0.7), args.repeats)
        line = f"{name:22s} {keep.size:6d} {t * 1e3:9.1f}"
        if args.naive:
            tn, _ = _best(lambda: nms_naive(b, s, 0.7), 1) if kind == "nms" else (float("nan"), None)
            line += f" {tn * 1e3:9.1f}"
        if torch is not None:
            bt, st = torch.from_numpy(b), torch.from_numpy(s)
            if kind == "nms":
                tt, ref = _best(lambda: tv.ops.nms(bt, st, 0.7), args.repeats)
            else:
                it = torch.from_numpy(idxs)
                tt, ref = _best(lambda: tv.ops.batched_nms(bt, st, it, 0.7), args.repeats)
            ref = ref.numpy()
            # equal, up to the order of equal scores (torch.sort is not stable)
            same = set(ref.tolist()) == set(keep.tolist()) and np.array_equal(s[ref], s[keep])
            line += f" {tt * 1e3:15.1f} {t / tt:8.2f}" + ("" if same else "  RESULT DIFFERS")
        print(line, flush=True)

    b1, _ = uniform_boxes(rng, 12000)
    b2, _ = uniform_boxes(rng, 100)
    t, iou = _best(lambda: box_iou(b1, b2), args.repeats)
    line = f"{'box_iou 12000x100':22s} {'':6s} {t * 1e3:9.2f}"
    if args.naive:
        line += f" {'':9s}"
    if torch is not None:
        tt, ref = _best(lambda: tv.ops.box_iou(torch.from_numpy(b1), torch.from_numpy(b2)), args.repeats)
        err = float(np.abs(ref.numpy() - iou).max())
        line += f" {tt * 1e3:15.2f} {t / tt:8.2f}  (max diff {err:.1e})"
    print(line)


if __name__ == "__main__":
    main()
