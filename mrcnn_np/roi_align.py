"""RoIAlign, the FPN level mapper and multi-level RoIAlign (chapter 06).

RoIAlign turns a box of any size on a feature map into a fixed ``ph x pw`` grid
of features, without rounding the box to whole cells: every output bin is the
average of a few bilinearly interpolated sample points. Twin of torchvision's
``torchvision.ops.roi_align`` (same arguments, same numbers); the level mapper
is the twin of ``torchvision.ops.poolers.LevelMapper`` and the multi-level
version of ``torchvision.ops.MultiScaleRoIAlign``.

Shape shorthand
---------------
N images, C channels, H, W feature-map height and width, K boxes (rois),
ph, pw pooled output height and width (``output_size``), gh, gw sampling grid
per bin (points per bin along y and x), L pyramid levels.

Coordinates and the pixel model behind ``aligned``
--------------------------------------------------
Boxes are ``(K, 5)`` rows ``[batch_index, x1, y1, x2, y2]`` in input-image
pixels; ``spatial_scale`` (e.g. 1/16) maps them onto the feature map.
Feature cell ``(i, j)`` stores the value *at* the continuous point
``(y, x) = (i, j)``: bilinear interpolation between integer coordinates.

But a pixel is a unit square: pixel ``j`` covers ``[j, j + 1)`` and its centre
is at ``j + 0.5``. A box edge at ``x1`` in pixel-corner units therefore lies
at ``x1 - 0.5`` in the "value at integer points" units of the interpolation.

* ``aligned=False`` (Mask R-CNN v1, torchvision's default) ignores that
  half-pixel: the scaled box is used as is, so every sample lands half a cell
  too far right and down. It also clamps a box's width and height to at least
  one cell, so a tiny box still samples a one-cell neighbourhood.
* ``aligned=True`` shifts the scaled box by ``-0.5`` so that sampling happens
  in pixel-centre units (a box ``[0, W]`` covers exactly the map's ``W``
  cells), and does not clamp the size.

The sampling rule, per box (exactly torchvision's CPU kernel)::

    offset   = 0.5 if aligned else 0
    start    = (x1, y1) * spatial_scale - offset
    size     = (x2 - x1, y2 - y1) * spatial_scale       (>= 1 if not aligned)
    bin      = size / (pw, ph)
    grid     = sampling_ratio if sampling_ratio > 0 else ceil(size / pooled)
    sample i = start + p * bin + (i + 0.5) * bin / grid,   i = 0 .. grid-1
    out      = sum of bilinear(sample) over the grid / (gh * gw)

``bilinear(y, x)`` is 0 when ``y < -1``, ``y > H``, ``x < -1`` or ``x > W``
(the sample still counts in the average); otherwise a coordinate ``<= 0``
becomes 0, and one whose floor is ``>= H - 1`` (``W - 1``) uses the last
row (column) for both neighbours.

With ``aligned=True`` and adaptive sampling, an empty or inverted box
(``x2 <= x1`` or ``y2 <= y1``) has a grid of no points and its output is 0;
torchvision's CPU kernel returns the same 0 for some of those boxes and
fails ("cannot create std::vector larger than max_size()") on the others.


Implementation
--------------
``roi_align_naive`` is the rule above as loops: the definition, and the
reference the fast path is tested against. RoIAlign is linear in the feature
map, ``out = M @ features`` for a sparse ``M`` (one row per output bin, the
bilinear weights of its samples over ``gh * gw``), so the backward is
``M^T @ dout``. ``roi_align_forward`` checks its arguments once and calls the
engine, ``mrcnn_np.kernels.roi_align`` (``M`` built vectorised, or the
separable form ``S @ (A_y @ features)`` where that is cheaper; its docstring
has the construction and the speed-ups against torchvision).
"""
from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from ._checks import (check_array, check_finite, check_float, check_instance, check_pair, check_positive_int,
                      check_sequence, quiet_math)
from .kernels import roi_align as _kernel

__all__ = [
    "RoIAlignCache",
    "MultiScaleRoIAlignCache",
    "roi_align_forward",
    "roi_align_backward",
    "roi_align_naive",
    "roi_sample_points",
    "roi_pool_naive",
    "level_mapper",
    "multiscale_roi_align_forward",
    "multiscale_roi_align_backward",
]


