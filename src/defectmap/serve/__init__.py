"""HTTP inspection service: FastAPI app, its web page and its SQLite audit log.

Start it with ``defectmap serve MODEL_DIR`` or build the app in Python with
:func:`create_app` and run it with any ASGI server.
"""

from __future__ import annotations

from defectmap.serve.app import InspectionService, create_app
from defectmap.serve.audit import AuditLog, AuditLogError, AuditRecord, open_audit_log

__all__ = [
    "AuditLog",
    "AuditLogError",
    "AuditRecord",
    "InspectionService",
    "create_app",
    "open_audit_log",
]
