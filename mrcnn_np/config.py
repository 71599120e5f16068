"""Hyper-parameters of a Mask R-CNN: one frozen dataclass and three presets.

``MaskRCNNConfig`` holds every number the model (``mrcnn_np.model``) and the
input pipeline (resize, normalise, batch) need, flat, with the names of
torchvision's ``MaskRCNN`` / ``FasterRCNN`` constructor arguments where one
exists (``rpn_pre_nms_top_n_train``, ``box_score_thresh``, ...). It is
validated when built: a bad value raises ``ValueError`` (``TypeError`` for a
wrong type) naming the field.

Presets:

* :func:`torchvision_config` -- exactly ``maskrcnn_resnet50_fpn`` (v1):
  ResNet-50, 256-channel FPN, 1024-wide box head, 4 x 256 mask head, 800/1333
  resize, the RPN and RoI numbers of the reference;
* :func:`shapes_config` -- a tiny model for the synthetic shapes dataset
  (``mrcnn_np.data.shapes``: 128 x 128 images, 3 classes, objects 15..64 px),
  small enough that a training step on 4 images takes a fraction of a second
  in NumPy;
* :func:`own_data_config` -- a small model for your own COCO-format data
  (256 / 384 resize, ResNet-18-sized backbone from scratch or torchvision's
  ResNet-50 body for ImageNet weights) that trains on a CPU in minutes;
* :func:`matterport_config` -- matterport Mask_RCNN's defaults, as far as the
  torchvision-semantics model can express them (see its docstring for what it
  cannot).

Derived values: ``num_anchors_per_location`` (A), ``backbone_out_channels``.
A config is immutable; derive a variant with ``dataclasses.replace(cfg, ...)``
(it is validated again).
"""
from __future__ import annotations

import dataclasses
import numbers
from dataclasses import dataclass

from ._checks import check_bool, check_float, check_positive_int
from .transform import IMAGE_MEAN, IMAGE_STD

__all__ = [
    "MaskRCNNConfig",
    "torchvision_config",
    "shapes_config",
    "shapes_recipe",
    "own_data_config",
    "own_data_recipe",
    "matterport_config",
]

_NUM_LEVELS = 5  # P2..P6 feed the RPN; P2..P5 the RoI heads


def _positive(name, value):
    """A real number > 0 (sizes, ratios, weights, standard deviations)."""
    value = check_float(name, value)
    if value <= 0:
        raise ValueError(f"{name} must be > 0, got {value}")
    return value


def _seq(name, value, length=None):
    if isinstance(value, (str, bytes)) or not isinstance(value, (tuple, list)):
        raise TypeError(f"{name} must be a tuple, got {type(value).__name__}")
    if length is not None and len(value) != length:
        raise ValueError(f"{name} must have {length} entries, got {len(value)}: {tuple(value)!r}")
    if len(value) == 0:
        raise ValueError(f"{name} must not be empty")
    return tuple(value)


