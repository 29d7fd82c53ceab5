"""Pixel-level metrics of the MVTec AD protocol: pixel AUROC, PRO curve, AU-PRO, F1-max.

Protocol (Bergmann et al., "The MVTec Anomaly Detection Dataset", IJCV 2021, and the
official evaluation code):

* regions are the 8-connected components of each ground-truth mask (nonzero = anomalous);
* at a threshold ``t`` (anomalous = ``score >= t``), the FPR counts the anomaly-free pixels of
  *all* test images (defect-free images included) scoring ``>= t``; the PRO is the mean over
  all regions of all images of the fraction of the region scoring ``>= t``;
* every distinct score is a threshold (ties collapse to one point) and the curve runs from
  (0, 0) to (1, 1);
* AU-PRO integrates the curve with the trapezoid rule up to ``fpr_limit``, with the PRO
  linearly interpolated at the limit, and divides by ``fpr_limit`` (so it lies in [0, 1]).

Speed and memory: ``PRO(t) = sum of w_p over anomalous pixels p scoring >= t`` with
``w_p = 1 / (n_regions * area(region of p))`` and ``FPR(t) = #normal pixels >= t / n_normal``.
So only the anomalous pixels are sorted with their weights; the normal pixels are copied
once into one array of the maps' own dtype (no float64 copy, no index arrays) and sorted in
place, or for AU-PRO alone only the top ``fpr_limit`` share of them after an O(n) partition.
Counts at each distinct anomalous score then come from ``np.searchsorted``
(see :mod:`defectmap.metrics._core`).
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, replace

import numpy as np
from scipy import ndimage

from defectmap.metrics._core import (
    ThresholdTable,
    auroc_from_table,
    build_table,
    curve_vertices,
    f1_max_from_table,
    trapezoid_to_limit,
)
from defectmap.metrics._input import (
    MapsLike,
    MasksLike,
    MetricInputError,
    as_map_list,
    as_mask_list,
    check_finite,
    check_fpr_limit,
    common_dtype,
)

_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


def label_regions(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """Label the 8-connected anomalous regions of one mask.

    Parameters
    ----------
    mask : (H, W) array
        Nonzero = anomalous.

    Returns
    -------
    labels : (H, W) int32
        0 for normal pixels, ``1..n`` for the regions.
    n : int
        Number of regions.
    """
    arr = np.asarray(mask)
    if arr.ndim != 2:
        raise MetricInputError(f"mask must be 2-D, got shape {arr.shape}")
    labels, n = ndimage.label(arr != 0, structure=_EIGHT_CONNECTED)
    return labels.astype(np.int32, copy=False), int(n)


@dataclass(frozen=True)
class PixelGroup:
    """The pixels of a group of images, prepared for the threshold table.

    Attributes
    ----------
    normals : (K,) array, sorted ascending
        Scores of the anomaly-free pixels: all of them, or only those ``>= floor``.
    n_normal : int
        Number of anomaly-free pixels (all of them).
    anomalous : (P,) array
        Scores of the anomalous pixels, image by image.
    inv_area : (P,) float64
        ``1 / area`` of the region each anomalous pixel belongs to.
    n_regions : int
        Number of ground-truth regions.
    floor : scalar or None
        Lower bound of ``normals`` when only the top share was kept.
    """

    normals: np.ndarray
    n_normal: int
    anomalous: np.ndarray
    inv_area: np.ndarray
    n_regions: int
    floor: float | None = None


def collect_pixels(
    maps: MapsLike,
    masks: MasksLike,
    groups: Sequence[Hashable] | None = None,
    top_ratio: float | None = None,
) -> dict[Hashable, PixelGroup]:
    """Validate maps and masks and gather their pixels, per group of images.

    Parameters
    ----------
    maps : (N, H, W) array or sequence of N 2-D arrays (sizes may differ)
    masks : same layout as ``maps``; nonzero = anomalous; a ``None`` entry = all normal
    groups : sequence of N hashable keys, optional
        Images with the same key are pooled; default: one group ``None``.
    top_ratio : float, optional
        Keep only the normal scores needed for FPRs up to this ratio (single group only).

    Returns
    -------
    dict
        Group key -> :class:`PixelGroup`, in order of first appearance.
    """
    map_list = as_map_list(maps)
    mask_list = as_mask_list(masks, map_list)
    keys: list[Hashable] = [None] * len(map_list) if groups is None else list(groups)
    if len(keys) != len(map_list):
        raise MetricInputError(f"got {len(map_list)} maps but {len(keys)} group keys")
    dtype = common_dtype(map_list)

    # Pass 1: check every map, count the normal pixels of each group to allocate once.
    n_normal: dict[Hashable, int] = {}
    for i, (m, k) in enumerate(zip(map_list, mask_list, strict=True)):
        check_finite(m, i)
        n_anom = 0 if k is None else int(np.count_nonzero(k))
        n_normal[keys[i]] = n_normal.get(keys[i], 0) + m.size - n_anom
    normals = {key: np.empty(n, dtype=dtype) for key, n in n_normal.items()}
    filled = dict.fromkeys(n_normal, 0)
    anomalous: dict[Hashable, list[np.ndarray]] = {key: [] for key in n_normal}
    inv_area: dict[Hashable, list[np.ndarray]] = {key: [] for key in n_normal}
    n_regions = dict.fromkeys(n_normal, 0)

    # Pass 2: copy normal scores into their group's array; keep anomalous ones with weights.
    for i in range(len(map_list)):
        m, k, key = map_list[i], mask_list[i], keys[i]
        start = filled[key]
        is_anom = None if k is None else np.asarray(k) != 0
        if is_anom is None or not is_anom.any():
            normals[key][start : start + m.size] = m.ravel()
            filled[key] = start + m.size
            continue
        normal_scores = m[~is_anom]
        normals[key][start : start + normal_scores.size] = normal_scores
        filled[key] = start + normal_scores.size
        labels, n = label_regions(is_anom)
        areas = np.maximum(np.bincount(labels.ravel()), 1)  # [0] counts normal pixels
        anomalous[key].append(m[is_anom].astype(dtype, copy=False))
        inv_area[key].append((1.0 / areas)[labels[is_anom]])
        n_regions[key] += n

    out: dict[Hashable, PixelGroup] = {}
    for key, arr in normals.items():
        floor = None
        if top_ratio is not None and top_ratio < 1.0:
            if len(normals) != 1:
                raise ValueError("top_ratio needs a single group")
            arr, floor = _top_share(arr, top_ratio)
        else:
            arr.sort()
        out[key] = PixelGroup(
            normals=arr,
            n_normal=n_normal[key],
            anomalous=_concat(anomalous.pop(key), dtype),
            inv_area=_concat(inv_area.pop(key), np.dtype(np.float64)),
            n_regions=n_regions[key],
            floor=floor,
        )
    return out


def _concat(parts: list[np.ndarray], dtype: np.dtype) -> np.ndarray:
    return np.concatenate(parts) if parts else np.zeros(0, dtype=dtype)


def _top_share(values: np.ndarray, ratio: float) -> tuple[np.ndarray, float | None]:
    """The sorted scores ``>= v`` where more than ``ratio * n`` scores are ``>= v``.

    Thresholds at or above ``v`` give every curve point with FPR <= ratio plus at least one
    beyond it, which is all the trapezoid up to the limit needs. ``values`` is reordered.
    """
    n = values.size
    n_top = min(n, math.floor(ratio * n) + 2)  # +2: one point beyond, plus rounding slack
    if n_top >= n:
        values.sort()
        return values, None
    values.partition(n - n_top)  # O(n): the n_top largest end up at the back
    floor = values[n - n_top]
    top = values[values >= floor]  # also takes ties of the floor from the front part
    top.sort()
    return top, floor.item()


def table_for(groups: Sequence[PixelGroup], weighted: bool) -> ThresholdTable:
    """Threshold table over the union of ``groups`` (PRO weights when ``weighted``)."""
    n_normal = sum(g.n_normal for g in groups)
    n_regions = sum(g.n_regions for g in groups)
    anomalous = np.concatenate([g.anomalous for g in groups])
    if anomalous.size == 0:
        raise MetricInputError("the masks have no anomalous pixel: the metric is undefined")
    if n_normal == 0:
        raise MetricInputError("the masks have no normal pixel: the metric is undefined")
    floors = [g.floor for g in groups]
    if any(f is not None for f in floors) and len(groups) != 1:
        raise ValueError("a partial group cannot be pooled")
    weights = np.concatenate([g.inv_area for g in groups]) if weighted else None
    table = build_table([g.normals for g in groups], n_normal, anomalous, weights, floors[0])
    if weighted:
        table = replace(table, weight_ge=table.weight_ge / n_regions)
    return table


def pro_curve_from_table(table: ThresholdTable) -> tuple[np.ndarray, np.ndarray]:
    """The PRO curve's vertices (FPR, PRO); ends at (1, 1) when the table is complete."""
    fpr, pro = curve_vertices(table)
    if table.complete:
        fpr, pro = np.append(fpr, 1.0), np.append(pro, 1.0)
    return fpr, pro


