"""The package's public names: everything advertised is importable and callable."""
import importlib
import re
from pathlib import Path

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
                                    "data.coco", "gradcheck", "transform", "train", "io", "config", "model",
                                    "kernels.conv", "kernels.roi_align", "kernels.iou", "kernels.nms",
                                    "kernels.elementwise", "kernels.topk", "kernels.pool",
                                    "kernels.arena"])
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


def test_kernels_are_internal_and_only_stage_modules_import_them():
    # mrcnn_np.kernels holds the speed engines: no checks, not public API (not in the
    # package's __all__, not re-exported); only the stage modules they serve import
    # them (and benchmarks/), and a kernel imports nothing of the package but kernels
    import mrcnn_np

    assert "kernels" not in mrcnn_np.__all__
    pkg = Path(mrcnn_np.__file__).parent
    importers = set()
    for path in pkg.rglob("*.py"):
        rel = path.relative_to(pkg).as_posix()
        src = path.read_text()
        if rel.startswith("kernels/"):
            assert not re.search(r"^\s*(from\s+\.\.|from\s+mrcnn_np|import\s+mrcnn_np)", src, re.M), rel
        elif re.search(r"^\s*(from|import)\s+[\w.]*kernels\b", src, re.M):
            importers.add(rel)
    assert importers == {"ops/conv.py", "ops/activations.py", "ops/pool.py", "roi_align.py", "boxes.py",
                         "rpn.py"}
    for name in ("boxes", "roi_align", "ops", "ops.conv"):
        mod = importlib.import_module(f"mrcnn_np.{name}")
        assert not any(getattr(getattr(mod, n), "__module__", "").startswith("mrcnn_np.kernels")
                       for n in mod.__all__), name
