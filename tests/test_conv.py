"""Tests for mrcnn_np.ops.conv: conv2d and conv_transpose2d.

Tiers: hand-computed golden cases; float64 gradient checks and adjoint
(dot-product) tests; fast == naive and conv == scipy.signal.correlate under
hypothesis; an independent construction of the transposed convolution;
bad-input errors.
"""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import signal

from mrcnn_np.gradcheck import adjoint_error, numeric_gradient, relative_error
from mrcnn_np.ops.conv import (
    col2im,
    conv2d_backward,
    conv2d_backward_naive,
    conv2d_forward,
    conv2d_naive,
    conv_transpose2d_backward,
    conv_transpose2d_forward,
    conv_transpose2d_naive,
    im2col,
)


def _rand(rng, shape, dtype=np.float64):
    # "non-nice" values: no zeros, no symmetry, different scales per entry
    return (rng.uniform(0.5, 1.5, shape) * rng.choice([-1.0, 1.0], shape)).astype(dtype)


# --------------------------------------------------------------------------- golden


def test_conv2d_golden_by_hand():
    # x = [[1, 2, 3], [4, 5, 6], [7, 8, 9]], w = [[1, 0], [0, -1]] (a diagonal difference),
    # b = 0.5. out[i, j] = x[i, j] - x[i+1, j+1] + 0.5 = -4 + 0.5 everywhere:
    # 1-5, 2-6, 4-8, 5-9 are all -4.
    x = np.arange(1.0, 10.0).reshape(1, 1, 3, 3)
    w = np.array([[[[1.0, 0.0], [0.0, -1.0]]]])
    b = np.array([0.5])
    out, _ = conv2d_forward(x, w, b)
    np.testing.assert_array_equal(out, np.full((1, 1, 2, 2), -3.5))


def test_conv2d_golden_padding_stride():
    # all-ones 3x3 kernel, padding 1, stride 2 on x = arange(16) 4x4:
    # out[0,0] = sum of x[0:2, 0:2] = 0 + 1 + 4 + 5 = 10
    # out[0,1] = sum of x[0:2, 1:4] = 1+2+3 + 5+6+7 = 24
    # out[1,0] = sum of x[1:4, 0:2] = 4+5 + 8+9 + 12+13 = 51
    # out[1,1] = sum of x[1:4, 1:4] = 5+6+7 + 9+10+11 + 13+14+15 = 90
    x = np.arange(16.0).reshape(1, 1, 4, 4)
    w = np.ones((1, 1, 3, 3))
    out, _ = conv2d_forward(x, w, None, stride=2, padding=1)
    np.testing.assert_array_equal(out[0, 0], [[10.0, 24.0], [51.0, 90.0]])


def test_conv2d_golden_dilation():
    # 2x2 kernel [[1, 10], [100, 1000]] with dilation 2 on arange(16) 4x4:
    # out[i, j] = x[i, j] + 10 x[i, j+2] + 100 x[i+2, j] + 1000 x[i+2, j+2]
    # out[0, 0] = 0 + 10*2 + 100*8 + 1000*10 = 10820
    # out[1, 1] = 5 + 10*7 + 100*13 + 1000*15 = 16375
    x = np.arange(16.0).reshape(1, 1, 4, 4)
    w = np.array([[[[1.0, 10.0], [100.0, 1000.0]]]])
    out, _ = conv2d_forward(x, w, None, dilation=2)
    assert out.shape == (1, 1, 2, 2)
    assert out[0, 0, 0, 0] == 10820.0
    assert out[0, 0, 1, 1] == 16375.0


def test_conv_transpose2d_golden_by_hand():
    # x = [[1, 2]], kernel [[1, 10]] with stride 3: each pixel stamps a scaled
    # copy of the kernel 3 columns apart: [1, 10, 0, 2, 20]; + bias 1.
    x = np.array([[[[1.0, 2.0]]]])
    w = np.array([[[[1.0, 10.0]]]])
    out, _ = conv_transpose2d_forward(x, w, np.array([1.0]), stride=3)
    np.testing.assert_array_equal(out[0, 0], [[2.0, 11.0, 1.0, 3.0, 21.0]])
    # the same with padding (0, 1) crops one column on each side: [11, 1, 3]
    out, _ = conv_transpose2d_forward(x, w, None, stride=3, padding=(0, 1))
    np.testing.assert_array_equal(out[0, 0], [[10.0, 0.0, 2.0]])


def test_conv_transpose2d_golden_overlap():
    # stride 1, 2x2 ones kernel on [[1, 2], [3, 4]]: the four stamps overlap,
    # full output 3x3 = [[1, 3, 2], [4, 10, 6], [3, 7, 4]]
    x = np.array([[[[1.0, 2.0], [3.0, 4.0]]]])
    w = np.ones((1, 1, 2, 2))
    out, _ = conv_transpose2d_forward(x, w, None)
    np.testing.assert_array_equal(out[0, 0], [[1, 3, 2], [4, 10, 6], [3, 7, 4]])


