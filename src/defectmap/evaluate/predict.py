"""Inspect image files into a results folder: ``results.csv``, ``results.json``, maps, overlays.

:func:`collect_images` turns the files and folders a user names into the list of images
(only the files directly in a folder unless asked to recurse, never the output folder);
:func:`plan_prediction` checks them all against the model and cuts them into forward-pass
batches with their output names; :func:`inspect_chunk` scores one batch into
:class:`ResultRecord` s; :func:`write_results` streams records into one output folder
(replaced atomically) through a :class:`ResultWriter`. :func:`predict_to_dir` is the three in
one process; :mod:`defectmap.distributed` runs :func:`inspect_chunk` in a pool of Ray actors
and feeds the same writer, so both write the same bytes. Memory stays bounded by one batch:
rows go to disk as they come (``results.json`` is assembled from a spool file at the end).
Imports no torch (the model brings its detector).
"""

from __future__ import annotations

import csv
import json
import shutil
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from defectmap.calibrate import CALIBRATION_FILE
from defectmap.data.io import IMAGE_EXTENSIONS
from defectmap.data.profile import InputMismatchError
from defectmap.errors import DefectmapError, DefectmapWarning, UncalibratedModelError
from defectmap.evaluate.maps import write_map
from defectmap.files import atomic_output_dir, check_replaceable, to_jsonable, write_bytes
from defectmap.progress import ProgressCallback

if TYPE_CHECKING:
    from defectmap.pipeline import InspectionModel

__all__ = ["IMAGE_SUFFIXES", "OUTPUT_ENTRIES", "RESULT_COLUMNS", "PredictSummary",
           "ResultRecord", "ResultWriter", "collect_images", "inspect_chunk", "plan_prediction",
           "predict_to_dir", "result_header", "write_results"]

#: File name endings taken from folders given to :func:`predict_to_dir`.
IMAGE_SUFFIXES = tuple(sorted(IMAGE_EXTENSIONS))

_TASK = "inspecting images"
_MARKER = "results.json"
_SPOOL = ".results.rows"
#: Rows per Parquet row group: bounds the rows held before they are written.
PARQUET_ROW_GROUP = 4096

#: Everything :func:`predict_to_dir` writes into its output folder.
OUTPUT_ENTRIES = (_MARKER, "results.csv", "results.parquet", "maps", "overlays")

#: Columns of ``results.csv`` (and ``results.parquet``).
RESULT_COLUMNS = ("image", "score", "normalized_score", "decision", "p_value", "decision_rule",
                  "n_regions", "map", "overlay")

#: A forward-pass batch: (image path, output name, mismatch or None) triples.
Chunk = Sequence[tuple[str, str, str | None]]


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


