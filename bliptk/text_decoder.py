"""The BLIP text decoder, run one step at a time with bliptk's own KV cache.

The decoder is BERT-base with a cross-attention block in every layer that attends over the image
features. ``transformers``' modules hold the weights; this module runs them in its own forward
pass so that decoding is explicit, cheap and inspectable:

* the image keys and values of every cross-attention layer are computed once per image
  (:meth:`TextDecoder.start`), not at every step;
* the self-attention keys and values live in a preallocated cache (:class:`DecoderState`), so a
  step costs one token's work;
* cross-attention weights can be returned for every step (``return_cross_attention=True``),
  computed in the same pass that produces the logits, with no hooks.

The maths is that of ``BlipTextLMHeadModel`` (post-LayerNorm BERT layers); tests check the logits
against it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["DecoderState", "TextDecoder"]


@dataclass
class DecoderState:
    """What the decoder remembers between steps, for a batch of B sequences.

    Attributes:
        cross_keys: Per layer, the image keys ``(B, H, N, Dh)`` (N = 577 at 384 px).
        cross_values: Per layer, the image values ``(B, H, N, Dh)``.
        self_keys: Per layer, the self-attention key cache ``(B, H, max_length, Dh)``.
        self_values: Per layer, the self-attention value cache ``(B, H, max_length, Dh)``.
        length: How many positions of the cache are filled.
    """

    cross_keys: list[torch.Tensor]
    cross_values: list[torch.Tensor]
    self_keys: list[torch.Tensor]
    self_values: list[torch.Tensor]
    length: int = 0
    max_length: int = field(init=False)

    def __post_init__(self):
        self.max_length = self.self_keys[0].shape[2]

    @property
    def batch_size(self) -> int:
        return self.self_keys[0].shape[0]

    def select(self, rows: torch.Tensor) -> "DecoderState":
        """A state for a subset or reordering of the batch rows (``rows``: index tensor)."""
        pick = lambda tensors: [t.index_select(0, rows) for t in tensors]  # noqa: E731
        state = DecoderState(pick(self.cross_keys), pick(self.cross_values), pick(self.self_keys), pick(self.self_values))
        state.length = self.length
        return state


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
        self.lm = lm
        config = lm.config
        self.config = config
        self.num_heads = config.num_attention_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.max_positions = config.max_position_embeddings
        self.vocab_size = config.vocab_size

    @property
    def layers(self) -> nn.ModuleList:
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
    def start(self, image_features: torch.Tensor, max_length: int) -> DecoderState:
        """Prepare decoding over a batch of images.

        Args:
            image_features: Image encoder output ``(B, N, D)``.
            max_length: Longest sequence (prompt + generated tokens) the cache must hold.

        Returns:
            A fresh :class:`DecoderState` with the image keys and values of every layer.
        """
        if max_length > self.max_positions:
            raise ValueError(f"max_length {max_length} exceeds the decoder's {self.max_positions} positions")
        image_features = image_features.to(device=self.device, dtype=self.dtype)
        batch = image_features.shape[0]
        cross_keys, cross_values, self_keys, self_values = [], [], [], []
        for layer in self.layers:
            attention = layer.crossattention.self
            cross_keys.append(self._split_heads(attention.key(image_features)).contiguous())
            cross_values.append(self._split_heads(attention.value(image_features)).contiguous())
            cache_shape = (batch, self.num_heads, max_length, self.head_dim)
            self_keys.append(torch.empty(cache_shape, device=self.device, dtype=self.dtype))
            self_values.append(torch.empty(cache_shape, device=self.device, dtype=self.dtype))
        return DecoderState(cross_keys, cross_values, self_keys, self_values)

    @torch.inference_mode()
    def forward(
        self,
        input_ids: torch.Tensor,
        state: DecoderState,
        return_cross_attention: bool = False,
    ):
        """Run the next ``S`` tokens through the decoder, extending the cache.

        Args:
            input_ids: ``(B, S)`` token ids continuing each sequence of ``state``.
            state: The decoding state; its cache is filled in place and its length advanced.
            return_cross_attention: Also return each layer's cross-attention weights.

        Returns:
            Logits ``(B, S, V)`` for the token after each input position; with
            ``return_cross_attention``, also a tuple of L tensors ``(B, H, S, N)``.
        """
        batch, steps = input_ids.shape
        start, end = state.length, state.length + steps
        if end > state.max_length:
            raise ValueError(f"the cache holds {state.max_length} positions; {end} needed")
        embeddings = self.lm.bert.embeddings
        positions = torch.arange(start, end, device=input_ids.device)
        hidden = embeddings.word_embeddings(input_ids) + embeddings.position_embeddings(positions)
        hidden = embeddings.LayerNorm(hidden)

        # Within the new tokens attention is causal; every cached position is visible.
        causal_mask = None
        if steps > 1:
            query_positions = torch.arange(start, end, device=hidden.device)[:, None]
            causal_mask = torch.arange(end, device=hidden.device)[None, :] <= query_positions

        cross_attentions = []
        for index, layer in enumerate(self.layers):
            attention = layer.attention.self
            state.self_keys[index][:, :, start:end] = self._split_heads(attention.key(hidden))
            state.self_values[index][:, :, start:end] = self._split_heads(attention.value(hidden))
            context = self._attend(
                self._split_heads(attention.query(hidden)),
                state.self_keys[index][:, :, :end],
                state.self_values[index][:, :, :end],
                causal_mask,
            )
            hidden = layer.attention.output(self._merge_heads(context), hidden)

            query = self._split_heads(layer.crossattention.self.query(hidden))
            keys, values = state.cross_keys[index], state.cross_values[index]
            if return_cross_attention:
                weights = torch.softmax(query @ keys.transpose(-1, -2) / self.head_dim**0.5, dim=-1)
                cross_attentions.append(weights)
                context = weights @ values
            else:
                context = self._attend(query, keys, values)
            hidden = layer.crossattention.output(self._merge_heads(context), hidden)

            hidden = layer.output(layer.intermediate(hidden), hidden)

        state.length = end
        logits = self.lm.cls(hidden)
        if return_cross_attention:
            return logits, tuple(cross_attentions)
        return logits

    def _attend(self, query, keys, values, mask=None) -> torch.Tensor:
        """Attention of ``(B, H, S, Dh)`` queries over ``(B, H, T, Dh)`` keys and values."""
        if query.dtype == torch.float32 or query.device.type != "cpu":
            return F.scaled_dot_product_attention(query, keys, values, attn_mask=mask)
        # On CPU, the fused kernels are slow in bfloat16 for a few queries (4.7x at 8 x 577 keys):
        # plain matrix products, with the softmax in float32.
        scores = (query @ keys.transpose(-1, -2)).float() * self.head_dim**-0.5
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))
        return torch.softmax(scores, dim=-1).to(query.dtype) @ values

    @staticmethod
    def _merge_heads(x: torch.Tensor) -> torch.Tensor:
        """(B, H, S, Dh) -> (B, S, H*Dh)"""
        batch, heads, length, head_dim = x.shape
        return x.transpose(1, 2).reshape(batch, length, heads * head_dim)
