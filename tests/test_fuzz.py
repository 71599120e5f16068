"""Fuzz the public API with bad input: no bad input goes unanswered (issue 16).

How the harness works
---------------------
* **Enumeration.** Every public module is reached from ``mrcnn_np.__all__``
  (a package's ``__all__`` lists its submodules); a module's public names are
  its ``__all__`` or, without one, the names not starting with ``_`` that it
  defines. ``kernels`` is internal (not in ``mrcnn_np.__all__``) and so is
  ``viz`` (imported on demand). Every public function and class is either in
  the GOOD table below, buildable from the PARAM table (so a new function
  whose parameters have familiar names is fuzzed by default), or in SKIP with
  the reason; :func:`test_every_public_callable_is_fuzzed_or_skipped` fails
  otherwise, so nothing is silently missed.
* **A good call** per function: its arguments from GOOD (per function) or
  PARAM (per parameter name), defaults for the rest. The good call must
  succeed without a RuntimeWarning (the table stays honest).
* **Bad calls**, one argument at a time, built from the good value's type
  (:func:`mutations`): None, str, lists, wrong ndim, wrong last dimension,
  empty, NaN, +-inf, huge values, zeros, x2 < x1 boxes, ints, float16,
  complex, the other float dtype, non-contiguous; for numbers 0, -1, 1.5,
  2**70, NaN, inf, bool; for dicts a missing / extra key, a None / NaN /
  mis-shaped value; for lists of arrays or dicts the same one level down;
  for rngs a seed or a RandomState; for paths a missing file and a folder;
  plus the per-function out-of-range values in BAD (e.g. ``nms(iou_threshold=1.5)``).
  A hypothesis test (:func:`test_fuzz_random_arrays`, the project's ``ci``
  profile when CI is set) adds random arrays of random dtype, shape and values
  (NaN, inf, huge; no subnormals: an IEEE underflow to 0 is not a bug) in place
  of one argument.
* **The contract** (:func:`check_call`), every call under
  ``np.errstate(all="warn")`` with every warning recorded: the call either
  succeeds with no RuntimeWarning (overflow, invalid, divide, underflow,
  ComplexWarning) or raises ValueError / TypeError whose message names the
  argument (FileNotFoundError naming the path for files). Anything else
  (AttributeError, IndexError, KeyError, ZeroDivisionError, OverflowError,
  ...) is a crash. Some bad inputs must not succeed at all (``must_fail``):
  None for a required argument, a str for a non-str one, complex arrays,
  NaN/inf scalars, NaN/inf arrays given to a boundary module (the README's
  non-finite policy: transform, model's detect/predict/forward_train, train,
  boxes, anchors, matching, data, evaluate, io, trace), the BAD values; a
  success there is a silent pass. A non-contiguous copy must give the good
  call's result exactly; a float16 argument must give the float32 result up to
  float16 rounding, or be refused.

The file loaders (truncated, empty, random, renamed, missing files and the
issue's hand-made bad ones) and the CLI (bad options and files: one error line,
a non-zero exit, no traceback) are fuzzed at the end.

Size (measured): 206 public callables, 183 fuzzed (181 functions and the two
validating classes, MaskRCNNConfig and ShapesDataset), 23 skipped (20 result /
cache records, CocoData, and the two full-torchvision-file loaders, whose
corrupt files are fuzzed); 10,012 systematic bad calls, 712 random ones,
108 damaged, missing or hand-made bad files and 47 command lines; about 20 s on 2 cores.
"""
from __future__ import annotations

import copy
import dataclasses
import functools
import importlib
import inspect
import io as _io
import math
import pathlib
import types
import warnings
from typing import NamedTuple

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import mrcnn_np

# =========================================================================== enumeration


def public_modules():
    """{dotted name: module} of every public module, from ``mrcnn_np.__all__`` down."""
    out = {}

    def walk(mod):
        out[mod.__name__] = mod
        for name in getattr(mod, "__all__", ()):
            value = getattr(mod, name)
            if isinstance(value, types.ModuleType):
                walk(value)

    walk(mrcnn_np)
    return out


def public_names(mod):
    if hasattr(mod, "__all__"):
        return list(mod.__all__)
    return [n for n, v in vars(mod).items()
            if not n.startswith("_") and getattr(v, "__module__", None) == mod.__name__]


def public_callables():
    """{"module.name": object} of every public function and class (module path
    relative to the package, e.g. "boxes.nms", "data.coco.load_coco")."""
    out = {}
    for modname, mod in public_modules().items():
        rel = modname[len("mrcnn_np."):] if modname != "mrcnn_np" else ""
        for name in public_names(mod):
            value = getattr(mod, name)
            if isinstance(value, types.ModuleType) or not callable(value):
                continue
            if inspect.isfunction(value) or inspect.isclass(value):
                out[f"{rel}.{name}" if rel else name] = value
    return out


PUBLIC = public_callables()

# Modules on the user-facing boundary: they refuse NaN/inf arrays (README, "Conventions").
BOUNDARY_MODULES = ("transform", "train", "boxes", "anchors", "matching", "data.", "evaluate", "io", "trace")
BOUNDARY_FUNCTIONS = {"model.detect", "model.predict", "model.forward_train", "model.loss_and_grads"}


def is_boundary(qualname):
    return qualname in BOUNDARY_FUNCTIONS or any(
        qualname.startswith(m if m.endswith(".") else m + ".") for m in BOUNDARY_MODULES)


# =========================================================================== shared good values


def micro_config(**kw):
    """tests/test_model.py's smallest Mask R-CNN (64x64 images), with 4 classes as the shapes data."""
    from test_model import micro_config as model_micro_config  # tests/ is on sys.path under pytest

    return model_micro_config(**{"num_classes": 4, **kw})


class Ctx:
    """Expensive good values, built once (each call site deep-copies what it gets)."""

    tmp: pathlib.Path = None

    @functools.cached_property
    def config(self):
        return micro_config()

    @functools.cached_property
    def params(self):
        from mrcnn_np.model import init_params

        params = init_params(self.config, rng=np.random.default_rng(0), dtype=np.float32)
        # objectness logits of order 1, so proposals and detections exist
        params["rpn.head.cls_logits.weight"] = params["rpn.head.cls_logits.weight"] * 30
        return params

    @functools.cached_property
    def dataset(self):
        from mrcnn_np.data.shapes import ShapesDataset

        return ShapesDataset(3, image_size=64, seed=0)

    @functools.cached_property
    def raw_images(self):
        """detect's input: list of (3, H, W) float32 in [0, 1]."""
        return [np.ascontiguousarray(self.dataset[i]["image"].transpose(2, 0, 1)) for i in range(2)]

    @functools.cached_property
    def batch(self):
        """(images (1, 3, 64, 64) normalised, targets) for forward_train."""
        from mrcnn_np.train import dataset_batch
        from mrcnn_np.transform import transform_forward

        images, targets = dataset_batch(self.dataset, [0])
        c = self.config
        batch, sizes, targets = transform_forward(images, targets, min_size=c.min_size, max_size=c.max_size,
                                                  mean=c.image_mean, std=c.image_std,
                                                  size_divisible=c.size_divisible)
        return batch, targets

    @functools.cached_property
    def model_cache(self):
        from mrcnn_np.model import forward_train

        images, targets = self.batch
        return forward_train(self.params, images, targets, self.config, rng=np.random.default_rng(1))[1]

    @functools.cached_property
    def gts(self):
        """evaluate's ground truth: list of dicts with boxes, labels, masks (float64 boxes)."""
        out = []
        for i in range(2):
            item = self.dataset[i]
            out.append({"boxes": item["boxes"].astype(np.float64), "labels": item["labels"],
                        "masks": item["masks"]})
        return out

    @functools.cached_property
    def dets(self):
        out = []
        for i, g in enumerate(self.gts):
            n = len(g["boxes"])
            out.append({"boxes": g["boxes"] + 1.0, "labels": g["labels"].copy(),
                        "scores": np.linspace(0.9, 0.5, n), "masks": g["masks"].copy()})
        return out

    @functools.cached_property
    def coco_dir(self):
        from mrcnn_np.data.coco import write_coco_dataset

        out = self.tmp / "coco"
        write_coco_dataset(self.dataset, out, category_names=("square", "circle", "triangle"))
        return out

    @functools.cached_property
    def coco(self):
        from mrcnn_np.data.coco import load_coco

        return load_coco(self.coco_dir / "annotations.json")

    @functools.cached_property
    def checkpoint(self):
        from mrcnn_np.io import save_checkpoint

        return save_checkpoint(self.tmp / "ck.npz", {"a": np.arange(6.0).reshape(2, 3), "b": np.ones(2, np.int64)},
                               meta={"step": 3, "name": "x"})

    @functools.cached_property
    def safetensors(self):
        from mrcnn_np.io import save_safetensors

        return save_safetensors(self.tmp / "w.safetensors", {"a": np.arange(6.0, dtype=np.float32).reshape(2, 3),
                                                              "b": np.ones(2, np.int64)}, metadata={"k": "v"})

    @functools.cached_property
    def traces(self):
        from mrcnn_np.trace import trace

        return trace(self.params, self.raw_images[:1], self.config)


CTX = Ctx()
DATA = pathlib.Path(__file__).resolve().parent / "data"


@pytest.fixture(scope="module", autouse=True)
def _ctx_tmp(tmp_path_factory):
    CTX.tmp = tmp_path_factory.mktemp("fuzz")
    yield


@pytest.fixture(autouse=True)
def _memory_cap():
    """A bad size must be refused, not allocated: cap the address space 3 GB above what
    the process holds, so a runaway allocation is a MemoryError (a crash by the contract)
    rather than a machine out of memory."""
    try:
        import resource
    except ImportError:  # pragma: no cover - not on POSIX
        yield
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    with open("/proc/self/statm") as f:
        vm = int(f.read().split()[0]) * resource.getpagesize()
    cap = vm + (3 << 30)
    if hard != resource.RLIM_INFINITY:
        cap = min(cap, hard)
    resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def rng(seed=0):
    return np.random.default_rng(seed)


def boxes4(n=3, dtype=np.float64, offset=0.0):
    b = np.array([[1.5, 2.0, 20.0, 18.5], [10.0, 4.0, 30.5, 40.0], [25.0, 22.0, 60.0, 50.0],
                  [3.0, 30.0, 14.0, 61.0]], dtype=dtype)[:n]
    return b + dtype(offset) if offset else b


