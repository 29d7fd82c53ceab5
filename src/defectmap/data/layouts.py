"""Which layout a dataset folder is in, and one reader entry point for all of them.

========== ============================================= ===================================
layout     recognised by                                 reader
========== ============================================= ===================================
visa       ``ROOT/split_csv/1cls.csv``                   :mod:`defectmap.data.visa`
realiad    ``ROOT/realiad_<res>/`` or ``realiad_jsons*`` :mod:`defectmap.data.realiad`
mvtec_ad2  ``CATEGORY/test_public/``                     :mod:`defectmap.data.mvtec_ad2`
loco       ``CATEGORY/defects_config.json`` or           :mod:`defectmap.data.loco`
           ``test/{logical,structural}_anomalies/``
mvtec      ``CATEGORY/train/`` or ``test/``              :mod:`defectmap.data.mvtec`
folders    ``CATEGORY/good/``                            :mod:`defectmap.data.mvtec`
========== ============================================= ===================================

VisA and Real-IAD keep their split files at the dataset root, so ``root`` + ``category`` is
the natural address for every layout; a category folder alone works too (its parent, or for
Real-IAD its grandparent, is then taken as the root).
"""

from __future__ import annotations

from pathlib import Path

from defectmap.data import loco, mvtec, mvtec_ad2, realiad, visa
from defectmap.data.records import CategoryData, Problem
from defectmap.errors import DatasetError

__all__ = ["FATAL_KINDS", "LAYOUTS", "detect_layout", "is_category_folder", "list_categories",
           "load_category", "scan_any"]

LAYOUTS = ("mvtec", "folders", "loco", "mvtec_ad2", "visa", "realiad")
#: Problem kinds that make :func:`load_category` fail (the others only concern ``check``).
FATAL_KINDS = ("layout", "mask_missing", "mask_orphan", "invalid_config", "missing_file",
               "invalid_split")


def _split_root(root: Path, category: str | None) -> tuple[Path, str | None, str | None]:
    """(dataset root, category, layout) for the root-level layouts, else layout None."""
    if category is not None:
        if visa.is_visa_root(root):
            return root, category, "visa"
        if realiad.is_realiad_root(root):
            return root, category, "realiad"
        return root, category, None
    if visa.is_visa_root(root.parent) and (root / "Data").is_dir():
        return root.parent, root.name, "visa"
    if root.parent.name.startswith("realiad_") and realiad.is_realiad_root(root.parent.parent):
        return root.parent.parent, root.name, "realiad"
    return root, None, None


def is_category_folder(folder: str | Path) -> bool:
    """Whether ``folder`` is itself one category, in any layout (not a dataset root)."""
    folder = Path(folder)
    return _split_root(folder, None)[2] is not None or mvtec.is_category_dir(folder)


def detect_layout(root: str | Path, category: str | None = None) -> str:
    """The layout name (one of :data:`LAYOUTS`) of ``root`` / ``category``.

    Raises
    ------
    DatasetError
        The folder does not exist or is in no known layout.
    """
    root = Path(root)
    base, name, layout = _split_root(root, category)
    if layout is not None:
        return layout
    folder = base / name if name is not None else base
    if not folder.is_dir():
        raise DatasetError(f"{folder}: category folder not found")
    if mvtec_ad2.is_mvtec_ad2_category(folder):
        return "mvtec_ad2"
    if loco.is_loco_category(folder):
        return "loco"
    if (folder / "train").is_dir() or (folder / "test").is_dir():
        return "mvtec"
    if (folder / "good").is_dir():
        return "folders"
    raise DatasetError(
        f"{folder}: not a dataset category in a known layout (MVTec AD, MVTec LOCO AD, "
        f"MVTec AD 2, VisA, Real-IAD or good/ + defect folders)")


def scan_any(
    root: str | Path, category: str | None = None
) -> tuple[CategoryData, list[Problem]]:
    """Read a category in whatever layout it is in, collecting problems.

    Parameters
    ----------
    root : the dataset root (with ``category``) or the category folder itself.
    category : category name under ``root``.

    Returns
    -------
    (CategoryData, list of Problem)
        As the layout's reader returns them (``CategoryData.layout`` says which).
    """
    root = Path(root)
    base, name, layout = _split_root(root, category)
    layout = layout or detect_layout(root, category)
    if layout == "visa":
        assert name is not None
        return visa.scan_visa(base, name)
    if layout == "realiad":
        assert name is not None
        return realiad.scan_realiad(base, name)
    folder = base / name if name is not None else base
    if layout == "mvtec_ad2":
        return mvtec_ad2.scan_mvtec_ad2(folder)
    if layout == "loco":
        return loco.scan_loco(folder)
    return mvtec.scan_category(folder)


def load_category(
    root: str | Path, category: str | None = None, require_train: bool = True
) -> CategoryData:
    """Load one category's samples, in any layout of :data:`LAYOUTS`.

    Parameters
    ----------
    root, category : as in :func:`scan_any`.
    require_train : fail when there is no training image (False to score maps of a dataset
        that ships only its test split).

    Raises
    ------
    DatasetError
        A problem of :data:`FATAL_KINDS` (missing folders or files, masks missing or
        without an image, an invalid defect configuration or split file) or no training
        image; the message names the path(s).
    """
    data, problems = scan_any(root, category)
    fatal = [p for p in problems if p.kind in FATAL_KINDS]
    if fatal:
        shown = "; ".join(f"{p.path}: {p.message}" for p in fatal[:5])
        more = f" (and {len(fatal) - 5} more)" if len(fatal) > 5 else ""
        raise DatasetError(f"{data.root}: invalid {data.layout} dataset: {shown}{more}")
    if require_train and not data.train:
        raise DatasetError(f"{data.root}: no training images found")
    return data


def list_categories(root: str | Path) -> list[str]:
    """Sorted category names under a dataset root, in any layout."""
    root = Path(root)
    if visa.is_visa_root(root):
        return visa.visa_categories(root)
    if realiad.is_realiad_root(root):
        return realiad.realiad_categories(root)
    return mvtec.list_categories(root)
