"""The analysis behind chapters 05, 07, 08 and 11's figures: per-image AP and the worst
images, the diagnosis of one image's trace, detection sources, wrong-class detections,
mask IoU of matches, level maps and proposal levels (viz.inspect, viz.heads, viz.rpn)."""
from types import SimpleNamespace

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from mrcnn_np.viz import heads as vh  # noqa: E402
from mrcnn_np.viz import inspect as vi  # noqa: E402
from mrcnn_np.viz import rpn as vr  # noqa: E402


def _gt(boxes, labels):
    return {"boxes": np.array(boxes, float).reshape(-1, 4), "labels": np.array(labels, np.int64)}


def _det(boxes, labels, scores):
    return {"boxes": np.array(boxes, float).reshape(-1, 4), "labels": np.array(labels, np.int64),
            "scores": np.array(scores, float)}


# --------------------------------------------------------------------------- per-image AP, worst images

GT = _gt([[0, 0, 10, 10], [20, 20, 40, 40]], [1, 2])
PERFECT = _det([[0, 0, 10, 10], [20, 20, 40, 40]], [1, 2], [0.9, 0.8])
MISS = _det([[0, 0, 10, 10]], [1], [0.9])                                        # the class-2 object is missed
CONFIDENT_FP = _det([[60, 60, 70, 70], [0, 0, 10, 10], [20, 20, 40, 40]], [1, 1, 2], [0.95, 0.9, 0.8])


def test_per_image_ap_scores_each_image_alone():
    ap = vi.per_image_ap([GT, GT, GT, _gt([], [])], [PERFECT, MISS, CONFIDENT_FP, PERFECT])
    assert ap[0] == pytest.approx(1.0)
    assert ap[1] == pytest.approx(0.5)           # class 1 perfect, class 2 AP 0
    assert 0.5 < ap[2] < 1.0                      # the false positive outranks the class-1 object
    assert np.isnan(ap[3])                        # no ground truth: not scored


def test_worst_images_ranks_by_ap50_then_ap_and_skips_images_without_objects():
    gts = [GT, GT, GT, _gt([], [])]
    worst = vi.worst_images(gts, [PERFECT, CONFIDENT_FP, MISS, PERFECT], k=4)
    assert [w["image"] for w in worst] == [2, 1, 0]
    assert [w["errors"] for w in worst] == [1, 1, 0]
    assert worst[0]["ap50"] == pytest.approx(0.5)
    # a tie on AP50 and AP is broken by the errors at score 0.5, then by the index
    loose = _det([[0, 0, 10, 10], [20, 20, 40, 40], [21, 21, 40, 40]], [1, 2, 2], [0.9, 0.8, 0.3])
    worst = vi.worst_images([GT, GT, GT], [PERFECT, loose, PERFECT], k=3)
    assert [w["image"] for w in worst] == [0, 1, 2]


def test_worst_images_rejects_mismatched_lists():
    with pytest.raises(ValueError, match="one entry per image"):
        vi.worst_images([GT], [PERFECT, PERFECT])


# --------------------------------------------------------------------------- detection sources


def test_detection_sources_finds_the_roi_each_detection_was_copied_from():
    rng = np.random.default_rng(0)
    refined = rng.uniform(0, 100, (6, 3, 4))
    labels = np.array([2, 1, 2])
    boxes = np.stack([refined[4, 2], refined[0, 1], refined[1, 2] + 0.5])   # the last one matches nothing
    assert vh.detection_sources(refined, labels, boxes).tolist() == [4, 0, -1]


# --------------------------------------------------------------------------- diagnose


def _scene():
    """A hand-made trace of a 100 x 100 image, 2 classes, five objects:
    0 found; 1 found; 2 not proposed; 3 suppressed by NMS; 4 box head: low score."""
    gt = _gt([[10, 10, 30, 30], [50, 50, 80, 80], [60, 10, 90, 40], [10, 60, 40, 90], [85, 5, 99, 20]],
             [1, 2, 1, 1, 2])
    proposals = np.array([[11, 11, 31, 31], [50, 50, 79, 79], [12, 62, 38, 88], [0, 0, 5, 5], [85, 5, 99, 20]], float)
    class_scores = np.array([[0.05, 0.9, 0.05], [0.1, 0.2, 0.7], [0.2, 0.6, 0.2], [0.97, 0.02, 0.01],
                             [0.9, 0.09, 0.01]])
    refined = np.repeat(proposals[:, None], 3, axis=1)
    refined[0, 1] = [10, 10, 30, 30]
    refined[0, 2] = [10, 10, 30, 30]
    refined[1, 2] = [50, 50, 80, 80]
    refined[2, 1] = [10, 66, 40, 96]        # covers object 3 (IoU 0.67), removed by detection 3 (IoU 0.71 > 0.5)
    before_nms = _det([[10, 10, 30, 30], [10, 10, 30, 30], [50, 50, 80, 80], [10, 72, 40, 100], [10, 66, 40, 96],
                       [50, 50, 79, 79], [85, 5, 99, 20]],
                      [1, 2, 2, 1, 1, 1, 1], [0.9, 0.8, 0.7, 0.65, 0.6, 0.2, 0.09])
    final = _det([[10, 10, 30, 30],       # 0: class 1, object 0
                  [10, 10, 30, 30],       # 1: class 2 on object 0: wrong class
                  [50, 50, 80, 80],       # 2: class 2, object 1
                  [10, 72, 40, 100],      # 3: class 1 on object 3 at IoU 0.45: poorly localised
                  [12, 12, 31, 31],       # 4: class 1 again on object 0: duplicate
                  [86, 86, 99, 99],       # 5: class 1 on nothing: background
                  [50, 50, 79, 79]],      # 6: class 1 on object 1, low score
                 [1, 2, 2, 1, 1, 1, 1], [0.9, 0.8, 0.7, 0.65, 0.6, 0.55, 0.2])
    t = SimpleNamespace(original_size=(100, 100), image_size=(100, 100), proposals=proposals,
                        class_scores=class_scores, refined_boxes=refined, detections_before_nms=before_nms,
                        predictions=final, detections=final)
    return t, gt


