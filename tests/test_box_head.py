"""Tests for the box side of mrcnn_np.roi_heads: RoI targets, box head,
fastrcnn_loss and postprocess_detections.

Golden values are worked out by hand in the comments; the box head is compared
with an independent NumPy formula; gradients are checked against central
differences in float64 (relative error < 1e-6).
"""
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mrcnn_np.boxes import box_iou, decode_boxes
from mrcnn_np.gradcheck import numeric_gradient, relative_error
from mrcnn_np.roi_heads import (
    BOX_HEAD_KEYS,
    add_gt_proposals,
    assign_targets_to_proposals,
    box_head_backward,
    box_head_forward,
    fastrcnn_loss,
    init_box_head,
    postprocess_detections,
    select_positive_proposals,
    select_training_samples,
    subsample,
)

F64 = np.float64


def _target(boxes, labels):
    return {"boxes": np.asarray(boxes, F64).reshape(-1, 4), "labels": np.asarray(labels, np.int64)}


# =========================================================================== RoI targets
def test_select_training_samples_golden():
    # GT (0, 0, 10, 10), label 3. Proposals and their IoU with it:
    #   p0 = (0, 0, 10, 10)   IoU 1                      -> label 3, deltas 0
    #   p1 = (1, 0, 11, 10)   inter 9*10=90, union 110   -> 0.818, label 3
    #        centre x 6 vs 5: dx = 10 * (5 - 6) / 10 = -1; dy = 0; dw = dh = 5 log 1 = 0
    #   p2 = (0, 0, 10, 20)   inter 100, union 200       -> exactly 0.5 -> foreground (>= 0.5)
    #        dx = 0; dy = 10 * (5 - 10) / 20 = -2.5; dw = 0; dh = 5 log(10/20) = -5 log 2
    #   p3 = (5, 0, 15, 10)   inter 50, union 150        -> 1/3 -> background
    #   p4 = (20, 20, 30, 30) IoU 0                      -> background
    # plus the GT box appended as p5 -> label 3, deltas 0.
    props = np.array([[0, 0, 10, 10], [1, 0, 11, 10], [0, 0, 10, 20],
                      [5, 0, 15, 10], [20, 20, 30, 30]], F64)
    out_p, idxs, labels, reg = select_training_samples(
        [props], [_target([[0, 0, 10, 10]], [3])], rng=np.random.default_rng(0))
    # batch 512 > 6 RoIs and 4 positives <= 128: everything is sampled, in index order
    np.testing.assert_array_equal(out_p[0], np.concatenate([props, [[0, 0, 10, 10]]]))
    np.testing.assert_array_equal(labels[0], [3, 3, 3, 0, 0, 3])
    np.testing.assert_array_equal(idxs[0], [0, 0, 0, 0, 0, 0])
    expected = np.array([[0, 0, 0, 0], [-1, 0, 0, 0], [0, -2.5, 0, -5 * math.log(2)],
                         [0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]])
    pos = labels[0] > 0
    np.testing.assert_allclose(reg[0][pos], expected[pos], atol=1e-12)
    assert reg[0].dtype == F64 and labels[0].dtype == np.int64 and idxs[0].dtype == np.int64


def test_matched_idxs_pick_the_best_gt():
    # two GTs; p0 overlaps GT1 more (IoU 0.818 vs 0), p1 is GT0 itself
    gt = _target([[0, 0, 10, 10], [30, 30, 40, 40]], [1, 2])
    props = np.array([[31, 30, 41, 40], [0, 0, 10, 10]], F64)
    _, idxs, labels, _ = select_training_samples([props], [gt], rng=np.random.default_rng(1))
    np.testing.assert_array_equal(idxs[0][:2], [1, 0])
    np.testing.assert_array_equal(labels[0][:2], [2, 1])


