"""mrcnn_np.pretrained: torchvision checkpoints mapped onto our parameters (no torch needed).

The file reader (``load_torch_state_dict``, tested in test_io_torch.py) is replaced
here by a stand-in returning a state dict built from ``init_params``, so these
tests check the mapping, the key and shape validation and the errors; the
reference tests load files torch wrote.
"""
import numpy as np
import pytest

from mrcnn_np import pretrained
from mrcnn_np.config import shapes_config, torchvision_config
from mrcnn_np.model import init_params
from mrcnn_np.pretrained import COCO_CATEGORY_NAMES, load_resnet_backbone, torchvision_model

FAKE = "fake.pth"


@pytest.fixture(scope="module")
def tv_params():
    return init_params(torchvision_config(), rng=np.random.default_rng(3))


def serve(monkeypatch, state):
    """Make pretrained's file reader return ``state`` for FAKE (a fresh dict each call)."""
    def fake_load(path):
        assert path == FAKE
        return dict(state)
    monkeypatch.setattr(pretrained, "load_torch_state_dict", fake_load)


def with_bn_counters(params):
    """As torchvision's nn.BatchNorm2d state dict: a 0-d int64 num_batches_tracked after each BN."""
    out = {}
    for k, v in params.items():
        out[k] = v
        if k.endswith("running_var"):
            out[k[: -len("running_var")] + "num_batches_tracked"] = np.array(7, dtype=np.int64)
    return out


# --------------------------------------------------------------------------- COCO names


def test_coco_names_index_is_the_coco_category_id():
    assert len(COCO_CATEGORY_NAMES) == 91 and COCO_CATEGORY_NAMES[0] == "__background__"
    # a few ids of COCO's instances_*.json categories: the label IS the id
    for cid, name in {1: "person", 3: "car", 13: "stop sign", 18: "dog", 44: "bottle", 59: "pizza",
                      62: "chair", 72: "tv", 90: "toothbrush"}.items():
        assert COCO_CATEGORY_NAMES[cid] == name
    # COCO 2017 uses 80 of the ids 1..90
    assert sum(n != "N/A" for n in COCO_CATEGORY_NAMES[1:]) == 80
    assert len(set(COCO_CATEGORY_NAMES) - {"N/A"}) == 81


# --------------------------------------------------------------------------- torchvision_model


def test_torchvision_state_dict_maps_onto_init_params(monkeypatch, tv_params):
    serve(monkeypatch, with_bn_counters(tv_params))
    params, config = torchvision_model(FAKE)
    assert config == torchvision_config()
    assert list(params) == list(tv_params)  # init_params order, counters dropped
    for k, v in tv_params.items():
        assert params[k].dtype == np.float32 and params[k].flags.c_contiguous
        np.testing.assert_array_equal(params[k], v)


def test_half_and_double_files_become_float32(monkeypatch, tv_params):
    state = dict(tv_params)
    state["rpn.head.conv.0.0.weight"] = tv_params["rpn.head.conv.0.0.weight"].astype(np.float16)
    # float64 values within half a float32 ulp of the float32 ones round back to them
    state["rpn.head.cls_logits.weight"] = tv_params["rpn.head.cls_logits.weight"].astype(np.float64) * (1 + 2.0 ** -30)
    serve(monkeypatch, state)
    params, _ = torchvision_model(FAKE)
    assert all(v.dtype == np.float32 for v in params.values())
    np.testing.assert_array_equal(params["rpn.head.conv.0.0.weight"], state["rpn.head.conv.0.0.weight"])
    assert not np.array_equal(state["rpn.head.cls_logits.weight"], tv_params["rpn.head.cls_logits.weight"])
    np.testing.assert_array_equal(params["rpn.head.cls_logits.weight"], tv_params["rpn.head.cls_logits.weight"])


