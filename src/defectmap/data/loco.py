"""The MVTec LOCO AD layout: a validation split, logical and structural anomalies, several
masks per image and a defect configuration with saturation thresholds.

Layout (as published in ``mvtec_loco_anomaly_detection.tar.xz``)::

    CATEGORY/defects_config.json
    CATEGORY/train/good/*.png
    CATEGORY/validation/good/*.png
    CATEGORY/test/good/*.png
    CATEGORY/test/logical_anomalies/*.png
    CATEGORY/test/structural_anomalies/*.png
    CATEGORY/ground_truth/<logical|structural>_anomalies/<stem>/000.png, 001.png, ...

Each PNG under ``ground_truth/<type>/<stem>/`` is **one defect** of test image
``test/<type>/<stem>.png``: its pixels are 0 (defect-free) or that defect's ``pixel_value``
from ``defects_config.json``, whose entries also give the defect's name and saturation
threshold (absolute pixels, or relative to the defect's area). Masks may overlap. This is
what the official evaluation code reads (``GroundTruthMap.read_from_png_dir``), and a mask
it would reject is a problem here too: a value that is not in the configuration, more than
one defect value in one file, or no defect pixel.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from defectmap.constants import LOCO_ANOMALY_TYPES
from defectmap.data.io import read_mask_values
from defectmap.data.mvtec import _good_split, _images_in, _is_image, _subfolders, _visible
from defectmap.data.records import GOOD, CategoryData, DefectConfig, Problem, Sample
from defectmap.errors import DatasetError, ImageReadError

__all__ = [
    "DEFECTS_CONFIG",
    "is_loco_category",
    "read_defects_config",
    "read_loco_masks",
    "scan_loco",
    "check_loco_masks",
]

DEFECTS_CONFIG = "defects_config.json"
_KIND = {"logical_anomalies": "logical", "structural_anomalies": "structural"}
_TOP_LEVEL = ("train", "validation", "test", "ground_truth")


def is_loco_category(folder: str | Path) -> bool:
    """Whether ``folder`` is a category in the MVTec LOCO AD layout."""
    folder = Path(folder)
    return (folder / DEFECTS_CONFIG).is_file() or any(
        (folder / "test" / kind).is_dir() for kind in LOCO_ANOMALY_TYPES
    )


def _config_entry(raw: Any, index: int, path: Path) -> DefectConfig:
    where = f"{path}: entry {index}"
    if not isinstance(raw, dict):
        raise DatasetError(f"{where} is not an object")
    missing = {"defect_name", "pixel_value", "saturation_threshold",
               "relative_saturation"} - raw.keys()
    if missing:
        raise DatasetError(f"{where} lacks {', '.join(sorted(missing))}")
    name, value = raw["defect_name"], raw["pixel_value"]
    threshold, relative = raw["saturation_threshold"], raw["relative_saturation"]
    if not isinstance(name, str) or not name:
        raise DatasetError(f"{where}: defect_name must be a non-empty string")
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 255:
        raise DatasetError(f"{where} ({name}): pixel_value must be an integer in 1..255")
    if not isinstance(relative, bool):
        raise DatasetError(f"{where} ({name}): relative_saturation must be true or false")
    if relative:
        if isinstance(threshold, bool) or not isinstance(threshold, int | float) \
                or not 0.0 < float(threshold) <= 1.0:
            raise DatasetError(
                f"{where} ({name}): a relative saturation_threshold must be in (0, 1]")
        threshold = float(threshold)
    elif isinstance(threshold, bool) or not isinstance(threshold, int) or threshold < 1:
        raise DatasetError(
            f"{where} ({name}): an absolute saturation_threshold must be a positive integer")
    return DefectConfig(name, value, threshold, relative)


def read_defects_config(path: str | Path) -> tuple[DefectConfig, ...]:
    """Read and validate a ``defects_config.json``.

    Raises
    ------
    DatasetError
        Unreadable JSON, a missing key, a pixel value outside 1..255 or used twice, a
        relative threshold outside (0, 1] or an absolute one that is not a positive
        integer; the message names the file and the entry.
    """
    path = Path(path)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise DatasetError(f"{path}: defect configuration not found") from exc
    except (OSError, ValueError) as exc:
        raise DatasetError(f"{path}: not a readable JSON file ({exc})") from exc
    if not isinstance(raw, list) or not raw:
        raise DatasetError(f"{path}: expected a non-empty list of defect entries")
    entries = tuple(_config_entry(item, i, path) for i, item in enumerate(raw))
    seen: dict[int, str] = {}
    for entry in entries:
        if entry.pixel_value in seen:
            raise DatasetError(
                f"{path}: pixel_value {entry.pixel_value} is used by both "
                f"{seen[entry.pixel_value]!r} and {entry.name!r}")
        seen[entry.pixel_value] = entry.name
    return entries


def _mask_dirs(gt_kind: Path, problems: list[Problem]) -> dict[str, tuple[Path, ...]]:
    """Image stem -> its mask files, for one ``ground_truth/<type>/`` folder."""
    index: dict[str, tuple[Path, ...]] = {}
    if not gt_kind.is_dir():
        return index
    for entry in sorted(gt_kind.iterdir()):
        if not _visible(entry):
            continue
        if not entry.is_dir():
            problems.append(Problem("unexpected_file", entry,
                                    "ground_truth/<type>/ must hold one folder per image"))
            continue
        masks = []
        for item in sorted(entry.iterdir()):
            if not _visible(item):
                continue
            if _is_image(item) and item.suffix.lower() == ".png":
                masks.append(item)
            else:
                problems.append(Problem("unexpected_file", item,
                                        f"unexpected file in mask folder {entry.name}/"))
        index[entry.name] = tuple(masks)
    return index


def scan_loco(folder: str | Path) -> tuple[CategoryData, list[Problem]]:
    """Read a MVTec LOCO AD category, collecting problems instead of failing on them.

    Returns
    -------
    data : CategoryData
        ``layout="loco"``; ``train`` and ``validation`` (good images), ``test`` with
        ``defect_type`` the test folder, ``anomaly_kind`` ``"logical"`` / ``"structural"``
        and ``mask_paths`` the image's mask files; ``defects`` from the configuration.
    problems : list of Problem
        ``layout`` (missing folder), ``invalid_config``, ``mask_missing`` (no mask folder or
        an empty one), ``mask_orphan``, ``unexpected_file``. Mask *contents* are checked by
        :func:`check_loco_masks`.
    """
    folder = Path(folder)
    name = folder.resolve().name
    problems: list[Problem] = []
    defects: tuple[DefectConfig, ...] = ()
    try:
        defects = read_defects_config(folder / DEFECTS_CONFIG)
    except DatasetError as exc:
        problems.append(Problem("invalid_config", folder / DEFECTS_CONFIG, str(exc)))
    for sub in _subfolders(folder, (".txt", ".md", ".json"), problems):
        if sub.name not in _TOP_LEVEL:
            problems.append(Problem("unexpected_file", sub,
                                    f"unexpected folder (expected {', '.join(_TOP_LEVEL)})"))

    train = _good_split(folder, "train", name, problems)
    validation = _good_split(folder, "validation", name, problems)
    test: list[Sample] = []
    test_dir, gt_dir = folder / "test", folder / "ground_truth"
    if not test_dir.is_dir():
        problems.append(Problem("layout", test_dir, "missing folder test/"))
    else:
        for sub in _subfolders(test_dir, (), problems):
            if sub.name == GOOD:
                test += [Sample(p, "test", 0, GOOD, None, name)
                         for p in _images_in(sub, problems)]
                continue
            if sub.name not in LOCO_ANOMALY_TYPES:
                problems.append(Problem(
                    "unexpected_file", sub,
                    f"unexpected test folder (expected good/, {', '.join(LOCO_ANOMALY_TYPES)})"))
                continue
            masks = _mask_dirs(gt_dir / sub.name, problems)
            for image in _images_in(sub, problems):
                found = masks.pop(image.stem, None)
                if not found:
                    where = gt_dir / sub.name / image.stem
                    problems.append(Problem("mask_missing", where,
                                            f"no mask PNG for anomalous image {image}"))
                test.append(Sample(image, "test", 1, sub.name, None, name,
                                   mask_paths=found or (), anomaly_kind=_KIND[sub.name]))
            for stem in sorted(masks):
                problems.append(Problem("mask_orphan", gt_dir / sub.name / stem,
                                        f"mask folder without a matching image {sub / stem}.png"))
    if gt_dir.is_dir():
        for sub in _subfolders(gt_dir, (), problems):
            if sub.name not in LOCO_ANOMALY_TYPES:
                problems.append(Problem("mask_orphan", sub,
                                        f"unexpected ground_truth folder {sub.name}/"))
    data = CategoryData(name, folder, train, test, True, "loco", validation=validation,
                        defects=defects)
    return data, problems


def _one_defect(values: np.ndarray, path: Path,
                by_value: dict[int, DefectConfig]) -> tuple[DefectConfig | None, str | None]:
    """The defect a mask's values stand for, or ``(None, problem kind: message)``."""
    nonzero = np.unique(values[values > 0])
    if nonzero.size == 0:
        return None, "mask_empty: the mask has no defect pixel (every value is 0)"
    if nonzero.size > 1:
        shown = ", ".join(str(v) for v in nonzero[:5])
        return None, (f"mask_not_binary: {nonzero.size} different defect values ({shown}); "
                      f"one mask file holds exactly one defect")
    value = int(nonzero[0])
    if value not in by_value:
        known = ", ".join(str(v) for v in sorted(by_value))
        return None, (f"mask_unknown_value: pixel value {value} is not in "
                      f"{DEFECTS_CONFIG} (known values: {known})")
    return by_value[value], None


