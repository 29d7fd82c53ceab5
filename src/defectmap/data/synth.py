"""Procedural synthetic datasets in the MVTec AD layout, with pixel-exact masks.

Two kinds of product are drawn with NumPy only:

``object``
    a nut-like part (a lobed disc with a centre hole and a notch) on a lit background. Normal
    images vary in position, rotation, size, lighting direction and gain, and surface noise.
``texture``
    a woven fabric (product of two oriented sinusoids plus fibre noise). Normal images vary
    in weave phase, orientation, frequency, lighting and noise.

Five defect types, each with a mask that is exactly the set of changed pixels:

``scratch`` (a thin polyline with shifted brightness), ``contamination`` (a foreign blob),
``missing_part`` (a chunk of the part removed / a hole in the fabric), ``color_change``
(a tinted patch; a brightness change in grayscale datasets) and ``deformation`` (a bulge on
the part's outline / a patch of weave with the wrong orientation).

*Pixel-exact* means: every mask pixel differs from the defect-free rendering of the same
image by at least :data:`MIN_DEFECT_DELTA` grey levels before sensor noise, and no other pixel
differs at all (both renderings get the same noise). :func:`render_pair` exposes this for tests.

Layout written (the MVTec AD layout)::

    OUT/CATEGORY/train/good/000.png ...
    OUT/CATEGORY/test/good/000.png ...
    OUT/CATEGORY/test/<defect>/000.png ...
    OUT/CATEGORY/ground_truth/<defect>/000_mask.png ...   (0 = good, 255 = defect)

Determinism: every image is drawn from ``np.random.default_rng([seed, split, index])``, so
the same arguments give the same bytes (PNG encoding is deterministic).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image
from scipy import ndimage

from defectmap.errors import DatasetError
from defectmap.files import atomic_output_dir
from defectmap.progress import ProgressCallback, track

__all__ = [
    "DEFECT_TYPES",
    "MIN_DEFECT_DELTA",
    "make_synthetic_dataset",
    "render_defects",
    "render_pair",
]

DEFECT_TYPES: tuple[str, ...] = (
    "scratch",
    "contamination",
    "missing_part",
    "color_change",
    "deformation",
)
#: Smallest change (grey levels, before noise) of every pixel inside a defect mask.
MIN_DEFECT_DELTA = 16.0
_NOISE_SIGMA = 2.0
_NOISE_CLIP = 6.0
_LUMA = np.array([0.299, 0.587, 0.114])
_SPLIT_CODES = {"train": 1, "test": 2}

Kind = Literal["object", "texture"]
FloatImage = np.ndarray  # (S, S, 3) float64 in [0, 255]


@dataclass(frozen=True)
class _Style:
    """Per-dataset appearance, drawn once from the seed."""

    background: np.ndarray  # (3,)
    part: np.ndarray  # (3,)
    dark: np.ndarray  # (3,)
    light: np.ndarray  # (3,)
    radius_ratio: float
    orientation: float
    frequency: float


def _style(seed: int) -> _Style:
    rng = np.random.default_rng([seed, 0])
    part = rng.uniform(150, 200, 3)
    dark = rng.uniform(40, 90, 3)
    return _Style(
        background=rng.uniform(40, 80, 3),
        part=part,
        dark=dark,
        light=dark + rng.uniform(90, 130, 3),
        radius_ratio=float(rng.uniform(0.28, 0.33)),
        orientation=float(rng.uniform(0, np.pi)),
        frequency=float(rng.uniform(1 / 9, 1 / 6)),
    )


@dataclass
class _Scene:
    """A rendered defect-free image plus what the defect functions need to know."""

    image: FloatImage
    part: np.ndarray | None  # (S, S) bool, the part's pixels (object kind)
    background: FloatImage | None  # what shows where the part is missing (object kind)
    part_full: FloatImage | None  # part shading over the whole frame (object kind)
    geometry: dict[str, float]
    arrays: tuple[np.ndarray, ...] = ()  # texture: (fibres, light), reused by "deformation"


def _lighting(rng: np.random.Generator, size: int, yy: np.ndarray, xx: np.ndarray) -> tuple:
    angle = rng.uniform(0, 2 * np.pi)
    gain = rng.uniform(0.85, 1.15)
    ramp = ((xx - size / 2) * np.cos(angle) + (yy - size / 2) * np.sin(angle)) / (size / 2)
    return gain * (1.0 + 0.12 * ramp), angle


def _smooth_noise(rng: np.random.Generator, size: int, sigma: float) -> np.ndarray:
    field = ndimage.gaussian_filter(rng.standard_normal((size, size)), sigma, mode="wrap")
    return field / (field.std() + 1e-12)


def _render_object(rng: np.random.Generator, size: int, style: _Style) -> _Scene:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    light, light_angle = _lighting(rng, size, yy, xx)
    background = style.background * light[..., None]
    background = background + 4.0 * _smooth_noise(rng, size, size / 16)[..., None]

    cx = size / 2 + rng.uniform(-0.06, 0.06) * size
    cy = size / 2 + rng.uniform(-0.06, 0.06) * size
    radius = style.radius_ratio * size * rng.uniform(0.95, 1.05)
    theta = rng.uniform(0, 2 * np.pi)
    dx, dy = xx - cx, yy - cy
    r = np.hypot(dx, dy)
    phi = np.arctan2(dy, dx)
    rel = np.angle(np.exp(1j * (phi - theta)))  # angle relative to the notch, in (-pi, pi]
    outline = radius * (1.0 + 0.05 * np.cos(6 * rel))
    outer = r <= outline
    hole = r <= 0.38 * radius
    notch = (np.abs(rel) < 0.18) & (r > 0.78 * radius)
    part = outer & ~hole & ~notch

    shade = 0.78 + 0.22 * np.cos(phi - light_angle)
    rings = 6.0 * np.sin(2 * np.pi * 3.0 * r / radius)
    colour = style.part * rng.uniform(0.95, 1.05, 3)
    part_full = colour * (shade * light)[..., None] + rings[..., None]
    part_full = part_full + 3.0 * _smooth_noise(rng, size, 2.0)[..., None]
    image = np.where(part[..., None], part_full, background)
    geometry = {"cx": cx, "cy": cy, "radius": radius, "theta": theta}
    return _Scene(np.clip(image, 0, 255), part, np.clip(background, 0, 255),
                  np.clip(part_full, 0, 255), geometry)


def _weave(size: int, style: _Style, orientation: float, frequency: float,
           phases: tuple[float, float], fibres: np.ndarray, light: np.ndarray) -> FloatImage:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    u = xx * np.cos(orientation) + yy * np.sin(orientation)
    v = -xx * np.sin(orientation) + yy * np.cos(orientation)
    weave = np.sin(2 * np.pi * frequency * u + phases[0]) * np.sin(
        2 * np.pi * frequency * v + phases[1]
    )
    value = 0.5 + 0.3 * weave + 0.08 * fibres
    image = style.dark + (style.light - style.dark) * value[..., None]
    return np.clip(image * light[..., None], 0, 255)


def _render_texture(rng: np.random.Generator, size: int, style: _Style) -> _Scene:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    light, _ = _lighting(rng, size, yy, xx)
    orientation = style.orientation + rng.normal(0, np.deg2rad(3))
    frequency = style.frequency * rng.uniform(0.96, 1.04)
    phases = (float(rng.uniform(0, 2 * np.pi)), float(rng.uniform(0, 2 * np.pi)))
    raw = ndimage.gaussian_filter(rng.standard_normal((size, size)), (0.7, 3.0), mode="wrap")
    fibres = raw / (raw.std() + 1e-12)
    image = _weave(size, style, orientation, frequency, phases, fibres, light)
    geometry = {"orientation": orientation, "frequency": frequency,
                "phase0": phases[0], "phase1": phases[1]}
    return _Scene(image, None, None, None, geometry, (fibres, light))


# --------------------------------------------------------------------------- defects


def _segment_distance(yy: np.ndarray, xx: np.ndarray, p: np.ndarray, q: np.ndarray) -> np.ndarray:
    d = q - p
    t = np.clip(((xx - p[0]) * d[0] + (yy - p[1]) * d[1]) / max(float(d @ d), 1e-9), 0, 1)
    return np.hypot(xx - (p[0] + t * d[0]), yy - (p[1] + t * d[1]))


def _random_point(rng: np.random.Generator, where: np.ndarray) -> np.ndarray:
    ys, xs = np.nonzero(where)
    i = rng.integers(len(ys))
    return np.array([xs[i], ys[i]], dtype=np.float64)


def _blob(rng: np.random.Generator, size: int, centre: np.ndarray, scale: float) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    region = np.zeros((size, size), bool)
    for _ in range(int(rng.integers(2, 5))):
        c = centre + rng.normal(0, scale * 0.6, 2)
        rad = scale * rng.uniform(0.5, 1.0)
        region |= np.hypot(xx - c[0], yy - c[1]) <= rad
    return region


def _contrast_shift(values: np.ndarray, amount: float) -> np.ndarray:
    """Move each value by ``amount`` away from the nearer end of [0, 255]."""
    return np.where(values < 128, values + amount, values - amount)


def _scratch(rng, scene: _Scene, size: int, style: _Style):
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    allowed = scene.part if scene.part is not None else np.ones((size, size), bool)
    start = _random_point(rng, allowed)
    angle = rng.uniform(0, 2 * np.pi)
    width = rng.uniform(1.2, 2.4)
    region = np.zeros((size, size), bool)
    point = start
    for _ in range(int(rng.integers(2, 4))):
        angle += rng.normal(0, 0.35)
        step = size * rng.uniform(0.07, 0.14)
        nxt = point + step * np.array([np.cos(angle), np.sin(angle)])
        region |= _segment_distance(yy, xx, point, nxt) <= width / 2
        point = nxt
    region &= allowed
    new = _contrast_shift(scene.image, rng.uniform(30.0, 70.0))
    return new, region


def _contamination(rng, scene: _Scene, size: int, style: _Style):
    allowed = scene.part if scene.part is not None else np.ones((size, size), bool)
    region = _blob(rng, size, _random_point(rng, allowed), size * rng.uniform(0.02, 0.04))
    region &= allowed
    colour = rng.uniform([60, 30, 10], [140, 90, 50])
    spots = 10.0 * _smooth_noise(rng, size, 1.5)[..., None]
    opacity = rng.uniform(0.5, 1.0)  # a thin film lets the surface show through
    new = (1 - opacity) * scene.image + opacity * (colour + spots)
    return new, region


def _missing_part(rng, scene: _Scene, size: int, style: _Style):
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    if scene.part is None:  # a hole in the fabric shows the dark backing
        centre = rng.uniform(0.15, 0.85, 2) * size
        axes = size * rng.uniform(0.03, 0.06, 2)
        a = rng.uniform(0, np.pi)
        u = (xx - centre[0]) * np.cos(a) + (yy - centre[1]) * np.sin(a)
        v = -(xx - centre[0]) * np.sin(a) + (yy - centre[1]) * np.cos(a)
        region = (u / axes[0]) ** 2 + (v / axes[1]) ** 2 <= 1
        new = np.full_like(scene.image, rng.uniform(10.0, 50.0))
        return new, region
    g = scene.geometry
    ang = g["theta"] + rng.uniform(0.5, 2 * np.pi - 0.5)  # away from the notch
    centre = np.array([g["cx"], g["cy"]]) + g["radius"] * np.array([np.cos(ang), np.sin(ang)])
    rad = g["radius"] * rng.uniform(0.15, 0.3)
    region = (np.hypot(xx - centre[0], yy - centre[1]) <= rad) & scene.part
    assert scene.background is not None
    return scene.background, region


def _color_change(rng, scene: _Scene, size: int, style: _Style):
    allowed = scene.part if scene.part is not None else np.ones((size, size), bool)
    region = _blob(rng, size, _random_point(rng, allowed), size * rng.uniform(0.035, 0.06))
    region &= allowed
    tint = rng.choice([-1.0, 1.0]) * rng.uniform(0.5, 1.0) * np.array([55.0, -35.0, -35.0])
    tint = np.roll(tint, int(rng.integers(3)))
    return scene.image + tint, region


def _deformation(rng, scene: _Scene, size: int, style: _Style):
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    if scene.part is None:  # a patch of weave at the wrong angle (a fold / misweave)
        g = scene.geometry
        fibres, light = scene.arrays
        wrong = _weave(size, style, g["orientation"] + rng.uniform(0.25, 0.7),
                       g["frequency"] * rng.uniform(1.1, 1.4), (g["phase0"], g["phase1"]),
                       fibres, light)
        centre = rng.uniform(0.15, 0.85, 2) * size
        region = np.hypot(xx - centre[0], yy - centre[1]) <= size * rng.uniform(0.06, 0.1)
        return wrong, region
    g = scene.geometry
    ang = g["theta"] + rng.uniform(0.6, 2 * np.pi - 0.6)  # away from the notch
    centre = np.array([g["cx"], g["cy"]]) + 1.02 * g["radius"] * np.array(
        [np.cos(ang), np.sin(ang)]
    )
    bump = np.hypot(xx - centre[0], yy - centre[1]) <= g["radius"] * rng.uniform(0.12, 0.24)
    outside = np.hypot(xx - g["cx"], yy - g["cy"]) > 0.5 * g["radius"]
    region = bump & ~scene.part & outside
    assert scene.part_full is not None
    return scene.part_full, region


_DEFECTS: dict[str, Callable] = {
    "scratch": _scratch,
    "contamination": _contamination,
    "missing_part": _missing_part,
    "color_change": _color_change,
    "deformation": _deformation,
}


def _to_channels(image: FloatImage, grayscale: bool) -> FloatImage:
    if grayscale:
        return np.clip(image @ _LUMA, 0, 255)[..., None]
    return np.clip(image, 0, 255)


def _finish(image: FloatImage, noise: np.ndarray) -> np.ndarray:
    out = np.clip(np.rint(image + noise), 0, 255).astype(np.uint8)
    return out[..., 0] if out.shape[2] == 1 else out


def render_pair(
    kind: Kind,
    size: int,
    grayscale: bool,
    seed: int,
    key: tuple[int, ...],
    defect: str | None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Render one image and, optionally, its defective version.

    Parameters
    ----------
    kind : ``"object"`` or ``"texture"``.
    size : image side in pixels.
    grayscale : draw one channel instead of RGB.
    seed : dataset seed (fixes the style of the whole dataset).
    key : per-image key, combined with ``seed`` to seed this image's generator.
    defect : one of :data:`DEFECT_TYPES`, or ``None`` for a good image.

    Returns
    -------
    normal : np.ndarray
        uint8 (S, S, 3) or (S, S), the defect-free image.
    image : np.ndarray
        uint8, the same image with the defect (equal to ``normal`` when ``defect`` is None).
    mask : np.ndarray
        bool (S, S), exactly the pixels where ``image`` differs from ``normal``.
    """
    normal, image, masks = render_defects(kind, size, grayscale, seed, key,
                                          [] if defect is None else [defect])
    return normal, image, masks[0] if masks else np.zeros((size, size), bool)


