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
    "detection_sources",
    "wrong_class_detections",
    "plot_box_head_stages",
    "plot_class_score_bars",
    "plot_wrong_class",
    "mask_ious_of_matches",
    "plot_mask_predictions",
    "plot_mask_failures",
    "plot_score_threshold",
    "plot_mask_channels",
]

#: one colour per label: background grey, then squares, circles, triangles, ...
CLASS_COLORS = ("#7f7f7f", "#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b")
#: predicted masks in the failure figure (outlined with a black halo, readable on any shape colour)
PRED_COLOR = "#ff33ff"


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


# =========================================================================== the trained heads (chapters 07, 08)


def detection_sources(refined_boxes, labels, boxes):
    """Which RoI each final detection came from.

    refined_boxes: (R, K+1, 4), every RoI decoded with every class's deltas (an
    ImageTrace's ``refined_boxes``); labels (E,), boxes (E, 4): the detections in
    the same (resized) frame (an ImageTrace's ``predictions``). A detection is a
    copy of ``refined_boxes[r, label]`` for one RoI r (the score threshold and
    NMS only select), so r is found by exact comparison.
    Returns (E,) int64 RoI indices; -1 where no RoI matches exactly.
    """
    refined = np.asarray(refined_boxes)
    labels = np.asarray(labels, dtype=np.int64)
    boxes = np.asarray(boxes).reshape(-1, 4)
    out = np.full(len(labels), -1, dtype=np.int64)
    for e, (lab, box) in enumerate(zip(labels, boxes)):
        hits = np.flatnonzero(np.all(refined[:, lab] == box, axis=1))
        if hits.size:
            out[e] = hits[0]
    return out


def wrong_class_detections(gts, traces, *, iou_threshold=0.5, min_score=0.0):
    """Detections that sit on an object of ANOTHER class, best score first.

    gts: list over images of dicts with "boxes" (G, 4) and "labels" (G,) in
    original pixels (``ShapesDataset`` samples); traces: the ImageTraces of the
    same images. A detection of score >= ``min_score`` is listed when the object
    it overlaps most (box IoU) reaches ``iou_threshold`` and has a different
    label: a confusion, or a wrong-class duplicate that per-class NMS cannot
    remove (it only compares boxes of one class).
    Returns a list of dicts: "image", "detection" (index into the trace's
    detections), "roi" (the RoI it came from, :func:`detection_sources`), "gt"
    (index of the object), "gt_label", "label", "score", "iou", and
    "also_right": the index of the best-scoring detection of the object's own
    class that overlaps it at ``iou_threshold`` (None if there is none, i.e. the
    object is only found as the wrong class).
    """
    from ..boxes import box_iou

    found = []
    for i, (gt, t) in enumerate(zip(gts, traces)):
        det = t.detections
        g_boxes = np.asarray(gt["boxes"], dtype=np.float64).reshape(-1, 4)
        g_labels = np.asarray(gt["labels"])
        if not len(g_boxes) or not len(det["labels"]):
            continue
        iou = box_iou(np.asarray(det["boxes"], dtype=np.float64), g_boxes)          # (E, G)
        sources = detection_sources(t.refined_boxes, t.predictions["labels"], t.predictions["boxes"])
        for e in range(len(det["labels"])):
            g = int(np.argmax(iou[e]))
            score = float(det["scores"][e])
            if score < min_score or iou[e, g] < iou_threshold or det["labels"][e] == g_labels[g]:
                continue
            right = np.flatnonzero((det["labels"] == g_labels[g]) & (iou[:, g] >= iou_threshold))
            found.append({"image": i, "detection": e, "roi": int(sources[e]), "gt": g,
                          "gt_label": int(g_labels[g]), "label": int(det["labels"][e]), "score": score,
                          "iou": float(iou[e, g]), "also_right": int(right[0]) if right.size else None})
    found.sort(key=lambda d: -d["score"])
    return found


