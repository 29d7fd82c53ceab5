"""CLI commands on models: ``fit``, ``recalibrate``, ``predict``, ``evaluate``, ``benchmark``,
``demo``.

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

from defectmap.cli._common import app, console, err_console
from defectmap.cli.display import progress_display
from defectmap.constants import (
    DEFAULT_ALPHA,
    DEFAULT_DETECTOR,
    DEFAULT_FOLDS,
    DEFAULT_FPR_LIMIT,
    DEFAULT_PIXEL_FPR,
)
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
                    err_console.print(f"[yellow]warning:[/yellow] {text}", highlight=False,
                                      soft_wrap=True)


def _fmt(value: Any) -> str:
    return "-" if value is None else f"{float(value):.3f}"


def _print_calibration(cal: Any) -> None:
    """The operating point in words: threshold, rule, guarantee, pixel threshold, defects."""
    rule = ("p <= alpha" if cal.decision_rule == "p_value"
            else "the largest calibration score (too few scores for p <= alpha)")
    console.print(f"image threshold {cal.image_threshold:.4g} at alpha {cal.alpha:g}, "
                  f"decided by {rule}", highlight=False)
    console.print(f"guarantee: {cal.guarantee}", highlight=False, soft_wrap=True)
    if cal.pixel_threshold is not None:
        console.print(f"pixel threshold {cal.pixel_threshold:.4g} "
                      f"(pixel_fpr {cal.pixel_fpr:g})", highlight=False)
    if cal.miss_estimate is not None:
        console.print(f"known defects: {cal.miss_estimate}", highlight=False)


@app.command(
    "fit",
    epilog="Example: defectmap fit data/mvtec_ad --category bottle --out models/bottle",
)
def fit_command(
    dataset_root: Path = typer.Argument(..., help="Dataset root (or a category folder)."),
    category: str | None = typer.Option(None, "--category", "-c",
                                        help="Category under DATASET_ROOT, e.g. bottle."),
    detector: str = typer.Option(DEFAULT_DETECTOR, "--detector", "-d", help="Detector name."),
    backbone: str | None = typer.Option(None, "--backbone", help="Feature backbone."),
    image_size: int | None = typer.Option(None, "--image-size",
                                          help="Side of the square network input, pixels."),
    param: list[str] | None = typer.Option(
        None, "--param", help="Detector parameter KEY=VALUE (repeatable), e.g. "
        "coreset_ratio=0.05; keys as in the detector's get_params()."),
    folds: int | None = typer.Option(
        None, "--folds", help=f"Cross-fitted calibration with K folds (the default, "
        f"K={DEFAULT_FOLDS}): every good image fits the final model."),
    val_ratio: float | None = typer.Option(
        None, "--val-ratio", help="Split conformal instead: hold out this fraction of "
        "train/good (ceil(ratio x n) images) to calibrate."),
    val_dir: Path | None = typer.Option(
        None, "--val-dir", help="Split conformal on a separate folder of good images; "
        "all of train/good fits."),
    alpha: float = typer.Option(DEFAULT_ALPHA, "--alpha", help="Target false-alarm rate."),
    pixel_fpr: float = typer.Option(DEFAULT_PIXEL_FPR, "--pixel-fpr",
                                    help="Target fraction of good pixels flagged."),
    defects: Path | None = typer.Option(
        None, "--defects", help="Folder of known defective images: only scored, to report "
        "the miss rate at the threshold (never fitted, never moves the threshold)."),
    seed: int = typer.Option(0, "--seed", help="random_state of the folds/split and detector."),
    out: Path = typer.Option(..., "--out", "-o", help="Model folder to write."),
) -> None:
    """Train a detector on the good training images and calibrate its thresholds.

    Calibration is cross-fitted by default; --val-ratio or --val-dir switch to a split.
    """
    from defectmap.data.mvtec import list_images, load_category
    from defectmap.detectors import parse_params
    from defectmap.pipeline import train_model

    params = {**parse_params(detector, param or []), **_detector_params(backbone, image_size)}
    val_images = None if val_dir is None else list_images(val_dir, "validation folder")
    defect_images = None if defects is None else list_images(defects, "defects folder")
    data = load_category(dataset_root, category)
    start = time.perf_counter()
    with _warnings_as_lines(), progress_display() as progress:
        model = train_model(data, out, detector=detector, detector_params=params,
                            val_ratio=val_ratio, alpha=alpha, random_state=seed,
                            n_folds=folds, pixel_fpr=pixel_fpr, validation_images=val_images,
                            defect_images=defect_images, progress=progress)
    seconds = time.perf_counter() - start
    info = model.info
    console.print(f"trained [bold]{detector}[/bold] on {data.name}: fitted on "
                  f"{info['n_fit']} good images in {seconds:.1f} s (fit "
                  f"{info['fit_seconds']:.1f} s, calibration {info['calibrate_seconds']:.1f} s)")
    console.print(f"calibration: {info['calibration_summary']}", highlight=False,
                  soft_wrap=True)
    if model.calibration is not None:
        _print_calibration(model.calibration)
    console.print(f"model written to {out}")


@app.command(
    "recalibrate",
    epilog="Example: defectmap recalibrate models/bottle --alpha 0.05",
)
def recalibrate_command(
    model_dir: Path = typer.Argument(..., help="Model folder written by `defectmap fit`."),
    alpha: float | None = typer.Option(None, "--alpha", help="New target false-alarm rate."),
    pixel_fpr: float | None = typer.Option(
        None, "--pixel-fpr", help="New pixel rate, one of those stored with the model."),
    min_region_area: int | None = typer.Option(
        None, "--min-region-area", help="Smallest predicted region kept, in pixels."),
) -> None:
    """Move a model's operating point without refitting (rewrites calibration.json)."""
    from defectmap.pipeline import recalibrate

    if alpha is None and pixel_fpr is None and min_region_area is None:
        raise DefectmapError("nothing to change: give --alpha, --pixel-fpr or "
                             "--min-region-area")
    with _warnings_as_lines():
        cal = recalibrate(model_dir, alpha=alpha, pixel_fpr=pixel_fpr,
                          min_region_area=min_region_area)
    _print_calibration(cal)
    console.print(f"calibration written to {Path(model_dir) / 'calibration.json'}")


