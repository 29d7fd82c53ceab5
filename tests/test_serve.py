"""The inspection service, end to end: a real uvicorn server on a free local port, a real
model trained on the synthetic dataset, a real HTTP client (httpx)."""

from __future__ import annotations

import hashlib
import io
import socket
import sqlite3
import struct
import threading
import time
import warnings
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import uvicorn
from PIL import Image

from defectmap.calibrate.drift import drift_test
from defectmap.cli._common import run_app
from defectmap.data.io import read_image
from defectmap.errors import DefectmapError
from defectmap.evaluate.predict import predict_to_dir
from defectmap.serve import AuditRecord, create_app
from defectmap.serve.audit import AuditLogError, AuditUnavailableError
from defectmap.serve.policy import is_loopback

# A hung server (a thread that never answers) fails its test instead of blocking the run.
pytestmark = pytest.mark.timeout(180)

MAX_BYTES = 2_000_000
MAX_PIXELS = 4_000_000
PATCH = np.s_[40:80, 50:90]  # rows (y), columns (x) of the pasted defect


# -- shared helpers (also imported by test_browser_serve.py) --------------------------------


class LiveServer:
    """Run an ASGI app with uvicorn in a background thread on a free 127.0.0.1 port."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, log_level="warning", lifespan="on")
        self.server = uvicorn.Server(config)
        # Signal handlers belong to the main thread (pytest's); the server stops via should_exit.
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True
        )

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
        self.sock.close()
        assert not self.thread.is_alive(), "uvicorn did not stop"


def trained_model_dir(tmp_path_factory: pytest.TempPathFactory, synthetic_root: Path) -> Path:
    """Train (once per session, whichever module asks first) a small PatchCore model."""
    from defectmap.calibrate import CalibrationWarning
    from defectmap.data.mvtec import load_category
    from defectmap.pipeline import train_model

    out = tmp_path_factory.getbasetemp() / "serve_model"
    if not (out / "calibration.json").is_file():
        with warnings.catch_warnings():
            # 8 validation images are too few for alpha=0.01; fine for a service test.
            warnings.simplefilter("ignore", CalibrationWarning)
            train_model(
                load_category(synthetic_root, "synthetic"),
                out,
                detector="patchcore",
                detector_params={"input_size": 128, "coreset_ratio": 0.1},
                val_ratio=0.25,  # a split: one fit (the service test needs no cross-fit)
                min_val=8,
                random_state=0,
            )
    return out


def synthetic_test_images(synthetic_root: Path, out: Path) -> dict[str, list[Path]]:
    """Test images: ``good`` and ``defect`` from the synthetic test split, and ``pasted``:
    good images with a 40 x 40 patch of noise pasted at (x 50..89, y 40..79), written to
    ``out`` (a defect the small test model flags for sure; the subtle synthetic defects
    are not all above its threshold)."""
    test = synthetic_root / "synthetic" / "test"
    good = sorted((test / "good").glob("*.png"))
    defect = sorted(p for p in test.glob("*/*.png") if p.parent.name != "good")
    out.mkdir(parents=True, exist_ok=True)
    pasted = []
    for seed, path in enumerate(good[:3]):
        image = read_image(path)
        rng = np.random.default_rng(seed)
        image[PATCH] = rng.integers(0, 256, size=image[PATCH].shape, dtype=np.uint8)
        pasted.append(out / f"pasted_{seed}.png")
        Image.fromarray(image).save(pasted[-1])
    return {"good": good, "defect": defect, "pasted": pasted}


def post_image(client: httpx.Client, path: Path, field: str = "image") -> httpx.Response:
    return client.post("/v1/inspect", files={field: (path.name, path.read_bytes(), "image/png")})


def png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def assert_error(response: httpx.Response, status: int, code: str, *words: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert body["error"] == code, body
    for word in words:
        assert word.lower() in body["detail"].lower(), body
    return body


# -- fixtures ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory, synthetic_root: Path) -> Path:
    return trained_model_dir(tmp_path_factory, synthetic_root)


@pytest.fixture(scope="module")
def images(
    synthetic_root: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, list[Path]]:
    found = synthetic_test_images(synthetic_root, tmp_path_factory.mktemp("pasted"))
    assert found["good"] and found["defect"]
    return found


@pytest.fixture(scope="module")
def server(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    db = tmp_path_factory.mktemp("serve_db") / "audit.sqlite3"
    app = create_app(model_dir, db_path=db, max_upload_bytes=MAX_BYTES, max_pixels=MAX_PIXELS)
    with LiveServer(app) as live:
        yield live


@pytest.fixture()
def client(server: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=60) as http:
        yield http


def audit_count(client: httpx.Client) -> int:
    return int(client.get("/healthz").json()["inspections"])


# -- endpoints ---------------------------------------------------------------------------


def test_healthz_model_and_page(
    client: httpx.Client, server: LiveServer, model_dir: Path
) -> None:
    health = client.get("/healthz")
    assert health.status_code == 200
    assert health.json()["status"] == "ok"
    assert health.json()["token_required"] is False

    model = server.app.state.service.model
    info = client.get("/v1/model").json()
    assert info["hash"] == model.model_hash and len(info["hash"]) == 64
    assert info["name"] == model_dir.name
    assert info["thresholds"]["image_threshold"] == pytest.approx(
        model.calibration.image_threshold
    )
    assert info["limits"] == {"max_upload_bytes": MAX_BYTES, "max_pixels": MAX_PIXELS}
    assert info["description"]["detector"] == "patchcore"
    assert info["description"]["params"]["input_size"] == 128

    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "/static/app.js" in page.text
    script = client.get("/static/app.js")
    assert script.status_code == 200 and "/v1/inspect" in script.text
    # Works offline: no resource is loaded from another host.
    for text in (page.text, script.text):
        assert "http://" not in text and "https://" not in text


def test_inspect_matches_library_and_is_logged(
    client: httpx.Client, server: LiveServer, model_dir: Path, images: dict[str, list[Path]],
    tmp_path: Path,
) -> None:
    model = server.app.state.service.model
    threshold = client.get("/v1/model").json()["thresholds"]["image_threshold"]
    answers = []
    for path in (images["pasted"][0], images["good"][0]):
        started = time.perf_counter()
        response = post_image(client, path)
        round_trip_ms = (time.perf_counter() - started) * 1000
        assert response.status_code == 200, response.text
        body = response.json()
        answers.append(body)
        expected = model.inspect([read_image(path)])[0]
        assert body["score"] == pytest.approx(expected.score, rel=1e-5, abs=1e-6)
        assert body["normalized_score"] == pytest.approx(expected.normalized_score, rel=1e-5)
        assert body["p_value"] == pytest.approx(expected.p_value)
        assert body["decision"] == expected.decision
        assert body["decision"] == ("defect" if body["score"] > threshold else "ok")
        assert body["image_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
        assert body["filename"] == path.name
        assert (body["width"], body["height"]) == (128, 128)
        assert body["model"] == {"name": model_dir.name, "hash": model.model_hash,
                                 "version": None}
        assert body["thresholds"]["image_threshold"] == threshold
        assert 0 < body["elapsed_ms"] < round_trip_ms  # measured inside the request
        assert len(body["regions"]) == len(expected.regions)
        for got, want in zip(body["regions"], expected.regions, strict=True):
            assert got["bbox"] == list(want.bbox) and got["area"] == want.area
            assert got["peak"] == pytest.approx(want.peak, rel=1e-5)
            assert got["centroid"] == pytest.approx(list(want.centroid), rel=1e-5)

        # The audit trail returns the same record.
        row = client.get(body["links"]["self"]).json()
        assert row == body

        # Pictures render from the held map at the image's size.
        pictures = {}
        for kind in ("heatmap", "overlay"):
            picture = client.get(body["links"][kind])
            assert picture.status_code == 200 and picture.headers["content-type"] == "image/png"
            pictures[kind] = np.asarray(Image.open(io.BytesIO(picture.content)).convert("RGB"))
            assert pictures[kind].shape == (128, 128, 3)
        # The overlay contains the image: it is closer to the input than the bare heatmap is.
        original = read_image(path).astype(float)
        assert np.abs(pictures["overlay"] - original).mean() < np.abs(
            pictures["heatmap"] - original
        ).mean()
        # One renderer: `predict` writes exactly the overlay the service serves.
        rows = predict_to_dir(model, [path], tmp_path / path.stem, write_maps=False)
        overlay_file = tmp_path / path.stem / rows[0]["overlay"]
        assert overlay_file.read_bytes() == client.get(body["links"]["overlay"]).content

    pasted, good = answers
    # A real model: the pasted patch is a defect, found where it was pasted.
    assert pasted["decision"] == "defect" and pasted["score"] > good["score"]
    x0, y0, x1, y1 = pasted["regions"][0]["bbox"]
    assert x0 <= 70 < x1 and y0 <= 60 < y1  # the patch centre
    assert pasted["p_value"] < good["p_value"]


def test_inspection_list_filters(client: httpx.Client, images: dict[str, list[Path]]) -> None:
    posted = [post_image(client, p).json() for p in images["pasted"] + images["good"][:2]]
    rows = client.get("/v1/inspections", params={"limit": 5}).json()
    assert rows["count"] == 5
    # Newest first, and exactly what was posted.
    assert [r["id"] for r in rows["inspections"]] == [b["id"] for b in reversed(posted)]
    stamps = [r["created_at"] for r in rows["inspections"]]
    assert stamps == sorted(stamps, reverse=True)

    # Paging forward is ascending, by time or by seq, and misses nothing with a small limit.
    since = posted[1]["created_at"]
    after = client.get("/v1/inspections", params={"since": since, "limit": 1000}).json()
    assert [r["id"] for r in after["inspections"]] == [b["id"] for b in posted[2:]]
    seen, cursor = [], posted[0]["seq"] - 1
    while True:
        page = client.get("/v1/inspections", params={"after": cursor, "limit": 2}).json()
        if not page["inspections"]:
            assert page["next_after"] is None
            break
        assert page["count"] <= 2
        seen += [r["id"] for r in page["inspections"]]
        cursor = page["next_after"]
    assert seen[:5] == [b["id"] for b in posted]

    for decision in ("ok", "defect"):
        only = client.get("/v1/inspections", params={"decision": decision, "limit": 1000}).json()
        assert only["count"] >= 1
        assert {r["decision"] for r in only["inspections"]} == {decision}
    assert client.get("/v1/inspections", params={"limit": 1}).json()["count"] == 1

    assert_error(client.get("/v1/inspections", params={"since": "yesterday"}), 400, "bad_query",
                 "since")
    assert_error(client.get("/v1/inspections", params={"decision": "maybe"}), 400, "bad_query",
                 "decision")
    assert_error(client.get("/v1/inspections", params={"limit": 0}), 400, "bad_query", "limit")
    assert_error(client.get("/v1/inspections", params={"after": -1}), 400, "bad_query", "after")
    assert_error(client.get("/v1/inspections", params={"limit": "ten"}), 422, "invalid_request",
                 "limit")


def test_openapi_schema_is_typed(client: httpx.Client) -> None:
    schema = client.get("/openapi.json").json()
    components = schema["components"]["schemas"]

    def response_ref(path: str, method: str, status: str = "200") -> str:
        content = schema["paths"][path][method]["responses"][status]["content"]
        return content["application/json"]["schema"]["$ref"].rsplit("/", 1)[-1]

    assert response_ref("/v1/inspect", "post") == "InspectionOut"
    assert response_ref("/v1/inspections/{inspection_id}", "get") == "InspectionOut"
    assert response_ref("/v1/inspections", "get") == "InspectionList"
    assert response_ref("/v1/model", "get") == "ModelInfo"
    assert response_ref("/healthz", "get") == "Health"
    assert response_ref("/v1/inspect", "post", "415") == "ErrorOut"
    inspection = components["InspectionOut"]["properties"]
    assert inspection["score"]["type"] == "number"
    assert {"enum": ["ok", "defect"], "type": "string"} in inspection["decision"]["anyOf"]
    assert components["RegionOut"]["required"] == ["bbox", "area", "peak"]
    assert "image/png" in schema["paths"]["/v1/inspections/{inspection_id}/overlay.png"][
        "get"]["responses"]["200"]["content"]
    assert "securitySchemes" not in schema.get("components", {})  # no token: no scheme


# -- bad input ---------------------------------------------------------------------------


def _bomb_png(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims ``width x height`` gray pixels (a decompression bomb)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    rows = zlib.compress(b"\x00" * (width + 1) * 64, 9)  # 64 rows of zeros; the rest is missing
    signature = b"\x89PNG\r\n\x1a\n"
    return signature + chunk(b"IHDR", header) + chunk(b"IDAT", rows) + chunk(b"IEND", b"")


def test_bad_inputs_get_clear_errors_and_service_keeps_serving(
    client: httpx.Client, images: dict[str, list[Path]]
) -> None:
    before = audit_count(client)
    good = images["good"][0].read_bytes()

    def upload(data: bytes, name: str = "part.png", field: str = "image") -> httpx.Response:
        return client.post("/v1/inspect", files={field: (name, data, "image/png")})

    assert_error(upload(b"", "empty.png"), 400, "empty_upload", "empty.png", "0 bytes")
    assert_error(upload(b"hello, not a picture", "notes.png"), 415, "not_an_image", "notes.png")
    assert_error(upload(good[: len(good) // 2], "cut.png"), 400, "unreadable_image", "cut.png",
                 "truncated")
    bomb = _bomb_png(30_000, 30_000)
    assert len(bomb) < 10_000
    assert_error(upload(bomb, "bomb.png"), 413, "too_many_pixels", "bomb.png", "900000000")
    # Over the pixel limit of this server, but a real, complete image.
    wide = png_bytes(np.zeros((1000, 4001), dtype=np.uint8))
    assert_error(upload(wide, "wide.png"), 413, "too_many_pixels", "4001x1000")
    # Over the byte limit: by Content-Length (refused before parsing) ...
    assert_error(upload(b"\0" * (3 * MAX_BYTES), "huge.png"), 413, "upload_too_large",
                 str(MAX_BYTES))
    # ... and by the file's own size when the body is within the multipart allowance.
    assert_error(upload(b"\0" * (MAX_BYTES + 10), "big.png"), 413, "upload_too_large",
                 "big.png", str(MAX_BYTES))
    body = assert_error(upload(good, field="file"), 422, "missing_image_field", "'image'")
    assert "'file'" in body["detail"]
    assert_error(client.post("/v1/inspect", data={"image": "text"}), 422,
                 "invalid_request", "'image' must be an uploaded file")
    assert_error(client.post("/v1/inspect"), 422, "missing_image_field")

    assert_error(client.get("/v1/inspections/0123abcd"), 404, "not_found", "0123abcd")
    assert_error(client.get("/v1/inspections/0123abcd/heatmap.png"), 404, "not_found")
    assert_error(client.get("/v1/inspections/0123abcd/overlay.png"), 404, "not_found")
    assert_error(client.get("/v1/nothing-here"), 404, "not_found", "/v1/nothing-here")
    assert_error(client.delete("/v1/model"), 405, "method_not_allowed")

    # No row for any refused request; the service still answers a good one.
    assert audit_count(client) == before
    assert upload(good).status_code == 200
    assert audit_count(client) == before + 1


def test_decision_not_handed_out_when_audit_write_fails(
    client: httpx.Client,
    server: LiveServer,
    images: dict[str, list[Path]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    audit = server.app.state.service.audit
    before = audit_count(client)

    def failing_insert(record: AuditRecord) -> AuditRecord:
        raise AuditUnavailableError(
            f"{audit.path}: cannot write audit row {record.id}: disk I/O error")

    monkeypatch.setattr(audit, "insert", failing_insert)
    assert_error(post_image(client, images["good"][0]), 503, "audit_unavailable", "disk I/O")
    monkeypatch.undo()
    assert audit_count(client) == before
    assert post_image(client, images["good"][0]).status_code == 200
    assert audit_count(client) == before + 1


def _multipart(field: str, name: str, data: bytes) -> tuple[bytes, str]:
    boundary = "defectmap-test-boundary"
    head = (
        f"--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; "
        f"filename=\"{name}\"\r\nContent-Type: image/png\r\n\r\n"
    ).encode()
    return head + data + f"\r\n--{boundary}--\r\n".encode(), boundary


def test_chunked_upload_without_length(client: httpx.Client, images: dict[str, list[Path]]) -> None:
    def chunks(body: bytes) -> Iterator[bytes]:
        for start in range(0, len(body), 65536):
            yield body[start : start + 65536]

    for data, status in ((images["good"][1].read_bytes(), 200), (b"\0" * (2 * MAX_BYTES), 413)):
        body, boundary = _multipart("image", "chunked.png", data)
        response = client.post(
            "/v1/inspect",
            content=chunks(body),
            headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
        )
        assert "content-length" not in response.request.headers
        assert response.status_code == status, response.text
    assert response.json()["error"] == "upload_too_large"


# -- concurrency, persistence, token -----------------------------------------------------


def test_concurrent_requests_each_get_one_row(
    client: httpx.Client, server: LiveServer, images: dict[str, list[Path]]
) -> None:
    before = audit_count(client)
    paths = (images["good"] + images["defect"] + images["pasted"]) * 3
    paths = paths[:40]

    def send(path: Path) -> dict[str, Any]:
        with httpx.Client(base_url=server.url, timeout=120) as http:
            response = post_image(http, path)
        assert response.status_code == 200, response.text
        return response.json()

    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(send, paths))
    ids = {a["id"] for a in answers}
    assert len(ids) == 40
    assert audit_count(client) == before + 40
    logged = client.get("/v1/inspections", params={"limit": 40}).json()["inspections"]
    assert {r["id"] for r in logged} == ids
    for answer, path in zip(answers, paths, strict=True):
        assert answer["image_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()


def test_rows_survive_restart_and_stored_pictures(
    model_dir: Path, images: dict[str, list[Path]], tmp_path: Path
) -> None:
    db = tmp_path / "audit.sqlite3"
    stored_app = create_app(model_dir, db_path=db, store_images=True)
    with LiveServer(stored_app) as live, httpx.Client(base_url=live.url, timeout=60) as http:
        kept = post_image(http, images["pasted"][1]).json()
        live_overlay = http.get(kept["links"]["overlay"]).content
    assert kept["stored"]["image"].startswith("audit-files/")
    stored_input = tmp_path / kept["stored"]["image"]
    assert stored_input.read_bytes() == images["pasted"][1].read_bytes()
    assert (tmp_path / kept["stored"]["overlay"]).read_bytes() == live_overlay

    # A cache with room for one 128 x 128 entry (5 bytes per pixel plus the upload).
    plain_app = create_app(model_dir, db_path=db, cache_bytes=128 * 128 * 5 + 40_000)
    with LiveServer(plain_app) as live, httpx.Client(base_url=live.url, timeout=60) as http:
        first = post_image(http, images["good"][2]).json()
        post_image(http, images["good"][3])  # pushes ``first`` out of the 1-entry cache
        gone = http.get(first["links"]["heatmap"])

    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"

    with LiveServer(create_app(model_dir, db_path=db)) as live, httpx.Client(
        base_url=live.url, timeout=60
    ) as http:
        rows = http.get("/v1/inspections").json()["inspections"]
        assert len(rows) == 3
        assert rows[-1] == kept
        assert rows[-2]["id"] == first["id"]
        # After the restart the stored pictures are served from disk ...
        overlay = http.get(kept["links"]["overlay"])
        assert overlay.status_code == 200 and overlay.content == live_overlay
        # ... and unstored ones say why they are gone.
        assert_error(http.get(first["links"]["overlay"]), 410, "picture_gone", "--store-images")
    assert_error(gone, 410, "picture_gone", f"{128 * 128 * 5 + 40_000} bytes")


def test_token_is_required_when_set(
    model_dir: Path, images: dict[str, list[Path]], tmp_path: Path
) -> None:
    app = create_app(model_dir, db_path=tmp_path / "audit.sqlite3", token="s3cret-token")
    with LiveServer(app) as live, httpx.Client(base_url=live.url, timeout=60) as http:
        assert http.get("/healthz").json()["token_required"] is True
        assert http.get("/").status_code == 200
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret-token"}):
            assert_error(http.get("/v1/model", headers=headers), 401, "unauthorized", "bearer")
            assert_error(http.get("/v1/inspections", headers=headers), 401, "unauthorized")
            refused = http.post(
                "/v1/inspect", headers=headers,
                files={"image": ("a.png", images["good"][0].read_bytes(), "image/png")},
            )
            assert_error(refused, 401, "unauthorized")
        assert http.get("/healthz").json()["inspections"] == 0

        auth = {"Authorization": "Bearer s3cret-token"}
        answer = http.post(
            "/v1/inspect", headers=auth,
            files={"image": ("a.png", images["good"][0].read_bytes(), "image/png")},
        )
        assert answer.status_code == 200
        assert http.get(answer.json()["links"]["overlay"], headers=auth).status_code == 200
        assert_error(http.get(answer.json()["links"]["overlay"]), 401, "unauthorized")
        assert http.get("/v1/inspections", headers=auth).json()["count"] == 1
        schema = http.get("/openapi.json").json()
        assert schema["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
        assert schema["paths"]["/v1/model"]["get"]["security"] == [{"HTTPBearer": []}]
        assert "security" not in schema["paths"]["/healthz"]["get"]
    with pytest.raises(DefectmapError, match="white space"):
        create_app(model_dir, db_path=tmp_path / "blank.sqlite3", token=" \t ")
    assert not (tmp_path / "blank.sqlite3").exists()


# -- audit log and CLI -------------------------------------------------------------------


def assert_one_error(err: str) -> None:
    """One error message (rich may wrap it at the terminal width), no traceback."""
    assert err.startswith("error:") and err.count("error:") == 1, err
    assert "Traceback" not in err


def test_loopback_detection() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("::1")
    assert is_loopback("127.0.1.1")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.4")
    assert not is_loopback("example.com")


def test_cli_refuses_public_host_without_token_and_bad_model(
    model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc = run_app(["serve", str(model_dir), "--host", "0.0.0.0", "--db", str(tmp_path / "a.db")])
    err = capsys.readouterr().err
    assert rc == 2 and "--host 0.0.0.0 is not loopback: it needs --token" in err  # usage error
    assert_one_error(err)
    assert not (tmp_path / "a.db").exists()

    rc = run_app(["serve", str(model_dir), "--host", "0.0.0.0", "--token", "  ",
                  "--db", str(tmp_path / "a.db")])
    err = capsys.readouterr().err
    assert rc == 2 and "white space" in err and not (tmp_path / "a.db").exists()
    assert_one_error(err)

    rc = run_app(["serve", str(tmp_path / "no-model"), "--db", str(tmp_path / "b.db")])
    err = capsys.readouterr().err
    assert rc == 1 and "no-model" in err and "not found" in err
    assert_one_error(err)

    broken = tmp_path / "broken-model"
    broken.mkdir()
    (broken / "model.json").write_text("{not json")
    rc = run_app(["serve", str(broken), "--db", str(tmp_path / "c.db")])
    err = capsys.readouterr().err
    assert rc == 1 and "broken-model" in err
    assert_one_error(err)


def test_since_accepts_an_offset_whose_plus_became_a_space():
    from defectmap.serve.audit import parse_timestamp

    expected = parse_timestamp("2026-11-29T07:00:00Z")
    assert parse_timestamp("2026-11-29T08:00:00+01:00") == expected
    assert parse_timestamp("2026-11-29T08:00:00 01:00") == expected  # '+' unescaped in a URL
    assert parse_timestamp("2026-11-29 07:00:00") == expected
    with pytest.raises(AuditLogError):
        parse_timestamp("yesterday")


def test_service_on_both_backends(
    model_dir: Path, images: dict[str, list[Path]], audit_db: str
) -> None:
    """The same HTTP calls on SQLite and PostgreSQL: idempotency, verdicts, paging, drift."""
    # Room for one decoded 128 x 128 upload at a time (8 bytes per pixel reserved).
    app = create_app(model_dir, db_path=audit_db, pending_bytes=128 * 128 * 8, drift_window=10)
    service = app.state.service
    with LiveServer(app) as live, httpx.Client(base_url=live.url, timeout=60) as http:
        first = http.post("/v1/inspect", headers={"Idempotency-Key": "cam1-0001"},
                          files={"image": ("a.png", images["good"][0].read_bytes())})
        again = http.post("/v1/inspect", headers={"Idempotency-Key": "cam1-0001"},
                          files={"image": ("a.png", images["good"][0].read_bytes())})
        assert first.status_code == again.status_code == 200
        assert again.json() == first.json() and again.headers["idempotent-replayed"] == "true"
        assert "idempotent-replayed" not in first.headers

        def send(path: Path) -> dict[str, Any]:
            with httpx.Client(base_url=live.url, timeout=120) as client:
                response = post_image(client, path)
            assert response.status_code == 200, response.text
            return response.json()

        with ThreadPoolExecutor(max_workers=6) as pool:
            answers = list(pool.map(send, (images["good"] * 2)[:12]))
        assert service.pending.peak == 128 * 128 * 8  # one decoded upload in flight at a time
        assert service.pending.in_use == 0
        assert http.get("/healthz").json()["inspections"] == 13
        trail, cursor = [], 0
        while page := http.get("/v1/inspections", params={"after": cursor, "limit": 5}).json()[
                "inspections"]:
            trail += page
            cursor = page[-1]["seq"]
        seen = [r["id"] for r in trail]
        assert seen[0] == first.json()["id"] and set(seen[1:]) == {a["id"] for a in answers}
        verdict = http.post(answers[0]["links"]["verdict"],
                            json={"verdict": "defect", "operator": "ana", "note": "chip"})
        assert verdict.status_code == 200 and verdict.json()["operator"] == "ana"
        row = http.get(answers[0]["links"]["self"]).json()
        assert row["verdict"]["verdict"] == "defect" and row["decision"] == answers[0]["decision"]

        drift = http.get("/v1/health/drift").json()
        cal = service.model.calibration
        passed = [r["score"] for r in trail if r["decision"] == "ok"]  # in log order
        expected = drift_test(cal.val_scores, cal.image_threshold, passed, window=10)
        assert drift["n_parts"] == expected.n_parts == min(10, len(passed))
        assert (drift["status"], drift["n_above"]) == (expected.status, expected.n_above)
        assert drift["p_value"] == pytest.approx(expected.p_value)
        assert drift["alpha"] == 0.001 and "beta-binomial" in drift["test"]
