"""The package itself: its public names, lazy imports, and no import cycle."""

import ast
import subprocess
import sys
from pathlib import Path

import bliptk

PACKAGE = Path(bliptk.__file__).parent


def _module(path: Path) -> str:
    """A module's dotted name inside bliptk (``onnx.runtime``; a package is its ``__init__``)."""
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """The bliptk modules a module imports, at the top or inside functions (lazy imports)."""
    package = (
        _module(path).rsplit(".", 1)[0]
        if path.stem != "__init__" and "." in _module(path)
        else (_module(path) if path.stem == "__init__" else "")
    )
    imported = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.ImportFrom):
            continue
        if node.level:  # from .x import y, from ..x import y
            base = package.split(".")[: len(package.split(".")) - (node.level - 1)] if package else []
            prefix = ".".join([*base, node.module] if node.module else base)
            names = [prefix, *(f"{prefix}.{alias.name}".lstrip(".") for alias in node.names)]  # a name, or a module of the package
        elif (node.module or "").startswith("bliptk."):
            names = [node.module.removeprefix("bliptk.")]
        else:
            continue
        imported.update(name for name in names if name)
    return imported & MODULES


MODULES = {_module(path) for path in PACKAGE.rglob("*.py") if _module(path)}


def test_no_import_cycle_lazy_imports_included():
    graph = {_module(path): _imports(path) for path in PACKAGE.rglob("*.py") if _module(path)}
    assert graph["model.captioner"] >= {"core.decoding", "core.pipeline", "captioning.backend"}
    assert graph["captioning.backend"] >= {"captioning.folder"}  # lazy imports are read too
    assert graph["model.exporting"] >= {"exported.runtime", "model.text_decoder"}

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
    assert "load" in dir(bliptk) and bliptk.core.decoding.DEFAULT_PROMPT == bliptk.DEFAULT_PROMPT


def test_importing_bliptk_imports_no_heavy_package():
    code = "import sys, bliptk, bliptk.cli.main, bliptk.core.decoding; print(sorted(m for m in ('torch', 'transformers', 'ray', 'onnx', 'onnxruntime') if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.stdout.strip() == "[]", result.stderr
