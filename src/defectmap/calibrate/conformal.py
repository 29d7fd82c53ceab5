"""Conformal ranks, thresholds, p-values and score normalisation, as pure NumPy functions.

Everything here is computed from the anomaly scores and maps of *defect-free images* that
the scoring model did not see: a held-out validation set (split conformal), or the
out-of-fold scores of cross-fitting (:mod:`defectmap.calibrate.crossfit`, the default);
never the test set.

* **Image threshold.** Let ``v_(1) <= ... <= v_(n)`` be the sorted calibration scores and
  ``k = ceil((n + 1) (1 - alpha))``. The threshold is ``t = v_(k)`` and an image is called
  defective when its score is **strictly above** ``t``.

  *Split-conformal guarantee.* If the validation scores and the score ``S`` of a new good
  image are exchangeable (e.g. i.i.d. good images, same detector, same imaging conditions),
  the rank of ``S`` among the ``n + 1`` scores is uniform, so ::

      P(false alarm) = P(S > v_(k)) <= (n + 1 - k) / (n + 1) <= alpha,

  and, when there are no ties, ``P(false alarm) = (n + 1 - k) / (n + 1) >= alpha - 1/(n+1)``.
  The probability is over the draw of the validation set *and* the new image; a given
  calibration may be above or below ``alpha``. The guarantee says nothing about defective
  images and breaks when the good images drift (lighting, new batch of parts). The
  cross-fitted guarantee is weaker: see :func:`cross_conformal_bound`.

  *Too few calibration images.* The rank needs ``k <= n``, i.e. ``n >= ceil(1/alpha) - 1``
  (99 images for ``alpha = 0.01``, 19 for ``0.05``). With fewer, no score has
  ``p <= alpha``; the threshold is then the largest calibration score (the decision rule
  ``"largest_score"``), ``guarantee_holds`` is False, the calibration's
  ``false_alarm_bound`` is the bound that does hold (``1/(n+1)`` for split conformal), and
  a :class:`CalibrationWarning` names the minimum ``n``.

* **Conformal p-value** of a score ``s``: ``p = (1 + #{v_i >= s}) / (n + 1)``. For a good image
  and split conformal, ``P(p <= u) <= u`` for every ``u`` (uniform on the grid
  ``{1, ..., n+1} / (n+1)`` without ties). ``s > t  <=>  p <= alpha`` whenever ``k <= n``
  (the decision rule ``"p_value"``).

* **Pixel threshold.** The ``ceil(N (1 - pixel_fpr))``-th smallest of the ``N`` calibration
  pixel scores, so at most a fraction ``pixel_fpr`` of them lies strictly above it. The
  default ``pixel_fpr = 0.001`` flags on average one pixel in a thousand of a good
  image (about 65 pixels of a 256 x 256 map, a single small blob with smooth maps): low enough
  that good parts rarely show a region, while defects (typically 0.1 - 10 % of the image)
  still light up. Pixels of one image are correlated, so this is an empirical rate on good
  images, not a per-image guarantee.

* **Normalised scores** in ``(0, 1)``: ``u = 0.5 + 0.5 x / (1 + |x|)`` with
  ``x = (s - t) / scale`` and ``scale`` a robust spread (1.4826 x MAD) of the calibration
  scores (pixels for maps). It is strictly increasing, exactly 0.5 at the threshold, so ranking
  metrics (AUROC, AU-PRO) do not change. This algebraic sigmoid is used instead of the logistic
  function because the logistic reaches exactly 1.0 in float64 about 37 spreads above the
  threshold, which would tie strongly anomalous pixels and change AU-PRO; the algebraic tail
  stays distinguishable (computed in float64, returned as float64) for ``|x|`` up to about
  ``1e5`` spreads for float32 inputs, far beyond realistic scores. Values farther out may tie.
"""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from defectmap.errors import DefectmapError, DefectmapWarning

__all__ = [
    "CalibrationError",
    "CalibrationWarning",
    "conformal_rank",
    "cross_conformal_bound",
    "image_threshold",
    "min_validation_size",
    "normalize",
    "p_values",
    "pixel_threshold",
    "robust_scale",
]

_MAD_TO_SIGMA = 1.4826  # 1 / Phi^-1(3/4): MAD of a normal sample -> its standard deviation


class CalibrationError(DefectmapError, ValueError):
    """Calibration input is invalid (too few images, non-finite scores, bad alpha, ...)."""


class CalibrationWarning(DefectmapWarning):
    """The conformal guarantee cannot hold at the requested alpha (too few validation images)."""


# --------------------------------------------------------------------------- input checks


def exact_fraction(value: float) -> Fraction:
    """The decimal the user typed (``repr``), as an exact rational.

    In floats ``1000 * (1 - 0.059) = 941.0000000000001`` and its ceil would be 942, not 941.
    """
    return Fraction(repr(float(value)))


def check_fraction(name: str, value: float) -> float:
    """``value`` as a float in the open interval (0, 1), else :class:`CalibrationError`."""
    value = float(value)
    if not (0.0 < value < 1.0):
        raise CalibrationError(f"{name} must be in (0, 1), got {value!r}")
    return value


def as_scores(scores: ArrayLike, name: str = "scores") -> NDArray[np.float64]:
    """``scores`` as a finite 1-D float64 array (N,), else :class:`CalibrationError`."""
    array = np.asarray(scores, dtype=np.float64)
    if array.ndim != 1:
        raise CalibrationError(f"{name} must be one-dimensional, got shape {array.shape}")
    if not np.all(np.isfinite(array)):
        raise CalibrationError(f"{name} contain NaN or infinite values")
    return array


