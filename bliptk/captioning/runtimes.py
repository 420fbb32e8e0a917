"""The runtime seam: which model, which runtime, which weights, in what dtype, compiled or not, on
which device, described once ([`LoadOptions`][bliptk.captioning.runtimes.LoadOptions]) and loaded by one
function ([`load()`][bliptk.captioning.runtimes.load], ``bliptk.load``) for every runtime.

A runtime is a module with a ``load_model(options: LoadOptions)`` that returns a
[`CaptionBackend`][bliptk.captioning.backend.CaptionBackend], and a ``describe_model(options)`` that says,
without loading its weights, how a model preprocesses images and which prompt it captions after
([`ModelDescription`][bliptk.captioning.runtimes.ModelDescription]: what a Ray job's driver needs), registered here by one
[`Runtime`][bliptk.captioning.runtimes.Runtime] row: its name (which records carry), its module (imported
only when it loads something, so that a torch-free install never imports torch), its dtypes, the
options it takes, and how it recognises a model of its own (an ONNX export folder). The command
line's ``--model``, ``--dtype``, ``--random-weights``, ``--device`` and ``--compile``, the Ray
actors and the provenance of every record go through the same description. Adding a runtime is
its module and one ``register_runtime(Runtime(...))``.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from typing import TYPE_CHECKING

from ..core.errors import InvalidArgumentError, InvalidOptionError, UnknownModelError, check_positive_int, option_error
from ..core.models import _REGISTRY as _ARCHITECTURES
from ..core.models import DEFAULT_MODEL
from ..core.optional import missing_dependency
from ..core.preprocess import Preprocessor

if TYPE_CHECKING:
    from .backend import CaptionBackend

__all__ = ["DTYPES", "RUNTIMES", "LoadOptions", "ModelDescription", "Runtime", "describe", "load", "register_runtime", "runtime_of"]


@dataclass(frozen=True, kw_only=True)
class LoadOptions:
    """What to load, and how: the one description every runtime, the command line and the Ray
    actors share. Build it by keyword; ``dataclasses.replace`` for another.

    Attributes:
        model: An architecture name (``"ViT-L/16"``, ``"ViT-B/16"``, ``"tiny"``), a hub id, a
            checkpoint folder, or an ONNX export folder.
        runtime: ``"torch"``, ``"onnx"``, or None: the model's own (an export folder's is
            ``"onnx"``, any other model's ``"torch"``).
        pretrained: False for the architecture with random weights (torch).
        weights_seed: The seed of random weights (torch).
        dtype: One of the runtime's [`DTYPES`][bliptk.captioning.runtimes.DTYPES]; None for float32.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``; None picks CUDA when present (torch).
        compile: Compile the image encoder with inductor (torch).
        threads: The threads a model computes on (torch's, ONNX Runtime's intra-op); None for the
            runtime's default (every core).

    Each field's ``metadata`` holds its command-line flag and help, from which the ``bliptk``
    command builds its model flags.
    """

    model: str = field(
        default=DEFAULT_MODEL,
        metadata={
            "flag": "--model",
            "help": "ViT-B/16, ViT-L/16, tiny (the test net), a hub id, or a checkpoint folder",
        },
    )
    runtime: str | None = field(
        default=None,
        metadata={"flag": "--runtime", "help": "torch or onnx (default: the model's own: onnx for an export folder, else torch)"},
    )
    pretrained: bool = field(
        default=True, metadata={"flag": "--random-weights", "help": "the architecture with random weights (no download; random words)"}
    )
    weights_seed: int = field(default=0, metadata={})
    dtype: str | None = field(default=None, metadata={"flag": "--dtype", "help": "the dtype to compute in"})
    device: str | None = field(
        default=None, metadata={"flag": "--device", "help": "cpu, cuda, cuda:N or mps (default: cuda when present, else cpu)"}
    )
    compile: bool = field(
        default=False,
        metadata={
            "flag": "--compile",
            "help": "compile the image encoder (torch.compile, inductor, freezing; ViT-B/16: 13-18 s the first time, 4-5 s once cached): faster on some CPUs, not all (see the Performance guide); the same captions",
        },
    )
    threads: int | None = field(default=None, metadata={"flag": "--threads", "help": "threads the model computes on (default: every core)"})

    def __post_init__(self):
        if not isinstance(self.model, str | os.PathLike):
            raise InvalidArgumentError(
                f"model must be an architecture name ({', '.join(_ARCHITECTURES)}), a hub id, a checkpoint folder or an export folder; "
                f"got {type(self.model).__name__}"
            )
        object.__setattr__(self, "model", os.fspath(self.model))
        if not self.model.strip():
            raise UnknownModelError(
                f"a model is needed: an architecture name ({', '.join(_ARCHITECTURES)}), a hub id, a checkpoint folder or an export folder"
            )
        if self.runtime is not None and self.runtime not in RUNTIMES:
            raise option_error(f"runtime must be one of {', '.join(RUNTIMES)}, got {self.runtime!r}", "runtime")
        if self.dtype is not None and not isinstance(self.dtype, str):
            object.__setattr__(self, "dtype", str(self.dtype).removeprefix("torch."))  # a torch.dtype
        if isinstance(self.weights_seed, bool) or not isinstance(self.weights_seed, int) or self.weights_seed < 0:
            raise option_error(f"weights_seed must be an integer >= 0, got {self.weights_seed!r}", "weights_seed")
        if self.threads is not None:
            check_positive_int("threads", self.threads)

    def as_dict(self) -> dict:
        """The options as plain values (what a Ray actor is sent)."""
        return asdict(self)

    def given(self) -> set[str]:
        """The options set to other than their defaults (``model`` and ``runtime`` aside)."""
        return {f.name for f in fields(self) if f.name not in ("model", "runtime") and getattr(self, f.name) != f.default}


@dataclass(frozen=True)
class ModelDescription:
    """What a model does with its inputs, known without loading its weights.

    Attributes:
        preprocessor: How it preprocesses images.
        prompt: Its own prompt (a fine-tuned checkpoint's), None for the page's defaults.
    """

    preprocessor: Preprocessor
    prompt: str | None


@dataclass(frozen=True)
class Runtime:
    """One runtime bliptk loads models into.

    Attributes:
        name: Its name, which records carry (``"torch"`` is left out of them, as before runtimes
            were recorded).
        module: The module whose ``load_model(options: LoadOptions)`` loads a model into it,
            imported when a model is loaded.
        dtypes: The dtypes it computes in, its default first.
        options: The [`LoadOptions`][bliptk.captioning.runtimes.LoadOptions] fields it takes besides
            ``model``, ``runtime`` and ``dtype``.
        recognises: ``"module:function"`` of a test that a model is this runtime's own (an export
            folder), or None: the runtime is chosen for a model only when named (or as the
            default, ``"torch"``).
        why_not: What to say of an option it does not take.
        models: What else ``--model`` names for it (``", or an ONNX export folder"``), for help.
        dtype_help: What its dtypes are for, for help.
        kind: What a model of it is, in messages (``"an ONNX export"``); "" for ``"a NAME model"``.
    """

    name: str
    module: str
    dtypes: tuple[str, ...]
    options: frozenset[str]
    recognises: str | None = None
    why_not: str = ""
    models: str = ""
    dtype_help: str = ""
    kind: str = ""

    def described(self) -> str:
        """What a model of this runtime is, in words."""
        return self.kind or f"a {self.name} model"

    def claims(self, model: str) -> bool:
        """Whether ``model`` is this runtime's own."""
        if self.recognises is None:
            return False
        module, _, function = self.recognises.partition(":")
        test: Callable[[str], bool] = getattr(importlib.import_module(module), function)
        return test(model)

    def check(self, options: LoadOptions) -> None:
        """Refuse options this runtime does not take, and a dtype it does not compute in.

        Raises:
            InvalidOptionError: Naming them, in the caller's spelling (flags on the command line).
        """
        ignored = sorted(options.given() - self.options - {"dtype"})
        if ignored:
            flags = {name: _flag(name) for name in ignored}
            shown = ", ".join(("pretrained=False" if name == "pretrained" else name) for name in ignored)
            raise InvalidOptionError(
                f"{options.model} runs in {self.name}, {self.why_not}: drop {shown}",
                command_line={**{"pretrained=False": "--random-weights"}, **flags},
            )
        if options.dtype is not None and options.dtype not in self.dtypes:
            raise option_error(f"dtype of the {self.name} runtime must be one of {', '.join(self.dtypes)}, got {options.dtype!r}", "dtype")


