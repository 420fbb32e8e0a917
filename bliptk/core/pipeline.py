"""The captioning pipeline: one implementation of captioning, over any runtime.

bliptk captions with torch ([`Captioner`][bliptk.model.captioner.Captioner]) and with ONNX Runtime
([`OnnxCaptioner`][bliptk.exported.runtime.OnnxCaptioner]). Each is a *caption backend* ([`PipelineBackend`][bliptk.core.pipeline.PipelineBackend]): it
encodes preprocessed pixels into image features, gives the decoding engine its decoder (the image
keys and values, then one step at a time: [`DecoderBackend`][bliptk.core.decoding.DecoderBackend]), and says what
it is (model and weights). Everything else is written once, here, and runs over either:

* which captions a call asks for (one input or a list, one prompt or several, images and videos);
* images encoded and decoded a chunk at a time, so that memory stays bounded for any number;
* a video's frames encoded in batches and pooled ([`encode_video()`][bliptk.core.pipeline.encode_video]);
* the decoding itself ([`bliptk.core.decoding`][bliptk.core.decoding]), and timelines of a video's segments.

Features travel between the parts as float32 NumPy arrays ``(B, N, D)``: the pipeline never imports
torch, and a backend converts at its own edge (which costs a copy of the features, nothing next to
encoding them).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, fields, replace
from typing import Any, Protocol

import numpy as np

from .decoding import DEFAULT_PROMPT, Caption, DecoderBackend, DecodingOptions
from .decoding_strategies import decode
from .errors import InvalidOptionError, RandomWeightsWarning, check_positive_int, option_error
from .notices import in_notebook, warn
from .preprocess import Preprocessor
from .provenance import Weights
from .tokenizer import Tokenizer
from .video import DEFAULT_VIDEO_PROMPT, VideoFrames, VideoOptions, is_video, video_frames, video_info

__all__ = [
    "PipelineBackend",
    "TimelineSegment",
    "caption",
    "caption_features",
    "caption_pixels",
    "caption_timeline",
    "chunk_features",
    "chunks",
    "encode_images",
    "encode_video",
    "features_by_chunk",
    "own_options",
    "provenance",
    "request_prompt",
    "resolve_options",
    "mark_random_origin",
    "mark_said_random",
    "random_origin",
    "say_if_random",
    "say_random_start",
]


class PipelineBackend(Protocol):
    """What the pipeline needs of a runtime's captioner: the members
    [`CaptionBackend`][bliptk.captioning.backend.CaptionBackend] declares, every runtime's base class.

    Attributes:
        runtime: The runtime's name (``"torch"``, ``"onnx"``).
        name: The model it was made from (architecture name, hub id or folder).
        weights: What its weights are ([`Weights`][bliptk.core.provenance.Weights]).
        prompt: The checkpoint's own prompt, used when a call gives none; None for the page's defaults.
        tokenizer: BLIP's tokenizer.
        preprocessor: Images to pixels.
        decoder: The decoding engine's view of its text decoder.
    """

    @property
    def runtime(self) -> str: ...

    @property
    def name(self) -> str: ...

    @property
    def weights(self) -> Weights: ...

    @property
    def prompt(self) -> str | None: ...

    @property
    def tokenizer(self) -> Tokenizer: ...

    @property
    def preprocessor(self) -> Preprocessor: ...

    @property
    def decoder(self) -> DecoderBackend: ...

    def encode(self, pixels: np.ndarray) -> np.ndarray:
        """Image features ``(B, N, D)`` (float32) of preprocessed pixels ``(B, 3, S, S)``."""
        ...


# --- options, identity --------------------------------------------------------------------------------


def resolve_options(
    options: DecodingOptions | None = None, video_options: VideoOptions | None = None, **keywords
) -> tuple[DecodingOptions, VideoOptions]:
    """The decoding and video options of a call: ``options`` and ``video_options`` (or the
    defaults) with the fields named by ``keywords`` replaced, each keyword going to the options it
    belongs to (``max_new_tokens`` to decoding, ``num_frames`` to video).

    Raises:
        InvalidOptionError: An unknown keyword (the message lists the valid ones), or an invalid
            value.
    """
    decoding_names = [f.name for f in fields(DecodingOptions)]
    video_names = [f.name for f in fields(VideoOptions)]
    unknown = sorted(set(keywords) - set(decoding_names) - set(video_names))
    if unknown:
        raise InvalidOptionError(f"unknown option(s) {', '.join(unknown)}; valid: {', '.join(decoding_names + video_names)}")
    decoding = replace(options or DecodingOptions(), **{k: v for k, v in keywords.items() if k in decoding_names})
    video = replace(video_options or VideoOptions(), **{k: v for k, v in keywords.items() if k in video_names})
    return decoding, video


def own_options(backend: PipelineBackend, options: DecodingOptions) -> DecodingOptions:
    """``options``, whose prompt, when none is given, is the backend's own: the prompt a fine-tuned
    checkpoint was trained after (its ``prompt``), so that it is captioned as it learned; the
    page's defaults otherwise."""
    own = getattr(backend, "prompt", None)
    return replace(options, prompt=own) if options.prompt is None and own is not None else options


