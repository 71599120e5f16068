"""Figures for chapter 01 (convolution): sliding window, im2col matrix, animation.

Shapes: x (N, C, H, W) or a single (H, W) map, w (F, C, KH, KW), out (N, F, Ho, Wo),
as in :mod:`mrcnn_np.ops.conv`. Grids are drawn with row 0 at the top and
every cell's value written in it, so a reader can redo the arithmetic.
"""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.animation import FuncAnimation
from matplotlib.patches import Rectangle

# the colour code of the classic cs231n demo: input blue, filter red, output green
INPUT_COLOR = "#cfe3f7"
INPUT_EDGE = "#1f5fa8"
FILTER_COLOR = "#f7d4cf"
FILTER_EDGE = "#b8321f"
OUTPUT_COLOR = "#d5efd0"
OUTPUT_EDGE = "#2e7d32"
PAD_COLOR = "#eeeeee"


def _fmt(v):
    v = float(v)
    if abs(v - round(v)) < 1e-9:
        return str(int(round(v)))
    return f"{v:.2f}"


def draw_grid(ax, values, *, x0=0.0, y0=0.0, facecolor="white", pad=0, pad_color=PAD_COLOR,
              edgecolor="#888888", fontsize=9, show=None, label=None, label_size=10):
    """Draw a 2-D array as a grid of numbered unit cells, top-left corner at (x0, y0).

    values: (h, w) array. pad: width of a border of cells drawn as padding
    (grey). show: optional (h, w) bool mask; hidden cells are drawn empty.
    label: text above the grid. The y axis is expected to point down
    (``ax.invert_yaxis()``). Returns nothing.
    """
    values = np.asarray(values)
    h, w = values.shape
    for i in range(h):
        for j in range(w):
            is_pad = i < pad or j < pad or i >= h - pad or j >= w - pad
            fc = pad_color if is_pad else facecolor
            ax.add_patch(Rectangle((x0 + j, y0 + i), 1, 1, facecolor=fc, edgecolor=edgecolor,
                                   linewidth=0.6))
            if show is None or show[i, j]:
                ax.text(x0 + j + 0.5, y0 + i + 0.52, _fmt(values[i, j]), ha="center",
                        va="center", fontsize=fontsize, color="#555555" if is_pad else "black")
    if label:
        ax.text(x0, y0 - 0.35, label, ha="left", va="bottom", fontsize=label_size)


def outline(ax, x0, y0, w, h, *, color, lw=2.5):
    """A rectangle outline (no fill) from (x0, y0) of size w x h cells."""
    ax.add_patch(Rectangle((x0, y0), w, h, fill=False, edgecolor=color, linewidth=lw, zorder=5))


def _fresh_axes(ax, figsize):
    if ax is None:
        fig, ax = plt.subplots(figsize=figsize)
    ax.set_aspect("equal")
    ax.axis("off")
    return ax


