"""The inspection service: a FastAPI app around one trained model and its audit log.

Endpoints (all ``/v1`` calls need ``Authorization: Bearer TOKEN`` when a token is set):

* ``POST /v1/inspect`` — multipart form, file field ``image``. Returns the decision as JSON
  (id, scores, decision, p-value, regions ``{bbox: [x0, y0, x1, y1] end-exclusive, area,
  peak}``, model name and hash, thresholds, elapsed ms (decode + inference) and links to the
  heatmap and overlay). The row is committed to the audit log *before* the
  answer is sent, so every decision a client sees is traceable.
* ``GET /v1/inspections/{id}/heatmap.png`` and ``.../overlay.png`` — pictures of one inspection.
* ``GET /v1/inspections?since=&decision=&limit=`` and ``GET /v1/inspections/{id}`` — the
  audit trail, newest first.
* ``GET /v1/model`` — detector, params, thresholds, training-data summary, hash.
* ``GET /healthz`` (no token) and ``GET /`` — the web page (static HTML + JS, no build step).

Retention of heatmaps
---------------------
The anomaly maps of the last ``cache_size`` inspections (default 32) are kept in memory and
rendered on request. With ``store_images=True`` every upload (its original bytes), heatmap
and overlay are also written to ``<db folder>/<db name>-files/`` before the row is committed,
and their paths go into the row; those links keep working after the in-memory entry is gone
and after a restart. Without stored files, a heatmap link of an older or pre-restart
inspection answers 410 Gone with a message saying so (the audit row itself is never lost).

Errors
------
Every error is JSON ``{"error": code, "detail": message}``: 400 empty or unreadable upload
and bad query values, 401 missing/wrong token, 404 unknown id or path, 410 picture no
longer held, 413 upload over the byte limit or image over the pixel limit, 415 not an
image, 422 wrong form field, 503 the audit row cannot be written (the decision is then not handed
out), 500 an unexpected failure (a bug; no row is written). The service keeps serving after
each.

Concurrency
-----------
Uploads are decoded, hashed and rendered in the thread pool in parallel; the model's
``inspect`` call is serialised by a lock (detectors are not promised to be thread-safe, and
on a CPU one inference already uses every core); audit writes are serialised by the log.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import threading
import time
import uuid
import warnings
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, File, Query, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from PIL import Image, UnidentifiedImageError
from starlette.exceptions import HTTPException as StarletteHTTPException

from defectmap import __version__
from defectmap.constants import MAX_IMAGE_PIXELS
from defectmap.data.io import MAX_UPLOAD_BYTES, decode_image
from defectmap.errors import DefectmapError, ImageReadError, ModelFileError
from defectmap.files import to_jsonable, write_bytes
from defectmap.serve.audit import AuditLog, AuditLogError, AuditRecord, open_audit_log
from defectmap.serve.render import color_scale, encode_png, heatmap_rgb, overlay_rgb

__all__ = ["DEFAULT_DB_NAME", "InspectionService", "create_app"]

#: Database file used when no ``db_path`` is given (in the current directory).
DEFAULT_DB_NAME = "defectmap-audit.sqlite3"
_STATIC_DIR = Path(__file__).parent / "static"
#: Room for multipart boundaries and part headers on top of the file's own bytes.
_MULTIPART_OVERHEAD = 64 * 1024
_FORMAT_SUFFIX = {"PNG": ".png", "JPEG": ".jpg", "BMP": ".bmp", "TIFF": ".tif"}

ASGIApp = Callable[
    [MutableMapping[str, Any], Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]],
    Awaitable[None],
]


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
    bboxes: list[list[int]]


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

    Raises
    ------
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
    ) -> None:
        from defectmap.pipeline import load_model

        model_dir = Path(model_dir)
        if not model_dir.is_dir():
            raise DefectmapError(f"{model_dir}: model directory not found")
        self.model_dir = model_dir
        self.model = load_model(model_dir)
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
        amap = np.asarray(result["map"], dtype=np.float32)
        bboxes = [region["bbox"] for region in result["regions"]]
        paths: dict[str, str | None] = {}
        if self.store_images:
            paths = self._store_files(inspection_id, data, fmt, image, amap, bboxes)
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
            self._cache[inspection_id] = _Held(image, amap, bboxes)
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
        fmt = _probe_format(data, filename, self.max_pixels)
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

    def _store_files(
        self,
        inspection_id: str,
        data: bytes,
        fmt: str,
        image: np.ndarray,
        amap: np.ndarray,
        bboxes: list[list[int]],
    ) -> dict[str, str | None]:
        suffix = _FORMAT_SUFFIX.get(fmt, ".bin")
        scaled = color_scale(amap, self._normalize_map)
        contents = {
            "image_path": (f"{inspection_id}-input{suffix}", data),
            "heatmap_path": (f"{inspection_id}-heatmap.png", encode_png(heatmap_rgb(scaled))),
            "overlay_path": (
                f"{inspection_id}-overlay.png",
                encode_png(overlay_rgb(image, scaled, bboxes)),
            ),
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
            scaled = color_scale(held.amap, self._normalize_map)
            if kind == "heatmap":
                return encode_png(heatmap_rgb(scaled))
            return encode_png(overlay_rgb(held.image, scaled, held.bboxes))
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


def _probe_format(data: bytes, filename: str, max_pixels: int) -> str:
    """Read only the header: refuse non-images (415) and too many pixels (413)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:
                width, height = im.size
                fmt = str(im.format)
    except Image.DecompressionBombError as exc:
        raise ApiError(
            413, "too_many_pixels", f"{filename}: refused, image too large ({exc})"
        ) from exc
    except UnidentifiedImageError as exc:
        raise ApiError(
            415, "not_an_image", f"{filename}: not an image (expected PNG, JPEG, BMP or TIFF)"
        ) from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ApiError(
            415, "not_an_image", f"{filename}: not a readable image header ({exc})"
        ) from exc
    if width * height > max_pixels:
        raise ApiError(
            413,
            "too_many_pixels",
            f"{filename}: refused, image has {width}x{height} = {width * height} pixels, "
            f"more than the limit of {max_pixels} (possible decompression bomb)",
        )
    return fmt


