"""The errors bliptk raises.

Every error a user can meet derives from :class:`BliptkError`, so one ``except BliptkError``
catches them all, and each also derives from the built-in error it refines (``ValueError``,
``FileNotFoundError``, ...) so that generic handlers keep working.
"""

from __future__ import annotations

__all__ = [
    "BliptkError",
    "CheckpointError",
    "CheckpointNotFoundError",
    "DeviceError",
    "ImageLoadError",
    "InputError",
    "InvalidOptionError",
    "UnknownModelError",
    "VideoLoadError",
]


class BliptkError(Exception):
    """Base class of every error raised by bliptk."""


class InvalidOptionError(BliptkError, ValueError):
    """An option (decoding setting, dtype, ...) has a value bliptk cannot use."""


class UnknownModelError(BliptkError, LookupError):
    """A model name is neither a known architecture, a local checkpoint folder, nor a hub id."""


class CheckpointError(BliptkError, OSError):
    """A checkpoint cannot be used (for example, its weights file holds more than tensors)."""


class CheckpointNotFoundError(CheckpointError):
    """The weights of a checkpoint could not be found locally nor downloaded."""


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


def check_positive_int(name: str, value) -> None:
    """Raise :class:`InvalidOptionError` unless ``value`` is an integer >= 1."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidOptionError(f"{name} must be an integer >= 1, got {value!r}")
