"""Inspect image files into a results folder: ``results.csv``, ``results.json``, maps, overlays.

:func:`collect_images` turns the files and folders a user names into the list of images
(only the files directly in a folder unless asked to recurse, never the output folder);
:func:`predict_to_dir` checks them all, inspects them with a trained model and writes one
output folder atomically. Imports no torch (the model brings its detector).
"""

from __future__ import annotations

import csv
import io
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from defectmap.calibrate import CALIBRATION_FILE
from defectmap.data.io import IMAGE_EXTENSIONS
from defectmap.data.profile import InputMismatchError
from defectmap.errors import DefectmapError, DefectmapWarning, UncalibratedModelError
from defectmap.evaluate.maps import write_map
from defectmap.files import (
    atomic_output_dir,
    check_replaceable,
    write_bytes,
    write_json,
    write_text,
)
from defectmap.progress import ProgressCallback

if TYPE_CHECKING:
    from defectmap.pipeline import InspectionModel

__all__ = ["IMAGE_SUFFIXES", "OUTPUT_ENTRIES", "RESULT_COLUMNS", "collect_images",
           "predict_to_dir"]

#: File name endings taken from folders given to :func:`predict_to_dir`.
IMAGE_SUFFIXES = tuple(sorted(IMAGE_EXTENSIONS))

_TASK = "inspecting images"

_MARKER = "results.json"
#: Everything :func:`predict_to_dir` writes into its output folder.
OUTPUT_ENTRIES = (_MARKER, "results.csv", "maps", "overlays")


#: Columns of ``results.csv``.
RESULT_COLUMNS = ("image", "score", "normalized_score", "decision", "p_value", "n_regions",
                  "map", "overlay")


def collect_images(
    inputs: Sequence[str | Path], recursive: bool = False, exclude: str | Path | None = None
) -> list[Path]:
    """Image files named directly, plus the image files of the folders named (sorted).

    Parameters
    ----------
    inputs : image files and/or folders.
    recursive : also take the images of sub-folders (sorted by path); by default only the
        files directly in each folder given.
    exclude : a folder whose contents are never taken (the output folder, so that a second
        run does not score its own overlays), nor the hidden temporary folders built beside
        it.

    Hidden files and folders are skipped; a file named directly is always taken.

    Raises
    ------
    DefectmapError
        A path that does not exist, or a folder without images.
    """
    skip = None if exclude is None else Path(exclude).absolute()
    found: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            candidates = path.rglob("*") if recursive else path.iterdir()
            images = sorted(
                p for p in candidates
                if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                and not any(part.startswith(".") for part in p.relative_to(path).parts)
                and not (skip is not None and p.absolute().is_relative_to(skip))
            )
            if not images:
                where = "or its sub-folders " if recursive else ""
                raise DefectmapError(f"{path}: folder {where}holds no images "
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
    *,
    recursive: bool = False,
    uncalibrated: bool = False,
    allow_mismatch: bool = False,
) -> list[dict[str, Any]]:
    """Inspect image files and write the results into ``out_dir`` (replaced atomically).

    Writes ``results.csv`` (columns :data:`RESULT_COLUMNS`), ``results.json`` (the same rows
    plus each image's regions and any difference from the training images, the model's
    hash, and ``calibrated``), ``maps/<name>.tiff`` (float32 raw anomaly maps at native
    size) and ``overlays/<name>.png`` (heatmap over the image with the predicted regions
    outlined; the colour scale is the calibrated normalised map, so green = pixel threshold,
    red = far above it).

    Before anything is written, every input is checked (one error lists every unreadable
    file) and compared with the training images (see :mod:`defectmap.data.profile`).

    Parameters
    ----------
    model : InspectionModel
    inputs : sequence of str or Path
        Image files and/or folders (see :func:`collect_images`; ``out_dir`` is never read).
    out_dir : str or Path
        Output folder; an existing one is only replaced if it holds ``results.json`` and
        nothing but what this function writes (:data:`OUTPUT_ENTRIES`).
    batch_size : int
        Images per forward pass, at least 1.
    write_maps, write_overlays : bool
        Whether to write the TIFF maps and the overlay PNGs.
    progress : ProgressCallback or None
        Reports the checks and ``("inspecting images", done, total)`` (see
        :mod:`defectmap.progress`).
    recursive : bool
        Also read the images in sub-folders of the folders given.
    uncalibrated : bool
        Accept a model without ``calibration.json``: raw scores only, the decision,
        normalised score and p-value stay empty. By default such a model is refused.
    allow_mismatch : bool
        Score images that differ from the training images in colour or size (a
        :class:`~defectmap.errors.DefectmapWarning` names them); by default they are refused.

    Returns
    -------
    list of dict
        One row per image, in input order (as in ``results.csv``).

    Raises
    ------
    UncalibratedModelError
        The model has no calibration and ``uncalibrated`` is False.
    ImageReadError
        Inputs that cannot be read (all listed).
    InputMismatchError
        Inputs that differ from the training images (all listed), without ``allow_mismatch``.
    """
    from defectmap.data.io import check_images, read_image
    from defectmap.report.render import colour_scale, encode_png, overlay_rgb

    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise DefectmapError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    calibration = model.calibration
    if calibration is None and not uncalibrated:
        raise UncalibratedModelError(
            f"{model.directory or 'the model'}: no {CALIBRATION_FILE}, so no ok/defect "
            "decision can be made; train it with calibration, or accept raw scores only "
            "(uncalibrated=True)"
        )
    check_replaceable(out_dir, _MARKER, OUTPUT_ENTRIES)
    paths = collect_images(inputs, recursive=recursive, exclude=out_dir)
    infos = check_images(paths, progress=progress)
    mismatched = dict(model.input_mismatches(infos, [str(p) for p in paths]))
    if mismatched:
        listed = "; ".join(f"{name}: {reason}" for name, reason in mismatched.items())
        text = (f"{len(mismatched)} of {len(paths)} image(s) differ from the training "
                f"images: {listed}")
        if not allow_mismatch:
            raise InputMismatchError(f"{text}; refusing to score them (allow_mismatch=True "
                                     "scores them anyway)", list(mismatched.items()))
        warnings.warn(f"{text}; their scores may flag good parts", DefectmapWarning,
                      stacklevel=2)
    names = _unique_names(paths)
    normalize_map = None  # per-image colour scale without a pixel calibration
    if calibration is not None and calibration.pixel_threshold is not None:
        normalize_map = calibration.normalize_map
    rows: list[dict[str, Any]] = []
    with atomic_output_dir(out_dir, marker=_MARKER, owned=OUTPUT_ENTRIES) as tmp:
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
                    "mismatch": mismatched.get(str(path)),
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
        write_json(tmp / _MARKER, {
            "model_hash": model.model_hash,
            "detector": model.describe().get("detector"),
            "calibrated": calibration is not None,
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