@dataclass(frozen=True)
class MaskRCNNConfig:
    """Every hyper-parameter of a Mask R-CNN (defaults: torchvision ``maskrcnn_resnet50_fpn`` v1).

    Model:
      num_classes: K+1, background included (91 for COCO, 4 for shapes).
      backbone_layers: bottleneck blocks in layer1..layer4 ((3, 4, 6, 3) = ResNet-50).
      backbone_width: stem channels; stage s has ``width * 2**(s-1)`` inner and
          4x that output channels (64 -> C2..C5 = 256, 512, 1024, 2048).
      fpn_channels: D, channels of every pyramid level (256).
      trainable_layers: how many of (conv1, layer1, ..., layer4), counted from
          the top, get gradients (3 in the reference, whose backbone is
          pretrained; 5 = all). FPN and heads are always trained; frozen BN never.
      anchor_sizes: one tuple of sizes per level P2..P6 (pixels, side of the
          square anchor), ((32,), (64,), (128,), (256,), (512,)).
      aspect_ratios: one tuple of h/w ratios per level, (0.5, 1.0, 2.0) each.
          Every level must have the same number of anchors A per location
          (the RPN head is shared).
    RPN:
      rpn_pre_nms_top_n_train / _test: proposals kept per level before NMS (2000 / 1000).
      rpn_post_nms_top_n_train / _test: kept per image after NMS (2000 / 1000).
      rpn_nms_thresh: IoU of the per-level NMS (0.7).
      rpn_fg_iou_thresh / rpn_bg_iou_thresh: anchor positive at IoU >= 0.7,
          negative below 0.3, ignored between.
      rpn_batch_size_per_image, rpn_positive_fraction: anchors sampled per
          image for the loss (256), at most this share positive (0.5).
      rpn_score_thresh: proposals below this objectness probability are dropped (0.0; in [0, 1]).
    RoI heads:
      box_fg_iou_thresh / box_bg_iou_thresh: RoI foreground at IoU >= 0.5,
          background below 0.5.
      box_batch_size_per_image, box_positive_fraction: RoIs sampled per image
          (512), at most 25 % foreground.
      box_score_thresh, box_nms_thresh, box_detections_per_img: inference
          post-processing (0.05, per-class NMS 0.5, top 100; thresholds in
          [0, 1], at least one detection per image).
      bbox_reg_weights: box coder weights of the heads (10, 10, 5, 5).
      box_roi_output_size, box_roi_sampling_ratio: RoIAlign of the box head (7, 2).
      mask_roi_output_size, mask_roi_sampling_ratio: RoIAlign of the mask head (14, 2).
      representation_size: width of fc6 and fc7 (1024).
      mask_layers: output channels of the 3x3 convs of the mask head (4 x 256).
      mask_dim_reduced: channels of the 2x2 transposed conv (256).
    Input pipeline (not read by ``model.py``; the transform uses them):
      min_size, max_size: resize so the short side is min_size and the long
          side at most max_size (800, 1333).
      image_mean, image_std: per-channel normalisation of [0, 1] images.
      size_divisible: the batch is zero-padded to a multiple of this (32).
    """

    num_classes: int = 91
    # backbone
    backbone_layers: tuple = (3, 4, 6, 3)
    backbone_width: int = 64
    fpn_channels: int = 256
    trainable_layers: int = 3
    # anchors
    anchor_sizes: tuple = ((32,), (64,), (128,), (256,), (512,))
    aspect_ratios: tuple = ((0.5, 1.0, 2.0),) * 5
    # RPN
    rpn_pre_nms_top_n_train: int = 2000
    rpn_pre_nms_top_n_test: int = 1000
    rpn_post_nms_top_n_train: int = 2000
    rpn_post_nms_top_n_test: int = 1000
    rpn_nms_thresh: float = 0.7
    rpn_fg_iou_thresh: float = 0.7
    rpn_bg_iou_thresh: float = 0.3
    rpn_batch_size_per_image: int = 256
    rpn_positive_fraction: float = 0.5
    rpn_score_thresh: float = 0.0
    # RoI heads
    box_fg_iou_thresh: float = 0.5
    box_bg_iou_thresh: float = 0.5
    box_batch_size_per_image: int = 512
    box_positive_fraction: float = 0.25
    box_score_thresh: float = 0.05
    box_nms_thresh: float = 0.5
    box_detections_per_img: int = 100
    bbox_reg_weights: tuple = (10.0, 10.0, 5.0, 5.0)
    box_roi_output_size: int = 7
    box_roi_sampling_ratio: int = 2
    mask_roi_output_size: int = 14
    mask_roi_sampling_ratio: int = 2
    representation_size: int = 1024
    mask_layers: tuple = (256, 256, 256, 256)
    mask_dim_reduced: int = 256
    # input pipeline (transform)
    min_size: int = 800
    max_size: int = 1333
    image_mean: tuple = IMAGE_MEAN
    image_std: tuple = IMAGE_STD
    size_divisible: int = 32

    def __post_init__(self):
        def put(name, value):
            object.__setattr__(self, name, value)

        put("num_classes", check_positive_int("num_classes", self.num_classes, minimum=2))
        layers = _seq("backbone_layers", self.backbone_layers, 4)
        put("backbone_layers", tuple(check_positive_int("backbone_layers", v) for v in layers))
        for name in ("backbone_width", "fpn_channels", "rpn_pre_nms_top_n_train", "rpn_pre_nms_top_n_test",
                     "rpn_post_nms_top_n_train", "rpn_post_nms_top_n_test", "rpn_batch_size_per_image",
                     "box_batch_size_per_image", "box_roi_output_size", "mask_roi_output_size",
                     "representation_size", "mask_dim_reduced", "min_size", "max_size", "size_divisible"):
            put(name, check_positive_int(name, getattr(self, name)))
        put("box_detections_per_img", check_positive_int("box_detections_per_img", self.box_detections_per_img))
        tl = check_positive_int("trainable_layers", self.trainable_layers, minimum=0)
        if tl > 5:
            raise ValueError(f"trainable_layers must be in [0, 5], got {tl}")
        put("trainable_layers", tl)
        for name in ("box_roi_sampling_ratio", "mask_roi_sampling_ratio"):
            # torchvision: <= 0 means adaptive (ceil(roi / output) samples per bin)
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Integral):
                raise TypeError(f"{name} must be an int, got {type(value).__name__}")
            put(name, int(value))
        if self.max_size < self.min_size:
            raise ValueError(f"max_size must be >= min_size ({self.min_size}), got {self.max_size}")

        sizes = _seq("anchor_sizes", self.anchor_sizes, _NUM_LEVELS)
        ratios = _seq("aspect_ratios", self.aspect_ratios, _NUM_LEVELS)
        sizes = tuple(tuple(_positive("anchor_sizes", s)
                            for s in _seq("anchor_sizes", lvl)) for lvl in sizes)
        ratios = tuple(tuple(_positive("aspect_ratios", r)
                             for r in _seq("aspect_ratios", lvl)) for lvl in ratios)
        # keep ints as ints (anchor sizes are ints in torchvision)
        sizes = tuple(tuple(int(s) if float(s).is_integer() else s for s in lvl) for lvl in sizes)
        counts = {len(s) * len(r) for s, r in zip(sizes, ratios)}
        if len(counts) != 1:
            raise ValueError(
                "anchor_sizes and aspect_ratios must give the same number of anchors per location on "
                f"every level (the RPN head is shared), got {[len(s) * len(r) for s, r in zip(sizes, ratios)]}"
            )
        put("anchor_sizes", sizes)
        put("aspect_ratios", ratios)

        for name in ("rpn_nms_thresh", "rpn_fg_iou_thresh", "rpn_bg_iou_thresh", "rpn_positive_fraction",
                     "box_fg_iou_thresh", "box_bg_iou_thresh", "box_positive_fraction", "box_nms_thresh"):
            put(name, check_float(name, getattr(self, name), minimum=0.0, maximum=1.0))
        for name in ("rpn_score_thresh", "box_score_thresh"):  # thresholds on probabilities
            put(name, check_float(name, getattr(self, name), minimum=0.0, maximum=1.0))
        if self.rpn_bg_iou_thresh > self.rpn_fg_iou_thresh:
            raise ValueError(f"rpn_bg_iou_thresh must be <= rpn_fg_iou_thresh ({self.rpn_fg_iou_thresh}), "
                             f"got {self.rpn_bg_iou_thresh}")
        if self.box_bg_iou_thresh > self.box_fg_iou_thresh:
            raise ValueError(f"box_bg_iou_thresh must be <= box_fg_iou_thresh ({self.box_fg_iou_thresh}), "
                             f"got {self.box_bg_iou_thresh}")
        w = _seq("bbox_reg_weights", self.bbox_reg_weights, 4)
        put("bbox_reg_weights", tuple(_positive("bbox_reg_weights", v) for v in w))
        ml = _seq("mask_layers", self.mask_layers)
        put("mask_layers", tuple(check_positive_int("mask_layers", v) for v in ml))
        mean = _seq("image_mean", self.image_mean, 3)
        put("image_mean", tuple(check_float("image_mean", v) for v in mean))
        std = _seq("image_std", self.image_std, 3)
        put("image_std", tuple(_positive("image_std", v) for v in std))

    # ------------------------------------------------------------------ derived
    @property
    def num_anchors_per_location(self):
        """A: anchors per feature-map cell (sizes x ratios of one level)."""
        return len(self.anchor_sizes[0]) * len(self.aspect_ratios[0])

    @property
    def backbone_out_channels(self):
        """Channels of C2..C5: ``4 * width * 2**s`` for s = 0..3."""
        return tuple(4 * self.backbone_width * 2 ** s for s in range(4))

    def replace(self, **changes):
        """A copy with some fields changed (validated again); ``dataclasses.replace``."""
        return dataclasses.replace(self, **changes)


