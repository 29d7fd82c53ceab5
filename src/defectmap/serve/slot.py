"""The model in service, and switching it when a registry's ``current`` version changes.

:class:`ModelSlot` holds one :class:`ServedModel`. Served from a registry, it checks the
``current`` pointer every ``poll_s`` seconds on a background thread; when it changed, the new
version is loaded, checked against its content address and warmed up *beside* the old one,
then swapped in with one reference assignment. A request scores with the model it took at
the start of its batch, so requests in flight finish on the old version and none is dropped;
each audit row names the version that decided. A new version that fails to load, or that
the service would have refused at start (no calibration without ``uncalibrated``), leaves
the old one serving and is reported (``reload_error``) on ``/healthz``.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from defectmap.errors import DefectmapError, ModelFileError, UncalibratedModelError
from defectmap.files import to_jsonable
from defectmap.registry import Registry, is_registry

__all__ = ["ModelSlot", "ServedModel", "load_served"]


@dataclass(frozen=True, eq=False)
class ServedModel:
    """One loaded model with what the service reports about it."""

    model: Any  # defectmap.pipeline.InspectionModel
    name: str
    hash: str
    version: str | None
    description: dict[str, Any] = field(default_factory=dict)
    thresholds: dict[str, Any] = field(default_factory=dict)

    @property
    def runtime(self) -> str:
        """``"torch"``, ``"onnxruntime"`` or ``"openvino"``."""
        return str(getattr(self.model, "runtime", "torch"))

    @property
    def pixel_scale(self) -> tuple[float, float] | None:
        """(pixel threshold, pixel scale) of the map colours, or None without them."""
        cal = getattr(self.model, "calibration", None)
        if cal is None or cal.pixel_threshold is None or cal.pixel_scale is None:
            return None
        return float(cal.pixel_threshold), float(cal.pixel_scale)


def load_served(
    model_dir: Path,
    name: str,
    version: str | None,
    warmup: bool,
    runtime: str | None = None,
    n_threads: int | None = None,
    uncalibrated: bool = False,
) -> ServedModel:
    """Load ``model_dir`` (and, with ``warmup``, run it once on a blank image).

    ``runtime`` and ``n_threads`` go to :func:`defectmap.pipeline.load_model` (None: the
    fastest installed runtime the folder was exported for). A model without calibration is
    refused unless ``uncalibrated``.

    Raises
    ------
    UncalibratedModelError
        The model has no ``calibration.json`` and ``uncalibrated`` is False.
    DefectmapError
        The model is missing or invalid, or fails on the test image.
    """
    from defectmap.pipeline import load_model

    if not model_dir.is_dir():
        raise DefectmapError(f"{model_dir}: model directory not found")
    model = load_model(model_dir, runtime=runtime, n_threads=n_threads)
    if model.calibration is None and not uncalibrated:
        raise UncalibratedModelError(
            f"{model_dir}: no calibration.json, so no ok/defect decision can be made; "
            "train it with calibration, or serve raw scores only (uncalibrated=True)"
        )
    model_hash = str(model.model_hash)
    if version is not None and not model_hash.startswith(version):
        raise ModelFileError(f"{model_dir}: files changed since version {version} was added")
    if warmup:
        # The first inference initialises the backbone lazily (seconds): pay it here rather
        # than on the first upload, and prove the model runs before it serves.
        try:
            model.inspect([np.full((64, 64, 3), 128, dtype=np.uint8)])
        except Exception as exc:
            raise ModelFileError(
                f"{model_dir}: the model fails on a test image ({type(exc).__name__}: {exc})"
            ) from exc
    description: dict[str, Any] = to_jsonable(model.describe())
    return ServedModel(model, name, model_hash, version, description,
                       description.get("thresholds") or {})


class ModelSlot:
    """The served model: a model folder, or a registry's ``current`` version (followed).

    Parameters
    ----------
    source : Path
        A model directory, or a registry folder (see :mod:`defectmap.registry`).
    warmup : bool
        Run each model once on a blank image before it serves.
    poll_s : float
        How often a registry's ``current`` pointer is checked.
    runtime, n_threads : str, int, optional
        Runtime of every version loaded, and the threads of an exported model's runtime
        (see :func:`load_served`).
    uncalibrated : bool
        Accept versions without calibration (see :func:`load_served`); the same rule holds
        for the first version and for every version switched to later.
    """

    def __init__(self, source: str | Path, warmup: bool = True, poll_s: float = 1.0,
                 runtime: str | None = None, n_threads: int | None = None,
                 uncalibrated: bool = False) -> None:
        self.source = Path(source)
        self.runtime = runtime
        self.n_threads = n_threads
        self.uncalibrated = uncalibrated
        self.registry = Registry(self.source) if is_registry(self.source) else None
        self.warmup = warmup
        self.poll_s = float(poll_s)
        self.reload_error: str | None = None
        self.switches = 0
        self._served = self._load()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def current(self) -> ServedModel:
        """The model to use now (take it once per batch)."""
        return self._served

    def _load(self) -> ServedModel:
        name = self.source.resolve().name
        if self.registry is None:
            return load_served(self.source, name, None, self.warmup, self.runtime,
                               self.n_threads, self.uncalibrated)
        version = self.registry.resolve("current")
        return load_served(self.registry.versions_dir / version, name, version, self.warmup,
                           self.runtime, self.n_threads, self.uncalibrated)

    def check(self) -> bool:
        """Switch to the registry's current version if it changed; True when it switched."""
        if self.registry is None:
            return False
        wanted = self.registry.current()
        if wanted is None or wanted == self._served.version:
            return False
        try:
            served = self._load()
        except DefectmapError as exc:
            self.reload_error = f"version {wanted}: {exc}"
            return False
        self._served = served  # one assignment: every later batch uses the new version
        self.reload_error = None
        self.switches += 1
        return True

    def start(self) -> None:
        """Follow the registry's ``current`` pointer on a background thread."""
        if self.registry is None or self._thread is not None:
            return
        self._thread = threading.Thread(target=self._watch, name="defectmap-model-watch",
                                        daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        while not self._stop.wait(self.poll_s):
            try:
                self.check()
            except Exception as exc:  # noqa: BLE001 - keep serving the model we have
                self.reload_error = f"{type(exc).__name__}: {exc}"

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
