"""Tests for the mask side of mrcnn_np.roi_heads: mask head, mask targets,
maskrcnn_loss, maskrcnn_inference and paste_masks_in_image.

Golden values are worked out by hand in the comments; the mask head is
compared with a chain of the naive loop convolutions; gradients are checked
against central differences in float64 (relative error < 1e-6).
"""
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mrcnn_np.gradcheck import numeric_gradient, relative_error
from mrcnn_np.ops.conv import conv2d_naive, conv_transpose2d_naive
from mrcnn_np.roi_heads import (
    expand_boxes,
    init_mask_head,
    mask_head_backward,
    mask_head_forward,
    mask_head_keys,
    maskrcnn_inference,
    maskrcnn_loss,
    paste_masks_in_image,
    paste_masks_in_image_naive,
    project_masks_on_boxes,
)

F64 = np.float64


# =========================================================================== mask head
def test_init_mask_head_torchvision_names_and_init():
    rng = np.random.default_rng(0)
    params = init_mask_head(32, (64, 64, 64, 64), 48, 5, rng=rng)
    expected = [f"roi_heads.mask_head.{i}.0.{k}" for i in range(4) for k in ("weight", "bias")] + [
        "roi_heads.mask_predictor.conv5_mask.weight", "roi_heads.mask_predictor.conv5_mask.bias",
        "roi_heads.mask_predictor.mask_fcn_logits.weight", "roi_heads.mask_predictor.mask_fcn_logits.bias"]
    assert list(params) == expected == list(mask_head_keys(params))
    assert params["roi_heads.mask_head.0.0.weight"].shape == (64, 32, 3, 3)
    assert params["roi_heads.mask_head.3.0.weight"].shape == (64, 64, 3, 3)
    assert params["roi_heads.mask_predictor.conv5_mask.weight"].shape == (64, 48, 2, 2)
    assert params["roi_heads.mask_predictor.mask_fcn_logits.weight"].shape == (5, 48, 1, 1)
    assert all(v.dtype == np.float32 for v in params.values())
    # kaiming_normal fan_out relu: std sqrt(2 / fan_out); 3x3 conv: fan_out = 64 * 9
    w = params["roi_heads.mask_head.1.0.weight"]
    assert abs(w.std() / math.sqrt(2 / (64 * 9)) - 1) < 0.05
    assert np.all(params["roi_heads.mask_head.2.0.bias"] == 0)
    # transposed conv weight (in, out, 2, 2): torch's fan_out = in * 4 = 256
    w5 = params["roi_heads.mask_predictor.conv5_mask.weight"]
    assert abs(w5.std() / math.sqrt(2 / 256) - 1) < 0.1
    # predictor biases keep torch's default U(+-1/sqrt(fan_in)), fan_in = 48 * 4 for conv5_mask
    b5 = params["roi_heads.mask_predictor.conv5_mask.bias"]
    assert np.abs(b5).max() <= 1 / math.sqrt(192) and np.any(b5 != 0)


def _tiny_mask_head(rng, *, random_biases=False):
    # C=2 input channels, two 3x3 layers of 3, dim_reduced 3, K+1 = 3 classes
    params = init_mask_head(2, (3, 3), 3, 3, rng=rng, dtype=F64)
    if random_biases:  # the init leaves the 3x3 biases at 0: make them non-nice
        for k in params:
            if k.endswith("bias"):
                params[k] = rng.standard_normal(params[k].shape) * 0.1
    return params


def test_mask_head_forward_equals_naive_chain():
    rng = np.random.default_rng(1)
    params = _tiny_mask_head(rng, random_biases=True)
    pooled = rng.standard_normal((2, 2, 5, 5))
    logits, _ = mask_head_forward(params, pooled)
    x = pooled
    for i in range(2):
        x = np.maximum(conv2d_naive(x, params[f"roi_heads.mask_head.{i}.0.weight"],
                                    params[f"roi_heads.mask_head.{i}.0.bias"], padding=1), 0)
    x = np.maximum(conv_transpose2d_naive(x, params["roi_heads.mask_predictor.conv5_mask.weight"],
                                          params["roi_heads.mask_predictor.conv5_mask.bias"], stride=2), 0)
    ref = conv2d_naive(x, params["roi_heads.mask_predictor.mask_fcn_logits.weight"],
                       params["roi_heads.mask_predictor.mask_fcn_logits.bias"])
    assert logits.shape == (2, 3, 10, 10)
    np.testing.assert_allclose(logits, ref, rtol=1e-10, atol=1e-12)


