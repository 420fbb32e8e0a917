"""How faithful an explanation is: the perturbation test.

For each caption token, the image's patches are removed (deletion) or put back (insertion) in the
order the token's map ranks them, most important first, and the token's probability is measured
again, teacher-forced, after each step: a curve over the fraction of patches changed, and its area
(AUC). The same is done for a random order, the baseline every map must beat. A faithful map makes
the probability fall fast when deleting (a low AUC) and rise fast when inserting (a high AUC).

This is the perturbation test of Chefer, Gur and Wolf (ICCV 2021) and the deletion and insertion
metrics of RISE (Petsiuk, Das and Saenko, BMVC 2018), measured on each caption token's probability.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from itertools import islice

import numpy as np
import torch
import torch.nn.functional as F

from ..core.errors import InvalidArgumentError, InvalidOptionError, check_positive_int, option_error
from ..core.figures import new_figure
from ..core.video import VideoOptions
from .explanation import Explanation, foil_id
from .passes import Target, pixels_fingerprint, token_logprobs, visual_input

__all__ = ["FAITHFULNESS_BASELINES", "FAITHFULNESS_MODES", "Faithfulness", "faithfulness", "plot_faithfulness"]

FAITHFULNESS_MODES = ("deletion", "insertion")
"""Deletion removes the most important patches first; insertion puts them back into an image of none."""
FAITHFULNESS_BASELINES = ("blur", "mean")
"""What a removed patch becomes: the image blurred (RISE's insertion start), or the image's mean colour."""
# The Gaussian blur of the "blur" baseline, in units of the patch size: features of a patch's size are gone.
_BLUR_SIGMA_PATCHES = 1.0


@dataclass(eq=False)
class Faithfulness:
    """What [`faithfulness()`][bliptk.attribution.faithfulness.faithfulness] measures, per caption token.

    Attributes:
        method: The explanation's method.
        mode: ``"deletion"`` or ``"insertion"``.
        baseline: What removed patches became (``"blur"`` or ``"mean"``).
        tokens: The caption's tokens, T of them.
        fractions: ``(K + 1,)`` the fraction of patches removed (or inserted) at each step, 0 to 1.
        curves: ``(T, K + 1)`` each token's probability at each step, patches in the map's order.
        random_curves: ``(T, K + 1)`` the same in a random order (one order for all tokens).
        auc: ``(T,)`` area under each curve (the trapezoid rule over ``fractions``).
        random_auc: ``(T,)`` area under each random curve.
    """

    method: str
    mode: str
    baseline: str
    tokens: list[str]
    fractions: np.ndarray
    curves: np.ndarray
    random_curves: np.ndarray
    auc: np.ndarray
    random_auc: np.ndarray

    @property
    def summary(self) -> dict:
        """The means over tokens: ``auc``, ``random_auc``, and ``better_than_random``, the fraction
        of tokens whose map beats the random order (a lower AUC for deletion, higher for insertion)."""
        better = self.auc < self.random_auc if self.mode == "deletion" else self.auc > self.random_auc
        return {
            "method": self.method,
            "mode": self.mode,
            "auc": float(self.auc.mean()) if len(self.auc) else float("nan"),
            "random_auc": float(self.random_auc.mean()) if len(self.auc) else float("nan"),
            "better_than_random": float(better.mean()) if len(self.auc) else float("nan"),
        }

    def __repr__(self) -> str:
        s = self.summary
        return (
            f"Faithfulness({self.method}, {self.mode}, {len(self.tokens)} tokens: AUC {s['auc']:.4g} "
            f"against random {s['random_auc']:.4g}, better than random for {s['better_than_random']:.0%})"
        )


def faithfulness(
    captioner,
    image,
    explanation: Explanation,
    *,
    mode: str = "deletion",
    steps: int = 10,
    baseline: str = "blur",
    seed: int = 0,
    batch_size: int = 8,
    progress: bool | None = None,
) -> Faithfulness:
    """The perturbation test of an explanation: each token's probability as its most important
    patches are removed (or inserted), against a random order.

    It measures ``2 + (T + 1) * (K - 1)`` images for T tokens and K ``steps``, whatever the method:
    236 for a 25-token caption at 10 steps, about 5.6 minutes for ViT-B/16 on one CPU thread (the
    explaining guide gives each model's cost). A progress bar counts them.

    Args:
        captioner: The [`Captioner`][bliptk.model.captioner.Captioner] the explanation was made with.
        image: The explained image or video (as given to [`explain()`][bliptk.attribution.explanation.explain]).
        explanation: Its [`Explanation`][bliptk.attribution.explanation.Explanation].
        mode: ``"deletion"`` (start from the image, remove the highest-ranked patches first) or
            ``"insertion"`` (start from the baseline, put them back).
        steps: K: the patches change in K equal steps (each a K-th of them, rounded).
        baseline: What a removed patch becomes: ``"blur"`` (the image under a Gaussian blur of
            a patch's width) or ``"mean"`` (the image's mean colour).
        seed: Seed of the random order.
        batch_size: Perturbed images measured together, in one forward pass.
        progress: Show a ``tqdm`` progress bar over the images measured (``2 + (T + 1) * (K - 1)``
            for T tokens: the first and last image, then each token's order and the random one);
            None shows one when there is more than one batch.

    Returns:
        A [`Faithfulness`][bliptk.attribution.faithfulness.Faithfulness]: per-token curves and AUCs, with the
        random order's, and a ``summary``.

    Raises:
        InvalidArgumentError: No torch captioner, or no Explanation (a caption, say).
        InvalidOptionError: An unknown mode or baseline, a bad number, or an explanation whose maps
            do not fit the captioner's patch grid.
    """
    from ..model.captioner import Captioner

    if not isinstance(captioner, Captioner):
        raise InvalidArgumentError(f"faithfulness needs torch's Captioner (bliptk.load); got {type(captioner).__name__}")
    if not isinstance(explanation, Explanation):
        raise InvalidArgumentError(
            f"explanation must be an Explanation, as bliptk.explain(captioner, image, caption) returns; got {type(explanation).__name__}"
        )
    if not isinstance(mode, str) or mode not in FAITHFULNESS_MODES:
        raise option_error(f"mode must be one of {', '.join(FAITHFULNESS_MODES)}, got {mode!r}", "mode")
    if not isinstance(baseline, str) or baseline not in FAITHFULNESS_BASELINES:
        raise option_error(f"baseline must be one of {', '.join(FAITHFULNESS_BASELINES)}, got {baseline!r}", "baseline")
    check_positive_int("steps", steps)
    check_positive_int("batch_size", batch_size)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise option_error(f"seed must be an integer >= 0, got {seed!r}", "seed")
    encoder = captioner.image_encoder
    if explanation.maps.shape[1:] != (encoder.grid_size, encoder.grid_size):
        raise InvalidOptionError(
            f"the explanation's maps are {explanation.maps.shape[1:]}, the captioner's patches {encoder.grid_size} x {encoder.grid_size}"
        )
    made = explanation.provenance
    if made.get("weights", {}).get("fingerprint") not in (None, captioner.weights.fingerprint):
        raise InvalidOptionError(
            f"the explanation was made with other weights (fingerprint {made['weights']['fingerprint']}) than this captioner's "
            f"({captioner.weights.fingerprint}); measure it with the captioner that made it"
        )
    frames = made.get("num_frames")
    visual = visual_input(captioner, image, VideoOptions(num_frames=frames) if frames else VideoOptions())
    if made.get("pixels") not in (None, pixels_fingerprint(visual.pixels)):
        raise InvalidOptionError("the explanation is of another image than this one (their pixels differ); give the image it explains")
    # A contrastive explanation is measured on what it explains: log p(token) - log p(foil).
    foils = {t: foil_id(captioner.tokenizer, foil) for t, foil in explanation.contrast.items()}
    target = Target(
        explanation.prompt, captioner.tokenizer.encode(explanation.prompt), list(explanation.token_ids), explanation.text, foils
    )
    patches = encoder.grid_size**2
    orders = [np.argsort(-m.ravel(), kind="stable") for m in explanation.maps.astype(np.float64)]
    random_order = np.random.default_rng(seed).permutation(patches)
    counts = [round(patches * k / steps) for k in range(steps + 1)]
    removed_start = baseline_pixels(visual.pixels, baseline, encoder.patch_size)
    start, end = (visual.pixels, removed_start) if mode == "deletion" else (removed_start, visual.pixels)

    tokens = len(target.token_ids)
    middle_steps = len(counts) - 2
    # Every order starts at the same image and ends at the same image: those two are measured once.
    passes = (2 + (tokens + 1) * middle_steps) if tokens else 0
    from ..core.progress import progress_bar

    show = progress if progress is not None else passes > batch_size
    with progress_bar(total=passes, desc="faithfulness", unit="img", disable=not show) as bar:
        first, last = _logprobs(captioner, [start, end], target, batch_size, bar) if tokens else np.zeros((2, 0))

        def measured(order_list: list[np.ndarray]) -> np.ndarray:
            """Log-probabilities ``(len(order_list), K + 1, T)`` of every token along each order."""
            # A generator: only one batch of perturbed images is held at a time.
            images = (_changed(start, end, order[:count], encoder.patch_size) for order in order_list for count in counts[1:-1])
            middle = _logprobs(captioner, images, target, batch_size, bar).reshape(len(order_list), middle_steps, tokens)
            edges = np.broadcast_to(first, (len(order_list), 1, tokens)), np.broadcast_to(last, (len(order_list), 1, tokens))
            return np.concatenate([edges[0], middle, edges[1]], axis=1)

        per_order = measured(orders)  # (T, K + 1, T): token t's curve is column t along its own order
        curves = np.exp(np.stack([per_order[t, :, t] for t in range(tokens)])) if tokens else np.zeros((0, len(counts)))
        random_curves = np.exp(measured([random_order])[0].T) if tokens else np.zeros((0, len(counts)))
    fractions = np.array(counts, dtype=np.float64) / patches
    return Faithfulness(
        method=explanation.method,
        mode=mode,
        baseline=baseline,
        tokens=list(explanation.tokens),
        fractions=fractions,
        curves=curves,
        random_curves=random_curves,
        auc=np.asarray(np.trapezoid(curves, fractions, axis=-1)),
        random_auc=np.asarray(np.trapezoid(random_curves, fractions, axis=-1)),
    )


def baseline_pixels(pixels: torch.Tensor, baseline: str, patch_size: int) -> torch.Tensor:
    """What removed patches become, ``(F, 3, S, S)``: the frames blurred, or their mean colour."""
    if baseline == "mean":
        return pixels.mean(dim=(2, 3), keepdim=True).expand_as(pixels).clone()
    sigma = _BLUR_SIGMA_PATCHES * patch_size
    radius = int(3 * sigma)
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-(offsets**2) / (2 * sigma**2))
    kernel = (kernel / kernel.sum()).to(pixels.dtype)
    channels = pixels.shape[1]
    padded = F.pad(pixels, (radius, radius, radius, radius), mode="replicate")
    rows = F.conv2d(padded, kernel.view(1, 1, 1, -1).expand(channels, 1, 1, -1), groups=channels)
    return F.conv2d(rows, kernel.view(1, 1, -1, 1).expand(channels, 1, -1, 1), groups=channels)


def _changed(start: torch.Tensor, end: torch.Tensor, patches: np.ndarray, patch_size: int) -> torch.Tensor:
    """``start`` with the given patches (row-major indices) taken from ``end``, in every frame."""
    grid = start.shape[-1] // patch_size
    mask = torch.zeros(grid * grid, dtype=torch.bool)
    mask[torch.as_tensor(patches, dtype=torch.long)] = True
    pixel_mask = mask.view(grid, grid).repeat_interleave(patch_size, 0).repeat_interleave(patch_size, 1)
    return torch.where(pixel_mask, end, start)


def _logprobs(captioner, images: Iterable[torch.Tensor], target: Target, batch_size: int, bar) -> np.ndarray:
    """Teacher-forced y of every token ``(N, T)`` for N images of F frames each (a video's
    features being their mean), ``batch_size`` images a forward pass, each counted on ``bar``."""
    encoder = captioner.image_encoder
    rows = [np.zeros((0, len(target.token_ids)))]
    images = iter(images)
    with torch.inference_mode():
        while batch := list(islice(images, batch_size)):
            frames = batch[0].shape[0]
            features = encoder(torch.cat(batch)).float()
            pooled = features.view(len(batch), frames, *features.shape[1:]).mean(dim=1)
            rows.append(token_logprobs(captioner, pooled, target).cpu().numpy())
            bar.update(len(batch))
    return np.concatenate(rows).astype(np.float64)


def plot_faithfulness(results: Faithfulness | list[Faithfulness], ax=None):
    """Mean curves over tokens: each method's (solid) against its random order (dashed).

    Args:
        results: One [`Faithfulness`][bliptk.attribution.faithfulness.Faithfulness] or several (one per method, same mode).
        ax: A matplotlib axes to draw on; None makes a new figure.

    Returns:
        The figure the axes belongs to.
    """
    results = [results] if isinstance(results, Faithfulness) else list(results)
    if not results:
        raise InvalidOptionError("plot_faithfulness needs at least one result")
    if ax is None:
        ax = new_figure(figsize=(5, 3.5), layout="constrained").subplots()
    drawn = [result for result in results if len(result.curves)]
    for index, result in enumerate(drawn):
        ax.plot(result.fractions, result.curves.mean(axis=0), color=f"C{index}", label=f"{result.method} (AUC {result.summary['auc']:.3g})")
    randoms = [result.random_curves.mean(axis=0) for result in drawn]
    if randoms and all(np.array_equal(curve, randoms[0]) for curve in randoms):  # the same tokens, order and image: drawn once
        ax.plot(drawn[0].fractions, randoms[0], color="grey", linestyle="--", label="random order")
    else:
        for index, (result, curve) in enumerate(zip(drawn, randoms, strict=True)):
            ax.plot(result.fractions, curve, color=f"C{index}", linestyle="--", alpha=0.6, label=f"{result.method}: random order")
    mode = results[0].mode
    ax.set_xlabel(f"fraction of patches {'removed' if mode == 'deletion' else 'inserted'}")
    ax.set_ylabel("token probability (mean over tokens)")
    ax.set_title(f"{mode}, {results[0].baseline} baseline")
    ax.legend(fontsize=8)
    return ax.figure
