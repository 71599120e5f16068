"""Figures for chapter 05, the region proposal network.

Every function takes arrays (computed by ``mrcnn_np``) and an optional axes,
draws, and returns the figure (or axes). Boxes are xyxy image pixels; images
are (H, W, 3) floats in [0, 1] or (H, W) grey.
"""
from __future__ import annotations

import numpy as np

from .anchors import _axes, draw_boxes  # one copy of the box-drawing helpers (chapter 04)

__all__ = [
    "LABEL_COLORS",
    "plot_sliding_window",
    "plot_objectness_maps",
    "plot_anchor_labels",
    "plot_anchor_labels_zoom",
    "plot_sampled_anchors",
    "plot_proposals",
    "draw_boxes",
    "level_maps",
    "plot_objectness_levels",
    "plot_anchor_refinement",
    "plot_proposals_nms",
    "plot_rpn_recall",
]

#: colours of anchor labels: positive, negative, ignored, ground truth
LABEL_COLORS = {"positive": "#1a9850", "negative": "#d73027", "ignored": "#fdae61", "gt": "#2166ac"}


def _show_image(ax, image, *, dim=0.0):
    """Show ``image``; ``dim`` in [0, 1) blends it toward white so boxes stand out."""
    image = np.asarray(image, dtype=np.float64)
    if dim:
        image = (1 - dim) * image + dim
    ax.imshow(image, vmin=0, vmax=1, cmap="gray" if image.ndim == 2 else None, interpolation="nearest",
              extent=(0, image.shape[1], image.shape[0], 0))
    ax.set_xlim(0, image.shape[1])
    ax.set_ylim(image.shape[0], 0)


def plot_sliding_window(anchors_at_location, *, grid=8, stride=16, location=(3, 4), window=3):
    """The RPN's sliding window and the k anchors of one location, side by side.

    anchors_at_location: (k, 4) xyxy anchors of feature cell ``location = (y, x)``
        (e.g. ``grid_anchors(...)[(y*grid + x)*k : (y*grid + x + 1)*k]``).
    grid: side of the square feature map; stride: image pixels per cell.
    Left: the grid x grid feature map with the window x window window centred on
    ``location``. Right: the image (grid*stride pixels) with the cell grid, the
    anchors centred at ``(x*stride, y*stride)`` (torchvision puts the centre on
    the top-left corner of the cell), and the window's footprint.
    Returns the figure.
    """
    import matplotlib.pyplot as plt
    from matplotlib.patches import ConnectionPatch, Rectangle

    anchors = np.asarray(anchors_at_location, dtype=np.float64).reshape(-1, 4)
    k = anchors.shape[0]
    y, x = location
    half = window // 2
    fig, (a0, a1) = plt.subplots(1, 2, figsize=(11, 5.2), gridspec_kw={"width_ratios": [1, 1.25]})

    # left: the feature map
    for i in range(grid + 1):
        a0.plot([0, grid], [i, i], color="0.6", lw=0.8)
        a0.plot([i, i], [0, grid], color="0.6", lw=0.8)
    a0.add_patch(Rectangle((x - half, y - half), window, window, facecolor="C1", alpha=0.35,
                           edgecolor="C1", lw=2.5, label=f"{window}x{window} window"))
    a0.add_patch(Rectangle((x, y), 1, 1, facecolor="C3", alpha=0.7, label=f"output cell (y={y}, x={x})"))
    a0.set_xlim(-0.5, grid + 0.5)
    a0.set_ylim(grid + 0.5, -0.5)
    a0.set_aspect("equal")
    a0.set_xticks(np.arange(grid) + 0.5, [str(i) for i in range(grid)])
    a0.set_yticks(np.arange(grid) + 0.5, [str(i) for i in range(grid)])
    a0.set_title(f"{grid}x{grid} feature map: {grid * grid} windows, each emits\n"
                 f"k = {k} objectness logits + 4k = {4 * k} deltas", fontsize=10)
    a0.legend(loc="upper center", bbox_to_anchor=(0.5, -0.04), ncol=2, fontsize=9, frameon=False)

    # right: the image with the anchors of that location
    size = grid * stride
    for i in range(grid + 1):
        a1.plot([0, size], [i * stride] * 2, color="0.85", lw=0.6)
        a1.plot([i * stride] * 2, [0, size], color="0.85", lw=0.6)
    a1.add_patch(Rectangle((0, 0), size, size, fill=False, edgecolor="k", lw=1.2))
    a1.add_patch(Rectangle(((x - half) * stride, (y - half) * stride), window * stride, window * stride,
                           facecolor="C1", alpha=0.2, edgecolor="none"))
    colors = plt.get_cmap("tab10")(np.arange(k) % 10)
    for a, (box, c) in enumerate(zip(anchors, colors)):
        w, h = box[2] - box[0], box[3] - box[1]
        a1.add_patch(Rectangle(box[:2], w, h, fill=False, edgecolor=c, lw=2,
                               label=f"anchor {a}: {w:.0f}x{h:.0f}"))
    cx, cy = x * stride, y * stride
    a1.plot([cx], [cy], "o", color="C3", ms=6)
    pad = max(0.0, -anchors[:, :2].min(), anchors[:, 2:].max() - size) + 4
    a1.set_xlim(-pad, size + pad)
    a1.set_ylim(size + pad, -pad)
    a1.set_aspect("equal")
    a1.set_title(f"image ({size}x{size} px, stride {stride}): the k = {k} anchors\n"
                 f"centred at ({cx}, {cy}) = (x*stride, y*stride); shaded: the window's footprint",
                 fontsize=10)
    a1.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=9, frameon=False)
    fig.add_artist(ConnectionPatch((x + 1, y + 0.5), (cx, cy), "data", "data", axesA=a0, axesB=a1,
                                   color="C3", arrowstyle="->", lw=1.5))
    fig.tight_layout()
    return fig


