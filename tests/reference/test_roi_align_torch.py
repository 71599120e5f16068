"""Cross-check mrcnn_np.roi_align against torchvision in float64 (and float32).

Skipped when torchvision is not installed; run with the torch venv:
``/work/tv/bin/python -m pytest tests/reference/test_roi_align_torch.py``.
"""
from collections import OrderedDict

import numpy as np
import pytest

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")

from mrcnn_np.roi_align import (  # noqa: E402
    level_mapper,
    multiscale_roi_align_backward,
    multiscale_roi_align_forward,
    roi_align_backward,
    roi_align_forward,
    roi_pool_naive,
)


def _random_boxes(rng, k, n, lo=-8.0, hi=40.0, ordered=True):
    xy = rng.uniform(lo, hi, (k, 4))
    if ordered:  # torchvision's adaptive grid crashes on inverted boxes with aligned=True
        xy[:, 2:] = np.maximum(xy[:, 2:], xy[:, :2])
    return np.column_stack([rng.integers(0, n, k), xy])


@pytest.mark.parametrize("method", ["matrix", "separable"])
@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("sampling_ratio", [-1, 0, 1, 2, 3])
@pytest.mark.parametrize("scale", [1.0, 0.5, 0.25])
def test_roi_align_matches_torchvision(aligned, sampling_ratio, scale, method):
    rng = np.random.default_rng([7, sampling_ratio + 1, int(aligned), int(scale * 8)])
    x = rng.standard_normal((2, 3, 11, 9))
    boxes = _random_boxes(rng, 25, 2, hi=40.0 * scale * 4)
    boxes[:3, 3:] = boxes[:3, 1:3]  # degenerate boxes
    out, cache = roi_align_forward(x, boxes, (4, 3), spatial_scale=scale,
                                   sampling_ratio=sampling_ratio, aligned=aligned, method=method)
    xt = torch.tensor(x, requires_grad=True)
    ot = torchvision.ops.roi_align(xt, torch.tensor(boxes), (4, 3), spatial_scale=scale,
                                   sampling_ratio=sampling_ratio, aligned=aligned)
    np.testing.assert_allclose(out, ot.detach().numpy(), rtol=1e-12, atol=1e-12)
    dout = rng.standard_normal(out.shape)
    ot.backward(torch.tensor(dout))
    np.testing.assert_allclose(roi_align_backward(dout, cache), xt.grad.numpy(),
                               rtol=1e-12, atol=1e-12)


def test_roi_align_inverted_boxes_unaligned_and_fixed_grid():
    # inverted boxes (x2 < x1): clamped to size 1 when not aligned; sampled
    # backwards with a fixed grid when aligned
    rng = np.random.default_rng(3)
    x = rng.standard_normal((1, 2, 10, 10))
    boxes = _random_boxes(rng, 30, 1, ordered=False)
    for aligned, sr in [(False, -1), (False, 2), (True, 2)]:
        out, _ = roi_align_forward(x, boxes, 3, sampling_ratio=sr, aligned=aligned)
        want = torchvision.ops.roi_align(torch.tensor(x), torch.tensor(boxes), 3,
                                         sampling_ratio=sr, aligned=aligned)
        np.testing.assert_allclose(out, want.numpy(), rtol=1e-12, atol=1e-12)


def test_roi_align_float32_close_to_torchvision():
    rng = np.random.default_rng(9)
    x = rng.standard_normal((1, 8, 25, 25)).astype(np.float32)
    boxes = _random_boxes(rng, 64, 1, lo=0, hi=100).astype(np.float32)
    out, _ = roi_align_forward(x, boxes, 7, spatial_scale=0.25, sampling_ratio=2)
    want = torchvision.ops.roi_align(torch.tensor(x), torch.tensor(boxes), 7,
                                     spatial_scale=0.25, sampling_ratio=2)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, want.numpy(), rtol=1e-5, atol=1e-5)


