"""The inspection model: a fitted detector plus its calibration, trained, saved and loaded as one.

:func:`train_model` splits ``train/good`` into a fitting set and a validation set (or takes a
separate validation folder), fits the detector on the first, calibrates thresholds and score
normalisation on the second (see :mod:`defectmap.calibrate`) and writes one model directory::

    out_dir/
      model.json            detector name, params, package version, non-array state
      weights.safetensors   the detector's learned arrays
      calibration.json      thresholds, alpha, validation scores and statistics
      training.json         category, dataset root, fit/validation counts and file stems,
                            the training images' colour and size range (``images``, see
                            :mod:`defectmap.data.profile`), random_state, alpha,
                            timestamps, package version

The test split is never read. Every training image is checked before the (long) feature
extraction, and one error lists every unreadable file. The directory is built beside
``out_dir`` under a temporary name and swapped in when complete
(:func:`defectmap.files.replace_dir`), so an existing model is only replaced by a whole new
one, and a folder holding files that are not part of a model (:data:`MODEL_FILES`) is
refused rather than deleted. :func:`load_model` restores it, and reads again when the folder
was swapped while it read; :meth:`InspectionModel.inspect` turns images into per-image
:class:`Inspection` results (used by ``predict``, the service and the report).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from defectmap import __version__
from defectmap.calibrate import (
    CALIBRATION_FILE,
    Calibration,
    Region,
    fit_calibration,
    split_validation,
)
from defectmap.constants import DEFAULT_ALPHA, DEFAULT_DETECTOR, DEFAULT_PIXEL_FPR
from defectmap.data.io import ImageInfo, check_images
from defectmap.data.profile import ImageProfile
from defectmap.data.records import CategoryData, Sample
from defectmap.errors import DatasetError, DefectmapError, ModelFileError
from defectmap.files import atomic_output_dir, check_replaceable, sha256_tree, write_json
from defectmap.prediction import Scorer
from defectmap.progress import ProgressCallback

if TYPE_CHECKING:
    from defectmap.data.io import ImageInput

__all__ = ["MODEL_FILES", "TRAINING_FILE", "Inspection", "InspectionModel", "load_model",
           "train_model"]

TRAINING_FILE = "training.json"
MODEL_FILE = "model.json"  # written by the detector (defectmap.detectors.base.MODEL_JSON)
#: Every entry of a model directory. :func:`train_model` replaces an existing directory only
#: when it holds nothing else.
MODEL_FILES = (MODEL_FILE, "weights.safetensors", CALIBRATION_FILE, TRAINING_FILE)
#: Reads of a model folder that was swapped while being read, before giving up.
_LOAD_ATTEMPTS = 5


@dataclass(frozen=True, eq=False)  # eq=False: arrays have no single truth value
class Inspection:
    """The result for one image.

    Attributes
    ----------
    score : raw anomaly score (higher = more anomalous).
    normalized_score : in (0, 1), 0.5 at the image threshold; None without calibration.
    decision : ``"ok"`` or ``"defect"`` (score strictly above the threshold); None without
        calibration.
    p_value : conformal p-value ``(1 + #{validation scores >= score}) / (n_val + 1)``; small
        means unlike the good validation images. None without calibration.
    regions : connected regions of the predicted defect mask, highest peak first (empty
        without a pixel threshold). They are computed whatever the decision.
    anomaly_map : raw anomaly map, float32 (H, W) at the image's native size.
    mask : predicted defect mask, bool (H, W); None without a pixel threshold.
    """

    score: float
    normalized_score: float | None
    decision: str | None
    p_value: float | None
    regions: list[Region] = field(default_factory=list)
    anomaly_map: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.float32))
    mask: np.ndarray | None = None

    @property
    def is_defect(self) -> bool | None:
        """True for a defect decision, None without calibration."""
        return None if self.decision is None else self.decision == "defect"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (without the map and the mask)."""
        return {
            "score": self.score,
            "normalized_score": self.normalized_score,
            "decision": self.decision,
            "p_value": self.p_value,
            "regions": [r.to_dict() for r in self.regions],
            "map_shape": list(self.anomaly_map.shape),
        }


class InspectionModel:
    """A scorer with its calibration and training summary.

    Parameters
    ----------
    detector : the scorer: a fitted :class:`~defectmap.detectors.Detector` (torch), or an
        exported model on ONNX Runtime / OpenVINO
        (:class:`~defectmap.runtime.ExportedModel`); anything with ``name``,
        ``get_params()`` and ``predict(images, batch_size, progress) -> Prediction``.
    calibration : thresholds from good validation images, or None (raw scores only).
    info : the training summary (contents of ``training.json``; may be empty).
    directory : the model directory it was loaded from / saved to, if any.
    model_hash : sha256 of that directory's files; computed from ``directory`` when omitted.
    """

    def __init__(
        self,
        detector: Scorer,
        calibration: Calibration | None,
        info: dict[str, Any],
        *,
        directory: str | os.PathLike[str] | None = None,
        model_hash: str | None = None,
    ) -> None:
        self.detector = detector
        self.calibration = calibration
        self.info = dict(info)
        self.directory = None if directory is None else Path(directory)
        if model_hash is None and self.directory is not None:
            model_hash = sha256_tree(self.directory)
        self._model_hash = model_hash
        images = self.info.get("images")
        self.profile = None if images is None else ImageProfile.from_dict(images)

    def input_mismatches(
        self, infos: Sequence[ImageInfo], names: Sequence[str]
    ) -> list[tuple[str, str]]:
        """``(name, reason)`` for each image that differs from the training images.

        Colour and size are compared with the training images' :attr:`profile` (see
        :mod:`defectmap.data.profile`); a model without one (saved before profiles were
        recorded) finds no mismatch.
        """
        if self.profile is None:
            return []
        found = []
        for info, name in zip(infos, names, strict=True):
            reason = self.profile.mismatch(info)
            if reason is not None:
                found.append((name, reason))
        return found

    @property
    def runtime(self) -> str:
        """``"torch"`` for a detector, else the exported model's runtime."""
        return str(getattr(self.detector, "runtime", "torch"))

    @property
    def model_hash(self) -> str | None:
        """sha256 (hex) over the model directory's files (names, sizes and bytes, sorted by
        name) at load/save time; None for a model that was never saved."""
        return self._model_hash

    def inspect(
        self,
        images: Sequence[ImageInput],
        batch_size: int = 1,
        progress: ProgressCallback | None = None,
    ) -> list[Inspection]:
        """Score, decide and segment images.

        Parameters
        ----------
        images : uint8 arrays (H_i, W_i[, 3]) or image file paths.
        batch_size : images per forward pass of the backbone.
        progress : reports the scoring (see :mod:`defectmap.progress`).

        Returns
        -------
        list[Inspection]
            One per image, in input order; maps at each image's native size.
        """
        if len(images) == 0:
            return []
        prediction = self.detector.predict(images, batch_size=batch_size, progress=progress)
        scores = np.asarray(prediction.scores, dtype=np.float64)
        cal = self.calibration
        if cal is None:
            return [
                Inspection(float(s), None, None, None, [], m, None)
                for s, m in zip(scores, prediction.maps, strict=True)
            ]
        normalized = cal.normalize(scores)
        p_values = cal.p_values(scores)
        decisions = cal.decide(scores)
        out = []
        for i, anomaly_map in enumerate(prediction.maps):
            mask: np.ndarray | None = None
            regions: list[Region] = []
            if cal.pixel_threshold is not None:
                mask, regions = cal.segment(anomaly_map)
            out.append(
                Inspection(
                    score=float(scores[i]),
                    normalized_score=float(normalized[i]),
                    decision="defect" if decisions[i] else "ok",
                    p_value=float(p_values[i]),
                    regions=regions,
                    anomaly_map=anomaly_map,
                    mask=mask,
                )
            )
        return out

    def describe(self) -> dict[str, Any]:
        """JSON-ready description for humans and the service's ``/v1/model``.

        Keys: ``detector``, ``params``, ``runtime``, ``model_hash``, ``package_version``,
        ``calibrated``,
        ``thresholds`` (None without calibration), ``validation_scores`` (statistics) and
        ``training`` (the training summary without the per-file stem lists and without the
        dataset path, which ``training.json`` keeps).
        """
        cal = self.calibration
        thresholds = None
        validation = None
        if cal is not None:
            thresholds = {
                key: getattr(cal, key)
                for key in ("alpha", "image_threshold", "pixel_threshold", "pixel_fpr", "n_val",
                            "guarantee_holds", "false_alarm_bound", "min_region_area", "warning")
            }
            validation = cal.val_score_stats
        # Neither the per-file stem lists nor where the data lay on the training machine.
        training = {k: v for k, v in self.info.items()
                    if not k.endswith("_stems") and k != "dataset_root"}
        return {
            "detector": self.detector.name,
            "params": self.detector.get_params(),
            "runtime": self.runtime,
            "model_hash": self.model_hash,
            "package_version": self.info.get("package_version", __version__),
            "calibrated": cal is not None,
            "thresholds": thresholds,
            "validation_scores": validation,
            "training": training,
        }

    def __repr__(self) -> str:
        hash_part = "" if self.model_hash is None else f", hash={self.model_hash[:12]}"
        return f"InspectionModel({self.detector!r}, calibrated={self.calibration is not None}" \
               f"{hash_part})"


def load_model(
    directory: str | os.PathLike[str],
    runtime: str | None = None,
    n_threads: int | None = None,
) -> InspectionModel:
    """Load a model directory written by :func:`train_model` or by ``defectmap export``.

    ``calibration.json`` and ``training.json`` are optional: without them the model gives raw
    scores only (``calibration`` is None; ``predict_to_dir`` and the service refuse such a
    model unless told to accept raw scores). A directory swapped in by a new fit while it is
    read is read again, so the model returned comes from one version of the folder.

    Parameters
    ----------
    directory : the model folder.
    runtime : ``"torch"``, ``"onnxruntime"`` or ``"openvino"``; None: the fastest installed
        one the folder was exported for (torch for a folder that was not exported).
    n_threads : CPU threads of an ONNX Runtime / OpenVINO runtime (None: its default).

    Raises
    ------
    ModelFileError : a file is missing or invalid (the message names it), or an exported
        folder's files differ from the hashes in its ``export.json``.
    RuntimeUnavailableError : the runtime is not installed, or the folder was not exported
        for it.
    """
    folder = Path(directory)
    for _ in range(_LOAD_ATTEMPTS):
        before = _identity(folder)
        try:
            model = _load_once(folder, runtime, n_threads)
        except (DefectmapError, OSError):
            if _identity(folder) == before:
                raise  # the folder did not change: the error is real
            time.sleep(0.01)
            continue
        if _identity(folder) == before:
            return model
    raise ModelFileError(f"{folder}: the model folder kept being replaced while it was read")


def _identity(folder: Path) -> tuple[int, int] | None:
    """(device, inode) of a folder, None when missing: changes when the folder is swapped."""
    try:
        stat = folder.stat()
    except OSError:
        return None
    return stat.st_dev, stat.st_ino


def _load_once(folder: Path, runtime: str | None, n_threads: int | None) -> InspectionModel:
    from defectmap.runtime import ExportedModel, choose_runtime, is_export_dir, read_manifest

    if not folder.is_dir():
        raise ModelFileError(f"{folder}: model directory not found")
    runtime = choose_runtime(folder, runtime)
    model_hash = sha256_tree(folder)  # hash first: describes the bytes about to be read
    detector: Scorer
    if runtime == "torch":
        from defectmap.detectors import load_detector

        if is_export_dir(folder):
            read_manifest(folder)  # the torch runtime checks an export's hashes too
        detector = load_detector(folder)
    else:
        detector = ExportedModel(folder, runtime=runtime, n_threads=n_threads)
    calibration = Calibration.load(folder) if (folder / CALIBRATION_FILE).exists() else None
    info: dict[str, Any] = {}
    training = folder / TRAINING_FILE
    if training.exists():
        try:
            info = json.loads(training.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ModelFileError(f"{training}: cannot read training summary ({exc})") from None
        if not isinstance(info, dict):
            raise ModelFileError(f"{training}: not a JSON object")
    try:
        return InspectionModel(detector, calibration, info, directory=folder,
                               model_hash=model_hash)
    except ValueError as exc:
        raise ModelFileError(f"{training}: field 'images' is invalid ({exc})") from None


def _stems(items: Sequence[Sample | Path]) -> list[str]:
    return [item.stem for item in items]


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def train_model(
    category_data: CategoryData,
    out_dir: str | os.PathLike[str],
    detector: str = DEFAULT_DETECTOR,
    detector_params: dict[str, Any] | None = None,
    val_ratio: float = 0.1,
    min_val: int = 10,
    alpha: float = DEFAULT_ALPHA,
    random_state: int = 0,
    *,
    pixel_fpr: float = DEFAULT_PIXEL_FPR,
    min_region_area: int = 1,
    validation_images: Sequence[str | os.PathLike[str]] | None = None,
    batch_size: int = 1,
    progress: ProgressCallback | None = None,
) -> InspectionModel:
    """Fit a detector on good training images, calibrate it on held-out good images, save both.

    Parameters
    ----------
    category_data : the category; only ``category_data.train`` (its good images) is used.
    out_dir : model directory to write (replaced atomically if it holds a model already).
    detector : registered detector name.
    detector_params : its constructor arguments. ``random_state`` seeds it too unless these
        set their own.
    val_ratio, min_val : validation share of ``train/good`` (see
        :func:`~defectmap.calibrate.split_validation`).
    alpha : target false-alarm rate of the image threshold.
    random_state : seed of the split (and of the detector, see above).
    pixel_fpr : target pixel false-positive rate on good validation pixels.
    min_region_area : smallest region (pixels) kept in predicted masks.
    validation_images : a separate folder's good images (paths) used for calibration instead
        of a split; then every ``train/good`` image fits the detector. Default: the
        dataset's own validation split when it has one (MVTec LOCO AD, MVTec AD 2), else a
        split of ``train/good``.
    batch_size : images per forward pass when scoring the validation images.
    progress : reports ``(task, done, total)`` of the fit and of the validation scoring
        (see :mod:`defectmap.progress`).

    Returns
    -------
    InspectionModel
        The trained model, with ``directory = out_dir`` and its ``model_hash``.

    Raises
    ------
    DatasetError : no good training images.
    CalibrationError : too few images for the split, or invalid alpha / pixel_fpr.
    ImageReadError : training or validation images that cannot be read (all listed).
    DefectmapError : ``out_dir`` exists and is not a model directory, or holds other files.
    UnknownDetectorError, DefectmapError : unknown detector name or parameter (see
        :func:`~defectmap.detectors.build_detector`).
    """
    from defectmap.detectors import build_detector, create_detector

    started_at, t0 = _now(), time.perf_counter()
    out_dir = Path(out_dir)
    check_replaceable(out_dir, MODEL_FILE, MODEL_FILES)  # fail before the (long) fit
    good = [s for s in category_data.train if s.label == 0]
    if not good:
        raise DatasetError(f"{category_data.root}: no good training images to fit on")
    validation: list[Sample] | list[Path]
    if validation_images is None and category_data.validation:
        fit_samples, validation = good, list(category_data.validation)
        source = "validation split of the dataset"
    elif validation_images is None:
        fit_samples, validation = split_validation(good, val_ratio, min_val, random_state)
        source = "split of train/good"
    else:
        fit_samples, validation = good, [Path(p) for p in validation_images]
        source = "separate validation images"
        if not validation:
            raise DatasetError("validation_images is empty")

    val_paths = [s.path if isinstance(s, Sample) else s for s in validation]
    # Every image's header and integrity before the long extraction: one error lists them all.
    infos = check_images([s.path for s in fit_samples] + val_paths, progress=progress,
                         task="checking training images")
    params = dict(detector_params or {})
    model = build_detector(detector, params)  # __init__ only stores: cheap
    if "random_state" not in params and "random_state" in model.get_params():
        model = create_detector(detector, **params, random_state=random_state)
    model.fit([s.path for s in fit_samples], progress=progress)
    fit_seconds = time.perf_counter() - t0
    prediction = model.predict(val_paths, batch_size=batch_size, progress=progress)
    calibration = fit_calibration(prediction.scores, prediction.maps, alpha=alpha,
                                  pixel_fpr=pixel_fpr, min_region_area=min_region_area)
    info = {
        "format": "defectmap-training",
        "format_version": 1,
        "package_version": __version__,
        "category": category_data.name,
        "dataset_root": str(Path(category_data.root).resolve()),
        "layout": category_data.layout,
        "detector": detector,
        "detector_params": model.get_params(),
        "validation_source": source,
        "n_train_good": len(good),
        "n_fit": len(fit_samples),
        "n_val": len(validation),
        "fit_stems": _stems(fit_samples),
        "val_stems": _stems(validation),
        "images": ImageProfile.of(infos).to_dict(),
        "val_ratio": val_ratio,
        "min_val": min_val,
        "random_state": random_state,
        "alpha": alpha,
        "pixel_fpr": pixel_fpr,
        "min_region_area": min_region_area,
        "started_at": started_at,
        "finished_at": _now(),
        "fit_seconds": round(fit_seconds, 3),
        "calibrate_seconds": round(time.perf_counter() - t0 - fit_seconds, 3),
    }

    # Incl. Ctrl-C: no half-written directory is left behind, an old model stays whole.
    with atomic_output_dir(out_dir, marker=MODEL_FILE, owned=MODEL_FILES) as tmp_dir:
        model.save(tmp_dir)
        calibration.save(tmp_dir)
        write_json(tmp_dir / TRAINING_FILE, info)
    return InspectionModel(model, calibration, info, directory=out_dir)
