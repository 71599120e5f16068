"""Command line: ``python -m mrcnn_np {demo,train,evaluate,predict,export-shapes,figures,bench} ...``.

- ``demo``: the main job. Trains the tiny shapes Mask R-CNN
  (``config.shapes_config``) from scratch on synthetic shapes with a progress
  bar, saves the checkpoint, evaluates box and mask AP on held-out images and
  draws the loss curves and the predictions (all in ``demo_output/``).
- ``train``: the training part of ``demo`` alone (checkpoint in ``--checkpoint``).
  ``train --coco ANN.json --images DIR`` trains ``config.own_data_config`` on
  COCO-format data instead (``run_train_coco``: category ids and names in the
  checkpoint, saved every ``--save-every`` steps, ``--resume``).
- ``evaluate CKPT``: COCO box and mask AP of a checkpoint on held-out shapes
  images (the training seed + 10000, never seen in training);
  ``evaluate CKPT --coco VAL.json --images DIR`` on a COCO-format dataset,
  per category too (``run_evaluate_coco``).
- ``export-shapes DIR --images N``: synthetic shapes as a COCO-format dataset
  (PNGs and a json) to try ``train --coco`` on.
- ``predict [CKPT] IMAGE...``: detections in PNG/JPEG files, printed and drawn
  (default model: the shipped shapes model, ``pretrained.shapes_model``;
  ``--weights FILE.pth``: torchvision's Mask R-CNN weights). It
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
from .config import MaskRCNNConfig, own_data_config, own_data_recipe, shapes_config, shapes_recipe
from .data.coco import load_coco, write_coco_dataset
from .data.shapes import CLASS_NAMES, DATA_DESCRIPTION as SHAPES_DATA, HELD_OUT_SEED_OFFSET, ShapesDataset
from .evaluate import coco_evaluate, summarize
from .io import load_checkpoint, save_checkpoint
from .pretrained import COCO_CATEGORY_NAMES, SHAPES_WEIGHTS, load_resnet_backbone, torchvision_model

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
    They also run with one BLAS thread: OpenBLAS splits some products differently over
    two threads than over one (other last bits), and a training loop in a chapter
    carries such bits into its printed losses and figures (chapter 09's 150 steps:
    mean loss 1.342 on one thread, 1.354 on two), so the outputs would depend on the
    machine's core count.
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
    settings = {"MRCNN_NP_WRITE_FIGURES": "1", **{k: "1" for k in _BLAS_THREADS}}
    previous = {k: os.environ.get(k) for k in settings}
    os.environ.update(settings)  # inherited by the kernels started below
    try:
        for path in tqdm(paths, desc="notebooks", unit="nb"):
            nb = nbformat.read(path, as_version=4)
            ExecutePreprocessor(timeout=timeout, kernel_name="python3").preprocess(
                nb, {"metadata": {"path": str(nb_dir)}}
            )
            with atomic_path(path) as tmp:
                nbformat.write(nb, str(tmp))
    finally:
        for k, v in previous.items():
            if v is None:
                del os.environ[k]
            else:
                os.environ[k] = v
    return paths


#: the thread counts of the BLAS libraries NumPy may use (``run_figures`` sets them to 1)
_BLAS_THREADS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


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
    params = {k: v for k, v in params.items() if not k.startswith(TRAIN_STATE_PREFIX)}  # resume state
    return params, _config_from_meta(meta, path), meta


def run_train(*, steps, train_images, batch_size, base_lr, seed, checkpoint, workers=None, train_objects=None,
              progress=True):
    """Train the shapes model from scratch and save it with its provenance.

    Returns (params, config, history, path). The checkpoint's metadata holds the
    config, the recipe, the command line, the wall time of training and the data.
    """
    config = shapes_config()
    recipe = shapes_recipe()
    workers = recipe["workers"] if workers is None else workers
    lo, hi = recipe["train_objects"] if train_objects is None else train_objects
    rng = np.random.default_rng(seed)
    params = model.init_params(config, rng=rng)
    print(f"training the shapes Mask R-CNN ({sum(v.size for v in params.values()):,} parameters) "
          f"for {steps} steps of {batch_size} images" + (f" ({workers} processes)" if workers > 1 else ""))
    start = time.perf_counter()
    history = train.train(
        params, config, ShapesDataset(train_images, seed=seed, min_objects=lo, max_objects=hi), steps=steps, rng=rng,
        batch_size=batch_size, base_lr=base_lr,
        warmup_iters=min(recipe["warmup_iters"], steps // 5),
        milestones=tuple(int(f * steps) for f in recipe["milestones"]),
        weight_decay=recipe["weight_decay"], workers=workers, progress=progress)
    seconds = time.perf_counter() - start
    meta = {
        "command": "python -m mrcnn_np " + " ".join(sys.argv[1:]) if sys.argv[1:] else "run_train",
        "steps": steps, "seed": seed, "batch_size": batch_size, "base_lr": base_lr,
        "train_images": train_images, "train_objects": [int(lo), int(hi)], "workers": workers,
        "train_seconds": round(seconds, 1),
        "config": dataclasses.asdict(config), "class_names": list(CLASS_NAMES),
        "trained_on": SHAPES_DATA, "final_loss": history[-1]["loss"],
    }
    path = save_checkpoint(checkpoint, params, meta=meta)
    print(f"trained in {seconds:.0f} s; checkpoint: {path}")
    return params, config, history, path


#: held-out shapes images the demo and ``evaluate`` score on by default. The set moves AP: the
#: shipped model over ten sets of 100 images has box AP 0.840..0.895 (sd 0.016) and mask AP
#: 0.805..0.834 (sd 0.011); two sets of 500 agree to 0.005. Detecting 500 images takes ~4 s.
HELD_OUT_IMAGES = 500


def evaluate_on_shapes(params, config, val_images, seed, *, progress=True):
    """Detect on held-out shapes images (seed + 10000: never seen in training) and score them.

    Returns (dataset, ground truth list, detections list with binary masks, {iou_type: stats (12,)}).
    """
    from tqdm.auto import tqdm

    val_set = ShapesDataset(val_images, seed=seed + HELD_OUT_SEED_OFFSET)
    gt, dets = [], []
    for i0 in tqdm(range(0, len(val_set), 8), desc="detect", unit="batch", disable=not progress):
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
             workers=None, train_objects=None, progress=True):
    """Train the shapes model, evaluate it, draw it. Returns a dict of results.

    Everything goes to ``out_dir`` (figures to ``figures_dir``, default ``out_dir``):
    the checkpoint ``shapes_demo.npz`` (its metadata also records the held-out AP),
    ``demo_losses.png`` and ``demo_predictions.png``.
    """
    params, config, history, ckpt = run_train(
        steps=steps, train_images=train_images, batch_size=batch_size, base_lr=base_lr, seed=seed,
        checkpoint=Path(out_dir) / "shapes_demo.npz", workers=workers, train_objects=train_objects,
        progress=progress)
    val_set, gt, dets, stats = evaluate_on_shapes(params, config, val_images, seed, progress=progress)
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


def run_predict(checkpoint, images, *, out_dir, min_score=0.5, weights=None):
    """Detect objects in image files with a saved model (default: the shipped shapes
    model) or torchvision weights (``weights``: a maskrcnn_resnet50_fpn .pth, read by
    ``pretrained.torchvision_model``; 91 slots are named by ``COCO_CATEGORY_NAMES``);
    print them, draw them (figure and labels sized to the image). Returns the detections."""
    import matplotlib.pyplot as plt

    from .viz.common import save_figure
    from .viz.evaluation import plot_detections

    if weights is not None:
        if checkpoint is not None:
            raise ValueError("give a checkpoint (.npz) or --weights (.pth), not both")
        params, config = torchvision_model(weights)
        coco = config.num_classes == len(COCO_CATEGORY_NAMES)
        meta = {"trained_on": f"COCO 2017 (torchvision maskrcnn_resnet50_fpn weights {weights})" if coco
                else f"unknown data (torchvision maskrcnn_resnet50_fpn weights {weights})"}
        if coco:  # label = COCO category id; "N/A" marks the ids COCO 2017 leaves unused
            meta.update(class_names=list(COCO_CATEGORY_NAMES), category_ids=list(range(1, config.num_classes)))
        names = meta.get("class_names")
        known = sum(n != "N/A" for n in names[1:]) if names else config.num_classes - 1
        print(f"model: {known} {'COCO categories (names as torchvision)' if coco else 'unnamed classes'}; "
              f"trained on {meta['trained_on']}")
    else:
        params, config, meta = load_model(SHAPES_WEIGHTS if checkpoint is None else checkpoint)
        names, knowledge = _model_knowledge(config, meta)
        print(knowledge)
    cids = meta.get("category_ids")
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
            if cids is not None and 1 <= label <= len(cids):
                name += f" (category {cids[label - 1]})"
            print(f"  {name:10s} {score:.3f}  box " + " ".join(f"{v:.1f}" for v in box))
        shown = {"boxes": det["boxes"], "labels": det["labels"], "scores": det["scores"],
                 "masks": det["masks"][:, 0] > 0.5}
        figsize, label_size = _figure_size(*img.shape[1:])
        fig, _ = plot_detections(img.transpose(1, 2, 0), {"boxes": [], "labels": []}, shown,
                                 class_names=names, min_score=min_score, legend=False, title=Path(path).name,
                                 figsize=figsize, label_size=label_size)
        out = save_figure(fig, Path(out_dir) / f"{Path(path).stem}_detections.png")
        plt.close(fig)
        print(f"  drawn: {out}")
    return results


# ------------------------------------------------------------------ COCO-format data

#: checkpoint arrays whose names start with this are training state (momentum buffers,
#: the epoch's image order), not parameters: ``load_model`` leaves them out
TRAIN_STATE_PREFIX = "train_state."


def run_export_shapes(out_dir, *, num_images, seed=0, progress=True):
    """Write ``num_images`` synthetic shapes images as a COCO-format dataset in ``out_dir``.

    PNGs in ``out_dir/images/``, annotations in ``out_dir/annotations.json``
    (categories 1 square, 2 circle, 3 triangle; segmentations as polygons,
    compressed and uncompressed RLE in turn: ``data.coco.write_coco_dataset``).
    ``load_coco`` of it gives ``ShapesDataset(num_images, seed=seed)``'s
    boxes, labels and masks exactly. Returns the json's Path.
    """
    path = write_coco_dataset(ShapesDataset(num_images, seed=seed), out_dir, category_names=CLASS_NAMES[1:],
                              progress=progress)
    print(f"wrote {num_images} images and {path}")
    return path


def _coco_label_map(model_category_ids, data, what):
    """(K'+1,) int64: model label -> label of ``data`` (0 where the category is not in data)."""
    lut = np.zeros(len(model_category_ids) + 1, dtype=np.int64)
    for label, cid in enumerate(model_category_ids, start=1):
        if cid in data.category_ids:
            lut[label] = data.label_of(cid)
    if not lut.any():
        raise ValueError(f"{what}: the model's category ids {list(model_category_ids)} share none with "
                         f"{data.annotation_file}'s {list(data.category_ids)}")
    return lut


def evaluate_on_coco(params, config, data, *, model_category_ids=None, batch_size=2, progress=True):
    """Detect on every image of a COCO-format dataset and print COCO AP per iou type and per category.

    data: ``data.coco.CocoData`` with images and masks. model_category_ids:
    the COCO category id of each model label 1..K' (a checkpoint's
    "category_ids"; default: the data's own). Detections are mapped to the
    data's labels through the category ids (those of categories the data does
    not have are dropped); crowd objects are ignored regions, as pycocotools.
    Returns ({iou_type: COCOEvalResult}, rows): rows is one dict per category
    of the data: "category_id", "name", "objects" (non-crowd), "bbox", "segm"
    (AP at IoU .50:.95, all areas, 100 detections; nan without objects).
    """
    from tqdm.auto import tqdm

    lut = _coco_label_map(data.category_ids if model_category_ids is None else model_category_ids, data,
                          "evaluate")
    gt, dets = [], []
    for i0 in tqdm(range(0, len(data), batch_size), desc="detect", unit="batch", disable=not progress):
        items = [data[i] for i in range(i0, min(len(data), i0 + batch_size))]
        images = [np.ascontiguousarray(it["image"].transpose(2, 0, 1)) for it in items]
        for item, det in zip(items, model.detect(params, images, config)):
            gt.append({k: item[k] for k in ("boxes", "labels", "masks", "iscrowd", "area", "image_id")})
            labels = lut[det["labels"]]
            keep = labels > 0
            dets.append({"boxes": det["boxes"][keep], "labels": labels[keep], "scores": det["scores"][keep],
                         "masks": det["masks"][keep, 0] > 0.5})
    categories = tuple(range(1, len(data.category_ids) + 1))
    results, rows = {}, []
    for iou_type in ("bbox", "segm"):
        results[iou_type] = coco_evaluate(gt, dets, iou_type=iou_type, category_ids=categories)
        print(f"\n{iou_type} on {len(data)} images of {data.annotation_file}:\n"
              f"{summarize(results[iou_type], iou_type=iou_type)}")
    objects = np.bincount(np.concatenate([g["labels"][~g["iscrowd"]] for g in gt]), minlength=len(categories) + 1)
    for k, (cid, name) in enumerate(zip(data.category_ids, data.category_names)):
        row = {"category_id": cid, "name": name, "objects": int(objects[k + 1])}
        for iou_type, res in results.items():
            p = res.precision[:, :, k, 0, -1]  # (T, R): every IoU threshold, all areas, the most detections
            row[iou_type] = float(p[p > -1].mean()) if (p > -1).any() else float("nan")
        rows.append(row)
    width = max(8, *(len(r["name"]) for r in rows))
    print(f"\nper category (AP at IoU .50:.95, all areas, {results['bbox'].max_dets[-1]} detections):")
    print(f"  {'id':>6}  {'name':{width}}  {'box AP':>7}  {'mask AP':>7}  {'objects':>7}")
    for r in rows:
        print(f"  {r['category_id']:>6}  {r['name']:{width}}  {r['bbox']:7.3f}  {r['segm']:7.3f}  {r['objects']:>7}")
    return results, rows


def _save_training(path, params, state, rng, meta):
    """Checkpoint with everything a resume needs: parameters, momentum, order, step, rng state."""
    arrays = dict(params)
    arrays.update({f"{TRAIN_STATE_PREFIX}momentum.{k}": v for k, v in state.get("buffers", {}).items()})
    if state.get("order") is not None:
        arrays[f"{TRAIN_STATE_PREFIX}order"] = np.asarray(state["order"], dtype=np.int64)
    meta = dict(meta, train_state={"step": int(state.get("step", 0)), "pos": int(state.get("pos", 0)),
                                   "rng": rng.bit_generator.state})
    return save_checkpoint(path, arrays, meta=meta)


def _load_training(path, data):
    """(params, meta, state, rng) of a checkpoint saved by :func:`run_train_coco`, checked against ``data``."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"--resume: checkpoint {path} not found (nothing to resume)")
    arrays, meta = load_checkpoint(path)
    ts = meta.get("train_state")
    if not isinstance(ts, dict) or not {"step", "pos", "rng"} <= set(ts) or "recipe" not in meta:
        raise ValueError(f"{path}: not a resumable checkpoint of `train --coco` (no training state in its metadata)")
    if list(meta.get("category_ids", [])) != list(data.category_ids):
        raise ValueError(f"{path}: trained on category ids {meta.get('category_ids')}, but {data.annotation_file} "
                         f"has {list(data.category_ids)}")
    params = {k: v for k, v in arrays.items() if not k.startswith(TRAIN_STATE_PREFIX)}
    momentum = f"{TRAIN_STATE_PREFIX}momentum."
    state = {"step": ts["step"], "pos": ts["pos"],
             "buffers": {k[len(momentum):]: v for k, v in arrays.items() if k.startswith(momentum)},
             "order": arrays.get(f"{TRAIN_STATE_PREFIX}order")}
    if state["order"] is not None and len(state["order"]) != len(data):
        raise ValueError(f"{path}: trained on {len(state['order'])} images, but {data.annotation_file} has {len(data)}")
    rng = np.random.default_rng()
    try:
        rng.bit_generator.state = ts["rng"]
    except (TypeError, ValueError, KeyError) as exc:
        raise ValueError(f"{path}: unusable random state in its metadata ({exc})") from None
    return params, meta, state, rng


def run_train_coco(*, coco, images, checkpoint, val_coco=None, val_images=None, backbone_weights=None,
                   min_size=None, max_size=None, steps=None, batch_size=None, base_lr=None, hflip_prob=None,
                   seed=0, save_every=100, resume=False, workers=None, progress=True):
    """Train a Mask R-CNN on a COCO-format dataset (``config.own_data_config``); save and resume it.

    coco, images: the annotation json and the folder of its images.
    checkpoint: the .npz written every ``save_every`` steps and at the end
        (atomically). Besides the parameters it holds the training state:
        arrays ``train_state.momentum.<name>`` (SGD momentum) and
        ``train_state.order`` (the epoch's image order), and in its metadata
        "train_state" (steps done, position in the epoch, the random
        generator's state), "recipe" (batch size, base lr, warm-up, milestones
        in steps, weight decay, flip probability), "steps" (the total),
        "config", "class_names" ("background" + the category names),
        "category_ids", "trained_on" (the json's path) and "seed".
    resume: continue the run saved in ``checkpoint``: config, recipe and
        random state come from it (min_size, max_size, batch_size, base_lr,
        hflip_prob, backbone_weights and seed are not used); ``steps`` is the
        total to reach (default: the saved total). Resuming a run stopped after
        any save repeats the uninterrupted run bit for bit (same parameters,
        losses and checkpoint arrays, on the same machine and thread count);
        only the wall time, the progress bar and the loss history before the
        resume (the checkpoint keeps the final loss only) are not carried over.
    val_coco, val_images: optional held-out json (and its image folder,
        default ``images``), evaluated at the end; its AP goes into the metadata.
    Other arguments default to ``config.own_data_recipe`` and
    ``own_data_config`` (min_size 256, max_size 384); backbone_weights: an
    ImageNet ResNet-50 .pth for the ResNet-50 variant.
    Returns (params, config, history, path).
    """
    data = load_coco(coco, images)
    val = None if val_coco is None else load_coco(val_coco, images if val_images is None else val_images)
    if resume:
        params, meta, state, rng = _load_training(checkpoint, data)
        config = _config_from_meta(meta, checkpoint)
        recipe = meta["recipe"]
        # --workers overrides the checkpoint's (one process for a checkpoint written before workers existed)
        recipe["workers"] = recipe.get("workers", 1) if workers is None else workers
        steps = int(meta["steps"]) if steps is None else steps
        if steps <= state["step"]:
            raise ValueError(f"{checkpoint} has done {state['step']} steps already; give --steps above that")
        print(f"resuming {checkpoint} at step {state['step']} of {steps} (config, schedule and random state "
              "from the checkpoint)")
    else:
        pretrained = backbone_weights is not None
        defaults = own_data_recipe(pretrained)
        steps = defaults["steps"] if steps is None else steps
        config = own_data_config(data.num_classes, pretrained_backbone=pretrained,
                                 min_size=256 if min_size is None else min_size,
                                 max_size=max(384, min_size or 0) if max_size is None else max_size)
        recipe = {"batch_size": defaults["batch_size"] if batch_size is None else batch_size,
                  "base_lr": defaults["base_lr"] if base_lr is None else base_lr,
                  "warmup_iters": min(defaults["warmup_iters"], steps // 5),
                  "milestones": [int(f * steps) for f in defaults["milestones"]],
                  "weight_decay": defaults["weight_decay"],
                  "hflip_prob": defaults["hflip_prob"] if hflip_prob is None else hflip_prob,
                  "workers": defaults["workers"] if workers is None else workers}
        rng = np.random.default_rng(seed)
        params = model.init_params(config, rng=rng)
        if pretrained:
            load_resnet_backbone(backbone_weights, params)
        state = {}
        meta = {"seed": seed, "recipe": recipe, "config": dataclasses.asdict(config),
                "class_names": list(data.class_names), "category_ids": list(data.category_ids),
                "trained_on": str(Path(coco).resolve()), "images": str(data.image_dir.resolve()),
                "train_images": len(data),
                "backbone_weights": None if backbone_weights is None else str(backbone_weights),
                "train_seconds": 0.0}
    meta.update(command="python -m mrcnn_np " + " ".join(sys.argv[1:]) if sys.argv[1:] else "run_train_coco",
                steps=steps)
    if len(data) < recipe["batch_size"]:
        raise ValueError(f"{coco} has {len(data)} images, fewer than the batch size {recipe['batch_size']}")
    print(f"training a Mask R-CNN ({sum(v.size for v in params.values()):,} parameters, {data.num_classes - 1} "
          f"categories) on {len(data)} images of {coco} for {steps} steps of {recipe['batch_size']} images")
    start, done_before = time.perf_counter(), float(meta.get("train_seconds", 0.0))

    def save(final_loss=None):
        meta["train_seconds"] = round(done_before + time.perf_counter() - start, 1)
        if final_loss is not None:
            meta["final_loss"] = final_loss
        return _save_training(checkpoint, params, state, rng, meta)

    def every(step, record, params_):
        if (step + 1) % save_every == 0 and step + 1 < steps:
            save(record["loss"])

    history = train.train(
        params, config, data, steps=steps, rng=rng, batch_size=recipe["batch_size"], base_lr=recipe["base_lr"],
        warmup_iters=recipe["warmup_iters"], milestones=tuple(recipe["milestones"]),
        weight_decay=recipe["weight_decay"], hflip_prob=recipe["hflip_prob"], state=state, callback=every,
        workers=recipe["workers"], progress=progress)
    path = save(history[-1]["loss"])
    print(f"trained in {meta['train_seconds']:.0f} s; checkpoint: {path}")
    if val is not None:
        results, _ = evaluate_on_coco(params, config, val, model_category_ids=data.category_ids, progress=progress)
        meta.update(val_coco=str(Path(val_coco).resolve()),
                    box_ap=round(float(results["bbox"].stats[0]), 4), mask_ap=round(float(results["segm"].stats[0]), 4))
        path = _save_training(checkpoint, params, state, rng, meta)
    return params, config, history, path


def run_evaluate_coco(checkpoint, coco, images, *, progress=True):
    """COCO AP of a checkpoint on a COCO-format dataset, per iou type and per category (printed).

    The checkpoint's "category_ids" map its labels to the json's categories
    (a checkpoint without them, e.g. a shapes model, is taken to use ids 1..K).
    Returns what :func:`evaluate_on_coco` returns.
    """
    params, config, meta = load_model(checkpoint)
    data = load_coco(coco, images)
    cids = meta.get("category_ids") or list(range(1, config.num_classes))
    return evaluate_on_coco(params, config, data, model_category_ids=cids, progress=progress)


def _figure_size(h, w):
    """(figsize in inches, label font size) that keep labels readable on an h x w image.

    At 100 dpi the long side of the figure is the image's long side in pixels,
    clipped to [400, 1200] (4..12 inches); labels grow from 8 to 14 points with it.
    """
    long_in = min(12.0, max(4.0, max(h, w) / 100))
    scale = long_in / max(h, w)
    return (w * scale, h * scale), float(min(14.0, max(8.0, 4.0 + long_in)))


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
               "  python -m mrcnn_np predict --weights maskrcnn_resnet50_fpn_coco-bf2d0c1e.pth photo.jpg\n"
               "  python -m mrcnn_np train --coco data/train.json --images data/images --checkpoint mine.npz\n"
               "  python -m mrcnn_np COMMAND --help")
    sub = parser.add_subparsers(dest="command", required=True)

    def command(name, help, example):
        return sub.add_parser(name, help=help, description=help[0].upper() + help[1:] + ".",
                              epilog=f"example:\n  python -m mrcnn_np {example}",
                              formatter_class=argparse.RawDescriptionHelpFormatter)

    demo = command("demo", "train the shapes Mask R-CNN from scratch, evaluate it on held-out images and "
                   "draw its predictions", "demo --out-dir demo_output")
    tr = command("train", "train the shapes Mask R-CNN from scratch, or with --coco a Mask R-CNN on your own "
                 "COCO-format data, and save a checkpoint",
                 "train --steps 500 --checkpoint demo_output/model.npz\n"
                 "  python -m mrcnn_np train --coco data/train.json --images data/images --val-coco data/val.json "
                 "--checkpoint runs/mine.npz")
    own, own_pre = own_data_recipe(), own_data_recipe(pretrained_backbone=True)
    for p in (demo, tr):
        # train: None = the shapes recipe's value, or the own-data recipe's with --coco (resolved in main)
        def default(key, p=p):
            if p is demo:
                return recipe[key], f"default {recipe[key]}"
            other = f"{own[key]}" if own[key] == own_pre[key] else f"{own[key]}, {own_pre[key]} with --backbone-weights"
            return None, f"default {recipe[key]}; with --coco {other}"
        value, text = default("steps")
        p.add_argument("--steps", type=int, default=value, help=f"SGD steps ({text}; with --resume: the total "
                       "to reach, default the checkpoint's)" if p is tr else f"SGD steps ({text})")
        value, text = default("batch_size")
        p.add_argument("--batch-size", type=int, default=value, help=f"images per step ({text})")
        value, text = default("base_lr")
        p.add_argument("--lr", type=float, default=value, help=f"base learning rate after warm-up ({text})")
        p.add_argument("--train-images", type=int, default=recipe["train_images"],
                       help=f"size of the synthetic training set (default {recipe['train_images']})"
                       + ("; not used with --coco" if p is tr else ""))
        lo, hi = recipe["train_objects"]
        p.add_argument("--train-objects", type=int, nargs=2, metavar=("MIN", "MAX"), default=None,
                       help=f"shapes per training image, uniform in MIN..MAX (default {lo} {hi}; the held-out "
                       "images have 1..4)" + ("; not used with --coco" if p is tr else ""))
        p.add_argument("--seed", type=int, default=0,
                       help="seed of the data, the initialisation and the sampling (default 0)")
        p.add_argument("--workers", type=int, default=None,
                       help=f"processes that share each batch, one per core (default {recipe['workers']}"
                       + ("; with --resume the checkpoint's" if p is tr else "") + "; the result depends on it)")
    demo.add_argument("--val-images", type=int, default=HELD_OUT_IMAGES,
                      help=f"held-out images to evaluate on (default {HELD_OUT_IMAGES})")
    demo.add_argument("--out-dir", default="demo_output",
                      help="folder for the checkpoint and the figures (default demo_output)")
    demo.add_argument("--figures-dir", default=None, help="folder for the figures (default: --out-dir)")
    tr.add_argument("--checkpoint", default=None,
                    help="where to save the checkpoint, a .npz file (default demo_output/shapes_model.npz; "
                         "with --coco demo_output/NAME_model.npz for NAME.json)")
    tr.add_argument("--coco", metavar="ANN.json", default=None,
                    help="train on this COCO-format annotation file instead of synthetic shapes "
                         "(num_classes from its categories; config.own_data_config)")
    tr.add_argument("--images", metavar="DIR", default=None,
                    help="folder of the --coco images (their file_name is relative to it; default: the json's folder)")
    tr.add_argument("--val-coco", metavar="VAL.json", default=None,
                    help="held-out COCO-format annotations, evaluated after training (AP in the checkpoint)")
    tr.add_argument("--val-images-dir", metavar="DIR", default=None,
                    help="folder of the --val-coco images (default: --images)")
    tr.add_argument("--backbone-weights", metavar="resnet50.pth", default=None,
                    help="initialise a ResNet-50 body from torchvision's ImageNet weights file "
                         "(default: a small backbone from scratch)")
    tr.add_argument("--min-size", type=int, default=None,
                    help="resize: short side of the images in pixels (default 256; --coco only)")
    tr.add_argument("--max-size", type=int, default=None,
                    help="resize: cap on the long side in pixels (default 384 or --min-size; --coco only)")
    tr.add_argument("--hflip", type=float, default=None,
                    help=f"probability of mirroring a training image left-right (default {own['hflip_prob']}; "
                         "--coco only)")
    tr.add_argument("--save-every", type=int, default=100,
                    help="with --coco, also save the checkpoint every this many steps (default 100)")
    tr.add_argument("--resume", action="store_true",
                    help="continue the --coco run saved in --checkpoint from its step, with its config, "
                         "schedule and random state (bit for bit as if never stopped)")
    ev = command("evaluate", "COCO box and mask AP of a checkpoint on held-out shapes images, or with --coco "
                 "on a COCO-format dataset (per category too)",
                 "evaluate demo_output/shapes_demo.npz\n"
                 "  python -m mrcnn_np evaluate runs/mine.npz --coco data/val.json --images data/images")
    ev.add_argument("checkpoint", help="a .npz checkpoint written by train or demo")
    ev.add_argument("--coco", metavar="VAL.json", default=None,
                    help="evaluate on this COCO-format annotation file (detections mapped to its category ids)")
    ev.add_argument("--images", metavar="DIR", default=None,
                    help="folder of the --coco images (default: the json's folder)")
    ev.add_argument("--val-images", type=int, default=HELD_OUT_IMAGES,
                    help=f"held-out images (default {HELD_OUT_IMAGES})")
    ev.add_argument("--seed", type=int, default=None,
                    help="the training seed (default: the checkpoint's); held-out images use seed + 10000")
    pr = command("predict", "detect objects in image files, print and draw the detections",
                 "predict demo_output/shapes_demo.npz some.png")
    pr.add_argument("files", nargs="+", metavar="[CHECKPOINT.npz] IMAGE",
                    help="an optional .npz checkpoint (default: the shipped shapes model), then PNG or JPEG files")
    pr.add_argument("--min-score", type=float, default=0.5,
                    help="print and draw detections with at least this score (default 0.5)")
    pr.add_argument("--out-dir", default="demo_output", help="where the drawings go (default demo_output)")
    pr.add_argument("--weights", metavar="FILE.pth", default=None,
                    help="use torchvision's maskrcnn_resnet50_fpn weights file instead of a checkpoint, e.g. "
                         "maskrcnn_resnet50_fpn_coco-bf2d0c1e.pth (README: The real COCO model)")
    ex = command("export-shapes", "write synthetic shapes images as a COCO-format dataset (PNGs and a json) "
                 "to try train --coco on", "export-shapes shapes_coco --images 200")
    ex.add_argument("out_dir", metavar="DIR", help="folder for images/ and annotations.json")
    ex.add_argument("--images", type=int, default=100, help="number of images (default 100)")
    ex.add_argument("--seed", type=int, default=0, help="seed of the synthetic data (default 0)")
    fig = command("figures", "execute the notebooks in place and regenerate the figures in images/",
                  "figures '05*'")
    fig.add_argument("patterns", nargs="*", default=["*.ipynb"], help="notebook glob(s) (default: all)")
    fig.add_argument("--timeout", type=int, default=600, help="seconds allowed per cell (default 600)")
    bench = command("bench", "run the speed benchmarks in benchmarks/", "bench conv nms")
    bench.add_argument("names", nargs="*", help="benchmark names, e.g. conv nms roi_align (default: all)")
    return parser


def _train_options(parser, args):
    """Check train's options and fill the defaults that depend on --coco."""
    coco_only = {"images": "--images", "val_coco": "--val-coco", "val_images_dir": "--val-images-dir",
                 "backbone_weights": "--backbone-weights", "min_size": "--min-size", "max_size": "--max-size",
                 "hflip": "--hflip"}
    if args.coco is None:
        given = [flag for dest, flag in coco_only.items() if getattr(args, dest) is not None]
        if given or args.resume:
            parser.error(f"{(given or ['--resume'])[0]} is for training on COCO-format data; give --coco ANN.json too")
        recipe = shapes_recipe()
        for dest, key in (("steps", "steps"), ("batch_size", "batch_size"), ("lr", "base_lr")):
            if getattr(args, dest) is None:
                setattr(args, dest, recipe[key])
        if args.checkpoint is None:
            args.checkpoint = "demo_output/shapes_model.npz"
    else:  # None = the own-data recipe's value, or the checkpoint's with --resume (run_train_coco)
        if args.checkpoint is None:
            args.checkpoint = f"demo_output/{Path(args.coco).stem}_model.npz"
        if args.images is None:
            args.images = str(Path(args.coco).parent)
        _positive(parser, args, [n for n in ("min_size", "max_size") if getattr(args, n) is not None])
        _positive(parser, args, ["save_every"])
        if args.hflip is not None and not (0.0 <= args.hflip <= 1.0):
            parser.error(f"--hflip must be in [0, 1], got {args.hflip}")
        if args.seed < 0:
            parser.error(f"--seed must be >= 0, got {args.seed}")
    if not args.checkpoint.lower().endswith(".npz"):
        parser.error(f"--checkpoint must be a .npz file, got {args.checkpoint!r}")


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
    if args.command == "train":
        _train_options(parser, args)
    if args.command in ("demo", "train"):
        _positive(parser, args, [n for n in ("steps", "batch_size", "train_images", "workers")
                                 if getattr(args, n) is not None])
        if args.lr is not None:
            _finite_positive(parser, args, "lr")
        if args.train_objects is not None and not 1 <= args.train_objects[0] <= args.train_objects[1]:
            parser.error(f"--train-objects MIN MAX must have 1 <= MIN <= MAX, got {args.train_objects[0]} "
                         f"{args.train_objects[1]}")
    if args.command == "evaluate" and args.images is not None and args.coco is None:
        parser.error("--images is the folder of the --coco images; give --coco VAL.json too")
    if args.command == "export-shapes":
        _positive(parser, args, ["images"])
        if args.seed < 0:
            parser.error(f"--seed must be >= 0, got {args.seed}")
    if args.command in ("demo", "evaluate"):
        _positive(parser, args, ["val_images"])
    if args.command == "predict" and not (0.0 <= args.min_score <= 1.0):
        parser.error(f"--min-score must be in [0, 1], got {args.min_score}")
    try:
        _run(parser, args)
    except (ValueError, TypeError, OSError, FloatingPointError) as exc:  # one line, no traceback
        parser.exit(1, f"python -m mrcnn_np {args.command}: error: {exc}\n")
    return 0


def _run(parser, args):
    if args.command == "demo":
        run_demo(steps=args.steps, train_images=args.train_images, val_images=args.val_images,
                 batch_size=args.batch_size, base_lr=args.lr, seed=args.seed, out_dir=args.out_dir,
                 figures_dir=args.figures_dir, workers=args.workers, train_objects=args.train_objects)
    elif args.command == "train" and args.coco is not None:
        run_train_coco(coco=args.coco, images=args.images, checkpoint=args.checkpoint, val_coco=args.val_coco,
                       val_images=args.val_images_dir, backbone_weights=args.backbone_weights,
                       min_size=args.min_size, max_size=args.max_size, steps=args.steps,
                       batch_size=args.batch_size, base_lr=args.lr, hflip_prob=args.hflip, seed=args.seed,
                       save_every=args.save_every, resume=args.resume, workers=args.workers)
    elif args.command == "train":
        run_train(steps=args.steps, train_images=args.train_images, batch_size=args.batch_size,
                  base_lr=args.lr, seed=args.seed, checkpoint=args.checkpoint, workers=args.workers,
                  train_objects=args.train_objects)
    elif args.command == "evaluate" and args.coco is not None:
        run_evaluate_coco(args.checkpoint, args.coco, args.images)
    elif args.command == "export-shapes":
        run_export_shapes(args.out_dir, num_images=args.images, seed=args.seed)
    elif args.command == "evaluate":
        params, config, meta = load_model(args.checkpoint)
        seed = args.seed if args.seed is not None else int(meta.get("seed", 0))
        evaluate_on_shapes(params, config, args.val_images, seed)
    elif args.command == "predict":
        checkpoint, images = _predict_files(parser, args.files)
        if checkpoint is not None and args.weights is not None:
            parser.error("predict takes a checkpoint (.npz) or --weights FILE.pth, not both")
        run_predict(checkpoint, images, out_dir=args.out_dir, min_score=args.min_score, weights=args.weights)
    elif args.command == "figures":
        for path in run_figures(args.patterns, args.timeout):
            print(f"executed {path.relative_to(REPO)}")
        print(f"figures in {REPO / 'images'}")
    elif args.command == "bench":
        run_bench(args.names)


if __name__ == "__main__":
    sys.exit(main())
