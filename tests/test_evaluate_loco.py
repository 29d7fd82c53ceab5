"""The LOCO and MVTec AD 2 protocols through ``evaluate-maps``, against the official values."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import tifffile
from PIL import Image

from defectmap.cli._common import run_app
from defectmap.data.layouts import load_category
from defectmap.data.synth_layouts import make_layout_dataset
from defectmap.evaluate.maps import evaluate_maps_dir
from defectmap.metrics import aupro, seg_f1, validation_threshold


@pytest.mark.parametrize("official", [False, True])
def test_cli_matches_the_official_fixture(loco_fixture, tmp_path, capsys, official):
    out = tmp_path / "scores.json"
    args = ["evaluate-maps", str(loco_fixture / "anomaly_maps"), str(loco_fixture / "dataset"),
            "--json", str(out)] + (["--loco-official"] if official else [])
    assert run_app(args) == 0
    printed = capsys.readouterr().out
    result = json.loads(out.read_text())
    reference = json.loads((loco_fixture / "reference.json").read_text())
    cat = result["categories"]["synthcat"]
    assert result["protocol"] == cat["protocol"] == "mvtec_loco"
    assert cat["mode"] == ("official" if official else "exact")
    assert cat["method"]["auc_spro"].startswith(cat["mode"])
    assert f"{cat['mode']} mode" in printed
    if official:
        spro, roc = reference["localization"]["auc_spro"], reference["classification"]["auc_roc"]
        assert cat["n_thresholds"] == reference["official_n_thresholds"]
    else:
        spro = reference["not_official"]["auc_spro_all_distinct_thresholds"]
        roc = reference["not_official"]["auc_roc_mann_whitney_ties_half"]
    for kind, per_limit in spro.items():
        assert set(per_limit) == set(cat["auc_spro"][kind])
        for limit, value in per_limit.items():
            assert abs(cat["auc_spro"][kind][limit] - value) < 1e-6, (kind, limit)
    for kind, value in roc.items():
        assert abs(cat["auc_roc"][kind] - value) < 1e-6, kind
    assert cat["n_images"] == reference["n_images"] and cat["n_defects"] == reference["n_gt_masks"]
    assert len(cat["notes"]) == len(reference["official_warnings"])  # absolute > area


def test_loco_missing_map_and_unknown_mask_value(loco_fixture, tmp_path):
    maps = shutil.copytree(loco_fixture / "anomaly_maps", tmp_path / "maps")
    (maps / "synthcat/test/logical_anomalies/004.tiff").unlink()
    with pytest.raises(Exception, match=r"1 of 50 test images .* have no map.*004\.tiff"):
        evaluate_maps_dir(maps, loco_fixture / "dataset")
    data = shutil.copytree(loco_fixture / "dataset", tmp_path / "dataset")
    config = data / "synthcat/defects_config.json"
    entries = [e for e in json.loads(config.read_text()) if e["pixel_value"] != 17]
    config.write_text(json.dumps(entries))
    with pytest.raises(Exception, match="pixel value 17 is not in defects_config.json"):
        evaluate_maps_dir(loco_fixture / "anomaly_maps", data)


def test_mvtec_ad2_protocol_on_synthetic_maps(tmp_path):
    root = tmp_path / "data"
    make_layout_dataset("mvtec_ad2", root, category="c1", size=48, seed=1)
    data = load_category(root, "c1")
    rng = np.random.default_rng(0)
    maps_dir = tmp_path / "maps"
    test_maps, val_maps = [], []
    for sample in data.test:
        mask = (np.asarray(Image.open(sample.mask_path)) > 0 if sample.mask_path
                else np.zeros((48, 48), bool))
        m = (rng.random((48, 48)) + mask * rng.random((48, 48))).astype(np.float32)
        path = maps_dir / "c1/test_public" / sample.defect_type / f"{sample.stem}.tiff"
        path.parent.mkdir(parents=True, exist_ok=True)
        tifffile.imwrite(path, m)
        test_maps.append((m, mask))
    for sample in data.validation:
        m = rng.random((48, 48)).astype(np.float32)
        path = maps_dir / "c1/validation/good" / f"{sample.stem}.tiff"
        path.parent.mkdir(parents=True, exist_ok=True)
        tifffile.imwrite(path, m)
        val_maps.append(m)
    result = evaluate_maps_dir(maps_dir, root)
    cat = result["categories"]["c1"]
    assert result["protocol"] == cat["protocol"] == "mvtec_ad2" and cat["fpr_limit"] == 0.05
    maps, masks = zip(*test_maps, strict=True)
    assert cat["aupro"] == pytest.approx(aupro(list(maps), list(masks), 0.05), abs=1e-12)
    threshold = validation_threshold(val_maps)
    assert cat["segmentation"]["threshold"] == pytest.approx(threshold, rel=1e-12)
    assert cat["seg_f1"] == pytest.approx(seg_f1(list(maps), list(masks), threshold)["seg_f1"])
    assert "mean + 3 std" in cat["segmentation"]["threshold_rule"]
    assert result["mean"]["seg_f1"] == cat["seg_f1"]
    shutil.rmtree(maps_dir / "c1/validation")
    again = evaluate_maps_dir(maps_dir, root)
    assert again["categories"]["c1"]["seg_f1"] is None
    assert any("no validation maps" in w for w in again["warnings"])
