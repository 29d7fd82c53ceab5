"""Benchmark: the dataset layer — ``data check`` speed and synthetic-data difficulty.

``check``
    Times :func:`defectmap.data.check.check_dataset` on the real bottle category (292
    images + 63 masks of 900x900): the default mode (PNG images verified by their chunk
    CRC-32s, masks decoded) against ``full=True`` (every image decoded), as the median of
    ``--repeats`` runs each, and prints the ratio.

``synth``
    Measures how hard the synthetic data is: image AUROC of PatchCore (ImageNet features)
    against two naive baselines that ignore position and rotation changes (mean absolute
    difference to the mean training image, and distance to the nearest training image in
    raw pixels), for an object, a texture and a grayscale object dataset. The intent: naive
    methods near chance, a decent detector well above 0.8.

Usage::

    .venv/bin/python benchmarks/data.py check --repeats 3
    .venv/bin/python benchmarks/data.py synth --size 128 --n-train 40 --n-test 40
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

BOTTLE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mvtec_ad" / "bottle"


def bench_check(repeats: int) -> None:
    from defectmap.data.check import check_dataset

    if not BOTTLE.is_dir():
        raise SystemExit(f"bottle data not found at {BOTTLE}")
    times: dict[str, list[float]] = {"crc (default)": [], "full decode": []}
    for _ in range(repeats):
        for label, full in (("crc (default)", False), ("full decode", True)):
            start = time.perf_counter()
            report = check_dataset(BOTTLE, full=full)
            times[label].append(time.perf_counter() - start)
            assert report.ok, report.problems
    med = {k: statistics.median(v) for k, v in times.items()}
    for label, value in med.items():
        print(f"data check bottle, {label:14s}: median {value:6.2f} s over {repeats} runs")
    ratio = med["full decode"] / med["crc (default)"]
    print(f"speed-up of the default over full decoding: {ratio:.1f}x")


def bench_synth(size: int, n_train: int, n_test: int, seed: int) -> None:
    from defectmap.data.io import read_image
    from defectmap.data.mvtec import load_category
    from defectmap.data.synth import make_synthetic_dataset
    from defectmap.detectors import create_detector
    from defectmap.metrics import image_auroc

    with tempfile.TemporaryDirectory() as tmp:
        for kind, gray in (("object", False), ("texture", False), ("object", True)):
            folder = make_synthetic_dataset(tmp, f"{kind}_{int(gray)}", kind=kind,  # type: ignore[arg-type]
                                            n_train=n_train, n_test=n_test, size=size,
                                            grayscale=gray, seed=seed)
            data = load_category(folder)
            labels = np.array([s.label for s in data.test])
            train = np.stack([read_image(s.path).astype(np.float64) for s in data.train])
            test = np.stack([read_image(s.path).astype(np.float64) for s in data.test])
            mean_diff = np.abs(test - train.mean(axis=0)).mean(axis=(1, 2, 3))
            nearest = np.array([((train - x) ** 2).mean(axis=(1, 2, 3)).min() for x in test])
            start = time.perf_counter()
            detector = create_detector("patchcore").fit([s.path for s in data.train])
            scores = detector.predict([s.path for s in data.test]).scores
            seconds = time.perf_counter() - start
            print(f"{kind:7s} gray={gray!s:5s}  image AUROC: patchcore "
                  f"{image_auroc(scores, labels):.3f} ({seconds:.0f} s)  mean-image "
                  f"{image_auroc(mean_diff, labels):.3f}  nearest-image "
                  f"{image_auroc(nearest, labels):.3f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="what", required=True)
    check = sub.add_parser("check")
    check.add_argument("--repeats", type=int, default=3)
    synth = sub.add_parser("synth")
    synth.add_argument("--size", type=int, default=128)
    synth.add_argument("--n-train", type=int, default=40)
    synth.add_argument("--n-test", type=int, default=40)
    synth.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    if args.what == "check":
        bench_check(args.repeats)
    else:
        bench_synth(args.size, args.n_train, args.n_test, args.seed)


if __name__ == "__main__":
    main()
