"""The Captioner: BLIP's parts in torch, with the captioning verbs.

The verbs themselves ([`CaptionBackend`][bliptk.captioning.backend.CaptionBackend]) are shared with the ONNX Runtime
captioner; this class adds what only torch does: each part on its own, cross-attention capture,
embeddings, and tensors in and out.
"""

from __future__ import annotations

import numpy as np
import torch

from ..captioning.backend import CaptionBackend
from ..core import pipeline
from ..core.decoding import Caption, DecodingOptions
from ..core.provenance import Weights
from ..core.tokenizer import Tokenizer
from .image_encoder import ImageEncoder
from .text_decoder import TextDecoder

__all__ = ["Captioner"]


class Captioner(CaptionBackend):
    """A loaded BLIP captioning model. Make one with [`bliptk.load()`][bliptk.model.loading.load].

    Attributes:
        name: The model it was loaded as (architecture name, hub id or folder).
        weights: What its weights are ([`Weights`][bliptk.core.provenance.Weights]).
        image_encoder: [`ImageEncoder`][bliptk.model.image_encoder.ImageEncoder], usable on its own.
        text_decoder: [`TextDecoder`][bliptk.model.text_decoder.TextDecoder], usable on its own.
        tokenizer: [`Tokenizer`][bliptk.core.tokenizer.Tokenizer], usable on its own.
        model: The underlying ``transformers`` ``BlipForConditionalGeneration``.
        prompt: The checkpoint's own prompt, which a call that gives none captions after: a
            fine-tuned checkpoint's training prompt (its ``captioning.json``); None for the page's
            defaults (``"a photography of"``, ``"a video of"``).
    """

    runtime = "torch"

    def __init__(self, model, tokenizer: Tokenizer, image_encoder: ImageEncoder, name: str, weights: Weights, prompt: str | None = None):
        self.model = model
        self.tokenizer = tokenizer
        self.image_encoder = image_encoder
        self.text_decoder = TextDecoder(model.text_decoder)
        self.name = name
        self.weights = weights
        self.prompt = prompt

    def __repr__(self) -> str:
        weights = "pretrained" if self.pretrained else f"random weights (seed {self.weights.seed})"
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

    # What a runtime provides (bliptk.captioning.backend.CaptionBackend).

    @property
    def decoder(self) -> TextDecoder:
        return self.text_decoder

    def encode(self, pixels: np.ndarray) -> np.ndarray:
        """Image features ``(B, N, D)`` of preprocessed pixels ``(B, 3, S, S)``, as float32 NumPy."""
        return self.image_encoder(torch.as_tensor(pixels)).float().cpu().numpy()

    def _as_features(self, features: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(features).to(device=self.device, dtype=self.dtype)

    # What only torch does.

    def encode_image(self, images) -> torch.Tensor:
        """Image encoder features of one image or a list.

        Args:
            images: A path, PIL image, NumPy array or torch tensor, or a list of them.

        Returns:
            ``(B, N, D)`` features, ``(B, 577, D)`` at 384 px, in the model's dtype.
        """
        return self.image_encoder.encode(images)

    def caption(self, images, prompt=None, *, return_attention: bool = False, **arguments):
        captions = super().caption(images, prompt, return_attention=return_attention, **arguments)
        if return_attention:
            _attention_as_tensors(captions)
        return captions

    caption.__doc__ = CaptionBackend.caption.__doc__

    def caption_features(
        self, features, options: DecodingOptions | None = None, return_attention: bool = False, prompts: list[str] | None = None
    ) -> list[Caption]:
        """Decode captions from image features ``(B, N, D)`` (for example averaged video frames).

        Args:
            features: The images' features, a tensor or a NumPy array.
            options: Decoding options (default [`DecodingOptions`][bliptk.core.decoding.DecodingOptions]).
            return_attention: Fill each caption's ``cross_attention``, a ``(T, L, H, N)`` tensor.
            prompts: One prompt per image, of any lengths (None: ``options.prompt_text``).

        Returns:
            ``B * num_return_sequences`` captions, those of each image together.
        """
        if isinstance(features, torch.Tensor):
            features = features.float().cpu().numpy()
        captions = pipeline.caption_features(self, features, options or DecodingOptions(), prompts, return_attention)
        if return_attention:
            _attention_as_tensors(captions)
        return captions

    def embed(self, images, pooling: str = "cls", batch_size: int = 16, cache=None, progress: bool | None = None):
        """One vector per image, from the image encoder.

        Args:
            images: A folder (its image files, in [`bliptk.image_files()`][bliptk.core.files.image_files] order), a list of
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

        pipeline.say_if_random(self)
        return embed(self, images, pooling, batch_size, cache, progress)


def _attention_as_tensors(captions) -> None:
    """Each caption's cross-attention ``(T, L, H, N)`` as a torch tensor (the engine's are NumPy)."""
    for caption in captions if isinstance(captions, list) else [captions]:
        for each in caption if isinstance(caption, list) else [caption]:
            each.cross_attention = torch.from_numpy(each.cross_attention)
