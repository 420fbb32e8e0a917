"""BLIP's image encoder (a ViT) with its preprocessing."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..core.preprocess import Preprocessor
from .compiled import Compiled

__all__ = ["ImageEncoder", "TensorPreprocessor"]


class TensorPreprocessor(Preprocessor):
    """The [`Preprocessor`][bliptk.core.preprocess.Preprocessor] of the torch runtime: called on
    an image or a list, it gives pixel values ``(B, 3, S, S)`` as a float32 torch tensor."""

    def __call__(self, images) -> torch.Tensor:  # type: ignore[override]
        return torch.from_numpy(self.arrays(images))

    @classmethod
    def of(cls, preprocessor: Preprocessor) -> TensorPreprocessor:
        """The same preprocessing, giving tensors."""
        return cls(preprocessor.image_size, preprocessor.mean, preprocessor.std)


class ImageEncoder(nn.Module):
    """Images -> features ``(B, 1 + grid**2, D)``: ``(B, 577, 768)`` for ViT-B/16 at 384 px,
    ``(B, 577, 1024)`` for ViT-L/16.

    The first vector is the ViT's class token; the others are the ``grid x grid`` patches in
    row-major order. Features are the last layer's output after the final LayerNorm, the input the
    text decoder's cross-attention reads (not ``transformers``' ``pooler_output``, which applies
    that LayerNorm a second time).

    Args:
        vision_model: A ``transformers`` ``BlipVisionModel``.
        preprocessor: The matching [`Preprocessor`][bliptk.core.preprocess.Preprocessor] (kept as
            a [`TensorPreprocessor`][bliptk.model.image_encoder.TensorPreprocessor]).
    """

    def __init__(self, vision_model: nn.Module, preprocessor: Preprocessor):
        super().__init__()
        self.vision_model: Any = vision_model  # transformers' BlipVisionModel (its attributes are not nn.Module's)
        self.preprocessor = TensorPreprocessor.of(preprocessor)
        config: Any = vision_model.config
        self.image_size: int = config.image_size
        self.patch_size: int = config.patch_size
        self.grid_size: int = config.image_size // config.patch_size
        self.hidden_size: int = config.hidden_size
        # Set by compile_forward(): forward's maths compiled with inductor and freezing (None: eager).
        self.compiled: Compiled | None = None

    @property
    def device(self) -> torch.device:
        return self.vision_model.embeddings.patch_embedding.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.vision_model.embeddings.patch_embedding.weight.dtype

    @property
    def feature_shape(self) -> tuple[int, int]:
        """``(N, D)`` of one image's features."""
        return (self.grid_size**2 + 1, self.hidden_size)

    @torch.inference_mode()
    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Encode preprocessed pixels ``(B, 3, S, S)`` into features ``(B, N, D)``.

        The ViT's layers are run here with ``scaled_dot_product_attention`` (``transformers``' BLIP
        vision attention is eager only); the result equals ``BlipVisionModel``'s
        ``last_hidden_state`` (tested to 1e-4). After [`compile_forward()`][bliptk.model.image_encoder.ImageEncoder.compile_forward],
        the compiled maths run instead.
        """
        if self.compiled is not None:
            return self.compiled(pixel_values)  # run() moves the pixels to the encoder's device and dtype
        return self.run(pixel_values)

    def compile_forward(self) -> bool:
        """Compile [`forward()`][bliptk.model.image_encoder.ImageEncoder.forward] with inductor and
        freezing (see [`Compiled`][bliptk.model.compiled.Compiled]); explanations, which need gradients,
        keep running [`run()`][bliptk.model.image_encoder.ImageEncoder.run] eager. The compiling itself
        happens on the first batch of each size. Where inductor cannot compile, says so once and
        stays eager.

        Returns:
            True when it will run compiled; False when it stays eager.
        """
        if self.compiled is None:
            self.compiled = Compiled(self.run, self.device)
        return self.compiled.unavailable is None

    def run(
        self, pixel_values: torch.Tensor | None, attentions: list[torch.Tensor] | None = None, patches: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The encoder's maths, differentiable (not under ``inference_mode``): what
        [`forward()`][bliptk.model.image_encoder.ImageEncoder.forward] runs, and what explanations run with gradients.

        Args:
            pixel_values: ``(B, 3, S, S)`` preprocessed pixels (None when ``patches`` are given).
            attentions: A list to append each layer's attention probabilities ``(B, H, N, N)``
                to, computed explicitly (softmax of the scaled scores, as ``transformers``' eager
                attention) so that they can be kept with their gradients; None for the fused kernel.
            patches: The patch embeddings ``(B, grid**2, D)`` to use in place of the pixels'
                (integrated gradients walks them); the class token and position embeddings are added.

        Returns:
            Features ``(B, N, D)``.
        """
        vision = self.vision_model
        if patches is None:
            assert pixel_values is not None
            patches = self.patch_embeddings(pixel_values)
        hidden = self.embed_patches(patches)
        batch, length, width = hidden.shape
        for layer in vision.encoder.layers:
            attention = layer.self_attn
            heads = attention.num_heads
            # (B, N, 3D) -> 3 x (B, H, N, Dh)
            query, key, value = (
                attention.qkv(layer.layer_norm1(hidden)).view(batch, length, 3, heads, width // heads).permute(2, 0, 3, 1, 4)
            )
            if attentions is None:
                context = F.scaled_dot_product_attention(query, key, value)
            else:
                weights = torch.softmax((query @ key.transpose(-1, -2)) * attention.scale, dim=-1)
                attentions.append(weights)
                context = weights @ value
            hidden = hidden + attention.projection(context.transpose(1, 2).reshape(batch, length, width))
            hidden = hidden + layer.mlp(layer.layer_norm2(hidden))
        return vision.post_layernorm(hidden)

    def patch_embeddings(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """The patches' embeddings ``(B, grid**2, D)``: the patch projection alone, before the
        class token and the position embeddings."""
        embeddings = self.vision_model.embeddings
        pixels = pixel_values.to(device=self.device, dtype=self.dtype)
        return embeddings.patch_embedding(pixels).flatten(2).transpose(1, 2)

    def embed_patches(self, patches: torch.Tensor) -> torch.Tensor:
        """The encoder's input ``(B, N, D)`` from patch embeddings ``(B, grid**2, D)``: the class
        token first, the position embeddings added (as ``BlipVisionEmbeddings`` does)."""
        embeddings = self.vision_model.embeddings
        cls = embeddings.class_embedding.expand(patches.shape[0], 1, -1).to(patches.dtype)
        tokens = torch.cat([cls, patches], dim=1)
        return tokens + embeddings.position_embedding[:, : tokens.shape[1], :].to(patches.dtype)

    def encode(self, images) -> torch.Tensor:
        """Preprocess and encode one image or a list of images (paths, PIL, arrays, tensors).

        Returns:
            Features ``(B, N, D)`` (B = 1 for a single image).
        """
        return self(self.preprocessor(images))
