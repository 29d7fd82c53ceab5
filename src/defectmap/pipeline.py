"""The inspection model: a fitted detector plus its calibration, trained, saved and loaded as one.

:func:`train_model` fits the detector on the good training images and calibrates
thresholds and score normalisation on good images each scoring model did not see: by
default the out-of-fold scores of cross-fitting (every good image fits the final model),
or a validation split or folder (see :mod:`defectmap.calibrate`). It writes one model
directory::

    out_dir/
      model.json            detector name, params, package version, non-array state,
                            tiling parameters (tiling mode, see :mod:`defectmap.tiling`)
      weights.safetensors   the detector's learned arrays
      calibration.json      thresholds, alpha, calibration scores and statistics
      training.json         category, dataset root, the calibration rule in words, fit and
                            calibration counts and file stems, folds, the training images'
                            colour and size range (``images``, see
                            :mod:`defectmap.data.profile`), random_state, alpha,
                            timestamps, package version

:func:`recalibrate` moves a saved model's operating point (alpha, pixel rate) in place
without refitting.

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
import shutil
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
    PIXEL_FPR_GRID,
    Calibration,
    CalibrationError,
    PixelTail,
    Region,
    cross_fit,
    fit_calibration,
    split_validation,
)
from defectmap.calibrate.conformal import check_fraction
from defectmap.constants import (
    DEFAULT_ALPHA,
    DEFAULT_DETECTOR,
    DEFAULT_FOLDS,
    DEFAULT_PIXEL_FPR,
    DEFAULT_TILE_OVERLAP,
)
from defectmap.data.io import ImageInfo, check_images
from defectmap.data.profile import ImageProfile
from defectmap.data.records import CategoryData, Sample
from defectmap.errors import DatasetError, DefectmapError, ModelFileError
from defectmap.files import atomic_output_dir, check_replaceable, sha256_tree, write_json
from defectmap.prediction import Scorer
from defectmap.progress import ProgressCallback

if TYPE_CHECKING:
    from defectmap.data.io import ImageInput
    from defectmap.detectors import Detector
    from defectmap.tiling import TiledDetector

__all__ = ["MODEL_FILES", "TRAINING_FILE", "Inspection", "InspectionModel", "load_model",
           "recalibrate",
           "train_model"]

TRAINING_FILE = "training.json"
MODEL_FILE = "model.json"  # written by the detector (defectmap.detectors.base.MODEL_JSON)
#: Every entry of a model directory. :func:`train_model` replaces an existing directory only
#: when it holds nothing else.
MODEL_FILES = (MODEL_FILE, "weights.safetensors", CALIBRATION_FILE, TRAINING_FILE)
#: How long :func:`load_model` keeps re-reading a folder that is swapped while it is read
#: (waiting 10 ms, then twice as long each time up to 0.25 s), before giving up, seconds.
_LOAD_PATIENCE_S = 30.0


@dataclass(frozen=True, eq=False)  # eq=False: arrays have no single truth value
class Inspection:
    """The result for one image.

    Attributes
    ----------
    score : raw anomaly score (higher = more anomalous).
    normalized_score : in (0, 1), 0.5 at the image threshold; None without calibration.
    decision : ``"ok"`` or ``"defect"`` (score strictly above the threshold); None without
        calibration.
    p_value : conformal p-value ``(1 + #{calibration scores >= score}) / (n_val + 1)``; small
        means unlike the good calibration images. None without calibration.
    regions : connected regions of the predicted defect mask, highest peak first (empty
        without a pixel threshold). They are computed whatever the decision.
    anomaly_map : raw anomaly map, float32 (H, W) at the image's native size.
    mask : predicted defect mask, bool (H, W); None without a pixel threshold.
    decision_rule : which rule decided: ``"p_value"`` (defect exactly when
        ``p_value <= alpha``) or ``"largest_score"`` (too few calibration scores for alpha:
        defect when the score exceeds the largest of them); None without calibration.
    """

    score: float
    normalized_score: float | None
    decision: str | None
    p_value: float | None
    regions: list[Region] = field(default_factory=list)
    anomaly_map: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.float32))
    mask: np.ndarray | None = None
    decision_rule: str | None = None

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
            "decision_rule": self.decision_rule,
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
                    decision_rule=cal.decision_rule,
                )
            )
        return out

    def describe(self) -> dict[str, Any]:
        """JSON-ready description for humans and the service's ``/v1/model``.

        Keys: ``detector``, ``params``, ``runtime``, ``model_hash``, ``package_version``,
        ``calibrated``, ``thresholds`` (None without calibration; the operating point, the
        method, the decision rule, the guarantee in words and the known-defect miss
        estimate), ``validation_scores`` (statistics of the calibration scores) and
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
                            "guarantee_holds", "false_alarm_bound", "min_region_area", "warning",
                            "method", "n_folds", "decision_rule", "guarantee")
            }
            estimate = cal.miss_estimate
            thresholds["known_defects"] = None if estimate is None else estimate.to_dict()
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
    read is read again (for up to 30 s of swaps), so the model returned comes from one
    version of the folder.

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
    deadline, pause = time.monotonic() + _LOAD_PATIENCE_S, 0.01
    while True:
        pin = _pin(folder)
        try:
            before = _identity(folder, pin)
            try:
                model = _load_once(folder, runtime, n_threads)
            except (DefectmapError, OSError):
                if _identity(folder) == before:
                    raise  # the folder did not change: the error is real
            else:
                if _identity(folder) == before:
                    return model
        finally:
            if pin is not None:
                os.close(pin)
        if time.monotonic() > deadline:
            raise ModelFileError(f"{folder}: the model folder kept being replaced while it was "
                                 f"read (for {_LOAD_PATIENCE_S:g} s)")
        time.sleep(pause)
        pause = min(2 * pause, 0.25)


