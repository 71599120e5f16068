"""Tests for mrcnn_np.boxes: hand-computed cases, properties, fast vs naive NMS."""
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mrcnn_np import boxes as B
from mrcnn_np.kernels import nms as knms
from mrcnn_np.boxes import (
    batched_nms,
    batched_nms_naive,
    box_area,
    box_iou,
    clip_boxes_to_image,
    decode_boxes,
    encode_boxes,
    nms,
    nms_naive,
    remove_small_boxes,
)


def arr(x, dtype=np.float64):
    return np.asarray(x, dtype=dtype)


def sweep(b, s, idxs, thr, **kw):
    """``nms`` (idxs None) or ``batched_nms`` with the sweep kernel's phases chosen by
    hand (``probe``, ``max_pairs``; the sweep even for few boxes unless ``dense=True``):
    the score order and threshold as ``boxes`` sets them."""
    kw.setdefault("dense", False)
    order = np.argsort(-s, kind="stable")
    groups = None if idxs is None else idxs[order]
    return order[knms.nms_ranked(b[order], groups, B._threshold_as(b.dtype, thr), **kw)]


# ----------------------------------------------------------------- golden cases
def test_box_area_golden():
    # (2 - 0) * (3 - 0) = 6 ; (5 - 1) * (2.5 - 2) = 2
    np.testing.assert_array_equal(box_area(arr([[0, 0, 2, 3], [1, 2, 5, 2.5]])), [6.0, 2.0])


def test_box_iou_golden():
    a = arr([[0, 0, 2, 2]])
    b = arr([[1, 1, 3, 3],      # overlap 1x1 = 1, union 4 + 4 - 1 = 7 -> 1/7
             [2, 0, 4, 2],      # touching edge: intersection 0 -> 0
             [0, 0, 2, 2],      # itself -> 1
             [0.5, 0.5, 1.5, 1.5],  # inside: 1 / 4
             [0, 0, 4, 1]])     # overlap 2x1 = 2, union 4 + 4 - 2 = 6 -> 1/3
    np.testing.assert_allclose(box_iou(a, b), [[1 / 7, 0, 1, 0.25, 1 / 3]], rtol=1e-15)


def test_box_iou_degenerate_is_zero_not_nan():
    # two zero-area boxes: union 0; torchvision gives NaN, we give 0 (documented)
    z = arr([[1, 1, 1, 1], [2, 2, 2, 5]])
    out = box_iou(z, z)
    assert np.isfinite(out).all() and (out == 0).all()


def test_box_iou_keeps_dtype_and_empty_shapes():
    b32 = arr([[0, 0, 1, 1]], np.float32)
    assert box_iou(b32, b32).dtype == np.float32
    assert box_iou(np.zeros((0, 4)), arr([[0, 0, 1, 1]] * 3)).shape == (0, 3)
    assert box_iou(arr([[0, 0, 1, 1]] * 3), np.zeros((0, 4))).shape == (3, 0)
    # every geometry function: empty in, empty out, dtype kept
    e = np.zeros((0, 4), np.float32)
    assert box_area(e).shape == (0,) and box_area(e).dtype == np.float32
    assert clip_boxes_to_image(e, (3, 4)).shape == (0, 4) and clip_boxes_to_image(e, (3, 4)).dtype == np.float32
    assert remove_small_boxes(e, 1.0).shape == (0,) and remove_small_boxes(e, 1.0).dtype == np.int64
    assert box_iou(e, e).shape == (0, 0) and box_iou(e, e).dtype == np.float32


def test_clip_golden():
    # size = (height 10, width 4): x in [0, 4], y in [0, 10]
    out = clip_boxes_to_image(arr([[-1, -2, 5, 12], [1, 2, 3, 4]]), (10, 4))
    np.testing.assert_array_equal(out, [[0, 0, 4, 10], [1, 2, 3, 4]])
    # (N, 4k): every box of a row is clipped
    out = clip_boxes_to_image(arr([[-1, -1, 9, 9, 2, 3, 20, 30]]), (8, 6))
    np.testing.assert_array_equal(out, [[0, 0, 6, 8, 2, 3, 6, 8]])


