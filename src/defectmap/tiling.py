"""Tiling for large images: any detector on overlapping tiles, maps stitched at native size.

A 4096 x 4096 image resized to a 320 px network input shrinks a 20-pixel defect to 1.6
pixels. :class:`TiledDetector` instead cuts each image into overlapping square tiles of
``tile_size`` native pixels, hands every tile to the wrapped detector as an image of its own
(the detector resizes it to its ``input_size``: the *scale* of the tiling is
``input_size / tile_size``), fits one memory bank on the tiles of all training images, and
stitches the tiles' maps back into one map at the image's native size. The image score is
the maximum of that stitched map.

Grid (:func:`tile_starts`): along each axis of length ``L``, ``n = ceil((L - t) / (t (1 -
r))) + 1`` tiles of side ``t`` are spread evenly from 0 to ``L - t`` (rounded), so
neighbours overlap by at least ``r t`` pixels (less one for the rounding) and the last tile
ends on the border. An axis
shorter than the tile gets one tile of the axis's length (the detector then sees a
non-square crop, which it resizes to its square input like any image).

Blending (:func:`blend_window`, :class:`Stitcher`): each tile's map is weighted by the outer
product of two 1-D windows that rise linearly over the first ``round(r t)`` pixels and fall
over the last ones (flat 1 in between), and the weighted sum is divided by the sum of the
weights. The grid is the product of a row grid and a column grid and the windows are
separable, so the weight sum is the outer product of two 1-D sums: no (H, W) weight array
is held, only the (H, W) float32 map being built. Stitching a constant gives the constant;
a pixel covered by one tile takes that tile's value.

Memory: an image is decoded once; its tiles are views of it, and at most
:data:`TILE_CHUNK` tile maps exist at a time. Fitting streams tiles to the detector's own
``fit`` through a lazy sequence (:class:`TileSequence`) that decodes each image once; what
the detector keeps from them (PatchCore's patch features before the coreset) grows with the
number of tiles, as it does with the number of images.

Images are read with the project's pixel limit, :data:`~defectmap.constants.MAX_IMAGE_PIXELS`
(64 Mpx: 8000 x 8000 fits; larger files are refused with the reader's one-line error).
Held while one image is scored (counted, not measured): 3 bytes (RGB) + 4 bytes (map) per
pixel, ~120 MB at 4096 x 4096, plus the tile maps of one chunk; the maps returned are
kept, as with any detector.

On disk a tiled model is the wrapped detector's folder with a ``"tiling"`` entry in
``model.json`` (:data:`TILING_KEY`); :func:`load_scorer` restores the wrapper, and a folder
without the entry loads as the plain detector. Tiling suits detectors whose statistics do
not depend on the position in the image (PatchCore); PaDiM's per-position Gaussians would
mix the tiles' positions.
"""

from __future__ import annotations

import bisect
import json
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from defectmap.constants import DEFAULT_TILE_OVERLAP, MAX_TILE_OVERLAP, MIN_INPUT_SIZE
from defectmap.data.io import ImageInput, as_image_array, image_size
from defectmap.errors import DefectmapError, ModelFileError
from defectmap.files import to_jsonable, write_text
from defectmap.prediction import Prediction
from defectmap.progress import ProgressCallback

if TYPE_CHECKING:
    from defectmap.detectors import Detector

__all__ = [
    "TILE_CHUNK",
    "TILING_KEY",
    "Stitcher",
    "Tile",
    "TileSequence",
    "TiledDetector",
    "TilingError",
    "blend_window",
    "check_tiling",
    "load_scorer",
    "tile_grid",
    "tile_starts",
]

#: Key of the tiling parameters in a saved model's ``model.json``.
TILING_KEY = "tiling"
#: Tiles handed to the wrapped detector's ``predict`` per call (bounds the tile maps held).
TILE_CHUNK = 16
_TILING_FORMAT = 1


class TilingError(DefectmapError, ValueError):
    """Invalid tiling parameters."""


def check_tiling(tile_size: int, overlap_ratio: float) -> None:
    """Raise :class:`TilingError` unless ``tile_size >= MIN_INPUT_SIZE`` and
    ``0 <= overlap_ratio <= MAX_TILE_OVERLAP``."""
    if isinstance(tile_size, bool) or not isinstance(tile_size, int | np.integer):
        raise TilingError(f"tile_size must be an integer, got {tile_size!r}")
    if tile_size < MIN_INPUT_SIZE:
        raise TilingError(f"tile_size must be at least {MIN_INPUT_SIZE} pixels, got {tile_size}")
    if not 0.0 <= float(overlap_ratio) <= MAX_TILE_OVERLAP:
        raise TilingError(
            f"tile overlap must be in [0, {MAX_TILE_OVERLAP:g}], got {overlap_ratio!r}")