def _pin(folder: Path) -> int | None:
    """An open descriptor of the folder, held while it is read (None if it cannot be opened).

    While it is open the folder's inode is not freed, so its number cannot be reused:
    file systems such as ext4 give a folder created after a deleted one the same inode
    number at once, and two swaps during one read (A, then B, then a new C with A's number)
    would otherwise look like no swap at all and return a mix of A and B.
    """
    try:
        return os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return None


def _identity(folder: Path, pin: int | None = None) -> tuple[int, int] | None:
    """(device, inode) of a folder (of the pinned descriptor when given), None when missing:
    changes when the folder is swapped."""
    try:
        stat = os.fstat(pin) if pin is not None else folder.stat()
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
        from defectmap.tiling import load_scorer

        if is_export_dir(folder):
            read_manifest(folder)  # the torch runtime checks an export's hashes too
        detector = load_scorer(folder)  # a TiledDetector when model.json has "tiling"
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


def _split_plan(
    good: list[Sample], val_ratio: float | None, min_val: int, n_folds: int | None,
    validation_images: Sequence[str | os.PathLike[str]] | None, random_state: int,
    own_validation: list[Sample] | None = None,
) -> tuple[str, list[Sample], list[Sample] | list[Path], str, str]:
    """The calibration rule: ``(method, fit samples, validation, summary, source)``.

    * ``validation_images`` given: split conformal on them; every good image fits.
    * ``val_ratio`` given: split conformal on ``max(min_val, ceil(val_ratio * n))`` good
      images held out at random; the others fit.
    * ``n_folds`` given: cross-fitting (below), even when the dataset has a validation split.
    * none of these and the layout has its own ``validation/good`` images
      (``own_validation``: MVTec LOCO AD, MVTec AD 2): split conformal on them; every good
      training image fits.
    * otherwise: cross-fitting with ``n_folds`` (default 5) folds; every good image fits the
      final model and all but ``n mod K`` get an out-of-fold score.

    ``summary`` states the rule and its counts in one line; ``source`` names where the
    calibration scores come from.
    """
    n = len(good)
    if validation_images is not None:
        if val_ratio is not None or n_folds is not None or min_val:
            raise CalibrationError("a separate validation folder excludes val_ratio, min_val "
                                   "and n_folds")
        validation = [Path(p) for p in validation_images]
        if not validation:
            raise DatasetError("validation_images is empty")
        return "split", good, validation, (
            f"split conformal: {len(validation)} images of a separate validation folder; "
            f"the detector is fitted on all {n} good training images"), \
            "separate validation images"
    if val_ratio is not None:
        if n_folds is not None:
            raise CalibrationError("val_ratio (a validation split) excludes n_folds "
                                   "(cross-fitting)")
        fit_samples, held = split_validation(good, val_ratio, min_val, random_state)
        rule = (f"max({min_val}, ceil({val_ratio:g} x {n}))" if min_val
                else f"ceil({val_ratio:g} x {n})")
        return "split", fit_samples, held, (
            f"split conformal: {len(held)} of {n} good training images held out for "
            f"validation ({rule}); the detector is fitted on the other {len(fit_samples)}"), \
            "split of train/good"
    if min_val:
        raise CalibrationError("min_val applies to a validation split: give val_ratio too")
    if n_folds is None and own_validation:
        return "split", good, list(own_validation), (
            f"split conformal: the dataset's {len(own_validation)} validation/good images; "
            f"the detector is fitted on all {n} good training images"), \
            "validation split of the dataset"
    k = DEFAULT_FOLDS if n_folds is None else int(n_folds)
    size = n // k if k >= 1 else 0
    left = n - size * k if k >= 1 else n
    extra = f"; {left} fit every fold model without a score" if left else ""
    return "cross_fit", good, [], (
        f"cross-fitted: {k} folds of {size} good training images, {size * k} out-of-fold "
        f"scores{extra}; the final detector is fitted on all {n}"), \
        "out-of-fold scores of train/good"


