"""Readers of the MVTec LOCO AD, MVTec AD 2, VisA and Real-IAD layouts, on synthetic data."""

from __future__ import annotations

import csv
import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from defectmap.data import layouts
from defectmap.data.io import read_mask
from defectmap.data.loco import check_loco_masks, read_defects_config, read_loco_masks
from defectmap.data.mvtec import read_sample_mask
from defectmap.data.mvtec_ad2 import check_submission, write_submission
from defectmap.data.records import UNKNOWN_LABEL
from defectmap.data.synth_layouts import LOCO_SYNTH_DEFECTS, make_layout_dataset
from defectmap.errors import DatasetError


@pytest.fixture(scope="module")
def roots(tmp_path_factory) -> dict[str, Path]:
    """One small synthetic category ``c1`` per layout (read-only: copy before changing)."""
    base = tmp_path_factory.mktemp("layouts")
    for layout in ("loco", "mvtec_ad2", "visa", "realiad"):
        make_layout_dataset(layout, base / layout, category="c1", size=64, seed=3)
    return {layout: base / layout for layout in ("loco", "mvtec_ad2", "visa", "realiad")}


def _copy(roots, layout, tmp_path) -> Path:
    return Path(shutil.copytree(roots[layout], tmp_path / layout))


def _digest(folder: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        h.update(str(path.relative_to(folder)).encode() + path.read_bytes())
    return h.hexdigest()


# --------------------------------------------------------------------------- reading
def test_every_layout_is_detected_and_listed(roots):
    for layout, root in roots.items():
        assert layouts.detect_layout(root, "c1") == layout
        assert layouts.list_categories(root) == ["c1"]
        assert layouts.load_category(root, "c1").layout == layout
    # A category folder alone works too.
    assert layouts.load_category(roots["visa"] / "c1").layout == "visa"
    assert layouts.load_category(roots["realiad"] / "realiad_1024" / "c1").layout == "realiad"
    assert layouts.load_category(roots["loco"] / "c1").layout == "loco"


def test_loco_reader_keeps_several_masks_and_the_anomaly_kind(roots):
    data = layouts.load_category(roots["loco"], "c1")
    assert (len(data.train), len(data.validation), len(data.test)) == (12, 4, 12)
    assert {s.split for s in data.validation} == {"validation"}
    kinds = [(s.defect_type, s.anomaly_kind, len(s.mask_paths)) for s in data.test if s.label]
    assert kinds[:4] == [("logical_anomalies", "logical", 1), ("logical_anomalies", "logical", 2),
                         ("logical_anomalies", "logical", 1), ("logical_anomalies", "logical", 2)]
    assert {k for _, k, _ in kinds} == {"logical", "structural"}
    assert [d.name for d in data.defects] == [e["defect_name"] for e, _ in LOCO_SYNTH_DEFECTS]
    two = next(s for s in data.test if len(s.mask_paths) == 2)
    masks = read_loco_masks(two, data.defects, (64, 64))
    assert [cfg.name for _, cfg in masks] == ["missing_part", "extra_part"]
    union = read_sample_mask(two, (64, 64))  # the MVTec-style union of both masks
    np.testing.assert_array_equal(union, masks[0][0] | masks[1][0])
    problems, found = check_loco_masks(two, data.defects, (64, 64))
    assert problems == [] and len(found) == 2


def test_mvtec_ad2_reader_separates_validation_and_unlabelled_tests(roots):
    data = layouts.load_category(roots["mvtec_ad2"], "c1")
    assert (len(data.train), len(data.validation), len(data.test)) == (12, 4, 8)
    assert {k: len(v) for k, v in data.unlabeled.items()} == {"test_private": 4,
                                                              "test_private_mixed": 4}
    private = data.unlabeled["test_private_mixed"][1]
    assert private.label == UNKNOWN_LABEL and private.stem == "001_mixed"
    bad = [s for s in data.test if s.label == 1]
    assert all(s.defect_type == "bad" and s.mask_path.name == f"{s.stem}_mask.png" for s in bad)


def test_visa_reader_follows_the_split_csv_and_binarises_masks(roots):
    data = layouts.load_category(roots["visa"], "c1")
    assert (len(data.train), len(data.test)) == (12, 8)
    bad = [s for s in data.test if s.label == 1]
    assert len(bad) == 4 and {s.defect_type for s in bad} == {"bad"}
    assert bad[1].defect_names == ("foreign particles", "missing part")
    raw = np.asarray(Image.open(bad[1].mask_path))
    assert set(np.unique(raw)) == {0, 2, 3}  # class indices, not 0/255
    np.testing.assert_array_equal(read_mask(bad[1].mask_path), raw > 0)


def test_realiad_reader_uses_the_single_view_split(roots):
    data = layouts.load_category(roots["realiad"], "c1")
    assert (len(data.train), len(data.test)) == (12, 8)
    assert [s.defect_type for s in data.test if s.label] == ["HS", "ZW", "QS", "HS"]
    assert data.test[-1].defect_names == ("scratch",)
    # the second camera view on disk is not in the split and is no problem
    views = list((data.root / "OK" / "S0001").iterdir())
    assert len(views) == 2
    assert layouts.scan_any(roots["realiad"], "c1")[1] == []


def test_same_seed_same_bytes(roots, tmp_path):
    for layout in roots:
        again = make_layout_dataset(layout, tmp_path / layout, category="c1", size=64, seed=3)
        base = again if layout != "realiad" else again.parent.parent
        reference = roots[layout] / "c1" if layout != "realiad" else roots[layout]
        assert _digest(base) == _digest(reference), layout
    other = make_layout_dataset("loco", tmp_path / "other", category="c1", size=64, seed=4)
    assert _digest(other) != _digest(roots["loco"] / "c1")


# --------------------------------------------------------------------------- LOCO failures
def test_loco_mask_with_unknown_pixel_value(roots, tmp_path):
    root = _copy(roots, "loco", tmp_path)
    data = layouts.load_category(root, "c1")
    sample = next(s for s in data.test if s.label)
    values = np.asarray(Image.open(sample.mask_paths[0])).copy()
    values[values > 0] = 17
    Image.fromarray(values).save(sample.mask_paths[0])
    problems, _ = check_loco_masks(sample, data.defects, (64, 64))
    assert [p.kind for p in problems] == ["mask_unknown_value"]
    assert "pixel value 17 is not in defects_config.json" in problems[0].message
    with pytest.raises(DatasetError, match=rf"{sample.mask_paths[0].name}: pixel value 17"):
        read_loco_masks(sample, data.defects, (64, 64))
    values[0, 0] = 255  # two defect values in one file
    Image.fromarray(values).save(sample.mask_paths[0])
    assert check_loco_masks(sample, data.defects, (64, 64))[0][0].kind == "mask_not_binary"
    Image.fromarray(np.zeros_like(values)).save(sample.mask_paths[0])
    assert check_loco_masks(sample, data.defects, (64, 64))[0][0].kind == "mask_empty"
    assert check_loco_masks(sample, data.defects, (80, 64))[0][0].kind == "mask_size_mismatch"


def test_loco_missing_masks_and_bad_config_fail_loudly(roots, tmp_path):
    root = _copy(roots, "loco", tmp_path)
    gt = root / "c1" / "ground_truth" / "structural_anomalies" / "002"
    shutil.rmtree(gt)
    with pytest.raises(DatasetError, match=r"no mask PNG for anomalous image .*002\.png"):
        layouts.load_category(root, "c1")
    gt.mkdir()
    (gt / "notes.txt").write_text("x")
    _, problems = layouts.scan_any(root, "c1")
    assert {p.kind for p in problems} == {"mask_missing", "unexpected_file"}
    config = root / "c1" / "defects_config.json"
    entries = json.loads(config.read_text())
    entries[1]["pixel_value"] = entries[0]["pixel_value"]
    config.write_text(json.dumps(entries))
    with pytest.raises(DatasetError, match="pixel_value 255 is used by both"):
        read_defects_config(config)
    entries[1]["pixel_value"], entries[2]["saturation_threshold"] = 254, 1.5
    config.write_text(json.dumps(entries))
    with pytest.raises(DatasetError, match=r"entry 2 \(scratch\): a relative saturation"):
        read_defects_config(config)
    with pytest.raises(DatasetError, match="invalid loco dataset.*relative saturation"):
        layouts.load_category(root, "c1")


# --------------------------------------------------------------------------- VisA failures
def test_visa_row_pointing_to_a_missing_file(roots, tmp_path):
    root = _copy(roots, "visa", tmp_path)
    (root / "c1" / "Data" / "Images" / "Anomaly" / "002.JPG").unlink()
    with pytest.raises(DatasetError, match=r"002\.JPG: line 20 of .*1cls\.csv points to a missing"):
        layouts.load_category(root, "c1")


def test_visa_label_mismatch_unlisted_file_and_bad_header(roots, tmp_path):
    root = _copy(roots, "visa", tmp_path)
    anno = root / "c1" / "image_anno.csv"
    rows = list(csv.reader(anno.open()))
    rows[-1][1] = "normal"  # image_anno.csv calls the last anomaly normal
    with anno.open("w", newline="") as fh:
        csv.writer(fh).writerows(rows)
    extra = root / "c1" / "Data" / "Images" / "Normal" / "9999.JPG"
    shutil.copy(root / "c1" / "Data" / "Images" / "Normal" / "0000.JPG", extra)
    _, problems = layouts.scan_any(root, "c1")
    assert sorted(p.kind for p in problems) == ["label_mismatch", "unlisted_file"]
    assert next(p for p in problems if p.kind == "unlisted_file").path == extra
    layouts.load_category(root, "c1")  # neither is fatal
    split = root / "split_csv" / "1cls.csv"
    split.write_text(split.read_text().replace("object,split", "obj,split", 1))
    with pytest.raises(DatasetError, match="header must be object,split,label,image,mask"):
        layouts.load_category(root, "c1")


# --------------------------------------------------------------------------- Real-IAD failures
def test_realiad_missing_file_and_the_official_label_rule(roots, tmp_path):
    root = _copy(roots, "realiad", tmp_path)
    split = root / "realiad_jsons" / "realiad_jsons_sv" / "c1.json"
    info = json.loads(split.read_text())
    info["test"][-1]["mask_path"] = None  # a defect not visible in this view: normal
    split.write_text(json.dumps(info))
    data = layouts.load_category(root, "c1")
    assert [s.label for s in data.test].count(1) == 3
    info["train"][0]["image_path"] = "OK/S0001/missing.jpg"
    split.write_text(json.dumps(info))
    with pytest.raises(DatasetError, match=r"missing\.jpg: c1\.json train\[0\] points to a"):
        layouts.load_category(root, "c1")
    info["train"][0]["extra"] = 1
    split.write_text(json.dumps(info))
    with pytest.raises(DatasetError, match=r"train\[0\] must have exactly the keys"):
        layouts.load_category(root, "c1")


# --------------------------------------------------------------------------- MVTec AD 2
def test_mvtec_ad2_missing_mask_and_orphan(roots, tmp_path):
    root = _copy(roots, "mvtec_ad2", tmp_path)
    gt = root / "c1" / "test_public" / "ground_truth" / "bad"
    (gt / "001_regular_mask.png").rename(gt / "101_regular_mask.png")
    _, problems = layouts.scan_any(root, "c1")
    assert sorted(p.kind for p in problems) == ["mask_missing", "mask_orphan"]
    with pytest.raises(DatasetError, match="no mask for defective image"):
        layouts.load_category(root, "c1")


def test_submission_in_the_upload_layout(roots, tmp_path):
    data = layouts.load_category(roots["mvtec_ad2"], "c1")
    out = tmp_path / "submission"
    rng = np.random.default_rng(0)
    for split, samples in data.unlabeled.items():
        maps = [rng.random((64, 64)).astype(np.float32) * 1e5 for _ in samples]
        write_submission(out, "c1", split, [s.stem for s in samples], maps, threshold=5e4)
    tiff = out / "anomaly_images" / "c1" / "test_private" / "000_regular.tiff"
    arr = tifffile.imread(tiff)
    assert arr.dtype == np.float16 and arr.shape == (64, 64)
    assert float(arr.max()) == 65504.0  # beyond float16's range: clipped
    png = out / "anomaly_images_thresholded" / "c1" / "test_private_mixed" / "003_mixed.png"
    assert set(np.unique(np.asarray(Image.open(png)))) <= {0, 255}
    assert check_submission(out, counts={"c1": 4}) == []
    tifffile.imwrite(tiff, arr.astype(np.float32))
    (out / "anomaly_images" / "c1" / "test_private" / "004_regular.tiff").write_bytes(b"")
    kinds = sorted((p.kind, p.path.name) for p in check_submission(out, counts={"c1": 4}))
    assert kinds == [("layout", "004_regular.tiff"), ("map_format", "000_regular.tiff")]
    assert [p.kind for p in check_submission(out)][:1] == ["layout"]  # 8 categories expected


def test_cli_synth_every_layout_then_check(tmp_path, capsys):
    from defectmap.cli._common import run_app

    for layout in ("loco", "mvtec_ad2", "visa", "realiad"):
        out = tmp_path / layout
        assert run_app(["data", "synth", str(out), "--layout", layout, "--n-train", "6",
                        "--n-test", "8", "--size", "48"]) == 0
        assert run_app(["data", "check", str(out)]) == 0
        printed = capsys.readouterr().out
        assert "no problems found" in printed and f"synth_{layout}" in printed
    assert run_app(["data", "synth", str(tmp_path / "x"), "--layout", "mvtec3d"]) == 2
    assert "--layout must be mvtec or one of" in " ".join(capsys.readouterr().err.split())
    data = layouts.load_category(tmp_path / "loco", "synth_loco")
    assert (len(data.train), len(data.validation), len(data.test)) == (6, 1, 8)
