"""Dataset layouts on disk: MVTec AD and simpler folders for a user's own product.

Layouts
-------
``mvtec`` (the MVTec AD layout; any category name works, not only the official 15)::

    CATEGORY/train/good/*.png                      defect-free training images
    CATEGORY/test/good/*.png                       defect-free test images
    CATEGORY/test/<defect type>/*.png              defective test images
    CATEGORY/ground_truth/<defect type>/<stem>_mask.png

Masks are paired to images **by file stem** (``test/crack/007.png`` <->
``ground_truth/crack/007_mask.png``), never by list position; an image without its mask or a
mask without its image is an error naming the path. When ``ground_truth/`` does not exist at
all the category has ``has_masks=False`` (image-level evaluation only).

``folders`` (image-level inspection only, no masks)::

    CATEGORY/good/*.png                            defect-free images
    CATEGORY/<defect name>/*.png                   defective images (e.g. ``defect/``)

How ``folders`` is split: the images of ``good/`` are sorted by file name and every fifth one
(positions 4, 9, 14, ...) is held out as a good *test* image; the others are training images.
All images of the other folders are defective test images whose defect type is the folder
name. The split depends only on file names, so it is the same on every machine.

Image files are those with a suffix in :data:`~defectmap.data.io.IMAGE_EXTENSIONS`
(case-insensitive). Names starting with ``.`` (``.DS_Store``) are ignored everywhere; ``*.txt``
and ``*.md`` files at the top of a category (MVTec's ``license.txt``, ``readme.txt``) are
allowed. Anything else is reported as an unexpected file by ``defectmap data check``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from defectmap.constants import (
    GRAYSCALE_CATEGORIES,
    MVTEC_CATEGORIES,
    OBJECT_CATEGORIES,
    TEXTURE_CATEGORIES,
)
from defectmap.data.io import IMAGE_EXTENSIONS, read_mask
from defectmap.data.records import GOOD, CategoryData, Problem, Sample
from defectmap.errors import DatasetError

__all__ = [
    "FOLDERS_HOLDOUT_EVERY",
    "Problem",
    "category_kind",
    "is_category_dir",
    "is_grayscale_category",
    "list_categories",
    "list_images",
    "load_category",
    "read_sample_mask",
    "scan_category",
    "select_categories",
]

#: In the ``folders`` layout, every n-th good image (by sorted name) becomes a test image.
FOLDERS_HOLDOUT_EVERY = 5
_MASK_SUFFIX = "_mask"
_ALLOWED_TOP_LEVEL_SUFFIXES = (".txt", ".md")
#: Problem kinds that make :func:`load_category` fail (the others only concern ``check``).
_FATAL_KINDS = ("layout", "mask_missing", "mask_orphan")


def category_kind(name: str) -> str | None:
    """``"texture"`` or ``"object"`` for an official MVTec AD category, ``None`` otherwise."""
    if name in TEXTURE_CATEGORIES:
        return "texture"
    if name in OBJECT_CATEGORIES:
        return "object"
    return None


def is_grayscale_category(name: str) -> bool:
    """Whether an official MVTec AD category is grayscale (grid, screw, zipper)."""
    return name in GRAYSCALE_CATEGORIES


def _visible(path: Path) -> bool:
    return not path.name.startswith(".")


def _is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS


def list_images(folder: str | Path, what: str = "image folder") -> list[Path]:
    """The image files directly in ``folder``, sorted by name (subfolders are not read).

    Raises
    ------
    DatasetError
        ``folder`` is not a folder or holds no image file (the message names ``what``).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetError(f"{folder}: {what} not found or not a folder")
    images = sorted(p for p in folder.iterdir() if _visible(p) and _is_image(p))
    if not images:
        raise DatasetError(f"{folder}: {what} holds no image file "
                           f"({', '.join(sorted(IMAGE_EXTENSIONS))})")
    return images


def is_category_dir(folder: str | Path) -> bool:
    """Whether ``folder`` looks like one category (has ``train/``, ``test/`` or ``good/``)."""
    folder = Path(folder)
    return any((folder / sub).is_dir() for sub in ("train", "test", GOOD))


