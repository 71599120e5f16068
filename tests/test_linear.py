"""linear: golden value, gradients, no-bias case, bad inputs."""
import numpy as np
import pytest

from mrcnn_np.gradcheck import numeric_gradient, relative_error
from mrcnn_np.ops.linear import linear_backward, linear_forward


def test_golden():
    x = np.array([[1.0, 2.0]])
    w = np.array([[3.0, 4.0], [5.0, 6.0]])
    b = np.array([0.5, -1.0])
    out, _ = linear_forward(x, w, b)
    # [1*3 + 2*4 + 0.5, 1*5 + 2*6 - 1] = [11.5, 16]
    np.testing.assert_array_equal(out, [[11.5, 16.0]])


@pytest.mark.parametrize("bias", [True, False])
def test_gradients(bias):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((4, 5))
    w = rng.standard_normal((3, 5))
    b = rng.standard_normal(3) if bias else None
    out, cache = linear_forward(x, w, b)
    dout = rng.standard_normal(out.shape)
    dx, dw, db = linear_backward(dout, cache)
    f = lambda: linear_forward(x, w, b)[0]  # noqa: E731
    assert relative_error(dx, numeric_gradient(f, x, dout)) < 1e-6
    assert relative_error(dw, numeric_gradient(f, w, dout)) < 1e-6
    if bias:
        assert relative_error(db, numeric_gradient(f, b, dout)) < 1e-6
    else:
        assert db is None


def test_dtype_follows_input():
    x = np.ones((2, 3), np.float32)
    out, cache = linear_forward(x, np.ones((4, 3), np.float32), np.zeros(4, np.float32))
    assert out.dtype == np.float32
    assert all(g.dtype == np.float32 for g in linear_backward(np.ones((2, 4), np.float32), cache))


def test_bad_inputs():
    x = np.ones((2, 3))
    with pytest.raises(ValueError, match=r"w must have shape \(O, 3\), got \(4, 2\)"):
        linear_forward(x, np.ones((4, 2)), None)
    with pytest.raises(ValueError, match="x must have shape"):
        linear_forward(np.ones(3), np.ones((4, 3)), None)
    with pytest.raises(ValueError, match="b must have shape"):
        linear_forward(x, np.ones((4, 3)), np.ones(3))
    with pytest.raises(TypeError, match="w must have the dtype of x"):
        linear_forward(x, np.ones((4, 3), np.float32), None)
    _, cache = linear_forward(x, np.ones((4, 3)), None)
    with pytest.raises(ValueError, match="dout"):
        linear_backward(np.ones((2, 3)), cache)
    with pytest.raises(TypeError, match=r"dout must have the dtype of x \(float64\), got float32"):
        linear_backward(np.ones((2, 4), np.float32), cache)
