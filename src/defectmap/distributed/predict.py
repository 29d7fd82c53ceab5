"""``predict`` through Ray Data: :func:`predict_on_ray`.

The pipeline, one Ray Data row per forward-pass batch
(:func:`~defectmap.evaluate.predict.plan_chunks`):

1. Ray Data hands the batches to a fixed pool of model actors, each of which loads the
   model once (and checks that its hash is the driver's);
2. an actor reads its batch's images with the library's safe reader and scores them with
   :func:`~defectmap.evaluate.predict.inspect_chunk`, the function a local ``predict`` runs.
   The reading is part of the actor's step, not a stage of its own: a separate read stage
   waits for CPUs that the actors hold (on a small cluster, forever), and would move the
   pixels between processes;
3. the driver streams the records, in input order, into the same
   :func:`~defectmap.evaluate.predict.write_results` as a local ``predict``.

Ray Data's streaming execution bounds what is in flight (a few batches per actor), so memory
does not grow with the number of images; the driver keeps each image's path and output name
only. The same batches, the same thread count and the same writer give the same bytes as a
local run.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from defectmap import __version__
from defectmap.distributed.cluster import (
    GIB,
    check_fits_a_node,
    check_shared_path,
    cluster_cpus,
    ray_session,
    require_ray,
)
from defectmap.errors import DefectmapError, innermost, one_line
from defectmap.evaluate.predict import (
    PredictSummary,
    ResultRecord,
    inspect_chunk,
    plan_prediction,
    result_header,
    write_results,
)
from defectmap.progress import ProgressCallback
from defectmap.threads import compute_threads, default_threads

__all__ = ["DEFAULT_ACTOR_MEMORY_GIB", "predict_on_ray"]

#: Memory each model actor reserves unless told otherwise, GiB.
DEFAULT_ACTOR_MEMORY_GIB = 2.0


def _objects(values: Sequence[Any]) -> np.ndarray:
    """A 1-D object array of ``values`` (NumPy would otherwise stack nested lists)."""
    out = np.empty(len(values), dtype=object)
    for i, value in enumerate(values):
        out[i] = value
    return out


class _ChunkScorer:
    """Ray Data actor: loads the model once, then reads and scores batch after batch."""

    def __init__(self, model_dir: str, runtime: str | None, model_hash: str | None,
                 version: str, n_threads: int, batch_size: int, write_maps: bool,
                 write_overlays: bool) -> None:
        from defectmap.pipeline import load_model

        if version != __version__:
            raise DefectmapError(f"this worker has defectmap {__version__}, the driver "
                                 f"{version}: install the same version on every node")
        self.model = load_model(model_dir, runtime=runtime)
        if self.model.model_hash != model_hash:
            raise DefectmapError(f"{model_dir}: the model folder changed while predicting "
                                 "(its hash differs from the driver's)")
        self.n_threads = n_threads
        self.options = (batch_size, write_maps, write_overlays)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        records: list[list[ResultRecord]] = []
        with compute_threads(self.n_threads):
            for text in batch["chunk"]:
                chunk = [(path, name, mismatch) for path, name, mismatch in json.loads(text)]
                records.append(inspect_chunk(self.model, chunk, *self.options))
        return {"records": _objects(records)}


def predict_on_ray(
    address: str,
    model_dir: str | Path,
    inputs: Sequence[str | Path],
    out_dir: str | Path,
    batch_size: int = 1,
    write_maps: bool = True,
    write_overlays: bool = True,
    *,
    recursive: bool = False,
    uncalibrated: bool = False,
    allow_mismatch: bool = False,
    runtime: str | None = None,
    parquet: bool = False,
    n_actors: int | None = None,
    n_threads: int | None = None,
    memory_gib: float = DEFAULT_ACTOR_MEMORY_GIB,
    progress: ProgressCallback | None = None,
) -> PredictSummary:
    """:func:`~defectmap.evaluate.predict_to_dir` on Ray: same files, same bytes.

    Parameters
    ----------
    address : ``auto``, ``local``, ``HOST:PORT`` or ``ray://HOST:PORT``.
    model_dir : the model folder (every worker reads it at this path).
    inputs : image files and/or folders (every worker reads them at these paths).
    out_dir : output folder, written by this process (replaced atomically when complete).
    batch_size, write_maps, write_overlays, recursive, uncalibrated, allow_mismatch, parquet :
        as for :func:`~defectmap.evaluate.predict_to_dir` (the same checks run here, on the
        driver, before any actor starts).
    runtime : inference runtime of every actor (see :func:`~defectmap.pipeline.load_model`).
    n_actors : model actors (default: the cluster's CPUs // ``n_threads``, at least 1).
    n_threads : CPUs each actor reserves and its torch threads (default: a local run's
        thread count here, so the scores equal a local run's to the last digit).
    memory_gib : memory each actor reserves, GiB.
    progress : reports ``("inspecting images", done, total)`` as results arrive.

    Returns
    -------
    PredictSummary
        Image and defect counts and the first rows.

    Raises
    ------
    DefectmapError
        What the workers raised (an unreadable image, say), as one line; nothing is written.
    """
    from defectmap.pipeline import load_model

    require_ray()  # before any long work
    for path, what in [(model_dir, "the model folder"), (out_dir, "the output folder"),
                       *((item, "an image path") for item in inputs)]:
        check_shared_path(path, what)
    # The driver checks the folder, records its hash and checks every input like a local run.
    model = load_model(model_dir, runtime=runtime)
    header = result_header(model)
    chunks = plan_prediction(model, inputs, out_dir, batch_size, progress,
                             recursive=recursive, uncalibrated=uncalibrated,
                             allow_mismatch=allow_mismatch)
    n_images = sum(map(len, chunks))
    threads = default_threads() if n_threads is None else n_threads
    with ray_session(address) as ray:
        check_fits_a_node(ray, threads, "each model actor")
        actors = n_actors or max(1, cluster_cpus(ray) // threads)
        context = ray.data.DataContext.get_current()
        before = (context.execution_options.preserve_order,
                  context.raise_original_map_exception)
        context.execution_options.preserve_order = True  # rows in input order
        context.raise_original_map_exception = True  # an unreadable image's own error
        try:
            dataset = ray.data.from_items([{"chunk": json.dumps(c)} for c in chunks])
            dataset = dataset.map_batches(
                _ChunkScorer, batch_size=1,
                compute=ray.data.ActorPoolStrategy(size=min(actors, len(chunks))),
                fn_constructor_kwargs={
                    "model_dir": str(Path(model_dir).absolute()), "runtime": runtime,
                    "model_hash": model.model_hash, "version": __version__,
                    "n_threads": threads, "batch_size": batch_size,
                    "write_maps": write_maps, "write_overlays": write_overlays},
                num_cpus=threads, memory=int(memory_gib * GIB))
            batches: Iterator[list[ResultRecord]] = (
                row["records"] for row in dataset.iter_rows())
            try:
                return write_results(out_dir, batches, header, n_images, parquet=parquet,
                                     progress=progress)
            except Exception as exc:  # Ray wraps what the actors raised: unwrap it
                root = innermost(exc)
                if isinstance(root, DefectmapError):
                    # Ray Data appends its retry advice to the message: keep the first line.
                    root.args = (str(root).splitlines()[0],)
                    raise root from None
                raise DefectmapError(f"predicting on Ray failed: {one_line(exc)}") from exc
        finally:
            (context.execution_options.preserve_order,
             context.raise_original_map_exception) = before
