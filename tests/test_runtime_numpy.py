"""The torch-free runtime's NumPy pieces against torch: resizes, manifest and hash checks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from defectmap.detectors.base import maps_to_native
from defectmap.errors import ModelFileError
from defectmap.features.preprocess import preprocess as torch_preprocess
from defectmap.runtime import RuntimeUnavailableError, choose_runtime, read_manifest
from defectmap.runtime.manifest import EXPORT_FILE, write_manifest
from defectmap.runtime.resample import preprocess, resize_maps, resize_weights

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@pytest.mark.parametrize("shape", [(900, 900, 3), (37, 53, 3), (64, 64, 3), (300, 200),
                                   (321, 319, 3), (1, 1, 3), (5, 700, 3)])
@pytest.mark.parametrize("size", [64, 320])
def test_preprocess_equals_torch(shape: tuple[int, ...], size: int) -> None:
    rng = np.random.default_rng(sum(shape) + size)
    image = rng.integers(0, 256, shape, dtype=np.uint8)
    ours = preprocess([image], size, MEAN, STD)
    reference = torch_preprocess([image], size, MEAN, STD).numpy()
    assert ours.shape == reference.shape == (1, 3, size, size)
    assert ours.dtype == np.float32
    # normalised values reach ~2.6; float32 spacing there is 2.4e-7
    assert np.abs(ours - reference).max() < 2e-6


@pytest.mark.parametrize("size", [64, 320])
def test_native_resize_equals_torch(size: int) -> None:
    rng = np.random.default_rng(size)
    sizes = [(900, 900), (100, 77), (size, size), (1000, 1), (3, 2 * size + 1)]
    maps = rng.random((len(sizes), size, size)).astype(np.float32)
    # sigma 0 on a grid of the input size: the upsample-and-blur matrices are the identity,
    # so maps_to_native is only its resize to native size
    reference = maps_to_native(torch.from_numpy(maps), sizes, size, 0.0)
    ours = resize_maps(maps, sizes)
    for r, o, s in zip(reference, ours, sizes, strict=True):
        assert o.shape == r.shape == s and o.dtype == np.float32
        assert np.abs(o - r).max() < 5e-7


def test_resize_weights_rows_are_normalised_bands() -> None:
    for n_in, n_out in [(900, 320), (320, 900), (7, 7), (1, 5), (5, 1)]:
        for antialias in (True, False):
            w = resize_weights(n_in, n_out, antialias)
            assert w.shape == (n_out, n_in)
            np.testing.assert_allclose(w.sum(1), 1.0, atol=1e-12)
            assert (w >= 0).all()
    assert np.array_equal(resize_weights(7, 7, True), np.eye(7))
    # 900 -> 320 antialiased: support 2.8125 px each side, at most 6 taps per row
    assert (resize_weights(900, 320, True) > 0).sum(1).max() == 6


def _fake_export(folder: Path) -> None:
    folder.mkdir()
    (folder / "model.onnx").write_bytes(b"graph bytes")
    (folder / "sub").mkdir()
    (folder / "sub" / "a.bin").write_bytes(b"\x00" * 10)
    write_manifest(folder, {"detector": "patchcore", "params": {}, "graph": {},
                            "preprocess": {}, "runtimes": {"onnxruntime": {"fp32": "model.onnx"}}})


def test_manifest_records_every_file_with_its_hash(tmp_path: Path) -> None:
    folder = tmp_path / "export"
    _fake_export(folder)
    manifest = read_manifest(folder)
    assert sorted(manifest["files"]) == ["model.onnx", "sub/a.bin"]
    import hashlib

    assert manifest["files"]["model.onnx"] == {
        "bytes": 11, "sha256": hashlib.sha256(b"graph bytes").hexdigest()}


@pytest.mark.parametrize("tamper", ["change", "remove", "add", "json"])
def test_manifest_check_refuses_a_changed_folder(tmp_path: Path, tamper: str) -> None:
    folder = tmp_path / "export"
    _fake_export(folder)
    if tamper == "change":
        (folder / "model.onnx").write_bytes(b"graph bytez")  # same size, other bytes
        match = "model.onnx: SHA-256 differs"
    elif tamper == "remove":
        (folder / "sub" / "a.bin").unlink()
        match = "a.bin: missing"
    elif tamper == "add":
        (folder / "extra.txt").write_text("x")
        match = "extra.txt: not listed"
    else:
        (folder / EXPORT_FILE).write_text("{not json")
        match = "not valid JSON"
    with pytest.raises(ModelFileError, match=match):
        read_manifest(folder)


def test_manifest_of_another_format_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "export"
    _fake_export(folder)
    data = json.loads((folder / EXPORT_FILE).read_text())
    data["format_version"] = 99
    (folder / EXPORT_FILE).write_text(json.dumps(data))
    with pytest.raises(ModelFileError, match="export format 99"):
        read_manifest(folder)


def test_choose_runtime(tmp_path: Path) -> None:
    folder = tmp_path / "export"
    _fake_export(folder)
    assert choose_runtime(folder, "onnxruntime") == "onnxruntime"
    assert choose_runtime(tmp_path, None) == "torch"  # a plain model folder
    with pytest.raises(RuntimeUnavailableError, match="not exported for openvino"):
        choose_runtime(folder, "openvino")
    with pytest.raises(RuntimeUnavailableError, match="unknown runtime 'tensorrt'"):
        choose_runtime(folder, "tensorrt")
    with pytest.raises(RuntimeUnavailableError, match="not exported for onnxruntime"):
        choose_runtime(tmp_path, "onnxruntime")


def test_a_runtime_that_is_not_installed_names_its_extra(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    folder = tmp_path / "export"
    _fake_export(folder)
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "onnxruntime" else real(name, *a))
    with pytest.raises(RuntimeUnavailableError,
                       match=r"'onnxruntime' is not installed: pip install 'defectmap\[runtime\]'"):
        choose_runtime(folder, "onnxruntime")
    assert choose_runtime(folder) == "torch"  # the only runtime of this folder still installed
