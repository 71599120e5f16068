"""RoIAlign, level mapper and multi-level RoIAlign against hand values and the math.

Tiers: golden hand cases; exact properties (constant, linear ramp, shift);
fast == naive loops (hypothesis); float64 gradient checks and adjoint tests;
bad inputs.
"""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import mrcnn_np.kernels.roi_align as kernel
from mrcnn_np.gradcheck import adjoint_error, numeric_gradient, relative_error
from mrcnn_np.roi_align import (
    level_mapper,
    multiscale_roi_align_backward,
    multiscale_roi_align_forward,
    roi_align_backward,
    roi_align_forward,
    roi_align_naive,
    roi_pool_naive,
    roi_sample_points,
)

METHODS = ["matrix", "separable"]  # the two fast forms (roi_align_forward(method=...))


# ---------------------------------------------------------------------------
# golden cases
# ---------------------------------------------------------------------------


def test_golden_arange_unaligned_and_aligned():
    # x[h, w] = 5h + w. Box (1, 1, 3, 3), scale 1, 4x4 output, sampling_ratio 0:
    # roi 2 x 2 -> bin 0.5, grid ceil(2 / 4) = 1 sample per bin at the bin centre.
    # unaligned: start 1, first row y = 1 + 0.25 = 1.25,
    #   x = 1.25, 1.75, 2.25, 2.75 -> 5 * 1.25 + x = 7.5, 8, 8.5, 9.
    # aligned: start 1 - 0.5 = 0.5, y = 0.75, x = 0.75 .. 2.25 -> 3.75 + x = 4.5, 5, 5.5, 6.
    # The map is linear and every sample is inside, so bilinear is exact:
    # row p adds 5 * 0.5 = 2.5.
    x = np.arange(25, dtype=np.float64).reshape(1, 1, 5, 5)
    boxes = np.array([[0, 1, 1, 3, 3]], dtype=np.float64)
    out, _ = roi_align_forward(x, boxes, 4, sampling_ratio=0, aligned=False)
    np.testing.assert_allclose(out[0, 0, 0], [7.5, 8, 8.5, 9], rtol=0, atol=1e-12)
    np.testing.assert_allclose(out[0, 0], [[7.5, 8, 8.5, 9], [10, 10.5, 11, 11.5],
                                           [12.5, 13, 13.5, 14], [15, 15.5, 16, 16.5]], atol=1e-12)
    out, _ = roi_align_forward(x, boxes, 4, sampling_ratio=0, aligned=True)
    np.testing.assert_allclose(out[0, 0, 0], [4.5, 5, 5.5, 6], rtol=0, atol=1e-12)


def test_golden_out_of_range_rules():
    # 1 x 3 map [10, 20, 40] (H = 1, W = 3), one 1x1 bin, sampling_ratio 1.
    x = np.array([10.0, 20.0, 40.0]).reshape(1, 1, 1, 3)

    def one(x1, x2, y1=0.0, y2=1.0, aligned=False):
        b = np.array([[0, x1, y1, x2, y2]])
        return roi_align_forward(x, b, 1, sampling_ratio=1, aligned=aligned)[0][0, 0, 0, 0]

    # sample x = x1 + 0.5 * width, y = 0.5 -> y_low = 0 >= H - 1: the row is clamped.
    assert one(0.0, 1.0) == pytest.approx(15.0)  # x = 0.5: 0.5 * 10 + 0.5 * 20
    assert one(-1.4, -0.4) == pytest.approx(10.0)  # x = -0.9 in [-1, 0] -> 0 -> x[0]
    assert one(-1.6, -0.6) == 0.0  # x = -1.1 < -1 -> zero
    assert one(2.0, 3.0) == pytest.approx(40.0)  # x = 2.5: x_low = 2 >= W - 1 -> x[2]
    assert one(2.4, 3.4) == pytest.approx(40.0)  # x = 2.9 <= W
    assert one(2.6, 3.6) == 0.0  # x = 3.1 > W = 3 -> zero
    # a zero sample still counts: 2 samples along x, one at x = -1.5 (0), one at 0.5 (15)
    b = np.array([[0, -2.0, 0.0, 1.0, 1.0]])
    out = roi_align_forward(x, b, 1, sampling_ratio=2, aligned=False)[0]
    # x samples: -2 + (0.5, 1.5) * 1.5 = -1.25 (zero), 0.25 (0.75*10 + 0.25*20 = 12.5);
    # y samples 0.25, 0.75 (row clamped). Mean over 4 samples = (0 + 12.5) * 2 / 4.
    assert out[0, 0, 0, 0] == pytest.approx(6.25)


