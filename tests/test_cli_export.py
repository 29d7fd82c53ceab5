"""``defectmap export`` and ``--runtime`` on predict, through the CLI on the synthetic fixture."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from defectmap.cli._common import run_app
from defectmap.cli.export import ExportFormat, GraphInput, Runtime
from defectmap.constants import EXPORT_FORMATS, EXPORT_INPUTS, RUNTIMES
from defectmap.export import PARITY_RTOL
from defectmap.pipeline import load_model, train_model
from defectmap.runtime import read_manifest


def run(capsys: pytest.CaptureFixture[str], *argv: str | Path) -> tuple[int, str, str]:
    rc = run_app([str(a) for a in argv])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def test_cli_choices_are_the_library_names() -> None:
    assert tuple(Runtime) == RUNTIMES
    assert tuple(ExportFormat) == EXPORT_FORMATS
    assert tuple(GraphInput) == EXPORT_INPUTS


@pytest.fixture(scope="module")
def model_dir(synthetic_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from defectmap.data.mvtec import load_category

    out = tmp_path_factory.mktemp("cli_export") / "model"
    train_model(load_category(synthetic_root, "synthetic"), out,
                detector_params={"input_size": 64, "coreset_ratio": 0.25}, alpha=0.1)
    return out


@pytest.fixture(scope="module")
def exported(model_dir: Path) -> Path:
    out = model_dir.parent / "exported"
    assert run_app(["export", str(model_dir), "--format", "onnx", "--out", str(out)]) == 0
    return out


def test_export_writes_a_checked_folder(exported: Path, model_dir: Path) -> None:
    manifest = read_manifest(exported)
    assert list(manifest["runtimes"]) == ["onnxruntime"]
    assert manifest["source_model_hash"] == load_model(model_dir).model_hash
    assert max(manifest["parity"]["onnxruntime/fp32"].values()) <= PARITY_RTOL


def test_export_refuses_an_existing_folder(exported: Path, model_dir: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    before = read_manifest(exported)["files"]
    rc, _, err = run(capsys, "export", model_dir, "--out", exported)
    assert rc == 1
    assert err.count("\n") == 1 and "already exists" in err
    assert read_manifest(exported)["files"] == before  # untouched


def test_export_usage_errors_exit_2(model_dir: Path, tmp_path: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    rc, _, _ = run(capsys, "export", model_dir, "--format", "tflite", "--out", tmp_path / "x")
    assert rc == 2
    rc, _, _ = run(capsys, "predict", model_dir, tmp_path, "--out", tmp_path / "y",
                   "--runtime", "tensorrt")
    assert rc == 2
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_predict_on_each_runtime_gives_the_same_results(
        exported: Path, synthetic_root: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    images = synthetic_root / "synthetic" / "test" / "good"
    results = {}
    for runtime in ("torch", "onnxruntime", None):
        out = tmp_path / f"out-{runtime}"
        flags = [] if runtime is None else ["--runtime", runtime]
        rc, stdout, err = run(capsys, "predict", exported, images, "--out", out, *flags)
        assert rc == 0, err
        data = json.loads((out / "results.json").read_text())
        results[runtime] = data["results"] if isinstance(data, dict) else data
    torch_rows, ort_rows = results["torch"], results["onnxruntime"]
    assert [r["decision"] for r in ort_rows] == [r["decision"] for r in torch_rows]
    assert [r["p_value"] for r in ort_rows] == [r["p_value"] for r in torch_rows]
    np.testing.assert_allclose([r["score"] for r in ort_rows],
                               [r["score"] for r in torch_rows], rtol=PARITY_RTOL)
    assert results[None] == ort_rows  # the default on an ONNX export is ONNX Runtime


def test_predict_with_a_runtime_the_folder_lacks(exported: Path, model_dir: Path,
                                                 tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    rc, _, err = run(capsys, "predict", exported, tmp_path, "--out", tmp_path / "a",
                     "--runtime", "openvino")
    assert rc == 1 and "not exported for openvino" in err and err.count("\n") == 1
    rc, _, err = run(capsys, "predict", model_dir, tmp_path, "--out", tmp_path / "b",
                     "--runtime", "onnxruntime")
    assert rc == 1 and "not exported for onnxruntime" in err
