"""viz.architecture: the computed shapes are the model's, and the diagrams print them."""
import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from matplotlib.text import Text  # noqa: E402

from mrcnn_np import model  # noqa: E402
from mrcnn_np.anchors import feature_grid_sizes, num_anchors, torchvision_resized_size  # noqa: E402
from mrcnn_np.backbone import resnet_forward  # noqa: E402
from mrcnn_np.config import shapes_config, torchvision_config  # noqa: E402
from mrcnn_np.fpn import backbone_forward, init_resnet_fpn_backbone  # noqa: E402
from mrcnn_np.viz import architecture as va  # noqa: E402
from mrcnn_np.viz import common  # noqa: E402


def _texts(fig):
    return "\n".join(t.get_text() for t in fig.findobj(Text))


def test_shapes_model_forward_has_the_computed_shapes():
    # 100x150 -> resized to 85x128 (long side 128) -> padded to 96x128: resize and padding both matter
    config = shapes_config()
    s = va.architecture_shapes(config, (100, 150))
    assert s["resized"] == (1, 3, 85, 128) and s["batch"] == (1, 3, 96, 128)
    params = model.init_params(config, rng=np.random.default_rng(0))
    image = np.random.default_rng(1).uniform(0, 1, (3, 100, 150)).astype(np.float32)
    record = {}
    model._detect(params, [image], config, record)

    assert record["batch"].shape == s["batch"]
    feats, _ = resnet_forward(params, record["batch"])
    for k in range(2, 6):
        assert feats[f"C{k}"].shape == s[f"C{k}"]
    assert tuple(v[1] for k, v in s.items() if k in ("C2", "C3", "C4", "C5")) == config.backbone_out_channels
    for k in range(2, 7):
        assert record["pyramid"][k - 2].shape == s[f"P{k}"]  # the pyramid is the list [P2, .., P6]
        assert record["anchors"][k - 2].shape == s[f"anchors.P{k}"]
    assert record["objectness"].shape == s["objectness"]
    assert record["rpn_deltas"].shape == s["rpn_deltas"]
    # 444 candidates (128 per level, fewer on P5/P6) survive NMS in more than the 128 kept
    assert record["proposals"][0].shape == s["proposals"][1:]
    assert record["roi_features"].shape == s["box_roi_features"]
    assert params["roi_heads.box_head.fc6.weight"].shape[0] == s["box_fc6"][1]
    assert params["roi_heads.box_head.fc7.weight"].shape[0] == s["box_fc7"][1]
    assert record["class_logits"].shape == s["class_logits"]
    assert record["box_regression"].shape == s["box_regression"]
    for i in range(len(config.mask_layers)):
        assert params[f"roi_heads.mask_head.{i}.0.weight"].shape[0] == s[f"mask_conv{i + 1}"][1]
    assert params["roi_heads.mask_predictor.conv5_mask.weight"].shape[1] == s["mask_deconv"][1]
    E = record["mask_logits"].shape[0]
    assert E <= s["detections"][0]
    assert record["mask_logits"].shape[1:] == s["mask_logits"][1:]
    assert record["predictions"][0]["boxes"].shape[1:] == s["detections"][1:]


def test_torchvision_shapes_follow_the_anchor_arithmetic():
    config = torchvision_config()
    s = va.architecture_shapes(config, (1024, 1024))
    assert torchvision_resized_size((1024, 1024)) == (800, 800) == s["resized"][2:] == s["batch"][2:]
    grids = [s[f"P{k}"][2:] for k in range(2, 7)]
    assert grids == [(200, 200), (100, 100), (50, 50), (25, 25), (13, 13)]
    assert grids == feature_grid_sizes((800, 800), size_divisible=32)
    assert s["anchors"][0] == 159_882 == num_anchors((800, 800), size_divisible=32)
    assert [s[f"C{k}"][1] for k in range(2, 6)] == [256, 512, 1024, 2048]
    assert {s[f"P{k}"][1] for k in range(2, 7)} == {256}
    assert s["objectness.P2"] == (1, 3, 200, 200) and s["rpn_deltas.P6"] == (1, 12, 13, 13)
    assert s["proposals"] == (1, 1000, 4)
    assert s["box_roi_features"] == (1000, 256, 7, 7)
    assert s["class_logits"] == (1000, 91) and s["box_regression"] == (1000, 364)
    assert s["mask_roi_features"] == (100, 256, 14, 14)
    assert s["mask_conv4"] == (100, 256, 14, 14) and "mask_conv5" not in s
    assert s["mask_logits"] == (100, 91, 28, 28)


