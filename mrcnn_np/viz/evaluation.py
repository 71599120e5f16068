"""Figures for chapter 10 (evaluation): IoU of boxes vs masks, precision-recall
curves built step by step, AP over IoU thresholds, AP against detector noise.

Every function takes arrays (and an optional ``ax``/``axes``) and returns the
figure and axes; nothing is shown or saved here (use ``viz.common.save_figure``).
Boxes are (x1, y1, x2, y2) in continuous pixel coordinates (pixel column c
covers [c, c + 1]); masks (H, W) bool. Images are drawn with
``extent=(0, W, H, 0)`` so that box corners land on pixel edges, and mask
outlines are traced through pixel centres (c + 0.5, r + 0.5).
"""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.patches import Rectangle

from mrcnn_np.evaluate import box_iou_coco, mask_iou_coco

GT_COLOR = "#2ca02c"
DT_COLOR = "#ff7f0e"
BOTH_COLOR = "#1f77b4"


def _axes(ax, n=1, figsize=None):
    if ax is not None:
        axes = np.atleast_1d(ax)
        return axes[0].figure, axes
    fig, axes = plt.subplots(1, n, figsize=figsize or (4.2 * n, 4), squeeze=False)
    return fig, axes[0]


def _show(ax, image):
    """imshow in continuous pixel coordinates: pixel (r, c) spans [c, c+1] x [r, r+1]."""
    H, W = np.asarray(image).shape[:2]
    ax.imshow(image, interpolation="nearest", extent=(0, W, H, 0))
    return H, W


def _outline(ax, mask, color, lw):
    """Contour of a (H, W) bool mask at level 0.5, sampled at pixel centres."""
    H, W = mask.shape
    ax.contour(np.arange(W) + 0.5, np.arange(H) + 0.5, mask.astype(float), levels=[0.5],
               colors=[color], linewidths=lw)


def plot_iou_boxes_vs_masks(image, gt_box, gt_mask, det_box, det_mask, *, axes=None):
    """Two panels: box IoU (rectangles, intersection hatched) and mask IoU (pixels).

    image: (H, W, 3) float in [0, 1]; gt_box, det_box: (4,); gt_mask, det_mask: (H, W) bool.
    Returns (fig, axes) with the two IoU values in the titles.
    """
    fig, axes = _axes(axes, 2, figsize=(9, 4.4))
    gt_box = np.asarray(gt_box, dtype=np.float64)
    det_box = np.asarray(det_box, dtype=np.float64)
    biou = box_iou_coco(det_box[None], gt_box[None])[0, 0]
    miou = mask_iou_coco(np.asarray(det_mask, bool)[None], np.asarray(gt_mask, bool)[None])[0, 0]
    ax = axes[0]
    _show(ax, image)
    for b, c, name in ((gt_box, GT_COLOR, "ground truth"), (det_box, DT_COLOR, "detection")):
        ax.add_patch(Rectangle(b[:2], b[2] - b[0], b[3] - b[1], fill=False, ec=c, lw=2.5, label=name))
    ix1, iy1 = np.maximum(gt_box[:2], det_box[:2])
    ix2, iy2 = np.minimum(gt_box[2:], det_box[2:])
    if ix2 > ix1 and iy2 > iy1:
        ax.add_patch(Rectangle((ix1, iy1), ix2 - ix1, iy2 - iy1, fill=True, fc=BOTH_COLOR, alpha=0.35,
                               hatch="//", ec=BOTH_COLOR, label="intersection"))
    ax.set_title(f"boxes: IoU = {biou:.3f}")
    ax.legend(loc="lower right", fontsize=8, framealpha=0.85)
    ax = axes[1]
    H, W = gt_mask.shape
    rgb = np.ones((H, W, 3)) * 0.93
    only_g = gt_mask & ~det_mask
    only_d = det_mask & ~gt_mask
    both = gt_mask & det_mask
    for m, c in ((only_g, GT_COLOR), (only_d, DT_COLOR), (both, BOTH_COLOR)):
        rgb[m] = plt.matplotlib.colors.to_rgb(c)
    _show(ax, rgb)
    ax.set_title(f"masks: IoU = {both.sum()} / {(gt_mask | det_mask).sum()} = {miou:.3f}")
    handles = [Rectangle((0, 0), 1, 1, fc=c) for c in (GT_COLOR, DT_COLOR, BOTH_COLOR)]
    ax.legend(handles, ["ground truth only", "detection only", "both"], loc="lower right", fontsize=8,
              framealpha=0.85)
    for a in axes:
        a.set_xticks([]); a.set_yticks([])
    fig.tight_layout()
    return fig, axes


