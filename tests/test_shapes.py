"""Synthetic shapes: rasterisation, boxes, occlusion rule, determinism, bad arguments."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from mrcnn_np.data.shapes import (CLASS_NAMES, ShapesDataset, masks_to_boxes, render_shapes,
                                  shape_mask)

DS = ShapesDataset(24, seed=3)
SAMPLES = [DS[i] for i in range(len(DS))]


def reference_boxes(masks):
    """Loop over np.nonzero: min column, max column + 1, ..."""
    out = []
    for m in masks:
        ys, xs = np.nonzero(m)
        out.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
    return np.array(out, dtype=np.float32).reshape(-1, 4)


# ---------------------------------------------------------------- rasterisation
def test_square_golden_columns_10_to_19():
    # centre 15, half-size 5: pixel centres c + 0.5 in [10, 20] -> columns 10..19 (10 pixels)
    m = shape_mask(1, 15.0, 15.0, 5.0, 32)
    assert m.sum() == 100
    np.testing.assert_array_equal(np.flatnonzero(m.any(axis=0)), np.arange(10, 20))
    np.testing.assert_array_equal(masks_to_boxes(m[None]), [[10, 10, 20, 20]])


def test_circle_and_triangle_golden():
    # radius 1.5 around (5, 5): pixel centres lie at offsets +-0.5 or +-1.5 per axis, so
    # d^2 = 0.5 for the 2x2 block of pixels 4..5, and 2.5 > 2.25 for the next ring: only the block
    m = shape_mask(2, 5.0, 5.0, 1.5, 10)
    np.testing.assert_array_equal(np.argwhere(m), [[4, 4], [4, 5], [5, 4], [5, 5]])
    # radius 5 around (10, 10): row r keeps |c + .5 - 10| <= sqrt(25 - (r + .5 - 10)^2)
    # row 9: sqrt(24.75) = 4.97 -> columns 5..14 (10 pixels); row 5: sqrt(4.75) = 2.18 ->
    # columns 8..11 (4 pixels); row 4: dy = -5.5, none
    c = shape_mask(2, 10.0, 10.0, 5.0, 20)
    np.testing.assert_array_equal(np.flatnonzero(c[9]), np.arange(5, 15))
    np.testing.assert_array_equal(np.flatnonzero(c[5]), np.arange(8, 12))
    assert c[4].sum() == 0 and c[15].sum() == 0
    # triangle cx 8, cy 6, s 4: apex (8, 2), base (4, 10)-(12, 10). Row r has centre y = r + .5,
    # dy = y - 6, and keeps columns with |c + .5 - 8| <= (dy + 4) / 2:
    # row 2: 0.25 -> none; row 3: 0.75 -> columns 7, 8; row 9: 3.75 -> columns 4..11; row 10: dy > 4
    t = shape_mask(3, 8.0, 6.0, 4.0, 16)
    assert t[2].sum() == 0
    np.testing.assert_array_equal(np.flatnonzero(t[3]), [7, 8])
    np.testing.assert_array_equal(np.flatnonzero(t[9]), np.arange(4, 12))
    assert t[10].sum() == 0
    assert t.sum() == pytest.approx(2 * 4.0 ** 2, rel=0.25)  # area base * height / 2 = 32


def test_render_occlusion_by_hand():
    red, blue, bg = (1, 0, 0), (0, 0, 1), (0.5, 0.5, 0.5)
    image, masks, full = render_shapes([(1, 8.0, 8.0, 4.0, red), (1, 12.0, 8.0, 4.0, blue)], 16, bg)
    # first square columns 4..11, second 8..15; the second is on top
    np.testing.assert_array_equal(np.flatnonzero(masks[0].any(0)), np.arange(4, 8))
    np.testing.assert_array_equal(np.flatnonzero(masks[1].any(0)), np.arange(8, 16))
    assert full[0].sum() == 64 and masks[0].sum() == 32
    np.testing.assert_array_equal(image[8, 9], blue)
    np.testing.assert_array_equal(image[8, 5], red)
    np.testing.assert_allclose(image[0, 0], bg)


# ---------------------------------------------------------------- dataset samples
def test_sample_format():
    for s in SAMPLES:
        g = len(s["labels"])
        assert s["image"].shape == (128, 128, 3) and s["image"].dtype == np.float32
        assert s["image"].min() >= 0 and s["image"].max() <= 1
        assert s["boxes"].shape == (g, 4) and s["boxes"].dtype == np.float32
        assert s["labels"].dtype == np.int64 and set(s["labels"]) <= {1, 2, 3}
        assert s["masks"].shape == (g, 128, 128) and s["masks"].dtype == bool
        assert 1 <= g <= 4
    assert CLASS_NAMES[1:] == ("square", "circle", "triangle")
    assert {l for s in SAMPLES for l in s["labels"]} == {1, 2, 3}


def test_boxes_are_tight_boxes_of_masks():
    for s in SAMPLES:
        np.testing.assert_array_equal(s["boxes"], reference_boxes(s["masks"]))
        b = s["boxes"]
        assert np.all(b[:, 2] > b[:, 0]) and np.all(b[:, 3] > b[:, 1])
        assert np.all(b >= 0) and np.all(b[:, 2:] <= 128)


def test_masks_disjoint_and_cover_exactly_the_painted_pixels():
    for i, s in enumerate(SAMPLES):
        m = s["masks"]
        assert m.sum(axis=0).max() <= 1  # pairwise disjoint
        background, specs = DS.shape_specs(i)
        off = ~m.any(axis=0)  # pixels of no object show the background colour, exactly
        np.testing.assert_array_equal(s["image"][off], np.broadcast_to(
            background.astype(np.float32), (off.sum(), 3)))
        for mk, spec in zip(m, specs):  # each object's visible pixels show its colour
            np.testing.assert_array_equal(np.unique(s["image"][mk], axis=0),
                                          spec[4].astype(np.float32)[None])
            assert np.abs(spec[4] - background).max() >= 0.3  # contrast with the background


def test_occlusion_rule_against_unoccluded_shapes():
    """Masks are the drawn shapes minus everything painted later; every object keeps
    >= min_visible pixels and >= min_visible_fraction of its own area."""
    ds = ShapesDataset(12, image_size=64, min_objects=5, max_objects=6, seed=1, min_size=8,
                       max_size=16, min_visible=30, min_visible_fraction=0.4)
    occluded = 0
    for i in range(len(ds)):
        s = ds[i]
        background, specs = ds.shape_specs(i)
        assert [sp[0] for sp in specs] == list(s["labels"])
        full = np.array([shape_mask(k, cx, cy, sz, 64) for k, cx, cy, sz, _ in specs])
        for k in range(len(specs)):
            want = full[k] & ~full[k + 1:].any(axis=0)
            np.testing.assert_array_equal(s["masks"][k], want)
            vis = want.sum()
            assert vis >= 30 and vis >= 0.4 * full[k].sum()
            occluded += int(vis < full[k].sum())
        np.testing.assert_array_equal(s["masks"][-1], full[-1])  # the top shape is whole
    assert occluded >= 5  # the rule was exercised, not vacuous


def test_fraction_one_forbids_any_overlap():
    ds = ShapesDataset(8, image_size=64, min_objects=3, max_objects=4, seed=2, min_size=5,
                       max_size=10, min_visible_fraction=1.0)
    for i in range(len(ds)):
        _, specs = ds.shape_specs(i)
        full = np.array([shape_mask(k, cx, cy, sz, 64) for k, cx, cy, sz, _ in specs])
        assert full.sum(axis=0).max() == 1
        np.testing.assert_array_equal(ds[i]["masks"], full)


def test_determinism_and_order_independence():
    a = ShapesDataset(6, seed=11)
    b = ShapesDataset(6, seed=11)
    forward = [a[i] for i in range(6)]
    backward = [b[i] for i in reversed(range(6))][::-1]
    again = a[3]
    for x, y in zip(forward, backward):
        for key in ("image", "boxes", "labels", "masks"):
            assert x[key].dtype == y[key].dtype
            np.testing.assert_array_equal(x[key], y[key])
    np.testing.assert_array_equal(again["image"], forward[3]["image"])
    # a bigger dataset with the same seed has the same first samples
    np.testing.assert_array_equal(ShapesDataset(100, seed=11)[5]["masks"], forward[5]["masks"])
    np.testing.assert_array_equal(a[-1]["image"], forward[5]["image"])
    other = ShapesDataset(6, seed=12)[0]
    assert not np.array_equal(other["image"], forward[0]["image"])


def test_noise_is_deterministic_and_mild():
    a = ShapesDataset(2, image_size=32, seed=5, noise=0.02)[1]
    b = ShapesDataset(2, image_size=32, seed=5, noise=0.02)[1]
    clean = ShapesDataset(2, image_size=32, seed=5)[1]
    np.testing.assert_array_equal(a["image"], b["image"])
    assert a["image"].dtype == np.float32
    diff = np.abs(a["image"] - clean["image"])
    assert 0 < diff.mean() < 0.03
    np.testing.assert_array_equal(a["masks"], clean["masks"])


def test_sizes_and_rectangular_images():
    ds = ShapesDataset(5, image_size=(48, 80), min_size=5, max_size=10, seed=4)
    for s in ds:
        assert s["image"].shape == (48, 80, 3) and s["masks"].shape[1:] == (48, 80)
        b = s["boxes"]
        assert np.all(b[:, 2] <= 80) and np.all(b[:, 3] <= 48)
        assert np.all(b[:, 2:] - b[:, :2] <= 2 * 10 + 1)


def test_masks_to_boxes_empty_and_bad():
    assert masks_to_boxes(np.zeros((0, 5, 5), bool)).shape == (0, 4)
    with pytest.raises(ValueError, match="non-empty"):
        masks_to_boxes(np.zeros((1, 5, 5), bool))
    with pytest.raises(TypeError, match="masks"):
        masks_to_boxes(np.zeros((1, 5, 5)))


def test_bad_arguments():
    with pytest.raises(ValueError, match="num_images"):
        ShapesDataset(-1)
    with pytest.raises(TypeError, match="num_images"):
        ShapesDataset(2.5)
    with pytest.raises(ValueError, match="max_objects"):
        ShapesDataset(3, min_objects=3, max_objects=2)
    with pytest.raises(ValueError, match="min_objects"):
        ShapesDataset(3, min_objects=0)
    with pytest.raises(ValueError, match="image_size"):
        ShapesDataset(3, image_size=4)
    with pytest.raises(ValueError, match="max_size"):
        ShapesDataset(3, image_size=32, max_size=20)
    with pytest.raises(ValueError, match="max_size"):
        ShapesDataset(3, min_size=10, max_size=5)
    with pytest.raises(ValueError, match="min_visible"):
        ShapesDataset(3, min_size=4, min_visible=50)
    with pytest.raises(ValueError, match="min_visible_fraction"):
        ShapesDataset(3, min_visible_fraction=1.5)
    with pytest.raises(ValueError, match="noise"):
        ShapesDataset(3, noise=-0.1)
    with pytest.raises(ValueError, match="seed"):
        ShapesDataset(3, seed=-1)
    ds = ShapesDataset(3)
    with pytest.raises(IndexError, match="index"):
        ds[3]
    with pytest.raises(TypeError, match="index"):
        ds[1.0]
    with pytest.raises(ValueError, match="kind"):
        shape_mask(4, 1.0, 1.0, 1.0, 8)
    with pytest.raises(ValueError, match="size"):
        shape_mask(1, 1.0, 1.0, 0.0, 8)
    with pytest.raises(ValueError, match="background"):
        render_shapes([], 8, (1.5, 0, 0))


def test_chapter00_semantic_and_instance_maps():
    from mrcnn_np.viz.tasks import instance_map, semantic_map

    masks = np.zeros((3, 4, 5), bool)
    masks[0, 0, :2] = True   # a square (label 1)
    masks[1, 0, 2:4] = True  # a circle touching it (label 2)
    masks[2, 3, :] = True    # another circle (label 2)
    sem = semantic_map(masks, np.array([1, 2, 2]))
    np.testing.assert_array_equal(sem[0], [1, 1, 2, 2, 0])
    np.testing.assert_array_equal(sem[3], [2, 2, 2, 2, 2])
    assert sem[1:3].sum() == 0
    inst = instance_map(masks)
    np.testing.assert_array_equal(inst[0], [1, 1, 2, 2, 0])
    np.testing.assert_array_equal(inst[3], [3, 3, 3, 3, 3])
    # the two circles share one class id but keep different instance ids
    assert len(np.unique(sem[sem > 0])) == 2 and len(np.unique(inst[inst > 0])) == 3


@settings(max_examples=200, deadline=None)
@given(kind=st.integers(1, 3), cx=st.floats(-10, 40), cy=st.floats(-10, 40), s=st.floats(0.1, 20),
       h=st.integers(1, 33), w=st.integers(1, 33))
def test_shape_window_is_the_whole_grid_mask_cut_to_its_window(kind, cx, cy, s, h, w):
    from mrcnn_np.data.shapes import _shape_mask, _shape_window
    whole = _shape_mask(kind, cx, cy, s, (h, w))
    rows, cols, m = _shape_window(kind, cx, cy, s, (h, w))
    assert m.shape == whole[rows, cols].shape
    np.testing.assert_array_equal(m, whole[rows, cols])
    outside = whole.copy()
    outside[rows, cols] = False
    assert not outside.any()  # nothing of the shape lies outside its window
