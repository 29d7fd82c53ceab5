"""Score images with an exported graph on ONNX Runtime or OpenVINO: no torch anywhere.

:class:`ExportedModel` has the scorer contract of a detector (``name``, ``get_params()``,
``predict(images, batch_size) -> Prediction``), so :class:`defectmap.pipeline.InspectionModel`
adds the calibration, decisions, p-values and regions the same way for every runtime.

One prediction is three steps, kept apart so that benchmarks can time them:

1. :meth:`ExportedModel.prepare`: uint8 images -> graph input (NumPy resize and
   normalisation, :func:`defectmap.runtime.resample.preprocess`; or the pixels themselves
   for a graph exported with ``input="pixels"``).
2. :meth:`ExportedModel.run`: the graph: anomaly maps at network resolution (B, S, S)
   and image scores (B,).
3. :meth:`ExportedModel.finish`: maps resized to each image's native size; for detectors
   whose score is the maximum of the native-size map (PaDiM) the score is taken there, as
   the torch path does.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from defectmap.constants import EXTRA_OF_MODULE, RUNTIMES
from defectmap.data.io import ImageInput, iter_batches
from defectmap.errors import DefectmapError, ModelFileError
from defectmap.prediction import Prediction
from defectmap.progress import ProgressCallback
from defectmap.runtime.manifest import is_export_dir, read_manifest
from defectmap.runtime.resample import preprocess, resize_maps

__all__ = [
    "FASTEST_FIRST",
    "GRAPH_RUNTIMES",
    "RUNTIMES",
    "ExportedModel",
    "RuntimeUnavailableError",
    "choose_runtime",
    "installed_runtimes",
    "supported_runtimes",
]

#: The runtimes that run an exported graph (this module); torch runs the detector itself.
GRAPH_RUNTIMES = ("onnxruntime", "openvino")
#: Preference of the default runtime, fastest first (``benchmarks/runtime.py`` on bottle).
FASTEST_FIRST = ("onnxruntime", "openvino", "torch")


class RuntimeUnavailableError(DefectmapError, RuntimeError):
    """The requested runtime is not installed, or the model was not exported for it."""


def installed_runtimes() -> list[str]:
    """The runtimes whose Python package is importable (found, not imported)."""
    return [name for name in RUNTIMES if importlib.util.find_spec(name) is not None]


def supported_runtimes(directory: str | Path) -> list[str]:
    """The runtimes a model folder can run on: torch, plus the graphs of an export."""
    folder = Path(directory)
    if not is_export_dir(folder):
        return ["torch"]
    manifest = read_manifest(folder, check_files=False)
    return ["torch", *[name for name in GRAPH_RUNTIMES if name in manifest["runtimes"]]]


def choose_runtime(directory: str | Path, requested: str | None = None) -> str:
    """The runtime to use for a model folder: ``requested``, or the fastest one available.

    Raises
    ------
    RuntimeUnavailableError : ``requested`` is unknown, not installed, or the folder was not
        exported for it; or no runtime the folder supports is installed.
    """
    supported = supported_runtimes(directory)
    installed = installed_runtimes()
    if requested is not None:
        if requested not in RUNTIMES:
            raise RuntimeUnavailableError(
                f"unknown runtime {requested!r}; known runtimes: {', '.join(RUNTIMES)}")
        if requested not in supported:
            raise RuntimeUnavailableError(
                f"{directory}: not exported for {requested} (it runs on {', '.join(supported)});"
                f" see `defectmap export --help`")
        if requested not in installed:
            raise RuntimeUnavailableError(_not_installed(requested))
        return requested
    for name in FASTEST_FIRST:
        if name in supported and name in installed:
            return name
    raise RuntimeUnavailableError(f"{directory}: runs on {', '.join(supported)}, none of which "
                                  f"is installed; {_not_installed(supported[-1])}")


def _not_installed(runtime: str) -> str:
    extra = EXTRA_OF_MODULE[runtime]
    return f"runtime {runtime!r} is not installed: pip install 'defectmap[{extra}]'"


class _OnnxRuntime:
    """An ONNX Runtime CPU session of one graph."""

    def __init__(self, path: Path, n_threads: int | None) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.log_severity_level = 3  # errors only: the library prints nothing
        if n_threads is not None:
            options.intra_op_num_threads = n_threads
            options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(path), options,
                                            providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    def run(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        maps, scores = self.session.run(["map", "score"], {self.input_name: x})
        return maps, scores


class _OpenVino:
    """An OpenVINO CPU compiled model of one IR, at FP32 inference precision.

    The precision is set explicitly: on CPUs with bfloat16 support OpenVINO's default
    inference precision is bf16, whose 8-bit mantissa would break parity with torch.
    """

    def __init__(self, path: Path, n_threads: int | None) -> None:
        import openvino as ov

        config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY"}
        if n_threads is not None:
            config["INFERENCE_NUM_THREADS"] = n_threads
        self.compiled = ov.Core().compile_model(str(path), "CPU", config)
        self.request = self.compiled.create_infer_request()
        self.outputs = (self.compiled.output("map"), self.compiled.output("score"))

    def run(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        result = self.request.infer({0: x})
        return np.array(result[self.outputs[0]]), np.array(result[self.outputs[1]])


class ExportedModel:
    """A torch-free scorer over an exported model folder.

    Parameters
    ----------
    directory : a folder written by ``defectmap export`` (its hashes are checked).
    runtime : ``"onnxruntime"`` or ``"openvino"``; None: the fastest installed one the
        folder was exported for.
    n_threads : CPU threads of the runtime (None: the runtime's default).
    precision : ``"fp32"``, or ``"fp16"`` for an OpenVINO export that has an FP16 IR.

    Raises
    ------
    ModelFileError : the folder or its manifest is invalid, or a file's hash differs.
    RuntimeUnavailableError : the runtime is not installed or not exported for.
    """

    def __init__(
        self,
        directory: str | Path,
        runtime: str | None = None,
        n_threads: int | None = None,
        precision: str = "fp32",
    ) -> None:
        self.directory = Path(directory)
        self.manifest = read_manifest(self.directory)
        if runtime is None:
            order = [r for r in choose_order(self.directory) if r in GRAPH_RUNTIMES]
            if not order:
                raise RuntimeUnavailableError(
                    f"{self.directory}: neither onnxruntime nor openvino is installed; "
                    f"{_not_installed('onnxruntime')}")
            runtime = order[0]
        if runtime not in GRAPH_RUNTIMES:
            raise RuntimeUnavailableError(
                f"{self.directory}: ExportedModel runs {' or '.join(GRAPH_RUNTIMES)}, "
                f"not {runtime!r}")
        choose_runtime(self.directory, runtime)  # installed and exported for, or one line
        self.runtime = runtime
        self.name = str(self.manifest["detector"])
        graph = self.manifest["graph"]
        self.input_kind = str(graph["input"])
        self.input_size = int(graph["input_size"])
        self.score_from_native_max = graph["image_score"] == "native_map_max"
        self.mean = tuple(float(v) for v in self.manifest["preprocess"]["mean"])
        self.std = tuple(float(v) for v in self.manifest["preprocess"]["std"])
        files = self.manifest["runtimes"][runtime]
        if precision not in files:
            raise RuntimeUnavailableError(
                f"{self.directory}: no {precision} graph for {runtime} (it has "
                f"{', '.join(sorted(files))})")
        path = self.directory / files[precision]
        try:
            self._backend: _OnnxRuntime | _OpenVino = (
                _OnnxRuntime(path, n_threads) if runtime == "onnxruntime"
                else _OpenVino(path, n_threads))
        except (RuntimeError, ValueError, OSError) as exc:  # runtimes raise their own types
            raise ModelFileError(f"{path}: {runtime} cannot load it ({exc})") from exc
        self.precision = precision

    def get_params(self) -> dict[str, Any]:
        """The detector's constructor arguments, as exported."""
        return dict(self.manifest["params"])

    def __repr__(self) -> str:
        return (f"ExportedModel({self.name!r}, runtime={self.runtime!r}, "
                f"directory={str(self.directory)!r})")

    # -- the three steps ---------------------------------------------------------------------
    def prepare(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """Graph input of a batch of uint8 images (H_i, W_i[, 3]).

        Returns
        -------
        Float32 (B, 3, S, S) for a normalised-input graph; uint8 (B, H, W, 3) for a pixel
        graph (the images must then share one size).
        """
        if self.input_kind == "normalized":
            return preprocess(images, self.input_size, self.mean, self.std)
        rgb = [np.repeat(im[:, :, None], 3, axis=2) if im.ndim == 2 else im for im in images]
        if len({im.shape for im in rgb}) > 1:
            raise ValueError("a pixel-input graph takes a batch of images of one size")
        return np.ascontiguousarray(np.stack(rgb))

    def run(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The graph: maps (B, S, S) float32 at network resolution and scores (B,) float32."""
        maps, scores = self._backend.run(x)
        return maps.astype(np.float32, copy=False), scores.astype(np.float32, copy=False)

    def finish(
        self, maps: np.ndarray, scores: np.ndarray, sizes: Sequence[tuple[int, int]]
    ) -> tuple[np.ndarray, list[np.ndarray]]:
        """Native-size maps of one batch, and the final image scores (float32)."""
        native = resize_maps(maps, sizes)
        if self.score_from_native_max:
            scores = np.array([m.max() for m in native], dtype=np.float32)
        return scores, native

    def predict(
        self,
        images: Sequence[ImageInput],
        batch_size: int = 1,
        progress: ProgressCallback | None = None,
    ) -> Prediction:
        """Score images and compute anomaly maps at each image's native size.

        Parameters
        ----------
        images : uint8 arrays (H_i, W_i) or (H_i, W_i, 3), or image file paths.
        batch_size : images per graph run (a pixel-input graph also splits a batch where the
            image size changes).
        progress : called as ``(task, images done, total)`` (see :mod:`defectmap.progress`).

        Returns
        -------
        Prediction with ``scores`` (N,) float32 and N maps (H_i, W_i) float32.
        """
        scores: list[np.ndarray] = []
        maps: list[np.ndarray] = []
        task = f"Scoring with {self.name} on {self.runtime}"
        for batch in iter_batches(images, batch_size, task, progress):
            for run in self._runs(batch):
                sizes = [(im.shape[0], im.shape[1]) for im in run]
                run_scores, native = self.finish(*self.run(self.prepare(run)), sizes)
                scores.append(run_scores)
                maps.extend(native)
        all_scores = np.concatenate(scores) if scores else np.zeros(0, np.float32)
        return Prediction(scores=all_scores, maps=maps)

    def _runs(self, batch: list[np.ndarray]) -> list[list[np.ndarray]]:
        """The batch itself; for a pixel graph, its runs of images of one size."""
        if self.input_kind != "pixels":
            return [batch]
        runs = [[batch[0]]]
        for image in batch[1:]:
            if image.shape[:2] == runs[-1][0].shape[:2]:
                runs[-1].append(image)
            else:
                runs.append([image])
        return runs


def choose_order(directory: str | Path) -> list[str]:
    """The runtimes of a folder that are installed, fastest first."""
    supported, installed = supported_runtimes(directory), installed_runtimes()
    return [r for r in FASTEST_FIRST if r in supported and r in installed]
