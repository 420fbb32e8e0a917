"""The model a notebook runs on, chosen in one place: ``BLIPTK_MODEL``, else the notebook's own
default; where that checkpoint's weights are not at hand (offline, not yet in the Hugging Face
cache), the same architecture with random weights, said in one line, so that a notebook runs from
its first cell to its last instead of stopping at a traceback in its setup cell.

In an IPython kernel it also shows bliptk's own errors (a caller's mistake, a missing file or
extra: [`BliptkError`][bliptk.core.errors.BliptkError]) as the one line that names the fix, not as a
colourised traceback; ``%tb`` shows where one came from."""

from __future__ import annotations

import os

from ..captioning.runtimes import load
from ..core import pipeline
from ..core.errors import BliptkError, CheckpointNotFoundError
from ..core.notices import say

__all__ = ["MODEL_VARIABLE", "notebook_model", "show_errors_in_one_line"]

MODEL_VARIABLE = "BLIPTK_MODEL"
"""The environment variable that chooses every notebook's model (``tiny``: the fast test net)."""


def notebook_model(default: str):
    """The captioner a notebook runs on.

    Args:
        default: The notebook's own model (``"ViT-L/16"``, ``"ViT-B/16"``), used when
            ``BLIPTK_MODEL`` is not set.

    Returns:
        ``bliptk.load(BLIPTK_MODEL or default)``; when its pretrained weights can be neither found
        nor downloaded, the architecture with random weights, after one line that says so and how
        to get the real ones (their captions are random words).

    Raises:
        UnknownModelError, CheckpointError: A model that is no model, or a checkpoint folder that is
            broken (a mistake to fix, not weights to fetch).
    """
    try:
        return _captioner(os.environ.get(MODEL_VARIABLE) or default)
    finally:
        # After loading: a library imported on the way (trio, through the Hub's HTTP client) warns
        # when it finds a handler already installed, and keeps its own when it comes first.
        show_errors_in_one_line()


def _captioner(name: str):
    try:
        return load(name)
    except CheckpointNotFoundError as missing:
        if not missing.fixable:
            raise
    captioner = load(name, pretrained=False)
    pipeline.mark_said_random(captioner)  # this line says it; the captioner's own notice would repeat it
    say(
        f"{name}: its pretrained weights are not at hand (offline, or not yet downloaded), so this notebook runs on "
        f"random weights: captions are random words. Connect once to download them, or set {MODEL_VARIABLE}=tiny "
        "for the fast test net."
    )
    return captioner


def show_errors_in_one_line() -> bool:
    """In an IPython kernel, show a [`BliptkError`][bliptk.core.errors.BliptkError] as one line.

    Its message names the input and the fix; the traceback through bliptk's modules above it is
    noise to a notebook's reader. Every other exception keeps IPython's traceback, and ``%tb``
    still shows a BliptkError's.

    Returns:
        Whether an IPython shell was found (outside one, nothing changes).
    """
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    if shell is None:
        return False
    if BliptkError in shell.custom_exceptions:
        return True  # installed already
    earlier, earlier_handler = tuple(shell.custom_exceptions), shell.CustomTB

    def handler(shell, kind, error, traceback, tb_offset=None):
        if issubclass(kind, BliptkError):
            return _one_line(shell, kind, error, traceback)
        return earlier_handler(kind, error, traceback, tb_offset=tb_offset)  # another library's, kept

    shell.set_custom_exc(earlier + (BliptkError,), handler)
    return True


def _one_line(shell, kind, error, traceback):
    # Kept as the last error (sys.last_*), which %tb shows: IPython keeps it only for errors it shows itself.
    shell._get_exc_info((kind, error, traceback))
    # IPython's own way to show an error (sent to the frontend as the cell's error output, and
    # kept as the last traceback, which nbclient reports when a cell fails), with one line.
    line = f"{kind.__name__}: {error}  (%tb shows where)"
    shell._showtraceback(kind, error, [line])
    return [line]
