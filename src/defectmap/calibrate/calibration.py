"""The :class:`Calibration`: thresholds and normalisation learned from good validation images.

:func:`fit_calibration` computes it (the maths are in :mod:`defectmap.calibrate.conformal`);
:meth:`Calibration.save` / :meth:`Calibration.load` keep it as ``calibration.json`` beside the
detector's files. It decides images (``score > image_threshold``), gives their p-values and
normalised scores, and segments maps into predicted defect regions
(:mod:`defectmap.calibrate.regions`).
"""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
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
from defectmap.calibrate.regions import Region, label_defects, regions_from_labels, segment
from defectmap.constants import DEFAULT_ALPHA, DEFAULT_PIXEL_FPR
from defectmap.errors import ModelFileError
from defectmap.files import write_json

__all__ = ["CALIBRATION_FILE", "Calibration", "fit_calibration"]

CALIBRATION_FILE = "calibration.json"
FORMAT = "defectmap-calibration"
FORMAT_VERSION = 1
_MAX_SPREAD_SAMPLE = 2_000_000  # pixels used to estimate the pixel spread (a strided sample)


@dataclass(frozen=True)
class Calibration:
    """Thresholds and normalisation learned from good validation images.

    The maths are in :mod:`defectmap.calibrate.conformal`.

    Build with :func:`fit_calibration`; save/load as ``calibration.json``.

    Attributes
    ----------
    alpha : target false-alarm rate.
    image_threshold : ``v_(k)``; an image is defective when its score is > this.
    pixel_threshold : a pixel is defective when its score is > this; None without maps.
    pixel_fpr : target pixel false-positive rate used for ``pixel_threshold``.
    n_val : number of validation images.
    val_scores : the sorted validation scores, shape (n_val,) (needed for p-values).
    rank : ``k = ceil((n_val + 1)(1 - alpha))`` (may exceed ``n_val``).
    guarantee_holds : whether ``P(false alarm) <= alpha`` is guaranteed (``rank <= n_val``).
    false_alarm_bound : the bound that is guaranteed, ``(n_val + 1 - min(k, n_val)) / (n_val + 1)``.
    image_scale : spread used by :meth:`normalize`.
    pixel_scale : spread used by :meth:`normalize_map`; None without maps.
    n_val_pixels : number of validation pixels (0 without maps).
    pixel_median, pixel_max : statistics of the validation pixels (None without maps).
    min_region_area : regions smaller than this many pixels are dropped from masks.
    warning : why the guarantee does not hold, or None.
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

    # ---------------------------------------------------------------- image level

    def p_values(self, scores: ArrayLike) -> NDArray[np.float64]:
        """Conformal p-values ``(1 + #{v >= s}) / (n_val + 1)``; scores (N,) -> (N,) in (0, 1]."""
        return conformal.p_values(np.asarray(self.val_scores, dtype=np.float64), scores)

    def normalize(self, scores: ArrayLike) -> NDArray[np.float64]:
        """Normalised scores in (0, 1), 0.5 at the image threshold; (N,) -> (N,) float64."""
        s = as_scores(np.atleast_1d(np.asarray(scores, dtype=np.float64)))
        return conformal.normalize(s, self.image_threshold, self.image_scale)

    def decide(self, scores: ArrayLike) -> NDArray[np.bool_]:
        """True (defect) where the score is strictly above the image threshold; (N,) -> (N,)."""
        s = as_scores(np.atleast_1d(np.asarray(scores, dtype=np.float64)))
        return s > self.image_threshold

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
        """min, max, mean, std and median of the validation scores."""
        v = np.asarray(self.val_scores, dtype=np.float64)
        return {
            "min": float(v.min()),
            "max": float(v.max()),
            "mean": float(v.mean()),
            "std": float(v.std()),
            "median": float(np.median(v)),
        }

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict of every field plus ``val_score_stats`` (informative; not loaded)."""
        data = asdict(self)
        data["val_scores"] = list(self.val_scores)
        data["val_score_stats"] = self.val_score_stats
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
        """Read ``directory/calibration.json``; invalid files raise :class:`ModelFileError`."""
        path = Path(directory) / CALIBRATION_FILE
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ModelFileError(f"{path}: calibration file not found") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ModelFileError(f"{path}: cannot read calibration ({exc})") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ModelFileError(f"{path}: not a defectmap calibration file")
        if data.get("format_version") != FORMAT_VERSION:
            raise ModelFileError(
                f"{path}: calibration format_version {data.get('format_version')!r} "
                f"is not supported (expected {FORMAT_VERSION})"
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

        val_scores = tuple(float(v) for v in data["val_scores"])
        calibration = cls(
            alpha=float(data["alpha"]),
            image_threshold=float(data["image_threshold"]),
            pixel_threshold=opt("pixel_threshold"),
            pixel_fpr=float(data["pixel_fpr"]),
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
        )
        # Integrity: the stored numbers must agree with each other.
        if calibration.n_val != len(val_scores) or calibration.n_val < 1:
            raise ValueError("n_val does not match the number of val_scores")
        if list(val_scores) != sorted(val_scores) or not all(map(math.isfinite, val_scores)):
            raise ValueError("val_scores must be sorted and finite")
        if calibration.rank != conformal_rank(calibration.n_val, calibration.alpha):
            raise ValueError("rank does not match n_val and alpha")
        if calibration.image_threshold != val_scores[min(calibration.rank, calibration.n_val) - 1]:
            raise ValueError("image_threshold is not the conformal order statistic of val_scores")
        if not calibration.image_scale > 0 or (
            calibration.pixel_scale is not None and not calibration.pixel_scale > 0
        ):
            raise ValueError("scales must be positive")
        return calibration


# --------------------------------------------------------------------------- fitting


def fit_calibration(
    val_scores: ArrayLike,
    val_maps: Sequence[ArrayLike] | NDArray[Any] | None = None,
    alpha: float = DEFAULT_ALPHA,
    pixel_fpr: float = DEFAULT_PIXEL_FPR,
    *,
    min_region_area: int = 1,
) -> Calibration:
    """Learn thresholds and normalisation from good validation images.

    Parameters
    ----------
    val_scores : image scores of the good validation images, shape (n,).
    val_maps : their anomaly maps, n arrays (H_i, W_i) or one (n, H, W) array; None for an
        image-level calibration (no pixel threshold).
    alpha : target false-alarm rate in (0, 1).
    pixel_fpr : target fraction of good validation pixels above the pixel threshold, in (0, 1).
    min_region_area : regions of fewer pixels are dropped from predicted masks (>= 1).

    Returns
    -------
    Calibration

    Warns
    -----
    CalibrationWarning
        When ``n < ceil(1/alpha) - 1``: the guarantee cannot hold (see
        :mod:`defectmap.calibrate.conformal`).
    """
    scores = np.sort(as_scores(val_scores, "validation scores"))
    alpha = check_fraction("alpha", alpha)
    pixel_fpr = check_fraction("pixel_fpr", pixel_fpr)
    n = int(scores.size)
    if n < 1:
        raise CalibrationError("at least one validation score is needed")
    if int(min_region_area) < 1:
        raise CalibrationError(f"min_region_area must be >= 1, got {min_region_area}")

    threshold, rank, bound = conformal.image_threshold(scores, alpha)
    holds = rank <= n
    message = None
    if not holds:
        message = (
            f"{n} validation images are too few for alpha={alpha}: the conformal guarantee "
            f"needs at least {min_validation_size(alpha)}; using the largest validation score "
            f"as threshold, which guarantees only P(false alarm) <= 1/(n+1) = {bound:.4f}"
        )

    pixel_threshold = pixel_scale = pixel_median = pixel_max = None
    n_pixels = 0
    if val_maps is not None:
        maps = [as_map(m, f"validation map {i}") for i, m in enumerate(val_maps)]
        if len(maps) != n:
            raise CalibrationError(f"{len(maps)} validation maps for {n} validation scores")
        # float32 (the detectors' maps) unless the maps need more precision: rounding
        # float64 or wide-integer maps would move the threshold off the order statistic.
        dtype = np.result_type(np.float32, *(m.dtype for m in maps))
        flat = np.concatenate([m.ravel() for m in maps]).astype(dtype, copy=False)
        if not np.all(np.isfinite(flat)):
            raise CalibrationError("validation maps contain NaN or infinite values")
        n_pixels = int(flat.size)
        if n_pixels == 0:
            raise CalibrationError("validation maps are empty")
        pixel_threshold = conformal.pixel_threshold(flat, pixel_fpr)
        pixel_max = float(flat.max())
        sample = flat[:: max(1, n_pixels // _MAX_SPREAD_SAMPLE)]
        pixel_median = float(np.median(sample))
        pixel_scale = conformal.robust_scale(sample, pixel_threshold)

    if message is not None:  # after every input check, so invalid input never warns first
        warnings.warn(message, CalibrationWarning, stacklevel=2)
    return Calibration(
        alpha=alpha,
        image_threshold=threshold,
        pixel_threshold=pixel_threshold,
        pixel_fpr=pixel_fpr,
        n_val=n,
        val_scores=tuple(float(v) for v in scores),
        rank=rank,
        guarantee_holds=holds,
        false_alarm_bound=bound,
        image_scale=conformal.robust_scale(scores, threshold),
        pixel_scale=pixel_scale,
        n_val_pixels=n_pixels,
        pixel_median=pixel_median,
        pixel_max=pixel_max,
        min_region_area=int(min_region_area),
        warning=message,
    )


