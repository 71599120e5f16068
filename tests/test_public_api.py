"""The package's public names: everything advertised is importable and callable."""
import importlib

import pytest

import mrcnn_np.ops as ops


def test_ops_exports_every_forward_with_its_backward():
    names = set(ops.__all__)
    assert all(hasattr(ops, n) for n in names)
    forwards = {n[: -len("_forward")] for n in names if n.endswith("_forward")}
    backwards = {n[: -len("_backward")] for n in names if n.endswith("_backward")}
    assert forwards == backwards
    assert {"conv2d", "conv_transpose2d", "max_pool2d", "linear", "relu", "sigmoid",
            "frozen_batch_norm", "upsample_nearest", "resize_bilinear"} <= forwards
    assert {"softmax_cross_entropy", "bce_with_logits", "smooth_l1"} <= names


@pytest.mark.parametrize("module", ["boxes", "anchors", "backbone", "fpn", "matching", "rpn",
                                    "roi_align", "roi_heads", "evaluate", "data.shapes",
                                    "data.coco", "gradcheck"])
def test_module_all_names_exist(module):
    mod = importlib.import_module(f"mrcnn_np.{module}")
    for name in getattr(mod, "__all__", []):
        assert hasattr(mod, name), f"mrcnn_np.{module}.__all__ lists missing {name}"
