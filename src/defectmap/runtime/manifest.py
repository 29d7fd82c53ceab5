"""``export.json``: what an exported folder holds, how to feed its graph, and its file hashes.

An exported folder is a model directory (``model.json``, ``weights.safetensors``,
``calibration.json``, ``training.json``, so the torch runtime still works where torch is
installed) plus the graphs::

    out_dir/
      export.json          this manifest
      model.onnx           ONNX graph: input tensor -> anomaly map at network size, image score
      openvino/model.xml   OpenVINO IR (``--format openvino``), FP32; model-fp16.* optionally
      model.json, weights.safetensors, calibration.json, training.json   copied from the model

The calibration and the preprocessing facts live in JSON, never in a graph, so a new
calibration needs no new export. Every other file of the folder is listed under ``files``
with its size and SHA-256, and :func:`read_manifest` refuses a folder whose files differ.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from defectmap.errors import ModelFileError
from defectmap.files import sha256_file, write_json

__all__ = [
    "EXPORT_FILE",
    "FORMAT",
    "FORMAT_VERSION",
    "file_hashes",
    "is_export_dir",
    "read_manifest",
    "write_manifest",
]

EXPORT_FILE = "export.json"
FORMAT = "defectmap-export"
FORMAT_VERSION = 1
_REQUIRED = ("detector", "params", "graph", "preprocess", "runtimes", "files")


def is_export_dir(directory: str | Path) -> bool:
    """Whether ``directory`` holds an ``export.json`` (an exported model folder)."""
    return (Path(directory) / EXPORT_FILE).is_file()


def file_hashes(directory: str | Path) -> dict[str, dict[str, Any]]:
    """Size and SHA-256 of every file under ``directory`` except ``export.json``.

    Returns
    -------
    ``{relative posix path: {"bytes": size, "sha256": hex digest}}``, sorted by path.
    """
    root = Path(directory)
    out: dict[str, dict[str, Any]] = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        name = path.relative_to(root).as_posix()
        if name != EXPORT_FILE:
            out[name] = {"bytes": path.stat().st_size, "sha256": sha256_file(path)}
    return out


def write_manifest(directory: str | Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """Write ``export.json`` with the folder's current file hashes; return what was written."""
    full = {"format": FORMAT, "format_version": FORMAT_VERSION, **manifest}
    full["files"] = file_hashes(directory)
    write_json(Path(directory) / EXPORT_FILE, full)
    return full


def read_manifest(directory: str | Path, check_files: bool = True) -> dict[str, Any]:
    """Read ``export.json`` and check that the folder's files are the ones it lists.

    Raises
    ------
    ModelFileError : the manifest is missing or invalid, a listed file is missing, its size
        or SHA-256 differs, or the folder holds a file the manifest does not list.
    """
    root = Path(directory)
    path = root / EXPORT_FILE
    if not path.is_file():
        raise ModelFileError(f"{path}: missing (not an exported model folder; see "
                             f"`defectmap export --help`)")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelFileError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ModelFileError(f"{path}: not a defectmap export manifest")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ModelFileError(f"{path}: export format {manifest.get('format_version')!r}, "
                             f"this version reads {FORMAT_VERSION}")
    missing = [key for key in _REQUIRED if key not in manifest]
    if missing:
        raise ModelFileError(f"{path}: lacks the keys {missing}")
    if check_files:
        _check_files(root, manifest["files"])
    return manifest


def _check_files(root: Path, listed: dict[str, Any]) -> None:
    actual = {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}
    actual.discard(EXPORT_FILE)
    for name in sorted(set(listed) - actual):
        raise ModelFileError(f"{root / name}: missing (listed in {EXPORT_FILE})")
    for name in sorted(actual - set(listed)):
        raise ModelFileError(f"{root / name}: not listed in {EXPORT_FILE} (the folder was "
                             f"changed after export)")
    for name in sorted(listed):
        entry, file = listed[name], root / name
        if file.stat().st_size != entry.get("bytes") or sha256_file(file) != entry.get("sha256"):
            raise ModelFileError(f"{file}: SHA-256 differs from {EXPORT_FILE} (the file was "
                                 f"changed or damaged after export)")