def test_remove_small_boxes_golden():
    b = arr([[0, 0, 1, 1],      # 1 x 1: kept at min_size 1 (>=)
             [0, 0, 0.9, 5],    # too narrow
             [0, 0, 5, 0.5],    # too flat
             [2, 2, 4, 7]])     # 2 x 5
    keep = remove_small_boxes(b, 1.0)
    assert keep.dtype == np.int64
    np.testing.assert_array_equal(keep, [0, 3])


def test_encode_golden():
    # anchor [0,0,10,10]: w = h = 10, centre (5, 5)
    # gt [2,4,12,24]: w = 10, h = 20, centre (7, 14)
    # dx = (7 - 5) / 10 = 0.2, dy = (14 - 5) / 10 = 0.9, dw = log(10/10) = 0, dh = log(20/10)
    a = arr([[0, 0, 10, 10]])
    g = arr([[2, 4, 12, 24]])
    np.testing.assert_allclose(encode_boxes(g, a, (1, 1, 1, 1)), [[0.2, 0.9, 0, math.log(2)]], rtol=1e-14)
    # box-head weights (10, 10, 5, 5) scale each component
    np.testing.assert_allclose(encode_boxes(g, a, (10, 10, 5, 5)), [[2, 9, 0, 5 * math.log(2)]], rtol=1e-14)


def test_decode_golden_and_clamp():
    a = arr([[0, 0, 10, 10]])
    # inverse of test_encode_golden
    np.testing.assert_allclose(decode_boxes(arr([[0.2, 0.9, 0, math.log(2)]]), a, (1, 1, 1, 1)),
                               [[2, 4, 12, 24]], rtol=1e-14)
    # dw = dh = 10 is clamped at log(1000/16): w' = 16 * 62.5 = 1000 around centre 8
    # -> [8 - 500, 8 - 500, 8 + 500, 8 + 500]
    out = decode_boxes(arr([[0, 0, 10, 10]]), arr([[0, 0, 16, 16]]), (1, 1, 1, 1))
    np.testing.assert_allclose(out, [[-492, -492, 508, 508]], rtol=1e-12)
    # with weights (10, 10, 5, 5) the clamp applies after dividing: 50 / 5 = 10 -> same box
    out = decode_boxes(arr([[0, 0, 50, 50]]), arr([[0, 0, 16, 16]]), (10, 10, 5, 5))
    np.testing.assert_allclose(out, [[-492, -492, 508, 508]], rtol=1e-12)


def test_decode_several_classes_side_by_side():
    a = arr([[0, 0, 10, 10], [10, 20, 30, 60]])
    codes = arr([[0, 0, 0, 0, 0.1, 0.2, 0.3, -0.4],
                 [1, -1, 0.5, 0.1, 0, 0, 0, 0]])
    out = decode_boxes(codes, a, (10, 10, 5, 5))
    assert out.shape == (2, 8)
    for k in range(2):  # each 4-column slice decodes like a single-class call
        np.testing.assert_array_equal(out[:, 4 * k:4 * k + 4],
                                      decode_boxes(codes[:, 4 * k:4 * k + 4], a, (10, 10, 5, 5)))
    np.testing.assert_array_equal(out[0, :4], a[0])  # zero code leaves the box unchanged


def test_coder_empty_and_dtype():
    e = np.zeros((0, 4), np.float32)
    assert encode_boxes(e, e, (1, 1, 1, 1)).shape == (0, 4)
    assert encode_boxes(e, e, (1, 1, 1, 1)).dtype == np.float32
    d = decode_boxes(np.zeros((0, 8), np.float32), e, (1, 1, 1, 1))
    assert d.shape == (0, 8) and d.dtype == np.float32


def test_nms_golden():
    b = arr([[0, 0, 10, 10],    # 0, score .9: kept
             [1, 0, 11, 10],    # 1, score .8: IoU with 0 = 90 / 110 = 0.818 > 0.7 -> removed
             [5, 0, 15, 10]])   # 2, score .7: IoU with 0 = 50 / 150 = 0.333 -> kept
    s = arr([0.9, 0.8, 0.7])
    np.testing.assert_array_equal(nms(b, s, 0.7), [0, 2])
    # a lower threshold 0.3 also removes 2 (0.333 > 0.3)
    np.testing.assert_array_equal(nms(b, s, 0.3), [0])


