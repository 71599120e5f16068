"""Losses of Mask R-CNN, each returning ``(loss, dinput)``.

Shape shorthand: N rows (anchors or RoIs), K classes (background included),
``(*)`` any shape.

    softmax_cross_entropy:  l_i = logsumexp(z_i) - z_i[y_i]
                            dl_i/dz_i = softmax(z_i) - onehot(y_i)
    bce_with_logits:        l = max(x, 0) - x t + log(1 + exp(-|x|))
                            dl/dx = sigmoid(x) - t
    smooth_l1 (beta > 0):   l = 0.5 d^2 / beta  if |d| < beta  else |d| - 0.5 beta
                            dl/dd = d / beta   if |d| < beta  else sign(d)
              (beta = 0):   l = |d|, dl/dd = sign(d) (0 at d = 0, as torch)

The definitions are torch's functional losses (``F.cross_entropy``,
``F.binary_cross_entropy_with_logits``, ``F.smooth_l1_loss``). ``reduction``
is ``"mean"`` (divide the sum by the number of terms: N for the cross-entropy,
every element for the others), ``"sum"`` or ``"none"``.

The returned loss has the input's dtype: a NumPy scalar for "mean"/"sum", an
array for "none" (shape (N,) for the cross-entropy, the input's shape for the
others). ``dinput`` always has the input's shape; for "none" it is the
gradient of ``loss.sum()`` (each term depends on its own row / element only).

Empty input: "sum" gives 0 with an empty gradient (what Mask R-CNN wants when a
batch has no positive RoIs); "none" gives empty arrays; "mean" raises
ValueError, because the mean of nothing is undefined (torch returns nan, which
this library never produces silently).
"""
from __future__ import annotations

import numpy as np

from .._checks import check_array, check_float, quiet_math

REDUCTIONS = ("mean", "sum", "none")
_TARGET_SLACK = 1e-5


def _check_reduction(reduction, name, size):
    if not isinstance(reduction, str) or reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    if reduction == "mean" and size == 0:
        raise ValueError(
            f"{name} is empty: reduction='mean' of no terms is undefined "
            "(torch gives nan); use reduction='sum' (0.0) or skip this loss"
        )


def _reduce(per_term, grad, reduction, count):
    """Apply the reduction to per-term losses; scale the gradient for 'mean'."""
    dt = grad.dtype.type
    if reduction == "none":
        return per_term, grad
    total = per_term.sum(dtype=per_term.dtype)
    if reduction == "sum":
        return dt(total), grad
    return dt(total / count), grad / dt(count)


@quiet_math
def softmax_cross_entropy(logits, labels, *, reduction="mean"):
    """Cross-entropy of softmax(logits) against integer labels (twin of ``F.cross_entropy``).

    logits: (N, K) floating, K >= 1.
    labels: (N,) integer in [0, K).
    reduction: "mean" (over N), "sum" or "none".
    Returns (loss, dlogits (N, K)). Computed with log-sum-exp, so huge logits
    neither overflow nor lose the answer.
    """
    logits = check_array("logits", logits, shape=("N", "K"), dtype_kind="f")
    n, k = logits.shape
    if k < 1:
        raise ValueError(f"logits must have at least one class column, got shape {logits.shape}")
    labels = check_array("labels", labels, shape=(n,), dtype_kind="iu")
    if n and (labels.min() < 0 or labels.max() >= k):
        raise ValueError(
            f"labels must be in [0, {k}) for logits with K={k} columns, "
            f"got values in [{labels.min()}, {labels.max()}]"
        )
    _check_reduction(reduction, "logits", n)
    return _softmax_cross_entropy(logits, labels, reduction)


def _softmax_cross_entropy(logits, labels, reduction="mean"):
    """:func:`softmax_cross_entropy` without the checks (for the stages)."""
    n = logits.shape[0]
    m = logits.max(axis=1, keepdims=True) if n else np.zeros((0, 1), logits.dtype)
    z = logits - m
    with np.errstate(under="ignore"):
        e = np.exp(z)
    s = e.sum(axis=1, keepdims=True)
    rows = np.arange(n)
    per_row = np.log(s[:, 0]) - z[rows, labels]
    grad = e / s
    grad[rows, labels] -= 1
    return _reduce(per_row, grad, reduction, n)