def torchvision_config(num_classes=91):
    """torchvision ``maskrcnn_resnet50_fpn`` (v1), every number as in the reference.

    num_classes: K+1 with background (91 for COCO's label ids).
    ResNet-50 body with the top 3 stages trained (the rest pretrained and
    frozen), 256-channel FPN, anchors 32..512 on P2..P6 with ratios 0.5/1/2,
    RPN 2000/2000 (train) and 1000/1000 (test) proposals, 512 RoIs at 25 %,
    box head 1024, mask head 4 x 256, images resized to 800/1333.
    """
    return MaskRCNNConfig(num_classes=num_classes)


def shapes_config(num_classes=4):
    """A tiny Mask R-CNN for the synthetic shapes dataset, trained from scratch.

    The data (``mrcnn_np.data.shapes``): 128 x 128 images, 1..4 objects of
    3 classes (+ background = 4), each 15..64 px wide (half-size 7.7..32),
    partly hidden by each other (at least 30 % of each stays visible).

    Why each number:

    * backbone (1, 1, 1, 1) blocks, width 8: C2..C5 have 32, 64, 128, 256
      channels. One bottleneck per stage keeps the four strides (4..32) and
      the FPN structure of the reference at ~1/100 of its depth x width.
      Width 16 and fpn_channels 64 were measured and gave nothing (ablation below).
    * trainable_layers 5: nothing is pretrained, so every stage learns.
    * fpn_channels 32 (the width every level, the RPN head and the RoI
      heads work at; 1/8 of the reference's 256).
    * anchor_sizes (16, 23), (32, 45), (64, 91), (128, 181), (256, 362) on
      P2..P6: 4x the stride of each level and that times sqrt(2), with ratios
      0.5/1/2 (A = 6 per location). Why: a positive anchor needs IoU >= 0.7,
      and a square anchor of side S whose centre is off by d in x and y has
      IoU ((S - d) / S)^2 / (2 - ((S - d) / S)^2) with a same-sized box; the
      grid puts the nearest centre up to stride / 2 away, so S must be about
      5x the stride for the worst case to pass 0.7, and sizes one octave
      apart leave every box in between below 0.7 (a 45 px object scores 0.50
      against a 32 and 0.49 against a 64). The old sizes 8..128 (2x the stride,
      one per octave) gave most objects no anchor above 0.7: only the "best
      anchor of each object" rule made positives, the RPN covered 49 % of the
      objects at IoU 0.7 (95 % with these anchors) and large objects were missed.
    * RPN: 8,184 anchors per image (6 x (32^2 + 16^2 + 8^2 + 4^2 + 2^2)); keep
      the 128 best per level before NMS and 128 after it, in training and at
      test -- images hold at most 4 objects, proposals are the RoI heads' cost,
      and the NMS of 256 per level cost 15 % of a training step for nothing
      (ablation). 128 anchors sampled per image (half may be positive).
    * RoI heads: a RoI is foreground at IoU >= 0.6 with an object and
      background below 0.6 (the reference: 0.5 / 0.5). The RPN covers 95 % of
      the objects at IoU 0.7, so there are enough such RoIs, and training the box
      head on better-aligned positives sharpens its boxes where COCO AP is lost,
      at IoU 0.75..0.95 (the Cascade R-CNN observation; +0.03 box AP, ablation).
      Ignoring 0.5..0.7 instead (fg 0.7 / bg 0.5) loses the near misses as
      negatives, and AP drops. 32 RoIs sampled per image (8 may be positive,
      2x the maximum number of objects: 64 RoIs cost 20 % more per step and
      learnt no more);
      box head fc width 128 (256 gave nothing); mask head four 3x3 convs of 32
      and a 32-channel transposed conv (two convs reach 0.01 less mask AP).
      RoIAlign sizes 7 and 14 as the reference (the mask target side 28 is
      tied to 14; a 14 x 14 box pooling gave nothing).
    * min_size = max_size = 128: no resize; size_divisible 32 (128 already is).
    * Inference post-processing as the reference (0.05, NMS 0.5, 100); a score
      threshold of 0.3 or a class NMS of 0.3 change AP by < 0.005 (measured).

    Ablation (one training run each, seed 0, SGD recipe of :func:`shapes_recipe`
    unless said; COCO AP on 100 held-out images of seed 10000; "RPN@0.7" the
    share of objects some proposal overlaps at IoU >= 0.7):

    ==========================================================  =====  ======  ======  =======
    change (from the row it names)                               steps  box AP  mask AP RPN@0.7
    ==========================================================  =====  ======  ======  =======
    A  old config: anchors 8..128, 256/256 RPN, 64 RoIs, 2 convs  1500   0.677   0.667   0.49
    B  A + anchors 4x stride, two per octave (A = 6)              1500   0.787   0.741   0.95
    B  + base_lr 0.04                                             1500   0.772   0.744   0.95
    B  + 20,000 training images (instead of 2,000)                1500   0.784   0.746   0.96
    B  + box head fc 256                                          1500   0.795   0.745   0.96
    B  + mask head 64 channels                                    1500   0.775   0.754   0.94
    B  + 3000 steps                                               3000   0.825   0.779   0.97
    C  B + RPN 128/128 in training, 32 RoIs (24 % less per step)  2000   0.793   0.755   0.94
    C  + 3000 steps                                               3000   0.816   0.770   0.95
    C  + two lr drops (70 %, 90 %)                                2000   0.787   0.755   0.96
    C  + batch 2, 4000 steps                                      4000   0.757   0.729   0.95
    C  + backbone width 16                                        3000   0.820   0.771   0.95
    C  + fpn_channels 64                                          3000   0.820   0.776   0.96
    C  + box RoIAlign 14 x 14                                     3000   0.803   0.762   0.95
    C  + AdamW (lr 1e-3 / 3e-3) instead of SGD                    1500   0.751   0.728   --
    D  C + mask head 4 convs (this config)                        3000   0.812   0.782   --
    D  + lr drop at 60 % instead of 80 %                          3000   0.801   0.766   --
    D  + RoI positive fraction 0.5 (instead of 0.25)              3000   0.802   0.779   --
    D  + both box-regression losses weighted 2x                   3000   0.797   0.774   --
    D  + train-mode BatchNorm in the ResNet (torchvision's norm   3000   0.785   0.782   --
         for a backbone without pretrained weights)
    D  trained by 2 workers (``shapes_recipe``'s ``workers``)      3000   0.814   0.791   --
    E  D, 2 workers, RoI foreground IoU >= 0.6, background < 0.6  3000   0.843   0.790   --
       (this config)
    E  with foreground >= 0.7, background < 0.5 instead           3000   0.802   0.771   --
    E  2900 steps (the demo until issue 13), seeds 0 / 1 / 2    2900   0.847   0.783   --
                                                                         0.784   0.752
                                                                         0.823   0.771
    E  3300 steps, seed 0                                         3300   0.852   0.803   --
    E  4000 steps, seeds 0 / 1 / 2                                4000   0.849   0.803   --
                                                                         0.803   0.766
                                                                         0.841   0.791
    E  10,000 steps (the shipped model, seed 0)                   10000  0.883   0.835   --
    ==========================================================  =====  ======  ======  =======

    Second ablation, a steadier protocol: the table above scores each run on
    100 held-out images, and the choice of those images alone moves AP by
    sd 0.016 (box) / 0.011 (mask) (the shipped model over ten sets of 100:
    0.840..0.895 / 0.805..0.834). Here every run is scored on the same 400
    held-out images (``ShapesDataset(400, seed=10000)``; the first 100 are the
    table's set), one process, 2,900 steps (the demo's then), seed 0 unless said;
    on this set the training seed moves AP by up to about 0.015 (seeds 0 / 1 of the
    same recipe: 0.824 / 0.822 box, 0.785 / 0.783 mask, but 0.837 / 0.820 for
    another):

    ================================================================  ======  =======
    change (from this config and recipe)                               box AP  mask AP
    ================================================================  ======  =======
    none (seed 0 / seed 1)                                             0.824   0.785
                                                                       0.822   0.783
    average of the weights (EMA 0.99 / 0.995 / 0.998), same run        0.828   0.781
                                                                       0.825   0.780
                                                                       0.821   0.781
    batch 8 for 1,450 steps (the same images), lr 0.02 / 0.04          0.801   0.759
                                                                       0.816   0.776
    cosine learning rate instead of the drop at 80 %                   0.824   0.779
    drop at 90 %                                                       0.822   0.781
    base_lr 0.01                                                       0.814   0.761
    RoI positive fraction 0.125 (a 25 % cheaper step)                  0.810   0.771
    mask head 16 channels                                              0.812   0.768
    loss_mask weighted 2x (seed 0 / seed 1) (``train(loss_weights=)``) 0.830   0.793
                                                                       0.816   0.784
    loss_mask weighted 3x                                              0.820   0.781
    RoI foreground / background IoU 0.7                                0.809   0.769
    RoI foreground / background IoU 0.65 (seed 0 / seed 1)             0.837   0.787
                                                                       0.820   0.769
    IoU 0.65 and loss_mask 2x (seed 0 / seed 1)                        0.833   0.784
                                                                       0.825   0.780
    4,500 steps                                                        0.839   0.804
    6,000 steps                                                        0.856   0.806
    10,000 steps (the shipped model)                                   0.870   0.825
    ================================================================  ======  =======

    Nothing there moves AP by more than the training seed does: at this size, what
    the model reaches is set by the number of steps and by the data it sees. What the
    first table says: the anchors were the cause of the missed objects; after them,
    capacity (width, fc, RoIAlign size) buys nothing, training steps buy ~0.03 AP
    per doubling, and what the box head is trained on (foreground at IoU 0.6) buys
    0.03 box AP. The rows before E come from a single process; a run with 2 workers
    draws other samples (each worker its own random stream), as a seed change does.

    Third ablation, the training images (:func:`shapes_recipe`'s ``train_objects``):
    two workers (the demo's way), scored on the same 500 held-out images
    (``ShapesDataset(500, seed=10000)``); the rows "the demo" are
    ``python -m mrcnn_np demo --seed S`` itself, which scores on the 500 images of
    seed S + 10000:

    ========================================  =====  =============  =============  =============
    shapes per training image                 steps  seed 0         seed 1         seed 2
    (the held-out images hold 1..4)                  box / mask     box / mask     box / mask
    ========================================  =====  =============  =============  =============
    1..4 (the old recipe)                      2900  0.821 / 0.780  0.813 / 0.775  0.823 / 0.779
    1..6                                       2900  0.823 / 0.781  --             --
    2..6                                       2900  0.831 / 0.785  0.826 / 0.799  0.837 / 0.793
    3..6 (this recipe)                         2900  0.836 / 0.793  0.836 / 0.790  --
    2..8                                       2900  0.830 / 0.788  --             --
    1..4, the demo                             2900  0.821 / 0.780  0.804 / 0.769  0.815 / 0.777
    1..4, the demo                             5000  0.848 / 0.797  --             --
    2..6, the demo                             4000  0.846 / 0.805  0.836 / 0.791  0.839 / 0.793
    3..6, the demo                             4400  0.856 / 0.809  0.848 / 0.802  0.846 / 0.809
    3..6, the demo (:func:`shapes_recipe`)     4200  0.853 / 0.808  0.843 / 0.806  0.844 / 0.802
    ========================================  =====  =============  =============  =============

    More shapes in a training image give each step more objects to learn from (more
    positive anchors and RoIs; the positive RoIs stay capped at 8 an image); 3..6 and
    2..6 are alike (3..6 a little ahead on box AP), 2..8 no better. Training took
    126-143 s for 2,900 steps with 1..4 or 2..6 shapes, 134-141 s with 3..6 and 154 s
    with 2..8 (on a busier machine); the demo took 170-192 s for 4,000 steps (2..6),
    192-237 s for 4,400 (3..6), 182-206 s for 4,200 (3..6), and 253 s for 5,000 (1..4).
    """
    return MaskRCNNConfig(
        num_classes=num_classes,
        backbone_layers=(1, 1, 1, 1),
        backbone_width=8,
        fpn_channels=32,
        trainable_layers=5,
        anchor_sizes=((16, 23), (32, 45), (64, 91), (128, 181), (256, 362)),
        aspect_ratios=((0.5, 1.0, 2.0),) * 5,
        rpn_pre_nms_top_n_train=128,
        rpn_pre_nms_top_n_test=128,
        rpn_post_nms_top_n_train=128,
        rpn_post_nms_top_n_test=128,
        rpn_batch_size_per_image=128,
        box_fg_iou_thresh=0.6,
        box_bg_iou_thresh=0.6,
        box_batch_size_per_image=32,
        representation_size=128,
        mask_layers=(32, 32, 32, 32),
        mask_dim_reduced=32,
        min_size=128,
        max_size=128,
    )