def test_nms_equal_to_threshold_is_kept():
    # IoU([0,0,10,10], [0,0,10,5]) = 50 / 100 = 0.5 exactly: not > 0.5, kept
    b = arr([[0, 0, 10, 10], [0, 0, 10, 5]])
    np.testing.assert_array_equal(nms(b, arr([0.9, 0.8]), 0.5), [0, 1])
    np.testing.assert_array_equal(nms(b, arr([0.9, 0.8]), 0.49), [0])


def test_nms_float32_threshold_compared_as_double():
    # IoU([0,0,10,10], [0,0,10,3]) = 30 / 100. In float32 that is 0.3f = 0.300000012 > 0.3,
    # so the box is removed (as torchvision's kernel, which compares float IoU with a
    # double threshold); in float64 30 / 100 == 0.3 exactly, not > 0.3, so it is kept.
    b = [[0, 0, 10, 10], [0, 0, 10, 3]]
    for f in (nms, nms_naive):
        np.testing.assert_array_equal(f(arr(b, np.float32), arr([0.9, 0.8], np.float32), 0.3), [0])
        np.testing.assert_array_equal(f(arr(b), arr([0.9, 0.8]), 0.3), [0, 1])


def test_nms_threshold_one_removes_nothing_and_beyond_one_is_refused():
    # IoU <= 1: identical boxes survive the threshold 1; an IoU threshold outside
    # [0, 1] is a mistake (issue 16), refused rather than read as "remove nothing"
    b = arr([[0, 0, 1, 1]] * 2, np.float32)
    s = arr([0.9, 0.8], np.float32)
    for f in (nms, nms_naive):
        np.testing.assert_array_equal(f(b, s, 1.0), [0, 1])
        for thr in (1.5, 1e40, -0.1):
            with pytest.raises(ValueError, match="iou_threshold"):
                f(b, s, thr)
    for f in (batched_nms, batched_nms_naive):
        with pytest.raises(ValueError, match="iou_threshold must be <= 1.0"):
            f(b, s, np.array([0, 1]), 1.5)


def test_float16_boxes_are_computed_in_float32_or_refused():
    # issue 16: in float16 the area of a 300 x 300 box overflows (65504), so its IoU
    # was 0 and NMS suppressed nothing. box_area/box_iou/nms upcast as torchvision's
    # _upcast does; the box coder refuses float16.
    b32 = arr([[0, 0, 300, 300], [10, 10, 310, 310]], np.float32)
    b16 = b32.astype(np.float16)
    s16 = arr([0.9, 0.8], np.float16)
    assert B.box_area(b16).dtype == np.float32
    np.testing.assert_array_equal(B.box_area(b16), B.box_area(b32))
    np.testing.assert_array_equal(B.box_iou(b16, b16), B.box_iou(b32, b32))
    for f in (nms, nms_naive):
        np.testing.assert_array_equal(f(b16, s16, 0.5), [0])
    for f in (batched_nms, batched_nms_naive):
        np.testing.assert_array_equal(f(b16, s16, np.array([0, 0]), 0.5), [0])
    np.testing.assert_array_equal(B.remove_small_boxes(b16, 301.0), [])
    assert B.clip_boxes_to_image(b16, (100, 100)).dtype == np.float16
    with pytest.raises(TypeError, match="float16"):
        B.encode_boxes(b16, b16, (1, 1, 1, 1))
    with pytest.raises(TypeError, match="float16"):
        B.decode_boxes(np.zeros((2, 4), np.float16), b16, (1, 1, 1, 1))


