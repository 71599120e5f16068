"""Parameters on disk: checkpoints (``.npz``) and safetensors weight files.

A parameter set is a flat dict ``{name: array}`` with torchvision's
``state_dict`` names (``backbone.body.conv1.weight``, ``rpn.head.cls_logits.bias``,
...), so files move between this package and torchvision unchanged.

Two formats, both read without unpickling anything:

- ``.npz`` checkpoints (:func:`save_checkpoint`, :func:`load_checkpoint`): one
  array per parameter plus a JSON metadata record (step, config, losses ...)
  stored as a 0-d unicode array under the reserved key ``__meta__``. Loading uses
  ``np.load(..., allow_pickle=False)``, so an object array in a file is an error,
  never code execution.
- safetensors (:func:`save_safetensors`, :func:`load_safetensors`), the format
  the Hugging Face hub serves torchvision-style weights in: an 8-byte
  little-endian header length, a JSON header ``{name: {"dtype", "shape",
  "data_offsets": [begin, end]}}`` (offsets relative to the end of the header),
  then the raw little-endian bytes. Read with plain NumPy.

Every file is written atomically (temporary name in the same folder, then
renamed): a reader never sees half a checkpoint, even if training is killed
mid-write.

A third format is read only: torch's ``.pth`` files (:func:`load_torch_state_dict`),
with our own restricted unpickler and no torch. ``torch.save`` writes a pickle
whose tensors refer to *storages* (flat typed buffers) by persistent id; it
has two layouts:

- zip (the default since torch 1.6): a zip archive (members stored, not
  compressed) with one top folder of any name, ``<top>/data.pkl`` (the pickle),
  ``<top>/data/<key>`` (the raw bytes of storage ``key``), ``<top>/byteorder``
  (``little`` or ``big``; older torch versions wrote none, and torch then reads
  native order, so we read little), ``<top>/version``,
  ``<top>/.format_version``, ``<top>/.storage_alignment``. A persistent id is
  ``("storage", StorageClass, key, location, numel)``.
- legacy (``_use_new_zipfile_serialization=False`` and every file written by
  torch < 1.6): five things one after the other in one file -- the pickled
  magic number ``0x1950a86a20f9469cfc6c``, the pickled protocol version 1001,
  a pickled ``sys_info`` dict (``little_endian``, type sizes), the main pickle
  with persistent ids ``("storage", StorageClass, key, location, numel,
  view_metadata)``, a pickled list of storage keys, then for each key in that
  order an 8-byte little-endian element count followed by the raw bytes.

In both, a tensor is ``torch._utils._rebuild_tensor_v2(storage, storage_offset,
size, stride, requires_grad, backward_hooks[, metadata])`` (or the older
``_rebuild_tensor(storage, offset, size, stride)``), a parameter wraps one in
``_rebuild_parameter(data, requires_grad, backward_hooks)``, and a state dict
is a ``collections.OrderedDict`` whose ``_metadata`` attribute (per-module
versions) arrives by the pickle's BUILD opcode.

The published torchvision weights use both layouts (checked in the sources,
not assumed): ``resnet50-19c8e357.pth`` (torchvision's original ImageNet
ResNet-50) is legacy -- pytorch/vision issue #2068 ("Re-upload weights for old
model with new serialization") reproduces a torch.load failure peculiar to the
legacy format with exactly this file; vision PR #3620
(March 2021, "Update weights of classification models to allow proper
unpickling") re-saved the classification weights in the zip format, and
``resnet50-0676ba61.pth`` is that re-save (the URL of
``ResNet50_Weights.IMAGENET1K_V1`` since then; the old URL is kept for BC).
``maskrcnn_resnet50_fpn_coco-bf2d0c1e.pth`` came with the detection models
(torchvision 0.3, vision PR #898, May 2019: torch 1.1, months before torch.save
could write zip files at all; the torch.save docs date the zip default to
1.6) and is not a classification model, so #3620 left it; the name's suffix is the prefix of the
file's SHA-256, which ``torch.hub`` checks on download, and it is unchanged in
torchvision 0.29 (``MaskRCNN_ResNet50_FPN_Weights.COCO_V1``), so the bytes are
still the 2019 file: legacy layout. Both layouts are read the same way here,
so nothing depends on this.
"""
from __future__ import annotations