def shapes_recipe():
    """How ``python -m mrcnn_np demo`` trains :func:`shapes_config` (``train.train`` arguments).

    Returns a dict: steps, batch_size, base_lr, train_images (size of the synthetic
    training set), train_objects (the (min, max) number of shapes in a training image,
    ``ShapesDataset(min_objects=, max_objects=)``), warmup_iters (linear warm-up from
    1/1000 of base_lr), milestones (fractions of ``steps`` where the learning rate drops
    10x), weight_decay, workers (processes that share each batch,
    ``train.train(workers=...)``: 2, one per core of a 2-core machine; the result
    depends on it, as each worker samples from a random stream of its own, so it is
    part of the recipe).

    * train_objects (3, 6): the held-out images hold 1..4 shapes (the dataset's
      default); training images with more of them give the RPN and the RoI heads more
      objects, and so more positive anchors and RoIs, per step, for about 5 % more time
      a step. At 2,900 steps, 2..6 shapes bought about +0.015 box and mask AP on each of
      three seeds, and 3..6 a little more box AP (two seeds; third table of
      :func:`shapes_config`): more than any other change of the recipe.
    * steps 4,200: what fits in the demo's four minutes with some room. On the idle
      2-core build machine the same computation runs up to a fifth slower from one hour
      to the next: the demo's 4,400 steps with seed 0 trained in 192 s, and in 237 s
      (bit for bit the same model) half an hour later; seeds 1 / 2 took 202 / 226 s.
      4,200 steps took 206 s in the slower hour and reach 0.853 / 0.808 (seed 0),
      0.003 / 0.001 below 4,400 steps. Later steps cost more than the first ones (the RPN
      learns to find the objects and the RoI heads get more positives).

    See :func:`shapes_config` for the measured effect of each choice.
    """
    return {"steps": 4200, "batch_size": 4, "base_lr": 0.02, "train_images": 2000, "train_objects": (3, 6),
            "warmup_iters": 100, "milestones": (0.8,), "weight_decay": 1e-4, "workers": 2}