def pr_table(curve, *, max_rows=None):
    """The ranked detections of a :class:`~mrcnn_np.evaluate.PRCurve` as a text table.

    Columns: rank, score, TP/FP, cumulative TP and FP, recall, precision,
    interpolated precision (envelope). Returns a str (the caller prints it).
    """
    head = f"{'rank':>4} {'score':>6} {'':>3} {'cumTP':>5} {'cumFP':>5} {'recall':>7} {'precision':>9} {'envelope':>8}"
    rows = [head, "-" * len(head)]
    n = len(curve.scores) if max_rows is None else min(max_rows, len(curve.scores))
    for i in range(n):
        kind = "TP" if curve.tp[i] else ("FP" if curve.fp[i] else "ign")
        rows.append(f"{i + 1:>4} {curve.scores[i]:6.3f} {kind:>3} {curve.tp_cum[i]:5.0f} {curve.fp_cum[i]:5.0f} "
                    f"{curve.recall[i]:7.3f} {curve.precision[i]:9.3f} {curve.envelope[i]:8.3f}")
    if n < len(curve.scores):
        rows.append(f"... {len(curve.scores) - n} more")
    return "\n".join(rows)


def plot_pr_curve(curve, *, ax=None, title=None, show_samples=True):
    """Raw precision points, the interpolated envelope and the 101 sampled points.

    curve: a :class:`~mrcnn_np.evaluate.PRCurve`. The shaded area is the mean
    of the sampled values, i.e. the AP.
    """
    fig, axes = _axes(ax, 1, figsize=(5.5, 4.2))
    ax = axes[0]
    r = np.concatenate([[0.0], curve.recall])
    ax.plot(curve.recall, curve.precision, "o", color="0.35", ms=5, label="precision after each detection")
    for i in np.flatnonzero(curve.fp):
        ax.plot(curve.recall[i], curve.precision[i], "x", color="crimson", ms=8, mew=2)
    ax.plot([], [], "x", color="crimson", ms=8, mew=2, label="false positive")
    if len(curve.envelope):
        env = np.concatenate([[curve.envelope[0]], curve.envelope])
        ax.step(r, env, where="pre", color=BOTH_COLOR, lw=2, label="interpolated (max to the right)")
    if show_samples:
        ax.plot(curve.recall_thresholds, curve.sampled, ".", color=DT_COLOR, ms=4,
                label=f"{len(curve.recall_thresholds)} sampled points")
        ax.fill_between(curve.recall_thresholds, curve.sampled, step=None, color=DT_COLOR, alpha=0.15)
    ax.set_xlim(-0.02, 1.02)
    ax.set_ylim(-0.02, 1.05)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_title(title or f"AP = mean of sampled points = {curve.ap:.3f}")
    ax.legend(loc="lower left", fontsize=8)
    ax.grid(alpha=0.3)
    return fig, ax


def plot_ap_per_threshold(ap_per_threshold, thresholds, *, ax=None, title=None):
    """Bars of AP at each IoU threshold; AP50, AP75 highlighted; their mean (AP) as a line.

    ap_per_threshold: (T,); thresholds: (T,).
    """
    fig, axes = _axes(ax, 1, figsize=(6, 3.8))
    ax = axes[0]
    ap = np.asarray(ap_per_threshold, dtype=np.float64)
    t = np.asarray(thresholds, dtype=np.float64)
    colors = ["0.7"] * len(t)
    for i, v in enumerate(t):
        if np.isclose(v, 0.5):
            colors[i] = GT_COLOR
        if np.isclose(v, 0.75):
            colors[i] = DT_COLOR
    ax.bar(np.arange(len(t)), ap, color=colors)
    ax.axhline(ap.mean(), color=BOTH_COLOR, lw=2, label=f"AP = mean over {len(t)} thresholds = {ap.mean():.3f}")
    ax.set_xticks(np.arange(len(t)), [f"{v:.2f}" for v in t])
    ax.set_xlabel("IoU threshold")
    ax.set_ylabel("AP at this threshold")
    ax.set_ylim(0, 1.15)
    i50 = int(np.argmin(np.abs(t - 0.5)))
    i75 = int(np.argmin(np.abs(t - 0.75)))
    for i, name, c in ((i50, "AP50", GT_COLOR), (i75, "AP75", DT_COLOR)):
        ax.text(i, min(ap[i] + 0.03, 0.97), f"{name}\n{ap[i]:.3f}", ha="center", va="bottom", fontsize=8,
                color=c, bbox=dict(fc="white", ec="none", pad=0.5, alpha=0.9))
    ax.legend(loc="lower left", fontsize=9)
    ax.set_title(title or "AP at each IoU threshold")
    return fig, ax


def plot_ap_vs_noise(noise_levels, series, *, ax=None, title=None):
    """AP-like numbers against detector noise.

    noise_levels: (L,); series: dict label -> (L,) values (e.g. "AP (segm)": ...).
    """
    fig, axes = _axes(ax, 1, figsize=(6, 4))
    ax = axes[0]
    styles = ["-", "--", ":", "-."]
    for i, (name, values) in enumerate(series.items()):
        ax.plot(noise_levels, values, styles[i % 4], marker="o", ms=4, label=name)
    ax.set_xlabel("noise level")
    ax.set_ylabel("score")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title or "COCO metrics of noisy copies of the ground truth")
    return fig, ax


