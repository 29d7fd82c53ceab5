"""The model commands end to end on the synthetic fixture: fit -> predict -> evaluate ->
benchmark -> demo, checking the numbers they write, and their error paths."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from defectmap.cli._common import run_app
from defectmap.data.io import read_mask
from defectmap.data.mvtec import load_category
from defectmap.metrics import category_metrics, image_auroc
from defectmap.pipeline import load_model

SIZE = ["--image-size", "96"]  # small network input keeps every fit to seconds


def run(capsys: pytest.CaptureFixture[str], *argv: str | Path) -> tuple[int, str, str]:
    rc = run_app([str(a) for a in argv])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


FIT_OUTPUT: dict[str, str] = {}


@pytest.fixture(scope="module")
def model_dir(synthetic_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cli") / "model"
    capture = subprocess.run(  # a real process: the fit's stdout is asserted on below
        [str(Path(sys.executable).with_name("defectmap")), "fit", str(synthetic_root), "--category",
         "synthetic", *SIZE, "--seed", "3", "--out", str(out)],
        capture_output=True, text=True, timeout=600)
    assert capture.returncode == 0, capture.stderr
    FIT_OUTPUT.update(out=capture.stdout, err=capture.stderr)
    return out


def test_fit_writes_a_loadable_calibrated_model(model_dir: Path) -> None:
    assert {"model.json", "weights.safetensors", "calibration.json", "training.json"} <= {
        p.name for p in model_dir.iterdir()}
    from defectmap.constants import DEFAULT_DETECTOR

    model = load_model(model_dir)
    assert model.detector.name == DEFAULT_DETECTOR
    assert model.detector.get_params()["input_size"] == 96
    # cross-fitted by default: all 24 good images fit, 20 out-of-fold scores calibrate
    assert model.info["random_state"] == 3 and model.info["n_fit"] == 24
    assert model.calibration is not None and model.calibration.n_val == 20
    out = " ".join(FIT_OUTPUT["out"].split())
    assert "fitted on 24 good images" in out
    assert "calibration: cross-fitted: 5 folds of 4 good training images, 20 out-of-fold " \
           "scores; 4 fit every fold model without a score" in out
    assert "decided by the largest calibration score" in out  # 20 < 99 for alpha 0.01
    assert "20 out-of-fold scores (5 folds) are too few for alpha=0.01" in FIT_OUTPUT["err"]


def test_fit_calibration_flags_and_recalibrate(synthetic_root: Path, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    category = synthetic_root / "synthetic"
    defects = sorted((category / "test" / "scratch").glob("*.png"))
    val_dir = tmp_path / "val"
    val_dir.mkdir()
    for image in sorted((category / "test" / "good").glob("*.png")):
        (val_dir / image.name).write_bytes(image.read_bytes())
    out = tmp_path / "model"
    rc, stdout, err = run(capsys, "fit", category, *SIZE, "--val-dir", val_dir,
                          "--defects", category / "test" / "scratch", "--alpha", "0.2",
                          "--pixel-fpr", "0.005", "--param", "coreset_ratio=0.2",
                          "--out", out)
    assert rc == 0, err
    model = load_model(out)
    cal = model.calibration
    assert cal is not None and cal.method == "split" and cal.n_val == 8 and cal.alpha == 0.2
    assert cal.pixel_fpr == 0.005 and model.detector.get_params()["coreset_ratio"] == 0.2
    assert model.info["n_fit"] == 24 and model.info["n_defects"] == len(defects)
    estimate = cal.miss_estimate
    assert estimate is not None and f"known defects: {estimate}" in " ".join(stdout.split())
    assert "split conformal: 8 images of a separate validation folder" in stdout

    rc, stdout, err = run(capsys, "recalibrate", out, "--alpha", "0.12")
    assert rc == 0, err
    new = load_model(out).calibration
    assert new is not None and new.alpha == 0.12 and new.val_scores == cal.val_scores
    assert new.image_threshold == cal.val_scores[7]  # k = ceil(9 x 0.88) = 8 of 8
    assert f"image threshold {new.image_threshold:.4g} at alpha 0.12" in stdout

    for argv, code, message in [
        (["recalibrate", out], 2, "nothing to change"),
        (["recalibrate", out, "--alpha", "1.5"], 2, "must be in (0, 1), got 1.5"),
        (["recalibrate", out, "--min-region-area", "0"], 2, "must be >= 1, got 0"),
        (["recalibrate", out, "--pixel-fpr", "0.003"], 1, "pixel_fpr 0.003 was not stored"),
        (["recalibrate", tmp_path / "none", "--alpha", "0.1"], 1, "calibration.json"),
        (["fit", category, "--param", "corset_ratio=0.2", "--out", tmp_path / "x"], 1,
         "has no parameter 'corset_ratio'; valid: augment_rotations, backbone, context, "
         "context_sigma, coreset,"),
        (["fit", category, "--param", "context=1.5", "--out", tmp_path / "x"], 1,
         "detector 'patchcore': context: must be <= 1.0, got 1.5"),
        (["fit", category, "--param", "augment_rotations=maybe", "--out", tmp_path / "x"], 1,
         "augment_rotations must be true or false"),
        (["fit", category, "--val-ratio", "0.2", "--folds", "3", "--out", tmp_path / "x"], 2,
         "--folds and --val-ratio are different calibrations: give one"),
        (["fit", category, "--val-dir", val_dir, "--folds", "3", "--out", tmp_path / "x"], 2,
         "--folds and --val-dir are different calibrations"),
        (["fit", category, "--min-val", "5", "--out", tmp_path / "x"], 2,
         "--min-val applies to a validation split"),
        (["fit", category, "--folds", "1", "--out", tmp_path / "x"], 2, "must be >= 2, got 1"),
        (["fit", category, "--pixel-fpr", "0", "--out", tmp_path / "x"], 2,
         "must be in (0, 1), got 0"),
        (["fit", category, "--folds", "40", "--out", tmp_path / "x"], 1,
         "only 24 good training images for 40 folds"),
        (["fit", category, "--val-ratio", "0", "--out", tmp_path / "x"], 1,
         "holds out no validation image"),
        (["fit", category, "--val-dir", tmp_path / "none", "--out", tmp_path / "x"], 1,
         "validation folder not found"),
    ]:
        rc, _, err = run(capsys, *argv)
        assert rc == code and message in " ".join(err.split()), (argv, err)
        assert len(err.strip().splitlines()) == 1 and not (tmp_path / "x").exists()


def test_fit_val_ratio_minimum_is_explicit(synthetic_root: Path, tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    category = synthetic_root / "synthetic"
    for extra, n_val, rule in [([], 3, "ceil(0.1 x 24)"),
                               (["--min-val", "5"], 5, "max(5, ceil(0.1 x 24))")]:
        out = tmp_path / f"model{n_val}"
        rc, stdout, err = run(capsys, "fit", category, *SIZE, "--val-ratio", "0.1", *extra,
                              "--out", out)
        assert rc == 0, err
        text = " ".join(stdout.split())
        assert f"fitted on {24 - n_val} good images" in text
        assert (f"split conformal: {n_val} of 24 good training images held out for "
                f"validation ({rule}); the detector is fitted on the other {24 - n_val}") in text
        info = load_model(out).info
        assert (info["n_fit"], info["n_val"], info["min_val"]) == (24 - n_val, n_val,
                                                                 5 if extra else 0)


def test_predict_scores_equal_inspect(model_dir: Path, synthetic_root: Path, tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    test_dir = synthetic_root / "synthetic" / "test"
    defect = sorted((test_dir / "scratch").glob("*.png"))[0]
    out = tmp_path / "pred"
    rc, stdout, err = run(capsys, "predict", model_dir, test_dir / "good", defect, "--out", out)
    assert rc == 0, err
    paths = sorted((test_dir / "good").glob("*.png")) + [defect]
    with open(out / "results.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [Path(r["image"]) for r in rows] == paths
    expected = load_model(model_dir).inspect(paths)
    assert [float(r["score"]) for r in rows] == [e.score for e in expected]
    assert [float(r["p_value"]) for r in rows] == [e.p_value for e in expected]
    assert [float(r["normalized_score"]) for r in rows] == [e.normalized_score for e in expected]
    assert [r["decision"] for r in rows] == [e.decision for e in expected]
    assert [int(r["n_regions"]) for r in rows] == [len(e.regions) for e in expected]
    assert [r["decision_rule"] for r in rows] == ["largest_score"] * len(paths)
    results = json.loads((out / "results.json").read_text())
    assert results["n_images"] == len(paths)
    assert results["model_hash"] == load_model(model_dir).model_hash
    assert [r["score"] for r in results["results"]] == [e.score for e in expected]
    # Names repeat ("000.png" in good/ and scratch/): the second one gets a suffix.
    assert rows[-1]["map"] == "maps/000_2.tiff"
    for row, e in zip(rows, expected, strict=True):
        np.testing.assert_array_equal(tifffile.imread(out / row["map"]), e.anomaly_map)
        with Image.open(out / row["overlay"]) as overlay:
            assert overlay.size == (128, 128)
    assert f"of {len(paths)} flagged" in stdout


def test_evaluate_metrics_equal_recomputation(model_dir: Path, synthetic_root: Path,
                                              tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "eval"
    rc, stdout, err = run(capsys, "evaluate", model_dir, synthetic_root, "--category",
                          "synthetic", "--out", out)
    assert rc == 0, err
    metrics = json.loads((out / "metrics.json").read_text())
    data = load_category(synthetic_root, "synthetic")
    maps = [tifffile.imread(out / "maps" / "synthetic" / "test" / s.defect_type
                            / f"{s.stem}.tiff") for s in data.test]
    masks = [read_mask(s.mask_path) if s.mask_path else np.zeros(m.shape, bool)
             for s, m in zip(data.test, maps, strict=True)]
    scores = [i["score"] for i in metrics["images"]]
    assert scores == [e.score for e in load_model(model_dir).inspect([s.path for s in data.test])]
    expected = category_metrics(scores, [s.label for s in data.test],
                                [s.defect_type for s in data.test], maps, masks)
    for key in ("image_auroc", "pixel_auroc", "aupro", "f1_max", "n_images"):
        assert metrics[key] == pytest.approx(expected[key], rel=1e-12), key
    assert (out / "report.html").is_file()
    assert f"{metrics['image_auroc']:.3f}" in stdout and "report:" in stdout


def test_benchmark_table_and_missing_category(synthetic_root: Path, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "bench"
    rc, stdout, err = run(capsys, "benchmark", synthetic_root, "--category", "synthetic",
                          "--category", "carpet", *SIZE, "--out", out)
    assert rc == 0, err
    assert "skipped carpet: not found on disk" in " ".join(err.split())
    pair = json.loads((out / "synthetic" / "patchcore" / "eval" / "metrics.json").read_text())
    table = json.loads((out / "table.json").read_text())
    assert table["missing"] == [{"category": "carpet", "reason": "not found on disk"}]
    assert [r["category"] for r in table["rows"]] == ["synthetic"]
    for key in ("image_auroc", "pixel_auroc", "aupro"):
        assert table["rows"][0]["patchcore"][key] == pair[key]
        assert table["mean"]["patchcore"][key] == pair[key]  # one category: mean = it
    md = (out / "table.md").read_text()
    cells = f"| synthetic | {pair['image_auroc']:.3f} | {pair['pixel_auroc']:.3f} | " \
            f"{pair['aupro']:.3f} |"
    assert cells in md
    with open(out / "table.csv", newline="") as fh:
        rows = list(csv.reader(fh))
    assert rows[1][0] == "synthetic" and float(rows[1][1]) == round(pair["image_auroc"], 3)
    assert (out / "synthetic" / "patchcore" / "model" / "model.json").is_file()
    assert f"{pair['image_auroc']:.3f}" in stdout and "mean" in stdout


def test_demo_runs_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                              monkeypatch: pytest.MonkeyPatch) -> None:
    import defectmap.demo as demo

    # The real demo (40 train / 30 test at 160 px) is timed by hand; here a smaller one.
    monkeypatch.setattr(demo, "N_TRAIN", 14)
    monkeypatch.setattr(demo, "N_TEST", 6)
    monkeypatch.setattr(demo, "SIZE", 64)
    monkeypatch.setattr(demo, "INPUT_SIZE", 64)
    rc, stdout, err = run(capsys, "demo", "--out", tmp_path / "demo")
    assert rc == 0, err
    table = json.loads((tmp_path / "demo" / "table.json").read_text())
    auroc = table["rows"][0]["patchcore"]["image_auroc"]
    # The table's AUROC is that of the demo model's scores on the demo's test images.
    data = load_category(tmp_path / "demo" / "data", "synthetic")
    assert (len(data.train), len(data.test)) == (14, 6)
    model = load_model(tmp_path / "demo" / "synthetic" / "patchcore" / "model")
    assert model.detector.get_params()["input_size"] == 64 and model.calibration.alpha == 0.1
    scores = [r.score for r in model.inspect([s.path for s in data.test])]
    assert auroc == image_auroc(scores, [s.label for s in data.test])
    assert f"{auroc:.3f}" in stdout
    report = tmp_path / "demo" / "synthetic" / "patchcore" / "eval" / "report.html"
    assert report.is_file()
    assert "demo finished" in stdout and "report.html" in stdout


@pytest.mark.parametrize("command", ["fit", "predict", "evaluate", "benchmark", "demo"])
def test_help_has_an_example(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    rc, stdout, _ = run(capsys, command, "--help")
    assert rc == 0
    assert "Example: defectmap " + command in " ".join(stdout.split())


def _one_error_line(err: str) -> str:
    """The error message with rich's line wrapping undone.

    run_app prints one message; rich folds it at the console width (80 columns when not a
    terminal), splitting even long paths, so the newlines are removed before matching.
    """
    assert "Traceback" not in err
    assert err.count("error:") == 1, err
    return err.replace("\n", "")


def test_error_paths_exit_1_with_one_message(synthetic_root: Path, model_dir: Path,
                                             tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    rc, _, err = run(capsys, "fit", tmp_path / "nowhere", "--category", "bottle",
                     "--out", tmp_path / "m")
    assert rc == 1 and "not found" in _one_error_line(err)
    rc, _, err = run(capsys, "fit", synthetic_root, "--category", "synthetic",
                     "--detector", "nosuch", "--out", tmp_path / "m")
    assert rc == 1
    assert err.startswith("error: unknown detector 'nosuch'; known detectors: ")
    assert err.count("\n") == 1 and "patchcore" in err  # a short message: one line
    assert not (tmp_path / "m").exists()
    rc, _, err = run(capsys, "benchmark", tmp_path / "nowhere", "--out", tmp_path / "b")
    assert rc == 1 and "does not exist" in _one_error_line(err)
    rc, _, err = run(capsys, "benchmark", synthetic_root, "--all", "--category", "x",
                     "--out", tmp_path / "b")
    assert rc == 2 and "either --category or --all" in _one_error_line(err)  # usage error
    rc, _, err = run(capsys, "benchmark", synthetic_root, "--detector", "nosuch",
                     "--out", tmp_path / "b")
    assert rc == 1 and "patchcore" in _one_error_line(err)  # lists the known ones
    empty = tmp_path / "empty"
    empty.mkdir()
    rc, _, err = run(capsys, "predict", empty, synthetic_root, "--out", tmp_path / "p")
    assert rc == 1 and "model.json" in _one_error_line(err)
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in model_dir.iterdir():
        (broken / f.name).write_bytes(f.read_bytes())
    (broken / "weights.safetensors").write_bytes(b"not safetensors")
    rc, _, err = run(capsys, "evaluate", broken, synthetic_root, "--category", "synthetic",
                     "--out", tmp_path / "e")
    assert rc == 1 and "weights.safetensors" in _one_error_line(err)
    rc, _, err = run(capsys, "predict", model_dir, tmp_path / "missing.png",
                     "--out", tmp_path / "p")
    assert rc == 1 and "missing.png" in _one_error_line(err)
    rc, _, err = run(capsys, "evaluate", model_dir, synthetic_root, "--category", "nosuch",
                     "--out", tmp_path / "e")
    assert rc == 1 and "nosuch" in _one_error_line(err)
    assert not (tmp_path / "e").exists() and not (tmp_path / "p").exists()


def test_console_script_prints_no_traceback(tmp_path: Path) -> None:
    exe = Path(sys.executable).with_name("defectmap")
    proc = subprocess.run([str(exe), "predict", str(tmp_path), str(tmp_path), "--out",
                           str(tmp_path / "o")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr and proc.stderr.startswith("error:")


def test_ctrl_c_during_evaluate_leaves_no_output(model_dir: Path, synthetic_root: Path,
                                                 tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    import defectmap.evaluate.protocol as protocol

    def interrupted(path: Path, array: np.ndarray) -> None:
        raise KeyboardInterrupt  # as if Ctrl-C arrived while the maps are written

    monkeypatch.setattr(protocol, "write_map", interrupted)
    rc, _, err = run(capsys, "evaluate", model_dir, synthetic_root, "--category", "synthetic",
                     "--out", tmp_path / "eval")
    assert rc == 130 and err == "interrupted: stopped cleanly, no partial output left\n"
    assert list(tmp_path.iterdir()) == []  # neither the output nor a temporary folder


def test_debug_flag_does_not_stick_to_later_runs(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    from defectmap.errors import DefectmapError

    monkeypatch.delenv("DEFECTMAP_DEBUG", raising=False)
    argv = ["benchmark", str(tmp_path / "nowhere"), "--out", str(tmp_path / "b")]
    with pytest.raises(DefectmapError, match="does not exist"):
        run_app(["--debug", *argv])  # --debug: the error propagates with its traceback
    rc, _, err = run(capsys, *argv)  # the next call in the same process is not in debug mode
    assert rc == 1 and "does not exist" in _one_error_line(err)


def test_plain_good_and_defect_folders_as_the_readme_calls_them(
    synthetic_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`defectmap fit data/my_part --out ...` on a plain good/ + <defect>/ folder, then
    evaluate: image-level metrics, and a report without a ground-truth panel."""
    import shutil

    part = tmp_path / "my_part"
    (part / "good").mkdir(parents=True)
    (part / "scratch").mkdir()
    source = synthetic_root / "synthetic"
    goods = sorted((source / "train" / "good").glob("*.png")) + sorted(
        (source / "test" / "good").glob("*.png"))
    for i, path in enumerate(goods):  # 32 good images: 26 train, 6 held out for the test
        shutil.copy(path, part / "good" / f"{i:03d}.png")
    defects = sorted(p for p in (source / "test").glob("*/*.png") if p.parent.name != "good")
    for i, path in enumerate(defects):
        shutil.copy(path, part / "scratch" / f"{i:03d}.png")
    rc, stdout, err = run(capsys, "data", "check", part)
    assert rc == 0 and "good/ + defect folders" in " ".join(stdout.split()), err
    rc, _, err = run(capsys, "fit", part, *SIZE, "--alpha", "0.1", "--out", tmp_path / "m")
    assert rc == 0, err
    assert load_model(tmp_path / "m").info["n_train_good"] == 26
    rc, stdout, err = run(capsys, "evaluate", tmp_path / "m", part, "--out", tmp_path / "e")
    assert rc == 0, err
    metrics = json.loads((tmp_path / "e" / "metrics.json").read_text())
    assert metrics["n_images"] == 6 + len(defects) and metrics["pixel_auroc"] is None
    images = metrics["images"]
    assert sorted(i["label"] for i in images) == [0] * 6 + [1] * len(defects)
    assert metrics["image_auroc"] == image_auroc([i["score"] for i in images],
                                                 [i["label"] for i in images])
    report = (tmp_path / "e" / "report.html").read_text()
    assert "no ground-truth masks" in report
