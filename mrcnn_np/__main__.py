"""Command line: ``python -m mrcnn_np {demo,train,evaluate,predict,figures,bench} ...``.

- ``demo``: the main job. Trains the tiny shapes Mask R-CNN
  (``config.shapes_config``) from scratch on synthetic shapes with a progress
  bar, saves the checkpoint, evaluates box and mask AP on held-out images and
  draws the loss curves and the predictions (all in ``demo_output/``).
- ``train``: the training part of ``demo`` alone (checkpoint in ``--checkpoint``).
- ``evaluate CKPT``: COCO box and mask AP of a checkpoint on held-out shapes
  images (the training seed + 10000, never seen in training).
- ``predict [CKPT] IMAGE...``: detections in PNG/JPEG files, printed and drawn
  (default model: the shipped shapes model, ``pretrained.shapes_model``). It
  says what the model knows (its classes, its training data). Checkpoints are ``.npz`` files with the model's config in their metadata
  (``mrcnn_np.io``; loading never unpickles).
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
import dataclasses
import math
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from . import model, train
from ._atomic import atomic_path
from .config import MaskRCNNConfig, shapes_config, shapes_recipe
from .data.shapes import CLASS_NAMES, DATA_DESCRIPTION as SHAPES_DATA, HELD_OUT_SEED_OFFSET, ShapesDataset
from .evaluate import coco_evaluate, summarize
from .io import load_checkpoint, save_checkpoint
from .pretrained import SHAPES_WEIGHTS

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
    """Execute the selected notebooks in place; returns the list of paths.

    The kernels run with MRCNN_NP_WRITE_FIGURES=1: only then do the notebooks
    rewrite images/ (``viz.common.save_figure``); a test or Jupyter run leaves it alone.
    """
    import os

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
    previous = os.environ.get("MRCNN_NP_WRITE_FIGURES")
    os.environ["MRCNN_NP_WRITE_FIGURES"] = "1"  # inherited by the kernels started below
    try:
        for path in tqdm(paths, desc="notebooks", unit="nb"):
            nb = nbformat.read(path, as_version=4)
            ExecutePreprocessor(timeout=timeout, kernel_name="python3").preprocess(
                nb, {"metadata": {"path": str(nb_dir)}}
            )
            with atomic_path(path) as tmp:
                nbformat.write(nb, str(tmp))
    finally:
        if previous is None:
            del os.environ["MRCNN_NP_WRITE_FIGURES"]
        else:
            os.environ["MRCNN_NP_WRITE_FIGURES"] = previous
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


def _config_from_meta(meta, path):
    try:
        return MaskRCNNConfig(**meta["config"])
    except (KeyError, TypeError, ValueError) as exc:
        raise SystemExit(f"{path}: no usable model config in the checkpoint's metadata ({exc})") from exc


def load_model(path):
    """(params, config, meta) from a checkpoint written by ``train``/``demo``."""
    path = Path(path)
    if not path.is_file():
        raise SystemExit(f"checkpoint {path} not found")
    try:
        params, meta = load_checkpoint(path)
    except (ValueError, TypeError, OSError) as exc:
        raise SystemExit(f"cannot read checkpoint {path}: {exc}") from exc
    return params, _config_from_meta(meta, path), meta


def run_train(*, steps, train_images, batch_size, base_lr, seed, checkpoint, progress=True):
    """Train the shapes model from scratch and save it with its provenance.

    Returns (params, config, history, path). The checkpoint's metadata holds the
    config, the recipe, the command line, the wall time of training and the data.
    """
    config = shapes_config()
    recipe = shapes_recipe()
    rng = np.random.default_rng(seed)
    params = model.init_params(config, rng=rng)
    print(f"training the shapes Mask R-CNN ({sum(v.size for v in params.values()):,} parameters) "
          f"for {steps} steps of {batch_size} images")
    start = time.perf_counter()
    history = train.train(
        params, config, ShapesDataset(train_images, seed=seed), steps=steps, rng=rng,
        batch_size=batch_size, base_lr=base_lr,
        warmup_iters=min(recipe["warmup_iters"], steps // 5),
        milestones=tuple(int(f * steps) for f in recipe["milestones"]),
        weight_decay=recipe["weight_decay"], progress=progress)
    seconds = time.perf_counter() - start
    meta = {
        "command": "python -m mrcnn_np " + " ".join(sys.argv[1:]) if sys.argv[1:] else "run_train",
        "steps": steps, "seed": seed, "batch_size": batch_size, "base_lr": base_lr,
        "train_images": train_images, "train_seconds": round(seconds, 1),
        "config": dataclasses.asdict(config), "class_names": list(CLASS_NAMES),
        "trained_on": SHAPES_DATA, "final_loss": history[-1]["loss"],
    }
    path = save_checkpoint(checkpoint, params, meta=meta)
    print(f"trained in {seconds:.0f} s; checkpoint: {path}")
    return params, config, history, path


def evaluate_on_shapes(params, config, val_images, seed):
    """Detect on held-out shapes images (seed + 10000: never seen in training) and score them.

    Returns (dataset, ground truth list, detections list with binary masks, {iou_type: stats (12,)}).
    """
    val_set = ShapesDataset(val_images, seed=seed + HELD_OUT_SEED_OFFSET)
    gt, dets = [], []
    for i0 in range(0, len(val_set), 8):
        items = [val_set[i] for i in range(i0, min(len(val_set), i0 + 8))]
        images = [np.ascontiguousarray(it["image"].transpose(2, 0, 1)) for it in items]
        for item, det in zip(items, model.detect(params, images, config)):
            gt.append({k: item[k] for k in ("boxes", "labels", "masks")})
            dets.append({"boxes": det["boxes"], "labels": det["labels"], "scores": det["scores"],
                         "masks": det["masks"][:, 0] > 0.5})
    stats = {}
    for iou_type in ("bbox", "segm"):
        stats[iou_type] = coco_evaluate(gt, dets, iou_type=iou_type).stats
        print(f"\n{iou_type} on {len(val_set)} held-out images:\n{summarize(stats[iou_type], iou_type=iou_type)}")
    return val_set, gt, dets, stats


def run_demo(*, steps, train_images, val_images, batch_size, base_lr, seed, out_dir, figures_dir=None,
             progress=True):
    """Train the shapes model, evaluate it, draw it. Returns a dict of results.

    Everything goes to ``out_dir`` (figures to ``figures_dir``, default ``out_dir``):
    the checkpoint ``shapes_demo.npz`` (its metadata also records the held-out AP),
    ``demo_losses.png`` and ``demo_predictions.png``.
    """
    params, config, history, ckpt = run_train(
        steps=steps, train_images=train_images, batch_size=batch_size, base_lr=base_lr, seed=seed,
        checkpoint=Path(out_dir) / "shapes_demo.npz", progress=progress)
    val_set, gt, dets, stats = evaluate_on_shapes(params, config, val_images, seed)
    _, meta = load_checkpoint(ckpt)
    meta.update(val_images=val_images, val_seed=seed + HELD_OUT_SEED_OFFSET,
                box_ap=round(float(stats["bbox"][0]), 4), mask_ap=round(float(stats["segm"][0]), 4),
                box_ap50=round(float(stats["bbox"][1]), 4), mask_ap50=round(float(stats["segm"][1]), 4))
    save_checkpoint(ckpt, params, meta=meta)

    from .viz.common import save_figure  # matplotlib only when drawing
    from .viz.demo import plot_demo_predictions, plot_training_history

    figures_dir = Path(out_dir if figures_dir is None else figures_dir)
    fig, _ = plot_training_history(history)
    paths = [save_figure(fig, figures_dir / "demo_losses.png")]
    n = min(8, len(val_set))
    fig, _ = plot_demo_predictions([val_set[i]["image"] for i in range(n)], gt[:n], dets[:n],
                                   class_names=CLASS_NAMES)
    paths.append(save_figure(fig, figures_dir / "demo_predictions.png"))
    print("figures: " + ", ".join(str(p) for p in paths))
    return {"history": history, "stats": stats, "checkpoint": ckpt, "figures": paths}


def _read_image(path):
    """An image file as (3, H, W) float32 in [0, 1] (RGB; alpha dropped, grey repeated)."""
    import matplotlib.image as mpimg

    try:
        img = mpimg.imread(path)
    except (OSError, ValueError, SyntaxError) as exc:  # Pillow raises SyntaxError for a broken PNG
        raise SystemExit(f"cannot read image {path}: {exc}") from exc
    img = np.asarray(img)
    if img.dtype.kind in "ui":  # JPEG via Pillow comes as uint8
        img = img / np.iinfo(img.dtype).max
    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2)
    if img.ndim != 3 or img.shape[2] not in (3, 4):
        raise SystemExit(f"{path}: expected an RGB(A) or grey image, got shape {img.shape}")
    return np.ascontiguousarray(img[:, :, :3].transpose(2, 0, 1), dtype=np.float32)


def looks_like_shapes_image(image):
    """True when a (3, H, W) image is flat-coloured like the synthetic shapes data.

    A shapes image is a background colour and at most 4 shape colours, so its 8
    most frequent colours cover (nearly) every pixel; a photo's do not.
    """
    rgb = np.round(np.asarray(image).reshape(3, -1).T * 255).astype(np.int64)
    codes = (rgb[:, 0] << 16) | (rgb[:, 1] << 8) | rgb[:, 2]
    counts = np.sort(np.unique(codes, return_counts=True)[1])[::-1]
    return counts[:8].sum() >= 0.95 * codes.size


def _model_knowledge(config, meta):
    """(class names or None, one line saying what the model knows)."""
    names = meta.get("class_names")
    if names is None and config.num_classes == len(CLASS_NAMES):
        names = list(CLASS_NAMES)
    if names is not None and len(names) != config.num_classes:
        names = None
    classes = ", ".join(names[1:]) if names else f"{config.num_classes - 1} unnamed classes"
    trained_on = meta.get("trained_on", "unknown data")
    return names, f"model: {config.num_classes - 1} classes ({classes}); trained on {trained_on}"


def run_predict(checkpoint, images, *, out_dir, min_score=0.5):
    """Detect objects in image files with a saved model (default: the shipped shapes
    model); print them, draw them. Returns the detections."""
    from .viz.common import save_figure
    from .viz.evaluation import plot_detections

    params, config, meta = load_model(SHAPES_WEIGHTS if checkpoint is None else checkpoint)
    names, knowledge = _model_knowledge(config, meta)
    print(knowledge)
    arrays = [_read_image(p) for p in images]
    results = model.detect(params, arrays, config)
    for path, img, det in zip(images, arrays, results):
        keep = det["scores"] >= min_score
        print(f"{path}: {int(keep.sum())} detections with score >= {min_score}")
        if meta.get("trained_on") == SHAPES_DATA and not looks_like_shapes_image(img):
            print("  note: this model was trained on synthetic shapes (flat-coloured squares, circles and "
                  "triangles); on other images its detections mean little")
        for box, label, score in zip(det["boxes"][keep], det["labels"][keep], det["scores"][keep]):
            name = names[label] if names else str(int(label))
            print(f"  {name:10s} {score:.3f}  box " + " ".join(f"{v:.1f}" for v in box))
        shown = {"boxes": det["boxes"], "labels": det["labels"], "scores": det["scores"],
                 "masks": det["masks"][:, 0] > 0.5}
        fig, _ = plot_detections(img.transpose(1, 2, 0), {"boxes": [], "labels": []}, shown,
                                 class_names=names, min_score=min_score, legend=False, title=Path(path).name)
        out = save_figure(fig, Path(out_dir) / f"{Path(path).stem}_detections.png")
        print(f"  drawn: {out}")
    return results


def _positive(parser, args, names):
    for name in names:
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")


def _finite_positive(parser, args, name):
    value = getattr(args, name)
    if not (math.isfinite(value) and value > 0):
        parser.error(f"--{name.replace('_', '-')} must be a finite number > 0, got {value}")


def _build_parser():
    recipe = shapes_recipe()
    parser = argparse.ArgumentParser(
        prog="python -m mrcnn_np", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Mask R-CNN in plain NumPy: train the shapes model, evaluate, predict, "
                    "regenerate the chapters' figures, run the benchmarks.",
        epilog="examples:\n  python -m mrcnn_np demo\n  python -m mrcnn_np predict photo.png\n"
               "  python -m mrcnn_np COMMAND --help")
    sub = parser.add_subparsers(dest="command", required=True)

    def command(name, help, example):
        return sub.add_parser(name, help=help, description=help[0].upper() + help[1:] + ".",
                              epilog=f"example:\n  python -m mrcnn_np {example}",
                              formatter_class=argparse.RawDescriptionHelpFormatter)

    demo = command("demo", "train the shapes Mask R-CNN from scratch, evaluate it on held-out images and "
                   "draw its predictions", "demo --out-dir demo_output")
    tr = command("train", "train the shapes Mask R-CNN from scratch and save a checkpoint",
                 "train --steps 500 --checkpoint demo_output/model.npz")
    for p in (demo, tr):
        p.add_argument("--steps", type=int, default=recipe["steps"],
                       help=f"SGD steps (default {recipe['steps']})")
        p.add_argument("--batch-size", type=int, default=recipe["batch_size"],
                       help=f"images per step (default {recipe['batch_size']})")
        p.add_argument("--lr", type=float, default=recipe["base_lr"],
                       help=f"base learning rate after warm-up (default {recipe['base_lr']})")
        p.add_argument("--train-images", type=int, default=recipe["train_images"],
                       help=f"size of the synthetic training set (default {recipe['train_images']})")
        p.add_argument("--seed", type=int, default=0,
                       help="seed of the data, the initialisation and the sampling (default 0)")
    demo.add_argument("--val-images", type=int, default=100,
                      help="held-out images to evaluate on (default 100)")
    demo.add_argument("--out-dir", default="demo_output",
                      help="folder for the checkpoint and the figures (default demo_output)")
    demo.add_argument("--figures-dir", default=None, help="folder for the figures (default: --out-dir)")
    tr.add_argument("--checkpoint", default="demo_output/shapes_model.npz",
                    help="where to save the checkpoint, a .npz file (default demo_output/shapes_model.npz)")
    ev = command("evaluate", "COCO box and mask AP of a checkpoint on held-out shapes images",
                 "evaluate demo_output/shapes_demo.npz")
    ev.add_argument("checkpoint", help="a .npz checkpoint written by train or demo")
    ev.add_argument("--val-images", type=int, default=100, help="held-out images (default 100)")
    ev.add_argument("--seed", type=int, default=None,
                    help="the training seed (default: the checkpoint's); held-out images use seed + 10000")
    pr = command("predict", "detect objects in image files, print and draw the detections",
                 "predict demo_output/shapes_demo.npz some.png")
    pr.add_argument("files", nargs="+", metavar="[CHECKPOINT.npz] IMAGE",
                    help="an optional .npz checkpoint (default: the shipped shapes model), then PNG or JPEG files")
    pr.add_argument("--min-score", type=float, default=0.5,
                    help="print and draw detections with at least this score (default 0.5)")
    pr.add_argument("--out-dir", default="demo_output", help="where the drawings go (default demo_output)")
    fig = command("figures", "execute the notebooks in place and regenerate the figures in images/",
                  "figures '05*'")
    fig.add_argument("patterns", nargs="*", default=["*.ipynb"], help="notebook glob(s) (default: all)")
    fig.add_argument("--timeout", type=int, default=600, help="seconds allowed per cell (default 600)")
    bench = command("bench", "run the speed benchmarks in benchmarks/", "bench conv nms")
    bench.add_argument("names", nargs="*", help="benchmark names, e.g. conv nms roi_align (default: all)")
    return parser


def _predict_files(parser, files):
    """Split predict's positionals into (checkpoint or None, images)."""
    checkpoints = [f for f in files if f.lower().endswith(".npz")]
    if len(checkpoints) > 1 or (checkpoints and files[0] != checkpoints[0]):
        parser.error(f"predict takes at most one checkpoint (.npz), before the images; got {files}")
    images = files[1:] if checkpoints else files
    if not images:
        parser.error("predict needs at least one image file")
    return (checkpoints[0] if checkpoints else None), images


