"""The expected miss rate at a threshold, from a few known defective samples.

Known defects are only *measured* at the threshold that the good images chose: they never
move the threshold (the false-alarm guarantee comes from good images alone) and never enter
a memory bank. With ``x`` of ``n`` known defects scored at or below the threshold, the miss
rate estimate is ``x / n`` with the exact Clopper-Pearson interval (Clopper and Pearson,
Biometrika 26, 1934): the ``(1 - c)/2`` and ``(1 + c)/2`` quantiles of
``Beta(x, n - x + 1)`` and ``Beta(x + 1, n - x)``. It holds for future defects only as far as
the known ones are a random sample of them; a defect type absent from the sample is not
covered.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from defectmap.calibrate.conformal import CalibrationError, as_scores

__all__ = ["MissEstimate", "clopper_pearson", "estimate_miss_rate"]

#: Confidence level of the interval.
DEFAULT_CONFIDENCE = 0.95


def clopper_pearson(k: int, n: int, confidence: float = DEFAULT_CONFIDENCE) -> tuple[float, float]:
    """Exact two-sided binomial interval ``(low, high)`` for ``k`` successes in ``n`` trials.

    Examples
    --------
    >>> clopper_pearson(0, 10)[0], round(clopper_pearson(0, 10)[1], 4)
    (0.0, 0.3085)
    >>> [round(v, 4) for v in clopper_pearson(5, 10)]
    [0.1871, 0.8129]
    """
    from scipy import stats

    if n < 1 or not 0 <= k <= n:
        raise CalibrationError(f"need 0 <= k <= n and n >= 1, got k={k}, n={n}")
    tail = (1.0 - confidence) / 2.0
    low = 0.0 if k == 0 else float(stats.beta.ppf(tail, k, n - k + 1))
    high = 1.0 if k == n else float(stats.beta.ppf(1.0 - tail, k + 1, n - k))
    return low, high


@dataclass(frozen=True)
class MissEstimate:
    """Known defects passed as good at one threshold, with a Clopper-Pearson interval.

    Attributes
    ----------
    n_defects : number of known defective samples.
    n_missed : those scoring at or below the image threshold (decided "ok").
    miss_rate : ``n_missed / n_defects``.
    low, high : the interval at ``confidence``.
    confidence : e.g. 0.95.
    """

    n_defects: int
    n_missed: int
    miss_rate: float
    low: float
    high: float
    confidence: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict of the fields."""
        return {"n_defects": self.n_defects, "n_missed": self.n_missed,
                "miss_rate": self.miss_rate, "low": self.low, "high": self.high,
                "confidence": self.confidence}

    def __str__(self) -> str:
        return (f"{self.n_missed} of {self.n_defects} known defects missed: miss rate "
                f"{self.miss_rate:.2f} ({self.confidence:.0%} Clopper-Pearson interval "
                f"{self.low:.2f}-{self.high:.2f})")


def estimate_miss_rate(defect_scores: ArrayLike, threshold: float,
                       confidence: float = DEFAULT_CONFIDENCE) -> MissEstimate:
    """Miss rate of known defects at ``threshold`` (defect = score strictly above it).

    Examples
    --------
    >>> estimate_miss_rate([0.5, 2.0, 3.0, 1.0], threshold=1.0).n_missed
    2
    """
    scores = as_scores(np.atleast_1d(np.asarray(defect_scores, dtype=np.float64)),
                       "defect scores")
    if scores.size == 0:
        raise CalibrationError("no known defect scores")
    missed = int(np.sum(scores <= threshold))
    low, high = clopper_pearson(missed, int(scores.size), confidence)
    return MissEstimate(int(scores.size), missed, missed / scores.size, low, high,
                        float(confidence))
