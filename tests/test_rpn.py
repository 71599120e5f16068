"""Tests for mrcnn_np.rpn: head, flattening, targets, loss and proposals.

Golden values are worked out by hand in the comments; the head is compared
with an independent convolution written here (pad + sum over the 3x3 offsets);
gradients are checked against central differences in float64.
"""
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mrcnn_np.gradcheck import numeric_gradient, relative_error
from mrcnn_np.rpn import (
    PROPOSAL_PRESETS,
    RPN_PARAM_NAMES,
    assign_targets_to_anchors,
    concat_box_prediction_layers_backward,
    concat_box_prediction_layers_forward,
    decode_proposals,
    filter_proposals,
    generate_proposals,
    init_rpn_head,
    rpn_head_backward,
    rpn_head_forward,
    rpn_loss,
    rpn_loss_from_samples,
    rpn_targets,
    sample_anchors,
)

# ------------------------------------------------------------------ helpers


def _conv3x3_pad1(x, w, b):
    """Independent 3x3 convolution, stride 1, padding 1: sum over the 9 offsets."""
    n, c, h, wd = x.shape
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    out = np.zeros((n, w.shape[0], h, wd), dtype=x.dtype)
    for i in range(3):
        for j in range(3):
            out += np.einsum("nchw,fc->nfhw", xp[:, :, i:i + h, j:j + wd], w[:, :, i, j])
    return out + b[None, :, None, None]


def _conv1x1(x, w, b):
    return np.einsum("nchw,fc->nfhw", x, w[:, :, 0, 0]) + b[None, :, None, None]


def _random_params(c, a, rng, dtype=np.float64, scale=0.3):
    p = init_rpn_head(c, a, rng=rng, dtype=dtype)
    # non-nice values everywhere (init gives zero biases and tiny weights)
    return {k: (rng.standard_normal(v.shape) * scale).astype(dtype) for k, v in p.items()}


# --------------------------------------------------------------------- init


def test_init_names_shapes_and_statistics():
    p = init_rpn_head(64, 3, rng=np.random.default_rng(0))
    assert set(p) == set(RPN_PARAM_NAMES) == {
        "rpn.head.conv.0.0.weight", "rpn.head.conv.0.0.bias",
        "rpn.head.cls_logits.weight", "rpn.head.cls_logits.bias",
        "rpn.head.bbox_pred.weight", "rpn.head.bbox_pred.bias",
    }
    assert p["rpn.head.conv.0.0.weight"].shape == (64, 64, 3, 3)
    assert p["rpn.head.cls_logits.weight"].shape == (3, 64, 1, 1)
    assert p["rpn.head.bbox_pred.weight"].shape == (12, 64, 1, 1)
    assert p["rpn.head.bbox_pred.bias"].shape == (12,)
    assert all(v.dtype == np.float32 for v in p.values())
    for k in RPN_PARAM_NAMES:
        if k.endswith("bias"):
            assert np.all(p[k] == 0)
    w = p["rpn.head.conv.0.0.weight"]  # 36864 samples: std within 3 % of 0.01
    assert abs(w.std() - 0.01) < 3e-4 and abs(w.mean()) < 3e-4
    q = init_rpn_head(64, 3, rng=np.random.default_rng(0))
    assert all(np.array_equal(p[k], q[k]) for k in p)
    assert init_rpn_head(4, 3, rng=np.random.default_rng(0), dtype=np.float64)[
        "rpn.head.cls_logits.weight"].dtype == np.float64


def test_init_bad_inputs():
    with pytest.raises(ValueError, match="in_channels"):
        init_rpn_head(0, 3, rng=np.random.default_rng(0))
    with pytest.raises(TypeError, match="num_anchors"):
        init_rpn_head(4, 3.0, rng=np.random.default_rng(0))
    with pytest.raises(TypeError, match="rng"):
        init_rpn_head(4, 3, rng=0)
    with pytest.raises(TypeError, match="dtype"):
        init_rpn_head(4, 3, rng=np.random.default_rng(0), dtype=np.int32)


# --------------------------------------------------------------------- head


def _two_levels(rng, n=2, c=3, dtype=np.float64):
    return [rng.standard_normal((n, c, 5, 4)).astype(dtype),
            rng.standard_normal((n, c, 3, 2)).astype(dtype)]


