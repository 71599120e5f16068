"""Figures for chapter 04: anchors, IoU and non-maximum suppression.

Every function takes arrays computed by ``mrcnn_np`` (anchors, IoU, NMS keep
indices), draws, and returns the figure (or the axes it drew on). Boxes are
xyxy image pixels (y grows downwards, as in an image); images are (H, W, 3)
floats in [0, 1] or uint8.
"""
from __future__ import annotations

import numpy as np

__all__ = [
    "LEVEL_COLORS",
    "draw_boxes",
    "plot_base_anchors",
    "plot_anchor_centres",
    "plot_pyramid_anchors",
    "plot_anchor_counts",
    "plot_ratio_conventions",
    "plot_iou_heatmap",
    "plot_nms",
    "plot_anchors_overview",
]

#: one colour per FPN level P2..P6 (colour-blind friendly, distinct in grey)
LEVEL_COLORS = ("#0072b2", "#009e73", "#e69f00", "#cc79a7", "#d55e00")
#: one line style per aspect ratio (index within a location)
RATIO_STYLES = ("-", "--", ":")


def _axes(ax, figsize=(5, 5)):
    import matplotlib.pyplot as plt

    if ax is None:
        fig, ax = plt.subplots(figsize=figsize)
    return ax.figure, ax


def draw_boxes(ax, boxes, *, color="C0", lw=1.0, alpha=1.0, ls="-", label=None, fill=False,
               halo=False):
    """Draw (K, 4) xyxy boxes as rectangles on ``ax``; returns ``ax``.

    halo: outline each line in black so it reads on any photo.
    """
    from matplotlib import patheffects
    from matplotlib.patches import Rectangle

    effects = [patheffects.withStroke(linewidth=lw + 2, foreground="k")] if halo else None
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    for i, (x1, y1, x2, y2) in enumerate(boxes):
        ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=fill, edgecolor=color,
                               facecolor=color if fill else "none", lw=lw, alpha=alpha, ls=ls,
                               label=label if i == 0 else None, path_effects=effects))
    return ax


def _show_image(ax, image, *, dim=0.0):
    image = np.asarray(image)
    if image.dtype == np.uint8:
        image = image / 255.0
    image = np.asarray(image, dtype=np.float64)
    if dim:
        image = (1 - dim) * image + dim  # toward white so boxes stand out
    ax.imshow(image, vmin=0, vmax=1, cmap="gray" if image.ndim == 2 else None,
              extent=(0, image.shape[1], image.shape[0], 0), interpolation="bilinear")
    ax.set_xlim(0, image.shape[1])
    ax.set_ylim(image.shape[0], 0)


def plot_base_anchors(bases, labels, *, ratios=(0.5, 1.0, 2.0), ax=None):
    """The base anchors of every level drawn around one location (the origin).

    bases: list of (A, 4) zero-centred anchors (``base_anchors`` per level);
    labels: one name per level (e.g. "P2 (32)"); ratios: the ratio of each
    anchor within a level, for the line-style legend. Returns the figure.
    """
    from matplotlib.lines import Line2D

    fig, ax = _axes(ax, (6, 6))
    for l, (base, label) in enumerate(zip(bases, labels)):
        color = LEVEL_COLORS[l % len(LEVEL_COLORS)]
        for a, box in enumerate(np.asarray(base)):
            draw_boxes(ax, box, color=color, lw=1.6, ls=RATIO_STYLES[a % len(RATIO_STYLES)],
                       label=label if a == 0 else None)
    ax.plot([0], [0], "k+", ms=10)
    lim = float(np.abs(np.concatenate(bases)).max()) * 1.05
    ax.set_xlim(-lim, lim)
    ax.set_ylim(lim, -lim)
    ax.set_aspect("equal")
    ax.grid(alpha=0.3)
    ax.set_xlabel("x - centre (px)")
    ax.set_ylabel("y - centre (px)")
    level_legend = ax.legend(loc="upper right", fontsize=8, title="level (size)", title_fontsize=8)
    ax.add_artist(level_legend)
    handles = [Line2D([], [], color="k", ls=RATIO_STYLES[a % 3], label=f"h/w = {r:g}")
               for a, r in enumerate(ratios)]
    ax.legend(handles=handles, loc="lower right", fontsize=8)
    ax.set_title("base anchors of every level, one location", fontsize=10)
    return fig


