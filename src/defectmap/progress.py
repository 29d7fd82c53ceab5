"""Progress bars for long work, in one place.

Library code wraps long loops in :func:`track`; bars are drawn with rich on an interactive
terminal and stay silent elsewhere (tests, pipes, the service) unless forced on.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")

_enabled: bool | None = None  # None: decide by whether stderr is a terminal


def set_progress(enabled: bool | None) -> None:
    """Force progress bars on (True), off (False) or back to automatic (None)."""
    global _enabled
    _enabled = enabled


def progress_enabled() -> bool:
    """Whether :func:`track` draws a bar now."""
    if _enabled is not None:
        return _enabled
    return sys.stderr.isatty()


def track(items: Iterable[T], description: str, total: int | None = None) -> Iterator[T]:
    """Yield ``items`` unchanged, drawing a rich progress bar when enabled.

    Ctrl-C propagates as ``KeyboardInterrupt``; the bar is closed on the way out.
    """
    if not progress_enabled():
        yield from items
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, transient=True) as bar:
        task = bar.add_task(description, total=total)
        for item in items:
            yield item
            bar.advance(task)