def train_model(
    category_data: CategoryData,
    out_dir: str | os.PathLike[str],
    detector: str = DEFAULT_DETECTOR,
    detector_params: dict[str, Any] | None = None,
    val_ratio: float | None = None,
    min_val: int = 0,
    alpha: float = DEFAULT_ALPHA,
    random_state: int = 0,
    *,
    n_folds: int | None = None,
    pixel_fpr: float = DEFAULT_PIXEL_FPR,
    min_region_area: int = 1,
    validation_images: Sequence[str | os.PathLike[str]] | None = None,
    defect_images: Sequence[str | os.PathLike[str]] | None = None,
    batch_size: int = 1,
    tile_size: int | None = None,
    tile_overlap: float = DEFAULT_TILE_OVERLAP,
    progress: ProgressCallback | None = None,
) -> InspectionModel:
    """Fit a detector on good training images, calibrate it on good images it did not see.

    The calibration rule (:func:`_split_plan`; the one-line ``calibration_summary`` of
    ``training.json`` states it):

    * default: **cross-fitted** (:mod:`defectmap.calibrate.crossfit`): ``n_folds`` fold
      models give every good image an out-of-fold score; the final detector is fitted on
      all good images;
    * default for layouts with their own ``validation/good`` split (MVTec LOCO AD, MVTec AD
      2): split conformal on those images (``n_folds`` forces cross-fitting instead);
    * ``val_ratio``: **split conformal** on a random held-out share of ``train/good``;
    * ``validation_images``: split conformal on a separate folder of good images.

    Parameters
    ----------
    category_data : the category; only ``category_data.train`` (its good images) is used.
    out_dir : model directory to write (replaced atomically if it holds a model already).
    detector : registered detector name.
    detector_params : its constructor arguments. ``random_state`` seeds it too unless these
        set their own.
    val_ratio : validation share of ``train/good`` in (0, 1); None (default) cross-fits.
    min_val : with ``val_ratio``, hold out at least this many images (default 0: exactly
        ``ceil(val_ratio * n)``).
    alpha : target false-alarm rate of the image threshold.
    random_state : seed of the folds or the split (and of the detector, see above).
    n_folds : K of cross-fitting (default 5); only without ``val_ratio`` and
        ``validation_images``.
    pixel_fpr : target pixel false-positive rate on good calibration pixels.
    min_region_area : smallest region (pixels) kept in predicted masks.
    validation_images : a separate folder's good images (paths) used for calibration; then
        every ``train/good`` image fits the detector.
    defect_images : known defective samples (paths), optional. They are only scored by the
        final detector to report the miss rate at the threshold with a Clopper-Pearson
        interval (:mod:`defectmap.calibrate.misses`); they never fit a model and never move
        the threshold.
    batch_size : images per forward pass when scoring calibration and defect images (tiles
        per pass in tiling mode).
    tile_size : tiling mode (see :mod:`defectmap.tiling`): the detector (and every fold
        model) fits on and scores overlapping tiles of this side in native pixels, resized
        to its ``input_size``; maps are stitched at native size. None: whole images, resized.
    tile_overlap : smallest overlap of neighbouring tiles, a fraction of ``tile_size``.
    progress : reports ``(task, done, total)`` of the checks, fits and the scoring
        (see :mod:`defectmap.progress`).

    Returns
    -------
    InspectionModel
        The trained model, with ``directory = out_dir`` and its ``model_hash``.

    Raises
    ------
    DatasetError : no good training images.
    CalibrationError : conflicting or invalid rule (val_ratio with n_folds, too few images
        for the split or the folds), or invalid alpha / pixel_fpr.
    ImageReadError : training, validation or defect images that cannot be read (all listed).
    DefectmapError : ``out_dir`` exists and is not a model directory, or holds other files.
    UnknownDetectorError, DefectmapError : unknown detector name or parameter (see
        :func:`~defectmap.detectors.build_detector`).
    TilingError : invalid ``tile_size`` or ``tile_overlap``.
    """
    from defectmap.detectors import build_detector, create_detector
    from defectmap.tiling import TiledDetector, check_tiling

    started_at = _now()
    out_dir = Path(out_dir)
    check_replaceable(out_dir, MODEL_FILE, MODEL_FILES)  # fail before the (long) fit
    alpha = check_fraction("alpha", alpha)
    pixel_fpr = check_fraction("pixel_fpr", pixel_fpr)
    if tile_size is not None:
        check_tiling(tile_size, tile_overlap)
    good = [s for s in category_data.train if s.label == 0]
    if not good:
        raise DatasetError(f"{category_data.root}: no good training images to fit on")
    method, fit_samples, validation, summary, source = _split_plan(
        good, val_ratio, min_val, n_folds, validation_images, random_state,
        list(category_data.validation))
    defects = [Path(p) for p in defect_images or []]

    val_paths = [s.path if isinstance(s, Sample) else s for s in validation]
    # Every image's header and integrity before the long extraction: one error lists them all.
    infos = check_images([s.path for s in fit_samples] + val_paths, progress=progress,
                         task="checking training images")
    if defects:
        check_images(defects, progress=progress, task="checking known defect images")
    params = dict(detector_params or {})
    probe = build_detector(detector, params)  # __init__ only stores: cheap
    if "random_state" not in params and "random_state" in probe.get_params():
        params["random_state"] = random_state
    model: Detector | TiledDetector
    maps_rate = max(PIXEL_FPR_GRID[-1], pixel_fpr)

    def make_detector() -> Detector | TiledDetector:
        built = create_detector(detector, **params)
        if tile_size is None:
            return built
        return TiledDetector(built, tile_size=tile_size, overlap_ratio=tile_overlap)

    calibration_info: dict[str, Any] = {"method": method}
    if method == "cross_fit":
        k = DEFAULT_FOLDS if n_folds is None else int(n_folds)
        result = cross_fit(make_detector,
                           [s.path for s in good], k, random_state, batch_size=batch_size,
                           max_pixel_fpr=maps_rate, progress=progress)
        model = result.detector
        fit_seconds, calibrate_seconds = result.fit_seconds, result.calibrate_seconds
        scores, pixels = result.scores, result.pixels
        validation = [s for s, f in zip(good, result.folds, strict=True) if f >= 0]
        calibration_info.update(n_folds=k, shared_features=result.shared_features,
                                folds=[int(f) for f in result.folds])
    else:
        k = None
        model = make_detector()
        fit_start = time.perf_counter()
        model.fit([s.path for s in fit_samples], progress=progress)
        fit_seconds = time.perf_counter() - fit_start
        prediction = model.predict(val_paths, batch_size=batch_size, progress=progress)
        scores = prediction.scores
        pixels = PixelTail(sum(int(m.size) for m in prediction.maps), maps_rate)
        for i, anomaly_map in enumerate(prediction.maps):
            pixels.add(anomaly_map, f"validation map {i}")
        pixels.finish()
        del prediction
        calibrate_seconds = time.perf_counter() - fit_start - fit_seconds
    defect_scores = None
    if defects:
        defect_scores = model.predict(defects, batch_size=batch_size, progress=progress).scores
    calibration = fit_calibration(scores, alpha=alpha, pixel_fpr=pixel_fpr,
                                  min_region_area=min_region_area, method=method, n_folds=k,
                                  pixels=pixels, defect_scores=defect_scores)
    info = {
        "format": "defectmap-training",
        "format_version": 2,
        "package_version": __version__,
        "category": category_data.name,
        "dataset_root": str(Path(category_data.root).resolve()),
        "layout": category_data.layout,
        "detector": detector,
        "detector_params": model.get_params(),
        "calibration_method": method,
        "calibration_summary": summary,
        "validation_source": source,
        "n_train_good": len(good),
        "n_fit": len(fit_samples),
        "n_val": len(validation),
        "n_defects": len(defects),
        "fit_stems": _stems(fit_samples),
        "val_stems": _stems(validation),
        "defect_stems": _stems(defects),
        "images": ImageProfile.of(infos).to_dict(),
        "val_ratio": val_ratio,
        "min_val": min_val,
        "n_folds": k,
        "random_state": random_state,
        "alpha": alpha,
        "pixel_fpr": pixel_fpr,
        "min_region_area": min_region_area,
        "started_at": started_at,
        "finished_at": _now(),
        "fit_seconds": round(fit_seconds, 3),
        "calibrate_seconds": round(calibrate_seconds, 3),
        "calibration": calibration_info,
    }

    # Incl. Ctrl-C: no half-written directory is left behind, an old model stays whole.
    with atomic_output_dir(out_dir, marker=MODEL_FILE, owned=MODEL_FILES) as tmp_dir:
        model.save(tmp_dir)
        calibration.save(tmp_dir)
        write_json(tmp_dir / TRAINING_FILE, info)
    return InspectionModel(model, calibration, info, directory=out_dir)


