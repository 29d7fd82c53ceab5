"""CLI command ``evaluate-maps``: metrics of anomaly maps written by any method."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich import box
from rich.markup import escape
from rich.table import Table

from defectmap.cli._common import app, console, err_console
from defectmap.cli.display import progress_display
from defectmap.cli.options import ratio_option
from defectmap.constants import DEFAULT_FPR_LIMIT, MVTEC_AD2_FPR_LIMIT
from defectmap.files import write_json

_COLUMNS = (
    ("image_auroc", "Image\nAUROC"),
    ("pixel_auroc", "Pixel\nAUROC"),
    ("aupro", "AU-PRO"),
    ("f1_max", "Image\nF1-max"),
    ("pixel_f1_max", "Pixel\nF1-max"),
)
_LOCO_ROWS = (("logical_anomalies", "logical"), ("structural_anomalies", "structural"),
              ("mean", "mean"))


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _table(title: str, first: str, rows: list[tuple[str, dict[str, Any]]],
           fpr_limit: float, mean: dict[str, Any] | None = None,
           seg: bool = False) -> Table:
    columns = _COLUMNS + ((("seg_f1", "SegF1"),) if seg else ())
    table = Table(title=escape(title), title_justify="left", box=box.SIMPLE_HEAD)
    table.add_column(first, no_wrap=True)
    table.add_column("Images\n(defective)", justify="right", no_wrap=True)
    for key, label in columns:
        header = f"{label}\n@{fpr_limit:g}" if key == "aupro" else label
        table.add_column(header, justify="right", no_wrap=True)
    for name, r in rows:
        table.add_row(escape(name), f"{r['n_images']} ({r['n_defective']})",
                      *[_fmt(r.get(key)) for key, _ in columns])
    if mean:
        table.add_section()
        table.add_row("[bold]mean[/bold]", "", *[_fmt(mean.get(key)) for key, _ in columns])
    return table


def _loco_table(name: str, r: dict[str, Any]) -> Table:
    limits = list(r["auc_spro"]["mean"])
    table = Table(title=escape(f"{name}: MVTec LOCO AD, {r['mode']} mode"), title_justify="left",
                  caption=f"AU-sPRO: {r['method']['auc_spro']}\nAUROC: {r['method']['auc_roc']}",
                  caption_justify="left", box=box.SIMPLE_HEAD)
    table.add_column("Type", no_wrap=True)
    for limit in limits:
        table.add_column(f"AU-sPRO\n@{float(limit):g}", justify="right", no_wrap=True)
    table.add_column("Image\nAUROC", justify="right", no_wrap=True)
    for key, label in _LOCO_ROWS:
        if key == "mean":
            table.add_section()
        table.add_row(label, *[_fmt(r["auc_spro"][key][lim]) for lim in limits],
                      _fmt(r["auc_roc"][key]))
    return table


@app.command("evaluate-maps")
def evaluate_maps(
    maps_dir: Path = typer.Argument(
        ..., metavar="MAPS_DIR",
        help="Maps in MAPS_DIR/<category>/test/<defect>/<stem>.tiff (or .tif/.npy/.png).",
    ),
    dataset_root: Path = typer.Argument(..., metavar="DATASET_ROOT",
                                        help="Dataset root holding the same categories."),
    category: list[str] = typer.Option(
        None, "--category", "-c", metavar="NAME",
        help="Category (repeatable); default: all in MAPS_DIR.",
    ),
    fpr_limit: float | None = ratio_option(
        None, "--fpr-limit", high_open=False,
        help=f"AU-PRO integration limit; default {DEFAULT_FPR_LIMIT:g} "
             f"(MVTec AD 2: {MVTEC_AD2_FPR_LIMIT:g})",
    ),
    loco_official: bool = typer.Option(
        False, "--loco-official",
        help="MVTec LOCO AD: the official code's adaptive thresholds and image ROC "
             "(default: exact, every distinct threshold).",
    ),
    json_out: Path | None = typer.Option(
        None, "--json", metavar="OUT", help="Also write all results here (JSON)."
    ),
) -> None:
    """Metrics of anomaly maps, in the protocol of the dataset's layout.

    MVTec AD, VisA, Real-IAD: image AUROC, pixel AUROC, AU-PRO, F1-max. MVTec LOCO AD:
    AU-sPRO at 0.01-1.0 and image AUROC per anomaly type. MVTec AD 2: AU-PRO at 0.05 and
    SegF1 (needs MAPS_DIR/<category>/validation/good maps).

    Example: defectmap evaluate-maps runs/maps data/loco --loco-official --json scores.json
    """
    from defectmap.evaluate.maps import evaluate_maps_dir

    with progress_display() as progress:
        result = evaluate_maps_dir(
            maps_dir, dataset_root, list(category) if category else None, fpr_limit, progress,
            loco_mode="official" if loco_official else "exact",
        )
    for warning in result["warnings"]:
        err_console.print(f"[yellow]warning:[/yellow] {escape(warning)}", highlight=False,
                          soft_wrap=True)
    console.print(f"protocol: {result['protocol_note']}", markup=False, highlight=False,
                  soft_wrap=True)
    categories = result["categories"]
    family = {n: r for n, r in categories.items() if r["protocol"] != "mvtec_loco"}
    if family:
        limit = result["fpr_limit"] or DEFAULT_FPR_LIMIT
        seg = any(r["protocol"] == "mvtec_ad2" for r in family.values())
        console.print(_table("Categories (image score = max of map)", "Category",
                             list(family.items()), limit,
                             result["mean"] if len(family) == len(categories) else None, seg))
        for name, r in family.items():
            console.print(_table(f"{name}: per defect type (good images + that defect)",
                                 "Defect", list(r["per_defect"].items()), limit))
            if r.get("segmentation"):
                t = r["segmentation"]
                console.print(f"{name}: SegF1 threshold {t['threshold']:.6g} "
                              f"({t['threshold_rule']})", markup=False, highlight=False,
                              soft_wrap=True)
    for name, r in categories.items():
        if r["protocol"] == "mvtec_loco":
            console.print(_loco_table(name, r))
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        write_json(json_out, result)
        console.print(f"results written to {json_out}", markup=False, highlight=False,
                      soft_wrap=True)
