"""CLI commands on model versions: ``models list|add|promote|rollback`` and ``update``.

Thin wrappers over :mod:`defectmap.registry` and :mod:`defectmap.feedback`.
"""

from __future__ import annotations

from pathlib import Path

import typer

from defectmap.cli._common import app, console
from defectmap.cli.display import progress_display
from defectmap.cli.model import _warnings_as_lines

models_app = typer.Typer(help="Model versions in a registry folder.", no_args_is_help=True)
app.add_typer(models_app, name="models")


@models_app.command("list", epilog="Example: defectmap models list models/registry")
def list_command(registry: Path = typer.Argument(..., help="Registry folder.")) -> None:
    """List the versions, oldest first; * marks the current one."""
    from rich.table import Table

    from defectmap.registry import Registry

    reg = Registry(registry)
    current = reg.current()
    table = Table(title=f"{registry}")
    for col in ("", "version", "created", "parent", "source", "note"):
        table.add_column(col)
    for v in reg.versions():
        table.add_row("*" if v.id == current else "", v.id, v.created_at[:19], v.parent or "-",
                      v.source, v.note)
    console.print(table)


@models_app.command("add", epilog="Example: defectmap models add models/registry models/bottle")
def add_command(
    registry: Path = typer.Argument(..., help="Registry folder (created if missing)."),
    model_dir: Path = typer.Argument(..., help="Model folder to add as a version."),
    promote: bool = typer.Option(False, "--promote", help="Make it the current version."),
) -> None:
    """Copy a model folder into the registry as an immutable, content-addressed version."""
    from defectmap.registry import Registry

    reg = Registry(registry)
    version = reg.add(model_dir)
    console.print(f"version {version.id} ({model_dir})", highlight=False, markup=False)
    if promote:
        reg.promote(version.id)
        console.print(f"current -> {version.id}", highlight=False)


@models_app.command("promote", epilog="Example: defectmap models promote models/registry 3f2a")
def promote_command(
    registry: Path = typer.Argument(..., help="Registry folder."),
    version: str = typer.Argument(..., help="Version id (or a unique prefix)."),
) -> None:
    """Point current at VERSION; a running service switches within about a second."""
    from defectmap.registry import Registry

    reg = Registry(registry)
    previous = reg.current()
    info = reg.promote(version)
    console.print(f"current -> {info.id} (was {previous or 'none'})", highlight=False)


@models_app.command("rollback", epilog="Example: defectmap models rollback models/registry")
def rollback_command(registry: Path = typer.Argument(..., help="Registry folder.")) -> None:
    """Point current back at the version that was current before the last switch."""
    from defectmap.registry import Registry

    info = Registry(registry).rollback()
    console.print(f"current -> {info.id} (rolled back)", highlight=False)


@app.command(
    "update",
    epilog="Example: defectmap update models/registry --from-verdicts defectmap-audit.sqlite3",
)
def update_command(
    model: Path = typer.Argument(..., help="Registry (updates its current version) or model "
                                 "folder (then give --out)."),
    from_verdicts: str = typer.Option(..., "--from-verdicts",
                                      help="Audit log holding the verdicts (SQLite file or "
                                      "postgresql:// URL)."),
    out: Path | None = typer.Option(None, "--out", "-o",
                                    help="New model folder (for a model folder MODEL)."),
    files_root: Path | None = typer.Option(
        None, "--files-root", help="Folder the stored image paths are relative to (default: "
        "the SQLite file's folder; the current folder for PostgreSQL)."),
    validation: Path | None = typer.Option(
        None, "--validation", help="Good images to recalibrate on (default: the model's own "
        "validation images, from training.json)."),
) -> None:
    """Build a new model version from operators' verdicts: false alarms become good data."""
    from defectmap.evaluate.predict import collect_images
    from defectmap.feedback import collect_verdicts, update_model
    from defectmap.serve.audit import files_root as default_root
    from defectmap.serve.audit import open_audit_log

    store = open_audit_log(from_verdicts)
    try:
        feedback = collect_verdicts(store, files_root or default_root(store))
    finally:
        store.close()
    val = None if validation is None else collect_images([validation])
    with _warnings_as_lines(), progress_display() as progress:
        report = update_model(model, feedback, out_dir=out, validation=val, progress=progress)
    for line in report.skipped:
        console.print(f"skipped: {line}", highlight=False, markup=False)
    console.print(f"held images: {report.n_good} confirmed good, {report.n_defects} confirmed "
                  f"defects; added {report.added_images} false alarms ({report.added_patches} "
                  f"patches, {report.rounds} rounds)", highlight=False)
    console.print(f"false alarms {report.before['false_alarms']} -> "
                  f"{report.after['false_alarms']} (on the added images: in-sample), misses "
                  f"{report.before['misses']} -> {report.after['misses']}", highlight=False)
    if report.thresholds == "kept":
        console.print("thresholds kept: the model is cross-fitted, and adding good patches to "
                      "PatchCore's bank can only lower its scores, so the false-alarm bound "
                      "still holds (give --validation DIR to recalibrate instead)",
                      highlight=False, markup=False)
    where = f"version {report.version}" if report.version else report.model_dir
    hint = f"; promote it: defectmap models promote {model} {report.version}" \
        if report.version else ""
    console.print(f"new model: {where}{hint}", highlight=False, markup=False)