def fmap(shape=(1, 2, 6, 7), dtype=np.float64, seed=0):
    return rng(seed).standard_normal(shape).astype(dtype)


# --- forward/backward pairs: the backward's good call needs the forward's cache


def _fwd(fn_path, **kwargs):
    module, name = fn_path.rsplit(".", 1)
    fn = getattr(importlib.import_module(f"mrcnn_np.{module}"), name)
    return fn(**kwargs)


def _backward_args(fwd_path, fwd_kwargs, dout_of=lambda out: np.ones_like(out)):
    out, cache = _fwd(fwd_path, **fwd_kwargs)
    return {"dout": dout_of(out), "cache": cache}


def conv_kw(dtype=np.float64):
    return dict(x=fmap((2, 3, 6, 7), dtype), w=fmap((4, 3, 3, 3), dtype, 1), b=fmap((4,), dtype, 2))


def convt_kw(dtype=np.float64):
    return dict(x=fmap((2, 3, 4, 5), dtype), w=fmap((3, 4, 2, 2), dtype, 1), b=fmap((4,), dtype, 2))


def bn_kw():
    return dict(x=fmap((2, 3, 4, 4)), weight=np.array([1.0, 0.5, 2.0]), bias=np.array([0.1, 0.0, -0.2]),
                running_mean=np.array([0.0, 0.3, -0.1]), running_var=np.array([1.0, 0.5, 2.0]))


def roi_kw():
    return dict(input=fmap((2, 3, 10, 12)), boxes=np.array([[0, 1.0, 1.5, 8.0, 7.0], [1, 0.0, 2.0, 11.0, 9.5]]),
                output_size=(2, 3), spatial_scale=1.0, sampling_ratio=2)


def ms_roi_kw():
    feats = [fmap((1, 2, 16, 16), seed=1), fmap((1, 2, 8, 8), seed=2), fmap((1, 2, 4, 4), seed=3),
             fmap((1, 2, 2, 2), seed=4)]
    boxes = np.array([[0, 1.0, 2.0, 20.0, 30.0], [0, 5.0, 5.0, 60.0, 62.0]])
    return dict(features=feats, boxes=boxes, output_size=3, scales=(1 / 4, 1 / 8, 1 / 16, 1 / 32))


def resnet_params():
    from mrcnn_np.backbone import init_resnet

    return init_resnet((1, 1, 1, 1), width=4, rng=rng(0), dtype=np.float64)


def fpn_kw():
    from mrcnn_np.fpn import init_fpn

    feats = {"C2": fmap((1, 4, 8, 8), seed=1), "C3": fmap((1, 8, 4, 4), seed=2)}
    return dict(params=init_fpn([4, 8], 6, rng=rng(0), dtype=np.float64), features=feats)


def backbone_kw():
    from mrcnn_np.fpn import init_resnet_fpn_backbone

    return dict(params=init_resnet_fpn_backbone((1, 1, 1, 1), width=4, out_channels=6, rng=rng(0),
                                                dtype=np.float64), x=fmap((1, 3, 32, 32)))


def bottleneck_kw():
    from mrcnn_np.backbone import resnet_conv_specs, resnet_structure

    params = resnet_params()
    stem, stages = resnet_conv_specs(resnet_structure(params))
    return dict(params=params, specs=stages[0][0], x=fmap((1, 4, 8, 8)))


def box_head_kw():
    from mrcnn_np.roi_heads import init_box_head

    return dict(params=init_box_head(3, 2, 8, 4, rng=rng(0), dtype=np.float64), pooled=fmap((3, 3, 2, 2)))


def mask_head_kw():
    from mrcnn_np.roi_heads import init_mask_head

    return dict(params=init_mask_head(3, (4,), 5, 4, rng=rng(0), dtype=np.float64), pooled=fmap((2, 3, 4, 4)))


def rpn_head_kw():
    from mrcnn_np.rpn import init_rpn_head

    return dict(params=init_rpn_head(4, 3, rng=rng(0), dtype=np.float64),
                features=[fmap((1, 4, 8, 8), seed=1), fmap((1, 4, 4, 4), seed=2)])


def rpn_levels():
    """(objectness, deltas, anchors) of a 2-level RPN on a 32x32 image, A = 3."""
    from mrcnn_np.anchors import pyramid_anchors

    anchors = pyramid_anchors((32, 32), [(8, 8), (4, 4)], sizes=((8,), (16,)))
    obj = [fmap((1, 3, 8, 8), seed=1), fmap((1, 3, 4, 4), seed=2)]
    deltas = [0.1 * fmap((1, 12, 8, 8), seed=3), 0.1 * fmap((1, 12, 4, 4), seed=4)]
    return obj, deltas, anchors


def rpn_flat():
    """(objectness (1, T), deltas (1, T, 4), anchors (T, 4)) flattened, T = 240, float64."""
    from mrcnn_np.rpn import concat_box_prediction_layers_forward

    obj, deltas, anchors = rpn_levels()
    (o, d), _ = concat_box_prediction_layers_forward(obj, deltas)
    return o, d, np.concatenate(anchors).astype(np.float64)


def rpn_targets_kw():
    from mrcnn_np.rpn import rpn_targets

    o, d, anchors = rpn_flat()
    labels, targets = rpn_targets(anchors, [boxes4(2)])
    return dict(objectness=o, pred_bbox_deltas=d, labels=labels, regression_targets=targets)


def heads_outputs(R=4, K1=3):
    r = rng(3)
    return dict(class_logits=r.standard_normal((R, K1)), box_regression=0.1 * r.standard_normal((R, 4 * K1)))


def mask_probs(n=2, m=6):
    return rng(2).uniform(0.01, 0.99, (n, m, m))


def coco_ann_file():
    return CTX.coco_dir / "annotations.json"


def sgd_kw():
    return dict(params={"w": np.array([1.0, -2.0]), "v": np.ones((2, 2))},
                grads={"w": np.array([0.5, 0.25]), "v": np.full((2, 2), 0.1)},
                buffers={"w": np.array([0.1, 0.1])}, lr=0.1)


def _masks_of(boxes, h=64, w=64):
    m = np.zeros((len(boxes), h, w), bool)
    for i, (x1, y1, x2, y2) in enumerate(boxes.astype(int)):
        m[i, y1:y2, x1:x2] = True
    return m


