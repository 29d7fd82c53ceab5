"""The detector contract: one base class, one result type, one registry, one file format.

Every detector follows the estimator contract: ``__init__`` only stores its keyword
arguments (``get_params()`` returns them), ``fit(images)`` learns from defect-free images and
returns ``self``, learned state ends in ``_``, and ``predict`` before ``fit``/``load`` raises
:class:`~defectmap.errors.NotFittedError`.

Shared features (for cross-fitted calibration, :mod:`defectmap.calibrate.crossfit`):
:meth:`Detector.extract_features` runs the backbone once over a set of images and keeps its
outputs (:class:`FeatureSet`); :meth:`Detector.fit_features` and
:meth:`Detector.predict_features` fit on and score any subset of them without running the
backbone again. ``fit`` gets its features from :meth:`Detector._extract` only, so
``fit_features`` works for every subclass by pointing that one step at the stored features.

On disk a detector is a directory with ``model.json`` (format version, detector name, params,
package version, backbone and the tag and SHA-256 of its weights, non-array state) and
``weights.safetensors`` (the learned arrays). Loading never unpickles, and checks everything
before use: the params (types and ranges), the arrays against the params and the backbone
(shapes, dtypes, finite values), and the backbone weights against the pinned SHA-256. Any
mismatch is a :class:`~defectmap.errors.ModelFileError` naming the file and the field.
Writes go to a temporary file that is then ``os.replace``-d, and ``save`` leaves any other
file in the directory (e.g. ``calibration.json``) alone.

Format history: 1 (defectmap 0.1) had no weights record; PatchCore params of format 1 are
translated on load so that an old model scores exactly as before. 2: weights record,
PatchCore's new params.
"""

from __future__ import annotations

import functools
import inspect
import json
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, TypeVar, cast

import numpy as np
import torch
import torch.nn.functional as F

from defectmap import __version__
from defectmap.constants import MIN_INPUT_SIZE
from defectmap.data.io import iter_batches
from defectmap.errors import DefectmapError, ModelFileError, NotFittedError
from defectmap.features.backbones import (
    OFFLINE_BACKBONES,
    Backbone,
    backbone_weights,
    load_backbone,
)
from defectmap.features.preprocess import ImageInput, preprocess
from defectmap.files import to_jsonable, write_bytes, write_text
from defectmap.prediction import Prediction
from defectmap.progress import ProgressCallback

FORMAT_VERSION = 2
#: Formats this version reads (older ones are upgraded by ``Detector._upgrade_params``).
READABLE_FORMATS = (1, 2)
MODEL_JSON = "model.json"
WEIGHTS_FILE = "weights.safetensors"


class UnknownDetectorError(DefectmapError, ValueError):
    """A detector name that is not registered."""


