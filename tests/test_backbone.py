"""Tests of mrcnn_np.backbone: structure, init, an independent reference
forward, the whole backbone + FPN gradient check, trainable layers, shapes
and validation."""
import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.lib.stride_tricks import sliding_window_view

from mrcnn_np.backbone import (
    RESNET_BLOCKS,
    check_resnet_params,
    init_resnet,
    resnet_backward,
    resnet_expected_shapes,
    resnet_feature_shapes,
    resnet_forward,
    resnet_receptive_fields,
    resnet_structure,
    resnet_trainable_keys,
)
from mrcnn_np.fpn import fpn_backward, fpn_forward, init_fpn
from mrcnn_np.gradcheck import numeric_gradient, relative_error

B = "backbone.body."


def randomize_bn(params, rng):
    """Non-trivial frozen BN statistics and affine, so BN is really exercised."""
    for k in params:
        if k.endswith("running_var"):
            params[k] = rng.uniform(0.5, 2.0, params[k].shape)
        elif k.endswith("running_mean"):
            params[k] = rng.normal(0.0, 0.2, params[k].shape)
        elif k.endswith(".bias") and k.startswith(B):
            params[k] = rng.normal(0.2, 0.2, params[k].shape)
        elif k.endswith(".weight") and ("bn" in k or "downsample.1" in k):
            params[k] = rng.uniform(0.6, 1.4, params[k].shape)
    return params


def tiny(layers=(1, 2, 1, 1), width=4, seed=0, dtype=np.float64):
    rng = np.random.default_rng(seed)
    return randomize_bn(init_resnet(layers, width=width, rng=rng, dtype=dtype), rng)


# ----------------------------------------------------------------- an independent reference forward
# Written from the architecture's definition with sliding windows and einsum
# (not the library's im2col or ops), so a wrong stride placement, padding or
# shortcut in backbone.py shows up as a mismatch.


def ref_conv(x, w, stride, pad):
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    k = w.shape[2]
    win = sliding_window_view(xp, (k, k), axis=(2, 3))[:, :, ::stride, ::stride]
    return np.einsum("nchwij,fcij->nfhw", win, w)


def ref_bn(x, p, name):
    m, v = p[name + ".running_mean"], p[name + ".running_var"]
    g, b = p[name + ".weight"], p[name + ".bias"]
    return (x - m[:, None, None]) / np.sqrt(v[:, None, None] + 1e-5) * g[:, None, None] + b[:, None, None]


def ref_maxpool_3x3_s2_p1(x):
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)), constant_values=-np.inf)
    return sliding_window_view(xp, (3, 3), axis=(2, 3))[:, :, ::2, ::2].max(axis=(-1, -2))


def ref_resnet(p, x, layers):
    relu = lambda t: np.maximum(t, 0)  # noqa: E731
    out = relu(ref_bn(ref_conv(x, p[B + "conv1.weight"], 2, 3), p, B + "bn1"))
    out = ref_maxpool_3x3_s2_p1(out)
    feats = {}
    for s, n in enumerate(layers, start=1):
        for b in range(n):
            q = f"{B}layer{s}.{b}."
            stride = 2 if (s > 1 and b == 0) else 1  # v1.5: the stride sits on the 3x3 conv
            h = relu(ref_bn(ref_conv(out, p[q + "conv1.weight"], 1, 0), p, q + "bn1"))
            h = relu(ref_bn(ref_conv(h, p[q + "conv2.weight"], stride, 1), p, q + "bn2"))
            h = ref_bn(ref_conv(h, p[q + "conv3.weight"], 1, 0), p, q + "bn3")
            if b == 0:
                sc = ref_bn(ref_conv(out, p[q + "downsample.0.weight"], stride, 0), p, q + "downsample.1")
            else:
                sc = out
            out = relu(h + sc)
        feats[f"C{s + 1}"] = out
    return feats


@pytest.mark.parametrize("fold_bn", [True, False])
def test_forward_matches_independent_reference(fold_bn):
    layers = (1, 2, 1, 2)
    p = tiny(layers, width=4, seed=1)
    x = np.random.default_rng(2).standard_normal((2, 3, 37, 45))
    feats, _ = resnet_forward(p, x, fold_bn=fold_bn)
    ref = ref_resnet(p, x, layers)
    assert set(feats) == {"C2", "C3", "C4", "C5"}
    for k in ref:
        assert feats[k].shape == ref[k].shape
        assert feats[k].dtype == np.float64
        np.testing.assert_allclose(feats[k], ref[k], rtol=1e-12, atol=1e-12)
        assert np.count_nonzero(feats[k]) > feats[k].size // 4  # not a dead network


