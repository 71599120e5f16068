"""Figures for chapter 02, the ResNet backbone.

Every plotting function takes arrays computed by ``mrcnn_np`` and an optional
axes, draws, and returns the figure. Feature maps are (C, H, W) arrays of ONE
image (take ``features["C3"][0]``); images are (H, W, 3) floats in [0, 1].
"""
from __future__ import annotations

import numpy as np

__all__ = [
    "EDGE_FILTER_NAMES",
    "edge_filter_bank",
    "structured_channels",
    "plot_bottleneck_steps",
    "plot_receptive_fields",
    "plot_feature_shapes",
    "plot_feature_maps",
    "plot_filters",
]


#: what each filter of ``edge_filter_bank`` responds to
EDGE_FILTER_NAMES = ("blur", "d/dx", "d/dy", "edge /", "edge \\", "blob (LoG)", "red-green", "blue-yellow")


def _axes(ax, figsize):
    import matplotlib.pyplot as plt

    if ax is None:
        fig, ax = plt.subplots(figsize=figsize)
    return ax.figure, ax


def edge_filter_bank(width=8, *, size=7, dtype=np.float32):
    """Hand-designed 7x7 stem filters (width, 3, size, size), to replace random ones.

    Channels (names in ``EDGE_FILTER_NAMES``), repeated cyclically up to ``width``: a Gaussian blur of the
    brightness, horizontal and vertical derivatives of a Gaussian (edges),
    the two diagonal derivatives, a Laplacian of Gaussian (blobs), a red-green
    and a blue-yellow colour-opponent blur. Each filter has unit L2 norm; the
    grey filters weigh R, G, B equally. They make the first feature maps
    readable the way trained conv1 filters are (edges, blobs, colours).
    """
    r = (size - 1) / 2
    yy, xx = np.mgrid[-r:r + 1, -r:r + 1]
    sigma = size / 5
    g = np.exp(-(xx ** 2 + yy ** 2) / (2 * sigma ** 2))
    log = (xx ** 2 + yy ** 2 - 2 * sigma ** 2) * g  # Laplacian of Gaussian, zero mean below
    grey = np.ones(3) / 3
    bank = [
        (g, grey),
        (-xx * g, grey),
        (-yy * g, grey),
        (-(xx + yy) * g, grey),
        (-(xx - yy) * g, grey),
        (log - log.mean(), grey),
        (g, np.array([1.0, -1.0, 0.0])),
        (g, np.array([-0.5, -0.5, 1.0])),
    ]
    out = np.zeros((width, 3, size, size))
    for i in range(width):
        k, colour = bank[i % len(bank)]
        f = colour[:, None, None] * k[None]
        out[i] = f / np.linalg.norm(f)
    return out.astype(dtype)


def structured_channels(fmap, k=4):
    """Indices of the k channels of a (C, H, W) map with the most spatial structure.

    Score: the spatial standard deviation of the channel divided by its mean
    absolute value plus that standard deviation (so a channel that is
    all zeros or flat scores 0, one with strong local contrast scores high),
    times the fraction of non-zero cells (to skip channels where ReLU left a
    few isolated dots). Returns k indices, best first.
    """
    fmap = np.asarray(fmap, dtype=np.float64)
    std = fmap.std(axis=(1, 2))
    mean = np.abs(fmap).mean(axis=(1, 2))
    alive = (fmap != 0).mean(axis=(1, 2))
    score = std / (mean + std + 1e-12) * np.minimum(alive * 4, 1)
    return list(np.argsort(-score, kind="stable")[:k])


