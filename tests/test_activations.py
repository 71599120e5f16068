"""ReLU, sigmoid, softmax: golden values, gradients, stability, bad inputs."""
import warnings

import numpy as np
import pytest

from mrcnn_np.gradcheck import numeric_gradient, relative_error
from mrcnn_np.ops.activations import (relu_backward, relu_forward, sigmoid, sigmoid_backward,
                                      sigmoid_forward, softmax)


def test_relu_golden_and_zero_gets_zero_gradient():
    x = np.array([-2.0, 0.0, 3.0])
    out, cache = relu_forward(x)
    np.testing.assert_array_equal(out, [0, 0, 3])
    np.testing.assert_array_equal(relu_backward(np.array([5.0, 6.0, 7.0]), cache), [0, 0, 7])


def test_relu_gradient():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 4, 5))
    x[np.abs(x) < 1e-3] = 0.5  # off the kink
    _, cache = relu_forward(x)
    dout = rng.standard_normal(x.shape)
    num = numeric_gradient(lambda: relu_forward(x)[0], x, dout)
    assert relative_error(relu_backward(dout, cache), num) < 1e-6


def test_sigmoid_values_and_gradient():
    x = np.array([0.0, np.log(3.0), -np.log(3.0)])
    # sigmoid(log 3) = 1 / (1 + 1/3) = 0.75
    np.testing.assert_allclose(sigmoid(x), [0.5, 0.75, 0.25], rtol=1e-15)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((4, 6)) * 3
    out, cache = sigmoid_forward(x)
    dout = rng.standard_normal(x.shape)
    num = numeric_gradient(lambda: sigmoid_forward(x)[0], x, dout)
    assert relative_error(sigmoid_backward(dout, cache), num) < 1e-6


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sigmoid_stable_for_huge_inputs(dtype):
    x = np.array([-1e4, -100.0, 100.0, 1e4], dtype=dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        s = sigmoid(x)
    assert s.dtype == dtype
    assert s[0] == 0.0 and s[-1] == 1.0 and np.all(np.isfinite(s))
    np.testing.assert_allclose(sigmoid(-x), 1 - s, atol=1e-7)


def test_softmax():
    x = np.array([[1.0, 2.0, 3.0], [1000.0, 1000.0, -1000.0]])
    p = softmax(x)
    e = np.exp([1.0, 2.0, 3.0])
    np.testing.assert_allclose(p[0], e / e.sum(), rtol=1e-14)
    np.testing.assert_allclose(p[1], [0.5, 0.5, 0.0], atol=1e-300)
    np.testing.assert_allclose(softmax(x, axis=0).sum(axis=0), 1.0, rtol=1e-14)
    np.testing.assert_allclose(softmax(x[:1] + 123.0), p[:1], rtol=1e-12)  # shift invariance
    assert softmax(x.astype(np.float32)).dtype == np.float32


def test_bad_inputs():
    with pytest.raises(TypeError, match="x must be a numpy.ndarray"):
        relu_forward([1.0, 2.0])
    with pytest.raises(TypeError, match="x must have a floating dtype"):
        sigmoid(np.array([1, 2]))
    with pytest.raises(ValueError, match="axis"):
        softmax(np.ones((2, 3)), axis=2)
    _, cache = relu_forward(np.ones(3))
    with pytest.raises(ValueError, match="dout must have shape"):
        relu_backward(np.ones(4), cache)
    with pytest.raises(TypeError, match="cache"):
        sigmoid_backward(np.ones(3), cache)
    with pytest.raises(TypeError, match=r"dout must have the dtype of x \(float64\), got float32"):
        relu_backward(np.ones(3, np.float32), cache)
    _, scache = sigmoid_forward(np.ones(3, np.float32))
    with pytest.raises(TypeError, match=r"dout must have the dtype of x \(float32\), got float64"):
        sigmoid_backward(np.ones(3), scache)