def own_data_config(num_classes, *, min_size=256, max_size=384, pretrained_backbone=False):
    """A Mask R-CNN for your own COCO-format data that trains on a CPU in minutes.

    num_classes: K+1, background included (``CocoData.num_classes``: one
        label per category of the json, whatever its ids).
    min_size, max_size: the resize rule (short side, long-side cap), 256 / 384.
    pretrained_backbone: False (default) for a small ResNet trained from
        scratch; True for the ResNet-50 body of torchvision's detector, to be
        filled from an ImageNet ``resnet50`` ``.pth`` (``pretrained.load_resnet_backbone``,
        ``train --backbone-weights``).

    Why each number (measured on the 2-core build machine, one thread, a
    training step on 2 images of 256 x 352):

    * min_size 256, max_size 384: a third of the reference's 800 / 1333, so
      about a ninth of its pixels. Objects that fill a good part of a photo
      (balloons, fruit, parts on a table) keep 30..250 px; small objects
      lose detail: raise both for them (cost grows with the pixel count).
    * backbone from scratch: (2, 2, 2, 2) bottleneck blocks of width 16, so
      C2..C5 have 64, 128, 256, 512 channels -- ResNet-18's depth and stage
      widths, ~1/20 of ResNet-50's multiply-adds; trainable_layers 5 (nothing
      is pretrained); 2.2 M parameters. A step takes 0.25 s, so the 1500
      steps of :func:`own_data_recipe` take minutes: on 200 exported shapes
      images (``export-shapes``, 128 px, resized to 256) they took 11 minutes
      on the 2 cores shared with another job and reached box AP 0.67, mask
      AP 0.71 on 50 held-out images. With
      ``pretrained_backbone``: ResNet-50 (3, 4, 6, 3) width 64 with the
      reference's trainable_layers 3 (conv1 and layer1 stay ImageNet's),
      25 M parameters, 0.9 s a step (about 25 minutes for 1500 steps; a few
      hundred are often enough): pretrained features carry the small
      datasets people label by hand.
    * fpn_channels 64 (a quarter of 256): the FPN, RPN head and RoI heads are
      always trained from scratch, and a few hundred images do not feed 256.
    * anchor_sizes 16, 32, 64, 128, 256 on P2..P6 (4x each level's stride):
      the reference's 32..512 were chosen for 800-px images; at 256-384 px the
      same objects are about a third as large. Ratios 0.5 / 1 / 2.
    * RPN: 1000 / 500 proposals per level before NMS (train / test) and 500 /
      300 after it (the reference's 2000 / 1000 for ~9x the pixels); 256
      anchors sampled per image, at most half positive, as the reference.
    * RoI heads: 128 RoIs per image at 25 % foreground (own datasets have a
      few objects per image; the reference's 512 serve COCO's ~7 on 2000
      proposals); box head fc width 256; mask head 4 convs of 64 and a
      64-channel transposed conv (the reference's structure at a quarter of
      its width); RoIAlign 7 / 14, 28 x 28 masks, inference 0.05 / 0.5 / 100
      as the reference.
    """
    common = dict(
        num_classes=num_classes,
        fpn_channels=64,
        anchor_sizes=((16,), (32,), (64,), (128,), (256,)),
        aspect_ratios=((0.5, 1.0, 2.0),) * 5,
        rpn_pre_nms_top_n_train=1000,
        rpn_pre_nms_top_n_test=500,
        rpn_post_nms_top_n_train=500,
        rpn_post_nms_top_n_test=300,
        box_batch_size_per_image=128,
        representation_size=256,
        mask_layers=(64, 64, 64, 64),
        mask_dim_reduced=64,
        min_size=min_size,
        max_size=max_size,
    )
    if check_bool("pretrained_backbone", pretrained_backbone):
        return MaskRCNNConfig(backbone_layers=(3, 4, 6, 3), backbone_width=64, trainable_layers=3, **common)
    return MaskRCNNConfig(backbone_layers=(2, 2, 2, 2), backbone_width=16, trainable_layers=5, **common)


