"""Chapter 00 figures: one image seen by four computer-vision tasks.

Shape shorthand: H x W image, G objects; boxes (G, 4) xyxy in continuous pixel
coordinates (a box edge at x = 10 is the left edge of column 10), labels (G,)
in 1..K, masks (G, H, W) bool (disjoint, as the shapes dataset gives them).

Every drawing function takes arrays and an optional matplotlib ``ax`` and
returns the axes (``compare_tasks`` returns the figure).
"""
from __future__ import annotations

import numpy as np

from .._checks import check_array
from ..data.shapes import CLASS_NAMES

# one fixed colour per class for semantic maps (background dark grey)
CLASS_COLOURS = np.array([
    [0.15, 0.15, 0.15],  # background
    [0.90, 0.25, 0.20],  # square
    [0.20, 0.65, 0.30],  # circle
    [0.25, 0.45, 0.90],  # triangle
])


def _axes(ax):
    if ax is None:
        import matplotlib.pyplot as plt

        _, ax = plt.subplots(figsize=(4, 4))
    return ax


def _check_instances(image, boxes, labels, masks):
    image = check_array("image", image, ndim=3)
    h, w = image.shape[:2]
    g = None
    if labels is not None:
        labels = check_array("labels", labels, ndim=1, dtype_kind="iu")
        g = labels.shape[0]
    if boxes is not None:
        boxes = check_array("boxes", boxes, shape=(g, 4))
        g = boxes.shape[0]
    if masks is not None:
        masks = check_array("masks", masks, shape=(g, h, w), dtype_kind="b")
    return image, boxes, labels, masks


def semantic_map(masks, labels):
    """Per-pixel class map from instance masks: (G, H, W) bool, (G,) int -> (H, W) int64.

    Pixel p gets the label of the LAST mask containing it (0 if none), which for
    disjoint masks is simply the label of its object. Instances of one class
    become indistinguishable: that is what semantic segmentation forgets.
    """
    masks = check_array("masks", masks, ndim=3, dtype_kind="b")
    labels = check_array("labels", labels, shape=(masks.shape[0],), dtype_kind="iu")
    out = np.zeros(masks.shape[1:], dtype=np.int64)
    for m, lab in zip(masks, labels):  # loop over objects (a handful), not pixels
        out[m] = lab
    return out


def instance_map(masks):
    """Per-pixel instance id: (G, H, W) bool -> (H, W) int64, 0 background, k + 1 object k."""
    masks = check_array("masks", masks, ndim=3, dtype_kind="b")
    out = np.zeros(masks.shape[1:], dtype=np.int64)
    for k, m in enumerate(masks):
        out[m] = k + 1
    return out


# instance colours chosen to differ from the class colours above
_INSTANCE_PALETTE = np.array([
    [1.00, 0.60, 0.10],  # orange
    [0.60, 0.35, 0.85],  # purple
    [0.95, 0.90, 0.25],  # yellow
    [0.25, 0.85, 0.90],  # cyan
    [0.95, 0.45, 0.75],  # pink
    [0.60, 0.40, 0.20],  # brown
    [0.70, 0.80, 0.40],  # olive
    [0.85, 0.85, 0.85],  # light grey
])


def instance_colours(g):
    """g RGB colours for instance maps, (g, 3): a fixed palette of 8, then tab20."""
    if g <= len(_INSTANCE_PALETTE):
        return _INSTANCE_PALETTE[:g].copy()
    import matplotlib

    cmap = matplotlib.colormaps["tab20"]
    return np.array([cmap(k % cmap.N)[:3] for k in range(g)])


def draw_classification(image, labels, *, class_names=CLASS_NAMES, ax=None):
    """The image with its image-level answer: which classes are present.

    image: (H, W, 3) in [0, 1]; labels: (G,) the objects' classes.
    """
    image, _, labels, _ = _check_instances(image, None, labels, None)
    ax = _axes(ax)
    ax.imshow(image, interpolation="nearest")
    present = sorted(set(int(v) for v in labels))
    ax.set_title("classification", fontsize=11)
    ax.set_xlabel("image contains: " + ", ".join(class_names[c] for c in present), fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
    return ax


def draw_detection(image, boxes, labels, *, scores=None, class_names=CLASS_NAMES, ax=None):
    """The image with one box and class name per object.

    image: (H, W, 3); boxes: (G, 4) xyxy; labels: (G,); scores: optional (G,).
    Boxes are drawn on pixel edges: imshow puts pixel column c over [c - .5, c + .5],
    so a box edge at x is drawn at x - 0.5.
    """
    from matplotlib.patches import Rectangle

    image, boxes, labels, _ = _check_instances(image, boxes, labels, None)
    ax = _axes(ax)
    ax.imshow(image, interpolation="nearest")
    for k, ((x1, y1, x2, y2), lab) in enumerate(zip(boxes, labels)):
        colour = CLASS_COLOURS[int(lab) % len(CLASS_COLOURS)]
        ax.add_patch(Rectangle((x1 - 0.5, y1 - 0.5), x2 - x1, y2 - y1, fill=False,
                               edgecolor=colour, linewidth=2))
        text = class_names[int(lab)] if int(lab) < len(class_names) else str(int(lab))
        if scores is not None:
            text += f" {float(scores[k]):.2f}"
        inside = y1 < 0.08 * image.shape[0]  # no room above the box: write inside it
        ax.text(x1 - 0.5, y1 + 0.5 if inside else y1 - 1.5, text, fontsize=8, color="white",
                va="top" if inside else "bottom",
                bbox=dict(facecolor=colour, edgecolor="none", pad=1.0, alpha=0.9))
    ax.set_title("object detection", fontsize=11)
    ax.set_xticks([])
    ax.set_yticks([])
    return ax


def draw_semantic(image, masks, labels, *, class_names=CLASS_NAMES, ax=None, legend=True):
    """Per-pixel class colours (one colour per CLASS, instances merged).

    image: (H, W, 3) (only its size is used); masks: (G, H, W) bool; labels: (G,).
    """
    image, _, labels, masks = _check_instances(image, None, labels, masks)
    ax = _axes(ax)
    sem = semantic_map(masks, labels)
    ax.imshow(CLASS_COLOURS[sem % len(CLASS_COLOURS)], interpolation="nearest")
    if legend:
        from matplotlib.patches import Patch

        present = sorted(set(int(v) for v in labels))
        handles = [Patch(color=CLASS_COLOURS[c], label=class_names[c]) for c in present]
        ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=3,
                  fontsize=8, frameon=False, handlelength=1.0, borderaxespad=0.3)
    ax.set_title("semantic segmentation", fontsize=11)
    ax.set_xticks([])
    ax.set_yticks([])
    return ax


