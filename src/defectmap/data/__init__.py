"""Datasets on disk: layouts, integrity checks, synthetic data, download and safe image reading.

The most used names are re-exported here: :func:`load_category` and :func:`list_categories`
read every layout (MVTec AD, MVTec LOCO AD, MVTec AD 2, VisA, Real-IAD, plain folders; see
:mod:`defectmap.data.layouts`). :mod:`defectmap.data.check`, :mod:`defectmap.data.synth`,
:mod:`defectmap.data.synth_layouts` and :mod:`defectmap.data.download` are imported on
demand.
"""

from defectmap.data.io import decode_image, image_size, read_image, read_mask
from defectmap.data.layouts import list_categories, load_category
from defectmap.data.records import GOOD, UNKNOWN_LABEL, CategoryData, DefectConfig, Sample

__all__ = [
    "GOOD",
    "CategoryData",
    "DefectConfig",
    "UNKNOWN_LABEL",
    "Sample",
    "decode_image",
    "image_size",
    "list_categories",
    "load_category",
    "read_image",
    "read_mask",
]
