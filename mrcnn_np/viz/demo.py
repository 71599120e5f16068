"""Figures of chapter 09 and of the demo: training curves and predictions on held-out images."""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np

from ..model import LOSS_NAMES
from .evaluation import plot_detections

__all__ = ["smooth", "plot_training_history", "plot_demo_predictions", "plot_learning_rate", "plot_gradient_reach",
           "plot_transform"]


def smooth(values, window):
    """Moving average over the last ``window`` values (shorter at the start): (S,) -> (S,)."""
    values = np.asarray(values, dtype=np.float64)
    if window <= 1 or values.size == 0:
        return values
    c = np.cumsum(np.concatenate([[0.0], values]))
    idx = np.arange(1, values.size + 1)
    lo = np.maximum(0, idx - window)
    return (c[idx] - c[lo]) / (idx - lo)


def plot_training_history(history, *, window=25, axes=None):
    """Left: the total loss per step (faint) and its moving average; right: the five losses
    (moving averages, log scale) and the learning rate on a second axis.

    history: list of per-step dicts from ``train.train`` (the five losses, "loss", "lr").
    """
    if axes is None:
        fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    else:
        fig = axes[0].figure
    steps = np.arange(1, len(history) + 1)
    total = [h["loss"] for h in history]
    ax = axes[0]
    ax.plot(steps, total, color="0.75", lw=0.6, label="per step")
    ax.plot(steps, smooth(total, window), color="C0", lw=1.8, label=f"mean of {window} steps")
    ax.set_xlabel("step")
    ax.set_ylabel("total loss (sum of five)")
    ax.set_title("training loss")
    ax.set_ylim(0, max(total) * 1.05)
    ax.legend(fontsize=8)
    ax = axes[1]
    for i, name in enumerate(LOSS_NAMES):
        ax.plot(steps, smooth([h[name] for h in history], window), color=f"C{i}", lw=1.4,
                label=name.replace("loss_", ""))
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (moving average)")
    ax.set_title("the five losses")
    ax.legend(fontsize=8, loc="lower left", ncol=2)
    lr_ax = ax.twinx()
    lr_ax.plot(steps, [h["lr"] for h in history], color="k", lw=1.0, ls=":")
    lr_ax.set_ylabel("learning rate (dotted)")
    lr_ax.set_ylim(0, max(h["lr"] for h in history) * 1.1)
    fig.tight_layout()
    return fig, axes


def plot_demo_predictions(images, ground_truth, detections, *, class_names=None, min_score=0.5, ncols=4):
    """A grid of held-out images: ground truth outlined in white, detections (score >=
    ``min_score``) as orange mask outlines and dashed boxes with class and score.

    images: list of (H, W, 3) in [0, 1]; ground_truth / detections: lists of dicts as
    ``evaluate.coco_evaluate`` takes them (detection masks (D, H, W) bool).
    """
    n = len(images)
    nrows = -(-n // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.1 * ncols, 3.4 * nrows), squeeze=False)
    # fixed margins BEFORE drawing: the labels are placed for the axes' final positions
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=1 - 0.45 / (3.4 * nrows), wspace=0.04,
                        hspace=0.3 / nrows + 0.04)
    for k, ax in enumerate(axes.ravel()):
        if k >= n:
            ax.axis("off")
            continue
        det = detections[k]
        shown = int(np.sum(np.asarray(det["scores"]) >= min_score))
        g = len(ground_truth[k]["labels"])
        plot_detections(images[k], ground_truth[k], det, ax=ax, class_names=class_names,
                        min_score=min_score, legend=(k == 0),
                        title=f"{g} object{'s' * (g != 1)}, {shown} detection{'s' * (shown != 1)}")
    fig.suptitle(f"held-out images: ground truth (white) and detections with score >= {min_score}", y=0.995)
    return fig, axes


