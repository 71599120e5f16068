"""One semantic test per row of DESIGN.md's "Reference semantics" table.

Every expected value below is worked out by hand from the DESIGN statement
(the arithmetic is in the comments), never copied from running the code. Rows
that another test file already pins with a hand-computed golden value are
not repeated here; the map below says which test does it.

Row -> tests that pin it (default suite, no torch)
--------------------------------------------------
transform       test_transform::test_normalize_by_hand (ImageNet mean/std),
                ::test_resized_sizes_by_hand, ::test_resize_500x300_boxes_by_hand,
                ::test_resize_image_linear_ramp (bilinear, align_corners=False),
                ::test_batch_images_padding_by_hand (zeros, multiple of 32),
                ::test_boxes_round_trip and ::test_postprocess_pastes_full_box_mask (outputs
                mapped back), ::test_size_rule_property; test_anchors::test_resize_and_padding_examples;
                here test_transform_sizes_short_side_800_long_side_1333_pad_32.
backbone        test_backbone::test_forward_matches_independent_reference (stride
                on the 3x3 conv, v1.5, frozen BN eps 1e-5),
                test_backbone::test_resnet50_shapes_1024_shape_only (C5 2048x32x32),
                test_backbone::test_strides_on_a_real_forward; here
                test_backbone_frozen_bn_default_eps_1e5_by_hand.
FPN             test_fpn::test_two_level_toy_by_hand, test_fpn::test_odd_sizes_nearest_merge
                (nearest floor(dst*in/out), P6 = P5[::2, ::2]),
                test_pool::test_p6_kernel1_stride2_is_subsampling,
                test_fpn::test_p6_gradient_lands_on_every_other_cell_of_p5.
anchors         test_anchors::test_base_anchors_size_32, ::test_base_anchors_other_sizes_and_rounding,
                ::test_grid_anchors_golden_order, ::test_counts_torchvision_800 (stride 800 // 13 = 61).
anchor count    test_anchors::test_counts_torchvision_800 (159,882), ::test_counts_1024_p2_p6 (261,888).
box coder       test_boxes::test_encode_golden, ::test_decode_golden_and_clamp; here
                test_box_coder_clamp_only_on_dw_dh_after_weights (and the weight constants).
RPN head        test_rpn::test_init_names_shapes_and_statistics (std 0.01, bias 0),
                ::test_head_forward_matches_independent_convolution; here
                test_rpn_head_shared_conv_relu_and_channel_layout_by_hand.
RPN targets     test_rpn::test_assign_targets_golden (0.7 exactly positive, 0.3 ignored,
                0.29 negative, GT's best anchor positive), test_matching::test_ties_of_a_gt_best_all_kept,
                test_rpn::test_sample_anchors_per_image_quotas (256, 128 positive).
RPN loss        test_rpn::test_loss_golden (BCE + smooth L1 beta 1/9, / S sampled incl. negatives),
                test_rpn::test_loss_normalised_by_batch_sample_count; here
                test_smooth_l1_beta_one_ninth_each_side_by_hand.
proposals       test_rpn::test_filter_proposals_golden (clip, 1e-3, NMS 0.7, top-k),
                ::test_filter_proposals_nms_is_per_level_and_topk_per_level, PROPOSAL_PRESETS in
                test_rpn (2000 / 1000).
level mapper    test_roi_align::test_level_mapper_golden; here
                test_level_mapper_eps_and_boundaries (the +1e-6 at a boundary, clamps, 100x60).
RoIAlign        test_roi_align::test_golden_arange_unaligned_and_aligned (aligned -0.5),
                ::test_golden_out_of_range_rules (x axis),
                ::test_unaligned_clamps_tiny_box_to_one_cell_aligned_does_not;
                here test_roi_align_y_out_of_range_rules_at_minus_one_and_H,
                test_roi_align_adaptive_grid_is_ceil_roi_over_pooled,
                test_roi_align_spatial_scale_then_clamp_to_one_cell,
                test_multiscale_default_sampling_ratio_is_2.
                The 7x7 / 14x14 sizes with sampling 2: test_config (torchvision preset) and
                tests/reference/test_model_torch.py (whole model against torchvision).
RoI targets     test_box_head::test_select_training_samples_golden (IoU 0.5 exactly -> fg, GT
                appended, (10,10,5,5) deltas), ::test_sampling_limits_and_reproducibility (512, 128).
box head        test_box_head::test_box_head_forward_matches_formula, ::test_init_box_head_names_shapes_and_bounds;
                here test_box_and_mask_head_default_sizes (1024, 91, 364: the defaults).
mask head       test_mask_head::test_mask_head_forward_equals_naive_chain,
                ::test_mask_target_soft_edge_golden (soft RoIAlign target),
                ::test_maskrcnn_loss_golden_and_zero_gradient_elsewhere (GT channel, mean over pixels);
                here test_mask_head_transposed_conv_relu_1x1_by_hand.
losses          test_box_head::test_fastrcnn_loss_golden (CE over K+1; smooth L1 1/9 on GT class
                deltas of positives / S sampled); test_losses::*; here
                test_smooth_l1_beta_one_ninth_each_side_by_hand.
post-processing test_box_head::test_postprocess_golden_single_roi (softmax, every class per RoI);
                here test_postprocess_score_strictly_above_0_05,
                test_postprocess_drops_boxes_below_1e_2_after_clipping,
                test_postprocess_nms_0_5_is_per_class_and_keeps_iou_equal_0_5,
                test_postprocess_keeps_top_100.
mask pasting    test_mask_head::test_paste_all_ones_fills_integer_box (pad, (M+2)/M, +1 box,
                bilinear), ::test_paste_clips_at_image_border_and_outside; here
                test_paste_truncates_expanded_box_toward_zero (negative and positive fractions).

All cases are tiny; the whole file runs in well under a second of compute.
"""
import math

