"""Attention rollout (Abnar and Zuidema 2020), composed for the encoder-decoder as in Chefer et al.'s baseline. One forward pass, no gradients."""

from __future__ import annotations

import torch

from ..model.text_decoder import DecoderAttentions
from .passes import Maps, Target, Visual, encoded, stacked, token_logprobs

__all__ = ["attention_rollout"]


def rollout(weights: list[torch.Tensor]) -> torch.Tensor:
    """Attention rollout over layers' head-averaged weights ``(Q, Q)``, as Chefer et al.'s baseline
    computes it: each layer's ``A + I`` with rows scaled to sum to 1, multiplied from the first
    layer up."""
    identity = torch.eye(weights[0].shape[-1], dtype=weights[0].dtype, device=weights[0].device)
    joint = None
    for layer_weights in weights:
        residual = layer_weights + identity
        residual = residual / residual.sum(dim=-1, keepdim=True)
        joint = residual if joint is None else residual @ joint
    assert joint is not None
    return joint


def attention_rollout(captioner, visual: Visual, target: Target, layer: int | None, options) -> Maps:
    attentions = DecoderAttentions()
    with torch.no_grad():
        token_logprobs(captioner, encoded(captioner, visual), target, attentions)
        image = torch.stack([_image_rollout(captioner, frame) for frame in visual.pixels.split(1)]).mean(
            dim=0
        )  # a video's: its frames' mean
        self_means = [w[0].float().mean(dim=0) for w in attentions.self_attention]  # (S, S)
        last_cross = attentions.cross_attention[-1][0].float().mean(dim=0)  # (S, N)
        rows = []
        for position in target.positions:
            # The decoder's rollout over the positions up to p (what the model had read when it
            # chose the token), so that later tokens never enter a map.
            prefix = position + 1
            r_qq = rollout([w[:prefix, :prefix] for w in self_means])
            rows.append((r_qq.T @ last_cross[:prefix] @ image)[position, 1:])
    return Maps(stacked(rows, image.shape[-1] - 1))


def _image_rollout(captioner, frame: torch.Tensor) -> torch.Tensor:
    """The image encoder's rollout ``(N, N)`` for one frame ``(1, 3, S, S)``."""
    weights: list[torch.Tensor] = []
    captioner.image_encoder.run(frame, attentions=weights)
    return rollout([w[0].float().mean(dim=0) for w in weights])
