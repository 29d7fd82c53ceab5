"""Facts about MVTec AD and the numbers every layer agrees on, in one place."""

from __future__ import annotations

from typing import Final

#: Detector fitted when none is named (``defectmap fit``, ``train_model``, the benchmark).
DEFAULT_DETECTOR: Final = "patchcore"
#: Smallest side of the square network input (a 2 x 2 feature grid at stride 16).
MIN_INPUT_SIZE: Final = 32
#: Largest side of the square network input accepted on the command line (a typo guard).
MAX_INPUT_SIZE: Final = 2048
#: Target false-alarm rate of the calibrated image threshold.
DEFAULT_ALPHA: Final = 0.01
#: Target fraction of good validation pixels above the calibrated pixel threshold.
DEFAULT_PIXEL_FPR: Final = 0.001
#: Folds of cross-fitted calibration (the default calibration method).
DEFAULT_FOLDS: Final = 5
#: The alphas whose operating points ``evaluate`` and the report show.
OPERATING_ALPHAS: Final = (0.001, 0.005, 0.01, 0.02, 0.05, 0.1)
#: Inference runtimes (``--runtime``): torch runs the detector, the others an exported graph.
RUNTIMES: Final = ("torch", "onnxruntime", "openvino")
#: The pip extra (pyproject.toml) that installs each optional top-level module.
EXTRA_OF_MODULE: Final = {"torch": "train", "torchvision": "train", "timm": "train",
                          "onnx": "export", "onnxscript": "export", "onnxruntime": "runtime",
                          "openvino": "openvino", "ray": "ray"}
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
#: AU-PRO integration limit of the MVTec AD 2 protocol.
MVTEC_AD2_FPR_LIMIT: Final = 0.05

#: Images larger than this many pixels are refused (decompression-bomb guard).
MAX_IMAGE_PIXELS: Final = 64_000_000
#: An input image whose width or height is more than this factor outside the training
#: images' range differs from them (see defectmap.data.profile).
SIZE_TOLERANCE: Final = 2.0

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

# --------------------------------------------------------------------------------------
# MVTec LOCO AD (Bergmann et al., "Beyond Dents and Scratches: Logical Constraints in
# Unsupervised Anomaly Detection and Localization", IJCV 2022, Table 1).

LOCO_CATEGORIES: Final = (
    "breakfast_box", "juice_bottle", "pushpins", "screw_bag", "splicing_connectors",
)
#: Test folders holding anomalies; ``ground_truth/`` has the same two.
LOCO_ANOMALY_TYPES: Final = ("logical_anomalies", "structural_anomalies")

#: Images per split and test folder. The paper's totals are 1772 train, 304 validation and
#: 1568 test (575 good, 561 logical, 432 structural); the published archive
#: (mvtec_loco_anomaly_detection.tar.xz) holds 1778 train and 305 validation images, the
#: difference being splicing_connectors (360 / 60 in the archive, 354 / 59 in the paper;
#: noted in anomalib's draft LOCO loader and in dataset-ninja's statistics). The archive's
#: counts are used here, since `data check` compares with what users download.
LOCO_COUNTS: Final[dict[str, dict[str, int]]] = {
    "breakfast_box": {"train": 351, "validation": 62, "good": 102,
                      "logical_anomalies": 83, "structural_anomalies": 90},
    "juice_bottle": {"train": 335, "validation": 54, "good": 94,
                     "logical_anomalies": 142, "structural_anomalies": 94},
    "pushpins": {"train": 372, "validation": 69, "good": 138,
                 "logical_anomalies": 91, "structural_anomalies": 81},
    "screw_bag": {"train": 360, "validation": 60, "good": 122,
                  "logical_anomalies": 137, "structural_anomalies": 82},
    "splicing_connectors": {"train": 360, "validation": 60, "good": 119,
                            "logical_anomalies": 108, "structural_anomalies": 85},
}

# --------------------------------------------------------------------------------------
# MVTec AD 2 (Heckler-Kram et al., "The MVTec AD 2 Dataset", arXiv:2503.21622, 2025).

