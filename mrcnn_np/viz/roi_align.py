"""Figures for chapter 06: RoIAlign, its gradient, and the FPN level mapper.

Every function takes arrays (computed by ``mrcnn_np``) and an optional axes,
draws, and returns the figure (or axes).

Feature-map figures use RoIAlign's own frame: the value of cell ``(i, j)``
sits at the point ``(y, x) = (i, j)``, so a cell is drawn as the unit square
centred there (``imshow`` extent ``(-0.5, W - 0.5, H - 0.5, -0.5)``). In that
frame an image box edge ``x1`` (pixel-corner units) is at ``x1 * scale - 0.5``:
the "true" box is drawn dotted. Photo figures use image pixels, boxes xyxy.
"""
from __future__ import annotations

import numpy as np

from ..roi_align import (
    _round_half_up,
    level_mapper,
    roi_align_backward,
    roi_align_forward,
    roi_pool_naive,
    roi_sample_points,
)

__all__ = [
    "LEVEL_COLORS",
    "plot_roi_on_grid",
    "plot_bilinear_neighbours",
    "plot_aligned_vs_unaligned",
    "plot_roipool_vs_roialign",
    "plot_level_mapper",
    "plot_boxes_by_level",
    "plot_bin_gradient",
    "figure_roi_align",
    "figure_roi_levels",
]

#: one colour per FPN level P2..P5
LEVEL_COLORS = {2: "#1b9e77", 3: "#d95f02", 4: "#7570b3", 5: "#e7298a"}
_NEIGHBOUR_COLORS = ("#e41a1c", "#377eb8", "#4daf4a", "#984ea3")


def _axes(ax, figsize=(5, 5)):
    import matplotlib.pyplot as plt

    if ax is None:
        fig, ax = plt.subplots(figsize=figsize)
    return ax.figure, ax


def _rect(ax, x1, y1, x2, y2, **kw):
    from matplotlib.patches import Rectangle

    kw.setdefault("fill", False)
    ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, **kw))


def _show_map(ax, fmap, *, cmap="Greys", alpha=1.0, vmin=None, vmax=None, grid=True):
    """Feature map (H, W) with cells centred on integer points and light cell borders."""
    fmap = np.asarray(fmap, dtype=np.float64)
    h, w = fmap.shape
    im = ax.imshow(fmap, cmap=cmap, alpha=alpha, vmin=vmin, vmax=vmax, interpolation="nearest",
                   extent=(-0.5, w - 0.5, h - 0.5, -0.5))
    if grid:
        ax.set_xticks(np.arange(-0.5, w, 1), minor=True)
        ax.set_yticks(np.arange(-0.5, h, 1), minor=True)
        ax.grid(which="minor", color="0.75", lw=0.5)
        ax.tick_params(which="minor", length=0)
    ax.set_xlim(-0.5, w - 0.5)
    ax.set_ylim(h - 0.5, -0.5)
    return im


def _sampling_box(box, spatial_scale, aligned):
    """The box RoIAlign samples, in the feature frame: (x1, y1, x2, y2)."""
    off = 0.5 if aligned else 0.0
    x1, y1, x2, y2 = np.asarray(box, dtype=np.float64) * spatial_scale - off
    if not aligned:
        x2, y2 = x1 + max(x2 - x1, 1.0), y1 + max(y2 - y1, 1.0)
    return x1, y1, x2, y2


def _draw_roi(ax, box, output_size, *, spatial_scale, sampling_ratio, aligned, color="C3",
              point_color="C0", show_true=True, label=None, marker="o"):
    ph, pw = (output_size, output_size) if np.isscalar(output_size) else output_size
    x1, y1, x2, y2 = _sampling_box(box, spatial_scale, aligned)
    _rect(ax, x1, y1, x2, y2, edgecolor=color, lw=2, label=label)
    for p in range(1, ph):
        y = y1 + p * (y2 - y1) / ph
        ax.plot([x1, x2], [y, y], color=color, lw=0.8, ls="--")
    for q in range(1, pw):
        x = x1 + q * (x2 - x1) / pw
        ax.plot([x, x], [y1, y2], color=color, lw=0.8, ls="--")
    ys, xs = roi_sample_points(box, output_size, spatial_scale=spatial_scale,
                               sampling_ratio=sampling_ratio, aligned=aligned)
    yy, xx = np.meshgrid(ys.ravel(), xs.ravel(), indexing="ij")
    ax.scatter(xx.ravel(), yy.ravel(), s=14, color=point_color, zorder=3, marker=marker,
               edgecolor="white", linewidth=0.5)
    if show_true:
        tx1, ty1, tx2, ty2 = np.asarray(box, dtype=np.float64) * spatial_scale - 0.5
        _rect(ax, tx1, ty1, tx2, ty2, edgecolor="k", lw=1.2, ls=":")
    return ys, xs


