"""Metrics against the official MVTec values, scikit-learn, brute force and closed forms."""

from __future__ import annotations

import bisect
import json

import numpy as np
import pytest
from scipy import ndimage
from sklearn.metrics import roc_auc_score
from sklearn.metrics import roc_curve as sk_roc_curve

from defectmap import metrics as M
from defectmap.errors import DefectmapError
from defectmap.metrics import MetricInputError


# --------------------------------------------------------------------------- references
def brute_pro_points(maps, masks):
    """The official curve by definition: one point per distinct score, region by region."""
    regions = []
    for i, k in enumerate(masks):
        lab, n = ndimage.label(k != 0, structure=np.ones((3, 3)))
        regions += [(i, lab == r) for r in range(1, n + 1)]
    normal = np.concatenate([m[k == 0] for m, k in zip(maps, masks, strict=True)])
    scores = np.unique(np.concatenate([m.ravel() for m in maps]))[::-1]
    fpr, pro = [0.0], [0.0]
    for t in scores:
        fpr.append(np.count_nonzero(normal >= t) / normal.size)
        pro.append(np.mean([np.mean(maps[i][r] >= t) for i, r in regions]))
    return np.array(fpr + [1.0]), np.array(pro + [1.0])


def brute_trapezoid(x, y, limit):
    """Trapezoid up to ``limit`` with PRO interpolated there (written after the paper)."""
    x, y = list(x), list(y)
    area = 0.0
    for i in range(1, len(x)):
        if x[i] <= limit:
            area += 0.5 * (y[i] + y[i - 1]) * (x[i] - x[i - 1])
    if limit not in x:
        ins = bisect.bisect(x, limit)
        y_lim = y[ins - 1] + (y[ins] - y[ins - 1]) * (limit - x[ins - 1]) / (x[ins] - x[ins - 1])
        area += 0.5 * (y_lim + y[ins - 1]) * (limit - x[ins - 1])
    return area / limit


def brute_f1_max(scores, labels):
    best = (0.0, None)
    for t in np.unique(scores)[::-1]:
        pred = scores >= t
        tp = np.count_nonzero(pred & labels)
        f1 = 2 * tp / (np.count_nonzero(pred) + np.count_nonzero(labels))
        if f1 > best[0]:
            best = (f1, float(t))
    return best


def random_case(seed, n_images=6, levels=None, dtype=np.float32):
    """Maps of different sizes with blob masks; ``levels`` quantises scores (many ties)."""
    rng = np.random.default_rng(seed)
    maps, masks = [], []
    for i in range(n_images):
        h, w = rng.integers(8, 16, size=2)
        k = np.zeros((h, w), dtype=np.uint8)
        if i % 3 != 0:  # every third image is defect-free
            for _ in range(rng.integers(1, 4)):
                y, x = rng.integers(0, h - 2), rng.integers(0, w - 2)
                k[y : y + rng.integers(1, 5), x : x + rng.integers(1, 5)] = 1
        m = rng.random((h, w)) + 0.6 * k * rng.random((h, w))
        if levels:
            m = np.round(m * levels) / levels
        maps.append(m.astype(dtype))
        masks.append(k)
    return maps, masks


# --------------------------------------------------------------------------- official values
@pytest.mark.parametrize("name", ["bottle_225", "edge_cases"])
def test_matches_official_fixture_values(name, metric_fixtures):
    data = np.load(metric_fixtures / f"{name}.npz", allow_pickle=False)
    ref = json.loads((metric_fixtures / f"{name}.json").read_text())
    maps, masks, labels = data["maps"], data["masks"], data["labels"]
    for limit in ("0.3", "0.1", "0.05", "1.0"):
        assert M.aupro(maps, masks, float(limit)) == pytest.approx(ref[f"aupro@{limit}"], abs=1e-6)
    assert M.pixel_auroc(maps, masks) == pytest.approx(ref["pixel_auroc_sklearn"], abs=1e-6)
    scores = M.image_scores_from_maps(maps)
    assert M.image_auroc(scores, labels) == pytest.approx(ref["image_auroc_max"], abs=1e-6)
    types = ["good" if lab == 0 else "defect" for lab in labels]
    cm = M.category_metrics(None, labels, types, maps, masks, fpr_limit=0.3)
    assert cm["aupro"] == pytest.approx(ref["aupro@0.3"], abs=1e-6)
    assert cm["pixel_auroc"] == pytest.approx(ref["pixel_auroc_sklearn"], abs=1e-6)
    assert cm["image_auroc"] == pytest.approx(ref["image_auroc_max"], abs=1e-6)
    assert cm["n_images"] == ref["n_images"]


