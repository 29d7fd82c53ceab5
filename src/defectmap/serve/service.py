"""The inspection service's logic, without HTTP: the served model, its audit log, its pictures.

:class:`InspectionService` decodes an upload, has it scored, stores its pictures when asked,
commits its audit row and only then returns it; the HTTP layer (:mod:`defectmap.serve.routes`)
turns its results and its :class:`ApiError` into JSON answers.

The pipeline of one upload
--------------------------
1. Request thread: size checks, header probe, a reservation of the decoded bytes in the
   pending budget (:class:`~defectmap.serve.batching.ByteBudget`), decode, SHA-256.
2. The inference thread (:class:`~defectmap.serve.batching.MicroBatcher`) scores it, alone or
   in a micro-batch, with the model in service at that moment
   (:class:`~defectmap.serve.slot.ModelSlot`, which follows a registry's ``current``).
3. Request thread: stored files (``--store-images``), the audit row (committed before the
   answer), the picture cache entry, the answer.

Steps 1 and 3 of other requests run while step 2 runs, so the cores are kept busy. A client
that sends an ``Idempotency-Key`` gets the row already logged under it instead of a second
inspection: retrying after a lost answer (a killed worker) neither loses nor duplicates a
decision.

Retention of heatmaps
---------------------
Recent inspections' maps are kept in a byte-bounded cache (:mod:`defectmap.serve.pictures`)
and rendered on request. With ``store_images=True`` every upload, heatmap and overlay is also
written to ``files_dir`` before the row is committed, and their paths go into the row; those
links keep working after the cache entry is gone and after a restart. Otherwise a heatmap
link of an older inspection answers 410 Gone with a message saying so (the audit row itself
is never lost).
"""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from defectmap.calibrate.conformal import normalize
from defectmap.calibrate.drift import DEFAULT_DRIFT_ALPHA, DEFAULT_WINDOW, DriftResult, drift_test
from defectmap.constants import MAX_IMAGE_PIXELS
from defectmap.data.io import MAX_UPLOAD_BYTES, decode_image, probe_info
from defectmap.errors import ImageReadError, ImageTooLargeError
from defectmap.files import write_bytes
from defectmap.report.render import colour_scale, encode_png, heatmap_rgb, overlay_rgb
from defectmap.serve.audit import (
    AuditRecord,
    AuditStore,
    AuditUnavailableError,
    UnknownInspectionError,
    Verdict,
    files_root,
    is_url,
    open_audit_log,
)
from defectmap.serve.batching import (
    DEFAULT_PENDING_BYTES,
    BudgetTimeout,
    ByteBudget,
    MicroBatcher,
)
from defectmap.serve.pictures import DEFAULT_CACHE_BYTES, Held, PictureCache
from defectmap.serve.slot import ModelSlot, ServedModel

__all__ = ["DEFAULT_DB_NAME", "ApiError", "InspectionService"]

#: Database file used when no ``db_path`` is given (in the current directory).
DEFAULT_DB_NAME = "defectmap-audit.sqlite3"
_FORMAT_SUFFIX = {"PNG": ".png", "JPEG": ".jpg", "BMP": ".bmp", "TIFF": ".tif"}
#: Bytes per pixel reserved while an upload waits for and goes through inference: the
#: decoded RGB image (3), its float32 map (4) and its mask (1).
_PENDING_BYTES_PER_PIXEL = 8
#: Longest wait for room in the pending budget before answering 503.
_PENDING_WAIT_S = 30.0


