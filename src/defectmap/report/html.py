"""The HTML report of one evaluation: PNG figures plus one self-contained ``report.html``.

:func:`write_report` takes what an evaluation produced (scores, maps, masks, metrics) as a
:class:`ReportData` and writes, into one folder::

    report.html             every figure embedded as base64 PNG: opens offline, no scripts
    figures/roc.png         image-level ROC
    figures/pro.png         PRO curve with the FPR integration limit marked
    figures/scores.png      score histograms, good vs defective
    figures/tradeoff.png    miss rate vs false-alarm rate, each alpha's threshold marked
    figures/gallery_*.png   input | heatmap | ground truth | predicted region, per image
                            (no ground-truth panel for a dataset without masks)

The gallery shows the hardest cases first: good images with the highest scores (would-be
false alarms), then defective images with the lowest scores (best-hidden defects).
"""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from defectmap.files import write_bytes
from defectmap.report import figures
from defectmap.report.render import GT_COLOUR, PRED_COLOUR

__all__ = ["ReportData", "select_gallery", "write_report", "render_html"]

#: Rows of the operating-point table: (title, calibrated key, oracle key).
_OPERATING_ROWS = (
    ("image threshold", "image_threshold", "threshold"),
    ("false alarm rate (good images flagged)", "false_alarm_rate", "false_alarm_rate"),
    ("miss rate (defective images passed)", "miss_rate", "miss_rate"),
    ("precision", "precision", "precision"),
    ("recall", "recall", "recall"),
    ("image F1", "f1", "f1"),
    ("TP / FP / TN / FN", "counts", "counts"),
    ("pixel threshold", "pixel_threshold", "pixel_threshold"),
    ("pixel false positive rate", "pixel_false_positive_rate", "pixel_false_positive_rate"),
    ("region detection rate (overlap >= 30 %)", "region_detection_rate",
     "region_detection_rate"),
    ("pixel IoU", "pixel_iou", "pixel_iou"),
    ("pixel F1", "pixel_f1", "pixel_f1"),
)


def _operating_value(point: dict[str, Any], key: str) -> Any:
    if key == "counts":
        counts = [point.get(k) for k in ("tp", "fp", "tn", "fn")]
        return None if None in counts else " / ".join(str(c) for c in counts)
    return point.get(key)


@dataclass
class ReportData:
    """Everything the report shows about one evaluated model on one test set.

    Attributes
    ----------
    metrics : dict
        The content of ``metrics.json`` (``category``, ``detector``, ``image_auroc``, ...,
        ``per_defect``, ``calibrated``, ``oracle``, ``timing``).
    scores : np.ndarray, shape (N,)
        Raw image anomaly scores of the test images.
    labels : np.ndarray, shape (N,)
        0 = good, 1 = defective.
    defect_types : list of str, length N
        ``"good"`` or the defect folder name per image.
    image_paths : list of Path, length N
        The test images (read again, downscaled, for the gallery only).
    maps : sequence of np.ndarray (H_i, W_i) float32, or None
        Anomaly maps at native image size.
    masks : sequence of (np.ndarray (H_i, W_i) bool or None), or None
        Ground-truth masks (all-False for good images); None when the layout has none.
    pred_masks : sequence of np.ndarray (H_i, W_i) bool, or None
        Calibrated predicted-defect masks; None without a calibration.
    roc : tuple (fpr, tpr) of np.ndarray, or None
        Image ROC curve.
    pro : tuple (fpr, pro) of np.ndarray, or None
        PRO curve (needs masks).
    image_threshold : float or None
        The calibrated image threshold (drawn on the histogram).
    title : str
        Page title.
    """

    metrics: dict[str, Any]
    scores: np.ndarray
    labels: np.ndarray
    defect_types: list[str]
    image_paths: list[Path]
    maps: Sequence[np.ndarray] | None = None
    masks: Sequence[np.ndarray | None] | None = None
    pred_masks: Sequence[np.ndarray] | None = None
    roc: tuple[np.ndarray, np.ndarray] | None = None
    pro: tuple[np.ndarray, np.ndarray] | None = None
    image_threshold: float | None = None
    title: str = "defectmap evaluation report"
    extra_info: dict[str, Any] = field(default_factory=dict)


