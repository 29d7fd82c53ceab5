"""Synthetic large images with small defects, in the MVTec AD layout (for tiling).

A woven surface seen by a high-resolution camera: an axis-aligned weave of period
:data:`WEAVE_PERIOD` pixels (random phase per image), a mid-frequency mottling, a gentle
lighting gradient and sensor noise; 8-bit gray. Defects are discs of ``defect_size`` pixels
diameter, 1 to 3 per defective image, of two types:

``weave``
    the weave inside the disc is turned by 45 degrees: the local mean is unchanged, so
    after a resize by 10x or more the defect is gone from the image;
``spot``
    the disc is brighter or darker by 24 to 40 grey levels (weave kept): after a large
    resize it survives only as a faint smudge.

Masks are exactly the discs. Layout written::

    OUT/CATEGORY/train/good/000.png ...
    OUT/CATEGORY/test/good/000.png ...
    OUT/CATEGORY/test/{weave,spot}/000.png ...
    OUT/CATEGORY/ground_truth/{weave,spot}/000_mask.png ...   (0 = good, 255 = defect)

Determinism: every image is drawn from ``np.random.default_rng([seed, split, index])``.
Writing one 4096 x 4096 image takes about 2 s (mostly PNG encoding at compression level 1).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy import ndimage

from defectmap.data.synth import _save_png
from defectmap.errors import DatasetError
from defectmap.files import atomic_output_dir
from defectmap.progress import ProgressCallback, track

__all__ = ["LARGE_DEFECT_TYPES", "WEAVE_PERIOD", "make_large_image_dataset", "render_large"]

LARGE_DEFECT_TYPES: tuple[str, ...] = ("weave", "spot")
#: Period of the weave in native pixels.
WEAVE_PERIOD = 9.7  # incommensurate with the stride-8 feature grid: every phase is seen
_WEAVE_AMPLITUDE = 24.0
_MOTTLE_STD = 6.0
_NOISE_SIGMA = 2.0


def _weave(yy: np.ndarray, xx: np.ndarray, phase: np.ndarray, angle: float) -> np.ndarray:
    """The weave pattern at float pixel coordinates, turned by ``angle`` radians."""
    c, s = np.cos(angle), np.sin(angle)
    u, v = c * xx + s * yy, -s * xx + c * yy
    k = 2.0 * np.pi / WEAVE_PERIOD
    return _WEAVE_AMPLITUDE * np.sin(k * u + phase[0]) * np.sin(k * v + phase[1])


def render_large(
    size: int, seed: int, key: tuple[int, int], defect: str | None, defect_size: int = 20,
) -> tuple[np.ndarray, np.ndarray]:
    """One image and its mask.

    Parameters
    ----------
    size : image side in pixels (square).
    seed, key : the image is drawn from ``default_rng([seed, *key])``.
    defect : None for a good image, else one of :data:`LARGE_DEFECT_TYPES`.
    defect_size : disc diameter in pixels.

    Returns
    -------
    (image uint8 (size, size), mask bool (size, size)).
    """
    rng = np.random.default_rng([seed, *key])
    phase = rng.uniform(0, 2 * np.pi, 2)
    axis = np.arange(size, dtype=np.float32)
    k = np.float32(2.0 * np.pi / WEAVE_PERIOD)
    # Axis-aligned weave: separable, so it costs two vectors and one outer product.
    image = np.outer(np.sin(k * axis + phase[1]), np.sin(k * axis + phase[0]))
    image *= np.float32(_WEAVE_AMPLITUDE)
    mottle = ndimage.gaussian_filter(rng.standard_normal((size, size), np.float32), 4.0,
                                     truncate=3.0)
    image += mottle * np.float32(_MOTTLE_STD / max(float(mottle.std()), 1e-6))
    del mottle
    gy, gx = rng.uniform(-10, 10, 2) / size
    image += np.float32(128.0) + (gy * axis)[:, None] + (gx * axis)[None, :]
    mask = np.zeros((size, size), bool)
    if defect is not None:
        if defect not in LARGE_DEFECT_TYPES:
            raise DatasetError(f"unknown defect type {defect!r}; use one of "
                               f"{', '.join(LARGE_DEFECT_TYPES)}")
        r = defect_size / 2.0
        for _ in range(int(rng.integers(1, 4))):
            cy, cx = rng.uniform(r + 1, size - r - 1, 2)
            y0, y1 = int(cy - r), int(np.ceil(cy + r)) + 1
            x0, x1 = int(cx - r), int(np.ceil(cx + r)) + 1
            yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
            disc = (yy + 0.5 - cy) ** 2 + (xx + 0.5 - cx) ** 2 <= r * r
            window = image[y0:y1, x0:x1]
            if defect == "weave":
                old = _weave(yy, xx, phase, 0.0)
                new = _weave(yy, xx, phase, np.pi / 4)
                window[disc] += (new - old)[disc]
            else:
                shift = rng.uniform(24, 40) * rng.choice([-1.0, 1.0])
                window[disc] += np.float32(shift)
            mask[y0:y1, x0:x1] |= disc
    image += rng.standard_normal((size, size), np.float32) * np.float32(_NOISE_SIGMA)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8), mask


def make_large_image_dataset(
    out: str | Path,
    category: str = "large",
    n_train: int = 4,
    n_test: int = 8,
    size: int = 4096,
    defect_size: int = 20,
    seed: int = 0,
    progress: ProgressCallback | None = None,
) -> Path:
    """Write the dataset (see the module docs) and return ``out / category``.

    Parameters
    ----------
    out : dataset root.
    category : category folder name.
    n_train : good training images.
    n_test : test images; ``n_test // 4`` are good (at least one when ``n_test >= 2``), the
        others defective, the two types taking turns.
    size : image side in pixels.
    defect_size : defect disc diameter in pixels.
    seed : the same seed gives the same files.
    progress : reports ``(task, images done, total)``.

    Raises
    ------
    DatasetError : bad counts or sizes, or ``out / category`` exists.
    """
    if n_train < 1 or n_test < 0 or size < 64 or not 2 <= defect_size <= size // 4:
        raise DatasetError("need n_train >= 1, n_test >= 0, size >= 64 and "
                           "2 <= defect_size <= size / 4")
    target = Path(out) / category
    if target.exists():
        raise DatasetError(f"{target}: already exists; choose another folder")
    target.parent.mkdir(parents=True, exist_ok=True)
    n_good = max(n_test // 4, 1) if n_test >= 2 else 0
    jobs: list[tuple[str, str, int, str | None]] = [
        ("train", "good", i, None) for i in range(n_train)]
    jobs += [("test", "good", i, None) for i in range(n_good)]
    for i in range(n_test - n_good):
        name = LARGE_DEFECT_TYPES[i % len(LARGE_DEFECT_TYPES)]
        jobs.append(("test", name, i // len(LARGE_DEFECT_TYPES), name))
    with atomic_output_dir(target, marker=None) as tmp:
        for n, (split, folder, index, defect) in enumerate(
                track(jobs, f"synthesising {category}", progress)):
            image, mask = render_large(size, seed, (1 if split == "train" else 2, n), defect,
                                       defect_size)
            _save_png(image, tmp / split / folder / f"{index:03d}.png", compress_level=1)
            if defect is not None:
                _save_png(mask.astype(np.uint8) * 255,
                          tmp / "ground_truth" / folder / f"{index:03d}_mask.png", 1)
        (tmp / "test" / "good").mkdir(parents=True, exist_ok=True)
    return target
