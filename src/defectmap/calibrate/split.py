"""The validation split: good training images held out to calibrate, never to fit."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TypeVar

import numpy as np

from defectmap.calibrate.conformal import CalibrationError, exact_fraction

__all__ = ["split_validation"]

T = TypeVar("T")


def split_validation(
    samples: Sequence[T],
    val_ratio: float = 0.1,
    min_val: int = 0,
    random_state: int | None = 0,
    *,
    min_fit: int = 1,
) -> tuple[list[T], list[T]]:
    """Split defect-free training samples into a fitting set and a validation set.

    ``n_val = max(min_val, ceil(val_ratio * n))`` samples (no other minimum), drawn without
    replacement with ``np.random.default_rng(random_state)``, go to validation; the rest fit
    the detector. Both lists keep the input order, so the split depends only on
    ``random_state`` and the input order (the dataset loaders return samples sorted by path).

    Parameters
    ----------
    samples : the good training samples (any objects, e.g. :class:`~defectmap.data.records.Sample`).
    val_ratio : fraction of samples held out, in [0, 1).
    min_val : minimum number of validation samples (0: exactly ``ceil(val_ratio * n)``).
    random_state : seed of the split.
    min_fit : minimum number of samples left to fit the detector.

    Returns
    -------
    fit_samples, val_samples : lists of length ``n - n_val`` and ``n_val``.

    Raises
    ------
    CalibrationError
        If the ratio is invalid or too few samples remain to fit (the message gives the counts).

    Examples
    --------
    >>> fit, val = split_validation(list(range(30)), val_ratio=0.1)
    >>> len(fit), len(val)
    (27, 3)
    >>> len(split_validation(list(range(30)), val_ratio=0.1, min_val=10)[1])
    10
    """
    n = len(samples)
    if not (0.0 <= float(val_ratio) < 1.0):
        raise CalibrationError(f"val_ratio must be in [0, 1), got {val_ratio!r}")
    if min_val < 0 or min_fit < 1:
        raise CalibrationError(f"min_val must be >= 0 and min_fit >= 1, got {min_val}, {min_fit}")
    n_val = max(int(min_val), math.ceil(exact_fraction(val_ratio) * n))
    if n_val < 1:
        raise CalibrationError(f"val_ratio = {val_ratio!r} holds out no validation image of "
                               f"{n}; raise it, set min_val, or cross-fit instead")
    if n - n_val < min_fit:
        raise CalibrationError(
            f"only {n} good training images: holding out {n_val} for validation leaves "
            f"{n - n_val} to fit the detector (need at least {min_fit}); "
            "lower val_ratio/min_val or give a separate validation folder"
        )
    rng = np.random.default_rng(random_state)
    is_val = np.zeros(n, dtype=bool)
    is_val[rng.permutation(n)[:n_val]] = True
    fit = [s for s, v in zip(samples, is_val, strict=True) if not v]
    val = [s for s, v in zip(samples, is_val, strict=True) if v]
    return fit, val