def select_gallery(scores: np.ndarray, labels: np.ndarray, n_max: int = 12) -> list[int]:
    """Indices of the images to show: hardest good images, then best-hidden defects.

    A third of the places (at least one) go to good images sorted by decreasing score, the
    rest to defective images sorted by increasing score; a group with too few images leaves
    its places to the other. Ties are broken by index (stable sort), so the choice is
    deterministic.

    Examples
    --------
    >>> select_gallery(np.array([0.1, 0.9, 0.5, 0.2, 0.8]), np.array([0, 0, 1, 1, 1]), 3)
    [1, 3, 2]
    """
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels)
    good = [int(i) for i in np.flatnonzero(labels == 0)[np.argsort(-scores[labels == 0],
                                                                    kind="stable")]]
    bad = [int(i) for i in np.flatnonzero(labels == 1)[np.argsort(scores[labels == 1],
                                                                   kind="stable")]]
    n_good = min(len(good), max(1, n_max // 3)) if n_max > 0 else 0
    n_bad = min(len(bad), n_max - n_good)
    n_good = min(len(good), n_max - n_bad)
    return good[:n_good] + bad[:n_bad]


def _fmt(value: Any) -> str:
    """A table cell: floats with 3 decimals, None as an em dash, the rest as text."""
    if value is None:
        return "&mdash;"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float | np.floating):
        return "nan" if not np.isfinite(value) else f"{float(value):.3f}"
    return html.escape(str(value))


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]], css: str = "") -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{_fmt(c)}</td>" for c in row) + "</tr>" for row in rows
    )
    return f'<table class="{css}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _table_trusted(header: Sequence[str], rows: Sequence[Sequence[Any]], css: str = "") -> str:
    """:func:`_table` whose string cells are trusted HTML (entities we wrote), not escaped."""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{c if isinstance(c, str) else _fmt(c)}</td>" for c in row)
        + "</tr>" for row in rows
    )
    return f'<table class="{css}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _img(png: bytes, alt: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{html.escape(alt)}">'


_CSS = """
body { font-family: system-ui, sans-serif; margin: 24px; color: #222; max-width: 1280px; }
h1 { font-size: 1.5em; margin-bottom: 0.2em; } h2 { margin-top: 1.6em; font-size: 1.2em; }
table { border-collapse: collapse; margin: 8px 0; font-size: 0.92em; }
th, td { border: 1px solid #ccc; padding: 4px 10px; text-align: right; }
th { background: #f2f2f2; } td:first-child, th:first-child { text-align: left; }
.figs { display: flex; flex-wrap: wrap; gap: 12px; } .figs img { border: 1px solid #ddd; }
.gallery { display: flex; flex-wrap: wrap; gap: 10px; }
.gallery img { border: 1px solid #ddd; }
.note { color: #555; font-size: 0.9em; } .meta { color: #555; }
.key span { display: inline-block; width: 12px; height: 12px; vertical-align: middle; }
"""


def _summary_rows(m: dict[str, Any]) -> list[list[Any]]:
    timing = m.get("timing") or {}
    rows: list[list[Any]] = [
        ["image AUROC", m.get("image_auroc")],
        ["pixel AUROC", m.get("pixel_auroc")],
        [f"AU-PRO (FPR &le; {m.get('fpr_limit', 0.3):g})", m.get("aupro")],
        ["image F1-max (oracle threshold)", m.get("f1_max")],
        ["pixel F1-max (oracle threshold)", m.get("pixel_f1_max")],
        ["test images", m.get("n_images")],
        ["defective test images", m.get("n_defective")],
    ]
    if timing.get("fit_s") is not None:
        rows.append(["fit time (s)", float(timing["fit_s"])])
    if timing.get("ms_per_image") is not None:
        rows.append(["inference (ms / image)", float(timing["ms_per_image"])])
    return rows