def test_output_shapes_match_formulas():
    rng = np.random.default_rng(0)
    x = _rand(rng, (2, 3, 11, 8))
    out, _ = conv2d_forward(x, _rand(rng, (5, 3, 3, 2)), None, stride=(2, 3), padding=(1, 0),
                            dilation=(2, 1))
    # H: (11 + 2 - 2*2 - 1)//2 + 1 = 5; W: (8 + 0 - 1 - 1)//3 + 1 = 3
    assert out.shape == (2, 5, 5, 3)
    out, _ = conv_transpose2d_forward(x, _rand(rng, (3, 4, 3, 2)), None, stride=(2, 3),
                                      padding=(1, 0))
    # H: (11-1)*2 - 2 + 3 = 21; W: (8-1)*3 - 0 + 2 = 23
    assert out.shape == (2, 4, 21, 23)


# --------------------------------------------------------------------------- gradient checks

CONV_CASES = [
    # (N, C, H, W, F, KH, KW, stride, padding, dilation)
    (2, 3, 7, 6, 4, 3, 3, 1, 1, 1),
    (2, 2, 9, 8, 3, 3, 3, 2, 1, 1),
    (1, 3, 8, 7, 2, 3, 2, (2, 1), (0, 2), (2, 1)),
    (2, 2, 7, 7, 3, 1, 1, 1, 0, 1),
    (3, 2, 7, 6, 2, 1, 1, 2, 0, 1),
    (1, 2, 11, 10, 2, 7, 5, (3, 2), 3, 1),
    (2, 1, 6, 9, 2, 2, 3, 3, 2, 2),
]


def _conv_grads_numeric(x, w, b, dout, kw):
    f = lambda: conv2d_forward(x, w, b, **kw)[0]  # noqa: E731
    return (numeric_gradient(f, x, dout), numeric_gradient(f, w, dout),
            numeric_gradient(f, b, dout))


@pytest.mark.parametrize("case", CONV_CASES)
def test_conv2d_gradcheck(case):
    N, C, H, W, F, KH, KW, s, p, d = case
    rng = np.random.default_rng(abs(hash(case)) % 2**32)
    x, w, b = _rand(rng, (N, C, H, W)), _rand(rng, (F, C, KH, KW)), _rand(rng, (F,))
    kw = dict(stride=s, padding=p, dilation=d)
    out, cache = conv2d_forward(x, w, b, **kw)
    dout = _rand(rng, out.shape)
    dout_copy = dout.copy()
    dx, dw, db = conv2d_backward(dout, cache)
    np.testing.assert_array_equal(dout, dout_copy)  # backward never touches dout
    ndx, ndw, ndb = _conv_grads_numeric(x, w, b, dout, kw)
    assert relative_error(dx, ndx) < 1e-6
    assert relative_error(dw, ndw) < 1e-6
    assert relative_error(db, ndb) < 1e-6


def test_conv2d_no_bias_gives_db_none():
    rng = np.random.default_rng(1)
    x, w = _rand(rng, (1, 2, 5, 5)), _rand(rng, (3, 2, 3, 3))
    out, cache = conv2d_forward(x, w, None, padding=1)
    dx, dw, db = conv2d_backward(_rand(rng, out.shape), cache)
    assert db is None and dx.shape == x.shape and dw.shape == w.shape


def test_conv2d_backward_without_input_gradient():
    # need_dx=False (a first layer whose input is the image): dx is None, dw and db unchanged
    rng = np.random.default_rng(2)
    x, w, b = _rand(rng, (2, 3, 9, 8)), _rand(rng, (4, 3, 7, 7)), _rand(rng, (4,))
    out, cache = conv2d_forward(x, w, b, stride=2, padding=3)
    dout = _rand(rng, out.shape)
    _, dw, db = conv2d_backward(dout, cache)
    dx2, dw2, db2 = conv2d_backward(dout, cache, need_dx=False)
    assert dx2 is None and np.array_equal(dw2, dw) and np.array_equal(db2, db)


TRANSPOSE_CASES = [
    # (N, C_in, H, W, C_out, KH, KW, stride, padding, dilation)
    (2, 3, 4, 5, 2, 2, 2, 2, 0, 1),  # the mask head's 2x2 stride-2 upsampler
    (3, 8, 2, 2, 4, 2, 2, 2, 0, 1),  # same, many channels on tiny maps (dw as one GEMM)
    (1, 2, 5, 4, 3, 3, 3, 2, 1, 1),
    (2, 2, 3, 4, 2, 3, 2, (1, 3), (2, 0), (1, 2)),
    (1, 3, 4, 4, 2, 1, 1, 1, 0, 1),
    (2, 1, 3, 5, 3, 4, 3, 3, (1, 2), 2),
]


