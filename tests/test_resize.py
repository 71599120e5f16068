"""Nearest upsampling and bilinear resizing: hand-worked values, index patterns,
ramps, adjoint tests, gradients, fast == naive, bad inputs."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from mrcnn_np.gradcheck import adjoint_error, numeric_gradient, relative_error
from mrcnn_np.ops.resize import (resize_bilinear, resize_bilinear_backward, resize_bilinear_forward,
                                 resize_bilinear_naive, upsample_nearest_backward,
                                 upsample_nearest_forward, upsample_nearest_naive)


def ramp(n):
    return np.arange(n, dtype=np.float64)


# ---------------------------------------------------------------- nearest
def test_nearest_25_to_50_repeats_each_row_twice():
    x = ramp(25).reshape(1, 1, 25, 1)
    out, _ = upsample_nearest_forward(x, (50, 1))
    # floor(dst * 25 / 50) = floor(dst / 2): 0, 0, 1, 1, ..., 24, 24
    np.testing.assert_array_equal(out.ravel(), np.repeat(np.arange(25), 2))


def test_nearest_13_to_25_pattern():
    x = ramp(13).reshape(1, 1, 1, 13)
    out, _ = upsample_nearest_forward(x, (1, 25))
    # floor(dst * 13 / 25) for dst = 0..24: 0, .52, 1.04, 1.56, 2.08, 2.6, ..., 23 -> 11.96, 24 -> 12.48
    # so 0..11 appear twice and 12 once
    want = [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7, 8, 8, 9, 9, 10, 10, 11, 11, 12]
    np.testing.assert_array_equal(out.ravel(), want)


def test_nearest_float32_rounding_case_as_torch():
    # torch evaluates floor(dst * H / h) as floorf(float32(dst) * float32(H / h)).
    # H = 2, h = 94: 2/94 = 1/47 = 0.0212765957... rounds DOWN to 0.021276595070958138 in
    # float32; 47 times that is 0.99999996833, which rounds to 0.99999994 in float32 (the
    # float32 neighbours of 1 below are 1 - 2^-24 steps: 0.99999994, 1.0; the midpoint is
    # 0.9999999702). So torch (float32) reads row 0 at dst 47, where exact math says row 1.
    out, _ = upsample_nearest_forward(ramp(2).reshape(1, 1, 2, 1), (94, 1))
    assert out[0, 0, 47, 0] == 0.0 and out[0, 0, 48, 0] == 1.0 and out[0, 0, 46, 0] == 0.0


def test_nearest_index_is_floor_up_to_float32_rounding():
    """Against the exact rational floor(dst * H / h): equal, except possibly one row lower
    where dst * H / h is an exact integer (float32 rounding can only bite there)."""
    mismatches = 0
    for n_in in range(1, 70):
        for n_out in range(1, 70):
            out = upsample_nearest_forward(ramp(n_in).reshape(1, 1, 1, n_in), (1, n_out))[0]
            got = out.ravel().astype(np.int64)
            dst = np.arange(n_out)
            exact = dst * n_in // n_out
            differ = got != exact
            assert np.all(got[differ] == exact[differ] - 1), (n_in, n_out)
            assert np.all((dst * n_in % n_out)[differ] == 0), (n_in, n_out)
            mismatches += differ.sum()
    assert mismatches < 100  # rare: a few dozen of the 4761 (H, h) pairs


def test_nearest_downsample_and_backward_skips():
    x = ramp(5).reshape(1, 1, 1, 5)
    out, cache = upsample_nearest_forward(x, (1, 2))
    np.testing.assert_array_equal(out.ravel(), [0, 2])  # floor(0 * 5/2) = 0, floor(1 * 5/2) = 2
    dx = upsample_nearest_backward(np.array([[[[3.0, 4.0]]]]), cache)
    np.testing.assert_array_equal(dx.ravel(), [3, 0, 4, 0, 0])


@pytest.mark.parametrize("src,dst", [((3, 4), (6, 8)), ((13, 13), (25, 25)), ((7, 5), (3, 9))])
def test_nearest_adjoint_and_gradient(src, dst):
    rng = np.random.default_rng(0)
    shape = (2, 3) + src
    out_shape = (2, 3) + dst
    cache = upsample_nearest_forward(np.zeros(shape), dst)[1]
    err = adjoint_error(lambda x: upsample_nearest_forward(x, dst)[0],
                        lambda y: upsample_nearest_backward(y, cache), shape, out_shape, rng=rng)
    assert err < 1e-12
    x = rng.standard_normal(shape)
    dout = rng.standard_normal(out_shape)
    num = numeric_gradient(lambda: upsample_nearest_forward(x, dst)[0], x, dout)
    assert relative_error(upsample_nearest_backward(dout, cache), num) < 1e-6


@settings(max_examples=25)
@given(h=st.integers(1, 9), w=st.integers(1, 9), oh=st.integers(1, 20), ow=st.integers(1, 20))
def test_nearest_fast_equals_naive(h, w, oh, ow):
    x = np.random.default_rng(h * 100 + w).standard_normal((1, 2, h, w))
    np.testing.assert_array_equal(upsample_nearest_forward(x, (oh, ow))[0],
                                  upsample_nearest_naive(x, (oh, ow)))


# ---------------------------------------------------------------- bilinear
def test_bilinear_2x2_to_4x4_by_hand():
    x = np.array([[1.0, 2.0], [3.0, 4.0]])
    # scale 2/4 = 0.5; src = (dst + 0.5) * 0.5 - 0.5 = -0.25 (-> 0), 0.25, 0.75, 1.25 (-> y0 = y1 = 1)
    # 1-D weights: dst0 = a, dst1 = .75a + .25b, dst2 = .25a + .75b, dst3 = b
    # row [1, 2] -> [1, 1.25, 1.75, 2]; row [3, 4] -> [3, 3.25, 3.75, 4]
    # columns mix those rows the same way: 0.75 * [1..] + 0.25 * [3..] = [1.5, 1.75, 2.25, 2.5]
    want = np.array([[1.0, 1.25, 1.75, 2.0],
                     [1.5, 1.75, 2.25, 2.5],
                     [2.5, 2.75, 3.25, 3.5],
                     [3.0, 3.25, 3.75, 4.0]])
    np.testing.assert_allclose(resize_bilinear(x, (4, 4)), want, rtol=1e-15)
    np.testing.assert_allclose(resize_bilinear_naive(x, (4, 4)), want, rtol=1e-15)


def test_bilinear_2x_downsample_averages_pairs():
    x = np.array([[0.0, 2.0, 10.0, 30.0]])
    # scale 2: src = (dst + 0.5) * 2 - 0.5 = 0.5, 2.5 -> means of (0, 2) and (10, 30)
    np.testing.assert_allclose(resize_bilinear(x, (1, 2)), [[1.0, 20.0]], rtol=1e-15)


@pytest.mark.parametrize("n_in,n_out", [(5, 12), (7, 3), (4, 4), (1, 5), (9, 20)])
def test_bilinear_of_ramp_is_clamped_source_coordinate(n_in, n_out):
    out = resize_bilinear(ramp(n_in)[None, :], (1, n_out)).ravel()
    src = (np.arange(n_out) + 0.5) * n_in / n_out - 0.5
    np.testing.assert_allclose(out, np.clip(src, 0, n_in - 1), rtol=1e-13, atol=1e-13)


def test_bilinear_constant_and_identity():
    x = np.random.default_rng(1).standard_normal((2, 5, 7))
    np.testing.assert_array_equal(resize_bilinear(x, (5, 7)), x)
    np.testing.assert_allclose(resize_bilinear(np.full((3, 4), 2.5), (11, 2)), 2.5, rtol=1e-15)


@pytest.mark.parametrize("shape", [(4, 6), (3, 5, 4), (2, 2, 5, 3)])
def test_bilinear_accepts_any_leading_shape(shape):
    x = np.random.default_rng(2).standard_normal(shape)
    out = resize_bilinear(x, (7, 9))
    assert out.shape == shape[:-2] + (7, 9)
    np.testing.assert_allclose(out, resize_bilinear_naive(x, (7, 9)), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("src,dst", [((3, 4), (7, 9)), ((8, 6), (3, 4)), ((5, 5), (28, 13)),
                                     ((1, 4), (3, 2))])
def test_bilinear_adjoint_and_gradient(src, dst):
    rng = np.random.default_rng(3)
    shape, out_shape = (2,) + src, (2,) + dst
    cache = resize_bilinear_forward(np.zeros(shape), dst)[1]
    err = adjoint_error(lambda x: resize_bilinear(x, dst),
                        lambda y: resize_bilinear_backward(y, cache), shape, out_shape, rng=rng)
    assert err < 1e-12
    x = rng.standard_normal(shape)
    dout = rng.standard_normal(out_shape)
    num = numeric_gradient(lambda: resize_bilinear(x, dst), x, dout)
    assert relative_error(resize_bilinear_backward(dout, cache), num) < 1e-6


@settings(max_examples=25)
@given(h=st.integers(1, 8), w=st.integers(1, 8), oh=st.integers(1, 16), ow=st.integers(1, 16))
def test_bilinear_fast_equals_naive(h, w, oh, ow):
    x = np.random.default_rng(h * 10 + w).standard_normal((2, h, w))
    np.testing.assert_allclose(resize_bilinear(x, (oh, ow)), resize_bilinear_naive(x, (oh, ow)),
                               rtol=1e-12, atol=1e-12)


def test_dtype_follows_input():
    x = np.ones((1, 1, 3, 3), np.float32)
    out, cache = resize_bilinear_forward(x, (5, 4))
    assert out.dtype == np.float32
    assert resize_bilinear_backward(np.ones_like(out), cache).dtype == np.float32
    out, cache = upsample_nearest_forward(x, 6)
    assert out.dtype == np.float32 and out.shape == (1, 1, 6, 6)
    assert upsample_nearest_backward(np.ones_like(out), cache).dtype == np.float32


def test_bad_inputs():
    with pytest.raises(ValueError, match="x must have shape"):
        upsample_nearest_forward(np.ones((3, 3)), (6, 6))
    with pytest.raises(ValueError, match="size"):
        upsample_nearest_forward(np.ones((1, 1, 3, 3)), (0, 6))
    with pytest.raises(ValueError, match="size"):
        resize_bilinear(np.ones((3, 3)), (1, 2, 3))
    with pytest.raises(TypeError, match="size"):
        resize_bilinear(np.ones((3, 3)), 2.5)
    with pytest.raises(ValueError, match="x must have shape"):
        resize_bilinear(np.ones(3), (2, 2))
    with pytest.raises(TypeError, match="floating"):
        resize_bilinear(np.ones((3, 3), dtype=bool), (2, 2))
    _, cache = resize_bilinear_forward(np.ones((2, 3, 3)), (4, 4))
    with pytest.raises(ValueError, match=r"dout must have shape \(2, 4, 4\)"):
        resize_bilinear_backward(np.ones((2, 4, 5)), cache)
    with pytest.raises(TypeError, match=r"dout must have the dtype of x \(float64\), got float32"):
        resize_bilinear_backward(np.ones((2, 4, 4), np.float32), cache)
    with pytest.raises(ValueError, match=r"x must have H, W >= 1, got shape \(1, 1, 0, 3\)"):
        upsample_nearest_forward(np.ones((1, 1, 0, 3)), (2, 2))
    _, cache = upsample_nearest_forward(np.ones((1, 1, 2, 2)), (4, 4))
    with pytest.raises(TypeError, match=r"dout must have the dtype of x \(float64\), got float32"):
        upsample_nearest_backward(np.ones((1, 1, 4, 4), np.float32), cache)


def test_bilinear_float16_uses_float32_coordinates():
    # a 0/1 stripe pattern 3000 wide, upsampled x2: a float16 coordinate grid cannot
    # represent odd integers above 2048, so indices would land on the wrong stripe
    # (errors ~0.5); with float32 coordinates only the weights are rounded (< 1e-3)
    x = (np.arange(3000) % 2).astype(np.float64).reshape(1, 3000)
    want = resize_bilinear(x, (1, 6000))
    got = resize_bilinear(x.astype(np.float16), (1, 6000))
    assert got.dtype == np.float16
    np.testing.assert_allclose(got.astype(np.float64), want, atol=1e-3, rtol=0)
