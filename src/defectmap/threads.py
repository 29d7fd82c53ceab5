"""How many CPU threads torch (and faiss) use for a block of work.

Torch's CPU kernels split their sums differently with a different number of threads, so the
same fit scores differ in the last float32 digits between 1 and 2 threads (measured on a
synthetic PatchCore and PaDiM fit: scores 40.440086 vs 40.440090). A benchmark cell or a
batch of predictions therefore runs with an explicit thread count wherever it runs, and
gives bit-identical results for the same count: locally, in a Ray worker, on another node.

Torch and faiss are imported only when a count is set, and skipped when not installed (a
torch-free runtime has nothing to set).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

__all__ = ["compute_threads", "default_threads"]


def _optional(name: str) -> Any:
    try:
        return __import__(name)
    except ImportError:
        return None


def default_threads() -> int:
    """The thread count torch uses here when told nothing (the CPU count without torch)."""
    torch = _optional("torch")
    if torch is not None:
        return int(torch.get_num_threads())
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (
        os.cpu_count() or 1)


@contextmanager
def compute_threads(n_threads: int | None) -> Iterator[None]:
    """Run the block with ``n_threads`` torch and faiss threads; restore them afterwards.

    ``None`` changes nothing (each library's default).
    """
    if n_threads is None:
        yield
        return
    if n_threads < 1:
        raise ValueError(f"n_threads must be at least 1, got {n_threads}")
    torch, faiss = _optional("torch"), _optional("faiss")
    before_torch = torch.get_num_threads() if torch is not None else None
    before_faiss = faiss.omp_get_max_threads() if faiss is not None else None
    if torch is not None:
        torch.set_num_threads(n_threads)
    if faiss is not None:
        faiss.omp_set_num_threads(n_threads)
    try:
        yield
    finally:
        if before_torch is not None:
            torch.set_num_threads(before_torch)
        if before_faiss is not None:
            faiss.omp_set_num_threads(before_faiss)