def test_head_forward_matches_independent_convolution():
    rng = np.random.default_rng(1)
    p = _random_params(3, 2, rng)
    feats = _two_levels(rng)
    (obj, deltas), _ = rpn_head_forward(p, feats)
    assert len(obj) == len(deltas) == 2
    for x, o, d in zip(feats, obj, deltas):
        t = np.maximum(_conv3x3_pad1(x, p["rpn.head.conv.0.0.weight"], p["rpn.head.conv.0.0.bias"]), 0)
        want_o = _conv1x1(t, p["rpn.head.cls_logits.weight"], p["rpn.head.cls_logits.bias"])
        want_d = _conv1x1(t, p["rpn.head.bbox_pred.weight"], p["rpn.head.bbox_pred.bias"])
        assert o.shape == (2, 2) + x.shape[2:] and d.shape == (2, 8) + x.shape[2:]
        np.testing.assert_allclose(o, want_o, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(d, want_d, rtol=1e-12, atol=1e-12)
    # predict's path (no caches, ReLU in place): the same numbers, bit for bit
    from mrcnn_np.rpn import _rpn_head_infer
    obj_i, deltas_i = _rpn_head_infer(p, feats)
    assert all(np.array_equal(a, b) for a, b in zip(obj_i + deltas_i, obj + deltas))


def test_head_float32_stays_float32():
    rng = np.random.default_rng(2)
    p = init_rpn_head(4, 3, rng=rng)
    feats = [rng.standard_normal((1, 4, 6, 6)).astype(np.float32)]
    (obj, deltas), cache = rpn_head_forward(p, feats)
    assert obj[0].dtype == np.float32 and deltas[0].dtype == np.float32
    grads, dfeats = rpn_head_backward(([np.ones_like(obj[0])], [np.ones_like(deltas[0])]), cache)
    assert all(g.dtype == np.float32 for g in grads.values()) and dfeats[0].dtype == np.float32


def test_head_gradients_two_levels():
    rng = np.random.default_rng(3)
    p = _random_params(3, 2, rng)
    feats = _two_levels(rng)
    # keep the ReLU off its kink: every pre-activation at least 1e-4 from 0
    for x in feats:
        pre = _conv3x3_pad1(x, p["rpn.head.conv.0.0.weight"], p["rpn.head.conv.0.0.bias"])
        assert np.min(np.abs(pre)) > 1e-4
    (obj, deltas), cache = rpn_head_forward(p, feats)
    dobj = [rng.standard_normal(o.shape) for o in obj]
    ddel = [rng.standard_normal(d.shape) for d in deltas]
    grads, dfeats = rpn_head_backward((dobj, ddel), cache)
    assert set(grads) == set(RPN_PARAM_NAMES)

    def scalar():
        (o, d), _ = rpn_head_forward(p, feats)
        return sum(np.sum(a * b) for a, b in zip(o, dobj)) + sum(np.sum(a * b) for a, b in zip(d, ddel))

    for k in RPN_PARAM_NAMES:
        num = numeric_gradient(scalar, p[k])
        assert relative_error(grads[k], num) < 1e-6, k
    for lvl, x in enumerate(feats):
        num = numeric_gradient(scalar, x)
        assert relative_error(dfeats[lvl], num) < 1e-6, lvl


def test_head_gradient_is_sum_over_levels():
    rng = np.random.default_rng(4)
    p = _random_params(3, 2, rng)
    feats = _two_levels(rng)
    (obj, deltas), cache = rpn_head_forward(p, feats)
    dobj = [rng.standard_normal(o.shape) for o in obj]
    ddel = [rng.standard_normal(d.shape) for d in deltas]
    both, _ = rpn_head_backward((dobj, ddel), cache)
    only0, _ = rpn_head_backward(([dobj[0], None], [ddel[0], None]), cache)
    only1, dfe1 = rpn_head_backward(([None, dobj[1]], [None, ddel[1]]), cache)
    for k in RPN_PARAM_NAMES:
        np.testing.assert_allclose(both[k], only0[k] + only1[k], rtol=1e-12, atol=1e-14)
    assert np.all(dfe1[0] == 0)


def test_head_bad_inputs():
    rng = np.random.default_rng(0)
    p = init_rpn_head(4, 3, rng=rng)
    x = rng.standard_normal((1, 4, 5, 5)).astype(np.float32)
    with pytest.raises(ValueError, match=r"features\[0\]"):
        rpn_head_forward(p, [x[:, :3]])
    with pytest.raises(TypeError, match=r"features\[0\]"):
        rpn_head_forward(p, [x.astype(np.float64)])
    with pytest.raises(ValueError, match=r"features\[1\]"):
        rpn_head_forward(p, [x, np.zeros((2, 4, 3, 3), np.float32)])
    with pytest.raises(TypeError, match="features"):
        rpn_head_forward(p, {"P2": x})
    with pytest.raises(TypeError, match="features"):
        rpn_head_forward(p, [])
    q = dict(p)
    del q["rpn.head.bbox_pred.bias"]
    with pytest.raises(ValueError, match="params"):
        rpn_head_forward(q, [x])
    q = dict(p)
    q["rpn.head.bbox_pred.weight"] = np.zeros((11, 4, 1, 1), np.float32)
    with pytest.raises(ValueError, match="bbox_pred.weight"):
        rpn_head_forward(q, [x])
    (o, d), cache = rpn_head_forward(p, [x])
    with pytest.raises(ValueError, match="dobjectness"):
        rpn_head_backward(([o, o], [d]), cache)
    with pytest.raises(TypeError, match="cache"):
        rpn_head_backward(([o], [d]), None)
    with pytest.raises(ValueError, match=r"dpred_bbox_deltas\[0\]"):
        rpn_head_backward(([o[0]], [d[0][:, :8]]), cache)
    with pytest.raises(TypeError, match=r"dobjectness\[0\]"):
        rpn_head_backward(([o[0].astype(np.float64)], [d[0]]), cache)


# ------------------------------------------------------------------ flatten


def test_flatten_index_formula():
    # level with N=2, A=3, H=2, W=4: entry (y*W + x)*A + a of the flat array
    # is obj[:, a, y, x]; deltas channel 4a + j goes to [..., (y*W + x)*A + a, j]
    rng = np.random.default_rng(5)
    o0, d0 = rng.standard_normal((2, 3, 2, 4)), rng.standard_normal((2, 12, 2, 4))
    o1, d1 = rng.standard_normal((2, 3, 1, 2)), rng.standard_normal((2, 12, 1, 2))
    (fo, fd), _ = concat_box_prediction_layers_forward([o0, o1], [d0, d1])
    assert fo.shape == (2, 24 + 6) and fd.shape == (2, 30, 4)
    for n in range(2):
        for y in range(2):
            for x in range(4):
                for a in range(3):
                    i = (y * 4 + x) * 3 + a
                    assert fo[n, i] == o0[n, a, y, x]
                    for j in range(4):
                        assert fd[n, i, j] == d0[n, 4 * a + j, y, x]
        for x in range(2):
            for a in range(3):
                i = 24 + x * 3 + a
                assert fo[n, i] == o1[n, a, 0, x]
                assert np.array_equal(fd[n, i], d1[n, 4 * a:4 * a + 4, 0, x])


def test_flatten_order_matches_pyramid_anchors():
    # Known answer: put each anchor's own centre and size into the head outputs
    # "by hand" (objectness = centre x, deltas = (cx, cy, w, h) of the anchor the
    # location/anchor-index should own), flatten, and compare with the anchors.
    from mrcnn_np.anchors import base_anchors, pyramid_anchors

    image = (64, 96)
    grids = [(8, 12), (4, 6)]
    sizes, ratios = ((16,), (32,)), ((0.5, 1.0, 2.0),) * 2
    anchors = pyramid_anchors(image, grids, sizes=sizes, aspect_ratios=ratios)
    objs, dels = [], []
    for (h, w), size, ratio in zip(grids, sizes, ratios):
        base = base_anchors(size, ratio, dtype=np.float64)   # (A, 4), centred on 0
        a = base.shape[0]
        sy, sx = image[0] // h, image[1] // w
        o = np.zeros((1, a, h, w))
        d = np.zeros((1, 4 * a, h, w))
        for ai in range(a):
            bw, bh = base[ai, 2] - base[ai, 0], base[ai, 3] - base[ai, 1]
            for y in range(h):
                for x in range(w):
                    o[0, ai, y, x] = x * sx                      # shift = top-left of the cell
                    d[0, 4 * ai:4 * ai + 4, y, x] = (x * sx, y * sy, bw, bh)
        objs.append(o)
        dels.append(d)
    (fo, fd), _ = concat_box_prediction_layers_forward(objs, dels)
    anc = np.concatenate(anchors).astype(np.float64)
    cx, cy = (anc[:, 0] + anc[:, 2]) / 2, (anc[:, 1] + anc[:, 3]) / 2
    np.testing.assert_allclose(fo[0], cx)
    np.testing.assert_allclose(fd[0, :, 0], cx)
    np.testing.assert_allclose(fd[0, :, 1], cy)
    np.testing.assert_allclose(fd[0, :, 2], anc[:, 2] - anc[:, 0])
    np.testing.assert_allclose(fd[0, :, 3], anc[:, 3] - anc[:, 1])


def test_flatten_backward_is_the_inverse_permutation():
    rng = np.random.default_rng(6)
    objs = [rng.standard_normal((2, 3, 4, 5)), rng.standard_normal((2, 3, 2, 3))]
    dels = [rng.standard_normal((2, 12, 4, 5)), rng.standard_normal((2, 12, 2, 3))]
    (fo, fd), cache = concat_box_prediction_layers_forward(objs, dels)
    bo, bd = concat_box_prediction_layers_backward((fo, fd), cache)
    for a, b in zip(objs + dels, bo + bd):
        assert np.array_equal(a, b)
    # adjoint: <flatten(x), y> == <x, flatten^T(y)>
    yo, yd = rng.standard_normal(fo.shape), rng.standard_normal(fd.shape)
    go, gd = concat_box_prediction_layers_backward((yo, yd), cache)
    lhs = np.sum(fo * yo) + np.sum(fd * yd)
    rhs = sum(np.sum(a * b) for a, b in zip(objs + dels, go + gd))
    assert abs(lhs - rhs) < 1e-10 * abs(lhs)


def test_flatten_bad_inputs():
    o = np.zeros((1, 3, 2, 2))
    with pytest.raises(ValueError, match=r"box_regression\[0\]"):
        concat_box_prediction_layers_forward([o], [np.zeros((1, 8, 2, 2))])
    with pytest.raises(ValueError, match="same length"):
        concat_box_prediction_layers_forward([o], [])
    with pytest.raises(ValueError, match=r"box_cls\[1\]"):
        concat_box_prediction_layers_forward([o, np.zeros((2, 3, 1, 1))],
                                             [np.zeros((1, 12, 2, 2)), np.zeros((2, 12, 1, 1))])
    (fo, fd), cache = concat_box_prediction_layers_forward([o], [np.zeros((1, 12, 2, 2))])
    with pytest.raises(ValueError, match="dobjectness"):
        concat_box_prediction_layers_backward((fo[:, :5], fd), cache)
    with pytest.raises(TypeError, match="douts"):
        concat_box_prediction_layers_backward(fo, cache)
    with pytest.raises(TypeError, match="dpred_bbox_deltas"):
        concat_box_prediction_layers_backward((fo.astype(np.float32), fd), cache)


# ------------------------------------------------------------------ targets

GT = np.array([[0.0, 0.0, 10.0, 10.0], [50.0, 50.0, 60.0, 60.0]])
ANCHORS = np.array([
    [0.0, 0.0, 10.0, 7.0],     # IoU with GT0: 70/100 = 0.7 exactly -> positive
    [0.0, 0.0, 10.0, 3.0],     # 30/100 = 0.3 -> between -> ignored
    [0.0, 0.0, 10.0, 2.9],     # 29/100 = 0.29 -> negative
    [20.0, 20.0, 30.0, 30.0],  # 0 -> negative
    [52.0, 50.0, 62.0, 60.0],  # GT1: 80/(100+100-80) = 0.667 -> between, but GT1's best -> positive
    [0.0, 0.0, 10.0, 6.0],     # GT0: 0.6 -> ignored
])


def test_assign_targets_golden():
    labels, matched = assign_targets_to_anchors(ANCHORS, GT)
    np.testing.assert_array_equal(labels, [1, -1, 0, 0, 1, -1])
    assert labels.dtype == np.int64
    np.testing.assert_array_equal(matched[0], GT[0])
    np.testing.assert_array_equal(matched[4], GT[1])
    labels, _ = assign_targets_to_anchors(ANCHORS, GT, allow_low_quality_matches=False)
    np.testing.assert_array_equal(labels, [1, -1, 0, 0, -1, -1])


def test_assign_targets_no_gt_all_negative():
    labels, matched = assign_targets_to_anchors(ANCHORS, np.zeros((0, 4)))
    np.testing.assert_array_equal(labels, np.zeros(6))
    np.testing.assert_array_equal(matched, np.zeros((6, 4)))


def test_rpn_targets_golden():
    labels, targets = rpn_targets(ANCHORS, [GT, np.zeros((0, 4))])
    assert labels.shape == (2, 6) and targets.shape == (2, 6, 4)
    np.testing.assert_array_equal(labels[0], [1, -1, 0, 0, 1, -1])
    np.testing.assert_array_equal(labels[1], 0)
    # anchor 0 (centre (5, 3.5), 10x7) -> GT0 (centre (5, 5), 10x10):
    # dx = 0, dy = 1.5/7, dw = log(10/10) = 0, dh = log(10/7)
    np.testing.assert_allclose(targets[0, 0], [0.0, 1.5 / 7, 0.0, math.log(10 / 7)], atol=1e-12)
    # anchor 4 (centre (57, 55), 10x10) -> GT1 (centre (55, 55), 10x10): dx = -2/10
    np.testing.assert_allclose(targets[0, 4], [-0.2, 0.0, 0.0, 0.0], atol=1e-12)
    np.testing.assert_array_equal(targets[0, [1, 2, 3, 5]], 0)
    np.testing.assert_array_equal(targets[1], 0)
    # list of per-level anchors is the same as their concatenation
    l2, t2 = rpn_targets([ANCHORS[:4], ANCHORS[4:]], [GT, np.zeros((0, 4))])
    assert np.array_equal(l2, labels) and np.array_equal(t2, targets)


def test_targets_bad_inputs():
    with pytest.raises(ValueError, match="anchors"):
        assign_targets_to_anchors(ANCHORS[:, :3], GT)
    with pytest.raises(ValueError, match="gt_boxes"):
        assign_targets_to_anchors(ANCHORS, GT[0])
    with pytest.raises(TypeError, match="gt_boxes_per_image"):
        rpn_targets(ANCHORS, GT)
    with pytest.raises(ValueError, match=r"gt_boxes_per_image\[1\]"):
        rpn_targets(ANCHORS, [GT, GT[:, :2]])
    with pytest.raises(ValueError, match=r"gt_boxes_per_image\[1\]"):
        rpn_targets(ANCHORS, [GT, np.array([[0.0, 0.0, np.nan, 4.0]])])
    with pytest.raises(ValueError, match="gt_boxes"):
        assign_targets_to_anchors(ANCHORS, np.array([[0.0, 0.0, np.inf, 4.0]]))


def test_targets_gt_cast_to_anchor_dtype():
    # float32 anchors with float64 ground truth (as torchvision, the GT follows the anchors)
    labels, targets = rpn_targets(ANCHORS.astype(np.float32), [GT])
    assert targets.dtype == np.float32
    want_labels, want_targets = rpn_targets(ANCHORS, [GT])
    np.testing.assert_array_equal(labels, want_labels)
    np.testing.assert_allclose(targets, want_targets, atol=1e-6)


# --------------------------------------------------------------------- loss


def test_loss_golden():
    # one image, 3 anchors: a0 sampled positive, a1 sampled negative, a2 ignored
    obj = np.array([[0.3, -0.2, 5.0]])
    deltas = np.zeros((1, 3, 4))
    deltas[0, 0] = [0.05, 0.5, -0.02, 0.0]
    deltas[0, 2] = [9.0, 9.0, 9.0, 9.0]           # ignored: must not count
    targets = np.zeros((1, 3, 4))
    labels = np.array([[1, 0, -1]])
    pos = np.array([[True, False, False]])
    neg = np.array([[False, True, False]])
    lo, lb, dobj, ddel = rpn_loss_from_samples(obj, deltas, labels, targets, pos, neg)
    # BCE(x, 1) = log(1 + e^-x); BCE(x, 0) = log(1 + e^x); mean over S = 2
    want_o = (math.log(1 + math.exp(-0.3)) + math.log(1 + math.exp(-0.2))) / 2
    # smooth L1, beta = 1/9: |d| < 1/9 -> 0.5 d^2 / beta = 4.5 d^2, else |d| - 1/18
    # 0.05 -> 0.01125; 0.5 -> 0.5 - 1/18; -0.02 -> 0.0018; 0 -> 0; sum / S
    want_b = (0.01125 + (0.5 - 1 / 18) + 0.0018) / 2
    assert lo == pytest.approx(want_o, rel=1e-12)
    assert lb == pytest.approx(want_b, rel=1e-12)
    # dBCE/dx = (sigmoid(x) - y) / S
    sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    np.testing.assert_allclose(dobj, [[(sig(0.3) - 1) / 2, sig(-0.2) / 2, 0.0]], rtol=1e-12)
    # d smoothL1 / dd = d / beta inside, sign(d) outside; / S
    np.testing.assert_allclose(ddel[0, 0], [0.05 * 9 / 2, 1 / 2, -0.02 * 9 / 2, 0.0], rtol=1e-12)
    assert np.all(ddel[0, 1:] == 0)


def _loss_case(rng, n=2, t=40):
    obj = rng.standard_normal((n, t)) * 2
    deltas = rng.standard_normal((n, t, 4)) * 0.3
    targets = rng.standard_normal((n, t, 4)) * 0.3
    # keep |deltas - targets| off the smooth-L1 kink at beta = 1/9
    diff = deltas - targets
    near = np.abs(np.abs(diff) - 1 / 9) < 1e-3
    deltas[near] += 0.01
    labels = rng.choice([1, 0, 0, -1], size=(n, t))
    return obj, deltas, labels, targets


def test_loss_gradients_finite_differences():
    rng = np.random.default_rng(7)
    obj, deltas, labels, targets = _loss_case(rng)
    pos, neg = sample_anchors(labels, rng=np.random.default_rng(1), batch_size_per_image=16,
                              positive_fraction=0.5)
    assert 0 < pos.sum() and 0 < neg.sum() and (pos | neg).sum() < (labels >= 0).sum()
    lo, lb, dobj, ddel = rpn_loss_from_samples(obj, deltas, labels, targets, pos, neg)
    n_obj = numeric_gradient(lambda: rpn_loss_from_samples(obj, deltas, labels, targets, pos, neg)[0], obj)
    n_del = numeric_gradient(lambda: rpn_loss_from_samples(obj, deltas, labels, targets, pos, neg)[1], deltas)
    assert relative_error(dobj, n_obj) < 1e-6
    assert relative_error(ddel, n_del) < 1e-6
    # the box loss does not depend on the logits, nor the objectness loss on the deltas
    assert np.all(numeric_gradient(
        lambda: rpn_loss_from_samples(obj, deltas, labels, targets, pos, neg)[1], obj) == 0)
    # nothing outside the sample gets a gradient
    assert np.all(dobj[~(pos | neg)] == 0) and np.all(ddel[~pos] == 0)


def test_rpn_loss_is_sample_then_loss_and_reproducible():
    rng = np.random.default_rng(8)
    obj, deltas, labels, targets = _loss_case(rng)
    kw = dict(batch_size_per_image=16, positive_fraction=0.25)
    a = rpn_loss(obj, deltas, labels, targets, rng=np.random.default_rng(3), **kw)
    b = rpn_loss(obj, deltas, labels, targets, rng=np.random.default_rng(3), **kw)
    pos, neg = sample_anchors(labels, rng=np.random.default_rng(3), **kw)
    c = rpn_loss_from_samples(obj, deltas, labels, targets, pos, neg)
    for x, y, z in zip(a, b, c):
        assert np.array_equal(x, y) and np.array_equal(x, z)
    d = rpn_loss(obj, deltas, labels, targets, rng=np.random.default_rng(4), **kw)
    assert d[0] != a[0]


def test_loss_normalised_by_batch_sample_count():
    # two identical images: the sum doubles and so does S -> same loss as one image
    rng = np.random.default_rng(9)
    obj, deltas, labels, targets = _loss_case(rng, n=1)
    pos, neg = labels == 1, labels == 0
    one = rpn_loss_from_samples(obj, deltas, labels, targets, pos, neg)
    dup = lambda x: np.concatenate([x, x])  # noqa: E731
    two = rpn_loss_from_samples(dup(obj), dup(deltas), dup(labels), dup(targets), dup(pos), dup(neg))
    assert two[0] == pytest.approx(one[0], rel=1e-12) and two[1] == pytest.approx(one[1], rel=1e-12)
    np.testing.assert_allclose(two[2][0], one[2][0] / 2, rtol=1e-12)


def test_sample_anchors_per_image_quotas():
    rng = np.random.default_rng(10)
    labels = rng.choice([1, 0, 0, 0, -1], size=(3, 2000))
    pos, neg = sample_anchors(labels, rng=rng)
    for i in range(3):
        assert pos[i].sum() == 128 and neg[i].sum() == 128
    assert np.all(labels[pos] == 1) and np.all(labels[neg] == 0)


def test_loss_nothing_sampled_is_zero():
    obj, deltas = np.ones((1, 3)), np.ones((1, 3, 4))
    labels = -np.ones((1, 3), dtype=np.int64)
    out = rpn_loss(obj, deltas, labels, np.zeros((1, 3, 4)), rng=np.random.default_rng(0))
    assert out[0] == 0 and out[1] == 0 and np.all(out[2] == 0) and np.all(out[3] == 0)


def test_loss_float32():
    rng = np.random.default_rng(11)
    obj, deltas, labels, targets = _loss_case(rng)
    out = rpn_loss(obj.astype(np.float32), deltas.astype(np.float32), labels,
                   targets.astype(np.float32), rng=np.random.default_rng(0))
    assert out[2].dtype == np.float32 and out[3].dtype == np.float32


def test_loss_bad_inputs():
    obj, deltas = np.zeros((1, 3)), np.zeros((1, 3, 4))
    labels, targets = np.array([[1, 0, -1]]), np.zeros((1, 3, 4))
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="pred_bbox_deltas"):
        rpn_loss(obj, deltas[:, :2], labels, targets, rng=rng)
    with pytest.raises(ValueError, match="labels"):
        rpn_loss(obj, deltas, labels[:, :2], targets, rng=rng)
    with pytest.raises(ValueError, match="regression_targets"):
        rpn_loss(obj, deltas, labels, targets[..., :3], rng=rng)
    with pytest.raises(TypeError, match="pred_bbox_deltas"):
        rpn_loss(obj, deltas.astype(np.float32), labels, targets, rng=rng)
    with pytest.raises(TypeError, match="rng"):
        rpn_loss(obj, deltas, labels, targets, rng=None)
    with pytest.raises(ValueError, match="disjoint"):
        rpn_loss_from_samples(obj, deltas, labels, targets, np.array([[1, 0, 0]], bool),
                              np.array([[1, 0, 0]], bool))
    with pytest.raises(ValueError, match="pos_mask"):
        rpn_loss_from_samples(obj, deltas, labels, targets, np.array([[0, 1, 0]], bool),
                              np.zeros((1, 3), bool))
    with pytest.raises(ValueError, match="labels"):
        rpn_loss(obj, deltas, np.array([[2, 0, -1]]), targets, rng=rng)
    with pytest.raises(ValueError, match="objectness"):
        rpn_loss(np.array([[0.0, np.nan, 0.0]]), deltas, labels, targets, rng=rng)
    with pytest.raises(ValueError, match="pred_bbox_deltas"):
        rpn_loss(obj, np.full((1, 3, 4), np.inf), labels, targets, rng=rng)


