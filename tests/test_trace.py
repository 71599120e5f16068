"""trace: every intermediate of inference, named, from the code path detect runs;
and the diagnostics rpn_recall, iou_matrix, confusion_summary on hand-made cases."""
import dataclasses

import numpy as np
import pytest

import mrcnn_np
import mrcnn_np.model as M
from mrcnn_np import config as C
from mrcnn_np.anchors import pyramid_anchors
from mrcnn_np.boxes import decode_boxes
from mrcnn_np.data.shapes import ShapesDataset
from mrcnn_np.ops.activations import sigmoid
from mrcnn_np.roi_align import level_mapper, roi_align_forward
from mrcnn_np.rpn import decode_proposals, filter_proposals
from mrcnn_np.trace import (
    RECALL_STAGES,
    ImageTrace,
    confusion_summary,
    iou_matrix,
    rpn_recall,
    trace,
)
from mrcnn_np.transform import transform_forward

#: the fields the issue asks for, by name
REQUIRED = (
    "image", "scale", "image_size", "original_size", "features", "anchors", "objectness_logits",
    "objectness_probs", "top_anchors", "top_anchors_refined", "proposals_before_nms",
    "proposal_scores_before_nms", "proposals", "proposal_scores", "proposal_levels", "roi_features",
    "class_logits", "class_scores", "refined_boxes", "detections_before_threshold",
    "detections_before_nms", "mask_logits", "masks", "detections",
)

CONFIG = C.shapes_config()
NO_DETECTIONS = 0.99   # random weights give class scores near 1/4: nothing passes 0.99
FEW_DETECTIONS = 0.27  # ... and some (4 to 56 of 100 here) pass 0.27


def _chw(image):
    return np.ascontiguousarray(image.transpose(2, 0, 1))


@pytest.fixture(scope="module")
def data():
    """Random float32 shapes model; three images: 128 x 128 (kept), 96 x 128 (kept, padded
    to 128 x 128), 64 x 64 (resized x2 to 128 x 128)."""
    params = M.init_params(CONFIG, rng=np.random.default_rng(0))
    samples = [ShapesDataset(1, seed=1)[0], ShapesDataset(1, image_size=(96, 128), seed=2)[0],
               ShapesDataset(1, image_size=64, seed=3, max_objects=3)[0]]
    return params, [_chw(s["image"]) for s in samples], samples


_RUNS = {}


def _run(data, thresh):
    """(config, traces, detect's output), computed once per threshold."""
    if thresh not in _RUNS:
        params, images, _ = data
        cfg = CONFIG if thresh is None else CONFIG.replace(box_score_thresh=thresh)
        _RUNS[thresh] = (cfg, trace(params, images, cfg), M.detect(params, images, cfg))
    return _RUNS[thresh]


# =========================================================================== detections == detect


@pytest.mark.parametrize("thresh", [None, FEW_DETECTIONS, NO_DETECTIONS])
def test_detections_equal_detect_bit_for_bit(data, thresh):
    _, traces, dets = _run(data, thresh)
    assert len(traces) == len(dets) == 3
    for t, d in zip(traces, dets):
        assert set(t.detections) == set(d) == {"boxes", "labels", "scores", "masks"}
        for key in d:
            assert t.detections[key].dtype == d[key].dtype
            assert t.detections[key].shape == d[key].shape
            assert np.array_equal(t.detections[key], d[key]), key
    counts = [len(d["scores"]) for d in dets]
    if thresh is None:
        assert counts == [100, 100, 100]        # 0.05 keeps everything a random head scores
    elif thresh == FEW_DETECTIONS:
        assert all(0 < c < 100 for c in counts)
    else:
        assert counts == [0, 0, 0]


