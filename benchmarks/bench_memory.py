"""Peak memory of the 800 px training step and ``predict`` (mrcnn_np.model), next to torchvision.

The model and inputs are ``bench_model.py``'s 800 px case (its helpers, not a
copy): ``torchvision_config()`` (ResNet-50-FPN, 91 classes, random
``init_params`` weights, seed 0), one normalised 1 x 3 x 800 x 800 float32
batch and 5 synthetic objects (``bench_model.synthetic_targets``); torchvision's
``maskrcnn_resnet50_fpn`` made the reference (frozen BN, conv1 + layer1 frozen:
``bench_model.torch_resnet50_model``) with OUR parameters, driven as
``GeneralizedRCNN.forward`` drives its stages after the transform
(``bench_model.torch_stage_fns``: backbone -> rpn -> roi_heads, then
``loss.backward()``). Cases:

- ``ours-train``: ``model.loss_and_grads`` (forward_train + backward, the
  grads dict alive at the end);
- ``torch-train``: the train-mode forward + ``loss.backward()`` (the ``.grad``
  of the trainable parameters alive at the end);
- ``ours-predict`` / ``torch-predict``: ``model.predict`` / eval mode under
  ``torch.no_grad()``.

Each case runs in a FRESH subprocess, one thread (``OPENBLAS_NUM_THREADS=1``,
``OMP_NUM_THREADS=1``, ``torch.set_num_threads(1)``). The child builds the
model and inputs, runs the step once untimed (so lazily built buffers and
thread pools exist in both libraries; its results are dropped, torch's
``.grad`` set to None), ``gc.collect()`` + glibc ``malloc_trim(0)``, reads its
RSS (``before``), resets the kernel's peak-RSS mark (``/proc/self/clear_refs``
``5``, Linux >= 4.0; otherwise the peak is the whole life of the child, noted),
runs the step and reads ``resource.getrusage(RUSAGE_SELF).ru_maxrss``
(``peak``). ``peak - before`` is the step's own increment. The torch child
drops our NumPy parameters once they are loaded (its ``before`` holds the
torch libraries and torch's copy of the weights; ours holds NumPy's).

A sixth child (``ours-traced``) runs our step again under ``tracemalloc``
(NumPy reports its data buffers to it): the traced memory after each stage of
``forward_train`` and ``backward`` and the peak inside it, and, at the end of
the forward, the bytes of distinct arrays (views counted once, in their
base) the ``ModelCache`` holds, field by field (the backbone by ResNet stage),
and by dtype. That child's RSS is not reported (tracemalloc's own bookkeeping).

Usage: ``python benchmarks/bench_memory.py`` (about 3 minutes with torch on the
2-core build machine; torch is skipped when ``import torch, torchvision``
fails in this interpreter); ``--no-torch``, ``--no-trace``, ``--size``,
``--case NAME`` to run one case in this process.

Measured (issue 17) on the 2-core build machine (Linux 6.18, numpy 2.4.6,
torch 2.14.1, the torch venv's Python), one thread each, MB = 10^6 bytes of
RSS; "before" the first version of this script, "after" the two commits that
followed it (``loss_and_grads`` consumes its cache stage by stage, frozen body
groups keep no cache, no dC2, the RPN head's backward first, folded convs cache
the parameter and not a folded copy):

    800 px training step        RSS before   peak    step (peak - before)
      mrcnn_np, before               280     1831    1551
      mrcnn_np, after                280     1087     807
      torchvision                    999     2053    1054   (ours/torch: peak 0.53x, step 0.77x)
    800 px predict
      mrcnn_np                       278      583     305
      torchvision                    968     1461     493   (peak 0.40x, step 0.62x)

torch's ``before`` is mostly its libraries (~700 MB of the 999): compare the
steps. NumPy's peak under tracemalloc (MB above the built model), before ->
after: 1579 -> 795. Before, the whole ModelCache (945 MB at the end of the
forward: layer2 208, layer1 201 (frozen, never walked back), layer3 169, RPN
head 123 (with the pyramid), layer4 113 (mostly the folded copies of its
weights), FPN 60; float32 798 MB, ReLU masks 140 MB) stayed alive to the end of
the backward, under 177 MB of gradients and three pyramids' worth of gradients
(RPN, box, mask: 55 MB each) held through the body's walk; the peak was at the
last block of layer2's backward. After, the cache is 636 MB at the end of the
forward (layer2 204, layer3 140, RPN head 123, FPN 60, layer4 53; ReLU masks
84 MB) and the peak is inside the RPN head's backward (795), just above the
box branch's forward (734); the body's walk now peaks at 739.
"""
from __future__ import annotations

