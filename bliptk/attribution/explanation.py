"""Why the model chose each word: one map over the image patches per caption token.

[`explain()`][bliptk.attribution.explanation.explain] runs the caption through the model once, teacher-forced
(the prompt and the caption's tokens as the decoder's input), keeping every attention
probability, and makes one ``(grid, grid)`` map per token with one of five methods. Token t is
predicted at decoder position p; its target is y = log p(w_t), the log-softmax of the logits at p.

* ``"attention"``: the cross-attention the page draws ([`attention_maps()`][bliptk.model.attention.attention_maps] with its defaults).
  Where the token looked, not what made the model choose it. One forward pass.
* ``"gradcam"``: LAVIS's ``compute_gradcam``, adapted from image-text matching to captioning: the
  mean over heads of ``A * clamp(dy/dA, min=0)``, A the cross-attention probabilities of decoder
  layer ``layer`` at query p. One forward pass and one backward pass through the decoder per token.
* ``"relevance"``: Chefer, Gur and Wolf's relevance propagation (ICCV 2021), without LRP, through
  the image encoder, the decoder's self-attention and every cross-attention layer. One forward pass
  and, per token, one backward pass through the decoder and the image encoder.
* ``"rollout"``: attention rollout (Abnar and Zuidema 2020) composed for the encoder-decoder as in
  Chefer et al.'s baseline. One forward pass, no gradients.
* ``"integrated_gradients"``: Integrated Gradients (Sundararajan et al. 2017, through ``captum``)
  on the patch embeddings, from patches of zeros, summed per patch. ``ig_steps`` forward and
  backward passes of the whole model per token.

The formulas and costs are in the guide (docs/guide/explaining.md). Explaining never changes a
caption: [`Captioner.caption()`][bliptk.model.captioner.Captioner.caption] stays gradient-free, and the model's weights are only read.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from ..core import pipeline
from ..core.decoding import Caption, DecodingOptions, prompt_ids
from ..core.errors import InvalidOptionError, PromptWarning, check_positive_int, option_error
from ..core.optional import optional
from ..core.video import VideoFrames, VideoOptions, is_video, video_frames
from ..model.text_decoder import DecoderAttentions, GrowingCache
from .registry import DEFAULT_IG_STEPS, EXPLANATION_METHODS, METHOD_NAMES

__all__ = ["Explanation", "explain"]

# What one integrated-gradients batch may keep for its backward pass: as many images (frames) as fit
# go through the encoder together (ViT-B/16: 2, ViT-L/16: 1), whatever ig_steps is.
_IG_GRAPH_BYTES = 3 * 2**30


@dataclass(eq=False)
class Explanation:
    """What [`explain()`][bliptk.attribution.explanation.explain] returns: one map per caption token.

    Attributes:
        maps: ``(T, grid, grid)`` float32, one map per caption token (grid = 24 at 384 px with
            16 px patches). Higher means more (each method's own units; the figures rescale each
            map to its range).
        tokens: The caption's WordPiece tokens, T of them (the ending ``[SEP]`` not included).
        token_ids: Their ids.
        method: The method that made the maps (one of
            [`EXPLANATION_METHODS`][bliptk.attribution.registry.EXPLANATION_METHODS]).
        layer: The decoder layer of ``"attention"`` and ``"gradcam"`` (0-based), else None.
        prompt: The prompt the caption follows.
        text: The caption, prompt included.
        text_relevance: For ``"relevance"``, ``(T, P + T)``: each token's relevance over the
            decoder's input positions (``[DEC]`` and the prompt's P - 1 tokens, then the caption's
            tokens), row t being row p of R^qq, identity term included; later positions get 0.
            Else None.
        completeness_gap: For ``"integrated_gradients"``, ``(T,)``: the sum of each token's
            attributions minus ``y(image) - y(baseline)``, as captum reports it. Else None.
        provenance: The model and weights, and the options the maps were made with.
    """

    maps: np.ndarray
    tokens: list[str]
    token_ids: list[int]
    method: str
    layer: int | None
    prompt: str
    text: str
    text_relevance: np.ndarray | None = None
    completeness_gap: np.ndarray | None = None
    provenance: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        """The method's name in figures (``"Grad-CAM"``, ...)."""
        return METHOD_NAMES[self.method]

    def __len__(self) -> int:
        return len(self.tokens)

    def __repr__(self) -> str:
        layer = "" if self.layer is None else f", layer {self.layer}"
        return f"Explanation({self.method}{layer}, {len(self.tokens)} tokens of {self.text!r})"