def plot_box_head_stages(image, proposals, proposal_scores, class_scores, refined_boxes, *, gt_boxes=None,
                         class_names=None, top=20):
    """The box head at work on the ``top`` best proposals, in three panels.

    proposals (R, 4) with their RPN scores (R,), sorted best first (an
    ImageTrace's ``proposals`` and ``proposal_scores``); class_scores (R, K+1)
    softmax; refined_boxes (R, K+1, 4). Left: the proposals (grey, numbered);
    middle: each coloured by its most likely class, line width and opacity
    growing with that probability; right: each proposal whose most likely class
    is not background (dotted) and its box refined with that class's deltas
    (solid), joined centre to centre. gt_boxes: dashed black. Returns the figure.
    """
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    proposals = np.asarray(proposals, dtype=np.float64)[:top]
    scores = np.asarray(class_scores, dtype=np.float64)[:top]
    refined = np.asarray(refined_boxes, dtype=np.float64)[:top]
    best = scores.argmax(axis=1)
    p_best = scores.max(axis=1)
    fig, axes = plt.subplots(1, 3, figsize=(14, 5.0))
    for ax in axes:
        _show_image(ax, image, alpha=0.5)
    for k, b in enumerate(proposals):
        draw_boxes(axes[0], b, color="0.25", lw=0.9)
    axes[0].set_title(f"1. the {len(proposals)} best proposals (RPN)", fontsize=10)
    for k in np.argsort(p_best, kind="stable"):
        draw_boxes(axes[1], proposals[k], color=_color(best[k]), lw=0.5 + 2.0 * p_best[k], alpha=0.3 + 0.7 * p_best[k])
    present = sorted(set(best.tolist()))
    axes[1].legend([Line2D([], [], color=_color(c), lw=2.5) for c in present],
                   [f"{_name(c, class_names)}: {int((best == c).sum())}" for c in present],
                   loc="upper center", bbox_to_anchor=(0.5, -0.01), ncol=len(present), fontsize=8.5,
                   frameon=False, title="most likely class (width = its probability)", title_fontsize=8.5)
    axes[1].set_title("2. class scores (softmax over K+1)", fontsize=10)
    fg = np.flatnonzero(best > 0)
    for k in fg:
        b, a, c = proposals[k], refined[k, best[k]], _color(best[k])
        draw_boxes(axes[2], b, color=c, lw=1.0, ls=(0, (1.5, 1.5)))
        draw_boxes(axes[2], a, color=c, lw=1.8)
        axes[2].annotate("", xy=((a[0] + a[2]) / 2, (a[1] + a[3]) / 2), xytext=((b[0] + b[2]) / 2, (b[1] + b[3]) / 2),
                         arrowprops=dict(arrowstyle="->", color=c, lw=1.0, shrinkA=0, shrinkB=0))
    axes[2].legend([Line2D([], [], color="0.3", lw=1.0, ls=(0, (1.5, 1.5))), Line2D([], [], color="0.3", lw=1.8)],
                   ["proposal", "refined with its class's deltas"], loc="upper center", bbox_to_anchor=(0.5, -0.01),
                   ncol=2, fontsize=8.5, frameon=False)
    axes[2].set_title(f"3. class-specific refinement ({len(fg)} foreground)", fontsize=10)
    if gt_boxes is not None:
        for ax in axes:
            draw_boxes(ax, gt_boxes, color="k", lw=1.5, ls="--")
    fig.tight_layout()
    return fig


def plot_class_score_bars(rows, class_names, *, row_names=None, ax=None, title=None):
    """Grouped horizontal bars: the class probabilities of a few RoIs.

    rows: (N, K+1) softmax rows (an ImageTrace's ``class_scores[r]``);
    class_names: K+1 names; row_names: N legend entries. Returns the figure.
    """
    fig, ax = _axes(ax, (4.5, 3.2))
    rows = np.atleast_2d(np.asarray(rows, dtype=np.float64))
    n, k1 = rows.shape
    height = 0.8 / n
    hatches = ("", "//", "..", "xx")
    for j, row in enumerate(rows):
        ys = np.arange(k1) + (j - (n - 1) / 2) * height
        ax.barh(ys, row, height=height * 0.95, color=[_color(c) for c in range(k1)], hatch=hatches[j % 4],
                edgecolor="white", label=row_names[j] if row_names else f"RoI {j}")
        for y, v in zip(ys, row):
            ax.text(min(v, 1.0) + 0.02, y, f"{v:.2f}", va="center", fontsize=8)
    ax.set_yticks(np.arange(k1), [_name(c, class_names) for c in range(k1)])
    ax.invert_yaxis()
    ax.set_xlim(0, 1.18)
    ax.set_xlabel("probability (softmax)")
    ax.spines[["top", "right"]].set_visible(False)
    if n > 1 or row_names:
        leg = ax.legend(loc="lower right", fontsize=8, frameon=False)
        for h in leg.legend_handles:
            h.set_facecolor("0.75")
    if title:
        ax.set_title(title, fontsize=10)
    return fig