def test_huge_or_non_finite_coordinates_are_refused_not_overflowed():
    for f in (B.box_area, lambda b: B.box_iou(b, b), lambda b: nms(b, np.ones(2, b.dtype), 0.5)):
        for dtype, big in ((np.float32, 1e19), (np.float64, 1e154)):
            with pytest.raises(ValueError, match="magnitude"):
                f(arr([[0, 0, big, big], [0, 0, 1, 1]], dtype))
        with pytest.raises(ValueError, match="finite"):
            f(arr([[0, 0, np.nan, 1], [0, 0, 1, 1]]))
    with pytest.raises(ValueError, match="finite"):
        B.clip_boxes_to_image(arr([[0, 0, np.inf, 1]]), (5, 5))
    with pytest.raises(ValueError, match="rel_codes are too large"):
        B.decode_boxes(arr([[1e308, 0, 0, 0]]), arr([[0, 0, 10, 10]]), (1, 1, 1, 1))
    # a very negative dw decodes to a zero width, silently (exp underflows to 0)
    with np.errstate(all="raise"):
        out = B.decode_boxes(arr([[0, 0, -1e300, 0]]), arr([[0, 0, 10, 10]]), (1, 1, 1, 1))
    np.testing.assert_array_equal(out, [[5, 0, 5, 10]])


def test_nms_chain_is_greedy():
    # A=[0,0,10,10] > B=[2,0,12,10] > C=[4,0,14,10]; IoU(A,B) = 80/120 = .667,
    # IoU(B,C) = .667, IoU(A,C) = 60/140 = .43. At 0.5 A removes B; B is gone, so
    # C survives (a "remove everything that overlaps anything" rule would drop it).
    b = arr([[4, 0, 14, 10], [0, 0, 10, 10], [2, 0, 12, 10]])
    s = arr([0.1, 0.9, 0.5])
    np.testing.assert_array_equal(nms(b, s, 0.5), [1, 0])


def test_nms_ties_by_index():
    # identical boxes with equal scores: the lowest index wins (stable sort)
    b = arr([[0, 0, 1, 1]] * 4 + [[5, 5, 6, 6]] * 2)
    s = arr([0.5, 0.5, 0.7, 0.7, 0.5, 0.5])
    np.testing.assert_array_equal(nms(b, s, 0.5), [2, 4])


def test_nms_empty_and_dtype():
    keep = nms(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), 0.5)
    assert keep.shape == (0,) and keep.dtype == np.int64
    keep = batched_nms(np.zeros((0, 4)), np.zeros(0), np.zeros(0, np.int64), 0.5)
    assert keep.shape == (0,) and keep.dtype == np.int64
    keep = nms(arr([[0, 0, 1, 1]], np.float32), arr([1], np.float32), 0.5)
    assert keep.dtype == np.int64 and keep.tolist() == [0]


def test_batched_nms_golden():
    # boxes 0 and 1 are the same box; in different categories both stay
    b = arr([[0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 10, 10]])
    s = arr([0.5, 0.9, 0.7])
    np.testing.assert_array_equal(batched_nms(b, s, np.array([0, 1, 1]), 0.5), [1, 0])
    np.testing.assert_array_equal(batched_nms(b, s, np.array([0, 1, 2]), 0.5), [1, 2, 0])


# ----------------------------------------------------------------- bad input
def test_bad_input_messages():
    good = arr([[0, 0, 1, 1]])
    with pytest.raises(ValueError, match="boxes"):
        nms(arr([[0, 0, 1]]), arr([1.0]), 0.5)
    with pytest.raises(ValueError, match="scores"):
        nms(good, arr([1.0, 2.0]), 0.5)
    with pytest.raises(ValueError, match="iou_threshold"):
        nms(good, arr([1.0]), -0.1)
    with pytest.raises(ValueError, match="idxs"):
        batched_nms(good, arr([1.0]), np.array([0, 1]), 0.5)
    with pytest.raises(TypeError, match="idxs"):
        batched_nms(good, arr([1.0]), np.array([0.5]), 0.5)
    with pytest.raises(ValueError, match="boxes1"):
        box_iou(np.zeros((3, 5)), good)
    with pytest.raises(ValueError, match="boxes2"):
        box_iou(good, np.zeros(4))
    with pytest.raises(TypeError, match="boxes2"):
        box_iou(good, good.astype(np.float32))
    with pytest.raises(TypeError, match="boxes"):
        box_area([[0, 0, 1, 1]])
    with pytest.raises(ValueError, match="boxes"):
        nms(arr([[0, 0, np.nan, 1]]), arr([1.0]), 0.5)
    with pytest.raises(ValueError, match="size"):
        clip_boxes_to_image(good, (10,))
    with pytest.raises(ValueError, match="min_size"):
        remove_small_boxes(good, -1.0)
    with pytest.raises(ValueError, match="weights"):
        encode_boxes(good, good, (1, 1, 1))
    with pytest.raises(ValueError, match="proposals"):
        encode_boxes(good, arr([[0, 0, 0, 1]]), (1, 1, 1, 1))
    with pytest.raises(ValueError, match="proposals"):
        encode_boxes(good, np.zeros((2, 4)), (1, 1, 1, 1))
    with pytest.raises(ValueError, match="rel_codes"):
        decode_boxes(np.zeros((1, 5)), good, (1, 1, 1, 1))
    with pytest.raises(ValueError, match="rel_codes"):
        decode_boxes(arr([[0, 0, np.inf, 0]]), good, (1, 1, 1, 1))
    with pytest.raises(TypeError, match="boxes"):
        decode_boxes(np.zeros((1, 4), np.float32), good, (1, 1, 1, 1))
    with pytest.raises(ValueError, match="bbox_xform_clip"):  # exp(100) overflows float32
        decode_boxes(np.zeros((1, 4), np.float32), good.astype(np.float32), (1, 1, 1, 1), 100.0)