class ParamError(ValueError):
    """A constructor parameter or a saved array with an invalid value; ``field`` names it."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


class BackendMismatchWarning(UserWarning):
    """A model is used with another nearest-neighbour backend than the one it was fitted with."""


def check_number(
    value: Any, field: str, kind: type = float, *, low: float | None = None,
    high: float | None = None, low_open: bool = False, optional: bool = False,
) -> None:
    """Raise :class:`ParamError` unless ``value`` is a number of ``kind`` in the range.

    ``kind=int`` accepts Python and NumPy integers (not bools); ``kind=float`` also accepts
    integers. ``low_open``: the lower bound is excluded. ``optional``: None is allowed.
    """
    if value is None and optional:
        return
    ok_types: tuple[type, ...] = (int, np.integer) if kind is int else (int, float, np.number)
    number = float(cast(float, value)) if isinstance(value, ok_types) else float("nan")
    if isinstance(value, bool) or not np.isfinite(number):
        expected = "an integer" if kind is int else "a number"
        raise ParamError(field, f"expected {expected}{' or null' if optional else ''}, "
                                f"got {value!r}")
    if low is not None and (number < low or (low_open and number == low)):
        raise ParamError(field, f"must be {'>' if low_open else '>='} {low}, got {value!r}")
    if high is not None and number > high:
        raise ParamError(field, f"must be <= {high}, got {value!r}")


def check_choice(value: Any, field: str, choices: Sequence[Any]) -> None:
    """Raise :class:`ParamError` unless ``value`` is one of ``choices``."""
    if isinstance(value, bool) or value not in choices:
        raise ParamError(field, f"must be one of {list(choices)}, got {value!r}")


def check_array(array: np.ndarray, field: str, shape: Sequence[int | None],
                dtype: Any = np.float32) -> None:
    """Raise :class:`ParamError` unless the array has this shape (None: any size), dtype and
    only finite values (for float arrays)."""
    if array.ndim != len(shape) or any(
        want is not None and got != want for got, want in zip(array.shape, shape, strict=True)
    ):
        wanted = "(" + ", ".join("*" if w is None else str(w) for w in shape) + ")"
        raise ParamError(field, f"has shape {tuple(array.shape)}, expected {wanted}")
    if array.dtype != np.dtype(dtype):
        raise ParamError(field, f"has dtype {array.dtype}, expected {np.dtype(dtype)}")
    if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
        raise ParamError(field, "holds NaN or infinite values")


D = TypeVar("D", bound="Detector")
_REGISTRY: dict[str, type[Detector]] = {}


def register_detector(cls: type[D]) -> type[D]:
    """Class decorator: make a detector available by its ``name`` attribute."""
    _REGISTRY[cls.name] = cls
    return cls


def list_detectors() -> list[str]:
    """Names of the registered detectors, sorted."""
    return sorted(_REGISTRY)


def _detector_class(name: str) -> type[Detector]:
    if name not in _REGISTRY:
        raise UnknownDetectorError(
            f"unknown detector {name!r}; known detectors: {', '.join(list_detectors())}"
        )
    return _REGISTRY[name]


def create_detector(name: str, **params: Any) -> Detector:
    """Create an unfitted detector by name, e.g. ``create_detector("patchcore", input_size=256)``.

    Raises
    ------
    UnknownDetectorError : ``name`` is not registered.
    TypeError : a parameter the detector does not have.
    """
    return _detector_class(name)(**params)


def read_model_json(directory: str | os.PathLike) -> dict[str, Any]:
    """Read and check ``model.json`` of a saved detector directory."""
    path = Path(directory) / MODEL_JSON
    if not path.is_file():
        raise ModelFileError(f"{path}: missing (not a saved defectmap model directory?)")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelFileError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(meta, dict) or not {"format", "detector", "params"} <= set(meta):
        raise ModelFileError(f"{path}: lacks the keys 'format', 'detector' and 'params'")
    if isinstance(meta["format"], bool) or meta["format"] not in READABLE_FORMATS:
        raise ModelFileError(
            f"{path}: model format {meta['format']!r}; this defectmap {__version__} reads "
            f"formats {', '.join(map(str, READABLE_FORMATS))}: refit the model with this "
            f"version"
        )
    if not isinstance(meta["params"], dict):
        raise ModelFileError(f"{path}: 'params' must be a JSON object")
    return meta


def load_detector(directory: str | os.PathLike) -> Detector:
    """Load any saved detector: the name in ``model.json`` picks the class from the registry."""
    meta = read_model_json(directory)
    try:
        cls = _detector_class(str(meta["detector"]))
    except UnknownDetectorError as exc:
        raise ModelFileError(f"{Path(directory) / MODEL_JSON}: {exc}") from exc
    return cls.load(directory)


@dataclass(frozen=True)
class FeatureSet:
    """Backbone outputs of N images, extracted once (:meth:`Detector.extract_features`).

    Attributes
    ----------
    key : ``(backbone, input_size, strides)`` they were extracted with; a detector accepts
        only features of its own key.
    features : per image, one float32 tensor (C_s, h_s, w_s) per backbone stride.
    sizes : native ``(H, W)`` of each image (its maps are resized to it).
    """

    key: tuple[str, int, tuple[int, ...]]
    features: list[list[torch.Tensor]]
    sizes: list[tuple[int, int]]

    def __len__(self) -> int:
        return len(self.features)

    @property
    def nbytes(self) -> int:
        """Memory held by the stored tensors, in bytes."""
        return sum(t.element_size() * t.nelement() for image in self.features for t in image)

    def batch(self, indices: Sequence[int]) -> list[torch.Tensor]:
        """The stored outputs of ``indices`` stacked per stride: [(B, C_s, h_s, w_s), ...]."""
        n_strides = len(self.features[indices[0]])
        return [torch.stack([self.features[i][s] for i in indices]) for s in range(n_strides)]


class _StoredImages(Sequence[ImageInput]):
    """Stands for the images of a :class:`FeatureSet` in ``fit``; never read (see _extract)."""

    def __init__(self, n: int) -> None:
        self._n = n

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, index: Any) -> Any:
        raise RuntimeError("fit_features: the images are not available, only their features")


def _index_batches(indices: Sequence[int], batch_size: int) -> Iterator[list[int]]:
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    for start in range(0, len(indices), batch_size):
        yield [int(i) for i in indices[start:start + batch_size]]


def gaussian_blur(maps: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur (truncated at 4 sigma, reflect padding) of (B, H, W) maps."""
    if sigma <= 0:
        return maps
    radius = int(4.0 * sigma + 0.5)
    x = torch.arange(-radius, radius + 1, dtype=maps.dtype)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    kernel = kernel / kernel.sum()
    out = maps.unsqueeze(1)
    pad_h, pad_w = min(radius, out.shape[-2] - 1), min(radius, out.shape[-1] - 1)
    out = F.pad(out, (pad_w, pad_w, 0, 0), mode="reflect") if pad_w else out
    k = kernel[radius - pad_w : radius + pad_w + 1]
    out = F.conv2d(out, k.view(1, 1, 1, -1) / k.sum())
    out = F.pad(out, (0, 0, pad_h, pad_h), mode="reflect") if pad_h else out
    k = kernel[radius - pad_h : radius + pad_h + 1]
    out = F.conv2d(out, k.view(1, 1, -1, 1) / k.sum())
    return out.squeeze(1)


