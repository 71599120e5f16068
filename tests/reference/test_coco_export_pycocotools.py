"""``export-shapes`` files read by pycocotools: every mask, whatever its segmentation form
(polygon, compressed or uncompressed RLE), is the ShapesDataset mask, pixel for pixel.

Skipped unless pycocotools is installed:
    /work/torchvenv/bin/python -m pytest tests/reference/test_coco_export_pycocotools.py
"""
import contextlib
import io

import numpy as np
import pytest

pytest.importorskip("pycocotools")
from pycocotools.coco import COCO  # noqa: E402

from mrcnn_np.data.coco import write_coco_dataset  # noqa: E402
from mrcnn_np.data.shapes import CLASS_NAMES, ShapesDataset  # noqa: E402


def test_exported_masks_are_pycocotools_masks(tmp_path):
    ds = ShapesDataset(15, seed=1)
    path = write_coco_dataset(ds, tmp_path, category_names=CLASS_NAMES[1:])
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(path))
    forms = set()
    for i, item in enumerate(ds):
        anns = coco.loadAnns(coco.getAnnIds(imgIds=[i + 1]))
        assert len(anns) == len(item["masks"])
        for ann, mask, box, label in zip(anns, item["masks"], item["boxes"], item["labels"]):
            seg = ann["segmentation"]
            forms.add("polygon" if isinstance(seg, list) else type(seg["counts"]).__name__)
            np.testing.assert_array_equal(coco.annToMask(ann).astype(bool), mask)
            x, y, w, h = ann["bbox"]
            np.testing.assert_array_equal([x, y, x + w, y + h], box)
            assert ann["category_id"] == label and ann["area"] == mask.sum()
    assert forms == {"polygon", "str", "list"}