# ----------------------------------------------------------------- properties
def random_boxes(rng, n, *, scale=100.0, min_wh=0.5, max_wh=40.0, integer=False, dtype=np.float64):
    xy = rng.uniform(0, scale, (n, 2))
    wh = rng.uniform(min_wh, max_wh, (n, 2))
    b = np.concatenate([xy, xy + wh], axis=1)
    if integer:  # small integer coordinates: duplicates and exact IoU ties
        b = np.round(b / 4)
        b[:, 2:] = np.maximum(b[:, 2:], b[:, :2] + 1)
    return b.astype(dtype)


seeds = st.integers(0, 2**32 - 1)
dtypes = st.sampled_from([np.float32, np.float64])


@given(seed=seeds, n=st.integers(1, 12), m=st.integers(1, 12), dtype=dtypes,
       shift=st.tuples(st.integers(-50, 50), st.integers(-50, 50)))
def test_iou_properties(seed, n, m, dtype, shift):
    rng = np.random.default_rng(seed)
    a = random_boxes(rng, n, dtype=dtype)
    b = random_boxes(rng, m, dtype=dtype)
    iou = box_iou(a, b)
    assert iou.shape == (n, m) and iou.dtype == dtype
    np.testing.assert_array_equal(iou, box_iou(b, a).T)          # symmetric (bit for bit)
    assert (iou >= 0).all() and (iou <= 1 + 4 * np.finfo(dtype).eps).all()
    # iou(b, b) = 1 exactly: the intersection is computed with the same operations as the
    # area, so inter == area and union = (area + area) - area == area
    np.testing.assert_array_equal(np.diag(box_iou(a, a)), 1.0)
    # translating both boxes by an integer shift keeps IoU up to the rounding of the shifted
    # coordinates: float32 values < 256 move by <= ulp / 2 = 7.6e-6, and |dIoU / dx| <= 3 / w
    # <= 6 (sides >= 0.5), so over 8 coordinates the IoU moves by < 8 * 6 * 7.6e-6 = 3.7e-4
    t = np.asarray([shift[0], shift[1]] * 2, dtype=dtype)
    np.testing.assert_allclose(box_iou(a + t, b + t), iou, atol=5e-4 if dtype == np.float32 else 1e-10)
    # against a per-pair scalar formula (Python floats)
    for i in range(n):
        for j in range(m):
            p, q = a[i].astype(float), b[j].astype(float)
            iw = max(min(p[2], q[2]) - max(p[0], q[0]), 0.0)
            ih = max(min(p[3], q[3]) - max(p[1], q[1]), 0.0)
            inter = iw * ih
            union = (p[2] - p[0]) * (p[3] - p[1]) + (q[2] - q[0]) * (q[3] - q[1]) - inter
            assert abs(iou[i, j] - inter / union) < (1e-5 if dtype == np.float32 else 1e-12)


