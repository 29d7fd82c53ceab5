"""The model registry: immutable, content-addressed model versions and a ``current`` pointer.

A registry is a folder::

    REGISTRY/
      versions/<id>/      one model directory per version, never changed after it is added;
                          <id> = the first 16 hex digits of its sha256_tree (content address)
      meta/<id>.json      where the version came from (source, parent, note, time)
      current             symlink -> versions/<id>, replaced atomically (rename of a new link)
      history.json        every switch of ``current``, oldest first (for rollback)

Adding the same model twice gives the same version; a version whose files no longer hash
to its id is refused at load and at promotion. The service (``defectmap serve REGISTRY``)
watches ``current`` and switches to the new version without dropping a request.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from defectmap.errors import DefectmapError, ModelFileError
from defectmap.files import make_temp_dir, sha256_tree, write_json

__all__ = ["ID_LENGTH", "Registry", "RegistryError", "VersionInfo", "is_registry"]

ID_LENGTH = 16
_MODEL_MARKER = "model.json"


class RegistryError(DefectmapError, ValueError):
    """A registry folder, version or switch is invalid; the message says which."""


@dataclass(frozen=True)
class VersionInfo:
    """One version: its id, full hash, folder and provenance (``meta/<id>.json``)."""

    id: str
    model_hash: str
    path: Path
    created_at: str
    source: str
    parent: str | None
    note: str

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "model_hash": self.model_hash, "path": str(self.path),
                "created_at": self.created_at, "source": self.source, "parent": self.parent,
                "note": self.note}


def is_registry(path: str | Path) -> bool:
    """Whether ``path`` is a registry folder (it has ``versions/``)."""
    return (Path(path) / "versions").is_dir()


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


def _freeze(folder: Path) -> None:
    """Make a version's files and folders read-only (a reminder; its hash is the guard)."""
    for path in [*folder.rglob("*"), folder]:
        mode = path.stat().st_mode
        path.chmod(mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))


