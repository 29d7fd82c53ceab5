"""The report package without a model: figures, gallery choice, tables, HTML, atomic output."""

from __future__ import annotations

import base64
import csv
import io
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from defectmap.report import ReportData, figures, render, select_gallery, write_report
from defectmap.report.table import build_table, to_csv, to_markdown


def _png_size(data: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(data)) as im:
        assert im.format == "PNG"
        return im.size


def fake_report_data(tmp_path: Path, n_good: int = 6, n_bad: int = 8, size: int = 64
                     ) -> ReportData:
    """Images on disk plus maps that light up exactly where the masks are."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths, labels, types, maps, masks = [], [], [], [], []
    for i in range(n_good + n_bad):
        label = int(i >= n_good)
        image = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
        path = tmp_path / f"img{i:02d}.png"
        Image.fromarray(image).save(path)
        mask = np.zeros((size, size), bool)
        if label:
            mask[10 + i: 20 + i, 5:25] = True
        amap = rng.random((size, size)).astype(np.float32) * 0.1 + mask * (0.5 + 0.05 * i)
        paths.append(path)
        labels.append(label)
        types.append("scratch" if label and i % 2 else ("dent" if label else "good"))
        maps.append(amap)
        masks.append(mask)
    scores = np.array([m.max() for m in maps])
    metrics = {
        "category": "toy", "detector": "fake<script>", "image_auroc": 1.0,
        "pixel_auroc": 0.97, "aupro": 0.9, "fpr_limit": 0.3, "f1_max": 1.0,
        "n_images": n_good + n_bad, "n_defective": n_bad,
        "per_defect": {"dent": {"image_auroc": 1.0, "n_images": n_good + n_bad // 2},
                       "scratch": {"image_auroc": 0.5, "n_images": n_good + n_bad // 2}},
        "calibrated": {"false_alarm_rate": 0.0, "f1": 0.75, "tp": 6},
        "oracle": {"label": "oracle (uses test labels)", "threshold": 0.5, "f1": 1.0},
        "timing": {"fit_s": 1.5, "ms_per_image": 12.0},
    }
    fpr = np.linspace(0, 1, 11)
    return ReportData(metrics=metrics, scores=scores, labels=np.array(labels),
                      defect_types=types, image_paths=paths, maps=maps, masks=masks,
                      pred_masks=[m > 0.3 for m in maps], roc=(fpr, np.sqrt(fpr)),
                      pro=(fpr, fpr ** 0.5), image_threshold=0.3)


def test_select_gallery_orders_hardest_first_and_is_bounded() -> None:
    scores = np.array([0.2, 0.9, 0.1, 0.5, 0.3, 0.8, 0.05, 0.7])
    labels = np.array([0, 0, 0, 1, 1, 1, 1, 1])
    chosen = select_gallery(scores, labels, n_max=6)
    # 2 good places: highest-scored good first; 4 defect places: lowest-scored first.
    assert chosen == [1, 0, 6, 4, 3, 7]
    assert select_gallery(scores, labels, n_max=100) == [1, 0, 2, 6, 4, 3, 7, 5]
    # Only defective images: all places go to them.
    assert select_gallery(scores[3:], labels[3:], n_max=3) == [3, 1, 0]
    assert select_gallery(scores, labels, n_max=0) == []


def test_table_mean_markdown_and_csv() -> None:
    rows = [
        {"category": "bottle", "detector": "patchcore", "image_auroc": 1.0,
         "pixel_auroc": 0.98, "aupro": 0.9},
        {"category": "bottle", "detector": "padim", "image_auroc": 0.99,
         "pixel_auroc": 0.97, "aupro": 0.8},
        {"category": "wood", "detector": "patchcore", "image_auroc": 0.9,
         "pixel_auroc": None, "aupro": None},
    ]
    table = build_table(rows, ["patchcore", "padim"])
    assert table["mean"]["patchcore"]["image_auroc"] == pytest.approx(0.95)
    assert table["mean"]["patchcore"]["pixel_auroc"] == pytest.approx(0.98)  # None skipped
    assert table["mean"]["padim"]["aupro"] == pytest.approx(0.8)
    assert table["rows"][1]["padim"]["image_auroc"] is None  # wood has no padim run
    md = to_markdown(table).splitlines()
    assert md[0].startswith("| category | patchcore image AUROC |")
    assert md[2] == "| bottle | 1.000 | 0.980 | 0.900 | 0.990 | 0.970 | 0.800 |"
    assert md[-1].startswith("| **mean** | **0.950** |")
    parsed = list(csv.reader(io.StringIO(to_csv(table))))
    assert parsed[0][:2] == ["category", "patchcore image AUROC"]
    assert parsed[2] == ["wood", "0.900", "", "", "", "", ""]
    assert parsed[3][0] == "mean" and float(parsed[3][1]) == pytest.approx(0.95)


def test_gallery_panel_downscales_and_draws_contours() -> None:
    image = np.full((400, 200, 3), 128, np.uint8)
    mask = np.zeros((400, 200), bool)
    mask[100:300, 50:150] = True
    png = figures.gallery_panel(image, mask.astype(np.float32), mask, mask, 0.0, 1.0,
                                "caption", thumb=100)
    width, height = _png_size(png)
    assert height == 100 + 30  # longest side 100 plus the caption strip
    assert width == 4 * 50 + 3 * 6
    panel = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))[30:]
    gt_panel = panel[:, 2 * 56: 2 * 56 + 50]
    assert (gt_panel == render.GT_COLOUR).all(axis=-1).sum() > 50  # contour drawn
    assert (panel[:, :50] == render.GT_COLOUR).all(axis=-1).sum() == 0  # input untouched
    # Predicted panel: the prediction is drawn over the (thinner) ground truth, so where
    # the two coincide only the prediction's colour shows.
    pred_panel = panel[:, 3 * 56: 3 * 56 + 50]
    assert (pred_panel == render.PRED_COLOUR).all(axis=-1).sum() > 50
    assert (pred_panel == render.GT_COLOUR).all(axis=-1).sum() == 0


def test_write_report_is_self_contained(tmp_path: Path) -> None:
    data = fake_report_data(tmp_path / "images_in")
    report = write_report(data, tmp_path / "out", max_gallery=5)
    text = report.read_text(encoding="utf-8")
    figs = sorted(p.name for p in (tmp_path / "out" / "figures").iterdir())
    assert {"roc.png", "pro.png", "scores.png"} <= set(figs)
    gallery = [f for f in figs if f.startswith("gallery_")]
    # Gallery: 1 good (the highest-scored one) then 4 defects, lowest scores first; the
    # fake defect maps peak at 0.5 + 0.05 i, so the lowest are images 6, 7, 8, 9.
    best_good = int(np.argmax(np.where(data.labels == 0, data.scores, -1)))
    assert gallery == [f"gallery_01_good_img{best_good:02d}.png",
                       "gallery_02_dent_img06.png", "gallery_03_scratch_img07.png",
                       "gallery_04_dent_img08.png", "gallery_05_scratch_img09.png"]
    srcs = re.findall(r'<img src="([^"]+)"', text)
    assert len(srcs) == 3 + 5
    for src in srcs:
        assert src.startswith("data:image/png;base64,")
        _png_size(base64.b64decode(src.split(",", 1)[1]))
    assert "http://" not in text and "https://" not in text and "<script" not in text
    assert "fake&lt;script&gt;" in text  # user-controlled text is escaped
    assert "oracle (uses test labels)" in text
    assert text.count("<table") == 3  # summary, per defect, operating points


def test_write_report_needs_images_only_for_the_gallery(tmp_path: Path) -> None:
    data = fake_report_data(tmp_path / "images_in")
    data.maps = None
    data.pro = None
    report = write_report(data, tmp_path / "out")
    text = report.read_text()
    assert text.count("<img") == 2  # roc + histogram, no gallery
    assert not any(p.name.startswith("gallery") for p in (tmp_path / "out/figures").iterdir())


def test_table_mean_skips_undefined_values():
    rows = [
        {"category": "a", "detector": "patchcore", "image_auroc": 0.9, "pixel_auroc": float("nan"),
         "aupro": 0.5},
        {"category": "b", "detector": "patchcore", "image_auroc": 0.7, "pixel_auroc": 0.8,
         "aupro": None},
    ]
    mean = build_table(rows, ["patchcore"])["mean"]["patchcore"]
    assert mean["image_auroc"] == pytest.approx(0.8)
    assert mean["pixel_auroc"] == pytest.approx(0.8)  # the NaN category is left out
    assert mean["aupro"] == pytest.approx(0.5)


def test_report_without_masks_has_no_ground_truth_panel(tmp_path: Path) -> None:
    """A dataset without masks (the plain good/ + defect/ layout): three panels, and the key
    does not announce a ground truth that is not there (issue 12.12)."""
    data = fake_report_data(tmp_path / "images_in")
    data.masks = None
    data.pro = None
    report = write_report(data, tmp_path / "out", max_gallery=2, thumb=64)
    text = report.read_text()
    assert "ground truth <span" not in text and "no ground-truth masks" in text
    for path in sorted((tmp_path / "out" / "figures").glob("gallery_*.png")):
        with Image.open(path) as im:
            assert im.size == (3 * 64 + 2 * 6, 64 + 30)  # input, heatmap, predicted
    with_masks = write_report(fake_report_data(tmp_path / "again"), tmp_path / "out2",
                              max_gallery=2, thumb=64).read_text()
    assert "ground truth <span" in with_masks
