"""Synthetic dataset generator: layout, determinism, pixel-exact masks, variation."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from defectmap.cli._common import run_app
from defectmap.data.io import read_image, read_mask, read_mask_values
from defectmap.data.mvtec import load_category
from defectmap.data.synth import (
    DEFECT_TYPES,
    MIN_DEFECT_DELTA,
    make_synthetic_dataset,
    render_pair,
)
from defectmap.errors import DatasetError


def _hashes(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*")) if p.is_file()
    }


def test_fixture_layout_counts_and_masks(synthetic_root):
    data = load_category(synthetic_root, "synthetic")
    assert len(data.train) == 24 and len(data.test) == 16
    counts = {t: sum(s.defect_type == t for s in data.test) for t in ("good", *DEFECT_TYPES)}
    assert counts == {"good": 8, "scratch": 2, "contamination": 2, "missing_part": 2,
                      "color_change": 1, "deformation": 1}
    for sample in data.test:
        image = read_image(sample.path)
        assert image.shape == (128, 128, 3)
        if sample.label:
            values = read_mask_values(sample.mask_path)
            assert set(np.unique(values)) == {0, 255}
            assert values.shape == image.shape[:2]
            assert (values > 0).sum() >= 24


@pytest.mark.parametrize("kind", ["object", "texture"])
@pytest.mark.parametrize("grayscale", [False, True])
def test_masks_are_exactly_the_changed_pixels(kind, grayscale):
    for i, defect in enumerate(DEFECT_TYPES * 2):
        normal, image, mask = render_pair(kind, 96, grayscale, 5, (2, i), defect)
        assert image.shape == ((96, 96) if grayscale else (96, 96, 3))
        changed = normal != image if grayscale else (normal != image).any(axis=2)
        np.testing.assert_array_equal(changed, mask, err_msg=f"{kind} {defect}")
        assert mask.sum() >= 12
        # visible: inside the mask pixels move by about MIN_DEFECT_DELTA or more
        delta = np.abs(normal.astype(int) - image.astype(int))
        delta = delta if grayscale else delta.max(axis=2)
        assert delta[mask].min() >= MIN_DEFECT_DELTA - 12  # noise is clipped to +-6 per image


def test_written_masks_match_rendering(tmp_path):
    folder = make_synthetic_dataset(tmp_path, "tex", kind="texture", n_train=2, n_test=10,
                                    size=64, grayscale=True, seed=3)
    data = load_category(folder)
    defective = [s for s in data.test if s.label == 1]
    assert sorted(s.defect_type for s in defective) == sorted(DEFECT_TYPES)
    for sample in defective:
        assert sample.mask_path == folder / "ground_truth" / sample.defect_type / (
            f"{sample.stem}_mask.png")
        assert read_image(sample.path, mode="L").shape == (64, 64)
        # test images are keyed (2, index among test images): 5 goods, then the defect
        # types in DEFECT_TYPES order (one image each here)
        position = 5 + DEFECT_TYPES.index(sample.defect_type)
        _, image, mask = render_pair("texture", 64, True, 3, (2, position), sample.defect_type)
        np.testing.assert_array_equal(read_mask(sample.mask_path), mask)
        np.testing.assert_array_equal(read_image(sample.path, mode="L"), image)


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path):
    kwargs = dict(category="c", kind="object", n_train=3, n_test=10, size=64)
    a = _hashes(make_synthetic_dataset(tmp_path / "a", seed=7, **kwargs))
    b = _hashes(make_synthetic_dataset(tmp_path / "b", seed=7, **kwargs))
    c = _hashes(make_synthetic_dataset(tmp_path / "c", seed=8, **kwargs))
    assert len(a) == 3 + 10 + 5 and a == b
    assert a.keys() == c.keys()
    assert sum(a[k] != c[k] for k in a) == len(a)


def test_cli_synth_matches_library_and_is_deterministic(tmp_path, capsys):
    argv = ["data", "synth", str(tmp_path / "cli"), "--category", "fab", "--kind", "texture",
            "--n-train", "2", "--n-test", "4", "--size", "48", "--grayscale", "--seed", "11"]
    assert run_app(argv) == 0
    assert "fab" in capsys.readouterr().out
    lib = make_synthetic_dataset(tmp_path / "lib", "fab", kind="texture", n_train=2, n_test=4,
                                 size=48, grayscale=True, seed=11)
    assert _hashes(tmp_path / "cli" / "fab") == _hashes(lib)
    # a second run into the same place refuses rather than overwriting silently
    assert run_app(argv) == 1
    assert "already exists" in capsys.readouterr().err
    assert run_app([*argv[:5], "--kind", "liquid"]) == 2  # a usage error


def test_normal_images_vary(tmp_path):
    for kind in ("object", "texture"):
        goods = [render_pair(kind, 96, False, 0, (1, i), None)[0].astype(float)
                 for i in range(6)]
        diffs = [np.abs(goods[i] - goods[j]).mean() for i in range(6) for j in range(i)]
        assert min(diffs) > 5.0, kind  # position / rotation / lighting / phase differ


def test_invalid_arguments(tmp_path):
    with pytest.raises(DatasetError, match="kind"):
        make_synthetic_dataset(tmp_path, kind="blob")  # type: ignore[arg-type]
    with pytest.raises(DatasetError, match="category"):
        make_synthetic_dataset(tmp_path, category="../x")
    with pytest.raises(DatasetError, match="defect type"):
        render_pair("object", 64, False, 0, (1, 0), "dent")
    make_synthetic_dataset(tmp_path, "x", n_train=1, n_test=0, size=32)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp left


def test_category_folder_gets_the_usual_permissions(tmp_path):
    import stat

    from defectmap.files import _UMASK

    folder = make_synthetic_dataset(tmp_path, n_train=1, n_test=0, size=32)
    # built in a mkdtemp folder (owner-only) and renamed: must not stay 0o700
    assert stat.S_IMODE(folder.stat().st_mode) == 0o777 & ~_UMASK
