"""Cross-check of mrcnn_np.model against torchvision's MaskRCNN, in float64.

A small torchvision MaskRCNN (ResNet bottlenecks (1, 1, 1, 1) of width 64 --
torchvision's ResNet fixes the stem at 64 --, a 16-channel FPN, small heads)
is built with the same hyper-parameters as our config, and OUR parameters
are loaded into it with ``load_state_dict(strict=True)``: no mapping table.
Its stages are driven as ``GeneralizedRCNN.forward`` drives them after the
transform (backbone -> rpn -> roi_heads on an ``ImageList``), so both sides
see the same normalised batch and ``image_sizes``.

* eval: detections (boxes, scores, labels, 28x28 mask probabilities) equal;
* train: the samplers cannot share random numbers, so their batch sizes are
  set above the candidate counts with positive_fraction 1: every anchor and
  every RoI is then sampled on both sides, and the five losses and the
  gradients of every parameter are compared.

Skipped unless torch and torchvision are installed (venv /work/tv):
    /work/tv/bin/python -m pytest tests/reference/test_model_torch.py
"""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")

from torchvision.models.detection import MaskRCNN  # noqa: E402
from torchvision.models.detection.anchor_utils import AnchorGenerator  # noqa: E402
from torchvision.models.detection.backbone_utils import BackboneWithFPN  # noqa: E402
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead  # noqa: E402
from torchvision.models.detection.image_list import ImageList  # noqa: E402
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor  # noqa: E402
from torchvision.models.resnet import Bottleneck, ResNet  # noqa: E402
from torchvision.ops.misc import FrozenBatchNorm2d  # noqa: E402

from mrcnn_np import model as M  # noqa: E402
from mrcnn_np.config import MaskRCNNConfig  # noqa: E402

# two batch sizes: 64x64 (every RoI pools from P2) and 224x224 with anchors up to 256 px
# (RoIs spread over P2..P5 by the level mapper; proposals reach the image border)
CASES = {
    64: dict(sizes=[(64, 64), (56, 60)], anchor_sizes=((8,), (16,), (32,), (48,), (64,)), gt=(12.3, 30.7)),
    224: dict(sizes=[(224, 224), (200, 210)], anchor_sizes=((16,), (32,), (64,), (128,), (256,)),
              gt=(20.3, 150.7)),
}


def small_config(size=64, **kw):
    args = dict(
        num_classes=3, backbone_layers=(1, 1, 1, 1), backbone_width=64, fpn_channels=16, trainable_layers=5,
        anchor_sizes=CASES[size]["anchor_sizes"],
        rpn_pre_nms_top_n_train=120, rpn_pre_nms_top_n_test=80,
        rpn_post_nms_top_n_train=150, rpn_post_nms_top_n_test=100,
        representation_size=32, mask_layers=(16, 16), mask_dim_reduced=12,
        min_size=size, max_size=size,
    )
    args.update(kw)
    return MaskRCNNConfig(**args)


def all_sampled(config):
    # 64x64 batch: (16^2 + 8^2 + 4^2 + 2^2 + 1) * 3 = 1023 anchors, 224x224: 12,543; RoIs <= 150 + GT
    return config.replace(rpn_batch_size_per_image=16384, rpn_positive_fraction=1.0,
                          box_batch_size_per_image=4096, box_positive_fraction=1.0)


def torch_model(config, params):
    body = ResNet(Bottleneck, list(config.backbone_layers), norm_layer=FrozenBatchNorm2d)
    backbone = BackboneWithFPN(body, {"layer1": "0", "layer2": "1", "layer3": "2", "layer4": "3"},
                               list(config.backbone_out_channels), config.fpn_channels)
    res = config.box_roi_output_size
    model = MaskRCNN(
        backbone, num_classes=None, min_size=config.min_size, max_size=config.max_size,
        image_mean=list(config.image_mean), image_std=list(config.image_std),
        rpn_anchor_generator=AnchorGenerator(config.anchor_sizes, config.aspect_ratios),
        rpn_pre_nms_top_n_train=config.rpn_pre_nms_top_n_train,
        rpn_pre_nms_top_n_test=config.rpn_pre_nms_top_n_test,
        rpn_post_nms_top_n_train=config.rpn_post_nms_top_n_train,
        rpn_post_nms_top_n_test=config.rpn_post_nms_top_n_test,
        rpn_nms_thresh=config.rpn_nms_thresh, rpn_fg_iou_thresh=config.rpn_fg_iou_thresh,
        rpn_bg_iou_thresh=config.rpn_bg_iou_thresh, rpn_batch_size_per_image=config.rpn_batch_size_per_image,
        rpn_positive_fraction=config.rpn_positive_fraction, rpn_score_thresh=config.rpn_score_thresh,
        box_head=TwoMLPHead(config.fpn_channels * res * res, config.representation_size),
        box_predictor=FastRCNNPredictor(config.representation_size, config.num_classes),
        box_score_thresh=config.box_score_thresh, box_nms_thresh=config.box_nms_thresh,
        box_detections_per_img=config.box_detections_per_img, box_fg_iou_thresh=config.box_fg_iou_thresh,
        box_bg_iou_thresh=config.box_bg_iou_thresh, box_batch_size_per_image=config.box_batch_size_per_image,
        box_positive_fraction=config.box_positive_fraction, bbox_reg_weights=config.bbox_reg_weights,
        mask_head=MaskRCNNHeads(config.fpn_channels, list(config.mask_layers), 1),
        mask_predictor=MaskRCNNPredictor(config.mask_layers[-1], config.mask_dim_reduced, config.num_classes),
    ).double()
    model.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in params.items()}, strict=True)
    return model


