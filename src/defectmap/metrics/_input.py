"""Checks and conversions of metric inputs; every problem raises :class:`MetricInputError`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from defectmap.errors import DefectmapError

#: What the pixel metrics accept as maps: one (N, H, W) array or a sequence of 2-D arrays.
MapsLike = np.ndarray | Sequence[ArrayLike]
#: Masks as maps, where a ``None`` entry stands for an all-normal mask of the map's shape.
MasksLike = np.ndarray | Sequence[ArrayLike | None]


class MetricInputError(DefectmapError, ValueError):
    """Metric inputs are invalid: NaN/inf scores, mismatched shapes, a missing class..."""


def as_scores(scores: ArrayLike, name: str = "scores") -> np.ndarray:
    """Return ``scores`` as a finite 1-D float64 array, shape (N,)."""
    arr = np.asarray(scores)
    if arr.ndim != 1:
        raise MetricInputError(f"{name} must be 1-D, got shape {arr.shape}")
    if arr.dtype.kind not in "biuf":
        raise MetricInputError(f"{name} must be numeric, got dtype {arr.dtype}")
    arr = arr.astype(np.float64, copy=False)
    bad = np.flatnonzero(~np.isfinite(arr))
    if bad.size:
        raise MetricInputError(
            f"{name} has {bad.size} NaN or infinite value(s), first at index {bad[0]}"
        )
    return arr


def as_labels(labels: ArrayLike, n: int, name: str = "labels") -> np.ndarray:
    """Return 0/1 ``labels`` as a bool array of shape (n,) (True = anomalous)."""
    arr = np.asarray(labels)
    if arr.shape != (n,):
        raise MetricInputError(f"{name} must have shape ({n},) like the scores, got {arr.shape}")
    if arr.dtype == bool:
        return arr
    if arr.dtype.kind not in "iuf" or not np.isin(arr, (0, 1)).all():
        raise MetricInputError(f"{name} must hold only 0 (normal) and 1 (anomalous)")
    return arr == 1


def as_map_list(maps: MapsLike, name: str = "maps") -> list[np.ndarray]:
    """Return ``maps`` as a non-empty list of numeric 2-D arrays (views, no copies)."""
    out = _as_2d_list(maps, name, allow_none=False)
    for i, m in enumerate(out):
        assert m is not None
        if m.dtype.kind not in "biuf":
            raise MetricInputError(f"{name}[{i}] must be numeric, got dtype {m.dtype}")
    return out  # type: ignore[return-value]


def as_mask_list(masks: MasksLike, maps: list[np.ndarray], name: str = "masks") -> list[Any]:
    """Return ``masks`` as a list of 2-D arrays or None, one per map, shapes checked."""
    out = _as_2d_list(masks, name, allow_none=True)
    if len(out) != len(maps):
        raise MetricInputError(f"got {len(maps)} maps but {len(out)} {name}")
    for i, (m, k) in enumerate(zip(maps, out, strict=True)):
        if k is not None and k.shape != m.shape:
            raise MetricInputError(
                f"{name}[{i}] has shape {k.shape} but its map has shape {m.shape}"
            )
    return out


def common_dtype(maps: list[np.ndarray]) -> np.dtype:
    """The dtype that holds every map's values exactly for comparisons (bool -> uint8)."""
    dtype = np.result_type(*[m.dtype for m in maps])
    return np.dtype(np.uint8) if dtype.kind == "b" else dtype


def check_finite(m: np.ndarray, index: int, name: str = "maps") -> None:
    """Raise when a float map holds NaN or infinite values."""
    if m.dtype.kind == "f" and not np.isfinite(m).all():
        raise MetricInputError(f"{name}[{index}] contains NaN or infinite values")


def check_fpr_limit(fpr_limit: float) -> float:
    """Return ``fpr_limit`` as a float in (0, 1]."""
    limit = float(fpr_limit)
    if not 0.0 < limit <= 1.0:
        raise MetricInputError(f"fpr_limit must be in (0, 1], got {fpr_limit}")
    return limit


def _as_2d_list(items: Any, name: str, allow_none: bool) -> list[np.ndarray | None]:
    if isinstance(items, np.ndarray):
        if items.ndim != 3:
            raise MetricInputError(
                f"{name} must be an (N, H, W) array or a sequence of 2-D arrays, "
                f"got an array of shape {items.shape}"
            )
        out: list[np.ndarray | None] = list(items)
    else:
        try:
            out = [None if (x is None and allow_none) else np.asarray(x) for x in items]
        except TypeError as exc:
            raise MetricInputError(f"{name} must be a sequence of 2-D arrays") from exc
    if not out:
        raise MetricInputError(f"{name} is empty")
    for i, m in enumerate(out):
        if m is not None and m.ndim != 2:
            raise MetricInputError(f"{name}[{i}] must be 2-D, got shape {m.shape}")
    return out
