"""Local vs Ray on this machine: predict throughput and benchmark wall time, with identity checks.

1. predict: a PatchCore model (fitted here on a synthetic category) scores ``--n-images``
   synthetic images (default 2,000; ``--size`` px; CSV/JSON/Parquet only, no maps or
   overlays) with ``predict_to_dir`` and with ``predict_on_ray`` (one model actor per
   ``--threads`` CPUs). Prints images/s of both and the overhead ratio local / Ray, with and
   without the start of the local Ray, and checks that the result files are byte-identical.
2. benchmark: a 2 x 2 x 2 grid (2 synthetic categories x patchcore, padim x seeds 0, 1), with
   ``run_benchmark`` and ``run_benchmark_on_ray``. Prints both wall times and their ratio,
   and checks that every metric is identical.

Each measurement runs ``--repeats`` times; medians are printed. Both modes use the same thread
count (``--threads``, default torch's here), so the Ray overhead is measured at equal compute.
Usage::

    .venv/bin/python benchmarks/scale.py [--n-images 2000] [--repeats 3] [--address local]

``--address`` may name a running cluster instead (``auto`` or ``HOST:PORT``); its workers must
see this machine's temporary folder at the same path.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any


def _median_time(fn: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def _images(root: Path, n_images: int, size: int) -> Path:
    """``n_images`` PNG files: 100 distinct synthetic test images, repeated."""
    from defectmap.data.synth import make_synthetic_dataset

    category = make_synthetic_dataset(root / "data", category="scale", n_train=24,
                                      n_test=100, size=size, seed=0)
    sources = sorted((category / "test").rglob("*.png"))
    folder = root / "images"
    folder.mkdir()
    for i in range(n_images):
        shutil.copyfile(sources[i % len(sources)], folder / f"{i:06d}.png")
    return folder


def _without_run_fields(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in r.items() if k not in ("timing", "model_hash", "report")}
            for r in rows]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-images", type=int, default=2000)
    parser.add_argument("--size", type=int, default=128, help="image side and model input")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--address", default="local")
    parser.add_argument("--skip-grid", action="store_true")
    args = parser.parse_args()

    from defectmap.calibrate import CalibrationWarning
    from defectmap.data.layouts import load_category
    from defectmap.data.synth import make_synthetic_dataset
    from defectmap.distributed import predict_on_ray, ray_session, run_benchmark_on_ray
    from defectmap.evaluate import predict_to_dir, run_benchmark
    from defectmap.pipeline import load_model, train_model
    from defectmap.threads import default_threads

    warnings.simplefilter("ignore", CalibrationWarning)
    threads = args.threads or default_threads()
    work = Path(tempfile.mkdtemp(prefix="defectmap-scale-"))
    try:
        images = _images(work, args.n_images, args.size)
        train_model(load_category(work / "data", "scale"), work / "model",
                    detector_params={"input_size": args.size}, alpha=0.1)
        model = load_model(work / "model")
        print(f"predict: {args.n_images} images of {args.size} px, PatchCore, {threads} "
              f"threads, CSV/JSON/Parquet (no maps, no overlays), {args.repeats} repeat(s)")
        local_s, _ = _median_time(lambda: predict_to_dir(
            model, [images], work / "p_local", write_maps=False, write_overlays=False,
            parquet=True, n_threads=threads), args.repeats)

        start = time.perf_counter()
        with ray_session(args.address):
            ray_start_s = time.perf_counter() - start
            ray_s, _ = _median_time(lambda: predict_on_ray(
                args.address, work / "model", [images], work / "p_ray", write_maps=False,
                write_overlays=False, parquet=True, n_threads=threads), args.repeats)
            identical = all((work / "p_local" / name).read_bytes()
                            == (work / "p_ray" / name).read_bytes()
                            for name in ("results.csv", "results.json", "results.parquet"))
            n = args.n_images
            print(f"  local          {local_s:8.1f} s  {n / local_s:7.1f} images/s")
            print(f"  Ray (running)  {ray_s:8.1f} s  {n / ray_s:7.1f} images/s   "
                  f"time ratio Ray/local {ray_s / local_s:.2f}")
            print(f"  Ray start      {ray_start_s:8.1f} s  (once per command with --ray local)"
                  f"   with the start {(ray_s + ray_start_s) / local_s:.2f}")
            print(f"  result files byte-identical: {identical}")

            if args.skip_grid:
                return
            for category, seed in (("cat_a", 1), ("cat_b", 2)):
                make_synthetic_dataset(work / "grid", category=category, n_train=24,
                                       n_test=16, size=args.size, seed=seed)
            grid: dict[str, Any] = {
                "detector_params": {"input_size": args.size}, "seeds": [0, 1],
                "alpha": 0.1, "n_threads": threads}
            print(f"benchmark: 2 categories x patchcore, padim x seeds 0, 1 = 8 cells, "
                  f"{args.size} px, {threads} threads per cell")
            local_grid_s, local = _median_time(lambda: run_benchmark(
                work / "grid", ["cat_a", "cat_b"], ["patchcore", "padim"], work / "b_local",
                **grid), args.repeats)
            ray_grid_s, on_ray = _median_time(lambda: run_benchmark_on_ray(
                args.address, work / "grid", ["cat_a", "cat_b"], ["patchcore", "padim"],
                work / "b_ray", **grid), args.repeats)
            same = _without_run_fields(local["rows"]) == _without_run_fields(on_ray["rows"])
            print(f"  local          {local_grid_s:8.1f} s")
            print(f"  Ray (running)  {ray_grid_s:8.1f} s   ratio Ray/local "
                  f"{ray_grid_s / local_grid_s:.2f}")
            print(f"  metrics identical ({len(local['rows'])} cells): {same}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
