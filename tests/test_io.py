"""Checkpoints (.npz) and safetensors files: round trips, no pickle, malformed files."""
import json
import os
import struct

import numpy as np
import pytest

from mrcnn_np.io import load_checkpoint, load_safetensors, save_checkpoint, save_safetensors


def _params(rng):
    return {
        "backbone.body.conv1.weight": rng.standard_normal((4, 3, 7, 7)).astype(np.float32),
        "rpn.head.cls_logits.bias": rng.standard_normal(3),  # float64
        "roi_heads.box_predictor.cls_score.weight": rng.standard_normal((5, 16)).astype(np.float32),
        "counter": np.array(7, dtype=np.int64),  # 0-d
    }


def test_checkpoint_round_trip_keeps_values_dtypes_and_meta(tmp_path):
    params = _params(np.random.default_rng(0))
    meta = {"step": 120, "losses": [1.5, 0.25], "config": {"num_classes": 4}}
    path = save_checkpoint(tmp_path / "ck.npz", params, meta=meta)
    loaded, meta2 = load_checkpoint(path)
    assert meta2 == meta
    assert sorted(loaded) == sorted(params)
    for key, value in params.items():
        assert loaded[key].dtype == value.dtype and loaded[key].shape == value.shape
        np.testing.assert_array_equal(loaded[key], value)
    assert os.listdir(tmp_path) == ["ck.npz"]  # no temporary file left behind
    assert oct(os.stat(path).st_mode & 0o777) == oct(0o644)


def test_checkpoint_without_meta_loads_empty_meta(tmp_path):
    save_checkpoint(tmp_path / "a.npz", {"w": np.ones(2)})
    _, meta = load_checkpoint(tmp_path / "a.npz")
    assert meta == {}


def test_load_checkpoint_refuses_pickled_objects(tmp_path):
    path = tmp_path / "evil.npz"
    np.savez(path, w=np.array([{"a": 1}], dtype=object))  # needs pickle to read back
    with pytest.raises(ValueError, match="pickle"):
        load_checkpoint(path)


def test_failed_save_leaves_the_old_checkpoint_untouched(tmp_path):
    path = tmp_path / "ck.npz"
    save_checkpoint(path, {"w": np.arange(3.0)})
    with pytest.raises(ValueError, match="JSON"):
        save_checkpoint(path, {"w": np.zeros(3)}, meta={"bad": object()})
    loaded, _ = load_checkpoint(path)
    np.testing.assert_array_equal(loaded["w"], [0.0, 1.0, 2.0])
    assert os.listdir(tmp_path) == ["ck.npz"]


@pytest.mark.parametrize(
    "params, match",
    [
        ({}, "params"),
        ([np.ones(2)], "params"),
        ({"w": np.array(["a"])}, "numeric"),
        ({"__meta__": np.ones(1)}, "reserved"),
        ({3: np.ones(1)}, "keys"),
    ],
)
def test_save_checkpoint_bad_params(tmp_path, params, match):
    with pytest.raises((TypeError, ValueError), match=match):
        save_checkpoint(tmp_path / "x.npz", params)


def test_checkpoint_path_must_be_npz(tmp_path):
    with pytest.raises(ValueError, match="path"):
        save_checkpoint(tmp_path / "x.pt", {"w": np.ones(1)})
    with pytest.raises(TypeError, match="meta"):
        save_checkpoint(tmp_path / "x.npz", {"w": np.ones(1)}, meta=[1])


def _hand_made_safetensors(path, tensors, *, metadata=None, pad=True):
    """Write the format by hand (independently of save_safetensors): tensors [(name, dtype, array)]."""
    header, body = {}, b""
    for name, code, arr in tensors:
        data = np.ascontiguousarray(arr).tobytes()
        header[name] = {"dtype": code, "shape": list(arr.shape),
                        "data_offsets": [len(body), len(body) + len(data)]}
        body += data
    if metadata:
        header["__metadata__"] = metadata
    text = json.dumps(header).encode()
    if pad:
        text += b" " * (-len(text) % 8)
    path.write_bytes(struct.pack("<Q", len(text)) + text + body)