# GOOD: per function, a factory of its good arguments {name: value} (the rest take
# their defaults). A function missing here is built from PARAM by parameter name.
GOOD = {
    # anchors
    "anchors.base_anchors": lambda: dict(sizes=(32, 64), aspect_ratios=(0.5, 1.0, 2.0)),
    "anchors.grid_anchors": lambda: dict(base=np.array([[-8.0, -8, 8, 8], [-4, -8, 4, 8]], np.float32),
                                         grid_size=(3, 4), stride=(8, 8)),
    "anchors.pyramid_anchors": lambda: dict(image_size=(64, 64), grid_sizes=[(16, 16), (8, 8)],
                                            sizes=((8,), (16,))),
    "anchors.matterport_pyramid_anchors": lambda: dict(image_size=(64, 64), scales=(8, 16),
                                                       feature_strides=(4, 8)),
    "anchors.feature_grid_sizes": lambda: dict(image_size=(100, 64)),
    "anchors.anchor_counts": lambda: dict(grid_sizes=[(4, 4), (2, 2)]),
    "anchors.num_anchors": lambda: dict(image_size=(100, 64)),
    "anchors.torchvision_resized_size": lambda: dict(image_size=(480, 640)),
    # backbone
    "backbone.init_resnet": lambda: dict(layers=(1, 1, 1, 1), width=4, rng=rng()),
    "backbone.resnet_structure": lambda: dict(params=resnet_params()),
    "backbone.resnet_expected_shapes": lambda: dict(structure=(4, (1, 1, 1, 1))),
    "backbone.check_resnet_params": lambda: dict(params=resnet_params()),
    "backbone.resnet_feature_shapes": lambda: dict(input_shape=(1, 3, 64, 48), layers=(1, 1, 1, 1), width=4),
    "backbone.resnet_conv_specs": lambda: dict(structure=(4, (1, 1, 1, 1))),
    "backbone.resnet_receptive_fields": lambda: dict(layers=(1, 1, 1, 1)),
    "backbone.resnet_forward": lambda: dict(params=resnet_params(), x=fmap((1, 3, 32, 32))),
    "backbone.resnet_backward": lambda: (lambda f: dict(dfeatures={k: np.ones_like(v) for k, v in f[0].items()},
                                                        cache=f[1]))(
        _fwd("backbone.resnet_forward", params=resnet_params(), x=fmap((1, 3, 32, 32)))),
    "backbone.resnet_trainable_keys": lambda: dict(params=resnet_params(), trainable_layers=3),
    "backbone.bottleneck_forward": bottleneck_kw,
    "backbone.bottleneck_backward": lambda: _backward_args("backbone.bottleneck_forward", bottleneck_kw()),
    # boxes
    "boxes.box_area": lambda: dict(boxes=boxes4()),
    "boxes.box_iou": lambda: dict(boxes1=boxes4(3), boxes2=boxes4(4, offset=2.0)),
    "boxes.clip_boxes_to_image": lambda: dict(boxes=boxes4() * 2 - 5, size=(40, 50)),
    "boxes.remove_small_boxes": lambda: dict(boxes=boxes4(), min_size=12.0),
    "boxes.nms": lambda: dict(boxes=np.concatenate([boxes4(), boxes4(offset=1.0)]),
                              scores=np.linspace(1, 0.1, 6), iou_threshold=0.5),
    "boxes.batched_nms": lambda: dict(boxes=np.concatenate([boxes4(), boxes4(offset=1.0)]),
                                      scores=np.linspace(1, 0.1, 6), idxs=np.array([0, 1, 0, 0, 1, 1]),
                                      iou_threshold=0.5),
    "boxes.batched_nms_naive": lambda: dict(boxes=np.concatenate([boxes4(), boxes4(offset=1.0)]),
                                            scores=np.linspace(1, 0.1, 6), idxs=np.array([0, 1, 0, 0, 1, 1]),
                                            iou_threshold=0.5),
    "boxes.encode_boxes": lambda: dict(reference_boxes=boxes4(), proposals=boxes4(offset=1.5),
                                       weights=(10.0, 10.0, 5.0, 5.0)),
    "boxes.decode_boxes": lambda: dict(rel_codes=0.1 * fmap((3, 8)), boxes=boxes4(), weights=(1.0, 1.0, 1.0, 1.0)),
    # config
    "config.MaskRCNNConfig": lambda: dataclasses.asdict(micro_config()),
    "config.own_data_config": lambda: dict(num_classes=3),
    # data.coco
    "data.coco.load_coco": lambda: dict(annotation_file=coco_ann_file(), load_images=False),
    "data.coco.mask_to_polygons": lambda: dict(mask=_masks_of(boxes4(1), 32, 32)[0]),
    "data.coco.write_coco_dataset": lambda: dict(dataset=[CTX.dataset[0]], out_dir=CTX.tmp / "write_coco",
                                                 category_names=("a", "b", "c")),
    "data.coco.rle_encode": lambda: dict(mask=_masks_of(boxes4(1), 32, 32)[0]),
    "data.coco.rle_decode": lambda: dict(rle={"size": [4, 3], "counts": [2, 5, 5]}),
    "data.coco.rle_counts_from_mask": lambda: dict(mask=_masks_of(boxes4(1), 32, 32)[0]),
    "data.coco.rle_counts_to_string": lambda: dict(counts=np.array([2, 5, 5, 40, 3])),
    "data.coco.rle_counts_from_string": lambda: dict(s="52203"),
    "data.coco.polygon_to_mask": lambda: dict(polygons=[[1.0, 1.0, 10.0, 2.0, 5.0, 9.0]], h=12, w=11),
    "data.coco.polygon_to_mask_naive": lambda: dict(polygon=[1.0, 1.0, 10.0, 2.0, 5.0, 9.0], h=12, w=11),
    "data.coco.detections_to_coco_results": lambda: dict(detections=copy.deepcopy(CTX.dets), image_ids=[1, 2]),
    "data.coco.write_coco_results": lambda: dict(path=CTX.tmp / "results.json",
                                                 detections=copy.deepcopy(CTX.dets), image_ids=[1, 2]),
    "data.coco.load_coco_results": lambda: dict(
        results=[{"image_id": 1, "category_id": 1, "bbox": [1.0, 2.0, 10.0, 12.0], "score": 0.9}],
        coco=CTX.coco),
    # data.shapes
    "data.shapes.shape_mask": lambda: dict(kind=2, cx=10.0, cy=12.0, size=5.0, image_size=(24, 32)),
    "data.shapes.render_shapes": lambda: dict(shapes=[(1, 8.0, 8.0, 4.0, (1.0, 0.0, 0.0)),
                                                      (2, 20.0, 12.0, 5.0, (0.0, 1.0, 0.0))],
                                              image_size=(24, 32), background=(0.2, 0.2, 0.2)),
    "data.shapes.masks_to_boxes": lambda: dict(masks=_masks_of(boxes4(2), 64, 64)),
    "data.shapes.ShapesDataset": lambda: dict(num_images=2, image_size=32),
    # evaluate
    "evaluate.coco_evaluate": lambda: dict(ground_truth=copy.deepcopy(CTX.gts), detections=copy.deepcopy(CTX.dets)),
    "evaluate.summarize": lambda: dict(stats=np.linspace(0, 1, 12)),
    "evaluate.box_iou_coco": lambda: dict(dt_boxes=boxes4(3), gt_boxes=boxes4(2, offset=1.0),
                                          iscrowd=np.array([False, True])),
    "evaluate.mask_iou_coco": lambda: dict(dt_masks=_masks_of(boxes4(3)), gt_masks=_masks_of(boxes4(2, offset=1)),
                                           iscrowd=np.array([False, True])),
    "evaluate.evaluate_image_naive": lambda: dict(ious=np.array([[0.8, 0.1], [0.6, 0.55], [0.0, 0.2]]),
                                                  gt_ignore=np.array([False, False]),
                                                  gt_crowd=np.array([False, True]),
                                                  det_out_of_range=np.array([False, False, True]), threshold=0.5),
    "evaluate.precision_recall_curve": lambda: dict(scores=np.array([0.9, 0.8, 0.5, 0.3]),
                                                    is_tp=np.array([True, False, True, False]), num_gt=3,
                                                    ignored=np.array([False, False, False, True])),
    "evaluate.simulate_detections": lambda: dict(ground_truth=copy.deepcopy(CTX.gts), noise=0.1, rng=rng(),
                                                 false_positives=1.0),
    # fpn
    "fpn.init_resnet_fpn_backbone": lambda: dict(layers=(1, 1, 1, 1), width=4, out_channels=6, rng=rng()),
    "fpn.backbone_forward": backbone_kw,
    "fpn.backbone_backward": lambda: (lambda f: dict(dpyramid=[np.ones_like(v) for v in f[0]],
                                                     cache=f[1]))(_fwd("fpn.backbone_forward", **backbone_kw())),
    "fpn.init_fpn": lambda: dict(in_channels_list=[4, 8], out_channels=6, rng=rng()),
    "fpn.fpn_structure": lambda: dict(params=fpn_kw()["params"]),
    "fpn.check_fpn_params": lambda: dict(params=fpn_kw()["params"]),
    "fpn.fpn_forward": fpn_kw,
    "fpn.fpn_backward": lambda: (lambda f: dict(dpyramid=[np.ones_like(v) for v in f[0]],
                                                cache=f[1]))(_fwd("fpn.fpn_forward", **fpn_kw())),
    "fpn.fpn_level_names": lambda: dict(num_levels=4),
    # gradcheck
    "gradcheck.numeric_gradient": lambda: (lambda x: dict(f=lambda: (x ** 2).sum(), x=x))(np.array([1.0, 2.0, -0.5])),
    "gradcheck.relative_error": lambda: dict(a=np.array([1.0, 2.0]), b=np.array([1.0, 2.1])),
    "gradcheck.adjoint_error": lambda: dict(forward=lambda x: 2 * x, adjoint=lambda y: 2 * y, x_shape=(3, 2),
                                            y_shape=(3, 2), rng=rng()),
    # io
    "io.save_checkpoint": lambda: dict(path=CTX.tmp / "save.npz", params={"a": np.ones(3)}, meta={"step": 1}),
    "io.load_checkpoint": lambda: dict(path=CTX.checkpoint),
    "io.save_safetensors": lambda: dict(path=CTX.tmp / "save.safetensors", params={"a": np.ones(3, np.float32)},
                                        metadata={"k": "v"}),
    "io.load_safetensors": lambda: dict(path=CTX.safetensors),
    "io.load_torch_state_dict": lambda: dict(path=DATA / "tiny_zip.pth"),
    # matching
    "matching.matcher": lambda: dict(match_quality_matrix=np.array([[0.8, 0.2, 0.5, 0.1], [0.1, 0.75, 0.4, 0.0]])),
    "matching.matcher_naive": lambda: dict(
        match_quality_matrix=np.array([[0.8, 0.2, 0.5, 0.1], [0.1, 0.75, 0.4, 0.0]])),
    "matching.balanced_positive_negative_sampler": lambda: dict(labels=np.array([1, 0, -1, 1, 0, 0, 2]),
                                                                batch_size_per_image=4, rng=rng()),
    # model
    "model.init_params": lambda: dict(config=CTX.config, rng=rng()),
    "model.trainable_keys": lambda: dict(params=CTX.params, config=CTX.config),
    "model.forward_train": lambda: dict(params=CTX.params, images=CTX.batch[0], targets=copy.deepcopy(CTX.batch[1]),
                                        config=CTX.config, rng=rng(1)),
    "model.backward": lambda: dict(cache=CTX.model_cache),
    # parallel
    "parallel.loss_counts": lambda: dict(cache=CTX.model_cache),
    "parallel.shard_weights": lambda: dict(counts=[{k: c for k in mrcnn_np.model.LOSS_NAMES} for c in (3, 1)]),
    "model.loss_and_grads": lambda: dict(params=CTX.params, images=CTX.batch[0],
                                         targets=copy.deepcopy(CTX.batch[1]), config=CTX.config, rng=rng(1)),
    "model.predict": lambda: dict(params=CTX.params, images=CTX.batch[0], config=CTX.config),
    "model.detect": lambda: dict(params=CTX.params, images=[im.copy() for im in CTX.raw_images[:1]],
                                 config=CTX.config),
    "model.roi_scales": lambda: dict(pyramid_shapes=[(1, 8, 16, 16), (1, 8, 8, 8), (1, 8, 4, 4), (1, 8, 2, 2)],
                                     batch_hw=(64, 64)),
    # ops
    "ops.conv2d_forward": lambda: dict(**conv_kw(), stride=2, padding=1),
    "ops.conv2d_backward": lambda: _backward_args("ops.conv2d_forward", dict(**conv_kw(), stride=2, padding=1)),
    "ops.conv2d_naive": lambda: dict(**conv_kw(), stride=2, padding=1),
    "ops.conv2d_backward_naive": lambda: dict(dout=np.ones((2, 4, 3, 4)), x=conv_kw()["x"], w=conv_kw()["w"],
                                              stride=2, padding=1),
    "ops.conv_output_size": lambda: dict(size=7, kernel=3, stride=2, padding=1),
    "ops.conv_transpose2d_forward": lambda: dict(**convt_kw(), stride=2),
    "ops.conv_transpose2d_backward": lambda: _backward_args("ops.conv_transpose2d_forward",
                                                            dict(**convt_kw(), stride=2)),
    "ops.conv_transpose2d_naive": lambda: dict(**convt_kw(), stride=2),
    "ops.max_pool2d_forward": lambda: dict(x=fmap(), kernel_size=3, stride=2, padding=1),
    "ops.max_pool2d_backward": lambda: _backward_args("ops.max_pool2d_forward",
                                                      dict(x=fmap(), kernel_size=3, stride=2, padding=1)),
    "ops.max_pool2d_naive": lambda: dict(x=fmap(), kernel_size=3, stride=2, padding=1),
    "ops.linear_forward": lambda: dict(x=fmap((3, 5)), w=fmap((4, 5), seed=1), b=fmap((4,), seed=2)),
    "ops.linear_backward": lambda: _backward_args(
        "ops.linear_forward", dict(x=fmap((3, 5)), w=fmap((4, 5), seed=1), b=fmap((4,), seed=2))),
    "ops.relu_forward": lambda: dict(x=fmap()),
    "ops.relu_backward": lambda: _backward_args("ops.relu_forward", dict(x=fmap())),
    "ops.sigmoid_forward": lambda: dict(x=fmap()),
    "ops.sigmoid_backward": lambda: _backward_args("ops.sigmoid_forward", dict(x=fmap())),
    "ops.sigmoid": lambda: dict(x=fmap()),
    "ops.softmax": lambda: dict(x=fmap((3, 4))),
    "ops.frozen_batch_norm_forward": bn_kw,
    "ops.frozen_batch_norm_backward": lambda: _backward_args("ops.frozen_batch_norm_forward", bn_kw()),
    "ops.upsample_nearest_forward": lambda: dict(x=fmap(), size=(9, 14)),
    "ops.upsample_nearest_backward": lambda: _backward_args("ops.upsample_nearest_forward",
                                                            dict(x=fmap(), size=(9, 14))),
    "ops.upsample_nearest_naive": lambda: dict(x=fmap(), size=(9, 14)),
    "ops.resize_bilinear_forward": lambda: dict(x=fmap(), size=(9, 5)),
    "ops.resize_bilinear_backward": lambda: _backward_args("ops.resize_bilinear_forward", dict(x=fmap(), size=(9, 5))),
    "ops.resize_bilinear": lambda: dict(x=fmap(), size=(9, 5)),
    "ops.resize_bilinear_naive": lambda: dict(x=fmap(), size=(9, 5)),
    "ops.softmax_cross_entropy": lambda: dict(logits=fmap((4, 3)), labels=np.array([0, 2, 1, 1])),
    "ops.bce_with_logits": lambda: dict(logits=fmap((4, 3)), targets=rng(1).uniform(0, 1, (4, 3))),
    "ops.smooth_l1": lambda: dict(pred=fmap((4, 3)), target=fmap((4, 3), seed=1), beta=1 / 9),
    # pretrained
    "pretrained.load_resnet_backbone": None,  # in SKIP
    # roi_align
    "roi_align.roi_align_forward": roi_kw,
    "roi_align.roi_align_backward": lambda: _backward_args("roi_align.roi_align_forward", roi_kw()),
    "roi_align.roi_align_naive": roi_kw,
    "roi_align.roi_sample_points": lambda: dict(box=np.array([1.0, 1.5, 8.0, 7.0]), output_size=(2, 3),
                                                sampling_ratio=2),
    "roi_align.roi_pool_naive": lambda: {k: v for k, v in roi_kw().items() if k != "sampling_ratio"},
    "roi_align.level_mapper": lambda: dict(boxes=np.array([[0, 0, 100, 60.0], [0, 0, 10, 10], [0, 0, 800, 900]])),
    "roi_align.multiscale_roi_align_forward": ms_roi_kw,
    "roi_align.multiscale_roi_align_backward": lambda: _backward_args("roi_align.multiscale_roi_align_forward",
                                                                      ms_roi_kw()),
    # roi_heads
    "roi_heads.mask_head_keys": lambda: dict(params=mask_head_kw()["params"]),
    "roi_heads.add_gt_proposals": lambda: dict(proposals=[boxes4(3)], gt_boxes=[boxes4(1, offset=1.0)]),
    "roi_heads.assign_targets_to_proposals": lambda: dict(proposals=[boxes4(4)], gt_boxes=[boxes4(2, offset=1.0)],
                                                          gt_labels=[np.array([1, 2])]),
    "roi_heads.subsample": lambda: dict(labels=[np.array([1, 0, 0, 2, 0])], rng=rng(), batch_size_per_image=3),
    "roi_heads.select_training_samples": lambda: dict(
        proposals=[boxes4(4)], targets=[{"boxes": boxes4(2, offset=1.0), "labels": np.array([1, 2])}], rng=rng(),
        batch_size_per_image=4),
    "roi_heads.select_positive_proposals": lambda: dict(proposals=[boxes4(4)], labels=[np.array([1, 0, 2, 0])],
                                                        matched_idxs=[np.array([0, 0, 1, 0])]),
    "roi_heads.init_box_head": lambda: dict(in_channels=3, resolution=2, representation_size=8, num_classes=4,
                                            rng=rng()),
    "roi_heads.box_head_forward": box_head_kw,
    "roi_heads.box_head_backward": lambda: _backward_args(
        "roi_heads.box_head_forward", box_head_kw(), dout_of=lambda out: tuple(np.ones_like(o) for o in out)),
    "roi_heads.fastrcnn_loss": lambda: dict(**heads_outputs(), labels=np.array([0, 1, 2, 0]),
                                            regression_targets=0.1 * fmap((4, 4))),
    "roi_heads.init_mask_head": lambda: dict(in_channels=3, layers=(4,), dim_reduced=5, num_classes=4, rng=rng()),
    "roi_heads.mask_head_forward": mask_head_kw,
    "roi_heads.mask_head_backward": lambda: (lambda f: dict(dmask_logits=np.ones_like(f[0]), cache=f[1]))(
        _fwd("roi_heads.mask_head_forward", **mask_head_kw())),
    "roi_heads.project_masks_on_boxes": lambda: dict(gt_masks=_masks_of(boxes4(2)), boxes=boxes4(3),
                                                     matched_idxs=np.array([0, 1, 1]), M=7),
    "roi_heads.maskrcnn_loss": lambda: dict(mask_logits=fmap((3, 3, 7, 7)), proposals=[boxes4(3)],
                                            gt_masks=[_masks_of(boxes4(2))], gt_labels=[np.array([1, 2])],
                                            mask_matched_idxs=[np.array([0, 1, 1])]),
    "roi_heads.maskrcnn_inference": lambda: dict(x=fmap((3, 3, 5, 5)), labels=[np.array([1, 2]), np.array([1])]),
    "roi_heads.postprocess_detections": lambda: dict(**heads_outputs(), proposals=[boxes4(4)],
                                                     image_shapes=[(64, 64)]),
    "roi_heads.expand_boxes": lambda: dict(boxes=boxes4(), scale=1.2),
    "roi_heads.expand_masks": lambda: dict(mask=mask_probs(), padding=1),
    "roi_heads.paste_masks_in_image": lambda: dict(masks=mask_probs(), boxes=boxes4(2), img_shape=(48, 64)),
    "roi_heads.paste_masks_in_image_naive": lambda: dict(masks=mask_probs(), boxes=boxes4(2), img_shape=(48, 64)),
    # rpn
    "rpn.init_rpn_head": lambda: dict(in_channels=4, num_anchors=3, rng=rng()),
    "rpn.rpn_head_forward": rpn_head_kw,
    "rpn.rpn_head_backward": lambda: (lambda f: dict(douts=tuple([np.ones_like(a) for a in o] for o in f[0]),
                                                     cache=f[1]))(_fwd("rpn.rpn_head_forward", **rpn_head_kw())),
    "rpn.concat_box_prediction_layers_forward": lambda: dict(box_cls=rpn_levels()[0],
                                                             box_regression=rpn_levels()[1]),
    "rpn.concat_box_prediction_layers_backward": lambda: (lambda f: dict(
        douts=tuple(np.ones_like(o) for o in f[0]), cache=f[1]))(
        _fwd("rpn.concat_box_prediction_layers_forward", box_cls=rpn_levels()[0], box_regression=rpn_levels()[1])),
    "rpn.assign_targets_to_anchors": lambda: dict(anchors=rpn_flat()[2], gt_boxes=boxes4(2)),
    "rpn.rpn_targets": lambda: dict(anchors=rpn_flat()[2], gt_boxes_per_image=[boxes4(2)]),
    "rpn.sample_anchors": lambda: dict(labels=np.array([[1, 0, -1, 0, 1, 0]]), rng=rng(), batch_size_per_image=4),
    "rpn.rpn_loss_from_samples": lambda: dict(**rpn_targets_kw(), pos_mask=rpn_targets_kw()["labels"] == 1,
                                              neg_mask=rpn_targets_kw()["labels"] == 0),
    "rpn.rpn_loss": lambda: dict(**rpn_targets_kw(), rng=rng()),
    "rpn.decode_proposals": lambda: dict(pred_bbox_deltas=rpn_flat()[1], anchors=rpn_flat()[2]),
    "rpn.filter_proposals": lambda: dict(proposals=_fwd("rpn.decode_proposals", pred_bbox_deltas=rpn_flat()[1],
                                                        anchors=rpn_flat()[2]),
                                         objectness=rpn_flat()[0], image_shapes=[(32, 32)],
                                         num_anchors_per_level=[192, 48], pre_nms_top_n=50, post_nms_top_n=20),
    "rpn.generate_proposals": lambda: dict(objectness=rpn_levels()[0], pred_bbox_deltas=rpn_levels()[1],
                                           anchors=rpn_levels()[2], image_shapes=[(32, 32)], mode="test"),
    # trace
    "trace.trace": lambda: dict(params=CTX.params, images=[im.copy() for im in CTX.raw_images[:1]],
                                config=CTX.config),
    "trace.rpn_recall": lambda: dict(traces=CTX.traces, gt_boxes=[CTX.gts[0]["boxes"].copy()]),
    "trace.iou_matrix": lambda: dict(gt=boxes4(2), pred=boxes4(3, offset=1.0)),
    "trace.confusion_summary": lambda: dict(gts=copy.deepcopy(CTX.gts), dets=copy.deepcopy(CTX.dets), num_classes=4),
    # train
    "train.learning_rate": lambda: dict(step=5, base_lr=0.02, warmup_iters=10, milestones=(8, 20)),
    "train.sgd_step": sgd_kw,
    "train.global_norm": lambda: dict(grads={"a": np.array([3.0, 0.0]), "b": np.array([[4.0]])}),
    "train.clip_grad_norm": lambda: dict(grads={"a": np.array([3.0, 0.0]), "b": np.array([[4.0]])}, max_norm=1.0),
    "train.hflip": lambda: dict(image=fmap((3, 64, 64)), target={"boxes": boxes4(2), "labels": np.array([1, 2]),
                                                                  "masks": _masks_of(boxes4(2))}),
    "train.training_target": lambda: dict(item=dict(CTX.dataset[0])),
    "train.dataset_batch": lambda: dict(dataset=CTX.dataset, indices=[0, 2], rng=rng(), hflip_prob=0.5),
    "train.shapes_batch": lambda: dict(dataset=CTX.dataset, indices=[0, 2]),
    "train.load_batch": lambda: dict(dataset=CTX.dataset, indices=[0, 2], config=CTX.config, flips=[True, False]),
    "train.train": lambda: dict(params=copy.deepcopy(CTX.params), config=CTX.config, dataset=CTX.dataset, steps=1,
                                rng=rng(), batch_size=1, progress=False, warmup_iters=0),
    # transform
    "transform.normalize_image": lambda: dict(image=rng().uniform(0, 1, (3, 5, 6))),
    "transform.resize_boxes": lambda: dict(boxes=boxes4(), original_size=(64, 64), new_size=(32, 48)),
    "transform.resize_image_and_target": lambda: dict(
        image=rng().uniform(0, 1, (3, 40, 30)),
        target={"boxes": boxes4(2) / 2, "masks": _masks_of(boxes4(2) / 2, 40, 30)},
        min_size=20, max_size=40),
    "transform.batch_images": lambda: dict(images=[fmap((3, 5, 6)), fmap((3, 7, 4), seed=1)], size_divisible=4),
    "transform.transform_forward": lambda: dict(
        images=[rng().uniform(0, 1, (3, 40, 30)), rng(1).uniform(0, 1, (3, 30, 40))],
        targets=[{"boxes": boxes4(2) / 2, "masks": _masks_of(boxes4(2) / 2, 40, 30)},
                 {"boxes": boxes4(1) / 2, "masks": _masks_of(boxes4(1) / 2, 30, 40)}], min_size=20, max_size=40),
    "transform.postprocess": lambda: dict(
        result=[{"boxes": boxes4(2), "masks": mask_probs(2, 7)[:, None], "scores": np.array([0.9, 0.8])}],
        image_shapes=[(64, 64)], original_image_sizes=[(128, 100)]),
}
del GOOD["pretrained.load_resnet_backbone"]