def test_no_detections_gives_empty_fields_of_the_right_shape(data):
    _, traces, _ = _run(data, NO_DETECTIONS)
    for t in traces:
        h0, w0 = t.original_size
        assert t.mask_logits.shape == t.mask_probs.shape == (0, 28, 28)
        assert t.masks.shape == (0, 1, h0, w0)
        assert t.detections["boxes"].shape == (0, 4)
        assert t.detections_before_nms["boxes"].shape == (0, 4)
        r = len(t.proposals)
        assert t.detections_before_threshold["scores"].shape == (r * 3,)   # still every pair


def test_detect_records_nothing(data, monkeypatch):
    """detect gives the recorder stages record=None (recording is off, not just ignored)."""
    params, images, _ = data
    seen = []
    for name in ("_propose", "_box_branch", "_postprocess_detections"):
        real = getattr(M, name)

        def spy(*args, _real=real, _name=name, **kw):
            seen.append((_name, kw.get("record")))
            return _real(*args, **kw)
        monkeypatch.setattr(M, name, spy)
    M.detect(params, images[:1], CONFIG)
    assert sorted(n for n, _ in seen) == ["_box_branch", "_postprocess_detections", "_propose"]
    assert all(r is None for _, r in seen)


def test_filter_proposals_record_keeps_the_steps_and_changes_nothing():
    rng = np.random.default_rng(5)
    xy = rng.uniform(-5, 40, (2, 9, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(0.5, 20, (2, 9, 2))], axis=2)
    boxes[0, 3] = [10, 10, 10.0005, 30]                 # thinner than min_size: dropped before NMS
    obj = rng.normal(size=(2, 9))
    kw = dict(pre_nms_top_n=4, post_nms_top_n=3, nms_thresh=0.5)
    plain = filter_proposals(boxes, obj, [(30, 40), (25, 25)], [6, 3], **kw)
    record = {}
    recorded = filter_proposals(boxes, obj, [(30, 40), (25, 25)], [6, 3], record=record, **kw)
    for a, b in zip(plain, recorded):
        assert all(np.array_equal(x, y) for x, y in zip(a, b))
    top = record["top_indices"]
    assert top.shape == (2, 7) and record["top_levels"].tolist() == [0, 0, 0, 0, 1, 1, 1]
    for i in range(2):  # per level, the best logits, best first
        assert np.array_equal(top[i, :4], np.argsort(-obj[i, :6], kind="stable")[:4])
        assert np.array_equal(top[i, 4:], 6 + np.argsort(-obj[i, 6:], kind="stable"))
        np.testing.assert_allclose(record["top_scores"][i], 1 / (1 + np.exp(-obj[i, top[i]])))
        b, s, lvl = record["before_nms"][i]
        assert len(b) == len(s) == len(lvl) <= 7
        assert set(map(tuple, plain[0][i].tolist())) <= set(map(tuple, b.tolist()))
    with pytest.raises(TypeError, match="record must be None or a dict"):
        filter_proposals(boxes, obj, [(30, 40), (25, 25)], [6, 3], record=[], **kw)


def test_postprocess_detections_record_keeps_the_steps_and_changes_nothing():
    from mrcnn_np.roi_heads import postprocess_detections
    rng = np.random.default_rng(6)
    logits = rng.normal(size=(5, 3)) * 2
    reg = rng.normal(size=(5, 12)) * 0.1
    props = [np.array([[0, 0, 10, 10], [2, 2, 12, 12], [20, 5, 30, 25.]]), np.array([[0, 0, 8, 8], [1, 1, 9, 9.]])]
    plain = postprocess_detections(logits, reg, props, [(30, 30), (20, 20)], score_thresh=0.3)
    record = {}
    recorded = postprocess_detections(logits, reg, props, [(30, 30), (20, 20)], score_thresh=0.3, record=record)
    for a, b in zip(plain, recorded):
        assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert [s.shape for s in record["class_scores"]] == [(3, 3), (2, 3)]
    assert [b.shape for b in record["refined_boxes"]] == [(3, 3, 4), (2, 3, 4)]
    for i in range(2):
        before, nms_in = record["before_threshold"][i], record["before_nms"][i]
        assert np.array_equal(before["scores"], record["class_scores"][i][:, 1:].reshape(-1))
        assert np.array_equal(nms_in["scores"], before["scores"][before["scores"] > 0.3])
        assert set(plain[1][i].tolist()) <= set(nms_in["scores"].tolist())


