"""Fit and evaluate PatchCore and PaDiM on MVTec AD bottle with the offline default backbone.

Prints image AUROC, pixel AUROC and AU-PRO@0.3 (exact metrics, native 900x900 maps), fit
seconds, milliseconds per test image at batch 1 and batched (medians of several runs),
peak RSS and model size on disk; then a micro-benchmark with ratios against a baseline in
the same run: nearest-neighbour search on the fitted bank (chunked torch GEMM vs faiss
``IndexFlatL2``). The coreset variants and old-vs-new defaults on every category are in
``benchmarks/quality.py``.

Each detector runs in its own child process so that its peak RSS is its own.

Usage::

    .venv/bin/python benchmarks/bottle.py [--root ../shared/data/mvtec_ad/bottle]
        [--detectors patchcore padim] [--threads 2] [--repeats 5]

Settings are the detectors' defaults (chosen by reasoning and synthetic data, not on this
test set). Timings on a shared machine are inflated; re-measure on a quiet one.
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

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEFAULT_ROOT = REPO.parent / "shared" / "data" / "mvtec_ad" / "bottle"


def _median_ms(fn, repeats: int, n_images: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000.0 * statistics.median(times) / n_images


def run_one(name: str, root: Path, repeats: int, batch_size: int) -> dict:
    """Fit, evaluate and time one detector (in this process)."""
    import torch

    from defectmap.data.io import read_image, read_mask
    from defectmap.data.mvtec import load_category
    from defectmap.detectors import create_detector
    from defectmap.features import load_backbone
    from defectmap.metrics import aupro, image_auroc, pixel_auroc

    data = load_category(root)
    train = [s.path for s in data.train]
    test = data.test
    detector = create_detector(name)
    load_backbone(detector.backbone, type(detector)._strides)  # weights load is not fit time

    start = time.perf_counter()
    detector.fit(train)
    fit_s = time.perf_counter() - start

    images = [read_image(s.path) for s in test]
    start = time.perf_counter()
    pred = detector.predict(images, batch_size=batch_size)
    first_pass_ms = 1000 * (time.perf_counter() - start) / len(images)
    labels = np.array([s.label for s in test])
    masks = [
        read_mask(s.mask_path) if s.mask_path is not None else np.zeros(m.shape, bool)
        for s, m in zip(test, pred.maps, strict=True)
    ]
    result = {
        "detector": name,
        "params": detector.get_params(),
        "n_train": len(train),
        "n_test": len(test),
        "image_auroc": image_auroc(pred.scores, labels),
        "pixel_auroc": pixel_auroc(pred.maps, masks),
        "aupro_0.3": aupro(pred.maps, masks, 0.3),
        "fit_s": fit_s,
        "threads": torch.get_num_threads(),
    }
    few = images[:8]
    result["ms_per_image_batch1"] = _median_ms(
        lambda: [detector.predict([im], batch_size=1) for im in few], repeats, len(few)
    )
    result["ms_per_image_batched"] = _median_ms(
        lambda: detector.predict(images[:16], batch_size=batch_size), repeats, 16
    )
    result["ms_per_image_first_pass_batched"] = first_pass_ms
    result["batch_size"] = batch_size
    with tempfile.TemporaryDirectory() as tmp:
        detector.save(tmp)
        result["model_mb"] = sum(p.stat().st_size for p in Path(tmp).iterdir()) / 1e6
    if name == "patchcore":
        result["micro"] = micro_benchmarks(detector, images[0], repeats)
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return result


def micro_benchmarks(detector, image: np.ndarray, repeats: int) -> dict:
    """NN search torch vs faiss on the fitted bank, for 1 and 8 images of queries."""
    import torch

    from defectmap.detectors.neighbors import nearest_neighbors, nearest_neighbors_faiss
    from defectmap.detectors.patchcore import aggregate_patches
    from defectmap.features.preprocess import preprocess

    backbone = detector._backbone()
    out: dict = {}
    with torch.inference_mode():
        x = preprocess([image] * 8, detector.input_size, backbone.mean, backbone.std)
        emb = aggregate_patches(backbone(x), detector.n_features)
        queries = emb.permute(0, 2, 3, 1).reshape(-1, emb.shape[1]).contiguous()
        bank = detector.memory_bank_
        per_image = queries.shape[0] // 8
        out["bank"] = list(bank.shape)
        for label, q in (("batch1", queries[:per_image]), ("batch8", queries)):
            t_torch = _median_ms(lambda q=q: nearest_neighbors(q, bank, 1), repeats, 1)
            t_faiss = _median_ms(lambda q=q: nearest_neighbors_faiss(q, bank, 1), repeats, 1)
            out[f"nn_{label}_torch_ms"] = t_torch
            out[f"nn_{label}_faiss_ms"] = t_faiss
            out[f"nn_{label}_faiss_over_torch"] = t_faiss / t_torch
    return out


def memory_check(n_images: int, size: int, coreset: str | None) -> dict:
    """Fit the default PatchCore on ``n_images`` random ``size`` px images; peak RSS.

    The images are made one at a time as the fit reads them (a lazy sequence), so the peak is
    the detector's, not the benchmark's.
    """
    from collections.abc import Sequence

    from defectmap.detectors import create_detector

    rng = np.random.default_rng(0)
    base = (rng.random((size, size, 3)) * 255).astype(np.uint8)
    shifts = rng.integers(0, size, n_images)

    class Images(Sequence):
        def __len__(self) -> int:
            return n_images

        def __getitem__(self, i):
            return np.roll(base, int(shifts[i]), axis=1)

    detector = create_detector("patchcore", **({} if coreset is None else {"coreset": coreset}))
    start = time.perf_counter()
    detector.fit(Images())
    grid = detector.input_size // 8
    return {
        "n_images": n_images,
        "image_size": size,
        "params": detector.get_params(),
        "fit_s": time.perf_counter() - start,
        "n_patches": n_images * grid * grid,
        "memory_bank": list(detector.memory_bank_.shape),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=DEFAULT_ROOT)
    parser.add_argument("--detectors", nargs="+", default=["patchcore", "padim"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument(
        "--memory-check", action="store_true",
        help="instead: fit the default PatchCore on 400 random images and print peak RSS",
    )
    parser.add_argument("--image-size", type=int, default=900,
                        help="side of the random images of --memory-check")
    parser.add_argument("--coreset", default=None,
                        help="coreset of --memory-check (default: the detector's default)")
    args = parser.parse_args()
    if args.memory_check:
        import torch

        torch.set_num_threads(args.threads)
        print(json.dumps(memory_check(400, args.image_size, args.coreset)))
        return

    if args.child:
        import torch

        torch.set_num_threads(args.threads)
        result = run_one(args.detectors[0], args.root, args.repeats, args.batch_size)
        print(json.dumps(result))
        return

    results = []
    for name in args.detectors:
        cmd = [sys.executable, __file__, "--child", "--root", str(args.root),
               "--detectors", name, "--threads", str(args.threads),
               "--repeats", str(args.repeats), "--batch-size", str(args.batch_size)]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            sys.exit(f"{name} failed:\n{proc.stderr}")
        results.append(json.loads(proc.stdout.strip().splitlines()[-1]))

    cols = ["detector", "image_auroc", "pixel_auroc", "aupro_0.3", "fit_s",
            "ms_per_image_batch1", "ms_per_image_batched", "peak_rss_mb", "model_mb"]
    print(f"MVTec AD bottle ({args.root}), torch threads={args.threads}, "
          f"batched = batch {args.batch_size}, medians of {args.repeats}")
    print(" | ".join(cols))
    for r in results:
        print(" | ".join(f"{r[c]:.4f}" if isinstance(r[c], float) else str(r[c]) for c in cols))
    for r in results:
        print(f"{r['detector']} params: {json.dumps(r['params'])}")
        for key, value in r.get("micro", {}).items():
            print(f"  {key}: {value:.3f}" if isinstance(value, float) else f"  {key}: {value}")


if __name__ == "__main__":
    main()