import numpy as np
import pytest

from mrcnn_np.anchors import feature_grid_sizes, torchvision_resized_size
from mrcnn_np.boxes import DEFAULT_BBOX_XFORM_CLIP, decode_boxes
from mrcnn_np.ops.losses import smooth_l1
from mrcnn_np.ops.norm import frozen_batch_norm_forward
from mrcnn_np.roi_align import level_mapper, multiscale_roi_align_forward, roi_align_forward
from mrcnn_np.roi_heads import (
    BOX_CODER_WEIGHTS,
    init_box_head,
    init_mask_head,
    mask_head_forward,
    paste_masks_in_image,
    postprocess_detections,
)
from mrcnn_np.rpn import RPN_BOX_WEIGHTS, concat_box_prediction_layers_forward, rpn_head_forward


# =========================================================================== transform (sizes only)
def test_transform_sizes_short_side_800_long_side_1333_pad_32():
    # 600 x 1000: scale = min(800 / 600, 1333 / 1000) = min(1.3333, 1.333) = 1.333
    #   (the long side binds): 600 * 1.333 = 799.8 -> floor 799; 1000 * 1.333 = 1333.
    assert torchvision_resized_size((600, 1000)) == (799, 1333)
    # padded to multiples of 32: ceil(799 / 32) * 32 = 25 * 32 = 800, ceil(1333 / 32) * 32 = 42 * 32 = 1344
    # so P2 (stride 4) is 200 x 336 and P6 (stride 64) ceil(800/64) x ceil(1344/64) = 13 x 21.
    grids = feature_grid_sizes((799, 1333), size_divisible=32)
    assert grids[0] == (200, 336) and grids[4] == (13, 21)
    # the short side binds: 427 x 640 -> scale 800 / 427 = 1.87354; 640 * 1.87354 = 1199.06 -> 1199
    assert torchvision_resized_size((427, 640)) == (800, 1199)


# =========================================================================== backbone
def test_backbone_frozen_bn_default_eps_1e5_by_hand():
    # y = (x - mean) / sqrt(var + 1e-5) * w + b with w = 2, b = 0.5, mean = 1.
    x = np.array([1.0, 3.0]).reshape(1, 1, 1, 2)
    one = lambda v: np.array([v])  # noqa: E731
    # var = 0: the eps alone is the variance. x = 1 -> b = 0.5;
    # x = 3 -> 2 / sqrt(1e-5) * 2 + 0.5 = 2 * 316.22776601683796 * 2 + 0.5 = 1265.4110640673519
    out, _ = frozen_batch_norm_forward(x, one(2.0), one(0.5), one(1.0), one(0.0))
    np.testing.assert_allclose(out.ravel(), [0.5, 1265.4110640673519], rtol=1e-13)
    # var = 3e-5: var + eps = 4e-5, sqrt = 2 * sqrt(1e-5) -> x = 3: 1264.911... / 2 + 0.5 = 632.9555320336759
    # (eps = 0 would give 2 / sqrt(3e-5) * 2 + 0.5 = 730.79)
    out, _ = frozen_batch_norm_forward(x, one(2.0), one(0.5), one(1.0), one(3e-5))
    np.testing.assert_allclose(out.ravel(), [0.5, 632.9555320336759], rtol=1e-13)


