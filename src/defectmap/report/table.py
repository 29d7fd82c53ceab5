"""The paper-style benchmark table: one row per category, a mean row, one column block per
detector (image AUROC, pixel AUROC, AU-PRO), as Markdown, CSV, JSON and a rich table.

A column is a detector, or a detector with a parameter set and seed (a benchmark cell's
``column``); a cell that failed shows ``failed`` in its block.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from defectmap.files import write_json, write_text

__all__ = ["COLUMNS", "build_table", "to_markdown", "to_csv", "to_rich", "write_tables"]

#: (metrics key, column title) of each detector's block.
COLUMNS: tuple[tuple[str, str], ...] = (
    ("image_auroc", "image AUROC"),
    ("pixel_auroc", "pixel AUROC"),
    ("aupro", "AU-PRO"),
)


def build_table(
    rows: Sequence[Mapping[str, Any]],
    detectors: Sequence[str],
    failed: Sequence[Mapping[str, Any]] = (),
) -> dict[str, Any]:
    """Arrange per-cell metrics into the table.

    Parameters
    ----------
    rows : sequence of dict
        Metrics of each cell, with ``category`` and ``column`` (or ``detector``) keys.
    detectors : sequence of str
        Column blocks, in order.
    failed : sequence of dict
        Cells that failed, with ``category`` and ``column``: their block says ``failed``.

    Returns
    -------
    dict
        ``{"detectors": [...], "columns": [...], "rows": [{"category": c, d: {key: value}}],
        "mean": {d: {key: mean over the categories that have a value, or None}}}``; a failed
        cell's block also has ``"status": "failed"``.

    Examples
    --------
    >>> t = build_table([{"category": "a", "detector": "p", "image_auroc": 0.5},
    ...                  {"category": "b", "detector": "p", "image_auroc": 1.0}], ["p"])
    >>> t["mean"]["p"]["image_auroc"]
    0.75
    """
    categories = list(dict.fromkeys(str(r["category"]) for r in [*rows, *failed]))
    lookup = {(str(r["category"]), str(r.get("column", r["detector"]))): r for r in rows}
    broken = {(str(f["category"]), str(f["column"])) for f in failed}
    table_rows: list[dict[str, Any]] = []
    for category in categories:
        row: dict[str, Any] = {"category": category}
        for det in detectors:
            found = lookup.get((category, det), {})
            row[det] = {key: found.get(key) for key, _ in COLUMNS}
            if (category, det) in broken:
                row[det]["status"] = "failed"
        table_rows.append(row)
    mean: dict[str, Any] = {}
    for det in detectors:
        mean[det] = {}
        # A column with a failed cell has no mean: it would average other categories.
        whole = not any((c, det) in broken for c in categories)
        for key, _ in COLUMNS:
            values = [r[det][key] for r in table_rows
                      if r[det][key] is not None and math.isfinite(r[det][key])]
            mean[det][key] = float(np.mean(values)) if values and whole else None
    return {"detectors": list(detectors), "columns": [k for k, _ in COLUMNS],
            "rows": table_rows, "mean": mean}


def _cell(value: Any) -> str:
    return "-" if value is None else f"{float(value):.3f}"


def _flat_rows(table: Mapping[str, Any]) -> list[list[str]]:
    """Body rows (categories, then ``mean``) as lists of cell strings."""
    out = []
    for row in [*table["rows"], {"category": "mean", **table["mean"]}]:
        cells = [str(row["category"])]
        for det in table["detectors"]:
            failed = row[det].get("status") == "failed"
            cells += ["failed" if failed else _cell(row[det][key]) for key, _ in COLUMNS]
        out.append(cells)
    return out


def _header(table: Mapping[str, Any]) -> list[str]:
    return ["category"] + [f"{det} {title}" for det in table["detectors"]
                           for _, title in COLUMNS]


def to_markdown(table: Mapping[str, Any]) -> str:
    """The table as GitHub Markdown; the mean row in bold."""
    header = _header(table)
    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join([":---"] + ["---:"] * (len(header) - 1)) + "|"]
    body = _flat_rows(table)
    for i, cells in enumerate(body):
        if i == len(body) - 1:
            cells = [f"**{c}**" for c in cells]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def to_csv(table: Mapping[str, Any]) -> str:
    """The table as CSV (one header line; empty cells for missing values)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(_header(table))
    for cells in _flat_rows(table):
        writer.writerow(["" if c == "-" else c for c in cells])
    return buf.getvalue()


def to_rich(table: Mapping[str, Any], title: str = "benchmark") -> Any:
    """The table as a ``rich.table.Table`` (one column block per detector)."""
    from rich.markup import escape
    from rich.table import Table

    rich_table = Table(title=escape(title))
    rich_table.add_column("category", style="bold")
    for det in table["detectors"]:
        for _, col_title in COLUMNS:
            rich_table.add_column(escape(f"{det}\n{col_title}"), justify="right")
    body = _flat_rows(table)
    for i, cells in enumerate(body):
        # Names are data, not markup: a category called "[x]" must print as written.
        rich_table.add_row(*(escape(str(c)) for c in cells), end_section=(i == len(body) - 2),
                           style="bold" if i == len(body) - 1 else None)
    return rich_table


def write_tables(result: Mapping[str, Any], out_dir: str | Path) -> dict[str, Any]:
    """Write ``table.md``, ``table.csv`` and ``table.json`` into ``out_dir``; return the table.

    ``result`` is what :func:`defectmap.evaluate.run_benchmark` returns (``rows``,
    ``missing``, ``detectors`` and ``failed``); ``table.json`` also keeps every cell's full
    metrics (``pairs``) and every failure with its error (``failed``).
    """
    out = Path(out_dir)
    failed = result.get("failed", [])
    table = build_table(result["rows"], result["detectors"], failed)
    write_text(out / "table.md", to_markdown(table))
    write_text(out / "table.csv", to_csv(table))
    write_json(out / "table.json", {**table, "missing": result["missing"],
                                    "failed": failed, "pairs": result["rows"]})
    return table