# ---------------------------------------------------------------- proposals


def _logit(p):
    return math.log(p / (1 - p))


def test_decode_zero_deltas_gives_anchors():
    anchors = np.array([[0.0, 0.0, 10.0, 20.0], [5.0, 5.0, 9.0, 7.0]])
    out = decode_proposals(np.zeros((2, 2, 4)), anchors)
    np.testing.assert_allclose(out, np.stack([anchors, anchors]), atol=1e-12)
    # dx = 0.1 moves the centre by 0.1 * width; dw = log 2 doubles the width
    out = decode_proposals(np.array([[[0.1, 0.0, math.log(2), 0.0], [0, 0, 0, 0]]]), anchors)
    np.testing.assert_allclose(out[0, 0], [-4.0, 0.0, 16.0, 20.0], atol=1e-12)


def test_filter_proposals_golden():
    # one image 20 (h) x 30 (w), one level
    boxes = np.array([[
        [0.0, 0.0, 10.0, 10.0],     # A  p=0.9
        [1.0, 0.0, 11.0, 10.0],     # B  p=0.8, IoU(A,B) = 90/110 = 0.82 -> suppressed by A
        [20.0, 12.0, 40.0, 40.0],   # C  p=0.7, clipped to [20, 12, 30, 20]
        [3.0, 3.0, 3.0005, 8.0],    # D  p=0.95, width 5e-4 < 1e-3 -> removed
        [-5.0, -5.0, 5.0, 14.0],    # E  p=0.6, clipped to [0, 0, 5, 14]: IoU(A,E) = 50/110 -> kept
    ]])
    probs = [0.9, 0.8, 0.7, 0.95, 0.6]
    obj = np.array([[_logit(p) for p in probs]])
    kw = dict(pre_nms_top_n=10, post_nms_top_n=10)
    out_b, out_s = filter_proposals(boxes, obj, [(20, 30)], [5], **kw)
    np.testing.assert_allclose(out_b[0], [[0, 0, 10, 10], [20, 12, 30, 20], [0, 0, 5, 14]])
    np.testing.assert_allclose(out_s[0], [0.9, 0.7, 0.6])
    # post_nms_top_n = 2 keeps the best two
    out_b, _ = filter_proposals(boxes, obj, [(20, 30)], [5], pre_nms_top_n=10, post_nms_top_n=2)
    assert out_b[0].shape == (2, 4)
    # pre_nms_top_n = 3 keeps D, A, B: D too small, B suppressed -> only A
    out_b, out_s = filter_proposals(boxes, obj, [(20, 30)], [5], pre_nms_top_n=3, post_nms_top_n=10)
    np.testing.assert_allclose(out_b[0], [[0, 0, 10, 10]])
    # score_thresh 0.65 drops E (0.6)
    _, out_s = filter_proposals(boxes, obj, [(20, 30)], [5], score_thresh=0.65, **kw)
    np.testing.assert_allclose(out_s[0], [0.9, 0.7])
    # nms_thresh 0.85 keeps B too (IoU 0.82)
    _, out_s = filter_proposals(boxes, obj, [(20, 30)], [5], nms_thresh=0.85, **kw)
    np.testing.assert_allclose(out_s[0], [0.9, 0.8, 0.7, 0.6])


