"""CLI command: ``defectmap serve MODEL`` runs the HTTP inspection service."""

from __future__ import annotations

from pathlib import Path

import typer

from defectmap.cli._common import CliUsageError, app, err_console
from defectmap.cli.export import Runtime
from defectmap.cli.options import count_option, port_option, ratio_option
from defectmap.errors import DefectmapError

__all__ = ["serve"]


@app.command(
    "serve",
    epilog="Example: defectmap serve models/registry --workers 2 --db postgresql://line@db/audit",
)
def serve(
    model_dir: Path = typer.Argument(
        ..., metavar="MODEL", help="Model folder (from 'defectmap fit') or model registry "
        "(serves and follows its current version)."),
    host: str = typer.Option("127.0.0.1", "--host", metavar="ADDRESS", help="Address to bind."),
    port: int = port_option(),
    db: str = typer.Option(
        "defectmap-audit.sqlite3", "--db", metavar="FILE|URL",
        help="Audit log: a SQLite file (created if missing; its folder must exist) or a "
        "postgresql:// URL."),
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
    workers: int = count_option(1, "--workers", maximum=64,
                                help="Worker processes sharing the audit log"),
    max_batch: int = count_option(1, "--max-batch", maximum=64,
                                  help="Most uploads scored in one model call"),
    max_wait_ms: float = ratio_option(
        0.0, "--max-wait-ms", low=0.0, high=1000.0, low_open=False, high_open=False,
        help="How long a batch waits for more uploads (0: it takes those already queued)"),
    cache_mb: int = count_option(256, "--cache-mb", minimum=0,
                                 help="Picture cache per worker, MiB"),
    pending_mb: int = count_option(512, "--pending-mb",
                                   help="Decoded uploads waiting for inference, MiB per worker"),
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
    """Serve MODEL over HTTP: POST /v1/inspect, verdicts, audit trail, drift, page at /."""
    from defectmap.errors import UncalibratedModelError
    from defectmap.serve.audit import is_url
    from defectmap.serve.policy import ExposureError, check_exposure
    from defectmap.serve.runner import run_server

    try:
        check_exposure(host, token)
    except ExposureError as exc:  # the library's rule, worded with the flags
        raise CliUsageError(
            "--token is empty or only white space; give a real token" if exc.blank_token
            else f"--host {host} is not loopback: it needs --token (or DEFECTMAP_TOKEN)"
        ) from None
    if not is_url(db) and not Path(db).absolute().parent.is_dir():
        raise CliUsageError(f"--db {db}: folder {Path(db).absolute().parent} does not exist")

    def ready(line: str) -> None:
        err_console.print(f"{line} (audit log {db}{', token required' if token else ''}); "
                          "Ctrl-C stops", highlight=False, soft_wrap=True, markup=False)

    try:
        run_server(model_dir, host=host, port=port, workers=workers, db_path=db, token=token,
                   on_ready=ready, store_images=store_images, max_batch=max_batch,
                   max_wait_ms=max_wait_ms, cache_bytes=cache_mb * 2**20,
                   pending_bytes=pending_mb * 2**20,
                   runtime=None if runtime is None else runtime.value,
                   uncalibrated=uncalibrated, allow_mismatch=allow_mismatch)
    except UncalibratedModelError:
        raise DefectmapError(
            f"{model_dir}: no calibration.json, so no ok/defect decision can be made; refit "
            "it with `defectmap fit`, or pass --uncalibrated to serve raw scores only"
        ) from None
