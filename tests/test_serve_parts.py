"""The service's parts on their own: the byte-bounded picture cache, the byte budget of
pending uploads, the micro-batcher, the model slot."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest

from defectmap.serve.batching import BudgetTimeout, ByteBudget, MicroBatcher
from defectmap.serve.pictures import Held, PictureCache


def held(side: int, upload: int = 1000) -> Held:
    amap = np.random.default_rng(side).random((side, side), dtype=np.float32)
    return Held(b"x" * upload, "a.png", amap, amap > 0.5, (0.5, 0.1))


def test_picture_cache_is_bounded_by_bytes(tmp_path: Path) -> None:
    entry = held(100)
    assert entry.nbytes == 1000 + 100 * 100 * 4 + 100 * 100  # upload + float32 map + mask
    cache = PictureCache(max_bytes=3 * entry.nbytes)
    for i in range(5):
        assert cache.put(f"k{i}", held(100))
    assert len(cache) == 3 and cache.nbytes == 3 * entry.nbytes  # oldest two dropped
    assert cache.get("k0") is None and cache.get("k4") is not None
    assert not cache.put("huge", held(200))  # alone over the budget: not kept
    assert cache.get("huge") is None and len(cache) == 3

    # Two workers sharing a folder: each bounds its own entries, both read every entry.
    one = PictureCache(2 * entry.nbytes, tmp_path / "shared")
    two = PictureCache(2 * entry.nbytes, tmp_path / "shared")
    one.put("a", held(100))
    got = two.get("a")
    assert got is not None and got.scale == (0.5, 0.1) and got.upload == b"x" * 1000
    np.testing.assert_array_equal(got.amap, held(100).amap)
    np.testing.assert_array_equal(got.mask, held(100).mask)
    one.put("b", held(100))
    one.put("c", held(100))
    assert two.get("a") is None and sorted(p.name for p in (tmp_path / "shared").iterdir()) == [
        "b.npz", "c.npz"]
    one.clear()
    assert list((tmp_path / "shared").iterdir()) == []


def test_byte_budget_bounds_what_waits() -> None:
    budget = ByteBudget(100)
    budget.acquire(60, timeout=1)
    with pytest.raises(BudgetTimeout, match="60 bytes"):
        budget.acquire(60, timeout=0.05)  # would exceed the budget
    released = threading.Timer(0.1, budget.release, args=(60,))
    released.start()
    budget.acquire(60, timeout=5)  # waits until the first reservation is freed
    released.join()
    budget.release(60)
    budget.acquire(500, timeout=0.05)  # larger than the budget: runs alone
    assert budget.in_use == 500 and budget.peak == 500
    budget.release(500)


def test_micro_batcher_groups_waiting_items_and_keeps_order() -> None:
    calls: list[list[int]] = []
    gate = threading.Event()

    def score(items):  # type: ignore[no-untyped-def]
        gate.wait(5)
        calls.append(list(items))
        return [i * 10 for i in items]

    batcher: MicroBatcher[int, int] = MicroBatcher(score, max_batch=4, max_wait_s=0.05)
    results: dict[int, int] = {}

    def submit(i: int) -> None:
        results[i] = batcher.submit(i)

    threads = [threading.Thread(target=submit, args=(i,)) for i in range(9)]
    for thread in threads:
        thread.start()
        time.sleep(0.005)
    gate.set()
    for thread in threads:
        thread.join(10)
    assert results == {i: i * 10 for i in range(9)}
    assert max(len(c) for c in calls) <= 4 and sum(len(c) for c in calls) == 9
    assert len(calls) < 9  # some items were scored together
    assert sum(batcher.batch_sizes.values()) == len(calls)

    def failing(items):  # type: ignore[no-untyped-def]
        raise RuntimeError("model broke")

    broken: MicroBatcher[int, int] = MicroBatcher(failing)
    with pytest.raises(RuntimeError, match="model broke"):
        broken.submit(1)
    broken.close()
    batcher.close()
