"""train_model -> load_model -> inspect on the synthetic fixture, atomic saving, no test leakage."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from defectmap.calibrate import Calibration
from defectmap.data.mvtec import load_category
from defectmap.data.records import CategoryData
from defectmap.errors import DefectmapError, ModelFileError
from defectmap.pipeline import InspectionModel, load_model, train_model

PARAMS = {"input_size": 64, "coreset_ratio": 0.25}


class TrainOnly:
    """A CategoryData stand-in whose test split (and anything derived from it) cannot be read."""

    def __init__(self, data: CategoryData) -> None:
        self._data = data

    def __getattr__(self, name: str) -> Any:
        if name in ("test", "defect_types"):
            raise AssertionError(f"train_model read category_data.{name}")
        return getattr(self._data, name)


@pytest.fixture(scope="module")
def data(synthetic_root: Path) -> CategoryData:
    return load_category(synthetic_root, "synthetic")


@pytest.fixture(scope="module")
def trained(data: CategoryData, tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("models") / "synthetic_model"
    model = train_model(TrainOnly(data), out, detector_params=PARAMS,  # type: ignore[arg-type]
                        alpha=0.1, random_state=1)
    return model, out


@pytest.fixture(scope="module")
def inspections(trained, data: CategoryData):
    model, _ = trained
    return model.inspect([s.path for s in data.test], batch_size=4)


def test_train_model_writes_a_complete_model(trained, data: CategoryData) -> None:
    model, out = trained
    assert sorted(p.name for p in out.iterdir()) == [
        "calibration.json", "model.json", "training.json", "weights.safetensors"]
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no temp dirs left
    info = json.loads((out / "training.json").read_text())
    train_stems = {s.stem for s in data.train}
    assert info["n_fit"] == 14 and info["n_val"] == 10  # 24 good: max(10, ceil(2.4)) held out
    assert set(info["fit_stems"]).isdisjoint(info["val_stems"])
    assert set(info["fit_stems"]) | set(info["val_stems"]) == train_stems
    assert info["random_state"] == 1 and info["alpha"] == 0.1 and info["category"] == "synthetic"
    assert info["detector_params"]["random_state"] == 1  # seeds the detector too
    assert info["detector_params"]["input_size"] == 64
    cal = Calibration.load(out)
    assert cal.n_val == 10 and cal.alpha == 0.1 and cal.guarantee_holds  # n >= 9 for 0.1
    # the calibration really comes from the validation images' scores
    val_paths = [s.path for s in data.train if s.stem in set(info["val_stems"])]
    val_scores = model.detector.predict(val_paths).scores
    assert np.allclose(sorted(val_scores), cal.val_scores, rtol=1e-6)
    assert model.model_hash is not None and len(model.model_hash) == 64


def test_load_model_gives_identical_inspections(trained, data, inspections) -> None:
    model, out = trained
    loaded = load_model(out)
    assert loaded.model_hash == model.model_hash
    assert loaded.calibration == model.calibration
    images = [s.path for s in data.test]
    a, b = inspections, loaded.inspect(images, batch_size=4)
    assert len(a) == len(b) == len(data.test)
    # another batch size changes float32 rounding in the backbone only
    c = loaded.inspect(images, batch_size=3)
    assert np.allclose([x.score for x in c], [x.score for x in a], rtol=1e-5, atol=0)
    for x, y in zip(a, b, strict=True):
        assert x.score == y.score and x.decision == y.decision and x.p_value == y.p_value
        assert x.normalized_score == y.normalized_score
        assert np.array_equal(x.anomaly_map, y.anomaly_map) and x.regions == y.regions
        assert x.anomaly_map.dtype == np.float32 and x.anomaly_map.shape == (128, 128)
        assert x.mask is not None and x.mask.shape == (128, 128)
        assert (x.decision == "defect") == (x.normalized_score > 0.5)
        assert (x.decision == "defect") == (x.p_value <= 0.1)
    # a synthetic defect is found: defective images score higher than good ones on average
    labels = np.array([s.label for s in data.test])
    scores = np.array([x.score for x in a])
    assert scores[labels == 1].mean() > scores[labels == 0].mean()
    description = loaded.describe()
    json.dumps(description)  # JSON-ready
    assert description["detector"] == "patchcore" and description["model_hash"] == model.model_hash
    assert description["thresholds"]["image_threshold"] == model.calibration.image_threshold
    assert description["training"]["n_val"] == 10 and "fit_stems" not in description["training"]


def test_model_hash_tracks_file_bytes(trained, tmp_path: Path) -> None:
    _, out = trained
    copy = tmp_path / "copy"
    copy.mkdir()
    for p in out.iterdir():
        (copy / p.name).write_bytes(p.read_bytes())
    original = load_model(copy).model_hash
    assert original == load_model(out).model_hash  # depends on contents, not on location
    info = json.loads((copy / "training.json").read_text())
    info["category"] = "other"
    (copy / "training.json").write_text(json.dumps(info))
    assert load_model(copy).model_hash != original


def test_uncalibrated_model_and_bad_directories(trained, data: CategoryData, tmp_path) -> None:
    model, out = trained
    raw = InspectionModel(model.detector, None, {})
    result = raw.inspect([data.test[0].path])[0]
    assert result.decision is None and result.p_value is None and result.regions == []
    assert result.score == model.inspect([data.test[0].path])[0].score
    assert raw.model_hash is None and raw.describe()["thresholds"] is None
    assert raw.inspect([]) == []
    with pytest.raises(ModelFileError, match="not found"):
        load_model(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelFileError, match="model.json"):
        load_model(tmp_path / "empty")


def test_retrain_replaces_only_when_complete(trained, data, tmp_path, monkeypatch) -> None:
    _, out = trained
    target = tmp_path / "model"
    target.mkdir()
    for p in out.iterdir():
        (target / p.name).write_bytes(p.read_bytes())
    before = {p.name: p.read_bytes() for p in target.iterdir()}

    def broken_save(self, directory):  # the detector is saved, then calibration fails
        raise OSError("disk full")

    monkeypatch.setattr(Calibration, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        train_model(data, target, detector_params=PARAMS, alpha=0.1, random_state=2)
    assert {p.name: p.read_bytes() for p in target.iterdir()} == before  # old model intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # temp dir removed
    monkeypatch.undo()

    new = train_model(data, target, detector_params=PARAMS, alpha=0.1, random_state=2)
    assert json.loads((target / "training.json").read_text())["random_state"] == 2
    assert new.model_hash == load_model(target).model_hash != load_model(out).model_hash
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # backup removed

    not_a_model = tmp_path / "photos"
    not_a_model.mkdir()
    (not_a_model / "holiday.jpg").write_bytes(b"x")
    with pytest.raises(DefectmapError, match="refusing to replace"):
        train_model(data, not_a_model, detector_params=PARAMS)
    assert (not_a_model / "holiday.jpg").read_bytes() == b"x"


def test_ranking_metrics_unchanged_by_normalisation_on_detector_maps(
    trained, data, inspections
) -> None:
    from defectmap import metrics
    from defectmap.data.io import read_mask

    model, _ = trained
    results = inspections
    labels = np.array([s.label for s in data.test])
    gt = [np.zeros((128, 128), bool) if s.mask_path is None else read_mask(s.mask_path)
          for s in data.test]
    raw_maps = [r.anomaly_map for r in results]
    norm_maps = [model.calibration.normalize_map(m) for m in raw_maps]
    scores = np.array([r.score for r in results])
    norm_scores = np.array([r.normalized_score for r in results])
    assert metrics.image_auroc(norm_scores, labels) == metrics.image_auroc(scores, labels)
    assert metrics.aupro(norm_maps, gt) == metrics.aupro(raw_maps, gt)
    assert metrics.pixel_auroc(norm_maps, gt) == metrics.pixel_auroc(raw_maps, gt)


def test_separate_validation_folder_and_too_few_images(data, tmp_path) -> None:
    from dataclasses import replace

    from defectmap.calibrate import CalibrationError

    with pytest.raises(CalibrationError, match="only 24 good training images"):
        train_model(data, tmp_path / "m0", detector_params=PARAMS, min_val=24)
    assert not (tmp_path / "m0").exists()
    val_dir = tmp_path / "validation"
    val_dir.mkdir()
    for s in data.train[:10]:  # a separate folder of good images, not in the fitting set
        (val_dir / f"v{s.path.name}").write_bytes(s.path.read_bytes())
    fit_only = replace(data, train=data.train[10:], test=[])
    model = train_model(fit_only, tmp_path / "m1", detector_params=PARAMS, alpha=0.1,
                        validation_images=sorted(val_dir.iterdir()))
    assert model.info["validation_source"] == "separate validation images"
    assert model.info["n_fit"] == 14 and model.info["n_val"] == 10
    assert model.info["val_stems"] == sorted(f"v{s.stem}" for s in data.train[:10])
    assert model.calibration is not None and model.calibration.n_val == 10


RELOAD = r"""
import hashlib, json, sys
from defectmap.pipeline import load_model
model = load_model(sys.argv[1])
results = model.inspect(json.loads(sys.argv[2]))
print(json.dumps({
    "hash": model.model_hash,
    "detector": type(model.detector).__name__,
    "scores": [r.score for r in results],
    "p_values": [r.p_value for r in results],
    "decisions": [r.decision for r in results],
    "maps": [hashlib.sha256(r.anomaly_map.tobytes()).hexdigest() for r in results],
}))
"""


@pytest.mark.parametrize("detector", ["patchcore", "padim"])
def test_saved_model_reloads_in_a_fresh_process_with_identical_results(
    detector: str, data: CategoryData, tmp_path: Path
) -> None:
    import hashlib
    import subprocess
    import sys

    out = tmp_path / detector
    params = PARAMS if detector == "patchcore" else {"input_size": 64}
    model = train_model(data, out, detector=detector, detector_params=params, alpha=0.1)
    paths = [str(s.path) for s in data.test[::3]]
    expected = model.inspect(paths)
    # A new interpreter: nothing is shared with this process but the files on disk.
    proc = subprocess.run([sys.executable, "-c", RELOAD, str(out), json.dumps(paths)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)
    assert got["hash"] == model.model_hash
    assert got["detector"] == type(model.detector).__name__
    assert got["scores"] == [r.score for r in expected]
    assert got["p_values"] == [r.p_value for r in expected]
    assert got["decisions"] == [r.decision for r in expected]
    assert got["maps"] == [hashlib.sha256(r.anomaly_map.tobytes()).hexdigest()
                           for r in expected]
