"""The command line front end: argument handling (running notebooks is CI's job)."""
import pytest

from mrcnn_np.__main__ import main, run_bench, run_figures


def test_figures_without_matching_notebook_exits_with_message():
    with pytest.raises(SystemExit, match="no notebook"):
        run_figures(["does-not-exist-*.ipynb"], timeout=10)


def test_figures_run_the_notebooks_on_one_blas_thread_and_restore_the_environment(monkeypatch, tmp_path):
    import contextlib
    import os

    import mrcnn_np.__main__ as cli

    nbformat = pytest.importorskip("nbformat")
    from nbconvert.preprocessors import ExecutePreprocessor

    names = ("MRCNN_NP_WRITE_FIGURES", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
    seen = []
    monkeypatch.setattr(ExecutePreprocessor, "preprocess",
                        lambda self, nb, resources: seen.append({k: os.environ.get(k) for k in names}))
    # the notebook in the checkout stays as it is: nothing is written over it
    monkeypatch.setattr(cli, "atomic_path", lambda path: contextlib.nullcontext(tmp_path / "out.ipynb"))
    monkeypatch.setattr(nbformat, "write", lambda *args, **kwargs: None)
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "2")
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    run_figures(["00_*.ipynb"], timeout=10)
    assert seen == [dict.fromkeys(names, "1")]
    assert os.environ["OPENBLAS_NUM_THREADS"] == "2" and "OMP_NUM_THREADS" not in os.environ


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
    for bad in (["0", "3"], ["4", "2"]):
        with pytest.raises(SystemExit) as info:
            main(["train", "--train-objects", *bad])
        assert info.value.code == 2
        assert f"--train-objects MIN MAX must have 1 <= MIN <= MAX, got {bad[0]} {bad[1]}" in capsys.readouterr().err


def test_train_objects_set_the_training_images_and_are_recorded(tmp_path):
    from mrcnn_np.config import shapes_recipe
    from mrcnn_np.io import load_checkpoint

    counts = {}
    for objects in (None, ["3", "3"]):
        ckpt = tmp_path / f"m{objects is None}.npz"
        argv = ["train", "--steps", "1", "--batch-size", "2", "--train-images", "4", "--checkpoint", str(ckpt)]
        assert main(argv + (["--train-objects", *objects] if objects else [])) == 0
        _, meta = load_checkpoint(ckpt)
        counts[objects is None] = meta["train_objects"]
    assert counts == {True: list(shapes_recipe()["train_objects"]), False: [3, 3]}


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


# ------------------------------------------------ COCO-format data, torchvision weights


def _export(tmp_path, n, seed=4, ids=None):
    """export-shapes through the CLI; ids: renumber categories 1, 2, 3 (square, circle, triangle)."""
    import json

    out = tmp_path / "data"
    assert main(["export-shapes", str(out), "--images", str(n), "--seed", str(seed)]) == 0
    ann = out / "annotations.json"
    if ids is not None:
        data = json.loads(ann.read_text())
        for c in data["categories"]:
            c["id"] = ids[c["id"] - 1]
        for a in data["annotations"]:
            a["category_id"] = ids[a["category_id"] - 1]
        ann.write_text(json.dumps(data))
    return ann, out


_TINY = ["--min-size", "128", "--max-size", "128"]


