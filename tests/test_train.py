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
from mrcnn_np.train import shapes_batch, train  # noqa: E402


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