def _flag(name: str) -> str:
    return next(f.metadata.get("flag", "--" + name.replace("_", "-")) for f in fields(LoadOptions) if f.name == name)


RUNTIMES: dict[str, Runtime] = {}
"""The registered runtimes, by name; the first is the default."""


def register_runtime(runtime: Runtime) -> None:
    """Make a runtime loadable by ``bliptk.load``, the command line and the Ray jobs."""
    RUNTIMES[runtime.name] = runtime


register_runtime(
    Runtime(
        "torch",
        "bliptk.model.runtime",
        dtypes=("float32", "bfloat16", "float16", "int8"),
        options=frozenset({"pretrained", "weights_seed", "device", "compile", "threads"}),
        why_not="which has no such option",
        dtype_help="float32 (default; the exact path), bfloat16 (faster on recent CPUs and GPUs), float16 (GPUs; float32 on a CPU), "
        "or int8 (CPU: bfloat16 with int8 decoder weights, the fastest at batch 1)",
    )
)
register_runtime(
    Runtime(
        "onnx",
        "bliptk.exported.runtime",
        dtypes=("float32", "int8"),
        options=frozenset({"threads"}),
        recognises="bliptk.exported.runtime:is_export",
        why_not="which has its own weights and runs on the CPU (an export captions only)",
        models=", or an ONNX export folder (bliptk export)",
        kind="an ONNX export",
        dtype_help="with an ONNX export: float32 (default) or int8, its quantized graphs, whose activations are quantized per batch, "
        "so that a caption can change with what else is in the batch",
    )
)

