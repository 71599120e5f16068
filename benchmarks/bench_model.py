"""Speed of the whole Mask R-CNN (mrcnn_np.model), float32, next to torchvision.

Times, in one process (best of ``--repeats`` / ``--predict-repeats`` /
``--train-repeats``: the machine is shared, so the minimum is the number that
means something):

1. ``shapes_config()`` on a batch of 4 images 128 x 128 from
   ``data.shapes.ShapesDataset``: ``model.forward_train``, ``model.backward``,
   one full training step (transform + ``loss_and_grads`` + gradient norm +
   ``train.sgd_step``, the body of ``train.train`` without the data
   rendering, which is timed on its own), ``model.predict`` on the
   transformed batch and ``model.detect`` on the raw images; ``forward_train``,
   ``backward`` and ``predict`` are broken down by stage (backbone + FPN; RPN
   head + anchors + proposals; RPN targets + loss; RoI sampling; box branch;
   mask branch; what is left: input checks and glue). The stages are timed
   INSIDE the library call: ``model.py`` calls them through its module
   globals, which are wrapped with a stopwatch for the duration of the call;
   then ``loss_and_grads`` (and torch's train-mode forward + backward) back to
   back, 10 calls in a row, the median call, best of ``--repeats`` blocks
   (:func:`back_to_back`): the step as the demo's loop runs it, warm, where the
   grouped timings start each group cold (a pause, then the other library's
   work: our forward then takes about 3 ms more);
2. ``torchvision_config()`` (ResNet-50-FPN, 91 classes, random ``init_params``
   weights, which give ~100 detections per image) on one normalised
   1 x 3 x 800 x 800 batch: ``model.predict`` with its stage breakdown and the
   backbone's share, and one training step (``forward_train`` + ``backward``,
   5 synthetic objects);
3. when torch and torchvision are importable, the same models in torch with
   OUR parameters loaded (``load_state_dict(strict=True)`` of
   ``torch.from_numpy`` copies: the names are torchvision's; the outputs
   of every part on the same input are compared and printed as a check), on the same
   inputs, ``torch.set_num_threads(2)``, timed the same way; driven as
   ``GeneralizedRCNN.forward`` drives its stages after the transform
   (backbone -> rpn -> roi_heads on an ``ImageList``), which is what
   ``model.predict`` / ``forward_train`` cover; ``detect`` is compared with
   the whole ``model([image])`` (transform and paste included).

   The 800 px model is ``maskrcnn_resnet50_fpn(weights=None,
   weights_backbone=None)``. Without weights that builder uses plain
   ``BatchNorm2d`` and trains all five stages, which is not the reference
   (pretrained backbone: ``FrozenBatchNorm2d``, 3 trainable stages) and whose
   train-mode BN would use batch statistics; so every ``BatchNorm2d`` is
   swapped for a ``FrozenBatchNorm2d`` (same buffers, no
   ``num_batches_tracked``) and conv1 / layer1 are frozen, as in the
   reference. The shapes model is built like ``tests/reference/test_model_torch.py``
   (torchvision's ``MaskRCNN`` from the config's numbers), its ResNet rebuilt
   at the config's width (torchvision's fixes the stem at 64 channels).

A float32 GEMM rate is printed first so runs on different machines can be
compared. NumPy's BLAS threads and torch's OpenMP threads keep spinning for a
while after a call and slow whatever runs next, so each repeat times one
library's tasks as a group, after a 0.2 s pause and an untimed wake-up GEMM
(as ``bench_conv.py``).

Run with the OpenBLAS overrides of the build machine removed, e.g.
``env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/bench_model.py``
(about 2-3 minutes on 2 cores with torch; ``--repeats 1`` for a quick look,
``--no-torch`` to skip torch, ``--no-800`` to time only the shapes model,
``--train-repeats 0`` to skip the 800 px training step). On a machine shared with
other work, two BLAS threads stall whenever one waits for a core and wall times
swing several-fold; ``OPENBLAS_NUM_THREADS=1 ... --cpu-time`` then compares one
thread each (torch too) by the process's CPU time, which that noise barely moves.

Each stage row also gives the GFLOP of its convolutions and linear layers and
their rate against the GEMM rate of the run (:func:`gemm_flops`).

Measured (issue 17: check hoisting, dense NMS, kernels, inference path), 2-core
build machine shared with training jobs, before / after / torchvision in one
process, one thread each, CPU time (float32 GEMM 160 GFLOP/s on one thread):

    shapes training step (forward + backward)   87.7 ms   67.0 ms   69.2 ms
    shapes predict (4 images, 400 detections)    242 ms    164 ms    186 ms
    800 px predict (ResNet-50-FPN)              3.17 s    2.98 s    2.73 s
    800 px backbone + FPN (inference)           1.62 s    1.49 s    1.36 s
    800 px training step                        6.86 s    6.81 s    6.81 s

The shapes training step after the conv-engine work of the training step (wide rows for
small stride-1 maps, kept columns of strided convs, per-phase unrolls, max-pool, resize
and NMS paths; every loss and gradient bit-identical), the same script back to back at
2cacb51 and after, one thread, CPU time, best of 15, a heavily loaded machine (load 3-4
on 2 cores): forward_train + backward 75.5 -> 69.2 ms (torchvision 77.9 / 80.9 in the
same runs: 0.97x -> 0.86x), train step (transform + grads + SGD) 80.9 -> 69.9 ms; by
stage, forward: backbone+FPN 9.9 / 11.1, RPN head+anchors+proposals 9.0 / 8.3, mask
branch 11.2 / 10.1 ms; backward: mask head 13.4 / 12.3, backbone+FPN 14.6 / 11.4, RPN
head 5.2 / 4.9 ms. Paired in one process (old and new packages alternating step by
step, 40-80 steps, median of the per-step ratios): the whole train() step 0.88-0.96x,
transform 2.8 -> 0.9 ms. 800 px (single runs, no torch): predict 3.74 -> 3.65 s,
training step 7.45 -> 6.75 s (mask head backward 244 -> 150 ms).

Two threads, this script, a quiet moment (GEMM 293 GFLOP/s): shapes training
step 71.8 ms (torchvision 74.3), shapes predict 155 ms (129), 800 px training
step 5.05 s (5.93), 800 px predict 2.3-2.9 s (1.8-1.9) over two runs; the 800 px
backbone + FPN at 110-160 GFLOP/s, 40-75 % of the GEMM rate.
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np

import _common  # noqa: E402,F401  (puts the checkout on sys.path)

from mrcnn_np import model as M  # noqa: E402
from mrcnn_np.config import shapes_config, torchvision_config  # noqa: E402
from mrcnn_np.data.shapes import ShapesDataset  # noqa: E402
from mrcnn_np.train import learning_rate, sgd_step, shapes_batch  # noqa: E402
from mrcnn_np.transform import IMAGE_MEAN, IMAGE_STD, transform_forward  # noqa: E402

clock = time.perf_counter


# =========================================================================== timing


class StageTimes(dict):
    """{stage name: seconds} returned by a staged task (a plain dict result is not recorded)."""


class Timer:
    """Best-of times of named tasks, each task group timed together after a pause."""

    def __init__(self):
        self.best = {}

    def add(self, name, seconds):
        self.best[name] = min(self.best.get(name, float("inf")), seconds)

    def run(self, name, fn):
        """Time ``fn()``; if it returns a dict of stage seconds, record those too."""
        t0 = clock()
        out = fn()
        self.add(name, clock() - t0)
        if isinstance(out, StageTimes):
            for stage, seconds in out.items():
                self.add(f"{name}/{stage}", seconds)
        return out

    def __getitem__(self, name):
        return self.best.get(name)


def run_groups(timer, groups, repeats, *, warmup=False):
    """groups: list of (wake_fn, [(name, fn), ...]). Interleave the groups ``repeats`` times
    (after one untimed call of every task if ``warmup``)."""
    if warmup:
        for _, tasks in groups:
            for _, fn in tasks:
                fn()
    for _ in range(repeats):
        for wake, tasks in groups:
            if len(groups) > 1:
                time.sleep(0.2)
            wake()
            for name, fn in tasks:
                timer.run(name, fn)


class Stages:
    """Stopwatch for a staged call: ``lap(name)`` adds the time since the last lap."""

    def __init__(self):
        self.t = clock()
        self.times = StageTimes()

    def lap(self, name):
        now = clock()
        self.times[name] = self.times.get(name, 0.0) + now - self.t
        self.t = now


# =========================================================================== stages inside model.py

# model.py calls its stages through its module globals, so a stage is timed inside the
# library call itself by wrapping that global for the duration of the call. The wrapped
# names never call one another (e.g. ``_box_branch`` calls RoIAlign and the box head,
# which are not wrapped), so the stage times do not overlap; what is left of the total
# is input checks and glue.
FORWARD_TRAIN_STAGES = {  # (model calls the stages' unchecked twins, _name)
    "_backbone_forward": "backbone+FPN",
    "_rpn_forward": "RPN head+anchors+proposals",
    "_rpn_targets": "RPN targets+loss", "_sample_anchors": "RPN targets+loss",
    "_rpn_loss_from_samples": "RPN targets+loss",
    "_select_training_samples": "RoI sampling",
    "_box_branch": "box branch (RoIAlign+head)+loss", "_fastrcnn_loss": "box branch (RoIAlign+head)+loss",
    "_select_positive_proposals": "mask branch (RoIAlign+head)+loss",
    "_mask_branch": "mask branch (RoIAlign+head)+loss", "_maskrcnn_loss": "mask branch (RoIAlign+head)+loss",
}
PREDICT_STAGES = {  # (predict runs the stages' inference paths)
    "_backbone_infer": "backbone+FPN",
    "_rpn_forward": "RPN head+anchors+proposals",
    "_box_branch": "box branch+postprocess", "_postprocess_detections": "box branch+postprocess",
    "_mask_branch": "mask branch+inference", "_maskrcnn_inference": "mask branch+inference",
}
BACKWARD_STAGES = {
    "_box_head_backward": "box head", "_mask_head_backward": "mask head",
    "_multiscale_roi_align_backward": "RoIAlign box+mask",
    "_concat_box_prediction_layers_backward": "RPN head", "_rpn_head_backward": "RPN head",
    "_backbone_backward": "backbone+FPN",
}
OTHER = "other (checks, glue)"


def staged(fn, stages):
    """A task running ``fn()`` with the model.py globals named in ``stages`` timed; returns StageTimes."""
    def _timed(f, label, times):
        def wrapper(*a, **k):
            t0 = clock()
            try:
                return f(*a, **k)
            finally:
                times[label] = times.get(label, 0.0) + clock() - t0
        return wrapper

    def task():
        times = StageTimes()
        saved = {name: getattr(M, name) for name in stages}  # a renamed stage fails here, loudly
        for name, f in saved.items():
            setattr(M, name, _timed(f, stages[name], times))
        t0 = clock()
        try:
            fn()
        finally:
            total = clock() - t0
            for name, f in saved.items():
                setattr(M, name, f)
        times[OTHER] = total - sum(times.values())
        return times

    return task


def gemm_rate(n=1024, repeats=5):
    """Best float32 GFLOP/s of an n^3 product, timed by this module's ``clock`` (wall or CPU time)."""
    return _common.gemm_gflops(n, n, n, repeats=repeats, clock=clock)


