"""Figures of the evaluation report: curves and histograms (matplotlib, Agg) and gallery panels.

The figure functions return PNG bytes, so the caller decides where they go (a file beside
the report and a base64 ``<img>`` inside it). Heatmaps and contours come from
:mod:`defectmap.report.render`. Nothing here reads files or prints.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image, ImageDraw

from defectmap.report.render import (
    GT_COLOUR,
    PRED_COLOUR,
    colour_scale,
    draw_contour,
    overlay_rgb,
    resize_image,
    resize_map,
    resize_mask,
)


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


def tradeoff_figure(
    fpr: np.ndarray,
    tpr: np.ndarray,
    points: Sequence[dict[str, Any]],
    oracle: dict[str, Any] | None = None,
) -> bytes:
    """Miss rate vs false-alarm rate: the test-set curve, each alpha's point, the oracle.

    Parameters
    ----------
    fpr, tpr : np.ndarray, shape (K,)
        The image ROC curve (``metrics.roc_curve``); drawn as ``(fpr, 1 - tpr)``.
    points : sequence of dict
        ``alpha_operating_points`` rows (``alpha``, ``false_alarm_rate``, ``miss_rate``,
        ``chosen``, ``decision_rule``), marked and labelled with their alpha.
    oracle : dict or None
        The oracle point (``false_alarm_rate``, ``miss_rate``), marked apart.
    """
    fig = Figure(figsize=(5.5, 4.2))
    ax = fig.add_subplot()
    fpr = np.asarray(fpr, dtype=np.float64)
    ax.plot(fpr, 1.0 - np.asarray(tpr, dtype=np.float64), color="#7f7f7f", lw=1.5,
            drawstyle="steps-post", label="all thresholds (test set)")
    shown = [p for p in points if p.get("false_alarm_rate") is not None
             and p.get("miss_rate") is not None]
    x_max = 0.2
    for p in shown:
        x, y = float(p["false_alarm_rate"]), float(p["miss_rate"])
        x_max = max(x_max, 1.15 * x)
        colour = "#1f77b4" if p.get("decision_rule") == "p_value" else "#ff7f0e"
        ax.plot([x], [y], ls="none", marker="o", ms=7 if p.get("chosen") else 5, color=colour)
        label = f"{p['alpha']:g}" + (" (model)" if p.get("chosen") else "")
        ax.annotate(label, (x, y), textcoords="offset points", xytext=(5, 4), fontsize=7)
    ax.plot([], [], "o", color="#1f77b4", label="alpha: p <= alpha decides")
    ax.plot([], [], "o", color="#ff7f0e", label="alpha: too few scores, largest decides")
    if oracle and oracle.get("false_alarm_rate") is not None:
        x, y = float(oracle["false_alarm_rate"]), float(oracle["miss_rate"])
        x_max = max(x_max, 1.15 * x)
        ax.plot([x], [y], marker="*", ms=11, color="#d62728", ls="none",
                label="oracle (uses test labels)")
    ax.set(xlim=(-0.01, min(1.0, x_max)), ylim=(-0.02, 1.02),
           xlabel="false-alarm rate (good test images flagged)",
           ylabel="miss rate (defective test images passed)",
           title="Operating points: thresholds from good images")
    ax.legend(loc="upper right", fontsize=7)
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


def gallery_panel(
    image: np.ndarray,
    anomaly_map: np.ndarray,
    gt_mask: np.ndarray | None,
    pred_mask: np.ndarray | None,
    vmin: float,
    vmax: float,
    caption: str,
    thumb: int = 192,
    ground_truth: bool = True,
) -> bytes:
    """One gallery row: input | heatmap overlay | ground-truth contour | predicted contour.

    Without ``ground_truth`` (a dataset without masks) the ground-truth panel is left out:
    input | heatmap overlay | predicted contour.

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
    ground_truth : bool
        Whether the dataset has masks, i.e. whether the ground-truth panel means anything.
    """
    h, w = image.shape[:2]
    scale = min(1.0, thumb / max(h, w))  # downscale only
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    base = resize_image(image, size)
    overlay = overlay_rgb(base, colour_scale(resize_map(anomaly_map, size), vmin=vmin, vmax=vmax))
    gt_panel = base.copy()
    if gt_mask is not None:
        draw_contour(gt_panel, resize_mask(gt_mask, size), GT_COLOUR)
    pred_panel = base.copy()
    if pred_mask is not None:
        if gt_mask is not None:
            # Ground truth drawn thinly under the prediction for direct comparison.
            draw_contour(pred_panel, resize_mask(gt_mask, size), GT_COLOUR, width=1)
        draw_contour(pred_panel, resize_mask(pred_mask, size), PRED_COLOUR)

    panels = [(base, "input"), (overlay, "heatmap")]
    if ground_truth:
        panels.append((gt_panel, "ground truth"))
    panels.append((pred_panel, "predicted"))
    gap, header = 6, 30
    width = len(panels) * size[0] + (len(panels) - 1) * gap
    canvas = Image.new("RGB", (width, size[1] + header), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    draw.text((2, 2), caption, fill=(0, 0, 0))
    for i, (panel, title) in enumerate(panels):
        canvas.paste(Image.fromarray(panel), (i * (size[0] + gap), header))
        draw.text((i * (size[0] + gap) + 2, 16), title, fill=(90, 90, 90))
    buf = io.BytesIO()
    canvas.save(buf, format="PNG", optimize=True)
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