def place_box_labels(ax, boxes, texts, *, color, fontsize=7):
    """Label boxes so that no two labels overlap and none leaves the axes.

    boxes: (D, 4) xyxy in data coordinates, in drawing priority (highest score
    first); texts: D strings. Each label tries, in order: just above the box's
    top-left corner, inside it at the top, just below it, inside at the bottom;
    it slides horizontally to stay inside the axes and takes the first spot that
    overlaps no label already placed (else the spot with the least overlap).
    Placement is done in display coordinates for the axes' current position, so
    lay the figure out (fixed margins) before calling this.
    Returns the list of Text artists.
    """
    fig = ax.figure
    renderer = fig.canvas.get_renderer()
    to_display = ax.transData
    frame = ax.get_window_extent(renderer)
    placed, artists = [], []
    for box, text in zip(np.asarray(boxes, dtype=float).reshape(-1, 4), texts):
        art = ax.text(0, 0, text, color="white", fontsize=fontsize, va="bottom", ha="left",
                      bbox=dict(fc=color, ec="none", pad=0.5, alpha=0.85))
        ext = art.get_window_extent(renderer)
        w, h = ext.width + 2, ext.height + 2
        (x1, y_top), (x2, y_bot) = to_display.transform([box[:2], box[2:]])  # y grows upwards on screen
        ymax, ymin = max(y_top, y_bot), min(y_top, y_bot)
        left = min(max(x1, frame.x0), frame.x1 - w)
        candidates = [(left, ymax), (left, ymax - h), (left, ymin - h), (left, ymin)]
        best, best_cost = None, None
        for cx, cy in candidates:
            cy = min(max(cy, frame.y0), frame.y1 - h)
            rect = (cx, cy, cx + w, cy + h)
            cost = sum(_overlap(rect, other) for other in placed)
            if best_cost is None or cost < best_cost:
                best, best_cost = rect, cost
            if cost == 0:
                break
        placed.append(best)
        x, y = ax.transData.inverted().transform((best[0] + 1, best[1] + 1))
        art.set_position((x, y))
        artists.append(art)
    return artists


def _overlap(a, b):
    """Area shared by two (x0, y0, x1, y1) rectangles."""
    return max(0.0, min(a[2], b[2]) - max(a[0], b[0])) * max(0.0, min(a[3], b[3]) - max(a[1], b[1]))


def plot_detections(image, gt, det, *, ax=None, title=None, class_names=None, min_score=0.0, legend=True,
                    label_size=7, figsize=None):
    """Ground truth (white outlines) and detections (orange masks and boxes with scores) on an image.

    gt: dict with ``boxes``, ``labels`` and optional ``masks``; det: dict with
    ``boxes``, ``labels``, ``scores`` and optional ``masks``. Labels ("class
    score") are placed by :func:`place_box_labels`: none overlaps another or
    leaves the image, as long as the axes are not moved afterwards (lay out
    the figure before calling this with ``ax``).
    label_size: font size of the labels (points).
    figsize: None (a 4 x 4 inch figure when ``ax`` is None), or (width, height)
        in inches of the image in a new figure that it fills edge to edge (a
        title adds 0.3 inch above it): a photo keeps its aspect ratio and, at
        100 dpi with its own size in pixels / 100, one figure pixel per image
        pixel, so labels stay readable.
    """
    if ax is None and figsize is not None:
        w_in, h_in = figsize
        top = 0.3 if title else 0.0
        fig = plt.figure(figsize=(w_in, h_in + top))
        ax = fig.add_axes((0.0, 0.0, 1.0, h_in / (h_in + top)))
    else:
        fig, axes = _axes(ax, 1, figsize=(4, 4))
        ax = axes[0]
    H, W = _show(ax, image)
    if gt.get("masks") is not None:
        for m in gt["masks"]:
            if m.any():
                _outline(ax, m, "white", 2.5)
    keep = np.asarray(det["scores"]) >= min_score
    if det.get("masks") is not None:
        for m in np.asarray(det["masks"])[keep]:
            if m.any():
                _outline(ax, m, DT_COLOR, 1.5)
    kept_boxes = np.asarray(det["boxes"]).reshape(-1, 4)[keep]
    texts = []
    for b, lab, s in zip(kept_boxes, np.asarray(det["labels"])[keep], np.asarray(det["scores"])[keep]):
        ax.add_patch(Rectangle(b[:2], b[2] - b[0], b[3] - b[1], fill=False, ec=DT_COLOR, lw=1, ls="--"))
        name = class_names[lab] if class_names is not None else str(lab)
        texts.append(f"{name} {s:.2f}")
    ax.set_xlim(0, W)
    ax.set_ylim(H, 0)
    place_box_labels(ax, kept_boxes, texts, color=DT_COLOR, fontsize=label_size)
    if legend:
        ax.plot([], [], color="white", lw=2.5, label="ground truth")
        ax.plot([], [], color=DT_COLOR, lw=1.5, label="detection")
        leg = ax.legend(loc="lower left", fontsize=7, facecolor="0.3", labelcolor="white", framealpha=0.8)
        leg.get_frame().set_edgecolor("none")
    ax.set_xlim(0, W)
    ax.set_ylim(H, 0)
    ax.set_xticks([]); ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=10)
    return fig, ax