@given(seed=seeds, n=st.integers(1, 30), weights=st.sampled_from([(1, 1, 1, 1), (10, 10, 5, 5), (2, 3, 0.5, 7)]))
def test_encode_decode_round_trip(seed, n, weights):
    rng = np.random.default_rng(seed)
    anchors = random_boxes(rng, n, scale=500, min_wh=4, max_wh=200)
    # targets within a factor 30 of the anchor sizes stay inside the clamp (62.5)
    gt = random_boxes(rng, n, scale=500, min_wh=4, max_wh=200)
    codes = encode_boxes(gt, anchors, weights)
    np.testing.assert_allclose(decode_boxes(codes, anchors, weights), gt, rtol=1e-10, atol=1e-9)
    # and the other way: decode then encode recovers codes that were not clamped
    c = rng.normal(0, 0.5, (n, 4))
    c[:, 2:] = np.clip(c[:, 2:], -3, 3)
    w = np.asarray(weights, float)
    np.testing.assert_allclose(encode_boxes(decode_boxes(c * w, anchors, weights), anchors, weights),
                               c * w, rtol=1e-8, atol=1e-9)


def _nms_problem(data, max_n=80):
    seed = data.draw(seeds, label="seed")
    n = data.draw(st.integers(0, max_n), label="n")
    kind = data.draw(st.sampled_from(["uniform", "integer", "clustered", "far", "messy"]), label="kind")
    dtype = data.draw(dtypes, label="dtype")
    thr = data.draw(st.sampled_from([0.0, 0.1, 0.3, 0.5, 0.7, 0.9, 1.0]), label="thr")
    rng = np.random.default_rng(seed)
    if kind == "clustered":
        base = random_boxes(rng, max(1, n // 8), scale=60, min_wh=5, max_wh=30)
        pick = base[rng.integers(0, base.shape[0], n)]
        b = (pick + rng.normal(0, 1.5, (n, 4))).astype(dtype)
        b[:, 2:] = np.maximum(b[:, 2:], b[:, :2])  # some degenerate boxes
    elif kind == "messy":  # any corners: inverted, zero-size and nested boxes of all sizes
        b = np.round(rng.uniform(0, 40, (n, 4)) * rng.choice([0.25, 1.0], (n, 1))).astype(dtype)
    elif kind == "far":  # large coordinates, small boxes: float32 rounding matters
        b = (random_boxes(rng, n, scale=20, min_wh=0.05, max_wh=3) + 3e4).astype(dtype)
    else:
        b = random_boxes(rng, n, integer=kind == "integer", dtype=dtype)
    s = rng.integers(0, 5, n).astype(dtype) if kind == "integer" else rng.random(n).astype(dtype)
    return b, s, thr


@given(data=st.data())
def test_nms_properties(data):
    b, s, thr = _nms_problem(data)
    keep = nms(b, s, thr)
    n = b.shape[0]
    assert keep.dtype == np.int64 and len(set(keep.tolist())) == keep.size
    assert ((keep >= 0) & (keep < n)).all()
    assert (np.diff(s[keep]) <= 0).all()                      # sorted by score
    # compare as real numbers (nms does: float32 0.1f > 0.1 although 0.1f == float32(0.1))
    iou = box_iou(b, b).astype(np.float64)
    kk = iou[np.ix_(keep, keep)]
    assert not (np.triu(kk, 1) > thr).any()                    # no kept pair above
    rank = np.empty(n, np.int64)
    rank[np.argsort(-s, kind="stable")] = np.arange(n)
    for j in sorted(set(range(n)) - set(keep.tolist())):        # every removed box
        higher = keep[rank[keep] < rank[j]]                     # ... by a kept, higher one
        assert (iou[higher, j] > thr).any()


@given(data=st.data())
def test_nms_fast_equals_naive(data):
    b, s, thr = _nms_problem(data, max_n=300)
    np.testing.assert_array_equal(nms(b, s, thr), nms_naive(b, s, thr))


@given(data=st.data())
@settings(max_examples=25)
def test_nms_each_fast_path_equals_naive(data):
    # nms mixes a kept-box loop and a pair sweep; force each one alone
    b, s, thr = _nms_problem(data, max_n=200)
    idxs = np.arange(b.shape[0]) % 3
    ref, ref_b = nms_naive(b, s, thr), batched_nms_naive(b, s, idxs, thr)
    for kw in ({"probe": False, "max_pairs": 10**9},   # sweep + greedy pass only
               {"probe": False, "max_pairs": 0},       # loop only (budget exceeded at once)
               {"probe": True, "max_pairs": 0},        # loop, then loop again
               {"dense": True}):                       # every IoU of a category at once (few boxes)
        np.testing.assert_array_equal(sweep(b, s, None, thr, **kw), ref)
        np.testing.assert_array_equal(sweep(b, s, idxs, thr, **kw), ref_b)


@given(data=st.data())
def test_batched_nms_equals_nms_per_index(data):
    b, s, thr = _nms_problem(data, max_n=150)
    n = b.shape[0]
    rng = np.random.default_rng(data.draw(seeds, label="seed2"))
    idxs = rng.integers(-2, 3, n) if data.draw(st.booleans()) else rng.integers(0, 40, n).astype(np.uint8)
    keep = batched_nms(b, s, idxs, thr)
    # independent reference: our nms on each category, merged by score (stable)
    parts = [np.flatnonzero(idxs == v)[nms(b[idxs == v], s[idxs == v], thr)] for v in np.unique(idxs)]
    ref = np.sort(np.concatenate(parts)) if parts else np.zeros(0, np.int64)
    ref = ref[np.argsort(-s[ref], kind="stable")]  # equal scores: increasing index
    np.testing.assert_array_equal(keep, ref)
    np.testing.assert_array_equal(keep, batched_nms_naive(b, s, idxs, thr))


def test_nms_large_random_equals_naive():
    rng = np.random.default_rng(7)
    for dtype in (np.float32, np.float64):
        b = random_boxes(rng, 1500, scale=400, min_wh=5, max_wh=60, dtype=dtype)
        s = rng.random(1500).astype(dtype)
        for thr in (0.3, 0.7):
            np.testing.assert_array_equal(nms(b, s, thr), nms_naive(b, s, thr))


def test_nms_all_identical_boxes():
    # the dense case: N^2 / 2 suppression pairs; one box survives, the best one
    b = np.tile(np.asarray([[3.0, 4.0, 50.0, 60.0]]), (3000, 1))
    s = np.random.default_rng(0).random(3000)
    np.testing.assert_array_equal(nms(b, s, 0.7), [np.argmax(s)])


def test_nms_loop_drops_removed_boxes_from_its_view(monkeypatch):
    # dense clusters: the kept-box loop rebuilds its x-ordered view without the removed
    # boxes (several times here); the result must not change
    rng = np.random.default_rng(11)
    centres = random_boxes(rng, 12, scale=300, min_wh=20, max_wh=80)
    b = centres[rng.integers(0, 12, 2000)] + rng.normal(0, 3, (2000, 4))
    s = rng.random(2000)
    builds = []
    real = knms._XView.__init__

    def counting(self, *args):
        builds.append(1)
        real(self, *args)

    monkeypatch.setattr(knms._XView, "__init__", counting)
    for thr in (0.5, 0.7):
        builds.clear()
        keep = sweep(b, s, None, thr, probe=False, max_pairs=0)  # loop only
        assert len(builds) > 2
        np.testing.assert_array_equal(keep, nms_naive(b, s, thr))


@pytest.mark.parametrize("side", [1e-20, 3e-23])
def test_nms_subnormal_areas_equal_naive(side):
    # float32 boxes so small that their areas are subnormal (< 1.2e-38): the computed IoU
    # can then be far from the exact one (here identical boxes have area 1e-45 and IoU 1),
    # and the fast path must not trust its rounding margin (it falls back to t' = 0).
    b = np.tile(np.asarray([[0, 0, side, side]], np.float32), (3, 1))
    b = np.concatenate([b, b + np.float32(0.4 * side)])  # shifted copies: partial overlaps
    s = np.asarray([0.9, 0.8, 0.7, 0.6, 0.5, 0.4], np.float32)
    ref = nms_naive(b, s, 0.7)
    assert ref.size < 6  # something is suppressed
    for kw in ({"probe": False, "max_pairs": 10**9}, {"probe": False, "max_pairs": 0}, {}, {"dense": True}):
        np.testing.assert_array_equal(sweep(b, s, None, 0.7, **kw), ref)
