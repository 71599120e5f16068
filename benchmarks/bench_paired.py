"""Old code against new code (and torch), paired call by call in one process, CPU time.

On the shared 2-core build machine wall times swing with other jobs, and even one-thread
CPU times drift by 10-20 % over a minute (cache and memory bandwidth are shared). So this
script loads two copies of ``mrcnn_np`` side by side, the checkout and an older snapshot
(``git archive <commit> | tar -x -C /tmp/snap_old``), and for each task runs old, new and
torch's twin one after the other, ``--calls`` times; it reports the median of the per-call
ratios new/old and new/torch (one triple of calls sees about the same machine), the
median times, and the float32 GEMM rate of the run.

Tasks (torchvision_config, one normalised 1 x 3 x S x S image, random ``init_params``
weights, as ``bench_model.py``): ``backbone`` (``fpn._backbone_infer``, torch:
``model.backbone`` under ``no_grad``), ``rpn_head`` (``rpn._rpn_head_infer`` on the
pyramid; torch: ``model.rpn.head``), ``predict`` (``model.predict``; torch: backbone -> rpn -> roi_heads, as ``bench_model.py``),
``train`` (``forward_train`` + ``backward``; torch: train-mode forward + ``loss.backward()``);
and the shapes model's ``shapes_predict`` and ``shapes_train`` (:func:`tasks_shapes`).

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE OPENBLAS_NUM_THREADS=1 \\
        /work/torchvenv/bin/python benchmarks/bench_paired.py --old /tmp/snap_old --tasks backbone predict
"""
from __future__ import annotations

import argparse
import importlib
import statistics
import sys
import time
from pathlib import Path

import numpy as np

import _common  # the GEMM rate (and the checkout on sys.path)

clock = time.process_time
ROOT = str(Path(__file__).resolve().parents[1])


def load(path):
    """A fresh copy of mrcnn_np (and bench_model) from ``path``."""
    for k in [k for k in sys.modules if k == "mrcnn_np" or k.startswith("mrcnn_np.") or k == "bench_model"]:
        del sys.modules[k]
    sys.path.insert(0, path)
    sys.path.insert(0, str(Path(path) / "benchmarks"))
    try:
        mods = {n: importlib.import_module("mrcnn_np." + n) for n in ("model", "fpn", "rpn", "config", "train",
                                                                        "transform")}
        mods["bench"] = importlib.import_module("bench_model")
    finally:
        sys.path.pop(0)
        sys.path.pop(0)
    assert mods["model"].__file__.startswith(path), mods["model"].__file__
    return mods


def _timed(fn):
    t0 = clock()
    fn()
    return clock() - t0


def tasks_800(m, size, torch):
    """{task: fn} for one copy of mrcnn_np (``m``), plus the torch twins when torch is given."""
    M, FP, R, B = m["model"], m["fpn"], m["rpn"], m["bench"]
    config = m["config"].torchvision_config()
    rng = np.random.default_rng(0)
    params = M.init_params(config, rng=rng)
    raw = rng.uniform(0, 1, (3, size, size)).astype(np.float32)
    mean = np.asarray(m["transform"].IMAGE_MEAN, np.float32)[:, None, None]
    std = np.asarray(m["transform"].IMAGE_STD, np.float32)[:, None, None]
    images = ((raw - mean) / std)[None]
    targets = B.synthetic_targets(rng, size, 5, config.num_classes)
    st, names = FP._check_backbone_params(params, images.dtype)
    pyr = FP._backbone_infer(params, images, st, names)
    out = {
        "backbone": lambda: FP._backbone_infer(params, images, st, names),
        "rpn_head": lambda: R._rpn_head_infer(params, pyr),
        "predict": lambda: M.predict(params, images, config),
        "train": lambda: M.backward(M.forward_train(params, images, targets, config, rng=np.random.default_rng(1))[1]),
    }
    t = {}
    if torch is not None:
        tmodel = B.torch_resnet50_model(torch, params).eval()
        x = torch.from_numpy(images)
        t_pred, t_train = B.torch_stage_fns(torch, tmodel, images, [(size, size)], targets)
        with torch.no_grad():
            feats = tmodel.backbone(x)

        def nograd(f):
            def g():
                tmodel.eval()
                with torch.no_grad():
                    return f()
            return g
        t = {
            "backbone": nograd(lambda: tmodel.backbone(x)),
            "rpn_head": nograd(lambda: tmodel.rpn.head(list(feats.values()))),
            "predict": t_pred,
            "train": t_train,
        }
    return out, t