def our_params(config, seed=0):
    """init_params, with the frozen BN, the zero biases and the RPN logits made non-trivial."""
    rng = np.random.default_rng(seed)
    params = M.init_params(config, rng=rng, dtype=np.float64)
    for k, v in params.items():
        if k.endswith("running_var"):
            params[k] = rng.uniform(0.6, 1.6, v.shape)
        elif k.endswith("running_mean") or (k.endswith("bias") and not np.any(v)):
            params[k] = 0.1 * rng.standard_normal(v.shape)
        elif (".bn" in k or "downsample.1" in k) and k.endswith("weight"):
            params[k] = rng.uniform(0.7, 1.3, v.shape)
    params["rpn.head.cls_logits.weight"] = params["rpn.head.cls_logits.weight"] * 30
    params["rpn.head.bbox_pred.weight"] = params["rpn.head.bbox_pred.weight"] * 10
    return params


def batch(config, size, seed=1):
    rng = np.random.default_rng(seed)
    images = rng.standard_normal((2, 3, size, size))
    for i, (h, w) in enumerate(CASES[size]["sizes"]):  # zero padding outside the valid region, as a batch
        images[i, :, h:] = 0
        images[i, :, :, w:] = 0
    targets = []
    for (h, w), g in zip(CASES[size]["sizes"], (2, 3)):
        wh = rng.uniform(*CASES[size]["gt"], (g, 2))
        xy = rng.uniform(0.5, 1.0, (g, 2)) * (np.array([w, h]) - wh - 1)
        boxes = np.concatenate([xy, xy + wh], axis=1)
        yy, xx = np.mgrid[0:h, 0:w] + 0.5
        masks = np.stack([((xx - (b[0] + b[2]) / 2) / ((b[2] - b[0]) / 2)) ** 2
                          + ((yy - (b[1] + b[3]) / 2) / ((b[3] - b[1]) / 2)) ** 2 <= 1 for b in boxes])
        labels = rng.integers(1, config.num_classes, g).astype(np.int64)
        targets.append({"boxes": boxes, "labels": labels, "masks": masks.astype(np.uint8)})
    return images, targets


def torch_stages(model, images, image_sizes, targets=None):
    """GeneralizedRCNN.forward after the transform: backbone, rpn, roi_heads."""
    x = torch.from_numpy(images)
    image_list = ImageList(x, image_sizes)
    tt = None
    if targets is not None:
        tt = [{k: torch.from_numpy(v) for k, v in t.items()} for t in targets]
    features = model.backbone(x)
    proposals, rpn_losses = model.rpn(image_list, features, tt)
    detections, roi_losses = model.roi_heads(features, proposals, image_sizes, tt)
    return proposals, detections, {**roi_losses, **rpn_losses}


def test_state_dict_names_equal_ours():
    config = small_config()
    params = our_params(config)
    model = torch_model(config, params)
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == {k: v.shape for k, v in params.items()}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == set(M.trainable_keys(params, config))


@pytest.mark.parametrize("layers", [0, 3, 5])
def test_trainable_keys_equal_torchvision_requires_grad(layers):
    # torchvision's own rule (_resnet_fpn_extractor, which fixes the FPN at 256 channels)
    from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor

    body = ResNet(Bottleneck, [1, 1, 1, 1], norm_layer=FrozenBatchNorm2d)
    backbone = _resnet_fpn_extractor(body, layers)
    theirs = {"backbone." + n for n, p in backbone.named_parameters() if p.requires_grad}
    config = small_config(fpn_channels=256, trainable_layers=layers)
    params = M.init_params(config, rng=np.random.default_rng(0))
    ours = {k for k in M.trainable_keys(params, config) if k.startswith("backbone.")}
    assert ours == theirs


