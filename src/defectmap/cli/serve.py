"""CLI command: ``defectmap serve MODEL_DIR`` runs the HTTP inspection service."""

from __future__ import annotations

from pathlib import Path

import typer

from defectmap.cli._common import app, err_console
from defectmap.cli.export import Runtime

__all__ = ["serve"]


@app.command("serve")
def serve(
    model_dir: Path = typer.Argument(..., help="Trained model directory (from 'defectmap fit')."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind."),
    port: int = typer.Option(8000, "--port", min=0, max=65535, help="TCP port."),
    db: Path = typer.Option(
        Path("defectmap-audit.sqlite3"), "--db", help="SQLite audit database (created if missing)."
    ),
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
    runtime: Runtime | None = typer.Option(
        None, "--runtime", help="Inference runtime; default: the fastest installed one the "
        "model folder was exported for (torch for a folder that was not exported)."),
) -> None:
    """Serve MODEL_DIR over HTTP: POST /v1/inspect, audit trail, web page at /."""
    from defectmap.serve.policy import check_exposure

    check_exposure(host, token)
    import uvicorn

    from defectmap.serve import create_app

    # Loads the model now, so a missing or corrupt model fails here as one clear line.
    service_app = create_app(model_dir, db_path=db, token=token, store_images=store_images,
                             runtime=None if runtime is None else runtime.value)
    err_console.print(
        f"serving {model_dir} on http://{host}:{port}/ with "
        f"{service_app.state.service.model.runtime} (audit log {db}"
        f"{', token required' if token else ''}); Ctrl-C stops",
        highlight=False,
        soft_wrap=True,
    )
    uvicorn.run(service_app, host=host, port=port, log_level="info")
