"""Export a fitted model to ONNX or OpenVINO, with its parity to the torch path checked.

The graph is traced from the detector's own torch code, so it follows whatever the
detector computes: the backbone, the detector's ``_predict_batch`` (patch embedding,
distances, scoring) and the upsampling + Gaussian blur of
:func:`defectmap.detectors.base.maps_to_native` as its two matrix products. One change is
made for the trace: each :class:`~defectmap.detectors.neighbors.NearestNeighborIndex` is
replaced by :class:`GraphNeighbors` (faiss does not trace, and the torch search's loop over
query chunks would freeze the batch size into the graph): the same exact search written as
matrix products (``||a||^2 - 2 a.b + ||b||^2``) over the memory bank, embedded as a
constant and split into chunks of :data:`BANK_CHUNK_ROWS` rows so that a large bank never
needs one queries x bank matrix.

Graph: input ``input`` float32 (B, 3, S, S), normalised as the backbone expects (or, with
``input="pixels"``, uint8 (B, H, W, 3) with the antialiased resize and normalisation in the
graph); outputs ``map`` float32 (B, S, S), the anomaly map at network resolution, and
``score`` float32 (B,), the image score. The batch size is dynamic. Thresholds and
normalisation stay in ``calibration.json`` beside the graph, never inside it. The folder's
layout is described in :mod:`defectmap.runtime.manifest`.

Parity: before the folder is moved into place, a few generated check images are scored by
the torch path (the detector's own ``predict``, faiss included when installed) and by every
exported runtime; the export fails when a map or a score differs by more than
:data:`PARITY_RTOL` relative (maps: largest absolute difference over the map's largest
absolute value, per image). The figures measured are written to ``export.json``.
"""

from __future__ import annotations

import contextlib
import copy
import io
import os
import re
import shutil
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from defectmap import __version__
from defectmap.constants import EXPORT_FORMATS, EXPORT_INPUTS
from defectmap.detectors.base import Detector, upsample_blur_matrix
from defectmap.detectors.neighbors import NearestNeighborIndex
from defectmap.errors import DefectmapError
from defectmap.features.preprocess import preprocess
from defectmap.files import make_temp_dir
from defectmap.progress import ProgressCallback, track
from defectmap.runtime.manifest import write_manifest
from defectmap.tiling import TiledDetector

__all__ = [
    "BANK_CHUNK_ROWS",
    "EXPORT_FORMATS",
    "EXPORT_INPUTS",
    "PARITY_RTOL",
    "ExportError",
    "GraphNeighbors",
    "PixelGraph",
    "ScoringGraph",
    "check_images",
    "export_model",
    "network_map_parity",
    "parity",
    "to_onnx",
    "to_openvino",
]

#: Largest relative difference allowed between torch and an exported runtime.
PARITY_RTOL = 1e-4
#: Bank rows per chunk of the in-graph search: at most B x 1,600 x 8,192 float32 distances
#: (52 MB per 320 px image) exist at once, whatever the bank size.
BANK_CHUNK_ROWS = 8192
#: Row block of the two-level argmin of the in-graph search (see :func:`_argmin`).
_ARGMIN_BLOCK = 32
OPSET = 18
#: Files of a model directory that travel into the exported folder.
MODEL_FILES = ("model.json", "weights.safetensors", "calibration.json", "training.json",
               "feedback.json")  # feedback.json: what an update learnt (defectmap.feedback)
_ONNX_FILE = "model.onnx"
_INPUT_NAMES = {"normalized": "input", "pixels": "pixels"}
_OPENVINO_FILES = {"fp32": "openvino/model.xml", "fp16": "openvino/model-fp16.xml"}


class ExportError(DefectmapError, ValueError):
    """The model cannot be exported (bad arguments, untraceable detector, failed parity)."""


