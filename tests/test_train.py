"""SGD step, learning-rate schedule, gradient clipping and the training loop."""
import numpy as np
import pytest

from mrcnn_np.train import clip_grad_norm, learning_rate, sgd_step


def test_learning_rate_warmup_then_steps():
    kw = dict(base_lr=0.02, warmup_iters=10, warmup_factor=0.1, milestones=(20, 30), gamma=0.5)
    # warm-up: 0.02 * (0.1 + 0.9 * step / 10)
    assert learning_rate(0, **kw) == pytest.approx(0.002)
    assert learning_rate(5, **kw) == pytest.approx(0.02 * 0.55)
    assert learning_rate(9, **kw) == pytest.approx(0.02 * 0.91)
    assert learning_rate(10, **kw) == pytest.approx(0.02)
    assert learning_rate(19, **kw) == pytest.approx(0.02)
    assert learning_rate(20, **kw) == pytest.approx(0.01)   # first milestone
    assert learning_rate(30, **kw) == pytest.approx(0.005)  # second
    assert learning_rate(0, base_lr=0.1, warmup_iters=0) == pytest.approx(0.1)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(step=-1), "step"),
        (dict(step=1.5), "step"),
        (dict(step=0, base_lr=-1.0), "base_lr"),
        (dict(step=0, milestones=(5, 3)), "milestones"),
        (dict(step=0, warmup_factor=2.0), "warmup_factor"),
    ],
)
def test_learning_rate_bad_input(kwargs, match):
    kwargs.setdefault("base_lr", 0.1)
    step = kwargs.pop("step")
    with pytest.raises((TypeError, ValueError), match=match):
        learning_rate(step, **kwargs)


def test_sgd_step_matches_the_update_rule_by_hand():
    p = {"w": np.array([1.0, -2.0]), "frozen": np.array([3.0])}
    g1, g2 = np.array([0.5, 0.25]), np.array([-1.0, 2.0])
    buffers = {}
    sgd_step(p, {"w": g1}, buffers, lr=0.1, momentum=0.9, weight_decay=0.01)
    # d1 = g1 + 0.01 * p0 = [0.51, 0.23]; buf = d1; p1 = p0 - 0.1 * d1 = [0.949, -2.023]
    np.testing.assert_allclose(p["w"], [0.949, -2.023], rtol=1e-12)
    # d2 = g2 + 0.01 * p1 = [-0.99051, 1.97977]; buf = 0.9 * d1 + d2 = [-0.53151, 2.18677]
    sgd_step(p, {"w": g2}, buffers, lr=0.1, momentum=0.9, weight_decay=0.01)
    np.testing.assert_allclose(p["w"], [0.949 + 0.053151, -2.023 - 0.218677], rtol=1e-12)
    np.testing.assert_allclose(buffers["w"], [-0.53151, 2.18677], rtol=1e-12)
    assert p["frozen"][0] == 3.0  # no gradient, no update
    assert "frozen" not in buffers


def test_sgd_step_without_momentum_or_decay_is_plain_gradient_descent():
    p = {"w": np.array([1.0, 2.0], dtype=np.float32)}
    g = {"w": np.array([0.5, -0.5], dtype=np.float32)}
    sgd_step(p, g, {}, lr=0.2, momentum=0.0, weight_decay=0.0)
    np.testing.assert_allclose(p["w"], [0.9, 2.1], rtol=1e-6)
    assert p["w"].dtype == np.float32


def test_sgd_step_bad_input():
    p = {"w": np.ones(2)}
    with pytest.raises(ValueError, match="not in params"):
        sgd_step(p, {"v": np.ones(2)}, {}, lr=0.1)
    with pytest.raises(ValueError, match="shape"):
        sgd_step(p, {"w": np.ones(3)}, {}, lr=0.1)
    with pytest.raises(ValueError, match="lr"):
        sgd_step(p, {"w": np.ones(2)}, {}, lr=-0.1)


def test_clip_grad_norm_scales_to_max_norm():
    grads = {"a": np.array([3.0, 0.0]), "b": np.array([[4.0]])}  # joint norm 5
    norm = clip_grad_norm(grads, 1.0)
    assert norm == pytest.approx(5.0)
    total = np.sqrt(sum((g ** 2).sum() for g in grads.values()))
    assert total == pytest.approx(1.0, rel=1e-6)
    np.testing.assert_allclose(grads["a"], [0.6, 0.0], rtol=1e-6)
    unchanged = {"a": np.array([0.3, 0.4])}
    clip_grad_norm(unchanged, 1.0)
    np.testing.assert_array_equal(unchanged["a"], [0.3, 0.4])


