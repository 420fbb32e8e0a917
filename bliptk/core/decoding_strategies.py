"""The decoding strategies, each one step at a time, and the one loop that runs them.

A strategy owns how tokens are chosen from a [`DecodingTask`][bliptk.core.decoding.DecodingTask]'s
scores. Each exposes the same three things: ``done``, ``step()`` (feed the decoder once, choose,
and report a [`StepResult`][bliptk.core.decoding_strategies.StepResult]; None once done) and
``finalize()`` (the captions). [`decode()`][bliptk.core.decoding_strategies.decode] is the loop;
the [`Stepper`][bliptk.model.stepper.Stepper] and the step-through explorer call ``step()``
themselves, so they follow any strategy, beam search included.

* [`Greedy`][bliptk.core.decoding_strategies.Greedy]: the most probable token (temperature 0).
* [`Sampling`][bliptk.core.decoding_strategies.Sampling]: a draw among the ``top_k`` / ``top_p``
  most probable tokens.
* [`BeamSearch`][bliptk.core.decoding_strategies.BeamSearch]: ``transformers``' beam search, step
  for step.

A new strategy is one class here with those three members and one branch of
[`strategy_for()`][bliptk.core.decoding_strategies.strategy_for].
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from .decoding import Caption, DecoderBackend, DecodingOptions, DecodingTask
from .score_filters import log_softmax
from .tokenizer import SEP_TOKEN_ID, Tokenizer

__all__ = [
    "BeamSearch",
    "Greedy",
    "Hypothesis",
    "Sampling",
    "StepResult",
    "Strategy",
    "decode",
    "draw",
    "run",
    "sampling_distribution",
    "strategy_for",
]


@dataclass(frozen=True)
class StepResult:
    """What one step of a strategy did.

    Attributes:
        rows: The task rows fed in this step (beam search: the running beams, best first).
        input_ids: What each of them fed to the decoder (the whole prompt at first).
        logits: ``(len(rows), V)`` float32 next-token logits.
        chosen: The token each row chose; beam search: the token of each continuation kept
            (the ``2 * num_beams`` best of each image, best first, those that end included).
        parents: Beam search: the index into ``rows`` that each of ``chosen`` continues;
            None for strategies where each row continues itself.
        cache_length: Positions in the decoder's cache after the step.
    """

    rows: list[int]
    input_ids: list[list[int]]
    logits: np.ndarray
    chosen: list[int]
    cache_length: int
    parents: list[int] | None = None


class Strategy(Protocol):
    """What every decoding strategy exposes."""

    task: DecodingTask

    @property
    def done(self) -> bool:
        """No step is left to make."""

    def step(self) -> StepResult | None:
        """Feed the decoder once and choose; None once done."""

    def finalize(self) -> list[Caption]:
        """The captions, those of each image together, in image order."""


def run(strategy: Strategy) -> list[Caption]:
    """Step a strategy to its end: its captions."""
    while strategy.step() is not None:
        pass
    return strategy.finalize()


def strategy_for(task: DecodingTask, return_attention: bool = False) -> Strategy:
    """The strategy the task's options ask for: beam search above one beam, sampling above
    temperature 0, greedy otherwise."""
    options = task.options
    if options.num_beams > 1:
        return BeamSearch(task, return_attention)
    if options.temperature > 0:
        return Sampling(task, return_attention)
    return Greedy(task, return_attention)


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
        return_attention: Keep the cross-attention weights of every generated token, as NumPy
            arrays ``(T, L, H, N)`` (beam search: those of each returned beam's own tokens).

    Returns:
        ``B * num_return_sequences`` captions: those of each image together, in order (the best
        beam first for beam search).
    """
    copies = options.num_beams if options.num_beams > 1 else options.num_return_sequences
    task = DecodingTask(backend, tokenizer, image_features, options, prompts, copies=copies)
    return run(strategy_for(task, return_attention))


