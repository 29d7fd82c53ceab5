"""Thresholds and score normalisation learned from good validation images only.

A production line needs a decision (OK / defect) and a defect mask, not only a ranking.
Everything here is computed from the anomaly scores and maps of *defect-free validation
images* (carved from ``train/good`` by :func:`split_validation`, never from the test set):

* **Image threshold (split conformal).** Let ``v_(1) <= ... <= v_(n)`` be the sorted
  validation scores and ``k = ceil((n + 1) (1 - alpha))``. The threshold is ``t = v_(k)`` and
  an image is called defective when its score is **strictly above** ``t``.

  *Guarantee.* If the validation scores and the score ``S`` of a new good image are
  exchangeable (e.g. i.i.d. good images, same detector, same imaging conditions), the rank of
  ``S`` among the ``n + 1`` scores is uniform, so ::

      P(false alarm) = P(S > v_(k)) <= (n + 1 - k) / (n + 1) <= alpha,

  and, when there are no ties, ``P(false alarm) = (n + 1 - k) / (n + 1) >= alpha - 1/(n+1)``.
  The probability is over the draw of the validation set *and* the new image; a given
  calibration may be above or below ``alpha``. The guarantee says nothing about defective
  images and breaks when the good images drift (lighting, new batch of parts).

  *Too few validation images.* The bound needs ``k <= n``, i.e. ``n >= ceil(1/alpha) - 1``
  (99 images for ``alpha = 0.01``, 19 for ``0.05``). With fewer, the threshold is the largest
  validation score, ``guarantee_holds`` is False, :attr:`Calibration.false_alarm_bound` is the
  bound that does hold, ``1/(n+1)``, and a :class:`CalibrationWarning` names the minimum ``n``.

* **Conformal p-value** of a score ``s``: ``p = (1 + #{v_i >= s}) / (n + 1)``. For a good image
  ``P(p <= u) <= u`` for every ``u`` (uniform on the grid ``{1, ..., n+1} / (n+1)`` without
  ties), and ``s > t  <=>  p <= alpha`` whenever the guarantee holds.

* **Pixel threshold.** The ``ceil(N (1 - pixel_fpr))``-th smallest of the ``N`` validation
  pixel scores, so at most a fraction ``pixel_fpr`` of validation pixels lies strictly above
  it. The default ``pixel_fpr = 0.001`` flags on average one pixel in a thousand of a good
  image (about 65 pixels of a 256 x 256 map, a single small blob with smooth maps): low enough
  that good parts rarely show a region, while defects (typically 0.1 - 10 % of the image)
  still light up. Pixels of one image are correlated, so this is an empirical rate on good
  validation images, not a per-image guarantee. The predicted mask is ``map > pixel_threshold``;
  regions are its 8-connected components (optionally dropping those smaller than
  ``min_region_area`` pixels).

* **Normalised scores** in ``(0, 1)``: ``u = 0.5 + 0.5 x / (1 + |x|)`` with
  ``x = (s - t) / scale`` and ``scale`` a robust spread (1.4826 x MAD) of the validation scores
  (pixels for maps). It is strictly increasing, exactly 0.5 at the threshold, so ranking
  metrics (AUROC, AU-PRO) do not change. This algebraic sigmoid is used instead of the logistic
  function because the logistic reaches exactly 1.0 in float64 about 37 spreads above the
  threshold, which would tie strongly anomalous pixels and change AU-PRO; the algebraic tail
  stays distinguishable (computed in float64, returned as float64) for ``|x|`` up to about
  ``1e5`` spreads for float32 inputs, far beyond realistic scores. Values farther out may tie.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import ndimage

from defectmap import __version__
from defectmap.errors import DefectmapError, ModelFileError
from defectmap.files import write_json

__all__ = [
    "CALIBRATION_FILE",
    "DEFAULT_ALPHA",
    "DEFAULT_PIXEL_FPR",
    "Calibration",
    "CalibrationError",
    "CalibrationWarning",
    "Region",
    "conformal_rank",
    "fit_calibration",
    "min_validation_size",
    "operating_point_metrics",
    "split_validation",
]

CALIBRATION_FILE = "calibration.json"
FORMAT = "defectmap-calibration"
FORMAT_VERSION = 1
DEFAULT_ALPHA = 0.01
DEFAULT_PIXEL_FPR = 0.001
_MAD_TO_SIGMA = 1.4826  # 1 / Phi^-1(3/4): MAD of a normal sample -> its standard deviation
_MAX_SPREAD_SAMPLE = 2_000_000  # pixels used to estimate the pixel spread (a strided sample)
_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)

T = TypeVar("T")


class CalibrationError(DefectmapError, ValueError):
    """Calibration input is invalid (too few images, non-finite scores, bad alpha, ...)."""


class CalibrationWarning(UserWarning):
    """The conformal guarantee cannot hold at the requested alpha (too few validation images)."""


# --------------------------------------------------------------------------- helpers


def _exact(value: float) -> Fraction:
    # The decimal the user typed (repr), as an exact rational: in floats
    # 1000 * (1 - 0.059) = 941.0000000000001 and its ceil would be 942, not 941.
    return Fraction(repr(float(value)))


def conformal_rank(n: int, alpha: float) -> int:
    """Return ``k = ceil((n + 1) (1 - alpha))``, the rank of the conformal threshold.

    Parameters
    ----------
    n : number of validation scores (>= 1).
    alpha : target false-alarm rate in (0, 1).

    Returns
    -------
    int
        ``k``; it may exceed ``n`` (then the guarantee cannot hold).

    Examples
    --------
    >>> conformal_rank(99, 0.01), conformal_rank(9, 0.1), conformal_rank(20, 0.01)
    (99, 9, 21)
    """
    return math.ceil((n + 1) * (1 - _exact(alpha)))


def min_validation_size(alpha: float) -> int:
    """Return the smallest ``n`` for which ``conformal_rank(n, alpha) <= n``: ``ceil(1/alpha) - 1``.

    Examples
    --------
    >>> min_validation_size(0.01), min_validation_size(0.05), min_validation_size(0.3)
    (99, 19, 3)
    """
    return math.ceil(1 / _exact(alpha)) - 1


def _check_fraction(name: str, value: float) -> float:
    value = float(value)
    if not (0.0 < value < 1.0):
        raise CalibrationError(f"{name} must be in (0, 1), got {value!r}")
    return value


def _as_scores(scores: ArrayLike, name: str = "scores") -> NDArray[np.float64]:
    array = np.asarray(scores, dtype=np.float64)
    if array.ndim != 1:
        raise CalibrationError(f"{name} must be one-dimensional, got shape {array.shape}")
    if not np.all(np.isfinite(array)):
        raise CalibrationError(f"{name} contain NaN or infinite values")
    return array


def _as_map(anomaly_map: ArrayLike, name: str = "map") -> NDArray[Any]:
    array = np.asarray(anomaly_map)
    if array.ndim != 2:
        raise CalibrationError(f"{name} must be a 2-D (H, W) array, got shape {array.shape}")
    if not np.issubdtype(array.dtype, np.floating) and not np.issubdtype(array.dtype, np.integer):
        raise CalibrationError(f"{name} must hold numbers, got dtype {array.dtype}")
    return array


def _robust_scale(values: NDArray[Any], reference: float) -> float:
    """A positive spread of ``values``: 1.4826 MAD, else the standard deviation, else |ref|, else 1.

    Any positive number keeps the normalisation strictly monotone; the fallbacks only matter
    when the validation scores are (nearly) all equal.
    """
    values = np.asarray(values, dtype=np.float64)
    median = float(np.median(values))
    for candidate in (
        _MAD_TO_SIGMA * float(np.median(np.abs(values - median))),
        float(np.std(values)),
        abs(reference),
    ):
        if math.isfinite(candidate) and candidate > 0:
            return candidate
    return 1.0


def _softsign_01(x: NDArray[np.float64]) -> NDArray[np.float64]:
    """``0.5 + 0.5 x / (1 + |x|)``, written so that neither tail rounds early."""
    out = np.empty_like(x)
    upper = x >= 0
    out[upper] = 1.0 - 0.5 / (1.0 + x[upper])
    out[~upper] = 0.5 / (1.0 - x[~upper])
    return out


# --------------------------------------------------------------------------- splitting


def split_validation(
    samples: Sequence[T],
    val_ratio: float = 0.1,
    min_val: int = 10,
    random_state: int | None = 0,
    *,
    min_fit: int = 1,
) -> tuple[list[T], list[T]]:
    """Split defect-free training samples into a fitting set and a validation set.

    ``n_val = max(min_val, ceil(val_ratio * n))`` samples, drawn without replacement with
    ``np.random.default_rng(random_state)``, go to validation; the rest fit the detector. Both
    lists keep the input order, so the split depends only on ``random_state`` and the input
    order (the dataset loaders return samples sorted by path).

    Parameters
    ----------
    samples : the good training samples (any objects, e.g. :class:`~defectmap.data.records.Sample`).
    val_ratio : fraction of samples held out, in [0, 1).
    min_val : minimum number of validation samples.
    random_state : seed of the split.
    min_fit : minimum number of samples left to fit the detector.

    Returns
    -------
    fit_samples, val_samples : lists of length ``n - n_val`` and ``n_val``.

    Raises
    ------
    CalibrationError
        If the ratio is invalid or too few samples remain to fit (the message gives the counts).
    """
    n = len(samples)
    if not (0.0 <= float(val_ratio) < 1.0):
        raise CalibrationError(f"val_ratio must be in [0, 1), got {val_ratio!r}")
    if min_val < 0 or min_fit < 1:
        raise CalibrationError(f"min_val must be >= 0 and min_fit >= 1, got {min_val}, {min_fit}")
    n_val = max(int(min_val), math.ceil(_exact(val_ratio) * n))
    if n_val < 1:
        raise CalibrationError("val_ratio = 0 and min_val = 0 leave no validation images")
    if n - n_val < min_fit:
        raise CalibrationError(
            f"only {n} good training images: holding out {n_val} for validation leaves "
            f"{n - n_val} to fit the detector (need at least {min_fit}); "
            "lower val_ratio/min_val or give a separate validation folder"
        )
    rng = np.random.default_rng(random_state)
    is_val = np.zeros(n, dtype=bool)
    is_val[rng.permutation(n)[:n_val]] = True
    fit = [s for s, v in zip(samples, is_val, strict=True) if not v]
    val = [s for s, v in zip(samples, is_val, strict=True) if v]
    return fit, val


# --------------------------------------------------------------------------- records


@dataclass(frozen=True)
class Region:
    """One 8-connected region of a predicted defect mask.

    Attributes
    ----------
    area : number of pixels.
    bbox : ``(x0, y0, x1, y1)`` in pixels, inclusive-exclusive: columns ``x0 .. x1-1`` and rows
        ``y0 .. y1-1`` (so ``mask[y0:y1, x0:x1]`` crops it; width ``x1 - x0``).
    peak : largest raw anomaly score inside the region.
    centroid : ``(x, y)`` mean column and row of its pixels.
    """

    area: int
    bbox: tuple[int, int, int, int]
    peak: float
    centroid: tuple[float, float]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (lists for the tuples)."""
        return {
            "area": self.area,
            "bbox": list(self.bbox),
            "peak": self.peak,
            "centroid": list(self.centroid),
        }


