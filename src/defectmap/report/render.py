"""The one renderer of anomaly maps: colour scale, heatmap, overlay, contours, PNG bytes.

The report's gallery, ``predict``'s overlays and the service's pictures all come from here,
so a colour means the same thing everywhere: the ``jet`` colour map (blue = normal, red =
anomalous), the heatmap blended over the image more strongly where it is higher, and the
predicted defect regions outlined in magenta (:data:`PRED_COLOUR`; ground truth, in the
report, in green :data:`GT_COLOUR`). Pure functions of arrays; nothing here reads or writes
files. Imports no torch.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from functools import lru_cache

import numpy as np
from PIL import Image
from scipy import ndimage

__all__ = [
    "GT_COLOUR",
    "PRED_COLOUR",
    "colour_scale",
    "draw_contour",
    "encode_png",
    "heatmap_rgb",
    "overlay_rgb",
    "resize_image",
    "resize_map",
    "resize_mask",
]

#: Colour of ground-truth contours (green) and of predicted-region contours (magenta).
GT_COLOUR = (0, 220, 0)
PRED_COLOUR = (255, 0, 255)


@lru_cache(maxsize=1)
def _lut() -> np.ndarray:
    """The 256-entry ``jet`` colour table, shape (256, 3) uint8."""
    from matplotlib import colormaps

    table = colormaps["jet"](np.linspace(0.0, 1.0, 256))[:, :3]
    return np.round(table * 255.0).astype(np.uint8)


def colour_scale(
    amap: np.ndarray,
    normalize_map: Callable[[np.ndarray], np.ndarray] | None = None,
    vmin: float | None = None,
    vmax: float | None = None,
) -> np.ndarray:
    """Map raw anomaly values to [0, 1] for colouring.

    With a calibration, pass its ``normalize_map``: the scale is then fixed across images
    (0.5 exactly at the calibrated pixel threshold), so the same colour means the same thing
    on every image. With ``vmin`` and ``vmax``, values are stretched linearly between them
    (the report shares one such scale across its gallery). With neither, each map is
    stretched from its own minimum to its maximum.

    Parameters
    ----------
    amap : np.ndarray
        Anomaly map, shape (H, W), higher = more anomalous.
    normalize_map : callable, optional
        (H, W) -> (H, W) monotone map into [0, 1], e.g. ``Calibration.normalize_map``.
    vmin, vmax : float, optional
        Fixed linear scale (both or neither; ignored with ``normalize_map``).

    Returns
    -------
    np.ndarray
        Shape (H, W) float32 in [0, 1].
    """
    values = np.asarray(amap, dtype=np.float32)
    if normalize_map is not None:
        scaled = np.asarray(normalize_map(values), dtype=np.float32)
    else:
        lo = float(values.min()) if vmin is None else float(vmin)
        hi = float(values.max()) if vmax is None else float(vmax)
        scaled = (values - lo) / np.float32(hi - lo) if hi > lo else np.zeros_like(values)
    return np.clip(np.nan_to_num(scaled, nan=0.0), 0.0, 1.0).astype(np.float32)


def heatmap_rgb(scaled: np.ndarray) -> np.ndarray:
    """Colour a map already scaled to [0, 1]: shape (H, W) -> (H, W, 3) uint8."""
    index = np.round(np.clip(scaled, 0.0, 1.0) * 255.0).astype(np.uint8)
    return _lut()[index]


def resize_image(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """An (H, W) or (H, W, 3) uint8 image as RGB at ``size`` = (width, height), bilinear."""
    pil = Image.fromarray(np.asarray(image))
    if pil.mode != "RGB":
        pil = pil.convert("RGB")
    if pil.size != size:
        pil = pil.resize(size, Image.Resampling.BILINEAR)
    return np.asarray(pil)


def resize_map(values: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A float (H, W) map at ``size`` = (width, height), bilinear, float32."""
    pil = Image.fromarray(np.asarray(values, dtype=np.float32), mode="F")
    return np.asarray(pil.resize(size, Image.Resampling.BILINEAR), dtype=np.float32)


def resize_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A bool (H, W) mask at ``size`` = (width, height), nearest neighbour."""
    pil = Image.fromarray(np.asarray(mask, dtype=np.uint8) * 255)
    return np.asarray(pil.resize(size, Image.Resampling.NEAREST)) > 127


def draw_contour(
    rgb: np.ndarray, mask: np.ndarray | None, colour: tuple[int, int, int], width: int = 2
) -> None:
    """Paint the ``width``-pixel inner boundary of ``mask`` (H, W) bool onto ``rgb`` in place."""
    if mask is None or not mask.any():
        return
    inner = ndimage.binary_erosion(mask, iterations=width, border_value=0)
    rgb[mask & ~inner] = colour


def overlay_rgb(
    image: np.ndarray,
    scaled: np.ndarray,
    mask: np.ndarray | None = None,
    contour_width: int | None = None,
) -> np.ndarray:
    """Blend the heatmap over the image and outline the predicted defect regions.

    Parameters
    ----------
    image : np.ndarray
        Input image, (H, W, 3) or (H, W) uint8.
    scaled : np.ndarray
        Map scaled to [0, 1] (see :func:`colour_scale`), shape (H', W'); resized to the
        image when the shapes differ.
    mask : np.ndarray of bool, optional
        Predicted defect mask, shape (H', W'), outlined in :data:`PRED_COLOUR`.
    contour_width : int, optional
        Outline width in pixels; default ``max(1, round(max(H, W) / 300))``.

    Returns
    -------
    np.ndarray
        Shape (H, W, 3) uint8.
    """
    rgb = np.asarray(image)
    height, width = rgb.shape[:2]
    rgb = resize_image(rgb, (width, height))
    if scaled.shape != (height, width):
        scaled = resize_map(scaled, (width, height))
    # Low values barely tint the image; high values dominate it.
    alpha = (0.15 + 0.6 * scaled)[:, :, None]
    blended = rgb.astype(np.float32) * (1.0 - alpha) + heatmap_rgb(scaled) * alpha
    out = np.round(blended).astype(np.uint8)
    if mask is not None:
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != (height, width):
            mask = resize_mask(mask, (width, height))
        line = contour_width or max(1, round(max(height, width) / 300))
        draw_contour(out, mask, PRED_COLOUR, width=line)
    return out


def encode_png(rgb: np.ndarray) -> bytes:
    """Encode an (H, W, 3) uint8 array as PNG bytes (fast compression level)."""
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()
