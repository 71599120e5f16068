"""The gradient-checking tools themselves: they must find real errors."""
import numpy as np
import pytest

from mrcnn_np.gradcheck import adjoint_error, numeric_gradient, relative_error


def test_numeric_gradient_of_cubic():
    x = np.array([[0.3, -1.2], [2.0, 0.7]])
    g = numeric_gradient(lambda: np.sum(x ** 3), x)
    np.testing.assert_allclose(g, 3 * x ** 2, rtol=1e-8)
    np.testing.assert_array_equal(x, [[0.3, -1.2], [2.0, 0.7]])  # restored


def test_numeric_gradient_with_dout_and_indices():
    x = np.array([0.5, -1.5, 2.5])
    dout = np.array([2.0, -1.0, 0.5])
    g = numeric_gradient(lambda: np.sin(x), x, dout)
    np.testing.assert_allclose(g, np.cos(x) * dout, rtol=1e-8)
    g = numeric_gradient(lambda: np.sin(x), x, dout, indices=[(1,)])
    assert g[0] == 0 and g[2] == 0
    assert g[1] == pytest.approx(np.cos(-1.5) * -1.0, rel=1e-8)


def test_numeric_gradient_rejects_float32_and_bad_dout():
    with pytest.raises(TypeError, match="float64"):
        numeric_gradient(lambda: 0.0, np.zeros(2, np.float32))
    x = np.zeros(3)
    with pytest.raises(ValueError, match="dout"):
        numeric_gradient(lambda: x * 2, x)
    with pytest.raises(ValueError, match="dout"):
        numeric_gradient(lambda: x * 2, x, np.ones(4))


def test_relative_error():
    assert relative_error(np.array([1.0, 2.0]), np.array([1.0, 2.0])) == 0.0
    # max |a - b| = 0.5, scale = max(4, 4.5) -> 0.5 / 4.5
    assert relative_error(np.array([4.0, 1.0]), np.array([4.5, 1.0])) == pytest.approx(0.5 / 4.5)
    # tiny arrays fall back to the floor instead of dividing by ~0
    assert relative_error(np.array([1e-12]), np.array([0.0])) == pytest.approx(1e-4)
    assert relative_error(np.zeros(0), np.zeros(0)) == 0.0
    with pytest.raises(ValueError, match="same shape"):
        relative_error(np.zeros(2), np.zeros(3))


def test_adjoint_error_accepts_true_adjoint_and_catches_wrong_one():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((4, 3))
    good = adjoint_error(lambda x: a @ x, lambda y: a.T @ y, (3,), (4,), rng=rng)
    assert good < 1e-14
    wrong = a.T.copy()
    wrong[0, 0] += 0.5
    bad = adjoint_error(lambda x: a @ x, lambda y: wrong @ y, (3,), (4,), rng=rng)
    assert bad > 1e-3
    with pytest.raises(ValueError, match="adjoint must return shape"):
        adjoint_error(lambda x: a @ x, lambda y: y, (3,), (4,), rng=rng)