def test_filter_proposals_nms_is_per_level_and_topk_per_level():
    # level 1 is an exact copy of level 0: batched NMS keeps both copies
    boxes = np.array([[[0.0, 0.0, 10.0, 10.0], [1.0, 0.0, 11.0, 10.0]] * 2])
    obj = np.array([[2.0, 1.0, 1.5, 0.5]])
    out_b, out_s = filter_proposals(boxes, obj, [(50, 50)], [2, 2], pre_nms_top_n=5, post_nms_top_n=5)
    np.testing.assert_allclose(out_b[0], [[0, 0, 10, 10], [0, 0, 10, 10]])
    np.testing.assert_allclose(out_s[0], 1 / (1 + np.exp(-np.array([2.0, 1.5]))))
    # pre_nms_top_n = 1 is per level: the best of each level survives, not the best two overall
    boxes = np.array([[[0.0, 0.0, 5, 5], [10, 10, 15, 15], [20, 20, 25, 25], [30, 30, 35, 35]]])
    obj = np.array([[3.0, 2.0, 0.0, 1.0]])
    out_b, _ = filter_proposals(boxes, obj, [(50, 50)], [2, 2], pre_nms_top_n=1, post_nms_top_n=5)
    np.testing.assert_allclose(out_b[0], [[0, 0, 5, 5], [30, 30, 35, 35]])