def test_mask_head_gradients():
    rng = np.random.default_rng(2)
    params = _tiny_mask_head(rng, random_biases=True)
    pooled = rng.standard_normal((2, 2, 4, 4))
    logits, cache = mask_head_forward(params, pooled)
    dout = rng.standard_normal(logits.shape)
    grads, dpooled = mask_head_backward(dout, cache)

    def f():
        return mask_head_forward(params, pooled)[0]

    assert relative_error(dpooled, numeric_gradient(f, pooled, dout)) < 1e-6
    for k in mask_head_keys(params):
        assert relative_error(grads[k], numeric_gradient(f, params[k], dout)) < 1e-6, k


def test_mask_head_inference_path_equals_the_forward():
    # _mask_head_infer (predict's path: no caches, the convs on one padded grid of all RoIs, the
    # predictor at 14 x 14 tap by tap) gives mask_head_forward's logits up to rounding
    from mrcnn_np.roi_heads import _mask_head_infer
    rng = np.random.default_rng(3)
    for dtype, tol in ((np.float64, 1e-12), (np.float32, 2e-5)):
        params = init_mask_head(6, layers=(5, 7), dim_reduced=4, num_classes=3, rng=rng, dtype=dtype)
        for r in (0, 1, 9):
            pooled = rng.standard_normal((r, 6, 14, 14)).astype(dtype)
            want, _ = mask_head_forward(params, pooled)
            got = _mask_head_infer(params, pooled)
            assert got.shape == want.shape == (r, 3, 28, 28) and got.dtype == dtype
            np.testing.assert_allclose(got, want, rtol=tol, atol=tol * max(1.0, np.abs(want).max(initial=0)))


def test_mask_head_default_shapes_and_empty():
    rng = np.random.default_rng(3)
    params = init_mask_head(8, (8, 8, 8, 8), 8, 4, rng=rng, dtype=F64)
    logits, cache = mask_head_forward(params, rng.standard_normal((1, 8, 14, 14)))
    assert logits.shape == (1, 4, 28, 28)
    logits, cache = mask_head_forward(params, np.zeros((0, 8, 14, 14)))
    assert logits.shape == (0, 4, 28, 28)
    grads, dpooled = mask_head_backward(logits, cache)
    assert dpooled.shape == (0, 8, 14, 14)
    assert set(grads) == set(params) and all(np.all(g == 0) for g in grads.values())


def test_mask_head_bad_inputs():
    rng = np.random.default_rng(4)
    params = _tiny_mask_head(rng)
    with pytest.raises(ValueError, match="pooled"):
        mask_head_forward(params, np.zeros((1, 5, 4, 4)))
    with pytest.raises(TypeError, match="dtype"):
        mask_head_forward(params, np.zeros((1, 2, 4, 4), np.float32))
    with pytest.raises(ValueError, match="params"):
        mask_head_forward({}, np.zeros((1, 2, 4, 4)))
    _, cache = mask_head_forward(params, np.ones((1, 2, 4, 4)))
    with pytest.raises(ValueError, match="dmask_logits"):
        mask_head_backward(np.zeros((1, 3, 4, 4)), cache)
    with pytest.raises(TypeError, match="dmask_logits"):
        mask_head_backward(np.zeros((1, 3, 8, 8), np.float32), cache)
    # the cache is named all the way down: one (conv, relu) record per 3x3 layer
    assert len(cache.convs) == 2 and all(c._fields == ("conv", "relu") for c in cache.convs)


# =========================================================================== mask targets
def test_mask_target_of_covering_mask_is_all_ones():
    # aligned=False puts pixel j's value at coordinate j; a box's samples then
    # read pixels up to x2 (inclusive). A mask of ones over the box plus one
    # pixel on the right/bottom covers every sample: the target is exactly 1.
    gm = np.zeros((1, 40, 50), bool)
    gm[0, 6:19, 9:23] = True               # rows 6..18, columns 9..22
    box = np.array([[9.0, 6.0, 22.0, 18.0]])
    t = project_masks_on_boxes(gm, box, np.array([0]), 28)
    assert t.shape == (1, 28, 28) and t.dtype == F64
    np.testing.assert_allclose(t, 1.0, atol=1e-12)