def provenance(backend: PipelineBackend) -> dict:
    """What a backend's results are made with: ``model`` (its name), ``weights``
    ([`Weights`][bliptk.core.provenance.Weights] as a dict) and, for another runtime than torch,
    ``runtime`` (left out for torch, as records were before runtimes were recorded, so that they
    stay resumable). Written into every record."""
    made = {"model": backend.name, "weights": backend.weights.as_dict()}
    return made if backend.runtime == "torch" else {**made, "runtime": backend.runtime}


# The random weights said so already, by fingerprint: said once per process, whatever captions with them.
_SAID_RANDOM: set[str] = set()
# Weights fine-tuned from random ones, by fingerprint: the random weights they started from
# (``{"model": name, "seed": seed}``), as their checkpoint says (or the run that made them).
_RANDOM_ORIGINS: dict[str, dict] = {}


def mark_said_random(backend: PipelineBackend) -> None:
    """Count a captioner's random weights as said already (by whoever loaded it, in its own words)."""
    _SAID_RANDOM.add(backend.weights.fingerprint)


def mark_random_origin(fingerprint: str, origin: dict) -> None:
    """Remember that the weights of ``fingerprint`` were fine-tuned from random weights ``origin``
    (``{"model": name, "seed": seed}``): their captions are said as random weights' are."""
    _RANDOM_ORIGINS[fingerprint] = dict(origin)


def random_origin(backend: PipelineBackend) -> dict | None:
    """The random weights a backend's weights are or were fine-tuned from (``{"model": name,
    "seed": seed}``), or None for weights that descend from pretrained ones."""
    if backend.weights.source == "random":
        return {"model": backend.name, "seed": backend.weights.seed}
    return _RANDOM_ORIGINS.get(backend.weights.fingerprint)


def _tell(message: str) -> None:
    """A [`RandomWeightsWarning`][bliptk.core.errors.RandomWeightsWarning]; in a notebook, one plain line
    of output instead (a warning there is a box of stderr, with a line of bliptk's source repeated in it)."""
    if in_notebook():
        print(message)
    else:
        warn(message, RandomWeightsWarning)


def say_if_random(backend: PipelineBackend) -> None:
    """Say once, when random weights first caption or embed, that their results carry no meaning:
    a [`RandomWeightsWarning`][bliptk.core.errors.RandomWeightsWarning]; in a notebook, one plain line
    of output instead (a warning there is a box of stderr, with a line of bliptk's source repeated
    in it). Once per weights: a torch captioner and its ONNX exports say it once between them.
    Weights fine-tuned from random ones are said too: their words are not a pretrained model's."""
    origin = random_origin(backend)
    if origin is None or backend.weights.fingerprint in _SAID_RANDOM:
        return
    _SAID_RANDOM.add(backend.weights.fingerprint)
    if backend.weights.source == "random":
        _tell(
            f"{backend.name} has random weights (seed {backend.weights.seed}): its captions are random words and its "
            "embeddings carry no meaning. Load pretrained weights for real results."
        )
    else:
        _tell(
            f"{backend.name} was fine-tuned from random weights ({origin['model']}, seed {origin['seed']}), not from "
            "pretrained ones: its captions are only what its training pairs taught it, not a trained model's words. "
            "Fine-tune pretrained weights for real results."
        )


def say_random_start(backend: PipelineBackend) -> None:
    """Say, as a fine-tuning run starts, that it starts from random weights (``backend``'s, or
    those it was fine-tuned from), once; nothing for weights that descend from pretrained ones."""
    origin = random_origin(backend)
    if origin is None:
        return
    _SAID_RANDOM.add(backend.weights.fingerprint)  # its own captions (the metrics' before training) need no second line
    _tell(
        f"fine-tuning from random weights ({origin['model']}, seed {origin['seed']}), not pretrained ones: the "
        "fine-tuned model will know only its training pairs, and its captions will not be a trained model's words."
    )


# --- what a call asks for -------------------------------------------------------------------------------