def test_filter_proposals_properties_random():
    from mrcnn_np.boxes import box_iou

    rng = np.random.default_rng(12)
    n, counts = 2, [300, 120, 40]
    t = sum(counts)
    xy = rng.uniform(-20, 100, size=(n, t, 2))
    wh = rng.uniform(1, 40, size=(n, t, 2))
    boxes = np.concatenate([xy, xy + wh], axis=2)
    obj = rng.standard_normal((n, t))
    shapes = [(64, 96), (80, 48)]
    out_b, out_s = filter_proposals(boxes, obj, shapes, counts, pre_nms_top_n=50, post_nms_top_n=60)
    for i in range(n):
        b, s = out_b[i], out_s[i]
        h, w = shapes[i]
        assert 0 < len(b) <= 60 and b.shape == (len(s), 4)
        assert np.all(b[:, 0] >= 0) and np.all(b[:, 2] <= w) and np.all(b[:, 1] >= 0) and np.all(b[:, 3] <= h)
        assert np.all(b[:, 2] - b[:, 0] >= 1e-3) and np.all(b[:, 3] - b[:, 1] >= 1e-3)
        assert np.all(np.diff(s) <= 0)
        # recover each kept box's level from its score (scores are distinct)
        probs = 1 / (1 + np.exp(-obj[i]))
        idx = np.array([np.argmin(np.abs(probs - v)) for v in s])
        np.testing.assert_allclose(probs[idx], s, rtol=1e-12)
        lvl = np.searchsorted(np.cumsum(counts), idx, side="right")
        for lv in range(3):
            sel = b[lvl == lv]
            iou = box_iou(sel, sel)
            np.fill_diagonal(iou, 0)
            assert np.all(iou <= 0.7)
    # one-level case: post-NMS cap reached
    out_b, _ = filter_proposals(boxes[:, :300], obj[:, :300], shapes, [300],
                                pre_nms_top_n=300, post_nms_top_n=5)
    assert all(len(b) == 5 for b in out_b)


