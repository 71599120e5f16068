"""Tests for mrcnn_np.data.coco: RLE, polygons, annotation files, results files.
(Bit-for-bit comparisons with pycocotools live in tests/reference/.)"""
import json
import warnings

import matplotlib.image as mpimg
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from mrcnn_np.data.coco import (
    load_coco,
    load_coco_results,
    polygon_to_mask,
    polygon_to_mask_naive,
    rle_counts_from_mask,
    rle_counts_from_string,
    rle_counts_to_string,
    rle_decode,
    rle_encode,
    write_coco_results,
)
from mrcnn_np.evaluate import coco_evaluate

# ------------------------------------------------------------------------- RLE


def test_counts_of_the_classic_example():
    # column-major [0 0 1 1 1 0 1] -> runs 2 zeros, 3 ones, 1 zero, 1 one
    m = np.array([0, 0, 1, 1, 1, 0, 1], bool)[:, None]  # h = 7, w = 1
    np.testing.assert_array_equal(rle_counts_from_mask(m), [2, 3, 1, 1])
    # a mask starting with ones begins with an empty run of zeros
    m = np.array([1, 1, 1, 1, 1, 1, 0], bool)[:, None]
    np.testing.assert_array_equal(rle_counts_from_mask(m), [0, 6, 1])


def test_known_compressed_strings():
    # counts [2, 3, 1, 1]: the first three are written as they are: '2', '3', '1'
    # (48 + value, one 5-bit group each); the fourth becomes 1 - counts[1] = -2,
    # whose low 5 bits are 0b11110 = 30 with the sign bit 0x10 set and nothing
    # left (-2 >> 5 = -1): one character 48 + 30 = 'N'.
    assert rle_counts_to_string([2, 3, 1, 1]) == "231N"
    np.testing.assert_array_equal(rle_counts_from_string("231N"), [2, 3, 1, 1])
    # 100 = 0b11_00100: low group 4 with the continuation bit 0x20 -> chr(48+4+32) = 'T',
    # then 3 -> '3'
    assert rle_counts_to_string([100]) == "T3"
    # no counts is the empty string, whatever dtype the empty array has (found by the fuzz:
    # an empty complex array reached the int64 cast and warned)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert rle_counts_to_string([]) == rle_counts_to_string(np.zeros(0, complex)) == ""
    with pytest.raises(TypeError, match="counts"):
        rle_counts_to_string(np.array([1.0, 2.0]))
    m = np.array([0, 0, 1, 1, 1, 0, 1], bool)[:, None]
    assert rle_encode(m) == {"size": [7, 1], "counts": "231N"}
    np.testing.assert_array_equal(rle_decode({"size": [7, 1], "counts": "231N"}), m)
    np.testing.assert_array_equal(rle_decode({"size": [10, 10], "counts": b"T3"}), np.zeros((10, 10), bool))


def test_decode_hand_made_uncompressed_rle():
    # size [h=3, w=2], counts [1, 2, 3]: column-major 0 | 1 1 | 0 0 0
    # -> column 0 = (0, 1, 1), column 1 = (0, 0, 0)
    m = rle_decode({"size": [3, 2], "counts": [1, 2, 3]})
    np.testing.assert_array_equal(m, [[0, 0], [1, 0], [1, 0]])


@settings(max_examples=60)
@given(arrays(np.bool_, st.tuples(st.integers(0, 40), st.integers(0, 40))))
def test_rle_round_trip_random_masks(mask):
    rle = rle_encode(mask)
    assert isinstance(rle["counts"], str)
    np.testing.assert_array_equal(rle_decode(rle), mask)
    counts = rle_counts_from_mask(mask)
    assert counts.sum() == mask.size
    np.testing.assert_array_equal(rle_counts_from_string(rle["counts"]), counts)
    np.testing.assert_array_equal(rle_decode({"size": list(mask.shape), "counts": counts.tolist()}), mask)


