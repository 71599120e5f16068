"""mrcnn_np: Mask R-CNN in plain NumPy, every stage a forward/backward pair.

The package is organised by stage; import the stage you want to read or check:

- ``mrcnn_np.ops``        differentiable primitives (conv, pool, linear, norm, resize, losses)
- ``mrcnn_np.kernels``    the speed engines behind ``ops.conv``, ``roi_align`` and ``boxes.nms``
                          (no checks, tested against the naive versions; internal, not public API)
- ``mrcnn_np.boxes``      box geometry, NMS, the box coder (no gradients)
- ``mrcnn_np.anchors``    base anchors, grids, pyramids (torchvision and matterport conventions)
- ``mrcnn_np.backbone``   ResNet with frozen batch norm; ``mrcnn_np.fpn`` the feature pyramid
- ``mrcnn_np.matching``   Matcher and balanced sampler; ``mrcnn_np.rpn`` the region proposal network
- ``mrcnn_np.roi_align``  RoIAlign and the FPN level mapper
- ``mrcnn_np.roi_heads``  box and mask heads, targets, losses, post-processing, mask pasting
- ``mrcnn_np.config``     hyper-parameters and presets (torchvision, matterport-like, tiny shapes)
- ``mrcnn_np.model``      the whole Mask R-CNN: init, forward_train + backward, predict, detect
- ``mrcnn_np.trace``      every intermediate of inference, named (detect's own code path); RPN recall,
                          IoU matrices, confusion matrix
- ``mrcnn_np.transform``  normalise, resize, batch; map detections back to the original image
- ``mrcnn_np.train``      SGD with momentum, warm-up and step schedule, the training loop
- ``mrcnn_np.parallel``   data-parallel training: one batch's loss and gradient over W processes
- ``mrcnn_np.io``         checkpoints (.npz), safetensors, torch .pth (restricted unpickler, no torch)
- ``mrcnn_np.pretrained`` torchvision weights: torchvision_model(path), load_resnet_backbone, COCO names
- ``mrcnn_np.data``       synthetic shapes (``data.shapes``) and COCO format (``data.coco``)
- ``mrcnn_np.evaluate``   COCO-style AP/AR, equal to pycocotools
- ``mrcnn_np.gradcheck``  numeric gradients, relative error, adjoint test
- ``mrcnn_np.viz``        matplotlib figures for the notebooks (imported on demand)

Every module states its shape shorthand and coordinate convention at the top.
"""
from . import (  # noqa: F401  (submodules as attributes: mrcnn_np.boxes.nms, ...)
    anchors,
    backbone,
    boxes,
    config,
    data,
    evaluate,
    fpn,
    gradcheck,
    io,
    matching,
    model,
    ops,
    parallel,
    pretrained,
    roi_align,
    roi_heads,
    rpn,
    trace,
    train,
    transform,
)

__version__ = "0.1.0"

__all__ = [
    "anchors", "backbone", "boxes", "config", "data", "evaluate", "fpn", "gradcheck", "io", "matching", "model", "ops",
    "parallel", "pretrained", "roi_align", "roi_heads", "rpn", "trace", "train", "transform", "__version__",
]
