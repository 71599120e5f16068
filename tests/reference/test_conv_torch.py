"""Cross-check mrcnn_np.ops.conv against torch.nn.functional in float64.

Skipped when torch is not installed; run with the torch venv:
``/work/tv/bin/python -m pytest tests/reference/test_conv_torch.py``.
"""
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from mrcnn_np.ops.conv import (  # noqa: E402
    conv2d_backward,
    conv2d_forward,
    conv_transpose2d_backward,
    conv_transpose2d_forward,
)

CONV = [
    # (N, C, H, W, F, KH, KW, stride, padding, dilation)
    (2, 3, 9, 8, 4, 3, 3, 1, 1, 1),
    (1, 3, 17, 15, 5, 7, 7, 2, 3, 1),  # ResNet stem shape, small
    (2, 4, 8, 8, 6, 1, 1, 2, 0, 1),  # ResNet downsample
    (2, 2, 10, 9, 3, 3, 2, (2, 1), (1, 0), (2, 1)),
    (1, 2, 6, 7, 2, 3, 3, 3, 2, 2),
]


@pytest.mark.parametrize("case", CONV)
@pytest.mark.parametrize("bias", [True, False])
def test_conv2d_matches_torch(case, bias):
    N, C, H, W, F, KH, KW, s, p, d = case
    rng = np.random.default_rng(0)
    x = rng.standard_normal((N, C, H, W))
    w = rng.standard_normal((F, C, KH, KW))
    b = rng.standard_normal(F) if bias else None
    out, cache = conv2d_forward(x, w, b, stride=s, padding=p, dilation=d)
    dout = rng.standard_normal(out.shape)
    dx, dw, db = conv2d_backward(dout, cache)

    tx = torch.tensor(x, requires_grad=True)
    tw = torch.tensor(w, requires_grad=True)
    tb = torch.tensor(b, requires_grad=True) if bias else None
    tout = torch.nn.functional.conv2d(tx, tw, tb, stride=s, padding=p, dilation=d)
    tout.backward(torch.tensor(dout))
    np.testing.assert_allclose(out, tout.detach().numpy(), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(dx, tx.grad.numpy(), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(dw, tw.grad.numpy(), rtol=1e-10, atol=1e-10)
    if bias:
        np.testing.assert_allclose(db, tb.grad.numpy(), rtol=1e-10, atol=1e-10)
    else:
        assert db is None


TRANSPOSED = [
    # (N, C_in, H, W, C_out, KH, KW, stride, padding, dilation, output_padding)
    (2, 4, 5, 6, 3, 2, 2, 2, 0, 1, 0),  # mask head upsampler
    (1, 2, 4, 5, 3, 3, 3, 2, 1, 1, 1),
    (2, 3, 3, 4, 2, 3, 2, (1, 3), (2, 0), (1, 2), (0, 2)),
    (1, 2, 5, 5, 2, 4, 4, 3, 1, 2, 1),
]


@pytest.mark.parametrize("case", TRANSPOSED)
def test_conv_transpose2d_matches_torch(case):
    N, C, H, W, Co, KH, KW, s, p, d, op = case
    rng = np.random.default_rng(1)
    x = rng.standard_normal((N, C, H, W))
    w = rng.standard_normal((C, Co, KH, KW))
    b = rng.standard_normal(Co)
    kw = dict(stride=s, padding=p, dilation=d, output_padding=op)
    out, cache = conv_transpose2d_forward(x, w, b, **kw)
    dout = rng.standard_normal(out.shape)
    dx, dw, db = conv_transpose2d_backward(dout, cache)

    tx = torch.tensor(x, requires_grad=True)
    tw = torch.tensor(w, requires_grad=True)
    tb = torch.tensor(b, requires_grad=True)
    tout = torch.nn.functional.conv_transpose2d(tx, tw, tb, **kw)
    tout.backward(torch.tensor(dout))
    assert out.shape == tuple(tout.shape)
    np.testing.assert_allclose(out, tout.detach().numpy(), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(dx, tx.grad.numpy(), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(dw, tw.grad.numpy(), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(db, tb.grad.numpy(), rtol=1e-10, atol=1e-10)
