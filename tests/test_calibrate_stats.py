"""Statistical tests of the conformal guarantee (issue 6, "Done when").

Over many random validation / held-out splits of good-image scores:

1. the mean false-alarm rate on held-out good images is at most ``alpha`` plus a tolerance
   derived from the sample size, and
2. the conformal p-values of good images are uniform (Kolmogorov-Smirnov does not reject at 1 %).

Tolerance (same derivation for i.i.d. scores and for random splits of a fixed pool).
With ``n`` validation and ``m`` held-out good scores per split, ``k = ceil((n+1)(1-alpha))`` and
``r = n + 1 - k``, the held-out false alarms of one split are the held-out scores above the
k-th smallest validation score. Under exchangeability without ties this count X is negative
hypergeometric (held-out items drawn before the r-th validation item from the top), so
``E[X/m] = r/(n+1)`` (<= alpha) and ``Var(X/m) = r k (n + m + 1) / (m (n+1)^2 (n+2))``; for i.i.d.
continuous scores the same value is ``Var(C) + E[C(1-C)]/m`` with the miscoverage
``C ~ Beta(r, k)``. Splits are independent, so the mean over R splits has standard deviation
``sigma = sqrt(Var(X/m) / R)`` and, by Chebyshev, ``P(|mean - r/(n+1)| >= 10 sigma) <= 1 %``.
The tolerance is ``10 sigma``: a correct implementation fails with probability <= 1 % over
seeds (the seeds are fixed, so the test is deterministic), while an off-by-one threshold (the
(k-1)-th value: ``r + 1`` instead of ``r``) shifts the mean by ``1/(n+1)``, far beyond it.

P-values are discrete: without ties a good image's p-value is uniform on the grid
``{1, ..., n+1}/(n+1)``, so a KS test against the continuous U(0, 1) would reject for large
samples even for a perfect implementation. We test the discrete law exactly: ``p - U/(n+1)``
with an independent ``U ~ U(0, 1)`` is exactly U(0, 1) if and only if ``p`` is uniform on the
grid. Only the first held-out image of each split is used, so the p-values are independent.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from defectmap.calibrate import conformal_rank, fit_calibration


def _far_mean_and_tolerance(n: int, m: int, alpha: float, n_splits: int) -> tuple[float, float]:
    """Expected mean false-alarm rate r/(n+1) and the 10-sigma Chebyshev tolerance."""
    k = conformal_rank(n, alpha)
    r = n + 1 - k
    var_split = r * k * (n + m + 1) / (m * (n + 1) ** 2 * (n + 2))
    return r / (n + 1), 10.0 * math.sqrt(var_split / n_splits)


def _jittered_ks_pvalue(p_values: np.ndarray, n: int, rng: np.random.Generator) -> float:
    """KS p-value of H0: ``p_values`` uniform on {1..n+1}/(n+1) (exact, via uniform jitter)."""
    continuous = p_values - rng.uniform(size=p_values.size) / (n + 1)
    return float(stats.kstest(continuous, "uniform").pvalue)


def _run_splits(pool_or_draw, n: int, m: int, alpha: float, n_splits: int, rng):
    """Fit a calibration per split; return per-split FAR, first held-out p-value, val sets."""
    far, first_p, vals, tests = [], [], [], []
    for _ in range(n_splits):
        val, held_out = pool_or_draw(rng)
        cal = fit_calibration(val, alpha=alpha)
        assert cal.guarantee_holds
        far.append(cal.decide(held_out).mean())
        first_p.append(cal.p_values(held_out[:1])[0])
        vals.append(val)
        tests.append(held_out)
    return np.array(far), np.array(first_p), vals, tests


DISTRIBUTIONS = {
    "lognormal": lambda rng, size: rng.lognormal(0.0, 1.0, size=size),
    "cauchy": lambda rng, size: rng.standard_cauchy(size=size),
    "exponential": lambda rng, size: rng.exponential(size=size),
}


@pytest.mark.parametrize(
    ("dist", "n", "alpha"),
    [("lognormal", 99, 0.01), ("cauchy", 199, 0.05), ("exponential", 39, 0.1)],
)
def test_false_alarm_rate_and_uniform_p_values_iid(dist: str, n: int, alpha: float) -> None:
    m, n_splits = 200, 1000
    rng = np.random.default_rng(20260601)
    draw = DISTRIBUTIONS[dist]
    far, first_p, _, _ = _run_splits(
        lambda g: (draw(g, n), draw(g, m)), n, alpha=alpha, m=m, n_splits=n_splits, rng=rng
    )
    expected, tol = _far_mean_and_tolerance(n, m, alpha, n_splits)
    assert expected <= alpha
    mean_far = float(far.mean())
    assert mean_far <= alpha + tol  # the criterion
    assert abs(mean_far - expected) <= tol  # and not trivially conservative
    assert mean_far >= alpha - 1 / (n + 1) - tol  # lower bound without ties
    assert _jittered_ks_pvalue(first_p, n, rng) > 0.01
    # super-uniform: P(p <= alpha) <= alpha (within the same tolerance)
    assert float(np.mean(first_p <= alpha)) <= alpha + 10 * math.sqrt(alpha / n_splits)



def test_statistical_check_has_power() -> None:
    """The same check fails for the two classic mistakes (n = 99, alpha = 0.01)."""
    n, m, alpha, n_splits = 99, 200, 0.01, 1000
    rng = np.random.default_rng(3)
    draw = DISTRIBUTIONS["lognormal"]
    far, _, vals, tests = _run_splits(
        lambda g: (draw(g, n), draw(g, m)), n, alpha=alpha, m=m, n_splits=n_splits, rng=rng
    )
    expected, tol = _far_mean_and_tolerance(n, m, alpha, n_splits)
    assert abs(float(far.mean()) - expected) <= tol
    k = conformal_rank(n, alpha)
    pairs = list(zip(vals, tests, strict=True))
    off_by_one = np.mean([(t > np.sort(v)[k - 2]).mean() for v, t in pairs])  # (k-1)-th value
    naive = np.mean([(t > np.quantile(v, 1 - alpha)).mean() for v, t in pairs])  # no +1
    assert off_by_one > alpha + tol
    assert naive > alpha + tol


def test_p_values_of_defects_are_not_uniform() -> None:
    """The KS check has power: shifted (defective) scores get small p-values and are rejected."""
    n, n_splits = 99, 300
    rng = np.random.default_rng(7)
    p = [fit_calibration(rng.normal(size=n), alpha=0.05).p_values(rng.normal(1.0, size=1))[0]
         for _ in range(n_splits)]
    assert _jittered_ks_pvalue(np.array(p), n, rng) < 1e-6


def test_guarantee_with_a_real_detector_on_synthetic_data(synthetic_root) -> None:
    """PatchCore scores of good synthetic images, computed once and re-split 2000 times."""
    from defectmap.data.mvtec import load_category
    from defectmap.detectors import create_detector

    data = load_category(synthetic_root, "synthetic")
    train_good = [s.path for s in data.train if s.label == 0]
    test_good = [s.path for s in data.test if s.label == 0]
    n_fit = 8
    detector = create_detector("patchcore", input_size=64, coreset_ratio=0.25)
    detector.fit(train_good[:n_fit])
    # good images the detector never saw: exchangeable with each other
    pool = detector.predict(train_good[n_fit:] + test_good).scores.astype(np.float64)
    assert pool.size >= 24 and np.unique(pool).size == pool.size  # no ties

    alpha = 0.05
    n = 19  # the minimum for alpha = 0.05: threshold = largest validation score
    m = pool.size - n
    n_splits = 2000

    def resplit(g: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        order = g.permutation(pool.size)
        return pool[order[:n]], pool[order[n:]]

    rng = np.random.default_rng(11)
    far, first_p, _, _ = _run_splits(resplit, n, m=m, alpha=alpha, n_splits=n_splits, rng=rng)
    expected, tol = _far_mean_and_tolerance(n, m, alpha, n_splits)
    assert expected == pytest.approx(1 / 20)
    assert float(far.mean()) <= alpha + tol
    assert abs(float(far.mean()) - expected) <= tol
    assert _jittered_ks_pvalue(first_p, n, rng) > 0.01


# ----------------------------------------------------------------------------- cross-fitting
#
# The same re-split check for cross-fitted thresholds (defectmap.calibrate.crossfit), through
# the real code path (assign_folds, cross_fit, fit_calibration(method="cross_fit")), with
# three small detectors on points in R^2 (an "image" is a point):
#
# * FixedScore ignores its training images. Cross-fitting is then exactly conformal with the
#   n_cal out-of-fold scores: E[false-alarm rate] = r / (n_cal + 1), the split-conformal
#   value, and the two-sided 10-sigma check has the power to catch an off-by-one rank.
# * NearestNeighbour (exact 1-NN distance to every training point, PatchCore without a
#   coreset) and Gaussian (Mahalanobis distance to the fitted mean and covariance, PaDiM in
#   one position) learn: the stated bound (cross_conformal_bound) must hold, and in practice
#   the rate stays at or below r / (n_cal + 1) (the final model saw more images).


class _PointDetector:
    """fit(points) -> self; predict(points) -> Prediction with 1 x 1 maps."""

    def fit(self, images, progress=None):
        self._fit(np.stack(images))
        return self

    def predict(self, images, batch_size=1, progress=None):
        from defectmap.prediction import Prediction

        scores = self._score(np.stack(images))
        return Prediction(scores, [np.full((1, 1), s, np.float32) for s in scores])

    def _fit(self, x: np.ndarray) -> None:
        pass


class FixedScore(_PointDetector):
    def _score(self, x: np.ndarray) -> np.ndarray:
        return np.linalg.norm(x, axis=1)


class NearestNeighbour(_PointDetector):
    def _fit(self, x: np.ndarray) -> None:
        self.bank_ = x

    def _score(self, x: np.ndarray) -> np.ndarray:
        return np.sqrt(((x[:, None, :] - self.bank_[None]) ** 2).sum(-1)).min(1)


class Gaussian(_PointDetector):
    def _fit(self, x: np.ndarray) -> None:
        self.mean_ = x.mean(0)
        self.inv_ = np.linalg.inv(np.cov(x.T) + 1e-6 * np.eye(x.shape[1]))

    def _score(self, x: np.ndarray) -> np.ndarray:
        d = x - self.mean_
        return np.sqrt(np.einsum("ni,ij,nj->n", d, self.inv_, d))


def _cross_fitted_far(detector_class, n: int, m: int, alpha: float, n_splits: int,
                      seed: int, rank_shift: int = 0) -> tuple[np.ndarray, list, np.ndarray]:
    """Per split: false-alarm rate on m fresh good points of the cross-fitted threshold.

    ``rank_shift = -1`` thresholds at the (k-1)-th out-of-fold score: the off-by-one bug.
    Also returns the calibrations and, per split, the first fresh point's cross-conformal
    p-value p_cv (scored by the fold models, as in the theorem).
    """
    from defectmap.calibrate import cross_fit

    rng = np.random.default_rng(seed)
    far, cals, p_cv = [], [], []
    for _ in range(n_splits):
        train = list(rng.normal(size=(n, 2)))
        fresh = rng.normal(size=(m, 2))
        result = cross_fit(detector_class, train, 5, int(rng.integers(2**31)), with_maps=False)
        cal = fit_calibration(result.scores, alpha=alpha, method="cross_fit", n_folds=5)
        assert cal.guarantee_holds
        threshold = cal.val_scores[cal.rank - 1 + rank_shift]
        far.append(float(np.mean(result.detector.predict(list(fresh)).scores > threshold)))
        cals.append(cal)
        if rank_shift == 0 and detector_class is NearestNeighbour:
            p_cv.append(_p_cross_conformal(detector_class, train, result, fresh[0]))
    return np.array(far), cals, np.array(p_cv)


def _p_cross_conformal(detector_class, train, result, x) -> float:
    """Vovk's cross-conformal p-value of x: each OOF score compared with its fold model's."""
    folds = result.folds
    scored = np.flatnonzero(folds >= 0)
    count = 0
    for k in range(int(folds.max()) + 1):
        model = detector_class().fit([train[i] for i in np.flatnonzero(folds != k)])
        s_k = float(model.predict([x]).scores[0])
        fold_scores = result.scores[np.isin(scored, np.flatnonzero(folds == k))]
        count += int(np.sum(fold_scores >= s_k))
    return (1 + count) / (scored.size + 1)


def test_cross_fitted_rate_is_exact_for_a_fixed_score_and_the_check_catches_off_by_one() -> None:
    n, m, alpha, n_splits = 100, 200, 0.01, 1000  # 5 folds of 20: n_cal = 100, k = 100
    far, cals, _ = _cross_fitted_far(FixedScore, n, m, alpha, n_splits, seed=21)
    expected, tol = _far_mean_and_tolerance(100, m, alpha, n_splits)
    assert cals[0].n_val == 100 and cals[0].rank == 100 and expected == pytest.approx(1 / 101)
    assert float(far.mean()) <= expected + tol  # the bound, as for split conformal
    assert abs(float(far.mean()) - expected) <= tol  # and attained
    assert float(far.mean()) <= cals[0].false_alarm_bound  # far below the weak CV+ bound
    shifted, _, _ = _cross_fitted_far(FixedScore, n, m, alpha, n_splits, seed=21,
                                      rank_shift=-1)
    assert float(shifted.mean()) > expected + tol  # the same check fails for the (k-1)-th


@pytest.mark.parametrize("detector_class", [NearestNeighbour, Gaussian])
def test_cross_fitted_rate_respects_the_stated_bound_for_learning_detectors(
    detector_class,
) -> None:
    n, m, alpha, n_splits = 100, 200, 0.05, 400
    far, cals, p_cv = _cross_fitted_far(detector_class, n, m, alpha, n_splits, seed=5)
    bound = cals[0].false_alarm_bound  # 2 x 5/101 + min(2 x 0.8 / 21, 0.95 / 6)
    assert bound == pytest.approx(2 * 5 / 101 + 1.6 / 21)
    expected, tol = _far_mean_and_tolerance(100, m, alpha, n_splits)
    mean_far = float(far.mean())
    assert mean_far <= bound + tol  # the proven bound (Barber et al. 2021, Thm. 4)
    assert mean_far <= expected + tol  # in practice: no worse than split conformal's value
    assert mean_far >= 0.5 * expected  # and not vacuous: the threshold is not the maximum
    if detector_class is NearestNeighbour:
        # the theorem's own quantity: P(p_cv <= alpha) <= bound (one p-value per split)
        rate = float(np.mean(p_cv <= alpha))
        assert rate <= bound + 10 * math.sqrt(bound * (1 - bound) / n_splits)