def test_rle_round_trip_long_runs():
    rng = np.random.default_rng(0)
    m = np.zeros((500, 700), bool)
    m[100:400, 50:650] = True
    m[rng.integers(0, 500, 50), rng.integers(0, 700, 50)] ^= True
    np.testing.assert_array_equal(rle_decode(rle_encode(m)), m)


def test_rle_errors():
    with pytest.raises(ValueError, match="sum to 5"):
        rle_decode({"size": [2, 3], "counts": [1, 4]})
    with pytest.raises(ValueError, match="sum to"):
        rle_decode({"size": [10, 10], "counts": "T2"})
    with pytest.raises(ValueError, match="counts"):
        rle_decode({"size": [2, 2]})
    with pytest.raises(ValueError, match="middle"):
        rle_decode({"size": [2, 2], "counts": "T"})
    with pytest.raises(ValueError, match="outside"):
        rle_decode({"size": [2, 2], "counts": "~"})


# -------------------------------------------------------------------- polygons


def test_polygon_axis_aligned_rectangle():
    # [2, 3] x [12, 8]: centres x = 2.5 .. 11.5 (10 columns), y = 3.5 .. 7.5 (5 rows)
    poly = [2, 3, 12, 3, 12, 8, 2, 8]
    expected = np.zeros((10, 15), bool)
    expected[3:8, 2:12] = True
    for method in ("centres", "pycocotools"):
        np.testing.assert_array_equal(polygon_to_mask([poly], 10, 15, method=method), expected)


def test_polygon_triangle_by_hand_and_analytic_area():
    # (0,0), (20,0), (0,20): centres (c+.5, r+.5) with c + r + 1 <= 20; those on
    # the slanted edge (c + r + 1 == 20, 20 of them) lie on a bottom edge -> in.
    # Column c holds rows 0..19-c: sum_c (20 - c) = 210. (pycocotools' snapped
    # boundary leaves the 20 edge pixels out: 190; the analytic area is 200.)
    m = polygon_to_mask([[0, 0, 20, 0, 0, 20]], 30, 30, method="centres")
    assert m.sum() == 210
    assert m[:, 0].sum() == 20 and m[:, 19].sum() == 1
    # a generic triangle: pixel count close to the shoelace area
    tri = np.array([2.3, 1.7, 41.2, 6.9, 13.4, 33.8])
    x, y = tri[0::2], tri[1::2]
    area = 0.5 * abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)))  # 595.48
    perim = np.hypot(np.diff(np.append(x, x[0])), np.diff(np.append(y, y[0]))).sum()
    for method in ("centres", "pycocotools"):
        count = polygon_to_mask([tri], 40, 50, method=method).sum()
        assert abs(count - area) < 0.1 * perim  # boundary error only, far below one pixel per unit length


def test_polygon_parts_are_ored_and_clipped():
    a = [0, 0, 6, 0, 6, 6, 0, 6]
    b = [4, 4, 10, 4, 10, 10, 4, 10]
    m = polygon_to_mask([a, b], 12, 12, method="centres")
    assert m.sum() == 36 + 36 - 4
    # partly outside the image: only the inside part is drawn
    m = polygon_to_mask([[-5, -5, 3, -5, 3, 3, -5, 3]], 8, 8, method="centres")
    assert m.sum() == 9 and m[:3, :3].all()


@settings(max_examples=30)
@given(st.integers(0, 2**32 - 1), st.integers(3, 8))
def test_polygon_fast_equals_naive(seed, n):
    rng = np.random.default_rng(seed)
    poly = rng.uniform(-3, 19, size=2 * n)
    if rng.random() < 0.5:
        poly = np.round(poly * 2) / 2  # vertices and edges through pixel centres: ties
    np.testing.assert_array_equal(polygon_to_mask([poly], 16, 17, method="centres"), polygon_to_mask_naive(poly, 16, 17))