class RoIAlignCache(NamedTuple):
    """What ``roi_align_backward`` needs: matrix, the scipy CSR (K*ph*pw, N*H*W) map of
    the forward (None if it was separable); input_shape (N, C, H, W); output_size
    (ph, pw); dtype of the input; separable, None or the sparse factors ``(a_y, s)``."""

    matrix: object
    input_shape: tuple
    output_size: tuple
    dtype: np.dtype
    separable: tuple = None


class MultiScaleRoIAlignCache(NamedTuple):
    """What ``multiscale_roi_align_backward`` needs: levels (K,) int64, the absolute
    level of each box (k_min .. k_max); k_min, the level of ``features[0]``; per level,
    indices (K_l,) of its boxes and caches, its RoIAlignCache (None if no box);
    feature_shapes, the (N, C, H_l, W_l); output_shape (K, C, ph, pw); dtype."""

    levels: np.ndarray
    k_min: int
    indices: list
    caches: list
    feature_shapes: list
    output_shape: tuple
    dtype: np.dtype


# --------------------------------------------------------------------------- argument checks


def _check_sampling_ratio(sampling_ratio):
    """An int32 (<= 0 means adaptive; torchvision's kernel takes a C int); bools and floats are rejected."""
    if isinstance(sampling_ratio, bool) or not isinstance(sampling_ratio, (int, np.integer)):
        raise TypeError(f"sampling_ratio must be an int, got {type(sampling_ratio).__name__}")
    if not -2**31 <= sampling_ratio < 2**31:
        raise ValueError(f"sampling_ratio must fit an int32, got {sampling_ratio}")


def _check_roi_args(input, boxes, output_size, spatial_scale, sampling_ratio, aligned):
    check_array("input", input, shape=("N", "C", "H", "W"), dtype_kind="f")
    if input.shape[2] < 1 or input.shape[3] < 1:
        raise ValueError(f"input must have H >= 1 and W >= 1, got shape {input.shape}")
    check_array("boxes", boxes, shape=("K", 5), dtype_kind="fiu")
    ph, pw = check_pair("output_size", output_size)
    spatial_scale = check_float("spatial_scale", spatial_scale)
    if spatial_scale <= 0:
        raise ValueError(f"spatial_scale must be > 0, got {spatial_scale}")
    _check_sampling_ratio(sampling_ratio)
    if not isinstance(aligned, (bool, np.bool_)):
        raise TypeError(f"aligned must be a bool, got {type(aligned).__name__}")
    _check_batch_index(boxes, input.shape[0], "input")
    return (ph, pw), spatial_scale, int(sampling_ratio), bool(aligned)


def _check_batch_index(boxes, n, what):
    """boxes (K, 5) finite, their column 0 integer-valued in [0, n) (n: the N of ``what``)."""
    if boxes.shape[0] == 0:
        return
    check_finite("boxes", boxes)
    bidx = boxes[:, 0]
    if np.any(bidx != np.round(bidx)):
        raise ValueError(f"boxes[:, 0] (batch index) must be integer-valued, got {bidx[bidx != np.round(bidx)][0]}")
    if bidx.min() < 0 or bidx.max() >= n:
        raise ValueError(f"boxes[:, 0] (batch index) must be in [0, {n - 1}] for {what} with N={n}, "
                         f"got {bidx[(bidx < 0) | (bidx >= n)][0]:g}")


# --------------------------------------------------------------------------- the definition: loops


def _bilinear_naive(fmap, y, x):
    """Torchvision's bilinear interpolation of fmap (C, H, W) at one point -> (C,)."""
    _, height, width = fmap.shape
    if y < -1.0 or y > height or x < -1.0 or x > width:
        return np.zeros(fmap.shape[0], dtype=fmap.dtype)
    y = max(y, 0 * y)  # in [-1, 0]: moved to 0 (0 * y: a zero of y's dtype)
    x = max(x, 0 * x)
    y_low, x_low = int(y), int(x)  # floor, as y, x >= 0
    if y_low >= height - 1:
        y_low = y_high = height - 1
        y = fmap.dtype.type(y_low)
    else:
        y_high = y_low + 1
    if x_low >= width - 1:
        x_low = x_high = width - 1
        x = fmap.dtype.type(x_low)
    else:
        x_high = x_low + 1
    ly, lx = y - y_low, x - x_low
    hy, hx = 1 - ly, 1 - lx
    return (hy * hx * fmap[:, y_low, x_low] + hy * lx * fmap[:, y_low, x_high]
            + ly * hx * fmap[:, y_high, x_low] + ly * lx * fmap[:, y_high, x_high])


