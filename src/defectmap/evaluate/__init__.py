"""Evaluation: the MVTec AD protocol, operating points, predict-to-folder and the benchmark.

* :mod:`~defectmap.evaluate.protocol`: :func:`evaluate_model`, one model on one category's
  test split: ``metrics.json``, maps, report.
* :mod:`~defectmap.evaluate.operating`: test-set metrics of the calibrated operating point and
  of the oracle one.
* :mod:`~defectmap.evaluate.predict`: :func:`predict_to_dir`, inspect any images into a
  results folder (CSV, JSON, maps, overlays).
* :mod:`~defectmap.evaluate.benchmark`: :func:`run_benchmark`, every (category, detector) pair.
* :mod:`~defectmap.evaluate.maps`: map files, and the metrics of maps made by any method.

Imports no torch: the detectors come with the models.
"""

from defectmap.evaluate.benchmark import run_benchmark
from defectmap.evaluate.maps import MapFileError, evaluate_maps_dir, read_map, write_map
from defectmap.evaluate.operating import operating_point_metrics
from defectmap.evaluate.predict import collect_images, predict_to_dir
from defectmap.evaluate.protocol import evaluate_model

__all__ = [
    "MapFileError",
    "collect_images",
    "evaluate_maps_dir",
    "evaluate_model",
    "operating_point_metrics",
    "predict_to_dir",
    "read_map",
    "run_benchmark",
    "write_map",
]
