"""Inspect image files into a results folder: ``results.csv``, ``results.json``, maps, overlays.

:func:`collect_images` turns the files and folders a user names into the list of images;
:func:`predict_to_dir` inspects them with a trained model and writes one output folder
atomically. Imports no torch (the model brings its detector).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from defectmap.data.io import IMAGE_EXTENSIONS
from defectmap.errors import DefectmapError
from defectmap.evaluate.maps import write_map
from defectmap.files import atomic_output_dir, write_bytes, write_json, write_text
from defectmap.progress import ProgressCallback

if TYPE_CHECKING:
    from defectmap.pipeline import InspectionModel

__all__ = ["IMAGE_SUFFIXES", "RESULT_COLUMNS", "collect_images", "predict_to_dir"]

#: File name endings taken from folders given to :func:`predict_to_dir`.
IMAGE_SUFFIXES = tuple(sorted(IMAGE_EXTENSIONS))

_TASK = "inspecting images"

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


def _chunks(items: Sequence[Any], size: int) -> list[Sequence[Any]]:
    return [items[i:i + size] for i in range(0, len(items), size)]


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
    progress: ProgressCallback | None = None,
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
    progress : ProgressCallback or None
        Reports ``("inspecting images", done, total)`` (see :mod:`defectmap.progress`).

    Returns
    -------
    list of dict
        One row per image, in input order (as in ``results.csv``).
    """
    from defectmap.data.io import read_image
    from defectmap.report.render import colour_scale, encode_png, overlay_rgb

    paths = collect_images(inputs)
    names = _unique_names(paths)
    calibration = model.calibration
    normalize_map = None  # per-image colour scale without a pixel calibration
    if calibration is not None and calibration.pixel_threshold is not None:
        normalize_map = calibration.normalize_map
    rows: list[dict[str, Any]] = []
    with atomic_output_dir(out_dir, marker="results.json") as tmp:
        if progress is not None:
            progress(_TASK, 0, len(paths))
        for chunk in _chunks(list(zip(paths, names, strict=True)), batch_size):
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
                    write_map(tmp / "maps" / f"{name}.tiff", amap)
                if write_overlays:
                    picture = overlay_rgb(read_image(path), colour_scale(amap, normalize_map),
                                          result.mask)
                    (tmp / "overlays").mkdir(exist_ok=True)
                    write_bytes(tmp / "overlays" / f"{name}.png", encode_png(picture))
                rows.append(row)
            if progress is not None:
                progress(_TASK, len(rows), len(paths))
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
