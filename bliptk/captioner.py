"""The Captioner: BLIP's parts together, with verb methods."""

from __future__ import annotations

import logging
import warnings
from dataclasses import replace

import torch

from .decoding import Caption, DecodingOptions, decode, decoding_options_from
from .errors import InvalidOptionError, RandomWeightsWarning, check_positive_int
from .preprocess import DEFAULT_MAX_PIXELS
from .image_encoder import ImageEncoder
from .provenance import Weights
from .text_decoder import TextDecoder
from .tokenizer import Tokenizer

__all__ = ["Captioner", "DEFAULT_VIDEO_PROMPT"]

logger = logging.getLogger(__name__)

DEFAULT_VIDEO_PROMPT = "a video of"
POOLINGS = ("mean", "concat")


class Captioner:
    """A loaded BLIP captioning model. Make one with :func:`bliptk.load`.

    Attributes:
        name: The model it was loaded as (architecture name, hub id or folder).
        image_encoder: :class:`ImageEncoder`, usable on its own.
        text_decoder: :class:`TextDecoder`, usable on its own.
        tokenizer: :class:`Tokenizer`, usable on its own.
        model: The underlying ``transformers`` ``BlipForConditionalGeneration``.
    """

    def __init__(self, model, tokenizer: Tokenizer, image_encoder: ImageEncoder, name: str, weights: Weights):
        self.model = model
        self.tokenizer = tokenizer
        self.image_encoder = image_encoder
        self.text_decoder = TextDecoder(model.text_decoder)
        self.name = name
        self.weights = weights
        self._said_random = False

    def __repr__(self) -> str:
        weights = "pretrained" if self.pretrained else f"random weights (seed {self.weights.seed})"
        return f"Captioner({self.name!r}, {weights}, device={self.device}, dtype={self.dtype})"

    @property
    def pretrained(self) -> bool:
        """False for the uninitialized net (random weights), whose captions are random words."""
        return self.weights.source == "pretrained"

    @property
    def device(self) -> torch.device:
        return self.image_encoder.device

    @property
    def dtype(self) -> torch.dtype:
        return self.image_encoder.dtype

    def provenance(self) -> dict:
        """What this captioner's results are made with: ``model`` (its name) and ``weights``
        (:class:`~bliptk.provenance.Weights` as a dict). Written into every record."""
        return {"model": self.name, "weights": self.weights.as_dict()}

    def _say_if_random(self) -> None:
        """Warn once, when a captioner with random weights first captions or embeds."""
        if not self.pretrained and not self._said_random:
            self._said_random = True
            warnings.warn(
                f"{self.name} has random weights (seed {self.weights.seed}): its captions are random words and its "
                "embeddings carry no meaning. Load pretrained weights for real results.",
                RandomWeightsWarning,
                stacklevel=3,
            )

    @property
    def preprocessor(self):
        return self.image_encoder.preprocessor

    def encode_image(self, images) -> torch.Tensor:
        """Image encoder features of one image or a list.

        Args:
            images: A path, PIL image, NumPy array or torch tensor, or a list of them.

        Returns:
            ``(B, N, D)`` features, ``(B, 577, D)`` at 384 px.
        """
        return self.image_encoder.encode(images)

    def embed(self, images, pooling: str = "cls", batch_size: int = 16, cache=None, progress: bool | None = None):
        """One vector per image, from the image encoder.

        Args:
            images: A folder (its image files, in :func:`bliptk.image_files` order), a list of
                paths or images, or one image.
            pooling: ``"cls"``: the encoder output's first (class) token; ``"mean"``: the mean
                of the patch tokens. (Not ``transformers``' ``pooler_output``, which applies the
                final LayerNorm twice.)
            batch_size: Images encoded at once.
            cache: A folder to keep embeddings in, keyed by image content and model; a second
                run over the same images reads them instead of running the encoder.
            progress: Show a ``tqdm`` progress bar; None shows one when there is more than one
                batch to compute.

        Returns:
            ``(N, D)`` float32 array.
        """
        from .embeddings import embed

        self._say_if_random()
        return embed(self, images, pooling, batch_size, cache, progress)

    def caption_files(
        self,
        inputs,
        out=None,
        *,
        format: str | None = None,
        recursive: bool = False,
        batch_size: int = 8,
        workers: int = 2,
        resume: bool = False,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
        num_frames: int = 16,
        pooling: str = "mean",
        progress: bool | None = None,
        status=None,
        **decoding_options,
    ):
        """Caption many files, yielding one record per input as it is made.

        Bad inputs never stop the job: each gets a record with an ``error`` (its type and
        message) instead of a caption. With ``out``, each record is also appended to that file
        and flushed, so a killed run keeps every finished record; ``resume=True`` continues such a
        file, skipping inputs captioned with the same model and options, retrying those that
        failed, and dropping a torn last line. Ctrl-C stops after the batch in flight.

        Args:
            inputs: Files, folders (their image files) and glob patterns, or one of them.
            out: A ``.jsonl`` or ``.csv`` file to write records to; None only yields them.
            format: ``"jsonl"`` or ``"csv"``; None picks by ``out``'s extension.
            recursive: Look in subfolders of folders (and let ``**`` match in patterns).
            batch_size: Images captioned together.
            workers: Threads that read and preprocess the next images while the model works (0:
                none).
            resume: Continue an existing ``out`` (without it, an existing non-empty ``out`` is
                an error, so that nothing is overwritten by accident).
            max_pixels: Refuse images with more pixels than this (decompression bombs).
            num_frames, pooling: For videos, as in :meth:`caption`.
            progress: Show a ``tqdm`` progress bar (None: when there is more than one batch).
            status: A :class:`~bliptk.batch.BatchStatus` to keep counts in.
            **decoding_options: ``prompt``, ``max_new_tokens``, ``temperature``, ``top_k``,
                ``top_p``, ``seed``, ``num_beams``, ``length_penalty``, ``min_new_tokens``,
                ``repetition_penalty`` (see :class:`~bliptk.DecodingOptions`).

        Yields:
            Records (dicts): ``path``, ``kind`` (image or video), ``caption``, ``token_ids``,
            ``tokens``, ``logprobs``, ``finished``, ``model``, ``options``, and ``error`` (None, or
            ``{"type", "message"}``).
        """
        from .batch import caption_files

        self._say_if_random()
        options = decoding_options_from(decoding_options)
        if options.num_return_sequences != 1:
            raise InvalidOptionError("caption_files writes one caption per input: num_return_sequences must be 1")
        return caption_files(
            self, inputs, out, options=options, format=format, recursive=recursive, batch_size=batch_size,
            workers=workers, resume=resume, max_pixels=max_pixels, num_frames=num_frames, pooling=pooling,
            progress=progress, status=status,
        )

    def encode_video(self, video, num_frames: int = 16, pooling: str = "mean", batch_size: int = 8) -> torch.Tensor:
        """Image features of a video: its frames' features averaged (the page's method) or
        concatenated.

        Args:
            video: A video file, or frames (:class:`~bliptk.video.VideoFrames` or a list of images).
            num_frames: Uniformly spaced frames to take from a file.
            pooling: ``"mean"``: ``(N, D)`` averaged over the frames; ``"concat"``: the frames'
                features one after another, ``(frames * N, D)`` (as BLIP's authors did for video
                retrieval).
            batch_size: Frames encoded at once (memory stays bounded for any number of frames).

        Returns:
            ``(577, D)`` for ``"mean"`` at 384 px; ``(frames * 577, D)`` for ``"concat"``.
        """
        from .video import video_frames

        if pooling not in POOLINGS:
            raise InvalidOptionError(f"pooling must be one of {', '.join(POOLINGS)}, got {pooling!r}")
        check_positive_int("batch_size", batch_size)
        frames = video if isinstance(video, (list, tuple)) else video_frames(video, num_frames)
        if not frames:
            raise InvalidOptionError("a video needs at least one frame")
        total, pieces = None, []
        for start in range(0, len(frames), batch_size):
            features = self.encode_image(list(frames[start : start + batch_size]))
            if pooling == "concat":
                pieces.append(features.flatten(0, 1))
            else:
                batch_sum = features.sum(dim=0, dtype=torch.float32)
                total = batch_sum if total is None else total + batch_sum
        if pooling == "concat":
            return torch.cat(pieces)
        return (total / len(frames)).to(self.dtype)

    def caption(
        self,
        images,
        prompt: str | None = None,
        *,
        max_new_tokens: int = 25,
        temperature: float = 0.0,
        top_k: int | None = 10,
        top_p: float | None = None,
        seed: int | None = None,
        num_beams: int = 1,
        length_penalty: float = 1.0,
        min_new_tokens: int = 0,
        repetition_penalty: float = 1.0,
        num_return_sequences: int = 1,
        batch_size: int = 16,
        return_attention: bool = False,
        num_frames: int = 16,
        pooling: str = "mean",
    ) -> Caption | list[Caption] | list[list[Caption]]:
        """Caption one image or video, or a list of them (images in batches).

        Videos are recognised by content (a file PyAV reads as a video and Pillow not as an image,
        or the :class:`~bliptk.video.VideoFrames` that :func:`~bliptk.video_frames` returns) and
        captioned from their frames' features (:meth:`encode_video`).

        Args:
            images: One image (path, PIL image, NumPy array, torch tensor) or video, or a list.
            prompt: Text the caption starts with; None means ``"a photography of"`` for an image
                and ``"a video of"`` for a video; ``""`` unconditional.
            max_new_tokens: Most tokens to generate, ``[SEP]`` included.
            temperature: 0 for greedy decoding, above 0 to sample.
            top_k: When sampling, sample among the k most probable tokens.
            top_p: When sampling, nucleus probability mass.
            seed: Seed for reproducible sampling.
            num_beams: Above 1, beam search (equal to ``transformers``' beam search).
            length_penalty: Beam search ranks captions by ``logprob / length**length_penalty``.
            min_new_tokens: ``[SEP]`` cannot come before this many tokens.
            repetition_penalty: Above 1, discourages repeating tokens.
            num_return_sequences: Captions per input (the best beams, or independent samples);
                above 1, each input gets a list of captions.
            batch_size: Images encoded and decoded together.
            return_attention: Fill each caption's ``cross_attention`` ``(T, L, H, N)``.
            num_frames: Frames taken from each video file.
            pooling: How a video's frame features are pooled, ``"mean"`` or ``"concat"``.

        Returns:
            A :class:`Caption` for one input, a list of them for a list (with
            ``num_return_sequences`` > 1, a list of captions in place of each caption).
        """
        from .video import VideoFrames, is_video

        self._say_if_random()
        options = DecodingOptions(
            prompt, max_new_tokens, temperature, top_k, top_p, seed, num_beams, length_penalty, min_new_tokens,
            repetition_penalty, num_return_sequences,
        )
        if return_attention and num_beams > 1:
            raise InvalidOptionError("return_attention works with greedy decoding and sampling, not beam search")
        check_positive_int("batch_size", batch_size)
        single = not isinstance(images, list | tuple) or isinstance(images, VideoFrames)
        items = [images] if single else list(images)
        video_rows = {row for row, item in enumerate(items) if is_video(item)}
        image_rows = [row for row in range(len(items)) if row not in video_rows]
        per_input = options.num_return_sequences
        captions: dict[int, list[Caption]] = {}
        for start in range(0, len(image_rows), batch_size):
            rows = image_rows[start : start + batch_size]
            decoded = self.caption_features(self.encode_image([items[row] for row in rows]), options, return_attention)
            captions.update((row, decoded[i * per_input : (i + 1) * per_input]) for i, row in enumerate(rows))
        video_options = replace(options, prompt=DEFAULT_VIDEO_PROMPT) if prompt is None else options
        for row in sorted(video_rows):
            features = self.encode_video(items[row], num_frames, pooling, batch_size)
            captions[row] = self.caption_features(features[None], video_options, return_attention)
        ordered = [captions[row] if per_input > 1 else captions[row][0] for row in range(len(items))]
        return ordered[0] if single else ordered

    def caption_features(
        self, features: torch.Tensor, options: DecodingOptions | None = None, return_attention: bool = False
    ) -> list[Caption]:
        """Decode captions from image features ``(B, N, D)`` (for example averaged video frames).

        Returns:
            ``B * num_return_sequences`` captions, those of each image together.
        """
        self._say_if_random()
        return decode(self.text_decoder, self.tokenizer, features, options or DecodingOptions(), return_attention)