# =========================================================================== fields


def test_every_required_field_exists_as_attribute_and_key(data):
    _, traces, _ = _run(data, FEW_DETECTIONS)
    t = traces[0]
    assert isinstance(t, ImageTrace)
    for name in REQUIRED:
        assert name in t.keys() and name in t
        assert t[name] is getattr(t, name)
    assert t.as_dict()["proposals"] is t.proposals
    with pytest.raises(KeyError, match="no field 'nope'"):
        t["nope"]
    assert "proposals=(" in repr(t)


def test_input_fields(data):
    cfg, traces, _ = _run(data, FEW_DETECTIONS)
    _, images, _ = data
    batch, sizes, _ = transform_forward(images, min_size=128, max_size=128)
    assert sizes == [(128, 128), (96, 128), (128, 128)]
    expected_scale = [(1.0, 1.0), (1.0, 1.0), (2.0, 2.0)]
    for i, t in enumerate(traces):
        h, w = sizes[i]
        assert t.image_size == (h, w) and t.original_size == images[i].shape[1:]
        assert t.scale == expected_scale[i]
        assert t.padded_size == (128, 128)
        assert t.image.shape == (3, h, w) and t.image.dtype == np.float32
        assert np.array_equal(t.image, batch[i, :, :h, :w])   # unpadded


def test_backbone_and_rpn_fields(data):
    cfg, traces, _ = _run(data, FEW_DETECTIONS)
    grids = [(32, 32), (16, 16), (8, 8), (4, 4), (2, 2)]
    anchors = pyramid_anchors((128, 128), grids, cfg.anchor_sizes, cfg.aspect_ratios, dtype=np.float32)
    counts = [gh * gw * cfg.num_anchors_per_location for gh, gw in grids]
    for t in traces:
        assert t.level_names == ("P2", "P3", "P4", "P5", "P6")
        assert isinstance(t.features, list) and len(t.features) == len(t.level_names)
        assert [f.shape for f in t.features] == [(32, gh, gw) for gh, gw in grids]
        for lvl in range(5):
            assert np.array_equal(t.anchors[lvl], anchors[lvl])
            assert t.objectness_logits[lvl].shape == (counts[lvl],)
            assert t.rpn_deltas[lvl].shape == (counts[lvl], 4)
            p = t.objectness_probs[lvl]
            np.testing.assert_allclose(p, 1 / (1 + np.exp(-t.objectness_logits[lvl].astype(np.float64))),
                                       rtol=1e-6)


def test_top_anchors_are_the_per_level_top_k_and_their_refinement(data):
    cfg, traces, _ = _run(data, FEW_DETECTIONS)
    k = cfg.rpn_pre_nms_top_n_test
    for t in traces:
        counts = [len(a) for a in t.anchors]
        kt = sum(min(k, c) for c in counts)
        assert t.top_anchors.shape == t.top_anchors_refined.shape == (kt, 4)
        assert t.top_anchor_scores.shape == t.top_anchor_levels.shape == t.top_anchor_indices.shape == (kt,)
        assert np.array_equal(np.bincount(t.top_anchor_levels, minlength=7)[2:],
                              [min(k, c) for c in counts])
        offsets = np.cumsum([0] + counts)
        all_anchors = np.concatenate(t.anchors)
        logits = np.concatenate(t.objectness_logits)
        deltas = np.concatenate(t.rpn_deltas)
        idx = t.top_anchor_indices
        for lvl in range(5):
            chosen = idx[t.top_anchor_levels == lvl + 2] - offsets[lvl]
            assert chosen.min() >= 0 and chosen.max() < counts[lvl]
            others = np.setdiff1d(np.arange(counts[lvl]), chosen)
            if others.size:   # nothing left out scores higher than what was chosen
                assert logits[offsets[lvl] + chosen].min() >= logits[offsets[lvl] + others].max()
        assert np.array_equal(t.top_anchors, all_anchors[idx])
        assert np.array_equal(t.top_anchor_scores, sigmoid(logits[idx]))
        refined = decode_boxes(deltas[idx], all_anchors[idx], np.ones(4, np.float32))
        np.testing.assert_allclose(t.top_anchors_refined, refined, rtol=1e-6, atol=1e-4)


