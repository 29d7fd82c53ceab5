"""``defectmap evaluate-maps`` end to end on the synthetic dataset, with TIFF/NPY/PNG maps."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image
from scipy import ndimage

from defectmap.cli._common import run_app
from defectmap.data.io import read_mask
from defectmap.data.mvtec import load_category
from defectmap.evaluate.maps import MapFileError, evaluate_maps_dir, read_map
from defectmap.metrics import category_metrics


def fake_map(sample, rng) -> np.ndarray:
    """A plausible float32 map: blurred ground truth (if any) plus noise."""
    size = Image.open(sample.path).size
    truth = np.zeros((size[1], size[0]), np.float32)
    if sample.mask_path is not None:
        truth = read_mask(sample.mask_path).astype(np.float32)
    noise = rng.random(truth.shape, dtype=np.float32)
    return (ndimage.gaussian_filter(truth, 3) + 0.4 * noise).astype(np.float32)


@pytest.fixture(scope="module")
def maps_setup(synthetic_root, tmp_path_factory):
    """TIFF maps for every test image of ``synthetic``, and the same maps in memory."""
    data = load_category(synthetic_root, "synthetic")
    rng = np.random.default_rng(0)
    maps_dir = tmp_path_factory.mktemp("maps")
    maps = []
    for sample in data.test:
        m = fake_map(sample, rng)
        out = maps_dir / "synthetic" / "test" / sample.defect_type / f"{sample.stem}.tiff"
        out.parent.mkdir(parents=True, exist_ok=True)
        tifffile.imwrite(out, m)
        maps.append(m)
    return data, maps_dir, maps


def expected_metrics(data, maps, fpr_limit):
    masks = [read_mask(s.mask_path) if s.mask_path else None for s in data.test]
    labels = np.array([s.label for s in data.test])
    types = [s.defect_type for s in data.test]
    return category_metrics(None, labels, types, maps, masks, fpr_limit)


def test_cli_json_equals_library_metrics(maps_setup, synthetic_root, tmp_path, capsys):
    data, maps_dir, maps = maps_setup
    out = tmp_path / "results" / "metrics.json"
    rc = run_app(["evaluate-maps", str(maps_dir), str(synthetic_root), "--json", str(out)])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    result = json.loads(out.read_text())
    expected = expected_metrics(data, maps, 0.3)
    assert result["protocol"] == "mvtec_ad"  # chosen from the dataset's layout, and said
    assert result["categories"]["synthetic"] == json.loads(
        json.dumps({"protocol": "mvtec_ad", **expected}))
    assert result["mean"]["aupro"] == expected["aupro"]
    assert result["mean"]["image_auroc"] == expected["image_auroc"]
    assert result["warnings"] == []
    assert set(expected["per_defect"]) == set(data.defect_types)
    assert expected["n_images"] == len(data.test) and expected["pixel_auroc"] > 0.9
    for name in ["mean", "AU-PRO", "@0.3", *data.defect_types]:
        assert name in captured.out
    # another limit, category chosen explicitly
    rc = run_app(["evaluate-maps", str(maps_dir), str(synthetic_root), "-c", "synthetic",
                  "--fpr-limit", "0.05", "--json", str(out)])
    assert rc == 0
    result = json.loads(out.read_text())
    assert result["categories"]["synthetic"]["aupro"] == expected_metrics(data, maps, 0.05)["aupro"]


def test_npy_and_png_maps_are_read_like_tiff(maps_setup, synthetic_root, tmp_path):
    data, maps_dir, maps = maps_setup
    mixed = tmp_path / "maps"
    shutil.copytree(maps_dir, mixed)
    quantised = []
    for i, (sample, m) in enumerate(zip(data.test, maps, strict=True)):
        tiff = mixed / "synthetic" / "test" / sample.defect_type / f"{sample.stem}.tiff"
        q = np.round(m / m.max() * 65535).astype(np.uint16)  # as a 16-bit PNG would hold it
        quantised.append(q)
        if i % 3 == 1:
            tiff.unlink()
            np.save(tiff.with_suffix(".npy"), q)
        elif i % 3 == 2:
            tiff.unlink()
            Image.fromarray(q).save(tiff.with_suffix(".png"))
        else:
            tifffile.imwrite(tiff, q)
    got = evaluate_maps_dir(mixed, synthetic_root)["categories"]["synthetic"]
    assert got == {"protocol": "mvtec_ad", **expected_metrics(data, quantised, 0.3)}
    png = next((mixed / "synthetic" / "test").rglob("*.png"))
    assert read_map(png).dtype == np.uint16


def test_missing_extra_wrong_size_and_bad_maps(maps_setup, synthetic_root, tmp_path, capsys):
    data, maps_dir, _ = maps_setup
    bad = tmp_path / "maps"
    shutil.copytree(maps_dir, bad)
    test_dir = bad / "synthetic" / "test"
    first, second = data.test[0], data.test[-1]
    # extra map: a warning naming it, results still produced
    extra = test_dir / "good" / "999.tiff"
    tifffile.imwrite(extra, np.zeros((128, 128), np.float32))
    rc = run_app(["evaluate-maps", str(bad), str(synthetic_root)])
    assert rc == 0 and str(extra) in capsys.readouterr().err.replace("\n", "")
    # missing maps: an error listing each of them
    for s in (first, second):
        (test_dir / s.defect_type / f"{s.stem}.tiff").unlink()
    rc = run_app(["evaluate-maps", str(bad), str(synthetic_root)])
    err = capsys.readouterr().err.replace("\n", "")
    assert rc == 1 and "2 of 16" in err
    for s in (first, second):
        assert str(test_dir / s.defect_type / f"{s.stem}.tiff") in err
    with pytest.raises(MapFileError, match="have no map"):
        evaluate_maps_dir(bad, synthetic_root)
    # wrong size: the error names the map
    wrong = test_dir / first.defect_type / f"{first.stem}.npy"
    np.save(wrong, np.zeros((64, 128), np.float32))
    np.save(test_dir / second.defect_type / f"{second.stem}.npy", np.zeros((128, 128)))
    with pytest.raises(MapFileError, match=f"{wrong}: map is 128x64"):
        evaluate_maps_dir(bad, synthetic_root)
    # NaN values and two maps for one image
    np.save(wrong, np.full((128, 128), np.nan, np.float32))
    with pytest.raises(MapFileError, match="NaN"):
        evaluate_maps_dir(bad, synthetic_root)
    np.save(wrong, np.zeros((128, 128), np.float32))
    tifffile.imwrite(wrong.with_suffix(".tiff"), np.zeros((128, 128), np.float32))
    with pytest.raises(MapFileError, match="two maps for the same image"):
        evaluate_maps_dir(bad, synthetic_root)
    # colour PNG and unknown category
    rgb = tmp_path / "rgb.png"
    Image.new("RGB", (4, 4)).save(rgb)
    with pytest.raises(MapFileError, match="one channel"):
        read_map(rgb)
    with pytest.raises(MapFileError, match="no maps for category 'nope'"):
        evaluate_maps_dir(bad, synthetic_root, categories=["nope"])
    assert run_app(["evaluate-maps", str(bad), str(synthetic_root), "--fpr-limit", "1.5"]) == 2
    assert "'--fpr-limit': must be in (0, 1], got 1.5" in capsys.readouterr().err


def test_dataset_without_masks_gives_image_metrics_only(maps_setup, synthetic_root, tmp_path):
    data, maps_dir, maps = maps_setup
    root = tmp_path / "data"
    shutil.copytree(synthetic_root / "synthetic", root / "synthetic",
                    ignore=shutil.ignore_patterns("ground_truth"))
    got = evaluate_maps_dir(maps_dir, root, ["synthetic"])
    r = got["categories"]["synthetic"]
    assert r["pixel_auroc"] is None and r["aupro"] is None and got["mean"]["aupro"] is None
    assert r["image_auroc"] == expected_metrics(data, maps, 0.3)["image_auroc"]


def test_read_map_squeezes_one_channel(tmp_path: Path):
    path = tmp_path / "m.tiff"
    values = np.arange(12, dtype=np.float32)
    for shape in [(3, 4, 1), (1, 3, 4)]:
        tifffile.imwrite(path, values.reshape(shape), photometric="minisblack")
        np.testing.assert_array_equal(read_map(path), values.reshape(3, 4))