def plot_objectness_maps(image, objectness, *, level_names=None, reduce="max", title=None):
    """The image and, per FPN level, the objectness probability of every location.

    image: (H, W, 3) or (H, W).
    objectness: list of L arrays (A, h_l, w_l) of logits for this image.
    reduce: "max" shows the largest probability over the A anchors of a
        location; an int shows that anchor only.
    Returns the figure (1 + L panels, one shared colour scale 0..1).
    """
    import matplotlib.pyplot as plt

    from ..ops.activations import sigmoid

    n = len(objectness)
    names = level_names or [f"P{i + 2}" for i in range(n)]
    fig, axes = plt.subplots(1, n + 1, figsize=(2.6 * (n + 1), 3.0))
    _show_image(axes[0], image)
    axes[0].set_title("image", fontsize=10)
    im = None
    for ax, logits, name in zip(axes[1:], objectness, names):
        p = sigmoid(np.asarray(logits, dtype=np.float64))
        m = p.max(axis=0) if reduce == "max" else p[int(reduce)]
        im = ax.imshow(m, vmin=0, vmax=1, cmap="magma", interpolation="nearest")
        ax.set_title(f"{name}: {m.shape[0]}x{m.shape[1]}", fontsize=10)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.colorbar(im, ax=list(axes), fraction=0.015, pad=0.01, label="sigmoid(objectness)")
    if title:
        fig.suptitle(title, fontsize=11)
    return fig


def _draw_anchor_labels(ax, image, anchors, labels, gt_boxes, *, max_negatives, rng, negative_min_iou, ious,
                        focus, title):
    """Draw one anchor-label panel; returns ({category: legend handle}, negatives drawn)."""
    from ..boxes import box_iou

    _show_image(ax, image, dim=0.55)
    anchors = np.asarray(anchors)
    labels = np.asarray(labels)
    if ious is None:
        ious = box_iou(np.asarray(gt_boxes, dtype=anchors.dtype), anchors) if len(gt_boxes) else None
    neg = np.flatnonzero(labels == 0)
    if ious is not None:
        neg = neg[ious[:, neg].max(axis=0) >= negative_min_iou]
    if len(neg) > max_negatives:
        rng = rng if rng is not None else np.random.default_rng(0)
        neg = rng.choice(neg, max_negatives, replace=False)
    handles = {}
    for key, boxes, style in (("negative", anchors[neg], dict(lw=0.8, alpha=0.6)),
                              ("ignored", anchors[labels == -1], dict(lw=1.0, alpha=0.9)),
                              ("positive", anchors[labels == 1], dict(lw=1.8)),
                              ("gt", gt_boxes, dict(lw=2.5, ls="--"))):
        draw_boxes(ax, boxes, color=LABEL_COLORS[key], label=key, **style)
    for h, lab in zip(*ax.get_legend_handles_labels()):
        handles[lab] = h
    if focus is not None:
        x1, y1, x2, y2 = focus
        ax.set_xlim(x1, x2)
        ax.set_ylim(y2, y1)
    ax.set_title(title or "anchor labels", fontsize=10)
    return handles, len(neg)


