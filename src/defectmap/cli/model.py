"""CLI commands on models: ``fit``, ``recalibrate``, ``predict``, ``evaluate``, ``benchmark``,
``demo``.

Thin wrappers: parse flags, call :mod:`defectmap.pipeline` and :mod:`defectmap.evaluate`
(with ``--ray``: :mod:`defectmap.distributed`), print. Heavy imports (torch, Ray) happen
inside the commands so that ``--help`` stays fast.
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
    seeds_option,
    tile_option,
    tile_overlap_option,
    tile_scale_option,
)
from defectmap.constants import (
    DEFAULT_ALPHA,
    DEFAULT_DETECTOR,
    DEFAULT_FOLDS,
    DEFAULT_FPR_LIMIT,
    DEFAULT_PIXEL_FPR,
    DEFAULT_TILE_OVERLAP,
    MAX_INPUT_SIZE,
    MIN_INPUT_SIZE,
)
from defectmap.errors import DefectmapError


def _detector_params(backbone: str | None, image_size: int | None) -> dict[str, Any]:
    params: dict[str, Any] = {}
    if backbone is not None:
        params["backbone"] = backbone
    if image_size is not None:
        params["input_size"] = image_size
    return params


def _tiling(tile: int | None, overlap: float | None, scale: float | None,
            params: dict[str, Any]) -> tuple[int | None, float]:
    """Check the tiling flags; set ``params["input_size"]`` from --tile-scale.

    The network input of a tile is ``round(tile * scale)`` pixels (scale 1 by default) unless
    --image-size gives it.
    """
    if tile is None:
        if overlap is not None or scale is not None:
            raise CliUsageError("--tile-overlap and --tile-scale need --tile SIZE")
        return None, DEFAULT_TILE_OVERLAP
    if scale is not None and "input_size" in params:
        raise CliUsageError("give --image-size or --tile-scale, not both (the network input "
                            "of a tile is SIZE x scale)")
    if "input_size" not in params:
        size = round(tile * (1.0 if scale is None else scale))
        if not MIN_INPUT_SIZE <= size <= MAX_INPUT_SIZE:
            raise CliUsageError(f"--tile {tile} at --tile-scale {scale:g} gives a {size} px "
                                f"network input; it must be {MIN_INPUT_SIZE} to "
                                f"{MAX_INPUT_SIZE}")
        params["input_size"] = size
    return tile, DEFAULT_TILE_OVERLAP if overlap is None else overlap


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
    dataset_root: Path = typer.Argument(..., metavar="DATASET_ROOT",
                                        help="Dataset root (or a category folder)."),
    category: str | None = typer.Option(None, "--category", "-c", metavar="NAME",
                                        help="Category under DATASET_ROOT, e.g. bottle."),
    detector: str = typer.Option(DEFAULT_DETECTOR, "--detector", "-d", metavar="NAME",
                                 help="Detector name."),
    backbone: str | None = typer.Option(None, "--backbone", metavar="NAME",
                                        help="Feature backbone."),
    image_size: int | None = image_size_option(),
    param: list[str] | None = typer.Option(
        None, "--param", metavar="KEY=VALUE", help="Detector parameter (repeatable), e.g. "
        "coreset_ratio=0.05; keys as in the detector's get_params()."),
    folds: int | None = count_option(
        None, "--folds", minimum=2, help=f"Cross-fitted calibration with K folds (the "
        f"default, K={DEFAULT_FOLDS}): every good image fits the final model"),
    val_ratio: float | None = ratio_option(
        None, "--val-ratio", low_open=False, help="Split conformal instead: hold out "
        "max(--min-val, ceil(ratio x n)) images of train/good to calibrate"),
    min_val: int = count_option(
        0, "--min-val", minimum=0, help="With --val-ratio: hold out at least this many "
        "validation images (default 0: no hidden minimum)"),
    val_dir: Path | None = typer.Option(
        None, "--val-dir", metavar="DIR", help="Split conformal on a separate folder of good "
        "images; all of train/good fits. Layouts with their own validation/good split "
        "(MVTec LOCO AD, MVTec AD 2) calibrate on it by default (--folds cross-fits)."),
    alpha: float = ratio_option(DEFAULT_ALPHA, "--alpha", help="Target false-alarm rate"),
    pixel_fpr: float = ratio_option(DEFAULT_PIXEL_FPR, "--pixel-fpr",
                                    help="Target fraction of good pixels flagged"),
    defects: Path | None = typer.Option(
        None, "--defects", metavar="DIR", help="Folder of known defective images: only "
        "scored, to report the miss rate at the threshold (never fitted, never moves the "
        "threshold)."),
    seed: int = seed_option(help="random_state of the folds/split and the fit."),
    tile: int | None = tile_option(),
    tile_overlap: float | None = tile_overlap_option(),
    tile_scale: float | None = tile_scale_option(),
    out: Path = typer.Option(..., "--out", "-o", metavar="DIR",
                             help="Model folder to write (a model folder is replaced whole; "
                             "a folder holding other files is refused)."),
) -> None:
    """Train a detector on the good training images and calibrate its thresholds.

    Calibration is cross-fitted by default (split conformal on the dataset's own
    validation/good images when its layout has them); --val-ratio or --val-dir switch to
    split conformal.

    With --tile, the model works on overlapping tiles of large images (see the README's
    "Tiling for large images"); predict, evaluate and serve then tile too.
    """
    from defectmap.data.layouts import load_category
    from defectmap.data.mvtec import list_images
    from defectmap.detectors import parse_params
    from defectmap.pipeline import train_model

    chosen = [flag for flag, given in (("--folds", folds is not None),
                                       ("--val-ratio", val_ratio is not None),
                                       ("--val-dir", val_dir is not None)) if given]
    if len(chosen) > 1:
        raise CliUsageError(f"{' and '.join(chosen)} are different calibrations: give one")
    if min_val and val_ratio is None:
        raise CliUsageError("--min-val applies to a validation split: give --val-ratio too")
    params = {**parse_params(detector, param or []), **_detector_params(backbone, image_size)}
    tile_size, overlap = _tiling(tile, tile_overlap, tile_scale, params)
    val_images = None if val_dir is None else list_images(val_dir, "validation folder")
    defect_images = None if defects is None else list_images(defects, "defects folder")
    data = load_category(dataset_root, category)
    start = time.perf_counter()
    with _warnings_as_lines(), progress_display() as progress:
        model = train_model(data, out, detector=detector, detector_params=params,
                            val_ratio=val_ratio, min_val=min_val, alpha=alpha,
                            random_state=seed, n_folds=folds, pixel_fpr=pixel_fpr,
                            validation_images=val_images, defect_images=defect_images,
                            tile_size=tile_size, tile_overlap=overlap, progress=progress)
    seconds = time.perf_counter() - start
    info = model.info
    tiled = "" if tile_size is None else \
        f" (tiles of {tile_size} px at a {params['input_size']} px network input)"
    console.print(f"trained [bold]{escape(detector)}[/bold] on {escape(data.name)}: fitted on "
                  f"{info['n_fit']} good images{tiled} in {seconds:.1f} s (fit "
                  f"{info['fit_seconds']:.1f} s, calibration {info['calibrate_seconds']:.1f} s)",
                  highlight=False)
    console.print(f"calibration: {info['calibration_summary']}", markup=False,
                  highlight=False, soft_wrap=True)
    if model.calibration is not None:
        _print_calibration(model.calibration)
    console.print(f"model written to {out}", markup=False, highlight=False, soft_wrap=True)


def _check_address(value: str | None) -> str | None:
    """A usage error (exit 2) for a --ray value that is no address."""
    if value is None:
        return None
    from defectmap.distributed.cluster import parse_address

    try:
        return parse_address(value)
    except DefectmapError as exc:
        raise typer.BadParameter(str(exc)) from None


def _ray_option() -> Any:
    return typer.Option(
        None, "--ray", metavar="ADDRESS", callback=_check_address,
        help="Run on Ray: auto (this machine's cluster), local (start one here), HOST:PORT "
        "or ray://HOST:PORT; a bare --ray means auto. Needs defectmap[ray].")


def _threads_option(what: str) -> Any:
    return count_option(
        None, "--threads",
        help=f"Torch threads (and the CPUs {what} reserves); default: torch's default here; "
        "results are bit-identical for the same count, locally or on Ray")


def _ray_memory_option(what: str) -> Any:
    return ratio_option(2.0, "--ray-memory", high=None,
                        help=f"Memory each {what} reserves on Ray, GiB")


@app.command(
    "recalibrate",
    epilog="Example: defectmap recalibrate models/bottle --alpha 0.05",
)
def recalibrate_command(
    model_dir: Path = typer.Argument(..., metavar="MODEL_DIR",
                                     help="Model folder written by `defectmap fit`."),
    alpha: float | None = ratio_option(None, "--alpha", help="New target false-alarm rate"),
    pixel_fpr: float | None = ratio_option(
        None, "--pixel-fpr", help="New pixel rate, one of those stored with the model"),
    min_region_area: int | None = count_option(
        None, "--min-region-area", help="Smallest predicted region kept, in pixels"),
) -> None:
    """Move a model's operating point without refitting (rewrites calibration.json)."""
    from defectmap.pipeline import recalibrate

    if alpha is None and pixel_fpr is None and min_region_area is None:
        raise CliUsageError("nothing to change: give --alpha, --pixel-fpr or "
                            "--min-region-area")
    with _warnings_as_lines():
        cal = recalibrate(model_dir, alpha=alpha, pixel_fpr=pixel_fpr,
                          min_region_area=min_region_area)
    _print_calibration(cal)
    console.print(f"calibration written to {Path(model_dir) / 'calibration.json'}",
                  markup=False, highlight=False, soft_wrap=True)


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
    parquet: bool = typer.Option(False, "--parquet",
                                 help="Also write results.parquet (the CSV's columns)."),
    ray: str | None = _ray_option(),
    threads: int | None = _threads_option("each model actor on Ray"),
    ray_actors: int | None = count_option(
        None, "--ray-actors", help="Model actors on Ray (default: the cluster's CPUs / "
        "--threads)"),
    ray_memory: float = _ray_memory_option("model actor"),
) -> None:
    """Score images: decision, score and p-value per image (CSV/JSON), maps and overlays.

    A folder gives the images directly in it (--recursive: and in its sub-folders). With
    --ray, Ray Data feeds the batches to a pool of model actors; the files are the same as
    without it. Every worker must see the model and the images at the same paths.
    """
    from rich.table import Table

    from defectmap.data.profile import InputMismatchError
    from defectmap.errors import UncalibratedModelError

    options: dict[str, Any] = {
        "batch_size": batch_size, "write_maps": not no_maps, "write_overlays": not no_overlays,
        "recursive": recursive, "uncalibrated": uncalibrated, "allow_mismatch": allow_mismatch,
        "parquet": parquet, "n_threads": threads}
    try:
        with _warnings_as_lines(), progress_display() as progress:
            if ray is not None:
                from defectmap.distributed import predict_on_ray

                summary = predict_on_ray(ray, model_dir, images, out, progress=progress,
                                         runtime=None if runtime is None else runtime.value,
                                         n_actors=ray_actors, memory_gib=ray_memory,
                                         **options)
            else:
                from defectmap.evaluate.predict import PredictSummary, predict_to_dir
                from defectmap.pipeline import load_model

                model = load_model(model_dir,
                                   runtime=None if runtime is None else runtime.value)
                rows = predict_to_dir(model, images, out, progress=progress, **options)
                summary = PredictSummary(len(rows),
                                         sum(r["decision"] == "defect" for r in rows),
                                         rows[:20], model.calibration is not None)
    except UncalibratedModelError:
        raise DefectmapError(
            f"{model_dir}: no calibration.json, so no ok/defect decision can be made; refit "
            "it with `defectmap fit`, or pass --uncalibrated for raw scores only") from None
    except InputMismatchError as exc:
        listed = "; ".join(f"{name}: {reason}" for name, reason in exc.mismatches)
        raise DefectmapError(
            f"{len(exc.mismatches)} image(s) differ from the training images: {listed}; "
            "pass --allow-mismatch to score them anyway") from None
    n_images, calibrated = summary.n_images, summary.calibrated
    table = Table(title=f"{n_images} images")
    columns = ("image", "score", "normalised", "p-value", "decision") if calibrated \
        else ("image", "score")
    for col in columns:
        table.add_column(col, justify="left" if col == "image" else "right")
    for row in summary.head[:20]:
        cells = [escape("/".join(Path(row["image"]).parts[-2:])), f"{row['score']:.4g}"]
        if calibrated:
            colour = "red" if row["decision"] == "defect" else "green"
            cells += [_fmt(row["normalized_score"]), _fmt(row["p_value"]),
                      f"[{colour}]{row['decision']}[/{colour}]"]
        table.add_row(*cells)
    console.print(table)
    if n_images > 20:
        console.print(f"... {n_images - 20} more in {Path(out) / 'results.csv'}",
                      markup=False, highlight=False, soft_wrap=True)
    if calibrated:
        text = f"{summary.n_defect} of {n_images} flagged as defect; results in {out}"
    else:
        text = (f"uncalibrated model: {n_images} raw scores, no ok/defect decision; "
                f"results in {out}")
    console.print(text, markup=False, highlight=False, soft_wrap=True)


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
    _print_operating_points(metrics)
    console.print(f"report: {Path(out) / 'report.html'}", markup=False, highlight=False,
                  soft_wrap=True)


