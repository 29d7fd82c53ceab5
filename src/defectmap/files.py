"""Atomic file writing for every layer: a file is either the old one or the complete new one."""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["make_temp_dir", "to_jsonable", "write_bytes", "write_text", "write_json"]

# mkstemp/mkdtemp create files and folders for the owner only; outputs get the usual
# permissions.
_UMASK = os.umask(0o022)
os.umask(_UMASK)


def to_jsonable(value: Any) -> Any:
    """Turn NumPy scalars/arrays and Paths into JSON types; NaN and inf become ``None``.

    Examples
    --------
    >>> to_jsonable({"a": np.float32(0.5), "b": [np.int64(2), float("nan")]})
    {'a': 0.5, 'b': [2, None]}
    """
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return [to_jsonable(v) for v in value.tolist()]
    if isinstance(value, np.bool_ | bool):
        return bool(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, float | np.floating):
        return float(value) if math.isfinite(float(value)) else None
    if isinstance(value, Path):
        return str(value)
    return value


def make_temp_dir(parent: str | Path, prefix: str, suffix: str = "") -> Path:
    """Create a new empty folder in ``parent`` (``tempfile.mkdtemp``) with the usual permissions.

    Meant for outputs built under a temporary name and then renamed into place, which must
    not stay owner-only as ``mkdtemp`` makes them.
    """
    tmp = Path(tempfile.mkdtemp(dir=parent, prefix=prefix, suffix=suffix))
    os.chmod(tmp, 0o777 & ~_UMASK)
    return tmp


def write_bytes(path: str | Path, payload: bytes) -> None:
    """Write ``payload`` to ``path`` through a temporary sibling file and ``os.replace``."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(payload)
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text(path: str | Path, text: str) -> None:
    """Write UTF-8 ``text`` atomically (see :func:`write_bytes`)."""
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str | Path, payload: Any) -> None:
    """Write ``payload`` as indented, strict JSON (see :func:`to_jsonable`) atomically."""
    text = json.dumps(to_jsonable(payload), indent=2, allow_nan=False) + "\n"
    write_text(path, text)
