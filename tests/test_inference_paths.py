"""The inference paths of the stages (``predict``'s: no caches, fused epilogues, reused
memory) against their training forwards, bit for bit."""
import numpy as np
import pytest

from mrcnn_np.fpn import _backbone_infer, _check_backbone_params, _fpn_infer, backbone_forward, fpn_forward, init_fpn
from mrcnn_np.fpn import init_resnet_fpn_backbone
from mrcnn_np.ops.resize import _add_upsampled_nearest, upsample_nearest_forward


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_add_upsampled_nearest_is_the_sum_with_the_upsampled_map(dtype):
    # in place into dst; an exact 2x takes the broadcast path, other sizes the gather
    rng = np.random.default_rng(0)
    for (h, w), (H, W) in (((8, 10), (4, 5)), ((7, 9), (4, 5)), ((8, 10), (3, 5)), ((4, 5), (4, 5))):
        x = rng.standard_normal((2, 3, H, W)).astype(dtype)
        dst = rng.standard_normal((2, 3, h, w)).astype(dtype)
        want = dst + upsample_nearest_forward(x, (h, w))[0]
        got = _add_upsampled_nearest(dst, x)
        assert got is dst and np.array_equal(got, want)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_fpn_inference_equals_the_forward_bit_for_bit(dtype):
    rng = np.random.default_rng(1)
    chans = (4, 8, 16, 32)
    params = {k: v.astype(dtype) for k, v in init_fpn(list(chans), 8, rng=rng).items()}
    for size in ((16, 16), (13, 19)):  # exact 2x between levels, and sizes rounded up
        feats, hw = {}, size
        for i, c in enumerate(chans):
            feats[f"C{i + 2}"] = rng.standard_normal((2, c) + hw).astype(dtype)
            hw = ((hw[0] + 1) // 2, (hw[1] + 1) // 2)
        want, _ = fpn_forward(params, feats)
        got = _fpn_infer(params, feats, tuple(feats))
        assert len(got) == len(want)
        for g, w in zip(got, want):
            assert g.dtype == dtype and np.array_equal(g, w)


def test_backbone_inference_equals_the_forward_bit_for_bit():
    params = init_resnet_fpn_backbone(layers=(1, 2, 1, 1), width=8, out_channels=16,
                                      rng=np.random.default_rng(2))
    x = np.random.default_rng(3).standard_normal((2, 3, 64, 96)).astype(np.float32)
    want, _ = backbone_forward(params, x)
    for _ in range(2):  # the second call runs on memory the first one released
        got = _backbone_infer(params, x, *_check_backbone_params(params, x.dtype))
        assert all(np.array_equal(g, w) for g, w in zip(got, want))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_separable_max_pool_equals_naive(dtype):
    # predict's max-pool (columns then rows, -inf padding never written): the maxima of
    # ops.pool.max_pool2d_naive (NaN wins its windows); an even kernel padded by half is
    # refused (None)
    from mrcnn_np.kernels.pool import max_pool2d_separable as max_pool2d
    from mrcnn_np.ops.pool import max_pool2d_naive
    rng = np.random.default_rng(18)
    for i in range(40):
        kh, kw = (int(v) for v in rng.integers(1, 5, 2))
        sh, sw = (int(v) for v in rng.integers(1, 4, 2))
        ph, pw = int(rng.integers(0, kh // 2 + 1)), int(rng.integers(0, kw // 2 + 1))
        H = int(rng.integers(max(1, kh - 2 * ph), 12))
        W = int(rng.integers(max(1, kw - 2 * pw), 12))
        x = rng.standard_normal((2, 3, H, W)).astype(dtype)
        if i % 5 == 0:
            x.reshape(-1)[rng.integers(0, x.size, 3)] = [np.nan, np.inf, -np.inf]
        ho, wo = (H + 2 * ph - kh) // sh + 1, (W + 2 * pw - kw) // sw + 1
        got = max_pool2d(x, (kh, kw), (sh, sw), (ph, pw), (ho, wo))
        if (kh % 2 == 0 and 2 * ph == kh) or (kw % 2 == 0 and 2 * pw == kw):
            if got is None:
                continue
        assert got is not None and got.dtype == dtype
        want, _ = max_pool2d_naive(x, kernel_size=(kh, kw), stride=(sh, sw), padding=(ph, pw))
        assert np.array_equal(got, want, equal_nan=True)
    # the stem's pool
    x = rng.standard_normal((1, 4, 40, 38)).astype(dtype)
    want, _ = max_pool2d_naive(x, kernel_size=3, stride=2, padding=1)
    assert np.array_equal(max_pool2d(x, (3, 3), (2, 2), (1, 1), want.shape[2:]), want)
