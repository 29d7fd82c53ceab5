"""Calibrated vs oracle operating points on real MVTec AD bottle (issue 6).

Splits ``train/good`` into fit + validation (``split_validation``, random_state 0), fits the
default detector on the fit part, calibrates on the validation part only, and prints, on the
test set, the metrics at the calibrated thresholds next to the oracle F1-max threshold that
uses the test labels. A grid of alpha and pixel_fpr values is recalibrated from the same
validation predictions (calibration is cheap; only the detector is slow). This is the same
code path as ``defectmap.pipeline.train_model``.

Usage::

    .venv/bin/python benchmarks/calibration.py [--root ../shared/data/mvtec_ad/bottle]
        [--detector patchcore] [--json out.json] [--cache predictions.npz]
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEFAULT_ROOT = REPO.parent / "shared" / "data" / "mvtec_ad" / "bottle"
ALPHAS = (0.01, 0.05, 0.1)
PIXEL_FPRS = (0.0005, 0.001, 0.005, 0.01)


def _fmt(value: object) -> str:
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=DEFAULT_ROOT)
    parser.add_argument("--detector", default="patchcore")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--cache", type=Path, default=None,
                        help="npz file to store / reuse the detector's predictions")
    args = parser.parse_args()

    from defectmap.calibrate import CalibrationWarning, fit_calibration, split_validation
    from defectmap.data.io import read_mask
    from defectmap.data.mvtec import load_category
    from defectmap.detectors import Prediction, create_detector
    from defectmap.evaluate.operating import operating_point_metrics

    data = load_category(args.root)
    fit_samples, val_samples = split_validation(data.train, 0.1, 10, random_state=0)
    if args.cache is not None and args.cache.exists():
        with np.load(args.cache) as cached:
            val = Prediction(cached["val_scores"], list(cached["val_maps"]))
            test = Prediction(cached["test_scores"], list(cached["test_maps"]))
        print(f"{args.detector}: predictions read from {args.cache}")
    else:
        detector = create_detector(args.detector, random_state=0)
        start = time.perf_counter()
        detector.fit([s.path for s in fit_samples])
        fit_s = time.perf_counter() - start
        val = detector.predict([s.path for s in val_samples])
        test = detector.predict([s.path for s in data.test])
        print(f"{args.detector}: fit {len(fit_samples)} images in {fit_s:.1f} s")
        if args.cache is not None:  # all bottle images are 900 x 900: maps stack
            np.savez(args.cache, val_scores=val.scores, val_maps=np.stack(val.maps),
                     test_scores=test.scores, test_maps=np.stack(test.maps))
    print(f"validation {len(val_samples)} good images, test {len(data.test)} images")

    labels = np.array([s.label for s in data.test])
    masks = [None if s.mask_path is None else read_mask(s.mask_path) for s in data.test]
    rows = []
    for alpha in ALPHAS:
        for pixel_fpr in PIXEL_FPRS:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", CalibrationWarning)
                cal = fit_calibration(val.scores, val.maps, alpha=alpha, pixel_fpr=pixel_fpr)
            m = operating_point_metrics(test.scores, labels, test.maps, masks, cal)
            rows.append({"alpha": alpha, "pixel_fpr": pixel_fpr,
                         "pixel_threshold": cal.pixel_threshold,
                         "guarantee_holds": cal.guarantee_holds,
                         "false_alarm_bound": cal.false_alarm_bound, **m})
    keys = ("false_alarm_rate", "miss_rate", "precision", "recall", "f1",
            "region_detection_rate", "pixel_iou", "pixel_false_positive_rate",
            "good_image_pixel_fpr", "pixel_f1", "pixel_threshold")
    print(f"{'alpha':>6} {'pix_fpr':>7} {'holds':>5} " + " ".join(f"{k[:12]:>12}" for k in keys))
    for r in rows:
        print(f"{r['alpha']:>6} {r['pixel_fpr']:>7} {r['guarantee_holds']!s:>5} "
              + " ".join(f"{_fmt(r[k]):>12}" for k in keys))
    oracle = rows[0]["oracle"]
    print("oracle (uses test labels): "
          + ", ".join(f"{k}={_fmt(v)}" for k, v in oracle.items() if k != "label"))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