def _anchor_label_texts(labels, negatives_drawn):
    labels = np.asarray(labels)
    return {"negative": f"negative (IoU < 0.3): {int((labels == 0).sum()):,}, of which {negatives_drawn} drawn",
            "ignored": f"ignored (0.3 <= IoU < 0.7): {int((labels == -1).sum())}",
            "positive": f"positive: {int((labels == 1).sum())}",
            "gt": "ground truth"}


def plot_anchor_labels(image, anchors, labels, gt_boxes, *, ax=None, max_negatives=40, rng=None,
                       negative_min_iou=0.05, ious=None, focus=None, title=None, legend=True):
    """Anchors coloured by their training label around the ground truth.

    anchors: (T, 4); labels: (T,) 1 / 0 / -1; gt_boxes: (G, 4).
    Every positive and ignored anchor is drawn; negatives (there are
    thousands) only those that touch a GT box (IoU >= negative_min_iou,
    from ``ious``: (G, T) or computed), at most ``max_negatives`` of them
    (a random subset from ``rng``). focus: optional (x1, y1, x2, y2) view
    window (zoom on one object). legend: put the key right of the axes
    (with the counts). For two panels with one key, :func:`plot_anchor_labels_zoom`.
    Returns the figure.
    """
    fig, ax = _axes(ax, (5.5, 5.5))
    handles, drawn = _draw_anchor_labels(ax, image, anchors, labels, gt_boxes, max_negatives=max_negatives,
                                         rng=rng, negative_min_iou=negative_min_iou, ious=ious, focus=focus,
                                         title=title)
    if legend:
        texts = _anchor_label_texts(labels, drawn)
        ax.legend([handles[k] for k in texts if k in handles], [texts[k] for k in texts if k in handles],
                  loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=9, frameon=False)
    return fig


def plot_anchor_labels_zoom(image, anchors, labels, gt_boxes, *, focus, focus_gt=0, ious=None,
                            max_negatives=(40, 12), rng=None, negative_min_iou=0.05, titles=None):
    """Anchor labels on the whole image (left) and zoomed on one object (right), one key for both.

    anchors, labels, gt_boxes, ious: as :func:`plot_anchor_labels`. focus: (x1, y1, x2, y2) of the
    right panel; focus_gt: index of the object it shows (only that box and the negatives
    touching it are drawn there). max_negatives: per panel. titles: two strings.
    The key below the panels gives the counts over the whole image. Returns the figure.
    """
    import matplotlib.pyplot as plt
    from ..boxes import box_iou

    gt_boxes = np.asarray(gt_boxes)
    if ious is None:
        ious = box_iou(gt_boxes.astype(np.asarray(anchors).dtype), np.asarray(anchors))
    titles = titles or ("whole image", f"around object {focus_gt}")
    fig, axes = plt.subplots(1, 2, figsize=(12, 6.6), layout="constrained")
    drawn, handles = [], {}
    for ax, boxes, iou, n, title, foc in ((axes[0], gt_boxes, ious, max_negatives[0], titles[0], None),
                                          (axes[1], gt_boxes[[focus_gt]], ious[[focus_gt]], max_negatives[1],
                                           titles[1], focus)):
        h, d = _draw_anchor_labels(ax, image, anchors, labels, boxes, max_negatives=n, rng=rng,
                                   negative_min_iou=negative_min_iou, ious=iou, focus=foc, title=title)
        handles.update(h)
        drawn.append(d)
    texts = _anchor_label_texts(labels, drawn[0])
    texts["negative"] = (f"negative (IoU < 0.3): {int((np.asarray(labels) == 0).sum()):,}; drawn: those touching "
                         f"an object ({drawn[0]} left, {drawn[1]} right)")
    keys = [k for k in texts if k in handles]
    fig.legend([handles[k] for k in keys], [texts[k] for k in keys], loc="outside lower center", ncol=2,
               fontsize=9, frameon=False)
    return fig


