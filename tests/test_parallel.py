"""Data-parallel training (``mrcnn_np.parallel``): the sharded loss and gradient are the batch's.

The equality test makes both samplers deterministic (sample sizes above the
candidate counts take every candidate), so one process and two workers see the
same samples, and compares in float64. Shards hold different numbers of objects,
so a plain average of the shards' losses (the wrong weighting) is far off: the
test shows that too, so it can fail.
"""
import dataclasses

import numpy as np
import pytest

from mrcnn_np import model as M
from mrcnn_np import train as T
from mrcnn_np.parallel import DataParallel, loss_counts, shard_weights
from test_model import make_batch, make_params, micro_config


def _exhaustive_config():
    return micro_config(rpn_batch_size_per_image=100_000, box_batch_size_per_image=100_000)


def test_two_workers_give_the_loss_and_gradient_of_the_whole_batch():
    config = _exhaustive_config()
    params = make_params(config)
    images, targets = make_batch(config, n=4, gt_counts=(1, 3, 3, 2))
    losses, grads = M.loss_and_grads(params, images, targets, config, rng=np.random.default_rng(5))
    weights = {"loss_mask": 2.5, "loss_box_reg": 0.5}  # a recipe's loss weights scale each loss's gradient
    _, weighted = M.loss_and_grads(params, images, targets, config, rng=np.random.default_rng(5), loss_weights=weights)
    with DataParallel(params, config, workers=2) as pool:
        dp_losses, dp_grads = pool.loss_and_grads(params, images, targets, config, rng=np.random.default_rng(5))
        _, dp_weighted = pool.loss_and_grads(params, images, targets, config, rng=np.random.default_rng(5),
                                             loss_weights=weights)
    assert list(dp_losses) == list(losses) and list(dp_grads) == list(grads)
    for k in losses:
        assert dp_losses[k] == pytest.approx(losses[k], rel=1e-12, abs=1e-15), k
    for ours, expected in ((dp_grads, grads), (dp_weighted, weighted)):
        for k in expected:
            scale = np.abs(expected[k]).max()
            assert np.abs(ours[k] - expected[k]).max() <= 1e-12 * scale + 1e-300, k
    mask_head = [k for k in grads if k.startswith("roi_heads.mask_head")]
    assert mask_head and not any(np.allclose(weighted[k], grads[k]) for k in mask_head)
    # the weighting matters: the plain mean of the two shards' losses is not the batch's
    halves = [M.loss_and_grads(params, images[s], [targets[i] for i in range(4)[s]], config,
                               rng=np.random.default_rng(0))[0] for s in (slice(0, 2), slice(2, 4))]
    plain = (halves[0]["loss_mask"] + halves[1]["loss_mask"]) / 2
    assert abs(plain - losses["loss_mask"]) > 1e-3 * losses["loss_mask"]


def test_loss_counts_are_the_loss_denominators():
    config = _exhaustive_config()
    params = make_params(config)
    images, targets = make_batch(config, n=2, gt_counts=(1, 3))
    _, cache = M.forward_train(params, images, targets, config, rng=np.random.default_rng(0))
    counts = loss_counts(cache)
    labels = cache.info["rpn_labels"]
    assert counts["loss_objectness"] == counts["loss_rpn_box_reg"] == int((labels >= 0).sum())  # every labelled anchor
    assert counts["loss_classifier"] == counts["loss_box_reg"] == cache.dclass_logits.shape[0]
    assert counts["loss_mask"] == cache.dmask_logits.shape[0]
    # the mask loss is a mean over P x M x M logits: its gradient sums to the mean's scale
    assert counts["loss_mask"] == sum(len(p) for p in cache.info["mask_proposals"])


def test_shard_weights():
    w = shard_weights([{k: c for k in M.LOSS_NAMES} for c in (1, 3)])
    assert [x["loss_mask"] for x in w] == [0.25, 0.75]
    zero = {k: 0 for k in M.LOSS_NAMES}
    assert shard_weights([zero, zero])[1]["loss_mask"] == 0.0
    with pytest.raises(ValueError, match=r"counts\[1\]"):
        shard_weights([zero, {"loss_mask": 1}])
    with pytest.raises(ValueError, match="int >= 0"):
        shard_weights([{**zero, "loss_mask": -1}])
    with pytest.raises(TypeError, match="counts"):
        shard_weights([])