def test_assign_and_add_gt_pieces():
    props = [np.array([[0, 0, 4, 4]], F64)]
    gtb = [np.array([[0, 0, 4, 4], [10, 10, 12, 12]], F64)]
    allp = add_gt_proposals(props, gtb)
    assert allp[0].shape == (3, 4)
    m, lab = assign_targets_to_proposals(allp, gtb, [np.array([2, 1])])
    np.testing.assert_array_equal(m[0], [0, 0, 1])
    np.testing.assert_array_equal(lab[0], [2, 2, 1])
    # thresholds 0.7 / 0.3 create an ignored band (-1): IoU 0.5 lies in it
    m, lab = assign_targets_to_proposals([np.array([[0, 0, 4, 8]], F64)], [gtb[0][:1]], [np.array([2])],
                                         fg_iou_thresh=0.7, bg_iou_thresh=0.3)
    np.testing.assert_array_equal(lab[0], [-1])


def test_sampling_limits_and_reproducibility():
    rng = np.random.default_rng(5)
    gt = _target([[20, 20, 60, 60], [70, 10, 110, 50]], [1, 2])
    # 400 proposals jittered around the GTs (many positives) and 400 random ones
    jitter = np.concatenate([gt["boxes"][i % 2] + rng.uniform(-3, 3, 4) for i in range(400)]).reshape(-1, 4)
    xy = rng.uniform(0, 100, (400, 2))
    rand = np.concatenate([xy, xy + rng.uniform(5, 30, (400, 2))], axis=1)
    props = [np.concatenate([jitter, rand])]
    p1, i1, l1, r1 = select_training_samples(props, [gt], rng=np.random.default_rng(7))
    p2, i2, l2, r2 = select_training_samples(props, [gt], rng=np.random.default_rng(7))
    for a, b in zip((p1, i1, l1, r1), (p2, i2, l2, r2)):
        np.testing.assert_array_equal(a[0], b[0])
    n_pos = int((l1[0] > 0).sum())
    assert n_pos == 128  # int(512 * 0.25), more positives than that are available
    assert l1[0].shape == (512,)  # negatives fill the rest (> 384 available)
    assert set(np.unique(l1[0])) <= {0, 1, 2}
    # the labels agree with an independent IoU computation
    iou = box_iou(gt["boxes"], p1[0])
    best = iou.max(axis=0)
    np.testing.assert_array_equal(l1[0] > 0, best >= 0.5)
    np.testing.assert_array_equal(l1[0][l1[0] > 0], gt["labels"][iou.argmax(axis=0)][l1[0] > 0])
    # a smaller batch and fraction
    _, _, l3, _ = select_training_samples(props, [gt], rng=np.random.default_rng(7),
                                          batch_size_per_image=64, positive_fraction=0.5)
    assert l3[0].shape == (64,) and int((l3[0] > 0).sum()) == 32


@settings(max_examples=30)
@given(seed=st.integers(0, 10_000), n_gt=st.integers(0, 4), n_prop=st.integers(0, 40),
       batch=st.integers(1, 64))
def test_targets_properties(seed, n_gt, n_prop, batch):
    rng = np.random.default_rng(seed)
    def boxes(n):
        xy = rng.uniform(0, 60, (n, 2))
        return np.concatenate([xy, xy + rng.uniform(1, 30, (n, 2))], axis=1)
    gt = _target(boxes(n_gt), rng.integers(1, 4, n_gt))
    p, idx, lab, reg = select_training_samples([boxes(n_prop)], [gt], rng=rng, batch_size_per_image=batch)
    p, idx, lab, reg = p[0], idx[0], lab[0], reg[0]
    assert len(p) == len(idx) == len(lab) == len(reg) <= min(batch, n_prop + n_gt)
    assert (lab > 0).sum() <= int(batch * 0.25)
    if n_gt == 0:
        assert np.all(lab == 0) and np.all(reg == 0)
        return
    iou = box_iou(gt["boxes"], p)
    fg = lab > 0
    # foreground iff the best IoU reaches 0.5; the label is the best GT's label
    np.testing.assert_array_equal(fg, iou.max(axis=0) >= 0.5)
    np.testing.assert_array_equal(idx[fg], iou.argmax(axis=0)[fg])
    np.testing.assert_array_equal(lab[fg], gt["labels"][idx[fg]])
    # decoding a positive's target gives its GT box back
    np.testing.assert_allclose(decode_boxes(reg[fg], p[fg], (10, 10, 5, 5)), gt["boxes"][idx[fg]],
                               rtol=1e-9, atol=1e-9)


