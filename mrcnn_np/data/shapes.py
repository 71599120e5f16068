"""Synthetic instance-segmentation data: squares, circles and triangles.

Shape shorthand: H x W image, G objects in one image.

Every sample is drawn from its own generator ``np.random.default_rng([seed, i])``,
so sample i is the same bit for bit whatever was drawn before it, in any order.

Geometry. A shape has a kind (label 1 square, 2 circle, 3 triangle), a centre
(cx, cy) and a half-size s, in continuous pixel coordinates: pixel (row r,
column c) covers [c, c + 1) x [r, r + 1) and its centre is (c + 0.5, r + 0.5).
A pixel belongs to a shape when its centre lies inside the geometric shape
(borders included):

* square:   |x - cx| <= s and |y - cy| <= s   (axis-aligned, side 2s)
* circle:   (x - cx)^2 + (y - cy)^2 <= s^2
* triangle: apex (cx, cy - s), base corners (cx - s, cy + s), (cx + s, cy + s)

Every shape lies inside the image (s <= cx <= W - s, likewise y).

Occlusion. Shapes are painted in order, so a later shape covers an earlier
one; ``masks`` hold the VISIBLE pixels only, hence they are pairwise disjoint
and their union is exactly the set of non-background pixels. Rule for hidden
objects: a new shape is accepted only if every object already placed keeps
at least ``min_visible`` visible pixels (20 for the default sizes) AND at
least ``min_visible_fraction`` (default 0.3) of its own unoccluded area;
otherwise a new shape is drawn, up to 20 times, and after 20 refusals that
object is skipped. So no returned object is fully or almost fully hidden,
and an image has between 1 and ``max_objects`` objects (fewer than drawn only
in that rare skip case; the first object is never refused).

Boxes are the tight boxes of the visible masks in the continuous convention
of the library: a mask whose columns run from 10 to 19 gives x1 = 10,
x2 = 20 (width 10 = number of columns).
"""
from __future__ import annotations

import numbers

import numpy as np

from .._checks import check_array, check_float, check_pair, check_positive_int, check_sequence, coordinate_limit

CLASS_NAMES = ("background", "square", "circle", "triangle")
SQUARE, CIRCLE, TRIANGLE = 1, 2, 3
#: what a model trained on this data has seen (recorded in its checkpoint's metadata)
DATA_DESCRIPTION = "synthetic shapes (mrcnn_np.data.shapes: 128 x 128 images, squares, circles, triangles)"
#: held-out images of a model trained with seed s are ``ShapesDataset(n, seed=s + HELD_OUT_SEED_OFFSET)``:
#: sample i is drawn from ``default_rng([seed, i])``, so no held-out image is a training image
HELD_OUT_SEED_OFFSET = 10_000

_MAX_TRIES = 20
_MIN_CONTRAST = 0.3  # max over RGB of |shape colour - background colour|


def shape_mask(kind, cx, cy, size, image_size):
    """Rasterise one shape by pixel-centre sampling.

    kind: 1 square, 2 circle, 3 triangle.
    cx, cy: centre in continuous pixel coordinates.
    size: half-size s > 0 (half the side, the radius, or half the triangle's width).
    image_size: int or (H, W).
    Returns (H, W) bool.
    """
    kind, cx, cy, s = _check_shape(kind, cx, cy, size)
    return _shape_mask(kind, cx, cy, s, check_pair("image_size", image_size))


def _check_shape(kind, cx, cy, size):
    if isinstance(kind, bool) or not isinstance(kind, numbers.Integral) or kind not in (1, 2, 3):
        raise ValueError(f"kind must be 1 (square), 2 (circle) or 3 (triangle), got {kind!r}")
    # bounded so that the squared distances of the circle test stay finite
    limit = coordinate_limit(np.float64)
    cx = check_float("cx", cx, minimum=-limit, maximum=limit)
    cy = check_float("cy", cy, minimum=-limit, maximum=limit)
    s = check_float("size", size, maximum=limit)
    if s <= 0:
        raise ValueError(f"size must be > 0, got {s}")
    return kind, cx, cy, s


