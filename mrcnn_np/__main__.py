"""Command line: ``python -m mrcnn_np {demo,figures,bench} ...``.

- ``demo``: the main job. Trains the tiny shapes Mask R-CNN
  (``config.shapes_config``) from scratch on synthetic shapes with a progress
  bar, saves the checkpoint, evaluates box and mask AP on held-out images and
  draws the loss curves and the predictions (``images/demo_*.png``).
- ``figures``: execute every notebook in ``notebooks/`` top to bottom, in
  place (outputs refreshed, written atomically); the notebooks regenerate the
  figures in ``images/``. Needs the ``notebooks`` extra
  (``pip install -e '.[notebooks]'``) and a source checkout.
- ``bench``: run the speed benchmarks in ``benchmarks/`` (each prints its own
  table). Run it with ``env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE`` on
  machines that set those variables (they halve NumPy's GEMM).

"""
from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from ._atomic import atomic_path

REPO = Path(__file__).resolve().parents[1]


def _checkout_dir(name):
    path = REPO / name
    if not path.is_dir():
        raise SystemExit(
            f"{name}/ not found next to the package ({path}); "
            "run from a source checkout installed with `pip install -e .`"
        )
    return path


def run_figures(patterns, timeout):
    """Execute the selected notebooks in place; returns the list of paths."""
    try:
        import nbformat
        from nbconvert.preprocessors import ExecutePreprocessor
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise SystemExit(
            f"`figures` needs jupyter ({exc}); install with: pip install -e '.[notebooks]'"
        ) from exc
    from tqdm.auto import tqdm

    nb_dir = _checkout_dir("notebooks")
    paths = sorted(p for pat in patterns for p in nb_dir.glob(pat))
    if not paths:
        raise SystemExit(f"no notebook in {nb_dir} matches {patterns}")
    for path in tqdm(paths, desc="notebooks", unit="nb"):
        nb = nbformat.read(path, as_version=4)
        ExecutePreprocessor(timeout=timeout, kernel_name="python3").preprocess(
            nb, {"metadata": {"path": str(nb_dir)}}
        )
        with atomic_path(path) as tmp:
            nbformat.write(nb, str(tmp))
    return paths


def run_bench(names):
    """Run ``benchmarks/bench_<name>.py`` for each name (all when empty)."""
    bench_dir = _checkout_dir("benchmarks")
    scripts = sorted(bench_dir.glob("bench_*.py"))
    if names:
        wanted = {f"bench_{n}.py" for n in names}
        unknown = wanted - {s.name for s in scripts}
        if unknown:
            raise SystemExit(f"unknown benchmark(s) {sorted(unknown)}; have {[s.stem[6:] for s in scripts]}")
        scripts = [s for s in scripts if s.name in wanted]
    for script in scripts:
        print(f"== {script.name}", flush=True)
        subprocess.run([sys.executable, str(script)], check=True)


def run_demo(*, steps, train_images, val_images, batch_size, base_lr, seed, out_dir, figures_dir,
             progress=True):
    """Train the shapes model, evaluate it, draw it. Returns a dict of results."""
    import dataclasses

    import numpy as np

    from . import model, train
    from .config import shapes_config
    from .data.shapes import CLASS_NAMES, ShapesDataset
    from .evaluate import coco_evaluate, summarize
    from .io import save_checkpoint

    config = shapes_config()
    rng = np.random.default_rng(seed)
    params = model.init_params(config, rng=rng)
    train_set = ShapesDataset(train_images, seed=seed)
    val_set = ShapesDataset(val_images, seed=seed + 10_000)  # other images than training
    print(f"training the shapes Mask R-CNN ({sum(v.size for v in params.values()):,} parameters) "
          f"for {steps} steps of {batch_size} images")
    history = train.train(
        params, config, train_set, steps=steps, rng=rng, batch_size=batch_size, base_lr=base_lr,
        warmup_iters=min(100, steps // 5), milestones=(int(0.8 * steps),), progress=progress)
    ckpt = save_checkpoint(Path(out_dir) / "shapes_demo.npz", params, meta={
        "steps": steps, "seed": seed, "batch_size": batch_size, "base_lr": base_lr,
        "config": dataclasses.asdict(config), "final_loss": history[-1]["loss"]})
    print(f"checkpoint: {ckpt}")

    gt, dets = [], []
    for i0 in range(0, len(val_set), 8):
        items = [val_set[i] for i in range(i0, min(len(val_set), i0 + 8))]
        images = [np.ascontiguousarray(it["image"].transpose(2, 0, 1)) for it in items]
        for item, det in zip(items, model.detect(params, images, config)):
            gt.append({k: item[k] for k in ("boxes", "labels", "masks")})
            dets.append({"boxes": det["boxes"], "labels": det["labels"], "scores": det["scores"],
                         "masks": det["masks"][:, 0] > 0.5})
    results = {}
    for iou_type in ("bbox", "segm"):
        stats = coco_evaluate(gt, dets, iou_type=iou_type).stats
        results[iou_type] = stats
        print(f"\n{iou_type} on {len(val_set)} held-out images:\n{summarize(stats, iou_type=iou_type)}")

    from .viz.demo import plot_demo_predictions, plot_training_history
    from .viz.common import save_figure

    figures_dir = Path(figures_dir)
    fig, _ = plot_training_history(history)
    paths = [save_figure(fig, figures_dir / "demo_losses.png")]
    fig, _ = plot_demo_predictions([val_set[i]["image"] for i in range(8)], gt[:8], dets[:8],
                                   class_names=CLASS_NAMES)
    paths.append(save_figure(fig, figures_dir / "demo_predictions.png"))
    print("figures: " + ", ".join(str(p) for p in paths))
    return {"history": history, "stats": results, "checkpoint": ckpt, "figures": paths}


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m mrcnn_np", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="train the shapes Mask R-CNN, evaluate it, draw its predictions")
    demo.add_argument("--steps", type=int, default=1500, help="SGD steps (default 1500, about 3 minutes)")
    demo.add_argument("--batch-size", type=int, default=4)
    demo.add_argument("--lr", type=float, default=0.02, help="base learning rate")
    demo.add_argument("--train-images", type=int, default=2000)
    demo.add_argument("--val-images", type=int, default=100)
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--out-dir", default="demo_output", help="checkpoint folder")
    demo.add_argument("--figures-dir", default=str(REPO / "images"))
    fig = sub.add_parser("figures", help="execute the notebooks in place and regenerate images/")
    fig.add_argument("patterns", nargs="*", default=["*.ipynb"], help="notebook glob(s), default all")
    fig.add_argument("--timeout", type=int, default=600, help="seconds per cell")
    bench = sub.add_parser("bench", help="run the speed benchmarks")
    bench.add_argument("names", nargs="*", help="e.g. conv nms roi_align (default: all)")
    args = parser.parse_args(argv)
    if args.command == "demo":
        for name in ("steps", "batch_size", "train_images", "val_images"):
            if getattr(args, name) < 1:
                parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
        if args.val_images < 8:
            parser.error(f"--val-images must be >= 8 (the figure shows 8), got {args.val_images}")
        run_demo(steps=args.steps, train_images=args.train_images, val_images=args.val_images,
                 batch_size=args.batch_size, base_lr=args.lr, seed=args.seed, out_dir=args.out_dir,
                 figures_dir=args.figures_dir)
    elif args.command == "figures":
        for path in run_figures(args.patterns, args.timeout):
            print(f"executed {path.relative_to(REPO)}")
        print(f"figures in {REPO / 'images'}")
    elif args.command == "bench":
        run_bench(args.names)
    return 0


if __name__ == "__main__":
    sys.exit(main())
