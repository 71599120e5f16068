"""Tests of mrcnn_np.fpn: hand-computed merges, odd sizes, an independent
reference, gradients, init and validation."""
import re

import numpy as np
import pytest
from numpy.lib.stride_tricks import sliding_window_view

from mrcnn_np.fpn import check_fpn_params, fpn_backward, fpn_forward, fpn_structure, init_fpn
from mrcnn_np.gradcheck import numeric_gradient, relative_error

F = "backbone.fpn."
IDENTITY_3x3 = np.array([[0, 0, 0], [0, 1, 0], [0, 0, 0]], dtype=np.float64)


def identity_fpn(channels, levels):
    """Inner 1x1 = identity matrix, 3x3 = centre tap only, biases 0: P_k = M_k."""
    p = {}
    for i in range(levels):
        p[f"{F}inner_blocks.{i}.0.weight"] = np.eye(channels)[:, :, None, None].copy()
        p[f"{F}inner_blocks.{i}.0.bias"] = np.zeros(channels)
        p[f"{F}layer_blocks.{i}.0.weight"] = np.einsum("fc,ij->fcij", np.eye(channels), IDENTITY_3x3)
        p[f"{F}layer_blocks.{i}.0.bias"] = np.zeros(channels)
    return p


def test_two_level_toy_by_hand():
    # one channel everywhere; inner_0: w = 2, b = 0.5; inner_1: w = -1, b = 1
    p = identity_fpn(1, 2)
    p[F + "inner_blocks.0.0.weight"][:] = 2.0
    p[F + "inner_blocks.0.0.bias"][:] = 0.5
    p[F + "inner_blocks.1.0.weight"][:] = -1.0
    p[F + "inner_blocks.1.0.bias"][:] = 1.0
    c2 = np.array([[1.0, 2.0], [3.0, 4.0]])[None, None]
    c3 = np.array([[3.0]])[None, None]
    pyr, _ = fpn_forward(p, {"C2": c2, "C3": c3})
    assert isinstance(pyr, list) and len(pyr) == 3  # [P2, P3, P4]
    p2, p3, p4 = pyr
    # M3 = -1 * 3 + 1 = -2
    np.testing.assert_array_equal(p3, [[[[-2.0]]]])
    # M2 = 2 * C2 + 0.5 + upsample(M3) = [[2.5, 4.5], [6.5, 8.5]] - 2
    np.testing.assert_array_equal(p2, [[[[0.5, 2.5], [4.5, 6.5]]]])
    # extra level: max_pool(P3, kernel 1, stride 2) of a 1x1 map = the map
    np.testing.assert_array_equal(p4, [[[[-2.0]]]])
    # a 3x3 output conv of all ones with bias 0.1: on a 2x2 map every cell's
    # zero-padded 3x3 window holds all four values: 0.5 + 2.5 + 4.5 + 6.5 + 0.1 = 14.1
    p[F + "layer_blocks.0.0.weight"][:] = 1.0
    p[F + "layer_blocks.0.0.bias"][:] = 0.1
    pyr, _ = fpn_forward(p, {"C2": c2, "C3": c3})
    np.testing.assert_allclose(pyr[0], np.full((1, 1, 2, 2), 14.1), rtol=1e-15)
    np.testing.assert_array_equal(pyr[1], [[[[-2.0]]]])


