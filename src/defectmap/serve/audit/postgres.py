"""The PostgreSQL audit backend (``--db postgresql://user@host/dbname``), through psycopg 3.

Same schema and migrations as SQLite (:mod:`defectmap.serve.audit.schema`). Several worker
processes, or several services, may share one database. Each insert first takes a
transaction-scoped advisory lock, so rows commit in ``seq`` order and a poller paging with
``after=`` never skips a row whose sequence number was drawn earlier but committed later.
An insert is a few hundred microseconds of server time, far below one inference, so this
single writer lane is not the service's bottleneck.

Needs the optional extra ``postgres`` (``pip install 'defectmap[postgres]'``).
"""

from __future__ import annotations

import re
from typing import Any

from defectmap.serve.audit.records import AuditLogError
from defectmap.serve.audit.schema import POSTGRES
from defectmap.serve.audit.store import AuditStore

__all__ = ["PostgresAuditLog", "redact_url"]

#: Advisory-lock key of the audit log's writer lane ("dmap" in ASCII).
_WRITE_LOCK = 0x646D6170
_PASSWORD = re.compile(r"(://[^:/@]*:)[^@]*@")


def redact_url(url: str) -> str:
    """``url`` with its password replaced by ``***``, for messages.

    Examples
    --------
    >>> redact_url("postgresql://line:s3cret@127.0.0.1:5432/audit")
    'postgresql://line:***@127.0.0.1:5432/audit'
    """
    return _PASSWORD.sub(r"\1***@", url)


class PostgresAuditLog(AuditStore):
    """The audit log in a PostgreSQL database.

    Parameters
    ----------
    url : str
        A libpq connection URL, ``postgresql://user[:password]@host[:port]/dbname``.

    Raises
    ------
    AuditLogError
        psycopg is not installed, or the server cannot be reached.
    """

    dialect = POSTGRES

    def __init__(self, url: str, connect_timeout: float = 10.0) -> None:
        try:
            import psycopg
        except ImportError as exc:
            raise AuditLogError(
                f"--db {redact_url(url)}: PostgreSQL needs psycopg; install it with "
                "pip install 'defectmap[postgres]'"
            ) from exc
        self._psycopg = psycopg
        self._errors = (psycopg.Error,)
        self.url = url
        self.connect_timeout = connect_timeout
        super().__init__(redact_url(url))

    def _connect(self) -> Any:
        return self._psycopg.connect(
            self.url, autocommit=True, connect_timeout=max(1, int(self.connect_timeout)))

    def _lock_writes(self, conn: Any) -> None:
        conn.execute("SELECT pg_advisory_xact_lock(%s)", [_WRITE_LOCK])

    def _is_disconnect(self, exc: BaseException) -> bool:
        return isinstance(exc, self._psycopg.OperationalError)

    def _is_unique_violation(self, exc: BaseException) -> bool:
        return isinstance(exc, self._psycopg.errors.UniqueViolation)

    def _has_table(self, conn: Any, name: str) -> bool:
        return conn.execute("SELECT to_regclass(%s)", [name]).fetchone()[0] is not None
