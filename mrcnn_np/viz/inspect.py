"""Chapter 11, inspecting a trained model: find the worst images, say why they
fail, and draw every stage of one image's trace.

Two kinds of functions:

- analysis on traces and ground truth (no matplotlib): :func:`per_image_ap`,
  :func:`worst_images`, :func:`diagnose`, :func:`format_diagnosis`;
- figures, each returning the figure: :func:`plot_input`,
  :func:`plot_feature_pyramid`, :func:`plot_proposal_levels`,
  :func:`plot_class_score_matrix`, :func:`plot_activation_histograms`,
  :func:`plot_overlaps`, :func:`plot_pr_per_class`.

Frames: ground truth and ``ImageTrace.detections`` are in ORIGINAL image
pixels; proposals, refined boxes and the candidates before NMS are in the
RESIZED frame (``mrcnn_np.trace``); :func:`diagnose` maps the ground truth into
the resized frame with ``transform.resize_boxes`` before comparing. Boxes are
(x1, y1, x2, y2); labels are ints with 0 = background.
"""
from __future__ import annotations

import numpy as np

from ..boxes import box_iou
from ..evaluate import coco_evaluate
from ..transform import resize_boxes
from .anchors import draw_boxes
from .heads import _color, _name, detection_sources

__all__ = [
    "LEVEL_COLORS",
    "per_image_ap",
    "worst_images",
    "diagnose",
    "format_diagnosis",
    "plot_input",
    "plot_feature_pyramid",
    "proposal_rpn_levels",
    "plot_proposal_levels",
    "plot_class_score_matrix",
    "plot_activation_histograms",
    "plot_overlaps",
    "plot_pr_per_class",
]

#: one colour per pyramid level 2..6 (P2 .. P6)
LEVEL_COLORS = {2: "#1b9e77", 3: "#d95f02", 4: "#7570b3", 5: "#e7298a", 6: "#66a61e"}


# =========================================================================== analysis


def per_image_ap(gts, dets, *, iou_type="bbox", iou_thresholds=None, category_ids=None):
    """COCO AP of each image evaluated alone: ``coco_evaluate([gt_i], [det_i]).stats[0]``.

    gts: list over images of dicts with "boxes", "labels" (and "masks" (G, H, W)
    bool for ``iou_type="segm"``); dets: list of detection dicts ("boxes",
    "labels", "scores", and "masks" (D, H, W) bool for "segm").
    iou_thresholds: None (COCO's 0.50:0.05:0.95) or e.g. (0.5,) for AP50.
    category_ids: the classes to average over (default: those of the image's
    ground truth). A class is only scored where the image has an object of it, so
    a false positive of a class absent from the image does not lower that image's
    AP (COCO's rule; :func:`diagnose` still reports it).
    Returns (N,) float64; NaN for an image without ground truth.
    """
    if len(gts) != len(dets):
        raise ValueError(f"gts and dets must have one entry per image, got {len(gts)} and {len(dets)}")
    out = np.full(len(gts), np.nan)
    for i, (g, d) in enumerate(zip(gts, dets)):
        if not len(g["labels"]):
            continue
        stats = coco_evaluate([g], [d], iou_type=iou_type, iou_thresholds=iou_thresholds,
                              category_ids=category_ids).stats
        out[i] = stats[0] if stats[0] >= 0 else np.nan
    return out


def worst_images(gts, dets, k=3, *, score_threshold=0.5):
    """The ``k`` images the model does worst on, worst first.

    Images are ranked by box AP at IoU 0.5 (misses, confusions and false
    positives that outrank a true detection), then by box AP over IoU
    0.50:0.95 (localisation), then by the number of errors at
    ``score_threshold`` (missed objects plus detections scoring at least
    ``score_threshold`` that match no object of their class at IoU 0.5),
    then by index. Images without ground truth are never chosen.
    gts, dets: as :func:`per_image_ap` (boxes only are used).
    Returns a list of dicts, one per chosen image: "image" (index), "ap50",
    "ap", "errors".
    """
    ap50 = per_image_ap(gts, dets, iou_thresholds=(0.5,))
    ap = per_image_ap(gts, dets)
    errors = np.array([_count_errors(g, d, score_threshold) for g, d in zip(gts, dets)], dtype=np.int64)
    valid = np.flatnonzero(~np.isnan(ap50))
    # lexsort: the LAST key is the primary one
    order = valid[np.lexsort((valid, -errors[valid], ap[valid], ap50[valid]))]
    return [{"image": int(i), "ap50": float(ap50[i]), "ap": float(ap[i]), "errors": int(errors[i])}
            for i in order[:k]]