# SKIP: public callables the harness does not call, each with its reason.
SKIP = {
    # records: NamedTuple / dataclass results and caches that hold what a function
    # computed; built by the library, not validated on construction (not API input)
    **{name: "record type (a NamedTuple or dataclass the library builds)" for name, obj in PUBLIC.items()
       if inspect.isclass(obj) and (issubclass(obj, tuple) or (dataclasses.is_dataclass(obj)
                                                                and name != "config.MaskRCNNConfig"))},
    "data.coco.CocoData": "built by load_coco from a checked json; its records are load_coco's internal format "
                          "(load_coco is fuzzed, and its files in test_file_loaders_refuse_corrupt_files)",
    "pretrained.torchvision_model": "needs a full torchvision Mask R-CNN .pth (170 MB; test_pretrained_torch); "
                                    "its corrupt files are fuzzed in test_file_loaders_refuse_corrupt_files",
    "parallel.DataParallel": "starts worker processes (about a second each): its argument checks, a "
                             "worker's error and a closed pool are tested in test_parallel",
    "pretrained.load_resnet_backbone": "needs a torchvision ResNet .pth (test_pretrained_torch); its corrupt "
                                       "files are fuzzed in test_file_loaders_refuse_corrupt_files",
}

# PARAM: good values by parameter name, for a public function not in GOOD.
PARAM = {
    "boxes": lambda: boxes4(),
    "scores": lambda: np.linspace(0.9, 0.1, 3),
    "rng": lambda: rng(),
    "config": lambda: CTX.config,
    "params": lambda: CTX.params,
    "x": lambda: fmap(),
    "image": lambda: rng().uniform(0, 1, (3, 5, 6)),
    "mask": lambda: _masks_of(boxes4(1), 32, 32)[0],
    "masks": lambda: _masks_of(boxes4(2), 64, 64),
    "num_classes": lambda: 4,
    "iou_threshold": lambda: 0.5,
}

