"""Anomaly-map files (read any method's, write ours) and the metrics of a folder of them.

:func:`write_map` writes defectmap's maps (float32 TIFF, the image's size);
:func:`read_map` reads any method's; :func:`evaluate_maps_dir` computes the MVTec AD metrics
of a maps folder against a dataset.

Maps layout (as the official evaluation code expects)::

    MAPS_DIR/<category>/test/<defect type>/<stem>.tiff    # float TIFF, the image's size

also accepted: ``.tif``, ``.npy`` (a 2-D numeric array, loaded without pickle) and ``.png``
(8- or 16-bit single-channel; values used as they are). Each map is matched to its test
image by category, defect folder and file stem (``test/crack/007.png`` <->
``test/crack/007.tiff``). Image scores are the maximum of each map.

* a test image without its map: error listing every missing path;
* a map without its test image, or a file that is not a map: a warning naming the path;
* a map whose size differs from its image, an unreadable map, NaN or inf values: an error
  naming the file.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from defectmap.constants import DEFAULT_FPR_LIMIT
from defectmap.data.records import CategoryData, Sample
from defectmap.errors import DatasetError, DefectmapError
from defectmap.metrics import category_metrics
from defectmap.metrics._input import check_fpr_limit
from defectmap.progress import ProgressCallback, track

#: Accepted map file suffixes (lower case).
MAP_EXTENSIONS = (".tiff", ".tif", ".npy", ".png")
#: Keys averaged over categories in the ``mean`` entry of the result.
MEAN_KEYS = ("image_auroc", "pixel_auroc", "aupro", "f1_max", "pixel_f1_max")
_MAX_LISTED = 20


class MapFileError(DefectmapError, ValueError):
    """A map file is missing, unreadable, of the wrong size or holds NaN / inf values."""


def write_map(path: str | Path, anomaly_map: np.ndarray) -> None:
    """Write one anomaly map (H, W) as a float32 TIFF, creating the parent folders.

    Meant for files inside a folder that :func:`defectmap.files.atomic_output_dir` renames
    into place when complete, so the file itself is written directly.
    """
    import tifffile

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(path, np.asarray(anomaly_map, dtype=np.float32))


def read_map(path: str | Path) -> np.ndarray:
    """Read one anomaly map as a 2-D numeric array (TIFF, NPY or single-channel PNG).

    Parameters
    ----------
    path : file ending in ``.tiff``, ``.tif``, ``.npy`` or ``.png``

    Returns
    -------
    (H, W) array
        The stored values and dtype (float32 for most TIFF maps).

    Raises
    ------
    MapFileError
        Unreadable file, not one channel, not numeric, or NaN / infinite values.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    try:
        if suffix in (".tiff", ".tif"):
            import tifffile

            arr = np.asarray(tifffile.imread(path))
        elif suffix == ".npy":
            arr = np.load(path, allow_pickle=False)
        elif suffix == ".png":
            from PIL import Image

            with Image.open(path) as im:
                if im.mode not in ("L", "I", "F", "I;16", "I;16L", "I;16B", "I;16N"):
                    raise MapFileError(
                        f"{path}: a {im.mode} PNG; a map must be one channel (8/16-bit gray)"
                    )
                arr = np.array(im)
        else:
            raise MapFileError(f"{path}: not a map file (expected {', '.join(MAP_EXTENSIONS)})")
    except MapFileError:
        raise
    except Exception as exc:  # tifffile, numpy and Pillow raise many different types
        raise MapFileError(f"{path}: cannot read the map: {exc}") from exc
    if arr.ndim == 3 and arr.shape[-1] == 1:  # (H, W, 1) or (1, H, W): one channel
        arr = arr[:, :, 0]
    elif arr.ndim == 3 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 2:
        raise MapFileError(f"{path}: a map must be 2-D (one channel), got shape {arr.shape}")
    if arr.dtype.kind not in "biuf":
        raise MapFileError(f"{path}: a map must be numeric, got dtype {arr.dtype}")
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        raise MapFileError(f"{path}: the map holds NaN or infinite values")
    return arr


def _index_maps(test_dir: Path, warnings: list[str]) -> dict[tuple[str, str], Path]:
    """(defect folder, stem) -> map file under ``test_dir``; odd files become warnings."""
    index: dict[tuple[str, str], Path] = {}
    if not test_dir.is_dir():
        return index
    for path in sorted(test_dir.rglob("*")):
        if path.is_dir() or path.name.startswith("."):
            continue
        rel = path.relative_to(test_dir)
        if len(rel.parts) != 2 or path.suffix.lower() not in MAP_EXTENSIONS:
            warnings.append(f"{path}: ignored, not a map in <defect>/<stem>.tiff|tif|npy|png")
            continue
        key = (rel.parts[0], path.stem)
        if key in index:
            raise MapFileError(f"{path}: two maps for the same image: also {index[key]}")
        index[key] = path
    return index


def _expected_path(test_dir: Path, sample: Sample) -> Path:
    return test_dir / sample.defect_type / f"{sample.stem}.tiff"


def _listing(paths: list[str]) -> str:
    shown = "; ".join(paths[:_MAX_LISTED])
    more = f" (and {len(paths) - _MAX_LISTED} more)" if len(paths) > _MAX_LISTED else ""
    return shown + more