def _stacked(attention: list[np.ndarray], shape: tuple[int, ...]) -> np.ndarray:
    """One caption's cross-attention ``(T, L, H, N)``; ``(0, L, H, N)`` for a caption that ended at once."""
    return np.stack(attention) if attention else np.zeros((0, *shape), dtype=np.float32)


# --- greedy and sampling: each row its own caption ------------------------------------------------


class _EachRowItsOwn:
    """What greedy decoding and sampling share: every row is a caption of its own, which leaves the
    batch when it ends, so that the remaining steps cost only what is left. The subclass chooses."""

    def __init__(self, task: DecodingTask, return_attention: bool = False):
        self.task, self.return_attention = task, return_attention
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

    def choose(self, scores: np.ndarray) -> np.ndarray:
        """The next token of each active row, from its ``(R, V)`` adjusted scores."""
        raise NotImplementedError

    def step(self) -> StepResult | None:
        """Feed every active row its next input and choose its next token; None when done."""
        if self.done:
            return None
        task = self.task
        logits, attention = task.logits(self.input_ids, self.return_attention)
        if attention is not None:
            self.attention_shape = attention.shape[1:]
        next_ids = self.choose(task.scores(logits, self.steps))
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

    def finalize(self) -> list[Caption]:
        """A caption per row, those of each image together."""
        return [
            self.task.caption(
                row,
                self.token_ids[row],
                self.logprobs[row],
                self.finished[row],
                _stacked(self.attention[row], self.attention_shape) if self.return_attention else None,
            )
            for row in range(self.task.rows)
        ]


class Greedy(_EachRowItsOwn):
    """Greedy decoding: the most probable token at every step (temperature 0).

    Args:
        task: The decoding task (one copy per image).
        return_attention: Keep the cross-attention that produced each token.
    """

    def choose(self, scores: np.ndarray) -> np.ndarray:
        return scores.argmax(axis=-1)


class Sampling(_EachRowItsOwn):
    """Sampling from ``softmax(scores / temperature)`` among the ``top_k`` and ``top_p`` most
    probable tokens.

    Each image samples from its own generator seeded with ``options.seed``, its samples one after
    another in row order: an image gets the same samples alone as in any batch.

    Args:
        task: The decoding task (``copies = num_return_sequences``).
        return_attention: Keep the cross-attention that produced each token.
    """

    def __init__(self, task: DecodingTask, return_attention: bool = False):
        super().__init__(task, return_attention)
        images, seed = task.rows // task.copies, task.options.seed
        if seed is None:
            self.generators = [np.random.default_rng()] * images
        else:
            self.generators = [np.random.default_rng(seed) for _ in range(images)]

    def choose(self, scores: np.ndarray) -> np.ndarray:
        options = self.task.options
        probabilities = sampling_distribution(scores, options.temperature, options.top_k, options.top_p)
        images = self.task.image_rows[self.active]
        return np.array([draw(row, self.generators[image]) for row, image in zip(probabilities, images, strict=True)], dtype=np.int64)


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


# --- beam search ------------------------------------------------------------------------------------

_NEVER = -1.0e9  # transformers' score for excluded candidates


@dataclass(frozen=True)
class Hypothesis:
    """One beam: its tokens so far and what they scored.

    Attributes:
        token_ids: The generated tokens (an ending ``[SEP]`` not included).
        logprobs: Each token's log-probability.
        score: Running: the summed (adjusted) log-probability; finished: that over
            ``length**length_penalty``, by which finished captions are ranked.
        ended: A finished caption ended with ``[SEP]`` (False: cut at ``max_new_tokens``, or still running).
        attention: Each token's cross-attention ``(L, H, N)``, when kept.
    """

    token_ids: list[int]
    logprobs: list[float]
    score: float
    ended: bool = False
    attention: list[np.ndarray] = field(default_factory=list, repr=False)


def _ranked_insert(finished: list[Hypothesis], hypothesis: Hypothesis, capacity: int) -> None:
    """Keep the ``capacity`` best finished captions, best first; like ``transformers``' top-k over
    [old finished, new], the earlier entry wins a tie."""
    position = next((i for i, old in enumerate(finished) if hypothesis.score > old.score), len(finished))
    if position < capacity:
        finished.insert(position, hypothesis)
        del finished[capacity:]