def test_proposals_equal_filter_proposals_on_the_recorded_outputs(data):
    cfg, traces, _ = _run(data, FEW_DETECTIONS)
    for t in traces:
        obj = np.concatenate(t.objectness_logits)[None]
        deltas = np.concatenate(t.rpn_deltas)[None]
        counts = [len(a) for a in t.anchors]
        boxes, scores = filter_proposals(decode_proposals(deltas, t.anchors), obj, [t.image_size], counts,
                                         pre_nms_top_n=cfg.rpn_pre_nms_top_n_test,
                                         post_nms_top_n=cfg.rpn_post_nms_top_n_test,
                                         nms_thresh=cfg.rpn_nms_thresh, score_thresh=cfg.rpn_score_thresh)
        assert np.array_equal(t.proposals, boxes[0]) and np.array_equal(t.proposal_scores, scores[0])
        r = len(t.proposals)
        assert 0 < r <= cfg.rpn_post_nms_top_n_test
        assert np.all(np.diff(t.proposal_scores) <= 0)
        h, w = t.image_size
        assert np.all(t.proposals >= 0) and np.all(t.proposals[:, [0, 2]] <= w) and np.all(t.proposals[:, [1, 3]] <= h)
        # before NMS: clipped top-k anchors; every proposal is one of them
        b = len(t.proposals_before_nms)
        assert r <= b <= len(t.top_anchors)
        assert t.proposal_scores_before_nms.shape == t.proposal_rpn_levels_before_nms.shape == (b,)
        rows = {tuple(row) for row in t.proposals_before_nms.tolist()}
        assert all(tuple(p) in rows for p in t.proposals.tolist())


def test_proposal_levels_and_roi_features(data):
    cfg, traces, _ = _run(data, FEW_DETECTIONS)
    for t in traces:
        r = len(t.proposals)
        assert np.array_equal(t.proposal_levels, level_mapper(t.proposals))
        assert t.proposal_levels.min() >= 2 and t.proposal_levels.max() <= 5
        assert t.roi_features.shape == (r, 32, 7, 7)
        for k in range(2, 6):
            sel = np.flatnonzero(t.proposal_levels == k)
            if not sel.size:
                continue
            rois = np.concatenate([np.zeros((sel.size, 1), np.float32), t.proposals[sel]], axis=1)
            direct, _ = roi_align_forward(t.features[k - 2][None], rois, 7, spatial_scale=2.0 ** -k,
                                          sampling_ratio=cfg.box_roi_sampling_ratio, aligned=False)
            np.testing.assert_allclose(t.roi_features[sel], direct, rtol=1e-5, atol=1e-6)