def aupro_from_table(table: ThresholdTable, fpr_limit: float) -> float:
    """AU-PRO up to ``fpr_limit``, normalised by it."""
    fpr, pro = pro_curve_from_table(table)
    return trapezoid_to_limit(fpr, pro, fpr_limit)


def pixel_auroc(maps: MapsLike, masks: MasksLike) -> float:
    """Pixel-level AUROC over all pixels of all images.

    Exactly the Mann-Whitney statistic (ties count one half), equal to
    ``sklearn.metrics.roc_auc_score(masks.ravel() != 0, maps.ravel())``.

    Parameters
    ----------
    maps : (N, H, W) array or sequence of N 2-D arrays
        Anomaly maps, higher = more anomalous; NaN/inf raise :class:`MetricInputError`.
    masks : same layout as ``maps``
        Ground truth, nonzero = anomalous; a ``None`` entry is an all-normal mask.

    Returns
    -------
    float
        In [0, 1]. Raises :class:`MetricInputError` when no pixel (or every pixel) is
        anomalous.
    """
    (group,) = collect_pixels(maps, masks).values()
    return auroc_from_table(table_for([group], weighted=False))


def pro_curve(maps: MapsLike, masks: MasksLike) -> tuple[np.ndarray, np.ndarray]:
    """The per-region overlap (PRO) curve over every distinct threshold.

    Parameters
    ----------
    maps, masks : as in :func:`pixel_auroc`

    Returns
    -------
    fpr, pro : (M,) float64 arrays
        Vertices from (0, 0) to (1, 1), FPR non-decreasing. Points of the curve taken at
        every distinct score that fall inside a horizontal run (thresholds that add only
        normal pixels) are merged into the run's ends; the polyline, and so any trapezoid
        area, is the same.
    """
    (group,) = collect_pixels(maps, masks).values()
    return pro_curve_from_table(table_for([group], weighted=True))


