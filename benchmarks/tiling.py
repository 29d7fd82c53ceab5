"""Tiling vs. plain resize on large images with small defects (synthetic, 4096 x 4096).

Writes a synthetic dataset (:mod:`defectmap.data.synth_large`: a woven surface, 20-pixel
defects of two kinds, gray PNGs) into a temporary folder, fits PatchCore on its good
training images once per method, scores the test images and prints one table:

* ``resize N``: every image resized to one N x N network input (the default mode);
* ``tiles T @ s``: overlapping T x T tiles (native pixels), each resized to ``T * s``
  network pixels, one memory bank over all training tiles, maps stitched at native size
  (:class:`defectmap.tiling.TiledDetector`).

Columns: the network input, tiles per image, fit seconds, median ms per test image
(decode + scoring + stitching, one image per ``predict`` call), pixel AUROC, AU-PRO at
FPR 0.3 (MVTec AD) and 0.05 (MVTec AD 2), image AUROC. Pixel metrics are exact, over every
native pixel of every test image (8 x 16.8 M pixels by default).

Usage::

    .venv/bin/python benchmarks/tiling.py [--size 4096] [--defect-size 20] [--n-train 4]
        [--n-test 8] [--resize 320] [--tile 640] [--tile-scale 0.5] [--overlap 0.25]
        [--coreset-ratio 0.01] [--threads 2] [--work DIR] [--json out.json]

``--resize`` and ``--tile`` take several values (one row each; ``--tile`` with none: no
tiled row). The last line is the process's peak resident memory, over all rows: run one
row per process to compare memory. Timings on a shared machine are inflated; compare the
rows of one run.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", type=int, default=4096, help="image side, pixels")
    p.add_argument("--defect-size", type=int, default=20, help="defect diameter, pixels")
    p.add_argument("--n-train", type=int, default=4)
    p.add_argument("--n-test", type=int, default=8)
    p.add_argument("--resize", type=int, nargs="*", default=[320],
                   help="network inputs of the plain-resize rows")
    p.add_argument("--tile", type=int, nargs="*", default=[640], help="tile sides, native px")
    p.add_argument("--tile-scale", type=float, default=0.5,
                   help="network pixels per native pixel of a tile")
    p.add_argument("--overlap", type=float, default=0.25, help="tile overlap ratio")
    p.add_argument("--coreset-ratio", type=float, default=0.01)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work", type=Path, default=None,
                   help="dataset folder to reuse (written there when missing); default: a "
                        "temporary folder, removed afterwards")
    p.add_argument("--json", type=Path, default=None, help="also write the rows as JSON")
    return p.parse_args(argv)


def _pixel_figures(maps: list[np.ndarray], masks: list[np.ndarray]) -> dict[str, float]:
    """Pixel AUROC and AU-PRO at 0.3 and 0.05 from one sort of the normal pixels."""
    from defectmap.metrics.pixel import (
        aupro_from_table,
        collect_pixels,
        pixel_metrics_from_table,
        table_for,
    )

    (group,) = collect_pixels(maps, masks).values()
    table = table_for([group], weighted=True)
    figures = pixel_metrics_from_table(table, 0.3)
    return {"pixel_auroc": figures["pixel_auroc"], "aupro_0.3": figures["aupro"],
            "aupro_0.05": aupro_from_table(table, 0.05)}


def _run(name: str, scorer: Any, train: list[Path], test: list[Path], masks: list[np.ndarray],
         labels: np.ndarray, tiles: int) -> dict[str, Any]:
    from defectmap.metrics import image_auroc

    t0 = time.perf_counter()
    scorer.fit(train)
    fit_s = time.perf_counter() - t0
    maps, scores, times = [], [], []
    for path in test:
        t = time.perf_counter()
        prediction = scorer.predict([path])
        times.append(time.perf_counter() - t)
        maps.append(prediction.maps[0])
        scores.append(float(prediction.scores[0]))
    row = {"method": name, "input": int(scorer.input_size), "tiles": tiles,
           "fit_s": round(fit_s, 1), "ms_per_image": round(1000 * float(np.median(times))),
           **_pixel_figures(maps, masks),
           "image_auroc": image_auroc(np.array(scores), labels)}
    print(f"  {name}: done ({row['fit_s']} s fit)", file=sys.stderr, flush=True)
    return row


def _table(rows: list[dict[str, Any]]) -> str:
    head = ("| method | network input | tiles / image | fit s | ms / image | pixel AUROC "
            "| AU-PRO@0.3 | AU-PRO@0.05 | image AUROC |")
    lines = [head, "|" + "---|" * 9]
    for r in rows:
        lines.append(f"| {r['method']} | {r['input']} | {r['tiles']} | {r['fit_s']:.0f} | "
                     f"{r['ms_per_image']} | {r['pixel_auroc']:.3f} | {r['aupro_0.3']:.3f} | "
                     f"{r['aupro_0.05']:.3f} | {r['image_auroc']:.3f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    import torch

    from defectmap.data.io import read_mask
    from defectmap.data.layouts import load_category
    from defectmap.data.synth_large import make_large_image_dataset
    from defectmap.detectors import create_detector
    from defectmap.tiling import TiledDetector, tile_grid

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="tiling-bench-") as tmp:
        root = args.work or Path(tmp)
        if not (root / "large").is_dir():
            t0 = time.perf_counter()
            make_large_image_dataset(root, n_train=args.n_train, n_test=args.n_test,
                                     size=args.size, defect_size=args.defect_size,
                                     seed=args.seed)
            print(f"dataset written in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
        data = load_category(root, "large")
        train = [s.path for s in data.train]
        test = [s.path for s in data.test]
        masks = [np.zeros((args.size, args.size), bool) if s.mask_path is None
                 else read_mask(s.mask_path) for s in data.test]
        labels = np.array([s.label for s in data.test])
        # Warm-up (backbone load, first-call costs) outside every timed row.
        create_detector("patchcore", input_size=64).fit([np.zeros((64, 64), np.uint8)])
        rows = []
        for size in args.resize:
            det = create_detector("patchcore", input_size=size,
                                  coreset_ratio=args.coreset_ratio, random_state=args.seed)
            rows.append(_run(f"resize {size}", det, train, test, masks, labels, 1))
        for tile in args.tile:
            size = round(tile * args.tile_scale)
            det = create_detector("patchcore", input_size=size,
                                  coreset_ratio=args.coreset_ratio, random_state=args.seed)
            n_tiles = len(tile_grid(args.size, args.size, tile, args.overlap))
            rows.append(_run(f"tiles {tile} @ {args.tile_scale:g}",
                             TiledDetector(det, tile_size=tile, overlap_ratio=args.overlap),
                             train, test, masks, labels, n_tiles))
    print(f"{args.size} x {args.size} images, {args.defect_size} px defects, "
          f"{len(train)} train / {len(test)} test ({int(labels.sum())} defective), "
          f"PatchCore coreset {args.coreset_ratio:g}, overlap {args.overlap:g}, "
          f"torch threads {torch.get_num_threads()}")
    print(_table(rows))
    # Linux reports ru_maxrss in KiB: the peak of the whole process, all rows together.
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak resident memory of this process (all rows): {peak:.0f} MiB")
    if args.json is not None:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                         "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
