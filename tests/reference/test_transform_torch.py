"""Cross-check mrcnn_np.transform against torchvision's GeneralizedRCNNTransform.

float64 and float32, eval and train mode (``maskrcnn_resnet50_fpn`` has one
min_size, so train mode resizes the same way), landscape / portrait / square,
upscaled and downscaled images, with boxes and masks.

Skipped unless torch and torchvision are installed (venv /work/tv):
    /work/tv/bin/python -m pytest tests/reference/test_transform_torch.py
"""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")

from torchvision.models.detection.transform import GeneralizedRCNNTransform  # noqa: E402
from torchvision.models.detection.transform import resize_boxes as tv_resize_boxes  # noqa: E402

from mrcnn_np.transform import (  # noqa: E402
    IMAGE_MEAN,
    IMAGE_STD,
    batch_images,
    normalize_image,
    postprocess,
    resize_boxes,
    resize_image_and_target,
    transform_forward,
)

DTYPES = [np.float64, np.float32]
# (H, W): landscape, portrait, square; upscaled, downscaled, unchanged, the 799 floor case,
# the long-side-binds cases (500x300, 200x900)
SIZES = [(480, 640), (500, 300), (64, 64), (1100, 1400), (800, 1066), (97, 120), (200, 900), (37, 53)]


def _tv(min_size=800, max_size=1333, size_divisible=32, training=False):
    t = GeneralizedRCNNTransform(min_size, max_size, list(IMAGE_MEAN), list(IMAGE_STD),
                                 size_divisible=size_divisible)
    return t.train(training)


def _t(x):
    return torch.from_numpy(np.ascontiguousarray(x))


def _tol(dtype, max_side=64):
    """float64: tight. float32: torch evaluates the source coordinate
    ``(i + 0.5) * scale - 0.5`` with a fused multiply-add (one rounding), ops.resize
    with two; they can differ by one float32 ulp of the coordinate (spacing(640) =
    6.1e-5), which moves a bilinear weight by that much; times the largest jump
    between neighbouring normalized pixels (< 5) that bounds the difference."""
    if dtype == np.float64:
        return dict(rtol=1e-12, atol=1e-12)
    return dict(rtol=0, atol=5 * float(np.spacing(np.float32(max_side))) + 2e-6)


def _sample(h, w, dtype, seed, n_obj=4):
    rng = np.random.default_rng(seed)
    image = rng.random((3, h, w)).astype(dtype)
    xy = rng.random((n_obj, 2)) * [w / 2, h / 2]
    boxes = np.concatenate([xy, xy + 1 + rng.random((n_obj, 2)) * [w / 2, h / 2]], axis=1).astype(dtype)
    masks = rng.random((n_obj, h, w)) > 0.6
    return image, {"boxes": boxes, "masks": masks, "labels": rng.integers(1, 91, n_obj)}


@pytest.mark.parametrize("dtype", DTYPES)
def test_normalize(dtype):
    img = np.random.default_rng(0).random((3, 17, 23)).astype(dtype)
    ref = _tv().normalize(_t(img)).numpy()
    np.testing.assert_array_equal(normalize_image(img), ref)


@pytest.mark.parametrize("training", [False, True])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("hw", SIZES)
def test_resize(hw, dtype, training):
    image, target = _sample(*hw, dtype, seed=hw[0] * 7 + hw[1])
    tv_target = {"boxes": _t(target["boxes"]), "masks": _t(target["masks"])}
    ref_img, ref_t = _tv(training=training).resize(_t(image), tv_target)
    out, t = resize_image_and_target(image, target)
    assert out.shape == tuple(ref_img.shape) and out.dtype == dtype
    np.testing.assert_allclose(out, ref_img.numpy(), **_tol(dtype, max(hw)))
    np.testing.assert_array_equal(t["boxes"], ref_t["boxes"].numpy())
    assert t["boxes"].dtype == ref_t["boxes"].numpy().dtype
    # torchvision returns uint8 masks; ours keep bool
    assert t["masks"].dtype == bool and ref_t["masks"].dtype == torch.uint8
    np.testing.assert_array_equal(t["masks"].astype(np.uint8), ref_t["masks"].numpy())


