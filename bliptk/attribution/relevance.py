"""Chefer, Gur and Wolf's relevance propagation (ICCV 2021), without LRP, through the image encoder, the decoder's self-attention and every cross-attention layer. One forward pass and, per token, one backward pass through the decoder and the image encoder."""

from __future__ import annotations

import torch

from .passes import Maps, Target, Visual, kept_pass, stacked

__all__ = ["relevance"]


def _head_mean(weights: torch.Tensor, gradient: torch.Tensor) -> torch.Tensor:
    """Chefer et al.'s rule 5: Ā = E_h[(∇A ⊙ A)+], ``(..., H, Q, K)`` -> ``(..., Q, K)``, in float32,
    outside the autograd graph (the rules that use it are arithmetic on values: kept in the graph,
    every token's products would stay alive with it)."""
    return (gradient.detach() * weights.detach()).clamp(min=0).mean(dim=-3).float()


def _normalized(relevance: torch.Tensor) -> torch.Tensor:
    """Eqs. 8-9: R̄ = (R - I) with rows scaled to sum to 1, plus I. A row with nothing beyond the
    identity (a decoder position after the explained one, which no gradient reaches) stays an
    identity row: 0/0 is 0 here, where Chefer's DETR code lets it be NaN and then zeroes every sum
    the NaN reaches."""
    identity = torch.eye(relevance.shape[-1], dtype=relevance.dtype, device=relevance.device)
    excess = relevance - identity
    sums = excess.sum(dim=-1, keepdim=True)
    return excess / torch.where(sums > 0, sums, torch.ones_like(sums)) + identity


def relevance(captioner, visual: Visual, target: Target, layer: int | None, options) -> Maps:
    kept = kept_pass(captioner, visual, target)
    self_weights, cross_weights = kept.attentions.self_attention, kept.attentions.cross_attention
    # Per token: dy/d(features), which carries the gradient on into the image encoder, and the
    # decoder's Ā (rule 5) of every layer.
    feature_gradients, self_bars, cross_bars = [], [], []
    for token in range(len(target.token_ids)):
        gradients = torch.autograd.grad(kept.logprobs[token], [kept.features, *self_weights, *cross_weights], retain_graph=True)
        feature_gradients.append(gradients[0])
        layers = len(self_weights)
        self_bars.append([_head_mean(a[0], g[0]) for a, g in zip(self_weights, gradients[1 : 1 + layers], strict=True)])
        cross_bars.append([_head_mean(a[0], g[0]) for a, g in zip(cross_weights, gradients[1 + layers :], strict=True)])
    image_relevance = _image_relevance(captioner, visual, feature_gradients)  # per token, R̄^ii (N, N)
    rows, text_rows = [], []
    for token, position in enumerate(target.positions):
        length = self_weights[0].shape[-1]
        r_qq = torch.eye(length, device=image_relevance.device)
        r_qi = image_relevance.new_zeros(length, image_relevance.shape[-1])
        for self_bar, cross_bar in zip(self_bars[token], cross_bars[token], strict=True):
            r_qq, r_qi = r_qq + self_bar @ r_qq, r_qi + self_bar @ r_qi  # rules 6 and 7
            r_qi = r_qi + _normalized(r_qq).T @ cross_bar @ image_relevance[token]  # rule 10
        rows.append(r_qi[position, 1:])
        text_rows.append(r_qq[position])
    patches = image_relevance.shape[-1] - 1
    return Maps(stacked(rows, patches), {"text_relevance": stacked(text_rows, len(target.sequence))})


def _image_relevance(captioner, visual: Visual, feature_gradients: list[torch.Tensor]) -> torch.Tensor:
    """R̄^ii of each token ``(T, N, N)``: the encoder's self-attention rule (R^ii += Ā R^ii per
    layer, from I) with each token's gradient, normalised (eqs. 8-9). A video's features are its
    frames' mean: each frame's R̄^ii is computed with the gradient at the pooled features, as if
    that frame alone had made them, and R̄^ii is the frames' mean (so that a video of identical
    frames is explained as its image; the rule is not linear in the gradient, and 1/F of it would
    weigh every frame's attention against the identity F times less). One frame's graph is kept at
    a time, and reused by every token."""
    encoder = captioner.image_encoder
    frames = visual.pixels.shape[0]
    tokens = len(feature_gradients)
    width = encoder.feature_shape[0]
    total = torch.zeros(tokens, width, width, device=encoder.device)
    for frame in visual.pixels.split(1):
        weights: list[torch.Tensor] = []
        with torch.enable_grad():
            features = encoder.run(frame, attentions=weights)
        for token, gradient in enumerate(feature_gradients):
            gradients = torch.autograd.grad(features, weights, grad_outputs=gradient.to(features.dtype), retain_graph=True)
            relevance = torch.eye(width, device=encoder.device)
            for a, g in zip(weights, gradients, strict=True):
                relevance = relevance + _head_mean(a[0], g[0]) @ relevance
            total[token] += _normalized(relevance) / frames
    return total