# ------------------------------------------------------------------------- the grid


def tile_starts(length: int, tile: int, overlap_ratio: float) -> np.ndarray:
    """First pixel of each tile along one axis.

    Parameters
    ----------
    length : pixels along the axis.
    tile : tile side in pixels.
    overlap_ratio : smallest overlap of neighbouring tiles, as a fraction of ``tile``.

    Returns
    -------
    int64 array (n,), increasing, from 0 to ``max(length - tile, 0)``.

    Examples
    --------
    >>> tile_starts(512, 128, 0.25).tolist()
    [0, 96, 192, 288, 384]
    >>> tile_starts(100, 128, 0.25).tolist()
    [0]
    """
    if length <= tile:
        return np.zeros(1, dtype=np.int64)
    step = tile * (1.0 - overlap_ratio)
    n = math.ceil((length - tile) / step - 1e-9) + 1
    return np.round(np.linspace(0, length - tile, n)).astype(np.int64)


@dataclass(frozen=True)
class Tile:
    """One tile: the native pixels ``[y, y + height) x [x, x + width)``."""

    y: int
    x: int
    height: int
    width: int

    def crop(self, image: np.ndarray) -> np.ndarray:
        """This tile's view of an (H, W[, C]) array."""
        return image[self.y : self.y + self.height, self.x : self.x + self.width]


def tile_grid(height: int, width: int, tile_size: int, overlap_ratio: float) -> list[Tile]:
    """Tiles covering an image of ``height x width`` pixels, row by row.

    Every pixel lies in at least one tile; tiles are ``tile_size`` square except along an
    axis shorter than ``tile_size`` (then they span that axis).
    """
    rows = tile_starts(height, tile_size, overlap_ratio)
    cols = tile_starts(width, tile_size, overlap_ratio)
    th, tw = min(tile_size, height), min(tile_size, width)
    return [Tile(int(y), int(x), th, tw) for y in rows for x in cols]


def blend_window(length: int, ramp: int) -> np.ndarray:
    """1-D blend weights of a tile side: a linear rise over ``ramp`` pixels, 1, a fall.

    ``w[i] = min(1, (i + 0.5) / ramp, (length - i - 0.5) / ramp)``; all ones for ``ramp <= 0``.
    Every weight is positive, so a pixel seen by one tile only keeps that tile's value.

    Returns
    -------
    float64 array (length,).
    """
    if ramp <= 0:
        return np.ones(length)
    i = np.arange(length) + 0.5
    return np.minimum(1.0, np.minimum(i, length - i) / ramp)


def _ramp(tile_size: int, overlap_ratio: float) -> int:
    return int(round(overlap_ratio * tile_size))


class Stitcher:
    """Accumulate tile maps into one native-size map, blended in the overlaps.

    Parameters
    ----------
    height, width : native image size.
    tile_size, overlap_ratio : the grid (as for :func:`tile_grid`).

    Examples
    --------
    >>> s = Stitcher(300, 200, 128, 0.25)
    >>> for tile in s.tiles:
    ...     s.add(tile, np.full((tile.height, tile.width), 2.0, np.float32))
    >>> float(s.result().min()), float(s.result().max())
    (2.0, 2.0)
    """

    def __init__(self, height: int, width: int, tile_size: int, overlap_ratio: float) -> None:
        self.tiles = tile_grid(height, width, tile_size, overlap_ratio)
        ramp = _ramp(tile_size, overlap_ratio)
        th, tw = self.tiles[0].height, self.tiles[0].width
        self._wy, self._wx = blend_window(th, ramp), blend_window(tw, ramp)
        self._w = np.outer(self._wy, self._wx).astype(np.float32)
        # Separable weight sums: sum over tiles of wy(i - y) wx(j - x) = sum_y(i) * sum_x(j).
        self._sum_y, self._sum_x = np.zeros(height), np.zeros(width)
        for y in tile_starts(height, tile_size, overlap_ratio):
            self._sum_y[y : y + th] += self._wy
        for x in tile_starts(width, tile_size, overlap_ratio):
            self._sum_x[x : x + tw] += self._wx
        self._acc = np.zeros((height, width), np.float32)
        self._finished = False

    def weights(self, tile: Tile) -> np.ndarray:
        """Normalised blend weights (tile.height, tile.width) of ``tile``; over all tiles
        they sum to one at every pixel."""
        w = np.outer(self._wy, self._wx)
        rows = self._sum_y[tile.y : tile.y + tile.height]
        cols = self._sum_x[tile.x : tile.x + tile.width]
        return w / np.outer(rows, cols)

    def add(self, tile: Tile, tile_map: np.ndarray) -> None:
        """Add one tile's map (tile.height, tile.width)."""
        if self._finished:
            raise RuntimeError("add after result(): the map is already normalised")
        if tile_map.shape != (tile.height, tile.width):
            raise ValueError(f"tile map has shape {tile_map.shape}, expected "
                             f"{(tile.height, tile.width)}")
        view = tile.crop(self._acc)
        view += self._w * tile_map

    def result(self) -> np.ndarray:
        """The stitched float32 map (H, W), once every tile was added (normalised in place on
        the first call: no (H, W) temporary)."""
        if not self._finished:
            self._acc /= self._sum_y[:, None].astype(np.float32)
            self._acc /= self._sum_x[None, :].astype(np.float32)
            self._finished = True
        return self._acc


