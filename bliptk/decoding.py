"""Caption decoding: options, the step-by-step loop, and its result.

This is the page's ``NestWhile`` loop written out: the prompt's tokens go through the decoder in
one step (filling the KV cache), then one token is chosen at a time, greedily (temperature 0) or
by sampling among the ``top_k`` most probable, until ``[SEP]`` or ``max_new_tokens``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields

import torch

from .errors import InvalidOptionError
from .text_decoder import TextDecoder
from .tokenizer import SEP_TOKEN_ID, Tokenizer

__all__ = ["Caption", "DecodingOptions", "decode", "DEFAULT_PROMPT", "encode_prompt", "sample_next_token"]

DEFAULT_PROMPT = "a photography of"


@dataclass(frozen=True)
class DecodingOptions:
    """How to generate a caption.

    Attributes:
        prompt: Text the caption starts with. None means ``"a photography of"`` (the page's
            default); ``""`` means unconditional captioning.
        max_new_tokens: Most tokens to generate, the final ``[SEP]`` included (the page's
            ``MaxIterations``).
        temperature: 0 picks the most probable token (greedy); above 0 samples from
            ``softmax(logits / temperature)``.
        top_k: When sampling, sample among the k most probable tokens only (the page's
            ``TopProbabilities``); None for no limit.
        top_p: When sampling, keep the smallest set of tokens whose probability adds up to
            ``top_p`` (nucleus sampling); None for no limit.
        seed: Seed of the sampling generator, for reproducible samples; None draws from
            torch's global generator.
    """

    prompt: str | None = None
    max_new_tokens: int = 25
    temperature: float = 0.0
    top_k: int | None = 10
    top_p: float | None = None
    seed: int | None = None

    def __post_init__(self):
        if self.prompt is not None and not isinstance(self.prompt, str):
            raise InvalidOptionError(f"prompt must be a string or None, got {type(self.prompt).__name__}")
        if isinstance(self.max_new_tokens, bool) or not isinstance(self.max_new_tokens, int):
            raise InvalidOptionError(f"max_new_tokens must be a non-negative integer, got {self.max_new_tokens!r}")
        if self.max_new_tokens < 0:
            raise InvalidOptionError(f"max_new_tokens must be a non-negative integer, got {self.max_new_tokens}")
        if not isinstance(self.temperature, (int, float)) or isinstance(self.temperature, bool) or not math.isfinite(self.temperature) or self.temperature < 0:
            raise InvalidOptionError(f"temperature must be a finite number >= 0, got {self.temperature!r}")
        if self.top_k is not None and (isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < 1):
            raise InvalidOptionError(f"top_k must be an integer >= 1 or None, got {self.top_k!r}")
        if self.top_p is not None and (isinstance(self.top_p, bool) or not isinstance(self.top_p, (int, float)) or not 0 < self.top_p <= 1):
            raise InvalidOptionError(f"top_p must be in (0, 1] or None, got {self.top_p!r}")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int)):
            raise InvalidOptionError(f"seed must be an integer or None, got {self.seed!r}")

    @property
    def prompt_text(self) -> str:
        """The prompt actually used (None resolved to the default)."""
        return DEFAULT_PROMPT if self.prompt is None else self.prompt

    def as_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass
class Caption:
    """A generated caption.

    Attributes:
        text: The caption, prompt included (as on the page).
        prompt: The prompt it was generated from.
        token_ids: Ids of the generated tokens (the ending ``[SEP]`` not included).
        tokens: Their WordPiece strings.
        logprobs: Log-probability of each generated token under the model
            (``log_softmax`` of the logits, before temperature or top-k).
        finished: True when the caption ended with ``[SEP]``, False when it was cut at
            ``max_new_tokens``.
        cross_attention: With ``return_attention=True``, the cross-attention weights that
            produced each generated token, ``(T, L, H, N)``; else None.
    """

    text: str
    prompt: str
    token_ids: list[int]
    tokens: list[str]
    logprobs: list[float]
    finished: bool
    cross_attention: torch.Tensor | None = field(default=None, repr=False)

    def __str__(self) -> str:
        return self.text

    @property
    def logprob(self) -> float:
        """Total log-probability of the generated tokens."""
        return float(sum(self.logprobs))


def sample_next_token(
    logits: torch.Tensor,
    temperature: float,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Choose the next token of each row.

    Args:
        logits: ``(B, V)`` scores of the next token.
        temperature: 0 for the argmax; otherwise the softmax temperature.
        top_k: Keep only the k highest logits before sampling.
        top_p: Keep the smallest set of tokens whose probabilities sum to at least top_p.
        generator: Random generator for sampling.

    Returns:
        ``(B,)`` token ids.
    """
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth_best = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth_best, float("-inf"))
    if top_p is not None and top_p < 1:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        # Drop a token when the tokens before it already reach top_p (the best always stays).
        drop_sorted = (cumulative - sorted_logits.softmax(dim=-1)) >= top_p
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    probabilities = logits.softmax(dim=-1)
    return torch.multinomial(probabilities, 1, generator=generator).squeeze(-1)


