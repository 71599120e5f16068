"""Frozen batch norm: the formula, gradient w.r.t. x, dtype, bad inputs."""
import numpy as np
import pytest

from mrcnn_np.gradcheck import numeric_gradient, relative_error
from mrcnn_np.ops.norm import frozen_batch_norm_backward, frozen_batch_norm_forward


def params(rng, c, dtype=np.float64):
    return (rng.uniform(0.5, 2, c).astype(dtype), rng.standard_normal(c).astype(dtype),
            rng.standard_normal(c).astype(dtype), rng.uniform(0.1, 3, c).astype(dtype))


def test_golden_eps0():
    x = np.array([1.0, 5.0, 9.0]).reshape(1, 1, 1, 3)
    one = lambda v: np.array([v])  # noqa: E731
    out, _ = frozen_batch_norm_forward(x, one(2.0), one(1.0), one(3.0), one(4.0), eps=0.0)
    # (x - 3) / sqrt(4) * 2 + 1 = x - 2
    np.testing.assert_allclose(out.ravel(), [-1.0, 3.0, 7.0], rtol=1e-15)


def test_matches_textbook_formula_with_eps():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 4, 3, 5))
    w, b, m, v = params(rng, 4)
    out, _ = frozen_batch_norm_forward(x, w, b, m, v)
    r = lambda a: a[None, :, None, None]  # noqa: E731
    np.testing.assert_allclose(out, (x - r(m)) / np.sqrt(r(v) + 1e-5) * r(w) + r(b), rtol=1e-12)


def test_gradient_wrt_x():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 3, 4, 3))
    w, b, m, v = params(rng, 3)
    out, cache = frozen_batch_norm_forward(x, w, b, m, v, eps=1e-3)
    dout = rng.standard_normal(out.shape)
    num = numeric_gradient(lambda: frozen_batch_norm_forward(x, w, b, m, v, eps=1e-3)[0], x, dout)
    assert relative_error(frozen_batch_norm_backward(dout, cache), num) < 1e-6


def test_float32_stays_float32():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((1, 3, 2, 2)).astype(np.float32)
    out, cache = frozen_batch_norm_forward(x, *params(rng, 3, np.float32))
    assert out.dtype == np.float32
    assert frozen_batch_norm_backward(np.ones_like(out), cache).dtype == np.float32


def test_bad_inputs():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((1, 3, 2, 2))
    w, b, m, v = params(rng, 3)
    with pytest.raises(ValueError, match=r"running_var must have shape \(3,\), got \(4,\)"):
        frozen_batch_norm_forward(x, w, b, m, np.ones(4))
    with pytest.raises(ValueError, match="x must have shape"):
        frozen_batch_norm_forward(x[0], w, b, m, v)
    with pytest.raises(TypeError, match="weight must have the dtype of x"):
        frozen_batch_norm_forward(x, w.astype(np.float32), b, m, v)
    with pytest.raises(ValueError, match="running_var \\+ eps must be > 0"):
        frozen_batch_norm_forward(x, w, b, m, -np.ones(3))
    with pytest.raises(ValueError, match="eps"):
        frozen_batch_norm_forward(x, w, b, m, v, eps=-1.0)
    _, cache = frozen_batch_norm_forward(x, w, b, m, v)
    with pytest.raises(TypeError, match=r"dout must have the dtype of x \(float64\), got float32"):
        frozen_batch_norm_backward(x.astype(np.float32), cache)