# =========================================================================== box coder
def test_box_coder_clamp_only_on_dw_dh_after_weights():
    assert RPN_BOX_WEIGHTS == (1.0, 1.0, 1.0, 1.0)
    assert BOX_CODER_WEIGHTS == (10.0, 10.0, 5.0, 5.0)
    assert DEFAULT_BBOX_XFORM_CLIP == pytest.approx(math.log(62.5), rel=1e-15)  # log(1000 / 16) = 4.1352
    ref = np.array([[0.0, 0.0, 16.0, 16.0]])  # w = h = 16, centre (8, 8)
    # weights (10, 10, 5, 5): codes (30, -20, 20, 15) -> dx = 3, dy = -2, dw = 4, dh = 3,
    # all below the clip 4.1352: cx = 8 + 3 * 16 = 56, cy = 8 - 32 = -24,
    # w = 16 e^4 = 873.5704..., h = 16 e^3 = 321.3684...
    out = decode_boxes(np.array([[30.0, -20.0, 20.0, 15.0]]), ref, BOX_CODER_WEIGHTS)
    hw, hh = 8 * math.exp(4), 8 * math.exp(3)
    np.testing.assert_allclose(out, [[56 - hw, -24 - hh, 56 + hw, -24 + hh]], rtol=1e-14)
    # dx = 100 is NOT clamped (only dw, dh are): cx = 8 + 100 * 16 = 1608;
    # dh = 4.2 > 4.1352 is clamped: h = 16 * 62.5 = 1000; dw = 4.13 < clip: w = 16 e^4.13
    out = decode_boxes(np.array([[100.0, 0.0, 4.13, 4.2]]), ref, RPN_BOX_WEIGHTS)
    hw = 8 * math.exp(4.13)
    np.testing.assert_allclose(out, [[1608 - hw, 8 - 500, 1608 + hw, 8 + 500]], rtol=1e-13)


# =========================================================================== RPN head
def test_rpn_head_shared_conv_relu_and_channel_layout_by_hand():
    # C = 1 channel, A = 2 anchors. 3x3 conv of ones, bias -1; cls 1x1 weights (0.5, -1),
    # bias (0, 0.25); bbox 1x1 weights 0.1 * c for channel c = 0..7, bias 0.
    p = {
        "rpn.head.conv.0.0.weight": np.ones((1, 1, 3, 3)),
        "rpn.head.conv.0.0.bias": np.array([-1.0]),
        "rpn.head.cls_logits.weight": np.array([0.5, -1.0]).reshape(2, 1, 1, 1),
        "rpn.head.cls_logits.bias": np.array([0.0, 0.25]),
        "rpn.head.bbox_pred.weight": (0.1 * np.arange(8.0)).reshape(8, 1, 1, 1),
        "rpn.head.bbox_pred.bias": np.zeros(8),
    }
    lvl0 = np.array([[1.0, 2.0], [3.0, 4.0]]).reshape(1, 1, 2, 2)
    lvl1 = np.array([[-3.0]]).reshape(1, 1, 1, 1)
    (obj, deltas), _ = rpn_head_forward(p, [lvl0, lvl1])
    # level 0: on a 2x2 map every zero-padded 3x3 window holds all four cells:
    # 1 + 2 + 3 + 4 - 1 = 9, ReLU -> 9. objectness = (0.5 * 9, -9 + 0.25) = (4.5, -8.75)
    # (logits: no sigmoid in the head); deltas channel c = 0.1 c * 9 = 0.9 c.
    np.testing.assert_allclose(obj[0][0, :, 0, 0], [4.5, -8.75], rtol=1e-14)
    np.testing.assert_allclose(deltas[0][0, :, 1, 1], 0.9 * np.arange(8), rtol=1e-14)
    # level 1, the SAME weights: -3 - 1 = -4, ReLU -> 0, so only the biases remain.
    np.testing.assert_allclose(obj[1][0, :, 0, 0], [0.0, 0.25], rtol=0, atol=0)
    np.testing.assert_array_equal(deltas[1], 0.0)
    # anchor a's deltas are channels 4a .. 4a+3 (torchvision's view(N, A, 4, H, W)):
    # flattened anchor 1 of location 0 is (3.6, 4.5, 5.4, 6.3).
    (fo, fd), _ = concat_box_prediction_layers_forward(obj, deltas)
    np.testing.assert_allclose(fd[0, 1], [3.6, 4.5, 5.4, 6.3], rtol=1e-14)
    np.testing.assert_allclose(fo[0, :2], [4.5, -8.75], rtol=1e-14)
    assert fo.shape == (1, 2 * 2 * 2 + 1 * 1 * 2)