@pytest.mark.parametrize("size", sorted(CASES))
def test_predict_equals_torchvision_eval(size):
    config = small_config(size)
    params = our_params(config)
    images, _ = batch(config, size)
    sizes = CASES[size]["sizes"]
    model = torch_model(config, params).eval()
    with torch.no_grad():
        proposals, detections, _ = torch_stages(model, images, sizes)
    ours = M.predict(params, images, config, image_sizes=sizes)
    total = 0
    for o, t in zip(ours, detections):
        total += len(o["scores"])
        assert o["boxes"].shape == tuple(t["boxes"].shape)
        np.testing.assert_array_equal(o["labels"], t["labels"].numpy())
        np.testing.assert_allclose(o["scores"], t["scores"].numpy(), rtol=1e-10, atol=1e-13)
        np.testing.assert_allclose(o["boxes"], t["boxes"].numpy(), rtol=1e-10, atol=1e-9)
        np.testing.assert_allclose(o["masks"], t["masks"].numpy(), rtol=1e-9, atol=1e-12)
    assert total > 10


def _compare_grads(grads, model, tol):
    for n, p in model.named_parameters():
        tg = np.zeros(p.shape) if p.grad is None else p.grad.numpy()  # None: no path from these losses
        if not np.any(tg):
            assert not np.any(grads[n]), n
            continue
        err = np.abs(grads[n] - tg).max() / max(np.abs(tg).max(), 1e-12)
        assert err < tol, (n, err)


@pytest.mark.parametrize("size", sorted(CASES))
def test_training_losses_and_gradients_equal_torchvision_when_everything_is_sampled(size):
    config = all_sampled(small_config(size))
    params = our_params(config)
    images, targets = batch(config, size)
    sizes = CASES[size]["sizes"]
    model = torch_model(config, params).train()
    proposals, _, tlosses = torch_stages(model, images, sizes, targets)
    losses, cache = M.forward_train(params, images, targets, config, rng=np.random.default_rng(0),
                                    image_sizes=sizes)
    for p, tp in zip(cache.info["proposals"], proposals):
        np.testing.assert_allclose(p, tp.detach().numpy(), rtol=1e-10, atol=1e-9)
    assert set(losses) == set(tlosses)
    assert all(v > 0 for v in losses.values())
    if size == 224:  # box and mask RoIs pooled from more than one level
        assert len(np.unique(cache.box_pool.levels)) > 1 and len(np.unique(cache.mask_pool.levels)) > 1
    for k, v in losses.items():
        # torchvision's RPN labels are float32 (assign_targets_to_anchors), which drags
        # its BCE to float32 precision even in a float64 model
        rel = 1e-6 if k == "loss_objectness" else 1e-9
        assert v == pytest.approx(tlosses[k].item(), rel=rel, abs=1e-14), k
    # four losses in float64 on both sides: tight
    sum(v for k, v in tlosses.items() if k != "loss_objectness").backward(retain_graph=True)
    grads = M.backward(cache, loss_weights={"loss_objectness": 0.0})
    assert set(grads) == {n for n, _ in model.named_parameters()}
    _compare_grads(grads, model, 1e-8)
    # the objectness loss alone, at torchvision's float32 precision
    model.zero_grad()
    tlosses["loss_objectness"].backward()
    grads = M.backward(cache, loss_weights={k: float(k == "loss_objectness") for k in M.LOSS_NAMES})
    _compare_grads(grads, model, 1e-5)


@pytest.mark.parametrize("layers", [1, 3])
def test_gradients_with_frozen_stages_equal_torchvision(layers):
    """trainable_layers < 5 (the reference trains 3): the same keys get gradients, and equal ones."""
    config = all_sampled(small_config(64, trainable_layers=layers))
    params = our_params(config)
    images, targets = batch(config, 64)
    sizes = CASES[64]["sizes"]
    model = torch_model(config, params).train()
    frozen = ["layer4", "layer3", "layer2", "layer1", "conv1"][layers:]
    for n, p in model.backbone.body.named_parameters():
        if any(n.startswith(f) for f in frozen):
            p.requires_grad_(False)
    _, _, tlosses = torch_stages(model, images, sizes, targets)
    sum(v for k, v in tlosses.items() if k != "loss_objectness").backward()
    _, grads = M.loss_and_grads(params, images, targets, config, rng=np.random.default_rng(0),
                                image_sizes=sizes, loss_weights={"loss_objectness": 0.0})
    assert set(grads) == {n for n, p in model.named_parameters() if p.requires_grad}
    for n, p in model.named_parameters():
        if p.requires_grad:  # grad None: no path from these losses (cls_logits without objectness)
            tg = np.zeros(tuple(p.shape)) if p.grad is None else p.grad.numpy()
            assert np.abs(grads[n] - tg).max() <= 1e-8 * max(np.abs(tg).max(), 1e-12), n


