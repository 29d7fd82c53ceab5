"""CLI commands of the ``data`` group: ``check``, ``synth`` and ``download``."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table

from defectmap.cli._common import CliUsageError, console, data_app, err_console
from defectmap.cli.display import progress_display
from defectmap.cli.options import count_option, seed_option
from defectmap.constants import MIN_INPUT_SIZE

#: Largest side of a synthetic image (a typo guard: 4096 px is already 48 MiB per image).
_MAX_SYNTH_SIZE = 4096


@data_app.command("check")
def check(
    root: Path = typer.Argument(..., metavar="ROOT",
                                help="Dataset root, or one category folder."),
    category: list[str] = typer.Option(
        None, "--category", "-c", metavar="NAME",
        help="Category to check (repeatable); default: all.",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
    full: bool = typer.Option(
        False, "--full", help="Decode every PNG's pixels (default: verify chunk checksums)."
    ),
) -> None:
    """Validate a dataset: counts, sizes, masks; list problems; exit 1 when any."""
    from defectmap.data.check import check_dataset

    with progress_display() as progress:
        report = check_dataset(root, categories=list(category) if category else None,
                               full=full, progress=progress)
    if as_json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        for cat in report.categories:
            kind = cat.kind or ("official" if cat.official else "custom")
            title = f"{cat.name}  ({cat.dataset} layout, {kind}"
            title += ", masks)" if cat.has_masks else ", no masks)"
            table = Table(title=escape(title), title_justify="left")
            for column in ("split", "folder", "images", "official"):
                table.add_column(column, justify="right" if column != "folder" else "left")
            official = cat.official_counts()
            keys = list(cat.counts) + [k for k in (official or {}) if k not in cat.counts]
            for key in keys:
                split, _, folder = key.partition("/")
                ref = None if official is None else official.get(key)
                table.add_row(split, escape(folder) or "-", str(cat.counts.get(key, 0)),
                              "-" if ref is None else str(ref))
            console.print(table)
            sizes = ", ".join(f"{k} ({v})" for k, v in cat.image_sizes.items()) or "-"
            modes = ", ".join(f"{k} ({v})" for k, v in cat.image_modes.items()) or "-"
            console.print(f"  train {cat.n_train}, test {cat.n_test}, masks {cat.n_masks}, "
                          f"defects {cat.n_regions}", highlight=False)
            console.print(f"  image sizes: {sizes}; modes: {modes}", highlight=False)
            for problem in cat.problems:
                # soft_wrap: never break a path across lines (users copy and grep them)
                console.print(f"  [red]{problem.kind}[/red] {escape(str(problem.path))}: "
                              f"{escape(problem.message)}", highlight=False, soft_wrap=True)
        n = len(report.problems)
        if n:
            err_console.print(f"[red]{n} problem(s) found[/red]")
        else:
            console.print("[green]no problems found[/green]")
    if not report.ok:
        raise typer.Exit(1)


@data_app.command("synth")
def synth(
    out: Path = typer.Argument(..., metavar="OUT",
                               help="Dataset root to write into (OUT/CATEGORY/...)."),
    category: str = typer.Option(None, "--category", metavar="NAME",
                                 help="Category (product) name; default synth_<layout>."),
    layout: str = typer.Option(
        "mvtec", "--layout", metavar="LAYOUT", help="mvtec, loco, mvtec_ad2, visa or realiad."),
    kind: str = typer.Option("object", "--kind", metavar="KIND",
                             help="object or texture (mvtec layout)."),
    n_train: int = count_option(60, "--n-train", help="Good training images"),
    n_test: int = count_option(40, "--n-test", minimum=0,
                               help="Test images (half of them defective)"),
    size: int = count_option(256, "--size", minimum=MIN_INPUT_SIZE, maximum=_MAX_SYNTH_SIZE,
                             help="Image side in pixels"),
    grayscale: bool = typer.Option(False, "--grayscale", help="Write 8-bit gray images."),
    seed: int = seed_option(help="Same seed, same bytes."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace OUT/CATEGORY."),
) -> None:
    """Write a synthetic dataset in a published layout, with pixel-exact masks.

    Example: defectmap data synth data/loco --layout loco --n-test 24
    """
    from defectmap.data.synth import make_synthetic_dataset
    from defectmap.data.synth_layouts import LAYOUTS, make_layout_dataset

    if layout == "mvtec":
        if kind not in ("object", "texture"):
            raise CliUsageError(f"--kind must be 'object' or 'texture', not {kind!r}")
        with progress_display() as progress:
            folder = make_synthetic_dataset(
                out, category=category or "synthetic", kind=kind,  # type: ignore[arg-type]
                n_train=n_train, n_test=n_test, size=size, grayscale=grayscale, seed=seed,
                overwrite=overwrite, progress=progress,
            )
    elif layout in LAYOUTS:
        if grayscale or kind != "object":
            raise CliUsageError("--grayscale and --kind apply to the mvtec layout only")
        n_bad = n_test // 2
        counts = {"loco": {"n_logical": (n_bad + 1) // 2, "n_structural": n_bad // 2,
                           "n_good": n_test - n_bad, "n_validation": max(1, n_train // 6)},
                  "mvtec_ad2": {"n_bad": n_bad, "n_good": n_test - n_bad,
                                "n_validation": max(1, n_train // 6),
                                "n_private": max(1, n_test // 4)},
                  "visa": {"n_bad": n_bad, "n_good": n_test - n_bad},
                  "realiad": {"n_bad": n_bad, "n_good": n_test - n_bad}}[layout]
        folder = make_layout_dataset(layout, out, category=category or f"synth_{layout}",
                                     n_train=n_train, size=size, seed=seed,
                                     overwrite=overwrite, **counts)
    else:
        raise CliUsageError(f"--layout must be mvtec or one of {', '.join(LAYOUTS)}, "
                            f"not {layout!r}")
    console.print(f"wrote {folder}", markup=False, highlight=False, soft_wrap=True)


@data_app.command("download")
def download(
    root: Path = typer.Argument(..., metavar="ROOT",
                                help="Dataset root to extract categories into."),
    dataset: str = typer.Option(
        "mvtec_ad", "--dataset", metavar="NAME", help="mvtec_ad, loco, mvtec_ad2 or visa."),
    category: list[str] = typer.Option(
        None, "--category", "-c", metavar="NAME",
        help="Category to download (repeatable); default: all.",
    ),
    manifest: Path = typer.Option(
        None, "--manifest", metavar="FILE",
        help="JSON archive table {name: {url, sha256}} (default: official).",
    ),
    base_url: str = typer.Option(None, "--base-url", metavar="URL",
                                 help="Mirror serving the same archives."),
) -> None:
    """Download a dataset's categories (resumable, SHA-256 verified, extracted atomically).

    Example: defectmap data download data/loco --dataset loco --category pushpins
    """
    from defectmap.data.download import download_dataset

    with progress_display() as progress:
        folders = download_dataset(dataset, root,
                                   categories=list(category) if category else None,
                                   base_url=base_url, manifest=manifest, progress=progress)
    for folder in folders:
        console.print(f"ready: {folder}", markup=False, highlight=False, soft_wrap=True)