class GraphNeighbors(nn.Module):
    """Exact Euclidean k-NN over a fixed bank as matrix products: traceable into a graph.

    Same contract as :meth:`NearestNeighborIndex.search`. The bank is one buffer (a constant
    of the exported graph). The search runs over chunks of ``chunk_rows`` bank rows: per
    chunk ``||b||^2 - 2 q.b`` is one ``Gemm`` (``-2 B^T`` and ``||b||^2`` are constant-folded
    by the runtimes), the nearest is taken with a two-level ``ArgMin`` (:func:`_argmin`;
    a two-level ``TopK`` for k > 1, :func:`_topk_min`), and the chunks' candidates are
    merged. Measured for k = 1 on the bottle bank (3,344 x 152, 1,600 queries, loaded
    machine): on 2 threads OpenVINO 73 -> 44 ms against the plain
    ``MatMul``/``ReduceMin``/``ArgMin`` form (ONNX Runtime ~38 ms either way); on 1 thread
    ONNX Runtime ~30 ms, as fast as faiss's ``IndexFlatL2`` (~29 ms), the ``Gemm`` being
    most of it.

    The distances returned are then recomputed from differences, ``||q - b||`` for the
    chosen ``b``: the expansion loses ``~sqrt(D) eps ||q|| ||b||`` to cancellation, and with
    bottle's patch features (``||q|| ~ 81``, nearest distances down to ~1) that is up to
    5e-5 of the map's maximum (faiss and the torch search have that error); from differences
    it is ~4e-7. What parity measures is then the torch path's own rounding.

    Parameters
    ----------
    bank : float32 tensor (M, D).
    chunk_rows : rows per chunk.
    """

    bank: torch.Tensor

    def __init__(self, bank: torch.Tensor, chunk_rows: int = BANK_CHUNK_ROWS) -> None:
        super().__init__()
        self.register_buffer("bank", bank.detach().float().clone())
        self.chunks = [(start, min(start + chunk_rows, bank.shape[0]))
                       for start in range(0, bank.shape[0], chunk_rows)]

    def search(self, queries: torch.Tensor, k: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """Distances (Q, k) and indices (Q, k) of the k nearest bank rows, nearest first."""
        values, indices = [], []
        for start, stop in self.chunks:
            partial = _padded_partial(queries, self.bank[start:stop])
            index = _argmin(partial) if k == 1 else _topk_min(partial, min(k, stop - start))
            values.append(torch.gather(partial, 1, index))  # only to merge chunks
            indices.append(index + start)
        index = indices[0]
        if len(values) > 1:
            _, position = torch.topk(torch.cat(values, dim=1), k, dim=1, largest=False)
            index = torch.gather(torch.cat(indices, dim=1), 1, position)
        distances = torch.linalg.vector_norm(queries[:, None, :] - self.bank[index], dim=2)
        return distances, index


def _padded_partial(queries: torch.Tensor, chunk: torch.Tensor) -> torch.Tensor:
    """``||b||^2 - 2 q.b`` (Q, M') with the chunk padded to a multiple of the argmin block.

    Padding rows are zero vectors with ``||b||^2`` set to the largest float32, so they are
    never the nearest (and ``max + 0`` does not overflow).
    """
    pad = -chunk.shape[0] % _ARGMIN_BLOCK
    sq_norms = torch.cat([(chunk * chunk).sum(1),
                          torch.full((pad,), torch.finfo(torch.float32).max)])
    bank_t = torch.cat([-2.0 * chunk.T, torch.zeros(chunk.shape[1], pad)], dim=1)
    return torch.addmm(sq_norms, queries, bank_t)


def _argmin(partial: torch.Tensor) -> torch.Tensor:
    """Index (Q, 1) of each row's first smallest entry, in two levels.

    ``ArgMin`` is slow in both runtimes (ONNX Runtime 8.6 ms, OpenVINO 51 ms over
    1,600 x 3,360 on one thread, against 0.9 ms for ``ReduceMin``): so the row is cut into
    blocks of :data:`_ARGMIN_BLOCK`, the block minima are reduced with ``ReduceMin``,
    ``ArgMin`` picks the first block holding the minimum and a second ``ArgMin`` the first
    minimum inside it. The same index as one ``ArgMin``; measured 1.6 ms and 7.5 ms.
    """
    blocks = partial.reshape(partial.shape[0], -1, _ARGMIN_BLOCK)
    block = blocks.amin(dim=2).argmin(dim=1, keepdim=True)                      # (Q, 1)
    inside = torch.gather(blocks, 1, block[:, :, None].expand(-1, -1, _ARGMIN_BLOCK))
    return block * _ARGMIN_BLOCK + inside[:, 0].argmin(dim=1, keepdim=True)


def _topk_min(partial: torch.Tensor, k: int) -> torch.Tensor:
    """Indices (Q, k) of each row's k smallest entries, smallest first, in two levels.

    The k smallest entries of a row lie in the k blocks (of :data:`_ARGMIN_BLOCK`) with the
    smallest minima: an entry in any other block has k block minima at or below it. So
    ``TopK`` runs over the block minima and then over those k blocks' entries, never over
    the whole row. The same entries as one ``TopK`` (ties may pick another of the tied
    entries, with the same values). Measured in ONNX Runtime on 2 threads, 3,136 queries
    against 3,277 x 152 (bottle's bank at 448 px), k = 3, medians of 15: the search took
    42.4 ms with one ``TopK`` over each row and 22.5 ms in two levels (the ``Gemm`` and a
    ``ReduceMin`` alone: 20.4 ms).
    """
    n_rows = partial.shape[0]
    blocks = partial.reshape(n_rows, -1, _ARGMIN_BLOCK)
    n_best = min(k, blocks.shape[1])
    best = torch.topk(blocks.amin(dim=2), n_best, dim=1, largest=False).indices  # (Q, k)
    inside = torch.gather(blocks, 1, best[:, :, None].expand(-1, -1, _ARGMIN_BLOCK))
    _, position = torch.topk(inside.reshape(n_rows, -1), k, dim=1, largest=False)
    block = torch.gather(best, 1, torch.div(position, _ARGMIN_BLOCK, rounding_mode="floor"))
    return block * _ARGMIN_BLOCK + position % _ARGMIN_BLOCK


def _traceable(detector: Detector) -> tuple[Detector, list[GraphNeighbors]]:
    """A shallow copy of ``detector`` whose neighbour indices are :class:`GraphNeighbors`."""
    clone = copy.copy(detector)
    swapped = []
    for name, value in vars(detector).items():
        if isinstance(value, NearestNeighborIndex):
            graph_index = GraphNeighbors(value.bank)
            setattr(clone, name, graph_index)
            swapped.append(graph_index)
    return clone, swapped


class ScoringGraph(nn.Module):
    """Normalised batch (B, 3, S, S) -> anomaly maps (B, S, S) and image scores (B,).

    Parameters
    ----------
    detector : a fitted detector.
    trace : replace its neighbour indices by :class:`GraphNeighbors` (needed to export;
        False keeps the detector's own search, e.g. for a reference run).
    """

    rows: torch.Tensor
    cols: torch.Tensor

    def __init__(self, detector: Detector, trace: bool = True) -> None:
        super().__init__()
        detector._check_fitted()
        self.detector, swapped = _traceable(detector) if trace else (detector, [])
        self.indices = nn.ModuleList(swapped)  # their buffers become graph constants
        self.backbone = detector._backbone()
        self.input_size = int(detector.input_size)
        size = self.input_size
        with torch.inference_mode():
            _, grid = self.detector._predict_batch(self.backbone(torch.zeros(1, 3, size, size)))
        sigma = detector._sigma()
        self.register_buffer("rows", upsample_blur_matrix(grid.shape[-2], size, sigma).clone())
        self.register_buffer("cols", upsample_blur_matrix(grid.shape[-1], size, sigma).clone())

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        scores, grid = self.detector._predict_batch(self.backbone(x))
        # maps_to_native's upsampling + blur, as its two matrix products
        return self.rows @ grid.float() @ self.cols.T, scores.float()


class PixelGraph(nn.Module):
    """uint8 pixels (B, H, W, 3) -> the outputs of :class:`ScoringGraph`, preprocessing inside.

    The resize and normalisation are those of
    :func:`defectmap.features.preprocess.preprocess` (bilinear, antialiased, no crop).
    """

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, scoring: ScoringGraph) -> None:
        super().__init__()
        self.scoring = scoring
        backbone = scoring.backbone
        self.register_buffer("mean", torch.tensor(backbone.mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(backbone.std).view(1, 3, 1, 1))

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = pixels.permute(0, 3, 1, 2).float() / 255.0
        size = self.scoring.input_size
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False,
                          antialias=True)
        return self.scoring((x - self.mean) / self.std)


