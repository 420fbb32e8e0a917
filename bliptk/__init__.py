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
from typing import TYPE_CHECKING

from . import errors as _errors  # light: the exceptions only

__version__ = "0.2.0"

if TYPE_CHECKING:  # what IDEs, mypy and ruff read; at run time each name is imported when first used
    from .attention import (
        attention_entropy,
        attention_maps,
        overlay_attention,
        plot_attention_map,
        plot_attention_maps,
        plot_attention_overlays,
    )
    from .batch import BatchStatus, caption_files
    from .captioner import Captioner
    from .decoding import DEFAULT_PROMPT, Caption, DecodingOptions
    from .errors import (
        BliptkError,
        CheckpointError,
        CheckpointNotFoundError,
        CheckpointWarning,
        CompileWarning,
        DataWarning,
        DeviceError,
        EvaluationError,
        ExampleNotFoundError,
        ExportChangedWarning,
        ExportError,
        ImageLoadError,
        InputError,
        InvalidArgumentError,
        InvalidOptionError,
        MissingDependencyError,
        NoInputsError,
        OutputError,
        OutputExistsError,
        OutputLockedError,
        PromptWarning,
        RandomWeightsWarning,
        UnknownModelError,
        VideoLoadError,
    )
    from .evaluation import EvaluationResult, evaluate
    from .explanation_methods import EXPLANATION_METHODS
    from .explanations import Explanation, explain
    from .feature_space import ClusterResult, Neighbour, cluster, near_duplicates, nearest, plot_feature_space, project
    from .files import example_path, image_files, media_files
    from .finetuning import FinetuneOptions, FinetuneResult, LoraOptions, finetune
    from .image_encoder import ImageEncoder
    from .info import NetInformation, net_information
    from .loading import load
    from .models import ModelSpec, available_models
    from .perturbation import Faithfulness, faithfulness, plot_faithfulness
    from .pipeline import CaptionBackend, TimelineSegment, caption_timeline
    from .preprocess import Preprocessor, load_image
    from .provenance import Weights
    from .records import read_records
    from .stepper import DecodeStep, Stepper, TokenChoice, token_alternatives
    from .text_decoder import DecoderState, TextDecoder
    from .tokenizer import Tokenizer, load_tokenizer
    from .training_data import read_pairs
    from .video import DEFAULT_VIDEO_PROMPT, VideoFrames, VideoInfo, VideoOptions, is_video, plot_video_frames, video_frames, video_info

__all__ = [
    "attention_entropy",
    "attention_maps",
    "available_models",
    "BatchStatus",
    "BliptkError",
    "Caption",
    "caption_files",
    "caption_timeline",
    "CaptionBackend",
    "Captioner",
    "CheckpointError",
    "CheckpointWarning",
    "CompileWarning",
    "DataWarning",
    "CheckpointNotFoundError",
    "cluster",
    "ClusterResult",
    "DecoderState",
    "DecodeStep",
    "DecodingOptions",
    "DEFAULT_PROMPT",
    "DEFAULT_VIDEO_PROMPT",
    "DeviceError",
    "evaluate",
    "EvaluationError",
    "EvaluationResult",
    "example_path",
    "ExampleNotFoundError",
    "explain",
    "Explanation",
    "EXPLANATION_METHODS",
    "ExportChangedWarning",
    "ExportError",
    "Faithfulness",
    "faithfulness",
    "finetune",
    "FinetuneOptions",
    "FinetuneResult",
    "image_files",
    "ImageEncoder",
    "ImageLoadError",
    "InputError",
    "InvalidArgumentError",
    "InvalidOptionError",
    "is_video",
    "load",
    "LoraOptions",
    "load_image",
    "load_tokenizer",
    "media_files",
    "MissingDependencyError",
    "ModelSpec",
    "near_duplicates",
    "nearest",
    "Neighbour",
    "net_information",
    "NetInformation",
    "NoInputsError",
    "OutputError",
    "OutputExistsError",
    "OutputLockedError",
    "overlay_attention",
    "plot_attention_map",
    "plot_attention_maps",
    "plot_attention_overlays",
    "plot_faithfulness",
    "plot_feature_space",
    "plot_video_frames",
    "Preprocessor",
    "project",
    "PromptWarning",
    "RandomWeightsWarning",
    "read_pairs",
    "read_records",
    "Stepper",
    "TextDecoder",
    "TimelineSegment",
    "token_alternatives",
    "TokenChoice",
    "Tokenizer",
    "UnknownModelError",
    "video_frames",
    "video_info",
    "VideoFrames",
    "VideoInfo",
    "VideoLoadError",
    "VideoOptions",
    "Weights",
]

