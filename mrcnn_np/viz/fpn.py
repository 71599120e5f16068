"""Figures for chapter 03, the feature pyramid network.

Every plotting function takes arrays computed by ``mrcnn_np`` and draws;
feature maps are (C, H, W) arrays of ONE image. Returns the figure.
"""
from __future__ import annotations

import numpy as np

__all__ = [
    "plot_topdown_merge",
    "plot_pyramid_levels",
    "plot_object_footprint",
]


def _show(ax, m, *, cmap="viridis", vmin=None, vmax=None):
    im = ax.imshow(m, cmap=cmap, interpolation="nearest", extent=(0, m.shape[1], m.shape[0], 0),
                   vmin=vmin, vmax=vmax)
    ax.set_xticks([])
    ax.set_yticks([])
    return im


def plot_topdown_merge(steps, *, channel=0, cmap="viridis"):
    """The top-down merge, one row per level from the coarsest down.

    steps: list of dicts, coarsest level first, each with
        "name" (e.g. "P4"), "lateral" (C, h, w) the 1x1 conv of the backbone map,
        "top_down" (C, h, w) the upsampled map from the level above or None,
        "merged" (C, h, w) = lateral + top_down, "output" (C, h, w) after the 3x3.
    channel: the channel drawn. Panels in a row share a colour scale (1st to
    99th percentile of the row), shown by the row's colour bar; every panel
    fills its box, so a coarse level shows as big blocks (the nearest upsample
    copies each coarse cell into a block of fine cells).
    """
    import matplotlib.pyplot as plt

    cols = ("lateral", "top_down", "merged", "output")
    titles = ("lateral 1x1(C)", "upsampled from above", "merged = sum", "output 3x3(merged)")
    fig, axes = plt.subplots(len(steps), 4, figsize=(9.6, 2.3 * len(steps)), layout="constrained")
    axes = np.atleast_2d(axes)
    for r, step in enumerate(steps):
        maps = [step[c][channel] if step[c] is not None else None for c in cols]
        vals = np.concatenate([m.ravel() for m in maps if m is not None])
        lo, hi = np.percentile(vals, [1, 99])
        for j, (ax, m) in enumerate(zip(axes[r], maps)):
            if m is None:
                ax.text(0.5, 0.5, "(top level:\nnothing above)", ha="center", va="center",
                        transform=ax.transAxes, fontsize=8)
                ax.axis("off")
            else:
                im = _show(ax, m, cmap=cmap, vmin=lo, vmax=hi)
            if r == 0:
                ax.set_title(titles[j], fontsize=9)
            for side in ("top", "right"):
                ax.spines[side].set_visible(False)
        axes[r, 0].set_ylabel(f"{step['name']}  {tuple(step['merged'].shape[1:])}", fontsize=9)
        cbar = fig.colorbar(im, ax=list(axes[r]), shrink=0.85, aspect=15, pad=0.01)
        cbar.ax.tick_params(labelsize=7)
    fig.suptitle(f"channel {channel}; colour bar: the row's scale (values between its 1st and 99th "
                 "percentile)", fontsize=9)
    return fig


