"""mrcnn_np.transform: normalize, resize (image, boxes, masks), batch, postprocess.

Hand-worked sizes and values, a linear-ramp check of the bilinear resize,
round trips, no mutation, dtypes, bad inputs, and a hypothesis property of
the size rule against exact rational arithmetic.
"""
import copy
import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from mrcnn_np.transform import (
    IMAGE_MEAN,
    IMAGE_STD,
    batch_images,
    normalize_image,
    postprocess,
    resize_boxes,
    resize_image_and_target,
    transform_forward,
)


def _image(h, w, dtype=np.float64, seed=0):
    return np.random.default_rng(seed).random((3, h, w)).astype(dtype)


# --------------------------------------------------------------------------- normalize
def test_normalize_by_hand():
    # a 3x4 image whose pixels are mean + k * std, so the result is k exactly (up to rounding):
    # channel 0: 0.485 -> 0, 0.714 = 0.485 + 0.229 -> 1, 0.256 = 0.485 - 0.229 -> -1
    # channel 1: 0.456 -> 0, 0.680 = 0.456 + 0.224 -> 1, 0.904 = 0.456 + 2 * 0.224 -> 2
    # channel 2: 0.406 -> 0, 0.181 = 0.406 - 0.225 -> -1, 1.081 = 0.406 + 3 * 0.225 -> 3
    img = np.empty((3, 3, 4))
    img[0] = [[0.485, 0.714, 0.256, 0.485]] * 3
    img[1] = [[0.456, 0.680, 0.904, 0.456]] * 3
    img[2] = [[0.406, 0.181, 1.081, 0.406]] * 3
    out = normalize_image(img)
    want = np.empty((3, 3, 4))
    want[0] = [[0, 1, -1, 0]] * 3
    want[1] = [[0, 1, 2, 0]] * 3
    want[2] = [[0, -1, 3, 0]] * 3
    np.testing.assert_allclose(out, want, atol=1e-12)
    assert out.shape == (3, 3, 4) and out.dtype == np.float64


