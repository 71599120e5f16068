"""Tests for mrcnn_np.evaluate: hand-worked COCO AP cases, a plain-Python
re-derivation of COCOeval for random data, and hypothesis properties.
(The comparison with pycocotools itself is tests/reference/test_eval_pycocotools.py.)"""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mrcnn_np.evaluate import (
    AREA_RANGES,
    IOU_THRESHOLDS,
    RECALL_THRESHOLDS,
    STAT_NAMES,
    _match_groups,
    box_iou_coco,
    coco_evaluate,
    evaluate_image_naive,
    mask_iou_coco,
    summarize,
)

EPS = 1e-12


def gt(boxes, labels=None, **kw):
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    labels = np.ones(len(boxes), np.int64) if labels is None else np.asarray(labels, np.int64)
    return {"boxes": boxes, "labels": labels, **kw}


def det(boxes, scores, labels=None, **kw):
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    labels = np.ones(len(boxes), np.int64) if labels is None else np.asarray(labels, np.int64)
    return {"boxes": boxes, "labels": labels, "scores": np.asarray(scores, np.float64), **kw}


def box_mask(box, h=64, w=64):
    m = np.zeros((h, w), dtype=bool)
    x1, y1, x2, y2 = (int(v) for v in box)
    m[y1:y2, x1:x2] = True
    return m


# ----------------------------------------------------------------- golden cases

def test_one_perfect_detection_gives_ap_one():
    # box 10 x 10 -> area 100 < 32^2: a "small" object; medium/large have no GT -> -1
    r = coco_evaluate([gt([[5, 5, 15, 15]])], [det([[5, 5, 15, 15]], [0.9])])
    # (precision is TP / (TP + FP + eps) as pycocotools, so "1" is 1 - 2e-16)
    expected = [1, 1, 1, 1, -1, -1, 1, 1, 1, 1, -1, -1]
    np.testing.assert_allclose(r.stats, expected, rtol=0, atol=EPS)
    assert r.precision.shape == (10, 101, 1, 4, 3)
    assert r.recall.shape == (10, 1, 4, 3)


def test_detection_at_iou_0_6():
    # GT [0,0,10,10] (area 100), detection [0,0,10,6] (area 60, inside the GT):
    # IoU = 60 / (100 + 60 - 60) = 0.6 exactly. A match needs IoU >= t, and the
    # thresholds are np.linspace(.5, .95, 10) = .50 .55 .60 .65 ... .95 whose
    # third element is exactly 0.6, so the detection is a TP at t = .50, .55, .60
    # (precision 1 at all 101 recall points -> AP_t = 1) and a FP at the 7
    # others (recall 0 -> AP_t = 0): AP = 3/10, AP50 = 1, AP75 = 0; likewise
    # AR100 = mean recall over thresholds = 3/10.
    r = coco_evaluate([gt([[0, 0, 10, 10]])], [det([[0, 0, 10, 6]], [0.5])])
    assert box_iou_coco(np.array([[0, 0, 10, 6.0]]), np.array([[0, 0, 10, 10.0]]))[0, 0] == 0.6
    assert r.stats[0] == pytest.approx(0.3, abs=1e-12)
    assert r.stats[1] == pytest.approx(1.0, abs=EPS)
    assert r.stats[2] == 0.0
    assert r.stats[8] == pytest.approx(0.3, abs=1e-12)
    np.testing.assert_array_equal(r.recall[:, 0, 0, 2], [1, 1, 1, 0, 0, 0, 0, 0, 0, 0])


