"""SGD and the warm-up + step schedule against torch.optim (optional)."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from mrcnn_np.train import clip_grad_norm, learning_rate, sgd_step  # noqa: E402


def test_schedule_and_sgd_match_torch():
    rng = np.random.default_rng(0)
    p0 = {"a": rng.standard_normal((3, 4)), "b": rng.standard_normal(5)}
    grads_seq = [{k: rng.standard_normal(v.shape) for k, v in p0.items()} for _ in range(40)]
    kw = dict(base_lr=0.05, warmup_iters=7, warmup_factor=0.01, milestones=(15, 30), gamma=0.3)

    tp = {k: torch.tensor(v, requires_grad=True) for k, v in p0.items()}
    opt = torch.optim.SGD(list(tp.values()), lr=kw["base_lr"], momentum=0.9, weight_decay=1e-4)
    warm = torch.optim.lr_scheduler.LinearLR(opt, start_factor=kw["warmup_factor"],
                                             total_iters=kw["warmup_iters"])
    steps = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=list(kw["milestones"]),
                                                 gamma=kw["gamma"])
    ours = {k: v.copy() for k, v in p0.items()}
    buffers = {}
    for step, grads in enumerate(grads_seq):
        lr = learning_rate(step, **kw)
        assert lr == pytest.approx(opt.param_groups[0]["lr"], rel=1e-12), step
        for k, t in tp.items():
            t.grad = torch.tensor(grads[k])
        opt.step()
        warm.step()
        steps.step()
        sgd_step(ours, {k: g.copy() for k, g in grads.items()}, buffers, lr=lr,
                 momentum=0.9, weight_decay=1e-4)
        for k in ours:
            np.testing.assert_allclose(ours[k], tp[k].detach().numpy(), rtol=1e-12, atol=1e-14)


def test_clip_grad_norm_matches_torch():
    rng = np.random.default_rng(1)
    grads = {"a": rng.standard_normal((4, 3)) * 3, "b": rng.standard_normal(7)}
    tp = [torch.zeros(g.shape, dtype=torch.float64, requires_grad=True) for g in grads.values()]
    for t, g in zip(tp, grads.values()):
        t.grad = torch.tensor(g)
    norm_t = torch.nn.utils.clip_grad_norm_(tp, 2.0)
    norm = clip_grad_norm(grads, 2.0)
    assert norm == pytest.approx(float(norm_t), rel=1e-12)
    for t, g in zip(tp, grads.values()):
        np.testing.assert_allclose(g, t.grad.numpy(), rtol=1e-12)
