"""Progress of long library work, reported through a plain callback; nothing here draws.

A progress callback is called as ``progress(task, done, total)``:

* ``task``: a short description of the work, e.g. ``"scoring bottle test images"``;
* ``done``: items finished so far, 0 when the task starts;
* ``total``: items in the task, or ``None`` when unknown (a download without a length).

A task ends with a call where ``done == total``. Tasks nest: a benchmark reports its pairs
while each fit inside it reports its own images. Library cores take
``progress: ProgressCallback | None = None`` and pass it down; ``None`` reports nothing (the
service, tests, scripts). The command line draws the tasks (``defectmap.cli.display``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

__all__ = ["ProgressCallback", "track"]

T = TypeVar("T")

#: ``progress(task, done, total)``; see the module docs.
ProgressCallback = Callable[[str, int, int | None], None]


def track(
    items: Iterable[T],
    task: str,
    progress: ProgressCallback | None,
    total: int | None = None,
) -> Iterator[T]:
    """Yield ``items`` unchanged, reporting each one finished to ``progress``.

    ``total`` defaults to ``len(items)`` when it has one. The last call has ``done == total``
    (``total`` set to the count when it was unknown or wrong). Nothing is reported when
    ``progress`` is None.

    Examples
    --------
    >>> calls = []
    >>> list(track("ab", "letters", lambda *call: calls.append(call)))
    ['a', 'b']
    >>> calls
    [('letters', 0, 2), ('letters', 1, 2), ('letters', 2, 2)]
    """
    if progress is None:
        yield from items
        return
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    progress(task, 0, total)
    done = 0
    for item in items:
        yield item
        done += 1
        progress(task, done, total)
    if total != done:
        progress(task, done, done)
