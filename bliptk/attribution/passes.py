"""What every explanation method shares: the caption being explained as the decoder reads it
teacher-forced ([`Target`][bliptk.attribution.passes.Target]), the image or video as the encoder reads
it ([`Visual`][bliptk.attribution.passes.Visual]), the passes through the model that keep what the
methods need, and the form of a method's result ([`Maps`][bliptk.attribution.passes.Maps]).

A method is a function ``(captioner, visual, target, layer, options) -> Maps``; its maps are the
patch scores of each caption token, ``(T, N - 1)``, and its extra outputs go in ``Maps.extras``
(named arrays, which the [`Explanation`][bliptk.attribution.explanation.Explanation] keeps).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field

import torch

from ..core import pipeline
from ..core.decoding import Caption, DecodingOptions, prompt_ids
from ..core.errors import InvalidOptionError, PromptWarning, option_error
from ..core.notices import warn
from ..core.video import VideoFrames, VideoOptions, is_video, video_frames
from ..model.text_decoder import DecoderAttentions, GrowingCache, KeptAttention, Kernels

__all__ = [
    "Maps",
    "Target",
    "Visual",
    "encoded",
    "frame_features",
    "explained_target",
    "grid_of",
    "images_at_once",
    "kept_pass",
    "kept_passes",
    "pixels_fingerprint",
    "stacked",
    "targets_logprobs",
    "token_logprobs",
    "visual_input",
]


@dataclass
class Maps:
    """A method's result.

    Attributes:
        patches: ``(T, N - 1)`` the patch scores of each caption token.
        extras: Named extra outputs (``"text_relevance"``, ``"completeness_gap"``), tensors.
    """

    patches: torch.Tensor
    extras: dict[str, torch.Tensor] = field(default_factory=dict)


@dataclass(frozen=True)
class Target:
    """The caption being explained, as the decoder reads it teacher-forced.

    Attributes:
        prompt: The prompt text.
        prompt_ids: ``[DEC]`` and the prompt's ids (P of them).
        token_ids: The caption's ids (T of them), each predicted at position ``P - 1 + t``.
        text: The caption, prompt included.
        foils: Contrastive targets: caption token t -> a foil token's id. Token t's target is then
            ``log p(w_t) - log p(foil)`` at its step, instead of ``log p(w_t)``.
    """

    prompt: str
    prompt_ids: list[int]
    token_ids: list[int]
    text: str
    foils: dict[int, int] = field(default_factory=dict)

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
        features: The pooled features ``(1, N, D)``, once [`encoded()`][bliptk.attribution.passes.encoded] has computed them.
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
        return Visual(torch.as_tensor(captioner.preprocessor(image)), video=False)
    if video_options.pooling != "mean":
        raise option_error("explanations need a video's mean features (pooling='mean'), whose patches form one grid", "pooling")
    frames = image if isinstance(image, VideoFrames | list | tuple) else video_frames(image, video_options.num_frames)
    if not frames:
        raise InvalidOptionError("a video needs at least one frame")
    return Visual(torch.as_tensor(captioner.preprocessor(list(frames))), video=True)


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
        warn(f"caption {caption!r} has text outside BLIP's vocabulary, explained as [UNK]: {', '.join(map(repr, unknown))}", PromptWarning)
    return Target(prompt_text, ids, words, tokenizer.caption_text(ids, words))


def pixels_fingerprint(pixels: torch.Tensor) -> str:
    """A hash of preprocessed frames ``(F, 3, S, S)`` (16 hex digits): which image or video an
    explanation is of. Of the distinct frames: a video of one picture repeated is that picture."""
    distinct = torch.unique(pixels.detach().float().cpu(), dim=0)
    return hashlib.sha256(distinct.contiguous().numpy().tobytes()).hexdigest()[:16]


def encoded(captioner, visual: Visual, batch_size: int = 8) -> torch.Tensor:
    """The pooled image features ``(1, N, D)`` (float32, no graph): an image's, or the mean of a
    video's frames'. Computed once per [`Visual`][bliptk.attribution.passes.Visual] (captioning it first and explaining it share them).
    Any runtime's: torch's encoder, or ``captioner.encode`` of another runtime."""
    if visual.features is None:
        total = sum(frame_features(captioner, chunk).sum(0, keepdim=True) for chunk in visual.pixels.split(batch_size))
        assert isinstance(total, torch.Tensor)
        visual.features = total / visual.pixels.shape[0]
    return visual.features.detach().clone()


def frame_features(captioner, pixels: torch.Tensor) -> torch.Tensor:
    """The features ``(B, N, D)`` (float32, no graph) of preprocessed frames ``(B, 3, S, S)``: torch's
    encoder, or ``captioner.encode`` of another runtime."""
    if hasattr(captioner, "image_encoder"):
        with torch.no_grad():
            return captioner.image_encoder.run(pixels).float()
    return torch.from_numpy(captioner.encode(pixels.numpy())).float()


def token_logprobs(captioner, features: torch.Tensor, target: Target, attentions: DecoderAttentions | None = None) -> torch.Tensor:
    """y_t of every caption token, teacher-forced: ``(B, T)`` for features ``(B, N, D)``, each
    row the same caption. y_t = log p(w_t), or ``log p(w_t) - log p(foil)`` for a token with a
    foil (``target.foils``).

    One pass of the decoder over the prompt and the caption ([`TextDecoder.run()`][bliptk.model.text_decoder.TextDecoder.run]); with
    ``attentions``, it keeps every layer's attention probabilities (in the graph, when the
    features or the weights carry one).
    """
    return targets_logprobs(captioner, features, [target] * features.shape[0], attentions)


def targets_logprobs(captioner, features: torch.Tensor, targets: list[Target], attentions: DecoderAttentions | None = None) -> torch.Tensor:
    """y_t of each row's own caption, ``(B, T_max)`` for features ``(B, N, D)`` (a row's columns
    past its caption's end are 0). The rows' sequences are padded at the end: the decoder is causal,
    so a padded position changes no earlier one, and each row's values equal its caption's alone."""
    decoder = captioner.text_decoder
    rows = features.shape[0]
    features = features.to(device=decoder.device, dtype=decoder.dtype)
    length = max(len(target.sequence) for target in targets)
    ids = torch.tensor([target.sequence + [0] * (length - len(target.sequence)) for target in targets], device=decoder.device)
    keys, values = decoder.cross_keys_values(features)
    nothing = features.new_zeros(rows, decoder.num_heads, 0, decoder.head_dim)
    cache = GrowingCache([nothing] * len(keys), [nothing] * len(keys))
    kernels = Kernels(decoder) if attentions is None else KeptAttention(decoder, attentions)
    logits = decoder.run(ids, 0, cache, keys, values, kernels=kernels)
    width = max(len(target.token_ids) for target in targets)
    # Each row's prediction positions and tokens (a shorter caption's extra columns read its first position).
    where = torch.tensor(
        [[target.positions[min(t, len(target.positions) - 1)] if target.positions else 0 for t in range(width)] for target in targets],
        dtype=torch.long,
    )
    logprobs = torch.log_softmax(logits[torch.arange(rows)[:, None], where.to(logits.device)].float(), dim=-1)  # (B, T_max, V)
    chosen = torch.tensor([_padded(target.token_ids, width) for target in targets], dtype=torch.long, device=decoder.device)
    values_out = logprobs.gather(-1, chosen[..., None]).squeeze(-1)
    if any(target.foils for target in targets):
        foils = torch.tensor(
            [_padded([target.foils.get(t, 0) for t in range(len(target.token_ids))], width) for target in targets], dtype=torch.long
        )
        contrasted = torch.tensor([[t in target.foils for t in range(width)] for target in targets], dtype=torch.bool)
        foil_logprobs = logprobs.gather(-1, foils.to(logprobs.device)[..., None]).squeeze(-1)
        values_out = values_out - torch.where(contrasted.to(logprobs.device), foil_logprobs, torch.zeros_like(foil_logprobs))
    lengths = torch.tensor([len(target.token_ids) for target in targets], device=decoder.device)
    return torch.where(torch.arange(width, device=decoder.device) < lengths[:, None], values_out, torch.zeros_like(values_out))


def _padded(ids: list[int], width: int) -> list[int]:
    return ids + [0] * (width - len(ids))


@dataclass
class Pass:
    """One teacher-forced pass kept for gradients: the features ``(B, N, D)`` (a leaf), y
    ``(B, T_max)``, and the decoder's attention probabilities."""

    features: torch.Tensor
    logprobs: torch.Tensor
    attentions: DecoderAttentions