DTYPES: tuple[str, ...] = tuple(dict.fromkeys(dtype for runtime in RUNTIMES.values() for dtype in runtime.dtypes))
"""Every dtype some runtime computes in (the command line's ``--dtype`` choices)."""


def runtime_of(options: LoadOptions) -> Runtime:
    """The runtime that loads ``options``: the one named, else the one whose own the model is,
    else the default (``"torch"``)."""
    if options.runtime is not None:
        return RUNTIMES[options.runtime]
    default = next(iter(RUNTIMES.values()))
    return next((runtime for runtime in RUNTIMES.values() if runtime is not default and runtime.claims(options.model)), default)


def load(model: str | os.PathLike | LoadOptions = DEFAULT_MODEL, **options) -> CaptionBackend:
    """Load a BLIP captioning model into its runtime: a checkpoint into torch, an ONNX export
    folder into ONNX Runtime, or any model into the runtime named.

    Args:
        model: ``"ViT-L/16"`` (default) or ``"ViT-B/16"``; a hub id; a checkpoint folder in
            Hugging Face layout; an ONNX export folder; ``"tiny"``, a small random test net. Or a
            [`LoadOptions`][bliptk.captioning.runtimes.LoadOptions].
        **options: Fields of [`LoadOptions`][bliptk.captioning.runtimes.LoadOptions]: ``runtime``,
            ``pretrained`` (False: random weights), ``weights_seed``, ``dtype`` (torch:
            ``"float32"``, ``"bfloat16"``, ``"float16"`` on GPUs, ``"int8"``: bfloat16 with int8
            decoder weights for one image at a time; onnx: ``"float32"``, ``"int8"``), ``device``,
            ``compile``, ``threads``.

    Returns:
        The runtime's captioner: torch's [`Captioner`][bliptk.model.captioner.Captioner] or ONNX
        Runtime's [`OnnxCaptioner`][bliptk.exported.runtime.OnnxCaptioner], with the same verbs.

    Raises:
        UnknownModelError: A model name that is no architecture, folder or hub id.
        CheckpointNotFoundError: Weights neither in a folder, the cache, nor downloadable.
        CheckpointError: A broken checkpoint or export.
        DeviceError: A device that does not exist on this machine.
        InvalidOptionError: An option the runtime does not take, or a dtype it does not compute in.
        MissingDependencyError: The runtime's packages are not installed (torch, onnxruntime).
    """
    asked = _options(model, options)
    module = _runtime_module(asked)
    return module.load_model(asked)


def _options(model, options: dict) -> LoadOptions:
    if isinstance(model, LoadOptions):
        if options:
            raise option_error(f"give LoadOptions or keywords, not both (got {', '.join(sorted(options))})", next(iter(sorted(options))))
        return model
    unknown = sorted(set(options) - {f.name for f in fields(LoadOptions)})
    if unknown:
        raise option_error(f"unknown option {unknown[0]!r}; load takes {', '.join(f.name for f in fields(LoadOptions))}", unknown[0])
    return LoadOptions(model=model, **options)


def _runtime_module(options: LoadOptions):
    runtime = runtime_of(options)
    runtime.check(options)
    try:
        return importlib.import_module(runtime.module)
    except ModuleNotFoundError as error:
        raise missing_dependency(error) or error from None


def describe(model: str | os.PathLike | LoadOptions, **options) -> ModelDescription:
    """How a model preprocesses images and which prompt it captions after, without loading its
    weights (as [`load()`][bliptk.captioning.runtimes.load] takes it)."""
    asked = _options(model, options)
    return _runtime_module(asked).describe_model(asked)
