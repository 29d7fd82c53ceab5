"""The benchmark runner: every (category, detector, parameter set, seed) cell, fitted and
evaluated, then the table.

A benchmark is a grid of :class:`BenchmarkCell` s (:func:`plan_cells`). :func:`run_cell` fits
and evaluates one cell into its own folder and writes ``cell.json`` last, so a folder with a
``cell.json`` holds a complete result (``resume`` skips it). :func:`run_cells` hands the cells
to an executor, retries a failed cell once and goes on with the others; a cell that fails
twice is reported, not fatal. The executor is where the cells run: :class:`LocalExecutor`
runs them one after the other in this process; :mod:`defectmap.distributed` runs each as a
Ray task. Both call :func:`run_cell`, with the cell's thread count
(:mod:`defectmap.threads`), so both give the same metrics to the last digit.

The table itself (Markdown, CSV, JSON, rich) is :mod:`defectmap.report.table`.
"""

from __future__ import annotations

import itertools
import json
import re
import warnings
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from defectmap.constants import DEFAULT_ALPHA, DEFAULT_TILE_OVERLAP
from defectmap.errors import DatasetError, DefectmapError, DefectmapWarning, one_line
from defectmap.files import write_json
from defectmap.progress import ProgressCallback

__all__ = ["CELL_FILE", "BenchmarkCell", "CellExecutor", "CellOutcome", "LocalExecutor",
           "grid_from_items", "plan_cells", "run_benchmark", "run_cell", "run_cells"]

_TASK = "benchmark cells"
#: Written last into a cell's folder: the cell and its metrics.
CELL_FILE = "cell.json"
_UNSAFE = re.compile(r"[^A-Za-z0-9._=,+-]")


@dataclass(frozen=True)
class BenchmarkCell:
    """One fit-and-evaluate job of a benchmark grid: plain data, picklable, sent to workers.

    Attributes
    ----------
    dataset_root : absolute path of the dataset root (every worker must reach it).
    category, detector : the category folder and the registered detector name.
    params : the detector's constructor parameters: the common ones plus ``grid``.
    grid : the parameters of this cell's grid point (also in ``params``); they name the cell.
    seed : ``random_state`` of the validation split and the detector.
    alpha : target false-alarm rate of the calibrated threshold.
    fpr_limit : AU-PRO integration limit (None: the protocol's default).
    out_dir : the cell's folder: ``model/``, ``eval/`` and ``cell.json``.
    n_threads : torch/faiss threads of the fit and evaluation (None: the library default).
    tile_size, tile_overlap : tiling mode (:mod:`defectmap.tiling`) of every cell's model:
        tiles of ``tile_size`` native pixels overlapping by ``tile_overlap`` (None: no tiles).
    """

    dataset_root: str
    category: str
    detector: str
    params: tuple[tuple[str, Any], ...]
    grid: tuple[tuple[str, Any], ...]
    seed: int
    alpha: float
    fpr_limit: float | None
    out_dir: str
    n_threads: int | None = None
    tile_size: int | None = None
    tile_overlap: float = DEFAULT_TILE_OVERLAP

    @property
    def column(self) -> str:
        """The table column and folder name: ``detector[,KEY=VALUE...][,seed=N]``.

        Examples
        --------
        >>> cell = BenchmarkCell("/d", "bottle", "patchcore", (("coreset_ratio", 0.1),),
        ...                      (("coreset_ratio", 0.1),), 1, 0.01, None, "/o")
        >>> cell.column
        'patchcore,coreset_ratio=0.1,seed=1'
        """
        parts = [self.detector, *(f"{k}={v}" for k, v in self.grid)]
        if self.seed != 0:
            parts.append(f"seed={self.seed}")
        return ",".join(parts)

    def key(self) -> dict[str, Any]:
        """What determines the cell's result (a stored result is reused only if it matches).

        Without tiling the tile fields are left out, so results stored before tiling
        existed still match.
        """
        skip = {"out_dir", "n_threads"} | ({"tile_size", "tile_overlap"}
                                           if self.tile_size is None else set())
        return {k: v for k, v in asdict(self).items() if k not in skip}


@dataclass(frozen=True)
class CellOutcome:
    """What a finished cell sends back: its metrics and the warnings it raised."""

    metrics: dict[str, Any]
    warnings: list[str] = field(default_factory=list)


class CellExecutor(Protocol):
    """Where cells run. ``submit`` returns a future of a :class:`CellOutcome`."""

    #: How many submitted cells may be unfinished at once.
    max_in_flight: int

    def submit(self, cell: BenchmarkCell) -> Future[CellOutcome]:
        """Start ``cell``; its future raises what the cell raised."""
        ...

    def cancel(self) -> None:
        """Stop every unfinished cell (after Ctrl-C or an error in the runner)."""
        ...