import collections
import io
import json
import os
import pickle
import struct
import zipfile
from pathlib import Path

import numpy as np

from ._atomic import atomic_path
from ._checks import check_finite, check_path

__all__ = ["save_checkpoint", "load_checkpoint", "save_safetensors", "load_safetensors", "load_torch_state_dict"]

META_KEY = "__meta__"

# safetensors dtype names <-> NumPy dtypes (little-endian)
_ST_DTYPES = {
    "F64": np.dtype("<f8"), "F32": np.dtype("<f4"), "F16": np.dtype("<f2"),
    "I64": np.dtype("<i8"), "I32": np.dtype("<i4"), "I16": np.dtype("<i2"), "I8": np.dtype("i1"),
    "U8": np.dtype("u1"), "BOOL": np.dtype("?"),
}
_ST_NAMES = {v: k for k, v in _ST_DTYPES.items()}


def _check_params(params):
    if not isinstance(params, dict) or not params:
        raise TypeError(f"params must be a non-empty dict of arrays, got {type(params).__name__}")
    out = {}
    for key, value in params.items():
        if not isinstance(key, str) or not key:
            raise TypeError(f"params keys must be non-empty str, got {key!r}")
        if key == META_KEY:
            raise ValueError(f"params must not use the reserved key {META_KEY!r}")
        arr = np.asarray(value)
        if arr.dtype.kind not in "biuf":
            raise TypeError(f"params[{key!r}] must be a numeric array, got dtype {arr.dtype}")
        if arr.dtype.kind == "f":  # the boundary refuses NaN/inf: a diverged model is not saved silently
            check_finite(f"params[{key!r}]", arr)
        out[key] = arr
    return out


def _check_suffix(path, suffix):
    path = check_path("path", path)
    if path.suffix != suffix:
        raise ValueError(f"path must end in {suffix!r}, got {str(path)!r}")
    return path


def save_checkpoint(path, params, *, meta=None):
    """Write ``params`` (and a JSON-serialisable ``meta`` dict) to ``path`` (.npz), atomically.

    params: {name: array} (numeric arrays of any shape; floats finite). meta: dict
    or None, e.g. ``{"step": 1200, "config": {...}}``; it must survive ``json.dumps``
    as standard JSON (NaN and inf are refused: ``load_checkpoint`` refuses them too).
    Returns the path.
    """
    path = _check_suffix(path, ".npz")
    arrays = _check_params(params)
    if meta is not None and not isinstance(meta, dict):
        raise TypeError(f"meta must be a dict or None, got {type(meta).__name__}")
    try:
        text = json.dumps(meta if meta is not None else {}, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"meta must be JSON-serialisable: {exc}") from exc
    arrays[META_KEY] = np.array(text)  # 0-d unicode array: no pickle needed
    # the .npz layout (a zip of NAME.npy members) written member by member: np.savez's
    # keyword arguments would swallow parameters named "file" or "allow_pickle"
    with atomic_path(path) as tmp:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
            for key, arr in arrays.items():
                with zf.open(key + ".npy", "w", force_zip64=True) as member:
                    np.lib.format.write_array(member, np.asanyarray(arr), allow_pickle=False)
    return path


