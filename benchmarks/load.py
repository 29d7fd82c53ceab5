"""Load test of the inspection service, before vs after, in one run.

Trains a small PatchCore model on a synthetic dataset (128 px images, 128 px input: the
settings of the round-1 figures), then for each server configuration starts
``defectmap serve`` in a subprocess on a free 127.0.0.1 port and sends, from 1, 8 and 32
concurrent clients (keep-alive connections in a separate client process), ``--requests``
uploads each. Prints req/s and p50/p95/p99 latency per (configuration, clients), the
throughput ratio of each configuration against "before" at the same concurrency, and checks
that every request was answered 200 exactly once and logged exactly once (audit row ids ==
answered ids, no duplicates, every request's ``Idempotency-Key`` in the log at most once).

"before" is today's service: the package as of commit ``--before`` (default c64f5ab, the last
commit of main before this work), exported with ``git archive`` and run from its own source
tree. The other configurations run this checkout. Usage::

    .venv/bin/python benchmarks/load.py [--requests 400] [--repeats 3]
    .venv/bin/python benchmarks/load.py --configs "workers=1" "workers=2,runtime=onnxruntime"

A configuration with ``runtime=onnxruntime`` or ``runtime=openvino`` serves the same model
exported with ``defectmap export --format openvino`` (ONNX and OpenVINO graphs).

Bounded: every request loop has a fixed count and a timeout; traffic goes to 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing as mp
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import uuid
from io import BytesIO
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
BEFORE_REF = "c64f5ab"
CLIENTS = (1, 8, 32)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


#: The fit of every served model: a split (one fit, no cross-fit); 8 validation images are
#: too few for alpha 0.01 (a CalibrationWarning), which is fine for a load test.
_TRAIN = """
import sys, warnings
from defectmap.data.mvtec import load_category
from defectmap.pipeline import train_model
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    train_model(load_category(sys.argv[1]), sys.argv[2], detector="patchcore",
                detector_params={"input_size": 128, "coreset_ratio": 0.1},
                val_ratio=0.25, min_val=8)
