"""The names of [`explain()`][bliptk.attribution.explanation.explain]'s methods and its defaults, importable
without torch (the command line's choices come from here)."""

from __future__ import annotations

__all__ = ["DEFAULT_IG_STEPS", "EXPLANATION_METHODS", "METHOD_NAMES"]

EXPLANATION_METHODS = ("attention", "gradcam", "relevance", "rollout", "integrated_gradients")
"""The methods [`explain()`][bliptk.attribution.explanation.explain] knows, in the order the guide presents them."""
METHOD_NAMES = {
    "attention": "cross-attention",
    "gradcam": "Grad-CAM",
    "relevance": "relevance",
    "rollout": "attention rollout",
    "integrated_gradients": "integrated gradients",
}
"""Each method's name in figures."""
DEFAULT_IG_STEPS = 32
"""Integrated gradients' steps along the path from the baseline (captum's Gauss-Legendre rule):
the completeness gap stays under 5% of y(image) - y(baseline) on the tested checkpoints."""