def test_diagnose_names_the_stage_that_loses_each_object():
    t, gt = _scene()
    d = vi.diagnose(t, gt, score_thresh=0.05, nms_thresh=0.5)
    verdicts = [o["verdict"] for o in d["objects"]]
    assert verdicts == ["found", "found", "not proposed", "suppressed by NMS", "box head: low score"]
    o0, o1, o2, o3, o4 = d["objects"]
    assert o0["matched"] == 0 and o0["roi"] == 0 and o0["class_score"] == pytest.approx(0.9)
    assert o0["detection_roi"] == 0 and o0["refined_iou"] == pytest.approx(1.0)
    assert o0["other"]["detection"] == 1 and o0["other"]["label"] == 2           # the wrong-class box on it
    assert o1["matched"] == 2 and o1["other"]["label"] == 1 and o1["other"]["score"] == pytest.approx(0.2)
    assert o2["proposals_covering"] == 0 and o2["best_proposal_iou"] < 0.5
    assert o3["candidates"] == 1 and o3["best_candidate_score"] == pytest.approx(0.6)
    assert o3["suppressor"]["detection"] == 3 and o3["suppressor"]["iou"] == pytest.approx(720 / 1020)
    assert o3["suppressor"]["gt"] == 3 and o3["suppressor"]["gt_iou"] == pytest.approx(0.45)
    assert o4["roi_top_class"] == 0 and o4["class_score"] == pytest.approx(0.01)
    fps = {f["detection"]: f for f in d["false_positives"]}
    assert set(fps) == {1, 3, 4, 5}               # detection 6 scores below 0.5: not a claim
    assert fps[1]["verdict"] == "wrong class" and fps[1]["gt"] == 0 and fps[1]["gt_label"] == 1
    assert fps[3]["verdict"] == "poorly localised" and fps[3]["gt"] == 3
    assert fps[4]["verdict"] == "duplicate" and fps[4]["better"] == 0
    assert fps[5]["verdict"] == "background"
    text = vi.format_diagnosis(d, ("background", "square", "circle"))
    for words in ("object 2 (square): NOT PROPOSED", "object 3 (square): SUPPRESSED BY NMS", "WRONG CLASS",
                  "DUPLICATE", "POORLY LOCALISED", "BACKGROUND"):
        assert words in text


def test_diagnose_tells_the_top_k_cap_from_nms():
    t, gt = _scene()
    keep = [0, 1, 2, 4, 5, 6]                     # the box that suppressed object 3's candidate is gone
    t.predictions = t.detections = {k: v[keep] for k, v in t.predictions.items()}
    o3 = vi.diagnose(t, gt, score_thresh=0.05, nms_thresh=0.5)["objects"][3]
    assert o3["verdict"] == "dropped by the detections-per-image cap" and "suppressor" not in o3


def test_diagnose_low_score_and_resized_frame():
    t, gt = _scene()
    # every claim below 0.5 now: object 0 is found at a low score only, no false positive is a claim
    d = vi.diagnose(t, gt, score_thresh=0.05, nms_thresh=0.5, score_threshold=0.95)
    assert d["objects"][0]["verdict"] == "found at a low score"
    assert d["false_positives"] == []
    # ground truth in original pixels twice the network's frame: mapped down before comparing
    t2, _ = _scene()
    t2.original_size = (200, 200)
    big = dict(gt, boxes=gt["boxes"] * 2)
    d2 = vi.diagnose(t2, big, score_thresh=0.05, nms_thresh=0.5)
    assert [o["verdict"] for o in d2["objects"]] == [o["verdict"] for o in vi.diagnose(
        t, gt, score_thresh=0.05, nms_thresh=0.5)["objects"]]


# --------------------------------------------------------------------------- wrong classes, mask IoU


