"""Figures for chapters 07 (box head) and 08 (mask head).

Every function takes arrays computed by ``mrcnn_np`` and an optional axes (or
list of axes), draws, and returns the figure. Boxes are xyxy image pixels;
images are (H, W, 3) floats in [0, 1]. Labels are ints with 0 = background;
``class_names`` maps a label to a name.
"""
from __future__ import annotations

import numpy as np

from .anchors import _axes, draw_boxes  # one copy of the box-drawing helpers (chapter 04)

__all__ = [
    "CLASS_COLORS",
    "draw_boxes",
    "plot_sampled_rois",
    "plot_regression_targets",
    "plot_decoded_boxes",
    "plot_nms_before_after",
    "plot_layer_shapes",
    "plot_mask_targets",
    "plot_pasted_masks",
    "plot_paste_mechanics",
]

#: one colour per label: background grey, then squares, circles, triangles, ...
CLASS_COLORS = ("#7f7f7f", "#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b")


def _color(label):
    return CLASS_COLORS[int(label) % len(CLASS_COLORS)]


def _name(label, class_names):
    if class_names is not None and 0 <= int(label) < len(class_names):
        return class_names[int(label)]
    return f"class {int(label)}"


def _show_image(ax, image, *, alpha=1.0):
    image = np.asarray(image)
    ax.imshow(image, cmap="gray" if image.ndim == 2 else None, interpolation="nearest",
              extent=(0, image.shape[1], image.shape[0], 0), alpha=alpha)
    ax.set_xlim(0, image.shape[1])
    ax.set_ylim(image.shape[0], 0)
    ax.set_xticks([])
    ax.set_yticks([])


def plot_sampled_rois(image, gt_boxes, gt_labels, rois, labels, *, class_names=None, ax=None,
                      title=None):
    """Sampled RoIs over the image, coloured by their assigned label.

    image (H, W, 3); gt_boxes (G, 4), gt_labels (G,); rois (S, 4) and labels
    (S,) from ``select_training_samples``. Background RoIs are thin grey,
    foreground RoIs take their class colour; GT boxes are thick and dashed black.
    Returns the figure.
    """
    fig, ax = _axes(ax, (6, 6))
    _show_image(ax, image)
    rois = np.asarray(rois).reshape(-1, 4)
    labels = np.asarray(labels)
    bg = labels == 0
    draw_boxes(ax, rois[bg], color=_color(0), lw=0.6, alpha=0.6,
               label=f"background ({int(bg.sum())})")
    for c in np.unique(labels[~bg]):
        sel = labels == c
        draw_boxes(ax, rois[sel], color=_color(c), lw=1.2, alpha=0.9,
                   label=f"{_name(c, class_names)} ({int(sel.sum())})")
    draw_boxes(ax, gt_boxes, color="black", lw=2.0, ls="--", label="ground truth")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    ax.set_title(title or f"{len(rois)} sampled RoIs, {int((~bg).sum())} positive")
    return fig


def plot_regression_targets(image, proposals, matched_gt_boxes, targets, *, ax=None):
    """Regression targets as arrows from each proposal's centre to its GT's centre.

    proposals (P, 4) positive RoIs, matched_gt_boxes (P, 4) their GT boxes,
    targets (P, 4) the encoded (dx, dy, dw, dh). Proposals are dashed and
    numbered, GT boxes solid black; the numbered deltas are listed beside the
    image. Returns the figure.
    """
    fig, ax = _axes(ax, (8.5, 5.5))
    _show_image(ax, image, alpha=0.5)
    proposals = np.asarray(proposals).reshape(-1, 4)
    gts = np.asarray(matched_gt_boxes).reshape(-1, 4)
    draw_boxes(ax, gts, color="black", lw=2.0)
    lines = ["  #     dx     dy     dw     dh"]
    for i, (p, g, t) in enumerate(zip(proposals, gts, np.asarray(targets).reshape(-1, 4))):
        color = f"C{i % 10}"
        draw_boxes(ax, p, color=color, lw=1.2, ls="--")
        pc = ((p[0] + p[2]) / 2, (p[1] + p[3]) / 2)
        gc = ((g[0] + g[2]) / 2, (g[1] + g[3]) / 2)
        ax.annotate("", xy=gc, xytext=pc, arrowprops=dict(arrowstyle="->", color=color, lw=1.8))
        ax.text(*pc, str(i), color="white", fontsize=7, ha="center", va="center", fontweight="bold",
                bbox=dict(boxstyle="circle,pad=0.2", fc=color, ec="none"))
        lines.append(f"{i:3d} {t[0]:+6.2f} {t[1]:+6.2f} {t[2]:+6.2f} {t[3]:+6.2f}")
    ax.text(1.03, 0.98, "\n".join(lines), transform=ax.transAxes, va="top", ha="left", family="monospace",
            fontsize=8.5)
    ax.set_title("regression targets: proposal (dashed) centre -> GT (black) centre\n"
                 "(dx, dy, dw, dh) with weights (10, 10, 5, 5)", fontsize=10)
    return fig


