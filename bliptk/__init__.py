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

The names below are imported when first used, so ``import bliptk`` is fast and pulls in neither
torch nor the optional extras until a feature needs them.
"""

from __future__ import annotations

import importlib
import importlib.util

from . import errors as _errors  # light: the exceptions only

__version__ = "0.2.0"

# Public name -> the module that defines it.
_EXPORTS = {
    "attention": ("attention_entropy", "attention_maps", "overlay_attention", "plot_attention_map", "plot_attention_maps", "plot_attention_overlays"),
    "captioner": ("Captioner",),
    "decoding": ("Caption", "DecodingOptions", "DEFAULT_PROMPT", "DEFAULT_VIDEO_PROMPT"),
    "errors": tuple(_errors.__all__),
    "evaluation": ("evaluate", "EvaluationResult"),
    "feature_space": ("cluster", "ClusterResult", "near_duplicates", "nearest", "Neighbour", "plot_feature_space", "project"),
    "files": ("example_path", "image_files"),
    "image_encoder": ("ImageEncoder",),
    "info": ("net_information", "NetInformation"),
    "loading": ("load",),
    "models": ("available_models", "ModelSpec"),
    "preprocess": ("load_image", "Preprocessor"),
    "provenance": ("Weights",),
    "stepper": ("DecodeStep", "Stepper", "token_alternatives", "TokenChoice"),
    "text_decoder": ("DecoderState", "TextDecoder"),
    "tokenizer": ("load_tokenizer", "Tokenizer"),
    "video": ("caption_timeline", "is_video", "plot_video_frames", "TimelineSegment", "video_frames", "video_info", "VideoFrames", "VideoInfo"),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = sorted(_MODULE_OF, key=str.lower)


def __getattr__(name: str):
    if name in _MODULE_OF:
        value = getattr(_import(_MODULE_OF[name]), name)
        globals()[name] = value  # later lookups are plain attribute reads
        return value
    if not name.startswith("_") and importlib.util.find_spec(f"{__name__}.{name}") is not None:
        return _import(name)  # a module: bliptk.decoding, bliptk.models...
    raise AttributeError(f"module 'bliptk' has no attribute {name!r}")


def _import(module: str):
    """A module of bliptk's; a package it needs and that is missing (torch, in a torch-free
    install) is a :class:`MissingDependencyError` that says what to install."""
    try:
        return importlib.import_module(f".{module}", __name__)
    except ModuleNotFoundError as error:
        missing = _errors.missing_dependency(error)
        if missing is None:
            raise
        raise missing from None


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
