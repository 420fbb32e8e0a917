"""Grad-CAM on cross-attention: LAVIS's ``compute_gradcam``, adapted from image-text matching to captioning: the mean over heads of ``A * clamp(dy/dA, min=0)``, A the cross-attention probabilities of one decoder layer at the token's query. One forward pass and one backward pass through the decoder per token; a batch of images shares them (one pass for all, one backward per token position)."""

from __future__ import annotations

import torch

from .passes import Maps, Target, Visual, kept_passes, stacked

__all__ = ["gradcam", "gradcam_batch"]


def gradcam(captioner, visual: Visual, target: Target, layer: int | None, options) -> Maps:
    return gradcam_batch(captioner, [visual], [target], layer, options)[0]


def gradcam_batch(captioner, visuals: list[Visual], targets: list[Target], layer: int | None, options) -> list[Maps]:
    """Grad-CAM of several images and their captions at once: one pass, and per token position one
    backward of the sum of the rows' y_t (each row's gradient is its own: rows share nothing)."""
    assert layer is not None  # resolved_layer gives Grad-CAM its layer
    kept = kept_passes(captioner, visuals, targets)
    weights = kept.attentions.cross_attention[layer]  # (B, H, S, N)
    rows: list[list[torch.Tensor]] = [[] for _ in targets]
    for token in range(max(len(target.token_ids) for target in targets)):
        taking = [row for row, target in enumerate(targets) if token < len(target.token_ids)]
        (gradient,) = torch.autograd.grad(kept.logprobs[taking, token].sum(), weights, retain_graph=True)
        for row in taking:
            position = targets[row].positions[token]
            rows[row].append((weights[row, :, position].detach() * gradient[row, :, position].clamp(min=0)).mean(dim=0)[1:])
    return [Maps(stacked(maps, weights.shape[-1] - 1)) for maps in rows]