def plot_roi_on_grid(fmap, box, output_size, *, spatial_scale=1.0, sampling_ratio=2,
                     aligned=False, ax=None):
    """A RoI on a feature-map grid: its bins (dashed) and sample points (dots).

    fmap: (H, W) feature values (drawn in grey).
    box: (4,) xyxy in image pixels; output_size: int or (ph, pw).
    The dotted black rectangle is the box in pixel-centre units (``* scale - 0.5``).
    """
    fig, ax = _axes(ax)
    _show_map(ax, fmap, alpha=0.6)
    _draw_roi(ax, box, output_size, spatial_scale=spatial_scale, sampling_ratio=sampling_ratio,
              aligned=aligned, label="sampled box and bins")
    ax.plot([], [], "k:", label="box, pixel-centre units")
    ax.scatter([], [], s=14, color="C0", label="sample points")
    ax.legend(loc="lower left", fontsize=7, framealpha=0.9)
    ph, pw = (output_size, output_size) if np.isscalar(output_size) else output_size
    ax.set_title(f"RoI on the feature map: {ph}x{pw} bins, "
                 f"sampling_ratio={sampling_ratio}, aligned={aligned}", fontsize=9)
    return fig


def plot_bilinear_neighbours(fmap, y, x, ax=None):
    """One sample point, its four neighbours and their bilinear weights.

    fmap: (H, W); (y, x): the sample, inside the map (away from the borders).
    Each weight is the area of the sub-rectangle opposite its neighbour; the
    sub-rectangles are shaded in the neighbour's colour.
    """
    fig, ax = _axes(ax)
    fmap = np.asarray(fmap, dtype=np.float64)
    y0, x0 = int(np.floor(y)), int(np.floor(x))
    ly, lx = y - y0, x - x0
    corners = [(y0, x0, (1 - ly) * (1 - lx)), (y0, x0 + 1, (1 - ly) * lx),
               (y0 + 1, x0, ly * (1 - lx)), (y0 + 1, x0 + 1, ly * lx)]
    # area opposite each corner
    opposite = [(x, y, x0 + 1, y0 + 1), (x0, y, x, y0 + 1), (x, y0, x0 + 1, y), (x0, y0, x, y)]
    for (cy, cx, wgt), (ax1, ay1, ax2, ay2), col in zip(corners, opposite, _NEIGHBOUR_COLORS):
        _rect(ax, ax1, ay1, ax2, ay2, fill=True, facecolor=col, alpha=0.25, edgecolor="none")
        ax.scatter([cx], [cy], s=120, color=col, zorder=3)
        ax.annotate(f"f={fmap[cy, cx]:.2f}\nw={wgt:.3f}", (cx, cy), textcoords="offset points",
                    xytext=(-14 if cx == x0 else 14, -20 if cy == y0 else 20),
                    ha="right" if cx == x0 else "left", va="center", fontsize=8, color=col)
        ax.plot([x, cx], [y, cy], color=col, lw=0.8)
    _rect(ax, x0, y0, x0 + 1, y0 + 1, edgecolor="0.3", lw=1)
    value = sum(w * fmap[cy, cx] for cy, cx, w in corners)
    ax.scatter([x], [y], s=60, color="k", marker="x", zorder=4)
    ax.set_xlim(x0 - 0.9, x0 + 1.9)
    ax.set_ylim(y0 + 1.9, y0 - 0.9)
    ax.set_aspect("equal")
    ax.set_xticks([x0, x0 + 1])
    ax.set_yticks([y0, y0 + 1])
    ax.set_title(f"bilinear sample at (y={y:.2f}, x={x:.2f}) = {value:.3f}", fontsize=9)
    return fig


