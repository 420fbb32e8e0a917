"""The Captioner: BLIP's parts together, with verb methods."""

from __future__ import annotations

import logging

import torch

from .decoding import Caption, DecodingOptions, decode
from .errors import InvalidOptionError
from .image_encoder import ImageEncoder
from .text_decoder import TextDecoder
from .tokenizer import Tokenizer

__all__ = ["Captioner"]

logger = logging.getLogger(__name__)


class Captioner:
    """A loaded BLIP captioning model. Make one with :func:`bliptk.load`.

    Attributes:
        name: The model it was loaded as (architecture name, hub id or folder).
        image_encoder: :class:`ImageEncoder`, usable on its own.
        text_decoder: :class:`TextDecoder`, usable on its own.
        tokenizer: :class:`Tokenizer`, usable on its own.
        model: The underlying ``transformers`` ``BlipForConditionalGeneration``.
    """

    def __init__(self, model, tokenizer: Tokenizer, image_encoder: ImageEncoder, name: str, pretrained: bool):
        self.model = model
        self.tokenizer = tokenizer
        self.image_encoder = image_encoder
        self.text_decoder = TextDecoder(model.text_decoder)
        self.name = name
        self.pretrained = pretrained

    def __repr__(self) -> str:
        weights = "pretrained" if self.pretrained else "random weights"
        return f"Captioner({self.name!r}, {weights}, device={self.device}, dtype={self.dtype})"

    @property
    def device(self) -> torch.device:
        return self.image_encoder.device

    @property
    def dtype(self) -> torch.dtype:
        return self.image_encoder.dtype

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
        batch_size: int = 16,
        return_attention: bool = False,
    ) -> Caption | list[Caption]:
        """Caption one image, or a list of images in batches.

        Args:
            images: One image (path, PIL image, NumPy array, torch tensor) or a list.
            prompt: Text the caption starts with; None means ``"a photography of"``, ``""``
                unconditional.
            max_new_tokens: Most tokens to generate, ``[SEP]`` included.
            temperature: 0 for greedy decoding, above 0 to sample.
            top_k: When sampling, sample among the k most probable tokens.
            top_p: When sampling, nucleus probability mass.
            seed: Seed for reproducible sampling.
            batch_size: Images encoded and decoded together.
            return_attention: Fill each caption's ``cross_attention`` ``(T, L, H, N)``.

        Returns:
            A :class:`Caption` for one image, a list of them for a list.
        """
        options = DecodingOptions(prompt, max_new_tokens, temperature, top_k, top_p, seed)
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise InvalidOptionError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        single = not isinstance(images, (list, tuple))
        items = [images] if single else list(images)
        captions: list[Caption] = []
        for start in range(0, len(items), batch_size):
            features = self.encode_image(items[start : start + batch_size])
            captions.extend(self.caption_features(features, options, return_attention=return_attention))
        return captions[0] if single else captions

    def caption_features(
        self, features: torch.Tensor, options: DecodingOptions | None = None, return_attention: bool = False
    ) -> list[Caption]:
        """Decode captions from image features ``(B, N, D)`` (for example averaged video frames).

        Returns:
            B captions.
        """
        return decode(self.text_decoder, self.tokenizer, features, options or DecodingOptions(), return_attention)