# =========================================================================== RPN loss / losses: smooth L1
def test_smooth_l1_beta_one_ninth_each_side_by_hand():
    # beta = 1/9: 0.5 d^2 / beta = 4.5 d^2 when |d| < 1/9, else |d| - 1/18.
    #   d = 0.1   (inside):  4.5 * 0.01 = 0.045,            gradient 0.1 * 9 = 0.9
    #   d = -0.1  (inside):  0.045,                          gradient -0.9
    #   d = 0.12  (outside): 0.12 - 0.0555... = 0.06444...,  gradient 1
    #   d = -0.5  (outside): 0.5 - 1/18 = 0.44444...,        gradient -1
    d = np.array([0.1, -0.1, 0.12, -0.5])
    loss, grad = smooth_l1(d, np.zeros(4), beta=1 / 9, reduction="none")
    np.testing.assert_allclose(loss, [0.045, 0.045, 0.12 - 1 / 18, 0.5 - 1 / 18], rtol=1e-13)
    np.testing.assert_allclose(grad, [0.9, -0.9, 1.0, -1.0], rtol=1e-13)
    # at |d| = beta both pieces give 1/18 (continuous): 4.5 / 81 = 1 / 18
    at, _ = smooth_l1(np.array([1 / 9]), np.zeros(1), beta=1 / 9, reduction="sum")
    assert at == pytest.approx(1 / 18, rel=1e-13)


# =========================================================================== level mapper
def _square(side):
    return np.array([[3.0, 5.0, 3.0 + side, 5.0 + side]])


def test_level_mapper_eps_and_boundaries():
    # k = floor(4 + log2(sqrt(area) / 224) + 1e-6), clamped to [2, 5]
    # side 448 (1 - 1e-7): log2 = 1 + log2(1 - 1e-7) = 1 - 1.44e-7; + 1e-6 -> 5.00000086 -> 5
    #   (without the eps it would be 4.99999986 -> 4)
    assert level_mapper(_square(448 * (1 - 1e-7)))[0] == 5
    # side 448 (1 - 1e-5): 1 - 1.44e-5 + 1e-6 -> 4.9999866 -> 4 (the eps is only 1e-6 wide)
    assert level_mapper(_square(448 * (1 - 1e-5)))[0] == 4
    # side 112 (1 - 3e-7): -1 - 4.3e-7 + 1e-6 -> 3.00000057 -> 3 ; 112 (1 - 3e-6): 2.9999967 -> 2
    assert level_mapper(_square(112 * (1 - 3e-7)))[0] == 3
    assert level_mapper(_square(112 * (1 - 3e-6)))[0] == 2
    # sqrt(area), not a side: 448 x 112 has sqrt(50176) = 224 -> exactly level 4
    assert level_mapper(np.array([[0.0, 0.0, 448.0, 112.0]]))[0] == 4
    # DESIGN's question "which FPN level does a 100x60 RoI go to?":
    # sqrt(6000) = 77.46; log2(77.46 / 224) = log2(0.3458) = -1.532 -> floor(2.468) = 2 (P2)
    assert level_mapper(np.array([[10.0, 20.0, 110.0, 80.0]]))[0] == 2
    # clamps: side 40 -> floor(4 - 2.485) = 1 -> 2 ; side 1000 -> floor(4 + 2.158) = 6 -> 5
    np.testing.assert_array_equal(level_mapper(np.concatenate([_square(40.0), _square(1000.0)])), [2, 5])


# =========================================================================== RoIAlign
# A 3 x 2 map (H = 3, W = 2), one bin, sampling_ratio 1: the single sample sits at the
# box centre (start + 0.5 * size); boxes 1 pixel tall / wide put it where we want.
FMAP = np.array([[1.0, 2.0], [4.0, 8.0], [16.0, 32.0]]).reshape(1, 1, 3, 2)


