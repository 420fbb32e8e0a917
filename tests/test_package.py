"""The package itself: its public names, lazy imports, and no import cycle."""

import ast
import subprocess
import sys
from pathlib import Path

import bliptk

PACKAGE = Path(bliptk.__file__).parent


def _imports(path: Path) -> set[str]:
    """The bliptk modules a module imports, at the top or inside functions (lazy imports)."""
    imported = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            if node.module:
                imported.add(node.module.split(".")[0])
            else:
                imported.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("bliptk."):
            imported.add(node.module.split(".")[1])
    return imported & {p.stem for p in PACKAGE.glob("*.py")}


def test_no_import_cycle_lazy_imports_included():
    graph = {path.stem: _imports(path) for path in PACKAGE.glob("*.py") if path.stem != "__init__"}
    assert graph["captioner"] >= {"decoding", "batch", "video"}  # the graph is read, lazy imports too

    def cycle_from(module, trail):
        for imported in sorted(graph.get(module, ())):
            if imported in trail:
                return trail[trail.index(imported) :] + [imported]
            found = cycle_from(imported, trail + [imported])
            if found:
                return found
        return None

    cycles = [cycle for module in graph if (cycle := cycle_from(module, [module]))]
    assert cycles == []


def test_every_public_name_resolves_and_is_listed():
    for name in bliptk.__all__:
        assert getattr(bliptk, name) is not None
    assert "load" in dir(bliptk) and bliptk.decoding.DEFAULT_PROMPT == bliptk.DEFAULT_PROMPT


def test_importing_bliptk_imports_no_heavy_package():
    code = "import sys, bliptk, bliptk.cli, bliptk.decoding; print(sorted(m for m in ('torch', 'transformers', 'ray', 'onnx', 'onnxruntime') if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.stdout.strip() == "[]", result.stderr
