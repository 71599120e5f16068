"""Tests of mrcnn_np.config: presets equal their references, validation names the field."""
import dataclasses

import numpy as np
import pytest

from mrcnn_np.anchors import feature_grid_sizes
from mrcnn_np.config import (
    MaskRCNNConfig,
    matterport_config,
    shapes_config,
    torchvision_config,
)


def test_torchvision_preset_is_maskrcnn_resnet50_fpn_v1():
    # values typed from torchvision's MaskRCNN / FasterRCNN constructor defaults and
    # maskrcnn_resnet50_fpn (ResNet-50 = 3, 4, 6, 3 bottlenecks; trainable_backbone_layers=3)
    c = torchvision_config()
    assert c.num_classes == 91
    assert c.backbone_layers == (3, 4, 6, 3) and c.backbone_width == 64 and c.fpn_channels == 256
    assert c.trainable_layers == 3
    assert c.anchor_sizes == ((32,), (64,), (128,), (256,), (512,))
    assert c.aspect_ratios == ((0.5, 1.0, 2.0),) * 5
    assert (c.rpn_pre_nms_top_n_train, c.rpn_pre_nms_top_n_test) == (2000, 1000)
    assert (c.rpn_post_nms_top_n_train, c.rpn_post_nms_top_n_test) == (2000, 1000)
    assert (c.rpn_nms_thresh, c.rpn_fg_iou_thresh, c.rpn_bg_iou_thresh) == (0.7, 0.7, 0.3)
    assert (c.rpn_batch_size_per_image, c.rpn_positive_fraction, c.rpn_score_thresh) == (256, 0.5, 0.0)
    assert (c.box_fg_iou_thresh, c.box_bg_iou_thresh) == (0.5, 0.5)
    assert (c.box_batch_size_per_image, c.box_positive_fraction) == (512, 0.25)
    assert (c.box_score_thresh, c.box_nms_thresh, c.box_detections_per_img) == (0.05, 0.5, 100)
    assert c.bbox_reg_weights == (10.0, 10.0, 5.0, 5.0)
    assert (c.box_roi_output_size, c.box_roi_sampling_ratio) == (7, 2)
    assert (c.mask_roi_output_size, c.mask_roi_sampling_ratio) == (14, 2)
    assert c.representation_size == 1024
    assert c.mask_layers == (256, 256, 256, 256) and c.mask_dim_reduced == 256
    assert (c.min_size, c.max_size, c.size_divisible) == (800, 1333, 32)
    assert c.image_mean == (0.485, 0.456, 0.406) and c.image_std == (0.229, 0.224, 0.225)
    assert c.num_anchors_per_location == 3
    assert c.backbone_out_channels == (256, 512, 1024, 2048)
    assert torchvision_config(num_classes=5).num_classes == 5
    assert c == MaskRCNNConfig()


def test_shapes_preset_fits_the_shapes_data():
    c = shapes_config()
    assert c.num_classes == 4  # square, circle, triangle + background
    assert c.backbone_out_channels == (32, 64, 128, 256)
    assert c.trainable_layers == 5
    assert c.min_size == c.max_size == 128
    # 128x128 grids: 32, 16, 8, 4, 2 -> 6 * (1024 + 256 + 64 + 16 + 4) = 8184 anchors
    grids = feature_grid_sizes((128, 128), size_divisible=c.size_divisible)
    assert grids == [(32, 32), (16, 16), (8, 8), (4, 4), (2, 2)]
    assert c.num_anchors_per_location * sum(h * w for h, w in grids) == 8184
    # anchor sizes: 4x the stride of their level (4, 8, 16, 32, 64), and that times sqrt(2)
    assert [s[0] for s in c.anchor_sizes] == [4 * s for s in (4, 8, 16, 32, 64)]
    assert [s[1] for s in c.anchor_sizes] == [round(4 * s * 2 ** 0.5) for s in (4, 8, 16, 32, 64)]
    # at most 4 objects per image: the RoI sample may hold 8 positives
    assert int(c.box_batch_size_per_image * c.box_positive_fraction) == 8


