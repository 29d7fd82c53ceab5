"""Files and folders for every layer: atomic writes, the one directory swap, hashing.

A file or an output folder is either the old one or the complete new one: files are written
to a temporary sibling and ``os.replace``-d (:func:`write_bytes`), folders are built under a
temporary name (:func:`make_temp_dir`, :func:`atomic_output_dir`) and swapped in by
:func:`replace_dir`, atomically where the system can exchange two folders (Linux), so the
path never goes missing. Imports no torch.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import hashlib
import json
import math
import os
import shutil
import sys
import tempfile
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from defectmap.errors import DefectmapError

__all__ = [
    "atomic_output_dir",
    "check_replaceable",
    "exchange_dirs",
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


def check_replaceable(
    target: str | Path, marker: str | None, owned: Collection[str] | None = None
) -> None:
    """Refuse to replace ``target`` unless it is missing, empty, or an earlier output.

    An earlier output of the same kind holds ``marker`` (``metrics.json``, ``model.json``,
    ...); ``marker=None`` accepts any folder. With ``owned`` (the names of the entries such
    an output consists of), an earlier output that also holds anything else (a user's notes,
    a ``.git`` folder) is refused too: replacing the folder would delete it. Call this before
    long work, so that a wrong output folder fails at once.

    Raises
    ------
    DefectmapError
        ``target`` is a file, a non-empty folder without ``marker``, or a folder holding
        entries outside ``owned`` (the message lists them).
    """
    out = Path(target)
    if out.exists() and not out.is_dir():
        raise DefectmapError(f"{out}: exists and is not a folder; choose another output folder")
    if not out.is_dir():
        return
    entries = sorted(p.name for p in out.iterdir())
    if marker is not None and entries and marker not in entries:
        raise DefectmapError(
            f"{out}: folder exists, is not empty and holds no {marker} (not an earlier "
            "output); refusing to replace it, choose another output folder"
        )
    foreign = [name for name in entries if owned is not None and name not in owned]
    if foreign:
        shown = ", ".join(foreign[:10]) + (f" and {len(foreign) - 10} more"
                                           if len(foreign) > 10 else "")
        raise DefectmapError(
            f"{out}: holds files that are not part of this output ({shown}); refusing to "
            "replace it, which would delete them: move them away or choose another output "
            "folder"
        )


_RENAME_EXCHANGE = 2  # linux/fs.h
_AT_FDCWD = -100


@functools.cache
def _renameat2() -> Any:
    """libc's ``renameat2`` (Linux, glibc >= 2.28), or None where there is none."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        function = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p,
                         ctypes.c_uint]
    function.restype = ctypes.c_int
    return function


def exchange_dirs(a: str | Path, b: str | Path) -> bool:
    """Swap two existing paths atomically (``renameat2(RENAME_EXCHANGE)``); True when done.

    Both names exist at every moment: a reader sees the one folder or the other, never a
    missing path. Returns False, having changed nothing, where the system or the file system
    cannot do it (not Linux, an old kernel or libc, a file system without the flag).

    Raises
    ------
    OSError
        Any other failure (a missing path, no permission).
    """
    function = _renameat2()
    if function is None:
        return False
    if function(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EXDEV):
        return False
    raise OSError(err, os.strerror(err), str(a), None, str(b))


def replace_dir(new: str | Path, target: str | Path) -> None:
    """Put the complete folder ``new`` at ``target``, replacing an existing ``target``.

    The one directory swap of the project. ``new`` must be a sibling of ``target`` (same
    file system). Where the system can (Linux: ext4, xfs, btrfs, tmpfs, ...), the two folders
    are exchanged atomically with :func:`exchange_dirs` and the old one is then deleted, so
    ``target`` exists at every moment and a reader (a running service reloading a model) sees
    either the whole old folder or the whole new one. Elsewhere ``target`` is renamed to a
    hidden backup and ``new`` renamed into its place; between those two renames the path is
    briefly missing. If the second rename fails, the backup is put back, so ``target`` is
    never lost.
    """
    new, target = Path(new), Path(target)
    if not target.exists():
        os.replace(new, target)
        return
    if exchange_dirs(new, target):
        shutil.rmtree(new, ignore_errors=True)  # ``new`` now names the old folder
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
def atomic_output_dir(
    out_dir: str | Path, marker: str | None, owned: Collection[str] | None = None
) -> Iterator[Path]:
    """Yield a new temporary folder beside ``out_dir``; on success it replaces ``out_dir``.

    On any exception, ``KeyboardInterrupt`` included, the temporary folder is deleted and an
    existing ``out_dir`` is left untouched. An existing non-empty ``out_dir`` is only
    replaced when it contains ``marker`` and, with ``owned``, nothing but the entries named
    there (see :func:`check_replaceable`), so a wrong output folder cannot be wiped. The swap
    is :func:`replace_dir`'s.

    Raises
    ------
    DefectmapError
        ``out_dir`` is a file, a non-empty folder without ``marker``, or one that holds
        entries outside ``owned``.
    """
    out = Path(out_dir).absolute()
    check_replaceable(out, marker, owned)
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
