"""Load test of the inspection service: many concurrent uploads against a local server.

Starts ``defectmap serve`` in a subprocess on a free 127.0.0.1 port (with MODEL_DIR, or with
a PatchCore model trained here on a synthetic dataset), then

1. baseline: one client sends ``--baseline`` requests one after another;
2. load: ``--clients`` threads send ``--requests`` uploads in total (default 500 from 8);

checks that every request got 200, that the audit table holds exactly one row per successful
request (same ids), and prints latency percentiles and throughput for both phases and the
throughput ratio load / baseline. Usage::

    .venv/bin/python benchmarks/load.py [MODEL_DIR] [--requests 500] [--clients 8]
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path

import httpx
import numpy as np


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _train(workdir: Path, size: int, input_size: int) -> tuple[Path, list[Path]]:
    from defectmap.calibrate import CalibrationWarning
    from defectmap.data.mvtec import load_category
    from defectmap.data.synth import make_synthetic_dataset
    from defectmap.pipeline import train_model

    category = make_synthetic_dataset(
        workdir / "data", category="synthetic", n_train=24, n_test=16, size=size, seed=0
    )
    model_dir = workdir / "model"
    started = time.perf_counter()
    with warnings.catch_warnings():  # 8 validation images: fine for a load test
        warnings.simplefilter("ignore", CalibrationWarning)
        train_model(
            load_category(category),
            model_dir,
            detector="patchcore",
            detector_params={"input_size": input_size, "coreset_ratio": 0.1},
            val_ratio=0.25,
            min_val=8,
        )
    print(f"trained patchcore on synthetic {size}px data in {time.perf_counter() - started:.1f} s")
    return model_dir, sorted((category / "test").glob("*/*.png"))


def _send(url: str, payloads: list[tuple[str, bytes]], clients: int) -> tuple[list, float]:
    """Send every payload, ``clients`` at a time; return [(status, seconds, id)] and wall time."""
    results: list[tuple[int, float, str | None]] = []
    lock = threading.Lock()
    next_index = iter(range(len(payloads)))

    def worker() -> None:
        with httpx.Client(base_url=url, timeout=300) as http:
            while True:
                with lock:
                    index = next(next_index, None)
                if index is None:
                    return
                name, data = payloads[index]
                started = time.perf_counter()
                try:
                    response = http.post("/v1/inspect", files={"image": (name, data)})
                    status = response.status_code
                    ident = response.json().get("id") if status == 200 else None
                except httpx.HTTPError:
                    status, ident = -1, None
                elapsed = time.perf_counter() - started
                with lock:
                    results.append((status, elapsed, ident))

    started = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results, time.perf_counter() - started


def _summary(label: str, results: list, wall: float) -> float:
    latencies = np.array([seconds for _, seconds, _ in results]) * 1000.0
    p50, p95, p99 = np.percentile(latencies, [50, 95, 99])
    throughput = len(results) / wall
    print(
        f"{label:<28} n={len(results):4d}  p50 {p50:7.1f} ms  p95 {p95:7.1f} ms  "
        f"p99 {p99:7.1f} ms  max {latencies.max():7.1f} ms  throughput {throughput:6.2f} req/s"
    )
    return throughput


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dir", nargs="?", type=Path, help="trained model (default: train)")
    parser.add_argument("--images", type=Path, help="folder of images to upload (recursive)")
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--baseline", type=int, default=40, help="sequential requests first")
    parser.add_argument("--size", type=int, default=128, help="synthetic image size")
    parser.add_argument("--input-size", type=int, default=128, help="detector input size")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="defectmap-load-") as tmp:
        workdir = Path(tmp)
        if args.model_dir is None:
            model_dir, images = _train(workdir, args.size, args.input_size)
        else:
            model_dir = args.model_dir
            if args.images is None:
                parser.error("with MODEL_DIR, give --images FOLDER to upload")
            images = []
        if args.images is not None:
            images = sorted(p for p in args.images.rglob("*") if p.suffix.lower() == ".png")
        if not images:
            parser.error("no images to upload")
        payloads = [(p.name, p.read_bytes()) for p in images]

        db = workdir / "audit.sqlite3"
        port = _free_port()
        url = f"http://127.0.0.1:{port}"
        command = [sys.executable, "-c", "from defectmap.cli import main; main()", "serve",
                   str(model_dir),
                   "--port", str(port), "--db", str(db)]
        server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            deadline = time.monotonic() + 120
            while True:
                if server.poll() is not None:
                    err = server.stderr.read().decode() if server.stderr else ""
                    print(f"server exited early:\n{err}", file=sys.stderr)
                    return 1
                try:
                    if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    print("server did not start within 120 s", file=sys.stderr)
                    return 1
                time.sleep(0.2)

            print(f"server pid {server.pid} on {url}; {os.cpu_count()} CPUs visible; "
                  f"{len(payloads)} distinct images of {len(payloads[0][1])}+ bytes")
            work = [payloads[i % len(payloads)] for i in range(args.requests)]
            base, base_wall = _send(url, work[: args.baseline], clients=1)
            load, load_wall = _send(url, work, clients=args.clients)
        finally:
            server.send_signal(signal.SIGINT)
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()

        t1 = _summary("baseline (1 client)", base, base_wall)
        tn = _summary(f"load ({args.clients} clients)", load, load_wall)
        print(f"throughput ratio load / baseline: {tn / t1:.2f}x")

        everything = base + load
        ok_ids = [ident for status, _, ident in everything if status == 200]
        failed = [status for status, _, _ in everything if status != 200]
        with sqlite3.connect(db) as conn:
            rows = [r[0] for r in conn.execute("SELECT id FROM inspections")]
        print(f"answered 200: {len(ok_ids)} / {len(everything)}; audit rows: {len(rows)}")
        problems = []
        if failed:
            problems.append(f"{len(failed)} requests failed: statuses {sorted(set(failed))}")
        if sorted(rows) != sorted(ok_ids) or len(set(rows)) != len(rows):
            problems.append("audit rows do not match the successful requests one to one")
        for problem in problems:
            print(f"FAIL: {problem}", file=sys.stderr)
        if not problems:
            print("OK: every request answered 200 and logged exactly once")
        return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
