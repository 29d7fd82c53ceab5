"""Unit tests of the calibration core: closed-form cases, regions, normalisation, persistence."""

from __future__ import annotations

import json
import re
import warnings

import numpy as np
import pytest
from scipy import ndimage

from defectmap import metrics
from defectmap.calibrate import (
    CALIBRATION_FILE,
    Calibration,
    CalibrationError,
    CalibrationWarning,
    Region,
    conformal_rank,
    fit_calibration,
    min_validation_size,
    split_validation,
)
from defectmap.errors import DefectmapError, ModelFileError
from defectmap.evaluate.operating import operating_point_metrics

# ----------------------------------------------------------------------------- splitting


def test_split_validation_sizes_disjoint_and_reproducible() -> None:
    items = [f"img_{i:03d}" for i in range(209)]
    fit, val = split_validation(items, val_ratio=0.1, min_val=10, random_state=3)
    assert len(val) == 21 and len(fit) == 188  # ceil(0.1 * 209) = 21
    assert set(fit).isdisjoint(val) and sorted(fit + val) == items
    assert fit == sorted(fit) and val == sorted(val)  # input order kept
    assert split_validation(items, 0.1, 10, random_state=3) == (fit, val)
    assert split_validation(items, 0.1, 10, random_state=4)[1] != val


def test_split_validation_min_val_and_too_few() -> None:
    items = list(range(30))
    assert len(split_validation(items, val_ratio=0.1, min_val=10)[1]) == 10  # 3 < min_val
    with pytest.raises(CalibrationError, match="only 10 good training images"):
        split_validation(list(range(10)), val_ratio=0.1, min_val=10)
    with pytest.raises(DefectmapError, match="val_ratio"):
        split_validation(items, val_ratio=1.0)
    fit, val = split_validation(list(range(11)), val_ratio=0.0, min_val=10)
    assert len(fit) == 1 and len(val) == 10


# ----------------------------------------------------------------------------- conformal rule


def test_conformal_rank_closed_forms() -> None:
    assert conformal_rank(99, 0.01) == 99  # (100 * 0.99) is exactly 99, not 100
    assert conformal_rank(199, 0.05) == 190
    assert conformal_rank(9, 0.3) == 7
    assert conformal_rank(999, 0.059) == 941  # float arithmetic gives 941.0000000000001 -> 942
    assert conformal_rank(20, 0.01) == 21  # > n: guarantee impossible
    assert [min_validation_size(a) for a in (0.01, 0.05, 0.1, 0.3)] == [99, 19, 9, 3]
    for alpha in (0.01, 0.05, 0.1, 0.3):
        m = min_validation_size(alpha)
        assert conformal_rank(m, alpha) <= m and conformal_rank(m - 1, alpha) > m - 1


def test_threshold_is_kth_smallest_and_p_values() -> None:
    rng = np.random.default_rng(0)
    scores = rng.permutation(np.arange(1.0, 100.0))  # 1 .. 99
    cal = fit_calibration(scores, alpha=0.01)
    assert cal.image_threshold == 99.0 and cal.rank == 99 and cal.guarantee_holds
    assert cal.false_alarm_bound == pytest.approx(0.01) and cal.warning is None
    assert cal.decide([98.0, 99.0, 99.5]).tolist() == [False, False, True]
    assert cal.p_values([99.5, 99.0, 50.0, 0.0]) == pytest.approx([0.01, 0.02, 0.51, 1.0])
    cal5 = fit_calibration(scores, alpha=0.05)  # k = ceil(100 * 0.95) = 95
    assert cal5.image_threshold == 95.0


def test_decision_equals_p_value_rule() -> None:
    rng = np.random.default_rng(1)
    for n, alpha in [(9, 0.1), (19, 0.05), (37, 0.1), (150, 0.01), (250, 0.02), (40, 0.3)]:
        val = rng.normal(size=n)
        cal = fit_calibration(val, alpha=alpha)
        assert cal.guarantee_holds
        probe = np.concatenate([val, val + 1e-9, val - 1e-9, rng.normal(size=500) * 2])
        assert np.array_equal(cal.decide(probe), cal.p_values(probe) <= alpha)


def test_too_few_validation_images_warns_and_flags() -> None:
    scores = np.arange(20.0)
    with pytest.warns(CalibrationWarning, match="at least 99"):
        cal = fit_calibration(scores, alpha=0.01)
    assert not cal.guarantee_holds and cal.image_threshold == 19.0
    assert cal.false_alarm_bound == pytest.approx(1 / 21)
    assert cal.warning is not None and "at least 99" in cal.warning
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fit_calibration(np.arange(19.0), alpha=0.05)  # exactly the minimum: no warning