def _greedy_match(det_boxes, det_labels, det_scores, gt_boxes, gt_labels, iou_threshold):
    """COCO-style greedy matching at one threshold, same class only, best score first.

    Returns (det_to_gt (D,) int, -1 if unmatched; gt_to_det (G,) int, -1 if unmatched;
    ious (D, G)).
    """
    d, g = len(det_boxes), len(gt_boxes)
    ious = box_iou(np.asarray(det_boxes, np.float64).reshape(-1, 4),
                   np.asarray(gt_boxes, np.float64).reshape(-1, 4)) if d and g else np.zeros((d, g))
    det_to_gt = np.full(d, -1, dtype=np.int64)
    gt_to_det = np.full(g, -1, dtype=np.int64)
    for e in np.argsort(-np.asarray(det_scores, dtype=np.float64), kind="stable"):
        cand = np.where((gt_to_det < 0) & (np.asarray(gt_labels) == det_labels[e]) & (ious[e] >= iou_threshold),
                        ious[e], -1.0)
        if cand.size and cand.max() >= 0:
            j = int(np.argmax(cand))
            det_to_gt[e], gt_to_det[j] = j, e
    return det_to_gt, gt_to_det, ious


def _count_errors(gt, det, score_threshold, iou_threshold=0.5):
    keep = np.asarray(det["scores"]) >= score_threshold
    d_to_g, g_to_d, _ = _greedy_match(np.asarray(det["boxes"])[keep], np.asarray(det["labels"])[keep],
                                      np.asarray(det["scores"])[keep], gt["boxes"], gt["labels"], iou_threshold)
    return int((g_to_d < 0).sum() + (d_to_g < 0).sum())


