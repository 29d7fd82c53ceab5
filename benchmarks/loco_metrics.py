"""Benchmark: AU-sPRO of MVTec LOCO AD in the exact and the official mode, at LOCO's size.

Builds a synthetic category the size of MVTec LOCO AD's breakfast_box test split (275
images of 1280x1600 = 563 M pixels; ``--small``: 60 images of 400x500): 102 good, 83
logical and 90 structural images with 1-3 elliptical defects each (absolute and relative
saturation), float32 maps. Above 10 M pixels the official mode draws its start thresholds
from a seeded subsample, as the official code does from an unseeded one.

Each mode runs in a fresh subprocess; printed are the median wall time over ``--repeats``
runs, the peak memory (``ru_maxrss``) and the peak net of the data, the number of
thresholds and the mean AU-sPRO at 0.05 and 0.3 (the two modes agree to about 1e-4 on
smooth maps; the fixture test checks both against the official code). Usage::

    .venv/bin/python benchmarks/loco_metrics.py            # full size, 3 repeats
    .venv/bin/python benchmarks/loco_metrics.py --small
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

import numpy as np
from scipy import ndimage

SATURATION = ((1.0, True), (0.5, True), (400, False), (2000, False))


def make_category(n_good: int, n_logical: int, n_structural: int, height: int, width: int,
                  seed: int = 0) -> tuple[list, list, list, list]:
    """Maps, image types, masks and saturation areas of a LOCO-like category."""
    from defectmap.metrics import saturation_area

    rng = np.random.default_rng(seed)
    yy, xx = np.ogrid[:height, :width]
    kinds = (["good"] * n_good + ["logical_anomalies"] * n_logical
             + ["structural_anomalies"] * n_structural)
    maps, masks, sats = [], [], []
    for kind in kinds:
        low = rng.random((height // 40 + 1, width // 40 + 1), dtype=np.float32)
        m = 0.6 * ndimage.zoom(low, 40, order=1)[:height, :width]
        m = m + 0.2 * rng.random((height, width), dtype=np.float32)
        image_masks, image_sats = [], []
        if kind != "good":
            for _ in range(rng.integers(1, 4)):
                cy, cx = rng.integers(0, height), rng.integers(0, width)
                ry, rx = rng.uniform(0.01, 0.1) * height, rng.uniform(0.01, 0.1) * width
                k = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0
                if not k.any():
                    continue
                m = m + 0.3 * k * rng.random((height, width), dtype=np.float32)
                threshold, relative = SATURATION[int(rng.integers(len(SATURATION)))]
                image_masks.append(k)
                image_sats.append(max(1, saturation_area(int(k.sum()), threshold, relative)))
            if not image_masks:  # keep every anomalous image annotated
                k = np.zeros((height, width), bool)
                k[:8, :8] = True
                image_masks.append(k)
                image_sats.append(64)
        maps.append(m.astype(np.float32))
        masks.append(image_masks)
        sats.append(image_sats)
    return maps, kinds, masks, sats


def _child(args: argparse.Namespace) -> None:
    from defectmap.metrics import loco_metrics

    case = make_category(*args.shape)
    data_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    start = time.perf_counter()
    result = loco_metrics(*case, mode=args.child, limits=(0.05, 0.3))
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"seconds": seconds, "peak_mib": peak, "data_mib": data_mib,
                      "n_thresholds": result["n_thresholds"],
                      "mean_005": result["auc_spro"]["mean"]["0.05"],
                      "mean_03": result["auc_spro"]["mean"]["0.3"]}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--small", action="store_true", help="60 images of 400x500")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--child", choices=("exact", "official"), help=argparse.SUPPRESS)
    parser.add_argument("--shape", type=int, nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args)
        return
    shape = [20, 20, 20, 400, 500] if args.small else [102, 83, 90, 1280, 1600]
    n_pixels = sum(shape[:3]) * shape[3] * shape[4]
    print(f"{sum(shape[:3])} maps of {shape[3]}x{shape[4]} ({n_pixels / 1e6:.0f} M pixels), "
          f"median of {args.repeats} runs, each in a fresh process")
    print(f"{'mode':<10}{'seconds':>9}{'peak MiB':>10}{'net MiB':>9}{'thresholds':>12}"
          f"{'mean@0.05':>11}{'mean@0.3':>10}")
    for mode in ("exact", "official"):
        runs = []
        for _ in range(args.repeats):
            out = subprocess.run(
                [sys.executable, __file__, "--child", mode, "--shape", *map(str, shape)],
                check=True, capture_output=True, text=True).stdout
            runs.append(json.loads(out.strip().splitlines()[-1]))
        r = runs[-1]
        seconds = statistics.median(x["seconds"] for x in runs)
        peak = max(x["peak_mib"] for x in runs)
        net = max(x["peak_mib"] - x["data_mib"] for x in runs)
        n_thr = "every score" if r["n_thresholds"] is None else str(r["n_thresholds"])
        print(f"{mode:<10}{seconds:>9.2f}{peak:>10.0f}{net:>9.0f}{n_thr:>12}"
              f"{r['mean_005']:>11.6f}{r['mean_03']:>10.6f}")


if __name__ == "__main__":
    main()