def stage_labels(stages):
    return list(dict.fromkeys(stages.values())) + [OTHER]


def train_step(params, buffers, images, targets, config, *, rng, step=0):
    """The body of ``train.train`` for one batch (images already rendered)."""
    batch, sizes, tt = transform_forward(images, targets, min_size=config.min_size, max_size=config.max_size,
                                         mean=config.image_mean, std=config.image_std,
                                         size_divisible=config.size_divisible)
    losses, grads = M.loss_and_grads(params, batch, tt, config, rng=rng, image_sizes=sizes)
    sum(float(np.vdot(g, g)) for g in grads.values())  # the gradient norm train() records
    sgd_step(params, grads, buffers, lr=learning_rate(step, base_lr=0.02, warmup_iters=100))
    return losses


# =========================================================================== torch side


def import_torch():
    try:
        import torch
        import torchvision  # noqa: F401
    except ImportError:
        return None
    return torch


def load_ours(torch, tmodel, params):
    # from_numpy shares memory; copy so a training step on either side cannot touch the other
    tmodel.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in params.items()}, strict=True)
    return tmodel


def torch_shapes_model(torch, config, params):
    """torchvision MaskRCNN with the numbers of ``config`` (as tests/reference/test_model_torch.py)."""
    from torchvision.models.detection import MaskRCNN
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.backbone_utils import BackboneWithFPN
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
    from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
    from torchvision.models.resnet import Bottleneck, ResNet
    from torchvision.ops.misc import FrozenBatchNorm2d

    # torchvision's ResNet fixes the widths at 64 (stem), 64..512 (stages): rebuild them at ours
    body = ResNet(Bottleneck, list(config.backbone_layers), norm_layer=FrozenBatchNorm2d)
    w = config.backbone_width
    body.conv1 = torch.nn.Conv2d(3, w, 7, 2, 3, bias=False)
    body.bn1 = FrozenBatchNorm2d(w)
    body.inplanes = w
    for i, blocks in enumerate(config.backbone_layers):
        setattr(body, f"layer{i + 1}", body._make_layer(Bottleneck, w * 2 ** i, blocks, stride=1 if i == 0 else 2))
    backbone = BackboneWithFPN(body, {"layer1": "0", "layer2": "1", "layer3": "2", "layer4": "3"},
                               list(config.backbone_out_channels), config.fpn_channels)
    res = config.box_roi_output_size
    c = config
    tmodel = MaskRCNN(
        backbone, num_classes=None, min_size=c.min_size, max_size=c.max_size,
        image_mean=list(c.image_mean), image_std=list(c.image_std),
        rpn_anchor_generator=AnchorGenerator(c.anchor_sizes, c.aspect_ratios),
        rpn_pre_nms_top_n_train=c.rpn_pre_nms_top_n_train, rpn_pre_nms_top_n_test=c.rpn_pre_nms_top_n_test,
        rpn_post_nms_top_n_train=c.rpn_post_nms_top_n_train,
        rpn_post_nms_top_n_test=c.rpn_post_nms_top_n_test,
        rpn_nms_thresh=c.rpn_nms_thresh, rpn_fg_iou_thresh=c.rpn_fg_iou_thresh,
        rpn_bg_iou_thresh=c.rpn_bg_iou_thresh, rpn_batch_size_per_image=c.rpn_batch_size_per_image,
        rpn_positive_fraction=c.rpn_positive_fraction, rpn_score_thresh=c.rpn_score_thresh,
        box_head=TwoMLPHead(c.fpn_channels * res * res, c.representation_size),
        box_predictor=FastRCNNPredictor(c.representation_size, c.num_classes),
        box_score_thresh=c.box_score_thresh, box_nms_thresh=c.box_nms_thresh,
        box_detections_per_img=c.box_detections_per_img, box_fg_iou_thresh=c.box_fg_iou_thresh,
        box_bg_iou_thresh=c.box_bg_iou_thresh, box_batch_size_per_image=c.box_batch_size_per_image,
        box_positive_fraction=c.box_positive_fraction, bbox_reg_weights=c.bbox_reg_weights,
        mask_head=MaskRCNNHeads(c.fpn_channels, list(c.mask_layers), 1),
        mask_predictor=MaskRCNNPredictor(c.mask_layers[-1], c.mask_dim_reduced, c.num_classes),
    )
    return load_ours(torch, tmodel, params)