def _one_sample(x_c, y_c, fmap=FMAP, **kw):
    box = np.array([[0.0, x_c - 0.5, y_c - 0.5, x_c + 0.5, y_c + 0.5]])
    out, _ = roi_align_forward(fmap, box, 1, sampling_ratio=1, **kw)
    return out[0, 0, 0, 0]


def test_roi_align_y_out_of_range_rules_at_minus_one_and_H():
    tiny = 1.0 / 1024  # exact in binary, so the sample lands exactly where computed
    # x = 0.5 throughout: row r reads (FMAP[r, 0] + FMAP[r, 1]) / 2 = 1.5, 6, 24 for r = 0, 1, 2
    # y = -1 exactly: not < -1, so valid; y <= 0 -> 0 -> row 0 -> 1.5
    assert _one_sample(0.5, -1.0) == 1.5
    # y = -1 - 1/1024 < -1: zero
    assert _one_sample(0.5, -1.0 - tiny) == 0.0
    # y = -0.5 in (-1, 0]: treated as 0 -> 1.5
    assert _one_sample(0.5, -0.5) == 1.5
    # y = 1.75: 0.25 * row 1 + 0.75 * row 2 = 0.25 * 6 + 0.75 * 24 = 19.5
    assert _one_sample(0.5, 1.75) == pytest.approx(19.5, rel=1e-15)
    # y = 2.5: y_low = 2 >= H - 1 = 2 -> both neighbours row 2 -> 24
    assert _one_sample(0.5, 2.5) == 24.0
    # y = H = 3 exactly: not > H, so valid; clamped to the last row -> 24
    assert _one_sample(0.5, 3.0) == 24.0
    # y = 3 + 1/1024 > H: zero
    assert _one_sample(0.5, 3.0 + tiny) == 0.0
    # same along x (W = 2) at y = 0.5 (rows 0 and 1 half and half):
    # x = -1 -> column 0: (1 + 4) / 2 = 2.5 ; x = W = 2 -> column 1: (2 + 8) / 2 = 5 ; beyond -> 0
    assert _one_sample(-1.0, 0.5) == 2.5
    assert _one_sample(2.0, 0.5) == 5.0
    assert _one_sample(-1.0 - tiny, 0.5) == 0.0
    assert _one_sample(2.0 + tiny, 0.5) == 0.0
    # a zero sample still counts in the average: box y in [-3, 1], x in [0, 1], sampling 2:
    # y samples -3 + (0.5, 1.5) * 2 = -2 (zero) and 0 (row 0); x samples 0.25, 0.75 ->
    # row 0 gives 0.75 * 1 + 0.25 * 2 = 1.25 and 1.75. Mean of 4 = (0 + 0 + 1.25 + 1.75) / 4 = 0.75
    out, _ = roi_align_forward(FMAP, np.array([[0.0, 0.0, -3.0, 1.0, 1.0]]), 1, sampling_ratio=2)
    assert out[0, 0, 0, 0] == pytest.approx(0.75, rel=1e-15)


def test_roi_align_adaptive_grid_is_ceil_roi_over_pooled():
    # box (0, 0, 1.8, 2.6), 2 x 2 output, sampling_ratio 0 (and -1, the default):
    # bin = (2.6 / 2, 1.8 / 2) = (1.3, 0.9); grid = (ceil(1.3), ceil(0.9)) = (2, 1).
    # Bin (p=1, q=1): x = 0.9 + 0.45 = 1.35 -> x_low = 1 >= W - 1 -> column 1 = (2, 8, 32);
    #   y = 1.3 + (0.5, 1.5) * 0.65 = 1.625 and 2.275:
    #   1.625 -> 0.375 * 8 + 0.625 * 32 = 23 ; 2.275 -> y_low = 2 -> 32 ; mean 27.5.
    #   (One sample at the bin centre y = 1.95 would give 0.05 * 8 + 0.95 * 32 = 30.8.)
    # Bin (0, 0): x = 0.45 -> rows 1.45, 5.8, 23.2; y = 0.325, 0.975:
    #   0.675 * 1.45 + 0.325 * 5.8 = 2.86375 ; 0.025 * 1.45 + 0.975 * 5.8 = 5.69125 ; mean 4.2775
    # Bin (1, 0): y = 1.625 -> 0.375 * 5.8 + 0.625 * 23.2 = 16.675 ; 2.275 -> 23.2 ; mean 19.9375
    # Bin (0, 1): column 1, y = 0.325 -> 0.675 * 2 + 0.325 * 8 = 3.95 ; 0.975 -> 7.85 ; mean 5.9
    want = [[4.2775, 5.9], [19.9375, 27.5]]
    box = np.array([[0.0, 0.0, 0.0, 1.8, 2.6]])
    for sr in (0, -1):
        out, _ = roi_align_forward(FMAP, box, 2, sampling_ratio=sr)
        np.testing.assert_allclose(out[0, 0], want, rtol=1e-13)
    out, _ = roi_align_forward(FMAP, box, 2)  # defaults: sampling_ratio=-1, aligned=False
    np.testing.assert_allclose(out[0, 0], want, rtol=1e-13)


