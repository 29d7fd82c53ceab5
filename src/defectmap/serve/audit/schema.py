"""The audit log's one schema and its migrations, for every backend.

The tables are written once, in plain SQL with three placeholders that each backend fills
(:class:`Dialect`): ``{serial}`` for the auto-increment row number, ``{float}`` for an 8-byte
float (SQLite ``REAL``, PostgreSQL ``DOUBLE PRECISION``: PostgreSQL's ``REAL`` is 4 bytes)
and ``{text}``. Parameters are written ``?`` and turned into the backend's style.

Migrations
----------
:data:`MIGRATIONS` is an append-only list: version ``i + 1`` is ``MIGRATIONS[i]``, applied in
order inside one transaction each and recorded in ``schema_migrations``. A database made
before migrations existed (round 1: the ``inspections`` table only) is at version 1, which
``CREATE TABLE IF NOT EXISTS`` leaves as it is. Never edit a released migration; add one.

1. ``inspections``: one row per decision (see :class:`~defectmap.serve.audit.AuditRecord`).
2. ``model_version`` and ``request_key`` on ``inspections`` (a unique index makes a
   client's ``Idempotency-Key`` answer once), the ``verdicts`` table (operators' verdicts,
   beside the decisions, never replacing them), and the index behind the drift check
   (passed parts of one model, newest first).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["LATEST_VERSION", "MIGRATIONS", "Dialect", "migration_sql"]


@dataclass(frozen=True)
class Dialect:
    """How one backend spells the few things the SQL of this package needs."""

    name: str
    param: str  # "?" (sqlite3) or "%s" (psycopg)
    serial: str  # the auto-increment primary key column type
    float: str  # an 8-byte float

    def sql(self, text: str) -> str:
        """``text`` with ``?`` parameters in this backend's style."""
        return text if self.param == "?" else text.replace("?", self.param)


SQLITE = Dialect("sqlite", "?", "INTEGER PRIMARY KEY AUTOINCREMENT", "REAL")
POSTGRES = Dialect("postgresql", "%s", "BIGSERIAL PRIMARY KEY", "DOUBLE PRECISION")

MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE IF NOT EXISTS inspections (
            seq {serial},
            id TEXT NOT NULL UNIQUE,
            created_at TEXT NOT NULL,
            filename TEXT NOT NULL,
            image_sha256 TEXT NOT NULL,
            width INTEGER NOT NULL,
            height INTEGER NOT NULL,
            score {float} NOT NULL,
            normalized_score {float},
            p_value {float},
            decision TEXT,
            thresholds TEXT NOT NULL,
            model_name TEXT NOT NULL,
            model_hash TEXT NOT NULL,
            elapsed_ms {float} NOT NULL,
            regions TEXT NOT NULL,
            image_path TEXT,
            heatmap_path TEXT,
            overlay_path TEXT
        )""",
        "CREATE INDEX IF NOT EXISTS inspections_created_at ON inspections (created_at)",
        "CREATE INDEX IF NOT EXISTS inspections_sha256 ON inspections (image_sha256)",
    ),
    (
        "ALTER TABLE inspections ADD COLUMN model_version TEXT",
        "ALTER TABLE inspections ADD COLUMN request_key TEXT",
        "CREATE UNIQUE INDEX inspections_request_key ON inspections (request_key)",
        "CREATE INDEX inspections_model_decision ON inspections (model_hash, decision, seq)",
        """CREATE TABLE verdicts (
            seq {serial},
            inspection_id TEXT NOT NULL REFERENCES inspections (id),
            created_at TEXT NOT NULL,
            verdict TEXT NOT NULL,
            operator TEXT NOT NULL,
            note TEXT NOT NULL
        )""",
        "CREATE INDEX verdicts_inspection ON verdicts (inspection_id, seq)",
    ),
)
LATEST_VERSION = len(MIGRATIONS)

#: The table that records which migrations ran (created before any of them).
VERSIONS_TABLE = """CREATE TABLE IF NOT EXISTS schema_migrations (
    version INTEGER PRIMARY KEY,
    applied_at TEXT NOT NULL
)"""


def migration_sql(version: int, dialect: Dialect) -> list[str]:
    """The statements of migration ``version`` (1-based) for ``dialect``."""
    return [
        statement.format(serial=dialect.serial, float=dialect.float)
        for statement in MIGRATIONS[version - 1]
    ]