def test_mask_target_soft_edge_golden():
    # shapes convention: a square on columns 10..19 has box x1 = 10, x2 = 20.
    # Box width 10, 28 bins: bin width 10/28, adaptive sampling ceil(10/28) = 1
    # sample per bin at x = 10 + (j + 0.5) * 10/28. Last bin j = 27:
    # x = 10 + 27.5 * 10/28 = 19.821..., between pixel 19 (1) and 20 (0) ->
    # 1 - 0.821... = 0.1786. j = 26: x = 19.464 -> 0.5357; j = 25: 19.107 -> 0.8929;
    # j = 24: 18.75 -> pixels 18 and 19, both 1 -> 1.
    gm = np.zeros((1, 30, 30), bool)
    gm[0, 5:15, 10:20] = True
    t = project_masks_on_boxes(gm, np.array([[10.0, 5.0, 20.0, 15.0]]), np.array([0]), 28)
    expect_last = [1.0] + [1 - (10 + (j + 0.5) * 10 / 28 - 19) for j in (25, 26, 27)]
    np.testing.assert_allclose(t[0, 3, 24:], expect_last, rtol=1e-12)
    np.testing.assert_allclose(t[0, 24:, 3], expect_last, rtol=1e-12)   # same along y
    np.testing.assert_allclose(t[0, :24, :24], 1.0, atol=1e-12)


def test_mask_targets_follow_matched_idxs():
    gm = np.zeros((2, 20, 20), np.float32)
    gm[0] = 1.0                              # GT 0: everything
    # GT 1: nothing
    boxes = np.array([[2.0, 2.0, 10.0, 10.0]] * 3)
    t = project_masks_on_boxes(gm, boxes, np.array([1, 0, 1]), 7)
    assert np.all(t[0] == 0) and np.all(t[2] == 0)
    np.testing.assert_allclose(t[1], 1.0, atol=1e-12)
    assert project_masks_on_boxes(gm, np.zeros((0, 4)), np.zeros(0, np.int64), 28).shape == (0, 28, 28)
    with pytest.raises(ValueError, match="matched_idxs"):
        project_masks_on_boxes(gm, boxes, np.array([0, 2, 1]), 7)
    with pytest.raises(ValueError, match="gt_masks"):
        project_masks_on_boxes(gm[0], boxes, np.array([0, 1, 1]), 7)


# =========================================================================== maskrcnn_loss
def test_mask_targets_of_several_images_pooled_together_are_bit_identical():
    # _maskrcnn_loss pools the images whose masks share a size (and RoIAlign form) in one
    # RoIAlign; each target must be exactly project_masks_on_boxes of its own image
    from mrcnn_np.roi_heads import _project_masks_per_image
    rng = np.random.default_rng(12)
    sizes = [(40, 48), (40, 48), (33, 20), (40, 48), (40, 48)]
    for dtype in (np.float32, np.float64):
        masks, boxes, idxs = [], [], []
        for i, (h, w) in enumerate(sizes):
            g = int(rng.integers(1, 4))
            masks.append(rng.random((g, h, w)) > 0.5 if i % 2 else rng.random((g, h, w)))
            p = 0 if i == 1 else int(rng.integers(1, 6))  # image 1 has no positive RoI
            xy = rng.uniform(-5, [w, h], (p, 2))
            boxes.append(np.concatenate([xy, xy + rng.uniform(0.5, 30, (p, 2))], axis=1).astype(dtype))
            idxs.append(rng.integers(0, g, p))
        got = _project_masks_per_image(masks, boxes, idxs, 28)
        for gm, b, idx, t in zip(masks, boxes, idxs, got):
            want = project_masks_on_boxes(gm, b, idx, 28)
            assert t.dtype == want.dtype == dtype and np.array_equal(t, want)