# ------------------------------------------------------------------------- the detector


def _size_of(image: ImageInput) -> tuple[int, int]:
    """(height, width) from an array's shape or a file's header (nothing decoded)."""
    if isinstance(image, np.ndarray):
        return int(image.shape[0]), int(image.shape[1])
    width, height = image_size(Path(image))
    return height, width


class TileSequence(Sequence[np.ndarray]):
    """The tiles of a sequence of images, read lazily, as one sequence of images.

    Built for sequential reading (what a detector's ``fit`` does): the image behind the
    last tile read stays decoded, so each image is decoded once per pass.

    Parameters
    ----------
    images : uint8 arrays (H_i, W_i[, 3]) or image paths.
    tile_size, overlap_ratio : the grid of every image (see :func:`tile_grid`).
    """

    def __init__(self, images: Sequence[ImageInput], tile_size: int,
                 overlap_ratio: float) -> None:
        self.images = images
        self.grids = [tile_grid(*_size_of(im), tile_size, overlap_ratio) for im in images]
        self._ends = np.cumsum([len(g) for g in self.grids]).tolist()
        self._cached: tuple[int, np.ndarray] | None = None

    def __len__(self) -> int:
        return self._ends[-1] if self._ends else 0

    def _image(self, index: int) -> np.ndarray:
        if self._cached is None or self._cached[0] != index:
            self._cached = None  # release the previous image before decoding the next
            self._cached = (index, as_image_array(self.images[index], index))
        return self._cached[1]

    def __getitem__(self, k: Any) -> Any:
        if isinstance(k, slice):
            return [self[i] for i in range(*k.indices(len(self)))]
        if not 0 <= k < len(self):
            raise IndexError(f"tile {k} out of range ({len(self)} tiles)")
        i = bisect.bisect_right(self._ends, k)
        first = self._ends[i - 1] if i else 0
        return self.grids[i][k - first].crop(self._image(i))


