"""Matching predictions to ground truth, and sampling a balanced training batch.

Used twice in Mask R-CNN: the RPN matches anchors to ground-truth boxes
(thresholds 0.7 / 0.3, low-quality matches allowed) and the RoI heads match
proposals to ground-truth boxes (0.5 / 0.5, no low-quality matches). Nothing
here carries a gradient: matching and sampling only decide which targets the
losses see.

Shape shorthand:
    G   ground-truth boxes of one image
    A   predictions of one image (anchors for the RPN, proposals for the heads)

Twins: ``matcher`` is torchvision's ``models.detection._utils.Matcher``;
``balanced_positive_negative_sampler`` is its ``BalancedPositiveNegativeSampler``
for a single image.
"""
from __future__ import annotations

import numpy as np

from ._checks import check_array, check_bool, check_finite, check_float, check_positive_int, check_rng

__all__ = [
    "BELOW_LOW_THRESHOLD",
    "BETWEEN_THRESHOLDS",
    "matcher",
    "matcher_naive",
    "balanced_positive_negative_sampler",
]

#: ``matcher`` code for a prediction whose best quality is below ``low_threshold``.
BELOW_LOW_THRESHOLD = -1
#: ``matcher`` code for a prediction whose best quality is in ``[low, high)``.
BETWEEN_THRESHOLDS = -2


def _check_matcher_args(match_quality_matrix, high_threshold, low_threshold, allow_low_quality_matches):
    m = check_array("match_quality_matrix", match_quality_matrix, shape=("G", "A"), dtype_kind="f")
    # thresholds of an IoU: in [0, 1] (1.5 or -0.5 would silently match nothing / everything)
    high = check_float("high_threshold", high_threshold, minimum=0.0, maximum=1.0)
    low = check_float("low_threshold", low_threshold, minimum=0.0, maximum=1.0)
    check_bool("allow_low_quality_matches", allow_low_quality_matches)
    if low > high:
        raise ValueError(
            f"low_threshold must be <= high_threshold ({high}), got {low}"
        )
    check_finite("match_quality_matrix", m)
    return m, high, low


def matcher(match_quality_matrix, *, high_threshold=0.7, low_threshold=0.3,
            allow_low_quality_matches=True):
    """Assign to every prediction the ground truth it matches best (torchvision ``Matcher``).

    match_quality_matrix: (G, A) float, finite, e.g. ``box_iou(gt_boxes, anchors)``.
    high_threshold, low_threshold: IoU thresholds in [0, 1], low <= high.
    allow_low_quality_matches: bool.
    Returns matches: (A,) int64. For prediction ``a`` with best quality
    ``q = max_g M[g, a]`` reached first at ``g* = argmax_g M[g, a]``:

    * ``q >= high_threshold``                 -> ``g*`` (a match),
    * ``low_threshold <= q < high_threshold`` -> ``BETWEEN_THRESHOLDS`` (-2),
    * ``q < low_threshold``                   -> ``BELOW_LOW_THRESHOLD`` (-1).

    With ``allow_low_quality_matches``, every prediction that reaches some
    ground truth's highest quality (``M[g, a] == max_a' M[g, a']``, ties all
    included) gets its *own* best match ``g*`` back, even below the thresholds.
    Note it is ``g*`` (its own argmax over ground truths), not the ``g`` whose
    maximum it reached: torchvision restores ``all_matches[a]``. A side effect
    that torchvision shares: a ground truth that overlaps nothing (its maximum
    is 0) makes every prediction with quality 0 to it a match of that
    prediction's own argmax.

    G == 0 (no ground truth) gives all ``BELOW_LOW_THRESHOLD`` (torchvision
    raises instead; the RPN and RoI target code handle that case before).
    Ties in the argmax go to the lowest ground-truth index, as torch's ``max``.
    """
    m, high, low = _check_matcher_args(match_quality_matrix, high_threshold, low_threshold,
                                       allow_low_quality_matches)
    return _matcher(m, high, low, allow_low_quality_matches)


