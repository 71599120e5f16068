"""max_pool2d: golden windows, ties, padding, P6 subsampling, gradients, fast == naive."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from mrcnn_np.gradcheck import numeric_gradient, relative_error
from mrcnn_np.ops.pool import max_pool2d_backward, max_pool2d_forward, max_pool2d_naive


def distinct(rng, shape):
    """Values at least 0.01 apart (no ties, so finite differences never cross a kink)."""
    n = int(np.prod(shape))
    return (rng.permutation(n) * 0.01 + rng.uniform(0, 1e-3, n)).reshape(shape) - n * 0.005


def test_golden_2x2_windows_and_gradient_routing():
    x = np.array([[1, 3, 2, 4],
                  [5, 6, 6, 1],
                  [0, 2, 9, 9],
                  [3, 1, 9, 0]], dtype=np.float64)[None, None]
    out, cache = max_pool2d_forward(x, kernel_size=2)
    # windows: {1,3,5,6} -> 6; {2,4,6,1} -> 6; {0,2,3,1} -> 3; {9,9,9,0} -> 9 (three ties)
    np.testing.assert_array_equal(out[0, 0], [[6, 6], [3, 9]])
    dx = max_pool2d_backward(np.array([[[[10.0, 20.0], [30.0, 40.0]]]]), cache)
    want = np.zeros((4, 4))
    want[1, 1], want[1, 2], want[3, 0] = 10, 20, 30
    want[2, 2] = 40  # first 9 in row-major scan order of the window rows 2..3, cols 2..3
    np.testing.assert_array_equal(dx[0, 0], want)


def test_tie_goes_to_first_in_scan_order_overlapping():
    x = np.full((1, 1, 3, 3), 5.0)
    out, cache = max_pool2d_forward(x, kernel_size=2, stride=1)
    np.testing.assert_array_equal(out[0, 0], 5.0)
    dx = max_pool2d_backward(np.ones((1, 1, 2, 2)), cache)
    # every window's winner is its top-left element: (0,0), (0,1), (1,0), (1,1)
    np.testing.assert_array_equal(dx[0, 0], [[1, 1, 0], [1, 1, 0], [0, 0, 0]])
    _, idx = max_pool2d_naive(x, kernel_size=2, stride=1)
    np.testing.assert_array_equal(idx[0, 0], [[0, 1], [3, 4]])


def test_padding_is_minus_infinity():
    x = -(np.arange(16, dtype=np.float64).reshape(1, 1, 4, 4) + 1)  # x[i, j] = -(4i + j + 1)
    out, _ = max_pool2d_forward(x, kernel_size=3, stride=2, padding=1)
    # Ho = (4 + 2 - 3) // 2 + 1 = 2; windows rows/cols {-1..1} and {1..3}:
    # (0,0): best of rows 0..1, cols 0..1 = -1; (0,1): rows 0..1, cols 1..3 = -2
    # (1,0): rows 1..3, cols 0..1 = -5;      (1,1): rows 1..3, cols 1..3 = -6
    np.testing.assert_array_equal(out[0, 0], [[-1, -2], [-5, -6]])


def test_p6_kernel1_stride2_is_subsampling():
    x = np.random.default_rng(1).standard_normal((2, 3, 7, 6)).astype(np.float32)
    out, cache = max_pool2d_forward(x, kernel_size=1, stride=2)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, x[:, :, ::2, ::2])
    dx = max_pool2d_backward(np.ones_like(out), cache)
    assert dx.sum() == out.size and dx[:, :, 1::2].sum() == 0


def test_output_size_formula_and_default_stride():
    x = np.zeros((1, 1, 7, 9))
    assert max_pool2d_forward(x, kernel_size=3)[0].shape == (1, 1, 2, 3)  # stride 3
    assert max_pool2d_forward(x, kernel_size=(3, 2), stride=(2, 1), padding=(1, 1))[0].shape == (
        1, 1, (7 + 2 - 3) // 2 + 1, (9 + 2 - 2) // 1 + 1)


def test_nan_propagates_and_the_last_nan_gets_the_gradient():
    # torch's loop takes a cell when `val > maxval or isnan(val)`: every NaN is
    # taken, so the last NaN in scan order (here the one at row 1, col 0) wins
    x = np.array([[[[1.0, np.nan], [np.nan, 2.0]]]])
    out, cache = max_pool2d_forward(x, kernel_size=2)
    assert np.isnan(out[0, 0, 0, 0])
    dx = max_pool2d_backward(np.array([[[[5.0]]]]), cache)
    np.testing.assert_array_equal(dx[0, 0], [[0, 0], [5, 0]])
    np.testing.assert_array_equal(max_pool2d_naive(x, kernel_size=2)[1].ravel(), [2])


def test_all_minus_inf_window_routes_gradient_to_first_real_cell_not_padding():
    # 3x3 input of -inf, kernel 3, stride 2, padding 1: every window's max is -inf.
    # Window (0, 0) covers padded rows/cols -1..1; its first in-bounds cell is (0, 0).
    # Window (0, 1) covers cols 1..3 -> first in-bounds (0, 1); (1, 0) -> (1, 0); (1, 1) -> (1, 1).
    x = np.full((1, 1, 3, 3), -np.inf)
    out, cache = max_pool2d_forward(x, kernel_size=3, stride=2, padding=1)
    np.testing.assert_array_equal(out[0, 0], -np.inf)
    dx = max_pool2d_backward(np.array([[[[1.0, 2.0], [3.0, 4.0]]]]), cache)
    np.testing.assert_array_equal(dx[0, 0], [[1, 2, 0], [3, 4, 0], [0, 0, 0]])
    np.testing.assert_array_equal(max_pool2d_naive(x, kernel_size=3, stride=2, padding=1)[1][0, 0],
                                  [[0, 1], [3, 4]])


@pytest.mark.parametrize("k,s,p", [(2, 2, 0), (3, 2, 1), (3, 1, 1), ((2, 3), (1, 2), (1, 0))])
def test_gradient_matches_finite_differences(k, s, p):
    rng = np.random.default_rng(7)
    x = distinct(rng, (2, 2, 6, 7))
    out, cache = max_pool2d_forward(x, kernel_size=k, stride=s, padding=p)
    dout = rng.standard_normal(out.shape)
    dx = max_pool2d_backward(dout, cache)
    num = numeric_gradient(lambda: max_pool2d_forward(x, kernel_size=k, stride=s, padding=p)[0], x, dout)
    assert relative_error(dx, num) < 1e-6


@settings(max_examples=30)
@given(n=st.integers(1, 2), c=st.integers(1, 3), h=st.integers(1, 8), w=st.integers(1, 8),
       k=st.integers(1, 3), s=st.integers(1, 3), p=st.integers(0, 1), seed=st.integers(0, 1000),
       values=st.sampled_from(["normal", "ties", "special"]))
def test_fast_equals_naive(n, c, h, w, k, s, p, seed, values):
    p = min(p, k // 2)
    if h + 2 * p < k or w + 2 * p < k:
        return
    rng = np.random.default_rng(seed)
    if values == "normal":
        x = rng.standard_normal((n, c, h, w))
    else:  # small integers -> ties; "special" also sprinkles -inf and NaN
        x = rng.integers(0, 3, (n, c, h, w)).astype(np.float64)
        if values == "special":
            x[rng.random(x.shape) < 0.5] = -np.inf
            x[rng.random(x.shape) < 0.1] = np.nan
    out, cache = max_pool2d_forward(x, kernel_size=k, stride=s, padding=p)
    ref, idx = max_pool2d_naive(x, kernel_size=k, stride=s, padding=p)
    np.testing.assert_array_equal(out, ref)
    # the gradient lands exactly where the naive argmax says
    dout = rng.standard_normal(out.shape)
    dx = max_pool2d_backward(dout, cache)
    want = np.zeros(n * c * h * w)
    flat = idx + (np.arange(n * c) * h * w).reshape(n, c, 1, 1)
    np.add.at(want, flat.ravel(), dout.ravel())
    np.testing.assert_allclose(dx.ravel(), want, rtol=1e-12, atol=1e-12)


def test_backward_does_not_modify_dout():
    x = distinct(np.random.default_rng(0), (1, 1, 4, 4))
    out, cache = max_pool2d_forward(x, kernel_size=2)
    dout = np.ones_like(out)
    max_pool2d_backward(dout, cache)
    np.testing.assert_array_equal(dout, 1.0)


def test_bad_inputs():
    x = np.zeros((1, 1, 4, 4))
    with pytest.raises(ValueError, match="x must have shape"):
        max_pool2d_forward(np.zeros((4, 4)), kernel_size=2)
    with pytest.raises(TypeError, match="x must have a floating dtype"):
        max_pool2d_forward(np.zeros((1, 1, 4, 4), dtype=np.int64), kernel_size=2)
    with pytest.raises(ValueError, match="kernel_size"):
        max_pool2d_forward(x, kernel_size=0)
    with pytest.raises(ValueError, match="stride"):
        max_pool2d_forward(x, kernel_size=2, stride=0)
    with pytest.raises(ValueError, match="padding"):
        max_pool2d_forward(x, kernel_size=2, padding=2)
    with pytest.raises(ValueError, match="kernel_size .* larger than the padded input"):
        max_pool2d_forward(x, kernel_size=5)
    out, cache = max_pool2d_forward(x, kernel_size=2)
    with pytest.raises(ValueError, match="dout must have shape"):
        max_pool2d_backward(np.zeros((1, 1, 3, 2)), cache)
    with pytest.raises(TypeError, match="cache"):
        max_pool2d_backward(out, (1, 2))
    with pytest.raises(TypeError, match=r"dout must have the dtype of x \(float64\), got float32"):
        max_pool2d_backward(out.astype(np.float32), cache)