def draw_instances(image, masks, labels=None, boxes=None, *, class_names=CLASS_NAMES, ax=None,
                   show_image=False, alpha=0.65):
    """Each object's mask in its own colour (one colour per INSTANCE), with its class name.

    image: (H, W, 3) in [0, 1]; masks: (G, H, W) bool; labels: optional (G,);
    boxes: optional (G, 4) drawn as dashed outlines.
    show_image: False paints on the dark background of ``draw_semantic`` (so the
    two panels compare directly); True blends the masks over the dimmed image.
    """
    from matplotlib.patches import Rectangle

    image, boxes, labels, masks = _check_instances(image, boxes, labels, masks)
    ax = _axes(ax)
    colours = instance_colours(len(masks))
    if show_image:
        canvas = 0.35 * np.asarray(image, dtype=np.float64) + 0.65 * 0.5
    else:
        canvas = np.empty(image.shape[:2] + (3,))
        canvas[:] = CLASS_COLOURS[0]
        alpha = 1.0
    for m, c in zip(masks, colours):
        canvas[m] = (1 - alpha) * canvas[m] + alpha * c
    ax.imshow(np.clip(canvas, 0, 1), interpolation="nearest")
    for k, (m, c) in enumerate(zip(masks, colours)):
        if boxes is not None:
            x1, y1, x2, y2 = boxes[k]
            ax.add_patch(Rectangle((x1 - 0.5, y1 - 0.5), x2 - x1, y2 - y1, fill=False,
                                   edgecolor=c, linewidth=1, linestyle="--"))
        if labels is not None and m.any():
            ys, xs = np.nonzero(m)
            ax.text(xs.mean(), ys.mean(), f"{class_names[int(labels[k])]} #{k + 1}",
                    fontsize=7, color="black", ha="center", va="center",
                    bbox=dict(facecolor="white", edgecolor="none", pad=0.8, alpha=0.75))
    ax.set_title("instance segmentation", fontsize=11)
    ax.set_xticks([])
    ax.set_yticks([])
    return ax


def compare_tasks(image, boxes, labels, masks, *, class_names=CLASS_NAMES, figsize=(14, 4.2)):
    """The four tasks side by side on one image (the chapter's opening figure).

    image (H, W, 3), boxes (G, 4), labels (G,), masks (G, H, W) bool. Returns the figure.
    """
    import matplotlib.pyplot as plt

    _check_instances(image, boxes, labels, masks)
    fig, axes = plt.subplots(1, 4, figsize=figsize)
    draw_classification(image, labels, class_names=class_names, ax=axes[0])
    draw_detection(image, boxes, labels, class_names=class_names, ax=axes[1])
    draw_semantic(image, masks, labels, class_names=class_names, ax=axes[2])
    draw_instances(image, masks, labels, class_names=class_names, ax=axes[3])
    fig.tight_layout()
    return fig


def draw_sample_grid(samples, *, ncols=4, class_names=CLASS_NAMES, figsize=None):
    """A grid of dataset samples, each with its instance masks outlined and boxes drawn.

    samples: list of dicts with "image", "boxes", "labels", "masks". Returns the figure.
    """
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    n = len(samples)
    nrows = max(1, -(-n // ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=figsize or (3 * ncols, 3 * nrows), squeeze=False)
    for ax in axes.ravel():
        ax.set_axis_off()
    for ax, s in zip(axes.ravel(), samples):
        image, boxes, labels, masks = _check_instances(s["image"], s["boxes"], s["labels"], s["masks"])
        ax.imshow(image, interpolation="nearest")
        for (x1, y1, x2, y2), lab, m in zip(boxes, labels, masks):
            colour = CLASS_COLOURS[int(lab) % len(CLASS_COLOURS)]
            ax.contour(m.astype(float), levels=[0.5], colors=[colour], linewidths=1)
            ax.add_patch(Rectangle((x1 - 0.5, y1 - 0.5), x2 - x1, y2 - y1, fill=False,
                                   edgecolor=colour, linewidth=1, linestyle="--"))
        ax.set_title(", ".join(class_names[int(v)] for v in labels), fontsize=8)
    fig.tight_layout()
    return fig
