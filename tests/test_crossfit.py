"""Cross-fitting mechanics: folds, the streamed pixel threshold, out-of-fold scores."""

from __future__ import annotations

import numpy as np
import pytest

from defectmap.calibrate import (
    CalibrationError,
    PixelTail,
    assign_folds,
    cross_conformal_bound,
    cross_fit,
    fit_calibration,
)
from defectmap.calibrate.pixels import tail_index
from defectmap.prediction import Prediction


def test_folds_are_equal_random_and_reproducible() -> None:
    folds = assign_folds(209, 5, random_state=0)
    assert np.bincount(folds + 1).tolist() == [4, 41, 41, 41, 41, 41]  # 4 left over
    assert np.array_equal(folds, assign_folds(209, 5, random_state=0))
    assert not np.array_equal(folds, assign_folds(209, 5, random_state=1))
    assert not np.array_equal(folds[:41], np.zeros(41))  # shuffled, not in blocks
    assert np.bincount(assign_folds(10, 10, 3)).tolist() == [1] * 10  # leave-one-out
    with pytest.raises(CalibrationError, match="only 4 good training images for 5 folds"):
        assign_folds(4, 5)
    with pytest.raises(CalibrationError, match="at least 2 folds"):
        assign_folds(10, 1)


def test_cross_conformal_bound_closed_form() -> None:
    # n = 200, K = 5: min(2 x 0.8 / 41, 0.975 / 6) = 0.039024...
    assert cross_conformal_bound(200, 5, 0.01) == pytest.approx(0.02 + 1.6 / 41)
    # K = 2, n = 1000: 2 x 0.5 / 501 < (1 - 2/1000) / 3
    assert cross_conformal_bound(1000, 2, 0.0) == pytest.approx(1 / 501)
    # n = 20, K = 5: the second term, (1 - 5/20) / 6 = 0.125 < 1.6 / 5
    assert cross_conformal_bound(20, 5, 0.4) == pytest.approx(0.925)
    assert cross_conformal_bound(20, 5, 0.45) == 1.0  # capped


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_streamed_pixel_threshold_is_the_exact_order_statistic(dtype) -> None:
    rng = np.random.default_rng(4)
    maps = [np.round(rng.gamma(2.0, size=rng.integers(5, 40, size=2)), 2).astype(dtype)
            for _ in range(60)]  # ties, and maps of different sizes
    pooled = np.sort(np.concatenate([m.ravel() for m in maps]))
    n = pooled.size
    tail = PixelTail(n, max_fpr=0.05)
    for m in maps:
        tail.add(m)
    tail.finish()
    for fpr in (0.0001, 0.001, 0.01, 0.0123, 0.05):
        k = int(np.ceil(n * (1 - fpr)))
        assert tail.threshold(fpr) == float(pooled[max(k, 1) - 1]), fpr
        assert tail_index(n, fpr) == n - max(k, 1) + 1
    assert tail.maximum == float(pooled[-1])
    assert tail._n_buffered <= 2 * tail._keep + max(m.size for m in maps)  # bounded memory
    with pytest.raises(CalibrationError, match="outside"):
        tail.threshold(0.2)


def test_pixel_tail_refuses_a_wrong_pixel_count() -> None:
    tail = PixelTail(10)
    with pytest.raises(CalibrationError, match="more than the announced 10"):
        tail.add(np.zeros((4, 4)))
    short = PixelTail(20)
    short.add(np.zeros((2, 5)))
    with pytest.raises(CalibrationError, match="10 pixels, 20 were announced"):
        short.finish()
    with pytest.raises(CalibrationError, match="NaN"):
        PixelTail(4).add(np.array([[1.0, np.nan], [0.0, 1.0]]))


class Mean:
    """score = distance to the training mean; map = the per-pixel |x - mean| of 2 x 3 images."""

    fits: list[int] = []

    def fit(self, images, progress=None):
        self.mean_ = np.mean(images, axis=0)
        Mean.fits.append(len(images))
        return self

    def predict(self, images, batch_size=1, progress=None):
        maps = [np.abs(np.asarray(x, np.float32) - self.mean_).astype(np.float32)
                for x in images]
        return Prediction(np.array([m.sum() for m in maps], np.float32), maps)


def test_cross_fit_out_of_fold_scores_and_maps() -> None:
    rng = np.random.default_rng(0)
    images = [rng.normal(size=(2, 3)) for _ in range(13)]
    Mean.fits = []
    result = cross_fit(Mean, images, n_folds=4, random_state=7, max_pixel_fpr=0.5)
    assert Mean.fits == [13, 10, 10, 10, 10]  # final, then each fold without its 3 images
    assert result.n_folds == 4 and result.n_scored == 12 and not result.shared_features
    folds = result.folds
    expected, maps = [], []
    for i in np.flatnonzero(folds >= 0):  # OOF: the mean of every image outside i's fold
        mean = np.mean([images[j] for j in np.flatnonzero(folds != folds[i])], axis=0)
        maps.append(np.abs(images[i].astype(np.float32) - mean).astype(np.float32))
        expected.append(maps[-1].sum())
    assert np.allclose(result.scores, expected, rtol=1e-6)
    pooled = np.sort(np.concatenate([m.ravel() for m in maps]))
    assert result.pixels is not None and result.pixels.n_pixels == 72
    assert result.pixels.threshold(0.25) == pytest.approx(pooled[int(np.ceil(72 * 0.75)) - 1])
    final_mean = np.mean(images, axis=0)
    assert np.array_equal(result.detector.mean_, final_mean)  # fitted on all 13
    cal = fit_calibration(result.scores, alpha=0.25, method="cross_fit", n_folds=4,
                          pixels=result.pixels, pixel_fpr=0.25)
    assert cal.n_val == 12 and cal.rank == 10 and cal.guarantee_holds
    assert cal.false_alarm_bound == pytest.approx(cross_conformal_bound(12, 4, 3 / 13))
    assert "cross-conformal, 4 folds, 12 out-of-fold scores" in cal.guarantee


def test_cross_fit_with_feature_hooks_equals_the_generic_path() -> None:
    class MeanWithHooks(Mean):
        extracted: list[int] = []

        def extract_features(self, images, progress=None):
            MeanWithHooks.extracted.append(len(images))

            class Features(list):
                sizes = [(2, 3)] * len(images)

            return Features(images)

        def fit_features(self, features, indices, progress=None):
            return self.fit([features[i] for i in indices])

        def predict_features(self, features, indices, batch_size=1, progress=None):
            return self.predict([features[i] for i in indices])

    rng = np.random.default_rng(1)
    images = [rng.normal(size=(2, 3)) for _ in range(10)]
    generic = cross_fit(Mean, images, 5, random_state=2)
    shared = cross_fit(MeanWithHooks, images, 5, random_state=2)
    assert shared.shared_features and MeanWithHooks.extracted == [10]  # extracted once
    assert np.array_equal(shared.scores, generic.scores)
    assert shared.pixels is not None and generic.pixels is not None
    assert shared.pixels.threshold(0.01) == generic.pixels.threshold(0.01)
    without = cross_fit(MeanWithHooks, images, 5, random_state=2, shared_features=False)
    assert not without.shared_features and np.array_equal(without.scores, generic.scores)
