"""Decoding made visible: the loop one step at a time, and the alternatives to each token.

[`Stepper`][bliptk.model.stepper.Stepper] is the page's ``NestWhile`` loop as an object: each [`Stepper.step()`][bliptk.model.stepper.Stepper.step] feeds
one input (the prompt, then the last chosen token), fills the KV cache, and chooses the next token,
reporting what it saw. [`token_alternatives()`][bliptk.model.stepper.token_alternatives] replays a caption and gives, for every token, its
probability and the most probable alternatives.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from ..core import pipeline
from ..core.decoding import Caption, DecodingOptions, DecodingTask
from ..core.decoding_strategies import BeamSearch, Greedy, Sampling, strategy_for
from ..core.errors import InvalidOptionError
from ..core.score_filters import log_softmax
from ..core.tokenizer import SEP_TOKEN_ID

__all__ = ["Beam", "DecodeStep", "Stepper", "TokenChoice", "token_alternatives"]


@dataclass(frozen=True)
class TokenChoice:
    """A generated token, its probability, and the most probable tokens at that step.

    Attributes:
        token: The WordPiece chosen.
        token_id: Its id.
        probability: Its probability under the model.
        alternatives: ``(token, probability)`` of the most probable tokens, best first.
    """

    token: str
    token_id: int
    probability: float
    alternatives: list[tuple[str, float]]


@torch.inference_mode()
def token_alternatives(captioner, image_features: torch.Tensor, caption: Caption, k: int = 5) -> list[TokenChoice]:
    """For each generated token of ``caption``, its probability and the ``k`` most probable tokens.

    Args:
        captioner: The captioner that made the caption.
        image_features: The image's features ``(1, N, D)`` (or ``(N, D)``).
        caption: A caption of that image.
        k: How many alternatives.
    """
    features = image_features if image_features.dim() == 3 else image_features[None]
    tokenizer, decoder = captioner.tokenizer, captioner.text_decoder
    prompt_ids = tokenizer.encode(caption.prompt)
    ids = torch.tensor([prompt_ids + caption.token_ids], device=decoder.device)
    logits = decoder(ids, decoder.start(features, ids.shape[1]))[0].float()
    probabilities = logits.softmax(dim=-1)
    choices = []
    for index, token_id in enumerate(caption.token_ids):
        row = probabilities[len(prompt_ids) - 1 + index]
        top = row.topk(k)
        alternatives = list(zip(tokenizer.convert_ids_to_tokens(top.indices.tolist()), top.values.tolist(), strict=True))
        choices.append(TokenChoice(tokenizer.tokens[token_id], token_id, float(row[token_id]), alternatives))
    return choices


@dataclass(frozen=True)
class Beam:
    """One beam of a beam search, as a step left it.

    Attributes:
        text: Its caption so far, prompt included.
        token_ids: Its generated tokens.
        score: Running: its summed log-probability; finished: that over
            ``length**length_penalty``, by which finished captions are ranked.
        finished: It is among the finished captions (ended by ``[SEP]`` or cut at the limit).
    """

    text: str
    token_ids: list[int]
    score: float
    finished: bool


@dataclass(frozen=True)
class DecodeStep:
    """What one decoding step did.

    For beam search the step is told from the best continuation's side: the beam it extends, that
    beam's input and distribution, and the token it takes; ``beams`` lists every beam after the step.

    Attributes:
        index: Which generated token this step chose (0 for the first).
        input_ids: The ids fed to the decoder in this step (the whole prompt at first).
        input_tokens: Their WordPieces.
        cache_length: Positions in the KV cache after the step.
        top: ``(token, probability)`` of the most probable next tokens, best first.
        chosen_id: The token chosen.
        chosen_token: Its WordPiece.
        chosen_probability: Its probability.
        finished: The chosen token is ``[SEP]``: the caption is complete.
        beams: Beam search: the running beams, best first, then the finished captions, best
            first; empty for greedy decoding and sampling.
    """

    index: int
    input_ids: list[int]
    input_tokens: list[str]
    cache_length: int
    top: list[tuple[str, float]]
    chosen_id: int
    chosen_token: str
    chosen_probability: float
    finished: bool
    beams: list[Beam] = field(default_factory=list)


class Stepper:
    """Generate a caption one step at a time: the very steps [`caption()`][bliptk.model.captioner.Captioner.caption]
    makes (the same [`DecodingTask`][bliptk.core.decoding.DecodingTask] and strategy:
    [greedy, sampling or beam search][bliptk.core.decoding_strategies]), each reported as a
    [`DecodeStep`][bliptk.model.stepper.DecodeStep].

    Args:
        captioner: A [`Captioner`][bliptk.model.captioner.Captioner].
        image: An image, or its features ``(1, N, D)``.
        options: Decoding options (greedy by default); with ``num_beams``, the stepper follows the
            beams and ends on the caption ``caption()`` returns.
        top: How many of the most probable tokens each step reports.

    Raises:
        InvalidOptionError: Several captions asked for.

    Example:
        >>> stepper = Stepper(captioner, "photo.jpg")
        >>> first = stepper.step()   # feeds [DEC] a photography of, chooses the first word
        >>> stepper.run()            # the rest; stepper.text == captioner.caption("photo.jpg").text
    """

    def __init__(self, captioner, image, options: DecodingOptions | None = None, top: int = 10):
        self.options = pipeline.own_options(captioner, options or DecodingOptions())
        if self.options.num_return_sequences > 1:
            raise InvalidOptionError(
                f"the stepper follows one caption: num_return_sequences must be 1, got {self.options.num_return_sequences}"
            )
        self.captioner = captioner
        self.features = image if isinstance(image, torch.Tensor) and image.dim() == 3 else captioner.encode_image(image)
        copies = self.options.num_beams
        task = DecodingTask(captioner.text_decoder, captioner.tokenizer, self.features, self.options, copies=copies)
        self.prompt_ids = task.prompt_ids[0]
        self._strategy = strategy_for(task)
        self.top = top
        self.steps: list[DecodeStep] = []

    @property
    def token_ids(self) -> list[int]:
        """The tokens chosen so far (the ending ``[SEP]`` not included); for beam search, the best
        beam's so far, and once done the returned caption's."""
        strategy = self._strategy
        if isinstance(strategy, BeamSearch):
            if strategy.done:
                return strategy.finalize()[0].token_ids
            return strategy.running[0][0].token_ids
        assert isinstance(strategy, (Greedy, Sampling))
        return strategy.token_ids[0]

    @property
    def done(self) -> bool:
        """True once the caption is complete: ``[SEP]`` chosen, ``max_new_tokens`` steps made, or
        (beam search) no running beam can beat the finished captions."""
        return self._strategy.done

    @property
    def stop_reason(self) -> str:
        """Why decoding stopped, in words (``""`` while it goes on)."""
        if not self.done:
            return ""
        strategy, limit = self._strategy, self.options.max_new_tokens
        if isinstance(strategy, BeamSearch):
            return {
                "no better beam": f"no running beam can beat the {self.options.num_beams} finished captions",
                "ended": "every beam kept chose [SEP], which ends a caption",
            }.get(strategy.stop_reason, f"max new tokens ({limit}) reached, where beam search ends on its best finished caption")
        if self.steps and self.steps[-1].finished:
            return "[SEP] was chosen, which ends a caption"
        return f"max new tokens ({limit}) reached, the caption is cut there"

    @property
    def text(self) -> str:
        """The caption so far, prompt included."""
        return self._text(self.token_ids)

    def caption(self) -> Caption:
        """The caption once done (what [`caption()`][bliptk.model.captioner.Captioner.caption] returns)."""
        return self._strategy.finalize()[0]

    def _text(self, token_ids: list[int]) -> str:
        return self.captioner.tokenizer.caption_text(self.prompt_ids, token_ids)

    def step(self) -> DecodeStep | None:
        """Make one step; None when the caption is already complete."""
        result = self._strategy.step()
        if result is None:
            return None
        # The row the best continuation extends (each row itself but under beam search).
        parent = 0 if result.parents is None else result.rows.index(result.parents[0])
        tokenizer = self.captioner.tokenizer
        probabilities = softmax(result.logits[parent])
        top = np.argsort(-probabilities, kind="stable")[: self.top]
        chosen = result.chosen[0]
        step = DecodeStep(
            index=len(self.steps),
            input_ids=result.input_ids[parent],
            input_tokens=tokenizer.convert_ids_to_tokens(result.input_ids[parent]),
            cache_length=result.cache_length,
            top=list(zip(tokenizer.convert_ids_to_tokens(top), probabilities[top].tolist(), strict=True)),
            chosen_id=chosen,
            chosen_token=tokenizer.tokens[chosen],
            chosen_probability=float(probabilities[chosen]),
            finished=chosen == SEP_TOKEN_ID,
            beams=self._beams(),
        )
        self.steps.append(step)
        return step

    def _beams(self) -> list[Beam]:
        strategy = self._strategy
        if not isinstance(strategy, BeamSearch):
            return []
        running = [] if strategy.done else [Beam(self._text(b.token_ids), b.token_ids, b.score, False) for b in strategy.running[0]]
        return running + [Beam(self._text(b.token_ids), b.token_ids, b.score, True) for b in strategy.finished[0]]

    def run(self) -> list[DecodeStep]:
        """Step until the caption is complete; returns all steps."""
        while self.step() is not None:
            pass
        return self.steps


def softmax(logits: np.ndarray) -> np.ndarray:
    """Probabilities of ``(V,)`` logits."""
    return np.exp(log_softmax(logits[None].astype(np.float64))[0])
