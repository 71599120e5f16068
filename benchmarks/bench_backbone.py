"""Speed of the ResNet-50-FPN forward (mrcnn_np.backbone + fpn) on one image.

Times, in one process (min over repeats: the machine is shared):

- the whole forward ``resnet_forward`` + ``fpn_forward`` on one float32
  3 x S x S image (S = 800 by default), in seconds and achieved GFLOP/s, the
  FLOPs counted analytically (2 * C_in * k * k * C_out * H_out * W_out per
  convolution, the multiply-adds of every conv; BN, ReLU, pooling, the
  residual sums and the upsampling are not counted);
- a float32 GEMM rate measured in the same process (the best of a few large
  square and im2col-like products): the ceiling an im2col convolution can
  reach, and the yardstick for the target (>= 60 % of it over the forward);
  because the shared machine's load swings within seconds, every forward
  repeat is also paired with a GEMM probe run just before it, and the ratio
  of each pair is printed;
- with ``--backward``: ``backbone_backward`` with ``trainable_layers=3``;
- with ``--per-conv``: every distinct convolution shape of the forward on its
  own, against the bare GEMM of its im2col shape ``(F, K) @ (K, M)``, so a
  slow shape shows up by name;
- torchvision's ``resnet_fpn_backbone("resnet50")`` forward under
  ``torch.no_grad()`` when torch is importable (run this script with a Python
  that has torch for that line).

Run with the OpenBLAS overrides of the build machine removed, e.g.
``env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/bench_backbone.py``.
"""
from __future__ import annotations

import argparse

import numpy as np

from _common import best_seconds, gemm_gflops  # noqa: E402  (also puts the checkout on sys.path)

from mrcnn_np.backbone import init_resnet, resnet_conv_specs, resnet_forward, resnet_structure  # noqa: E402
from mrcnn_np.fpn import fpn_forward, init_fpn  # noqa: E402
from mrcnn_np.ops.conv import conv2d_forward, conv_output_size  # noqa: E402


def conv_list(params, size):
    """Every convolution of ResNet-50-FPN for a 1 x 3 x size x size input.

    Returns a list of (name, C_in, C_out, k, stride, padding, H_in, W_in, H_out, W_out, flops).
    """
    stem, stages = resnet_conv_specs(resnet_structure(params))
    out = []

    def add(name, cin, cout, k, s, p, h, w):
        ho = conv_output_size(h, k, stride=s, padding=p)
        wo = conv_output_size(w, k, stride=s, padding=p)
        out.append((name, cin, cout, k, s, p, h, w, ho, wo, 2 * cin * k * k * cout * ho * wo))
        return ho, wo

    h, w = add(stem.conv, 3, stem.out_channels, 7, 2, 3, size, size)
    h, w = conv_output_size(h, 3, stride=2, padding=1), conv_output_size(w, 3, stride=2, padding=1)
    level_hw = []
    for blocks in stages:
        for specs in blocks:
            hin, win = h, w
            for spec in specs[:3]:
                h, w = add(spec.conv, spec.in_channels, spec.out_channels, spec.kernel, spec.stride,
                           spec.padding, h, w)
            if specs[3] is not None:
                d = specs[3]
                add(d.conv, d.in_channels, d.out_channels, 1, d.stride, 0, hin, win)
        level_hw.append((blocks[-1][2].out_channels, h, w))
    d = params["backbone.fpn.inner_blocks.0.0.weight"].shape[0]
    for i, (c, lh, lw) in enumerate(level_hw):
        add(f"backbone.fpn.inner_blocks.{i}.0.weight", c, d, 1, 1, 0, lh, lw)
        add(f"backbone.fpn.layer_blocks.{i}.0.weight", d, d, 3, 1, 1, lh, lw)
    return out


def gemm_rate(rng, repeats):
    """Best float32 GEMM GFLOP/s over a few shapes like the forward's."""
    shapes = ((2048, 2048, 2048), (256, 2304, 10000), (128, 1152, 40000))
    return max(gemm_gflops(m, k, n, repeats=repeats, rng=rng) for m, k, n in shapes)


def per_conv(convs, rng, repeats):
    """Time each distinct conv shape alone and its bare GEMM; print a table."""
    shapes = {}
    for name, cin, cout, k, s, p, h, w, ho, wo, flops in convs:
        shapes.setdefault((cin, cout, k, s, p, h, w), [0, flops, ho, wo])[0] += 1
    rows = []
    for (cin, cout, k, s, p, h, w), (count, flops, ho, wo) in shapes.items():
        x = rng.standard_normal((1, cin, h, w), dtype=np.float32)
        wt = rng.standard_normal((cout, cin, k, k), dtype=np.float32)
        b = rng.standard_normal(cout, dtype=np.float32)
        A = rng.standard_normal((cout, cin * k * k), dtype=np.float32)
        B = rng.standard_normal((cin * k * k, ho * wo), dtype=np.float32)
        t_conv = t_gemm = float("inf")
        for _ in range(repeats):  # interleaved, so both see the same machine load
            t_conv = min(t_conv, best_seconds(lambda: conv2d_forward(x, wt, b, stride=s, padding=p), 1))
            t_gemm = min(t_gemm, best_seconds(lambda: A @ B, 1))
        rows.append((count * t_conv, count, cin, cout, k, s, h, w, t_conv, t_gemm, flops))
        del x, A, B
    rows.sort(reverse=True)
    print("\nper conv shape (sorted by total time; x = count in the forward):")
    print(f"{'C_in->C_out':>13s} {'k/s':>5s} {'in HxW':>9s} {'x':>3s} {'ms each':>8s} {'GF/s':>6s} "
          f"{'GEMM ms':>8s} {'GEMM GF/s':>9s} {'conv/GEMM':>9s} {'total ms':>9s}")
    for total, count, cin, cout, k, s, h, w, tc, tg, flops in rows:
        flag = "  <-- slow" if tg / tc < 0.6 else ""
        print(f"{cin:5d}->{cout:<6d} {k}/{s:<3d} {h:4d}x{w:<4d} {count:3d} {tc * 1e3:8.2f} "
              f"{flops / tc / 1e9:6.1f} "
              f"{tg * 1e3:8.2f} {flops / tg / 1e9:9.1f} {tg / tc:9.2f} {total * 1e3:9.1f}{flag}")
    return sum(r[0] for r in rows)


