"""Helpers shared by the chapter figure modules: atomic saving, image paths.

The notebooks save their figures into the repository's ``images/`` folder
with ``save_figure(fig, images_dir() / name)``. Those files are tracked, so a
notebook run by a test (nbmake) or by a reader in Jupyter must not rewrite
them: inside a notebook kernel a figure bound for ``images/`` is written there
only when the environment variable ``MRCNN_NP_WRITE_FIGURES=1`` is set, which
``python -m mrcnn_np figures`` does for the kernels it starts. Otherwise it
goes to a scratch folder (``<tempdir>/mrcnn_np_figures``) and the notebook
still shows it inline. Scripts (``python -m mrcnn_np demo``) and any other
destination are always written.

PNGs are written without a "Software" (matplotlib version) entry, so the same
figure gives the same bytes whatever matplotlib wrote it.
"""
from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

from .._atomic import atomic_path

#: set to "1" (by ``python -m mrcnn_np figures``) to let notebooks rewrite ``images/``
WRITE_FIGURES_ENV = "MRCNN_NP_WRITE_FIGURES"


def images_dir():
    """The repository's ``images/`` folder (created if missing)."""
    path = Path(__file__).resolve().parents[2] / "images"
    path.mkdir(exist_ok=True)
    return path


def scratch_dir():
    """Where notebook figures go when ``images/`` is not to be rewritten: ``<tempdir>/mrcnn_np_figures``."""
    return Path(tempfile.gettempdir()) / "mrcnn_np_figures"


def writes_images():
    """True when figures bound for ``images/`` may be written there.

    Always outside a notebook kernel; inside one (ipykernel loaded) only when
    ``MRCNN_NP_WRITE_FIGURES=1``.
    """
    return "ipykernel" not in sys.modules or os.environ.get(WRITE_FIGURES_ENV) == "1"


def figure_destination(path):
    """The path a figure meant for ``path`` is written to (see the module docstring)."""
    path = Path(path)
    if writes_images():
        return path
    try:
        inside = path.resolve().parent == images_dir().resolve()
    except OSError:  # pragma: no cover - unresolvable path: leave it alone
        inside = False
    return scratch_dir() / path.name if inside else path


def save_figure(fig, path, **savefig_kwargs):
    """Write a matplotlib figure atomically (a temporary file, then a rename).

    path: file name; the format comes from its suffix (.png, .svg, .pdf).
    savefig_kwargs: passed to ``fig.savefig`` (defaults dpi=100,
    bbox_inches="tight", and for PNG no "Software" metadata).
    Returns the Path written: ``path``, or its scratch twin when a notebook
    is not allowed to rewrite ``images/`` (module docstring).
    """
    path = figure_destination(path)
    fmt = path.suffix.lstrip(".") or "png"
    savefig_kwargs.setdefault("dpi", 100)
    savefig_kwargs.setdefault("bbox_inches", "tight")
    if fmt == "png":
        savefig_kwargs.setdefault("metadata", {"Software": None})
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=fmt, **savefig_kwargs)
    return path


def save_animation(anim, path, *, fps=2):
    """Write a matplotlib animation as a GIF (Pillow writer) atomically.

    Returns the Path written (redirected like ``save_figure``'s).
    """
    from matplotlib.animation import PillowWriter

    path = figure_destination(path)
    with atomic_path(path) as tmp:
        anim.save(tmp, writer=PillowWriter(fps=fps))
    return path
