"""What the audit log stores: decisions (:class:`AuditRecord`), operator verdicts
(:class:`Verdict`), and the fixed-width UTC timestamps both carry."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from defectmap.errors import DefectmapError

__all__ = [
    "DECISIONS",
    "VERDICTS",
    "AuditLogError",
    "AuditQueryError",
    "AuditRecord",
    "AuditUnavailableError",
    "UnknownInspectionError",
    "Verdict",
    "format_timestamp",
    "parse_timestamp",
]

DECISIONS = ("ok", "defect")
#: What an operator may say about a part: the same two words as the model's decisions.
VERDICTS = DECISIONS


class AuditLogError(DefectmapError, ValueError):
    """The audit database cannot be opened or written, or a query is invalid."""


class AuditQueryError(AuditLogError):
    """A query value is invalid (bad ``since``, ``decision``, ``limit``, verdict, ...)."""


class AuditUnavailableError(AuditLogError):
    """The database cannot be reached or written (disk full, read-only, server down)."""


class UnknownInspectionError(AuditQueryError, KeyError):
    """No inspection has this id."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


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
        raise AuditQueryError(
            f"since={text!r} is not an ISO-8601 time (e.g. 2026-11-29T00:30:00Z)"
        ) from exc
    return format_timestamp(moment)


@dataclass(frozen=True)
class Verdict:
    """An operator's word on one inspection; stored beside the decision, never replacing it.

    ``verdict`` is ``"ok"`` (the part is good) or ``"defect"``; ``operator`` names who said
    it; ``created_at`` and ``seq`` are set by the log.
    """

    inspection_id: str
    verdict: str
    operator: str
    note: str = ""
    created_at: str = ""
    seq: int | None = None


@dataclass(frozen=True)
class AuditRecord:
    """One decision as stored in the log (the service's JSON is built from it).

    ``regions`` is a list of :meth:`defectmap.calibrate.Region.to_dict` dicts (``bbox``, ``area``,
    ``peak``, ``centroid``);
    ``thresholds`` maps threshold names to values (empty without calibration); the ``*_path``
    fields are relative to the database's folder, or ``None`` when nothing was stored.
    ``model_version`` is the registry version that decided (None for a model served from a
    plain folder); ``request_key`` the client's ``Idempotency-Key`` (None without one);
    ``seq`` the log's ascending row number (set on insert); ``verdicts`` the operators'
    verdicts on it, oldest first (filled when read).
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
    model_version: str | None = None
    request_key: str | None = None
    seq: int | None = None
    verdicts: tuple[Verdict, ...] = ()

    @property
    def verdict(self) -> Verdict | None:
        """The latest verdict, or None when no operator has judged this part."""
        return self.verdicts[-1] if self.verdicts else None