def test_box_head_fields(data):
    cfg, traces, _ = _run(data, FEW_DETECTIONS)
    for t in traces:
        r, k1 = len(t.proposals), cfg.num_classes
        assert t.class_logits.shape == t.class_scores.shape == (r, k1)
        assert t.box_regression.shape == (r, 4 * k1)
        np.testing.assert_allclose(t.class_scores.sum(axis=1), 1, rtol=1e-6)
        z = t.class_logits.astype(np.float64)
        soft = np.exp(z - z.max(1, keepdims=True))
        np.testing.assert_allclose(t.class_scores, soft / soft.sum(1, keepdims=True), rtol=1e-5)
        assert t.refined_boxes.shape == (r, k1, 4)
        decoded = decode_boxes(t.box_regression.reshape(-1, 4), np.repeat(t.proposals, k1, axis=0),
                               np.asarray(cfg.bbox_reg_weights, np.float32)).reshape(r, k1, 4)
        h, w = t.image_size
        clipped = np.stack([decoded[..., 0].clip(0, w), decoded[..., 1].clip(0, h),
                            decoded[..., 2].clip(0, w), decoded[..., 3].clip(0, h)], axis=-1)
        np.testing.assert_allclose(t.refined_boxes, clipped, rtol=1e-6, atol=1e-4)
        before = t.detections_before_threshold
        assert before["boxes"].shape == (r * (k1 - 1), 4)
        assert np.array_equal(before["scores"], t.class_scores[:, 1:].reshape(-1))
        assert np.array_equal(before["labels"], np.tile(np.arange(1, k1), r))
        assert np.array_equal(before["boxes"], t.refined_boxes[:, 1:].reshape(-1, 4))
        nms_in = t.detections_before_nms
        assert np.all(nms_in["scores"] > cfg.box_score_thresh)
        assert len(nms_in["scores"]) == int((before["scores"] > cfg.box_score_thresh).sum())  # no tiny boxes here
        # the final predictions are some of the NMS input, in the resized frame
        pred = t.predictions
        rows = {(tuple(b), s, lab) for b, s, lab in zip(nms_in["boxes"].tolist(), nms_in["scores"].tolist(),
                                                         nms_in["labels"].tolist())}
        assert all((tuple(b), s, lab) in rows for b, s, lab in zip(pred["boxes"].tolist(), pred["scores"].tolist(),
                                                                   pred["labels"].tolist()))


def test_mask_fields(data):
    _, traces, dets = _run(data, FEW_DETECTIONS)
    for t, d in zip(traces, dets):
        e = len(d["scores"])
        h0, w0 = t.original_size
        assert t.mask_logits.shape == t.mask_probs.shape == (e, 28, 28)
        assert np.array_equal(sigmoid(t.mask_logits), t.mask_probs)
        assert np.array_equal(t.mask_probs, t.predictions["masks"][:, 0])
        assert t.masks.shape == (e, 1, h0, w0) and np.array_equal(t.masks, d["masks"])


# =========================================================================== validation


@pytest.mark.parametrize("images, error, match", [
    (np.zeros((1, 3, 64, 64), np.float32), TypeError, "images must be a list"),
    ([], ValueError, "images must hold at least one image"),
    ([np.zeros((64, 64, 3), np.float32)], ValueError, r"images\[0\] must have shape \(3, H, W\)"),
    ([np.zeros((3, 64, 64), np.uint8)], TypeError, r"images\[0\] must have a floating dtype"),
    ([np.zeros((3, 64, 64), np.float32), np.zeros((3, 64, 64))], TypeError, r"images\[1\] must have the dtype"),
    ([np.full((3, 64, 64), np.nan, np.float32)], ValueError, r"images\[0\] must be finite"),
    ([np.zeros((3, 64, 64))], TypeError, "params"),   # float64 image, float32 params
])
def test_bad_images_are_refused_as_detect_refuses_them(data, images, error, match):
    params = data[0]
    with pytest.raises(error, match=match) as from_trace:
        trace(params, images, CONFIG)
    with pytest.raises(error) as from_detect:
        M.detect(params, images, CONFIG)
    assert str(from_trace.value) == str(from_detect.value)


def test_bad_config_and_params(data):
    params, images, _ = data
    with pytest.raises(TypeError, match="config must be a MaskRCNNConfig"):
        trace(params, images, {"num_classes": 4})
    with pytest.raises(TypeError, match="params must be a dict"):
        trace(list(params.values()), images, CONFIG)
    with pytest.raises(ValueError, match="num_classes"):
        trace(params, images, CONFIG.replace(num_classes=5))


