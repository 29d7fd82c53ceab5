"""AU-sPRO and image AUROC of the MVTec LOCO AD protocol, exact or as the official code does.

Protocol (Bergmann et al., "Beyond Dents and Scratches", IJCV 2022, and the official
``mvtec_loco_ad_evaluation`` code):

* every ground-truth **mask file is one defect** (no connected-component labelling); a pixel
  is predicted anomalous when ``score > t``;
* the sPRO of a defect at ``t`` is ``min(TP / s, 1)``, with ``TP`` the defect's pixels above
  ``t`` and ``s`` its saturation area (:func:`saturation_area`); the curve's y value is the
  mean sPRO over all defects of all anomalous images of one type, each defect counting
  equally;
* the FPR counts the pixels outside the union of an image's masks; the good images enter
  the FPR of every anomaly type;
* AU-sPRO integrates the (FPR, mean sPRO) curve with the trapezoid rule up to each
  integration limit, the y value linearly interpolated at the limit, divided by the limit;
  ``mean`` is the average over the anomaly types (logical and structural).

Two modes:

``"exact"`` (default)
    every distinct score is a threshold, like :func:`defectmap.metrics.aupro`. The saturated
    sum ``min(TP, s) / s`` equals the sum of weights ``1 / s`` over the ``s`` highest scores of
    the defect (ties included: a threshold always takes all tied pixels), so the curve comes
    from the same threshold table as AU-PRO, exactly. The image AUROC is the Mann-Whitney
    statistic (ties count one half).
``"official"``
    reproduces the official code's adaptive thresholds (``MetricsAggregator.run``): start
    from ``max + 1e-6``, 48 equally spaced order statistics of all pooled scores and
    ``min - 1e-6`` (the epsilon added in the maps' dtype, as NumPy 2 does), then at most 10
    rounds that insert evenly spaced thresholds into each segment whose (sPRO, FPR) step is
    longer than ``curve_max_distance`` and whose triangle area ``0.5 * dsPRO * dFPR`` exceeds
    ``0.25 * curve_max_distance**2`` (a jump along one axis is never refined); the 100
    longest segments per round, at least 20 new thresholds per round, shared by length.
    The image ROC adds a point at the *first* image of each run of
    tied scores, which is what the official ``compute_classification_roc`` does. The same
    operations run in the same order on the same float64 values, so the thresholds are the
    official ones bit for bit. Two documented differences: above 10 M pooled pixels the
    official code picks its 48 start points from an *unseeded* random subsample
    (``np.random.choice``, without replacement, ``floor(10 M / n_images)`` scores per image);
    here the subsample comes from ``np.random.default_rng(random_state)``, so it is
    reproducible but, like the official numbers on real LOCO data, not equal to any one
    official run. And where the official code would stop on an assertion (two start points
    equal because many pixels share one score), the repeated thresholds are dropped instead.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from defectmap.metrics._core import build_table, curve_vertices, trapezoid_to_limit
from defectmap.metrics._input import (
    MapsLike,
    MetricInputError,
    as_map_list,
    check_finite,
    check_fpr_limit,
    common_dtype,
)
from defectmap.metrics.ranking import image_auroc

__all__ = [
    "LOCO_INTEGRATION_LIMITS",
    "GOOD",
    "loco_metrics",
    "official_image_auroc",
    "official_trapezoid",
    "saturation_area",
    "spro_curve",
]

#: Integration limits of the official evaluation (``MAX_FPRS`` in ``evaluate_experiment.py``).
LOCO_INTEGRATION_LIMITS: tuple[float, ...] = (0.01, 0.05, 0.1, 0.3, 1.0)
#: Image type of defect-free images.
GOOD = "good"
#: Pooled scores above which the official start points come from a random subsample.
OFFICIAL_MAX_SAMPLED_SCORES = 10_000_000
_OFFICIAL_N_START = 50  # max + 48 order statistics + min
_OFFICIAL_EPSILON = 1e-6
_OFFICIAL_MAX_STEPS = 10
_OFFICIAL_MIN_QUERIES = 20
_OFFICIAL_MAX_QUERIES = 100
_OFFICIAL_AREA_FACTOR = 0.25  # a segment's triangle area must exceed 0.25 * distance**2

Mode = Literal["exact", "official"]


def saturation_area(defect_area: int, threshold: float, relative: bool) -> int:
    """Pixels of a defect that saturate its sPRO, as the official ``get_saturation_area``.

    Parameters
    ----------
    defect_area : pixels of the defect's mask.
    threshold : a fraction of the area in (0, 1] when ``relative``, else a pixel count.
    relative : whether ``threshold`` is a fraction.

    Returns
    -------
    int
        ``int(threshold * defect_area)`` (truncated, in float64) when relative, else
        ``min(threshold, defect_area)``.

    Examples
    --------
    >>> saturation_area(389, 0.5, True), saturation_area(163, 900, False)
    (194, 163)
    """
    if relative:
        return int(float(threshold) * int(defect_area))
    return int(min(int(threshold), int(defect_area)))


@dataclass(frozen=True)
class _Defect:
    """One mask: its pixels' scores sorted ascending, its saturation area, its image."""

    scores: np.ndarray
    saturation: int
    image: int


