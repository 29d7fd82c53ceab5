"""Pydantic models of every JSON answer of the service, so that the OpenAPI schema is typed.

:meth:`InspectionOut.from_record` is the one JSON shape of an inspection (the answer of
``POST /v1/inspect`` and of ``GET /v1/inspections/{id}``).
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from defectmap.serve.audit import AuditRecord, Verdict

__all__ = [
    "DriftOut",
    "ErrorOut",
    "Health",
    "InspectionList",
    "InspectionOut",
    "Limits",
    "ModelInfo",
    "VerdictIn",
    "VerdictOut",
]


class RegionOut(BaseModel):
    """One predicted defect region (see ``defectmap.calibrate.Region``)."""

    bbox: list[int] = Field(description="[x0, y0, x1, y1] in pixels, end-exclusive.")
    area: int = Field(description="Number of pixels.")
    peak: float = Field(description="Largest raw anomaly score inside the region.")
    centroid: list[float] | None = Field(None, description="[x, y] mean column and row.")


class ModelRef(BaseModel):
    """The model that made a decision."""

    name: str
    hash: str = Field(description="SHA-256 over the model directory's files.")
    version: str | None = Field(
        None, description="Registry version id (first 16 hex digits of the hash); null for "
        "a model served from a plain folder.")


class VerdictIn(BaseModel):
    """An operator's verdict on one inspection."""

    model_config = ConfigDict(extra="forbid")

    verdict: Literal["ok", "defect"] = Field(description="What the part really is.")
    operator: str = Field(min_length=1, max_length=200, description="Who judged it.")
    note: str = Field("", max_length=2000)


class VerdictOut(BaseModel):
    """A stored verdict; the model's decision beside it is never changed."""

    inspection_id: str
    verdict: Literal["ok", "defect"]
    operator: str
    note: str
    created_at: str
    seq: int

    @classmethod
    def from_verdict(cls, verdict: Verdict) -> VerdictOut:
        return cls.model_validate(asdict(verdict))


class StoredFiles(BaseModel):
    """Files kept with ``--store-images``, relative to the database's folder (else null)."""

    image: str | None
    heatmap: str | None
    overlay: str | None


class Links(BaseModel):
    """Where to read this inspection and its pictures."""

    model_config = ConfigDict(populate_by_name=True)

    self_: str = Field(alias="self")
    heatmap: str
    overlay: str
    verdict: str = Field(description="POST an operator's verdict here.")


class InspectionOut(BaseModel):
    """One inspection as logged: the decision and everything needed to trace it."""

    id: str
    seq: int = Field(description="Ascending row number of the log: page with after=<seq>.")
    created_at: str = Field(description="UTC time the row was committed, ISO 8601.")
    filename: str
    image_sha256: str = Field(description="SHA-256 of the uploaded bytes.")
    width: int
    height: int
    score: float = Field(description="Raw anomaly score (higher = more anomalous).")
    normalized_score: float | None = Field(description="In (0, 1), 0.5 at the threshold.")
    p_value: float | None = Field(description="Conformal p-value against good images.")
    decision: Literal["ok", "defect"] | None
    thresholds: dict[str, Any] = Field(description="The calibration in force.")
    elapsed_ms: float = Field(description="Decode + inference time.")
    regions: list[RegionOut]
    model: ModelRef
    verdict: VerdictOut | None = Field(description="The latest operator verdict, if any.")
    verdicts: list[VerdictOut] = Field(description="Every verdict, oldest first.")
    stored: StoredFiles
    links: Links

    @classmethod
    def from_record(cls, record: AuditRecord) -> InspectionOut:
        """The answer for one audit row."""
        body = asdict(record)
        body.pop("request_key")
        base = f"/v1/inspections/{record.id}"
        body["model"] = {"name": body.pop("model_name"), "hash": body.pop("model_hash"),
                         "version": body.pop("model_version")}
        body["verdict"] = body["verdicts"][-1] if body["verdicts"] else None
        body["stored"] = {
            "image": body.pop("image_path"),
            "heatmap": body.pop("heatmap_path"),
            "overlay": body.pop("overlay_path"),
        }
        body["links"] = {"self": base, "heatmap": f"{base}/heatmap.png",
                         "overlay": f"{base}/overlay.png", "verdict": f"{base}/verdict"}
        return cls.model_validate(body)


class InspectionList(BaseModel):
    """A page of the audit trail: newest first, or ascending when paging forward."""

    inspections: list[InspectionOut]
    count: int
    next_after: int | None = Field(
        description="Pass as after= to get the rows that follow (ascending, none missed); "
        "null when the page is empty.")


class Limits(BaseModel):
    """Uploads over these limits are refused with 413."""

    max_upload_bytes: int
    max_pixels: int


class ModelInfo(BaseModel):
    """The served model."""

    name: str
    hash: str
    version: str | None
    runtime: str = Field(description="Inference runtime: torch, onnxruntime or openvino.")
    thresholds: dict[str, Any]
    limits: Limits
    description: dict[str, Any] = Field(
        description="Detector, params, calibration and training summary."
    )


class Health(BaseModel):
    """Liveness: the model is loaded and the audit database answers."""

    status: Literal["ok"]
    model: str
    model_version: str | None
    inspections: int = Field(description="Rows in the audit log.")
    token_required: bool
    reload_error: str | None = Field(
        description="Why the registry's new current version is not served (the previous "
        "one still is); null when all is well.")


class DriftOut(BaseModel):
    """The drift check of passed parts against calibration (an exact beta-binomial test)."""

    status: Literal["ok", "alarm", "collecting", "uncalibrated"]
    alarm: bool
    p_value: float | None = Field(description="Two-sided; the alarm is p_value < alpha.")
    n_parts: int = Field(description="Passed parts in the window.")
    n_above: int = Field(description="How many scored above reference_score.")
    expected_share: float | None
    observed_share: float | None
    reference_score: float | None
    window: int
    alpha: float = Field(description="False-alarm rate per check under no drift.")
    direction: Literal["up", "down"] | None
    model_version: str | None
    test: str = Field(description="The test, in words.")


class ErrorOut(BaseModel):
    """Every error answer."""

    error: str = Field(description="Machine-readable code, e.g. 'not_an_image'.")
    detail: str = Field(description="One sentence naming the problem.")