def as_map(anomaly_map: ArrayLike, name: str = "map") -> NDArray[Any]:
    """``anomaly_map`` as a numeric (H, W) array (dtype kept), else :class:`CalibrationError`."""
    array = np.asarray(anomaly_map)
    if array.ndim != 2:
        raise CalibrationError(f"{name} must be a 2-D (H, W) array, got shape {array.shape}")
    if not np.issubdtype(array.dtype, np.floating) and not np.issubdtype(array.dtype, np.integer):
        raise CalibrationError(f"{name} must hold numbers, got dtype {array.dtype}")
    return array


# --------------------------------------------------------------------------- ranks


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
    return math.ceil((n + 1) * (1 - exact_fraction(alpha)))


def min_validation_size(alpha: float) -> int:
    """Return the smallest ``n`` for which ``conformal_rank(n, alpha) <= n``: ``ceil(1/alpha) - 1``.

    Examples
    --------
    >>> min_validation_size(0.01), min_validation_size(0.05), min_validation_size(0.3)
    (99, 19, 3)
    """
    return math.ceil(1 / exact_fraction(alpha)) - 1


# --------------------------------------------------------------------------- thresholds


def image_threshold(sorted_scores: NDArray[np.float64], alpha: float) -> tuple[float, int, float]:
    """The split-conformal image threshold of sorted validation scores.

    Parameters
    ----------
    sorted_scores : validation scores in increasing order, shape (n,), n >= 1.
    alpha : target false-alarm rate in (0, 1).

    Returns
    -------
    threshold : ``v_(min(k, n))``.
    rank : ``k = conformal_rank(n, alpha)`` (the guarantee holds when ``k <= n``).
    false_alarm_bound : the guaranteed bound ``(n + 1 - min(k, n)) / (n + 1)``.

    Examples
    --------
    >>> image_threshold(np.arange(1.0, 10.0), 0.1)
    (9.0, 9, 0.1)
    """
    n = int(sorted_scores.size)
    rank = conformal_rank(n, alpha)
    threshold = float(sorted_scores[min(rank, n) - 1])
    return threshold, rank, (n + 1 - min(rank, n)) / (n + 1)


def cross_conformal_bound(n: int, n_folds: int, attained_alpha: float) -> float:
    """The proven false-alarm bound of K-fold cross-conformal p-values (CV+), capped at 1.

    ``2 a + min(2 (1 - 1/K) / (n/K + 1), (1 - K/n) / (K + 1))`` with ``a`` the attained level
    ``(n + 1 - k) / (n + 1)`` of the threshold rank (``a <= alpha``): Barber, Candes, Ramdas
    and Tibshirani, "Predictive inference with the jackknife+", Ann. Statist. 49(1), 2021,
    Theorem 4 (stated for ``n`` divisible by ``K``), with the residual replaced by the
    anomaly score. What it covers and what it does not is written out in
    :mod:`defectmap.calibrate.crossfit`.

    Examples
    --------
    >>> round(cross_conformal_bound(205, 5, 2 / 206), 4)
    0.0575
    >>> cross_conformal_bound(10, 10, 0.05)  # K = n (jackknife+): exactly 2 a
    0.1
    """
    k = int(n_folds)
    extra = min(2 * (1 - 1 / k) / (n / k + 1), (1 - k / n) / (k + 1))
    return min(1.0, 2 * float(attained_alpha) + extra)


def pixel_threshold(pixels: NDArray[Any], pixel_fpr: float) -> float:
    """The ``ceil(N (1 - pixel_fpr))``-th smallest of ``N`` validation pixel scores (any order).

    Examples
    --------
    >>> pixel_threshold(np.arange(100.0), 0.05)
    94.0
    """
    n_pixels = int(pixels.size)
    k = math.ceil(n_pixels * (1 - exact_fraction(pixel_fpr)))
    k = min(max(k, 1), n_pixels)
    return float(np.partition(pixels, k - 1)[k - 1])


def p_values(sorted_val_scores: NDArray[np.float64], scores: ArrayLike) -> NDArray[np.float64]:
    """Conformal p-values ``(1 + #{v >= s}) / (n + 1)``: scores (N,) -> (N,) in (0, 1].

    Examples
    --------
    >>> p_values(np.array([1.0, 2.0, 3.0]), [0.0, 2.0, 5.0]).tolist()
    [1.0, 0.75, 0.25]
    """
    s = as_scores(np.atleast_1d(np.asarray(scores, dtype=np.float64)))
    n = int(sorted_val_scores.size)
    n_at_least = n - np.searchsorted(sorted_val_scores, s, side="left")
    return ((1.0 + n_at_least) / (n + 1.0)).astype(np.float64)


# --------------------------------------------------------------------------- normalisation


def robust_scale(values: NDArray[Any], reference: float) -> float:
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


def normalize(values: NDArray[Any], threshold: float, scale: float) -> NDArray[np.float64]:
    """``0.5 + 0.5 x / (1 + |x|)`` with ``x = (values - threshold) / scale``, any shape, float64.

    Written so that neither tail rounds early (see the module docs).

    Examples
    --------
    >>> normalize(np.array([0.0, 1.0, 3.0]), 1.0, 1.0).tolist()
    [0.25, 0.5, 0.8333333333333334]
    """
    x = (np.asarray(values, dtype=np.float64) - threshold) / scale
    out = np.empty_like(x)
    upper = x >= 0
    out[upper] = 1.0 - 0.5 / (1.0 + x[upper])
    out[~upper] = 0.5 / (1.0 - x[~upper])
    return out