def diagnose(t, gt, *, score_thresh, nms_thresh, iou_threshold=0.5, score_threshold=0.5):
    """Why each object of one image was found or missed, and what each false positive is, read from its trace.

    t: the image's ImageTrace (or any object with its fields ``original_size``,
    ``image_size``, ``proposals``, ``class_scores``, ``refined_boxes``,
    ``detections_before_nms``, ``predictions``); gt: dict with "boxes" (G, 4)
    original pixels and "labels" (G,).
    score_thresh, nms_thresh: the model's ``config.box_score_thresh`` and
    ``config.box_nms_thresh``.
    iou_threshold: what "covers an object" means everywhere (0.5).
    score_threshold: a detection scoring at least this counts as a claim
    (0.5); lower ones are "found at a low score".

    For each object (in the resized frame), the stages in order:
      1. RPN: the best IoU of a proposal with it, and how many proposals reach iou_threshold;
      2. box head: among those proposals, the one giving the object's class the
         highest probability (``class_scores``), that probability, the class that
         proposal's scores put first, and the IoU of its refined box of the object's class;
      3. the candidates of the object's class that pass the score threshold and
         cover it (input of NMS);
      4. the final detections of its class covering it, and the best of other classes.
    The verdict, for an object that some candidate covers:
      "found": a detection of its class scoring >= score_threshold matches it;
      "found at a low score": a detection of its class covers it, below
        score_threshold or already matched to another object;
      "suppressed by NMS": no candidate survived; the survivor of its class that
        overlaps the best candidate by more than nms_thresh is named ("suppressor");
      "dropped by the detections-per-image cap": no survivor overlaps the best
        candidate that much, so NMS kept it and the top-k cut it.
    For an object no candidate covers, the stage that lost it:
      "not proposed": no proposal reaches iou_threshold;
      "box head: low score": its class's probability stays <= score_thresh on
        every covering proposal;
      "refined box drifted": the score passes, the refined box no longer covers it.
    A proposal below iou_threshold can still be refined onto the object, so an
    object may be found without being "proposed"; the box-head line then shows the
    closest proposal. "other" reports a confusion: the best detection of another
    class covering the object.
    False positives: final detections scoring >= score_threshold that match no
    object of their class (greedy, best score first, as COCO): "wrong class" (it
    covers an object of another class), "duplicate" (its object is already
    matched by a better detection, which it overlaps by no more than nms_thresh,
    so per-class NMS kept both), "poorly localised" (best IoU with an object of
    its class in [0.1, iou_threshold)), or "background".
    Returns a dict: "objects" (list of dicts per object) and "false_positives"
    (list of dicts), plain numbers; see :func:`format_diagnosis`.
    """
    g_boxes = np.asarray(gt["boxes"], dtype=np.float64).reshape(-1, 4)
    g_labels = np.asarray(gt["labels"], dtype=np.int64)
    g_res = resize_boxes(g_boxes, tuple(t.original_size), tuple(t.image_size)) if len(g_boxes) else g_boxes
    props = np.asarray(t.proposals, dtype=np.float64).reshape(-1, 4)
    scores = np.asarray(t.class_scores, dtype=np.float64)
    refined = np.asarray(t.refined_boxes, dtype=np.float64)
    bn = t.detections_before_nms
    bn_boxes = np.asarray(bn["boxes"], dtype=np.float64).reshape(-1, 4)
    bn_scores, bn_labels = np.asarray(bn["scores"], dtype=np.float64), np.asarray(bn["labels"])
    pred = t.predictions
    p_boxes = np.asarray(pred["boxes"], dtype=np.float64).reshape(-1, 4)
    p_scores, p_labels = np.asarray(pred["scores"], dtype=np.float64), np.asarray(pred["labels"])

    sources = detection_sources(t.refined_boxes, p_labels, p_boxes)
    claims = p_scores >= score_threshold
    det_to_gt, gt_to_det, _ = _greedy_match(p_boxes[claims], p_labels[claims], p_scores[claims], g_res,
                                            g_labels, iou_threshold)
    claim_idx = np.flatnonzero(claims)

    objects = []
    for j, (box, c) in enumerate(zip(g_res, g_labels)):
        o = {"gt": j, "label": int(c)}
        piou = box_iou(box[None], props)[0] if len(props) else np.zeros(0)
        o["best_proposal_iou"] = float(piou.max()) if piou.size else 0.0
        covering = np.flatnonzero(piou >= iou_threshold)
        o["proposals_covering"] = int(covering.size)
        o["roi"] = None
        # the box head's view: among the covering proposals (or, if none covers it, the
        # closest one) the RoI that gives the object's class the highest probability
        looked = covering if covering.size else (np.array([int(np.argmax(piou))]) if piou.size else covering)
        if looked.size:
            r = int(looked[np.argmax(scores[looked, c])])
            o.update(roi=r, class_score=float(scores[r, c]), roi_top_class=int(np.argmax(scores[r])),
                     roi_top_score=float(scores[r].max()),
                     refined_iou=float(box_iou(box[None], refined[r, c][None])[0, 0]),
                     roi_iou=float(piou[r]))
        mine = bn_labels == c
        cand_iou = box_iou(box[None], bn_boxes)[0] if len(bn_boxes) else np.zeros(0)
        cands = np.flatnonzero(mine & (cand_iou >= iou_threshold))
        o["candidates"] = int(cands.size)
        o["best_candidate_score"] = float(bn_scores[cands].max()) if cands.size else None
        fiou = box_iou(box[None], p_boxes)[0] if len(p_boxes) else np.zeros(0)
        same = np.flatnonzero((p_labels == c) & (fiou >= iou_threshold))
        o["detection"] = int(same[np.argmax(p_scores[same])]) if same.size else None
        o["detection_score"] = float(p_scores[same].max()) if same.size else None
        o["detection_roi"] = int(sources[o["detection"]]) if same.size else None
        o["detection_roi_iou"] = (float(piou[o["detection_roi"]]) if same.size and o["detection_roi"] >= 0
                                  else None)
        other = np.flatnonzero((p_labels != c) & (fiou >= iou_threshold))
        o["other"] = None
        if other.size:
            e = int(other[np.argmax(p_scores[other])])
            o["other"] = {"detection": e, "label": int(p_labels[e]), "score": float(p_scores[e]),
                          "iou": float(fiou[e])}
        if gt_to_det[j] >= 0:
            o["matched"] = int(claim_idx[gt_to_det[j]])
        else:
            o["matched"] = None
        # the verdict: the first stage that loses the object
        if o["matched"] is not None:
            o["verdict"] = "found"
        elif same.size:
            o["verdict"] = "found at a low score"
        elif cands.size:
            # NMS removes a candidate only for a better box of its class overlapping it by more than
            # nms_thresh; with no such survivor it was the detections-per-image cap that dropped it
            best = int(cands[np.argmax(bn_scores[cands])])
            survivors = np.flatnonzero(p_labels == c)
            ov = box_iou(bn_boxes[best][None], p_boxes[survivors])[0] if survivors.size else np.zeros(0)
            if ov.size and ov.max() > nms_thresh:
                o["verdict"] = "suppressed by NMS"
                k = int(survivors[np.argmax(ov)])
                gi = box_iou(p_boxes[k][None], g_res)[0]
                o["suppressor"] = {"detection": k, "score": float(p_scores[k]), "iou": float(ov.max()),
                                   "gt": int(np.argmax(gi)), "gt_iou": float(gi.max())}
            else:
                o["verdict"] = "dropped by the detections-per-image cap"
        elif not covering.size:
            o["verdict"] = "not proposed"
        elif o["class_score"] <= score_thresh:
            o["verdict"] = "box head: low score"
        else:
            o["verdict"] = "refined box drifted"
        objects.append(o)

    false_positives = []
    for k, e in enumerate(claim_idx):
        if det_to_gt[k] >= 0:
            continue
        f = {"detection": int(e), "label": int(p_labels[e]), "score": float(p_scores[e])}
        iou = box_iou(p_boxes[e][None], g_res)[0] if len(g_res) else np.zeros(0)
        same = np.flatnonzero(g_labels == p_labels[e])
        diff = np.flatnonzero(g_labels != p_labels[e])
        if diff.size and iou[diff].max() >= iou_threshold:
            j = int(diff[np.argmax(iou[diff])])
            f.update(verdict="wrong class", gt=j, gt_label=int(g_labels[j]), iou=float(iou[j]))
        elif same.size and iou[same].max() >= iou_threshold:
            j = int(same[np.argmax(iou[same])])
            better = int(claim_idx[gt_to_det[j]]) if gt_to_det[j] >= 0 else None
            f.update(verdict="duplicate", gt=j, gt_label=int(g_labels[j]), iou=float(iou[j]), better=better,
                     iou_with_better=float(box_iou(p_boxes[e][None], p_boxes[better][None])[0, 0])
                     if better is not None else None)
        elif same.size and iou[same].max() >= 0.1:
            j = int(same[np.argmax(iou[same])])
            f.update(verdict="poorly localised", gt=j, gt_label=int(g_labels[j]), iou=float(iou[j]))
        else:
            f.update(verdict="background", iou=float(iou.max()) if iou.size else 0.0)
        false_positives.append(f)
    return {"objects": objects, "false_positives": false_positives, "score_thresh": score_thresh,
            "nms_thresh": nms_thresh, "iou_threshold": iou_threshold, "score_threshold": score_threshold}