# BAD: per function, out-of-range values that must be refused (a success is a silent pass).
BAD = {
    "boxes.nms": {"iou_threshold": [1.5, -0.5]},
    "boxes.nms_naive": {"iou_threshold": [1.5, -0.5]},
    "boxes.batched_nms": {"iou_threshold": [1.5, -0.5]},
    "boxes.batched_nms_naive": {"iou_threshold": [1.5, -0.5]},
    "matching.matcher": {"high_threshold": [1.5, -0.5], "low_threshold": [1.5, -0.5]},
    "matching.matcher_naive": {"high_threshold": [1.5, -0.5], "low_threshold": [1.5, -0.5]},
    "roi_heads.postprocess_detections": {"score_thresh": [1.5, -0.5], "nms_thresh": [1.5, -0.5],
                                         "detections_per_img": [0, -1]},
    "train.sgd_step": {"momentum": [1.5, -0.5], "lr": [-0.1], "weight_decay": [-1.0]},
    "ops.conv_output_size": {"size": [0, -3], "kernel": [0, 10], "stride": [0], "padding": [-1]},
    "model.roi_scales": {"batch_hw": [(0, 64), (64, 0)]},
    "gradcheck.numeric_gradient": {"h": [0.0, -1e-6]},
    "io.save_checkpoint": {"meta": [{"x": float("nan")}, {"x": float("inf")}]},
}

# Arguments that may legitimately be None although their default is not None.
ACCEPTS_NONE = {
    # b=None: no bias (the layers' documented "b: (F,) or None")
    *{(f"ops.{fn}", "b") for fn in ("conv2d_forward", "conv2d_naive", "conv_transpose2d_forward",
                                   "conv_transpose2d_naive", "linear_forward")},
    ("fpn.init_resnet_fpn_backbone", "layers"),  # None: init_resnet's default, ResNet-50
}

# Functions that read only some entries of a dict argument (its structure, or one block of
# a whole model's params): a bad value in an entry they do not read is not theirs to refuse.
PARTIAL_DICTS = {"backbone.resnet_structure", "backbone.resnet_trainable_keys", "backbone.bottleneck_forward",
                 "fpn.fpn_structure", "roi_heads.mask_head_keys", "model.trainable_keys"}

# Dict entries a function documents as ignored (a dataset item's masks, for a box-only
# diagnostic): bad values there are not refused.
IGNORED_KEYS = {"trace.confusion_summary": {"masks"}}

# Mutations that can make two arguments disagree: the message may name either one.
CONSISTENCY = {"short", "long", "empty", "ndim+1", "ndim-1", "last+1", "last=0", "otherfloat", "int", "float16",
               "float", "int32", "missing key", "extra key", "bool", "uint8", "float16*64", "random"}

# Output paths: a missing file is created there (input paths must exist).
OUTPUT_PATHS = {("data.coco.write_coco_dataset", "out_dir"), ("data.coco.write_coco_results", "path"),
                ("io.save_checkpoint", "path"), ("io.save_safetensors", "path")}

# str parameters that pick one of a few choices (a bogus value must be refused) and
# str parameters that only label messages or name files (any str will do).
CHOICES = {"method", "iou_type", "reduction", "kind", "mode", "stage"}
LABELS = {"what"}

# Documented exceptions beyond ValueError/TypeError: train stops with FloatingPointError when
# the losses or the gradient norm stop being finite (finite but absurd parameters diverge).
DOCUMENTED_ERRORS = {"train.train": (FloatingPointError,)}

# Results that differ between two equal calls (train's history records seconds).
UNREPEATABLE = {"train.train"}

# Aliases: a message may name the argument by another name (e.g. a field of it).
ALIASES = {
    # a zero-size shape makes forward's output disagree with the other shape: named from there
    "gradcheck.adjoint_error": {"x_shape": {"forward", "adjoint"}, "y_shape": {"forward", "adjoint"}},
    # the documented names of the parts of a tuple argument
    "rpn.rpn_head_backward": {"douts": {"dobjectness", "dpred_bbox_deltas"}},
    "rpn.concat_box_prediction_layers_backward": {"douts": {"dobjectness", "dpred_bbox_deltas"}},
    "roi_heads.box_head_backward": {"dout": {"dclass_logits", "dbox_regression"}},
    # another padding / stride / dilation changes the output size dout must have: named from dout
    "ops.conv2d_backward_naive": {k: {"dout"} for k in ("stride", "padding", "dilation")},
}


def callable_signature(qualname):
    obj = PUBLIC[qualname]
    return inspect.signature(obj)


def good_kwargs(qualname):
    """{name: value} of the good call, or raise LookupError naming the parameter we cannot build."""
    if qualname in GOOD:
        return GOOD[qualname]()
    kwargs = {}
    for p in callable_signature(qualname).parameters.values():
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        if p.name in PARAM:
            kwargs[p.name] = PARAM[p.name]()
        elif p.default is p.empty:
            raise LookupError(f"{qualname}: no good value for {p.name!r} (add it to GOOD, PARAM or SKIP)")
    return kwargs


def all_kwargs(qualname):
    """The good call with every defaulted parameter made explicit (so it can be mutated)."""
    kwargs = good_kwargs(qualname)
    for p in callable_signature(qualname).parameters.values():
        if p.name not in kwargs and p.default is not p.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            kwargs[p.name] = copy.deepcopy(p.default)
    return kwargs


FUZZED = sorted(n for n in PUBLIC if n not in SKIP)


# =========================================================================== mutations


class Mutation(NamedTuple):
    label: str
    value: object
    must_fail: bool = False
    kind: str = ""  # "noncontig" / "float16": success has a reference to compare with