def plot_decoded_boxes(image, proposals, decoded, gt_boxes, *, ax=None, title=None):
    """Proposals (dashed) and the boxes their predicted deltas decode to (solid).

    proposals (P, 4), decoded (P, 4) for the class of interest, gt_boxes (G, 4).
    Returns the figure.
    """
    fig, ax = _axes(ax, (6, 6))
    _show_image(ax, image, alpha=0.5)
    draw_boxes(ax, gt_boxes, color="black", lw=2.5, label="ground truth")
    draw_boxes(ax, proposals, color="#ff7f0e", lw=0.8, ls="--", alpha=0.8, label="proposal")
    draw_boxes(ax, decoded, color="#1f77b4", lw=1.0, alpha=0.9, label="decoded")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    ax.set_title(title or "proposals and decoded boxes")
    return fig


def plot_nms_before_after(image, before, after, *, class_names=None, axes=None, max_listed=15):
    """Two panels: candidate detections before and after per-class NMS.

    before, after: (boxes (D, 4), scores (D,), labels (D,)) triples. Boxes take
    their class colour (the key below the panels); line width and opacity grow
    with the score. The kept boxes are numbered and listed (class, score)
    beside the second panel. Returns the figure.
    """
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    if axes is None:
        fig, axes = plt.subplots(1, 2, figsize=(12, 5.2))
    fig = axes[0].figure
    for ax, (boxes, scores, labels), name, annotate in zip(
            axes, (before, after), ("before NMS", "after per-class NMS"), (False, True)):
        _show_image(ax, image, alpha=0.6)
        boxes = np.asarray(boxes).reshape(-1, 4)
        for i, (b, s, lab) in enumerate(zip(boxes, scores, labels)):
            draw_boxes(ax, b, color=_color(lab), lw=0.5 + 2.5 * float(s), alpha=0.35 + 0.65 * float(s))
            if annotate and i < max_listed:
                ax.text(b[0] + 1.5 * (i % 3), b[1] + 1 + 2.5 * (i % 3), str(i), color="white", fontsize=7,
                        ha="left", va="top", bbox=dict(fc=_color(lab), ec="none", alpha=0.9, pad=0.6))
        ax.set_title(f"{name}: {len(boxes)} boxes")
        if annotate:
            lines = ["  #  class      score"] + [
                f"{i:3d}  {_name(lab, class_names):9s}  {s:.3f}"
                for i, (s, lab) in enumerate(zip(scores[:max_listed], labels[:max_listed]))]
            ax.text(1.03, 0.98, "\n".join(lines), transform=ax.transAxes, va="top", ha="left",
                    family="monospace", fontsize=8.5)
    present = sorted({int(v) for v in np.concatenate([np.asarray(before[2]).ravel(), np.asarray(after[2]).ravel()])})
    if present:
        handles = [Line2D([], [], color=_color(v), lw=3) for v in present]
        fig.legend(handles, [_name(v, class_names) for v in present], loc="upper center",
                   bbox_to_anchor=(0.5, 0.095), ncol=len(present), frameon=False, fontsize=9,
                   title="box colour = predicted class", title_fontsize=9)
    return fig


