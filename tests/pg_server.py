"""A throw-away PostgreSQL server for the tests: initdb + postgres on 127.0.0.1, a free port.

Uses the server binaries of Debian's ``postgresql`` package (``make test`` installs it with
``scripts/ensure-postgres.sh``). PostgreSQL refuses to run as root, so under root (CI) the
server runs as the package's ``postgres`` user through ``runuser``. :func:`start` returns a
:class:`PgServer`, or raises :class:`Unavailable` with the reason the tests print when they
skip.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from ports import free_port

USER = "defectmap"


class Unavailable(RuntimeError):
    """PostgreSQL cannot be started here; the message says why."""


def _bindir() -> Path:
    for name in ("pg_ctl", "initdb"):
        found = shutil.which(name)
        if found and Path(found).resolve().parent.joinpath("postgres").is_file():
            return Path(found).resolve().parent
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    if not candidates:
        raise Unavailable("PostgreSQL server binaries not found (install Debian's postgresql "
                          "package: bash scripts/ensure-postgres.sh)")
    return Path(candidates[-1]).parent


class PgServer:
    """A running server; :meth:`new_database` gives each test its own empty database."""

    def __init__(self, bindir: Path, datadir: Path, port: int, prefix: list[str]) -> None:
        self.bindir, self.datadir, self.port, self.prefix = bindir, datadir, port, prefix
        self._count = 0

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{USER}@127.0.0.1:{self.port}/{database}"

    def new_database(self) -> str:
        import psycopg

        self._count += 1
        name = f"test_{os.getpid()}_{self._count}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def execute(self, sql: str, database: str = "postgres") -> None:
        import psycopg

        with psycopg.connect(self.url(database), autocommit=True) as conn:
            conn.execute(sql)

    def stop_only(self) -> None:
        """Stop the server, keeping its data (see :meth:`start_again`)."""
        subprocess.run([*self.prefix, str(self.bindir / "pg_ctl"), "-D", str(self.datadir),
                        "-m", "fast", "-w", "stop"], capture_output=True, timeout=60)

    def start_again(self) -> None:
        _pg_ctl_start(self.bindir, self.datadir, self.port, self.prefix)

    def stop(self) -> None:
        self.stop_only()
        shutil.rmtree(self.datadir.parent, ignore_errors=True)


def start() -> PgServer:
    """Initialise and start a server owned by this run; :class:`Unavailable` if impossible."""
    try:
        import psycopg  # noqa: F401
    except ImportError as exc:
        raise Unavailable("psycopg is not installed (pip install 'defectmap[postgres]')") \
            from exc
    bindir = _bindir()
    prefix: list[str] = []
    root = Path(tempfile.mkdtemp(prefix="defectmap-pg-"))  # /tmp: reachable by postgres
    datadir = root / "data"
    if os.geteuid() == 0:
        if shutil.which("runuser") is None:
            raise Unavailable("running as root without runuser: cannot start PostgreSQL")
        try:
            shutil.chown(root, user="postgres", group="postgres")
        except (LookupError, OSError) as exc:
            raise Unavailable(f"running as root and there is no 'postgres' user ({exc})") \
                from exc
        prefix = ["runuser", "-u", "postgres", "--"]
    port = free_port()
    try:
        _run(prefix, [str(bindir / "initdb"), "-D", str(datadir), "-U", USER, "-A", "trust",
                      "--no-instructions", "-E", "UTF8"], root)
        _pg_ctl_start(bindir, datadir, port, prefix)
    except Unavailable:
        shutil.rmtree(root, ignore_errors=True)
        raise
    return PgServer(bindir, datadir, port, prefix)


def _run(prefix: list[str], step: list[str], root: Path) -> None:
    done = subprocess.run([*prefix, *step], capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        log = root / "server.log"
        tail = log.read_text()[-600:] if log.is_file() else ""
        raise Unavailable(f"{Path(step[0]).name} failed: {done.stderr.strip()[-600:]} {tail}")


def _pg_ctl_start(bindir: Path, datadir: Path, port: int, prefix: list[str]) -> None:
    root = datadir.parent
    _run(prefix, [str(bindir / "pg_ctl"), "-D", str(datadir), "-w", "-t", "60", "-l",
                  str(root / "server.log"), "-o",
                  f"-c listen_addresses=127.0.0.1 -p {port} -k {root} -c fsync=on", "start"],
         root)