def test_roi_align_spatial_scale_then_clamp_to_one_cell():
    # image box (1, 1, 3, 3) at spatial_scale 0.5 is feature box (0.5, 0.5, 1.5, 1.5):
    # one sample at (1, 1) -> FMAP[1, 1] = 8. Unscaled, the sample would be (2, 2) -> 32.
    box = np.array([[0.0, 1.0, 1.0, 3.0, 3.0]])
    assert roi_align_forward(FMAP, box, 1, sampling_ratio=1, spatial_scale=0.5)[0][0, 0, 0, 0] == 8.0
    # image box (0.2, 0.4, 0.6, 0.9) -> feature (0.1, 0.2, 0.3, 0.45): 0.2 x 0.25 cells,
    # clamped (unaligned) to 1 x 1 AFTER scaling: start (y, x) = (0.2, 0.1), sampling 2 ->
    # y = 0.45, 0.95 ; x = 0.35, 0.85. Bilinear is affine in y and in x, so the mean over the
    # 2 x 2 grid is f(mean y, mean x) = f(0.7, 0.6) =
    # 0.3*0.4*1 + 0.3*0.6*2 + 0.7*0.4*4 + 0.7*0.6*8 = 0.12 + 0.36 + 1.12 + 3.36 = 4.96
    box = np.array([[0.0, 0.2, 0.4, 0.6, 0.9]])
    out, _ = roi_align_forward(FMAP, box, 1, sampling_ratio=2, spatial_scale=0.5)
    assert out[0, 0, 0, 0] == pytest.approx(4.96, rel=1e-13)


def test_multiscale_default_sampling_ratio_is_2():
    # The box and mask heads pool with sampling_ratio 2. A 224 x 224 box goes to level 4
    # (scale 1/16). There the box is 14 cells wide; with a 3 x 3 output the adaptive grid
    # would be ceil(14 / 3) = 5 samples per axis, so 2 and -1 give different numbers on a
    # non-linear map, and the default must equal the explicit 2.
    rng = np.random.default_rng(0)
    scales = (1 / 4, 1 / 8, 1 / 16, 1 / 32)
    feats = [rng.standard_normal((1, 1, int(256 * s), int(256 * s))) ** 2 for s in scales]
    boxes = np.array([[0.0, 13.0, 17.0, 237.0, 241.0]])
    out, _ = multiscale_roi_align_forward(feats, boxes, 3, scales=scales)
    two, _ = roi_align_forward(feats[2], boxes, 3, spatial_scale=1 / 16, sampling_ratio=2)
    adaptive, _ = roi_align_forward(feats[2], boxes, 3, spatial_scale=1 / 16, sampling_ratio=-1)
    np.testing.assert_allclose(out, two, rtol=1e-13)
    assert np.abs(out - adaptive).max() > 1e-3


# =========================================================================== box head, mask head
def test_box_and_mask_head_default_sizes():
    # box head: flatten 256 x 7 x 7 = 12544 -> fc6 1024 -> fc7 1024 -> cls_score K+1 = 91,
    # bbox_pred 4 (K+1) = 364 (COCO: 90 classes + background)
    box = {k.split(".", 2)[2]: v.shape for k, v in init_box_head(rng=np.random.default_rng(0)).items()}
    assert box["fc6.weight"] == (1024, 256 * 7 * 7) and box["fc7.weight"] == (1024, 1024)
    assert box["cls_score.weight"] == (91, 1024) and box["bbox_pred.weight"] == (364, 1024)
    # mask head: 4 x 3x3 conv 256 -> ConvTranspose 2x2 (in 256, out 256) -> 1x1 to 91
    mask = {k.split(".", 2)[2]: v.shape for k, v in init_mask_head(rng=np.random.default_rng(0)).items()}
    assert [mask[f"{i}.0.weight"] for i in range(4)] == [(256, 256, 3, 3)] * 4 and "4.0.weight" not in mask
    assert mask["conv5_mask.weight"] == (256, 256, 2, 2) and mask["mask_fcn_logits.weight"] == (91, 256, 1, 1)


