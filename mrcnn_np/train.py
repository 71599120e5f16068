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
from ._checks import check_float, check_positive_int, check_rng
from .transform import transform_forward

__all__ = ["learning_rate", "sgd_step", "global_norm", "clip_grad_norm", "shapes_batch", "train"]


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


def shapes_batch(dataset, indices, *, dtype=np.float32):
    """Images and targets of a shapes dataset as the model's transform expects them.

    dataset: ``data.shapes.ShapesDataset`` (items: image (H, W, 3) in [0, 1],
    boxes (G, 4), labels (G,), masks (G, H, W) bool). indices: ints.
    Returns (images [(3, H, W)], targets [{"boxes", "labels", "masks"}]).
    """
    images, targets = [], []
    for i in indices:
        item = dataset[int(i)]
        images.append(np.ascontiguousarray(item["image"].transpose(2, 0, 1), dtype=dtype))
        targets.append({"boxes": item["boxes"].astype(dtype), "labels": item["labels"],
                        "masks": item["masks"]})
    return images, targets


def train(params, config, dataset, *, steps, rng, batch_size=4, base_lr=0.02, momentum=0.9,
          weight_decay=1e-4, warmup_iters=1000, warmup_factor=1e-3, milestones=(), gamma=0.1,
          max_grad_norm=None, progress=True, callback=None):
    """Train ``params`` in place on ``dataset`` for ``steps`` SGD steps.

    params: {name: array} from ``model.init_params`` (updated in place).
    config: ``config.MaskRCNNConfig``. dataset: indexable shapes dataset
    (see :func:`shapes_batch`). Each step draws ``batch_size`` images without
    replacement from a fresh permutation per epoch (from ``rng``), runs the
    transform, ``model.loss_and_grads``, optional gradient clipping, and
    :func:`sgd_step` with :func:`learning_rate`.
    callback: optional ``callback(step, record, params)`` after every step.
    Returns the history: one dict per step with the five losses, "loss"
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
    dtype = next(iter(params.values())).dtype
    buffers, history = {}, []
    order, pos = rng.permutation(len(dataset)), 0
    bar = tqdm(range(steps), desc="train", unit="step", disable=not progress)
    for step in bar:
        if pos + batch_size > len(order):
            order, pos = rng.permutation(len(dataset)), 0
        images, targets = shapes_batch(dataset, order[pos:pos + batch_size], dtype=dtype)
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
        bar.set_postfix(loss=f"{record['loss']:.3f}", lr=f"{lr:.4f}")
        if callback is not None:
            callback(step, record, params)
    return history
