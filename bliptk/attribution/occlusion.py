"""Occlusion (Zeiler and Fergus 2014) through ``captum``'s ``FeatureAblation``: each ``window x window``
square of patches masked with the preprocessed mean colour, the map the drop of the token's target
``y(image) - y(masked)``. No gradient, so any runtime (an ONNX export too) is explained. One
forward pass of the whole model per square, for all tokens at once."""

from __future__ import annotations

from ..core.optional import optional
from .masking import ablation_maps
from .passes import Maps, Target, Visual

__all__ = ["occlusion"]

_PERTURBATIONS_AT_ONCE = 8


def occlusion(captioner, visual: Visual, target: Target, layer: int | None, options) -> Maps:
    optional("captum")
    from captum.attr import FeatureAblation

    def attribute(forward, inputs, mask):
        return FeatureAblation(forward).attribute(inputs, baselines=0.0, feature_mask=mask, perturbations_per_eval=_PERTURBATIONS_AT_ONCE)

    # The image itself, then each square masked.
    return ablation_maps(captioner, visual, target, options.occlusion_window, attribute, lambda squares: squares + 1)