class TiledDetector:
    """A detector applied to overlapping tiles of each image (see the module docs).

    Parameters
    ----------
    detector : an unfitted (for :meth:`fit`) or fitted detector; its ``input_size`` sets
        the network resolution of a tile.
    tile_size : tile side in native pixels (scale = ``detector.input_size / tile_size``).
    overlap_ratio : smallest overlap of neighbouring tiles, a fraction of ``tile_size`` in
        ``[0, MAX_TILE_OVERLAP]``; also the length of the blend ramps.

    Raises
    ------
    TilingError : invalid ``tile_size`` or ``overlap_ratio`` (checked here, before any work).
    """

    def __init__(self, detector: Detector, *, tile_size: int,
                 overlap_ratio: float = DEFAULT_TILE_OVERLAP) -> None:
        check_tiling(tile_size, overlap_ratio)
        self.detector = detector
        self.tile_size = int(tile_size)
        self.overlap_ratio = float(overlap_ratio)

    @property
    def name(self) -> str:
        """The wrapped detector's registered name."""
        return self.detector.name

    @property
    def input_size(self) -> int:
        """Network input side of one tile (the wrapped detector's)."""
        return int(self.detector.input_size)

    @property
    def scale(self) -> float:
        """Network pixels per native pixel: ``input_size / tile_size``."""
        return self.input_size / self.tile_size

    def tiling(self) -> dict[str, Any]:
        """The tiling parameters as saved in ``model.json``."""
        return {"format": _TILING_FORMAT, "tile_size": self.tile_size,
                "overlap_ratio": self.overlap_ratio}

    def get_params(self) -> dict[str, Any]:
        """The wrapped detector's parameters plus ``"tiling"`` (tile size, overlap, scale)."""
        return {**self.detector.get_params(),
                "tiling": {"tile_size": self.tile_size, "overlap_ratio": self.overlap_ratio,
                           "scale": self.scale}}

    def __repr__(self) -> str:
        return (f"TiledDetector({self.detector!r}, tile_size={self.tile_size}, "
                f"overlap_ratio={self.overlap_ratio})")

    def fit(self, images: Sequence[ImageInput],
            progress: ProgressCallback | None = None) -> TiledDetector:
        """Fit the wrapped detector on the tiles of defect-free images (one memory bank);
        ``progress`` counts tiles. Returns self."""
        self.detector.fit(TileSequence(images, self.tile_size, self.overlap_ratio),
                          progress=progress)
        return self

    def add_good(self, images: Sequence[ImageInput], radius: float | None = None,
                 progress: ProgressCallback | None = None) -> int:
        """Add the tiles of more defect-free images to the wrapped detector's model (see its
        ``add_good``: operator feedback); return what it reports (patches added). A stitched
        map is a weighted mean of tile maps, so a bound on every tile's map bounds it too."""
        return int(self.detector.add_good(
            TileSequence(images, self.tile_size, self.overlap_ratio), radius=radius,
            progress=progress))

    def predict(
        self,
        images: Sequence[ImageInput],
        batch_size: int = 1,
        progress: ProgressCallback | None = None,
    ) -> Prediction:
        """Score images tile by tile; maps stitched at each image's native size.

        Parameters
        ----------
        images : uint8 arrays (H_i, W_i[, 3]) or image paths.
        batch_size : tiles per forward pass of the wrapped detector.
        progress : called as ``(task, tiles done, total tiles)``.

        Returns
        -------
        Prediction with ``scores`` (N,) float32, the maximum of each stitched map, and N
        float32 maps (H_i, W_i).
        """
        grids = [tile_grid(*_size_of(im), self.tile_size, self.overlap_ratio) for im in images]
        total = sum(len(g) for g in grids)
        task = f"Scoring tiles with {self.name}"
        if progress is not None:
            progress(task, 0, total)
        done = 0
        maps: list[np.ndarray] = []
        for index, image in enumerate(images):
            pixels = as_image_array(image, index)
            stitcher = Stitcher(pixels.shape[0], pixels.shape[1], self.tile_size,
                                self.overlap_ratio)
            for chunk in _chunks(stitcher.tiles, TILE_CHUNK):
                crops = [tile.crop(pixels) for tile in chunk]
                tile_maps = self.detector.predict(crops, batch_size=batch_size).maps
                for tile, tile_map in zip(chunk, tile_maps, strict=True):
                    stitcher.add(tile, tile_map)
                done += len(chunk)
                if progress is not None:
                    progress(task, done, total)
            del pixels
            maps.append(stitcher.result())
        scores = np.array([float(m.max()) for m in maps], dtype=np.float32)
        return Prediction(scores=scores, maps=maps)

    def save(self, directory: str | os.PathLike[str]) -> None:
        """Save the wrapped detector, then add the tiling parameters to its ``model.json``."""
        from defectmap.detectors.base import MODEL_JSON, read_model_json

        self.detector.save(directory)
        meta = read_model_json(directory)
        meta[TILING_KEY] = self.tiling()
        text = json.dumps(to_jsonable(meta), indent=2, sort_keys=True, allow_nan=False) + "\n"
        write_text(Path(directory) / MODEL_JSON, text)


def _chunks(items: Sequence[Tile], size: int) -> Iterator[Sequence[Tile]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def load_scorer(directory: str | os.PathLike[str]) -> Detector | TiledDetector:
    """Load a saved detector; wrapped in :class:`TiledDetector` when its ``model.json`` has
    a ``"tiling"`` entry (models saved without one load unchanged).

    Raises
    ------
    ModelFileError : invalid files, or an invalid ``"tiling"`` entry (the message names
        ``model.json``).
    """
    from defectmap.detectors import load_detector
    from defectmap.detectors.base import MODEL_JSON, read_model_json

    meta = read_model_json(directory)
    detector = load_detector(directory)
    tiling = meta.get(TILING_KEY)
    if tiling is None:
        return detector
    path = Path(directory) / MODEL_JSON
    if not isinstance(tiling, dict) or tiling.get("format") != _TILING_FORMAT:
        raise ModelFileError(f"{path}: field 'tiling' is not a tiling of format "
                             f"{_TILING_FORMAT}")
    try:
        return TiledDetector(detector, tile_size=tiling["tile_size"],
                             overlap_ratio=tiling["overlap_ratio"])
    except (KeyError, TypeError, TilingError) as exc:
        raise ModelFileError(f"{path}: field 'tiling' is invalid ({exc})") from None
