"""Data-parallel training: one batch split over worker processes (``train.train(..., workers=W)``).

This is a speed engine, not part of the model's math: it computes what
``model.loss_and_grads`` computes for a batch, on W processes at once, so that
a machine with W cores trains more images per second (NumPy's small GEMMs use
one core well and two cores badly). On the 2-core build machine two workers
make a shapes training step about 1.4x faster than one process, not 2x (42-46 ms
against 60-66 ms, median over steps 50-400 of two runs each): the two processes
share the caches, and the main process's share (data, SGD; 5.3 ms of CPU a
step) is serial.

One training step with W workers (N images, shard w holds N_w of them)::

    main:      batch  ->  W shards of about N / W images
    worker w:  losses_w, cache_w = forward_train(params, shard_w)         (in parallel)
    main:      a_kw = c_kw / sum_v c_kv     for each loss k
               loss_k = sum_w a_kw * loss_kw
    worker w:  grads_w = backward(cache_w, loss_weights=a_.w)            (in parallel)
    main:      grads = sum_w grads_w

Every loss of Mask R-CNN is a sum over samples divided by a count over the
whole batch (c_kw is shard w's part of it):

    loss_objectness, loss_rpn_box_reg   / anchors sampled in the batch
    loss_classifier, loss_box_reg       / RoIs sampled in the batch
    loss_mask                           / positive RoIs in the batch (x M^2)

so ``loss_k`` and ``grads`` are exactly the loss and the gradient of the whole
batch, up to the order of float additions, *for the same samples*. The samples
themselves differ from a one-process run: each shard draws its anchors and
RoIs from a random stream of its own (seeded from the training ``rng`` once per
step), so a run with W workers is reproducible for a given seed and W, and is
a different (equally valid) draw from one with another W.

Mechanics: the workers are started with the ``spawn`` method and one BLAS
thread each (two BLAS thread pools spinning on the same cores slow every GEMM
down many times). The parameters live in one shared-memory block that the main
process refreshes before every step; each worker writes its gradients to a
shared block of its own. The batch reaches the workers one of two ways:

- ``loss_and_grads(params, images, targets, ...)``: the main process has
  loaded the batch; its images go to another shared block, and the targets
  (boxes, labels, masks) through the pipes;
- ``loss_and_grads_of(params, indices, ...)`` on a pool made with
  ``dataset=`` (what ``train.train`` uses when the dataset pickles): each
  worker holds a copy of the dataset and loads its own shard
  (``train.load_batch``), so only indices and flips go through the pipes and
  the shards load at once. For the shapes demo this takes rendering 4 images
  (2 ms), writing their masks to the pipes (1.4 ms) and the transform off the
  main process, and adds about 1 ms to each worker: the same bits, and a step
  about 2 % faster (two runs of 300 steps, old and new code alternating,
  shipped weights: median 49.6 -> 48.6 and 50.2 -> 49.5 ms). The workers'
  forward and backward (about 18 ms each for two images) are now about 90 %
  of the step. A dataset read from disk (``data.coco.CocoData``) is also
  decoded on all the workers at once.
"""
from __future__ import annotations

import multiprocessing
import os
import traceback
import weakref
from multiprocessing import shared_memory

import numpy as np

from . import model as model_lib
from ._checks import (check_array, check_flags, check_indices, check_instance, check_param_dict, check_rng,
                      check_sequence)
from .config import MaskRCNNConfig

__all__ = ["DataParallel", "loss_counts", "shard_weights"]

# one BLAS / OpenMP thread in every worker (set before the worker imports NumPy)
_ONE_THREAD = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


def loss_counts(cache):
    """The count each loss of ``forward_train`` is divided by, read from its cache.

    cache: the ModelCache of ``model.forward_train``.
    Returns {loss name: int}: anchors sampled (both RPN losses), RoIs sampled
    (both box-head losses), positive RoIs (the mask loss; the M x M pixels of
    each are the same factor in every shard, so they cancel in the weights).
    """
    if not isinstance(cache, model_lib.ModelCache):
        raise TypeError(f"cache must be the ModelCache of model.forward_train, got {type(cache).__name__}")
    info = cache.info
    anchors = int(info["rpn_sampled_positive"].sum() + info["rpn_sampled_negative"].sum())
    rois = int(sum(len(p) for p in info["sampled_proposals"]))
    positives = int(sum(len(p) for p in info["mask_proposals"]))
    return {"loss_objectness": anchors, "loss_rpn_box_reg": anchors, "loss_classifier": rois,
            "loss_box_reg": rois, "loss_mask": positives}