def _load_category_maps(
    data: CategoryData, test_dir: Path, warnings: list[str], progress: ProgressCallback | None
) -> tuple[list[np.ndarray], list[np.ndarray | None]]:
    """Maps and masks of every test sample, checked against the images' sizes."""
    from defectmap.data.io import image_size
    from defectmap.data.mvtec import read_sample_mask

    index = _index_maps(test_dir, warnings)
    wanted = {(s.defect_type, s.stem) for s in data.test}
    missing = [str(_expected_path(test_dir, s)) for s in data.test
               if (s.defect_type, s.stem) not in index]
    if missing:
        raise MapFileError(
            f"{len(missing)} of {len(data.test)} test images of {data.name!r} have no map "
            f"(.tiff/.tif/.npy/.png): {_listing(missing)}"
        )
    warnings.extend(f"{path}: extra map, no test image {key[0]}/{key[1]} in {data.root}"
                    for key, path in index.items() if key not in wanted)

    maps: list[np.ndarray] = []
    masks: list[np.ndarray | None] = []
    for sample in track(data.test, f"reading maps of {data.name}", progress):
        path = index[(sample.defect_type, sample.stem)]
        arr = read_map(path)
        width, height = image_size(sample.path)
        if arr.shape != (height, width):
            raise MapFileError(
                f"{path}: map is {arr.shape[1]}x{arr.shape[0]} (WxH) but its image "
                f"{sample.path} is {width}x{height}"
            )
        mask = None
        if data.has_masks and sample.mask_path is not None:
            mask = read_sample_mask(sample, arr.shape)
        maps.append(arr)
        masks.append(mask)
    return maps, masks


def evaluate_category_maps(
    maps_dir: str | Path,
    dataset_root: str | Path,
    category: str,
    fpr_limit: float = DEFAULT_FPR_LIMIT,
    warnings: list[str] | None = None,
    progress: ProgressCallback | None = None,
) -> dict[str, Any]:
    """Metrics of one category's maps (see :func:`defectmap.metrics.category_metrics`).

    Pixel metrics are None when the dataset has no masks. ``warnings`` collects extra files.
    """
    from defectmap.data.mvtec import load_category

    root = Path(dataset_root)
    if not (root / category).is_dir():
        raise DatasetError(f"{root / category}: category {category!r} not in the dataset root")
    data = load_category(root, category)
    if not data.test:
        raise DatasetError(f"{data.root}: no test images")
    maps, masks = _load_category_maps(
        data, Path(maps_dir) / category / "test", [] if warnings is None else warnings, progress
    )
    labels = np.array([s.label for s in data.test])
    types = [s.defect_type for s in data.test]
    return category_metrics(
        None, labels, types, maps, masks if data.has_masks else None, fpr_limit
    )


def evaluate_maps_dir(
    maps_dir: str | Path,
    dataset_root: str | Path,
    categories: list[str] | None = None,
    fpr_limit: float = DEFAULT_FPR_LIMIT,
    progress: ProgressCallback | None = None,
) -> dict[str, Any]:
    """Evaluate the maps of one or more categories against a dataset in MVTec AD layout.

    Parameters
    ----------
    maps_dir : folder holding ``<category>/test/<defect>/<stem>.tiff`` maps
    dataset_root : dataset root holding the same categories (images and masks)
    categories : names to evaluate; default every category folder of ``maps_dir``
    fpr_limit : AU-PRO integration limit
    progress : reports ``(task, done, total)`` while the maps are read

    Returns
    -------
    dict
        ``fpr_limit``, ``maps_dir``, ``dataset_root``, ``categories`` (name ->
        :func:`~defectmap.metrics.category_metrics` result), ``mean`` (each of
        :data:`MEAN_KEYS` averaged over categories; None unless every category has it) and
        ``warnings`` (extra or ignored files, by path).
    """
    fpr_limit = check_fpr_limit(fpr_limit)  # fail before reading any map
    maps_dir = Path(maps_dir)
    if not maps_dir.is_dir():
        raise MapFileError(f"{maps_dir}: maps folder not found")
    if categories is None:
        categories = sorted(p.name for p in maps_dir.iterdir()
                            if p.is_dir() and not p.name.startswith("."))
        if not categories:
            raise MapFileError(f"{maps_dir}: no category folder (<category>/test/<defect>/...)")
    for name in categories:
        if not (maps_dir / name).is_dir():
            raise MapFileError(f"{maps_dir / name}: no maps for category {name!r}")
    warnings: list[str] = []
    results = {name: evaluate_category_maps(maps_dir, dataset_root, name, fpr_limit, warnings,
                                            progress)
               for name in categories}
    mean: dict[str, float | None] = {}
    for key in MEAN_KEYS:
        values = [r[key] for r in results.values()]
        mean[key] = None if any(v is None for v in values) else math.fsum(values) / len(values)
    return {
        "fpr_limit": float(fpr_limit),
        "maps_dir": str(maps_dir),
        "dataset_root": str(dataset_root),
        "categories": results,
        "mean": mean,
        "warnings": warnings,
    }