def torch_resnet50_model(torch, params):
    """``maskrcnn_resnet50_fpn(weights=None, weights_backbone=None)`` made the reference (frozen BN,
    conv1 + layer1 frozen), with our parameters."""
    from torchvision.models.detection import maskrcnn_resnet50_fpn
    from torchvision.ops.misc import FrozenBatchNorm2d

    tmodel = maskrcnn_resnet50_fpn(weights=None, weights_backbone=None)

    def freeze_bn(module):
        for name, child in module.named_children():
            if isinstance(child, torch.nn.BatchNorm2d):
                setattr(module, name, FrozenBatchNorm2d(child.num_features, eps=child.eps))
            else:
                freeze_bn(child)

    freeze_bn(tmodel.backbone.body)
    for name, p in tmodel.backbone.body.named_parameters():
        if not name.startswith(("layer2", "layer3", "layer4")):
            p.requires_grad_(False)
    return load_ours(torch, tmodel, params)


def torch_targets(torch, targets):
    return [{"boxes": torch.from_numpy(t["boxes"]), "labels": torch.from_numpy(t["labels"]),
             "masks": torch.from_numpy(np.asarray(t["masks"], dtype=np.uint8))} for t in targets]


def torch_stage_fns(torch, tmodel, images, image_sizes, targets=None):
    """(predict_fn, train_fn): GeneralizedRCNN.forward after the transform, with stage times."""
    from torchvision.models.detection.image_list import ImageList

    x = torch.from_numpy(images)
    il = ImageList(x, [tuple(s) for s in image_sizes])
    tt = None if targets is None else torch_targets(torch, targets)

    def predict(detections=False):
        tmodel.eval()
        sw = Stages()
        with torch.no_grad():
            feats = tmodel.backbone(x)
            sw.lap("backbone+FPN")
            proposals, _ = tmodel.rpn(il, feats)
            sw.lap("RPN head+anchors+proposals")
            dets, _ = tmodel.roi_heads(feats, proposals, il.image_sizes)
            sw.lap("RoI heads")
        return dets if detections else sw.times

    def train():
        tmodel.train()
        sw = Stages()
        feats = tmodel.backbone(x)
        sw.lap("backbone+FPN")
        proposals, rpn_losses = tmodel.rpn(il, feats, tt)
        sw.lap("RPN (+targets, loss)")
        _, roi_losses = tmodel.roi_heads(feats, proposals, il.image_sizes, tt)
        sw.lap("RoI heads (+loss)")
        loss = sum(rpn_losses.values()) + sum(roi_losses.values())
        tmodel.zero_grad(set_to_none=True)
        loss.backward()
        sw.lap("backward")
        return sw.times

    return predict, train