def test_subsample_indices_sorted():
    labels = [np.array([0, 1, 0, 2, -1, 0, 1])]
    s = subsample(labels, rng=np.random.default_rng(0), batch_size_per_image=4, positive_fraction=0.5)
    assert np.all(np.diff(s[0]) > 0)
    assert 4 not in s[0]
    assert (labels[0][s[0]] > 0).sum() == 2 and len(s[0]) == 4


def test_no_gt_all_background():
    props = [np.array([[0, 0, 5, 5], [1, 1, 8, 9]], F64)]
    p, i, lab, reg = select_training_samples(props, [_target(np.zeros((0, 4)), [])],
                                             rng=np.random.default_rng(0))
    np.testing.assert_array_equal(lab[0], [0, 0])
    np.testing.assert_array_equal(i[0], [0, 0])
    np.testing.assert_array_equal(reg[0], np.zeros((2, 4)))


def test_empty_proposals():
    # with GT: the GT boxes alone are the RoIs, positives with zero deltas
    p, i, lab, reg = select_training_samples([np.zeros((0, 4))], [_target([[1, 2, 9, 7]], [2])],
                                             rng=np.random.default_rng(0))
    np.testing.assert_array_equal(p[0], [[1, 2, 9, 7]])
    np.testing.assert_array_equal(lab[0], [2])
    np.testing.assert_allclose(reg[0], np.zeros((1, 4)), atol=1e-12)
    # without GT: everything empty, right shapes
    p, i, lab, reg = select_training_samples([np.zeros((0, 4))], [_target(np.zeros((0, 4)), [])],
                                             rng=np.random.default_rng(0))
    assert p[0].shape == (0, 4) and i[0].shape == (0,) and lab[0].shape == (0,) and reg[0].shape == (0, 4)
    mp, mi = select_positive_proposals(p, lab, i)
    assert mp[0].shape == (0, 4) and mi[0].shape == (0,)


def test_two_images_and_positive_selection():
    props = [np.array([[0, 0, 10, 10], [50, 50, 60, 60]], F64), np.array([[5, 5, 25, 25]], F64)]
    targets = [_target([[0, 0, 10, 10]], [1]), _target([[5, 5, 25, 25], [0, 0, 3, 3]], [2, 3])]
    p, i, lab, reg = select_training_samples(props, targets, rng=np.random.default_rng(0))
    np.testing.assert_array_equal(lab[0], [1, 0, 1])
    np.testing.assert_array_equal(lab[1], [2, 2, 3])
    np.testing.assert_array_equal(i[1], [0, 0, 1])
    mp, mi = select_positive_proposals(p, lab, i)
    # background RoIs never reach the mask branch
    np.testing.assert_array_equal(mp[0], [[0, 0, 10, 10], [0, 0, 10, 10]])
    np.testing.assert_array_equal(mi[1], [0, 0, 1])


def test_float32_targets_keep_dtype():
    p, _, _, reg = select_training_samples([np.array([[0, 0, 10, 12]], np.float32)],
                                           [_target([[1, 0, 10, 10]], [1])], rng=np.random.default_rng(0))
    assert p[0].dtype == np.float32 and reg[0].dtype == np.float32


