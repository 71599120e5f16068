"""The command line front end: argument handling (running notebooks is CI's job)."""
import pytest

from mrcnn_np.__main__ import main, run_bench, run_figures


def test_figures_without_matching_notebook_exits_with_message():
    with pytest.raises(SystemExit, match="no notebook"):
        run_figures(["does-not-exist-*.ipynb"], timeout=10)


def test_bench_unknown_name_lists_the_known_ones():
    with pytest.raises(SystemExit, match="unknown benchmark"):
        run_bench(["no_such_bench"])


def test_command_is_required(capsys):
    with pytest.raises(SystemExit) as info:
        main([])
    assert info.value.code == 2
    assert "figures" in capsys.readouterr().err


def test_demo_trains_saves_evaluates_and_draws(tmp_path):
    import numpy as np

    from mrcnn_np.__main__ import run_demo
    from mrcnn_np.io import load_checkpoint

    out = run_demo(steps=3, train_images=12, val_images=8, batch_size=2, base_lr=0.01, seed=3,
                   out_dir=tmp_path / "ck", figures_dir=tmp_path / "figs", progress=False)
    assert len(out["history"]) == 3
    assert all(np.isfinite(h["loss"]) for h in out["history"])
    params, meta = load_checkpoint(out["checkpoint"])
    assert meta["steps"] == 3 and meta["config"]["num_classes"] == 4
    assert "rpn.head.cls_logits.weight" in params
    for iou_type in ("bbox", "segm"):
        stats = out["stats"][iou_type]
        assert stats.shape == (12,) and np.all((stats >= 0) | (stats == -1))
    assert sorted(p.name for p in out["figures"]) == ["demo_losses.png", "demo_predictions.png"]
    assert all(p.stat().st_size > 10_000 for p in out["figures"])


def test_demo_rejects_bad_counts(capsys):
    with pytest.raises(SystemExit) as info:
        main(["demo", "--steps", "0"])
    assert info.value.code == 2
    assert "--steps must be >= 1" in capsys.readouterr().err


def test_train_then_evaluate_then_predict_from_the_checkpoint(tmp_path, capsys):
    import matplotlib.pyplot as plt
    import numpy as np

    from mrcnn_np.data.shapes import ShapesDataset

    ckpt = tmp_path / "m.npz"
    assert main(["train", "--steps", "2", "--batch-size", "2", "--train-images", "6",
                 "--checkpoint", str(ckpt)]) == 0
    assert ckpt.is_file()
    assert main(["evaluate", str(ckpt), "--val-images", "3"]) == 0
    out = capsys.readouterr().out
    assert "bbox on 3 held-out images" in out and "segm on 3 held-out images" in out
    image = ShapesDataset(1, seed=5)[0]["image"]
    png = tmp_path / "shape.png"
    plt.imsave(png, image)  # RGBA PNG: the alpha channel must be dropped
    assert main(["predict", str(ckpt), str(png), "--min-score", "0.0",
                 "--out-dir", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "shape.png:" in out and (tmp_path / "out" / "shape_detections.png").is_file()

    from mrcnn_np.__main__ import _read_image
    arr = _read_image(png)
    assert arr.shape == (3, 128, 128) and arr.dtype == np.float32
    np.testing.assert_allclose(arr.transpose(1, 2, 0), image, atol=1 / 255)


def test_evaluate_and_predict_need_an_existing_checkpoint(tmp_path):
    with pytest.raises(SystemExit, match="not found"):
        main(["evaluate", str(tmp_path / "missing.npz")])
    with pytest.raises(SystemExit, match="not found"):
        main(["predict", str(tmp_path / "missing.npz"), "x.png"])