def format_diagnosis(diag, class_names=None):
    """The dict of :func:`diagnose` as readable lines (a str): one block per object,
    then one line per false positive."""
    thr = diag["iou_threshold"]
    lines = []
    for o in diag["objects"]:
        name = _name(o["label"], class_names)
        lines.append(f"object {o['gt']} ({name}): {o['verdict'].upper()}")
        lines.append(f"    RPN      best proposal IoU {o['best_proposal_iou']:.2f}; "
                     f"{o['proposals_covering']} proposals with IoU >= {thr:g}")
        if o["roi"] is not None:
            top = _name(o["roi_top_class"], class_names)
            which = "best" if o["proposals_covering"] else "closest"
            lines.append(f"    box head {which} RoI {o['roi']} (IoU {o['roi_iou']:.2f}): "
                         f"P({name}) = {o['class_score']:.2f}, its top class {top} {o['roi_top_score']:.2f}; "
                         f"refined as {name}: IoU {o['refined_iou']:.2f}")
        if o["best_candidate_score"] is not None:
            lines.append(f"    before NMS {o['candidates']} {name} candidates cover it (> {diag['score_thresh']:g}), "
                         f"best {o['best_candidate_score']:.2f}")
        else:
            lines.append(f"    before NMS no {name} candidate above {diag['score_thresh']:g} covers it")
        if o["detection"] is not None:
            src = (f", refined from RoI {o['detection_roi']} (IoU {o['detection_roi_iou']:.2f})"
                   if o["detection_roi_iou"] is not None else "")
            lines.append(f"    final    detection {o['detection']}: {name} {o['detection_score']:.2f}{src}")
        elif o["verdict"] == "dropped by the detections-per-image cap":
            lines.append("    final    none: NMS kept the candidate, the cap on detections per image cut it")
        elif o.get("suppressor"):
            s = o["suppressor"]
            lines.append(f"    final    none: NMS kept {name} detection {s['detection']} ({s['score']:.2f}), "
                         f"which overlaps the best candidate at IoU {s['iou']:.2f} (> {diag['nms_thresh']:g}) "
                         f"and covers object {s['gt']} at IoU {s['gt_iou']:.2f}")
        else:
            lines.append(f"    final    no {name} detection covers it")
        if o["other"] is not None:
            x = o["other"]
            lines.append(f"    other    detection {x['detection']}: {_name(x['label'], class_names)} {x['score']:.2f} "
                         f"(IoU {x['iou']:.2f})")
    for f in diag["false_positives"]:
        head = f"false positive: detection {f['detection']} {_name(f['label'], class_names)} {f['score']:.2f}: "
        if f["verdict"] == "wrong class":
            lines.append(head + f"WRONG CLASS on object {f['gt']} "
                         f"({_name(f['gt_label'], class_names)}, IoU {f['iou']:.2f})")
        elif f["verdict"] == "duplicate":
            more = (f", IoU {f['iou_with_better']:.2f} with detection {f['better']} <= NMS {diag['nms_thresh']:g}"
                    if f["better"] is not None else "")
            lines.append(head + f"DUPLICATE of object {f['gt']} (IoU {f['iou']:.2f}{more})")
        elif f["verdict"] == "poorly localised":
            lines.append(head + f"POORLY LOCALISED on object {f['gt']} (IoU {f['iou']:.2f} < {thr:g})")
        else:
            lines.append(head + f"BACKGROUND (best IoU with any object {f['iou']:.2f})")
    if not diag["false_positives"]:
        lines.append(f"no false positive scoring >= {diag['score_threshold']:g}")
    return "\n".join(lines)