@pytest.mark.parametrize("case", TRANSPOSE_CASES)
def test_conv_transpose2d_gradcheck(case):
    N, C, H, W, Co, KH, KW, s, p, d = case
    rng = np.random.default_rng(abs(hash(case)) % 2**32)
    x, w, b = _rand(rng, (N, C, H, W)), _rand(rng, (C, Co, KH, KW)), _rand(rng, (Co,))
    kw = dict(stride=s, padding=p, dilation=d)
    out, cache = conv_transpose2d_forward(x, w, b, **kw)
    dout = _rand(rng, out.shape)
    dout_copy = dout.copy()
    dx, dw, db = conv_transpose2d_backward(dout, cache)
    np.testing.assert_array_equal(dout, dout_copy)
    f = lambda: conv_transpose2d_forward(x, w, b, **kw)[0]  # noqa: E731
    assert relative_error(dx, numeric_gradient(f, x, dout)) < 1e-6
    assert relative_error(dw, numeric_gradient(f, w, dout)) < 1e-6
    assert relative_error(db, numeric_gradient(f, b, dout)) < 1e-6


def test_conv2d_backward_naive_matches_numeric():
    # the loop backward (used in the notebook) is itself right
    rng = np.random.default_rng(2)
    x, w = _rand(rng, (2, 2, 6, 5)), _rand(rng, (3, 2, 3, 2))
    kw = dict(stride=(2, 1), padding=1, dilation=(1, 2))
    out = conv2d_naive(x, w, None, **kw)
    dout = _rand(rng, out.shape)
    dx, dw, db = conv2d_backward_naive(dout, x, w, **kw)
    f = lambda: conv2d_naive(x, w, None, **kw)  # noqa: E731
    assert relative_error(dx, numeric_gradient(f, x, dout)) < 1e-6
    assert relative_error(dw, numeric_gradient(f, w, dout)) < 1e-6
    np.testing.assert_allclose(db, dout.sum(axis=(0, 2, 3)))


# --------------------------------------------------------------------------- adjoints


@pytest.mark.parametrize("case", CONV_CASES)
def test_conv_and_transpose_are_adjoint(case):
    # <conv(x), y> == <x, conv_T(y)> with w read in both layouts, using our two
    # forwards, and == <x, dx> from conv2d_backward with dout = y.
    N, C, H, W, F, KH, KW, s, p, d = case
    rng = np.random.default_rng(3)
    w = _rand(rng, (F, C, KH, KW))
    kw = dict(stride=s, padding=p, dilation=d)
    out_shape = conv2d_forward(np.zeros((N, C, H, W)), w, None, **kw)[0].shape
    # conv_transpose2d's weight layout (C_in, C_out, ...) with C_in = F, C_out = C
    # is exactly conv2d's (F, C, ...): the same array serves both. When the stride
    # does not divide the padded extent, the conv never reads the last rows/columns
    # of the padded input; output_padding restores the lost size (as torch).
    Ht = (out_shape[2] - 1) * _pair(s)[0] - 2 * _pair(p)[0] + _pair(d)[0] * (KH - 1) + 1
    Wt = (out_shape[3] - 1) * _pair(s)[1] - 2 * _pair(p)[1] + _pair(d)[1] * (KW - 1) + 1
    op = (H - Ht, W - Wt)

    def conv(x):
        return conv2d_forward(x, w, None, **kw)[0]

    def conv_t(y):
        return conv_transpose2d_forward(y, w, None, output_padding=op, **kw)[0]

    def conv_bwd(y):
        return conv2d_backward(y, conv2d_forward(np.zeros((N, C, H, W)), w, None, **kw)[1])[0]

    assert adjoint_error(conv, conv_t, (N, C, H, W), out_shape, rng=rng) < 1e-12
    assert adjoint_error(conv, conv_bwd, (N, C, H, W), out_shape, rng=rng) < 1e-12


@pytest.mark.parametrize("case", TRANSPOSE_CASES)
def test_transpose_adjoint_against_its_backward(case):
    N, C, H, W, Co, KH, KW, s, p, d = case
    rng = np.random.default_rng(4)
    w = _rand(rng, (C, Co, KH, KW))
    kw = dict(stride=s, padding=p, dilation=d)
    out_shape = conv_transpose2d_forward(np.zeros((N, C, H, W)), w, None, **kw)[0].shape
    _, cache = conv_transpose2d_forward(np.zeros((N, C, H, W)), w, None, **kw)

    def fwd(x):
        return conv_transpose2d_forward(x, w, None, **kw)[0]

    def bwd(y):
        return conv_transpose2d_backward(y, cache)[0]

    def conv(y):  # conv2d with the same array: the other direction of the pair
        return conv2d_forward(y, w, None, **kw)[0]

    assert adjoint_error(fwd, bwd, (N, C, H, W), out_shape, rng=rng) < 1e-12
    assert adjoint_error(fwd, conv, (N, C, H, W), out_shape, rng=rng) < 1e-12


