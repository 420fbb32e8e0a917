"""Caption decoding: the options, one decoding engine, and its result.

This is the page's ``NestWhile`` loop written out, in the spirit of whisper's ``decoding.py``:

* [`DecodingOptions`][bliptk.core.decoding.DecodingOptions] say how to decode, and
  [`Caption`][bliptk.core.decoding.Caption] is what comes out.
* [`DecodingTask`][bliptk.core.decoding.DecodingTask] owns what every strategy shares: the prompts, encoded and left-padded so
  that prompts of different lengths share one batch; the decoder state; and one step, from the
  decoder's logits to scores adjusted by the options' [score filters][bliptk.core.score_filters]
  (repetition penalty, minimum length).
* The strategies ([`bliptk.core.decoding_strategies`][bliptk.core.decoding_strategies]: greedy,
  sampling, beam search) choose from those scores, one ``step()`` at a time, and ``finalize()``
  into captions; [`decode()`][bliptk.core.decoding_strategies.decode] is the one loop that runs them.

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
from .score_filters import MinNewTokens, RepetitionPenalty, ScoreFilter, apply_filters
from .tokenizer import DEC_TOKEN_ID, PAD_TOKEN_ID, Tokenizer

__all__ = [
    "Caption",
    "DecoderBackend",
    "DecodingOptions",
    "DecodingTask",
    "DEFAULT_PROMPT",
    "ImageKeysValues",
    "PAPER_PROMPT",
    "paper_decoding",
    "prompt_ids",
    "score_filters",
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
        self._check_each()
        self._check_together()

    def _check_each(self) -> None:
        """Each option's own range."""
        if self.prompt is not None and not isinstance(self.prompt, str):
            raise option_error(f"prompt must be a string or None, got {type(self.prompt).__name__}", "prompt")
        for name in ("max_new_tokens", "min_new_tokens"):
            value = getattr(self, name)
            if not _is_int(value) or value < 0:
                raise option_error(f"{name} must be a non-negative integer, got {value!r}", name)
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
        if not _finite_number(self.length_penalty):
            raise option_error(f"length_penalty must be a finite number, got {self.length_penalty!r}", "length_penalty")
        if not _finite_number(self.repetition_penalty) or self.repetition_penalty <= 0:
            raise option_error(f"repetition_penalty must be a number > 0, got {self.repetition_penalty!r}", "repetition_penalty")

    def _check_together(self) -> None:
        """The options that contradict one another."""
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
        entropy: Where asked (a folder job's ``scores``), the entropy (nats) of the model's
            distribution at each generated token's step; else None.
    """

    text: str
    prompt: str
    token_ids: list[int]
    tokens: list[str]
    logprobs: list[float]
    finished: bool
    cross_attention: Any = field(default=None, repr=False)
    entropy: list[float] | None = field(default=None, repr=False)

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


def score_filters(options: DecodingOptions) -> list[ScoreFilter]:
    """The adjustments the options ask for, in ``transformers``' order: the repetition penalty,
    then the minimum length."""
    filters: list[ScoreFilter] = []
    if options.repetition_penalty != 1.0:
        filters.append(RepetitionPenalty(options.repetition_penalty))
    if options.min_new_tokens > 0:
        filters.append(MinNewTokens(options.min_new_tokens))
    return filters


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
        self.filters = score_filters(options)
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
        """Logits or log-probabilities through the task's score filters (the repetition penalty,
        the minimum length)."""
        return apply_filters(self.filters, scores, self.sequences, generated)

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
            text=self.tokenizer.caption_text(ids, token_ids),
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
