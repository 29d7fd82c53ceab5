"""The inspection service's logic, without HTTP: one trained model, its audit log, its pictures.

:class:`InspectionService` decodes an upload, inspects it, stores its pictures when asked,
commits its audit row and only then returns it; the HTTP layer (:mod:`defectmap.serve.routes`)
turns its results and its :class:`ApiError` into JSON answers.

Retention of heatmaps
---------------------
The anomaly maps of the last ``cache_size`` inspections (default 32) are kept in memory and
rendered on request. With ``store_images=True`` every upload (its original bytes), heatmap
and overlay are also written to ``<db folder>/<db name>-files/`` before the row is committed,
and their paths go into the row; those links keep working after the in-memory entry is gone
and after a restart. Without stored files, a heatmap link of an older or pre-restart
inspection answers 410 Gone with a message saying so (the audit row itself is never lost).

Concurrency
-----------
Uploads are decoded, hashed and rendered in the thread pool in parallel; the model's
``inspect`` call is serialised by a lock (detectors are not promised to be thread-safe, and
on a CPU one inference already uses every core); audit writes are serialised by the log.
"""

from __future__ import annotations

import hashlib
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from defectmap.constants import MAX_IMAGE_PIXELS
from defectmap.data.io import MAX_UPLOAD_BYTES, decode_image, probe_info
from defectmap.errors import (
    DefectmapError,
    ImageReadError,
    ImageTooLargeError,
    ModelFileError,
    UncalibratedModelError,
)
from defectmap.files import to_jsonable, write_bytes
from defectmap.report.render import colour_scale, encode_png, heatmap_rgb, overlay_rgb
from defectmap.serve.audit import AuditLog, AuditLogError, AuditRecord, open_audit_log

__all__ = ["DEFAULT_DB_NAME", "ApiError", "InspectionService"]

#: Database file used when no ``db_path`` is given (in the current directory).
DEFAULT_DB_NAME = "defectmap-audit.sqlite3"
_FORMAT_SUFFIX = {"PNG": ".png", "JPEG": ".jpg", "BMP": ".bmp", "TIFF": ".tif"}


