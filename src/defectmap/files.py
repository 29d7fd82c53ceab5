"""Files and folders for every layer: atomic writes, the one directory swap, hashing.

A file or an output folder is either the old one or the complete new one: files are written
to a temporary sibling and ``os.replace``-d (:func:`write_bytes`), folders are built under a
temporary name (:func:`make_temp_dir`, :func:`atomic_output_dir`) and swapped in by
:func:`replace_dir`. Imports no torch.
"""

from __future__ import annotations

import hashlib
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
    "check_replaceable",
    "make_temp_dir",
    "replace_dir",
    "sha256_file",
    "sha256_tree",
    "to_jsonable",
    "write_bytes",
    "write_json",
    "write_text",
]

# mkstemp/mkdtemp create files and folders for the owner only; outputs get the usual
# permissions.
_UMASK = os.umask(0o022)
os.umask(_UMASK)
_CHUNK = 1 << 20


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


# --------------------------------------------------------------------------- folders


def check_replaceable(target: str | Path, marker: str | None) -> None:
    """Refuse to replace ``target`` unless it is missing, empty, or an earlier output.

    An earlier output of the same kind holds ``marker`` (``metrics.json``, ``model.json``,
    ...); ``marker=None`` accepts any folder. Call it before long work, so that a typo in
    ``--out`` fails at once.

    Raises
    ------
    DefectmapError
        ``target`` is a file, or a non-empty folder without ``marker``.
    """
    out = Path(target)
    if out.exists() and not out.is_dir():
        raise DefectmapError(f"{out}: exists and is not a folder; choose another --out")
    if out.is_dir() and marker is not None and any(out.iterdir()) and not (out / marker).exists():
        raise DefectmapError(
            f"{out}: folder exists, is not empty and holds no {marker} (not an earlier "
            "output); refusing to replace it, choose another --out"
        )


def replace_dir(new: str | Path, target: str | Path) -> None:
    """Rename the complete folder ``new`` to ``target``, replacing an existing ``target``.

    The one directory swap of the project. ``new`` must be a sibling of ``target`` (same
    file system). An existing ``target`` is first renamed to a hidden backup beside it; if
    the second rename fails, the backup is put back, so ``target`` is never lost. The
    backup is deleted once ``new`` is in place.
    """
    new, target = Path(new), Path(target)
    if not target.exists():
        os.replace(new, target)
        return
    holder = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.old-"))
    backup = holder / target.name
    os.replace(target, backup)
    try:
        os.replace(new, target)
    except BaseException:
        os.replace(backup, target)  # put the previous folder back
        shutil.rmtree(holder, ignore_errors=True)
        raise
    shutil.rmtree(holder, ignore_errors=True)


@contextmanager
def atomic_output_dir(out_dir: str | Path, marker: str | None) -> Iterator[Path]:
    """Yield a new temporary folder beside ``out_dir``; on success it replaces ``out_dir``.

    On any exception, ``KeyboardInterrupt`` included, the temporary folder is deleted and an
    existing ``out_dir`` is left untouched. An existing non-empty ``out_dir`` is only
    replaced when it contains ``marker`` (see :func:`check_replaceable`), so a typo in
    ``--out`` cannot wipe an unrelated folder.

    Raises
    ------
    DefectmapError
        ``out_dir`` is a file, or a non-empty folder without ``marker``.
    """
    out = Path(out_dir).absolute()
    check_replaceable(out, marker)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = make_temp_dir(out.parent, prefix=f".{out.name}.tmp-")
    try:
        yield tmp
        replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


# --------------------------------------------------------------------------- hashing


def _update(digest: Any, path: Path) -> None:
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)


def sha256_file(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    _update(digest, Path(path))
    return digest.hexdigest()


def sha256_tree(directory: str | Path) -> str:
    """Hex SHA-256 over a folder's files: each relative name, size and bytes, sorted by name.

    Depends on the contents only, not on where the folder is.
    """
    directory = Path(directory)
    digest = hashlib.sha256()
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        name = path.relative_to(directory).as_posix().encode("utf-8")
        digest.update(len(name).to_bytes(8, "little") + name)
        digest.update(path.stat().st_size.to_bytes(8, "little"))
        _update(digest, path)
    return digest.hexdigest()
