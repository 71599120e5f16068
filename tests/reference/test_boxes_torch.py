"""Cross-check of boxes.py / anchors.py against torchvision (skipped without it).

Run with the torch venv: /work/tv/bin/python -m pytest tests/reference/test_boxes_torch.py
"""
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")
from torchvision.models.detection._utils import BoxCoder  # noqa: E402
from torchvision.models.detection.anchor_utils import AnchorGenerator  # noqa: E402
from torchvision.models.detection.image_list import ImageList  # noqa: E402
from torchvision.models.detection.transform import GeneralizedRCNNTransform  # noqa: E402

from mrcnn_np.anchors import feature_grid_sizes, pyramid_anchors, torchvision_resized_size  # noqa: E402
from mrcnn_np.boxes import (batched_nms, box_area, box_iou, clip_boxes_to_image, decode_boxes,  # noqa: E402
                            encode_boxes, nms, remove_small_boxes)


def random_boxes(rng, n, scale=600.0, lo=2.0, hi=120.0, dtype=np.float32):
    xy = rng.uniform(0, scale, (n, 2))
    wh = rng.uniform(lo, hi, (n, 2))
    return np.concatenate([xy, xy + wh], 1).astype(dtype)


def T(a):
    return torch.from_numpy(np.ascontiguousarray(a))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_geometry(dtype):
    rng = np.random.default_rng(0)
    a = random_boxes(rng, 200, dtype=dtype)
    b = random_boxes(rng, 150, dtype=dtype)
    np.testing.assert_array_equal(box_area(a), torchvision.ops.box_area(T(a)).numpy())
    # the same formula with the same operation order: equal bit for bit
    np.testing.assert_array_equal(box_iou(a, b), torchvision.ops.box_iou(T(a), T(b)).numpy())
    np.testing.assert_array_equal(clip_boxes_to_image(a, (300, 410)),
                                  torchvision.ops.clip_boxes_to_image(T(a), (300, 410)).numpy())
    np.testing.assert_array_equal(remove_small_boxes(a, 30.0),
                                  torchvision.ops.remove_small_boxes(T(a), 30.0).numpy())


@pytest.mark.parametrize("weights", [(1.0, 1.0, 1.0, 1.0), (10.0, 10.0, 5.0, 5.0)])
def test_box_coder(weights):
    rng = np.random.default_rng(1)
    anchors = random_boxes(rng, 500)
    gt = random_boxes(rng, 500)
    coder = BoxCoder(weights)
    ref = coder.encode_single(T(gt), T(anchors)).numpy()
    # float32: a few ulp apart (different operation order); atol for targets near 0
    np.testing.assert_allclose(encode_boxes(gt, anchors, weights), ref, rtol=1e-6, atol=1e-5)
    codes = (rng.normal(0, 2, (500, 12)) * np.tile(weights, 3)).astype(np.float32)
    codes[:5, 2] = 40.0  # beyond the clamp
    ref = coder.decode_single(T(codes), T(anchors)).numpy()
    # coordinates up to ~4000 px: 1 ulp is 2.4e-4 there, hence atol for corners near 0
    np.testing.assert_allclose(decode_boxes(codes, anchors, weights), ref, rtol=1e-6, atol=1e-3)
    assert math.isclose(coder.bbox_xform_clip, math.log(1000.0 / 16))


@pytest.mark.parametrize("kind", ["uniform", "clustered", "integer"])
@pytest.mark.parametrize("thr", [0.3, 0.5, 0.7])
def test_nms_equals_torchvision(kind, thr):
    rng = np.random.default_rng(2)
    n = 3000
    if kind == "clustered":
        centres = random_boxes(rng, 30)
        b = (centres[rng.integers(0, 30, n)] + rng.normal(0, 4, (n, 4))).astype(np.float32)
        b[:, 2:] = np.maximum(b[:, 2:], b[:, :2] + 1)
    else:
        b = random_boxes(rng, n)
    s = rng.random(n).astype(np.float32)
    if kind == "integer":
        b = np.round(b / 8).astype(np.float32)
        b[:, 2:] = np.maximum(b[:, 2:], b[:, :2] + 1)
        s = rng.integers(0, 4, n).astype(np.float32)  # many equal scores
    ours = nms(b, s, thr)
    ref = torchvision.ops.nms(T(b), T(s), thr).numpy()
    np.testing.assert_array_equal(ours, ref)
    idxs = rng.integers(0, 5, n)
    ours = batched_nms(b, s, idxs, thr)
    ref = torchvision.ops.batched_nms(T(b), T(s), T(idxs), thr).numpy()
    if kind == "integer":  # torch.sort is not stable on ties: compare as sets + score order
        assert set(ours.tolist()) == set(ref.tolist())
        np.testing.assert_array_equal(s[ours], s[ref])
    else:
        np.testing.assert_array_equal(ours, ref)


@pytest.mark.parametrize("image_size", [(1024, 1024), (480, 640), (333, 517), (427, 640), (375, 500), (612, 612), (500, 2000), (719, 1283)])
def test_anchor_generator(image_size):
    # the resize of GeneralizedRCNNTransform, then AnchorGenerator on the padded batch
    transform = GeneralizedRCNNTransform(800, 1333, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    transform.eval()
    images, _ = transform([torch.rand(3, *image_size)])
    assert tuple(images.image_sizes[0]) == torchvision_resized_size(image_size)
    padded = tuple(images.tensors.shape[-2:])
    grids = feature_grid_sizes(torchvision_resized_size(image_size), size_divisible=32)
    gen = AnchorGenerator(((32,), (64,), (128,), (256,), (512,)), ((0.5, 1.0, 2.0),) * 5)
    feats = [torch.zeros(1, 1, gh, gw) for gh, gw in grids]
    ref = gen(ImageList(images.tensors, images.image_sizes), feats)[0].numpy()
    ours = np.concatenate(pyramid_anchors(padded, grids))
    np.testing.assert_array_equal(ours, ref)
    if image_size == (1024, 1024):
        assert ref.shape[0] == 159882
