"""What the black-box methods share (occlusion, Shapley value sampling): the caption tokens' targets
as a function of the image's pixels, through any runtime's ``encode`` and its decoder fed the
caption (teacher-forced), so that no gradient is needed and an ONNX export is explained as torch's
captioner is; and the feature mask that groups the image's pixels by patch.

captum asks for one token's target per call; each call ablates the same patches in the same order
(Shapley's permutations drawn from the same seed), so [`PixelTargets`][bliptk.attribution.masking.PixelTargets]
computes every token's target of a perturbed batch once and answers the other tokens' calls from
what it keeps.
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch

from ..core.decoding import DecodingOptions, DecodingTask
from ..core.errors import InvalidOptionError
from ..core.scoring import TeacherForced
from .explanation import report_progress
from .passes import Maps, Target, Visual, encoded, grid_of

__all__ = ["PixelTargets", "patch_mask", "ablation_maps"]


class PixelTargets:
    """y of every caption token for perturbed images: ``(P, F, 3, S, S)`` -> ``(P, T)``, each row's
    frames pooled (their features' mean) as a video's are.

    Args:
        captioner: Any runtime's captioner (``encode``, ``decoder``, ``tokenizer``).
        target: The caption, teacher-forced; a token with a foil gets ``log p(w_t) - log p(foil)``.
        batch_size: Images encoded at once.
        evaluations: How many perturbed images the method will ask for (for its progress: each
            batch computed is reported as done of that many).
    """

    def __init__(self, captioner, target: Target, batch_size: int = 8, evaluations: int = 0):
        self.captioner, self.target, self.batch_size = captioner, target, batch_size
        self.evaluations, self.evaluated = evaluations, 0
        self._kept: dict[bytes, torch.Tensor] = {}

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        contiguous = pixels.detach().float().contiguous()
        key = hashlib.blake2b(contiguous.numpy().data, digest_size=16).digest() + bytes(str(tuple(pixels.shape)), "ascii")
        if key not in self._kept:
            self._kept[key] = torch.from_numpy(self._targets(contiguous.numpy()))
            self.evaluated += len(pixels)
            if self.evaluations:
                report_progress(min(self.evaluated, self.evaluations), self.evaluations)
        return self._kept[key]

    def token(self, index: int):
        """The forward function captum calls for token ``index``: ``(P, F, 3, S, S) -> (P,)``."""
        return lambda pixels: self(pixels)[:, index]

    def _targets(self, pixels: np.ndarray) -> np.ndarray:
        rows, frames = pixels.shape[:2]
        flat = pixels.reshape(rows * frames, *pixels.shape[2:])
        features = np.concatenate(
            [self.captioner.encode(flat[start : start + self.batch_size]) for start in range(0, len(flat), self.batch_size)]
        )
        pooled = features.reshape(rows, frames, *features.shape[1:]).mean(axis=1)
        return target_logprobs(self.captioner, pooled, self.target)


def target_logprobs(captioner, features: np.ndarray, target: Target) -> np.ndarray:
    """y_t of the caption for each of ``features`` ``(P, N, D)``: ``(P, T)``, float64, through the
    runtime's decoding engine (teacher-forced)."""
    rows, ids = len(features), target.token_ids
    task = DecodingTask(captioner.decoder, captioner.tokenizer, features, DecodingOptions(max_new_tokens=len(ids)), [target.prompt] * rows)
    forced = TeacherForced(task, [ids] * rows, statistics=False)
    values = np.zeros((rows, len(ids)))
    for t in range(len(ids)):
        step = forced.step()
        assert step is not None
        logits = step.logits.astype(np.float64)
        top = logits.max(axis=-1, keepdims=True)
        log_total = np.log(np.exp(logits - top).sum(axis=-1)) + top[:, 0]
        values[:, t] = logits[:, ids[t]] - log_total
        if t in target.foils:
            values[:, t] -= logits[:, target.foils[t]] - log_total
    return values


def patch_mask(size: int, grid: int, window: int) -> torch.Tensor:
    """The feature mask ``(1, 1, 1, S, S)``: each pixel's group, a ``window x window`` square of
    patches (the last row and column of squares smaller where ``window`` does not divide the grid)."""
    if size % grid:
        raise InvalidOptionError(f"an image of {size} px is not a grid of {grid} x {grid} patches")
    if window > grid:
        raise InvalidOptionError(f"a window of {window} patches is larger than the image's grid of {grid} x {grid}: give at most {grid}")
    patch = size // grid
    squares = -(-grid // window)  # per side
    cells = torch.arange(size) // patch // window
    return (cells[:, None] * squares + cells[None, :]).view(1, 1, 1, size, size)


def ablation_maps(captioner, visual: Visual, target: Target, window: int, attribute, evaluations) -> Maps:
    """Each caption token's map from a captum ablation method: ``attribute(forward, inputs,
    feature_mask)`` for each token, the inputs the frames ``(1, F, 3, S, S)`` masked with 0 (the
    preprocessed mean colour), each patch's value read at its first pixel (a group's pixels share
    it). ``evaluations(squares)``: how many perturbed images the method asks for with that many
    squares of patches (every token's the same images), for its progress."""
    features = encoded(captioner, visual)
    grid = grid_of(features.shape[1])
    inputs = visual.pixels.float().unsqueeze(0)
    size = inputs.shape[-1]
    mask = patch_mask(size, grid, window)
    targets = PixelTargets(captioner, target, evaluations=evaluations(int(mask.max()) + 1))
    patch = size // grid
    rows = []
    for token in range(len(target.token_ids)):
        attributions = attribute(targets.token(token), inputs, mask)
        rows.append(attributions[0, 0, 0, ::patch, ::patch].reshape(-1).float())
    return Maps(torch.stack(rows) if rows else torch.zeros(0, grid * grid))
