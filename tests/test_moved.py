"""The module paths and top-level names of bliptk 0.2 keep working for one release, each with a
DeprecationWarning that names the new place; the documentation and notebooks use none of them."""

import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from bliptk._moved import MOVED_MODULES, MOVED_NAMES

ROOT = Path(__file__).parent.parent


def _run(code: str) -> subprocess.CompletedProcess:
    """Run code in a fresh interpreter (old paths are resolved once per process), warnings shown."""
    return subprocess.run(
        [sys.executable, "-W", "always::DeprecationWarning", "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=120
    )


@pytest.mark.slow  # imports every module of the package, torch and transformers among them
def test_each_old_module_path_is_the_new_module_with_a_warning():
    moved = {old: new for old, new in MOVED_MODULES.items() if old != new}
    code = f"""
        import importlib, warnings
        for old, new in {moved!r}.items():
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                module = importlib.import_module(old)
            assert module is importlib.import_module(new), old
            said = [str(w.message) for w in caught if issubclass(w.category, DeprecationWarning)]
            # (bliptk.onnx.exporter says bliptk.onnx's warning first: its parent is imported first)
            assert said[-1:] == [f"{{old}} moved to {{new}} in bliptk 0.3; the old path goes in the next release"], (old, said)
        print(len({moved!r}))
    """
    result = _run(code)
    assert result.returncode == 0, result.stderr[-3000:]
    assert int(result.stdout) == len(moved) > 30


def test_the_warning_points_at_the_code_that_used_the_old_path():
    result = _run("from bliptk.distributed import caption_dataset\n")
    assert result.returncode == 0, result.stderr
    assert "<string>:1: DeprecationWarning: bliptk.distributed moved to bliptk.captioning.ray_data in bliptk 0.3" in result.stderr


def test_names_that_left_the_top_level_still_resolve_with_a_warning():
    code = """
        import warnings
        import bliptk
        from bliptk.model.image_encoder import TensorPreprocessor
        from bliptk.model.text_decoder import TextDecoder
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            assert bliptk.TextDecoder is TextDecoder
            assert bliptk.Preprocessor is TensorPreprocessor
        print([str(w.message) for w in caught])
    """
    result = _run(code)
    assert result.returncode == 0, result.stderr[-3000:]
    said = result.stdout
    assert "bliptk.TextDecoder moved to bliptk.model.text_decoder.TextDecoder" in said
    assert "bliptk.Preprocessor moved to bliptk.model.image_encoder.TensorPreprocessor" in said


def test_bliptk_onnx_offers_the_runner_and_the_exporter():
    code = """
        import warnings
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            import bliptk.onnx
            from bliptk.exported.runtime import OnnxCaptioner, load
            from bliptk.model.exporting import export
            assert bliptk.onnx.load is load and bliptk.onnx.OnnxCaptioner is OnnxCaptioner and bliptk.onnx.export is export
        print([str(w.message) for w in caught])
    """
    result = _run(code)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "bliptk.onnx moved to bliptk.exported (the runner) and bliptk.model.exporting (export)" in result.stdout


def _documented_code() -> dict[str, str]:
    """The code users copy: the README, the guides, the notebooks' code cells, the benchmarks."""
    texts = {str(p.relative_to(ROOT)): p.read_text() for p in [ROOT / "README.md", *(ROOT / "docs").rglob("*.md")]}
    for notebook in (ROOT / "notebooks").glob("*.ipynb"):
        cells = json.loads(notebook.read_text())["cells"]
        texts[notebook.name] = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
    texts.update({str(p.relative_to(ROOT)): p.read_text() for p in (ROOT / "benchmarks").glob("*.py")})
    return texts


@pytest.mark.parametrize("where, text", sorted(_documented_code().items()))
def test_documented_code_uses_no_old_path(where, text):
    old_paths = [old for old, new in MOVED_MODULES.items() if old != new] + ["bliptk.onnx"]
    found = [m.group(0) for old in old_paths for m in re.finditer(re.escape(old) + r"(?![\w])", text)]
    found += [m.group(0) for name in MOVED_NAMES for m in re.finditer(rf"\bbliptk\.{name}\b|from bliptk import [^\n]*\b{name}\b", text)]
    assert found == [], f"{where} uses bliptk 0.2 paths: {found}"