def test_false_positive_ranked_above_true_positives():
    # two GT, three detections ranked TP (0.9), FP (0.8), TP (0.7):
    #   cumulative TP = 1, 1, 2; FP = 0, 1, 1
    #   recall    = 0.5, 0.5, 1.0
    #   precision = 1, 1/2, 2/3 -> monotone envelope (max to the right) = 1, 2/3, 2/3
    # 101-point sampling, index = searchsorted(recall, r, "left"):
    #   r = 0.00 .. 0.50 (51 points) -> index 0 -> 1
    #   r = 0.51 .. 1.00 (50 points) -> index 2 -> 2/3
    # AP = (51 * 1 + 50 * 2/3) / 101 = 0.8349834983...
    g = gt([[0, 0, 10, 10], [20, 20, 30, 30]])
    d = det([[0, 0, 10, 10], [40, 40, 50, 50], [20, 20, 30, 30]], [0.9, 0.8, 0.7])
    r = coco_evaluate([g], [d])
    ap = (51 * 1 + 50 * 2 / 3) / 101
    assert r.stats[0] == pytest.approx(ap, abs=EPS)
    assert r.stats[1] == pytest.approx(ap, abs=EPS)
    # without the false positive: AP = 1, so the FP cost exactly 1 - ap = 0.16502
    r1 = coco_evaluate([g], [det([[0, 0, 10, 10], [20, 20, 30, 30]], [0.9, 0.7])])
    assert r1.stats[0] == pytest.approx(1.0, abs=EPS)
    # FP ranked first: precision 0, 1/2, 2/3 -> envelope 2/3 everywhere -> AP = 2/3
    d2 = det([[40, 40, 50, 50], [0, 0, 10, 10], [20, 20, 30, 30]], [0.95, 0.9, 0.7])
    assert coco_evaluate([g], [d2]).stats[0] == pytest.approx(2 / 3, abs=EPS)
    # the interpolated curve itself
    q = r.precision[0, :, 0, 0, 2]
    np.testing.assert_allclose(q[:51], 1.0, rtol=0, atol=EPS)
    np.testing.assert_allclose(q[51:], 2 / 3, rtol=0, atol=EPS)


def test_crowd_region_absorbs_detections():
    # GT: a normal box and a crowd region 40 x 40. Two detections inside the
    # crowd, ranked above the true positive: crowd IoU = intersection / det area
    # = 100 / 100 = 1 -> matched to the crowd -> ignored (neither TP nor FP);
    # a crowd can absorb any number of detections. The crowd is not counted in
    # the recall denominator. -> AP = 1, AR = 1.
    g = gt([[0, 0, 10, 10], [20, 0, 60, 40]], iscrowd=np.array([False, True]))
    d = det([[25, 5, 35, 15], [40, 20, 50, 30], [0, 0, 10, 10]], [0.95, 0.93, 0.9])
    r = coco_evaluate([g], [d])
    assert r.stats[0] == pytest.approx(1.0, abs=EPS) and r.stats[8] == pytest.approx(1.0, abs=EPS)
    # the same region not marked crowd: plain IoU 100 / 1600 = 0.0625 -> two FPs
    # above the TP, two GT: TP = 0,0,1; FP = 1,2,2; recall 0,0,.5; precision
    # 0,0,1/3 -> envelope 1/3 for r <= .5 (51 points), 0 above: AP = 51/3/101
    g2 = gt([[0, 0, 10, 10], [20, 0, 60, 40]])
    r2 = coco_evaluate([g2], [d])
    assert r2.stats[0] == pytest.approx(51 / 3 / 101, abs=EPS)


def test_max_dets_counts_per_image():
    # one GT; the top-scoring detection is a FP, the second a TP.
    # maxDets 1 keeps only the FP -> AR1 = 0; maxDets 10 -> AR10 = 1;
    # AP (maxDets 100): precision 0, 1/2 -> envelope 1/2 -> AP = 0.5
    r = coco_evaluate([gt([[0, 0, 10, 10]])], [det([[30, 30, 40, 40], [0, 0, 10, 10]], [0.9, 0.8])])
    assert r.stats[6] == 0.0
    assert r.stats[7] == pytest.approx(1.0, abs=EPS)
    assert r.stats[0] == pytest.approx(0.5, abs=EPS)


