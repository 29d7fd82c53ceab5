"""Facts about MVTec AD and the numbers every layer agrees on, in one place."""

from __future__ import annotations

from typing import Final

#: Detector fitted when none is named (``defectmap fit``, ``train_model``, the benchmark).
DEFAULT_DETECTOR: Final = "patchcore"
#: Smallest side of the square network input (a 2 x 2 feature grid at stride 16).
MIN_INPUT_SIZE: Final = 32
#: Target false-alarm rate of the calibrated image threshold.
DEFAULT_ALPHA: Final = 0.01
#: Target fraction of good validation pixels above the calibrated pixel threshold.
DEFAULT_PIXEL_FPR: Final = 0.001
#: Inference runtimes (``--runtime``): torch runs the detector, the others an exported graph.
RUNTIMES: Final = ("torch", "onnxruntime", "openvino")
#: Formats of ``defectmap export`` and the inputs its graph can take.
EXPORT_FORMATS: Final = ("onnx", "openvino")
EXPORT_INPUTS: Final = ("normalized", "pixels")

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

# --------------------------------------------------------------------------------------
# Official MVTec AD image counts (Bergmann et al., CVPR 2019 / IJCV 2021), per category.

#: Number of defect-free training images (``train/good``) per category.
MVTEC_TRAIN_COUNTS: Final[dict[str, int]] = {
    "bottle": 209, "cable": 224, "capsule": 219, "carpet": 280, "grid": 264,
    "hazelnut": 391, "leather": 245, "metal_nut": 220, "pill": 267, "screw": 320,
    "tile": 230, "toothbrush": 60, "transistor": 213, "wood": 247, "zipper": 240,
}

#: Number of test images per category and test folder (``good`` and each defect type).
#: Every defective test image has one ground-truth mask.
MVTEC_TEST_COUNTS: Final[dict[str, dict[str, int]]] = {
    "bottle": {"good": 20, "broken_large": 20, "broken_small": 22, "contamination": 21},
    "cable": {
        "good": 58, "bent_wire": 13, "cable_swap": 12, "combined": 11,
        "cut_inner_insulation": 14, "cut_outer_insulation": 10, "missing_cable": 12,
        "missing_wire": 10, "poke_insulation": 10,
    },
    "capsule": {
        "good": 23, "crack": 23, "faulty_imprint": 22, "poke": 21, "scratch": 23, "squeeze": 20,
    },
    "carpet": {
        "good": 28, "color": 19, "cut": 17, "hole": 17, "metal_contamination": 17, "thread": 19,
    },
    "grid": {
        "good": 21, "bent": 12, "broken": 12, "glue": 11, "metal_contamination": 11,
        "thread": 11,
    },
    "hazelnut": {"good": 40, "crack": 18, "cut": 17, "hole": 18, "print": 17},
    "leather": {"good": 32, "color": 19, "cut": 19, "fold": 17, "glue": 19, "poke": 18},
    "metal_nut": {"good": 22, "bent": 25, "color": 22, "flip": 23, "scratch": 23},
    "pill": {
        "good": 26, "color": 25, "combined": 17, "contamination": 21, "crack": 26,
        "faulty_imprint": 19, "pill_type": 9, "scratch": 24,
    },
    "screw": {
        "good": 41, "manipulated_front": 24, "scratch_head": 24, "scratch_neck": 25,
        "thread_side": 23, "thread_top": 23,
    },
    "tile": {"good": 33, "crack": 17, "glue_strip": 18, "gray_stroke": 16, "oil": 18, "rough": 15},
    "toothbrush": {"good": 12, "defective": 30},
    "transistor": {
        "good": 60, "bent_lead": 10, "cut_lead": 10, "damaged_case": 10, "misplaced": 10,
    },
    "wood": {"good": 19, "color": 8, "combined": 11, "hole": 10, "liquid": 10, "scratch": 21},
    "zipper": {
        "good": 32, "broken_teeth": 19, "combined": 16, "fabric_border": 17,
        "fabric_interior": 16, "rough": 17, "split_teeth": 18, "squeezed_teeth": 16,
    },
}
