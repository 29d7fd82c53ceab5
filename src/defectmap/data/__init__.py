"""Datasets on disk: layouts, integrity checks, synthetic data, download and safe image reading.

The most used names are re-exported here; :mod:`defectmap.data.check`,
:mod:`defectmap.data.synth` and :mod:`defectmap.data.download` are imported on demand.
"""

from defectmap.data.io import decode_image, image_size, read_image, read_mask
from defectmap.data.mvtec import list_categories, load_category
from defectmap.data.records import GOOD, CategoryData, Sample

__all__ = [
    "GOOD",
    "CategoryData",
    "Sample",
    "decode_image",
    "image_size",
    "list_categories",
    "load_category",
    "read_image",
    "read_mask",
]
