"""``benchmark --ray`` and ``predict --ray`` on a real Ray cluster give a local run's results.

A module fixture starts a 2-CPU Ray head (``ray start --head --block``) in its own process
group and stops it at the end (SIGINT: Ray stops everything it started; then anything left
in the group is killed), so no Ray process outlives the tests. The commands run as a user
runs them, in a subprocess. Deselect with ``-m 'not ray'``.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

import defectmap
from defectmap.calibrate import CalibrationWarning
from defectmap.evaluate import predict_to_dir, run_benchmark
from ports import free_port

pytest.importorskip("ray.data")
pytestmark = [pytest.mark.ray, pytest.mark.timeout(900)]

SIZE = 64
THREADS = 2  # the cluster's CPUs: each cell and actor takes the whole node, like a local run
SRC = str(Path(defectmap.__file__).resolve().parents[1])
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(
    p for p in (SRC, os.environ.get("PYTHONPATH")) if p), "RAY_USAGE_STATS_ENABLED": "0"}
for _name in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
    ENV.pop(_name, None)
#: The head's token, given as a user gives it (``RAY_AUTH_TOKEN``). Without its own token
#: the head would follow ``~/.ray/auth_token``: on a fresh machine there is none, the head
#: starts without authentication and a client in token mode is refused before it connects.
TOKEN_ENV = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}


def _group(pgid: int) -> list[int]:
    """Processes in process group ``pgid`` (Linux /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(stat[2]) == pgid and stat[0] != "Z":
                found.append(int(entry.name))
    return found


@pytest.fixture(scope="module")
def ray_address(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Address of a fresh 2-CPU Ray head, stopped (all its processes) after the module."""
    port = free_port()
    log_path = tmp_path_factory.mktemp("ray") / "head.log"
    ray_cli = Path(sys.executable).parent / "ray"
    with log_path.open("w") as log:
        head = subprocess.Popen(
            [str(ray_cli), "start", "--head", "--block", f"--port={port}", "--num-cpus=2",
             "--include-dashboard=false", "--disable-usage-stats"],
            env={**ENV, **TOKEN_ENV}, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while "Ray runtime started" not in log_path.read_text():
            assert head.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, "Ray head did not start in 240 s"
            time.sleep(0.5)
        address = next(line.split("--address=")[1].strip().strip("'")
                       for line in log_path.read_text().splitlines() if "--address=" in line)
        yield address
    finally:
        head.send_signal(signal.SIGINT)  # `ray start --block` then stops what it started
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            head.kill()
        deadline = time.monotonic() + 30
        while _group(head.pid) and time.monotonic() < deadline:
            time.sleep(0.5)
        for pid in _group(head.pid):  # stragglers of this group only
            os.kill(pid, signal.SIGKILL)
        assert _group(head.pid) == []


def _cli(*argv: str | Path, auth: bool = False) -> subprocess.CompletedProcess[str]:
    env = {**ENV, **TOKEN_ENV} if auth else ENV  # an explicit address: opt in
    return subprocess.run([sys.executable, "-c", "from defectmap.cli import main; main()",
                           *map(str, argv)], env=env, capture_output=True, text=True,
                          timeout=600)


@pytest.fixture(scope="module")
def grid_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two categories; ``broken`` has a truncated training image, so its cells fail."""
    from defectmap.data.synth import make_synthetic_dataset

    root = tmp_path_factory.mktemp("grid")
    make_synthetic_dataset(root, category="good", n_train=12, n_test=6, size=SIZE, seed=1)
    make_synthetic_dataset(root, category="broken", n_train=12, n_test=6, size=SIZE, seed=2)
    first = root / "broken" / "train" / "good" / "000.png"
    first.write_bytes(first.read_bytes()[:100])
    return root


def _comparable(rows: list[dict]) -> list[dict]:
    """Rows without what differs between two runs by design: timings, the model hash (the
    training summary holds its time) and the output paths."""
    return [{k: v for k, v in r.items() if k not in ("timing", "model_hash", "report")}
            for r in rows]


def test_benchmark_on_ray_equals_local_and_reports_the_failed_cells(
    grid_root: Path, ray_address: str, tmp_path: Path
) -> None:
    options = {"detector_params": {"input_size": SIZE}, "seeds": [0, 1], "alpha": 0.1,
               "n_threads": THREADS}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CalibrationWarning)
        local = run_benchmark(grid_root, ["good", "broken"], ["patchcore"], tmp_path / "local",
                              **options)
    proc = _cli("benchmark", grid_root, "-c", "good", "-c", "broken", "--image-size", SIZE,
                "--seed", 0, "--seed", 1, "--alpha", 0.1, "--threads", THREADS,
                "--out", tmp_path / "ray", "--ray", ray_address, auth=True)
    assert proc.returncode == 1, proc.stderr  # two cells failed: the table is still written
    bad = str(grid_root / "broken" / "train" / "good" / "000.png")
    assert (f"failed broken / patchcore after 2 attempts: ImageReadError: 1 of 12 image(s) "
            f"cannot be read: {bad}: truncated or corrupt PNG file") in proc.stderr
    assert "warning:" not in proc.stderr  # Ray's own deprecation notices stay quiet
    on_ray = json.loads((tmp_path / "ray" / "table.json").read_text())
    assert len(on_ray["pairs"]) == 2 and len(on_ray["failed"]) == 2
    assert _comparable(on_ray["pairs"]) == _comparable(local["rows"])  # every metric, score
    assert on_ray["failed"] == local["failed"]
    assert all(f["attempts"] == 2 and bad in f["error"] for f in on_ray["failed"])
    assert (tmp_path / "ray" / "table.md").read_text() == \
        (tmp_path / "local" / "table.md").read_text()
    assert "| broken | failed | failed | failed | failed | failed | failed |" in \
        (tmp_path / "ray" / "table.md").read_text()

    # --resume, locally, on the cluster's output: the finished cells are not fitted again.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CalibrationWarning)
        resumed = run_benchmark(grid_root, ["good", "broken"], ["patchcore"],
                                tmp_path / "ray", resume=True, **options)
    assert resumed["resumed"] == 2 and len(resumed["failed"]) == 2
    assert resumed["rows"] == on_ray["pairs"]


@pytest.fixture(scope="module")
def model_dir(grid_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from defectmap.data.layouts import load_category
    from defectmap.pipeline import train_model

    out = tmp_path_factory.mktemp("model") / "model"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CalibrationWarning)
        train_model(load_category(grid_root, "good"), out,
                    detector_params={"input_size": SIZE}, alpha=0.1)
    return out


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_predict_on_a_local_ray_writes_the_same_bytes_as_local(
    grid_root: Path, model_dir: Path, tmp_path: Path
) -> None:
    from defectmap.pipeline import load_model

    images = grid_root / "good" / "test"
    rows = predict_to_dir(load_model(model_dir), [images], tmp_path / "local", batch_size=2,
                          parquet=True, n_threads=THREADS, recursive=True)
    proc = _cli("predict", model_dir, images, "--out", tmp_path / "ray", "--batch-size", 2,
                "--parquet", "--threads", THREADS, "--recursive", "--ray", "local")
    assert proc.returncode == 0, proc.stderr
    local, on_ray = _files(tmp_path / "local"), _files(tmp_path / "ray")
    assert len(rows) == 6 and sum(k.startswith("overlays/") for k in local) == 6
    assert {"results.csv", "results.json", "results.parquet"} <= set(local)
    assert on_ray.keys() == local.keys()
    assert [k for k in local if on_ray[k] != local[k]] == []  # maps, overlays, CSV, Parquet
    assert f"{sum(r['decision'] == 'defect' for r in rows)} of 6 flagged" in proc.stdout


def test_predict_on_ray_checks_every_image_first_like_local_and_writes_nothing(
    grid_root: Path, model_dir: Path, ray_address: str, tmp_path: Path
) -> None:
    """The driver runs the local checks before any actor starts: one line naming the file."""
    folder = tmp_path / "images"
    folder.mkdir()
    for source in sorted((grid_root / "good" / "test" / "good").glob("*.png")):
        (folder / source.name).write_bytes(source.read_bytes())
    (folder / "zz_cut.png").write_bytes((folder / "000.png").read_bytes()[:200])
    proc = _cli("predict", model_dir, folder, "--out", tmp_path / "out", "--no-overlays",
                "--threads", THREADS, "--ray", ray_address, auth=True)
    assert proc.returncode == 1
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert errors == [f"error: 1 of 4 image(s) cannot be read: {folder / 'zz_cut.png'}: "
                      "truncated or corrupt PNG file (Truncated File Read)"], proc.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["images"]  # no output, no temporary folder
