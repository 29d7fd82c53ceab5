"""The audit log of the inspection service: one row per decision, in SQLite.

Every decision the service returns is first committed here, so a decision that reached a
client is always traceable: time, the SHA-256 of the uploaded bytes, file name, raw and
normalised score, p-value, decision, the thresholds in force, the model hash, the time the
inspection took, the detected regions (JSON) and, when the service stores files, the paths
of the stored input image, heatmap and overlay (relative to the database's folder).

Storage and concurrency
-----------------------
SQLite is the default because it needs no set-up: the database is one file, opened in WAL
mode (readers never block the writer) with ``synchronous=FULL`` (a committed row survives a
power cut, not just a crash of the process). The service runs inference in a thread pool;
all access to the database goes through one connection guarded by one lock, so writes are
serialised and no row can be lost to "database is locked" races. One insert takes well under
a millisecond plus the fsync, far less than one inference, so the lock is not a bottleneck.
Rows survive a restart: opening an existing file keeps its rows (the schema is created with
``IF NOT EXISTS``).

Pointing it at PostgreSQL later
-------------------------------
The store is this one class around one DB-API 2 connection, and its SQL is plain (no SQLite
functions; timestamps are ISO-8601 UTC strings that sort as text; JSON lives in text
columns). A PostgreSQL store would subclass :class:`AuditLog` and override three things:
``_connect`` (``psycopg.connect(url, autocommit=True)``), ``_PARAM`` (``"%s"`` instead of
``"?"``) and ``_SCHEMA`` (``BIGSERIAL`` instead of ``INTEGER PRIMARY KEY AUTOINCREMENT``,
no PRAGMAs). :func:`open_audit_log` is the single place that would map a
``--db postgresql://...`` URL to that class; today it accepts SQLite paths only and says so.
"""

from __future__ import annotations

import json
import re
import sqlite3
import threading
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from defectmap.errors import DefectmapError

__all__ = ["AuditLog", "AuditLogError", "AuditRecord", "format_timestamp", "open_audit_log"]

DECISIONS = ("ok", "defect")


class AuditLogError(DefectmapError, ValueError):
    """The audit database cannot be opened or a query is invalid (bad filter value)."""


def format_timestamp(moment: datetime) -> str:
    """Return ``moment`` as the fixed-width UTC text stored in the log.

    Parameters
    ----------
    moment : datetime
        Aware datetime (converted to UTC) or naive datetime (taken as UTC).

    Returns
    -------
    str
        ``YYYY-MM-DDTHH:MM:SS.ffffffZ``; these strings sort in time order.
    """
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


_SPACED_OFFSET = re.compile(r"(\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?) (\d{2}(?::?\d{2})?)$")


def parse_timestamp(text: str) -> str:
    """Parse a ``since=`` filter value (ISO 8601) into the stored timestamp format.

    Raises
    ------
    AuditLogError
        When ``text`` is not an ISO-8601 date or date-time.
    """
    # An unescaped "+" of a UTC offset arrives as a space ("...T08:00:00 01:00").
    text = _SPACED_OFFSET.sub(r"\1+\2", text.strip())
    try:
        moment = datetime.fromisoformat(text.replace(" ", "T"))
    except ValueError as exc:
        raise AuditLogError(
            f"since={text!r} is not an ISO-8601 time (e.g. 2026-11-29T00:30:00Z)"
        ) from exc
    return format_timestamp(moment)


@dataclass(frozen=True)
class AuditRecord:
    """One decision as stored in the log (the service's JSON is built from it).

    ``regions`` is a list of :meth:`defectmap.calibrate.Region.to_dict` dicts (``bbox``, ``area``,
    ``peak``, ``centroid``);
    ``thresholds`` maps threshold names to values (empty without calibration); the ``*_path``
    fields are relative to the database's folder, or ``None`` when nothing was stored.
    """

    id: str
    created_at: str
    filename: str
    image_sha256: str
    width: int
    height: int
    score: float
    normalized_score: float | None
    p_value: float | None
    decision: str | None
    thresholds: dict[str, Any]
    model_name: str
    model_hash: str
    elapsed_ms: float
    regions: list[dict[str, Any]] = field(default_factory=list)
    image_path: str | None = None
    heatmap_path: str | None = None
    overlay_path: str | None = None


_COLUMNS = tuple(AuditRecord.__dataclass_fields__)
_JSON_COLUMNS = ("thresholds", "regions")


