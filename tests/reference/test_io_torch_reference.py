"""load_torch_state_dict against torch itself: files torch.save writes, read back tensor by tensor.

Skipped unless torch and torchvision are installed (venv /work/torchvenv):
    /work/torchvenv/bin/python -m pytest tests/reference/test_io_torch_reference.py
"""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")

from mrcnn_np.io import load_torch_state_dict  # noqa: E402

LAYOUTS = {"zip": True, "legacy": False}


def _numpy(t):
    t = t.detach()
    return (t.float() if t.dtype == torch.bfloat16 else t).numpy()


def _assert_equal(ours, state_dict):
    assert list(ours) == list(state_dict)
    for key, t in state_dict.items():
        want = _numpy(t)
        assert ours[key].dtype == want.dtype and ours[key].shape == want.shape, key
        np.testing.assert_array_equal(ours[key], want, err_msg=key)  # exact: the same bytes


@pytest.fixture(scope="module")
def maskrcnn_state_dict():
    torch.manual_seed(0)
    model = torchvision.models.detection.maskrcnn_resnet50_fpn(weights=None, weights_backbone=None)
    return model.state_dict()


@pytest.mark.parametrize("layout", LAYOUTS)
def test_random_maskrcnn_resnet50_fpn_loads_equal_to_its_state_dict(tmp_path, maskrcnn_state_dict, layout):
    path = tmp_path / f"maskrcnn_{layout}.pth"
    torch.save(maskrcnn_state_dict, path, _use_new_zipfile_serialization=LAYOUTS[layout])
    ours = load_torch_state_dict(path)
    _assert_equal(ours, maskrcnn_state_dict)
    # without pretrained weights torchvision builds the backbone with nn.BatchNorm2d: 0-d int64 counters
    assert ours["backbone.body.bn1.num_batches_tracked"].shape == ()
    assert len(ours) == len(maskrcnn_state_dict) > 300


@pytest.mark.parametrize("layout", LAYOUTS)
def test_parameters_views_and_every_dtype(tmp_path, layout):
    g = torch.Generator().manual_seed(1)
    base = torch.randn(6, 7, generator=g, dtype=torch.float64)
    sd = {
        "param": torch.nn.Parameter(torch.randn(4, 3, generator=g)),
        "base": base,
        "t": base.t(),
        "slice": base[2:5, 1:6:2],
        "diag": base.diagonal(),
        "expand": base[3, :1].expand(3, 5),
        "empty": base[:0, 2:4],
        "half": torch.randn(5, generator=g).half()[::2],
        "bf16": torch.randn(3, 4, generator=g).bfloat16().t(),
        "i64": torch.randint(-2 ** 62, 2 ** 62, (3,), generator=g),
        "i32": torch.randint(-2 ** 31, 2 ** 31 - 1, (2, 2), generator=g, dtype=torch.int32),
        "u8": torch.randint(0, 256, (4,), generator=g, dtype=torch.uint8)[1:],
        "bool": torch.rand(3, 3, generator=g) > 0.5,
        "scalar": torch.tensor(3.25),
    }
    path = tmp_path / "mixed.pth"
    torch.save(sd, path, _use_new_zipfile_serialization=LAYOUTS[layout])
    _assert_equal(load_torch_state_dict(path), sd)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_whole_module_pickle_is_refused(tmp_path, layout):
    path = tmp_path / "module.pth"
    torch.save(torch.nn.Linear(2, 3), path, _use_new_zipfile_serialization=LAYOUTS[layout])
    with pytest.raises(ValueError, match=r"module\.pth.*refusing the global torch\.nn\.modules\.linear\.Linear"):
        load_torch_state_dict(path)


def test_training_checkpoint_with_model_entry_is_unwrapped(tmp_path):
    model = torch.nn.Linear(2, 3)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.ones(1, 2)).sum().backward()
    opt.step()
    path = tmp_path / "ckpt.pth"
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": 4}, path)
    _assert_equal(load_torch_state_dict(path), model.state_dict())
