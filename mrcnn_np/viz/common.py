"""Helpers shared by the chapter figure modules: atomic saving, image paths."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path


def images_dir():
    """The repository's ``images/`` folder (created if missing)."""
    path = Path(__file__).resolve().parents[2] / "images"
    path.mkdir(exist_ok=True)
    return path


def save_figure(fig, path, **savefig_kwargs):
    """Write a matplotlib figure atomically: a temporary file, then a rename.

    A reader never sees a half-written image, even if the process is killed.
    path: file name (format from its suffix: .png, .gif via ``save_animation``).
    Returns the Path written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.stem + ".", suffix=path.suffix + ".tmp")
    os.close(fd)
    try:
        savefig_kwargs.setdefault("dpi", 100)
        savefig_kwargs.setdefault("bbox_inches", "tight")
        fig.savefig(tmp, format=path.suffix.lstrip(".") or "png", **savefig_kwargs)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; a figure is for everyone to read
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def save_animation(anim, path, *, fps=2):
    """Write a matplotlib animation as a GIF (Pillow writer) atomically."""
    from matplotlib.animation import PillowWriter

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.stem + ".", suffix=".tmp.gif")
    os.close(fd)
    try:
        anim.save(tmp, writer=PillowWriter(fps=fps))
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path
