"""Threshold-dependent segmentation metrics of MVTec AD 2: SegF1 at a validation threshold.

MVTec AD 2 scores the binarised maps of the private test sets on its server; its public
upload checker (``check_and_prepare_data_for_upload.py`` in ``MVTecAD2_public_code_utils``)
names the baseline threshold rule ``np.mean(anomaly_scores_val) + 3 *
np.std(anomaly_scores_val)``: the mean plus three (population) standard deviations of every
pixel score of the defect-free validation images. :func:`validation_threshold` computes it
exactly in float64 (two passes, ``math.fsum``-accurate sums); :func:`seg_f1` pools the
pixels of all test images (good ones included) and scores ``map >= threshold`` as anomalous,
the convention of this package.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from defectmap.metrics._input import (
    MapsLike,
    MasksLike,
    MetricInputError,
    as_map_list,
    as_mask_list,
    check_finite,
)

__all__ = ["seg_f1", "validation_threshold"]


def validation_threshold(maps: MapsLike, n_std: float = 3.0) -> float:
    """Mean + ``n_std`` population standard deviations of all pixel scores of ``maps``.

    Parameters
    ----------
    maps : (N, H, W) array or sequence of 2-D arrays: anomaly maps of defect-free
        validation images (never test images).
    n_std : float, default 3.0
        Number of standard deviations (the MVTec AD 2 baseline uses 3).

    Returns
    -------
    float
        ``mean + n_std * std`` over every pixel of every map, in float64.

    Examples
    --------
    >>> validation_threshold([np.array([[0.0, 1.0], [2.0, 3.0]])], n_std=1.0)
    2.618033988749895
    """
    map_list = as_map_list(maps)
    n = 0
    partial = []
    for i, m in enumerate(map_list):
        check_finite(m, i)
        n += m.size
        partial.append(float(np.sum(m, dtype=np.float64)))
    mean = math.fsum(partial) / n
    squares = [float(np.sum(np.square(np.asarray(m, dtype=np.float64) - mean))) for m in map_list]
    std = math.sqrt(math.fsum(squares) / n)
    return mean + float(n_std) * std


def seg_f1(maps: MapsLike, masks: MasksLike, threshold: float) -> dict[str, Any]:
    """Pixel F1 of ``map >= threshold`` against the masks, pooled over every image.

    Parameters
    ----------
    maps : (N, H, W) array or sequence of 2-D arrays
    masks : same layout; nonzero = anomalous; a ``None`` entry is an all-normal mask
    threshold : the binarisation threshold (e.g. :func:`validation_threshold`)

    Returns
    -------
    dict
        ``seg_f1`` (``2 TP / (2 TP + FP + FN)``; NaN when there is neither a predicted nor a
        true anomalous pixel), ``precision`` and ``recall`` (NaN when undefined),
        ``threshold``, and the integer pixel counts ``tp``, ``fp``, ``fn``.

    Examples
    --------
    >>> r = seg_f1([np.array([[0.1, 0.9], [0.8, 0.2]])], [np.array([[0, 1], [0, 0]])], 0.5)
    >>> r["seg_f1"], r["precision"], r["recall"]
    (0.6666666666666666, 0.5, 1.0)
    """
    map_list = as_map_list(maps)
    mask_list = as_mask_list(masks, map_list)
    t = float(threshold)
    if not math.isfinite(t):
        raise MetricInputError(f"threshold must be finite, got {threshold}")
    tp = fp = fn = 0
    for i, (m, k) in enumerate(zip(map_list, mask_list, strict=True)):
        check_finite(m, i)
        pred = np.asarray(m, dtype=np.float64) >= t
        if k is None:
            fp += int(np.count_nonzero(pred))
            continue
        true = np.asarray(k) != 0
        tp += int(np.count_nonzero(pred & true))
        fp += int(np.count_nonzero(pred & ~true))
        fn += int(np.count_nonzero(~pred & true))
    denominator = 2 * tp + fp + fn
    return {
        "seg_f1": 2 * tp / denominator if denominator else math.nan,
        "precision": tp / (tp + fp) if tp + fp else math.nan,
        "recall": tp / (tp + fn) if tp + fn else math.nan,
        "threshold": t,
        "tp": tp,
        "fp": fp,
        "fn": fn,
    }
