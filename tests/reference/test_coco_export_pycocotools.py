"""``export-shapes`` files read by pycocotools: every mask, whatever its segmentation form
(polygon, compressed or uncompressed RLE), is the ShapesDataset mask, pixel for pixel; and
``evaluate --coco`` (``evaluate_on_coco``) maps a model's labels to the json's category ids and
gives COCOeval's AP, overall and per category.

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


def test_evaluate_on_coco_per_category_ap_is_pycocotools(tmp_path, monkeypatch, capsys):
    """evaluate --coco: detections in the model's labels are mapped to the json's category ids (a
    category the json lacks is dropped) and scored; overall and per-category AP equal COCOeval's."""
    from pycocotools.cocoeval import COCOeval

    import mrcnn_np.__main__ as cli
    from mrcnn_np.data.coco import load_coco, write_coco_results
    from mrcnn_np.evaluate import simulate_detections

    path = write_coco_dataset(ShapesDataset(12, seed=2), tmp_path, category_names=CLASS_NAMES[1:],
                              category_ids=[12, 3, 7])
    data = load_coco(path, tmp_path)  # labels by id: 3 circle, 7 triangle, 12 square
    truth = [data[i] for i in range(len(data))]
    dets = simulate_detections(truth, noise=0.1, rng=np.random.default_rng(0), drop=0.2, false_positives=1.0)
    model_ids = [7, 99, 12, 3]  # the model's own label order, with a category the json does not have
    to_model = {lab: model_ids.index(cid) + 1 for lab, cid in enumerate(data.category_ids, start=1)}
    outputs = []
    for d in dets:
        extra = np.array([[5.0, 5.0, 40.0, 40.0]])  # a confident detection of category 99: dropped
        h, w = d["masks"].shape[1:]
        outputs.append({"boxes": np.concatenate([d["boxes"], extra]),
                        "labels": np.array([to_model[int(lab)] for lab in d["labels"]] + [2]),
                        "scores": np.concatenate([d["scores"], [0.99]]),
                        "masks": np.concatenate([d["masks"], np.ones((1, h, w), bool)])[:, None].astype(np.float32)})
    feed = iter(outputs)
    monkeypatch.setattr(cli.model, "detect", lambda params, images, config: [next(feed) for _ in images])
    results, rows = cli.evaluate_on_coco({}, None, data, model_category_ids=model_ids, progress=False)
    res_path = write_coco_results(tmp_path / "res.json", dets, data.image_ids, category_ids=data.category_ids)
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(path))
        cdt = coco.loadRes(str(res_path))
    for iou_type in ("bbox", "segm"):
        with contextlib.redirect_stdout(io.StringIO()):
            ev = COCOeval(coco, cdt, iouType=iou_type)
            ev.evaluate(); ev.accumulate(); ev.summarize()
        np.testing.assert_allclose(results[iou_type].stats[:3], ev.stats[:3], atol=1e-6, rtol=0)
        for k, row in enumerate(rows):  # COCOeval's categories are sorted ids too
            p = ev.eval["precision"][:, :, k, 0, -1]
            assert row["category_id"] == ev.params.catIds[k]
            assert row[iou_type] == pytest.approx(p[p > -1].mean(), abs=1e-6)
    assert [r["name"] for r in rows] == ["circle", "triangle", "square"]
    assert "per category" in capsys.readouterr().out
