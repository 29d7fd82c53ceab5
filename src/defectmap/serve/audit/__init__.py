"""The audit log of the inspection service: one row per decision, with operators' verdicts.

Every decision the service returns is first committed here, so a decision that reached a
client is always traceable: time, the SHA-256 of the uploaded bytes, file name, raw and
normalised score, p-value, decision, the thresholds in force, the model hash and registry
version, the time the inspection took, the detected regions (JSON) and, when the service
stores files, the paths of the stored input image, heatmap and overlay (relative to the
store's ``files_root``). Operators' verdicts live in their own table beside the decisions;
nothing is ever updated or deleted.

* :mod:`~defectmap.serve.audit.records`: the row types and timestamps.
* :mod:`~defectmap.serve.audit.schema`: the one schema and its migrations.
* :mod:`~defectmap.serve.audit.store`: the logic, over any DB-API connection.
* :mod:`~defectmap.serve.audit.sqlite` (default) and :mod:`~defectmap.serve.audit.postgres`.

:func:`open_audit_log` maps a ``--db`` value to its backend.
"""

from __future__ import annotations

from pathlib import Path

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
from defectmap.serve.audit.sqlite import SQLiteAuditLog
from defectmap.serve.audit.store import AuditStore

__all__ = [
    "DECISIONS",
    "VERDICTS",
    "AuditLog",
    "AuditLogError",
    "AuditQueryError",
    "AuditRecord",
    "AuditStore",
    "AuditUnavailableError",
    "UnknownInspectionError",
    "Verdict",
    "files_root",
    "format_timestamp",
    "is_url",
    "open_audit_log",
    "parse_timestamp",
]

#: The default backend, under its round-1 name.
AuditLog = SQLiteAuditLog
_URL_SCHEMES = ("postgresql://", "postgres://")


def is_url(target: str | Path) -> bool:
    """Whether a ``--db`` value is a URL rather than a SQLite file path."""
    return "://" in str(target)


def open_audit_log(target: str | Path) -> AuditStore:
    """Open the audit log named by a ``--db`` value (migrating its schema if needed).

    Parameters
    ----------
    target : str or Path
        A SQLite file path, or a ``postgresql://user[:password]@host[:port]/dbname`` URL.

    Raises
    ------
    AuditLogError
        An unknown URL scheme, a missing folder, a file that is not a SQLite database, a
        PostgreSQL server that cannot be reached, or a schema newer than this version's.
    """
    text = str(target)
    if text.startswith(_URL_SCHEMES):
        from defectmap.serve.audit.postgres import PostgresAuditLog

        return PostgresAuditLog(text)
    if is_url(text):
        raise AuditLogError(
            f"--db {text.split('://', 1)[0]}://...: unknown database; give a SQLite file "
            "path or a postgresql:// URL")
    return SQLiteAuditLog(Path(text))


def files_root(store: AuditStore) -> Path:
    """The folder that stored file paths of ``store`` are relative to.

    A SQLite log's own folder; for a server database, the current folder of the process.
    """
    if isinstance(store, SQLiteAuditLog):
        return store.path.parent
    return Path.cwd()