def test_sgd_step_validates_every_gradient_before_it_updates():
    p = {"a": np.ones(2), "b": np.ones(2)}
    with pytest.raises(ValueError, match="grads\\['b'\\]"):
        sgd_step(p, {"a": np.ones(2), "b": np.ones(3)}, {}, lr=0.5)
    np.testing.assert_array_equal(p["a"], [1.0, 1.0])
    with pytest.raises(TypeError, match="grads\\['a'\\]"):
        sgd_step(p, {"a": [1.0, 2.0]}, {}, lr=0.5)


def test_learning_rate_type_errors():
    with pytest.raises(TypeError, match="milestones"):
        learning_rate(0, base_lr=0.1, milestones=5)
    with pytest.raises(TypeError, match="step"):
        learning_rate("3", base_lr=0.1)


# ------------------------------------------------------------------ the loop (shapes model)

from mrcnn_np import model as M  # noqa: E402
from mrcnn_np.config import shapes_config  # noqa: E402
from mrcnn_np.data.shapes import ShapesDataset  # noqa: E402
from mrcnn_np.train import dataset_batch, shapes_batch, train  # noqa: E402
from mrcnn_np.transform import transform_forward  # noqa: E402


def test_shapes_batch_is_channels_first_in_the_requested_dtype():
    ds = ShapesDataset(3, seed=4)
    images, targets = shapes_batch(ds, [2, 0], dtype=np.float64)
    item = ds[2]
    assert images[0].dtype == np.float64 and images[0].shape == (3, 128, 128)
    np.testing.assert_array_equal(images[0], item["image"].transpose(2, 0, 1))
    np.testing.assert_array_equal(targets[0]["boxes"], item["boxes"])
    np.testing.assert_array_equal(targets[0]["masks"], item["masks"])
    assert targets[1]["labels"].tolist() == ds[0]["labels"].tolist()


def test_train_updates_every_trainable_parameter_and_follows_the_schedule():
    cfg = shapes_config()
    params = M.init_params(cfg, rng=np.random.default_rng(0))
    before = {k: v.copy() for k, v in params.items()}
    hist = train(params, cfg, ShapesDataset(4, seed=0), steps=2, rng=np.random.default_rng(0), batch_size=2,
                 base_lr=0.01, warmup_iters=4, warmup_factor=0.5, progress=False)
    # lr = 0.01 * (0.5 + 0.5 * step / 4): 0.005, 0.00625
    assert [h["lr"] for h in hist] == pytest.approx([0.005, 0.00625])
    assert all(set(h) >= set(M.LOSS_NAMES) | {"loss", "lr", "grad_norm"} for h in hist)
    assert hist[0]["loss"] == pytest.approx(sum(hist[0][k] for k in M.LOSS_NAMES))
    trainable = set(M.trainable_keys(params, cfg))
    for k in params:
        changed = not np.array_equal(params[k], before[k])
        assert changed == (k in trainable), k  # frozen BN statistics never move



def test_train_with_loss_weights_steps_on_the_weighted_gradient():
    cfg = shapes_config()
    weights = {"loss_mask": 2.0, "loss_objectness": 0.5}
    start = M.init_params(cfg, rng=np.random.default_rng(0))
    params = {k: v.copy() for k, v in start.items()}
    hist = train(params, cfg, ShapesDataset(4, seed=0), steps=1, rng=np.random.default_rng(3), batch_size=2,
                 base_lr=0.01, warmup_iters=0, momentum=0.0, weight_decay=0.0, progress=False,
                 loss_weights=weights)
    # by hand: the same batch and draws (the rng: the permutation, then the step's samples)
    rng = np.random.default_rng(3)
    order = rng.permutation(4)
    images, targets = dataset_batch(ShapesDataset(4, seed=0), order[:2])
    batch, sizes, targets = transform_forward(images, targets, min_size=cfg.min_size, max_size=cfg.max_size,
                                              mean=cfg.image_mean, std=cfg.image_std,
                                              size_divisible=cfg.size_divisible)
    losses, grads = M.loss_and_grads(start, batch, targets, cfg, rng=rng, image_sizes=sizes, loss_weights=weights)
    assert hist[0]["loss"] == pytest.approx(sum(weights.get(k, 1.0) * v for k, v in losses.items()), rel=1e-12)
    assert hist[0]["loss_mask"] == pytest.approx(losses["loss_mask"], rel=1e-12)  # recorded unweighted
    for k, g in grads.items():
        np.testing.assert_allclose(params[k], start[k] - 0.01 * g, rtol=1e-6, atol=1e-9, err_msg=k)
    with pytest.raises(ValueError, match="loss_weights has unknown key 'loss_rpn'"):
        train(params, cfg, ShapesDataset(4, seed=0), steps=1, rng=np.random.default_rng(3), batch_size=2,
              progress=False, loss_weights={"loss_rpn": 1.0})

