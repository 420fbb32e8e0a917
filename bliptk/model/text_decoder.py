"""The BLIP text decoder, run one step at a time with bliptk's own KV cache.

The decoder is BERT-base with a cross-attention block in every layer that attends over the image
features. ``transformers``' modules hold the weights; this module runs them in its own forward
pass so that decoding is explicit, cheap and inspectable:

* the image keys and values of every cross-attention layer are computed once per image
  ([`TextDecoder.start()`][bliptk.model.text_decoder.TextDecoder.start]), not at every step;
* the self-attention keys and values live in a preallocated cache ([`DecoderState`][bliptk.model.text_decoder.DecoderState]), so a
  step costs one token's work;
* cross-attention weights can be returned for every step (``return_cross_attention=True``),
  computed in the same pass that produces the logits, with no hooks.

The maths is written once, in [`TextDecoder.run()`][bliptk.model.text_decoder.TextDecoder.run]: decoding runs it over the preallocated cache,
and the ONNX export traces it over a cache that grows by concatenation ([`GrowingCache`][bliptk.model.text_decoder.GrowingCache]).
It is that of ``BlipTextLMHeadModel`` (post-LayerNorm BERT layers); tests check the logits against it.
"""

from __future__ import annotations

import functools
import os
import statistics
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..core.decoding import ImageKeysValues
from ..core.errors import InvalidOptionError

__all__ = [
    "DecoderAttentions",
    "DecoderState",
    "GrowingCache",
    "KeptAttention",
    "Kernels",
    "TextDecoder",
    "TracedKernels",
    "split_product_pays",
]


