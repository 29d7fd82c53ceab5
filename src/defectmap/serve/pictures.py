"""The service's picture cache: what it needs to draw recent heatmaps, bounded by bytes.

Each entry is the upload's own bytes (compressed, as sent), the anomaly map (float32, 4
bytes per pixel) and the predicted mask (1 byte per pixel): about ``5 * H * W`` bytes plus the
upload, against ``8 * H * W`` for a decoded image with its map. Entries are dropped oldest
first once the total passes ``max_bytes``; an entry larger than ``max_bytes`` is not kept.

With one worker the entries live in this process's memory. With several workers a request
for a picture may reach another process than the one that inspected the part, so the
entries are files in a folder all workers share (``directory``, in ``/dev/shm`` by default,
i.e. memory too); each worker bounds and evicts its own files, so the total stays under
``workers x max_bytes``.
"""

from __future__ import annotations

import io
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from defectmap.files import write_bytes

__all__ = ["DEFAULT_CACHE_BYTES", "Held", "PictureCache"]

#: Default byte budget of the cache (per worker).
DEFAULT_CACHE_BYTES = 256 * 1024 * 1024


@dataclass(frozen=True, eq=False)
class Held:
    """What is kept per inspection to draw its pictures."""

    upload: bytes  # the uploaded file (decoded again when a picture is asked for)
    filename: str
    amap: np.ndarray  # (H, W) float32 raw anomaly map
    mask: np.ndarray | None  # (H, W) bool predicted defect mask; None without pixel threshold
    #: (pixel threshold, pixel scale) of the deciding model's colours; None without them.
    scale: tuple[float, float] | None = None

    @property
    def nbytes(self) -> int:
        return len(self.upload) + self.amap.nbytes + (0 if self.mask is None else
                                                       self.mask.nbytes)


class PictureCache:
    """Recent :class:`Held` entries, oldest dropped first, at most ``max_bytes`` in all.

    Parameters
    ----------
    max_bytes : int
        Byte budget (>= 0; 0 keeps nothing).
    directory : Path, optional
        Shared folder for the entries (several workers); None keeps them in memory.
    """

    def __init__(self, max_bytes: int, directory: Path | None = None) -> None:
        if max_bytes < 0:
            raise ValueError(f"max_bytes must be >= 0, got {max_bytes}")
        self.max_bytes = int(max_bytes)
        self.directory = directory
        self._sizes: OrderedDict[str, int] = OrderedDict()
        self._memory: dict[str, Held] = {}
        self._total = 0
        self._lock = threading.Lock()
        if directory is not None:
            directory.mkdir(parents=True, exist_ok=True)

    @property
    def nbytes(self) -> int:
        """Bytes held by this process's entries."""
        return self._total

    def __len__(self) -> int:
        return len(self._sizes)

    def put(self, key: str, held: Held) -> bool:
        """Keep ``held`` under ``key``; return False when it alone is over the budget."""
        size = held.nbytes
        if size > self.max_bytes:
            return False
        if self.directory is not None:
            write_bytes(self._file(key), _pack(held))
        with self._lock:
            if self.directory is None:
                self._memory[key] = held
            self._sizes[key] = size
            self._total += size
            while self._total > self.max_bytes:
                old, old_size = self._sizes.popitem(last=False)
                self._total -= old_size
                self._memory.pop(old, None)
                if self.directory is not None:
                    self._file(old).unlink(missing_ok=True)
        return True

    def get(self, key: str) -> Held | None:
        """The entry, from this process or (shared folder) any worker; None when gone."""
        if self.directory is None:
            with self._lock:
                return self._memory.get(key)
        try:
            return _unpack(self._file(key).read_bytes())
        except (FileNotFoundError, ValueError, KeyError):
            return None

    def clear(self) -> None:
        """Drop every entry of this process (files included)."""
        with self._lock:
            for key in list(self._sizes):
                if self.directory is not None:
                    self._file(key).unlink(missing_ok=True)
            self._sizes.clear()
            self._memory.clear()
            self._total = 0

    def _file(self, key: str) -> Path:
        assert self.directory is not None
        return self.directory / f"{key}.npz"


def _pack(held: Held) -> bytes:
    buffer = io.BytesIO()
    arrays = {"upload": np.frombuffer(held.upload, dtype=np.uint8), "amap": held.amap,
              "filename": np.array(held.filename)}
    if held.mask is not None:
        arrays["mask"] = held.mask
    if held.scale is not None:
        arrays["scale"] = np.array(held.scale, dtype=np.float64)
    np.savez(buffer, **arrays)  # type: ignore[arg-type]
    return buffer.getvalue()


def _unpack(data: bytes) -> Held:
    with np.load(io.BytesIO(data), allow_pickle=False) as arrays:
        mask = arrays["mask"] if "mask" in arrays.files else None
        scale = None
        if "scale" in arrays.files:
            scale = (float(arrays["scale"][0]), float(arrays["scale"][1]))
        return Held(arrays["upload"].tobytes(), str(arrays["filename"]), arrays["amap"], mask,
                    scale)
