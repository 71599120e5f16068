"""Tests for mrcnn_np.anchors: hand-computed anchors and counts, grid properties."""
import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from mrcnn_np.anchors import (
    anchor_counts,
    base_anchors,
    feature_grid_sizes,
    grid_anchors,
    matterport_pyramid_anchors,
    num_anchors,
    pyramid_anchors,
    torchvision_resized_size,
)


# ----------------------------------------------------------------- golden values
def test_base_anchors_size_32():
    # r = 0.5: h_ratio = sqrt(.5) = .7071, w_ratio = 1.4142
    #   ws = 45.25, hs = 22.63 -> halves 22.63, 11.31 -> round -> 23, 11   (wide box)
    # r = 1:   32 / 2 = 16
    # r = 2:   ws = 22.63, hs = 45.25 -> 11, 23                           (tall box)
    out = base_anchors((32,), (0.5, 1.0, 2.0))
    assert out.dtype == np.float32 and out.shape == (3, 4)
    np.testing.assert_array_equal(out, [[-23, -11, 23, 11], [-16, -16, 16, 16], [-11, -23, 11, 23]])


def test_base_anchors_other_sizes_and_rounding():
    # size 64, r = .5: ws / 2 = 64 * 1.4142 / 2 = 45.25 -> 45; hs / 2 = 64 * .7071 / 2 = 22.63 -> 23
    np.testing.assert_array_equal(base_anchors((64,), (0.5,)), [[-45, -23, 45, 23]])
    # half-way values round to even as torch.round: 3 / 2 = 1.5 -> 2, 5 / 2 = 2.5 -> 2, 7 / 2 = 3.5 -> 4
    np.testing.assert_array_equal(base_anchors((3, 5, 7), (1.0,)),
                                  [[-2, -2, 2, 2], [-2, -2, 2, 2], [-4, -4, 4, 4]])
    # ratio-major order: (r0 s0, r0 s1, r1 s0, r1 s1)
    out = base_anchors((32, 64), (1.0, 4.0))
    # r = 4: h_ratio 2, w_ratio .5 -> size 32: ws/2 = 8, hs/2 = 32 ; size 64: 16, 64
    np.testing.assert_array_equal(out, [[-16, -16, 16, 16], [-32, -32, 32, 32],
                                        [-8, -32, 8, 32], [-16, -64, 16, 64]])
    assert base_anchors((32,), (1.0,), dtype=np.float64).dtype == np.float64


def test_grid_anchors_golden_order():
    base = np.asarray([[-1, -2, 1, 2], [-3, -3, 3, 3]], np.float32)
    out = grid_anchors(base, (2, 3), (10, 5))  # h=2, w=3, stride_h=10, stride_w=5
    assert out.shape == (2 * 3 * 2, 4) and out.dtype == np.float32
    # location (i=1, j=2) -> shift (x, y) = (2 * 5, 1 * 10) = (10, 10); its anchors are rows
    # (1 * 3 + 2) * 2 + a = 10, 11
    np.testing.assert_array_equal(out[10], [9, 8, 11, 12])
    np.testing.assert_array_equal(out[11], [7, 7, 13, 13])
    # location (0, 1) -> shift (5, 0): rows 2, 3
    np.testing.assert_array_equal(out[2], [4, -2, 6, 2])


def test_counts_1024_p2_p6():
    # grids 1024 / 4, 8, 16, 32, 64 = 256, 128, 64, 32, 16
    # 256^2 + 128^2 + 64^2 + 32^2 + 16^2 = 65536 + 16384 + 4096 + 1024 + 256 = 87296
    # x 3 ratios = 261,888 anchors
    grids = feature_grid_sizes((1024, 1024))
    assert grids == [(256, 256), (128, 128), (64, 64), (32, 32), (16, 16)]
    assert anchor_counts(grids) == [196608, 49152, 12288, 3072, 768]
    assert num_anchors((1024, 1024)) == 261888
    levels = pyramid_anchors((1024, 1024), grids)
    assert sum(a.shape[0] for a in levels) == 261888


