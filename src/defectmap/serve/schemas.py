"""Pydantic models of every JSON answer of the service, so that the OpenAPI schema is typed.

:meth:`InspectionOut.from_record` is the one JSON shape of an inspection (the answer of
``POST /v1/inspect`` and of ``GET /v1/inspections/{id}``).
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from defectmap.serve.audit import AuditRecord

__all__ = [
    "ErrorOut",
    "Health",
    "InspectionList",
    "InspectionOut",
    "Limits",
    "ModelInfo",
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


class InspectionOut(BaseModel):
    """One inspection as logged: the decision and everything needed to trace it."""

    id: str
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
    stored: StoredFiles
    links: Links

    @classmethod
    def from_record(cls, record: AuditRecord) -> InspectionOut:
        """The answer for one audit row."""
        body = asdict(record)
        base = f"/v1/inspections/{record.id}"
        body["model"] = {"name": body.pop("model_name"), "hash": body.pop("model_hash")}
        body["stored"] = {
            "image": body.pop("image_path"),
            "heatmap": body.pop("heatmap_path"),
            "overlay": body.pop("overlay_path"),
        }
        body["links"] = {"self": base, "heatmap": f"{base}/heatmap.png",
                         "overlay": f"{base}/overlay.png"}
        return cls.model_validate(body)


class InspectionList(BaseModel):
    """A page of the audit trail, newest first."""

    inspections: list[InspectionOut]
    count: int


class Limits(BaseModel):
    """Uploads over these limits are refused with 413."""

    max_upload_bytes: int
    max_pixels: int


class ModelInfo(BaseModel):
    """The served model."""

    name: str
    hash: str
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
    inspections: int = Field(description="Rows in the audit log.")
    token_required: bool


class ErrorOut(BaseModel):
    """Every error answer."""

    error: str = Field(description="Machine-readable code, e.g. 'not_an_image'.")
    detail: str = Field(description="One sentence naming the problem.")
