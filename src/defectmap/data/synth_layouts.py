"""Synthetic datasets in the MVTec LOCO AD, MVTec AD 2, VisA and Real-IAD layouts.

Images come from :func:`defectmap.data.synth.render_defects` (procedural parts with
pixel-exact defect masks); each generator lays them out as the real dataset is laid out, so
the readers, ``data check``, the metrics and the demos run on them unchanged:

``loco``
    ``defects_config.json`` with four defects (two logical, two structural; absolute and
    relative saturation), ``train/``, ``validation/``, ``test/{good,logical_anomalies,
    structural_anomalies}/`` and ``ground_truth/<type>/<stem>/000.png, 001.png`` (one PNG per
    defect, holding that defect's pixel value). Every second anomalous image has two defects.
``mvtec_ad2``
    ``train/``, ``validation/``, ``test_public/{good,bad}/`` with
    ``test_public/ground_truth/bad/<stem>_mask.png``, and unlabelled ``test_private/``
    (``NNN_regular.png``) and ``test_private_mixed/`` (``NNN_mixed.png``).
``visa``
    ``OBJECT/Data/Images/{Normal,Anomaly}/*.JPG``, ``OBJECT/Data/Masks/Anomaly/*.png`` with
    class indices (not 0/255), ``OBJECT/image_anno.csv`` and the rows of the object in
    ``split_csv/1cls.csv`` (the rows of other objects already there are kept).
``realiad``
    ``realiad_1024/OBJECT/{OK,NG/<class>}/S<nnnn>/..._C1_<time>.jpg`` with ``.png`` masks, a
    second camera view of the first sample that the split does not list, and the
    single-view split ``realiad_jsons/realiad_jsons_sv/OBJECT.json``.

Determinism: every image is drawn from ``np.random.default_rng([seed, layout, split,
index])`` and PNG, JPEG and JSON writing is deterministic, so the same arguments give the
same bytes. Each category folder is written under a temporary name and renamed into place.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from defectmap.data.synth import render_defects
from defectmap.errors import DatasetError
from defectmap.files import atomic_output_dir, write_text

__all__ = [
    "LAYOUTS",
    "LOCO_SYNTH_DEFECTS",
    "make_layout_dataset",
    "make_loco_dataset",
    "make_mvtec_ad2_dataset",
    "make_realiad_dataset",
    "make_visa_dataset",
]

LAYOUTS = ("loco", "mvtec_ad2", "visa", "realiad")
_LAYOUT_CODES = {"loco": 11, "mvtec_ad2": 12, "visa": 13, "realiad": 14}

#: (defects_config entry, rendered defect) of the synthetic LOCO category.
LOCO_SYNTH_DEFECTS: tuple[tuple[dict[str, Any], str], ...] = (
    ({"defect_name": "missing_part", "pixel_value": 255, "saturation_threshold": 1.0,
      "relative_saturation": True}, "missing_part"),
    ({"defect_name": "extra_part", "pixel_value": 254, "saturation_threshold": 60,
      "relative_saturation": False}, "deformation"),
    ({"defect_name": "scratch", "pixel_value": 253, "saturation_threshold": 0.5,
      "relative_saturation": True}, "scratch"),
    ({"defect_name": "contamination", "pixel_value": 252, "saturation_threshold": 40,
      "relative_saturation": False}, "contamination"),
)
_VISA_CLASSES = (("scratch", "scratch"), ("contamination", "foreign particles"),
                 ("missing_part", "missing part"), ("color_change", "different colour spot"))
_REALIAD_CLASSES = (("HS", "scratch"), ("ZW", "contamination"), ("QS", "missing_part"))


def _png(array: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, format="PNG")


def _jpeg(array: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, format="JPEG", quality=95)


def _check_args(category: str, size: int, counts: dict[str, int]) -> None:
    if not category or Path(category).name != category or category.startswith("."):
        raise DatasetError(f"invalid category name {category!r}: use a plain folder name")
    if size < 32:
        raise DatasetError("synthetic images need size >= 32")
    bad = [name for name, n in counts.items() if n < (1 if name == "n_train" else 0)]
    if bad:
        raise DatasetError(f"invalid counts: {', '.join(bad)} (n_train >= 1, others >= 0)")


@contextmanager
def _atomic_folder(target: Path, overwrite: bool) -> Iterator[Path]:
    """A temporary folder that replaces ``target`` when complete (``overwrite`` allowing)."""
    if target.exists() and not overwrite:
        raise DatasetError(f"{target}: already exists; choose another folder or overwrite")
    with atomic_output_dir(target, marker=None) as tmp:
        yield tmp


def _renderer(layout: str, seed: int, size: int, kind: str = "object") -> Callable[..., Any]:
    code = _LAYOUT_CODES[layout]

    def render(split: int, index: int, defects: Sequence[str]):
        return render_defects(kind, size, False, seed, (code, split, index), defects)  # type: ignore[arg-type]

    return render


def make_loco_dataset(
    out: str | Path,
    category: str = "synth_loco",
    n_train: int = 12,
    n_validation: int = 4,
    n_good: int = 4,
    n_logical: int = 4,
    n_structural: int = 4,
    size: int = 96,
    seed: int = 0,
    overwrite: bool = False,
) -> Path:
    """Write a category in the MVTec LOCO AD layout and return its folder ``out / category``.

    Logical images show ``missing_part`` (relative saturation 1.0), every second one also
    ``extra_part`` (absolute, 60 px); structural images ``scratch`` (relative 0.5) or
    ``contamination`` (absolute, 40 px), every second one both.
    """
    _check_args(category, size, {"n_train": n_train, "n_validation": n_validation,
                                 "n_good": n_good, "n_logical": n_logical,
                                 "n_structural": n_structural})
    render = _renderer("loco", seed, size)
    config = [entry for entry, _ in LOCO_SYNTH_DEFECTS]
    value = {rendered: entry["pixel_value"] for entry, rendered in LOCO_SYNTH_DEFECTS}
    target = Path(out) / category
    with _atomic_folder(target, overwrite) as tmp:
        write_text(tmp / "defects_config.json", json.dumps(config, indent=4) + "\n")
        for split, code, n in (("train", 1, n_train), ("validation", 3, n_validation)):
            for i in range(n):
                _png(render(code, i, [])[1], tmp / split / "good" / f"{i:03d}.png")
            (tmp / split / "good").mkdir(parents=True, exist_ok=True)
        for i in range(n_good):
            _png(render(2, i, [])[1], tmp / "test" / "good" / f"{i:03d}.png")
        for folder, n, offset in (("logical_anomalies", n_logical, 100),
                                  ("structural_anomalies", n_structural, 200)):
            for i in range(n):
                if folder == "logical_anomalies":
                    defects = ["missing_part"] + (["deformation"] if i % 2 else [])
                else:
                    defects = ["scratch", "contamination"] if i % 2 else \
                        [("scratch", "contamination")[(i // 2) % 2]]
                _, image, masks = render(2, offset + i, defects)
                _png(image, tmp / "test" / folder / f"{i:03d}.png")
                for j, (defect, mask) in enumerate(zip(defects, masks, strict=True)):
                    _png(mask.astype(np.uint8) * np.uint8(value[defect]),
                         tmp / "ground_truth" / folder / f"{i:03d}" / f"{j:03d}.png")
    return target


def make_mvtec_ad2_dataset(
    out: str | Path,
    category: str = "synth_ad2",
    n_train: int = 12,
    n_validation: int = 4,
    n_good: int = 4,
    n_bad: int = 4,
    n_private: int = 4,
    size: int = 96,
    seed: int = 0,
    overwrite: bool = False,
) -> Path:
    """Write a category in the MVTec AD 2 layout and return its folder ``out / category``.

    ``n_private`` images go to each of ``test_private/`` and ``test_private_mixed/``, every
    second one with a defect (unlabelled, as published).
    """
    _check_args(category, size, {"n_train": n_train, "n_validation": n_validation,
                                 "n_good": n_good, "n_bad": n_bad, "n_private": n_private})
    render = _renderer("mvtec_ad2", seed, size, kind="texture")
    cycle = ("scratch", "contamination", "missing_part", "color_change")
    target = Path(out) / category
    with _atomic_folder(target, overwrite) as tmp:
        for split, code, n in (("train", 1, n_train), ("validation", 3, n_validation)):
            for i in range(n):
                _png(render(code, i, [])[1], tmp / split / "good" / f"{i:03d}_regular.png")
        public = tmp / "test_public"
        for i in range(n_good):
            _png(render(2, i, [])[1], public / "good" / f"{i:03d}_regular.png")
        for i in range(n_bad):
            _, image, (mask,) = render(2, 100 + i, [cycle[i % len(cycle)]])
            _png(image, public / "bad" / f"{i:03d}_regular.png")
            _png(mask.astype(np.uint8) * 255,
                 public / "ground_truth" / "bad" / f"{i:03d}_regular_mask.png")
        for split, code, suffix in (("test_private", 4, "regular"),
                                    ("test_private_mixed", 5, "mixed")):
            for i in range(n_private):
                defects = [cycle[i % len(cycle)]] if i % 2 else []
                _png(render(code, i, defects)[1], tmp / split / f"{i:03d}_{suffix}.png")
            (tmp / split).mkdir(exist_ok=True)
    return target


def _merge_split_csv(path: Path, category: str, rows: list[list[str]]) -> None:
    """Replace ``category``'s rows of a VisA split CSV, keeping the other objects' rows."""
    kept: list[list[str]] = []
    if path.is_file():
        with open(path, newline="", encoding="utf-8") as fh:
            kept = [r for r in list(csv.reader(fh))[1:] if r and r[0] != category]
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["object", "split", "label", "image", "mask"])
    writer.writerows(kept + rows)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text(path, buf.getvalue())


def make_visa_dataset(
    out: str | Path,
    category: str = "synth_visa",
    n_train: int = 12,
    n_good: int = 4,
    n_bad: int = 4,
    size: int = 96,
    seed: int = 0,
    overwrite: bool = False,
) -> Path:
    """Write one object in the raw VisA layout (and its split rows); return ``out / category``.

    Defective images have one or (every second) two defect classes; their mask holds each
    class's index (1-4), their ``image_anno.csv`` label the class names.
    """
    _check_args(category, size, {"n_train": n_train, "n_good": n_good, "n_bad": n_bad})
    render = _renderer("visa", seed, size)
    out = Path(out)
    target = out / category
    rows: list[list[str]] = []
    annotations: list[list[str]] = []
    with _atomic_folder(target, overwrite) as tmp:
        for i in range(n_train + n_good):
            rel = f"{category}/Data/Images/Normal/{i:04d}.JPG"
            _jpeg(render(1, i, [])[1], tmp / rel.split("/", 1)[1])
            rows.append([category, "train" if i < n_train else "test", "normal", rel, ""])
            annotations.append([rel, "normal", ""])
        for i in range(n_bad):
            classes = [i % 4] + ([(i + 1) % 4] if i % 2 else [])
            _, image, masks = render(2, i, [_VISA_CLASSES[c][0] for c in classes])
            label_map = np.zeros((size, size), np.uint8)
            for c, mask in zip(classes, masks, strict=True):
                label_map[mask] = c + 1
            rel = f"{category}/Data/Images/Anomaly/{i:03d}.JPG"
            mask_rel = f"{category}/Data/Masks/Anomaly/{i:03d}.png"
            _jpeg(image, tmp / rel.split("/", 1)[1])
            _png(label_map, tmp / mask_rel.split("/", 1)[1])
            rows.append([category, "test", "anomaly", rel, mask_rel])
            annotations.append([rel, ",".join(_VISA_CLASSES[c][1] for c in classes), mask_rel])
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(["image", "label", "mask"])
        writer.writerows(annotations)
        write_text(tmp / "image_anno.csv", buf.getvalue())
    _merge_split_csv(out / "split_csv" / "1cls.csv", category, rows)
    return target


def make_realiad_dataset(
    out: str | Path,
    category: str = "synth_realiad",
    n_train: int = 12,
    n_good: int = 4,
    n_bad: int = 4,
    size: int = 96,
    seed: int = 0,
    overwrite: bool = False,
) -> Path:
    """Write one object in the Real-IAD layout with its single-view JSON split.

    Returns the object's image folder ``out / "realiad_1024" / category``.
    """
    _check_args(category, size, {"n_train": n_train, "n_good": n_good, "n_bad": n_bad})
    render = _renderer("realiad", seed, size)
    out = Path(out)
    target = out / "realiad_1024" / category
    entries: dict[str, list[dict[str, Any]]] = {"train": [], "test": []}

    def name(sample: int, cls: str, view: int) -> str:
        tag = "OK" if cls == "OK" else f"NG_{cls}"
        return f"{category}_{sample:04d}_{tag}_C{view}_2024010112{sample:04d}"

    with _atomic_folder(target, overwrite) as tmp:
        for i in range(n_train + n_good):
            sample = i + 1
            rel = f"OK/S{sample:04d}/{name(sample, 'OK', 1)}.jpg"
            _jpeg(render(1, i, [])[1], tmp / rel)
            if i == 0:  # another camera view that the single-view split leaves out
                _jpeg(render(6, i, [])[1], tmp / f"OK/S{sample:04d}/{name(sample, 'OK', 2)}.jpg")
            entries["train" if i < n_train else "test"].append(
                {"category": category, "anomaly_class": "OK", "image_path": rel,
                 "mask_path": None})
        for i in range(n_bad):
            sample = n_train + n_good + i + 1
            code, defect = _REALIAD_CLASSES[i % len(_REALIAD_CLASSES)]
            _, image, (mask,) = render(2, i, [defect])
            stem = f"NG/{code}/S{sample:04d}/{name(sample, code, 1)}"
            _jpeg(image, tmp / f"{stem}.jpg")
            _png(mask.astype(np.uint8) * 255, tmp / f"{stem}.png")
            entries["test"].append({"category": category, "anomaly_class": code,
                                    "image_path": f"{stem}.jpg", "mask_path": f"{stem}.png"})
    split = {
        "meta": {"prefix": "", "normal_class": "OK",
                 "pixel_anomaly_classes": sorted({c for c, _ in _REALIAD_CLASSES}),
                 "short_to_full_class_map": {"OK": "good", "HS": "scratch",
                                             "ZW": "contamination", "QS": "missing parts"}},
        **entries,
    }
    json_path = out / "realiad_jsons" / "realiad_jsons_sv" / f"{category}.json"
    json_path.parent.mkdir(parents=True, exist_ok=True)
    write_text(json_path, json.dumps(split, indent=2) + "\n")
    return target


_MAKERS: dict[str, Callable[..., Path]] = {
    "loco": make_loco_dataset,
    "mvtec_ad2": make_mvtec_ad2_dataset,
    "visa": make_visa_dataset,
    "realiad": make_realiad_dataset,
}


def make_layout_dataset(layout: str, out: str | Path, **kwargs: Any) -> Path:
    """Call the generator of ``layout`` (one of :data:`LAYOUTS`) with ``kwargs``."""
    if layout not in _MAKERS:
        raise DatasetError(f"unknown layout {layout!r}; known: {', '.join(LAYOUTS)}")
    return _MAKERS[layout](out, **kwargs)