@pytest.mark.parametrize("kwargs, match", [
    (dict(proposals=np.zeros((2, 4))), "proposals"),
    (dict(proposals=[np.zeros((2, 5))]), "proposals"),
    (dict(targets=[{"boxes": np.zeros((1, 4))}]), "targets"),
    (dict(targets=[_target([[0, 0, 5, 5]], [0])]), r"targets\[0\]\['labels'\]"),
    (dict(proposals=[np.array([[4, 0, 0, 4]], F64)]), "proposals"),  # degenerate: its encoding is log(-1)
    (dict(proposals=[np.array([[0, 0, 4, 4]], np.float16)]), "float16"),
    (dict(targets=[_target([[5, 0, 5, 5]], [1])]), "boxes"),
    (dict(targets=[]), "targets"),
    (dict(rng=0), "rng"),
])
def test_select_training_samples_bad_inputs(kwargs, match):
    args = dict(proposals=[np.array([[0, 0, 4, 4]], F64)], targets=[_target([[0, 0, 5, 5]], [1])],
                rng=np.random.default_rng(0))
    args.update(kwargs)
    with pytest.raises((ValueError, TypeError), match=match):
        select_training_samples(args["proposals"], args["targets"], rng=args["rng"])


# =========================================================================== box head
def _small_box_head(rng, dtype=F64):
    # C=4, resolution 7, representation 8, num_classes K+1 = 4 (background + 3)
    return init_box_head(4, 7, 8, 4, rng=rng, dtype=dtype)


def test_init_box_head_names_shapes_and_bounds():
    params = init_box_head(16, 7, 64, 5, rng=np.random.default_rng(0))
    assert tuple(params) == BOX_HEAD_KEYS
    shapes = {k: v.shape for k, v in params.items()}
    assert shapes["roi_heads.box_head.fc6.weight"] == (64, 16 * 49)
    assert shapes["roi_heads.box_head.fc7.weight"] == (64, 64)
    assert shapes["roi_heads.box_predictor.cls_score.weight"] == (5, 64)
    assert shapes["roi_heads.box_predictor.bbox_pred.weight"] == (20, 64)
    assert shapes["roi_heads.box_predictor.bbox_pred.bias"] == (20,)
    assert all(v.dtype == np.float32 for v in params.values())
    # nn.Linear default: U(-1/sqrt(fan_in), 1/sqrt(fan_in)); fan_in of fc6 = 784 -> bound 1/28
    w = params["roi_heads.box_head.fc6.weight"]
    bound = 1 / 28
    assert np.abs(w).max() <= bound and np.abs(w).max() > 0.99 * bound
    assert abs(w.std() - bound / math.sqrt(3)) < 0.02 * bound  # std of U(-a, a) = a / sqrt(3)
    b = params["roi_heads.box_head.fc7.bias"]
    assert np.abs(b).max() <= 1 / 8


def test_box_head_forward_matches_formula():
    rng = np.random.default_rng(1)
    params = _small_box_head(rng)
    pooled = rng.standard_normal((3, 4, 7, 7))
    (cls, box), _ = box_head_forward(params, pooled)
    p = {k.rsplit(".", 2)[-2] + "." + k.rsplit(".", 1)[-1]: v for k, v in params.items()}
    x = pooled.reshape(3, -1)
    h = np.maximum(x @ p["fc6.weight"].T + p["fc6.bias"], 0)
    h = np.maximum(h @ p["fc7.weight"].T + p["fc7.bias"], 0)
    np.testing.assert_allclose(cls, h @ p["cls_score.weight"].T + p["cls_score.bias"], rtol=1e-12)
    np.testing.assert_allclose(box, h @ p["bbox_pred.weight"].T + p["bbox_pred.bias"], rtol=1e-12)
    assert cls.shape == (3, 4) and box.shape == (3, 16)
    # predict's path (no caches, ReLUs in place): the same numbers, bit for bit
    from mrcnn_np.roi_heads import _box_head_infer
    cls_i, box_i = _box_head_infer(params, pooled)
    assert np.array_equal(cls_i, cls) and np.array_equal(box_i, box)