@pytest.mark.parametrize("min_size, max_size", [(600, 1000), (300, 301), (512, 2048), (1, 5)])
def test_resize_other_min_max(min_size, max_size):
    image, target = _sample(333, 250, np.float64, seed=min_size)
    ref_img, ref_t = _tv(min_size, max_size).resize(_t(image), {"boxes": _t(target["boxes"])})
    out, t = resize_image_and_target(image, {"boxes": target["boxes"]}, min_size=min_size, max_size=max_size)
    assert out.shape == tuple(ref_img.shape)
    np.testing.assert_allclose(out, ref_img.numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(t["boxes"], ref_t["boxes"].numpy())


@pytest.mark.parametrize("dtype", DTYPES)
def test_resize_boxes(dtype):
    boxes = np.random.default_rng(1).random((10, 4)).astype(dtype) * 500
    for orig, new in [((480, 640), (800, 1066)), ((500, 300), (1333, 799)), ((97, 120), (799, 989)),
                      ((800, 1066), (480, 640))]:
        ref = tv_resize_boxes(_t(boxes), list(orig), list(new)).numpy()
        np.testing.assert_array_equal(resize_boxes(boxes, orig, new), ref)


@pytest.mark.parametrize("size_divisible", [32, 1, 7])
@pytest.mark.parametrize("dtype", DTYPES)
def test_batch_images(dtype, size_divisible):
    rng = np.random.default_rng(2)
    images = [rng.random((3, h, w)).astype(dtype) for h, w in [(33, 40), (64, 65), (5, 100)]]
    ref = _tv().batch_images([_t(i) for i in images], size_divisible=size_divisible).numpy()
    np.testing.assert_array_equal(batch_images(images, size_divisible=size_divisible), ref)


@pytest.mark.parametrize("training", [False, True])
@pytest.mark.parametrize("dtype", DTYPES)
def test_forward(dtype, training):
    samples = [_sample(h, w, dtype, seed=i) for i, (h, w) in enumerate([(480, 640), (500, 300), (97, 120)])]
    images = [s[0] for s in samples]
    targets = [s[1] for s in samples]
    tv_targets = [{"boxes": _t(t["boxes"]), "masks": _t(t["masks"]), "labels": _t(t["labels"])}
                  for t in targets]
    tv = _tv(training=training)
    ref_list, ref_t = tv([_t(i) for i in images], tv_targets)
    batch, sizes, new_t = transform_forward(images, targets)
    assert sizes == [tuple(s) for s in ref_list.image_sizes]
    assert batch.shape == tuple(ref_list.tensors.shape)
    np.testing.assert_allclose(batch, ref_list.tensors.numpy(), **_tol(dtype, 640))
    for ours, ref in zip(new_t, ref_t):
        np.testing.assert_array_equal(ours["boxes"], ref["boxes"].numpy())
        np.testing.assert_array_equal(ours["masks"].astype(np.uint8), ref["masks"].numpy())
        np.testing.assert_array_equal(ours["labels"], ref["labels"].numpy())
    # no targets
    ref_list2, none = tv([_t(i) for i in images])
    batch2, sizes2, none2 = transform_forward(images)
    assert none is None and none2 is None and sizes2 == sizes
    np.testing.assert_array_equal(batch2, batch)


@pytest.mark.parametrize("dtype", DTYPES)
def test_postprocess(dtype):
    rng = np.random.default_rng(3)
    image_sizes = [(800, 1066), (1333, 799), (799, 989)]
    original = [(480, 640), (500, 300), (97, 120)]
    result = []
    for h, w in image_sizes:
        d = 6
        xy = rng.random((d, 2)) * [w * 0.7, h * 0.7]
        boxes = np.concatenate([xy, xy + 2 + rng.random((d, 2)) * [w * 0.3, h * 0.3]], axis=1)
        result.append({"boxes": boxes.astype(dtype), "scores": rng.random(d).astype(dtype),
                       "labels": rng.integers(1, 91, d),
                       "masks": rng.random((d, 1, 28, 28)).astype(dtype)})
    tv_result = [{k: _t(v) for k, v in r.items()} for r in result]
    ref = _tv().postprocess(tv_result, image_sizes, original)
    ours = postprocess(result, image_sizes, original)
    tol = dict(rtol=1e-12, atol=1e-13) if dtype == np.float64 else dict(rtol=1e-5, atol=3e-6)
    for o, r, hw in zip(ours, ref, original):
        np.testing.assert_array_equal(o["boxes"], r["boxes"].numpy())
        assert o["masks"].shape == tuple(r["masks"].shape) == (6, 1) + hw
        np.testing.assert_allclose(o["masks"], r["masks"].numpy(), **tol)
        np.testing.assert_array_equal(o["scores"], r["scores"].numpy())
    # train mode: torchvision returns the result untouched
    assert _tv(training=True).postprocess(tv_result, image_sizes, original) is tv_result
