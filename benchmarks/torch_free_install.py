"""A factory-PC install: ``pip install defectmap[runtime,openvino]`` in a fresh venv, no torch.

Creates a new virtual environment, installs this checkout with only the deployment extras
from the package registry, checks that torch, torchvision and timm are absent, then in that
venv runs ``defectmap predict`` on an exported model folder and ``defectmap serve`` with one
``POST /v1/inspect``. Prints the install time and size, the decisions, and the service's
answer. Takes a few minutes (the install downloads NumPy, SciPy, ONNX Runtime, OpenVINO, ...).

Usage::

    .venv/bin/python benchmarks/torch_free_install.py EXPORT_DIR IMAGE [IMAGE ...]
        [--extras runtime,openvino] [--runtime onnxruntime]

``EXPORT_DIR`` is a folder written by ``defectmap export`` (e.g. the one
``benchmarks/runtime.py`` leaves in ``runs/runtime-bench/export``).
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def folder_mb(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 1e6


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def post_image(url: str, image: Path) -> dict:
    boundary = uuid.uuid4().hex
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; "
            f"filename=\"{image.name}\"\r\nContent-Type: application/octet-stream\r\n\r\n"
            ).encode() + image.read_bytes() + f"\r\n--{boundary}--\r\n".encode()
    request = urllib.request.Request(
        url, data=body, headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    with urllib.request.urlopen(request, timeout=120) as answer:
        return json.loads(answer.read())


def serve_once(defectmap: Path, export_dir: Path, image: Path, work: Path,
               runtime: str | None) -> dict:
    """Start ``defectmap serve``, inspect one image, read /v1/model, stop the server."""
    port = free_port()
    flags = [] if runtime is None else ["--runtime", runtime]
    server = subprocess.Popen(
        [str(defectmap), "serve", str(export_dir), "--port", str(port),
         "--db", str(work / "audit.sqlite3"), *flags],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        start = time.perf_counter()
        while True:
            if server.poll() is not None:
                raise RuntimeError(f"serve exited: {server.stderr.read() if server.stderr else ''}")
            try:
                urllib.request.urlopen(f"{base}/healthz", timeout=2).read()
                break
            except OSError:
                if time.perf_counter() - start > 180:
                    raise RuntimeError("serve did not answer /healthz within 180 s") from None
                time.sleep(0.5)
        started_s = time.perf_counter() - start
        answer = post_image(f"{base}/v1/inspect", image)
        with urllib.request.urlopen(f"{base}/v1/model", timeout=30) as response:
            model = json.loads(response.read())
        return {"startup_s": round(started_s, 1), "decision": answer["decision"],
                "score": answer["score"], "elapsed_ms": answer.get("elapsed_ms"),
                "runtime": model["runtime"]}
    finally:
        server.terminate()
        server.wait(timeout=30)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("export_dir", type=Path)
    parser.add_argument("images", type=Path, nargs="+")
    parser.add_argument("--extras", default="runtime,openvino")
    parser.add_argument("--runtime", default=None)
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="defectmap-torch-free-"))
    try:
        venv = work / "venv"
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        python, defectmap = venv / "bin" / "python", venv / "bin" / "defectmap"
        start = time.perf_counter()
        subprocess.run([str(python), "-m", "pip", "install", "-q", "--progress-bar", "off",
                        f"{REPO}[{args.extras}]"], check=True)
        install_s = time.perf_counter() - start
        probe = "import importlib.util as u; print([m for m in ('torch', 'torchvision', " \
                "'timm') if u.find_spec(m)])"
        present = subprocess.run([str(python), "-c", probe], check=True, capture_output=True,
                                 text=True).stdout.strip()
        flags = [] if args.runtime is None else ["--runtime", args.runtime]
        start = time.perf_counter()
        predicted = subprocess.run(
            [str(defectmap), "predict", str(args.export_dir), *map(str, args.images),
             "--out", str(work / "out"), *flags], capture_output=True, text=True)
        predict_s = time.perf_counter() - start
        if predicted.returncode != 0:
            print(predicted.stderr, file=sys.stderr)
            return 1
        rows = json.loads((work / "out" / "results.json").read_text())
        rows = rows["results"] if isinstance(rows, dict) else rows
        served = serve_once(defectmap, args.export_dir, args.images[0], work, args.runtime)
        print(json.dumps({
            "extras": args.extras,
            "install_s": round(install_s, 1),
            "venv_mb": round(folder_mb(venv), 1),
            "torch_like_packages_present": present,
            "predict_s": round(predict_s, 1),
            "decisions": [(Path(r["image"]).name, r["decision"], round(r["score"], 4))
                          for r in rows],
            "serve": served,
        }, indent=2))
        return 0 if present == "[]" else 1
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
