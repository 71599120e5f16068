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
                                    "data.coco", "gradcheck", "transform", "train", "io", "config", "model"])
def test_module_all_names_exist(module):
    mod = importlib.import_module(f"mrcnn_np.{module}")
    for name in getattr(mod, "__all__", []):
        assert hasattr(mod, name), f"mrcnn_np.{module}.__all__ lists missing {name}"


def test_package_exposes_every_stage_without_importing_matplotlib():
    import subprocess
    import sys

    code = ("import sys, mrcnn_np; "
            "assert all(hasattr(mrcnn_np, n) for n in mrcnn_np.__all__); "
            "assert mrcnn_np.data.shapes.ShapesDataset and mrcnn_np.roi_align.level_mapper; "
            "print('matplotlib' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"  # viz stays optional: the library never needs a display
