"""The MVTec LOCO AD protocol: AU-sPRO per anomaly type and limit, image AUROC per type.

:func:`loco_map_metrics` turns a LOCO category's test samples and their anomaly maps into
the inputs of :func:`defectmap.metrics.loco_metrics`: every mask file of an image is one
defect, paired with its ``defects_config.json`` entry by pixel value; its saturation area
comes from that entry (:func:`defectmap.metrics.saturation_area`). Images are passed in the
official reading order (anomaly type folder, then file name), so the official mode sums
its means in the same order as the official code.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np

from defectmap.data.loco import read_loco_masks
from defectmap.data.records import GOOD, CategoryData
from defectmap.errors import DatasetError
from defectmap.metrics import LOCO_INTEGRATION_LIMITS, loco_metrics, saturation_area

__all__ = ["PROTOCOL", "loco_map_metrics"]

PROTOCOL = "mvtec_loco"


def loco_map_metrics(
    data: CategoryData,
    maps: Sequence[np.ndarray],
    mode: Literal["exact", "official"] = "exact",
    limits: Sequence[float] = LOCO_INTEGRATION_LIMITS,
) -> dict[str, Any]:
    """The LOCO metrics of one category's maps.

    Parameters
    ----------
    data : a category read in the ``loco`` layout (its ``test`` split and ``defects``).
    maps : one (H, W) map per test sample, in the order of ``data.test``.
    mode : ``"exact"`` or ``"official"`` (see :mod:`defectmap.metrics.spro`).
    limits : FPR integration limits.

    Returns
    -------
    dict
        ``protocol`` (``"mvtec_loco"``), everything :func:`~defectmap.metrics.loco_metrics`
        returns (``mode``, ``auc_spro``, ``auc_roc``, ...), ``n_images`` per test folder,
        ``n_defects`` (mask files) and ``notes``: one line per defect whose absolute
        saturation threshold exceeds its area (the official code warns about these too).
    """
    if data.layout != "loco":
        raise DatasetError(f"{data.root}: not a MVTec LOCO AD category (layout {data.layout})")
    if len(maps) != len(data.test):
        raise DatasetError(f"got {len(maps)} maps for {len(data.test)} test images")
    if not data.defects:
        raise DatasetError(f"{data.root}: no defect configuration (defects_config.json)")
    order = sorted(range(len(data.test)),
                   key=lambda i: (data.test[i].defect_type, data.test[i].path.name))
    ordered_maps, types, masks, saturations, notes = [], [], [], [], []
    for i in order:
        sample, amap = data.test[i], maps[i]
        image_masks, image_sats = [], []
        if sample.label == 1:
            for j, (mask, entry) in enumerate(read_loco_masks(sample, data.defects, amap.shape)):
                area = int(np.count_nonzero(mask))
                image_masks.append(mask)
                image_sats.append(saturation_area(area, entry.saturation_threshold,
                                                  entry.relative_saturation))
                if not entry.relative_saturation and entry.saturation_threshold > area:
                    notes.append(
                        f"{sample.mask_paths[j]}: defect {entry.name!r} has {area} pixels, "
                        f"fewer than its saturation threshold {entry.saturation_threshold:g}")
        ordered_maps.append(amap)
        types.append(sample.defect_type)
        masks.append(image_masks)
        saturations.append(image_sats)
    result = loco_metrics(ordered_maps, types, masks, saturations, limits=limits, mode=mode)
    counts: dict[str, int] = {}
    for kind in types:
        counts[kind] = counts.get(kind, 0) + 1
    return {
        "protocol": PROTOCOL,
        **result,
        "n_images": dict(sorted(counts.items(), key=lambda kv: (kv[0] != GOOD, kv[0]))),
        "n_defects": sum(len(m) for m in masks),
        "notes": notes,
    }