def test_polygon_errors():
    with pytest.raises(ValueError, match="at least 3"):
        polygon_to_mask([[0, 0, 5, 5]], 8, 8)
    with pytest.raises(ValueError, match="method"):
        polygon_to_mask([[0, 0, 5, 5, 0, 5]], 8, 8, method="nonzero")


# --------------------------------------------------------------- COCO json files


def _write_dataset(tmp_path, anns=None, images=None):
    """Two images (a PNG and a JPEG), categories with sparse ids 3 and 7."""
    rng = np.random.default_rng(0)
    mpimg.imsave(tmp_path / "a.png", rng.random((20, 30, 3)))
    mpimg.imsave(tmp_path / "b.jpg", (rng.random((16, 24, 3)) * 255).astype(np.uint8))
    crowd = np.zeros((16, 24), bool)
    crowd[2:10, 12:20] = True
    solid = np.zeros((20, 30), bool)
    solid[5:15, 2:8] = True
    if images is None:
        images = [{"id": 1, "file_name": "a.png", "height": 20, "width": 30},
                  {"id": 2, "file_name": "b.jpg", "height": 16, "width": 24}]
    if anns is None:
        anns = [
            {"id": 11, "image_id": 1, "category_id": 7, "bbox": [10, 2, 10, 8], "area": 80, "iscrowd": 0,
             "segmentation": [[10, 2, 20, 2, 20, 10, 10, 10]]},
            {"id": 12, "image_id": 1, "category_id": 3, "bbox": [2, 5, 6, 10], "area": 60, "iscrowd": 0,
             "segmentation": rle_encode(solid)},
            {"id": 13, "image_id": 2, "category_id": 3, "bbox": [12, 2, 8, 8], "area": 64, "iscrowd": 1,
             "segmentation": {"size": [16, 24], "counts": rle_counts_from_mask(crowd).tolist()}},
            {"id": 14, "image_id": 2, "category_id": 7, "bbox": [1, 1, 4, 3], "area": 12, "iscrowd": 0,
             "segmentation": [[1, 1, 5, 1, 5, 4, 1, 4]]},
        ]
    data = {"images": images, "annotations": anns,
            "categories": [{"id": 7, "name": "seven"}, {"id": 3, "name": "three"}]}
    path = tmp_path / "ann.json"
    path.write_text(json.dumps(data))
    return path, solid, crowd


def test_load_coco(tmp_path):
    path, solid, crowd = _write_dataset(tmp_path)
    data = load_coco(path)
    assert data.category_ids == (3, 7) and data.category_names == ("three", "seven")
    a, b = data.samples
    assert a["image"].shape == (20, 30, 3) and a["image"].dtype == np.float32
    assert b["image"].shape == (16, 24, 3) and 0 <= b["image"].min() and b["image"].max() <= 1
    # bbox [x, y, w, h] = [10, 2, 10, 8] -> xyxy (10, 2, 20, 10); category 7 -> label 2
    np.testing.assert_array_equal(a["boxes"], [[10, 2, 20, 10], [2, 5, 8, 15]])
    np.testing.assert_array_equal(a["labels"], [2, 1])
    assert a["masks"].shape == (2, 20, 30) and a["masks"].dtype == bool
    assert a["masks"][0].sum() == 80 and a["masks"][0][2:10, 10:20].all()
    np.testing.assert_array_equal(a["masks"][1], solid)
    np.testing.assert_array_equal(b["masks"][0], crowd)
    np.testing.assert_array_equal(b["iscrowd"], [True, False])
    np.testing.assert_array_equal(b["ann_ids"], [13, 14])
    assert b["image_id"] == 2
    np.testing.assert_array_equal(a["area"], [80, 60])
    assert load_coco(path, load_images=False).samples[0]["image"] is None