# =========================================================================== printing


def ms(t):
    return "-" if t is None else f"{t * 1e3:.0f}" if t >= 0.1 else f"{t * 1e3:.1f}"


def back_to_back(tasks, steps, rounds):
    """{name: seconds}: one call of each task as it runs in a loop, ``steps`` calls in a row
    (caches, branch predictors and the allocator warm, as in ``train.train``), the median call
    of a block, best over ``rounds`` blocks; the tasks' blocks alternate. The grouped timings
    above start each group cold, after a pause and the other library's work."""
    best = {}
    for _ in range(rounds):
        for name, fn in tasks:
            times = []
            for _ in range(steps):
                t0 = clock()
                fn()
                times.append(clock() - t0)
            best[name] = min(best.get(name, float("inf")), float(np.median(times)))
    return best


def table(timer, rows, torch_on):
    """rows: (label, our key, torch key or None)."""
    head = f"  {'':34s} {'mrcnn_np ms':>11s}"
    if torch_on:
        head += f" {'torch ms':>9s} {'ours/torch':>10s}"
    print(head)
    for label, ours, theirs in rows:
        line = f"  {label:34s} {ms(timer[ours]):>11s}"
        if torch_on:
            tt = timer[theirs] if theirs else None
            ratio = f"{timer[ours] / tt:.2f}x" if tt and timer[ours] else ""
            line += f" {ms(tt):>9s} {ratio:>10s}"
        print(line)


def stage_rows(timer, key, labels, title, total_key=None, flops=None, gemm=None):
    """Print the best time of each stage of task ``key`` and its share of the task's best total;
    with ``flops`` ({stage: conv/linear FLOPs}, :func:`gemm_flops`) also the stage's GFLOP and
    GFLOP/s, and its share of the GEMM rate ``gemm`` (GFLOP/s of this process)."""
    total = timer[total_key or key]
    extra = "; GFLOP of its convs and linear layers, GFLOP/s, share of the GEMM rate" if flops else ""
    print(f"  {title} (best of each; share of the best total {ms(total)} ms{extra}):")
    for label in labels:
        t = timer[f"{key}/{label}"]
        if t is not None:
            line = f"      {label:32s} {ms(max(t, 0.0)):>9s}  {max(t, 0.0) / total:5.0%}"
            f = (flops or {}).get(label, 0)
            if f and t > 0:
                line += f"  {f / 1e9:7.2f} GFLOP {f / t / 1e9:6.0f} GFLOP/s"
                line += f" ({f / t / 1e9 / gemm:4.0%} of GEMM)" if gemm else ""
            print(line)