def test_unmatched_detection_outside_area_range_is_ignored():
    # small GT (area 100) found by a TP (0.8); a FP of area 2500 (medium) ranks
    # first. "all": FP then TP -> AP 0.5. "small": the unmatched FP's area is
    # outside [0, 32^2] -> ignored -> AP_small = 1. "medium": no GT -> -1.
    r = coco_evaluate([gt([[0, 0, 10, 10]])], [det([[40, 40, 90, 90], [0, 0, 10, 10]], [0.9, 0.8])])
    assert r.stats[0] == pytest.approx(0.5, abs=EPS)
    assert r.stats[3] == pytest.approx(1.0, abs=EPS)
    assert r.stats[4] == -1.0


def test_gt_area_decides_range_and_matched_det_outside_range():
    # GT area 100 (small); the detection [0,0,10,10.5] has area 105 and IoU
    # 100/105 = 0.952 -> TP for every threshold in "all" and "small". For
    # "medium" the GT is ignored (area out of range) and a detection matched to
    # an ignored GT is ignored -> no counted GT -> -1.
    r = coco_evaluate([gt([[0, 0, 10, 10]])], [det([[0, 0, 10, 10.5]], [0.9])])
    assert r.stats[0] == pytest.approx(1.0, abs=EPS) and r.stats[3] == pytest.approx(1.0, abs=EPS) and r.stats[4] == -1.0
    # an explicit 'area' overrides: call the same object medium (area 2000)
    r = coco_evaluate([gt([[0, 0, 10, 10]], area=np.array([2000.0]))], [det([[0, 0, 10, 10.5]], [0.9])])
    assert r.stats[3] == -1.0 and r.stats[4] == pytest.approx(1.0, abs=EPS)


def test_absent_category_is_minus_one_and_left_out():
    # category 2 is requested but has no GT -> precision -1 for it, excluded from the mean
    r = coco_evaluate([gt([[0, 0, 10, 10]])], [det([[0, 0, 10, 10], [20, 20, 30, 30]], [0.9, 0.8], labels=[1, 2])],
                      category_ids=(1, 2))
    assert np.all(r.precision[:, :, 1] == -1)
    assert r.stats[0] == pytest.approx(1.0, abs=EPS)


def test_segm_iou_uses_pixels_and_mask_area():
    # GT mask 10x10 square; detection mask = its left half (50 px): IoU 0.5 -> TP
    # only at t = .5 -> AP = 1/10. The detection *box* is perfect, so bbox AP = 1.
    gm = box_mask([0, 0, 10, 10])
    dm = box_mask([0, 0, 5, 10])
    g = gt([[0, 0, 10, 10]], masks=gm[None])
    d = det([[0, 0, 10, 10]], [0.9], masks=dm[None])
    assert coco_evaluate([g], [d], iou_type="segm").stats[0] == pytest.approx(0.1, abs=EPS)
    assert coco_evaluate([g], [d], iou_type="bbox").stats[0] == pytest.approx(1.0, abs=EPS)
    np.testing.assert_allclose(mask_iou_coco(dm[None], gm[None]), [[0.5]])
    # crowd: intersection / detection area = 50 / 50
    np.testing.assert_allclose(mask_iou_coco(dm[None], gm[None], np.array([True])), [[1.0]])
    # empty masks: IoU 0, not NaN
    e = np.zeros((1, 64, 64), bool)
    np.testing.assert_array_equal(mask_iou_coco(e, e), [[0.0]])


def test_box_iou_coco_formula():
    # [0,0,4,4] vs [2,2,6,6]: inter 4, union 16 + 16 - 4 = 28; touching boxes -> 0
    iou = box_iou_coco(np.array([[0, 0, 4, 4.0], [4, 0, 8, 4]]), np.array([[2, 2, 6, 6.0], [0, 0, 4, 4]]))
    np.testing.assert_allclose(iou, [[4 / 28, 1.0], [4 / 28, 0.0]])
    crowd = box_iou_coco(np.array([[0, 0, 4, 4.0]]), np.array([[2, 2, 6, 6.0]]), np.array([True]))
    np.testing.assert_allclose(crowd, [[4 / 16]])


