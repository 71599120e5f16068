"""Losses against their direct formulas, gradients, stability, reductions, edge cases."""
import warnings

import numpy as np
import pytest

from mrcnn_np.gradcheck import numeric_gradient, relative_error
from mrcnn_np.ops.losses import bce_with_logits, smooth_l1, softmax_cross_entropy


def no_warnings(fn, *args, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return fn(*args, **kw)


# ---------------------------------------------------------------- cross-entropy
def test_ce_golden_uniform():
    # equal logits over K = 4 classes: loss = log 4 for every row, gradient 1/4 - onehot
    loss, d = softmax_cross_entropy(np.zeros((2, 4)), np.array([0, 3]), reduction="sum")
    assert loss == pytest.approx(2 * np.log(4), rel=1e-15)
    np.testing.assert_allclose(d, [[-0.75, 0.25, 0.25, 0.25], [0.25, 0.25, 0.25, -0.75]])


def test_ce_matches_direct_formula_and_reductions():
    rng = np.random.default_rng(0)
    z = rng.standard_normal((6, 5)) * 2
    y = rng.integers(0, 5, 6)
    p = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    direct = -np.log(p[np.arange(6), y])
    none, d_none = softmax_cross_entropy(z, y, reduction="none")
    np.testing.assert_allclose(none, direct, rtol=1e-13)
    s, d_sum = softmax_cross_entropy(z, y, reduction="sum")
    m, d_mean = softmax_cross_entropy(z, y)
    assert s == pytest.approx(direct.sum(), rel=1e-13)
    assert m == pytest.approx(direct.mean(), rel=1e-13)
    np.testing.assert_allclose(d_mean, d_sum / 6, rtol=1e-15)
    np.testing.assert_array_equal(d_none, d_sum)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_ce_gradient(reduction):
    rng = np.random.default_rng(1)
    z = rng.standard_normal((5, 4)) * 2
    y = rng.integers(0, 4, 5)
    _, d = softmax_cross_entropy(z, y, reduction=reduction)
    num = numeric_gradient(lambda: softmax_cross_entropy(z, y, reduction=reduction)[0], z)
    assert relative_error(d, num) < 1e-6


def test_ce_large_logits():
    z = np.array([[1e4, 0.0, -1e4], [1e4, 1e4, 0.0]])
    loss, d = no_warnings(softmax_cross_entropy, z, np.array([1, 0]), reduction="none")
    # row 0: logsumexp = 1e4 (other terms vanish) -> loss 1e4 - 0; row 1: 1e4 + log 2 - 1e4 = log 2
    np.testing.assert_allclose(loss, [1e4, np.log(2)], rtol=1e-15)
    np.testing.assert_allclose(d, [[1, -1, 0], [-0.5, 0.5, 0]], atol=1e-15)
    l32, _ = no_warnings(softmax_cross_entropy, z.astype(np.float32), np.array([1, 0]), reduction="sum")
    assert l32.dtype == np.float32 and np.isfinite(l32)


def test_ce_empty():
    loss, d = softmax_cross_entropy(np.zeros((0, 3)), np.zeros(0, np.int64), reduction="sum")
    assert loss == 0.0 and d.shape == (0, 3)
    with pytest.raises(ValueError, match="mean"):
        softmax_cross_entropy(np.zeros((0, 3)), np.zeros(0, np.int64))


def test_ce_bad_inputs():
    z = np.zeros((2, 3))
    with pytest.raises(ValueError, match=r"labels must be in \[0, 3\)"):
        softmax_cross_entropy(z, np.array([0, 3]))
    with pytest.raises(ValueError, match=r"labels must be in \[0, 3\)"):
        softmax_cross_entropy(z, np.array([-1, 0]))
    with pytest.raises(TypeError, match="labels must have a signed integer"):
        softmax_cross_entropy(z, np.array([0.0, 1.0]))
    with pytest.raises(ValueError, match=r"labels must have shape \(2,\)"):
        softmax_cross_entropy(z, np.array([0, 1, 2]))
    with pytest.raises(ValueError, match="logits must have shape"):
        softmax_cross_entropy(np.zeros(3), np.array([0]))
    with pytest.raises(ValueError, match="reduction"):
        softmax_cross_entropy(z, np.array([0, 1]), reduction="avg")


# ---------------------------------------------------------------- BCE with logits
def test_bce_matches_direct_formula():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((3, 4, 5)) * 3
    t = rng.uniform(0, 1, x.shape)  # soft targets
    s = 1 / (1 + np.exp(-x))
    direct = -(t * np.log(s) + (1 - t) * np.log(1 - s))
    none, d = bce_with_logits(x, t, reduction="none")
    np.testing.assert_allclose(none, direct, rtol=1e-12)
    np.testing.assert_allclose(d, s - t, rtol=1e-12)
    assert bce_with_logits(x, t)[0] == pytest.approx(direct.mean(), rel=1e-12)
    assert bce_with_logits(x, t, reduction="sum")[0] == pytest.approx(direct.sum(), rel=1e-12)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_bce_gradient(reduction):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((4, 6)) * 2
    t = (rng.uniform(size=x.shape) > 0.5).astype(np.float64)
    _, d = bce_with_logits(x, t, reduction=reduction)
    num = numeric_gradient(lambda: bce_with_logits(x, t, reduction=reduction)[0], x)
    assert relative_error(d, num) < 1e-6


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_bce_large_logits(dtype):
    x = np.array([1e4, -1e4, 1e4, -1e4], dtype=dtype)
    t = np.array([0.0, 1.0, 1.0, 0.0], dtype=dtype)
    loss, d = no_warnings(bce_with_logits, x, t, reduction="none")
    # wrong side: loss = |x| = 1e4; right side: log(1 + e^-1e4) = 0
    np.testing.assert_allclose(loss, [1e4, 1e4, 0, 0], rtol=1e-6)
    np.testing.assert_array_equal(d, [1, -1, 0, 0])
    assert loss.dtype == dtype and d.dtype == dtype


def test_bce_bool_targets_and_empty():
    x = np.array([0.0, 0.0])
    loss, _ = bce_with_logits(x, np.array([True, False]), reduction="sum")
    assert loss == pytest.approx(2 * np.log(2), rel=1e-15)  # -log(0.5) twice
    loss, d = bce_with_logits(np.zeros((0, 28, 28)), np.zeros((0, 28, 28)), reduction="sum")
    assert loss == 0.0 and d.shape == (0, 28, 28)
    with pytest.raises(ValueError, match="mean"):
        bce_with_logits(np.zeros((0, 28, 28)), np.zeros((0, 28, 28)))


def test_bce_bad_inputs():
    with pytest.raises(ValueError, match=r"targets must have shape \(2, 3\), got \(3, 2\)"):
        bce_with_logits(np.zeros((2, 3)), np.zeros((3, 2)))
    with pytest.raises(TypeError, match="targets"):
        bce_with_logits(np.zeros(2), np.zeros(2, np.int64))
    with pytest.raises(TypeError, match="logits"):
        bce_with_logits(np.zeros(2, np.int64), np.zeros(2))
    with pytest.raises(ValueError, match=r"targets must be probabilities in \[0, 1\], got a value 1.5"):
        bce_with_logits(np.zeros(2), np.array([0.5, 1.5]))
    with pytest.raises(ValueError, match="targets must be probabilities"):
        bce_with_logits(np.zeros(2), np.array([0.5, np.nan]))


# ---------------------------------------------------------------- smooth L1
def test_smooth_l1_golden():
    pred = np.array([0.5, -0.25, 3.0, -2.0])
    loss, d = smooth_l1(pred, np.zeros(4), beta=1.0, reduction="none")
    # |d| < 1: 0.5 d^2 -> 0.125, 0.03125; else |d| - 0.5 -> 2.5, 1.5
    np.testing.assert_allclose(loss, [0.125, 0.03125, 2.5, 1.5], rtol=1e-15)
    np.testing.assert_allclose(d, [0.5, -0.25, 1.0, -1.0], rtol=1e-15)


def test_smooth_l1_beta_one_ninth_matches_formula():
    rng = np.random.default_rng(4)
    pred, target = rng.standard_normal((7, 4)) * 0.3, rng.standard_normal((7, 4)) * 0.3
    b = 1 / 9
    dd = pred - target
    direct = np.where(np.abs(dd) < b, 0.5 * dd ** 2 / b, np.abs(dd) - 0.5 * b)
    loss, _ = smooth_l1(pred, target, beta=b)
    assert loss == pytest.approx(direct.sum(), rel=1e-13)
    assert smooth_l1(pred, target, beta=b, reduction="mean")[0] == pytest.approx(direct.mean(), rel=1e-13)


def test_smooth_l1_beta0_is_l1():
    pred = np.array([1.5, -2.0, 0.0, 0.25])
    loss, d = smooth_l1(pred, np.zeros(4), beta=0.0, reduction="none")
    np.testing.assert_array_equal(loss, np.abs(pred))
    np.testing.assert_array_equal(d, [1, -1, 0, 1])


@pytest.mark.parametrize("beta", [1.0, 1 / 9, 0.0])
def test_smooth_l1_gradient(beta):
    rng = np.random.default_rng(5)
    pred = rng.standard_normal((5, 4))
    target = rng.standard_normal((5, 4))
    diff = np.abs(pred - target)
    pred[np.abs(diff - beta) < 1e-3] += 0.01  # off the kink at |d| = beta
    _, d = smooth_l1(pred, target, beta=beta)
    num = numeric_gradient(lambda: smooth_l1(pred, target, beta=beta)[0], pred)
    assert relative_error(d, num) < 1e-6


def test_smooth_l1_continuous_at_beta():
    b = 0.25
    below = smooth_l1(np.array([b - 1e-9]), np.zeros(1), beta=b)[0]
    above = smooth_l1(np.array([b + 1e-9]), np.zeros(1), beta=b)[0]
    assert abs(above - below) < 1e-8  # both ~ 0.5 * beta = 0.125
    assert below == pytest.approx(0.125, abs=1e-8)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_smooth_l1_extreme_beta_does_not_overflow(dtype):
    big = np.finfo(dtype).max
    d = np.array([1e20, -3.0, 0.0], dtype=dtype)
    # beta 1e300: everything is in the quadratic zone; loss 0.5 d^2 / beta = 0.5 * 1e40 / 1e300,
    # 0 in float32 (beta itself is inf there) and 5e-261 in float64; gradient d / beta likewise tiny
    loss, g = no_warnings(smooth_l1, d, np.zeros(3, dtype), beta=1e300, reduction="none")
    want = 0.5 * np.float64(d) ** 2 / 1e300
    np.testing.assert_allclose(loss, want.astype(dtype), rtol=1e-6, atol=0)
    assert np.all(np.abs(g) <= 1e-279) and loss.dtype == dtype
    # beta at the top of the range: d = 1e20 is quadratic, 0.5 * 1e40 / max
    loss, _ = no_warnings(smooth_l1, d[:1], np.zeros(1, dtype), beta=float(big), reduction="sum")
    assert loss == pytest.approx(0.5 * 1e40 / float(big), rel=1e-5)
    # subnormal beta: every |d| > 0 is linear, |d| - beta / 2 = |d|; d = 0 is quadratic -> 0
    loss, g = no_warnings(smooth_l1, d, np.zeros(3, dtype), beta=5e-324, reduction="none")
    np.testing.assert_array_equal(loss, np.abs(d))
    np.testing.assert_array_equal(g, [1, -1, 0])


def test_smooth_l1_empty_and_bad_inputs():
    loss, d = smooth_l1(np.zeros((0, 4)), np.zeros((0, 4)))
    assert loss == 0.0 and d.shape == (0, 4)
    with pytest.raises(ValueError, match="mean"):
        smooth_l1(np.zeros((0, 4)), np.zeros((0, 4)), reduction="mean")
    with pytest.raises(ValueError, match="beta"):
        smooth_l1(np.zeros(2), np.zeros(2), beta=-1.0)
    with pytest.raises(ValueError, match="target must have shape"):
        smooth_l1(np.zeros(2), np.zeros(3))
    with pytest.raises(TypeError, match="target must have the dtype of pred"):
        smooth_l1(np.zeros(2), np.zeros(2, np.float32))
    with pytest.raises(ValueError, match="reduction"):
        smooth_l1(np.zeros(2), np.zeros(2), reduction=None)


# ---------------------------------------------------------------- properties
from hypothesis import given, settings, strategies as st  # noqa: E402


@settings(max_examples=30)
@given(n=st.integers(1, 6), k=st.integers(1, 6), seed=st.integers(0, 10_000),
       scale=st.sampled_from([0.1, 3.0, 300.0]), shift=st.floats(-1e3, 1e3))
def test_ce_properties(n, k, seed, scale, shift):
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((n, k)) * scale
    y = rng.integers(0, k, n)
    loss, d = softmax_cross_entropy(z, y, reduction="none")
    assert np.all(loss >= -1e-12)
    np.testing.assert_allclose(d.sum(axis=1), 0.0, atol=1e-12)  # softmax sums to 1
    loss2, d2 = softmax_cross_entropy(z + shift, y, reduction="none")  # shift invariance
    np.testing.assert_allclose(loss2, loss, rtol=1e-9, atol=1e-9 * (1 + abs(shift)))
    np.testing.assert_allclose(d2, d, atol=1e-9)


@settings(max_examples=30)
@given(seed=st.integers(0, 10_000), scale=st.sampled_from([0.5, 5.0, 50.0]))
def test_bce_equals_two_class_cross_entropy(seed, scale):
    """BCE(x, t) for t in {0, 1} is the cross-entropy of softmax over logits (0, x)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(7) * scale
    t = rng.integers(0, 2, 7)
    loss, d = bce_with_logits(x, t.astype(np.float64), reduction="none")
    z = np.stack([np.zeros_like(x), x], axis=1)
    ce, dz = softmax_cross_entropy(z, t, reduction="none")
    np.testing.assert_allclose(loss, ce, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(d, dz[:, 1], rtol=1e-12, atol=1e-14)


@settings(max_examples=30)
@given(seed=st.integers(0, 10_000), beta=st.floats(0.0, 2.0))
def test_smooth_l1_between_l1_minus_half_beta_and_l1(seed, beta):
    rng = np.random.default_rng(seed)
    p, q = rng.standard_normal(9), rng.standard_normal(9)
    loss, d = smooth_l1(p, q, beta=beta, reduction="none")
    l1 = np.abs(p - q)
    assert np.all(loss <= l1 + 1e-12) and np.all(loss >= l1 - beta / 2 - 1e-12)
    assert np.all(np.abs(d) <= 1 + 1e-12)