def to_onnx(
    graph: nn.Module,
    examples: tuple[torch.Tensor, ...],
    path: Path,
    input_names: Sequence[str],
    dynamic: Sequence[dict[int, str]],
    output_names: Sequence[str] = ("map", "score"),
) -> None:
    """Trace ``graph`` on ``examples`` into an ONNX file.

    Parameters
    ----------
    graph : the module to trace (its ``forward`` takes one tensor per input name).
    examples : one example tensor per input.
    path : the ``.onnx`` file to write.
    input_names : the graph's input names.
    dynamic : per input, ``{axis: dimension name}`` of its dynamic axes (a name shared by
        several inputs is one dimension), e.g. ``[{0: "batch"}]``.
    output_names : the graph's output names.

    Raises
    ------
    ExportError : the graph cannot be traced or translated; the message gives the reason.
    """
    # The exporter needs both; imported here so that a missing one fails as ImportError
    # naming it (the CLI then names the extra to install), not inside the exporter.
    import onnx  # noqa: F401
    import onnxscript  # noqa: F401

    dims = {name: torch.export.Dim(name, min=1 if name == "batch" else 2, max=16384)
            for axes in dynamic for name in axes.values()}
    shapes = tuple({axis: dims[name] for axis, name in axes.items()} for axes in dynamic)
    # The exporter prints its progress and warns about its internals: the library is quiet.
    with (contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()),
          warnings.catch_warnings()):
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(graph.eval(), examples, str(path), input_names=list(input_names),
                              output_names=list(output_names), opset_version=OPSET,
                              dynamic_shapes=shapes, dynamo=True, external_data=False,
                              verbose=False)
        except Exception as exc:  # the exporter raises many types; all mean "not exportable"
            raise ExportError(f"cannot trace the graph into ONNX: {_reason(exc)}") from exc


