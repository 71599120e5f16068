"""Speed of mrcnn_np.evaluate.coco_evaluate against pycocotools' COCOeval.

Data: 500 images of 128x128 with 1 to 6 objects each (rectangles and ellipses,
3 categories, some crowd regions) and 100 detections per image (noisy copies
of the objects plus random boxes), both as boxes and as masks.

Timed (min over repeats: the machine is shared):

- ours: ``coco_evaluate(gt, det, iou_type=...)`` from the dense arrays
  (bit-packing the masks, IoUs, matching, accumulation, the 12 stats);
- pycocotools (when importable; run with a Python that has it): building the
  ground-truth index + ``loadRes`` + ``evaluate`` + ``accumulate`` +
  ``summarize`` from RLE-encoded masks; the RLE encoding of the masks
  (``mask.encode``), which pycocotools needs beforehand, is timed separately.

It also prints the largest difference between the two sets of 12 stats, and
a float32 GEMM rate measured in the same process to tell how busy the machine
was. Run with the OpenBLAS overrides removed, e.g.
``env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/bench_evaluate.py``.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import sys
import time

import numpy as np

from _common import best_of, gemm_gflops  # noqa: E402  (also puts the checkout on sys.path)

from mrcnn_np.evaluate import coco_evaluate  # noqa: E402


def region(rng, size, scale):
    h = w = size
    bh, bw = (np.clip(rng.normal(scale, scale / 3, 2), 3, size - 1)).astype(int)
    y0, x0 = rng.integers(0, h - bh + 1), rng.integers(0, w - bw + 1)
    m = np.zeros((h, w), bool)
    if rng.random() < 0.5:
        m[y0:y0 + bh, x0:x0 + bw] = True
    else:
        yy, xx = np.ogrid[:h, :w]
        m = ((yy + 0.5 - y0 - bh / 2) / (bh / 2)) ** 2 + ((xx + 0.5 - x0 - bw / 2) / (bw / 2)) ** 2 <= 1
    return m


def tight_boxes(masks):
    n = len(masks)
    out = np.zeros((n, 4))
    rows = masks.any(axis=2)
    cols = masks.any(axis=1)
    for i in range(n):
        ys, xs = np.flatnonzero(rows[i]), np.flatnonzero(cols[i])
        if len(ys):
            out[i] = xs[0], ys[0], xs[-1] + 1, ys[-1] + 1
    return out


def make_data(n_images=500, n_dets=100, size=128, seed=0):
    rng = np.random.default_rng(seed)
    gts, dts = [], []
    for i in range(n_images):
        g = int(rng.integers(1, 7))
        gm = np.array([region(rng, size, rng.choice([12, 30, 60])) for _ in range(g)])
        gl = rng.integers(1, 4, g)
        crowd = rng.random(g) < 0.05
        src = rng.integers(0, g, n_dets)
        noisy = rng.random(n_dets) < 0.6
        dm = np.empty((n_dets, size, size), bool)
        for j in range(n_dets):
            if noisy[j]:
                dy, dx = rng.integers(-6, 7, 2)
                dm[j] = np.roll(gm[src[j]], (dy, dx), axis=(0, 1))
            else:
                dm[j] = region(rng, size, rng.choice([12, 30, 60]))
        dl = np.where(noisy & (rng.random(n_dets) < 0.9), gl[src], rng.integers(1, 4, n_dets))
        gts.append({"boxes": tight_boxes(gm), "labels": gl, "masks": gm, "iscrowd": crowd, "image_id": i + 1})
        dts.append({"boxes": tight_boxes(dm) + rng.normal(0, 1, (n_dets, 4)), "labels": dl,
                    "masks": dm, "scores": rng.random(n_dets)})
    return gts, dts


def pycocotools_runner(gts, dts):
    from pycocotools import mask as mask_utils
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    t = time.perf_counter()
    g_rles = [mask_utils.encode(np.asfortranarray(g["masks"].transpose(1, 2, 0).astype(np.uint8))) for g in gts]
    d_rles = [mask_utils.encode(np.asfortranarray(d["masks"].transpose(1, 2, 0).astype(np.uint8))) for d in dts]
    encode_time = time.perf_counter() - t

    def run(iou_type):
        images, anns, res = [], [], []
        k = 1
        for g, d, gr, dr in zip(gts, dts, g_rles, d_rles):
            iid = g["image_id"]
            images.append({"id": iid, "height": 128, "width": 128})
            for b, lab, c, r, m in zip(g["boxes"], g["labels"], g["iscrowd"], gr, g["masks"]):
                anns.append({"id": k, "image_id": iid, "category_id": int(lab), "iscrowd": int(c),
                             "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]], "area": float(m.sum()),
                             "segmentation": r})
                k += 1
            for b, lab, s, r in zip(d["boxes"], d["labels"], d["scores"], dr):
                item = {"image_id": iid, "category_id": int(lab), "score": float(s)}
                if iou_type == "bbox":
                    item["bbox"] = [float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])]
                else:
                    item["segmentation"] = r
                res.append(item)
        with contextlib.redirect_stdout(io.StringIO()):
            coco = COCO()
            coco.dataset = {"images": images, "annotations": anns,
                            "categories": [{"id": c, "name": str(c)} for c in (1, 2, 3)]}
            coco.createIndex()
            ev = COCOeval(coco, coco.loadRes(res), iouType=iou_type)
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
        return np.array(ev.stats)

    return run, encode_time


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=500)
    ap.add_argument("--dets", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)

    t = time.perf_counter()
    gts, dts = make_data(args.images, args.dets)
    print(f"data: {args.images} images x {args.dets} detections, 128x128 masks "
          f"({sum(len(g['labels']) for g in gts)} ground-truth objects), made in {time.perf_counter() - t:.1f} s")
    print(f"float32 GEMM 1024^3 in this process: {gemm_gflops():.0f} GFLOP/s")
    try:
        run_ref, encode_time = pycocotools_runner(gts, dts)
    except ImportError:
        run_ref = None
        print("pycocotools not importable: only our timings")
    else:
        print(f"pycocotools mask.encode of all masks (its input preparation): {encode_time:.2f} s")
    if run_ref is None:
        print(f"{'iou_type':8s} {'ours [s]':>9s}")
    else:
        print(f"{'iou_type':8s} {'ours [s]':>9s} {'pycocotools [s]':>16s} {'speed-up':>9s} {'max |stats diff|':>17s}")
    for iou_type in ("bbox", "segm"):
        t_ours, ours = best_of(lambda: coco_evaluate(gts, dts, iou_type=iou_type), args.repeats)
        if run_ref is None:
            print(f"{iou_type:8s} {t_ours:9.2f}")
            continue
        t_ref, ref = best_of(lambda: run_ref(iou_type), max(1, args.repeats - 1))
        diff = np.abs(ours.stats - ref).max()
        print(f"{iou_type:8s} {t_ours:9.2f} {t_ref:16.2f} {t_ref / t_ours:8.1f}x {diff:17.2e}")


if __name__ == "__main__":
    main()