def _shape_mask(kind, cx, cy, s, image_size):
    """:func:`shape_mask` without the checks (the dataset draws valid shapes): image_size (H, W)."""
    h, w = image_size
    y = np.arange(h, dtype=np.float64)[:, None] + 0.5
    x = np.arange(w, dtype=np.float64)[None, :] + 0.5
    return _inside(kind, x - cx, y - cy, s)


def _inside(kind, dx, dy, s):
    """Whether the pixel centres at offsets (dx, dy) from the shape's centre lie in it (bool)."""
    if kind == SQUARE:
        return (np.abs(dx) <= s) & (np.abs(dy) <= s)
    if kind == CIRCLE:
        return dx * dx + dy * dy <= s * s
    # triangle: below the base line's top (dy <= s) and inside both slanted edges,
    # which run from the apex (0, -s) to (-s, s) and (s, s): |dx| <= (dy + s) / 2
    return (dy <= s) & (2 * np.abs(dx) <= dy + s)


def _shape_window(kind, cx, cy, s, image_size):
    """:func:`_shape_mask` on the pixels that can be inside the shape, the same bits.

    Every shape lies in its square |x - cx| <= s, |y - cy| <= s, so only pixel
    centres c + 0.5 in [cx - s, cx + s] (and likewise rows) can be inside; the
    window is one pixel wider on each side and the test inside it is the same
    float64 arithmetic as on the whole grid. Returns (rows slice, cols slice,
    mask (window H, window W) bool); ``_shape_mask(...)[rows, cols]`` equals
    the mask and is False everywhere else.
    """
    h, w = image_size
    rows = slice(min(h, max(0, int(np.floor(cy - s)) - 1)), max(0, min(h, int(np.ceil(cy + s)) + 1)))
    cols = slice(min(w, max(0, int(np.floor(cx - s)) - 1)), max(0, min(w, int(np.ceil(cx + s)) + 1)))
    y = np.arange(rows.start, max(rows.start, rows.stop), dtype=np.float64)[:, None] + 0.5
    x = np.arange(cols.start, max(cols.start, cols.stop), dtype=np.float64)[None, :] + 0.5
    return rows, cols, _inside(kind, x - cx, y - cy, s)


def render_shapes(shapes, image_size, background):
    """Paint shapes in order onto a flat background (later shapes on top).

    shapes: sequence of (kind, cx, cy, size, colour) with colour an RGB triple in [0, 1].
    image_size: int or (H, W). background: RGB triple in [0, 1].
    Returns (image (H, W, 3) float32, masks (G, H, W) bool of VISIBLE pixels,
    full (G, H, W) bool of the unoccluded shapes).
    """
    h, w = check_pair("image_size", image_size)
    background = _check_colour("background", background)
    check_sequence("shapes", shapes, what="list of (kind, cx, cy, size, colour)")
    checked = []
    for k, spec in enumerate(shapes):
        if not isinstance(spec, (tuple, list)) or len(spec) != 5:
            raise ValueError(f"shapes[{k}] must be (kind, cx, cy, size, colour), got {spec!r}")
        kind, cx, cy, size, colour = spec
        try:
            kind, cx, cy, size = _check_shape(kind, cx, cy, size)
        except (TypeError, ValueError) as exc:
            raise type(exc)(f"shapes[{k}]: {exc}") from None
        checked.append((kind, cx, cy, size, _check_colour(f"shapes[{k}] colour", colour)))
    return _render_shapes(checked, (h, w), background)


def _render_shapes(shapes, image_size, background):
    """:func:`render_shapes` without the checks (the dataset draws valid shapes): image_size (H, W)."""
    h, w = image_size
    owner = np.full((h, w), -1, dtype=np.int64)  # the shape seen at each pixel, -1 the background
    full = np.zeros((len(shapes), h, w), dtype=bool)
    for k, (kind, cx, cy, size, colour) in enumerate(shapes):
        rows, cols, m = _shape_window(kind, cx, cy, size, (h, w))
        full[k, rows, cols] = m
        owner[rows, cols][m] = k
    palette = np.array([colour for *_, colour in shapes] + [background], dtype=np.float32)
    image = palette[owner]  # (H, W, 3); owner -1 picks the background, the last row
    masks = owner[None] == np.arange(len(shapes))[:, None, None]
    return image, masks, full