def gemm_flops(fn, stages):
    """{stage label: 2 x multiply-adds of the convolutions and linear layers} of one ``fn()``.

    Runs ``fn`` once (untimed) with the model.py stage globals of ``stages`` marking the
    current stage and the conv engine's entry points (``kernels.conv``), the linear layers
    (``ops.linear``) and the mask head's fused predictor counting their products:
    a forward conv ``2 N F Ho Wo C KH KW``, its backward the same for dw and again for dx
    (when computed), a linear layer ``2 N O I`` (its backward twice that).
    """
    import mrcnn_np.kernels.conv as KC
    import mrcnn_np.roi_heads as RH  # (the box head's linear layers are called through its names)

    current, flops = [OTHER], {}

    def add(n):
        flops[current[0]] = flops.get(current[0], 0) + int(n)

    def conv_fwd(x, w, *args, **kw):
        n, c, _, _ = x.shape
        f, _, kh, kwd = w.shape
        ho, wo = args[3]
        add(2 * n * f * ho * wo * c * kh * kwd)

    def stack_fwd(x, weights, biases, padding, dilation):  # map-size-keeping 3x3 convs, one after the other
        n, _, h, w_ = x.shape
        for w in weights:
            add(2 * n * h * w_ * w.size)

    def conv_bwd(dout, x, w, stride, padding, dilation, need_dx=True, **kw):
        add(2 * dout.size * w[0].size * (2 if need_dx else 1))

    def tconv_fwd(x, w, *args, **kw):
        add(2 * x.size * w.shape[1] * w.shape[2] * w.shape[3])

    def tconv_bwd(dout, x, w, *args, **kw):
        add(4 * x.size * w.shape[1] * w.shape[2] * w.shape[3])

    def lin_fwd(x, w, b):
        add(2 * x.shape[0] * w.size)

    def lin_bwd(dout, cache):
        add(4 * cache.x.shape[0] * cache.w.size)

    def mask_pred(params, pooled, **kw):  # the fused predictor of _mask_head_infer (the 3x3 convs count above)
        r, _, h, w = pooled.shape
        w5 = params["roi_heads.mask_predictor.conv5_mask.weight"]
        k1 = params["roi_heads.mask_predictor.mask_fcn_logits.weight"].shape[0]
        add(2 * r * h * w * 4 * w5.shape[1] * (w5.shape[0] + k1))

    inside_conv = [False]  # conv2d_infer / conv_stack_infer fall back on conv2d_fused: count the outer call only

    def counting(mod, name, count):
        real = getattr(mod, name)
        engine = mod is KC

        def wrapper(*a, **k):
            if engine and inside_conv[0]:
                return real(*a, **k)
            count(*a, **k)
            inside_conv[0] = engine
            try:
                return real(*a, **k)
            finally:
                inside_conv[0] = False
        return mod, name, real, wrapper

    def marking(name, label):
        real = getattr(M, name)

        def wrapper(*a, **k):
            prev, current[0] = current[0], label
            try:
                return real(*a, **k)
            finally:
                current[0] = prev
        return M, name, real, wrapper

    patches = [counting(KC, "conv2d_forward", conv_fwd), counting(KC, "conv2d_infer", conv_fwd),
               counting(KC, "conv_stack_infer", stack_fwd), counting(KC, "conv2d_fused", conv_fwd),
               counting(KC, "conv2d_backward", conv_bwd), counting(KC, "conv_transpose2d_forward", tconv_fwd),
               counting(KC, "conv_transpose2d_backward", tconv_bwd), counting(RH, "_linear_forward", lin_fwd),
               counting(RH, "_linear_backward", lin_bwd), counting(RH, "_mask_head_infer", mask_pred)]
    patches += [marking(name, label) for name, label in stages.items()]
    for mod, name, _, wrapper in patches:
        setattr(mod, name, wrapper)
    try:
        fn()
    finally:
        for mod, name, real, _ in patches:
            setattr(mod, name, real)
    return flops


T_PREDICT = ("backbone+FPN", "RPN head+anchors+proposals", "RoI heads")
T_TRAIN = ("backbone+FPN", "RPN (+targets, loss)", "RoI heads (+loss)")


