"""Training: SGD with momentum and weight decay, warm-up and step schedule, the loop.

The recipe is torchvision's detection reference (``references/detection/train.py``):

- SGD with momentum 0.9 and weight decay 1e-4, torch's update rule
  (:func:`sgd_step`)::

      d   = g + weight_decay * p
      buf = d                          (first step)
      buf = momentum * buf + d         (later steps)
      p   = p - lr * buf

- the learning rate ramps up linearly from ``warmup_factor * base_lr`` over the
  first ``warmup_iters`` steps, then is multiplied by ``gamma`` at every
  milestone (:func:`learning_rate`; torch's ``LinearLR`` then ``MultiStepLR``);
- the loss is the plain sum of the five losses (``model.loss_and_grads``).

Only the trainable parameters (``model.trainable_keys``) are updated; frozen
backbone stages and batch-norm statistics never change.

Shape shorthand: N images per batch, H x W image, G objects of one image.
"""
from __future__ import annotations

import contextlib
import math
import pickle

import numpy as np
from tqdm.auto import tqdm

from . import model as model_lib
from ._checks import (check_array, check_bool, check_callable, check_coordinates, check_finite, check_flags,
                      check_float, check_float_dtype, check_indices, check_instance, check_param_dict,
                      check_positive_int, check_rng)
from .config import MaskRCNNConfig
from .parallel import DataParallel
from .transform import transform_forward

__all__ = ["learning_rate", "sgd_step", "global_norm", "clip_grad_norm", "hflip", "training_target", "dataset_batch",
           "load_batch", "shapes_batch", "train"]


def learning_rate(step, *, base_lr, warmup_iters=1000, warmup_factor=1e-3, milestones=(), gamma=0.1):
    """Learning rate of optimisation step ``step`` (0-based).

    Linear warm-up: ``base_lr * (warmup_factor + (1 - warmup_factor) * step / warmup_iters)``
    for ``step < warmup_iters`` (torch's ``LinearLR(start_factor=warmup_factor,
    total_iters=warmup_iters)``), then ``base_lr``; times ``gamma ** m`` where m
    counts the milestones ``<= step`` (``MultiStepLR``). warmup_iters=0: no warm-up.
    """
    if isinstance(step, bool) or not isinstance(step, (int, np.integer)):
        raise TypeError(f"step must be an int, got {type(step).__name__}")
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    base_lr = check_float("base_lr", base_lr, minimum=0.0)
    warmup_iters = check_positive_int("warmup_iters", warmup_iters, minimum=0)
    warmup_factor = check_float("warmup_factor", warmup_factor, minimum=0.0, maximum=1.0)
    gamma = check_float("gamma", gamma, minimum=0.0)
    if not isinstance(milestones, (list, tuple)):
        raise TypeError(f"milestones must be a list or tuple of steps, got {type(milestones).__name__}")
    milestones = tuple(check_positive_int("milestones", m, minimum=0) for m in milestones)
    if list(milestones) != sorted(milestones):
        raise ValueError(f"milestones must be increasing, got {milestones}")
    factor = 1.0
    if step < warmup_iters:
        factor = warmup_factor + (1.0 - warmup_factor) * step / warmup_iters
    decays = sum(1 for m in milestones if m <= step)
    return base_lr * factor * gamma ** decays


