"""Speed of mrcnn_np.ops.conv against the bare GEMMs of the same im2col shapes.

For each convolution (float32) it times, in the same process and interleaved:

- forward (``conv2d_forward``) and forward + backward (``+ conv2d_backward``);
- the bare GEMM of the forward, ``(F, K) @ (K, M)`` with K = C*KH*KW and
  M = N*Ho*Wo, on contiguous random operands;
- the three GEMMs of forward + backward: output ``(F, K) @ (K, M)``, weight
  gradient ``(F, M) @ (M, K)`` and input gradient ``(K, F) @ (F, M)``;
- torch's ``F.conv2d`` (forward, and forward + autograd backward) when torch is
  importable (run this script with a Python that has torch for that column).

and prints milliseconds (min over repeats: the machine is shared), GFLOP/s and
the ratios conv / GEMM. Targets: forward within 1.3x of its GEMM, forward +
backward within 1.6x of its three GEMMs.

Run with the OpenBLAS overrides of the build machine removed, e.g.
``env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/bench_conv.py``.
"""
from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from _common import best_seconds  # noqa: E402  (also puts the checkout on sys.path)

from mrcnn_np.ops.conv import (  # noqa: E402
    conv2d_backward,
    conv2d_forward,
    conv_transpose2d_backward,
    conv_transpose2d_forward,
)

# (name, x shape, F, kernel, stride, padding)
CASES = [
    ("256x64x64 3x3->256 p1", (1, 256, 64, 64), 256, 3, 1, 1),
    ("64x128x128 3x3->64 p1", (1, 64, 128, 128), 64, 3, 1, 1),
    ("3x256x256 7x7 s2 p3->64", (1, 3, 256, 256), 64, 7, 2, 3),
]
EXTRA = [  # shapes the model runs: FPN/ResNet pointwise, mask head (R RoIs of 14x14)
    ("1x1 1024x50x50->256", (1, 1024, 50, 50), 256, 1, 1, 0),
    ("mask 64x256x14x14 3x3", (64, 256, 14, 14), 256, 3, 1, 1),
]


def _torch():
    try:
        import torch
    except ImportError:
        return None
    return torch


def bench_case(xshape, F, k, s, p, *, repeats, rng, torch=None):
    N, C, H, W = xshape
    x = rng.standard_normal(xshape, dtype=np.float32)
    w = (rng.standard_normal((F, C, k, k), dtype=np.float32) * 0.05).astype(np.float32)
    b = rng.standard_normal(F, dtype=np.float32)
    out, cache = conv2d_forward(x, w, b, stride=s, padding=p)
    dout = rng.standard_normal(out.shape, dtype=np.float32)
    K, M = C * k * k, N * out.shape[2] * out.shape[3]
    A = rng.standard_normal((F, K), dtype=np.float32)
    B = rng.standard_normal((K, M), dtype=np.float32)
    D = rng.standard_normal((F, M), dtype=np.float32)
    At = np.ascontiguousarray(A.T)
    Bt = np.ascontiguousarray(B.T)

    def fwd():
        conv2d_forward(x, w, b, stride=s, padding=p)

    def fwd_bwd():
        o, c = conv2d_forward(x, w, b, stride=s, padding=p)
        conv2d_backward(dout, c)

    tasks = {
        "fwd": fwd,
        "fb": fwd_bwd,
        "g_out": lambda: A @ B,
        "g_dw": lambda: D @ Bt,
        "g_dx": lambda: At @ D,
    }
    if torch is not None:
        tx = torch.from_numpy(x)
        tw = torch.from_numpy(w)
        tb = torch.from_numpy(b)
        tdout = torch.from_numpy(dout)

        def t_fwd():
            with torch.no_grad():
                torch.nn.functional.conv2d(tx, tw, tb, stride=s, padding=p)

        def t_fb():
            xx = tx.clone().requires_grad_(True)
            ww = tw.clone().requires_grad_(True)
            bb = tb.clone().requires_grad_(True)
            torch.nn.functional.conv2d(xx, ww, bb, stride=s, padding=p).backward(tdout)

        tasks["t_fwd"], tasks["t_fb"] = t_fwd, t_fb
    times = {key: float("inf") for key in tasks}
    # NumPy's BLAS threads and torch's OpenMP threads both keep spinning for a while
    # after a call and steal the two cores from whatever runs next (our forward came
    # out 10-30 % slower right after torch, torch's 2-3x slower right after NumPy).
    # So each repeat times one library's tasks as a group, then pauses until the
    # spinning stops and wakes the other library's threads with an untimed call.
    # (The wake-up call is a small GEMM on other data, so that no timed task finds
    # its own operands freshly in cache.)
    small = np.ones((512, 512), dtype=np.float32)
    groups = [([k for k in tasks if not k.startswith("t_")], lambda: small @ small)]
    if torch is not None:
        tsmall = torch.from_numpy(small)
        groups.append(([k for k in tasks if k.startswith("t_")], lambda: tsmall @ tsmall))
    for _ in range(repeats):  # interleaved, min over repeats
        for keys, wake in groups:
            if len(groups) > 1:
                time.sleep(0.2)
            wake()
            for key in keys:
                times[key] = min(times[key], best_seconds(tasks[key], 1))
    flops = 2.0 * F * K * M
    times["flops"] = flops
    return times