def _matcher(m, high_threshold, low_threshold, allow_low_quality_matches=True):
    """:func:`matcher` without the checks (for the stages)."""
    high, low = high_threshold, low_threshold
    num_gt, num_pred = m.shape
    if num_gt == 0:
        return np.full(num_pred, BELOW_LOW_THRESHOLD, dtype=np.int64)
    if num_pred == 0:
        return np.zeros(0, dtype=np.int64)

    all_matches = np.argmax(m, axis=0).astype(np.int64)  # first max wins
    matched_vals = m[all_matches, np.arange(num_pred)]
    matches = all_matches.copy()
    matches[matched_vals < low] = BELOW_LOW_THRESHOLD
    matches[(matched_vals >= low) & (matched_vals < high)] = BETWEEN_THRESHOLDS

    if allow_low_quality_matches:
        highest_per_gt = m.max(axis=1, keepdims=True)          # (G, 1)
        is_best = np.any(m == highest_per_gt, axis=0)           # (A,) ties included
        matches[is_best] = all_matches[is_best]
    return matches


def matcher_naive(match_quality_matrix, *, high_threshold=0.7, low_threshold=0.3,
                  allow_low_quality_matches=True):
    """Loop version of ``matcher`` (same arguments and result), for tests and notebooks."""
    m, high, low = _check_matcher_args(match_quality_matrix, high_threshold, low_threshold,
                                       allow_low_quality_matches)
    num_gt, num_pred = m.shape
    matches = np.full(num_pred, BELOW_LOW_THRESHOLD, dtype=np.int64)
    if num_gt == 0 or num_pred == 0:
        return matches
    best_gt = []
    for a in range(num_pred):
        g_best, q_best = 0, m[0, a]
        for g in range(1, num_gt):
            if m[g, a] > q_best:
                g_best, q_best = g, m[g, a]
        best_gt.append(g_best)
        if q_best >= high:
            matches[a] = g_best
        elif q_best >= low:
            matches[a] = BETWEEN_THRESHOLDS
    if allow_low_quality_matches:
        for g in range(num_gt):
            top = max(m[g, a] for a in range(num_pred))
            for a in range(num_pred):
                if m[g, a] == top:
                    matches[a] = best_gt[a]
    return matches


def balanced_positive_negative_sampler(labels, *, batch_size_per_image=256,
                                       positive_fraction=0.5, rng):
    """Pick a random training batch with at most a fixed share of positives.

    Twin of torchvision's ``BalancedPositiveNegativeSampler`` for one image.

    labels: (A,) int or float; ``>= 1`` positive, ``0`` negative, anything
        else (e.g. -1) ignored.
    batch_size_per_image: int >= 1, the batch size B.
    positive_fraction: float in [0, 1].
    rng: ``np.random.Generator``; the only source of randomness.
    Returns (pos_mask, neg_mask): two (A,) bool arrays, disjoint, with
    ``num_pos = min(int(B * positive_fraction), #positives)`` and
    ``num_neg = min(B - num_pos, #negatives)`` entries set, each a uniformly
    random subset (positives drawn first, then negatives, as torchvision).
    """
    labels = check_array("labels", labels, ndim=1, dtype_kind="iuf")
    batch = check_positive_int("batch_size_per_image", batch_size_per_image)
    fraction = check_float("positive_fraction", positive_fraction, minimum=0.0, maximum=1.0)
    check_rng(rng)
    if labels.dtype.kind == "f":
        check_finite("labels", labels)
    return _balanced_positive_negative_sampler(labels, batch, fraction, rng)


def _balanced_positive_negative_sampler(labels, batch_size_per_image, positive_fraction, rng):
    """:func:`balanced_positive_negative_sampler` without the checks (for the stages)."""
    batch, fraction = batch_size_per_image, positive_fraction
    positive = np.flatnonzero(labels >= 1)
    negative = np.flatnonzero(labels == 0)
    num_pos = min(int(batch * fraction), positive.size)
    num_neg = min(batch - num_pos, negative.size)

    pos_pick = positive[rng.permutation(positive.size)[:num_pos]]
    neg_pick = negative[rng.permutation(negative.size)[:num_neg]]
    pos_mask = np.zeros(labels.shape[0], dtype=bool)
    neg_mask = np.zeros(labels.shape[0], dtype=bool)
    pos_mask[pos_pick] = True
    neg_mask[neg_pick] = True
    return pos_mask, neg_mask