def test_shapes_anchors_give_every_object_a_close_anchor():
    """The reason for the shapes anchors: square objects of 15..64 px anywhere in the
    image have an anchor at IoU >= 0.6 always and >= 0.7 (an RPN positive) mostly;
    with the old sizes 8..128 (one per octave, 2x the stride) most had none above 0.5."""
    from mrcnn_np.anchors import pyramid_anchors
    from mrcnn_np.boxes import box_iou

    grids = [(32, 32), (16, 16), (8, 8), (4, 4), (2, 2)]
    rng = np.random.default_rng(0)
    sides = rng.uniform(15, 64, 500)
    centres = rng.uniform(sides[:, None] / 2, 128 - sides[:, None] / 2, (500, 2))
    boxes = np.concatenate([centres - sides[:, None] / 2, centres + sides[:, None] / 2], axis=1)

    def best_iou(config):
        anchors = np.concatenate(pyramid_anchors((128, 128), grids, config.anchor_sizes, config.aspect_ratios,
                                                 dtype=np.float64))
        return box_iou(boxes, anchors).max(axis=1)

    new = best_iou(shapes_config())
    assert new.min() > 0.6 and np.mean(new >= 0.7) > 0.85
    old = best_iou(shapes_config().replace(anchor_sizes=((8,), (16,), (32,), (64,), (128,))))
    assert np.mean(old >= 0.7) < 0.2 and np.median(old) < 0.6


def test_matterport_preset_numbers():
    c = matterport_config()
    assert c.num_classes == 81 and c.backbone_layers == (3, 4, 23, 3)
    assert (c.box_batch_size_per_image, c.box_positive_fraction) == (200, 0.33)
    assert (c.box_score_thresh, c.box_nms_thresh) == (0.7, 0.3)
    # IMAGE_MIN_DIM = 800, IMAGE_MAX_DIM = 1024 (matterport's config.py), padding to a multiple of 2^6
    assert (c.min_size, c.max_size, c.size_divisible) == (800, 1024, 64)
    # x * 255 - 123.7 == (x - 123.7 / 255) / (1 / 255)
    x = 0.3
    assert (x - c.image_mean[0]) / c.image_std[0] == pytest.approx(x * 255 - 123.7)


def test_frozen_and_replace_revalidates():
    c = shapes_config()
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.num_classes = 3
    d = c.replace(num_classes=7)
    assert d.num_classes == 7 and c.num_classes == 4
    with pytest.raises(ValueError, match="num_classes"):
        c.replace(num_classes=1)


def test_lists_become_tuples_and_ints_stay_ints():
    c = MaskRCNNConfig(backbone_layers=[1, 1, 1, 1], anchor_sizes=[[8.0], [16], [32], [64], [128]],
                       aspect_ratios=[[1]] * 5, mask_layers=[8])
    assert c.backbone_layers == (1, 1, 1, 1)
    assert c.anchor_sizes == ((8,), (16,), (32,), (64,), (128,))
    assert isinstance(c.anchor_sizes[0][0], int)
    assert c.aspect_ratios == ((1.0,),) * 5 and c.num_anchors_per_location == 1
    assert c.mask_layers == (8,)
    hash(c)  # frozen and hashable: usable as a cache key


@pytest.mark.parametrize("field, value", [
    ("num_classes", 1),
    ("backbone_layers", (3, 4, 6)),
    ("backbone_layers", (3, 0, 6, 3)),
    ("backbone_width", 0),
    ("fpn_channels", -1),
    ("trainable_layers", 6),
    ("trainable_layers", -1),
    ("anchor_sizes", ((32,), (64,), (128,), (256,))),
    ("anchor_sizes", ((32,), (64,), (128,), (256,), (0,))),
    ("aspect_ratios", ((0.5, 1.0),) + ((0.5, 1.0, 2.0),) * 4),
    ("aspect_ratios", ((-1.0,),) * 5),
    ("rpn_nms_thresh", 1.5),
    ("rpn_bg_iou_thresh", 0.8),
    ("rpn_positive_fraction", -0.1),
    ("box_bg_iou_thresh", 0.6),
    ("box_positive_fraction", 2.0),
    ("rpn_pre_nms_top_n_train", 0),
    ("box_detections_per_img", -1),
    ("bbox_reg_weights", (10.0, 10.0, 5.0)),
    ("bbox_reg_weights", (10.0, 10.0, 5.0, 0.0)),
    ("mask_layers", ()),
    ("image_std", (0.2, 0.2, 0.0)),
    ("image_mean", (0.5, 0.5)),
    ("max_size", 700),
    ("box_score_thresh", float("nan")),
])
def test_bad_values_raise_value_error_naming_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        MaskRCNNConfig(**{field: value})


@pytest.mark.parametrize("field, value", [
    ("num_classes", 3.0),
    ("num_classes", True),
    ("backbone_layers", "3463"),
    ("rpn_nms_thresh", "0.7"),
    ("box_roi_sampling_ratio", 2.5),
])
def test_bad_types_raise_type_error_naming_the_field(field, value):
    with pytest.raises(TypeError, match=field):
        MaskRCNNConfig(**{field: value})


def test_default_normalisation_is_imagenet_statistics():
    c = MaskRCNNConfig()
    assert c.image_mean == (0.485, 0.456, 0.406) and c.image_std == (0.229, 0.224, 0.225)
