"""Running the service: one process, or several worker processes sharing one audit store.

:func:`run_server` checks the model and the database once, then serves. With ``workers > 1``
uvicorn's supervisor starts that many processes on one listening socket (the kernel spreads
the connections) and restarts any that dies; each builds its app with :func:`app_from_env`
from the settings in the environment variable ``DEFECTMAP_SERVE``. The workers share the
audit store (SQLite in WAL mode or PostgreSQL), the model registry they follow and a
picture-cache folder in ``/dev/shm``; each runs its model on ``cpus // workers`` threads so
that they do not fight over the cores.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from fastapi import FastAPI

from defectmap.files import to_jsonable

__all__ = ["ENV_SETTINGS", "app_from_env", "run_server"]

#: Environment variable carrying the workers' settings (JSON).
ENV_SETTINGS = "DEFECTMAP_SERVE"
_SHARED_MEMORY = Path("/dev/shm")


def app_from_env() -> FastAPI:
    """The app of one worker process, built from ``DEFECTMAP_SERVE`` (uvicorn factory)."""
    from defectmap.serve.routes import create_app

    settings = json.loads(os.environ[ENV_SETTINGS])
    threads = settings.get("n_threads")
    if threads:
        try:  # a torch model's threads; exported models take n_threads themselves
            import torch
        except ImportError:
            pass
        else:
            torch.set_num_threads(int(threads))
    if settings.get("picture_dir"):
        settings["picture_dir"] = Path(settings["picture_dir"])
    return create_app(**settings)


def run_server(
    model_dir: str | Path,
    host: str = "127.0.0.1",
    port: int = 8000,
    workers: int = 1,
    db_path: str | Path | None = None,
    token: str | None = None,
    on_ready: Any = None,
    **options: Any,
) -> None:
    """Serve until interrupted.

    Parameters
    ----------
    model_dir : str or Path
        A model directory or a model registry.
    host, port : str, int
        Where to listen.
    workers : int
        Worker processes (>= 1).
    db_path : str or Path, optional
        SQLite file or ``postgresql://`` URL of the shared audit log.
    token : str, optional
        Bearer token for every ``/v1`` call.
    on_ready : callable, optional
        Called with a one-line description once the model and database are checked.
    **options
        Keyword arguments of :func:`~defectmap.serve.routes.create_app`.

    Raises
    ------
    DefectmapError
        The model or the database is invalid (checked before any worker starts).
    """
    import uvicorn

    from defectmap.serve.routes import create_app

    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    config: dict[str, Any] = dict(host=host, port=port, log_level="warning", access_log=False,
                                  timeout_graceful_shutdown=10)
    if workers == 1:
        app = create_app(model_dir, db_path=db_path, token=token, **options)
        if on_ready is not None:
            on_ready(f"serving {model_dir} on http://{host}:{port}/")
        uvicorn.run(app, **config)
        return

    # Check model and database once, here, so that a bad one is one clear line.
    from defectmap.serve.audit import open_audit_log
    from defectmap.serve.slot import ModelSlot

    ModelSlot(model_dir, warmup=False, runtime=options.get("runtime"))
    if db_path is not None:
        open_audit_log(db_path).close()  # also runs the migrations, once
    parent = _SHARED_MEMORY if _SHARED_MEMORY.is_dir() else None
    picture_dir = Path(tempfile.mkdtemp(prefix="defectmap-pictures-", dir=parent))
    settings = dict(model_dir=str(model_dir), db_path=None if db_path is None else str(db_path),
                    token=token, picture_dir=str(picture_dir),
                    **options)
    settings.setdefault("n_threads", max(1, (os.cpu_count() or 1) // workers))
    os.environ[ENV_SETTINGS] = json.dumps(to_jsonable(settings))
    try:
        if on_ready is not None:
            on_ready(f"serving {model_dir} on http://{host}:{port}/ with {workers} workers")
        uvicorn.run("defectmap.serve.runner:app_from_env", factory=True, workers=workers,
                    **config)
    finally:
        shutil.rmtree(picture_dir, ignore_errors=True)
