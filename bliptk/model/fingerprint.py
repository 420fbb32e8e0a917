"""A fingerprint of a torch model's weights, which [`Weights`][bliptk.core.provenance.Weights] records
so that nothing made with other weights is reused as if it were the same."""

from __future__ import annotations

import hashlib

import torch

__all__ = ["weights_fingerprint"]

# Elements read from each array for the fingerprint: enough that any fine-tuning shows, few
# enough that ViT-L/16's 446 million parameters are fingerprinted in milliseconds.
_SAMPLES_PER_ARRAY = 4096


def weights_fingerprint(module) -> str:
    """A hash of a torch module's parameters: every array's name and shape, and evenly spaced
    samples of its values (as float32). Arrays shared by two modules count once.

    Returns:
        16 hex digits.
    """
    digest = hashlib.sha256()
    for name, parameter in module.named_parameters():  # shared arrays are listed once
        values = parameter.detach().reshape(-1)
        step = max(1, values.numel() // _SAMPLES_PER_ARRAY)
        sample = values[::step].to(device="cpu", dtype=torch.float32).contiguous()
        digest.update(f"{name}{tuple(parameter.shape)}".encode())
        digest.update(sample.numpy().tobytes())
    return digest.hexdigest()[:16]
