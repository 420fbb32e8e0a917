"""The page's cross-attention maps, as an explanation method: where each token looked, not what made the model choose it. One forward pass."""

from __future__ import annotations

import torch

from ..model.text_decoder import DecoderAttentions
from .passes import Maps, Target, Visual, encoded, token_logprobs

__all__ = ["cross_attention"]


def cross_attention(captioner, visual: Visual, target: Target, layer: int | None, options) -> Maps:
    from ..model.attention import cross_attention_maps

    attentions = DecoderAttentions()
    with torch.no_grad():
        token_logprobs(captioner, encoded(captioner, visual), target, attentions)
    positions = target.positions
    weights = torch.stack([layer_weights[0, :, positions] for layer_weights in attentions.cross_attention], dim=0)  # (L, H, T, N)
    maps = cross_attention_maps(weights.permute(2, 0, 1, 3).float(), layer=-1 if layer is None else layer)
    return Maps(maps.flatten(1))
