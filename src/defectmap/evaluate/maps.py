"""Anomaly-map files (read any method's, write ours) and the metrics of a folder of them.

:func:`write_map` writes defectmap's maps (float32 TIFF, the image's size);
:func:`read_map` reads any method's; :func:`evaluate_maps_dir` computes the metrics of a maps
folder against a dataset, with the protocol of the dataset's layout (:data:`PROTOCOLS`):
MVTec AD's for MVTec AD, VisA, Real-IAD and plain folders; MVTec LOCO AD's AU-sPRO
(:mod:`defectmap.evaluate.loco`); MVTec AD 2's AU-PRO at 0.05 and SegF1
(:mod:`defectmap.evaluate.mvtec_ad2`). Each result says which protocol produced it.

Maps layout (as the official evaluation code expects)::

    MAPS_DIR/<category>/test/<defect type>/<stem>.tiff    # float TIFF, the image's size

MVTec AD 2: ``MAPS_DIR/<category>/test_public/<good|bad>/<stem>.tiff`` (``test/`` also
accepted), and for SegF1 ``MAPS_DIR/<category>/validation/good/<stem>.tiff``.

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

from defectmap.constants import DEFAULT_FPR_LIMIT, MVTEC_AD2_FPR_LIMIT
from defectmap.data.records import CategoryData, Sample
from defectmap.errors import DatasetError, DefectmapError
from defectmap.metrics import category_metrics
from defectmap.metrics._input import check_fpr_limit
from defectmap.progress import ProgressCallback, track

#: Accepted map file suffixes (lower case).
MAP_EXTENSIONS = (".tiff", ".tif", ".npy", ".png")
#: Keys averaged over categories in the ``mean`` entry of the result.
MEAN_KEYS = ("image_auroc", "pixel_auroc", "aupro", "f1_max", "pixel_f1_max")
#: The protocol each layout is evaluated with.
PROTOCOLS = {"mvtec": "mvtec_ad", "folders": "mvtec_ad", "visa": "visa", "realiad": "realiad",
             "loco": "mvtec_loco", "mvtec_ad2": "mvtec_ad2"}
#: One line per protocol: what its numbers are.
PROTOCOL_NOTES = {
    "mvtec_ad": "MVTec AD: image AUROC, pixel AUROC, AU-PRO (8-connected regions)",
    "visa": "VisA (official 1cls split): the MVTec AD metrics, masks binarised",
    "realiad": "Real-IAD (single-view split): the MVTec AD metrics per image",
    "mvtec_loco": "MVTec LOCO AD: AU-sPRO per anomaly type and limit, image AUROC per type",
    "mvtec_ad2": "MVTec AD 2 (test_public): AU-PRO at FPR 0.05, SegF1 at a validation threshold",
}
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


def _read_maps(
    samples: list[Sample], folder: Path, what: str, warnings: list[str],
    progress: ProgressCallback | None,
) -> list[np.ndarray]:
    """One map per sample from ``folder/<defect type>/<stem>.*``, sizes checked."""
    from defectmap.data.io import image_size

    index = _index_maps(folder, warnings)
    wanted = {(s.defect_type, s.stem) for s in samples}
    missing = [str(_expected_path(folder, s)) for s in samples
               if (s.defect_type, s.stem) not in index]
    if missing:
        raise MapFileError(
            f"{len(missing)} of {len(samples)} {what} have no map "
            f"(.tiff/.tif/.npy/.png): {_listing(missing)}"
        )
    warnings.extend(f"{path}: extra map, no image {key[0]}/{key[1]} among the {what}"
                    for key, path in index.items() if key not in wanted)
    maps: list[np.ndarray] = []
    for sample in track(samples, f"reading maps of the {what}", progress):
        path = index[(sample.defect_type, sample.stem)]
        arr = read_map(path)
        width, height = image_size(sample.path)
        if arr.shape != (height, width):
            raise MapFileError(
                f"{path}: map is {arr.shape[1]}x{arr.shape[0]} (WxH) but its image "
                f"{sample.path} is {width}x{height}"
            )
        maps.append(arr)
    return maps


def _mvtec_family(data: CategoryData, maps: list[np.ndarray], fpr_limit: float) -> dict[str, Any]:
    from defectmap.data.mvtec import read_sample_mask

    masks = None
    if data.has_masks:
        masks = [read_sample_mask(s, m.shape) if s.masks else None
                 for s, m in zip(data.test, maps, strict=True)]
    labels = np.array([s.label for s in data.test])
    types = [s.defect_type for s in data.test]
    return {"protocol": PROTOCOLS[data.layout],
            **category_metrics(None, labels, types, maps, masks, fpr_limit)}


def evaluate_category_maps(
    maps_dir: str | Path,
    dataset_root: str | Path,
    category: str,
    fpr_limit: float | None = None,
    warnings: list[str] | None = None,
    progress: ProgressCallback | None = None,
    loco_mode: str = "exact",
) -> dict[str, Any]:
    """Metrics of one category's maps, with the protocol of the dataset's layout.

    Parameters
    ----------
    maps_dir, dataset_root, category : as in :func:`evaluate_maps_dir`.
    fpr_limit : AU-PRO integration limit; default 0.3, or 0.05 for MVTec AD 2. MVTec LOCO
        AD always uses its own five limits.
    warnings : collects extra or ignored files.
    loco_mode : ``"exact"`` or ``"official"`` for MVTec LOCO AD (see
        :mod:`defectmap.metrics.spro`).

    Returns
    -------
    dict
        ``protocol`` (one of :data:`PROTOCOLS`' values) and its metrics:
        :func:`~defectmap.metrics.category_metrics` keys for the MVTec AD family (pixel
        metrics None without masks), :func:`~defectmap.evaluate.loco.loco_map_metrics` for
        LOCO, :func:`~defectmap.evaluate.mvtec_ad2.ad2_map_metrics` for MVTec AD 2.
    """
    from defectmap.data.layouts import load_category
    from defectmap.evaluate.loco import loco_map_metrics
    from defectmap.evaluate.mvtec_ad2 import ad2_map_metrics

    warnings = [] if warnings is None else warnings
    data = load_category(dataset_root, category, require_train=False)
    if not data.test:
        raise DatasetError(f"{data.root}: no test images")
    base = Path(maps_dir) / category
    if data.layout == "loco":
        maps = _read_maps(data.test, base / "test", f"test images of {category!r}", warnings,
                          progress)
        return loco_map_metrics(data, maps, mode=loco_mode)  # type: ignore[arg-type]
    if data.layout == "mvtec_ad2":
        test_dir = base / "test_public" if (base / "test_public").is_dir() else base / "test"
        maps = _read_maps(data.test, test_dir, f"test_public images of {category!r}",
                          warnings, progress)
        validation = None
        if data.validation and (base / "validation").is_dir():
            validation = _read_maps(data.validation, base / "validation",
                                    f"validation images of {category!r}", warnings, progress)
        else:
            warnings.append(f"{base / 'validation'}: no validation maps, so no SegF1 (its "
                            f"threshold comes from the validation images)")
        limit = MVTEC_AD2_FPR_LIMIT if fpr_limit is None else fpr_limit
        return ad2_map_metrics(data, maps, validation, fpr_limit=limit)
    maps = _read_maps(data.test, base / "test", f"test images of {category!r}", warnings,
                      progress)
    return _mvtec_family(data, maps, DEFAULT_FPR_LIMIT if fpr_limit is None else fpr_limit)


def _mean(results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Category means of the protocol's headline numbers (None unless every one has them)."""

    def average(values: list[Any]) -> float | None:
        return None if any(v is None for v in values) else math.fsum(values) / len(values)

    protocols = {r["protocol"] for r in results.values()}
    if len(protocols) != 1:
        return {}
    rows = list(results.values())
    if protocols == {"mvtec_loco"}:
        limits = list(rows[0]["auc_spro"]["mean"])
        return {
            "auc_spro": {kind: {lim: average([r["auc_spro"][kind][lim] for r in rows])
                                for lim in limits} for kind in rows[0]["auc_spro"]},
            "auc_roc": {kind: average([r["auc_roc"][kind] for r in rows])
                        for kind in rows[0]["auc_roc"]},
        }
    keys = MEAN_KEYS + (("seg_f1",) if protocols == {"mvtec_ad2"} else ())
    return {key: average([r[key] for r in rows]) for key in keys}


def evaluate_maps_dir(
    maps_dir: str | Path,
    dataset_root: str | Path,
    categories: list[str] | None = None,
    fpr_limit: float | None = None,
    progress: ProgressCallback | None = None,
    loco_mode: str = "exact",
) -> dict[str, Any]:
    """Evaluate the maps of one or more categories against a dataset, in its protocol.

    Parameters
    ----------
    maps_dir : folder holding ``<category>/test/<defect>/<stem>.tiff`` maps
    dataset_root : dataset root holding the same categories (images and masks), in any
        layout of :mod:`defectmap.data.layouts`
    categories : names to evaluate; default every category folder of ``maps_dir``
    fpr_limit : AU-PRO integration limit (default: the protocol's, see
        :func:`evaluate_category_maps`)
    progress : reports ``(task, done, total)`` while the maps are read
    loco_mode : ``"exact"`` or ``"official"`` (MVTec LOCO AD only)

    Returns
    -------
    dict
        ``protocol`` (the categories' protocol, or ``"mixed"``), ``protocol_note``,
        ``fpr_limit``, ``maps_dir``, ``dataset_root``, ``categories`` (name -> the
        category's result, with its own ``protocol`` key), ``mean`` (the protocol's
        headline numbers averaged over categories; None where a category lacks one) and
        ``warnings`` (extra or ignored files, by path).
    """
    if fpr_limit is not None:
        fpr_limit = check_fpr_limit(fpr_limit)  # fail before reading any map
    if loco_mode not in ("exact", "official"):
        raise DatasetError(f"loco_mode must be 'exact' or 'official', not {loco_mode!r}")
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
                                            progress, loco_mode)
               for name in categories}
    protocols = sorted({r["protocol"] for r in results.values()})
    protocol = protocols[0] if len(protocols) == 1 else "mixed"
    limits = {r.get("fpr_limit") for r in results.values() if r.get("fpr_limit") is not None}
    return {
        "protocol": protocol,
        "protocol_note": PROTOCOL_NOTES.get(protocol, "several protocols, see each category"),
        "fpr_limit": limits.pop() if len(limits) == 1 else None,
        "maps_dir": str(maps_dir),
        "dataset_root": str(dataset_root),
        "categories": results,
        "mean": _mean(results),
        "warnings": warnings,
    }