def shard_weights(counts):
    """The weight of each shard's loss in the batch's loss: ``a_kw = c_kw / sum_v c_kv``.

    counts: list over shards of {loss name: count} (:func:`loss_counts`).
    Returns a list over shards of {loss name: float}. A loss whose count is 0
    in every shard (no positive RoI in the whole batch) is 0 and has zero
    gradient in every shard, so its weights are 0.
    """
    if not isinstance(counts, (list, tuple)) or not counts:
        raise TypeError(f"counts must be a non-empty list of dicts (loss_counts), got {counts!r:.60}")
    weights = [{} for _ in counts]
    for k in model_lib.LOSS_NAMES:
        values = []
        for w, c in enumerate(counts):
            if not isinstance(c, dict) or k not in c:
                raise ValueError(f"counts[{w}] must be a dict with the key {k!r}, got {c!r:.80}")
            v = c[k]
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
                raise ValueError(f"counts[{w}][{k!r}] must be an int >= 0, got {v!r}")
            values.append(int(v))
        total = sum(values)
        for w, v in enumerate(values):
            weights[w][k] = v / total if total else 0.0
    return weights


def _layout(arrays):
    """Offsets of ``arrays`` packed one after the other: ({name: (offset, shape)}, total size)."""
    layout, offset = {}, 0
    for name, a in arrays.items():
        layout[name] = (offset, a.shape)
        offset += a.size
    return layout, offset


def _views(buffer, layout, dtype):
    """{name: array view into ``buffer``} for a ``_layout``."""
    flat = np.ndarray((sum(int(np.prod(s)) for _, s in layout.values()),), dtype=dtype, buffer=buffer)
    return {name: flat[off:off + int(np.prod(shape))].reshape(shape) for name, (off, shape) in layout.items()}


def _check_layout(params, shared):
    if not isinstance(params, dict) or list(params) != list(shared):
        raise ValueError("params must have the keys this DataParallel was made with, in the same order")
    for name, p in params.items():
        if type(p) is np.ndarray and p.shape == shared[name].shape and p.dtype == shared[name].dtype:
            continue  # the usual case, checked in a tenth of check_array's time (it runs every step)
        check_array(f"params[{name!r}]", p, shape=shared[name].shape)
        if p.dtype != shared[name].dtype:
            raise TypeError(f"params[{name!r}] must be {shared[name].dtype}, got {p.dtype}")


def _worker(conn, param_block, grad_block, param_layout, grad_layout, dtype, config, dataset):
    """A worker's loop: attach to the shared blocks, then forward / backward on request.

    A forward's batch is either a shard of the shared batch block ("forward") or dataset
    items that the worker loads itself ("forward_items": indices and flips)."""
    blocks = [shared_memory.SharedMemory(name=param_block), shared_memory.SharedMemory(name=grad_block)]
    params = _views(blocks[0].buf, param_layout, dtype)
    grads_out = _views(blocks[1].buf, grad_layout, dtype)
    cache = batch_block = images = None
    conn.send(("ok",))  # started: the main process waits for this
    try:
        while True:
            message = conn.recv()
            if message is None:
                return
            try:
                if message[0] == "forward":
                    _, (block_name, shape, dtype_name, start, stop), targets, image_sizes, seed = message
                    if batch_block is None or batch_block.name != block_name:  # the main process grew it
                        if batch_block is not None:
                            batch_block.close()
                        batch_block = shared_memory.SharedMemory(name=block_name)
                    images = np.ndarray(shape, dtype=dtype_name, buffer=batch_block.buf)[start:stop]
                elif message[0] == "forward_items":
                    from .train import load_batch  # (train imports this module)
                    _, indices, flips, seed = message
                    images, image_sizes, targets = load_batch(dataset, indices, config, dtype=dtype, flips=flips)
                if message[0] != "backward":
                    losses, cache = model_lib.forward_train(
                        params, images, targets, config, rng=np.random.default_rng(seed), image_sizes=image_sizes)
                    conn.send(("ok", losses, loss_counts(cache)))
                else:  # ("backward", loss_weights)
                    grads = model_lib.backward(cache, loss_weights=message[1])
                    cache = images = None
                    for name, g in grads.items():
                        grads_out[name][...] = g
                    conn.send(("ok",))
            except Exception as exc:  # sent to the main process, which raises it again
                cache = images = None
                try:
                    conn.send(("error", exc, traceback.format_exc()))
                except Exception:  # an exception that does not pickle
                    conn.send(("error", RuntimeError(f"{type(exc).__name__}: {exc}"), traceback.format_exc()))
    finally:
        del params, grads_out, cache, images  # the views into the blocks (a cache holds some too)
        for b in blocks + ([batch_block] if batch_block is not None else []):
            try:
                b.close()
            except BufferError:  # a view still alive somewhere: the process ends anyway
                pass


