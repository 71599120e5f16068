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


def test_read_image_accepts_jpeg_uint8_and_grey(tmp_path):
    import matplotlib.pyplot as plt
    import numpy as np

    from mrcnn_np.__main__ import _read_image

    yy, xx = np.mgrid[0:20, 0:30]
    rgb = np.stack([xx / 29, yy / 19, np.full((20, 30), 0.5)], axis=2)  # smooth: JPEG keeps it
    plt.imsave(tmp_path / "a.jpg", rgb)  # Pillow writes uint8 JPEG: read back scaled to [0, 1]
    arr = _read_image(tmp_path / "a.jpg")
    assert arr.shape == (3, 20, 30) and arr.dtype == np.float32
    assert 0.0 <= arr.min() and arr.max() <= 1.0
    assert np.abs(arr.transpose(1, 2, 0) - rgb).max() < 0.08  # lossy, but the same picture
    from PIL import Image  # (a matplotlib dependency) a single-channel "L" PNG
    grey = np.tile(np.arange(30, dtype=np.uint8) * 8, (20, 1))
    Image.fromarray(grey, mode="L").save(tmp_path / "g.png")
    g = _read_image(tmp_path / "g.png")
    assert g.shape == (3, 20, 30)
    for channel in g:  # the grey level repeated in R, G and B
        np.testing.assert_allclose(channel, grey / 255, atol=1e-6)
    (tmp_path / "bad.png").write_bytes(b"not an image")
    with pytest.raises(SystemExit, match="cannot read image"):
        _read_image(tmp_path / "bad.png")


def _help_of(argv, capsys):
    with pytest.raises(SystemExit) as info:
        main(argv + ["--help"])
    assert info.value.code == 0
    return capsys.readouterr().out


def test_every_option_has_help_and_every_command_an_example(capsys):
    from mrcnn_np.__main__ import _build_parser

    parser = _build_parser()
    top = _help_of([], capsys)
    assert "`" not in top  # no raw reStructuredText backticks
    sub = next(a for a in parser._actions if a.dest == "command")
    assert set(sub.choices) == {"demo", "train", "evaluate", "predict", "export-shapes", "figures", "bench"}
    for name, p in sub.choices.items():
        for action in p._actions:
            assert action.help, f"{name}: option {action.option_strings or action.dest} has no help"
        text = _help_of([name], capsys)
        assert f"example:\n  python -m mrcnn_np {name}" in text, name
        assert "`" not in text


@pytest.mark.parametrize("argv, message", [
    (["train", "--lr", "nan"], "--lr must be a finite number > 0, got nan"),
    (["train", "--lr", "-1"], "--lr must be a finite number > 0, got -1.0"),
    (["train", "--checkpoint", "x.txt"], "--checkpoint must be a .npz file, got 'x.txt'"),
    (["predict", "a.png", "--min-score", "nan"], "--min-score must be in [0, 1], got nan"),
    (["predict", "a.png", "m.npz"], "at most one checkpoint (.npz), before the images"),
])
def test_bad_options_are_one_line_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_corrupt_checkpoint_is_one_line(tmp_path, capsys):
    bad = tmp_path / "cut.npz"
    bad.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(SystemExit) as info:
        main(["evaluate", str(bad)])
    assert info.value.code != 0
    message = str(info.value.code) + capsys.readouterr().err
    assert str(bad) in message and "Traceback" not in message and message.count("\n") <= 1


def test_predict_says_what_the_model_knows_and_warns_on_a_photo(tmp_path, capsys):
    import matplotlib.pyplot as plt
    from matplotlib import cbook

    from mrcnn_np.data.shapes import ShapesDataset

    shape_png = tmp_path / "shape.png"
    plt.imsave(shape_png, ShapesDataset(1, seed=5)[0]["image"])
    with cbook.get_sample_data("grace_hopper.jpg") as f:
        photo = tmp_path / "photo.jpg"
        photo.write_bytes(f.read())
    assert main(["predict", str(shape_png), str(photo), "--out-dir", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "model: 3 classes (square, circle, triangle); trained on synthetic shapes" in out
    shape_part, photo_part = out.split(f"{photo}:")
    assert "trained on synthetic shapes (flat" not in shape_part.split(f"{shape_png}:")[1]
    assert "note: this model was trained on synthetic shapes" in photo_part
    assert (tmp_path / "out" / "photo_detections.png").is_file()


def test_looks_like_shapes_image():
    from matplotlib import cbook

    from mrcnn_np.__main__ import _read_image, looks_like_shapes_image
    from mrcnn_np.data.shapes import ShapesDataset

    for i in range(5):
        assert looks_like_shapes_image(ShapesDataset(5, seed=1)[i]["image"].transpose(2, 0, 1))
    assert not looks_like_shapes_image(_read_image(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)))