def test_normalize_custom_stats_exact():
    # (x - 0.5) / 0.25 on dyadic numbers is exact: 0 -> -2, 0.5 -> 0, 1 -> 2, 0.75 -> 1
    img = np.array([0.0, 0.5, 1.0, 0.75], dtype=np.float32).reshape(1, 1, 4).repeat(3, axis=0)
    out = normalize_image(img, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    np.testing.assert_array_equal(out[1, 0], [-2, 0, 2, 1])
    assert out.dtype == np.float32


def test_normalize_float32_uses_float32_stats():
    # torch casts mean and std to the image dtype first; float32 arithmetic throughout
    img = _image(5, 6, np.float32)
    mean = np.float32(IMAGE_MEAN)
    std = np.float32(IMAGE_STD)
    want = (img - mean[:, None, None]) / std[:, None, None]
    np.testing.assert_array_equal(normalize_image(img), want)


# --------------------------------------------------------------------------- sizes
@pytest.mark.parametrize("hw, want", [
    # 480x640: scale = min(800/480, 1333/640) = min(1.6667, 2.0828) = 1.6667 (short side binds)
    #          -> (800, floor(640 * 1.6667 = 1066.67)) = (800, 1066)
    ((480, 640), (800, 1066)),
    # 500x300 portrait: scale = min(800/300 = 2.6667, 1333/500 = 2.666) = 2.666 (long side binds)
    #          -> (floor(500 * 2.666) = 1333, floor(300 * 2.666 = 799.8) = 799)
    ((500, 300), (1333, 799)),
    # 1024x1024: scale = min(800/1024, 1333/1024) = 0.78125 -> (800, 800)
    ((1024, 1024), (800, 800)),
    # 97x120: scale = 800/97 = 8.24742268041237 in double; 97 * scale = 799.9999999999999,
    #          floor -> 799 (torchvision gives the same); 120 * scale = 989.69 -> 989
    ((97, 120), (799, 989)),
    # 800x1066 is already at the target size: scale = min(1, 1333/1066) = 1 -> unchanged
    ((800, 1066), (800, 1066)),
])
def test_resized_sizes_by_hand(hw, want):
    img = np.zeros((3,) + hw, dtype=np.float32)
    out, t = resize_image_and_target(img)
    assert out.shape == (3,) + want
    assert t is None


def test_resize_500x300_boxes_by_hand():
    # 500x300 -> 1333x799 (above). Ratios in float32: x by 799/300 = 2.6633334, y by 1333/500 = 2.666
    # box [30, 50, 150, 450] -> [30 * 2.66333 = 79.9, 50 * 2.666 = 133.3, 150 * 2.66333 = 399.5,
    #                            450 * 2.666 = 1199.7]
    img = np.zeros((3, 500, 300))
    boxes = np.array([[30.0, 50.0, 150.0, 450.0]])
    out, t = resize_image_and_target(img, {"boxes": boxes})
    assert out.shape == (3, 1333, 799)
    np.testing.assert_allclose(t["boxes"], [[79.9, 133.3, 399.5, 1199.7]], rtol=1e-6)
    # the ratios themselves are float32 values (torchvision builds them as float32 tensors)
    np.testing.assert_array_equal(t["boxes"][0, 1], 50.0 * np.float64(np.float32(1333) / np.float32(500)))


def test_resize_boxes_ratio_is_float32_division():
    boxes = np.array([[1.0, 1.0, 1.0, 1.0]])
    # 1/3 in float32 is 0.3333333432674408, not the double 0.3333333333333333
    out = resize_boxes(boxes, (3, 3), (1, 1))
    np.testing.assert_array_equal(out, np.full((1, 4), float(np.float32(1) / np.float32(3))))
    assert out[0, 0] != 1 / 3


def test_resize_boxes_axes():
    # height 10 -> 20 (x2) scales y; width 10 -> 5 (x0.5) scales x
    boxes = np.array([[2.0, 4.0, 6.0, 8.0]], dtype=np.float32)
    out = resize_boxes(boxes, (10, 10), (20, 5))
    np.testing.assert_array_equal(out, [[1.0, 8.0, 3.0, 16.0]])
    assert out.dtype == np.float32


# --------------------------------------------------------------------------- image resize values
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_resize_image_linear_ramp(dtype):
    # image = 3 x + 5 y + c on a 4x6 grid; min_size=8, max_size=100 -> scale min(8/4, 100/6) = 2 -> 8x12.
    # align_corners=False bilinear reproduces a linear function at src = (i + 0.5) * 4/8 - 0.5
    # wherever 0 <= src <= H - 1 (no clamping): rows 1..6, columns 1..10 of the output.
    h, w = 4, 6
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    img = np.stack([3 * x + 5 * y + c for c in range(3)]).astype(dtype)
    out, _ = resize_image_and_target(img, min_size=8, max_size=100)
    assert out.shape == (3, 8, 12) and out.dtype == dtype
    i = np.arange(8)
    j = np.arange(12)
    sy = (i + 0.5) * h / 8 - 0.5
    sx = (j + 0.5) * w / 12 - 0.5
    want = np.stack([3 * sx[None, :] + 5 * sy[:, None] + c for c in range(3)])
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(out[:, 1:7, 1:11], want[:, 1:7, 1:11], atol=tol)
    # the clamped border rows/columns repeat the image's edge value: row 0 reads src max(-0.25, 0) = 0
    np.testing.assert_allclose(out[:, 0, 1:11], (3 * sx[None, 1:11] + np.arange(3)[:, None]), atol=tol)


def test_resize_constant_image_stays_constant():
    img = np.full((3, 37, 53), 0.375)
    out, _ = resize_image_and_target(img, min_size=50, max_size=70)
    # scale = min(50/37, 70/53) = min(1.351, 1.3208) = 1.3208 -> (floor(48.87), 70) = (48, 70)
    assert out.shape == (3, 48, 70)
    np.testing.assert_allclose(out, 0.375, atol=1e-15)


# --------------------------------------------------------------------------- masks
@pytest.mark.parametrize("dtype", [bool, np.uint8, np.float32, np.float64])
def test_masks_nearest_2x_keep_dtype(dtype):
    # 4x6 -> 8x12 (scale 2): nearest reads floor(i * 4 / 8) = i // 2, so every pixel becomes a 2x2 block
    m = np.random.default_rng(1).random((2, 4, 6)) > 0.5
    masks = m.astype(dtype)
    img = np.zeros((3, 4, 6), dtype=np.float32)
    target = {"boxes": np.zeros((2, 4), np.float32), "masks": masks}
    _, t = resize_image_and_target(img, target, min_size=8, max_size=100)
    assert t["masks"].dtype == np.dtype(dtype)
    np.testing.assert_array_equal(t["masks"], masks.repeat(2, axis=1).repeat(2, axis=2))


def test_masks_downscale_nearest_rows():
    # 10x10 -> 4x4 (min_size=4): nearest row i reads floor(i * 10 / 4) = 0, 2, 5, 7
    masks = np.arange(100, dtype=np.float64).reshape(1, 10, 10)
    _, t = resize_image_and_target(np.zeros((3, 10, 10)), {"boxes": np.zeros((1, 4)), "masks": masks},
                                   min_size=4, max_size=100)
    idx = np.array([0, 2, 5, 7])
    np.testing.assert_array_equal(t["masks"][0], masks[0][idx[:, None], idx[None, :]])


def test_target_other_keys_pass_through_and_no_mutation():
    img = _image(30, 40)
    labels = np.array([3, 7])
    target = {"boxes": np.array([[1.0, 2.0, 10.0, 20.0], [0.0, 0.0, 40.0, 30.0]]),
              "masks": np.ones((2, 30, 40), dtype=bool), "labels": labels, "image_id": 42}
    before = copy.deepcopy(target)
    img_before = img.copy()
    out, t = resize_image_and_target(img, target, min_size=60, max_size=100)
    assert t is not target
    assert t["labels"] is labels and t["image_id"] == 42
    for k in ("boxes", "masks", "labels"):
        np.testing.assert_array_equal(target[k], before[k])
    assert set(target) == set(before)
    np.testing.assert_array_equal(img, img_before)
    assert out.shape == (3, 60, 80)


# --------------------------------------------------------------------------- batch
def test_batch_images_padding_by_hand():
    # max H = 64, max W = 65; ceil(64/32) * 32 = 64, ceil(65/32) * 32 = 3 * 32 = 96
    a = _image(33, 40, seed=1)
    b = _image(64, 65, seed=2)
    batch = batch_images([a, b])
    assert batch.shape == (2, 3, 64, 96) and batch.dtype == np.float64
    np.testing.assert_array_equal(batch[0, :, :33, :40], a)
    np.testing.assert_array_equal(batch[1, :, :64, :65], b)
    assert not batch[0, :, 33:, :].any() and not batch[0, :, :, 40:].any()
    assert not batch[1, :, :, 65:].any()


@pytest.mark.parametrize("d, want", [(1, (31, 17)), (8, (32, 24)), (32, (32, 32)), (5, (35, 20))])
def test_batch_images_size_divisible(d, want):
    # one 31x17 image: ceil(31/d) * d, ceil(17/d) * d
    batch = batch_images([_image(31, 17, np.float32)], size_divisible=d)
    assert batch.shape == (1, 3) + want and batch.dtype == np.float32


# --------------------------------------------------------------------------- forward
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_transform_forward_end_to_end(dtype):
    a = _image(48, 64, dtype, seed=3)          # scale min(80/48, 133/64) = 1.6667 -> (80, 106)
    b = _image(60, 30, dtype, seed=4)          # scale min(80/30, 133/60) = 2.2167 -> (133, 66)
    targets = [{"boxes": np.array([[4.0, 6.0, 40.0, 30.0]], dtype=dtype),
                "masks": np.zeros((1, 48, 64), np.uint8), "labels": np.array([1])},
               {"boxes": np.zeros((0, 4), dtype=dtype), "masks": np.zeros((0, 60, 30), bool),
                "labels": np.zeros(0, np.int64)}]
    batch, sizes, new_t = transform_forward([a, b], targets, min_size=80, max_size=133)
    assert sizes == [(80, 106), (133, 66)]
    # padded: max H 133 -> 160, max W 106 -> 128
    assert batch.shape == (2, 3, 160, 128) and batch.dtype == dtype
    ra, _ = resize_image_and_target(normalize_image(a), min_size=80, max_size=133)
    np.testing.assert_array_equal(batch[0, :, :80, :106], ra)
    assert not batch[0, :, 80:].any() and not batch[0, :, :, 106:].any()
    assert not batch[1, :, :, 66:].any()
    # boxes: x by 106/64 = 1.65625, y by 80/48 = 1.6667: [6.625, 10, 66.25, 50]
    np.testing.assert_allclose(new_t[0]["boxes"], [[6.625, 10.0, 66.25, 50.0]], rtol=1e-6)
    assert new_t[0]["boxes"].dtype == dtype
    assert new_t[0]["masks"].shape == (1, 80, 106) and new_t[0]["masks"].dtype == np.uint8
    assert new_t[1]["boxes"].shape == (0, 4) and new_t[1]["masks"].shape == (0, 133, 66)
    assert new_t[1]["masks"].dtype == bool


def test_transform_forward_without_targets():
    batch, sizes, t = transform_forward([_image(20, 30, np.float32)], min_size=40, max_size=100)
    assert t is None and sizes == [(40, 60)] and batch.shape == (1, 3, 64, 64)


# --------------------------------------------------------------------------- postprocess
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_boxes_round_trip(dtype):
    rng = np.random.default_rng(5)
    h, w = 123, 457
    xy = rng.random((20, 2)) * [w / 2, h / 2]
    boxes = np.concatenate([xy, xy + rng.random((20, 2)) * [w / 2, h / 2]], axis=1).astype(dtype)
    _, sizes, t = transform_forward([_image(h, w, dtype)], [{"boxes": boxes}])
    # 123x457: scale min(800/123 = 6.504, 1333/457 = 2.9168) = 2.9168 -> (358, 1333)
    assert sizes == [(358, 1333)]
    det = [{"boxes": t[0]["boxes"], "scores": np.ones(20, dtype)}]
    back = postprocess(det, sizes, [(h, w)])
    assert back[0]["boxes"].dtype == dtype
    # two float32 ratios r and 1/r: their product is 1 within a few float32 ulps
    np.testing.assert_allclose(back[0]["boxes"], boxes, rtol=5e-7 if dtype == np.float64 else 1e-6)
    assert back[0]["scores"] is det[0]["scores"]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_postprocess_pastes_full_box_mask(dtype):
    # resized 200x300 image of an original 100x150 one (factor 2): box [40, 20, 160, 120] in the
    # resized image is [20, 10, 80, 60] in the original. A mask of ones pastes as ones well inside
    # that box (the 1-pixel zero border makes the outermost pixel of the box fade) and zeros outside
    # the grown integer box.
    boxes = np.array([[40.0, 20.0, 160.0, 120.0]], dtype=dtype)
    masks = np.ones((1, 1, 28, 28), dtype=dtype)
    res = [{"boxes": boxes, "masks": masks, "labels": np.array([2])}]
    res_before = copy.deepcopy(res)
    out = postprocess(res, [(200, 300)], [(100, 150)])
    m = out[0]["masks"]
    assert m.shape == (1, 1, 100, 150) and m.dtype == dtype
    np.testing.assert_array_equal(out[0]["boxes"], [[20.0, 10.0, 80.0, 60.0]])
    np.testing.assert_allclose(m[0, 0, 12:59, 22:79], 1.0, atol=1e-6)
    # grown box: centre (50, 35), half sizes 30 * 30/28 = 32.14, 25 * 30/28 = 26.79 ->
    # [17.86, 8.21, 82.14, 61.79] -> truncated [17, 8, 82, 61]: nothing outside it
    # and the padded mask's zero border is sampled on the grown box's first and last pixel:
    # rows 8..61 (54 pixels) read src = (t + 0.5) * 30/54 - 0.5: t = 0 -> 0 (clamped, the zero
    # border), t = 1 -> 0.33 (a third of row 1, nonzero), t = 52 -> 28.67, t = 53 -> 29.2 -> row 29
    # (border again). Columns 17..82 (66 pixels) likewise: nonzero exactly on 18..81.
    rows = np.flatnonzero(m[0, 0].any(axis=1))
    cols = np.flatnonzero(m[0, 0].any(axis=0))
    assert (rows[0], rows[-1], cols[0], cols[-1]) == (9, 60, 18, 81)
    np.testing.assert_allclose(m[0, 0, 9, 40], 1 / 3, rtol=1e-6)
    # inputs untouched
    for k in ("boxes", "masks", "labels"):
        np.testing.assert_array_equal(res[0][k], res_before[0][k])
    assert res[0]["masks"].shape == (1, 1, 28, 28)


def test_postprocess_masks_without_channel_axis():
    # (D, M, M) masks, as roi_heads.maskrcnn_inference returns them, paste to (D, H, W), equal to
    # the (D, 1, M, M) result without its channel axis
    rng = np.random.default_rng(6)
    boxes = np.array([[3.0, 4.0, 50.0, 33.0], [10.0, 0.0, 20.0, 60.0]])
    masks = rng.random((2, 28, 28))
    a = postprocess([{"boxes": boxes, "masks": masks}], [(64, 64)], [(32, 48)])[0]["masks"]
    b = postprocess([{"boxes": boxes, "masks": masks[:, None]}], [(64, 64)], [(32, 48)])[0]["masks"]
    assert a.shape == (2, 32, 48) and b.shape == (2, 1, 32, 48)
    np.testing.assert_array_equal(a, b[:, 0])
    assert a.any()


def test_postprocess_no_detections():
    out = postprocess([{"boxes": np.zeros((0, 4)), "masks": np.zeros((0, 1, 28, 28))}],
                      [(800, 1066)], [(480, 640)])
    assert out[0]["boxes"].shape == (0, 4) and out[0]["masks"].shape == (0, 1, 480, 640)


# --------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("call, exc, match", [
    (lambda: normalize_image(np.zeros((1, 4, 4))), ValueError, "image"),
    (lambda: normalize_image(np.zeros((4, 4))), ValueError, "image"),
    (lambda: normalize_image(np.zeros((3, 4, 4), np.uint8)), TypeError, "image"),
    (lambda: normalize_image([[0.0]]), TypeError, "image"),
    (lambda: normalize_image(np.zeros((3, 4, 4)), mean=(0.5, 0.5)), ValueError, "mean"),
    (lambda: normalize_image(np.zeros((3, 4, 4)), std=(0.5, 0.0, 0.5)), ValueError, "std"),
    (lambda: normalize_image(np.zeros((3, 4, 4)), std=(0.5, float("nan"), 0.5)), ValueError, "std"),
    (lambda: normalize_image(np.zeros((3, 4, 4)), mean=(0.5, "a", 0.5)), TypeError, "mean"),
    (lambda: resize_image_and_target(np.zeros((3, 4, 4)), min_size=0), ValueError, "min_size"),
    (lambda: resize_image_and_target(np.zeros((3, 4, 4)), max_size=2.5), TypeError, "max_size"),
    (lambda: resize_image_and_target(np.zeros((3, 4, 0))), ValueError, "image"),
    (lambda: resize_image_and_target(np.zeros((3, 1, 5000)), min_size=800, max_size=1333),
     ValueError, "image"),
    (lambda: resize_image_and_target(np.zeros((3, 4, 4)), {"labels": 1}), ValueError, "boxes"),
    (lambda: resize_image_and_target(np.zeros((3, 4, 4)), [np.zeros((1, 4))]), TypeError, "target"),
    (lambda: resize_image_and_target(np.zeros((3, 4, 4)), {"boxes": np.zeros((1, 5))}),
     ValueError, "boxes"),
    (lambda: resize_image_and_target(np.zeros((3, 4, 4)), {"boxes": np.zeros((1, 4), np.int64)}),
     TypeError, "boxes"),
    (lambda: resize_image_and_target(np.zeros((3, 4, 4)), {"boxes": np.zeros((1, 4)),
                                                          "masks": np.zeros((1, 4, 5))}),
     ValueError, "masks"),
    (lambda: resize_image_and_target(np.zeros((3, 4, 4)), {"boxes": np.zeros((1, 4)),
                                                          "masks": np.zeros((2, 4, 4))}),
     ValueError, "masks"),
    (lambda: batch_images([]), ValueError, "images"),
    (lambda: batch_images(np.zeros((1, 3, 4, 4))), TypeError, "images"),
    (lambda: batch_images([np.zeros((3, 4, 4)), np.zeros((3, 4, 4), np.float32)]), TypeError,
     r"images\[1\]"),
    (lambda: batch_images([np.zeros((3, 4, 4))], size_divisible=0), ValueError, "size_divisible"),
    (lambda: transform_forward([np.zeros((3, 4, 4))], [{"boxes": np.zeros((0, 4))}] * 2),
     ValueError, "targets"),
    (lambda: transform_forward([np.zeros((3, 4, 4)), np.zeros((4, 4, 4))]), ValueError,
     r"images\[1\]"),
    (lambda: postprocess([{"boxes": np.zeros((0, 4))}], [(8, 8)], []), ValueError,
     "original_image_sizes"),
    (lambda: postprocess([{"boxes": np.zeros((0, 4))}], [(8, 8), (8, 8)], [(8, 8)]), ValueError,
     "image_shapes"),
    (lambda: postprocess([{"scores": np.zeros(0)}], [(8, 8)], [(8, 8)]), ValueError, "boxes"),
    (lambda: postprocess([{"boxes": np.zeros((1, 4)), "masks": np.zeros((1, 2, 28, 28))}], [(8, 8)],
                         [(8, 8)]), ValueError, r"result\[0\]\['masks'\]"),
    (lambda: postprocess([{"boxes": np.zeros((1, 4)), "masks": np.zeros((1, 1, 28, 27))}], [(8, 8)],
                         [(8, 8)]), ValueError, "masks"),
    (lambda: postprocess([{"boxes": np.zeros((1, 4)), "masks": np.zeros((2, 28, 28))}], [(8, 8)],
                         [(8, 8)]), ValueError, "masks"),
    (lambda: postprocess([{"boxes": np.zeros((1, 4)), "masks": np.zeros((1, 28, 28), np.uint8)}],
                         [(8, 8)], [(8, 8)]), TypeError, "masks"),
    (lambda: postprocess([{"boxes": np.zeros((0, 4))}], [(8, 0)], [(8, 8)]), ValueError,
     "image_shapes"),
])
def test_bad_input(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


# --------------------------------------------------------------------------- property
@settings(max_examples=60)
@given(h=st.integers(1, 48), w=st.integers(1, 48), min_size=st.integers(1, 64),
       extra=st.integers(0, 64), size_divisible=st.sampled_from([1, 7, 32]))
def test_size_rule_property(h, w, min_size, extra, size_divisible):
    max_size = min_size + extra
    # exact rational scale; each side is floor(side * q) except that the double product can
    # round an exact integer down by one (97 * (800/97) = 799.99...), as in torchvision
    q = min(Fraction(min_size, min(h, w)), Fraction(max_size, max(h, w)))
    exact = [side * q for side in (h, w)]
    img = np.zeros((3, h, w), np.float32)
    try:
        out, _ = resize_image_and_target(img, min_size=min_size, max_size=max_size)
    except ValueError as err:      # a side would vanish: only if its exact size is at most 1
        assert "vanish" in str(err) and min(exact) <= 1
        return
    got = out.shape[1:]
    for g, e in zip(got, exact):
        if e.denominator == 1:
            assert g in (e - 1, e)
        else:
            assert g == math.floor(e)
    s, l = min(got), max(got)
    if Fraction(min_size, min(h, w)) <= Fraction(max_size, max(h, w)):   # short side binds
        assert s in (min_size - 1, min_size) and l <= max_size
    else:                                                                # long side binds
        assert l in (max_size - 1, max_size) and s <= min_size
    batch = batch_images([out], size_divisible=size_divisible)
    for g, p in zip(got, batch.shape[2:]):
        assert p % size_divisible == 0 and g <= p < g + size_divisible