class Registry:
    """A registry folder (created, empty, when missing).

    Parameters
    ----------
    root : str or Path
        The registry folder.
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        if self.root.exists() and not self.root.is_dir():
            raise RegistryError(f"{self.root}: exists and is not a folder")
        if self.root.is_dir() and any(self.root.iterdir()) and not is_registry(self.root):
            raise RegistryError(f"{self.root}: a non-empty folder that is not a model "
                                "registry (it has no versions/)")
        self.versions_dir = self.root / "versions"
        self.meta_dir = self.root / "meta"
        self.current_link = self.root / "current"
        self.history_file = self.root / "history.json"

    # -- versions -----------------------------------------------------------------------------

    def add(self, model_dir: str | Path, source: str = "", parent: str | None = None,
            note: str = "") -> VersionInfo:
        """Copy a model directory in as a new version (or return the same content's version).

        Raises
        ------
        RegistryError
            ``model_dir`` is not a model directory.
        """
        model_dir = Path(model_dir)
        if not (model_dir / _MODEL_MARKER).is_file():
            raise RegistryError(f"{model_dir}: not a model directory (no {_MODEL_MARKER})")
        model_hash = sha256_tree(model_dir)
        version = model_hash[:ID_LENGTH]
        if (self.versions_dir / version).is_dir():
            return self.info(version)
        self.versions_dir.mkdir(parents=True, exist_ok=True)
        self.meta_dir.mkdir(exist_ok=True)
        tmp = make_temp_dir(self.versions_dir, prefix=f".{version}.tmp-")
        try:
            target = tmp / "model"
            shutil.copytree(model_dir, target)
            if sha256_tree(target) != model_hash:
                raise RegistryError(f"{model_dir}: changed while it was copied; try again")
            write_json(self.meta_dir / f"{version}.json", {
                "id": version, "model_hash": model_hash, "created_at": _now(),
                "source": source or str(model_dir.resolve()), "parent": parent, "note": note})
            _freeze(target)
            os.replace(target, self.versions_dir / version)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return self.info(version)

    def info(self, version: str) -> VersionInfo:
        """The version named by its id (or a unique prefix of it, or ``current``)."""
        version = self.resolve(version)
        meta: dict[str, Any] = {}
        meta_file = self.meta_dir / f"{version}.json"
        if meta_file.is_file():
            meta = json.loads(meta_file.read_text(encoding="utf-8"))
        return VersionInfo(
            id=version, model_hash=str(meta.get("model_hash", "")),
            path=self.versions_dir / version, created_at=str(meta.get("created_at", "")),
            source=str(meta.get("source", "")), parent=meta.get("parent"),
            note=str(meta.get("note", "")))

    def versions(self) -> list[VersionInfo]:
        """Every version, oldest first."""
        if not self.versions_dir.is_dir():
            return []
        ids = [p.name for p in self.versions_dir.iterdir()
               if p.is_dir() and not p.name.startswith(".")]
        return sorted((self.info(v) for v in ids), key=lambda v: (v.created_at, v.id))

    def resolve(self, ref: str) -> str:
        """The full version id of ``ref``: an id, a unique prefix of one, or ``current``.

        Raises
        ------
        RegistryError
            No version, or several, match; or ``current`` is not set.
        """
        if ref == "current":
            found = self.current()
            if found is None:
                raise RegistryError(f"{self.root}: no version is current yet; promote one")
            return found
        known = [v for v in self._ids() if v.startswith(ref)] if ref else []
        if len(known) != 1:
            what = "no version" if not known else f"{len(known)} versions"
            raise RegistryError(f"{self.root}: {what} match {ref!r} (see: defectmap models "
                                f"list {self.root})")
        return known[0]

    def _ids(self) -> list[str]:
        if not self.versions_dir.is_dir():
            return []
        return sorted(p.name for p in self.versions_dir.iterdir() if not p.name.startswith("."))

    def verify(self, version: str) -> str:
        """Recompute a version's hash; return it, or raise when it no longer matches its id.

        Raises
        ------
        ModelFileError
            The files were changed after the version was added.
        """
        version = self.resolve(version)
        actual = sha256_tree(self.versions_dir / version)
        if not actual.startswith(version):
            raise ModelFileError(f"{self.versions_dir / version}: files changed since the "
                                 f"version was added (hash {actual[:ID_LENGTH]}); versions "
                                 "are immutable, add the changed model as a new version")
        return actual

    # -- the current pointer ------------------------------------------------------------------

    def current(self) -> str | None:
        """The id ``current`` points to, or None before the first promotion."""
        try:
            target = os.readlink(self.current_link)
        except (FileNotFoundError, OSError):
            return None
        return Path(target).name

    def current_path(self) -> Path:
        """The folder of the current version (the one ``serve`` loads)."""
        return self.versions_dir / self.resolve("current")

    def history(self) -> list[dict[str, Any]]:
        """Every switch of ``current``, oldest first.

        Each entry is ``{"version", "previous", "at", "action"}``.
        """
        if not self.history_file.is_file():
            return []
        return list(json.loads(self.history_file.read_text(encoding="utf-8")))

    def promote(self, version: str, action: str = "promote") -> VersionInfo:
        """Point ``current`` at ``version`` (atomically) after checking its files.

        A running service switches to it on its next check (about once a second).
        """
        version = self.resolve(version)
        self.verify(version)
        previous = self.current()
        link = self.root / f".current.{os.getpid()}.tmp"
        link.unlink(missing_ok=True)
        os.symlink(Path("versions") / version, link)
        os.replace(link, self.current_link)  # atomic: readers see the old or the new link
        history = self.history()
        history.append({"version": version, "previous": previous, "at": _now(),
                        "action": action})
        write_json(self.history_file, history)
        return self.info(version)

    def rollback(self) -> VersionInfo:
        """Point ``current`` back at the version that was current before the last switch.

        Raises
        ------
        RegistryError
            Nothing to roll back to.
        """
        history = self.history()
        if not history or history[-1].get("previous") is None:
            raise RegistryError(f"{self.root}: no earlier current version to roll back to")
        return self.promote(str(history[-1]["previous"]), action="rollback")
