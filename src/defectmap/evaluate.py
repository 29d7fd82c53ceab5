"""The MVTec AD protocol for one trained model, and the benchmark runner over many.

:func:`evaluate_model` scores a category's test split, computes the metrics, and writes one
output folder atomically (built in a temporary sibling, then renamed into place, so an
interrupted run leaves either the previous folder or none)::

    metrics.json                                 all numbers, see evaluate_model
    maps/<category>/test/<defect>/<stem>.tiff    float32 anomaly maps at native size
                                                 (the official MVTec evaluation layout)
    report.html, figures/*.png                   the visual report (defectmap.report)

:func:`run_benchmark` fits and evaluates every (category, detector) pair and collects the
paper-style table (:mod:`defectmap.report.table`).
"""

from __future__ import annotations

import csv
import io
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from defectmap.calibrate import DEFAULT_ALPHA
from defectmap.constants import DEFAULT_FPR_LIMIT
from defectmap.data.io import IMAGE_EXTENSIONS
from defectmap.data.records import CategoryData
from defectmap.errors import DatasetError, DefectmapError
from defectmap.files import make_temp_dir, to_jsonable, write_bytes, write_json, write_text
from defectmap.progress import track

if TYPE_CHECKING:
    from defectmap.pipeline import InspectionModel

__all__ = [
    "evaluate_model",
    "run_benchmark",
    "atomic_output_dir",
    "collect_images",
    "predict_to_dir",
]

#: A folder we may replace must be empty or carry this file (a previous evaluation).
_MARKER = "metrics.json"