"""


def _train(workdir: Path, src: Path, name: str) -> Path:
    """Fit the model with the package in ``src``: "before" cannot read today's model format,
    so each source tree serves a model it wrote itself, from the same data and settings."""
    model_dir = workdir / name
    subprocess.run([sys.executable, "-c", _TRAIN, str(workdir / "data" / "synthetic"),
                    str(model_dir)], check=True, env=dict(os.environ, PYTHONPATH=str(src)))
    return model_dir


def _data(workdir: Path) -> list[Path]:
    from defectmap.data.synth import make_synthetic_dataset

    category = make_synthetic_dataset(
        workdir / "data", category="synthetic", n_train=24, n_test=16, size=128, seed=0
    )
    return sorted((category / "test").glob("*/*.png"))


def _export_before(ref: str, workdir: Path) -> Path:
    """The ``src`` folder of commit ``ref`` (via git archive), for the "before" server."""
    data = subprocess.run(["git", "-C", str(REPO), "archive", ref, "src"], check=True,
                          capture_output=True).stdout
    target = workdir / f"before-{ref}"
    with tarfile.open(fileobj=BytesIO(data)) as archive:
        archive.extractall(target, filter="data")
    return target / "src"


def _multipart(name: str, data: bytes) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; "
            f"filename=\"{name}\"\r\nContent-Type: image/png\r\n\r\n").encode()
    return head + data + f"\r\n--{boundary}--\r\n".encode(), boundary


def _client_process(port: int, bodies: list[tuple[bytes, str]], n_requests: int,
                    clients: int, out: mp.Queue) -> None:
    """Send ``n_requests`` uploads from ``clients`` keep-alive connections; put the results."""
    results: list[tuple[int, float, str | None, str]] = []
    lock = threading.Lock()
    counter = iter(range(n_requests))
    run_id = uuid.uuid4().hex[:8]

    def worker() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        while True:
            with lock:
                index = next(counter, None)
            if index is None:
                break
            body, boundary = bodies[index % len(bodies)]
            key = f"{run_id}-{index}"
            started = time.perf_counter()
            status, ident = -1, None
            for _attempt in range(3):  # a broken connection is retried, same key
                try:
                    conn.request("POST", "/v1/inspect", body=body, headers={
                        "Content-Type": f"multipart/form-data; boundary={boundary}",
                        "Idempotency-Key": key})
                    response = conn.getresponse()
                    payload = response.read()
                    status = response.status
                    if status == 200:
                        ident = json.loads(payload)["id"]
                    break
                except (OSError, http.client.HTTPException):
                    conn.close()
                    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
            elapsed = time.perf_counter() - started
            with lock:
                results.append((status, elapsed, ident, key))
        conn.close()

    started = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    out.put((results, time.perf_counter() - started))


def _run_clients(port: int, bodies: list[tuple[bytes, str]], n: int, clients: int):
    queue: mp.Queue = mp.Queue()
    proc = mp.get_context("fork").Process(target=_client_process,
                                          args=(port, bodies, n, clients, queue))
    proc.start()
    results, wall = queue.get(timeout=1800)
    proc.join(timeout=60)
    return results, wall


def _start_server(label: str, src: Path, model_dir: Path, db: Path, options: dict) -> tuple:
    port = _free_port()
    command = [sys.executable, "-c", "from defectmap.cli import main; main()", "serve",
               str(model_dir), "--port", str(port), "--db", str(db)]
    for key, value in options.items():
        command += [f"--{key.replace('_', '-')}", str(value)]
    env = dict(os.environ, PYTHONPATH=str(src))
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              env=env, start_new_session=True)
    deadline = time.monotonic() + 180
    while True:
        if server.poll() is not None:
            err = server.stderr.read().decode() if server.stderr else ""
            raise RuntimeError(f"{label}: server exited early:\n{err}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/healthz")
            if conn.getresponse().status == 200:
                conn.close()
                return server, port
        except OSError:
            pass
        if time.monotonic() > deadline:
            server.kill()
            raise RuntimeError(f"{label}: server did not start within 180 s")
        time.sleep(0.3)


def _stop(server: subprocess.Popen) -> None:
    os.killpg(server.pid, signal.SIGINT)
    try:
        server.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()


def _parse_config(text: str) -> tuple[str, dict]:
    options = {}
    for part in filter(None, text.split(",")):
        key, value = part.split("=")
        options[key.strip()] = value.strip()
    return text, options


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=400, help="uploads per phase")
    parser.add_argument("--before", default=BEFORE_REF, help="git ref of 'before'")
    parser.add_argument("--configs", nargs="*",
                        default=["workers=2,runtime=torch", "workers=2,runtime=torch,max_batch=4",
                                 "workers=2,runtime=onnxruntime",
                                 "workers=2,runtime=onnxruntime,max_batch=4",
                                 "workers=2,runtime=openvino,max_batch=4"],
                        help="'after' configurations: serve options as key=value,...")
    parser.add_argument("--clients", type=int, nargs="*", default=list(CLIENTS))
    parser.add_argument("--repeats", type=int, default=3, help="rounds over all configs")
    args = parser.parse_args()

    rows, problems = [], []
    with tempfile.TemporaryDirectory(prefix="defectmap-load-") as tmp:
        workdir = Path(tmp)
        started = time.perf_counter()
        images = _data(workdir)
        before_src = _export_before(args.before, workdir)
        model_dir = _train(workdir, REPO / "src", "model")
        before_model = _train(workdir, before_src, "model-before")
        print(f"trained patchcore (today's and before's) on synthetic 128 px data in "
              f"{time.perf_counter() - started:.1f} s; {os.cpu_count()} CPUs visible; "
              f"{len(images)} distinct images")
        bodies = [_multipart(p.name, p.read_bytes()) for p in images]
        exported = None
        if any("runtime=" in c and "runtime=torch" not in c for c in args.configs):
            from defectmap.export import export_model

            exported = workdir / "model-exported"  # ONNX and OpenVINO graphs beside torch's
            export_model(model_dir, exported, format="openvino")
        configs = [("before", before_src, {})]
        configs += [(label, REPO / "src", opts) for label, opts in map(_parse_config,
                                                                      args.configs)]
        runs = [(r, k, c) for r in range(args.repeats) for k, c in enumerate(configs)]
        for r, k, (label, src, options) in runs:
            db = workdir / f"audit-{r}-{k}.sqlite3"
            served = before_model if label == "before" else \
                exported if exported is not None else model_dir
            server, port = _start_server(label, src, served, db, options)
            answered: list[str] = []
            try:
                _run_clients(port, bodies, 20, 2)  # warm-up, not counted
                for clients in args.clients:
                    results, wall = _run_clients(port, bodies, args.requests, clients)
                    lat = np.array([r[1] for r in results]) * 1000.0
                    ok = [r for r in results if r[0] == 200]
                    answered += [r[2] for r in ok]
                    p50, p95, p99 = np.percentile(lat, [50, 95, 99])
                    rows.append((label, clients, len(results), len(ok), len(results) / wall,
                                 p50, p95, p99))
                    print(f"round {r + 1} {label:<24} {clients:3d} clients  n={len(results):4d}  "
                          f"ok={len(ok):4d}  {len(results) / wall:7.1f} req/s  p50 {p50:6.1f}  "
                          f"p95 {p95:6.1f}  p99 {p99:6.1f} ms", flush=True)
                    if len(ok) != len(results):
                        problems.append(f"{label}, {clients} clients: "
                                        f"{len(results) - len(ok)} requests not answered 200")
            finally:
                _stop(server)
            with sqlite3.connect(db) as conn:
                logged = [r[0] for r in conn.execute("SELECT id FROM inspections")]
            warm = len(logged) - len(answered)
            if len(set(answered)) != len(answered):
                problems.append(f"{label}: an inspection id was answered twice")
            if not set(answered) <= set(logged) or len(set(logged)) != len(logged) or warm != 20:
                problems.append(f"{label}: audit rows ({len(logged)}) do not match the answered "
                                f"requests ({len(answered)} + 20 warm-up) one to one")

    cells: dict[tuple[str, int], list[tuple]] = {}
    for label, clients, _n, _ok, rate, p50, p95, p99 in rows:
        cells.setdefault((label, clients), []).append((rate, p50, p95, p99))
    median = {key: np.median(np.array(v), axis=0) for key, v in cells.items()}
    print(f"\nmedians of {args.repeats} rounds, {args.requests} requests per cell")
    print("| server | clients | req/s | p50 ms | p95 ms | p99 ms | vs before |")
    print("|---|---|---|---|---|---|---|")
    for (label, clients), (rate, p50, p95, p99) in median.items():
        base = median.get(("before", clients))
        ratio = rate / base[0] if base is not None else float("nan")
        print(f"| {label} | {clients} | {rate:.1f} | {p50:.0f} | {p95:.0f} | {p99:.0f} | "
              f"{ratio:.2f}x |")
    for problem in problems:
        print(f"FAIL: {problem}", file=sys.stderr)
    if not problems:
        print("\nOK: every request answered 200, each logged exactly once")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
