"""CLI commands on models: ``fit``, ``predict``, ``evaluate``, ``benchmark`` and ``demo``.

Thin wrappers: parse flags, call :mod:`defectmap.pipeline` and :mod:`defectmap.evaluate`,
print. Heavy imports (torch) happen inside the commands so that ``--help`` stays fast.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import typer
from rich.markup import escape

from defectmap.cli._common import CliUsageError, app, console, err_console
from defectmap.cli.display import progress_display
from defectmap.cli.export import Runtime
from defectmap.cli.options import (
    count_option,
    image_size_option,
    ratio_option,
    seed_option,
)
from defectmap.constants import DEFAULT_ALPHA, DEFAULT_DETECTOR, DEFAULT_FPR_LIMIT
from defectmap.errors import DefectmapError


def _detector_params(backbone: str | None, image_size: int | None) -> dict[str, Any]:
    params: dict[str, Any] = {}
    if backbone is not None:
        params["backbone"] = backbone
    if image_size is not None:
        params["input_size"] = image_size
    return params


@contextmanager
def _warnings_as_lines() -> Iterator[None]:
    """Show library warnings (e.g. too few validation images) as one yellow line each."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        try:
            yield
        finally:
            seen: set[str] = set()
            for w in caught:
                text = str(w.message)
                if text not in seen:
                    seen.add(text)
                    err_console.print(f"[yellow]warning:[/yellow] {escape(text)}",
                                      highlight=False, soft_wrap=True)


def _fmt(value: Any) -> str:
    return "-" if value is None else f"{float(value):.3f}"


@app.command(
    "fit",
    epilog="Example: defectmap fit data/mvtec_ad --category bottle --out models/bottle",
)
def fit_command(
    dataset_root: Path = typer.Argument(..., metavar="DATASET_ROOT",
                                        help="Dataset root (or a category folder)."),
    category: str | None = typer.Option(None, "--category", "-c", metavar="NAME",
                                        help="Category under DATASET_ROOT, e.g. bottle."),
    detector: str = typer.Option(DEFAULT_DETECTOR, "--detector", "-d", metavar="NAME",
                                 help="Detector name."),
    backbone: str | None = typer.Option(None, "--backbone", metavar="NAME",
                                        help="Feature backbone."),
    image_size: int | None = image_size_option(),
    val_ratio: float = ratio_option(0.1, "--val-ratio", low_open=False,
                                    help="Fraction of train/good held out to calibrate"),
    alpha: float = ratio_option(DEFAULT_ALPHA, "--alpha", help="Target false-alarm rate"),
    seed: int = seed_option(),
    out: Path = typer.Option(..., "--out", "-o", metavar="DIR",
                             help="Model folder to write (a model folder is replaced whole; "
                             "a folder holding other files is refused)."),
) -> None:
    """Train a detector on the good training images and calibrate its thresholds."""
    from defectmap.data.layouts import load_category
    from defectmap.pipeline import train_model

    params = _detector_params(backbone, image_size)
    data = load_category(dataset_root, category)
    start = time.perf_counter()
    with _warnings_as_lines(), progress_display() as progress:
        model = train_model(data, out, detector=detector, detector_params=params,
                            val_ratio=val_ratio, alpha=alpha, random_state=seed,
                            progress=progress)
    seconds = time.perf_counter() - start
    cal = model.calibration
    console.print(f"trained [bold]{escape(detector)}[/bold] on {escape(data.name)} "
                  f"({len(data.train)} good images) in {seconds:.1f} s", highlight=False)
    if cal is not None:
        console.print(f"image threshold {cal.image_threshold:.4g} (alpha {cal.alpha:g}, "
                      f"{cal.n_val} validation images)", highlight=False)
    console.print(f"model written to {out}", markup=False, highlight=False, soft_wrap=True)