def test_generate_proposals_end_to_end():
    from mrcnn_np.anchors import pyramid_anchors

    rng = np.random.default_rng(13)
    grids = [(16, 16), (8, 8)]
    anchors = pyramid_anchors((64, 64), grids, sizes=((16,), (32,)), aspect_ratios=((0.5, 1.0, 2.0),) * 2)
    p = init_rpn_head(4, 3, rng=rng)
    feats = [rng.standard_normal((2, 4) + g).astype(np.float32) for g in grids]
    (obj, deltas), _ = rpn_head_forward(p, feats)
    boxes, scores = generate_proposals(obj, deltas, anchors, [(64, 64), (60, 50)], mode="test")
    for b, s, (h, w) in zip(boxes, scores, [(64, 64), (60, 50)]):
        assert 0 < len(b) <= 1000 and b.dtype == np.float32
        assert np.all(b >= 0) and np.all(b[:, 2] <= w) and np.all(b[:, 3] <= h)
        assert np.all(np.diff(s) <= 0)
    b2, _ = generate_proposals(obj, deltas, anchors, [(64, 64)] * 2, pre_nms_top_n=10, post_nms_top_n=7)
    assert all(len(b) <= 7 for b in b2)
    assert PROPOSAL_PRESETS == {"train": {"pre_nms_top_n": 2000, "post_nms_top_n": 2000},
                                "test": {"pre_nms_top_n": 1000, "post_nms_top_n": 1000}}


