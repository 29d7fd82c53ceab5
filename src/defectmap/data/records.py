"""Typed records for the images of a dataset: one :class:`Sample` per image file."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

GOOD = "good"
#: ``Sample.label`` of images whose ground truth is not published (MVTec AD 2 private tests).
UNKNOWN_LABEL = -1


@dataclass(frozen=True)
class Problem:
    """Something wrong with a dataset, found while scanning or checking it.

    Attributes
    ----------
    kind : short machine name, e.g. ``"mask_missing"``, ``"unreadable_image"``.
    path : the file or folder concerned.
    message : one human-readable sentence.
    """

    kind: str
    path: Path
    message: str

    def to_dict(self) -> dict[str, str]:
        """JSON-ready form."""
        return {"kind": self.kind, "path": str(self.path), "message": self.message}

    @classmethod
    def from_error(cls, kind: str, path: Path, error: Exception) -> Problem:
        """A problem from a read error whose message starts with the path: the path is named
        once, by the problem, not again in its message."""
        message = str(error).removeprefix(f"{path}: ").replace(str(path), path.name)
        return cls(kind, path, message)


@dataclass(frozen=True)
class DefectConfig:
    """One entry of MVTec LOCO AD's ``defects_config.json``.

    Attributes
    ----------
    name : the defect name (``"missing_almonds"``).
    pixel_value : the value (1-255) this defect's mask pixels carry.
    saturation_threshold : a fraction of the defect area in (0, 1] when
        ``relative_saturation``, else a number of pixels.
    relative_saturation : whether the threshold is relative to the defect's area.
    """

    name: str
    pixel_value: int
    saturation_threshold: float
    relative_saturation: bool


@dataclass(frozen=True)
class Sample:
    """One image of a dataset.

    Attributes
    ----------
    path : the image file.
    split : ``"train"``, ``"validation"``, ``"test"``, or for images without published
        labels the folder they come from (``"test_private"``, ``"test_private_mixed"``).
    label : 0 for a defect-free ("good") image, 1 for a defective one,
        :data:`UNKNOWN_LABEL` when the ground truth is not published.
    defect_type : ``"good"`` or the name of the defect folder (``"broken_large"``,
        ``"logical_anomalies"``, ``"bad"``...).
    mask_path : the ground-truth mask file, paired by file stem; ``None`` for good images,
        for defective images of a layout without masks, and for layouts with several masks
        per image (see ``mask_paths``).
    category : the category (product) name, e.g. ``"bottle"``.
    mask_paths : several masks of one image, one file per defect (MVTec LOCO AD's
        ``ground_truth/<type>/<id>/000.png, 001.png, ...``); empty otherwise.
    anomaly_kind : ``"logical"`` or ``"structural"`` for MVTec LOCO AD test images with an
        anomaly, ``None`` elsewhere.
    defect_names : finer defect names where the layout records them (VisA ``image_anno.csv``
        labels, Real-IAD anomaly classes); empty otherwise.
    """

    path: Path
    split: str
    label: int
    defect_type: str
    mask_path: Path | None
    category: str
    mask_paths: tuple[Path, ...] = ()
    anomaly_kind: str | None = None
    defect_names: tuple[str, ...] = ()

    @property
    def stem(self) -> str:
        """The file name without extension (``"000"``), the key that pairs masks and maps."""
        return self.path.stem

    @property
    def masks(self) -> tuple[Path, ...]:
        """Every mask file of this image: ``mask_paths``, or ``(mask_path,)``, or ``()``."""
        if self.mask_paths:
            return self.mask_paths
        return () if self.mask_path is None else (self.mask_path,)


@dataclass(frozen=True)
class CategoryData:
    """All images of one category, split as on disk.

    ``has_masks`` is False for the simple ``good/`` + ``defect/`` layout (image-level only).
    ``layout`` names the reader: ``"mvtec"``, ``"folders"``, ``"loco"``, ``"mvtec_ad2"``,
    ``"visa"`` or ``"realiad"``. ``validation`` holds the layout's own defect-free
    validation images (MVTec LOCO AD, MVTec AD 2); ``unlabeled`` maps a split name to images
    without published labels (MVTec AD 2 ``test_private``, ``test_private_mixed``), which are
    predicted but never scored; ``defects`` is MVTec LOCO AD's defect configuration.
    """

    name: str
    root: Path
    train: list[Sample] = field(default_factory=list)
    test: list[Sample] = field(default_factory=list)
    has_masks: bool = True
    layout: str = "mvtec"
    validation: list[Sample] = field(default_factory=list)
    unlabeled: dict[str, list[Sample]] = field(default_factory=dict)
    defects: tuple[DefectConfig, ...] = ()

    @property
    def defect_types(self) -> list[str]:
        """Sorted names of the defect types present in the test split (``good`` excluded)."""
        return sorted({s.defect_type for s in self.test if s.label == 1})
