"""Backbones (pretrained feature extractors) and the one image-preprocessing helper."""

from defectmap.features.backbones import (
    DEFAULT_BACKBONE,
    OFFLINE_BACKBONES,
    Backbone,
    UnknownBackboneError,
    list_offline_backbones,
    load_backbone,
    load_offline_state_dict,
)
from defectmap.features.preprocess import as_image_array, preprocess

__all__ = [
    "DEFAULT_BACKBONE",
    "OFFLINE_BACKBONES",
    "Backbone",
    "UnknownBackboneError",
    "as_image_array",
    "list_offline_backbones",
    "load_backbone",
    "load_offline_state_dict",
    "preprocess",
]
