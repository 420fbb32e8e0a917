"""What a result was made with: the model, its weights and the dtype it ran in.

Everything bliptk writes (batch records, Ray shards, the embedding cache) carries this, and
nothing is reused unless it matches: a caption made with random weights is never taken for one
made with the pretrained checkpoint, nor one from another checkpoint of the same name.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

__all__ = ["Weights"]


@dataclass(frozen=True)
class Weights:
    """The identity of a captioner's weights.

    Attributes:
        source: ``"pretrained"`` (a checkpoint) or ``"random"`` (the uninitialized net).
        seed: The seed of random weights; None for pretrained ones.
        fingerprint: [`weights_fingerprint()`][bliptk.model.fingerprint.weights_fingerprint] of the weights as loaded, before any dtype
            conversion (16 hex digits).
        dtype: The dtype the captioner computes in (``"float32"``, ``"bfloat16"``).
        compiled: Compiling the image encoder was asked for (``load(..., compile=True)``), whose
            features differ from eager's in the last bits. Where inductor could not compile, that
            run was eager (said by a ``CompileWarning``); the record still says compiled, so that
            runs asked for alike match wherever they ran.
    """

    source: str
    seed: int | None
    fingerprint: str
    dtype: str
    compiled: bool = False

    def as_dict(self) -> dict:
        """The weights' identity as a record stores it (``compiled`` only where True)."""
        made = asdict(self)
        if not self.compiled:  # eager, as every record before compiling existed: those stay reusable
            del made["compiled"]
        return made

    def __str__(self) -> str:
        made = "pretrained weights" if self.source == "pretrained" else f"random weights (seed {self.seed})"
        return f"{made}, fingerprint {self.fingerprint}, {self.dtype}{', compiled' if self.compiled else ''}"
