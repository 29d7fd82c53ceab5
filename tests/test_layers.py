"""The layering of the README's architecture: each package imports only the layers before it.

Every ``from defectmap.X import ...`` and ``import defectmap.X`` in the package, at the top of
a module, inside a function or under TYPE_CHECKING, is checked against this order.
``metrics`` is pure NumPy and imports no other layer, so every layer may use it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import defectmap

ORDER = ["errors", "constants", "files", "progress", "threads", "prediction", "data", "runtime",
         "metrics", "features", "detectors", "calibrate", "pipeline", "registry", "export",
         "report", "evaluate", "distributed", "serve", "feedback", "demo", "cli"]
PACKAGE = Path(defectmap.__file__).parent


def _layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "defectmap" else None


def test_every_module_imports_only_earlier_layers() -> None:
    files = sorted(PACKAGE.rglob("*.py"))
    layers = {path.relative_to(PACKAGE).parts[0].removesuffix(".py") for path in files}
    assert layers - {"__init__"} == set(ORDER)  # a new layer must be placed in ORDER
    upward = []
    for path in files:
        own = path.relative_to(PACKAGE).parts[0].removesuffix(".py")
        if own == "__init__":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = ([node.module] if isinstance(node, ast.ImportFrom) and node.module
                     else [a.name for a in node.names] if isinstance(node, ast.Import) else [])
            for name in names:
                other = _layer(name)
                if other in (None, own, "metrics"):
                    continue
                if ORDER.index(other) > ORDER.index(own):
                    upward.append(f"{path.relative_to(PACKAGE)}:{node.lineno} imports {name}")
    assert upward == []


def test_metrics_imports_no_other_layer() -> None:
    for path in sorted((PACKAGE / "metrics").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module:
                assert _layer(node.module) in (None, "metrics", "errors"), (path, node.module)
