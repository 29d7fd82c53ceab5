"""What the training images looked like, and whether a new image looks the same.

A model only knows the images it was trained on. A grayscale image scored by a model trained
on colour images (or the reverse) gives features the model never saw and is flagged as a
defect however good the part; so does an image of a very different size, whose defects and
texture reach the network at another scale. :class:`ImageProfile` records the training
images' colour and size range (``training.json`` key ``"images"``), and
:meth:`ImageProfile.mismatch` names what differs in a new image:

* colour: a grayscale image for a model trained on colour images only, or a colour image for
  a model trained on grayscale images only (a model trained on both accepts both);
* size: a width or height below half the smallest, or above twice the largest, seen in
  training (:data:`~defectmap.constants.SIZE_TOLERANCE`).

The check reads headers only (see :class:`~defectmap.data.io.ImageInfo` for which modes
count as grayscale).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from defectmap.constants import SIZE_TOLERANCE
from defectmap.data.io import ImageInfo
from defectmap.errors import DefectmapError

__all__ = ["ImageProfile", "InputMismatchError"]


class InputMismatchError(DefectmapError, ValueError):
    """Images differ from the training images in colour or size (see :mod:`.profile`).

    ``mismatches`` holds ``(image name, reason)`` pairs, one per image.
    """

    def __init__(self, message: str, mismatches: Sequence[tuple[str, str]]) -> None:
        super().__init__(message)
        self.mismatches = list(mismatches)


@dataclass(frozen=True)
class ImageProfile:
    """Colour and size range of a model's training images.

    Attributes
    ----------
    n_images : number of images profiled.
    n_grayscale : how many of them are grayscale.
    min_width, max_width, min_height, max_height : size range in pixels.
    """

    n_images: int
    n_grayscale: int
    min_width: int
    max_width: int
    min_height: int
    max_height: int

    @classmethod
    def of(cls, infos: Sequence[ImageInfo]) -> ImageProfile:
        """The profile of some images' :class:`~defectmap.data.io.ImageInfo`."""
        if not infos:
            raise ValueError("cannot profile zero images")
        return cls(
            n_images=len(infos),
            n_grayscale=sum(info.grayscale for info in infos),
            min_width=min(info.width for info in infos),
            max_width=max(info.width for info in infos),
            min_height=min(info.height for info in infos),
            max_height=max(info.height for info in infos),
        )

    @property
    def color(self) -> str:
        """``"grayscale"``, ``"rgb"`` or ``"mixed"``."""
        if self.n_grayscale == self.n_images:
            return "grayscale"
        return "rgb" if self.n_grayscale == 0 else "mixed"

    def describe(self) -> str:
        """Short text, e.g. ``"colour images of 900x900 px"``."""
        colour = {"grayscale": "grayscale", "rgb": "colour", "mixed": "colour and grayscale"}
        width = _span(self.min_width, self.max_width)
        height = _span(self.min_height, self.max_height)
        return f"{colour[self.color]} images of {width}x{height} px"

    def mismatch(self, info: ImageInfo) -> str | None:
        """Why an image differs from the training images, or None when it does not."""
        reasons = []
        if info.grayscale and self.color == "rgb":
            reasons.append("grayscale image")
        elif not info.grayscale and self.color == "grayscale":
            reasons.append("colour image")
        low, high = 1.0 / SIZE_TOLERANCE, SIZE_TOLERANCE
        if not (low * self.min_width <= info.width <= high * self.max_width
                and low * self.min_height <= info.height <= high * self.max_height):
            reasons.append(f"{info.width}x{info.height} px")
        if not reasons:
            return None
        return f"{' of '.join(reasons)}, but the model was trained on {self.describe()}"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (``training.json`` key ``"images"``), with ``color``."""
        return {**asdict(self), "color": self.color}

    @classmethod
    def from_dict(cls, data: Any) -> ImageProfile:
        """Inverse of :meth:`to_dict`.

        Raises
        ------
        ValueError
            ``data`` is not a profile (a missing or non-integer field, or no images).
        """
        if not isinstance(data, dict):
            raise ValueError(f"expected an object, got {type(data).__name__}")
        values = {}
        for key in cls.__dataclass_fields__:
            value = data.get(key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{key} must be a non-negative integer, got {value!r}")
            values[key] = value
        if values["n_images"] < 1 or values["n_grayscale"] > values["n_images"]:
            raise ValueError("needs n_images >= 1 and n_grayscale <= n_images")
        return cls(**values)


def _span(low: int, high: int) -> str:
    return str(low) if low == high else f"{low}-{high}"
