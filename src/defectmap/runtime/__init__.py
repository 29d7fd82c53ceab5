"""Torch-free inference of exported models on ONNX Runtime or OpenVINO.

Nothing in this package imports torch (a test imports it with torch blocked): a factory PC
needs only ``pip install 'defectmap[runtime]'`` (NumPy, Pillow, ONNX Runtime), or
``[openvino]``, to score images with a folder written by ``defectmap export``.

>>> from defectmap.runtime import RUNTIMES
>>> RUNTIMES
('torch', 'onnxruntime', 'openvino')
"""

from defectmap.runtime.manifest import EXPORT_FILE, is_export_dir, read_manifest
from defectmap.runtime.session import (
    FASTEST_FIRST,
    GRAPH_RUNTIMES,
    RUNTIMES,
    ExportedModel,
    RuntimeUnavailableError,
    choose_runtime,
    installed_runtimes,
    supported_runtimes,
)

__all__ = [
    "EXPORT_FILE",
    "FASTEST_FIRST",
    "GRAPH_RUNTIMES",
    "RUNTIMES",
    "ExportedModel",
    "RuntimeUnavailableError",
    "choose_runtime",
    "installed_runtimes",
    "is_export_dir",
    "read_manifest",
    "supported_runtimes",
]
