"""The HTTP layer of the inspection service: :func:`create_app` builds the FastAPI app.

Routes only translate: the logic is :class:`~defectmap.serve.service.InspectionService`, the
answers are the pydantic models of :mod:`defectmap.serve.schemas` (so ``/openapi.json`` and
``/docs`` are typed), the token is checked by FastAPI's ``HTTPBearer`` and the upload size by
a small ASGI middleware that answers before the body is parsed.

Endpoints (all ``/v1`` calls need ``Authorization: Bearer TOKEN`` when a token is set):

* ``POST /v1/inspect`` — multipart form, file field ``image``. Returns the decision as JSON
  (id, scores, decision, p-value, regions ``{bbox: [x0, y0, x1, y1] end-exclusive, area,
  peak, centroid}``, model name and hash, thresholds, elapsed ms (decode + inference) and
  links to the heatmap and overlay). The row is committed to the audit log *before* the
  answer is sent, so every decision a client sees is traceable.
  With an ``Idempotency-Key`` header, a repeated key answers the row logged under it
  (header ``Idempotent-Replayed: true``) instead of inspecting again.
* ``GET /v1/inspections/{id}/heatmap.png`` and ``.../overlay.png`` — pictures of one inspection.
* ``POST /v1/inspections/{id}/verdict`` — JSON ``{verdict: ok|defect, operator, note}``: an
  operator's verdict, stored beside the decision (which is never changed).
* ``GET /v1/inspections?since=&after=&decision=&limit=`` and ``GET /v1/inspections/{id}`` —
  the audit trail: newest first, or with ``after=<seq>`` / ``since=<time>`` ascending from
  that point (``next_after`` of each page is the cursor of the next: no row is missed).
* ``GET /v1/model`` — detector, params, thresholds, training-data summary, hash, version.
* ``GET /v1/health/drift`` — the drift check of passed parts against calibration.
* ``GET /healthz`` (no token) and ``GET /`` — the web page (static HTML + JS, no build step).

Errors
------
Every error is JSON ``{"error": code, "detail": message}``: 400 empty or unreadable upload
and bad query values, 401 missing/wrong token, 404 unknown id or path, 410 picture no
longer held, 413 upload over the byte limit or image over the pixel limit, 415 not an
image, 422 wrong form field or an image unlike the training images (``input_mismatch``),
503 the audit log cannot be read or written (disk full, read-only database, server down: the
decision is then not handed out) or the service is full, 500 an unexpected failure (a bug;
no row is written). The service keeps serving after each, and answers again by itself once
the database is back.
"""

from __future__ import annotations

import hmac
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Literal

from fastapi import APIRouter, Depends, FastAPI, File, Header, Query, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.params import Depends as DependsParam
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from defectmap import __version__
from defectmap.constants import MAX_IMAGE_PIXELS
from defectmap.data.io import MAX_UPLOAD_BYTES
from defectmap.errors import DefectmapError
from defectmap.serve.audit import AuditLogError, AuditUnavailableError
from defectmap.serve.batching import DEFAULT_PENDING_BYTES
from defectmap.serve.pictures import DEFAULT_CACHE_BYTES
from defectmap.serve.policy import check_token
from defectmap.serve.schemas import (
    DriftOut,
    ErrorOut,
    Health,
    InspectionList,
    InspectionOut,
    Limits,
    ModelInfo,
    VerdictIn,
    VerdictOut,
)
from defectmap.serve.service import ApiError, InspectionService

__all__ = ["create_app"]

_STATIC_DIR = Path(__file__).parent / "static"
#: Room for multipart boundaries and part headers on top of the file's own bytes.
_MULTIPART_OVERHEAD = 64 * 1024

ASGIApp = Callable[
    [MutableMapping[str, Any], Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]],
    Awaitable[None],
]

#: Error answers documented in the OpenAPI schema of every /v1 route.
_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorOut, "description": text}
    for status, text in ((400, "Bad input"), (401, "Missing or wrong bearer token"),
                         (404, "Unknown id"), (422, "Invalid request"),
                         (503, "Audit log unavailable or service full"))
}
_DRIFT_TEST = (
    "two-sided exact beta-binomial test of how many of the last `window` passed parts score "
    "above the calibration's middle passing score; false-alarm rate `alpha` per check under "
    "no drift (see defectmap.calibrate.drift)"
)
_PNG: dict[int | str, dict[str, Any]] = {
    200: {"content": {"image/png": {}}, "description": "PNG picture"},
    410: {"model": ErrorOut, "description": "Picture no longer held"},
}


def _error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": code, "detail": message}, status_code=status)


# -- the body-size limit, before the body is parsed ------------------------------------------