def test_box_head_gradients():
    rng = np.random.default_rng(2)
    params = _small_box_head(rng)
    pooled = rng.standard_normal((3, 4, 7, 7))
    dcls = rng.standard_normal((3, 4))
    dbox = rng.standard_normal((3, 16))
    (_, _), cache = box_head_forward(params, pooled)
    # off the ReLU kinks: no pre-activation of fc6 or fc7 within 1e-4 of 0
    pre6 = cache.fc6.x @ params["roi_heads.box_head.fc6.weight"].T + params["roi_heads.box_head.fc6.bias"]
    pre7 = cache.fc7.x @ params["roi_heads.box_head.fc7.weight"].T + params["roi_heads.box_head.fc7.bias"]
    assert np.abs(pre6).min() > 1e-4 and np.abs(pre7).min() > 1e-4
    grads, dpooled = box_head_backward((dcls, dbox), cache)

    def f():
        (c, b), _ = box_head_forward(params, pooled)
        return np.sum(c * dcls) + np.sum(b * dbox)

    assert relative_error(dpooled, numeric_gradient(f, pooled)) < 1e-6
    for k in BOX_HEAD_KEYS:
        assert relative_error(grads[k], numeric_gradient(f, params[k])) < 1e-6, k


def test_box_head_backward_one_output_only():
    rng = np.random.default_rng(3)
    params = _small_box_head(rng)
    pooled = rng.standard_normal((2, 4, 7, 7))
    (_, _), cache = box_head_forward(params, pooled)
    grads, _ = box_head_backward((rng.standard_normal((2, 4)), None), cache)
    assert np.all(grads["roi_heads.box_predictor.bbox_pred.weight"] == 0)
    assert np.any(grads["roi_heads.box_predictor.cls_score.weight"] != 0)


def test_box_head_empty_and_bad_inputs():
    rng = np.random.default_rng(4)
    params = _small_box_head(rng)
    (cls, box), cache = box_head_forward(params, np.zeros((0, 4, 7, 7)))
    assert cls.shape == (0, 4) and box.shape == (0, 16)
    grads, dpooled = box_head_backward((cls, box), cache)
    assert dpooled.shape == (0, 4, 7, 7) and all(np.all(g == 0) for g in grads.values())
    with pytest.raises(ValueError, match="pooled"):
        box_head_forward(params, np.zeros((2, 5, 7, 7)))
    with pytest.raises(ValueError, match="pooled"):
        box_head_forward(params, np.zeros((2, 4, 7)))
    with pytest.raises(TypeError, match="dtype"):
        box_head_forward(params, np.zeros((2, 4, 7, 7), np.float32))
    with pytest.raises(ValueError, match="params"):
        box_head_forward({k: v for k, v in params.items() if "fc7" not in k}, np.zeros((2, 4, 7, 7)))
    with pytest.raises(ValueError, match="dclass_logits"):
        box_head_backward((np.zeros((3, 4)), None), box_head_forward(params, np.ones((2, 4, 7, 7)))[1])
    with pytest.raises(TypeError, match="dbox_regression"):
        box_head_backward((None, np.zeros((2, 16), np.float32)), box_head_forward(params, np.ones((2, 4, 7, 7)))[1])


