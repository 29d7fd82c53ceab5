"""Image-level ranking metrics: AUROC, ROC curve and F1-max from scores and 0/1 labels."""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

from defectmap.metrics._core import ThresholdTable, auroc_from_table, build_table, f1_max_from_table
from defectmap.metrics._input import as_labels, as_map_list, as_scores


def _table(scores: ArrayLike, labels: ArrayLike) -> ThresholdTable:
    s = as_scores(scores)
    y = as_labels(labels, s.size)
    neg = np.sort(s[~y])
    return build_table([neg], neg.size, s[y])


def image_auroc(scores: ArrayLike, labels: ArrayLike) -> float:
    """Area under the ROC curve of image scores.

    Parameters
    ----------
    scores : (N,) array
        Higher = more anomalous; NaN/inf raise :class:`MetricInputError`.
    labels : (N,) array of 0/1 or bool
        1 = anomalous.

    Returns
    -------
    float
        The Mann-Whitney statistic with ties counting one half (equal to
        ``sklearn.metrics.roc_auc_score``). Raises :class:`MetricInputError` when one class
        is absent.

    Examples
    --------
    >>> image_auroc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1])
    0.75
    """
    return auroc_from_table(_table(scores, labels))


def f1_max(scores: ArrayLike, labels: ArrayLike) -> tuple[float, float]:
    """Best F1 over every distinct score used as threshold (``score >= t`` = anomalous).

    Returns
    -------
    f1 : float
    threshold : float
        The highest threshold reaching the best F1.

    Examples
    --------
    >>> f1_max([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1])
    (0.8, 0.35)
    """
    return f1_max_from_table(_table(scores, labels))


def roc_curve(scores: ArrayLike, labels: ArrayLike) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ROC curve at every distinct score, highest threshold first.

    Returns
    -------
    fpr, tpr : (T + 1,) float64
        Starting at (0, 0) for the threshold ``+inf``; all NaN for an absent class.
    thresholds : (T + 1,) float64
        ``inf`` then the distinct scores in descending order. Same values as
        ``sklearn.metrics.roc_curve(labels, scores, drop_intermediate=False)``.
    """
    s = as_scores(scores)
    y = as_labels(labels, s.size)
    n_pos = int(y.sum())
    n_neg = s.size - n_pos
    order = np.argsort(-s, kind="stable")
    s, y = s[order], y[order]
    last = np.flatnonzero(np.append(s[1:] != s[:-1], True))  # last index of each tie run
    tp = np.cumsum(y)[last].astype(np.float64)
    fp = (last + 1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        tpr = np.concatenate(([0.0], tp / n_pos)) if n_pos else np.full(last.size + 1, np.nan)
        fpr = np.concatenate(([0.0], fp / n_neg)) if n_neg else np.full(last.size + 1, np.nan)
    return fpr, tpr, np.concatenate(([np.inf], s[last]))


def image_scores_from_maps(maps: np.ndarray | list[np.ndarray]) -> np.ndarray:
    """Image scores as the maximum of each anomaly map, shape (N,) float64."""
    return np.array([float(m.max()) for m in as_map_list(maps)], dtype=np.float64)
