"""Anchors: the reference boxes the RPN scores and regresses.

Shape shorthand: A anchors per location (sizes x aspect ratios), h, w the
grid (feature map) size of one FPN level, H, W the (padded) image size.

Coordinates: xyxy floats in image pixels, as everywhere in mrcnn_np.

Two conventions live here, side by side:

* torchvision (``AnchorGenerator``, the reference semantics): an aspect
  ratio r is **height / width**; ``h_ratio = sqrt(r)``, ``w_ratio = 1 / h_ratio``,
  ``ws = w_ratio * size``, ``hs = h_ratio * size``, and a base anchor is
  ``round([-ws, -hs, ws, hs] / 2)`` (round half to even, as ``torch.round``),
  computed in the anchors' dtype. So size 32 gives [-23, -11, 23, 11] for
  r = 0.5 (wide), [-16, -16, 16, 16] for r = 1, [-11, -23, 11, 23] for r = 2.
  A level's anchors are the base anchors shifted to ``(x, y) = (j * stride_w,
  i * stride_h)``, the top-left corner of each feature cell, with
  ``stride = image_size // grid_size``; order location-major (row-major
  over y then x), anchor index fastest. Base anchors are ratio-major: for
  sizes (s0, s1) and ratios (r0, r1) the order is (r0 s0, r0 s1, r1 s0, r1 s1).
* matterport Mask_RCNN (Keras, ``utils.generate_anchors``): a ratio is
  **width / height**, ``heights = scale / sqrt(r)``, ``widths = scale * sqrt(r)``,
  no rounding; centres at ``arange(0, shape, anchor_stride) * feature_stride``
  (also the top-left corner of the cell, not its centre), one scale per level
  (32..512 on P2..P6, strides 4..64), grids ``ceil(image / stride)``. Its boxes
  are (y1, x1, y2, x2); ``matterport_pyramid_anchors`` returns them as xyxy
  so the two can be compared.

The same ratio 0.5 is therefore a wide box in torchvision and a tall box in
matterport; the set {0.5, 1, 2} is the same, only the order within a
location differs.
"""
from __future__ import annotations

import functools
import math
import numbers

import numpy as np

from ._checks import (check_array, check_finite, check_float_dtype, check_hw_pair, check_positive_int,
                      check_sequence)

__all__ = [
    "base_anchors",
    "grid_anchors",
    "pyramid_anchors",
    "matterport_pyramid_anchors",
    "feature_grid_sizes",
    "anchor_counts",
    "num_anchors",
    "torchvision_resized_size",
    "DEFAULT_SIZES",
    "DEFAULT_ASPECT_RATIOS",
    "FPN_STRIDES",
]

#: torchvision ``maskrcnn_resnet50_fpn``: one size per level P2..P6.
DEFAULT_SIZES = ((32,), (64,), (128,), (256,), (512,))
#: three ratios (h/w) on every level.
DEFAULT_ASPECT_RATIOS = ((0.5, 1.0, 2.0),) * 5
#: nominal strides of P2..P6.
FPN_STRIDES = (4, 8, 16, 32, 64)


def _check_numbers(name, values, *, positive=True):
    if isinstance(values, numbers.Real) and not isinstance(values, bool):
        values = (values,)
    try:
        vals = tuple(values)
    except TypeError:
        raise TypeError(f"{name} must be a sequence of numbers, got {type(values).__name__}") from None
    if not vals:
        raise ValueError(f"{name} must not be empty")
    for v in vals:
        if isinstance(v, bool) or not isinstance(v, (numbers.Real, np.number)) or not math.isfinite(v):
            raise ValueError(f"{name} must contain finite numbers, got {values!r}")
        if positive and not v > 0:
            raise ValueError(f"{name} must contain positive numbers, got {values!r}")
    return vals


def _check_grid_sizes(grid_sizes):
    if not isinstance(grid_sizes, (tuple, list)) or not grid_sizes:
        raise ValueError(f"grid_sizes must be a non-empty list of (h, w) pairs, got {grid_sizes!r}")
    return [check_hw_pair("grid_sizes", g) for g in grid_sizes]