def plot_wrong_class(image, gt_box, gt_label, detections, wrong, *, roi_box=None, right=None, class_rows=None,
                     row_names=None, class_names=None, margin=6):
    """One wrong-class detection: where it sits, and the class scores that produced it.

    image (H, W, 3); gt_box (4,), gt_label: the object; detections: dict with
    "boxes", "labels", "scores" (original pixels); wrong: index of the wrong
    detection; right: index of a detection of the object's own class (or None);
    roi_box: (4,) the RoI the wrong detection came from (dotted gold); class_rows:
    (N, K+1) class probabilities to show as bars (the RoIs of ``wrong`` and
    ``right``), row_names their legend. The left panel zooms on the object and
    those boxes (``margin`` pixels around them).
    Returns the figure.
    """
    import matplotlib.pyplot as plt

    fig, (a0, a1) = plt.subplots(1, 2, figsize=(10.5, 4.4), gridspec_kw={"width_ratios": [1, 1.15]})
    _show_image(a0, image)
    boxes = np.asarray(detections["boxes"], dtype=np.float64)
    draw_boxes(a0, gt_box, color="k", lw=1.8, ls="--", label=f"object: {_name(gt_label, class_names)}")
    if roi_box is not None:
        draw_boxes(a0, roi_box, color="#ffd700", lw=1.6, ls=(0, (1.5, 1.5)), label="its RoI (proposal)")
    shown = [(wrong, "wrong class")] + ([(right, "right class")] if right is not None else [])
    for e, what in shown:
        lab = int(detections["labels"][e])
        draw_boxes(a0, boxes[e], color=_color(lab), lw=2.2,
                   label=f"{what}: {_name(lab, class_names)} {float(detections['scores'][e]):.2f}")
    # the view: every box drawn, plus a margin
    drawn = [np.asarray(gt_box, dtype=np.float64)] + [boxes[e] for e, _ in shown]
    if roi_box is not None:
        drawn.append(np.asarray(roi_box, dtype=np.float64))
    drawn = np.stack(drawn)
    x1, y1 = drawn[:, :2].min(axis=0)
    x2, y2 = drawn[:, 2:].max(axis=0)
    h, w = np.asarray(image).shape[:2]
    a0.set_xlim(max(x1 - margin, 0), min(x2 + margin, w))
    a0.set_ylim(min(y2 + margin, h), max(y1 - margin, 0))
    a0.legend(loc="upper center", bbox_to_anchor=(0.5, -0.01), ncol=2, fontsize=8, frameon=False)
    a0.set_title("zoom on the object and the boxes on it", fontsize=10)
    if class_rows is not None:
        plot_class_score_bars(class_rows, class_names, row_names=row_names, ax=a1,
                              title="class probabilities of the RoIs the detections came from")
    else:
        a1.axis("off")
    fig.tight_layout()
    return fig


def mask_ious_of_matches(gts, traces, *, iou_threshold=0.5, min_score=0.5, threshold=0.5):
    """Mask IoU of every detection that found its object, to find where masks fail.

    gts: list over images of dicts with "boxes", "labels", "masks" (G, H, W) bool
    (original pixels); traces: their ImageTraces. Per image, detections with
    score >= ``min_score`` are matched greedily, best score first, to the
    unmatched object of THEIR class with the highest box IoU >= iou_threshold
    (as COCO matches at one threshold). For each match, the pasted mask
    (``> threshold``) is compared with the object's mask.
    Returns a list of dicts sorted by mask IoU, lowest first: "image",
    "detection", "gt", "label", "score", "box_iou", "mask_iou".
    """
    from ..boxes import box_iou

    out = []
    for i, (gt, t) in enumerate(zip(gts, traces)):
        det = t.detections
        g_boxes = np.asarray(gt["boxes"], dtype=np.float64).reshape(-1, 4)
        if not len(g_boxes) or not len(det["labels"]):
            continue
        ious = box_iou(np.asarray(det["boxes"], dtype=np.float64), g_boxes)
        free = np.ones(len(g_boxes), bool)
        for e in np.argsort(-np.asarray(det["scores"]), kind="stable"):
            if det["scores"][e] < min_score:
                continue
            cand = np.where(free & (np.asarray(gt["labels"]) == det["labels"][e]) & (ious[e] >= iou_threshold),
                            ious[e], -1.0)
            if cand.max() < 0:
                continue
            g = int(np.argmax(cand))
            free[g] = False
            pred = det["masks"][e, 0] > threshold
            true = np.asarray(gt["masks"][g], bool)
            union = np.logical_or(pred, true).sum()
            out.append({"image": i, "detection": int(e), "gt": g, "label": int(det["labels"][e]),
                        "score": float(det["scores"][e]), "box_iou": float(ious[e, g]),
                        "mask_iou": float(np.logical_and(pred, true).sum() / union) if union else 0.0})
    out.sort(key=lambda d: d["mask_iou"])
    return out