class LocalExecutor:
    """Runs each cell in this process at submission, reporting its nested progress."""

    max_in_flight = 1

    def __init__(self, progress: ProgressCallback | None = None) -> None:
        self.progress = progress

    def submit(self, cell: BenchmarkCell) -> Future[CellOutcome]:
        future: Future[CellOutcome] = Future()
        try:
            future.set_result(CellOutcome(run_cell(cell, progress=self.progress)))
        except Exception as exc:  # the runner reports it; KeyboardInterrupt goes through
            future.set_exception(exc)
        return future

    def cancel(self) -> None:
        """Nothing runs in the background."""


def _typed(text: str) -> Any:
    lowered = text.strip().lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered in ("none", "null"):
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def grid_from_items(items: Sequence[str]) -> list[dict[str, Any]]:
    """Parameter sets from ``KEY=VALUE`` items: a key given several times is a grid axis.

    Values become ``true``/``false``, ``none``, an int, a float, or stay text. The sets are
    the product of the axes, in the order the keys first appear.

    Raises
    ------
    DefectmapError
        An item is not ``KEY=VALUE``.

    Examples
    --------
    >>> grid_from_items(["coreset_ratio=0.01", "coreset_ratio=0.1", "input_size=128"])
    [{'coreset_ratio': 0.01, 'input_size': 128}, {'coreset_ratio': 0.1, 'input_size': 128}]
    >>> grid_from_items([])
    [{}]
    """
    axes: dict[str, list[Any]] = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key or not text.strip():
            raise DefectmapError(f"--param {item!r}: expected KEY=VALUE")
        values = axes.setdefault(key, [])
        value = _typed(text)
        if value not in values:
            values.append(value)
    return [dict(zip(axes, point, strict=True)) for point in itertools.product(*axes.values())]


def plan_cells(
    dataset_root: str | Path,
    categories: Sequence[str],
    detectors: Sequence[str],
    out_dir: str | Path,
    detector_params: Mapping[str, Any] | None = None,
    param_sets: Sequence[Mapping[str, Any]] | None = None,
    seeds: Sequence[int] = (0,),
    alpha: float = DEFAULT_ALPHA,
    fpr_limit: float | None = None,
    n_threads: int | None = None,
    *,
    tile_size: int | None = None,
    tile_overlap: float = DEFAULT_TILE_OVERLAP,
) -> tuple[list[BenchmarkCell], list[dict[str, str]]]:
    """The cells of a benchmark, category by category, and the categories that are missing.

    Every detector and parameter set is checked first (one clear error before any long
    work); a category that is absent or unreadable is listed in ``missing``, not fatal.
    Cells are ordered category, detector, parameter set, seed; a cell's folder is
    ``out_dir/<category>/<column>`` (see :attr:`BenchmarkCell.column`).

    Returns
    -------
    cells : list of BenchmarkCell
    missing : list of ``{"category", "reason"}``
    """
    from defectmap.data.layouts import load_category
    from defectmap.detectors import build_detector
    from defectmap.tiling import check_tiling

    if tile_size is not None:
        check_tiling(tile_size, tile_overlap)
    sets = [dict(p) for p in (param_sets or [{}])]
    common = dict(detector_params or {})
    for name in detectors:
        for grid in sets:
            build_detector(name, {**common, **grid})
    if len(set(seeds)) != len(seeds) or not seeds:
        raise DefectmapError(f"seeds must be distinct and at least one, got {list(seeds)}")
    root = Path(dataset_root).absolute()
    if not root.is_dir():
        raise DatasetError(f"{root}: dataset root does not exist or is not a folder")
    out = Path(out_dir).absolute()
    cells: list[BenchmarkCell] = []
    missing: list[dict[str, str]] = []
    for category in categories:
        try:
            load_category(root, category)
        except DefectmapError as exc:
            reason = "not found on disk" if not (root / category).exists() else str(exc)
            missing.append({"category": category, "reason": reason})
            continue
        for name, grid, seed in itertools.product(detectors, sets, seeds):
            cell = BenchmarkCell(str(root), category, name,
                                 tuple({**common, **grid}.items()), tuple(grid.items()),
                                 int(seed), float(alpha), fpr_limit, "", n_threads,
                                 tile_size, float(tile_overlap))
            folder = out / category / _UNSAFE.sub("_", cell.column)
            cells.append(BenchmarkCell(**{**asdict(cell), "out_dir": str(folder)}))
    return cells, missing


