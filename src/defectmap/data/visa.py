"""The raw VisA layout, split by the official ``split_csv/1cls.csv`` (no conversion step).

Layout (as published in ``VisA_20220922.tar``)::

    ROOT/split_csv/1cls.csv                        object,split,label,image,mask
    ROOT/OBJECT/image_anno.csv                     image,label,mask (defect names)
    ROOT/OBJECT/Data/Images/Normal/*.JPG
    ROOT/OBJECT/Data/Images/Anomaly/*.JPG
    ROOT/OBJECT/Data/Masks/Anomaly/*.png           class indices 1..k, 0 = background

The split CSV decides everything: ``train,normal`` rows are training images, ``test,normal``
good test images and ``test,anomaly`` defective test images (defect type ``"bad"``, as in
the 1-class layout that spot-diff's ``prepare_data.py`` builds) with their mask. Paths in
the CSV are relative to ``ROOT``. Masks hold class indices, not 0/255: they are binarised
(nonzero = defect), as ``prepare_data.py`` does. ``image_anno.csv`` gives each anomalous
image's defect names (``"melt, scratch"``), kept in ``Sample.defect_names``.

Problems (kinds): ``missing_file`` (a CSV row points to a missing image), ``mask_missing``,
``invalid_split`` (a malformed CSV or row), ``label_mismatch`` (the split CSV and
``image_anno.csv`` disagree), ``unlisted_file`` (an image of the object that no row lists).
"""

from __future__ import annotations

import csv
from pathlib import Path

from defectmap.data.mvtec import _is_image, _visible
from defectmap.data.records import GOOD, CategoryData, Problem, Sample
from defectmap.errors import DatasetError

__all__ = [
    "BAD",
    "SPLIT_CSV",
    "find_visa_root",
    "is_visa_root",
    "read_split_csv",
    "scan_visa",
    "visa_categories",
]

BAD = "bad"
SPLIT_CSV = Path("split_csv") / "1cls.csv"
_HEADER = ["object", "split", "label", "image", "mask"]
_ANNO_HEADER = ["image", "label", "mask"]


def is_visa_root(root: str | Path) -> bool:
    """Whether ``root`` holds VisA's ``split_csv/1cls.csv``."""
    return (Path(root) / SPLIT_CSV).is_file()


def find_visa_root(folder: str | Path) -> Path | None:
    """The VisA root of ``folder``: itself, or its parent for an object folder."""
    folder = Path(folder)
    for candidate in (folder, folder.parent):
        if is_visa_root(candidate):
            return candidate
    return None


def read_split_csv(root: str | Path) -> list[dict[str, str]]:
    """The rows of ``ROOT/split_csv/1cls.csv`` as dicts, header checked.

    Raises
    ------
    DatasetError
        Missing file, unreadable CSV or a header other than
        ``object,split,label,image,mask``.
    """
    path = Path(root) / SPLIT_CSV
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            rows = list(csv.reader(fh))
    except FileNotFoundError as exc:
        raise DatasetError(f"{path}: VisA split file not found") from exc
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DatasetError(f"{path}: not a readable CSV file ({exc})") from exc
    if not rows or [c.strip() for c in rows[0]] != _HEADER:
        raise DatasetError(f"{path}: header must be {','.join(_HEADER)}")
    out = []
    for number, row in enumerate(rows[1:], start=2):
        if not row:
            continue
        if len(row) != len(_HEADER):
            raise DatasetError(f"{path}: line {number} has {len(row)} fields, expected 5")
        out.append({**dict(zip(_HEADER, (c.strip() for c in row), strict=True)),
                    "line": str(number)})
    return out


def visa_categories(root: str | Path) -> list[str]:
    """Sorted object names listed in the split CSV."""
    return sorted({row["object"] for row in read_split_csv(root)})


def _annotations(path: Path, problems: list[Problem]) -> dict[str, str]:
    """``image_anno.csv``: image path (relative to ROOT) -> label string."""
    if not path.is_file():
        return {}
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            rows = list(csv.reader(fh))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        problems.append(Problem("invalid_split", path, f"not a readable CSV file ({exc})"))
        return {}
    if rows and [c.strip() for c in rows[0]] == _ANNO_HEADER:
        rows = rows[1:]
    return {row[0].strip(): row[1].strip() for row in rows if len(row) >= 2}


def _names(label: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in label.split(",") if part.strip())


def scan_visa(root: str | Path, category: str) -> tuple[CategoryData, list[Problem]]:
    """Read one VisA object through the official 1-class split.

    Parameters
    ----------
    root : the VisA root (holding ``split_csv/``).
    category : the object name (``"pcb1"``).

    Returns
    -------
    data : CategoryData
        ``layout="visa"``, ``root`` the object folder; ``train`` (normal), ``test`` (good and
        ``"bad"`` with ``mask_path`` and ``defect_names``).
    problems : list of Problem

    Raises
    ------
    DatasetError
        The split CSV is missing or malformed, or lists no row for ``category``.
    """
    root = Path(root)
    rows = [r for r in read_split_csv(root) if r["object"] == category]
    if not rows:
        raise DatasetError(f"{root / SPLIT_CSV}: no row for object {category!r}")
    folder = root / category
    csv_path = root / SPLIT_CSV
    problems: list[Problem] = []
    annotations = _annotations(folder / "image_anno.csv", problems)
    train: list[Sample] = []
    test: list[Sample] = []
    listed: set[Path] = set()
    for row in rows:
        where = f"line {row['line']} of {csv_path}"
        split, label = row["split"], row["label"]
        if split not in ("train", "test") or label not in ("normal", "anomaly"):
            problems.append(Problem("invalid_split", csv_path,
                                    f"{where}: split must be train/test and label "
                                    f"normal/anomaly, got {split!r}, {label!r}"))
            continue
        if split == "train" and label == "anomaly":
            problems.append(Problem("invalid_split", csv_path,
                                    f"{where}: an anomalous image in the training split"))
            continue
        image = root / row["image"]
        if image in listed:
            problems.append(Problem("invalid_split", image, f"{where}: image listed twice"))
            continue
        listed.add(image)
        if not image.is_file():
            problems.append(Problem("missing_file", image, f"{where} points to a missing image"))
            continue
        anno = annotations.get(row["image"])
        if anno is not None and (anno == "normal") != (label == "normal"):
            problems.append(Problem(
                "label_mismatch", image,
                f"{where} says {label!r} but image_anno.csv says {anno!r}"))
        if label == "normal":
            target = train if split == "train" else test
            target.append(Sample(image, split, 0, GOOD, None, category))
            continue
        mask = root / row["mask"] if row["mask"] else None
        if mask is None or not mask.is_file():
            problems.append(Problem("mask_missing", mask or image,
                                    f"{where}: no mask for anomalous image {image}"))
            mask = None
        test.append(Sample(image, "test", 1, BAD, mask, category,
                           defect_names=_names(anno) if anno and anno != "normal" else ()))
    images_dir = folder / "Data" / "Images"
    if images_dir.is_dir():
        for sub in sorted(images_dir.iterdir()):
            if not sub.is_dir():
                continue
            for path in sorted(sub.iterdir()):
                if _visible(path) and _is_image(path) and path not in listed:
                    problems.append(Problem("unlisted_file", path,
                                            f"image not listed in {csv_path}"))
    data = CategoryData(category, folder, sorted(train, key=lambda s: s.path),
                        sorted(test, key=lambda s: (s.defect_type != GOOD, s.path)),
                        True, "visa")
    return data, problems
