"""Scoring a given caption: how likely the model finds it, token by token (teacher forcing).

The decoder is fed the prompt, then the caption's own tokens one at a time through the same
engine that generates captions ([`DecodingTask`][bliptk.core.decoding.DecodingTask]), on any runtime;
at each step the fed token's log-probability, the entropy of the step's distribution and the
token's margin over the best other token are kept. The prompt is conditioned on, never scored;
``[SEP]`` is scored last, as the end of the caption. A greedy caption scored this way gets its own
``logprobs`` back.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .decoding import DecoderBackend, DecodingOptions, DecodingTask
from .decoding_strategies import StepResult
from .errors import InvalidArgumentError, InvalidOptionError, PromptWarning, check_positive_int, option_error
from .pipeline import features_by_chunk, own_options, request_prompt, say_if_random
from .tokenizer import SEP_TOKEN_ID, Tokenizer
from .video import VideoFrames, VideoOptions

__all__ = [
    "CaptionScore",
    "TeacherForced",
    "token_statistics",
    "caption_ids",
    "requested_scores",
    "score",
    "score_features",
    "teacher_forced",
]


@dataclass(frozen=True)
class CaptionScore:
    """How likely the model finds one caption of one image.

    Attributes:
        text: The caption scored (after the prompt, which is not scored).
        prompt: The prompt it was conditioned on.
        token_ids: The scored tokens ``(T,)``: the caption's WordPieces, then ``[SEP]`` (102).
        tokens: Their WordPiece strings (the last is ``"[SEP]"``).
        logprobs: ``(T,)`` each token's log-probability given the image, the prompt and the tokens
            before it (teacher-forced).
        entropy: ``(T,)`` the entropy (nats) of each step's next-token distribution.
        margin: ``(T,)`` each token's log-probability minus that of the best other token: positive
            where the token was the model's first choice.
    """

    text: str
    prompt: str
    token_ids: list[int]
    tokens: list[str]
    logprobs: np.ndarray = field(repr=False)
    entropy: np.ndarray = field(repr=False)
    margin: np.ndarray = field(repr=False)

    @property
    def total(self) -> float:
        """The caption's log-probability: the sum of ``logprobs`` (``[SEP]`` included)."""
        return float(self.logprobs.sum())

    @property
    def mean(self) -> float:
        """The mean log-probability per token (``total / T``): comparable across lengths."""
        return float(self.logprobs.mean())

    @property
    def perplexity(self) -> float:
        """``exp(-mean)``."""
        return float(np.exp(-self.mean))

    def words(self) -> list[tuple[str, float, float]]:
        """The caption word by word: ``(word, log-probability, lowest margin)``, a word's
        WordPieces joined (their log-probabilities summed, the lowest margin kept); ``[SEP]`` last."""
        words: list[list[Any]] = []
        for token, logprob, margin in zip(self.tokens, self.logprobs.tolist(), self.margin.tolist(), strict=True):
            if token.startswith("##") and words:
                words[-1] = [words[-1][0] + token[2:], words[-1][1] + logprob, min(words[-1][2], margin)]
            else:
                words.append([token, logprob, margin])
        return [(word, float(logprob), float(margin)) for word, logprob, margin in words]

    def __str__(self) -> str:
        return f"{self.text!r}: total {self.total:.3f}, mean {self.mean:.3f} over {len(self.token_ids)} tokens"


# Captions already warned about (said once per process).
_WARNED_CAPTIONS: set[str] = set()


