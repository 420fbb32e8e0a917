"""What bliptk's tests and benchmarks compare against (as ``numpy.testing`` is for NumPy):
``transformers``' own generation on the same inputs, and checkpoint folders to load.

Public, so that a user can check bliptk the same way: ``hf_generate(captioner, pixels, "the woman",
20)`` gives the token ids ``BlipForConditionalGeneration.generate`` makes.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..core.tokenizer import CLS_TOKEN_ID, SEP_TOKEN_ID

__all__ = ["hf_generate", "save_checkpoint"]


def hf_generate(captioner, pixel_values: torch.Tensor, prompt: str, max_new_tokens: int, **generate_options) -> list[list[int]]:
    """Token ids that ``BlipForConditionalGeneration.generate`` produces after the prompt.

    The prompt goes in as ``BlipProcessor`` makes it (``[CLS] ... [SEP]``); ``generate`` swaps
    ``[CLS]`` for ``[DEC]`` and drops the last column. Rows are cut at ``[SEP]`` (which ends a
    caption).

    Args:
        captioner: A [`Captioner`][bliptk.model.captioner.Captioner] (its ``model`` generates).
        pixel_values: ``(B, 3, S, S)`` preprocessed images.
        prompt: The prompt, the same for every image.
        max_new_tokens: Passed to ``generate``.
        **generate_options: Also passed (``num_beams``, ``repetition_penalty``, ...); greedy by
            default.

    Returns:
        The generated ids of each image (beam search: the best beam).
    """
    prompt_ids = captioner.tokenizer.encode(prompt)[1:]
    input_ids = torch.tensor([[CLS_TOKEN_ID, *prompt_ids, SEP_TOKEN_ID]] * pixel_values.shape[0])
    options = {"do_sample": False, "num_beams": 1, **generate_options}
    with torch.inference_mode():
        output = captioner.model.generate(pixel_values=pixel_values, input_ids=input_ids, max_new_tokens=max_new_tokens, **options)
    rows = []
    for row in output[:, 1 + len(prompt_ids) :].tolist():
        rows.append(row[: row.index(SEP_TOKEN_ID)] if SEP_TOKEN_ID in row else row)
    return rows


def save_checkpoint(captioner, folder: Path) -> Path:
    """Write a captioner as a checkpoint folder ([`bliptk.model.loading.save_checkpoint()`][bliptk.model.loading.save_checkpoint])."""
    from .loading import save_checkpoint as save

    return save(captioner.model, captioner.tokenizer, captioner.preprocessor, folder)
