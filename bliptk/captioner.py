"""The Captioner: BLIP's parts together, with verb methods."""

from __future__ import annotations

import warnings

import torch

from .batch import caption_files
from .decoding import Caption, DecodingOptions, decode, group_captions, options_with, request_prompt, requested_captions
from .errors import InvalidOptionError, RandomWeightsWarning, check_positive_int
from .image_encoder import ImageEncoder
from .provenance import Weights
from .text_decoder import TextDecoder
from .tokenizer import Tokenizer

__all__ = ["Captioner"]

VIDEO_POOLINGS = ("mean", "concat")


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
    def max_positions(self) -> int:
        """Most positions (prompt and caption) the text decoder takes: 512."""
        return self.text_decoder.max_positions

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

    # Caption many files, one record per input, resumable: bliptk.batch.caption_files.
    caption_files = caption_files

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

        if pooling not in VIDEO_POOLINGS:
            raise InvalidOptionError(f"pooling must be one of {', '.join(VIDEO_POOLINGS)}, got {pooling!r}")
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
        prompt: str | None | list[str | None] = None,
        *,
        options: DecodingOptions | None = None,
        batch_size: int = 16,
        return_attention: bool = False,
        num_frames: int = 16,
        pooling: str = "mean",
        **decoding_options,
    ) -> Caption | list[Caption] | list[list[Caption]]:
        """Caption one image or video, or a list of them (images in batches).

        Videos are recognised by content (a file PyAV reads as a video and Pillow not as an image,
        or the :class:`~bliptk.video.VideoFrames` that :func:`~bliptk.video_frames` returns) and
        captioned from their frames' features (:meth:`encode_video`).

        Args:
            images: One image (path, PIL image, NumPy array, torch tensor) or video, or a list.
            prompt: Text the caption starts with; None means ``"a photography of"`` for an image
                and ``"a video of"`` for a video; ``""`` unconditional. A list gives one prompt per
                image of a list, or, for one image, several prompts (the page's list of prompts):
                prompts of any lengths share one batched pass, and each caption equals
                captioning it alone.
            options: :class:`DecodingOptions` to start from.
            batch_size: Images encoded and decoded together.
            return_attention: Fill each caption's ``cross_attention`` ``(T, L, H, N)``.
            num_frames: Frames taken from each video file.
            pooling: How a video's frame features are pooled, ``"mean"`` or ``"concat"``.
            **decoding_options: Fields of :class:`DecodingOptions`: ``max_new_tokens`` (25),
                ``temperature`` (0: greedy), ``top_k`` (10), ``top_p``, ``seed``, ``num_beams``,
                ``length_penalty``, ``min_new_tokens``, ``repetition_penalty``,
                ``num_return_sequences`` (above 1, a list of captions per input).

        Returns:
            A :class:`Caption` for one input and one prompt, else a list of them (with
            ``num_return_sequences`` > 1, a list of captions in place of each caption).

        Raises:
            InvalidOptionError: An unknown or invalid option, or as many prompts as images
                were not given.
        """
        from .video import is_video

        self._say_if_random()
        options = options_with(options, **decoding_options)
        check_positive_int("batch_size", batch_size)
        items, rows, single = requested_captions(images, prompt)
        videos = {item for item, _ in rows if is_video(items[item])}

        def decode_rows(features: torch.Tensor, chunk: list[int]) -> None:
            prompts = [request_prompt(rows[row][1], options, rows[row][0] in videos) for row in chunk]
            decoded = self.caption_features(features, options, return_attention, prompts)
            captions.update(zip(chunk, group_captions(decoded, options.num_return_sequences)))

        captions: dict[int, Caption | list[Caption]] = {}
        image_rows = [row for row, (item, _) in enumerate(rows) if item not in videos]
        for start in range(0, len(image_rows), batch_size):
            chunk = image_rows[start : start + batch_size]
            needed = list(dict.fromkeys(rows[row][0] for row in chunk))  # an image prompted several times is encoded once
            encoded = dict(zip(needed, self.encode_image([items[item] for item in needed])))
            decode_rows(torch.stack([encoded[rows[row][0]] for row in chunk]), chunk)
        for video in sorted(videos):
            features = self.encode_video(items[video], num_frames, pooling, batch_size)
            video_rows = [row for row, (item, _) in enumerate(rows) if item == video]
            for start in range(0, len(video_rows), batch_size):
                chunk = video_rows[start : start + batch_size]
                decode_rows(features.expand(len(chunk), *features.shape), chunk)
        ordered = [captions[row] for row in range(len(rows))]
        return ordered[0] if single else ordered

    def caption_pixels(self, pixel_values, options: DecodingOptions | None = None) -> list[Caption]:
        """Captions of preprocessed pixels ``(B, 3, S, S)`` (a NumPy array or tensor), as the batch
        command feeds them."""
        pixels = torch.as_tensor(pixel_values)
        return self.caption_features(self.image_encoder(pixels), options)

    def caption_features(
        self,
        features: torch.Tensor,
        options: DecodingOptions | None = None,
        return_attention: bool = False,
        prompts: list[str] | None = None,
    ) -> list[Caption]:
        """Decode captions from image features ``(B, N, D)`` (for example averaged video frames).

        Args:
            features: The images' features.
            options: Decoding options (default :class:`DecodingOptions`).
            return_attention: Fill each caption's ``cross_attention``, a ``(T, L, H, N)`` tensor.
            prompts: One prompt per image, of any lengths (None: ``options.prompt_text``).

        Returns:
            ``B * num_return_sequences`` captions, those of each image together.
        """
        self._say_if_random()
        captions = decode(self.text_decoder, self.tokenizer, features, options or DecodingOptions(), prompts, return_attention)
        if return_attention:
            decoder = self.text_decoder
            no_tokens = (0, len(decoder.layers), decoder.num_heads, features.shape[1])  # a caption with no generated token
            for caption in captions:
                attention = caption.cross_attention
                caption.cross_attention = torch.zeros(no_tokens) if attention is None else torch.from_numpy(attention)
        return captions
