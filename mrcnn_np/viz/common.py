"""Helpers shared by the chapter figure modules: atomic saving, image paths."""
from __future__ import annotations

from pathlib import Path

from .._atomic import atomic_path


def images_dir():
    """The repository's ``images/`` folder (created if missing)."""
    path = Path(__file__).resolve().parents[2] / "images"
    path.mkdir(exist_ok=True)
    return path


def save_figure(fig, path, **savefig_kwargs):
    """Write a matplotlib figure atomically (a temporary file, then a rename).

    path: file name; the format comes from its suffix (.png, .svg, .pdf).
    savefig_kwargs: passed to ``fig.savefig`` (defaults dpi=100, bbox_inches="tight").
    Returns the Path written.
    """
    path = Path(path)
    savefig_kwargs.setdefault("dpi", 100)
    savefig_kwargs.setdefault("bbox_inches", "tight")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=path.suffix.lstrip(".") or "png", **savefig_kwargs)
    return path


def save_animation(anim, path, *, fps=2):
    """Write a matplotlib animation as a GIF (Pillow writer) atomically."""
    from matplotlib.animation import PillowWriter

    path = Path(path)
    with atomic_path(path) as tmp:
        anim.save(tmp, writer=PillowWriter(fps=fps))
    return path
