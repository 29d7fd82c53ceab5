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
    from defectmap.detectors import create_detector

    model, out = trained
    assert sorted(p.name for p in out.iterdir()) == [
        "calibration.json", "model.json", "training.json", "weights.safetensors"]
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no temp dirs left
    info = json.loads((out / "training.json").read_text())
    train_stems = [s.stem for s in data.train]
    # cross-fitted by default: 24 good images, 5 folds of 4, 4 left over fit every fold model
    assert info["calibration_method"] == "cross_fit" and info["n_folds"] == 5
    assert info["n_fit"] == 24 and info["n_val"] == 20 and info["fit_stems"] == train_stems
    folds = info["calibration"]["folds"]
    assert sorted(folds) == sorted([-1] * 4 + [0, 1, 2, 3, 4] * 4)
    assert info["val_stems"] == [s for s, f in zip(train_stems, folds, strict=True) if f >= 0]
    assert info["calibration"]["shared_features"] is True
    assert "5 folds of 4" in info["calibration_summary"]
    assert info["random_state"] == 1 and info["alpha"] == 0.1 and info["category"] == "synthetic"
    assert info["detector_params"]["random_state"] == 1  # seeds the detector too
    assert info["detector_params"]["input_size"] == 64
    cal = Calibration.load(out)
    assert cal.method == "cross_fit" and cal.n_folds == 5
    assert cal.n_val == 20 and cal.alpha == 0.1 and cal.guarantee_holds  # n >= 9 for 0.1
    assert cal.decision_rule == "p_value"
    # the final model is the plain fit on all good images (shared features change nothing)
    paths = [s.path for s in data.train]
    plain = create_detector("patchcore", **info["detector_params"]).fit(paths)
    assert torch_equal(plain.memory_bank_, model.detector.memory_bank_)
    # out-of-fold scores: fold 2's images scored by a model fitted without them, through
    # the public fit/predict (no shared features)
    fold = create_detector("patchcore", **info["detector_params"]).fit(
        [p for p, f in zip(paths, folds, strict=True) if f != 2])
    held = fold.predict([p for p, f in zip(paths, folds, strict=True) if f == 2])
    assert set(held.scores.astype(np.float64).tolist()) <= set(cal.val_scores)
    # and they are not what the final model (which saw them) gives them
    assert not set(model.detector.predict([p for p, f in zip(paths, folds, strict=True)
                                           if f == 2]).scores.tolist()) & set(cal.val_scores)
    assert model.model_hash is not None and len(model.model_hash) == 64


def torch_equal(a, b) -> bool:
    return bool(np.array_equal(np.asarray(a), np.asarray(b)))


def test_calibration_rule_is_explicit_and_controllable(data: CategoryData, tmp_path) -> None:
    """Issue 12 item 6: no hidden minimum, counts stated, conflicting options refused."""
    from dataclasses import replace

    from defectmap.calibrate import CalibrationError, CalibrationWarning

    twelve = replace(data, train=data.train[:12], test=[])
    with pytest.warns(CalibrationWarning, match="2 validation images are too few"):
        model = train_model(twelve, tmp_path / "split", detector_params=PARAMS, alpha=0.1,
                            val_ratio=0.1)
    info = model.info
    assert info["calibration_method"] == "split" and info["n_fit"] == 10 and info["n_val"] == 2
    assert info["calibration_summary"] == (
        "split conformal: 2 of 12 good training images held out for validation "
        "(ceil(0.1 x 12)); the detector is fitted on the other 10")
    assert model.calibration is not None and model.calibration.decision_rule == "largest_score"
    for kwargs, message in [
        ({"val_ratio": 0.0}, "holds out no validation image of 12"),
        ({"val_ratio": 0.1, "n_folds": 3}, "excludes n_folds"),
        ({"min_val": 5}, "min_val applies to a validation split"),
        ({"n_folds": 13}, "only 12 good training images for 13 folds"),
        ({"n_folds": 1}, "at least 2 folds"),
        ({"val_ratio": 0.5, "min_val": 12}, "leaves 0 to fit"),
    ]:
        with pytest.raises(CalibrationError, match=message):
            train_model(twelve, tmp_path / "bad", detector_params=PARAMS, **kwargs)
        assert not (tmp_path / "bad").exists()


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
    assert description["training"]["n_val"] == 20 and "fit_stems" not in description["training"]
    assert description["thresholds"]["method"] == "cross_fit"
    assert description["thresholds"]["decision_rule"] == "p_value"
    assert all(x.decision_rule == "p_value" for x in a)


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
        train_model(data, tmp_path / "m0", detector_params=PARAMS, val_ratio=0.1, min_val=24)
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


def _copy_model(source: Path, target: Path) -> Path:
    target.mkdir()
    for p in source.iterdir():
        (target / p.name).write_bytes(p.read_bytes())
    return target