@functools.lru_cache(maxsize=16)
def upsample_blur_matrix(n_grid: int, input_size: int, sigma: float) -> torch.Tensor:
    """Matrix (input_size, n_grid) of bilinear upsampling then :func:`gaussian_blur`, one axis.

    Both steps are linear and separable, so for a map ``g`` (h, w) on the feature grid
    ``gaussian_blur(upsample(g)) == A_h @ g @ A_w.T`` (up to float rounding) with
    ``A_h = upsample_blur_matrix(h, ...)``. Built once by applying the two steps to the unit
    vectors. Measured for a 40 x 40 grid to 320 px on one thread: ~0.3 ms for the two
    products instead of ~2.7 ms for interpolation plus the 33-tap convolutions. Cached: do
    not modify the returned tensor.
    """
    with torch.inference_mode(False):  # a normal tensor, usable inside and outside
        basis = torch.eye(n_grid).view(n_grid, 1, n_grid, 1)  # n_grid maps (n_grid, 1)
        up = F.interpolate(basis, size=(input_size, 1), mode="bilinear", align_corners=False)
        return gaussian_blur(up[:, 0], sigma)[:, :, 0].T.contiguous()


def maps_to_native(
    grid_maps: torch.Tensor,
    sizes: Sequence[tuple[int, int]],
    input_size: int,
    sigma: float,
) -> list[np.ndarray]:
    """Upsample feature-grid maps to the network input, smooth them, resize to native size.

    Parameters
    ----------
    grid_maps : float tensor (B, h, w) on the feature grid.
    sizes : native (H_i, W_i) of each image.
    input_size : side of the network input; ``sigma`` is in pixels at this scale.
    sigma : standard deviation of the Gaussian smoothing (PatchCore and PaDiM use 4).

    Returns
    -------
    B float32 arrays (H_i, W_i).
    """
    # Upsampling + blur as two small matrix products (see upsample_blur_matrix).
    rows = upsample_blur_matrix(int(grid_maps.shape[-2]), input_size, float(sigma))
    cols = upsample_blur_matrix(int(grid_maps.shape[-1]), input_size, float(sigma))
    up = rows @ grid_maps.float() @ cols.T
    out = []
    for i, (h, w) in enumerate(sizes):
        native = F.interpolate(up[i][None, None], size=(h, w), mode="bilinear",
                               align_corners=False)
        out.append(native[0, 0].numpy().astype(np.float32, copy=True))
    return out


