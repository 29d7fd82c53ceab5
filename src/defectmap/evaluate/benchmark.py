"""The benchmark runner: fit and evaluate every (category, detector) pair, write the table.

The table itself (Markdown, CSV, JSON, rich) is :mod:`defectmap.report.table`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from defectmap.constants import DEFAULT_ALPHA
from defectmap.errors import DatasetError, DefectmapError
from defectmap.evaluate.protocol import evaluate_model
from defectmap.progress import ProgressCallback

__all__ = ["run_benchmark"]

_TASK = "benchmark (category, detector) pairs"


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
) -> dict[str, Any]:
    """Fit and evaluate every (category, detector) pair; write the table files.

    Parameters
    ----------
    dataset_root : str or Path
        Folder holding one sub-folder per category (MVTec AD layout).
    categories : sequence of str
        Categories to run; those missing on disk (or unreadable) are reported in
        ``missing`` and skipped, not fatal.
    detectors : sequence of str
        Registered detector names.
    out_dir : str or Path
        ``<out>/<category>/<detector>/model`` (the trained model) and ``.../eval``
        (metrics, maps, report) per pair; ``table.md``, ``table.csv``, ``table.json``.
    detector_params : dict or None
        Constructor parameters passed to every detector (e.g. ``input_size``).
    alpha : float
        Target false-alarm rate of each model's calibrated image threshold.
    on_result, on_missing : callable or None
        Called after each pair with its metrics, and for each skipped category with
        (category, reason): lets the CLI print as it goes.
    progress : ProgressCallback or None
        Reports ``("benchmark", pairs done, pairs)`` and, nested in it, every fit and
        evaluation (see :mod:`defectmap.progress`).

    Returns
    -------
    dict
        ``rows``: one metrics dict per evaluated pair (plus ``report`` path),
        ``missing``: ``[{"category", "reason"}]``, ``detectors``: the detector names.
    """
    from defectmap.data.layouts import load_category
    from defectmap.detectors import build_detector
    from defectmap.pipeline import train_model
    from defectmap.report.table import write_tables

    for name in detectors:  # every name and parameter checked before the first long fit
        build_detector(name, detector_params)
    root = Path(dataset_root)
    if not root.is_dir():
        raise DatasetError(f"{root}: dataset root does not exist or is not a folder")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    rows: list[dict[str, Any]] = []
    missing: list[dict[str, str]] = []
    n_pairs, done = len(categories) * len(detectors), 0
    if progress is not None:
        progress(_TASK, 0, n_pairs)
    for category in categories:
        try:
            data = load_category(root, category)
        except DefectmapError as exc:
            reason = "not found on disk" if not (root / category).exists() else str(exc)
            missing.append({"category": category, "reason": reason})
            if on_missing is not None:
                on_missing(category, reason)
            done += len(detectors)
            if progress is not None:
                progress(_TASK, done, n_pairs)
            continue
        for detector in detectors:
            pair = out / category / detector
            model = train_model(data, pair / "model", detector=detector,
                                detector_params=dict(detector_params or {}),
                                random_state=random_state, alpha=alpha, progress=progress)
            metrics = evaluate_model(model, data, pair / "eval", fpr_limit=fpr_limit,
                                     progress=progress)
            metrics["report"] = str(pair / "eval" / "report.html")
            rows.append(metrics)
            if on_result is not None:
                on_result(metrics)
            done += 1
            if progress is not None:
                progress(_TASK, done, n_pairs)
    result = {"rows": rows, "missing": missing, "detectors": list(detectors)}
    write_tables(result, out)
    return result