def test_maskrcnn_loss_golden_and_zero_gradient_elsewhere():
    # all logits 0 -> BCE = log 2 per pixel whatever the (soft) target -> mean log 2.
    # gradient on the GT channel = (sigmoid(0) - t) / (P * M * M); other channels exactly 0.
    gm = np.zeros((2, 20, 20), bool)
    gm[1] = True
    logits = np.zeros((2, 4, 6, 6))
    props = [np.array([[2.0, 2.0, 8.0, 8.0], [1.0, 3.0, 9.0, 9.0]])]
    loss, d = maskrcnn_loss(logits, props, [gm], [np.array([3, 2])], [np.array([1, 0])])
    assert loss == pytest.approx(math.log(2), rel=1e-14)
    # RoI 0 -> GT 1 (all ones), label 2: d = (0.5 - 1) / 72; RoI 1 -> GT 0 (zeros), label 3: 0.5 / 72
    np.testing.assert_allclose(d[0, 2], -0.5 / 72, rtol=1e-12)
    np.testing.assert_allclose(d[1, 3], 0.5 / 72, rtol=1e-12)
    mask = np.ones(d.shape, bool)
    mask[0, 2] = mask[1, 3] = False
    assert np.all(d[mask] == 0)


def test_maskrcnn_loss_gradient_two_images():
    rng = np.random.default_rng(5)
    gm0 = rng.uniform(size=(2, 16, 16)) > 0.5
    gm1 = rng.uniform(size=(1, 12, 18)) > 0.3
    props = [np.array([[1.3, 2.1, 9.7, 11.2], [0.4, 0.6, 14.2, 13.9]]), np.array([[2.2, 1.7, 15.1, 10.3]])]
    idxs = [np.array([1, 0]), np.array([0])]
    labels = [np.array([1, 2]), np.array([2])]
    logits = rng.standard_normal((3, 3, 5, 5))
    loss, d = maskrcnn_loss(logits, props, [gm0, gm1], labels, idxs)
    num = numeric_gradient(lambda: maskrcnn_loss(logits, props, [gm0, gm1], labels, idxs)[0], logits)
    assert relative_error(d, num) < 1e-6
    # and equal to an explicit formula with targets from project_masks_on_boxes
    t = np.concatenate([project_masks_on_boxes(gm0, props[0], idxs[0], 5),
                        project_masks_on_boxes(gm1, props[1], idxs[1], 5)])
    sel = logits[np.arange(3), [2, 1, 2]]   # labels: gm0[1] -> 2, gm0[0] -> 1, gm1[0] -> 2
    ref = np.mean(np.logaddexp(0, sel) - sel * t)
    assert loss == pytest.approx(ref, rel=1e-12)


def test_maskrcnn_loss_no_positives():
    logits = np.zeros((0, 4, 28, 28))
    loss, d = maskrcnn_loss(logits, [np.zeros((0, 4))], [np.zeros((0, 10, 10), bool)], [np.zeros(0, np.int64)],
                            [np.zeros(0, np.int64)])
    assert loss == 0 and d.shape == (0, 4, 28, 28)


@pytest.mark.parametrize("kw, match", [
    (dict(mask_logits=np.zeros((2, 3, 6, 5))), "mask_logits"),
    (dict(mask_logits=np.zeros((3, 3, 6, 6))), "mask_logits"),
    (dict(gt_labels=[np.array([5])]), "gt_labels"),
    (dict(mask_matched_idxs=[np.array([0, 1])]), "mask_matched_idxs"),
    (dict(proposals=np.zeros((2, 4))), "proposals"),
    (dict(gt_masks=[]), "gt_masks"),
    (dict(mask_logits=np.full((2, 3, 6, 6), np.nan)), "finite"),
])
def test_maskrcnn_loss_bad_inputs(kw, match):
    args = dict(mask_logits=np.zeros((2, 3, 6, 6)), proposals=[np.array([[0, 0, 4, 4.0]] * 2)],
                gt_masks=[np.ones((1, 8, 8), bool)], gt_labels=[np.array([1])],
                mask_matched_idxs=[np.array([0, 0])])
    args.update(kw)
    with pytest.raises((ValueError, TypeError), match=match):
        maskrcnn_loss(args["mask_logits"], args["proposals"], args["gt_masks"], args["gt_labels"],
                      args["mask_matched_idxs"])


