"""Caption decoding: options, the step-by-step loop, and its result.

This is the page's ``NestWhile`` loop written out: the prompt's tokens go through the decoder in
one step (filling the KV cache), then one token is chosen at a time, greedily (temperature 0) or
by sampling among the ``top_k`` most probable, until ``[SEP]`` or ``max_new_tokens``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields

import torch

from .errors import InvalidOptionError, check_positive_int
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
        num_beams: Above 1, beam search with this many beams (the BLIP paper used 3); equal to
            ``transformers``' ``generate(num_beams=...)``.
        length_penalty: Beam search ranks finished captions by ``logprob / length**length_penalty``.
        min_new_tokens: ``[SEP]`` cannot be chosen before this many tokens.
        repetition_penalty: Above 1, discourages tokens already in the sequence (CTRL's penalty,
            as in ``transformers``).
        num_return_sequences: Captions per image: the best beams, or independent samples.
    """

    prompt: str | None = None
    max_new_tokens: int = 25
    temperature: float = 0.0
    top_k: int | None = 10
    top_p: float | None = None
    seed: int | None = None
    num_beams: int = 1
    length_penalty: float = 1.0
    min_new_tokens: int = 0
    repetition_penalty: float = 1.0
    num_return_sequences: int = 1

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
        check_positive_int("num_beams", self.num_beams)
        check_positive_int("num_return_sequences", self.num_return_sequences)
        if isinstance(self.min_new_tokens, bool) or not isinstance(self.min_new_tokens, int) or self.min_new_tokens < 0:
            raise InvalidOptionError(f"min_new_tokens must be a non-negative integer, got {self.min_new_tokens!r}")
        if not _finite_number(self.length_penalty):
            raise InvalidOptionError(f"length_penalty must be a finite number, got {self.length_penalty!r}")
        if not _finite_number(self.repetition_penalty) or self.repetition_penalty <= 0:
            raise InvalidOptionError(f"repetition_penalty must be a number > 0, got {self.repetition_penalty!r}")
        if self.num_beams > 1 and self.temperature > 0:
            raise InvalidOptionError("beam search is deterministic: use num_beams > 1 with temperature 0")
        if self.num_beams > 1 and self.num_return_sequences > self.num_beams:
            raise InvalidOptionError(f"num_return_sequences ({self.num_return_sequences}) cannot exceed num_beams ({self.num_beams})")
        if self.num_beams == 1 and self.temperature == 0 and self.num_return_sequences > 1:
            raise InvalidOptionError("several greedy captions would all be the same: sample (temperature > 0) or use beams")

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


def decoding_options_from(options: dict) -> DecodingOptions:
    """:class:`DecodingOptions` from keyword arguments, naming the valid ones when one is not."""
    valid = [f.name for f in fields(DecodingOptions)]
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise InvalidOptionError(f"unknown decoding option(s) {', '.join(unknown)}; valid: {', '.join(valid)}")
    return DecodingOptions(**options)


def _finite_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def process_scores(scores: torch.Tensor, sequences: torch.Tensor, generated: int, options: DecodingOptions) -> torch.Tensor:
    """Apply the repetition penalty and the minimum length to next-token scores, as
    ``transformers``' logits processors do (on logits when choosing one token, on
    log-probabilities in beam search).

    Args:
        scores: ``(B, V)`` scores of the next token.
        sequences: ``(B, S)`` every token so far, the prompt's included.
        generated: How many tokens have been generated so far.
        options: Decoding options.
    """
    if options.repetition_penalty != 1.0:
        seen = scores.gather(1, sequences)
        seen = torch.where(seen < 0, seen * options.repetition_penalty, seen / options.repetition_penalty)
        scores = scores.scatter(1, sequences, seen)
    if generated < options.min_new_tokens:
        scores = scores.clone()
        scores[:, SEP_TOKEN_ID] = float("-inf")
    return scores


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
        ``B * num_return_sequences`` captions: those of each image together, in order (the best
        beam first for beam search).
    """
    if options.num_beams > 1:
        from .beam_search import beam_search

        return beam_search(decoder, tokenizer, image_features, options)
    if options.num_return_sequences > 1:
        image_features = image_features.repeat_interleave(options.num_return_sequences, dim=0)
    prompt_ids = encode_prompt(tokenizer, options, decoder.max_positions)
    total_length = len(prompt_ids) + options.max_new_tokens
    batch = image_features.shape[0]
    device = decoder.device
    state = decoder.start(image_features, max_length=total_length)
    generator = None
    if options.temperature > 0 and options.seed is not None:
        generator = torch.Generator(device=device).manual_seed(options.seed)

    input_ids = torch.tensor([prompt_ids], device=device).expand(batch, -1)
    sequences = input_ids  # every token so far, for the repetition penalty
    rows = list(range(batch))  # the batch row of each sequence still being generated
    ids: list[list[int]] = [[] for _ in range(batch)]
    logprobs: list[list[float]] = [[] for _ in range(batch)]
    attention: list[list[torch.Tensor]] = [[] for _ in range(batch)]
    finished = [False] * batch
    # (0, L, H, N): the attention of a caption with no generated token.
    no_attention = torch.zeros(0, len(decoder.layers), decoder.num_heads, image_features.shape[1])
    for step in range(options.max_new_tokens):
        if return_attention:
            logits, cross_attention = decoder(input_ids, state, return_cross_attention=True)
            # L x (A, H, S, N) -> (A, L, H, N): the weights of the position that predicts the token.
            step_attention = torch.stack([a[:, :, -1] for a in cross_attention], dim=1).float().cpu()
        else:
            logits = decoder(input_ids, state)
        next_logits = logits[:, -1].float()
        scores = process_scores(next_logits, sequences, step, options)
        next_ids = sample_next_token(scores, options.temperature, options.top_k, options.top_p, generator)
        sequences = torch.cat([sequences, next_ids[:, None]], dim=1)
        next_logprobs = next_logits.log_softmax(dim=-1).gather(-1, next_ids[:, None]).squeeze(-1)
        still_going = []
        for position, (row, token, logprob) in enumerate(zip(rows, next_ids.tolist(), next_logprobs.tolist())):
            if token == SEP_TOKEN_ID:
                finished[row] = True
                continue
            ids[row].append(token)
            logprobs[row].append(logprob)
            if return_attention:
                attention[row].append(step_attention[position])
            still_going.append(position)
        if not still_going:
            break
        if len(still_going) < len(rows):
            # Finished captions leave the batch, so the remaining steps cost only what is left.
            keep = torch.tensor(still_going, device=device)
            state, next_ids, sequences = state.select(keep), next_ids[keep], sequences[keep]
            rows = [rows[position] for position in still_going]
        input_ids = next_ids[:, None]

    captions = []
    for row in range(batch):
        captions.append(
            Caption(
                text=tokenizer.decode(prompt_ids[1:] + ids[row]).strip(),
                prompt=options.prompt_text,
                token_ids=ids[row],
                tokens=tokenizer.convert_ids_to_tokens(ids[row]),
                logprobs=logprobs[row],
                finished=finished[row],
                cross_attention=(torch.stack(attention[row]) if attention[row] else no_attention) if return_attention else None,
            )
        )
    return captions
