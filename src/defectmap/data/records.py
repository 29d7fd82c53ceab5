"""Typed records for the images of a dataset: one :class:`Sample` per image file."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

GOOD = "good"


@dataclass(frozen=True)
class Sample:
    """One image of a dataset.

    Attributes
    ----------
    path : the image file.
    split : ``"train"``, ``"validation"`` or ``"test"``.
    label : 0 for a defect-free ("good") image, 1 for a defective one.
    defect_type : ``"good"`` or the name of the defect folder (``"broken_large"``...).
    mask_path : the ground-truth mask file, paired by file stem; ``None`` for good images
        and for defective images of a layout without masks.
    category : the category (product) name, e.g. ``"bottle"``.
    """

    path: Path
    split: str
    label: int
    defect_type: str
    mask_path: Path | None
    category: str

    @property
    def stem(self) -> str:
        """The file name without extension (``"000"``), the key that pairs masks and maps."""
        return self.path.stem


@dataclass(frozen=True)
class CategoryData:
    """All images of one category, split as on disk.

    ``has_masks`` is False for the simple ``good/`` + ``defect/`` layout (image-level only).
    """

    name: str
    root: Path
    train: list[Sample] = field(default_factory=list)
    test: list[Sample] = field(default_factory=list)
    has_masks: bool = True
    layout: str = "mvtec"

    @property
    def defect_types(self) -> list[str]:
        """Sorted names of the defect types present in the test split (``good`` excluded)."""
        return sorted({s.defect_type for s in self.test if s.label == 1})