def caption_ids(tokenizer: Tokenizer, caption: str, prompt: str, max_positions: int, where: str = "caption") -> tuple[str, list[int]]:
    """The tokens of a caption to score after a prompt, ``[SEP]`` last.

    A caption that starts with the prompt (as a generated caption's text does) is scored after
    it: the prompt's tokens are conditioned on, not scored twice.

    Returns:
        The text scored, and its ids ending with ``[SEP]``.

    Raises:
        InvalidArgumentError: The caption is no string.
        InvalidOptionError: The caption is empty, or it and the prompt exceed ``max_positions``.

    Warns:
        PromptWarning: The caption has characters outside the vocabulary, scored as ``[UNK]``.
    """
    if not isinstance(caption, str):
        raise InvalidArgumentError(f"{where} must be a string, got {type(caption).__name__} {str(caption)[:60]!r}")
    if not caption.strip():
        raise InvalidOptionError(f"{where} is empty: give the text to score (its end, [SEP], is scored after it)")
    prompt_ids, ids = tokenizer.encode(prompt)[1:], tokenizer.encode(caption)[1:]
    text = caption.strip()
    if prompt_ids and ids[: len(prompt_ids)] == prompt_ids:
        ids = ids[len(prompt_ids) :]
        text = tokenizer.decode(ids)
    unknown = tokenizer.unknown_text(caption)
    if unknown and caption not in _WARNED_CAPTIONS:
        _WARNED_CAPTIONS.add(caption)
        warnings.warn(
            f"{where} {caption[:80]!r} has text outside BLIP's vocabulary, scored as [UNK]: {', '.join(map(repr, unknown))}",
            PromptWarning,
            stacklevel=4,
        )
    positions = 1 + len(prompt_ids) + len(ids) + 1
    if positions > max_positions:
        raise InvalidOptionError(
            f"{where} is {len(ids)} tokens; with [DEC], the prompt ({len(prompt_ids)} tokens) and [SEP] that is {positions} "
            f"positions, and the decoder has {max_positions}: shorten it"
        )
    return text, [*ids, SEP_TOKEN_ID]


def token_statistics(logits: np.ndarray, tokens: np.ndarray, statistics: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each row's log-probability of its token, the entropy of its distribution and the token's
    margin over the best other token, from ``(R, V)`` logits (entropy and margin NaN without
    ``statistics``)."""
    logits = logits.astype(np.float32, copy=False)
    positions = np.arange(len(tokens))
    top = logits.max(axis=-1)
    shifted = np.exp(logits - top[:, None])
    total = shifted.sum(axis=-1)
    log_total = np.log(total)
    chosen = logits[positions, tokens] - top - log_total
    if not statistics:
        nothing = np.full(len(tokens), np.nan)
        return chosen, nothing, nothing
    # entropy = log Z - sum p * (x - max); 0 * log 0 is 0, as exp underflows to 0
    entropy = log_total - (shifted * (logits - top[:, None])).sum(axis=-1) / total
    others = logits.copy()
    others[positions, tokens] = -np.inf
    margin = logits[positions, tokens] - others.max(axis=-1)
    return chosen, entropy, margin


class TeacherForced:
    """The decoder fed given tokens instead of choosing them: each row's caption, then ``[SEP]``,
    one token a step. A row leaves the batch after its ``[SEP]``, as a generated caption does.

    Args:
        task: The decoding task (one row per caption; ``max_new_tokens`` at least the longest).
        targets: Each row's tokens to feed, ``[SEP]`` last.
        statistics: Also each step's entropy and margin (False: NaN, the log-probabilities only,
            in a third of the time: what a search needs).
    """

    def __init__(self, task: DecodingTask, targets: list[list[int]], statistics: bool = True):
        self.task, self.targets, self.statistics = task, targets, statistics
        self.active = list(range(task.rows))
        self.input_ids = task.prompt_input
        self.kept: list[list[tuple[float, float, float]]] = [[] for _ in range(task.rows)]
        self.steps = 0

    @property
    def done(self) -> bool:
        return not self.active

    def step(self) -> StepResult | None:
        """Feed every row its next token; None when every caption is scored."""
        if self.done:
            return None
        task = self.task
        logits, _ = task.logits(self.input_ids)
        fed = np.array([self.targets[row][self.steps] for row in self.active], dtype=np.int64)
        chosen, entropy, margin = token_statistics(logits, fed, self.statistics)
        for position, row in enumerate(self.active):
            self.kept[row].append((float(chosen[position]), float(entropy[position]), float(margin[position])))
        result = StepResult(list(self.active), self.input_ids.tolist(), logits, fed.tolist(), task.prompt_length + self.steps)
        self.steps += 1
        going_on = [position for position, row in enumerate(self.active) if self.steps < len(self.targets[row])]
        if going_on:
            keep = np.array(going_on, dtype=np.int64)
            if len(going_on) < len(self.active):
                self.active = [self.active[position] for position in going_on]
                task.extend(fed[keep], keep)
            else:
                task.extend(fed)
            self.input_ids = fed[keep][:, None]
        else:
            self.active = []
        return result

    def finalize(self) -> list[np.ndarray]:
        """Each row's ``(T, 3)`` log-probabilities, entropies and margins."""
        return [np.array(rows, dtype=np.float64).reshape(-1, 3) for rows in self.kept]