def test_package_exposes_trace():
    assert mrcnn_np.trace.trace is trace and "trace" in mrcnn_np.__all__


# =========================================================================== iou_matrix


def test_iou_matrix_boxes_by_hand():
    gt = np.array([[0, 0, 10, 10], [20, 20, 30, 30.]])
    pred = np.array([[5, 0, 15, 10], [0, 0, 10, 10], [20, 25, 30, 30.]])
    expected = np.array([[50 / 150, 1, 0], [0, 0, 0.5]])
    np.testing.assert_allclose(iou_matrix(gt, pred), expected, rtol=1e-12)
    assert iou_matrix(gt, pred[:0]).shape == (2, 0)


def test_iou_matrix_masks_by_hand():
    gt = np.zeros((1, 4, 4), bool)
    gt[0, :2, :2] = True                       # 4 px
    pred = np.zeros((2, 1, 4, 4), np.float32)  # detect's (E, 1, H, W) soft masks
    pred[0, 0, 0, :] = 0.6                     # top row: 4 px, 2 shared -> 2 / 6
    pred[0, 0, 1, :] = 0.4                     # below 0.5: not in the mask
    pred[1, 0, :2, :2] = 1.0                   # the same 4 px -> 1
    np.testing.assert_allclose(iou_matrix(gt, pred, kind="mask"), [[1 / 3, 1.0]])
    assert iou_matrix(gt.astype(np.uint8), pred[:0], kind="mask").shape == (1, 0)


def test_iou_matrix_errors():
    with pytest.raises(ValueError, match="kind must be"):
        iou_matrix(np.zeros((1, 4)), np.zeros((1, 4)), kind="polygon")
    with pytest.raises(ValueError, match=r"gt must have shape \(\*, 4\)"):
        iou_matrix(np.zeros((1, 5)), np.zeros((1, 4)))
    with pytest.raises(ValueError, match="pred must be finite"):
        iou_matrix(np.zeros((1, 4)), np.full((1, 4), np.nan))
    with pytest.raises(ValueError, match="same"):
        iou_matrix(np.zeros((1, 4, 4), bool), np.zeros((1, 5, 5), bool), kind="mask")


# =========================================================================== rpn_recall


def _fake(t, proposals, original_size, image_size):
    return dataclasses.replace(t, proposals=np.asarray(proposals, np.float32), original_size=original_size,
                               image_size=image_size)


def test_rpn_recall_by_hand(data):
    """Original 100 x 100 resized to 200 x 200; GT A (side 10, small), B (30, medium),
    C (50, large) in original pixels; proposals in the resized frame:
    P1 = 2A (IoU 1 with A), P2 = [0, 0, 60, 45] (0.75 with 2B), P3 = [0, 0, 60, 30] (0.5 with 2B),
    P4 = [100, 100, 150, 200] (0.5 with 2C)."""
    base = _run(data, FEW_DETECTIONS)[1][0]
    t = _fake(base, [[20, 20, 40, 40], [0, 0, 60, 45], [0, 0, 60, 30], [100, 100, 150, 200]], (100, 100), (200, 200))
    gt = np.array([[10, 10, 20, 20], [0, 0, 30, 30], [50, 50, 100, 100.]])
    rep = rpn_recall(t, gt)
    assert rep.recall == {0.5: 1.0, 0.7: 2 / 3}
    assert rep.recall_by_size == {"small": {0.5: 1.0, 0.7: 1.0}, "medium": {0.5: 1.0, 0.7: 1.0},
                                  "large": {0.5: 1.0, 0.7: 0.0}}
    assert rep.num_gt == 3 and rep.num_gt_by_size == {"small": 1, "medium": 1, "large": 1}
    np.testing.assert_allclose(rep.best_iou[0], [1.0, 0.75, 0.5])
    assert rep.num_covering[0].tolist() == [1, 2, 1]
    np.testing.assert_allclose(rep.size[0], [10, 30, 50])
    # thresholds are arguments; a second image without proposals misses its GT
    empty = _fake(base, np.zeros((0, 4)), (100, 100), (200, 200))
    rep = rpn_recall([t, empty], [gt, gt[:1]], iou_thresholds=(0.6,), size_thresholds=(5, 8),
                     count_threshold=0.7)
    assert rep.recall == {0.6: 2 / 4} and rep.num_gt_by_size == {"small": 0, "medium": 0, "large": 4}
    assert np.isnan(rep.recall_by_size["small"][0.6]) and rep.recall_by_size["large"][0.6] == 0.5
    assert rep.num_covering[0].tolist() == [1, 1, 0] and rep.num_covering[1].tolist() == [0]
    assert np.isnan(rpn_recall(t, np.zeros((0, 4))).recall[0.5])