@dataclass
class DecoderState:
    """What the decoder remembers between steps, for a batch of B sequences.

    Attributes:
        cross_keys: Per layer, the image keys ``(B, H, N, Dh)`` (N = 577 at 384 px).
        cross_values: Per layer, the image values ``(B, H, N, Dh)``.
        self_keys: Per layer, the self-attention key cache ``(B, H, max_length, Dh)``.
        self_values: Per layer, the self-attention value cache ``(B, H, max_length, Dh)``.
        padding: ``(B,)`` how many cache slots before each sequence hold no token (prompts of
            different lengths, left-padded); None when no sequence is padded.
        length: How many positions of the cache are filled.
    """

    cross_keys: list[torch.Tensor]
    cross_values: list[torch.Tensor]
    self_keys: list[torch.Tensor]
    self_values: list[torch.Tensor]
    padding: torch.Tensor | None = None
    length: int = 0
    max_length: int = field(init=False)

    def __post_init__(self):
        self.max_length = self.self_keys[0].shape[2]

    def extend(self, layer: int, keys: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write a layer's new self-attention keys and values ``(B, H, S, Dh)`` after the cached
        ones; every key and value so far, as views of the cache."""
        end = self.length + keys.shape[2]
        self.self_keys[layer][:, :, self.length : end] = keys
        self.self_values[layer][:, :, self.length : end] = values
        return self.self_keys[layer][:, :, :end], self.self_values[layer][:, :, :end]

    def select(self, rows) -> DecoderState:
        """A state for a subset or reordering of the batch rows (an index tensor or array)."""
        rows = torch.as_tensor(rows, device=self.self_keys[0].device)
        pick = lambda tensors: [t.index_select(0, rows) for t in tensors]  # noqa: E731
        padding = None if self.padding is None else self.padding.index_select(0, rows)
        state = DecoderState(pick(self.cross_keys), pick(self.cross_values), pick(self.self_keys), pick(self.self_values), padding)
        state.length = self.length
        return state


@dataclass
class DecoderAttentions:
    """The attention probabilities a pass of [`TextDecoder.run()`][bliptk.model.text_decoder.TextDecoder.run] keeps, for explanations:
    computed explicitly (softmax of the scaled scores, as ``transformers``' eager attention), in
    the autograd graph when the pass has one.

    Attributes:
        self_attention: Per layer, ``(B, H, S, K)``: each new position's weights on the K
            positions so far (causal: zero on later ones).
        cross_attention: Per layer, ``(B, H, S, N)``: each new position's weights on the N
            image features.
    """

    self_attention: list[torch.Tensor] = field(default_factory=list)
    cross_attention: list[torch.Tensor] = field(default_factory=list)


class GrowingCache:
    """A self-attention cache that grows by concatenation: what an exported graph takes (the past
    keys and values) and gives back (``keys``, ``values``: the past and the new ones)."""

    def __init__(self, keys: list[torch.Tensor], values: list[torch.Tensor]):
        self.keys, self.values = list(keys), list(values)

    def extend(self, layer: int, keys: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.keys[layer] = torch.cat([self.keys[layer], keys], dim=2)
        self.values[layer] = torch.cat([self.values[layer], values], dim=2)
        return self.keys[layer], self.values[layer]


# Up to this many rows (sequences x new tokens), a projection is a matrix-vector product, which
# TextDecoder._project runs in its fastest form; more rows make a matrix product, for which F.linear
# is as good (measured, see benchmarks/captioning.py).
_FEW_ROWS = 8


def _split_product(weight: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``x @ weight.T`` for a float32 ``weight`` ``(out, in)`` and few rows ``x`` ``(R, in)``.

    On some CPUs ``F.linear`` streams a matrix-vector product's weight from one core, at about half
    the memory bandwidth (2-core AMD EPYC: 13 GB/s). Split by output into its two contiguous halves,
    it is one batched product of two independent halves, which the two cores stream together: the
    same products, summed in another order (equal to float32 rounding), read 2.5 to 3.5 times as
    fast there. Elsewhere ``F.linear`` is the faster (2-core
    Intel Xeon with AMX: 47-56 GB/s against 16-30), hence [`split_product_pays()`][bliptk.model.text_decoder.split_product_pays].
    """
    outputs, width = weight.shape
    rows = x.shape[0]
    columns = x.t().unsqueeze(0).expand(2, width, rows)  # (2, in, R), no copy
    return torch.bmm(weight.view(2, outputs // 2, width), columns).view(outputs, rows).t()


# The split product must read this much faster than F.linear to be used: a clear win, so that
# a machine where the two are close keeps F.linear (transformers' own product) run after run.
_SPLIT_MARGIN = 1.3


@functools.lru_cache(maxsize=1)
def split_product_pays() -> bool:
    """Whether ``_split_product`` reads a float32 weight at least 1.3 times as fast as ``F.linear``
    on this machine, measured once per process (about 60 ms: medians of 9 alternating products
    over a 64 MB weight, larger than the caches). ``BLIPTK_SPLIT_PRODUCT=1`` (or ``0``) decides
    without measuring: the two products differ in the last bits, so runs that must match each
    other bit for bit, on a machine where the two are close, can pin one."""
    pinned = os.environ.get("BLIPTK_SPLIT_PRODUCT")
    if pinned in ("0", "1"):
        return pinned == "1"
    weight, x = torch.ones(16384, 1024), torch.ones(1, 1024)
    seconds: dict[str, list[float]] = {"linear": [], "split": []}
    for _ in range(9):
        for name, product in (("linear", lambda: F.linear(x, weight)), ("split", lambda: _split_product(weight, x))):
            started = time.perf_counter()
            product()
            seconds[name].append(time.perf_counter() - started)
    return statistics.median(seconds["linear"]) > _SPLIT_MARGIN * statistics.median(seconds["split"])


@torch.no_grad()
def quantize_int8(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-output-channel symmetric int8 weights: ``(out, in)`` int8 and ``(out,)`` scales, with
    ``weight ~= int8 * scale[:, None]``."""
    values = weight.float()
    scales = values.abs().amax(dim=1).clamp_min(1e-12) / 127
    return (values / scales[:, None]).round().clamp(-127, 127).to(torch.int8).contiguous(), scales


class TextDecoder(nn.Module):
    """BLIP's image-grounded text decoder with a step function.

    Args:
        lm: A ``transformers`` ``BlipTextLMHeadModel`` (``BlipForConditionalGeneration.text_decoder``).

    Example:
        >>> state = decoder.start(image_features, max_length=30)
        >>> logits = decoder(torch.tensor([[30522, 1037, 5855, 1997]]), state)  # (1, 4, V)
        >>> logits = decoder(logits[:, -1:].argmax(-1), state)                    # (1, 1, V)
    """

    def __init__(self, lm: nn.Module):
        super().__init__()
        self.lm: Any = lm  # transformers' modules: their attributes are typed by transformers, not nn.Module
        config: Any = lm.config
        self.config = config
        self.num_heads = config.num_attention_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.max_positions = config.max_position_embeddings
        self.int8_weights: dict[nn.Linear, tuple[torch.Tensor, torch.Tensor]] = {}

    def quantize(self) -> None:
        """Give every projection of a decoding step int8 weights (per channel, symmetric), read by
        ``torch._weight_int8pack_mm`` when few rows go through: the weights stream at a quarter of
        float32's bytes. The model's own bfloat16 weights stay, so that ``captioner.model`` keeps
        working; the int8 copies add a quarter of the decoder's float32 size. (The image keys and
        values, computed once per image, stay in bfloat16.)"""
        if self.dtype != torch.bfloat16 or self.device.type != "cpu":
            raise InvalidOptionError("int8 decoding runs on the CPU over a bfloat16 model")
        for layer in self.layers:
            for linear in (
                layer.attention.self.query,
                layer.attention.self.key,
                layer.attention.self.value,
                layer.attention.output.dense,
                layer.crossattention.self.query,
                layer.crossattention.output.dense,
                layer.intermediate.dense,
                layer.output.dense,
            ):
                self.int8_weights[linear] = quantize_int8(linear.weight)
        head = self.lm.cls.predictions
        for linear in (head.transform.dense, head.decoder):
            self.int8_weights[linear] = quantize_int8(linear.weight)

    def _project(self, linear: nn.Linear, x: torch.Tensor) -> torch.Tensor:
        """``linear(x)``, in its fastest form when few rows go through (a decoding step): int8
        weights when the decoder is quantized, else float32 split in two (``_split_product``) on
        machines where that pays."""
        rows = x.numel() // x.shape[-1]
        if rows > _FEW_ROWS or x.device.type != "cpu":
            return linear(x)
        flat = x.reshape(rows, x.shape[-1])
        if linear in self.int8_weights:
            weight, scales = self.int8_weights[linear]
            out = torch._weight_int8pack_mm(flat, weight, scales.to(flat.dtype))
        elif (
            linear.weight.dtype == torch.float32
            and linear.weight.is_contiguous()
            and linear.weight.shape[0] % 2 == 0
            and split_product_pays()
        ):
            out = _split_product(linear.weight, flat)
        else:
            return linear(x)
        if linear.bias is not None:
            out = out + linear.bias
        return out.reshape(*x.shape[:-1], out.shape[-1])

    @property
    def layers(self) -> Any:
        """The decoder's layers (``BlipTextLayer``: post-LayerNorm BERT with cross-attention)."""
        return self.lm.bert.encoder.layer

    @property
    def device(self) -> torch.device:
        return self.lm.cls.predictions.decoder.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.lm.cls.predictions.decoder.weight.dtype

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        """(B, S, H*Dh) -> (B, H, S, Dh)"""
        batch, length, _ = x.shape
        return x.view(batch, length, self.num_heads, self.head_dim).transpose(1, 2)

    @torch.inference_mode()
    def image_keys_values(self, image_features) -> ImageKeysValues:
        """The keys and values every cross-attention layer reads from the images, computed once
        per image rather than at every step.

        Args:
            image_features: Image encoder output ``(B, N, D)``, a tensor or a NumPy array.

        Returns:
            Per layer, keys and values ``(B, H, N, Dh)``.
        """
        return self.cross_keys_values(image_features)

    def cross_keys_values(self, image_features) -> ImageKeysValues:
        """[`image_keys_values()`][bliptk.model.text_decoder.TextDecoder.image_keys_values], differentiable (an explanation's
        gradients flow through them to the image encoder)."""
        features = torch.as_tensor(image_features).to(device=self.device, dtype=self.dtype)
        keys, values = [], []
        for layer in self.layers:
            attention = layer.crossattention.self
            keys.append(self._split_heads(attention.key(features)).contiguous())
            values.append(self._split_heads(attention.value(features)).contiguous())
        return ImageKeysValues(keys, values)

    @torch.inference_mode()
    def start(self, image, max_length: int, padding=None, image_rows=None) -> DecoderState:
        """Prepare decoding over a batch of images.

        Args:
            image: Image encoder output ``(B, N, D)`` (a tensor or a NumPy array), or its
                [`image_keys_values()`][bliptk.model.text_decoder.TextDecoder.image_keys_values].
            max_length: Longest sequence (prompt + generated tokens) the cache must hold.
            padding: ``(R,)`` slots of left padding before each sequence's prompt (prompts of
                different lengths in one batch); None for none.
            image_rows: ``(R,)`` the image of each sequence, to decode an image several times
                (samples, beams); None for one sequence per image.

        Returns:
            A fresh [`DecoderState`][bliptk.model.text_decoder.DecoderState] with the image keys and values of every layer.

        Raises:
            InvalidOptionError: ``max_length`` exceeds the decoder's positions (512).
        """
        if max_length > self.max_positions:
            raise InvalidOptionError(f"max_length {max_length} exceeds the decoder's {self.max_positions} positions")
        image = image if isinstance(image, ImageKeysValues) else self.image_keys_values(image)
        rows = None if image_rows is None else torch.as_tensor(image_rows, device=self.device)
        # Each image's keys and values are computed once, then given to each of its rows.
        pick = (lambda tensors: list(tensors)) if rows is None else (lambda tensors: [t.index_select(0, rows) for t in tensors])
        cross_keys, cross_values = pick(image.keys), pick(image.values)
        cache_shape = (cross_keys[0].shape[0], self.num_heads, max_length, self.head_dim)
        self_keys = [torch.empty(cache_shape, device=self.device, dtype=self.dtype) for _ in self.layers]
        self_values = [torch.empty(cache_shape, device=self.device, dtype=self.dtype) for _ in self.layers]
        padding = None if padding is None else torch.as_tensor(padding, device=self.device)
        return DecoderState(cross_keys, cross_values, self_keys, self_values, padding)

    @torch.inference_mode()
    def forward(self, input_ids: torch.Tensor, state: DecoderState, return_cross_attention: bool = False):
        """Run the next ``S`` tokens through the decoder, extending the cache.

        Args:
            input_ids: ``(B, S)`` token ids continuing each sequence of ``state``.
            state: The decoding state; its cache is filled in place and its length advanced.
            return_cross_attention: Also return each layer's cross-attention weights.

        Returns:
            Logits ``(B, S, V)`` for the token after each input position; with
            ``return_cross_attention``, also a tuple of L tensors ``(B, H, S, N)``.

        Raises:
            InvalidOptionError: The cache cannot hold ``S`` more positions.
        """
        end = state.length + input_ids.shape[1]
        if end > state.max_length:
            raise InvalidOptionError(f"the cache holds {state.max_length} positions; {end} needed")
        kernels = KeptAttention(self, DecoderAttentions(), keep_self=False) if return_cross_attention else Kernels(self)
        logits = self.run(input_ids, state.length, state, state.cross_keys, state.cross_values, state.padding, kernels)
        state.length = end
        if isinstance(kernels, KeptAttention):
            return logits, tuple(kernels.attentions.cross_attention)
        return logits

    def run(
        self,
        input_ids: torch.Tensor,
        start,
        cache: DecoderState | GrowingCache,
        cross_keys: list[torch.Tensor],
        cross_values: list[torch.Tensor],
        padding: torch.Tensor | None = None,
        kernels: Kernels | None = None,
    ) -> torch.Tensor:
        """The decoder's maths for ``S`` new tokens after ``start`` cached positions: one
        implementation for decoding ([`forward()`][bliptk.model.text_decoder.TextDecoder.forward]),
        the ONNX export (which traces it) and explanations (which keep its attention).

        Within the new tokens attention is causal, and every cached position is visible; no query
        sees the left padding of a shorter prompt (a padding slot sees itself only, so that its
        unused state stays finite), and a padded sequence counts its positions from its first token.

        Args:
            input_ids: ``(B, S)`` token ids.
            start: Positions already in the cache (an int, or a traced size).
            cache: Where the new self-attention keys and values go (``extend``).
            cross_keys: Per layer, the image keys ``(B, H, N, Dh)``.
            cross_values: Per layer, the image values ``(B, H, N, Dh)``.
            padding: ``(B,)`` left padding of each sequence, or None.
            kernels: How the caller's pass computes its products and attention (and what it
                keeps): [`Kernels`][bliptk.model.text_decoder.Kernels] (decoding, the default),
                [`TracedKernels`][bliptk.model.text_decoder.TracedKernels] (the export) or
                [`KeptAttention`][bliptk.model.text_decoder.KeptAttention] (explanations).

        Returns:
            Logits ``(B, S, V)`` (of the last position only, ``(B, V)``, where the kernels say so).
        """
        kernels = kernels or Kernels(self)
        mask, positions = self._mask(input_ids.shape[1], start, padding, input_ids.device, kernels.always_mask)
        embeddings = self.lm.bert.embeddings
        hidden = embeddings.LayerNorm(embeddings.word_embeddings(input_ids) + embeddings.position_embeddings(positions))
        for index, layer in enumerate(self.layers):
            hidden = self._self_attention(layer, index, hidden, cache, mask, kernels)
            hidden = self._cross_attention(layer, hidden, cross_keys[index], cross_values[index], kernels)
            hidden = self._feed_forward(layer, hidden, kernels)
        if kernels.last_position_only:
            hidden = hidden[:, -1]
        head = self.lm.cls.predictions
        transformed = head.transform.LayerNorm(head.transform.transform_act_fn(kernels.project(head.transform.dense, hidden)))
        return kernels.output(head.decoder, transformed)

    @staticmethod
    def _mask(steps: int, start, padding: torch.Tensor | None, device, always: bool):
        """Which cached and new positions each new position sees ``(S, end)`` or ``(B, 1, S, end)``
        (None: all of them), and the positions the new tokens embed, ``(S,)`` or ``(B, S)``."""
        end = start + steps
        positions = torch.arange(start, end, device=device)
        mask = None
        if always or steps > 1:  # within the new tokens attention is causal; every cached position is visible
            mask = torch.arange(end, device=device)[None, :] <= positions[:, None]  # (S, end)
        if padding is not None:
            slots = torch.arange(end, device=device)
            visible = (slots[None, :] >= padding[:, None])[:, None, None, :]  # (B, 1, 1, end)
            mask = visible if mask is None else visible & mask
            mask = mask | (slots[None, :] == positions[:, None])  # (B, 1, S, end)
            positions = (positions[None, :] - padding[:, None]).clamp_min(0)  # (B, S)
        return mask, positions

    def _self_attention(self, layer, index: int, hidden, cache, mask, kernels: Kernels) -> torch.Tensor:
        """One layer's causal self-attention block over the cache, extended by the new positions."""
        attention, project = layer.attention.self, kernels.project
        keys, values = cache.extend(
            index, self._split_heads(project(attention.key, hidden)), self._split_heads(project(attention.value, hidden))
        )
        query = self._split_heads(project(attention.query, hidden))
        context = kernels.self_attention(query, keys, values, mask)
        return layer.attention.output.LayerNorm(project(layer.attention.output.dense, self._merge_heads(context)) + hidden)

    def _cross_attention(self, layer, hidden, keys, values, kernels: Kernels) -> torch.Tensor:
        """One layer's cross-attention block over the image keys and values."""
        query = self._split_heads(kernels.project(layer.crossattention.self.query, hidden))
        context = kernels.cross_attention(query, keys, values)
        return layer.crossattention.output.LayerNorm(
            kernels.project(layer.crossattention.output.dense, self._merge_heads(context)) + hidden
        )

    @staticmethod
    def _feed_forward(layer, hidden, kernels: Kernels) -> torch.Tensor:
        """One layer's feed-forward block."""
        intermediate = layer.intermediate.intermediate_act_fn(kernels.project(layer.intermediate.dense, hidden))
        return layer.output.LayerNorm(kernels.project(layer.output.dense, intermediate) + hidden)

    # The decoding engine's view (bliptk.core.decoding.DecoderBackend): NumPy in, NumPy out.

    @torch.inference_mode()
    def step(self, state: DecoderState, input_ids: np.ndarray, return_attention: bool = False):
        """Feed ``(R, S)`` ids; the float32 logits ``(R, V)`` of the token after the last one and,
        with ``return_attention``, that position's cross-attention ``(R, L, H, N)``."""
        ids = torch.from_numpy(np.ascontiguousarray(input_ids)).to(self.device)
        if not return_attention:
            return self(ids, state)[:, -1].float().cpu().numpy(), None
        logits, cross_attention = self(ids, state, return_cross_attention=True)
        # L x (R, H, S, N) -> (R, L, H, N): the weights of the position that predicts the token.
        attention = torch.stack([weights[:, :, -1] for weights in cross_attention], dim=1)
        return logits[:, -1].float().cpu().numpy(), attention.float().cpu().numpy()

    @staticmethod
    def select(state: DecoderState, rows: np.ndarray) -> DecoderState:
        return state.select(rows)

    def _weights(self, query: torch.Tensor, keys: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Attention probabilities ``(B, H, S, K)`` of queries ``(B, H, S, Dh)`` over keys ``(B, H, K, Dh)``,
        masked positions given none."""
        scores = query @ keys.transpose(-1, -2) / self.head_dim**0.5
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))
        return torch.softmax(scores, dim=-1)

    def _attend(self, query, keys, values, mask=None) -> torch.Tensor:
        """Attention of ``(B, H, S, Dh)`` queries over ``(B, H, T, Dh)`` keys and values."""
        if query.device.type != "cpu" or (query.dtype == torch.float32 and query.shape[2] > 1):
            return F.scaled_dot_product_attention(query, keys, values, attn_mask=mask)
        # On CPU, one query per sequence (a decoding step) reads the keys and values faster through
        # plain batched products than through the fused kernel (measured at 16 sequences over 577
        # keys: 1.2x in float32, 4.6x in bfloat16); the softmax in float32.
        scores = (query @ keys.transpose(-1, -2)).float() * self.head_dim**-0.5
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))
        return torch.softmax(scores, dim=-1).to(query.dtype) @ values

    @staticmethod
    def _merge_heads(x: torch.Tensor) -> torch.Tensor:
        """(B, H, S, Dh) -> (B, S, H*Dh)"""
        batch, heads, length, head_dim = x.shape
        return x.transpose(1, 2).reshape(batch, length, heads * head_dim)


class Kernels:
    """How a pass of [`TextDecoder.run()`][bliptk.model.text_decoder.TextDecoder.run] computes its
    products and attention: one choice per caller. This one is decoding's, the fastest on the
    machine (int8 or split float32 products and plain batched attention for the few rows of a
    decoding step, the fused kernel otherwise); it keeps nothing.

    Attributes:
        always_mask: Build the attention mask even for one new position (a traced graph cannot
            branch on shapes).
        last_position_only: Only the last position's logits (``(B, V)``).
    """

    always_mask = False
    last_position_only = False

    def __init__(self, decoder: TextDecoder):
        self.decoder = decoder

    def project(self, linear: nn.Linear, x: torch.Tensor) -> torch.Tensor:
        return self.decoder._project(linear, x)

    def self_attention(self, query, keys, values, mask) -> torch.Tensor:
        return self.decoder._attend(query, keys, values, mask)

    def cross_attention(self, query, keys, values) -> torch.Tensor:
        return self.decoder._attend(query, keys, values)

    def output(self, head: nn.Linear, transformed: torch.Tensor) -> torch.Tensor:
        """The logits from the head's transformed states."""
        return self.project(head, transformed)


class TracedKernels(Kernels):
    """The ONNX export's: no branch on shapes or device (the mask always built, plain products and
    the fused attention), only the last position's logits, and the head's own weight.

    Args:
        decoder: The decoder.
        head_weight: The output head's weight, a copy of its own (not the tied word embeddings)
            for the export to quantize.
    """

    always_mask = True
    last_position_only = True

    def __init__(self, decoder: TextDecoder, head_weight: torch.Tensor):
        super().__init__(decoder)
        self.head_weight = head_weight

    def project(self, linear: nn.Linear, x: torch.Tensor) -> torch.Tensor:
        return linear(x)

    def self_attention(self, query, keys, values, mask) -> torch.Tensor:
        return F.scaled_dot_product_attention(query, keys, values, attn_mask=mask)

    def cross_attention(self, query, keys, values) -> torch.Tensor:
        return F.scaled_dot_product_attention(query, keys, values)

    def output(self, head: nn.Linear, transformed: torch.Tensor) -> torch.Tensor:
        return F.linear(transformed, self.head_weight, head.bias)


class KeptAttention(Kernels):
    """A pass that keeps its attention probabilities, computed explicitly (softmax of the scaled
    scores, as ``transformers``' eager attention) and in the autograd graph when the pass has one:
    explanations keep every layer's, ``return_cross_attention`` the cross-attention's.

    Args:
        decoder: The decoder.
        attentions: Where they go.
        keep_self: Keep the self-attention's too (else it runs on decoding's kernels).
    """

    def __init__(self, decoder: TextDecoder, attentions: DecoderAttentions, keep_self: bool = True):
        super().__init__(decoder)
        self.attentions, self.keep_self = attentions, keep_self

    def self_attention(self, query, keys, values, mask) -> torch.Tensor:
        if not self.keep_self:
            return super().self_attention(query, keys, values, mask)
        weights = self.decoder._weights(query, keys, mask)
        self.attentions.self_attention.append(weights)
        return weights @ values

    def cross_attention(self, query, keys, values) -> torch.Tensor:
        weights = self.decoder._weights(query, keys)
        self.attentions.cross_attention.append(weights)
        return weights @ values