def test_export_train_evaluate_predict_on_coco_format_data(tmp_path, capsys):
    from mrcnn_np.io import load_checkpoint

    ann, images = _export(tmp_path, 6, ids=[12, 3, 7])  # sparse ids: square 12, circle 3, triangle 7
    ckpt = tmp_path / "run" / "m.npz"
    assert main(["train", "--coco", str(ann), "--images", str(images), "--steps", "3", *_TINY,
                 "--val-coco", str(ann), "--checkpoint", str(ckpt)]) == 0
    arrays, meta = load_checkpoint(ckpt)
    # labels follow increasing category id: 3 circle, 7 triangle, 12 square
    assert meta["class_names"] == ["background", "circle", "triangle", "square"]
    assert meta["category_ids"] == [3, 7, 12] and meta["config"]["num_classes"] == 4
    assert meta["trained_on"] == str(ann.resolve()) and meta["steps"] == 3
    assert meta["train_state"]["step"] == 3 and "box_ap" in meta and "mask_ap" in meta
    assert any(k.startswith("train_state.momentum.") for k in arrays) and "train_state.order" in arrays
    out = capsys.readouterr().out
    assert "trained in" in out and "per category" in out

    assert main(["evaluate", str(ckpt), "--coco", str(ann), "--images", str(images)]) == 0
    out = capsys.readouterr().out
    assert "bbox on 6 images" in out and "segm on 6 images" in out
    rows = out.split("per category")[1].splitlines()[2:5]
    assert [r.split()[:2] for r in rows] == [["3", "circle"], ["7", "triangle"], ["12", "square"]]

    assert main(["predict", str(ckpt), str(images / "images" / "000000.png"), "--min-score", "0.0",
                 "--out-dir", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert f"model: 3 classes (circle, triangle, square); trained on {ann.resolve()}" in out
    assert any(f"(category {c})" in out for c in (3, 7, 12))
    assert (tmp_path / "out" / "000000_detections.png").is_file()


def test_interrupted_coco_training_resumes_bit_for_bit(tmp_path, monkeypatch, capsys):
    import numpy as np

    from mrcnn_np.io import load_checkpoint
    from mrcnn_np.parallel import DataParallel

    ann, images = _export(tmp_path, 5)
    common = ["train", "--coco", str(ann), "--images", str(images), "--steps", "4", "--batch-size", "2",
              "--save-every", "2", *_TINY]  # the default 2 workers
    assert main(common + ["--checkpoint", str(tmp_path / "straight.npz")]) == 0
    real, calls = DataParallel._step, []  # (the workers load the CocoData items: loss_and_grads_of)

    def interrupted(*args, **kwargs):  # Ctrl-C during the third step
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(DataParallel, "_step", interrupted)
    with pytest.raises(KeyboardInterrupt):
        main(common + ["--checkpoint", str(tmp_path / "cut.npz")])
    monkeypatch.setattr(DataParallel, "_step", real)
    assert load_checkpoint(tmp_path / "cut.npz")[1]["train_state"]["step"] == 2  # the save after step 2
    assert main(["train", "--coco", str(ann), "--images", str(images), "--resume",
                 "--checkpoint", str(tmp_path / "cut.npz")]) == 0
    assert "resuming" in capsys.readouterr().out
    a, meta_a = load_checkpoint(tmp_path / "straight.npz")
    b, meta_b = load_checkpoint(tmp_path / "cut.npz")
    assert set(a) == set(b)
    for k in a:  # parameters, momentum buffers, the epoch's order
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    assert meta_a["train_state"] == meta_b["train_state"] and meta_a["final_loss"] == meta_b["final_loss"]
    with pytest.raises(SystemExit) as info:  # nothing left to do
        main(["train", "--coco", str(ann), "--images", str(images), "--resume", "--checkpoint",
              str(tmp_path / "cut.npz")])
    assert info.value.code == 1 and "has done 4 steps already" in capsys.readouterr().err


def _broken(case, ann, images):
    import json

    data = json.loads(ann.read_text())
    if case == "keys":
        del data["annotations"][0]["bbox"]
    elif case == "file":
        (images / data["images"][1]["file_name"]).unlink()
    elif case == "category":
        data["annotations"][2]["category_id"] = 42
    elif case == "segmentation":
        data["annotations"][1]["segmentation"] = {"size": [128, 128], "counts": [5, 7]}
    elif case == "empty":
        data["images"] = []
    elif case == "size":
        data["images"][0]["width"] = 100
    ann.write_text(json.dumps(data))
    return data


@pytest.mark.parametrize("case, message", [
    ("keys", "annotation 1 is missing the key 'bbox'"),
    ("file", "image 2: file .*000001.png' does not exist"),
    ("category", "annotation 3: category_id 42 is not in 'categories'"),
    ("segmentation", "annotation 2: RLE counts sum to 12"),
    ("empty", "empty dataset"),
    ("size", r"image 1: file .*000000.png' is 128x128 \(w x h\), the json says 100x128"),
])
def test_bad_coco_input_is_one_line_naming_the_file_and_the_entry(tmp_path, capsys, case, message):
    import re

    ann, images = _export(tmp_path, 3)
    capsys.readouterr()
    _broken(case, ann, images)
    ckpt = tmp_path / "never.npz"
    for argv in (["train", "--coco", str(ann), "--images", str(images), "--steps", "1", "--checkpoint", str(ckpt)],
                 ["evaluate", str(ckpt), "--coco", str(ann), "--images", str(images)]):
        if argv[0] == "evaluate":  # a real checkpoint, so that the data is what fails
            argv[1] = str(_shapes_checkpoint(tmp_path))
        with pytest.raises(SystemExit) as info:
            main(argv)
        err = capsys.readouterr().err
        assert info.value.code == 1 and "Traceback" not in err and err.count("\n") == 1, err
        assert err.startswith(f"python -m mrcnn_np {argv[0]}: error: {ann}"), err
        assert re.search(message, err), err
    assert not ckpt.exists()  # nothing half-written


def _shapes_checkpoint(tmp_path):
    from mrcnn_np.pretrained import SHAPES_WEIGHTS

    return SHAPES_WEIGHTS


@pytest.mark.parametrize("argv, message", [
    (["train", "--resume"], "--resume is for training on COCO-format data"),
    (["train", "--val-coco", "v.json"], "--val-coco is for training on COCO-format data"),
    (["train", "--coco", "a.json", "--hflip", "2"], "--hflip must be in [0, 1], got 2.0"),
    (["train", "--coco", "a.json", "--min-size", "0"], "--min-size must be >= 1"),
    (["evaluate", "m.npz", "--images", "d"], "give --coco VAL.json too"),
    (["predict", "m.npz", "a.png", "--weights", "w.pth"], "a checkpoint (.npz) or --weights FILE.pth, not both"),
    (["export-shapes", "d", "--images", "0"], "--images must be >= 1"),
    (["demo", "--workers", "0"], "--workers must be >= 1"),
    (["train", "--coco", "a.json", "--workers", "-2"], "--workers must be >= 1"),
])
def test_bad_coco_options_are_one_line_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_figure_size_follows_the_image():
    from mrcnn_np.__main__ import _figure_size

    assert _figure_size(128, 128) == ((4.0, 4.0), 8.0)  # small images: at least 4 inches, 8 pt labels
    (w, h), size = _figure_size(600, 512)  # grace_hopper.jpg: one image pixel per output pixel at 100 dpi
    assert (w, h) == pytest.approx((5.12, 6.0)) and size == 10.0
    (w, h), size = _figure_size(3000, 4000)  # a 12 MP photo: capped at 12 inches, 14 pt labels
    assert (w, h) == pytest.approx((12.0, 9.0)) and size == 14.0


def test_predict_with_torchvision_weights_speaks_coco_names(tmp_path, monkeypatch, capsys):
    """--weights goes through pretrained.torchvision_model (here a stand-in: the default suite has no
    .pth of the full model); the 91 labels are named by COCO_CATEGORY_NAMES and the drawing fits a photo."""
    import numpy as np
    from matplotlib import cbook
    from PIL import Image

    import mrcnn_np.__main__ as cli
    from mrcnn_np import model as M
    from mrcnn_np.config import shapes_config

    seen = []

    def fake_torchvision_model(path):
        seen.append(path)
        config = shapes_config(91)
        params = M.init_params(config, rng=np.random.default_rng(0))
        params["roi_heads.box_predictor.cls_score.bias"][1] = 12.0  # every box a confident "person"
        return params, config

    monkeypatch.setattr(cli, "torchvision_model", fake_torchvision_model)
    photo = tmp_path / "grace.jpg"
    with cbook.get_sample_data("grace_hopper.jpg") as f:
        photo.write_bytes(f.read())
    assert main(["predict", "--weights", "coco.pth", str(photo), "--out-dir", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert seen == ["coco.pth"]
    assert "model: 80 COCO categories (names as torchvision); trained on COCO 2017" in out
    assert "person (category 1)" in out
    with Image.open(tmp_path / "out" / "grace_detections.png") as im:
        w, h = im.size
    # the 512 x 600 photo fills a 5.12 x 6 inch figure at 100 dpi: one figure pixel per image pixel
    assert 512 <= w <= 540 and 630 <= h <= 660  # (+ 0.3 inch title, + the tight bbox padding)