@app.command(
    "predict",
    epilog="Example: defectmap predict models/bottle photos/ part_17.png --out results/",
)
def predict_command(
    model_dir: Path = typer.Argument(..., help="Model folder written by `defectmap fit`."),
    images: list[Path] = typer.Argument(..., help="Image files and/or folders."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder."),
    batch_size: int = typer.Option(1, "--batch-size", help="Images per forward pass."),
    no_maps: bool = typer.Option(False, "--no-maps", help="Do not write the TIFF maps."),
    no_overlays: bool = typer.Option(False, "--no-overlays", help="Do not write overlays."),
) -> None:
    """Score images: decision, score and p-value per image (CSV/JSON), maps and overlays."""
    from rich.table import Table

    from defectmap.evaluate.predict import predict_to_dir
    from defectmap.pipeline import load_model

    model = load_model(model_dir)
    with progress_display() as progress:
        rows = predict_to_dir(model, images, out, batch_size=batch_size,
                              write_maps=not no_maps, write_overlays=not no_overlays,
                              progress=progress)
    table = Table(title=f"{len(rows)} images")
    for col in ("image", "score", "normalised", "p-value", "decision"):
        table.add_column(col, justify="left" if col == "image" else "right")
    for row in rows[:20]:
        colour = "red" if row["decision"] == "defect" else "green"
        table.add_row("/".join(Path(row["image"]).parts[-2:]), f"{row['score']:.4g}",
                      _fmt(row["normalized_score"]), _fmt(row["p_value"]),
                      f"[{colour}]{row['decision']}[/{colour}]")
    console.print(table)
    if len(rows) > 20:
        console.print(f"... {len(rows) - 20} more in {Path(out) / 'results.csv'}")
    n_defect = sum(r["decision"] == "defect" for r in rows)
    console.print(f"{n_defect} of {len(rows)} flagged as defect; results in {out}")


def _print_metrics(metrics: dict[str, Any]) -> None:
    from rich.table import Table

    table = Table(title=f"{metrics['detector']} on {metrics['category']}")
    for col in ("", "image AUROC", "pixel AUROC", "AU-PRO", "F1-max", "images"):
        table.add_column(col, justify="left" if not col else "right")
    for name, m in sorted((metrics.get("per_defect") or {}).items()):
        table.add_row(name, _fmt(m.get("image_auroc")), _fmt(m.get("pixel_auroc")),
                      _fmt(m.get("aupro")), _fmt(m.get("f1_max")), str(m.get("n_images")))
    table.add_row("[bold]all[/bold]", _fmt(metrics.get("image_auroc")),
                  _fmt(metrics.get("pixel_auroc")), _fmt(metrics.get("aupro")),
                  _fmt(metrics.get("f1_max")), str(metrics.get("n_images")), style="bold")
    console.print(table)


def _print_operating_points(metrics: dict[str, Any]) -> None:
    """Each alpha's threshold (good images only) and its test-set rates, beside the oracle."""
    from rich.table import Table

    points = metrics.get("operating_points")
    if not points:
        return
    table = Table(title="operating points (thresholds from good images; rates on the test set)")
    for col in ("alpha", "rule", "threshold", "bound", "false-alarm rate", "miss rate"):
        table.add_column(col, justify="left" if col in ("alpha", "rule") else "right")
    for p in points:
        rule = "p <= alpha" if p["decision_rule"] == "p_value" else "largest score"
        table.add_row(f"{p['alpha']:g}" + (" (model)" if p["chosen"] else ""), rule,
                      f"{p['threshold']:.4g}", _fmt(p["false_alarm_bound"]),
                      _fmt(p["false_alarm_rate"]), _fmt(p["miss_rate"]))
    oracle = metrics.get("oracle") or {}
    if oracle.get("threshold") is not None:
        table.add_row("oracle", "uses test labels", f"{oracle['threshold']:.4g}", "-",
                      _fmt(oracle["false_alarm_rate"]), _fmt(oracle["miss_rate"]),
                      style="dim")
    console.print(table)


@app.command(
    "evaluate",
    epilog="Example: defectmap evaluate models/bottle data/mvtec_ad --category bottle "
    "--out eval/bottle",
)
def evaluate_command(
    model_dir: Path = typer.Argument(..., help="Model folder written by `defectmap fit`."),
    dataset_root: Path = typer.Argument(..., help="Dataset root (or a category folder)."),
    category: str | None = typer.Option(None, "--category", "-c", help="Category to test."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder (replaced atomically)."),
    fpr_limit: float = typer.Option(DEFAULT_FPR_LIMIT, "--fpr-limit",
                                    help="Integration limit of AU-PRO."),
    batch_size: int = typer.Option(1, "--batch-size", help="Images per forward pass."),
    no_maps: bool = typer.Option(False, "--no-maps", help="Do not write the TIFF maps."),
) -> None:
    """Run the MVTec AD protocol on the test split: metrics.json, maps and report.html."""
    from defectmap.data.mvtec import load_category
    from defectmap.evaluate.protocol import evaluate_model
    from defectmap.pipeline import load_model

    model = load_model(model_dir)
    data = load_category(dataset_root, category)
    with progress_display() as progress:
        metrics = evaluate_model(model, data, out, fpr_limit=fpr_limit,
                                 write_maps=not no_maps, batch_size=batch_size,
                                 progress=progress)
    _print_metrics(metrics)
    _print_operating_points(metrics)
    console.print(f"report: {Path(out) / 'report.html'}")


def _on_result(m: dict[str, Any]) -> None:
    err_console.print(f"{m['category']} / {m['detector']}: image AUROC "
                      f"{_fmt(m['image_auroc'])}, pixel AUROC {_fmt(m['pixel_auroc'])}, "
                      f"AU-PRO {_fmt(m['aupro'])}")


def _on_missing(category: str, reason: str) -> None:
    err_console.print(f"[yellow]skipped[/yellow] {category}: {reason}", highlight=False)


def _print_benchmark(result: dict[str, Any], out: Path) -> None:
    from defectmap.report.table import build_table, to_rich

    console.print(to_rich(build_table(result["rows"], result["detectors"]),
                          title=f"benchmark ({len(result['rows'])} runs)"))
    if result["missing"]:
        console.print("missing: " + ", ".join(m["category"] for m in result["missing"]))
    for row in result["rows"]:
        console.print(f"report {row['category']}/{row['detector']}: {row['report']}")
    console.print(f"table: {out / 'table.md'} (also table.csv, table.json)")


@app.command(
    "benchmark",
    epilog="Example: defectmap benchmark data/mvtec_ad --all --detector patchcore "
    "--detector padim --out bench/",
)
def benchmark_command(
    dataset_root: Path = typer.Argument(..., help="Dataset root with one folder per category."),
    category: list[str] | None = typer.Option(None, "--category", "-c",
                                              help="Category to run (repeatable)."),
    all_categories: bool = typer.Option(False, "--all",
                                        help="All 15 MVTec AD categories (missing skipped)."),
    detector: list[str] | None = typer.Option(None, "--detector", "-d",
                                              help="Detector (repeatable; default patchcore)."),
    backbone: str | None = typer.Option(None, "--backbone", help="Feature backbone."),
    image_size: int | None = typer.Option(None, "--image-size",
                                          help="Side of the square network input, pixels."),
    seed: int = typer.Option(0, "--seed", help="random_state of every fit."),
    alpha: float = typer.Option(DEFAULT_ALPHA, "--alpha", help="Target false-alarm rate."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder."),
) -> None:
    """Fit and evaluate every (category, detector) pair; print and write the table.

    Without --category or --all, every category found under DATASET_ROOT is run.
    """
    from defectmap.data.mvtec import select_categories
    from defectmap.evaluate.benchmark import run_benchmark

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
    out: Path = typer.Option(Path("runs/demo"), "--out", "-o", help="Output folder."),
    seed: int = typer.Option(0, "--seed", help="Seed of the synthetic data and the fit."),
) -> None:
    """Synthesise a small dataset, fit the default detector, evaluate it, print the table.

    Runs offline in well under a minute on 2 CPU cores.
    """
    from defectmap.demo import run_demo

    start = time.perf_counter()
    with _warnings_as_lines(), progress_display() as progress:
        result = run_demo(out, seed, on_result=_on_result, progress=progress)
    console.print(f"synthetic dataset: {result['dataset']} ({result['n_train']} train, "
                  f"{result['n_test']} test images, {result['size']} px)")
    _print_benchmark(result, Path(out))
    console.print(f"demo finished in {time.perf_counter() - start:.0f} s; open "
                  f"{result['rows'][0]['report']}")