def own_data_recipe(pretrained_backbone=False):
    """How ``python -m mrcnn_np train --coco`` trains :func:`own_data_config` (``train.train`` arguments).

    Returns a dict like :func:`shapes_recipe`'s plus hflip_prob:
    steps 1500, batch_size 2, warmup_iters 100 (from 1/1000 of base_lr),
    milestones (0.8,) (a 10x drop at 80 % of the steps), weight_decay 1e-4,
    hflip_prob 0.5 (torchvision's reference flips every training image with
    probability 0.5), workers 2 (one image per process and core). base_lr 0.01 from scratch: the shapes recipe's 0.02 per
    4 images, per image the same; 0.005 on a pretrained backbone (torchvision's
    fine-tuning tutorial: 0.005 for 2 images), whose features a large step
    would wreck. Two images a step: photos at 256 x 384 cost ~4x a shapes
    image, so 1500 steps stay in minutes.
    """
    return {"steps": 1500, "batch_size": 2, "base_lr": 0.005 if check_bool("pretrained_backbone", pretrained_backbone)
            else 0.01,
            "warmup_iters": 100, "milestones": (0.8,), "weight_decay": 1e-4, "hflip_prob": 0.5, "workers": 2}


def matterport_config(num_classes=81):
    """matterport Mask_RCNN's ``Config`` defaults, as far as this model can express them.

    num_classes: K+1 (81 for matterport's COCO: 80 classes + background).
    Taken over: ResNet-101 body ((3, 4, 23, 3) blocks), 256-channel FPN,
    anchor scales 32..512 on P2..P6 with ratios 0.5/1/2, RPN NMS 0.7,
    256 anchors per image at most half positive (``RPN_TRAIN_ANCHORS_PER_IMAGE``),
    2000 / 1000 proposals after NMS (``POST_NMS_ROIS_TRAINING / _INFERENCE``),
    200 RoIs per image at 33 % positive (``TRAIN_ROIS_PER_IMAGE``,
    ``ROI_POSITIVE_RATIO``), detections at confidence >= 0.7, NMS 0.3, top 100,
    box head 1024, mask head 4 x 256, box coder weights 10, 10, 5, 5
    (``1 / BBOX_STD_DEV``), short side 800 and long side at most 1024
    (``IMAGE_MIN_DIM = 800``, ``IMAGE_MAX_DIM = 1024``), padded to a multiple of
    64, every stage trained (trainable_layers 5, matterport's ``layers="all"``).

    Not expressible (the model keeps torchvision's semantics): matterport
    takes the top 6000 anchors over ALL levels before NMS (here per level,
    ``rpn_pre_nms_top_n_train = 6000``); its ratios mean width/height (the
    set 0.5/1/2 is the same, the order within a cell differs); it rounds in
    the FPN level mapper and samples RoIs with ``crop_and_resize`` (not
    RoIAlign); it scales the RPN's deltas by ``RPN_BBOX_STD_DEV`` (0.1, 0.1, 0.2,
    0.2), i.e. RPN coder weights 10, 10, 5, 5 where torchvision uses 1, 1, 1, 1;
    its "square" resize only enlarges (to a short side of 800, unless the long
    side would pass 1024) and pads every image to a 1024 x 1024 square, where
    this model scales every image to a short side of 800 and pads the batch to
    a multiple of 64. Its input is ``pixels_0_255 - MEAN_PIXEL``; with images in
    [0, 1] that is ``(x - MEAN_PIXEL / 255) / (1 / 255)``, hence image_std 1/255.
    """
    return MaskRCNNConfig(
        num_classes=num_classes,
        backbone_layers=(3, 4, 23, 3),
        trainable_layers=5,
        rpn_pre_nms_top_n_train=6000,
        rpn_pre_nms_top_n_test=6000,
        rpn_post_nms_top_n_train=2000,
        rpn_post_nms_top_n_test=1000,
        box_batch_size_per_image=200,
        box_positive_fraction=0.33,
        box_score_thresh=0.7,
        box_nms_thresh=0.3,
        box_detections_per_img=100,
        min_size=800,
        max_size=1024,
        image_mean=(123.7 / 255, 116.8 / 255, 103.9 / 255),
        image_std=(1.0 / 255, 1.0 / 255, 1.0 / 255),
        size_divisible=64,
    )
