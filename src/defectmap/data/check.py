"""Dataset integrity checks behind ``defectmap data check``, for every layout.

:func:`check_dataset` reads every category with its layout's reader (see
:mod:`defectmap.data.layouts`), then verifies every image of every split (PNG: CRC-32 of
every chunk up to ``IEND``, which finds truncated and corrupted files without
decompressing; other formats, or all with ``full=True``: a complete decode), decodes every
mask, compares the counts with the published ones (:mod:`defectmap.data.official`) and
reports, with paths, each of these problem kinds:

=======================  ==================================================================
``layout``               a required folder (``train/good``, ``test``) is missing
``missing_split``        a layout's own split folder (``validation/good``) is missing
``no_images``            a category has no training image or no test image
``unreadable_image``     an image cannot be read: not an image, truncated, corrupt, too big
``unreadable_mask``      a mask cannot be read
``mask_missing``         a defective image has no mask (when the layout has masks)
``mask_orphan``          a mask (or mask folder) has no matching image
``mask_size_mismatch``   a mask's width x height differs from its image's
``mask_not_binary``      a mask has more than one nonzero value (VisA masks hold class
                         indices and are binarised: not reported there)
``mask_empty``           a defective image's mask has no defect pixel
``mask_unknown_value``   a MVTec LOCO AD mask value that ``defects_config.json`` lacks
``invalid_config``       an invalid ``defects_config.json`` (MVTec LOCO AD)
``invalid_split``        a malformed split file or entry (VisA CSV, Real-IAD JSON)
``missing_file``         a split file entry points to a missing image
``label_mismatch``       VisA's split CSV and ``image_anno.csv`` disagree
``unlisted_file``        a VisA image that no split row lists
``mixed_modes``          a grayscale image among colour images of a category, or the
                         reverse (a model trained on one flags the other); the images of
                         the smaller group are listed
``unexpected_file``      a file or folder that does not belong to the layout
``count_mismatch``       an official category has other counts than published
=======================  ==================================================================

Files are checked in a few threads (Pillow releases the GIL while decoding).
"""

from __future__ import annotations

import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from defectmap.constants import MVTEC_AD2_CATEGORIES, MVTEC_AD2_TOTALS
from defectmap.data import layouts
from defectmap.data.io import check_image, read_mask_values
from defectmap.data.loco import check_loco_masks
from defectmap.data.mvtec import category_kind, is_category_dir, is_grayscale_category
from defectmap.data.official import DATASET_NAMES, found_counts, official_counts
from defectmap.data.realiad import is_realiad_root
from defectmap.data.records import GOOD, CategoryData, DefectConfig, Problem, Sample
from defectmap.data.visa import is_visa_root
from defectmap.errors import DatasetError, ImageReadError
from defectmap.metrics import label_regions
from defectmap.progress import ProgressCallback, track

__all__ = ["CategoryReport", "CheckReport", "Problem", "check_dataset"]


@dataclass
class CategoryReport:
    """What :func:`check_dataset` found for one category.

    Attributes
    ----------
    name, root, layout, has_masks : as in :class:`~defectmap.data.records.CategoryData`.
    kind : ``"texture"`` / ``"object"`` for official MVTec AD categories, else ``None``.
    official : whether published counts exist for this category (and were compared).
    grayscale : official MVTec AD colour flag; ``None`` for other categories.
    n_train : training images.
    test_counts : test images per folder (``good`` and each defect type).
    counts : images per ``"split/folder"`` over every split (``"validation/good"``,
        ``"test_private"``, ...), the keys :func:`official_counts` uses.
    n_masks : mask files paired to images.
    n_regions : defect regions: 8-connected components, or one per mask file in MVTec LOCO
        AD (where a mask is one defect).
    image_sizes : ``"WxH" -> count`` over all images.
    image_modes : Pillow mode (``"RGB"``, ``"L"``, ...) -> count over all images.
    problems : problems of this category.
    """

    name: str
    root: Path
    layout: str
    has_masks: bool
    kind: str | None
    official: bool
    grayscale: bool | None
    n_train: int = 0
    test_counts: dict[str, int] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    n_masks: int = 0
    n_regions: int = 0
    image_sizes: dict[str, int] = field(default_factory=dict)
    image_modes: dict[str, int] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)

    @property
    def n_test(self) -> int:
        """Number of test images."""
        return sum(self.test_counts.values())

    @property
    def dataset(self) -> str:
        """The dataset's name for this layout (``"MVTec LOCO AD"``)."""
        return DATASET_NAMES.get(self.layout, self.layout)

    def official_counts(self) -> dict[str, int] | None:
        """Published ``{"split/folder": count}`` of an official category, else None.

        The keys are those found on disk plus the published ones (0 when not published).
        """
        expected = official_counts(self.layout, self.name)
        if expected is None:
            return None
        keys = list(self.counts) + [k for k in expected if k not in self.counts]
        return {k: expected.get(k, 0) for k in keys if k in expected or "/" in k}

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "name": self.name,
            "root": str(self.root),
            "layout": self.layout,
            "kind": self.kind,
            "official": self.official,
            "grayscale": self.grayscale,
            "has_masks": self.has_masks,
            "n_train": self.n_train,
            "n_test": self.n_test,
            "test_counts": dict(self.test_counts),
            "counts": dict(self.counts),
            "official_counts": self.official_counts(),
            "n_masks": self.n_masks,
            "n_regions": self.n_regions,
            "image_sizes": dict(self.image_sizes),
            "image_modes": dict(self.image_modes),
            "problems": [p.to_dict() for p in self.problems],
        }


