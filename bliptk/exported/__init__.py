"""The ONNX runtime: captioning from a folder that [`bliptk.export()`][bliptk.model.exporting.export]
wrote, with ONNX Runtime, NumPy, ``tokenizers`` and Pillow only: nothing here imports torch (an
import-linter contract of ``.ci/run`` keeps it so). [`load()`][bliptk.exported.runtime.load] returns an
[`OnnxCaptioner`][bliptk.exported.runtime.OnnxCaptioner], which captions through the same pipeline and
decoding engine as torch's [`Captioner`][bliptk.model.captioner.Captioner]; `bliptk.load(folder)` gives
it too."""

from .runtime import DTYPES, FORMAT, FORMAT_VERSION, GRAPHS, OnnxCaptioner, is_export, load

__all__ = ["DTYPES", "FORMAT", "FORMAT_VERSION", "GRAPHS", "OnnxCaptioner", "is_export", "load"]