import argparse
import ctypes
import gc
import importlib.util
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np

import _common  # noqa: F401  (puts the checkout on sys.path)
import bench_model as BM

from mrcnn_np import model as M
from mrcnn_np.config import torchvision_config
from mrcnn_np.transform import IMAGE_MEAN, IMAGE_STD

CASES = ("ours-train", "ours-predict", "torch-train", "torch-predict")
MB = 1e6


# =========================================================================== in the child


def rss_bytes():
    """(current RSS, peak RSS mark) of this process from /proc/self/status, bytes."""
    fields = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                fields[key] = int(value.split()[0]) * 1024
    return fields.get("VmRSS", 0), fields.get("VmHWM", 0)


def ru_maxrss_bytes():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def release_free_memory():
    """Collect garbage and give glibc's free heap pages back, so ``before`` is what is alive."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def reset_peak():
    """Reset the kernel's peak-RSS mark (ru_maxrss / VmHWM); False where not supported."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def build(size):
    """bench_model.bench_800's model and inputs (the same draws from the same seed)."""
    config = torchvision_config()
    rng = np.random.default_rng(0)
    params = M.init_params(config, rng=rng)
    raw = rng.uniform(0, 1, (3, size, size)).astype(np.float32)
    mean = np.asarray(IMAGE_MEAN, np.float32)[:, None, None]
    std = np.asarray(IMAGE_STD, np.float32)[:, None, None]
    images = ((raw - mean) / std)[None]
    targets = BM.synthetic_targets(rng, size, 5, config.num_classes)
    return config, params, images, [(size, size)], targets


def step_fn(case, size):
    """(step, after_warmup) for ``case``: the model and inputs built, nothing run yet."""
    config, params, images, sizes, targets = build(size)
    if case.startswith("ours"):
        def step():
            if case == "ours-train":
                return M.loss_and_grads(params, images, targets, config, rng=np.random.default_rng(1))
            return M.predict(params, images, config)
        return step, lambda: None

    torch = BM.import_torch()
    torch.set_num_threads(1)
    tmodel = BM.torch_resnet50_model(torch, params)
    t_pred, t_train = BM.torch_stage_fns(torch, tmodel, images, sizes, targets)
    del params  # torch holds its own copy now
    if case == "torch-train":
        return t_train, lambda: tmodel.zero_grad(set_to_none=True)
    return t_pred, lambda: None


def run_case(case, size):
    step, after_warmup = step_fn(case, size)
    t0 = time.process_time()
    step()  # warm-up, dropped
    warm = time.process_time() - t0
    after_warmup()
    release_free_memory()
    before, _ = rss_bytes()
    build_peak = ru_maxrss_bytes()
    reset = reset_peak()
    t0 = time.process_time()
    out = step()
    seconds = time.process_time() - t0
    peak = ru_maxrss_bytes()
    after, _ = rss_bytes()
    del out
    return {"case": case, "before": before, "peak": peak, "after": after, "build_peak": build_peak,
            "peak_reset": reset, "cpu_s": seconds, "warmup_cpu_s": warm}


def distinct_bytes(obj, seen, by_dtype=None):
    """Bytes of the distinct array buffers reachable from ``obj`` (NamedTuples, tuples, lists,
    dicts), each base counted once over every call sharing ``seen``."""
    if isinstance(obj, np.ndarray):
        base = obj
        while isinstance(base.base, np.ndarray):
            base = base.base
        if id(base) in seen:
            return 0
        seen[id(base)] = base  # (kept alive so ids stay unique)
        if by_dtype is not None:
            by_dtype[base.dtype.name] = by_dtype.get(base.dtype.name, 0) + base.nbytes
        return base.nbytes
    if isinstance(obj, dict):
        return sum(distinct_bytes(v, seen, by_dtype) for v in obj.values())
    if isinstance(obj, (tuple, list)):
        return sum(distinct_bytes(v, seen, by_dtype) for v in obj)
    return 0