@dataclass(frozen=True)
class _Prepared:
    """Maps and masks validated and reduced to sorted score arrays."""

    maps: list[np.ndarray]
    types: list[str]
    dtype: np.dtype
    normals: dict[str, np.ndarray]  # image type -> sorted scores outside the masks
    n_normal: dict[str, int]
    defects: list[_Defect]  # official order: image by image, mask by mask

    @property
    def anomaly_types(self) -> list[str]:
        return sorted(t for t in self.normals if t != GOOD)

    def defects_of(self, kind: str | None) -> list[_Defect]:
        return [d for d in self.defects if kind is None or self.types[d.image] == kind]


def _prepare(
    maps: MapsLike,
    image_types: Sequence[str],
    masks: Sequence[Sequence[np.ndarray]],
    saturation_areas: Sequence[Sequence[int]],
) -> _Prepared:
    map_list = as_map_list(maps)
    n = len(map_list)
    types = [str(t) for t in image_types]
    if len(types) != n or len(masks) != n or len(saturation_areas) != n:
        raise MetricInputError(
            f"got {n} maps but {len(types)} image types, {len(masks)} mask lists and "
            f"{len(saturation_areas)} saturation lists"
        )
    dtype = common_dtype(map_list)
    if dtype.kind != "f":  # integer maps: float64 holds them exactly
        dtype = np.dtype(np.float64)
    # Pass 1: check every map and mask, keep each defect's scores and each image's union;
    # pass 2 copies the normal scores once into one preallocated array per image type.
    defects: list[_Defect] = []
    unions: list[np.ndarray | None] = []
    n_normal: dict[str, int] = {}
    for i, (m, kind, image_masks, sats) in enumerate(
        zip(map_list, types, masks, saturation_areas, strict=True)
    ):
        check_finite(m, i)
        if len(image_masks) != len(sats):
            raise MetricInputError(
                f"image {i}: {len(image_masks)} masks but {len(sats)} saturation areas"
            )
        if kind == GOOD and image_masks:
            raise MetricInputError(f"image {i} is of type 'good' but has {len(image_masks)} masks")
        if kind != GOOD and not image_masks:
            raise MetricInputError(f"image {i} of type {kind!r} has no ground-truth mask")
        union = np.zeros(m.shape, dtype=bool) if image_masks else None
        for j, (k, s) in enumerate(zip(image_masks, sats, strict=True)):
            k = np.asarray(k) != 0
            if k.shape != m.shape:
                raise MetricInputError(
                    f"image {i}: mask {j} has shape {k.shape} but its map has shape {m.shape}"
                )
            if not k.any():
                raise MetricInputError(f"image {i}: mask {j} has no defect pixel")
            if int(s) < 1:
                raise MetricInputError(
                    f"image {i}: mask {j} has saturation area {s}; the sPRO is undefined "
                    f"(a relative saturation threshold times a tiny defect area)"
                )
            assert union is not None
            union |= k
            defects.append(_Defect(np.sort(np.asarray(m, dtype=dtype)[k]), int(s), i))
        unions.append(union)
        inside = 0 if union is None else int(np.count_nonzero(union))
        n_normal[kind] = n_normal.get(kind, 0) + m.size - inside
    normals = {kind: np.empty(n, dtype=dtype) for kind, n in n_normal.items()}
    filled = dict.fromkeys(n_normal, 0)
    for m, kind, union in zip(map_list, types, unions, strict=True):
        values = np.asarray(m, dtype=dtype)
        values = values.ravel() if union is None else values[~union]
        normals[kind][filled[kind]: filled[kind] + values.size] = values
        filled[kind] += values.size
    for arr in normals.values():
        arr.sort()
    n_normal = {kind: int(arr.size) for kind, arr in normals.items()}
    if not any(kind != GOOD for kind in normals):
        raise MetricInputError("no anomalous image: the AU-sPRO is undefined")
    return _Prepared(map_list, types, dtype, normals, n_normal, defects)


