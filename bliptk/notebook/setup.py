"""The model a notebook runs on, chosen in one place: ``BLIPTK_MODEL``, else the notebook's own
default; where that checkpoint's weights are not at hand (offline, not yet in the Hugging Face
cache), the same architecture with random weights, said in one line, so that a notebook runs from
its first cell to its last instead of stopping at a traceback in its setup cell."""

from __future__ import annotations

import os

from ..captioning.runtimes import load
from ..core import pipeline
from ..core.errors import CheckpointNotFoundError
from ..core.notices import say

__all__ = ["MODEL_VARIABLE", "notebook_model"]

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
    name = os.environ.get(MODEL_VARIABLE) or default
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