def _dataset(config, n=8):
    images, targets = make_batch(config, n=n, gt_counts=(1, 2, 3), dtype=np.float32)
    return [{"image": (np.clip(im.transpose(1, 2, 0), -2, 2) * 50 + 120).astype(np.float32), **t}
            for im, t in zip(images, targets)]


def test_train_with_workers_is_reproducible_and_learns_the_same_way():
    config = micro_config()
    data = _dataset(config)
    runs = []
    for workers in (2, 2, 1):
        params = M.init_params(config, rng=np.random.default_rng(0))
        history = T.train(params, config, data, steps=3, rng=np.random.default_rng(1), batch_size=4,
                          warmup_iters=0, progress=False, workers=workers)
        runs.append((params, history))
    (p1, h1), (p2, h2), (p3, h3) = runs
    assert all(np.array_equal(p1[k], p2[k]) for k in p1)  # same seed, same W: bit for bit
    assert h1 == h2
    # the first step sees the same parameters and the same images: only the samples differ
    assert h1[0]["loss_objectness"] == pytest.approx(h3[0]["loss_objectness"], rel=0.05)
    assert any(not np.array_equal(p1[k], p3[k]) for k in p1)


def test_bad_arguments_and_worker_errors():
    config = micro_config()
    params = make_params(config, dtype=np.float32)
    with pytest.raises(ValueError, match="workers"):
        DataParallel(params, config, workers=1)
    with pytest.raises(TypeError, match="workers"):
        DataParallel(params, config, workers=2.0)
    with pytest.raises(TypeError, match="config"):
        DataParallel(params, "shapes", workers=2)
    with pytest.raises(TypeError, match="params"):
        DataParallel([], config, workers=2)
    with pytest.raises(ValueError, match="workers"):
        T.train(params, config, _dataset(config), steps=1, rng=np.random.default_rng(0), workers=0, progress=False)
    images, targets = make_batch(config, n=2, dtype=np.float32)
    with DataParallel(params, config, workers=2) as pool:
        with pytest.raises(ValueError, match="config"):
            pool.loss_and_grads(params, images, targets, dataclasses.replace(config, num_classes=4),
                                rng=np.random.default_rng(0))
        with pytest.raises(ValueError, match="params"):
            pool.loss_and_grads({k: v for k, v in list(params.items())[1:]}, images, targets, config,
                                rng=np.random.default_rng(0))
        bad = [dict(t) for t in targets]
        bad[0]["labels"] = bad[0]["labels"] + 10  # worker 0's own check names it; worker 1 succeeds
        with pytest.raises(ValueError, match="labels"):
            pool.loss_and_grads(params, images * 0.5, bad, config, rng=np.random.default_rng(0))
        # worker 1's reply to that call was read too: the next call gets its own answers
        losses, _ = pool.loss_and_grads(params, images, targets, config, rng=np.random.default_rng(0))
        again, _ = pool.loss_and_grads(params, images, targets, config, rng=np.random.default_rng(0))
        assert losses == again
    with pytest.raises(RuntimeError, match="closed"):
        pool.loss_and_grads(params, images, targets, config, rng=np.random.default_rng(0))


def test_a_dead_worker_is_reported_not_waited_for():
    config = micro_config()
    params = make_params(config, dtype=np.float32)
    images, targets = make_batch(config, n=2, dtype=np.float32)
    with DataParallel(params, config, workers=2) as pool:
        pool._procs[1].terminate()
        pool._procs[1].join()
        with pytest.raises(RuntimeError, match="worker 1 died"):
            pool.loss_and_grads(params, images, targets, config, rng=np.random.default_rng(0))