def test_inference_path_equals_the_forward_bit_for_bit():
    # predict's backbone (no caches, ReLUs in place, a max-pool without winners) and the
    # training forward compute the same numbers
    from mrcnn_np.backbone import _resnet_infer, resnet_structure
    for dtype in (np.float32, np.float64):
        p = {k: v.astype(dtype) for k, v in tiny((1, 2, 1, 2), width=4, seed=5).items()}
        x = np.random.default_rng(6).standard_normal((2, 3, 37, 45)).astype(dtype)
        feats, _ = resnet_forward(p, x)
        got = _resnet_infer(p, x, resnet_structure(p))
        assert list(got) == list(feats)
        for k in feats:
            assert got[k].dtype == dtype and np.array_equal(got[k], feats[k])


def test_float32_in_float32_out_and_close_to_float64():
    p64 = tiny((1, 1, 1, 1), width=4, seed=3)
    p32 = {k: v.astype(np.float32) for k, v in p64.items()}
    x = np.random.default_rng(4).standard_normal((1, 3, 32, 32))
    f64, _ = resnet_forward(p64, x)
    f32, _ = resnet_forward(p32, x.astype(np.float32))
    for k in f64:
        assert f32[k].dtype == np.float32
        np.testing.assert_allclose(f32[k], f64[k], rtol=1e-4, atol=1e-4)


# ----------------------------------------------------------------- names, counts, init


def test_torchvision_key_names_tiny():
    p = init_resnet((1, 1, 1, 1), width=4, rng=np.random.default_rng(0))
    # stem: conv + 4 BN buffers = 5; first block of a stage: 3 convs + 3x4 BN
    # + downsample conv + 4 BN = 20; 4 stages -> 5 + 80 = 85
    assert len(p) == 85
    for key, shape in [
        ("conv1.weight", (4, 3, 7, 7)),
        ("bn1.running_var", (4,)),
        ("layer1.0.conv1.weight", (4, 4, 1, 1)),
        ("layer1.0.conv3.weight", (16, 4, 1, 1)),
        ("layer1.0.downsample.0.weight", (16, 4, 1, 1)),
        ("layer2.0.conv1.weight", (8, 16, 1, 1)),
        ("layer2.0.conv2.weight", (8, 8, 3, 3)),
        ("layer2.0.bn3.running_var", (32,)),
        ("layer2.0.downsample.0.weight", (32, 16, 1, 1)),
        ("layer2.0.downsample.1.weight", (32,)),
        ("layer4.0.conv3.weight", (128, 32, 1, 1)),
    ]:
        assert p[B + key].shape == shape, key
        assert p[B + key].dtype == np.float32


def test_resnet50_parameter_count_and_channels():
    p = init_resnet(depth=50, rng=np.random.default_rng(0))
    # torchvision resnet50.state_dict() has 320 entries: minus fc.weight, fc.bias
    # and 53 num_batches_tracked (FrozenBatchNorm2d has none) -> 265.
    assert len(p) == 265
    # torchvision: resnet50 has 25,557,032 parameters, of which the fc layer
    # 2048*1000 + 1000 = 2,049,000 -> 23,508,032 (conv weights + BN weight/bias)
    n = sum(v.size for k, v in p.items() if not k.endswith(("running_mean", "running_var")))
    assert n == 23_508_032
    assert resnet_structure(p) == (64, (3, 4, 6, 3))
    # output channels of each stage from the last conv3 of the stage
    outs = [p[f"{B}layer{s}.{n - 1}.conv3.weight"].shape[0] for s, n in zip(range(1, 5), (3, 4, 6, 3))]
    assert outs == [256, 512, 1024, 2048]
    assert p[B + "layer3.5.conv2.weight"].shape == (256, 256, 3, 3)
    assert f"{B}layer3.6.conv1.weight" not in p and f"{B}layer3.0.downsample.0.weight" in p
    assert f"{B}layer3.1.downsample.0.weight" not in p