def test_filter_proposals_no_anchors():
    out_b, out_s = filter_proposals(np.zeros((2, 0, 4)), np.zeros((2, 0)), [(8, 8)] * 2, [0, 0],
                                    pre_nms_top_n=5, post_nms_top_n=5)
    assert [b.shape for b in out_b] == [(0, 4)] * 2 and [s.shape for s in out_s] == [(0,)] * 2


def test_proposals_bad_inputs():
    boxes, obj = np.zeros((1, 4, 4)), np.zeros((1, 4))
    kw = dict(pre_nms_top_n=10, post_nms_top_n=10)
    with pytest.raises(ValueError, match="proposals"):
        filter_proposals(boxes[:, :3], obj, [(10, 10)], [4], **kw)
    with pytest.raises(ValueError, match="image_shapes"):
        filter_proposals(boxes, obj, [(10, 10), (5, 5)], [4], **kw)
    with pytest.raises(ValueError, match="num_anchors_per_level"):
        filter_proposals(boxes, obj, [(10, 10)], [3], **kw)
    with pytest.raises(ValueError, match="pre_nms_top_n"):
        filter_proposals(boxes, obj, [(10, 10)], [4], pre_nms_top_n=0, post_nms_top_n=1)
    with pytest.raises(ValueError, match="nms_thresh"):
        filter_proposals(boxes, obj, [(10, 10)], [4], nms_thresh=1.5, **kw)
    with pytest.raises(ValueError, match="mode"):
        generate_proposals([np.zeros((1, 1, 2, 2))], [np.zeros((1, 4, 2, 2))], [np.zeros((4, 4))],
                           [(8, 8)], mode="eval")
    with pytest.raises(ValueError, match=r"anchors\[0\]"):
        generate_proposals([np.zeros((1, 1, 2, 2))], [np.zeros((1, 4, 2, 2))], [np.zeros((5, 4))],
                           [(8, 8)], mode="test")
    with pytest.raises(ValueError, match="pred_bbox_deltas"):
        decode_proposals(np.zeros((1, 3, 4)), np.zeros((4, 4)))
    with pytest.raises(ValueError, match="proposals"):
        filter_proposals(np.full((1, 4, 4), np.nan), obj, [(10, 10)], [4], **kw)
    with pytest.raises(ValueError, match="objectness"):
        filter_proposals(boxes, np.full((1, 4), np.nan), [(10, 10)], [4], **kw)
    with pytest.raises(TypeError, match="objectness"):
        generate_proposals(np.zeros((1, 1, 2, 2)), [np.zeros((1, 4, 2, 2))], [np.zeros((4, 4))],
                           [(8, 8)], mode="test")
    with pytest.raises(ValueError, match=r"pred_bbox_deltas\[0\]"):
        generate_proposals([np.zeros((1, 1, 2, 2))], [np.zeros((1, 8, 2, 2))], [np.zeros((4, 4))],
                           [(8, 8)], mode="test")


