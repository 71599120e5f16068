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
