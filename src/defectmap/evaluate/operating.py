"""Test-set metrics of operating points: the calibrated thresholds, and the oracle beside them.

The calibrated thresholds come from good images only (:mod:`defectmap.calibrate`); this
module measures them on a labelled test set, and, for comparison, the F1-maximising "oracle"
thresholds chosen on those very test labels (never usable in production).
:func:`alpha_operating_points` shows the trade-off a person chooses from: the threshold the
good images give at each alpha of :data:`~defectmap.constants.OPERATING_ALPHAS`, and the
false-alarm and miss rates it has on the test set.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from defectmap import metrics
from defectmap.calibrate import Calibration, CalibrationError, CalibrationWarning
from defectmap.calibrate.conformal import as_map, as_scores
from defectmap.constants import OPERATING_ALPHAS

__all__ = ["alpha_operating_points", "operating_point_metrics"]


def _rate(numerator: int, denominator: int) -> float | None:
    return numerator / denominator if denominator else None


def _confusion(decisions: NDArray[np.bool_], labels: NDArray[np.int64]) -> dict[str, Any]:
    tp = int(np.sum(decisions & (labels == 1)))
    fp = int(np.sum(decisions & (labels == 0)))
    fn = int(np.sum(~decisions & (labels == 1)))
    tn = int(np.sum(~decisions & (labels == 0)))
    recall = _rate(tp, tp + fn)
    # No image flagged: precision is undefined; report 0.0 (scikit-learn's zero_division=0).
    precision = tp / (tp + fp) if tp + fp else 0.0
    f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0
    return {
        "false_alarm_rate": _rate(fp, fp + tn),
        "miss_rate": _rate(fn, tp + fn),
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "tp": tp,
        "fp": fp,
        "tn": tn,
        "fn": fn,
    }


_CONFUSION_KEYS = ("false_alarm_rate", "miss_rate", "precision", "recall", "f1",
                   "tp", "fp", "tn", "fn")
_PIXEL_KEYS = ("region_detection_rate", "pixel_iou", "pixel_f1", "pixel_false_positive_rate",
               "good_image_pixel_fpr")


def _pixel_point(
    predicted: list[NDArray[np.bool_]], gt: list[NDArray[np.bool_]], labels: NDArray[np.int64],
) -> dict[str, float | None]:
    """Pixel-level figures of predicted masks against ground truth (pooled over images)."""
    pairs = list(zip(predicted, gt, strict=True))
    n_inter = sum(int((p & g).sum()) for p, g in pairs)
    n_pred = sum(int(p.sum()) for p, _ in pairs)
    n_gt = sum(int(g.sum()) for _, g in pairs)
    n_outside = sum(int((~g).sum()) for _, g in pairs)
    good = [p for p, label in zip(predicted, labels, strict=True) if label == 0]
    out: dict[str, float | None] = {
        "pixel_false_positive_rate": _rate(n_pred - n_inter, n_outside),
        "good_image_pixel_fpr": _rate(sum(int(p.sum()) for p in good), sum(p.size for p in good)),
        "region_detection_rate": None,
        "pixel_iou": None,
        "pixel_f1": None,
    }
    if n_gt:
        out["region_detection_rate"] = float(
            metrics.region_detection_rate(predicted, gt, min_overlap=0.3))
        out["pixel_iou"] = float(metrics.pixel_iou(predicted, gt))
        out["pixel_f1"] = 2 * n_inter / (n_pred + n_gt)
    return out


def operating_point_metrics(
    scores: ArrayLike,
    labels: ArrayLike,
    maps: Sequence[ArrayLike] | NDArray[Any] | None,
    masks: Sequence[ArrayLike | None] | NDArray[Any] | None,
    calibration: Calibration,
) -> dict[str, Any]:
    """Metrics on a labelled test set at the calibrated thresholds, and the oracle next to them.

    Parameters
    ----------
    scores : test image scores, shape (N,).
    labels : 0 = good, 1 = defective, shape (N,).
    maps : test anomaly maps, N arrays (H_i, W_i); None for image-level metrics only.
    masks : ground-truth masks, N arrays (H_i, W_i) (None entries = all good); None if unknown.
    calibration : learned from good validation images.

    Returns
    -------
    dict
        Image level: ``false_alarm_rate`` (good images flagged; None without good images),
        ``miss_rate``, ``precision`` (0.0 when nothing is flagged), ``recall``, ``f1``, the
        counts ``tp, fp, tn, fn``; ``image_threshold``, ``alpha``, ``guarantee_holds``,
        ``method``, ``decision_rule``, ``false_alarm_bound``,
        ``pixel_threshold``, ``n_images``, ``n_good``, ``n_defective``. Pixel level (None
        without maps or masks; the first three None without any defect pixel):
        ``region_detection_rate`` (ground-truth 8-connected regions with >= 30 % of their
        area inside the predicted mask), ``pixel_iou`` and ``pixel_f1`` (pooled over images),
        ``pixel_false_positive_rate`` (pixels outside the ground truth flagged, all images),
        ``good_image_pixel_fpr`` (pixels of good images flagged; compare with ``pixel_fpr``).
        ``oracle``: ``{"label": "oracle (uses test labels)", "threshold", "pixel_threshold"}``
        plus the same image and pixel keys at the F1-maximising image and pixel thresholds
        chosen on these very test labels (``score >= threshold`` = defect, as in
        :mod:`defectmap.metrics`); the calibrated decisions use ``score > threshold``.
    """
    s = as_scores(scores, "test scores")
    y = np.asarray(labels).astype(np.int64)
    if y.shape != s.shape or not np.isin(y, (0, 1)).all():
        raise CalibrationError(f"labels must be 0/1 with the shape of scores {s.shape}")
    result: dict[str, Any] = {
        "method": calibration.method,
        "decision_rule": calibration.decision_rule,
        "false_alarm_bound": calibration.false_alarm_bound,
        "n_images": int(s.size),
        "n_good": int(np.sum(y == 0)),
        "n_defective": int(np.sum(y == 1)),
        "alpha": calibration.alpha,
        "guarantee_holds": calibration.guarantee_holds,
        "image_threshold": calibration.image_threshold,
        "pixel_threshold": calibration.pixel_threshold,
    }
    result.update(_confusion(calibration.decide(s), y))

    oracle: dict[str, Any] = {"label": "oracle (uses test labels)", "threshold": None}
    oracle.update(dict.fromkeys(_CONFUSION_KEYS))
    if result["n_good"] and result["n_defective"]:
        best_f1, best_threshold = metrics.f1_max(s, y)
        oracle.update(_confusion(s >= best_threshold, y), threshold=float(best_threshold))
        oracle["f1"] = float(best_f1)  # the same number, as metrics computes it

    result.update(dict.fromkeys(_PIXEL_KEYS))
    oracle.update(dict.fromkeys(_PIXEL_KEYS), pixel_threshold=None)
    if maps is not None and masks is not None and calibration.pixel_threshold is not None:
        map_list = [as_map(m, f"test map {i}") for i, m in enumerate(maps)]
        if len(map_list) != s.size or len(masks) != s.size:
            raise CalibrationError(
                f"{len(map_list)} maps and {len(masks)} masks for {s.size} scores"
            )
        gt = []
        for i, (m, g) in enumerate(zip(map_list, masks, strict=True)):
            g_arr = np.zeros(m.shape, dtype=bool) if g is None else np.asarray(g) > 0
            if g_arr.shape != m.shape:
                raise CalibrationError(f"mask {i} has shape {g_arr.shape}, its map {m.shape}")
            gt.append(g_arr)
        predicted = [calibration.predicted_mask(m) for m in map_list]
        result.update(_pixel_point(predicted, gt, y))
        if any(g.any() for g in gt):
            pixel_f1, pixel_threshold = metrics.pixel_f1_max(map_list, gt)
            oracle_masks = [m >= pixel_threshold for m in map_list]
            oracle.update(_pixel_point(oracle_masks, gt, y),
                          pixel_threshold=float(pixel_threshold))
            oracle["pixel_f1"] = float(pixel_f1)
    result["oracle"] = oracle
    return result


def alpha_operating_points(
    scores: ArrayLike,
    labels: ArrayLike,
    calibration: Calibration,
    alphas: Sequence[float] = OPERATING_ALPHAS,
) -> list[dict[str, Any]]:
    """The operating point of each alpha: its threshold from good images, its test-set rates.

    The thresholds come from the calibration's stored scores only (:meth:`Calibration.at`);
    the test labels only measure them.

    Parameters
    ----------
    scores : test image scores, shape (N,).
    labels : 0 = good, 1 = defective, shape (N,).
    calibration : the model's calibration (its own alpha is added when not in ``alphas``).
    alphas : the target false-alarm rates to show.

    Returns
    -------
    list of dict, by increasing alpha
        ``alpha``, ``chosen`` (the model's own alpha), ``threshold``, ``decision_rule``,
        ``guarantee_holds``, ``false_alarm_bound``, then ``false_alarm_rate``, ``miss_rate``,
        ``precision``, ``recall``, ``f1``, ``tp``, ``fp``, ``tn``, ``fn`` on the test set.
    """
    s = as_scores(scores, "test scores")
    y = np.asarray(labels).astype(np.int64)
    if y.shape != s.shape or not np.isin(y, (0, 1)).all():
        raise CalibrationError(f"labels must be 0/1 with the shape of scores {s.shape}")
    points = []
    for alpha in sorted({float(a) for a in alphas} | {calibration.alpha}):
        with warnings.catch_warnings():  # the rule says it: "largest_score"
            warnings.simplefilter("ignore", CalibrationWarning)
            at = calibration.at(alpha=alpha)
        points.append({
            "alpha": alpha,
            "chosen": alpha == calibration.alpha,
            "threshold": at.image_threshold,
            "decision_rule": at.decision_rule,
            "guarantee_holds": at.guarantee_holds,
            "false_alarm_bound": at.false_alarm_bound,
            **_confusion(at.decide(s), y),
        })
    return points
