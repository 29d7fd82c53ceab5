"""Thresholds, p-values, score normalisation and defect regions, from good images only.

* :mod:`~defectmap.calibrate.conformal`: conformal ranks, thresholds, p-values, the bounds
  and the normalisation, as pure functions (the maths and the guarantees are written out).
* :mod:`~defectmap.calibrate.crossfit`: cross-fitted calibration (the default): out-of-fold
  scores of every good training image, the final model fitted on all of them.
* :mod:`~defectmap.calibrate.split`: the validation split of ``train/good`` (split conformal).
* :mod:`~defectmap.calibrate.pixels`: the exact pixel threshold from maps streamed one by one.
* :mod:`~defectmap.calibrate.misses`: the miss rate of known defects (Clopper-Pearson).
* :mod:`~defectmap.calibrate.regions`: predicted masks and :class:`Region` records.
* :mod:`~defectmap.calibrate.calibration`: the :class:`Calibration` object and its file.

Imports no torch.
"""

from defectmap.calibrate.calibration import (
    CALIBRATION_FILE,
    METHODS,
    RULES,
    Calibration,
    fit_calibration,
)
from defectmap.calibrate.conformal import (
    CalibrationError,
    CalibrationWarning,
    conformal_rank,
    cross_conformal_bound,
    min_validation_size,
)
from defectmap.calibrate.crossfit import CrossFit, assign_folds, cross_fit
from defectmap.calibrate.misses import MissEstimate, clopper_pearson, estimate_miss_rate
from defectmap.calibrate.pixels import PIXEL_FPR_GRID, PixelTail
from defectmap.calibrate.regions import Region
from defectmap.calibrate.split import split_validation
from defectmap.constants import DEFAULT_ALPHA, DEFAULT_FOLDS, DEFAULT_PIXEL_FPR

__all__ = [
    "CALIBRATION_FILE",
    "DEFAULT_ALPHA",
    "DEFAULT_FOLDS",
    "DEFAULT_PIXEL_FPR",
    "METHODS",
    "PIXEL_FPR_GRID",
    "RULES",
    "Calibration",
    "CalibrationError",
    "CalibrationWarning",
    "CrossFit",
    "MissEstimate",
    "PixelTail",
    "Region",
    "assign_folds",
    "clopper_pearson",
    "conformal_rank",
    "cross_conformal_bound",
    "cross_fit",
    "estimate_miss_rate",
    "fit_calibration",
    "min_validation_size",
    "split_validation",
]