def plot_anchor_centres(image, anchors, num_per_location, stride, *, show_locations=(), ax=None,
                        title=None, color="#ffb000"):
    """Anchor centres of one level over a photo, and all anchors of a few locations.

    image: (H, W, 3); anchors: (h * w * A, 4) of the level (``grid_anchors``);
    num_per_location: A; stride: the level's stride (for the title);
    show_locations: (y, x) feature cells whose A anchors are drawn. Returns the figure.
    """
    fig, ax = _axes(ax, (5, 6))
    _show_image(ax, image, dim=0.35)
    anchors = np.asarray(anchors, dtype=np.float64)
    A = int(num_per_location)
    centres = ((anchors[::A, :2] + anchors[::A, 2:]) / 2)
    ax.plot(centres[:, 0], centres[:, 1], ".", ms=2.5, color="k", alpha=0.7)
    H, W = np.asarray(image).shape[:2]
    gw = int(round(np.unique(centres[:, 0]).size))
    for k, (y, x) in enumerate(show_locations):
        i = (y * gw + x) * A
        for a in range(A):
            draw_boxes(ax, anchors[i + a], color=color, lw=1.8, ls=RATIO_STYLES[a % 3], halo=True)
        ax.plot(*centres[y * gw + x], "o", color=color, ms=6, mec="k")
    ax.set_xlim(0, W)
    ax.set_ylim(H, 0)
    ax.set_title(title or f"anchor centres every {stride} px ({len(centres)} locations)", fontsize=10)
    ax.set_xticks([])
    ax.set_yticks([])
    return fig


def plot_pyramid_anchors(levels, num_per_location, image_size, labels, *, positions=None,
                         neighbours=2, ax=None):
    """Every level's anchors on one canvas, one colour per level (a readable subset).

    levels: list of (h_l * w_l * A, 4) anchors (``pyramid_anchors``);
    num_per_location: A; image_size: (H, W) of the canvas; labels: one name per level.
    For each level the A anchors of ONE location are drawn (the location whose
    centre is nearest to ``positions[l]``, default spread along the diagonal),
    with the anchor centres of the surrounding (2 * neighbours + 1)^2
    locations as dots, which shows the level's stride. Returns the figure.
    """
    fig, ax = _axes(ax, (6.5, 6.5))
    H, W = image_size
    A = int(num_per_location)
    L = len(levels)
    if positions is None:
        f = np.array([0.08, 0.2, 0.36, 0.56, 0.74, 0.9, 0.95])[:L] if L <= 7 else np.linspace(0.1, 0.9, L)
        positions = [(fx * W, fx * H) for fx in f]
    for l, (anchors, label) in enumerate(zip(levels, labels)):
        color = LEVEL_COLORS[l % len(LEVEL_COLORS)]
        anchors = np.asarray(anchors, dtype=np.float64)
        centres = (anchors[::A, :2] + anchors[::A, 2:]) / 2
        p = int(np.argmin(((centres - np.asarray(positions[l])) ** 2).sum(1)))
        for a in range(A):
            draw_boxes(ax, anchors[p * A + a], color=color, lw=1.6, ls=RATIO_STYLES[a % 3],
                       label=label if a == 0 else None)
        # the lattice of centres around it
        xs = np.unique(centres[:, 0])
        ys = np.unique(centres[:, 1])
        j = int(np.searchsorted(xs, centres[p, 0]))
        i = int(np.searchsorted(ys, centres[p, 1]))
        gx = xs[max(0, j - neighbours):j + neighbours + 1]
        gy = ys[max(0, i - neighbours):i + neighbours + 1]
        mx, my = np.meshgrid(gx, gy)
        ax.plot(mx.ravel(), my.ravel(), "o", color=color, ms=2.5)
    draw_boxes(ax, [0, 0, W, H], color="k", lw=1.5)
    pad = 0.25 * max(H, W)
    ax.set_xlim(-pad, W + pad)
    ax.set_ylim(H + pad, -pad)
    ax.set_aspect("equal")
    ax.legend(loc="upper right", fontsize=8, title="level (size)", title_fontsize=8)
    ax.set_title(f"one location per level on a {H}x{W} image (black frame);\n"
                 "dots: neighbouring anchor centres, one stride apart", fontsize=10)
    return fig