def _shutdown(conns, procs, blocks):
    """Stop the workers, close the pipes, free the shared blocks (the pool's finalizer)."""
    for conn in conns:
        try:
            conn.send(None)
        except (OSError, ValueError):
            pass
    for proc in procs:
        proc.join(timeout=5)
        if proc.is_alive():
            proc.terminate()
    for conn in conns:
        conn.close()
    for block in blocks:
        block.close()
        block.unlink()
    conns.clear(), procs.clear(), blocks.clear()


class DataParallel:
    """W worker processes that compute ``loss_and_grads`` of a batch together (a context manager).

    params: the parameter dict (its names, shapes and dtype fix the shared
        layout; values are copied in at every step, so the caller keeps
        updating its own dict). config: MaskRCNNConfig. workers: W >= 2.
    Use::

        with DataParallel(params, config, workers=2) as dp:
            losses, grads = dp.loss_and_grads(params, images, targets, config, rng=rng, image_sizes=sizes)

    ``loss_and_grads`` returns what ``model.loss_and_grads`` returns for the
    whole batch (see the module docstring for what differs: the random draws).
    """

    def __init__(self, params, config, workers, *, dataset=None):
        if isinstance(workers, bool) or not isinstance(workers, (int, np.integer)):
            raise TypeError(f"workers must be an int, got {type(workers).__name__}")
        if workers < 2:
            raise ValueError(f"workers must be >= 2 (1 is model.loss_and_grads itself), got {workers}")
        self.dtype = check_param_dict(params, finite=False)  # values are copied in at every step
        self.config = check_instance("config", config, MaskRCNNConfig)
        self.workers = int(workers)
        self.keys = tuple(model_lib.trainable_keys(params, config))
        if dataset is not None and (isinstance(dataset, (str, bytes, dict)) or not hasattr(dataset, "__len__")
                                    or not hasattr(dataset, "__getitem__")):
            raise TypeError(f"dataset must be None or indexable with a length, got {type(dataset).__name__}")
        self.dataset_size = None if dataset is None else len(dataset)
        self._param_layout, n_params = _layout(params)
        self._grad_layout, n_grads = _layout({k: params[k] for k in self.keys})
        itemsize = self.dtype.itemsize
        self._blocks, self._procs, self._conns = [], [], []
        self._batch = None  # the shared block of the batch's images (made at the first step)
        self._finalizer = weakref.finalize(self, _shutdown, self._conns, self._procs, self._blocks)
        try:
            self._blocks.append(shared_memory.SharedMemory(create=True, size=max(1, n_params * itemsize)))
            self._params = _views(self._blocks[0].buf, self._param_layout, self.dtype)
            self._grads = []
            for _ in range(self.workers):
                block = shared_memory.SharedMemory(create=True, size=max(1, n_grads * itemsize))
                self._blocks.append(block)
                self._grads.append(_views(block.buf, self._grad_layout, self.dtype))
            self._start(dataset)
            self._gather(self.workers)  # every worker is up
        except BaseException:
            self.close()
            raise

    def _start(self, dataset):
        context = multiprocessing.get_context("spawn")
        saved = {k: os.environ.get(k) for k in _ONE_THREAD}
        os.environ.update({k: "1" for k in _ONE_THREAD})
        try:
            for w in range(self.workers):
                parent, child = context.Pipe()
                proc = context.Process(
                    target=_worker, daemon=True, name=f"mrcnn_np-worker-{w}",
                    args=(child, self._blocks[0].name, self._blocks[1 + w].name, self._param_layout,
                          self._grad_layout, self.dtype, self.config, dataset))
                proc.start()
                child.close()
                self._procs.append(proc)
                self._conns.append(parent)
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        """Stop the workers and free the shared memory (safe to call twice; also runs when
        the pool is garbage-collected or the interpreter exits)."""
        self._params = self._grads = None
        self._finalizer()

    def _send(self, w, message):
        try:
            self._conns[w].send(message)
        except OSError:  # reported by _gather, which reads every worker's reply (or death)
            pass

    def _gather(self, n):
        """The replies of workers 0..n-1, all read before any error is raised (none is left in a pipe)."""
        replies = []
        for w in range(n):
            try:
                replies.append(self._conns[w].recv())
            except (EOFError, OSError):
                self._procs[w].join(timeout=5)
                replies.append(("error", RuntimeError(
                    f"data-parallel worker {w} died (exit code {self._procs[w].exitcode}); from a script, "
                    "train under `if __name__ == \"__main__\":` (the workers are spawned processes, and "
                    "each one imports the main script again)"), ""))
        for w, reply in enumerate(replies):
            if reply[0] == "error":  # the worker's exception (a ValueError for a bad target, ...)
                raise reply[1] from RuntimeError(f"in data-parallel worker {w}:\n{reply[2]}")
        return [reply[1:] for reply in replies]

    def _batch_block(self, images):
        """Copy the batch into the shared batch block (grown when too small); returns what a
        worker needs to find it: (block name, shape, dtype name)."""
        if self._batch is None or self._batch.size < images.nbytes:
            if self._batch is not None:  # the workers still map the old one until they see the new name
                self._blocks.remove(self._batch)
                self._batch.close()
                self._batch.unlink()
            self._batch = shared_memory.SharedMemory(create=True, size=max(1, images.nbytes))
            self._blocks.append(self._batch)
        np.ndarray(images.shape, images.dtype, buffer=self._batch.buf)[...] = images
        return self._batch.name, images.shape, images.dtype.name

    def loss_and_grads(self, params, images, targets, config, *, rng, image_sizes=None, loss_weights=None):
        """(losses, grads) of the whole batch, computed by the workers on its shards.

        Arguments as ``model.loss_and_grads`` (each worker checks its shard;
        ``loss_weights`` scale each loss's gradient, not the losses returned);
        ``params`` must have the names, shapes and dtype, and ``config`` must be
        the config, that the pool was made with. One int is drawn from ``rng``
        per shard for that shard's random stream.
        """
        if not self._blocks:
            raise RuntimeError("this DataParallel is closed")
        if config != self.config:
            raise ValueError("config must be the config this DataParallel was made with")
        _check_layout(params, self._params)
        rng = check_rng(rng)
        loss_weights = model_lib._check_loss_weights(loss_weights)
        images = model_lib._check_images(images)  # the batch-level checks; each worker checks its shard's targets
        sizes = model_lib._check_image_sizes(image_sizes, images)
        check_sequence("targets", targets, length=len(images))
        n = len(images)
        batch = self._batch_block(images)
        return self._step(params, [("forward", (*batch, int(idx[0]), int(idx[-1]) + 1), [targets[i] for i in idx],
                                     [sizes[i] for i in idx]) for idx in _shards(n, self.workers)], rng, loss_weights)

    @property
    def loads_items(self):
        """Whether the workers hold the dataset (``DataParallel(..., dataset=)``) and load their
        shards themselves (:meth:`loss_and_grads_of`)."""
        return self.dataset_size is not None

    def loss_and_grads_of(self, params, indices, *, rng, flips=None, loss_weights=None):
        """(losses, grads) of the batch made of dataset items ``indices``, each worker loading
        its own shard (``train.load_batch``: the item, its flip, the config's transform).

        The pool must have been made with ``dataset=``. Only the indices and flips go to
        the workers (no images or masks through pipes or shared memory), and the shards
        are loaded at once. Each shard is padded on its own (``size_divisible``), as on
        the GPUs of torchvision's distributed training: for images of one size, as the
        shapes data, the result is :meth:`loss_and_grads` of the whole batch loaded here,
        bit for bit. indices: ints in [0, len(dataset)); flips: None or one bool per index;
        rng, loss_weights: as :meth:`loss_and_grads`.
        """
        if not self._blocks:
            raise RuntimeError("this DataParallel is closed")
        if not self.loads_items:
            raise ValueError("loss_and_grads_of needs a pool made with DataParallel(..., dataset=...)")
        _check_layout(params, self._params)
        rng = check_rng(rng)
        loss_weights = model_lib._check_loss_weights(loss_weights)
        indices = check_indices(indices, self.dataset_size)
        if not indices:
            raise ValueError("indices must name at least one item, got none")
        if flips is not None:
            flips = check_flags("flips", flips, len(indices))
        return self._step(params, [("forward_items", [indices[i] for i in idx],
                                    None if flips is None else [flips[i] for i in idx])
                                   for idx in _shards(len(indices), self.workers)], rng, loss_weights)

    def _step(self, params, forwards, rng, loss_weights):
        """One step: refresh the shared parameters, send each shard its forward message (with
        its seed, one int drawn from ``rng`` per shard), weigh the losses, run the backwards,
        sum the gradients."""
        for name, p in params.items():
            self._params[name][...] = p
        seeds = rng.integers(0, 2 ** 63, size=len(forwards))
        for w, (message, seed) in enumerate(zip(forwards, seeds)):
            self._send(w, (*message, int(seed)))
        replies = self._gather(len(forwards))
        weights = shard_weights([counts for _, counts in replies])
        losses = {k: float(sum(wt[k] * r[0][k] for wt, r in zip(weights, replies))) for k in model_lib.LOSS_NAMES}
        for w, wt in enumerate(weights):
            self._send(w, ("backward", {k: wt[k] * loss_weights[k] for k in wt}))
        self._gather(len(forwards))
        grads = {k: self._grads[0][k].copy() for k in self.keys}
        for w in range(1, len(forwards)):
            for k in self.keys:
                grads[k] += self._grads[w][k]
        return losses, grads


def _shards(n, workers):
    """The batch positions of each worker's shard: about n / workers each, in order, none empty."""
    return [s for s in np.array_split(np.arange(n), min(workers, n)) if s.size]