def _optional_float(value: Any) -> float | None:
    return None if value is None else float(value)


def _inspection_fields(inspection: Any) -> dict[str, Any]:
    """Plain JSON-ready values from one ``defectmap.pipeline.Inspection``."""
    regions = []
    for region in inspection.regions:
        x0, y0, x1, y1 = (int(v) for v in region.bbox)
        regions.append(
            {"bbox": [x0, y0, x1, y1], "area": int(region.area), "peak": float(region.peak)}
        )
    decision = inspection.decision
    return {
        "score": float(inspection.score),
        "normalized_score": _optional_float(inspection.normalized_score),
        "p_value": _optional_float(inspection.p_value),
        "decision": None if decision is None else str(decision),
        "regions": regions,
        "map": inspection.anomaly_map,
    }


def record_json(record: AuditRecord) -> dict[str, Any]:
    """The JSON shape of one inspection (same for the POST answer and the GET)."""
    body = asdict(record)
    base = f"/v1/inspections/{record.id}"
    body["model"] = {"name": body.pop("model_name"), "hash": body.pop("model_hash")}
    body["stored"] = {
        "image": body.pop("image_path"),
        "heatmap": body.pop("heatmap_path"),
        "overlay": body.pop("overlay_path"),
    }
    body["links"] = {
        "self": base,
        "heatmap": f"{base}/heatmap.png",
        "overlay": f"{base}/overlay.png",
    }
    return body


def _error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": code, "detail": message}, status_code=status)


# -- the guard middleware: token and byte limit before the body is parsed ---------------------


