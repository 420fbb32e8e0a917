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
    CheckpointNotFoundError,
    DeviceError,
    ImageLoadError,
    InvalidOptionError,
    UnknownModelError,
    VideoLoadError,
)
from .image_encoder import ImageEncoder
from .info import NetInformation, net_information
from .loading import load
from .models import ModelSpec, available_models
from .preprocess import Preprocessor, load_image
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
    "BliptkError",
    "Caption",
    "Captioner",
    "CheckpointNotFoundError",
    "DEFAULT_PROMPT",
    "DEFAULT_VIDEO_PROMPT",
    "DecoderState",
    "DecodingOptions",
    "DeviceError",
    "ImageEncoder",
    "ImageLoadError",
    "InvalidOptionError",
    "ModelSpec",
    "NetInformation",
    "Preprocessor",
    "TextDecoder",
    "Tokenizer",
    "TimelineSegment",
    "UnknownModelError",
    "VideoFrames",
    "VideoInfo",
    "VideoLoadError",
    "attention_maps",
    "available_models",
    "caption_timeline",
    "is_video",
    "load",
    "load_image",
    "load_tokenizer",
    "net_information",
    "overlay_attention",
    "plot_attention_map",
    "plot_attention_maps",
    "plot_attention_overlays",
    "plot_video_frames",
    "video_frames",
    "video_info",
]