def test_train_stops_before_stepping_on_a_nonfinite_loss(monkeypatch):
    cfg = shapes_config()
    params = M.init_params(cfg, rng=np.random.default_rng(0))
    before = {k: v.copy() for k, v in params.items()}
    real = M.loss_and_grads

    def diverged(*args, **kwargs):
        losses, grads = real(*args, **kwargs)
        losses["loss_mask"] = float("nan")
        return losses, {key: np.full_like(g, np.nan) for key, g in grads.items()}

    monkeypatch.setattr(M, "loss_and_grads", diverged)
    with pytest.raises(FloatingPointError, match="step 0"):
        train(params, cfg, ShapesDataset(4, seed=0), steps=1, rng=np.random.default_rng(0), progress=False)
    for k in params:
        np.testing.assert_array_equal(params[k], before[k], err_msg=k)


def test_train_bad_input():
    cfg = shapes_config()
    with pytest.raises(TypeError, match="params"):
        train({}, cfg, ShapesDataset(4), steps=1, rng=np.random.default_rng(0))
    params = M.init_params(cfg, rng=np.random.default_rng(0))
    with pytest.raises(ValueError, match="batch_size"):
        train(params, cfg, ShapesDataset(2), steps=1, rng=np.random.default_rng(0), batch_size=4)
    with pytest.raises(TypeError, match="rng"):
        train(params, cfg, ShapesDataset(4), steps=1, rng=0)


# ------------------------------------------------ any dataset, flips, resuming


def test_hflip_by_hand():
    from mrcnn_np.train import hflip

    image = np.arange(2 * 3 * 5, dtype=np.float32).reshape(2, 3, 5)  # (C, H, W) with W = 5
    masks = np.zeros((1, 3, 5), bool)
    masks[0, 0:2, 1:3] = True  # columns 1..2 -> box x in [1, 3]
    target = {"boxes": np.array([[1.0, 0.0, 3.0, 2.0]]), "labels": np.array([2]), "masks": masks}
    img2, t2 = hflip(image, target)
    np.testing.assert_array_equal(img2[:, :, 0], image[:, :, 4])
    np.testing.assert_array_equal(t2["boxes"], [[2.0, 0.0, 4.0, 2.0]])  # x1' = 5 - 3, x2' = 5 - 1
    assert t2["masks"][0, 0:2, 2:4].all() and t2["masks"].sum() == 4  # columns 4 - 2 .. 4 - 1
    assert t2["labels"] is target["labels"]
    np.testing.assert_array_equal(target["boxes"], [[1.0, 0.0, 3.0, 2.0]])  # inputs untouched
    img3, t3 = hflip(img2, t2)  # twice = identity
    np.testing.assert_array_equal(img3, image)
    np.testing.assert_array_equal(t3["boxes"], target["boxes"])
    np.testing.assert_array_equal(t3["masks"], masks)


def test_hflip_keeps_every_box_the_tight_box_of_its_mask():
    from mrcnn_np.data.shapes import masks_to_boxes
    from mrcnn_np.train import hflip

    ds = ShapesDataset(6, seed=2, image_size=(96, 128))
    for item in ds:
        image, target = hflip(item["image"].transpose(2, 0, 1), item)
        np.testing.assert_array_equal(target["boxes"], masks_to_boxes(target["masks"]))
        np.testing.assert_array_equal(image.transpose(1, 2, 0), item["image"][:, ::-1])


