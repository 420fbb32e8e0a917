"""bliptk: BLIP image and video captioning for research notebooks.

bliptk brings to Python the documentation page of the BLIP captioning nets in the Wolfram Neural
Net Repository, *BLIP Image Captioning Nets Trained on MS-COCO Data*
(https://resources.wolframcloud.com/NeuralNetRepository/resources/BLIP-Image-Captioning-Nets-Trained-on-MS-COCO-Data).
Wherever bliptk's documentation says "the page", it means that page: its examples (resource
retrieval, parameters, parts, evaluation function, basic usage, cross-attention, video, feature
space, net information) are mirrored in ``notebooks/``, and its names (``MaxIterations``,
``TopProbabilities``, ``NestWhile``...) are cited where bliptk does the same thing.

Quickstart:
    >>> import bliptk
    >>> captioner = bliptk.load("ViT-L/16")
    >>> captioner.caption("photo.jpg").text

The public names are written once, in ``__init__.pyi``; each is imported from its module when
first used, so ``import bliptk`` is fast and pulls in neither torch nor the optional extras until a
feature needs them. The package is laid out by what each part may import (see the development
guide): a torch-free ``core`` and ``store``, ``captioning`` and ``analysis`` over them, one package
per runtime (``model``: torch, ``exported``: ONNX Runtime), then ``attribution``, ``training``,
``notebook`` and ``cli``.
"""

from __future__ import annotations

import lazy_loader as _lazy

from . import _moved
from .core.optional import missing_dependency as _missing_dependency

_lazy_getattr, __dir__, __all__ = _lazy.attach_stub(__name__, __file__)
_moved.install()  # the module paths of bliptk 0.2 keep working for one release, with a DeprecationWarning


def __getattr__(name: str):
    """A public name, imported from its module on first use; a name that left the package's top
    level in 0.3, with a ``DeprecationWarning``; a package a feature needs and that is missing
    (torch, in a torch-free install), as the
    [`MissingDependencyError`][bliptk.core.errors.MissingDependencyError] that says what to install."""
    moved = _moved.top_level(name)
    if moved is not None:
        return moved
    try:
        return _lazy_getattr(name)
    except ModuleNotFoundError as error:
        missing = _missing_dependency(error)
        if missing is None:
            raise
        raise missing from None
