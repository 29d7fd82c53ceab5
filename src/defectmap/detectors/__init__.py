"""Anomaly detectors: PatchCore (default) and PaDiM, behind one registry and one contract.

>>> from defectmap.detectors import list_detectors
>>> list_detectors()
['padim', 'patchcore']
"""

from collections.abc import Mapping, Sequence
from typing import Any

from defectmap.constants import DEFAULT_DETECTOR
from defectmap.detectors.base import (
    Detector,
    FeatureSet,
    ParamError,
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
    "parse_params",
    "Detector",
    "FeatureSet",
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
        A parameter the detector does not have, or a value of the wrong type or out of its
        range (``input_size`` below :data:`~defectmap.constants.MIN_INPUT_SIZE`, say).
    """
    params = dict(params or {})
    try:
        detector = create_detector(name, **params)
        detector._check_params()  # what fit would refuse, before the long work
    except (TypeError, ParamError) as exc:
        raise DefectmapError(f"detector {name!r}: {exc}") from exc
    return detector


_TRUE, _FALSE = ("true", "yes", "on", "1"), ("false", "no", "off", "0")


def _typed(name: str, key: str, text: str, default: Any) -> Any:
    """``text`` as the type of the parameter's default (None default: int, float or text)."""
    lowered = text.strip().lower()
    if isinstance(default, bool):
        if lowered not in _TRUE + _FALSE:
            raise DefectmapError(f"detector {name!r}: {key} must be true or false, got {text!r}")
        return lowered in _TRUE
    if default is None and lowered in ("none", "null"):
        return None
    kinds: tuple[type, ...] = (int, float) if default is None else (type(default),)
    for kind in kinds:
        if kind is str:
            return text
        try:
            value = kind(text)
        except ValueError:
            continue
        return value
    expected = "a number" if default is None else type(default).__name__
    raise DefectmapError(f"detector {name!r}: {key} must be {expected}, got {text!r}")


def parse_params(name: str, items: Sequence[str]) -> dict[str, Any]:
    """Detector parameters typed as ``KEY=VALUE``, checked against its ``get_params()``.

    Values take the type of the parameter's default (``true``/``false`` for booleans;
    ``none`` allowed where the default is None).

    Raises
    ------
    UnknownDetectorError
        ``name`` is not registered.
    DefectmapError
        Not ``KEY=VALUE``, a key the detector does not have (the message lists the valid
        ones), or a value of the wrong type.

    Examples
    --------
    >>> parse_params("patchcore", ["coreset_ratio=0.05", "augment_rotations=false"])
    {'coreset_ratio': 0.05, 'augment_rotations': False}
    """
    from defectmap.detectors.base import _detector_class

    defaults = _detector_class(name)().get_params()  # __init__ only stores: cheap
    params: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise DefectmapError(f"--param {item!r}: expected KEY=VALUE")
        if key not in defaults:
            raise DefectmapError(f"detector {name!r} has no parameter {key!r}; valid: "
                                 f"{', '.join(sorted(defaults))}")
        params[key] = _typed(name, key, text, defaults[key])
    return params