def test_loss_weights_equal_a_weighted_torch_sum():
    config = all_sampled(small_config())
    params = our_params(config)
    images, targets = batch(config, 64)
    sizes = CASES[64]["sizes"]
    model = torch_model(config, params).train()
    _, _, tlosses = torch_stages(model, images, sizes, targets)
    weights = {"loss_classifier": 0.5, "loss_box_reg": 2.0, "loss_mask": 1.5, "loss_objectness": 0.0,
               "loss_rpn_box_reg": 3.0}
    sum(weights[k] * v for k, v in tlosses.items()).backward()
    _, grads = M.loss_and_grads(params, images, targets, config, rng=np.random.default_rng(0),
                                image_sizes=sizes, loss_weights=weights)
    _compare_grads(grads, model, 1e-8)


def test_torchvision_preset_equals_maskrcnn_resnet50_fpn():
    """Every number of torchvision_config() read back from the real model, and init_params'
    names and shapes equal its state_dict (91 classes, ResNet-50).

    Built as ``maskrcnn_resnet50_fpn`` builds it with a pretrained backbone (frozen BN,
    3 trainable stages); without weights the builder would switch to plain BatchNorm
    and train all 5 stages, which is not the reference, and weights need a download.
    """
    from torchvision.models import resnet50
    from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor

    from mrcnn_np.config import torchvision_config

    backbone = _resnet_fpn_extractor(resnet50(norm_layer=FrozenBatchNorm2d), 3)
    tv = MaskRCNN(backbone, num_classes=91)
    c = torchvision_config()
    rpn, heads, tr = tv.rpn, tv.roi_heads, tv.transform
    assert rpn._pre_nms_top_n == {"training": c.rpn_pre_nms_top_n_train, "testing": c.rpn_pre_nms_top_n_test}
    assert rpn._post_nms_top_n == {"training": c.rpn_post_nms_top_n_train, "testing": c.rpn_post_nms_top_n_test}
    assert (rpn.nms_thresh, rpn.score_thresh) == (c.rpn_nms_thresh, c.rpn_score_thresh)
    assert (rpn.proposal_matcher.high_threshold, rpn.proposal_matcher.low_threshold) == \
        (c.rpn_fg_iou_thresh, c.rpn_bg_iou_thresh)
    assert (rpn.fg_bg_sampler.batch_size_per_image, rpn.fg_bg_sampler.positive_fraction) == \
        (c.rpn_batch_size_per_image, c.rpn_positive_fraction)
    assert rpn.anchor_generator.sizes == c.anchor_sizes
    assert rpn.anchor_generator.aspect_ratios == c.aspect_ratios
    assert (heads.proposal_matcher.high_threshold, heads.proposal_matcher.low_threshold) == \
        (c.box_fg_iou_thresh, c.box_bg_iou_thresh)
    assert (heads.fg_bg_sampler.batch_size_per_image, heads.fg_bg_sampler.positive_fraction) == \
        (c.box_batch_size_per_image, c.box_positive_fraction)
    assert (heads.score_thresh, heads.nms_thresh, heads.detections_per_img) == \
        (c.box_score_thresh, c.box_nms_thresh, c.box_detections_per_img)
    assert tuple(heads.box_coder.weights) == c.bbox_reg_weights
    assert (heads.box_roi_pool.output_size, heads.box_roi_pool.sampling_ratio) == \
        ((c.box_roi_output_size,) * 2, c.box_roi_sampling_ratio)
    assert (heads.mask_roi_pool.output_size, heads.mask_roi_pool.sampling_ratio) == \
        ((c.mask_roi_output_size,) * 2, c.mask_roi_sampling_ratio)
    assert (tr.min_size, tr.max_size, tr.size_divisible) == ((c.min_size,), c.max_size, c.size_divisible)
    assert tuple(tr.image_mean) == c.image_mean and tuple(tr.image_std) == c.image_std
    trained = {n for n, p in tv.named_parameters() if p.requires_grad}
    params = M.init_params(c, rng=np.random.default_rng(0))
    assert {k: tuple(v.shape) for k, v in tv.state_dict().items()} == {k: v.shape for k, v in params.items()}
    assert set(M.trainable_keys(params, c)) == trained