def test_unaligned_clamps_tiny_box_to_one_cell_aligned_does_not():
    x = np.arange(25, dtype=np.float64).reshape(1, 1, 5, 5)
    tiny = np.array([[0, 2.0, 2.0, 2.0, 2.0]])
    # unaligned: width/height clamped to 1 -> 1 sample at (2.5, 2.5) -> 5*2.5 + 2.5 = 15
    out, _ = roi_align_forward(x, tiny, 1, sampling_ratio=0, aligned=False)
    assert out[0, 0, 0, 0] == pytest.approx(15.0)
    # aligned: size 0 -> adaptive grid ceil(0) = 0 samples -> 0
    out, _ = roi_align_forward(x, tiny, 1, sampling_ratio=0, aligned=True)
    assert out[0, 0, 0, 0] == 0.0
    # aligned with a fixed grid: every sample at (1.5, 1.5) -> 5*1.5 + 1.5 = 9
    out, _ = roi_align_forward(x, tiny, 1, sampling_ratio=2, aligned=True)
    assert out[0, 0, 0, 0] == pytest.approx(9.0)


def test_roi_sample_points_are_the_samples_averaged():
    # on a map linear in x and y, every bin is f at the mean of its samples (exact),
    # and the samples follow start + p*bin + (i + 1/2)*bin/grid
    yy, xx = np.mgrid[0:12, 0:12]
    fmap = (0.7 * yy - 1.3 * xx + 2.0)[None, None].astype(np.float64)
    box = np.array([2.3, 1.9, 9.4, 8.8])
    ys, xs = roi_sample_points(box, (3, 2), spatial_scale=1.0, sampling_ratio=3, aligned=True)
    # y: start 1.9 - 0.5 = 1.4, bin 6.9 / 3 = 2.3, grid 3 -> 1.4 + p*2.3 + (i + 0.5)*2.3/3
    np.testing.assert_allclose(ys[1], 1.4 + 2.3 + (np.arange(3) + 0.5) * 2.3 / 3, atol=1e-12)
    out, _ = roi_align_forward(fmap, np.concatenate([[0.0], box])[None], (3, 2),
                               sampling_ratio=3, aligned=True)
    want = 0.7 * ys.mean(axis=1)[:, None] - 1.3 * xs.mean(axis=1)[None, :] + 2.0
    np.testing.assert_allclose(out[0, 0], want, atol=1e-12)


def test_roi_pool_naive_golden():
    # box (0, 0, 4, 4) -> rounded cells 0..4, 5 x 5, bin 2.5: rows/cols [0, 3) and [2, 5)
    x = np.arange(25, dtype=np.float64).reshape(1, 1, 5, 5)
    out = roi_pool_naive(x, np.array([[0, 0, 0, 4, 4.0]]), 2)
    np.testing.assert_array_equal(out[0, 0], [[12, 14], [22, 24]])


# ---------------------------------------------------------------------------
# exact properties
# ---------------------------------------------------------------------------

inside_box = st.tuples(
    st.floats(0.0, 6.0), st.floats(0.0, 6.0), st.floats(0.5, 6.0), st.floats(0.5, 6.0)
)


@given(box=inside_box, value=st.floats(-5, 5), sr=st.integers(-1, 3),
       aligned=st.booleans(), size=st.integers(1, 4))
@settings(max_examples=30)
def test_constant_map_gives_the_constant(box, value, sr, aligned, size):
    x1, y1, w, h = box
    off = 0.5 if aligned else 0.0
    # keep every sample in [0, H-1] after the aligned shift (unaligned grows to >= 1)
    x1, y1 = x1 + off, y1 + off
    fmap = np.full((1, 2, 14, 14), value)
    out, _ = roi_align_forward(fmap, np.array([[0, x1, y1, x1 + w, y1 + h]]), size,
                               sampling_ratio=sr, aligned=aligned)
    np.testing.assert_allclose(out, value, rtol=1e-12, atol=1e-12)


@given(box=inside_box, coef=st.tuples(st.floats(-3, 3), st.floats(-3, 3), st.floats(-3, 3)),
       sr=st.integers(-1, 3), aligned=st.booleans(), ph=st.integers(1, 4), pw=st.integers(1, 4),
       scale=st.sampled_from([1.0, 0.5]))