@quiet_math
def roi_align_naive(input, boxes, output_size, *, spatial_scale=1.0, sampling_ratio=-1,
                    aligned=False):
    """RoIAlign with loops over boxes, bins and samples (reference for tests).

    Same arguments and result as ``roi_align_forward`` (without the cache):
    input (N, C, H, W), boxes (K, 5) -> out (K, C, ph, pw).
    """
    (ph, pw), spatial_scale, sampling_ratio, aligned = _check_roi_args(
        input, boxes, output_size, spatial_scale, sampling_ratio, aligned)
    dt = input.dtype.type
    k, c = boxes.shape[0], input.shape[1]
    out = np.zeros((k, c, ph, pw), dtype=input.dtype)
    offset = dt(0.5) if aligned else dt(0.0)
    for r in range(k):
        b, x1, y1, x2, y2 = (dt(v) for v in boxes[r])
        fmap = input[int(b)]
        start_x = x1 * dt(spatial_scale) - offset
        start_y = y1 * dt(spatial_scale) - offset
        roi_w = x2 * dt(spatial_scale) - offset - start_x
        roi_h = y2 * dt(spatial_scale) - offset - start_y
        if not aligned:  # force a malformed box to be at least 1x1
            roi_w, roi_h = max(roi_w, dt(1)), max(roi_h, dt(1))
        bin_h, bin_w = roi_h / dt(ph), roi_w / dt(pw)
        grid_h = sampling_ratio if sampling_ratio > 0 else int(math.ceil(roi_h / dt(ph)))
        grid_w = sampling_ratio if sampling_ratio > 0 else int(math.ceil(roi_w / dt(pw)))
        count = max(grid_h * grid_w, 1)
        for p in range(ph):
            for q in range(pw):
                total = np.zeros(c, dtype=input.dtype)
                for iy in range(grid_h):
                    y = start_y + dt(p) * bin_h + (dt(iy) + dt(0.5)) * bin_h / dt(grid_h)
                    for ix in range(grid_w):
                        x = start_x + dt(q) * bin_w + (dt(ix) + dt(0.5)) * bin_w / dt(grid_w)
                        total += _bilinear_naive(fmap, y, x)
                out[r, :, p, q] = total / dt(count)
    return out


def _round_half_up(v):
    """C's ``round``: halves away from zero (numpy's ``round`` goes to even)."""
    return int(math.copysign(math.floor(abs(float(v)) + 0.5), v))


@quiet_math
def roi_pool_naive(input, boxes, output_size, *, spatial_scale=1.0):
    """RoI Pool (Fast R-CNN), loops; twin of ``torchvision.ops.roi_pool``.

    Shown beside RoIAlign in chapter 06 to make its quantisation visible: the
    box is rounded to whole cells and each bin, rounded outwards to whole
    cells, is max-pooled. No gradient (teaching helper only).
    input (N, C, H, W), boxes (K, 5) -> out (K, C, ph, pw); empty bins give 0.
    """
    (ph, pw), spatial_scale, _, _ = _check_roi_args(input, boxes, output_size, spatial_scale,
                                                    1, False)
    _, c, height, width = input.shape
    out = np.zeros((boxes.shape[0], c, ph, pw), dtype=input.dtype)
    for r, (b, x1, y1, x2, y2) in enumerate(boxes):
        sx, sy = _round_half_up(x1 * spatial_scale), _round_half_up(y1 * spatial_scale)
        ex, ey = _round_half_up(x2 * spatial_scale), _round_half_up(y2 * spatial_scale)
        roi_w, roi_h = max(ex - sx + 1, 1), max(ey - sy + 1, 1)
        bin_h, bin_w = roi_h / ph, roi_w / pw
        for p in range(ph):
            h0 = min(max(int(math.floor(p * bin_h)) + sy, 0), height)
            h1 = min(max(int(math.ceil((p + 1) * bin_h)) + sy, 0), height)
            for q in range(pw):
                w0 = min(max(int(math.floor(q * bin_w)) + sx, 0), width)
                w1 = min(max(int(math.ceil((q + 1) * bin_w)) + sx, 0), width)
                if h1 > h0 and w1 > w0:
                    out[r, :, p, q] = input[int(b), :, h0:h1, w0:w1].max(axis=(1, 2))
    return out