def sgd_step(params, grads, buffers, *, lr, momentum=0.9, weight_decay=1e-4):
    """One SGD step in place, torch's ``optim.SGD`` (dampening 0, no Nesterov).

    params: {name: array}, updated in place for every name in ``grads``.
    grads: {name: array} same shapes/dtypes (the trainable parameters only).
    buffers: {name: momentum buffer}, updated in place; empty on the first step
        (a missing buffer starts as ``d``, as torch).
    lr, weight_decay: in [0, 1000] (a sanity bound: larger steps overflow float32
    weights); momentum: in [0, 1] (torch allows more, but above 1 the buffer
    grows without bound). Every array must be finite: the boundary refuses NaN/inf.
    Everything is checked before the first update.
    """
    lr, momentum, weight_decay = _check_sgd_args(lr, momentum, weight_decay)
    for name, d in (("params", params), ("grads", grads), ("buffers", buffers)):
        if not isinstance(d, dict):
            raise TypeError(f"{name} must be a dict of arrays, got {type(d).__name__}")
    for key, g in grads.items():  # every check before the first update
        if key not in params:
            raise ValueError(f"grads has key {key!r} that is not in params")
        if not isinstance(g, np.ndarray):
            raise TypeError(f"grads[{key!r}] must be a numpy.ndarray, got {type(g).__name__}")
        p = check_array(f"params[{key!r}]", params[key], dtype_kind="f")
        if g.shape != p.shape or g.dtype != p.dtype:
            raise ValueError(f"grads[{key!r}] must have shape {p.shape} and dtype {p.dtype}, "
                             f"got {g.shape} {g.dtype}")
        check_finite(f"params[{key!r}]", p)
        check_finite(f"grads[{key!r}]", g)
        buf = buffers.get(key)
        if buf is not None:
            if not isinstance(buf, np.ndarray) or buf.shape != p.shape or buf.dtype != p.dtype:
                raise ValueError(f"buffers[{key!r}] must be an array of shape {p.shape} and dtype {p.dtype}, "
                                 f"got {getattr(buf, 'shape', type(buf).__name__)} {getattr(buf, 'dtype', '')}")
            check_finite(f"buffers[{key!r}]", buf)
    _sgd_step(params, grads, buffers, lr, momentum, weight_decay)


def _check_sgd_args(lr, momentum, weight_decay, lr_name="lr"):
    return (check_float(lr_name, lr, minimum=0.0, maximum=1e3),
            check_float("momentum", momentum, minimum=0.0, maximum=1.0),
            check_float("weight_decay", weight_decay, minimum=0.0, maximum=1e3))


def _sgd_step(params, grads, buffers, lr, momentum, weight_decay):
    """:func:`sgd_step` on checked arguments (the loop of :func:`train`)."""
    for key, g in grads.items():
        p = params[key]
        d = g + weight_decay * p if weight_decay else g
        if momentum:
            buf = buffers.get(key)
            if buf is None:
                buf = buffers[key] = np.array(d, dtype=p.dtype, copy=True)
            else:
                buf *= momentum
                buf += d
            d = buf
        p -= lr * d


def _check_grads(grads):
    if not isinstance(grads, dict):
        raise TypeError(f"grads must be a dict of arrays, got {type(grads).__name__}")
    for key, g in grads.items():
        check_array(f"grads[{key!r}]", g, dtype_kind="f")
        check_finite(f"grads[{key!r}]", g)
    return grads


def global_norm(grads):
    """Joint L2 norm of all gradients: ``sqrt(sum_k |g_k|^2)`` (a Python float).

    grads: {name: float array}, finite (the boundary refuses NaN/inf).
    """
    return _global_norm(_check_grads(grads))


def _global_norm(grads):
    """:func:`global_norm` without the checks (NaN in, NaN out: ``train`` stops on it)."""
    with np.errstate(over="ignore"):
        total = math.sqrt(sum(float(np.vdot(g, g)) for g in grads.values()))
    if math.isinf(total) and all(np.isfinite(g).all() for g in grads.values()):
        # the squares overflowed although every entry is finite: scale by the largest one
        peak = max(float(np.abs(g).max()) for g in grads.values() if g.size)
        with np.errstate(under="ignore"):  # tiny entries next to the peak count as 0
            total = peak * math.sqrt(sum(float(np.vdot(g / peak, g / peak)) for g in grads.values()))
    return total


def clip_grad_norm(grads, max_norm):
    """Scale all gradients in place so their joint L2 norm is at most ``max_norm``.

    torch's ``clip_grad_norm_`` (coefficient ``max_norm / (norm + 1e-6)``, applied
    only when it is below 1). Returns the norm before clipping. grads: {name:
    float array}, finite; max_norm: float >= 0.
    """
    max_norm = check_float("max_norm", max_norm, minimum=0.0)
    return _clip_grad_norm(_check_grads(grads), max_norm)


def _clip_grad_norm(grads, max_norm):
    """:func:`clip_grad_norm` without the checks."""
    total = _global_norm(grads)
    coef = max_norm / (total + 1e-6)
    if coef < 1.0:
        with np.errstate(under="ignore"):  # a tiny entry scaled down becomes 0, as it should
            for g in grads.values():
                g *= coef
    return total


