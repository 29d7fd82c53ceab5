"""Figures of the evaluation report: curves and histograms (matplotlib, Agg) and gallery panels.

The figure functions return PNG bytes, so the caller decides where they go (a file beside
the report and a base64 ``<img>`` inside it). Nothing here reads files or prints.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image, ImageDraw
from scipy import ndimage

#: Colour of the ground-truth contour (green) and of the predicted-region contour (magenta).
GT_COLOUR = (0, 220, 0)
PRED_COLOUR = (255, 0, 255)


def _png(fig: Figure) -> bytes:
    """Render a matplotlib figure with the Agg canvas (no pyplot, no display) to PNG bytes."""
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()


def roc_figure(fpr: np.ndarray, tpr: np.ndarray, auroc: float | None) -> bytes:
    """Image-level ROC curve.

    Parameters
    ----------
    fpr, tpr : np.ndarray, shape (K,)
        False and true positive rates of the curve, from ``metrics.roc_curve``.
    auroc : float or None
        The area, shown in the legend.
    """
    fig = Figure(figsize=(4.2, 4.0))
    ax = fig.add_subplot()
    label = "ROC" if auroc is None else f"ROC (AUROC = {auroc:.3f})"
    ax.plot(fpr, tpr, color="#1f77b4", lw=2, label=label, drawstyle="default")
    ax.plot([0, 1], [0, 1], color="grey", lw=1, ls="--", label="chance")
    ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="false positive rate (good images)",
           ylabel="true positive rate (defective images)", title="Image-level ROC")
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return _png(fig)


def pro_figure(fpr: np.ndarray, pro: np.ndarray, fpr_limit: float, aupro: float | None) -> bytes:
    """Per-region overlap (PRO) curve with the integration limit marked and the area shaded.

    Parameters
    ----------
    fpr, pro : np.ndarray, shape (K,)
        Pixel false positive rate and mean per-region overlap, from ``metrics.pro_curve``.
    fpr_limit : float
        Upper FPR limit of the AU-PRO integral (0.3 in the MVTec AD protocol).
    aupro : float or None
        The normalised area up to ``fpr_limit``, shown in the legend.
    """
    fig = Figure(figsize=(4.2, 4.0))
    ax = fig.add_subplot()
    fpr = np.asarray(fpr, dtype=np.float64)
    pro = np.asarray(pro, dtype=np.float64)
    label = "PRO" if aupro is None else f"PRO (AU-PRO@{fpr_limit:g} = {aupro:.3f})"
    ax.plot(fpr, pro, color="#d62728", lw=2, label=label)
    inside = fpr <= fpr_limit
    if inside.any():
        # Shade the integrated part, closing it at the limit by linear interpolation.
        xs = np.append(fpr[inside], fpr_limit)
        ys = np.append(pro[inside], np.interp(fpr_limit, fpr, pro))
        ax.fill_between(xs, 0, ys, color="#d62728", alpha=0.15)
    ax.axvline(fpr_limit, color="black", ls="--", lw=1, label=f"FPR limit = {fpr_limit:g}")
    ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="pixel false positive rate",
           ylabel="per-region overlap", title="PRO curve")
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return _png(fig)


def histogram_figure(
    scores: np.ndarray, labels: np.ndarray, threshold: float | None = None
) -> bytes:
    """Histograms of the image scores of good vs defective test images.

    Parameters
    ----------
    scores : np.ndarray, shape (N,)
        Raw image anomaly scores (higher = more anomalous).
    labels : np.ndarray, shape (N,)
        0 = good, 1 = defective.
    threshold : float or None
        The calibrated image threshold, drawn as a vertical line when given.
    """
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels)
    fig = Figure(figsize=(5.5, 4.0))
    ax = fig.add_subplot()
    finite = scores[np.isfinite(scores)]
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    if threshold is not None and np.isfinite(threshold):
        lo, hi = min(lo, threshold), max(hi, threshold)
    if hi <= lo:
        hi = lo + 1.0
    bins = [float(b) for b in np.linspace(lo, hi, 31)]
    for value, name, colour in ((0, "good", "#2ca02c"), (1, "defective", "#d62728")):
        part = scores[labels == value]
        if part.size:
            ax.hist(part, bins=bins, alpha=0.55, color=colour, label=f"{name} (n={part.size})")
    if threshold is not None and np.isfinite(threshold):
        ax.axvline(threshold, color="black", ls="--", lw=1, label="calibrated threshold")
    ax.set(xlabel="image anomaly score", ylabel="number of test images",
           title="Score distribution")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return _png(fig)


def _resize_image(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize an (H,W) or (H,W,3) uint8 image to ``size`` = (width, height); RGB out."""
    pil = Image.fromarray(image)
    if pil.mode != "RGB":
        pil = pil.convert("RGB")
    return np.asarray(pil.resize(size, Image.Resampling.BILINEAR))