def plot_aligned_vs_unaligned(fmap, box, output_size, *, spatial_scale=1.0, sampling_ratio=2,
                              axes=None):
    """The same box sampled with ``aligned=False`` and ``aligned=True`` (two panels).

    The dotted rectangle is the box in pixel-centre units; aligned samples sit
    symmetrically inside it, unaligned ones half a cell right of and below it.
    """
    import matplotlib.pyplot as plt

    if axes is None:
        fig, axes = plt.subplots(1, 2, figsize=(10, 5))
    fig = axes[0].figure
    for ax, aligned in zip(axes, (False, True)):
        _show_map(ax, fmap, alpha=0.6)
        ys, xs = _draw_roi(ax, box, output_size, spatial_scale=spatial_scale,
                           sampling_ratio=sampling_ratio, aligned=aligned,
                           color="C3" if not aligned else "C2")
        tx1, ty1, tx2, ty2 = np.asarray(box, dtype=np.float64) * spatial_scale - 0.5
        shift_x = xs.mean() - (tx1 + tx2) / 2
        shift_y = ys.mean() - (ty1 + ty2) / 2
        ax.set_title(f"aligned={aligned}: sample centre - box centre = "
                     f"({shift_x:+.2f}, {shift_y:+.2f}) cells", fontsize=9)
    return fig


def _roipool_bins(box, output_size, spatial_scale):
    """RoI Pool's bins (torchvision ``roi_pool``): the box rounded to whole cells,
    each bin rounded outwards. Returns (h0, h1, w0, w1), each (ph, pw) int:
    bin (p, q) max-pools cells h0 <= h < h1, w0 <= w < w1."""
    ph, pw = (output_size, output_size) if np.isscalar(output_size) else output_size
    sx, sy = (_round_half_up(v * spatial_scale) for v in box[:2])
    ex, ey = (_round_half_up(v * spatial_scale) for v in box[2:])
    rw, rh = max(ex - sx + 1, 1), max(ey - sy + 1, 1)
    p, q = np.meshgrid(np.arange(ph), np.arange(pw), indexing="ij")
    h0 = np.floor(p * rh / ph).astype(int) + sy
    h1 = np.ceil((p + 1) * rh / ph).astype(int) + sy
    w0 = np.floor(q * rw / pw).astype(int) + sx
    w1 = np.ceil((q + 1) * rw / pw).astype(int) + sx
    return h0, h1, w0, w1


def plot_roipool_vs_roialign(fmap, box, output_size, *, spatial_scale=1.0, sampling_ratio=2,
                             shifts=None, bin_index=0, axes=None):
    """RoI Pool's rounding against RoIAlign's exact sampling.

    Left: the box (dotted), RoIAlign's bins (red, exact, aligned=True) and
    RoI Pool's bins (blue, snapped to whole cells). Right: the x extent of one
    column of bins as the box slides right by sub-cell steps: RoIAlign's bin
    moves with the box, RoI Pool's jumps a whole cell at a time, and the gap
    between them is the quantisation error.
    fmap: (H, W); box: (4,) image pixels; shifts: image-pixel offsets.
    """
    import matplotlib.pyplot as plt

    if axes is None:
        fig, axes = plt.subplots(1, 2, figsize=(11, 4.8))
    fig = axes[0].figure
    fmap = np.asarray(fmap, dtype=np.float64)
    box = np.asarray(box, dtype=np.float64)
    ph, pw = (output_size, output_size) if np.isscalar(output_size) else output_size
    ax = axes[0]
    _show_map(ax, fmap, alpha=0.6)
    _draw_roi(ax, box, output_size, spatial_scale=spatial_scale, sampling_ratio=sampling_ratio,
              aligned=True, color="C3", label="RoIAlign bins (aligned)")
    h0, h1, w0, w1 = _roipool_bins(box, output_size, spatial_scale)
    for p in range(ph):
        for q in range(pw):
            _rect(ax, w0[p, q] - 0.5 + 0.06, h0[p, q] - 0.5 + 0.06, w1[p, q] - 0.5 - 0.06,
                  h1[p, q] - 0.5 - 0.06, edgecolor="C0", lw=1.2,
                  label="RoI Pool bins (whole cells)" if p == q == 0 else None)
    ax.legend(loc="lower right", fontsize=7)
    ax.set_title("RoI Pool snaps the box and its bins to cells", fontsize=9)

    ax = axes[1]
    if shifts is None:
        shifts = np.linspace(0, 2.0 / spatial_scale, 161)
    q = bin_index
    exact, pooled = [], []
    for s in shifts:
        moved = box + np.array([s, 0, s, 0])
        x1, _, x2, _ = _sampling_box(moved, spatial_scale, aligned=True)
        bw = (x2 - x1) / pw
        exact.append((x1 + q * bw, x1 + (q + 1) * bw))
        _, _, a, b = _roipool_bins(moved, output_size, spatial_scale)
        pooled.append((a[0, q] - 0.5, b[0, q] - 0.5))
    exact, pooled = np.array(exact), np.array(pooled)
    t = shifts * spatial_scale
    ax.fill_between(t, exact[:, 0], exact[:, 1], color="C3", alpha=0.25,
                    label=f"RoIAlign bin {q} (exact)")
    ax.plot(t, pooled[:, 0], color="C0", drawstyle="steps-post", label=f"RoI Pool bin {q} edges")
    ax.plot(t, pooled[:, 1], color="C0", drawstyle="steps-post")
    err = np.abs(pooled - exact).max()
    ax.set_xlabel("box shift to the right (feature cells)")
    ax.set_ylabel("bin's x extent on the feature map (cells)")
    ax.legend(fontsize=8, loc="upper left")
    ax.set_title(f"sliding the box: RoI Pool's bin edges are off by up to {err:.2f} cells",
                 fontsize=9)
    return fig