@pytest.mark.parametrize(
    "kwargs",
    [{"alpha": 0.0}, {"alpha": 1.0}, {"pixel_fpr": 0.0}, {"min_region_area": 0}],
)
def test_invalid_parameters(kwargs: dict) -> None:
    with pytest.raises(CalibrationError):
        fit_calibration(np.arange(10.0), **kwargs)


def test_invalid_scores_and_maps() -> None:
    with pytest.raises(CalibrationError, match="NaN"):
        fit_calibration([1.0, np.nan, 2.0])
    with pytest.raises(CalibrationError, match="one-dimensional"):
        fit_calibration(np.zeros((3, 2)))
    with pytest.raises(CalibrationError, match="2 validation maps for 3"):
        fit_calibration([1.0, 2.0, 3.0], [np.zeros((4, 4))] * 2)
    with pytest.raises(CalibrationError, match="2-D"):
        fit_calibration([1.0], [np.zeros(4)])
    cal = fit_calibration(np.arange(10.0), alpha=0.1)
    with pytest.raises(CalibrationError, match="no pixel threshold"):
        cal.predicted_mask(np.zeros((4, 4)))


# ----------------------------------------------------------------------------- pixel level


def test_pixel_threshold_closed_form() -> None:
    rng = np.random.default_rng(2)
    values = rng.permutation(1000).astype(np.float32).reshape(10, 10, 10)
    cal = fit_calibration(np.arange(10.0), list(values), alpha=0.1, pixel_fpr=0.01)
    assert cal.pixel_threshold == 989.0  # ceil(1000 * 0.99) = 990th smallest of 0..999
    assert cal.n_val_pixels == 1000 and cal.pixel_max == 999.0
    flagged = sum(int(cal.predicted_mask(m).sum()) for m in values)
    assert flagged == 10  # exactly pixel_fpr of the validation pixels
    # maps of different sizes are pooled pixel by pixel
    cal2 = fit_calibration([0.0, 1.0], [np.zeros((2, 3)), np.arange(4.0).reshape(2, 2)],
                           alpha=0.5, pixel_fpr=0.2)
    assert cal2.pixel_threshold == 1.0  # ceil(10 * 0.8) = 8th smallest of 0 (x7), 1, 2, 3


def test_pixel_threshold_is_exact_for_float64_and_wide_integer_maps() -> None:
    # Distinct in float64 / int64 but not in float32: the threshold must still be the
    # ceil(1000 * 0.9) = 900th smallest value, with exactly 100 pixels above it.
    for maps in ((1.0 + np.arange(1000) * 1e-9).reshape(1, 10, 100),
                 (np.arange(1000, dtype=np.int64) + 2**25).reshape(1, 10, 100)):
        cal = fit_calibration([1.0], maps, alpha=0.5, pixel_fpr=0.1)
        assert cal.pixel_threshold == float(np.sort(maps.ravel())[899])
        assert int(cal.predicted_mask(maps[0]).sum()) == 100


def _calibration_with_pixel_threshold(threshold: float, min_region_area: int = 1) -> Calibration:
    # validation pixels 0, 0, 0, t, t, t: the ceil(6 * 0.6) = 4th smallest is t
    maps = [np.array([[0.0, threshold]])] * 3
    cal = fit_calibration([0.0, 1.0, 2.0], maps, alpha=0.5, pixel_fpr=0.4,
                          min_region_area=min_region_area)
    assert cal.pixel_threshold == threshold
    return cal


def test_regions_eight_connected_bbox_peak_centroid() -> None:
    cal = _calibration_with_pixel_threshold(0.5)
    m = np.zeros((6, 8), dtype=np.float32)
    m[0, 0], m[1, 1] = 0.9, 0.7  # diagonal neighbours: one region with 8-connectivity
    m[3:5, 4:7] = 0.6  # a 2 x 3 block
    m[4, 6] = 2.0
    m[5, 0] = 0.5  # at the threshold: not flagged (strictly above is defect)
    regions = cal.regions(m)
    assert regions == [
        Region(area=6, bbox=(4, 3, 7, 5), peak=2.0, centroid=(5.0, 3.5)),
        Region(area=2, bbox=(0, 0, 2, 2), peak=pytest.approx(0.9), centroid=(0.5, 0.5)),
    ]
    r = regions[0]
    assert cal.predicted_mask(m)[r.bbox[1]:r.bbox[3], r.bbox[0]:r.bbox[2]].all()
    assert cal.predicted_mask(m).sum() == 8
    assert r.to_dict() == {"area": 6, "bbox": [4, 3, 7, 5], "peak": 2.0, "centroid": [5.0, 3.5]}
    big_only = _calibration_with_pixel_threshold(0.5, min_region_area=3)
    assert [x.area for x in big_only.regions(m)] == [6]
    assert big_only.predicted_mask(m).sum() == 6
    assert cal.regions(np.zeros((3, 3))) == []