# --------------------------------------------------------------------------- public: check, then the kernel


@quiet_math
def roi_align_forward(input, boxes, output_size, *, spatial_scale=1.0, sampling_ratio=-1,
                      aligned=False, method=None):
    """RoIAlign forward; twin of ``torchvision.ops.roi_align``.

    input: (N, C, H, W) float feature map.
    boxes: (K, 5) rows ``[batch_index, x1, y1, x2, y2]`` in image pixels
        (batch_index integer-valued in [0, N)).
    output_size: int or (ph, pw).
    spatial_scale: feature cells per image pixel (e.g. 1/16), > 0.
    sampling_ratio: sample points per bin along each axis; <= 0 means
        adaptive, ``ceil(roi_size / output_size)`` per box and axis.
    aligned: shift the box by -0.5 cell (pixel-centre model, see module doc).
    method: None (the cheaper of the two by an operation count), "matrix" (one
        sparse matrix) or "separable" (two sparse factors, y then x); the
        results agree up to rounding.
    Returns ``(out, cache)``: out (K, C, ph, pw) in the input's dtype.
    """
    output_size, spatial_scale, sampling_ratio, aligned = _check_roi_args(
        input, boxes, output_size, spatial_scale, sampling_ratio, aligned)
    if method is not None and not (isinstance(method, str) and method in ("matrix", "separable")):
        raise ValueError(f"method must be None, 'matrix' or 'separable', got {method!r}")
    return _roi_align_forward(input, boxes, output_size, spatial_scale, sampling_ratio, aligned, method)


#: the form, "matrix" or "separable", ``roi_align_forward(method=None)`` takes for
#: (input_shape, boxes, output_size, spatial_scale, sampling_ratio, aligned): the cheaper
#: by an operation count (the kernel's cost model; ``roi_heads`` groups mask targets by it)
_roi_align_method = _kernel.cheaper_form


def _roi_align_forward(input, boxes, output_size, spatial_scale=1.0, sampling_ratio=-1, aligned=False,
                       method=None):
    """:func:`roi_align_forward` without the checks (for the stages): output_size (ph, pw),
    spatial_scale float, sampling_ratio int, aligned bool; method None: the cheaper."""
    args = (output_size, spatial_scale, sampling_ratio, aligned)
    if method is None:
        method = _roi_align_method(input.shape, boxes, *args)
    out, matrix, separable = _kernel.roi_align_forward(input, boxes, *args, method)
    cache = RoIAlignCache(matrix=matrix, input_shape=tuple(input.shape), output_size=output_size,
                          dtype=input.dtype, separable=separable)
    return out, cache


@quiet_math
def roi_align_backward(dout, cache):
    """RoIAlign backward: gradient with respect to the feature map.

    dout: (K, C, ph, pw) upstream gradient (not modified).
    cache: from ``roi_align_forward``.
    Returns dinput (N, C, H, W): every bin's gradient spread over the four
    neighbours of each of its samples with the forward's weights
    (``M^T @ dout``, a scatter-add).
    """
    check_instance("cache", cache, RoIAlignCache, "RoIAlignCache (from roi_align_forward)")
    ph, pw = cache.output_size
    k = (cache.matrix if cache.separable is None else cache.separable[1]).shape[0] // (ph * pw)
    check_array("dout", dout, shape=(k, cache.input_shape[1], ph, pw), dtype_kind="f")
    return _roi_align_backward(dout, cache)


def _roi_align_backward(dout, cache):
    """:func:`roi_align_backward` without the checks (for the stages)."""
    return _kernel.roi_align_backward(dout, cache.input_shape, cache.dtype, cache.matrix, cache.separable)


@quiet_math
def roi_sample_points(box, output_size, *, spatial_scale=1.0, sampling_ratio=-1, aligned=False):
    """Where RoIAlign samples one box (for figures and notebooks).

    box: (4,) ``x1, y1, x2, y2`` in image pixels.
    Returns ``(ys, xs)``: ys (ph, gh) and xs (pw, gw) sample coordinates on the
    feature map (the value of cell ``(i, j)`` sits at ``(y, x) = (i, j)``);
    bin ``(p, q)`` averages the ``gh * gw`` points ``(ys[p, a], xs[q, b])``.
    Computed in float64.
    """
    box = np.asarray(box)
    if box.dtype.kind not in "iuf":
        raise TypeError(f"box must hold real numbers, got dtype {box.dtype}")
    box = box.astype(np.float64)
    if box.shape != (4,):
        raise ValueError(f"box must have shape (4,), got {box.shape}")
    args = _check_roi_args(np.zeros((1, 1, 1, 1)), np.concatenate([[0.0], box])[None], output_size,
                           spatial_scale, sampling_ratio, aligned)  # the box as one RoI of image 0
    return _kernel.box_sample_points(box, *args)