# --- what is explained ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """The caption being explained, as the decoder reads it teacher-forced.

    Attributes:
        prompt: The prompt text.
        prompt_ids: ``[DEC]`` and the prompt's ids (P of them).
        token_ids: The caption's ids (T of them), each predicted at position ``P - 1 + t``.
        text: The caption, prompt included.
    """

    prompt: str
    prompt_ids: list[int]
    token_ids: list[int]
    text: str

    @property
    def sequence(self) -> list[int]:
        """The decoder's input, ``P + T`` ids."""
        return self.prompt_ids + self.token_ids

    @property
    def positions(self) -> list[int]:
        """The position that predicts each caption token."""
        return [len(self.prompt_ids) - 1 + t for t in range(len(self.token_ids))]


@dataclass
class Visual:
    """An image, or a video's frames, as the image encoder takes them.

    Attributes:
        pixels: ``(F, 3, S, S)`` preprocessed frames (F = 1 for an image).
        video: Whether it is a video, whose features are its frames' mean.
        features: The pooled features ``(1, N, D)``, once [`encoded()`][bliptk.attribution.explanation.encoded] has computed them.
    """

    pixels: torch.Tensor
    video: bool
    features: torch.Tensor | None = None


def visual_input(captioner, image, video_options: VideoOptions) -> Visual:
    """What the encoder reads of an image or video (as ``caption`` recognises videos).

    Raises:
        InvalidOptionError: A video with ``pooling="concat"``: explanations map the grid of the
            pooled features.
    """
    if not is_video(image):
        return Visual(captioner.preprocessor(image), video=False)
    if video_options.pooling != "mean":
        raise option_error("explanations need a video's mean features (pooling='mean'), whose patches form one grid", "pooling")
    frames = image if isinstance(image, VideoFrames | list | tuple) else video_frames(image, video_options.num_frames)
    if not frames:
        raise InvalidOptionError("a video needs at least one frame")
    return Visual(captioner.preprocessor(list(frames)), video=True)


def explained_target(captioner, visual: Visual, caption, prompt: str | None, options: DecodingOptions, decoding_given: bool) -> Target:
    """The caption to explain: a [`Caption`][bliptk.core.decoding.Caption] (along its own prompt), a string
    (teacher-forced after the prompt; a string that starts with the prompt is taken whole), or None
    (captioned now, with ``options``)."""
    tokenizer = captioner.tokenizer
    if isinstance(caption, Caption):
        if decoding_given:
            raise InvalidOptionError("decoding options apply when explain captions the image itself (caption=None), not to a given Caption")
        if prompt is not None and prompt != caption.prompt:
            raise option_error(f"the caption was made from the prompt {caption.prompt!r}, not {prompt!r}; drop prompt=", "prompt")
        ids = prompt_ids(tokenizer, caption.prompt, len(caption.token_ids), captioner.max_positions)
        return Target(caption.prompt, ids, list(caption.token_ids), caption.text)
    prompt_text = pipeline.request_prompt(prompt, options, visual.video)
    if caption is None:
        features = encoded(captioner, visual).numpy()
        captions = pipeline.caption_features(captioner, features, options, [prompt_text])
        if len(captions) != 1:
            raise option_error("explain explains one caption: num_return_sequences must be 1", "num_return_sequences")
        return explained_target(captioner, visual, captions[0], None, options, False)
    if not isinstance(caption, str):
        raise InvalidOptionError(f"caption must be a Caption, a string or None, got {type(caption).__name__}")
    if decoding_given:
        raise InvalidOptionError("decoding options apply when explain captions the image itself (caption=None), not to a given caption")
    words = tokenizer.encode(caption)[1:]
    ids = prompt_ids(tokenizer, prompt_text, 0, captioner.max_positions)
    if len(ids) > 1 and words[: len(ids) - 1] == ids[1:]:  # the caption as Caption.text gives it: the prompt first
        words = words[len(ids) - 1 :]
    if not words:
        raise InvalidOptionError(f"the caption {caption!r} has no tokens after the prompt {prompt_text!r} to explain")
    if len(ids) + len(words) > captioner.max_positions:
        raise InvalidOptionError(
            f"the caption has {len(words)} tokens; after the prompt's {len(ids)} positions the decoder has room for "
            f"{captioner.max_positions - len(ids)}: explain a shorter caption"
        )
    unknown = tokenizer.unknown_text(caption)
    if unknown:
        import warnings

        warnings.warn(
            f"caption {caption!r} has text outside BLIP's vocabulary, explained as [UNK]: {', '.join(map(repr, unknown))}",
            PromptWarning,
            stacklevel=3,
        )
    return Target(prompt_text, ids, words, tokenizer.decode(ids[1:] + words).strip())