def test_level_mapper_matches_torchvision():
    from torchvision.ops.poolers import LevelMapper

    rng = np.random.default_rng(0)
    boxes = np.column_stack([rng.uniform(0, 50, (200, 2)), rng.uniform(51, 1500, (200, 2))])
    boxes = boxes[:, [0, 1, 2, 3]]
    # plus boxes whose sqrt(area) sits at or just around 112, 224, 448
    sides = np.array([111.99, 112.0, 112.01, 223.99, 224.0, 224.01, 447.99, 448.0, 448.01])
    boxes = np.concatenate([boxes, np.column_stack([np.zeros((9, 2)), sides, sides])])
    mapper = LevelMapper(2, 5)
    for dtype in (np.float64, np.float32):
        b = boxes.astype(dtype)
        want = mapper([torch.tensor(b)]).numpy() + 2
        np.testing.assert_array_equal(level_mapper(b), want)


def test_multiscale_roi_align_matches_torchvision():
    rng = np.random.default_rng(1)
    image = 512
    scales = (1 / 4, 1 / 8, 1 / 16, 1 / 32)
    feats = [rng.standard_normal((2, 3, int(image * s), int(image * s))) for s in scales]
    per_image = []
    for _ in range(2):
        x1y1 = rng.uniform(0, 30, (12, 2))
        side = np.array([20.3, 60.7, 100.1, 130.9, 180.2, 230.7, 300.3, 400.9, 460.1, 470.7,
                         210.3, 445.9])  # levels 2 .. 5
        wh = side[:, None] * rng.uniform(0.9, 1.1, (12, 2))
        per_image.append(np.column_stack([x1y1, x1y1 + wh]))
    boxes = np.concatenate([np.column_stack([np.full(len(b), i), b])
                            for i, b in enumerate(per_image)])
    out, cache = multiscale_roi_align_forward(feats, boxes, 7, scales=scales, sampling_ratio=2)

    pooler = torchvision.ops.MultiScaleRoIAlign(["0", "1", "2", "3"], 7, 2)
    ft = OrderedDict((str(i), torch.tensor(f, requires_grad=True)) for i, f in enumerate(feats))
    ot = pooler(ft, [torch.tensor(b) for b in per_image], [(image, image)] * 2)
    np.testing.assert_allclose(out, ot.detach().numpy(), rtol=1e-12, atol=1e-12)
    assert len(set(cache.levels.tolist())) == 4
    dout = rng.standard_normal(out.shape)
    ot.backward(torch.tensor(dout))
    for g, t in zip(multiscale_roi_align_backward(dout, cache), ft.values()):
        np.testing.assert_allclose(g, t.grad.numpy(), rtol=1e-12, atol=1e-12)


def test_roi_pool_naive_matches_torchvision():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, 3, 9, 11))
    boxes = _random_boxes(rng, 40, 2, lo=-5, hi=30)
    boxes[:6, 1:] = np.round(boxes[:6, 1:] * 2) / 2  # halves: C's round, away from zero
    for scale in (1.0, 0.5):
        want = torchvision.ops.roi_pool(torch.tensor(x), torch.tensor(boxes), (3, 2),
                                        spatial_scale=scale)
        np.testing.assert_array_equal(roi_pool_naive(x, boxes, (3, 2), spatial_scale=scale),
                                      want.numpy())


def test_mask_target_shapes_match_torchvision():
    # one channel, big boxes, adaptive sampling: the separable form is picked
    rng = np.random.default_rng(5)
    masks = (rng.random((5, 1, 120, 130)) > 0.5).astype(np.float64)
    xy = rng.uniform(-10, 60, (30, 2))
    boxes = np.column_stack([rng.integers(0, 5, 30), xy, xy + rng.uniform(20, 90, (30, 2))])
    out, cache = roi_align_forward(masks, boxes, 28, sampling_ratio=-1)
    assert cache.separable is not None
    mt = torch.tensor(masks, requires_grad=True)
    want = torchvision.ops.roi_align(mt, torch.tensor(boxes), 28, 1.0, -1)
    np.testing.assert_allclose(out, want.detach().numpy(), rtol=1e-12, atol=1e-12)
    dout = rng.standard_normal(out.shape)
    want.backward(torch.tensor(dout))
    np.testing.assert_allclose(roi_align_backward(dout, cache), mt.grad.numpy(),
                               rtol=1e-12, atol=1e-12)
