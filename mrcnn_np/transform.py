"""Input transform: normalize, resize, batch, and map detections back.

Twin of torchvision's ``GeneralizedRCNNTransform`` (``models/detection/transform.py``),
as used by ``maskrcnn_resnet50_fpn``: data preparation, so no gradients.

Shape shorthand: N images, (3, H, W) one image (channels first, RGB floats in
[0, 1]), H', W' its size after resizing, Hp, Wp the padded batch size,
G ground-truth objects, D detections, M the mask head's resolution (28).

Coordinates: boxes are (x1, y1, x2, y2) float pixels, as everywhere in mrcnn_np.

The steps, for each image:

1. **normalize**: ``(image - mean[c]) / std[c]`` per channel, with the ImageNet
   statistics the backbone was trained with (mean and std cast to the image's
   dtype first, as torch does).
2. **resize**: one scale for both axes,
   ``scale = min(min_size / min(H, W), max_size / max(H, W))``, so the short
   side becomes ``min_size`` unless that would make the long side exceed
   ``max_size``; then the long side becomes ``max_size``. The new size is
   ``(floor(H * scale), floor(W * scale))`` in double precision (torch's
   ``interpolate(scale_factor=..., recompute_scale_factor=True)``), and the
   resampling itself uses the ratio of the integer sizes, ``H / H'``, not
   ``1 / scale``. Because of the floor, a side that "becomes 800" can become
   799: ``97 * (800 / 97)`` is 799.999... in floating point. torchvision does
   the same. Images are resized bilinearly (align_corners=False); target
   masks with nearest neighbour to the same size; target boxes by the ratio
   of new to old size per axis (``resize_boxes``).
3. **batch**: pad every image with zeros at the bottom and right to a common
   (Hp, Wp), the largest H' and W' in the batch rounded up to a multiple of
   ``size_divisible`` (32), so every stride of the backbone divides it.

After the network, :func:`postprocess` takes each image's detections from
the resized frame back to the original image: boxes scaled by
original / resized per axis, mask probabilities pasted into an image of the
original size.
"""
from __future__ import annotations

import math
import numbers

import numpy as np

from ._checks import check_array, check_coordinates, check_finite, check_hw_pair, check_positive_int
from .anchors import _torchvision_resized_size
from .ops.resize import _resize_bilinear_forward, _upsample_nearest_forward
from .roi_heads import paste_masks_in_image

__all__ = [
    "IMAGE_MEAN",
    "IMAGE_STD",
    "normalize_image",
    "resize_boxes",
    "resize_image_and_target",
    "batch_images",
    "transform_forward",
    "postprocess",
]

#: ImageNet channel means (RGB) of torchvision's detection models.
IMAGE_MEAN = (0.485, 0.456, 0.406)
#: ImageNet channel standard deviations (RGB).
IMAGE_STD = (0.229, 0.224, 0.225)


# --------------------------------------------------------------------------- checks
def _check_image(name, image):
    """A (3, H, W) floating image with H, W >= 1, finite (the boundary refuses NaN/inf)."""
    check_array(name, image, shape=(3, "H", "W"), dtype_kind="f")
    if image.shape[1] == 0 or image.shape[2] == 0:
        raise ValueError(f"{name} must have H, W >= 1, got shape {image.shape}")
    check_finite(name, image)
    return image


def _check_image_list(name, images):
    if not isinstance(images, (list, tuple)):
        raise TypeError(f"{name} must be a list of (3, H, W) arrays, got {type(images).__name__}")
    if len(images) == 0:
        raise ValueError(f"{name} must hold at least one image, got an empty list")
    for i, img in enumerate(images):
        _check_image(f"{name}[{i}]", img)
    first = images[0].dtype
    for i, img in enumerate(images):
        if img.dtype != first:
            raise TypeError(f"{name}[{i}] must have the dtype of {name}[0] ({first}), got {img.dtype}")
    return list(images)


def _check_stats(name, values, *, positive=False):
    """Three finite reals (per-channel mean or std); std entries must be > 0."""
    if isinstance(values, np.ndarray):
        values = values.tolist()
    if not isinstance(values, (list, tuple)) or len(values) != 3:
        raise ValueError(f"{name} must be 3 numbers (one per RGB channel), got {values!r}")
    for v in values:
        if isinstance(v, bool) or not isinstance(v, numbers.Real):
            raise TypeError(f"{name} must be 3 real numbers, got {values!r}")
        if not math.isfinite(v):
            raise ValueError(f"{name} must be 3 finite numbers, got {values!r}")
        if positive and v <= 0:
            raise ValueError(f"{name} entries must be > 0, got {values!r}")
    return tuple(float(v) for v in values)


