"""The Real-IAD layout with its single-view JSON splits.

Layout (as distributed: one archive per object, plus ``realiad_jsons.zip``)::

    ROOT/realiad_1024/OBJECT/OK/S0001/OBJECT_0001_OK_C1_<time>.jpg
    ROOT/realiad_1024/OBJECT/NG/<class>/S0002/OBJECT_0002_NG_<class>_C1_<time>.jpg (+ .png mask)
    ROOT/realiad_jsons/realiad_jsons_sv/OBJECT.json      (or ROOT/realiad_jsons_sv/OBJECT.json)

``realiad_512``, ``realiad_256`` and ``realiad_raw`` are the other resolutions; the first
present in that order after ``realiad_1024`` is used unless one is asked for. A JSON split
is ``{"meta": {"prefix", "normal_class", ...}, "train": [...], "test": [...]}`` whose
entries hold ``category``, ``anomaly_class``, ``image_path`` and ``mask_path`` (relative to
the object folder, after ``prefix``). Labels follow the official loader
(``datasets/explicit_dataset.py`` of Tencent/AnomalyDetection_Real-IAD): training entries
are normal; a test entry is anomalous unless its class is ``normal_class`` or it has no mask
(a view in which the defect is not visible). The single-view split lists one camera (C1);
files of the other views on disk are expected and not reported.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from defectmap.constants import REALIAD_DEFECT_CLASSES
from defectmap.data.records import GOOD, CategoryData, Problem, Sample
from defectmap.errors import DatasetError

__all__ = [
    "RESOLUTIONS",
    "find_realiad_json",
    "is_realiad_root",
    "realiad_categories",
    "realiad_image_dir",
    "scan_realiad",
]

RESOLUTIONS = ("1024", "512", "256", "raw")
_JSON_DIRS = (Path("realiad_jsons") / "realiad_jsons_sv", Path("realiad_jsons_sv"))
_KEYS = {"category", "anomaly_class", "image_path", "mask_path"}


def is_realiad_root(root: str | Path) -> bool:
    """Whether ``root`` holds a Real-IAD image folder or single-view JSON folder."""
    root = Path(root)
    return any((root / f"realiad_{r}").is_dir() for r in RESOLUTIONS) or any(
        (root / d).is_dir() for d in _JSON_DIRS
    )


def find_realiad_json(root: str | Path, category: str) -> Path:
    """The single-view JSON split of ``category`` under ``root``."""
    root = Path(root)
    for folder in _JSON_DIRS:
        if (root / folder / f"{category}.json").is_file():
            return root / folder / f"{category}.json"
    raise DatasetError(
        f"{root}: no single-view split {category}.json in realiad_jsons/realiad_jsons_sv/ "
        f"or realiad_jsons_sv/")


def realiad_image_dir(root: str | Path, category: str, resolution: str | None = None) -> Path:
    """The image folder of ``category`` (``ROOT/realiad_<resolution>/<category>``)."""
    root = Path(root)
    wanted = [resolution] if resolution else list(RESOLUTIONS)
    for res in wanted:
        if (root / f"realiad_{res}" / category).is_dir():
            return root / f"realiad_{res}" / category
    raise DatasetError(f"{root}: no image folder realiad_<{'|'.join(wanted)}>/{category}/")


def realiad_categories(root: str | Path) -> list[str]:
    """Sorted objects that have a single-view JSON split under ``root``."""
    root = Path(root)
    names = set()
    for folder in _JSON_DIRS:
        if (root / folder).is_dir():
            names |= {p.stem for p in (root / folder).glob("*.json")}
    return sorted(names)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DatasetError(f"{path}: not a readable JSON file ({exc})") from exc
    if not isinstance(info, dict) or not all(k in info for k in ("meta", "train", "test")):
        raise DatasetError(f"{path}: a Real-IAD split needs the keys meta, train and test")
    if not isinstance(info["meta"], dict) or "normal_class" not in info["meta"]:
        raise DatasetError(f"{path}: meta must give normal_class")
    for split in ("train", "test"):
        entries = info[split]
        if not isinstance(entries, list):
            raise DatasetError(f"{path}: {split} must be a list")
        for i, entry in enumerate(entries):
            if not isinstance(entry, dict) or set(entry) != _KEYS:
                raise DatasetError(
                    f"{path}: {split}[{i}] must have exactly the keys {', '.join(sorted(_KEYS))}")
    return info


def scan_realiad(
    root: str | Path, category: str, resolution: str | None = None
) -> tuple[CategoryData, list[Problem]]:
    """Read one Real-IAD object through its single-view JSON split.

    Returns
    -------
    data : CategoryData
        ``layout="realiad"``, ``root`` the object's image folder; ``defect_type`` of an
        anomalous test image is its class code (``"AK"``), ``defect_names`` the full name.
    problems : list of Problem
        ``missing_file`` (an entry points to a missing image), ``mask_missing``,
        ``invalid_split`` (an entry of another object, listed twice, or an anomalous class
        in the training split).

    Raises
    ------
    DatasetError
        No image folder or JSON split, or a malformed JSON split.
    """
    json_path = find_realiad_json(root, category)
    folder = realiad_image_dir(root, category, resolution)
    info = _read_json(json_path)
    meta = info["meta"]
    prefix, normal = str(meta.get("prefix") or ""), str(meta["normal_class"])
    full_names = {**REALIAD_DEFECT_CLASSES, **(meta.get("short_to_full_class_map") or {})}
    problems: list[Problem] = []
    seen: set[Path] = set()
    splits: dict[str, list[Sample]] = {"train": [], "test": []}
    for split in ("train", "test"):
        for i, entry in enumerate(info[split]):
            where = f"{json_path.name} {split}[{i}]"
            image = folder / prefix / str(entry["image_path"])
            if entry["category"] != category:
                problems.append(Problem("invalid_split", json_path,
                                        f"{where} is of object {entry['category']!r}"))
            if image in seen:
                problems.append(Problem("invalid_split", image, f"{where}: listed twice"))
                continue
            seen.add(image)
            if not image.is_file():
                problems.append(Problem("missing_file", image,
                                        f"{where} points to a missing image"))
                continue
            code = str(entry["anomaly_class"])
            mask = folder / prefix / str(entry["mask_path"]) if entry["mask_path"] else None
            anomalous = split == "test" and code != normal and mask is not None
            if split == "train" and code != normal:
                problems.append(Problem("invalid_split", image,
                                        f"{where}: class {code!r} in the training split"))
            if not anomalous:
                splits[split].append(Sample(image, split, 0, GOOD, None, category))
                continue
            assert mask is not None
            if not mask.is_file():
                problems.append(Problem("mask_missing", mask,
                                        f"{where}: mask of {image.name} not found"))
                mask = None
            splits[split].append(Sample(image, split, 1, code, mask, category,
                                        defect_names=(str(full_names.get(code, code)),)))
    data = CategoryData(category, folder, splits["train"], splits["test"], True, "realiad")
    return data, problems
