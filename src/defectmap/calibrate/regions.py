"""Predicted defect regions: the 8-connected components of ``map > pixel_threshold``.

:func:`segment` turns one anomaly map into its predicted mask and its :class:`Region` list;
:meth:`Region.to_dict` is the one JSON form of a region (``predict``'s ``results.json``, the
service's answers and its audit rows).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import ndimage

from defectmap.calibrate.conformal import as_map
from defectmap.metrics import label_regions

__all__ = ["Region", "label_defects", "regions_from_labels", "segment"]


@dataclass(frozen=True)
class Region:
    """One 8-connected region of a predicted defect mask.

    Attributes
    ----------
    area : number of pixels.
    bbox : ``(x0, y0, x1, y1)`` in pixels, inclusive-exclusive: columns ``x0 .. x1-1`` and rows
        ``y0 .. y1-1`` (so ``mask[y0:y1, x0:x1]`` crops it; width ``x1 - x0``).
    peak : largest raw anomaly score inside the region.
    centroid : ``(x, y)`` mean column and row of its pixels.
    """

    area: int
    bbox: tuple[int, int, int, int]
    peak: float
    centroid: tuple[float, float]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (lists for the tuples)."""
        return {
            "area": self.area,
            "bbox": list(self.bbox),
            "peak": self.peak,
            "centroid": list(self.centroid),
        }


def label_defects(
    anomaly_map: ArrayLike, threshold: float, min_region_area: int = 1
) -> tuple[NDArray[Any], NDArray[np.int32], int]:
    """Label the regions of ``map > threshold``, dropping those under ``min_region_area`` pixels.

    Returns
    -------
    array : the map as an (H, W) numeric array.
    labels : (H, W) int32, 0 outside the regions and ``1..n`` inside.
    n : number of regions kept.
    """
    array = as_map(anomaly_map)
    labels, n = label_regions(array > threshold)
    if n and min_region_area > 1:
        areas = np.bincount(labels.ravel(), minlength=n + 1)
        keep = areas >= min_region_area
        keep[0] = False
        remap = np.zeros(n + 1, dtype=np.int32)
        remap[keep] = np.arange(1, int(keep.sum()) + 1, dtype=np.int32)
        labels, n = remap[labels], int(keep.sum())
    return array, labels, n


def regions_from_labels(array: NDArray[Any], labels: NDArray[np.int32], n: int) -> list[Region]:
    """The :class:`Region` of each label ``1..n`` of ``labels`` over ``array``, top peak first."""
    if n == 0:
        return []
    index = np.arange(1, n + 1)
    areas = np.bincount(labels.ravel(), minlength=n + 1)[1:]
    peaks = ndimage.maximum(array, labels, index)
    centroids = ndimage.center_of_mass(np.ones(labels.shape), labels, index)
    out = []
    for i, box in enumerate(ndimage.find_objects(labels)):
        assert box is not None  # every label 1..n is present
        rows, cols = box
        out.append(
            Region(
                area=int(areas[i]),
                bbox=(int(cols.start), int(rows.start), int(cols.stop), int(rows.stop)),
                peak=float(peaks[i]),
                centroid=(float(centroids[i][1]), float(centroids[i][0])),
            )
        )
    out.sort(key=lambda r: (-r.peak, r.bbox))
    return out


def segment(
    anomaly_map: ArrayLike, threshold: float, min_region_area: int = 1
) -> tuple[NDArray[np.bool_], list[Region]]:
    """Predicted mask (H, W) bool and its regions (highest peak first) in one labelling pass."""
    array, labels, n = label_defects(anomaly_map, threshold, min_region_area)
    return labels > 0, regions_from_labels(array, labels, n)
