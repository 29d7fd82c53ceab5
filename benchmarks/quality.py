"""PatchCore detection quality and cost, old vs new defaults, plus the coreset variants.

For every category (MVTec-layout category folders given on the command line, plus four
synthetic categories generated on the fly: object and texture, RGB and grayscale), each
configuration (``old``: the defaults of defectmap 0.1; ``new``: today's defaults; ``context``:
today's defaults with the opt-in ``context=0.5``) is fitted on
``train/good`` and evaluated on ``test`` in its own child process (so that its peak RSS is its
own). It prints image AUROC, pixel AUROC and AU-PRO@0.3 (exact, at native resolution, with
``defectmap.metrics``), fit seconds, the median milliseconds per test image at batch 1
(preprocessing, backbone, nearest-neighbour search, upsampling to native size) and the peak
RSS after fitting and overall. Nothing here reads a test label to choose a setting.

Then, on the first category, the coreset variants on the same patch features (new defaults'
features): selection seconds, coverage radius (max over all training patches of the distance
to the nearest kept centre, in the full feature space) and mean distance, both relative to
exact greedy, and the metrics each bank gives.

Usage::

    .venv/bin/python benchmarks/quality.py ../shared/data/mvtec_ad/bottle \\
        /work/data/mvtec_ad/pill [--repeats 3] [--json out.json]
    .venv/bin/python benchmarks/quality.py --quick     # bottle subset, small synthetic sets

The synthetic categories have 60 train / 40 test images of 384 px. The coreset variants run
on the first category given (exact greedy in pooled rounds is the reference: the textbook
loop makes the same choices, ~20x slower, and runs only with ``--quick``).

``--quick`` uses every 4th training and every 2nd test image of the real categories, 30
train / 20 test synthetic images of 256 px, one repeat, and runs the coreset variants on the
first 40 training images. Timings on a shared machine are inflated; compare within one run.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEFAULT_ROOTS = [REPO.parent / "shared" / "data" / "mvtec_ad" / "bottle"]
#: PatchCore's defaults in defectmap 0.1 (format 1), as today's parameters.
CONFIGS: dict[str, dict[str, Any]] = {
    "old": {"input_size": 320, "coreset_ratio": 0.01, "max_memory": None, "coreset": "greedy",
            "image_score": "reweighted", "n_nearest": 1, "sigma": 4.0},
    "new": {},
    # opt-in, not a default: the wide map component for defects that cover the whole part
    "context": {"context": 0.5},
}
SYNTHETIC = [(kind, gray) for kind in ("object", "texture") for gray in (False, True)]


# -- data -------------------------------------------------------------------------------------
def make_synthetic(out: Path, kind: str, gray: bool, size: int, n_train: int,
                   n_test: int) -> Path:
    """A synthetic category in the MVTec layout (``defectmap.data.synth.render_pair``).

    A defect that cannot be placed on one image (thin scratches at large sizes fall under
    the generator's minimum area) is drawn again on the next key, so that every defect type
    is present at any size.
    """
    from PIL import Image

    from defectmap.data.synth import DEFECT_TYPES, render_pair
    from defectmap.errors import DatasetError

    name = f"synthetic_{kind}_{'gray' if gray else 'rgb'}"
    folder = out / name
    if (folder / "done").is_file():
        return folder
    seed = 11 if kind == "object" else 12

    def save(array: np.ndarray, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(array).save(path)

    for i in range(n_train):
        save(render_pair(kind, size, gray, seed, (1, i), None)[1],
             folder / "train" / "good" / f"{i:03d}.png")
    n_defective = n_test // 2
    for i in range(n_test - n_defective):
        save(render_pair(kind, size, gray, seed, (2, i), None)[1],
             folder / "test" / "good" / f"{i:03d}.png")
    counts: dict[str, int] = {}
    for i in range(n_defective):
        defect = DEFECT_TYPES[i % len(DEFECT_TYPES)]
        for attempt in range(100):
            try:
                _, image, mask = render_pair(kind, size, gray, seed, (3, i, attempt), defect)
                break
            except DatasetError:
                continue
        else:
            raise RuntimeError(f"cannot place {defect} at {size} px")
        k = counts.get(defect, 0)
        counts[defect] = k + 1
        save(image, folder / "test" / defect / f"{k:03d}.png")
        save(mask.astype(np.uint8) * 255, folder / "ground_truth" / defect / f"{k:03d}_mask.png")
    (folder / "done").write_text("")
    return folder


def load_split(root: Path, quick: bool) -> tuple[list, list, np.ndarray, list]:
    """Train paths, test images (uint8 arrays), labels and masks (bool arrays)."""
    from defectmap.data.io import read_image, read_mask
    from defectmap.data.mvtec import load_category

    data = load_category(root)
    train, test = data.train, data.test
    if quick and not root.name.startswith("synthetic"):
        train, test = train[::4], test[::2]
    images = [read_image(s.path) for s in test]
    labels = np.array([s.label for s in test])
    masks = [read_mask(s.mask_path) if s.mask_path is not None
             else np.zeros(im.shape[:2], bool) for s, im in zip(test, images, strict=True)]
    return [s.path for s in train], images, labels, masks


def quality_metrics(scores: np.ndarray, maps: list[np.ndarray], labels: np.ndarray,
                    masks: list[np.ndarray]) -> dict[str, float]:
    from defectmap.metrics import aupro, image_auroc, pixel_auroc

    out = {"image_auroc": image_auroc(scores, labels)}
    if any(m.any() for m in masks):
        out["pixel_auroc"] = pixel_auroc(maps, masks)
        out["aupro"] = aupro(maps, masks, 0.3)
    return out


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# -- one fit + evaluation (child process) ------------------------------------------------------
def run_config(root: Path, config: str, quick: bool) -> dict[str, Any]:
    from defectmap.detectors import create_detector
    from defectmap.features import load_backbone

    train, images, labels, masks = load_split(root, quick)
    detector = create_detector("patchcore", **CONFIGS[config])
    load_backbone(detector.backbone, type(detector)._strides)  # weights load is not fit time
    start = time.perf_counter()
    detector.fit(train)
    fit_s = time.perf_counter() - start
    fit_rss = _rss_mb()
    times, scores, maps = [], [], []
    for image in images:
        t0 = time.perf_counter()
        pred = detector.predict([image])
        times.append(time.perf_counter() - t0)
        scores.append(float(pred.scores[0]))
        maps.append(pred.maps[0])
    result = quality_metrics(np.array(scores), maps, labels, masks)
    result.update(
        category=root.name, config=config, params=detector.get_params(), n_train=len(train),
        n_test=len(images), n_memory=int(detector.memory_bank_.shape[0]), fit_s=fit_s,
        ms_per_image=1000 * statistics.median(times[1:] or times), fit_rss_mb=fit_rss,
        peak_rss_mb=_rss_mb(),
    )
    return result


# -- coreset variants ----------------------------------------------------------------------------
def _features(detector, images: list, backbone) -> tuple[Any, int]:
    """All patch features of the images in one preallocated tensor (N, D); patches/image."""
    import torch

    from defectmap.detectors.patchcore import aggregate_patches
    from defectmap.features.preprocess import as_image_array, preprocess

    out = None
    with torch.inference_mode():
        for i, image in enumerate(images):
            x = preprocess([as_image_array(image)], detector.input_size, backbone.mean,
                           backbone.std)
            emb = aggregate_patches(backbone(x), detector.n_features)
            patches = emb.permute(0, 2, 3, 1).reshape(-1, emb.shape[1])
            if out is None:
                per_image = patches.shape[0]
                out = torch.empty((len(images) * per_image, patches.shape[1]))
            out[i * per_image : (i + 1) * per_image] = patches
    assert out is not None
    return out, per_image


def coreset_variants(root: Path, quick: bool) -> list[dict[str, Any]]:
    """Time, coverage and metrics of each coreset variant on the same patch features."""
    import torch

    from defectmap.detectors import create_detector
    from defectmap.detectors.base import maps_to_native
    from defectmap.detectors.coreset import StreamingCoreset, greedy_coreset
    from defectmap.detectors.neighbors import NearestNeighborIndex
    from defectmap.detectors.patchcore import CORESET_CHUNK

    train, images, labels, masks = load_split(root, quick)
    if quick:
        train = train[:40]
    detector = create_detector("patchcore")
    backbone = detector._backbone()
    x, per_image = _features(detector, train, backbone)
    test, _ = _features(detector, images, backbone)
    n, dim = x.shape
    m = detector._memory_size(n)
    grid = int(round(per_image ** 0.5))

    def two_stage(oversample: float, pdim: int = 64):
        def run(rng):
            sampler = StreamingCoreset(n, m, dim, rng, pdim, CORESET_CHUNK, oversample)
            for start in range(0, n, per_image):
                sampler.add(x[start : start + per_image])
            return sampler.result()
        return run

    def greedy(pdim: int | None, pool: int | None = None):
        def run(rng):
            kwargs = {} if pool is None else {"pool_size": pool}
            return x[torch.from_numpy(greedy_coreset(x, m, rng, pdim, **kwargs))]
        return run

    # The textbook loop makes the same choices as the pooled rounds (tests/test_detectors_core)
    # but takes ~20x longer: only in --quick runs.
    textbook = [("exact greedy, textbook loop (one pass per centre), proj 64", greedy(64, 1))]
    variants = (textbook if quick else []) + [
        ("exact greedy, pooled rounds, proj 64", greedy(64)),
        ("exact greedy, pooled rounds, proj 32", greedy(32)),
        ("exact greedy, pooled rounds, proj 128", greedy(128)),
        ("two-stage, oversample 2, proj 64", two_stage(2.0)),
        ("two-stage, oversample 4, proj 64 (default)", two_stage(4.0)),
        ("two-stage, oversample 8, proj 64", two_stage(8.0)),
        ("random subset", lambda rng: x[torch.from_numpy(rng.choice(n, m, replace=False))]),
    ]
    rows: list[dict[str, Any]] = []
    for label, select in variants:
        start = time.perf_counter()
        bank = select(np.random.default_rng(0)).contiguous()
        seconds = time.perf_counter() - start
        index = NearestNeighborIndex(bank)
        cover = torch.cat([index.search(x[s : s + 65536], 1)[0][:, 0]
                           for s in range(0, n, 65536)])
        grids = torch.stack([index.search(test[s : s + per_image], 1)[0][:, 0]
                             for s in range(0, test.shape[0], per_image)])
        grids = grids.reshape(-1, grid, grid)
        maps = [maps_to_native(grids[i : i + 1], [im.shape[:2]], detector.input_size,
                               detector._sigma())[0] for i, im in enumerate(images)]
        scores = np.array([mp.max() for mp in maps])
        row = {"variant": label, "n_patches": n, "n_memory": int(bank.shape[0]),
               "select_s": seconds, "radius": float(cover.max()), "mean_dist": float(cover.mean())}
        row.update(quality_metrics(scores, maps, labels, masks))
        rows.append(row)
    base = rows[0]
    for row in rows:
        row["radius_vs_exact"] = row["radius"] / base["radius"]
        row["mean_vs_exact"] = row["mean_dist"] / base["mean_dist"]
        row["time_vs_exact"] = row["select_s"] / base["select_s"]
    return rows


# -- driver ------------------------------------------------------------------------------------
def _child(task: dict[str, Any], threads: int) -> Any:
    cmd = [sys.executable, __file__, "--child", json.dumps(task), "--threads", str(threads)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        sys.exit(f"{task} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "-"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def print_tables(rows: list[dict[str, Any]], variants: list[dict[str, Any]], note: str) -> None:
    print(note)
    print("| category | config | image AUROC | pixel AUROC | AU-PRO@0.3 | fit (s) | ms/image "
          "(batch 1) | fit RSS (MB) | peak RSS (MB) | bank |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['category']} | {r['config']} | {_fmt(r['image_auroc'])} | "
              f"{_fmt(r.get('pixel_auroc'))} | {_fmt(r.get('aupro'))} | {_fmt(r['fit_s'], 1)} | "
              f"{_fmt(r['ms_per_image'], 0)} | {_fmt(r['fit_rss_mb'], 0)} | "
              f"{_fmt(r['peak_rss_mb'], 0)} | {r['n_memory']} |")
    for config in CONFIGS:
        sub = [r for r in rows if r["config"] == config]
        if sub:
            means = {k: np.mean([r[k] for r in sub if k in r])
                     for k in ("image_auroc", "pixel_auroc", "aupro")}
            print(f"| mean | {config} | {_fmt(float(means['image_auroc']))} | "
                  f"{_fmt(float(means['pixel_auroc']))} | {_fmt(float(means['aupro']))} | "
                  f"| | | | |")
    if variants:
        v0 = variants[0]
        print(f"\nCoreset variants on {v0['category']}: {v0['n_patches']} patches -> "
              f"{v0['n_memory']} kept (same features, new defaults)")
        print("| variant | select (s) | time vs exact | coverage radius | radius vs exact | "
              "mean dist vs exact | image AUROC | pixel AUROC | AU-PRO@0.3 |")
        print("|---|---|---|---|---|---|---|---|---|")
        for v in variants:
            print(f"| {v['variant']} | {_fmt(v['select_s'], 1)} | {_fmt(v['time_vs_exact'], 3)} "
                  f"| {_fmt(v['radius'], 2)} | {_fmt(v['radius_vs_exact'], 3)} | "
                  f"{_fmt(v['mean_vs_exact'], 3)} | {_fmt(v['image_auroc'])} | "
                  f"{_fmt(v.get('pixel_auroc'))} | {_fmt(v.get('aupro'))} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("roots", nargs="*", type=Path,
                        help="MVTec-layout category folders (default: the shared bottle)")
    parser.add_argument("--quick", action="store_true", help="small, fast run (see above)")
    parser.add_argument("--no-synthetic", action="store_true")
    parser.add_argument("--synthetic-only", action="store_true",
                        help="only the synthetic categories")
    parser.add_argument("--no-coreset", action="store_true", help="skip the coreset variants")
    parser.add_argument("--coreset-only", action="store_true",
                        help="only the coreset variants (on the first category)")
    parser.add_argument("--synthetic-dir", type=Path, default=None,
                        help="keep (and reuse) the generated synthetic data here")
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--repeats", type=int, default=None,
                        help="fits per category and config; fit s and ms are medians "
                             "(default 3, --quick 1)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None, help="also write all rows here")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    if args.child is not None:
        task = json.loads(args.child)
        root, quick = Path(task["root"]), bool(task["quick"])
        if task["kind"] == "coreset":
            rows = coreset_variants(root, quick)
            for row in rows:
                row["category"] = root.name
            print(json.dumps(rows))
        else:
            print(json.dumps(run_config(root, task["config"], quick)))
        return

    repeats = args.repeats or (1 if args.quick else 3)
    roots = [p.resolve() for p in (args.roots or [r for r in DEFAULT_ROOTS if r.is_dir()])]
    if args.synthetic_only:
        roots = []
    with tempfile.TemporaryDirectory() as tmp:
        if not args.no_synthetic:
            synth_dir = args.synthetic_dir or Path(tmp)
            size, n_train, n_test = (256, 30, 20) if args.quick else (384, 60, 40)
            roots += [make_synthetic(synth_dir / str(size), kind, gray, size, n_train, n_test)
                      for kind, gray in SYNTHETIC]
        rows = []
        for root in [] if args.coreset_only else roots:
            for config in args.configs:
                runs = [_child({"kind": "fit", "root": str(root), "config": config,
                                "quick": args.quick}, args.threads) for _ in range(repeats)]
                row = runs[0]
                for key in ("fit_s", "ms_per_image"):
                    row[key] = statistics.median(r[key] for r in runs)
                row["repeats"] = repeats
                rows.append(row)
                print(f"{row['category']} {config}: " + json.dumps(
                    {k: round(v, 4) for k, v in row.items() if isinstance(v, float)}),
                    file=sys.stderr, flush=True)
        variants = []
        if not args.no_coreset and roots:
            variants = _child({"kind": "coreset", "root": str(roots[0]), "quick": args.quick},
                              args.threads)
    note = (f"torch threads={args.threads}, fit s and ms/image: medians of {repeats} fit(s); "
            f"ms/image: median over the test images of one predict([image]) call each")
    print_tables(rows, variants, note)
    if args.json is not None:
        args.json.write_text(json.dumps({"rows": rows, "coreset_variants": variants}, indent=2))


if __name__ == "__main__":
    main()