class _Guard:
    """Pure ASGI middleware: bearer token on ``/v1`` and the upload byte limit.

    Both checks answer before FastAPI parses the multipart body. A refused request's body is
    still read (and discarded, up to ``drain_limit`` bytes) so that the client receives the
    JSON answer instead of a broken pipe.
    """

    def __init__(self, app: ASGIApp, token: str | None, max_body: int) -> None:
        self.app = app
        self.token = token
        self.max_body = max_body
        self.drain_limit = max(max_body * 4, 256 * 1024 * 1024)

    async def __call__(
        self,
        scope: MutableMapping[str, Any],
        receive: Callable[[], Awaitable[Any]],
        send: Callable[[Any], Awaitable[None]],
    ) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/v1/"):
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        if self.token is not None and not _token_ok(headers.get("authorization"), self.token):
            await self._refuse(
                scope, receive, send, 401, "unauthorized",
                "missing or wrong bearer token: send 'Authorization: Bearer <token>'",
            )
            return
        if scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        length = headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > self.max_body:
            await self._refuse(
                scope, receive, send, 413, "upload_too_large",
                f"request body has {int(length)} bytes, more than the upload limit of "
                f"{self.max_body - _MULTIPART_OVERHEAD} bytes",
            )
            return
        if length is not None:
            await self.app(scope, receive, send)
            return
        # Chunked upload of unknown length: buffer up to the limit, then replay.
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_body:
                await self._refuse(
                    scope, receive, send, 413, "upload_too_large",
                    f"request body is over the upload limit of "
                    f"{self.max_body - _MULTIPART_OVERHEAD} bytes",
                    more_body=message.get("more_body", False),
                )
                return
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        sent = False

        async def replay() -> Any:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _refuse(
        self,
        scope: MutableMapping[str, Any],
        receive: Callable[[], Awaitable[Any]],
        send: Callable[[Any], Awaitable[None]],
        status: int,
        code: str,
        message: str,
        more_body: bool = True,
    ) -> None:
        drained = 0
        while more_body and drained <= self.drain_limit:
            incoming = await receive()
            if incoming["type"] != "http.request":
                break
            drained += len(incoming.get("body", b""))
            more_body = incoming.get("more_body", False)
        await _error(status, code, message)(scope, receive, send)  # type: ignore[arg-type]


def _token_ok(header: str | None, token: str) -> bool:
    if not header or not header.lower().startswith("bearer "):
        return False
    return hmac.compare_digest(header[7:].strip().encode(), token.encode())


# -- the app -------------------------------------------------------------------------------