def base_anchors(sizes, aspect_ratios, *, dtype=np.float32):
    """Zero-centred anchors of one level; twin of torchvision's
    ``AnchorGenerator.generate_anchors``.

    sizes: sequence of S positive numbers (side of the square anchor, pixels).
    aspect_ratios: sequence of R positive numbers, ratio = height / width.
    dtype: float dtype the arithmetic is done in (float32 as torchvision).
    Returns (A, 4) with A = R * S, ratio-major, ``round([-ws, -hs, ws, hs] / 2)``
    where ``hs = sqrt(r) * size`` and ``ws = size / sqrt(r)`` (so ws * hs = size^2
    before rounding).
    """
    sizes = _check_numbers("sizes", sizes)
    aspect_ratios = _check_numbers("aspect_ratios", aspect_ratios)
    return _base_anchors(sizes, aspect_ratios, check_float_dtype(dtype))


def _base_anchors(sizes, aspect_ratios, dtype):
    """:func:`base_anchors` without the checks."""
    scales = np.asarray(sizes, dtype=dtype)
    ratios = np.asarray(aspect_ratios, dtype=dtype)
    h_ratios = np.sqrt(ratios)
    w_ratios = 1 / h_ratios
    ws = (w_ratios[:, None] * scales[None, :]).reshape(-1)
    hs = (h_ratios[:, None] * scales[None, :]).reshape(-1)
    base = np.stack([-ws, -hs, ws, hs], axis=1) / 2
    return np.round(base)  # numpy rounds half to even, like torch.round


def grid_anchors(base, grid_size, stride):
    """Tile base anchors over a feature grid; twin of one level of torchvision's
    ``AnchorGenerator.grid_anchors``.

    base: (A, 4) float zero-centred anchors (from ``base_anchors``).
    grid_size: (h, w) feature map size; stride: (sh, sw) pixels per cell.
    Returns (h * w * A, 4) of base's dtype: anchor ``(i * w + j) * A + a`` is
    ``base[a] + (j * sw, i * sh, j * sw, i * sh)``.
    """
    check_array("base", base, shape=("A", 4), dtype_kind="f")
    check_finite("base", base)
    return _grid_anchors(base, check_hw_pair("grid_size", grid_size), check_hw_pair("stride", stride))


def _grid_anchors(base, grid_size, stride):
    """:func:`grid_anchors` without the checks."""
    (gh, gw), (sh, sw) = grid_size, stride
    shift_x = np.arange(gw, dtype=np.int64) * sw
    shift_y = np.arange(gh, dtype=np.int64) * sh
    sy, sx = np.meshgrid(shift_y, shift_x, indexing="ij")
    sx = sx.reshape(-1)
    sy = sy.reshape(-1)
    shifts = np.stack([sx, sy, sx, sy], axis=1).astype(base.dtype)
    return (shifts[:, None, :] + base[None, :, :]).reshape(-1, 4)


def pyramid_anchors(image_size, grid_sizes, sizes=DEFAULT_SIZES, aspect_ratios=None, *,
                    dtype=np.float32):
    """Anchors of every level; twin of torchvision's ``AnchorGenerator.forward``
    for one image.

    image_size: (H, W) of the (padded) batch image; grid_sizes: list of L
    (h, w) feature sizes; sizes: L sequences of sizes; aspect_ratios: L
    sequences of ratios (h/w), default (0.5, 1, 2) on every level.
    Returns a list of L arrays (h_l * w_l * A_l, 4), stride_l = (H // h_l, W // w_l).
    Concatenate them for torchvision's single (sum, 4) array.
    """
    H, W = check_hw_pair("image_size", image_size)
    grid_sizes = _check_grid_sizes(grid_sizes)
    check_sequence("sizes", sizes, what="sequence of per-level sizes")
    if aspect_ratios is None:
        aspect_ratios = ((0.5, 1.0, 2.0),) * len(grid_sizes)
    check_sequence("aspect_ratios", aspect_ratios, what="sequence of per-level ratios")
    if len(sizes) != len(grid_sizes) or len(aspect_ratios) != len(grid_sizes):
        raise ValueError(
            f"sizes and aspect_ratios must have one entry per level ({len(grid_sizes)} grid_sizes), "
            f"got {len(sizes)} sizes and {len(aspect_ratios)} aspect_ratios"
        )
    for (gh, gw) in grid_sizes:
        if gh > H or gw > W:
            raise ValueError(f"grid_sizes entry {(gh, gw)} is larger than image_size {(H, W)}")
    sizes = tuple(_check_numbers("sizes", s) for s in sizes)
    aspect_ratios = tuple(_check_numbers("aspect_ratios", r) for r in aspect_ratios)
    return _pyramid_anchors((H, W), tuple(grid_sizes), sizes, aspect_ratios, check_float_dtype(dtype))


