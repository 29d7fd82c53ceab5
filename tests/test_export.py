"""Export to ONNX / OpenVINO: parity with the torch path on synthetic data, and bad input.

Tiny models (64 px input) on the synthetic fixture, so that each export takes seconds. The
parity figures are computed here on the synthetic test images, independently of the check
that ``export_model`` runs itself on its generated images.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from defectmap.data.io import read_image, read_mask
from defectmap.data.mvtec import load_category
from defectmap.detectors import PatchCore, create_detector
from defectmap.detectors.base import _REGISTRY, register_detector
from defectmap.detectors.neighbors import nearest_neighbors
from defectmap.errors import ModelFileError
from defectmap.export import PARITY_RTOL, ExportError, GraphNeighbors, export_model
from defectmap.metrics import aupro, image_auroc, pixel_auroc
from defectmap.pipeline import load_model, recalibrate, train_model
from defectmap.runtime import ExportedModel, read_manifest

PARAMS = {"patchcore": {"input_size": 64, "coreset_ratio": 0.25}, "padim": {"input_size": 64}}


def test_graph_neighbours_equal_the_chunked_torch_search() -> None:
    gen = torch.Generator().manual_seed(0)
    bank = torch.rand(1000, 16, generator=gen)
    queries = torch.rand(300, 16, generator=gen)
    for chunk_rows in (1000, 300, 7, 3):  # one chunk, several, many small, fewer rows than k
        graph = GraphNeighbors(bank, chunk_rows=chunk_rows)
        for k in (1, 3, 5):  # k > 1: the two-level TopK over blocks of 32 rows
            dist, idx = graph.search(queries, k)
            ref_dist, ref_idx = nearest_neighbors(queries, bank, k)
            assert torch.equal(idx, ref_idx)
            torch.testing.assert_close(dist, ref_dist, rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def category(synthetic_root: Path):
    return load_category(synthetic_root, "synthetic")


@pytest.fixture(scope="module")
def test_set(category):
    images = [read_image(s.path) for s in category.test]
    masks = [read_mask(s.mask_path) if s.mask_path is not None else np.zeros(im.shape[:2], bool)
             for s, im in zip(category.test, images, strict=True)]
    labels = np.array([s.label for s in category.test])
    return images, masks, labels


def _trained(category, tmp_path_factory: pytest.TempPathFactory, detector: str) -> Path:
    out = tmp_path_factory.mktemp(f"{detector}_models") / "model"
    train_model(category, out, detector=detector, detector_params=PARAMS[detector], alpha=0.1)
    return out


@pytest.fixture(scope="module")
def patchcore_dir(category, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _trained(category, tmp_path_factory, "patchcore")


@pytest.fixture(scope="module")
def patchcore_export(patchcore_dir: Path) -> Path:
    out = patchcore_dir.parent / "exported"
    export_model(patchcore_dir, out, format="openvino", fp16=True)
    return out


@pytest.fixture(scope="module")
def padim_export(category, tmp_path_factory: pytest.TempPathFactory) -> Path:
    model_dir = _trained(category, tmp_path_factory, "padim")
    out = model_dir.parent / "exported"
    export_model(model_dir, out, format="openvino")
    return out


def _relative(reference: np.ndarray, other: np.ndarray) -> float:
    return float(np.abs(other - reference).max() / np.abs(reference).max())


def _check_parity(model_dir: Path, export_dir: Path, test_set, runtimes: list[str]) -> None:
    images, masks, labels = test_set
    torch_model = load_model(model_dir)
    reference = torch_model.detector.predict(images)
    decisions = torch_model.calibration.decide(reference.scores)
    ref_metrics = [round(image_auroc(reference.scores, labels), 4),
                   round(pixel_auroc(reference.maps, masks), 4),
                   round(aupro(reference.maps, masks), 4)]
    for runtime in runtimes:
        session = ExportedModel(export_dir, runtime=runtime)
        assert session.runtime == runtime
        pred = session.predict(images)
        assert pred.scores.dtype == np.float32 and pred.scores.shape == (len(images),)
        score_rel = np.abs(pred.scores - reference.scores) / np.abs(reference.scores)
        assert score_rel.max() <= PARITY_RTOL, runtime
        for ref_map, new_map in zip(reference.maps, pred.maps, strict=True):
            assert new_map.shape == ref_map.shape and new_map.dtype == np.float32
            assert _relative(ref_map, new_map) <= PARITY_RTOL, runtime
        assert np.array_equal(torch_model.calibration.decide(pred.scores), decisions), runtime
        # the same ranking: every threshold between two images decides the same way
        assert np.array_equal(np.argsort(pred.scores), np.argsort(reference.scores)), runtime
        metrics = [round(image_auroc(pred.scores, labels), 4),
                   round(pixel_auroc(pred.maps, masks), 4), round(aupro(pred.maps, masks), 4)]
        assert metrics == ref_metrics, runtime


def test_patchcore_export_has_parity_on_both_runtimes(patchcore_dir, patchcore_export,
                                                      test_set) -> None:
    _check_parity(patchcore_dir, patchcore_export, test_set, ["onnxruntime", "openvino"])


def test_padim_export_has_parity_on_both_runtimes(padim_export, test_set) -> None:
    # the exported folder holds the torch model too: it is its own torch reference
    _check_parity(padim_export, padim_export, test_set, ["onnxruntime", "openvino"])
    assert read_manifest(padim_export)["graph"]["image_score"] == "native_map_max"


def test_network_resolution_maps_match_torch(patchcore_dir, patchcore_export,
                                             test_set) -> None:
    from defectmap.export import ScoringGraph, network_map_parity

    reference = ScoringGraph(load_model(patchcore_dir).detector, trace=False)
    for runtime in ("onnxruntime", "openvino"):
        figures = network_map_parity(reference, ExportedModel(patchcore_export, runtime),
                                     test_set[0])
        assert figures["map_rel"] <= PARITY_RTOL and figures["graph_score_rel"] <= PARITY_RTOL


def test_manifest_records_files_parity_and_preprocessing(patchcore_dir,
                                                         patchcore_export) -> None:
    manifest = read_manifest(patchcore_export)
    assert set(manifest["files"]) == {
        "model.onnx", "openvino/model.xml", "openvino/model.bin", "openvino/model-fp16.xml",
        "openvino/model-fp16.bin", "model.json", "weights.safetensors", "calibration.json",
        "training.json"}
    assert manifest["source_model_hash"] == load_model(patchcore_dir).model_hash
    assert manifest["preprocess"]["mean"] == [0.5, 0.5, 0.5]  # EfficientNet-Lite's
    assert manifest["graph"]["input_size"] == 64
    for key in ("onnxruntime/fp32", "openvino/fp32"):
        assert max(manifest["parity"][key].values()) <= PARITY_RTOL
    assert 0 < manifest["parity"]["openvino/fp16"]["score_rel"] < 0.05  # measured, not exact
    # calibration travels beside the graph, unchanged
    assert (patchcore_export / "calibration.json").read_bytes() == (
        patchcore_dir / "calibration.json").read_bytes()


def test_batches_and_fp16(patchcore_export, test_set) -> None:
    images = test_set[0][:5]
    session = ExportedModel(patchcore_export, runtime="openvino")
    one = session.predict(images, batch_size=1)
    three = session.predict(images, batch_size=3)
    np.testing.assert_allclose(three.scores, one.scores, rtol=1e-5)
    fp16 = ExportedModel(patchcore_export, runtime="openvino", precision="fp16")
    assert np.abs(fp16.predict(images).scores / one.scores - 1).max() < 0.05


def test_pixel_input_graph_has_parity(patchcore_dir, test_set) -> None:
    out = patchcore_dir.parent / "exported_pixels"
    manifest = export_model(patchcore_dir, out, format="onnx", input="pixels")
    assert manifest["graph"]["input"] == "pixels" and list(manifest["runtimes"]) == [
        "onnxruntime"]
    _check_parity(patchcore_dir, out, test_set, ["onnxruntime"])
    with pytest.raises(ValueError, match="one size"):
        ExportedModel(out).prepare([np.zeros((8, 8), np.uint8), np.zeros((9, 8), np.uint8)])


def test_context_map_exports_with_parity(category, test_set, tmp_path: Path) -> None:
    model_dir = tmp_path / "model"
    train_model(category, model_dir, detector="patchcore", alpha=0.1,
                detector_params={**PARAMS["patchcore"], "context": 0.5})
    plain = load_model(model_dir).detector
    plain.context = 0.0
    assert not np.allclose(plain.predict(test_set[0][:2]).maps[1],
                           load_model(model_dir).detector.predict(test_set[0][:2]).maps[1])
    export_model(model_dir, tmp_path / "exported", format="onnx")
    _check_parity(model_dir, tmp_path / "exported", test_set, ["onnxruntime"])


def test_a_changed_export_is_refused(patchcore_export, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(patchcore_export, copy)
    graph = copy / "model.onnx"
    data = bytearray(graph.read_bytes())
    data[-1] ^= 1
    graph.write_bytes(bytes(data))
    with pytest.raises(ModelFileError, match="model.onnx: SHA-256 differs"):
        ExportedModel(copy)


def test_recalibrate_an_export_keeps_its_manifest_true(patchcore_export, test_set,
                                                      tmp_path: Path) -> None:
    images = test_set[0]
    copy = tmp_path / "copy"
    shutil.copytree(patchcore_export, copy)
    before = read_manifest(copy)
    old = load_model(copy, runtime="onnxruntime").calibration
    new = recalibrate(copy, alpha=0.25)
    after = read_manifest(copy)  # checks every file's SHA-256 against the new manifest
    assert new.alpha == 0.25 and new.val_scores == old.val_scores
    assert new.image_threshold == new.val_scores[new.rank - 1] < old.image_threshold
    assert after["files"]["calibration.json"] != before["files"]["calibration.json"]
    assert {k: v for k, v in after["files"].items() if k != "calibration.json"} == {
        k: v for k, v in before["files"].items() if k != "calibration.json"}
    assert after["parity"] == before["parity"] and after["graph"] == before["graph"]
    model = load_model(copy, runtime="onnxruntime")
    assert model.calibration == new
    results = model.inspect(images)
    scores = np.array([r.score for r in results])
    assert [r.decision == "defect" for r in results] == list(scores > new.image_threshold)
    assert [r.p_value for r in results] == list(new.p_values(scores))
    # a folder changed since export is refused, and left as it was
    (copy / "notes.txt").write_text("x")
    with pytest.raises(ModelFileError, match="notes.txt: not listed in export.json"):
        recalibrate(copy, alpha=0.3)
    assert json.loads((copy / "calibration.json").read_text())["alpha"] == 0.25


# -- bad input: one clear error, nothing written ------------------------------------------
def _no_leftovers(parent: Path, name: str) -> None:
    assert not [p.name for p in parent.iterdir() if p.name.startswith(f".{name}.tmp")]


def test_existing_output_folder_is_refused(patchcore_dir, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(ExportError, match="already exists"):
        export_model(patchcore_dir, out)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


@pytest.mark.parametrize("options, match", [
    ({"format": "tflite"}, "unknown format 'tflite'"),
    ({"input": "jpeg"}, "unknown input 'jpeg'"),
    ({"format": "openvino", "input": "pixels"}, "ONNX-only"),
    ({"format": "onnx", "fp16": True}, "openvino only"),
])
def test_bad_options_are_refused(patchcore_dir, tmp_path: Path, options, match) -> None:
    with pytest.raises(ExportError, match=match):
        export_model(patchcore_dir, tmp_path / "out", **options)
    assert not (tmp_path / "out").exists()


def test_unfitted_or_corrupt_model_is_refused(patchcore_dir, tmp_path: Path) -> None:
    unfitted = tmp_path / "unfitted"
    unfitted.mkdir()
    shutil.copy(patchcore_dir / "model.json", unfitted / "model.json")  # no weights
    with pytest.raises(ModelFileError, match="weights.safetensors: missing"):
        export_model(unfitted, tmp_path / "out1")
    corrupt = tmp_path / "corrupt"
    shutil.copytree(patchcore_dir, corrupt)
    (corrupt / "weights.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(ModelFileError, match="weights.safetensors"):
        export_model(corrupt, tmp_path / "out2")
    with pytest.raises(ModelFileError, match="not found"):
        export_model(tmp_path / "nothing", tmp_path / "out3")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corrupt", "unfitted"]


class _NumpyScorer(PatchCore):
    """A detector whose scoring goes through SciPy: it runs, but cannot become a graph."""

    name = "numpy-scorer-for-tests"

    def _predict_batch(self, features):
        from scipy import ndimage

        grid = ndimage.maximum_filter(self._embed(features).numpy().mean(1), size=3)
        return torch.from_numpy(grid).flatten(1).amax(1), torch.from_numpy(grid)


@pytest.fixture()
def numpy_scorer() -> Iterator[None]:
    register_detector(_NumpyScorer)
    try:
        yield
    finally:
        del _REGISTRY[_NumpyScorer.name]


def test_detector_that_cannot_be_traced_is_refused(numpy_scorer, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    detector = create_detector(_NumpyScorer.name, input_size=64, coreset_ratio=0.5)
    detector.fit([rng.integers(0, 256, (64, 64, 3), dtype=np.uint8) for _ in range(2)])
    detector.save(tmp_path / "model")
    with pytest.raises(ExportError, match="numpy-scorer-for-tests detector cannot be exported"):
        export_model(tmp_path / "model", tmp_path / "out")
    assert not (tmp_path / "out").exists()
    _no_leftovers(tmp_path, "out")
    assert json.loads((tmp_path / "model" / "model.json").read_text())["detector"] == (
        _NumpyScorer.name)


TORCH_FREE = r"""
import json, sys
for name in ("torch", "torchvision", "timm", "onnx", "onnxscript", "faiss"):
    sys.modules[name] = None  # importing any of them now raises ImportError