# --- passes through the model ----------------------------------------------------------------------------


def pixels_fingerprint(pixels: torch.Tensor) -> str:
    """A hash of preprocessed frames ``(F, 3, S, S)`` (16 hex digits): which image or video an
    explanation is of. Of the distinct frames: a video of one picture repeated is that picture."""
    import hashlib

    distinct = torch.unique(pixels.detach().float().cpu(), dim=0)
    return hashlib.sha256(distinct.contiguous().numpy().tobytes()).hexdigest()[:16]


def encoded(captioner, visual: Visual, batch_size: int = 8) -> torch.Tensor:
    """The pooled image features ``(1, N, D)`` (float32, no graph): an image's, or the mean of a
    video's frames'. Computed once per [`Visual`][bliptk.attribution.explanation.Visual] (captioning it first and explaining it share them)."""
    if visual.features is None:
        encoder = captioner.image_encoder
        with torch.no_grad():
            total = sum(encoder.run(chunk).float().sum(0, keepdim=True) for chunk in visual.pixels.split(batch_size))
        assert isinstance(total, torch.Tensor)
        visual.features = total / visual.pixels.shape[0]
    return visual.features.detach().clone()


def token_logprobs(captioner, features: torch.Tensor, target: Target, attentions: DecoderAttentions | None = None) -> torch.Tensor:
    """y_t = log p(w_t) of every caption token, teacher-forced: ``(B, T)`` for features ``(B, N, D)``.

    One pass of the decoder over the prompt and the caption ([`TextDecoder.run()`][bliptk.model.text_decoder.TextDecoder.run]); with
    ``attentions``, it keeps every layer's attention probabilities (in the graph, when the
    features or the weights carry one).
    """
    decoder = captioner.text_decoder
    rows = features.shape[0]
    features = features.to(device=decoder.device, dtype=decoder.dtype)
    ids = torch.tensor([target.sequence] * rows, device=decoder.device)
    keys, values = decoder.cross_keys_values(features)
    nothing = features.new_zeros(rows, decoder.num_heads, 0, decoder.head_dim)
    cache = GrowingCache([nothing] * len(keys), [nothing] * len(keys))
    logits = decoder.run(ids, 0, cache, keys, values, attentions=attentions)
    start = len(target.prompt_ids) - 1
    logprobs = torch.log_softmax(logits[:, start : start + len(target.token_ids)].float(), dim=-1)
    chosen = torch.tensor(target.token_ids, device=decoder.device).view(1, -1, 1).expand(rows, -1, 1)
    return logprobs.gather(-1, chosen).squeeze(-1)


@dataclass
class _Pass:
    """One teacher-forced pass kept for gradients: the features (a leaf), y ``(T,)``, and the
    decoder's attention probabilities."""

    features: torch.Tensor
    logprobs: torch.Tensor
    attentions: DecoderAttentions