class ApiError(Exception):
    """An error answered as ``{"error": code, "detail": message}`` with ``status``."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


class InspectionService:
    """The model, the audit log and the picture cache behind the HTTP endpoints.

    Parameters
    ----------
    model_dir : str or Path
        A directory written by ``train_model``, or a model registry (its ``current``
        version is served and followed).
    db_path : str or Path, optional
        SQLite file or ``postgresql://`` URL of the audit log; default
        ``./defectmap-audit.sqlite3``.
    store_images : bool
        Also write each upload, heatmap and overlay to ``files_dir``.
    max_upload_bytes, max_pixels : int
        Uploads over these limits are refused (413) before decoding.
    cache_bytes : int
        Byte budget of the picture cache (per worker).
    pending_bytes : int
        Byte budget of decoded uploads waiting for inference (per worker).
    max_batch, max_wait_ms : int, float
        Micro-batching of the inference thread (``max_batch=1``: none).
    picture_dir : Path, optional
        Shared folder for the picture cache (several workers); None keeps it in memory.
    files_dir : Path, optional
        Where stored files go; default ``<db folder>/<db name>-files`` for SQLite,
        ``./defectmap-files`` for a server database.
    warmup : bool
        Run one inference on a blank image before serving (the first one is slow).
    reload_s : float
        How often a registry's ``current`` pointer is checked.
    drift_window, drift_alpha : int, float
        Settings of the drift check (:func:`defectmap.calibrate.drift.drift_test`).
    runtime : str, optional
        ``"torch"``, ``"onnxruntime"`` or ``"openvino"``; None: the fastest installed one the
        model folder was exported for (see :func:`defectmap.pipeline.load_model`).
    n_threads : int, optional
        CPU threads of an ONNX Runtime / OpenVINO runtime (None: its default).
    uncalibrated : bool
        Serve a model without ``calibration.json`` (answers carry raw scores only, the
        decision is null); by default such a model is refused, and so is such a version
        promoted later in a followed registry (the old version keeps serving).
    allow_mismatch : bool
        Score uploads whose colour or size differs from the training images of the model in
        service (see :mod:`defectmap.data.profile`); by default they are answered 422
        ``input_mismatch``.

    Raises
    ------
    UncalibratedModelError
        The model has no calibration and ``uncalibrated`` is False.
    DefectmapError
        When the model is missing or invalid, or the database cannot be opened.
    """

    def __init__(
        self,
        model_dir: str | Path,
        db_path: str | Path | None = None,
        store_images: bool = False,
        max_upload_bytes: int = MAX_UPLOAD_BYTES,
        max_pixels: int = MAX_IMAGE_PIXELS,
        cache_bytes: int = DEFAULT_CACHE_BYTES,
        pending_bytes: int = DEFAULT_PENDING_BYTES,
        max_batch: int = 1,
        max_wait_ms: float = 0.0,
        picture_dir: Path | None = None,
        files_dir: Path | None = None,
        warmup: bool = True,
        reload_s: float = 1.0,
        drift_window: int = DEFAULT_WINDOW,
        drift_alpha: float = DEFAULT_DRIFT_ALPHA,
        runtime: str | None = None,
        n_threads: int | None = None,
        uncalibrated: bool = False,
        allow_mismatch: bool = False,
    ) -> None:
        # The model first: prove it runs before the audit database is touched.
        self.slot = ModelSlot(model_dir, warmup=warmup, poll_s=reload_s, runtime=runtime,
                              n_threads=n_threads, uncalibrated=uncalibrated)
        self.allow_mismatch = allow_mismatch
        self.audit: AuditStore = open_audit_log(db_path or Path.cwd() / DEFAULT_DB_NAME)
        self.files_root = files_root(self.audit)
        if files_dir is None:
            name = "defectmap" if is_url(self.audit.location) else Path(
                self.audit.location).stem
            files_dir = self.files_root / f"{name}-files"
        self.files_dir = Path(files_dir)
        self.store_images = store_images
        self.max_upload_bytes = int(max_upload_bytes)
        self.max_pixels = int(max_pixels)
        self.pictures = PictureCache(cache_bytes, picture_dir)
        self.pending = ByteBudget(pending_bytes)
        self.drift_window = int(drift_window)
        self.drift_alpha = float(drift_alpha)
        self.batcher: MicroBatcher[np.ndarray, tuple[ServedModel, Any]] = MicroBatcher(
            self._score, max_batch=max_batch, max_wait_s=max_wait_ms / 1000.0)
        self.slot.start()

    @property
    def model(self) -> Any:
        """The :class:`~defectmap.pipeline.InspectionModel` in service now."""
        return self.slot.current.model

    @property
    def served(self) -> ServedModel:
        return self.slot.current

    def close(self) -> None:
        """Stop the threads and close the database (committed rows are durable)."""
        self.slot.stop()
        self.batcher.close()
        self.pictures.clear()
        self.audit.close()

    # -- inspecting ------------------------------------------------------------------------

    def inspect_upload(
        self, data: bytes, filename: str, request_key: str | None = None
    ) -> tuple[AuditRecord, bool]:
        """Decode, inspect, store and log one upload.

        Returns
        -------
        (AuditRecord, bool)
            The committed row, and whether it is a replay (``request_key`` was already
            logged: the earlier row is returned and nothing is inspected).

        Raises
        ------
        ApiError
            For empty, too large, non-image or unreadable uploads (4xx), or when the audit
            log cannot be written or the service is full (503).
        """
        if request_key is not None:
            earlier = self._audit(self.audit.get_by_key, request_key)
            if earlier is not None:
                return earlier, True
        started = time.perf_counter()
        width, height, fmt = self._probe(data, filename)
        reserved = width * height * _PENDING_BYTES_PER_PIXEL
        try:
            self.pending.acquire(reserved, _PENDING_WAIT_S)
        except BudgetTimeout as exc:
            raise ApiError(503, "busy", str(exc)) from exc
        try:
            image = self._decode(data, filename, fmt)
            served, inspection = self.batcher.submit(image)
        finally:
            self.pending.release(reserved)
        elapsed_ms = (time.perf_counter() - started) * 1000.0
        inspection_id = uuid.uuid4().hex
        held = Held(data, filename, np.asarray(inspection.anomaly_map, dtype=np.float32),
                    inspection.mask)
        paths: dict[str, str | None] = {}
        if self.store_images:
            try:
                paths = self._store_files(inspection_id, fmt, held, image, served)
            except OSError as exc:
                # No files, no row, no answer: the caller asked for every upload to be kept.
                raise ApiError(503, "storage_unavailable",
                               f"{self.files_dir}: cannot store the inspection's files: {exc}"
                               ) from exc
        record = AuditRecord(
            id=inspection_id,
            created_at="",  # set by the log under its lock
            filename=filename,
            image_sha256=hashlib.sha256(data).hexdigest(),
            width=int(image.shape[1]),
            height=int(image.shape[0]),
            score=float(inspection.score),
            normalized_score=_optional_float(inspection.normalized_score),
            p_value=_optional_float(inspection.p_value),
            decision=None if inspection.decision is None else str(inspection.decision),
            thresholds=served.thresholds,
            model_name=served.name,
            model_hash=served.hash,
            model_version=served.version,
            elapsed_ms=round(elapsed_ms, 3),
            regions=[region.to_dict() for region in inspection.regions],
            request_key=request_key,
            image_path=paths.get("image_path"),
            heatmap_path=paths.get("heatmap_path"),
            overlay_path=paths.get("overlay_path"),
        )
        # No row, no answer: a decision that cannot be logged is not handed out.
        stored = self._audit(self.audit.insert, record)
        replayed = stored.id != inspection_id
        if not replayed:
            self.pictures.put(inspection_id, _with_scale(held, served))
        return stored, replayed

    def _score(self, images: Sequence[np.ndarray]) -> list[tuple[ServedModel, Any]]:
        """The inference thread's work: one model call over a micro-batch."""
        served = self.slot.current  # one model per batch, even across a switch
        inspections = served.model.inspect(images, batch_size=len(images))
        return [(served, inspection) for inspection in inspections]

    def _probe(self, data: bytes, filename: str) -> tuple[int, int, str]:
        """Width, height and format name of an upload, from its header only."""
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
        return info.width, info.height, fmt

    def _decode(self, data: bytes, filename: str, fmt: str) -> np.ndarray:
        """The decoded (H, W, 3) uint8 image."""
        try:
            return decode_image(
                data, filename, mode="RGB", max_pixels=self.max_pixels,
                max_bytes=self.max_upload_bytes,
            )
        except ImageReadError as exc:
            raise ApiError(400, "unreadable_image", f"{exc} (format {fmt})") from exc

    def _audit(self, call: Any, *args: Any) -> Any:
        try:
            return call(*args)
        except AuditUnavailableError as exc:
            raise ApiError(503, "audit_unavailable", str(exc)) from exc

    def _store_files(
        self, inspection_id: str, fmt: str, held: Held, image: np.ndarray,
        served: ServedModel,
    ) -> dict[str, str | None]:
        suffix = _FORMAT_SUFFIX.get(fmt, ".bin")
        scale = served.pixel_scale
        contents = {
            "image_path": (f"{inspection_id}-input{suffix}", held.upload),
            "heatmap_path": (f"{inspection_id}-heatmap.png",
                             _render(image, held, "heatmap", scale)),
            "overlay_path": (f"{inspection_id}-overlay.png",
                             _render(image, held, "overlay", scale)),
        }
        self.files_dir.mkdir(parents=True, exist_ok=True)
        stored: dict[str, str | None] = {}
        for key, (name, payload) in contents.items():
            path = self.files_dir / name
            write_bytes(path, payload)
            # Relative to the files root (the database's folder), so that folder can move.
            inside = path.absolute().is_relative_to(self.files_root.absolute())
            stored[key] = (path.absolute().relative_to(self.files_root.absolute()).as_posix()
                           if inside else str(path.absolute()))
        return stored

    # -- verdicts and drift ------------------------------------------------------------------

    def add_verdict(self, inspection_id: str, verdict: str, operator: str, note: str) -> Verdict:
        """Store an operator's verdict beside the decision (404 for an unknown id)."""
        try:
            return self._audit(self.audit.add_verdict,
                               Verdict(inspection_id, verdict, operator, note))
        except UnknownInspectionError as exc:
            raise ApiError(404, "not_found", str(exc)) from exc

    def drift(self) -> DriftResult | None:
        """The drift check of the served model's passed parts; None without calibration."""
        served = self.slot.current
        cal = getattr(served.model, "calibration", None)
        if cal is None:
            return None
        scores = self._audit(self.audit.passed_scores, served.hash, self.drift_window)
        return drift_test(cal.val_scores, cal.image_threshold, scores,
                          window=self.drift_window, alpha=self.drift_alpha)

    # -- pictures --------------------------------------------------------------------------

    def picture(self, inspection_id: str, kind: str) -> bytes | Path:
        """PNG bytes (from the cache) or a stored file path for ``kind`` in heatmap/overlay.

        Raises
        ------
        ApiError
            404 for an unknown id, 410 when the map is no longer held.
        """
        held = self.pictures.get(inspection_id)
        if held is not None:
            image = decode_image(held.upload, held.filename, mode="RGB",
                                 max_pixels=self.max_pixels, max_bytes=self.max_upload_bytes)
            return _render(image, held, kind, held.scale)
        record = self.get(inspection_id)
        stored = record.heatmap_path if kind == "heatmap" else record.overlay_path
        if stored and (self.files_root / stored).is_file():
            return self.files_root / stored
        raise ApiError(
            410,
            "picture_gone",
            f"the {kind} of inspection {inspection_id} is no longer held: the service keeps "
            f"the maps of its recent inspections in {self.pictures.max_bytes} bytes of memory "
            "per worker; start it with --store-images to keep every heatmap and overlay on "
            "disk",
        )

    def get(self, inspection_id: str) -> AuditRecord:
        """The audit row of ``inspection_id``; :class:`ApiError` 404 when there is none."""
        record = self._audit(self.audit.get, inspection_id)
        if record is None:
            raise ApiError(404, "not_found", f"no inspection with id {inspection_id!r}")
        return record


# -- helpers -------------------------------------------------------------------------------


def _optional_float(value: Any) -> float | None:
    return None if value is None else float(value)


def _with_scale(held: Held, served: ServedModel) -> Held:
    return Held(held.upload, held.filename, held.amap, held.mask, served.pixel_scale)


def _render(
    image: np.ndarray, held: Held, kind: str, scale: tuple[float, float] | None
) -> bytes:
    """The PNG of one picture: ``"heatmap"`` or ``"overlay"`` (see defectmap.report.render).

    ``scale`` is the deciding model's (pixel threshold, pixel scale): colours mean the same
    on every picture of that model, 0.5 at its pixel threshold.
    """
    normalizer = None
    if scale is not None:
        threshold, spread = scale

        def normalizer(amap: np.ndarray) -> np.ndarray:
            return normalize(amap, threshold, spread)

    scaled = colour_scale(held.amap, normalizer)
    if kind == "heatmap":
        return encode_png(heatmap_rgb(scaled))
    return encode_png(overlay_rgb(image, scaled, held.mask))