def _nonfinite_variants(v):
    out = []
    for label, bad in (("nan", np.nan), ("inf", np.inf), ("-inf", -np.inf)):
        a = v.copy()
        a.flat[a.size // 2] = bad
        out.append((label, a))
    return out


def array_mutations(v, *, boundary, depth=0):
    """Bad versions of a good ndarray."""
    out = [Mutation("str", "bogus", True), Mutation("list", v.tolist())]
    if v.ndim >= 1:
        out.append(Mutation("ndim+1", v[None]))
        out.append(Mutation("ndim-1", v[0] if v.shape[0] else v.reshape(v.shape[1:])))
        out.append(Mutation("last+1", np.concatenate([v, v[..., :1] if v.shape[-1] else np.zeros(v.shape[:-1] + (1,),
                                                                                                   v.dtype)], -1)))
        out.append(Mutation("last=0", v[..., :0]))
        if v.shape[0]:
            out.append(Mutation("empty", v[:0]))
    else:
        out.append(Mutation("ndim+1", v[None]))
    out.append(Mutation("complex", v.astype(np.complex128) + 0.5j, True))
    if v.size:
        nc = np.repeat(v, 2, axis=-1)[..., ::2] if v.ndim else None
        if nc is not None and not nc.flags.c_contiguous:
            out.append(Mutation("noncontig", nc, kind="noncontig"))
    if v.dtype.kind == "f":
        if v.size:
            for label, bad in _nonfinite_variants(v):
                out.append(Mutation(label, bad, boundary))
            big = np.finfo(v.dtype).max / 8
            scale = big / max(float(np.abs(v).max()), 1.0)
            out.append(Mutation("huge", v * v.dtype.type(scale)))
        out.append(Mutation("zeros", np.zeros_like(v)))
        out.append(Mutation("int", v.astype(np.int64)))
        out.append(Mutation("float16", v.astype(np.float16), kind="float16"))
        if v.size and np.abs(v).max() < 500:  # values whose products overflow float16 (max 65504)
            out.append(Mutation("float16*64", (v * 64).astype(np.float16), kind="float16"))
        out.append(Mutation("otherfloat", v.astype(np.float32 if v.dtype == np.float64 else np.float64)))
        out.append(Mutation("bool", v != 0))
        if v.ndim >= 1 and v.shape[-1] in (4, 5) and v.size:
            s = v.copy()
            o = v.shape[-1] - 4
            s[..., [o, o + 2]] = s[..., [o + 2, o]]
            out.append(Mutation("x2<x1", s))
    elif v.dtype.kind in "iu":
        out.append(Mutation("float", v.astype(np.float64)))
        if v.size:
            out.append(Mutation("negative", v - 100))
            out.append(Mutation("hugeint", v + np.int64(2**40)))
            out.append(Mutation("int32", v.astype(np.int32)))
    elif v.dtype.kind == "b":
        out.append(Mutation("uint8", v.astype(np.uint8)))
        out.append(Mutation("float", v.astype(np.float64)))
        if v.any():
            out.append(Mutation("nanfloat", np.where(v, np.nan, 0.0), boundary))
    return out


def number_mutations(v):
    out = [Mutation("str", "1", True), Mutation("nan", float("nan"), True), Mutation("inf", float("inf"), True),
           Mutation("-inf", -float("inf"), True), Mutation("complex", complex(v, 1), True),
           Mutation("zero", type(v)(0)), Mutation("negative", type(v)(-1)), Mutation("huge", 2 ** 70),
           Mutation("array", np.array([v, v]))]
    if isinstance(v, int):
        out += [Mutation("float", v + 0.5), Mutation("bool", True), Mutation("npint", np.int64(v), kind="noncontig")]
    else:
        out += [Mutation("1.5", 1.5), Mutation("hugefloat", 1e300), Mutation("npfloat", np.float64(v),
                                                                               kind="noncontig")]
    return out


def sequence_mutations(v, *, boundary, ignored=()):
    """Bad versions of a tuple / list of numbers or of arrays or dicts."""
    seq = list if isinstance(v, list) else tuple
    out = [Mutation("str", "bogus", True), Mutation("empty", seq())]
    if len(v):
        out.append(Mutation("short", seq(v[:-1])))
        out.append(Mutation("long", seq(list(v) + [v[-1]])))
        out.append(Mutation("elem=None", seq([None] + list(v[1:]))))
        out.append(Mutation("elem=str", seq(["x"] + list(v[1:]))))
    first = v[0] if len(v) else None
    if isinstance(first, (int, float, np.integer, np.floating)) and not isinstance(first, bool):
        out += [Mutation("zeros", seq([0] * len(v))), Mutation("negative", seq([-1] * len(v))),
                Mutation("elem=nan", seq([float("nan")] + list(v[1:])), True),
                Mutation("elem=inf", seq([float("inf")] + list(v[1:])), True),
                Mutation("elem=1.5", seq([1.5] + list(v[1:]))),
                Mutation("elem=2**70", seq([2 ** 70] + list(v[1:]))),
                ]
        if all(isinstance(x, (int, float, np.integer, np.floating)) for x in v):
            out.append(Mutation("ndarray", np.array(v), kind="noncontig" if isinstance(first, (int, np.integer))
                                else ""))
    elif isinstance(first, np.ndarray):
        for m in array_mutations(first, boundary=boundary):
            if m.label in ("list", "noncontig"):
                continue
            out.append(m._replace(label="[0]:" + m.label, value=seq([m.value] + list(v[1:]))))
    elif isinstance(first, dict):
        for m in dict_mutations(first, boundary=boundary, ignored=ignored):
            out.append(m._replace(label="[0]:" + m.label, value=seq([m.value] + list(v[1:])), kind=""))
    elif isinstance(first, (tuple, list)) and not hasattr(first, "_fields"):
        for m in sequence_mutations(first, boundary=boundary):
            out.append(m._replace(label="[0]:" + m.label, value=seq([m.value] + list(v[1:])), kind=""))
    return out


def dict_mutations(v, *, boundary, partial=False, ignored=()):
    out = [Mutation("str", "bogus", True), Mutation("list", list(v.values()), True)]
    if v:
        keys = list(v)
        out.append(Mutation("missing key", {k: x for k, x in v.items() if k != keys[0]}))
        out.append(Mutation("extra key", {**v, "zzz.extra": np.ones(2)}))
        out.append(Mutation("value=None", {**v, keys[0]: None}))
        out.append(Mutation("key=int", {0: v[keys[0]], **{k: x for k, x in v.items() if k != keys[0]}}))
        # mutate the first array-valued entry (and the last, often a different kind)
        arr_keys = [k for k in keys if isinstance(v[k], np.ndarray)]
        for k in dict.fromkeys(arr_keys[:1] + arr_keys[-1:]):
            for m in array_mutations(v[k], boundary=boundary):
                if m.label in ("list", "noncontig", "str"):
                    continue
                out.append(m._replace(label=f"[{k!r}]:" + m.label, value={**v, k: m.value}, kind="",
                                      must_fail=m.must_fail and not partial and k not in ignored))
        num_keys = [k for k in keys if isinstance(v[k], (int, float)) and not isinstance(v[k], bool)]
        for k in num_keys[:1]:
            out.append(Mutation(f"[{k!r}]=nan", {**v, k: float("nan")}))
    return out


def mutations(qualname, name, v):
    """Every bad version of argument ``name`` (good value ``v``) of ``qualname``."""
    boundary = is_boundary(qualname)
    p = callable_signature(qualname).parameters[name]
    none_ok = p.default is None or (qualname, name) in ACCEPTS_NONE
    out = [Mutation("None", None, not none_ok)]
    if isinstance(v, np.ndarray):
        out += array_mutations(v, boundary=boundary)
    elif isinstance(v, bool):
        out += [Mutation("str", "yes", True), Mutation("int 2", 2)]
    elif isinstance(v, (int, float)):
        out += number_mutations(v)
    elif isinstance(v, str):
        out += [Mutation("bogus", "bogus-value", name in CHOICES), Mutation("int", 3, name not in LABELS)]
    elif v is None:  # an optional argument left out: its type is not known here
        out += [Mutation("str", "bogus"), Mutation("int", 3)]
    elif isinstance(v, type) and issubclass(v, np.generic) or isinstance(v, np.dtype):  # a dtype
        out += [Mutation("int64", np.int64, True), Mutation("bogus", "bogus", True), Mutation("int", 3, True),
                Mutation("complex", np.complex128, True)]
    elif isinstance(v, pathlib.Path):
        output = (qualname, name) in OUTPUT_PATHS
        out += [Mutation("missing", v.with_name("missing_" + v.name), not output),
                Mutation("folder", v.parent, not output), Mutation("int", 3, True)]
    elif isinstance(v, np.random.Generator):
        out += [Mutation("seed", 0, True), Mutation("RandomState", np.random.RandomState(0), True),
                Mutation("str", "rng", True)]
    elif dataclasses.is_dataclass(v) and not isinstance(v, type):
        out += [Mutation("dict", dataclasses.asdict(v), True), Mutation("str", "config", True)]
    elif isinstance(v, tuple) and hasattr(v, "_fields"):  # a NamedTuple cache
        out += [Mutation("tuple", tuple(v), True), Mutation("list", list(v), True), Mutation("str", "cache", True)]
    elif isinstance(v, dict):
        out += dict_mutations(v, boundary=boundary, partial=qualname in PARTIAL_DICTS,
                              ignored=IGNORED_KEYS.get(qualname, ()))
    elif isinstance(v, (tuple, list)):
        out += sequence_mutations(v, boundary=boundary, ignored=IGNORED_KEYS.get(qualname, ()))
    elif callable(v):
        out += [Mutation("not callable", 3, True), Mutation("str", "f", True)]
    else:  # a dataset object or a record: a few type errors
        out += [Mutation("str", "bogus", True), Mutation("int", 3, True)]
    for bad in BAD.get(qualname, {}).get(name, []):
        out.append(Mutation(f"BAD {bad!r}", bad, True))
    return out


# =========================================================================== the contract


class Outcome(NamedTuple):
    result: object
    error: BaseException | None
    warnings: list


def call(qualname, kwargs):
    fn = PUBLIC[qualname]
    with warnings.catch_warnings(record=True) as caught, np.errstate(all="warn"):
        warnings.simplefilter("always")
        try:
            result = fn(**kwargs)
            error = None
        except Exception as exc:  # noqa: BLE001 -- classified by the contract
            result, error = None, exc
    runtime = [w for w in caught if issubclass(w.category, RuntimeWarning)]
    return Outcome(result, error, runtime)


def _names_in(name, value):
    names = {name}
    if isinstance(value, (str, pathlib.Path)):
        names.add(str(value))
        names.add(pathlib.Path(value).name)
    return names


def problem(qualname, name, mutation, outcome, names):
    """None if ``outcome`` honours the contract, else a one-line description."""
    where = f"{qualname}({name}: {mutation.label})"
    if outcome.error is None:
        if outcome.warnings:
            w = outcome.warnings[0]
            loc = f"{pathlib.Path(w.filename).name}:{w.lineno}"
            return f"{where}: RuntimeWarning {w.category.__name__}: {w.message} ({loc})"
        if mutation.must_fail:
            return f"{where}: silent pass (accepted)"
        return None
    exc = outcome.error
    allowed = (ValueError, TypeError) + ((FileNotFoundError, FileExistsError, IsADirectoryError, NotADirectoryError)
                                         if isinstance(mutation.value, (str, pathlib.Path, int)) or mutation.value
                                         is None else ())
    if isinstance(exc, DOCUMENTED_ERRORS.get(qualname, ())):
        return None
    if not isinstance(exc, allowed) or isinstance(exc, (KeyError, IndexError)):
        tb = exc.__traceback__
        while tb.tb_next is not None:
            tb = tb.tb_next
        loc = f"{pathlib.Path(tb.tb_frame.f_code.co_filename).name}:{tb.tb_lineno}"
        return f"{where}: crash {type(exc).__name__}: {str(exc)[:150]} ({loc})"
    msg = str(exc)
    if mutation.label.split(":")[-1] in CONSISTENCY:  # a mismatch may be told from the other side
        names = names | set(callable_signature(qualname).parameters)
    if not any(n in msg for n in names):
        return f"{where}: {type(exc).__name__} does not name {name!r}: {msg[:150]}"
    return None


def same(a, b):
    """Exact equality of nested results (arrays bit for bit, NaN equal to NaN)."""
    if callable(a) or type(a).__module__.startswith(("mrcnn_np", "scipy")):
        return True  # caches and datasets: compared through what they produce elsewhere
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        a, b = np.asarray(a), np.asarray(b)
        return a.shape == b.shape and a.dtype == b.dtype and np.array_equal(a, b, equal_nan=a.dtype.kind in "fc")
    if dataclasses.is_dataclass(a) and not isinstance(a, type):
        return type(a) is type(b) and same(dataclasses.astuple(a), dataclasses.astuple(b))
    if isinstance(a, dict):
        return isinstance(b, dict) and list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    try:
        return bool(a == b)
    except Exception:  # noqa: BLE001
        return False


def close16(a, b):
    """a (from a float16 argument) equals b (from the same values in float32) up to float16 rounding."""
    if isinstance(a, np.ndarray) and isinstance(b, np.ndarray):
        if a.shape != b.shape:
            return False
        if a.dtype.kind not in "fc" or b.dtype.kind not in "fc":
            return np.array_equal(a, b)
        # float16 rounding accumulates over a few operations: compare with the scale of the result
        a, b = a.astype(np.float64), b.astype(np.float64)
        scale = float(np.abs(b[np.isfinite(b)]).max()) if np.isfinite(b).any() else 1.0
        return np.allclose(a, b, rtol=1e-2, atol=1e-2 * max(scale, 1.0), equal_nan=True)
    if isinstance(a, dict):
        return isinstance(b, dict) and list(a) == list(b) and all(close16(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and not hasattr(a, "_fields"):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(close16(x, y) for x, y in zip(a, b))
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=2e-3, abs_tol=2e-3) or (math.isnan(a) and math.isnan(b))
    return True


def _as32(value):
    if isinstance(value, np.ndarray) and value.dtype == np.float16:
        return value.astype(np.float32)
    if isinstance(value, dict):
        return {k: _as32(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)) and not hasattr(value, "_fields"):
        return type(value)(_as32(v) for v in value)
    return value


def check_call(qualname, name, mutation, kwargs, good_outcome):
    """Run one bad call; return a problem string or None."""
    # deep copies: a function that works in place (sgd_step, clip_grad_norm) must not
    # change the good arguments the next mutations are built from
    bad = {**copy.deepcopy({k: v for k, v in kwargs.items() if k != name}), name: copy.deepcopy(mutation.value)}
    outcome = call(qualname, bad)
    found = problem(qualname, name, mutation, outcome, _names_in(name, mutation.value) | ALIASES.get(
        qualname, {}).get(name, set()))
    if found or outcome.error is not None:
        return found
    where = f"{qualname}({name}: {mutation.label})"
    if (mutation.kind == "noncontig" and good_outcome.error is None and qualname not in UNREPEATABLE
            and not same(outcome.result, good_outcome.result)):
        return f"{where}: result differs from the contiguous/builtin input"
    if mutation.kind == "float16":
        ref = call(qualname, {**copy.deepcopy({k: v for k, v in kwargs.items() if k != name}),
                              name: _as32(mutation.value)})
        if ref.error is None and not close16(outcome.result, ref.result):
            return f"{where}: float16 result differs from the float32 result beyond float16 rounding"
    return None


# =========================================================================== tests


def test_every_public_callable_is_fuzzed_or_skipped():
    assert len(PUBLIC) > 150  # the enumeration reaches every public module
    for name in ("boxes.nms", "data.coco.load_coco", "ops.conv2d_forward", "gradcheck.numeric_gradient",
                 "data.shapes.ShapesDataset", "model.detect"):
        assert name in PUBLIC
    assert not any(n.startswith(("kernels.", "viz.")) for n in PUBLIC)
    stale = set(GOOD) - set(PUBLIC) | set(SKIP) - set(PUBLIC)
    assert not stale, f"GOOD/SKIP entries that are no longer public: {sorted(stale)}"
    missing = []
    for qualname in FUZZED:
        try:
            good_kwargs(qualname)
        except LookupError as exc:
            missing.append(str(exc))
    assert not missing, "\n".join(missing)


@pytest.mark.parametrize("qualname", FUZZED)
def test_bad_inputs_are_refused_or_handled(qualname):
    """One argument at a time, every mutation: the contract of the module docstring."""
    kwargs = all_kwargs(qualname)
    good = call(qualname, copy.deepcopy(kwargs))
    assert good.error is None, f"{qualname}: the good call fails: {good.error!r}"
    assert not good.warnings, f"{qualname}: the good call warns: {good.warnings[0].message}"
    problems = []
    for name, value in kwargs.items():
        for mutation in mutations(qualname, name, value):
            found = check_call(qualname, name, mutation, kwargs, good)
            if found:
                problems.append(found)
    assert not problems, f"{len(problems)} problems:\n" + "\n".join(problems)


# =========================================================================== random arrays (hypothesis)

# examples per function: the whole model and the file writers cost 10-100 ms a call
EXPENSIVE = {"model.forward_train", "model.loss_and_grads", "model.predict", "model.detect", "model.backward",
             "model.init_params", "trace.trace", "trace.rpn_recall", "train.train", "data.coco.write_coco_dataset",
             "data.coco.write_coco_results", "data.coco.load_coco", "io.save_checkpoint", "io.save_safetensors",
             "evaluate.coco_evaluate", "roi_align.roi_align_naive", "ops.conv2d_naive", "ops.conv2d_backward_naive",
             "ops.conv_transpose2d_naive", "data.coco.polygon_to_mask_naive", "roi_heads.paste_masks_in_image_naive"}
# FUZZ_EXAMPLES=200 (an environment variable) multiplies both for an exploratory run
_SCALE = int(__import__("os").environ.get("FUZZ_EXAMPLES", "8"))
RANDOM_EXAMPLES, RANDOM_EXAMPLES_EXPENSIVE = _SCALE, max(1, _SCALE // 4)

_BIG = {np.dtype(np.float16): 8e3, np.dtype(np.float32): 4e37, np.dtype(np.float64): 2e307}


def _elements(dtype):
    """Values of one dtype: ordinary ones on a 1/8 grid (no subnormals: an IEEE underflow to
    0 is not what this test is about), and the specials: 0, NaN, +-inf, +-huge."""
    dtype = np.dtype(dtype)
    if dtype.kind == "b":
        return st.booleans()
    if dtype.kind in "iu":
        return st.one_of(st.integers(-3 if dtype.kind == "i" else 0, 70),
                         st.sampled_from([2 ** 31, 2 ** 40] + ([-2 ** 40] if dtype.kind == "i" else [])))
    real = st.one_of(st.integers(-800, 800).map(lambda k: k / 8),
                     st.sampled_from([0.0, np.nan, np.inf, -np.inf, _BIG.get(dtype, 1e300), -_BIG.get(dtype, 1e300)]))
    if dtype.kind == "c":
        return st.builds(complex, real, real)
    return real


@st.composite
def random_like(draw, good):
    """An array shaped like ``good`` (or one axis off, or one axis more or less), of its
    dtype or another, with random values and specials."""
    dtype = draw(st.sampled_from([good.dtype] * 4 + [np.dtype(t) for t in (np.float16, np.float32, np.float64,
                                                                          np.int64, np.bool_, np.complex128)]))
    shape = list(good.shape)
    how = draw(st.sampled_from(["same"] * 4 + ["axis", "more", "less"]))
    if how == "axis" and shape:
        i = draw(st.integers(0, len(shape) - 1))
        shape[i] = draw(st.sampled_from([0, 1, shape[i] + 1]))
    elif how == "more":
        shape.insert(draw(st.integers(0, len(shape))), 1)
    elif how == "less" and shape:
        shape.pop(draw(st.integers(0, len(shape) - 1)))
    elements = _elements(dtype)
    return draw(hnp.arrays(dtype, tuple(shape), elements=elements, fill=elements))


@pytest.mark.parametrize("qualname", FUZZED)
def test_fuzz_random_arrays(qualname):
    """hypothesis: a random array (dtype, shape, NaN/inf/huge values) in place of one array
    argument, under the contract of the module docstring (any argument may be named: a shape
    or dtype change can be told from the other side)."""
    kwargs = all_kwargs(qualname)
    arrays = [n for n, v in kwargs.items() if isinstance(v, np.ndarray)]
    if not arrays:
        return  # nothing to draw: the systematic test covers its other arguments
    boundary = is_boundary(qualname)
    good = call(qualname, copy.deepcopy(kwargs))
    examples = RANDOM_EXAMPLES_EXPENSIVE if qualname in EXPENSIVE else RANDOM_EXAMPLES

    @settings(max_examples=examples, suppress_health_check=list(HealthCheck))
    @given(data=st.data())
    def run(data):
        name = data.draw(st.sampled_from(arrays), label="argument")
        value = data.draw(random_like(kwargs[name]), label="value")
        bad_values = value.dtype.kind == "c" or (boundary and value.dtype.kind == "f" and not np.isfinite(value).all())
        mutation = Mutation("random", value, must_fail=bad_values)
        found = check_call(qualname, name, mutation, kwargs, good)
        assert found is None, found

    run()


# =========================================================================== corrupt files


def _npy_bytes():
    buf = _io.BytesIO()
    np.save(buf, np.arange(6.0))
    return buf.getvalue()


def _npz_with_meta(meta_text):
    """A .npz whose __meta__ record holds ``meta_text`` (written by hand, not by save_checkpoint)."""
    buf = _io.BytesIO()
    np.savez(buf, a=np.ones(2), __meta__=np.array(meta_text))
    return buf.getvalue()


def _safetensors_with_header(header):
    import json
    import struct

    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + b"\0" * 16


def corruptions(good_bytes):
    """{label: bytes} of damaged versions of a good file."""
    rnd = np.random.default_rng(0).integers(0, 256, len(good_bytes), dtype=np.uint8).tobytes()
    flipped = bytearray(good_bytes)
    flipped[len(flipped) // 2] ^= 0xFF
    return {
        "empty": b"",
        "one byte": good_bytes[:1],
        "truncated to 10 bytes": good_bytes[:10],
        "truncated by half": good_bytes[:len(good_bytes) // 2],
        "last byte missing": good_bytes[:-1],
        "random bytes": rnd,
        "a flipped byte": bytes(flipped),
        "a .npy": _npy_bytes(),
        "a json": b'{"images": []}',
        "text": b"hello\n",
    }


def _loaders():
    """(name, function taking a path, good file) of every public function that reads a file."""
    from mrcnn_np import io as mio
    from mrcnn_np import pretrained
    from mrcnn_np.data import coco

    return {
        "io.load_checkpoint": (mio.load_checkpoint, lambda: CTX.checkpoint),
        "io.load_safetensors": (mio.load_safetensors, lambda: CTX.safetensors),
        "io.load_torch_state_dict (zip)": (mio.load_torch_state_dict, lambda: DATA / "tiny_zip.pth"),
        "io.load_torch_state_dict (legacy)": (mio.load_torch_state_dict, lambda: DATA / "tiny_legacy.pth"),
        "data.coco.load_coco": (lambda p: coco.load_coco(p, load_images=False), coco_ann_file),
        "data.coco.load_coco_results": (lambda p: coco.load_coco_results(p, CTX.coco), _results_file),
        "pretrained.torchvision_model": (pretrained.torchvision_model, lambda: DATA / "tiny_zip.pth"),
        "pretrained.load_resnet_backbone": (lambda p: pretrained.load_resnet_backbone(p, resnet_params()),
                                            lambda: DATA / "tiny_zip.pth"),
    }


def _results_file():
    from mrcnn_np.data.coco import write_coco_results

    return write_coco_results(CTX.tmp / "results.json", copy.deepcopy(CTX.dets), [1, 2])


def _file_cases():
    """Extra hand-made bad files per loader (the issue's list)."""
    return {
        "io.load_checkpoint": {
            "__meta__ not JSON": _npz_with_meta("{not json"),
            "__meta__ a JSON list": _npz_with_meta("[1, 2]"),
            "__meta__ with NaN": _npz_with_meta('{"x": NaN}'),
        },
        "io.load_safetensors": {
            "a shape whose product overflows": _safetensors_with_header(
                {"a": {"dtype": "F32", "shape": [2 ** 62, 2 ** 62], "data_offsets": [0, 16]}}),
            "a negative shape": _safetensors_with_header(
                {"a": {"dtype": "F32", "shape": [-4], "data_offsets": [0, 16]}}),
            "an unknown dtype": _safetensors_with_header(
                {"a": {"dtype": "Q7", "shape": [4], "data_offsets": [0, 16]}}),
            "a header that is a list": _safetensors_with_header([1, 2]),
        },
        "data.coco.load_coco": {
            "a JSON list": b"[1, 2]",
            "images not a list": b'{"images": 3, "annotations": [], "categories": []}',
            "NaN in a bbox": (b'{"images": [{"id": 1, "file_name": "a.png", "height": 4, "width": 4}], '
                              b'"annotations": [{"id": 1, "image_id": 1, "category_id": 1, '
                              b'"bbox": [0, 0, NaN, 2], "iscrowd": 0, "area": 4, '
                              b'"segmentation": [[0, 0, 2, 0, 2, 2]]}], "categories": [{"id": 1, "name": "x"}]}'),
        },
        "data.coco.load_coco_results": {
            "a JSON object": b'{"image_id": 1}',
            "NaN score": b'[{"image_id": 1, "category_id": 1, "bbox": [0, 0, 2, 2], "score": NaN}]',
        },
    }


def _file_params():
    cases = []
    for name in _loaders():
        key = name.split(" ")[0]
        labels = list(corruptions(b"0123456789abcdef")) + list(_file_cases().get(key, {}))
        cases += [(name, label) for label in labels + ["missing file", "a folder"]]
    return cases


@pytest.mark.parametrize("loader, damage", _file_params())
def test_file_loaders_refuse_corrupt_files(loader, damage):
    """Every loader, given a damaged, renamed, missing or hand-made bad file, raises one
    ValueError (FileNotFoundError / IsADirectoryError for a missing file or a folder) whose
    message names the file -- never BadZipFile, EOFError, JSONDecodeError, UnpicklingError,
    a bare 'cannot reshape', or a context-manager TypeError."""
    fn, good = _loaders()[loader]
    good_path = pathlib.Path(good())
    key = loader.split(" ")[0]
    if damage == "missing file":
        path = good_path.with_name("missing" + good_path.suffix)
    elif damage == "a folder":
        path = CTX.tmp / ("folder" + good_path.suffix)
        path.mkdir(exist_ok=True)
    else:
        data = {**corruptions(good_path.read_bytes()), **_file_cases().get(key, {})}[damage]
        path = CTX.tmp / "damaged" / loader.replace(" ", "_") / damage.replace(" ", "_") / good_path.name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    with warnings.catch_warnings(record=True) as caught, np.errstate(all="warn"):
        warnings.simplefilter("always")
        try:
            fn(path)
        except (ValueError, FileNotFoundError, IsADirectoryError) as exc:
            msg = str(exc)
            assert path.name in msg or str(path) in msg, f"{loader}({damage}): does not name the file: {msg}"
            assert "\n" not in msg.strip(), f"{loader}({damage}): a multi-line message: {msg!r}"
        except Exception as exc:  # noqa: BLE001
            pytest.fail(f"{loader}({damage}): {type(exc).__name__}: {exc}")
        else:
            # a flipped byte may land in padding or a value: then the file is still valid
            assert damage in ("a flipped byte",), f"{loader}({damage}): accepted"
    runtime = [w for w in caught if issubclass(w.category, RuntimeWarning)]
    assert not runtime, f"{loader}({damage}): {runtime[0].message}"


# =========================================================================== the command line


def _cli_files():
    """Bad files for the CLI, made once: a truncated and a config-less checkpoint, text, a fake png."""
    from mrcnn_np.io import save_checkpoint

    d = CTX.tmp / "cli"
    if not d.exists():
        d.mkdir()
        good = save_checkpoint(d / "good.npz", {"a": np.ones(3)}, meta={"config": {"num_classes": 4}})
        (d / "truncated.npz").write_bytes(good.read_bytes()[:50])
        save_checkpoint(d / "badconfig.npz", {"a": np.ones(3)}, meta={"config": {"num_classes": 0}})
        save_checkpoint(d / "noconfig.npz", {"a": np.ones(3)}, meta={"step": 3})
        (d / "notes.txt").write_text("hello\n")
        (d / "fake.png").write_bytes(np.random.default_rng(0).integers(0, 256, 64, dtype=np.uint8).tobytes())
        (d / "ann.json").write_text("[1, 2]")
    return d


CLI_CASES = [
    # options the parser refuses (argparse's usage line, then one error line, exit 2)
    "", "nonsense", "train --lr nan", "train --lr -1", "train --lr inf", "train --steps 0", "train --steps -5",
    "train --steps abc", "train --batch-size 0", "train --checkpoint x.txt", "train --images {d}",
    "train --resume", "train --coco {d}/ann.json --hflip 2", "train --coco {d}/ann.json --min-size 0",
    "train --coco {d}/ann.json --save-every 0", "train --coco {d}/ann.json --seed -1",
    "demo --steps 0", "demo --lr nan", "demo --val-images 0", "evaluate", "evaluate {d}/good.npz --val-images 0",
    "evaluate {d}/good.npz --images {d}", "predict", "predict --min-score nan {d}/fake.png",
    "predict --min-score 2 {d}/fake.png", "predict --min-score -0.5 {d}/fake.png",
    "predict {d}/good.npz", "predict {d}/fake.png {d}/good.npz", "predict {d}/good.npz --weights w.pth {d}/fake.png",
    "export-shapes {d}/out --images 0", "export-shapes {d}/out --seed -1",
    # files the commands refuse (one line, exit 1 or a message)
    "train --coco {d}/missing.json --steps 1", "train --coco {d}/ann.json --steps 1",
    "evaluate {d}/missing.npz", "evaluate {d}/truncated.npz", "evaluate {d}/badconfig.npz",
    "evaluate {d}/noconfig.npz", "evaluate {d}/notes.txt", "evaluate {d}/good.npz --coco {d}/missing.json",
    "predict {d}/missing.png", "predict {d}/fake.png", "predict {d}/notes.txt",
    "predict {d}/truncated.npz {d}/fake.png",
    "predict --weights {d}/missing.pth {d}/fake.png", "predict --weights {d}/notes.txt {d}/fake.png",
    "figures does-not-exist-*.ipynb", "bench no_such_bench",
]


@pytest.mark.parametrize("line", CLI_CASES)
def test_cli_refuses_bad_options_and_files_in_one_line(line, capsys):
    """``python -m mrcnn_np`` on a bad option or file exits non-zero with one error line
    (after argparse's usage line for an option) and no traceback."""
    from mrcnn_np.__main__ import main

    argv = line.format(d=_cli_files()).split()
    with pytest.raises(SystemExit) as info:
        main(argv)
    code = info.value.code
    err = capsys.readouterr().err
    assert "Traceback" not in err
    if isinstance(code, str):  # SystemExit(message): Python prints it, one line
        assert code and "\n" not in code.strip(), f"{line!r}: {code!r}"
    else:
        assert code not in (0, None), f"{line!r} exited {code}"
        lines = err.strip().splitlines()
        assert lines and "error" in lines[-1], f"{line!r}: {err!r}"
        assert not lines[-1].startswith(" "), f"{line!r}: the error spans lines: {err!r}"