# =========================================================================== figures


def _plain(ax):
    ax.set_xticks([])
    ax.set_yticks([])


def plot_input(image, normalized, *, mean=None, std=None):
    """The image and the three channels the network receives.

    image: (H, W, 3) in [0, 1]; normalized: (3, h, w) (an ImageTrace's ``image``:
    resized, then (x - mean) / std per channel). mean, std: for the titles.
    Returns the figure.
    """
    import matplotlib.pyplot as plt

    normalized = np.asarray(normalized, dtype=np.float64)
    fig, axes = plt.subplots(1, 4, figsize=(13, 3.3))
    axes[0].imshow(image, interpolation="nearest")
    axes[0].set_title(f"input {image.shape[0]}x{image.shape[1]}", fontsize=10)
    lim = float(np.abs(normalized).max())
    im = None
    for c, (ax, name) in enumerate(zip(axes[1:], "RGB")):
        im = ax.imshow(normalized[c], cmap="RdBu_r", vmin=-lim, vmax=lim, interpolation="nearest")
        extra = f"\n(x - {mean[c]:.3f}) / {std[c]:.3f}" if mean is not None and std is not None else ""
        ax.set_title(f"{name} channel, normalised{extra}", fontsize=9)
    for ax in axes:
        _plain(ax)
    fig.colorbar(im, ax=list(axes), fraction=0.012, pad=0.01)
    return fig


def plot_feature_pyramid(features, *, level_names=None):
    """The FPN levels of one image: per level, the length of each location's
    feature vector (L2 norm over the D channels) and the single channel that
    varies most across the map.

    features: list [P2 (D, H_2, W_2), ...] (an ImageTrace's ``features``, level order).
    level_names: one label per level (default P2, P3, ...: an ImageTrace's ``level_names``).
    Returns the figure (2 rows x L panels, each with its own colour scale).
    """
    import matplotlib.pyplot as plt

    names = list(level_names) if level_names is not None else [f"P{k}" for k in range(2, 2 + len(features))]
    fig, axes = plt.subplots(2, len(names), figsize=(2.6 * len(names), 5.4), squeeze=False)
    for j, name in enumerate(names):
        f = np.asarray(features[j], dtype=np.float64)
        norm = np.sqrt((f ** 2).sum(axis=0))
        ch = int(np.argmax(f.reshape(f.shape[0], -1).var(axis=1)))
        for ax, m, title, cmap in ((axes[0, j], norm, f"{name} {f.shape[1]}x{f.shape[2]}: |feature|", "viridis"),
                                   (axes[1, j], f[ch], f"{name} channel {ch}", "RdBu_r")):
            if cmap == "RdBu_r":
                lim = float(np.abs(m).max()) or 1.0
                im = ax.imshow(m, cmap=cmap, vmin=-lim, vmax=lim, interpolation="nearest")
            else:
                im = ax.imshow(m, cmap=cmap, interpolation="nearest")
            ax.set_title(title, fontsize=9)
            _plain(ax)
            fig.colorbar(im, ax=ax, fraction=0.046, pad=0.03).ax.tick_params(labelsize=7)
    axes[0, 0].set_ylabel(f"L2 norm over\n{np.asarray(features[0]).shape[0]} channels", fontsize=9)
    axes[1, 0].set_ylabel("the channel of\nlargest variance", fontsize=9)
    fig.tight_layout()
    return fig


