"""The errors bliptk raises: one contract.

Every mistake a caller can make (a bad option or argument, an unreadable input, a missing
checkpoint or extra) raises a subclass of [`BliptkError`][bliptk.core.errors.BliptkError], so one ``except BliptkError``
catches them all and the ``bliptk`` command maps them all to exit code 2. Each also derives from
the built-in error it refines (``ValueError``, ``TypeError``, ``FileNotFoundError``, ...), so
that generic handlers keep working.
"""

from __future__ import annotations

import re

__all__ = [
    "BliptkError",
    "CheckpointError",
    "CheckpointNotFoundError",
    "CheckpointWarning",
    "CompileWarning",
    "DataWarning",
    "DeviceError",
    "EvaluationError",
    "ExampleNotFoundError",
    "ExportChangedWarning",
    "ExportError",
    "ImageLoadError",
    "InputError",
    "InvalidArgumentError",
    "InvalidOptionError",
    "MissingDependencyError",
    "NoInputsError",
    "OutputError",
    "OutputExistsError",
    "OutputLockedError",
    "PromptWarning",
    "RandomWeightsWarning",
    "UnknownModelError",
    "VideoLoadError",
]


class BliptkError(Exception):
    """Base class of every error raised by bliptk.

    Args:
        *args: The message: what is wrong and how to fix it, in Python's terms.
        command_line: Replacements that turn the message into the command line's terms, for a
            fix that is an option: ``{"method='pca'": "--method pca"}``.
    """

    def __init__(self, *args, command_line: dict[str, str] | None = None):
        super().__init__(*args)
        self._command_line = command_line or {}

    def command_line_message(self) -> str:
        """The message as the ``bliptk`` command shows it: where the fix is an option, the
        command's flag is named instead of the Python argument."""
        message = str(self)
        for python, flag in self._command_line.items():  # whole words only: top_k is not inside top_k_x
            message = re.sub(rf"(?<![\w-]){re.escape(python)}(?![\w])", flag.replace("\\", r"\\"), message)
        return message


class InvalidOptionError(BliptkError, ValueError):
    """An option (decoding setting, dtype, ...) has a value bliptk cannot use."""


class InvalidArgumentError(BliptkError, TypeError):
    """An argument is of a kind bliptk cannot use (a number where a net is expected, ...)."""


class MissingDependencyError(BliptkError, ImportError):
    """An optional extra that a feature needs is not installed; the message names the extra."""


class UnknownModelError(BliptkError, LookupError):
    """A model name is neither a known architecture, a local checkpoint folder, nor a hub id."""


class CheckpointError(BliptkError, OSError):
    """A checkpoint cannot be used (for example, its weights file holds more than tensors)."""


class CheckpointNotFoundError(CheckpointError):
    """The weights of a checkpoint could not be found locally nor downloaded.

    Attributes:
        reason: What was tried and why it failed.
    """

    _FIXES = (
        "Fixes: connect to the internet once so that the weights reach the Hugging Face cache; or pass the path "
        "of a local checkpoint folder (save_pretrained layout) as model; or, for the architecture with random "
        "weights, load(..., pretrained=False)."
    )
    _COMMAND_LINE_FIXES = (
        "Fixes: connect to the internet once so that the weights reach the Hugging Face cache (with "
        "HF_HUB_OFFLINE=1 bliptk then reads only the cache and never waits on the network); or --model FOLDER, a "
        "local checkpoint folder (save_pretrained layout); or --random-weights for the architecture with random "
        "weights (captions are then random words)."
    )

    def __init__(self, reason: str, fixable: bool = True):
        self.reason = reason
        self.fixable = fixable
        super().__init__(f"{reason} {self._FIXES}" if fixable else reason)

    def command_line_message(self) -> str:
        return f"{self.reason} {self._COMMAND_LINE_FIXES}" if self.fixable else self.reason


class OutputError(BliptkError, OSError):
    """An output cannot be written: its folder is missing or read-only, it names a folder, the
    disk is full. Every record finished before the error is kept."""


class OutputExistsError(OutputError, InvalidOptionError):
    """An output exists and would be overwritten; resume it or choose another. Both an
    [`OutputError`][bliptk.core.errors.OutputError] (about an output) and an
    [`InvalidOptionError`][bliptk.core.errors.InvalidOptionError] (the options chose it)."""

    def __init__(
        self,
        path,
        fix: str = "pass resume=True to continue it",
        command_line_fix: str = "pass --resume to continue it",
        other: str = "choose another file",
    ):
        self.path = path
        super().__init__(f"{path} exists; {fix}, or {other}", command_line={fix: command_line_fix, other: other.replace(" out", " --out")})


