"""AU-sPRO (MVTec LOCO AD) and SegF1 (MVTec AD 2) against brute force and the official values."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from defectmap.metrics import (
    MetricInputError,
    image_auroc,
    loco_metrics,
    official_image_auroc,
    saturation_area,
    seg_f1,
    spro_curve,
    validation_threshold,
)
from defectmap.metrics import spro as S


# --------------------------------------------------------------------------- references
def brute_trapezoid(x, y, limit):
    """Trapezoid up to ``limit`` with y interpolated there, point by point."""
    area, x, y = 0.0, list(x), list(y)
    for i in range(1, len(x)):
        if x[i] <= limit:
            area += 0.5 * (y[i] + y[i - 1]) * (x[i] - x[i - 1])
        elif x[i - 1] < limit:
            y_lim = y[i - 1] + (y[i] - y[i - 1]) * (limit - x[i - 1]) / (x[i] - x[i - 1])
            area += 0.5 * (y_lim + y[i - 1]) * (limit - x[i - 1])
    return area / limit


def brute_values(maps, masks, sats, t):
    """FPR and mean sPRO at threshold ``t`` by definition (``score > t`` is anomalous)."""
    fp = n = 0
    spros = []
    for m, ks, ss in zip(maps, masks, sats, strict=True):
        union = np.zeros(m.shape, bool)
        for k, s in zip(ks, ss, strict=True):
            union |= k
            spros.append(min(np.count_nonzero((m > t) & k) / s, 1.0))
        fp += np.count_nonzero((m > t) & ~union)
        n += np.count_nonzero(~union)
    return fp / n, float(np.mean(spros))


def brute_curve(maps, masks, sats):
    """The curve at every distinct score, from (0, 0) to (1, 1)."""
    scores = np.unique(np.concatenate([m.ravel() for m in maps]))[::-1]
    points = [(0.0, 0.0)] + [brute_values(maps, masks, sats, t) for t in scores[1:]]
    points.append((1.0, 1.0))
    fpr, spro = zip(*points, strict=True)
    return np.array(fpr), np.array(spro)


def brute_auroc(good, bad):
    """Mann-Whitney by pairs, ties count one half."""
    return np.mean([1.0 if b > g else 0.5 if b == g else 0.0 for g in good for b in bad])


def loco_case(seed, n_good=3, n_per_type=3, size=(9, 11), levels=None):
    """Random maps and 1-3 (possibly overlapping) masks per anomalous image, mixed saturation."""
    rng = np.random.default_rng(seed)
    maps, types, masks, sats = [], [], [], []
    kinds = ["good"] * n_good + ["logical_anomalies"] * n_per_type + \
        ["structural_anomalies"] * n_per_type
    for kind in kinds:
        m = rng.random(size)
        ks, ss = [], []
        if kind != "good":
            for _ in range(rng.integers(1, 4)):
                k = np.zeros(size, bool)
                y, x = rng.integers(0, size[0] - 2), rng.integers(0, size[1] - 2)
                k[y : y + rng.integers(1, 5), x : x + rng.integers(2, 6)] = True
                m = m + 0.5 * k * rng.random(size)
                area = int(k.sum())
                if rng.random() < 0.5:
                    ss.append(saturation_area(area, float(rng.choice([0.5, 1.0, 0.37])), True))
                else:
                    ss.append(saturation_area(area, int(rng.integers(1, 12)), False))
                ks.append(k)
        if levels:
            m = np.round(m * levels) / levels
        maps.append(m.astype(np.float32))
        types.append(kind)
        masks.append(ks)
        sats.append([max(s, 1) for s in ss])
    return maps, types, masks, sats


def subset(case, kind):
    maps, types, masks, sats = case
    keep = [i for i, t in enumerate(types) if t in ("good", kind)]
    return ([maps[i] for i in keep], [masks[i] for i in keep], [sats[i] for i in keep])


# --------------------------------------------------------------------------- exact mode
@pytest.mark.parametrize("seed, levels", [(0, None), (1, 8), (2, 3), (3, None)])
def test_exact_au_spro_equals_brute_force(seed, levels):
    case = loco_case(seed, levels=levels)
    result = loco_metrics(*case, limits=(0.05, 0.3, 1.0))
    assert result["mode"] == "exact"
    for kind in ("logical_anomalies", "structural_anomalies"):
        fpr, spro = brute_curve(*subset(case, kind))
        for limit in (0.05, 0.3, 1.0):
            expected = brute_trapezoid(fpr, spro, limit)
            assert result["auc_spro"][kind][repr(limit)] == pytest.approx(expected, abs=1e-12)
    for limit in ("0.05", "0.3", "1.0"):
        mean = (result["auc_spro"]["logical_anomalies"][limit]
                + result["auc_spro"]["structural_anomalies"][limit]) / 2
        assert result["auc_spro"]["mean"][limit] == pytest.approx(mean, abs=1e-15)


def test_exact_curve_vertices_lie_on_the_brute_force_curve():
    maps, _, masks, sats = loco_case(4, levels=5)
    fpr, spro = spro_curve(maps, masks, sats)
    ref_fpr, ref_spro = brute_curve(maps, masks, sats)
    assert fpr[0] == spro[0] == 0.0 and fpr[-1] == spro[-1] == 1.0
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(spro) >= -1e-15)
    # Every brute-force point is a vertex (the exact curve only merges runs in between).
    vertices = set(zip(np.round(fpr, 12), np.round(spro, 12), strict=True))
    for point in zip(np.round(ref_fpr, 12), np.round(ref_spro, 12), strict=True):
        assert point in vertices


def test_saturation_caps_the_spro_closed_form():
    # One 2x2 defect saturated at 2 pixels: the sPRO reaches 1 once two of its pixels score.
    m = np.zeros((4, 4), np.float32)
    k = np.zeros((4, 4), bool)
    k[:2, :2] = True
    m[0, 0], m[0, 1], m[1, 0], m[1, 1] = 0.9, 0.8, 0.3, 0.2
    m[3, 3] = 0.5  # one normal pixel above the defect's two weakest
    good = np.zeros((4, 4), np.float32)
    result = loco_metrics([good, m], ["good", "logical_anomalies"], [[], [k]], [[], [2]],
                          limits=(1.0,))
    # Curve: (0,0) -> (0, 0.5) -> (0, 1) -> (1, 1): area 1 below the whole FPR range.
    assert result["auc_spro"]["logical_anomalies"]["1.0"] == pytest.approx(1.0, abs=1e-15)
    # Without saturation (s = 4) the normal pixel at 0.5 comes before half the defect.
    plain = loco_metrics([good, m], ["good", "logical_anomalies"], [[], [k]], [[], [4]],
                         limits=(1.0,))
    n_normal = 16 + 12
    expected = 1 - 0.5 * (1 / n_normal)  # the half-covered defect waits one normal pixel
    assert plain["auc_spro"]["logical_anomalies"]["1.0"] == pytest.approx(expected, abs=1e-12)


def test_saturation_area_follows_the_official_rounding():
    assert saturation_area(389, 0.5, True) == 194  # int(194.5)
    assert saturation_area(100, 0.29, True) == 28  # 0.29 * 100 = 28.999999999999996
    assert saturation_area(163, 900, False) == 163
    assert saturation_area(2000, 900, False) == 900


# --------------------------------------------------------------------------- official mode
@pytest.mark.parametrize("seed", [0, 5])
def test_official_mode_integrates_the_curve_at_its_thresholds(seed):
    case = loco_case(seed, n_good=4, size=(12, 12))
    maps, types, masks, sats = case
    result = loco_metrics(*case, mode="official", limits=(0.1, 1.0))
    data = S._prepare(maps, types, masks, sats)
    thresholds = S.official_thresholds(data, 0.001, np.random.default_rng(0))
    assert result["n_thresholds"] == thresholds.size
    assert np.all(np.diff(thresholds) < 0)
    assert thresholds[0] == np.float32(max(m.max() for m in maps)) + np.float32(1e-6)
    for kind in ("logical_anomalies", "structural_anomalies"):
        sub = subset(case, kind)
        points = [brute_values(*sub, t) for t in thresholds]
        fpr, spro = (np.array(v) for v in zip(*points, strict=True))
        assert fpr[0] == 0 and fpr[-1] == 1 and spro[-1] == 1
        for limit in (0.1, 1.0):
            expected = brute_trapezoid(fpr, spro, limit)
            assert result["auc_spro"][kind][repr(limit)] == pytest.approx(expected, abs=1e-12)
        # Far fewer thresholds than distinct scores, close to the exact value.
    exact = loco_metrics(*case, limits=(1.0,))
    assert result["auc_spro"]["mean"]["1.0"] == pytest.approx(exact["auc_spro"]["mean"]["1.0"],
                                                              abs=0.02)


def test_official_mode_reaches_fpr_one_on_float32_maps_with_large_scores():
    """min - 1e-6 rounds back to min in float32 above about 8: the lowest threshold must
    still lie below every score (the official code would fail its assertion at 1.0)."""
    maps, types, masks, sats = loco_case(0, n_good=4, size=(12, 12))
    shifted = [np.asarray(m, dtype=np.float32) + np.float32(40.0) for m in maps]
    low = min(float(m.min()) for m in shifted)
    assert np.float32(low) - 1e-6 == np.float32(low)  # the case the fix is for
    data = S._prepare(shifted, types, masks, sats)
    thresholds = S.official_thresholds(data, 0.001, np.random.default_rng(0))
    assert thresholds[-1] < low
    result = loco_metrics(shifted, types, masks, sats, mode="official", limits=(1.0,))
    sub = subset((shifted, types, masks, sats), "structural_anomalies")
    fpr, spro = (np.array(v) for v in zip(*[brute_values(*sub, t) for t in thresholds],
                                          strict=True))
    assert fpr[-1] == 1
    assert result["auc_spro"]["structural_anomalies"]["1.0"] == pytest.approx(
        brute_trapezoid(fpr, spro, 1.0), abs=1e-12)


def test_official_subsample_is_seeded(monkeypatch):
    case = loco_case(6, size=(20, 20))
    full = loco_metrics(*case, mode="official", limits=(0.3,))
    monkeypatch.setattr(S, "OFFICIAL_MAX_SAMPLED_SCORES", 900)  # 9 maps x 400 > 900
    a = loco_metrics(*case, mode="official", limits=(0.3,), random_state=1)
    b = loco_metrics(*case, mode="official", limits=(0.3,), random_state=1)
    c = loco_metrics(*case, mode="official", limits=(0.3,), random_state=2)
    assert a == b
    assert a["n_thresholds"] != full["n_thresholds"] or a != c


def test_official_image_auroc_splits_ties():
    rng = np.random.default_rng(0)
    good, bad = rng.random(7).tolist(), (rng.random(5) + 0.3).tolist()
    assert official_image_auroc(good, bad) == pytest.approx(brute_auroc(good, bad), abs=1e-15)
    # A good and an anomalous image tie at 0.5: the stable sort puts the good one first and
    # its ROC point falls between them, so the tie counts as a full win, not one half.
    good, bad = [0.1, 0.5], [0.5, 0.9]
    assert brute_auroc(good, bad) == 0.875
    assert official_image_auroc(good, bad) == 1.0
    assert image_auroc(good + bad, [0, 0, 1, 1]) == 0.875


def test_loco_input_errors():
    m = [np.zeros((4, 4)), np.ones((4, 4))]
    k = np.zeros((4, 4), bool)
    k[0, 0] = True
    ok = dict(maps=m, image_types=["good", "logical_anomalies"], masks=[[], [k]],
              saturation_areas=[[], [1]])
    loco_metrics(**ok)
    with pytest.raises(MetricInputError, match="no defect pixel"):
        loco_metrics(**{**ok, "masks": [[], [np.zeros((4, 4), bool)]]})
    with pytest.raises(MetricInputError, match="shape"):
        loco_metrics(**{**ok, "masks": [[], [np.ones((3, 4), bool)]]})
    with pytest.raises(MetricInputError, match="saturation area 0"):
        loco_metrics(**{**ok, "saturation_areas": [[], [0]]})
    with pytest.raises(MetricInputError, match="no ground-truth mask"):
        loco_metrics(**{**ok, "masks": [[], []], "saturation_areas": [[], []]})
    with pytest.raises(MetricInputError, match="mode"):
        loco_metrics(**ok, mode="fast")  # type: ignore[arg-type]
    with pytest.raises(MetricInputError, match="one size"):
        loco_metrics(**{**ok, "maps": [np.zeros((4, 5)), np.ones((4, 4))]}, mode="official")


# --------------------------------------------------------------------------- the fixture
def _read_fixture(root: Path):
    import tifffile
    from PIL import Image

    config = {d["pixel_value"]: d for d in
              json.loads((root / "dataset/synthcat/defects_config.json").read_text())}
    maps, types, masks, sats = [], [], [], []
    test_dir = root / "anomaly_maps/synthcat/test"
    for kind in sorted(p.name for p in test_dir.iterdir()):
        for path in sorted((test_dir / kind).iterdir()):
            maps.append(tifffile.imread(path))
            types.append(kind)
            ks, ss = [], []
            gt = root / "dataset/synthcat/ground_truth" / kind / path.stem
            for png in sorted(gt.glob("*.png")) if kind != "good" else []:
                values = np.array(Image.open(png))
                entry = config[int(values.max())]
                ks.append(values != 0)
                ss.append(saturation_area(int((values != 0).sum()), entry["saturation_threshold"],
                                          entry["relative_saturation"]))
            masks.append(ks)
            sats.append(ss)
    reference = json.loads((root / "reference.json").read_text())
    return (maps, types, masks, sats), reference


def test_official_thresholds_equal_the_official_codes(loco_fixture):
    case, _ = _read_fixture(loco_fixture)
    curves = json.loads((loco_fixture / "official_curves.json").read_text())
    thresholds = S.official_thresholds(S._prepare(*case), 0.001, np.random.default_rng(0))
    np.testing.assert_array_equal(thresholds, np.array(curves["thresholds"]))
    for kind in ("logical_anomalies", "structural_anomalies"):
        spro, fpr = S._official_values(S._prepare(*case), thresholds, kind)
        np.testing.assert_array_equal(fpr, curves[kind]["fpr"])
        np.testing.assert_allclose(spro, curves[kind]["mean_spro"], rtol=0, atol=1e-15)


@pytest.mark.parametrize("mode", ["exact", "official"])
def test_fixture_values_in_both_modes(mode, loco_fixture):
    case, reference = _read_fixture(loco_fixture)
    result = loco_metrics(*case, mode=mode)
    if mode == "exact":
        spro_ref = reference["not_official"]["auc_spro_all_distinct_thresholds"]
        roc_ref = reference["not_official"]["auc_roc_mann_whitney_ties_half"]
    else:
        spro_ref = reference["localization"]["auc_spro"]
        roc_ref = reference["classification"]["auc_roc"]
    for kind, per_limit in spro_ref.items():
        for limit, value in per_limit.items():
            assert result["auc_spro"][kind][limit] == pytest.approx(value, abs=1e-6)
    for kind, value in roc_ref.items():
        assert result["auc_roc"][kind] == pytest.approx(value, abs=1e-6)


# --------------------------------------------------------------------------- MVTec AD 2
def test_validation_threshold_is_mean_plus_three_std():
    rng = np.random.default_rng(0)
    maps = [rng.normal(0.2, 0.05, (30, 40)).astype(np.float32) for _ in range(3)]
    pooled = np.concatenate([m.ravel() for m in maps]).astype(np.float64)
    expected = pooled.mean() + 3 * pooled.std()
    assert validation_threshold(maps) == pytest.approx(expected, rel=1e-13)
    assert validation_threshold(maps, n_std=0) == pytest.approx(pooled.mean(), rel=1e-13)


def test_seg_f1_equals_brute_force_over_pooled_pixels():
    rng = np.random.default_rng(1)
    maps = [rng.random((10, 12)) for _ in range(4)]
    masks = [None, rng.random((10, 12)) > 0.8, rng.random((10, 12)) > 0.7, None]
    t = 0.6
    pred = np.concatenate([m.ravel() >= t for m in maps])
    true = np.concatenate([np.zeros(120, bool) if k is None else k.ravel() for k in masks])
    tp = np.sum(pred & true)
    fp = np.sum(pred & ~true)
    fn = np.sum(~pred & true)
    r = seg_f1(maps, masks, t)
    assert (r["tp"], r["fp"], r["fn"]) == (tp, fp, fn)
    assert r["seg_f1"] == pytest.approx(2 * tp / (2 * tp + fp + fn))
    assert r["precision"] == pytest.approx(tp / (tp + fp))
    empty = seg_f1([np.zeros((2, 2))], [None], 1.0)
    assert math.isnan(empty["seg_f1"]) and empty["fp"] == 0
    with pytest.raises(MetricInputError):
        seg_f1(maps, masks, float("nan"))
