"""The audit store, the same tests on SQLite and on a real PostgreSQL server."""

from __future__ import annotations

import sqlite3
import threading
from dataclasses import replace
from pathlib import Path

import pytest

from defectmap.serve.audit import (
    AuditLog,
    AuditLogError,
    AuditQueryError,
    AuditRecord,
    UnknownInspectionError,
    Verdict,
    open_audit_log,
)
from defectmap.serve.audit.schema import LATEST_VERSION


def record(i: int, decision: str = "ok", model_hash: str = "h", **extra: object) -> AuditRecord:
    return AuditRecord(
        id=f"id{i}", created_at="", filename=f"{i}.png", image_sha256="0" * 64, width=4,
        height=3, score=float(i) + 0.125, normalized_score=None, p_value=None,
        decision=decision, thresholds={"image_threshold": 1.5}, model_name="m",
        model_hash=model_hash, elapsed_ms=1.0,
        regions=[{"bbox": [0, 0, 2, 2], "area": 4, "peak": 2.5}], **extra,  # type: ignore[arg-type]
    )


def test_roundtrip_order_and_filters(audit_db: str) -> None:
    log = open_audit_log(audit_db)
    assert log.schema_version() == LATEST_VERSION
    stored = [log.insert(record(i, "ok" if i % 2 else "defect")) for i in range(5)]
    assert [r.seq for r in stored] == sorted({r.seq for r in stored})
    stamps = [r.created_at for r in stored]
    assert stamps == sorted(set(stamps))  # strictly increasing within one process
    log.close()
    reopened = open_audit_log(audit_db)  # reopening keeps the rows and migrates nothing
    assert reopened.count() == 5
    assert reopened.get("id3") == stored[3]
    assert reopened.get("id3").score == 3.125  # 8-byte floats on both backends
    assert reopened.get("missing") is None
    # Live view: newest first; paging: ascending from a point.
    assert [r.id for r in reopened.query(decision="defect")] == ["id4", "id2", "id0"]
    assert [r.id for r in reopened.query(since=stored[2].created_at)] == ["id3", "id4"]
    assert [r.id for r in reopened.query(after=stored[1].seq, limit=2)] == ["id2", "id3"]
    with pytest.raises(AuditLogError, match="id1"):
        reopened.insert(record(1, "ok"))  # duplicate id
    assert reopened.count() == 5
    for bad in ({"since": "yesterday"}, {"decision": "maybe"}, {"limit": 0},
                {"limit": 1001}, {"after": -1}):
        with pytest.raises(AuditQueryError):
            reopened.query(**bad)  # type: ignore[arg-type]
    reopened.close()


def test_paging_forward_with_a_small_limit_misses_nothing(audit_db: str) -> None:
    """Issue 12 item 7: more rows than ``limit`` between two polls are all seen, once."""
    log = open_audit_log(audit_db)
    seen: list[str] = []
    cursor = 0
    written = 0
    for burst in (7, 0, 5, 11):  # rows arriving between two polls, up to ~4x the limit
        for _ in range(burst):
            log.insert(record(written))
            written += 1
        while True:
            page = log.query(after=cursor, limit=3)
            if not page:
                break
            assert len(page) <= 3
            seen.extend(r.id for r in page)
            cursor = page[-1].seq
    assert seen == [f"id{i}" for i in range(written)]

    # The same by time: since=<last created_at>, limit 3.
    since, by_time = "2000-01-01T00:00:00Z", []
    while page := log.query(since=since, limit=3):
        by_time.extend(r.id for r in page)
        since = page[-1].created_at
    assert by_time == seen
    log.close()


def test_concurrent_writers_commit_in_seq_order(audit_db: str) -> None:
    """Two connections (two worker processes' worth) write at once; a poller sees all."""
    logs = [open_audit_log(audit_db), open_audit_log(audit_db)]

    def write(k: int) -> None:
        for i in range(25):
            logs[k].insert(record(1000 * (k + 1) + i))

    threads = [threading.Thread(target=write, args=(k,)) for k in (0, 1)]
    for thread in threads:
        thread.start()
    polled: list[int] = []
    cursor = 0
    while any(t.is_alive() for t in threads) or cursor < 50:
        for row in logs[0].query(after=cursor, limit=4):
            polled.append(row.seq or 0)
            cursor = row.seq or 0
        if len(polled) == 50:
            break
    for thread in threads:
        thread.join()
    assert len(polled) == len(set(polled)) == 50
    assert polled == sorted(polled)
    for log in logs:
        log.close()


