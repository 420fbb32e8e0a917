"""Export the captioning nets to ONNX, and caption with ONNX Runtime, with no torch needed at run time.

* [`export()`][bliptk.onnx.exporter.export] ([`bliptk.onnx.exporter`][bliptk.onnx.exporter], needs torch and the ``export`` extra) writes a folder
  of graphs traced from bliptk's own torch code, checked against torch;
* [`load()`][bliptk.onnx.runtime.load] ([`bliptk.onnx.runtime`][bliptk.onnx.runtime], needs the ``onnx`` extra only: ``onnxruntime``, NumPy,
  ``tokenizers`` and Pillow; nothing on its path imports torch) returns an [`OnnxCaptioner`][bliptk.onnx.runtime.OnnxCaptioner],
  which captions through the same pipeline and decoding engine as [`bliptk.Captioner`][bliptk.captioner.Captioner].
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .runtime import DTYPES, FORMAT, FORMAT_VERSION, GRAPHS, OnnxCaptioner, is_export, load

if TYPE_CHECKING:
    from .exporter import export

__all__ = ["DTYPES", "FORMAT", "FORMAT_VERSION", "GRAPHS", "OnnxCaptioner", "export", "is_export", "load"]


def __getattr__(name: str):
    if name == "export":  # imported when first used: the exporter needs torch, the runner does not
        from .exporter import export

        return export
    raise AttributeError(f"module 'bliptk.onnx' has no attribute {name!r}")
