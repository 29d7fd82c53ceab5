"""One trained model on one category's test split: metrics, maps and report in one folder.

:func:`evaluate_model` scores a category's test split, computes the metrics, and writes one
output folder atomically (built in a temporary sibling, then renamed into place, so an
interrupted run leaves either the previous folder or none)::

    metrics.json                                 all numbers, see evaluate_model
    maps/<category>/test/<defect>/<stem>.tiff    float32 anomaly maps at native size
                                                 (the official MVTec evaluation layout;
                                                 MVTec AD 2: test_public/ and validation/)
    submission/anomaly_images*/...               MVTec AD 2 only: the private test sets in
                                                 the upload layout of MVTec's server
    report.html, figures/*.png                   the visual report (defectmap.report)

The protocol follows the dataset's layout (:data:`~defectmap.evaluate.maps.PROTOCOLS`) and
is named in ``metrics.json``: the MVTec AD metrics always (for MVTec LOCO AD on the union of
each image's masks), plus ``loco`` (AU-sPRO and image AUROC per anomaly type) for MVTec LOCO
AD, and SegF1 at the validation threshold plus the private predictions for MVTec AD 2.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from defectmap.constants import DEFAULT_FPR_LIMIT, MVTEC_AD2_FPR_LIMIT
from defectmap.data.records import CategoryData
from defectmap.errors import DatasetError
from defectmap.evaluate.maps import PROTOCOLS, write_map
from defectmap.files import atomic_output_dir, to_jsonable, write_json
from defectmap.progress import ProgressCallback, track

if TYPE_CHECKING:
    from defectmap.pipeline import InspectionModel

__all__ = ["evaluate_model"]

#: A folder we may replace must be empty or carry this file (a previous evaluation).
_MARKER = "metrics.json"
#: Everything :func:`evaluate_model` writes; an earlier output holding anything else is not
#: replaced (see :func:`defectmap.files.check_replaceable`).
OUTPUT_ENTRIES = (_MARKER, "maps", "report.html", "figures", "submission")


# --------------------------------------------------------------------------- evaluation
def _ground_truth(
    data: CategoryData, maps: Sequence[np.ndarray], progress: ProgressCallback | None
) -> list[np.ndarray] | None:
    """Masks (H,W) bool per test image, all-False for good images; None without masks."""
    from defectmap.data.mvtec import read_sample_mask

    if not data.has_masks or any(s.label == 1 and not s.masks for s in data.test):
        return None
    pairs = list(zip(data.test, maps, strict=True))
    return [read_sample_mask(sample, amap.shape)
            for sample, amap in track(pairs, "reading masks", progress)]


def _relative(path: Path, root: Path) -> str:
    try:
        return Path(path).relative_to(root).as_posix()
    except ValueError:
        return str(path)


def _model_summary(model: InspectionModel) -> dict[str, Any]:
    """A few facts about the model for the report's header line."""
    params = model.detector.get_params()
    info = model.info or {}
    facts = {
        "backbone": params.get("backbone"),
        "input size": params.get("input_size"),
        "fit images": info.get("n_fit"),
        "calibration": _calibration_words(model),
        "model": (model.model_hash or "")[:12] or None,
    }
    return {k: v for k, v in facts.items() if v is not None}


def _calibration_words(model: InspectionModel) -> str | None:
    cal = model.calibration
    if cal is None:
        return None
    if cal.method == "cross_fit":
        return f"cross-fitted, {cal.n_folds} folds, {cal.n_val} out-of-fold scores"
    return f"split, {cal.n_val} validation images"


