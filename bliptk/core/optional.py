"""Packages a feature needs that an install may lack: imported where the feature runs, or the
[`MissingDependencyError`][bliptk.core.errors.MissingDependencyError] that says what to install.
One table says what to install for each package bliptk imports this way."""

from __future__ import annotations

import importlib
from types import ModuleType

from .errors import MissingDependencyError

__all__ = ["INSTALL", "missing_dependency", "optional"]

_TRAIN = "fine-tuning needs accelerate and peft: pip install 'accelerate>=1.1,<2' 'peft>=0.17,<1' (the train extra)"
_EXPORT = "exporting to ONNX needs onnx and onnxscript: pip install onnx onnxscript onnxruntime (the export extra)"
INSTALL = {
    "torch": "PyTorch is not installed: see the README's Install section (the CPU build: pip install torch "
    "--index-url https://download.pytorch.org/whl/cpu); without torch, bliptk captions from an ONNX export (--model FOLDER)",
    "transformers": "transformers is not installed: pip install 'transformers>=5,<6'",
    "av": "reading videos needs PyAV: pip install av",
    "onnxruntime": "ONNX captioning needs ONNX Runtime: pip install onnxruntime (the onnx extra)",
    "onnx": _EXPORT,
    "onnxscript": _EXPORT,
    "filelock": "writing outputs needs filelock (one writer per output): pip install filelock",
    "tqdm": "progress bars need tqdm: pip install tqdm",
    "captum": "integrated gradients needs captum: pip install 'captum>=0.8,<1'",
    "ray": "distributed captioning needs Ray: pip install 'ray[data]>=2.60,<3' (the ray extra)",
    "pyarrow": "Parquet shards need pyarrow: pip install 'ray[data]>=2.60,<3' (the ray extra)",
    "pycocoevalcap": "caption metrics need pycocoevalcap: pip install pycocoevalcap (the eval extra)",
    "inflect": "CHAIR reads plurals with inflect: pip install 'inflect>=7,<8' (the eval extra)",
    "accelerate": _TRAIN,
    "peft": _TRAIN,
    "ipywidgets": "the explorers need ipywidgets: pip install ipywidgets",
}
"""What to install for each package a feature imports when it runs."""


def missing_dependency(error: ImportError) -> MissingDependencyError | None:
    """The [`MissingDependencyError`][bliptk.core.errors.MissingDependencyError] of a missing package
    bliptk knows how to install, or None."""
    top = (getattr(error, "name", None) or "").split(".")[0]
    return MissingDependencyError(INSTALL[top]) if isinstance(error, ModuleNotFoundError) and top in INSTALL else None


def optional(module: str) -> ModuleType:
    """Import ``module`` (``"av"``, ``"onnxruntime"``, ``"ray.data"``...).

    Raises:
        MissingDependencyError: It, or a package it needs, is not installed; the message says what
            to install.
    """
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as error:
        top = module.split(".")[0]
        known = missing_dependency(error)
        raise known or MissingDependencyError(INSTALL.get(top, f"{module} is not installed: pip install {top}")) from None
