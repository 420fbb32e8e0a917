"""Shapley value sampling (Castro et al. 2009) through ``captum``'s ``ShapleyValueSampling``: squares of
patches added to the masked image (the preprocessed mean colour) in random orders, each square's
value its mean marginal gain in the token's target. No gradient, so any runtime is explained.
``shapley_samples`` orders of ``squares + 1`` forward passes each, for all tokens at once; the orders
come from ``shapley_seed``, so a map is reproducible."""

from __future__ import annotations

import torch

from ..core.optional import optional
from .masking import ablation_maps
from .passes import Maps, Target, Visual

__all__ = ["shapley"]

_PERTURBATIONS_AT_ONCE = 8


def shapley(captioner, visual: Visual, target: Target, layer: int | None, options) -> Maps:
    optional("captum")
    from captum.attr import ShapleyValueSampling

    def attribute(forward, inputs, mask):
        with torch.random.fork_rng(devices=[]):  # every token's call draws the same orders (and the caller's generator is left alone)
            torch.manual_seed(options.shapley_seed)
            return ShapleyValueSampling(forward).attribute(
                inputs, baselines=0.0, feature_mask=mask, n_samples=options.shapley_samples, perturbations_per_eval=_PERTURBATIONS_AT_ONCE
            )

    # All squares masked, then each order adds its squares one by one.
    return ablation_maps(
        captioner, visual, target, options.shapley_window, attribute, lambda squares: options.shapley_samples * squares + 1
    )