def test_wrong_class_detections_lists_boxes_on_objects_of_another_class_best_first():
    t, gt = _scene()
    found = vh.wrong_class_detections([gt], [t])
    assert [(w["detection"], w["gt"], w["label"], w["gt_label"]) for w in found] == [(1, 0, 2, 1), (6, 1, 1, 2)]
    assert found[0]["also_right"] == 0 and found[0]["roi"] == 0        # RoI 0's class-2 box
    assert found[1]["also_right"] == 2 and found[1]["roi"] == 1
    assert vh.wrong_class_detections([gt], [t], min_score=0.5)[0]["detection"] == 1
    assert len(vh.wrong_class_detections([gt], [t], min_score=0.5)) == 1


def test_mask_ious_of_matches_matches_by_class_and_sorts_lowest_first():
    h = w = 20
    gt_masks = np.zeros((2, h, w), bool)
    gt_masks[0, 2:8, 2:8] = True
    gt_masks[1, 10:18, 10:18] = True
    gt = dict(_gt([[2, 2, 8, 8], [10, 10, 18, 18]], [1, 2]), masks=gt_masks)
    pred = np.zeros((3, 1, h, w))
    pred[0, 0, 2:8, 2:8] = 0.9            # perfect
    pred[1, 0, 10:18, 10:14] = 0.9        # half of object 1
    pred[2, 0, 2:8, 2:8] = 0.9            # a duplicate of object 0, lower score: unmatched
    det = dict(_det([[2, 2, 8, 8], [10, 10, 18, 18], [2, 2, 8, 8]], [1, 2, 1], [0.9, 0.8, 0.7]), masks=pred)
    out = vh.mask_ious_of_matches([gt], [SimpleNamespace(detections=det)])
    assert [(m["detection"], m["gt"]) for m in out] == [(1, 1), (0, 0)]
    assert out[0]["mask_iou"] == pytest.approx(0.5) and out[1]["mask_iou"] == pytest.approx(1.0)


# --------------------------------------------------------------------------- levels


def test_level_maps_follow_the_anchor_order():
    a, h, w = 3, 4, 5
    maps = vr.level_maps([np.arange(h * w * a), np.arange(2 * 2 * a)], [(h, w), (2, 2)], a)
    assert maps[0].shape == (a, h, w) and maps[1].shape == (a, 2, 2)
    for k, y, x in [(0, 0, 0), (2, 1, 3), (1, 3, 4)]:
        assert maps[0][k, y, x] == (y * w + x) * a + k
    with pytest.raises(ValueError, match="needs 60 values"):
        vr.level_maps([np.arange(59)], [(h, w)], a)


def test_proposal_rpn_levels_recovers_the_level_of_each_kept_proposal():
    before = np.array([[0, 0, 5, 5], [1, 1, 9, 9], [2, 2, 7, 7], [3, 3, 8, 8]], float)
    t = SimpleNamespace(proposals_before_nms=before, proposal_rpn_levels_before_nms=np.array([2, 3, 3, 5]),
                        proposals=before[[3, 1, 0]])
    assert vi.proposal_rpn_levels(t).tolist() == [5, 3, 2]
    t.proposals = np.array([[9, 9, 10, 10.]])
    assert vi.proposal_rpn_levels(t).tolist() == [-1]


# --------------------------------------------------------------------------- on the shipped model


def test_diagnose_agrees_with_confusion_summary_on_the_shipped_model():
    from mrcnn_np import pretrained
    from mrcnn_np.data.shapes import HELD_OUT_SEED_OFFSET, ShapesDataset
    from mrcnn_np.trace import confusion_summary, trace

    params, config = pretrained.shapes_model()
    samples = list(ShapesDataset(8, seed=pretrained.shapes_model_info()["seed"] + HELD_OUT_SEED_OFFSET))
    traces = trace(params, [s["image"].transpose(2, 0, 1) for s in samples], config)
    found = fps = 0
    for s, t in zip(samples, traces):
        d = vi.diagnose(t, s, score_thresh=config.box_score_thresh, nms_thresh=config.box_nms_thresh)
        for o in d["objects"]:
            if o["verdict"] == "found":
                e = o["matched"]
                assert t.detections["labels"][e] == o["label"] and t.detections["scores"][e] >= 0.5
        found += sum(o["verdict"] == "found" for o in d["objects"])
        fps += len(d["false_positives"])
    summary = confusion_summary(samples, traces, config.num_classes)
    assert found == summary.true_positives.sum()
    assert fps == summary.false_positives.sum()


def test_figures_draw_without_error():
    t, gt = _scene()
    figs = [vi.plot_overlaps(np.array([[0.7, 0.1], [0.0, 0.55]]), [1, 2], [1, 1], [0.9, 0.6],
                             class_names=("bg", "a", "b")),
            vi.plot_class_score_matrix(np.zeros((100, 100, 3)), t.proposals, t.class_scores, top=5),
            vi.plot_proposal_levels(np.zeros((100, 100, 3)), t.proposals, [2, 3, 3, 4, 5], t.proposals[:2], [2, 3],
                                    level_counts={"before": [2, 3, 3, 4, 5], "after": [2, 3]}),
            vh.plot_score_threshold(np.array([0.01, 0.2, 0.9]), np.array([1, 2, 1]), 0.05)]
    for f in figs:
        assert f.axes
        plt.close(f)
