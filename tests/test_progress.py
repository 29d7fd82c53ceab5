"""Progress: library cores report (task, done, total) to a callback and draw nothing; the CLI
draws every task in one live display and turns Ctrl-C into one line and exit code 130."""

from __future__ import annotations

import io
import warnings
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

from defectmap.calibrate import CalibrationWarning
from defectmap.cli._common import run_app
from defectmap.cli.display import ProgressDisplay
from defectmap.data.mvtec import load_category
from defectmap.detectors import create_detector, list_detectors
from defectmap.progress import track

SIZE = 64


class Recorder:
    """A progress callback that keeps every call, and which tasks were open at each one."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int, int | None]] = []
        self.open: list[str] = []
        self.open_during: dict[str, set[str]] = defaultdict(set)

    def __call__(self, task: str, done: int, total: int | None) -> None:
        self.calls.append((task, done, total))
        if done == 0 and task not in self.open:
            self.open.append(task)
        self.open_during[task] |= set(self.open) - {task}
        if total is not None and done >= total:
            self.open.remove(task)

    def runs(self, task: str) -> list[list[tuple[int, int | None]]]:
        """The (done, total) sequences of each run of ``task``."""
        out: list[list[tuple[int, int | None]]] = []
        for name, done, total in self.calls:
            if name != task:
                continue
            if done == 0:
                out.append([])
            out[-1].append((done, total))
        return out


def test_track_ends_every_task_with_done_equal_total() -> None:
    rec = Recorder()
    assert list(track(iter("abc"), "unknown length", rec)) == ["a", "b", "c"]
    assert rec.calls == [("unknown length", 0, None), ("unknown length", 1, None),
                         ("unknown length", 2, None), ("unknown length", 3, None),
                         ("unknown length", 3, 3)]
    assert rec.open == []
    assert list(track([1, 2], "silent", None)) == [1, 2]  # no callback: nothing reported


@pytest.mark.parametrize("name", list_detectors())
def test_fit_and_predict_report_images_done(name: str, synthetic_root: Path) -> None:
    data = load_category(synthetic_root, "synthetic")
    train = [s.path for s in data.train[:5]]
    rec = Recorder()
    detector = create_detector(name, input_size=SIZE).fit(train, progress=rec)
    (fit_task,) = {task for task, _, _ in rec.calls}
    assert rec.runs(fit_task) == [[(i, 5) for i in range(6)]]  # batch 1: one call per image
    rec.calls.clear()
    detector.predict([s.path for s in data.test[:5]], batch_size=2, progress=rec)
    assert rec.calls == [(f"Scoring with {name}", done, 5) for done in (0, 2, 4, 5)]


def test_benchmark_reports_nested_tasks_and_prints_nothing(
    synthetic_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from defectmap.evaluate import run_benchmark

    rec = Recorder()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CalibrationWarning)  # 20 out-of-fold scores
        result = run_benchmark(synthetic_root, ["synthetic", "absent"], ["patchcore"],
                               tmp_path / "bench", detector_params={"input_size": SIZE},
                               progress=rec)
    assert capsys.readouterr() == ("", "")  # the library draws and prints nothing
    assert len(result["rows"]) == 1 and result["missing"][0]["category"] == "absent"
    outer = "benchmark cells"
    assert rec.runs(outer) == [[(0, 2), (1, 2), (2, 2)]]
    # 24 good training images, cross-fitted: one feature extraction, 5 fold fits; 16 test
    assert rec.runs("PatchCore features") == [[(i, 24) for i in range(25)]]
    assert rec.runs("calibrating on 5 folds") == [[(i, 5) for i in range(6)]]
    scoring = rec.runs("Scoring with patchcore")
    assert [run[-1] for run in scoring] == [(16, 16)]  # the test images
    assert rec.runs("reading masks")[0][-1] == (16, 16)
    assert rec.runs("writing maps")[0][-1] == (16, 16)
    for task in ("PatchCore features", "calibrating on 5 folds", "Scoring with patchcore",
                 "writing maps"):
        assert rec.open_during[task] == {outer}  # nested inside the benchmark, one level
    assert rec.open == []  # every task finished


def _terminal() -> tuple[Console, io.StringIO]:
    buffer = io.StringIO()
    return Console(file=buffer, force_terminal=True, width=100), buffer


def test_display_stacks_nested_tasks_and_removes_finished_ones() -> None:
    console, buffer = _terminal()
    with ProgressDisplay(console) as display:
        display("benchmark", 0, 2)
        display("fitting [bottle]", 0, 3)  # a path-like name with brackets: not markup
        display("fitting [bottle]", 2, 3)
        assert display.active == ["benchmark", "fitting [bottle]"]
        display._progress.refresh()
        shown = buffer.getvalue()
        assert "benchmark" in shown and "fitting [bottle]" in shown and "2/3" in shown
        display("fitting [bottle]", 3, 3)
        assert display.active == ["benchmark"]
        display("download", 0, None)  # unknown length ...
        display("download", 7, None)
        display("download", 7, 7)  # ... ends with done == total
        assert display.active == ["benchmark"]
        assert display._progress.live.is_started
    assert not display._progress.live.is_started  # closed: no refresh thread left


def test_display_draws_nothing_off_a_terminal() -> None:
    buffer = io.StringIO()
    with ProgressDisplay(Console(file=buffer, force_terminal=False)) as display:
        display("task", 0, 2)
        display("task", 2, 2)
    assert buffer.getvalue() == ""


def test_ctrl_c_prints_one_line_and_exits_130(
    synthetic_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import defectmap.data.synth as synth

    def interrupted(*args: object, **kwargs: object) -> tuple[None, np.ndarray, np.ndarray]:
        raise KeyboardInterrupt  # as if Ctrl-C arrived while images are drawn

    monkeypatch.setattr(synth, "render_pair", interrupted)
    rc = run_app(["data", "synth", str(tmp_path / "out"), "--category", "c", "--n-train", "3"])
    err = capsys.readouterr().err
    assert rc == 130
    assert err == "interrupted: stopped cleanly, no partial output left\n"
    assert not any((tmp_path / "out").iterdir())  # no partial category, no temp folder