# =========================================================================== fastrcnn_loss
def test_fastrcnn_loss_golden():
    # two sampled RoIs, K+1 = 2 classes, all logits 0 -> CE = log 2 for each, mean log 2
    cls = np.zeros((2, 2))
    labels = np.array([1, 0])
    targets = np.array([[0.3, -0.2, 0.1, 0.4], [9.0, 9.0, 9.0, 9.0]])
    box = np.zeros((2, 8))
    # RoI 0 (label 1) predicts targets + (0.05, 0, 0.2, 0) in its class-1 slot 4:8.
    #   smooth L1, beta = 1/9: |0.05| < 1/9 -> 0.5 * 0.05^2 * 9 = 0.01125
    #                          |0.2| >= 1/9 -> 0.2 - 0.5 / 9 = 0.1444...
    #   sum 0.1556944..., divided by the 2 sampled RoIs -> 0.0778472...
    box[0, 4:8] = targets[0] + [0.05, 0, 0.2, 0]
    box[0, 0:4] = 7.0  # class-0 slot of a positive: ignored
    box[1] = 3.0        # background RoI: ignored
    loss_cls, loss_box, dcls, dbox = fastrcnn_loss(cls, box, labels, targets)
    assert loss_cls == pytest.approx(math.log(2), rel=1e-14)
    assert loss_box == pytest.approx((0.01125 + 0.2 - 0.5 / 9) / 2, rel=1e-14)
    # dCE/dz = (softmax - onehot) / 2 = [[0.25, -0.25], [-0.25, 0.25]]
    np.testing.assert_allclose(dcls, [[0.25, -0.25], [-0.25, 0.25]], rtol=1e-14)
    # d box: (d / beta or sign(d)) / 2 = (0.05 * 9, 0, sign(0.2), 0) / 2 = (0.225, 0, 0.5, 0)
    np.testing.assert_allclose(dbox[0, 4:8], [0.225, 0, 0.5, 0], rtol=1e-12, atol=1e-15)
    # exactly zero gradient for the background RoI and for the other classes' slots
    assert np.all(dbox[1] == 0) and np.all(dbox[0, 0:4] == 0)


def test_fastrcnn_loss_gradients_and_lists():
    rng = np.random.default_rng(6)
    s, k1 = 7, 4
    cls = rng.standard_normal((s, k1))
    box = rng.standard_normal((s, 4 * k1)) * 0.5
    labels = np.array([0, 2, 0, 1, 3, 0, 2])
    targets = rng.standard_normal((s, 4)) * 0.5
    lc, lb, dcls, dbox = fastrcnn_loss(cls, box, labels, targets)
    # off the smooth-L1 kink |d| = 1/9
    d = box.reshape(s, k1, 4)[np.arange(s), labels] - targets
    assert np.abs(np.abs(d) - 1 / 9).min() > 1e-4
    assert relative_error(dcls, numeric_gradient(lambda: fastrcnn_loss(cls, box, labels, targets)[0], cls)) < 1e-6
    assert relative_error(dbox, numeric_gradient(lambda: fastrcnn_loss(cls, box, labels, targets)[1], box)) < 1e-6
    # background rows: exactly zero box gradient
    assert np.all(dbox[labels == 0] == 0)
    # per-image lists (torchvision's list[Tensor]) give the same result
    lc2, lb2, dcls2, dbox2 = fastrcnn_loss(cls, box, [labels[:3], labels[3:]], [targets[:3], targets[3:]])
    assert lc2 == lc and lb2 == lb
    np.testing.assert_array_equal(dbox2, dbox)


def test_fastrcnn_loss_no_positives_and_empty():
    cls = np.array([[2.0, -1.0], [0.5, 0.5]])
    lc, lb, dcls, dbox = fastrcnn_loss(cls, np.ones((2, 8)), np.array([0, 0]), np.ones((2, 4)))
    assert lb == 0 and np.all(dbox == 0) and lc > 0
    lc, lb, dcls, dbox = fastrcnn_loss(np.zeros((0, 3)), np.zeros((0, 12)), np.zeros(0, np.int64), np.zeros((0, 4)))
    assert lc == 0 and lb == 0 and dcls.shape == (0, 3) and dbox.shape == (0, 12)


