"""The torch-free boundary: everything that only consumes predictions imports no torch or timm.

Checked in a fresh interpreter where ``import torch`` (and timm, torchvision) fails, so that
an exported-model runtime can calibrate, inspect, write results and serve without torch.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from defectmap.data import load_category, read_image

TORCH_FREE = [
    "defectmap.calibrate",
    "defectmap.cli",
    "defectmap.data",
    "defectmap.data.check",
    "defectmap.data.download",
    "defectmap.data.synth",
    "defectmap.demo",
    "defectmap.evaluate",
    "defectmap.evaluate.predict",
    "defectmap.files",
    "defectmap.metrics",
    "defectmap.pipeline",
    "defectmap.prediction",
    "defectmap.progress",
    "defectmap.report",
    "defectmap.report.render",
    "defectmap.runtime",
    "defectmap.serve",
]

SCRIPT = r"""
import importlib, json, sys
for name in ("torch", "timm", "torchvision"):
    sys.modules[name] = None  # from here on, "import torch" raises ImportError
modules, root, out = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3]
for module in modules:
    importlib.import_module(module)

import numpy as np
from defectmap.calibrate import fit_calibration
from defectmap.data import load_category, read_image
from defectmap.evaluate.predict import predict_to_dir
from defectmap.pipeline import InspectionModel
from defectmap.prediction import Prediction


class Darkness:
    # A detector without torch, as a runtime of exported models will be: map = 1 - gray.
    name = "darkness"

    def get_params(self):
        return {}

    def predict(self, images, batch_size=1, progress=None):
        maps = [1.0 - read_image(p, mode="L").astype(np.float32) / 255 for p in images]
        return Prediction(np.array([m.mean() for m in maps], np.float32), maps)


data = load_category(root, "synthetic")
val = Darkness().predict([s.path for s in data.train])
model = InspectionModel(Darkness(), fit_calibration(val.scores, val.maps, alpha=0.1), {})
rows = predict_to_dir(model, [s.path for s in data.test[:3]], out)
print(json.dumps({"rows": rows, "torch": sys.modules["torch"] is None}))
"""


def test_consumers_of_predictions_run_without_torch(synthetic_root: Path, tmp_path: Path):
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, json.dumps(TORCH_FREE), str(synthetic_root),
         str(tmp_path / "out")],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["torch"] is True  # still blocked: nothing imported torch
    rows = result["rows"]
    test = load_category(synthetic_root, "synthetic").test[:3]
    assert [r["image"] for r in rows] == [str(s.path) for s in test]
    for row, sample in zip(rows, test, strict=True):
        darkness = 1.0 - read_image(sample.path, mode="L").astype(np.float32) / 255
        assert row["score"] == float(np.float32(darkness.mean()))
        assert row["decision"] in ("ok", "defect") and 0 < row["p_value"] <= 1
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "maps", "overlays", "results.csv", "results.json"]
