"""Inference as a pipeline stage: one thread that scores micro-batches, and a byte budget.

Request threads decode uploads in parallel and hand the images to :class:`MicroBatcher`,
whose single inference thread runs the model while the next uploads are decoded and the
previous answers are rendered and logged: decode, inference and response overlap instead of
taking turns. Requests that arrive within ``max_wait_s`` of the first one of a batch (at most
``max_batch`` in all) are scored in one call; with ``max_batch=1`` no request ever waits for
another. With ``max_wait_s=0`` (the service's default) a batch is whatever queued up while
the previous one ran: no request waits at low load, and batches grow with the load. Whether
batches are faster depends on the runtime (see the README's load table).

:class:`ByteBudget` bounds the decoded images waiting for inference: a request reserves its
image's bytes before decoding and frees them after inference, and waits (up to a time limit)
while the budget is spent. One image larger than the whole budget still runs, alone.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Generic, TypeVar

__all__ = ["DEFAULT_PENDING_BYTES", "BudgetTimeout", "ByteBudget", "MicroBatcher"]

#: Default bound on decoded images waiting for inference (per worker).
DEFAULT_PENDING_BYTES = 512 * 1024 * 1024

T = TypeVar("T")
R = TypeVar("R")


class BudgetTimeout(RuntimeError):
    """The byte budget stayed spent for longer than the wait limit (the service is full)."""


class ByteBudget:
    """A counting semaphore in bytes: ``acquire(n)`` waits until ``n`` more bytes fit."""

    def __init__(self, max_bytes: int) -> None:
        if max_bytes < 1:
            raise ValueError(f"max_bytes must be >= 1, got {max_bytes}")
        self.max_bytes = int(max_bytes)
        self.in_use = 0
        self.peak = 0
        self._cond = threading.Condition()

    def acquire(self, n: int, timeout: float) -> None:
        """Reserve ``n`` bytes, waiting at most ``timeout`` seconds.

        Raises
        ------
        BudgetTimeout
            The bytes did not become free in time.
        """
        deadline = time.monotonic() + timeout
        with self._cond:
            # An image over the whole budget may run once nothing else is reserved.
            while self.in_use and self.in_use + n > self.max_bytes:
                left = deadline - time.monotonic()
                if left <= 0 or not self._cond.wait(left):
                    if self.in_use and self.in_use + n > self.max_bytes:
                        raise BudgetTimeout(
                            f"{self.in_use} bytes of decoded images are waiting for inference "
                            f"(limit {self.max_bytes}); try again shortly")
            self.in_use += n
            self.peak = max(self.peak, self.in_use)

    def release(self, n: int) -> None:
        with self._cond:
            self.in_use -= n
            self._cond.notify_all()


class MicroBatcher(Generic[T, R]):
    """Run ``score(items) -> results`` on one thread, over batches of waiting items.

    Parameters
    ----------
    score : callable
        Scores a list of items, returning one result per item, in order.
    max_batch : int
        Most items per call (1: no batching).
    max_wait_s : float
        How long the first item of a batch waits for more (0: take what is queued).
    """

    def __init__(self, score: Callable[[Sequence[T]], Sequence[R]], max_batch: int = 1,
                 max_wait_s: float = 0.0) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self.score = score
        self.max_batch = int(max_batch)
        self.max_wait_s = float(max_wait_s)
        self.batch_sizes: dict[int, int] = {}  # batch size -> how many such batches ran
        self._queue: queue.Queue[tuple[T, Future[R]] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="defectmap-inference",
                                        daemon=True)
        self._thread.start()

    def submit(self, item: T) -> R:
        """Score ``item`` (blocking); raises what the scoring raised."""
        future: Future[R] = Future()
        self._queue.put((item, future))
        return future.result()

    def close(self) -> None:
        """Finish the queued items, then stop the thread."""
        self._queue.put(None)
        self._thread.join(timeout=60)

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch = [first]
            deadline = time.monotonic() + self.max_wait_s
            stop = False
            while len(batch) < self.max_batch:
                left = deadline - time.monotonic()
                try:
                    nxt = self._queue.get(timeout=left) if left > 0 else self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    stop = True
                    break
                batch.append(nxt)
            self.batch_sizes[len(batch)] = self.batch_sizes.get(len(batch), 0) + 1
            try:
                results = self.score([item for item, _ in batch])
                for (_, future), result in zip(batch, results, strict=True):
                    future.set_result(result)
            except BaseException as exc:  # noqa: BLE001 - handed to every waiting request
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
            if stop:
                return