def plot_learning_rate(lrs, *, ax=None, title=None):
    """The learning rate per step (lrs: (S,)), linear axes."""
    if ax is None:
        fig, ax = plt.subplots(figsize=(6, 2.6))
    else:
        fig = ax.figure
    ax.plot(np.arange(len(lrs)), lrs, color="C0")
    ax.set_xlabel("step")
    ax.set_ylabel("learning rate")
    ax.set_ylim(0, max(lrs) * 1.1)
    ax.set_title(title or "warm-up, then a step decay")
    fig.tight_layout()
    return fig, ax


def plot_gradient_reach(norms, loss_names, group_names, *, ax=None):
    """Heat map of gradient norms: which loss (row) trains which part of the model (column).

    norms: (L, P) L2 norm of d loss_l / d (parameters of group p); exact zeros are
    drawn white and labelled "0" (the loss does not reach that part).
    """
    norms = np.asarray(norms, dtype=np.float64)
    if ax is None:
        fig, ax = plt.subplots(figsize=(1.25 * len(group_names) + 2, 0.55 * len(loss_names) + 1.6))
    else:
        fig = ax.figure
    shown = np.where(norms > 0, np.log10(np.where(norms > 0, norms, 1.0)), np.nan)
    cmap = plt.get_cmap("viridis").copy()
    cmap.set_bad("white")
    im = ax.imshow(shown, cmap=cmap, aspect="auto")
    for (i, j), v in np.ndenumerate(norms):
        text = "0" if v == 0 else f"{v:.1e}"
        bright = v > 0 and shown[i, j] > np.nanmean(shown)
        ax.text(j, i, text, ha="center", va="center", fontsize=8, color="k" if bright or v == 0 else "w")
    ax.set_xticks(range(len(group_names)), group_names, rotation=30, ha="right", fontsize=8)
    ax.set_yticks(range(len(loss_names)), loss_names, fontsize=8)
    fig.colorbar(im, ax=ax, label="log10 gradient norm")
    ax.set_title("which loss trains which part (gradient norm at initialisation)")
    fig.tight_layout()
    return fig, ax


def plot_transform(original, batch_image, valid_size, *, mean, std, axes=None):
    """The transform on one image: the original, and the network's input de-normalised.

    original: (H, W, 3) in [0, 1]; batch_image: (3, Hp, Wp) normalised and zero-padded
    (one image of ``transform_forward``'s batch); valid_size: its (h, w) before padding;
    mean, std: the normalisation, undone for display (the zero padding shows as the mean
    colour). The valid region is outlined, the padding hatched.
    """
    from matplotlib.patches import Rectangle

    if axes is None:
        fig, axes = plt.subplots(1, 2, figsize=(7.5, 4))
    else:
        fig = axes[0].figure
    H, W = original.shape[:2]
    axes[0].imshow(original, extent=(0, W, H, 0))
    axes[0].set_title(f"original: {H} x {W}")
    shown = np.clip(batch_image.transpose(1, 2, 0) * np.asarray(std) + np.asarray(mean), 0, 1)
    Hp, Wp = shown.shape[:2]
    h, w = valid_size
    axes[1].imshow(shown, extent=(0, Wp, Hp, 0))
    axes[1].add_patch(Rectangle((0, 0), w, h, fill=False, ec="C1", lw=2, label=f"resized image {h} x {w}"))
    for x0, y0, x1, y1 in ((w, 0, Wp, Hp), (0, h, w, Hp)):
        if x1 > x0 and y1 > y0:
            axes[1].add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, hatch="///", ec="C3", lw=0))
    axes[1].plot([], [], color="C3", lw=4, alpha=0.6, label="zero padding (= the mean colour)")
    axes[1].set_title(f"network input: {Hp} x {Wp} (a multiple of 32)")
    axes[1].legend(loc="lower center", bbox_to_anchor=(0.5, -0.2), fontsize=8, ncol=2, frameon=False)
    for ax, (hh, ww) in zip(axes, ((H, W), (Hp, Wp))):
        ax.set_xlim(0, ww)
        ax.set_ylim(hh, 0)
    fig.tight_layout()
    return fig, axes
