"""Deployment runtimes on MVTec AD bottle: torch vs ONNX Runtime vs OpenVINO, in one run.

Two parts:

1. **Parity** on all 83 bottle test images: maps at network resolution, native maps and
   image scores of each exported runtime against the torch path (the detector's own
   ``predict``, faiss included when installed), every calibrated decision, and the image
   AUROC, pixel AUROC and AU-PRO@0.3 to 4 decimals. Runtimes: ONNX Runtime and OpenVINO
   (FP32), OpenVINO FP16, and ONNX Runtime on the pixel-input graph (resize and
   normalisation inside the graph).
2. **Speed**, ms per image at batch 1 and 8, with 1 and 2 threads, split into decode (PIL,
   common to all), preprocess, network (backbone), neighbour search (the detector's
   scoring on the backbone features: patch embedding, distances to the bank, re-weighting),
   and map post-processing (upsampling + blur, resize to native size), plus the measured
   end-to-end total (decode + ``predict``) and the floor (decode + the backbone alone).
   For ONNX Runtime and OpenVINO the split comes from stage graphs exported for this
   benchmark (backbone; scoring; upsampling), the total from the deployed graph.

Usage::

    .venv/bin/python benchmarks/runtime.py [--root ../shared/data/mvtec_ad/bottle]
        [--model DIR] [--work runs/runtime-bench] [--threads 1 2] [--n-images 16]
        [--repeats 5] [--skip-parity] [--reuse-exports] [--json out.json]

Without ``--model`` it fits the default PatchCore on bottle into ``WORK/model`` (kept for
later runs). The exports are redone on every run (``--reuse-exports`` keeps them). Timings on a
shared machine are inflated; the ratios inside one run are what to compare.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bottle import _median_ms as median_ms  # benchmarks/bottle.py, beside this script

REPO = Path(__file__).resolve().parents[1]
DEFAULT_ROOT = REPO.parent / "shared" / "data" / "mvtec_ad" / "bottle"
#: "torch unfolded": the torch path with timm's backbone as built (the baseline of issue 13).
RUNTIMES = ("torch unfolded", "torch", "onnxruntime", "openvino")
STAGES = ("decode", "preprocess", "network", "search", "post")


# ----------------------------------------------------------------------------- set-up
def ensure_model(root: Path, work: Path, model_dir: Path | None) -> Path:
    """The model to benchmark: ``--model``, or the default PatchCore fitted on bottle (refitted
    when the defaults changed since the last run)."""
    if model_dir is not None:
        return model_dir
    from defectmap.detectors import create_detector
    from defectmap.detectors.base import read_model_json
    from defectmap.files import to_jsonable

    target = work / "model"
    defaults = to_jsonable(create_detector("patchcore").get_params())
    if (target / "model.json").is_file() and read_model_json(target)["params"] == defaults:
        return target
    from defectmap.data.mvtec import load_category
    from defectmap.pipeline import train_model

    print(f"fitting the default PatchCore on {root} into {target} ...", flush=True)
    train_model(load_category(root), target, alpha=0.05)
    return target


def ensure_export(model_dir: Path, out: Path, reuse: bool, **options: Any) -> Path:
    """Export ``model_dir`` to ``out`` (again: the export code may have changed), or with
    ``reuse`` keep an export of the same model that is already there."""
    from defectmap.export import export_model
    from defectmap.pipeline import load_model
    from defectmap.runtime import read_manifest

    model_hash = load_model(model_dir).model_hash
    if out.exists():
        try:
            if reuse and read_manifest(out)["source_model_hash"] == model_hash:
                return out
        except Exception:  # damaged: export again
            pass
        shutil.rmtree(out)
    start = time.perf_counter()
    export_model(model_dir, out, **options)
    print(f"exported {out.name} in {time.perf_counter() - start:.0f} s", flush=True)
    return out


def stage_graphs(model_dir: Path, export_dir: Path, work: Path,
                 reuse: bool) -> dict[str, dict[str, Any]]:
    """Backbone, scoring and upsampling as separate graphs, per graph runtime (for the split).

    Returns ``{runtime: {"backbone": fn, "scoring": fn, "upsample": fn}}`` where each fn
    maps NumPy inputs to NumPy outputs; built under ``WORK/stages`` (kept with ``reuse``).
    """
    import torch
    from torch import nn

    from defectmap.detectors import load_detector
    from defectmap.export import ScoringGraph, to_onnx, to_openvino
    from defectmap.runtime import read_manifest

    folder = work / "stages"
    stamp = folder / "source_model_hash"
    model_hash = read_manifest(export_dir)["source_model_hash"]
    detector = load_detector(model_dir)
    scoring = ScoringGraph(detector)
    size = scoring.input_size
    with torch.inference_mode():
        features = scoring.backbone(torch.zeros(2, 3, size, size))
        _, grid = scoring.detector._predict_batch(features)
    n_feat = len(features)

    class Backbone(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.backbone = scoring.backbone

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
            return tuple(self.backbone(x))

    class Scoring(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.indices = scoring.indices

        def score(self, feats: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
            return scoring.detector._predict_batch(feats)

    class Scoring2(Scoring):  # torch.export needs named arguments, not *args
        def forward(self, f0: torch.Tensor, f1: torch.Tensor) -> tuple[torch.Tensor, ...]:
            return self.score([f0, f1])

    class Scoring3(Scoring):
        def forward(self, f0: torch.Tensor, f1: torch.Tensor,
                    f2: torch.Tensor) -> tuple[torch.Tensor, ...]:
            return self.score([f0, f1, f2])

    class Upsample(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.rows, self.cols = scoring.rows, scoring.cols

        def forward(self, grid: torch.Tensor) -> torch.Tensor:
            return self.rows @ grid @ self.cols.T

    feat_names = [f"f{i}" for i in range(n_feat)]
    specs = {
        "backbone": (Backbone(), (torch.zeros(2, 3, size, size),), ["input"],
                     [{0: "batch"}], feat_names),
        "scoring": ({2: Scoring2, 3: Scoring3}[n_feat](), tuple(features), feat_names,
                    [{0: "batch"}] * n_feat, ["score", "grid"]),
        "upsample": (Upsample(), (grid,), ["grid"], [{0: "batch"}], ["map"]),
    }
    if not (reuse and stamp.is_file() and stamp.read_text() == model_hash):
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        for name, (module, examples, inputs, dynamic, outputs) in specs.items():
            sub = folder / name
            sub.mkdir()
            to_onnx(module, examples, sub / "model.onnx", inputs, dynamic, outputs)
            to_openvino(sub / "model.onnx", sub, fp16=False)
        stamp.write_text(model_hash)
    return {name: {"folder": folder / name, "inputs": specs[name][2]} for name in specs}


def open_stage(stage: dict[str, Any], runtime: str, threads: int) -> Callable[..., list]:
    """A callable running one stage graph on NumPy inputs with ``threads`` threads."""
    names = stage["inputs"]
    if runtime == "onnxruntime":
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        session = ort.InferenceSession(str(stage["folder"] / "model.onnx"), options,
                                       providers=["CPUExecutionProvider"])
        return lambda *xs: session.run(None, dict(zip(names, xs, strict=True)))
    import openvino as ov

    compiled = ov.Core().compile_model(
        str(stage["folder"] / "openvino" / "model.xml"), "CPU",
        {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY",
         "INFERENCE_NUM_THREADS": threads})
    request = compiled.create_infer_request()

    def run(*xs: np.ndarray) -> list:
        result = request.infer(dict(enumerate(xs)))
        return [np.array(result[out]) for out in compiled.outputs]

    return run


# ----------------------------------------------------------------------------- parity
def relative(reference: np.ndarray, other: np.ndarray) -> float:
    return float(np.abs(other - reference).max() / max(float(np.abs(reference).max()), 1e-30))


def parity_section(model_dir: Path, exports: dict[str, Path], root: Path) -> dict[str, Any]:
    """Parity of every exported runtime with the torch path on the whole test split."""
    import torch

    from defectmap.data.io import read_image, read_mask
    from defectmap.data.mvtec import load_category
    from defectmap.export import ScoringGraph
    from defectmap.features.preprocess import preprocess
    from defectmap.metrics import aupro, image_auroc, pixel_auroc
    from defectmap.pipeline import load_model
    from defectmap.runtime import ExportedModel

    data = load_category(root)
    test = data.test
    images = [read_image(s.path) for s in test]
    labels = np.array([s.label for s in test])
    masks = [read_mask(s.mask_path) if s.mask_path is not None
             else np.zeros(im.shape[:2], bool) for s, im in zip(test, images, strict=True)]
    model = load_model(model_dir)
    calibration = model.calibration
    detector = model.detector
    reference_graph = ScoringGraph(detector, trace=False)
    backbone = reference_graph.backbone

    def network_maps_torch() -> np.ndarray:
        out = []
        with torch.inference_mode():
            for image in images:
                x = preprocess([image], detector.input_size, backbone.mean, backbone.std)
                out.append(reference_graph(x)[0].numpy()[0])
        return np.stack(out)

    def summary(scores: np.ndarray, maps: list[np.ndarray]) -> dict[str, Any]:
        return {
            "image_auroc": round(image_auroc(scores, labels), 4),
            "pixel_auroc": round(pixel_auroc(maps, masks), 4),
            "aupro": round(aupro(maps, masks, 0.3), 4),
            "decisions": calibration.decide(scores).tolist() if calibration else None,
        }

    print("parity: torch ...", flush=True)
    ref = detector.predict(images)
    ref_net = network_maps_torch()
    ref_summary = summary(ref.scores, ref.maps)
    rows: dict[str, Any] = {"torch": {**ref_summary, "decisions": None,
                                      "n_defect": int(np.sum(ref_summary["decisions"]))}}
    variants = [("onnxruntime", "fp32", "normalized"), ("openvino", "fp32", "normalized"),
                ("openvino", "fp16", "normalized"), ("onnxruntime", "fp32", "pixels")]
    for runtime, precision, kind in variants:
        label = f"{runtime} {precision} {kind}"
        print(f"parity: {label} ...", flush=True)
        session = ExportedModel(exports[kind], runtime=runtime, precision=precision)
        pred = session.predict(images)
        net = np.concatenate([session.run(session.prepare([im]))[0] for im in images])
        mine = summary(pred.scores, pred.maps)
        rows[label] = {
            "map_rel_network": max(relative(r, m) for r, m in zip(ref_net, net, strict=True)),
            "map_rel_native": max(relative(r, m) for r, m in zip(ref.maps, pred.maps,
                                                                  strict=True)),
            "score_rel": float(np.max(np.abs(pred.scores - ref.scores) / np.abs(ref.scores))),
            "decisions_changed": int(sum(a != b for a, b in zip(
                mine["decisions"], ref_summary["decisions"], strict=True))),
            **{k: mine[k] for k in ("image_auroc", "pixel_auroc", "aupro")},
        }
    return {"n_images": len(images), "rows": rows}


# ----------------------------------------------------------------------------- speed
def chunks(items: Sequence[Any], size: int) -> list[Sequence[Any]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def speed_torch(model_dir: Path, images: list[np.ndarray], batch: int,
                repeats: int, optimise: bool = True) -> dict[str, float]:
    """``optimise=False``: the backbone as timm builds it (BatchNorms unfolded, contiguous
    memory), the torch path before this round's folding: the issue's baseline."""
    import torch

    from defectmap.detectors import load_detector
    from defectmap.detectors.base import maps_to_native
    from defectmap.features import load_backbone
    from defectmap.features.preprocess import preprocess

    detector = load_detector(model_dir)
    backbone = load_backbone(detector.backbone, type(detector)._strides, False, optimise)
    detector._backbone = lambda: backbone  # type: ignore[method-assign]
    n, size = len(images), detector.input_size
    batches = chunks(images, batch)
    with torch.inference_mode():
        xs = [preprocess(b, size, backbone.mean, backbone.std) for b in batches]
        feats = [backbone(x) for x in xs]
        grids = [detector._predict_batch(f)[1] for f in feats]
        sizes = [[im.shape[:2] for im in b] for b in batches]
        detector.predict(images[:batch], batch_size=batch)  # warm-up
        return {
            "preprocess": median_ms(lambda: [preprocess(b, size, backbone.mean, backbone.std)
                                             for b in batches], repeats, n),
            "network": median_ms(lambda: [backbone(x) for x in xs], repeats, n),
            "search": median_ms(lambda: [detector._predict_batch(f) for f in feats],
                                repeats, n),
            "post": median_ms(lambda: [maps_to_native(g, s, size, detector._sigma())
                                       for g, s in zip(grids, sizes, strict=True)], repeats, n),
            "predict": median_ms(lambda: detector.predict(images, batch_size=batch), repeats, n),
        }


def speed_graph(export_dir: Path, stages: dict[str, Any], runtime: str, threads: int,
                images: list[np.ndarray], batch: int, repeats: int) -> dict[str, float]:
    from defectmap.runtime import ExportedModel
    from defectmap.runtime.resample import resize_maps

    session = ExportedModel(export_dir, runtime=runtime, n_threads=threads)
    run = {name: open_stage(stages[name], runtime, threads) for name in stages}
    n = len(images)
    batches = chunks(images, batch)
    xs = [session.prepare(b) for b in batches]
    feats = [run["backbone"](x) for x in xs]
    grids = [run["scoring"](*f)[1] for f in feats]
    sizes = [[im.shape[:2] for im in b] for b in batches]
    session.predict(images[:batch], batch_size=batch)  # warm-up

    def post() -> None:
        for g, s in zip(grids, sizes, strict=True):
            resize_maps(run["upsample"](g)[0], s)

    return {
        "preprocess": median_ms(lambda: [session.prepare(b) for b in batches], repeats, n),
        "network": median_ms(lambda: [run["backbone"](x) for x in xs], repeats, n),
        "search": median_ms(lambda: [run["scoring"](*f) for f in feats], repeats, n),
        "post": median_ms(post, repeats, n),
        "graph": median_ms(lambda: [session.run(x) for x in xs], repeats, n),
        "predict": median_ms(lambda: session.predict(images, batch_size=batch), repeats, n),
    }


def set_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    try:
        import faiss

        faiss.omp_set_num_threads(threads)
    except ImportError:
        pass


def speed_section(model_dir: Path, export_dir: Path, pixel_dir: Path, stages: dict[str, Any],
                  root: Path, threads_list: list[int], n_images: int,
                  repeats: int) -> list[dict[str, Any]]:
    from defectmap.data.io import read_image
    from defectmap.data.mvtec import load_category
    from defectmap.runtime import ExportedModel

    paths = [s.path for s in load_category(root).test][:: max(1, 83 // n_images)][:n_images]
    images = [read_image(p) for p in paths]
    decode = median_ms(lambda: [read_image(p) for p in paths], repeats, len(paths))
    rows = []
    for threads in threads_list:
        set_threads(threads)
        for batch in (1, 8):
            for runtime in RUNTIMES:
                print(f"speed: {threads} thread(s), batch {batch}, {runtime} ...", flush=True)
                if runtime.startswith("torch"):
                    figures = speed_torch(model_dir, images, batch, repeats,
                                          optimise=runtime == "torch")
                else:
                    figures = speed_graph(export_dir, stages, runtime, threads, images, batch,
                                          repeats)
                rows.append({"threads": threads, "batch": batch, "runtime": runtime,
                             "decode": decode, **figures,
                             "total": decode + figures["predict"],
                             "floor": decode + figures["network"]})
            pixels = ExportedModel(pixel_dir, runtime="onnxruntime", n_threads=threads)
            pixels.predict(images[:batch], batch_size=batch)
            ms = median_ms(lambda p=pixels, b=batch: p.predict(images, batch_size=b), repeats,
                           len(images))
            rows.append({"threads": threads, "batch": batch, "runtime": "onnxruntime pixels",
                         "decode": decode, "predict": ms, "total": decode + ms})
    return rows


# ----------------------------------------------------------------------------- report
def fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def print_report(parity: dict[str, Any] | None, speed: list[dict[str, Any]]) -> None:
    if parity is not None:
        print(f"\n## Parity with torch on bottle's {parity['n_images']} test images\n")
        print("| runtime | map rel. diff (network res.) | map rel. diff (native) | "
              "score rel. diff | decisions changed | image AUROC | pixel AUROC | AU-PRO |")
        print("|---|---|---|---|---|---|---|---|")
        for name, row in parity["rows"].items():
            diffs = ["-"] * 4 if name == "torch" else [
                f"{row['map_rel_network']:.1e}", f"{row['map_rel_native']:.1e}",
                f"{row['score_rel']:.1e}", str(row["decisions_changed"])]
            metrics = [f"{row[k]:.4f}" for k in ("image_auroc", "pixel_auroc", "aupro")]
            print("| " + " | ".join([name, *diffs, *metrics]) + " |")
    print("\n## ms per image (decode + preprocess + network + search + post = split; "
          "total = decode + predict, measured)\n")
    print("| threads | batch | runtime | decode | preprocess | network | search | post | "
          "total | floor (decode + network) | total vs torch unfolded | total vs torch |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    totals = {(r["runtime"], r["threads"], r["batch"]): r["total"] for r in speed}
    for r in speed:
        key = (r["threads"], r["batch"])
        before, now = totals[("torch unfolded", *key)], totals[("torch", *key)]
        print(f"| {r['threads']} | {r['batch']} | {r['runtime']} | {fmt(r['decode'])} | "
              f"{fmt(r.get('preprocess'))} | {fmt(r.get('network'))} | {fmt(r.get('search'))} | "
              f"{fmt(r.get('post'))} | {fmt(r['total'])} | {fmt(r.get('floor'))} | "
              f"{before / r['total']:.2f}x | {now / r['total']:.2f}x |")
    for threads in sorted({r["threads"] for r in speed}):
        b1 = [r for r in speed if r["threads"] == threads and r["batch"] == 1]
        best = min(b1, key=lambda r: r["total"])
        floor = min(r["floor"] for r in b1 if "floor" in r)
        before, now = totals[("torch unfolded", threads, 1)], totals[("torch", threads, 1)]
        print(f"\n{threads} thread(s), batch 1: best runtime {best['runtime']} "
              f"{best['total']:.1f} ms = {before / best['total']:.2f}x faster than the torch "
              f"path before folding ({before:.1f} ms; target >= 2x) and "
              f"{now / best['total']:.2f}x than today's torch path ({now:.1f} ms); "
              f"{best['total'] / floor:.2f}x the floor decode + fastest backbone "
              f"({floor:.1f} ms; target <= 1.5x)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=DEFAULT_ROOT)
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--work", type=Path, default=REPO / "runs" / "runtime-bench")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--n-images", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--skip-parity", action="store_true")
    parser.add_argument("--reuse-exports", action="store_true",
                        help="keep the exports of an earlier run of the same model")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    if not args.root.is_dir():
        print(f"error: {args.root}: dataset folder not found", file=sys.stderr)
        return 1
    args.work.mkdir(parents=True, exist_ok=True)
    model_dir = ensure_model(args.root, args.work, args.model)
    exports = {
        "normalized": ensure_export(model_dir, args.work / "export", args.reuse_exports,
                                    format="openvino", fp16=True),
        "pixels": ensure_export(model_dir, args.work / "export-pixels", args.reuse_exports,
                                format="onnx", input="pixels"),
    }
    stages = stage_graphs(model_dir, exports["normalized"], args.work, args.reuse_exports)
    parity = None if args.skip_parity else parity_section(model_dir, exports, args.root)
    speed = speed_section(model_dir, exports["normalized"], exports["pixels"], stages,
                          args.root, args.threads, args.n_images, args.repeats)
    print_report(parity, speed)
    if args.json is not None:
        args.json.write_text(json.dumps({"parity": parity, "speed": speed}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
