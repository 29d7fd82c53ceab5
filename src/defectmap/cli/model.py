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

from defectmap.calibrate import DEFAULT_ALPHA
from defectmap.cli._common import app, console, err_console
from defectmap.constants import DEFAULT_FPR_LIMIT, MVTEC_CATEGORIES
from defectmap.errors import DefectmapError

#: Detector used when none is given (same as defectmap.detectors.DEFAULT_DETECTOR, kept
#: here so that `--help` does not import torch).
DEFAULT_DETECTOR = "patchcore"

#: The demo's synthetic dataset and image size: small enough to run in well under three
#: minutes on 2 CPU cores, large enough that the image AUROC is far above chance.
DEMO_N_TRAIN = 40
DEMO_N_TEST = 30
DEMO_SIZE = 160
DEMO_INPUT_SIZE = 160
# 40 train images leave 10 for validation: enough for the conformal guarantee at alpha = 0.1
# (needs 9), not at the default 0.01 (needs 99).
DEMO_ALPHA = 0.1


def _detector_params(backbone: str | None, image_size: int | None) -> dict[str, Any]:
    params: dict[str, Any] = {}
    if backbone is not None:
        params["backbone"] = backbone
    if image_size is not None:
        if image_size < 32:
            raise DefectmapError(f"--image-size must be at least 32, got {image_size}")
        params["input_size"] = image_size
    return params


def _check_detectors(names: list[str]) -> None:
    from defectmap.detectors import list_detectors

    known = list_detectors()
    for name in names:
        if name not in known:
            raise DefectmapError(f"unknown detector {name!r}; known detectors: "
                                 f"{', '.join(known)}")


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
    val_ratio: float = typer.Option(0.1, "--val-ratio",
                                    help="Fraction of train/good held out to calibrate."),
    alpha: float = typer.Option(DEFAULT_ALPHA, "--alpha", help="Target false-alarm rate."),
    seed: int = typer.Option(0, "--seed", help="random_state of the split and detector."),
    out: Path = typer.Option(..., "--out", "-o", help="Model folder to write."),
) -> None:
    """Train a detector on the good training images and calibrate its thresholds."""
    from defectmap.data.mvtec import load_category
    from defectmap.pipeline import train_model

    _check_detectors([detector])
    params = _detector_params(backbone, image_size)
    data = load_category(dataset_root, category)
    start = time.perf_counter()
    with _warnings_as_lines():
        model = train_model(data, out, detector=detector, detector_params=params,
                            val_ratio=val_ratio, alpha=alpha, random_state=seed)
    seconds = time.perf_counter() - start
    cal = model.calibration
    console.print(f"trained [bold]{detector}[/bold] on {data.name} "
                  f"({len(data.train)} good images) in {seconds:.1f} s")
    if cal is not None:
        console.print(f"image threshold {cal.image_threshold:.4g} (alpha {cal.alpha:g}, "
                      f"{cal.n_val} validation images)")
    console.print(f"model written to {out}")


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

    from defectmap.evaluate import predict_to_dir
    from defectmap.pipeline import load_model

    model = load_model(model_dir)
    rows = predict_to_dir(model, images, out, batch_size=batch_size,
                          write_maps=not no_maps, write_overlays=not no_overlays)
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
    from defectmap.evaluate import evaluate_model
    from defectmap.pipeline import load_model

    model = load_model(model_dir)
    data = load_category(dataset_root, category)
    metrics = evaluate_model(model, data, out, fpr_limit=fpr_limit, write_maps=not no_maps,
                             batch_size=batch_size)
    _print_metrics(metrics)
    console.print(f"report: {Path(out) / 'report.html'}")


def _run_and_print(dataset_root: Path, categories: list[str], detectors: list[str],
                   out: Path, params: dict[str, Any], seed: int,
                   alpha: float = DEFAULT_ALPHA) -> dict[str, Any]:
    from defectmap.evaluate import run_benchmark
    from defectmap.report.table import build_table, to_rich

    def on_result(m: dict[str, Any]) -> None:
        err_console.print(f"{m['category']} / {m['detector']}: image AUROC "
                          f"{_fmt(m['image_auroc'])}, pixel AUROC {_fmt(m['pixel_auroc'])}, "
                          f"AU-PRO {_fmt(m['aupro'])}")

    def on_missing(category: str, reason: str) -> None:
        err_console.print(f"[yellow]skipped[/yellow] {category}: {reason}", highlight=False)

    with _warnings_as_lines():
        result = run_benchmark(dataset_root, categories, detectors, out,
                               detector_params=params, random_state=seed, alpha=alpha,
                               on_result=on_result, on_missing=on_missing)
    if not result["rows"]:
        raise DefectmapError(f"{dataset_root}: none of the categories "
                             f"{', '.join(categories)} could be evaluated")
    console.print(to_rich(build_table(result["rows"], detectors),
                          title=f"benchmark ({len(result['rows'])} runs)"))
    if result["missing"]:
        console.print("missing: " + ", ".join(m["category"] for m in result["missing"]))
    for row in result["rows"]:
        console.print(f"report {row['category']}/{row['detector']}: {row['report']}")
    console.print(f"table: {out / 'table.md'} (also table.csv, table.json)")
    return result


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
    from defectmap.data.mvtec import list_categories

    if category and all_categories:
        raise DefectmapError("give either --category or --all, not both")
    detectors = list(detector) if detector else [DEFAULT_DETECTOR]
    _check_detectors(detectors)
    params = _detector_params(backbone, image_size)
    if not Path(dataset_root).is_dir():
        raise DefectmapError(f"{dataset_root}: dataset root does not exist or is not a folder")
    if all_categories:
        categories = list(MVTEC_CATEGORIES)
    elif category:
        categories = list(category)
    else:
        categories = list_categories(dataset_root)
        if not categories:
            raise DefectmapError(f"{dataset_root}: no category folders found")
    _run_and_print(dataset_root, categories, detectors, out, params, seed, alpha)


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
    from defectmap.data.synth import make_synthetic_dataset

    start = time.perf_counter()
    data_root = Path(out) / "data"
    make_synthetic_dataset(data_root, category="synthetic", kind="object",
                           n_train=DEMO_N_TRAIN, n_test=DEMO_N_TEST, size=DEMO_SIZE,
                           seed=seed, overwrite=True)
    console.print(f"synthetic dataset: {data_root / 'synthetic'} ({DEMO_N_TRAIN} train, "
                  f"{DEMO_N_TEST} test images, {DEMO_SIZE} px)")
    result = _run_and_print(data_root, ["synthetic"], [DEFAULT_DETECTOR], Path(out),
                            {"input_size": DEMO_INPUT_SIZE}, seed, DEMO_ALPHA)
    console.print(f"demo finished in {time.perf_counter() - start:.0f} s; open "
                  f"{result['rows'][0]['report']}")