def test_init_statistics_as_torchvision():
    p = init_resnet(depth=50, rng=np.random.default_rng(5), dtype=np.float64)
    w = p[B + "layer4.0.conv2.weight"]  # (512, 512, 3, 3), fan_out = 512*9
    assert abs(w.std() / np.sqrt(2.0 / (512 * 9)) - 1) < 0.01
    assert abs(w.mean()) < 1e-3 * w.std() * 10
    w = p[B + "conv1.weight"]  # (64, 3, 7, 7), fan_out = 64*49 (not fan_in = 3*49)
    assert abs(w.std() / np.sqrt(2.0 / (64 * 49)) - 1) < 0.05
    for k, v in p.items():
        if k.endswith("running_var") or (k.endswith(".weight") and v.ndim == 1):
            assert np.all(v == 1), k  # includes bn3: zero_init_residual is False
        elif k.endswith("running_mean") or k.endswith(".bias"):
            assert np.all(v == 0), k


def test_init_reproducible_and_depth_aliases():
    a = init_resnet((1, 1, 1, 1), width=4, rng=np.random.default_rng(7))
    b = init_resnet((1, 1, 1, 1), width=4, rng=np.random.default_rng(7))
    assert all(np.array_equal(a[k], b[k]) for k in a)
    r101 = init_resnet(101, width=2, rng=np.random.default_rng(0))
    assert resnet_structure(r101).layers == RESNET_BLOCKS[101]
    with pytest.raises(ValueError, match="depth"):
        init_resnet(18, rng=np.random.default_rng(0))  # basic-block ResNets are not bottleneck
    with pytest.raises(ValueError, match="layers"):
        init_resnet((1, 1, 1), rng=np.random.default_rng(0))
    with pytest.raises(TypeError, match="rng"):
        init_resnet(50, rng=0)


# ----------------------------------------------------------------- shapes and strides


def test_resnet50_shapes_1024_shape_only():
    shapes = resnet_feature_shapes((1, 3, 1024, 1024), layers=50, width=64)
    assert shapes == {
        "C2": (1, 256, 256, 256),
        "C3": (1, 512, 128, 128),
        "C4": (1, 1024, 64, 64),
        "C5": (1, 2048, 32, 32),  # the tutorial's 32x32x2048
    }


def test_resnet50_layout_1024_real_forward_small_weights():
    # the 1024x1024 case through the real forward: ResNet-50 block
    # counts at width 1 (C2..C5 get 4, 8, 16, 32 channels = 256..2048 / 64),
    # so it stays fast; spatial sizes do not depend on the width.
    p = init_resnet(50, width=1, rng=np.random.default_rng(0))
    x = np.random.default_rng(1).standard_normal((1, 3, 1024, 1024)).astype(np.float32)
    feats, _ = resnet_forward(p, x)
    assert {k: v.shape for k, v in feats.items()} == {
        "C2": (1, 4, 256, 256), "C3": (1, 8, 128, 128), "C4": (1, 16, 64, 64), "C5": (1, 32, 32, 32)}
    assert all(v.dtype == np.float32 for v in feats.values())


