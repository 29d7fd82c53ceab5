"""HTTP inspection service: logic, routes, answer schemas, bind policy, page and audit log.

* :mod:`~defectmap.serve.service`: :class:`InspectionService`, the logic without HTTP.
* :mod:`~defectmap.serve.routes`: :func:`create_app`, the FastAPI routes around it, the
  bearer token (FastAPI's ``HTTPBearer``) and the body-size limit.
* :mod:`~defectmap.serve.schemas`: pydantic models of every answer (a typed OpenAPI schema).
* :mod:`~defectmap.serve.policy`: who may connect (loopback, token).
* :mod:`~defectmap.serve.audit`: the SQLite audit log.

Start it with ``defectmap serve MODEL_DIR`` or build the app in Python with
:func:`create_app` and run it with any ASGI server. Imports no torch until a model is loaded.
"""

from __future__ import annotations

from defectmap.serve.audit import AuditLog, AuditLogError, AuditRecord, open_audit_log
from defectmap.serve.policy import check_exposure, is_loopback
from defectmap.serve.routes import create_app
from defectmap.serve.service import InspectionService

__all__ = [
    "AuditLog",
    "AuditLogError",
    "AuditRecord",
    "InspectionService",
    "check_exposure",
    "create_app",
    "is_loopback",
    "open_audit_log",
]
