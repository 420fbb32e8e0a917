"""Beam search over the BLIP text decoder, as ``transformers``' ``generate(num_beams=...)`` does it.

Each step extends every running beam by every token, keeps the ``2 * num_beams`` best
continuations of each image, moves those that end (``[SEP]``, or the length limit) among the best
``num_beams`` to the finished list with the score ``logprob / length**length_penalty``, and runs
on with the best ``num_beams`` that did not end. The search stops when no running beam can still
beat the worst of ``num_beams`` finished captions (``transformers``' default heuristic,
``early_stopping=False``), or at the length limit.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .decoding import Caption, DecodingOptions, encode_prompt, process_scores
from .text_decoder import TextDecoder
from .tokenizer import SEP_TOKEN_ID, Tokenizer

__all__ = ["beam_search"]

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
        for values, value in ((self.scores, score), (self.tokens, tokens), (self.logprobs, logprobs), (self.ended, ended)):
            values.insert(position, value)
            del values[capacity:]

    def full(self, capacity: int) -> bool:
        return len(self.scores) >= capacity


@torch.inference_mode()
def beam_search(decoder: TextDecoder, tokenizer: Tokenizer, image_features: torch.Tensor, options: DecodingOptions) -> list[Caption]:
    """``num_return_sequences`` best captions per image, best first, images in order."""
    beams = options.num_beams
    prompt_ids = encode_prompt(tokenizer, options, decoder.max_positions)
    prompt_length, limit = len(prompt_ids), options.max_new_tokens
    batch, device = image_features.shape[0], decoder.device
    state = decoder.start(image_features, max_length=prompt_length + limit)
    state = state.select(torch.arange(batch, device=device).repeat_interleave(beams))  # (B * K) rows

    sequences = torch.tensor([prompt_ids], device=device).repeat(batch * beams, 1)  # (B * K, S)
    running_scores = torch.zeros(batch, beams, device=device)
    running_scores[:, 1:] = _NEVER  # at first all beams are the same: expand only one
    running_logprobs: list[list[float]] = [[] for _ in range(batch * beams)]
    finished = [_Finished() for _ in range(batch)]
    can_improve = [True] * batch
    input_ids = sequences
    for step in range(limit):
        logits = decoder(input_ids, state)[:, -1].float()
        logprobs = logits.log_softmax(dim=-1)
        processed = process_scores(logprobs, sequences, step, options)
        vocabulary = processed.shape[-1]
        totals = (processed.view(batch, beams, vocabulary) + running_scores[:, :, None]).view(batch, -1)
        top_scores, top_indices = totals.topk(2 * beams, dim=1)
        source_beams, tokens = top_indices // vocabulary, top_indices % vocabulary
        source_rows = source_beams + torch.arange(batch, device=device)[:, None] * beams
        at_limit = step + 1 == limit
        ends = (tokens == SEP_TOKEN_ID) | at_limit

        # Candidates that end, among the best `beams`, join the finished captions.
        length_norm = (step + 1) ** options.length_penalty
        top_scores_list, ends_list = top_scores.tolist(), ends.tolist()
        rows_list, tokens_list = source_rows.tolist(), tokens.tolist()
        token_logprobs = logprobs[source_rows, tokens].tolist()
        for image in range(batch):
            if not can_improve[image]:
                continue
            for rank in range(beams):
                if not ends_list[image][rank]:
                    continue
                row, token = rows_list[image][rank], tokens_list[image][rank]
                generated = sequences[row, prompt_length:].tolist()
                ended = token == SEP_TOKEN_ID
                finished[image].add(
                    top_scores_list[image][rank] / length_norm,
                    generated if ended else generated + [token],
                    running_logprobs[row] + ([] if ended else [token_logprobs[image][rank]]),
                    ended,
                    beams,
                )
        if at_limit or bool(ends.all()):
            break

        # The best `beams` candidates that go on become the running beams.
        going_on = top_scores + ends.float() * _NEVER
        keep_scores, keep = going_on.topk(beams, dim=1)
        chosen_rows = source_rows.gather(1, keep).flatten()
        chosen_tokens = tokens.gather(1, keep).flatten()
        chosen_logprobs = logprobs[chosen_rows, chosen_tokens].tolist()
        running_logprobs = [running_logprobs[row] + [lp] for row, lp in zip(chosen_rows.tolist(), chosen_logprobs)]
        running_scores = keep_scores
        sequences = torch.cat([sequences[chosen_rows], chosen_tokens[:, None]], dim=1)
        state = state.select(chosen_rows)
        input_ids = chosen_tokens[:, None]

        # transformers' default stopping heuristic: stop an image once its best running beam,
        # at the current length, cannot beat the worst of `beams` finished captions.
        best_running = (running_scores[:, 0] / (step + 1) ** options.length_penalty).tolist()
        for image in range(batch):
            if can_improve[image] and finished[image].full(beams) and best_running[image] <= finished[image].scores[-1]:
                can_improve[image] = False
        if not any(can_improve):
            break

    captions = []
    for image in range(batch):
        for rank in range(options.num_return_sequences):
            done = finished[image]
            generated = done.tokens[rank] if rank < len(done.tokens) else []
            captions.append(
                Caption(
                    text=tokenizer.decode(prompt_ids[1:] + generated).strip(),
                    prompt=options.prompt_text,
                    token_ids=generated,
                    tokens=tokenizer.convert_ids_to_tokens(generated),
                    logprobs=done.logprobs[rank] if rank < len(done.tokens) else [],
                    finished=done.ended[rank] if rank < len(done.tokens) else False,
                )
            )
    return captions
