"""Benchmark: defectmap's pixel metrics against the official MVTec AD algorithm.

Builds a synthetic category of hazelnut's size (110 test images of 1024x1024 = 115 M
pixels: 40 good images, 70 with 1-4 elliptical defects each, float32 maps with ties) and
times, each in a fresh subprocess:

* ``aupro``: AU-PRO at FPR 0.3 alone;
* ``pixel``: pixel AUROC + AU-PRO + pixel F1-max together;

for ``ours`` (:mod:`defectmap.metrics`) and ``baseline``, a straightforward transcription of
the official MVTec AD evaluation code (one global argsort over all pixels, ``np.take`` of
per-pixel FP / PRO increments, cumulative sums, one point per distinct score, bisect
trapezoid). The baseline differs from the official code in one way only: it turns
cumulative FP counts into float64 FPRs after collapsing ties, where the official code casts
them to float32 first (which alone moves AU-PRO by ~1e-8), so that both implementations
can be required to agree within 1e-9. Its pixel AUROC / F1 use the same sorted order.

Printed: the median wall time over ``--repeats`` runs, the speed ratio, and the peak memory
(``ru_maxrss``) of each subprocess, also net of the data itself. The script fails when the
two implementations disagree. Usage::

    .venv/bin/python benchmarks/metrics.py            # full size, 3 repeats
    .venv/bin/python benchmarks/metrics.py --small    # 20 images of 256x256
"""

from __future__ import annotations

import argparse
import bisect
import json
import resource
import statistics
import subprocess
import sys
import time

import numpy as np
from scipy import ndimage

FPR_LIMIT = 0.3
TOLERANCE = 1e-9


