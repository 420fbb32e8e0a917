"""Grad-CAM on cross-attention: LAVIS's ``compute_gradcam``, adapted from image-text matching to captioning: the mean over heads of ``A * clamp(dy/dA, min=0)``, A the cross-attention probabilities of one decoder layer at the token's query. One forward pass and one backward pass through the decoder per token."""

from __future__ import annotations

import torch

from .passes import Maps, Target, Visual, kept_pass, stacked

__all__ = ["gradcam"]


def gradcam(captioner, visual: Visual, target: Target, layer: int | None, options) -> Maps:
    assert layer is not None  # resolved_layer gives Grad-CAM its layer
    kept = kept_pass(captioner, visual, target)
    weights = kept.attentions.cross_attention[layer]  # (1, H, S, N)
    rows = []
    for token, position in enumerate(target.positions):
        (gradient,) = torch.autograd.grad(kept.logprobs[token], weights, retain_graph=True)
        rows.append((weights[0, :, position].detach() * gradient[0, :, position].clamp(min=0)).mean(dim=0)[1:])
    return Maps(stacked(rows, weights.shape[-1] - 1))