def test_round_trip_ground_truth_as_detections_gives_ap_one(tmp_path):
    path, _, _ = _write_dataset(tmp_path)
    data = load_coco(path)
    dets = []
    for s in data.samples:
        keep = ~s["iscrowd"]
        dets.append({"boxes": s["boxes"][keep], "labels": s["labels"][keep],
                     "scores": np.linspace(0.9, 0.5, keep.sum()), "masks": s["masks"][keep]})
    out = write_coco_results(tmp_path / "res" / "results.json", dets, data.image_ids, category_ids=data.category_ids)
    assert sorted(p.name for p in out.parent.iterdir()) == ["results.json"]  # no temp file left
    assert out.stat().st_mode & 0o777 == 0o644  # readable by all, not mkstemp's 0600
    results = json.loads(out.read_text())
    assert len(results) == 3
    r0 = results[0]
    assert r0["image_id"] == 1 and r0["category_id"] == 7 and r0["bbox"] == [10.0, 2.0, 10.0, 8.0]
    assert set(r0["segmentation"]) == {"size", "counts"} and isinstance(r0["segmentation"]["counts"], str)
    back = load_coco_results(out, data)
    np.testing.assert_array_equal(back[0]["boxes"], dets[0]["boxes"])
    np.testing.assert_array_equal(back[1]["masks"], dets[1]["masks"])
    for iou_type in ("bbox", "segm"):
        r = coco_evaluate(data.samples, back, iou_type=iou_type)
        assert r.stats[0] == pytest.approx(1.0, abs=1e-12)
        assert r.stats[8] == pytest.approx(1.0, abs=1e-12)


def test_malformed_json(tmp_path):
    p = tmp_path / "bad.json"
    p.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_coco(p)
    with pytest.raises(ValueError, match="does not exist"):
        load_coco(tmp_path / "missing.json")
    p.write_text(json.dumps({"images": []}))
    with pytest.raises(ValueError, match="annotations"):
        load_coco(p)


def _ann(**kw):
    base = {"id": 21, "image_id": 1, "category_id": 3, "bbox": [0, 0, 4, 4], "area": 16, "iscrowd": 0,
            "segmentation": [[0, 0, 4, 0, 4, 4, 0, 4]]}
    base.update(kw)
    return base


def test_errors_name_the_annotation(tmp_path):
    bad_key = _ann(id=31)
    del bad_key["bbox"]
    cases = [
        (bad_key, "annotation 31.*bbox"),
        (_ann(id=32, segmentation=[[0, 0, 4, 4]]), "annotation 32.*at least 3"),
        (_ann(id=33, segmentation={"size": [20, 30], "counts": [5, 10]}), "annotation 33.*sum to 15"),
        (_ann(id=34, segmentation={"size": [20, 30], "counts": "T3"}), "annotation 34.*sum to 100"),
        (_ann(id=35, image_id=99), "annotation 35.*image_id 99"),
        (_ann(id=36, category_id=5), "annotation 36.*category_id 5"),
    ]
    for ann, msg in cases:
        path, _, _ = _write_dataset(tmp_path, anns=[ann])
        with pytest.raises(ValueError, match=msg):
            load_coco(path)


def test_missing_image_file(tmp_path):
    images = [{"id": 1, "file_name": "a.png", "height": 20, "width": 30},
              {"id": 5, "file_name": "nowhere.png", "height": 20, "width": 30}]
    path, _, _ = _write_dataset(tmp_path, anns=[_ann()], images=images)
    with pytest.raises(ValueError, match="image 5.*nowhere.png.*does not exist"):
        load_coco(path)
    load_coco(path, load_images=False)  # annotations alone are fine


