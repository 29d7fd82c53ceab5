"""Ray is optional: only :mod:`defectmap.distributed` imports it, and only when called; without
it, ``--ray`` is one clear line. Runs without starting Ray (not marked ``ray``)."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import defectmap

PACKAGE = Path(defectmap.__file__).parent


def _imports_ray(node: ast.AST) -> bool:
    if isinstance(node, ast.Import):
        return any(a.name.split(".")[0] == "ray" for a in node.names)
    return isinstance(node, ast.ImportFrom) and node.level == 0 and (
        (node.module or "").split(".")[0] == "ray")


def test_only_the_distributed_layer_imports_ray() -> None:
    importers = sorted(
        str(path.relative_to(PACKAGE)) for path in PACKAGE.rglob("*.py")
        if any(_imports_ray(n) for n in ast.walk(ast.parse(path.read_text(encoding="utf-8")))))
    assert importers == ["distributed/cluster.py"]  # require_ray, inside a function


def _run(script: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", script, *args], capture_output=True,
                          text=True, timeout=300)


def test_importing_defectmap_and_its_cli_loads_no_ray() -> None:
    proc = _run("import sys, defectmap.cli, defectmap.distributed, defectmap.evaluate, "
                "defectmap.serve; print(sorted(m for m in sys.modules "
                "if m.split('.')[0] == 'ray'))")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


BLOCKED = r"""
import json, sys
sys.modules["ray"] = None  # from here on, "import ray" raises ImportError
from defectmap.cli._common import run_app
codes = [run_app(argv) for argv in json.loads(sys.argv[1])]
print(json.dumps(codes))
"""


def test_ray_flags_without_ray_say_how_to_install_it(tmp_path: Path) -> None:
    commands = [
        ["predict", str(tmp_path / "model"), str(tmp_path), "--out", str(tmp_path / "o"),
         "--ray", "local"],
        ["benchmark", str(tmp_path), "-c", "x", "--out", str(tmp_path / "b"), "--ray"],
    ]
    proc = _run(BLOCKED, json.dumps(commands))
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.splitlines()[-1]) == [1, 1]
    line = "error: --ray needs Ray, which is not installed: pip install 'defectmap[ray]'"
    assert proc.stderr.splitlines() == [line, line]
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing written


def test_a_ray_value_that_is_no_address_is_a_usage_error(tmp_path: Path) -> None:
    from defectmap.cli._common import run_app

    code = run_app(["benchmark", str(tmp_path), "--ray", "not an address", "--out",
                    str(tmp_path / "b")])
    assert code == 2
