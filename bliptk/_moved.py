"""The module paths and top-level names of bliptk 0.2, which kept working for one release.

bliptk 0.3 laid its 41 flat modules out in subpackages by what each may import (``bliptk.core``,
``bliptk.store``, ``bliptk.model``...). Code and notebooks that import an old path
(``from bliptk.distributed import caption_dataset``, ``import bliptk.onnx``) get the module at its
new path, with a ``DeprecationWarning`` naming it; so do the names that left the top level
(``bliptk.TextDecoder``: internals, reachable from their modules). Both go in the next release.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import types
import warnings
from types import FrameType

__all__ = ["MOVED_MODULES", "MOVED_NAMES", "install", "top_level"]

MOVED_MODULES = {
    "bliptk.errors": "bliptk.core.errors",
    "bliptk.tokenizer": "bliptk.core.tokenizer",
    "bliptk.preprocess": "bliptk.core.preprocess",
    "bliptk.files": "bliptk.core.files",
    "bliptk.video": "bliptk.core.video",
    "bliptk.figures": "bliptk.core.figures",
    "bliptk.notices": "bliptk.core.notices",
    "bliptk.quiet": "bliptk.core.quiet",
    "bliptk.models": "bliptk.core.models",
    "bliptk.decoding": "bliptk.core.decoding",
    "bliptk.pipeline": "bliptk.core.pipeline",
    "bliptk.provenance": "bliptk.core.provenance",
    "bliptk.verbs": "bliptk.captioning.backend",
    "bliptk.outputs": "bliptk.store.outputs",
    "bliptk.records": "bliptk.store.records",
    "bliptk.batch": "bliptk.captioning.folder",
    "bliptk.distributed": "bliptk.captioning.ray_data",
    "bliptk.evaluation": "bliptk.analysis.evaluation",
    "bliptk.feature_space": "bliptk.analysis.feature_space",
    "bliptk.captioner": "bliptk.model.captioner",
    "bliptk.loading": "bliptk.model.loading",
    "bliptk.image_encoder": "bliptk.model.image_encoder",
    "bliptk.text_decoder": "bliptk.model.text_decoder",
    "bliptk.compiled": "bliptk.model.compiled",
    "bliptk.embeddings": "bliptk.model.embeddings",
    "bliptk.info": "bliptk.model.info",
    "bliptk.attention": "bliptk.model.attention",
    "bliptk.stepper": "bliptk.model.stepper",
    "bliptk.testing": "bliptk.model.parity",
    "bliptk.onnx.exporter": "bliptk.model.exporting",
    "bliptk.onnx.runtime": "bliptk.exported.runtime",
    "bliptk.explanations": "bliptk.attribution.explanation",
    "bliptk.explanation_methods": "bliptk.attribution.registry",
    "bliptk.perturbation": "bliptk.attribution.faithfulness",
    "bliptk.finetuning": "bliptk.training.finetune",
    "bliptk.finetune_options": "bliptk.training.options",
    "bliptk.finetune_run": "bliptk.training.run",
    "bliptk.finetune_folder": "bliptk.training.folder",
    "bliptk.training_data": "bliptk.training.data",
    "bliptk.widgets": "bliptk.notebook.widgets",
    "bliptk.cli": "bliptk.cli",  # a package now: bliptk.cli.main holds main(), which it re-exports
}
"""Each module path of 0.2 and where the module is now."""

MOVED_NAMES = {
    "TextDecoder": "bliptk.model.text_decoder",
    "DecoderState": "bliptk.model.text_decoder",
    "ImageEncoder": "bliptk.model.image_encoder",
    "CaptionBackend": "bliptk.captioning.backend",
    "Tokenizer": "bliptk.core.tokenizer",
    "load_tokenizer": "bliptk.core.tokenizer",
    # 0.2's Preprocessor gave torch tensors; the torch-free core's gives NumPy arrays.
    "Preprocessor": "bliptk.model.image_encoder:TensorPreprocessor",
}
"""Each name that left the top level in 0.3 and where it is: ``module`` (the same name) or ``module:name``."""

# bliptk.onnx was a package of the export and the runner: it is both runtimes' halves now.
_ONNX = "bliptk.onnx"
_ONNX_NAMES = {"export": "bliptk.model.exporting"}


def _warn(old: str, new: str) -> None:
    warnings.warn(f"{old} moved to {new} in bliptk 0.3; the old path goes in the next release", DeprecationWarning, stacklevel=_caller())


def _caller() -> int:
    """The stack level of the first frame outside the import machinery, this module and the
    package's ``__init__``: the code that used the old path."""
    here = (__file__, __file__.replace("_moved.py", "__init__.py"))
    level, frame = 1, sys._getframe(1)
    caller: FrameType | None = frame
    while caller is not None and ("importlib" in caller.f_code.co_filename or caller.f_code.co_filename in here):
        caller = caller.f_back
        # warnings.warn steps over the import system's frozen frames by itself: count the others only
        if caller is not None and not ("importlib" in caller.f_code.co_filename and "_bootstrap" in caller.f_code.co_filename):
            level += 1
    return level


class _Alias(importlib.abc.Loader):
    """Loads an old path as the module at its new path (the same module object)."""

    def __init__(self, old: str, new: str):
        self.old, self.new = old, new

    def create_module(self, spec):
        if self.old == _ONNX:
            return _onnx_module()
        _warn(self.old, self.new)
        return importlib.import_module(self.new)

    def exec_module(self, module) -> None:  # the module is loaded already, at its new path
        pass


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        if fullname == _ONNX:
            return importlib.machinery.ModuleSpec(fullname, _Alias(fullname, fullname), is_package=True)
        new = MOVED_MODULES.get(fullname)
        if new is None or new == fullname:
            return None
        return importlib.machinery.ModuleSpec(fullname, _Alias(fullname, new))


def _onnx_module() -> types.ModuleType:
    """``bliptk.onnx`` as it was: the runner's names, and ``export`` (imported when first used)."""
    _warn(_ONNX, "bliptk.exported (the runner) and bliptk.model.exporting (export)")
    module = types.ModuleType(_ONNX, "bliptk 0.2's ONNX package: see bliptk.exported and bliptk.model.exporting")
    module.__path__ = []  # a package: bliptk.onnx.runtime and bliptk.onnx.exporter are found by the finder

    def __getattr__(name: str):
        place = _ONNX_NAMES.get(name, "bliptk.exported.runtime")
        return getattr(importlib.import_module(place), name)

    module.__getattr__ = __getattr__  # type: ignore[method-assign]
    return module


def install() -> None:
    """Put the finder of old paths on ``sys.meta_path`` (once)."""
    if not any(isinstance(finder, _Finder) for finder in sys.meta_path):
        sys.meta_path.append(_Finder())


def top_level(name: str):
    """What ``bliptk.<name>`` gives for a name 0.3 moved: an old module (imported from its new
    path), a name that left the top level, or a subpackage; None for any other name."""
    if name in MOVED_NAMES:
        module, _, new_name = MOVED_NAMES[name].partition(":")
        _warn(f"bliptk.{name}", f"{module}.{new_name or name}")
        return getattr(importlib.import_module(module), new_name or name)
    if f"bliptk.{name}" in MOVED_MODULES or f"bliptk.{name}" == _ONNX:
        return importlib.import_module(f"bliptk.{name}")
    if name in ("core", "store", "captioning", "analysis", "model", "exported", "attribution", "training", "notebook", "cli", "version"):
        return importlib.import_module(f"bliptk.{name}")
    return None