# =========================================================================== maskrcnn_inference
def test_maskrcnn_inference_picks_predicted_class():
    x = np.zeros((3, 4, 2, 2))
    x[0, 2] = 2.0
    x[1, 1] = -1.0
    x[2, 3] = 0.5
    probs = maskrcnn_inference(x, [np.array([2, 1]), np.array([3])])
    assert [p.shape for p in probs] == [(2, 2, 2), (1, 2, 2)]
    np.testing.assert_allclose(probs[0][0], 1 / (1 + math.exp(-2)))
    np.testing.assert_allclose(probs[0][1], 1 / (1 + math.exp(1)))
    np.testing.assert_allclose(probs[1][0], 1 / (1 + math.exp(-0.5)))
    assert maskrcnn_inference(np.zeros((0, 4, 2, 2)), [np.zeros(0, np.int64)])[0].shape == (0, 2, 2)
    with pytest.raises(ValueError, match="labels"):
        maskrcnn_inference(x, [np.array([2, 1])])


# =========================================================================== paste_masks_in_image
def test_paste_all_ones_fills_integer_box():
    # box (10, 20, 38, 48), a 28 x 28 mask of ones, padding 1:
    #   padded mask 30 x 30 (a ring of zeros), scale 30/28;
    #   half width 14 -> 15; centre (24, 34) -> expanded box (9, 19, 39, 49), already integers;
    #   resize 30 -> 39 - 9 + 1 = 31 pixels: output t reads src = (t + 0.5) * 30/31 - 0.5
    #     t = 0  -> src < 0 -> 0 -> padded[0] = 0          (pixel 9: 0)
    #     t = 1  -> src = 0.9516 -> 0.0484*0 + 0.9516*1     (pixel 10: 0.9516)
    #     t = 2..28 -> src in [1.92, 27.08], between ones   (pixels 11..37: 1)
    #     t = 29 -> src = 28.048 -> 0.952*1 + 0.048*0       (pixel 38: 0.9516)
    #     t = 30 -> src = 29.016 -> padded[29] = 0          (pixel 39: 0)
    # So thresholded at 0.5 it fills exactly pixels x1..x2 = 10..38 inclusive
    # (torchvision's "+1" pixel convention in pasting), rows 20..48.
    out = paste_masks_in_image(np.ones((1, 28, 28)), np.array([[10.0, 20.0, 38.0, 48.0]]), (60, 70))
    assert out.shape == (1, 60, 70) and out.dtype == F64
    edge = 1.5 * 30 / 31 - 0.5  # t = 1: src = 0.9516 = the weight of padded[1] (= 1)
    assert edge == pytest.approx(0.9516129, rel=1e-6)
    expected = np.zeros((60, 70))
    expected[20:49, 10:39] = 1.0
    np.testing.assert_array_equal(out[0] > 0.5, expected > 0)
    np.testing.assert_allclose(out[0, 21:48, 11:38], 1.0, rtol=1e-12)
    np.testing.assert_allclose(out[0, 30, 10], edge, rtol=1e-12)
    np.testing.assert_allclose(out[0, 30, 38], edge, rtol=1e-12)
    np.testing.assert_allclose(out[0, 20, 10], edge * edge, rtol=1e-12)


def test_expand_boxes_golden():
    np.testing.assert_allclose(expand_boxes(np.array([[10.0, 20.0, 38.0, 48.0]]), 30 / 28),
                               [[9, 19, 39, 49]], rtol=1e-12)


def _random_paste_case(rng, d, m, h, w):
    masks = rng.uniform(size=(d, m, m))
    xy = rng.uniform(-15, max(h, w) + 5, (d, 2))
    wh = rng.uniform(-2, 40, (d, 2))  # includes degenerate and inverted boxes
    return masks, np.concatenate([xy, xy + wh], axis=1)