def test_results_file_errors(tmp_path):
    path, solid, _ = _write_dataset(tmp_path)
    data = load_coco(path)
    seg = rle_encode(solid)  # 20 x 30, the size of image 1
    ok = {"image_id": 1, "category_id": 3, "score": 0.9, "segmentation": seg}
    back = load_coco_results([ok], data)  # a segmentation-only file: box from the mask
    np.testing.assert_array_equal(back[0]["boxes"], [[2, 5, 8, 15]])
    assert back[0]["area"][0] == 60 and back[1]["masks"].shape == (0, 16, 24)
    cases = [
        ([ok, {"image_id": 1, "category_id": 3, "score": 0.5, "bbox": [0, 0, 2, 2]}],
         "result 1 has no 'segmentation'"),
        ([dict(ok, image_id=2)], r"result 0: RLE size \[20, 30\] differs from the size \[16, 24\] of image 2"),
        ([dict(ok, image_id=9)], "result 0: image_id 9"),
        ([dict(ok, category_id=4)], "result 0: category_id 4"),
        ([{"image_id": 1, "category_id": 3, "score": 0.5}], "result 0 needs 'bbox' or 'segmentation'"),
    ]
    for results, msg in cases:
        with pytest.raises(ValueError, match=msg):
            load_coco_results(results, data)


# ------------------------------------------------ the dataset object, writing a dataset


def test_coco_data_is_an_indexable_dataset_with_the_category_mapping(tmp_path):
    path, solid, crowd = _write_dataset(tmp_path)
    data = load_coco(path, tmp_path)
    assert len(data) == 2 and data.image_ids == [1, 2]
    # sparse, unsorted ids 7 and 3 -> labels by increasing id: 3 -> 1, 7 -> 2, and back
    assert data.category_ids == (3, 7) and data.class_names == ("background", "three", "seven")
    assert data.num_classes == 3
    assert data.label_of(7) == 2 and data.category_id_of(2) == 7 and data.category_id_of(1) == 3
    with pytest.raises(ValueError, match="category id 5"):
        data.label_of(5)
    with pytest.raises(ValueError, match="label"):
        data.category_id_of(3)
    b = data[1]
    assert b["file_name"] == "b.jpg" and b["image_id"] == 2 and b["image"].shape == (16, 24, 3)
    np.testing.assert_array_equal(b["labels"], [1, 2])
    np.testing.assert_array_equal(b["iscrowd"], [True, False])  # kept for evaluation; train drops it
    np.testing.assert_array_equal(b["masks"][0], crowd)  # an uncompressed RLE counts list
    np.testing.assert_array_equal(data[0]["masks"][1], solid)  # a compressed RLE string
    np.testing.assert_array_equal(data[-1]["boxes"], b["boxes"])
    with pytest.raises(IndexError):
        data[2]
    with pytest.raises(TypeError):
        data["0"]
    assert [s["image_id"] for s in data] == [1, 2]


def test_images_without_annotations_give_empty_targets(tmp_path):
    path, _, _ = _write_dataset(tmp_path, anns=[_ann(image_id=2)])  # image 1 has no annotation
    a = load_coco(path)[0]
    assert a["boxes"].shape == (0, 4) and a["labels"].shape == (0,) and a["masks"].shape == (0, 20, 30)


def _rewrite(path, change):
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


@pytest.mark.parametrize("change, message", [
    (lambda d: d.update(images=[]), "empty dataset: 'images'"),
    (lambda d: d.update(categories=[]), "empty dataset: 'categories'"),
    (lambda d: d["images"][0].update(width=31), r"image 1: file .*a.png' is 30x20 \(w x h\), the json says 31x20"),
    (lambda d: d["images"][1].pop("height"), "image 2 is missing the key 'height'"),
    (lambda d: d["categories"].append({"name": "no id"}), "category entry 2 is missing the key 'id'"),
    (lambda d: d["annotations"][0].update(category_id=99), "annotation 11: category_id 99 is not in 'categories'"),
    (lambda d: d["annotations"][1].update(segmentation=[["a", 1, 2, 3, 4, 5]]), "annotation 12: a polygon"),
    (lambda d: d["annotations"][1].update(segmentation={"size": [20, 30], "counts": "\x7f"}),
     "annotation 12: RLE counts string has characters"),
    (lambda d: d["annotations"][3].update(segmentation={"size": [20, 30], "counts": [480, 120]}),
     r"annotation 14: RLE size \[20, 30\] differs from the image size \[16, 24\]"),
    (lambda d: d["annotations"][0].update(bbox=[0, 0, -1, 3]), "annotation 11: bbox must be"),
    (lambda d: d["annotations"][2].update(id=11), "annotation 11: annotation ids must be unique"),
])
def test_bad_input_is_one_value_error_naming_the_file_and_the_entry(tmp_path, change, message):
    path, _, _ = _write_dataset(tmp_path)
    _rewrite(path, change)
    with pytest.raises(ValueError, match=message) as info:
        load_coco(path)
    assert str(info.value).startswith(str(path)) and "\n" not in str(info.value)


