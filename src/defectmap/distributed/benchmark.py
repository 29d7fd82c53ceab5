"""Benchmark cells as Ray tasks: :class:`RayExecutor` and :func:`run_benchmark_on_ray`.

Each cell is one task running :func:`defectmap.evaluate.benchmark.run_cell` with the CPUs
(= torch threads) and memory it asks for. Ray's own retries are off: the runner
(:func:`~defectmap.evaluate.benchmark.run_cells`) resubmits a cell that raised or whose
worker died, once, so a failure is counted and reported the same way as locally. Warnings a
cell raises come back with its metrics and are raised again on the driver.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from defectmap import __version__
from defectmap.constants import DEFAULT_ALPHA, DEFAULT_TILE_OVERLAP
from defectmap.distributed.cluster import (
    GIB,
    check_fits_a_node,
    check_shared_path,
    ray_session,
    require_ray,
)
from defectmap.errors import DefectmapError
from defectmap.evaluate.benchmark import BenchmarkCell, CellOutcome, run_benchmark, run_cell
from defectmap.progress import ProgressCallback
from defectmap.threads import default_threads

__all__ = ["DEFAULT_CELL_MEMORY_GIB", "RayExecutor", "run_benchmark_on_ray"]

#: Memory each cell reserves on its node unless told otherwise: a PatchCore fit on bottle
#: peaks at 1.96 GB RSS (README).
DEFAULT_CELL_MEMORY_GIB = 2.0


def _cell_task(cell: BenchmarkCell, version: str) -> CellOutcome:
    """Body of the Ray task: one cell, its warnings collected for the driver."""
    if version != __version__:
        raise DefectmapError(f"this worker has defectmap {__version__}, the driver {version}: "
                             "install the same version on every node")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        metrics = run_cell(cell)
    texts = list(dict.fromkeys(str(w.message) for w in caught))
    return CellOutcome(metrics, texts)


class RayExecutor:
    """Runs each submitted cell as a Ray task (call inside :func:`ray_session`).

    Parameters
    ----------
    ray : the ``ray`` module, connected.
    num_cpus : CPUs each task reserves; the cell runs with as many torch threads.
    memory_gib : memory each task reserves, GiB.
    """

    max_in_flight = 1 << 30  # Ray queues the tasks its nodes cannot take yet

    def __init__(self, ray: Any, num_cpus: int, memory_gib: float) -> None:
        self._ray = ray
        self.num_cpus = num_cpus
        self._task = ray.remote(_cell_task).options(
            num_cpus=num_cpus, memory=int(memory_gib * GIB), max_retries=0,
            retry_exceptions=False)
        self._refs: list[Any] = []

    def submit(self, cell: BenchmarkCell) -> Future[CellOutcome]:
        ref = self._task.remote(cell, __version__)
        self._refs.append(ref)
        return ref.future()

    def cancel(self) -> None:
        for ref in self._refs:
            try:
                self._ray.cancel(ref, force=True)
            except Exception:  # finished already, or the cluster is gone: nothing to stop
                pass


def run_benchmark_on_ray(
    address: str,
    dataset_root: str | Path,
    categories: Sequence[str],
    detectors: Sequence[str],
    out_dir: str | Path,
    detector_params: dict[str, Any] | None = None,
    *,
    param_sets: Sequence[Mapping[str, Any]] | None = None,
    seeds: Sequence[int] = (0,),
    fpr_limit: float | None = None,
    alpha: float = DEFAULT_ALPHA,
    resume: bool = False,
    retries: int = 1,
    n_threads: int | None = None,
    memory_gib: float = DEFAULT_CELL_MEMORY_GIB,
    tile_size: int | None = None,
    tile_overlap: float = DEFAULT_TILE_OVERLAP,
    on_result: Callable[[dict[str, Any]], None] | None = None,
    on_missing: Callable[[str, str], None] | None = None,
    on_failed: Callable[[dict[str, Any]], None] | None = None,
    progress: ProgressCallback | None = None,
) -> dict[str, Any]:
    """:func:`~defectmap.evaluate.run_benchmark` with each cell a Ray task.

    Parameters are those of :func:`~defectmap.evaluate.run_benchmark`, plus:

    address : ``auto``, ``local``, ``HOST:PORT`` or ``ray://HOST:PORT`` (see
        :mod:`defectmap.distributed.cluster`).
    n_threads : CPUs each cell reserves and its torch threads; default: the thread count of a
        local run on this machine (:func:`~defectmap.threads.default_threads`), so the metrics
        equal a local run's to the last digit.
    memory_gib : memory each cell reserves, GiB.

    ``dataset_root`` and ``out_dir`` must be the same paths on every node (shared storage).
    Progress reports cells only: the fits run on the workers.
    """
    require_ray()  # before any long work
    check_shared_path(dataset_root, "the dataset root")
    check_shared_path(out_dir, "the output folder")
    threads = default_threads() if n_threads is None else n_threads
    with ray_session(address) as ray:
        check_fits_a_node(ray, threads, "each cell")
        return run_benchmark(dataset_root, categories, detectors, out_dir,
                             detector_params=detector_params, fpr_limit=fpr_limit,
                             alpha=alpha, on_result=on_result, on_missing=on_missing,
                             progress=progress, param_sets=param_sets, seeds=seeds,
                             resume=resume, retries=retries, n_threads=threads,
                             executor=RayExecutor(ray, threads, memory_gib),
                             on_failed=on_failed, tile_size=tile_size,
                             tile_overlap=tile_overlap)
