"""Anomaly detectors: PatchCore (default) and PaDiM, behind one registry and one contract.

>>> from defectmap.detectors import list_detectors
>>> list_detectors()
['padim', 'patchcore']
"""

from collections.abc import Mapping
from typing import Any

from defectmap.constants import DEFAULT_DETECTOR, MIN_INPUT_SIZE
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
from defectmap.errors import DefectmapError

__all__ = [
    "DEFAULT_DETECTOR",
    "build_detector",
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


def build_detector(name: str, params: Mapping[str, Any] | None = None) -> Detector:
    """:func:`create_detector` for names and parameters a user typed: fails with one clear line.

    Call it before any long work (reading data, fitting): it only stores the parameters.

    Raises
    ------
    UnknownDetectorError
        ``name`` is not registered (the message lists the known ones).
    DefectmapError
        A parameter the detector does not have, or ``input_size`` below
        :data:`~defectmap.constants.MIN_INPUT_SIZE`.
    """
    params = dict(params or {})
    size = params.get("input_size")
    if size is not None and int(size) < MIN_INPUT_SIZE:
        raise DefectmapError(f"input_size must be at least {MIN_INPUT_SIZE} pixels, got {size}")
    try:
        return create_detector(name, **params)
    except TypeError as exc:
        raise DefectmapError(f"detector {name!r}: {exc}") from exc