def test_bad_batches_are_refused_before_any_worker_sees_them():
    config = micro_config()
    params = make_params(config, dtype=np.float32)
    images, targets = make_batch(config, n=2, dtype=np.float32)
    with DataParallel(params, config, workers=2) as pool:
        with pytest.raises(ValueError, match="images"):
            pool.loss_and_grads(params, images[:0], [], config, rng=np.random.default_rng(0))
        with pytest.raises(ValueError, match="image_sizes"):
            pool.loss_and_grads(params, images, targets, config, rng=np.random.default_rng(0), image_sizes=[(64, 64)])
        with pytest.raises(ValueError, match="targets"):
            pool.loss_and_grads(params, images, targets[:1], config, rng=np.random.default_rng(0))
        losses, _ = pool.loss_and_grads(params, images, targets, config, rng=np.random.default_rng(0))
        assert set(losses) == set(M.LOSS_NAMES)


def test_workers_that_load_their_own_shards_give_the_same_bits():
    config = micro_config()
    data = _dataset(config)
    params = make_params(config, dtype=np.float32)
    flips = [False, True, True, False]
    batch, sizes, targets = T.load_batch(data, [5, 1, 2, 7], config, flips=flips)
    with DataParallel(params, config, workers=2, dataset=data) as pool:
        assert pool.loads_items
        losses, grads = pool.loss_and_grads_of(params, [5, 1, 2, 7], rng=np.random.default_rng(4), flips=flips)
        expected_losses, expected_grads = pool.loss_and_grads(params, batch, targets, config,
                                                              rng=np.random.default_rng(4), image_sizes=sizes)
        assert losses == expected_losses
        assert all(np.array_equal(grads[k], expected_grads[k]) for k in expected_grads)
        unflipped, _ = pool.loss_and_grads_of(params, [5, 1, 2, 7], rng=np.random.default_rng(4))
        assert unflipped != losses  # the flips reached the workers
        with pytest.raises(ValueError, match="indices"):
            pool.loss_and_grads_of(params, [0, 8], rng=np.random.default_rng(0))
        with pytest.raises(TypeError, match="indices"):
            pool.loss_and_grads_of(params, [0, 1.0], rng=np.random.default_rng(0))
        with pytest.raises(ValueError, match="flips"):
            pool.loss_and_grads_of(params, [0, 1], rng=np.random.default_rng(0), flips=[True])
        with pytest.raises(TypeError, match="flips"):
            pool.loss_and_grads_of(params, [0, 1], rng=np.random.default_rng(0), flips=[1, 0])
    bad = [dict(item) for item in data]
    bad[3]["labels"] = bad[3]["labels"].astype(np.float32)  # the worker that loads it names it
    with DataParallel(params, config, workers=2, dataset=bad) as pool:
        with pytest.raises(TypeError, match=r"item\['labels'\]"):
            pool.loss_and_grads_of(params, [0, 3], rng=np.random.default_rng(0))
        again, _ = pool.loss_and_grads_of(params, [0, 1], rng=np.random.default_rng(0))  # still in step
        assert set(again) == set(M.LOSS_NAMES)
    with DataParallel(params, config, workers=2) as pool:
        assert not pool.loads_items
        with pytest.raises(ValueError, match="dataset="):
            pool.loss_and_grads_of(params, [0, 1], rng=np.random.default_rng(0))
    with pytest.raises(TypeError, match="dataset"):
        DataParallel(params, config, workers=2, dataset={"image": 1})


class _UnpicklableData(list):
    """A dataset the workers cannot receive (pickling it fails): train loads its batches itself."""

    def __reduce__(self):
        raise TypeError("not picklable")


def test_train_falls_back_to_loading_in_the_main_process_for_a_dataset_that_does_not_pickle():
    config = micro_config()
    data = _dataset(config)
    runs = []
    for dataset in (data, _UnpicklableData(data)):
        params = M.init_params(config, rng=np.random.default_rng(0))
        history = T.train(params, config, dataset, steps=2, rng=np.random.default_rng(1), batch_size=4,
                          warmup_iters=0, progress=False, workers=2, hflip_prob=0.5)
        runs.append((params, history))
    (p1, h1), (p2, h2) = runs
    assert h1 == h2 and all(np.array_equal(p1[k], p2[k]) for k in p1)