def plot_sampled_anchors(image, anchors, pos_mask, neg_mask, gt_boxes, *, ax=None, title=None):
    """Centres of the anchors sampled for the loss: positives as boxes and dots,
    negatives as dots. anchors: (T, 4); pos_mask, neg_mask: (T,) bool.
    Returns the figure."""
    fig, ax = _axes(ax, (5.5, 5.5))
    _show_image(ax, image, dim=0.55)
    anchors = np.asarray(anchors, dtype=np.float64)
    centres = (anchors[:, :2] + anchors[:, 2:]) / 2
    ax.scatter(*centres[neg_mask].T, s=10, color=LABEL_COLORS["negative"], alpha=0.8,
               label=f"sampled negatives: {int(neg_mask.sum())}")
    draw_boxes(ax, anchors[pos_mask], color=LABEL_COLORS["positive"], lw=1.2)
    ax.scatter(*centres[pos_mask].T, s=18, color=LABEL_COLORS["positive"], marker="s",
               label=f"sampled positives: {int(pos_mask.sum())}")
    draw_boxes(ax, gt_boxes, color=LABEL_COLORS["gt"], lw=2.5, ls="--", label="ground truth")
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=9, frameon=False)
    ax.set_title(title or "the sampled mini-batch of anchors", fontsize=10)
    return fig


def plot_proposals(image, before_boxes, before_scores, after_boxes, after_scores, *, gt_boxes=None,
                   titles=("before NMS", "after NMS")):
    """Proposals before and after NMS, side by side, coloured by score.

    before_boxes: (K1, 4) with before_scores (K1,); after_boxes: (K2, 4) with
    after_scores (K2,). Returns the figure.
    """
    import matplotlib.pyplot as plt
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    fig, axes = plt.subplots(1, 2, figsize=(10, 4.8))
    cmap = plt.get_cmap("viridis")
    norm = Normalize(0, 1)
    for ax, boxes, scores, t in zip(axes, (before_boxes, after_boxes), (before_scores, after_scores), titles):
        _show_image(ax, image, dim=0.55)
        order = np.argsort(scores)  # best drawn last, on top
        for b, s in zip(np.asarray(boxes)[order], np.asarray(scores)[order]):
            draw_boxes(ax, b, color=cmap(norm(s)), lw=1.0, alpha=0.9)
        if gt_boxes is not None:
            draw_boxes(ax, gt_boxes, color="k", lw=1.5, ls="--")
        ax.set_title(f"{t}: {len(boxes)} boxes", fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=list(axes), fraction=0.02, pad=0.01,
                 label="objectness probability")
    if gt_boxes is not None:
        fig.suptitle("proposals coloured by score; dashed black: ground truth", fontsize=10)
    return fig


# =========================================================================== the trained RPN (section 6)


def level_maps(values, grid_sizes, num_anchors):
    """Per-anchor values of every level as maps: list of (A, h_l, w_l).

    values: list over levels of (h_l * w_l * A,) arrays in the anchor order of
        ``anchors.grid_anchors`` (location-major, anchor fastest), e.g. an
        ImageTrace's ``objectness_probs``.
    grid_sizes: list of (h_l, w_l); num_anchors: A.
    Entry [a, y, x] of map l is anchor a of location (y, x): flat index (y w_l + x) A + a.
    """
    out = []
    for v, (h, w) in zip(values, grid_sizes):
        v = np.asarray(v)
        if v.size != h * w * num_anchors:
            raise ValueError(f"a level with grid {h}x{w} and {num_anchors} anchors per location needs "
                             f"{h * w * num_anchors} values, got {v.size}")
        out.append(v.reshape(h, w, num_anchors).transpose(2, 0, 1))
    return out