def masks_to_boxes(masks):
    """Tight boxes of masks, continuous convention (columns 10..19 -> x1 = 10, x2 = 20).

    masks: (G, H, W) bool, each non-empty. Returns (G, 4) float32 xyxy.
    """
    masks = check_array("masks", masks, ndim=3, dtype_kind="b")
    g = masks.shape[0]
    if g == 0:
        return np.zeros((0, 4), dtype=np.float32)
    cols = masks.any(axis=1)  # (G, W)
    rows = masks.any(axis=2)  # (G, H)
    if not cols.any(axis=1).all():
        empty = np.flatnonzero(~cols.any(axis=1)).tolist()
        raise ValueError(f"masks must all be non-empty, got empty masks at {empty}")
    w, h = cols.shape[1], rows.shape[1]
    x1 = cols.argmax(axis=1)
    x2 = w - cols[:, ::-1].argmax(axis=1)
    y1 = rows.argmax(axis=1)
    y2 = h - rows[:, ::-1].argmax(axis=1)
    return np.stack([x1, y1, x2, y2], axis=1).astype(np.float32)


def _check_colour(name, colour):
    try:
        c = np.asarray(colour, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be an RGB triple in [0, 1], got {colour!r}") from None
    if c.shape != (3,) or not np.all((c >= 0) & (c <= 1)):
        raise ValueError(f"{name} must be an RGB triple in [0, 1], got {colour!r}")
    return c


class ShapesDataset:
    """Random images of squares, circles and triangles with boxes, labels and masks.

    ShapesDataset(num_images, *, image_size=128, min_objects=1, max_objects=4, seed=0,
                  min_size=None, max_size=None, min_visible=None,
                  min_visible_fraction=0.3, noise=0.0)

    num_images: number of samples, ``len(ds)``.
    image_size: int or (H, W).
    min_objects, max_objects: the number of shapes drawn per image is uniform
        in [min_objects, max_objects].
    seed: int >= 0; sample i uses ``np.random.default_rng([seed, i])``.
    min_size, max_size: range of the half-size s in pixels (defaults: 6 % and
        25 % of the shorter side, at least 3 and 4 pixels).
    min_visible: every returned object keeps at least this many visible pixels
        (default ``min(20, floor(min_size ** 2))``; at most ``min_size ** 2``, so
        that even the smallest shape can be placed).
    min_visible_fraction: in [0, 1]; every returned object also keeps at least
        this fraction of its unoccluded pixel count visible.
    noise: standard deviation of Gaussian pixel noise (drawn from the same
        generator, so still deterministic), clipped to [0, 1]; 0 = flat colours.

    ``ds[i]`` -> {"image": (H, W, 3) float32 in [0, 1], "boxes": (G, 4) float32
    xyxy, "labels": (G,) int64 in {1, 2, 3}, "masks": (G, H, W) bool}, objects
    in painting order (the last one is on top).
    """

    class_names = CLASS_NAMES
    num_classes = len(CLASS_NAMES)  # background included

    def __init__(self, num_images, *, image_size=128, min_objects=1, max_objects=4, seed=0,
                 min_size=None, max_size=None, min_visible=None, min_visible_fraction=0.3,
                 noise=0.0):
        self.num_images = check_positive_int("num_images", num_images, minimum=0)
        self.image_size = check_pair("image_size", image_size, minimum=8)
        self.min_objects = check_positive_int("min_objects", min_objects)
        self.max_objects = check_positive_int("max_objects", max_objects)
        if self.max_objects < self.min_objects:
            raise ValueError(
                f"max_objects must be >= min_objects ({self.min_objects}), got {self.max_objects}"
            )
        self.seed = check_positive_int("seed", seed, minimum=0)
        short = min(self.image_size)
        self.min_size = check_float("min_size", max(3.0, 0.06 * short) if min_size is None else min_size,
                                    minimum=1.0)
        self.max_size = check_float("max_size", max(4.0, 0.25 * short) if max_size is None else max_size)
        if self.max_size < self.min_size:
            raise ValueError(f"max_size must be >= min_size ({self.min_size}), got {self.max_size}")
        if 2 * self.max_size > short:
            raise ValueError(
                f"max_size must be at most half the shorter image side ({short / 2}), "
                f"got {self.max_size}"
            )
        if min_visible is None:
            min_visible = max(1, min(20, int(self.min_size ** 2)))
        self.min_visible = check_positive_int("min_visible", min_visible)
        if self.min_visible > self.min_size ** 2:
            raise ValueError(
                f"min_visible must be at most min_size ** 2 = {self.min_size ** 2:g} "
                f"(the smallest shape must fit), got {self.min_visible}"
            )
        self.min_visible_fraction = check_float("min_visible_fraction", min_visible_fraction,
                                                minimum=0.0, maximum=1.0)
        self.noise = check_float("noise", noise, minimum=0.0)

    def __len__(self):
        return self.num_images

    def __repr__(self):
        return (f"ShapesDataset({self.num_images}, image_size={self.image_size}, "
                f"objects={self.min_objects}..{self.max_objects}, seed={self.seed})")

    def __getitem__(self, i):
        if isinstance(i, bool) or not isinstance(i, numbers.Integral):
            raise TypeError(f"index must be an int, got {type(i).__name__}")
        if not -self.num_images <= i < self.num_images:
            raise IndexError(f"index must be in [0, {self.num_images}), got {i}")
        i = int(i) % self.num_images
        return self._sample(np.random.default_rng([self.seed, i]))

    def __iter__(self):
        for i in range(self.num_images):
            yield self[i]

    def _random_colour(self, rng, background):
        for _ in range(_MAX_TRIES):
            colour = rng.uniform(0.0, 1.0, 3)
            if np.abs(colour - background).max() >= _MIN_CONTRAST:
                return colour
        return 1.0 - background if np.abs(1.0 - 2 * background).max() >= _MIN_CONTRAST \
            else np.where(background < 0.5, 1.0, 0.0)

    def shape_specs(self, i):
        """The drawing instructions of sample i: (background RGB (3,), list of
        (kind, cx, cy, size, colour)) in painting order, one entry per returned
        object. ``render_shapes(specs, image_size, background)`` redraws the
        sample (before noise)."""
        if isinstance(i, bool) or not isinstance(i, numbers.Integral):
            raise TypeError(f"index must be an int, got {type(i).__name__}")
        if not -self.num_images <= i < self.num_images:
            raise IndexError(f"index must be in [0, {self.num_images}), got {i}")
        background, shapes = self._draw(np.random.default_rng([self.seed, int(i) % self.num_images]))
        return background, shapes

    def _draw(self, rng):
        h, w = self.image_size
        background = rng.uniform(0.0, 1.0, 3)
        count = int(rng.integers(self.min_objects, self.max_objects + 1))
        owner = np.full((h, w), -1, dtype=np.int64)
        visible = []  # visible pixel count per placed object
        needed = []  # pixels each placed object must keep visible
        shapes = []
        for _ in range(count):
            for _try in range(_MAX_TRIES):
                kind = int(rng.integers(1, 4))
                s = rng.uniform(self.min_size, self.max_size)
                cx = rng.uniform(s, w - s)
                cy = rng.uniform(s, h - s)
                colour = self._random_colour(rng, background)
                rows, cols, m = _shape_window(kind, cx, cy, s, (h, w))  # (valid by construction: no checks)
                area = int(m.sum())
                if area < self.min_visible:
                    continue
                under = owner[rows, cols]
                if shapes:
                    lost = np.bincount(under[m & (under >= 0)], minlength=len(shapes))
                    if np.any(np.asarray(visible) - lost < np.asarray(needed)):
                        continue
                    visible = list(np.asarray(visible) - lost)
                under[m] = len(shapes)
                visible.append(area)
                needed.append(max(self.min_visible, self.min_visible_fraction * area))
                shapes.append((kind, float(cx), float(cy), float(s), colour))
                break
        return background, shapes

    def _sample(self, rng):
        background, shapes = self._draw(rng)
        image, masks, _ = _render_shapes(shapes, self.image_size, background)
        if self.noise > 0:
            image = np.clip(image + rng.normal(0.0, self.noise, image.shape), 0.0, 1.0)
            image = image.astype(np.float32)
        labels = np.array([sp[0] for sp in shapes], dtype=np.int64)
        return {"image": image, "boxes": masks_to_boxes(masks), "labels": labels, "masks": masks}