@settings(max_examples=40)
def test_linear_map_is_exact_at_the_bin_centre(box, coef, sr, aligned, ph, pw, scale):
    # f(y, x) = a y + b x + c. Bilinear interpolation reproduces a linear function, and
    # the sample mean of bin p is start + (p + 1/2) * bin (the samples are symmetric
    # about the bin centre), so every output equals f at its bin centre.
    a, b, c = coef
    hh, ww = 16, 16
    yy, xx = np.meshgrid(np.arange(hh), np.arange(ww), indexing="ij")
    fmap = (a * yy + b * xx + c)[None, None].astype(np.float64)
    x1, y1, w, h = box
    off = 0.5 if aligned else 0.0
    x1, y1 = x1 + off, y1 + off
    bx = np.array([[0, x1, y1, x1 + w, y1 + h]]) / np.array([1, scale, scale, scale, scale])
    out, _ = roi_align_forward(fmap, bx, (ph, pw), spatial_scale=scale, sampling_ratio=sr,
                               aligned=aligned)
    w_eff, h_eff = (w, h) if aligned else (max(w, 1.0), max(h, 1.0))
    cy = (y1 - off) + (np.arange(ph) + 0.5) * h_eff / ph
    cx = (x1 - off) + (np.arange(pw) + 0.5) * w_eff / pw
    want = a * cy[:, None] + b * cx[None, :] + c
    np.testing.assert_allclose(out[0, 0], want, rtol=1e-10, atol=1e-10)


@given(box=inside_box, sr=st.integers(-1, 3), aligned=st.booleans(),
       scale=st.sampled_from([1.0, 0.5, 0.25]), seed=st.integers(0, 2**16))
@settings(max_examples=30)
def test_shift_by_one_cell_is_invariant(box, sr, aligned, scale, seed):
    rng = np.random.default_rng(seed)
    fmap = rng.standard_normal((1, 3, 12, 12))
    shifted = np.zeros((1, 3, 13, 13))
    shifted[:, :, 1:, 1:] = fmap  # shifted[h + 1, w + 1] = fmap[h, w]
    # corners on a grid of 1/64: the shift by one cell and the division by the scale are then
    # exact, so both boxes have the same size to the last bit (else the adaptive grid
    # ceil(size / bins) of a size at a multiple of 3 can round up for one box and not the other)
    x1, y1, w, h = (round(v * 64) / 64 for v in box)
    off = 0.5 if aligned else 0.0
    x1, y1 = x1 + off, y1 + off  # every sample at >= 0 on fmap: no clamp at 0 / -1
    b = np.array([[0, x1, y1, x1 + w, y1 + h]]) / np.array([1, scale, scale, scale, scale])
    one_cell = np.array([[0, 1, 1, 1, 1]]) / scale  # one feature cell in image pixels
    kw = dict(spatial_scale=scale, sampling_ratio=sr, aligned=aligned)
    out, _ = roi_align_forward(fmap, b, 3, **kw)
    out_shifted, _ = roi_align_forward(shifted, b + one_cell, 3, **kw)
    # beyond the last row both maps clamp to the same values (fmap[11] = shifted[12])
    np.testing.assert_allclose(out_shifted, out, rtol=1e-12, atol=1e-12)
    assert np.abs(out).max() > 0 or (aligned and sr <= 0)


