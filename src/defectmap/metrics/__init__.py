"""Exact metrics of the MVTec AD protocol as pure NumPy functions.

Image level: :func:`image_auroc`, :func:`roc_curve`, :func:`f1_max`. Pixel level:
:func:`pixel_auroc`, :func:`pro_curve`, :func:`aupro`, :func:`pixel_f1_max`, or all of them
from one pass: :func:`pixel_metrics`. Operating point: :func:`region_detection_rate`,
:func:`pixel_iou`. Everything for one category: :func:`category_metrics` (with the PRO curve:
:func:`category_metrics_and_pro_curve`). MVTec LOCO AD: :func:`loco_metrics` (AU-sPRO and
image AUROC, exact or official). MVTec AD 2: :func:`validation_threshold` and :func:`seg_f1`.
Higher score = more anomalous; ``score >= threshold`` = anomalous.

Every distinct score is a threshold, counts are exact integers and sums are float64; the
values equal the official MVTec AD evaluation code and scikit-learn (see the tests). Bad
input (NaN/inf scores, mismatched shapes, a missing class) raises :class:`MetricInputError`.
"""

from __future__ import annotations

from defectmap.metrics._input import MetricInputError
from defectmap.metrics.category import category_metrics, category_metrics_and_pro_curve
from defectmap.metrics.pixel import (
    aupro,
    label_regions,
    pixel_auroc,
    pixel_f1_max,
    pixel_iou,
    pixel_metrics,
    pro_curve,
    region_detection_rate,
)
from defectmap.metrics.ranking import f1_max, image_auroc, image_scores_from_maps, roc_curve
from defectmap.metrics.segmentation import seg_f1, validation_threshold
from defectmap.metrics.spro import (
    LOCO_INTEGRATION_LIMITS,
    loco_metrics,
    official_image_auroc,
    saturation_area,
    spro_curve,
)

__all__ = [
    "LOCO_INTEGRATION_LIMITS",
    "MetricInputError",
    "aupro",
    "category_metrics",
    "category_metrics_and_pro_curve",
    "f1_max",
    "image_auroc",
    "image_scores_from_maps",
    "label_regions",
    "loco_metrics",
    "official_image_auroc",
    "pixel_auroc",
    "pixel_f1_max",
    "pixel_iou",
    "pixel_metrics",
    "pro_curve",
    "region_detection_rate",
    "roc_curve",
    "saturation_area",
    "seg_f1",
    "spro_curve",
    "validation_threshold",
]