def render_html(data: ReportData, pngs: dict[str, bytes], gallery: list[tuple[str, bytes]]) -> str:
    """The report page as one HTML string (no external resources, no scripts)."""
    m = data.metrics
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(data.title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{html.escape(data.title)}</h1>",
        f'<p class="meta">category <b>{_fmt(m.get("category"))}</b> &middot; detector '
        f'<b>{_fmt(m.get("detector"))}</b>'
        + "".join(f" &middot; {html.escape(k)} {_fmt(v)}" for k, v in data.extra_info.items())
        + "</p>",
        "<h2>Summary</h2>",
        # _summary_rows labels hold trusted entities (&le;), so they are not escaped again.
        '<table class="summary"><thead><tr><th>metric</th><th>value</th></tr></thead><tbody>'
        + "".join(f"<tr><td>{label}</td><td>{_fmt(v)}</td></tr>"
                  for label, v in _summary_rows(m))
        + "</tbody></table>",
        '<div class="figs">',
    ]
    for name in ("roc", "pro", "scores", "tradeoff"):
        if name in pngs:
            parts.append(_img(pngs[name], f"{name} figure"))
    parts.append("</div>")

    per_defect = m.get("per_defect") or {}
    if per_defect:
        parts.append("<h2>Per defect type</h2>")
        parts.append('<p class="note">Each row: the good test images plus that defect type.</p>')
        rows = [
            [name, d.get("n_images"), d.get("n_defective"), d.get("image_auroc"),
             d.get("pixel_auroc"), d.get("aupro"), d.get("f1_max")]
            for name, d in sorted(per_defect.items())
        ]
        parts.append(_table(["defect type", "images", "defective", "image AUROC",
                             "pixel AUROC", "AU-PRO", "F1-max"], rows, "per-defect"))

    calibrated, oracle = m.get("calibrated"), m.get("oracle")
    if calibrated or oracle:
        parts.append("<h2>Operating points</h2>")
        parts.append(
            '<p class="note"><b>calibrated</b>: thresholds fixed from good validation images '
            "only, as deployed. <b>oracle (uses test labels)</b>: the F1-maximising threshold "
            "chosen on this test set; an upper bound, not achievable in production.</p>"
        )
        cal, orc = calibrated or {}, oracle or {}
        rows = [[title, _operating_value(cal, ck), _operating_value(orc, ok)]
                for title, ck, ok in _OPERATING_ROWS]
        rows = [r for r in rows if r[1] is not None or r[2] is not None]
        parts.append(_table(["", "calibrated", "oracle (uses test labels)"], rows,
                            "operating"))
        if cal.get("guarantee_holds") is False:
            parts.append(
                f'<p class="note">At alpha = {_fmt(cal.get("alpha"))} there are too few '
                "calibration scores for p &le; alpha: the largest of them decides.</p>"
            )
    by_alpha = m.get("operating_points") or []
    if by_alpha:
        parts.append("<h2>Choosing alpha</h2>")
        parts.append(
            '<p class="note">Each row: the threshold that the good training images give at '
            "that alpha (no test label used), and the rates it has on this test set. "
            "<b>rule</b>: <i>p &le; alpha</i> when enough calibration scores exist, else "
            "<i>largest score</i>. <b>bound</b>: the proven false-alarm bound of the "
            "calibration method. Move the model's operating point with "
            "<code>defectmap recalibrate MODEL --alpha A</code>.</p>"
        )
        rows = [[("&#9654; " if p.get("chosen") else "") + f"{p['alpha']:g}",
                 "p &le; alpha" if p.get("decision_rule") == "p_value" else "largest score",
                 p.get("threshold"), p.get("false_alarm_bound"), p.get("false_alarm_rate"),
                 p.get("miss_rate"), f"{p.get('fp')} / {p.get('fn')}"] for p in by_alpha]
        orc = oracle or {}
        rows.append(["oracle (uses test labels)", "F1-max on the test set",
                     orc.get("threshold"), None, orc.get("false_alarm_rate"),
                     orc.get("miss_rate"), f"{orc.get('fp')} / {orc.get('fn')}"])
        parts.append(_table_trusted(["alpha", "rule", "threshold", "bound",
                                     "false-alarm rate", "miss rate", "FP / FN"], rows,
                                    "alphas"))

    if gallery:
        parts.append("<h2>Gallery: hardest cases first</h2>")
        if data.masks is not None:
            panels = ("ground truth "
                      f'<span style="background: rgb{GT_COLOUR}"></span> &middot; predicted '
                      f'region <span style="background: rgb{PRED_COLOUR}"></span> over the '
                      "ground truth")
        else:
            panels = ("predicted region "
                      f'<span style="background: rgb{PRED_COLOUR}"></span> (the dataset has '
                      "no ground-truth masks)")
        parts.append(
            '<p class="note key">Panels: input &middot; anomaly heatmap (one colour scale '
            f"for all images) &middot; {panels}. Good images with the highest scores come "
            "first, then defective images with the lowest scores.</p>"
        )
        parts.append('<div class="gallery">')
        parts.extend(_img(png, caption) for caption, png in gallery)
        parts.append("</div>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(data: ReportData, out_dir: str | Path, max_gallery: int = 12,
                 thumb: int = 192) -> Path:
    """Write the figures and ``report.html`` into ``out_dir``; return the HTML path.

    Parameters
    ----------
    data : ReportData
        What to show.
    out_dir : str or Path
        Created if missing; existing files of the same names are replaced atomically.
    max_gallery : int
        At most this many gallery rows (the page stays small whatever the test set).
    thumb : int
        Longest side of each gallery panel in pixels.
    """
    from defectmap.data.io import read_image

    out = Path(out_dir)
    fig_dir = out / "figures"
    fig_dir.mkdir(parents=True, exist_ok=True)
    m = data.metrics
    pngs: dict[str, bytes] = {}
    if data.roc is not None:
        pngs["roc"] = figures.roc_figure(data.roc[0], data.roc[1], m.get("image_auroc"))
    if data.pro is not None:
        pngs["pro"] = figures.pro_figure(data.pro[0], data.pro[1],
                                         float(m.get("fpr_limit", 0.3)), m.get("aupro"))
    pngs["scores"] = figures.histogram_figure(data.scores, data.labels, data.image_threshold)
    if data.roc is not None and m.get("operating_points"):
        pngs["tradeoff"] = figures.tradeoff_figure(data.roc[0], data.roc[1],
                                                   m["operating_points"], m.get("oracle"))
    for name, png in pngs.items():
        write_bytes(fig_dir / f"{name}.png", png)

    gallery: list[tuple[str, bytes]] = []
    if data.maps is not None and max_gallery > 0:
        vmin, vmax = figures.shared_colour_scale(data.maps, data.labels)
        for rank, i in enumerate(select_gallery(data.scores, data.labels, max_gallery)):
            path = Path(data.image_paths[i])
            gt = data.masks[i] if data.masks is not None else None
            pred = data.pred_masks[i] if data.pred_masks is not None else None
            caption = (f"#{rank + 1}  {data.defect_types[i]}/{path.name}  "
                       f"score {float(data.scores[i]):.4g}")
            png = figures.gallery_panel(read_image(path), data.maps[i], gt, pred, vmin, vmax,
                                        caption, thumb=thumb,
                                        ground_truth=data.masks is not None)
            name = f"gallery_{rank + 1:02d}_{data.defect_types[i]}_{path.stem}.png"
            write_bytes(fig_dir / name, png)
            gallery.append((caption, png))

    page = render_html(data, pngs, gallery)
    report = out / "report.html"
    write_bytes(report, page.encode("utf-8"))
    return report