def _check_boxes(name, boxes):
    check_array(name, boxes, shape=("G", 4), dtype_kind="f")
    check_coordinates(name, boxes, np.promote_types(boxes.dtype, np.float32))  # finite, areas finite
    return boxes


def _check_target(name, target, image_hw):
    """target: dict with "boxes" (G, 4) float and optional "masks" (G, H, W)."""
    if not isinstance(target, dict):
        raise TypeError(f"{name} must be a dict, got {type(target).__name__}")
    if "boxes" not in target:
        raise ValueError(f"{name} must have a 'boxes' entry (G, 4), got keys {list(target)}")
    boxes = _check_boxes(f"{name}['boxes']", target["boxes"])
    if "masks" in target:
        h, w = image_hw
        masks = check_array(f"{name}['masks']", target["masks"], shape=(boxes.shape[0], h, w), dtype_kind="buif")
        if masks.dtype.kind == "f":
            check_finite(f"{name}['masks']", masks)
    return target


# --------------------------------------------------------------------------- steps
def normalize_image(image, *, mean=IMAGE_MEAN, std=IMAGE_STD):
    """Subtract the channel mean and divide by the channel std.

    Twin of ``GeneralizedRCNNTransform.normalize``: mean and std are first cast
    to the image's dtype (so float32 images are normalized in float32).
    image: (3, H, W) floating, RGB in [0, 1]. mean, std: 3 numbers each (std > 0).
    Returns (3, H, W) in the image's dtype, a new array.
    """
    _check_image("image", image)
    return _normalize_image(image, _check_stats("mean", mean), _check_stats("std", std, positive=True))


def _normalize_image(image, mean, std):
    """:func:`normalize_image` without the checks: mean, std 3 floats each."""
    mean = np.asarray(mean, dtype=image.dtype)
    std = np.asarray(std, dtype=image.dtype)
    return (image - mean[:, None, None]) / std[:, None, None]


def resize_boxes(boxes, original_size, new_size):
    """Scale boxes from an image of ``original_size`` to one of ``new_size``.

    Twin of torchvision's ``resize_boxes``: the ratios ``new / original`` are
    computed per axis in float32 (torchvision builds them as float32 tensors),
    then x coordinates are multiplied by the width ratio and y coordinates by
    the height ratio, in the boxes' dtype.
    boxes: (G, 4) float xyxy. original_size, new_size: (h, w) ints.
    Returns (G, 4) in the boxes' dtype, a new array.
    """
    _check_boxes("boxes", boxes)
    return _resize_boxes_finite("boxes", boxes, check_hw_pair("original_size", original_size),
                                check_hw_pair("new_size", new_size))


def _resize_boxes_finite(name, boxes, original_size, new_size):
    """:func:`_resize_boxes`, refusing a result that overflows (a ratio of ~1e30 on ~1e10 boxes)."""
    with np.errstate(over="ignore"):
        out = _resize_boxes(boxes, original_size, new_size)
    if not np.isfinite(out).all():
        raise ValueError(f"{name} overflow when scaled from {original_size} to {new_size}")
    return out


def _resize_boxes(boxes, original_size, new_size):
    """:func:`resize_boxes` without the checks: sizes (h, w) int pairs."""
    (oh, ow), (nh, nw) = original_size, new_size
    ratio_h = np.float32(nh) / np.float32(oh)
    ratio_w = np.float32(nw) / np.float32(ow)
    ratios = np.array([ratio_w, ratio_h, ratio_w, ratio_h], dtype=np.float32).astype(boxes.dtype)
    return boxes * ratios


def _resize_masks(masks, size):
    """Nearest-neighbour resize of (G, H, W) masks to ``size``, keeping their dtype.

    torchvision resizes ``masks[:, None].float()`` with ``interpolate`` (mode
    "nearest", the same scale rule as the image) and casts the result to uint8.
    Nearest only copies values, so casting back to the input dtype loses
    nothing: bool stays bool, uint8 stays uint8, a float mask keeps its values.
    """
    work = masks if masks.dtype.kind == "f" else masks.astype(np.float32)
    out = _upsample_nearest_forward(work[:, None], size)[0][:, 0]
    return out.astype(masks.dtype, copy=False)


