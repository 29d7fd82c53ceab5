"""CLI command: ``defectmap export MODEL_DIR --format onnx|openvino --out DIR``."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path

import typer

from defectmap.cli._common import app, console
from defectmap.cli.display import progress_display

__all__ = ["ExportFormat", "GraphInput", "Runtime", "export_command"]


class ExportFormat(StrEnum):
    """``defectmap.constants.EXPORT_FORMATS`` as CLI choices."""

    onnx = "onnx"
    openvino = "openvino"


class GraphInput(StrEnum):
    """``defectmap.constants.EXPORT_INPUTS`` as CLI choices."""

    normalized = "normalized"
    pixels = "pixels"


class Runtime(StrEnum):
    """``defectmap.constants.RUNTIMES`` as CLI choices (``--runtime`` of predict and serve)."""

    torch = "torch"
    onnxruntime = "onnxruntime"
    openvino = "openvino"


@app.command(
    "export",
    epilog="Example: defectmap export models/bottle --format openvino --out models/bottle-ov",
)
def export_command(
    model_dir: Path = typer.Argument(..., metavar="MODEL_DIR",
                                     help="Model folder written by `defectmap fit`."),
    format: ExportFormat = typer.Option(
        ExportFormat.onnx, "--format", "-f",
        help="onnx: an ONNX graph for ONNX Runtime; openvino: OpenVINO IR as well."),
    out: Path = typer.Option(..., "--out", "-o", metavar="DIR",
                             help="Folder to create (must not exist)."),
    input: GraphInput = typer.Option(
        GraphInput.normalized, "--input",
        help="normalized: the graph takes the normalised tensor (resize in NumPy); pixels: "
        "uint8 pixels, resize and normalisation inside the graph (onnx only)."),
    fp16: bool = typer.Option(False, "--fp16",
                              help="Also write an FP16 OpenVINO IR (parity measured only)."),
) -> None:
    """Export a model to ONNX / OpenVINO, checked against torch; torch-free to run after."""
    from defectmap.export import export_model

    with progress_display() as progress:
        manifest = export_model(model_dir, out, format=format.value, input=input.value,
                                fp16=fp16, progress=progress)
    parity = manifest["parity"]
    for key, figures in parity.items():
        if isinstance(figures, dict):
            console.print(f"{key}: largest relative difference from torch "
                          f"{max(figures.values()):.2g} on {len(parity['images'])} check images")
    size_mb = sum(entry["bytes"] for entry in manifest["files"].values()) / 1e6
    runtimes = ", ".join(["torch", *manifest["runtimes"]])
    console.print(f"exported to {out} ({len(manifest['files'])} files, {size_mb:.1f} MB); "
                  f"runs on {runtimes}", markup=False, highlight=False, soft_wrap=True)