class ApiError(Exception):
    """An error answered as ``{"error": code, "detail": message}`` with ``status``."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


@dataclass
class _Held:
    """What the in-memory cache keeps per inspection to draw its pictures."""

    image: np.ndarray  # (H, W, 3) uint8
    amap: np.ndarray  # (H, W) float32
    mask: np.ndarray | None  # (H, W) bool predicted defect mask; None without pixel threshold


class InspectionService:
    """The model, the audit log and the picture cache behind the HTTP endpoints.

    Parameters
    ----------
    model_dir : str or Path
        A directory written by ``train_model`` (detector + ``calibration.json``).
    db_path : str or Path, optional
        SQLite audit database; default ``./defectmap-audit.sqlite3``.
    store_images : bool
        Also write each upload, heatmap and overlay beside the database.
    max_upload_bytes, max_pixels : int
        Uploads over these limits are refused (413) before decoding.
    cache_size : int
        Number of recent anomaly maps held in memory for the picture endpoints.
    warmup : bool
        Run one inference on a blank image at start-up (the first one is slow).
    runtime : str, optional
        ``"torch"``, ``"onnxruntime"`` or ``"openvino"``; None: the fastest installed one the
        model folder was exported for (see :func:`defectmap.pipeline.load_model`).
    uncalibrated : bool
        Serve a model without ``calibration.json`` (answers carry raw scores only, the
        decision is null); by default such a model is refused.
    allow_mismatch : bool
        Score uploads whose colour or size differs from the training images (see
        :mod:`defectmap.data.profile`); by default they are answered 422 ``input_mismatch``.

    Raises
    ------
    UncalibratedModelError
        The model has no calibration and ``uncalibrated`` is False.
    DefectmapError
        When the model directory is missing or invalid, or the database cannot be opened.
    """

    def __init__(
        self,
        model_dir: str | Path,
        db_path: str | Path | None = None,
        store_images: bool = False,
        max_upload_bytes: int = MAX_UPLOAD_BYTES,
        max_pixels: int = MAX_IMAGE_PIXELS,
        cache_size: int = 32,
        warmup: bool = True,
        runtime: str | None = None,
        uncalibrated: bool = False,
        allow_mismatch: bool = False,
    ) -> None:
        from defectmap.pipeline import load_model

        model_dir = Path(model_dir)
        if not model_dir.is_dir():
            raise DefectmapError(f"{model_dir}: model directory not found")
        self.model_dir = model_dir
        self.model = load_model(model_dir, runtime=runtime)
        if self.model.calibration is None and not uncalibrated:
            raise UncalibratedModelError(
                f"{model_dir}: no calibration.json, so no ok/defect decision can be made; "
                "train it with calibration, or serve raw scores only (uncalibrated=True)"
            )
        self.allow_mismatch = allow_mismatch
        self.description: dict[str, Any] = to_jsonable(self.model.describe())
        self.model_name = model_dir.resolve().name
        self.model_hash = str(self.model.model_hash)
        calibration = getattr(self.model, "calibration", None)
        # Colour scale of the pictures: the calibrated map normalisation when there is one.
        self._normalize_map: Callable[[np.ndarray], np.ndarray] | None = None
        if calibration is not None and getattr(calibration, "pixel_threshold", None) is not None:
            self._normalize_map = calibration.normalize_map
        self.thresholds: dict[str, Any] = self.description.get("thresholds") or {}
        self._infer_lock = threading.Lock()
        if warmup:
            # The first inference initialises the backbone lazily (seconds): pay it at start-up
            # rather than on the first upload, and prove the model runs end to end before the
            # audit database is touched.
            try:
                self._inspect(np.full((64, 64, 3), 128, dtype=np.uint8))
            except Exception as exc:
                raise ModelFileError(
                    f"{model_dir}: the model fails on a test image ({type(exc).__name__}: {exc})"
                ) from exc
        self.audit: AuditLog = open_audit_log(db_path or Path.cwd() / DEFAULT_DB_NAME)
        self.files_dir = self.audit.path.parent / f"{self.audit.path.stem}-files"
        self.store_images = store_images
        self.max_upload_bytes = int(max_upload_bytes)
        self.max_pixels = int(max_pixels)
        self.cache_size = int(cache_size)
        self._cache: OrderedDict[str, _Held] = OrderedDict()
        self._cache_lock = threading.Lock()

    # -- inspecting ------------------------------------------------------------------------

    def inspect_upload(self, data: bytes, filename: str) -> AuditRecord:
        """Decode, inspect, store and log one upload; return its committed audit row.

        Raises
        ------
        ApiError
            For empty, too large, non-image or unreadable uploads.
        """
        started = time.perf_counter()
        image, fmt = self._decode(data, filename)
        result = self._inspect(image)
        elapsed_ms = (time.perf_counter() - started) * 1000.0
        inspection_id = uuid.uuid4().hex
        held = _Held(image, np.asarray(result["map"], dtype=np.float32), result["mask"])
        paths: dict[str, str | None] = {}
        if self.store_images:
            paths = self._store_files(inspection_id, data, fmt, held)
        record = AuditRecord(
            id=inspection_id,
            created_at="",  # set by the log under its lock, so time order = insert order
            filename=filename,
            image_sha256=hashlib.sha256(data).hexdigest(),
            width=int(image.shape[1]),
            height=int(image.shape[0]),
            score=result["score"],
            normalized_score=result["normalized_score"],
            p_value=result["p_value"],
            decision=result["decision"],
            thresholds=self.thresholds,
            model_name=self.model_name,
            model_hash=self.model_hash,
            elapsed_ms=round(elapsed_ms, 3),
            regions=result["regions"],
            **paths,
        )
        try:
            record = self.audit.insert(record)
        except AuditLogError as exc:
            # No row, no answer: a decision that cannot be logged is not handed out.
            raise ApiError(503, "audit_unavailable", str(exc)) from exc
        with self._cache_lock:
            self._cache[inspection_id] = held
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return record

    def _decode(self, data: bytes, filename: str) -> tuple[np.ndarray, str]:
        """The decoded (H, W, 3) uint8 image and its format name (``"PNG"``, ...)."""
        if not data:
            raise ApiError(400, "empty_upload", f"{filename}: empty upload (0 bytes)")
        if len(data) > self.max_upload_bytes:
            raise ApiError(
                413,
                "upload_too_large",
                f"{filename}: upload is larger than the limit of {self.max_upload_bytes} bytes",
            )
        try:
            info, fmt = probe_info(data, filename, self.max_pixels)
        except ImageTooLargeError as exc:
            raise ApiError(413, "too_many_pixels", str(exc)) from exc
        except ImageReadError as exc:
            raise ApiError(415, "not_an_image", str(exc)) from exc
        mismatch = [] if self.allow_mismatch else self.model.input_mismatches([info], [filename])
        if mismatch:
            raise ApiError(422, "input_mismatch",
                           f"{filename}: {mismatch[0][1]}; this service does not score such "
                           "images (it was started without allow_mismatch)")
        try:
            image = decode_image(
                data, filename, mode="RGB", max_pixels=self.max_pixels,
                max_bytes=self.max_upload_bytes,
            )
        except ImageReadError as exc:
            raise ApiError(400, "unreadable_image", f"{exc} (format {fmt})") from exc
        return image, fmt

    def _inspect(self, image: np.ndarray) -> dict[str, Any]:
        with self._infer_lock:
            inspection = self.model.inspect([image])[0]
        return _inspection_fields(inspection)

    def _render(self, held: _Held, kind: str) -> bytes:
        """The PNG of one picture: ``"heatmap"`` or ``"overlay"`` (see defectmap.report.render)."""
        scaled = colour_scale(held.amap, self._normalize_map)
        if kind == "heatmap":
            return encode_png(heatmap_rgb(scaled))
        return encode_png(overlay_rgb(held.image, scaled, held.mask))

    def _store_files(
        self, inspection_id: str, data: bytes, fmt: str, held: _Held
    ) -> dict[str, str | None]:
        suffix = _FORMAT_SUFFIX.get(fmt, ".bin")
        contents = {
            "image_path": (f"{inspection_id}-input{suffix}", data),
            "heatmap_path": (f"{inspection_id}-heatmap.png", self._render(held, "heatmap")),
            "overlay_path": (f"{inspection_id}-overlay.png", self._render(held, "overlay")),
        }
        self.files_dir.mkdir(parents=True, exist_ok=True)
        stored: dict[str, str | None] = {}
        for key, (name, payload) in contents.items():
            write_bytes(self.files_dir / name, payload)
            stored[key] = f"{self.files_dir.name}/{name}"
        return stored

    # -- pictures --------------------------------------------------------------------------

    def picture(self, inspection_id: str, kind: str) -> bytes | Path:
        """PNG bytes (from memory) or a stored file path for ``kind`` in heatmap/overlay.

        Raises
        ------
        ApiError
            404 for an unknown id, 410 when the map is no longer held.
        """
        with self._cache_lock:
            held = self._cache.get(inspection_id)
        if held is not None:
            return self._render(held, kind)
        record = self.get(inspection_id)
        stored = record.heatmap_path if kind == "heatmap" else record.overlay_path
        if stored and (self.audit.path.parent / stored).is_file():
            return self.audit.path.parent / stored
        raise ApiError(
            410,
            "picture_gone",
            f"the {kind} of inspection {inspection_id} is no longer held: the service keeps "
            f"the maps of its last {self.cache_size} inspections in memory; start it with "
            "--store-images to keep every heatmap and overlay on disk",
        )

    def get(self, inspection_id: str) -> AuditRecord:
        """The audit row of ``inspection_id``; :class:`ApiError` 404 when there is none."""
        record = self.audit.get(inspection_id)
        if record is None:
            raise ApiError(404, "not_found", f"no inspection with id {inspection_id!r}")
        return record


# -- helpers -------------------------------------------------------------------------------


def _optional_float(value: Any) -> float | None:
    return None if value is None else float(value)


def _inspection_fields(inspection: Any) -> dict[str, Any]:
    """Plain JSON-ready values from one ``defectmap.pipeline.Inspection``, plus map and mask."""
    decision = inspection.decision
    return {
        "score": float(inspection.score),
        "normalized_score": _optional_float(inspection.normalized_score),
        "p_value": _optional_float(inspection.p_value),
        "decision": None if decision is None else str(decision),
        "regions": [region.to_dict() for region in inspection.regions],
        "map": inspection.anomaly_map,
        "mask": inspection.mask,
    }