# --------------------------------------------------------------------------- brute force
@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("levels", [None, 4, 12])
def test_pixel_metrics_equal_brute_force(seed, levels):
    maps, masks = random_case(seed, levels=levels)
    bx, by = brute_pro_points(maps, masks)
    for limit in (0.001, 0.05, 0.1, 0.3, 0.55, 1.0):
        assert M.aupro(maps, masks, limit) == pytest.approx(
            brute_trapezoid(bx, by, limit), abs=1e-12
        )
    # the vertices of pro_curve span the same polyline (same area at every limit)
    fpr, pro = M.pro_curve(maps, masks)
    assert np.all(np.diff(fpr) >= 0) and fpr[0] == 0 and pro[0] == 0 and pro[-1] == 1
    for limit in np.linspace(0.02, 1.0, 17):
        assert brute_trapezoid(fpr, pro, limit) == pytest.approx(
            brute_trapezoid(bx, by, limit), abs=1e-12
        )
    flat_maps = np.concatenate([m.ravel() for m in maps])
    flat_masks = np.concatenate([k.ravel() for k in masks]) != 0
    assert M.pixel_auroc(maps, masks) == pytest.approx(
        roc_auc_score(flat_masks, flat_maps), abs=1e-12
    )
    f1, thr = M.pixel_f1_max(maps, masks)
    ref_f1, ref_thr = brute_f1_max(flat_maps, flat_masks)
    assert f1 == pytest.approx(ref_f1, abs=1e-12) and thr == ref_thr
    together = M.pixel_metrics(maps, masks, fpr_limit=0.3)
    assert together["aupro"] == pytest.approx(brute_trapezoid(bx, by, 0.3), abs=1e-12)
    assert together["pixel_auroc"] == M.pixel_auroc(maps, masks)
    assert (together["pixel_f1_max"], together["pixel_f1_threshold"]) == (f1, thr)


@pytest.mark.parametrize("seed", range(6))
def test_top_share_path_equals_full_sort_with_ties_at_the_floor(seed):
    # Three score levels only: the partition floor falls inside a huge run of ties.
    rng = np.random.default_rng(seed)
    maps = rng.integers(0, 3, size=(5, 30, 30)).astype(np.float32)
    masks = (rng.random((5, 30, 30)) < 0.08).astype(np.uint8)
    bx, by = brute_pro_points(list(maps), list(masks))
    for limit in (0.01, 0.2, 0.3, 0.34, 0.67, 0.9):
        expected = brute_trapezoid(bx, by, limit)
        assert M.aupro(maps, masks, limit) == pytest.approx(expected, abs=1e-12)
        cm = M.category_metrics(None, [0, 1, 1, 1, 1], ["good"] + ["d"] * 4, maps, masks, limit)
        assert cm["aupro"] == pytest.approx(expected, abs=1e-12)


def test_dtypes_uint8_float64_and_mixed_give_same_values():
    maps, masks = random_case(3, levels=200, dtype=np.float64)
    as_u8 = [np.round(m * 100).astype(np.uint8) for m in maps]
    as_f64 = [m.astype(np.float64) for m in as_u8]
    mixed = [m if i % 2 else m.astype(np.float32) for i, m in enumerate(as_u8)]
    for fn in (M.pixel_auroc, M.aupro, M.pixel_f1_max):
        assert fn(as_u8, masks) == fn(as_f64, masks) == fn(mixed, masks)


# --------------------------------------------------------------------------- closed forms
def test_closed_form_pro_curves():
    masks = np.zeros((2, 4, 4), np.uint8)
    masks[1, :2, :2] = 1  # one 4-pixel region
    perfect = masks.astype(np.float32)
    assert M.aupro(perfect, masks, 0.3) == 1.0
    assert M.pixel_auroc(perfect, masks) == 1.0
    reverse = 1.0 - perfect
    assert M.aupro(reverse, masks, 0.3) == 0.0
    assert M.pixel_auroc(reverse, masks) == 0.0
    flat = np.zeros_like(perfect)  # one threshold: the curve is the diagonal (0,0)-(1,1)
    assert M.aupro(flat, masks, 0.3) == pytest.approx(0.15)
    assert M.aupro(flat, masks, 1.0) == pytest.approx(0.5)
    assert M.pixel_auroc(flat, masks) == 0.5