def _normal_groups(data: _Prepared, kind: str) -> list[np.ndarray]:
    """Sorted normal scores entering the FPR of anomaly type ``kind``: good + that type."""
    return [data.normals[k] for k in (GOOD, kind) if k in data.normals]


# --------------------------------------------------------------------------- exact mode


def _exact_curve(data: _Prepared, kind: str) -> tuple[np.ndarray, np.ndarray]:
    groups = _normal_groups(data, kind)
    n_normal = sum(g.size for g in groups)
    if n_normal == 0:
        raise MetricInputError(f"{kind}: no defect-free pixel, the FPR is undefined")
    defects = data.defects_of(kind)
    tops, weights = [], []
    for d in defects:
        top = d.scores[d.scores.size - min(d.saturation, d.scores.size):]
        tops.append(top)
        # Each defect weighs 1 / len(defects) in the mean, spread over its s top pixels.
        weights.append(np.full(top.size, 1.0 / (d.saturation * len(defects))))
    table = build_table(groups, n_normal, np.concatenate(tops), np.concatenate(weights))
    fpr, spro = curve_vertices(table)
    return np.append(fpr, 1.0), np.append(spro, 1.0)


def spro_curve(
    maps: MapsLike,
    masks: Sequence[Sequence[np.ndarray]],
    saturation_areas: Sequence[Sequence[int]],
) -> tuple[np.ndarray, np.ndarray]:
    """The exact (FPR, mean sPRO) curve over every distinct threshold, all images pooled.

    Parameters
    ----------
    maps : N anomaly maps, (H, W) each (sizes may differ).
    masks : per image, a list of (H, W) masks (nonzero = defect), one per defect; an empty
        list for a defect-free image.
    saturation_areas : per image, one saturation area per mask (:func:`saturation_area`).

    Returns
    -------
    fpr, spro : (M,) float64
        Vertices from (0, 0) to (1, 1), FPR non-decreasing.
    """
    types = ["anomalous" if len(k) else GOOD for k in masks]
    return _exact_curve(_prepare(maps, types, masks, saturation_areas), "anomalous")


# --------------------------------------------------------------------------- official mode