def test_training_target_leaves_out_crowd_and_empty_boxes_and_clips():
    from mrcnn_np.train import training_target

    masks = np.zeros((4, 10, 20), bool)
    item = {"image": np.zeros((10, 20, 3), np.float32), "labels": np.array([1, 2, 3, 1]), "masks": masks,
            "boxes": np.array([[2, 2, 5, 5], [0, 0, 4, 4], [-3, 1, 25, 12], [7, 3, 7, 8]], np.float64),
            "iscrowd": np.array([False, True, False, False])}
    image, target = training_target(item, dtype=np.float32)
    assert image.shape == (3, 10, 20) and image.dtype == np.float32
    # crowd (1) out, zero-width box (3) out, box 2 clipped to the 20 x 10 image
    np.testing.assert_array_equal(target["boxes"], [[2, 2, 5, 5], [0, 1, 20, 10]])
    np.testing.assert_array_equal(target["labels"], [1, 3])
    assert target["masks"].shape == (2, 10, 20) and target["boxes"].dtype == np.float32


def test_dataset_batch_flips_from_the_rng_and_draws_nothing_without_flips():
    from mrcnn_np.train import dataset_batch

    ds = ShapesDataset(8, seed=1)
    rng = np.random.default_rng(3)
    before = rng.bit_generator.state
    plain, _ = dataset_batch(ds, range(8), rng=rng)
    assert rng.bit_generator.state == before  # hflip_prob 0 draws nothing
    a, ta = dataset_batch(ds, range(8), rng=np.random.default_rng(3), hflip_prob=0.5)
    b, tb = dataset_batch(ds, range(8), rng=np.random.default_rng(3), hflip_prob=0.5)
    flips = np.random.default_rng(3).random(8) < 0.5  # one draw per image, in order
    assert 0 < flips.sum() < 8
    for i in range(8):
        np.testing.assert_array_equal(a[i], b[i])
        np.testing.assert_array_equal(ta[i]["masks"], tb[i]["masks"])
        np.testing.assert_array_equal(a[i], plain[i][:, :, ::-1] if flips[i] else plain[i])
    with pytest.raises(ValueError, match="hflip_prob"):
        dataset_batch(ds, [0], rng=rng, hflip_prob=1.5)


def test_train_with_flips_same_seed_same_result():
    cfg = shapes_config()
    runs = []
    for prob in (0.5, 0.5, 0.0):
        params = M.init_params(cfg, rng=np.random.default_rng(0))
        hist = train(params, cfg, ShapesDataset(4, seed=0), steps=2, rng=np.random.default_rng(1), batch_size=2,
                     base_lr=0.01, warmup_iters=0, hflip_prob=prob, progress=False)
        runs.append((params, hist))
    (p1, h1), (p2, h2), (p0, h0) = runs
    assert h1 == h2 and all(np.array_equal(p1[k], p2[k]) for k in p1)
    assert h1 != h0  # the flips change what is seen


def test_train_on_coco_data_of_mixed_sizes_with_crowd_and_empty_images(tmp_path):
    import json

    import matplotlib.image as mpimg

    from mrcnn_np.config import own_data_config
    from mrcnn_np.data.coco import load_coco

    rng = np.random.default_rng(0)
    images, anns = [], []
    for i, (h, w) in enumerate([(60, 90), (80, 64), (50, 50)]):
        mpimg.imsave(tmp_path / f"{i}.png", rng.random((h, w, 3)))
        images.append({"id": 10 + i, "file_name": f"{i}.png", "height": h, "width": w})
    anns.append({"id": 1, "image_id": 10, "category_id": 5, "bbox": [10, 10, 30, 20], "iscrowd": 0,
                 "segmentation": [[10, 10, 40, 10, 40, 30, 10, 30]]})
    anns.append({"id": 2, "image_id": 11, "category_id": 8, "bbox": [5, 5, 20, 40], "iscrowd": 1,
                 "segmentation": [[5, 5, 25, 5, 25, 45, 5, 45]]})
    anns.append({"id": 3, "image_id": 11, "category_id": 5, "bbox": [30, 30, 20, 20], "iscrowd": 0,
                 "segmentation": [[30, 30, 50, 30, 50, 50, 30, 50]]})  # image 12: no annotation
    (tmp_path / "a.json").write_text(json.dumps({"images": images, "annotations": anns, "categories": [
        {"id": 5, "name": "five"}, {"id": 8, "name": "eight"}]}))
    data = load_coco(tmp_path / "a.json")
    cfg = own_data_config(data.num_classes, min_size=64, max_size=96)
    params = M.init_params(cfg, rng=np.random.default_rng(0))
    hist = train(params, cfg, data, steps=3, rng=np.random.default_rng(0), batch_size=3, base_lr=0.005,
                 warmup_iters=0, hflip_prob=0.5, progress=False)
    assert len(hist) == 3 and all(np.isfinite(h["loss"]) for h in hist)