def tasks_shapes(m, torch):
    """{task: fn} of the shapes model (``shapes_config``, 4 images of ``ShapesDataset(64, seed=0)``,
    random ``init_params`` weights, as ``bench_model.py``): ``shapes_predict`` (``model.predict``;
    torch: backbone -> rpn -> roi_heads) and ``shapes_train`` (``model.loss_and_grads``; torch:
    train-mode forward + ``loss.backward()``), plus the torch twins when torch is given."""
    M, B, T = m["model"], m["bench"], m["transform"]
    config = m["config"].shapes_config()
    params = M.init_params(config, rng=np.random.default_rng(0))
    images, targets = m["train"].shapes_batch(B.ShapesDataset(64, seed=0), [0, 1, 2, 3])
    batch, sizes, tt = T.transform_forward(images, targets, min_size=config.min_size, max_size=config.max_size,
                                           mean=config.image_mean, std=config.image_std,
                                           size_divisible=config.size_divisible)
    out = {
        "shapes_predict": lambda: M.predict(params, batch, config, image_sizes=sizes),
        "shapes_train": lambda: M.loss_and_grads(params, batch, tt, config, rng=np.random.default_rng(1),
                                                 image_sizes=sizes),
    }
    t = {}
    if torch is not None:
        t_pred, t_train = B.torch_stage_fns(torch, B.torch_shapes_model(torch, config, params), batch, sizes, tt)
        t = {"shapes_predict": t_pred, "shapes_train": t_train}
    return out, t


TASK_GROUPS = {  # the builder of each group of tasks, and their names
    "800": (lambda m, args, torch: tasks_800(m, args.size, torch), ("backbone", "rpn_head", "predict", "train")),
    "shapes": (lambda m, args, torch: tasks_shapes(m, torch), ("shapes_predict", "shapes_train")),
}


def build_tasks(m, args, torch):
    """({task: fn}, {task: torch's fn}) of the groups that hold one of ``args.tasks`` (a group's
    models are built only when one of its tasks runs: the 800 px one costs seconds)."""
    ours, theirs = {}, {}
    for build, names in TASK_GROUPS.values():
        if set(names) & set(args.tasks):
            o, t = build(m, args, torch)
            ours.update(o)
            theirs.update(t)
    return ours, theirs


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--old", required=True, help="path of the old snapshot (a directory holding mrcnn_np/)")
    ap.add_argument("--tasks", nargs="+", default=["backbone", "rpn_head", "predict"],
                    choices=[name for _, names in TASK_GROUPS.values() for name in names])
    ap.add_argument("--calls", type=int, default=5)
    ap.add_argument("--size", type=int, default=800)
    ap.add_argument("--no-torch", action="store_true")
    args = ap.parse_args(argv)
    torch = None
    if not args.no_torch:
        try:
            import torch
            import torchvision  # noqa: F401
            torch.set_num_threads(1)
        except ImportError:
            torch = None
    old_tasks, _ = build_tasks(load(args.old), args, None)
    new_tasks, t_tasks = build_tasks(load(ROOT), args, torch)
    g0 = _common.gemm_gflops(clock=clock)
    print(f"GEMM {g0:.1f} GFLOP/s (CPU time, one thread); old {args.old}, new {ROOT}; "
          f"{args.calls} calls each, alternating")
    for task in args.tasks:
        fns = [("old", old_tasks[task]), ("new", new_tasks[task])]
        if task in t_tasks:
            fns.append(("torch", t_tasks[task]))
        for _, f in fns:  # warm-up
            f()
        times = {name: [] for name, _ in fns}
        for i in range(args.calls):
            order = fns if i % 2 == 0 else fns[::-1]
            for name, f in order:
                times[name].append(_timed(f))
        med = {k: statistics.median(v) for k, v in times.items()}
        r_old = statistics.median(n / o for n, o in zip(times["new"], times["old"]))
        line = (f"{task:10s} old {med['old']:.3f} s  new {med['new']:.3f} s  new/old {r_old:.3f} "
                f"(per-call {min(n / o for n, o in zip(times['new'], times['old'])):.3f}.."
                f"{max(n / o for n, o in zip(times['new'], times['old'])):.3f})")
        if "torch" in times:
            r_t = statistics.median(n / t for n, t in zip(times["new"], times["torch"]))
            r_ot = statistics.median(o / t for o, t in zip(times["old"], times["torch"]))
            line += f"  torch {med['torch']:.3f} s  new/torch {r_t:.3f}  old/torch {r_ot:.3f}"
        print(line, flush=True)
    print(f"GEMM at the end {_common.gemm_gflops(clock=clock):.1f} GFLOP/s")


if __name__ == "__main__":
    main()