def _protocol_results(
    model: InspectionModel, data: CategoryData, maps: list[np.ndarray],
    masks: list[np.ndarray] | None, tmp: Path, protocol: str, loco_mode: str,
    write_maps: bool, batch_size: int, progress: ProgressCallback | None,
) -> dict[str, Any]:
    """The protocol's own numbers (LOCO, MVTec AD 2) and files (AD 2 submission)."""
    if protocol == "mvtec_loco":
        from defectmap.evaluate.loco import loco_map_metrics

        return {"loco": loco_map_metrics(data, maps, mode=loco_mode)}  # type: ignore[arg-type]
    if protocol != "mvtec_ad2":
        return {}
    from defectmap.evaluate.mvtec_ad2 import THRESHOLD_RULE, write_private_maps
    from defectmap.metrics import seg_f1, validation_threshold

    out: dict[str, Any] = {"seg_f1": None, "segmentation": None, "submission": None}
    threshold = None
    if data.validation:
        prediction = model.detector.predict([s.path for s in data.validation],
                                            batch_size=batch_size, progress=progress)
        validation = [np.asarray(m, dtype=np.float32) for m in prediction.maps]
        threshold = validation_threshold(validation)
        if masks is not None:
            seg = seg_f1(maps, masks, threshold)
            out["seg_f1"] = seg["seg_f1"]
            out["segmentation"] = {**seg, "threshold_rule": THRESHOLD_RULE,
                                   "n_validation": len(validation)}
        if write_maps:
            for sample, amap in zip(data.validation, validation, strict=True):
                write_map(tmp / "maps" / data.name / "validation" / "good"
                          / f"{sample.stem}.tiff", amap)
    if data.unlabeled:
        out["submission"] = write_private_maps(model, data, tmp / "submission", threshold,
                                               batch_size, progress)
    return out


