"""Split-conformal vs cross-fitted calibration on real MVTec AD categories (issue 11).

For each category, two calibrations of the default detector, both from ``train/good`` only:

* **split** (the previous default): ``split_validation(good, 0.1, min_val=10,
  random_state=0)`` holds out 10 % of the good images, the detector is fitted on the rest and
  calibrated on the held-out scores;
* **cross-fitted** (the new default): ``cross_fit(..., n_folds=5, random_state=0)``: the
  final detector is fitted on every good image, the 5 fold models (sharing one feature
  extraction) give every image an out-of-fold score.

At each alpha the script prints the calibration scores used, the threshold, the decision
rule, the proven bound, and the false-alarm and miss rates on the test split (the test
labels only measure; nothing is chosen on them), plus the oracle F1-max point, and the cost:
fit seconds (backbone extraction + the final fit) and calibration seconds (split: scoring
the validation images; cross-fitted: the 5 fold fits and their out-of-fold scoring).

Usage::

    .venv/bin/python benchmarks/calibration.py                     # bottle and pill
    .venv/bin/python benchmarks/calibration.py /work/data/mvtec_ad/pill   # category folders
    .venv/bin/python benchmarks/calibration.py --category bottle=../shared/data/mvtec_ad/bottle
        [--detector patchcore] [--alpha 0.01 --alpha 0.05] [--json out.json]

``calib/fit`` is calibration seconds over fit seconds: K independent refits would cost
about K (5) times the fit; sharing the feature extraction must make it well under that.

Timings are wall-clock seconds of one run; on a shared machine they are inflated.
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CATEGORIES = {
    "bottle": REPO.parent / "shared" / "data" / "mvtec_ad" / "bottle",
    "pill": Path("/work/data/mvtec_ad/pill"),
}
ALPHAS = (0.01, 0.05)


def _test_prediction(detector: Any, paths: list[Path]) -> tuple[np.ndarray, list[np.ndarray]]:
    """Test scores (N,) float64 and maps (bottle: 270 MB, pill: 430 MB as float32)."""
    prediction = detector.predict(paths)
    return np.asarray(prediction.scores, dtype=np.float64), prediction.maps


def _peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _rates(cal: Any, scores: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    flagged = cal.decide(scores)
    n_good, n_bad = int(np.sum(labels == 0)), int(np.sum(labels == 1))
    fp, fn = int(np.sum(flagged & (labels == 0))), int(np.sum(~flagged & (labels == 1)))
    return {"false_alarm_rate": fp / n_good, "miss_rate": fn / n_bad, "fp": fp, "fn": fn,
            "n_good": n_good, "n_defective": n_bad}


def _run(name: str, root: Path, detector: str, alphas: tuple[float, ...]) -> list[dict]:
    from defectmap import metrics
    from defectmap.calibrate import (
        CalibrationWarning,
        PixelTail,
        cross_fit,
        fit_calibration,
        split_validation,
    )
    from defectmap.data.mvtec import load_category, read_sample_mask
    from defectmap.detectors import create_detector
    from defectmap.evaluate.operating import operating_point_metrics

    data = load_category(root)
    good = [s for s in data.train if s.label == 0]
    test_paths = [s.path for s in data.test]
    labels = np.array([s.label for s in data.test])
    rows: list[dict] = []

    def record(method: str, cal_scores: np.ndarray, pixels: Any, n_fit: int, n_folds: Any,
               fit_s: float, cal_s: float, detector_: Any) -> None:
        test, maps = _test_prediction(detector_, test_paths)
        masks = [read_sample_mask(s, m.shape) for s, m in zip(data.test, maps, strict=True)]
        best_f1, best_t = metrics.f1_max(test, labels)
        oracle = {"false_alarm_rate": float(np.mean(test[labels == 0] >= best_t)),
                  "miss_rate": float(np.mean(test[labels == 1] < best_t))}
        for alpha in alphas:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", CalibrationWarning)
                cal = fit_calibration(cal_scores, alpha=alpha, method=method, n_folds=n_folds,
                                      pixels=pixels)
            pixel = operating_point_metrics(test, labels, maps, masks, cal)
            rows.append({
                "good_image_pixel_fpr": pixel["good_image_pixel_fpr"],
                "region_detection_rate": pixel["region_detection_rate"],
                "pixel_iou": pixel["pixel_iou"], "peak_rss_mb": _peak_rss_mb(),
                "category": name, "method": method, "alpha": alpha, "n_fit": n_fit,
                "n_calibration": cal.n_val, "threshold": cal.image_threshold,
                "rule": cal.decision_rule, "bound": cal.false_alarm_bound,
                "pixel_threshold": cal.pixel_threshold,
                **_rates(cal, test, labels), "fit_s": fit_s, "calibrate_s": cal_s,
                "oracle": oracle, "image_auroc": float(metrics.image_auroc(test, labels)),
            })

    # split conformal, the previous default (10 %, at least 10 images)
    fit_samples, val_samples = split_validation(good, 0.1, 10, random_state=0)
    model = create_detector(detector, random_state=0)
    start = time.perf_counter()
    model.fit([s.path for s in fit_samples])
    fit_s = time.perf_counter() - start
    start = time.perf_counter()
    val = model.predict([s.path for s in val_samples])
    pixels = PixelTail(sum(int(m.size) for m in val.maps))
    for m in val.maps:
        pixels.add(m)
    pixels.finish()
    cal_s = time.perf_counter() - start
    val_scores = np.asarray(val.scores, dtype=np.float64)
    del val
    record("split", val_scores, pixels, len(fit_samples), None, fit_s, cal_s, model)
    del model
    print(f"{name}: split done (fit {fit_s:.1f} s, calibration {cal_s:.1f} s)", flush=True)

    # cross-fitted, the new default
    result = cross_fit(lambda: create_detector(detector, random_state=0),
                       [s.path for s in good], 5, random_state=0)
    record("cross_fit", result.scores, result.pixels, len(good), 5, result.fit_seconds,
           result.calibrate_seconds, result.detector)
    print(f"{name}: cross-fitted done (fit {result.fit_seconds:.1f} s, calibration "
          f"{result.calibrate_seconds:.1f} s, shared features {result.shared_features})",
          flush=True)
    return rows


def _fmt(v: Any) -> str:
    return f"{v:.4f}" if isinstance(v, float) else str(v)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="*", type=Path,
                        help="category folders (named by the folder); default bottle, pill")
    parser.add_argument("--category", action="append", default=None,
                        help="NAME=PATH of a category folder (repeatable)")
    parser.add_argument("--detector", default="patchcore")
    parser.add_argument("--alpha", type=float, action="append", default=None)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    categories: dict[str, Any] = {p.name: p for p in args.paths}
    categories.update(dict(c.split("=", 1) for c in args.category or []))
    if not categories:
        categories = dict(DEFAULT_CATEGORIES)
    alphas = tuple(args.alpha) if args.alpha else ALPHAS
    rows: list[dict] = []
    for name, root in categories.items():
        if not (Path(root) / "train").is_dir():
            print(f"{name}: {root} not found, skipped")
            continue
        rows.extend(_run(name, Path(root), args.detector, alphas))

    header = ("category", "method", "alpha", "n_fit", "n_cal", "threshold", "rule", "bound",
              "FAR (fp)", "miss (fn)", "oracle FAR/miss", "fit s", "calib s", "calib/fit")
    pixel_header = ("category", "method", "pixel threshold", "good-image pixel FPR",
                    "region detection", "pixel IoU", "peak RSS MB")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for r in rows:
        print("| " + " | ".join([
            r["category"], r["method"], f"{r['alpha']:g}", str(r["n_fit"]),
            str(r["n_calibration"]), f"{r['threshold']:.4g}",
            "p<=alpha" if r["rule"] == "p_value" else "largest", f"{r['bound']:.4f}",
            f"{r['false_alarm_rate']:.3f} ({r['fp']}/{r['n_good']})",
            f"{r['miss_rate']:.3f} ({r['fn']}/{r['n_defective']})",
            f"{r['oracle']['false_alarm_rate']:.3f}/{r['oracle']['miss_rate']:.3f}",
            f"{r['fit_s']:.1f}", f"{r['calibrate_s']:.1f}",
            f"{r['calibrate_s'] / r['fit_s']:.2f}"]) + " |")
    print()
    print("| " + " | ".join(pixel_header) + " |")
    print("|" + "---|" * len(pixel_header))
    for r in rows:
        if r["alpha"] != alphas[0]:
            continue  # the pixel threshold does not depend on alpha
        print("| " + " | ".join([
            r["category"], r["method"], f"{r['pixel_threshold']:.4g}",
            _fmt(r["good_image_pixel_fpr"]), _fmt(r["region_detection_rate"]),
            _fmt(r["pixel_iou"]), f"{r['peak_rss_mb']:.0f}"]) + " |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