def render_defects(
    kind: Kind,
    size: int,
    grayscale: bool,
    seed: int,
    key: tuple[int, ...],
    defects: Sequence[str],
) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """Render one image with several defects, one mask per defect.

    Parameters
    ----------
    kind, size, grayscale, seed, key : as in :func:`render_pair`.
    defects : names from :data:`DEFECT_TYPES`, applied in order (a later one may cover
        part of an earlier one); empty for a good image.

    Returns
    -------
    normal : uint8 image without defects.
    image : uint8 image with the defects.
    masks : one bool (S, S) mask per defect: the pixels that defect changed. Their union is
        exactly where ``image`` differs from ``normal``.
    """
    if kind not in ("object", "texture"):
        raise DatasetError(f"unknown synthetic kind {kind!r}; use 'object' or 'texture'")
    for defect in defects:
        if defect not in _DEFECTS:
            raise DatasetError(
                f"unknown defect type {defect!r}; known: {', '.join(DEFECT_TYPES)}")
    style = _style(seed)
    rng = np.random.default_rng([seed, *key])
    render = _render_object if kind == "object" else _render_texture
    scene = render(rng, size, style)
    channels = 1 if grayscale else 3
    noise = np.clip(rng.normal(0, _NOISE_SIGMA, (size, size, channels)), -_NOISE_CLIP,
                    _NOISE_CLIP)
    old = _to_channels(scene.image, grayscale)
    normal = _finish(old, noise)
    if not defects:
        return normal, normal.copy(), []
    min_area = max(12, int(0.0015 * size * size))
    current = old
    masks = []
    for defect in defects:
        for _ in range(50):
            new, region = _DEFECTS[defect](rng, scene, size, style)
            if region.sum() >= min_area:
                break
        else:  # pragma: no cover - geometry makes this practically impossible
            raise DatasetError(f"could not place a {defect} defect on this image")
        new = _to_channels(np.broadcast_to(new, scene.image.shape), grayscale)
        # Pixel-exact masks: every region pixel changes by >= MIN_DEFECT_DELTA, nothing else does.
        weak = region & (np.abs(new - old).max(axis=2) < MIN_DEFECT_DELTA)
        new = np.where(weak[..., None], _contrast_shift(old, MIN_DEFECT_DELTA + 16), new)
        current = np.where(region[..., None], new, current)
        masks.append(region)
    return normal, _finish(current, noise), masks


