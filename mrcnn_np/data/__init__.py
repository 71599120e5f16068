"""Datasets: synthetic shapes (``data.shapes``) and COCO-format annotations (``data.coco``).

Both yield per-image dicts: ``image`` (H, W, 3) float32 in [0, 1], ``boxes``
(G, 4) xyxy pixels, ``labels`` (G,) int64 with 0 reserved for background,
``masks`` (G, H, W) bool. ``shapes.ShapesDataset`` and ``coco.load_coco``'s
``CocoData`` are both indexable with a length, so ``train.train`` takes
either; ``coco.write_coco_dataset`` writes any such dataset as COCO files
(``python -m mrcnn_np export-shapes``).
"""
from . import coco, shapes  # noqa: F401

__all__ = ["coco", "shapes"]