class _BodyLimit:
    """Pure ASGI middleware: refuse ``/v1`` POST bodies over ``max_body`` bytes with 413.

    It answers before FastAPI parses the multipart body: by ``Content-Length`` when there is
    one, else while buffering a chunked body. A refused request's body is still read (and
    discarded, up to ``drain_limit`` bytes) so that the client receives the JSON answer
    instead of a broken pipe.
    """

    def __init__(self, app: ASGIApp, max_body: int) -> None:
        self.app = app
        self.max_body = max_body
        self.drain_limit = max(max_body * 4, 256 * 1024 * 1024)

    async def __call__(
        self,
        scope: MutableMapping[str, Any],
        receive: Callable[[], Awaitable[Any]],
        send: Callable[[Any], Awaitable[None]],
    ) -> None:
        if (scope["type"] != "http" or not scope["path"].startswith("/v1/")
                or scope["method"] != "POST"):
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        length = headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > self.max_body:
            await self._refuse(
                scope, receive, send,
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
                    scope, receive, send,
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
        response = _error(413, "upload_too_large", message)
        await response(scope, receive, send)  # type: ignore[arg-type]


# -- the bearer token ---------------------------------------------------------------------------


def _token_dependency(token: str) -> DependsParam:
    """A FastAPI dependency that answers 401 unless ``Authorization: Bearer <token>``."""
    bearer = HTTPBearer(auto_error=False, description="The token given to `defectmap serve`.")
    expected = token.encode()

    def require_token(
        credentials: HTTPAuthorizationCredentials | None = Depends(bearer),
    ) -> None:
        given = b"" if credentials is None else credentials.credentials.strip().encode()
        if not hmac.compare_digest(given, expected):
            raise ApiError(401, "unauthorized",
                           "missing or wrong bearer token: send 'Authorization: Bearer <token>'")

    return Depends(require_token)


# -- the app ------------------------------------------------------------------------------------


def create_app(
    model_dir: str | Path,
    db_path: str | Path | None = None,
    token: str | None = None,
    store_images: bool = False,
    max_upload_bytes: int = MAX_UPLOAD_BYTES,
    max_pixels: int = MAX_IMAGE_PIXELS,
    cache_bytes: int = DEFAULT_CACHE_BYTES,
    pending_bytes: int = DEFAULT_PENDING_BYTES,
    **options: Any,
) -> FastAPI:
    """Build the inspection service's FastAPI app (the model is loaded now, not lazily).

    Parameters
    ----------
    model_dir : str or Path
        Trained model directory (``defectmap fit`` / ``train_model`` output), or a model
        registry (its ``current`` version is served and followed).
    db_path : str or Path, optional
        SQLite audit database (created if missing) or ``postgresql://`` URL; default
        ``./defectmap-audit.sqlite3``.
    token : str, optional
        When set, every ``/v1`` call needs ``Authorization: Bearer <token>``.
    store_images : bool
        Keep each upload, heatmap and overlay on disk beside the database.
    max_upload_bytes : int
        Largest accepted upload in bytes (413 above).
    max_pixels : int
        Largest accepted ``width * height`` (413 above, checked before decoding).
    cache_bytes : int
        Byte budget of the recent maps held for the picture links.
    pending_bytes : int
        Byte budget of decoded uploads waiting for inference.
    **options
        The other keyword arguments of :class:`InspectionService` (batching, drift,
        ``runtime``, ``uncalibrated``, ``allow_mismatch``, ...).

    Returns
    -------
    FastAPI
        The app; ``app.state.service`` is its :class:`InspectionService`.

    Raises
    ------
    DefectmapError
        A blank token, a missing or corrupt model directory, or an audit database that
        cannot be opened.
    """
    check_token(token)
    service = InspectionService(
        model_dir, db_path, store_images=store_images, max_upload_bytes=max_upload_bytes,
        max_pixels=max_pixels, cache_bytes=cache_bytes, pending_bytes=pending_bytes, **options,
    )

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        service.close()

    app = FastAPI(
        lifespan=lifespan,
        title="defectmap inspection service",
        version=__version__,
        description="Unsupervised visual anomaly detection: inspect images, audit decisions.",
    )
    app.state.service = service
    app.add_middleware(
        _BodyLimit,  # type: ignore[arg-type]
        max_body=service.max_upload_bytes + _MULTIPART_OVERHEAD,
    )
    _add_error_handlers(app)

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(_STATIC_DIR / "index.html", media_type="text/html")

    app.mount("/static", StaticFiles(directory=_STATIC_DIR), name="static")

    @app.get("/healthz", responses={503: {"model": ErrorOut,
                                          "description": "Audit log unavailable"}})
    def healthz() -> Health:
        """Liveness: the model is loaded and the audit database answers (no token needed)."""
        served = service.served
        return Health(status="ok", model=served.name, model_version=served.version,
                      inspections=service.audit.count(), token_required=token is not None,
                      reload_error=service.slot.reload_error)

    v1 = APIRouter(prefix="/v1", responses=_ERRORS,
                   dependencies=[] if token is None else [_token_dependency(token)])

    @v1.post("/inspect", responses={
        413: {"model": ErrorOut, "description": "Upload or image too large"},
        415: {"model": ErrorOut, "description": "Not an image"},
        422: {"model": ErrorOut,
              "description": "No image field, or an image unlike the training images"},
        503: {"model": ErrorOut, "description": "Audit row cannot be written"},
    })
    async def inspect(
        request: Request,
        response: Response,
        image: UploadFile | None = File(
            None, description="The image file (PNG, JPEG, BMP or TIFF) in the field 'image'."
        ),
        idempotency_key: str | None = Header(
            None, max_length=200,
            description="A client's id for this request: a retry with the same key gets the "
            "row already logged under it instead of a second inspection."),
    ) -> InspectionOut:
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
        record, replayed = await run_in_threadpool(
            service.inspect_upload, data, filename, idempotency_key)
        if replayed:
            response.headers["Idempotent-Replayed"] = "true"
        return InspectionOut.from_record(record)

    @v1.get("/inspections")
    def list_inspections(
        since: str | None = Query(None, description="ISO-8601 time; rows created after it, "
                                  "oldest first."),
        after: int | None = Query(None, description="A seq; rows after it, oldest first."),
        decision: str | None = Query(None, description="'ok' or 'defect'."),
        limit: int = Query(50, description="At most this many rows (1 to 1000)."),
    ) -> InspectionList:
        """The audit trail: newest first, or ascending from ``after``/``since``."""
        rows = service.audit.query(since=since, decision=decision, limit=limit, after=after)
        seqs = [r.seq for r in rows if r.seq is not None]
        return InspectionList(inspections=[InspectionOut.from_record(r) for r in rows],
                              count=len(rows), next_after=max(seqs) if seqs else None)

    @v1.post("/inspections/{inspection_id}/verdict")
    def add_verdict(inspection_id: str, body: VerdictIn) -> VerdictOut:
        """Store an operator's verdict beside the model's decision (never replacing it)."""
        verdict = service.add_verdict(inspection_id, body.verdict, body.operator, body.note)
        return VerdictOut.from_verdict(verdict)

    @v1.get("/health/drift")
    def drift() -> DriftOut:
        """Whether the passed parts' scores have drifted from calibration."""
        served = service.served
        result = service.drift()
        if result is None:
            return DriftOut(status="uncalibrated", alarm=False, p_value=None, n_parts=0,
                            n_above=0, expected_share=None, observed_share=None,
                            reference_score=None, window=service.drift_window,
                            alpha=service.drift_alpha, direction=None,
                            model_version=served.version, test=_DRIFT_TEST)
        return DriftOut.model_validate({**result.to_dict(), "model_version": served.version,
                                        "test": _DRIFT_TEST})

    @v1.get("/inspections/{inspection_id}")
    def get_inspection(inspection_id: str) -> InspectionOut:
        """One audit row."""
        return InspectionOut.from_record(service.get(inspection_id))

    def _picture(inspection_id: str, kind: Literal["heatmap", "overlay"]) -> Response:
        picture = service.picture(inspection_id, kind)
        if isinstance(picture, Path):
            return FileResponse(picture, media_type="image/png")
        return Response(picture, media_type="image/png")

    @v1.get("/inspections/{inspection_id}/heatmap.png", response_class=Response,
            responses=_PNG)
    def heatmap(inspection_id: str) -> Response:
        """The anomaly map in colour (blue = normal, red = anomalous), as PNG."""
        return _picture(inspection_id, "heatmap")

    @v1.get("/inspections/{inspection_id}/overlay.png", response_class=Response,
            responses=_PNG)
    def overlay(inspection_id: str) -> Response:
        """The heatmap blended over the input image, regions outlined, as PNG."""
        return _picture(inspection_id, "overlay")

    @v1.get("/model")
    def model_info() -> ModelInfo:
        """Detector, params, thresholds and training-data summary of the served model."""
        served = service.served
        return ModelInfo(
            name=served.name, hash=served.hash, version=served.version,
            runtime=served.runtime, thresholds=served.thresholds,
            limits=Limits(max_upload_bytes=service.max_upload_bytes,
                          max_pixels=service.max_pixels),
            description=served.description,
        )

    app.include_router(v1)
    return app


def _add_error_handlers(app: FastAPI) -> None:
    """Every error becomes ``{"error": code, "detail": message}``."""

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return _error(exc.status, exc.code, exc.message)

    @app.exception_handler(AuditLogError)
    async def _audit_error(request: Request, exc: AuditLogError) -> JSONResponse:
        if isinstance(exc, AuditUnavailableError):
            return _error(503, "audit_unavailable", str(exc))
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