# ----------------------------------------------------------------------------- normalisation


def _smooth_maps(n: int, size: int, seed: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Realistic float32 maps (smoothed noise) with brighter defect blobs, and their masks."""
    rng = np.random.default_rng(seed)
    maps, masks = [], []
    for i in range(n):
        m = ndimage.gaussian_filter(rng.normal(size=(size, size)), 2.0) * 3 + 1.0
        mask = np.zeros((size, size), dtype=bool)
        if i % 2:
            y, x = rng.integers(5, size - 15, size=2)
            mask[y:y + 10, x:x + 8] = True
            m = m + mask * rng.uniform(0.2, 3.0)
        maps.append(m.astype(np.float32))
        masks.append(mask)
    return maps, masks


def test_normalize_monotone_and_half_at_threshold() -> None:
    rng = np.random.default_rng(3)
    cal = fit_calibration(rng.gamma(2.0, size=200) + 1.0, alpha=0.05)
    t = cal.image_threshold
    assert cal.normalize([t])[0] == 0.5
    probe = np.unique(np.concatenate([
        rng.gamma(2.0, size=2000).astype(np.float32), [t - 1e-6, t + 1e-6],
        t + cal.image_scale * np.array([1e2, 1e3, 1e4, 1e5]),  # far above: no saturation
        t - cal.image_scale * np.array([1e2, 1e5, 1e8]),
    ]))
    u = cal.normalize(probe)
    assert u.dtype == np.float64 and np.all((u > 0) & (u < 1))
    assert np.all(np.diff(u) > 0)  # strictly increasing
    assert np.array_equal(u > 0.5, cal.decide(probe))


def test_normalize_constant_validation_scores() -> None:
    cal = fit_calibration(np.full(20, 3.0), alpha=0.1)
    assert cal.image_scale == 3.0  # MAD and std are 0: the fallback is |threshold|
    u = cal.normalize([2.0, 3.0, 3.0001, 4.0])
    assert u[1] == 0.5 and np.all(np.diff(u) > 0)
    assert u[3] == 1.0 - 0.5 / (1.0 + 1.0 / 3.0)  # x = (4 - 3) / 3


def test_normalized_maps_keep_every_pixel_order() -> None:
    maps, _ = _smooth_maps(12, 48, seed=4)
    cal = fit_calibration(np.arange(12.0), maps, alpha=0.1)
    raw = np.concatenate([m.ravel() for m in maps]).astype(np.float64)
    norm = np.concatenate([cal.normalize_map(m).ravel() for m in maps])
    order = np.argsort(raw, kind="stable")
    assert np.all(np.diff(norm[order]) >= 0)
    assert np.array_equal(np.diff(raw[order]) > 0, np.diff(norm[order]) > 0)  # no new ties
    assert cal.normalize_map(np.array([[cal.pixel_threshold]]))[0, 0] == 0.5


def test_ranking_metrics_identical_on_normalized_scores_and_maps() -> None:
    maps, masks = _smooth_maps(16, 48, seed=5)
    labels = np.array([int(m.any()) for m in masks])
    scores = np.array([m.max() for m in maps], dtype=np.float32)
    val_maps, _ = _smooth_maps(12, 48, seed=6)
    val_scores = np.array([m.max() for m in val_maps])
    cal = fit_calibration(val_scores, val_maps[::2] + val_maps[1::2], alpha=0.1)
    norm_scores = cal.normalize(scores)
    norm_maps = [cal.normalize_map(m) for m in maps]
    assert metrics.image_auroc(norm_scores, labels) == metrics.image_auroc(scores, labels)
    assert metrics.aupro(norm_maps, masks) == metrics.aupro(maps, masks)
    assert metrics.pixel_auroc(norm_maps, masks) == metrics.pixel_auroc(maps, masks)


# ----------------------------------------------------------------------------- persistence


def test_save_load_round_trip(tmp_path) -> None:
    maps, _ = _smooth_maps(10, 32, seed=7)
    rng = np.random.default_rng(7)
    with pytest.warns(CalibrationWarning):
        cal = fit_calibration(rng.normal(size=10).astype(np.float32), maps, alpha=0.01,
                              pixel_fpr=0.005, min_region_area=4)
    path = cal.save(tmp_path)
    assert path == tmp_path / CALIBRATION_FILE
    assert [p.name for p in tmp_path.iterdir()] == [CALIBRATION_FILE]  # no temp file left
    loaded = Calibration.load(tmp_path)
    assert loaded == cal and loaded is not cal
    probe = rng.normal(size=50)
    assert np.array_equal(loaded.p_values(probe), cal.p_values(probe))
    assert np.array_equal(loaded.normalize_map(maps[0]), cal.normalize_map(maps[0]))
    data = json.loads(path.read_text())
    assert data["format"] == "defectmap-calibration" and data["val_score_stats"]["min"] == min(
        cal.val_scores)


def test_load_rejects_bad_files(tmp_path) -> None:
    with pytest.raises(ModelFileError, match="calibration.json: calibration file not found"):
        Calibration.load(tmp_path)
    (tmp_path / CALIBRATION_FILE).write_text("{not json")
    with pytest.raises(ModelFileError, match="cannot read"):
        Calibration.load(tmp_path)
    cal = fit_calibration(np.arange(30.0), alpha=0.1)
    cal.save(tmp_path)
    data = json.loads((tmp_path / CALIBRATION_FILE).read_text())
    for key, value in [("image_threshold", 3.0), ("val_scores", list(range(30, 0, -1))),
                       ("alpha", 0.2), ("format_version", 99)]:
        bad = dict(data, **{key: value})
        (tmp_path / CALIBRATION_FILE).write_text(json.dumps(bad))
        with pytest.raises(ModelFileError, match=re.escape(str(tmp_path / CALIBRATION_FILE))):
            Calibration.load(tmp_path)
    del data["rank"]
    (tmp_path / CALIBRATION_FILE).write_text(json.dumps(data))
    with pytest.raises(ModelFileError, match="rank"):
        Calibration.load(tmp_path)


# ----------------------------------------------------------------------------- operating point


def test_operating_point_metrics_closed_form() -> None:
    cal = _calibration_with_pixel_threshold(0.5)  # image threshold = 1.0 (k = ceil(4*0.5) = 2)
    assert cal.image_threshold == 1.0
    scores = np.array([0.2, 0.8, 1.5, 0.9, 1.2, 3.0])
    labels = np.array([0, 0, 0, 1, 1, 1])
    # decisions (> 1.0): F F T | F T T  -> tp 2, fp 1, fn 1, tn 2
    maps = [np.zeros((4, 4)) for _ in range(6)]
    masks: list[np.ndarray | None] = [None, None, None]
    for _ in range(3):
        mask = np.zeros((4, 4), dtype=bool)
        mask[0:2, 0:2] = True  # 4-pixel ground-truth region
        masks.append(mask)
    maps[3][0, 0] = 1.0  # covers 1/4 of its region: below 30 %, not detected
    maps[4][0:2, 0] = 1.0  # covers 2/4: detected
    maps[5][0:2, 0:2] = 1.0
    maps[5][3, 3] = 1.0  # covers all, plus one false pixel
    maps[2][2, 2] = 1.0  # one false pixel on a good image
    out = operating_point_metrics(scores, labels, maps, masks, cal)
    assert (out["tp"], out["fp"], out["fn"], out["tn"]) == (2, 1, 1, 2)
    assert out["false_alarm_rate"] == pytest.approx(1 / 3)
    assert out["miss_rate"] == pytest.approx(1 / 3) and out["recall"] == pytest.approx(2 / 3)
    assert out["precision"] == pytest.approx(2 / 3) and out["f1"] == pytest.approx(2 / 3)
    assert out["region_detection_rate"] == pytest.approx(2 / 3)
    # IoU over all pixels: intersection 1 + 2 + 4 = 7, union 12 gt + 2 false = 14
    assert out["pixel_iou"] == pytest.approx(7 / 14)
    assert out["pixel_false_positive_rate"] == pytest.approx(2 / (6 * 16 - 12))
    oracle = out["oracle"]
    assert oracle["label"] == "oracle (uses test labels)"
    # best F1 on these labels: flag scores >= 0.9 -> tp 3, fp 1 -> F1 = 6/7
    assert oracle["f1"] == pytest.approx(6 / 7) and oracle["threshold"] == pytest.approx(0.9)
    assert out["good_image_pixel_fpr"] == pytest.approx(1 / 48)
    assert out["pixel_f1"] == pytest.approx(2 * 7 / (9 + 12))  # 9 flagged, 12 true, 7 both
    assert (oracle["tp"], oracle["fp"], oracle["tn"], oracle["fn"]) == (3, 1, 2, 0)
    assert oracle["false_alarm_rate"] == pytest.approx(1 / 3) and oracle["miss_rate"] == 0.0
    assert oracle["pixel_false_positive_rate"] == out["pixel_false_positive_rate"]
    # maps hold only 0 and 1: the oracle pixel threshold is 1 and flags the same pixels
    assert oracle["pixel_threshold"] == 1.0 and oracle["pixel_iou"] == pytest.approx(7 / 14)
    assert oracle["pixel_f1"] == pytest.approx(2 * 7 / (9 + 12))
    assert oracle["region_detection_rate"] == pytest.approx(2 / 3)
    image_only = operating_point_metrics(scores, labels, None, None, cal)
    assert image_only["pixel_iou"] is None and image_only["region_detection_rate"] is None
    assert image_only["f1"] == out["f1"]
    with pytest.raises(CalibrationError, match="labels"):
        operating_point_metrics(scores, labels[:-1], None, None, cal)


# ----------------------------------------------------------------------------- format 2


def test_cross_fit_calibration_round_trip_and_integrity(tmp_path) -> None:
    rng = np.random.default_rng(11)
    maps, _ = _smooth_maps(12, 32, seed=3)
    cal = fit_calibration(rng.gamma(2.0, size=12), maps, alpha=0.1, pixel_fpr=0.002,
                          method="cross_fit", n_folds=4, defect_scores=[9.0, 0.1, 5.0])
    assert cal.method == "cross_fit" and cal.n_folds == 4 and cal.defect_scores == (0.1, 5.0, 9.0)
    assert [f for f, _ in cal.pixel_thresholds] == [0.0001, 0.0002, 0.0005, 0.001, 0.002,
                                                    0.005, 0.01]
    assert dict(cal.pixel_thresholds)[0.002] == cal.pixel_threshold
    cal.save(tmp_path)
    assert Calibration.load(tmp_path) == cal
    data = json.loads((tmp_path / CALIBRATION_FILE).read_text())
    assert data["format_version"] == 2 and data["decision_rule"] == "p_value"
    assert data["known_defects"]["n_defects"] == 3 and "cross-conformal" in data["guarantee"]
    for key, value in [("method", "bootstrap"), ("n_folds", None), ("n_folds", 1),
                       ("pixel_thresholds", [[0.001, 1.0], [0.01, 2.0]]),
                       ("defect_scores", [3.0, 1.0]), ("guarantee_holds", False)]:
        (tmp_path / CALIBRATION_FILE).write_text(json.dumps(dict(data, **{key: value})))
        with pytest.raises(ModelFileError, match="invalid calibration"):
            Calibration.load(tmp_path)


def test_moving_the_operating_point_equals_a_fresh_calibration() -> None:
    rng = np.random.default_rng(12)
    scores = rng.normal(size=60)
    maps, _ = _smooth_maps(60, 24, seed=4)
    cal = fit_calibration(scores, maps, alpha=0.1, method="cross_fit", n_folds=5)
    for alpha in (0.02, 0.05, 0.3):
        moved = cal.at(alpha=alpha)
        fresh = fit_calibration(scores, maps, alpha=alpha, method="cross_fit", n_folds=5)
        assert moved == fresh
    with pytest.warns(CalibrationWarning, match="60 out-of-fold scores"):
        low = cal.at(alpha=0.01)
    assert low.decision_rule == "largest_score" and low.image_threshold == max(scores)
    assert cal.at(pixel_fpr=0.01).pixel_threshold == fit_calibration(
        scores, maps, alpha=0.1, pixel_fpr=0.01, method="cross_fit", n_folds=5).pixel_threshold
    assert cal.at(min_region_area=5).min_region_area == 5
    with pytest.raises(CalibrationError, match="not stored"):
        cal.at(pixel_fpr=0.3)
    with pytest.raises(CalibrationError, match="alpha"):
        cal.at(alpha=1.5)


def test_decision_rule_names_the_rule_and_the_guarantee() -> None:
    ok = fit_calibration(np.arange(30.0), alpha=0.1)
    assert ok.decision_rule == "p_value" and ok.guarantee.startswith(
        "split conformal on 30 validation images: P(false alarm) <= 0.0968")
    with pytest.warns(CalibrationWarning):
        few = fit_calibration(np.arange(30.0), alpha=0.01)
    assert few.decision_rule == "largest_score" and "decided by the largest score" in few.guarantee
    probe = np.array([28.5, 29.0, 29.5])
    assert few.decide(probe).tolist() == [False, False, True]
    assert (few.p_values(probe) <= 0.01).tolist() == [False, False, False]  # no p reaches it
