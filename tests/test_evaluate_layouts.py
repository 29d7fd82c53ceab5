"""fit + evaluate on MVTec LOCO AD and MVTec AD 2 layouts: the protocol follows the layout."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from defectmap.cli._common import run_app
from defectmap.data.mvtec_ad2 import check_submission
from defectmap.data.synth_layouts import make_loco_dataset, make_mvtec_ad2_dataset
from defectmap.pipeline import load_model

SIZE = ["--image-size", "64"]  # small network input keeps every fit to seconds


def _fit_and_evaluate(root: Path, tmp_path: Path, *extra: str) -> tuple[Path, dict]:
    model, out = tmp_path / "model", tmp_path / "eval"
    assert run_app(["fit", str(root), "-c", "c1", *SIZE, "--out", str(model)]) == 0
    assert run_app(["evaluate", str(model), str(root), "-c", "c1", "--out", str(out),
                    *extra]) == 0
    return model, json.loads((out / "metrics.json").read_text())


def test_loco_fit_calibrates_on_validation_and_evaluate_reports_au_spro(tmp_path, capsys):
    root = tmp_path / "data"
    make_loco_dataset(root, "c1", n_train=10, n_validation=5, n_good=4, n_logical=3,
                      n_structural=3, size=64, seed=2)
    model, metrics = _fit_and_evaluate(root, tmp_path, "--loco-official")
    info = load_model(model).info
    assert info["validation_source"] == "validation split of the dataset"
    assert info["n_fit"] == 10 and info["n_val"] == 5
    assert metrics["protocol"] == "mvtec_loco"
    loco = metrics["loco"]
    assert loco["mode"] == "official" and loco["n_images"] == {
        "good": 4, "logical_anomalies": 3, "structural_anomalies": 3}
    assert set(loco["auc_spro"]["mean"]) == {"0.01", "0.05", "0.1", "0.3", "1.0"}
    assert "MVTec LOCO AD (official mode)" in capsys.readouterr().out
    # The maps written are the official layout: evaluate-maps gives the same numbers.
    out = tmp_path / "again.json"
    assert run_app(["evaluate-maps", str(tmp_path / "eval" / "maps"), str(root), "--json",
                    str(out), "--loco-official"]) == 0
    again = json.loads(out.read_text())["categories"]["c1"]
    assert again["auc_spro"] == loco["auc_spro"] and again["auc_roc"] == loco["auc_roc"]


def test_mvtec_ad2_evaluate_writes_the_upload_layout_and_seg_f1(tmp_path):
    root = tmp_path / "data"
    make_mvtec_ad2_dataset(root, "c1", n_train=10, n_validation=4, n_good=3, n_bad=3,
                           n_private=3, size=64, seed=2)
    _, metrics = _fit_and_evaluate(root, tmp_path)
    assert metrics["protocol"] == "mvtec_ad2" and metrics["fpr_limit"] == 0.05
    assert metrics["submission"] == {"test_private": 3, "test_private_mixed": 3}
    seg = metrics["segmentation"]
    assert seg["n_validation"] == 4 and "mean + 3 std" in seg["threshold_rule"]
    assert metrics["seg_f1"] == pytest.approx(
        2 * seg["tp"] / (2 * seg["tp"] + seg["fp"] + seg["fn"]))
    assert check_submission(tmp_path / "eval" / "submission", counts={"c1": 3}) == []
    out = tmp_path / "again.json"
    assert run_app(["evaluate-maps", str(tmp_path / "eval" / "maps"), str(root), "--json",
                    str(out)]) == 0
    again = json.loads(out.read_text())["categories"]["c1"]
    assert again["aupro"] == pytest.approx(metrics["aupro"], abs=1e-12)
    assert again["seg_f1"] == pytest.approx(metrics["seg_f1"], abs=1e-12)
