"""Caption decoding: the options, one decoding engine, and its result.

This is the page's ``NestWhile`` loop written out, in the spirit of whisper's ``decoding.py``:

* [`DecodingTask`][bliptk.core.decoding.DecodingTask] owns what every strategy shares: the prompts, encoded and left-padded so
  that prompts of different lengths share one batch; the decoder state; and one step, from the
  decoder's logits to processed scores (repetition penalty, minimum length).
* Strategies choose from those scores: [`SamplingDecoder`][bliptk.core.decoding.SamplingDecoder] (greedy at temperature 0,
  otherwise sampling among the ``top_k`` / ``top_p`` most probable tokens) and
  [`BeamSearchDecoder`][bliptk.core.decoding.BeamSearchDecoder] (``transformers``' beam search, step for step).
* [`decode()`][bliptk.core.decoding.decode] runs a strategy and assembles [`Caption`][bliptk.core.decoding.Caption] records.

The engine works on NumPy arrays and knows the model only through a *decoder backend* (see
[`DecoderBackend`][bliptk.core.decoding.DecoderBackend]): bliptk's [`TextDecoder`][bliptk.model.text_decoder.TextDecoder] in torch, or an ONNX Runtime
session ([`bliptk.exported`][bliptk.exported]). It never imports torch, so the same logic serves both.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field, fields
from typing import Any, NamedTuple, Protocol

import numpy as np

from .errors import InvalidOptionError, PromptWarning, check_positive_int, option_error
from .tokenizer import DEC_TOKEN_ID, PAD_TOKEN_ID, SEP_TOKEN_ID, Tokenizer

__all__ = [
    "BeamSearchDecoder",
    "Caption",
    "DecoderBackend",
    "DecodingOptions",
    "DecodingTask",
    "DEFAULT_PROMPT",
    "SamplingDecoder",
    "StepResult",
    "ImageKeysValues",
    "decode",
    "PAPER_PROMPT",
    "paper_decoding",
]

DEFAULT_PROMPT = "a photography of"
"""The prompt of an image caption when none is given (the page's)."""


@dataclass(frozen=True, kw_only=True)
class DecodingOptions:
    """How to generate a caption. Build it by keyword: ``DecodingOptions(max_new_tokens=20)``, or
    from another with `dataclasses.replace`.

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
        seed: Seed of each image's sampling generator, for reproducible samples (an image gets
            the same samples alone as in a batch); None draws fresh randomness.
        num_beams: Above 1, beam search with this many beams (the BLIP paper used 3); equal to
            ``transformers``' ``generate(num_beams=...)``.
        length_penalty: Beam search ranks finished captions by ``logprob / length**length_penalty``.
        min_new_tokens: ``[SEP]`` cannot be chosen before this many tokens.
        repetition_penalty: Above 1, discourages tokens already in the sequence (CTRL's penalty,
            as in ``transformers``).
        num_return_sequences: Captions per image: the best beams, or independent samples.

    Each field's ``metadata`` holds its command-line help (``help``) and, for options that have no
    meaning in a batch job's one caption per input, ``per_input: False``; the ``bliptk`` command
    and the explorers build their controls from the fields, their types and defaults.
    """

    prompt: str | None = field(default=None, metadata={"help": 'text the caption starts with (default "a photography of"; "" for none)'})
    max_new_tokens: int = field(default=25, metadata={"help": "most tokens to generate, the final [SEP] included"})
    temperature: float = field(default=0.0, metadata={"help": "0 = greedy; above 0 samples"})
    top_k: int | None = field(default=10, metadata={"help": "when sampling, sample among the k most probable tokens"})
    top_p: float | None = field(default=None, metadata={"help": "when sampling, nucleus probability mass"})
    seed: int | None = field(default=None, metadata={"help": "seed of each image's sampling, for reproducible samples"})
    num_beams: int = field(default=1, metadata={"help": "beam search with this many beams (the BLIP paper: 3)"})
    length_penalty: float = field(default=1.0, metadata={"help": "beam search ranks captions by logprob / length**length_penalty"})
    min_new_tokens: int = field(default=0, metadata={"help": "[SEP] cannot come before this many tokens"})
    repetition_penalty: float = field(default=1.0, metadata={"help": "above 1, discourages repeating tokens"})
    num_return_sequences: int = field(default=1, metadata={"help": "captions per image", "per_input": False})

    def __post_init__(self):
        if self.prompt is not None and not isinstance(self.prompt, str):
            raise option_error(f"prompt must be a string or None, got {type(self.prompt).__name__}", "prompt")
        if not _is_int(self.max_new_tokens) or self.max_new_tokens < 0:
            raise option_error(f"max_new_tokens must be a non-negative integer, got {self.max_new_tokens!r}", "max_new_tokens")
        if not _finite_number(self.temperature) or self.temperature < 0:
            raise option_error(f"temperature must be a finite number >= 0, got {self.temperature!r}", "temperature")
        if self.top_k is not None and (not _is_int(self.top_k) or self.top_k < 1):
            raise option_error(f"top_k must be an integer >= 1 or None, got {self.top_k!r}", "top_k")
        if self.top_p is not None and (not _finite_number(self.top_p) or not 0 < self.top_p <= 1):
            raise option_error(f"top_p must be in (0, 1] or None, got {self.top_p!r}", "top_p")
        if self.seed is not None and (not _is_int(self.seed) or self.seed < 0):
            raise option_error(f"seed must be an integer >= 0 or None, got {self.seed!r}", "seed")
        check_positive_int("num_beams", self.num_beams)
        check_positive_int("num_return_sequences", self.num_return_sequences)
        if not _is_int(self.min_new_tokens) or self.min_new_tokens < 0:
            raise option_error(f"min_new_tokens must be a non-negative integer, got {self.min_new_tokens!r}", "min_new_tokens")
        if not _finite_number(self.length_penalty):
            raise option_error(f"length_penalty must be a finite number, got {self.length_penalty!r}", "length_penalty")
        if not _finite_number(self.repetition_penalty) or self.repetition_penalty <= 0:
            raise option_error(f"repetition_penalty must be a number > 0, got {self.repetition_penalty!r}", "repetition_penalty")
        if self.num_beams > 1 and self.temperature > 0:
            raise option_error("beam search is deterministic: use num_beams > 1 with temperature 0", "num_beams", "temperature")
        if self.num_beams > 1 and self.num_return_sequences > self.num_beams:
            raise option_error(
                f"num_return_sequences ({self.num_return_sequences}) cannot exceed num_beams ({self.num_beams})",
                "num_return_sequences",
                "num_beams",
            )
        if self.num_beams == 1 and self.temperature == 0 and self.num_return_sequences > 1:
            raise option_error("several greedy captions would all be the same: sample (temperature > 0) or use beams", "temperature")

    @property
    def prompt_text(self) -> str:
        """The prompt actually used (None resolved to the default)."""
        return DEFAULT_PROMPT if self.prompt is None else self.prompt

    def as_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}


