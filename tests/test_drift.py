"""The drift test: its false-alarm rate under no drift, and that it catches a shift."""

from __future__ import annotations

import numpy as np
import pytest

from defectmap.calibrate.conformal import CalibrationError, image_threshold
from defectmap.calibrate.drift import drift_test


def simulate(rng: np.random.Generator, n_val: int, window: int, alpha: float,
             shift: float = 0.0, scale: float = 1.0) -> bool:
    """One check: a fresh validation draw, then passed parts from the same (or a shifted)
    distribution; True when it alarms."""
    val = np.sort(rng.normal(size=n_val))
    threshold = image_threshold(val, 0.05)[0]
    parts = rng.normal(shift, scale, size=4 * window)
    passed = parts[parts <= threshold][-window:]
    return drift_test(val, threshold, passed, window=window, alpha=alpha).alarm


@pytest.mark.parametrize("n_val", [20, 200])
def test_false_alarm_rate_is_at_most_alpha(n_val: int) -> None:
    rng = np.random.default_rng(n_val)
    trials, alpha = 3000, 0.05
    rate = np.mean([simulate(rng, n_val, 100, alpha) for _ in range(trials)])
    sd = np.sqrt(alpha * (1 - alpha) / trials)
    assert rate <= alpha + 3 * sd
    # Exact, not just conservative: a discrete two-sided test stays near its level.
    assert rate >= 0.5 * alpha


def test_a_binomial_test_would_alarm_far_too_often_with_few_validation_images() -> None:
    """Why the beta-binomial: with 20 validation images the reference score itself is
    uncertain, and a plain binomial test at the nominal share ignores that."""
    from scipy.stats import binomtest

    rng = np.random.default_rng(7)
    alarms = 0
    for _ in range(2000):
        val = np.sort(rng.normal(size=20))
        threshold = image_threshold(val, 0.05)[0]
        parts = rng.normal(size=400)
        passed = parts[parts <= threshold][-100:]
        result = drift_test(val, threshold, passed, window=100, alpha=0.05)
        alarms += binomtest(result.n_above, 100, result.expected_share).pvalue < 0.05
    assert alarms / 2000 > 0.25  # versus <= 0.05 for the exact test above


def test_shift_is_caught_in_both_directions() -> None:
    rng = np.random.default_rng(1)
    up = np.mean([simulate(rng, 200, 100, 0.001, shift=1.0) for _ in range(200)])
    down = np.mean([simulate(rng, 200, 100, 0.001, shift=-1.0) for _ in range(200)])
    assert up > 0.85 and down > 0.85
    val = np.sort(rng.normal(size=200))
    t = image_threshold(val, 0.05)[0]
    parts = rng.normal(1.0, 1.0, 1000)
    result = drift_test(val, t, parts[parts <= t][:100])
    assert result.alarm and result.direction == "up" and result.p_value < 0.001


def test_betabinomial_law_matches_scipy() -> None:
    from scipy.stats import betabinom

    from defectmap.calibrate.drift import betabinom_pmf

    for n, a, b in ((100, 10, 11), (37, 0.5, 3.0), (5, 1, 1)):
        np.testing.assert_allclose(betabinom_pmf(n, a, b), betabinom.pmf(np.arange(n + 1), n, a, b),
                                   rtol=1e-10, atol=1e-15)


def test_collecting_and_bad_settings() -> None:
    val = np.linspace(0, 1, 21)
    result = drift_test(val, 1.0, [0.1, 0.9], window=50)
    assert result.status == "collecting" and not result.alarm and result.n_parts == 2
    assert result.n_above == 1 and result.reference_score == pytest.approx(0.5)
    assert result.expected_share == pytest.approx(10 / 21)
    with pytest.raises(CalibrationError):
        drift_test(val, 1.0, [], window=5)
    with pytest.raises(CalibrationError):
        drift_test([1.0], 1.0, [])