def test_paste_fast_equals_naive_random():
    rng = np.random.default_rng(9)
    masks, boxes = _random_paste_case(rng, 40, 6, 37, 45)
    fast = paste_masks_in_image(masks, boxes, (37, 45))
    naive = paste_masks_in_image_naive(masks, boxes, (37, 45))
    np.testing.assert_allclose(fast, naive, rtol=1e-12, atol=1e-15)
    # float32 keeps its dtype and agrees to float32 precision
    f32 = paste_masks_in_image(masks.astype(np.float32), boxes.astype(np.float32), (37, 45))
    assert f32.dtype == np.float32
    np.testing.assert_allclose(f32, paste_masks_in_image_naive(
        masks.astype(np.float32), boxes.astype(np.float32), (37, 45)), atol=2e-6)


@settings(max_examples=25)
@given(seed=st.integers(0, 10_000), m=st.integers(1, 8), pad=st.integers(0, 2),
       h=st.integers(1, 30), w=st.integers(1, 30))
def test_paste_fast_equals_naive_property(seed, m, pad, h, w):
    rng = np.random.default_rng(seed)
    masks, boxes = _random_paste_case(rng, 5, m, h, w)
    np.testing.assert_allclose(paste_masks_in_image(masks, boxes, (h, w), padding=pad),
                               paste_masks_in_image_naive(masks, boxes, (h, w), padding=pad),
                               rtol=1e-12, atol=1e-15)


def test_paste_clips_at_image_border_and_outside():
    ones = np.ones((3, 28, 28))
    boxes = np.array([[-20.0, -20.0, 8.0, 8.0],       # partly outside: top-left corner only
                      [100.0, 100.0, 128.0, 128.0],   # completely outside (right / below)
                      [-60.0, -60.0, -32.0, -32.0]])  # completely outside (left / above)
    out = paste_masks_in_image(ones, boxes, (30, 30))
    # box 0: expanded (-21, -21, 9, 9) -> ones on pixels 0..7, edge 0.95 at 8, 0 at 9
    assert np.all(out[0, :8, :8] == 1.0) and np.all(out[0, 10:] == 0) and np.all(out[0, :, 10:] == 0)
    assert np.all(out[1] == 0) and np.all(out[2] == 0)


def test_paste_takes_torchvisions_channel_axis_as_its_twin():
    # torchvision's paste_masks_in_image takes (D, 1, M, M) and returns (D, 1, H, W)
    rng = np.random.default_rng(3)
    masks = rng.uniform(0, 1, (3, 6, 6))
    boxes = np.array([[1.0, 2.0, 9.5, 7.0], [0.0, 0.0, 4.0, 4.0], [3.0, 1.0, 5.0, 8.0]])
    for f in (paste_masks_in_image, paste_masks_in_image_naive):
        out = f(masks[:, None], boxes, (9, 11))
        assert out.shape == (3, 1, 9, 11)
        np.testing.assert_array_equal(out[:, 0], f(masks, boxes, (9, 11)))
    assert paste_masks_in_image(np.zeros((0, 1, 5, 5)), np.zeros((0, 4)), (4, 4)).shape == (0, 1, 4, 4)
    with pytest.raises(ValueError, match="masks"):
        paste_masks_in_image(masks[:, None].repeat(2, axis=1), boxes, (9, 11))  # (D, 2, M, M)
    with pytest.raises(ValueError, match="boxes must have coordinates of magnitude"):
        paste_masks_in_image(masks, boxes * 1e30, (9, 11))  # the grown box would not fit an int64


def test_paste_empty_and_bad_inputs():
    assert paste_masks_in_image(np.zeros((0, 28, 28)), np.zeros((0, 4)), (5, 7)).shape == (0, 5, 7)
    with pytest.raises(ValueError, match="masks"):
        paste_masks_in_image(np.zeros((1, 28, 27)), np.zeros((1, 4)), (5, 7))
    with pytest.raises(ValueError, match="boxes"):
        paste_masks_in_image(np.zeros((2, 28, 28)), np.zeros((1, 4)), (5, 7))
    with pytest.raises(ValueError, match="img_shape"):
        paste_masks_in_image(np.zeros((1, 28, 28)), np.zeros((1, 4)), (5,))
    with pytest.raises(ValueError, match="padding"):
        paste_masks_in_image(np.zeros((1, 28, 28)), np.zeros((1, 4)), (5, 7), padding=-1)
    with pytest.raises(TypeError, match="masks"):
        paste_masks_in_image(np.zeros((1, 28, 28), np.int64), np.zeros((1, 4)), (5, 7))