def list_categories(root: str | Path) -> list[str]:
    """Sorted names of the category folders directly under a dataset root.

    Raises
    ------
    DatasetError
        ``root`` is not a folder.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: dataset root not found or not a folder")
    return sorted(p.name for p in root.iterdir()
                  if p.is_dir() and _visible(p) and is_category_dir(p))


def select_categories(
    root: str | Path, categories: Sequence[str] | None = None, all_categories: bool = False
) -> list[str]:
    """The categories to run under a dataset root: named, all 15 official, or those on disk.

    Parameters
    ----------
    root : dataset root holding one folder per category.
    categories : names to run (they may be missing on disk; the runner reports them).
    all_categories : the 15 official MVTec AD categories (missing ones included).

    Returns
    -------
    list of str
        ``categories`` as given, or :data:`~defectmap.constants.MVTEC_CATEGORIES`, or the
        category folders found under ``root`` (sorted).

    Raises
    ------
    DatasetError
        ``root`` is not a folder, both ``categories`` and ``all_categories`` are given, or
        nothing was named and ``root`` holds no category folder.
    """
    root = Path(root)
    if categories and all_categories:
        raise DatasetError("give either categories or all_categories, not both")
    if not root.is_dir():
        raise DatasetError(f"{root}: dataset root does not exist or is not a folder")
    if all_categories:
        return list(MVTEC_CATEGORIES)
    if categories:
        return list(categories)
    from defectmap.data.layouts import list_categories as any_layout

    found = any_layout(root)
    if not found:
        raise DatasetError(f"{root}: no category folders found")
    return found


def _images_in(folder: Path, problems: list[Problem]) -> list[Path]:
    """Image files of ``folder`` (sorted); anything else visible is an unexpected file."""
    images = []
    for entry in sorted(folder.iterdir()):
        if not _visible(entry):
            continue
        if _is_image(entry):
            images.append(entry)
        else:
            what = "folder" if entry.is_dir() else "file"
            problems.append(Problem("unexpected_file", entry,
                                    f"unexpected {what} in image folder {folder.name}/"))
    return images


def _subfolders(
    folder: Path, allowed_files: tuple[str, ...], problems: list[Problem]
) -> list[Path]:
    """Visible sub-folders of ``folder``; files not matching ``allowed_files`` are reported."""
    subs = []
    for entry in sorted(folder.iterdir()):
        if not _visible(entry):
            continue
        if entry.is_dir():
            subs.append(entry)
        elif not allowed_files or not entry.name.lower().endswith(allowed_files):
            problems.append(Problem("unexpected_file", entry,
                                    f"unexpected file in {folder.name}/ (expected folders)"))
    return subs


def _good_split(folder: Path, split: str, name: str, problems: list[Problem]) -> list[Sample]:
    """The good images of ``folder/split/good`` (a layout's train or validation split).

    A missing folder is a ``missing_split`` problem; other folders beside ``good/`` are
    unexpected.
    """
    good = folder / split / GOOD
    if not good.is_dir():
        problems.append(Problem("missing_split", good, f"missing folder {split}/good/"))
        return []
    for sub in _subfolders(folder / split, (), problems):
        if sub.name != GOOD:
            problems.append(Problem("unexpected_file", sub,
                                    f"unexpected folder: {split} images are good only"))
    return [Sample(p, split, 0, GOOD, None, name) for p in _images_in(good, problems)]


def _scan_mvtec(folder: Path, name: str, problems: list[Problem]) -> CategoryData:
    train_dir, test_dir, gt_dir = folder / "train", folder / "test", folder / "ground_truth"
    for sub in _subfolders(folder, _ALLOWED_TOP_LEVEL_SUFFIXES, problems):
        if sub.name not in ("train", "test", "ground_truth"):
            problems.append(Problem("unexpected_file", sub,
                                    "unexpected folder (expected train/, test/, ground_truth/)"))
    train: list[Sample] = []
    if not (train_dir / GOOD).is_dir():
        problems.append(Problem("layout", train_dir / GOOD, "missing folder train/good/"))
    else:
        for sub in _subfolders(train_dir, (), problems):
            if sub.name != GOOD:
                problems.append(Problem("unexpected_file", sub,
                                        "unexpected folder: training images are good only"))
        train = [Sample(p, "train", 0, GOOD, None, name)
                 for p in _images_in(train_dir / GOOD, problems)]

    has_masks = gt_dir.is_dir()
    test: list[Sample] = []
    test_types: list[str] = []
    if not test_dir.is_dir():
        problems.append(Problem("layout", test_dir, "missing folder test/"))
    else:
        for sub in _subfolders(test_dir, (), problems):
            defect = sub.name
            test_types.append(defect)
            masks = _mask_index(gt_dir / defect, problems) if has_masks and defect != GOOD else {}
            for image in _images_in(sub, problems):
                if defect == GOOD:
                    test.append(Sample(image, "test", 0, GOOD, None, name))
                    continue
                mask = masks.pop(image.stem, None) if has_masks else None
                if has_masks and mask is None:
                    expected = gt_dir / defect / f"{image.stem}{_MASK_SUFFIX}.png"
                    problems.append(Problem("mask_missing", expected,
                                            f"no mask for defective image {image}"))
                test.append(Sample(image, "test", 1, defect, mask, name))
            for stem, mask in sorted(masks.items()):
                problems.append(Problem("mask_orphan", mask,
                                        f"mask without a matching image {sub / stem}.*"))
    if has_masks:
        for sub in _subfolders(gt_dir, (), problems):
            if sub.name == GOOD or sub.name not in test_types:
                problems.append(Problem(
                    "mask_orphan", sub,
                    f"mask folder without a matching test/{sub.name}/ image folder"))
    return CategoryData(name, folder, train, test, has_masks, "mvtec")


def _mask_index(gt_sub: Path, problems: list[Problem]) -> dict[str, Path]:
    """Map image stem -> mask path for one ``ground_truth/<defect>/`` folder."""
    if not gt_sub.is_dir():
        return {}
    index: dict[str, Path] = {}
    for mask in _images_in(gt_sub, problems):
        if not mask.stem.endswith(_MASK_SUFFIX):
            problems.append(Problem("unexpected_file", mask,
                                    f"mask file name must be <image stem>{_MASK_SUFFIX}.png"))
            continue
        stem = mask.stem[: -len(_MASK_SUFFIX)]
        if stem in index:
            problems.append(Problem("unexpected_file", mask,
                                    f"second mask for image stem {stem!r}"))
            continue
        index[stem] = mask
    return index


def _scan_folders(folder: Path, name: str, problems: list[Problem]) -> CategoryData:
    goods = _images_in(folder / GOOD, problems)
    train: list[Sample] = []
    test: list[Sample] = []
    for i, image in enumerate(goods):
        held_out = i % FOLDERS_HOLDOUT_EVERY == FOLDERS_HOLDOUT_EVERY - 1
        split = "test" if held_out else "train"
        (test if held_out else train).append(Sample(image, split, 0, GOOD, None, name))
    for sub in _subfolders(folder, _ALLOWED_TOP_LEVEL_SUFFIXES, problems):
        if sub.name == GOOD:
            continue
        if sub.name == "ground_truth":
            problems.append(Problem("unexpected_file", sub,
                                    "ground_truth/ needs the MVTec layout (train/ and test/)"))
            continue
        test += [Sample(p, "test", 1, sub.name, None, name) for p in _images_in(sub, problems)]
    return CategoryData(name, folder, train, test, False, "folders")


def scan_category(folder: str | Path) -> tuple[CategoryData, list[Problem]]:
    """Read a category folder's layout, collecting problems instead of failing on them.

    Parameters
    ----------
    folder : the category folder (``.../mvtec_ad/bottle``).

    Returns
    -------
    data : CategoryData
        All samples found (defective samples whose mask is missing have ``mask_path=None``).
    problems : list of Problem
        Layout problems: ``layout``, ``mask_missing``, ``mask_orphan``, ``unexpected_file``.
        Pixel-level problems are found by :func:`defectmap.data.check.check_dataset`.

    Raises
    ------
    DatasetError
        ``folder`` does not exist or has neither layout.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetError(f"{folder}: category folder not found")
    problems: list[Problem] = []
    name = folder.resolve().name
    if (folder / "train").is_dir() or (folder / "test").is_dir():
        data = _scan_mvtec(folder, name, problems)
    elif (folder / GOOD).is_dir():
        data = _scan_folders(folder, name, problems)
    else:
        raise DatasetError(
            f"{folder}: not a category folder; expected train/ + test/ (MVTec AD layout) "
            f"or good/ + defect folders"
        )
    return data, problems


def load_category(root: str | Path, category: str | None = None) -> CategoryData:
    """Load one category's samples.

    Parameters
    ----------
    root : dataset root (with ``category`` given) or the category folder itself.
    category : category name under ``root``; ``None`` when ``root`` is the category folder.

    Returns
    -------
    CategoryData
        Training samples (good only) and test samples, sorted by path within each folder;
        ``layout`` is ``"mvtec"`` or ``"folders"``.

    Raises
    ------
    DatasetError
        Missing folders, no training image, a defective image without its mask or a mask
        without its image; the message names the path(s).
    """
    folder = Path(root) / category if category is not None else Path(root)
    if category is not None and category in MVTEC_CATEGORIES and not folder.is_dir():
        raise DatasetError(
            f"{folder}: MVTec AD category {category!r} not found; "
            f"run `defectmap data download {root} --category {category}`"
        )
    data, problems = scan_category(folder)
    fatal = [p for p in problems if p.kind in _FATAL_KINDS]
    if fatal:
        shown = "; ".join(f"{p.path}: {p.message}" for p in fatal[:5])
        more = f" (and {len(fatal) - 5} more)" if len(fatal) > 5 else ""
        raise DatasetError(f"{folder}: invalid dataset: {shown}{more}")
    if not data.train:
        raise DatasetError(f"{folder}: no training images found")
    return data


def read_sample_mask(sample: Sample, shape: tuple[int, int]) -> np.ndarray:
    """The ground-truth mask (H, W) bool of a test sample, checked against ``shape``.

    Good images and defective images without a mask file get an all-False mask of ``shape``
    (the anomaly map's or image's (H, W)); an image with several masks (MVTec LOCO AD) gets
    their union. A mask of another size is a :class:`DatasetError` naming the mask and its
    image.
    """
    union = np.zeros(shape, dtype=bool)
    if sample.label != 1:
        return union
    for path in sample.masks:
        mask = read_mask(path)
        if mask.shape != tuple(shape):
            raise DatasetError(
                f"{path}: mask is {mask.shape[1]}x{mask.shape[0]} (WxH) but "
                f"{sample.path} needs {shape[1]}x{shape[0]}"
            )
        union |= mask
    return union