# --------------------------------------------------------------------------- output helpers
@contextmanager
def atomic_output_dir(out_dir: str | Path, marker: str | None = _MARKER) -> Iterator[Path]:
    """Yield a temporary folder beside ``out_dir``; on success it replaces ``out_dir``.

    On any exception, ``KeyboardInterrupt`` included, the temporary folder is deleted and an
    existing ``out_dir`` is left untouched. An existing non-empty ``out_dir`` is only
    replaced when it contains ``marker`` (it is then an earlier output of the same kind),
    so a typo in ``--out`` cannot wipe an unrelated folder.

    Raises
    ------
    DefectmapError
        ``out_dir`` is a file, or a non-empty folder without ``marker``.
    """
    out = Path(out_dir).absolute()
    if out.exists() and not out.is_dir():
        raise DefectmapError(f"{out}: exists and is not a folder; choose another --out")
    if out.is_dir() and any(out.iterdir()) and marker is not None and not (out / marker).exists():
        raise DefectmapError(
            f"{out}: folder exists, is not empty and holds no {marker} (not an earlier "
            "output); refusing to replace it, choose another --out"
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = make_temp_dir(out.parent, prefix=f".{out.name}.tmp-")
    try:
        yield tmp
        if out.exists():
            old = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.old-"))
            os.replace(out, old / out.name)
            try:
                os.replace(tmp, out)
            except BaseException:
                os.replace(old / out.name, out)  # put the previous output back
                shutil.rmtree(old, ignore_errors=True)
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _write_tiff(path: Path, array: np.ndarray) -> None:
    import tifffile

    path.parent.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(path, np.asarray(array, dtype=np.float32))


def _chunks(items: Sequence[Any], size: int) -> list[Sequence[Any]]:
    return [items[i:i + size] for i in range(0, len(items), size)]


# --------------------------------------------------------------------------- evaluation
def _ground_truth(data: CategoryData, maps: Sequence[np.ndarray]) -> list[np.ndarray] | None:
    """Masks (H,W) bool per test image, all-False for good images; None without masks."""
    from defectmap.data.mvtec import read_sample_mask

    if not data.has_masks or any(s.label == 1 and s.mask_path is None for s in data.test):
        return None
    pairs = list(zip(data.test, maps, strict=True))
    return [read_sample_mask(sample, amap.shape) for sample, amap in track(pairs, "reading masks")]


def _relative(path: Path, root: Path) -> str:
    try:
        return Path(path).relative_to(root).as_posix()
    except ValueError:
        return str(path)


def _model_summary(model: InspectionModel) -> dict[str, Any]:
    """A few facts about the model for the report's header line."""
    params = model.detector.get_params()
    info = model.info or {}
    facts = {
        "backbone": params.get("backbone"),
        "input size": params.get("input_size"),
        "fit images": info.get("n_fit"),
        "validation images": info.get("n_val"),
        "model": (model.model_hash or "")[:12] or None,
    }
    return {k: v for k, v in facts.items() if v is not None}


def evaluate_model(
    model: InspectionModel,
    category_data: CategoryData,
    out_dir: str | Path,
    fpr_limit: float = DEFAULT_FPR_LIMIT,
    write_maps: bool = True,
    batch_size: int = 1,
    report: bool = True,
    max_gallery: int = 12,
    fit_s: float | None = None,
) -> dict[str, Any]:
    """Score the test split of ``category_data`` and write metrics, maps and report.

    Parameters
    ----------
    model : InspectionModel
        A trained model (``defectmap.pipeline.load_model`` or ``train_model``).
    category_data : CategoryData
        The category; only its ``test`` split is used.
    out_dir : str or Path
        Output folder, replaced atomically (see :func:`atomic_output_dir`).
    fpr_limit : float
        Integration limit of AU-PRO.
    write_maps : bool
        Write the float32 TIFF maps (N images of H x W x 4 bytes: 270 MB for bottle).
    batch_size : int
        Images per forward pass.
    report : bool
        Write ``report.html`` and the figures.
    max_gallery : int
        Gallery rows of the report.
    fit_s : float or None
        Training time in seconds, recorded in ``timing`` (default: ``fit_seconds`` of the
        model's training summary, when it has one).

    Returns
    -------
    dict
        The content of ``metrics.json``: ``category``, ``detector``, ``image_auroc``,
        ``pixel_auroc``, ``aupro``, ``fpr_limit``, ``f1_max``, ``f1_threshold``,
        ``pixel_f1_max``, ``n_images``, ``n_defective``, ``per_defect`` (same keys per
        defect type, on good + that defect's images), ``timing`` (``fit_s`` when the model
        knows it, ``predict_s``, ``ms_per_image``), ``calibrated`` and ``oracle``
        operating points (None without calibration), ``model_hash``, ``dataset_root`` and
        ``images`` (per test image: ``image`` path relative to the category folder,
        ``defect_type``, ``label``, raw ``score``).
        Pixel metrics are None when the dataset has no masks.
    """
    from defectmap.calibrate import operating_point_metrics
    from defectmap.metrics import category_metrics_and_pro_curve, roc_curve
    from defectmap.report import ReportData, write_report

    test = list(category_data.test)
    if not test:
        raise DatasetError(f"{category_data.root}: category {category_data.name!r} has no "
                           "test images to evaluate")
    labels = np.array([s.label for s in test], dtype=np.int64)
    defect_types = [s.defect_type for s in test]
    paths = [s.path for s in test]

    with atomic_output_dir(out_dir) as tmp:
        scores_parts: list[np.ndarray] = []
        maps: list[np.ndarray] = []
        start = time.perf_counter()
        chunks = _chunks(paths, batch_size)
        for chunk in track(chunks, f"scoring {category_data.name} test images", len(chunks)):
            pred = model.detector.predict(list(chunk), batch_size=batch_size)
            scores_parts.append(np.asarray(pred.scores, dtype=np.float64))
            maps.extend(np.asarray(m, dtype=np.float32) for m in pred.maps)
        predict_s = time.perf_counter() - start
        scores = np.concatenate(scores_parts)

        masks = _ground_truth(category_data, maps)
        # The PRO curve of the report comes from the same (single) sort of the pixels.
        metrics, pro = category_metrics_and_pro_curve(
            scores, labels, defect_types, maps if masks is not None else None, masks,
            fpr_limit=fpr_limit)

        calibration = model.calibration
        calibrated: dict[str, Any] | None = None
        oracle: dict[str, Any] | None = None
        pred_masks: list[np.ndarray] | None = None
        if calibration is not None:
            points = operating_point_metrics(scores, labels, maps, masks, calibration)
            calibrated = {k: v for k, v in points.items() if k != "oracle"}
            oracle = points["oracle"]
            if calibration.pixel_threshold is not None:
                pred_masks = [np.asarray(calibration.predicted_mask(m), dtype=bool)
                              for m in maps]

        if fit_s is None and isinstance((model.info or {}).get("fit_seconds"), int | float):
            fit_s = float(model.info["fit_seconds"])
        result: dict[str, Any] = {
            "category": category_data.name,
            "detector": model.detector.name,
            **metrics,
            "fpr_limit": float(fpr_limit),
            "timing": {
                "fit_s": fit_s,
                "predict_s": predict_s,
                "ms_per_image": 1000.0 * predict_s / len(test),
            },
            "calibrated": calibrated,
            "oracle": oracle,
            "model_hash": model.model_hash,
            "dataset_root": str(Path(category_data.root).absolute()),
            "images": [
                {"image": _relative(s.path, category_data.root), "defect_type": s.defect_type,
                 "label": s.label, "score": float(score)}
                for s, score in zip(test, scores, strict=True)
            ],
        }
        result = to_jsonable(result)
        write_json(tmp / "metrics.json", result)

        if write_maps:
            for sample, amap in track(list(zip(test, maps, strict=True)), "writing maps"):
                _write_tiff(tmp / "maps" / category_data.name / "test" / sample.defect_type
                            / f"{sample.stem}.tiff", amap)

        if report:
            both = 0 < labels.sum() < len(labels)
            roc = roc_curve(scores, labels)[:2] if both else None
            write_report(
                ReportData(
                    metrics=result, scores=scores, labels=labels, defect_types=defect_types,
                    image_paths=paths, maps=maps, masks=masks, pred_masks=pred_masks,
                    roc=roc, pro=pro,
                    image_threshold=None if calibration is None
                    else float(calibration.image_threshold),
                    title=f"defectmap: {result['detector']} on {category_data.name}",
                    extra_info=_model_summary(model),
                ),
                tmp, max_gallery=max_gallery,
            )
    return result


# --------------------------------------------------------------------------- predict
#: File name endings taken from folders given to :func:`predict_to_dir`.
IMAGE_SUFFIXES = tuple(sorted(IMAGE_EXTENSIONS))

#: Columns of ``results.csv``.
RESULT_COLUMNS = ("image", "score", "normalized_score", "decision", "p_value", "n_regions",
                  "map", "overlay")


def collect_images(inputs: Sequence[str | Path]) -> list[Path]:
    """Image files named directly, plus those found (recursively, sorted) in folders.

    Hidden files and folders are skipped. Raises :class:`DefectmapError` for a path that does
    not exist or a folder without images.
    """
    found: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            images = sorted(
                p for p in path.rglob("*")
                if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                and not any(part.startswith(".") for part in p.relative_to(path).parts)
            )
            if not images:
                raise DefectmapError(f"{path}: folder holds no images "
                                     f"({', '.join(IMAGE_SUFFIXES)})")
            found.extend(images)
        elif path.is_file():
            found.append(path)
        else:
            raise DefectmapError(f"{path}: no such image file or folder")
    if not found:
        raise DefectmapError("no images given")
    return found


def _unique_names(paths: Sequence[Path]) -> list[str]:
    """Output file stems: the image stem, suffixed ``_2``, ``_3``... when stems repeat."""
    used: set[str] = set()
    names = []
    for path in paths:
        name, k = path.stem, 1
        while name in used:
            k += 1
            name = f"{path.stem}_{k}"
        used.add(name)
        names.append(name)
    return names


def predict_to_dir(
    model: InspectionModel,
    inputs: Sequence[str | Path],
    out_dir: str | Path,
    batch_size: int = 1,
    write_maps: bool = True,
    write_overlays: bool = True,
) -> list[dict[str, Any]]:
    """Inspect image files and write the results into ``out_dir`` (replaced atomically).

    Writes ``results.csv`` (columns :data:`RESULT_COLUMNS`), ``results.json`` (the same rows
    plus each image's regions, and the model's hash), ``maps/<name>.tiff`` (float32 raw
    anomaly maps at native size) and ``overlays/<name>.png`` (heatmap over the image with
    the predicted regions outlined; the colour scale is the calibrated normalised map, so
    green = pixel threshold, red = far above it).

    Parameters
    ----------
    model : InspectionModel
    inputs : sequence of str or Path
        Image files and/or folders (see :func:`collect_images`).
    out_dir : str or Path
        Output folder; an existing one is only replaced if it holds ``results.json``.
    batch_size : int
        Images per forward pass.
    write_maps, write_overlays : bool
        Whether to write the TIFF maps and the overlay PNGs.

    Returns
    -------
    list of dict
        One row per image, in input order (as in ``results.csv``).
    """
    from defectmap.data.io import read_image
    from defectmap.report.figures import overlay_png

    paths = collect_images(inputs)
    names = _unique_names(paths)
    calibration = model.calibration
    pixel_calibrated = calibration is not None and calibration.pixel_threshold is not None
    rows: list[dict[str, Any]] = []
    with atomic_output_dir(out_dir, marker="results.json") as tmp:
        jobs = _chunks(list(zip(paths, names, strict=True)), batch_size)
        for chunk in track(jobs, "inspecting images", len(jobs)):
            inspections = model.inspect([p for p, _ in chunk], batch_size=batch_size)
            for (path, name), result in zip(chunk, inspections, strict=True):
                amap = np.asarray(result.anomaly_map, dtype=np.float32)
                row: dict[str, Any] = {
                    "image": str(path),
                    "score": float(result.score),
                    "normalized_score": _opt_float(result.normalized_score),
                    "decision": result.decision,
                    "p_value": _opt_float(result.p_value),
                    "n_regions": len(result.regions),
                    "map": f"maps/{name}.tiff" if write_maps else None,
                    "overlay": f"overlays/{name}.png" if write_overlays else None,
                    "regions": [r.to_dict() for r in result.regions],
                }
                if write_maps:
                    _write_tiff(tmp / "maps" / f"{name}.tiff", amap)
                if write_overlays:
                    shown: np.ndarray = amap
                    vmin, vmax = float(amap.min()), float(amap.max())  # per-image scale
                    if pixel_calibrated:
                        assert calibration is not None
                        shown, vmin, vmax = calibration.normalize_map(amap), 0.0, 1.0
                    (tmp / "overlays").mkdir(exist_ok=True)
                    write_bytes(tmp / "overlays" / f"{name}.png",
                                overlay_png(read_image(path), shown, result.mask, vmin, vmax))
                rows.append(row)
        write_json(tmp / "results.json", {
            "model_hash": model.model_hash,
            "detector": model.describe().get("detector"),
            "n_images": len(rows),
            "n_defect": sum(r["decision"] == "defect" for r in rows),
            "results": rows,
        })
        write_text(tmp / "results.csv", _results_csv(rows))
    return rows


def _opt_float(value: Any) -> float | None:
    return None if value is None else float(value)


def _results_csv(rows: Sequence[dict[str, Any]]) -> str:
    """CSV text; floats written with ``repr`` so they read back bit-exact."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(RESULT_COLUMNS)
    for row in rows:
        writer.writerow(["" if row[c] is None else row[c] for c in RESULT_COLUMNS])
    return buf.getvalue()


# --------------------------------------------------------------------------- benchmark
def run_benchmark(
    dataset_root: str | Path,
    categories: Sequence[str],
    detectors: Sequence[str],
    out_dir: str | Path,
    detector_params: dict[str, Any] | None = None,
    fpr_limit: float = DEFAULT_FPR_LIMIT,
    random_state: int = 0,
    alpha: float = DEFAULT_ALPHA,
    on_result: Callable[[dict[str, Any]], None] | None = None,
    on_missing: Callable[[str, str], None] | None = None,
) -> dict[str, Any]:
    """Fit and evaluate every (category, detector) pair; write the table files.

    Parameters
    ----------
    dataset_root : str or Path
        Folder holding one sub-folder per category (MVTec AD layout).
    categories : sequence of str
        Categories to run; those missing on disk (or unreadable) are reported in
        ``missing`` and skipped, not fatal.
    detectors : sequence of str
        Registered detector names.
    out_dir : str or Path
        ``<out>/<category>/<detector>/model`` (the trained model) and ``.../eval``
        (metrics, maps, report) per pair; ``table.md``, ``table.csv``, ``table.json``.
    detector_params : dict or None
        Constructor parameters passed to every detector (e.g. ``input_size``).
    alpha : float
        Target false-alarm rate of each model's calibrated image threshold.
    on_result, on_missing : callable or None
        Called after each pair with its metrics, and for each skipped category with
        (category, reason): lets the CLI print as it goes.

    Returns
    -------
    dict
        ``rows``: one metrics dict per evaluated pair (plus ``report`` path),
        ``missing``: ``[{"category", "reason"}]``, ``detectors``: the detector names.
    """
    from defectmap.data.mvtec import load_category
    from defectmap.detectors import list_detectors
    from defectmap.pipeline import train_model
    from defectmap.report.table import write_tables

    known = list_detectors()
    unknown = [d for d in detectors if d not in known]
    if unknown:
        raise DefectmapError(f"unknown detector {unknown[0]!r}; known: {', '.join(known)}")
    root = Path(dataset_root)
    if not root.is_dir():
        raise DatasetError(f"{root}: dataset root does not exist or is not a folder")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    rows: list[dict[str, Any]] = []
    missing: list[dict[str, str]] = []
    for category in categories:
        try:
            data = load_category(root, category)
        except DefectmapError as exc:
            reason = "not found on disk" if not (root / category).exists() else str(exc)
            missing.append({"category": category, "reason": reason})
            if on_missing is not None:
                on_missing(category, reason)
            continue
        for detector in detectors:
            pair = out / category / detector
            model = train_model(data, pair / "model", detector=detector,
                                detector_params=dict(detector_params or {}),
                                random_state=random_state, alpha=alpha)
            metrics = evaluate_model(model, data, pair / "eval", fpr_limit=fpr_limit)
            metrics["report"] = str(pair / "eval" / "report.html")
            rows.append(metrics)
            if on_result is not None:
                on_result(metrics)
    result = {"rows": rows, "missing": missing, "detectors": list(detectors)}
    write_tables(result, out)
    return result
