"""The one result type of every detector: image scores and anomaly maps (imports no torch).

Kept out of :mod:`defectmap.detectors` so that code which only consumes predictions (the
calibration, the evaluation, the service, a runtime of exported models) needs no torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from defectmap.progress import ProgressCallback

__all__ = ["Prediction", "Scorer"]


@dataclass(frozen=True)
class Prediction:
    """Scores and anomaly maps of N images (higher = more anomalous).

    Attributes
    ----------
    scores : float32 array (N,), one anomaly score per image.
    maps : N float32 arrays (H_i, W_i), each at its input image's native size.
    """

    scores: np.ndarray
    maps: list[np.ndarray]


class Scorer(Protocol):
    """What turns images into a :class:`Prediction`: a fitted detector (torch) or an exported
    model on ONNX Runtime / OpenVINO (:class:`defectmap.runtime.ExportedModel`)."""

    @property
    def name(self) -> str:
        """The detector's registered name."""
        ...

    def get_params(self) -> dict[str, Any]:
        """The detector's constructor arguments."""
        ...

    def predict(
        self, images: Sequence[Any], batch_size: int = 1, progress: ProgressCallback | None = None
    ) -> Prediction:
        """Scores (N,) and native-size maps of uint8 images or image paths."""
        ...
