"""The :class:`Calibration`: thresholds and normalisation learned from good images only.

:func:`fit_calibration` computes it from the scores (and maps) of good images that the
scoring model did not see: a validation set (``method="split"``) or the out-of-fold scores
of cross-fitting (``method="cross_fit"``, :mod:`defectmap.calibrate.crossfit`). The maths
are in :mod:`defectmap.calibrate.conformal`. :meth:`Calibration.save` /
:meth:`Calibration.load` keep it as ``calibration.json`` beside the detector's files; files
of format 1 (written before cross-fitting existed) still load, as split calibrations.

It decides images, gives their p-values and normalised scores, and segments maps into
predicted defect regions (:mod:`defectmap.calibrate.regions`). :meth:`Calibration.at`
moves the operating point (``alpha``, a stored ``pixel_fpr``) without the detector, because
the calibration scores are stored with it.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from defectmap import __version__
from defectmap.calibrate import conformal
from defectmap.calibrate.conformal import (
    CalibrationError,
    CalibrationWarning,
    as_map,
    as_scores,
    check_fraction,
    conformal_rank,
    min_validation_size,
)
from defectmap.calibrate.misses import MissEstimate, estimate_miss_rate
from defectmap.calibrate.pixels import PIXEL_FPR_GRID, PixelTail
from defectmap.calibrate.regions import Region, label_defects, regions_from_labels, segment
from defectmap.constants import DEFAULT_ALPHA, DEFAULT_PIXEL_FPR
from defectmap.errors import ModelFileError
from defectmap.files import write_json

__all__ = ["CALIBRATION_FILE", "METHODS", "RULES", "Calibration", "fit_calibration"]

CALIBRATION_FILE = "calibration.json"
FORMAT = "defectmap-calibration"
FORMAT_VERSION = 2
_READABLE_VERSIONS = (1, 2)
#: Calibration methods: a validation split, or cross-fitting (out-of-fold scores).
METHODS = ("split", "cross_fit")
#: Decision rules: ``p_value`` (defect <=> p <= alpha <=> score > v_(k), the conformal rule)
#: and ``largest_score`` (too few scores for alpha: defect <=> score > the largest one).
RULES = ("p_value", "largest_score")


@dataclass(frozen=True)
class _ImageRule:
    threshold: float
    rank: int
    holds: bool
    bound: float
    warning: str | None


def _image_rule(scores: NDArray[np.float64], alpha: float, method: str,
                n_folds: int | None) -> _ImageRule:
    """Threshold, rank, guarantee, bound and warning of sorted calibration scores (n,)."""
    n = int(scores.size)
    threshold, rank, bound = conformal.image_threshold(scores, alpha)
    holds = rank <= n
    source = "validation images" if method == "split" else "out-of-fold scores"
    if method == "cross_fit":
        assert n_folds is not None
        bound = conformal.cross_conformal_bound(n, n_folds, bound)
    warning = None
    if not holds:
        what = ("validation images" if method == "split"
                else f"out-of-fold scores ({n_folds} folds)")
        warning = (
            f"{n} {what} are too few for alpha={alpha}: p <= alpha needs at least "
            f"{min_validation_size(alpha)}; deciding by score > the largest of the {source}, "
            f"which guarantees only P(false alarm) <= {bound:.4f}"
        )
    return _ImageRule(threshold, rank, holds, bound, warning)


@dataclass(frozen=True)
class Calibration:
    """Thresholds and normalisation learned from good images the scoring model did not see.

    The maths are in :mod:`defectmap.calibrate.conformal` (split) and
    :mod:`defectmap.calibrate.crossfit` (cross-fitted). Build with :func:`fit_calibration`;
    save/load as ``calibration.json``.

    Attributes
    ----------
    alpha : target false-alarm rate.
    image_threshold : ``v_(min(k, n))``; an image is defective when its score is > this.
    pixel_threshold : a pixel is defective when its score is > this; None without maps.
    pixel_fpr : target pixel false-positive rate used for ``pixel_threshold``.
    n_val : number of calibration scores (validation images, or out-of-fold scores).
    val_scores : the sorted calibration scores, shape (n_val,) (needed for p-values).
    rank : ``k = ceil((n_val + 1)(1 - alpha))`` (may exceed ``n_val``).
    guarantee_holds : ``k <= n_val``: the decision is ``p <= alpha`` and ``false_alarm_bound``
        is the method's proven bound (``decision_rule == "p_value"``).
    false_alarm_bound : the proven bound of the method at this threshold: split conformal
        ``(n_val + 1 - min(k, n_val)) / (n_val + 1)``; cross-fitted, the CV+ bound of
        :func:`~defectmap.calibrate.conformal.cross_conformal_bound` (for fold-model scores;
        see :mod:`defectmap.calibrate.crossfit` for what it does not cover).
    image_scale : spread used by :meth:`normalize`.
    pixel_scale : spread used by :meth:`normalize_map`; None without maps.
    n_val_pixels : number of calibration pixels (0 without maps).
    pixel_median, pixel_max : statistics of the calibration pixels (None without maps).
    min_region_area : regions smaller than this many pixels are dropped from masks.
    warning : why ``p <= alpha`` is unreachable, or None.
    method : ``"split"`` or ``"cross_fit"``.
    n_folds : K of cross-fitting; None for a split.
    pixel_thresholds : exact ``(pixel_fpr, threshold)`` pairs for the stored rates
        (:data:`~defectmap.calibrate.pixels.PIXEL_FPR_GRID` and ``pixel_fpr``), so that
        :meth:`at` can move the pixel operating point without the maps.
    defect_scores : sorted scores of known defective samples, only measured (see
        :attr:`miss_estimate`); never used for a threshold.
    """

    alpha: float
    image_threshold: float
    pixel_threshold: float | None
    pixel_fpr: float
    n_val: int
    val_scores: tuple[float, ...]
    rank: int
    guarantee_holds: bool
    false_alarm_bound: float
    image_scale: float
    pixel_scale: float | None
    n_val_pixels: int
    pixel_median: float | None
    pixel_max: float | None
    min_region_area: int = 1
    warning: str | None = None
    method: str = "split"
    n_folds: int | None = None
    pixel_thresholds: tuple[tuple[float, float], ...] = ()
    defect_scores: tuple[float, ...] = ()

    # ---------------------------------------------------------------- image level

    @property
    def decision_rule(self) -> str:
        """``"p_value"`` (defect <=> p <= alpha) or ``"largest_score"`` (see :data:`RULES`)."""
        return "p_value" if self.guarantee_holds else "largest_score"

    @property
    def guarantee(self) -> str:
        """One sentence: what the false-alarm rate of good images is guaranteed to be."""
        bound = f"P(false alarm) <= {self.false_alarm_bound:.4f}"
        if self.method == "split":
            text = (f"split conformal on {self.n_val} validation images: {bound} for a new "
                    "good image exchangeable with them")
        else:
            text = (f"cross-conformal, {self.n_folds} folds, {self.n_val} out-of-fold scores: "
                    f"{bound} proven for fold-model scores (Barber et al. 2021, Thm. 4); "
                    "the final model's decisions are covered only approximately")
        if not self.guarantee_holds:
            text += f"; too few scores for alpha={self.alpha:g}, decided by the largest score"
        return text

    def p_values(self, scores: ArrayLike) -> NDArray[np.float64]:
        """Conformal p-values ``(1 + #{v >= s}) / (n_val + 1)``; scores (N,) -> (N,) in (0, 1]."""
        return conformal.p_values(np.asarray(self.val_scores, dtype=np.float64), scores)

    def normalize(self, scores: ArrayLike) -> NDArray[np.float64]:
        """Normalised scores in (0, 1), 0.5 at the image threshold; (N,) -> (N,) float64."""
        s = as_scores(np.atleast_1d(np.asarray(scores, dtype=np.float64)))
        return conformal.normalize(s, self.image_threshold, self.image_scale)

    def decide(self, scores: ArrayLike) -> NDArray[np.bool_]:
        """True (defect) where the score is strictly above the image threshold; (N,) -> (N,).

        With ``decision_rule == "p_value"`` this is exactly ``p_values(scores) <= alpha``;
        with ``"largest_score"`` no p-value reaches ``alpha`` and the largest calibration
        score decides.
        """
        s = as_scores(np.atleast_1d(np.asarray(scores, dtype=np.float64)))
        return s > self.image_threshold

    @property
    def miss_estimate(self) -> MissEstimate | None:
        """Known defects missed at the image threshold, with a Clopper-Pearson interval."""
        if not self.defect_scores:
            return None
        return estimate_miss_rate(self.defect_scores, self.image_threshold)

    # ---------------------------------------------------------------- operating point

    def at(self, alpha: float | None = None, pixel_fpr: float | None = None,
           min_region_area: int | None = None) -> Calibration:
        """The same calibration at another operating point (no detector, no images needed).

        Parameters
        ----------
        alpha : new target false-alarm rate (the threshold and bound are recomputed from
            the stored scores).
        pixel_fpr : new pixel rate; must be one of the stored rates (``pixel_thresholds``).
        min_region_area : new smallest region kept in masks.

        Warns
        -----
        CalibrationWarning : too few scores for ``alpha`` (see :func:`fit_calibration`).
        """
        changes: dict[str, Any] = {}
        if alpha is not None:
            alpha = check_fraction("alpha", alpha)
            scores = np.asarray(self.val_scores, dtype=np.float64)
            rule = _image_rule(scores, alpha, self.method, self.n_folds)
            changes.update(alpha=alpha, image_threshold=rule.threshold, rank=rule.rank,
                           guarantee_holds=rule.holds, false_alarm_bound=rule.bound,
                           warning=rule.warning,
                           image_scale=conformal.robust_scale(scores, rule.threshold))
            if rule.warning is not None:
                warnings.warn(rule.warning, CalibrationWarning, stacklevel=2)
        if pixel_fpr is not None:
            pixel_fpr = check_fraction("pixel_fpr", pixel_fpr)
            stored = dict(self.pixel_thresholds)
            if pixel_fpr not in stored:
                rates = ", ".join(f"{r:g}" for r in sorted(stored)) or "none"
                raise CalibrationError(
                    f"pixel_fpr {pixel_fpr:g} was not stored with this calibration (stored: "
                    f"{rates}); refit the model for another pixel rate")
            changes.update(pixel_fpr=pixel_fpr, pixel_threshold=stored[pixel_fpr])
        if min_region_area is not None:
            if int(min_region_area) < 1:
                raise CalibrationError(f"min_region_area must be >= 1, got {min_region_area}")
            changes["min_region_area"] = int(min_region_area)
        return replace(self, **changes)

    # ---------------------------------------------------------------- pixel level

    def _require_pixels(self) -> tuple[float, float]:
        if self.pixel_threshold is None or self.pixel_scale is None:
            raise CalibrationError("this calibration has no pixel threshold (fitted without maps)")
        return self.pixel_threshold, self.pixel_scale

    def normalize_map(self, anomaly_map: ArrayLike) -> NDArray[np.float64]:
        """Normalised map in (0, 1), 0.5 at the pixel threshold; (H, W) -> (H, W) float64."""
        threshold, scale = self._require_pixels()
        return conformal.normalize(as_map(anomaly_map), threshold, scale)

    def segment(self, anomaly_map: ArrayLike) -> tuple[NDArray[np.bool_], list[Region]]:
        """:meth:`predicted_mask` and :meth:`regions` in one labelling pass."""
        threshold, _ = self._require_pixels()
        return segment(anomaly_map, threshold, self.min_region_area)

    def predicted_mask(self, anomaly_map: ArrayLike) -> NDArray[np.bool_]:
        """Defect mask ``map > pixel_threshold`` without regions below ``min_region_area``.

        (H, W) -> (H, W) bool.
        """
        threshold, _ = self._require_pixels()
        _, labels, _ = label_defects(anomaly_map, threshold, self.min_region_area)
        return labels > 0

    def regions(self, anomaly_map: ArrayLike) -> list[Region]:
        """The 8-connected regions of :meth:`predicted_mask`, highest peak first."""
        threshold, _ = self._require_pixels()
        return regions_from_labels(*label_defects(anomaly_map, threshold, self.min_region_area))

    # ---------------------------------------------------------------- persistence

    @property
    def val_score_stats(self) -> dict[str, float]:
        """min, max, mean, std and median of the calibration scores."""
        v = np.asarray(self.val_scores, dtype=np.float64)
        return {
            "min": float(v.min()),
            "max": float(v.max()),
            "mean": float(v.mean()),
            "std": float(v.std()),
            "median": float(np.median(v)),
        }

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict of every field plus informative extras (not loaded).

        Extras: ``val_score_stats``, ``decision_rule``, ``guarantee`` and ``known_defects``
        (the :attr:`miss_estimate`, or None).
        """
        data = asdict(self)
        data["val_scores"] = list(self.val_scores)
        data["pixel_thresholds"] = [list(pair) for pair in self.pixel_thresholds]
        data["defect_scores"] = list(self.defect_scores)
        data["val_score_stats"] = self.val_score_stats
        data["decision_rule"] = self.decision_rule
        data["guarantee"] = self.guarantee
        estimate = self.miss_estimate
        data["known_defects"] = None if estimate is None else estimate.to_dict()
        return data

    def save(self, directory: str | os.PathLike[str]) -> Path:
        """Write ``directory/calibration.json`` atomically (temp file + ``os.replace``)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        payload = {"format": FORMAT, "format_version": FORMAT_VERSION,
                   "package_version": __version__, **self.to_dict()}
        target = directory / CALIBRATION_FILE
        write_json(target, payload)
        return target

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> Calibration:
        """Read ``directory/calibration.json`` (format 1 or 2).

        Invalid files raise :class:`ModelFileError` naming the file.
        """
        path = Path(directory) / CALIBRATION_FILE
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ModelFileError(f"{path}: calibration file not found") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ModelFileError(f"{path}: cannot read calibration ({exc})") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ModelFileError(f"{path}: not a defectmap calibration file")
        if data.get("format_version") not in _READABLE_VERSIONS:
            raise ModelFileError(
                f"{path}: calibration format_version {data.get('format_version')!r} "
                f"is not supported (this version reads {', '.join(map(str, _READABLE_VERSIONS))})"
            )
        try:
            calibration = cls._from_dict(data)
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelFileError(f"{path}: invalid calibration ({exc!r})") from None
        return calibration

    @classmethod
    def _from_dict(cls, data: dict[str, Any]) -> Calibration:
        def opt(key: str) -> float | None:
            return None if data[key] is None else float(data[key])

        version = int(data["format_version"])
        val_scores = tuple(float(v) for v in data["val_scores"])
        pixel_fpr = float(data["pixel_fpr"])
        pixel_threshold = opt("pixel_threshold")
        pairs: tuple[tuple[float, float], ...]
        defects: tuple[float, ...]
        if version == 1:  # before cross-fitting: a split, and only the one pixel rate
            method, n_folds, defects = "split", None, ()
            pairs = () if pixel_threshold is None else ((pixel_fpr, pixel_threshold),)
        else:
            method = str(data["method"])
            n_folds = None if data["n_folds"] is None else int(data["n_folds"])
            pairs = tuple((float(f), float(t)) for f, t in data["pixel_thresholds"])
            defects = tuple(float(v) for v in data["defect_scores"])
        calibration = cls(
            alpha=float(data["alpha"]),
            image_threshold=float(data["image_threshold"]),
            pixel_threshold=pixel_threshold,
            pixel_fpr=pixel_fpr,
            n_val=int(data["n_val"]),
            val_scores=val_scores,
            rank=int(data["rank"]),
            guarantee_holds=bool(data["guarantee_holds"]),
            false_alarm_bound=float(data["false_alarm_bound"]),
            image_scale=float(data["image_scale"]),
            pixel_scale=opt("pixel_scale"),
            n_val_pixels=int(data["n_val_pixels"]),
            pixel_median=opt("pixel_median"),
            pixel_max=opt("pixel_max"),
            min_region_area=int(data["min_region_area"]),
            warning=None if data["warning"] is None else str(data["warning"]),
            method=method,
            n_folds=n_folds,
            pixel_thresholds=pairs,
            defect_scores=defects,
        )
        calibration._check()
        return calibration

    def _check(self) -> None:
        """Integrity: the stored numbers must agree with each other (ValueError if not)."""
        scores = self.val_scores
        if self.n_val != len(scores) or self.n_val < 1:
            raise ValueError("n_val does not match the number of val_scores")
        if list(scores) != sorted(scores) or not all(map(math.isfinite, scores)):
            raise ValueError("val_scores must be sorted and finite")
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}")
        if (self.method == "cross_fit") != (self.n_folds is not None) or (
                self.n_folds is not None and self.n_folds < 2):
            raise ValueError("n_folds must be >= 2 for cross_fit and None for split")
        if self.rank != conformal_rank(self.n_val, self.alpha):
            raise ValueError("rank does not match n_val and alpha")
        if self.guarantee_holds != (self.rank <= self.n_val):
            raise ValueError("guarantee_holds does not match rank and n_val")
        if self.image_threshold != scores[min(self.rank, self.n_val) - 1]:
            raise ValueError("image_threshold is not the conformal order statistic of val_scores")
        if not self.image_scale > 0 or (self.pixel_scale is not None and not self.pixel_scale > 0):
            raise ValueError("scales must be positive")
        stored = dict(self.pixel_thresholds)
        if self.pixel_threshold is not None and stored.get(self.pixel_fpr,
                                                           self.pixel_threshold) != \
                self.pixel_threshold:
            raise ValueError("pixel_threshold differs from the stored one at pixel_fpr")
        ordered = [stored[f] for f in sorted(stored)]
        if ordered != sorted(ordered, reverse=True):
            raise ValueError("pixel_thresholds must not increase with pixel_fpr")
        if list(self.defect_scores) != sorted(self.defect_scores):
            raise ValueError("defect_scores must be sorted")


