"""evaluate_model on the synthetic fixture: numbers, official map layout, atomic output."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile

from defectmap.calibrate import CalibrationWarning
from defectmap.data.io import read_mask
from defectmap.data.mvtec import load_category
from defectmap.data.records import CategoryData
from defectmap.errors import DefectmapError
from defectmap.evaluate import evaluate_model
from defectmap.metrics import category_metrics, image_auroc
from defectmap.pipeline import InspectionModel, train_model

INPUT_SIZE = 96  # small network input: the whole file runs in seconds


@pytest.fixture(scope="module")
def trained(synthetic_root: Path, tmp_path_factory: pytest.TempPathFactory
            ) -> tuple[CategoryData, InspectionModel]:
    data = load_category(synthetic_root, "synthetic")
    out = tmp_path_factory.mktemp("evaluate") / "model"
    with pytest.warns(CalibrationWarning, match="at least 99"):  # 20 OOF scores, alpha 0.01
        model = train_model(data, out, detector_params={"input_size": INPUT_SIZE})
    return data, model


@pytest.fixture(scope="module")
def evaluated(trained: tuple[CategoryData, InspectionModel],
              tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    data, model = trained
    out = tmp_path_factory.mktemp("evaluate") / "eval"
    return out, evaluate_model(model, data, out, max_gallery=4)


def _small(data: CategoryData, n_each: int = 2) -> CategoryData:
    """The first good and the first defective test images only (fast re-evaluations)."""
    good = [s for s in data.test if s.label == 0][:n_each]
    bad = [s for s in data.test if s.label == 1][:n_each]
    return dataclasses.replace(data, test=good + bad)


def test_metrics_json_matches_a_recomputation_from_the_tiff_maps(
    evaluated: tuple[Path, dict[str, Any]], trained: tuple[CategoryData, InspectionModel]
) -> None:
    out, returned = evaluated
    data, model = trained
    on_disk = json.loads((out / "metrics.json").read_text())
    assert on_disk == returned
    assert on_disk["category"] == "synthetic" and on_disk["detector"] == "patchcore"
    assert on_disk["n_images"] == len(data.test) == 16

    maps, masks = [], []
    for sample in data.test:
        tiff = out / "maps" / "synthetic" / "test" / sample.defect_type / f"{sample.stem}.tiff"
        amap = tifffile.imread(tiff)
        assert amap.dtype == np.float32 and amap.shape == (128, 128)  # native image size
        maps.append(amap)
        masks.append(read_mask(sample.mask_path) if sample.mask_path
                     else np.zeros(amap.shape, bool))
    images = on_disk["images"]
    assert [i["image"] for i in images] == [
        s.path.relative_to(data.root).as_posix() for s in data.test]
    scores = np.array([i["score"] for i in images])
    labels = np.array([s.label for s in data.test])
    expected = category_metrics(scores, labels, [s.defect_type for s in data.test],
                                maps, masks, fpr_limit=0.3)
    for key in ("image_auroc", "pixel_auroc", "aupro", "f1_max", "pixel_f1_max",
                "n_images", "n_defective"):
        assert on_disk[key] == pytest.approx(expected[key], rel=1e-12, abs=0), key
    assert set(on_disk["per_defect"]) == set(data.defect_types)
    for name, values in expected["per_defect"].items():
        for key in ("image_auroc", "pixel_auroc", "aupro", "f1_max"):
            assert on_disk["per_defect"][name][key] == pytest.approx(values[key], rel=1e-12)

    # The stored scores are the model's: recompute two images from scratch.
    fresh = model.inspect([data.test[0].path, data.test[-1].path])
    assert [r.score for r in fresh] == [images[0]["score"], images[-1]["score"]]
    np.testing.assert_array_equal(fresh[-1].anomaly_map, maps[-1])

    # Operating points come from the calibration (validation images), the oracle from labels.
    assert on_disk["calibrated"]["image_threshold"] == model.calibration.image_threshold
    flagged = int(np.sum(scores > model.calibration.image_threshold))
    assert on_disk["calibrated"]["tp"] + on_disk["calibrated"]["fp"] == flagged
    assert on_disk["oracle"]["label"] == "oracle (uses test labels)"
    assert on_disk["oracle"]["f1"] == pytest.approx(expected["f1_max"])
    assert on_disk["timing"]["fit_s"] == model.info["fit_seconds"]
    timing = on_disk["timing"]
    assert timing["ms_per_image"] == pytest.approx(1000 * timing["predict_s"] / 16, rel=1e-12)
    assert 0 < timing["predict_s"]


def test_evaluate_maps_reads_the_written_maps(evaluated: tuple[Path, dict[str, Any]],
                                              synthetic_root: Path, capsys) -> None:
    from defectmap.cli._common import run_app
    from defectmap.evaluate.maps import evaluate_maps_dir

    out, metrics = evaluated
    result = evaluate_maps_dir(out / "maps", synthetic_root)
    assert result["categories"]["synthetic"]["aupro"] == pytest.approx(metrics["aupro"],
                                                                       rel=1e-12)
    assert result["categories"]["synthetic"]["pixel_auroc"] == pytest.approx(
        metrics["pixel_auroc"], rel=1e-12)
    # evaluate-maps scores images by map maximum, so only pixel metrics must agree.
    json_out = out.parent / "from_cli.json"
    rc = run_app(["evaluate-maps", str(out / "maps"), str(synthetic_root),
                  "--json", str(json_out)])
    assert rc == 0, capsys.readouterr().err
    from_cli = json.loads(json_out.read_text())
    assert from_cli["categories"]["synthetic"]["aupro"] == pytest.approx(metrics["aupro"],
                                                                         rel=1e-12)


def test_report_and_figures_are_written(evaluated: tuple[Path, dict[str, Any]]) -> None:
    out, metrics = evaluated
    text = (out / "report.html").read_text()
    figures = sorted(p.name for p in (out / "figures").iterdir())
    assert {"roc.png", "pro.png", "scores.png", "tradeoff.png"} <= set(figures)
    assert len([f for f in figures if f.startswith("gallery_")]) == 4
    assert text.count("<img ") == 4 + 4
    assert "<h2>Choosing alpha</h2>" in text and "defectmap recalibrate" in text
    assert f"{metrics['image_auroc']:.3f}" in text and f"{metrics['aupro']:.3f}" in text
    assert not any(p.name.startswith(".") for p in out.parent.iterdir())  # no temp leftovers


def test_operating_points_per_alpha_come_from_good_images_only(
    trained: tuple[CategoryData, InspectionModel], evaluated: tuple[Path, dict[str, Any]]
) -> None:
    from defectmap.calibrate import conformal_rank
    from defectmap.constants import OPERATING_ALPHAS

    _, model = trained
    _, metrics = evaluated
    cal = model.calibration
    assert cal is not None and cal.n_val == 20
    points = metrics["operating_points"]
    assert [p["alpha"] for p in points] == list(OPERATING_ALPHAS)  # the model's 0.01 included
    assert [p["chosen"] for p in points] == [a == 0.01 for a in OPERATING_ALPHAS]
    scores = np.array([r["score"] for r in metrics["images"]])
    labels = np.array([r["label"] for r in metrics["images"]])
    for p in points:
        k = conformal_rank(20, p["alpha"])
        assert p["threshold"] == cal.val_scores[min(k, 20) - 1]  # from the OOF scores alone
        assert p["decision_rule"] == ("p_value" if k <= 20 else "largest_score")
        flagged = scores > p["threshold"]
        assert p["fp"] == int(np.sum(flagged & (labels == 0)))
        assert p["miss_rate"] == np.mean(~flagged[labels == 1])
        assert p["false_alarm_rate"] == np.mean(flagged[labels == 0])
    # 20 scores reach p <= alpha only for alpha >= 1/21: 0.05 and 0.1
    assert [p["decision_rule"] for p in points].count("p_value") == 2
    assert metrics["calibrated"]["decision_rule"] == "largest_score"


def test_interrupt_keeps_previous_output_or_leaves_none(
    trained: tuple[CategoryData, InspectionModel], tmp_path: Path, monkeypatch
) -> None:
    import defectmap.evaluate.protocol as protocol

    data, model = trained
    small = _small(data)
    calls = {"n": 0}
    real_write = protocol.write_map

    def interrupted_write(path: Path, array: np.ndarray) -> None:
        calls["n"] += 1
        if calls["n"] == 3:  # Ctrl-C half-way through writing the maps
            raise KeyboardInterrupt
        real_write(path, array)

    out = tmp_path / "eval"  # an earlier evaluation's output
    (out / "maps").mkdir(parents=True)
    (out / "metrics.json").write_text('{"earlier": true}')
    (out / "maps" / "old.tiff").write_bytes(b"earlier map")
    monkeypatch.setattr(protocol, "write_map", interrupted_write)
    with pytest.raises(KeyboardInterrupt):
        evaluate_model(model, small, out, report=False)
    assert calls["n"] == 3
    assert json.loads((out / "metrics.json").read_text()) == {"earlier": True}
    assert sorted(p.name for p in (out / "maps").iterdir()) == ["old.tiff"]
    calls["n"] = 0
    with pytest.raises(KeyboardInterrupt):
        evaluate_model(model, small, tmp_path / "fresh", report=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["eval"]  # nothing half-written


def test_layout_without_masks_gives_image_metrics_only(
    trained: tuple[CategoryData, InspectionModel], tmp_path: Path
) -> None:
    data, model = trained
    no_masks = dataclasses.replace(
        _small(data), has_masks=False,
        test=[dataclasses.replace(s, mask_path=None) for s in _small(data).test])
    metrics = evaluate_model(model, no_masks, tmp_path / "eval", max_gallery=2)
    assert metrics["pixel_auroc"] is None and metrics["aupro"] is None
    scores = [r.score for r in model.inspect([s.path for s in no_masks.test])]
    labels = [s.label for s in no_masks.test]
    assert metrics["image_auroc"] == image_auroc(scores, labels)
    assert not (tmp_path / "eval" / "figures" / "pro.png").exists()
    assert (tmp_path / "eval" / "report.html").exists()


def test_empty_test_split_is_an_error(trained: tuple[CategoryData, InspectionModel],
                                      tmp_path: Path) -> None:
    data, model = trained
    with pytest.raises(DefectmapError, match="no test images"):
        evaluate_model(model, dataclasses.replace(data, test=[]), tmp_path / "eval")
    assert not (tmp_path / "eval").exists()


@pytest.mark.slow
def test_bottle_subset_heatmaps_sit_on_the_defects(bottle_root: Path, tmp_path: Path) -> None:
    """Real data, kept small: every 5th training image (42), 24 test images, 160 px input."""
    data = load_category(bottle_root, "bottle")
    good = [s for s in data.test if s.label == 0][:8]
    bad = [s for s in data.test if s.label == 1][::4]  # every 4th: all three defect types
    subset = dataclasses.replace(data, train=data.train[::5], test=good + bad)
    with pytest.warns(CalibrationWarning, match="at least 99"):  # 20 OOF scores, alpha 0.01
        model = train_model(subset, tmp_path / "model", detector_params={"input_size": 160})
    metrics = evaluate_model(model, subset, tmp_path / "eval", max_gallery=6)
    assert metrics["image_auroc"] > 0.9 and metrics["pixel_auroc"] > 0.9
    # Where the map peaks, there is a defect: the hottest pixel of each defective image lies
    # inside its ground-truth mask (grown by 5 % of the image side for blurred maps).
    from scipy import ndimage

    hits = 0
    for sample in bad:
        tiff = tmp_path / "eval/maps/bottle/test" / sample.defect_type / f"{sample.stem}.tiff"
        amap = tifffile.imread(tiff)
        assert amap.shape == (900, 900)
        assert sample.mask_path is not None
        grown = ndimage.binary_dilation(read_mask(sample.mask_path), iterations=45)
        hits += bool(grown[np.unravel_index(np.argmax(amap), amap.shape)])
    assert hits >= 0.8 * len(bad), f"{hits} of {len(bad)} peaks on the defect"


def test_an_earlier_evaluation_holding_other_files_is_not_replaced(
    trained: tuple[CategoryData, InspectionModel], tmp_path: Path
) -> None:
    data, model = trained
    out = tmp_path / "eval"
    evaluate_model(model, _small(data), out, report=False, write_maps=False)
    (out / "my_notes.md").write_text("keep me")
    with pytest.raises(DefectmapError, match=r"not part of this output \(my_notes\.md\)"):
        evaluate_model(model, _small(data), out, report=False, write_maps=False)
    assert (out / "my_notes.md").read_text() == "keep me" and (out / "metrics.json").exists()
