"""Drift of the passed parts' scores away from calibration: an exact beta-binomial test.

The service passes a part when its score ``s <= t = v_(k)``, the k-th smallest of the ``n``
good validation scores (:mod:`defectmap.calibrate.conformal`). While the line makes parts like
the validation images (exchangeable scores), a passed part lands above the reference score
``v_(j)`` (``j = ceil(k / 2)``, the middle of the passing range) with a probability ``theta``
that depends on the validation draw: with ``U_(i)`` the uniform order statistics,
``theta = (U_(k) - U_(j)) / U_(k) ~ Beta(k - j, j)``. Given the validation set, the last ``W``
passed parts are independent, so the count ``X`` of them above ``v_(j)`` is exactly

    X ~ BetaBinomial(W, k - j, j)        (expected share (k - j) / k, about one half)

over the draw of the validation set and of the parts. :func:`drift_test` computes the
two-sided p-value of the observed count, ``p = min(1, 2 min(P(X >= x), P(X <= x)))``, and
raises the alarm when ``p < alpha``.

False-alarm rate: under no drift, each check alarms with probability at most ``alpha``
(exactly, not asymptotically: the beta-binomial is the count's true law, including the
spread that comes from having only ``n`` validation images). Checks of overlapping windows
are not independent; ``benchmarks/drift.py`` measures the rate per check and over long
runs, and how fast a shift is caught. Rising scores (parts less like the good ones: a new
material, a dirty lens) and falling ones (a blank camera, a changed exposure that washes out
texture) both alarm.

Only passed parts are used, so a change in the share of defects does not alarm by itself; a
drift that pushes good parts above the threshold shows as more defects, and as passed scores
crowding toward the threshold.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike
from scipy.special import betaln, gammaln

from defectmap.calibrate.conformal import CalibrationError

__all__ = ["DEFAULT_DRIFT_ALPHA", "DEFAULT_WINDOW", "DriftResult", "drift_test"]

#: Per-check false-alarm rate of the drift alarm.
DEFAULT_DRIFT_ALPHA = 0.001
#: Number of most recent passed parts in each check.
DEFAULT_WINDOW = 100


@dataclass(frozen=True)
class DriftResult:
    """One check of the passed parts against calibration.

    Attributes
    ----------
    status : ``"ok"``, ``"alarm"`` or ``"collecting"`` (fewer than ``window`` passed parts).
    alarm : True when ``p_value < alpha``.
    p_value : two-sided beta-binomial p-value (None while collecting).
    n_parts : passed parts in the window (at most ``window``).
    n_above : how many of them scored above ``reference_score``.
    expected_share, observed_share : share above the reference under no drift, and seen.
    reference_score : ``v_(j)``, the validation score at the middle of the passing range.
    window, alpha : the test's settings.
    direction : ``"up"`` (scores rising), ``"down"`` or None.
    """

    status: str
    alarm: bool
    p_value: float | None
    n_parts: int
    n_above: int
    expected_share: float
    observed_share: float | None
    reference_score: float
    window: int
    alpha: float
    direction: str | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def betabinom_pmf(n: int, a: float, b: float) -> np.ndarray:
    """``P(X = x)`` for ``x = 0..n`` of ``X ~ BetaBinomial(n, a, b)``, shape (n + 1,), float64.

    ``C(n, x) B(x + a, n - x + b) / B(a, b)``, in log space (``scipy.stats`` is not imported:
    it pulls in array-API helpers this torch-free layer does not need).

    Examples
    --------
    >>> betabinom_pmf(2, 1, 1).round(4).tolist()  # uniform: every count equally likely
    [0.3333, 0.3333, 0.3333]
    """
    x = np.arange(n + 1, dtype=np.float64)
    log_choose = gammaln(n + 1) - gammaln(x + 1) - gammaln(n - x + 1)
    return np.exp(log_choose + betaln(x + a, n - x + b) - betaln(a, b))


def drift_test(
    val_scores: ArrayLike,
    image_threshold: float,
    passed_scores: ArrayLike,
    window: int = DEFAULT_WINDOW,
    alpha: float = DEFAULT_DRIFT_ALPHA,
) -> DriftResult:
    """Test the last ``window`` passed scores against the calibration (see the module doc).

    Parameters
    ----------
    val_scores : the calibration's good validation scores, shape (n,).
    image_threshold : the calibration's threshold ``t``; parts with ``score <= t`` passed.
    passed_scores : scores of passed parts, oldest first, shape (m,); the last ``window``
        are tested.
    window : parts per check (>= 10).
    alpha : per-check false-alarm rate, in (0, 1).

    Returns
    -------
    DriftResult
    """
    v = np.sort(np.asarray(val_scores, dtype=np.float64))
    if v.size < 2:
        raise CalibrationError("the drift test needs at least 2 validation scores")
    if not 0 < alpha < 1:
        raise CalibrationError(f"alpha must be in (0, 1), got {alpha}")
    if window < 10:
        raise CalibrationError(f"window must be >= 10, got {window}")
    # k: number of validation scores at or below the threshold (the passing range).
    k = int(np.searchsorted(v, image_threshold, side="right"))
    k = max(k, 2)
    j = math.ceil(k / 2)
    reference = float(v[j - 1])
    expected = (k - j) / k
    recent = np.asarray(passed_scores, dtype=np.float64)[-window:]
    n_parts = int(recent.size)
    n_above = int(np.count_nonzero(recent > reference))
    if n_parts < window:
        return DriftResult("collecting", False, None, n_parts, n_above, expected,
                           None if n_parts == 0 else n_above / n_parts, reference, window,
                           alpha, None)
    pmf = betabinom_pmf(n_parts, k - j, j)
    upper = float(pmf[n_above:].sum())  # P(X >= x)
    lower = float(pmf[: n_above + 1].sum())  # P(X <= x)
    p_value = min(1.0, 2.0 * min(upper, lower))
    alarm = p_value < alpha
    direction = None
    if alarm:
        direction = "up" if upper < lower else "down"
    return DriftResult("alarm" if alarm else "ok", alarm, p_value, n_parts, n_above,
                       expected, n_above / n_parts, reference, window, alpha, direction)
