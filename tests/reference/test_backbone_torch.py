"""Cross-check of mrcnn_np.backbone + fpn against torchvision, in float64.

torchvision's ResNet-FPN backbone (random init, frozen BN with randomised
buffers) is loaded into our flat dict by prefixing its state_dict keys with
``backbone.`` -- no mapping table -- and features, pyramid and gradients are
compared. Skips cleanly without torch/torchvision.
"""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")

from torchvision.models.detection.backbone_utils import (  # noqa: E402
    _resnet_fpn_extractor,
    resnet_fpn_backbone,
)
from torchvision.models.resnet import Bottleneck, ResNet  # noqa: E402
from torchvision.ops.misc import FrozenBatchNorm2d  # noqa: E402

from mrcnn_np.backbone import init_resnet, resnet_backward, resnet_forward  # noqa: E402
from mrcnn_np.fpn import fpn_backward, fpn_forward, init_fpn  # noqa: E402


def randomize_buffers(model, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, buf in model.named_buffers():
            if name.endswith("running_var"):
                buf.copy_(torch.rand(buf.shape, generator=g, dtype=buf.dtype) * 1.5 + 0.5)
            elif name.endswith("running_mean"):
                buf.copy_(torch.randn(buf.shape, generator=g, dtype=buf.dtype) * 0.2)
            elif name.endswith("weight"):
                buf.copy_(torch.rand(buf.shape, generator=g, dtype=buf.dtype) * 0.8 + 0.6)
            elif name.endswith("bias"):
                buf.copy_(torch.randn(buf.shape, generator=g, dtype=buf.dtype) * 0.2 + 0.1)
        for name, p in model.named_parameters():
            if name.startswith("fpn.") and name.endswith("bias"):
                p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.2)


def to_params(model):
    return {"backbone." + k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


def tiny_torch_backbone():
    torch.manual_seed(0)
    body = ResNet(Bottleneck, [1, 2, 1, 1], norm_layer=FrozenBatchNorm2d)
    model = _resnet_fpn_extractor(body, trainable_layers=5).double()
    randomize_buffers(model, 1)
    return model


def test_key_names_and_shapes_equal_ours():
    model = tiny_torch_backbone()
    theirs = {k: v.shape for k, v in to_params(model).items()}
    ours = init_resnet((1, 2, 1, 1), width=64, rng=np.random.default_rng(0))
    ours.update(init_fpn([256, 512, 1024, 2048], 256, rng=np.random.default_rng(1)))
    assert theirs == {k: v.shape for k, v in ours.items()}


def test_tiny_forward_and_gradients_match_torchvision():
    model = tiny_torch_backbone()
    params = to_params(model)
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 3, 70, 54))
    xt = torch.tensor(x, requires_grad=True)
    out_t = model(xt)  # OrderedDict "0".."3", "pool"
    level = {"0": 0, "1": 1, "2": 2, "3": 3, "pool": 4}  # torchvision's keys -> index in our pyramid list
    feats, rc = resnet_forward(params, x)
    pyr, fc = fpn_forward(params, feats)
    body_t = model.body(torch.tensor(x))
    for k, v in body_t.items():
        ours = feats[{"0": "C2", "1": "C3", "2": "C4", "3": "C5"}[k]]  # IntermediateLayerGetter names
        np.testing.assert_allclose(ours, v.detach().numpy(), rtol=1e-10, atol=1e-10)
    for k, v in out_t.items():
        np.testing.assert_allclose(pyr[level[k]], v.detach().numpy(), rtol=1e-10, atol=1e-10)

    dpyr = [None] * 5
    for k, v in out_t.items():
        dpyr[level[k]] = rng.standard_normal(v.shape)
    loss = sum((v * torch.tensor(dpyr[level[k]])).sum() for k, v in out_t.items())
    loss.backward()
    fgrads, dfeats = fpn_backward(dpyr, fc)
    bgrads, dx = resnet_backward(dfeats, rc, trainable_layers=5, return_input_grad=True)
    grads = {**bgrads, **fgrads}
    tgrads = {"backbone." + k: p.grad.numpy() for k, p in model.named_parameters()}
    # torchvision's trainable parameters are exactly the keys we return gradients for
    assert set(tgrads) == set(grads)
    for k in grads:
        np.testing.assert_allclose(grads[k], tgrads[k], rtol=1e-9, atol=1e-9 * np.abs(tgrads[k]).max())
    np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-9, atol=1e-12)


def test_trainable_layers_3_matches_torchvision_requires_grad():
    model = resnet_fpn_backbone(backbone_name="resnet50", weights=None, trainable_layers=3)
    trainable = {"backbone." + k for k, p in model.named_parameters()
                 if p.requires_grad and k.startswith("body.")}
    from mrcnn_np.backbone import resnet_trainable_keys

    params = to_params(model)
    assert set(resnet_trainable_keys(params, trainable_layers=3)) == trainable
    from mrcnn_np.fpn import init_resnet_fpn_backbone

    ours = init_resnet_fpn_backbone(50, rng=np.random.default_rng(0))
    assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in params.items()}


def test_resnet50_fpn_forward_matches_torchvision():
    torch.manual_seed(3)
    model = resnet_fpn_backbone(backbone_name="resnet50", weights=None, trainable_layers=5).double()
    randomize_buffers(model, 4)
    params = to_params(model)
    x = np.random.default_rng(5).standard_normal((1, 3, 96, 64))
    with torch.no_grad():
        out_t = model(torch.tensor(x))
    feats, _ = resnet_forward(params, x)
    pyr, _ = fpn_forward(params, feats)
    assert feats["C5"].shape == (1, 2048, 3, 2)
    level = {"0": 0, "1": 1, "2": 2, "3": 3, "pool": 4}  # torchvision's keys -> index in our pyramid list
    for k, v in out_t.items():
        v = v.numpy()
        np.testing.assert_allclose(pyr[level[k]], v, rtol=1e-9, atol=1e-9 * np.abs(v).max())
