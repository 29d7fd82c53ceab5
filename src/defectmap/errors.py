"""Exception types shared by every layer.

Every error a user can cause derives from :class:`DefectmapError`; the command line prints
its message as one line and exits non-zero. Every warning the library issues derives from
:class:`DefectmapWarning`; the command line prints each as one line.
"""

from __future__ import annotations


class DefectmapError(Exception):
    """Base class of all errors that a user can cause (bad input, missing files, ...)."""


class DefectmapWarning(UserWarning):
    """Base class of the warnings defectmap issues (a result holds, with a caveat)."""


class ImageReadError(DefectmapError, ValueError):
    """An image or mask file cannot be read; the message names the file and the problem."""


class ImageTooLargeError(ImageReadError):
    """An image has more pixels, or an upload more bytes, than allowed (refused undecoded)."""


class DatasetError(DefectmapError, ValueError):
    """A dataset folder does not have the expected layout."""


class NotFittedError(DefectmapError, RuntimeError):
    """A model was asked to score before ``fit`` (or ``load``) gave it its learned state."""


class ModelFileError(DefectmapError, ValueError):
    """A saved model directory is missing a file or holds an invalid one."""


class UncalibratedModelError(ModelFileError):
    """A model without ``calibration.json`` was asked for ok/defect decisions."""


class OfflineError(DefectmapError, RuntimeError):
    """Something must be downloaded but the network cannot be reached."""
