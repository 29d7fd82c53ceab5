"""The MVTec AD 2 protocol on its public test set: AU-PRO at FPR 0.05 and SegF1.

MVTec AD 2 ranks methods on its private test sets by AU-PRO integrated to FPR 0.05 and by
SegF1, the pixel F1 of binarised maps pooled over a test set, where the binarisation
threshold must come from defect-free data only. MVTec scores the private sets on its
server; here the same numbers are computed on ``test_public`` (which has masks), with the
threshold rule MVTec's upload checker names as its baseline (:data:`THRESHOLD_RULE`): the
mean plus three standard deviations of every pixel score of the ``validation`` images. The
private test sets are only predicted: :func:`write_private_maps` writes them in the upload
layout, thresholded with that same threshold.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from defectmap.constants import MVTEC_AD2_FPR_LIMIT
from defectmap.data.mvtec import read_sample_mask
from defectmap.data.mvtec_ad2 import write_submission
from defectmap.data.records import CategoryData
from defectmap.errors import DatasetError
from defectmap.metrics import category_metrics, seg_f1, validation_threshold
from defectmap.progress import ProgressCallback

if TYPE_CHECKING:
    from defectmap.pipeline import InspectionModel

__all__ = ["PROTOCOL", "THRESHOLD_RULE", "ad2_map_metrics", "write_private_maps"]

PROTOCOL = "mvtec_ad2"
#: How the SegF1 threshold is chosen, and where the rule comes from.
THRESHOLD_RULE = (
    "mean + 3 std of every pixel score of the validation (defect-free) images: the baseline "
    "named by MVTec AD 2's upload checker (check_and_prepare_data_for_upload.py); "
    "map >= threshold is anomalous")


def ad2_map_metrics(
    data: CategoryData,
    test_maps: Sequence[np.ndarray],
    validation_maps: Sequence[np.ndarray] | None = None,
    fpr_limit: float = MVTEC_AD2_FPR_LIMIT,
    n_std: float = 3.0,
) -> dict[str, Any]:
    """The MVTec AD 2 metrics of one category's ``test_public`` maps.

    Parameters
    ----------
    data : a category read in the ``mvtec_ad2`` layout.
    test_maps : one (H, W) map per ``data.test`` sample, in that order.
    validation_maps : maps of ``data.validation`` (defect-free); without them there is no
        SegF1.
    fpr_limit : AU-PRO integration limit (0.05 in MVTec AD 2).
    n_std : standard deviations above the validation mean for the SegF1 threshold.

    Returns
    -------
    dict
        ``protocol``; the keys of :func:`~defectmap.metrics.category_metrics` (``aupro`` at
        ``fpr_limit``, ``image_auroc``, ``pixel_auroc``, ...); ``seg_f1`` (None without
        validation maps); ``segmentation``: ``threshold``, ``threshold_rule``,
        ``precision``, ``recall`` and the pixel counts, or None.
    """
    if len(test_maps) != len(data.test):
        raise DatasetError(f"got {len(test_maps)} maps for {len(data.test)} test images")
    masks = [read_sample_mask(s, m.shape) for s, m in zip(data.test, test_maps, strict=True)]
    labels = np.array([s.label for s in data.test])
    types = [s.defect_type for s in data.test]
    result: dict[str, Any] = {
        "protocol": PROTOCOL,
        **category_metrics(None, labels, types, test_maps, masks, fpr_limit),
        "seg_f1": None,
        "segmentation": None,
    }
    if validation_maps:
        threshold = validation_threshold(validation_maps, n_std)
        seg = seg_f1(test_maps, masks, threshold)
        result["seg_f1"] = seg["seg_f1"]
        result["segmentation"] = {**seg, "threshold_rule": THRESHOLD_RULE,
                                  "n_validation": len(validation_maps)}
    return result


def write_private_maps(
    model: InspectionModel,
    data: CategoryData,
    out: str | Path,
    threshold: float | None,
    batch_size: int = 1,
    progress: ProgressCallback | None = None,
) -> dict[str, int]:
    """Predict ``test_private`` and ``test_private_mixed`` and write the upload layout.

    Parameters
    ----------
    model : a trained model.
    data : the category (its ``unlabeled`` splits).
    out : the submission folder (``anomaly_images/`` and, with ``threshold``,
        ``anomaly_images_thresholded/``).
    threshold : the SegF1 threshold (from the validation images), or None for maps only.

    Returns
    -------
    dict
        Images written per split.
    """
    written = {}
    for split, samples in data.unlabeled.items():
        if not samples:
            continue
        prediction = model.detector.predict([s.path for s in samples], batch_size=batch_size,
                                            progress=progress)
        write_submission(out, data.name, split, [s.stem for s in samples],
                         list(prediction.maps), threshold)
        written[split] = len(samples)
    return written
