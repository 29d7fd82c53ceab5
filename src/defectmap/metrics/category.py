"""All metrics of one category, overall and per defect type, from scores and optional maps."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from defectmap.metrics._core import ThresholdTable
from defectmap.metrics._input import (
    MapsLike,
    MasksLike,
    MetricInputError,
    as_labels,
    as_scores,
    check_fpr_limit,
)
from defectmap.metrics.pixel import (
    PixelGroup,
    collect_pixels,
    pixel_metrics_from_table,
    pro_curve_from_table,
    table_for,
)
from defectmap.metrics.ranking import f1_max, image_auroc, image_scores_from_maps

_GOOD_KEY = "good"


def category_metrics(
    scores: ArrayLike | None,
    labels: ArrayLike,
    defect_types: Sequence[str],
    maps: MapsLike | None = None,
    masks: MasksLike | None = None,
    fpr_limit: float = 0.3,
) -> dict[str, Any]:
    """Image and pixel metrics of one category, overall and per defect type.

    Parameters
    ----------
    scores : (N,) array or None
        Image scores; None = the maximum of each map (then ``maps`` is required).
    labels : (N,) array of 0/1
        1 = defective image.
    defect_types : sequence of N str
        ``"good"`` or the defect folder name of each image.
    maps : (N, H, W) array or sequence of N 2-D arrays, optional
        Anomaly maps at each image's native size.
    masks : same layout as ``maps``, optional
        Ground truth (nonzero = anomalous; a ``None`` entry = all normal). Pixel metrics are
        computed only when both ``maps`` and ``masks`` are given.
    fpr_limit : float, default 0.3
        AU-PRO integration limit.

    Returns
    -------
    dict
        ``image_auroc``, ``pixel_auroc``, ``aupro``, ``fpr_limit``, ``f1_max``,
        ``f1_threshold``, ``pixel_f1_max``, ``pixel_f1_threshold``, ``n_images``,
        ``n_defective`` and ``per_defect``: defect type -> the same keys (without
        ``per_defect``) computed on the good images plus that defect's images. Pixel keys
        are None without maps and masks. The pixels are gathered and sorted once; every
        subset is evaluated from the same per-defect sorted arrays.
    """
    return category_metrics_and_pro_curve(scores, labels, defect_types, maps, masks,
                                          fpr_limit)[0]


def category_metrics_and_pro_curve(
    scores: ArrayLike | None,
    labels: ArrayLike,
    defect_types: Sequence[str],
    maps: MapsLike | None = None,
    masks: MasksLike | None = None,
    fpr_limit: float = 0.3,
) -> tuple[dict[str, Any], tuple[np.ndarray, np.ndarray] | None]:
    """:func:`category_metrics` and the PRO curve of all its images, from one pixel sort.

    Returns
    -------
    metrics : dict
        As :func:`category_metrics`.
    pro_curve : (fpr, pro) or None
        The vertices of :func:`~defectmap.metrics.pro_curve` over all images (the curve whose
        area is ``metrics["aupro"]``); None without maps and masks.
    """
    limit = check_fpr_limit(fpr_limit)
    if scores is None:
        if maps is None:
            raise MetricInputError("give image scores or anomaly maps")
        scores = image_scores_from_maps(maps)  # type: ignore[arg-type]
    s = as_scores(scores)
    y = as_labels(labels, s.size)
    types = [str(t) for t in defect_types]
    if len(types) != s.size:
        raise MetricInputError(f"got {s.size} scores but {len(types)} defect types")
    bad = [i for i, (lab, t) in enumerate(zip(y, types, strict=True)) if lab and t == _GOOD_KEY]
    if bad:
        raise MetricInputError(f"image {bad[0]} is labelled defective but its type is 'good'")
    keys = [t if lab else _GOOD_KEY for lab, t in zip(y, types, strict=True)]
    defects = sorted({k for k in keys if k != _GOOD_KEY})

    pixel_groups: dict[Any, PixelGroup] | None = None
    if maps is not None and masks is not None:
        pixel_groups = collect_pixels(maps, masks, groups=keys)

    def metrics_of(members: list[str], which: str) -> tuple[dict[str, Any], ThresholdTable | None]:
        idx = np.flatnonzero(np.isin(np.asarray(keys), members))
        f1, f1_threshold = f1_max(s[idx], y[idx])
        out: dict[str, Any] = {
            "image_auroc": image_auroc(s[idx], y[idx]),
            "pixel_auroc": None,
            "aupro": None,
            "fpr_limit": limit,
            "f1_max": f1,
            "f1_threshold": f1_threshold,
            "pixel_f1_max": None,
            "pixel_f1_threshold": None,
            "n_images": int(idx.size),
            "n_defective": int(y[idx].sum()),
        }
        table = None
        if pixel_groups is not None:
            groups = [pixel_groups[k] for k in members if k in pixel_groups]
            try:
                table = table_for(groups, weighted=True)
                out.update(pixel_metrics_from_table(table, limit))
            except MetricInputError as exc:
                raise MetricInputError(f"{which}: {exc}") from exc
        return out, table

    result, table = metrics_of([_GOOD_KEY, *defects], "all images")
    result["per_defect"] = {
        d: metrics_of([_GOOD_KEY, d], f"defect type {d!r}")[0] for d in defects
    }
    return result, None if table is None else pro_curve_from_table(table)
