"""Where the time of the 800 px backbone + FPN inference (and the RPN head) goes, layer by layer.

Runs ``fpn._backbone_infer`` (what ``model.predict`` runs) on one 1 x 3 x S x S float32 image
with the torchvision_config parameters, with every piece wrapped by a CPU-time stopwatch
(``time.process_time``; run with ``OPENBLAS_NUM_THREADS=1``): each convolution's kernel
(``kernels.conv.conv2d_forward`` / ``conv2d_infer``) by shape, with its GFLOP/s against the
GEMM rate of the same process and against a bare GEMM of its im2col shape; the bias add
(``ops.conv`` minus the kernel), the BN fold, the ReLUs, the residual adds (what is left of
a block), the max-pools, the FPN's upsample + add, the RPN head. Best of ``--repeats``
per row. Optionally (``--torch``) torch's own per-op times of the same forward under
``torch.profiler`` (one thread).

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE OPENBLAS_NUM_THREADS=1 \\
        python benchmarks/profile_backbone_infer.py [--torch]
"""
from __future__ import annotations

import argparse
import collections
import time

import numpy as np

import _common  # noqa: F401  (puts the checkout on sys.path)

from mrcnn_np import backbone as B, fpn as FP, rpn as R  # noqa: E402
from mrcnn_np.kernels import conv as KC  # noqa: E402
from mrcnn_np.ops import conv as OC  # noqa: E402

clock = time.process_time


class Prof:
    def __init__(self):
        self.t = collections.defaultdict(float)
        self.n = collections.defaultdict(int)
        self.flops = collections.defaultdict(float)
        self.stack = []

    def wrap(self, mod, name, label, keyfn=None, flopfn=None):
        f = getattr(mod, name)
        prof = self

        def w(*a, **k):
            key = label if keyfn is None else f"{label} {keyfn(*a, **k)}"
            t0 = clock()
            out = f(*a, **k)
            dt = clock() - t0
            prof.t[key] += dt
            prof.n[key] += 1
            if flopfn is not None:
                prof.flops[key] += flopfn(out, *a, **k)
            return out
        setattr(mod, name, w)
        return f


def conv_key(x, w, stride, padding, dilation, out_hw, *a, **k):
    N, C, H, W = x.shape
    F, _, KH, KW = w.shape
    return f"{C:4d}->{F:<4d} {KH}x{KW}/{stride[0]} {H}x{W}"


def conv_flops(out, x, w, stride, padding, dilation, out_hw, *a, **k):
    F, C, KH, KW = w.shape
    return 2.0 * x.shape[0] * F * C * KH * KW * out_hw[0] * out_hw[1]


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=800)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--torch", action="store_true")
    ap.add_argument("--rpn", action="store_true", help="also the RPN head")
    args = ap.parse_args(argv)
    from mrcnn_np import model as M
    from mrcnn_np.config import torchvision_config
    config = torchvision_config()
    rng = np.random.default_rng(0)
    params = M.init_params(config, rng=rng)
    x = rng.standard_normal((1, 3, args.size, args.size)).astype(np.float32)
    structure, in_names = FP._check_backbone_params(params, x.dtype)
    a = rng.standard_normal((1024, 1024), dtype=np.float32)
    t0 = clock(); [a @ a for _ in range(5)]; gemm = 5 * 2 * 1024 ** 3 / (clock() - t0) / 1e9

    runs = []
    for _ in range(args.repeats):
        p = Prof()
        origs = [
            (KC, "conv2d_fused", p.wrap(KC, "conv2d_fused", "conv", conv_key, conv_flops)),
            (B, "_fold_bn", p.wrap(B, "_fold_bn", "fold_bn")),
            (B, "_max_pool2d", p.wrap(B, "_max_pool2d", "maxpool 3x3/2")),
            (B, "_bottleneck_infer", p.wrap(B, "_bottleneck_infer", "~block total")),
            (FP, "_add_upsampled_nearest", p.wrap(FP, "_add_upsampled_nearest", "fpn upsample+add")),
            (FP, "_max_pool2d", p.wrap(FP, "_max_pool2d", "fpn P6 pool")),
            (FP, "_resnet_infer", p.wrap(FP, "_resnet_infer", "~body total")),
        ]
        try:
            t0 = clock()
            pyr = FP._backbone_infer(params, x, structure, in_names)
            total = clock() - t0
            if args.rpn:
                rp = Prof()
                o2 = [(R, "_conv2d_fused", rp.wrap(R, "_conv2d_fused", "rpn 3x3 conv+bias+relu")),
                      (R, "_conv1x1_stacked", rp.wrap(R, "_conv1x1_stacked", "rpn 1x1 cls+box"))]
                t1 = clock()
                R._rpn_head_infer(params, pyr)
                p.t["~rpn head total"] = clock() - t1
                for k, v in rp.t.items():
                    p.t[k] = v
                for mod, name, f in o2:
                    setattr(mod, name, f)
        finally:
            for mod, name, f in reversed(origs):
                setattr(mod, name, f)
        p.t["~backbone+fpn total"] = total
        runs.append(p)
    best = {k: min(r.t[k] for r in runs) for k in runs[0].t}
    p = runs[0]
    conv_total = sum(best[k] for k in best if k.startswith("conv "))
    flops = sum(p.flops[k] for k in p.flops)
    print(f"GEMM 1024^3: {gemm:.1f} GFLOP/s (CPU time, one thread?)")
    print(f"backbone+FPN total {best['~backbone+fpn total'] * 1e3:.0f} ms, convs (kernel) {conv_total * 1e3:.0f} ms, "
          f"{flops / 1e9:.1f} GFLOP: {flops / best['~backbone+fpn total'] / 1e9:.1f} GFLOP/s overall, "
          f"convs alone {flops / conv_total / 1e9:.1f} GFLOP/s")
    rows = []
    for k in best:
        if k.startswith("conv "):
            rows.append((best[k], k, p.n[k], p.flops[k] / best[k] / 1e9))
    rows.sort(reverse=True)
    print(f"\n{'conv kernel':40s} {'n':>3s} {'ms':>7s} {'GF/s':>6s} {'%GEMM':>6s}")
    for t, k, n, r in rows:
        print(f"{k:40s} {n:3d} {t * 1e3:7.1f} {r:6.1f} {r / gemm:6.0%}")
    print()
    for k in sorted(best):
        if not k.startswith("conv "):
            print(f"{k:40s} {p.n[k]:3d} {best[k] * 1e3:7.1f}")
    body_convs = sum(best[k] for k in best if k.startswith("conv ") and "rpn" not in k)
    print("(conv rows include their bias, residual and ReLU; with --rpn they include the RPN head's convs)")

    if args.torch:
        import torch
        from torch.profiler import profile, ProfilerActivity
        torch.set_num_threads(1)
        from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
        model = resnet_fpn_backbone(backbone_name="resnet50", weights=None, trainable_layers=3).eval()
        tx = torch.from_numpy(x)
        with torch.no_grad():
            model(tx)
            ts = []
            for _ in range(args.repeats):
                t0 = clock(); model(tx); ts.append(clock() - t0)
            print(f"\ntorch backbone+FPN: best {min(ts) * 1e3:.0f} ms (CPU time, 1 thread)")
            with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
                model(tx)
        print(prof.key_averages(group_by_input_shape=True).table(sort_by="self_cpu_time_total", row_limit=40))


if __name__ == "__main__":
    main()