PAPER_PROMPT = "a picture of "
"""The prompt BLIP's COCO captioning was trained and evaluated after (``configs/caption_coco.yaml``)."""


def paper_decoding(
    tokenizer: Tokenizer, prompt: str = PAPER_PROMPT, *, num_beams: int = 3, max_length: int = 20, min_length: int = 5
) -> DecodingOptions:
    """The BLIP paper's decoding for COCO captions: beam search of 3, 5 to 20 tokens, lengths that
    count the prompt's tokens (``[DEC]`` included), as BLIP's ``generate`` does: after
    ``"a picture of "`` (4 tokens), 1 to 16 new ones. ``bliptk eval-coco`` and fine-tuning's
    validation metrics caption with it.

    Args:
        tokenizer: The tokenizer, to count the prompt's tokens.
        prompt: The prompt.
        num_beams: The beams.
        max_length: Most tokens, the prompt's included.
        min_length: Fewest tokens, the prompt's included.
    """
    length = len(tokenizer.encode(prompt))
    return DecodingOptions(
        prompt=prompt, num_beams=num_beams, max_new_tokens=max(1, max_length - length), min_new_tokens=max(0, min_length - length)
    )


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _finite_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


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
    cross_attention: Any = field(default=None, repr=False)

    def __str__(self) -> str:
        return self.text

    @property
    def logprob(self) -> float:
        """Total log-probability of the generated tokens."""
        return float(sum(self.logprobs))