def test_mask_head_transposed_conv_relu_1x1_by_hand():
    # one 3x3 layer (centre tap 1: identity), C = 1, K + 1 = 2; input row [2, -1].
    p = {
        "roi_heads.mask_head.0.0.weight": np.pad(np.ones((1, 1, 1, 1)), ((0, 0), (0, 0), (1, 1), (1, 1))),
        "roi_heads.mask_head.0.0.bias": np.zeros(1),
        "roi_heads.mask_predictor.conv5_mask.weight": np.array([[1.0, 2.0], [3.0, 4.0]]).reshape(1, 1, 2, 2),
        "roi_heads.mask_predictor.conv5_mask.bias": np.array([-1.0]),
        "roi_heads.mask_predictor.mask_fcn_logits.weight": np.array([1.0, -1.0]).reshape(2, 1, 1, 1),
        "roi_heads.mask_predictor.mask_fcn_logits.bias": np.array([0.0, 0.5]),
    }
    logits, _ = mask_head_forward(p, np.array([2.0, -1.0]).reshape(1, 1, 1, 2))
    # conv + ReLU: [2, 0]. Transposed 2x2 stride 2: cell j fills output block columns 2j, 2j+1
    # with x_j * w: [[2, 4, 0, 0], [6, 8, 0, 0]]; + bias -1 -> [[1, 3, -1, -1], [5, 7, -1, -1]];
    # ReLU -> [[1, 3, 0, 0], [5, 7, 0, 0]]. 1x1: class 0 = that, class 1 = 0.5 - that.
    t = np.array([[1.0, 3, 0, 0], [5, 7, 0, 0]])
    np.testing.assert_array_equal(logits[0, 0], t)
    np.testing.assert_array_equal(logits[0, 1], 0.5 - t)


# =========================================================================== post-processing
def test_postprocess_score_strictly_above_0_05():
    # K + 1 = 20 classes, all logits 0: softmax = 1 / 20 = 0.05 exactly for every class
    # (1/20 and the literal 0.05 are the same double). "score > 0.05" keeps none.
    props = [np.array([[10.0, 10.0, 30.0, 40.0]])]
    boxes, scores, labels = postprocess_detections(np.zeros((1, 20)), np.zeros((1, 80)), props, [(50, 50)])
    assert len(scores[0]) == 0
    # raise class 7's logit by 1e-9: its score becomes 1 / (1 + 19 e^-1e-9) > 1/20 (kept),
    # every other class 1 / (20 + 1e-9) < 1/20 (dropped).
    logits = np.zeros((1, 20))
    logits[0, 7] = 1e-9
    boxes, scores, labels = postprocess_detections(logits, np.zeros((1, 80)), props, [(50, 50)])
    np.testing.assert_array_equal(labels[0], [7])
    assert scores[0][0] > 0.05
    np.testing.assert_allclose(boxes[0], props[0], rtol=1e-14)  # zero deltas: the RoI itself


def test_postprocess_drops_boxes_below_1e_2_after_clipping():
    # image 50 wide. Zero deltas decode to the RoI; clipping x2 at 50 leaves
    #   RoI 0 (49.995, ...): width 50 - 49.995 = 0.005 < 0.01 -> dropped
    #   RoI 1 (49.98, ...):  width 0.02 >= 0.01 -> kept
    props = [np.array([[49.995, 10.0, 60.0, 30.0], [49.98, 10.0, 60.0, 30.0]])]
    logits = np.array([[0.0, 5.0], [0.0, 5.0]])
    boxes, _, _ = postprocess_detections(logits, np.zeros((2, 8)), props, [(40, 50)])
    np.testing.assert_allclose(boxes[0], [[49.98, 10.0, 50.0, 30.0]], rtol=1e-14)


