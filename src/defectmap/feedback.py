"""Operators' verdicts back into the model: ``defectmap update MODEL --from-verdicts DB``.

:func:`collect_verdicts` reads the audit log's verdicts (the latest verdict per image, by
SHA-256) and the images the service stored for them (``serve --store-images``), checking each
file against the SHA-256 the row recorded. :func:`update_model` then builds a **new** model:

1. The held images are scored by the current model: *false alarms* are images confirmed
   good that it flags; *misses* are confirmed defects that it passes.
2. The false alarms are added to the detector (``Detector.add_good``: patches into
   PatchCore's memory bank until every patch is within the pixel threshold; PaDiM's
   statistics take the whole images).
3. The detector is recalibrated on the model's own validation images (found again from
   ``training.json``, or given), with the same ``alpha``, pixel FPR and minimum region area;
   the added images are not validation images, so the conformal guarantee keeps its meaning.
   Steps 2-3 repeat (at most ``max_rounds`` times) while an added image is still flagged
   under the new thresholds. A **cross-fitted** PatchCore model (no validation images of
   its own: every good image fitted it) keeps its thresholds instead, unless validation
   images are given: adding rows to the memory bank can only lower every distance to it, so
   every map and score of the new model is at most the old one's, and the false-alarm
   bound of the old thresholds (over out-of-fold scores) still holds for the new model
   (conservatively: its true false-alarm rate can only be lower). The patches are then
   added until each is within the smaller of the two thresholds, so that an added image is
   not flagged again. PaDiM's ``add_good`` changes its Gaussians, which can raise scores:
   it needs validation images.
4. The held images are scored again; the report gives false alarms and misses before and
   after. The false alarms after are measured on the very images that were added
   (in-sample: they show the fix took, not how the model generalises); the misses are the
   labelled defect set, never trained on, so a rise there is a real cost of the update.

The new model directory holds ``feedback.json`` (the held sets and the report) and a
``training.json`` naming its parent. It goes into a registry as a new version (not promoted:
``defectmap models promote`` does that) or into a folder.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from defectmap.calibrate import fit_calibration
from defectmap.errors import DefectmapError
from defectmap.files import check_replaceable, make_temp_dir, replace_dir, write_json
from defectmap.pipeline import TRAINING_FILE, InspectionModel, load_model
from defectmap.progress import ProgressCallback
from defectmap.registry import Registry, is_registry
from defectmap.serve.audit import AuditStore

__all__ = ["FEEDBACK_FILE", "HeldImage", "UpdateReport", "collect_verdicts", "update_model"]

FEEDBACK_FILE = "feedback.json"


class FeedbackError(DefectmapError, ValueError):
    """Verdicts cannot be used (no images stored, nothing to learn, no validation images)."""


@dataclass(frozen=True)
class HeldImage:
    """One image an operator judged, with the file the service stored for it."""

    image_sha256: str
    path: Path
    verdict: str  # "ok" or "defect"
    operator: str
    inspection_id: str
    decision: str | None  # the decision logged with the verdict's inspection
    model_version: str | None


@dataclass
class Feedback:
    """The held images: confirmed good and confirmed defects, plus what was skipped."""

    good: list[HeldImage] = field(default_factory=list)
    defects: list[HeldImage] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


@dataclass
class UpdateReport:
    """What an update did; ``before``/``after`` count false alarms and misses on held images."""

    parent_hash: str
    model_dir: str
    version: str | None
    added_images: int
    added_patches: int
    rounds: int
    n_good: int
    n_defects: int
    before: dict[str, int]
    after: dict[str, int]
    thresholds_before: dict[str, float | None]
    thresholds_after: dict[str, float | None]
    skipped: list[str]
    images: list[dict[str, Any]]
    #: "recalibrated" on validation images, or "kept" (cross-fitted PatchCore, see above).
    thresholds: str = "recalibrated"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def collect_verdicts(store: AuditStore, files_root: str | Path) -> Feedback:
    """The latest verdict per image (by SHA-256) with its stored file, checked.

    Parameters
    ----------
    store : the audit log.
    files_root : the folder stored paths are relative to (a SQLite log's folder).
    """
    root = Path(files_root)
    latest: dict[str, tuple[int, HeldImage | None, str]] = {}
    for record in store.judged():
        verdict = record.verdict
        assert verdict is not None and verdict.seq is not None
        held: HeldImage | None = None
        problem = ""
        if record.image_path is None:
            problem = (f"inspection {record.id} ({record.filename}): no stored image "
                       "(serve with --store-images)")
        else:
            path = root / record.image_path
            if not path.is_file():
                problem = f"inspection {record.id}: stored image {path} is missing"
            elif hashlib.sha256(path.read_bytes()).hexdigest() != record.image_sha256:
                problem = f"inspection {record.id}: {path} does not match its SHA-256"
            else:
                held = HeldImage(record.image_sha256, path, verdict.verdict, verdict.operator,
                                 record.id, record.decision, record.model_version)
        earlier = latest.get(record.image_sha256)
        if earlier is None or verdict.seq > earlier[0]:
            latest[record.image_sha256] = (verdict.seq, held, problem)
    out = Feedback()
    for _, held, problem in sorted(latest.values(), key=lambda item: item[0]):
        if held is None:
            out.skipped.append(problem)
        elif held.verdict == "ok":
            out.good.append(held)
        else:
            out.defects.append(held)
    return out


def validation_images(model: InspectionModel) -> list[Path]:
    """The model's own validation images, found again from ``training.json``.

    Works for a split of ``train/good`` and for a layout's own validation split.

    Raises
    ------
    FeedbackError
        The training data is not where it was, or the model was calibrated on a separate
        folder (then pass the validation images explicitly).
    """
    from defectmap.data.layouts import load_category

    info = model.info
    source = info.get("validation_source")
    if source not in ("split of train/good", "validation split of the dataset") or \
            not info.get("dataset_root"):
        raise FeedbackError(f"{model.directory}: the model was calibrated on separate images; "
                            "give them with --validation DIR")
    root = Path(str(info["dataset_root"]))
    try:
        data = load_category(root)
    except DefectmapError as exc:
        raise FeedbackError(f"{model.directory}: its validation images cannot be read from "
                            f"{root} ({exc}); give them with --validation DIR") from exc
    stems = set(info.get("val_stems") or [])
    pool = data.train if source == "split of train/good" else data.validation
    paths = [s.path for s in pool if s.stem in stems]
    if len(paths) != len(stems):
        raise FeedbackError(f"{root}: {len(stems) - len(paths)} of the model's validation "
                            "images are missing; give them with --validation DIR")
    return paths


def _scores_only_fall(detector: Any) -> bool:
    """True when ``add_good`` can only lower the detector's scores (PatchCore, tiled or not)."""
    from defectmap.detectors import PatchCore
    from defectmap.tiling import TiledDetector

    inner = detector.detector if isinstance(detector, TiledDetector) else detector
    return isinstance(inner, PatchCore)


def _count(model: InspectionModel, feedback: Feedback) -> tuple[dict[str, int], list[Any]]:
    images = [h.path for h in feedback.good + feedback.defects]
    results = model.inspect(images) if images else []
    good = results[: len(feedback.good)]
    defects = results[len(feedback.good):]
    counts = {"false_alarms": sum(r.decision == "defect" for r in good),
              "misses": sum(r.decision == "ok" for r in defects)}
    return counts, results


def _thresholds(model: InspectionModel) -> dict[str, float | None]:
    cal = model.calibration
    assert cal is not None
    return {"image_threshold": cal.image_threshold, "pixel_threshold": cal.pixel_threshold}


def update_model(
    source: str | Path,
    feedback: Feedback,
    out_dir: str | Path | None = None,
    validation: Sequence[str | os.PathLike[str]] | None = None,
    max_rounds: int = 3,
    progress: ProgressCallback | None = None,
) -> UpdateReport:
    """Build a new model from ``source`` and the held images (see the module docs).

    Parameters
    ----------
    source : a model directory, or a registry (its current version is updated and the new
        model is added to it as a version, not promoted).
    feedback : from :func:`collect_verdicts`.
    out_dir : where to write the new model (required for a model directory; ignored for a
        registry).
    validation : good images to recalibrate on; default the model's own validation images.
    max_rounds : most add-and-recalibrate rounds.
    progress : reports feature extraction and scoring (see :mod:`defectmap.progress`).

    Raises
    ------
    FeedbackError
        No confirmed-good or confirmed-defect image, no calibration, or no validation images.
    """
    from defectmap.tiling import load_scorer

    registry = Registry(source) if is_registry(source) else None
    parent_version = None
    if registry is not None:
        parent_version = registry.resolve("current")
        model_dir = registry.versions_dir / parent_version
    else:
        model_dir = Path(source)
        if out_dir is None:
            raise FeedbackError(f"{source}: a model directory is updated into a new folder; "
                                "give --out (or update a registry)")
    if not feedback.good and not feedback.defects:
        reasons = "; ".join(feedback.skipped[:3]) or "no verdicts in the audit log"
        raise FeedbackError(f"nothing to learn from: {reasons}")
    old = load_model(model_dir)
    cal = old.calibration
    if cal is None:
        raise FeedbackError(f"{model_dir}: the model has no calibration to update")
    before, old_results = _count(old, feedback)
    false_alarms = [h for h, r in zip(feedback.good, old_results, strict=False)
                    if r.decision == "defect"]

    detector = load_scorer(model_dir)  # a tiled model stays tiled (tiles are added)
    keep = validation is None and old.info.get("calibration_method") == "cross_fit"
    if keep and not _scores_only_fall(detector):
        raise FeedbackError(f"{model_dir}: the model was cross-fitted and its detector's "
                            "scores can rise after add_good; give good images to "
                            "recalibrate on with --validation DIR")
    val_paths: list[Path] = []
    if not keep:
        val_paths = [Path(p) for p in validation] if validation is not None else \
            validation_images(old)
    calibration = cal
    added_patches = rounds = 0
    pending = [h.path for h in false_alarms]
    while pending and rounds < max_rounds:
        rounds += 1
        thresholds = [t for t in (calibration.pixel_threshold, calibration.image_threshold)
                      if t is not None]
        radius = min(thresholds) if keep else thresholds[0]
        added_patches += detector.add_good(pending, radius=radius, progress=progress)
        if not keep:
            val = detector.predict(val_paths, progress=progress)
            calibration = fit_calibration(val.scores, val.maps, alpha=cal.alpha,
                                          pixel_fpr=cal.pixel_fpr,
                                          min_region_area=cal.min_region_area)
        again = InspectionModel(detector, calibration, {}).inspect(pending)
        pending = [p for p, r in zip(pending, again, strict=True) if r.decision == "defect"]

    info = dict(old.info)
    info["updated_from"] = {"model_hash": old.model_hash, "version": parent_version,
                            "at": datetime.now(UTC).isoformat(timespec="seconds"),
                            "added_images": len(false_alarms), "added_patches": added_patches}
    held_rows = [{"image_sha256": h.image_sha256, "verdict": h.verdict, "operator": h.operator,
                  "inspection_id": h.inspection_id, "file": h.path.name,
                  "added": h in false_alarms} for h in feedback.good + feedback.defects]

    def write(folder: Path, report: dict[str, Any]) -> None:
        detector.save(folder)
        calibration.save(folder)
        write_json(folder / TRAINING_FILE, info)
        write_json(folder / FEEDBACK_FILE, {"format": "defectmap-feedback", "held": held_rows,
                                            "report": report})

    # Score the held images with the new model before it is written, so that the report can
    # go into the model's own folder.
    after, _ = _count(InspectionModel(detector, calibration, {}), feedback)
    report = UpdateReport(
        parent_hash=str(old.model_hash), model_dir="", version=None,
        added_images=len(false_alarms), added_patches=added_patches, rounds=rounds,
        n_good=len(feedback.good), n_defects=len(feedback.defects), before=before, after=after,
        thresholds_before=_thresholds(old), thresholds_after={
            "image_threshold": calibration.image_threshold,
            "pixel_threshold": calibration.pixel_threshold},
        skipped=list(feedback.skipped), images=held_rows,
        thresholds="kept" if keep else "recalibrated")
    payload = {k: v for k, v in report.to_dict().items() if k not in ("model_dir", "version")}
    # Built beside its destination (same file system), then added or swapped in whole.
    target = Path(str(out_dir)).absolute()
    if registry is None:
        check_replaceable(target, "model.json")
        target.parent.mkdir(parents=True, exist_ok=True)
    tmp = make_temp_dir(registry.root if registry is not None else target.parent,
                        prefix=".update-")
    try:
        built = _build(write, payload, model_dir, tmp, progress)
        if registry is not None:
            version = registry.add(built, source="update", parent=parent_version,
                                   note=f"{len(false_alarms)} false alarms added")
            report.model_dir, report.version = str(version.path), version.id
        else:
            replace_dir(built, target)
            report.model_dir = str(out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return report


def _build(
    write: Any, payload: dict[str, Any], parent_dir: Path, tmp: Path,
    progress: ProgressCallback | None,
) -> Path:
    """Write the new model under ``tmp``; exported the way its parent was, if it was.

    An exported parent (``export.json``) gives an exported child with the same format, graph
    input and precisions, so that a service on ONNX Runtime or OpenVINO can switch to it.
    """
    from defectmap.runtime import is_export_dir, read_manifest

    plain = tmp / "model"
    plain.mkdir()
    write(plain, payload)
    if not is_export_dir(parent_dir):
        return plain
    from defectmap.export import export_model

    manifest = read_manifest(parent_dir)
    exported = tmp / "exported"
    export_model(plain, exported, format=str(manifest["format_requested"]),
                 input=str(manifest["graph"]["input"]),
                 fp16="fp16" in (manifest["runtimes"].get("openvino") or {}),
                 progress=progress)
    return exported
