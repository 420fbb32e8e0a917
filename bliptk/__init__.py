"""bliptk: BLIP image and video captioning for research notebooks.

Quickstart:
    >>> import bliptk
    >>> captioner = bliptk.load("ViT-L/16")
    >>> captioner.caption("photo.jpg").text
"""

from .attention import (
    attention_maps,
    overlay_attention,
    plot_attention_map,
    plot_attention_maps,
    plot_attention_overlays,
)
from .captioner import DEFAULT_VIDEO_PROMPT, Captioner
from .decoding import DEFAULT_PROMPT, Caption, DecodingOptions
from .errors import (
    BliptkError,
    CheckpointError,
    CheckpointNotFoundError,
    DeviceError,
    ExampleNotFoundError,
    ImageLoadError,
    InvalidOptionError,
    NoInputsError,
    OutputExistsError,
    RandomWeightsWarning,
    UnknownModelError,
    VideoLoadError,
)
from .evaluation import EvaluationError, EvaluationResult, evaluate
from .feature_space import ClusterResult, Neighbour, cluster, near_duplicates, nearest, plot_feature_space, project
from .files import example_path, image_files
from .image_encoder import ImageEncoder
from .info import NetInformation, net_information
from .loading import load
from .models import ModelSpec, available_models
from .preprocess import Preprocessor, load_image
from .provenance import Weights
from .stepper import DecodeStep, Stepper, TokenChoice, token_alternatives
from .text_decoder import DecoderState, TextDecoder
from .tokenizer import Tokenizer, load_tokenizer
from .video import (
    TimelineSegment,
    VideoFrames,
    VideoInfo,
    caption_timeline,
    is_video,
    plot_video_frames,
    video_frames,
    video_info,
)

__version__ = "0.1.0"

__all__ = [
    "attention_maps",
    "available_models",
    "BliptkError",
    "Caption",
    "caption_timeline",
    "Captioner",
    "CheckpointError",
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
    "example_path",
    "ExampleNotFoundError",
    "EvaluationError",
    "EvaluationResult",
    "image_files",
    "ImageEncoder",
    "ImageLoadError",
    "InvalidOptionError",
    "is_video",
    "load",
    "load_image",
    "load_tokenizer",
    "ModelSpec",
    "near_duplicates",
    "nearest",
    "NoInputsError",
    "Neighbour",
    "net_information",
    "NetInformation",
    "OutputExistsError",
    "overlay_attention",
    "plot_attention_map",
    "plot_attention_maps",
    "plot_attention_overlays",
    "plot_feature_space",
    "plot_video_frames",
    "Preprocessor",
    "project",
    "RandomWeightsWarning",
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
    "Weights",
]
