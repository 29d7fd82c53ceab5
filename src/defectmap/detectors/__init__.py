"""Anomaly detectors: PatchCore (default) and PaDiM, behind one registry and one contract.

>>> from defectmap.detectors import list_detectors
>>> list_detectors()
['padim', 'patchcore']
"""

from defectmap.detectors.base import (
    Detector,
    Prediction,
    UnknownDetectorError,
    create_detector,
    list_detectors,
    load_detector,
    register_detector,
)
from defectmap.detectors.padim import PaDiM
from defectmap.detectors.patchcore import PatchCore

DEFAULT_DETECTOR = "patchcore"

__all__ = [
    "DEFAULT_DETECTOR",
    "Detector",
    "PaDiM",
    "PatchCore",
    "Prediction",
    "UnknownDetectorError",
    "create_detector",
    "list_detectors",
    "load_detector",
    "register_detector",
]