def plot_anchor_counts(counts, labels, series_names, *, ax=None):
    """Anchors per level for several configurations, as grouped bars (log scale).

    counts: list (one per configuration) of per-level counts; labels: level
    names; series_names: configuration names. Each bar is annotated with its
    count and the legend with the total. Returns the figure.
    """
    fig, ax = _axes(ax, (7, 4))
    k = len(counts)
    x = np.arange(len(labels))
    width = 0.8 / k
    for i, (c, name) in enumerate(zip(counts, series_names)):
        pos = x + (i - (k - 1) / 2) * width
        bars = ax.bar(pos, c, width, label=f"{name}: total {sum(c):,}", color=f"C{i}")
        for b, v in zip(bars, c):
            ax.text(b.get_x() + b.get_width() / 2, v * 1.08, f"{v:,}", ha="center", va="bottom",
                    fontsize=7, rotation=0)
    ax.set_yscale("log")
    ax.set_ylim(top=max(max(c) for c in counts) * 6)
    ax.set_xticks(x, labels)
    ax.set_ylabel("anchors (log scale)")
    ax.legend(fontsize=8, loc="upper right")
    ax.set_title("anchors per FPN level", fontsize=10)
    return fig


def plot_ratio_conventions(tv_base, mp_base, ratios, *, axes=None):
    """torchvision (ratio = h / w) versus matterport (ratio = w / h), side by side.

    tv_base, mp_base: (R, 4) zero-centred anchors of one size for the same
    ratio values ``ratios`` (one per row). Returns the figure.
    """
    import matplotlib.pyplot as plt

    if axes is None:
        fig, axes = plt.subplots(1, 2, figsize=(9, 4.5))
    fig = axes[0].figure
    lim = float(np.abs(np.concatenate([tv_base, mp_base])).max()) * 1.15
    for ax, base, name in zip(axes, (tv_base, mp_base), ("torchvision: ratio = h / w",
                                                          "matterport: ratio = w / h")):
        for a, (box, r) in enumerate(zip(np.asarray(base, np.float64), ratios)):
            draw_boxes(ax, box, color=f"C{a}", lw=2, ls=RATIO_STYLES[a % 3], label=f"ratio {r:g}")
            w, h = box[2] - box[0], box[3] - box[1]
            ax.text(box[2], box[1] - 1, f"{r:g}: {w:.1f} x {h:.1f}", color=f"C{a}", fontsize=8,
                    ha="right", va="bottom")
        ax.set_xlim(-lim, lim)
        ax.set_ylim(lim, -lim)
        ax.set_aspect("equal")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
        ax.set_title(name, fontsize=10)
    fig.suptitle("the same numbers, transposed shapes (labels: w x h in px)", fontsize=10)
    return fig


def plot_iou_heatmap(image, iou_per_location, stride, gt_box, *, best_anchor=None, ax=None,
                     title=None):
    """IoU of a ground-truth box with the anchors of one level, as a heat map.

    image: (H, W, 3) or None (blank canvas of the grid's extent);
    iou_per_location: (h, w) IoU per feature cell (e.g. the max over its A
    anchors); stride: the level's stride, cell (i, j) is drawn centred on the
    anchor centre (j * stride, i * stride); gt_box: (4,) xyxy;
    best_anchor: (4,) drawn dashed. Returns the figure.
    """
    fig, ax = _axes(ax, (5.5, 6))
    h, w = iou_per_location.shape
    if image is not None:
        _show_image(ax, image, dim=0.2)
        H, W = np.asarray(image).shape[:2]
    else:
        H, W = h * stride, w * stride
    extent = (-stride / 2, (w - 0.5) * stride, (h - 0.5) * stride, -stride / 2)
    im = ax.imshow(np.ma.masked_less_equal(iou_per_location, 0), cmap="YlOrRd", vmin=0, vmax=1,
                   alpha=0.7, extent=extent, interpolation="nearest")
    fig.colorbar(im, ax=ax, fraction=0.04, pad=0.02, label="IoU (best of the location's anchors)")
    draw_boxes(ax, gt_box, color="#0072b2", lw=2.2, label="ground truth")
    if best_anchor is not None:
        draw_boxes(ax, best_anchor, color="k", lw=1.8, ls="--", label="best anchor")
    ax.set_xlim(0, W)
    ax.set_ylim(H, 0)
    ax.legend(fontsize=8, loc="lower right")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title or "IoU with every anchor of one level", fontsize=10)
    return fig


