"""Thresholds, p-values, score normalisation and defect regions, from good images only.

* :mod:`~defectmap.calibrate.conformal`: conformal ranks, thresholds, p-values and the
  normalisation, as pure functions (the maths and the guarantee are written out there).
* :mod:`~defectmap.calibrate.split`: the validation split of ``train/good``.
* :mod:`~defectmap.calibrate.regions`: predicted masks and :class:`Region` records.
* :mod:`~defectmap.calibrate.calibration`: the :class:`Calibration` object and its file.

Imports no torch.
"""

from defectmap.calibrate.calibration import CALIBRATION_FILE, Calibration, fit_calibration
from defectmap.calibrate.conformal import (
    CalibrationError,
    CalibrationWarning,
    conformal_rank,
    min_validation_size,
)
from defectmap.calibrate.regions import Region
from defectmap.calibrate.split import split_validation
from defectmap.constants import DEFAULT_ALPHA, DEFAULT_PIXEL_FPR

__all__ = [
    "CALIBRATION_FILE",
    "DEFAULT_ALPHA",
    "DEFAULT_PIXEL_FPR",
    "Calibration",
    "CalibrationError",
    "CalibrationWarning",
    "Region",
    "conformal_rank",
    "fit_calibration",
    "min_validation_size",
    "split_validation",
]
