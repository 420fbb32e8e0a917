"""The compiled path: ``torch.compile`` with inductor and freezing, eager where it cannot compile.

Freezing treats the weights as constants: inductor prepacks them for oneDNN and fuses the
elementwise work around the matrix products. What that saves depends on the CPU (the ViT-B/16
encoder: 0.76-0.85 of eager's time on a 2-core AMD EPYC, 0.92-1.07 on a 2-core Xeon with AMX, where
the matrix products and attention, unchanged by compiling, are most of the time; see the
Performance guide). The weights are not part of the
compiled code: torch's on-disk cache (``TORCHINDUCTOR_CACHE_DIR``, by default
``/tmp/torchinductor_$USER``) keys non-inlined frozen weights by shape and dtype only and binds
each process's own weights at run time, so a second process, or another checkpoint of the same
architecture, skips most of the compile time and still computes with its own weights.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch

from ..core.errors import CompileWarning, InvalidOptionError, first_line

__all__ = ["Compiled", "check_compile_cache", "compile_unavailable"]


def compile_unavailable(device: torch.device) -> str | None:
    """Why inductor cannot compile for ``device`` here, or None when it can."""
    import torch._dynamo

    if not torch._dynamo.is_dynamo_supported():
        return "torch.compile does not support this Python or platform"
    if device.type == "cpu":
        from torch._inductor import cpp_builder, exc

        try:
            cpp_builder.get_cpp_compiler()
        except exc.InvalidCxxCompiler:
            return "inductor found no C++ compiler (install g++, or name one in $CXX)"
    elif device.type == "cuda":
        from torch.utils._triton import has_triton

        if not has_triton():
            return "inductor needs Triton on CUDA (pip install triton)"
    return None


def check_compile_cache(compiling: bool = False) -> None:
    """Check, before a model loads, inductor's on-disk cache folder (``TORCHINDUCTOR_CACHE_DIR``, or
    torch's default under the temporary folder): torch makes it whenever it loads a model (importing
    its compiler), compiling or not, so a folder that cannot be made fails every command deep
    inside torch; compiling also writes there.

    Raises:
        InvalidOptionError: The folder cannot be made (or, ``compiling``, written).
    """
    import os
    import tempfile

    given = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    folder = given if given is not None else _default_cache_dir()
    try:
        os.makedirs(folder, exist_ok=True)
        if compiling:
            tempfile.TemporaryFile(dir=folder).close()
    except OSError as problem:
        where = f"TORCHINDUCTOR_CACHE_DIR={folder}" if given is not None else f"torch's compiler cache folder {folder}"
        made = "made or written" if compiling else "made"
        raise InvalidOptionError(
            f"{where} cannot be {made} ({problem.strerror or problem}); torch makes it whenever it loads a model: point "
            "TORCHINDUCTOR_CACHE_DIR at a folder you can write" + (", or unset it" if given is not None else ""),
        ) from None


def _default_cache_dir() -> str:
    """torch's default for ``TORCHINDUCTOR_CACHE_DIR``, as ``torch._inductor`` names it, found
    without importing it (importing it makes the folder, failing where the folder cannot be made)."""
    import getpass
    import os
    import re
    import tempfile

    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no user name: torch falls back alike
        user = "unknown"
    return os.path.join(tempfile.gettempdir(), "torchinductor_" + re.sub(r'[\\/:*?"<>|]', "_", user))


class Compiled:
    """A function of one batch tensor ``(B, ...)``, compiled with inductor and freezing on its first
    call, run eager when compiling is not possible here (said once, as a
    [`CompileWarning`][bliptk.core.errors.CompileWarning]).

    Shapes are static (``dynamic=False``), which is what freezing and oneDNN's prepacked weights
    want, so each batch size compiles once; a batch at least half as large as a size already
    compiled is padded to it (repeating its last row) and the padding dropped, rather than compiled
    again, so the last, short batch of a folder job costs at most its own size again in padding, not
    a second compile. Freezing copies the weights at the first compile: changed in place afterwards
    (training, ``load_state_dict``), they would not be seen, hence a new ``load`` after training.

    Args:
        function: The eager function, ``(B, ...) -> (B, ...)``, rows independent of each other.
        device: Where it runs (chooses the compiler inductor needs).
    """

    def __init__(self, function: Callable[[torch.Tensor], torch.Tensor], device: torch.device):
        self.function = function
        self.unavailable = compile_unavailable(device)
        self.compiled: Callable[[torch.Tensor], torch.Tensor] | None = None
        self.sizes: set[int] = set()
        if self.unavailable is not None:
            _say_eager(self.unavailable)
        else:
            self.compiled = torch.compile(function, backend="inductor", dynamic=False, options={"freezing": True})

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        size = batch.shape[0]
        if self.compiled is None or size == 0:
            return self.function(batch)
        target = min((s for s in self.sizes if size <= s <= 2 * size), default=size)
        # Always a new tensor, made here (under forward's inference mode): dynamo guards on whether
        # an input is an inference tensor, and a caller's mix of both would compile twice.
        padded = torch.cat([batch, batch[-1:].expand(target - size, *batch.shape[1:])])
        try:
            result = self.compiled(padded)
        except Exception as error:  # inductor's own failures only; anything else is the caller's to see
            if not _is_compile_failure(error):
                raise
            self.compiled, self.unavailable = None, f"inductor failed: {type(error).__name__}: {first_line(error)}"
            _say_eager(self.unavailable)
            return self.function(batch)
        self.sizes.add(target)
        return result[:size]


def _is_compile_failure(error: Exception) -> bool:
    from torch._dynamo.exc import BackendCompilerFailed  # InductorError among them
    from torch._inductor.exc import CppCompileError, InvalidCxxCompiler

    return isinstance(error, BackendCompilerFailed | CppCompileError | InvalidCxxCompiler)


_SAID: set[str] = set()


def _say_eager(reason: str) -> None:
    if reason not in _SAID:
        _SAID.add(reason)
        warnings.warn(f"compile=True: {reason}; bliptk runs eager (the same results, without the speed-up)", CompileWarning, stacklevel=3)