@quiet_math
def bce_with_logits(logits, targets, *, reduction="mean"):
    """Binary cross-entropy on logits (twin of ``F.binary_cross_entropy_with_logits``).

    logits: (*) floating.
    targets: (*) same shape, floating or bool, values in [0, 1] (soft targets
        allowed, e.g. RoIAligned masks; a value outside [0, 1] by more than
        rounding (1e-5), or NaN, raises ValueError); cast to logits' dtype.
    reduction: "mean" (over all elements), "sum" or "none".
    Returns (loss, dlogits (*)). Stable for any finite logits: with
    ``log(1 + exp(-|x|))`` nothing overflows, even at |x| = 1e4.
    """
    logits = check_array("logits", logits, dtype_kind="f")
    targets = check_array("targets", targets, shape=logits.shape, dtype_kind="fb")
    targets = targets.astype(logits.dtype, copy=False)
    # a slack of 1e-5 lets through the rounding of soft targets computed in
    # float32 (a bilinear average of ones can come out as 1 + 1e-7)
    inside = (targets >= -_TARGET_SLACK) & (targets <= 1 + _TARGET_SLACK)
    if targets.size and not np.all(inside):
        raise ValueError(f"targets must be probabilities in [0, 1], got a value {targets[~inside][0]}")
    _check_reduction(reduction, "logits", logits.size)
    return _bce_with_logits(logits, targets, reduction)


def _bce_with_logits(logits, targets, reduction="mean"):
    """:func:`bce_with_logits` without the checks (for the stages): targets in
    logits' dtype."""
    with np.errstate(under="ignore"):
        e = np.exp(-np.abs(logits))
        per = np.maximum(logits, 0) - logits * targets + np.log1p(e)
        sig = np.where(logits >= 0, 1 / (1 + e), e / (1 + e))
    grad = (sig - targets).astype(logits.dtype, copy=False)
    return _reduce(per.astype(logits.dtype, copy=False), grad, reduction, logits.size)


@quiet_math
def smooth_l1(pred, target, *, beta=1.0, reduction="sum"):
    """Smooth L1 (Huber divided by beta) of ``pred - target`` (twin of ``F.smooth_l1_loss``).

    pred: (*) floating.
    target: (*) same shape and dtype (a constant: no gradient is returned for it).
    beta: float >= 0, the width of the quadratic zone; 0 gives the L1 loss.
        Mask R-CNN uses 1/9 in both the RPN and the box head.
    reduction: "sum" (the default here, as torchvision's detection losses),
        "mean" or "none".
    Returns (loss, dpred (*)).
    """
    pred = check_array("pred", pred, dtype_kind="f")
    target = check_array("target", target, shape=pred.shape, dtype_kind="f")
    if target.dtype != pred.dtype:
        raise TypeError(f"target must have the dtype of pred ({pred.dtype}), got {target.dtype}")
    beta = check_float("beta", beta, minimum=0.0)
    _check_reduction(reduction, "pred", pred.size)
    return _smooth_l1(pred, target, beta, reduction)


def _smooth_l1(pred, target, beta=1.0, reduction="sum"):
    """:func:`smooth_l1` without the checks (for the stages)."""
    d = pred - target
    a = np.abs(d)
    if beta == 0.0:
        per, grad = a, np.sign(d)
    else:
        # beta in pred's dtype; a beta beyond its range (1e300 for float32)
        # becomes inf there, so every finite |d| is in the quadratic zone, and
        # that branch divides by the float64 beta instead (results rounded
        # back to pred's dtype, tiny or 0).
        with np.errstate(over="ignore"):
            b = pred.dtype.type(beta)
        quad = a < b
        if np.isinf(b):
            b = np.float64(beta)
        # Evaluate each branch only where it applies (for a tiny beta the
        # quadratic branch would overflow on the entries it does not select),
        # and as 0.5 |d| (|d| / beta): |d| / beta < 1 there, so no overflow
        # even where d^2 alone would overflow (huge beta).
        per = a - 0.5 * b
        grad = np.sign(d)
        aq = a[quad]
        per[quad] = 0.5 * aq * (aq / b)
        grad[quad] = d[quad] / b
    return _reduce(per.astype(pred.dtype, copy=False), grad.astype(pred.dtype, copy=False),
                   reduction, pred.size)