def test_postprocess_nms_0_5_is_per_class_and_keeps_iou_equal_0_5():
    # K + 1 = 3. Each RoI has one class far above 0.05 (logit 10, 9, 8 or 7 vs 0, 0:
    # e^7 / (e^7 + 2) = 0.998 ; the others e^0 / (e^7 + 2) < 1e-3).
    #   A (0, 0, 10, 10) class 1, score s(10)
    #   B (0, 0, 10, 5)  class 1, s(9):  IoU(A, B) = 50 / 100 = 0.5, not > 0.5 -> kept
    #   C (0, 0, 10, 4)  class 1, s(8):  IoU(A, C) = 0.4 but IoU(B, C) = 40 / 50 = 0.8 -> removed
    #   D (0, 0, 10, 10) class 2, s(7):  the same box as A, another class -> kept
    props = [np.array([[0.0, 0, 10, 10], [0.0, 0, 10, 5], [0.0, 0, 10, 4], [0.0, 0, 10, 10]])]
    logits = np.array([[0.0, 10, 0], [0.0, 9, 0], [0.0, 8, 0], [0.0, 0, 7]])
    boxes, scores, labels = postprocess_detections(logits, np.zeros((4, 12)), props, [(20, 20)])
    np.testing.assert_array_equal(labels[0], [1, 1, 2])
    np.testing.assert_allclose(boxes[0], props[0][[0, 1, 3]], rtol=1e-14)
    s = lambda z: math.exp(z) / (math.exp(z) + 2)  # noqa: E731
    np.testing.assert_allclose(scores[0], [s(10), s(9), s(7)], rtol=1e-13)


def test_postprocess_keeps_top_100():
    # 101 disjoint RoIs (x = 10 i .. 10 i + 5), class 1 logit 5 + 0.01 i: every one survives
    # NMS, scores increase with i, so the 100 kept are i = 100 .. 1 and RoI 0 is dropped.
    i = np.arange(101.0)
    props = [np.stack([10 * i, np.zeros(101), 10 * i + 5, np.full(101, 5.0)], axis=1)]
    logits = np.stack([np.zeros(101), 5 + 0.01 * i], axis=1)
    boxes, scores, labels = postprocess_detections(logits, np.zeros((101, 8)), props, [(10, 1100)])
    assert len(scores[0]) == 100
    np.testing.assert_allclose(boxes[0][:, 0], 10 * np.arange(100, 0, -1), rtol=1e-14)


# =========================================================================== mask pasting
def test_paste_truncates_expanded_box_toward_zero():
    # M = 2, padding 1: padded mask 4 x 4 (zero ring), box grows by (M + 2) / M = 2.
    # Box (0.3, -0.2, 1.3, 0.8): centre (0.8, 0.3), half sides 0.5 * 2 = 1 ->
    #   x: -0.2 .. 1.8, y: -0.7 .. 1.3 -> truncation toward zero -> x 0 .. 1, y 0 .. 1
    #   (floor would give -1 .. 1). Box 2 x 2 pixels; resize 4 -> 2 (align_corners=False):
    #   src = (t + 0.5) * 2 - 0.5 = 0.5, 2.5 -> half of padded[0] (0) + half of padded[1] = m[0] / 2,
    #   and half of padded[2] = m[1] + half of padded[3] (0) = m[1] / 2. Both axes: out = m / 4.
    m = np.array([[[0.8, 0.4], [0.2, 1.0]]])
    out = paste_masks_in_image(m, np.array([[0.3, -0.2, 1.3, 0.8]]), (3, 4))
    want = np.zeros((3, 4))
    want[:2, :2] = [[0.2, 0.1], [0.05, 0.25]]
    np.testing.assert_allclose(out[0], want, rtol=1e-14, atol=1e-15)
    # Box (2.6, 1.4, 4.4, 3.0), ones mask: x: centre 3.5, half 0.9 * 2 = 1.8 -> 1.7 .. 5.3 -> 1 .. 5
    # (rounding would give 2 .. 5); y: centre 2.2, half 1.6 -> 0.6 .. 3.8 -> 0 .. 3.
    # Rows (4 of them, 4 -> 4): src = t -> padded rows (0, 1, 1, 0) -> image rows 1 and 2 are 1.
    # Columns (5, 4 -> 5): src = 0.8 t - 0.1 = (<0 -> 0), 0.7, 1.5, 2.3, 3.1 ->
    #   0, 0.7 * 1, 1, 0.7 * 1 + 0.3 * 0, padded[3] = 0 -> image columns 1..5 = (0, .7, 1, .7, 0).
    out = paste_masks_in_image(np.ones((1, 2, 2)), np.array([[2.6, 1.4, 4.4, 3.0]]), (6, 7))
    want = np.zeros((6, 7))
    want[1:3, 1:6] = [0.0, 0.7, 1.0, 0.7, 0.0]
    np.testing.assert_allclose(out[0], want, rtol=1e-12, atol=1e-12)