def bench_shapes(args, torch, timer):
    config = shapes_config()
    rng = np.random.default_rng(0)
    params = M.init_params(config, rng=rng)
    ds = ShapesDataset(64, seed=0)
    idx = [0, 1, 2, 3]
    images, targets = shapes_batch(ds, idx)
    batch, sizes, tt = transform_forward(images, targets, min_size=config.min_size, max_size=config.max_size,
                                         mean=config.image_mean, std=config.image_std,
                                         size_divisible=config.size_divisible)
    ngt = sum(t["boxes"].shape[0] for t in tt)
    ndet = [p["boxes"].shape[0] for p in M.predict(params, batch, config, image_sizes=sizes)]
    print(f"\n[1] shapes_config(): batch of {len(idx)} images {batch.shape[2]}x{batch.shape[3]}, "
          f"{ngt} objects, float32, random init_params ({'/'.join(map(str, ndet))} detections per image)")

    step_params = {k: v.copy() for k, v in params.items()}
    buffers = {}
    cache_box = {}

    def fwd():
        cache_box.clear()
        cache_box["c"] = M.forward_train(params, batch, tt, config, rng=np.random.default_rng(1),
                                         image_sizes=sizes)[1]

    ours = [
        ("shapes/data", lambda: shapes_batch(ds, idx)),
        ("shapes/fwd", staged(fwd, FORWARD_TRAIN_STAGES)),
        ("shapes/bwd", staged(lambda: M.backward(cache_box["c"]), BACKWARD_STAGES)),
        ("shapes/step", lambda: train_step(step_params, buffers, images, targets, config,
                                           rng=np.random.default_rng(2))),
        ("shapes/predict", staged(lambda: M.predict(params, batch, config, image_sizes=sizes), PREDICT_STAGES)),
        ("shapes/detect", lambda: M.detect(params, images, config)),
    ]
    small = np.ones((512, 512), dtype=np.float32)
    groups = [(lambda: small @ small, ours)]
    if torch is not None:
        tmodel = torch_shapes_model(torch, config, params)
        t_pred, t_train = torch_stage_fns(torch, tmodel, batch, sizes, tt)
        timgs = [torch.from_numpy(im) for im in images]

        def t_detect():
            tmodel.eval()
            with torch.no_grad():
                tmodel(timgs)

        tsmall = torch.from_numpy(small)
        print("  " + param_check(torch, tmodel, params, batch, sizes, config))
        groups.append((lambda: tsmall @ tsmall, [("shapes/t_train", t_train), ("shapes/t_predict", t_pred),
                                                  ("shapes/t_detect", t_detect)]))
    run_groups(timer, groups, args.repeats, warmup=True)

    timer.add("shapes/fb", timer["shapes/fwd"] + timer["shapes/bwd"])
    if torch is not None:  # torch's forward alone: its train step minus the backward stage
        timer.add("shapes/t_fwd", sum(timer[f"shapes/t_train/{k}"] for k in T_TRAIN))
    note = f"  best of {args.repeats} after one untimed call"
    if torch is not None:
        note += ("; torch: its stages as GeneralizedRCNN.forward drives them after the transform, "
                 "our parameters")
    print(note)
    table(timer, [
        ("forward_train", "shapes/fwd", "shapes/t_fwd"),
        ("backward", "shapes/bwd", "shapes/t_train/backward"),
        ("forward_train + backward", "shapes/fb", "shapes/t_train"),
        ("train step (transform+grads+SGD)", "shapes/step", None),
        ("  (data: render the 4 images)", "shapes/data", None),
        ("predict", "shapes/predict", "shapes/t_predict"),
        ("detect (transform+predict+paste)", "shapes/detect", "shapes/t_detect"),
    ], torch is not None)
    fl_fwd = gemm_flops(fwd, FORWARD_TRAIN_STAGES)
    fl_bwd = gemm_flops(lambda: M.backward(cache_box["c"]), BACKWARD_STAGES)
    fl_pred = gemm_flops(lambda: M.predict(params, batch, config, image_sizes=sizes), PREDICT_STAGES)
    stage_rows(timer, "shapes/fwd", stage_labels(FORWARD_TRAIN_STAGES), "forward_train by stage",
               flops=fl_fwd, gemm=args.gemm)
    if torch is not None:
        stage_rows(timer, "shapes/t_train", T_TRAIN, "  torch, train-mode forward by stage", "shapes/t_fwd")
    stage_rows(timer, "shapes/bwd", stage_labels(BACKWARD_STAGES), "backward by stage", flops=fl_bwd, gemm=args.gemm)
    stage_rows(timer, "shapes/predict", stage_labels(PREDICT_STAGES), "predict by stage", flops=fl_pred,
               gemm=args.gemm)
    if torch is not None:
        stage_rows(timer, "shapes/t_predict", T_PREDICT, "  torch, predict by stage")

    steps = 10
    tasks = [("shapes/b2b", lambda: M.loss_and_grads(params, batch, tt, config, rng=np.random.default_rng(1),
                                                     image_sizes=sizes))]
    if torch is not None:
        tasks.append(("shapes/t_b2b", t_train))
    for name, seconds in back_to_back(tasks, steps, args.repeats).items():
        timer.add(name, seconds)
    print(f"  back to back: {steps} calls in a row, the median call, best of {args.repeats} blocks "
          f"(the demo's inner loop)")
    table(timer, [("forward + backward (loss_and_grads)", "shapes/b2b", "shapes/t_b2b")], torch is not None)


