"""What every captioner is: [`CaptionBackend`][bliptk.captioning.backend.CaptionBackend], the base class of
each runtime's captioner (torch's [`Captioner`][bliptk.model.captioner.Captioner], ONNX Runtime's
[`OnnxCaptioner`][bliptk.exported.runtime.OnnxCaptioner]). It declares what a runtime provides (its
name, weights, prompt, tokenizer, preprocessing, decoder and image encoder) and gives every
captioner the same verbs, written once over the pipeline ([`bliptk.core.pipeline`][bliptk.core.pipeline]):
[`caption()`][bliptk.captioning.backend.CaptionBackend.caption], [`caption_files()`][bliptk.captioning.backend.CaptionBackend.caption_files]
and [`encode_video()`][bliptk.captioning.backend.CaptionBackend.encode_video]."""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Iterator
from typing import TYPE_CHECKING, ClassVar

import numpy as np

from ..core import pipeline
from ..core.decoding import Caption, DecoderBackend, DecodingOptions
from ..core.preprocess import Preprocessor
from ..core.provenance import Weights
from ..core.tokenizer import Tokenizer
from ..core.video import VideoOptions

if TYPE_CHECKING:
    from ..core.scoring import CaptionScore

__all__ = ["CaptionBackend"]


class CaptionBackend(ABC):
    """A loaded captioning model, in some runtime: what it provides, and the captioning verbs.

    A runtime's captioner sets the attributes and implements the three abstract members; the
    verbs come with the class.

    Attributes:
        runtime: The runtime's name (``"torch"``, ``"onnx"``), which its records carry.
        name: The model it was made from (architecture name, hub id or folder).
        weights: What its weights are ([`Weights`][bliptk.core.provenance.Weights]).
        prompt: The checkpoint's own prompt (a fine-tuned one's training prompt), which a call
            that gives none captions after; None for the page's defaults.
        tokenizer: BLIP's tokenizer.
    """

    runtime: ClassVar[str]
    name: str
    weights: Weights
    prompt: str | None
    tokenizer: Tokenizer

    @property
    @abstractmethod
    def preprocessor(self) -> Preprocessor:
        """Images to pixels ``(B, 3, S, S)``."""

    @property
    @abstractmethod
    def decoder(self) -> DecoderBackend:
        """The decoding engine's view of the text decoder: the images' keys and values, then one
        step at a time."""

    @abstractmethod
    def encode(self, pixels: np.ndarray) -> np.ndarray:
        """Image features ``(B, N, D)`` (float32 NumPy) of preprocessed pixels ``(B, 3, S, S)``."""

    def provenance(self) -> dict:
        """What this captioner's results are made with: ``model`` (its name), ``weights``
        ([`Weights`][bliptk.core.provenance.Weights] as a dict) and, for another runtime than
        torch, ``runtime``. Written into every record."""
        return pipeline.provenance(self)

    @property
    def pretrained(self) -> bool:
        """False for the uninitialized net (random weights), whose captions are random words."""
        return self.weights.source == "pretrained"

    @property
    def max_positions(self) -> int:
        """Most positions (prompt and caption) the text decoder takes: 512."""
        return self.decoder.max_positions

    def caption(
        self,
        images,
        prompt: str | None | list[str | None] = None,
        *,
        options: DecodingOptions | None = None,
        video_options: VideoOptions | None = None,
        batch_size: int = 16,
        return_attention: bool = False,
        **keywords,
    ) -> Caption | list:
        """Caption one image or video, or a list of them (images in chunks of ``batch_size``).

        Videos are recognised by name (``.mp4``, ``.mov``, ...) or content (a file PyAV reads as a
        video and Pillow not as an image, or the [`VideoFrames`][bliptk.core.video.VideoFrames] that
        [`video_frames()`][bliptk.core.video.video_frames] returns) and captioned from their frames' pooled features.

        Args:
            images: One image (path, PIL image, NumPy array, torch tensor) or video, or a list.
            prompt: Text the caption starts with; None means ``"a photography of"`` for an image
                and ``"a video of"`` for a video; ``""`` unconditional. A list gives one prompt per
                image of a list, or, for one image, several prompts (the page's list of prompts):
                prompts of any lengths share one batched pass, and each caption equals
                captioning it alone.
            options: [`DecodingOptions`][bliptk.core.decoding.DecodingOptions] to start from.
            video_options: [`VideoOptions`][bliptk.core.video.VideoOptions] (frames per video, pooling).
            batch_size: Images encoded and decoded together.
            return_attention: Fill each caption's ``cross_attention`` ``(T, L, H, N)`` (torch's
                captioner only).
            **keywords: Fields of [`DecodingOptions`][bliptk.core.decoding.DecodingOptions] (``max_new_tokens`` (25),
                ``temperature`` (0: greedy), ``top_k`` (10), ``top_p``, ``seed``, ``num_beams``,
                ``length_penalty``, ``min_new_tokens``, ``repetition_penalty``,
                ``num_return_sequences``: above 1, a list of captions per input) or of
                [`VideoOptions`][bliptk.core.video.VideoOptions] (``num_frames``, ``pooling``).

        Returns:
            A [`Caption`][bliptk.core.decoding.Caption] for one input and one prompt, else a list of them (with
            ``num_return_sequences`` > 1, a list of captions in place of each caption).

        Raises:
            InvalidOptionError: An unknown or invalid option, or as many prompts as images were
                not given.
        """
        options, video_options = pipeline.resolve_options(options, video_options, **keywords)
        return pipeline.caption(self, images, prompt, options, video_options, batch_size, return_attention)

    def score(
        self,
        images,
        captions: str | list[str],
        *,
        prompt: str | None = None,
        video_options: VideoOptions | None = None,
        batch_size: int = 16,
        **keywords,
    ) -> list[CaptionScore]:
        """How likely the model finds given captions of images or videos, token by token
        (teacher-forced): a human reference, another model's caption, a query.

        Args:
            images: One image or video, or a list (as [`caption()`][bliptk.captioning.backend.CaptionBackend.caption] takes).
            captions: One caption, or a list: for a list of images, one caption per image; for
                one image, several captions of it. One caption for a list of images scores it
                for each (what [`search()`][bliptk.captioning.search.search] does).
            prompt: Text each caption is conditioned on, never scored; None: the model's own
                prompt, else ``"a photography of"`` (``"a video of"`` for a video); ``""`` none.
                A caption that starts with the prompt (a generated caption's text) is scored
                after it.
            video_options: [`VideoOptions`][bliptk.core.video.VideoOptions] for videos.
            batch_size: Captions scored together.
            **keywords: Fields of [`VideoOptions`][bliptk.core.video.VideoOptions] (``num_frames``).

        Returns:
            One [`CaptionScore`][bliptk.core.scoring.CaptionScore] per caption, in order, always a
            list: ``.logprobs``, ``.entropy`` and ``.margin`` per token (``[SEP]`` last),
            ``.total`` and ``.mean``.

        Raises:
            InvalidOptionError: An empty caption, one longer than the decoder's positions, or
                lists of different lengths.
            InvalidArgumentError: A caption that is no string.
        """
        from ..core.scoring import score

        _, video_options = pipeline.resolve_options(None, video_options, **_video_only(keywords))
        return score(self, images, captions, prompt, video_options, batch_size)

    def encode_video(self, video, video_options: VideoOptions | None = None, *, batch_size: int = 8, **keywords):
        """Image features of a video: its frames' features averaged (the page's method) or
        concatenated.

        Args:
            video: A video file, or frames ([`VideoFrames`][bliptk.core.video.VideoFrames] or a list of images).
            video_options: [`VideoOptions`][bliptk.core.video.VideoOptions]; ``keywords`` replace its fields
                (``num_frames=8``, ``pooling="concat"``).
            batch_size: Frames encoded at once (memory stays bounded for any number of frames).

        Returns:
            ``(577, D)`` for ``"mean"`` at 384 px; ``(frames * 577, D)`` for ``"concat"``.
        """
        _, video_options = pipeline.resolve_options(None, video_options, **keywords)
        return self._as_features(pipeline.encode_video(self, video, video_options, batch_size))

    def _as_features(self, features: np.ndarray):
        """Features as this captioner gives them to its users (torch's: a tensor in its dtype)."""
        return features

    def caption_files(self, inputs, out: str | os.PathLike | None = None, **arguments) -> Iterator[dict]:
        """Caption many files, one record per input, resumable: see [`caption_files()`][bliptk.captioning.folder.caption_files]."""
        from .folder import caption_files

        return caption_files(self, inputs, out, **arguments)


def _video_only(keywords: dict) -> dict:
    """Keywords of a verb that takes video options only.

    Raises:
        InvalidOptionError: A decoding option, which scoring has no use for.
    """
    from dataclasses import fields

    from ..core.errors import InvalidOptionError

    names = [f.name for f in fields(VideoOptions)]
    unknown = sorted(set(keywords) - set(names))
    if unknown:
        raise InvalidOptionError(f"unknown option(s) {', '.join(unknown)} for scoring; valid: {', '.join(names)}")
    return keywords
