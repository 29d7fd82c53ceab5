"""The default audit backend: one SQLite file, no set-up.

The file is opened in WAL mode (readers never block the writer) with ``synchronous=FULL`` (a
committed row survives a power cut, not just a crash of the process). Several worker
processes may share one file: each write is a ``BEGIN IMMEDIATE`` transaction, so writers
queue on SQLite's lock (for up to 30 s) instead of failing with "database is locked".
"""

from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path
from typing import Any

from defectmap.serve.audit.records import AuditLogError, AuditUnavailableError
from defectmap.serve.audit.schema import SQLITE
from defectmap.serve.audit.store import AuditStore

__all__ = ["SQLiteAuditLog"]


class SQLiteAuditLog(AuditStore):
    """The audit log in one SQLite file.

    Parameters
    ----------
    path : str or Path
        Database file; created with its schema when missing, kept (with its rows) and
        migrated when present. Its folder must exist.

    Raises
    ------
    AuditLogError
        The folder is missing, or the file cannot be opened as a SQLite database.
    """

    dialect = SQLITE
    _errors = (sqlite3.Error,)

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.parent.is_dir():
            raise AuditLogError(
                f"{self.path}: the folder {self.path.parent} does not exist; create it first")
        if self.path.is_dir():
            raise AuditUnavailableError(
                f"{self.path}: cannot open the audit database: it is a folder")
        try:
            super().__init__(str(self.path))
        except AuditUnavailableError as exc:
            if not _writable(self.path):
                raise AuditUnavailableError(
                    f"{exc}; the file or its folder is read-only, and the audit log must be "
                    "writable") from exc
            raise

    def _connect(self) -> Any:
        # One connection shared by the thread pool; every use holds ``self._lock``.
        conn = sqlite3.connect(
            self.path, check_same_thread=False, isolation_level=None, timeout=30.0
        )
        try:
            mode = _enter_wal(conn)
            if str(mode).lower() != "wal":
                raise sqlite3.OperationalError(f"WAL mode refused (journal_mode={mode})")
            conn.execute("PRAGMA synchronous=FULL")
        except sqlite3.Error:
            conn.close()  # e.g. a file that is not a database: do not leak the handle
            raise
        return conn

    def _begin(self) -> str:
        return "BEGIN IMMEDIATE"  # take the write lock now, not at the first write

    def _lock_writes(self, conn: Any) -> None:
        pass  # BEGIN IMMEDIATE already holds the database's one write lock

    def _is_unique_violation(self, exc: BaseException) -> bool:
        return isinstance(exc, sqlite3.IntegrityError) and "UNIQUE" in str(exc)

    def _has_table(self, conn: Any, name: str) -> bool:
        row = conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", [name]).fetchone()
        return row is not None


def _enter_wal(conn: sqlite3.Connection, wait_s: float = 30.0) -> str:
    """Switch ``conn`` to WAL mode and return the mode SQLite reports.

    When several processes open a fresh file at the same moment, the switch can fail with
    "database is locked" at once, without waiting on the busy timeout (the change needs the
    file to itself). It is retried for up to ``wait_s`` seconds, like a locked write.
    """
    deadline = time.monotonic() + wait_s
    while True:
        try:
            return str(conn.execute("PRAGMA journal_mode=WAL").fetchone()[0])
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def _writable(path: Path) -> bool:
    """Whether ``path`` (or, when missing, its folder) can be written (EROFS included)."""
    target = path if path.exists() else path.parent
    return os.access(target, os.W_OK) and os.access(path.parent, os.W_OK)
