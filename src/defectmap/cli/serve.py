"""CLI command: ``defectmap serve MODEL_DIR`` runs the HTTP inspection service."""

from __future__ import annotations

import socket
from pathlib import Path

import typer

from defectmap.cli._common import CliUsageError, app, err_console
from defectmap.cli.export import Runtime
from defectmap.cli.options import port_option
from defectmap.errors import DefectmapError

__all__ = ["serve"]


def _listen(host: str, port: int) -> socket.socket:
    """A socket bound to ``host:port`` and listening, or one clear error (port in use, ...).

    Bound here, before uvicorn starts, so that a busy port is one line instead of uvicorn's
    log, and handed to uvicorn as it is, so nothing can take the port in between.
    """
    address = host.strip("[]")
    # The family as uvicorn picks it: IPv6 for an address with a colon, else IPv4.
    sock = socket.socket(socket.AF_INET6 if ":" in address else socket.AF_INET)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does
        sock.bind((address, port))
        sock.listen(2048)
    except (OSError, UnicodeError) as exc:
        sock.close()
        reason = getattr(exc, "strerror", None) or str(exc)
        raise DefectmapError(f"cannot listen on {host}:{port}: {reason.lower()}") from None
    sock.set_inheritable(True)
    return sock


@app.command("serve")
def serve(
    model_dir: Path = typer.Argument(..., metavar="MODEL_DIR",
                                     help="Trained model directory (from 'defectmap fit')."),
    host: str = typer.Option("127.0.0.1", "--host", metavar="ADDRESS", help="Address to bind."),
    port: int = port_option(),
    db: Path = typer.Option(
        Path("defectmap-audit.sqlite3"), "--db", metavar="FILE",
        help="SQLite audit database (created if missing; its folder must exist).",
    ),
    token: str | None = typer.Option(
        None,
        "--token",
        metavar="TOKEN",
        envvar="DEFECTMAP_TOKEN",
        help="Bearer token required on every /v1 call (or set DEFECTMAP_TOKEN). "
        "Mandatory when --host is not a loopback address.",
    ),
    store_images: bool = typer.Option(
        False, "--store-images", help="Keep each upload, heatmap and overlay beside the database."
    ),
    uncalibrated: bool = typer.Option(
        False, "--uncalibrated",
        help="Serve a model without calibration.json: raw scores only, decision null."),
    allow_mismatch: bool = typer.Option(
        False, "--allow-mismatch",
        help="Score uploads whose colour or size differs from the training images "
        "(default: answer 422).",
    ),
    runtime: Runtime | None = typer.Option(
        None, "--runtime", help="Inference runtime; default: the fastest installed one the "
        "model folder was exported for (torch for a folder that was not exported)."),
) -> None:
    """Serve MODEL_DIR over HTTP: POST /v1/inspect, audit trail, web page at /."""
    from defectmap.errors import UncalibratedModelError
    from defectmap.serve.policy import ExposureError, check_exposure

    try:
        check_exposure(host, token)
    except ExposureError as exc:  # the library's rule, worded with the flags
        raise CliUsageError(
            "--token is empty or only white space; give a real token" if exc.blank_token
            else f"--host {host} is not loopback: it needs --token (or DEFECTMAP_TOKEN)"
        ) from None
    if not db.absolute().parent.is_dir():
        raise CliUsageError(f"--db {db}: folder {db.absolute().parent} does not exist")
    import uvicorn

    from defectmap.serve import create_app

    sock = _listen(host, port)
    try:
        # Loads the model now, so a missing or corrupt model fails here as one clear line.
        service_app = create_app(model_dir, db_path=db, token=token, store_images=store_images,
                                 runtime=None if runtime is None else runtime.value,
                                 uncalibrated=uncalibrated, allow_mismatch=allow_mismatch)
    except UncalibratedModelError:
        sock.close()
        raise DefectmapError(
            f"{model_dir}: no calibration.json, so no ok/defect decision can be made; refit "
            "it with `defectmap fit`, or pass --uncalibrated to serve raw scores only"
        ) from None
    except BaseException:
        sock.close()
        raise
    note = "; uncalibrated: raw scores only, decision null" if uncalibrated and \
        service_app.state.service.model.calibration is None else ""
    err_console.print(
        f"serving {model_dir} on http://{host}:{sock.getsockname()[1]}/ with "
        f"{service_app.state.service.model.runtime} (audit log {db}"
        f"{', token required' if token else ''}{note}); Ctrl-C stops",
        markup=False,
        highlight=False,
        soft_wrap=True,
    )
    server = uvicorn.Server(uvicorn.Config(service_app, log_level="info"))
    server.run(sockets=[sock])