def test_load_safetensors_reads_a_hand_made_file(tmp_path):
    a = np.arange(6, dtype="<f4").reshape(2, 3) / 7
    b = np.array([1, -2, 3], dtype="<i8")
    c = np.array([[True, False]])
    path = tmp_path / "w.safetensors"
    _hand_made_safetensors(path, [("a", "F32", a), ("b", "I64", b), ("c", "BOOL", c)],
                           metadata={"format": "pt"})
    out = load_safetensors(path)
    assert sorted(out) == ["a", "b", "c"]
    np.testing.assert_array_equal(out["a"], a)
    assert out["a"].dtype == np.float32
    np.testing.assert_array_equal(out["b"], b)
    np.testing.assert_array_equal(out["c"], c)
    out["a"][0, 0] = 5  # a writable copy, not a view of the file's bytes
    assert out["a"][0, 0] == 5


def test_safetensors_round_trip(tmp_path):
    params = _params(np.random.default_rng(1))
    path = save_safetensors(tmp_path / "p.safetensors", params, metadata={"format": "np"})
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    assert n % 8 == 0 and json.loads(raw[8:8 + n])["__metadata__"] == {"format": "np"}
    out = load_safetensors(path)
    for key, value in params.items():
        assert out[key].dtype == value.dtype
        np.testing.assert_array_equal(out[key], value)


@pytest.mark.parametrize(
    "mutate, match",
    [
        (lambda h, b: (h, b[:-4]), "needs|outside"),
        (lambda h, b: (h, b + b"\0" * 4), "trailing"),
        (lambda h, b: ({**h, "a": {**h["a"], "dtype": "Q9"}}, b), "bad header"),
        (lambda h, b: ({**h, "a": {**h["a"], "shape": [3, 3]}}, b), "needs"),
        (lambda h, b: ({"a": {**h["a"], "data_offsets": [8, 32]}, "b": h["b"]}, b), "needs|gap|overlap"),
    ],
)
def test_load_safetensors_rejects_malformed_files(tmp_path, mutate, match):
    a = np.arange(6, dtype="<f4")
    b = np.arange(2, dtype="<f8")
    header = {"a": {"dtype": "F32", "shape": [6], "data_offsets": [0, 24]},
              "b": {"dtype": "F64", "shape": [2], "data_offsets": [24, 40]}}
    body = a.tobytes() + b.tobytes()
    header, body = mutate(header, body)
    text = json.dumps(header).encode()
    path = tmp_path / "bad.safetensors"
    path.write_bytes(struct.pack("<Q", len(text)) + text + body)
    with pytest.raises(ValueError, match=match):
        load_safetensors(path)


def test_load_safetensors_rejects_truncated_header(tmp_path):
    path = tmp_path / "t.safetensors"
    path.write_bytes(struct.pack("<Q", 1000) + b"{}")
    with pytest.raises(ValueError, match="header length"):
        load_safetensors(path)
    path.write_bytes(b"abc")
    with pytest.raises(ValueError, match="too short"):
        load_safetensors(path)


def test_save_safetensors_bad_input(tmp_path):
    with pytest.raises(ValueError, match="path"):
        save_safetensors(tmp_path / "x.npz", {"w": np.ones(1)})
    with pytest.raises(TypeError, match="metadata"):
        save_safetensors(tmp_path / "x.safetensors", {"w": np.ones(1)}, metadata={"a": 1})


@pytest.mark.parametrize("key", ["allow_pickle", "file", "a/b.c"])
def test_checkpoint_keeps_keys_that_clash_with_savez_arguments(tmp_path, key):
    save_checkpoint(tmp_path / "k.npz", {key: np.arange(3.0), "w": np.zeros(1)})
    loaded, _ = load_checkpoint(tmp_path / "k.npz")
    assert sorted(loaded) == sorted([key, "w"])
    np.testing.assert_array_equal(loaded[key], [0.0, 1.0, 2.0])