def test_tie_rules():
    # equal scores keep input order (stable sort): two detections on one GT
    # with the same score -> the first listed is the TP.
    g = gt([[0, 0, 10, 10]])
    d = det([[0, 0, 10, 10], [0, 0, 10, 8]], [0.5, 0.5])
    r = coco_evaluate([g], [d])
    assert r.stats[0] == pytest.approx(1.0, abs=EPS)  # TP first, the duplicate after it is a FP
    d = det([[0, 0, 10, 8], [0, 0, 10, 10]], [0.5, 0.5])
    # now the 0.8-IoU one comes first: TP for t <= .8 (7 thresholds), the
    # perfect one then takes the GT at t = .85, .9, .95 after a FP:
    # precision 0, 1/2 -> AP_t = 1/2 for those 3 -> AP = (7 + 1.5) / 10
    assert coco_evaluate([g], [d]).stats[0] == pytest.approx(0.85, abs=EPS)


def test_summarize_table():
    r = coco_evaluate([gt([[5, 5, 15, 15]])], [det([[5, 5, 15, 15]], [0.9])])
    text = summarize(r)
    lines = text.splitlines()
    assert len(lines) == 12
    assert lines[0] == " Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all | maxDets=100 ] = 1.000"
    assert lines[4] == " Average Precision  (AP) @[ IoU=0.50:0.95 | area=medium | maxDets=100 ] = -1.000"
    assert lines[6] == " Average Recall     (AR) @[ IoU=0.50:0.95 | area=   all | maxDets=  1 ] = 1.000"
    assert summarize(r.stats, iou_type="bbox").splitlines()[0] == "IoU metric: bbox"
    assert set(r.as_dict()) == set(STAT_NAMES)


def test_bad_inputs():
    g = [gt([[0, 0, 10, 10]])]
    d = [det([[0, 0, 10, 10]], [0.9])]
    with pytest.raises(ValueError, match="iou_type"):
        coco_evaluate(g, d, iou_type="keypoints")
    with pytest.raises(ValueError, match="detections"):
        coco_evaluate(g, d + d)
    with pytest.raises(ValueError, match="scores"):
        coco_evaluate(g, [{"boxes": d[0]["boxes"], "labels": d[0]["labels"]}])
    with pytest.raises(ValueError, match="boxes"):
        coco_evaluate(g, [{"boxes": np.zeros((2, 3)), "labels": np.ones(2, np.int64), "scores": np.ones(2)}])
    with pytest.raises(ValueError, match="masks"):
        coco_evaluate(g, d, iou_type="segm")
    with pytest.raises(TypeError, match="masks"):
        coco_evaluate([gt([[0, 0, 10, 10]], masks=np.zeros((1, 8, 8), np.float32))], d, iou_type="segm")
    with pytest.raises(ValueError, match="image_id"):
        coco_evaluate([gt([[0, 0, 1, 1]], image_id=3), gt([[0, 0, 1, 1]], image_id=3)], d + d)
    with pytest.raises(ValueError, match="image_id"):
        coco_evaluate([gt([[0, 0, 1, 1]], image_id=1)], [det([[0, 0, 1, 1]], [0.5], image_id=2)])
    with pytest.raises(TypeError, match=r"detections\[0\]\['labels'\] must have an integer dtype, got float64"):
        coco_evaluate(g, [{"boxes": d[0]["boxes"], "labels": np.array([1.5]), "scores": np.ones(1)}])
    with pytest.raises(ValueError, match=r"ground_truth\[0\]\['boxes'\] must be finite"):
        coco_evaluate([gt([[0, 0, np.nan, 10]])], d)
    with pytest.raises(ValueError, match="iou_thresholds"):
        coco_evaluate(g, d, iou_thresholds=[0.5, 1.5])
    with pytest.raises(ValueError, match="area_ranges"):
        coco_evaluate(g, d, area_ranges=[[0, 1e10], [100, 10]])
    # empty lists are fine (np.asarray([]) is float64)
    empty = coco_evaluate([{"boxes": np.zeros((0, 4)), "labels": []}, g[0]],
                          [{"boxes": np.zeros((0, 4)), "labels": [], "scores": []}, d[0]])
    assert empty.stats[0] == pytest.approx(1.0, abs=EPS)