def plot_objectness_levels(image, probs, strides, *, gt_boxes=None, level_names=None, reduce="max",
                           title=None):
    """Objectness probabilities of every level, drawn in image coordinates.

    image: (H, W, 3); probs: list of L arrays (A, h_l, w_l) of probabilities
    (``level_maps`` of an ImageTrace's ``objectness_probs``); strides: L ints.
    reduce: "max" over the A anchors of a location, or an int (that anchor only).
    Each cell is drawn as a square of side stride CENTRED on its anchors' common
    centre (x stride, y stride), so a peak sits where its anchors are centred;
    the strip past the last centre, where no anchor of that level is centred,
    stays light grey. gt_boxes: (G, 4), outlined in cyan on every panel.
    Returns the figure (1 + L panels, one colour scale 0..1).
    """
    import matplotlib.pyplot as plt

    image = np.asarray(image, dtype=np.float64)
    H, W = image.shape[:2]
    n = len(probs)
    names = level_names or [f"P{i + 2}" for i in range(n)]
    fig, axes = plt.subplots(1, n + 1, figsize=(2.5 * (n + 1) + 0.6, 3.1))
    _show_image(axes[0], image)
    axes[0].set_title("image", fontsize=10)
    im = None
    for ax, p, s, name in zip(axes[1:], probs, strides, names):
        p = np.asarray(p, dtype=np.float64)
        m = p.max(axis=0) if reduce == "max" else p[int(reduce)]
        h, w = m.shape
        ax.set_facecolor("0.85")
        im = ax.imshow(m, vmin=0, vmax=1, cmap="magma", interpolation="nearest",
                       extent=(-s / 2, (w - 0.5) * s, (h - 0.5) * s, -s / 2))
        ax.set_xlim(0, W)
        ax.set_ylim(H, 0)
        peak = np.unravel_index(np.argmax(m), m.shape)
        ax.set_title(f"{name}: {h}x{w}, stride {s}\nmax {m.max():.2f} at (y={peak[0]}, x={peak[1]})",
                     fontsize=9)
    if gt_boxes is not None:
        for ax in axes:
            draw_boxes(ax, gt_boxes, color="cyan", lw=1.0, ls="--")
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    what = "max over anchors" if reduce == "max" else f"anchor {int(reduce)}"
    fig.colorbar(im, ax=list(axes), fraction=0.012, pad=0.01, label=f"objectness, {what}")
    if title:
        fig.suptitle(title, fontsize=11, y=1.04)
    return fig


def plot_anchor_refinement(image, before, after, *, gt_boxes=None, scores=None, ax=None, title=None,
                           labels=("before (anchor)", "after (moved by its deltas)")):
    """Boxes before (dotted) and after (solid) a regression, joined centre to centre.

    before, after: (K, 4) xyxy, row k of ``after`` is row k of ``before`` moved
    by its predicted deltas (an RPN's anchors and its proposals, or RoIs and the
    box head's refined boxes). gt_boxes: (G, 4), dashed black. scores: optional
    (K,) in [0, 1]: line opacity grows with the score. Each pair takes one colour.
    Returns the figure.
    """
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    fig, ax = _axes(ax, (5.5, 5.5))
    _show_image(ax, image, dim=0.45)
    before = np.asarray(before, dtype=np.float64).reshape(-1, 4)
    after = np.asarray(after, dtype=np.float64).reshape(-1, 4)
    colors = plt.get_cmap("tab10")(np.arange(len(before)) % 10)
    for k, (b, a, c) in enumerate(zip(before, after, colors)):
        alpha = 1.0 if scores is None else 0.35 + 0.65 * float(scores[k])
        draw_boxes(ax, b, color=c, lw=1.2, ls=(0, (1.5, 1.5)), alpha=alpha)
        draw_boxes(ax, a, color=c, lw=2.0, alpha=alpha)
        ax.annotate("", xy=((a[0] + a[2]) / 2, (a[1] + a[3]) / 2), xytext=((b[0] + b[2]) / 2, (b[1] + b[3]) / 2),
                    arrowprops=dict(arrowstyle="->", color=c, lw=1.2, alpha=alpha, shrinkA=0, shrinkB=0))
    if gt_boxes is not None:
        draw_boxes(ax, gt_boxes, color="k", lw=1.5, ls="--")
    image = np.asarray(image)
    ax.set_xlim(0, image.shape[1])
    ax.set_ylim(image.shape[0], 0)
    ax.set_xticks([])
    ax.set_yticks([])
    handles = [Line2D([], [], color="0.3", lw=1.2, ls=(0, (1.5, 1.5))), Line2D([], [], color="0.3", lw=2.0)]
    names = list(labels)
    if gt_boxes is not None:
        handles.append(Line2D([], [], color="k", lw=1.5, ls="--"))
        names.append("ground truth")
    ax.legend(handles, names, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    ax.set_title(title or f"{len(before)} boxes before and after refinement", fontsize=10)
    return fig


def plot_proposals_nms(image, before_boxes, before_scores, suppressed, after_boxes, after_scores, *,
                       gt_boxes=None, top=30):
    """What NMS does to the best proposals, in three panels.

    before_boxes (B, 4), before_scores (B,): the proposals entering NMS;
    suppressed: (B,) bool, True for those NMS removes; after_boxes (K, 4),
    after_scores (K,): its output. Left: the ``top`` best before NMS, coloured by
    score; middle: the same boxes, the ones NMS removes in red; right: the
    ``top`` best after NMS (boxes further down the list take the freed places).
    Returns the figure.
    """
    import matplotlib.pyplot as plt
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    before_boxes = np.asarray(before_boxes, dtype=np.float64).reshape(-1, 4)
    before_scores = np.asarray(before_scores, dtype=np.float64)
    suppressed = np.asarray(suppressed, dtype=bool)
    order = np.argsort(-before_scores, kind="stable")[:top]
    after_order = np.argsort(-np.asarray(after_scores), kind="stable")[:top]
    fig, axes = plt.subplots(1, 3, figsize=(14, 4.9))
    cmap = plt.get_cmap("viridis")
    norm = Normalize(0, 1)

    def boxes_by_score(ax, boxes, scores):
        for i in np.argsort(scores, kind="stable"):  # best drawn last, on top
            draw_boxes(ax, boxes[i], color=cmap(norm(scores[i])), lw=1.0)

    for ax in axes:
        _show_image(ax, image, dim=0.55)
    boxes_by_score(axes[0], before_boxes[order], before_scores[order])
    axes[0].set_title(f"the {len(order)} best of {len(before_boxes)} proposals before NMS", fontsize=10)
    gone = order[suppressed[order]]
    kept = order[~suppressed[order]]
    draw_boxes(axes[1], before_boxes[kept], color="0.35", lw=1.0, label=f"kept: {len(kept)}")
    draw_boxes(axes[1], before_boxes[gone], color="#d73027", lw=1.6, label=f"removed by NMS: {len(gone)}")
    axes[1].legend(loc="upper center", bbox_to_anchor=(0.5, -0.01), ncol=2, fontsize=9, frameon=False)
    axes[1].set_title(f"the same {len(order)}: NMS removes those overlapping\n"
                      "a better box of their level too much", fontsize=10)
    after_boxes = np.asarray(after_boxes, dtype=np.float64).reshape(-1, 4)
    boxes_by_score(axes[2], after_boxes[after_order], np.asarray(after_scores, dtype=np.float64)[after_order])
    axes[2].set_title(f"the {len(after_order)} best of {len(after_boxes)} proposals after NMS", fontsize=10)
    for ax in axes:
        if gt_boxes is not None:
            draw_boxes(ax, gt_boxes, color="k", lw=1.5, ls="--")
        ax.set_xticks([])
        ax.set_yticks([])
    fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=list(axes), fraction=0.015, pad=0.01,
                 label="objectness probability")
    if gt_boxes is not None:
        fig.suptitle("dashed black: ground truth", fontsize=9, y=0.99)
    return fig