# --------------------------------------------------------------- properties


@settings(max_examples=40)
@given(seed=st.integers(0, 2**31 - 1), g=st.integers(0, 4))
def test_labels_follow_their_definition(seed, g):
    # label rules restated from IoUs alone, with the "best anchor of some GT" set
    from mrcnn_np.boxes import box_iou

    rng = np.random.default_rng(seed)
    xy = rng.integers(0, 40, size=(60, 2)).astype(np.float64)
    anchors = np.concatenate([xy, xy + rng.integers(4, 20, size=(60, 2))], axis=1)
    gxy = rng.integers(0, 40, size=(g, 2)).astype(np.float64)
    gt = np.concatenate([gxy, gxy + rng.integers(4, 20, size=(g, 2))], axis=1)
    labels, matched = assign_targets_to_anchors(anchors, gt)
    if g == 0:
        assert np.all(labels == 0)
        return
    iou = box_iou(gt, anchors)
    q = iou.max(axis=0)
    is_best = np.any(iou == iou.max(axis=1, keepdims=True), axis=0)
    want = np.where(q >= 0.7, 1, np.where(q >= 0.3, -1, 0))
    want[is_best] = 1
    np.testing.assert_array_equal(labels, want)
    # a positive regresses to its own best GT
    pos = labels == 1
    np.testing.assert_array_equal(matched[pos], gt[iou.argmax(axis=0)][pos])


@settings(max_examples=30)
@given(
    n=st.integers(1, 3), a=st.integers(1, 4),
    hw=st.lists(st.tuples(st.integers(1, 5), st.integers(1, 5)), min_size=1, max_size=3),
    seed=st.integers(0, 1000),
)
def test_flatten_round_trip_random_shapes(n, a, hw, seed):
    rng = np.random.default_rng(seed)
    objs = [rng.standard_normal((n, a, h, w)) for h, w in hw]
    dels = [rng.standard_normal((n, 4 * a, h, w)) for h, w in hw]
    (fo, fd), cache = concat_box_prediction_layers_forward(objs, dels)
    assert fo.shape == (n, sum(h * w * a for h, w in hw)) and fd.shape == fo.shape + (4,)
    bo, bd = concat_box_prediction_layers_backward((fo, fd), cache)
    assert all(np.array_equal(x, y) for x, y in zip(objs + dels, bo + bd))