def _reason(exc: Exception) -> str:
    """One line from an exporter error: its "Exception summary" when it has one."""
    lines = [re.sub(r"\x1b\[[0-9;]*m", "", line).strip() for line in str(exc).splitlines()]
    lines = [line for line in lines if line]
    if "## Exception summary" in lines:
        lines = lines[lines.index("## Exception summary") + 1 :]
    return lines[0][:300] if lines else type(exc).__name__


def to_openvino(onnx_path: Path, out_dir: Path, fp16: bool) -> dict[str, str]:
    """Convert an ONNX graph to OpenVINO IR files in ``out_dir``; return {precision: path}."""
    import openvino as ov

    model = ov.convert_model(str(onnx_path))
    files = {"fp32": _OPENVINO_FILES["fp32"]}
    (out_dir / "openvino").mkdir()
    ov.save_model(model, str(out_dir / files["fp32"]), compress_to_fp16=False)
    if fp16:
        files["fp16"] = _OPENVINO_FILES["fp16"]
        ov.save_model(model, str(out_dir / files["fp16"]), compress_to_fp16=True)
    return files


def check_images(input_size: int, seed: int = 0) -> list[np.ndarray]:
    """Four generated images for the export-time parity check, of different native sizes.

    Smooth colour fields with fine noise and a bright blob (textured, so that the maxima of
    the maps are not ties), one of them grayscale.

    Returns
    -------
    uint8 arrays: (S, S, 3), (S + 37, 2 S - 5, 3), (S // 2 + 3, S + 11), (3 S, 3 S, 3).
    """
    rng = np.random.default_rng(seed)
    s = int(input_size)
    out = []
    for shape in [(s, s, 3), (s + 37, 2 * s - 5, 3), (s // 2 + 3, s + 11), (3 * s, 3 * s, 3)]:
        h, w = shape[0], shape[1]
        yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
        field = 0.5 + 0.25 * np.sin(6 * xx + rng.uniform(0, 6)) * np.cos(5 * yy)
        cy, cx = rng.uniform(0.2, 0.8, 2) * (h, w)
        blob = np.exp(-((yy * max(h, w) - cy) ** 2 + (xx * max(h, w) - cx) ** 2) / (0.01 * h * w))
        image = field[..., None] + 0.4 * blob[..., None] + rng.normal(0, 0.05, (h, w, 3))
        image = np.clip(image * 255, 0, 255).astype(np.uint8)
        out.append(image[..., 0] if len(shape) == 2 else image)
    return out


def _relative(reference: np.ndarray, other: np.ndarray) -> float:
    scale = float(np.abs(reference).max())
    return float(np.abs(other - reference).max()) / (scale if scale > 0 else 1.0)


def parity(
    reference: Any, candidate: Any, images: Sequence[np.ndarray]
) -> dict[str, float]:
    """Largest relative differences between two scorers on ``images``.

    Parameters
    ----------
    reference, candidate : scorers with ``predict(images) -> Prediction`` (a detector, an
        :class:`~defectmap.runtime.ExportedModel`).
    images : uint8 arrays.

    Returns
    -------
    ``{"score_rel": max_i |s_i - r_i| / |r_i|, "native_map_rel": max_i max|m_i - n_i| /
    max|n_i|}``.
    """
    ref = reference.predict(images)
    new = candidate.predict(images)
    scores = [_relative(np.array([r]), np.array([c]))
              for r, c in zip(ref.scores, new.scores, strict=True)]
    maps = [_relative(r, c) for r, c in zip(ref.maps, new.maps, strict=True)]
    return {"score_rel": max(scores), "native_map_rel": max(maps)}


def network_map_parity(
    graph: ScoringGraph, runtime: Any, images: Sequence[np.ndarray]
) -> dict[str, float]:
    """Largest relative differences of the graph outputs at network resolution.

    ``graph`` is the untraced :class:`ScoringGraph` (the detector's own search); ``runtime``
    an :class:`~defectmap.runtime.ExportedModel`. Both get the same normalised input
    (torch's preprocessing), so only the graph is compared.
    """
    backbone = graph.backbone
    x = preprocess(images, graph.input_size, backbone.mean, backbone.std)
    with torch.inference_mode():
        ref_maps, ref_scores = (t.numpy() for t in graph(x))
    if runtime.input_kind == "pixels":
        outs = [runtime.run(runtime.prepare([im])) for im in images]
        maps = np.concatenate([o[0] for o in outs])
        scores = np.concatenate([o[1] for o in outs])
    else:
        maps, scores = runtime.run(x.numpy())
    return {
        "map_rel": max(_relative(r, m) for r, m in zip(ref_maps, maps, strict=True)),
        "graph_score_rel": max(_relative(np.array([r]), np.array([s]))
                               for r, s in zip(ref_scores, scores, strict=True)),
    }


def export_model(
    model_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    format: str = "onnx",
    input: str = "normalized",
    fp16: bool = False,
    progress: ProgressCallback | None = None,
) -> dict[str, Any]:
    """Export a fitted model folder to ``out_dir`` (created; it must not exist).

    Parameters
    ----------
    model_dir : a folder written by ``defectmap fit`` (or a saved detector).
    out_dir : the exported folder to create; built under a temporary name beside it and
        renamed into place only when complete and checked.
    format : ``"onnx"`` (ONNX Runtime) or ``"openvino"`` (OpenVINO IR, plus the ONNX file).
    input : ``"normalized"`` (float input; resize and normalisation in NumPy beside the
        graph) or ``"pixels"`` (uint8 input, resize and normalisation in the graph; ONNX
        only: OpenVINO's antialiased resize does not reproduce torch's).
    fp16 : also write an FP16-compressed OpenVINO IR (its parity is measured, not enforced).
    progress : reports each step as a task of one item (see :mod:`defectmap.progress`).

    Returns
    -------
    The manifest written to ``out_dir/export.json``.

    Raises
    ------
    ExportError : bad arguments, ``out_dir`` exists, the detector cannot be traced, or the
        parity check fails.
    ModelFileError : ``model_dir`` is not a valid fitted model.
    """
    from defectmap.pipeline import load_model
    from defectmap.runtime import ExportedModel

    if format not in EXPORT_FORMATS:
        raise ExportError(f"unknown format {format!r}; choose one of {', '.join(EXPORT_FORMATS)}")
    if input not in EXPORT_INPUTS:
        raise ExportError(f"unknown input {input!r}; choose one of {', '.join(EXPORT_INPUTS)}")
    if format == "openvino" and input == "pixels":
        raise ExportError("--input pixels is ONNX-only: OpenVINO's antialiased resize does not "
                          "reproduce torch's; export --input normalized")
    if fp16 and format != "openvino":
        raise ExportError("fp16 applies to --format openvino only")
    out = Path(out_dir)
    if out.exists() or out.is_symlink():
        raise ExportError(f"{out}: already exists; choose a new output folder")
    source = Path(model_dir)
    with _step(progress, "Exporting: loading the model"):
        # ModelFileError for a missing, corrupt or unfitted model
        model = load_model(source, runtime="torch")
    detector = model.detector
    if isinstance(detector, TiledDetector):
        raise ExportError(f"{source}: a tiled model (tiling mode) cannot be exported: the "
                          "graph scores one network input, not the tiles and their stitching; "
                          "run it with the torch runtime")
    assert isinstance(detector, Detector)  # the torch runtime loads a detector
    if not out.parent.is_dir():
        raise ExportError(f"{out.parent}: parent folder does not exist")
    tmp = make_temp_dir(out.parent, prefix=f".{out.name}.tmp-")
    try:
        manifest = _build(detector, source, tmp, format, input, fp16, progress)
        manifest["source_model_hash"] = model.model_hash
        write_manifest(tmp, manifest)
        images = check_images(detector.input_size)
        reference = ScoringGraph(detector, trace=False)
        checks: dict[str, Any] = {"images": [list(im.shape) for im in images],
                                  "rtol": PARITY_RTOL}
        graphs = [(r, p) for r, files in manifest["runtimes"].items() for p in files]
        for runtime, precision in track(graphs, "Exporting: checking parity with torch",
                                        progress):
            session = ExportedModel(tmp, runtime=runtime, precision=precision)
            figures = {**network_map_parity(reference, session, images),
                       **parity(detector, session, images)}
            checks[f"{runtime}/{precision}"] = figures
            worst = max(figures.values())
            if precision == "fp32" and not worst <= PARITY_RTOL:
                raise ExportError(f"parity check failed: {runtime} differs from torch by "
                                  f"{worst:.3g} relative (> {PARITY_RTOL:g}): {figures}")
        manifest["parity"] = checks
        written = write_manifest(tmp, manifest)
        os.rename(tmp, out)  # fails rather than replace a folder that appeared meanwhile
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return written


def _score_is_map_max(detector: Detector) -> bool:
    """Whether the detector's image score is the maximum of its native-size map (then the
    runtime takes it there, as ``Detector.predict`` does, not from the graph's ``score``)."""
    per_model = getattr(detector, "_map_max_score", None)  # set by the detector's params
    return bool(per_model() if callable(per_model) else detector._score_is_map_max)


@contextlib.contextmanager
def _step(progress: ProgressCallback | None, task: str) -> Iterator[None]:
    """Report one step as a task of one item: started, then done."""
    if progress is not None:
        progress(task, 0, 1)
    yield
    if progress is not None:
        progress(task, 1, 1)


def _build(
    detector: Detector, source: Path, tmp: Path, format: str, input: str, fp16: bool,
    progress: ProgressCallback | None,
) -> dict[str, Any]:
    """Write the graph files and copy the model files into ``tmp``; return the manifest."""
    with _step(progress, "Exporting: tracing the graph"):
        scoring = ScoringGraph(detector)
        size = scoring.input_size
        if input == "pixels":
            graph: nn.Module = PixelGraph(scoring)
            example = torch.zeros(2, size + 3, size + 5, 3, dtype=torch.uint8)
            dynamic = {0: "batch", 1: "height", 2: "width"}
        else:
            graph = scoring
            example = torch.zeros(2, 3, size, size)
            dynamic = {0: "batch"}
        try:
            to_onnx(graph, (example,), tmp / _ONNX_FILE, [_INPUT_NAMES[input]], [dynamic])
        except ExportError as exc:
            raise ExportError(f"{source}: the {detector.name} detector cannot be exported "
                              f"({exc})") from exc
    runtimes: dict[str, dict[str, str]] = {"onnxruntime": {"fp32": _ONNX_FILE}}
    if format == "openvino":
        with _step(progress, "Exporting: converting to OpenVINO"):
            runtimes["openvino"] = to_openvino(tmp / _ONNX_FILE, tmp, fp16)
    for name in MODEL_FILES:
        if (source / name).is_file():
            shutil.copy2(source / name, tmp / name)
    backbone = scoring.backbone
    return {
        "defectmap_version": __version__,
        "detector": detector.name,
        "params": detector.get_params(),
        "format_requested": format,
        "graph": {
            "input": input,
            "input_name": _INPUT_NAMES[input],
            "input_shape": (["batch", "height", "width", 3] if input == "pixels"
                            else ["batch", 3, size, size]),
            "input_size": size,
            "outputs": {"map": ["batch", size, size], "score": ["batch"]},
            "image_score": "native_map_max" if _score_is_map_max(detector) else "graph",
            "opset": OPSET,
            "neighbour_search": f"matrix products, bank chunks of {BANK_CHUNK_ROWS} rows",
        },
        "preprocess": {
            "input_size": size,
            "resize": "bilinear, antialiased, align_corners=False, no crop",
            "scale": "1/255",
            "mean": list(backbone.mean),
            "std": list(backbone.std),
            "channels": "RGB; grayscale repeated to 3 channels",
        },
        "postprocess": {"native_resize": "bilinear, no antialiasing, align_corners=False"},
        "runtimes": runtimes,
    }