def plot_bottleneck_steps(steps, *, channel=0, cmap="viridis"):
    """One channel of every intermediate map of a bottleneck block, left to right.

    steps: list of (label, array (N, C, H, W)); the first image is shown.
    channel: channel drawn (modulo each map's channel count).
    Each panel is titled with the label and the (C, H, W) shape, and drawn at
    its true size relative to the first (a stride-2 step halves the panel).
    """
    import matplotlib.pyplot as plt

    n = len(steps)
    h0 = max(a.shape[2] for _, a in steps)
    w0 = max(a.shape[3] for _, a in steps)
    fig, axes = plt.subplots(1, n, figsize=(2.1 * n, 2.8))
    axes = np.atleast_1d(axes)
    for ax, (label, a) in zip(axes, steps):
        m = a[0, channel % a.shape[1]]
        ax.imshow(m, cmap=cmap, interpolation="nearest", extent=(0, a.shape[3], a.shape[2], 0))
        ax.set_xlim(0, w0)
        ax.set_ylim(h0, 0)
        ax.set_title(f"{label}\n{tuple(a.shape[1:])}", fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
        for side in ("top", "right"):
            ax.spines[side].set_visible(False)
    fig.tight_layout()
    return fig


def plot_receptive_fields(image, fields, *, center=None, ax=None):
    """Receptive field and stride cell of one feature cell per level, on the image.

    image: (H, W, 3) or (H, W). fields: {name: (stride, rf)} as
    ``resnet_receptive_fields``. center: (y, x) pixel (default image centre).
    Draws for each level a square of side rf (dashed) and one of side stride
    (filled), both centred on ``center``.
    """
    from matplotlib.patches import Rectangle

    fig, ax = _axes(ax, (4.8, 4.8))
    image = np.asarray(image)
    h, w = image.shape[:2]
    cy, cx = center if center is not None else (h / 2, w / 2)
    ax.imshow(image, cmap="gray" if image.ndim == 2 else None)
    names = [k for k in fields if k.startswith("C")]
    colors = ["#1b9e77", "#d95f02", "#7570b3", "#e7298a"]
    for name, color in zip(names, colors):
        stride, rf = fields[name]
        ax.add_patch(Rectangle((cx - rf / 2, cy - rf / 2), rf, rf, fill=False, ec=color, lw=2, ls="--",
                               label=f"{name}: field {rf} px, cell {stride} px"))
        ax.add_patch(Rectangle((cx - stride / 2, cy - stride / 2), stride, stride, fill=True, fc=color,
                               ec=color, alpha=0.5))
    big = max(fields[n][1] for n in names)
    pad = max(big / 2 - min(h, w) / 2, 0) + 10
    ax.set_xlim(-pad, w + pad)
    ax.set_ylim(h + pad, -pad)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, framealpha=0.9)
    ax.set_title("receptive field (dashed) and cell (filled) of one feature cell")
    return fig


def plot_feature_shapes(shapes, image_size, *, ax=None):
    """The image and its C2..C5 maps side by side at their true relative sizes.

    shapes: {"C2": (N, C, H, W), ...} (e.g. ``resnet_feature_shapes``);
    image_size: (H, W) of the input. One square per map, side = its number
    of cells (the image in pixels), all on one scale, labelled with its
    channels, H x W and stride; a stack of offset outlines behind each map
    grows with log2 of its channels (more, thinner maps as we go deeper).
    """
    from matplotlib.patches import Rectangle

    fig, ax = _axes(ax, (11, 4.2))
    H, W = image_size
    x = 0.0
    gap = 0.06 * W
    ax.add_patch(Rectangle((x, 0), W, H, fc="#dddddd", ec="k"))
    ax.text(x + W / 2, -0.03 * H, f"image\n3 x {H} x {W}", ha="center", va="bottom", fontsize=9)
    x += W + gap
    colors = ["#1b9e77", "#d95f02", "#7570b3", "#e7298a"]
    for (name, shape), color in zip(shapes.items(), colors):
        _, c, h, w = shape
        depth = max(int(np.log2(c)) - 4, 1)  # 256 ch -> 4 outlines, 2048 -> 7
        off = 0.012 * W
        slot = max(w + depth * off, 0.4 * W)  # room for the label
        x += (slot - w - depth * off) / 2
        for i in range(depth, 0, -1):
            ax.add_patch(Rectangle((x + i * off, -i * off + (H - h)), w, h, fill=False, ec=color,
                                   lw=0.6, alpha=0.6))
        ax.add_patch(Rectangle((x, H - h), w, h, fc=color, ec="k", alpha=0.85))
        ax.text(x + w / 2 + depth * off / 2, H - h - depth * off - 0.03 * H,
                f"{name}\n{c} channels\n{h} x {w}\nstride {H // h}", ha="center", va="bottom",
                fontsize=9)
        x += w + depth * off + (slot - w - depth * off) / 2 + gap / 2
    ax.set_xlim(-gap / 2, x + gap / 2)
    ax.set_ylim(H * 1.02, -0.2 * H)
    ax.set_aspect("equal")
    ax.axis("off")
    ax.set_title("feature maps at true relative size (side = number of cells)", fontsize=10)
    return fig


