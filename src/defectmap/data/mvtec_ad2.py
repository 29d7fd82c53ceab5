"""The MVTec AD 2 layout and the upload layout of MVTec's benchmark server.

Dataset layout (as published in ``mvtec_ad_2.tar.gz``)::

    CATEGORY/train/good/*.png
    CATEGORY/validation/good/*.png                 defect-free, for thresholds
    CATEGORY/test_public/good/*.png
    CATEGORY/test_public/bad/*.png
    CATEGORY/test_public/ground_truth/bad/<stem>_mask.png
    CATEGORY/test_private/*.png                    no labels: predict only
    CATEGORY/test_private_mixed/*.png              no labels: predict only

Upload layout (what ``check_and_prepare_data_for_upload.py`` of MVTec's public code utils
accepts; :func:`write_submission` writes it, :func:`check_submission` applies the same
checks)::

    SUBMISSION/anomaly_images/CATEGORY/test_private/<stem>.tiff          float16, 2-D
    SUBMISSION/anomaly_images/CATEGORY/test_private_mixed/<stem>.tiff
    SUBMISSION/anomaly_images_thresholded/CATEGORY/<split>/<stem>.png    optional, 0 / 255

The official file names are ``NNN_regular`` in ``test_private`` and ``NNN_mixed`` in
``test_private_mixed``, the stems of the images there.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from defectmap.constants import MVTEC_AD2_PRIVATE_COUNTS, MVTEC_AD2_PRIVATE_SPLITS
from defectmap.data.mvtec import _good_split, _images_in, _subfolders
from defectmap.data.records import GOOD, UNKNOWN_LABEL, CategoryData, Problem, Sample
from defectmap.errors import DatasetError
from defectmap.files import write_bytes

__all__ = [
    "BAD",
    "check_submission",
    "is_mvtec_ad2_category",
    "scan_mvtec_ad2",
    "submission_paths",
    "write_submission",
]

BAD = "bad"
_MASK_SUFFIX = "_mask"
_TOP_LEVEL = ("train", "validation", "test_public", *MVTEC_AD2_PRIVATE_SPLITS)
_FLOAT16_MAX = float(np.finfo(np.float16).max)


def is_mvtec_ad2_category(folder: str | Path) -> bool:
    """Whether ``folder`` is a category in the MVTec AD 2 layout (has ``test_public/``)."""
    return (Path(folder) / "test_public").is_dir()


def _public_test(folder: Path, name: str, problems: list[Problem]) -> list[Sample]:
    public = folder / "test_public"
    gt = public / "ground_truth" / BAD
    test: list[Sample] = []
    for sub in _subfolders(public, (), problems):
        if sub.name not in (GOOD, BAD, "ground_truth"):
            problems.append(Problem("unexpected_file", sub,
                                    "unexpected folder (expected good/, bad/, ground_truth/)"))
    if (public / GOOD).is_dir():
        test += [Sample(p, "test", 0, GOOD, None, name)
                 for p in _images_in(public / GOOD, problems)]
    else:
        problems.append(Problem("layout", public / GOOD, "missing folder test_public/good/"))
    masks: dict[str, Path] = {}
    if gt.is_dir():
        for file in _images_in(gt, problems):
            if not file.stem.endswith(_MASK_SUFFIX):
                problems.append(Problem("unexpected_file", file,
                                        f"mask file name must be <image stem>{_MASK_SUFFIX}.png"))
                continue
            masks[file.stem[: -len(_MASK_SUFFIX)]] = file
    if (public / BAD).is_dir():
        for image in _images_in(public / BAD, problems):
            mask = masks.pop(image.stem, None)
            if mask is None:
                problems.append(Problem("mask_missing", gt / f"{image.stem}{_MASK_SUFFIX}.png",
                                        f"no mask for defective image {image}"))
            test.append(Sample(image, "test", 1, BAD, mask, name))
    else:
        problems.append(Problem("layout", public / BAD, "missing folder test_public/bad/"))
    for stem, mask in sorted(masks.items()):
        problems.append(Problem("mask_orphan", mask,
                                f"mask without a matching image test_public/bad/{stem}.*"))
    return test


def scan_mvtec_ad2(folder: str | Path) -> tuple[CategoryData, list[Problem]]:
    """Read a MVTec AD 2 category, collecting problems instead of failing on them.

    Returns
    -------
    data : CategoryData
        ``layout="mvtec_ad2"``: ``train``, ``validation``, ``test`` (``test_public``, defect
        type ``"good"`` / ``"bad"``), and ``unlabeled`` with the images of
        ``test_private`` and ``test_private_mixed`` (label :data:`UNKNOWN_LABEL`).
    problems : list of Problem
        ``layout``, ``mask_missing``, ``mask_orphan``, ``unexpected_file``.
    """
    folder = Path(folder)
    name = folder.resolve().name
    problems: list[Problem] = []
    for sub in _subfolders(folder, (".txt", ".md"), problems):
        if sub.name not in _TOP_LEVEL:
            problems.append(Problem("unexpected_file", sub,
                                    f"unexpected folder (expected {', '.join(_TOP_LEVEL)})"))
    train = _good_split(folder, "train", name, problems)
    validation = _good_split(folder, "validation", name, problems)
    test = _public_test(folder, name, problems)
    unlabeled = {}
    for split in MVTEC_AD2_PRIVATE_SPLITS:
        if (folder / split).is_dir():
            unlabeled[split] = [Sample(p, split, UNKNOWN_LABEL, "unknown", None, name)
                                for p in _images_in(folder / split, problems)]
    data = CategoryData(name, folder, train, test, True, "mvtec_ad2", validation=validation,
                        unlabeled=unlabeled)
    return data, problems


def submission_paths(out: str | Path, category: str, split: str, stem: str) -> tuple[Path, Path]:
    """Where the map and the thresholded PNG of one private test image go in the upload."""
    out = Path(out)
    return (out / "anomaly_images" / category / split / f"{stem}.tiff",
            out / "anomaly_images_thresholded" / category / split / f"{stem}.png")


def _float16(anomaly_map: np.ndarray) -> np.ndarray:
    """The map as float16; values beyond float16's range are clipped to +-65504."""
    arr = np.asarray(anomaly_map, dtype=np.float64)
    if arr.ndim != 2 or not np.isfinite(arr).all():
        raise DatasetError(f"a map must be 2-D and finite, got shape {arr.shape}")
    return np.clip(arr, -_FLOAT16_MAX, _FLOAT16_MAX).astype(np.float16)


