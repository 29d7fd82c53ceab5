"""Published image counts of the official categories of every layout, in one shape.

:func:`official_counts` returns, for a category that a dataset publishes, ``{"split/folder":
count}`` over the folders of that layout (``"train/good"``, ``"validation/good"``,
``"test/logical_anomalies"``, ``"test_private"``...); :func:`found_counts` counts a
:class:`~defectmap.data.records.CategoryData` the same way, so ``data check`` compares the
two key by key. The numbers and their sources are in :mod:`defectmap.constants`.
"""

from __future__ import annotations

from collections import Counter

from defectmap.constants import (
    LOCO_ANOMALY_TYPES,
    LOCO_COUNTS,
    MVTEC_AD2_PRIVATE_COUNTS,
    MVTEC_AD2_PRIVATE_SPLITS,
    MVTEC_TEST_COUNTS,
    MVTEC_TRAIN_COUNTS,
    VISA_1CLS_COUNTS,
)
from defectmap.data.records import GOOD, CategoryData

__all__ = ["DATASET_NAMES", "found_counts", "official_counts"]

#: Human name of each layout's dataset.
DATASET_NAMES = {
    "mvtec": "MVTec AD", "folders": "good/ + defect folders", "loco": "MVTec LOCO AD",
    "mvtec_ad2": "MVTec AD 2", "visa": "VisA (1cls split)", "realiad": "Real-IAD (single view)",
}


def official_counts(layout: str, name: str) -> dict[str, int] | None:
    """Published ``{"split/folder": count}`` of category ``name`` in ``layout``, else None.

    MVTec AD 2 publishes per-category counts only for its private test sets (the upload
    checker's); Real-IAD none outside its JSON splits, which ``data check`` verifies entry
    by entry instead.
    """
    if layout == "mvtec" and name in MVTEC_TRAIN_COUNTS:
        return {"train/good": MVTEC_TRAIN_COUNTS[name],
                **{f"test/{k}": v for k, v in MVTEC_TEST_COUNTS[name].items()}}
    if layout == "loco" and name in LOCO_COUNTS:
        c = LOCO_COUNTS[name]
        return {"train/good": c["train"], "validation/good": c["validation"],
                "test/good": c["good"], **{f"test/{k}": c[k] for k in LOCO_ANOMALY_TYPES}}
    if layout == "mvtec_ad2" and name in MVTEC_AD2_PRIVATE_COUNTS:
        return {split: MVTEC_AD2_PRIVATE_COUNTS[name] for split in MVTEC_AD2_PRIVATE_SPLITS}
    if layout == "visa" and name in VISA_1CLS_COUNTS:
        c = VISA_1CLS_COUNTS[name]
        return {"train/good": c["train"], "test/good": c["good"], "test/bad": c["bad"]}
    return None


def found_counts(data: CategoryData) -> dict[str, int]:
    """``{"split/folder": count}`` of the images in ``data`` (good first, then sorted)."""
    counts: Counter[str] = Counter()
    counts["train/good"] = len(data.train)
    if data.validation:
        counts["validation/good"] = len(data.validation)
    for sample in data.test:
        counts[f"test/{sample.defect_type}"] += 1
    for split, samples in data.unlabeled.items():
        counts[split] = len(samples)
    order = {"train": 0, "validation": 1, "test": 2}
    return dict(sorted(counts.items(), key=lambda kv: (
        order.get(kv[0].split("/")[0], 3), not kv[0].endswith(f"/{GOOD}"), kv[0])))