def cache_breakdown(cache, params, images):
    """[(label, bytes)] of the ModelCache's arrays, in forward order (an array shared by
    two fields counts in the first), and {dtype: bytes}."""
    seen, by_dtype = {}, {}
    distinct_bytes(params, seen)  # the parameters and the input are not the step's
    distinct_bytes(images, seen)
    rows = []
    body = cache.backbone.body
    rows.append(("backbone: stem (conv1, ReLU, max-pool)",
                 distinct_bytes((body.stem, body.stem_relu, body.pool), seen, by_dtype)))
    for i, stage in enumerate(body.stages):
        what = "frozen, no cache" if stage is None else f"{len(stage)} blocks"
        rows.append((f"backbone: layer{i + 1} ({what})", distinct_bytes(stage, seen, by_dtype)))
    rows.append(("backbone: FPN", distinct_bytes(cache.backbone.fpn, seen, by_dtype)))
    for field in ("rpn_head", "concat", "dobjectness", "dpred_bbox_deltas", "box_pool", "box_head",
                  "dclass_logits", "dbox_regression", "mask_pool", "mask_head", "dmask_logits", "info"):
        rows.append((field, distinct_bytes(getattr(cache, field), seen, by_dtype)))
    return rows, by_dtype


def run_traced(size):
    """Our training step under tracemalloc: memory by stage, and what the cache holds."""
    import tracemalloc

    config, params, images, _, targets = build(size)
    events = []  # (label, traced bytes after, peak inside)

    def wrap(name, label):
        real = getattr(M, name)

        def wrapper(*a, **k):
            tracemalloc.reset_peak()
            try:
                return real(*a, **k)
            finally:
                cur, peak = tracemalloc.get_traced_memory()
                events.append((label, cur, peak))
                tracemalloc.reset_peak()
        return name, real, wrapper

    stages = {**BM.FORWARD_TRAIN_STAGES, **BM.BACKWARD_STAGES}
    patches = [wrap(n, label) for n, label in stages.items()]
    tracemalloc.start()
    base, _ = tracemalloc.get_traced_memory()
    for name, _, wrapper in patches:
        setattr(M, name, wrapper)
    try:
        tracemalloc.reset_peak()
        _, cache = M.forward_train(params, images, targets, config, rng=np.random.default_rng(1))
        fwd_cur, fwd_peak = tracemalloc.get_traced_memory()
        fwd_events, events[:] = list(events), []
        rows, by_dtype = cache_breakdown(cache, params, images)
        tracemalloc.reset_peak()
        # what loss_and_grads does with the cache it owns (model._backward(release=True)
        # frees each cache once used); M.backward(cache) would keep all of it to the end
        fields = cache._asdict()
        del cache
        grads = M._backward(fields, M._check_loss_weights(None), release=True)
        bwd_cur, bwd_peak = tracemalloc.get_traced_memory()
        bwd_events = list(events)
        grad_bytes = sum(g.nbytes for g in grads.values())
        del fields
        end_cur, _ = tracemalloc.get_traced_memory()
    finally:
        for name, real, _ in patches:
            setattr(M, name, real)
        tracemalloc.stop()
    peaks = [p for _, _, p in fwd_events + bwd_events] + [fwd_peak, bwd_peak]
    return {"case": "ours-traced", "base": base, "fwd_events": fwd_events, "bwd_events": bwd_events,
            "fwd_end": fwd_cur, "fwd_peak": fwd_peak, "bwd_end": bwd_cur, "bwd_peak": bwd_peak,
            "peak": max(peaks), "grad_bytes": grad_bytes, "after_cache_freed": end_cur,
            "cache_rows": rows, "cache_by_dtype": by_dtype}


# =========================================================================== in the parent