def test_recalibrate_moves_the_operating_point_without_the_detector(
    trained, data, tmp_path, monkeypatch
) -> None:
    import defectmap.detectors
    from defectmap.calibrate import CalibrationError, CalibrationWarning, conformal_rank
    from defectmap.pipeline import recalibrate

    model, out = trained
    folder = _copy_model(out, tmp_path / "model")
    before = Calibration.load(folder)

    def no_detector(*args, **kwargs):
        raise AssertionError("recalibrate loaded the detector")

    monkeypatch.setattr(defectmap.detectors, "load_detector", no_detector)
    with pytest.warns(CalibrationWarning, match=r"20 out-of-fold scores \(5 folds\) are too few"):
        new = recalibrate(folder, alpha=0.02)  # needs 49 scores
    assert new.decision_rule == "largest_score" and new.image_threshold == max(new.val_scores)
    new = recalibrate(folder, alpha=0.3, pixel_fpr=0.005)
    monkeypatch.undo()
    assert Calibration.load(folder) == new != before
    k = conformal_rank(20, 0.3)  # ceil(21 * 0.7) = 15
    assert k == 15 and new.image_threshold == new.val_scores[k - 1] == before.val_scores[k - 1]
    assert new.pixel_threshold == dict(before.pixel_thresholds)[0.005] < before.pixel_threshold
    assert new.val_scores == before.val_scores and new.method == "cross_fit"
    reloaded = load_model(folder)
    assert reloaded.model_hash != model.model_hash  # the decisions changed, so does the hash
    results = reloaded.inspect([s.path for s in data.test])
    assert [r.decision == "defect" for r in results] == [r.p_value <= 0.3 for r in results]
    with pytest.raises(CalibrationError, match=r"pixel_fpr 0.003 was not stored .*0.001"):
        recalibrate(folder, pixel_fpr=0.003)
    assert Calibration.load(folder) == new  # nothing written on error


def test_known_defects_are_only_measured(trained, data, tmp_path) -> None:
    from dataclasses import replace

    model, _ = trained
    defects = [s.path for s in data.test if s.label == 1][:5]
    with_defects = train_model(TrainOnly(replace(data, test=[])),  # type: ignore[arg-type]
                               tmp_path / "m", detector_params=PARAMS, alpha=0.1,
                               random_state=1, defect_images=defects)
    cal, plain = with_defects.calibration, model.calibration
    assert cal is not None and plain is not None
    # the memory bank and the thresholds are exactly those of the model without defects
    assert torch_equal(with_defects.detector.memory_bank_, model.detector.memory_bank_)
    assert cal.image_threshold == plain.image_threshold and cal.val_scores == plain.val_scores
    expected = np.sort(model.detector.predict(defects).scores.astype(np.float64))
    assert cal.defect_scores == tuple(expected.tolist())
    estimate = cal.miss_estimate
    assert estimate is not None and estimate.n_defects == 5
    assert estimate.n_missed == int(np.sum(expected <= cal.image_threshold))
    assert estimate.low <= estimate.miss_rate <= estimate.high
    assert with_defects.info["n_defects"] == 5
    assert Calibration.load(tmp_path / "m").miss_estimate == estimate


def test_a_model_with_a_calibration_of_the_previous_format_loads_and_predicts(
    trained, data, tmp_path
) -> None:
    """calibration.json written by defectmap 0.1.0 before cross-fitting (format 1)."""
    _, out = trained
    folder = _copy_model(out, tmp_path / "old")
    fixture = Path(__file__).parent / "fixtures" / "calibration_v1.json"
    (folder / "calibration.json").write_bytes(fixture.read_bytes())
    model = load_model(folder)
    cal = model.calibration
    assert cal is not None and cal.method == "split" and cal.n_folds is None
    assert cal.n_val == 12 and cal.image_threshold == 4.1503 and cal.min_region_area == 2
    assert cal.pixel_thresholds == ((0.05, cal.pixel_threshold),) and cal.defect_scores == ()
    results = model.inspect([s.path for s in data.test[:4]])
    assert [r.decision for r in results] == [
        "defect" if r.score > 4.1503 else "ok" for r in results]
    assert all(r.decision_rule == "p_value" and r.mask is not None for r in results)
    assert cal.at(alpha=0.2).image_threshold == cal.val_scores[conformal_rank_(12, 0.2) - 1]


def conformal_rank_(n: int, alpha: float) -> int:
    from defectmap.calibrate import conformal_rank

    return conformal_rank(n, alpha)


def test_a_layouts_own_validation_split_calibrates_unless_folds_are_asked(tmp_path) -> None:
    """MVTec LOCO AD: split conformal on validation/good by default; n_folds cross-fits."""
    from defectmap.data.layouts import load_category as load_any
    from defectmap.data.synth_layouts import make_loco_dataset

    make_loco_dataset(tmp_path / "data", "c1", n_train=10, n_validation=5, n_good=2,
                      n_logical=1, n_structural=1, size=64, seed=4)
    loco = load_any(tmp_path / "data", "c1")
    own = train_model(loco, tmp_path / "own", detector_params=PARAMS, alpha=0.2)
    assert (own.info["calibration_method"], own.info["n_fit"], own.info["n_val"]) == (
        "split", 10, 5)
    assert own.info["validation_source"] == "validation split of the dataset"
    assert sorted(own.info["val_stems"]) == sorted(s.stem for s in loco.validation)
    direct = own.detector.predict([s.path for s in loco.validation]).scores
    assert own.calibration is not None
    assert own.calibration.val_scores == tuple(sorted(float(v) for v in direct))
    folds = train_model(loco, tmp_path / "folds", detector_params=PARAMS, alpha=0.2, n_folds=2)
    assert folds.calibration is not None and folds.calibration.method == "cross_fit"
    assert (folds.info["n_fit"], folds.calibration.n_val) == (10, 10)
    assert folds.info["validation_source"] == "out-of-fold scores of train/good"