def plot_sliding_window(x, w, out, position, *, stride=1, padding=0, b=0.0, ax=None,
                        fontsize=9):
    """One step of a single-channel convolution: input window, kernel, output cell.

    x: (H, W) input, w: (KH, KW) kernel, out: (Ho, Wo) the convolution of x with w
    (plus the scalar bias b), position: (i, j) output cell to highlight.
    stride, padding: ints. Returns the axes.
    """
    x, w, out = np.asarray(x), np.asarray(w), np.asarray(out)
    KH, KW = w.shape
    xp = np.pad(x, padding)
    Hp, Wp = xp.shape
    Ho, Wo = out.shape
    ax = _fresh_axes(ax, (1.0 + 0.45 * (Wp + KW + Wo + 4), 0.6 * max(Hp, 3) + 1.2))
    i, j = position
    draw_grid(ax, xp, pad=padding, facecolor=INPUT_COLOR, fontsize=fontsize,
              label="input" + (f" (padded by {padding})" if padding else ""))
    outline(ax, j * stride, i * stride, KW, KH, color=INPUT_EDGE)
    kx = Wp + 1.5
    draw_grid(ax, w, x0=kx, facecolor=FILTER_COLOR, fontsize=fontsize, label="kernel")
    outline(ax, kx, 0, KW, KH, color=FILTER_EDGE)
    ox = kx + KW + 1.5
    show = np.zeros(out.shape, bool)
    show.reshape(-1)[: i * Wo + j + 1] = True
    draw_grid(ax, out, x0=ox, facecolor=OUTPUT_COLOR, fontsize=fontsize, show=show,
              label="output")
    outline(ax, ox + j, i, 1, 1, color=OUTPUT_EDGE)
    window = xp[i * stride:i * stride + KH, j * stride:j * stride + KW]
    terms = " + ".join(f"{_fmt(a)}*{_fmt(c)}" for a, c in zip(window.ravel(), w.ravel()))
    bias = f" + {_fmt(b)}" if b else ""
    ax.text(0, max(Hp, KH, Ho) + 0.9, f"out[{i},{j}] = {terms}{bias} = {_fmt(out[i, j])}",
            fontsize=fontsize - 1, va="top")
    ax.set_xlim(-0.3, ox + Wo + 0.3)
    ax.set_ylim(max(Hp, KH, Ho) + 1.8, -1.2)
    return ax


def plot_im2col(w, cols, out, *, row_labels=None, axes=None, fontsize=8):
    """The GEMM of a convolution: ``w2 (F, K) @ cols (K, M) = out (F, M)``.

    w: (F, K) weight matrix, cols: (K, M) unrolled receptive fields (one column per
    output pixel), out: (F, M). row_labels: optional K strings naming the rows of
    cols (e.g. "c0 p1 q2"). Small matrices get their numbers written in.
    Returns the three axes.
    """
    w, cols, out = np.asarray(w), np.asarray(cols), np.asarray(out)
    F, K = w.shape
    M = cols.shape[1]
    if axes is None:
        fig = plt.figure(figsize=(2.0 + 0.32 * (K + M + M), 1.6 + 0.3 * max(K, F)))
        gs = fig.add_gridspec(1, 3, width_ratios=[K, M, M], wspace=0.35)
        axes = [fig.add_subplot(gs[0, k]) for k in range(3)]
    titles = [f"weights w  ({F} x {K})", f"im2col columns  ({K} x {M})",
              f"output  ({F} x {M})"]
    cmaps = ["Reds", "Blues", "Greens"]
    for ax, mat, title, cmap in zip(axes, (w, cols, out), titles, cmaps):
        lim = max(float(np.abs(mat).max()), 1e-12)
        ax.imshow(mat, cmap=cmap, vmin=-lim * 0.3, vmax=lim, aspect="equal")
        ax.set_title(title, fontsize=fontsize + 2)
        ax.set_xticks([])
        ax.set_yticks([])
        if mat.size <= 600:
            for (r, c), v in np.ndenumerate(mat):
                ax.text(c, r, _fmt(v), ha="center", va="center", fontsize=fontsize - 1)
    if row_labels is not None:
        axes[1].set_yticks(range(K))
        axes[1].set_yticklabels(row_labels, fontsize=fontsize - 1)
    axes[1].set_xticks(range(M))
    axes[1].set_xticklabels([str(m) for m in range(M)], fontsize=fontsize - 1)
    axes[1].set_xlabel("output pixel (row-major)", fontsize=fontsize)
    axes[0].set_ylabel("filter", fontsize=fontsize)
    return axes


# --------------------------------------------------------------------------- the animation


class _DemoLayout:
    """Cell coordinates of the input volume, the filters and the output maps."""

    def __init__(self, C, Hp, Wp, F, KH, KW, Ho, Wo):
        self.gap = 1.6
        self.in_y = [c * (Hp + self.gap) for c in range(C)]
        self.f_x = [Wp + 2.0 + f * (KW + 2.0) for f in range(F)]
        self.f_y = [c * (KH + self.gap) for c in range(C)]
        self.b_y = C * (KH + self.gap)
        self.o_x = self.f_x[-1] + KW + 2.5
        self.o_y = [f * (Ho + self.gap) for f in range(F)]
        self.width = self.o_x + Wo + 0.5
        self.height = max(self.in_y[-1] + Hp, self.b_y + 1.0, self.o_y[-1] + Ho) + 1.6


