"""The one result type of every detector: image scores and anomaly maps (imports no torch).

Kept out of :mod:`defectmap.detectors` so that code which only consumes predictions (the
calibration, the evaluation, the service, a runtime of exported models) needs no torch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Prediction"]


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
