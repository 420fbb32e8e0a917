"""Adjustments to next-token scores before a strategy chooses, as ``transformers``' logits
processors make them: each filter is a callable ``(scores, sequences, generated) -> scores``, and a
[`DecodingTask`][bliptk.core.decoding.DecodingTask] applies its list of them in order (on logits
when one token is chosen, on log-probabilities in beam search, as ``transformers`` does).

Adding an adjustment is one class here and one line in
[`score_filters()`][bliptk.core.decoding.score_filters], which builds the list from the options.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from .tokenizer import SEP_TOKEN_ID

__all__ = ["MinNewTokens", "RepetitionPenalty", "ScoreFilter", "apply_filters", "log_softmax"]


class ScoreFilter(Protocol):
    """One adjustment of next-token scores."""

    def __call__(self, scores: np.ndarray, sequences: np.ndarray, generated: int) -> np.ndarray:
        """The adjusted scores (a new array: the input is left as it was).

        Args:
            scores: ``(R, V)`` next-token scores.
            sequences: ``(R, S)`` every token so far, the prompt's included.
            generated: How many tokens have been generated so far.
        """


@dataclass(frozen=True)
class RepetitionPenalty:
    """CTRL's penalty (``transformers``' ``RepetitionPenaltyLogitsProcessor``): the score of every
    token already in the sequence divided by ``penalty`` (multiplied, where it is negative)."""

    penalty: float

    def __call__(self, scores: np.ndarray, sequences: np.ndarray, generated: int) -> np.ndarray:
        scores = scores.copy()
        rows = np.arange(len(scores))[:, None]
        seen = scores[rows, sequences]
        scores[rows, sequences] = np.where(seen < 0, seen * self.penalty, seen / self.penalty)
        return scores


@dataclass(frozen=True)
class MinNewTokens:
    """``[SEP]``, which ends a caption, cannot be chosen before ``min_new_tokens`` tokens
    (``transformers``' ``MinNewTokensLengthLogitsProcessor``)."""

    min_new_tokens: int

    def __call__(self, scores: np.ndarray, sequences: np.ndarray, generated: int) -> np.ndarray:
        if generated >= self.min_new_tokens:
            return scores
        scores = scores.copy()
        scores[:, SEP_TOKEN_ID] = -np.inf
        return scores


def apply_filters(filters: list[ScoreFilter], scores: np.ndarray, sequences: np.ndarray, generated: int) -> np.ndarray:
    """``scores`` through each filter in turn."""
    for adjust in filters:
        scores = adjust(scores, sequences, generated)
    return scores


def log_softmax(scores: np.ndarray) -> np.ndarray:
    """Log-probabilities of each row of ``(R, V)`` scores, in float32."""
    shifted = scores - scores.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