def encode_prompt(tokenizer: Tokenizer, options: DecodingOptions, max_positions: int) -> list[int]:
    """The prompt's decoder ids, checked to leave room for ``max_new_tokens`` in the decoder's
    positions.

    Raises:
        InvalidOptionError: Prompt plus ``max_new_tokens`` exceed ``max_positions`` (512).
    """
    prompt_ids = tokenizer.encode(options.prompt_text)
    total_length = len(prompt_ids) + options.max_new_tokens
    if total_length > max_positions:
        raise InvalidOptionError(
            f"prompt ({len(prompt_ids)} tokens) plus max_new_tokens ({options.max_new_tokens}) is "
            f"{total_length} positions; the decoder has {max_positions}"
        )
    return prompt_ids


@torch.inference_mode()
def decode(
    decoder: TextDecoder,
    tokenizer: Tokenizer,
    image_features: torch.Tensor,
    options: DecodingOptions,
    return_attention: bool = False,
) -> list[Caption]:
    """Generate one caption per row of ``image_features``.

    Args:
        decoder: The text decoder.
        tokenizer: The tokenizer (prompt encoding and caption text).
        image_features: ``(B, N, D)`` image encoder output.
        options: Decoding options.
        return_attention: Record the cross-attention weights of every generated token.

    Returns:
        B captions, in order.
    """
    prompt_ids = encode_prompt(tokenizer, options, decoder.max_positions)
    total_length = len(prompt_ids) + options.max_new_tokens
    batch = image_features.shape[0]
    device = decoder.device
    state = decoder.start(image_features, max_length=total_length)
    generator = None
    if options.temperature > 0 and options.seed is not None:
        generator = torch.Generator(device=device).manual_seed(options.seed)

    input_ids = torch.tensor([prompt_ids], device=device).expand(batch, -1)
    finished = torch.zeros(batch, dtype=torch.bool, device=device)
    chosen_ids, chosen_logprobs, attention_steps = [], [], []
    for _ in range(options.max_new_tokens):
        if return_attention:
            logits, cross_attention = decoder(input_ids, state, return_cross_attention=True)
            # (L, B, H, N) -> (B, L, H, N): the weights of the position that predicts the token.
            attention_steps.append(torch.stack([a[:, :, -1] for a in cross_attention], dim=1).float().cpu())
        else:
            logits = decoder(input_ids, state)
        next_logits = logits[:, -1].float()
        next_ids = sample_next_token(next_logits, options.temperature, options.top_k, options.top_p, generator)
        chosen_ids.append(next_ids)
        chosen_logprobs.append(next_logits.log_softmax(dim=-1).gather(-1, next_ids[:, None]).squeeze(-1))
        finished |= next_ids == SEP_TOKEN_ID
        if bool(finished.all()):
            break
        input_ids = next_ids[:, None]

    if chosen_ids:
        ids = torch.stack(chosen_ids, dim=1).tolist()
        logprobs = torch.stack(chosen_logprobs, dim=1).tolist()
    else:
        ids, logprobs = [[] for _ in range(batch)], [[] for _ in range(batch)]
    attention = torch.stack(attention_steps, dim=1) if attention_steps else None
    captions = []
    for row in range(batch):
        length = ids[row].index(SEP_TOKEN_ID) if SEP_TOKEN_ID in ids[row] else len(ids[row])
        generated = ids[row][:length]
        captions.append(
            Caption(
                text=tokenizer.decode(prompt_ids[1:] + generated).strip(),
                prompt=options.prompt_text,
                token_ids=generated,
                tokens=tokenizer.convert_ids_to_tokens(generated),
                logprobs=logprobs[row][:length],
                finished=length < len(ids[row]),
                cross_attention=None if attention is None else attention[row, :length],
            )
        )
    return captions