@app.command(
    "predict",
    epilog="Example: defectmap predict models/bottle photos/ part_17.png --out results/",
)
def predict_command(
    model_dir: Path = typer.Argument(..., metavar="MODEL_DIR",
                                     help="Model folder written by `defectmap fit`."),
    images: list[Path] = typer.Argument(..., metavar="IMAGES",
                                        help="Image files and/or folders."),
    out: Path = typer.Option(..., "--out", "-o", metavar="DIR",
                             help="Output folder (never read as input)."),
    batch_size: int = count_option(1, "--batch-size", help="Images per forward pass"),
    recursive: bool = typer.Option(False, "--recursive", "-r",
                                   help="Also read the images in sub-folders of a folder."),
    uncalibrated: bool = typer.Option(
        False, "--uncalibrated",
        help="Accept a model without calibration.json: raw scores only, no decision."),
    allow_mismatch: bool = typer.Option(
        False, "--allow-mismatch",
        help="Score images whose colour or size differs from the training images."),
    no_maps: bool = typer.Option(False, "--no-maps", help="Do not write the TIFF maps."),
    no_overlays: bool = typer.Option(False, "--no-overlays", help="Do not write overlays."),
    runtime: Runtime | None = typer.Option(
        None, "--runtime", help="Inference runtime; default: the fastest installed one the "
        "model folder was exported for (torch for a folder that was not exported)."),
) -> None:
    """Score images: decision, score and p-value per image (CSV/JSON), maps and overlays.

    A folder gives the images directly in it (--recursive: and in its sub-folders).
    """
    from rich.table import Table

    from defectmap.data.profile import InputMismatchError
    from defectmap.errors import UncalibratedModelError
    from defectmap.evaluate.predict import predict_to_dir
    from defectmap.pipeline import load_model

    model = load_model(model_dir, runtime=None if runtime is None else runtime.value)
    try:
        with _warnings_as_lines(), progress_display() as progress:
            rows = predict_to_dir(model, images, out, batch_size=batch_size,
                                  write_maps=not no_maps, write_overlays=not no_overlays,
                                  progress=progress, recursive=recursive,
                                  uncalibrated=uncalibrated, allow_mismatch=allow_mismatch)
    except UncalibratedModelError:
        raise DefectmapError(
            f"{model_dir}: no calibration.json, so no ok/defect decision can be made; refit "
            "it with `defectmap fit`, or pass --uncalibrated for raw scores only") from None
    except InputMismatchError as exc:
        listed = "; ".join(f"{name}: {reason}" for name, reason in exc.mismatches)
        raise DefectmapError(
            f"{len(exc.mismatches)} image(s) differ from the training images: {listed}; "
            "pass --allow-mismatch to score them anyway") from None
    calibrated = model.calibration is not None
    table = Table(title=f"{len(rows)} images")
    columns = ("image", "score", "normalised", "p-value", "decision") if calibrated \
        else ("image", "score")
    for col in columns:
        table.add_column(col, justify="left" if col == "image" else "right")
    for row in rows[:20]:
        cells = [escape("/".join(Path(row["image"]).parts[-2:])), f"{row['score']:.4g}"]
        if calibrated:
            colour = "red" if row["decision"] == "defect" else "green"
            cells += [_fmt(row["normalized_score"]), _fmt(row["p_value"]),
                      f"[{colour}]{row['decision']}[/{colour}]"]
        table.add_row(*cells)
    console.print(table)
    if len(rows) > 20:
        console.print(f"... {len(rows) - 20} more in {Path(out) / 'results.csv'}",
                      markup=False, highlight=False, soft_wrap=True)
    if calibrated:
        n_defect = sum(r["decision"] == "defect" for r in rows)
        summary = f"{n_defect} of {len(rows)} flagged as defect; results in {out}"
    else:
        summary = (f"uncalibrated model: {len(rows)} raw scores, no ok/defect decision; "
                   f"results in {out}")
    console.print(summary, markup=False, highlight=False, soft_wrap=True)