def test_odd_sizes_nearest_merge():
    # C5 7x7 -> C4 13x13 -> C3 25x25 -> C2 50x50 (a 200x200 image); identity
    # convs, so P_k is the merged map M_k and every index below is checkable.
    rng = np.random.default_rng(0)
    sizes = {"C2": 50, "C3": 25, "C4": 13, "C5": 7}
    feats = {k: rng.standard_normal((1, 2, s, s)) for k, s in sizes.items()}
    pyr, _ = fpn_forward(identity_fpn(2, 4), feats)
    assert [v.shape[2:] for v in pyr] == [(50, 50), (25, 25), (13, 13), (7, 7), (4, 4)]  # P2..P6
    # source rows, floor(dst * in / out), computed by hand:
    # 7 -> 13: i*7/13 = 0, .54, 1.08, 1.62, 2.15, 2.69, 3.23, 3.77, 4.31, 4.85, 5.38, 5.92, 6.46
    r13 = [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6]
    # 13 -> 25: i*13/25 = 0, .52, 1.04, 1.56, 2.08, 2.6, ..., 11.96 (i=23), 12.48 (i=24)
    r25 = [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7, 8, 8, 9, 9, 10, 10, 11, 11, 12]
    # 25 -> 50: exactly i // 2
    r50 = [i // 2 for i in range(50)]
    m5 = feats["C5"]
    m4 = feats["C4"] + m5[:, :, r13][:, :, :, r13]
    m3 = feats["C3"] + m4[:, :, r25][:, :, :, r25]
    m2 = feats["C2"] + m3[:, :, r50][:, :, :, r50]
    p2, p3, p4, p5, p6 = pyr
    np.testing.assert_array_equal(p5, m5)
    np.testing.assert_array_equal(p4, m4)
    np.testing.assert_array_equal(p3, m3)
    np.testing.assert_array_equal(p2, m2)
    # P6: rows/cols 0, 2, 4, 6 of P5
    np.testing.assert_array_equal(p6, m5[:, :, ::2, ::2])


def ref_conv(x, w, b, pad):
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    k = w.shape[2]
    win = sliding_window_view(xp, (k, k), axis=(2, 3))
    return np.einsum("nchwij,fcij->nfhw", win, w) + b[:, None, None]


def _random_fpn(rng, ins, out_channels, sizes, n):
    """float64 FPN params with non-zero biases, and C2..C5 of n images with the given sizes."""
    p = init_fpn(ins, out_channels, rng=rng, dtype=np.float64)
    for k in p:
        if k.endswith("bias"):
            p[k] = rng.standard_normal(p[k].shape)
    feats = {f"C{i + 2}": rng.standard_normal((n, c) + s) for i, (c, s) in enumerate(zip(ins, sizes))}
    return p, feats


def test_random_weights_match_independent_reference():
    rng = np.random.default_rng(1)
    ins = [3, 5, 4, 6]
    p, feats = _random_fpn(rng, ins, 7, [(23, 19), (12, 10), (6, 5), (3, 3)], 2)
    pyr, _ = fpn_forward(p, feats)
    last = None
    expect = [None] * 5
    for i in range(3, -1, -1):
        lat = ref_conv(feats[f"C{i + 2}"], p[f"{F}inner_blocks.{i}.0.weight"],
                       p[f"{F}inner_blocks.{i}.0.bias"], 0)
        if last is not None:
            h, w = lat.shape[2:]
            rows = (np.arange(h) * last.shape[2]) // h
            cols = (np.arange(w) * last.shape[3]) // w
            lat = lat + last[:, :, rows][:, :, :, cols]
        last = lat
        expect[i] = ref_conv(lat, p[f"{F}layer_blocks.{i}.0.weight"], p[f"{F}layer_blocks.{i}.0.bias"], 1)
    expect[4] = expect[3][:, :, ::2, ::2]
    assert len(pyr) == len(expect)
    for got, want in zip(pyr, expect):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


def test_fpn_gradient_check_odd_sizes():
    rng = np.random.default_rng(2)
    ins = [3, 4, 5, 6]
    p, feats = _random_fpn(rng, ins, 4, [(10, 14), (5, 7), (3, 4), (2, 2)], 1)
    pyr, cache = fpn_forward(p, feats)
    dpyr = [rng.standard_normal(v.shape) for v in pyr]
    copies = [v.copy() for v in dpyr]

    def loss():
        out, _ = fpn_forward(p, feats)
        return sum(np.sum(o * d) for o, d in zip(out, dpyr))

    grads, dfeats = fpn_backward(dpyr, cache)
    for d, c in zip(dpyr, copies):  # dout untouched
        np.testing.assert_array_equal(d, c)
    assert list(grads) == list(p)
    for key in p:
        num = numeric_gradient(loss, p[key])
        assert relative_error(num, grads[key]) < 1e-6, key
    for key in feats:
        num = numeric_gradient(loss, feats[key])
        assert relative_error(num, dfeats[key]) < 1e-6, key


def test_p6_gradient_lands_on_every_other_cell_of_p5():
    # only dP6 non-zero: the gradient reaching M5 through layer_blocks.3 is
    # the 3x3 conv's input gradient of a dP5 that is dP6 on the even cells.
    rng = np.random.default_rng(3)
    p = identity_fpn(1, 4)
    feats = {f"C{k}": rng.standard_normal((1, 1, s, s)) for k, s in zip(range(2, 6), (40, 20, 10, 5))}
    pyr, cache = fpn_forward(p, feats)
    d6 = rng.standard_normal(pyr[4].shape)
    _, dfeats = fpn_backward([None, None, None, None, d6], cache)  # None: no gradient from that level
    expect = np.zeros((1, 1, 5, 5))
    expect[:, :, ::2, ::2] = d6  # identity convs pass it straight through to C5
    np.testing.assert_array_equal(dfeats["C5"], expect)
    # and on down: C4 gets nothing from P6 (M4 does not feed P5)
    np.testing.assert_array_equal(dfeats["C4"], np.zeros((1, 1, 10, 10)))


def test_upsample_fork_adds_gradients():
    # dP2 only, identity convs: dC3[cell] = number of P2 cells copying it (times 1)
    p = identity_fpn(1, 2)
    feats = {"C2": np.zeros((1, 1, 5, 5)), "C3": np.zeros((1, 1, 3, 3))}
    _, cache = fpn_forward(p, feats)
    _, dfeats = fpn_backward([np.ones((1, 1, 5, 5)), None, None], cache)
    # 3 -> 5 rows: floor(i*3/5) for i=0..4 = 0, 0, 1, 1, 2 -> counts 2, 2, 1 per axis
    counts = np.array([2.0, 2.0, 1.0])
    np.testing.assert_array_equal(dfeats["C3"][0, 0], np.outer(counts, counts))
    np.testing.assert_array_equal(dfeats["C2"], np.ones((1, 1, 5, 5)))


def test_init_as_torchvision():
    p = init_fpn([256, 512, 1024, 2048], 256, rng=np.random.default_rng(4), dtype=np.float64)
    assert len(p) == 16
    assert fpn_structure(p) == ([256, 512, 1024, 2048], 256)
    assert p[F + "inner_blocks.3.0.weight"].shape == (256, 2048, 1, 1)
    assert p[F + "layer_blocks.0.0.weight"].shape == (256, 256, 3, 3)
    # kaiming_uniform(a=1): U(-b, b), b = sqrt(3 / fan_in), variance b^2 / 3 = 1 / fan_in
    w = p[F + "layer_blocks.2.0.weight"]
    b = np.sqrt(3.0 / (256 * 9))
    assert np.abs(w).max() <= b and np.abs(w).max() > 0.999 * b
    assert abs(w.var() * 256 * 9 - 1) < 0.01
    w = p[F + "inner_blocks.3.0.weight"]
    assert np.abs(w).max() <= np.sqrt(3.0 / 2048)
    for k, v in p.items():
        if k.endswith("bias"):
            assert v.shape == (256,) and not np.any(v)
    small = init_fpn([4, 8], 3, rng=np.random.default_rng(0))
    assert small[F + "inner_blocks.0.0.weight"].dtype == np.float32


def test_float32_stays_float32():
    rng = np.random.default_rng(5)
    p = init_fpn([2, 3], 4, rng=rng, dtype=np.float32)
    feats = {"C2": rng.standard_normal((1, 2, 8, 8)).astype(np.float32),
             "C3": rng.standard_normal((1, 3, 4, 4)).astype(np.float32)}
    pyr, cache = fpn_forward(p, feats)
    assert all(v.dtype == np.float32 for v in pyr)
    grads, dfeats = fpn_backward([np.ones_like(v) for v in pyr], cache)
    assert all(v.dtype == np.float32 for v in list(grads.values()) + list(dfeats.values()))


def test_bad_params_and_features_raise_naming_the_key():
    rng = np.random.default_rng(6)
    p = init_fpn([2, 3, 4, 5], 4, rng=rng)
    feats = {f"C{i + 2}": np.ones((1, c, 16 >> i, 16 >> i), np.float32) for i, c in enumerate([2, 3, 4, 5])}
    fpn_forward(p, feats)
    for key in (F + "layer_blocks.2.0.bias", F + "inner_blocks.1.0.weight"):
        q = dict(p)
        del q[key]
        with pytest.raises(ValueError, match=re.escape(key)):
            fpn_forward(q, feats)
    q = dict(p)
    q[F + "extra.0.weight"] = np.zeros(1, np.float32)
    with pytest.raises(ValueError, match=re.escape(F + "extra.0.weight")):
        fpn_forward(q, feats)
    q = dict(p)
    key = F + "layer_blocks.1.0.weight"
    q[key] = np.zeros((4, 4, 1, 1), np.float32)
    with pytest.raises(ValueError, match=re.escape(key) + r".*\(4, 4, 3, 3\)"):
        fpn_forward(q, feats)
    q = dict(p)
    q[key] = p[key].astype(np.float64)
    with pytest.raises(TypeError, match=re.escape(key)):
        fpn_forward(q, feats)
    q = dict(p)
    del q[F + "inner_blocks.0.0.weight"]
    with pytest.raises(ValueError, match=re.escape(F + "inner_blocks.0.0.weight")):
        fpn_forward(q, feats)
    q = dict(p)
    q["backbone.body.conv1.weight"] = np.zeros(1)  # other parts of the model: ignored
    fpn_forward(q, feats)
    with pytest.raises(ValueError, match="C5"):
        fpn_forward(p, {k: v for k, v in feats.items() if k != "C5"})
    with pytest.raises(ValueError, match="C3"):
        fpn_forward(p, {**feats, "C3": np.ones((1, 2, 8, 8), np.float32)})
    with pytest.raises(ValueError, match="C6"):
        fpn_forward(p, {**feats, "C6": np.ones((1, 2, 8, 8), np.float32)})
    with pytest.raises(ValueError, match="C4"):
        fpn_forward(p, {**feats, "C4": np.ones((2, 4, 4, 4), np.float32)})
    pyr, cache = fpn_forward(p, feats)
    dpyr = [np.ones_like(v) for v in pyr]
    with pytest.raises(ValueError, match=re.escape("dpyramid[1] must have shape (1, 4, 8, 8)")):
        fpn_backward([dpyr[0], np.ones((1, 4, 3, 3), np.float32)] + dpyr[2:], cache)
    with pytest.raises(ValueError, match=re.escape("dpyramid must have one entry per level (5), got 6")):
        fpn_backward(dpyr + [pyr[4]], cache)
    with pytest.raises(TypeError, match=re.escape("dpyramid[4] must have dtype float32")):
        fpn_backward(dpyr[:4] + [dpyr[4].astype(np.float64)], cache)
    with pytest.raises(TypeError, match="dpyramid must be a list of 5 per-level arrays"):
        fpn_backward(dict(zip(("P2", "P3", "P4", "P5", "P6"), dpyr)), cache)
    assert check_fpn_params(p) == ([2, 3, 4, 5], 4)


def test_backbone_with_fpn_chains_body_and_fpn():
    from mrcnn_np.backbone import REFERENCE_TRAINABLE_LAYERS, resnet_backward, resnet_forward
    from mrcnn_np.fpn import backbone_backward, backbone_forward, init_resnet_fpn_backbone

    p = init_resnet_fpn_backbone((1, 2, 1, 1), width=4, out_channels=6, rng=np.random.default_rng(7),
                                 dtype=np.float64)
    assert len([k for k in p if k.startswith(F)]) == 16
    assert p[F + "inner_blocks.3.0.weight"].shape == (6, 128, 1, 1)  # C5 = 4 * 4 * 8 channels
    x = np.random.default_rng(8).standard_normal((1, 3, 40, 40))
    pyr, cache = backbone_forward(p, x)
    feats, rc = resnet_forward(p, x)
    pyr2, fc = fpn_forward(p, feats)
    assert len(pyr) == len(pyr2) == 5
    for a, b in zip(pyr, pyr2):
        np.testing.assert_array_equal(a, b)
    dpyr = [np.random.default_rng(9).standard_normal(v.shape) for v in pyr]
    grads, dx = backbone_backward(dpyr, cache, return_input_grad=True)
    g_fpn, dfeats = fpn_backward(dpyr, fc)
    g_body, dx2 = resnet_backward(dfeats, rc, return_input_grad=True)
    assert set(grads) == set(g_fpn) | set(g_body)
    for k, v in {**g_fpn, **g_body}.items():
        np.testing.assert_array_equal(grads[k], v)
    np.testing.assert_array_equal(dx, dx2)
    ref, dx_none = backbone_backward(dpyr, cache, trainable_layers=REFERENCE_TRAINABLE_LAYERS)
    assert dx_none is None  # (grads, dinput): dinput None when not asked for
    assert not any(".layer1." in k or k.endswith("body.conv1.weight") for k in ref)
    assert set(g_fpn) <= set(ref)