# ------------------------------------------- plain re-derivation of COCOeval

def reference_coco_eval(gts, dts, iou_type, cats):
    """COCOeval's evaluate + accumulate, loop by loop (slow, independent of the
    vectorised code: matching by ``evaluate_image_naive``, accumulation by
    plain Python lists)."""
    T, R, K, A, M = 10, 101, len(cats), 4, 3
    maxdets = (1, 10, 100)
    precision = -np.ones((T, R, K, A, M))
    recall = -np.ones((T, K, A, M))
    for k, c in enumerate(cats):
        for a, (lo, hi) in enumerate(AREA_RANGES):
            per_image = []
            npig = 0
            for g, d in zip(gts, dts):
                gi = np.flatnonzero(g["labels"] == c)
                di = np.flatnonzero(d["labels"] == c)
                di = di[np.argsort(-d["scores"][di], kind="mergesort")][:100]
                crowd = g.get("iscrowd", np.zeros(len(g["labels"]), bool))[gi]
                if iou_type == "bbox":
                    ious = box_iou_coco(d["boxes"][di], g["boxes"][gi], crowd)
                    garea = (g["boxes"][gi, 2] - g["boxes"][gi, 0]) * (g["boxes"][gi, 3] - g["boxes"][gi, 1])
                    darea = (d["boxes"][di, 2] - d["boxes"][di, 0]) * (d["boxes"][di, 3] - d["boxes"][di, 1])
                else:
                    ious = mask_iou_coco(d["masks"][di], g["masks"][gi], crowd)
                    garea = g["masks"][gi].sum((1, 2)).astype(float)
                    darea = d["masks"][di].sum((1, 2)).astype(float)
                if "area" in g:
                    garea = g["area"][gi]
                gign = crowd | (garea < lo) | (garea > hi)
                npig += int((~gign).sum())
                dout = (darea < lo) | (darea > hi)
                rows = []
                for t in IOU_THRESHOLDS:
                    m, ig, _ = evaluate_image_naive(ious.reshape(len(di), len(gi)), gign, crowd, dout, t)
                    rows.append((m, ig))
                per_image.append((d["scores"][di], rows))
            if npig == 0:
                continue
            for mi, md in enumerate(maxdets):
                sc = np.concatenate([s[:md] for s, _ in per_image])
                order = np.argsort(-sc, kind="mergesort")
                for t in range(T):
                    m = np.concatenate([rows[t][0][:md] for _, rows in per_image])[order]
                    ig = np.concatenate([rows[t][1][:md] for _, rows in per_image])[order]
                    tp = fp = 0
                    rc, pr = [], []
                    for mm, ii in zip(m, ig):
                        if not ii:
                            tp += mm
                            fp += not mm
                        rc.append(tp / npig)
                        pr.append(tp / (tp + fp + np.spacing(1)))
                    recall[t, k, a, mi] = rc[-1] if rc else 0
                    for i in range(len(pr) - 1, 0, -1):
                        pr[i - 1] = max(pr[i - 1], pr[i])
                    for ri, r in enumerate(RECALL_THRESHOLDS):
                        idx = next((i for i, v in enumerate(rc) if v >= r), None)
                        precision[t, ri, k, a, mi] = pr[idx] if idx is not None else 0
    return precision, recall