MVTEC_AD2_CATEGORIES: Final = (
    "can", "fabric", "fruit_jelly", "rice", "sheet_metal", "vial", "wallplugs", "walnuts",
)
#: Test sets without published ground truth, scored on MVTec's benchmark server.
MVTEC_AD2_PRIVATE_SPLITS: Final = ("test_private", "test_private_mixed")
#: Images in each of test_private/ and test_private_mixed/ per category: the
#: ``OBJECT_FILE_COUNTER`` of MVTec's upload checker (MVTecAD2_public_code_utils/utils.py),
#: which also fixes the map names ``NNN_regular.tiff`` / ``NNN_mixed.tiff``.
MVTEC_AD2_PRIVATE_COUNTS: Final[dict[str, int]] = {
    "can": 321, "fabric": 314, "fruit_jelly": 255, "rice": 277,
    "sheet_metal": 142, "vial": 276, "wallplugs": 232, "walnuts": 228,
}
#: Dataset totals over the 8 categories (train/good, validation/good, test_public good and
#: bad; every bad image has one mask). Per-category numbers are not published in a source
#: found here; these totals were counted on the published archive by two independent users
#: (2,528 / 302 / 379 / 705) and agree with the private counts above (2,045 in all).
MVTEC_AD2_TOTALS: Final[dict[str, int]] = {
    "train": 2528, "validation": 302, "good": 379, "bad": 705,
}

# --------------------------------------------------------------------------------------
# VisA (Zou et al., "SPot-the-Difference Self-Supervised Pre-training for Anomaly Detection
# and Segmentation", ECCV 2022; github.com/amazon-science/spot-diff).

VISA_CATEGORIES: Final = (
    "candle", "capsules", "cashew", "chewinggum", "fryum", "macaroni1", "macaroni2",
    "pcb1", "pcb2", "pcb3", "pcb4", "pipe_fryum",
)
#: Rows of the official split_csv/1cls.csv per object (spot-diff commit 2a692ab, counted):
#: train normal, test normal, test anomaly. Totals 9,621 normal and 1,200 anomalous, as in
#: the spot-diff README's statistics table.
VISA_1CLS_COUNTS: Final[dict[str, dict[str, int]]] = {
    "candle": {"train": 900, "good": 100, "bad": 100},
    "capsules": {"train": 542, "good": 60, "bad": 100},
    "cashew": {"train": 450, "good": 50, "bad": 100},
    "chewinggum": {"train": 453, "good": 50, "bad": 100},
    "fryum": {"train": 450, "good": 50, "bad": 100},
    "macaroni1": {"train": 900, "good": 100, "bad": 100},
    "macaroni2": {"train": 900, "good": 100, "bad": 100},
    "pcb1": {"train": 904, "good": 100, "bad": 100},
    "pcb2": {"train": 901, "good": 100, "bad": 100},
    "pcb3": {"train": 905, "good": 101, "bad": 100},
    "pcb4": {"train": 904, "good": 101, "bad": 100},
    "pipe_fryum": {"train": 450, "good": 50, "bad": 100},
}

# --------------------------------------------------------------------------------------
# Real-IAD (Wang et al., "Real-IAD: A Real-World Multi-View Dataset for Benchmarking
# Versatile Industrial Anomaly Detection", CVPR 2024; realiad4ad.github.io/Real-IAD).

REALIAD_CATEGORIES: Final = (
    "audiojack", "bottle_cap", "button_battery", "end_cap", "eraser", "fire_hood", "mint",
    "mounts", "pcb", "phone_battery", "plastic_nut", "plastic_plug", "porcelain_doll",
    "regulator", "rolled_strip_base", "sim_card_set", "switch", "tape", "terminalblock",
    "toothbrush", "toy", "toy_brick", "transistor1", "u_block", "usb", "usb_adaptor",
    "vcpill", "wooden_beads", "woodstick", "zipper",
)
#: Anomaly class codes (NG/<code>/ folders, ``anomaly_class`` in the JSON splits).
REALIAD_DEFECT_CLASSES: Final[dict[str, str]] = {
    "AK": "pit", "BX": "deformation", "CH": "abrasion", "HS": "scratch", "PS": "damage",
    "QS": "missing parts", "YW": "foreign objects", "ZW": "contamination",
}
#: Real-IAD's per-split counts are not published outside the JSON files that ship with the
#: dataset (access on request); the JSON split itself is the reference `data check` uses.