def test_counts_torchvision_800():
    # torchvision: short side 800, long side <= 1333: scale = min(800/1024, 1333/1024) = .78125
    # -> 1024 * .78125 = 800 exactly; 800 is a multiple of 32, no padding.
    assert torchvision_resized_size((1024, 1024)) == (800, 800)
    # grids: ceil(800 / 4, 8, 16, 32) = 200, 100, 50, 25; P6 = ceil(25 / 2) = 13
    grids = feature_grid_sizes((800, 800), size_divisible=32)
    assert grids == [(200, 200), (100, 100), (50, 50), (25, 25), (13, 13)]
    # 200^2 + 100^2 + 50^2 + 25^2 + 13^2 = 40000 + 10000 + 2500 + 625 + 169 = 53294; x 3 = 159,882
    assert sum(anchor_counts(grids)) == 159882
    levels = pyramid_anchors((800, 800), grids)
    assert [a.shape[0] for a in levels] == [120000, 30000, 7500, 1875, 507]
    # P6 stride is 800 // 13 = 61 (13 * 61 = 793 <= 800 < 806 = 13 * 62), not 64:
    # the second location of P6 is shifted by 61 px from the first
    p6 = levels[4]
    np.testing.assert_array_equal(p6[3] - p6[0], [61, 0, 61, 0])
    np.testing.assert_array_equal(p6[13 * 3] - p6[0], [0, 61, 0, 61])  # next row


def test_resize_and_padding_examples():
    # 480 x 640: scale = min(800/480, 1333/640) = 1.6667 -> 800 x floor(1066.67) = 1066
    assert torchvision_resized_size((480, 640)) == (800, 1066)
    # long side capped: 500 x 2000: min(1.6, .6665) -> 333 x 1333
    assert torchvision_resized_size((500, 2000)) == (333, 1333)
    # 800 x 1066 pads to 800 x 1088 (34 * 32): P2 200 x 272
    assert feature_grid_sizes((800, 1066), size_divisible=32)[0] == (200, 272)
    # unpadded odd size: ceil(1066 / 64) = 17
    assert feature_grid_sizes((800, 1066))[4] == (13, 17)


def test_matterport_variant():
    levels = matterport_pyramid_anchors((1024, 1024))
    assert sum(a.shape[0] for a in levels) == 261888
    # matterport ratio = w / h: r = .5 gives w = 32 * sqrt(.5) = 22.63, h = 32 / sqrt(.5) = 45.25,
    # a TALL box, centred on (0, 0), not rounded
    s = math.sqrt(0.5)
    np.testing.assert_allclose(levels[0][0], [-16 * s, -16 / s, 16 * s, 16 / s], rtol=1e-15)
    np.testing.assert_allclose(levels[0][2], [-16 / s, -16 * s, 16 / s, 16 * s], rtol=1e-15)
    # second location of P2 is one stride (4 px) to the right
    np.testing.assert_allclose(levels[0][3] - levels[0][0], [4, 0, 4, 0])
    # the same shapes as torchvision's, in reverse ratio order, up to torchvision's rounding
    tv = base_anchors((32,), (0.5, 1.0, 2.0), dtype=np.float64)
    assert np.abs(tv[::-1] - levels[0][:3]).max() <= 0.5


# ----------------------------------------------------------------- properties
sizes = st.floats(4, 600)
ratios = st.floats(0.2, 5)


@given(size=sizes, ratio=ratios)
def test_anchor_area_is_size_squared(size, ratio):
    a = base_anchors((size,), (ratio,), dtype=np.float64)[0]
    w, h = a[2] - a[0], a[3] - a[1]
    # before rounding w = size / sqrt(r), h = size * sqrt(r), w * h = size^2 and h / w = r;
    # each half-side moves by <= .5 so w and h by <= 1
    ws, hs = size / math.sqrt(ratio), size * math.sqrt(ratio)
    assert abs(w - ws) <= 1 + 1e-9 and abs(h - hs) <= 1 + 1e-9
    assert abs(w * h - size**2) <= ws + hs + 1
    # zero-centred, symmetric
    assert a[0] == -a[2] and a[1] == -a[3]


