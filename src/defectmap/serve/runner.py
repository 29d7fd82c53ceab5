"""Running the service: one process, or several worker processes sharing one audit store.

:func:`run_server` binds the listening socket itself (:func:`listen`: a busy port is one
clear error, before the model is loaded), checks the model and the database once, then
serves on that socket. With ``workers > 1`` uvicorn's supervisor starts that many processes
on it (the kernel spreads the connections) and restarts any that dies; each builds its app
with :func:`app_from_env` from the settings in the environment variable ``DEFECTMAP_SERVE``
(the same flags for every worker: runtime, uncalibrated, allow_mismatch, budgets). They
share the audit store (SQLite in WAL mode or PostgreSQL), the model registry they follow and
a picture-cache folder in ``/dev/shm``; each runs its model on ``cpus // workers`` threads so
that they do not fight over the cores.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import tempfile
from pathlib import Path
from typing import Any

from fastapi import FastAPI

from defectmap.errors import DefectmapError
from defectmap.files import to_jsonable

__all__ = ["ENV_SETTINGS", "app_from_env", "listen", "run_server"]

#: Environment variable carrying the workers' settings (JSON).
ENV_SETTINGS = "DEFECTMAP_SERVE"
_SHARED_MEMORY = Path("/dev/shm")


def listen(host: str, port: int) -> socket.socket:
    """A socket bound to ``host:port`` and listening, or one clear error (port in use, ...).

    Bound before uvicorn starts, so that a busy port is one line instead of uvicorn's log,
    and handed to uvicorn (and to every worker) as it is, so nothing can take the port in
    between.

    Raises
    ------
    DefectmapError
        The address cannot be bound (in use, not local, not an address).
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
        Where to listen (port 0: a free port, named in the ready line).
    workers : int
        Worker processes (>= 1).
    db_path : str or Path, optional
        SQLite file or ``postgresql://`` URL of the shared audit log.
    token : str, optional
        Bearer token for every ``/v1`` call.
    on_ready : callable, optional
        Called with a one-line description (address, runtime, workers, and a note for an
        uncalibrated model) once the socket is bound and the model and database checked.
    **options
        Keyword arguments of :func:`~defectmap.serve.routes.create_app` (``runtime``,
        ``uncalibrated``, ``allow_mismatch``, batching, byte budgets, ...); every worker
        gets the same.

    Raises
    ------
    DefectmapError
        The address cannot be bound, or the model or the database is invalid (checked
        before any worker starts); :class:`~defectmap.errors.UncalibratedModelError` for a
        model without calibration unless ``uncalibrated=True``.
    """
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    sock = listen(host, port)
    try:
        _serve(sock, model_dir, host, workers, db_path, token, on_ready, options)
    finally:
        sock.close()


def _serve(sock: socket.socket, model_dir: str | Path, host: str, workers: int,
           db_path: str | Path | None, token: str | None, on_ready: Any,
           options: dict[str, Any]) -> None:
    import uvicorn

    from defectmap.serve.routes import create_app

    config: dict[str, Any] = dict(log_level="warning", access_log=False,
                                  timeout_graceful_shutdown=10)
    where = f"http://{host}:{sock.getsockname()[1]}/"
    if workers == 1:
        app = create_app(model_dir, db_path=db_path, token=token, **options)
        if on_ready is not None:
            served = app.state.service.served
            on_ready(f"serving {model_dir} on {where} with {served.runtime}"
                     f"{_uncalibrated_note(served)}")
        uvicorn.Server(uvicorn.Config(app, **config)).run(sockets=[sock])
        return

    # Check model and database once, here, so that a bad one is one clear line.
    from uvicorn.supervisors import Multiprocess

    from defectmap.serve.audit import open_audit_log
    from defectmap.serve.slot import ModelSlot

    served = ModelSlot(model_dir, warmup=False, runtime=options.get("runtime"),
                       uncalibrated=bool(options.get("uncalibrated", False))).current
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
            on_ready(f"serving {model_dir} on {where} with {served.runtime}, {workers} "
                     f"workers{_uncalibrated_note(served)}")
        supervisor_config = uvicorn.Config("defectmap.serve.runner:app_from_env", factory=True,
                                           workers=workers, **config)
        Multiprocess(supervisor_config, sockets=[sock]).run()
    finally:
        shutil.rmtree(picture_dir, ignore_errors=True)


def _uncalibrated_note(served: Any) -> str:
    if getattr(served.model, "calibration", None) is not None:
        return ""
    return ", uncalibrated: raw scores only, decision null"
