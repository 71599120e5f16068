"""Datasets: synthetic shapes (``data.shapes``) and COCO-format annotations (``data.coco``).

Both yield per-image dicts: ``image`` (H, W, 3) float32 in [0, 1], ``boxes``
(G, 4) xyxy pixels, ``labels`` (G,) int64 with 0 reserved for background,
``masks`` (G, H, W) bool.
"""
from . import coco, shapes  # noqa: F401

__all__ = ["coco", "shapes"]