def _boxes(name, boxes):
    """(G, 4) real finite boxes (an array or a list), as an array."""
    boxes = check_array(name, np.asarray(boxes), shape=("G", 4))
    if boxes.size and boxes.dtype.kind not in "iuf":
        raise TypeError(f"{name} must hold real numbers, got dtype {boxes.dtype}")
    return check_coordinates(name, boxes, np.float64)


def hflip(image, target):
    """Mirror an image and its target left-right (torchvision reference ``RandomHorizontalFlip``, when it flips).

    image: (3, H, W). target: dict with "boxes" (G, 4) xyxy and optional
    "masks" (G, H, W); other keys are passed through.
    Returns (image', target'), new arrays: ``image[:, :, ::-1]``, boxes
    ``x1' = W - x2, x2' = W - x1`` (y unchanged; a box stays a box of the
    flipped mask: columns c0..c1 become W-1-c1..W-1-c0), masks ``[:, :, ::-1]``.
    image, boxes and float masks must be finite.
    """
    check_array("image", image, ndim=3, dtype_kind="biuf")
    if image.dtype.kind == "f":
        check_finite("image", image)
    w = image.shape[-1]
    if not isinstance(target, dict):
        raise TypeError(f"target must be a dict, got {type(target).__name__}")
    if "boxes" not in target:
        raise ValueError(f"target must have a 'boxes' entry (G, 4), got keys {list(target)}")
    boxes = _boxes("target['boxes']", target["boxes"])
    if "masks" in target:
        check_array("target['masks']", np.asarray(target["masks"]), shape=(len(boxes), None, w),
                    dtype_kind="biuf")
        if np.asarray(target["masks"]).dtype.kind == "f":
            check_finite("target['masks']", np.asarray(target["masks"]))
    out = dict(target)
    flipped = boxes.copy()
    flipped[:, 0] = w - boxes[:, 2]
    flipped[:, 2] = w - boxes[:, 0]
    out["boxes"] = flipped
    if "masks" in target:
        out["masks"] = np.ascontiguousarray(np.asarray(target["masks"])[:, :, ::-1])
    return np.ascontiguousarray(image[:, :, ::-1]), out


