"""The speed engines of mrcnn_np.kernels, called directly, against the naive references.

A kernel trusts its inputs and does no checks, so these tests give it only
valid arguments: random shapes, float32 and float64, every path (tiny block
budgets send small problems through the paths that the default budget keeps
for large inputs). The reference is always the stage module's ``*_naive``
loop version (computed in float64); float64 must agree to rounding, float32
to float32 accuracy.
"""
import threading

import numpy as np
import pytest

import mrcnn_np.kernels.conv as kconv
import mrcnn_np.kernels.elementwise as kelem
import mrcnn_np.kernels.iou as kiou
import mrcnn_np.kernels.nms as knms
import mrcnn_np.kernels.roi_align as kroi
from mrcnn_np.boxes import _threshold_as, batched_nms_naive, nms_naive
from mrcnn_np.ops.conv import (conv2d_backward_naive, conv2d_forward, conv2d_naive, conv_output_size,
                               conv_transpose2d_naive)
from mrcnn_np.roi_align import roi_align_naive

DTYPES = [np.float32, np.float64]


def _tol(dtype):
    return dict(rtol=1e-12, atol=1e-12) if dtype == np.float64 else dict(rtol=2e-4, atol=2e-4)


def _rand(rng, shape, dtype=np.float64):
    return (rng.uniform(0.5, 1.5, shape) * rng.choice([-1.0, 1.0], shape)).astype(dtype)


# --------------------------------------------------------------------------- conv