def run_cell(cell: BenchmarkCell, progress: ProgressCallback | None = None) -> dict[str, Any]:
    """Fit and evaluate one cell into ``cell.out_dir``; return its metrics.

    The metrics are those of :func:`~defectmap.evaluate.evaluate_model` plus ``column``,
    ``seed``, ``params``, ``n_threads`` and ``report`` (the path of ``report.html``).
    ``cell.json`` (the cell's :meth:`~BenchmarkCell.key` and the metrics) is written last.
    """
    from defectmap.data.layouts import load_category
    from defectmap.evaluate.protocol import evaluate_model
    from defectmap.pipeline import train_model
    from defectmap.threads import compute_threads

    folder = Path(cell.out_dir)
    data = load_category(cell.dataset_root, cell.category)
    with compute_threads(cell.n_threads):
        model = train_model(data, folder / "model", detector=cell.detector,
                            detector_params=dict(cell.params), random_state=cell.seed,
                            alpha=cell.alpha, tile_size=cell.tile_size,
                            tile_overlap=cell.tile_overlap, progress=progress)
        metrics = evaluate_model(model, data, folder / "eval", fpr_limit=cell.fpr_limit,
                                 progress=progress)
    metrics.update(column=cell.column, seed=cell.seed, params=dict(cell.params),
                   n_threads=cell.n_threads, report=str(folder / "eval" / "report.html"))
    write_json(folder / CELL_FILE, {"cell": cell.key(), "metrics": metrics})
    return metrics


def stored_result(cell: BenchmarkCell) -> dict[str, Any] | None:
    """The metrics in the cell's ``cell.json`` when it was written for this very cell."""
    path = Path(cell.out_dir) / CELL_FILE
    try:
        stored = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    expected = json.loads(json.dumps(cell.key()))  # tuples as lists, as stored
    if not isinstance(stored, dict) or stored.get("cell") != expected:
        return None
    metrics = stored.get("metrics")
    return metrics if isinstance(metrics, dict) else None