# --------------------------------------------------------------------------- FPN level mapper and multi-level RoIAlign


@quiet_math
def level_mapper(boxes, *, k_min=2, k_max=5, canonical_scale=224, canonical_level=4, eps=1e-6):
    """FPN level of each box; twin of ``torchvision.ops.poolers.LevelMapper``.

    ``k = floor(canonical_level + log2(sqrt(area) / canonical_scale) + eps)``
    clamped to ``[k_min, k_max]`` (Lin et al., FPN, eq. 1 with k0 = 4).
    boxes: (K, 4) ``x1, y1, x2, y2`` in image pixels.
    Returns (K,) int64 absolute levels (torchvision's ``LevelMapper`` returns
    ``k - k_min``, an index into the list of feature maps). A box with zero
    (or negative) area goes to ``k_min``; one whose area overflows to ``k_max``.
    Integer and float16 boxes are measured in float64 (a float16 area overflows
    at 256 x 256 px); float32 and float64 ones in their dtype, as torchvision.
    """
    check_array("boxes", boxes, shape=("K", 4), dtype_kind="fiu")
    check_finite("boxes", boxes)
    k_min = check_positive_int("k_min", k_min, minimum=0)
    k_max = check_positive_int("k_max", k_max, minimum=k_min)
    canonical = _check_canonical(canonical_scale, canonical_level)
    return _level_mapper(boxes, k_min, k_max, *canonical, check_float("eps", eps, minimum=0))


def _check_canonical(canonical_scale, canonical_level):
    """The level mapper's canonical_scale (> 0) and canonical_level, as floats."""
    canonical_scale = check_float("canonical_scale", canonical_scale)
    if canonical_scale <= 0:
        raise ValueError(f"canonical_scale must be > 0, got {canonical_scale}")
    return canonical_scale, check_float("canonical_level", canonical_level)


def _level_mapper(boxes, k_min=2, k_max=5, canonical_scale=224, canonical_level=4, eps=1e-6):
    """:func:`level_mapper` without the checks (for the stages)."""
    # ints and float16 in float64 (a float16 area overflows at 256 x 256 px)
    b = boxes.astype(np.float64) if boxes.dtype.kind != "f" or boxes.dtype.itemsize < 4 else boxes
    area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    size = np.sqrt(np.maximum(area, 0))
    with np.errstate(divide="ignore"):  # log2(0) = -inf -> k_min below
        k = np.floor(canonical_level + np.log2(size / canonical_scale) + eps)
    return np.clip(k, k_min, k_max).astype(np.int64)


def _levels_from_scales(scales):
    """(k_min, k_max) from the first and last scale, as torchvision's MultiScaleRoIAlign."""
    lvl = [-math.log2(s) for s in scales]
    k_min, k_max = int(round(lvl[0])), int(round(lvl[-1]))
    for i, (s, v) in enumerate(zip(scales, lvl)):
        if abs(v - round(v)) > 1e-6:
            raise ValueError(f"scales must be powers of 1/2, got scales[{i}] = {s}")
        if int(round(v)) != k_min + i:
            raise ValueError(f"scales must halve from one level to the next (1/4, 1/8, ...), got {tuple(scales)}")
    return k_min, k_max