def _floor_to(values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """For each float64 ``t``: the largest value of ``dtype`` that is ``<= t``.

    ``score > t`` then equals ``score > floor(t)`` for every score of that dtype, so counts
    can be taken on the maps' own dtype without a float64 copy of every pixel.
    """
    if dtype == np.float64:
        return values
    cast = values.astype(dtype)
    above = cast.astype(np.float64) > values
    cast[above] = np.nextafter(cast[above], dtype.type(-np.inf))
    return cast


def _count_above(sorted_scores: np.ndarray, cuts: np.ndarray) -> np.ndarray:
    """Number of ``sorted_scores`` strictly above each of ``cuts`` (same dtype), int64."""
    return sorted_scores.size - np.searchsorted(sorted_scores, cuts, side="right")


def _official_values(
    data: _Prepared, thresholds: np.ndarray, kind: str | None
) -> tuple[np.ndarray, np.ndarray]:
    """Mean sPRO and FPR at each threshold, as ``ThresholdMetrics`` computes them.

    ``kind`` None: every image and every defect (what the refinement looks at); otherwise
    the good images plus those of ``kind``.
    """
    cuts = _floor_to(np.asarray(thresholds, dtype=np.float64), data.dtype)
    kinds = list(data.normals) if kind is None else [k for k in (GOOD, kind) if k in data.normals]
    fp = np.zeros(cuts.size, dtype=np.int64)
    for k in kinds:
        fp += _count_above(data.normals[k], cuts)
    n_normal = sum(data.n_normal[k] for k in kinds)
    if n_normal == 0:
        raise MetricInputError(f"{kind or 'all images'}: no defect-free pixel, no FPR")
    fpr = fp / n_normal  # = fp / (tn + fp), both int64, as get_fp_rates
    spros = [
        np.minimum(_count_above(d.scores, cuts) / d.saturation, 1.0)
        for d in data.defects_of(kind)
    ]
    return np.mean(spros, axis=0), fpr


def _start_thresholds(data: _Prepared, rng: np.random.Generator) -> list[Any]:
    """``MetricsAggregator._get_initial_thresholds``: max+eps, 48 order statistics, min-eps."""
    maps = data.maps
    n_per_image = int(np.prod(maps[0].shape))
    if any(int(np.prod(m.shape)) != n_per_image for m in maps):
        raise MetricInputError(
            "the official threshold search needs all maps of one size (it samples the same "
            "number of scores from each); use the exact mode for maps of different sizes"
        )
    subsample = len(maps) * n_per_image > OFFICIAL_MAX_SAMPLED_SCORES
    per_image = OFFICIAL_MAX_SAMPLED_SCORES // len(maps) if subsample else n_per_image
    low = high = maps[0][0, 0]
    sampled = []
    for m in maps:
        low, high = min(low, np.min(m)), max(high, np.max(m))
        flat = m.ravel()
        # Without subsampling the official code draws a permutation; the sort below undoes it.
        sampled.append(rng.choice(flat, size=per_image, replace=False) if subsample else flat)
    pooled = np.concatenate(sampled)
    pooled.sort()
    index = np.linspace(0, pooled.size - 1, num=_OFFICIAL_N_START, endpoint=True, dtype=int)
    inner = pooled[index[1:-1]].tolist()[::-1]
    # NumPy scalar + Python float stays in the scalar's dtype (NEP 50), as in the official run.
    bottom = low - _OFFICIAL_EPSILON
    if bottom == low:
        # float32 maps whose minimum is above about 8: the 1e-6 is lost, no threshold lies
        # below every score, the curve stops short of FPR 1 and the official code fails its
        # assertion at the limit 1.0. The next float below the minimum is what it intends.
        bottom = np.nextafter(low, -np.inf)
    return [high + _OFFICIAL_EPSILON, *inner, bottom]


def _unique(queries: list[Any], values: list[np.ndarray]) -> tuple[list[Any], list[np.ndarray]]:
    seen: set[float] = set()
    keep = []
    for i, q in enumerate(queries):
        if float(q) not in seen:
            seen.add(float(q))
            keep.append(i)
    return [queries[i] for i in keep], [values[i] for i in keep]


def official_thresholds(
    data: _Prepared, curve_max_distance: float, rng: np.random.Generator
) -> np.ndarray:
    """The thresholds of ``MetricsAggregator.run`` (``binary_refinement``), descending."""

    def evaluate(queries: list[Any]) -> list[np.ndarray]:
        spro, fpr = _official_values(data, np.asarray(queries, dtype=np.float64), None)
        return [np.array([s, f]) for s, f in zip(spro, fpr, strict=True)]

    max_area = _OFFICIAL_AREA_FACTOR * curve_max_distance**2
    queries = _start_thresholds(data, rng)
    queries, values = _unique(queries, evaluate(queries))
    for _ in range(_OFFICIAL_MAX_STEPS):
        candidates = []
        for i in range(len(queries) - 1):
            step = values[i] - values[i + 1]
            distance = np.linalg.norm(step)
            # A step along one axis only (area 0) is a jump that no threshold can refine.
            if distance <= curve_max_distance or 0.5 * np.prod(step) <= max_area:
                continue
            candidates.append((distance, (queries[i], queries[i + 1])))
        if not candidates:
            break
        candidates = sorted(candidates, key=lambda c: c[0], reverse=True)
        candidates = candidates[:_OFFICIAL_MAX_QUERIES]
        remaining = max(_OFFICIAL_MIN_QUERIES - len(candidates), 0)
        total = sum(distance for distance, _ in candidates)
        new: list[Any] = []
        for distance, (left, right) in candidates:
            extra = int(np.round(distance / total * remaining))
            new.extend(np.linspace(left, right, num=2 + 1 + extra)[1:-1])
            remaining -= extra
            total -= distance
        all_queries = queries + new
        all_values = values + evaluate(new)
        order = np.argsort(all_queries)[::-1]  # descending, as the official merge
        queries, values = _unique([all_queries[i] for i in order],
                                  [all_values[i] for i in order])
    return np.asarray(queries, dtype=np.float64)


def official_trapezoid(x: np.ndarray, y: np.ndarray, x_max: float | None = None) -> float:
    """The official ``util.trapz``: trapezoid area, up to ``x_max`` with y interpolated there.

    Non-finite points are dropped; ``x`` must be sorted ascending.
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    finite = np.isfinite(x) & np.isfinite(y)
    x, y = x[finite], y[finite]
    correction = 0.0
    if x_max is not None:
        if x_max not in x:
            ins = int(np.searchsorted(x, x_max, side="right"))  # bisect.bisect
            if not 0 < ins < x.size:
                raise MetricInputError(f"the curve does not reach the integration limit {x_max}")
            y_interp = y[ins - 1] + (y[ins] - y[ins - 1]) * (x_max - x[ins - 1]) / (
                x[ins] - x[ins - 1]
            )
            correction = 0.5 * (y_interp + y[ins - 1]) * (x_max - x[ins - 1])
        keep = x <= x_max
        x, y = x[keep], y[keep]
    return float(np.sum(0.5 * (y[1:] + y[:-1]) * (x[1:] - x[:-1])) + correction)


def official_image_auroc(good_scores: Sequence[float], anomalous_scores: Sequence[float]) -> float:
    """Image AUROC as the official ``compute_classification_auc_roc`` computes it.

    The scores are sorted (stable, good images first among equal scores) and a ROC point is
    added after the *first* image of each new score value, so a run of tied scores is split
    instead of merged; the area is the trapezoid sum. With tied scores between good and
    anomalous images this differs from the Mann-Whitney AUROC (ties count one half there).

    Examples
    --------
    >>> official_image_auroc([0.1, 0.4], [0.35, 0.8])
    0.75
    >>> official_image_auroc([1.0, 1.0], [1.0, 1.0]), image_auroc([1.0] * 4, [0, 0, 1, 1])
    (0.75, 0.5)
    """
    n_ok, n_nok = len(good_scores), len(anomalous_scores)
    if n_ok == 0 or n_nok == 0:
        raise MetricInputError("the image AUROC needs good and anomalous images")
    pairs = [(float(s), 0) for s in good_scores] + [(float(s), 1) for s in anomalous_scores]
    scored = sorted(pairs, key=lambda pair: pair[0])
    fprs, tprs = [1.0], [1.0]
    fp, tp = n_ok, n_nok
    previous = None
    for i, (score, label) in enumerate(scored):
        if label == 0:
            fp -= 1
        else:
            tp -= 1
        if previous is None or score != previous or i == len(scored) - 1:
            fprs.append(fp / n_ok)
            tprs.append(tp / n_nok)
            previous = score
    return official_trapezoid(np.array(fprs[::-1]), np.array(tprs[::-1]))


# --------------------------------------------------------------------------- the protocol


def _limit_key(limit: float) -> str:
    return repr(float(limit))  # "0.01", "0.3", "1.0": the keys of the official JSON


def loco_metrics(
    maps: MapsLike,
    image_types: Sequence[str],
    masks: Sequence[Sequence[np.ndarray]],
    saturation_areas: Sequence[Sequence[int]],
    limits: Sequence[float] = LOCO_INTEGRATION_LIMITS,
    mode: Mode = "exact",
    curve_max_distance: float = 0.001,
    random_state: int | None = 0,
) -> dict[str, Any]:
    """AU-sPRO per anomaly type and limit, and image AUROC per type, of the LOCO protocol.

    Parameters
    ----------
    maps : N anomaly maps, (H, W) each; the image score is the map's maximum.
    image_types : N strings: ``"good"`` or the anomaly type (``"logical_anomalies"``,
        ``"structural_anomalies"``).
    masks : per image, its list of (H, W) defect masks (nonzero = defect), one per defect
        (``ground_truth/<type>/<id>/000.png, 001.png, ...``); empty for good images. In the
        official mode the order of images and masks matters at the last bit (means are summed
        in order): give them in the official reading order, sorted by type then file name.
    saturation_areas : per image, one saturation area per mask (:func:`saturation_area`).
    limits : FPR integration limits in (0, 1].
    mode : ``"exact"`` (every distinct threshold) or ``"official"`` (the official
        adaptive thresholds and image ROC); see the module docstring.
    curve_max_distance : official mode: the refinement's maximum (sPRO, FPR) step.
    random_state : official mode, above 10 M pooled pixels: seed of the start-point sample.

    Returns
    -------
    dict
        ``mode``; ``integration_limits``; ``auc_spro``: type -> {limit key -> value} plus
        ``mean`` (the average over the types); ``auc_roc``: type -> value plus ``mean``;
        ``n_thresholds`` (official mode: the number of refined thresholds; exact: None, every
        distinct score is one);
        ``method``: one line per metric saying how it was computed. Limit keys are written as
        Python floats (``"0.01"``, ``"1.0"``), the official JSON's keys.
    """
    if mode not in ("exact", "official"):
        raise MetricInputError(f"mode must be 'exact' or 'official', got {mode!r}")
    checked = [check_fpr_limit(limit) for limit in limits]
    data = _prepare(maps, image_types, masks, saturation_areas)
    kinds = data.anomaly_types
    scores = [float(np.max(m)) for m in data.maps]
    good_scores = [s for s, t in zip(scores, data.types, strict=True) if t == GOOD]

    auc_spro: dict[str, dict[str, float]] = {}
    auc_roc: dict[str, float] = {}
    n_thresholds: int | None
    if mode == "exact":
        n_thresholds = None  # every distinct score
        for kind in kinds:
            fpr, spro = _exact_curve(data, kind)
            auc_spro[kind] = {_limit_key(lim): trapezoid_to_limit(fpr, spro, lim)
                              for lim in checked}
            labels = [int(t == kind) for t in data.types if t in (GOOD, kind)]
            chosen = [s for s, t in zip(scores, data.types, strict=True) if t in (GOOD, kind)]
            auc_roc[kind] = image_auroc(chosen, labels)
        method = {
            "auc_spro": "exact: every distinct score is a threshold",
            "auc_roc": "exact: Mann-Whitney of the map maxima, tied scores count one half",
        }
    else:
        rng = np.random.default_rng(random_state)
        thresholds = official_thresholds(data, float(curve_max_distance), rng)
        n_thresholds = int(thresholds.size)
        for kind in kinds:
            spro, fpr = _official_values(data, thresholds, kind)
            auc_spro[kind] = {
                _limit_key(lim): official_trapezoid(fpr, spro, lim) / lim for lim in checked
            }
            bad = [s for s, t in zip(scores, data.types, strict=True) if t == kind]
            auc_roc[kind] = official_image_auroc(good_scores, bad)
        method = {
            "auc_spro": (
                f"official: adaptive thresholds of the MVTec LOCO AD evaluation code "
                f"(curve_max_distance {curve_max_distance:g}, {n_thresholds} thresholds)"
            ),
            "auc_roc": ("official: ROC of the map maxima as the MVTec LOCO AD evaluation code "
                        "draws it (ties not merged)"),
        }
    auc_spro["mean"] = {
        _limit_key(lim): math.fsum(auc_spro[k][_limit_key(lim)] for k in kinds) / len(kinds)
        for lim in checked
    }
    auc_roc["mean"] = math.fsum(auc_roc[k] for k in kinds) / len(kinds)
    return {
        "mode": mode,
        "integration_limits": [float(lim) for lim in checked],
        "auc_spro": auc_spro,
        "auc_roc": auc_roc,
        "n_thresholds": n_thresholds,
        "method": method,
    }
