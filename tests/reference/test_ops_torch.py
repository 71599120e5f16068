"""Cross-check of the non-convolution ops against torch in float64 (skipped without torch)."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional

from mrcnn_np.ops.activations import relu_backward, relu_forward, sigmoid_backward, sigmoid_forward, softmax  # noqa: E402
from mrcnn_np.ops.linear import linear_backward, linear_forward  # noqa: E402
from mrcnn_np.ops.losses import bce_with_logits, smooth_l1, softmax_cross_entropy  # noqa: E402
from mrcnn_np.ops.norm import frozen_batch_norm_backward, frozen_batch_norm_forward  # noqa: E402
from mrcnn_np.ops.pool import max_pool2d_backward, max_pool2d_forward  # noqa: E402
from mrcnn_np.ops.resize import (resize_bilinear, resize_bilinear_backward, resize_bilinear_forward,  # noqa: E402
                                 upsample_nearest_backward, upsample_nearest_forward)


def t(a, grad=False):
    return torch.tensor(a, dtype=torch.float64, requires_grad=grad)


def grad_of(fn, x, dout):
    xt = t(x, True)
    out = fn(xt)
    out.backward(t(dout))
    return out.detach().numpy(), xt.grad.numpy()


@pytest.mark.parametrize("k,s,p,ties", [(2, 2, 0, False), (3, 2, 1, True), (3, 1, 1, True),
                                        (1, 2, 0, False), ((3, 2), (2, 1), (1, 1), True)])
def test_max_pool2d(k, s, p, ties):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 4, (2, 3, 9, 8)).astype(np.float64) if ties else rng.standard_normal((2, 3, 9, 8))
    out, cache = max_pool2d_forward(x, kernel_size=k, stride=s, padding=p)
    dout = rng.standard_normal(out.shape)
    ref, dref = grad_of(lambda a: F.max_pool2d(a, k, s, p), x, dout)
    np.testing.assert_array_equal(out, ref)
    np.testing.assert_allclose(max_pool2d_backward(dout, cache), dref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("k,s,p", [(2, 2, 0), (3, 2, 1), (3, 1, 1), ((2, 3), (1, 2), (1, 0))])
def test_max_pool2d_nan_and_minus_inf_like_torch(k, s, p):
    """Which cell gets the gradient when a window holds NaN (torch: the last NaN)
    or only -inf (torch: its first in-bounds cell)."""
    rng = np.random.default_rng(5)
    x = rng.integers(0, 3, (2, 2, 7, 6)).astype(np.float64)
    x[rng.random(x.shape) < 0.5] = -np.inf
    x[rng.random(x.shape) < 0.1] = np.nan
    out, cache = max_pool2d_forward(x, kernel_size=k, stride=s, padding=p)
    dout = rng.standard_normal(out.shape)
    ref, dref = grad_of(lambda a: F.max_pool2d(a, k, s, p), x, dout)
    np.testing.assert_array_equal(out, ref)
    # overlapping windows add in another order than torch: equal up to rounding
    np.testing.assert_allclose(max_pool2d_backward(dout, cache), dref, rtol=1e-12, atol=1e-12)


def test_linear_relu_sigmoid_softmax():
    rng = np.random.default_rng(1)
    x, w, b = rng.standard_normal((4, 5)), rng.standard_normal((3, 5)), rng.standard_normal(3)
    out, cache = linear_forward(x, w, b)
    dout = rng.standard_normal(out.shape)
    xt, wt, bt = t(x, True), t(w, True), t(b, True)
    o = F.linear(xt, wt, bt)
    o.backward(t(dout))
    np.testing.assert_allclose(out, o.detach().numpy(), rtol=1e-13)
    for ours, ref in zip(linear_backward(dout, cache), (xt.grad, wt.grad, bt.grad)):
        np.testing.assert_allclose(ours, ref.numpy(), rtol=1e-12, atol=1e-14)
    x = rng.standard_normal((3, 7)) * 4
    for fwd, bwd, tf in ((relu_forward, relu_backward, torch.relu),
                         (sigmoid_forward, sigmoid_backward, torch.sigmoid)):
        out, cache = fwd(x)
        ref, dref = grad_of(tf, x, dout=np.ones_like(x) * 0.7)
        np.testing.assert_allclose(out, ref, rtol=1e-14)
        np.testing.assert_allclose(bwd(np.ones_like(x) * 0.7, cache), dref, rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(softmax(x, axis=0), torch.softmax(t(x), 0).numpy(), rtol=1e-13)


def test_frozen_batch_norm():
    tv_misc = pytest.importorskip("torchvision.ops.misc")
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 4, 5, 3))
    w, b, m = rng.uniform(0.5, 2, 4), rng.standard_normal(4), rng.standard_normal(4)
    v = rng.uniform(0.1, 3, 4)
    bn = tv_misc.FrozenBatchNorm2d(4).double()
    bn.weight.copy_(t(w)); bn.bias.copy_(t(b)); bn.running_mean.copy_(t(m)); bn.running_var.copy_(t(v))
    out, cache = frozen_batch_norm_forward(x, w, b, m, v)
    dout = rng.standard_normal(x.shape)
    ref, dref = grad_of(bn, x, dout)
    np.testing.assert_allclose(out, ref, rtol=1e-13, atol=1e-14)
    np.testing.assert_allclose(frozen_batch_norm_backward(dout, cache), dref, rtol=1e-13)


SIZES = [(4, 8), (25, 50), (13, 25), (7, 10), (14, 20), (100, 200), (50, 100), (200, 400),
         (13, 7), (10, 3), (3, 9), (6, 18), (21, 14), (12, 28), (33, 66), (38, 75)]


@pytest.mark.parametrize("hin,hout", SIZES)
def test_upsample_nearest(hin, hout):
    rng = np.random.default_rng(hin * 1000 + hout)
    x = rng.standard_normal((1, 2, hin, 5))
    size = (hout, 11)
    out, cache = upsample_nearest_forward(x, size)
    dout = rng.standard_normal(out.shape)
    ref, dref = grad_of(lambda a: F.interpolate(a, size=size, mode="nearest"), x, dout)
    np.testing.assert_array_equal(out, ref)
    np.testing.assert_allclose(upsample_nearest_backward(dout, cache), dref, rtol=1e-12, atol=1e-12)


def test_upsample_nearest_index_many_sizes_float32():
    """Every H, h <= 160 in float32, the production dtype: identical indices.

    (torch's float64 CPU kernel computes the index slightly differently in about
    100 of these 25,600 pairs, all at exact-integer points; we follow float32.)
    """
    for hin in range(1, 161):
        x = torch.arange(hin, dtype=torch.float32).reshape(1, 1, hin, 1)
        for hout in range(1, 161):
            ref = F.interpolate(x, size=(hout, 1), mode="nearest").numpy().ravel()
            ours = upsample_nearest_forward(x.numpy(), (hout, 1))[0].ravel()
            assert np.array_equal(ours, ref), (hin, hout)


@pytest.mark.parametrize("src,dst", [((2, 2), (4, 4)), ((5, 7), (12, 3)), ((28, 28), (57, 13)),
                                     ((9, 6), (9, 6)), ((1, 3), (4, 1)), ((30, 40), (7, 9))])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_resize_bilinear(src, dst, dtype):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 3) + src).astype(dtype)
    out, cache = resize_bilinear_forward(x, dst)
    dout = rng.standard_normal(out.shape).astype(dtype)
    xt = torch.tensor(x, requires_grad=True)
    o = F.interpolate(xt, size=dst, mode="bilinear", align_corners=False)
    o.backward(torch.tensor(dout))
    tol = 1e-12 if dtype == np.float64 else 2e-6
    np.testing.assert_allclose(out, o.detach().numpy(), rtol=tol, atol=tol)
    np.testing.assert_allclose(resize_bilinear_backward(dout, cache), xt.grad.numpy(), rtol=tol, atol=tol)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_losses(reduction):
    rng = np.random.default_rng(4)
    z, y = rng.standard_normal((6, 5)) * 3, rng.integers(0, 5, 6)
    loss, d = softmax_cross_entropy(z, y, reduction=reduction)
    zt = t(z, True)
    ref = F.cross_entropy(zt, torch.tensor(y), reduction=reduction)
    ref.sum().backward()
    np.testing.assert_allclose(loss, ref.detach().numpy(), rtol=1e-13)
    np.testing.assert_allclose(d, zt.grad.numpy(), rtol=1e-12, atol=1e-15)

    x = np.concatenate([rng.standard_normal(20) * 3, [1e4, -1e4, 50.0, -50.0]])
    tg = np.concatenate([rng.uniform(0, 1, 20), [0.0, 1.0, 0.3, 1.0]])
    loss, d = bce_with_logits(x, tg, reduction=reduction)
    xt = t(x, True)
    ref = F.binary_cross_entropy_with_logits(xt, t(tg), reduction=reduction)
    ref.sum().backward()
    np.testing.assert_allclose(loss, ref.detach().numpy(), rtol=1e-13)
    np.testing.assert_allclose(d, xt.grad.numpy(), rtol=1e-12, atol=1e-15)

    for beta in (1.0, 1 / 9, 0.0):
        p, q = rng.standard_normal((5, 4)), rng.standard_normal((5, 4))
        loss, d = smooth_l1(p, q, beta=beta, reduction=reduction)
        pt = t(p, True)
        ref = F.smooth_l1_loss(pt, t(q), beta=beta, reduction=reduction)
        ref.sum().backward()
        np.testing.assert_allclose(loss, ref.detach().numpy(), rtol=1e-13)
        np.testing.assert_allclose(d, pt.grad.numpy(), rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("src, dst", [((480, 640), (800, 1066)), ((333, 500), (799, 1201))])
def test_resize_bilinear_float32_large_image_matches_torch_to_rounding(src, dst):
    # torch computes the source coordinate (i + 0.5) * scale - 0.5 with one rounding;
    # two float32 roundings would put these sizes ~3e-5 off
    x = np.random.default_rng(3).random((3,) + src, dtype=np.float32)
    ours = resize_bilinear(x, dst)
    ref = torch.nn.functional.interpolate(torch.from_numpy(x)[None], size=dst, mode="bilinear",
                                          align_corners=False)[0].numpy()
    assert np.abs(ours - ref).max() < 1e-6