def test_num_classes_is_read_from_the_box_predictor(monkeypatch):
    state = init_params(torchvision_config(num_classes=3), rng=np.random.default_rng(0))
    serve(monkeypatch, state)
    params, config = torchvision_model(FAKE)
    assert config == torchvision_config(num_classes=3)
    assert params["roi_heads.mask_predictor.mask_fcn_logits.weight"].shape == (3, 256, 1, 1)
    with pytest.raises(ValueError, match=r"fake\.pth: shapes do not fit a maskrcnn_resnet50_fpn state dict with "
                                         r"num_classes=91: 'roi_heads.box_predictor.cls_score.weight' is "
                                         r"\(3, 1024\) \(expected \(91, 1024\)\)"):
        torchvision_model(FAKE, num_classes=91)


def test_missing_and_unexpected_keys_are_listed(monkeypatch, tv_params):
    state = dict(tv_params)
    for k in list(state)[-5:]:
        del state[k]
    state["roi_heads.extra.weight"] = np.zeros(3, np.float32)
    serve(monkeypatch, state)
    with pytest.raises(ValueError, match=r"fake\.pth: not a maskrcnn_resnet50_fpn state dict with num_classes=91: "
                                         r"5 missing keys \('roi_heads\.mask_head\.3\.0\.bias', .* and 2 more\); "
                                         r"1 unexpected keys \('roi_heads\.extra\.weight'\)"):
        torchvision_model(FAKE)


def test_another_architecture_is_refused(monkeypatch):
    # the shapes model: 4 classes (read from its box predictor), one block per stage, width 8
    shapes = init_params(shapes_config(), rng=np.random.default_rng(0))
    serve(monkeypatch, shapes)
    expected = init_params(torchvision_config(4), rng=np.random.default_rng(0), dtype=np.float16)
    missing = len(set(expected) - set(shapes))  # ResNet-50's extra blocks and the wider heads' keys
    with pytest.raises(ValueError, match=r"fake\.pth: not a maskrcnn_resnet50_fpn state dict with num_classes=4: "
                                         rf"{missing} missing keys \('backbone\.body\.layer1\.1\.conv1\.weight'"):
        torchvision_model(FAKE)
    # same keys, other widths: the shapes are named
    state = init_params(torchvision_config().replace(backbone_width=32), rng=np.random.default_rng(0))
    serve(monkeypatch, state)
    with pytest.raises(ValueError, match=r"fake\.pth: shapes do not fit .*'backbone\.body\.conv1\.weight' is "
                                         r"\(32, 3, 7, 7\) \(expected \(64, 3, 7, 7\)\), .* and \d+ more"):
        torchvision_model(FAKE)


def test_non_float_or_non_finite_entries_are_refused(monkeypatch, tv_params):
    state = dict(tv_params, **{"rpn.head.cls_logits.bias": np.zeros(3, np.int64)})
    serve(monkeypatch, state)
    with pytest.raises(ValueError, match=r"fake\.pth: 'rpn\.head\.cls_logits\.bias' must be floating point, got "
                                         "dtype int64"):
        torchvision_model(FAKE)
    bad = tv_params["backbone.fpn.layer_blocks.2.0.bias"].copy()
    bad[5] = np.nan
    serve(monkeypatch, dict(tv_params, **{"backbone.fpn.layer_blocks.2.0.bias": bad}))
    with pytest.raises(ValueError, match=r"fake\.pth: 'backbone\.fpn\.layer_blocks\.2\.0\.bias' holds non-finite"):
        torchvision_model(FAKE)


def test_torchvision_model_on_a_real_file_that_is_not_a_model():
    # the whole path, reader included: torch's tiny fixture is a valid .pth but not a Mask R-CNN
    import os
    path = os.path.join(os.path.dirname(__file__), "data", "tiny_zip.pth")
    with pytest.raises(ValueError, match=r"tiny_zip\.pth: not a maskrcnn_resnet50_fpn state dict .*307 missing keys"):
        torchvision_model(path)


def test_path_and_num_classes_are_checked(monkeypatch, tv_params):
    with pytest.raises(TypeError, match="path must be a str or os.PathLike, got int"):
        torchvision_model(3)
    serve(monkeypatch, tv_params)
    with pytest.raises(ValueError, match="num_classes"):
        torchvision_model(FAKE, num_classes=1)


