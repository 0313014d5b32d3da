"""The tree is the architecture diagram: the floors of docs/architecture.md ("Floors") hold.

``lint-imports`` checks the contracts declared in pyproject.toml (imports point down the floors; no
framework outside ``backends/``). A planted wrong-way import must break them, so the check is shown
to look where it should; and no module of the project takes part in an import cycle.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import grimp
import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("bench", "backends", "reports")


def _lint(root: Path) -> subprocess.CompletedProcess:
    """``lint-imports`` over the packages under ``root``, with its pyproject.toml (the entry point of this Python)."""
    script = "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())"
    return subprocess.run([sys.executable, "-c", script, "--no-cache"],
                          capture_output=True, text=True, cwd=root, timeout=120,
                          env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"})


def _copy_tree(tmp_path: Path) -> Path:
    for package in PACKAGES:
        shutil.copytree(ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__", "datasets"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def test_the_import_contracts_hold():
    result = _lint(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "3 kept, 0 broken" in result.stdout


@pytest.mark.parametrize(("module", "planted", "contract"), [
    ("bench/spec/model.py", "import bench.measure.harness", "Imports point down the floors"),
    ("bench/spec/shapes.py", "from bench.run import grid", "Imports point down the floors"),
    ("reports/records.py", "import backends.base", "Imports point down the floors"),
    ("reports/html.py", "from bench.measure import harness", "Imports point down the floors"),
    ("backends/base.py", "from bench.results import store", "Adapters import only the spec floor and the oracle"),
    ("backends/base.py", "from bench.measure import training", "Imports point down the floors"),
    ("bench/results/store.py", "import torch", "Only backends/ imports a framework"),
])
def test_a_planted_wrong_way_import_breaks_a_contract(tmp_path, module, planted, contract):
    tree = _copy_tree(tmp_path)
    target = tree / module
    target.write_text(target.read_text() + f"\n{planted}  # planted by the test\n")
    result = _lint(tree)
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"{contract} BROKEN" in result.stdout


def _cycles(graph: grimp.ImportGraph) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), i.e. import cycles."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for other in graph.find_modules_directly_imported_by(module):
            if other not in index:
                visit(other)
                low[module] = min(low[module], low[other])
            elif other in on_stack:
                low[module] = min(low[module], index[other])
        if low[module] == index[module]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == module:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for module in sorted(graph.modules):
        if module not in index:
            visit(module)
    return found


def test_no_module_takes_part_in_an_import_cycle():
    graph = grimp.build_graph(*PACKAGES, cache_dir=None)
    # a package's __init__ that re-exports its own modules is not a cycle between floors
    for package in [m for m in graph.modules if graph.find_children(m)]:
        for child in graph.find_children(package):
            if graph.direct_import_exists(importer=package, imported=child):
                graph.remove_import(importer=package, imported=child)
    assert _cycles(graph) == []


def test_bench_keeps_a_handful_of_top_level_modules():
    top = sorted(p.name for p in (ROOT / "bench").glob("*.py"))
    assert top == ["__init__.py", "__main__.py", "cli.py", "errors.py"]