def plot_pyramid_levels(pyramid, *, names=None, channel=None, image_size=None, cmap="magma", ax=None):
    """All pyramid levels side by side at their true relative sizes.

    pyramid: list [P2 (C, H2, W2), ..., P6] of one image (level order, as ``fpn``).
    names: one label per level (default P2, P3, ...).
    channel: channel to draw, or None for the mean |activation| over channels.
    image_size: (H, W) of the input, to label each level's stride (H / h).
    Each level is drawn with one data unit per cell, so P3 is half as wide
    as P2, ..., P6 a 16th (stride 64 against 4); each is labelled with its
    size and stride. All levels share one colour scale (the smallest to the
    largest value drawn), shown by the colour bar, so levels can be compared.
    """
    import matplotlib.pyplot as plt

    if ax is None:
        fig, ax = plt.subplots(figsize=(11, 3.6))
    fig = ax.figure
    names = list(names) if names is not None else [f"P{k}" for k in range(2, 2 + len(pyramid))]
    H0, W0 = pyramid[0].shape[1:]
    x, gap = 0.0, max(4.0, 0.06 * W0)
    maps = [np.abs(f).mean(axis=0) if channel is None else f[channel] for f in pyramid]
    lo = min(float(m.min()) for m in maps)
    hi = max(float(m.max()) for m in maps)
    for name, m in zip(names, maps):
        h, w = m.shape
        im = ax.imshow(m, cmap=cmap, interpolation="nearest", extent=(x, x + w, h, 0), vmin=lo, vmax=hi)
        ax.add_patch(plt.Rectangle((x, 0), w, h, fill=False, ec="k", lw=0.8))
        label = f"{name}\n{h} x {w}"
        if image_size is not None:
            label += f"\nstride {image_size[0] / h:g}"
        ax.text(x + w / 2, h + 0.04 * H0, label, ha="center", va="top", fontsize=8)
        x += max(w, 0.25 * W0) + gap
    ax.set_xlim(-gap / 2, x - gap / 2)
    ax.set_ylim(H0 * 1.3, -0.02 * H0)
    ax.set_aspect("equal")
    ax.axis("off")
    what = "mean |activation|" if channel is None else f"channel {channel}"
    ax.set_title(f"pyramid levels at true relative size ({what}, one colour scale)", fontsize=10)
    cbar = fig.colorbar(im, ax=ax, fraction=0.025, pad=0.01, shrink=0.8)
    cbar.ax.tick_params(labelsize=7)
    cbar.set_label(what, fontsize=8)
    return fig


def plot_object_footprint(object_size, strides, *, names=None, window=None):
    """A square object of ``object_size`` pixels over the cell grid of each level.

    object_size: side of the object in pixels. strides: e.g. (4, 8, 16, 32, 64).
    names: level names (default P2, P3, ...). window: side in pixels of the
    image patch drawn (default 4 x the largest of object_size and max stride).
    Each panel draws the grid of one level (lines every ``stride`` pixels),
    the object (placed at an arbitrary, off-grid offset) and shades the
    cells whose centre falls inside it; the title gives
    ``object_size / stride`` cells across.
    """
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    strides = list(strides)
    names = names or [f"P{k}" for k in range(2, 2 + len(strides))]
    window = window or 2 * max(object_size, max(strides))
    fig, axes = plt.subplots(1, len(strides), figsize=(2.4 * len(strides), 2.8))
    axes = np.atleast_1d(axes)
    x0 = y0 = window / 2 - object_size / 2 + 0.3 * min(strides)
    for ax, s, name in zip(axes, strides, names):
        n = int(np.ceil(window / s))
        centres = (np.arange(n) + 0.5) * s
        inside_y = (centres >= y0) & (centres < y0 + object_size)
        inside_x = (centres >= x0) & (centres < x0 + object_size)
        for i in np.flatnonzero(inside_y):
            for j in np.flatnonzero(inside_x):
                ax.add_patch(Rectangle((j * s, i * s), s, s, fc="#fdae61", ec="none", alpha=0.8))
        for k in range(n + 1):
            ax.plot([0, n * s], [k * s, k * s], color="0.6", lw=0.6)
            ax.plot([k * s, k * s], [0, n * s], color="0.6", lw=0.6)
        ax.add_patch(Rectangle((x0, y0), object_size, object_size, fill=False, ec="#d7191c", lw=2))
        ax.set_xlim(0, window)
        ax.set_ylim(window, 0)
        ax.set_aspect("equal")
        ax.set_xticks([])
        ax.set_yticks([])
        cells = object_size / s
        ax.set_title(f"{name}, stride {s}\n{cells:g} x {cells:g} cells across", fontsize=9)
    fig.suptitle(f"a {object_size} x {object_size} px object on each level's grid "
                 "(shaded: cells whose centre is inside)", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.9))
    return fig
