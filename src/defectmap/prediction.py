"""The one result type of every scorer (detectors and exported runtimes): torch-free."""

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