class ImageKeysValues(NamedTuple):
    """What every cross-attention layer reads from the images, computed once per image: per layer,
    keys and values ``(B, H, N, Dh)`` in the backend's own array type."""

    keys: list
    values: list


class DecoderBackend(Protocol):
    """What the engine needs of a model's text decoder.

    Attributes:
        max_positions: Longest sequence the decoder takes (512 for BLIP).
    """

    max_positions: int

    def image_keys_values(self, image_features: np.ndarray) -> ImageKeysValues:
        """The images' keys and values for every cross-attention layer, from their features
        ``(B, N, D)`` (float32)."""

    def start(self, image: ImageKeysValues, max_length: int, padding: np.ndarray | None, image_rows: np.ndarray) -> Any:
        """A decoder state for rows ``image_rows`` (indices into the images), whose prompts are
        left-padded by ``padding`` (None: no padding), with room for ``max_length`` positions."""

    def step(self, state, input_ids: np.ndarray, return_attention: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
        """Feed ``(R, S)`` ids; return float32 next-token logits ``(R, V)`` (those after the last
        input) and, when asked, the cross-attention of that position ``(R, L, H, N)``."""

    def select(self, state, rows: np.ndarray) -> Any:
        """The state of a subset or reordering of the rows."""


# --- one step: logits -> processed scores -> choice -----------------------------------------------


def log_softmax(scores: np.ndarray) -> np.ndarray:
    """Log-probabilities of each row of ``(R, V)`` scores, in float32."""
    shifted = scores - scores.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def process_scores(scores: np.ndarray, sequences: np.ndarray, generated: int, options: DecodingOptions) -> np.ndarray:
    """Apply the repetition penalty and the minimum length to next-token scores, as
    ``transformers``' logits processors do (on logits when choosing one token, on
    log-probabilities in beam search).

    Args:
        scores: ``(R, V)`` scores of the next token.
        sequences: ``(R, S)`` every token so far, the prompt's included.
        generated: How many tokens have been generated so far.
        options: Decoding options.
    """
    if options.repetition_penalty != 1.0:
        scores = scores.copy()
        rows = np.arange(len(scores))[:, None]
        seen = scores[rows, sequences]
        scores[rows, sequences] = np.where(seen < 0, seen * options.repetition_penalty, seen / options.repetition_penalty)
    if generated < options.min_new_tokens:
        scores = scores.copy()
        scores[:, SEP_TOKEN_ID] = -np.inf
    return scores


def sampling_distribution(scores: np.ndarray, temperature: float, top_k: int | None = None, top_p: float | None = None) -> np.ndarray:
    """The distribution a token is sampled from: ``softmax(scores / temperature)`` over the
    ``top_k`` highest scores and the smallest set whose probability reaches ``top_p``.

    Args:
        scores: ``(R, V)`` processed next-token scores.

    Returns:
        ``(R, V)`` float64 probabilities, zero outside the kept tokens.
    """
    scaled = scores.astype(np.float64) / temperature
    if top_k is not None and top_k < scaled.shape[-1]:
        kth_best = np.partition(scaled, -top_k, axis=-1)[:, -top_k:].min(axis=-1, keepdims=True)
        scaled = np.where(scaled < kth_best, -np.inf, scaled)
    probabilities = np.exp(scaled - scaled.max(axis=-1, keepdims=True))
    probabilities /= probabilities.sum(axis=-1, keepdims=True)
    if top_p is not None and top_p < 1:
        order = np.argsort(-probabilities, axis=-1, kind="stable")
        ranked = np.take_along_axis(probabilities, order, axis=-1)
        # Drop a token when the tokens before it already reach top_p (the best always stays); the
        # tolerance keeps 0.5 + 0.3 from falling short of 0.8 by a rounding error.
        drop_ranked = np.cumsum(ranked, axis=-1) - ranked >= top_p - 1e-9
        drop = np.empty_like(drop_ranked)
        np.put_along_axis(drop, order, drop_ranked, axis=-1)
        probabilities = np.where(drop, 0.0, probabilities)
        probabilities /= probabilities.sum(axis=-1, keepdims=True)
    return probabilities


def draw(probabilities: np.ndarray, generator: np.random.Generator) -> int:
    """One token from a ``(V,)`` distribution: the first whose cumulative probability passes a
    uniform draw."""
    cumulative = np.cumsum(probabilities)
    return min(int(np.searchsorted(cumulative, generator.random() * cumulative[-1], side="right")), len(cumulative) - 1)


# --- the task: prompts, decoder state and the model step ------------------------------------------


class DecodingTask:
    """One decoding run over a batch: its prompts, the decoder state, and the model step.

    Each image is decoded ``copies`` times side by side (samples, or beams), so the task has
    ``rows = images x copies`` sequences. Prompts of different lengths are left-padded to the
    longest; the backend gives each row its own positions and never attends to the padding, so a
    row decodes exactly as it would alone.

    Args:
        backend: The model's decoder ([`DecoderBackend`][bliptk.core.decoding.DecoderBackend]).
        tokenizer: Encodes the prompts.
        image_features: The images' features, in the backend's own type (``(B, N, D)``).
        options: Decoding options.
        prompts: One prompt per image (None: ``options.prompt_text`` for every image).
        copies: Sequences per image.

    Raises:
        InvalidOptionError: A prompt plus ``max_new_tokens`` exceeds the decoder's positions.
    """

    def __init__(
        self,
        backend: DecoderBackend,
        tokenizer: Tokenizer,
        image_features,
        options: DecodingOptions,
        prompts: list[str] | None = None,
        copies: int = 1,
    ):
        images = len(image_features)
        self.backend, self.tokenizer, self.options = backend, tokenizer, options
        self.prompts = list(prompts) if prompts is not None else [options.prompt_text] * images
        if len(self.prompts) != images:
            raise InvalidOptionError(f"{len(self.prompts)} prompts for {images} images")
        encoded = [prompt_ids(tokenizer, prompt, options.max_new_tokens, backend.max_positions) for prompt in self.prompts]
        self.prompt_length = max(len(ids) for ids in encoded)
        self.prompt_ids = [ids for ids in encoded for _ in range(copies)]  # per row
        self.image_rows = np.repeat(np.arange(images), copies)
        self.copies = copies
        padding = np.array([self.prompt_length - len(ids) for ids in self.prompt_ids])
        # Every row's tokens so far, the prompt's left-padded. The penalty reads the padding as
        # [DEC], which every prompt starts with, so that it sees each row's own set of tokens.
        self.prompt_input = np.array(
            [[PAD_TOKEN_ID] * pad + ids for pad, ids in zip(padding, self.prompt_ids, strict=True)], dtype=np.int64
        )
        self.sequences = np.where(np.arange(self.prompt_length) < padding[:, None], DEC_TOKEN_ID, self.prompt_input)
        self.state = backend.start(
            backend.image_keys_values(image_features),
            self.prompt_length + options.max_new_tokens,
            padding if padding.any() else None,
            self.image_rows,
        )

    @property
    def rows(self) -> int:
        return len(self.prompt_ids)

    def logits(self, input_ids: np.ndarray, return_attention: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
        """Run the decoder over the next input of every row: ``(R, V)`` next-token logits."""
        return self.backend.step(self.state, input_ids, return_attention)

    def scores(self, scores: np.ndarray, generated: int) -> np.ndarray:
        """Logits or log-probabilities with the repetition penalty and the minimum length applied."""
        return process_scores(scores, self.sequences, generated, self.options)

    def extend(self, next_ids: np.ndarray, rows: np.ndarray | None = None) -> None:
        """Extend each row by its chosen token; with ``rows``, go on with those rows only, in
        that order (finished captions leave, beams are reordered)."""
        if rows is not None:
            self.state = self.backend.select(self.state, rows)
            self.sequences = self.sequences[rows]
        self.sequences = np.concatenate([self.sequences, next_ids[:, None]], axis=1)

    def caption(self, row: int, token_ids: list[int], logprobs: list[float], finished: bool, attention=None) -> Caption:
        """The [`Caption`][bliptk.core.decoding.Caption] of a row's generated tokens."""
        ids = self.prompt_ids[row]
        return Caption(
            text=self.tokenizer.decode(ids[1:] + token_ids).strip(),
            prompt=self.prompts[self.image_rows[row]],
            token_ids=token_ids,
            tokens=self.tokenizer.convert_ids_to_tokens(token_ids),
            logprobs=logprobs,
            finished=finished,
            cross_attention=attention,
        )


# Prompts already warned about (a prompt is checked at every batch, and said once per process).
_WARNED_PROMPTS: set[str] = set()


def prompt_ids(tokenizer: Tokenizer, prompt: str, max_new_tokens: int, max_positions: int) -> list[int]:
    """A prompt's decoder ids, checked to leave room for ``max_new_tokens`` in the decoder.

    Warns:
        PromptWarning: The prompt has characters outside the vocabulary (once per prompt).

    Raises:
        InvalidOptionError: The prompt is no string, or it and ``max_new_tokens`` exceed
            ``max_positions`` (512).
    """
    if not isinstance(prompt, str):
        raise InvalidOptionError(f"a prompt must be a string or None, got {type(prompt).__name__} {prompt!r}")
    unknown = tokenizer.unknown_text(prompt)
    if unknown and prompt not in _WARNED_PROMPTS:
        _WARNED_PROMPTS.add(prompt)
        warnings.warn(
            f"prompt {prompt!r} has text outside BLIP's vocabulary, which the tokenizer turns into [UNK] and the caption "
            f"loses: {', '.join(map(repr, unknown))}",
            PromptWarning,
            stacklevel=2,
        )
    ids = tokenizer.encode(prompt)
    if len(ids) + max_new_tokens > max_positions:
        raise InvalidOptionError(
            f"prompt ({len(ids)} tokens) plus max_new_tokens ({max_new_tokens}) is "
            f"{len(ids) + max_new_tokens} positions; the decoder has {max_positions}"
        )
    return ids


# --- strategies ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StepResult:
    """What one step of [`SamplingDecoder`][bliptk.core.decoding.SamplingDecoder] did.

    Attributes:
        rows: The task rows that took the step.
        input_ids: What each of them fed to the decoder.
        logits: ``(len(rows), V)`` float32 next-token logits.
        chosen: The token each chose.
        cache_length: Positions in the decoder's cache after the step.
    """

    rows: list[int]
    input_ids: list[list[int]]
    logits: np.ndarray
    chosen: list[int]
    cache_length: int


class SamplingDecoder:
    """Greedy decoding (temperature 0), or sampling among the ``top_k`` and ``top_p`` most
    probable tokens, one step at a time. A finished caption leaves the batch, so the remaining
    steps cost only what is left.

    Each image samples from its own generator seeded with ``options.seed``, its samples one after
    another in row order: an image gets the same samples alone as in any batch.

    Args:
        task: The decoding task (``copies = num_return_sequences``).
        return_attention: Keep the cross-attention that produced each token.
    """

    def __init__(self, task: DecodingTask, return_attention: bool = False):
        self.task, self.return_attention = task, return_attention
        options = task.options
        self.generators = None
        if options.temperature > 0:
            if options.seed is None:
                fresh = np.random.default_rng()
                self.generators = [fresh] * (task.rows // task.copies)
            else:
                self.generators = [np.random.default_rng(options.seed) for _ in range(task.rows // task.copies)]
        self.active = list(range(task.rows))  # the task row of each sequence still being generated
        self.input_ids = task.prompt_input
        self.token_ids: list[list[int]] = [[] for _ in range(task.rows)]
        self.logprobs: list[list[float]] = [[] for _ in range(task.rows)]
        self.attention: list[list[np.ndarray]] = [[] for _ in range(task.rows)]
        self.finished = [False] * task.rows
        self.attention_shape: tuple[int, ...] = ()  # (L, H, N) of one token's cross-attention, once seen
        self.steps = 0

    @property
    def done(self) -> bool:
        return not self.active or self.steps >= self.task.options.max_new_tokens

    def step(self) -> StepResult | None:
        """Feed every active row its next input and choose its next token; None when done."""
        if self.done:
            return None
        task = self.task
        logits, attention = task.logits(self.input_ids, self.return_attention)
        if attention is not None:
            self.attention_shape = attention.shape[1:]
        next_ids = self._choose(task.scores(logits, self.steps))
        logprobs = np.take_along_axis(log_softmax(logits), next_ids[:, None], axis=-1)[:, 0]
        result = StepResult(list(self.active), self.input_ids.tolist(), logits, next_ids.tolist(), task.prompt_length + self.steps)
        going_on = []
        for position, (row, token) in enumerate(zip(self.active, next_ids.tolist(), strict=True)):
            if token == SEP_TOKEN_ID:
                self.finished[row] = True
                continue
            self.token_ids[row].append(token)
            self.logprobs[row].append(float(logprobs[position]))
            if attention is not None:
                self.attention[row].append(attention[position])
            going_on.append(position)
        self.steps += 1
        if len(going_on) < len(self.active):
            keep = np.array(going_on, dtype=np.int64)
            self.active = [self.active[position] for position in going_on]
            next_ids = next_ids[keep]
            task.extend(next_ids, keep)
        else:
            task.extend(next_ids)
        self.input_ids = next_ids[:, None]
        return result

    def _choose(self, scores: np.ndarray) -> np.ndarray:
        options = self.task.options
        if self.generators is None:
            return scores.argmax(axis=-1)
        probabilities = sampling_distribution(scores, options.temperature, options.top_k, options.top_p)
        images = self.task.image_rows[self.active]
        return np.array([draw(row, self.generators[image]) for row, image in zip(probabilities, images, strict=True)], dtype=np.int64)

    def run(self) -> list[Caption]:
        while self.step() is not None:
            pass
        return self.captions()

    def captions(self) -> list[Caption]:
        """A caption per row, those of each image together."""
        task = self.task
        captions = []
        for row in range(task.rows):
            attention = None
            if self.return_attention:  # (T, L, H, N); a caption that ended at once has T = 0
                attention = np.stack(self.attention[row]) if self.attention[row] else np.zeros((0, *self.attention_shape), dtype=np.float32)
            captions.append(task.caption(row, self.token_ids[row], self.logprobs[row], self.finished[row], attention))
        return captions


_NEVER = -1.0e9  # transformers' score for excluded candidates


@dataclass
class _Finished:
    """The best finished captions of one image, best first (at most ``num_beams``)."""

    scores: list[float] = field(default_factory=list)
    tokens: list[list[int]] = field(default_factory=list)
    logprobs: list[list[float]] = field(default_factory=list)
    ended: list[bool] = field(default_factory=list)

    def add(self, score: float, tokens: list[int], logprobs: list[float], ended: bool, capacity: int) -> None:
        # Like transformers' top-k over [old finished, new], the earlier entry wins a tie.
        position = next((i for i, old in enumerate(self.scores) if score > old), len(self.scores))
        if position >= capacity:
            return
        self.scores.insert(position, score)
        self.tokens.insert(position, tokens)
        self.logprobs.insert(position, logprobs)
        self.ended.insert(position, ended)
        del self.scores[capacity:], self.tokens[capacity:], self.logprobs[capacity:], self.ended[capacity:]

    def full(self, capacity: int) -> bool:
        return len(self.scores) >= capacity


def _top(values: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` largest of each row, largest first (earlier index first among equals): values
    and indices."""
    candidates = np.argpartition(-values, k - 1, axis=-1)[:, :k]
    picked = np.take_along_axis(values, candidates, axis=-1)
    order = np.lexsort((candidates, -picked), axis=-1)
    indices = np.take_along_axis(candidates, order, axis=-1)
    return np.take_along_axis(values, indices, axis=-1), indices


class BeamSearchDecoder:
    """Beam search as ``transformers``' ``generate(num_beams=...)`` does it.

    Each step extends every running beam by every token, keeps the ``2 * num_beams`` best
    continuations of each image, moves those that end (``[SEP]``, or the length limit) among the
    best ``num_beams`` to the finished list with the score ``logprob / length**length_penalty``,
    and runs on with the best ``num_beams`` that did not end. The search stops when no running
    beam can still beat the worst of ``num_beams`` finished captions (``transformers``' default
    heuristic, ``early_stopping=False``), or at the length limit.

    Args:
        task: The decoding task (``copies = num_beams``).
    """

    def __init__(self, task: DecodingTask):
        self.task = task

    def run(self) -> list[Caption]:
        """``num_return_sequences`` best captions per image, best first, images in order."""
        task, options = self.task, self.task.options
        beams, limit = options.num_beams, options.max_new_tokens
        images = task.rows // beams
        running_scores = np.zeros((images, beams), dtype=np.float32)
        running_scores[:, 1:] = _NEVER  # at first all beams are the same: expand only one
        running_logprobs: list[list[float]] = [[] for _ in range(task.rows)]
        finished = [_Finished() for _ in range(images)]
        can_improve = [True] * images
        input_ids = task.prompt_input
        for step in range(limit):
            logits, _ = task.logits(input_ids)
            logprobs = log_softmax(logits)
            processed = task.scores(logprobs, step)
            vocabulary = processed.shape[-1]
            totals = (processed.reshape(images, beams, vocabulary) + running_scores[:, :, None]).reshape(images, -1)
            top_scores, top_indices = _top(totals, 2 * beams)
            source_rows = top_indices // vocabulary + np.arange(images)[:, None] * beams
            tokens = top_indices % vocabulary
            at_limit = step + 1 == limit
            ends = (tokens == SEP_TOKEN_ID) | at_limit

            # Candidates that end, among the best `beams`, join the finished captions.
            length_norm = (step + 1) ** options.length_penalty
            for image in range(images):
                if not can_improve[image]:
                    continue
                for rank in range(beams):
                    if not ends[image, rank]:
                        continue
                    row, token = int(source_rows[image, rank]), int(tokens[image, rank])
                    generated = task.sequences[row, task.prompt_length :].tolist()
                    ended = token == SEP_TOKEN_ID
                    finished[image].add(
                        float(top_scores[image, rank]) / length_norm,
                        generated if ended else generated + [token],
                        running_logprobs[row] + ([] if ended else [float(logprobs[row, token])]),
                        ended,
                        beams,
                    )
            if at_limit or bool(ends.all()):
                break

            # The best `beams` candidates that go on become the running beams.
            going_on = top_scores + ends.astype(np.float32) * _NEVER
            keep_scores, keep = _top(going_on, beams)
            chosen_rows = np.take_along_axis(source_rows, keep, axis=-1).reshape(-1)
            chosen_tokens = np.take_along_axis(tokens, keep, axis=-1).reshape(-1)
            running_logprobs = [
                running_logprobs[row] + [float(logprobs[row, token])] for row, token in zip(chosen_rows, chosen_tokens, strict=True)
            ]
            running_scores = keep_scores
            task.extend(chosen_tokens, chosen_rows)
            input_ids = chosen_tokens[:, None]

            # transformers' default stopping heuristic: stop an image once its best running beam,
            # at the current length, cannot beat the worst of `beams` finished captions.
            best_running = running_scores[:, 0] / (step + 1) ** options.length_penalty
            for image in range(images):
                if can_improve[image] and finished[image].full(beams) and best_running[image] <= finished[image].scores[-1]:
                    can_improve[image] = False
            if not any(can_improve):
                break

        captions = []
        for image in range(images):
            done = finished[image]
            for rank in range(options.num_return_sequences):
                if rank < len(done.tokens):
                    captions.append(task.caption(image * beams, done.tokens[rank], done.logprobs[rank], done.ended[rank]))
                else:
                    captions.append(task.caption(image * beams, [], [], False))
        return captions


def decode(
    backend: DecoderBackend,
    tokenizer: Tokenizer,
    image_features,
    options: DecodingOptions,
    prompts: list[str] | None = None,
    return_attention: bool = False,
) -> list[Caption]:
    """Generate captions for a batch of images.

    Args:
        backend: The model's text decoder ([`DecoderBackend`][bliptk.core.decoding.DecoderBackend]).
        tokenizer: The tokenizer (prompt encoding and caption text).
        image_features: ``(B, N, D)`` image encoder output, in the backend's type.
        options: Decoding options.
        prompts: One prompt per image, of any lengths (None: ``options.prompt_text`` for all).
        return_attention: Keep the cross-attention weights of every generated token (greedy and
            sampling), as NumPy arrays ``(T, L, H, N)``.

    Returns:
        ``B * num_return_sequences`` captions: those of each image together, in order (the best
        beam first for beam search).
    """
    if options.num_beams > 1:
        if return_attention:
            raise InvalidOptionError("return_attention works with greedy decoding and sampling, not beam search")
        return BeamSearchDecoder(DecodingTask(backend, tokenizer, image_features, options, prompts, copies=options.num_beams)).run()
    task = DecodingTask(backend, tokenizer, image_features, options, prompts, copies=options.num_return_sequences)
    return SamplingDecoder(task, return_attention).run()