def _print_metrics(metrics: dict[str, Any]) -> None:
    from rich.table import Table

    table = Table(title=escape(f"{metrics['detector']} on {metrics['category']}"))
    for col in ("", "image AUROC", "pixel AUROC", "AU-PRO", "F1-max", "images"):
        table.add_column(col, justify="left" if not col else "right")
    for name, m in sorted((metrics.get("per_defect") or {}).items()):
        table.add_row(escape(name), _fmt(m.get("image_auroc")), _fmt(m.get("pixel_auroc")),
                      _fmt(m.get("aupro")), _fmt(m.get("f1_max")), str(m.get("n_images")))
    table.add_row("[bold]all[/bold]", _fmt(metrics.get("image_auroc")),
                  _fmt(metrics.get("pixel_auroc")), _fmt(metrics.get("aupro")),
                  _fmt(metrics.get("f1_max")), str(metrics.get("n_images")), style="bold")
    console.print(table)
    console.print(f"protocol: {metrics.get('protocol', 'mvtec_ad')}", highlight=False)
    loco = metrics.get("loco")
    if loco:
        limits = list(loco["auc_spro"]["mean"])
        console.print(f"MVTec LOCO AD ({loco['mode']} mode), AU-sPRO at "
                      f"{', '.join(limits)} and image AUROC:", highlight=False)
        for kind in ("logical_anomalies", "structural_anomalies", "mean"):
            values = " ".join(_fmt(loco["auc_spro"][kind][lim]) for lim in limits)
            console.print(f"  {kind:<22} {values}  AUROC {_fmt(loco['auc_roc'][kind])}",
                          highlight=False)
    seg = metrics.get("segmentation")
    if seg:
        console.print(f"SegF1 {_fmt(seg['seg_f1'])} at threshold {seg['threshold']:.6g} "
                      f"({seg['threshold_rule']})", markup=False, highlight=False,
                      soft_wrap=True)
    if metrics.get("submission"):
        console.print(f"private test sets written for upload: {metrics['submission']}",
                      markup=False, highlight=False, soft_wrap=True)


@app.command(
    "evaluate",
    epilog="Example: defectmap evaluate models/bottle data/mvtec_ad --category bottle "
    "--out eval/bottle",
)
def evaluate_command(
    model_dir: Path = typer.Argument(..., metavar="MODEL_DIR",
                                     help="Model folder written by `defectmap fit`."),
    dataset_root: Path = typer.Argument(..., metavar="DATASET_ROOT",
                                        help="Dataset root (or a category folder)."),
    category: str | None = typer.Option(None, "--category", "-c", metavar="NAME",
                                        help="Category to test."),
    out: Path = typer.Option(..., "--out", "-o", metavar="DIR",
                             help="Output folder (replaced atomically)."),
    fpr_limit: float | None = ratio_option(
        None, "--fpr-limit", high_open=False,
        help=f"Integration limit of AU-PRO; default {DEFAULT_FPR_LIMIT:g} (MVTec AD 2: 0.05)"),
    batch_size: int = count_option(1, "--batch-size", help="Images per forward pass"),
    no_maps: bool = typer.Option(False, "--no-maps", help="Do not write the TIFF maps."),
    loco_official: bool = typer.Option(
        False, "--loco-official",
        help="MVTec LOCO AD: AU-sPRO with the official adaptive thresholds (default: exact)."),
) -> None:
    """Run the test split in the protocol of the dataset's layout: metrics.json, maps, report.

    MVTec AD, VisA, Real-IAD: the MVTec AD metrics. MVTec LOCO AD: also AU-sPRO and image
    AUROC per anomaly type. MVTec AD 2: AU-PRO at 0.05, SegF1 at the validation threshold,
    and the private test sets written in the upload layout (OUT/submission).
    """
    from defectmap.data.layouts import load_category
    from defectmap.evaluate.protocol import evaluate_model
    from defectmap.pipeline import load_model

    model = load_model(model_dir)
    data = load_category(dataset_root, category)
    with progress_display() as progress:
        metrics = evaluate_model(model, data, out, fpr_limit=fpr_limit,
                                 write_maps=not no_maps, batch_size=batch_size,
                                 progress=progress,
                                 loco_mode="official" if loco_official else "exact")
    _print_metrics(metrics)
    console.print(f"report: {Path(out) / 'report.html'}", markup=False, highlight=False,
                  soft_wrap=True)


def _on_result(m: dict[str, Any]) -> None:
    err_console.print(f"{m['category']} / {m['detector']}: image AUROC "
                      f"{_fmt(m['image_auroc'])}, pixel AUROC {_fmt(m['pixel_auroc'])}, "
                      f"AU-PRO {_fmt(m['aupro'])}", markup=False, highlight=False)


def _on_missing(category: str, reason: str) -> None:
    err_console.print(f"[yellow]skipped[/yellow] {escape(category)}: {escape(reason)}",
                      highlight=False, soft_wrap=True)