def proposal_rpn_levels(t):
    """The RPN level (2..6) of each proposal after NMS: the level of the anchor it grew from.

    t: an ImageTrace. The proposals after NMS are rows of ``proposals_before_nms``
    (NMS and the top-k only select), whose levels the trace keeps; each row is
    found by exact comparison. Returns (R,) int64 (-1 if a row is not found).
    """
    index = {}
    for k, row in enumerate(np.asarray(t.proposals_before_nms)):
        index.setdefault(row.tobytes(), k)
    levels = np.asarray(t.proposal_rpn_levels_before_nms)
    return np.array([levels[index[row.tobytes()]] if row.tobytes() in index else -1
                     for row in np.asarray(t.proposals)], dtype=np.int64).reshape(-1)


def plot_proposal_levels(image, before_boxes, before_levels, after_boxes, after_levels, *, level_counts,
                         gt_boxes=None, titles=None):
    """Proposals coloured by pyramid level, before and after NMS, and how many per level.

    before_boxes (B, 4), before_levels (B,): e.g. the best proposals before NMS with
    the RPN level of their anchor (``proposal_rpn_levels_before_nms``); after_boxes
    (R, 4), after_levels (R,): the best after NMS with theirs (:func:`proposal_rpn_levels`).
    level_counts: dict {series name: (n,) array of levels} for the bar chart, e.g.
    all proposals before NMS, after NMS, and the level RoIAlign pools each from
    (``proposal_levels``). Returns the figure.
    """
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    from .rpn import _show_image

    titles = titles or ("before NMS", "after NMS", "proposals per level")
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.9), gridspec_kw={"width_ratios": [1, 1, 1.05]})
    series = {k: np.asarray(v).astype(int) for k, v in level_counts.items()}
    levels = sorted(set(np.concatenate([np.asarray(before_levels), np.asarray(after_levels)]
                                       + list(series.values())).astype(int).tolist()))
    for ax, boxes, lv, title in ((axes[0], before_boxes, before_levels, titles[0]),
                                 (axes[1], after_boxes, after_levels, titles[1])):
        _show_image(ax, image, dim=0.55)
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        for b, level in zip(boxes[::-1], np.asarray(lv)[::-1]):   # best drawn last
            draw_boxes(ax, b, color=LEVEL_COLORS.get(int(level), "k"), lw=1.1)
        if gt_boxes is not None:
            draw_boxes(ax, gt_boxes, color="k", lw=1.5, ls="--")
        ax.set_title(title, fontsize=10)
        _plain(ax)
    fig.legend([Line2D([], [], color=LEVEL_COLORS.get(v, "k"), lw=2.5) for v in levels], [f"P{v}" for v in levels],
               loc="lower center", bbox_to_anchor=(0.34, -0.01), ncol=len(levels), fontsize=9, frameon=False,
               title="box colour = RPN level", title_fontsize=9)
    ax = axes[2]
    x = np.arange(len(levels))
    width = 0.8 / max(len(series), 1)
    hatches = ("", "", "//")
    alphas = (0.4, 1.0, 1.0)
    for j, (name, lv) in enumerate(series.items()):
        xs = x + (j - (len(series) - 1) / 2) * width
        vals = [int((lv == v).sum()) for v in levels]
        ax.bar(xs, vals, width=width * 0.95, color=[LEVEL_COLORS.get(v, "k") for v in levels],
               alpha=alphas[j % 3], hatch=hatches[j % 3], edgecolor="white", label=f"{name} ({len(lv)})")
        for xx, v in zip(xs, vals):
            ax.text(xx, v, str(v), ha="center", va="bottom", fontsize=7.5)
    ax.set_xticks(x, [f"P{v}" for v in levels])
    ax.set_ylim(0, max([int((lv == v).sum()) for lv in series.values() for v in levels] + [1]) * 1.2)
    leg = ax.legend(fontsize=8, frameon=False, loc="upper right")
    for h in leg.legend_handles:
        h.set_facecolor("0.6")
    ax.spines[["top", "right"]].set_visible(False)
    ax.set_title(titles[2], fontsize=10)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    return fig


