"""Chefer, Gur and Wolf's relevance propagation (ICCV 2021), without LRP, through the image encoder, the decoder's self-attention and every cross-attention layer. One forward pass and, per token, one backward pass through the decoder and the image encoder."""

from __future__ import annotations

import torch

from .explanation import report_progress
from .passes import Maps, Target, Visual, images_at_once, kept_passes, stacked

__all__ = ["relevance", "relevance_batch"]


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
    return relevance_batch(captioner, [visual], [target], layer, options)[0]


def relevance_batch(captioner, visuals: list[Visual], targets: list[Target], layer: int | None, options) -> list[Maps]:
    """Relevance of several images and their captions at once: one decoder pass, per token position
    one backward of the rows' summed y_t (each row's gradient is its own), and the image encoder's
    graph kept for as many images as fit in memory, reused by every token."""
    tokens = max(len(target.token_ids) for target in targets)
    # The progress reported: a unit per token position of the decoder's backward passes, then per
    # token of each encoder graph (a group of images, or a video's frame).
    group = images_at_once(captioner.image_encoder)
    images = [len(target.token_ids) for visual, target in zip(visuals, targets, strict=True) if not visual.video]
    videos = [visual.pixels.shape[0] * len(target.token_ids) for visual, target in zip(visuals, targets, strict=True) if visual.video]
    progress = _Progress(tokens + sum(max(images[start : start + group]) for start in range(0, len(images), group)) + sum(videos))
    kept = kept_passes(captioner, visuals, targets)
    self_weights, cross_weights = kept.attentions.self_attention, kept.attentions.cross_attention
    layers = len(self_weights)
    # Per row and token: dy/d(features), which carries the gradient on into the image encoder, and
    # the decoder's Ā (rule 5) of every layer.
    feature_gradients: list[list[torch.Tensor]] = [[] for _ in targets]
    self_bars: list[list[list[torch.Tensor]]] = [[] for _ in targets]
    cross_bars: list[list[list[torch.Tensor]]] = [[] for _ in targets]
    for token in range(tokens):
        progress.step()
        taking = [row for row, target in enumerate(targets) if token < len(target.token_ids)]
        gradients = torch.autograd.grad(
            kept.logprobs[taking, token].sum(), [kept.features, *self_weights, *cross_weights], retain_graph=True
        )
        for row in taking:
            feature_gradients[row].append(gradients[0][row : row + 1])
            self_bars[row].append([_head_mean(a[row], g[row]) for a, g in zip(self_weights, gradients[1 : 1 + layers], strict=True)])
            cross_bars[row].append([_head_mean(a[row], g[row]) for a, g in zip(cross_weights, gradients[1 + layers :], strict=True)])
    image_relevance = _images_relevance(captioner, visuals, feature_gradients, progress)  # per row, per token R̄^ii (N, N)
    results = []
    for row, target in enumerate(targets):
        rows, text_rows = [], []
        for token, position in enumerate(target.positions):
            length = self_weights[0].shape[-1]
            r_qq = torch.eye(length, device=kept.features.device)
            r_qi = kept.features.new_zeros(length, image_relevance[row].shape[-1])
            for self_bar, cross_bar in zip(self_bars[row][token], cross_bars[row][token], strict=True):
                r_qq, r_qi = r_qq + self_bar @ r_qq, r_qi + self_bar @ r_qi  # rules 6 and 7
                r_qi = r_qi + _normalized(r_qq).T @ cross_bar @ image_relevance[row][token]  # rule 10
            rows.append(r_qi[position, 1:])
            text_rows.append(r_qq[position, : len(target.sequence)])
        patches = captioner.image_encoder.feature_shape[0] - 1
        results.append(Maps(stacked(rows, patches), {"text_relevance": stacked(text_rows, len(target.sequence))}))
    report_progress(progress.total, progress.total)
    return results


class _Progress:
    """Counts relevance's units of work and reports each before it runs (a stop asked by the hook
    ends the work there)."""

    def __init__(self, total: int):
        self.done, self.total = 0, total

    def step(self) -> None:
        report_progress(min(self.done, self.total), self.total)
        self.done += 1


def _images_relevance(
    captioner, visuals: list[Visual], feature_gradients: list[list[torch.Tensor]], progress: _Progress
) -> list[torch.Tensor]:
    """Each row's R̄^ii per token ``(T, N, N)``: images (not videos) in groups that fit in memory,
    one encoder graph per group; a video alone, frame by frame (see ``_image_relevance``)."""
    results: list[torch.Tensor | None] = [None] * len(visuals)
    images = [row for row, visual in enumerate(visuals) if not visual.video]
    group = images_at_once(captioner.image_encoder)
    for start in range(0, len(images), group):
        rows = images[start : start + group]
        for row, relevance in zip(
            rows, _group_relevance(captioner, [visuals[r] for r in rows], [feature_gradients[r] for r in rows], progress), strict=True
        ):
            results[row] = relevance
    for row, visual in enumerate(visuals):
        if visual.video:
            results[row] = _image_relevance(captioner, visual, feature_gradients[row], progress)
    return [relevance for relevance in results if relevance is not None]


def _group_relevance(
    captioner, visuals: list[Visual], feature_gradients: list[list[torch.Tensor]], progress: _Progress
) -> list[torch.Tensor]:
    """R̄^ii of images explained together: their encoder graph kept once, and per token one backward
    with every image's gradient at its own row."""
    encoder = captioner.image_encoder
    width = encoder.feature_shape[0]
    pixels = torch.cat([visual.pixels for visual in visuals])
    weights: list[torch.Tensor] = []
    with torch.enable_grad():
        features = encoder.run(pixels, attentions=weights)
    totals = [torch.zeros(len(gradients), width, width, device=encoder.device) for gradients in feature_gradients]
    for token in range(max(len(gradients) for gradients in feature_gradients)):
        progress.step()
        taking = [row for row, gradients in enumerate(feature_gradients) if token < len(gradients)]
        outputs = torch.zeros_like(features)
        for row in taking:
            outputs[row] = feature_gradients[row][token][0].to(features.dtype)
        gradients = torch.autograd.grad(features, weights, grad_outputs=outputs, retain_graph=True)
        for row in taking:
            relevance = torch.eye(width, device=encoder.device)
            for a, g in zip(weights, gradients, strict=True):
                relevance = relevance + _head_mean(a[row], g[row]) @ relevance
            totals[row][token] = _normalized(relevance)
    return totals


def _image_relevance(captioner, visual: Visual, feature_gradients: list[torch.Tensor], progress: _Progress) -> torch.Tensor:
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
            progress.step()
            gradients = torch.autograd.grad(features, weights, grad_outputs=gradient.to(features.dtype), retain_graph=True)
            relevance = torch.eye(width, device=encoder.device)
            for a, g in zip(weights, gradients, strict=True):
                relevance = relevance + _head_mean(a[0], g[0]) @ relevance
            total[token] += _normalized(relevance) / frames
    return total