@quiet_math
def multiscale_roi_align_forward(features, boxes, output_size, *, scales, sampling_ratio=2,
                                 canonical_scale=224, canonical_level=4):
    """RoIAlign over FPN levels; twin of ``torchvision.ops.MultiScaleRoIAlign``.

    features: list of L arrays (N, C, H_l, W_l), e.g. the pyramid's [P2, P3, P4, P5]
        (``pyramid[:4]``, see ``mrcnn_np.model``, "Handoff conventions").
    boxes: (K, 5) ``[batch_index, x1, y1, x2, y2]`` in image pixels.
    output_size: int or (ph, pw).
    scales: L spatial scales, e.g. (1/4, 1/8, 1/16, 1/32); k_min and k_max are
        ``-log2`` of the first and the last (as torchvision infers them).
    sampling_ratio: as in ``roi_align_forward``; aligned is False (v1).
    canonical_scale, canonical_level: the level mapper's 224 and k0 = 4.
    Each box is pooled from the level ``level_mapper`` picks for it.
    Returns ``(out, cache)``: out (K, C, ph, pw), row k belongs to box k.
    """
    if not isinstance(features, (list, tuple)) or not features:
        raise TypeError(f"features must be a non-empty list of arrays, got {type(features).__name__}")
    for i, f in enumerate(features):
        check_array(f"features[{i}]", f, shape=("N", "C", "H", "W"), dtype_kind="f")
        if f.shape[2] < 1 or f.shape[3] < 1:
            raise ValueError(f"features[{i}] must have H >= 1 and W >= 1, got shape {f.shape}")
        if f.shape[:2] != features[0].shape[:2] or f.dtype != features[0].dtype:
            raise ValueError(f"features[{i}] must share N, C and dtype with features[0] "
                             f"{features[0].shape[:2]} {features[0].dtype}, got {f.shape[:2]} {f.dtype}")
    check_sequence("scales", scales, what="sequence of spatial scales")
    scales = tuple(check_float(f"scales[{i}]", s) for i, s in enumerate(scales))
    if len(scales) != len(features):
        raise ValueError(f"scales must have one entry per feature map ({len(features)}), got {len(scales)}")
    if any(s <= 0 for s in scales):
        raise ValueError(f"scales must be > 0, got {scales}")
    _levels_from_scales(scales)  # powers of 1/2, halving level to level
    check_array("boxes", boxes, shape=("K", 5), dtype_kind="fiu")
    output_size = check_pair("output_size", output_size)
    _check_sampling_ratio(sampling_ratio)
    _check_batch_index(boxes, features[0].shape[0], "features")
    return _multiscale_roi_align_forward(features, boxes, output_size, scales, int(sampling_ratio),
                                         *_check_canonical(canonical_scale, canonical_level))


def _multiscale_roi_align_forward(features, boxes, output_size, scales, sampling_ratio=2,
                                  canonical_scale=224, canonical_level=4):
    """:func:`multiscale_roi_align_forward` without the checks (for ``model``): output_size
    (ph, pw), scales L floats (powers of 1/2, halving), sampling_ratio int."""
    k_min, k_max = _levels_from_scales(scales)
    ph, pw = output_size
    c = features[0].shape[1]
    levels = _level_mapper(boxes[:, 1:], k_min, k_max, canonical_scale, canonical_level)
    out = np.zeros((boxes.shape[0], c, ph, pw), dtype=features[0].dtype)
    indices, caches = [], []
    for i, (fmap, scale) in enumerate(zip(features, scales)):
        idx = np.flatnonzero(levels == k_min + i)
        indices.append(idx)
        if idx.size == 0:
            caches.append(None)
            continue
        out[idx], cache = _roi_align_forward(fmap, boxes[idx], (ph, pw), scale, sampling_ratio, False)
        caches.append(cache)
    cache = MultiScaleRoIAlignCache(levels=levels, k_min=k_min, indices=indices, caches=caches,
                                    feature_shapes=[f.shape for f in features],
                                    output_shape=out.shape, dtype=out.dtype)
    return out, cache


@quiet_math
def multiscale_roi_align_backward(dout, cache):
    """Backward of ``multiscale_roi_align_forward``.

    dout: (K, C, ph, pw) (not modified).
    Returns dfeatures, a list of L gradients, one per feature map, shaped like it
    (zeros for a level that received no box): the type of the forward's ``features``.
    """
    if not isinstance(cache, MultiScaleRoIAlignCache):
        raise TypeError(f"cache must be a MultiScaleRoIAlignCache, got {type(cache).__name__}")
    check_array("dout", dout, shape=cache.output_shape, dtype_kind="f")
    return _multiscale_roi_align_backward(dout, cache)


def _multiscale_roi_align_backward(dout, cache):
    """:func:`multiscale_roi_align_backward` without the checks (for ``model``)."""
    return [np.zeros(shape, dtype=cache.dtype) if sub is None else _roi_align_backward(dout[idx], sub)
            for idx, sub, shape in zip(cache.indices, cache.caches, cache.feature_shapes)]
