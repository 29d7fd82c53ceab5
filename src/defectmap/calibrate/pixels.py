"""The pixel threshold from good maps streamed one at a time, exactly, in bounded memory.

The pixel threshold at a target rate ``f`` is the ``k = ceil(N (1 - f))``-th smallest of the
``N`` good pixels (:func:`~defectmap.calibrate.conformal.pixel_threshold`), i.e. the
``j = N - k + 1``-th largest. Cross-fitted calibration scores every good training image: 209
bottle maps of 900 x 900 are 169 M pixels (680 MB as float32), too many to hold at once.
:class:`PixelTail` keeps only the ``j_max`` largest pixels seen so far, where ``j_max``
belongs to the largest rate it must answer (``max_fpr``), plus a strided sample for the
median and spread. Any rate ``f <= max_fpr`` then gets its exact order statistic, so a
model can be recalibrated later at the rates of :data:`PIXEL_FPR_GRID` without its maps.

``N`` must be known before the first map (the maps are at the images' native sizes, which
the caller knows from the image headers or the extracted features); :meth:`PixelTail.add`
refuses more pixels than announced and :meth:`PixelTail.finish` fewer.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from defectmap.calibrate.conformal import CalibrationError, as_map, exact_fraction

__all__ = ["PIXEL_FPR_GRID", "PixelTail", "tail_index"]

#: Pixel false-positive rates whose thresholds every calibration stores (``recalibrate``).
PIXEL_FPR_GRID: tuple[float, ...] = (0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01)
_MAX_SPREAD_SAMPLE = 2_000_000  # pixels kept (strided) for the median and the spread


def tail_index(n_pixels: int, fpr: float) -> int:
    """``j = N - ceil(N (1 - fpr)) + 1`` (clipped to ``[1, N]``): the threshold is the j-th largest.

    Examples
    --------
    >>> tail_index(1000, 0.01), tail_index(10, 0.2), tail_index(5, 1e-9)
    (11, 3, 1)
    """
    k = math.ceil(n_pixels * (1 - exact_fraction(fpr)))
    return n_pixels - min(max(k, 1), n_pixels) + 1


class PixelTail:
    """Streams good anomaly maps; answers exact pixel thresholds for rates up to ``max_fpr``.

    Parameters
    ----------
    n_pixels : total number of pixels of all maps that will be added (> 0).
    max_fpr : the largest pixel false-positive rate :meth:`threshold` must answer.

    Examples
    --------
    >>> tail = PixelTail(n_pixels=8, max_fpr=0.25)
    >>> tail.add(np.array([[0.0, 5.0], [1.0, 2.0]]))
    >>> tail.add(np.array([[7.0, 3.0], [4.0, 6.0]]))
    >>> tail.finish()
    >>> tail.threshold(0.25), tail.threshold(0.125), tail.maximum
    (5.0, 6.0, 7.0)
    """

    def __init__(self, n_pixels: int, max_fpr: float = PIXEL_FPR_GRID[-1]) -> None:
        if int(n_pixels) < 1:
            raise CalibrationError("the calibration maps are empty")
        self.n_pixels = int(n_pixels)
        self.max_fpr = float(max_fpr)
        self._keep = tail_index(self.n_pixels, self.max_fpr)
        self._stride = max(1, self.n_pixels // _MAX_SPREAD_SAMPLE)
        self._seen = 0
        self._dtype: np.dtype[Any] = np.dtype(np.float32)
        self._parts: list[NDArray[Any]] = []
        self._n_buffered = 0
        self._floor = -math.inf  # values <= floor can never enter the kept tail
        self._sample: list[NDArray[Any]] = []
        self._top: NDArray[Any] | None = None  # the kept tail, sorted descending, after finish
        self.maximum = -math.inf

    def add(self, anomaly_map: ArrayLike, name: str = "map") -> None:
        """Add one map (H, W); raises :class:`CalibrationError` for NaN/inf or too many pixels."""
        array = as_map(anomaly_map, name)
        # float32 (the detectors' maps) unless the maps need more precision: rounding float64
        # or wide-integer maps would move the threshold off the order statistic.
        self._dtype = np.result_type(self._dtype, array.dtype)
        flat = array.ravel()
        if flat.size and not np.all(np.isfinite(flat)):
            raise CalibrationError(f"{name} contains NaN or infinite values")
        start = (-self._seen) % self._stride  # one global stride over the concatenation
        self._sample.append(flat[start :: self._stride].astype(np.float64))
        self._seen += flat.size
        if self._seen > self.n_pixels:
            raise CalibrationError(f"the maps hold more than the announced {self.n_pixels} "
                                   "pixels (a map is not at its image's size)")
        if flat.size == 0:
            return
        self.maximum = max(self.maximum, float(flat.max()))
        candidates = flat[flat > self._floor] if self._floor > -math.inf else flat
        if candidates.size > self._keep:
            candidates = np.partition(candidates, candidates.size - self._keep)[-self._keep:]
        self._parts.append(np.array(candidates, dtype=self._dtype))
        self._n_buffered += candidates.size
        if self._n_buffered >= 2 * self._keep:
            self._compact()

    def _compact(self) -> None:
        merged = np.concatenate([p.astype(self._dtype, copy=False) for p in self._parts])
        if merged.size > self._keep:
            merged = np.partition(merged, merged.size - self._keep)[-self._keep:]
            self._floor = float(merged.min())  # the kept tail's smallest value
        self._parts, self._n_buffered = [merged], merged.size

    def finish(self) -> None:
        """Close the stream; raises :class:`CalibrationError` if pixels are missing."""
        if self._seen != self.n_pixels:
            raise CalibrationError(f"the maps hold {self._seen} pixels, "
                                   f"{self.n_pixels} were announced")
        self._compact()
        self._top = np.sort(self._parts[0])[::-1]
        self._parts = [self._top]

    def _require_finished(self) -> NDArray[Any]:
        if self._top is None:
            raise CalibrationError("PixelTail.finish() was not called")
        return self._top

    def threshold(self, fpr: float) -> float:
        """The exact ``ceil(N (1 - fpr))``-th smallest pixel, for ``0 < fpr <= max_fpr``."""
        if not 0.0 < fpr <= self.max_fpr:
            raise CalibrationError(f"pixel_fpr {fpr!r} is outside (0, {self.max_fpr}], the "
                                   "range these maps were summarised for")
        return float(self._require_finished()[tail_index(self.n_pixels, fpr) - 1])

    def sample(self) -> NDArray[np.float64]:
        """The strided sample of all pixels (at most about 2 M), float64."""
        return np.concatenate(self._sample) if self._sample else np.zeros(0)