def plot_layer_shapes(layers, *, branches=(), ax=None, title=None):
    """A diagram of a network's layers: one block per tensor, annotated with its shape.

    layers: list of (name, shape) pairs applied one after the other, input first, e.g.
        [("RoIAlign", (512, 256, 7, 7)), ("flatten", (512, 12544)), ...].
    branches: optional list of (name, shape) outputs that all read the LAST
        layer (e.g. the box head's ``cls_score`` and ``bbox_pred``); drawn in
        one column after the chain.
    The block height grows with log(number of values per RoI); a name "a + b" is
    drawn on two lines. Returns the figure.
    """
    import matplotlib.pyplot as plt
    from matplotlib.patches import FancyBboxPatch

    layers, branches = list(layers), list(branches)
    n_cols = len(layers) + (1 if branches else 0)
    if ax is None:
        fig, ax = plt.subplots(figsize=(1.55 * n_cols + 0.5, 3.4 if not branches else 4.2))
    fig = ax.figure
    top = max(np.log10(max(int(np.prod(shape[1:])), 2)) for _, shape in layers + branches)

    def block(x, y, name, shape, color):
        v = max(int(np.prod(shape[1:])), 2)
        h = 0.3 + 1.7 * np.log10(v) / top
        ax.add_patch(FancyBboxPatch((x, y - h / 2), 1.0, h, boxstyle="round,pad=0.03", fc=color,
                                    ec="black", alpha=0.85))
        ax.text(x + 0.5, y + h / 2 + 0.12, name.replace(" + ", "\n+ "), ha="center", va="bottom",
                fontsize=8, fontweight="bold")
        ax.text(x + 0.5, y - h / 2 - 0.12, "x".join(str(s) for s in shape), ha="center", va="top",
                fontsize=7.5)

    for i, (name, shape) in enumerate(layers):
        block(i * 1.5, 0.0, name, shape, plt.cm.viridis(0.15 + 0.7 * i / max(n_cols - 1, 1)))
        if i:
            ax.annotate("", xy=(i * 1.5 - 0.02, 0), xytext=(i * 1.5 - 0.48, 0),
                        arrowprops=dict(arrowstyle="->", lw=1.2))
    x = len(layers) * 1.5
    ys = np.linspace(1.1, -1.1, len(branches)) if len(branches) > 1 else [0.0]
    for (name, shape), y in zip(branches, ys):
        block(x, y, name, shape, plt.cm.viridis(0.85))
        ax.annotate("", xy=(x - 0.02, y), xytext=(x - 0.48, 0), arrowprops=dict(arrowstyle="->", lw=1.2))
    ax.set_xlim(-0.3, 1.5 * n_cols - 0.2)
    span = 2.3 if branches else 1.6
    ax.set_ylim(-span, span + 0.2)
    ax.axis("off")
    if title:
        ax.set_title(title)
    return fig