def plot_mask_predictions(targets, probs, *, titles=None, threshold=0.5):
    """Mask targets next to predicted masks, one column per detection.

    targets: (E, M, M) in [0, 1] (``project_masks_on_boxes`` of the matched GT
    mask into each detection's box); probs: (E, M, M) the predicted
    probabilities (an ImageTrace's ``mask_probs``). Rows: target, prediction,
    prediction minus target (blue: missed, red: extra). The pixel IoU of the
    two at ``threshold`` is given under each column. Returns the figure.
    """
    import matplotlib.pyplot as plt

    targets = np.asarray(targets, dtype=np.float64)
    probs = np.asarray(probs, dtype=np.float64)
    e = len(targets)
    fig, axes = plt.subplots(3, e, figsize=(1.9 * e + 1.6, 6.4), squeeze=False)
    ims = []
    for j in range(e):
        t, p = targets[j], probs[j]
        a, b = t > threshold, p > threshold
        iou = np.logical_and(a, b).sum() / max(np.logical_or(a, b).sum(), 1)
        ims.append(axes[0, j].imshow(t, cmap="magma", vmin=0, vmax=1, interpolation="nearest"))
        ims.append(axes[1, j].imshow(p, cmap="magma", vmin=0, vmax=1, interpolation="nearest"))
        ims.append(axes[2, j].imshow(p - t, cmap="RdBu_r", vmin=-1, vmax=1, interpolation="nearest"))
        axes[0, j].set_title(titles[j] if titles else f"detection {j}", fontsize=9)
        axes[2, j].set_xlabel(f"IoU at {threshold}: {iou:.2f}", fontsize=8.5)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    for row, name in enumerate(("target", "prediction", "prediction\n- target")):
        axes[row, 0].set_ylabel(name, fontsize=9)
    fig.colorbar(ims[0], ax=list(axes[:2].ravel()), fraction=0.02, pad=0.01, label="probability")
    fig.colorbar(ims[2], ax=list(axes[2]), fraction=0.02, pad=0.01, label="difference")
    return fig


def plot_mask_failures(cases, *, class_names=None, margin=6, threshold=0.5):
    """The worst masks: one row per case.

    cases: list of dicts with "image" (H, W, 3), "gt_mask" (H, W) bool, "full_mask"
    (H, W) bool or None (the whole shape before occlusion), "mask" (H, W) the
    pasted probabilities, "box" (4,) the detection box, "target" (M, M) and
    "prob" (M, M), "title" str. Columns: the image zoomed on the object with
    the true mask (white outline), the hidden part of the shape (dotted), and
    the outline of the predicted mask (magenta, ``> threshold``); the M x M
    target; the M x M prediction. Returns the figure.
    """
    import matplotlib.pyplot as plt
    from matplotlib import patheffects

    n = len(cases)
    fig, axes = plt.subplots(n, 3, figsize=(8.2, 2.75 * n), squeeze=False,
                             gridspec_kw={"width_ratios": [1.5, 1, 1]})
    for row, c in zip(axes, cases):
        img = np.asarray(c["image"])
        h, w = img.shape[:2]
        _show_image(row[0], img)
        ys, xs = np.nonzero(c["gt_mask"] | (c["mask"] > threshold))
        x1, x2 = max(xs.min() - margin, 0), min(xs.max() + 1 + margin, w)
        y1, y2 = max(ys.min() - margin, 0), min(ys.max() + 1 + margin, h)
        cx, cy = np.arange(w) + 0.5, np.arange(h) + 0.5
        halo = [patheffects.withStroke(linewidth=3.2, foreground="k")]
        row[0].contour(cx, cy, c["gt_mask"].astype(float), levels=[0.5], colors="white", linewidths=1.6)
        if c.get("full_mask") is not None and (c["full_mask"] & ~c["gt_mask"]).any():
            row[0].contour(cx, cy, c["full_mask"].astype(float), levels=[0.5], colors="white", linewidths=1.0,
                           linestyles="dotted")
        cs = row[0].contour(cx, cy, (c["mask"] > threshold).astype(float), levels=[0.5], colors=PRED_COLOR,
                            linewidths=1.6)
        cs.set_path_effects(halo)
        draw_boxes(row[0], c["box"], color=PRED_COLOR, lw=1.0, ls="--")
        row[0].set_xlim(x1, x2)
        row[0].set_ylim(y2, y1)
        row[0].set_title(c.get("title", ""), fontsize=9)
        for ax, m, name in ((row[1], c["target"], "target"), (row[2], c["prob"], "prediction")):
            ax.imshow(m, cmap="magma", vmin=0, vmax=1, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"{name} {m.shape[0]}x{m.shape[1]}", fontsize=9)
    fig.text(0.01, 0.0, "left: true mask (white), the whole shape where it is hidden (white dotted), predicted "
             f"mask > {threshold} (magenta), detection box (dashed)", fontsize=8.5, va="top")
    fig.tight_layout()
    return fig