def plot_level_mapper(*, sizes=None, k_min=2, k_max=5, canonical_scale=224, canonical_level=4,
                      ax=None):
    """FPN level against box size: ``floor(k0 + log2(sqrt(wh) / 224))`` clamped to [2, 5]."""
    fig, ax = _axes(ax, figsize=(6, 4))
    if sizes is None:
        sizes = np.geomspace(8, 2048, 600)
    boxes = np.column_stack([np.zeros_like(sizes), np.zeros_like(sizes), sizes, sizes])
    levels = level_mapper(boxes, k_min=k_min, k_max=k_max, canonical_scale=canonical_scale,
                          canonical_level=canonical_level)
    raw = canonical_level + np.log2(sizes / canonical_scale)
    ax.plot(sizes, raw, color="0.5", ls="--", label=r"$k_0 + \log_2(\sqrt{wh}/224)$")
    for lvl in range(k_min, k_max + 1):
        sel = levels == lvl
        ax.plot(sizes[sel], levels[sel], color=LEVEL_COLORS.get(lvl, "k"), lw=4,
                solid_capstyle="butt", label=f"P{lvl} (stride {2 ** lvl})")
    for s in (112, 224, 448):
        ax.axvline(s, color="0.8", lw=0.8, zorder=0)
        ax.text(s, k_min - 0.9, f"{s}", ha="center", fontsize=7, color="0.4")
    ax.set_xscale("log")
    ax.set_ylim(k_min - 1, k_max + 1)
    ax.set_xlabel(r"box size $\sqrt{wh}$ (input pixels)")
    ax.set_ylabel("FPN level k")
    ax.set_title(f"level mapper, k0 = {canonical_level}, clamped to [{k_min}, {k_max}]", fontsize=9)
    ax.legend(fontsize=7, loc="upper left")
    return fig


def plot_boxes_by_level(image, boxes, levels, *, ax=None):
    """Boxes (K, 4) xyxy on a photo (H, W, 3) in [0, 1], coloured by FPN level (K,)."""
    fig, ax = _axes(ax, figsize=(5, 6))
    image = np.asarray(image, dtype=np.float64)
    ax.imshow(image, extent=(0, image.shape[1], image.shape[0], 0))
    seen = set()
    for (x1, y1, x2, y2), lvl in zip(np.asarray(boxes, dtype=np.float64), levels):
        lvl = int(lvl)
        _rect(ax, x1, y1, x2, y2, edgecolor=LEVEL_COLORS.get(lvl, "k"), lw=2,
              label=f"P{lvl}" if lvl not in seen else None)
        seen.add(lvl)
    ax.set_xlim(0, image.shape[1])
    ax.set_ylim(image.shape[0], 0)
    handles, labels = ax.get_legend_handles_labels()
    order = np.argsort(labels)
    ax.legend([handles[i] for i in order], [labels[i] for i in order], fontsize=8,
              loc="lower right")
    ax.set_xticks([])
    ax.set_yticks([])
    return fig