def plan_chunks(
    paths: Sequence[Path], batch_size: int, mismatches: dict[str, str] | None = None
) -> list[list[tuple[str, str, str | None]]]:
    """Consecutive batches of ``batch_size`` (path, output name, mismatch) triples, in order.

    The batches are the same wherever they are scored, so the forward passes (and their
    rounding) are too. ``mismatches`` maps a path to how it differs from the training
    images (see :func:`plan_prediction`); the others get None.

    Examples
    --------
    >>> plan_chunks([Path("a/x.png"), Path("b/x.png"), Path("y.png")], 2)
    [[('a/x.png', 'x', None), ('b/x.png', 'x_2', None)], [('y.png', 'y', None)]]
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise DefectmapError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    found = mismatches or {}
    triples = [(str(path), name, found.get(str(path)))
               for path, name in zip(paths, _unique_names(paths), strict=True)]
    return [triples[i:i + batch_size] for i in range(0, len(triples), batch_size)]


def plan_prediction(
    model: InspectionModel,
    inputs: Sequence[str | Path],
    out_dir: str | Path,
    batch_size: int = 1,
    progress: ProgressCallback | None = None,
    *,
    recursive: bool = False,
    uncalibrated: bool = False,
    allow_mismatch: bool = False,
) -> list[list[tuple[str, str, str | None]]]:
    """Check a prediction before anything is written; return its batches (:func:`plan_chunks`).

    The model must be calibrated (unless ``uncalibrated``), ``out_dir`` replaceable, every
    input readable (one error lists every bad file) and like the training images (see
    :mod:`defectmap.data.profile`; ``allow_mismatch`` turns the refusal into a
    :class:`~defectmap.errors.DefectmapWarning`). Parameters as :func:`predict_to_dir`.

    Raises
    ------
    UncalibratedModelError, ImageReadError, InputMismatchError, DefectmapError
    """
    from defectmap.data.io import check_images

    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise DefectmapError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    if model.calibration is None and not uncalibrated:
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
                      stacklevel=3)
    return plan_chunks(paths, batch_size, mismatched)


@dataclass(frozen=True, eq=False)  # eq=False: arrays have no single truth value
class ResultRecord:
    """One image's output: its ``results.json`` row, its map and its overlay.

    Attributes
    ----------
    row : the row (the :data:`RESULT_COLUMNS` plus ``regions``).
    anomaly_map : float32 (H, W) raw map, written as ``maps/<name>.tiff``; None: no map.
    overlay_png : the overlay's PNG bytes, written as ``overlays/<name>.png``; None: none.
    """

    row: dict[str, Any]
    anomaly_map: np.ndarray | None = None
    overlay_png: bytes | None = None


def inspect_chunk(
    model: InspectionModel,
    chunk: Chunk,
    batch_size: int = 1,
    write_maps: bool = True,
    write_overlays: bool = True,
) -> list[ResultRecord]:
    """Score one batch of images into records (nothing is written).

    Parameters
    ----------
    model : InspectionModel
    chunk : (path, output name, mismatch) triples (see :func:`plan_chunks`).
    batch_size : images per forward pass.
    write_maps, write_overlays : whether the records carry the map and the overlay.

    Returns
    -------
    list of ResultRecord
        One per image, in ``chunk`` order.
    """
    from defectmap.data.io import read_image
    from defectmap.report.render import colour_scale, encode_png, overlay_rgb

    calibration = model.calibration
    normalize_map = None  # per-image colour scale without a pixel calibration
    if calibration is not None and calibration.pixel_threshold is not None:
        normalize_map = calibration.normalize_map
    inspections = model.inspect([path for path, _, _ in chunk], batch_size=batch_size)
    records = []
    for (path, name, mismatch), result in zip(chunk, inspections, strict=True):
        amap = np.asarray(result.anomaly_map, dtype=np.float32)
        row: dict[str, Any] = {
            "image": path,
            "score": float(result.score),
            "normalized_score": _opt_float(result.normalized_score),
            "decision": result.decision,
            "p_value": _opt_float(result.p_value),
            "decision_rule": result.decision_rule,
            "n_regions": len(result.regions),
            "map": f"maps/{name}.tiff" if write_maps else None,
            "overlay": f"overlays/{name}.png" if write_overlays else None,
            "regions": [r.to_dict() for r in result.regions],
            "mismatch": mismatch,
        }
        overlay = None
        if write_overlays:
            overlay = encode_png(overlay_rgb(read_image(path), colour_scale(amap, normalize_map),
                                             result.mask))
        records.append(ResultRecord(row, amap if write_maps else None, overlay))
    return records


@dataclass
class PredictSummary:
    """What a results folder holds: counts, the first rows (for printing), and whether the
    model was calibrated (else the rows have no decision)."""

    n_images: int = 0
    n_defect: int = 0
    head: list[dict[str, Any]] = field(default_factory=list)
    calibrated: bool = True


def _indented(text: str, spaces: int) -> str:
    pad = " " * spaces
    return "\n".join(pad + line for line in text.splitlines())


class ResultWriter:
    """Writes records into a folder as they come: CSV, JSON, optional Parquet, maps, overlays.

    ``results.json`` is the same text as ``json.dumps(payload, indent=2)`` of the whole
    payload (``model_hash``, ``detector``, ``calibrated``, ``n_images``, ``n_defect``,
    ``results``), built from
    a spool file in :meth:`close`, so no row is kept in memory. ``results.csv`` floats are
    written with ``repr`` so they read back bit-exact.

    Parameters
    ----------
    folder : the (temporary) output folder.
    header : the fields of ``results.json`` before ``n_images`` (:func:`result_header`).
    parquet : also write ``results.parquet`` (the :data:`RESULT_COLUMNS`; needs pyarrow).
    n_head : rows kept for :attr:`PredictSummary.head`.
    """

    def __init__(self, folder: Path, header: dict[str, Any], parquet: bool = False,
                 n_head: int = 20) -> None:
        self.folder = folder
        self.header = dict(header)
        self.summary = PredictSummary(calibrated=bool(header.get("calibrated", True)))
        self._n_head = n_head
        self._csv_file = (folder / "results.csv").open("w", encoding="utf-8", newline="")
        self._csv = csv.writer(self._csv_file, lineterminator="\n")
        self._csv.writerow(RESULT_COLUMNS)
        self._spool = (folder / _SPOOL).open("w", encoding="utf-8")
        self._parquet = _ParquetRows(folder / "results.parquet") if parquet else None

    def write(self, record: ResultRecord) -> None:
        """Write one image's row, map and overlay."""
        row = record.row
        if record.anomaly_map is not None:
            write_map(self.folder / row["map"], record.anomaly_map)
        if record.overlay_png is not None:
            (self.folder / "overlays").mkdir(exist_ok=True)
            write_bytes(self.folder / row["overlay"], record.overlay_png)
        self._csv.writerow(["" if row[c] is None else row[c] for c in RESULT_COLUMNS])
        text = json.dumps(to_jsonable(row), indent=2, allow_nan=False)
        self._spool.write(("" if self.summary.n_images == 0 else ",\n") + _indented(text, 4))
        if self._parquet is not None:
            self._parquet.add(row)
        self.summary.n_images += 1
        self.summary.n_defect += row["decision"] == "defect"
        if len(self.summary.head) < self._n_head:
            self.summary.head.append(row)

    def close(self) -> PredictSummary:
        """Finish every file; return the summary."""
        self._csv_file.close()
        self._spool.close()
        if self._parquet is not None:
            self._parquet.close()
        counts = {"n_images": self.summary.n_images, "n_defect": self.summary.n_defect}
        head = json.dumps(to_jsonable({**self.header, **counts}), indent=2, allow_nan=False)
        spool = self.folder / _SPOOL
        with (self.folder / _MARKER).open("w", encoding="utf-8") as out:
            if self.summary.n_images == 0:
                out.write(head[:-2] + ',\n  "results": []\n}\n')
            else:
                out.write(head[:-2] + ',\n  "results": [\n')
                with spool.open(encoding="utf-8") as rows:
                    shutil.copyfileobj(rows, out)
                out.write("\n  ]\n}\n")
        spool.unlink()
        return self.summary

    def abort(self) -> None:
        """Close the open files after an error (the folder is discarded by its owner)."""
        for handle in (self._csv_file, self._spool):
            handle.close()
        if self._parquet is not None:
            self._parquet.close()