def aupro(maps: MapsLike, masks: MasksLike, fpr_limit: float = 0.3) -> float:
    """Normalised area under the PRO curve up to ``fpr_limit`` (MVTec AD's AU-PRO).

    Parameters
    ----------
    maps, masks : as in :func:`pixel_auroc`
    fpr_limit : float, default 0.3
        Integration limit in (0, 1].

    Returns
    -------
    float
        Area up to ``fpr_limit`` (PRO interpolated at the limit) divided by ``fpr_limit``;
        in [0, 1]. Matches the official MVTec AD evaluation code.
    """
    limit = check_fpr_limit(fpr_limit)
    (group,) = collect_pixels(maps, masks, top_ratio=limit).values()
    return aupro_from_table(table_for([group], weighted=True), limit)


def pixel_f1_max(maps: MapsLike, masks: MasksLike) -> tuple[float, float]:
    """Best pixel-level F1 over all thresholds (``score >= threshold`` = anomalous).

    Returns
    -------
    f1 : float
        The maximum F1 over every distinct score used as threshold.
    threshold : float
        The highest threshold reaching it.
    """
    (group,) = collect_pixels(maps, masks).values()
    return f1_max_from_table(table_for([group], weighted=False))


def pixel_metrics_from_table(table: ThresholdTable, fpr_limit: float) -> dict[str, float]:
    """``pixel_auroc``, ``aupro``, ``pixel_f1_max`` and ``pixel_f1_threshold`` of a table."""
    f1, threshold = f1_max_from_table(table)
    return {
        "pixel_auroc": auroc_from_table(table),
        "aupro": aupro_from_table(table, fpr_limit),
        "pixel_f1_max": f1,
        "pixel_f1_threshold": threshold,
    }