def plot_class_score_matrix(image, proposals, class_scores, *, class_names=None, top=15, gt_boxes=None):
    """The box head's class probabilities for the ``top`` first proposals: the
    proposals numbered on the image, and their (top, K+1) softmax rows as a
    matrix with the values written in.

    proposals (R, 4) sorted as the RPN ranks them; class_scores (R, K+1).
    Returns the figure.
    """
    import matplotlib.pyplot as plt

    from .rpn import _show_image

    proposals = np.asarray(proposals, dtype=np.float64)[:top]
    s = np.asarray(class_scores, dtype=np.float64)[:top]
    n, k1 = s.shape
    fig, (a0, a1) = plt.subplots(1, 2, figsize=(11.5, 5.2), gridspec_kw={"width_ratios": [1.1, 1]})
    _show_image(a0, image, dim=0.45)
    best = s.argmax(axis=1)
    for r, (b, c) in enumerate(zip(proposals, best)):
        draw_boxes(a0, b, color=_color(c), lw=1.2)
    # numbers: one per proposal, nudged so that proposals sharing a corner stay readable
    seen = {}
    for r, (b, c) in enumerate(zip(proposals, best)):
        key = (round(b[0] / 4), round(b[1] / 4))
        k = seen.get(key, 0)
        seen[key] = k + 1
        a0.text(b[0] + 1 + 6 * k, b[1] + 1, str(r), color="white", fontsize=7, va="top", ha="left",
                bbox=dict(fc=_color(c), ec="none", pad=0.5, alpha=0.9))
    if gt_boxes is not None:
        draw_boxes(a0, gt_boxes, color="k", lw=1.5, ls="--")
    _plain(a0)
    a0.set_title(f"the {n} best proposals, coloured by most likely class", fontsize=10)
    a1.imshow(s, cmap="Greys", vmin=0, vmax=3.0, aspect="auto", interpolation="nearest")
    for r in range(n):
        for c in range(k1):
            top = c == best[r]
            a1.text(c, r, f"{s[r, c]:.2f}", ha="center", va="center", fontsize=8.5 if top else 8,
                    color=("k" if c == 0 else _color(c)) if top else "0.45", fontweight="bold" if top else "normal")
    a1.set_xticks(np.arange(k1), [_name(c, class_names) for c in range(k1)], fontsize=9)
    a1.set_yticks(np.arange(n), [f"RoI {r}" for r in range(n)], fontsize=8)
    a1.xaxis.tick_top()
    a1.set_title("softmax over the K+1 classes (bold: the largest)", fontsize=10, pad=22)
    fig.tight_layout()
    return fig


def plot_activation_histograms(groups, *, bins=60):
    """Histograms of activations, one panel per layer, one row per group.

    groups: dict {row title: {layer name: array}} (e.g. {"backbone (ResNet body)":
    {"C2": ..., ..., "C5": ...}, "FPN": {"P2": ..., ...}}); all values of each array
    are counted. Counts on a log scale; each panel gives the mean, the standard
    deviation, the largest value and the fraction of exact zeros (ReLU outputs
    that are off). Returns the figure.
    """
    import matplotlib.pyplot as plt

    rows = list(groups)
    ncols = max(len(v) for v in groups.values())
    fig, axes = plt.subplots(len(rows), ncols, figsize=(2.75 * ncols, 2.75 * len(rows)), squeeze=False)
    for i, row in enumerate(rows):
        for j in range(ncols):
            ax = axes[i, j]
            if j >= len(groups[row]):
                ax.axis("off")
                continue
            name, a = list(groups[row].items())[j]
            a = np.asarray(a, dtype=np.float64).ravel()
            ax.hist(a, bins=bins, color="#4575b4" if i == 0 else "#d73027", alpha=0.85)
            ax.set_yscale("log")
            ax.set_title(f"{name}", fontsize=10)
            stats = f"mean {a.mean():.2f}\nstd {a.std():.2f}\nmax {a.max():.1f}\nzeros {np.mean(a == 0):.0%}"
            ax.text(0.97, 0.97, stats,
                    transform=ax.transAxes, ha="right", va="top", fontsize=7.5,
                    bbox=dict(fc="white", ec="none", alpha=0.8, pad=1))
            ax.tick_params(labelsize=7.5)
            ax.spines[["top", "right"]].set_visible(False)
        axes[i, 0].set_ylabel(f"{row}\ncount (log)", fontsize=9)
    fig.tight_layout()
    return fig


