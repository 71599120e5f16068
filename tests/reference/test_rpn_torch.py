"""Cross-check mrcnn_np.matching and mrcnn_np.rpn against torchvision (float64).

Skipped unless torch and torchvision are installed (venv /work/tv):
    /work/tv/bin/python -m pytest tests/reference/test_rpn_torch.py
"""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")

from torchvision.models.detection import _utils as det_utils  # noqa: E402
from torchvision.models.detection.anchor_utils import AnchorGenerator  # noqa: E402
from torchvision.models.detection.image_list import ImageList  # noqa: E402
from torchvision.models.detection.rpn import (  # noqa: E402
    RegionProposalNetwork,
    RPNHead,
    concat_box_prediction_layers,
)

from mrcnn_np.anchors import pyramid_anchors  # noqa: E402
from mrcnn_np.matching import matcher  # noqa: E402
from mrcnn_np.rpn import (  # noqa: E402
    concat_box_prediction_layers_forward,
    filter_proposals,
    generate_proposals,
    init_rpn_head,
    rpn_head_backward,
    rpn_head_forward,
    rpn_loss_from_samples,
    rpn_targets,
)

SIZES = ((16,), (32,))
RATIOS = ((0.5, 1.0, 2.0),) * 2


@pytest.fixture(autouse=True)
def _float64_default():
    """torch's default dtype float64 for these tests only: set at import it leaked into every
    reference test collected after this file (their torch modules were built in float64)."""
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(before)


def _t(x):
    return torch.from_numpy(np.ascontiguousarray(x))


@pytest.mark.parametrize("seed", range(20))
@pytest.mark.parametrize("allow", [True, False])
def test_matcher_vs_torchvision(seed, allow):
    rng = np.random.default_rng(seed)
    g, a = rng.integers(1, 6), rng.integers(1, 40)
    m = rng.integers(0, 11, size=(g, a)) / 10.0       # ties and exact thresholds
    if seed % 4 == 0:
        m[-1] = 0.0                                     # a GT that overlaps nothing
    ref = det_utils.Matcher(0.7, 0.3, allow_low_quality_matches=allow)(_t(m)).numpy()
    np.testing.assert_array_equal(matcher(m, allow_low_quality_matches=allow), ref)


def _rpn(pre, post, head=None):
    gen = AnchorGenerator(SIZES, RATIOS)
    head = head or RPNHead(4, 3)
    return RegionProposalNetwork(gen, head, 0.7, 0.3, 256, 0.5,
                                 dict(training=pre, testing=pre), dict(training=post, testing=post),
                                 0.7).double()


def _load_head(params):
    head = RPNHead(4, 3).double()
    head.load_state_dict({k[len("rpn.head."):]: _t(v) for k, v in params.items()})
    return head