def main(argv=None):
    parser = _build_parser()
    args = parser.parse_args(argv)
    if args.command in ("demo", "train"):
        _positive(parser, args, ["steps", "batch_size", "train_images"])
        _finite_positive(parser, args, "lr")
    if args.command in ("demo", "evaluate"):
        _positive(parser, args, ["val_images"])
    if args.command == "predict" and not (0.0 <= args.min_score <= 1.0):
        parser.error(f"--min-score must be in [0, 1], got {args.min_score}")
    if args.command == "train" and not args.checkpoint.lower().endswith(".npz"):
        parser.error(f"--checkpoint must be a .npz file, got {args.checkpoint!r}")
    try:
        _run(parser, args)
    except (ValueError, TypeError, OSError, FloatingPointError) as exc:  # one line, no traceback
        parser.exit(1, f"python -m mrcnn_np {args.command}: error: {exc}\n")
    return 0


def _run(parser, args):
    if args.command == "demo":
        run_demo(steps=args.steps, train_images=args.train_images, val_images=args.val_images,
                 batch_size=args.batch_size, base_lr=args.lr, seed=args.seed, out_dir=args.out_dir,
                 figures_dir=args.figures_dir)
    elif args.command == "train":
        run_train(steps=args.steps, train_images=args.train_images, batch_size=args.batch_size,
                  base_lr=args.lr, seed=args.seed, checkpoint=args.checkpoint)
    elif args.command == "evaluate":
        params, config, meta = load_model(args.checkpoint)
        seed = args.seed if args.seed is not None else int(meta.get("seed", 0))
        evaluate_on_shapes(params, config, args.val_images, seed)
    elif args.command == "predict":
        checkpoint, images = _predict_files(parser, args.files)
        run_predict(checkpoint, images, out_dir=args.out_dir, min_score=args.min_score)
    elif args.command == "figures":
        for path in run_figures(args.patterns, args.timeout):
            print(f"executed {path.relative_to(REPO)}")
        print(f"figures in {REPO / 'images'}")
    elif args.command == "bench":
        run_bench(args.names)


if __name__ == "__main__":
    sys.exit(main())
