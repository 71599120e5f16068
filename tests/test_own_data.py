"""config.own_data_config / own_data_recipe, and train --coco's choice of them."""
import numpy as np
import pytest

from mrcnn_np.config import own_data_config, own_data_recipe, torchvision_config
from mrcnn_np.model import init_params


def test_own_data_config_numbers():
    c = own_data_config(5)
    assert c.num_classes == 5 and (c.min_size, c.max_size) == (256, 384)
    assert c.backbone_layers == (2, 2, 2, 2) and c.backbone_width == 16 and c.trainable_layers == 5
    assert c.backbone_out_channels == (64, 128, 256, 512)  # ResNet-18's stage widths
    assert c.fpn_channels == 64 and c.anchor_sizes == ((16,), (32,), (64,), (128,), (256,))
    assert (c.rpn_pre_nms_top_n_train, c.rpn_post_nms_top_n_train) == (1000, 500)
    assert (c.rpn_pre_nms_top_n_test, c.rpn_post_nms_top_n_test) == (500, 300)
    assert (c.box_batch_size_per_image, c.box_positive_fraction) == (128, 0.25)
    assert c.representation_size == 256 and c.mask_layers == (64,) * 4 and c.mask_dim_reduced == 64
    # what stays the reference's
    ref = torchvision_config()
    for name in ("rpn_nms_thresh", "rpn_fg_iou_thresh", "rpn_bg_iou_thresh", "rpn_batch_size_per_image",
                 "box_score_thresh", "box_nms_thresh", "box_detections_per_img", "bbox_reg_weights",
                 "box_roi_output_size", "mask_roi_output_size", "image_mean", "image_std", "size_divisible"):
        assert getattr(c, name) == getattr(ref, name), name
    c = own_data_config(3, min_size=320, max_size=480)
    assert (c.min_size, c.max_size) == (320, 480)
    with pytest.raises(ValueError, match="num_classes"):
        own_data_config(1)
    with pytest.raises(ValueError, match="max_size"):
        own_data_config(3, min_size=500, max_size=400)


def test_the_pretrained_variant_has_torchvisions_resnet50_body():
    """So that an ImageNet resnet50 .pth (load_resnet_backbone) fits it key for key."""
    c = own_data_config(4, pretrained_backbone=True)
    assert c.backbone_layers == (3, 4, 6, 3) and c.backbone_width == 64 and c.trainable_layers == 3
    ours = init_params(c, rng=np.random.default_rng(0), dtype=np.float16)
    ref = init_params(torchvision_config(4), rng=np.random.default_rng(0), dtype=np.float16)
    body = {k: v.shape for k, v in ref.items() if k.startswith("backbone.body.")}
    assert body and {k: v.shape for k, v in ours.items() if k.startswith("backbone.body.")} == body


def test_own_data_recipe():
    r, p = own_data_recipe(), own_data_recipe(pretrained_backbone=True)
    assert r == {"steps": 1500, "batch_size": 2, "base_lr": 0.01, "warmup_iters": 100, "milestones": (0.8,),
                 "weight_decay": 1e-4, "hflip_prob": 0.5, "workers": 2}
    assert p == dict(r, base_lr=0.005)


def test_train_coco_with_backbone_weights_builds_the_resnet50_variant(tmp_path, monkeypatch):
    import mrcnn_np.__main__ as cli
    from mrcnn_np.data.coco import write_coco_dataset
    from mrcnn_np.data.shapes import CLASS_NAMES, ShapesDataset

    ann = write_coco_dataset(ShapesDataset(2, seed=0), tmp_path, category_names=CLASS_NAMES[1:])
    seen = {}

    class Loaded(Exception):
        pass

    def fake_load(path, params):  # stands in for reading resnet50.pth; stops before training
        seen.update(path=path, layer3=sum(k.startswith("backbone.body.layer3.") and k.endswith("conv1.weight")
                                           for k in params))
        raise Loaded

    monkeypatch.setattr(cli, "load_resnet_backbone", fake_load)
    with pytest.raises(Loaded):
        cli.main(["train", "--coco", str(ann), "--backbone-weights", "r50.pth", "--checkpoint",
                  str(tmp_path / "m.npz")])
    assert seen == {"path": "r50.pth", "layer3": 6}  # ResNet-50: six blocks in layer3
    assert not (tmp_path / "m.npz").exists()