def param_check(torch, tmodel, params, images, sizes, config):
    """Largest difference, relative to the largest magnitude, between our outputs and torch's of
    each part (pyramid, RPN head, box head and mask head on our proposals): a check that our
    parameters are loaded into the right torch modules. (The detections themselves cannot be
    compared with random weights: their scores tie to float32 rounding, so the order differs.)"""
    from mrcnn_np.fpn import backbone_forward
    from mrcnn_np.roi_align import multiscale_roi_align_forward
    from mrcnn_np.roi_heads import box_head_forward, mask_head_forward
    from mrcnn_np.rpn import rpn_head_forward

    def rel(a, b):
        b = b.detach().numpy()
        return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))

    # 20 random boxes per image, 10..60 % of its side (so they pool from several levels)
    rng = np.random.default_rng(5)
    proposals = []
    for h, w in sizes:
        wh = rng.uniform(0.1, 0.6, (20, 2)) * (w, h)
        xy = rng.uniform(0, 1, (20, 2)) * ((w, h) - wh)
        proposals.append(np.concatenate([xy, xy + wh], axis=1).astype(images.dtype))
    rois = np.concatenate([np.concatenate([np.full((20, 1), i, images.dtype), p], axis=1)
                           for i, p in enumerate(proposals)])
    pyramid, _ = backbone_forward(params, images)
    roi_feats = pyramid[:4]  # P2..P5 (the pyramid is the list [P2, .., P6])
    scales = (1 / 4, 1 / 8, 1 / 16, 1 / 32)  # the batch is padded to a multiple of 32
    pooled, _ = multiscale_roi_align_forward(roi_feats, rois, config.box_roi_output_size, scales=scales,
                                             sampling_ratio=config.box_roi_sampling_ratio)
    (cls, _), _ = box_head_forward(params, pooled)
    pooled, _ = multiscale_roi_align_forward(roi_feats, rois, config.mask_roi_output_size, scales=scales,
                                             sampling_ratio=config.mask_roi_sampling_ratio)
    masks, _ = mask_head_forward(params, pooled)
    (obj, _), _ = rpn_head_forward(params, pyramid)
    rh = tmodel.roi_heads
    tsizes = [tuple(s) for s in sizes]
    tprops = [torch.from_numpy(np.ascontiguousarray(p)) for p in proposals]
    with torch.no_grad():
        tmodel.eval()
        feats = tmodel.backbone(torch.from_numpy(images))
        tobj, _ = tmodel.rpn.head(list(feats.values()))
        tcls, _ = rh.box_predictor(rh.box_head(rh.box_roi_pool(feats, tprops, tsizes)))
        tmasks = rh.mask_predictor(rh.mask_head(rh.mask_roi_pool(feats, tprops, tsizes)))
    out = {"pyramid": max(rel(p, f) for p, f in zip(pyramid, feats.values())),
           "RPN": max(rel(a, b) for a, b in zip(obj, tobj)), "box head": rel(cls, tcls),
           "mask head": rel(masks, tmasks)}
    return "torch with our parameters, max relative difference: " + ", ".join(
        f"{k} {v:.1g}" for k, v in out.items())


def synthetic_targets(rng, size, count, num_classes):
    """``count`` ellipses 40..300 px in a size x size image: boxes, labels, uint8 masks."""
    wh = rng.uniform(40, 300, (count, 2))
    xy = rng.uniform(0, 1, (count, 2)) * (size - wh - 1)
    boxes = np.concatenate([xy, xy + wh], axis=1).astype(np.float32)
    yy, xx = np.mgrid[0:size, 0:size] + 0.5
    masks = np.stack([((xx - (b[0] + b[2]) / 2) / ((b[2] - b[0]) / 2)) ** 2
                      + ((yy - (b[1] + b[3]) / 2) / ((b[3] - b[1]) / 2)) ** 2 <= 1 for b in boxes])
    labels = rng.integers(1, num_classes, count).astype(np.int64)
    return [{"boxes": boxes, "labels": labels, "masks": masks.astype(np.uint8)}]


