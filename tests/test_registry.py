"""The model registry: content-addressed immutable versions and an atomic current pointer."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from defectmap.errors import ModelFileError
from defectmap.files import sha256_tree
from defectmap.registry import ID_LENGTH, Registry, RegistryError, is_registry


def fake_model(folder: Path, text: str) -> Path:
    folder.mkdir(parents=True)
    (folder / "model.json").write_text(json.dumps({"text": text}))
    (folder / "weights.safetensors").write_bytes(text.encode() * 10)
    return folder


def test_add_promote_rollback(tmp_path: Path) -> None:
    reg = Registry(tmp_path / "reg")
    a = fake_model(tmp_path / "a", "first")
    b = fake_model(tmp_path / "b", "second")
    va = reg.add(a, note="initial")
    assert is_registry(reg.root)
    assert va.id == sha256_tree(a)[:ID_LENGTH] and va.model_hash == sha256_tree(a)
    assert sha256_tree(va.path) == sha256_tree(a)  # the copy is the same content
    assert reg.add(a).id == va.id and len(reg.versions()) == 1  # same content, same version
    assert not os.stat(va.path / "model.json").st_mode & stat.S_IWUSR  # read-only
    assert reg.current() is None
    with pytest.raises(RegistryError, match="no version is current"):
        reg.resolve("current")

    reg.promote(va.id[:6])  # a unique prefix is enough
    assert reg.current() == va.id and reg.current_path() == va.path
    assert (reg.root / "current").is_symlink()
    vb = reg.add(b, parent=va.id)
    assert [v.id for v in reg.versions()] == [va.id, vb.id] and vb.parent == va.id
    reg.promote(vb.id)
    assert reg.current() == vb.id
    assert reg.rollback().id == va.id and reg.current() == va.id
    assert [(h["version"], h["previous"], h["action"]) for h in reg.history()] == [
        (va.id, None, "promote"), (vb.id, va.id, "promote"), (va.id, vb.id, "rollback")]
    with pytest.raises(RegistryError, match="no version"):
        reg.promote("ffff")


def test_tampered_version_is_refused_and_bad_folders(tmp_path: Path) -> None:
    reg = Registry(tmp_path / "reg")
    version = reg.add(fake_model(tmp_path / "a", "x"))
    weights = version.path / "weights.safetensors"
    weights.chmod(0o644)
    weights.write_bytes(b"changed")
    with pytest.raises(ModelFileError, match="changed since"):
        reg.promote(version.id)
    assert reg.current() is None
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "a.txt").write_text("x")
    with pytest.raises(RegistryError, match="not a model registry"):
        Registry(tmp_path / "notes")
    with pytest.raises(RegistryError, match="not a model directory"):
        reg.add(tmp_path / "notes")
    with pytest.raises(RegistryError, match="no earlier"):
        Registry(tmp_path / "empty").rollback()