def _top(values: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` largest of each row, largest first (earlier index first among equals): values
    and indices."""
    candidates = np.argpartition(-values, k - 1, axis=-1)[:, :k]
    picked = np.take_along_axis(values, candidates, axis=-1)
    order = np.lexsort((candidates, -picked), axis=-1)
    indices = np.take_along_axis(candidates, order, axis=-1)
    return np.take_along_axis(values, indices, axis=-1), indices


@dataclass(frozen=True)
class _Candidates:
    """The ``2 * num_beams`` best continuations of each image ``(images, 2 * beams)``."""

    scores: np.ndarray
    rows: np.ndarray  # the task row each continues
    tokens: np.ndarray
    ends: np.ndarray  # it ends: [SEP], or the length limit


class BeamSearch:
    """Beam search as ``transformers``' ``generate(num_beams=...)`` does it, one step at a time.

    Each step extends every running beam by every token, keeps the ``2 * num_beams`` best
    continuations of each image, moves those that end (``[SEP]``, or the length limit) among the
    best ``num_beams`` to the finished list with the score ``logprob / length**length_penalty``,
    and runs on with the best ``num_beams`` that did not end. The search stops when no running
    beam can still beat the worst of ``num_beams`` finished captions (``transformers``' default
    heuristic, ``early_stopping=False``), or at the length limit.

    Args:
        task: The decoding task (``copies = num_beams``).
        return_attention: Keep the cross-attention that produced each token of each beam, so
            that a returned caption carries its own tokens' attention.

    Attributes:
        running: Each image's running beams, best first (row ``image * num_beams + b``).
        finished: Each image's best finished captions so far, best first.
        stop_reason: Why the search stopped (``""`` while it runs): ``"ended"`` (every kept
            continuation ended), ``"limit"`` (``max_new_tokens``) or ``"no better beam"``.
    """

    def __init__(self, task: DecodingTask, return_attention: bool = False):
        self.task, self.return_attention = task, return_attention
        self.beams = task.options.num_beams
        self.images = task.rows // self.beams
        # At first all beams of an image are the same: only the first is expanded.
        self.running = [[Hypothesis([], [], 0.0 if beam == 0 else _NEVER) for beam in range(self.beams)] for _ in range(self.images)]
        self.finished: list[list[Hypothesis]] = [[] for _ in range(self.images)]
        self.can_improve = [True] * self.images
        self.input_ids = task.prompt_input
        self.attention_shape: tuple[int, ...] = ()
        self.steps = 0
        self.stop_reason = ""

    @property
    def done(self) -> bool:
        return bool(self.stop_reason) or self.steps >= self.task.options.max_new_tokens

    def _row(self, row: int) -> Hypothesis:
        return self.running[row // self.beams][row % self.beams]

    def step(self) -> StepResult | None:
        """Extend every running beam by one token; None when the search is over."""
        if self.done:
            return None
        task = self.task
        fed = self.input_ids
        logits, attention = task.logits(fed, self.return_attention)
        if attention is not None:
            self.attention_shape = attention.shape[1:]
        logprobs = log_softmax(logits)
        candidates = self._candidates(task.scores(logprobs, self.steps))
        at_limit = self.steps + 1 == task.options.max_new_tokens
        self._finish(candidates, logprobs, attention)
        result = StepResult(
            list(range(task.rows)),
            fed.tolist(),
            logits,
            candidates.tokens.reshape(-1).tolist(),
            task.prompt_length + self.steps,
            parents=candidates.rows.reshape(-1).tolist(),
        )
        self.steps += 1
        if at_limit or bool(candidates.ends.all()):
            self.stop_reason = "limit" if at_limit else "ended"
            return result
        self._go_on(candidates, logprobs, attention)
        self._stop_hopeless()
        return result

    def _candidates(self, scores: np.ndarray) -> _Candidates:
        """The ``2 * num_beams`` best continuations of each image, from every beam's adjusted
        log-probabilities ``(R, V)`` added to its running score."""
        vocabulary = scores.shape[-1]
        running = np.array([[beam.score for beam in beams] for beams in self.running], dtype=np.float32)
        totals = (scores.reshape(self.images, self.beams, vocabulary) + running[:, :, None]).reshape(self.images, -1)
        top_scores, top_indices = _top(totals, 2 * self.beams)
        rows = top_indices // vocabulary + np.arange(self.images)[:, None] * self.beams
        tokens = top_indices % vocabulary
        ends = (tokens == SEP_TOKEN_ID) | (self.steps + 1 == self.task.options.max_new_tokens)
        return _Candidates(top_scores, rows, tokens, ends)

    def _extended(self, row: int, token: int, logprobs: np.ndarray, attention: np.ndarray | None, score: float, ended: bool):
        """Beam ``row`` extended by ``token`` (by nothing, where the token is the ending ``[SEP]``)."""
        beam = self._row(row)
        if ended:
            return Hypothesis(beam.token_ids, beam.logprobs, score, True, beam.attention)
        kept = beam.attention + [attention[row]] if attention is not None else beam.attention
        return Hypothesis(beam.token_ids + [token], beam.logprobs + [float(logprobs[row, token])], score, False, kept)

    def _finish(self, candidates: _Candidates, logprobs: np.ndarray, attention: np.ndarray | None) -> None:
        """Candidates that end, among each image's best ``num_beams``, join its finished captions."""
        length_norm = (self.steps + 1) ** self.task.options.length_penalty
        for image in range(self.images):
            if not self.can_improve[image]:
                continue
            for rank in np.flatnonzero(candidates.ends[image, : self.beams]):
                row, token = int(candidates.rows[image, rank]), int(candidates.tokens[image, rank])
                score = float(candidates.scores[image, rank]) / length_norm
                _ranked_insert(
                    self.finished[image], self._extended(row, token, logprobs, attention, score, token == SEP_TOKEN_ID), self.beams
                )

    def _go_on(self, candidates: _Candidates, logprobs: np.ndarray, attention: np.ndarray | None) -> None:
        """The best ``num_beams`` candidates that do not end become the running beams."""
        keep_scores, keep = _top(candidates.scores + candidates.ends.astype(np.float32) * _NEVER, self.beams)
        rows = np.take_along_axis(candidates.rows, keep, axis=-1)
        tokens = np.take_along_axis(candidates.tokens, keep, axis=-1)
        self.running = [
            [
                self._extended(int(row), int(token), logprobs, attention, float(score), False)
                for row, token, score in zip(rows[image], tokens[image], keep_scores[image], strict=True)
            ]
            for image in range(self.images)
        ]
        chosen = tokens.reshape(-1)
        self.task.extend(chosen, rows.reshape(-1))
        self.input_ids = chosen[:, None]

    def _stop_hopeless(self) -> None:
        """``transformers``' default stopping heuristic: an image stops once its best running beam,
        at the current length, cannot beat the worst of ``num_beams`` finished captions."""
        # In float32, as the running scores are (and transformers computes it).
        length_norm = np.float32(self.steps**self.task.options.length_penalty)
        for image in range(self.images):
            finished = self.finished[image]
            best_running = np.float32(self.running[image][0].score) / length_norm
            if self.can_improve[image] and len(finished) >= self.beams and best_running <= finished[-1].score:
                self.can_improve[image] = False
        if not any(self.can_improve):
            self.stop_reason = "no better beam"

    def finalize(self) -> list[Caption]:
        """``num_return_sequences`` best captions per image, best first, images in order."""
        captions = []
        for image in range(self.images):
            for rank in range(self.task.options.num_return_sequences):
                best = self.finished[image][rank] if rank < len(self.finished[image]) else Hypothesis([], [], 0.0)
                attention = _stacked(best.attention, self.attention_shape) if self.return_attention else None
                captions.append(self.task.caption(image * self.beams, best.token_ids, best.logprobs, best.ended, attention))
        return captions