def plot_rpn_recall(recalls, *, stage_labels=None, ax=None, title=None):
    """Grouped bars: the fraction of ground-truth objects covered at each stage of the RPN.

    recalls: dict {stage name: {IoU threshold: recall}} in pipeline order (e.g.
    ``trace.rpn_recall(..., stage=s).recall`` for each s of ``trace.RECALL_STAGES``).
    stage_labels: optional {stage name: axis label}. Each bar is labelled with its value.
    Returns the figure.
    """
    fig, ax = _axes(ax, (8.5, 3.8))
    stages = list(recalls)
    thresholds = sorted({t for r in recalls.values() for t in r})
    width = 0.8 / len(thresholds)
    colors = ("#4575b4", "#d73027", "#1a9850", "#984ea3")
    for j, t in enumerate(thresholds):
        xs = np.arange(len(stages)) + (j - (len(thresholds) - 1) / 2) * width
        vals = [recalls[s].get(t, np.nan) for s in stages]
        ax.bar(xs, vals, width=width * 0.95, color=colors[j % len(colors)], label=f"IoU >= {t:g}")
        for x, v in zip(xs, vals):
            ax.text(x, v + 0.015, f"{v:.2f}", ha="center", va="bottom", fontsize=8)
    labels = [(stage_labels or {}).get(s, s) for s in stages]
    ax.set_xticks(np.arange(len(stages)), labels, fontsize=8.5)
    ax.set_ylim(0, 1.12)
    ax.set_ylabel("fraction of objects covered")
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8, frameon=False)   # outside: bars reach 1
    ax.spines[["top", "right"]].set_visible(False)
    ax.set_title(title or "recall of the RPN, stage by stage", fontsize=10)
    return fig