# Public name -> the module that defines it.
_MODULE_OF = {
    "attention_entropy": "attention",
    "attention_maps": "attention",
    "overlay_attention": "attention",
    "plot_attention_map": "attention",
    "plot_attention_maps": "attention",
    "plot_attention_overlays": "attention",
    "BatchStatus": "batch",
    "caption_files": "batch",
    "Captioner": "captioner",
    "Caption": "decoding",
    "DecodingOptions": "decoding",
    "DEFAULT_PROMPT": "decoding",
    "BliptkError": "errors",
    "CheckpointError": "errors",
    "CheckpointNotFoundError": "errors",
    "DeviceError": "errors",
    "EvaluationError": "errors",
    "ExampleNotFoundError": "errors",
    "ExportChangedWarning": "errors",
    "ExportError": "errors",
    "ImageLoadError": "errors",
    "InputError": "errors",
    "InvalidArgumentError": "errors",
    "InvalidOptionError": "errors",
    "MissingDependencyError": "errors",
    "NoInputsError": "errors",
    "OutputError": "errors",
    "OutputExistsError": "errors",
    "OutputLockedError": "errors",
    "PromptWarning": "errors",
    "RandomWeightsWarning": "errors",
    "UnknownModelError": "errors",
    "VideoLoadError": "errors",
    "evaluate": "evaluation",
    "EvaluationResult": "evaluation",
    "explain": "explanations",
    "Explanation": "explanations",
    "EXPLANATION_METHODS": "explanation_methods",
    "finetune": "finetuning",
    "FinetuneOptions": "finetuning",
    "FinetuneResult": "finetuning",
    "LoraOptions": "finetuning",
    "read_pairs": "training_data",
    "CheckpointWarning": "errors",
    "CompileWarning": "errors",
    "DataWarning": "errors",
    "cluster": "feature_space",
    "ClusterResult": "feature_space",
    "near_duplicates": "feature_space",
    "nearest": "feature_space",
    "Neighbour": "feature_space",
    "plot_feature_space": "feature_space",
    "project": "feature_space",
    "example_path": "files",
    "image_files": "files",
    "media_files": "files",
    "ImageEncoder": "image_encoder",
    "net_information": "info",
    "NetInformation": "info",
    "load": "loading",
    "available_models": "models",
    "ModelSpec": "models",
    "Faithfulness": "perturbation",
    "faithfulness": "perturbation",
    "plot_faithfulness": "perturbation",
    "CaptionBackend": "pipeline",
    "caption_timeline": "pipeline",
    "TimelineSegment": "pipeline",
    "load_image": "preprocess",
    "Preprocessor": "preprocess",
    "Weights": "provenance",
    "read_records": "records",
    "DecodeStep": "stepper",
    "Stepper": "stepper",
    "token_alternatives": "stepper",
    "TokenChoice": "stepper",
    "DecoderState": "text_decoder",
    "TextDecoder": "text_decoder",
    "load_tokenizer": "tokenizer",
    "Tokenizer": "tokenizer",
    "DEFAULT_VIDEO_PROMPT": "video",
    "is_video": "video",
    "plot_video_frames": "video",
    "video_frames": "video",
    "video_info": "video",
    "VideoFrames": "video",
    "VideoInfo": "video",
    "VideoOptions": "video",
}


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
    install) is a [`MissingDependencyError`][bliptk.errors.MissingDependencyError] that says what to install."""
    try:
        return importlib.import_module(f".{module}", __name__)
    except ModuleNotFoundError as error:
        missing = _errors.missing_dependency(error)
        if missing is None:
            raise
        raise missing from None


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
