"""PNG pictures of one inspection: the heatmap and the overlay on the input image.

Pure functions of arrays (no I/O besides encoding to PNG bytes), shared by the HTTP
endpoints and by the optional on-disk store.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw

__all__ = ["color_scale", "encode_png", "heatmap_rgb", "overlay_rgb"]


@lru_cache(maxsize=1)
def _lut() -> np.ndarray:
    """The 256-entry ``jet`` colour table, shape (256, 3) uint8."""
    from matplotlib import colormaps

    table = colormaps["jet"](np.linspace(0.0, 1.0, 256))[:, :3]
    return np.round(table * 255.0).astype(np.uint8)


def color_scale(
    amap: np.ndarray, normalize_map: Callable[[np.ndarray], np.ndarray] | None = None
) -> np.ndarray:
    """Map raw anomaly values to [0, 1] for colouring.

    With a calibration, pass its ``normalize_map``: the scale is then fixed across images
    (0.5 exactly at the calibrated pixel threshold), so the same colour means the same thing
    on every image. Without one, each map is stretched from its own minimum to its maximum.

    Parameters
    ----------
    amap : np.ndarray
        Anomaly map, shape (H, W), higher = more anomalous.
    normalize_map : callable, optional
        (H, W) -> (H, W) monotone map into [0, 1], e.g. ``Calibration.normalize_map``.

    Returns
    -------
    np.ndarray
        Shape (H, W) float32 in [0, 1].
    """
    values = np.asarray(amap, dtype=np.float32)
    if normalize_map is not None:
        scaled = np.asarray(normalize_map(values), dtype=np.float32)
    else:
        lo, hi = float(values.min()), float(values.max())
        scaled = (values - lo) / np.float32(hi - lo) if hi > lo else np.zeros_like(values)
    return np.clip(np.nan_to_num(scaled, nan=0.0), 0.0, 1.0).astype(np.float32)


def heatmap_rgb(scaled: np.ndarray) -> np.ndarray:
    """Colour a map already scaled to [0, 1]: shape (H, W) → (H, W, 3) uint8."""
    index = np.round(np.clip(scaled, 0.0, 1.0) * 255.0).astype(np.uint8)
    return _lut()[index]


def overlay_rgb(
    image: np.ndarray,
    scaled: np.ndarray,
    bboxes: Sequence[Sequence[int]] = (),
) -> np.ndarray:
    """Blend the heatmap over the image and outline the detected regions.

    Parameters
    ----------
    image : np.ndarray
        Input image, (H, W, 3) or (H, W) uint8.
    scaled : np.ndarray
        Map scaled to [0, 1] (see :func:`color_scale`), shape (H, W) (resized if different).
    bboxes : sequence of (x0, y0, x1, y1)
        Region boxes in pixels, end-exclusive like ``defectmap.calibrate.Region.bbox``;
        drawn as white-on-black rectangles.

    Returns
    -------
    np.ndarray
        Shape (H, W, 3) uint8.
    """
    rgb = np.asarray(image)
    if rgb.ndim == 2:
        rgb = np.repeat(rgb[:, :, None], 3, axis=2)
    height, width = rgb.shape[:2]
    if scaled.shape != (height, width):
        resized = Image.fromarray(scaled.astype(np.float32)).resize(
            (width, height), Image.Resampling.BILINEAR
        )
        scaled = np.asarray(resized, dtype=np.float32)
    # Low values barely tint the image; high values dominate it.
    alpha = (0.15 + 0.6 * scaled)[:, :, None]
    blended = rgb.astype(np.float32) * (1.0 - alpha) + heatmap_rgb(scaled) * alpha
    picture = Image.fromarray(np.round(blended).astype(np.uint8))
    draw = ImageDraw.Draw(picture)
    line = max(1, round(min(height, width) / 200))
    for box in bboxes:
        x0, y0, x1, y1 = (int(v) for v in box)
        x1, y1 = max(x0, x1 - 1), max(y0, y1 - 1)  # end-exclusive -> last pixel
        draw.rectangle((x0 - line, y0 - line, x1 + line, y1 + line), outline=(0, 0, 0), width=line)
        draw.rectangle((x0, y0, x1, y1), outline=(255, 255, 255), width=line)
    return np.asarray(picture)


def encode_png(rgb: np.ndarray) -> bytes:
    """Encode an (H, W, 3) uint8 array as PNG bytes (fast compression level)."""
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()
