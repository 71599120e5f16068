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

import math

import numpy as np
from tqdm.auto import tqdm

from . import model as model_lib
from ._checks import check_array, check_float, check_positive_int, check_rng
from .transform import transform_forward

__all__ = ["learning_rate", "sgd_step", "global_norm", "clip_grad_norm", "hflip", "training_target", "dataset_batch",
           "shapes_batch", "train"]


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
    """
    lr = check_float("lr", lr, minimum=0.0)
    momentum = check_float("momentum", momentum, minimum=0.0)
    weight_decay = check_float("weight_decay", weight_decay, minimum=0.0)
    for key, g in grads.items():  # every check before the first update
        if key not in params:
            raise ValueError(f"grads has key {key!r} that is not in params")
        if not isinstance(g, np.ndarray):
            raise TypeError(f"grads[{key!r}] must be a numpy.ndarray, got {type(g).__name__}")
        p = params[key]
        if g.shape != p.shape or g.dtype != p.dtype:
            raise ValueError(f"grads[{key!r}] must have shape {p.shape} and dtype {p.dtype}, "
                             f"got {g.shape} {g.dtype}")
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


def global_norm(grads):
    """Joint L2 norm of all gradients: ``sqrt(sum_k |g_k|^2)`` (a Python float)."""
    return math.sqrt(sum(float(np.vdot(g, g)) for g in grads.values()))


def clip_grad_norm(grads, max_norm):
    """Scale all gradients in place so their joint L2 norm is at most ``max_norm``.

    torch's ``clip_grad_norm_`` (coefficient ``max_norm / (norm + 1e-6)``, applied
    only when it is below 1). Returns the norm before clipping.
    """
    max_norm = check_float("max_norm", max_norm, minimum=0.0)
    total = global_norm(grads)
    coef = max_norm / (total + 1e-6)
    if coef < 1.0:
        for g in grads.values():
            g *= coef
    return total


def hflip(image, target):
    """Mirror an image and its target left-right (torchvision reference ``RandomHorizontalFlip``, when it flips).

    image: (3, H, W). target: dict with "boxes" (G, 4) xyxy and optional
    "masks" (G, H, W); other keys are passed through.
    Returns (image', target'), new arrays: ``image[:, :, ::-1]``, boxes
    ``x1' = W - x2, x2' = W - x1`` (y unchanged; a box stays a box of the
    flipped mask: columns c0..c1 become W-1-c1..W-1-c0), masks ``[:, :, ::-1]``.
    """
    check_array("image", image, ndim=3)
    w = image.shape[-1]
    out = dict(target)
    boxes = np.asarray(target["boxes"])
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
    """
    for key in ("image", "boxes", "labels", "masks"):
        if key not in item:
            raise ValueError(f"a dataset item must have 'image', 'boxes', 'labels' and 'masks', "
                             f"this one has {sorted(item)}")
    image = np.ascontiguousarray(np.asarray(item["image"]).transpose(2, 0, 1), dtype=dtype)
    h, w = image.shape[1:]
    boxes = np.asarray(item["boxes"]).astype(dtype)
    labels, masks = np.asarray(item["labels"]), np.asarray(item["masks"])
    keep = ~np.asarray(item.get("iscrowd", np.zeros(len(boxes), bool)), dtype=bool)
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
    hflip_prob = check_float("hflip_prob", hflip_prob, minimum=0.0, maximum=1.0)
    if hflip_prob > 0:
        rng = check_rng(rng)
    images, targets = [], []
    for i in indices:
        image, target = training_target(dataset[int(i)], dtype=dtype)
        if hflip_prob > 0 and rng.random() < hflip_prob:
            image, target = hflip(image, target)
        images.append(image)
        targets.append(target)
    return images, targets


def shapes_batch(dataset, indices, *, dtype=np.float32):
    """:func:`dataset_batch` without flips (kept for the shapes chapters and tests).

    dataset: ``data.shapes.ShapesDataset`` (items: image (H, W, 3) in [0, 1],
    boxes (G, 4), labels (G,), masks (G, H, W) bool). indices: ints.
    Returns (images [(3, H, W)], targets [{"boxes", "labels", "masks"}]).
    """
    return dataset_batch(dataset, indices, dtype=dtype)


def train(params, config, dataset, *, steps, rng, batch_size=4, base_lr=0.02, momentum=0.9,
          weight_decay=1e-4, warmup_iters=1000, warmup_factor=1e-3, milestones=(), gamma=0.1,
          max_grad_norm=None, progress=True, callback=None, hflip_prob=0.0, state=None):
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
    (their sum), "lr" and "grad_norm".
    """
    if not isinstance(params, dict) or not params:
        raise TypeError(f"params must be a non-empty dict of arrays (model.init_params), got {params!r:.60}")
    steps = check_positive_int("steps", steps)
    batch_size = check_positive_int("batch_size", batch_size)
    rng = check_rng(rng)
    if len(dataset) < batch_size:
        raise ValueError(f"dataset has {len(dataset)} images, fewer than batch_size={batch_size}")
    if max_grad_norm is not None:
        max_grad_norm = check_float("max_grad_norm", max_grad_norm, minimum=0.0)
    hflip_prob = check_float("hflip_prob", hflip_prob, minimum=0.0, maximum=1.0)
    state = _check_state(state, len(dataset), steps)
    dtype = next(iter(params.values())).dtype
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
        images, targets = dataset_batch(dataset, order[pos:pos + batch_size], dtype=dtype, rng=rng,
                                        hflip_prob=hflip_prob)
        pos += batch_size
        batch, image_sizes, targets = transform_forward(
            images, targets, min_size=config.min_size, max_size=config.max_size,
            mean=config.image_mean, std=config.image_std, size_divisible=config.size_divisible)
        losses, grads = model_lib.loss_and_grads(params, batch, targets, config, rng=rng,
                                                 image_sizes=image_sizes)
        record = {k: float(v) for k, v in losses.items()}
        record["loss"] = sum(record.values())
        grad_norm = global_norm(grads) if max_grad_norm is None else clip_grad_norm(grads, max_grad_norm)
        if not (math.isfinite(record["loss"]) and math.isfinite(grad_norm)):
            # stop before the update: the parameters stay those of the last good step
            raise FloatingPointError(f"step {step}: loss {record['loss']}, gradient norm {grad_norm}: {record}")
        lr = learning_rate(step, base_lr=base_lr, warmup_iters=warmup_iters,
                           warmup_factor=warmup_factor, milestones=milestones, gamma=gamma)
        sgd_step(params, grads, buffers, lr=lr, momentum=momentum, weight_decay=weight_decay)
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
