"""Integrated Gradients (Sundararajan et al. 2017, through ``captum``) on the patch embeddings, from patches of zeros, summed per patch. ``ig_steps`` forward and backward passes of the whole model per token."""

from __future__ import annotations

import torch

from ..core.optional import optional
from .explanation import report_progress
from .passes import Maps, Target, Visual, images_at_once, stacked, token_logprobs

__all__ = ["integrated_gradients"]


def integrated_gradients(captioner, visual: Visual, target: Target, layer: int | None, options) -> Maps:
    optional("captum")
    from captum.attr import IntegratedGradients

    encoder = captioner.image_encoder
    frames = visual.pixels.shape[0]
    with torch.no_grad():
        patches = encoder.patch_embeddings(visual.pixels)  # (F, grid**2, D)

    steps = options.ig_steps * len(target.token_ids)  # the progress reported: path steps over all tokens
    done = 0

    def logprobs_of(batch: torch.Tensor) -> torch.Tensor:  # (B, F, grid**2, D) -> (B, T)
        nonlocal done
        # Before each batch of path steps (captum's internal batches), so that a stop asked by the
        # hook ends the work before the next batch; the convergence check's passes run without
        # gradient and are no steps.
        report_progress(min(done, steps), steps)
        if batch.requires_grad:
            done += batch.shape[0]
        features = encoder.run(None, patches=batch.flatten(0, 1))
        pooled = features.view(batch.shape[0], frames, *features.shape[1:]).float().mean(dim=1)
        return token_logprobs(captioner, pooled, target)

    integrated = IntegratedGradients(logprobs_of)
    inputs = patches.unsqueeze(0)
    rows, gaps = [], []
    with torch.enable_grad():
        for token in range(len(target.token_ids)):
            attributions, gap = integrated.attribute(
                inputs,
                baselines=torch.zeros_like(inputs),
                target=token,
                n_steps=options.ig_steps,
                internal_batch_size=max(1, images_at_once(encoder) // frames),
                return_convergence_delta=True,
            )
            rows.append(attributions[0].float().sum(dim=(0, 2)))  # over frames and channels: (grid**2,)
            gaps.append(gap.reshape(()).float())
            done = options.ig_steps * (token + 1)
            report_progress(done, steps)
    return Maps(stacked(rows, patches.shape[1]), {"completeness_gap": stacked(gaps, None)})
