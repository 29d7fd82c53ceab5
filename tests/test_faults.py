"""Faults: a worker killed mid-burst, a full disk, a read-only database, a database server
that goes away. Every answer is either a logged decision or a clear 503, never a wrong one,
and the service resumes by itself. All traffic goes to 127.0.0.1, in bounded loops."""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from defectmap.serve import create_app
from ports import free_port
from test_serve import LiveServer, synthetic_test_images, trained_model_dir

pytestmark = [pytest.mark.timeout(300), pytest.mark.slow]
CLI = [sys.executable, "-c", "from defectmap.cli import main; main()"]


def children(pid: int) -> list[int]:
    """Worker processes of uvicorn's supervisor ``pid`` (not multiprocessing's helpers)."""
    path = Path(f"/proc/{pid}/task/{pid}/children")
    found = []
    for child in (path.read_text().split() if path.exists() else []):
        try:
            cmdline = Path(f"/proc/{child}/cmdline").read_bytes()
        except OSError:
            continue
        if b"resource_tracker" not in cmdline:
            found.append(int(child))
    return found


def established(pid: int, port: int) -> int:
    """How many open TCP connections process ``pid`` holds on local ``port`` (from /proc)."""
    try:
        links = [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")]
    except OSError:
        return 0
    inodes = {link[8:-1] for link in links if link.startswith("socket:[")}
    count = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local_port, state, inode = int(fields[1].split(":")[1], 16), fields[3], fields[9]
        count += local_port == port and state == "01" and inode in inodes
    return count


def wait_healthy(url: str, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else "exited"
        try:
            if httpx.get(url + "/healthz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError("server did not become healthy")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory, synthetic_root: Path) -> Path:
    return trained_model_dir(tmp_path_factory, synthetic_root)


@pytest.fixture(scope="module")
def payloads(synthetic_root: Path, tmp_path_factory: pytest.TempPathFactory) -> list[bytes]:
    found = synthetic_test_images(synthetic_root, tmp_path_factory.mktemp("fault_images"))
    return [p.read_bytes() for p in found["good"] + found["pasted"]]


def send(http: httpx.Client, data: bytes, key: str | None = None) -> httpx.Response:
    headers = {} if key is None else {"Idempotency-Key": key}
    return http.post("/v1/inspect", files={"image": ("part.png", data, "image/png")},
                     headers=headers)


# -- a worker killed mid-burst ---------------------------------------------------------------


def test_kill_9_of_a_worker_loses_no_decision(
    model_dir: Path, payloads: list[bytes], tmp_path: Path
) -> None:
    port, db = free_port(), tmp_path / "audit.sqlite3"
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen([*CLI, "serve", str(model_dir), "--port", str(port), "--db", str(db),
                             "--workers", "2"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, start_new_session=True)
    try:
        wait_healthy(url, proc)
        deadline = time.monotonic() + 60
        while len(children(proc.pid)) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        workers = children(proc.pid)
        assert len(workers) == 2
        n_requests, run = 80, uuid.uuid4().hex[:6]
        answers: dict[str, str] = {}
        errors: list[str] = []
        retried = 0
        lock = threading.Lock()
        counter = iter(range(n_requests))

        def client() -> None:
            nonlocal retried
            with httpx.Client(base_url=url, timeout=60) as http:
                while (i := next(counter, None)) is not None:
                    key = f"{run}-{i}"
                    for _attempt in range(10):  # bounded retries with the same key
                        try:
                            response = send(http, payloads[i % len(payloads)], key)
                        except httpx.TransportError:
                            with lock:
                                retried += 1
                            time.sleep(0.3)
                            continue
                        with lock:
                            if response.status_code == 200:
                                answers[key] = response.json()["id"]
                            else:
                                errors.append(f"{key}: {response.status_code} {response.text}")
                        break
                    else:
                        with lock:
                            errors.append(f"{key}: no answer after 10 attempts")

        threads = [threading.Thread(target=client) for _ in range(6)]
        for thread in threads:
            thread.start()
        while len(answers) < 20:  # kill in the middle of the burst
            time.sleep(0.02)
        # The kernel may hand every client connection to one worker: kill the one that holds
        # the most, so that the kill does break requests in flight.
        workers.sort(key=lambda pid: established(pid, port), reverse=True)
        os.kill(workers[0], signal.SIGKILL)
        for thread in threads:
            thread.join(timeout=240)
        assert errors == []
        assert len(answers) == n_requests  # every request got its decision, after retries
        # uvicorn's supervisor replaced the killed worker.
        deadline = time.monotonic() + 60
        while len(children(proc.pid)) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert workers[0] not in children(proc.pid) and len(children(proc.pid)) == 2
    finally:
        stop(proc)
    with sqlite3.connect(db) as conn:
        rows = dict(conn.execute("SELECT request_key, id FROM inspections"))
    # One row per request, and each row is the decision its client received: no row without
    # an answer, no answer without a row, nothing answered twice.
    assert rows == answers
    assert retried >= 1  # the kill did break connections in flight


# -- full disk and read-only database (a tmpfs in a private mount namespace) ----------------


@pytest.fixture()
def namespaced_server(model_dir: Path, tmp_path: Path) -> Iterator[dict[str, Any]]:
    """A server whose database and stored files live on a 16 MiB tmpfs only it can see."""
    if os.geteuid() != 0 or shutil.which("unshare") is None or shutil.which("nsenter") is None:
        pytest.skip("needs root with unshare and nsenter to mount a private tmpfs")
    probe = subprocess.run(["unshare", "-m", "--propagation", "private", "true"],
                           capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"cannot create a mount namespace: {probe.stderr.decode().strip()}")
    disk = tmp_path / "disk"
    disk.mkdir()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = " ".join([
        f"mount -t tmpfs -o size=16m tmpfs {disk} &&", "exec", *CLI[:2],
        f"'{CLI[2]}'", "serve", str(model_dir), "--port", str(port), "--db",
        str(disk / "audit.sqlite3"), "--store-images"])
    proc = subprocess.Popen(["unshare", "-m", "--propagation", "private", "sh", "-c", command],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    try:
        wait_healthy(url, proc)
        # The namespace's view of the tmpfs, from outside it.
        yield {"url": url, "proc": proc, "disk": disk,
               "view": Path(f"/proc/{proc.pid}/root") / disk.relative_to("/")}
    finally:
        stop(proc)


def burst_until_503(http: httpx.Client, payloads: list[bytes], n: int = 40) -> list[Any]:
    """Up to ``n`` requests; stop at the first 503. Return the (status, body) of each."""
    seen = []
    for i in range(n):
        response = send(http, payloads[i % len(payloads)])
        seen.append((response.status_code, response.json()))
        assert response.status_code in (200, 503), response.text  # never a 500
        if response.status_code == 503:
            break
    return seen


def test_full_disk_gives_503_then_resumes(
    namespaced_server: dict[str, Any], payloads: list[bytes]
) -> None:
    view: Path = namespaced_server["view"]
    with httpx.Client(base_url=namespaced_server["url"], timeout=60) as http:
        assert send(http, payloads[0]).status_code == 200
        filler = view / "filler"
        with open(filler, "wb") as handle:  # fill the tmpfs to the last byte
            try:
                while True:
                    handle.write(b"\0" * (1 << 20))
                    handle.flush()
            except OSError:
                pass
        seen = burst_until_503(http, payloads)
        status, body = seen[-1]
        assert status == 503, seen
        assert body["error"] in ("storage_unavailable", "audit_unavailable")
        assert "space" in body["detail"].lower() or "full" in body["detail"].lower()
        answered = [b["id"] for s, b in seen if s == 200]
        health = http.get("/healthz")
        assert health.status_code == 200  # reading still works
        count = health.json()["inspections"]
        filler.unlink()
        again = send(http, payloads[1])  # room again: it resumes by itself
        assert again.status_code == 200, again.text
        rows = http.get("/v1/inspections", params={"limit": 1000}).json()["inspections"]
    ids = [r["id"] for r in rows]
    assert count == 1 + len(answered) and len(ids) == count + 1
    assert set(answered) <= set(ids) and again.json()["id"] == ids[0]


def test_read_only_sqlite_database_is_refused_with_one_line(
    model_dir: Path, payloads: list[bytes], tmp_path: Path
) -> None:
    """A SQLite file on a read-only mount: ``serve`` refuses to start, in one line.

    (A mount cannot turn read-only under a process that holds files open for writing, so the
    running-service case is tested on PostgreSQL below, where a read-only transaction mode
    can be switched on under a live connection.)
    """
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root with unshare to make a read-only bind mount")
    folder = tmp_path / "ro"
    folder.mkdir()
    with LiveServer(create_app(model_dir, db_path=folder / "audit.sqlite3")) as live, \
            httpx.Client(base_url=live.url, timeout=60) as http:
        assert send(http, payloads[0]).status_code == 200
    command = (f"mount --bind -o ro {folder} {folder} && exec {CLI[0]} {CLI[1]} '{CLI[2]}' "
               f"serve {model_dir} --port {free_port()} --db {folder / 'audit.sqlite3'}")
    done = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", command],
                          capture_output=True, text=True, timeout=180)
    if "mount:" in done.stderr:
        pytest.skip(f"cannot bind-mount read-only here: {done.stderr.strip()}")
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 1, done.stderr
    assert len(lines) == 1 and lines[0].startswith("error:"), done.stderr
    assert "audit.sqlite3" in lines[0] and "readonly" in lines[0].replace("-", "").lower()


# -- PostgreSQL: read-only, then the server goes away and comes back --------------------------


def test_postgres_read_only_and_down_give_503_then_resume(
    model_dir: Path, payloads: list[bytes]
) -> None:
    import pg_server as pg

    try:
        server = pg.start()  # its own server: this test stops it
    except pg.Unavailable as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"PostgreSQL is required under CI: {exc}")
        pytest.skip(f"PostgreSQL tests skipped: {exc}")
    try:
        url = server.new_database()
        database = url.rsplit("/", 1)[1]
        with LiveServer(create_app(model_dir, db_path=url)) as live, \
                httpx.Client(base_url=live.url, timeout=60) as http:
            assert send(http, payloads[0]).status_code == 200
            server.execute(f'ALTER DATABASE "{database}" SET default_transaction_read_only = on')
            server.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                           f"WHERE datname = '{database}'")  # new sessions get the setting
            refused = send(http, payloads[1])
            assert refused.status_code == 503, refused.text
            assert "read-only" in refused.json()["detail"]
            assert "audit_unavailable" == refused.json()["error"]
            server.execute(f'ALTER DATABASE "{database}" SET default_transaction_read_only = off')
            assert send(http, payloads[1]).status_code == 200

            server.stop_only()
            down = send(http, payloads[2])
            assert down.status_code == 503 and down.json()["error"] == "audit_unavailable"
            assert http.get("/healthz").status_code == 503
            server.start_again()
            back = send(http, payloads[2])
            assert back.status_code == 200, back.text
            assert http.get("/healthz").json()["inspections"] == 3
    finally:
        server.stop()