def resize_image_and_target(image, target=None, *, min_size=800, max_size=1333):
    """Resize an image (and its target) by torchvision's min/max-size rule.

    Twin of ``GeneralizedRCNNTransform.resize`` (eval mode, one ``min_size``)
    with ``_resize_image_and_masks``: the new size is
    ``anchors.torchvision_resized_size((H, W), min_size, max_size)``; the
    image is resized bilinearly (align_corners=False), ``target["masks"]``
    with nearest neighbour, ``target["boxes"]`` with :func:`resize_boxes`.

    image: (3, H, W) floating. target: None or a dict with "boxes" (G, 4)
        float, optionally "masks" (G, H, W) bool/uint8/int/float, and any other
        keys (passed through unchanged). min_size, max_size: positive ints.
    Returns (image (3, H', W') in the image's dtype, target'): target' is a new
    dict (None if target is None); the inputs are not modified.
    Difference: torchvision returns the resized masks as uint8; here they keep
    their dtype.
    """
    _check_image("image", image)
    min_size = check_positive_int("min_size", min_size)
    max_size = check_positive_int("max_size", max_size)
    if target is not None:
        _check_target("target", target, image.shape[1:])
    _check_resized_size("image", image, min_size, max_size)
    return _resize_image_and_target(image, target, min_size, max_size)


def _check_resized_size(name, image, min_size, max_size):
    new_h, new_w = _torchvision_resized_size(image.shape[1:], min_size, max_size)
    if new_h < 1 or new_w < 1:
        raise ValueError(
            f"{name} of shape {image.shape} resizes to ({new_h}, {new_w}) with min_size={min_size}, "
            f"max_size={max_size}: a side would vanish (aspect ratio too extreme)"
        )


def _resize_image_and_target(image, target, min_size, max_size):
    """:func:`resize_image_and_target` without the checks (for :func:`transform_forward`)."""
    h, w = image.shape[1:]
    new_h, new_w = _torchvision_resized_size((h, w), min_size, max_size)
    out = _resize_bilinear_forward(image, (new_h, new_w))[0]
    if target is None:
        return out, None
    new_target = dict(target)
    new_target["boxes"] = _resize_boxes(target["boxes"], (h, w), (new_h, new_w))
    if "masks" in target:
        new_target["masks"] = _resize_masks(target["masks"], (new_h, new_w))
    return out, new_target


def batch_images(images, *, size_divisible=32):
    """Stack images of different sizes into one zero-padded batch.

    Twin of ``GeneralizedRCNNTransform.batch_images``: the batch size is the
    largest H and the largest W over the images, each rounded up to a multiple
    of ``size_divisible``; each image sits in the top-left corner, zeros below
    and to the right.
    images: list of (3, H_i, W_i) floating arrays, one dtype.
    size_divisible: positive int.
    Returns (N, 3, Hp, Wp) in the images' dtype.
    """
    images = _check_image_list("images", images)
    return _batch_images(images, check_positive_int("size_divisible", size_divisible))