def test_shift_invariance_aligned_interior():
    rng = np.random.default_rng(3)
    fmap = rng.standard_normal((1, 2, 10, 10))
    shifted = np.zeros((1, 2, 11, 11))
    shifted[:, :, 1:, 1:] = fmap
    b = np.array([[0, 1.37, 2.11, 6.83, 5.29]])
    for sr in (-1, 1, 2, 3):
        out, _ = roi_align_forward(fmap, b, (3, 2), sampling_ratio=sr, aligned=True)
        out_s, _ = roi_align_forward(shifted, b + [0, 1, 1, 1, 1], (3, 2), sampling_ratio=sr,
                                     aligned=True)
        np.testing.assert_allclose(out_s, out, rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------------------
# fast == naive
# ---------------------------------------------------------------------------


@st.composite
def roi_problem(draw):
    n = draw(st.integers(1, 2))
    c = draw(st.integers(1, 3))
    h = draw(st.integers(1, 9))
    w = draw(st.integers(1, 9))
    scale = draw(st.sampled_from([1.0, 0.5, 0.25, 1 / 3]))
    k = draw(st.integers(0, 5))
    coord = st.floats(-12.0, 40.0, allow_nan=False)
    rows = []
    for _ in range(k):
        kind = draw(st.sampled_from(["any", "inside", "degenerate", "outside"]))
        x1, y1, x2, y2 = (draw(coord) for _ in range(4))
        if kind == "inside":
            x1, x2 = sorted((x1 % (w / scale), x2 % (w / scale)))
            y1, y2 = sorted((y1 % (h / scale), y2 % (h / scale)))
        elif kind == "degenerate":
            x2, y2 = x1, y1
        elif kind == "outside":
            x1, x2 = -30.0 - abs(x1), -25.0
        rows.append([draw(st.integers(0, n - 1)), x1, y1, x2, y2])
    boxes = np.array(rows, dtype=np.float64).reshape(k, 5)
    seed = draw(st.integers(0, 2**16))
    x = np.random.default_rng(seed).standard_normal((n, c, h, w))
    size = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    sr = draw(st.integers(-1, 3))
    aligned = draw(st.booleans())
    return x, boxes, size, dict(spatial_scale=scale, sampling_ratio=sr, aligned=aligned)


@given(problem=roi_problem(), method=st.sampled_from(METHODS))
@settings(max_examples=80)
def test_fast_equals_naive(problem, method):
    x, boxes, size, kw = problem
    fast, cache = roi_align_forward(x, boxes, size, method=method, **kw)
    naive = roi_align_naive(x, boxes, size, **kw)
    assert fast.shape == naive.shape == (boxes.shape[0], x.shape[1], *size)
    np.testing.assert_allclose(fast, naive, rtol=1e-12, atol=1e-12)
    assert (cache.separable is not None) == (method == "separable")


def test_fast_equals_naive_float32_and_keeps_dtype():
    rng = np.random.default_rng(7)
    x = rng.standard_normal((2, 4, 11, 13)).astype(np.float32)
    boxes = np.column_stack([rng.integers(0, 2, 20), rng.uniform(-10, 60, (20, 4))])
    boxes[:, 3:] = np.maximum(boxes[:, 3:], boxes[:, 1:3])
    for sr in (-1, 2):
        fast, cache = roi_align_forward(x, boxes.astype(np.float32), (5, 3), spatial_scale=0.25,
                                        sampling_ratio=sr)
        naive = roi_align_naive(x, boxes.astype(np.float32), (5, 3), spatial_scale=0.25,
                                sampling_ratio=sr)
        assert fast.dtype == np.float32
        np.testing.assert_allclose(fast, naive, rtol=1e-5, atol=1e-5)
        dx = roi_align_backward(np.ones_like(fast), cache)
        assert dx.dtype == np.float32 and dx.shape == x.shape


@pytest.mark.parametrize("method", METHODS)
def test_float16_keeps_dtype(method):
    # scipy's sparse kernels have no float16: they compute in float32, the result is cast back
    rng = np.random.default_rng(13)
    x = rng.standard_normal((1, 2, 9, 9)).astype(np.float16)
    boxes = np.array([[0, 0.7, 1.3, 6.9, 7.7], [0, 2.2, -1.4, 9.1, 4.3]])
    out, cache = roi_align_forward(x, boxes, 3, sampling_ratio=2, method=method)
    dx = roi_align_backward(np.ones_like(out), cache)
    assert out.dtype == dx.dtype == np.float16
    want = roi_align_naive(x.astype(np.float64), boxes, 3, sampling_ratio=2)
    np.testing.assert_allclose(out, want, rtol=0, atol=4e-3)  # float16 spacing at 2 is 2e-3


@pytest.mark.parametrize("method", METHODS)
def test_mixed_grid_sizes_in_one_call(method):
    # adaptive sampling with boxes of very different sizes: several grids at once
    rng = np.random.default_rng(11)
    x = rng.standard_normal((2, 2, 20, 20))
    boxes = np.array([[0, 1.3, 2.2, 3.1, 3.9], [1, 0.2, 0.7, 19.1, 18.3],
                      [0, 4.4, 1.1, 11.7, 19.9], [1, 2.5, 2.5, 2.5, 2.5],
                      [1, -40.3, -30.1, 60.2, 55.5], [0, 3.3, 4.4, 3.9, 19.0]])
    for aligned in (False, True):
        fast, _ = roi_align_forward(x, boxes, (2, 3), sampling_ratio=-1, aligned=aligned,
                                    method=method)
        naive = roi_align_naive(x, boxes, (2, 3), sampling_ratio=-1, aligned=aligned)
        np.testing.assert_allclose(fast, naive, rtol=1e-12, atol=1e-12)


def test_chunked_build_equals_naive(monkeypatch):
    # roi_align_matrix builds its entries a few boxes at a time (bounded temporaries);
    # force chunks of one or two boxes on a small problem and compare with the naive
    # loops, forward and backward
    rng = np.random.default_rng(12)
    x = rng.standard_normal((2, 3, 12, 10))
    boxes = np.column_stack([rng.integers(0, 2, 17), rng.uniform(-3, 14, (17, 4))])
    boxes[:, 3:] = np.maximum(boxes[:, 3:], boxes[:, 1:3])
    dout = rng.standard_normal((17, 3, 3, 2))
    _, cache1 = roi_align_forward(x, boxes, (3, 2), sampling_ratio=-1, method="matrix")
    dx1 = roi_align_backward(dout, cache1)
    monkeypatch.setattr(kernel, "_CHUNK_ENTRIES", 200)
    out, cache = roi_align_forward(x, boxes, (3, 2), sampling_ratio=-1, method="matrix")
    naive = roi_align_naive(x, boxes, (3, 2), sampling_ratio=-1)
    np.testing.assert_allclose(out, naive, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(roi_align_backward(dout, cache), dx1, rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------------------
# gradients
# ---------------------------------------------------------------------------


def _nice_free_boxes():
    # non-nice coordinates: no sample lands on an integer cell coordinate
    return np.array([[0, 1.37, 0.91, 7.63, 5.17], [1, -0.71, 2.29, 4.43, 9.87],
                     [1, 3.13, 3.31, 3.79, 4.07], [0, 8.21, -1.9, 13.3, 3.7]])


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("sr,aligned", [(2, False), (-1, True), (3, True), (0, False)])
def test_backward_matches_finite_differences(sr, aligned, method):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 2, 9, 11))
    boxes = _nice_free_boxes()
    out, cache = roi_align_forward(x, boxes, (3, 2), spatial_scale=0.9, sampling_ratio=sr,
                                   aligned=aligned, method=method)
    dout = rng.standard_normal(out.shape)
    dout_copy = dout.copy()
    dx = roi_align_backward(dout, cache)
    np.testing.assert_array_equal(dout, dout_copy)  # dout not modified

    def f():
        return roi_align_forward(x, boxes, (3, 2), spatial_scale=0.9, sampling_ratio=sr,
                                 aligned=aligned, method=method)[0]

    # RoIAlign is linear in x, so a sample of entries suffices here (the adjoint test and
    # the naive Jacobian test below cover every entry): 40 that receive gradient, 20 any
    nz = np.argwhere(dx != 0)
    pick = [tuple(i) for i in nz[rng.choice(len(nz), 40, replace=False)]]
    pick += [tuple(int(rng.integers(0, s)) for s in x.shape) for _ in range(20)]
    num = numeric_gradient(f, x, dout, indices=pick)
    sel = tuple(np.array(pick).T)
    assert relative_error(dx[sel], num[sel]) < 1e-6
    assert np.abs(dx).max() > 0


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("sr,aligned", [(2, False), (-1, True), (1, False)])
def test_adjoint(sr, aligned, method):
    rng = np.random.default_rng(1)
    shape = (2, 3, 8, 10)
    boxes = _nice_free_boxes()
    kw = dict(spatial_scale=0.8, sampling_ratio=sr, aligned=aligned, method=method)
    _, cache = roi_align_forward(np.zeros(shape), boxes, (4, 3), **kw)

    def forward(x):
        return roi_align_forward(x, boxes, (4, 3), **kw)[0]

    err = adjoint_error(forward, lambda y: roi_align_backward(y, cache), shape,
                        (len(boxes), 3, 4, 3), rng=rng)
    assert err < 1e-12


def test_backward_equals_naive_jacobian_transpose():
    # dinput[n, c, h, w] = sum over outputs of dout * d out / d input, built column by
    # column from the naive forward (unit feature maps).
    rng = np.random.default_rng(5)
    shape = (1, 1, 5, 6)
    boxes = np.array([[0, 0.3, -0.8, 4.6, 3.3], [0, 2.2, 1.1, 7.9, 6.6]])
    kw = dict(spatial_scale=1.0, sampling_ratio=-1, aligned=False)
    out, cache = roi_align_forward(np.zeros(shape), boxes, 2, **kw)
    dout = rng.standard_normal(out.shape)
    want = np.zeros(shape)
    for idx in np.ndindex(*shape):
        e = np.zeros(shape)
        e[idx] = 1.0
        want[idx] = np.sum(roi_align_naive(e, boxes, 2, **kw) * dout)
    np.testing.assert_allclose(roi_align_backward(dout, cache), want, rtol=1e-12, atol=1e-12)


def test_method_choice_follows_the_cost():
    # many channels, small grids (the box head): the full matrix; one channel and large
    # adaptive grids (mask targets): the separable form
    rng = np.random.default_rng(8)
    feat = np.zeros((1, 256, 50, 50), dtype=np.float32)
    xy = rng.uniform(0, 400, (64, 2))
    boxes = np.column_stack([np.zeros(64), xy, xy + rng.uniform(16, 400, (64, 2))])
    _, cache = roi_align_forward(feat, boxes, 7, spatial_scale=1 / 16, sampling_ratio=2)
    assert cache.separable is None and cache.matrix is not None
    masks = np.zeros((4, 1, 300, 300), dtype=np.float32)
    rois = np.column_stack([np.arange(4), np.full((4, 2), 10.0), np.full((4, 2), 250.0)])
    _, cache = roi_align_forward(masks, rois, 28, sampling_ratio=-1)
    assert cache.separable is not None and cache.matrix is None


@pytest.mark.parametrize("method", METHODS)
def test_float32_separable_and_matrix_agree(method):
    rng = np.random.default_rng(9)
    masks = (rng.random((3, 1, 60, 70)) > 0.5).astype(np.float32)
    rois = np.column_stack([rng.integers(0, 3, 9), rng.uniform(-5, 30, (9, 2)),
                            rng.uniform(30, 75, (9, 2))]).astype(np.float32)
    out, cache = roi_align_forward(masks, rois, 14, sampling_ratio=-1, method=method)
    assert out.dtype == np.float32
    want = roi_align_naive(masks.astype(np.float64), rois.astype(np.float64), 14,
                           sampling_ratio=-1)
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-6)
    dx = roi_align_backward(np.ones_like(out), cache)
    assert dx.dtype == np.float32 and dx.shape == masks.shape