def test_rpn_recall_on_real_traces_grows_back_through_the_stages(data):
    _, traces, _ = _run(data, FEW_DETECTIONS)
    gts = [s["boxes"] for s in data[2]]
    reports = {stage: rpn_recall(traces, gts, stage=stage) for stage in RECALL_STAGES}
    assert reports["anchors"].num_gt == sum(len(g) for g in gts)
    for r in reports.values():
        assert 0.0 <= r.recall[0.7] <= r.recall[0.5] <= 1.0
    # all anchors contain the top-k anchors; clipped proposals before NMS contain those after
    for a, b in (("anchors", "top_anchors"), ("proposals_before_nms", "proposals")):
        for x, y in zip(reports[a].best_iou, reports[b].best_iou):
            assert np.all(x >= y)


def test_rpn_recall_errors(data):
    t = _run(data, FEW_DETECTIONS)[1][0]
    with pytest.raises(ValueError, match="one array per trace"):
        rpn_recall([t, t], [np.zeros((0, 4))])
    with pytest.raises(TypeError, match=r"traces\[0\] must be an ImageTrace"):
        rpn_recall([{}], [np.zeros((0, 4))])
    with pytest.raises(ValueError, match="stage must be one of"):
        rpn_recall(t, np.zeros((0, 4)), stage="rois")
    with pytest.raises(ValueError, match="strictly increasing"):
        rpn_recall(t, np.zeros((0, 4)), size_thresholds=(40, 24))
    with pytest.raises(ValueError, match=r"iou_thresholds\[0\] must be <= 1"):
        rpn_recall(t, np.zeros((0, 4)), iou_thresholds=(1.5,))


# =========================================================================== confusion_summary


def _dets(boxes, labels, scores):
    return {"boxes": np.array(boxes, float).reshape(-1, 4), "labels": np.array(labels, np.int64),
            "scores": np.array(scores, float)}


def test_confusion_summary_by_hand():
    gt = {"boxes": np.array([[0, 0, 10, 10], [20, 0, 30, 10], [40, 0, 50, 10.]]), "labels": np.array([1, 2, 3])}
    det = _dets([[0, 0, 10, 10],        # class 1 on GT 0: true positive
                 [20, 0, 30, 10],       # class 3 on the class-2 GT: a confusion
                 [100, 100, 110, 110],  # class 2 on nothing: false positive
                 [0, 0, 10, 10],        # class 1 again on GT 0, already taken: false positive
                 [40, 0, 50, 10]],      # class 3 on GT 2 but below the score threshold: GT 2 missed
                [1, 3, 2, 1, 3], [0.9, 0.8, 0.7, 0.6, 0.3])
    s = confusion_summary([gt], [det], 4)
    expected = np.zeros((4, 4), np.int64)
    expected[1, 1] = expected[2, 3] = expected[3, 0] = expected[0, 2] = expected[0, 1] = 1
    assert np.array_equal(s.matrix, expected)
    assert s.true_positives.tolist() == [0, 1, 0, 0]
    assert s.false_positives.tolist() == [0, 1, 1, 1]
    assert s.false_negatives.tolist() == [0, 0, 1, 1]
    np.testing.assert_allclose(s.precision[1:], [0.5, 0, 0])
    np.testing.assert_allclose(s.recall[1:], [1, 0, 0])
    assert np.isnan(s.precision[0])
    # with score_threshold 0.2 the last detection finds GT 2
    s = confusion_summary([gt], [det], 4, score_threshold=0.2)
    assert s.matrix[3, 3] == 1 and s.matrix[3, 0] == 0