def plot_score_threshold(scores, labels, threshold, *, class_names=None, ax=None, bins=40, title=None):
    """Histogram of the box head's candidate scores, per class, with the score threshold.

    scores (B,), labels (B,): every (RoI, foreground class) candidate (an
    ImageTrace's ``detections_before_threshold``). Counts on a log scale; the
    numbers kept (score > threshold) and dropped are written on the figure.
    Returns the figure.
    """
    fig, ax = _axes(ax, (7.5, 3.4))
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels)
    present = sorted(set(labels.tolist()))
    edges = np.linspace(0, 1, bins + 1)
    ax.hist([scores[labels == c] for c in present], bins=edges, stacked=True,
            color=[_color(c) for c in present], label=[_name(c, class_names) for c in present])
    ax.set_yscale("log")
    ax.axvline(threshold, color="k", lw=1.5, ls="--")
    kept = int((scores > threshold).sum())
    ax.text(threshold + 0.01, 0.97, f"threshold {threshold:g}\n<- dropped: {len(scores) - kept}\n-> kept: {kept}",
            transform=ax.get_xaxis_transform(), va="top", ha="left", fontsize=8.5)
    ax.set_xlim(0, 1)
    ax.set_xlabel("class probability of the candidate (RoI, class)")
    ax.set_ylabel("candidates (log scale)")
    ax.legend(loc="upper right", fontsize=8.5, frameon=False, title="class", title_fontsize=8.5)
    ax.spines[["top", "right"]].set_visible(False)
    ax.set_title(title or f"{len(scores)} candidates before the score threshold", fontsize=10)
    return fig


def plot_mask_channels(probs, picked, *, class_names=None, title=None):
    """The K+1 mask channels of one RoI, sigmoid applied; the one inference keeps is framed.

    probs: (K+1, M, M) sigmoid of the mask head's logits for one detection;
    picked: the detection's class (the channel ``maskrcnn_inference`` keeps).
    Returns the figure.
    """
    import matplotlib.pyplot as plt

    probs = np.asarray(probs, dtype=np.float64)
    k1 = len(probs)
    fig, axes = plt.subplots(1, k1, figsize=(2.3 * k1 + 0.8, 2.9))
    im = None
    for c, ax in enumerate(axes):
        im = ax.imshow(probs[c], cmap="magma", vmin=0, vmax=1, interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        kept = c == int(picked)
        ax.set_title(f"channel {c}: {_name(c, class_names)}" + ("\n(kept)" if kept else "\n(not read)"),
                     fontsize=9, fontweight="bold" if kept else "normal")
        for sp in ax.spines.values():
            sp.set_edgecolor(_color(c) if kept else "0.7")
            sp.set_linewidth(3 if kept else 1)
    fig.colorbar(im, ax=list(axes), fraction=0.02, pad=0.01, label="sigmoid")
    if title:
        fig.suptitle(title, fontsize=10, y=1.06)
    return fig