def _build_demo(ax, x, w, b, out, *, stride, padding, fontsize):
    """Draw the static scene once; return update(step) that moves the highlights."""
    x, w, b, out = (np.asarray(a) for a in (x, w, b, out))
    C, H, W = x.shape
    F, _, KH, KW = w.shape
    _, Ho, Wo = out.shape
    p = padding
    xp = np.pad(x, ((0, 0), (p, p), (p, p)))
    L = _DemoLayout(C, H + 2 * p, W + 2 * p, F, KH, KW, Ho, Wo)
    ax.clear()
    ax.set_aspect("equal")
    ax.axis("off")
    for c in range(C):
        draw_grid(ax, xp[c], y0=L.in_y[c], pad=p, facecolor=INPUT_COLOR, fontsize=fontsize,
                  label=f"input x[{c}]" + (" (zero-padded)" if p and c == 0 else ""))
    for g in range(F):
        for c in range(C):
            draw_grid(ax, w[g, c], x0=L.f_x[g], y0=L.f_y[c], facecolor=FILTER_COLOR,
                      fontsize=fontsize,
                      label=(f"filter {g}\n" if c == 0 else "") + f"w[{g}, {c}]")
        draw_grid(ax, b[g:g + 1].reshape(1, 1), x0=L.f_x[g], y0=L.b_y, facecolor=FILTER_COLOR,
                  fontsize=fontsize, label=f"bias b[{g}]")
    out_texts = np.empty((F, Ho, Wo), dtype=object)
    for g in range(F):
        draw_grid(ax, out[g], x0=L.o_x, y0=L.o_y[g], facecolor=OUTPUT_COLOR, fontsize=fontsize,
                  show=np.zeros((Ho, Wo), bool), label=f"output out[{g}]")
        for r in range(Ho):
            for q in range(Wo):
                out_texts[g, r, q] = ax.text(L.o_x + q + 0.5, L.o_y[g] + r + 0.52,
                                             _fmt(out[g, r, q]), ha="center", va="center",
                                             fontsize=fontsize, visible=False)
    win = [Rectangle((0, L.in_y[c]), KW, KH, fill=False, edgecolor=INPUT_EDGE, linewidth=2.5,
                     zorder=5) for c in range(C)]
    filt = [Rectangle((0, L.f_y[c]), KW, KH, fill=False, edgecolor=FILTER_EDGE, linewidth=2.5,
                      zorder=5) for c in range(C)]
    filt.append(Rectangle((0, L.b_y), 1, 1, fill=False, edgecolor=FILTER_EDGE, linewidth=2.5,
                          zorder=5))
    cell = Rectangle((L.o_x, 0), 1, 1, fill=False, edgecolor=OUTPUT_EDGE, linewidth=2.5, zorder=5)
    for patch in win + filt + [cell]:
        ax.add_patch(patch)
    eq = ax.text(0, L.height - 0.6, "", fontsize=fontsize + 2, va="center")
    ax.set_xlim(-0.3, L.width)
    ax.set_ylim(L.height, -1.6)

    def update(step):
        f, rest = divmod(step, Ho * Wo)
        i, j = divmod(rest, Wo)
        for c in range(C):
            win[c].set_xy((j * stride, L.in_y[c] + i * stride))
        for patch in filt:
            patch.set_x(L.f_x[f])
        cell.set_xy((L.o_x + j, L.o_y[f] + i))
        for k, t in enumerate(out_texts.ravel()):
            t.set_visible(k <= step)
        window = xp[:, i * stride:i * stride + KH, j * stride:j * stride + KW]
        partial = (window * w[f]).sum(axis=(1, 2))
        terms = " + ".join(_fmt(v) for v in partial)
        eq.set_text(f"out[{f}, {i}, {j}] = sum over channels c of sum(window[c] * w[{f}, c])"
                    f" + b[{f}] = ({terms}) + {_fmt(b[f])} = {_fmt(out[f, i, j])}")
        return []

    return L, update


