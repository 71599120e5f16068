"""Cross-check mrcnn_np.roi_heads against torchvision (float64 unless noted).

Skipped unless torch and torchvision are installed (venv /work/tv):
    /work/tv/bin/python -m pytest tests/reference/test_roi_heads_torch.py
"""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")

from torchvision.models.detection import roi_heads as tv_rh  # noqa: E402
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead  # noqa: E402
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor  # noqa: E402

from mrcnn_np.roi_heads import (  # noqa: E402
    box_head_backward,
    box_head_forward,
    fastrcnn_loss,
    init_box_head,
    init_mask_head,
    mask_head_backward,
    mask_head_forward,
    maskrcnn_inference,
    maskrcnn_loss,
    paste_masks_in_image,
    postprocess_detections,
    project_masks_on_boxes,
    select_training_samples,
)


def _t(x):
    return torch.from_numpy(np.ascontiguousarray(x))


def _tv_roi_heads(**kw):
    args = dict(box_roi_pool=None, box_head=None, box_predictor=None, fg_iou_thresh=0.5, bg_iou_thresh=0.5,
                batch_size_per_image=512, positive_fraction=0.25, bbox_reg_weights=None,
                score_thresh=0.05, nms_thresh=0.5, detections_per_img=100)
    args.update(kw)
    return tv_rh.RoIHeads(**args)


def _random_boxes(rng, n, lo, hi, min_wh=2, max_wh=40):
    xy = rng.uniform(lo, hi, (n, 2))
    return np.concatenate([xy, xy + rng.uniform(min_wh, max_wh, (n, 2))], axis=1)


def test_state_dict_names_and_shapes_match_maskrcnn_resnet50_fpn():
    model = torchvision.models.detection.maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=4)
    tv = {k: tuple(v.shape) for k, v in model.state_dict().items() if k.startswith("roi_heads.")}
    rng = np.random.default_rng(0)
    ours = {**init_box_head(256, 7, 1024, 4, rng=rng), **init_mask_head(256, (256,) * 4, 256, 4, rng=rng)}
    assert {k: v.shape for k, v in ours.items()} == tv