def training_target(item, *, dtype=np.float32):
    """One dataset item as the model's transform expects it: (image (3, H, W), target).

    item: dict with "image" (H, W, 3) in [0, 1], "boxes" (G, 4) xyxy, "labels"
    (G,), "masks" (G, H, W) bool, optionally "iscrowd" (G,) bool.
    As torchvision's reference (``ConvertCocoPolysToMask``): crowd objects are
    left out, boxes are clipped to the image and boxes left without width or
    height are dropped (with their labels and masks). G may be 0 (an image
    with no object: every anchor and RoI is background).
    Returns (image (3, H, W) in dtype, {"boxes" (G', 4) dtype, "labels" (G',), "masks" (G', H, W)}).
    Every entry is checked (ValueError / TypeError naming ``item[key]``): the
    image and boxes finite reals, labels ints, masks bools or 0/1 ints,
    iscrowd bools or 0/1 numbers.
    """
    if not isinstance(item, dict):
        raise TypeError(f"item must be a dict, got {type(item).__name__}")
    for key in ("image", "boxes", "labels", "masks"):
        if key not in item:
            raise ValueError(f"a dataset item must have 'image', 'boxes', 'labels' and 'masks', "
                             f"this one has {sorted(map(str, item))}")
    dtype = check_float_dtype(dtype)
    raw = check_array("item['image']", np.asarray(item["image"]), shape=("H", "W", 3), dtype_kind="biuf")
    if raw.dtype.kind == "f":
        check_finite("item['image']", raw)
    image = np.ascontiguousarray(raw.transpose(2, 0, 1), dtype=dtype)
    h, w = image.shape[1:]
    boxes = _boxes("item['boxes']", item["boxes"]).astype(dtype)
    labels = check_array("item['labels']", np.asarray(item["labels"]), shape=(len(boxes),))
    if labels.size and labels.dtype.kind not in "iu":
        raise TypeError(f"item['labels'] must be ints, got dtype {labels.dtype}")
    masks = check_array("item['masks']", np.asarray(item["masks"]), shape=(len(boxes), h, w), dtype_kind="biu")
    crowd = item.get("iscrowd")
    if crowd is not None:
        crowd = check_array("item['iscrowd']", np.asarray(crowd), shape=(len(boxes),), dtype_kind="biuf")
        if crowd.size and not ((crowd == 0) | (crowd == 1)).all():
            raise ValueError("item['iscrowd'] must hold bools or 0/1 numbers")
    keep = ~np.asarray(np.zeros(len(boxes), bool) if crowd is None else crowd, dtype=bool)
    np.clip(boxes[:, 0::2], 0, w, out=boxes[:, 0::2])
    np.clip(boxes[:, 1::2], 0, h, out=boxes[:, 1::2])
    keep &= (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    if not keep.all():
        boxes, labels, masks = boxes[keep], labels[keep], masks[keep]
    return image, {"boxes": boxes, "labels": labels, "masks": masks}


def dataset_batch(dataset, indices, *, dtype=np.float32, rng=None, hflip_prob=0.0):
    """Images and targets of some dataset items, as the model's transform expects them.

    dataset: indexable, items as :func:`training_target` reads them
    (``data.shapes.ShapesDataset``, ``data.coco.CocoData``, a list of dicts);
    images may differ in size. indices: ints.
    hflip_prob: each image is mirrored (:func:`hflip`) when ``rng.random() <
        hflip_prob``, one draw per image in order; 0 draws nothing (rng may be None).
    Returns (images [(3, H_i, W_i)], targets [{"boxes", "labels", "masks"}]).
    """
    _check_dataset(dataset)
    indices = check_indices(indices, len(dataset))
    dtype = check_float_dtype(dtype)
    hflip_prob = check_float("hflip_prob", hflip_prob, minimum=0.0, maximum=1.0)
    return _items(dataset, indices, dtype, _draw_flips(rng, len(indices), hflip_prob))


def _draw_flips(rng, n, hflip_prob):
    """Which of n images to mirror: ``rng.random() < hflip_prob``, one draw per image in
    order; hflip_prob 0 draws nothing and returns None (rng may then be None)."""
    if hflip_prob == 0:
        return None
    rng = check_rng(rng)
    return [bool(rng.random() < hflip_prob) for _ in range(n)]


def _items(dataset, indices, dtype, flips):
    """(images, targets) of checked ``indices``; image k mirrored when ``flips[k]`` (flips may be None)."""
    images, targets = [], []
    for k, i in enumerate(indices):
        image, target = training_target(dataset[int(i)], dtype=dtype)
        if flips is not None and flips[k]:
            image, target = hflip(image, target)
        images.append(image)
        targets.append(target)
    return images, targets


def load_batch(dataset, indices, config, *, dtype=np.float32, flips=None):
    """The model's input for some dataset items: what one training step feeds ``loss_and_grads``.

    dataset, indices: as :func:`dataset_batch`. config: ``MaskRCNNConfig`` (its
    transform numbers: min_size, max_size, image_mean, image_std, size_divisible).
    flips: None, or one bool per index: mirror that image (:func:`hflip`).
    Returns (batch (N, 3, H, W) in dtype, image_sizes [(h, w)], targets in the batch's
    frame): :func:`dataset_batch` then ``transform.transform_forward``. ``train``'s
    workers each call it on their own shard of a step's indices.
    """
    _check_dataset(dataset)
    indices = check_indices(indices, len(dataset))
    check_instance("config", config, MaskRCNNConfig)
    dtype = check_float_dtype(dtype)
    if flips is not None:
        flips = check_flags("flips", flips, len(indices))
    images, targets = _items(dataset, indices, dtype, flips)
    return transform_forward(images, targets, min_size=config.min_size, max_size=config.max_size,
                             mean=config.image_mean, std=config.image_std, size_divisible=config.size_divisible)


def _check_dataset(dataset):
    if isinstance(dataset, (str, bytes, dict)) or not hasattr(dataset, "__len__") or not hasattr(
            dataset, "__getitem__"):
        raise TypeError(f"dataset must be indexable with a length (ShapesDataset, CocoData, a list of dicts), "
                        f"got {type(dataset).__name__}")
    return dataset


def shapes_batch(dataset, indices, *, dtype=np.float32):
    """:func:`dataset_batch` without flips (kept for the shapes chapters and tests).

    dataset: ``data.shapes.ShapesDataset`` (items: image (H, W, 3) in [0, 1],
    boxes (G, 4), labels (G,), masks (G, H, W) bool). indices: ints.
    Returns (images [(3, H, W)], targets [{"boxes", "labels", "masks"}]).
    """
    return dataset_batch(dataset, indices, dtype=dtype)


def _data_parallel(params, config, workers, dataset):
    """The step's engine: None (a null context) for one process, else a ``DataParallel`` pool
    whose workers load their own shards of each batch when ``dataset`` can be pickled to
    them (each worker then holds a copy of it; else the main process loads every batch)."""
    if workers == 1:
        return contextlib.nullcontext()
    try:
        pickle.dumps(dataset, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception:  # (a lambda inside, an open file ...): the batches go through the pipes
        dataset = None
    return DataParallel(params, config, workers, dataset=dataset)


def train(params, config, dataset, *, steps, rng, batch_size=4, base_lr=0.02, momentum=0.9,
          weight_decay=1e-4, warmup_iters=1000, warmup_factor=1e-3, milestones=(), gamma=0.1,
          max_grad_norm=None, progress=True, callback=None, hflip_prob=0.0, state=None, workers=1,
          loss_weights=None):
    """Train ``params`` in place on ``dataset`` for ``steps`` SGD steps.

    params: {name: array} from ``model.init_params`` (updated in place).
    config: ``config.MaskRCNNConfig``. dataset: indexable with a length, items
    with "image" (H, W, 3), "boxes", "labels", "masks" (and optionally
    "iscrowd"; see :func:`training_target`), images of any size: the
    transform resizes them per the config. Each step draws ``batch_size``
    images without replacement from a fresh permutation per epoch (from
    ``rng``), flips each with probability ``hflip_prob`` (:func:`dataset_batch`;
    the default 0 draws nothing from ``rng``, so runs without it are unchanged),
    runs the transform, ``model.loss_and_grads``, optional gradient clipping,
    and :func:`sgd_step` with :func:`learning_rate`.
    workers: 1 (default) computes each step in this process; W >= 2 splits
        every batch over W worker processes (``parallel.DataParallel``: the
        loss and gradient of the whole batch, each shard sampling anchors and
        RoIs from a random stream of its own drawn from ``rng``, so a run is
        reproducible for a given seed and W). Two workers on a 2-core machine
        make a step about 1.4x faster (``mrcnn_np.parallel`` says why not 2x).
        When ``dataset`` pickles, each worker gets a copy of it and loads its
        own shard of every batch (``DataParallel.loss_and_grads_of``); else the
        batches are loaded here and sent to the workers. Both give the same bits
        for images of one size (each shard is padded on its own).
        From a script, call it under ``if __name__ == "__main__":``: the workers
        are spawned processes, and each imports the main script again.
    loss_weights: None (every loss weighs 1, as torchvision's reference sums
        them) or {loss name: weight} for some of ``model.LOSS_NAMES``: the
        step descends ``sum_k weight_k * loss_k``; "loss" in the history is
        that weighted sum, the five losses are recorded as they are.
    callback: optional ``callback(step, record, params)`` after every step
        (``state``, if given, is already updated then).
    state: None, or a dict to resume from and keep up to date, in place:
        "step" (steps done; the loop runs from it to ``steps``, and the
        learning rate follows the step), "buffers" ({name: momentum buffer}),
        "order" (the epoch's permutation, int64 (len(dataset),)) and "pos"
        (images of it used). An empty dict starts a fresh run. With the
        parameters, this state and ``rng``'s state saved after step k, a
        resumed run repeats the uninterrupted one bit for bit.
    Returns the history: one dict per step run with the five losses, "loss"
    (their sum, weighted by ``loss_weights``), "lr" and "grad_norm".
    """
    dtype = check_param_dict(params)  # the boundary: float arrays of one dtype, finite
    check_instance("config", config, MaskRCNNConfig)
    _check_dataset(dataset)
    steps = check_positive_int("steps", steps)
    batch_size = check_positive_int("batch_size", batch_size)
    rng = check_rng(rng)
    if len(dataset) < batch_size:
        raise ValueError(f"dataset has {len(dataset)} images, fewer than batch_size={batch_size}")
    if max_grad_norm is not None:
        max_grad_norm = check_float("max_grad_norm", max_grad_norm, minimum=0.0)
    hflip_prob = check_float("hflip_prob", hflip_prob, minimum=0.0, maximum=1.0)
    # the schedule and the SGD numbers are checked now, not at the end of the first step
    learning_rate(0, base_lr=base_lr, warmup_iters=warmup_iters, warmup_factor=warmup_factor,
                  milestones=milestones, gamma=gamma)
    _, momentum, weight_decay = _check_sgd_args(base_lr, momentum, weight_decay, "base_lr")
    progress = check_bool("progress", progress)
    if callback is not None:
        check_callable("callback", callback)
    state = _check_state(state, len(dataset), steps)
    workers = check_positive_int("workers", workers)
    loss_weights = model_lib._check_loss_weights(loss_weights)  # {name: weight}, all five
    # W > 1: the steps' losses and gradients come from W worker processes (closed on the way out)
    with _data_parallel(params, config, workers, dataset) as pool:
        history = []
        buffers = state.setdefault("buffers", {})
        if state.get("order") is None:
            state["order"], state["pos"] = rng.permutation(len(dataset)), 0
        order, pos = state["order"], state["pos"]
        start = state.setdefault("step", 0)
        bar = tqdm(range(start, steps), desc="train", unit="step", disable=not progress, initial=start, total=steps)
        for step in bar:
            if pos + batch_size > len(order):
                order, pos = rng.permutation(len(dataset)), 0
            indices = order[pos:pos + batch_size].tolist()
            pos += batch_size
            flips = _draw_flips(rng, batch_size, hflip_prob)
            if pool is not None and pool.loads_items:  # each worker loads its own shard
                losses, grads = pool.loss_and_grads_of(params, indices, rng=rng, flips=flips,
                                                       loss_weights=loss_weights)
            else:
                batch, image_sizes, targets = load_batch(dataset, indices, config, dtype=dtype, flips=flips)
                loss_and_grads = model_lib.loss_and_grads if pool is None else pool.loss_and_grads
                losses, grads = loss_and_grads(params, batch, targets, config, rng=rng, image_sizes=image_sizes,
                                               loss_weights=loss_weights)
            record = {k: float(v) for k, v in losses.items()}
            record["loss"] = sum(loss_weights[k] * v for k, v in record.items())
            grad_norm = _global_norm(grads) if max_grad_norm is None else _clip_grad_norm(grads, max_grad_norm)
            if not (math.isfinite(record["loss"]) and math.isfinite(grad_norm)):
                # stop before the update: the parameters stay those of the last good step
                raise FloatingPointError(f"step {step}: loss {record['loss']}, gradient norm {grad_norm}: {record}")
            lr = learning_rate(step, base_lr=base_lr, warmup_iters=warmup_iters,
                               warmup_factor=warmup_factor, milestones=milestones, gamma=gamma)
            _sgd_step(params, grads, buffers, lr, momentum, weight_decay)
            record.update(lr=lr, grad_norm=grad_norm)
            history.append(record)
            state.update(step=step + 1, order=order, pos=pos)
            bar.set_postfix(loss=f"{record['loss']:.3f}", lr=f"{lr:.4f}")
            if callback is not None:
                callback(step, record, params)
    return history


def _check_state(state, n, steps):
    """The ``state`` argument of :func:`train`: a dict (a new one for None), checked."""
    if state is None:
        return {}
    if not isinstance(state, dict):
        raise TypeError(f"state must be a dict or None, got {type(state).__name__}")
    unknown = set(state) - {"step", "buffers", "order", "pos"}
    if unknown:
        raise ValueError(f"state has unknown keys {sorted(unknown)}; expected step, buffers, order, pos")
    step = check_positive_int("state['step']", state.get("step", 0), minimum=0)
    if step >= steps:
        raise ValueError(f"state['step'] is {step}: the run already has its {steps} steps")
    if not isinstance(state.get("buffers", {}), dict):
        raise TypeError(f"state['buffers'] must be a dict of arrays, got {type(state['buffers']).__name__}")
    if state.get("order") is not None:
        order = np.asarray(state["order"])
        if order.shape != (n,) or order.dtype.kind not in "iu" or not np.array_equal(np.sort(order), np.arange(n)):
            raise ValueError(f"state['order'] must be a permutation of the dataset's {n} indices")
        pos = check_positive_int("state['pos']", state.get("pos", 0), minimum=0)
        if pos > n:
            raise ValueError(f"state['pos'] must be in [0, {n}], got {pos}")
        state["order"] = order.astype(np.int64)
    return state