def evaluate_model(
    model: InspectionModel,
    category_data: CategoryData,
    out_dir: str | Path,
    fpr_limit: float | None = None,
    write_maps: bool = True,
    batch_size: int = 1,
    report: bool = True,
    max_gallery: int = 12,
    fit_s: float | None = None,
    progress: ProgressCallback | None = None,
    loco_mode: str = "exact",
) -> dict[str, Any]:
    """Score the test split of ``category_data`` and write metrics, maps and report.

    Parameters
    ----------
    model : InspectionModel
        A trained model (``defectmap.pipeline.load_model`` or ``train_model``).
    category_data : CategoryData
        The category; only its ``test`` split is used.
    out_dir : str or Path
        Output folder, replaced atomically (see :func:`defectmap.files.atomic_output_dir`);
        an existing one only when it holds an earlier evaluation and nothing else
        (:data:`OUTPUT_ENTRIES`).
    fpr_limit : float or None
        Integration limit of AU-PRO; default 0.3, or 0.05 for MVTec AD 2.
    write_maps : bool
        Write the float32 TIFF maps (N images of H x W x 4 bytes: 270 MB for bottle).
    batch_size : int
        Images per forward pass.
    report : bool
        Write ``report.html`` and the figures.
    max_gallery : int
        Gallery rows of the report.
    fit_s : float or None
        Training time in seconds, recorded in ``timing`` (default: ``fit_seconds`` of the
        model's training summary, when it has one).
    progress : ProgressCallback or None
        Reports ``(task, done, total)`` of the scoring, reading and writing steps.
    loco_mode : ``"exact"`` or ``"official"``: how MVTec LOCO AD's AU-sPRO is computed.

    Returns
    -------
    dict
        The content of ``metrics.json``: ``category``, ``detector``, ``protocol``
        (from the dataset's layout), ``image_auroc``,
        ``pixel_auroc``, ``aupro``, ``fpr_limit``, ``f1_max``, ``f1_threshold``,
        ``pixel_f1_max``, ``n_images``, ``n_defective``, ``per_defect`` (same keys per
        defect type, on good + that defect's images), ``timing`` (``fit_s`` when the model
        knows it, ``predict_s``, ``ms_per_image``), ``calibrated`` and ``oracle``
        operating points and ``operating_points`` (one per alpha, see
        :func:`~defectmap.evaluate.operating.alpha_operating_points`; None without
        calibration), ``model_hash``, ``dataset_root`` and
        ``images`` (per test image: ``image`` path relative to the category folder,
        ``defect_type``, ``label``, raw ``score``).
        Pixel metrics are None when the dataset has no masks. MVTec LOCO AD adds ``loco``
        (:func:`~defectmap.evaluate.loco.loco_map_metrics`); MVTec AD 2 adds ``seg_f1``,
        ``segmentation`` (threshold, its rule, precision, recall) and ``submission``
        (images written per private split).
    """
    from defectmap.evaluate.operating import alpha_operating_points, operating_point_metrics
    from defectmap.metrics import category_metrics_and_pro_curve, roc_curve
    from defectmap.report import ReportData, write_report

    test = list(category_data.test)
    if not test:
        raise DatasetError(f"{category_data.root}: category {category_data.name!r} has no "
                           "test images to evaluate")
    labels = np.array([s.label for s in test], dtype=np.int64)
    defect_types = [s.defect_type for s in test]
    paths = [s.path for s in test]
    protocol = PROTOCOLS.get(category_data.layout, "mvtec_ad")
    if fpr_limit is None:
        fpr_limit = MVTEC_AD2_FPR_LIMIT if protocol == "mvtec_ad2" else DEFAULT_FPR_LIMIT

    with atomic_output_dir(out_dir, marker=_MARKER, owned=OUTPUT_ENTRIES) as tmp:
        start = time.perf_counter()
        prediction = model.detector.predict(paths, batch_size=batch_size, progress=progress)
        predict_s = time.perf_counter() - start
        scores = np.asarray(prediction.scores, dtype=np.float64)
        maps = [np.asarray(m, dtype=np.float32) for m in prediction.maps]

        masks = _ground_truth(category_data, maps, progress)
        # The PRO curve of the report comes from the same (single) sort of the pixels.
        metrics, pro = category_metrics_and_pro_curve(
            scores, labels, defect_types, maps if masks is not None else None, masks,
            fpr_limit=fpr_limit)

        calibration = model.calibration
        calibrated: dict[str, Any] | None = None
        oracle: dict[str, Any] | None = None
        by_alpha: list[dict[str, Any]] | None = None
        pred_masks: list[np.ndarray] | None = None
        if calibration is not None:
            points = operating_point_metrics(scores, labels, maps, masks, calibration)
            calibrated = {k: v for k, v in points.items() if k != "oracle"}
            oracle = points["oracle"]
            by_alpha = alpha_operating_points(scores, labels, calibration)
            if calibration.pixel_threshold is not None:
                pred_masks = [np.asarray(calibration.predicted_mask(m), dtype=bool)
                              for m in maps]

        extra = _protocol_results(model, category_data, maps, masks, tmp, protocol, loco_mode,
                                  write_maps, batch_size, progress)
        if fit_s is None and isinstance((model.info or {}).get("fit_seconds"), int | float):
            fit_s = float(model.info["fit_seconds"])
        result: dict[str, Any] = {
            "category": category_data.name,
            "detector": model.detector.name,
            "protocol": protocol,
            **metrics,
            "fpr_limit": float(fpr_limit),
            **extra,
            "timing": {
                "fit_s": fit_s,
                "predict_s": predict_s,
                "ms_per_image": 1000.0 * predict_s / len(test),
            },
            "calibrated": calibrated,
            "oracle": oracle,
            "operating_points": by_alpha,
            "model_hash": model.model_hash,
            "dataset_root": str(Path(category_data.root).absolute()),
            "images": [
                {"image": _relative(s.path, category_data.root), "defect_type": s.defect_type,
                 "label": s.label, "score": float(score)}
                for s, score in zip(test, scores, strict=True)
            ],
        }
        result = to_jsonable(result)
        write_json(tmp / "metrics.json", result)

        if write_maps:
            for sample, amap in track(list(zip(test, maps, strict=True)), "writing maps",
                                      progress):
                split = "test_public" if protocol == "mvtec_ad2" else "test"
                write_map(tmp / "maps" / category_data.name / split / sample.defect_type
                          / f"{sample.stem}.tiff", amap)

        if report:
            both = 0 < labels.sum() < len(labels)
            roc = roc_curve(scores, labels)[:2] if both else None
            write_report(
                ReportData(
                    metrics=result, scores=scores, labels=labels, defect_types=defect_types,
                    image_paths=paths, maps=maps, masks=masks, pred_masks=pred_masks,
                    roc=roc, pro=pro,
                    image_threshold=None if calibration is None
                    else float(calibration.image_threshold),
                    title=f"defectmap: {result['detector']} on {category_data.name}",
                    extra_info=_model_summary(model),
                ),
                tmp, max_gallery=max_gallery,
            )
    return result