def kept_pass(captioner, visual: Visual, target: Target) -> Pass:
    return kept_passes(captioner, [visual], [target])


def kept_passes(captioner, visuals: list[Visual], targets: list[Target]) -> Pass:
    """One pass for a batch of images and their captions: features ``(B, N, D)`` (a leaf), y
    ``(B, T_max)``, and the attention probabilities. The rows share
    no computation a gradient can cross, so the gradient of a sum over rows is each row's own."""
    if len(visuals) != len(targets):
        raise ValueError("one target per image")
    features = torch.cat([encoded(captioner, visual) for visual in visuals]).requires_grad_(True)  # gradients flow into the image from here
    attentions = DecoderAttentions()
    with torch.enable_grad():
        logprobs = targets_logprobs(captioner, features, targets, attentions)
    return Pass(features, logprobs, attentions)


def grid_of(features: int) -> int:
    grid = math.isqrt(features - 1)
    if grid * grid != features - 1:
        raise InvalidOptionError(f"{features} image features are not 1 + a square grid of patches")
    return grid


def stacked(rows: list[torch.Tensor], width: int | None) -> torch.Tensor:
    """Rows stacked, detached; ``(0, width)`` for none (a caption of no tokens)."""
    if rows:
        return torch.stack([row.detach().float().cpu() for row in rows])
    return torch.zeros((0,) if width is None else (0, width))


# What one batch of images may keep of the encoder's graph for a backward pass (integrated gradients'
# steps, relevance's images): as many images (frames) as fit go through together (ViT-B/16: 2, ViT-L/16: 1).
GRAPH_BYTES = 3 * 2**30


def images_at_once(encoder) -> int:
    """How many images' encoder graphs fit in ``GRAPH_BYTES``: per layer, each
    head's attention probabilities and their scores ``(N, N)``, and about 48 activations ``(N, D)``
    of 4 bytes (a measured upper bound of what autograd keeps)."""
    tokens, width = encoder.feature_shape
    layers = len(encoder.vision_model.encoder.layers)
    heads = encoder.vision_model.encoder.layers[0].self_attn.num_heads
    per_image = layers * 4 * (2 * heads * tokens**2 + 48 * tokens * width)
    return max(1, GRAPH_BYTES // per_image)