def random_data(rng, n_images, size=48, with_masks=True):
    gts, dts = [], []
    for i in range(n_images):
        g = int(rng.integers(0, 5))
        xy = rng.integers(0, size - 4, size=(g, 2))
        wh = rng.integers(2, size // 2, size=(g, 2))
        gb = np.concatenate([xy, np.minimum(xy + wh, size)], axis=1).astype(float)
        gl = rng.integers(1, 3, size=g)
        crowd = rng.random(g) < 0.15
        dlist, llist = [], []
        for j in range(g):
            for _ in range(int(rng.integers(0, 3))):
                dlist.append(gb[j] + rng.integers(-3, 4, size=4))
                llist.append(gl[j] if rng.random() < 0.8 else 3 - gl[j])
        for _ in range(int(rng.integers(0, 4))):
            p = rng.integers(0, size - 4, size=2)
            dlist.append(np.concatenate([p, p + rng.integers(2, size // 2, size=2)]))
            llist.append(int(rng.integers(1, 3)))
        db = np.clip(np.array(dlist, float).reshape(-1, 4), 0, size)
        db[:, 2:] = np.maximum(db[:, 2:], db[:, :2] + 1)
        db = np.minimum(db, size)
        db[:, :2] = np.minimum(db[:, :2], db[:, 2:] - 1)
        sc = np.round(rng.random(len(db)) * 10) / 10  # ties
        gd = {"boxes": gb, "labels": gl.astype(np.int64), "iscrowd": crowd, "image_id": int(rng.integers(0, 10**6)) * 100 + i}
        dd = {"boxes": db, "labels": np.array(llist, np.int64), "scores": sc}
        if with_masks:
            gd["masks"] = np.array([box_mask(b, size, size) for b in gb], bool).reshape(g, size, size)
            dd["masks"] = np.array([box_mask(b, size, size) for b in db], bool).reshape(len(db), size, size)
        gts.append(gd)
        dts.append(dd)
    return gts, dts


@pytest.mark.parametrize("iou_type,budget", [("bbox", None), ("segm", None), ("bbox", 500), ("segm", 100)])
def test_equals_plain_reimplementation(iou_type, budget, monkeypatch):
    if budget is not None:  # force many small matching chunks (and mask-pair blocks for segm)
        monkeypatch.setattr("mrcnn_np.evaluate._MATCH_BUDGET", budget)
        monkeypatch.setattr("mrcnn_np.evaluate._PAIR_BUDGET", budget)
    rng = np.random.default_rng(7 if iou_type == "bbox" else 8)
    gts, dts = random_data(rng, 12)
    r = coco_evaluate(gts, dts, iou_type=iou_type, category_ids=(1, 2))
    # the reference accumulates in image_id order, as COCOeval
    order = np.argsort([g["image_id"] for g in gts])
    p, rec = reference_coco_eval([gts[i] for i in order], [dts[i] for i in order], iou_type, (1, 2))
    np.testing.assert_allclose(r.precision, p, atol=1e-12)
    np.testing.assert_allclose(r.recall, rec, atol=1e-12)
    assert (r.stats > 0).sum() >= 6


@settings(max_examples=40)
@given(st.data())
def test_batched_matching_equals_naive_loop(data):
    seed = data.draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    groups = []
    for _ in range(data.draw(st.integers(1, 5))):
        D, G = int(rng.integers(1, 7)), int(rng.integers(1, 6))
        ious = np.round(rng.random((D, G)), 1)  # coarse -> many equal IoUs
        ious[rng.random((D, G)) < 0.2] = 0.5  # exactly on a threshold
        ign = rng.random((4, G)) < 0.3
        crowd = rng.random(G) < 0.3
        ign |= crowd
        out = rng.random((4, D)) < 0.3
        groups.append((ious, ign, crowd, out))
    m, i = _match_groups([g[0] for g in groups], [~g[1] for g in groups], [g[2] for g in groups],
                         [g[3] for g in groups], IOU_THRESHOLDS)
    for n, (ious, ign, crowd, out) in enumerate(groups):
        for a in range(4):
            for t, thr in enumerate(IOU_THRESHOLDS):
                mm, ii, _ = evaluate_image_naive(ious, ign[a], crowd, out[a], thr)
                np.testing.assert_array_equal(m[n][a, t], mm)
                np.testing.assert_array_equal(i[n][a, t], ii)


# --------------------------------------------------------------- properties

@settings(max_examples=25)
@given(st.integers(0, 2**32 - 1), st.sampled_from(["bbox", "segm"]))
def test_stats_in_unit_interval(seed, iou_type):
    gts, dts = random_data(np.random.default_rng(seed), 4, size=32)
    r = coco_evaluate(gts, dts, iou_type=iou_type)
    ok = ((r.stats >= 0) & (r.stats <= 1)) | (r.stats == -1)
    assert ok.all()
    p = r.precision
    assert (((p >= 0) & (p <= 1)) | (p == -1)).all()


@settings(max_examples=25)
@given(st.integers(0, 2**32 - 1))
def test_low_scoring_extra_detection_keeps_perfect_ap50(seed):
    rng = np.random.default_rng(seed)
    gts, _ = random_data(rng, 3, size=32)
    for g in gts:
        g["iscrowd"] = np.zeros(len(g["labels"]), bool)
    perfect = [det(g["boxes"], rng.uniform(0.5, 1.0, len(g["labels"])), labels=g["labels"]) for g in gts]
    if not any(len(g["labels"]) for g in gts):
        return
    base = coco_evaluate(gts, perfect)
    assert base.stats[1] == pytest.approx(1.0, abs=EPS)
    i = int(rng.integers(0, len(gts)))
    extra = dict(perfect[i])
    xy = rng.uniform(0, 28, 2)
    extra["boxes"] = np.concatenate([perfect[i]["boxes"], [[*xy, *(xy + rng.uniform(1, 4, 2))]]])
    extra["labels"] = np.concatenate([perfect[i]["labels"], [int(rng.integers(1, 3))]])
    extra["scores"] = np.concatenate([perfect[i]["scores"], [0.1]])
    dts = list(perfect)
    dts[i] = extra
    assert coco_evaluate(gts, dts, category_ids=base.category_ids).stats[1] == pytest.approx(1.0, abs=EPS)


@settings(max_examples=20)
@given(st.integers(0, 2**32 - 1), st.sampled_from(["bbox", "segm"]))
def test_permuting_images_changes_nothing(seed, iou_type):
    rng = np.random.default_rng(seed)
    gts, dts = random_data(rng, 5, size=32)
    perm = rng.permutation(len(gts))
    a = coco_evaluate(gts, dts, iou_type=iou_type)
    b = coco_evaluate([gts[i] for i in perm], [dts[i] for i in perm], iou_type=iou_type)
    np.testing.assert_array_equal(a.stats, b.stats)
    np.testing.assert_array_equal(a.precision, b.precision)


# ---------------------------------------------------------- teaching helpers

def test_precision_recall_curve_by_hand():
    from mrcnn_np.evaluate import precision_recall_curve

    # the TP, FP, TP example above, given out of order
    c = precision_recall_curve([0.7, 0.9, 0.8], [True, True, False], 2)
    np.testing.assert_array_equal(c.order, [1, 2, 0])
    np.testing.assert_array_equal(c.tp_cum, [1, 1, 2])
    np.testing.assert_array_equal(c.fp_cum, [0, 1, 1])
    np.testing.assert_allclose(c.recall, [0.5, 0.5, 1.0])
    np.testing.assert_allclose(c.precision, [1, 0.5, 2 / 3], atol=EPS)
    np.testing.assert_allclose(c.envelope, [1, 2 / 3, 2 / 3], atol=EPS)
    assert c.ap == pytest.approx((51 + 50 * 2 / 3) / 101, abs=EPS)
    # recall never reaching 1: sampled precision is 0 beyond the last recall (0.5)
    c = precision_recall_curve([0.9], [True], 2)
    np.testing.assert_allclose(c.sampled[:51], 1, atol=EPS)
    np.testing.assert_array_equal(c.sampled[51:], 0)
    # an ignored detection counts neither way: TP, ignored, TP -> precision 1, 1, 1
    c = precision_recall_curve([0.9, 0.8, 0.7], [True, False, True], 2, ignored=[False, True, False])
    np.testing.assert_array_equal(c.fp_cum, [0, 0, 0])
    assert c.ap == pytest.approx(1.0, abs=EPS)
    with pytest.raises(ValueError, match="ignored must have shape"):
        precision_recall_curve([0.9], [True], 2, ignored=[False, True])


def test_precision_recall_curve_equals_coco_evaluate():
    from mrcnn_np.evaluate import precision_recall_curve

    rng = np.random.default_rng(3)
    gts, dts = random_data(rng, 6, with_masks=False)
    for g in gts:
        g["labels"][:] = 1
        g["iscrowd"][:] = False
    for d in dts:
        d["labels"][:] = 1
        d["scores"] = rng.random(len(d["scores"]))  # no ties across images
    r = coco_evaluate(gts, dts, category_ids=(1,))
    # is_tp at t = 0.5 from the naive matcher, image by image
    scores, is_tp = [], []
    for g, d in zip(gts, dts):
        o = np.argsort(-d["scores"], kind="mergesort")
        ious = box_iou_coco(d["boxes"][o], g["boxes"])
        m, _, _ = evaluate_image_naive(ious, np.zeros(len(g["boxes"]), bool), np.zeros(len(g["boxes"]), bool),
                                       np.zeros(len(o), bool), 0.5)
        scores.append(d["scores"][o]); is_tp.append(m)
    c = precision_recall_curve(np.concatenate(scores), np.concatenate(is_tp), sum(len(g["boxes"]) for g in gts))
    np.testing.assert_allclose(c.sampled, r.precision[0, :, 0, 0, 2], atol=1e-12)
    assert c.ap == pytest.approx(r.stats[1], abs=1e-12)


def test_simulate_detections():
    from mrcnn_np.evaluate import simulate_detections

    rng = np.random.default_rng(0)
    gts, _ = random_data(rng, 5, size=40)
    for g in gts:
        g["iscrowd"][:] = False
    clean = simulate_detections(gts, noise=0.0, rng=np.random.default_rng(1))
    for g, d in zip(gts, clean):
        np.testing.assert_array_equal(d["boxes"], g["boxes"])
        np.testing.assert_array_equal(d["masks"], g["masks"])
    assert coco_evaluate(gts, clean, iou_type="segm").stats[0] == pytest.approx(1.0, abs=EPS)
    noisy = simulate_detections(gts, noise=0.3, rng=np.random.default_rng(1), drop=0.3, false_positives=2)
    assert coco_evaluate(gts, noisy, iou_type="segm").stats[0] < 0.9
    again = simulate_detections(gts, noise=0.3, rng=np.random.default_rng(1), drop=0.3, false_positives=2)
    for a, b in zip(noisy, again):
        np.testing.assert_array_equal(a["boxes"], b["boxes"])
    with pytest.raises(TypeError, match="rng"):
        simulate_detections(gts, noise=0.1, rng=1)
    with pytest.raises(ValueError, match="drop must be <= 1.0, got 1.5"):
        simulate_detections(gts, noise=0.1, rng=rng, drop=1.5)
    with pytest.raises(ValueError, match="false_positives must be >= 0.0"):
        simulate_detections(gts, noise=0.1, rng=rng, false_positives=-1)