def test_im2col_col2im_adjoint():
    rng = np.random.default_rng(5)
    x_shape = (2, 3, 7, 6)
    kw = dict(stride=(2, 1), padding=(1, 2), dilation=(1, 2))
    cols_shape = im2col(np.zeros(x_shape), (3, 2), **kw).shape
    err = adjoint_error(lambda x: im2col(x, (3, 2), **kw),
                        lambda c: col2im(c, x_shape, (3, 2), **kw),
                        x_shape, cols_shape, rng=rng)
    assert err < 1e-12


def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


# --------------------------------------------------------------------------- fast == naive


@st.composite
def conv_problems(draw):
    N = draw(st.integers(1, 2))
    C = draw(st.integers(1, 3))
    F = draw(st.integers(1, 3))
    KH, KW = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    sh, sw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    ph, pw = draw(st.integers(0, 2)), draw(st.integers(0, 2))
    dh, dw = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    # input at least as large as the dilated kernel minus the padding
    H = draw(st.integers(max(1, dh * (KH - 1) + 1 - 2 * ph), 9))
    W = draw(st.integers(max(1, dw * (KW - 1) + 1 - 2 * pw), 9))
    seed = draw(st.integers(0, 2**31))
    return (N, C, H, W, F, KH, KW, (sh, sw), (ph, pw), (dh, dw), seed)


@settings(max_examples=40)
@given(conv_problems(), st.booleans())
def test_conv2d_fast_equals_naive(problem, with_bias):
    N, C, H, W, F, KH, KW, s, p, d, seed = problem
    rng = np.random.default_rng(seed)
    x, w = _rand(rng, (N, C, H, W)), _rand(rng, (F, C, KH, KW))
    b = _rand(rng, (F,)) if with_bias else None
    kw = dict(stride=s, padding=p, dilation=d)
    out, cache = conv2d_forward(x, w, b, **kw)
    np.testing.assert_allclose(out, conv2d_naive(x, w, b, **kw), rtol=1e-12, atol=1e-12)
    dout = _rand(rng, out.shape)
    for got, want in zip(conv2d_backward(dout, cache), conv2d_backward_naive(dout, x, w, **kw)):
        if got is not None:
            np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


@settings(max_examples=30)
@given(conv_problems(), st.integers(1, 4000))
def test_conv2d_small_blocks_equal_naive(problem, budget):
    # tiny block budgets send every problem through the blocked paths the
    # default budget keeps for large images (row blocks, stride-1 row unrolling
    # with the padding written in place, dx as a flipped-kernel forward conv)
    import mrcnn_np.kernels.conv as conv

    N, C, H, W, F, KH, KW, s, p, d, seed = problem
    rng = np.random.default_rng(seed)
    x, w = _rand(rng, (N, C, H, W)), _rand(rng, (F, C, KH, KW))
    kw = dict(stride=s, padding=p, dilation=d)
    saved = conv._BLOCK_BYTES
    conv._BLOCK_BYTES = budget
    try:
        out, cache = conv2d_forward(x, w, None, **kw)
        dout = _rand(rng, out.shape)
        got = conv2d_backward(dout, cache)
    finally:
        conv._BLOCK_BYTES = saved
    np.testing.assert_allclose(out, conv2d_naive(x, w, None, **kw), rtol=1e-12, atol=1e-12)
    want = conv2d_backward_naive(dout, x, w, **kw)
    for g, n in zip(got[:2], want[:2]):
        np.testing.assert_allclose(g, n, rtol=1e-12, atol=1e-12)