def _kept_pass(captioner, visual: Visual, target: Target) -> _Pass:
    features = encoded(captioner, visual).requires_grad_(True)  # gradients flow into the image from here
    attentions = DecoderAttentions()
    with torch.enable_grad():
        logprobs = token_logprobs(captioner, features, target, attentions)[0]
    return _Pass(features, logprobs, attentions)


def _grid(features: int) -> int:
    grid = math.isqrt(features - 1)
    if grid * grid != features - 1:
        raise InvalidOptionError(f"{features} image features are not 1 + a square grid of patches")
    return grid


# --- the methods -----------------------------------------------------------------------------------------


@dataclass
class _Maps:
    """A method's result: ``(T, N - 1)`` patch scores and its extras."""

    patches: torch.Tensor
    text_relevance: torch.Tensor | None = None
    completeness_gap: torch.Tensor | None = None


def _attention(captioner, visual: Visual, target: Target, layer: int | None, ig_steps: int) -> _Maps:
    from ..model.attention import cross_attention_maps

    attentions = DecoderAttentions()
    with torch.no_grad():
        token_logprobs(captioner, encoded(captioner, visual), target, attentions)
    positions = target.positions
    weights = torch.stack([layer_weights[0, :, positions] for layer_weights in attentions.cross_attention], dim=0)  # (L, H, T, N)
    maps = cross_attention_maps(weights.permute(2, 0, 1, 3).float(), layer=-1 if layer is None else layer)
    return _Maps(maps.flatten(1))


def _gradcam(captioner, visual: Visual, target: Target, layer: int | None, ig_steps: int) -> _Maps:
    assert layer is not None  # resolved_layer gives Grad-CAM its layer
    kept = _kept_pass(captioner, visual, target)
    weights = kept.attentions.cross_attention[layer]  # (1, H, S, N)
    rows = []
    for token, position in enumerate(target.positions):
        (gradient,) = torch.autograd.grad(kept.logprobs[token], weights, retain_graph=True)
        rows.append((weights[0, :, position].detach() * gradient[0, :, position].clamp(min=0)).mean(dim=0)[1:])
    return _Maps(_stacked(rows, weights.shape[-1] - 1))


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


def _relevance(captioner, visual: Visual, target: Target, layer: int | None, ig_steps: int) -> _Maps:
    kept = _kept_pass(captioner, visual, target)
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
    return _Maps(_stacked(rows, patches), text_relevance=_stacked(text_rows, len(target.sequence)))


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


def _rollout(captioner, visual: Visual, target: Target, layer: int | None, ig_steps: int) -> _Maps:
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
    return _Maps(_stacked(rows, image.shape[-1] - 1))


def _image_rollout(captioner, frame: torch.Tensor) -> torch.Tensor:
    """The image encoder's rollout ``(N, N)`` for one frame ``(1, 3, S, S)``."""
    weights: list[torch.Tensor] = []
    captioner.image_encoder.run(frame, attentions=weights)
    return rollout([w[0].float().mean(dim=0) for w in weights])


def _integrated_gradients(captioner, visual: Visual, target: Target, layer: int | None, ig_steps: int) -> _Maps:
    optional("captum")
    from captum.attr import IntegratedGradients

    encoder = captioner.image_encoder
    frames = visual.pixels.shape[0]
    with torch.no_grad():
        patches = encoder.patch_embeddings(visual.pixels)  # (F, grid**2, D)

    def logprobs_of(batch: torch.Tensor) -> torch.Tensor:  # (B, F, grid**2, D) -> (B, T)
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
                n_steps=ig_steps,
                internal_batch_size=max(1, _images_at_once(encoder) // frames),
                return_convergence_delta=True,
            )
            rows.append(attributions[0].float().sum(dim=(0, 2)))  # over frames and channels: (grid**2,)
            gaps.append(gap.reshape(()).float())
    return _Maps(_stacked(rows, patches.shape[1]), completeness_gap=_stacked(gaps, None))