class _ParquetRows:
    """``results.parquet`` written in row groups of :data:`PARQUET_ROW_GROUP` rows."""

    def __init__(self, path: Path) -> None:
        try:
            import pyarrow as pa
            import pyarrow.parquet as pq
        except ImportError:
            raise DefectmapError("results.parquet needs pyarrow: pip install pyarrow "
                                 "(or 'defectmap[ray]')") from None
        self._pa = pa
        self._schema = pa.schema([
            ("image", pa.string()), ("score", pa.float64()),
            ("normalized_score", pa.float64()), ("decision", pa.string()),
            ("p_value", pa.float64()), ("decision_rule", pa.string()),
            ("n_regions", pa.int64()), ("map", pa.string()),
            ("overlay", pa.string()),
        ])
        self._writer = pq.ParquetWriter(path, self._schema)
        self._rows: list[dict[str, Any]] = []

    def add(self, row: dict[str, Any]) -> None:
        self._rows.append({c: row[c] for c in RESULT_COLUMNS})
        if len(self._rows) >= PARQUET_ROW_GROUP:
            self._flush()

    def _flush(self) -> None:
        if self._rows:
            self._writer.write_table(self._pa.Table.from_pylist(self._rows, self._schema))
            self._rows = []

    def close(self) -> None:
        self._flush()
        self._writer.close()


def write_results(
    out_dir: str | Path,
    batches: Iterable[Sequence[ResultRecord]],
    header: dict[str, Any],
    n_images: int,
    parquet: bool = False,
    progress: ProgressCallback | None = None,
    on_row: Callable[[dict[str, Any]], None] | None = None,
) -> PredictSummary:
    """Stream batches of records into ``out_dir`` (replaced atomically when complete).

    Parameters
    ----------
    out_dir : output folder; an existing one is only replaced if it holds ``results.json``
        and nothing but :data:`OUTPUT_ENTRIES`.
    batches : the records, batch after batch, in input order (consumed lazily).
    header : :func:`result_header`.
    n_images : how many records ``batches`` holds (for the progress total).
    parquet : also write ``results.parquet``.
    progress : reports ``("inspecting images", done, n_images)``.
    on_row : called with each row as it is written.
    """
    with atomic_output_dir(out_dir, marker=_MARKER, owned=OUTPUT_ENTRIES) as tmp:
        writer = ResultWriter(tmp, header, parquet=parquet)
        try:
            if progress is not None:
                progress(_TASK, 0, n_images)
            for batch in batches:
                for record in batch:
                    writer.write(record)
                    if on_row is not None:
                        on_row(record.row)
                if progress is not None:
                    progress(_TASK, writer.summary.n_images, n_images)
        except BaseException:
            writer.abort()
            raise
        return writer.close()


def result_header(model: InspectionModel) -> dict[str, Any]:
    """The fields of ``results.json`` that describe the model."""
    return {"model_hash": model.model_hash, "detector": model.describe().get("detector"),
            "calibrated": model.calibration is not None}


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
    parquet: bool = False,
    n_threads: int | None = None,
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
    parquet : bool
        Also write ``results.parquet`` (the CSV's columns; needs pyarrow).
    n_threads : int or None
        Torch/faiss threads (None: the library default); see :mod:`defectmap.threads`.

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
    from defectmap.threads import compute_threads

    chunks = plan_prediction(model, inputs, out_dir, batch_size, progress,
                             recursive=recursive, uncalibrated=uncalibrated,
                             allow_mismatch=allow_mismatch)
    rows: list[dict[str, Any]] = []
    batches = (inspect_chunk(model, chunk, batch_size, write_maps, write_overlays)
               for chunk in chunks)
    with compute_threads(n_threads):
        write_results(out_dir, batches, result_header(model), sum(map(len, chunks)),
                      parquet=parquet, progress=progress, on_row=rows.append)
    return rows


def _opt_float(value: Any) -> float | None:
    return None if value is None else float(value)