def teacher_forced(
    decoder: DecoderBackend, tokenizer: Tokenizer, features, targets: list[list[int]], prompts: list[str], statistics: bool = True
) -> list[np.ndarray]:
    """Feed each image's target tokens after its prompt: each row's ``(T, 3)`` log-probabilities,
    entropies and margins (see [`TeacherForced`][bliptk.core.scoring.TeacherForced]).

    Args:
        decoder: The model's decoder.
        tokenizer: Encodes the prompts.
        features: ``(B, N, D)`` image features, in the backend's own type.
        targets: Each image's token ids to feed (``[SEP]`` last where the caption ends).
        prompts: Each image's prompt.
        statistics: Also each step's entropy and margin (else NaN).
    """
    options = DecodingOptions(max_new_tokens=max(len(ids) for ids in targets))
    forced = TeacherForced(DecodingTask(decoder, tokenizer, features, options, prompts), targets, statistics)
    while forced.step() is not None:
        pass
    return forced.finalize()


def score_features(
    decoder: DecoderBackend, tokenizer: Tokenizer, features, captions: list[str], prompts: list[str], statistics: bool = True
) -> list[CaptionScore]:
    """Score captions of images given their features.

    Args:
        decoder: The model's decoder ([`DecoderBackend`][bliptk.core.decoding.DecoderBackend]).
        tokenizer: The tokenizer.
        features: ``(B, N, D)`` image features, in the backend's own type.
        captions: One caption per image.
        prompts: One prompt per image, conditioned on.
        statistics: Also each token's entropy and margin (False: NaN; faster).

    Returns:
        One [`CaptionScore`][bliptk.core.scoring.CaptionScore] per image.
    """
    scored = [
        caption_ids(tokenizer, caption, prompt, decoder.max_positions, f"caption {index}")
        for index, (caption, prompt) in enumerate(zip(captions, prompts, strict=True))
    ]
    values = teacher_forced(decoder, tokenizer, features, [ids for _, ids in scored], prompts, statistics)
    return [
        CaptionScore(
            text=text,
            prompt=prompt,
            token_ids=ids,
            tokens=tokenizer.convert_ids_to_tokens(ids),
            logprobs=values[:, 0].copy(),
            entropy=values[:, 1].copy(),
            margin=values[:, 2].copy(),
        )
        for (text, ids), prompt, values in zip(scored, prompts, values, strict=True)
    ]


def requested_scores(images, captions) -> tuple[list, list[tuple[int, str]]]:
    """What a ``score(images, captions)`` call asks for: the inputs, and one ``(input index,
    caption)`` row per score.

    One input and a list scores each caption of that input; a list and one caption scores the
    caption for each input (what a search does); two lists pair them.

    Raises:
        InvalidArgumentError: Captions that are neither a string nor a list.
        InvalidOptionError: Lists of different lengths.
    """
    single = not isinstance(images, list | tuple) or isinstance(images, VideoFrames)
    items = [images] if single else list(images)
    if isinstance(captions, str):
        return items, [(item, captions) for item in range(len(items))]
    if not isinstance(captions, list | tuple):
        raise InvalidArgumentError(f"captions must be a string or a list of strings, got {type(captions).__name__}")
    if single:
        return items, [(0, caption) for caption in captions]
    if len(captions) != len(items):
        raise InvalidOptionError(
            f"{len(captions)} captions for {len(items)} images: give one caption per image, one caption for all, or a list for one image"
        )
    return items, list(enumerate(captions))


def score(backend, images, captions, prompt: str | None, video_options: VideoOptions, batch_size: int = 16) -> list[CaptionScore]:
    """Score captions of images or videos (see
    [`CaptionBackend.score()`][bliptk.captioning.backend.CaptionBackend.score]): images a chunk of
    ``batch_size`` scores at a time, each distinct image encoded once; a video's frames pooled."""
    say_if_random(backend)
    check_positive_int("batch_size", batch_size)
    if prompt is not None and not isinstance(prompt, str):
        raise option_error(f"a prompt must be a string or None, got {type(prompt).__name__} {prompt!r}", "prompt")
    own = own_options(backend, DecodingOptions(prompt=prompt))
    items, rows = requested_scores(images, captions)
    scores: dict[int, CaptionScore] = {}
    for features, chunk, video in features_by_chunk(backend, items, [item for item, _ in rows], video_options, batch_size):
        prompts = [request_prompt(None, own, video)] * len(chunk)
        scored = score_features(backend.decoder, backend.tokenizer, features, [rows[row][1] for row in chunk], prompts)
        scores.update(zip(chunk, scored, strict=True))
    return [scores[row] for row in range(len(rows))]