def plot_mask_targets(image, gt_mask, rois, targets, *, titles=None, figsize=None):
    """A GT mask, several RoIs around it, and each RoI's M x M mask target.

    image (H, W, 3); gt_mask (H, W) bool; rois (P, 4); targets (P, M, M) from
    ``project_masks_on_boxes``. Left: the image with the mask tinted and the
    RoIs drawn; right: one panel per target (grey scale 0..1).
    Returns the figure.
    """
    import matplotlib.pyplot as plt

    rois = np.asarray(rois).reshape(-1, 4)
    p = len(rois)
    fig, axes = plt.subplots(1, p + 1, figsize=figsize or (3.0 * (p + 1), 3.3),
                             gridspec_kw=dict(width_ratios=[1.6] + [1] * p))
    ax = axes[0]
    _show_image(ax, image)
    tint = np.zeros(gt_mask.shape + (4,))
    tint[gt_mask] = (1.0, 1.0, 1.0, 0.35)
    ax.imshow(tint, extent=(0, gt_mask.shape[1], gt_mask.shape[0], 0), interpolation="nearest")
    h, w = gt_mask.shape
    ax.contour(np.arange(w) + 0.5, np.arange(h) + 0.5, gt_mask.astype(float), levels=[0.5],
               colors="white", linewidths=1.5)
    # number each RoI at a different corner (top-left, top-right, bottom-left, bottom-right)
    # so that RoIs sharing a corner do not print their numbers on top of each other
    corners = ((0, 1, "left", "bottom", -1), (2, 1, "right", "bottom", -1),
               (0, 3, "left", "top", 1), (2, 3, "right", "top", 1))
    for i, b in enumerate(rois):
        draw_boxes(ax, b, color=f"C{i}", lw=1.6)
        xi, yi, ha, va, dy = corners[i % 4]
        ax.text(b[xi], b[yi] + dy, str(i), color=f"C{i}", fontsize=9, fontweight="bold", ha=ha, va=va)
    ax.set_title("GT mask (white outline) and RoIs")
    for i, (ax, t) in enumerate(zip(axes[1:], targets)):
        ax.imshow(t, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        for s in ax.spines.values():
            s.set_edgecolor(f"C{i}")
            s.set_linewidth(2.5)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(titles[i] if titles else f"RoI {i}: {t.shape[0]}x{t.shape[1]} target", fontsize=9)
    fig.tight_layout()
    return fig


def plot_pasted_masks(image, small_masks, boxes, pasted, *, gt_masks=None, threshold=0.5, labels=None,
                      class_names=None):
    """Predicted M x M masks, their pasted full-image versions, and the thresholded result.

    image (H, W, 3); small_masks (D, M, M) probabilities; boxes (D, 4);
    pasted (D, H, W) from ``paste_masks_in_image``; gt_masks (D, H, W) optional,
    outlined in the last panel. Returns the figure: a row of small masks on top,
    then the soft paste (max over detections) and the thresholded overlay.
    """
    import matplotlib.pyplot as plt

    d = len(small_masks)
    fig = plt.figure(figsize=(max(2.0 * d, 10), 7.6))
    grid = fig.add_gridspec(2, 1, height_ratios=[1, 2.3])
    top = grid[0].subgridspec(1, max(d, 1))
    bottom = grid[1].subgridspec(1, 2)
    for i in range(d):
        ax = fig.add_subplot(top[0, i])
        ax.imshow(small_masks[i], cmap="magma", vmin=0, vmax=1, interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        lab = f"{_name(labels[i], class_names)}" if labels is not None else f"det {i}"
        ax.set_title(f"{lab}\n{small_masks[i].shape[0]}x{small_masks[i].shape[1]}", fontsize=8)
    ax = fig.add_subplot(bottom[0, 0])
    soft = pasted.max(axis=0) if len(pasted) else np.zeros(image.shape[:2])
    im = ax.imshow(soft, cmap="magma", vmin=0, vmax=1, interpolation="nearest")
    draw_boxes(ax, boxes, color="cyan", lw=1.0)
    ax.set_xticks([])
    ax.set_yticks([])
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02)
    ax.set_title("pasted probabilities (max over detections)", fontsize=10)
    ax = fig.add_subplot(bottom[0, 1])
    _show_image(ax, image)
    overlay = np.zeros(image.shape[:2] + (4,))
    for i in range(len(pasted)):
        rgb = np.array([int(_color(labels[i] if labels is not None else i + 1)[k:k + 2], 16)
                        for k in (1, 3, 5)]) / 255
        overlay[pasted[i] > threshold] = (*rgb, 0.6)
    ax.imshow(overlay, extent=(0, image.shape[1], image.shape[0], 0), interpolation="nearest")
    if gt_masks is not None:
        for g in gt_masks:
            ax.contour(np.arange(g.shape[1]) + 0.5, np.arange(g.shape[0]) + 0.5, g.astype(float), levels=[0.5],
                       colors="white", linewidths=1.0)
    ax.set_title(f"thresholded at {threshold} (GT outline white)", fontsize=10)
    return fig


def plot_paste_mechanics(mask, box, expanded_box, pasted, *, crop_margin=3):
    """How one M x M mask is pasted: the padded mask, the box grown by (M+2)/M and
    truncated to integers, and the resized result on the pixel grid.

    mask: (M, M) probabilities; box: (4,) the detection box; expanded_box: (4,)
    the integer box (x1, y1, x2, y2), pixels x1..x2 inclusive; pasted: (H, W).
    Returns the figure.
    """
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4.6))
    padded = np.pad(mask, 1)
    axes[0].imshow(padded, cmap="magma", vmin=0, vmax=1, interpolation="nearest")
    axes[0].set_title(f"mask padded by 1: {padded.shape[0]}x{padded.shape[1]}")
    axes[0].set_xticks([])
    axes[0].set_yticks([])
    ax = axes[1]
    x1, y1, x2, y2 = (int(v) for v in expanded_box)
    h, w = pasted.shape
    lo_x, hi_x = max(x1 - crop_margin, 0), min(x2 + 1 + crop_margin, w)
    lo_y, hi_y = max(y1 - crop_margin, 0), min(y2 + 1 + crop_margin, h)
    ax.imshow(pasted, cmap="magma", vmin=0, vmax=1, interpolation="nearest", extent=(0, w, h, 0))
    ax.set_xlim(lo_x, hi_x)
    ax.set_ylim(hi_y, lo_y)
    draw_boxes(ax, box, color="cyan", lw=2.0, label="detection box")
    draw_boxes(ax, [x1, y1, x2 + 1, y2 + 1], color="lime", lw=1.5, ls="--",
               label=f"integer box, pixels {x1}..{x2} x {y1}..{y2}")
    ax.set_xticks(np.arange(lo_x, hi_x + 1, 5))
    ax.set_yticks(np.arange(lo_y, hi_y + 1, 5))
    ax.grid(color="white", alpha=0.15, lw=0.5)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    ax.set_title("pasted (pixel squares; box edges on pixel borders)")
    fig.tight_layout()
    return fig
