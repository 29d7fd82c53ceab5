"""Dataset integrity checks behind ``defectmap data check``.

:func:`check_dataset` scans every category's layout (see :mod:`defectmap.data.mvtec`), then
verifies every image (PNG: CRC-32 of every chunk up to ``IEND``, which finds truncated and
corrupted files without decompressing; other formats, or all with ``full=True``: a complete
decode), decodes every mask, and reports, with paths, each of these problem kinds:

=======================  ==================================================================
``layout``               a required folder (``train/good``, ``test``) is missing
``no_images``            a category has no training image or no test image
``unreadable_image``     an image cannot be read: not an image, truncated, corrupt, too big
``unreadable_mask``      a mask cannot be read
``mask_missing``         a defective image has no mask (when ``ground_truth/`` exists)
``mask_orphan``          a mask (or mask folder) has no matching image
``mask_size_mismatch``   a mask's width x height differs from its image's
``mask_not_binary``      a mask has more than one nonzero value
``mask_empty``           a defective image's mask has no defect pixel
``unexpected_file``      a file or folder that does not belong to the layout
``count_mismatch``       an official MVTec AD category has other counts than published
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

from defectmap.constants import MVTEC_TEST_COUNTS, MVTEC_TRAIN_COUNTS
from defectmap.data.io import read_mask_values, verify_image
from defectmap.data.mvtec import (
    Problem,
    category_kind,
    is_category_dir,
    is_grayscale_category,
    list_categories,
    scan_category,
)
from defectmap.data.records import GOOD, CategoryData, Sample
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
    kind : ``"texture"`` / ``"object"`` for official categories, else ``None``.
    official : whether the name is one of the 15 MVTec AD categories (counts compared).
    grayscale : official colour flag; ``None`` for other categories.
    n_train : training images.
    test_counts : test images per folder (``good`` and each defect type).
    n_masks : masks paired to images.
    n_regions : 8-connected defect regions over all masks.
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
    n_masks: int = 0
    n_regions: int = 0
    image_sizes: dict[str, int] = field(default_factory=dict)
    image_modes: dict[str, int] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)

    @property
    def n_test(self) -> int:
        """Number of test images."""
        return sum(self.test_counts.values())

    def official_counts(self) -> tuple[int, dict[str, int]] | None:
        """Published ``(train, {test folder: count})`` of an official category, else None.

        The test folders are those found on disk plus the published ones (0 when absent).
        """
        if not self.official:
            return None
        expected = MVTEC_TEST_COUNTS[self.name]
        folders = list(self.test_counts) + [f for f in expected if f not in self.test_counts]
        return MVTEC_TRAIN_COUNTS[self.name], {f: expected.get(f, 0) for f in folders}

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
    has_mask: bool = False
    n_regions: int = 0
    problems: list[Problem] = field(default_factory=list)


def _check_sample(sample: Sample, full: bool) -> _SampleResult:
    """Verify one image (and decode its mask) and report what is wrong with them."""
    result = _SampleResult()
    try:
        width, height, mode = verify_image(sample.path, full=full)
        result.size, result.mode = (width, height), mode
    except ImageReadError as exc:
        result.problems.append(Problem("unreadable_image", sample.path, str(exc)))
    if sample.mask_path is None:
        return result
    result.has_mask = True
    try:
        values = read_mask_values(sample.mask_path)
    except ImageReadError as exc:
        result.problems.append(Problem("unreadable_mask", sample.mask_path, str(exc)))
        return result
    mask_size = (values.shape[1], values.shape[0])
    if result.size is not None and mask_size != result.size:
        result.problems.append(Problem(
            "mask_size_mismatch", sample.mask_path,
            f"mask is {mask_size[0]}x{mask_size[1]} but image {sample.path.name} is "
            f"{result.size[0]}x{result.size[1]}"))
    nonzero = np.unique(values[values > 0])
    if nonzero.size > 1:
        shown = ", ".join(str(v) for v in nonzero[:5])
        result.problems.append(Problem(
            "mask_not_binary", sample.mask_path,
            f"mask has {nonzero.size} different nonzero values ({shown}...), expected 0 and one "
            f"defect value such as 255"))
    if nonzero.size == 0:
        result.problems.append(Problem(
            "mask_empty", sample.mask_path,
            f"mask of defective image {sample.path.name} has no defect pixel"))
    else:
        _, result.n_regions = label_regions(values > 0)
    return result


def _compare_official(report: CategoryReport, data: CategoryData) -> None:
    expected_test = MVTEC_TEST_COUNTS[report.name]
    expected_train = MVTEC_TRAIN_COUNTS[report.name]
    if report.n_train != expected_train:
        report.problems.append(Problem(
            "count_mismatch", data.root / "train" / GOOD,
            f"{report.n_train} training images, official MVTec AD count is {expected_train}"))
    for folder in sorted(set(expected_test) | set(report.test_counts)):
        found, expected = report.test_counts.get(folder, 0), expected_test.get(folder, 0)
        if found != expected:
            report.problems.append(Problem(
                "count_mismatch", data.root / "test" / folder,
                f"{found} test images in test/{folder}/, official MVTec AD count is {expected}"))
    expected_masks = sum(n for f, n in expected_test.items() if f != GOOD)
    if report.has_masks and report.n_masks != expected_masks:
        report.problems.append(Problem(
            "count_mismatch", data.root / "ground_truth",
            f"{report.n_masks} masks, official MVTec AD count is {expected_masks}"))


def _check_category(
    folder: Path, workers: int, full: bool, progress: ProgressCallback | None
) -> CategoryReport:
    data, problems = scan_category(folder)
    official = data.name in MVTEC_TRAIN_COUNTS and data.layout == "mvtec"
    report = CategoryReport(
        name=data.name, root=data.root, layout=data.layout, has_masks=data.has_masks,
        kind=category_kind(data.name), official=official,
        grayscale=is_grayscale_category(data.name) if official else None,
        problems=list(problems),
    )
    report.n_train = len(data.train)
    counts = Counter(s.defect_type for s in data.test)
    report.test_counts = dict(sorted(counts.items(), key=lambda kv: (kv[0] != GOOD, kv[0])))
    if not data.train:
        report.problems.append(Problem("no_images", data.root, "no training images"))
    if not data.test:
        report.problems.append(Problem("no_images", data.root, "no test images"))

    samples = data.train + data.test
    sizes: Counter[str] = Counter()
    modes: Counter[str] = Counter()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = pool.map(lambda s: _check_sample(s, full), samples)
        for result in track(results, f"checking {data.name}", progress, len(samples)):
            report.problems += result.problems
            report.n_masks += int(result.has_mask)
            report.n_regions += result.n_regions
            if result.size is not None:
                sizes[f"{result.size[0]}x{result.size[1]}"] += 1
            if result.mode is not None:
                modes[result.mode] += 1
    report.image_sizes = dict(sizes.most_common())
    report.image_modes = dict(modes.most_common())
    if official:
        _compare_official(report, data)
    return report


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
    if is_category_dir(root):
        folders = [root]
    else:
        names = categories or list_categories(root)
        if not names:
            raise DatasetError(f"{root}: no category folders found (expected e.g. {root}/bottle)")
        folders = []
        for name in names:
            if not is_category_dir(root / name):
                raise DatasetError(f"{root / name}: category folder not found")
            folders.append(root / name)
    return CheckReport(root, [_check_category(f, workers, full, progress) for f in folders])