def requested_captions(images, prompt) -> tuple[list, list[tuple[int, str | None]], bool]:
    """What a ``caption(images, prompt)`` call asks for.

    Args:
        images: One input (image, video, or a video's frames) or a list of them.
        prompt: None, a prompt, or a list: one prompt per input of a list, or several prompts for
            one input.

    Returns:
        The inputs; one ``(input index, prompt)`` row per caption; and whether the answer is one
        caption rather than a list.

    Raises:
        InvalidOptionError: A prompt that is no string, or a list of prompts that does not match a
            list of inputs.
    """
    single = not isinstance(images, list | tuple) or isinstance(images, VideoFrames)  # a video's frames are one input
    items = [images] if single else list(images)
    for text in prompt if isinstance(prompt, list | tuple) else [prompt]:
        if text is not None and not isinstance(text, str):
            raise option_error(f"a prompt must be a string or None, got {type(text).__name__} {text!r}", "prompt")
    if not isinstance(prompt, list | tuple):
        return items, [(item, prompt) for item in range(len(items))], single
    if not single and len(prompt) != len(items):
        raise InvalidOptionError(f"{len(prompt)} prompts for {len(items)} images: give one prompt per image, or several for one image")
    return items, [(0, text) for text in prompt] if single else list(enumerate(prompt)), False


def request_prompt(text: str | None, options: DecodingOptions, video: bool = False) -> str:
    """The prompt of one requested caption: its own, else ``options.prompt``, else ``"a photography
    of"`` for an image and ``"a video of"`` for a video."""
    text = options.prompt if text is None else text
    if text is not None:
        return text
    return DEFAULT_VIDEO_PROMPT if video else DEFAULT_PROMPT


def group_captions(decoded: list[Caption], per_request: int) -> list:
    """[`decode()`][bliptk.core.decoding_strategies.decode]'s captions (``per_request`` for each request, together) as one
    entry per request: the caption itself, or with ``per_request`` > 1 (``num_return_sequences``)
    the list."""
    if per_request == 1:
        return list(decoded)
    return [decoded[start : start + per_request] for start in range(0, len(decoded), per_request)]


def chunks(rows: list[int], size: int) -> list[list[int]]:
    """``rows`` in runs of ``size`` at most."""
    return [rows[start : start + size] for start in range(0, len(rows), size)]


# --- the pipeline ----------------------------------------------------------------------------------------


def encode_images(backend: PipelineBackend, images: Sequence) -> np.ndarray:
    """Image features ``(B, N, D)`` (float32) of images (paths, PIL images, arrays, tensors)."""
    return backend.encode(backend.preprocessor.arrays(list(images)))


def encode_video(backend: PipelineBackend, video, video_options: VideoOptions, batch_size: int = 8) -> np.ndarray:
    """Image features of a video: its frames encoded ``batch_size`` at a time (memory stays
    bounded for any number of frames) and pooled.

    Args:
        backend: The runtime.
        video: A video file, or frames ([`VideoFrames`][bliptk.core.video.VideoFrames] or a list of images).
        video_options: Frames to take from a file, and the pooling.
        batch_size: Frames encoded at once.

    Returns:
        ``(N, D)`` float32 for ``"mean"`` (the mean accumulated in float32); ``(frames * N, D)``
        for ``"concat"``.
    """
    check_positive_int("batch_size", batch_size)
    frames = video if isinstance(video, list | tuple) else video_frames(video, video_options.num_frames)
    if not frames:
        raise InvalidOptionError("a video needs at least one frame")
    total, pieces = None, []
    for start in range(0, len(frames), batch_size):
        features = encode_images(backend, frames[start : start + batch_size])
        if video_options.pooling == "concat":
            pieces.append(features.reshape(-1, features.shape[-1]))
        else:
            total = features.sum(axis=0, dtype=np.float32) if total is None else total + features.sum(axis=0, dtype=np.float32)
    if video_options.pooling == "concat":
        return np.concatenate(pieces)
    assert total is not None
    return total / len(frames)


def caption_features(
    backend: PipelineBackend,
    features: np.ndarray,
    options: DecodingOptions,
    prompts: list[str] | None = None,
    return_attention: bool = False,
) -> list[Caption]:
    """Decode captions from image features ``(B, N, D)``: ``B * num_return_sequences`` captions,
    those of each image together (see [`decode()`][bliptk.core.decoding_strategies.decode])."""
    say_if_random(backend)
    options = own_options(backend, options)
    return decode(backend.decoder, backend.tokenizer, np.asarray(features, dtype=np.float32), options, prompts, return_attention)


def caption_pixels(backend: PipelineBackend, pixels: np.ndarray, options: DecodingOptions) -> list[Caption]:
    """Captions of preprocessed pixels ``(B, 3, S, S)`` (what the batch and Ray jobs feed)."""
    return caption_features(backend, backend.encode(pixels), options)