def _images_at_once(encoder) -> int:
    """How many images' encoder graphs fit in [`_IG_GRAPH_BYTES`][bliptk.attribution.explanation._IG_GRAPH_BYTES]: per layer, each
    head's attention probabilities and their scores ``(N, N)``, and about 48 activations ``(N, D)``
    of 4 bytes (a measured upper bound of what autograd keeps)."""
    tokens, width = encoder.feature_shape
    layers = len(encoder.vision_model.encoder.layers)
    heads = encoder.vision_model.encoder.layers[0].self_attn.num_heads
    per_image = layers * 4 * (2 * heads * tokens**2 + 48 * tokens * width)
    return max(1, _IG_GRAPH_BYTES // per_image)


def _stacked(rows: list[torch.Tensor], width: int | None) -> torch.Tensor:
    """Rows stacked, detached; ``(0, width)`` for none (a caption of no tokens)."""
    if rows:
        return torch.stack([row.detach().float().cpu() for row in rows])
    return torch.zeros((0,) if width is None else (0, width))


_GRADIENT_METHODS = ("gradcam", "relevance", "integrated_gradients")
_METHODS: dict[str, Callable[..., _Maps]] = {
    "attention": _attention,
    "gradcam": _gradcam,
    "relevance": _relevance,
    "rollout": _rollout,
    "integrated_gradients": _integrated_gradients,
}


# --- the verb --------------------------------------------------------------------------------------------


def resolved_layer(method: str, layer, layers: int) -> int | None:
    """The decoder layer a method uses, 0-based: ``"attention"``'s default is the last (the
    page's); ``"gradcam"``'s the middle, ``layers // 2``: 6 of BLIP's 12, the layer LAVIS's
    ``compute_gradcam`` takes for BLIP (``block_num=6``), as ALBEF, whose Grad-CAM LAVIS adapted,
    takes the middle of its fusion layers. The other methods use every layer.

    Raises:
        InvalidOptionError: An unknown method, a layer out of range, or a layer for a method that
            takes none.
    """
    if not isinstance(method, str) or method not in _METHODS:
        raise option_error(f"method must be one of {', '.join(EXPLANATION_METHODS)}, got {method!r}", "method")
    if method not in ("attention", "gradcam"):
        if layer is not None:
            raise option_error(f"{method} uses all decoder layers: drop layer (it applies to attention and gradcam)", "layer")
        return None
    if layer is None:
        return layers - 1 if method == "attention" else layers // 2
    if isinstance(layer, bool) or not isinstance(layer, int) or not -layers <= layer < layers:
        raise option_error(
            f"layer must be an integer in [{-layers}, {layers - 1}] (the decoder has {layers} layers), got {layer!r}", "layer"
        )
    return layer % layers


def explain(
    captioner,
    image,
    caption: Caption | str | None = None,
    *,
    method: str = "gradcam",
    layer: int | None = None,
    prompt: str | None = None,
    ig_steps: int = DEFAULT_IG_STEPS,
    **decoding_options,
) -> Explanation | list[Explanation]:
    """One map per caption token: which image patches made the model choose it.

    Args:
        captioner: A [`Captioner`][bliptk.model.captioner.Captioner] (explanations need torch's gradients; an ONNX
            export captions only).
        image: What ``caption`` takes: a path, PIL image, array or tensor; or a video (file or
            frames), whose pooled features are explained.
        caption: A [`Caption`][bliptk.core.decoding.Caption] from ``captioner.caption`` (its tokens are explained, along
            its own prompt); a string, explained teacher-forced after ``prompt`` (a string that
            starts with the prompt, as ``Caption.text`` does, is taken whole); or None: the image
            is captioned first, with ``decoding_options``.
        method: One of [`EXPLANATION_METHODS`][bliptk.attribution.registry.EXPLANATION_METHODS] (see the module's description).
        layer: The decoder layer (0-based; negative counts from the end) of ``"attention"``
            (default: the last, the page's) and ``"gradcam"`` (default: the middle).
        prompt: The prompt of a string caption, or of the caption made for None (default: "a
            photography of", or "a video of" for a video).
        ig_steps: Steps of integrated gradients' path.
        **decoding_options: For the caption made when ``caption`` is None: fields of
            [`DecodingOptions`][bliptk.core.decoding.DecodingOptions] (``max_new_tokens``, ``num_beams``, ...); and fields of
            [`VideoOptions`][bliptk.core.video.VideoOptions] (``num_frames``) for a video.

    Returns:
        An [`Explanation`][bliptk.attribution.explanation.Explanation]: ``maps`` ``(T, grid, grid)``, ``tokens``, ``method``,
        ``layer``, and ``text_relevance`` for ``"relevance"``. For a list of images (not a video's
        [`VideoFrames`][bliptk.core.video.VideoFrames]), a list: one explanation per image, of the caption
        given for it (``caption`` a list as long), or of the same ``caption``.

    Raises:
        InvalidOptionError: An unknown method or option, a layer out of range, a layer for a
            method without one, decoding options with a given caption, a prompt other than a
            given Caption's.
    """
    from ..model.captioner import Captioner

    if not isinstance(captioner, Captioner):
        raise InvalidOptionError(f"explanations need torch's Captioner (bliptk.load); got {type(captioner).__name__}")
    layer = resolved_layer(method, layer, len(captioner.text_decoder.layers))
    check_positive_int("ig_steps", ig_steps)
    if method in _GRADIENT_METHODS and captioner.weights.dtype == "int8":
        raise option_error(
            f"{method} follows gradients, which the int8 decoder's weights have none of: explain with the float model "
            "(bliptk.load(model) or dtype='bfloat16')",
            "method",
        )
    if isinstance(image, list | tuple) and not isinstance(image, VideoFrames):
        captions = list(caption) if isinstance(caption, list | tuple) else [caption] * len(image)
        if len(captions) != len(image):
            raise InvalidOptionError(f"{len(captions)} captions for {len(image)} images: give one caption per image, or one for all")
        return [
            _explain_one(captioner, each, said, method, layer, prompt, ig_steps, decoding_options)
            for each, said in zip(image, captions, strict=True)
        ]
    if isinstance(caption, list | tuple):
        raise InvalidOptionError("a list of captions goes with a list of images, one caption per image")
    return _explain_one(captioner, image, caption, method, layer, prompt, ig_steps, decoding_options)


def _explain_one(captioner, image, caption, method: str, layer: int | None, prompt: str | None, ig_steps: int, decoding_options: dict):
    """[`explain()`][bliptk.attribution.explanation.explain] of one image or video, its options checked."""
    options, video_options = pipeline.resolve_options(**decoding_options)
    options = pipeline.own_options(captioner, options)
    decoding_given = any(name not in ("num_frames", "pooling") for name in decoding_options)
    visual = visual_input(captioner, image, video_options)
    target = explained_target(captioner, visual, caption, prompt, options, decoding_given)
    pipeline.say_if_random(captioner)
    result = _METHODS[method](captioner, visual, target, layer, ig_steps)
    grid = _grid(captioner.image_encoder.feature_shape[0])
    return Explanation(
        maps=result.patches.reshape(-1, grid, grid).numpy().astype(np.float32),
        tokens=captioner.tokenizer.convert_ids_to_tokens(target.token_ids),
        token_ids=target.token_ids,
        method=method,
        layer=layer,
        prompt=target.prompt,
        text=target.text,
        text_relevance=None if result.text_relevance is None else result.text_relevance.numpy().astype(np.float32),
        completeness_gap=None if result.completeness_gap is None else result.completeness_gap.numpy().astype(np.float32),
        provenance={
            **captioner.provenance(),
            "method": method,
            "layer": layer,
            "ig_steps": ig_steps if method == "integrated_gradients" else None,
            "num_frames": int(visual.pixels.shape[0]) if visual.video else None,
            "pixels": pixels_fingerprint(visual.pixels),
        },
    )