@pytest.mark.parametrize("method", METHODS)
def test_empty_boxes(method):
    x = np.ones((2, 3, 4, 4), dtype=np.float32)
    out, cache = roi_align_forward(x, np.zeros((0, 5), dtype=np.float32), (7, 5), method=method)
    assert out.shape == (0, 3, 7, 5) and out.dtype == np.float32
    dx = roi_align_backward(out, cache)
    assert dx.shape == x.shape and not dx.any()
    assert roi_align_naive(x, np.zeros((0, 5)), 2).shape == (0, 3, 2, 2)
    # no channels
    out, cache = roi_align_forward(np.zeros((2, 0, 5, 5)), np.array([[1, 0, 0, 3, 3.0]]), 2,
                                   method=method)
    assert out.shape == (1, 0, 2, 2) and roi_align_backward(out, cache).shape == (2, 0, 5, 5)


# ---------------------------------------------------------------------------
# level mapper
# ---------------------------------------------------------------------------


def test_level_mapper_golden():
    # floor(4 + log2(s / 224) + 1e-6): 112 -> 3, 224 -> 4, 448 -> 5,
    # 10 -> floor(4 - 4.49) = -1 -> clamped 2, 2000 -> floor(7.16) -> clamped 5
    sides = np.array([112.0, 224.0, 448.0, 10.0, 2000.0])
    boxes = np.column_stack([np.full(5, 3.0), np.full(5, 7.0), 3.0 + sides, 7.0 + sides])
    np.testing.assert_array_equal(level_mapper(boxes), [3, 4, 5, 2, 5])
    assert level_mapper(boxes).dtype == np.int64
    # rectangles use sqrt(area): 56 x 224 -> sqrt = 112 -> level 3
    assert level_mapper(np.array([[0, 0, 56.0, 224.0]]))[0] == 3
    # just below a power of two goes down a level
    assert level_mapper(np.array([[0, 0, 223.9, 223.9]]))[0] == 3
    # other clamps; a zero-area box goes to k_min without a warning
    np.testing.assert_array_equal(
        level_mapper(np.array([[0, 0, 10, 10.0], [0, 0, 3000, 3000.0], [5, 5, 5, 9.0]]),
                     k_min=3, k_max=6),
        [3, 6, 3])
    assert level_mapper(np.zeros((0, 4))).shape == (0,)