def bench_torch(size, repeats):
    try:
        import torch
        from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
    except ImportError:
        return None
    model = resnet_fpn_backbone(backbone_name="resnet50", weights=None, trainable_layers=3).eval()
    x = torch.randn(1, 3, size, size)
    with torch.no_grad():
        model(x)
        return best_seconds(lambda: model(x), repeats), torch.get_num_threads()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=800, help="image side (default 800)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--per-conv", action="store_true", help="time every distinct conv shape alone")
    ap.add_argument("--no-fold-bn", action="store_true", help="run BN as its own op (fold_bn=False)")
    ap.add_argument("--backward", action="store_true",
                    help="also time backbone_backward (trainable_layers=3, as the reference)")
    args = ap.parse_args(argv)
    rng = np.random.default_rng(0)

    params = init_resnet(50, rng=rng)
    params.update(init_fpn([256, 512, 1024, 2048], 256, rng=rng))
    x = rng.standard_normal((1, 3, args.size, args.size), dtype=np.float32)
    convs = conv_list(params, args.size)
    flops = sum(c[-1] for c in convs)
    body = sum(c[-1] for c in convs if c[0].startswith("backbone.body."))
    print(f"ResNet-50-FPN forward, 1 x 3 x {args.size} x {args.size} float32: {len(convs)} convolutions, "
          f"{flops / 1e9:.1f} GFLOP (body {body / 1e9:.1f}, FPN {(flops - body) / 1e9:.1f})")

    gemm = gemm_rate(rng, args.repeats)
    print(f"float32 GEMM in this process: {gemm:.1f} GFLOP/s")

    fold = not args.no_fold_bn

    def forward():
        feats, _ = resnet_forward(params, x, fold_bn=fold)
        fpn_forward(params, feats)

    # The machine is shared and its load swings by several times within seconds,
    # so each forward is paired with a GEMM probe measured right before it; the
    # ratio of the pair is the load-robust number, the minima are reported too.
    a = rng.standard_normal((256, 2304), dtype=np.float32)
    b = rng.standard_normal((2304, 10000), dtype=np.float32)
    probe_flops = 2 * 256 * 2304 * 10000
    times, ratios = [], []
    for _ in range(args.repeats):
        tg = best_seconds(lambda: a @ b, 2)
        tf = best_seconds(forward, 1)
        times.append(tf)
        ratios.append((flops / tf) / (probe_flops / tg))
    t = min(times)
    t_body = best_seconds(lambda: resnet_forward(params, x, fold_bn=fold), args.repeats)
    rate = flops / t / 1e9
    print(f"mrcnn_np forward (fold_bn={fold}): best {t:.3f} s (body alone {t_body:.3f} s), "
          f"{rate:.1f} GFLOP/s = {rate / gemm:.0%} of the best GEMM rate")
    print("  per repeat, forward rate / GEMM probe rate measured just before: "
          + ", ".join(f"{r:.0%}" for r in ratios) + f"  (best {max(ratios):.0%})")
    gemm2 = gemm_rate(rng, args.repeats)
    print(f"float32 GEMM again after the forward: {gemm2:.1f} GFLOP/s")

    if args.backward:
        from mrcnn_np.backbone import REFERENCE_TRAINABLE_LAYERS
        from mrcnn_np.fpn import backbone_backward, backbone_forward

        pyramid, cache = backbone_forward(params, x, fold_bn=fold)
        dpyr = [np.ones_like(v) for v in pyramid]
        tb = best_seconds(lambda: backbone_backward(dpyr, cache, trainable_layers=REFERENCE_TRAINABLE_LAYERS),
                   args.repeats)
        print(f"mrcnn_np backward (trainable_layers=3): {tb:.3f} s")

    if args.per_conv:
        t_convs = per_conv(convs, rng, args.repeats)
        print(f"sum of the convolutions timed alone: {t_convs:.3f} s; the rest of the forward "
              f"(BN, ReLU, pooling, sums, upsampling, caches): ~{max(t - t_convs, 0):.3f} s")

    res = bench_torch(args.size, args.repeats)
    if res is None:
        print("torchvision: not importable here (run with a Python that has torch for the comparison)")
    else:
        tt, threads = res
        print(f"torchvision resnet_fpn_backbone forward: {tt:.3f} s ({threads} threads), "
              f"{flops / tt / 1e9:.1f} GFLOP/s; mrcnn_np / torch time = {t / tt:.2f}")


if __name__ == "__main__":
    main()
