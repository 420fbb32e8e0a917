"""A fingerprint of a torch model's weights, which [`Weights`][bliptk.core.provenance.Weights] records
so that nothing made with other weights is reused as if it were the same."""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

__all__ = ["files_fingerprint", "weights_fingerprint"]

# Elements read from each array for the fingerprint: enough that any fine-tuning shows, few
# enough that ViT-L/16's 446 million parameters are fingerprinted in milliseconds.
_SAMPLES_PER_ARRAY = 4096


def _sample(values: torch.Tensor) -> bytes:
    """Evenly spaced samples of a flattened array's values, as float32 bytes."""
    values = values.detach().reshape(-1)
    step = max(1, values.numel() // _SAMPLES_PER_ARRAY)
    return values[::step].to(device="cpu", dtype=torch.float32).contiguous().numpy().tobytes()


def weights_fingerprint(module) -> str:
    """A hash of a torch module's parameters: every array's name and shape, and evenly spaced
    samples of its values (as float32). Arrays shared by two modules count once.

    Returns:
        16 hex digits.
    """
    digest = hashlib.sha256()
    for name, parameter in module.named_parameters():  # shared arrays are listed once
        digest.update(f"{name}{tuple(parameter.shape)}".encode())
        digest.update(_sample(parameter))
    return digest.hexdigest()[:16]


def files_fingerprint(skeleton, files: list[Path]) -> str | None:
    """The [`weights_fingerprint()`][bliptk.model.fingerprint.weights_fingerprint] the module would have
    once loaded from safetensors ``files``, read from the files without building it: ``skeleton``,
    the architecture on the meta device, gives the parameters' names, shapes and order. None where
    the files do not hold every parameter under its name and shape (then only loading can tell).

    Each array is read whole (memory-mapped), one at a time: the cost of reading the files once,
    not of building and loading the model.
    """
    from safetensors import safe_open

    handles = [safe_open(str(file), framework="pt") for file in files]
    where = {key: handle for handle in handles for key in handle.keys()}  # noqa: SIM118 (safe_open is no dict)
    digest = hashlib.sha256()
    for name, parameter in skeleton.named_parameters():
        handle = where.get(name)
        if handle is None or tuple(handle.get_slice(name).get_shape()) != tuple(parameter.shape):
            return None
        digest.update(f"{name}{tuple(parameter.shape)}".encode())
        digest.update(_sample(handle.get_tensor(name)))
    return digest.hexdigest()[:16]