def bench_transpose(rng, repeats):
    # the mask head's upsampler: ConvTranspose2d(256, 256, 2, stride 2) on R RoIs of 14x14
    x = rng.standard_normal((64, 256, 14, 14), dtype=np.float32)
    w = (rng.standard_normal((256, 256, 2, 2), dtype=np.float32) * 0.05).astype(np.float32)
    out, cache = conv_transpose2d_forward(x, w, None, stride=2)
    dout = rng.standard_normal(out.shape, dtype=np.float32)
    K, M = 256 * 4, 64 * 14 * 14
    A = rng.standard_normal((K, 256), dtype=np.float32)
    B = rng.standard_normal((256, M), dtype=np.float32)
    fwd = best_seconds(lambda: conv_transpose2d_forward(x, w, None, stride=2), repeats)
    bwd = best_seconds(lambda: conv_transpose2d_backward(dout, cache), repeats)
    gemm = best_seconds(lambda: A @ B, repeats)
    return fwd, bwd, gemm, 2.0 * K * 256 * M


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--extra", action="store_true", help="also time model shapes")
    parser.add_argument("--no-torch", action="store_true")
    args = parser.parse_args(argv)
    torch = None if args.no_torch else _torch()
    if torch is not None:
        torch.set_num_threads(2)
    rng = np.random.default_rng(0)
    header = (f"{'case':26s} {'fwd ms':>8s} {'GF/s':>5s} {'gemm ms':>8s} {'GF/s':>5s} "
              f"{'fwd/gemm':>8s} | {'f+b ms':>8s} {'GF/s':>5s} {'3gemm ms':>8s} {'fb/3gemm':>8s}")
    if torch is not None:
        header += f" | {'torch fwd':>9s} {'torch f+b':>9s}"
    print(f"numpy {np.__version__}, float32, min of {args.repeats} repeats")
    print(header)
    cases = CASES + (EXTRA if args.extra else [])
    for name, xshape, F, k, s, p in cases:
        t = bench_case(xshape, F, k, s, p, repeats=args.repeats, rng=rng, torch=torch)
        g3 = t["g_out"] + t["g_dw"] + t["g_dx"]
        gf = t["flops"] / 1e9
        line = (f"{name:26s} {t['fwd'] * 1e3:8.2f} {gf / t['fwd']:5.0f} {t['g_out'] * 1e3:8.2f} "
                f"{gf / t['g_out']:5.0f} {t['fwd'] / t['g_out']:8.2f} | {t['fb'] * 1e3:8.2f} "
                f"{3 * gf / t['fb']:5.0f} {g3 * 1e3:8.2f} {t['fb'] / g3:8.2f}")
        if torch is not None:
            line += f" | {t['t_fwd'] * 1e3:9.2f} {t['t_fb'] * 1e3:9.2f}"
        print(line, flush=True)
    if args.extra:
        fwd, bwd, gemm, flops = bench_transpose(rng, args.repeats)
        print(f"conv_transpose2d 64x256x14x14 2x2 s2: fwd {fwd * 1e3:.2f} ms "
              f"({flops / fwd / 1e9:.0f} GF/s, {fwd / gemm:.2f}x its GEMM), bwd {bwd * 1e3:.2f} ms")


if __name__ == "__main__":
    main()
