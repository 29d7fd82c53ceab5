"""Cross-fitted calibration: every good training image fits the model and calibrates it.

**Scheme.** The ``n`` good training images are split at random (``random_state``) into
``K`` folds of ``m = floor(n / K)`` images; the ``n - K m`` left over (fewer than ``K``)
fit every model but are not scored. Fold model ``k`` is fitted on every image outside fold
``k`` and scores the images of fold ``k``: each of the ``n_cal = K m`` scored images gets an
*out-of-fold* (OOF) score ``R_i`` and an OOF map from a model that never saw it. The
*final* model is fitted on all ``n`` images. The image threshold is the conformal order
statistic ``R_(k)``, ``k = ceil((n_cal + 1)(1 - alpha))``, the p-value of a score ``s`` is
``(1 + #{R_i >= s}) / (n_cal + 1)``, and the pixel threshold is the order statistic of the
OOF map pixels (:mod:`defectmap.calibrate.conformal`). Unlike a validation split, no good
image is withheld from the final model, and ``alpha = 0.01`` (99 scores needed) is reachable
for every MVTec AD category with at least 100 training images (all but toothbrush, 60).

**The guarantee that is proven.** Let the training images and a new good image ``X`` be
exchangeable and the fitting algorithm treat its images symmetrically. Score ``X`` with the
fold models, ``S_i = s_{-k(i)}(X)``, and form the cross-conformal p-value of Vovk (2015,
"Cross-conformal predictors", Ann. Math. Artif. Intell. 74: 9-28)
``p_cv(X) = (1 + #{i : R_i >= S_i}) / (n_cal + 1)``. Then, for folds of equal size, ::

    P(p_cv(X) <= a) <= 2 a + min(2 (1 - 1/K) / (n_cal/K + 1), (1 - K/n_cal) / (K + 1))

(Barber, Candes, Ramdas and Tibshirani, "Predictive inference with the jackknife+",
Ann. Statist. 49(1): 486-507, 2021, Theorem 4 for K-fold CV+, which bounds exactly this
event; their residual ``|Y_i - mu(X_i)|`` is replaced by the anomaly score, which their
proof allows). With the attained level ``a = (n_cal + 1 - k) / (n_cal + 1) <= alpha`` this
is :func:`~defectmap.calibrate.conformal.cross_conformal_bound`, stored as
``false_alarm_bound``: for bottle (n_cal = 205, K = 5) at ``alpha = 0.01`` it is
``2 x 0.0097 + 0.0381 = 0.0575``, much weaker than split conformal's ``alpha``. The factor 2
is known to be tight in contrived worst cases only; the same paper shows CV+ close to
``alpha`` for stable algorithms.

**What it does not cover.** Deployed decisions score ``X`` once, with the final model
(``s(X) > R_(k)``, i.e. ``p(X) <= alpha`` with ``p`` built from ``s(X)``), not with the K
fold models, so the theorem does not apply to them as such. It carries over when adding
training images can only lower a new image's score (``s(X) <= S_i`` for every ``i``, hence
``p(X) >= p_cv(X)``): exact nearest-neighbour scoring against *all* training patches does
this. PatchCore's coreset and re-weighting and PaDiM's re-estimated Gaussians do it only
approximately: the final model, fitted on more images, typically scores a new good image
slightly lower than the fold models do, which makes the threshold conservative, but
nothing bounds it in general. The false-alarm rates measured on test good images are in
``benchmarks/calibration.py``; the statistical tests check the bound on exchangeable data.

**Cost.** Detectors with the shared-feature hooks (``extract_features``, ``fit_features``,
``predict_features``; every built-in detector) run the backbone once over the ``n`` images;
the fold models are then fitted and score their folds from those stored features, so
calibration costs the K smaller memory-bank fits (or statistics) and no extra backbone
pass. Other detectors go through ``fit`` and ``predict`` (K extra full fits).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, cast, runtime_checkable

import numpy as np
from numpy.typing import NDArray

from defectmap.calibrate.conformal import CalibrationError
from defectmap.calibrate.pixels import PIXEL_FPR_GRID, PixelTail
from defectmap.constants import DEFAULT_FOLDS
from defectmap.prediction import Prediction
from defectmap.progress import ProgressCallback

__all__ = ["CrossFit", "FeatureScorer", "Scorer", "assign_folds", "cross_fit"]

class Scorer(Protocol):
    """What cross-fitting needs of a detector: ``fit`` and ``predict``."""

    def fit(self, images: Sequence[Any], progress: ProgressCallback | None = None) -> Any: ...

    def predict(self, images: Sequence[Any], batch_size: int = 1,
                progress: ProgressCallback | None = None) -> Prediction: ...


@runtime_checkable
class FeatureScorer(Protocol):
    """Optional hooks: extract features once, fit and score any subset of them."""

    def extract_features(self, images: Sequence[Any],
                         progress: ProgressCallback | None = None) -> Any: ...

    def fit_features(self, features: Any, indices: Sequence[int] | NDArray[np.int64],
                     progress: ProgressCallback | None = None) -> Any: ...

    def predict_features(self, features: Any, indices: Sequence[int] | NDArray[np.int64],
                         batch_size: int = 1,
                         progress: ProgressCallback | None = None) -> Prediction: ...


@dataclass
class CrossFit:
    """The result of :func:`cross_fit`.

    Attributes
    ----------
    detector : the final model, fitted on all images.
    folds : (n,) int64, the fold of each image; -1 for the leftovers that fit every model.
    scores : (n_cal,) float64 OOF scores, in the order of the scored images.
    pixels : the OOF map pixels, summarised (finished); None when ``with_maps`` is False.
    shared_features : whether the fold models reused one feature extraction.
    fit_seconds : backbone extraction plus the final model's fit.
    calibrate_seconds : the K fold fits and the OOF scoring.
    """

    detector: Any
    folds: NDArray[np.int64]
    scores: NDArray[np.float64]
    pixels: PixelTail | None
    shared_features: bool
    fit_seconds: float
    calibrate_seconds: float

    @property
    def n_folds(self) -> int:
        """K."""
        return int(self.folds.max()) + 1

    @property
    def n_scored(self) -> int:
        """``n_cal``, the number of OOF scores."""
        return int(self.scores.size)


def assign_folds(n: int, n_folds: int = DEFAULT_FOLDS,
                 random_state: int | None = 0) -> NDArray[np.int64]:
    """Random folds of equal size ``floor(n / K)``; the ``n mod K`` left over get -1.

    Parameters
    ----------
    n : number of images.
    n_folds : K >= 2, at most ``n``.
    random_state : seed of ``np.random.default_rng``; the folds depend only on it and ``n``.

    Returns
    -------
    (n,) int64 array of fold numbers in ``0 .. K-1``, or -1.

    Examples
    --------
    >>> folds = assign_folds(12, 5, random_state=0)
    >>> np.bincount(folds + 1).tolist()  # two left over (-1), then 2 per fold
    [2, 2, 2, 2, 2, 2]
    """
    n_folds = int(n_folds)
    if n_folds < 2:
        raise CalibrationError(f"cross-fitting needs at least 2 folds, got {n_folds}")
    if n < n_folds:
        raise CalibrationError(
            f"only {n} good training images for {n_folds} folds; use at most {n} folds, "
            "or a separate validation folder")
    size = n // n_folds
    folds = np.full(n, -1, dtype=np.int64)
    order = np.random.default_rng(random_state).permutation(n)
    folds[order[: size * n_folds]] = np.repeat(np.arange(n_folds), size)
    return folds


def _n_pixels(images: Sequence[Any]) -> int | None:
    """Total pixels of the images (= of their native-size maps), from headers; None if unknown."""
    from defectmap.data.io import image_size

    total = 0
    for image in images:
        if isinstance(image, np.ndarray) and image.ndim >= 2:
            total += int(image.shape[0]) * int(image.shape[1])
        elif isinstance(image, str | os.PathLike):
            width, height = image_size(os.fspath(image))
            total += width * height
        else:
            return None
    return total


def cross_fit(
    make_detector: Callable[[], Scorer],
    images: Sequence[Any],
    n_folds: int = DEFAULT_FOLDS,
    random_state: int | None = 0,
    *,
    batch_size: int = 1,
    with_maps: bool = True,
    max_pixel_fpr: float = PIXEL_FPR_GRID[-1],
    shared_features: bool = True,
    progress: ProgressCallback | None = None,
) -> CrossFit:
    """Fit the final model on all images and score every image out of fold.

    Parameters
    ----------
    make_detector : returns a new unfitted detector, the same configuration each call.
    images : the good training images (paths or uint8 arrays), n of them.
    n_folds : K (see :func:`assign_folds`).
    random_state : seed of the folds.
    batch_size : images per forward pass when scoring.
    with_maps : summarise the OOF maps for the pixel threshold (:class:`PixelTail`).
    max_pixel_fpr : the largest pixel rate the summary must answer.
    shared_features : use the detector's feature hooks when it has them (see module docs).
    progress : reports ``(task, done, total)`` of the extraction, fits and scoring.

    Returns
    -------
    CrossFit
    """
    folds = assign_folds(len(images), n_folds, random_state)
    n_folds = int(n_folds)
    scored = np.flatnonzero(folds >= 0)
    final = make_detector()
    use_features = shared_features and isinstance(final, FeatureScorer)
    start = time.perf_counter()
    features: Any = None
    n_pixels: int | None = None  # of the scored images' (native-size) maps
    if use_features:
        hooks = cast(FeatureScorer, final)
        features = hooks.extract_features(images, progress=progress)
        hooks.fit_features(features, np.arange(len(images)))  # no backbone: nothing to show
        n_pixels = int(sum(features.sizes[i][0] * features.sizes[i][1] for i in scored))
    else:
        final.fit(images, progress=progress)
        if with_maps:
            n_pixels = _n_pixels([images[int(i)] for i in scored])
    fit_seconds = time.perf_counter() - start

    pixels = PixelTail(n_pixels, max_pixel_fpr) if with_maps and n_pixels is not None else None
    held_maps: list[np.ndarray] = []  # only when the pixel count was unknown in advance
    scores = np.empty(scored.size, dtype=np.float64)
    position = {int(i): j for j, i in enumerate(scored)}
    task = f"calibrating on {n_folds} folds"
    if progress is not None:
        progress(task, 0, n_folds)
    for k in range(n_folds):
        train = np.flatnonzero(folds != k)
        held = np.flatnonzero(folds == k)
        fold_model = make_detector()
        if use_features:
            fold_hooks = cast(FeatureScorer, fold_model)
            fold_hooks.fit_features(features, train)
            prediction = fold_hooks.predict_features(features, held, batch_size=batch_size)
        else:
            fold_model.fit([images[int(i)] for i in train])
            prediction = fold_model.predict([images[int(i)] for i in held],
                                            batch_size=batch_size)
        if len(prediction.scores) != held.size:
            raise CalibrationError(f"fold {k}: {len(prediction.scores)} scores for "
                                   f"{held.size} images")
        for i, score in zip(held, np.asarray(prediction.scores, dtype=np.float64), strict=True):
            scores[position[int(i)]] = score
        if with_maps:
            for i, anomaly_map in zip(held, prediction.maps, strict=True):
                if pixels is not None:
                    pixels.add(anomaly_map, f"out-of-fold map of image {int(i)}")
                else:
                    held_maps.append(anomaly_map)
        del fold_model, prediction
        if progress is not None:
            progress(task, k + 1, n_folds)
    del features
    if with_maps and pixels is None:  # pixel count unknown up front: summarise at the end
        pixels = PixelTail(sum(int(m.size) for m in held_maps), max_pixel_fpr)
        for anomaly_map in held_maps:
            pixels.add(anomaly_map)
    if pixels is not None:
        pixels.finish()
    return CrossFit(
        detector=final, folds=folds, scores=scores, pixels=pixels,
        shared_features=use_features, fit_seconds=fit_seconds,
        calibrate_seconds=time.perf_counter() - start - fit_seconds,
    )
