"""``python -m mrcnn_np predict --weights FILE.pth`` on a file torch wrote, against torchvision.

A random ``maskrcnn_resnet50_fpn`` (BN statistics perturbed, the RPN made
confident; its box head then scores 0.3..0.9 on the photo: 79 of its 100
detections pass 0.5, far from the 100-detection cap) is saved by ``torch.save``; the CLI reads it
without torch (``pretrained.torchvision_model``), runs it on matplotlib's
``grace_hopper.jpg``, and prints and draws its detections with COCO names. The
printed detections must be torchvision's eval detections with score >= 0.5:
same names, scores within float32 rounding, boxes within 2 px (all but a
near-tied few that float32 rounding in an untrained network may swap).

Skipped unless torch and torchvision are installed (venv /work/torchvenv):
    /work/torchvenv/bin/python -m pytest tests/reference/test_cli_torch.py
"""
import re

import numpy as np
import pytest

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")

from matplotlib import cbook  # noqa: E402

from mrcnn_np.__main__ import _read_image, main  # noqa: E402
from mrcnn_np.pretrained import COCO_CATEGORY_NAMES  # noqa: E402

_LINE = re.compile(r"^  (.+?) \(category (\d+)\)\s+([0-9.]+)  box ([-0-9. ]+)$")


@pytest.fixture(scope="module")
def saved_maskrcnn(tmp_path_factory):
    torch.manual_seed(0)
    model = torchvision.models.detection.maskrcnn_resnet50_fpn(weights=None, weights_backbone=None)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in model.modules():  # non-trivial BN statistics (random init leaves mean 0, var 1)
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(0.1 * torch.randn(m.running_mean.shape, generator=g))
                m.running_var.uniform_(0.6, 1.6, generator=g)
        model.rpn.head.cls_logits.weight.mul_(30)
        model.rpn.head.bbox_pred.weight.mul_(10)
    path = tmp_path_factory.mktemp("maskrcnn") / "maskrcnn_random.pth"
    torch.save(model.state_dict(), path)
    return model.eval(), path


def test_predict_weights_prints_torchvision_detections_on_a_photo(saved_maskrcnn, tmp_path, capsys):
    model, path = saved_maskrcnn
    photo = tmp_path / "grace_hopper.jpg"
    with cbook.get_sample_data("grace_hopper.jpg") as f:
        photo.write_bytes(f.read())
    assert main(["predict", "--weights", str(path), str(photo), "--out-dir", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "model: 80 COCO categories (names as torchvision); trained on COCO 2017" in out
    ours = []
    for line in out.splitlines():
        m = _LINE.match(line)
        if m:
            name, cid, score, box = m.groups()
            assert COCO_CATEGORY_NAMES[int(cid)] == name.strip()
            ours.append((int(cid), float(score), np.array(box.split(), dtype=float)))
    with torch.no_grad():
        theirs = model([torch.from_numpy(_read_image(photo))])[0]
    scores, labels, boxes = (theirs[k].numpy() for k in ("scores", "labels", "boxes"))
    assert (scores >= 0.55).sum() >= 5, "the random model should give confident detections"
    assert scores[-1] < 0.45 or len(scores) < 100  # the 100-detection cap does not cut inside the compared set
    # float32 in both: an untrained 50-layer net amplifies rounding, so near the 0.5 cut a detection may
    # cross it, and now and then a near-tied proposal is swapped (measured here: 1 of 79; in float64 all
    # 80 agree, as tests/reference/test_pretrained_torch_reference.py checks for detect itself)
    assert abs(len(ours) - int((scores >= 0.5).sum())) <= 2
    missing = []
    for s, lab, box in zip(scores, labels, boxes):
        if s < 0.505:
            continue
        match = [o for o in ours if o[0] == lab and abs(o[1] - s) < 3e-3 and np.abs(o[2] - box).max() < 2.0]
        if not match:
            missing.append(f"{COCO_CATEGORY_NAMES[lab]} {s:.3f} {box}")
    assert len(missing) <= 0.05 * (scores >= 0.505).sum(), missing
    assert (tmp_path / "out" / "grace_hopper_detections.png").stat().st_size > 50_000
