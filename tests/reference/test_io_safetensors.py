"""Our safetensors reader/writer against the reference ``safetensors`` package (optional)."""
import numpy as np
import pytest

st = pytest.importorskip("safetensors.numpy")

from mrcnn_np.io import load_safetensors, save_safetensors  # noqa: E402


def _tensors():
    rng = np.random.default_rng(0)
    return {
        "backbone.body.conv1.weight": rng.standard_normal((8, 3, 7, 7)).astype(np.float32),
        "rpn.head.bbox_pred.bias": rng.standard_normal(12),
        "x.int": np.arange(-5, 5, dtype=np.int32).reshape(2, 5),
        "x.half": rng.standard_normal(3).astype(np.float16),
        "x.bool": np.array([True, False, True]),
        "x.empty": np.zeros((0, 4), np.float32),
    }


def test_we_read_what_safetensors_writes(tmp_path):
    tensors = _tensors()
    path = tmp_path / "theirs.safetensors"
    st.save_file(tensors, str(path), metadata={"format": "np"})
    ours = load_safetensors(path)
    assert sorted(ours) == sorted(tensors)
    for key, value in tensors.items():
        assert ours[key].dtype == value.dtype and ours[key].shape == value.shape
        np.testing.assert_array_equal(ours[key], value)


def test_safetensors_reads_what_we_write(tmp_path):
    tensors = _tensors()
    path = save_safetensors(tmp_path / "ours.safetensors", tensors, metadata={"format": "np"})
    theirs = st.load_file(str(path))
    assert sorted(theirs) == sorted(tensors)
    for key, value in tensors.items():
        assert theirs[key].dtype == value.dtype
        np.testing.assert_array_equal(theirs[key], value)
