"""Guards against silent wrong answers and lost outputs (issue 12, items 1, 3, 4, 5, 11).

A model without calibration is refused unless raw scores are asked for; images unlike the
training images are refused unless forced; a model folder holding other files is not
replaced, and a reader never sees a half-present model while a fit replaces it; predict
reads only the folder given and never its own output; every unreadable input is listed
before any long work starts.
"""

from __future__ import annotations

import json
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from defectmap.cli._common import run_app
from defectmap.data.mvtec import load_category
from defectmap.errors import DefectmapWarning, ImageReadError
from defectmap.evaluate.predict import predict_to_dir
from defectmap.files import make_temp_dir, replace_dir, sha256_file, sha256_tree
from defectmap.pipeline import load_model, train_model

# The names this issue added are imported inside the tests that use them, so that the other
# tests also run (and fail for what they check) on the code before the fix.

PARAMS = {"input_size": 64, "coreset_ratio": 0.25}


@pytest.fixture(scope="module")
def model_dir(synthetic_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("guards") / "model"
    with pytest.warns(DefectmapWarning):  # 10 validation images: too few for alpha 0.01
        train_model(load_category(synthetic_root, "synthetic"), out, detector_params=PARAMS,
                    random_state=0)
    return out


@pytest.fixture()
def uncalibrated_dir(model_dir: Path, tmp_path: Path) -> Path:
    folder = tmp_path / "uncalibrated"
    shutil.copytree(model_dir, folder)
    (folder / "calibration.json").unlink()
    return folder


def _good(synthetic_root: Path) -> list[Path]:
    return sorted((synthetic_root / "synthetic" / "test" / "good").glob("*.png"))


def _run(capsys: pytest.CaptureFixture[str], *argv: object) -> tuple[int, str, str]:
    rc = run_app([str(a) for a in argv])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


# -- 1. no calibration: refused, or raw scores only when asked ----------------------------


def test_predict_refuses_an_uncalibrated_model(uncalibrated_dir: Path, synthetic_root: Path,
                                               tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    images = _good(synthetic_root)[:2]
    rc, out, err = _run(capsys, "predict", uncalibrated_dir, *images, "--out", tmp_path / "p")
    assert rc == 1 and err.count("\n") == 1 and err.startswith("error: ")
    assert "calibration.json" in err and "--uncalibrated" in err
    assert out == "" and not (tmp_path / "p").exists()
    from defectmap.errors import UncalibratedModelError

    with pytest.raises(UncalibratedModelError, match="uncalibrated=True"):
        predict_to_dir(load_model(uncalibrated_dir), images, tmp_path / "p")


def test_predict_uncalibrated_gives_scores_only_and_says_so(
    uncalibrated_dir: Path, model_dir: Path, synthetic_root: Path, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    images = _good(synthetic_root)[:2]
    rc, out, err = _run(capsys, "predict", uncalibrated_dir, *images, "--out", tmp_path / "p",
                        "--uncalibrated")
    assert rc == 0, err
    assert "uncalibrated model: 2 raw scores, no ok/defect decision" in " ".join(out.split())
    assert "flagged" not in out and "decision" not in out.split("uncalibrated")[0]
    results = json.loads((tmp_path / "p" / "results.json").read_text())
    assert results["calibrated"] is False and results["n_defect"] == 0
    expected = load_model(model_dir).detector.predict(images).scores
    assert [r["score"] for r in results["results"]] == [float(s) for s in expected]
    assert all(r["decision"] is None and r["p_value"] is None for r in results["results"])


def test_service_refuses_an_uncalibrated_model_unless_asked(
    uncalibrated_dir: Path, synthetic_root: Path, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from fastapi.testclient import TestClient

    from defectmap.errors import UncalibratedModelError
    from defectmap.serve import create_app

    with pytest.raises(UncalibratedModelError, match="calibration.json"):
        create_app(uncalibrated_dir, db_path=tmp_path / "a.db")
    assert not (tmp_path / "a.db").exists()  # refused before the audit log is opened
    rc, _, err = _run(capsys, "serve", uncalibrated_dir, "--db", tmp_path / "a.db")
    assert rc == 1 and err.count("\n") == 1 and "--uncalibrated" in err

    app = create_app(uncalibrated_dir, db_path=tmp_path / "b.db", uncalibrated=True)
    with TestClient(app) as client:
        image = _good(synthetic_root)[0]
        answer = client.post("/v1/inspect", files={"image": (image.name, image.read_bytes())})
        assert answer.status_code == 200, answer.text
        assert answer.json()["decision"] is None and answer.json()["p_value"] is None
        assert client.get("/v1/model").json()["description"]["calibrated"] is False


def test_a_promoted_uncalibrated_version_is_refused_by_a_following_service(
    model_dir: Path, uncalibrated_dir: Path, tmp_path: Path,
) -> None:
    from defectmap.registry import Registry
    from defectmap.serve.slot import ModelSlot

    registry = Registry(tmp_path / "registry")
    first = registry.add(model_dir).id
    registry.promote(first)
    slot = ModelSlot(registry.root, warmup=False)
    lenient = ModelSlot(registry.root, warmup=False, uncalibrated=True)
    second = registry.add(uncalibrated_dir, parent=first).id
    registry.promote(second)
    # The same refusal as at start: the calibrated version keeps serving, the reason is shown.
    assert slot.check() is False and slot.current.version == first
    assert slot.reload_error is not None and second in slot.reload_error
    assert "calibration.json" in slot.reload_error
    assert lenient.check() is True and lenient.current.version == second
    assert lenient.current.model.calibration is None


def test_workers_honour_uncalibrated_and_allow_mismatch(
    uncalibrated_dir: Path, synthetic_root: Path, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from fastapi.testclient import TestClient

    from defectmap.errors import UncalibratedModelError
    from defectmap.serve.runner import ENV_SETTINGS, app_from_env

    _, gray, _ = _variants(synthetic_root, tmp_path / "in")
    settings = {"model_dir": str(uncalibrated_dir), "db_path": str(tmp_path / "a.db")}
    monkeypatch.setenv(ENV_SETTINGS, json.dumps(settings))
    with pytest.raises(UncalibratedModelError):
        app_from_env()  # a worker refuses what the single process refuses
    settings.update(uncalibrated=True, allow_mismatch=True)
    monkeypatch.setenv(ENV_SETTINGS, json.dumps(settings))
    with TestClient(app_from_env()) as client:
        answer = client.post("/v1/inspect", files={"image": ("g.png", gray.read_bytes())})
        assert answer.status_code == 200, answer.text
        assert answer.json()["decision"] is None and answer.json()["score"] > 0


# -- 3. inputs unlike the training images ---------------------------------------------------


def test_training_records_the_images_profile(model_dir: Path) -> None:
    from defectmap.data.profile import ImageProfile

    info = json.loads((model_dir / "training.json").read_text())
    assert info["images"] == {"n_images": 24, "n_grayscale": 0, "min_width": 128,
                              "max_width": 128, "min_height": 128, "max_height": 128,
                              "color": "rgb"}
    assert load_model(model_dir).profile == ImageProfile(24, 0, 128, 128, 128, 128)


def test_profile_mismatch_rules() -> None:
    from defectmap.data.io import ImageInfo
    from defectmap.data.profile import ImageProfile

    colour = ImageProfile(n_images=5, n_grayscale=0, min_width=100, max_width=200,
                          min_height=100, max_height=100)
    assert colour.mismatch(ImageInfo(50, 50, "RGB", False)) is None  # exactly half: accepted
    assert colour.mismatch(ImageInfo(400, 200, "RGB", False)) is None  # exactly twice
    assert colour.mismatch(ImageInfo(401, 100, "RGB", False)) == (
        "401x100 px, but the model was trained on colour images of 100-200x100 px")
    assert colour.mismatch(ImageInfo(100, 49, "RGB", False)) is not None
    assert colour.mismatch(ImageInfo(100, 100, "L", True)) == (
        "grayscale image, but the model was trained on colour images of 100-200x100 px")
    gray = ImageProfile(3, 3, 64, 64, 64, 64)
    assert gray.mismatch(ImageInfo(64, 64, "RGB", False)).startswith("colour image, but")
    mixed = ImageProfile(4, 2, 64, 64, 64, 64)
    assert mixed.color == "mixed"
    assert mixed.mismatch(ImageInfo(64, 64, "L", True)) is None
    assert mixed.mismatch(ImageInfo(64, 64, "RGB", False)) is None
    assert ImageProfile.from_dict(colour.to_dict()) == colour
    with pytest.raises(ValueError, match="n_images"):
        ImageProfile.from_dict({**colour.to_dict(), "n_images": "abc"})


def test_palette_images_count_as_gray_only_with_a_gray_palette(tmp_path: Path) -> None:
    from defectmap.data.io import ImageInfo, check_image

    gray = Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8)).convert("P")
    gray.save(tmp_path / "gray_palette.png")
    colour = Image.fromarray(np.full((8, 8, 3), (200, 10, 10), np.uint8)).convert("P")
    colour.save(tmp_path / "red_palette.png")
    assert check_image(tmp_path / "gray_palette.png") == ImageInfo(8, 8, "P", True)
    assert check_image(tmp_path / "red_palette.png") == ImageInfo(8, 8, "P", False)


def _variants(synthetic_root: Path, folder: Path) -> tuple[Path, Path, Path]:
    """A good test image as it is, in grayscale, and at 4 times its size."""
    folder.mkdir()
    source = _good(synthetic_root)[0]
    same = folder / "same.png"
    shutil.copy(source, same)
    gray, big = folder / "gray.png", folder / "big.png"
    Image.open(source).convert("L").save(gray)
    Image.open(source).resize((512, 512)).save(big)
    return same, gray, big


def test_predict_refuses_grayscale_and_resized_inputs_unless_forced(
    model_dir: Path, synthetic_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    same, gray, big = _variants(synthetic_root, tmp_path / "in")
    rc, _, err = _run(capsys, "predict", model_dir, same, gray, big, "--out", tmp_path / "p")
    line = " ".join(err.split())
    assert rc == 1 and err.count("\n") == 1, err
    assert "2 image(s) differ from the training images" in line
    assert f"{gray}: grayscale image, but the model was trained on colour images" in line
    assert f"{big}: 512x512 px, but" in line and "--allow-mismatch" in line
    assert str(same) not in line and not (tmp_path / "p").exists()

    from defectmap.data.profile import InputMismatchError

    with pytest.raises(InputMismatchError) as caught:
        predict_to_dir(load_model(model_dir), [gray], tmp_path / "p")
    assert [name for name, _ in caught.value.mismatches] == [str(gray)]

    rc, _, err = _run(capsys, "predict", model_dir, same, gray, big, "--out", tmp_path / "p",
                      "--allow-mismatch")
    assert rc == 0, err
    assert "warning: 2 of 3 image(s) differ" in " ".join(err.split())
    rows = json.loads((tmp_path / "p" / "results.json").read_text())["results"]
    assert [r["mismatch"] is None for r in rows] == [True, False, False]
    assert rows[1]["mismatch"].startswith("grayscale image")


def test_service_answers_422_for_an_image_unlike_the_training_images(
    model_dir: Path, synthetic_root: Path, tmp_path: Path
) -> None:
    from fastapi.testclient import TestClient

    from defectmap.serve import create_app

    same, gray, _ = _variants(synthetic_root, tmp_path / "in")
    for allow, status in ((False, 422), (True, 200)):
        app = create_app(model_dir, db_path=tmp_path / f"{allow}.db", allow_mismatch=allow)
        with TestClient(app) as client:
            answer = client.post("/v1/inspect", files={"image": ("g.png", gray.read_bytes())})
            assert answer.status_code == status, answer.text
            if status == 422:
                assert answer.json()["error"] == "input_mismatch"
                assert "g.png: grayscale image" in answer.json()["detail"]
                assert client.get("/healthz").json()["inspections"] == 0  # nothing logged
            ok = client.post("/v1/inspect", files={"image": ("s.png", same.read_bytes())})
            assert ok.status_code == 200


# -- 4. a model folder is replaced only whole, and only when it holds nothing else -----------


def test_fit_refuses_a_model_folder_holding_other_files(
    model_dir: Path, synthetic_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    folder = tmp_path / "model"
    shutil.copytree(model_dir, folder)
    (folder / "notes.txt").write_text("which camera, which lens")
    before = sha256_tree(folder)
    rc, _, err = _run(capsys, "fit", synthetic_root, "--category", "synthetic",
                      "--image-size", "64", "--out", folder)
    assert rc == 1 and "notes.txt" in err and "refusing to replace" in " ".join(err.split())
    assert sha256_tree(folder) == before  # nothing deleted, nothing replaced
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no temp folder left


def test_loading_while_the_model_is_replaced_always_gives_one_whole_version(
    model_dir: Path, synthetic_root: Path, tmp_path: Path
) -> None:
    """A reader thread loads the model in a loop while it is swapped 40 times and refitted.

    Every load must succeed and return exactly one version: its hash, its calibration and
    its detector's score of a probe image all belong to the same fit.
    """
    target = tmp_path / "model"
    shutil.copytree(model_dir, target)
    other = tmp_path / "other"
    with pytest.warns(DefectmapWarning):
        train_model(load_category(synthetic_root, "synthetic"), other, detector_params=PARAMS,
                    random_state=7)
    probe = [_good(synthetic_root)[0]]
    versions = {}
    for folder in (model_dir, other):
        model = load_model(folder)
        versions[model.model_hash] = (model.calibration.image_threshold,
                                      float(model.detector.predict(probe).scores[0]))
    assert len(versions) == 2 and len({v[1] for v in versions.values()}) == 2

    stop = threading.Event()
    loads: list[tuple[str, float, float]] = []
    failures: list[BaseException] = []

    def reader() -> None:
        while not stop.is_set():
            try:
                model = load_model(target)
            except BaseException as exc:  # noqa: BLE001 - the test reports any failure
                failures.append(exc)
                return
            loads.append((str(model.model_hash), model.calibration.image_threshold,
                           float(model.detector.predict(probe).scores[0])))

    from defectmap.pipeline import MODEL_FILES

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for i in range(40):
            new = make_temp_dir(tmp_path, prefix=".model.tmp-")
            for name in MODEL_FILES:
                shutil.copy((other if i % 2 == 0 else model_dir) / name, new / name)
            replace_dir(new, target)
        with pytest.warns(DefectmapWarning):  # and a real fit over the folder being read
            refit = train_model(load_category(synthetic_root, "synthetic"), target,
                                detector_params=PARAMS, random_state=7)
        # A third version (training.json's timestamps differ), with the same weights.
        versions[str(refit.model_hash)] = (refit.calibration.image_threshold,
                                           float(refit.detector.predict(probe).scores[0]))
        time.sleep(0.5)  # let the reader load the refitted model too
    finally:
        stop.set()
        thread.join(timeout=120)
    assert failures == []
    assert len(loads) >= 3
    for model_hash, threshold, score in loads:
        assert model_hash in versions  # a whole version, never a mix
        assert (threshold, score) == versions[model_hash]
    assert sha256_file(target / "weights.safetensors") == sha256_file(
        other / "weights.safetensors")  # the same seed gave the same fit


def test_two_swaps_during_one_load_are_seen_even_if_an_inode_number_comes_back(
    model_dir: Path, synthetic_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The folder is swapped twice between the hash and the reads of one load (A -> B -> C).
    On ext4 the new folder C gets the number of the deleted A at once, so the folder's
    inode alone looked unchanged and the load returned A's hash with B's files (the CI
    failure of the test above); the loader now holds A open, so C cannot reuse its number."""
    import defectmap.pipeline as pipeline
    from defectmap.pipeline import MODEL_FILES

    target, other = tmp_path / "model", tmp_path / "other"
    shutil.copytree(model_dir, target)
    with pytest.warns(DefectmapWarning):
        train_model(load_category(synthetic_root, "synthetic"), other, detector_params=PARAMS,
                    random_state=7)

    def swap_in(source: Path) -> None:
        new = make_temp_dir(tmp_path, prefix=".model.tmp-")
        for name in MODEL_FILES:
            shutil.copy(source / name, new / name)
        replace_dir(new, target)

    real_hash, swaps = pipeline.sha256_tree, []

    def hash_then_swap_twice(folder: Path) -> str:
        digest = real_hash(folder)
        if not swaps:
            swaps.append(folder)
            swap_in(other)
            swap_in(other)
        return digest

    monkeypatch.setattr(pipeline, "sha256_tree", hash_then_swap_twice)
    loaded = load_model(target)
    want = load_model(other)
    assert len(swaps) == 1
    assert loaded.model_hash == want.model_hash != load_model(model_dir).model_hash
    assert loaded.calibration is not None and want.calibration is not None
    assert loaded.calibration.image_threshold == want.calibration.image_threshold


# -- 5. predict reads the folder given, not its sub-folders, never its own output -------------


def test_predict_reads_only_the_folder_given_and_never_its_output(
    model_dir: Path, synthetic_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    images = tmp_path / "images"
    (images / "sub").mkdir(parents=True)
    good = _good(synthetic_root)
    for name, source in (("a.png", good[0]), ("b.png", good[1]), ("sub/c.png", good[2])):
        shutil.copy(source, images / name)
    out = images / "results"  # the output inside the input folder
    for _ in range(2):  # the second run must not score the first run's overlays
        rc, _, err = _run(capsys, "predict", model_dir, images, "--out", out)
        assert rc == 0, err
        rows = json.loads((out / "results.json").read_text())["results"]
        assert [Path(r["image"]).name for r in rows] == ["a.png", "b.png"]
    for _ in range(2):
        rc, _, err = _run(capsys, "predict", model_dir, images, "--out", out, "--recursive")
        assert rc == 0, err
        rows = json.loads((out / "results.json").read_text())["results"]
        assert [Path(r["image"]).relative_to(images).as_posix() for r in rows] == [
            "a.png", "b.png", "sub/c.png"]


# -- 11. every bad input listed before the long work ----------------------------------------


def _break(path: Path, how: str) -> None:
    if how == "truncate":
        path.write_bytes(path.read_bytes()[:200])
    else:
        path.write_text("not an image")


def test_predict_lists_every_unreadable_input(model_dir: Path, synthetic_root: Path,
                                              tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    for i, source in enumerate(_good(synthetic_root)[:4]):
        shutil.copy(source, folder / f"{i}.png")
    _break(folder / "1.png", "truncate")
    _break(folder / "3.png", "text")
    rc, _, err = _run(capsys, "predict", model_dir, folder, "--out", tmp_path / "p")
    line = " ".join(err.split())
    assert rc == 1 and err.count("\n") == 1, err
    assert "2 of 4 image(s) cannot be read" in line
    assert f"{folder / '1.png'}: truncated or corrupt PNG" in line
    assert f"{folder / '3.png'}: not a readable image" in line
    assert str(folder / "0.png") not in line and not (tmp_path / "p").exists()


def test_fit_lists_every_unreadable_training_image_before_extracting(
    synthetic_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from defectmap.detectors.patchcore import PatchCore

    root = tmp_path / "data"
    shutil.copytree(synthetic_root / "synthetic", root / "synthetic")
    train = sorted((root / "synthetic" / "train" / "good").glob("*.png"))
    _break(train[-1], "truncate")  # the last image: found only at the end by the old code
    _break(train[3], "text")
    fitted: list[int] = []
    monkeypatch.setattr(PatchCore, "fit", lambda self, images, progress=None: fitted.append(1))
    with pytest.raises(ImageReadError) as caught:
        train_model(load_category(root, "synthetic"), tmp_path / "m", detector_params=PARAMS)
    message = str(caught.value)
    assert message.startswith("2 of 24 image(s) cannot be read: ")
    assert str(train[3]) in message and str(train[-1]) in message
    assert fitted == [] and not (tmp_path / "m").exists()



# -- 12. the service does not tell where the training data lay -----------------------------


def test_model_endpoint_does_not_expose_the_dataset_path(model_dir: Path, synthetic_root: Path,
                                                         tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from defectmap.serve import create_app

    info = json.loads((model_dir / "training.json").read_text())
    assert info["dataset_root"].startswith(str(synthetic_root.resolve()))  # kept on disk
    with TestClient(create_app(model_dir, db_path=tmp_path / "a.db")) as client:
        answer = client.get("/v1/model")
    assert answer.status_code == 200
    assert "dataset_root" not in answer.json()["description"]["training"]
    assert str(synthetic_root.resolve()) not in answer.text
    assert answer.json()["description"]["training"]["category"] == "synthetic"