# ---------------------------------------------------------------------------
# multi-level RoIAlign
# ---------------------------------------------------------------------------

SCALES = (1 / 4, 1 / 8, 1 / 16, 1 / 32)


def _pyramid(rng, n=2, c=2, size=512, dtype=np.float64):
    return [rng.standard_normal((n, c, int(size * s), int(size * s))).astype(dtype) for s in SCALES]


def _level_boxes(rng):
    # sides chosen to land on levels 2, 3, 4, 5 (and a few near the boundaries)
    sides = np.array([40.3, 130.7, 250.9, 470.1, 95.3, 310.7, 20.9, 500.3, 170.3])
    x1 = rng.uniform(0, 30, len(sides))
    y1 = rng.uniform(0, 30, len(sides))
    bidx = np.arange(len(sides)) % 2
    return np.column_stack([bidx, x1, y1, x1 + sides, y1 + sides * 0.83])


def test_multiscale_each_box_from_its_level_in_order():
    rng = np.random.default_rng(2)
    feats = _pyramid(rng)
    boxes = _level_boxes(rng)
    out, cache = multiscale_roi_align_forward(feats, boxes, (7, 6), scales=SCALES,
                                              sampling_ratio=2)
    levels = level_mapper(boxes[:, 1:])
    assert set(levels.tolist()) == {2, 3, 4, 5}
    assert out.shape == (len(boxes), 2, 7, 6)
    for k in range(len(boxes)):
        lvl = levels[k] - 2
        want = roi_align_naive(feats[lvl], boxes[k:k + 1], (7, 6), spatial_scale=SCALES[lvl],
                               sampling_ratio=2, aligned=False)
        np.testing.assert_allclose(out[k:k + 1], want, rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(cache.levels, levels)


def test_multiscale_backward():
    rng = np.random.default_rng(4)
    feats = _pyramid(rng, n=2, c=1, size=256)
    boxes = _level_boxes(rng) * np.array([1, 0.5, 0.5, 0.5, 0.5])
    out, cache = multiscale_roi_align_forward(feats, boxes, 3, scales=SCALES, sampling_ratio=2)
    dout = rng.standard_normal(out.shape)
    grads = multiscale_roi_align_backward(dout, cache)
    assert [g.shape for g in grads] == [f.shape for f in feats]
    # adjoint over the whole pyramid (flattened)
    sizes = [f.size for f in feats]

    def split(v):
        parts = np.split(v, np.cumsum(sizes)[:-1])
        return [p.reshape(f.shape) for p, f in zip(parts, feats)]

    def forward(v):
        return multiscale_roi_align_forward(split(v), boxes, 3, scales=SCALES)[0]

    def adjoint(y):
        return np.concatenate([g.ravel() for g in multiscale_roi_align_backward(y, cache)])

    assert adjoint_error(forward, adjoint, (sum(sizes),), out.shape, rng=rng) < 1e-12
    # finite differences on the entries that receive gradient, plus random ones, per level
    for lvl, (f, g) in enumerate(zip(feats, grads)):
        nz = np.argwhere(g != 0)
        pick = [tuple(i) for i in nz[rng.choice(len(nz), min(12, len(nz)), replace=False)]] \
            if len(nz) else []
        pick += [tuple(rng.integers(0, s) for s in f.shape) for _ in range(4)]

        def fn():
            return multiscale_roi_align_forward(feats, boxes, 3, scales=SCALES)[0]

        num = numeric_gradient(fn, f, dout, indices=pick)
        sel = tuple(np.array(pick).T)
        assert relative_error(g[sel], num[sel]) < 1e-6


def test_multiscale_empty_level_and_no_boxes():
    rng = np.random.default_rng(6)
    feats = _pyramid(rng, n=1, c=2, size=128, dtype=np.float32)
    boxes = np.array([[0, 10.0, 10.0, 30.0, 30.0]], dtype=np.float32)  # level 2 only
    out, cache = multiscale_roi_align_forward(feats, boxes, 2, scales=SCALES)
    assert out.dtype == np.float32
    grads = multiscale_roi_align_backward(np.ones_like(out), cache)
    assert grads[0].any() and not any(g.any() for g in grads[1:])
    out, cache = multiscale_roi_align_forward(feats, np.zeros((0, 5), np.float32), 2,
                                              scales=SCALES)
    assert out.shape == (0, 2, 2, 2)
    assert all(not g.any() for g in multiscale_roi_align_backward(out, cache))


# ---------------------------------------------------------------------------
# bad inputs
# ---------------------------------------------------------------------------


def test_bad_inputs():
    x = np.zeros((2, 1, 5, 5))
    ok = np.array([[0, 1, 1, 3, 3.0]])
    with pytest.raises(ValueError, match="boxes"):
        roi_align_forward(x, np.zeros((3, 4)), 2)
    with pytest.raises(ValueError, match="batch index"):
        roi_align_forward(x, np.array([[2, 1, 1, 3, 3.0]]), 2)
    with pytest.raises(ValueError, match="batch index"):
        roi_align_forward(x, np.array([[-1, 1, 1, 3, 3.0]]), 2)
    with pytest.raises(ValueError, match="integer-valued"):
        roi_align_forward(x, np.array([[0.5, 1, 1, 3, 3.0]]), 2)
    with pytest.raises(ValueError, match="output_size"):
        roi_align_forward(x, ok, 0)
    with pytest.raises(ValueError, match="output_size"):
        roi_align_forward(x, ok, (2, 0))
    with pytest.raises(ValueError, match="spatial_scale"):
        roi_align_forward(x, ok, 2, spatial_scale=0.0)
    with pytest.raises(ValueError, match="input"):
        roi_align_forward(np.zeros((1, 5, 5)), ok, 2)
    with pytest.raises(ValueError, match="input"):
        roi_align_forward(np.zeros((2, 1, 0, 5)), ok, 2)
    with pytest.raises(ValueError, match="boxes"):
        roi_align_forward(x, np.array([[0, np.nan, 1, 3, 3.0]]), 2)
    with pytest.raises(TypeError, match="input"):
        roi_align_forward(np.zeros((1, 1, 5, 5), dtype=np.int64), ok, 2)
    with pytest.raises(ValueError, match="boxes"):
        roi_align_naive(x, np.zeros((3, 6)), 2)
    with pytest.raises(ValueError, match="boxes"):
        level_mapper(np.zeros((3, 5)))
    with pytest.raises(ValueError, match="boxes must be finite"):
        level_mapper(np.array([[0, 0, np.nan, 10.0]]))
    with pytest.raises(TypeError, match="sampling_ratio"):
        roi_align_forward(x, ok, 2, sampling_ratio=1.5)
    with pytest.raises(TypeError, match="aligned"):
        roi_align_forward(x, ok, 2, aligned=1)
    with pytest.raises(ValueError, match="method must be None, 'matrix' or 'separable'"):
        roi_align_forward(x, ok, 2, method="dense")
    with pytest.raises(ValueError, match="box must have shape"):
        roi_sample_points(np.zeros(5), 2)
    with pytest.raises(TypeError, match="sampling_ratio"):
        roi_sample_points(np.array([1, 1, 3, 3.0]), 2, sampling_ratio=1.5)
    _, cache = roi_align_forward(x, ok, 2)
    with pytest.raises(ValueError, match="dout"):
        roi_align_backward(np.zeros((1, 1, 3, 3)), cache)
    feats = [np.zeros((1, 1, 8, 8)), np.zeros((1, 1, 4, 4))]
    with pytest.raises(ValueError, match="scales"):
        multiscale_roi_align_forward(feats, ok, 2, scales=(1 / 4,))
    with pytest.raises(ValueError, match="scales"):
        multiscale_roi_align_forward(feats, ok, 2, scales=(1 / 4, 1 / 16))
    with pytest.raises(ValueError, match="boxes"):
        multiscale_roi_align_forward(feats, np.zeros((1, 4)), 2, scales=(1 / 4, 1 / 8))
    with pytest.raises(ValueError, match="boxes must be finite"):
        multiscale_roi_align_forward(feats, np.array([[0, 0, 0, np.nan, 3.0]]), 2,
                                     scales=(1 / 4, 1 / 8))
    with pytest.raises(TypeError, match="sampling_ratio"):  # checked even with no boxes
        multiscale_roi_align_forward(feats, np.zeros((0, 5)), 2, scales=(1 / 4, 1 / 8),
                                     sampling_ratio=1.5)