def create_app(
    model_dir: str | Path,
    db_path: str | Path | None = None,
    token: str | None = None,
    store_images: bool = False,
    max_upload_bytes: int = MAX_UPLOAD_BYTES,
    max_pixels: int = MAX_IMAGE_PIXELS,
    cache_size: int = 32,
) -> FastAPI:
    """Build the inspection service's FastAPI app (the model is loaded now, not lazily).

    Parameters
    ----------
    model_dir : str or Path
        Trained model directory (``defectmap fit`` / ``train_model`` output).
    db_path : str or Path, optional
        SQLite audit database (created if missing); default ``./defectmap-audit.sqlite3``.
    token : str, optional
        When set, every ``/v1`` call needs ``Authorization: Bearer <token>``.
    store_images : bool
        Keep each upload, heatmap and overlay on disk beside the database.
    max_upload_bytes : int
        Largest accepted upload in bytes (413 above).
    max_pixels : int
        Largest accepted ``width * height`` (413 above, checked before decoding).
    cache_size : int
        Number of recent maps held in memory for the picture links.

    Returns
    -------
    FastAPI
        The app; ``app.state.service`` is its :class:`InspectionService`.

    Raises
    ------
    DefectmapError
        Missing or corrupt model directory, or an audit database that cannot be opened.
    """
    service = InspectionService(
        model_dir, db_path, store_images=store_images, max_upload_bytes=max_upload_bytes,
        max_pixels=max_pixels, cache_size=cache_size,
    )
    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        service.audit.close()

    app = FastAPI(
        lifespan=lifespan,
        title="defectmap inspection service",
        version=__version__,
        description="Unsupervised visual anomaly detection: inspect images, audit decisions.",
    )
    app.state.service = service
    app.add_middleware(
        _Guard,  # type: ignore[arg-type]
        token=token,
        max_body=service.max_upload_bytes + _MULTIPART_OVERHEAD,
    )

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return _error(exc.status, exc.code, exc.message)

    @app.exception_handler(AuditLogError)
    async def _audit_error(request: Request, exc: AuditLogError) -> JSONResponse:
        return _error(400, "bad_query", str(exc))

    @app.exception_handler(DefectmapError)
    async def _defectmap_error(request: Request, exc: DefectmapError) -> JSONResponse:
        return _error(400, "bad_input", str(exc))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        # A bug, not bad input: answer JSON (nothing was logged for it) and keep serving.
        message = f"{request.method} {request.url.path}: {type(exc).__name__}: {exc}"
        return _error(500, "internal_error", message)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        message = f"{request.method} {request.url.path}: {exc.detail}"
        return _error(exc.status_code, code, message)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = []
        for item in exc.errors():
            loc = tuple(str(part) for part in item.get("loc", ()))
            if loc[-1:] == ("image",):
                problems.append(
                    "form field 'image' must be an uploaded file (multipart/form-data), "
                    "e.g. curl -F image=@part.png .../v1/inspect"
                )
            else:
                problems.append(f"{' '.join(loc)}: {item.get('msg', 'invalid')}")
        return _error(422, "invalid_request", "; ".join(problems) or "invalid request")

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(_STATIC_DIR / "index.html", media_type="text/html")

    app.mount("/static", StaticFiles(directory=_STATIC_DIR), name="static")

    @app.get("/healthz")
    def healthz() -> dict[str, Any]:
        """Liveness: the model is loaded and the audit database answers."""
        return {
            "status": "ok",
            "model": service.model_name,
            "inspections": service.audit.count(),
            "token_required": token is not None,
        }

    @app.post("/v1/inspect")
    async def inspect(
        request: Request,
        image: UploadFile | None = File(
            None, description="The image file (PNG, JPEG, BMP or TIFF) in the field 'image'."
        ),
    ) -> JSONResponse:
        """Inspect one image; the decision is in the audit log before this answers."""
        if image is None:
            form = await request.form()
            fields = ", ".join(repr(name) for name in form) or "none"
            raise ApiError(
                422,
                "missing_image_field",
                "multipart form has no file field 'image' (fields received: "
                f"{fields}); send the file as: curl -F image=@part.png .../v1/inspect",
            )
        data = await image.read(service.max_upload_bytes + 1)
        filename = image.filename or "upload"
        record = await run_in_threadpool(service.inspect_upload, data, filename)
        return JSONResponse(record_json(record), status_code=200)

    @app.get("/v1/inspections")
    def list_inspections(
        since: str | None = Query(None, description="ISO-8601 time; rows created after it."),
        decision: str | None = Query(None, description="'ok' or 'defect'."),
        limit: int = Query(50, description="At most this many rows (1 to 1000)."),
    ) -> dict[str, Any]:
        """The audit trail, newest first."""
        rows = service.audit.query(since=since, decision=decision, limit=limit)
        return {"inspections": [record_json(row) for row in rows], "count": len(rows)}

    @app.get("/v1/inspections/{inspection_id}")
    def get_inspection(inspection_id: str) -> dict[str, Any]:
        """One audit row."""
        return record_json(service.get(inspection_id))

    def _picture(inspection_id: str, kind: str) -> Response:
        picture = service.picture(inspection_id, kind)
        if isinstance(picture, Path):
            return FileResponse(picture, media_type="image/png")
        return Response(picture, media_type="image/png")

    @app.get("/v1/inspections/{inspection_id}/heatmap.png")
    def heatmap(inspection_id: str) -> Response:
        """The anomaly map in colour (blue = normal, red = anomalous), as PNG."""
        return _picture(inspection_id, "heatmap")

    @app.get("/v1/inspections/{inspection_id}/overlay.png")
    def overlay(inspection_id: str) -> Response:
        """The heatmap blended over the input image, regions outlined, as PNG."""
        return _picture(inspection_id, "overlay")

    @app.get("/v1/model")
    def model_info() -> dict[str, Any]:
        """Detector, params, thresholds and training-data summary of the served model."""
        return {
            "name": service.model_name,
            "hash": service.model_hash,
            "thresholds": service.thresholds,
            "limits": {"max_upload_bytes": service.max_upload_bytes,
                       "max_pixels": service.max_pixels},
            "description": service.description,
        }

    return app
