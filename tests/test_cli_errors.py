"""Errors a person can read (issue 12, items 2, 9 and 12): usage errors are one line with exit
code 2, numeric flags are checked before any output is touched, help and output print names
as written."""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from defectmap.cli._common import run_app

EXE = Path(sys.executable).with_name("defectmap")
COMMANDS = ["fit", "predict", "evaluate", "benchmark", "demo", "serve", "evaluate-maps",
            "export", "data check", "data synth", "data download"]


def _run(capsys: pytest.CaptureFixture[str], *argv: object) -> tuple[int, str, str]:
    rc = run_app([str(a) for a in argv])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def _console(*argv: object, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(EXE), *map(str, argv)], capture_output=True, text=True,
                          timeout=timeout)


# -- 9. usage errors: the real console script, one line, exit 2 ---------------------------


@pytest.mark.parametrize(("argv", "words"), [
    ([], ["Missing command", "fit", "predict", "serve"]),
    (["nope"], ["No such command 'nope'", "fit"]),
    (["data"], ["Missing command", "check", "synth"]),
    (["fit"], ["Missing argument 'DATASET_ROOT'", "defectmap fit --help"]),
    (["fit", "data/"], ["Missing option '--out'"]),
    (["predict", "m", "x.png", "--out", "o", "--bogus"], ["No such option: --bogus"]),
    (["serve", "m", "--port", "70000"], ["'--port'", "must be in [1, 65535], got 70000"]),
    (["fit", "data/", "--out", "o", "--image-size", "abc"], ["'--image-size'", "integer"]),
])
def test_usage_errors_are_one_line_with_exit_2(argv: list[str], words: list[str]) -> None:
    proc = _console(*argv)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    assert proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1, proc.stderr
    for word in words:
        assert word in proc.stderr