def test_head_flatten_and_gradients_vs_torchvision():
    rng = np.random.default_rng(0)
    params = {k: rng.standard_normal(v.shape) * 0.3
              for k, v in init_rpn_head(4, 3, rng=rng, dtype=np.float64).items()}
    feats = [rng.standard_normal((2, 4, 6, 5)), rng.standard_normal((2, 4, 3, 3))]
    (obj, deltas), cache = rpn_head_forward(params, feats)
    head = _load_head(params)
    tf = [_t(f).requires_grad_(True) for f in feats]
    tobj, tdel = head(tf)
    for a, b in zip(obj + deltas, tobj + tdel):
        np.testing.assert_allclose(a, b.detach().numpy(), rtol=1e-10, atol=1e-12)
    (fo, fd), _ = concat_box_prediction_layers_forward(obj, deltas)
    rfo, rfd = concat_box_prediction_layers(list(tobj), list(tdel))
    np.testing.assert_allclose(fo.reshape(-1, 1), rfo.detach().numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(fd.reshape(-1, 4), rfd.detach().numpy(), rtol=1e-10, atol=1e-12)
    up_o = [rng.standard_normal(o.shape) for o in obj]
    up_d = [rng.standard_normal(d.shape) for d in deltas]
    total = sum((o * _t(u)).sum() for o, u in zip(tobj, up_o)) + sum((d * _t(u)).sum() for d, u in zip(tdel, up_d))
    total.backward()
    grads, dfeats = rpn_head_backward((up_o, up_d), cache)
    named = dict(head.named_parameters())
    for k, g in grads.items():
        np.testing.assert_allclose(g, named[k[len("rpn.head."):]].grad.numpy(), rtol=1e-9, atol=1e-12)
    for a, b in zip(dfeats, tf):
        np.testing.assert_allclose(a, b.grad.numpy(), rtol=1e-9, atol=1e-12)


def test_targets_and_loss_vs_torchvision():
    rng = np.random.default_rng(1)
    image, grids = (64, 80), [(16, 20), (8, 10)]
    anchors = np.concatenate(pyramid_anchors(image, grids, sizes=SIZES, aspect_ratios=RATIOS)).astype(np.float64)
    gts = [np.array([[5.0, 7.0, 30.0, 40.0], [40.0, 10.0, 70.0, 25.0]]), np.array([[10.0, 10.0, 18.0, 50.0]])]
    labels, reg = rpn_targets(anchors, gts)
    rpn = _rpn(100, 100)
    tl, tm = rpn.assign_targets_to_anchors([_t(anchors)] * 2, [{"boxes": _t(g)} for g in gts])
    np.testing.assert_array_equal(labels, np.stack([x.numpy() for x in tl]))
    treg = rpn.box_coder.encode(tm, [_t(anchors)] * 2)
    pos = labels == 1
    assert pos.sum() >= 3 and (labels == -1).sum() > 0
    np.testing.assert_allclose(reg[pos], torch.stack(treg).numpy()[pos], rtol=1e-10, atol=1e-12)
    # loss with the same sample (torchvision's sampler replaced by ours)
    t = anchors.shape[0]
    obj = rng.standard_normal((2, t))
    deltas = rng.standard_normal((2, t, 4)) * 0.2
    from mrcnn_np.rpn import sample_anchors
    pmask, nmask = sample_anchors(labels, rng=np.random.default_rng(5), batch_size_per_image=64)
    lo, lb, dobj, ddel = rpn_loss_from_samples(obj, deltas, labels, reg, pmask, nmask)
    rpn.fg_bg_sampler = lambda _labels: ([_t(p) for p in pmask], [_t(n) for n in nmask])
    tobj = _t(obj.reshape(-1, 1)).requires_grad_(True)
    tdel = _t(deltas.reshape(-1, 4)).requires_grad_(True)
    rlo, rlb = rpn.compute_loss(tobj, tdel, [x.double() for x in tl], list(_t(reg)))
    (rlo + rlb).backward()
    assert lo == pytest.approx(rlo.item(), rel=1e-10)
    assert lb == pytest.approx(rlb.item(), rel=1e-10)
    np.testing.assert_allclose(dobj.reshape(-1, 1), tobj.grad.numpy(), rtol=1e-9, atol=1e-14)
    np.testing.assert_allclose(ddel.reshape(-1, 4), tdel.grad.numpy(), rtol=1e-9, atol=1e-14)


def test_filter_proposals_vs_torchvision():
    rng = np.random.default_rng(2)
    n, counts = 2, [600, 150, 40]
    t = sum(counts)
    xy = rng.uniform(-20, 100, size=(n, t, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(0.5, 40, size=(n, t, 2))], axis=2)
    obj = rng.standard_normal((n, t))
    shapes = [(64, 96), (80, 48)]
    rpn = _rpn(120, 90).eval()
    rb, rs = rpn.filter_proposals(_t(boxes), _t(obj.reshape(-1, 1)), shapes, counts)
    ob, os_ = filter_proposals(boxes, obj, shapes, counts, pre_nms_top_n=120, post_nms_top_n=90)
    for i in range(n):
        assert len(ob[i]) > 20
        np.testing.assert_allclose(ob[i], rb[i].numpy(), rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(os_[i], rs[i].numpy(), rtol=1e-12, atol=1e-12)


def test_whole_rpn_inference_vs_torchvision():
    rng = np.random.default_rng(3)
    params = {k: rng.standard_normal(v.shape) * 0.3
              for k, v in init_rpn_head(4, 3, rng=rng, dtype=np.float64).items()}
    image, grids = (64, 64), [(16, 16), (8, 8)]
    feats = [rng.standard_normal((2, 4) + g) for g in grids]
    sizes = [(64, 60), (50, 64)]
    rpn = _rpn(200, 150, head=_load_head(params)).eval()
    with torch.no_grad():
        rb, _ = rpn(ImageList(torch.zeros(2, 3, *image), sizes), {"0": _t(feats[0]), "1": _t(feats[1])})
    (obj, deltas), _ = rpn_head_forward(params, feats)
    anchors = pyramid_anchors(image, grids, sizes=SIZES, aspect_ratios=RATIOS)
    ob, _ = generate_proposals(obj, deltas, [a.astype(np.float64) for a in anchors], sizes,
                               pre_nms_top_n=200, post_nms_top_n=150)
    for i in range(2):
        assert len(ob[i]) > 20
        np.testing.assert_allclose(ob[i], rb[i].numpy(), rtol=1e-9, atol=1e-9)