def plot_feature_maps(image, maps, *, k=4, cmap="magma"):
    """The image, then per level the mean |activation| and k structured channels.

    image: (H, W, 3) in [0, 1]. maps: {name: (C, H', W')} of that image,
    e.g. {"conv1": ..., "C2": features["C2"][0], ...}. The channels are
    chosen by ``structured_channels``; each is drawn over the image's extent
    (so every row lines up with the photo) with its own colour scale.
    """
    import matplotlib.pyplot as plt

    rows = len(maps)
    H, W = image.shape[:2]
    fig, axes = plt.subplots(rows, k + 2, figsize=(1.6 * (k + 2), (1.6 * H / W + 0.3) * rows))
    axes = np.atleast_2d(axes)
    for r, (name, fmap) in enumerate(maps.items()):
        ax = axes[r, 0]
        if r == 0:
            ax.imshow(image)
            ax.set_ylabel(f"{name}\n{tuple(fmap.shape)}", fontsize=8)
        else:  # the photo once is enough; later rows get a label panel
            ax.imshow(np.ones_like(image))
            ax.text(0.5, 0.5, f"{name}\n{fmap.shape[0]} channels\n{fmap.shape[1]} x {fmap.shape[2]}",
                    ha="center", va="center", transform=ax.transAxes, fontsize=9)
            for side in ax.spines.values():
                side.set_visible(False)
        ax = axes[r, 1]
        ax.imshow(np.abs(fmap).mean(axis=0), cmap="gray", interpolation="nearest", extent=(0, W, H, 0))
        ax.set_title("mean |activation|", fontsize=7)
        for j, c in enumerate(structured_channels(fmap, k)):
            ax = axes[r, j + 2]
            ax.imshow(fmap[c], cmap=cmap, interpolation="nearest", extent=(0, W, H, 0))
            ax.set_title(f"channel {c}", fontsize=7)
        for ax in axes[r]:
            ax.set_xticks([])
            ax.set_yticks([])
    fig.tight_layout()
    return fig


def plot_filters(weight, *, titles=None):
    """Stem filters (F, 3, k, k) as small RGB images, one per filter.

    Each filter is scaled to [0, 1] symmetrically around 0 (grey = 0), so a
    grey-level edge detector shows as a black/white pattern and a colour-
    opponent filter as colour. titles: optional list of F strings.
    """
    import matplotlib.pyplot as plt

    weight = np.asarray(weight, dtype=np.float64)
    n = weight.shape[0]
    fig, axes = plt.subplots(1, n, figsize=(1.3 * n, 1.6))
    axes = np.atleast_1d(axes)
    for i, ax in enumerate(axes):
        f = weight[i].transpose(1, 2, 0)
        m = np.abs(f).max() or 1.0
        ax.imshow(0.5 + 0.5 * f / m, interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        if titles is not None:
            ax.set_title(titles[i], fontsize=7)
    fig.tight_layout()
    return fig