def load_checkpoint(path):
    """Read a checkpoint written by :func:`save_checkpoint`.

    Returns (params {name: array}, meta dict). Never unpickles: a file holding
    object arrays raises ValueError.
    """
    path = _check_suffix(path, ".npz")
    if not Path(path).is_file():
        raise FileNotFoundError(f"checkpoint {path} not found")
    if not zipfile.is_zipfile(path):  # empty, truncated, a .npy renamed .npz, random bytes
        raise ValueError(f"{path}: not a checkpoint (not a complete .npz/zip file)")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {key: data[key] for key in data.files}
    except ValueError as exc:  # object arrays refuse to load without pickle
        raise ValueError(f"{path}: not a pickle-free checkpoint ({exc})") from exc
    except (zipfile.BadZipFile, EOFError, OSError, KeyError) as exc:  # damaged members
        raise ValueError(f"{path}: damaged checkpoint ({type(exc).__name__}: {exc})") from exc
    meta_arr = arrays.pop(META_KEY, None)
    if meta_arr is None:
        return arrays, {}
    try:
        meta = json.loads(str(meta_arr), parse_constant=_refuse_constant)
    except ValueError as exc:
        raise ValueError(f"{path}: its {META_KEY} record is not valid JSON ({exc})") from exc
    if not isinstance(meta, dict):
        raise ValueError(f"{path}: its {META_KEY} record must be a JSON object, got {type(meta).__name__}")
    return arrays, meta


def _refuse_constant(name):
    raise ValueError(f"non-finite number {name} in the metadata")


