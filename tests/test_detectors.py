"""Common checks that every registered detector passes, plus the PatchCore/PaDiM cores."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from defectmap.data.io import read_image, read_mask
from defectmap.data.mvtec import load_category
from defectmap.detectors import (
    Detector,
    Prediction,
    UnknownDetectorError,
    create_detector,
    list_detectors,
    load_detector,
)
from defectmap.errors import ModelFileError, NotFittedError
from defectmap.metrics import image_auroc, pixel_auroc

SIZE = 128
# Small, fast settings; everything else is the detector's default.
TEST_PARAMS = {
    "patchcore": {"input_size": SIZE, "coreset_ratio": 0.1},
    "padim": {"input_size": SIZE},
}


def make(name: str, **extra) -> Detector:
    return create_detector(name, **{**TEST_PARAMS.get(name, {"input_size": SIZE}), **extra})


@pytest.fixture(scope="module")
def synthetic(synthetic_root: Path):
    data = load_category(synthetic_root, "synthetic")
    train = [read_image(s.path) for s in data.train]
    test = [read_image(s.path) for s in data.test]
    labels = np.array([s.label for s in data.test])
    return train, test, labels, data


@pytest.fixture(scope="module", params=list_detectors())
def fitted(request, synthetic) -> Detector:
    detector = make(request.param)
    assert detector.fit(synthetic[0]) is detector  # fit returns self
    return detector


def test_registry_lists_both_and_rejects_unknown_names() -> None:
    assert {"patchcore", "padim"} <= set(list_detectors())
    with pytest.raises(UnknownDetectorError, match="padim.*patchcore"):
        create_detector("no-such-detector")
    with pytest.raises(TypeError):
        create_detector("patchcore", coreset_ration=0.1)  # typos are not swallowed


@pytest.mark.parametrize("name", list_detectors())
def test_unfitted_detector_raises_not_fitted(name: str, tmp_path: Path) -> None:
    detector = make(name)
    image = np.zeros((SIZE, SIZE, 3), np.uint8)
    with pytest.raises(NotFittedError, match="fit"):
        detector.predict([image])
    with pytest.raises(NotFittedError):
        detector.save(tmp_path)


@pytest.mark.parametrize("name", list_detectors())
def test_get_params_round_trip(name: str) -> None:
    detector = make(name, random_state=7)
    params = detector.get_params()
    assert params["random_state"] == 7 and params["input_size"] == SIZE
    assert create_detector(name, **params).get_params() == params
    json.dumps(params)  # the config must be JSON-able


def test_shapes_and_dtypes_for_mixed_inputs(fitted: Detector, synthetic) -> None:
    train, test, _, data = synthetic
    rng = np.random.default_rng(0)
    gray = (rng.random((100, 150)) * 255).astype(np.uint8)
    small = np.ascontiguousarray(test[0][::2, ::3])  # (64, 43, 3)
    images = [test[0], gray, small, data.test[1].path]
    pred = fitted.predict(images, batch_size=3)
    assert isinstance(pred, Prediction)
    assert pred.scores.shape == (4,) and pred.scores.dtype == np.float32
    assert [m.shape for m in pred.maps] == [(SIZE, SIZE), (100, 150), (64, 43), (SIZE, SIZE)]
    assert all(m.dtype == np.float32 and np.isfinite(m).all() for m in pred.maps)
    assert np.isfinite(pred.scores).all()
    # Batching does not change results.
    one_by_one = fitted.predict(images, batch_size=1)
    np.testing.assert_allclose(one_by_one.scores, pred.scores, rtol=1e-4, atol=1e-5)
    assert fitted.predict([]).scores.shape == (0,)


@pytest.mark.parametrize("name", list_detectors())
def test_same_random_state_same_scores(name: str, synthetic) -> None:
    train, test, _, _ = synthetic
    first = make(name, random_state=3).fit(train[:8]).predict(test[:6])
    second = make(name, random_state=3).fit(train[:8]).predict(test[:6])
    np.testing.assert_array_equal(first.scores, second.scores)
    np.testing.assert_array_equal(first.maps[5], second.maps[5])
    other = make(name, random_state=4).fit(train[:8]).predict(test[:6])
    assert not np.array_equal(other.scores, first.scores)  # the seed is really used


def test_save_load_fresh_object_same_scores(fitted: Detector, synthetic, tmp_path: Path):
    _, test, _, _ = synthetic
    (tmp_path / "calibration.json").write_text('{"keep": true}')
    fitted.save(tmp_path)
    assert (tmp_path / "calibration.json").read_text() == '{"keep": true}'
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "calibration.json", "model.json", "weights.safetensors",
    ]
    meta = json.loads((tmp_path / "model.json").read_text())
    assert meta["detector"] == fitted.name and meta["params"] == fitted.get_params()
    expected = fitted.predict(test[:6])
    for loaded in (load_detector(tmp_path), type(fitted).load(tmp_path)):
        assert loaded is not fitted and type(loaded) is type(fitted)
        got = loaded.predict(test[:6])
        np.testing.assert_array_equal(got.scores, expected.scores)
        np.testing.assert_array_equal(got.maps[5], expected.maps[5])
    fitted.save(tmp_path)  # saving again replaces the files in place
    assert load_detector(tmp_path).get_params() == fitted.get_params()


def test_save_numpy_params_as_plain_json(fitted: Detector, tmp_path: Path) -> None:
    import copy

    detector = copy.copy(fitted)  # the fixture is shared: change a shallow copy
    detector.random_state = np.int64(3)
    detector.save(tmp_path)
    loaded = load_detector(tmp_path)
    assert loaded.get_params()["random_state"] == 3
    assert type(loaded.get_params()["random_state"]) is int


def test_broken_model_files_name_the_file(fitted: Detector, tmp_path: Path) -> None:
    with pytest.raises(ModelFileError, match="model.json"):
        load_detector(tmp_path)
    fitted.save(tmp_path)
    weights = tmp_path / "weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(ModelFileError, match="weights.safetensors"):
        load_detector(tmp_path)
    weights.unlink()
    with pytest.raises(ModelFileError, match="weights.safetensors"):
        load_detector(tmp_path)
    (tmp_path / "model.json").write_text("{not json")
    with pytest.raises(ModelFileError, match="model.json"):
        load_detector(tmp_path)
    (tmp_path / "model.json").write_text(json.dumps(
        {"format": 1, "detector": "nonexistent", "params": {}}))
    with pytest.raises(ModelFileError, match="nonexistent"):
        load_detector(tmp_path)


def test_pasted_square_scores_higher_and_map_peaks_inside(fitted: Detector, synthetic):
    _, test, labels, _ = synthetic
    clean = [img for img, y in zip(test, labels, strict=True) if y == 0]
    defective = clean[0].copy()
    y0, x0, side = 44, 52, 20
    checker = (np.indices((side, side)).sum(0) // 4 % 2 * 255).astype(np.uint8)
    defective[y0 : y0 + side, x0 : x0 + side] = checker[..., None]
    pred = fitted.predict([defective, *clean])
    assert pred.scores[0] > pred.scores[1:].max()
    peak_y, peak_x = np.unravel_index(np.argmax(pred.maps[0]), pred.maps[0].shape)
    assert y0 <= peak_y < y0 + side and x0 <= peak_x < x0 + side


def test_auroc_floor_on_synthetic_dataset(fitted: Detector, synthetic) -> None:
    """Floors well above chance (0.5); measured: image 0.75-0.78, pixel 0.98-0.99 at 128 px."""
    _, test, labels, data = synthetic
    pred = fitted.predict(test)
    masks = [
        read_mask(s.mask_path) if s.mask_path is not None else np.zeros(m.shape, bool)
        for s, m in zip(data.test, pred.maps, strict=True)
    ]
    assert image_auroc(pred.scores, labels) >= 0.7
    assert pixel_auroc(pred.maps, masks) >= 0.95


def test_shared_features_fit_and_score_exactly_as_fit_and_predict(
    fitted: Detector, synthetic
) -> None:
    """extract_features once, then fit/score subsets: what cross-fitting relies on."""
    train, test, _, _ = synthetic
    params = fitted.get_params()
    features = create_detector(fitted.name, **params).extract_features(train + test[:4])
    assert len(features) == len(train) + 4 and features.sizes[-1] == test[3].shape[:2]
    # all training images: the same model as fit(images), bit for bit
    full = create_detector(fitted.name, **params).fit_features(features, range(len(train)))
    on_features = full.predict_features(features, range(len(train), len(train) + 4))
    direct = fitted.predict(test[:4])
    assert np.array_equal(on_features.scores, direct.scores)
    assert all(np.array_equal(a, b) for a, b in zip(on_features.maps, direct.maps, strict=True))
    # a subset (a fold model) equals fit on those images
    subset = [1, 4, 5, 8, 9, 12]
    fold = create_detector(fitted.name, **params).fit_features(features, subset)
    plain = create_detector(fitted.name, **params).fit([train[i] for i in subset])
    assert np.array_equal(fold.predict_features(features, [0, 2]).scores,
                          plain.predict([train[0], train[2]]).scores)
    other = "padim" if fitted.name == "patchcore" else "patchcore"
    with pytest.raises(ValueError, match="features extracted with"):
        make(other).fit_features(features)
