"""mrcnn_np.io.load_torch_state_dict: torch's .pth files read with NumPy only (no torch here).

Two kinds of input:

* fixtures written by torch itself (tests/data/make_torch_fixtures.py, torch 2.14.1),
  in both layouts, compared with arrays torch exported (tiny_expected.npz);
* files built here byte by byte (a small protocol-2 pickle emitter below), to
  reach the cases torch does not write: out-of-range views, big-endian marks,
  unknown globals and storage types, malicious payloads, broken archives.
"""
import io
import os
import pickle
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest

from mrcnn_np.io import load_torch_state_dict

DATA = os.path.join(os.path.dirname(__file__), "data")
ZIP, LEGACY = os.path.join(DATA, "tiny_zip.pth"), os.path.join(DATA, "tiny_legacy.pth")
FIXTURES = {"zip": ZIP, "legacy": LEGACY}
MAGIC = 0x1950A86A20F9469CFC6C


@pytest.fixture(scope="module")
def expected():
    with np.load(os.path.join(DATA, "tiny_expected.npz"), allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


# --------------------------------------------------------------------------- a tiny pickle emitter
# Protocol-2 opcodes, enough to write what torch.save writes (see the fixtures' data.pkl):
# GLOBAL 'c', MARK '(', TUPLE 't', REDUCE 'R', BINPERSID 'Q', BININT 'J', BINUNICODE 'X',
# SETITEMS 'u', NEWFALSE '\x89', EMPTY_DICT '}', BUILD 'b', STOP '.'.

def g(module, name):
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def s(text):
    data = text.encode()
    return b"X" + struct.pack("<I", len(data)) + data


def i(n):
    return b"J" + struct.pack("<i", n)


def tup(*items):
    return b"(" + b"".join(items) + b"t"


def call(fn, *args):
    return fn + tup(*args) + b"R"


def ordered_dict():
    return call(g("collections", "OrderedDict"))


def storage(kind, key, numel, legacy=False):
    fields = [s("storage"), g("torch", kind), s(key), s("cpu"), i(numel)] + ([b"N"] if legacy else [])
    return tup(*fields) + b"Q"


def tensor(kind, key, numel, offset, size, stride, legacy=False, extra=b""):
    return call(g("torch._utils", "_rebuild_tensor_v2"), storage(kind, key, numel, legacy), i(offset),
                tup(*map(i, size)), tup(*map(i, stride)), b"\x89", ordered_dict(), *([extra] if extra else []))


def state_dict(entries):
    """A pickled OrderedDict {name: pickled value}, as torch writes it."""
    return b"\x80\x02" + ordered_dict() + b"(" + b"".join(s(k) + v for k, v in entries.items()) + b"u."


def write_zip(path, pkl, storages, *, folder="archive", byteorder="little", extra=()):
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
        zf.writestr(f"{folder}/data.pkl", pkl)
        if byteorder is not None:
            zf.writestr(f"{folder}/byteorder", byteorder)
        zf.writestr(f"{folder}/version", "3\n")
        for key, data in storages.items():
            zf.writestr(f"{folder}/data/{key}", data)
        for name, data in extra:
            zf.writestr(name, data)
    return path


def write_legacy(path, pkl, storages, *, little_endian=True, itemsize=4):
    sys_info = {"protocol_version": 1001, "little_endian": little_endian,
                "type_sizes": {"short": 2, "int": 4, "long": 4}}
    parts = [pickle.dumps(MAGIC, protocol=2), pickle.dumps(1001, protocol=2), pickle.dumps(sys_info, protocol=2),
             pkl, pickle.dumps(list(storages), protocol=2)]
    for data in storages.values():
        parts += [struct.pack("<q", len(data) // itemsize), data]
    path.write_bytes(b"".join(parts))
    return path


def f32(*values):
    return np.array(values, dtype="<f4").tobytes()


# --------------------------------------------------------------------------- torch's own files


@pytest.mark.parametrize("layout", ["zip", "legacy"])
def test_fixture_equals_the_arrays_torch_exported(layout, expected):
    got = load_torch_state_dict(FIXTURES[layout])
    assert list(got) == list(expected)  # the file's order
    for key, want in expected.items():
        assert got[key].dtype == want.dtype, key
        assert got[key].shape == want.shape, key
        np.testing.assert_array_equal(got[key], want, err_msg=key)
    # every dtype of the fixture arrives as itself (bfloat16 widened to float32)
    assert {str(v.dtype) for v in got.values()} == {"float32", "float16", "float64", "int64", "int32",
                                                    "int16", "int8", "uint8", "bool"}


@pytest.mark.parametrize("layout", ["zip", "legacy"])
def test_views_of_one_storage_have_their_offsets_and_strides(layout):
    got = load_torch_state_dict(FIXTURES[layout])
    base = got["view.base"]
    assert base.shape == (3, 5) and len(np.unique(base)) == 15  # random values: no accidental matches
    np.testing.assert_array_equal(got["view.t"], base.T)
    np.testing.assert_array_equal(got["view.slice"], base[1:, 1:4])
    np.testing.assert_array_equal(got["view.col"], base[:, 2])
    np.testing.assert_array_equal(got["view.expand"], np.broadcast_to(base[2, 1:2], (2, 4)))
    views = [got[k] for k in ("view.base", "view.t", "view.slice", "view.col", "view.expand")]
    for a in views:  # fresh, contiguous, writable copies: no result aliases another
        assert a.flags.c_contiguous and a.flags.writeable and a.flags.owndata
    assert not any(np.shares_memory(a, b) for n, a in enumerate(views) for b in views[n + 1:])


@pytest.mark.parametrize("layout", ["zip", "legacy"])
def test_num_batches_tracked_is_a_0d_int64(layout):
    got = load_torch_state_dict(FIXTURES[layout])
    n = got["1.num_batches_tracked"]
    assert n.shape == () and n.dtype == np.int64 and int(n) == 1
    assert got["1.running_var"].dtype == np.float32 and got["param"].shape == (3,)


def test_zip_top_folder_can_have_any_name(tmp_path, expected):
    out = tmp_path / "renamed.pth"
    with zipfile.ZipFile(ZIP) as src, zipfile.ZipFile(out, "w") as dst:
        for info in src.infolist():
            dst.writestr("some other name-1/" + info.filename.split("/", 1)[1], src.read(info))
    got = load_torch_state_dict(out)
    np.testing.assert_array_equal(got["view.slice"], expected["view.slice"])


def test_accepts_str_and_pathlike():
    a, b = load_torch_state_dict(ZIP), load_torch_state_dict(Path(ZIP))
    assert list(a) == list(b) and all(np.array_equal(a[k], b[k]) for k in a)


# --------------------------------------------------------------------------- hand-built files


@pytest.mark.parametrize("layout", ["zip", "legacy"])
def test_hand_built_views_follow_offset_and_strides(tmp_path, layout):
    legacy = layout == "legacy"
    # one storage holding 0..11; a (2, 3) view at offset 1 with strides (1, 4) reads 1 5 9 / 2 6 10
    entries = {"a": tensor("FloatStorage", "k", 12, 1, (2, 3), (1, 4), legacy),
               "b": tensor("FloatStorage", "k", 12, 0, (12,), (1,), legacy),
               "c": tensor("FloatStorage", "k", 12, 11, (), (), legacy)}
    data = {"k": f32(*range(12))}
    path = (write_legacy(tmp_path / "h.pth", state_dict(entries), data) if legacy
            else write_zip(tmp_path / "h.pth", state_dict(entries), data))
    got = load_torch_state_dict(path)
    np.testing.assert_array_equal(got["a"], [[1, 5, 9], [2, 6, 10]])
    np.testing.assert_array_equal(got["b"], np.arange(12, dtype=np.float32))
    assert got["c"].shape == () and got["c"] == 11


@pytest.mark.parametrize("offset, size, stride", [(10, (3,), (1,)),       # runs past the end by 1
                                                  (0, (2, 7), (6, 1)),     # last row too long
                                                  (12, (1,), (1,))])       # starts past the end
def test_view_outside_its_storage_is_refused(tmp_path, offset, size, stride):
    path = write_zip(tmp_path / "out.pth", state_dict({"w": tensor("FloatStorage", "0", 12, offset, size, stride)}),
                     {"0": f32(*range(12))})
    with pytest.raises(ValueError, match=r"out\.pth.*tensor 'w'.*storage '0', which has 12"):
        load_torch_state_dict(path)


def test_storage_bytes_must_match_its_numel(tmp_path):
    path = write_zip(tmp_path / "short.pth", state_dict({"w": tensor("FloatStorage", "0", 12, 0, (12,), (1,))}),
                     {"0": f32(*range(11))})
    with pytest.raises(ValueError, match=r"short\.pth.*should hold 48 bytes, the file has 44"):
        load_torch_state_dict(path)


def _evil_payload(target):
    class Evil:
        def __reduce__(self):
            return os.system, (f"touch {target}",)
    return pickle.dumps(Evil(), protocol=2)


def test_malicious_payload_is_live_when_unpickled_naively(tmp_path):
    # the control: the same bytes DO run a command under plain pickle, so the refusals below mean something
    control = tmp_path / "control"
    pickle.loads(_evil_payload(control))
    assert control.exists()


@pytest.mark.parametrize("layout", ["zip", "legacy"])
def test_malicious_pickle_is_refused_without_side_effect(tmp_path, layout):
    target = tmp_path / "pwned"
    payload = _evil_payload(target)
    if layout == "zip":
        path = write_zip(tmp_path / "evil.pth", payload, {})
    else:
        path = write_legacy(tmp_path / "evil.pth", payload, {})
    with pytest.raises(ValueError) as info:
        load_torch_state_dict(path)
    assert "evil.pth" in str(info.value)
    assert f"{os.system.__module__}.system" in str(info.value)  # posix.system on Linux
    assert not target.exists()


def test_unknown_global_is_refused_naming_it(tmp_path):
    pkl = b"\x80\x02" + call(g("torch.nn.modules.conv", "Conv2d")) + b"."
    path = write_zip(tmp_path / "module.pth", pkl, {})
    with pytest.raises(ValueError, match=r"module\.pth.*refusing the global torch\.nn\.modules\.conv\.Conv2d"):
        load_torch_state_dict(path)


@pytest.mark.parametrize("kind", ["ComplexFloatStorage", "QInt8Storage"])
def test_unknown_storage_type_is_refused_naming_it(tmp_path, kind):
    path = write_zip(tmp_path / "st.pth", state_dict({"w": tensor(kind, "0", 2, 0, (2,), (1,))}), {"0": b"\0" * 16})
    with pytest.raises(ValueError, match=rf"st\.pth.*unsupported storage type torch\.{kind}"):
        load_torch_state_dict(path)


def test_storage_type_must_be_a_storage_class(tmp_path):
    pid = tup(s("storage"), i(5), s("0"), s("cpu"), i(1)) + b"Q"
    path = write_zip(tmp_path / "pid.pth", state_dict({"w": pid}), {"0": f32(1)})
    with pytest.raises(ValueError, match=r"pid\.pth.*unknown storage type 5"):
        load_torch_state_dict(path)


def test_state_set_on_a_tensor_is_refused(tmp_path):
    # BUILD on a tensor (old torch set tensors up this way; here it is an attempt to set attributes)
    built = tensor("FloatStorage", "0", 1, 0, (1,), (1,)) + b"}" + s("x") + i(1) + b"sb"
    path = write_zip(tmp_path / "build.pth", state_dict({"w": built}), {"0": f32(1)})
    with pytest.raises(ValueError, match=r"build\.pth.*set the state of a TensorRef"):
        load_torch_state_dict(path)


def test_state_set_on_an_allowed_global_is_refused(tmp_path):
    # BUILD on the builder itself would otherwise change our function for every later load
    pkl = b"\x80\x02" + g("torch._utils", "_rebuild_tensor_v2") + b"N}" + s("__defaults__") + tup(i(1)) + b"s\x86b."
    path = write_zip(tmp_path / "patch.pth", pkl, {})
    with pytest.raises(ValueError, match=r"patch\.pth.*set the state of a Builder"):
        load_torch_state_dict(path)
    assert load_torch_state_dict(ZIP)["view.col"].shape == (3,)  # still intact


def test_conj_or_neg_bits_are_refused(tmp_path):
    meta = b"}" + s("neg") + b"\x88s"
    path = write_zip(tmp_path / "neg.pth",
                     state_dict({"w": tensor("FloatStorage", "0", 1, 0, (1,), (1,), extra=meta)}), {"0": f32(1)})
    with pytest.raises(ValueError, match=r"neg\.pth.*conj/neg bits"):
        load_torch_state_dict(path)


def test_big_endian_zip_is_refused(tmp_path):
    path = write_zip(tmp_path / "be.pth", state_dict({"w": tensor("FloatStorage", "0", 1, 0, (1,), (1,))}),
                     {"0": f32(1)}, byteorder="big")
    with pytest.raises(ValueError, match=r"be\.pth.*big-endian"):
        load_torch_state_dict(path)


def test_zip_without_byteorder_record_is_read_as_little_endian(tmp_path):
    # torch < 1.12 wrote no byteorder record; torch reads such files in native (little) order
    path = write_zip(tmp_path / "old.pth", state_dict({"w": tensor("FloatStorage", "0", 2, 0, (2,), (1,))}),
                     {"0": f32(1.5, -2)}, byteorder=None)
    np.testing.assert_array_equal(load_torch_state_dict(path)["w"], [1.5, -2])


def test_big_endian_legacy_is_refused(tmp_path):
    path = write_legacy(tmp_path / "be.pth", state_dict({"w": tensor("FloatStorage", "0", 1, 0, (1,), (1,), True)}),
                        {"0": f32(1)}, little_endian=False)
    with pytest.raises(ValueError, match=r"be\.pth.*big-endian"):
        load_torch_state_dict(path)


def test_legacy_storage_view_is_refused(tmp_path):
    pid = tup(s("storage"), g("torch", "FloatStorage"), s("0"), s("cpu"), i(4), tup(s("1"), i(1), i(2))) + b"Q"
    pkl = state_dict({"w": call(g("torch._utils", "_rebuild_tensor"), pid, i(0), tup(i(2)), tup(i(1)))})
    path = write_legacy(tmp_path / "view.pth", pkl, {"0": f32(1, 2, 3, 4)})
    with pytest.raises(ValueError, match=r"view\.pth.*view of another storage"):
        load_torch_state_dict(path)


def test_legacy_rebuild_tensor_v1_is_read(tmp_path):
    pkl = state_dict({"w": call(g("torch._utils", "_rebuild_tensor"), storage("DoubleStorage", "7", 3, True),
                                i(1), tup(i(2)), tup(i(1)))})
    path = write_legacy(tmp_path / "v1.pth", pkl, {"7": np.array([1, 2, 3], "<f8").tobytes()}, itemsize=8)
    got = load_torch_state_dict(path)["w"]
    assert got.dtype == np.float64
    np.testing.assert_array_equal(got, [2, 3])


def test_legacy_count_must_match_the_pickle(tmp_path):
    path = write_legacy(tmp_path / "count.pth", state_dict({"w": tensor("FloatStorage", "0", 3, 0, (3,), (1,), True)}),
                        {"0": f32(1, 2)})
    with pytest.raises(ValueError, match=r"count\.pth.*records 2 elements, the pickle says 3"):
        load_torch_state_dict(path)


def test_legacy_storage_without_data_is_refused(tmp_path):
    pkl = state_dict({"w": tensor("FloatStorage", "0", 1, 0, (1,), (1,), True)})
    raw = b"".join([pickle.dumps(MAGIC, 2), pickle.dumps(1001, 2), pickle.dumps({"little_endian": True}, 2),
                    pkl, pickle.dumps([], 2)])
    (tmp_path / "nodata.pth").write_bytes(raw)
    with pytest.raises(ValueError, match=r"nodata\.pth.*has no data after the pickle"):
        load_torch_state_dict(tmp_path / "nodata.pth")


def test_zip_storage_member_missing_is_refused(tmp_path):
    path = write_zip(tmp_path / "nomember.pth", state_dict({"w": tensor("FloatStorage", "3", 1, 0, (1,), (1,))}), {})
    with pytest.raises(ValueError, match=r"nomember\.pth.*storage '3' has no member 'archive/data/3'"):
        load_torch_state_dict(path)


# --------------------------------------------------------------------------- what the file holds


def _sd_bytes():
    return {"w": tensor("FloatStorage", "0", 2, 0, (2,), (1,))}


@pytest.mark.parametrize("wrapper", ["model", "state_dict"])
def test_checkpoint_holding_the_state_dict_is_unwrapped(tmp_path, wrapper):
    pkl = b"\x80\x02}(" + s(wrapper) + state_dict(_sd_bytes())[2:-1] + s("epoch") + i(3) + b"u."
    path = write_zip(tmp_path / "ckpt.pth", pkl, {"0": f32(4, 5)})
    got = load_torch_state_dict(path)
    assert list(got) == ["w"]
    np.testing.assert_array_equal(got["w"], [4, 5])


def test_both_wrappers_are_ambiguous(tmp_path):
    inner = state_dict(_sd_bytes())[2:-1]
    pkl = b"\x80\x02}(" + s("model") + inner + s("state_dict") + inner + b"u."
    path = write_zip(tmp_path / "both.pth", pkl, {"0": f32(4, 5)})
    with pytest.raises(ValueError, match=r"both\.pth.*ambiguous"):
        load_torch_state_dict(path)


def test_non_tensor_entry_is_refused_naming_it(tmp_path):
    entries = dict(_sd_bytes(), epoch=i(3))
    path = write_zip(tmp_path / "mixed.pth", state_dict(entries), {"0": f32(4, 5)})
    with pytest.raises(ValueError, match=r"mixed\.pth.*entry 'epoch' is a int, not a tensor"):
        load_torch_state_dict(path)


def test_top_object_must_be_a_dict(tmp_path):
    pkl = b"\x80\x02" + b"]" + b"."  # an empty list
    path = write_zip(tmp_path / "list.pth", pkl, {})
    with pytest.raises(ValueError, match=r"list\.pth.*holds a list, not a state dict"):
        load_torch_state_dict(path)


def test_torchscript_archive_is_named(tmp_path):
    path = write_zip(tmp_path / "script.pth", state_dict({}), {}, extra=[("archive/constants.pkl", b"")])
    with pytest.raises(ValueError, match=r"script\.pth.*TorchScript"):
        load_torch_state_dict(path)


# --------------------------------------------------------------------------- not a torch file


@pytest.mark.parametrize("layout", ["zip", "legacy"])
@pytest.mark.parametrize("fraction", [0.0005, 0.1, 0.5, 0.9, 0.999])
def test_truncated_file_is_a_clear_error(tmp_path, layout, fraction):
    raw = open(FIXTURES[layout], "rb").read()
    cut = max(1, int(len(raw) * fraction))
    path = tmp_path / f"cut_{layout}.pth"
    path.write_bytes(raw[:cut])
    with pytest.raises(ValueError, match=rf"cut_{layout}\.pth: "):
        load_torch_state_dict(path)


def test_empty_file(tmp_path):
    (tmp_path / "empty.pth").write_bytes(b"")
    with pytest.raises(ValueError, match=r"empty\.pth: empty file"):
        load_torch_state_dict(tmp_path / "empty.pth")


@pytest.mark.parametrize("seed", range(5))
def test_random_bytes(tmp_path, seed):
    path = tmp_path / "random.pth"
    path.write_bytes(np.random.default_rng(seed).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(ValueError, match=r"random\.pth: "):
        load_torch_state_dict(path)


def test_npz_renamed_pth(tmp_path):
    npz = tmp_path / "weights.npz"
    np.savez(npz, w=np.ones(3))
    path = tmp_path / "weights.pth"
    npz.rename(path)
    with pytest.raises(ValueError, match=r"weights\.pth.*without exactly one <folder>/data\.pkl"):
        load_torch_state_dict(path)


def test_zip_without_data_pkl(tmp_path):
    path = tmp_path / "other.pth"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data/0", b"\0" * 4)
        zf.writestr("data.pkl", state_dict({}))  # at the top level: torch needs it inside the folder
    with pytest.raises(ValueError, match=r"other\.pth.*without exactly one <folder>/data\.pkl"):
        load_torch_state_dict(path)


def test_plain_pickle_is_not_a_torch_file(tmp_path):
    path = tmp_path / "plain.pth"
    path.write_bytes(pickle.dumps({"w": [1.0, 2.0]}, protocol=2))
    with pytest.raises(ValueError, match=r"plain\.pth.*neither a zip archive nor torch's legacy format"):
        load_torch_state_dict(path)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing.pth"):
        load_torch_state_dict(tmp_path / "nothing.pth")


def test_path_type():
    with pytest.raises(TypeError, match="path must be a str or os.PathLike, got bytes"):
        load_torch_state_dict(io.BytesIO(b"").getvalue())
