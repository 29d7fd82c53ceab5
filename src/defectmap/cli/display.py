"""The command line's one progress display: every library task as a bar in one live view.

A command wraps its long call in ``with progress_display() as progress:`` and passes
``progress`` (a :data:`defectmap.progress.ProgressCallback`) to the library. Each task the
library reports becomes a bar; nested tasks (a benchmark's pairs, each fit's images) stack
in the same live display, and a finished task's bar goes away. Nothing is drawn when stderr
is not a terminal (pipes, CI, tests). On Ctrl-C the display is closed cleanly and the
interrupt goes on to :func:`defectmap.cli._common.run_app`, which prints the one
"interrupted" line and exits 130.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from defectmap.cli._common import err_console
from defectmap.progress import ProgressCallback

__all__ = ["ProgressDisplay", "progress_display"]


class ProgressDisplay:
    """Draws ``(task, done, total)`` reports as rich progress bars on one console.

    Parameters
    ----------
    console : the console to draw on (the CLI's stderr console).
    enabled : draw at all; default: only when ``console`` is a terminal.
    """

    def __init__(self, console: Console, enabled: bool | None = None) -> None:
        self.enabled = console.is_terminal if enabled is None else enabled
        self._progress = Progress(
            TextColumn("{task.description}", markup=False),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=console,
            transient=True,
            disable=not self.enabled,
        )
        self._tasks: dict[str, TaskID] = {}
        self._lock = threading.Lock()  # reports may come from worker threads

    def __call__(self, task: str, done: int, total: int | None) -> None:
        """Show ``task`` at ``done`` of ``total``; a task ends when ``done == total``."""
        with self._lock:
            task_id = self._tasks.get(task)
            if task_id is None or done == 0:
                if task_id is not None:
                    self._progress.remove_task(task_id)
                task_id = self._progress.add_task(task, total=total)
                self._tasks[task] = task_id
            self._progress.update(task_id, completed=done, total=total)
            if total is not None and done >= total:
                self._progress.remove_task(task_id)
                del self._tasks[task]

    @property
    def active(self) -> list[str]:
        """The tasks shown now, outermost first."""
        with self._lock:
            return list(self._tasks)

    def __enter__(self) -> ProgressDisplay:
        self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        # Also on Ctrl-C and errors: the bars are removed before any message is printed.
        self._progress.stop()


@contextmanager
def progress_display() -> Iterator[ProgressCallback]:
    """One live display on the CLI's stderr console for the block; yields its callback."""
    with ProgressDisplay(err_console) as display:
        yield display