@dataclass(frozen=True)
class Calibration:
    """Thresholds and normalisation learned from good validation images (see module docs).

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
        s = _as_scores(np.atleast_1d(np.asarray(scores, dtype=np.float64)))
        val = np.asarray(self.val_scores, dtype=np.float64)
        n_at_least = self.n_val - np.searchsorted(val, s, side="left")
        return ((1.0 + n_at_least) / (self.n_val + 1.0)).astype(np.float64)

    def normalize(self, scores: ArrayLike) -> NDArray[np.float64]:
        """Normalised scores in (0, 1), 0.5 at the image threshold; (N,) -> (N,) float64."""
        s = _as_scores(np.atleast_1d(np.asarray(scores, dtype=np.float64)))
        return _softsign_01((s - self.image_threshold) / self.image_scale)

    def decide(self, scores: ArrayLike) -> NDArray[np.bool_]:
        """True (defect) where the score is strictly above the image threshold; (N,) -> (N,)."""
        s = _as_scores(np.atleast_1d(np.asarray(scores, dtype=np.float64)))
        return s > self.image_threshold

    # ---------------------------------------------------------------- pixel level

    def _require_pixels(self) -> tuple[float, float]:
        if self.pixel_threshold is None or self.pixel_scale is None:
            raise CalibrationError("this calibration has no pixel threshold (fitted without maps)")
        return self.pixel_threshold, self.pixel_scale

    def normalize_map(self, anomaly_map: ArrayLike) -> NDArray[np.float64]:
        """Normalised map in (0, 1), 0.5 at the pixel threshold; (H, W) -> (H, W) float64."""
        threshold, scale = self._require_pixels()
        array = _as_map(anomaly_map).astype(np.float64)
        return _softsign_01((array - threshold) / scale)

    def _labels(self, anomaly_map: ArrayLike) -> tuple[NDArray[Any], NDArray[np.int32], int]:
        threshold, _ = self._require_pixels()
        array = _as_map(anomaly_map)
        labels, n = ndimage.label(array > threshold, structure=_EIGHT_CONNECTED)
        if n and self.min_region_area > 1:
            areas = np.bincount(labels.ravel(), minlength=n + 1)
            keep = areas >= self.min_region_area
            keep[0] = False
            remap = np.zeros(n + 1, dtype=np.int32)
            remap[keep] = np.arange(1, int(keep.sum()) + 1, dtype=np.int32)
            labels, n = remap[labels], int(keep.sum())
        return array, labels, n

    def segment(self, anomaly_map: ArrayLike) -> tuple[NDArray[np.bool_], list[Region]]:
        """:meth:`predicted_mask` and :meth:`regions` in one labelling pass."""
        array, labels, n = self._labels(anomaly_map)
        return labels > 0, self._regions(array, labels, n)

    def predicted_mask(self, anomaly_map: ArrayLike) -> NDArray[np.bool_]:
        """Defect mask ``map > pixel_threshold`` without regions below ``min_region_area``.

        (H, W) -> (H, W) bool.
        """
        _, labels, _ = self._labels(anomaly_map)
        return labels > 0

    def regions(self, anomaly_map: ArrayLike) -> list[Region]:
        """The 8-connected regions of :meth:`predicted_mask`, highest peak first."""
        return self._regions(*self._labels(anomaly_map))

    @staticmethod
    def _regions(array: NDArray[Any], labels: NDArray[np.int32], n: int) -> list[Region]:
        if n == 0:
            return []
        index = np.arange(1, n + 1)
        areas = np.bincount(labels.ravel(), minlength=n + 1)[1:]
        peaks = ndimage.maximum(array, labels, index)
        centroids = ndimage.center_of_mass(np.ones(labels.shape), labels, index)
        out = []
        for i, box in enumerate(ndimage.find_objects(labels)):
            assert box is not None  # every label 1..n is present
            rows, cols = box
            out.append(
                Region(
                    area=int(areas[i]),
                    bbox=(int(cols.start), int(rows.start), int(cols.stop), int(rows.stop)),
                    peak=float(peaks[i]),
                    centroid=(float(centroids[i][1]), float(centroids[i][0])),
                )
            )
        out.sort(key=lambda r: (-r.peak, r.bbox))
        return out

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
        When ``n < ceil(1/alpha) - 1``: the guarantee cannot hold (see module docs).
    """
    scores = np.sort(_as_scores(val_scores, "validation scores"))
    alpha = _check_fraction("alpha", alpha)
    pixel_fpr = _check_fraction("pixel_fpr", pixel_fpr)
    n = int(scores.size)
    if n < 1:
        raise CalibrationError("at least one validation score is needed")
    if int(min_region_area) < 1:
        raise CalibrationError(f"min_region_area must be >= 1, got {min_region_area}")

    rank = conformal_rank(n, alpha)
    holds = rank <= n
    threshold = float(scores[min(rank, n) - 1])
    bound = (n + 1 - min(rank, n)) / (n + 1)
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
        maps = [_as_map(m, f"validation map {i}") for i, m in enumerate(val_maps)]
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
        k_pix = math.ceil(n_pixels * (1 - _exact(pixel_fpr)))
        k_pix = min(max(k_pix, 1), n_pixels)
        pixel_threshold = float(np.partition(flat, k_pix - 1)[k_pix - 1])
        pixel_max = float(flat.max())
        sample = flat[:: max(1, n_pixels // _MAX_SPREAD_SAMPLE)]
        pixel_median = float(np.median(sample))
        pixel_scale = _robust_scale(sample, pixel_threshold)

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
        image_scale=_robust_scale(scores, threshold),
        pixel_scale=pixel_scale,
        n_val_pixels=n_pixels,
        pixel_median=pixel_median,
        pixel_max=pixel_max,
        min_region_area=int(min_region_area),
        warning=message,
    )


# --------------------------------------------------------------------------- evaluation


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
    metrics: Any,
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
    from defectmap import metrics  # imported here: metrics loads lazily

    s = _as_scores(scores, "test scores")
    y = np.asarray(labels).astype(np.int64)
    if y.shape != s.shape or not np.isin(y, (0, 1)).all():
        raise CalibrationError(f"labels must be 0/1 with the shape of scores {s.shape}")
    result: dict[str, Any] = {
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
        map_list = [_as_map(m, f"test map {i}") for i, m in enumerate(maps)]
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
        result.update(_pixel_point(predicted, gt, y, metrics))
        if any(g.any() for g in gt):
            pixel_f1, pixel_threshold = metrics.pixel_f1_max(map_list, gt)
            oracle_masks = [m >= pixel_threshold for m in map_list]
            oracle.update(_pixel_point(oracle_masks, gt, y, metrics),
                          pixel_threshold=float(pixel_threshold))
            oracle["pixel_f1"] = float(pixel_f1)
    result["oracle"] = oracle
    return result