def plot_nms(boxes, scores, keep, *, image=None, threshold=None, axes=None):
    """Boxes before and after NMS, side by side, each labelled with its score.

    boxes: (N, 4); scores: (N,); keep: indices kept (``nms``); image: optional
    background. Removed boxes are shown faint on the right. Returns the figure.
    """
    import matplotlib.pyplot as plt

    if axes is None:
        fig, axes = plt.subplots(1, 2, figsize=(10, 4.5))
    fig = axes[0].figure
    boxes = np.asarray(boxes, np.float64)
    keep = np.asarray(keep)
    removed = np.setdiff1d(np.arange(len(boxes)), keep)
    cmap = plt.get_cmap("viridis")
    for k, ax in enumerate(axes):
        if image is not None:
            _show_image(ax, image, dim=0.45)
        shown = np.arange(len(boxes)) if k == 0 else keep
        if k == 1:
            for i in removed:
                draw_boxes(ax, boxes[i], color="0.35", lw=1.0, ls=":")
        placed = []
        for i in sorted(shown, key=lambda i: -scores[i]):
            c = cmap(float(scores[i]))
            draw_boxes(ax, boxes[i], color=c, lw=2.0, halo=True)
            x1, y1, x2, y2 = boxes[i]
            # label inside a corner, avoiding labels already placed
            corners = [(x1 + 3, y1 + 3, "left", "top"), (x2 - 3, y1 + 3, "right", "top"),
                       (x1 + 3, y2 - 3, "left", "bottom"), (x2 - 3, y2 - 3, "right", "bottom")]
            span = 0.06 * max(boxes[:, 2].max() - boxes[:, 0].min(), boxes[:, 3].max() - boxes[:, 1].min())
            for x, y, ha, va_ in corners:
                if all(abs(x - px) > 2 * span or abs(y - py) > span for px, py in placed):
                    break
            placed.append((x, y))
            ax.text(x, y, f"{scores[i]:.2f}", color="k", fontsize=8, ha=ha, va=va_,
                    bbox=dict(boxstyle="square,pad=0.15", fc=c, ec="k", lw=0.5, alpha=0.9))
        if image is None:
            lo = boxes.min(0)
            hi = boxes.max(0)
            m = 0.1 * max(hi[2] - lo[0], hi[3] - lo[1])
            ax.set_xlim(lo[0] - m, hi[2] + m)
            ax.set_ylim(hi[3] + m, lo[1] - m)
            ax.set_aspect("equal")
        ax.set_xticks([])
        ax.set_yticks([])
    thr = "" if threshold is None else f" (IoU > {threshold:g} removed)"
    axes[0].set_title(f"before NMS: {len(boxes)} boxes", fontsize=10)
    axes[1].set_title(f"after NMS: {len(keep)} kept{thr}; dotted: removed", fontsize=10)
    return fig


def plot_anchors_overview(image, level_anchors, num_per_location, stride, show_locations,
                          pyramid_levels, image_size, labels):
    """Two panels for ``images/anchors.png``: anchors over a photo, and the pyramid.

    Left: ``plot_anchor_centres`` of one level; right: ``plot_pyramid_anchors``.
    Returns the figure.
    """
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 6.2), gridspec_kw={"width_ratios": [1, 1.25]})
    plot_anchor_centres(image, level_anchors, num_per_location, stride,
                        show_locations=show_locations, ax=axes[0])
    plot_pyramid_anchors(pyramid_levels, num_per_location, image_size, labels, ax=axes[1])
    fig.tight_layout()
    return fig