def plot_bin_gradient(map_shape, box, output_size, bin_index, *, spatial_scale=1.0,
                      sampling_ratio=2, aligned=False, ax=None):
    """Backward of one output bin, drawn as a heat map on the feature grid.

    map_shape: (H, W). Sets ``dout`` to 1 on bin ``bin_index = (p, q)`` and 0
    elsewhere and draws ``roi_align_backward``: the cells that receive
    gradient and how much (each sample hands its 1/count to its four
    neighbours). The bin's samples are overlaid.
    """
    fig, ax = _axes(ax)
    h, w = map_shape
    ph, pw = (output_size, output_size) if np.isscalar(output_size) else output_size
    x = np.zeros((1, 1, h, w))
    boxes = np.concatenate([[0.0], np.asarray(box, dtype=np.float64)])[None]
    out, cache = roi_align_forward(x, boxes, (ph, pw), spatial_scale=spatial_scale,
                                   sampling_ratio=sampling_ratio, aligned=aligned)
    dout = np.zeros_like(out)
    p, q = bin_index
    dout[0, 0, p, q] = 1.0
    grad = roi_align_backward(dout, cache)[0, 0]
    im = _show_map(ax, grad, cmap="magma_r", vmin=0)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="d out[p, q] / d feature")
    x1, y1, x2, y2 = _sampling_box(box, spatial_scale, aligned)
    _rect(ax, x1, y1, x2, y2, edgecolor="C0", lw=1.5)
    bh, bw = (y2 - y1) / ph, (x2 - x1) / pw
    _rect(ax, x1 + q * bw, y1 + p * bh, x1 + (q + 1) * bw, y1 + (p + 1) * bh, edgecolor="C2",
          lw=2)
    ys, xs = roi_sample_points(box, (ph, pw), spatial_scale=spatial_scale,
                               sampling_ratio=sampling_ratio, aligned=aligned)
    yy, xx = np.meshgrid(ys[p], xs[q], indexing="ij")
    ax.scatter(xx.ravel(), yy.ravel(), s=16, color="C2", edgecolor="white", linewidth=0.5,
               zorder=3)
    ax.set_title(f"gradient of bin ({p}, {q}): sums to {grad.sum():.3f}", fontsize=9)
    return fig


def figure_roi_align(fmap, box, output_size, *, spatial_scale=1.0, sampling_ratio=2,
                     sample=(0, 0), bin_index=(1, 1)):
    """The chapter's summary figure (``images/roi_align.png``), three panels:
    the RoI with bins and samples; one sample's bilinear neighbours; the
    backward of one bin as a heat map."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.8), gridspec_kw={"width_ratios": [1, 0.8, 1.1]})
    plot_roi_on_grid(fmap, box, output_size, spatial_scale=spatial_scale,
                     sampling_ratio=sampling_ratio, ax=axes[0])
    ys, xs = roi_sample_points(box, output_size, spatial_scale=spatial_scale,
                               sampling_ratio=sampling_ratio)
    y, x = ys.ravel()[sample[0]], xs.ravel()[sample[1]]
    axes[0].scatter([x], [y], s=90, facecolor="none", edgecolor="k", lw=1.5, zorder=4)
    plot_bilinear_neighbours(fmap, y, x, ax=axes[1])
    plot_bin_gradient(np.shape(fmap), box, output_size, bin_index, spatial_scale=spatial_scale,
                      sampling_ratio=sampling_ratio, ax=axes[2])
    fig.tight_layout()
    return fig


def figure_roi_levels(image, boxes, levels):
    """The RoI-to-pyramid figure (``images/roi_levels.png``): the level mapper
    over box sizes beside boxes on a photo coloured by their level."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 5), gridspec_kw={"width_ratios": [1.3, 1]})
    plot_level_mapper(ax=axes[0])
    plot_boxes_by_level(image, boxes, levels, ax=axes[1])
    axes[1].set_title("boxes coloured by the pyramid level they are pooled from", fontsize=9)
    fig.tight_layout()
    return fig