def test_strides_on_a_real_forward():
    # ResNet-50 block counts, tiny width: the real forward must give strides 4..32
    p = init_resnet(50, width=2, rng=np.random.default_rng(0))
    x = np.random.default_rng(1).standard_normal((1, 3, 128, 96)).astype(np.float32)
    feats, _ = resnet_forward(p, x)
    for k, s in zip(("C2", "C3", "C4", "C5"), (4, 8, 16, 32)):
        assert feats[k].shape[2:] == (128 // s, 96 // s)
    assert feats["C5"].shape[1] == 2 * 32
    assert resnet_feature_shapes(x.shape, layers=50, width=2) == {k: v.shape for k, v in feats.items()}


@settings(max_examples=15)
@given(h=st.integers(1, 70), w=st.integers(1, 70))
def test_shape_logic_equals_forward_on_any_size(h, w):
    p = init_resnet((1, 1, 1, 1), width=2, rng=np.random.default_rng(0), dtype=np.float32)
    x = np.ones((1, 3, h, w), np.float32)
    feats, _ = resnet_forward(p, x)
    shapes = resnet_feature_shapes(x.shape, layers=(1, 1, 1, 1), width=2)
    assert shapes == {k: v.shape for k, v in feats.items()}
    # each stride-2 step maps n -> (n - 1) // 2 + 1 = ceil(n / 2)
    for k, s in zip(("C2", "C3", "C4", "C5"), (4, 8, 16, 32)):
        assert shapes[k][2:] == (-(-h // s), -(-w // s))


def test_receptive_fields_resnet50_by_hand():
    # (jump j, field r) -> (j*s, r + (k-1)*j):
    # conv1 7x7/2: (2, 7); maxpool 3x3/2: (4, 7 + 2*2 = 11)
    # layer1: 3 blocks x 3x3 at j=4: 11 + 3*8 = 35
    # layer2: 3x3/2 at j=4: 35 + 8 = 43, j=8; 3 more x 16: 91
    # layer3: 91 + 16 = 107, j=16; 5 more x 32: 267
    # layer4: 267 + 32 = 299, j=32; 2 more x 64: 427
    assert resnet_receptive_fields(layers=50) == {
        "conv1": (2, 7), "maxpool": (4, 11), "C2": (4, 35), "C3": (8, 91), "C4": (16, 267), "C5": (32, 427)}
    # ResNet-101 only adds 17 blocks to layer3: 427 + 17*32 = 971
    assert resnet_receptive_fields(layers=101)["C5"] == (32, 971)


# ----------------------------------------------------------------- gradients


def picks(arr, grad, rng, k=3):
    """k random entries plus the entry with the largest analytic gradient."""
    chosen = rng.choice(arr.size, size=min(k, arr.size), replace=False)
    flat = [tuple(int(i) for i in np.unravel_index(j, arr.shape)) for j in chosen]
    flat.append(tuple(int(i) for i in np.unravel_index(np.argmax(np.abs(grad)), arr.shape)))
    return list(dict.fromkeys(flat))


def test_whole_backbone_and_fpn_gradient_check():
    rng = np.random.default_rng(11)
    layers = (1, 2, 1, 1)  # includes an identity-shortcut block in layer2
    p = tiny(layers, width=4, seed=12)
    p.update(init_fpn([16, 32, 64, 128], 6, rng=rng, dtype=np.float64))
    for i in range(4):  # non-zero FPN biases
        p[f"backbone.fpn.inner_blocks.{i}.0.bias"] = rng.normal(0, 0.3, 6)
        p[f"backbone.fpn.layer_blocks.{i}.0.bias"] = rng.normal(0, 0.3, 6)
    x = rng.standard_normal((1, 3, 36, 44))  # odd sizes: C2 9x11, C3 5x6, C4 3x3, C5 2x2, P6 1x1
    feats, rc = resnet_forward(p, x)
    pyr, fc = fpn_forward(p, feats)
    dpyr = [rng.standard_normal(v.shape) for v in pyr]

    def loss():
        f, _ = resnet_forward(p, x)
        out, _ = fpn_forward(p, f)
        return sum(np.sum(o * d) for o, d in zip(out, dpyr))

    fgrads, dfeats = fpn_backward(dpyr, fc)
    bgrads, dx = resnet_backward(dfeats, rc, trainable_layers=5, return_input_grad=True)
    conv_keys = [k for k in p if k.startswith(B) and k.endswith(".weight") and p[k].ndim == 4]
    assert list(bgrads) == conv_keys  # conv weights only, no frozen BN entry
    assert set(fgrads) == {k for k in p if k.startswith("backbone.fpn.")}
    grads = {**bgrads, **fgrads}
    for key, g in grads.items():
        assert g.shape == p[key].shape and g.dtype == np.float64
        assert np.any(g != 0), key
        idx = picks(p[key], g, rng)
        num = numeric_gradient(loss, p[key], indices=idx)
        sel = tuple(np.array(idx).T)
        assert relative_error(num[sel], g[sel]) < 1e-6, key
    idx = picks(x, dx, rng, k=6)
    num = numeric_gradient(loss, x, indices=idx)
    sel = tuple(np.array(idx).T)
    assert relative_error(num[sel], dx[sel]) < 1e-6


def test_folded_and_step_by_step_bn_agree_forward_and_backward():
    p = tiny((1, 2, 1, 1), width=4, seed=15)
    rng = np.random.default_rng(16)
    x = rng.standard_normal((2, 3, 33, 29))
    fa, ca = resnet_forward(p, x, fold_bn=True)
    fb, cb = resnet_forward(p, x, fold_bn=False)
    assert ca.stem.scale is not None and cb.stem.scale is None and cb.stem.bn is not None
    dfeats = {k: rng.standard_normal(v.shape) for k, v in fa.items()}
    ga, dxa = resnet_backward(dfeats, ca, return_input_grad=True)
    gb, dxb = resnet_backward(dfeats, cb, return_input_grad=True)
    for k in fa:
        np.testing.assert_allclose(fa[k], fb[k], rtol=1e-12, atol=1e-12)
    assert list(ga) == list(gb)
    for k in ga:
        np.testing.assert_allclose(ga[k], gb[k], rtol=1e-11, atol=1e-11 * np.abs(gb[k]).max())
    np.testing.assert_allclose(dxa, dxb, rtol=1e-11, atol=1e-11 * np.abs(dxb).max())


def test_trainable_layers_as_the_reference():
    p = tiny((1, 2, 1, 1), width=4, seed=20)
    rng = np.random.default_rng(21)
    x = rng.standard_normal((1, 3, 32, 32))
    feats, cache = resnet_forward(p, x)
    dfeats = {k: rng.standard_normal(v.shape) for k, v in feats.items()}
    full, dx_full = resnet_backward(dfeats, cache, return_input_grad=True)
    ref, dx_none = resnet_backward(dfeats, cache, trainable_layers=3)
    assert dx_none is None  # (grads, dinput): dinput None when not asked for
    assert list(ref) == resnet_trainable_keys(p, trainable_layers=3)
    assert all(re.match(re.escape(B) + r"layer[234]\.", k) for k in ref)
    assert len(ref) == 4 + 3 + 4 + 4  # layer2: 2 blocks (4 + 3 convs), layer3, layer4: 4 each
    for k in ref:
        np.testing.assert_array_equal(ref[k], full[k])
    assert resnet_backward(dfeats, cache, trainable_layers=0) == ({}, None)
    g4, _ = resnet_backward(dfeats, cache, trainable_layers=4)
    assert set(g4) - set(ref) == {k for k in full if ".layer1." in k}
    g3, dx3 = resnet_backward(dfeats, cache, trainable_layers=3, return_input_grad=True)
    np.testing.assert_array_equal(dx3, dx_full)
    assert set(g3) == set(ref)
    with pytest.raises(ValueError, match="trainable_layers"):
        resnet_backward(dfeats, cache, trainable_layers=6)


def test_missing_levels_count_as_zero():
    p = tiny((1, 1, 1, 1), width=4, seed=30)
    rng = np.random.default_rng(31)
    x = rng.standard_normal((1, 3, 32, 32))
    feats, cache = resnet_forward(p, x)
    d3 = rng.standard_normal(feats["C3"].shape)
    g, dx = resnet_backward({"C3": d3}, cache, return_input_grad=True)
    zeros = {k: np.zeros_like(v) for k, v in feats.items()}
    g0, dx0 = resnet_backward({**zeros, "C3": d3}, cache, return_input_grad=True)
    assert list(g) == list(g0)
    for k in g:
        np.testing.assert_allclose(g[k], g0[k], rtol=0, atol=1e-14)
    np.testing.assert_allclose(dx, dx0, rtol=0, atol=1e-14)
    assert not np.any(g[B + "layer4.0.conv1.weight"]) and np.any(g[B + "layer2.0.conv1.weight"])
    g, dx = resnet_backward({}, cache, return_input_grad=True)  # nothing flows: all zeros, all keys
    assert list(g) == list(g0) and not any(np.any(v) for v in g.values()) and not np.any(dx)
    assert all(g[k].shape == p[k].shape for k in g)


def test_bottleneck_backward_returns_grads_and_dx():
    from mrcnn_np.backbone import bottleneck_backward, bottleneck_forward, resnet_conv_specs

    p = tiny((1, 2, 1, 1), width=4, seed=50)
    rng = np.random.default_rng(51)
    _, stages = resnet_conv_specs(resnet_structure(p))
    for specs in (stages[1][0], stages[1][1]):  # with a downsample shortcut, with the identity
        x = rng.standard_normal((1, specs[0].in_channels, 7, 6))
        out, cache = bottleneck_forward(p, specs, x)
        dout = rng.standard_normal(out.shape)
        grads, dx = bottleneck_backward(dout, cache)  # (grads, dinput), as every stage
        assert list(grads) and set(grads) == {s.conv for s in specs if s is not None}

        def loss():
            return np.sum(bottleneck_forward(p, specs, x)[0] * dout)

        for key in list(grads)[:2]:
            assert relative_error(numeric_gradient(loss, p[key]), grads[key]) < 1e-6, key
        assert relative_error(numeric_gradient(loss, x), dx) < 1e-6
        g, none = bottleneck_backward(dout, cache, need_dx=False)
        assert none is None and set(g) == set(grads)
        for k in g:
            np.testing.assert_array_equal(g[k], grads[k])
        g, dx2 = bottleneck_backward(dout, cache, need_dw=False)
        assert g == {}
        np.testing.assert_array_equal(dx2, dx)


def test_backward_does_not_modify_dout():
    p = tiny((1, 2, 1, 1), width=4, seed=40)
    x = np.random.default_rng(41).standard_normal((1, 3, 32, 32))
    feats, cache = resnet_forward(p, x)
    dfeats = {k: np.random.default_rng(42).standard_normal(v.shape) for k, v in feats.items()}
    copies = {k: v.copy() for k, v in dfeats.items()}
    resnet_backward(dfeats, cache, return_input_grad=True)
    for k in dfeats:
        np.testing.assert_array_equal(dfeats[k], copies[k])


# ----------------------------------------------------------------- validation


def test_bad_params_raise_naming_the_key():
    p = init_resnet((1, 1, 1, 1), width=4, rng=np.random.default_rng(0))
    x = np.zeros((1, 3, 32, 32), np.float32)
    key = B + "layer2.0.bn2.running_mean"
    q = dict(p)
    del q[key]
    with pytest.raises(ValueError, match=re.escape(key)):
        resnet_forward(q, x)
    q = dict(p)
    q[B + "layer3.0.conv4.weight"] = np.zeros((1, 1, 1, 1), np.float32)
    with pytest.raises(ValueError, match=re.escape(B + "layer3.0.conv4.weight")):
        resnet_forward(q, x)
    q = dict(p)
    q[B + "fc.weight"] = np.zeros((10, 128), np.float32)
    with pytest.raises(ValueError, match=re.escape(B + "fc.weight")):
        resnet_forward(q, x)
    q = dict(p)
    key = B + "layer3.0.conv2.weight"
    q[key] = np.zeros((16, 16, 1, 1), np.float32)
    with pytest.raises(ValueError, match=re.escape(key) + r".*\(16, 16, 3, 3\)"):
        resnet_forward(q, x)
    q = dict(p)
    del q[B + "conv1.weight"]
    with pytest.raises(ValueError, match=re.escape(B + "conv1.weight")):
        resnet_forward(q, x)
    q = dict(p)
    q[key] = p[key].astype(np.float64)
    with pytest.raises(TypeError, match=re.escape(key)):
        resnet_forward(q, x)
    q = {k: v.copy() for k, v in p.items()}
    key = B + "layer1.0.bn2.running_var"
    q[key][1] = -1.0
    with pytest.raises(ValueError, match=re.escape(key)):
        resnet_forward(q, x)
    # keys of other parts of the model are ignored
    q = dict(p)
    q["rpn.head.cls_logits.weight"] = np.zeros(3)
    q["backbone.fpn.inner_blocks.0.0.weight"] = np.zeros(3)
    resnet_forward(q, x)
    assert check_resnet_params(p) == (4, (1, 1, 1, 1))
    assert resnet_expected_shapes((4, (1, 1, 1, 1))) == {k: v.shape for k, v in p.items()}


def test_bad_input_raises():
    p = init_resnet((1, 1, 1, 1), width=4, rng=np.random.default_rng(0))
    with pytest.raises(ValueError, match="x"):
        resnet_forward(p, np.zeros((1, 1, 32, 32), np.float32))
    with pytest.raises(ValueError, match="x"):
        resnet_forward(p, np.zeros((3, 32, 32), np.float32))
    with pytest.raises(TypeError, match="x"):
        resnet_forward(p, np.zeros((1, 3, 32, 32), np.int64))
    feats, cache = resnet_forward(p, np.zeros((1, 3, 32, 32), np.float32))
    with pytest.raises(ValueError, match="C2"):
        resnet_backward({"C2": np.zeros((1, 16, 4, 4), np.float32)}, cache)
    with pytest.raises(ValueError, match="P2"):
        resnet_backward({"P2": feats["C2"]}, cache)
    with pytest.raises(TypeError, match="C3"):
        resnet_backward({"C3": feats["C3"].astype(np.float64)}, cache)