def test_ctrl_c_is_one_line_with_exit_130(tmp_path: Path) -> None:
    proc = subprocess.Popen([str(EXE), "data", "synth", str(tmp_path), "--category", "c",
                             "--n-train", "100000", "--size", "256"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not list(tmp_path.iterdir()) and time.monotonic() < deadline:  # writing started
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert err == "interrupted: stopped cleanly, no partial output left\n"
    assert list(tmp_path.iterdir()) == []  # the half-written dataset is gone


# -- 2. every numeric flag, checked at the boundary -----------------------------------------


BAD_FLAGS = [
    (["fit", "d", "--out", "o"], "--image-size", ["31", "2049", "-1"]),
    (["fit", "d", "--out", "o"], "--val-ratio", ["-0.1", "1", "1.5", "nan"]),
    (["fit", "d", "--out", "o"], "--alpha", ["0", "1", "-0.5"]),
    (["fit", "d", "--out", "o"], "--seed", ["-1"]),
    (["predict", "m", "x.png", "--out", "o"], "--batch-size", ["0", "-1"]),
    (["evaluate", "m", "d", "--out", "o"], "--batch-size", ["0", "-1"]),
    (["evaluate", "m", "d", "--out", "o"], "--fpr-limit", ["0", "1.01", "-1"]),
    (["benchmark", "d", "--out", "o"], "--image-size", ["8"]),
    (["benchmark", "d", "--out", "o"], "--seed", ["-3"]),
    (["benchmark", "d", "--out", "o"], "--alpha", ["1"]),
    (["demo", "--out", "o"], "--seed", ["-1"]),
    (["serve", "m"], "--port", ["0", "65536", "-80"]),
    (["serve", "m"], "--workers", ["0", "65"]),
    (["serve", "m"], "--max-batch", ["0"]),
    (["serve", "m"], "--max-wait-ms", ["-1", "1001"]),
    (["serve", "m"], "--cache-mb", ["-1"]),
    (["serve", "m"], "--pending-mb", ["0"]),
    (["evaluate-maps", "m", "d"], "--fpr-limit", ["0", "2"]),
    (["data", "synth", "o", "--category", "c"], "--n-train", ["0", "-5"]),
    (["data", "synth", "o", "--category", "c"], "--n-test", ["-1"]),
    (["data", "synth", "o", "--category", "c"], "--size", ["31", "5000"]),
    (["data", "synth", "o", "--category", "c"], "--seed", ["-1"]),
]


@pytest.mark.parametrize(("argv", "flag", "values"), BAD_FLAGS,
                         ids=[f"{' '.join(a[:2] if a[0] == 'data' else a[:1])} {f}"
                              for a, f, _ in BAD_FLAGS])
def test_numeric_flags_out_of_range_are_usage_errors(
    argv: list[str], flag: str, values: list[str], tmp_path: Path,
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)  # relative paths land here, and nothing may be created
    for value in values:
        rc, out, err = _run(capsys, *argv, flag, value)
        assert rc == 2, (value, err)
        assert err.startswith(f"error: Invalid value for '{flag}': must be ")
        assert f"got {value}" in err and err.count("\n") == 1 and out == ""
    assert list(tmp_path.iterdir()) == []


def test_data_synth_kind_is_a_usage_error(tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    rc, _, err = _run(capsys, "data", "synth", tmp_path / "o", "--category", "c",
                      "--kind", "wood")
    assert rc == 2 and "--kind must be 'object' or 'texture'" in err


@pytest.fixture(scope="module")
def model_dir(synthetic_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cli_errors") / "model"
    assert run_app(["fit", str(synthetic_root), "--category", "synthetic", "--image-size", "64",
                    "--alpha", "0.1", "--out", str(out)]) == 0
    return out


def test_bad_batch_size_never_replaces_an_earlier_output(
    model_dir: Path, synthetic_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    from defectmap.errors import DefectmapError
    from defectmap.evaluate.predict import predict_to_dir
    from defectmap.files import sha256_tree
    from defectmap.pipeline import load_model

    good = synthetic_root / "synthetic" / "test" / "good"
    out = tmp_path / "p"
    assert _run(capsys, "predict", model_dir, good, "--out", out)[0] == 0
    before = sha256_tree(out)
    n_images = json.loads((out / "results.json").read_text())["n_images"]
    assert n_images == len(list(good.glob("*.png")))
    for value in ("-1", "0"):
        rc, _, err = _run(capsys, "predict", model_dir, good, "--out", out, "--batch-size",
                          value)
        assert rc == 2 and "--batch-size" in err
    with pytest.raises(DefectmapError, match="batch_size must be an integer >= 1"):
        predict_to_dir(load_model(model_dir), [good], out, batch_size=-1)
    assert sha256_tree(out) == before  # the earlier results are untouched


# -- 12. smaller ones -------------------------------------------------------------------------


@pytest.mark.parametrize("command", COMMANDS)
def test_help_shows_no_bool_placeholder(command: str,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = _run(capsys, *command.split(), "--help")
    assert rc == 0 and "Usage: defectmap " + command in out
    assert "<bool>" not in out and "--help" in out


def test_paths_with_brackets_print_as_written(
    model_dir: Path, synthetic_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    folder = tmp_path / "[red]in"
    folder.mkdir()
    image = folder / "[b]part.png"
    shutil.copy(sorted((synthetic_root / "synthetic" / "test" / "good").glob("*.png"))[0], image)
    out = tmp_path / "[bold]out"
    rc, stdout, err = _run(capsys, "predict", model_dir, image, "--out", out)
    assert rc == 0, err
    assert f"results in {out}" in " ".join(stdout.split())
    assert "[red]in/[b]part.png" in stdout  # the table's image cell
    model = tmp_path / "[x]model"
    rc, stdout, err = _run(capsys, "fit", synthetic_root, "--category", "synthetic",
                           "--image-size", "64", "--alpha", "0.1", "--out", model)
    assert rc == 0, err
    assert f"model written to {model}" in " ".join(stdout.split())
    rc, _, err = _run(capsys, "predict", model_dir, folder / "[i]missing.png", "--out", out)
    assert rc == 1 and "[i]missing.png: no such image file" in err


def test_busy_port_is_one_line(model_dir: Path, tmp_path: Path,
                               capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        for workers in ("1", "2"):  # the multi-worker runner binds the same way
            rc, out, err = _run(capsys, "serve", model_dir, "--port", port,
                                "--db", tmp_path / "a.db", "--workers", workers)
            assert rc == 1 and out == ""
            assert err == f"error: cannot listen on 127.0.0.1:{port}: address already in use\n"


def test_db_in_a_missing_folder_is_an_error(model_dir: Path, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    from defectmap.serve.audit import AuditLogError, open_audit_log

    db = tmp_path / "no" / "such" / "audit.sqlite3"
    rc, _, err = _run(capsys, "serve", model_dir, "--db", db)
    assert rc == 2 and err.count("\n") == 1 and "does not exist" in err
    with pytest.raises(AuditLogError, match="does not exist"):
        open_audit_log(db)
    assert not (tmp_path / "no").exists()


def test_library_errors_speak_parameter_names() -> None:
    from defectmap.data.mvtec import select_categories
    from defectmap.errors import DefectmapError
    from defectmap.files import check_replaceable
    from defectmap.serve.policy import check_exposure

    for call in (lambda: check_exposure("0.0.0.0", None), lambda: check_exposure("::1", " "),
                 lambda: select_categories(".", ["a"], all_categories=True),
                 lambda: check_replaceable(Path(__file__), None)):
        with pytest.raises(DefectmapError) as caught:
            call()
        assert "--" not in str(caught.value), caught.value


def test_cli_words_the_exposure_rule_with_its_flags(model_dir: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    rc, _, err = _run(capsys, "serve", model_dir, "--host", "0.0.0.0", "--db", tmp_path / "a")
    assert rc == 2 and "--host 0.0.0.0 is not loopback: it needs --token" in err
    rc, _, err = _run(capsys, "serve", model_dir, "--token", " ", "--db", tmp_path / "a")
    assert rc == 2 and "--token is empty or only white space" in err
    assert list(tmp_path.iterdir()) == []
