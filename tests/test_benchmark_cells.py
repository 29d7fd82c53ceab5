"""Benchmark cells and the streaming result writer, without Ray: the grid, the runner's
retries and failures, resume, and the files a results folder holds."""

from __future__ import annotations

import csv
import json
import warnings
from concurrent.futures import Future
from pathlib import Path

import numpy as np
import pytest

from defectmap.calibrate import CalibrationWarning
from defectmap.errors import DefectmapError, ImageReadError, innermost, one_line
from defectmap.evaluate.benchmark import (
    CELL_FILE,
    BenchmarkCell,
    CellOutcome,
    grid_from_items,
    plan_cells,
    run_benchmark,
    run_cells,
)
from defectmap.evaluate.predict import ResultRecord, ResultWriter
from defectmap.files import write_json

SIZE = 64


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from defectmap.data.synth import make_synthetic_dataset

    root = tmp_path_factory.mktemp("tiny")
    make_synthetic_dataset(root, category="tiny", n_train=12, n_test=6, size=SIZE, seed=4)
    return root


def test_grid_is_the_product_of_repeated_keys() -> None:
    sets = grid_from_items(["coreset_ratio=0.01", "input_size=96", "coreset_ratio=0.1",
                            "augment_rotations=false", "backbone=resnet18"])
    assert sets == [
        {"coreset_ratio": 0.01, "input_size": 96, "augment_rotations": False,
         "backbone": "resnet18"},
        {"coreset_ratio": 0.1, "input_size": 96, "augment_rotations": False,
         "backbone": "resnet18"},
    ]
    with pytest.raises(DefectmapError, match="expected KEY=VALUE"):
        grid_from_items(["coreset_ratio"])


def test_cells_are_named_by_their_grid_point_and_seed(tiny_root: Path, tmp_path: Path) -> None:
    cells, missing = plan_cells(tiny_root, ["tiny", "absent"], ["patchcore", "padim"],
                                tmp_path, {"input_size": SIZE},
                                [{"n_features": 8}, {"n_features": 16}], seeds=[0, 3])
    assert missing == [{"category": "absent", "reason": "not found on disk"}]
    assert len(cells) == 2 * 2 * 2
    assert [c.column for c in cells[:4]] == [
        "patchcore,n_features=8", "patchcore,n_features=8,seed=3",
        "patchcore,n_features=16", "patchcore,n_features=16,seed=3"]
    assert cells[0].params == (("input_size", SIZE), ("n_features", 8))
    assert Path(cells[1].out_dir) == tmp_path.absolute() / "tiny" / "patchcore,n_features=8,seed=3"
    with pytest.raises(DefectmapError, match="no_such_key"):  # checked before any fit
        plan_cells(tiny_root, ["tiny"], ["patchcore"], tmp_path, None, [{"no_such_key": 1}])


class FlakyExecutor:
    """Cells as real futures; a named cell fails its first ``n_failures`` attempts."""

    max_in_flight = 2

    def __init__(self, n_failures: dict[str, int]) -> None:
        self.n_failures = dict(n_failures)
        self.submitted: list[str] = []

    def submit(self, cell: BenchmarkCell) -> Future[CellOutcome]:
        self.submitted.append(cell.column)
        future: Future[CellOutcome] = Future()
        if self.n_failures.get(cell.column, 0) > 0:
            self.n_failures[cell.column] -= 1
            future.set_exception(RuntimeError(f"worker of {cell.column} died\nmore text"))
        else:
            future.set_result(CellOutcome({"category": cell.category, "column": cell.column},
                                          [f"note from {cell.column}"]))
        return future

    def cancel(self) -> None:
        pass


def _cells(n: int) -> list[BenchmarkCell]:
    return [BenchmarkCell("/d", "c", "patchcore", (), (), seed, 0.1, None, f"/o/{seed}")
            for seed in range(n)]


def test_a_failed_cell_is_retried_once_then_reported_and_the_others_go_on() -> None:
    cells = _cells(3)  # columns patchcore, patchcore,seed=1, patchcore,seed=2
    executor = FlakyExecutor({"patchcore,seed=1": 1, "patchcore,seed=2": 5})
    calls: list[tuple[str, int, int | None]] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rows, failed = run_cells(cells, executor, retries=1,
                                 progress=lambda *call: calls.append(call))
    assert [r["column"] for r in rows] == ["patchcore", "patchcore,seed=1"]
    assert failed == [{"category": "c", "detector": "patchcore", "column": "patchcore,seed=2",
                       "seed": 2, "params": {}, "attempts": 2,
                       "error": "RuntimeError: worker of patchcore,seed=2 died"}]
    assert executor.submitted.count("patchcore,seed=1") == 2  # failed once, then passed
    assert executor.submitted.count("patchcore,seed=2") == 2  # retried once only
    assert {str(w.message) for w in caught} == {"note from patchcore",
                                                "note from patchcore,seed=1"}
    assert calls[0] == ("benchmark cells", 0, 3) and calls[-1] == ("benchmark cells", 3, 3)
    assert [done for _, done, _ in calls] == sorted(done for _, done, _ in calls)