def test_verdicts_sit_beside_decisions(audit_db: str) -> None:
    log = open_audit_log(audit_db)
    log.insert(record(1, "defect"))
    log.insert(record(2, "ok"))
    first = log.add_verdict(Verdict("id1", "ok", " ana ", "label sticker, not a defect"))
    assert first.operator == "ana" and first.seq is not None and first.created_at
    second = log.add_verdict(Verdict("id1", "defect", "ben"))
    row = log.get("id1")
    assert row is not None
    assert row.decision == "defect"  # the model's decision is never overwritten
    assert [v.verdict for v in row.verdicts] == ["ok", "defect"]
    assert row.verdict == second and row.verdicts[0].note == "label sticker, not a defect"
    assert log.get("id2").verdicts == ()
    assert [r.id for r in log.judged()] == ["id1"]
    assert [v.operator for v in log.query()[1].verdicts] == ["ana", "ben"]
    with pytest.raises(UnknownInspectionError, match="nope"):
        log.add_verdict(Verdict("nope", "ok", "ana"))
    with pytest.raises(AuditQueryError, match="verdict"):
        log.add_verdict(Verdict("id1", "maybe", "ana"))
    with pytest.raises(AuditQueryError, match="operator"):
        log.add_verdict(Verdict("id1", "ok", "   "))
    assert len(log.get("id1").verdicts) == 2
    log.close()


def test_request_key_answers_once_and_passed_scores(audit_db: str) -> None:
    log = open_audit_log(audit_db)
    first = log.insert(record(1, request_key="k-1"))
    again = log.insert(replace(record(2), request_key="k-1"))  # a retry under a new id
    assert again == first and log.count() == 1
    assert log.get_by_key("k-1") == first and log.get_by_key("k-2") is None
    for i, decision in enumerate(["ok", "defect", "ok", "ok"], start=10):
        log.insert(record(i, decision, model_hash="m2"))
    log.insert(record(20, "ok", model_hash="other"))
    assert log.passed_scores("m2", 2) == [12.125, 13.125]  # newest two, oldest first
    assert log.passed_scores("m2", 10) == [10.125, 12.125, 13.125]
    log.close()


def test_round1_database_is_migrated_in_place(tmp_path: Path) -> None:
    """A database written before migrations existed keeps its rows and gains the new columns."""
    db = tmp_path / "old.sqlite3"
    old_schema = Path(__file__).with_name("data") / "audit_round1.sql"
    with sqlite3.connect(db) as conn:
        conn.executescript(old_schema.read_text())
    log = open_audit_log(db)
    assert log.schema_version() == LATEST_VERSION and log.count() == 2
    old = log.get("round1-b")
    assert old is not None and old.decision == "defect" and old.model_version is None
    assert old.regions == [{"bbox": [1, 2, 3, 4], "area": 4, "peak": 0.9}]
    new = log.insert(record(3))
    assert new.seq == 3
    log.add_verdict(Verdict("round1-b", "ok", "ana"))
    log.close()
    with sqlite3.connect(db) as conn:
        versions = [r[0] for r in conn.execute("SELECT version FROM schema_migrations")]
    assert versions == list(range(1, LATEST_VERSION + 1))


def test_open_errors(tmp_path: Path) -> None:
    with pytest.raises(AuditLogError, match="unknown database"):
        open_audit_log("mysql://db.example/audit")
    with pytest.raises(AuditLogError, match="folder"):
        AuditLog(tmp_path)  # a directory is not a database file
    with pytest.raises(AuditLogError, match="does not exist"):
        open_audit_log(tmp_path / "missing" / "audit.sqlite3")
    assert not (tmp_path / "missing").exists()
    garbage = tmp_path / "notes.sqlite3"
    garbage.write_bytes(b"not a database, just text " * 100)
    with pytest.raises(AuditLogError, match="notes.sqlite3.*cannot open"):
        AuditLog(garbage)
    with pytest.raises(AuditLogError, match=r"127\.0\.0\.1:1/.*cannot open"):
        open_audit_log("postgresql://nobody:pw@127.0.0.1:1/none")


def test_postgres_message_hides_the_password() -> None:
    pytest.importorskip("psycopg")
    with pytest.raises(AuditLogError) as caught:
        open_audit_log("postgresql://nobody:s3cret@127.0.0.1:1/none")
    assert "s3cret" not in str(caught.value) and "***" in str(caught.value)


def test_workers_starting_at_once_migrate_once(audit_db: str) -> None:
    """Four workers open a fresh database at the same moment: one migrates, all work."""
    barrier = threading.Barrier(4)
    logs: list[object] = []
    failures: list[BaseException] = []

    def start() -> None:
        barrier.wait()
        try:
            logs.append(open_audit_log(audit_db))
        except BaseException as exc:  # noqa: BLE001 - reported below
            failures.append(exc)

    threads = [threading.Thread(target=start) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert failures == [] and len(logs) == 4
    log = open_audit_log(audit_db)
    assert log.schema_version() == LATEST_VERSION
    rows = log._read("SELECT version FROM schema_migrations ORDER BY version")
    assert [r[0] for r in rows] == list(range(1, LATEST_VERSION + 1))
    for other in [*logs, log]:
        other.close()  # type: ignore[attr-defined]