@dataclass
class CheckReport:
    """Result of :func:`check_dataset`: one :class:`CategoryReport` per category."""

    root: Path
    categories: list[CategoryReport]

    @property
    def problems(self) -> list[Problem]:
        """All problems of all categories."""
        return [p for c in self.categories for p in c.problems]

    @property
    def ok(self) -> bool:
        """True when no problem was found."""
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (``ok``, ``n_problems``, ``categories``)."""
        return {
            "root": str(self.root),
            "ok": self.ok,
            "n_problems": len(self.problems),
            "categories": [c.to_dict() for c in self.categories],
        }


@dataclass
class _SampleResult:
    size: tuple[int, int] | None = None
    mode: str | None = None
    grayscale: bool | None = None
    n_masks: int = 0
    n_regions: int = 0
    problems: list[Problem] = field(default_factory=list)


def _mixed_modes(samples: list[Sample], grayscale: list[bool | None]) -> list[Problem]:
    """One ``mixed_modes`` problem per image of the smaller colour group, if there are two."""
    n_gray = sum(g is True for g in grayscale)
    n_colour = sum(g is False for g in grayscale)
    if not n_gray or not n_colour:
        return []
    odd = n_gray <= n_colour  # the grayscale images are the odd ones out (on a tie too)
    counts = f"{n_colour} colour, {n_gray} grayscale"
    what = "grayscale image among colour images" if odd else "colour image among grayscale images"
    return [Problem("mixed_modes", sample.path, f"{what} of this category ({counts})")
            for sample, g in zip(samples, grayscale, strict=True) if g is odd]


def _check_mask(path: Path, sample: Sample, size: tuple[int, int] | None,
                binarised: bool, result: _SampleResult) -> None:
    """Decode one single-defect-value mask and add what is wrong with it to ``result``."""
    try:
        values = read_mask_values(path)
    except ImageReadError as exc:
        result.problems.append(Problem.from_error("unreadable_mask", path, exc))
        return
    mask_size = (values.shape[1], values.shape[0])
    if size is not None and mask_size != size:
        result.problems.append(Problem(
            "mask_size_mismatch", path,
            f"mask is {mask_size[0]}x{mask_size[1]} but image {sample.path.name} is "
            f"{size[0]}x{size[1]}"))
    nonzero = np.unique(values[values > 0])
    if nonzero.size > 1 and not binarised:
        shown = ", ".join(str(v) for v in nonzero[:5])
        result.problems.append(Problem(
            "mask_not_binary", path,
            f"mask has {nonzero.size} different nonzero values ({shown}...), expected 0 and one "
            f"defect value such as 255"))
    if nonzero.size == 0:
        result.problems.append(Problem(
            "mask_empty", path, f"mask of defective image {sample.path.name} has no defect pixel"))
    else:
        result.n_regions += label_regions(values > 0)[1]


def _check_sample(sample: Sample, full: bool, layout: str,
                  defects: tuple[DefectConfig, ...]) -> _SampleResult:
    """Verify one image (and decode its masks) and report what is wrong with them."""
    result = _SampleResult()
    try:
        info = check_image(sample.path, full=full)
        result.size, result.mode = (info.width, info.height), info.mode
        result.grayscale = info.grayscale
    except ImageReadError as exc:
        result.problems.append(Problem.from_error("unreadable_image", sample.path, exc))
    if not sample.masks:
        return result
    result.n_masks = len(sample.masks)
    if layout == "loco":  # one defect per file, its value from defects_config.json
        problems, found = check_loco_masks(sample, defects, result.size)
        result.problems += problems
        result.n_regions += len(found)
        return result
    for path in sample.masks:
        _check_mask(path, sample, result.size, layout == "visa", result)
    return result


def _count_problem(data: CategoryData, key: str, found: int, expected: int,
                   dataset: str) -> Problem:
    split, _, folder = key.partition("/")
    what = {"train": f"{found} training images", "validation": f"{found} validation images",
            "test": f"{found} test images in test/{folder}/"}.get(split,
                                                                 f"{found} images in {key}/")
    if data.layout == "visa":  # the split file decides the counts
        path = data.root.parent / "split_csv" / "1cls.csv"
    elif data.layout == "mvtec_ad2" and split == "test":
        path = data.root / "test_public" / folder
    else:
        path = data.root / key
    return Problem("count_mismatch", path, f"{what}, official {dataset} count is {expected}")


def _compare_official(report: CategoryReport, data: CategoryData) -> None:
    expected = report.official_counts()
    assert expected is not None
    for key, n in expected.items():
        found = report.counts.get(key, 0)
        if found != n:
            report.problems.append(_count_problem(data, key, found, n, report.dataset))
    if data.layout == "mvtec" and report.has_masks:
        n_masks = sum(n for k, n in expected.items() if k.startswith("test/") and k != "test/good")
        if report.n_masks != n_masks:
            report.problems.append(Problem(
                "count_mismatch", data.root / "ground_truth",
                f"{report.n_masks} masks, official {report.dataset} count is {n_masks}"))


def _check_category(
    root: Path, category: str | None, workers: int, full: bool,
    progress: ProgressCallback | None,
) -> CategoryReport:
    data, problems = layouts.scan_any(root, category)
    official = official_counts(data.layout, data.name) is not None
    mvtec = data.layout == "mvtec" and official
    report = CategoryReport(
        name=data.name, root=data.root, layout=data.layout, has_masks=data.has_masks,
        kind=category_kind(data.name) if mvtec else None, official=official,
        grayscale=is_grayscale_category(data.name) if mvtec else None,
        problems=list(problems),
    )
    report.n_train = len(data.train)
    counts = Counter(s.defect_type for s in data.test)
    report.test_counts = dict(sorted(counts.items(), key=lambda kv: (kv[0] != GOOD, kv[0])))
    report.counts = found_counts(data)
    if not data.train:
        report.problems.append(Problem("no_images", data.root, "no training images"))
    if not data.test:
        report.problems.append(Problem("no_images", data.root, "no test images"))

    samples = data.train + data.validation + data.test + [
        s for split in data.unlabeled.values() for s in split]
    sizes: Counter[str] = Counter()
    modes: Counter[str] = Counter()
    grayscale: list[bool | None] = []
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = pool.map(lambda s: _check_sample(s, full, data.layout, data.defects), samples)
        for result in track(results, f"checking {data.name}", progress, len(samples)):
            report.problems += result.problems
            grayscale.append(result.grayscale)
            report.n_masks += result.n_masks
            report.n_regions += result.n_regions
            if result.size is not None:
                sizes[f"{result.size[0]}x{result.size[1]}"] += 1
            if result.mode is not None:
                modes[result.mode] += 1
    report.image_sizes = dict(sizes.most_common())
    report.image_modes = dict(modes.most_common())
    report.problems += _mixed_modes(samples, grayscale)
    if official:
        _compare_official(report, data)
    return report


def _ad2_totals(report: CheckReport) -> None:
    """With all eight MVTec AD 2 categories checked, compare the dataset totals too."""
    cats = [c for c in report.categories if c.layout == "mvtec_ad2"]
    if sorted(c.name for c in cats) != sorted(MVTEC_AD2_CATEGORIES):
        return
    found = {"train": sum(c.counts.get("train/good", 0) for c in cats),
             "validation": sum(c.counts.get("validation/good", 0) for c in cats),
             "good": sum(c.counts.get("test/good", 0) for c in cats),
             "bad": sum(c.counts.get("test/bad", 0) for c in cats)}
    for key, n in MVTEC_AD2_TOTALS.items():
        if found[key] != n:
            cats[0].problems.append(Problem(
                "count_mismatch", report.root,
                f"{found[key]} {key} images over the 8 categories, official MVTec AD 2 total "
                f"is {n}"))


def check_dataset(
    root: str | Path,
    categories: list[str] | None = None,
    full: bool = False,
    workers: int | None = None,
    progress: ProgressCallback | None = None,
) -> CheckReport:
    """Validate a dataset folder and return what was found.

    Parameters
    ----------
    root : a dataset root holding category folders, or one category folder itself.
    categories : names of the categories under ``root`` to check (default: all found).
        Ignored when ``root`` is itself a category folder.
    full : decode every image's pixels; by default PNG images are verified against their
        chunk CRC-32 checksums instead (finds truncation and corruption, ~50x faster),
        other formats are always decoded. Masks are always decoded.
    workers : decoding threads (default: ``min(4, cpu count)``).
    progress : reports ``(task, done, total)`` (see :mod:`defectmap.progress`).

    Returns
    -------
    CheckReport
        Per-category counts, sizes, modes, masks and regions, and every problem with its path.

    Raises
    ------
    DatasetError
        ``root`` does not exist, holds no category, or a requested category is missing.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: dataset folder not found")
    workers = workers or min(4, os.cpu_count() or 1)
    root_level = is_visa_root(root) or is_realiad_root(root)
    if not root_level and layouts.is_category_folder(root):
        targets: list[tuple[Path, str | None]] = [(root, None)]
    else:
        names = categories or layouts.list_categories(root)
        if not names:
            raise DatasetError(f"{root}: no category folders found (expected e.g. {root}/bottle)")
        if not root_level:
            for name in names:
                if not is_category_dir(root / name):
                    raise DatasetError(f"{root / name}: category folder not found")
        targets = [(root, name) for name in names]
    report = CheckReport(root, [_check_category(base, name, workers, full, progress)
                                for base, name in targets])
    _ad2_totals(report)
    return report