def test_resuming_from_the_state_repeats_the_uninterrupted_run_bit_for_bit():
    cfg = shapes_config()
    kw = dict(steps=5, batch_size=2, base_lr=0.01, warmup_iters=2, milestones=(3,), hflip_prob=0.5, progress=False)
    ds = ShapesDataset(5, seed=0)  # 5 images, 2 a step: a new epoch starts inside the run
    straight = M.init_params(cfg, rng=np.random.default_rng(0))
    full = train(straight, cfg, ds, rng=np.random.default_rng(7), **kw)

    class Stop(Exception):
        pass

    def stop_after_two(step, record, params):
        if step == 1:
            raise Stop

    params, state, rng = M.init_params(cfg, rng=np.random.default_rng(0)), {}, np.random.default_rng(7)
    with pytest.raises(Stop):
        train(params, cfg, ds, rng=rng, state=state, callback=stop_after_two, **kw)
    assert state["step"] == 2 and state["pos"] == 4 and set(state["buffers"]) == set(M.trainable_keys(params, cfg))
    # what a checkpoint keeps: copies of the arrays and the generator's state
    params = {k: v.copy() for k, v in params.items()}
    saved = {"step": state["step"], "pos": state["pos"], "order": state["order"].copy(),
             "buffers": {k: v.copy() for k, v in state["buffers"].items()}}
    rng2 = np.random.default_rng()
    rng2.bit_generator.state = rng.bit_generator.state
    rest = train(params, cfg, ds, rng=rng2, state=saved, **kw)
    assert [h["loss"] for h in rest] == [h["loss"] for h in full[2:]]
    assert [h["lr"] for h in rest] == [h["lr"] for h in full[2:]]
    for k in params:
        np.testing.assert_array_equal(params[k], straight[k], err_msg=k)
    with pytest.raises(ValueError, match="already has its 5 steps"):
        train(params, cfg, ds, rng=rng2, state=saved, **kw)
    with pytest.raises(ValueError, match="permutation"):
        train(params, cfg, ds, rng=rng2, state={"order": np.zeros(5, np.int64)}, **kw)


def test_load_batch_is_dataset_batch_then_the_transform():
    from mrcnn_np.train import load_batch
    from mrcnn_np.transform import transform_forward

    cfg = shapes_config()
    ds = ShapesDataset(4, seed=2)
    flips = [True, False, False, True]
    batch, sizes, targets = load_batch(ds, [3, 0, 2, 1], cfg, flips=flips)
    images = [ds[i]["image"].transpose(2, 0, 1) for i in (3, 0, 2, 1)]
    images = [im[:, :, ::-1] if f else im for im, f in zip(images, flips)]
    expected, expected_sizes, _ = transform_forward(
        [np.ascontiguousarray(im) for im in images], None, min_size=cfg.min_size, max_size=cfg.max_size,
        mean=cfg.image_mean, std=cfg.image_std, size_divisible=cfg.size_divisible)
    np.testing.assert_array_equal(batch, expected)
    assert sizes == expected_sizes and batch.dtype == np.float32
    assert [len(t["boxes"]) for t in targets] == [len(ds[i]["boxes"]) for i in (3, 0, 2, 1)]
    w = batch.shape[-1]
    np.testing.assert_array_equal(targets[0]["boxes"][:, [2, 0]], w - ds[3]["boxes"][:, [0, 2]])  # mirrored
    np.testing.assert_array_equal(targets[1]["boxes"], ds[0]["boxes"])
    with pytest.raises(ValueError, match="flips"):
        load_batch(ds, [0, 1], cfg, flips=[True])
    with pytest.raises(TypeError, match="flips"):
        load_batch(ds, [0], cfg, flips=[1])
    with pytest.raises(ValueError, match="indices"):
        load_batch(ds, [4], cfg)
    with pytest.raises(TypeError, match="config"):
        load_batch(ds, [0], "shapes")