def plot_overlaps(iou, gt_labels, pred_labels, pred_scores, *, class_names=None, threshold=0.5, ax=None,
                  title=None):
    """The ground truth x prediction IoU grid (as matterport's ``plot_overlaps``).

    iou: (G, P) (``trace.iou_matrix``); gt_labels (G,); pred_labels (P,),
    pred_scores (P,). Every cell shows its IoU (truncated to two decimals, so a
    value shown as 0.50 has reached 0.5); at >= threshold it is green
    when the classes agree and red when they differ. Rows: objects, columns:
    predictions (class and score). Returns the figure.
    """
    import matplotlib.pyplot as plt

    iou = np.asarray(iou, dtype=np.float64)
    g, p = iou.shape
    if ax is None:
        fig, ax = plt.subplots(figsize=(0.62 * p + 2.2, 0.55 * g + 1.8))
    fig = ax.figure
    ax.imshow(iou, cmap="Blues", vmin=0, vmax=2.0, interpolation="nearest", aspect="auto")
    for i in range(g):
        for j in range(p):
            v = iou[i, j]
            if v >= threshold:
                color = "#1a9850" if gt_labels[i] == pred_labels[j] else "#d73027"
                weight = "bold"
            else:
                color, weight = "0.4", "normal"
            shown = np.floor(v * 100 + 1e-9) / 100     # truncated, so that 0.499 never reads as 0.50
            ax.text(j, i, f"{shown:.2f}", ha="center", va="center", fontsize=8, color=color, fontweight=weight)
    ax.set_xticks(np.arange(p), [f"{_name(lab, class_names)}\n{s:.2f}" for lab, s in zip(pred_labels, pred_scores)],
                  rotation=90, fontsize=8)
    ax.set_yticks(np.arange(g), [f"{i}: {_name(lab, class_names)}" for i, lab in enumerate(gt_labels)], fontsize=8.5)
    ax.set_xlabel("predictions (class, score)", fontsize=9)
    ax.set_ylabel("ground truth", fontsize=9)
    ax.set_title(title or f"IoU; >= {threshold:g}: green same class, red other class", fontsize=10)
    return fig


def plot_pr_per_class(result, *, class_names=None, iou_thresholds=(0.5, 0.75), ax=None, title=None):
    """COCO's interpolated precision-recall curve of every class.

    result: a ``COCOEvalResult`` (``evaluate.coco_evaluate``); its precision
    (T, R, K, A, M) is read at area "all" and the largest max_dets. One colour
    per class, one line style per IoU threshold; the legend gives each curve's
    AP (the mean of its 101 points). Returns the figure.
    """
    import matplotlib.pyplot as plt

    if ax is None:
        fig, ax = plt.subplots(figsize=(5.2, 4.3))
    fig = ax.figure
    styles = ("-", "--", ":", "-.")
    r = np.asarray(result.recall_thresholds)
    for k, cat in enumerate(result.category_ids):
        for s, thr in enumerate(iou_thresholds):
            t = int(np.argmin(np.abs(np.asarray(result.iou_thresholds) - thr)))
            prec = np.asarray(result.precision[t, :, k, 0, -1], dtype=np.float64)
            if (prec < 0).all():
                continue
            ax.plot(r, np.clip(prec, 0, None), styles[s % 4], color=_color(int(cat)), lw=1.6,
                    label=f"{_name(int(cat), class_names)} @{thr:g}: AP {prec.mean():.2f}")
    ax.set_xlim(0, 1.01)
    ax.set_ylim(0, 1.05)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision (interpolated)")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left", fontsize=7.5, ncol=1)
    ax.set_title(title or "precision-recall per class", fontsize=10)
    return fig