def _save_png(array: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, format="PNG")


def make_synthetic_dataset(
    out: str | Path,
    category: str = "synthetic",
    kind: Kind = "object",
    n_train: int = 60,
    n_test: int = 40,
    size: int = 256,
    grayscale: bool = False,
    seed: int = 0,
    overwrite: bool = False,
    progress: ProgressCallback | None = None,
) -> Path:
    """Write a synthetic dataset in the MVTec AD layout and return its category folder.

    Parameters
    ----------
    out : dataset root; the category is written to ``out / category``.
    category : category (product) name, a plain folder name.
    kind : ``"object"`` (a part on a background) or ``"texture"`` (a woven surface).
    n_train : number of good training images.
    n_test : number of test images; ``n_test // 2`` are defective, the defect types taking
        turns in the order of :data:`DEFECT_TYPES`, the rest are good.
    size : image side in pixels (images are square).
    grayscale : write 8-bit gray PNGs instead of RGB.
    seed : the same seed gives byte-identical files.
    overwrite : replace an existing ``out / category``; otherwise that is an error.
    progress : reports ``(task, done, total)`` (see :mod:`defectmap.progress`).

    Returns
    -------
    Path
        ``out / category``. The folder appears complete or not at all (written to a
        temporary folder beside it, then renamed).
    """
    if not category or Path(category).name != category or category.startswith("."):
        raise DatasetError(f"invalid category name {category!r}: use a plain folder name")
    if kind not in ("object", "texture"):
        raise DatasetError(f"unknown synthetic kind {kind!r}; use 'object' or 'texture'")
    if n_train < 1 or n_test < 0 or size < 32:
        raise DatasetError("need n_train >= 1, n_test >= 0 and size >= 32 for synthetic data")
    out = Path(out)
    target = out / category
    if target.exists() and not overwrite:
        raise DatasetError(f"{target}: already exists; choose another folder or overwrite")
    out.mkdir(parents=True, exist_ok=True)

    n_defective = n_test // 2
    jobs: list[tuple[str, str, int, str | None]] = [
        ("train", "good", i, None) for i in range(n_train)
    ]
    jobs += [("test", "good", i, None) for i in range(n_test - n_defective)]
    per_type: dict[str, int] = {}
    for i in range(n_defective):
        name = DEFECT_TYPES[i % len(DEFECT_TYPES)]
        jobs.append(("test", name, per_type.get(name, 0), name))
        per_type[name] = per_type.get(name, 0) + 1

    with atomic_output_dir(target, marker=None) as tmp:  # replaced only when complete
        for n, (split, folder, index, defect) in enumerate(
            track(jobs, f"synthesising {category}", progress)
        ):
            position = n if split == "train" else n - n_train
            _, image, mask = render_pair(kind, size, grayscale, seed,
                                         (_SPLIT_CODES[split], position), defect)
            _save_png(image, tmp / split / folder / f"{index:03d}.png")
            if defect is not None:
                _save_png(mask.astype(np.uint8) * 255,
                          tmp / "ground_truth" / folder / f"{index:03d}_mask.png")
        (tmp / "train" / "good").mkdir(parents=True, exist_ok=True)
        (tmp / "test" / "good").mkdir(parents=True, exist_ok=True)
    return target