export_dir, out, db, root, *paths = sys.argv[1:]
from defectmap.cli import run_app
from defectmap.runtime import ExportedModel

rows = {}
for runtime in ("onnxruntime", "openvino"):
    prediction = ExportedModel(export_dir, runtime=runtime).predict(paths)
    rows[runtime] = prediction.scores.tolist()
code = run_app(["predict", export_dir, *paths, "--out", out])  # default runtime
fit_code = run_app(["fit", root, "--category", "synthetic", "--out", out + "-model"])

from fastapi.testclient import TestClient
from defectmap.serve import create_app

app = create_app(export_dir, db_path=db, runtime="openvino")
with TestClient(app) as client:
    with open(paths[0], "rb") as fh:
        answer = client.post("/v1/inspect", files={"image": ("part.png", fh, "image/png")})
    model = client.get("/v1/model").json()
print(json.dumps({"scores": rows, "predict": code, "fit": fit_code,
                  "status": answer.status_code, "inspection": answer.json(),
                  "model": model, "torch": sys.modules["torch"] is None}))
"""


def test_runtime_predicts_and_serves_with_torch_blocked(patchcore_export, category,
                                                        synthetic_root: Path,
                                                        tmp_path: Path) -> None:
    import subprocess
    import sys

    paths = [str(s.path) for s in category.test[:3]]
    out, db = tmp_path / "predictions", tmp_path / "audit.sqlite3"
    argv = [str(patchcore_export), str(out), str(db), str(synthetic_root), *paths]
    done = subprocess.run([sys.executable, "-c", TORCH_FREE, *argv], capture_output=True,
                          text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.splitlines()[-1])
    assert result["torch"] is True  # nothing managed to import torch
    torch_model = load_model(patchcore_export, runtime="torch")
    reference = torch_model.inspect(paths)
    ref_scores = [r.score for r in reference]
    for runtime in ("onnxruntime", "openvino"):
        np.testing.assert_allclose(result["scores"][runtime], ref_scores, rtol=PARITY_RTOL)
    # predict: the same folder of results as the torch path, decisions identical
    assert result["predict"] == 0
    rows = json.loads((out / "results.json").read_text())
    rows = rows["results"] if isinstance(rows, dict) else rows
    assert [r["decision"] for r in rows] == [r.decision for r in reference]
    np.testing.assert_allclose([r["score"] for r in rows], ref_scores, rtol=PARITY_RTOL)
    assert (out / "maps").is_dir() and (out / "overlays").is_dir()
    # fit needs torch: exit 1 with one line naming the extra
    assert result["fit"] == 1
    assert "pip install 'defectmap[train]'" in done.stderr
    assert len([line for line in done.stderr.splitlines() if "error:" in line]) == 1
    # serve: an inspection answered by OpenVINO, logged with the model's hash
    assert result["status"] == 200, result["inspection"]
    inspection = result["inspection"]
    assert inspection["decision"] == reference[0].decision
    assert inspection["score"] == pytest.approx(reference[0].score, rel=PARITY_RTOL)
    assert result["model"]["runtime"] == "openvino"
    assert inspection["model"]["hash"] == torch_model.model_hash