def child(case, size):
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    cmd = [sys.executable, os.path.abspath(__file__), "--case", case, "--size", str(size), "--json"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{case} failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def mb(b):
    return f"{b / MB:8.0f}"


def print_rss(results, torch_on):
    print(f"  {'':34s} {'before':>8s} {'peak':>8s} {'step':>8s}   (RSS, MB; step = peak - before)")
    for case in CASES:
        r = results.get(case)
        if r is None:
            continue
        print(f"  {case:34s} {mb(r['before'])} {mb(r['peak'])} {mb(r['peak'] - r['before'])}"
              f"   ({r['cpu_s']:.1f} s CPU{'' if r['peak_reset'] else '; peak over the whole child'})")
    if torch_on:
        for kind in ("train", "predict"):
            o, t = results[f"ours-{kind}"], results[f"torch-{kind}"]
            print(f"  {kind}: ours / torch, peak {o['peak'] / t['peak']:.2f}x, "
                  f"step {(o['peak'] - o['before']) / (t['peak'] - t['before']):.2f}x")


def print_traced(r):
    base = r["base"]

    def rel(b):
        return mb(b - base)

    print("\n  ours-traced: NumPy + Python memory under tracemalloc, MB allocated since the model and "
          "input were built (and still alive)")
    print(f"  {'stage':40s} {'after':>8s} {'peak in':>8s}")
    for title, events in (("forward_train", r["fwd_events"]), ("backward", r["bwd_events"])):
        print(f"  {title}:")
        merged = []  # consecutive calls of one stage (e.g. the RPN loss's three) as one row
        for label, cur, peak in events:
            if merged and merged[-1][0] == label:
                merged[-1] = (label, cur, max(peak, merged[-1][2]))
            else:
                merged.append((label, cur, peak))
        for label, cur, peak in merged:
            print(f"    {label:38s} {rel(cur)} {rel(peak)}")
    print(f"  end of forward_train {rel(r['fwd_end'])} (peak {rel(r['fwd_peak'])}); "
          f"end of backward {rel(r['bwd_end'])} (peak {rel(r['bwd_peak'])}); "
          f"grads {r['grad_bytes'] / MB:.0f} MB; after the cache is dropped {rel(r['after_cache_freed'])}")
    total = sum(b for _, b in r["cache_rows"])
    print(f"  the ModelCache at the end of forward_train: {total / MB:.0f} MB of distinct arrays")
    for label, b in sorted(r["cache_rows"], key=lambda x: -x[1]):
        if b or "frozen" in label:
            print(f"    {label:40s} {mb(b)}  {b / total:4.0%}")
    print("    by dtype: " + ", ".join(f"{k} {v / MB:.0f} MB" for k, v in
                                        sorted(r["cache_by_dtype"].items(), key=lambda x: -x[1])))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=800, help="side of the image (default 800)")
    ap.add_argument("--no-torch", action="store_true", help="skip torchvision")
    ap.add_argument("--no-trace", action="store_true", help="skip the tracemalloc run of ours")
    ap.add_argument("--case", choices=CASES + ("ours-traced",),
                    help="run one case in THIS process (what the children run)")
    ap.add_argument("--json", action="store_true", help="with --case: print the result as JSON")
    args = ap.parse_args(argv)

    if args.case:
        r = run_traced(args.size) if args.case == "ours-traced" else run_case(args.case, args.size)
        if args.json:
            print(json.dumps(r))
        elif args.case == "ours-traced":
            print_traced(r)
        else:
            print_rss({args.case: r}, False)
        return

    torch_on = not args.no_torch and all(importlib.util.find_spec(m) for m in ("torch", "torchvision"))
    print(f"numpy {np.__version__}; 1 x 3 x {args.size} x {args.size}, torchvision_config() "
          f"(ResNet-50-FPN, 91 classes); each case in a fresh process, one thread")
    if not torch_on:
        print("torch: not importable here (or --no-torch): mrcnn_np only")
    cases = [c for c in CASES if torch_on or c.startswith("ours")]
    results = {}
    for case in cases:
        results[case] = child(case, args.size)
    print_rss(results, torch_on)
    if not args.no_trace:
        print_traced(child("ours-traced", args.size))


if __name__ == "__main__":
    main()