@pytest.mark.parametrize("args, match", [
    ((np.zeros((2, 3)), np.zeros((2, 8)), np.array([0, 1]), np.zeros((2, 4))), "box_regression"),
    ((np.zeros((2, 3)), np.zeros((2, 12)), np.array([0, 3]), np.zeros((2, 4))), "labels"),
    ((np.zeros((2, 3)), np.zeros((2, 12)), np.array([0, 1, 1]), np.zeros((2, 4))), "labels"),
    ((np.zeros((2, 3)), np.zeros((2, 12)), np.array([0, 1]), np.zeros((2, 5))), "regression_targets"),
    ((np.array([[0.0, np.nan, 0.0]] * 2), np.zeros((2, 12)), np.array([0, 1]), np.zeros((2, 4))), "class_logits"),
    ((np.zeros((2, 3)), np.full((2, 12), np.inf), np.array([0, 1]), np.zeros((2, 4))), "box_regression"),
])
def test_fastrcnn_loss_bad_inputs(args, match):
    with pytest.raises(ValueError, match=match):
        fastrcnn_loss(*args)


# =========================================================================== postprocess_detections
def test_postprocess_golden_single_roi():
    # one RoI (10, 10, 30, 50) in a 40 x 40 image, logits (0, 0, ln 8, 0):
    # softmax = (1, 1, 8, 1) / 11; zero deltas decode to the RoI itself for
    # every class; clipping to width 40 and height 40 gives (10, 10, 30, 40).
    # Classes 1 and 3 have 1/11 = 0.0909 > 0.05 and survive too; they are
    # different classes, so NMS keeps all three; sorted: class 2 first.
    logits = np.array([[0.0, 0.0, math.log(8), 0.0]])
    boxes, scores, labels = postprocess_detections(logits, np.zeros((1, 16)), [np.array([[10, 10, 30, 50.0]])],
                                                   [(40, 40)])
    np.testing.assert_array_equal(labels[0], [2, 1, 3])
    np.testing.assert_allclose(scores[0], [8 / 11, 1 / 11, 1 / 11], rtol=1e-12)
    np.testing.assert_allclose(boxes[0], [[10, 10, 30, 40]] * 3, rtol=1e-12)
    # a higher threshold keeps only class 2
    _, s2, l2 = postprocess_detections(logits, np.zeros((1, 16)), [np.array([[10, 10, 30, 50.0]])],
                                       [(40, 40)], score_thresh=0.1)
    np.testing.assert_array_equal(l2[0], [2])


def test_postprocess_decodes_class_specific_deltas():
    # class 1's deltas shift the box right by 0.1 * width / 10 ... dx = 10 -> one full width
    reg = np.zeros((1, 8))
    reg[0, 4] = 10.0  # dx for class 1: cx += (10 / 10) * 20 = 20
    boxes, _, labels = postprocess_detections(np.array([[0.0, 5.0]]), reg, [np.array([[10, 10, 30, 30.0]])],
                                              [(100, 100)])
    np.testing.assert_allclose(boxes[0], [[30, 10, 50, 30]], rtol=1e-12)
    np.testing.assert_array_equal(labels[0], [1])


def test_postprocess_properties_random():
    rng = np.random.default_rng(8)
    r, k1, h, w = 400, 4, 120, 160
    xy = rng.uniform(-10, 150, (r, 2))
    props = np.concatenate([xy, xy + rng.uniform(2, 60, (r, 2))], axis=1)
    logits = rng.standard_normal((r, k1)) * 2
    reg = rng.standard_normal((r, 4 * k1)) * 0.5
    boxes, scores, labels = postprocess_detections(logits, reg, [props], [(h, w)])
    b, s, lab = boxes[0], scores[0], labels[0]
    assert 0 < len(b) <= 100 and len(b) == len(s) == len(lab)
    assert lab.min() >= 1 and lab.max() <= k1 - 1  # never background
    assert np.all(s > 0.05) and np.all(np.diff(s) <= 0)  # above threshold, sorted
    assert np.all(b[:, 0::2] >= 0) and np.all(b[:, 0::2] <= w) and np.all(b[:, 1::2] <= h)
    assert np.all(b[:, 2] - b[:, 0] >= 1e-2) and np.all(b[:, 3] - b[:, 1] >= 1e-2)
    for c in np.unique(lab):
        iou = box_iou(b[lab == c], b[lab == c])
        np.fill_diagonal(iou, 0)
        assert iou.max(initial=0) <= 0.5
    # detections_per_img caps the count; the kept ones are the best of the uncapped list
    _, s10, _ = postprocess_detections(logits, reg, [props], [(h, w)], detections_per_img=10)
    np.testing.assert_array_equal(s10[0], s[:10])
    # the default cap of 100 is active here: more than 100 candidates survive NMS
    _, s_all, _ = postprocess_detections(logits, reg, [props], [(h, w)], detections_per_img=10**6)
    assert len(s_all[0]) > 100 and len(s) == 100
    np.testing.assert_array_equal(s, s_all[0][:100])