# --------------------------------------------------------------------------- fitting


def _summarise_maps(maps: Sequence[ArrayLike] | NDArray[Any], n: int,
                    pixel_fpr: float) -> PixelTail:
    arrays = [as_map(m, f"validation map {i}") for i, m in enumerate(maps)]
    if len(arrays) != n:
        raise CalibrationError(f"{len(arrays)} validation maps for {n} validation scores")
    tail = PixelTail(sum(int(a.size) for a in arrays), max(PIXEL_FPR_GRID[-1], pixel_fpr))
    for i, array in enumerate(arrays):
        tail.add(array, f"validation map {i}")
    tail.finish()
    return tail


def fit_calibration(
    val_scores: ArrayLike,
    val_maps: Sequence[ArrayLike] | NDArray[Any] | None = None,
    alpha: float = DEFAULT_ALPHA,
    pixel_fpr: float = DEFAULT_PIXEL_FPR,
    *,
    min_region_area: int = 1,
    method: str = "split",
    n_folds: int | None = None,
    pixels: PixelTail | None = None,
    defect_scores: ArrayLike | None = None,
) -> Calibration:
    """Learn thresholds and normalisation from the scores of good images.

    Parameters
    ----------
    val_scores : scores of good images their model did not see (validation images, or
        out-of-fold scores), shape (n,).
    val_maps : their anomaly maps, n arrays (H_i, W_i) or one (n, H, W) array; None for an
        image-level calibration (no pixel threshold) or when ``pixels`` is given.
    alpha : target false-alarm rate in (0, 1).
    pixel_fpr : target fraction of good pixels above the pixel threshold, in (0, 1).
    min_region_area : regions of fewer pixels are dropped from predicted masks (>= 1).
    method : ``"split"`` or ``"cross_fit"`` (only changes the stated bound, see
        :mod:`defectmap.calibrate.crossfit`).
    n_folds : K, required for ``"cross_fit"``.
    pixels : the maps already summarised (finished :class:`PixelTail`), instead of
        ``val_maps``.
    defect_scores : scores of known defective samples, only measured at the threshold
        (:attr:`Calibration.miss_estimate`).

    Returns
    -------
    Calibration

    Warns
    -----
    CalibrationWarning
        When ``n < ceil(1/alpha) - 1``: ``p <= alpha`` is unreachable and the largest score
        decides (see :mod:`defectmap.calibrate.conformal`).
    """
    scores = np.sort(as_scores(val_scores, "validation scores"))
    alpha = check_fraction("alpha", alpha)
    pixel_fpr = check_fraction("pixel_fpr", pixel_fpr)
    n = int(scores.size)
    if n == 0:
        raise CalibrationError("at least one validation score is needed")
    if int(min_region_area) < 1:
        raise CalibrationError(f"min_region_area must be >= 1, got {min_region_area}")
    if method not in METHODS:
        raise CalibrationError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    if (method == "cross_fit") != (n_folds is not None) or (n_folds is not None
                                                            and int(n_folds) < 2):
        raise CalibrationError("n_folds (>= 2) is required for cross_fit and only for it")
    defects = () if defect_scores is None else tuple(
        float(v) for v in np.sort(as_scores(np.atleast_1d(np.asarray(defect_scores,
                                                                     dtype=np.float64)),
                                            "defect scores")))
    rule = _image_rule(scores, alpha, method, None if n_folds is None else int(n_folds))

    pixel_threshold = pixel_scale = pixel_median = pixel_max = None
    pairs: tuple[tuple[float, float], ...] = ()
    n_pixels = 0
    if pixels is None and val_maps is not None:
        pixels = _summarise_maps(val_maps, n, pixel_fpr)
    if pixels is not None:
        n_pixels = pixels.n_pixels
        pixel_threshold = pixels.threshold(pixel_fpr)
        pixel_max = float(pixels.maximum)
        sample = pixels.sample()
        pixel_median = float(np.median(sample))
        pixel_scale = conformal.robust_scale(sample, pixel_threshold)
        rates = sorted({f for f in PIXEL_FPR_GRID if f <= pixels.max_fpr} | {pixel_fpr})
        pairs = tuple((f, pixels.threshold(f)) for f in rates)

    if rule.warning is not None:  # after every input check, so invalid input never warns first
        warnings.warn(rule.warning, CalibrationWarning, stacklevel=2)
    return Calibration(
        alpha=alpha,
        image_threshold=rule.threshold,
        pixel_threshold=pixel_threshold,
        pixel_fpr=pixel_fpr,
        n_val=n,
        val_scores=tuple(float(v) for v in scores),
        rank=rule.rank,
        guarantee_holds=rule.holds,
        false_alarm_bound=rule.bound,
        image_scale=conformal.robust_scale(scores, rule.threshold),
        pixel_scale=pixel_scale,
        n_val_pixels=n_pixels,
        pixel_median=pixel_median,
        pixel_max=pixel_max,
        min_region_area=int(min_region_area),
        warning=rule.warning,
        method=method,
        n_folds=None if n_folds is None else int(n_folds),
        pixel_thresholds=pairs,
        defect_scores=defects,
    )