@settings(max_examples=40)
@given(conv_problems(), st.booleans())
def test_conv_transpose2d_fast_equals_naive(problem, with_bias):
    N, C, H, W, F, KH, KW, s, p, d, seed = problem
    rng = np.random.default_rng(seed)
    # output size (H-1)*s - 2p + d(K-1) + 1 must be >= 1: shrink p if needed
    p = tuple(min(pi, ((Hi - 1) * si + di * (Ki - 1)) // 2)
              for pi, Hi, si, di, Ki in zip(p, (H, W), s, d, (KH, KW)))
    x, w = _rand(rng, (N, C, H, W)), _rand(rng, (C, F, KH, KW))
    b = _rand(rng, (F,)) if with_bias else None
    kw = dict(stride=s, padding=p, dilation=d)
    out, _ = conv_transpose2d_forward(x, w, b, **kw)
    np.testing.assert_allclose(out, conv_transpose2d_naive(x, w, b, **kw), rtol=1e-12, atol=1e-12)


@settings(max_examples=30)
@given(conv_problems())
def test_conv2d_equals_scipy_correlate(problem):
    # out[n, f] = sum_c correlate(xpad[n, c], w[f, c], "valid"), then subsampled by stride;
    # a dilated kernel is the kernel with d-1 zeros between its taps.
    N, C, H, W, F, KH, KW, (sh, sw), (ph, pw), (dh, dw), seed = problem
    rng = np.random.default_rng(seed)
    x, w, b = _rand(rng, (N, C, H, W)), _rand(rng, (F, C, KH, KW)), _rand(rng, (F,))
    out, _ = conv2d_forward(x, w, b, stride=(sh, sw), padding=(ph, pw), dilation=(dh, dw))
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    wd = np.zeros((F, C, dh * (KH - 1) + 1, dw * (KW - 1) + 1))
    wd[:, :, ::dh, ::dw] = w
    want = np.empty_like(out)
    for n in range(N):
        for f in range(F):
            acc = sum(signal.correlate(xp[n, c], wd[f, c], mode="valid") for c in range(C))
            want[n, f] = acc[::sh, ::sw] + b[f]
    np.testing.assert_allclose(out, want, rtol=1e-10, atol=1e-10)


@settings(max_examples=30)
@given(conv_problems())
def test_conv_transpose2d_is_zero_insertion_then_conv(problem):
    # Independent construction: insert s-1 zeros between input pixels, pad by
    # d*(K-1) - p, then an ordinary stride-1 conv with the kernel flipped in space
    # and its channel axes swapped (w[c, o] -> w'[o, c]).
    N, C, H, W, F, KH, KW, s, p, d, seed = problem
    rng = np.random.default_rng(seed)
    p = tuple(min(pi, di * (Ki - 1), ((Hi - 1) * si + di * (Ki - 1)) // 2)
              for pi, Hi, si, di, Ki in zip(p, (H, W), s, d, (KH, KW)))
    x, w = _rand(rng, (N, C, H, W)), _rand(rng, (C, F, KH, KW))
    out, _ = conv_transpose2d_forward(x, w, None, stride=s, padding=p, dilation=d)
    up = np.zeros((N, C, (H - 1) * s[0] + 1, (W - 1) * s[1] + 1))
    up[:, :, ::s[0], ::s[1]] = x
    eh, ew = d[0] * (KH - 1) - p[0], d[1] * (KW - 1) - p[1]
    up = np.pad(up, ((0, 0), (0, 0), (eh, eh), (ew, ew)))
    w_flip = w[:, :, ::-1, ::-1].transpose(1, 0, 2, 3).copy()
    want = conv2d_naive(up, w_flip, None, dilation=d)
    np.testing.assert_allclose(out, want, rtol=1e-10, atol=1e-10)


# --------------------------------------------------------------------------- dtypes, views


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dtype_preserved(dtype):
    rng = np.random.default_rng(6)
    x = _rand(rng, (2, 3, 6, 5), dtype)
    w = _rand(rng, (4, 3, 3, 3), dtype)
    b = _rand(rng, (4,), dtype)
    out, cache = conv2d_forward(x, w, b, padding=1)
    grads = conv2d_backward(out.copy(), cache)
    assert out.dtype == dtype and all(g.dtype == dtype for g in grads)
    wt = _rand(rng, (3, 4, 2, 2), dtype)
    out, cache = conv_transpose2d_forward(x, wt, b, stride=2)
    grads = conv_transpose2d_backward(out.copy(), cache)
    assert out.dtype == dtype and all(g.dtype == dtype for g in grads)


def test_float32_close_to_float64():
    rng = np.random.default_rng(7)
    x, w = _rand(rng, (2, 8, 9, 9)), _rand(rng, (5, 8, 3, 3))
    out64, _ = conv2d_forward(x, w, None, padding=1)
    out32, _ = conv2d_forward(x.astype(np.float32), w.astype(np.float32), None, padding=1)
    np.testing.assert_allclose(out32, out64, rtol=1e-4, atol=1e-4)


def test_non_contiguous_inputs():
    rng = np.random.default_rng(8)
    x = _rand(rng, (2, 3, 8, 10))[:, :, :, ::2]  # strided view
    w = _rand(rng, (4, 3, 3, 3)).transpose(0, 1, 3, 2)  # transposed view
    for kw in (dict(padding=1), dict()):
        out, cache = conv2d_forward(x, w, None, **kw)
        np.testing.assert_allclose(out, conv2d_naive(x, w, None, **kw), rtol=1e-12)
    x1 = _rand(rng, (2, 3, 8, 10)).transpose(0, 1, 3, 2)
    w1 = _rand(rng, (4, 3, 1, 1))
    out, cache = conv2d_forward(x1, w1, None)
    np.testing.assert_allclose(out, conv2d_naive(x1, w1, None), rtol=1e-12)
    out, cache = conv_transpose2d_forward(x1, _rand(rng, (3, 2, 1, 1)), None)
    assert out.shape == (2, 2, 10, 8)


@pytest.mark.parametrize("k,s,p", [(3, 1, 1), (1, 1, 0), (3, 2, 0)])
def test_empty_batch(k, s, p):
    # N = 0 happens in the mask head when an image has no positive RoI
    rng = np.random.default_rng(12)
    x = np.zeros((0, 3, 6, 6))
    w, b = _rand(rng, (4, 3, k, k)), _rand(rng, (4,))
    out, cache = conv2d_forward(x, w, b, stride=s, padding=p)
    assert out.shape == (0, 4) + conv2d_naive(np.ones((1, 3, 6, 6)), w, b, stride=s,
                                              padding=p).shape[2:]
    dx, dw, db = conv2d_backward(out, cache)
    assert dx.shape == x.shape
    np.testing.assert_array_equal(dw, 0)
    np.testing.assert_array_equal(db, 0)
    wt = _rand(rng, (3, 4, 2, 2))
    out, cache = conv_transpose2d_forward(x, wt, b, stride=2)
    assert out.shape == (0, 4, 12, 12)
    dx, dw, db = conv_transpose2d_backward(out, cache)
    assert dx.shape == x.shape and not dw.any() and not db.any()


def test_conv2d_1x1_forward_does_not_copy_x():
    # the 1x1 stride-1 path is a pure GEMM on a view of x
    rng = np.random.default_rng(9)
    x = _rand(rng, (1, 4, 5, 6))
    cols = im2col(x, 1)
    assert np.shares_memory(cols, x)


# --------------------------------------------------------------------------- bad input


def _ok():
    return np.zeros((1, 3, 5, 5)), np.zeros((2, 3, 3, 3)), np.zeros(2)


def test_bad_ndim():
    x, w, b = _ok()
    with pytest.raises(ValueError, match="x must have shape"):
        conv2d_forward(x[0], w, b)
    with pytest.raises(ValueError, match="w must have shape"):
        conv2d_forward(x, w[0], b)
    with pytest.raises(ValueError, match=r"x must have shape.*\(3, 5, 5\)"):
        conv_transpose2d_forward(x[0], w, b)


def test_channel_mismatch():
    x, w, b = _ok()
    with pytest.raises(ValueError, match=r"w must have shape \(F, C, KH, KW\).*\(2, 4, 3, 3\)"):
        conv2d_forward(x, np.zeros((2, 4, 3, 3)), b)
    with pytest.raises(ValueError, match=r"w must have shape \(C_in, C_out, KH, KW\)"):
        conv_transpose2d_forward(x, np.zeros((2, 3, 3, 3)), None)


def test_bad_bias():
    x, w, _ = _ok()
    with pytest.raises(ValueError, match=r"b must have shape \(2,\), got \(3,\)"):
        conv2d_forward(x, w, np.zeros(3))
    with pytest.raises(ValueError, match="b must have shape"):
        conv_transpose2d_forward(np.zeros((1, 2, 4, 4)), w, np.zeros(2))
    with pytest.raises(TypeError, match="b must have the dtype of x"):
        conv2d_forward(x, w, np.zeros(2, np.float32))


def test_kernel_larger_than_padded_input():
    x, w, b = _ok()
    with pytest.raises(ValueError, match=r"w kernel \(7, 7\).*padded input \(5, 5\)"):
        conv2d_forward(x, np.zeros((2, 3, 7, 7)), b)
    # padding makes it fit
    out, _ = conv2d_forward(x, np.zeros((2, 3, 7, 7)), b, padding=1)
    assert out.shape == (1, 2, 1, 1)
    # dilation makes a 3x3 kernel span 5 + 2 = 7 > 5
    with pytest.raises(ValueError, match="w kernel"):
        conv2d_naive(x, w, b, dilation=3)


@pytest.mark.parametrize("name,kw", [("stride", dict(stride=0)), ("stride", dict(stride=(1, -1))),
                                     ("padding", dict(padding=-1)), ("dilation", dict(dilation=0))])
def test_bad_hyper_parameters(name, kw):
    x, w, b = _ok()
    with pytest.raises(ValueError, match=name):
        conv2d_forward(x, w, b, **kw)
    with pytest.raises(ValueError, match=name):
        conv_transpose2d_forward(np.zeros((1, 2, 4, 4)), w, None, **kw)


def test_bad_types():
    x, w, b = _ok()
    with pytest.raises(TypeError, match="w must have the dtype of x"):
        conv2d_forward(x, w.astype(np.float32), b)
    with pytest.raises(TypeError, match="x must have a floating dtype"):
        conv2d_forward(x.astype(np.int64), w, b)
    with pytest.raises(TypeError, match="x must be a numpy.ndarray"):
        conv2d_forward(x.tolist(), w, b)
    with pytest.raises(TypeError, match="stride must be an int"):
        conv2d_forward(x, w, b, stride=1.5)


def test_output_padding():
    # output_padding adds rows/columns at the bottom/right: the same values as
    # without it, plus the extra entries (which receive only the bias, or the
    # stamps that reach them when padding > 0).
    rng = np.random.default_rng(10)
    x, w, b = _rand(rng, (1, 2, 3, 3)), _rand(rng, (2, 3, 3, 3)), _rand(rng, (3,))
    out0, _ = conv_transpose2d_forward(x, w, b, stride=2, padding=1)
    out1, _ = conv_transpose2d_forward(x, w, b, stride=2, padding=1, output_padding=(1, 0))
    assert out0.shape == (1, 3, 5, 5) and out1.shape == (1, 3, 6, 5)
    np.testing.assert_allclose(out1[:, :, :5], out0)
    np.testing.assert_allclose(out1, conv_transpose2d_naive(x, w, b, stride=2, padding=1,
                                                            output_padding=(1, 0)))
    with pytest.raises(ValueError, match="output_padding must be smaller"):
        conv_transpose2d_forward(x, w, b, stride=2, output_padding=2)


def test_transpose_padding_crops_everything():
    with pytest.raises(ValueError, match="padding"):
        conv_transpose2d_forward(np.zeros((1, 1, 1, 1)), np.zeros((1, 1, 2, 2)), None, padding=1)


def test_bad_dout():
    x, w, b = _ok()
    out, cache = conv2d_forward(x, w, b)
    with pytest.raises(ValueError, match=r"dout must have shape \(1, 2, 3, 3\)"):
        conv2d_backward(np.zeros((1, 2, 4, 4)), cache)
    with pytest.raises(TypeError, match=r"dout must have the dtype of x \(float64\), got float32"):
        conv2d_backward(out.astype(np.float32), cache)
    out, cache = conv_transpose2d_forward(np.zeros((1, 2, 4, 4)), w, None)
    with pytest.raises(ValueError, match="dout must have shape"):
        conv_transpose2d_backward(np.zeros((1, 3, 5, 5)), cache)
    with pytest.raises(TypeError, match="dout must have the dtype of x"):
        conv_transpose2d_backward(out.astype(np.float32), cache)


@pytest.mark.parametrize("budget", [1, 700, 5000])
def test_blocked_paths_equal_naive(monkeypatch, budget):
    # The fast paths unroll the columns in blocks of output rows or of whole
    # images; a small budget forces one-row blocks, a ragged last block,
    # multi-image blocks and the stride-1 row unrolling, which the default
    # budget never reaches on tiny inputs.
    import mrcnn_np.kernels.conv as conv

    monkeypatch.setattr(conv, "_BLOCK_BYTES", budget)
    rng = np.random.default_rng(11)
    x, w, b = _rand(rng, (3, 2, 9, 7)), _rand(rng, (3, 2, 3, 2)), _rand(rng, (3,))
    # strided (phases + per-tap unrolling) and stride-1 (row unrolling, large images)
    for kw in (dict(stride=(2, 1), padding=(1, 2), dilation=(1, 2)),
               dict(stride=1, padding=(1, 2), dilation=(2, 1)),
               dict(stride=1, padding=(3, 1), dilation=(2, 1))):  # dx as a forward conv
        out, cache = conv2d_forward(x, w, b, **kw)
        np.testing.assert_allclose(out, conv2d_naive(x, w, b, **kw), rtol=1e-12, atol=1e-12)
        dout = _rand(rng, out.shape)
        dx, dw, db = conv2d_backward(dout, cache)
        ndx, ndw, ndb = conv2d_backward_naive(dout, x, w, **kw)
        np.testing.assert_allclose(dx, ndx, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(dw, ndw, rtol=1e-12, atol=1e-12)
    wt = _rand(rng, (2, 3, 3, 2))
    kw = dict(stride=(2, 3), padding=(1, 0), output_padding=(1, 0))
    out, cache = conv_transpose2d_forward(x, wt, b, **kw)
    np.testing.assert_allclose(out, conv_transpose2d_naive(x, wt, b, **kw), rtol=1e-12, atol=1e-12)
    dout = _rand(rng, out.shape)
    dx, dw, _ = conv_transpose2d_backward(dout, cache)
    # the transposed conv's backward is a conv2d of dout: check it against the loops
    np.testing.assert_allclose(dx, conv2d_naive(dout, wt, None, stride=(2, 3), padding=(1, 0)),
                               rtol=1e-12, atol=1e-12)
    # the tiling transposed conv (stride = kernel, the mask head's) in image blocks
    wt2 = _rand(rng, (2, 3, 2, 2))
    out2, cache2 = conv_transpose2d_forward(x, wt2, b, stride=2)
    np.testing.assert_allclose(out2, conv_transpose2d_naive(x, wt2, b, stride=2), rtol=1e-12)
    dout2 = _rand(rng, out2.shape)
    dx2, dw2, _ = conv_transpose2d_backward(dout2, cache2)
    np.testing.assert_allclose(dx2, conv2d_naive(dout2, wt2, None, stride=2), rtol=1e-12)
    f2 = lambda: conv_transpose2d_naive(x, wt2, None, stride=2)  # noqa: E731
    assert relative_error(dw2, numeric_gradient(f2, wt2, dout2)) < 1e-6
    f = lambda: conv_transpose2d_naive(x, wt, None, **kw)  # noqa: E731
    idx = [(0, 0, 0, 0), (1, 2, 2, 1), (0, 1, 1, 0)]
    ndw = numeric_gradient(f, wt, dout, indices=idx)
    for i in idx:
        assert abs(dw[i] - ndw[i]) < 1e-6 * max(1.0, abs(ndw[i]))


@pytest.mark.parametrize("hw", [(1, 1), (2, 3), (6, 5)])
def test_pointwise_weight_gradient_paths_equal_naive(hw):
    # a 1x1 conv's weight gradient sums one (F, C) product per image; on tiny maps
    # (H*W < F*C / (F + C)) it is taken as one GEMM over all images instead
    # (_batched_outer): every branch must agree with the loops, for conv2d and
    # for the 1x1 transposed conv
    rng = np.random.default_rng(13)
    N, C, F = 3, 6, 5
    x, w, b = _rand(rng, (N, C) + hw), _rand(rng, (F, C, 1, 1)), _rand(rng, (F,))
    out, cache = conv2d_forward(x, w, b)
    dout = _rand(rng, out.shape)
    for got, want in zip(conv2d_backward(dout, cache), conv2d_backward_naive(dout, x, w)):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    wt = _rand(rng, (C, F, 1, 1))
    out, cache = conv_transpose2d_forward(x, wt, None)
    dout = _rand(rng, out.shape)
    dx, dw, _ = conv_transpose2d_backward(dout, cache)
    # the transposed conv is conv2d's input gradient; its weight gradient is
    # sum_n x[n] (C, HW) @ dout[n].T (F, HW) -> (C, F), the adjoint pairing
    want_dw = np.einsum("nchw,nfhw->cf", x, dout).reshape(C, F, 1, 1)
    np.testing.assert_allclose(dw, want_dw, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(dx, conv2d_naive(dout, wt, None), rtol=1e-12, atol=1e-12)


def test_fused_inference_conv_equals_conv_then_residual_then_relu():
    # ops.conv._conv2d_fused (the stages' inference convs): conv2d_forward's output, plus the
    # residual, clamped at 0, bit for bit
    from mrcnn_np.ops.conv import _conv2d_fused
    rng = np.random.default_rng(40)
    for stride, padding, k in ((1, 1, 3), (2, 1, 3), (1, 0, 1), (2, 0, 1), (2, 3, 7)):
        x = rng.standard_normal((2, 5, 13, 11)).astype(np.float32)
        w = rng.standard_normal((6, 5, k, k)).astype(np.float32)
        b = rng.standard_normal(6).astype(np.float32)
        out, _ = conv2d_forward(x, w, b, stride=stride, padding=padding)
        res = rng.standard_normal(out.shape).astype(np.float32)
        assert np.array_equal(_conv2d_fused(x, w, b, stride, padding), out)
        assert np.array_equal(_conv2d_fused(x, w, b, stride, padding, residual=res, relu=True),
                              np.maximum(out + res, 0))


@pytest.mark.parametrize("shape, k, stride, padding", [
    ((2, 5, 13, 11), 1, 1, 0),      # 1x1: one GEMM on x
    ((2, 5, 13, 11), 3, 2, 1),      # strided: the per-tap engine (its columns kept for the backward)
    ((3, 5, 14, 14), 3, 1, 1),      # small maps: the wide rows
    ((2, 3, 29, 31), 7, 2, 3),      # the stem's 7x7, stride 2
    ((1, 64, 100, 100), 3, 1, 1),   # large maps: the row-unrolled engine
])
def test_training_conv_bias_residual_relu_are_the_separate_passes_bit_for_bit(shape, k, stride, padding):
    # the stages' training convs apply the bias (ops.conv._conv2d_forward) and the residual and
    # ReLU (_conv2d_relu_forward) to each block of the output as its GEMM finishes: the same
    # bits as conv, + bias, + residual, relu as passes over the whole output, and the ReLU's
    # mask is relu_forward's, on every path of the engine
    from mrcnn_np.kernels import conv as kc
    from mrcnn_np.ops.activations import relu_forward
    from mrcnn_np.ops.conv import _conv2d_forward, _conv2d_relu_forward
    rng = np.random.default_rng(41)
    x = rng.standard_normal(shape).astype(np.float32)
    w = rng.standard_normal((6, shape[1], k, k)).astype(np.float32)
    b = rng.standard_normal(6).astype(np.float32)
    out, cache = _conv2d_forward(x, w, b, stride, padding)
    plain = kc.conv2d_forward(x, w, (stride, stride), (padding, padding), (1, 1), out.shape[2:])
    assert np.array_equal(out, plain + b.reshape(1, -1, 1, 1))
    assert cache.has_bias and cache.x is x and cache.w is w
    res = rng.standard_normal(out.shape).astype(np.float32)
    res.flat[::7] = np.nan  # NaN passes the ReLU and is not positive, as in relu_forward
    got, conv_cache, relu_cache = _conv2d_relu_forward(x, w, b, stride, padding, residual=res)
    want, want_cache = relu_forward(out + res)
    assert np.array_equal(got, want, equal_nan=True)
    assert np.array_equal(relu_cache.positive, want_cache.positive) and relu_cache.dtype == want_cache.dtype
    assert (conv_cache.cols is None) == (cache.cols is None)
    got, _, relu_cache = _conv2d_relu_forward(x, w, None, stride, padding)
    assert np.array_equal(got, np.maximum(plain, 0)) and np.array_equal(relu_cache.positive, plain > 0)
