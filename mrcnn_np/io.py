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
"""
from __future__ import annotations

import json
import struct
import zipfile
from pathlib import Path

import numpy as np

from ._atomic import atomic_path

__all__ = ["save_checkpoint", "load_checkpoint", "save_safetensors", "load_safetensors"]

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
        out[key] = arr
    return out


def _check_suffix(path, suffix):
    path = Path(path)
    if path.suffix != suffix:
        raise ValueError(f"path must end in {suffix!r}, got {str(path)!r}")
    return path


def save_checkpoint(path, params, *, meta=None):
    """Write ``params`` (and a JSON-serialisable ``meta`` dict) to ``path`` (.npz), atomically.

    params: {name: array} (numeric arrays of any shape). meta: dict or None,
    e.g. ``{"step": 1200, "config": {...}}``; it must survive ``json.dumps``.
    Returns the path.
    """
    path = _check_suffix(path, ".npz")
    arrays = _check_params(params)
    if meta is not None and not isinstance(meta, dict):
        raise TypeError(f"meta must be a dict or None, got {type(meta).__name__}")
    try:
        text = json.dumps(meta if meta is not None else {}, sort_keys=True)
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
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {key: data[key] for key in data.files}
    except ValueError as exc:  # object arrays refuse to load without pickle
        raise ValueError(f"{path}: not a pickle-free checkpoint ({exc})") from exc
    meta_arr = arrays.pop(META_KEY, None)
    meta = {} if meta_arr is None else json.loads(str(meta_arr))
    return arrays, meta


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
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
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
    path = Path(path)
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