def _pyramid_anchors(image_size, grid_sizes, sizes, aspect_ratios, dtype):
    """:func:`pyramid_anchors` without the checks, for the model: image_size and
    every grid size (h, w) tuples of ints, sizes and aspect_ratios tuples (one per
    level) of numbers, dtype a numpy dtype. A model builds the same anchors at
    every step, so they are remembered (read-only arrays; a new list each call)."""
    return list(_pyramid_anchors_cached(image_size, grid_sizes, sizes, aspect_ratios, np.dtype(dtype)))


@functools.lru_cache(maxsize=32)
def _pyramid_anchors_cached(image_size, grid_sizes, sizes, aspect_ratios, dtype):
    H, W = image_size
    out = []
    for (gh, gw), s, r in zip(grid_sizes, sizes, aspect_ratios):
        a = _grid_anchors(_base_anchors(s, r, dtype), (gh, gw), (H // gh, W // gw))
        a.flags.writeable = False
        out.append(a)
    return tuple(out)


def matterport_pyramid_anchors(image_size, scales=(32, 64, 128, 256, 512), ratios=(0.5, 1, 2),
                               feature_strides=FPN_STRIDES, anchor_stride=1, *, dtype=np.float64):
    """Anchors as matterport Mask_RCNN builds them (``utils.generate_pyramid_anchors``).

    image_size: (H, W); scales: one anchor side per level; ratios: width / height
    (note: the opposite of torchvision); feature_strides: one per level;
    anchor_stride: step in feature cells between anchor locations.
    Grids are ``ceil(image / stride)`` (``compute_backbone_shapes``).
    Returns a list (one per level) of (n_l * len(ratios), 4) **xyxy** pixel boxes
    (matterport stores (y1, x1, y2, x2) and later normalises them to [0, 1];
    we do neither, so the two conventions can be compared directly):
    ``w = scale * sqrt(r)``, ``h = scale / sqrt(r)``, centre ``(j, i) * stride``,
    no rounding. Same order as torchvision: location-major, ratio fastest.
    """
    H, W = check_hw_pair("image_size", image_size)
    dtype = check_float_dtype(dtype)
    scales = _check_numbers("scales", scales)
    ratios = np.asarray(_check_numbers("ratios", ratios), dtype=dtype)
    strides = _check_numbers("feature_strides", feature_strides)
    if len(strides) != len(scales):
        raise ValueError(
            f"feature_strides must have one entry per scale ({len(scales)}), got {len(strides)}"
        )
    anchor_stride = check_positive_int("anchor_stride", anchor_stride)
    out = []
    for scale, stride in zip(scales, strides):
        gh, gw = math.ceil(H / stride), math.ceil(W / stride)
        heights = scale / np.sqrt(ratios)
        widths = scale * np.sqrt(ratios)
        cy = np.arange(0, gh, anchor_stride, dtype=dtype) * stride
        cx = np.arange(0, gw, anchor_stride, dtype=dtype) * stride
        cy, cx = np.meshgrid(cy, cx, indexing="ij")
        cx = cx.reshape(-1, 1)
        cy = cy.reshape(-1, 1)
        boxes = np.stack([cx - 0.5 * widths, cy - 0.5 * heights,
                          cx + 0.5 * widths, cy + 0.5 * heights], axis=2)
        out.append(boxes.reshape(-1, 4).astype(dtype))
    return out


def feature_grid_sizes(image_size, strides=FPN_STRIDES, *, size_divisible=1):
    """Feature-map sizes of a ResNet-FPN for an image: ``ceil(padded / stride)``.

    image_size: (H, W); strides: nominal stride of each level (4..64 for P2..P6);
    size_divisible: the batch pads H and W up to a multiple of it first
    (32 in torchvision's ``GeneralizedRCNNTransform``).
    Returns a list of (h, w). Each stride-2 layer of ResNet (7x7 conv pad 3,
    3x3 max-pool pad 1, 3x3 / 1x1 stride-2 convs) maps n to ceil(n / 2), and
    torchvision's P6 (max-pool kernel 1, stride 2) too; ceil(ceil(n/a)/b) =
    ceil(n/(ab)), hence ceil(n / stride). E.g. 800 -> 200, 100, 50, 25, 13.
    """
    H, W = check_hw_pair("image_size", image_size)
    strides = _check_numbers("strides", strides)
    d = check_positive_int("size_divisible", size_divisible)
    H = -(-H // d) * d
    W = -(-W // d) * d
    return [(math.ceil(H / s), math.ceil(W / s)) for s in strides]


def anchor_counts(grid_sizes, num_anchors_per_location=3):
    """Number of anchors on each level: ``h * w * A``.

    grid_sizes: list of (h, w); num_anchors_per_location: int, or one int per level.
    Returns a list of ints; ``sum`` of it is the total.
    """
    grid_sizes = _check_grid_sizes(grid_sizes)
    a = num_anchors_per_location
    per_level = list(a) if isinstance(a, (tuple, list)) else [a] * len(grid_sizes)
    if len(per_level) != len(grid_sizes):
        raise ValueError(
            f"num_anchors_per_location must be an int or one per level ({len(grid_sizes)}), got {a!r}"
        )
    for v in per_level:
        if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 1:
            raise ValueError(f"num_anchors_per_location must be positive ints, got {a!r}")
    return [gh * gw * int(v) for (gh, gw), v in zip(grid_sizes, per_level)]


def num_anchors(image_size, strides=FPN_STRIDES, num_anchors_per_location=3, *, size_divisible=1):
    """Total anchors for an image: ``sum(anchor_counts(feature_grid_sizes(...)))``.

    1024x1024, strides 4..64, 3 ratios: 3 * (256^2 + 128^2 + 64^2 + 32^2 + 16^2) = 261,888.
    """
    grids = feature_grid_sizes(image_size, strides, size_divisible=size_divisible)
    return sum(anchor_counts(grids, num_anchors_per_location))


def torchvision_resized_size(image_size, min_size=800, max_size=1333):
    """(H, W) after torchvision's ``GeneralizedRCNNTransform`` resize (before padding).

    scale = min(min_size / short side, max_size / long side); each side becomes
    ``floor(side * scale)`` (``interpolate(scale_factor=..., recompute_scale_factor=True)``).
    image_size: (H, W) ints; min_size, max_size: positive ints.
    Returns (H', W') ints. 1024x1024 -> 800x800; 480x640 -> 800x1066.
    """
    H, W = check_hw_pair("image_size", image_size)
    min_size = check_positive_int("min_size", min_size)
    max_size = check_positive_int("max_size", max_size)
    return _torchvision_resized_size((H, W), min_size, max_size)


def _torchvision_resized_size(image_size, min_size, max_size):
    """:func:`torchvision_resized_size` without the checks (for the transform)."""
    H, W = image_size
    scale = min(float(min_size) / min(H, W), float(max_size) / max(H, W))
    return (int(math.floor(H * scale)), int(math.floor(W * scale)))