def bench_800(args, torch, timer):
    config = torchvision_config()
    rng = np.random.default_rng(0)
    params = M.init_params(config, rng=rng)
    s = args.size
    raw = rng.uniform(0, 1, (3, s, s)).astype(np.float32)
    mean = np.asarray(IMAGE_MEAN, np.float32)[:, None, None]
    std = np.asarray(IMAGE_STD, np.float32)[:, None, None]
    images = ((raw - mean) / std)[None]
    sizes = [(s, s)]
    targets = synthetic_targets(rng, s, 5, config.num_classes)
    print(f"\n[2] torchvision_config() (ResNet-50-FPN, {config.num_classes} classes, random init_params), "
          f"1 x 3 x {s} x {s} float32; GEMM now {gemm_rate():.1f} GFLOP/s")

    small = np.ones((512, 512), dtype=np.float32)
    det = {}

    def predict():
        det["n"] = len(M.predict(params, images, config)[0]["boxes"])

    groups = [(lambda: small @ small, [("800/predict", staged(predict, PREDICT_STAGES))])]
    if torch is not None:
        tmodel = torch_resnet50_model(torch, params)
        t_pred, t_train = torch_stage_fns(torch, tmodel, images, sizes, targets)
        tsmall = torch.from_numpy(small)
        det["t"] = len(t_pred(detections=True)[0]["boxes"])
        print("  " + param_check(torch, tmodel, params, images, sizes, config))
        groups.append((lambda: tsmall @ tsmall, [("800/t_predict", t_pred)]))
    run_groups(timer, groups, args.predict_repeats)

    print(f"  predict, best of {args.predict_repeats}: {det['n']} detections"
          + (f" (torch: {det['t']})" if torch is not None else ""))
    table(timer, [("predict", "800/predict", "800/t_predict")], torch is not None)
    stage_rows(timer, "800/predict", stage_labels(PREDICT_STAGES), "predict by stage",
               flops=gemm_flops(predict, PREDICT_STAGES), gemm=args.gemm)
    if torch is not None:
        stage_rows(timer, "800/t_predict", T_PREDICT, "  torch, predict by stage")
    share = timer["800/predict/backbone+FPN"] / timer["800/predict"]
    line = f"  backbone+FPN share of predict: {share:.0%}"
    if torch is not None:
        tshare = timer["800/t_predict/backbone+FPN"] / timer["800/t_predict"]
        ratio = timer["800/predict/backbone+FPN"] / timer["800/t_predict/backbone+FPN"]
        line += f" (torch {tshare:.0%}); backbone+FPN ours/torch {ratio:.2f}x"
    print(line)

    if args.train_repeats < 1:
        return
    cache_box = {}

    def fwd():
        cache_box.clear()  # free the last cache before building the next one
        cache_box["c"] = M.forward_train(params, images, targets, config, rng=np.random.default_rng(1))[1]

    groups = [(lambda: small @ small, [("800/fwd", staged(fwd, FORWARD_TRAIN_STAGES)),
                                       ("800/bwd", staged(lambda: M.backward(cache_box["c"]), BACKWARD_STAGES))])]
    if torch is not None:
        groups.append((lambda: tsmall @ tsmall, [("800/t_train", t_train)]))
    run_groups(timer, groups, args.train_repeats)
    fl_fwd = gemm_flops(fwd, FORWARD_TRAIN_STAGES)  # (one more untimed step, counting)
    fl_bwd = gemm_flops(lambda: M.backward(cache_box["c"]), BACKWARD_STAGES)
    cache_box.clear()
    timer.add("800/fb", timer["800/fwd"] + timer["800/bwd"])
    if torch is not None:
        timer.add("800/t_fwd", sum(timer[f"800/t_train/{k}"] for k in T_TRAIN))
    print(f"  training step, {targets[0]['boxes'].shape[0]} objects, best of {args.train_repeats}:")
    table(timer, [
        ("forward_train", "800/fwd", "800/t_fwd"),
        ("backward", "800/bwd", "800/t_train/backward"),
        ("forward_train + backward", "800/fb", "800/t_train"),
    ], torch is not None)
    stage_rows(timer, "800/fwd", stage_labels(FORWARD_TRAIN_STAGES), "forward_train by stage",
               flops=fl_fwd, gemm=args.gemm)
    if torch is not None:
        stage_rows(timer, "800/t_train", T_TRAIN, "  torch, train-mode forward by stage", "800/t_fwd")
    stage_rows(timer, "800/bwd", stage_labels(BACKWARD_STAGES), "backward by stage", flops=fl_bwd, gemm=args.gemm)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=5,
                    help="best of this many for the shapes model (default 5); also caps the two below")
    ap.add_argument("--predict-repeats", type=int, default=2,
                    help="best of this many for the 800 px predict (default 2)")
    ap.add_argument("--train-repeats", type=int, default=2,
                    help="best of this many for the 800 px training step (default 2; 0 skips it)")
    ap.add_argument("--size", type=int, default=800, help="side of the torchvision_config image (default 800)")
    ap.add_argument("--no-torch", action="store_true", help="skip the torch columns")
    ap.add_argument("--no-800", action="store_true", help="only the shapes model")
    ap.add_argument("--cpu-time", action="store_true",
                    help="time by the process's CPU time, torch on one thread (run with OPENBLAS_NUM_THREADS=1 "
                         "so NumPy's BLAS uses one too): on a machine shared with other work, two-thread wall "
                         "times stall whenever a BLAS thread waits for a core")
    args = ap.parse_args(argv)
    global clock
    if args.cpu_time:
        clock = time.process_time
    args.predict_repeats = max(1, min(args.predict_repeats, args.repeats))
    args.train_repeats = min(args.train_repeats, args.repeats)
    torch = None if args.no_torch else import_torch()
    if torch is not None:
        torch.set_num_threads(1 if args.cpu_time else 2)
    t0 = clock()
    gemm = args.gemm = gemm_rate()
    print(f"numpy {np.__version__}; float32 GEMM 1024^3 in this process: {gemm:.1f} GFLOP/s"
          + (f" (CPU time; OPENBLAS_NUM_THREADS={os.environ.get('OPENBLAS_NUM_THREADS', 'unset')})"
             if args.cpu_time else ""))
    if torch is None:
        print("torch: not importable here (or --no-torch): mrcnn_np only")
    else:
        print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    timer = Timer()
    bench_shapes(args, torch, timer)
    if not args.no_800:
        bench_800(args, torch, timer)
    gemm2 = gemm_rate()
    print(f"\nfloat32 GEMM again at the end: {gemm2:.1f} GFLOP/s (a drop means the machine got busier); "
          f"total {clock() - t0:.0f} s")


if __name__ == "__main__":
    main()