def test_mask_to_polygons_by_hand():
    from mrcnn_np.data.coco import mask_to_polygons

    m = np.zeros((4, 5), bool)
    m[1:3, 1:4] = True  # rows 1..2, columns 1..3: the rectangle x in [1, 4], y in [1, 3]
    (poly,) = mask_to_polygons(m)
    corners = set(zip(poly[0::2], poly[1::2]))
    assert len(poly) == 8 and corners == {(1.0, 1.0), (4.0, 1.0), (4.0, 3.0), (1.0, 3.0)}
    ring = np.ones((5, 5), bool)
    ring[2, 2] = False
    assert mask_to_polygons(ring) is None  # a hole: COCO polygons cannot cut it
    diagonal = np.eye(3, dtype=bool)  # three pixels touching at corners: three squares
    polys = mask_to_polygons(diagonal)
    assert len(polys) == 3 and all(len(p) == 8 for p in polys)
    assert mask_to_polygons(np.zeros((3, 3), bool)) == []


@pytest.mark.parametrize("seed", range(4))
def test_mask_to_polygons_rasterises_back_exactly(seed):
    from mrcnn_np.data.coco import mask_to_polygons

    rng = np.random.default_rng(seed)
    exact = 0
    for _ in range(150):
        h, w = rng.integers(1, 12, size=2)
        m = rng.random((h, w)) < rng.uniform(0.1, 0.9)
        polys = mask_to_polygons(m)
        if polys is None:  # holes are the only refusal; then some background is enclosed
            continue
        exact += 1
        got = polygon_to_mask(polys, h, w) if polys else np.zeros((h, w), bool)
        np.testing.assert_array_equal(got, m)
        if polys:
            np.testing.assert_array_equal(polygon_to_mask(polys, h, w, method="centres"), m)
    assert exact > 50


def test_export_then_load_gives_the_shapes_dataset_exactly(tmp_path):
    from mrcnn_np.data.coco import write_coco_dataset
    from mrcnn_np.data.shapes import CLASS_NAMES, ShapesDataset

    ds = ShapesDataset(12, seed=3)
    path = write_coco_dataset(ds, tmp_path / "out", category_names=CLASS_NAMES[1:], category_ids=[4, 9, 2])
    raw = json.loads(path.read_text())
    forms = {type(a["segmentation"]).__name__ + ("-" + type(a["segmentation"]["counts"]).__name__
                                                if isinstance(a["segmentation"], dict) else "")
             for a in raw["annotations"]}
    assert forms == {"list", "dict-str", "dict-list"}  # polygon, compressed and uncompressed RLE
    data = load_coco(path, tmp_path / "out")
    assert len(data) == len(ds) and data.category_names == ("triangle", "square", "circle")  # ids 2, 4, 9
    back = {1: 2, 2: 3, 3: 1}  # shapes label -> label of the loaded data (ordered by category id)
    for item, got in zip(ds, data):
        np.testing.assert_array_equal(got["boxes"], item["boxes"])
        np.testing.assert_array_equal(got["labels"], [back[int(lab)] for lab in item["labels"]])
        np.testing.assert_array_equal(got["masks"], item["masks"])
        assert np.abs(got["image"] - item["image"]).max() <= 0.5 / 255 + 1e-6  # 8-bit PNG
        np.testing.assert_array_equal(got["area"], item["masks"].reshape(len(item["masks"]), -1).sum(1))
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["annotations.json", "images"]