def test_confusion_summary_same_class_first_then_by_score():
    gt = {"boxes": np.array([[0, 0, 10, 10.]]), "labels": np.array([1])}
    # a wrong-class detection scoring higher does not steal the GT from a right-class one
    det = _dets([[0, 0, 10, 10], [0, 0, 10, 9]], [2, 1], [0.9, 0.8])
    m = confusion_summary([gt], [det], 3).matrix
    assert m[1, 1] == 1 and m[0, 2] == 1 and m.sum() == 2
    # two of the right class: the higher score wins even with the lower IoU (0.5 vs 1) ...
    det = _dets([[0, 0, 10, 5], [0, 0, 10, 10]], [1, 1], [0.9, 0.8])
    s = confusion_summary([gt], [det], 3)
    assert s.matrix[1, 1] == 1 and s.matrix[0, 1] == 1
    # ... unless its IoU is below the threshold
    s = confusion_summary([gt], [det], 3, iou_threshold=0.6)
    assert s.matrix[1, 1] == 1 and s.matrix[0, 1] == 1 and s.iou_threshold == 0.6
    # one detection between two GTs of its class takes the one it overlaps more
    gt2 = {"boxes": np.array([[0, 0, 10, 10], [4, 0, 14, 10.]]), "labels": np.array([1, 1])}
    det = _dets([[3, 0, 13, 10], [0, 0, 10, 10]], [1, 1], [0.9, 0.5])
    assert confusion_summary([gt2], [det], 2).matrix.tolist() == [[0, 0], [0, 2]]
    # nothing at all
    empty = {"boxes": np.zeros((0, 4)), "labels": np.zeros(0, np.int64)}
    assert not confusion_summary([empty], [_dets([], [], [])], 3).matrix.any()


def test_confusion_summary_on_traces_counts_everything(data):
    _, traces, dets = _run(data, FEW_DETECTIONS)
    gts = data[2]
    s = confusion_summary(gts, traces, CONFIG.num_classes, score_threshold=0.0)
    assert np.array_equal(s.matrix, confusion_summary(gts, dets, 4, score_threshold=0.0).matrix)
    for c in range(1, 4):
        assert s.matrix[c].sum() == sum(int((g["labels"] == c).sum()) for g in gts)
        assert s.matrix[:, c].sum() == sum(int((d["labels"] == c).sum()) for d in dets)
    assert s.matrix[0, 0] == 0


def test_confusion_summary_errors():
    gt = {"boxes": np.array([[0, 0, 10, 10.]]), "labels": np.array([4])}
    with pytest.raises(ValueError, match=r"gts\[0\]\['labels'\] must be in \[1, 3\]"):
        confusion_summary([gt], [_dets([], [], [])], 4)
    with pytest.raises(ValueError, match="one entry per image"):
        confusion_summary([], [_dets([], [], [])], 4)
    with pytest.raises(ValueError, match=r"dets\[0\] is missing 'scores'"):
        confusion_summary([dict(gt, labels=np.array([1]))],
                          [{"boxes": np.zeros((0, 4)), "labels": np.zeros(0, int)}], 4)
    with pytest.raises(ValueError, match="num_classes must be >= 2"):
        confusion_summary([], [], 1)
