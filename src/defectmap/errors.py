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


def innermost(exc: BaseException) -> BaseException:
    """The error to report for ``exc``: the first :class:`DefectmapError` down its chain of
    causes, else the error at the bottom of the chain.

    Follows ``cause`` (what Ray's task errors carry) and ``__cause__``, so that the error a
    remote task raised is found under the wrappers Ray puts around it, and a clear
    defectmap error is not traded for the low-level error it explains.
    """
    seen = {id(exc)}
    while True:
        # Ray's wrapper of a task's error subclasses that error's type: unwrap it first.
        inner = getattr(exc, "cause", None)
        if not isinstance(inner, BaseException) and not isinstance(exc, DefectmapError):
            inner = exc.__cause__
        if not isinstance(inner, BaseException) or id(inner) in seen:
            return exc
        seen.add(id(inner))
        exc = inner


def one_line(exc: BaseException) -> str:
    """``Type: first line of the message`` of :func:`innermost` (for a table cell or a log)."""
    root = innermost(exc)
    lines = [line.strip() for line in str(root).splitlines() if line.strip()]
    return f"{type(root).__name__}: {lines[0] if lines else 'no message'}"