def pixel_metrics(maps: MapsLike, masks: MasksLike, fpr_limit: float = 0.3) -> dict[str, float]:
    """All pixel metrics from one pass over the pixels (one sort of the normal scores).

    Parameters
    ----------
    maps, masks : as in :func:`pixel_auroc`
    fpr_limit : float, default 0.3

    Returns
    -------
    dict
        ``pixel_auroc``, ``aupro`` (at ``fpr_limit``), ``pixel_f1_max`` and
        ``pixel_f1_threshold``; the same values as the separate functions.
    """
    limit = check_fpr_limit(fpr_limit)
    (group,) = collect_pixels(maps, masks).values()
    return pixel_metrics_from_table(table_for([group], weighted=True), limit)


def region_detection_rate(
    pred_masks: MapsLike, gt_masks: MasksLike, min_overlap: float = 0.3
) -> float:
    """Fraction of ground-truth regions covered at least ``min_overlap`` by the prediction.

    Parameters
    ----------
    pred_masks : (N, H, W) array or sequence of 2-D arrays
        Predicted anomalous pixels (nonzero), e.g. ``map >= threshold``.
    gt_masks : same layout; nonzero = anomalous; ``None`` = all normal
    min_overlap : float, default 0.3
        A region counts as detected when ``|region & pred| >= min_overlap * |region|``.

    Returns
    -------
    float
        Detected regions / all 8-connected ground-truth regions; NaN when there is no
        ground-truth region at all (the rate is undefined).
    """
    if not 0.0 < min_overlap <= 1.0:
        raise MetricInputError(f"min_overlap must be in (0, 1], got {min_overlap}")
    preds = as_map_list(pred_masks, "pred_masks")
    gts = as_mask_list(gt_masks, preds, "gt_masks")
    n_regions = n_detected = 0
    for pred, gt in zip(preds, gts, strict=True):
        if gt is None:
            continue
        labels, n = label_regions(gt)
        if n == 0:
            continue
        areas = np.bincount(labels.ravel(), minlength=n + 1)[1:]
        hits = np.bincount(labels[pred != 0], minlength=n + 1)[1:]
        n_regions += n
        n_detected += int(np.count_nonzero(hits >= min_overlap * areas))
    return n_detected / n_regions if n_regions else math.nan


def pixel_iou(pred_masks: MapsLike, gt_masks: MasksLike) -> float:
    """Intersection over union of predicted and true anomalous pixels, pooled over images.

    Returns
    -------
    float
        ``sum |pred & gt| / sum |pred | gt|``; NaN when both are empty everywhere.
    """
    preds = as_map_list(pred_masks, "pred_masks")
    gts = as_mask_list(gt_masks, preds, "gt_masks")
    inter = union = 0
    for pred, gt in zip(preds, gts, strict=True):
        p = pred != 0
        if gt is None:
            union += int(np.count_nonzero(p))
            continue
        g = gt != 0
        inter += int(np.count_nonzero(p & g))
        union += int(np.count_nonzero(p | g))
    return inter / union if union else math.nan
