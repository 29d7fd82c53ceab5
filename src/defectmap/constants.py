"""Facts about MVTec AD and the numbers every layer agrees on, in one place."""

from __future__ import annotations

from typing import Final

#: Mean and standard deviation of ImageNet in RGB order, on images scaled to [0, 1].
IMAGENET_MEAN: Final = (0.485, 0.456, 0.406)
IMAGENET_STD: Final = (0.229, 0.224, 0.225)

TEXTURE_CATEGORIES: Final = ("carpet", "grid", "leather", "tile", "wood")
OBJECT_CATEGORIES: Final = (
    "bottle", "cable", "capsule", "hazelnut", "metal_nut", "pill", "screw",
    "toothbrush", "transistor", "zipper",
)
MVTEC_CATEGORIES: Final = tuple(sorted(TEXTURE_CATEGORIES + OBJECT_CATEGORIES))
GRAYSCALE_CATEGORIES: Final = ("grid", "screw", "zipper")

#: Default integration limit of AU-PRO in the MVTec AD protocol.
DEFAULT_FPR_LIMIT: Final = 0.3

#: Images larger than this many pixels are refused (decompression-bomb guard).
MAX_IMAGE_PIXELS: Final = 64_000_000