def draw_conv_demo_frame(ax, x, w, b, out, step, *, stride, padding, fontsize=9):
    """Frame ``step`` of the convolution demo, drawn into ``ax`` (cleared first).

    x: (C, H, W) one input volume; w: (F, C, KH, KW); b: (F,); out: (F, Ho, Wo) the
    convolution of x (computed by the caller with the library). Step k fills output
    cell k in (filter, row, column) order and highlights the input window (blue),
    the filter (red) and the output cell (green). Returns the axes.
    """
    _, update = _build_demo(ax, x, w, b, out, stride=stride, padding=padding,
                            fontsize=fontsize)
    update(step)
    return ax


def _demo_figsize(x, w, out, padding):
    C, H, W = np.shape(x)
    F, _, KH, KW = np.shape(w)
    _, Ho, Wo = np.shape(out)
    L = _DemoLayout(C, H + 2 * padding, W + 2 * padding, F, KH, KW, Ho, Wo)
    scale = 0.36
    return (L.width * scale, (L.height + 1.6) * scale)


def conv_demo_figure(x, w, b, out, step, *, stride, padding, dpi=72, fontsize=9):
    """A standalone figure of one frame of the demo (a still for the notebook)."""
    fig, ax = plt.subplots(figsize=_demo_figsize(x, w, out, padding), dpi=dpi)
    fig.subplots_adjust(left=0.01, right=0.99, top=0.99, bottom=0.01)
    draw_conv_demo_frame(ax, x, w, b, out, step, stride=stride, padding=padding,
                         fontsize=fontsize)
    return fig


def conv_demo_animation(x, w, b, out, *, stride, padding, dpi=72, fontsize=9, interval=1000):
    """The convolution demo as a matplotlib FuncAnimation, one frame per output cell.

    Arguments as :func:`draw_conv_demo_frame`. Returns (fig, anim); save with
    ``mrcnn_np.viz.common.save_animation(anim, path, fps=1)``.
    """
    fig, ax = plt.subplots(figsize=_demo_figsize(x, w, out, padding), dpi=dpi)
    fig.subplots_adjust(left=0.01, right=0.99, top=0.99, bottom=0.01)
    F, Ho, Wo = np.shape(out)
    _, update = _build_demo(ax, x, w, b, out, stride=stride, padding=padding,
                            fontsize=fontsize)
    anim = FuncAnimation(fig, update, frames=F * Ho * Wo, interval=interval, blit=False)
    return fig, anim


def plot_grids(arrays, titles, *, colors=None, highlight=None, ax=None, fontsize=9, gap=1.5):
    """A row of 2-D arrays drawn as numbered grids (e.g. dout, kernel, dx).

    arrays: list of (h, w) arrays; titles: list of strings; colors: list of face
    colours (default input blue). highlight: optional list of (i, j, h, w) boxes
    or None, one per array. Returns the axes.
    """
    arrays = [np.asarray(a) for a in arrays]
    colors = colors or [INPUT_COLOR] * len(arrays)
    width = sum(a.shape[1] for a in arrays) + gap * (len(arrays) - 1)
    height = max(a.shape[0] for a in arrays)
    ax = _fresh_axes(ax, (0.55 * width + 0.5, 0.55 * height + 1.2))
    x0 = 0.0
    for k, (a, title, color) in enumerate(zip(arrays, titles, colors)):
        draw_grid(ax, a, x0=x0, facecolor=color, fontsize=fontsize, label=title)
        if highlight is not None and highlight[k] is not None:
            i, j, h, w = highlight[k]
            outline(ax, x0 + j, i, w, h, color="black", lw=2.0)
        x0 += a.shape[1] + gap
    lines = max(t.count("\n") + 1 for t in titles)
    ax.set_xlim(-0.3, width + 0.3)
    ax.set_ylim(height + 0.3, -0.9 - 0.45 * lines)
    return ax