def _conv_problem(rng, *, transposed=False):
    """Random conv hyper-parameters whose kernel fits the padded input."""
    N, C, F = (int(v) for v in rng.integers(1, 4, 3))
    KH, KW = (int(v) for v in rng.integers(1, 5, 2))
    stride = tuple(int(v) for v in rng.integers(1, 4, 2))
    padding = tuple(int(v) for v in rng.integers(0, 3, 2))
    dilation = tuple(int(v) for v in rng.integers(1, 3, 2))
    if rng.random() < 0.25:  # the tiling transposed conv and the pointwise conv
        KH, KW = (1, 1) if rng.random() < 0.5 else (KH, KW)
        stride, padding, dilation = ((KH, KW) if transposed else (1, 1)), (0, 0), (1, 1)
    H = int(rng.integers(max(1, dilation[0] * (KH - 1) + 1 - 2 * padding[0]), 12))
    W = int(rng.integers(max(1, dilation[1] * (KW - 1) + 1 - 2 * padding[1]), 12))
    if transposed:  # the output must not be cropped away by the padding
        padding = tuple(min(p, ((n - 1) * s + d * (k - 1)) // 2)
                        for p, n, s, d, k in zip(padding, (H, W), stride, dilation, (KH, KW)))
    return N, C, H, W, F, KH, KW, stride, padding, dilation


def _out_hw(H, W, KH, KW, stride, padding, dilation):
    """(Ho, Wo) of a conv of an H x W input, from ops.conv_output_size."""
    return tuple(conv_output_size(n, k, stride=st, padding=pa, dilation=di)
                 for n, k, st, pa, di in zip((H, W), (KH, KW), stride, padding, dilation))


def _set_block_budget(monkeypatch, budget):
    """budget None: the engine's own block sizes; else tiny byte budgets that send even small
    problems through the row-blocked and per-block paths."""
    if budget is not None:
        monkeypatch.setattr(kconv, "_BLOCK_BYTES", budget)
        monkeypatch.setattr(kconv, "_CACHE_BLOCK_BYTES", budget // 2 + 1)


def _spy_paths(monkeypatch):
    """Count the calls of each engine path of kernels.conv."""
    seen = {}
    for name in ("_gemm_rows", "_gemm_im2col", "_gemm_wide", "_gemm_col2im", "_batched_outer", "_is_tiling"):
        real = getattr(kconv, name)

        def spy(*args, _real=real, _name=name, **kw):
            out = _real(*args, **kw)
            seen[_name] = seen.get(_name, 0) + (out is not False)
            return out
        monkeypatch.setattr(kconv, name, spy)
    return seen


@pytest.mark.parametrize("budget", [None, 1, 700])
@pytest.mark.parametrize("dtype", DTYPES)
def test_conv2d_kernel_equals_naive(dtype, budget, monkeypatch):
    _set_block_budget(monkeypatch, budget)
    seen = _spy_paths(monkeypatch)
    rng = np.random.default_rng([1, budget or 0])
    for _ in range(25):
        N, C, H, W, F, KH, KW, s, p, d = _conv_problem(rng)
        x, w = _rand(rng, (N, C, H, W)), _rand(rng, (F, C, KH, KW))
        Ho, Wo = _out_hw(H, W, KH, KW, s, p, d)
        out = kconv.conv2d_forward(x.astype(dtype), w.astype(dtype), s, p, d, (Ho, Wo))
        assert out.dtype == dtype and out.shape == (N, F, Ho, Wo)
        np.testing.assert_allclose(out, conv2d_naive(x, w, None, stride=s, padding=p, dilation=d),
                                   **_tol(dtype))
        dout = _rand(rng, out.shape)
        dx, dw = kconv.conv2d_backward(dout.astype(dtype), x.astype(dtype), w.astype(dtype), s, p, d)
        ndx, ndw, _ = conv2d_backward_naive(dout, x, w, stride=s, padding=p, dilation=d)
        assert dx.dtype == dw.dtype == dtype
        np.testing.assert_allclose(dx, ndx, **_tol(dtype))
        np.testing.assert_allclose(dw, ndw, **_tol(dtype))
        no_dx, dw_only = kconv.conv2d_backward(dout.astype(dtype), x.astype(dtype), w.astype(dtype), s, p, d,
                                               need_dx=False)
        assert no_dx is None and np.array_equal(dw_only, dw)  # the same dw, bit for bit
    want = {"_gemm_im2col", "_gemm_col2im", "_batched_outer"} | ({"_gemm_rows"} if budget else {"_gemm_wide"})
    assert want <= set(seen)  # every path of the engine ran


@pytest.mark.parametrize("dtype", DTYPES)
def test_conv2d_infer_equals_naive(dtype, monkeypatch):
    # the inference conv (row-unrolled blocks of small images, KH partial sums): the naive loops
    # up to rounding, with blocks of one image, a few, and all; strided / 1x1 fall back
    rng = np.random.default_rng(6)
    for budget in (1, 3000, 1 << 30):
        monkeypatch.setattr(kconv, "_INFER_BLOCK_BYTES", budget)
        for _ in range(12):
            N, C, H, W, F, KH, KW, s, p, d = _conv_problem(rng)
            N = N + 2  # several images
            if rng.random() < 0.7:
                s = (1, 1)
            x, w = _rand(rng, (N, C, H, W)), _rand(rng, (F, C, KH, KW))
            Ho, Wo = _out_hw(H, W, KH, KW, s, p, d)
            out = kconv.conv2d_infer(x.astype(dtype), w.astype(dtype), s, p, d, (Ho, Wo))
            assert out.dtype == dtype and out.shape == (N, F, Ho, Wo)
            np.testing.assert_allclose(out, conv2d_naive(x, w, None, stride=s, padding=p, dilation=d),
                                       **_tol(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
def test_conv2d_infer_bias_relu_and_stacked_rows_are_the_same_bits(dtype, monkeypatch):
    # the bias and ReLU applied block by block are the two passes afterwards, bit for bit; the
    # kernel rows stacked into one GEMM (F <= _STACK_ROWS_MAX_F) sum the same partial sums in
    # the same order as one GEMM per kernel row; the fallback (strided, 1x1, one image) is
    # conv2d_forward's bits, then the bias and ReLU
    rng = np.random.default_rng(16)
    for budget in (3000, 1 << 30):
        monkeypatch.setattr(kconv, "_INFER_BLOCK_BYTES", budget)
        for _ in range(10):
            N, C, H, W, F, KH, KW, s, p, d = _conv_problem(rng)
            N, F = N + int(rng.integers(0, 3)), F + int(rng.integers(0, 40))
            if rng.random() < 0.7:
                s = (1, 1)
            x, w, b = (_rand(rng, shape).astype(dtype) for shape in ((N, C, H, W), (F, C, KH, KW), (F,)))
            Ho, Wo = _out_hw(H, W, KH, KW, s, p, d)
            plain = kconv.conv2d_infer(x, w, s, p, d, (Ho, Wo))
            two_passes = np.maximum(plain + b.reshape(1, F, 1, 1), 0)
            assert np.array_equal(kconv.conv2d_infer(x, w, s, p, d, (Ho, Wo), bias=b, relu=True), two_passes)
            assert np.array_equal(kconv.conv2d_infer(x, w, s, p, d, (Ho, Wo), bias=b),
                                  plain + b.reshape(1, F, 1, 1))
            with monkeypatch.context() as per_row:
                per_row.setattr(kconv, "_STACK_ROWS_MAX_F", 0)  # one GEMM per kernel row
                assert np.array_equal(kconv.conv2d_infer(x, w, s, p, d, (Ho, Wo)), plain)
            if s != (1, 1) or KH == 1 or N < 2:
                assert np.array_equal(plain, kconv.conv2d_forward(x, w, s, p, d, (Ho, Wo)))


@pytest.mark.parametrize("dtype", DTYPES)
def test_conv_stack_infer_is_conv2d_infer_layer_by_layer(dtype, monkeypatch):
    # the activations between layers stay on the padded grid of the first: the values that land
    # on its separators (outputs off the image, relu(bias) != 0 there) must be zeroed again, or
    # the next layer reads them as padding; each layer is conv2d_infer's bits, and the naive
    # loops up to rounding; stacks that change the map size, one image, 1x1: layer by layer
    rng = np.random.default_rng(17)
    for budget in (3000, 1 << 30):
        monkeypatch.setattr(kconv, "_INFER_BLOCK_BYTES", budget)
        for _ in range(8):
            N, C, H, W = int(rng.integers(1, 6)), int(rng.integers(1, 5)), int(rng.integers(1, 9)), int(rng.integers(1, 9))
            K = int(rng.choice([1, 3, 5]))
            d = int(rng.integers(1, 3))
            p = d * (K - 1) // 2 if rng.random() < 0.8 else 0  # mostly the same size out as in
            widths = [int(v) for v in rng.integers(1, 70, int(rng.integers(1, 4)))]
            if p != d * (K - 1) // 2:
                widths = widths[:1]
            x = _rand(rng, (N, C, H, W)).astype(dtype)
            ws, bs, c = [], [], C
            for f in widths:
                ws.append(_rand(rng, (f, c, K, K)).astype(dtype))
                bs.append(_rand(rng, (f,)).astype(dtype))
                c = f
            got = kconv.conv_stack_infer(x, ws, bs, (p, p), (d, d))
            want, ref = x, x.astype(np.float64)
            for w, b in zip(ws, bs):
                Ho, Wo = _out_hw(want.shape[2], want.shape[3], K, K, (1, 1), (p, p), (d, d))
                want = kconv.conv2d_infer(want, w, (1, 1), (p, p), (d, d), (Ho, Wo), bias=b, relu=True)
                ref = np.maximum(conv2d_naive(ref, w.astype(np.float64), b.astype(np.float64), stride=(1, 1),
                                              padding=(p, p), dilation=(d, d)), 0)
            assert got.dtype == dtype and np.array_equal(got, want)
            np.testing.assert_allclose(got, ref, **_tol(dtype))
    assert kconv.conv_stack_infer(x, [], [], (1, 1), (1, 1)) is x  # no layers: the input itself


@pytest.mark.parametrize("dtype", DTYPES)
def test_weight_gradient_product_in_either_orientation_is_bit_identical(dtype):
    # _outer computes a @ b.T as (b @ a.T).T when a has fewer rows: the same dot product
    # per entry, so the weight gradients (and loss_and_grads) do not change by a bit
    rng = np.random.default_rng(4)
    for m, k, n in ((32, 288, 4704), (8, 147, 20000), (3, 40, 17), (64, 32, 999), (1, 5, 7), (8, 29, 20000),
                    (16, 32, 50000)):
        a, b = _rand(rng, (m, n), dtype), _rand(rng, (k, n), dtype)
        got = kconv._outer(a, b)
        assert got.shape == (m, k) and got.dtype == dtype
        assert np.array_equal(got, a @ b.T)


@pytest.mark.parametrize("budget", [None, 1, 700])
@pytest.mark.parametrize("dtype", DTYPES)
def test_conv_transpose2d_kernel_equals_naive(dtype, budget, monkeypatch):
    # forward against the loops; backward: dx is conv2d of dout with w, and dw the
    # weight gradient of that conv2d paired with x (the transposed conv is its adjoint)
    if budget is not None:
        monkeypatch.setattr(kconv, "_BLOCK_BYTES", budget)
    seen = _spy_paths(monkeypatch)
    rng = np.random.default_rng([2, budget or 0])
    for _ in range(25):
        N, C, H, W, F, KH, KW, s, p, d = _conv_problem(rng, transposed=True)
        op = tuple(int(rng.integers(0, si)) for si in s)  # < stride: dx keeps x's size
        x, w = _rand(rng, (N, C, H, W)), _rand(rng, (C, F, KH, KW))
        Ho, Wo = ((n - 1) * si - 2 * pi + di * (k - 1) + 1 + o
                  for n, si, pi, di, k, o in zip((H, W), s, p, d, (KH, KW), op))
        out = kconv.conv_transpose2d_forward(x.astype(dtype), w.astype(dtype), s, p, d, (Ho, Wo))
        assert out.dtype == dtype and out.shape == (N, F, Ho, Wo)
        want = conv_transpose2d_naive(x, w, None, stride=s, padding=p, dilation=d, output_padding=op)
        np.testing.assert_allclose(out, want, **_tol(dtype))
        dout = _rand(rng, out.shape)
        dx, dw = kconv.conv_transpose2d_backward(dout.astype(dtype), x.astype(dtype), w.astype(dtype),
                                                 s, p, d)
        kw = dict(stride=s, padding=p, dilation=d)
        assert dx.dtype == dw.dtype == dtype
        np.testing.assert_allclose(dx, conv2d_naive(dout, w, None, **kw), **_tol(dtype))
        np.testing.assert_allclose(dw, conv2d_backward_naive(x, dout, w, **kw)[1], **_tol(dtype))
    assert {"_gemm_im2col", "_gemm_col2im", "_batched_outer"} <= set(seen)
    assert seen["_is_tiling"] > 0  # the tiling (stride = kernel) path ran


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_stride_phases_cut_from_x_equal_slices_of_the_padded_input(dtype):
    # The strided paths cut each stride phase straight out of x, writing only its
    # zero border; they must equal the phase slices xpad[:, :, a::sh, b::sw] of an
    # explicitly padded copy, also when padding exceeds the stride or the image
    # (a phase of pure padding) and for odd and even sizes.
    rng = np.random.default_rng(5)
    for H, W in ((1, 1), (2, 5), (5, 4), (7, 6)):
        x = _rand(rng, (2, 3, H, W), dtype)
        xpad_by_hand = lambda ph, pw: np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))  # noqa: E731
        for sh, sw in ((2, 2), (3, 2), (1, 3), (4, 1)):
            for ph, pw in ((0, 0), (1, 0), (3, 2), (5, 4)):
                taps = kconv._taps(5, 5, (sh, sw), (1, 1))
                xp = xpad_by_hand(ph, pw)
                phases = kconv._phases(x, (ph, pw), taps)
                assert len(phases) == len({(a, b) for _, _, a, b, _, _ in taps.taps})
                for (a, b), got in phases.items():
                    want = xp[:, :, a::sh, b::sw]
                    assert got.dtype == x.dtype and got.shape == want.shape
                    np.testing.assert_array_equal(got, want)


def test_reused_column_buffer_equals_naive_across_shapes_dtypes_and_threads(monkeypatch):
    # The column block buffer is kept between calls (per thread); stale contents
    # from a larger or smaller previous problem, another dtype, or another
    # thread running at the same time must never leak into a result.
    monkeypatch.setattr(kconv, "_BLOCK_BYTES", 4000)  # small budget: row blocks, reuse on
    rng = np.random.default_rng(8)
    cases = []
    for (N, C, H, W, F, K, s, p), dtype in zip(
            [(2, 3, 11, 9, 4, 3, 2, 1), (1, 2, 6, 7, 3, 2, 1, 1), (1, 4, 13, 12, 2, 3, 1, 2),
             (3, 2, 5, 5, 5, 3, 2, 0), (1, 3, 10, 8, 4, 3, 1, 1)],
            [np.float64, np.float32, np.float64, np.float32, np.float64]):
        x, w = _rand(rng, (N, C, H, W), dtype), _rand(rng, (F, C, K, K), dtype)
        want = conv2d_naive(x.astype(np.float64), w.astype(np.float64), None, stride=s, padding=p)
        cases.append((x, w, s, p, want))

    def run_all(errors):
        for _ in range(3):
            for x, w, s, p, want in cases:
                out, _ = conv2d_forward(x, w, None, stride=s, padding=p)
                tol = 1e-12 if x.dtype == np.float64 else 1e-4
                if not np.allclose(out, want, rtol=tol, atol=tol):
                    errors.append((x.shape, w.shape, s, p))

    errors = []
    run_all(errors)  # one thread, shapes and dtypes alternating
    threads = [threading.Thread(target=run_all, args=(errors,)) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    # and the buffer really is reused: a second request no larger than the first
    # gets the same memory
    a = kconv._scratch("cols", 100, np.float64)
    b = kconv._scratch("cols", 50, np.float32)
    assert np.shares_memory(a, b)
    # ... and it is per thread: another thread never gets this thread's buffer
    other = []
    t = threading.Thread(target=lambda: other.append(kconv._scratch("cols", 100, np.float64)))
    t.start()
    t.join()
    assert not np.shares_memory(a, other[0])


# --------------------------------------------------------------------------- RoIAlign


def _roi_problem(rng):
    n, c = int(rng.integers(1, 3)), int(rng.integers(1, 4))
    h, w = int(rng.integers(1, 10)), int(rng.integers(1, 10))
    k = int(rng.integers(0, 7))
    scale = float(rng.choice([1.0, 0.5, 0.8]))
    xy = rng.uniform(-3, 12 / scale, (k, 2))
    size = rng.uniform(-1, 9 / scale, (k, 2))  # some empty or inverted boxes
    boxes = np.column_stack([rng.integers(0, n, k), xy, xy + size])
    output_size = (int(rng.integers(1, 4)), int(rng.integers(1, 4)))
    args = (output_size, scale, int(rng.integers(-1, 4)), bool(rng.random() < 0.5))
    return rng.standard_normal((n, c, h, w)), boxes, args


@pytest.mark.parametrize("method", ["matrix", "separable"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_roi_align_kernel_equals_naive(dtype, method):
    # forward against the loops; backward by the adjoint identity
    # <naive(x), dout> = <x, backward(dout)> for random x and dout
    rng = np.random.default_rng([4, method == "matrix"])
    for _ in range(30):
        x, boxes, args = _roi_problem(rng)
        kw = dict(zip(("spatial_scale", "sampling_ratio", "aligned"), args[1:]))
        want = roi_align_naive(x, boxes, args[0], **kw)
        xd, bd = x.astype(dtype), boxes.astype(dtype)
        out, matrix, separable = kroi.roi_align_forward(xd, bd, *args, method)
        assert out.dtype == dtype and out.shape == want.shape
        assert (matrix is None) == (method == "separable") == (separable is not None)
        np.testing.assert_allclose(out, want, **_tol(dtype))
        dout = rng.standard_normal(out.shape)
        dx = kroi.roi_align_backward(dout.astype(dtype), x.shape, np.dtype(dtype), matrix, separable)
        assert dx.dtype == dtype and dx.shape == x.shape
        np.testing.assert_allclose(np.vdot(dx.astype(np.float64), x), np.vdot(want, dout),
                                   **_tol(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
def test_roi_align_linear_maps_equal_naive(dtype):
    # the matrix M and the factors (a_y, s) themselves: out = M @ cells = s @ (a_y @ cells)
    rng = np.random.default_rng(5)
    for _ in range(20):
        x, boxes, args = _roi_problem(rng)
        n, c, h, w = x.shape
        kw = dict(zip(("spatial_scale", "sampling_ratio", "aligned"), args[1:]))
        want = roi_align_naive(x, boxes, args[0], **kw)
        k, (ph, pw) = boxes.shape[0], args[0]
        cells = np.ascontiguousarray(x.transpose(0, 2, 3, 1)).astype(dtype)
        m = kroi.roi_align_matrix(x.shape, boxes, *args, dtype)
        assert m.shape == (k * ph * pw, n * h * w) and m.dtype == dtype
        got = (m @ cells.reshape(-1, c)).reshape(k, ph, pw, c).transpose(0, 3, 1, 2)
        np.testing.assert_allclose(got, want, **_tol(dtype))
        a_y, s = kroi.roi_align_separable(x.shape, boxes, *args, dtype)
        z = (a_y @ cells.reshape(n * h, w * c)).reshape(k * ph * w, c)
        got = (s @ z).reshape(k, ph, pw, c).transpose(0, 3, 1, 2)
        np.testing.assert_allclose(got, want, **_tol(dtype))
        assert kroi.cheaper_form(x.shape, boxes, *args) in ("matrix", "separable")


def test_roi_align_kernel_chunks_and_cost_model(monkeypatch):
    # tiny chunks build the matrix a box or two at a time: the same matrix
    rng = np.random.default_rng(6)
    x, boxes, args = _roi_problem(rng)
    while boxes.shape[0] < 4:
        x, boxes, args = _roi_problem(rng)
    full = kroi.roi_align_matrix(x.shape, boxes, *args, np.float64)
    monkeypatch.setattr(kroi, "_CHUNK_ENTRIES", 10)
    chunked = kroi.roi_align_matrix(x.shape, boxes, *args, np.float64)
    np.testing.assert_array_equal(full.toarray(), chunked.toarray())
    # the cost model: many channels and small grids -> matrix; one channel, big grids -> separable
    xy = rng.uniform(0, 400, (64, 2))
    b = np.column_stack([np.zeros(64), xy, xy + rng.uniform(16, 400, (64, 2))])
    assert kroi.cheaper_form((1, 256, 50, 50), b, (7, 7), 1 / 16, 2, False) == "matrix"
    rois = np.column_stack([np.arange(4), np.full((4, 2), 10.0), np.full((4, 2), 250.0)])
    assert kroi.cheaper_form((4, 1, 300, 300), rois, (28, 28), 1.0, -1, False) == "separable"
    assert kroi.cheaper_form((4, 1, 300, 300), rois[:0], (28, 28), 1.0, -1, False) == "matrix"


# --------------------------------------------------------------------------- IoU and NMS


def _nms_boxes(rng, n, dtype):
    """Boxes in clusters (dense overlaps) and scattered, some degenerate; ties in scores."""
    centres = rng.uniform(0, 300, (max(1, n // 20), 2))
    xy = centres[rng.integers(0, len(centres), n)] + rng.normal(0, 4, (n, 2))
    wh = rng.uniform(2, 60, (n, 2)) * (rng.random((n, 1)) > 0.05)  # ~5 % of zero size
    scattered = rng.random(n) < 0.3
    xy[scattered] = rng.uniform(0, 400, (int(scattered.sum()), 2))
    b = np.column_stack([xy, xy + wh]).astype(dtype)
    s = np.round(rng.random(n), 2).astype(dtype)  # many equal scores
    return b, s


@pytest.mark.parametrize("dtype", DTYPES)
def test_pair_iou_kernel_equals_the_definition(dtype):
    # iou = intersection / union from the definition, box by box; 0 where the union is 0
    rng = np.random.default_rng(7)
    a, _ = _nms_boxes(rng, 30, dtype)
    b, _ = _nms_boxes(rng, 40, dtype)
    b[:3] = a[:3]  # identical pairs, IoU 1 (or 0 when both are empty)
    area = lambda x: (x[:, 2] - x[:, 0]) * (x[:, 3] - x[:, 1])  # noqa: E731
    got = kiou.pair_iou(a[:, 0, None], a[:, 1, None], a[:, 2, None], a[:, 3, None], area(a)[:, None],
                        b[:, 0], b[:, 1], b[:, 2], b[:, 3], area(b))
    assert got.dtype == dtype and got.shape == (30, 40)
    want = np.zeros((30, 40))
    for i, p in enumerate(a.astype(np.float64)):
        for j, q in enumerate(b.astype(np.float64)):
            iw = max(min(p[2], q[2]) - max(p[0], q[0]), 0.0)
            ih = max(min(p[3], q[3]) - max(p[1], q[1]), 0.0)
            union = (p[2] - p[0]) * (p[3] - p[1]) + (q[2] - q[0]) * (q[3] - q[1]) - iw * ih
            want[i, j] = iw * ih / union if union > 0 else 0.0
    np.testing.assert_allclose(got, want, **_tol(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
def test_nms_kernel_equals_naive_bit_for_bit(dtype):
    # the dense path (few boxes) and every split between the sweep's kept-box loop and
    # pair sweep, with and without categories, against nms_naive / batched_nms_naive:
    # the same kept indices exactly
    rng = np.random.default_rng(8)
    for n in (0, 1, 2, 17, 150, 600):
        b, s = _nms_boxes(rng, n, dtype)
        idxs = rng.integers(0, 4, n)
        order = np.argsort(-s, kind="stable")
        for thr in (0.0, 0.3, 0.5, 0.7, 1.0):
            t = _threshold_as(np.dtype(dtype), thr)
            ref, ref_b = nms_naive(b, s, thr), batched_nms_naive(b, s, idxs, thr)
            for kw in ({}, {"dense": True}, {"dense": False}, {"dense": False, "probe": False, "max_pairs": 10**9},
                       {"dense": False, "probe": False, "max_pairs": 0},
                       {"dense": False, "probe": True, "max_pairs": 0}):
                keep = knms.nms_ranked(b[order], None, t, **kw)
                assert keep.dtype == bool and keep.shape == (n,)
                np.testing.assert_array_equal(order[keep], ref)
                np.testing.assert_array_equal(order[knms.nms_ranked(b[order], idxs[order], t, **kw)], ref_b)


# --------------------------------------------------------------------------- element-wise


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_keep_where_is_np_where_bit_for_bit(dtype):
    # the ReLU gradient's select: NaN, inf and -0.0 kept where the mask holds, +0.0 elsewhere,
    # also for non-contiguous views (the mask is exact where a product by it would make NaN of inf)
    rng = np.random.default_rng(9)
    v = rng.standard_normal((3, 4, 5, 6)).astype(dtype)
    v.flat[::7], v.flat[::5], v.flat[::11] = -0.0, np.inf, np.nan
    m = rng.random(v.shape) > 0.5
    for vv, mm in ((v, m), (v.transpose(0, 2, 1, 3), m.transpose(0, 2, 1, 3)), (v[:, :, ::2], m[:, :, ::2])):
        got = kelem.keep_where(mm, vv)
        want = np.ascontiguousarray(np.where(mm, vv, dtype(0)))
        assert got.dtype == dtype and got.shape == want.shape
        assert np.array_equal(got.view(np.uint8), want.view(np.uint8))


def test_forward_blocks_of_any_size_give_the_same_bits(monkeypatch):
    # the forward product is split in blocks of whole images of about _CACHE_BLOCK_BYTES
    # when every block's GEMM stays above OpenBLAS's small-matrix kernel: each output column
    # is then the same dot product in any block, so the bits do not move (small products
    # keep their blocks: there the small kernel's sums depend on the block)
    rng = np.random.default_rng(10)
    for n, c, hw, f in ((7, 5, 9, 6), (12, 32, 14, 32), (5, 64, 10, 16)):
        x, w = _rand(rng, (n, c, hw, hw), np.float32), _rand(rng, (f, c, 3, 3), np.float32)
        outs = []
        for budget in (1, 9 * c * hw * hw * 4 * 2, 1 << 30):  # one image, two, all
            monkeypatch.setattr(kconv, "_CACHE_BLOCK_BYTES", budget)
            outs.append(kconv.conv2d_forward(x, w, (1, 1), (1, 1), (1, 1), (hw, hw)))
        assert all(np.array_equal(o, outs[0]) for o in outs[1:])


@pytest.mark.parametrize("dtype", DTYPES)
def test_wide_rows_equal_the_per_tap_engine(dtype, monkeypatch):
    # the wide-row path (small stride-1 maps, shared zero separators between rows and images):
    # the forward and dx (a forward conv) are the per-tap engine's dot product per output, bit
    # for bit (products above OpenBLAS's small-matrix kernel), and dw is the per-tap engine's;
    # any padding / dilation (separators wider than the padding)
    rng = np.random.default_rng(11)
    cases = [(12, 32, 14, 14, 32, 3, 3, (1, 1), (1, 1)), (4, 16, 9, 7, 24, 3, 3, (1, 1), (1, 1)),
             (3, 8, 10, 11, 40, 3, 2, (0, 2), (1, 2)), (5, 6, 6, 5, 50, 5, 3, (2, 0), (2, 1)),
             (2, 4, 5, 6, 30, 1, 3, (2, 1), (1, 1))]
    for N, C, H, W, F, KH, KW, p, d in cases:
        x, w = _rand(rng, (N, C, H, W), dtype), _rand(rng, (F, C, KH, KW), dtype)
        Ho, Wo = _out_hw(H, W, KH, KW, (1, 1), p, d)
        dout = _rand(rng, (N, F, Ho, Wo), dtype)
        got = kconv.conv2d_forward(x, w, (1, 1), p, d, (Ho, Wo))
        gdx, gdw = kconv.conv2d_backward(dout, x, w, (1, 1), p, d)
        monkeypatch.setattr(kconv, "_WIDE_MAX_WO", 0)  # the per-tap engine
        want = kconv.conv2d_forward(x, w, (1, 1), p, d, (Ho, Wo))
        wdx, wdw = kconv.conv2d_backward(dout, x, w, (1, 1), p, d)
        monkeypatch.undo()
        if F * C * KH * KW * N * Ho * Wo > kconv._SMALL_GEMM:
            assert np.array_equal(got, want)
            assert np.array_equal(gdw, wdw)
        np.testing.assert_allclose(got, want, **_tol(dtype))
        np.testing.assert_allclose(gdx, wdx, **_tol(dtype))
        np.testing.assert_allclose(gdw, wdw, **_tol(dtype))
        np.testing.assert_allclose(got, conv2d_naive(x.astype(np.float64), w.astype(np.float64), None,
                                                     stride=1, padding=p, dilation=d), **_tol(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
def test_kept_columns_give_the_same_weight_gradient_bit_for_bit(dtype, monkeypatch):
    # conv2d_forward(keep_cols=True) keeps the per-tap engine's columns (strided convs) and
    # conv2d_backward(cols=...) takes dw from them, in the same blocks: the same bits as
    # unrolling x again; other paths (and too large columns) keep nothing
    rng = np.random.default_rng(12)
    for budget in (None, 1, 3000):
        if budget is not None:
            monkeypatch.setattr(kconv, "_BLOCK_BYTES", budget)
        kept = 0
        for _ in range(20):
            N, C, H, W, F, KH, KW, s, p, d = _conv_problem(rng)
            x, w = _rand(rng, (N, C, H, W), dtype), _rand(rng, (F, C, KH, KW), dtype)
            Ho, Wo = _out_hw(H, W, KH, KW, s, p, d)
            out, cols = kconv.conv2d_forward(x, w, s, p, d, (Ho, Wo), keep_cols=True)
            assert np.array_equal(out, kconv.conv2d_forward(x, w, s, p, d, (Ho, Wo)))
            dout = _rand(rng, out.shape, dtype)
            want = kconv.conv2d_backward(dout, x, w, s, p, d)
            got = kconv.conv2d_backward(dout, x, w, s, p, d, cols=cols)
            assert np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1])
            if cols is not None:
                kept += 1
                assert cols.shape == (C * KH * KW * N * Ho * Wo,) and s != (1, 1)
        assert kept > 0
    monkeypatch.setattr(kconv, "_KEEP_COLS_BYTES", 0)  # too large: nothing kept
    x, w = _rand(rng, (2, 3, 9, 9), dtype), _rand(rng, (4, 3, 3, 3), dtype)
    assert kconv.conv2d_forward(x, w, (2, 2), (1, 1), (1, 1), (5, 5), keep_cols=True)[1] is None


@pytest.mark.parametrize("dtype", DTYPES)
def test_unroll_of_non_contiguous_inputs(dtype):
    # the phase-at-once unroll views the phases' memory directly: an unpadded stride-1 input
    # that is a non-contiguous view must take the per-tap copies (the same values)
    rng = np.random.default_rng(13)
    base = _rand(rng, (3, 4, 9, 12), dtype)
    x = base[:, ::2, :, 1:11]  # (3, 2, 9, 10), not contiguous
    w = _rand(rng, (5, 2, 3, 3), dtype)
    out = kconv.conv2d_forward(x, w, (1, 1), (0, 0), (1, 1), (7, 8))
    np.testing.assert_allclose(out, conv2d_naive(x, w, None, stride=1, padding=0), **_tol(dtype))
    dout = _rand(rng, out.shape, dtype)
    dx, dw = kconv.conv2d_backward(dout, x, w, (1, 1), (0, 0), (1, 1))
    ndx, ndw, _ = conv2d_backward_naive(dout, x, w, stride=1, padding=0)
    np.testing.assert_allclose(dx, ndx, **_tol(dtype))
    np.testing.assert_allclose(dw, ndw, **_tol(dtype))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dense_nms_of_stacked_and_uneven_categories_equals_naive(dtype):
    # the dense path stacks the categories padded to the largest (even sizes), or takes
    # them one by one (uneven sizes: one large category and many of one or two boxes)
    rng = np.random.default_rng(14)
    for n, cats in ((120, [0] * 100 + list(range(1, 21))), (90, list(range(5)) * 18), (40, [3] * 40)):
        b, s = _nms_boxes(rng, n, dtype)
        idxs = np.asarray(cats)[rng.permutation(n)]
        order = np.argsort(-s, kind="stable")
        for thr in (0.0, 0.5, 0.9):
            t = _threshold_as(np.dtype(dtype), thr)
            keep = knms.nms_ranked(b[order], idxs[order], t, dense=True)
            np.testing.assert_array_equal(order[keep], batched_nms_naive(b, s, idxs, thr))


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int64])
def test_smallest_k_is_the_stable_argsort_prefix(dtype):
    # kernels.topk.smallest_k == np.argsort(x, axis=1, kind="stable")[:, :k] exactly: heavy
    # ties (ties at the k-th value go to the lower indices), +-0.0 and +-inf as values,
    # NaN rows (argsort's NaN-last order), k = 0 and k = n
    from mrcnn_np.kernels.topk import smallest_k
    rng = np.random.default_rng(15)
    for _ in range(300):
        R, n = int(rng.integers(1, 5)), int(rng.integers(1, 2000))
        k = int(rng.choice([0, n, int(rng.integers(0, n + 1)), int(rng.integers(0, max(1, n // 5)))]))
        if rng.random() < 0.5:
            x = rng.integers(-3, 4, (R, n)).astype(dtype)  # many ties
        else:
            x = rng.standard_normal((R, n)).astype(dtype) if dtype != np.int64 else rng.integers(-10**9, 10**9, (R, n))
        if dtype != np.int64 and rng.random() < 0.3:
            flat = x.reshape(-1)
            flat[rng.integers(0, flat.size, 5)] = rng.choice([-0.0, 0.0, np.inf, -np.inf, np.nan], 5)
        got = smallest_k(x, k)
        assert got.dtype == np.int64 and got.shape == (R, k)
        np.testing.assert_array_equal(got, np.argsort(x, axis=1, kind="stable")[:, :k])


# --------------------------------------------------------------------------- inference: fused conv, arena


@pytest.mark.parametrize("budget", [None, 1, 700])
@pytest.mark.parametrize("dtype", DTYPES)
def test_fused_conv_is_conv_then_bias_residual_relu_bit_for_bit(dtype, budget, monkeypatch):
    # conv2d_fused applies bias, residual and ReLU to each output block after its GEMM: the
    # same bits as conv2d_forward followed by those three steps over the whole output, on
    # every path (1x1, rows, wide rows, per-tap engine; tiny budgets send small problems
    # through the row and block paths); NaN and inf pass the ReLU as np.maximum lets them
    _set_block_budget(monkeypatch, budget)
    seen = _spy_paths(monkeypatch)
    rng = np.random.default_rng([16, budget or 0])
    for i in range(40):
        N, C, H, W, F, KH, KW, s, p, d = _conv_problem(rng)
        x, w = _rand(rng, (N, C, H, W), dtype), _rand(rng, (F, C, KH, KW), dtype)
        if i % 7 == 0:
            x.reshape(-1)[rng.integers(0, x.size, 2)] = [np.nan, np.inf]
        Ho, Wo = _out_hw(H, W, KH, KW, s, p, d)
        b = _rand(rng, (F,), dtype) if i % 3 else None
        res = _rand(rng, (N, F, Ho, Wo), dtype) if i % 2 else None
        relu = i % 4 != 1
        want = kconv.conv2d_forward(x, w, s, p, d, (Ho, Wo))
        assert np.array_equal(kconv.conv2d_forward(x, w, s, p, d, (Ho, Wo), keep_cols=True)[0], want,
                              equal_nan=True)
        if b is not None:
            want += b.reshape(1, F, 1, 1)
        if res is not None:
            want += res
        if relu:
            want = np.maximum(want, 0)
        got = kconv.conv2d_fused(x, w, s, p, d, (Ho, Wo), b, res, relu)
        assert got.dtype == dtype and got.shape == (N, F, Ho, Wo)
        assert np.array_equal(got, want, equal_nan=True)
        if i % 5 == 0:  # fresh memory instead of the pool: the same bits
            assert np.array_equal(kconv.conv2d_fused(x, w, s, p, d, (Ho, Wo), b, res, relu, reuse=False), want,
                                  equal_nan=True)
    assert {"_gemm_im2col"} | ({"_gemm_rows"} if budget else {"_gemm_wide"}) <= set(seen)


def test_stacked_1x1_convs_equal_separate_convs():
    # conv1x1_stacked: one GEMM of the stacked filters where each single GEMM is above
    # OpenBLAS's small-matrix kernel (the same bits as separate convs, checked), else one
    # conv each (bit for bit by construction); both equal the naive loops
    rng = np.random.default_rng(17)
    for (N, C, H, W), fs in (((1, 64, 80, 80), (3, 12)), ((2, 16, 7, 5), (2, 8)), ((1, 8, 3, 3), (1, 4, 2))):
        x = _rand(rng, (N, C, H, W), np.float32)
        ws = [_rand(rng, (f, C, 1, 1), np.float32) for f in fs]
        bs = [_rand(rng, (f,), np.float32) for f in fs]
        got = kconv.conv1x1_stacked(x, ws, bs)
        assert [g.shape for g in got] == [(N, f, H, W) for f in fs]
        for g, w, b in zip(got, ws, bs):
            assert np.array_equal(g, kconv.conv2d_fused(x, w, (1, 1), (0, 0), (1, 1), (H, W), b))
            np.testing.assert_allclose(g, conv2d_naive(x.astype(np.float64), w.astype(np.float64),
                                                       b.astype(np.float64)), **_tol(np.float32))


def test_arena_reuses_only_buffers_no_array_refers_to():
    import mrcnn_np.kernels.arena as arena
    big = arena.MIN_BYTES // 4 + 10  # float32 values: above the pool's minimum
    a = arena.empty((big,), np.float32)
    a[:] = 1
    view = a[5:].reshape(-1)[::2]  # a derived view keeps the buffer in use after a is gone
    del a
    b = arena.empty((big,), np.float32)
    b[:] = 2
    assert np.all(view == 1)  # b did not get view's memory
    addr_b = b.__array_interface__["data"][0]
    del b
    c = arena.empty((big - 7,), np.float32)  # a free buffer that fits is handed out again
    assert c.__array_interface__["data"][0] == addr_b and c.shape == (big - 7,)
    d = arena.empty((3, 4), np.float64)  # small arrays: plain np.empty
    assert d.shape == (3, 4) and d.dtype == np.float64 and d.base is None
    total, used = arena.pooled_bytes()
    assert used >= 2 * big * 4 and total >= used
    del c, view
    arena.release()
    assert arena.pooled_bytes()[1] == 0
    other = {}
    t = threading.Thread(target=lambda: other.update(sizes=arena.pooled_bytes()))
    t.start()
    t.join()
    assert other["sizes"] == (0, 0)  # one pool per thread


@pytest.mark.parametrize("dtype", DTYPES)
def test_row_unrolled_gemm_with_stacked_kernel_rows_equals_one_gemm_per_row(dtype, monkeypatch):
    # _gemm_rows runs convs of few filters as ONE GEMM of the KH kernel rows' weights stacked:
    # the same partial sums, added in the same order, so the same bits where the GEMMs are
    # above OpenBLAS's small-matrix kernel (and the naive loops' values everywhere); forward
    # and the stride-1 input gradient (a forward conv), blocks of rows or whole images
    rng = np.random.default_rng(19)
    cases = [(1, 8, 12, 14, 64, 3, 3, (1, 1), (1, 1)), (2, 3, 9, 11, 5, 3, 2, (1, 0), (2, 1)),
             (1, 16, 10, 9, 32, 5, 5, (2, 2), (1, 1)), (1, 4, 7, 6, 3, 2, 3, (0, 1), (1, 1))]
    for budget in (1, 300):
        monkeypatch.setattr(kconv, "_BLOCK_BYTES", budget)
        for N, C, H, W, F, KH, KW, p, d in cases:
            x, w = _rand(rng, (N, C, H, W), dtype), _rand(rng, (F, C, KH, KW), dtype)
            Ho, Wo = _out_hw(H, W, KH, KW, (1, 1), p, d)
            dout = _rand(rng, (N, F, Ho, Wo), dtype)
            assert kconv._use_rows(N, C, KH, KW, Ho, Wo, (1, 1), x.itemsize)
            got = kconv.conv2d_forward(x, w, (1, 1), p, d, (Ho, Wo))
            gdx, _ = kconv.conv2d_backward(dout, x, w, (1, 1), p, d)
            monkeypatch.setattr(kconv, "_STACK_ROWS_MAX_F", 0)  # one GEMM per kernel row
            want = kconv.conv2d_forward(x, w, (1, 1), p, d, (Ho, Wo))
            wdx, _ = kconv.conv2d_backward(dout, x, w, (1, 1), p, d)
            monkeypatch.setattr(kconv, "_STACK_ROWS_MAX_F", 64)
            if F * C * KW * Wo * min(Ho, 2) > kconv._SMALL_GEMM:
                assert np.array_equal(got, want)
            np.testing.assert_allclose(got, want, **_tol(dtype))
            np.testing.assert_allclose(gdx, wdx, **_tol(dtype))
            np.testing.assert_allclose(got, conv2d_naive(x.astype(np.float64), w.astype(np.float64), None,
                                                         stride=1, padding=p, dilation=d), **_tol(dtype))
    # a block of 3 x 64 x 40 rows of 200: above the small-matrix kernel, the same bits
    x, w = _rand(rng, (1, 64, 40, 200), np.float32), _rand(rng, (64, 64, 3, 3), np.float32)
    monkeypatch.setattr(kconv, "_BLOCK_BYTES", 2**20)
    got = kconv.conv2d_forward(x, w, (1, 1), (1, 1), (1, 1), (40, 200))
    monkeypatch.setattr(kconv, "_STACK_ROWS_MAX_F", 0)
    assert np.array_equal(got, kconv.conv2d_forward(x, w, (1, 1), (1, 1), (1, 1), (40, 200)))