def _resize_map(values: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize a float (H,W) map to ``size`` = (width, height) with bilinear interpolation."""
    pil = Image.fromarray(np.asarray(values, dtype=np.float32), mode="F")
    return np.asarray(pil.resize(size, Image.Resampling.BILINEAR), dtype=np.float32)


def _resize_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize a bool (H,W) mask to ``size`` = (width, height), nearest neighbour."""
    pil = Image.fromarray(np.asarray(mask, dtype=np.uint8) * 255)
    return np.asarray(pil.resize(size, Image.Resampling.NEAREST)) > 127


def _draw_contour(rgb: np.ndarray, mask: np.ndarray | None, colour: tuple[int, int, int],
                  width: int = 2) -> None:
    """Paint the ``width``-pixel boundary of ``mask`` (H,W) bool onto ``rgb`` (H,W,3) in place."""
    if mask is None or not mask.any():
        return
    inner = ndimage.binary_erosion(mask, iterations=width, border_value=0)
    rgb[mask & ~inner] = colour


def heat_colours(values: np.ndarray, vmin: float, vmax: float) -> np.ndarray:
    """Map a float (H,W) array to (H,W,3) uint8 colours of the ``jet`` colour map."""
    from matplotlib import colormaps

    span = vmax - vmin if vmax > vmin else 1.0
    scaled = np.clip((np.asarray(values, dtype=np.float64) - vmin) / span, 0.0, 1.0)
    rgba = colormaps["jet"](scaled, bytes=True)
    return np.asarray(rgba[..., :3], dtype=np.uint8)


def gallery_panel(
    image: np.ndarray,
    anomaly_map: np.ndarray,
    gt_mask: np.ndarray | None,
    pred_mask: np.ndarray | None,
    vmin: float,
    vmax: float,
    caption: str,
    thumb: int = 192,
) -> bytes:
    """One gallery row: input | heatmap overlay | ground-truth contour | predicted contour.

    Parameters
    ----------
    image : np.ndarray, shape (H, W, 3) or (H, W), uint8
        The test image at native size.
    anomaly_map : np.ndarray, shape (H', W'), float
        Its anomaly map (resized to the thumbnail, so any size works).
    gt_mask, pred_mask : np.ndarray of bool, shape (H', W'), or None
        Ground-truth defect mask and calibrated predicted-defect mask; ``None`` = unknown.
    vmin, vmax : float
        Colour scale of the heatmap, shared by every panel of the report so that colours
        compare across images.
    caption : str
        Text drawn above the row.
    thumb : int
        Longest side of each panel in pixels (the gallery stays small).
    """
    h, w = image.shape[:2]
    scale = min(1.0, thumb / max(h, w))  # downscale only
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    base = _resize_image(image, size)
    heat = heat_colours(_resize_map(anomaly_map, size), vmin, vmax)
    overlay = (0.5 * base + 0.5 * heat).astype(np.uint8)
    gt_panel = base.copy()
    if gt_mask is not None:
        _draw_contour(gt_panel, _resize_mask(gt_mask, size), GT_COLOUR)
    pred_panel = base.copy()
    if pred_mask is not None:
        if gt_mask is not None:
            # Ground truth drawn thinly under the prediction for direct comparison.
            _draw_contour(pred_panel, _resize_mask(gt_mask, size), GT_COLOUR, width=1)
        _draw_contour(pred_panel, _resize_mask(pred_mask, size), PRED_COLOUR)

    gap, header = 6, 30
    width = 4 * size[0] + 3 * gap
    canvas = Image.new("RGB", (width, size[1] + header), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    draw.text((2, 2), caption, fill=(0, 0, 0))
    titles = ("input", "heatmap", "ground truth", "predicted")
    for i, (panel, title) in enumerate(zip((base, overlay, gt_panel, pred_panel), titles,
                                           strict=True)):
        canvas.paste(Image.fromarray(panel), (i * (size[0] + gap), header))
        draw.text((i * (size[0] + gap) + 2, 16), title, fill=(90, 90, 90))
    buf = io.BytesIO()
    canvas.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def overlay_png(
    image: np.ndarray,
    anomaly_map: np.ndarray,
    pred_mask: np.ndarray | None,
    vmin: float,
    vmax: float,
) -> bytes:
    """Full-size overlay for ``predict``: image blended with its heatmap, regions outlined.

    Parameters
    ----------
    image : np.ndarray, shape (H, W, 3) or (H, W), uint8
    anomaly_map : np.ndarray, shape (H', W'), float (resized to the image if it differs)
    pred_mask : np.ndarray of bool, shape (H', W'), or None
        Predicted defect regions, outlined in magenta.
    vmin, vmax : float
        Colour scale of the heatmap.
    """
    h, w = image.shape[:2]
    base = _resize_image(image, (w, h))
    values = np.asarray(anomaly_map, dtype=np.float32)
    if values.shape != (h, w):
        values = _resize_map(values, (w, h))
    out = (0.55 * base + 0.45 * heat_colours(values, vmin, vmax)).astype(np.uint8)
    if pred_mask is not None:
        mask = np.asarray(pred_mask, dtype=bool)
        if mask.shape != (h, w):
            mask = _resize_mask(mask, (w, h))
        _draw_contour(out, mask, PRED_COLOUR, width=max(1, round(max(h, w) / 300)))
    buf = io.BytesIO()
    Image.fromarray(out).save(buf, format="PNG")
    return buf.getvalue()


def shared_colour_scale(maps: Sequence[np.ndarray], labels: np.ndarray) -> tuple[float, float]:
    """A heatmap colour scale shared by all gallery panels.

    ``vmin`` is the median pixel score of good test images (a typical normal pixel shows
    blue), ``vmax`` the 99.9th percentile over all maps (one hot pixel does not wash out
    the rest). Computed on every 4th pixel of each map to stay cheap on large images.
    """
    labels = np.asarray(labels)
    good = [np.asarray(m)[::4, ::4].ravel() for m, y in zip(maps, labels, strict=True) if y == 0]
    every = [np.asarray(m)[::4, ::4].ravel() for m in maps]
    if not every:
        return 0.0, 1.0
    all_values = np.concatenate(every).astype(np.float64)
    vmin = float(np.median(np.concatenate(good))) if good else float(all_values.min())
    vmax = float(np.percentile(all_values, 99.9))
    if not vmax > vmin:
        vmax = vmin + 1.0
    return vmin, vmax