def test_torchvision_grids_match_a_real_resnet50_fpn_forward():
    # 480x640 -> 800x1066 -> padded 800x1088. The ResNet-50 layout at width 1 (spatial sizes
    # do not depend on the width) and a 2-channel FPN: a real forward in a fraction of a second.
    s = va.architecture_shapes(torchvision_config(), (480, 640))
    assert s["resized"][2:] == (800, 1066) and s["batch"][2:] == (800, 1088)
    params = init_resnet_fpn_backbone((3, 4, 6, 3), width=1, out_channels=2, rng=np.random.default_rng(0))
    pyramid, _ = backbone_forward(params, np.zeros(s["batch"], np.float32))
    for k in range(2, 7):
        assert pyramid[k - 2].shape[2:] == s[f"P{k}"][2:]
    assert s["P6"][2:] == (13, 17)
    assert feature_grid_sizes((800, 1066), size_divisible=32) == [s[f"P{k}"][2:] for k in range(2, 7)]


def test_proposals_are_capped_by_the_candidates():
    # a 64x64 image, min_size 64: P2..P6 hold 768, 192, 48, 12 and 3 anchors. With 20 kept per
    # level before NMS only 20 + 20 + 20 + 12 + 3 = 75 candidates exist, fewer than the 128 after NMS
    config = shapes_config().replace(min_size=64, max_size=64, rpn_pre_nms_top_n_test=20,
                                     anchor_sizes=((8,), (16,), (32,), (64,), (128,)))  # A = 3
    s = va.architecture_shapes(config, (64, 64))
    assert [s[f"anchors.P{k}"][0] for k in range(2, 7)] == [768, 192, 48, 12, 3]
    assert s["proposals"] == (1, 75, 4) and s["box_roi_features"][0] == 75
    assert va.architecture_shapes(shapes_config(), (64, 64))["proposals"] == (1, 128, 4)


@pytest.mark.parametrize("config, image_hw", [(torchvision_config(), (1024, 1024)), (shapes_config(), (128, 128))])
def test_diagrams_print_the_computed_shapes(config, image_hw):
    s = va.architecture_shapes(config, image_hw)
    t = va.shape_text
    fig = va.plot_overall_structure(config, image_hw)
    text = _texts(fig)
    for name in ("image", "resized", "batch", "C2", "C3", "C4", "C5", "P2", "P3", "P4", "P5", "P6"):
        assert t(s[name][1:]) in text, name
    for name in ("box_roi_features", "box_fc6", "class_logits", "box_regression", "detections",
                 "mask_roi_features", "mask_deconv", "mask_logits", "masks"):
        assert t(s[name]) in text, name
    assert f"{s['anchors'][0]:,}" in text and va.LEVEL_MAPPER in text
    plt.close(fig)

    fig = va.plot_fpn_schematic(config, image_hw)
    text = _texts(fig)
    for k in range(2, 7):
        assert t(s[f"P{k}"][1:]) in text
    for k in range(2, 6):
        assert t(s[f"C{k}"][1:]) in text and f"{s[f'C{k}'][1]} → {config.fpn_channels}" in text
    plt.close(fig)

    fig = va.plot_rpn_head(config, image_hw)
    text = _texts(fig)
    for k in range(2, 7):
        assert t(s[f"objectness.P{k}"][1:]) in text and t(s[f"rpn_deltas.P{k}"][1:]) in text
        assert f"{s[f'anchors.P{k}'][0]:,}" in text
    assert f"{s['anchors'][0]:,}" in text
    plt.close(fig)


def test_shape_text_and_errors():
    assert va.shape_text((256, 200, 200)) == "256×200×200"
    assert va.model_name(torchvision_config()) == "ResNet-50-FPN"
    assert va.model_name(shapes_config()) == "ResNet-14-FPN (width 8)"
    with pytest.raises(TypeError, match="config"):
        va.architecture_shapes({"num_classes": 91}, (800, 800))
    with pytest.raises(ValueError, match="image_hw"):
        va.architecture_shapes(torchvision_config(), 800)


def test_notebook_figures_leave_images_alone_unless_regenerating(monkeypatch, tmp_path):
    # save_figure inside a notebook kernel writes into images/ only under `python -m mrcnn_np figures`
    target = common.images_dir() / "no_such_figure.png"
    monkeypatch.setattr(common, "scratch_dir", lambda: tmp_path)
    monkeypatch.delenv(common.WRITE_FIGURES_ENV, raising=False)
    monkeypatch.delitem(__import__("sys").modules, "ipykernel", raising=False)
    assert common.figure_destination(target) == target                 # a script (demo) writes
    monkeypatch.setitem(__import__("sys").modules, "ipykernel", object())
    assert common.figure_destination(target) == tmp_path / target.name  # a notebook does not
    assert common.figure_destination(tmp_path / "mine.png") == tmp_path / "mine.png"
    fig = plt.figure(figsize=(1, 1))
    written = common.save_figure(fig, target)
    plt.close(fig)
    assert written == tmp_path / target.name and written.exists() and not target.exists()
    monkeypatch.setenv(common.WRITE_FIGURES_ENV, "1")
    assert common.figure_destination(target) == target
