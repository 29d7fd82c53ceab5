"""The audit store's logic over any DB-API 2 connection; the backends only connect.

:class:`AuditStore` holds one connection per process, guarded by one lock (the service's
thread pool shares it), in autocommit mode with explicit transactions. Every write is one
short transaction; :meth:`AuditStore.insert` returns only once its row is committed, so a
decision that reached a client is always in the log.

Paging
------
``seq`` is the log's ascending row number. It is assigned in commit order: SQLite has one
writer at a time, and the PostgreSQL backend takes a transaction-scoped advisory lock before
each insert (a sequence value alone may commit after a larger one). So a poller that asks for
``after=<last seq seen>`` with any ``limit`` sees every row exactly once, whatever arrived
between two polls; ``since=<time>`` pages the same way from a point in time.

Failures
--------
A failed operation raises :class:`AuditUnavailableError` (the service answers 503) and drops
the connection; the next call reconnects, so the service resumes by itself once the disk has
room again, the database is writable again or the server is back.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from defectmap.serve.audit.records import (
    DECISIONS,
    VERDICTS,
    AuditLogError,
    AuditQueryError,
    AuditRecord,
    AuditUnavailableError,
    UnknownInspectionError,
    Verdict,
    format_timestamp,
    parse_timestamp,
)
from defectmap.serve.audit.schema import LATEST_VERSION, VERSIONS_TABLE, Dialect, migration_sql

__all__ = ["MAX_LIMIT", "AuditStore"]

MAX_LIMIT = 1000
_STORED = tuple(n for n in AuditRecord.__dataclass_fields__ if n not in ("seq", "verdicts"))
_COLUMNS = ("seq", *_STORED)
_JSON_COLUMNS = ("thresholds", "regions")
_VERDICT_COLUMNS = ("seq", "inspection_id", "created_at", "verdict", "operator", "note")
_MAX_OPERATOR, _MAX_NOTE = 200, 2000


class AuditStore:
    """Append-only store of decisions and verdicts, one schema on every backend.

    Subclasses set :attr:`dialect` and implement :meth:`_connect`, :meth:`_lock_writes`,
    :meth:`_is_unique_violation` and :attr:`_errors`. Construction connects and migrates the
    schema to :data:`~defectmap.serve.audit.schema.LATEST_VERSION`.

    Attributes
    ----------
    location : str
        Where the database is, for messages (a path, or a URL without its password).
    """

    dialect: Dialect
    _errors: tuple[type[BaseException], ...]

    def __init__(self, location: str) -> None:
        self.location = location
        self._lock = threading.Lock()
        self._conn: Any = None
        self._last_time: datetime | None = None
        try:
            with self._lock:
                conn = self._connection()
                self._migrate(conn)
                last = conn.execute("SELECT MAX(created_at) FROM inspections").fetchone()[0]
        except self._errors as exc:
            self._drop()
            raise AuditUnavailableError(
                f"{location}: cannot open the audit database: {_oneline(exc)}") from exc
        if last is not None:
            self._last_time = datetime.fromisoformat(str(last)).astimezone(UTC)

    # -- for backends -------------------------------------------------------------------------

    def _connect(self) -> Any:
        """A new DB-API connection in autocommit mode."""
        raise NotImplementedError

    def _lock_writes(self, conn: Any) -> None:
        """Inside a transaction: make this writer the only one until commit."""
        raise NotImplementedError

    def _is_unique_violation(self, exc: BaseException) -> bool:
        raise NotImplementedError

    def _begin(self) -> str:
        return "BEGIN"

    def _is_disconnect(self, exc: BaseException) -> bool:
        """Whether ``exc`` means the connection is gone (worth one reconnect and retry)."""
        return False

    # -- connection and transactions ----------------------------------------------------------

    def _connection(self) -> Any:
        # Called with ``self._lock`` held.
        if self._conn is None:
            self._conn = self._connect()
        return self._conn

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception:  # noqa: BLE001 - a broken connection may fail to close
                pass

    @contextmanager
    def _write(self) -> Iterator[Any]:
        """One write transaction (lock held): yields the connection, commits at the end."""
        with self._lock:
            conn = self._connection()
            conn.execute(self._begin())
            try:
                self._lock_writes(conn)
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                try:
                    conn.execute("ROLLBACK")
                except Exception:  # noqa: BLE001 - the original error matters
                    self._drop()
                raise

    def _read(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        for attempt in (1, 2):
            try:
                with self._lock:
                    conn = self._connection()
                    rows = conn.execute(self.dialect.sql(sql), list(params)).fetchall()
                return [tuple(row) for row in rows]
            except self._errors as exc:
                with self._lock:
                    self._drop()
                if attempt == 1 and self._is_disconnect(exc):
                    continue  # a stale connection (server restarted): reconnect once
                raise AuditUnavailableError(
                    f"{self.location}: cannot read the audit log: {_oneline(exc)}") from exc
        raise AssertionError("unreachable")

    def _migrate(self, conn: Any) -> None:
        conn.execute(self._begin())
        try:
            self._lock_writes(conn)  # two workers starting at once migrate one after another
            conn.execute(VERSIONS_TABLE)  # inside the lock: IF NOT EXISTS alone can race
            applied = {int(r[0]) for r in conn.execute(
                "SELECT version FROM schema_migrations").fetchall()}
            if not applied and self._has_table(conn, "inspections"):
                applied = {1}  # a round-1 database: version 1 without the record of it
                self._record_version(conn, 1)
            if applied and max(applied) > LATEST_VERSION:
                raise AuditLogError(
                    f"{self.location}: audit schema version {max(applied)} is newer than this "
                    f"defectmap's {LATEST_VERSION}; upgrade defectmap"
                )
            for version in range(1, LATEST_VERSION + 1):
                if version not in applied:
                    for statement in migration_sql(version, self.dialect):
                        conn.execute(statement)
                    self._record_version(conn, version)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def _record_version(self, conn: Any, version: int) -> None:
        conn.execute(self.dialect.sql(
            "INSERT INTO schema_migrations (version, applied_at) VALUES (?, ?)"),
            [version, format_timestamp(datetime.now(UTC))])

    def _has_table(self, conn: Any, name: str) -> bool:
        raise NotImplementedError

    def schema_version(self) -> int:
        """The highest migration applied to this database."""
        return int(self._read("SELECT MAX(version) FROM schema_migrations")[0][0])

    def _next_timestamp(self) -> str:
        # Called with ``self._lock`` held: strictly increasing within this process.
        now = datetime.now(UTC)
        if self._last_time is not None and now <= self._last_time:
            now = self._last_time + timedelta(microseconds=1)
        self._last_time = now
        return format_timestamp(now)

    # -- writing --------------------------------------------------------------------------------

    def insert(self, record: AuditRecord) -> AuditRecord:
        """Commit one row and return it as stored (with ``seq`` and ``created_at``).

        Returns only once the row is durable. A ``request_key`` already in the log returns
        the row stored under it (see :meth:`get_by_key`) instead of a second row.

        Raises
        ------
        AuditLogError
            A duplicate ``id``.
        AuditUnavailableError
            The row cannot be written (disk full, read-only database, server gone).
        """
        values = asdict(record)
        for name in _JSON_COLUMNS:
            values[name] = json.dumps(values[name], separators=(",", ":"))
        marks = ", ".join("?" * len(_STORED))
        sql = self.dialect.sql(
            f"INSERT INTO inspections ({', '.join(_STORED)}) VALUES ({marks}) RETURNING seq")
        for attempt in (1, 2):
            try:
                with self._write() as conn:
                    values["created_at"] = self._next_timestamp()
                    seq = conn.execute(sql, [values[name] for name in _STORED]).fetchone()[0]
                return replace(record, created_at=values["created_at"], seq=int(seq))
            except self._errors as exc:
                if self._is_unique_violation(exc):
                    # A retry whose first commit went through, or a client's repeated key.
                    earlier = self.get(record.id) if attempt == 2 else None
                    if earlier is None and record.request_key is not None:
                        earlier = self.get_by_key(record.request_key)
                    if earlier is not None:
                        return earlier
                    raise AuditLogError(f"{self.location}: cannot write audit row "
                                        f"{record.id}: {_oneline(exc)}") from exc
                with self._lock:
                    self._drop()
                if attempt == 1 and self._is_disconnect(exc):
                    continue
                raise AuditUnavailableError(f"{self.location}: cannot write audit row "
                                            f"{record.id}: {_oneline(exc)}") from exc
        raise AssertionError("unreachable")

    def add_verdict(self, verdict: Verdict) -> Verdict:
        """Store an operator's verdict beside its inspection's decision; return it as stored.

        Raises
        ------
        AuditQueryError
            An unknown verdict word, an empty or too long operator name, a too long note.
        UnknownInspectionError
            No inspection has ``verdict.inspection_id``.
        AuditUnavailableError
            The database cannot be written.
        """
        if verdict.verdict not in VERDICTS:
            raise AuditQueryError(
                f"verdict={verdict.verdict!r} is not one of {', '.join(VERDICTS)}")
        operator = verdict.operator.strip()
        if not operator or len(operator) > _MAX_OPERATOR:
            raise AuditQueryError(f"operator must name who judged, 1 to {_MAX_OPERATOR} "
                                  "characters")
        if len(verdict.note) > _MAX_NOTE:
            raise AuditQueryError(f"note is longer than {_MAX_NOTE} characters")
        sql = self.dialect.sql(
            "INSERT INTO verdicts (inspection_id, created_at, verdict, operator, note) "
            "SELECT id, ?, ?, ?, ? FROM inspections WHERE id = ? RETURNING seq")
        try:
            with self._write() as conn:
                created = self._next_timestamp()
                row = conn.execute(sql, [created, verdict.verdict, operator, verdict.note,
                                         verdict.inspection_id]).fetchone()
        except self._errors as exc:
            # Not retried: a verdict whose commit went through would be stored twice.
            with self._lock:
                self._drop()
            raise AuditUnavailableError(
                f"{self.location}: cannot write the verdict on {verdict.inspection_id}: "
                f"{_oneline(exc)}") from exc
        if row is None:
            raise UnknownInspectionError(f"no inspection with id {verdict.inspection_id!r}")
        return replace(verdict, operator=operator, created_at=created, seq=int(row[0]))

    # -- reading ----------------------------------------------------------------------------------

    def get(self, inspection_id: str) -> AuditRecord | None:
        """The row with this id (with its verdicts), or ``None``."""
        rows = self._select("WHERE id = ?", [inspection_id], "seq", 1)
        return rows[0] if rows else None

    def get_by_key(self, request_key: str) -> AuditRecord | None:
        """The row stored for a client's ``Idempotency-Key``, or ``None``."""
        rows = self._select("WHERE request_key = ?", [request_key], "seq", 1)
        return rows[0] if rows else None

    def query(
        self,
        since: str | None = None,
        decision: str | None = None,
        limit: int = 50,
        after: int | None = None,
    ) -> list[AuditRecord]:
        """Rows of the log, optionally filtered.

        Without ``since`` and ``after``: the newest ``limit`` rows, newest first (a live view).
        With either: the oldest ``limit`` rows past that point, in ascending ``seq`` (a page
        forward; pass the last row's ``seq`` as ``after`` to get the next page).

        Parameters
        ----------
        since : str, optional
            ISO-8601 time; only rows created strictly after it.
        decision : {"ok", "defect"}, optional
            Only rows with this decision.
        limit : int
            At most this many rows (1 to 1000).
        after : int, optional
            Only rows with ``seq`` strictly above it (>= 0).

        Raises
        ------
        AuditQueryError
            An unparsable ``since``, an unknown ``decision``, ``limit`` or ``after`` out of
            range.
        """
        clauses: list[str] = []
        params: list[Any] = []
        if since:
            clauses.append("created_at > ?")
            params.append(parse_timestamp(since))
        if after is not None:
            if after < 0:
                raise AuditQueryError(f"after={after} must be >= 0 (a seq of the log)")
            clauses.append("seq > ?")
            params.append(int(after))
        if decision:
            if decision not in DECISIONS:
                raise AuditQueryError(
                    f"decision={decision!r} is not one of {', '.join(DECISIONS)}")
            clauses.append("decision = ?")
            params.append(decision)
        if not 1 <= limit <= MAX_LIMIT:
            raise AuditQueryError(f"limit={limit} is out of range (1 to {MAX_LIMIT})")
        where = ("WHERE " + " AND ".join(clauses)) if clauses else ""
        forward = bool(since) or after is not None
        return self._select(where, params, "seq" if forward else "seq DESC", limit)

    def judged(self) -> list[AuditRecord]:
        """Every inspection an operator gave a verdict on, oldest first, with its verdicts."""
        return self._select("WHERE id IN (SELECT inspection_id FROM verdicts)", [], "seq", None)

    def passed_scores(self, model_hash: str, limit: int) -> list[float]:
        """Scores of the newest ``limit`` parts that ``model_hash`` passed, oldest first."""
        rows = self._read(
            "SELECT score FROM inspections WHERE model_hash = ? AND decision = 'ok' "
            f"ORDER BY seq DESC LIMIT {int(limit)}", [model_hash])
        return [float(r[0]) for r in reversed(rows)]

    def count(self) -> int:
        """Number of inspections in the log."""
        return int(self._read("SELECT COUNT(*) FROM inspections")[0][0])

    def _select(
        self, where: str, params: list[Any], order: str, limit: int | None
    ) -> list[AuditRecord]:
        tail = "" if limit is None else f" LIMIT {int(limit)}"
        rows = self._read(
            f"SELECT {', '.join(_COLUMNS)} FROM inspections {where} ORDER BY {order}{tail}",
            params)
        records = [_record_from_row(row) for row in rows]
        if not records:
            return records
        verdicts: dict[str, list[Verdict]] = {}
        ids = [r.id for r in records]
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            found = self._read(
                f"SELECT {', '.join(_VERDICT_COLUMNS)} FROM verdicts WHERE inspection_id IN "
                f"({', '.join('?' * len(chunk))}) ORDER BY seq", chunk)
            for seq, inspection_id, created, word, operator, note in found:
                verdicts.setdefault(inspection_id, []).append(
                    Verdict(inspection_id, word, operator, note, created, int(seq)))
        return [replace(r, verdicts=tuple(verdicts.get(r.id, ()))) for r in records]

    def close(self) -> None:
        """Close the connection (committed rows are already durable)."""
        with self._lock:
            self._drop()


def _oneline(exc: BaseException) -> str:
    """A driver's message on one line (libpq's span several, with hints)."""
    return " ".join(str(exc).split())


def _record_from_row(row: tuple[Any, ...]) -> AuditRecord:
    values = dict(zip(_COLUMNS, row, strict=True))
    for name in _JSON_COLUMNS:
        values[name] = json.loads(values[name])
    values["seq"] = int(values["seq"])
    return AuditRecord(**values)
