"""The feedback loop without a browser: inspect, overrule, update, promote, reload, re-inspect."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import pytest

from defectmap.cli._common import run_app
from defectmap.feedback import FEEDBACK_FILE, FeedbackError, collect_verdicts, update_model
from defectmap.registry import Registry
from defectmap.serve import create_app
from defectmap.serve.audit import open_audit_log
from test_serve import LiveServer, post_image, synthetic_test_images, trained_model_dir

pytestmark = pytest.mark.timeout(300)


def wait_for(predicate, timeout: float = 30.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def test_false_alarm_overruled_updated_promoted_and_passed(
    tmp_path_factory: pytest.TempPathFactory, synthetic_root: Path, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    model_dir = trained_model_dir(tmp_path_factory, synthetic_root)
    images = synthetic_test_images(synthetic_root, tmp_path / "pasted")
    registry = tmp_path / "registry"
    assert run_app(["models", "add", str(registry), str(model_dir), "--promote"]) == 0
    first = Registry(registry).current()
    db = tmp_path / "audit" / "audit.sqlite3"
    db.parent.mkdir()
    app = create_app(registry, db_path=db, store_images=True, reload_s=0.1)
    sticker, defect = images["pasted"][0], images["defect"][0]
    with LiveServer(app) as live, httpx.Client(base_url=live.url, timeout=60) as http:
        flagged = post_image(http, sticker).json()
        assert flagged["decision"] == "defect" and flagged["model"]["version"] == first
        real = post_image(http, defect).json()
        # The operator overrules the false alarm and confirms the defect.
        said = http.post(flagged["links"]["verdict"],
                         json={"verdict": "ok", "operator": "ana", "note": "label sticker"})
        assert said.status_code == 200, said.text
        assert said.json()["verdict"] == "ok" and said.json()["seq"] >= 1
        assert http.post(real["links"]["verdict"],
                         json={"verdict": "defect", "operator": "ben"}).status_code == 200
        row = http.get(flagged["links"]["self"]).json()
        assert row["decision"] == "defect"  # the decision stays what the model said
        assert row["verdict"]["operator"] == "ana" and len(row["verdicts"]) == 1
        bad = http.post(flagged["links"]["verdict"], json={"verdict": "maybe", "operator": "x"})
        assert bad.status_code == 422
        unknown = http.post("/v1/inspections/nope/verdict",
                            json={"verdict": "ok", "operator": "x"})
        assert unknown.status_code == 404 and unknown.json()["error"] == "not_found"

        # Update from the verdicts (the CLI), then promote: the service follows.
        rc = run_app(["update", str(registry), "--from-verdicts", str(db)])
        out = capsys.readouterr().out
        assert rc == 0, out
        assert "false alarms 1 -> 0" in out and "1 confirmed good, 1 confirmed defects" in out
        versions = Registry(registry).versions()
        assert len(versions) == 2 and versions[1].parent == first
        second = versions[1].id
        assert Registry(registry).current() == first  # an update is not promoted by itself
        assert run_app(["models", "promote", str(registry), second]) == 0
        wait_for(lambda: http.get("/healthz").json()["model_version"] == second)

        again = post_image(http, sticker).json()
        assert again["decision"] == "ok" and again["model"]["version"] == second
        real_again = post_image(http, defect).json()
        assert again["image_sha256"] == flagged["image_sha256"]
        trail = http.get("/v1/inspections", params={"after": 0}).json()["inspections"]
        assert [r["model"]["version"] for r in trail] == [first, first, second, second]

        # Rollback switches back just as well.
        assert run_app(["models", "rollback", str(registry)]) == 0
        wait_for(lambda: http.get("/healthz").json()["model_version"] == first)
        assert post_image(http, sticker).json()["decision"] == "defect"

    feedback = json.loads((Registry(registry).versions_dir / second / FEEDBACK_FILE).read_text())
    report = feedback["report"]
    # The report counts what each version decided on the held images.
    assert report["before"] == {"false_alarms": 1, "misses": int(real["decision"] == "ok")}
    assert report["after"] == {"false_alarms": 0, "misses": int(real_again["decision"] == "ok")}
    assert report["added_images"] == 1 and report["added_patches"] > 0
    assert [h["verdict"] for h in feedback["held"]] == ["ok", "defect"]


def test_update_needs_stored_images_and_verdicts(
    tmp_path_factory: pytest.TempPathFactory, synthetic_root: Path, tmp_path: Path
) -> None:
    model_dir = trained_model_dir(tmp_path_factory, synthetic_root)
    images = synthetic_test_images(synthetic_root, tmp_path / "pasted")
    db = tmp_path / "audit.sqlite3"
    with LiveServer(create_app(model_dir, db_path=db)) as live, \
            httpx.Client(base_url=live.url, timeout=60) as http:
        flagged = post_image(http, images["pasted"][0]).json()
        http.post(flagged["links"]["verdict"], json={"verdict": "ok", "operator": "ana"})
    store = open_audit_log(db)
    feedback = collect_verdicts(store, db.parent)
    store.close()
    assert feedback.good == [] and "--store-images" in feedback.skipped[0]
    with pytest.raises(FeedbackError, match="--store-images"):
        update_model(model_dir, feedback, out_dir=tmp_path / "new")
    with pytest.raises(FeedbackError, match="--out"):
        update_model(model_dir, feedback)


def test_validation_images_are_found_again_for_each_source(
    synthetic_root: Path, tmp_path: Path
) -> None:
    from defectmap.data.layouts import load_category
    from defectmap.data.synth_layouts import make_loco_dataset
    from defectmap.feedback import validation_images
    from defectmap.pipeline import InspectionModel

    def model(info: dict) -> InspectionModel:  # type: ignore[type-arg]
        return InspectionModel(object(), None, info, model_hash="h")  # type: ignore[arg-type]

    mvtec = load_category(synthetic_root, "synthetic")
    picked = mvtec.train[:3]
    found = validation_images(model({
        "validation_source": "split of train/good", "dataset_root": str(mvtec.root),
        "val_stems": [s.stem for s in picked]}))
    assert found == [s.path for s in picked]

    loco = load_category(make_loco_dataset(tmp_path / "loco", category="box", seed=0))
    assert loco.validation
    found = validation_images(model({
        "validation_source": "validation split of the dataset", "dataset_root": str(loco.root),
        "val_stems": [s.stem for s in loco.validation]}))
    assert found == [s.path for s in loco.validation]

    with pytest.raises(FeedbackError, match="--validation"):
        validation_images(model({"validation_source": "separate validation images"}))
    with pytest.raises(FeedbackError, match="missing"):
        validation_images(model({"validation_source": "split of train/good",
                                 "dataset_root": str(mvtec.root), "val_stems": ["nope"]}))


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::defectmap.calibrate.CalibrationWarning")
def test_update_of_an_exported_model_is_exported(
    tmp_path_factory: pytest.TempPathFactory, synthetic_root: Path, tmp_path: Path
) -> None:
    """A registry serving ONNX Runtime gets an exported child version it can switch to."""
    pytest.importorskip("onnxruntime")
    from defectmap.export import export_model
    from defectmap.runtime import is_export_dir

    model_dir = trained_model_dir(tmp_path_factory, synthetic_root)
    exported = tmp_path / "exported"
    export_model(model_dir, exported, format="onnx")
    registry = tmp_path / "registry"
    Registry(registry).promote(Registry(registry).add(exported).id)
    sticker = synthetic_test_images(synthetic_root, tmp_path / "pasted")["pasted"][0]
    db = tmp_path / "audit.sqlite3"
    app = create_app(registry, db_path=db, store_images=True, reload_s=0.1,
                     runtime="onnxruntime")
    with LiveServer(app) as live, httpx.Client(base_url=live.url, timeout=60) as http:
        assert http.get("/v1/model").json()["runtime"] == "onnxruntime"
        flagged = post_image(http, sticker).json()
        assert flagged["decision"] == "defect"
        http.post(flagged["links"]["verdict"], json={"verdict": "ok", "operator": "ana"})
        store = open_audit_log(db)
        report = update_model(registry, collect_verdicts(store, db.parent))
        store.close()
        child = Registry(registry).versions_dir / str(report.version)
        assert is_export_dir(child) and (child / FEEDBACK_FILE).is_file()
        Registry(registry).promote(str(report.version))
        wait_for(lambda: http.get("/healthz").json()["model_version"] == report.version)
        again = post_image(http, sticker).json()
        assert again["decision"] == "ok" and http.get("/v1/model").json()["runtime"] == \
            "onnxruntime"
    assert report.before["false_alarms"] == 1 and report.after["false_alarms"] == 0


def _cross_fitted(synthetic_root: Path, out: Path, detector: str) -> Path:
    import warnings

    from defectmap.data.mvtec import load_category
    from defectmap.pipeline import train_model

    params = {"input_size": 128, **({"coreset_ratio": 0.1} if detector == "patchcore" else {})}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a small synthetic set: few out-of-fold scores
        train_model(load_category(synthetic_root, "synthetic"), out, detector=detector,
                    detector_params=params, alpha=0.1, n_folds=3, random_state=0)
    return out


def test_update_of_a_cross_fitted_patchcore_keeps_its_thresholds(
    synthetic_root: Path, tmp_path: Path
) -> None:
    """No validation images of its own: the thresholds stay (scores can only fall), the
    false alarm is cleared, and no image scores higher under the new model."""
    from defectmap.feedback import Feedback, HeldImage
    from defectmap.pipeline import load_model

    model_dir = _cross_fitted(synthetic_root, tmp_path / "model", "patchcore")
    old = load_model(model_dir)
    assert old.info["calibration_method"] == "cross_fit"
    images = synthetic_test_images(synthetic_root, tmp_path / "pasted")
    sticker = images["pasted"][0]
    assert old.inspect([sticker])[0].decision == "defect"
    feedback = Feedback(good=[HeldImage("0" * 64, sticker, "ok", "ana", "i1", "defect", None)])
    report = update_model(model_dir, feedback, out_dir=tmp_path / "new")
    assert report.thresholds == "kept" and report.thresholds_after == report.thresholds_before
    assert report.before["false_alarms"] == 1 and report.after["false_alarms"] == 0
    new = load_model(tmp_path / "new")
    assert new.calibration.to_dict() == old.calibration.to_dict()
    probe = images["good"] + images["defect"] + images["pasted"][1:]
    before, after = old.detector.predict(probe), new.detector.predict(probe)
    assert (after.scores <= before.scores + 1e-6).all()
    assert (after.scores < before.scores - 1e-6).any()  # the bank did grow where it mattered
    for a, b in zip(after.maps, before.maps, strict=True):
        assert float((a - b).max()) <= 1e-5


def test_update_of_a_cross_fitted_padim_needs_validation_images(
    synthetic_root: Path, tmp_path: Path
) -> None:
    from defectmap.feedback import Feedback, HeldImage

    model_dir = _cross_fitted(synthetic_root, tmp_path / "model", "padim")
    sticker = synthetic_test_images(synthetic_root, tmp_path / "pasted")["pasted"][0]
    feedback = Feedback(good=[HeldImage("0" * 64, sticker, "ok", "ana", "i1", "defect", None)])
    with pytest.raises(FeedbackError, match="scores can rise after add_good.*--validation DIR"):
        update_model(model_dir, feedback, out_dir=tmp_path / "new")
    assert not (tmp_path / "new").exists()