class AuditLog:
    """Thread-safe append-only store of :class:`AuditRecord` rows in SQLite.

    Parameters
    ----------
    path : str or Path
        Database file; created with its schema when missing, kept (with its rows) when present.
    """

    _PARAM = "?"
    _SCHEMA = """
        CREATE TABLE IF NOT EXISTS inspections (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            id TEXT NOT NULL UNIQUE,
            created_at TEXT NOT NULL,
            filename TEXT NOT NULL,
            image_sha256 TEXT NOT NULL,
            width INTEGER NOT NULL,
            height INTEGER NOT NULL,
            score REAL NOT NULL,
            normalized_score REAL,
            p_value REAL,
            decision TEXT,
            thresholds TEXT NOT NULL,
            model_name TEXT NOT NULL,
            model_hash TEXT NOT NULL,
            elapsed_ms REAL NOT NULL,
            regions TEXT NOT NULL,
            image_path TEXT,
            heatmap_path TEXT,
            overlay_path TEXT
        );
        CREATE INDEX IF NOT EXISTS inspections_created_at ON inspections (created_at);
        CREATE INDEX IF NOT EXISTS inspections_sha256 ON inspections (image_sha256);
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._conn = self._connect()
        except (sqlite3.Error, OSError) as exc:
            raise AuditLogError(f"{self.path}: cannot open the audit database: {exc}") from exc
        try:
            with self._lock:
                self._conn.executescript(self._SCHEMA)
                last = self._conn.execute("SELECT MAX(created_at) FROM inspections").fetchone()[0]
        except sqlite3.Error as exc:
            self._conn.close()
            raise AuditLogError(f"{self.path}: cannot open the audit database: {exc}") from exc
        self._last_time: datetime | None = (
            None if last is None else datetime.fromisoformat(last).astimezone(UTC)
        )

    def _next_timestamp(self) -> str:
        # Called with ``self._lock`` held.
        now = datetime.now(UTC)
        if self._last_time is not None and now <= self._last_time:
            now = self._last_time + timedelta(microseconds=1)
        self._last_time = now
        return format_timestamp(now)

    def _connect(self) -> sqlite3.Connection:
        # One connection shared by the thread pool; every use holds ``self._lock``.
        conn = sqlite3.connect(
            self.path, check_same_thread=False, isolation_level=None, timeout=30.0
        )
        try:
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise sqlite3.OperationalError(f"WAL mode refused (journal_mode={mode})")
            conn.execute("PRAGMA synchronous=FULL")
        except sqlite3.Error:
            conn.close()  # e.g. a file that is not a database: do not leak the handle
            raise
        conn.row_factory = sqlite3.Row
        return conn

    # -- writing ---------------------------------------------------------------------------

    def insert(self, record: AuditRecord) -> AuditRecord:
        """Commit one row and return it as stored; returns only once the row is durable.

        ``created_at`` is set to the current UTC time under the write lock, bumped by 1 us
        when needed so that it strictly increases: time order and insertion order agree and
        a poller using ``since=<last created_at seen>`` misses no row and sees none twice.

        Raises
        ------
        AuditLogError
            When the row cannot be written (disk full, duplicate id, ...).
        """
        values = asdict(record)
        for name in _JSON_COLUMNS:
            values[name] = json.dumps(values[name], separators=(",", ":"))
        marks = ", ".join([self._PARAM] * len(_COLUMNS))
        sql = f"INSERT INTO inspections ({', '.join(_COLUMNS)}) VALUES ({marks})"
        try:
            with self._lock:
                values["created_at"] = self._next_timestamp()
                self._conn.execute(sql, [values[name] for name in _COLUMNS])
        except sqlite3.Error as exc:
            raise AuditLogError(f"{self.path}: cannot write audit row {record.id}: {exc}") from exc
        return replace(record, created_at=values["created_at"])

    # -- reading ---------------------------------------------------------------------------

    def get(self, inspection_id: str) -> AuditRecord | None:
        """Return the row with this id, or ``None`` when there is none."""
        rows = self._select(f"WHERE id = {self._PARAM}", [inspection_id], limit=1)
        return rows[0] if rows else None

    def query(
        self, since: str | None = None, decision: str | None = None, limit: int = 50
    ) -> list[AuditRecord]:
        """Return the newest rows first, optionally filtered.

        Parameters
        ----------
        since : str, optional
            ISO-8601 time; only rows created strictly after it.
        decision : {"ok", "defect"}, optional
            Only rows with this decision.
        limit : int
            At most this many rows (1 to 1000).

        Raises
        ------
        AuditLogError
            On an unparsable ``since``, an unknown ``decision`` or ``limit`` out of range.
        """
        clauses: list[str] = []
        params: list[Any] = []
        if since:
            clauses.append(f"created_at > {self._PARAM}")
            params.append(parse_timestamp(since))
        if decision:
            if decision not in DECISIONS:
                raise AuditLogError(f"decision={decision!r} is not one of {', '.join(DECISIONS)}")
            clauses.append(f"decision = {self._PARAM}")
            params.append(decision)
        if not 1 <= limit <= 1000:
            raise AuditLogError(f"limit={limit} is out of range (1 to 1000)")
        where = ("WHERE " + " AND ".join(clauses)) if clauses else ""
        return self._select(where, params, limit=limit)

    def count(self) -> int:
        """Number of rows in the log."""
        with self._lock:
            return int(self._conn.execute("SELECT COUNT(*) FROM inspections").fetchone()[0])

    def _select(self, where: str, params: list[Any], limit: int) -> list[AuditRecord]:
        sql = (
            f"SELECT {', '.join(_COLUMNS)} FROM inspections {where} "
            f"ORDER BY seq DESC LIMIT {int(limit)}"
        )
        with self._lock:
            rows = self._conn.execute(sql, params).fetchall()
        return [_record_from_row(row) for row in rows]

    def close(self) -> None:
        """Close the connection (committed rows are already on disk)."""
        with self._lock:
            self._conn.close()


def _record_from_row(row: Mapping[str, Any]) -> AuditRecord:
    values = {name: row[name] for name in _COLUMNS}
    for name in _JSON_COLUMNS:
        values[name] = json.loads(values[name])
    return AuditRecord(**values)


def open_audit_log(target: str | Path) -> AuditLog:
    """Open the audit log named by a ``--db`` value.

    Parameters
    ----------
    target : str or Path
        Path of a SQLite file. URLs (``postgresql://...``) are where another store would be
        chosen; none ships yet, so they are refused with a clear message.

    Raises
    ------
    AuditLogError
        For a URL, a path in a folder that does not exist (it is not created: a typo must
        not leave a stray folder and an empty log), or a path that cannot be opened as a
        SQLite database.
    """
    text = str(target)
    if "://" in text:
        raise AuditLogError(
            f"--db {text}: only SQLite files are supported for now "
            "(see defectmap.serve.audit for how a PostgreSQL store plugs in)"
        )
    folder = Path(text).absolute().parent
    if not folder.is_dir():
        raise AuditLogError(f"{text}: the folder {folder} does not exist; create it first")
    return AuditLog(Path(text))
