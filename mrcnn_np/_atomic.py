"""Atomic file writes: everything the project writes goes through here.

A file is written under a temporary name in its destination folder and then
renamed over the target (``os.replace`` is atomic on POSIX and Windows), so a
reader never sees a half-written checkpoint, results file, figure or notebook,
even if the writer is killed.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path, *, mode=0o644):
    """Yield a temporary path next to ``path``; on success rename it to ``path``.

    The temporary name keeps the target's suffix (``figure.abc123.tmp.png``) so
    writers that infer the format from the name (matplotlib, Pillow) work.
    On an exception the temporary file is removed and ``path`` is untouched.
    mode: permission bits of the final file (mkstemp alone would give 0600).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.stem + ".", suffix=".tmp" + path.suffix)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, mode)
        fd = os.open(tmp, os.O_RDONLY)  # the bytes reach the disk before the name does
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