def caption(
    backend: PipelineBackend,
    images,
    prompt: str | None | list[str | None],
    options: DecodingOptions,
    video_options: VideoOptions,
    batch_size: int = 16,
    return_attention: bool = False,
) -> Caption | list:
    """Caption one input or a list (see [`bliptk.Captioner.caption()`][bliptk.model.captioner.Captioner.caption]).

    Images go a chunk of ``batch_size`` requested captions at a time: each chunk's distinct images
    are encoded together, then decoded, so that features for one chunk at most are alive at once.
    A video is encoded ([`encode_video()`][bliptk.core.pipeline.encode_video]), then its captions decoded in chunks.
    """
    say_if_random(backend)
    check_positive_int("batch_size", batch_size)
    options = own_options(backend, options)
    items, rows, single = requested_captions(images, prompt)
    captions: dict[int, Any] = {}

    for features, chunk, video in features_by_chunk(backend, items, [item for item, _ in rows], video_options, batch_size):
        prompts = [request_prompt(rows[row][1], options, video) for row in chunk]
        decoded = caption_features(backend, features, options, prompts, return_attention)
        captions.update(zip(chunk, group_captions(decoded, options.num_return_sequences), strict=True))
    ordered = [captions[row] for row in range(len(rows))]
    return ordered[0] if single else ordered


def features_by_chunk(
    backend: PipelineBackend, items: list, row_items: list[int], video_options: VideoOptions, batch_size: int
) -> Iterator[tuple[np.ndarray, list[int], bool]]:
    """The features ``(R, N, D)`` of requested rows (each row the index of its input in ``items``),
    ``batch_size`` rows at a time, with the rows: images a chunk at a time, each distinct image of a
    chunk encoded once, so that features for one chunk at most are alive; then each video, encoded
    once ([`encode_video()`][bliptk.core.pipeline.encode_video]), for its rows. Each chunk comes with
    whether it is a video's. The one loop of captioning and scoring."""
    videos = {item for item in dict.fromkeys(row_items) if is_video(items[item])}
    for chunk in chunks([row for row, item in enumerate(row_items) if item not in videos], batch_size):
        yield chunk_features(backend, [items[row_items[row]] for row in chunk], [row_items[row] for row in chunk]), chunk, False
    for video in sorted(videos):
        features = encode_video(backend, items[video], video_options, batch_size)
        for chunk in chunks([row for row, item in enumerate(row_items) if item == video], batch_size):
            yield np.repeat(features[None], len(chunk), axis=0), chunk, True


def chunk_features(backend: PipelineBackend, images: list, keys: list[int]) -> np.ndarray:
    """The features of a chunk's rows, ``(R, N, D)``: each distinct image (by ``keys``) encoded once,
    however many of the rows prompt it. Only the rows' copy outlives this call."""
    distinct = list(dict.fromkeys(keys))
    features = encode_images(backend, [images[keys.index(key)] for key in distinct])
    return features[[distinct.index(key) for key in keys]]


# --- timelines -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TimelineSegment:
    """One row of [`caption_timeline()`][bliptk.core.pipeline.caption_timeline]: a caption of the video between two times (seconds)."""

    start: float
    end: float
    caption: Caption

    def __str__(self) -> str:
        return f"{self.start:7.2f} - {self.end:7.2f} s  {self.caption.text}"


def caption_timeline(
    captioner,
    video,
    segments: int = 4,
    *,
    options: DecodingOptions | None = None,
    video_options: VideoOptions | None = None,
    prompt: str | None = None,
    **keywords,
) -> list[TimelineSegment]:
    """Caption K consecutive, equal segments of a video, each from its own frames.

    Args:
        captioner: A [`Captioner`][bliptk.model.captioner.Captioner] (or any captioner with ``caption``).
        video: A video file.
        segments: How many segments (K).
        options: [`DecodingOptions`][bliptk.core.decoding.DecodingOptions] to start from.
        video_options: [`VideoOptions`][bliptk.core.video.VideoOptions]: ``num_frames`` is the frames of each
            segment (default 4), ``pooling`` how they are pooled.
        prompt: Text each caption starts with (None: ``"a video of"``).
        **keywords: Fields of either options (``max_new_tokens``, ``num_frames``, ...).

    Returns:
        K [`TimelineSegment`][bliptk.core.pipeline.TimelineSegment] rows ``(start, end, caption)`` in time order.
    """
    check_positive_int("segments", segments)
    options, video_options = resolve_options(options, video_options or VideoOptions(num_frames=4), **keywords)
    duration = video_info(video).duration
    bounds = [duration * k / segments for k in range(segments + 1)]
    rows = []
    for start, end in zip(bounds, bounds[1:], strict=False):
        frames = video_frames(video, video_options.num_frames, start=start, end=end)
        rows.append(TimelineSegment(start, end, captioner.caption(frames, prompt, options=options, video_options=video_options)))
    return rows