def save_safetensors(path, params, *, metadata=None):
    """Write ``params`` as a safetensors file (atomically). metadata: {str: str} or None."""
    path = _check_suffix(path, ".safetensors")
    arrays = _check_params(params)
    header, offset, chunks = {}, 0, []
    for key in sorted(arrays):
        arr = arrays[key]
        dtype = arr.dtype.newbyteorder("<") if arr.dtype.byteorder == ">" else arr.dtype
        if dtype not in _ST_NAMES:
            raise TypeError(f"params[{key!r}] has dtype {arr.dtype}, not storable in safetensors")
        data = np.ascontiguousarray(arr, dtype=dtype).tobytes()
        header[key] = {"dtype": _ST_NAMES[dtype], "shape": list(arr.shape),
                       "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
        chunks.append(data)
    if metadata is not None:
        if not isinstance(metadata, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
            raise TypeError("metadata must map str to str")
        header["__metadata__"] = dict(metadata)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # the format pads the header to 8 bytes
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(struct.pack("<Q", len(text)))
            f.write(text)
            for data in chunks:
                f.write(data)
    return path


def load_safetensors(path):
    """Read a safetensors file into {name: array} (copies; no pickle, no torch).

    Raises ValueError on a malformed file: header length past the end, offsets
    that overlap, leave gaps or disagree with dtype and shape, unknown dtypes.
    """
    path = check_path("path", path)
    raw = path.read_bytes()
    if len(raw) < 8:
        raise ValueError(f"{path}: too short for a safetensors file ({len(raw)} bytes)")
    (n,) = struct.unpack("<Q", raw[:8])
    if 8 + n > len(raw):
        raise ValueError(f"{path}: header length {n} runs past the end of the file ({len(raw)} bytes)")
    try:
        header = json.loads(raw[8:8 + n])
    except ValueError as exc:
        raise ValueError(f"{path}: header is not JSON ({exc})") from exc
    if not isinstance(header, dict):
        raise ValueError(f"{path}: header must be a JSON object")
    header.pop("__metadata__", None)
    body = memoryview(raw)[8 + n:]
    out, spans = {}, []
    for key, info in header.items():
        try:
            dtype = _ST_DTYPES[info["dtype"]]
            shape = tuple(int(s) for s in info["shape"])
            begin, end = (int(v) for v in info["data_offsets"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{path}: bad header entry for {key!r}: {info!r}") from exc
        if not 0 <= begin <= end <= len(body):
            raise ValueError(f"{path}: {key!r} data_offsets {[begin, end]} outside the {len(body)}-byte body")
        if end - begin != dtype.itemsize * int(np.prod(shape, dtype=np.int64)):
            raise ValueError(f"{path}: {key!r} holds {end - begin} bytes, {info['dtype']}{list(shape)} needs "
                             f"{dtype.itemsize * int(np.prod(shape, dtype=np.int64))}")
        out[key] = np.frombuffer(body[begin:end], dtype=dtype).reshape(shape).copy()
        spans.append((begin, end, key))
    spans.sort()
    pos = 0
    for begin, end, key in spans:
        if begin != pos:
            raise ValueError(f"{path}: {key!r} starts at byte {begin}, expected {pos} (gap or overlap)")
        pos = end
    if pos != len(body):
        raise ValueError(f"{path}: {len(body) - pos} trailing bytes after the last tensor")
    return out


# =========================================================================== torch .pth (read only)
#
# Our own reader of torch.save's two layouts (module docstring). The pickle is
# read by a pickle.Unpickler whose find_class maps a short allow-list of torch
# globals to NumPy-side builders defined here and refuses every other global,
# so nothing named by the file is imported or called. The builders return
# placeholders (_Storage, _TensorRef); arrays are made at the end, only for the
# returned entries.

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001

# torch's storage classes (pickled as the globals ``torch.<Name>``) -> the little-endian
# NumPy dtype of their bytes. bfloat16 has no NumPy dtype: its bit patterns are read as
# uint16 and widened exactly to float32; bool bytes are read as uint8 and compared with 0.
_TORCH_STORAGE_DTYPES = {
    "DoubleStorage": np.dtype("<f8"), "FloatStorage": np.dtype("<f4"), "HalfStorage": np.dtype("<f2"),
    "BFloat16Storage": np.dtype("<u2"), "LongStorage": np.dtype("<i8"), "IntStorage": np.dtype("<i4"),
    "ShortStorage": np.dtype("<i2"), "CharStorage": np.dtype("i1"), "ByteStorage": np.dtype("u1"),
    "BoolStorage": np.dtype("u1"),
}


class _Malformed(ValueError):
    """A refused or malformed torch file; load_torch_state_dict prefixes the file name."""


class _Refusing:
    """Base of every object the unpickler hands to the file: BUILD (``__setstate__``) is refused,
    so a pickle cannot set attributes on our builders or placeholders."""

    __slots__ = ()

    def __setstate__(self, state):
        raise _Malformed(f"the pickle tries to set the state of a {type(self).__name__[1:]} (BUILD); refused")


class _StorageType(_Refusing):
    """Stands in for a storage class such as ``torch.FloatStorage``."""

    __slots__ = ("name", "dtype")

    def __init__(self, name):
        self.name, self.dtype = name, _TORCH_STORAGE_DTYPES[name]

    def __repr__(self):
        return f"torch.{self.name}"


class _Storage(_Refusing):
    """One storage of the file: type, element count and a reader of its bytes, read once."""

    __slots__ = ("key", "kind", "numel", "read", "_array")

    def __init__(self, key, kind, numel, read):
        self.key, self.kind, self.numel, self.read, self._array = key, kind, numel, read, None

    def array(self):
        """The storage as a flat read-only array of its dtype (``numel`` elements), read on first use."""
        if self._array is None:
            raw = self.read()
            expected = self.numel * self.kind.dtype.itemsize
            if len(raw) != expected:
                raise _Malformed(f"storage {self.key!r} ({self.kind!r}, {self.numel} elements) should hold "
                                 f"{expected} bytes, the file has {len(raw)}")
            self._array = np.frombuffer(raw, dtype=self.kind.dtype)
        return self._array


class _TensorRef(_Refusing):
    """A tensor as the pickle describes it: a view (offset, size, stride in elements) of a storage."""

    __slots__ = ("storage", "offset", "size", "stride")

    def __init__(self, storage, offset, size, stride):
        self.storage, self.offset, self.size, self.stride = storage, offset, size, stride


class _StateDict(collections.OrderedDict):
    """``collections.OrderedDict`` as torch pickles a state dict. The BUILD opcode that
    follows carries ``{"_metadata": {module: {"version": ...}}}``; it is accepted and
    dropped (our parameters need no module versions), nothing is set."""

    def __setstate__(self, state):
        pass


def _int(name, value, minimum=0):
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise _Malformed(f"a tensor's {name} must be an int >= {minimum}, got {value!r}")
    return value


def _int_tuple(name, value):
    if not isinstance(value, (tuple, list)):
        raise _Malformed(f"a tensor's {name} must be a tuple of ints, got {type(value).__name__}")
    return tuple(_int(name, v) for v in value)


def _rebuild_tensor(storage, storage_offset, size, stride):
    """Twin of ``torch._utils._rebuild_tensor``: ``storage`` viewed from ``storage_offset`` with
    ``size`` and ``stride`` (in elements)."""
    if not isinstance(storage, _Storage):
        raise _Malformed(f"a tensor's storage must come from a persistent id, got {type(storage).__name__}")
    size, stride = _int_tuple("size", size), _int_tuple("stride", stride)
    if len(size) != len(stride):
        raise _Malformed(f"a tensor's size {size} and stride {stride} differ in length")
    return _TensorRef(storage, _int("storage_offset", storage_offset), size, stride)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad, backward_hooks, metadata=None):
    """Twin of ``torch._utils._rebuild_tensor_v2``; requires_grad and the (empty) hooks are dropped."""
    if metadata and any(metadata.values()):
        raise _Malformed(f"a tensor carries conj/neg bits {metadata!r}; not supported")
    return _rebuild_tensor(storage, storage_offset, size, stride)


def _rebuild_parameter(data, requires_grad, backward_hooks, state=None):
    """Twin of ``torch._utils._rebuild_parameter`` (and ``_with_state``): a Parameter is its data."""
    if not isinstance(data, _TensorRef):
        raise _Malformed(f"a Parameter must wrap a tensor, got {type(data).__name__}")
    return data


def _new_state_dict(*args):
    return _StateDict(*args)


class _Builder(_Refusing):
    """A callable the pickle may REDUCE with; not a type, so NEWOBJ on it fails."""

    __slots__ = ("name", "fn")

    def __init__(self, name, fn):
        self.name, self.fn = name, fn

    def __call__(self, *args):
        return self.fn(*args)


_TORCH_GLOBALS = {
    "collections.OrderedDict": _Builder("collections.OrderedDict", _new_state_dict),
    "torch._utils._rebuild_tensor": _Builder("torch._utils._rebuild_tensor", _rebuild_tensor),
    "torch._utils._rebuild_tensor_v2": _Builder("torch._utils._rebuild_tensor_v2", _rebuild_tensor_v2),
    "torch._utils._rebuild_parameter": _Builder("torch._utils._rebuild_parameter", _rebuild_parameter),
    "torch._utils._rebuild_parameter_with_state": _Builder("torch._utils._rebuild_parameter_with_state",
                                                           _rebuild_parameter),
}
_TORCH_GLOBALS.update({f"torch.{name}": _StorageType(name) for name in _TORCH_STORAGE_DTYPES})


def _ascii(value):
    return value.decode("ascii") if isinstance(value, bytes) else value


class _HeaderUnpickler(pickle.Unpickler):
    """Plain data only (the legacy format's magic number, version, sys_info, key list)."""

    def find_class(self, module, name):
        raise _Malformed(f"unexpected global {module}.{name} in a header pickle; refused")

    def persistent_load(self, pid):
        raise _Malformed("unexpected persistent id in a header pickle")


class _TorchUnpickler(pickle.Unpickler):
    """Restricted unpickler: globals from the allow-list only, storages by persistent id.

    ``reader(key)`` returns a function that returns the bytes of storage ``key``; a
    storage is made once per key, so tensors that share it share one buffer.
    """

    def __init__(self, file, *, reader, legacy):
        super().__init__(file, encoding="utf-8")
        self.reader, self.legacy, self.storages = reader, legacy, {}

    def find_class(self, module, name):
        full = f"{module}.{name}"
        if full in _TORCH_GLOBALS:
            return _TORCH_GLOBALS[full]
        if module == "torch" and name.endswith("Storage"):
            raise _Malformed(f"unsupported storage type {full} (supported: "
                             f"{', '.join(sorted(_TORCH_STORAGE_DTYPES))})")
        raise _Malformed(f"refusing the global {full}: only tensors, storages and OrderedDict are "
                         "allowed in a state dict (nothing in the file is imported or executed)")

    def persistent_load(self, pid):
        sizes = (5, 6) if self.legacy else (5,)
        if not isinstance(pid, tuple) or len(pid) not in sizes or _ascii(pid[0]) != "storage":
            raise _Malformed(f"unexpected persistent id {pid!r} (expected ('storage', type, key, location, "
                             "numel))")
        kind, key, _location, numel = pid[1:5]  # the location ('cpu', 'cuda:0') is ignored: NumPy is CPU
        if len(pid) == 6 and pid[5] is not None:
            raise _Malformed(f"storage {_ascii(key)!r} is a view of another storage (view_metadata "
                             f"{pid[5]!r}), written by old torch versions; not supported")
        if not isinstance(kind, _StorageType):
            raise _Malformed(f"unknown storage type {kind!r} in persistent id {pid!r}")
        key = _ascii(key)
        if not isinstance(key, str):
            raise _Malformed(f"a storage key must be a str, got {key!r}")
        numel = _int("storage numel", numel)
        storage = self.storages.get(key)
        if storage is None:
            storage = self.storages[key] = _Storage(key, kind, numel, self.reader(key))
        elif storage.kind is not kind or storage.numel != numel:
            raise _Malformed(f"storage {key!r} is used as {storage.kind!r}[{storage.numel}] and as "
                             f"{kind!r}[{numel}]")
        return storage


def _materialize(name, ref):
    """A fresh C-contiguous array equal to the tensor ``ref`` (checked to lie inside its storage)."""
    kind, flat = ref.storage.kind, ref.storage.array()
    if 0 in ref.size:
        out = np.zeros(ref.size, dtype=flat.dtype)
    else:
        last = ref.offset + sum((n - 1) * s for n, s in zip(ref.size, ref.stride))
        if last >= flat.size:
            raise _Malformed(f"tensor {name!r} (offset {ref.offset}, size {ref.size}, stride {ref.stride}) "
                             f"reaches element {last} of storage {ref.storage.key!r}, which has {flat.size}")
        item = flat.dtype.itemsize
        view = np.lib.stride_tricks.as_strided(flat[ref.offset:], shape=ref.size,
                                               strides=tuple(s * item for s in ref.stride), writeable=False)
        out = np.array(view, order="C")
    if kind.name == "BFloat16Storage":
        out = (out.astype(np.uint32) << 16).view(np.float32)  # bfloat16 = the top half of a float32
    elif kind.name == "BoolStorage":
        out = out != 0
    return out


def _state_dict_entries(obj):
    """The flat {name: _TensorRef} the file holds (unwrapping a 'model' or 'state_dict' entry)."""
    if not isinstance(obj, dict):
        raise _Malformed(f"holds a {type(obj).__name__}, not a state dict (a dict of tensors)")
    inner, where = obj, ""
    if not (obj and all(isinstance(v, _TensorRef) for v in obj.values())):
        wrapped = [k for k in ("model", "state_dict") if isinstance(obj.get(k), dict)]
        if len(wrapped) > 1:
            raise _Malformed("holds both 'model' and 'state_dict' dicts; which one to load is ambiguous")
        if wrapped:
            inner, where = obj[wrapped[0]], f" (in its {wrapped[0]!r} entry)"
    for key, value in inner.items():
        if not isinstance(key, str):
            raise _Malformed(f"state dict{where} has a non-str key {key!r}")
        if not isinstance(value, _TensorRef):
            raise _Malformed(f"entry {key!r}{where} is a {type(value).__name__}, not a tensor; only a flat "
                             "dict of tensors (or one under a 'model' or 'state_dict' key) is read")
    return inner


def _load_torch_zip(raw):
    try:
        zf = zipfile.ZipFile(io.BytesIO(raw))
    except zipfile.BadZipFile as exc:
        raise _Malformed(f"starts like a zip archive but is not a readable one ({exc}); truncated?") from exc
    with zf:
        names = zf.namelist()
        members = set(names)
        pickles = [n for n in names if n.count("/") == 1 and n.endswith("/data.pkl")]
        if len(pickles) != 1:
            raise _Malformed(f"zip archive without exactly one <folder>/data.pkl (found {len(pickles)}; "
                             f"members {names[:4]}{' ...' if len(names) > 4 else ''}): not written by torch.save")
        prefix = pickles[0][: -len("data.pkl")]
        if prefix + "constants.pkl" in members:
            raise _Malformed("a TorchScript archive (torch.jit.save), not a state dict saved by torch.save")
        if prefix + "byteorder" in members:
            order = zf.read(prefix + "byteorder").decode("ascii", "replace")
            if order == "big":
                raise _Malformed("written on a big-endian machine (byteorder 'big'); only little-endian "
                                 "files are supported")
            if order != "little":
                raise _Malformed(f"unknown byteorder record {order!r}")

        def reader(key):
            member = f"{prefix}data/{key}"
            if member not in members:
                raise _Malformed(f"storage {key!r} has no member {member!r}")
            return lambda: zf.read(member)

        unpickler = _TorchUnpickler(io.BytesIO(zf.read(pickles[0])), reader=reader, legacy=False)
        entries = _state_dict_entries(unpickler.load())
        return {key: _materialize(key, ref) for key, ref in entries.items()}


def _load_torch_legacy(raw):
    f = io.BytesIO(raw)
    try:
        magic = _HeaderUnpickler(f).load()
    except Exception as exc:
        raise _Malformed("neither a zip archive nor torch's legacy format (no pickled magic number "
                         f"at the start: {type(exc).__name__}: {exc})") from exc
    if magic != _LEGACY_MAGIC:
        raise _Malformed(f"neither a zip archive nor torch's legacy format (starts with {magic!r:.40}, "
                         f"not the magic number {_LEGACY_MAGIC:#x})")
    version = _HeaderUnpickler(f).load()
    if version != _LEGACY_PROTOCOL:
        raise _Malformed(f"legacy protocol version {version!r}, expected {_LEGACY_PROTOCOL}")
    sys_info = _HeaderUnpickler(f).load()
    if not isinstance(sys_info, dict):
        raise _Malformed(f"legacy sys_info must be a dict, got {type(sys_info).__name__}")
    if sys_info.get("little_endian", True) is not True:
        raise _Malformed("written on a big-endian machine (sys_info little_endian False); only "
                         "little-endian files are supported")
    sections = {}

    def reader(key):
        def read():
            if key not in sections:
                raise _Malformed(f"storage {key!r} is used by a tensor but has no data after the pickle")
            return sections[key]
        return read

    unpickler = _TorchUnpickler(f, reader=reader, legacy=True)
    obj = unpickler.load()
    keys = _HeaderUnpickler(f).load()
    if not isinstance(keys, list) or not all(isinstance(k, (str, bytes)) for k in keys):
        raise _Malformed(f"the storage key list after the pickle must be a list of str, got {keys!r:.80}")
    pos, view = f.tell(), memoryview(raw)
    for key in map(_ascii, keys):
        storage = unpickler.storages.get(key)
        if storage is None:
            raise _Malformed(f"storage {key!r} is listed after the pickle but no tensor uses it")
        if pos + 8 > len(raw):
            raise _Malformed(f"truncated: storage {key!r} starts at byte {pos}, the file has {len(raw)}")
        (count,) = struct.unpack_from("<q", raw, pos)
        if count != storage.numel:
            raise _Malformed(f"storage {key!r} records {count} elements, the pickle says {storage.numel}")
        nbytes = count * storage.kind.dtype.itemsize
        if pos + 8 + nbytes > len(raw):
            raise _Malformed(f"truncated: storage {key!r} needs bytes {pos + 8}..{pos + 8 + nbytes}, the file "
                             f"has {len(raw)}")
        sections[key] = view[pos + 8: pos + 8 + nbytes]
        pos += 8 + nbytes
    entries = _state_dict_entries(obj)
    return {key: _materialize(key, ref) for key, ref in entries.items()}


def load_torch_state_dict(path):
    """Read a state dict saved by ``torch.save`` (a ``.pth``/``.pt`` file) into NumPy, without torch.

    path: str or os.PathLike. Both layouts ``torch.save`` writes are read (zip, the
    default since torch 1.6, and the legacy one; see the module docstring).
    Returns ``{name: np.ndarray}`` in the file's order, each a fresh C-contiguous
    array of the tensor's shape (0-d for scalars such as ``num_batches_tracked``)
    and dtype: float64, float32, float16, int64, int32, int16, int8, uint8, bool;
    bfloat16 tensors come back as float32 (exact). Views are resolved: a
    tensor's storage offset and strides are applied, and tensors that share a
    storage are read from one buffer (each result is its own copy). Values
    come back as stored (a NaN stays a NaN; ``pretrained.torchvision_model``
    checks them).

    A file whose top object is a dict holding the state dict under ``"model"``
    (torchvision's reference training checkpoints) or ``"state_dict"`` (e.g.
    Lightning) is unwrapped; other entries of that dict are ignored, but must
    themselves unpickle with the allow-list below (an ``argparse.Namespace``
    does not -- save ``model.state_dict()`` alone). Anything else that is not
    a flat dict of tensors raises ValueError.

    Safety: nothing in the file is imported or executed. The pickle may name
    only ``collections.OrderedDict``, ``torch._utils._rebuild_tensor``,
    ``_rebuild_tensor_v2``, ``_rebuild_parameter``, ``_rebuild_parameter_with_state``
    and the storage classes ``torch.{Double,Float,Half,BFloat16,Long,Int,Short,
    Char,Byte,Bool}Storage``; each maps to a NumPy-side builder here. Any other
    global (``os.system``, ``torch.nn.Module`` ...) raises ValueError naming it
    and the file. Storage locations (``cuda:0``) are ignored.

    Raises FileNotFoundError for a missing file, ValueError naming the file for
    an empty, truncated or corrupt one, a file of another format (an ``.npz``,
    random bytes, a TorchScript archive), a big-endian file, an unsupported
    storage type (complex, quantized), or a tensor that reaches outside its
    storage.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or os.PathLike, got {type(path).__name__}")
    path = Path(path)
    raw = path.read_bytes()
    if not raw:
        raise ValueError(f"{path}: empty file, not a torch.save file")
    try:
        if raw[:4] == b"PK\x03\x04":
            return _load_torch_zip(raw)
        if raw[257:262] == b"ustar":
            raise _Malformed("a tar archive: the format of torch < 0.1.10, not supported")
        return _load_torch_legacy(raw)
    except _Malformed as exc:
        raise ValueError(f"{path}: {exc}") from exc
    except Exception as exc:  # any parse failure of a corrupt file: one clear error naming it
        raise ValueError(f"{path}: not a readable torch.save file, truncated or corrupt "
                         f"({type(exc).__name__}: {exc})") from exc
