"""CLI command: ``defectmap serve MODEL`` runs the HTTP inspection service."""

from __future__ import annotations

from pathlib import Path

import typer

from defectmap.cli._common import app, err_console
from defectmap.cli.export import Runtime

__all__ = ["serve"]


@app.command(
    "serve",
    epilog="Example: defectmap serve models/registry --workers 2 --db postgresql://line@db/audit",
)
def serve(
    model_dir: Path = typer.Argument(
        ..., help="Model folder (from 'defectmap fit') or model registry (serves and follows "
        "its current version)."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind."),
    port: int = typer.Option(8000, "--port", min=0, max=65535, help="TCP port."),
    db: str = typer.Option(
        "defectmap-audit.sqlite3", "--db",
        help="Audit log: a SQLite file (created if missing) or a postgresql:// URL."),
    token: str | None = typer.Option(
        None,
        "--token",
        envvar="DEFECTMAP_TOKEN",
        help="Bearer token required on every /v1 call (or set DEFECTMAP_TOKEN). "
        "Mandatory when --host is not a loopback address.",
    ),
    store_images: bool = typer.Option(
        False, "--store-images", help="Keep each upload, heatmap and overlay beside the database."
    ),
    workers: int = typer.Option(1, "--workers", min=1, max=64,
                                help="Worker processes sharing the audit log."),
    max_batch: int = typer.Option(1, "--max-batch", min=1, max=64,
                                  help="Most uploads scored in one model call."),
    max_wait_ms: float = typer.Option(
        0.0, "--max-wait-ms", min=0.0, max=1000.0,
        help="How long a batch waits for more uploads (0: it takes those already queued)."),
    cache_mb: int = typer.Option(256, "--cache-mb", min=0,
                                 help="Picture cache per worker, MiB."),
    pending_mb: int = typer.Option(512, "--pending-mb", min=1,
                                   help="Decoded uploads waiting for inference, MiB per worker."),
    runtime: Runtime | None = typer.Option(
        None, "--runtime", help="Inference runtime; default: the fastest installed one the "
        "model folder was exported for (torch for a folder that was not exported)."),
) -> None:
    """Serve MODEL over HTTP: POST /v1/inspect, verdicts, audit trail, drift, page at /."""
    from defectmap.serve.policy import check_exposure
    from defectmap.serve.runner import run_server

    check_exposure(host, token)

    def ready(line: str) -> None:
        err_console.print(f"{line} (audit log {db}{', token required' if token else ''}); "
                          "Ctrl-C stops", highlight=False, soft_wrap=True, markup=False)

    run_server(model_dir, host=host, port=port, workers=workers, db_path=db, token=token,
               on_ready=ready, store_images=store_images, max_batch=max_batch,
               max_wait_ms=max_wait_ms, cache_bytes=cache_mb * 2**20,
               pending_bytes=pending_mb * 2**20,
               runtime=None if runtime is None else runtime.value)
