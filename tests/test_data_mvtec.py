"""Dataset layouts: MVTec AD reader, mask pairing by stem, mask-less layouts, constants."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from defectmap.constants import (
    GRAYSCALE_CATEGORIES,
    MVTEC_CATEGORIES,
    MVTEC_TEST_COUNTS,
    MVTEC_TRAIN_COUNTS,
)
from defectmap.data.mvtec import (
    category_kind,
    is_grayscale_category,
    list_categories,
    load_category,
)
from defectmap.data.records import GOOD
from defectmap.errors import DatasetError

# Per-category totals published in the MVTec AD paper: train / test good / test defective.
PAPER_TOTALS = {
    "carpet": (280, 28, 89), "grid": (264, 21, 57), "leather": (245, 32, 92),
    "tile": (230, 33, 84), "wood": (247, 19, 60), "bottle": (209, 20, 63),
    "cable": (224, 58, 92), "capsule": (219, 23, 109), "hazelnut": (391, 40, 70),
    "metal_nut": (220, 22, 93), "pill": (267, 26, 141), "screw": (320, 41, 119),
    "toothbrush": (60, 12, 30), "transistor": (213, 60, 40), "zipper": (240, 32, 119),
}


def test_official_counts_match_paper_totals():
    assert set(MVTEC_TRAIN_COUNTS) == set(MVTEC_TEST_COUNTS) == set(MVTEC_CATEGORIES)
    for name, (n_train, n_good, n_defective) in PAPER_TOTALS.items():
        counts = MVTEC_TEST_COUNTS[name]
        assert MVTEC_TRAIN_COUNTS[name] == n_train, name
        assert counts[GOOD] == n_good, name
        assert sum(n for k, n in counts.items() if k != GOOD) == n_defective, name
    n_train = sum(MVTEC_TRAIN_COUNTS.values())
    n_test = sum(sum(c.values()) for c in MVTEC_TEST_COUNTS.values())
    assert (n_train, n_test, n_train + n_test) == (3629, 1725, 5354)
    assert MVTEC_TEST_COUNTS["bottle"] == {
        "good": 20, "broken_large": 20, "broken_small": 22, "contamination": 21}


def test_category_kind_and_colour():
    assert category_kind("carpet") == "texture" and category_kind("bottle") == "object"
    assert category_kind("my_widget") is None
    assert [c for c in MVTEC_CATEGORIES if is_grayscale_category(c)] == list(
        GRAYSCALE_CATEGORIES)


def _copy(synthetic_root: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(synthetic_root / "synthetic", tmp_path / "root" / "widget"))


def test_load_synthetic_category(synthetic_root):
    by_root = load_category(synthetic_root, "synthetic")
    by_folder = load_category(synthetic_root / "synthetic")
    assert by_root == by_folder
    assert by_root.name == "synthetic" and by_root.layout == "mvtec" and by_root.has_masks
    assert all(s.split == "train" and s.label == 0 and s.mask_path is None
               for s in by_root.train)
    assert by_root.defect_types == ["color_change", "contamination", "deformation",
                                    "missing_part", "scratch"]
    for s in by_root.test:
        assert s.split == "test" and s.category == "synthetic"
        assert s.label == int(s.defect_type != GOOD)
        if s.label:
            assert s.mask_path is not None and s.mask_path.name == f"{s.stem}_mask.png"
            assert s.mask_path.parent.name == s.defect_type
        else:
            assert s.mask_path is None


def test_masks_are_paired_by_stem_not_position(synthetic_root, tmp_path):
    folder = _copy(synthetic_root, tmp_path)
    # rename one image and its mask so that sorted positions of images and masks disagree
    (folder / "test/scratch/000.png").rename(folder / "test/scratch/zz_last.png")
    (folder / "ground_truth/scratch/000_mask.png").rename(
        folder / "ground_truth/scratch/zz_last_mask.png")
    (folder / "ground_truth/scratch/001_mask.png").rename(
        folder / "ground_truth/scratch/a_first_mask.png")
    (folder / "test/scratch/001.png").rename(folder / "test/scratch/a_first.png")
    data = load_category(folder)
    pairs = {s.path.name: s.mask_path.name for s in data.test if s.defect_type == "scratch"}
    assert pairs == {"a_first.png": "a_first_mask.png", "zz_last.png": "zz_last_mask.png"}


def test_missing_and_orphan_masks_are_errors_naming_the_path(synthetic_root, tmp_path):
    folder = _copy(synthetic_root, tmp_path)
    (folder / "ground_truth/contamination/001_mask.png").unlink()
    with pytest.raises(DatasetError, match=r"contamination/001_mask\.png.*no mask for"):
        load_category(folder)
    shutil.copy(folder / "ground_truth/contamination/000_mask.png",
                folder / "ground_truth/contamination/001_mask.png")
    (folder / "test/scratch/001.png").unlink()
    with pytest.raises(DatasetError, match=r"scratch/001_mask\.png: mask without"):
        load_category(folder)


def test_mvtec_layout_without_ground_truth(synthetic_root, tmp_path):
    folder = _copy(synthetic_root, tmp_path)
    shutil.rmtree(folder / "ground_truth")
    data = load_category(folder)
    assert not data.has_masks and data.layout == "mvtec"
    assert len(data.test) == 16 and sum(s.label for s in data.test) == 8
    assert all(s.mask_path is None for s in data.test)


def test_folders_layout_holds_out_every_fifth_good_image(tmp_path):
    folder = tmp_path / "parts"
    pixels = np.zeros((8, 8, 3), np.uint8)
    for i in range(12):
        (folder / "good").mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(folder / "good" / f"g{i:02d}.png")
    for name, n in (("defect", 3), ("dent", 2)):
        (folder / name).mkdir()
        for i in range(n):
            Image.fromarray(pixels).save(folder / name / f"{i}.jpg")
    data = load_category(folder)
    assert data.layout == "folders" and not data.has_masks
    assert [s.path.name for s in data.train] == [
        f"g{i:02d}.png" for i in range(12) if i not in (4, 9)]
    test_good = [s.path.name for s in data.test if s.label == 0]
    assert test_good == ["g04.png", "g09.png"]
    assert data.defect_types == ["defect", "dent"]
    assert sum(s.label for s in data.test) == 5
    assert all(s.mask_path is None for s in data.test)


def test_list_categories_and_bad_roots(synthetic_root, tmp_path):
    root = _copy(synthetic_root, tmp_path).parent
    (root / "notes").mkdir()
    (root / ".hidden" / "train").mkdir(parents=True)
    (root / "readme.txt").write_text("x")
    assert list_categories(root) == ["widget"]
    with pytest.raises(DatasetError, match="not found"):
        list_categories(tmp_path / "nothing")
    with pytest.raises(DatasetError, match="not a category folder"):
        load_category(root / "notes")
    with pytest.raises(DatasetError, match="data download"):
        load_category(root, "carpet")


@pytest.mark.slow
def test_real_bottle_layout(bottle_root):
    data = load_category(bottle_root, "bottle")
    assert len(data.train) == 209 and len(data.test) == 83
    assert data.defect_types == ["broken_large", "broken_small", "contamination"]
    masks = [s.mask_path for s in data.test if s.label]
    assert len(masks) == 63 and all(m is not None and m.is_file() for m in masks)
    assert all(s.mask_path.stem == f"{s.stem}_mask" for s in data.test if s.label)


def test_read_sample_mask_pairs_and_checks_size(synthetic_root):
    from defectmap.data.mvtec import read_sample_mask

    data = load_category(synthetic_root, "synthetic")
    good = next(s for s in data.test if s.label == 0)
    bad = next(s for s in data.test if s.label == 1)
    assert not read_sample_mask(good, (7, 5)).any()
    assert read_sample_mask(good, (7, 5)).shape == (7, 5)
    mask = read_sample_mask(bad, (128, 128))
    assert mask.dtype == bool and 0 < mask.sum() < mask.size
    with pytest.raises(DatasetError, match=bad.mask_path.name):
        read_sample_mask(bad, (64, 128))