# --------------------------------------------------------------------------- load_resnet_backbone


def imagenet_file(params, seed=5):
    """An ImageNet ResNet state dict for params' backbone: no prefix, new values, counters and fc."""
    rng = np.random.default_rng(seed)
    state = {}
    for k, v in params.items():
        if k.startswith("backbone.body."):
            state[k[len("backbone.body."):]] = rng.standard_normal(v.shape).astype(np.float32)
            if k.endswith("running_var"):
                state[k[len("backbone.body."):-len("running_var")] + "num_batches_tracked"] = np.array(0)
    width = params["backbone.body.layer4.0.conv3.weight"].shape[0]
    state["fc.weight"] = rng.standard_normal((1000, width)).astype(np.float32)
    state["fc.bias"] = np.zeros(1000, np.float32)
    return state


def test_resnet_weights_go_into_backbone_body_only(monkeypatch):
    params = init_params(shapes_config(), rng=np.random.default_rng(0))
    before = {k: v.copy() for k, v in params.items()}
    state = imagenet_file(params)
    serve(monkeypatch, state)
    keys = load_resnet_backbone(FAKE, params)
    body = [k for k in before if k.startswith("backbone.body.")]
    assert sorted(keys) == sorted(body) and len(keys) == len(body)
    assert list(params) == list(before)  # nothing added (no fc, no counters), order kept
    for k in body:
        np.testing.assert_array_equal(params[k], state[k[len("backbone.body."):]])
        assert params[k].dtype == before[k].dtype
    for k in before:
        if not k.startswith("backbone.body."):
            assert params[k] is not None and np.array_equal(params[k], before[k]), k


def test_resnet_weights_keep_the_dtype_params_had(monkeypatch):
    params = init_params(shapes_config(), rng=np.random.default_rng(0), dtype=np.float64)
    serve(monkeypatch, imagenet_file(params))
    load_resnet_backbone(FAKE, params)
    assert {v.dtype for v in params.values()} == {np.dtype(np.float64)}


def test_resnet_of_another_width_is_refused_and_params_are_unchanged(monkeypatch):
    params = init_params(shapes_config(), rng=np.random.default_rng(0))
    other = init_params(shapes_config().replace(backbone_width=16), rng=np.random.default_rng(1))
    serve(monkeypatch, imagenet_file(other))
    before = {k: v.copy() for k, v in params.items()}
    with pytest.raises(ValueError, match=r"fake\.pth: shapes do not fit the ResNet of params' backbone\.body: "
                                         r"'backbone\.body\.conv1\.weight' is \(16, 3, 7, 7\) \(expected "
                                         r"\(8, 3, 7, 7\)\)"):
        load_resnet_backbone(FAKE, params)
    assert all(np.array_equal(params[k], before[k]) for k in before)


def test_resnet_of_another_depth_is_refused(monkeypatch):
    params = init_params(shapes_config(), rng=np.random.default_rng(0))
    deeper = init_params(shapes_config().replace(backbone_layers=(1, 2, 1, 1)), rng=np.random.default_rng(1))
    serve(monkeypatch, imagenet_file(deeper))
    with pytest.raises(ValueError, match=r"fake\.pth: not the ResNet of params' backbone\.body: 1[05] unexpected "
                                         r"keys \('backbone\.body\.layer2\.1\.conv1\.weight'"):
        load_resnet_backbone(FAKE, params)


def test_whole_model_file_is_pointed_to_torchvision_model(monkeypatch, tv_params):
    serve(monkeypatch, tv_params)
    params = init_params(shapes_config(), rng=np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"fake\.pth: holds a whole detection model .* torchvision_model"):
        load_resnet_backbone(FAKE, params)


def test_params_must_hold_a_backbone():
    with pytest.raises(TypeError, match="params must be a dict of arrays, got list"):
        load_resnet_backbone(FAKE, [])
    with pytest.raises(ValueError, match=r"params has no 'backbone\.body\.\*' keys"):
        load_resnet_backbone(FAKE, {"rpn.head.conv.0.0.weight": np.zeros(1)})
