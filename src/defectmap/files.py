"""Atomic file writing for every layer: a file is either the old one or the complete new one."""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from defectmap.errors import DefectmapError

__all__ = [
    "atomic_output_dir",
    "make_temp_dir",
    "to_jsonable",
    "write_bytes",
    "write_json",
    "write_text",
]

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


@contextmanager
def atomic_output_dir(out_dir: str | Path, marker: str | None) -> Iterator[Path]:
    """Yield a temporary folder beside ``out_dir``; on success it replaces ``out_dir``.

    On any exception, ``KeyboardInterrupt`` included, the temporary folder is deleted and an
    existing ``out_dir`` is left untouched. An existing non-empty ``out_dir`` is only
    replaced when it contains ``marker`` (it is then an earlier output of the same kind),
    so a typo in ``--out`` cannot wipe an unrelated folder.

    Raises
    ------
    DefectmapError
        ``out_dir`` is a file, or a non-empty folder without ``marker``.
    """
    out = Path(out_dir).absolute()
    if out.exists() and not out.is_dir():
        raise DefectmapError(f"{out}: exists and is not a folder; choose another --out")
    if out.is_dir() and any(out.iterdir()) and marker is not None and not (out / marker).exists():
        raise DefectmapError(
            f"{out}: folder exists, is not empty and holds no {marker} (not an earlier "
            "output); refusing to replace it, choose another --out"
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = make_temp_dir(out.parent, prefix=f".{out.name}.tmp-")
    try:
        yield tmp
        if out.exists():
            old = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.old-"))
            os.replace(out, old / out.name)
            try:
                os.replace(tmp, out)
            except BaseException:
                os.replace(old / out.name, out)  # put the previous output back
                shutil.rmtree(old, ignore_errors=True)
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