def _batch_images(images, size_divisible):
    """:func:`batch_images` without the checks (for :func:`transform_forward`)."""
    d = size_divisible
    max_h = max(img.shape[1] for img in images)
    max_w = max(img.shape[2] for img in images)
    hp, wp = -(-max_h // d) * d, -(-max_w // d) * d  # ceil to a multiple of d
    batch = np.zeros((len(images), 3, hp, wp), dtype=images[0].dtype)
    for i, img in enumerate(images):          # one copy per image (not per pixel)
        batch[i, :, :img.shape[1], :img.shape[2]] = img
    return batch


def transform_forward(images, targets=None, *, min_size=800, max_size=1333, mean=IMAGE_MEAN,
                      std=IMAGE_STD, size_divisible=32):
    """Normalize, resize and batch images (and resize their targets).

    Twin of ``GeneralizedRCNNTransform.forward`` (eval mode, or train mode with
    a single ``min_size`` as in ``maskrcnn_resnet50_fpn``: then both are the same).
    images: list of N (3, H_i, W_i) floating arrays in [0, 1], one dtype.
    targets: None or a list of N dicts, each with "boxes" (G_i, 4) float in the
        original image's pixels, optionally "masks" (G_i, H_i, W_i), other keys
        passed through.
    min_size, max_size: resize rule (see :func:`resize_image_and_target`).
    mean, std: per-channel normalization. size_divisible: batch padding.
    Returns (batch (N, 3, Hp, Wp), image_sizes: list of N (H'_i, W'_i) int
    tuples, the sizes after resizing and before padding, targets': list of
    new dicts in the resized frame, or None). The inputs are not modified.
    """
    images = _check_image_list("images", images)
    if targets is not None:
        if not isinstance(targets, (list, tuple)):
            raise TypeError(f"targets must be a list of dicts, got {type(targets).__name__}")
        if len(targets) != len(images):
            raise ValueError(f"targets must have one dict per image ({len(images)}), got {len(targets)}")
        for i, (img, t) in enumerate(zip(images, targets)):
            _check_target(f"targets[{i}]", t, img.shape[1:])
    mean, std = _check_stats("mean", mean), _check_stats("std", std, positive=True)
    min_size = check_positive_int("min_size", min_size)
    max_size = check_positive_int("max_size", max_size)
    d = check_positive_int("size_divisible", size_divisible)
    for i, img in enumerate(images):
        _check_resized_size(f"images[{i}]", img, min_size, max_size)
    # checked once: the steps below run without checking again
    resized, sizes, new_targets = [], [], []
    for i, img in enumerate(images):
        norm = _normalize_image(img, mean, std)
        out, t = _resize_image_and_target(norm, None if targets is None else targets[i], min_size, max_size)
        resized.append(out)
        sizes.append((int(out.shape[1]), int(out.shape[2])))
        new_targets.append(t)
    batch = _batch_images(resized, d)
    return batch, sizes, (None if targets is None else new_targets)


def _paste(name, masks, boxes, image_size):
    """Paste (D, 1, M, M) or (D, M, M) probabilities at ``boxes``; same rank out."""
    d = boxes.shape[0]
    check_array(name, masks, dtype_kind="f")
    check_finite(name, masks)
    with_channel = masks.ndim == 4
    want = (d, 1, "M", "M") if with_channel else (d, "M", "M")
    if masks.ndim not in (3, 4) or masks.shape[:len(want) - 2] != want[:-2] or \
            masks.shape[-1] != masks.shape[-2] or masks.shape[-1] == 0:
        raise ValueError(f"{name} must have shape ({d}, 1, M, M) or ({d}, M, M) with M >= 1, "
                         f"got {masks.shape}")
    pasted = paste_masks_in_image(masks[:, 0] if with_channel else masks, boxes, image_size)
    return pasted[:, None] if with_channel else pasted


def postprocess(result, image_shapes, original_image_sizes):
    """Map each image's detections from the resized frame to the original image.

    Twin of ``GeneralizedRCNNTransform.postprocess`` (eval mode; in train mode
    torchvision returns ``result`` unchanged): for image i, boxes are scaled by
    :func:`resize_boxes` from ``image_shapes[i]`` to ``original_image_sizes[i]``,
    and, when present, the mask probabilities are pasted into an image of the
    original size with ``roi_heads.paste_masks_in_image`` at the scaled boxes.

    result: list of N dicts, each with "boxes" (D, 4) float xyxy in the resized
        image, optionally "masks" (D, 1, M, M) float probabilities in [0, 1]
        (the mask head's output for the predicted class, as torchvision's
        ``maskrcnn_inference``) or (D, M, M) (as ``roi_heads.maskrcnn_inference``,
        which drops the channel axis), and any other keys ("scores", "labels")
        passed through.
    image_shapes: list of N (H', W') resized sizes (``transform_forward``'s
        ``image_sizes``). original_image_sizes: list of N (H, W).
    Returns a list of N new dicts: "boxes" (D, 4) in original pixels and, if
    "masks" was given, "masks" (D, 1, H, W) (or (D, H, W) for (D, M, M) in)
    soft probabilities in the masks' dtype (threshold at 0.5 for binary masks).
    The inputs are not modified.
    """
    for name, value in (("result", result), ("image_shapes", image_shapes),
                        ("original_image_sizes", original_image_sizes)):
        if not isinstance(value, (list, tuple)):
            raise TypeError(f"{name} must be a list, got {type(value).__name__}")
    n = len(result)
    for name, value in (("image_shapes", image_shapes), ("original_image_sizes", original_image_sizes)):
        if len(value) != n:
            raise ValueError(f"{name} must have one entry per image in result ({n}), got {len(value)}")
    out = []
    for i, (pred, im_s, o_im_s) in enumerate(zip(result, image_shapes, original_image_sizes)):
        if not isinstance(pred, dict):
            raise TypeError(f"result[{i}] must be a dict, got {type(pred).__name__}")
        if "boxes" not in pred:
            raise ValueError(f"result[{i}] must have a 'boxes' entry (D, 4), got keys {list(pred)}")
        boxes = _check_boxes(f"result[{i}]['boxes']", pred["boxes"])
        d = boxes.shape[0]
        for key, kinds in (("scores", "f"), ("labels", "iu")):  # passed through, but not unchecked
            if key in pred:
                value = check_array(f"result[{i}][{key!r}]", pred[key], shape=(d,), dtype_kind=kinds)
                if kinds == "f":
                    check_finite(f"result[{i}][{key!r}]", value)
        im_s = check_hw_pair(f"image_shapes[{i}]", im_s)
        o_im_s = check_hw_pair(f"original_image_sizes[{i}]", o_im_s)
        new = dict(pred)
        new["boxes"] = _resize_boxes_finite(f"result[{i}]['boxes']", boxes, im_s, o_im_s)
        if "masks" in pred:
            new["masks"] = _paste(f"result[{i}]['masks']", pred["masks"], new["boxes"], o_im_s)
        out.append(new)
    return out
