"""``defectmap data check``: every problem kind on a broken copy, JSON/table output, bottle."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from defectmap.cli._common import run_app
from defectmap.data.check import check_dataset
from defectmap.errors import DatasetError


def _copy(synthetic_root: Path, tmp_path: Path, name: str = "widget") -> Path:
    return Path(shutil.copytree(synthetic_root / "synthetic", tmp_path / "root" / name))


def _kinds(report) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for p in report.problems:
        found.setdefault(p.kind, []).append(p.path.relative_to(report.root).as_posix())
    return {kind: sorted(paths) for kind, paths in found.items()}


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_clean_synthetic_dataset_has_no_problem(synthetic_root):
    report = check_dataset(synthetic_root)
    assert report.ok and report.problems == []
    (cat,) = report.categories
    assert (cat.name, cat.layout, cat.has_masks, cat.official) == ("synthetic", "mvtec", True,
                                                                    False)
    assert cat.n_train == 24 and cat.n_test == 16 and cat.n_masks == 8
    assert cat.test_counts == {"good": 8, "color_change": 1, "contamination": 2,
                               "deformation": 1, "missing_part": 2, "scratch": 2}
    assert cat.image_sizes == {"128x128": 40} and cat.image_modes == {"RGB": 40}
    assert cat.n_regions >= 8


def test_every_problem_kind_is_reported_with_its_path(synthetic_root, tmp_path):
    f = _copy(synthetic_root, tmp_path)
    _truncate(f / "test/scratch/000.png")                                    # unreadable image
    (f / "train/good/003.png").write_text("not an image")                    # unreadable image
    _truncate(f / "ground_truth/scratch/001_mask.png")                       # unreadable mask
    (f / "ground_truth/contamination/000_mask.png").unlink()                 # mask missing
    (f / "test/missing_part/001.png").unlink()                               # orphan mask
    (f / "ground_truth/dent").mkdir()                                        # orphan mask folder
    Image.fromarray(np.zeros((64, 128), np.uint8)).save(
        f / "ground_truth/missing_part/000_mask.png")                        # size mismatch + empty
    values = np.zeros((128, 128), np.uint8)
    values[10:20, 10:20], values[30:40, 30:40] = 255, 128
    Image.fromarray(values).save(f / "ground_truth/color_change/000_mask.png")  # not binary
    Image.fromarray(np.zeros((128, 128), np.uint8)).save(
        f / "ground_truth/deformation/000_mask.png")                         # empty
    (f / "train/good/notes.txt").write_text("x")                             # unexpected file
    (f / "train/bad").mkdir()                                                # unexpected folder
    (f / "extra").mkdir()                                                    # unexpected folder
    (f / ".DS_Store").write_text("ignored")                                  # hidden: ignored

    report = check_dataset(f)
    assert not report.ok
    assert _kinds(report) == {
        "unreadable_image": ["test/scratch/000.png", "train/good/003.png"],
        "unreadable_mask": ["ground_truth/scratch/001_mask.png"],
        "mask_missing": ["ground_truth/contamination/000_mask.png"],
        "mask_orphan": ["ground_truth/dent", "ground_truth/missing_part/001_mask.png"],
        "mask_size_mismatch": ["ground_truth/missing_part/000_mask.png"],
        "mask_not_binary": ["ground_truth/color_change/000_mask.png"],
        "mask_empty": ["ground_truth/deformation/000_mask.png",
                       "ground_truth/missing_part/000_mask.png"],
        "unexpected_file": ["extra", "train/bad", "train/good/notes.txt"],
    }
    messages = {p.kind: p.message for p in report.problems}
    assert "truncated" in messages["unreadable_image"] or "not a readable" in messages[
        "unreadable_image"]
    assert "128x64 but image 000.png is 128x128" in messages["mask_size_mismatch"]


def test_corruption_found_by_crc_check_and_by_full_decode(synthetic_root, tmp_path):
    f = _copy(synthetic_root, tmp_path)
    flipped = bytearray((f / "train/good/005.png").read_bytes())
    flipped[len(flipped) // 2] ^= 0x10  # one bit inside the compressed pixel data
    (f / "train/good/005.png").write_bytes(bytes(flipped))
    _truncate(f / "train/good/006.png")
    noise = np.random.default_rng(0).integers(0, 256, (128, 128, 3), dtype=np.uint8)
    Image.fromarray(noise).save(f / "train/good/100.jpg", quality=90)
    _truncate(f / "train/good/100.jpg")  # JPEG: always fully decoded
    for full in (False, True):
        report = check_dataset(f, full=full)
        assert _kinds(report) == {"unreadable_image": [
            "train/good/005.png", "train/good/006.png", "train/good/100.jpg"]}, full


def test_folders_layout_is_checked_without_masks(tmp_path):
    folder = tmp_path / "parts"
    for sub, n in (("good", 6), ("scratch", 2)):
        (folder / sub).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(np.full((12, 16), i * 20, np.uint8)).save(folder / sub / f"{i}.png")
    (folder / "readme.md").write_text("allowed")
    (folder / "scratch" / "list.csv").write_text("not allowed")
    report = check_dataset(folder)
    (cat,) = report.categories
    assert (cat.layout, cat.has_masks, cat.kind, cat.n_masks) == ("folders", False, None, 0)
    assert cat.n_train == 5 and cat.test_counts == {"good": 1, "scratch": 2}
    assert cat.image_sizes == {"16x12": 8} and cat.image_modes == {"L": 8}
    assert _kinds(report) == {"unexpected_file": ["scratch/list.csv"]}


def test_missing_layout_and_no_images(synthetic_root, tmp_path):
    f = _copy(synthetic_root, tmp_path)
    shutil.rmtree(f / "train")
    report = check_dataset(f)
    assert _kinds(report) == {"layout": ["train/good"], "no_images": ["."]}
    shutil.rmtree(f / "test")
    (f / "train/good").mkdir(parents=True)
    kinds = _kinds(check_dataset(f))
    assert kinds["no_images"] == [".", "."] and kinds["layout"] == ["test"]


def test_official_category_counts_are_compared(synthetic_root, tmp_path):
    f = _copy(synthetic_root, tmp_path, name="bottle")
    report = check_dataset(f)
    (cat,) = report.categories
    assert cat.official and cat.kind == "object" and cat.grayscale is False
    mismatch = {p.path.relative_to(f).as_posix(): p.message for p in report.problems}
    assert set(_kinds(report)) == {"count_mismatch"}
    assert mismatch["train/good"] == "24 training images, official MVTec AD count is 209"
    assert mismatch["test/broken_large"].startswith("0 test images")
    assert mismatch["test/scratch"].endswith("official MVTec AD count is 0")
    assert mismatch["ground_truth"] == "8 masks, official MVTec AD count is 63"


def test_cli_json_and_exit_codes(synthetic_root, tmp_path, capsys):
    assert run_app(["data", "check", str(synthetic_root), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["ok"] is True and out["n_problems"] == 0
    assert out["categories"][0]["test_counts"]["good"] == 8
    assert run_app(["data", "check", str(synthetic_root)]) == 0
    table = capsys.readouterr().out
    assert "synthetic" in table and "no problems found" in table and "128x128 (40)" in table

    f = _copy(synthetic_root, tmp_path)
    (f / "ground_truth/scratch/000_mask.png").unlink()
    assert run_app(["data", "check", str(f.parent), "--category", "widget"]) == 1
    captured = capsys.readouterr()
    assert "mask_missing" in captured.out and "000_mask.png" in captured.out
    assert "1 problem(s) found" in captured.err
    assert run_app(["data", "check", str(f.parent), "--category", "nope"]) == 1
    # (rich may wrap the error line; compare with whitespace collapsed)
    assert "nope: category folder not found" in " ".join(capsys.readouterr().err.split())
    with pytest.raises(DatasetError, match="not found"):
        check_dataset(tmp_path / "absent")


@pytest.mark.slow
def test_real_bottle_counts(bottle_root, capsys):
    assert run_app(["data", "check", str(bottle_root / "bottle"), "--json"]) == 0
    (cat,) = json.loads(capsys.readouterr().out)["categories"]
    assert cat["n_train"] == 209 and cat["n_test"] == 83 and cat["n_masks"] == 63
    assert cat["test_counts"] == {"good": 20, "broken_large": 20, "broken_small": 22,
                                  "contamination": 21}
    assert cat["image_sizes"] == {"900x900": 292} and cat["image_modes"] == {"RGB": 292}
    assert cat["problems"] == [] and cat["official"] and cat["kind"] == "object"


@pytest.mark.slow
def test_real_bottle_copy_with_truncated_image_and_deleted_mask(bottle_root, tmp_path, capsys):
    src, dst = bottle_root / "bottle", tmp_path / "bottle"
    for rel in ["train/good/000.png", "train/good/001.png", "test/good/000.png",
                "test/broken_large/000.png", "test/broken_large/001.png",
                "ground_truth/broken_large/000_mask.png",
                "ground_truth/broken_large/001_mask.png"]:
        (dst / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(src / rel, dst / rel)
    _truncate(dst / "test/broken_large/000.png")
    (dst / "ground_truth/broken_large/001_mask.png").unlink()
    assert run_app(["data", "check", str(dst), "--json"]) == 1
    problems = json.loads(capsys.readouterr().out)["categories"][0]["problems"]
    named = {(p["kind"], Path(p["path"]).relative_to(dst).as_posix()) for p in problems}
    assert ("unreadable_image", "test/broken_large/000.png") in named
    assert ("mask_missing", "ground_truth/broken_large/001_mask.png") in named
    assert any("test/broken_large/001.png" in p["message"] for p in problems)


# --------------------------------------------------------------------------- other layouts
def test_every_layout_is_checked_with_its_own_rules(tmp_path):
    from defectmap.data.synth_layouts import make_layout_dataset

    for layout in ("loco", "mvtec_ad2", "visa", "realiad"):
        make_layout_dataset(layout, tmp_path / layout, category="c1", size=48)
        report = check_dataset(tmp_path / layout)
        (cat,) = report.categories
        assert report.ok, (layout, report.problems)
        assert cat.layout == layout and not cat.official and cat.n_masks > 0
    visa = check_dataset(tmp_path / "visa").categories[0]
    assert visa.n_masks == 4 and visa.n_regions >= 4  # class-index masks: not "not binary"
    loco = check_dataset(tmp_path / "loco").categories[0]
    assert loco.counts == {"train/good": 12, "validation/good": 4, "test/good": 4,
                           "test/logical_anomalies": 4, "test/structural_anomalies": 4}
    assert loco.n_masks == loco.n_regions == 12  # one defect per mask file
    ad2 = check_dataset(tmp_path / "mvtec_ad2" / "c1").categories[0]
    assert ad2.counts["test_private"] == ad2.counts["test_private_mixed"] == 4


def test_loco_unknown_mask_value_and_official_counts(tmp_path, capsys):
    from defectmap.data.synth_layouts import make_loco_dataset

    folder = make_loco_dataset(tmp_path, "pushpins", n_train=2, n_validation=1, n_good=1,
                               n_logical=1, n_structural=1, size=48)
    mask = folder / "ground_truth/logical_anomalies/000/000.png"
    values = np.asarray(Image.open(mask)).copy()
    values[values > 0] = 7
    Image.fromarray(values).save(mask)
    report = check_dataset(tmp_path)
    unknown = "pushpins/ground_truth/logical_anomalies/000/000.png"
    assert _kinds(report)["mask_unknown_value"] == [unknown]
    (cat,) = report.categories
    assert cat.official and cat.official_counts()["test/logical_anomalies"] == 91
    mismatch = {p.path.relative_to(tmp_path).as_posix(): p.message for p in report.problems
                if p.kind == "count_mismatch"}
    assert mismatch["pushpins/validation/good"] == \
        "1 validation images, official MVTec LOCO AD count is 69"
    assert run_app(["data", "check", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "MVTec LOCO AD layout, official" in out and "mask_unknown_value" in out


def test_mixed_modes_within_a_category_are_reported(synthetic_root, tmp_path, capsys):
    f = _copy(synthetic_root, tmp_path)
    for rel in ("train/good/004.png", "test/good/001.png"):  # 2 gray among 40 colour
        Image.open(f / rel).convert("L").save(f / rel)
    report = check_dataset(f)
    assert _kinds(report) == {"mixed_modes": ["test/good/001.png", "train/good/004.png"]}
    assert report.problems[0].message == (
        "grayscale image among colour images of this category (38 colour, 2 grayscale)")
    assert report.categories[0].image_modes == {"RGB": 38, "L": 2}
    gray = _copy(synthetic_root, tmp_path, "gray")  # all gray: consistent, no problem
    for path in gray.rglob("*.png"):
        if "ground_truth" not in path.parts:
            Image.open(path).convert("L").save(path)
    assert check_dataset(gray).ok
    assert run_app(["data", "check", str(f)]) == 1
    assert "mixed_modes" in capsys.readouterr().out


def test_problem_lines_name_each_path_once(synthetic_root, tmp_path, capsys):
    f = _copy(synthetic_root, tmp_path)
    _truncate(f / "train/good/003.png")
    (f / "test/good/002.png").write_text("not an image")
    _truncate(f / "ground_truth/scratch/001_mask.png")
    report = check_dataset(f)
    assert sorted((p.kind, p.path.name) for p in report.problems) == [
        ("unreadable_image", "002.png"), ("unreadable_image", "003.png"),
        ("unreadable_mask", "001_mask.png")]
    for problem in report.problems:
        assert str(problem.path) not in problem.message
    assert run_app(["data", "check", str(f)]) == 1
    lines = [line for line in capsys.readouterr().out.splitlines() if "unreadable" in line]
    assert len(lines) == 3
    for line in lines:
        path = line.split()[1].rstrip(":")
        assert line.count(path) == 1 and line.count(Path(path).name) == 1, line