def _print_benchmark(result: dict[str, Any], out: Path) -> None:
    from defectmap.report.table import build_table, to_rich

    console.print(to_rich(build_table(result["rows"], result["detectors"]),
                          title=f"benchmark ({len(result['rows'])} runs)"))
    if result["missing"]:
        console.print("missing: " + ", ".join(m["category"] for m in result["missing"]),
                      markup=False, highlight=False)
    for row in result["rows"]:
        console.print(f"report {row['category']}/{row['detector']}: {row['report']}",
                      markup=False, highlight=False, soft_wrap=True)
    console.print(f"table: {out / 'table.md'} (also table.csv, table.json)", markup=False,
                  highlight=False, soft_wrap=True)


@app.command(
    "benchmark",
    epilog="Example: defectmap benchmark data/mvtec_ad --all --detector patchcore "
    "--detector padim --out bench/",
)
def benchmark_command(
    dataset_root: Path = typer.Argument(..., metavar="DATASET_ROOT",
                                        help="Dataset root with one folder per category."),
    category: list[str] | None = typer.Option(None, "--category", "-c", metavar="NAME",
                                              help="Category to run (repeatable)."),
    all_categories: bool = typer.Option(False, "--all",
                                        help="All 15 MVTec AD categories (missing skipped)."),
    detector: list[str] | None = typer.Option(None, "--detector", "-d", metavar="NAME",
                                              help="Detector (repeatable; default patchcore)."),
    backbone: str | None = typer.Option(None, "--backbone", metavar="NAME",
                                        help="Feature backbone."),
    image_size: int | None = image_size_option(),
    seed: int = seed_option(help="random_state of every fit."),
    alpha: float = ratio_option(DEFAULT_ALPHA, "--alpha", help="Target false-alarm rate"),
    out: Path = typer.Option(..., "--out", "-o", metavar="DIR", help="Output folder."),
) -> None:
    """Fit and evaluate every (category, detector) pair; print and write the table.

    Without --category or --all, every category found under DATASET_ROOT is run.
    """
    from defectmap.data.mvtec import select_categories
    from defectmap.evaluate.benchmark import run_benchmark

    if category and all_categories:
        raise CliUsageError("give either --category or --all, not both")
    categories = select_categories(dataset_root, category, all_categories)
    detectors = list(detector) if detector else [DEFAULT_DETECTOR]
    with _warnings_as_lines(), progress_display() as progress:
        result = run_benchmark(dataset_root, categories, detectors, out,
                               detector_params=_detector_params(backbone, image_size),
                               random_state=seed, alpha=alpha, on_result=_on_result,
                               on_missing=_on_missing, progress=progress)
    if not result["rows"]:
        raise DefectmapError(f"{dataset_root}: none of the categories "
                             f"{', '.join(categories)} could be evaluated")
    _print_benchmark(result, out)


@app.command(
    "demo",
    epilog="Example: defectmap demo --out runs/demo",
)
def demo_command(
    out: Path = typer.Option(Path("runs/demo"), "--out", "-o", metavar="DIR",
                             help="Output folder."),
    seed: int = seed_option(help="Seed of the synthetic data and the fit."),
    layout: str = typer.Option(
        "mvtec", "--layout", metavar="LAYOUT",
        help="Dataset layout: mvtec, loco, mvtec_ad2, visa or realiad."),
) -> None:
    """Synthesise a small dataset, fit the default detector, evaluate it, print the table.

    Runs offline in well under a minute on 2 CPU cores. --layout demonstrates another
    dataset's reader and protocol (e.g. loco: AU-sPRO per anomaly type).
    """
    from defectmap.demo import run_demo

    start = time.perf_counter()
    with _warnings_as_lines(), progress_display() as progress:
        result = run_demo(out, seed, layout=layout, on_result=_on_result, progress=progress)
    console.print(f"synthetic dataset ({result['layout']} layout): {result['dataset']} "
                  f"({result['n_train']} train, {result['n_test']} test images, "
                  f"{result['size']} px)", markup=False, highlight=False, soft_wrap=True)
    _print_benchmark(result, Path(out))
    if result["layout"] != "mvtec":
        _print_metrics(result["rows"][0])
    console.print(f"demo finished in {time.perf_counter() - start:.0f} s; open "
                  f"{result['rows'][0]['report']}", markup=False, highlight=False,
                  soft_wrap=True)