def recalibrate(
    model_dir: str | os.PathLike[str],
    alpha: float | None = None,
    pixel_fpr: float | None = None,
    min_region_area: int | None = None,
) -> Calibration:
    """Move a saved model's operating point without refitting; rewrite its calibration.json.

    The calibration scores (out-of-fold or validation) are stored in ``calibration.json``,
    so this reads no image and loads no detector: it takes milliseconds. ``pixel_fpr`` must
    be one of the rates stored with the calibration
    (:data:`~defectmap.calibrate.PIXEL_FPR_GRID` and the fitted one). The file is replaced
    atomically; the model's hash changes with it.

    Parameters
    ----------
    model_dir : a model directory written by :func:`train_model`.
    alpha, pixel_fpr, min_region_area : the new values; None keeps the current one.

    Returns
    -------
    Calibration
        The new calibration, as written.

    Raises
    ------
    ModelFileError : no or an invalid ``calibration.json``.
    CalibrationError : invalid value, or a pixel rate that was not stored.

    Warns
    -----
    CalibrationWarning : too few calibration scores for ``alpha``.
    """
    from defectmap.runtime.manifest import is_export_dir

    folder = Path(model_dir)
    current = Calibration.load(folder)
    new = current.at(alpha=alpha, pixel_fpr=pixel_fpr, min_region_area=min_region_area)
    if is_export_dir(folder):
        _recalibrate_export(folder, new)
    else:
        new.save(folder)  # one atomic file replace: a reader sees the old or the new file
    return new


def _recalibrate_export(folder: Path, calibration: Calibration) -> None:
    """Write ``calibration`` into an exported folder and its new hash into ``export.json``.

    The folder must still match its manifest (else :class:`ModelFileError`, as on load).
    A copy of the folder (hard links where possible) gets the two new files and is swapped
    in whole (:func:`~defectmap.files.atomic_output_dir`), so a reader never sees a
    ``calibration.json`` that ``export.json`` does not list.
    """
    from defectmap.runtime.manifest import EXPORT_FILE, read_manifest, write_manifest

    manifest = read_manifest(folder)  # refuses a folder changed since export
    kept = {k: v for k, v in manifest.items() if k not in ("format", "format_version", "files")}
    skip = {CALIBRATION_FILE, EXPORT_FILE}
    with atomic_output_dir(folder, marker=EXPORT_FILE) as tmp:
        for path in sorted(folder.rglob("*")):
            name = path.relative_to(folder)
            if not path.is_file() or name.as_posix() in skip:
                continue
            (tmp / name).parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(path, tmp / name)  # never written in place: safe to share
            except OSError:
                shutil.copy2(path, tmp / name)
        calibration.save(tmp)
        write_manifest(tmp, kept)
