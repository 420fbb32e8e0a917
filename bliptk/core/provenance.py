"""What a result was made with: the model, its weights and the dtype it ran in.

Everything bliptk writes (batch records, Ray shards, the embedding cache) carries this, and
nothing is reused unless it matches: a caption made with random weights is never taken for one
made with the pretrained checkpoint, nor one from another checkpoint of the same name.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass

__all__ = ["Weights", "weights_fingerprint"]

# Elements read from each array for the fingerprint: enough that any fine-tuning shows, few
# enough that ViT-L/16's 446 million parameters are fingerprinted in milliseconds.
_SAMPLES_PER_ARRAY = 4096


@dataclass(frozen=True)
class Weights:
    """The identity of a captioner's weights.

    Attributes:
        source: ``"pretrained"`` (a checkpoint) or ``"random"`` (the uninitialized net).
        seed: The seed of random weights; None for pretrained ones.
        fingerprint: [`weights_fingerprint()`][bliptk.core.provenance.weights_fingerprint] of the weights as loaded, before any dtype
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
        made = asdict(self)
        if not self.compiled:  # eager, as every record before compiling existed: those stay reusable
            del made["compiled"]
        return made

    def __str__(self) -> str:
        made = "pretrained weights" if self.source == "pretrained" else f"random weights (seed {self.seed})"
        return f"{made}, fingerprint {self.fingerprint}, {self.dtype}{', compiled' if self.compiled else ''}"


def weights_fingerprint(module) -> str:
    """A hash of a torch module's parameters: every array's name and shape, and evenly spaced
    samples of its values (as float32). Arrays shared by two modules count once.

    Returns:
        16 hex digits.
    """
    import torch

    digest = hashlib.sha256()
    for name, parameter in module.named_parameters():  # shared arrays are listed once
        values = parameter.detach().reshape(-1)
        step = max(1, values.numel() // _SAMPLES_PER_ARRAY)
        sample = values[::step].to(device="cpu", dtype=torch.float32).contiguous()
        digest.update(f"{name}{tuple(parameter.shape)}".encode())
        digest.update(sample.numpy().tobytes())
    return digest.hexdigest()[:16]