def write_submission(
    out: str | Path,
    category: str,
    split: str,
    stems: Sequence[str],
    maps: Sequence[np.ndarray],
    threshold: float | None = None,
) -> list[Path]:
    """Write maps of one private test set in the upload layout (atomic file by file).

    Parameters
    ----------
    out : the submission folder (it gets ``anomaly_images/`` and, with ``threshold``,
        ``anomaly_images_thresholded/``).
    category, split : e.g. ``"can"``, ``"test_private"``.
    stems : image stems (``"000_regular"``), one per map.
    maps : (H, W) anomaly maps at the images' native size; written as float16 TIFF.
    threshold : also write ``map >= threshold`` as 0 / 255 PNGs.

    Returns
    -------
    list of Path
        The files written.
    """
    import tifffile
    from PIL import Image

    if split not in MVTEC_AD2_PRIVATE_SPLITS:
        raise DatasetError(f"split must be one of {', '.join(MVTEC_AD2_PRIVATE_SPLITS)}")
    if len(stems) != len(maps):
        raise DatasetError(f"got {len(stems)} stems but {len(maps)} maps")
    written = []
    for stem, anomaly_map in zip(stems, maps, strict=True):
        tiff_path, png_path = submission_paths(out, category, split, stem)
        half = _float16(anomaly_map)
        tiff_path.parent.mkdir(parents=True, exist_ok=True)
        buf = io.BytesIO()
        tifffile.imwrite(buf, half)
        write_bytes(tiff_path, buf.getvalue())
        written.append(tiff_path)
        if threshold is not None:
            binary = np.where(np.asarray(anomaly_map) >= threshold, 255, 0).astype(np.uint8)
            png_path.parent.mkdir(parents=True, exist_ok=True)
            buf = io.BytesIO()
            Image.fromarray(binary).save(buf, format="PNG")
            write_bytes(png_path, buf.getvalue())
            written.append(png_path)
    return written


def _expected_names(split: str, n: int, suffix: str) -> set[str]:
    kind = "regular" if split == "test_private" else "mixed"
    return {f"{i:03d}_{kind}{suffix}" for i in range(n)}


def check_submission(
    out: str | Path, counts: dict[str, int] | None = None
) -> list[Problem]:
    """The checks of MVTec's upload checker, as a list of problems (empty = ready).

    Parameters
    ----------
    out : the submission folder.
    counts : images per category and private split; default
        :data:`~defectmap.constants.MVTEC_AD2_PRIVATE_COUNTS` (all 8 categories).

    Returns
    -------
    list of Problem
        ``layout`` (a missing or superfluous folder or file, a wrong count or name),
        ``map_format`` (not a 2-D float16 TIFF, or a PNG with values other than 0 and 255).
    """
    import tifffile
    from PIL import Image

    out = Path(out)
    counts = dict(MVTEC_AD2_PRIVATE_COUNTS if counts is None else counts)
    problems: list[Problem] = []
    roots = [("anomaly_images", ".tiff")]
    if (out / "anomaly_images_thresholded").is_dir():
        roots.append(("anomaly_images_thresholded", ".png"))
    if not (out / "anomaly_images").is_dir():
        return [Problem("layout", out / "anomaly_images", "missing folder anomaly_images/")]
    for top, suffix in roots:
        found = {p.name for p in (out / top).iterdir()}
        for extra in sorted(found - set(counts)):
            problems.append(Problem("layout", out / top / extra, "superfluous entry"))
        for category, n in sorted(counts.items()):
            for split in MVTEC_AD2_PRIVATE_SPLITS:
                folder = out / top / category / split
                if not folder.is_dir():
                    problems.append(Problem("layout", folder, "missing folder"))
                    continue
                names = {p.name for p in folder.iterdir()}
                expected = _expected_names(split, n, suffix)
                for name in sorted(expected - names)[:5]:
                    problems.append(Problem("layout", folder / name, "missing file"))
                for name in sorted(names - expected)[:5]:
                    problems.append(Problem("layout", folder / name, "superfluous file"))
                for name in sorted(names & expected):
                    path = folder / name
                    if suffix == ".tiff":
                        arr = tifffile.imread(path)
                        if arr.ndim != 2 or arr.dtype != np.float16:
                            problems.append(Problem(
                                "map_format", path,
                                f"a map must be a single-channel float16 TIFF, got "
                                f"{arr.dtype} of shape {arr.shape}"))
                    else:
                        arr = np.asarray(Image.open(path))
                        if arr.ndim != 2 or not np.isin(np.unique(arr), (0, 255)).all():
                            problems.append(Problem(
                                "map_format", path,
                                "a thresholded map must be single-channel with values 0 and 255"))
    return problems