def test_closed_form_two_regions_of_different_sizes():
    # One 1x8 image: normal pixels 0.5, 0.2, 0.1, 0.0; region A = [0.9] (area 1),
    # region B = [0.9, 0.3, 0.3] (area 3), separated by a normal pixel.
    m = np.array([[0.9, 0.0, 0.9, 0.3, 0.3, 0.5, 0.2, 0.1]])
    k = np.array([[1, 0, 1, 1, 1, 0, 0, 0]])
    # t=0.9: fpr 0, pro (1 + 1/3)/2 = 2/3; t=0.5: fpr 1/4; t=0.3: fpr 1/4, pro 1;
    # t=0.2: 2/4; t=0.1: 3/4; t=0: 1 (a horizontal run at PRO 1, kept as its two ends).
    fpr, pro = M.pro_curve([m], [k])
    np.testing.assert_allclose(fpr, [0, 0, 0.25, 0.25, 1])
    np.testing.assert_allclose(pro, [0, 2 / 3, 2 / 3, 1, 1])
    # area up to 0.5: 0.25 * 2/3 + 0.25 * 1 = 5/12, normalised: 5/6
    assert M.aupro([m], [k], 0.5) == pytest.approx(5 / 6)
    assert M.aupro([m], [k], 0.125) == pytest.approx(2 / 3)
    # pixel AUROC: anomalous (0.9, 0.9, 0.3, 0.3) vs normal (0.5, 0.2, 0.1, 0.0) -> 14/16
    assert M.pixel_auroc([m], [k]) == pytest.approx(14 / 16)
    # F1 at 0.3: tp 4, fp 1 -> 8/9 (at 0.9: 2/3)
    assert M.pixel_f1_max([m], [k]) == (pytest.approx(8 / 9), 0.3)


def test_image_metrics_closed_form_and_sklearn():
    scores = [0.8, 0.4, 0.4, 0.5, 0.1]
    labels = [1, 1, 0, 0, 0]
    # pairs: 0.8 beats 3; 0.4 beats 0.1, ties 0.4 (1/2), loses to 0.5 -> 4.5 / 6
    assert M.image_auroc(scores, labels) == 0.75
    rng = np.random.default_rng(0)
    s = rng.integers(0, 7, 200).astype(float)
    y = rng.random(200) < 0.4
    assert M.image_auroc(s, y) == pytest.approx(roc_auc_score(y, s), abs=1e-15)
    fpr, tpr, thr = M.roc_curve(s, y)
    ref_fpr, ref_tpr, ref_thr = sk_roc_curve(y, s, drop_intermediate=False)
    np.testing.assert_allclose(fpr, ref_fpr)
    np.testing.assert_allclose(tpr, ref_tpr)
    np.testing.assert_array_equal(thr[1:], ref_thr[1:])
    assert thr[0] == np.inf
    assert M.f1_max(s, y) == pytest.approx(brute_f1_max(s, y))
    assert M.f1_max([0.1, 0.9, 0.2], [0, 1, 0]) == (1.0, 0.9)


def test_label_regions_is_eight_connected():
    # {(0,0),(1,1),(2,2)} touch only diagonally: one region with 8-connectivity (three
    # with 4-connectivity); (0,3) and (4,3) stand alone: two more regions.
    mask = np.array([[1, 0, 0, 1], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 0], [0, 0, 0, 7]])
    labels, n = M.label_regions(mask)
    assert n == 3
    assert labels[0, 0] == labels[1, 1] == labels[2, 2] != 0
    assert len({labels[0, 0], labels[0, 3], labels[4, 3]}) == 3
    assert labels[0, 1] == 0 and labels.dtype == np.int32


def test_region_detection_rate_and_pixel_iou():
    gt = np.zeros((1, 6, 6), np.uint8)
    gt[0, 0:2, 0:2] = 1  # region of 4
    gt[0, 4:6, 4:6] = 1  # region of 4
    pred = np.zeros_like(gt)
    pred[0, 0, 0:2] = 1  # covers 2/4 of the first region
    pred[0, 4, 4] = 1  # covers 1/4 of the second
    assert M.region_detection_rate(pred, gt, min_overlap=0.5) == 0.5
    assert M.region_detection_rate(pred, gt, min_overlap=0.25) == 1.0
    assert M.region_detection_rate(pred, gt, min_overlap=0.75) == 0.0
    assert M.pixel_iou(pred, gt) == pytest.approx(3 / 8)
    empty = np.zeros_like(gt)
    assert np.isnan(M.region_detection_rate(pred, empty))
    assert np.isnan(M.pixel_iou(empty, empty))
    assert M.pixel_iou([pred[0], pred[0]], [gt[0], None]) == pytest.approx(3 / 11)


