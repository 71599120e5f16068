"""Pretrained weights: torchvision's Mask R-CNN and ImageNet ResNet ``.pth`` files, read with NumPy.

The model's parameters are keyed by torchvision's ``state_dict`` names, so a
torchvision checkpoint needs no mapping table, only checks:

- :func:`torchvision_model` reads a whole ``maskrcnn_resnet50_fpn`` state dict
  (torchvision's COCO weights ``maskrcnn_resnet50_fpn_coco-bf2d0c1e.pth``, or a
  model you trained or fine-tuned with torchvision) and returns ``(params,
  config)`` ready for ``model.detect``;
- :func:`load_resnet_backbone` puts an ImageNet ResNet classifier's weights
  (torchvision's ``resnet50-0676ba61.pth``, or the older ``resnet50-19c8e357.pth``)
  into the ``backbone.body.*`` entries of a parameter dict, the starting point
  torchvision's detection training uses;
- :data:`COCO_CATEGORY_NAMES` names the 91 labels of the COCO weights;
- :func:`shapes_model` returns the shapes model shipped with the package
  (``mrcnn_np/weights/shapes.npz``, trained from scratch by ``python -m mrcnn_np
  demo``; :func:`shapes_model_info` gives its provenance: command, seed, steps,
  wall time, held-out AP).

The files are read by :func:`mrcnn_np.io.load_torch_state_dict` (no torch, no
code from the file executed); the user downloads them (no network access here),
e.g. from ``https://download.pytorch.org/models/<file name>``.

Frozen BN buffers: ``backbone.py`` reads ``weight``, ``bias``, ``running_mean``
and ``running_var`` of every BN, so those four are loaded as they are. The
``num_batches_tracked`` counters that a trainable ``nn.BatchNorm2d`` stores
(torchvision builds one when no pretrained weights are asked for) are dropped:
they count training steps and never enter an eval forward, and torchvision's own
``FrozenBatchNorm2d._load_from_state_dict`` drops them the same way.

Class names: ``MaskRCNNConfig`` has no field for them, so the names travel as
this module's constant, not in the config: label ``k`` of a detection by the
COCO weights is ``COCO_CATEGORY_NAMES[k]``.
"""
from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np

from .backbone import PREFIX as _BODY
from .config import MaskRCNNConfig, torchvision_config
from .io import load_checkpoint, load_torch_state_dict
from .model import init_params

__all__ = ["COCO_CATEGORY_NAMES", "SHAPES_WEIGHTS", "shapes_model", "shapes_model_info", "torchvision_model",
           "load_resnet_backbone"]

#: the shipped shapes model (package data)
SHAPES_WEIGHTS = Path(__file__).resolve().parent / "weights" / "shapes.npz"

#: torchvision's 91 COCO category names in label order (its ``_COCO_CATEGORIES``, the
#: ``categories`` meta of ``MaskRCNN_ResNet50_FPN_Weights.COCO_V1``): index = COCO category
#: id, "__background__" at 0 and "N/A" at the 10 ids in 1..90 COCO 2017 does not use.
COCO_CATEGORY_NAMES = (
    "__background__", "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "N/A", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse",
    "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "N/A", "backpack", "umbrella", "N/A",
    "N/A", "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite", "baseball bat",
    "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle", "N/A", "wine glass", "cup", "fork",
    "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza",
    "donut", "cake", "chair", "couch", "potted plant", "bed", "N/A", "dining table", "N/A", "N/A",
    "toilet", "N/A", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone", "microwave", "oven",
    "toaster", "sink", "refrigerator", "N/A", "book", "clock", "vase", "scissors", "teddy bear", "hair drier",
    "toothbrush",
)

_CLS_SCORE = "roi_heads.box_predictor.cls_score.weight"
_SHOWN = 3  # keys shown per list in an error message


def _first(keys):
    keys = list(keys)
    more = f" and {len(keys) - _SHOWN} more" if len(keys) > _SHOWN else ""
    return ", ".join(repr(k) for k in keys[:_SHOWN]) + more


def _check_path(path):
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or os.PathLike, got {type(path).__name__}")
    return path


@functools.lru_cache(maxsize=4)
def _model_shapes(num_classes):
    """{key: shape} of maskrcnn_resnet50_fpn with num_classes, in init_params order."""
    params = init_params(torchvision_config(num_classes), rng=np.random.default_rng(0), dtype=np.float16)
    return tuple((k, v.shape) for k, v in params.items())


def _match(path, state, expected, what):
    """Check state {key: array} against expected {key: shape}: same keys, shapes, float and finite."""
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys ({_first(missing)})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys ({_first(unexpected)})")
        raise ValueError(f"{path}: not {what}: " + "; ".join(parts))
    wrong = [(k, state[k].shape, shape) for k, shape in expected.items() if state[k].shape != tuple(shape)]
    if wrong:
        listed = ", ".join(f"{k!r} is {a} (expected {b})" for k, a, b in wrong[:_SHOWN])
        more = f" and {len(wrong) - _SHOWN} more" if len(wrong) > _SHOWN else ""
        raise ValueError(f"{path}: shapes do not fit {what}: {listed}{more}")
    for k in expected:
        if state[k].dtype.kind != "f":
            raise ValueError(f"{path}: {k!r} must be floating point, got dtype {state[k].dtype}")
        if not np.all(np.isfinite(state[k])):
            raise ValueError(f"{path}: {k!r} holds non-finite values (NaN or inf)")