def _on_result(m: dict[str, Any]) -> None:
    err_console.print(f"{m['category']} / {m['detector']}: image AUROC "
                      f"{_fmt(m['image_auroc'])}, pixel AUROC {_fmt(m['pixel_auroc'])}, "
                      f"AU-PRO {_fmt(m['aupro'])}", markup=False, highlight=False)


def _on_missing(category: str, reason: str) -> None:
    err_console.print(f"[yellow]skipped[/yellow] {escape(category)}: {escape(reason)}",
                      highlight=False, soft_wrap=True)


def _on_failed(f: dict[str, Any]) -> None:
    from rich.markup import escape

    err_console.print(f"[red]failed[/red] {escape(f['category'])} / {escape(f['column'])} "
                      f"after {f['attempts']} attempts: {escape(f['error'])}",
                      highlight=False, soft_wrap=True)


def _print_benchmark(result: dict[str, Any], out: Path) -> None:
    from defectmap.report.table import build_table, to_rich

    failed = result.get("failed", [])
    title = f"benchmark ({len(result['rows'])} runs"
    title += f", {len(failed)} failed)" if failed else ")"
    console.print(to_rich(build_table(result["rows"], result["detectors"], failed),
                          title=title))
    if result["missing"]:
        console.print("missing: " + ", ".join(m["category"] for m in result["missing"]),
                      markup=False, highlight=False)
    for f in failed:
        console.print(f"failed {f['category']}/{f['column']}: {f['error']}", markup=False,
                      highlight=False, soft_wrap=True)
    if result.get("resumed"):
        console.print(f"{result['resumed']} cells reused from earlier runs (--resume)")
    for row in result["rows"]:
        column = row.get("column", row["detector"])
        console.print(f"report {row['category']}/{column}: {row['report']}",
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
    seed: list[int] | None = seeds_option(
        help="random_state of the fits (repeatable: a cell per seed; default 0)."),
    param: list[str] | None = typer.Option(
        None, "--param", metavar="KEY=VALUE",
        help="Detector parameter of every cell (repeatable); a KEY given several times is a "
        "grid axis, e.g. --param coreset_ratio=0.01 --param coreset_ratio=0.1."),
    alpha: float = ratio_option(DEFAULT_ALPHA, "--alpha", help="Target false-alarm rate"),
    out: Path = typer.Option(..., "--out", "-o", metavar="DIR", help="Output folder."),
    resume: bool = typer.Option(False, "--resume",
                                help="Skip the cells whose results are already in --out."),
    ray: str | None = _ray_option(),
    threads: int | None = _threads_option("each cell on Ray"),
    ray_memory: float = _ray_memory_option("cell"),
    tile: int | None = tile_option(),
    tile_overlap: float | None = tile_overlap_option(),
    tile_scale: float | None = tile_scale_option(),
) -> None:
    """Fit and evaluate every (category, detector, parameter set, seed) cell; print and
    write the table.

    Without --category or --all, every category found under DATASET_ROOT is run. A cell that
    fails is retried once, then shown as failed; the others go on. With --ray each cell is a
    Ray task; DATASET_ROOT and --out must be at the same paths on every node. With --tile
    every cell's model works on tiles, as with ``fit --tile``.
    """
    from defectmap.data.mvtec import select_categories
    from defectmap.evaluate.benchmark import grid_from_items, run_benchmark

    if category and all_categories:
        raise CliUsageError("give either --category or --all, not both")
    categories = select_categories(dataset_root, category, all_categories)
    detectors = list(detector) if detector else [DEFAULT_DETECTOR]
    common = _detector_params(backbone, image_size)
    tile_size, overlap = _tiling(tile, tile_overlap, tile_scale, common)
    options: dict[str, Any] = {
        "detector_params": common, "tile_size": tile_size, "tile_overlap": overlap,
        "param_sets": grid_from_items(param or []), "seeds": list(seed or [0]),
        "alpha": alpha, "resume": resume, "n_threads": threads, "on_result": _on_result,
        "on_missing": _on_missing, "on_failed": _on_failed}
    with _warnings_as_lines(), progress_display() as progress:
        if ray is not None:
            from defectmap.distributed import run_benchmark_on_ray

            result = run_benchmark_on_ray(ray, dataset_root, categories,
                                          detectors, out, memory_gib=ray_memory,
                                          progress=progress, **options)
        else:
            result = run_benchmark(dataset_root, categories, detectors, out,
                                   progress=progress, **options)
    if not result["rows"] and not result["failed"]:
        raise DefectmapError(f"{dataset_root}: none of the categories "
                             f"{', '.join(categories)} could be evaluated")
    _print_benchmark(result, out)
    if result["failed"]:
        raise typer.Exit(1)


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