# --------------------------------------------------------------------------- category
def test_category_metrics_per_defect_equal_direct_subsets():
    maps, masks = random_case(7, n_images=9, levels=30)
    labels = np.array([0 if k.sum() == 0 else 1 for k in masks])
    types = ["good" if lab == 0 else ("a" if i % 2 else "b") for i, lab in enumerate(labels)]
    scores = M.image_scores_from_maps(maps)
    cm = M.category_metrics(scores, labels, types, maps, masks, fpr_limit=0.2)
    assert set(cm["per_defect"]) == {"a", "b"}
    assert cm["n_images"] == 9 and cm["n_defective"] == int(labels.sum())
    for name, sub in [(None, cm), *cm["per_defect"].items()]:
        idx = [i for i, t in enumerate(types) if name is None or t in ("good", name)]
        sub_maps, sub_masks = [maps[i] for i in idx], [masks[i] for i in idx]
        assert sub["n_images"] == len(idx)
        assert sub["image_auroc"] == M.image_auroc(scores[idx], labels[idx])
        assert (sub["f1_max"], sub["f1_threshold"]) == M.f1_max(scores[idx], labels[idx])
        assert sub["pixel_auroc"] == pytest.approx(M.pixel_auroc(sub_maps, sub_masks), abs=1e-15)
        assert sub["aupro"] == pytest.approx(M.aupro(sub_maps, sub_masks, 0.2), abs=1e-12)
        assert sub["pixel_f1_max"] == pytest.approx(M.pixel_f1_max(sub_maps, sub_masks)[0])
    no_pixels = M.category_metrics(scores, labels, types)
    assert no_pixels["pixel_auroc"] is None and no_pixels["aupro"] is None
    assert no_pixels["per_defect"]["a"]["pixel_f1_max"] is None
    assert no_pixels["image_auroc"] == cm["image_auroc"]
    # None entries stand for all-normal masks
    none_masks = [None if k.sum() == 0 else k for k in masks]
    assert M.category_metrics(scores, labels, types, maps, none_masks, 0.2)["aupro"] == cm["aupro"]


def test_category_metrics_and_pro_curve_gives_the_same_metrics_and_curve():
    maps, masks = random_case(7, n_images=9, levels=30)
    labels = np.array([0 if k.sum() == 0 else 1 for k in masks])
    types = ["good" if lab == 0 else ("a" if i % 2 else "b") for i, lab in enumerate(labels)]
    cm, (fpr, pro) = M.category_metrics_and_pro_curve(None, labels, types, maps, masks, 0.2)
    assert cm == M.category_metrics(None, labels, types, maps, masks, 0.2)
    ref_fpr, ref_pro = M.pro_curve(maps, masks)
    np.testing.assert_array_equal(fpr, ref_fpr)
    np.testing.assert_allclose(pro, ref_pro, rtol=0, atol=1e-12)  # sums in another order
    assert M.category_metrics_and_pro_curve(None, labels, types, maps)[1] is None


# --------------------------------------------------------------------------- bad input
def test_bad_input_raises_clear_errors():
    maps, masks = random_case(1)
    nan_maps = [m.copy() for m in maps]
    nan_maps[2][0, 0] = np.nan
    with pytest.raises(MetricInputError, match=r"maps\[2\].*NaN"):
        M.aupro(nan_maps, masks)
    inf_maps = [m.copy() for m in maps]
    inf_maps[1][1, 1] = np.inf
    with pytest.raises(MetricInputError, match="infinite"):
        M.pixel_auroc(inf_maps, masks)
    with pytest.raises(MetricInputError, match=r"masks\[3\] has shape"):
        M.aupro(maps, masks[:3] + [masks[3][:-1]] + masks[4:])
    with pytest.raises(MetricInputError, match="no anomalous pixel"):
        M.aupro(maps, [np.zeros_like(k) for k in masks])
    with pytest.raises(MetricInputError, match="no normal pixel"):
        M.pixel_auroc(maps, [np.ones_like(k) for k in masks])
    with pytest.raises(MetricInputError, match="fpr_limit"):
        M.aupro(maps, masks, 0.0)
    with pytest.raises(MetricInputError, match=r"\(N, H, W\)"):
        M.aupro(maps[0], masks[0])
    with pytest.raises(MetricInputError, match="6 maps but 5"):
        M.aupro(maps, masks[:5])
    with pytest.raises(MetricInputError, match="NaN"):
        M.image_auroc([0.1, np.nan], [0, 1])
    with pytest.raises(MetricInputError, match="no anomalous"):
        M.image_auroc([0.1, 0.2], [0, 0])
    with pytest.raises(MetricInputError, match="only 0"):
        M.image_auroc([0.1, 0.2], [0, 2])
    with pytest.raises(MetricInputError, match="'good'"):
        M.category_metrics([0.1, 0.2], [0, 1], ["good", "good"])
    with pytest.raises(MetricInputError, match="defect type 'b': the masks have no anomalous"):
        M.category_metrics(None, [0, 1, 1], ["good", "a", "b"], maps[:3],
                           [masks[0] * 0, masks[1], masks[2] * 0])
    with pytest.raises(MetricInputError, match="^all images: the masks have no anomalous"):
        M.category_metrics(None, [0, 1], ["good", "a"], maps[:2], [masks[0] * 0, masks[1] * 0])
    assert issubclass(MetricInputError, DefectmapError)