class OutputLockedError(OutputError):
    """Another process is writing the same output (one writer per output).

    Attributes:
        path: The output.
        holder: What the lock says of the process that holds it (``pid``, ``host``, ``since``),
            empty when it could not be read.
    """

    def __init__(self, path, holder: dict):
        self.path, self.holder = path, holder
        who = "another process"
        if holder.get("pid"):
            who = f"process {holder['pid']}" + (f" on {holder['host']}" if holder.get("host") else "")
            who += f" (since {holder['since']})" if holder.get("since") else ""
        super().__init__(f"{path} is being written by {who}; wait for it to finish, or choose another output")


class NoInputsError(InvalidOptionError):
    """A batch job found nothing to caption.

    Attributes:
        searched: What was searched, one description per input.
        in_subfolders: How many image or video files subfolders of the searched folders hold
            (0 when ``recursive`` was already on).
    """

    def __init__(self, searched: list[str], in_subfolders: int = 0):
        self.searched = searched
        self.in_subfolders = in_subfolders
        message = "no files to caption: " + "; ".join(searched)
        if in_subfolders:
            message += f". Subfolders hold {in_subfolders} image or video files: pass recursive=True to caption them"
        super().__init__(message, command_line={"recursive=True": "--recursive"})


class EvaluationError(BliptkError, ValueError):
    """Predictions or references cannot be evaluated (malformed, mismatched ids, ...)."""


class ExportError(BliptkError, RuntimeError):
    """An ONNX export does not match torch within its tolerance (the graphs are written, the
    export is refused)."""


class ExampleNotFoundError(BliptkError, FileNotFoundError):
    """An example file of the notebooks is not where bliptk looks for it."""


class DeviceError(BliptkError, RuntimeError):
    """The requested device does not exist on this machine."""


class InputError(BliptkError, ValueError):
    """An input could not be read.

    Attributes:
        source: The offending input (a path, or a description of an in-memory object).
        reason: What is wrong with it.
    """

    def __init__(self, source: object, reason: str, command_line: dict[str, str] | None = None):
        self.source = source
        self.reason = reason
        super().__init__(f"{source}: {reason}", command_line=command_line)


class ImageLoadError(InputError):
    """An input could not be read as an image."""


class VideoLoadError(InputError):
    """An input could not be read as a video."""


class RandomWeightsWarning(UserWarning):
    """A captioner with random weights is captioning or embedding: the results carry no meaning."""


class PromptWarning(UserWarning):
    """A prompt has characters outside BLIP's vocabulary, which the tokenizer turns into ``[UNK]``."""


class DataWarning(UserWarning):
    """Rows of training data left out (a missing image, an empty caption, an image that does not
    decode), counted and named."""


class CheckpointWarning(UserWarning):
    """A fine-tuning checkpoint was torn (a kill or a full disk while it saved): resuming skips it."""


class CompileWarning(UserWarning):
    """``compile=True`` cannot compile here (no C++ compiler, no Triton, an unsupported platform,
    or inductor failed): bliptk runs eager, with the same results."""


class ExportChangedWarning(UserWarning):
    """An ONNX export is loaded without checking its graphs (``verify=False``), or from weights
    that changed since the export."""


def option_error(message: str, *names: str) -> InvalidOptionError:
    """An [`InvalidOptionError`][bliptk.core.errors.InvalidOptionError] about the options ``names``, which the command line names as
    its flags (``max_new_tokens`` as ``--max-new-tokens``)."""
    return InvalidOptionError(message, command_line={name: "--" + name.replace("_", "-") for name in names})


def check_positive_int(name: str, value) -> None:
    """Raise [`InvalidOptionError`][bliptk.core.errors.InvalidOptionError] unless ``value`` is an integer >= 1."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise option_error(f"{name} must be an integer >= 1, got {value!r}", name)


def first_line(error: BaseException) -> str:
    """The first line of an error's message (at most 200 characters), or its type's name: how a
    library's own error is quoted inside bliptk's."""
    text = str(error).strip()
    return text.splitlines()[0][:200] if text else type(error).__name__
