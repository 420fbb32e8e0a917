"""The errors bliptk raises: one contract.

Every mistake a caller can make (a bad option or argument, an unreadable input, a missing
checkpoint or extra) raises a subclass of :class:`BliptkError`, so one ``except BliptkError``
catches them all and the ``bliptk`` command maps them all to exit code 2. Each also derives from
the built-in error it refines (``ValueError``, ``TypeError``, ``FileNotFoundError``, ...), so
that generic handlers keep working.
"""

from __future__ import annotations

__all__ = [
    "BliptkError",
    "CheckpointError",
    "CheckpointNotFoundError",
    "DeviceError",
    "ExampleNotFoundError",
    "ImageLoadError",
    "InputError",
    "InvalidArgumentError",
    "InvalidOptionError",
    "MissingDependencyError",
    "NoInputsError",
    "OutputExistsError",
    "RandomWeightsWarning",
    "UnknownModelError",
    "VideoLoadError",
]


class BliptkError(Exception):
    """Base class of every error raised by bliptk."""

    def command_line_message(self) -> str:
        """The message as the ``bliptk`` command shows it: where the fix is an option, the
        command's flag is named instead of the Python argument."""
        return str(self)


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


class OutputExistsError(InvalidOptionError):
    """An output file exists and would be overwritten; resume it or choose another file."""

    def __init__(self, path):
        self.path = path
        super().__init__(f"{path} exists; pass resume=True to continue it, or choose another file")

    def command_line_message(self) -> str:
        return f"{self.path} exists; pass --resume to continue it, or choose another file"


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
        super().__init__(self._message("recursive=True"))

    def _message(self, recursive: str) -> str:
        message = "no files to caption: " + "; ".join(self.searched)
        if self.in_subfolders:
            message += f". Subfolders hold {self.in_subfolders} image files: pass {recursive} to caption them"
        return message

    def command_line_message(self) -> str:
        return self._message("--recursive")


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

    def __init__(self, source: object, reason: str):
        self.source = source
        self.reason = reason
        super().__init__(f"{source}: {reason}")


class ImageLoadError(InputError):
    """An input could not be read as an image."""


class VideoLoadError(InputError):
    """An input could not be read as a video."""


class RandomWeightsWarning(UserWarning):
    """A captioner with random weights is captioning or embedding: the results carry no meaning."""


def check_positive_int(name: str, value) -> None:
    """Raise :class:`InvalidOptionError` unless ``value`` is an integer >= 1."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidOptionError(f"{name} must be an integer >= 1, got {value!r}")