def run_cells(
    cells: Sequence[BenchmarkCell],
    executor: CellExecutor,
    retries: int = 1,
    on_result: Callable[[dict[str, Any]], None] | None = None,
    on_failed: Callable[[dict[str, Any]], None] | None = None,
    progress: ProgressCallback | None = None,
    done: int = 0,
    total: int | None = None,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Run ``cells`` on ``executor``; retry each failed one ``retries`` times; go on.

    Parameters
    ----------
    cells : the cells to run.
    executor : a :class:`CellExecutor`.
    retries : further attempts for a cell that raised (or whose worker died).
    on_result, on_failed : called with each finished cell's metrics, and with each cell's
        failure record, as they come.
    progress : reports ``("benchmark cells", done, total)``.
    done, total : cells already accounted for (skipped, resumed) and the benchmark's total
        (default ``done + len(cells)``).

    Returns
    -------
    rows : the metrics of the cells that finished, in the order of ``cells``.
    failed : ``{"category", "detector", "column", "seed", "params", "error", "attempts"}``
        for each cell that failed every attempt, in the order of ``cells``.
    """
    total = done + len(cells) if total is None else total
    if progress is not None:
        progress(_TASK, 0, total)
        if done:
            progress(_TASK, done, total)
    queue = deque(range(len(cells)))
    attempts = [0] * len(cells)
    pending: dict[Future[CellOutcome], int] = {}
    rows: dict[int, dict[str, Any]] = {}
    failed: dict[int, dict[str, Any]] = {}
    try:
        while queue or pending:
            while queue and len(pending) < executor.max_in_flight:
                index = queue.popleft()
                attempts[index] += 1
                pending[executor.submit(cells[index])] = index
            finished, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in sorted(finished, key=pending.__getitem__):
                index = pending.pop(future)
                exc = future.exception()
                if exc is not None and attempts[index] <= retries:
                    queue.appendleft(index)
                    continue
                if exc is None:
                    outcome = future.result()
                    for text in outcome.warnings:
                        warnings.warn(text, DefectmapWarning, stacklevel=2)
                    rows[index] = outcome.metrics
                    if on_result is not None:
                        on_result(outcome.metrics)
                else:
                    cell = cells[index]
                    failed[index] = {"category": cell.category, "detector": cell.detector,
                                     "column": cell.column, "seed": cell.seed,
                                     "params": dict(cell.params),
                                     "error": one_line(exc),
                                     "attempts": attempts[index]}
                    if on_failed is not None:
                        on_failed(failed[index])
                done += 1
                if progress is not None:
                    progress(_TASK, done, total)
    except BaseException:
        executor.cancel()
        raise
    return [rows[i] for i in sorted(rows)], [failed[i] for i in sorted(failed)]


def _columns(cells: Iterable[BenchmarkCell], detectors: Sequence[str]) -> list[str]:
    columns = list(dict.fromkeys(c.column for c in cells))
    return columns or list(detectors)


def run_benchmark(
    dataset_root: str | Path,
    categories: Sequence[str],
    detectors: Sequence[str],
    out_dir: str | Path,
    detector_params: dict[str, Any] | None = None,
    fpr_limit: float | None = None,
    random_state: int = 0,
    alpha: float = DEFAULT_ALPHA,
    on_result: Callable[[dict[str, Any]], None] | None = None,
    on_missing: Callable[[str, str], None] | None = None,
    progress: ProgressCallback | None = None,
    *,
    param_sets: Sequence[Mapping[str, Any]] | None = None,
    seeds: Sequence[int] | None = None,
    resume: bool = False,
    retries: int = 1,
    n_threads: int | None = None,
    executor: CellExecutor | None = None,
    on_failed: Callable[[dict[str, Any]], None] | None = None,
    tile_size: int | None = None,
    tile_overlap: float = DEFAULT_TILE_OVERLAP,
) -> dict[str, Any]:
    """Fit and evaluate every (category, detector, parameter set, seed) cell; write the table.

    Parameters
    ----------
    dataset_root : str or Path
        Folder holding one sub-folder per category.
    categories : sequence of str
        Categories to run; those missing on disk (or unreadable) are reported in
        ``missing`` and skipped, not fatal.
    detectors : sequence of str
        Registered detector names.
    out_dir : str or Path
        ``<out>/<category>/<column>/`` per cell (``model/``, ``eval/``, ``cell.json``; the
        column is the detector name, plus the cell's parameter set and a seed other than 0:
        :attr:`BenchmarkCell.column`); ``table.md``, ``table.csv``, ``table.json``.
    detector_params : dict or None
        Constructor parameters of every cell (e.g. ``input_size``).
    fpr_limit : AU-PRO integration limit (None: the protocol's default).
    random_state : the seed when ``seeds`` is not given.
    alpha : target false-alarm rate of each model's calibrated image threshold.
    on_result, on_missing, on_failed : callable or None
        Called with each finished cell's metrics, each skipped category (category,
        reason) and each failed cell's record: lets the CLI print as it goes.
    progress : ProgressCallback or None
        Reports ``("benchmark cells", done, cells)`` and, with the local executor, every
        fit and evaluation nested in it (see :mod:`defectmap.progress`).
    param_sets : sequence of dict or None
        The grid's parameter sets (see :func:`grid_from_items`), each added to
        ``detector_params``; None: one set, the common parameters alone.
    seeds : sequence of int or None
        Seeds of the grid (default ``[random_state]``).
    resume : bool
        Reuse the result of every cell whose ``cell.json`` was written for the same cell
        (same dataset, category, detector, parameters, seed, alpha and FPR limit).
    retries : int
        Further attempts of a failed cell before it is reported as failed.
    n_threads : int or None
        Torch/faiss threads of each cell (None: :func:`~defectmap.threads.default_threads`,
        recorded in each row).
    executor : CellExecutor or None
        Where the cells run (default: :class:`LocalExecutor`, one after the other here).
    tile_size, tile_overlap : tiling mode of every cell's model (see
        :func:`~defectmap.pipeline.train_model`); None: whole images.

    Returns
    -------
    dict
        ``rows``: one metrics dict per evaluated cell (plus ``column``, ``report``...),
        ``missing``: ``[{"category", "reason"}]``, ``failed``: the cells that failed every
        attempt (:func:`run_cells`), ``resumed``: how many rows came from earlier runs,
        ``detectors``: the table's columns.
    """
    from defectmap.report.table import write_tables
    from defectmap.threads import default_threads

    if n_threads is None:
        n_threads = default_threads()
    cells, missing = plan_cells(dataset_root, categories, detectors, out_dir,
                                detector_params, param_sets,
                                list(seeds) if seeds is not None else [random_state],
                                alpha, fpr_limit, n_threads, tile_size=tile_size,
                                tile_overlap=tile_overlap)
    for item in missing:
        if on_missing is not None:
            on_missing(item["category"], item["reason"])
    n_cells = len(cells) + len(missing) * len(detectors) * len(param_sets or [{}]) \
        * len(seeds or [random_state])
    stored = [stored_result(c) if resume else None for c in cells]
    earlier = {i: m for i, m in enumerate(stored) if m is not None}
    todo = [i for i in range(len(cells)) if i not in earlier]
    for i in sorted(earlier):
        if on_result is not None:
            on_result(earlier[i])
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    new_rows, failed = run_cells([cells[i] for i in todo], executor or LocalExecutor(progress),
                                 retries, on_result, on_failed, progress,
                                 done=n_cells - len(todo), total=n_cells)
    finished = {(m["category"], m["column"]): m for m in new_rows}
    rows = [earlier[i] if i in earlier else finished.get((c.category, c.column))
            for i, c in enumerate(cells)]
    result = {"rows": [r for r in rows if r is not None], "missing": missing,
              "failed": failed, "resumed": len(earlier),
              "detectors": _columns(cells, detectors)}
    write_tables(result, out_dir)
    return result
