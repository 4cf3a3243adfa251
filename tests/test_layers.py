"""The package's layers: each imports only the layers below it (module level or inside a function), no
module imports itself back through others, and the HTML index builds without torch."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "classifier_lib"
# bottom to top; a module may import its own layer and the ones before it
LAYERS = ["utils", "config", "presets", "data", "model", "inference", "report", "training", "workflow", "cli"]


def layer_of(module: str) -> str:
    """`classifier_lib.data.cache` -> `data`; `classifier_lib.cli` -> `cli`; `classifier_lib` -> ``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def package_modules() -> dict[str, Path]:
    modules = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        modules[name] = path
    return modules


def imports_of(path: Path) -> set[str]:
    """Every classifier_lib module `path` imports, wherever the import statement is."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("classifier_lib"):
            for alias in node.names:  # `from classifier_lib.data import images`: the module images
                candidate = f"{node.module}.{alias.name}"
                found.add(candidate if candidate in package_modules() else node.module)
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("classifier_lib")}
    return found - {"classifier_lib"}  # the package itself: __version__ and the lazy public names


MODULES = package_modules()


def test_every_module_is_in_a_layer():
    unknown = {layer_of(name) for name in MODULES} - set(LAYERS) - {"", "__main__"}
    assert not unknown, f"modules outside every layer: {unknown}; add them to LAYERS"
    assert len(MODULES) > 30 and {layer_of(name) for name in MODULES} >= set(LAYERS)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_a_module_imports_only_its_layer_and_those_below(module):
    if layer_of(module) in ("", "__main__"):
        return
    rank = LAYERS.index(layer_of(module))
    climbs = sorted(target for target in imports_of(MODULES[module]) if LAYERS.index(layer_of(target)) > rank)
    assert not climbs, f"{module} ({layer_of(module)}) imports a higher layer: {climbs}"


def test_no_import_cycles():
    graph = {name: {t for t in imports_of(path) if t in MODULES} for name, path in MODULES.items()}
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for target in graph[node]:
            if state.get(target) == 1:
                pytest.fail("import cycle: " + " -> ".join(trail[trail.index(target) :] + [target]))
            if target not in state:
                visit(target, trail + [target])
        state[node] = 2

    for name in graph:
        if name not in state:
            visit(name, [name])


def test_the_report_index_builds_without_torch():
    script = "import sys, classifier_lib.report.index; assert 'torch' not in sys.modules, 'torch imported'; print('ok')"
    completed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False)
    assert completed.stdout.strip() == "ok", completed.stderr[-2000:]


def test_a_climb_is_caught(tmp_path):
    """The checker itself: a data module importing training is reported."""
    fake = tmp_path / "fake.py"
    fake.write_text("def f():\n    from classifier_lib.training.engine import train\n")
    assert "classifier_lib.training.engine" in imports_of(fake)
