"""The demo: synthesise a small dataset, fit the default detector, evaluate it, write the table.

:func:`run_demo` is what ``defectmap demo`` (and ``make demo``) runs. It works offline and
takes well under three minutes on 2 CPU cores. With ``layout`` it demonstrates the reader
and protocol of another published layout on a synthetic dataset in that layout
(:mod:`defectmap.data.synth_layouts`): MVTec LOCO AD (AU-sPRO), MVTec AD 2 (AU-PRO at 0.05,
SegF1, the upload layout), VisA (the official split CSV) or Real-IAD (the JSON split).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from defectmap.constants import DEFAULT_DETECTOR
from defectmap.progress import ProgressCallback

__all__ = ["run_demo"]

#: The synthetic dataset and image size: small enough to run in well under three minutes on
#: 2 CPU cores, large enough that the image AUROC is far above chance. The network input is
#: 2x the image (measured on the demo's data, image AUROC / pixel AUROC / AU-PRO: 160 px
#: input 0.871 / 0.981 / 0.929 in 11 s, 320 px 1.000 / 0.998 / 0.995 in 16 s; 448 px, the
#: default, gives the same as 320 for more time).
N_TRAIN = 40
N_TEST = 30
SIZE = 160
INPUT_SIZE = 320
#: Cross-fitted, 40 train images give 40 out-of-fold scores: enough for p <= alpha at
#: alpha = 0.1 (needs 9), not at the default 0.01 (needs 99).
ALPHA = 0.1
CATEGORY = "synthetic"
#: Layouts of :func:`run_demo` besides MVTec AD's.
LAYOUT_COUNTS = {
    "loco": {"n_validation": 10, "n_good": 10, "n_logical": 10, "n_structural": 10},
    "mvtec_ad2": {"n_validation": 10, "n_good": 10, "n_bad": 20, "n_private": 6},
    "visa": {"n_good": 10, "n_bad": 20},
    "realiad": {"n_good": 10, "n_bad": 20},
}


def run_demo(
    out: str | Path,
    seed: int = 0,
    *,
    layout: str = "mvtec",
    on_result: Callable[[dict[str, Any]], None] | None = None,
    progress: ProgressCallback | None = None,
) -> dict[str, Any]:
    """Write the demo dataset to ``out/data``, then benchmark the default detector on it.

    Parameters
    ----------
    out : output folder: ``data/`` (the synthetic dataset, replaced) and the benchmark's
        files (``table.*``, ``synthetic/<detector>/{model,eval}``).
    seed : seed of the synthetic data and of the fit.
    layout : ``"mvtec"`` or one of :data:`LAYOUT_COUNTS` (the dataset's layout; the
        evaluation follows it).
    on_result : called with the pair's metrics as soon as they are known.
    progress : reports ``(task, done, total)`` of every step (see :mod:`defectmap.progress`).

    Returns
    -------
    dict
        :func:`~defectmap.evaluate.run_benchmark`'s result plus ``dataset`` (the category
        folder), ``n_train``, ``n_test`` and ``size``.
    """
    from defectmap.data.synth import make_synthetic_dataset
    from defectmap.data.synth_layouts import make_layout_dataset
    from defectmap.errors import DatasetError
    from defectmap.evaluate import run_benchmark

    out = Path(out)
    data_root = out / "data"
    if layout == "mvtec":
        folder = make_synthetic_dataset(data_root, category=CATEGORY, kind="object",
                                        n_train=N_TRAIN, n_test=N_TEST, size=SIZE, seed=seed,
                                        overwrite=True, progress=progress)
        n_test = N_TEST
    elif layout in LAYOUT_COUNTS:
        counts = LAYOUT_COUNTS[layout]
        folder = make_layout_dataset(layout, data_root, category=CATEGORY, n_train=N_TRAIN,
                                     size=SIZE, seed=seed, overwrite=True, **counts)
        n_test = sum(v for k, v in counts.items() if k not in ("n_validation", "n_private"))
    else:
        raise DatasetError(f"unknown demo layout {layout!r}; use mvtec or one of "
                           f"{', '.join(LAYOUT_COUNTS)}")
    result = run_benchmark(data_root, [CATEGORY], [DEFAULT_DETECTOR], out,
                           detector_params={"input_size": INPUT_SIZE}, random_state=seed,
                           alpha=ALPHA, on_result=on_result, progress=progress)
    return {**result, "dataset": folder, "n_train": N_TRAIN, "n_test": n_test, "size": SIZE,
            "layout": layout}