# --------------------------------------------------------------------------- data
def make_category(n_images: int, size: int, seed: int = 0) -> tuple[list, list]:
    """Float32 maps and uint8 masks of a hazelnut-like category (about 40/110 good)."""
    rng = np.random.default_rng(seed)
    n_good = round(n_images * 40 / 110)
    yy, xx = np.ogrid[:size, :size]
    maps, masks = [], []
    for i in range(n_images):
        mask = np.zeros((size, size), dtype=bool)
        if i >= n_good:
            for _ in range(rng.integers(1, 5)):
                cy, cx = rng.integers(0, size, 2)
                ry, rx = rng.uniform(0.01, 0.08, 2) * size
                mask |= ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0
        low = rng.random((size // 32, size // 32), dtype=np.float32)
        smooth = ndimage.zoom(low, size / low.shape[0], order=1)[:size, :size]
        m = 0.5 * smooth + 0.3 * rng.random((size, size), dtype=np.float32)
        m += mask * np.float32(rng.uniform(0.1, 0.6))
        np.maximum(m - np.float32(0.15), 0, out=m)  # a block of exact zeros: many ties
        maps.append(m.astype(np.float32, copy=False))
        masks.append(mask.astype(np.uint8))
    return maps, masks


# --------------------------------------------------------------------------- baseline
def official_trapezoid(x: np.ndarray, y: np.ndarray, x_max: float) -> float:
    """``generic_util.trapezoid`` of the official code."""
    correction = 0.0
    if x_max not in x:
        ins = bisect.bisect(x, x_max)
        y_interp = y[ins - 1] + (y[ins] - y[ins - 1]) * (x_max - x[ins - 1]) / (x[ins] - x[ins - 1])
        correction = 0.5 * (y_interp + y[ins - 1]) * (x_max - x[ins - 1])
    mask = x <= x_max
    x, y = x[mask], y[mask]
    return float(np.sum(0.5 * (y[1:] + y[:-1]) * (x[1:] - x[:-1])) + correction)


def baseline(maps: list, masks: list, fpr_limit: float, everything: bool) -> dict:
    """The official ``compute_pro`` (+ AUROC / F1 from the same order when ``everything``)."""
    structure = np.ones((3, 3), dtype=int)
    shape = (len(maps), *maps[0].shape)
    fp_changes = np.zeros(shape, dtype=np.uint32)
    pro_changes = np.zeros(shape, dtype=np.float64)
    n_ok = n_regions = 0
    for i, gt in enumerate(masks):
        labeled, n_components = ndimage.label(gt, structure)
        n_regions += n_components
        ok = labeled == 0
        n_ok += int(np.sum(ok))
        fp_changes[i, ok] = 1
        for k in range(n_components):
            region = labeled == (k + 1)
            pro_changes[i, region] = 1.0 / np.sum(region)
    scores = np.array(maps).ravel()
    fp = fp_changes.ravel()
    pro = pro_changes.ravel()
    idx = np.argsort(scores).astype(np.uint32)[::-1]
    np.take(scores, idx, out=scores)
    np.take(fp, idx, out=fp)
    np.take(pro, idx, out=pro)
    del idx
    np.cumsum(fp, out=fp)
    np.cumsum(pro, out=pro)
    keep = np.append(np.diff(scores) != 0, np.True_)
    del scores
    fp_kept = fp[keep].astype(np.float64)
    fprs = np.clip(fp_kept / n_ok, None, 1.0)
    pros = np.clip(pro[keep] / n_regions, None, 1.0)
    x = np.concatenate(([0.0], fprs, [1.0]))
    y = np.concatenate(([0.0], pros, [1.0]))
    out = {"aupro": official_trapezoid(x, y, fpr_limit) / fpr_limit}
    if everything:
        n_ge = np.flatnonzero(keep) + 1.0  # pixels scoring >= each threshold
        n_anom = fp.size - n_ok
        tp = n_ge - fp_kept
        tpr = np.concatenate(([0.0], tp / n_anom))
        out["pixel_auroc"] = float(np.trapezoid(tpr, np.concatenate(([0.0], fp_kept / n_ok))))
        out["pixel_f1_max"] = float(np.max(2.0 * tp / (n_ge + n_anom)))
    return out


def ours(maps: list, masks: list, fpr_limit: float, everything: bool) -> dict:
    from defectmap import metrics

    if everything:
        return metrics.pixel_metrics(maps, masks, fpr_limit)
    return {"aupro": metrics.aupro(maps, masks, fpr_limit)}


# --------------------------------------------------------------------------- worker
def max_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def worker(impl: str, task: str, n_images: int, size: int, repeats: int) -> None:
    maps, masks = make_category(n_images, size)
    rss_data = max_rss_mib()
    fn = ours if impl == "ours" else baseline
    times, values = [], {}
    for _ in range(repeats):
        start = time.perf_counter()
        values = fn(maps, masks, FPR_LIMIT, task == "pixel")
        times.append(time.perf_counter() - start)
    print(json.dumps({"times": times, "values": values, "rss_data": rss_data,
                      "rss_peak": max_rss_mib()}))


def run_worker(impl: str, task: str, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, __file__, "--worker", impl, "--task", task,
           "--n-images", str(args.n_images), "--size", str(args.size),
           "--repeats", str(args.repeats)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        sys.exit(f"{impl}/{task} failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--small", action="store_true", help="20 images of 256x256")
    parser.add_argument("--n-images", type=int, default=110)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--task", choices=["aupro", "pixel"], nargs="*", default=None)
    parser.add_argument("--worker", choices=["ours", "baseline"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.small:
        args.n_images, args.size = 20, 256
    if args.worker:
        worker(args.worker, args.task[0], args.n_images, args.size, args.repeats)
        return

    n_pixels = args.n_images * args.size**2
    print(f"synthetic category: {args.n_images} maps of {args.size}x{args.size} "
          f"= {n_pixels / 1e6:.1f} M pixels, float32; median of {args.repeats} runs; "
          f"each implementation in a fresh subprocess")
    print(f"{'task':<7} {'impl':<9} {'median s':>9} {'runs s':>22} {'peak RSS MiB':>13} "
          f"{'net MiB':>8}")
    failures = []
    for task in args.task or ["aupro", "pixel"]:
        res = {impl: run_worker(impl, task, args) for impl in ("baseline", "ours")}
        for impl, r in res.items():
            runs = ", ".join(f"{t:.2f}" for t in r["times"])
            print(f"{task:<7} {impl:<9} {statistics.median(r['times']):>9.2f} {runs:>22} "
                  f"{r['rss_peak']:>13.0f} {r['rss_peak'] - r['rss_data']:>8.0f}")
        ratio = statistics.median(res["baseline"]["times"]) / statistics.median(
            res["ours"]["times"])
        mem = res["baseline"]["rss_peak"] / res["ours"]["rss_peak"]
        print(f"{task:<7} speed-up x{ratio:.1f}, peak memory baseline/ours x{mem:.2f}")
        for key, ref in res["baseline"]["values"].items():
            got = res["ours"]["values"][key]
            status = "ok" if abs(got - ref) <= TOLERANCE else "DIFFER"
            print(f"        {key}: ours {got:.12f} baseline {ref:.12f} "
                  f"|diff| {abs(got - ref):.1e} {status}")
            if status != "ok":
                failures.append(f"{task}/{key}")
        if task == "pixel" and res["ours"]["rss_peak"] > 4096:
            failures.append("pixel metrics peak memory over 4 GiB")
    if failures:
        sys.exit("FAILED: " + ", ".join(failures))


if __name__ == "__main__":
    main()