def torchvision_model(path, *, num_classes=None):
    """Load a torchvision ``maskrcnn_resnet50_fpn`` (v1) state dict file as our model.

    path: str or os.PathLike, a ``.pth`` written by ``torch.save(model.state_dict())``
        (either layout; see ``mrcnn_np.io``), e.g. torchvision's COCO weights
        ``maskrcnn_resnet50_fpn_coco-bf2d0c1e.pth``.
    num_classes: K+1 with background, or None to read it from the file
        (``roi_heads.box_predictor.cls_score.weight`` has shape (K+1, 1024)),
        so a model fine-tuned with torchvision on other classes loads too.
    Returns ``(params, config)``: params is the flat dict of ``init_params``'s
    keys and order, each a float32 array of its shape (``backbone.body.conv1.weight``
    (64, 3, 7, 7) ... ``roi_heads.mask_predictor.mask_fcn_logits.weight``
    (K+1, 256, 1, 1)); float16 entries are widened exactly, float64 ones rounded.
    config is ``torchvision_config(num_classes)``. ``model.detect(params, images,
    config)`` then gives torchvision's eval detections; for the COCO weights
    label k is ``COCO_CATEGORY_NAMES[k]``.

    ``num_batches_tracked`` entries are dropped (module docstring). Raises
    ValueError naming the file when keys are missing or unexpected (the first
    few listed), a shape does not fit the architecture, an entry is not floating
    point or not finite; the errors of ``load_torch_state_dict`` for a file that
    is not a torch state dict.
    """
    path = _check_path(path)
    state = {k: v for k, v in load_torch_state_dict(path).items() if not k.endswith(".num_batches_tracked")}
    if num_classes is None:
        cls = state.get(_CLS_SCORE)
        num_classes = int(cls.shape[0]) if cls is not None and cls.ndim == 2 and cls.shape[0] >= 2 else 91
    config = torchvision_config(num_classes)  # validates an explicit num_classes
    expected = dict(_model_shapes(config.num_classes))
    _match(path, state, expected, f"a maskrcnn_resnet50_fpn state dict with num_classes={config.num_classes}")
    params = {k: np.ascontiguousarray(state[k], dtype=np.float32) for k in expected}
    return params, config


def load_resnet_backbone(path, params):
    """Put an ImageNet ResNet's weights into ``params["backbone.body.*"]``, in place.

    path: str or os.PathLike, a torchvision ResNet classifier state dict file
        (keys ``conv1.weight``, ``bn1.{weight,bias,running_mean,running_var}``,
        ``layer1.0.conv1.weight`` ..., ``fc.weight``, ``fc.bias``), e.g.
        ``resnet50-0676ba61.pth`` (zip layout) or ``resnet50-19c8e357.pth`` (legacy).
    params: the model's parameter dict (e.g. ``init_params(torchvision_config(),
        rng=...)``), or any dict with the ``backbone.body.*`` keys of a ResNet of
        the file's depth and width; its other keys are not touched.
    Every file key ``k`` goes to ``backbone.body.k`` with the dtype the entry
    had in params. The ``fc`` classifier and the ``num_batches_tracked`` counters
    are dropped. Returns the list of keys set, in the file's order.

    Everything is checked before anything is written: raises ValueError naming
    the file when a backbone key of params has no entry in the file, a file key
    has no place in params, a shape differs, or an entry is not floating point
    or not finite (params is then unchanged). TypeError if params is not a dict.
    """
    path = _check_path(path)
    if not isinstance(params, dict):
        raise TypeError(f"params must be a dict of arrays, got {type(params).__name__}")
    body = {k: v for k, v in params.items() if k.startswith(_BODY)}
    if not body:
        raise ValueError(f"params has no {_BODY + '*'!r} keys to load a ResNet into")
    state = {_BODY + k: v for k, v in load_torch_state_dict(path).items()
             if not k.startswith("fc.") and not k.endswith("num_batches_tracked")}
    if any(k.startswith(_BODY + _BODY) for k in state):
        raise ValueError(f"{path}: holds a whole detection model (keys start with {_BODY!r}), not an "
                         "ImageNet ResNet; load it with torchvision_model")
    _match(path, state, {k: np.shape(v) for k, v in body.items()}, "the ResNet of params' backbone.body")
    for k, v in state.items():
        params[k] = np.ascontiguousarray(v, dtype=np.asarray(params[k]).dtype)
    return list(state)


def _read_shipped():
    if not SHAPES_WEIGHTS.is_file():
        raise FileNotFoundError(f"the shipped shapes model {SHAPES_WEIGHTS} is missing; reinstall mrcnn_np "
                                "or remake it (README: 'The shipped shapes model')")
    params, meta = load_checkpoint(SHAPES_WEIGHTS)  # ValueError naming the file if it is corrupt
    try:
        config = MaskRCNNConfig(**meta["config"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{SHAPES_WEIGHTS}: no usable model config in its metadata ({exc})") from exc
    return params, config, meta


def shapes_model():
    """The shapes Mask R-CNN shipped with the package: ``(params, config)``.

    params: {name: float32 array} for ``config`` (``config.shapes_config()``, 4
    classes: background, square, circle, triangle as ``data.shapes.CLASS_NAMES``).
    Ready for ``model.detect(params, images, config)`` on 128 x 128 shapes images.
    Each call reads the file again (a fresh dict: changing it changes nothing shared).
    Raises FileNotFoundError if the file is missing, ValueError if it is corrupt.
    """
    params, config, _ = _read_shipped()
    return params, config


def shapes_model_info():
    """Provenance of :func:`shapes_model`: the checkpoint's metadata dict.

    Keys include "command" (how it was trained), "seed", "steps", "batch_size",
    "base_lr", "train_images", "train_seconds", "trained_on", "class_names",
    "config", and the held-out evaluation: "val_images", "val_seed", "box_ap",
    "mask_ap", "box_ap50", "mask_ap50".
    """
    return _read_shipped()[2]