def test_box_head_vs_torchvision():
    rng = np.random.default_rng(1)
    params = init_box_head(4, 7, 16, 5, rng=rng, dtype=np.float64)
    head, pred = TwoMLPHead(4 * 49, 16).double(), FastRCNNPredictor(16, 5).double()
    head.load_state_dict({k.split("box_head.")[1]: _t(v) for k, v in params.items() if "box_head." in k})
    pred.load_state_dict({k.split("box_predictor.")[1]: _t(v) for k, v in params.items() if "box_predictor." in k})
    pooled = rng.standard_normal((6, 4, 7, 7))
    (cls, box), cache = box_head_forward(params, pooled)
    x = _t(pooled).requires_grad_(True)
    tcls, tbox = pred(head(x))
    np.testing.assert_allclose(cls, tcls.detach().numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(box, tbox.detach().numpy(), rtol=1e-10, atol=1e-12)
    dcls, dbox = rng.standard_normal(cls.shape), rng.standard_normal(box.shape)
    ((tcls * _t(dcls)).sum() + (tbox * _t(dbox)).sum()).backward()
    grads, dpooled = box_head_backward((dcls, dbox), cache)
    np.testing.assert_allclose(dpooled, x.grad.numpy(), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(grads["roi_heads.box_head.fc6.weight"], head.fc6.weight.grad.numpy(),
                               rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(grads["roi_heads.box_predictor.bbox_pred.bias"], pred.bbox_pred.bias.grad.numpy(),
                               rtol=1e-9, atol=1e-12)


def test_mask_head_vs_torchvision():
    rng = np.random.default_rng(2)
    params = init_mask_head(4, (6, 6, 6, 6), 5, 3, rng=rng, dtype=np.float64)
    head, pred = MaskRCNNHeads(4, [6, 6, 6, 6], 1).double(), MaskRCNNPredictor(6, 5, 3).double()
    head.load_state_dict({k.split("mask_head.")[1]: _t(v) for k, v in params.items() if "mask_head." in k})
    pred.load_state_dict({k.split("mask_predictor.")[1]: _t(v) for k, v in params.items() if "mask_predictor." in k})
    pooled = rng.standard_normal((3, 4, 14, 14))
    logits, cache = mask_head_forward(params, pooled)
    x = _t(pooled).requires_grad_(True)
    tl = pred(head(x))
    np.testing.assert_allclose(logits, tl.detach().numpy(), rtol=1e-9, atol=1e-11)
    d = rng.standard_normal(logits.shape)
    (tl * _t(d)).sum().backward()
    grads, dpooled = mask_head_backward(d, cache)
    np.testing.assert_allclose(dpooled, x.grad.numpy(), rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(grads["roi_heads.mask_head.0.0.weight"], head[0][0].weight.grad.numpy(),
                               rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(grads["roi_heads.mask_predictor.conv5_mask.weight"],
                               pred.conv5_mask.weight.grad.numpy(), rtol=1e-8, atol=1e-10)


def test_select_training_samples_vs_torchvision_when_all_are_sampled():
    # with few RoIs everything is sampled, so the random sampler cannot differ
    rng = np.random.default_rng(3)
    gt = _random_boxes(rng, 3, 0, 60, 10, 30)
    labels = np.array([2, 1, 3])
    props = np.concatenate([gt + rng.uniform(-4, 4, gt.shape), _random_boxes(rng, 40, 0, 80)])
    p, m, lab, reg = select_training_samples([props], [{"boxes": gt, "labels": labels}],
                                             rng=np.random.default_rng(0))
    heads = _tv_roi_heads()
    tp, tm, tl, treg = heads.select_training_samples([_t(props)], [{"boxes": _t(gt), "labels": _t(labels)}])
    np.testing.assert_array_equal(p[0], tp[0].numpy())
    np.testing.assert_array_equal(m[0], tm[0].numpy())
    np.testing.assert_array_equal(lab[0], tl[0].numpy())
    np.testing.assert_allclose(reg[0], treg[0].numpy(), rtol=1e-12, atol=1e-12)


def test_fastrcnn_loss_vs_torchvision():
    rng = np.random.default_rng(4)
    s, k1 = 20, 5
    cls = rng.standard_normal((s, k1))
    box = rng.standard_normal((s, 4 * k1))
    labels = rng.integers(0, k1, s)
    targets = rng.standard_normal((s, 4))
    lc, lb, dcls, dbox = fastrcnn_loss(cls, box, [labels[:8], labels[8:]], [targets[:8], targets[8:]])
    tc, tb = _t(cls).requires_grad_(True), _t(box).requires_grad_(True)
    tlc, tlb = tv_rh.fastrcnn_loss(tc, tb, [_t(labels[:8]), _t(labels[8:])], [_t(targets[:8]), _t(targets[8:])])
    assert lc == pytest.approx(tlc.item(), rel=1e-12)
    assert lb == pytest.approx(tlb.item(), rel=1e-12)
    (tlc + tlb).backward()
    np.testing.assert_allclose(dcls, tc.grad.numpy(), rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(dbox, tb.grad.numpy(), rtol=1e-10, atol=1e-14)


def test_project_masks_and_maskrcnn_loss_vs_torchvision():
    rng = np.random.default_rng(5)
    gm = [rng.uniform(size=(3, 50, 60)) > 0.4, rng.uniform(size=(2, 40, 40)) > 0.6]
    gl = [np.array([1, 3, 2]), np.array([2, 2])]
    props = [_random_boxes(rng, 7, 0, 40, 3, 30), _random_boxes(rng, 4, 0, 20, 3, 25)]
    idxs = [rng.integers(0, 3, 7), rng.integers(0, 2, 4)]
    t = project_masks_on_boxes(gm[0], props[0], idxs[0], 28)
    tt = tv_rh.project_masks_on_boxes(_t(gm[0]), _t(props[0]), _t(idxs[0]), 28)
    np.testing.assert_allclose(t, tt.numpy(), rtol=1e-12, atol=1e-13)
    logits = rng.standard_normal((11, 4, 28, 28))
    loss, d = maskrcnn_loss(logits, props, gm, gl, idxs)
    tlog = _t(logits).requires_grad_(True)
    tloss = tv_rh.maskrcnn_loss(tlog, [_t(p) for p in props], [_t(g) for g in gm], [_t(g) for g in gl],
                                [_t(i) for i in idxs])
    assert loss == pytest.approx(tloss.item(), rel=1e-12)
    tloss.backward()
    np.testing.assert_allclose(d, tlog.grad.numpy(), rtol=1e-10, atol=1e-15)


def test_maskrcnn_inference_vs_torchvision():
    rng = np.random.default_rng(6)
    x = rng.standard_normal((5, 4, 28, 28))
    labels = [np.array([1, 3]), np.array([2, 2, 1])]
    ours = maskrcnn_inference(x, labels)
    theirs = tv_rh.maskrcnn_inference(_t(x), [_t(lab) for lab in labels])
    for a, b in zip(ours, theirs):
        np.testing.assert_allclose(a, b.numpy()[:, 0], rtol=1e-12)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_postprocess_detections_vs_torchvision(dtype):
    rng = np.random.default_rng(7)
    counts, k1 = (300, 150), 5
    props = [_random_boxes(rng, n, -10, 150, 2, 60).astype(dtype) for n in counts]
    shapes = [(140, 170), (90, 120)]
    logits = (rng.standard_normal((sum(counts), k1)) * 2).astype(dtype)
    reg = (rng.standard_normal((sum(counts), 4 * k1)) * 0.5).astype(dtype)
    boxes, scores, labels = postprocess_detections(logits, reg, props, shapes)
    tb, ts, tl = _tv_roi_heads().postprocess_detections(_t(logits), _t(reg), [_t(p) for p in props], shapes)
    tol = dict(rtol=1e-12, atol=1e-12) if dtype == np.float64 else dict(rtol=1e-5, atol=1e-4)
    for i in range(2):
        assert len(boxes[i]) > 50
        np.testing.assert_array_equal(labels[i], tl[i].numpy())
        np.testing.assert_allclose(scores[i], ts[i].numpy(), **tol)
        np.testing.assert_allclose(boxes[i], tb[i].numpy(), **tol)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_paste_masks_in_image_vs_torchvision(dtype):
    rng = np.random.default_rng(8)
    d, h, w = 30, 70, 90
    masks = rng.uniform(size=(d, 28, 28)).astype(dtype)
    # boxes that start inside the image: torchvision's slicing raises (or wraps)
    # for a box beyond the right/bottom edge or left of/above the image, ours pastes nothing
    boxes = _random_boxes(rng, d, -5, 60, 1, 60).astype(dtype)
    boxes[0] = [10.0, 20.0, 38.0, 48.0]
    ours = paste_masks_in_image(masks, boxes, (h, w))
    theirs = tv_rh.paste_masks_in_image(_t(masks)[:, None], _t(boxes), (h, w), padding=1)[:, 0].numpy()
    tol = dict(rtol=1e-12, atol=1e-13) if dtype == np.float64 else dict(rtol=1e-5, atol=3e-6)
    np.testing.assert_allclose(ours, theirs, **tol)