def test_ray_wrapped_errors_are_reported_by_their_own_message() -> None:
    class TaskError(ImageReadError):  # how Ray wraps a task's error: a subclass + .cause
        def __init__(self, cause: BaseException) -> None:
            super().__init__("ray::_cell_task() (pid=1, ip=10.0.0.1)\n  File ...")
            self.cause = cause

    original = ImageReadError("a/000.png: cannot decode image, truncated or corrupt")
    original.__cause__ = OSError("image file is truncated")
    assert innermost(TaskError(original)) is original
    assert one_line(TaskError(original)) == f"ImageReadError: {original}"
    assert one_line(KeyError("x")) == "KeyError: 'x'"


def test_resume_reuses_only_cells_written_for_the_same_settings(
    tiny_root: Path, tmp_path: Path
) -> None:
    options = {"detector_params": {"input_size": SIZE}, "alpha": 0.1, "n_threads": 2}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CalibrationWarning)
        first = run_benchmark(tiny_root, ["tiny"], ["patchcore"], tmp_path, **options)
        model_json = tmp_path / "tiny" / "patchcore" / "model" / "model.json"
        written = model_json.stat().st_mtime_ns
        again = run_benchmark(tiny_root, ["tiny"], ["patchcore"], tmp_path, resume=True,
                              **options)
        assert again["resumed"] == 1 and model_json.stat().st_mtime_ns == written
        assert again["rows"] == first["rows"]
        stored = json.loads((tmp_path / "tiny" / "patchcore" / CELL_FILE).read_text())
        assert stored["cell"]["alpha"] == 0.1 and stored["metrics"] == first["rows"][0]
        other = run_benchmark(tiny_root, ["tiny"], ["patchcore"], tmp_path, resume=True,
                              **{**options, "alpha": 0.2})  # another cell: fitted again
    assert other["resumed"] == 0 and model_json.stat().st_mtime_ns != written
    table = json.loads((tmp_path / "table.json").read_text())
    assert table["pairs"][0]["calibrated"] == other["rows"][0]["calibrated"]


def _records(n: int) -> list[ResultRecord]:
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        row = {"image": f"in/{i}.png", "score": float(rng.normal()),
               "normalized_score": None if i == 1 else 0.25 * i,
               "decision": "defect" if i % 2 else "ok", "p_value": 1 / (i + 2),
               "decision_rule": "p_value",
               "n_regions": i, "map": f"maps/{i}.tiff", "overlay": None,
               "regions": [{"bbox": [0, 0, i, i], "area": i}] if i else []}
        out.append(ResultRecord(row, rng.random((3, 4), dtype=np.float32), None))
    return out


@pytest.mark.parametrize("n", [0, 1, 5])
def test_writer_streams_the_same_json_text_as_one_dump(tmp_path: Path, n: int) -> None:
    folder = tmp_path / "out"
    folder.mkdir()
    writer = ResultWriter(folder, {"model_hash": "ab12", "detector": "patchcore"},
                          parquet=True, n_head=2)
    for record in _records(n):
        writer.write(record)
    summary = writer.close()
    assert (summary.n_images, summary.n_defect, len(summary.head)) == (n, n // 2, min(n, 2))
    text = (folder / "results.json").read_text()
    payload = json.loads(text)
    write_json(tmp_path / "reference.json", payload)  # the project's one JSON writer
    assert text == (tmp_path / "reference.json").read_text()
    assert payload["results"] == [r.row for r in _records(n)]
    assert sorted(p.name for p in folder.iterdir()) == (
        ["maps"] if n else []) + ["results.csv", "results.json", "results.parquet"]

    import pyarrow.parquet as pq

    with (folder / "results.csv").open(newline="") as handle:
        csv_rows = list(csv.DictReader(handle))
    table = pq.read_table(folder / "results.parquet").to_pylist()
    assert len(table) == len(csv_rows) == n
    for parquet_row, csv_row in zip(table, csv_rows, strict=True):
        assert parquet_row["score"] == float(csv_row["score"])  # both bit-exact
        assert parquet_row["normalized_score"] == (
            float(csv_row["normalized_score"]) if csv_row["normalized_score"] else None)
        assert parquet_row["image"] == csv_row["image"]
        assert parquet_row["overlay"] is None and csv_row["overlay"] == ""