def test_postprocess_two_images():
    # image 0 has 1 RoI, image 1 has 2; each is clipped to its own size
    logits = np.array([[0.0, 4.0], [0.0, 4.0], [4.0, 0.0]])
    props = [np.array([[0, 0, 50, 50.0]]), np.array([[0, 0, 50, 50.0], [1, 1, 5, 5.0]])]
    boxes, scores, labels = postprocess_detections(logits, np.zeros((3, 8)), props, [(30, 40), (60, 20)])
    np.testing.assert_allclose(boxes[0], [[0, 0, 40, 30]])
    # image 1: RoI 1 has p(class 1) = 1/(1+e^4) = 0.018 < 0.05 -> dropped
    np.testing.assert_allclose(boxes[1], [[0, 0, 20, 50]])


def test_postprocess_empty_cases():
    b, s, lab = postprocess_detections(np.zeros((0, 3)), np.zeros((0, 12)), [np.zeros((0, 4))], [(10, 10)])
    assert b[0].shape == (0, 4) and s[0].shape == (0,) and lab[0].shape == (0,) and lab[0].dtype == np.int64
    # nothing above the threshold
    b, s, lab = postprocess_detections(np.zeros((2, 3)), np.zeros((2, 12)), [np.array([[0, 0, 5, 5.0]] * 2)],
                                       [(10, 10)], score_thresh=0.9)
    assert b[0].shape == (0, 4) and s[0].shape == (0,)
    # a box crushed to zero width by clipping is removed
    b, s, lab = postprocess_detections(np.array([[0.0, 3.0]]), np.zeros((1, 8)), [np.array([[20, 0, 30, 5.0]])],
                                       [(10, 10)])
    assert b[0].shape == (0, 4)


@pytest.mark.parametrize("kw, match", [
    (dict(image_shapes=[(10,)]), "image_shapes"),
    (dict(image_shapes=[]), "image_shapes"),
    (dict(proposals=[np.zeros((3, 4))]), "proposals"),
    (dict(box_regression=np.zeros((2, 8))), "box_regression"),
    (dict(class_logits=np.full((2, 3), np.nan)), "finite"),
    # issue 16: out-of-range thresholds and counts were accepted
    (dict(score_thresh=1.5), "score_thresh"),
    (dict(nms_thresh=1.5), "nms_thresh"),
    (dict(detections_per_img=0), "detections_per_img"),
])
def test_postprocess_bad_inputs(kw, match):
    args = dict(class_logits=np.zeros((2, 3)), box_regression=np.zeros((2, 12)),
                proposals=[np.array([[0, 0, 5, 5.0]] * 2)], image_shapes=[(10, 10)])
    args.update(kw)
    tail = {k: args.pop(k) for k in ("score_thresh", "nms_thresh", "detections_per_img") if k in args}
    with pytest.raises(ValueError, match=match):
        postprocess_detections(args["class_logits"], args["box_regression"], args["proposals"],
                               args["image_shapes"], **tail)