@given(gh=st.integers(1, 9), gw=st.integers(1, 9), sh=st.integers(1, 40), sw=st.integers(1, 40),
       n_sizes=st.integers(1, 2))
def test_centres_on_grid(gh, gw, sh, sw, n_sizes):
    base = base_anchors((32, 48)[:n_sizes], (0.5, 1.0, 2.0))
    A = base.shape[0]
    out = grid_anchors(base, (gh, gw), (sh, sw)).reshape(gh, gw, A, 4)
    cx = (out[..., 0] + out[..., 2]) / 2
    cy = (out[..., 1] + out[..., 3]) / 2
    # base anchors are centred on 0, so every anchor's centre is its cell's (j * sw, i * sh)
    np.testing.assert_array_equal(cx, np.broadcast_to(np.arange(gw)[None, :, None] * sw, cx.shape))
    np.testing.assert_array_equal(cy, np.broadcast_to(np.arange(gh)[:, None, None] * sh, cy.shape))
    # and each location holds the base anchors moved by its shift
    shift = np.stack(np.broadcast_arrays(np.arange(gw)[None, :] * sw, np.arange(gh)[:, None] * sh,
                                         np.arange(gw)[None, :] * sw, np.arange(gh)[:, None] * sh), -1)
    np.testing.assert_array_equal(out - shift[:, :, None, :], np.broadcast_to(base, out.shape))


@given(H=st.integers(32, 700), W=st.integers(32, 700))
def test_pyramid_strides_and_counts(H, W):
    grids = feature_grid_sizes((H, W), size_divisible=32)
    levels = pyramid_anchors((H, W), grids)
    assert [a.shape[0] for a in levels] == anchor_counts(grids)
    Hp, Wp = -(-H // 32) * 32, -(-W // 32) * 32
    for (gh, gw), s, a in zip(grids, (4, 8, 16, 32, 64), levels):
        assert gh == math.ceil(Hp / s) and gw == math.ceil(Wp / s)
        # shift between horizontally adjacent locations = W // gw (torchvision's stride)
        if gw > 1:
            np.testing.assert_array_equal(a[3] - a[0], [W // gw, 0, W // gw, 0])


# ----------------------------------------------------------------- bad input
def test_bad_input():
    with pytest.raises(ValueError, match="sizes"):
        base_anchors((-32,), (1.0,))
    with pytest.raises(ValueError, match="aspect_ratios"):
        base_anchors((32,), ())
    with pytest.raises(TypeError, match="dtype"):
        base_anchors((32,), (1.0,), dtype=np.int32)
    with pytest.raises(ValueError, match="base"):
        grid_anchors(np.zeros((3, 5), np.float32), (2, 2), (4, 4))
    with pytest.raises(ValueError, match="grid_size"):
        grid_anchors(np.zeros((3, 4), np.float32), (2,), (4, 4))
    with pytest.raises(ValueError, match="stride"):
        grid_anchors(np.zeros((3, 4), np.float32), (2, 2), (0, 4))
    with pytest.raises(ValueError, match="sizes"):
        pyramid_anchors((64, 64), [(16, 16), (8, 8)])
    with pytest.raises(ValueError, match="image_size"):
        feature_grid_sizes((64,))
    with pytest.raises(ValueError, match="num_anchors_per_location"):
        anchor_counts([(2, 2)], (3, 3))
    with pytest.raises(TypeError, match="size_divisible"):
        feature_grid_sizes((64, 64), size_divisible=2.5)
    with pytest.raises(ValueError, match="size_divisible"):
        feature_grid_sizes((64, 64), size_divisible=0)
    with pytest.raises(ValueError, match="min_size"):
        torchvision_resized_size((64, 64), min_size=0)
    with pytest.raises(TypeError, match="max_size"):
        torchvision_resized_size((64, 64), max_size=None)