def _checked_weights(json_path: Path, backbone: str, record: Any) -> dict[str, str] | None:
    """The saved backbone weights record, checked against the weights installed here.

    A model saved before records existed (format 1) has none: with an offline backbone it was
    built on the weights whose SHA-256 that version enforced too (the same constants), so it
    gets their record; with a timm backbone its weights are unknown (None). Never downloads.
    """
    if record is None:
        return backbone_weights(backbone) if backbone in OFFLINE_BACKBONES else None
    if not isinstance(record, dict) or not {"tag", "sha256"} <= set(record):
        raise ModelFileError(f"{json_path}: backbone_weights must hold 'tag' and 'sha256'")
    try:
        local = backbone_weights(backbone)
    except DefectmapError as exc:
        raise ModelFileError(f"{json_path}: backbone_weights: {exc}") from exc
    if local["sha256"] != record["sha256"]:
        raise ModelFileError(
            f"{json_path}: backbone_weights: the model was fitted on {record['tag']} "
            f"(SHA-256 {record['sha256']}), but this installation has {local['tag']} "
            f"(SHA-256 {local['sha256']}); install the weights it was fitted on or refit"
        )
    return {"tag": str(record["tag"]), "sha256": str(record["sha256"])}


class Detector(ABC):
    """Base of every anomaly detector: the common verbs and the file format.

    Subclasses set ``name``, define ``__init__`` with keyword-only parameters stored under
    the same attribute names, and implement ``fit``, ``_predict_batch``, ``_state`` and
    ``_set_state``.
    """

    name: ClassVar[str]
    #: Learned attribute that tells whether the detector is fitted.
    _fitted_attr: ClassVar[str]

    backbone: str
    input_size: int
    #: Tag and SHA-256 of the backbone weights the model was fitted on (None: format 1).
    backbone_weights_: dict[str, str] | None = None
    #: Strides of the backbone stages this detector uses.
    _strides: ClassVar[tuple[int, ...]] = (8, 16)
    #: True: the image score is the maximum of the smoothed native-size map.
    _score_is_map_max: ClassVar[bool] = False

    # -- parameters -------------------------------------------------------------------
    def get_params(self) -> dict[str, Any]:
        """The constructor arguments (the model's configuration), as a new dict."""
        names = [p for p in inspect.signature(type(self).__init__).parameters if p != "self"]
        return {p: getattr(self, p) for p in names}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({args})"

    # -- the verbs ----------------------------------------------------------------------
    @abstractmethod
    def fit(self: D, images: Sequence[ImageInput], progress: ProgressCallback | None = None) -> D:
        """Learn from defect-free images (arrays (H, W[, 3]) uint8 or paths); return self.

        ``progress`` (see :mod:`defectmap.progress`) goes to :meth:`_extract`.
        """

    def predict(
        self,
        images: Sequence[ImageInput],
        batch_size: int = 1,
        progress: ProgressCallback | None = None,
    ) -> Prediction:
        """Score images and compute anomaly maps at each image's native size.

        Parameters
        ----------
        images : uint8 arrays (H_i, W_i) or (H_i, W_i, 3), or image file paths.
        batch_size : images per backbone forward pass. The default 1 is the fastest per
            image measured on a 2-core CPU (EfficientNet-Lite0 at 320 px: 28 ms/image at
            batch 1, 69 ms/image at batch 8: the depthwise convolutions are memory-bound,
            and larger batches fall out of cache).
        progress : called as ``(task, images done, total)`` (see :mod:`defectmap.progress`).

        Returns
        -------
        Prediction with ``scores`` (N,) float32 and N maps (H_i, W_i) float32.
        """
        self._check_fitted()
        backbone = self._backbone()
        scores: list[np.ndarray] = []
        maps: list[np.ndarray] = []
        with torch.inference_mode():
            for batch in iter_batches(images, batch_size, f"Scoring with {self.name}", progress):
                x = preprocess(batch, self.input_size, backbone.mean, backbone.std)
                sizes = [(img.shape[0], img.shape[1]) for img in batch]
                batch_scores, batch_maps = self._score(backbone(x), sizes)
                scores.append(batch_scores)
                maps.extend(batch_maps)
        all_scores = np.concatenate(scores) if scores else np.zeros(0, np.float32)
        return Prediction(scores=all_scores, maps=maps)

    def _score(self, features: list[torch.Tensor],
               sizes: Sequence[tuple[int, int]]) -> tuple[np.ndarray, list[np.ndarray]]:
        """Scores (B,) float32 and native-size maps of one batch of backbone outputs."""
        batch_scores, grid_maps = self._predict_batch(features)
        batch_maps = maps_to_native(grid_maps, sizes, self.input_size, self._sigma())
        if self._map_max_score():
            batch_scores = torch.tensor([float(m.max()) for m in batch_maps])
        return batch_scores.numpy().astype(np.float32), batch_maps

    # -- shared features (cross-fitting) -------------------------------------------------
    def _feature_key(self) -> tuple[str, int, tuple[int, ...]]:
        return (str(self.backbone), int(self.input_size), tuple(self._strides))

    def extract_features(
        self, images: Sequence[ImageInput], progress: ProgressCallback | None = None
    ) -> FeatureSet:
        """Run the backbone once over ``images`` (one at a time) and keep its outputs.

        ``fit_features(features, all indices)`` then fits exactly what ``fit(images)`` fits,
        and ``predict_features`` at batch 1 scores exactly as ``predict`` does. Memory: about
        435 kB per image for PatchCore at 320 px (EfficientNet-Lite0, strides 8 and 16).
        Needs no fitted state.
        """
        backbone = self._backbone()
        features: list[list[torch.Tensor]] = []
        sizes: list[tuple[int, int]] = []
        with torch.inference_mode():
            # the same task name as the subclasses' own fit ("PatchCore features")
            for batch in iter_batches(images, 1, f"{type(self).__name__} features", progress):
                x = preprocess(batch, self.input_size, backbone.mean, backbone.std)
                features.append([f[0] for f in backbone(x)])
                sizes.append((batch[0].shape[0], batch[0].shape[1]))
        return FeatureSet(self._feature_key(), features, sizes)

    def _check_features(self, features: FeatureSet) -> None:
        if features.key != self._feature_key():
            raise ValueError(f"features extracted with {features.key}, this {self.name} "
                             f"needs {self._feature_key()}")

    def fit_features(
        self: D, features: FeatureSet, indices: Sequence[int] | np.ndarray | None = None,
        progress: ProgressCallback | None = None,
    ) -> D:
        """``fit`` on the stored features of ``indices`` (all when None); return self."""
        self._check_features(features)
        chosen = list(range(len(features))) if indices is None else [int(i) for i in indices]
        self._feature_source: tuple[FeatureSet, list[int]] | None = (features, chosen)
        try:
            return self.fit(_StoredImages(len(chosen)), progress)
        finally:
            self._feature_source = None

    def predict_features(
        self, features: FeatureSet, indices: Sequence[int] | np.ndarray | None = None,
        batch_size: int = 1, progress: ProgressCallback | None = None,
    ) -> Prediction:
        """:meth:`predict` on the stored features of ``indices`` (all when None)."""
        self._check_fitted()
        self._check_features(features)
        chosen = list(range(len(features))) if indices is None else [int(i) for i in indices]
        scores: list[np.ndarray] = []
        maps: list[np.ndarray] = []
        task = f"Scoring with {self.name}"
        if progress is not None:
            progress(task, 0, len(chosen))
        with torch.inference_mode():
            for rows in _index_batches(chosen, batch_size):
                batch_scores, batch_maps = self._score(features.batch(rows),
                                                       [features.sizes[i] for i in rows])
                scores.append(batch_scores)
                maps.extend(batch_maps)
                if progress is not None:
                    progress(task, len(maps), len(chosen))
        all_scores = np.concatenate(scores) if scores else np.zeros(0, np.float32)
        return Prediction(scores=all_scores, maps=maps)

    def add_good(
        self,
        images: Sequence[ImageInput],
        radius: float | None = None,
        progress: ProgressCallback | None = None,
    ) -> int:
        """Learn from more defect-free images without refitting; return how much was added.

        For parts an operator confirmed good after the model flagged them (false alarms).
        ``radius`` bounds how far a new patch may stay from what the model holds, where the
        detector keeps patches (PatchCore). Recalibrate afterwards.
        """
        raise NotImplementedError(f"{self.name} cannot add images after fit")

    def save(self, directory: str | os.PathLike) -> None:
        """Write ``model.json`` and ``weights.safetensors`` into ``directory`` (created if needed).

        Other files in the directory are left alone; each file is replaced atomically.
        """
        from safetensors.numpy import save as save_arrays

        self._check_fitted()
        folder = Path(directory)
        folder.mkdir(parents=True, exist_ok=True)
        arrays, extra = self._state()
        meta = {
            "format": FORMAT_VERSION,
            "detector": self.name,
            "params": self.get_params(),
            "defectmap_version": __version__,
            "backbone": self.backbone,
            "backbone_weights": self.backbone_weights_,
            "state": extra,
            "arrays": sorted(arrays),
        }
        # Serialise both files before replacing either: a parameter that is not JSON-able must
        # not leave new weights beside the old model.json.
        text = json.dumps(to_jsonable(meta), indent=2, sort_keys=True, allow_nan=False) + "\n"
        contiguous = {k: np.ascontiguousarray(v) for k, v in arrays.items()}
        write_bytes(folder / WEIGHTS_FILE, save_arrays(contiguous))
        write_text(folder / MODEL_JSON, text)

    @classmethod
    def load(cls: type[D], directory: str | os.PathLike) -> D:
        """Restore a detector saved by :meth:`save` (no unpickling).

        Raises
        ------
        ModelFileError : a file is missing or invalid; the message names it.
        """
        from safetensors import SafetensorError
        from safetensors.numpy import load_file

        folder = Path(directory)
        meta = read_model_json(folder)
        json_path = folder / MODEL_JSON
        if meta["detector"] != cls.name:
            raise ModelFileError(
                f"{json_path}: holds a {meta['detector']!r} model, not {cls.name!r}"
            )
        params = cls._upgrade_params(int(meta["format"]), dict(meta["params"]))
        try:
            detector = cls(**params)
        except TypeError as exc:
            raise ModelFileError(f"{json_path}: invalid params ({exc})") from exc
        try:
            detector._check_params()
        except ParamError as exc:
            raise ModelFileError(f"{json_path}: params.{exc}") from exc
        detector.backbone_weights_ = _checked_weights(json_path, detector.backbone,
                                                      meta.get("backbone_weights"))
        weights = folder / WEIGHTS_FILE
        if not weights.is_file():
            raise ModelFileError(f"{weights}: missing")
        try:
            arrays = load_file(weights)
        except (SafetensorError, OSError, ValueError) as exc:
            raise ModelFileError(f"{weights}: not a valid safetensors file ({exc})") from exc
        missing = set(meta.get("arrays", [])) - set(arrays)
        if missing:
            raise ModelFileError(f"{weights}: lacks the arrays {sorted(missing)}")
        extra = meta.get("state", {})
        if not isinstance(extra, dict):
            raise ModelFileError(f"{json_path}: 'state' must be a JSON object")
        try:
            detector._set_state(arrays, extra)
        except ParamError as exc:
            where = json_path if exc.field.startswith("state.") else weights
            raise ModelFileError(f"{where}: {exc}") from exc
        except (KeyError, ValueError, TypeError) as exc:
            raise ModelFileError(f"{folder}: inconsistent model files ({exc})") from exc
        return detector

    # -- for subclasses ---------------------------------------------------------------------
    @classmethod
    def _upgrade_params(cls, format_version: int, params: dict[str, Any]) -> dict[str, Any]:
        """Params of a model saved in an older format, as this version's constructor takes
        them (same behaviour). The base class changes nothing."""
        return params

    def _check_params(self) -> None:
        """Raise :class:`ParamError` for an invalid parameter (types and ranges)."""
        if not isinstance(self.backbone, str) or not self.backbone:
            raise ParamError("backbone", f"expected a backbone name, got {self.backbone!r}")
        check_number(self.input_size, "input_size", int, low=MIN_INPUT_SIZE)

    @abstractmethod
    def _predict_batch(self, features: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Image scores (B,) and feature-grid maps (B, h, w) from backbone features."""

    @abstractmethod
    def _state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Learned arrays (for safetensors) and JSON-able non-array state."""

    @abstractmethod
    def _set_state(self, arrays: dict[str, np.ndarray], extra: dict[str, Any]) -> None:
        """Inverse of :meth:`_state`."""

    def _sigma(self) -> float:
        return float(getattr(self, "sigma", 4.0))

    def _backbone(self) -> Backbone:
        """The backbone; before ``fit`` completes it may download (timm) and is recorded in
        ``backbone_weights_``, a fitted model only reads local weights."""
        fitted = getattr(self, self._fitted_attr, None) is not None
        backbone = load_backbone(self.backbone, self._strides, allow_download=not fitted)
        if not fitted:
            self.backbone_weights_ = backbone_weights(self.backbone)
        return backbone

    def _map_max_score(self) -> bool:
        """True: the image score is the maximum of the smoothed native-size map."""
        return self._score_is_map_max

    def _check_fitted(self) -> None:
        if getattr(self, self._fitted_attr, None) is None:
            raise NotFittedError(
                f"this {self.name} detector is not fitted: call fit(images) or load a saved model"
            )

    def _extract(
        self, images: Sequence[ImageInput], batch_size: int, description: str,
        embed: Callable[[list[torch.Tensor]], torch.Tensor],
        progress: ProgressCallback | None = None,
    ) -> Iterator[torch.Tensor]:
        """Yield ``embed(backbone(batch))`` for each batch of images, without gradients.

        Inside :meth:`fit_features` the backbone outputs come from the stored features
        instead (``images`` is then only a stand-in of the right length).
        """
        source: tuple[FeatureSet, list[int]] | None = getattr(self, "_feature_source", None)
        if source is not None:
            features, chosen = source
            if progress is not None:
                progress(description, 0, len(chosen))
            done = 0
            for rows in _index_batches(chosen, batch_size):
                with torch.inference_mode():
                    yield embed(features.batch(rows))
                done += len(rows)
                if progress is not None:
                    progress(description, done, len(chosen))
            return
        backbone = self._backbone()
        for batch in iter_batches(images, batch_size, description, progress):
            with torch.inference_mode():
                x = preprocess(batch, self.input_size, backbone.mean, backbone.std)
                yield embed(backbone(x))
