"""CLI command ``evaluate-maps``: metrics of anomaly maps written by any method."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich import box
from rich.table import Table

from defectmap.cli._common import app, console, err_console
from defectmap.cli.display import progress_display
from defectmap.constants import DEFAULT_FPR_LIMIT
from defectmap.files import write_json

_COLUMNS = (
    ("image_auroc", "Image\nAUROC"),
    ("pixel_auroc", "Pixel\nAUROC"),
    ("aupro", "AU-PRO"),
    ("f1_max", "Image\nF1-max"),
    ("pixel_f1_max", "Pixel\nF1-max"),
)


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _table(title: str, first: str, rows: list[tuple[str, dict[str, Any]]],
           fpr_limit: float, mean: dict[str, Any] | None = None) -> Table:
    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD)
    table.add_column(first, no_wrap=True)
    table.add_column("Images\n(defective)", justify="right", no_wrap=True)
    for key, label in _COLUMNS:
        header = f"{label}\n@{fpr_limit:g}" if key == "aupro" else label
        table.add_column(header, justify="right", no_wrap=True)
    for name, r in rows:
        table.add_row(name, f"{r['n_images']} ({r['n_defective']})",
                      *[_fmt(r[key]) for key, _ in _COLUMNS])
    if mean is not None:
        table.add_section()
        table.add_row("[bold]mean[/bold]", "", *[_fmt(mean[key]) for key, _ in _COLUMNS])
    return table


@app.command("evaluate-maps")
def evaluate_maps(
    maps_dir: Path = typer.Argument(
        ..., help="Maps in MAPS_DIR/<category>/test/<defect>/<stem>.tiff (or .tif/.npy/.png)."
    ),
    dataset_root: Path = typer.Argument(..., help="Dataset root holding the same categories."),
    category: list[str] = typer.Option(
        None, "--category", "-c", metavar="NAME",
        help="Category (repeatable); default: all in MAPS_DIR.",
    ),
    fpr_limit: float = typer.Option(
        DEFAULT_FPR_LIMIT, "--fpr-limit", help="AU-PRO integration limit, in (0, 1]."
    ),
    json_out: Path | None = typer.Option(
        None, "--json", metavar="OUT", help="Also write all results here (JSON)."
    ),
) -> None:
    """Image AUROC, pixel AUROC, AU-PRO and F1-max of anomaly maps, per category and defect."""
    from defectmap.evaluate.maps import evaluate_maps_dir

    with progress_display() as progress:
        result = evaluate_maps_dir(
            maps_dir, dataset_root, list(category) if category else None, fpr_limit, progress
        )
    for warning in result["warnings"]:
        err_console.print(f"[yellow]warning:[/yellow] {warning}", highlight=False,
                          soft_wrap=True, markup=True)
    limit = result["fpr_limit"]
    categories = result["categories"]
    console.print(_table("Categories (image score = max of map)", "Category",
                         list(categories.items()), limit, result["mean"]))
    for name, r in categories.items():
        console.print(_table(f"{name}: per defect type (good images + that defect)", "Defect",
                             list(r["per_defect"].items()), limit))
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        write_json(json_out, result)
        console.print(f"results written to {json_out}", highlight=False, soft_wrap=True)