def check_loco_masks(
    sample: Sample, defects: tuple[DefectConfig, ...], size: tuple[int, int] | None
) -> tuple[list[Problem], list[DefectConfig]]:
    """Check every mask file of a LOCO test sample.

    Parameters
    ----------
    sample : a test sample (its ``mask_paths``).
    defects : the category's defect configuration.
    size : the image's (width, height), or None when the image is unreadable.

    Returns
    -------
    problems : ``unreadable_mask``, ``mask_size_mismatch``, ``mask_empty``,
        ``mask_not_binary`` (two defect values in one file) or ``mask_unknown_value``.
    found : the defect configuration entry of each valid mask.
    """
    by_value = {d.pixel_value: d for d in defects}
    problems: list[Problem] = []
    found: list[DefectConfig] = []
    for path in sample.mask_paths:
        try:
            values = read_mask_values(path)
        except ImageReadError as exc:
            problems.append(Problem.from_error("unreadable_mask", path, exc))
            continue
        mask_size = (values.shape[1], values.shape[0])
        if size is not None and mask_size != size:
            problems.append(Problem(
                "mask_size_mismatch", path,
                f"mask is {mask_size[0]}x{mask_size[1]} but image {sample.path.name} is "
                f"{size[0]}x{size[1]}"))
        entry, issue = _one_defect(values, path, by_value)
        if issue is not None:
            kind, message = issue.split(": ", 1)
            problems.append(Problem(kind, path, message))
        if entry is not None:
            found.append(entry)
    return problems, found


def read_loco_masks(
    sample: Sample, defects: tuple[DefectConfig, ...], shape: tuple[int, int]
) -> list[tuple[np.ndarray, DefectConfig]]:
    """The defects of one LOCO test image: (H, W) bool mask and configuration entry each.

    Raises
    ------
    DatasetError
        A mask is unreadable, of another size than ``shape`` (the map's (H, W)), empty,
        holds two defect values, or a value that is not in ``defects_config.json``; the
        message names the mask file.
    """
    by_value = {d.pixel_value: d for d in defects}
    out = []
    for path in sample.mask_paths:
        try:
            values = read_mask_values(path)
        except ImageReadError as exc:
            raise DatasetError(str(exc)) from exc
        if values.shape != tuple(shape):
            raise DatasetError(
                f"{path}: mask is {values.shape[1]}x{values.shape[0]} (WxH) but "
                f"{sample.path} needs {shape[1]}x{shape[0]}")
        entry, issue = _one_defect(values, path, by_value)
        if entry is None:
            raise DatasetError(f"{path}: {issue.split(': ', 1)[1] if issue else 'invalid'}")
        out.append((values > 0, entry))
    return out
