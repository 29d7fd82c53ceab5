"""The shared engine of every ranking metric: a table of counts at each distinct threshold.

All metrics of this package reduce to the same question, asked at every distinct score
``t`` (predicted anomalous = ``score >= t``): how many positives (anomalous images or
pixels) and how many negatives score at or above ``t``? :func:`build_table` answers it
without ever sorting the (many) negatives together with the (few) positives:

* the negatives are sorted on their own (``np.sort`` of a float copy, no index arrays);
* the positives are sorted with their weights (per-pixel ``1 / region area`` for PRO);
* the negative counts at each distinct positive score come from ``np.searchsorted``.

This is exact: the count of negatives at or above ``t`` is a step function that only needs
evaluating at the distinct positive scores; everything between them is a horizontal run of
the PRO / ROC curve, whose end points are known from the same counts (see
:func:`curve_vertices`). Counts are int64 and weights are summed in float64.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from defectmap.metrics._input import MetricInputError


@dataclass(frozen=True)
class ThresholdTable:
    """Counts at each distinct threshold, highest threshold first.

    Attributes
    ----------
    thresholds : (T,) array
        Distinct positive scores in descending order, plus the lower bound ``floor`` when
        one was given (then no threshold below it is listed).
    pos_ge : (T,) int64
        Number of positives scoring ``>= thresholds[j]``.
    neg_ge, neg_gt : (T,) int64
        Number of negatives scoring ``>= thresholds[j]`` and ``> thresholds[j]``.
    weight_ge : (T,) float64
        Sum of the weights of the positives scoring ``>= thresholds[j]``.
    n_pos, n_neg : int
        Total number of positives and negatives (all of them, not only those listed).
    complete : bool
        True when every positive is listed (no ``floor``): ranking statistics such as the
        AUROC are only valid then.
    """

    thresholds: np.ndarray
    pos_ge: np.ndarray
    neg_ge: np.ndarray
    neg_gt: np.ndarray
    weight_ge: np.ndarray
    n_pos: int
    n_neg: int
    complete: bool


def build_table(
    neg_sorted: Sequence[np.ndarray],
    n_neg: int,
    pos: np.ndarray,
    pos_weight: np.ndarray | None = None,
    floor: float | None = None,
) -> ThresholdTable:
    """Count positives and negatives at every distinct positive score.

    Parameters
    ----------
    neg_sorted : sequence of (K_i,) arrays, each sorted ascending
        Groups of negative scores. Together they must hold every negative score ``>= floor``
        (all negatives when ``floor`` is None); counts are summed over the groups.
    n_neg : int
        Total number of negatives (including those below ``floor`` not held in the groups).
    pos : (P,) array
        Positive scores, in any order, same dtype family as the negatives.
    pos_weight : (P,) float64 array, optional
        Weight of each positive (default 1).
    floor : float, optional
        Only thresholds ``>= floor`` are listed, and ``floor`` itself is always one.

    Returns
    -------
    ThresholdTable
    """
    order = np.argsort(pos)  # ties are summed below, so stability is not needed
    values = pos[order]
    weights = (
        np.ones(values.size, dtype=np.float64)
        if pos_weight is None
        else np.asarray(pos_weight, dtype=np.float64)[order]
    )
    del order
    if values.size:
        starts = np.flatnonzero(np.concatenate(([True], values[1:] != values[:-1])))
        distinct = values[starts]
        counts = np.diff(np.append(starts, values.size)).astype(np.int64)
        wsum = np.add.reduceat(weights, starts)
    else:
        distinct = values
        counts = np.zeros(0, dtype=np.int64)
        wsum = np.zeros(0, dtype=np.float64)
    del values, weights

    # Positives below the floor are summarised by what lies above; drop them, then make
    # sure the floor itself is a threshold (with zero positives of its own if need be).
    if floor is not None:
        first = int(np.searchsorted(distinct, floor, side="left"))
        distinct, counts, wsum = distinct[first:], counts[first:], wsum[first:]
        if distinct.size == 0 or distinct[0] != floor:
            distinct = np.concatenate((np.asarray([floor], dtype=distinct.dtype), distinct))
            counts = np.concatenate(([0], counts))
            wsum = np.concatenate(([0.0], wsum))

    n_held = 0
    neg_lt = np.zeros(distinct.size, dtype=np.int64)
    neg_le = np.zeros(distinct.size, dtype=np.int64)
    for group in neg_sorted:
        n_held += group.size
        neg_lt += np.searchsorted(group, distinct, side="left")
        neg_le += np.searchsorted(group, distinct, side="right")

    # Reverse to descending thresholds; cumulative sums then run from the top.
    return ThresholdTable(
        thresholds=distinct[::-1],
        pos_ge=np.cumsum(counts[::-1]),
        neg_ge=(n_held - neg_lt)[::-1],
        neg_gt=(n_held - neg_le)[::-1],
        weight_ge=np.cumsum(wsum[::-1]),
        n_pos=int(pos.size),
        n_neg=int(n_neg),
        complete=floor is None,
    )


def auroc_from_table(table: ThresholdTable) -> float:
    """Area under the ROC curve = Mann-Whitney U / (P * N), ties counting one half.

    Computed in exact integer arithmetic: ``2U = sum over positives of (#neg < s) + (#neg <= s)``.
    """
    if not table.complete:
        raise ValueError("the AUROC needs a complete threshold table")
    if table.n_pos == 0 or table.n_neg == 0:
        kind = "anomalous" if table.n_pos == 0 else "normal"
        raise MetricInputError(f"AUROC is undefined: there is no {kind} sample at all")
    counts = np.diff(np.concatenate(([0], table.pos_ge)))
    neg_lt = table.n_neg - table.neg_ge
    neg_le = table.n_neg - table.neg_gt
    twice_u = int(np.dot(counts, neg_lt + neg_le))
    return twice_u / (2.0 * table.n_pos * table.n_neg)


def f1_max_from_table(table: ThresholdTable) -> tuple[float, float]:
    """Best F1 over all thresholds and the (highest) threshold reaching it.

    F1 only drops when the threshold moves down without gaining a positive, so the maximum
    lies at a positive score; the table lists them all.
    """
    if not table.complete:
        raise ValueError("F1-max needs a complete threshold table")
    if table.n_pos == 0:
        raise MetricInputError("F1 is undefined: there is no anomalous sample at all")
    tp = table.pos_ge.astype(np.float64)
    f1 = 2.0 * tp / (tp + table.neg_ge + table.n_pos)
    best = int(np.argmax(f1))
    return float(f1[best]), float(table.thresholds[best])


def curve_vertices(table: ThresholdTable) -> tuple[np.ndarray, np.ndarray]:
    """Vertices of the (FPR, weighted TPR) curve, from (0, 0) on, without the (1, 1) end.

    For each listed threshold ``t`` (descending) two vertices are emitted: the end of the
    horizontal run of negative-only thresholds above ``t``, ``(#neg > t, W(previous))``, and
    the point at ``t`` itself, ``(#neg >= t, W(t))``. Every point of the curve taken at each
    distinct score lies on this polyline (the omitted ones are inside horizontal runs), so
    trapezoid areas are the same. The weighted TPR is clipped to 1 against rounding.
    """
    n_neg = max(table.n_neg, 1)
    w_prev = np.concatenate(([0.0], table.weight_ge[:-1]))
    fpr = np.empty(2 * table.thresholds.size + 1, dtype=np.float64)
    tpr = np.empty_like(fpr)
    fpr[0] = tpr[0] = 0.0
    fpr[1::2] = table.neg_gt / n_neg
    tpr[1::2] = w_prev
    fpr[2::2] = table.neg_ge / n_neg
    tpr[2::2] = table.weight_ge
    np.clip(tpr, None, 1.0, out=tpr)
    # Drop repeated vertices (a run with no negative in it), keeping the first of each.
    keep = np.ones(fpr.size, dtype=bool)
    keep[1:] = (fpr[1:] != fpr[:-1]) | (tpr[1:] != tpr[:-1])
    return fpr[keep], tpr[keep]


def trapezoid_to_limit(fpr: np.ndarray, tpr: np.ndarray, limit: float) -> float:
    """Trapezoid area under ``tpr(fpr)`` for ``fpr <= limit``, divided by ``limit``.

    As in the official MVTec AD code: vertices up to the last one with ``fpr <= limit`` are
    integrated, and the segment crossing ``limit`` adds a trapezoid up to the PRO value
    linearly interpolated at ``limit``. ``fpr`` must be non-decreasing and reach ``limit``.
    """
    end = int(np.searchsorted(fpr, limit, side="right"))  # first vertex beyond the limit
    x, y = fpr[:end], tpr[:end]
    area = float(np.sum(0.5 * (y[1:] + y[:-1]) * (x[1:] - x[:-1])))
    if x[-1] != limit:
        if end >= fpr.size:
            raise ValueError("the curve does not reach the integration limit")
        x0, y0, x1, y1 = fpr[end - 1], tpr[end - 1], fpr[end], tpr[end]
        y_limit = y0 + (y1 - y0) * (limit - x0) / (x1 - x0)
        area += 0.5 * (y_limit + y0) * (limit - x0)
    return area / limit
