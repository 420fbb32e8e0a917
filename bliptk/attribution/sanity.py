"""Sanity checks of explanation methods: the cascading model-parameter randomisation test of
Adebayo et al. (2018, "Sanity Checks for Saliency Maps").

The model's blocks are re-initialised one by one, from the top of the text decoder (its last
layer) down through its first, then the image encoder's layers from the top down, each stage
keeping the blocks randomised before it; at each stage the method explains the same caption of the
same image again, and its maps are compared with the original ones: Spearman's rank correlation
and SSIM (of the maps scaled to [0, 1]), each the mean over the caption's tokens. A method whose
maps barely change when every layer is random does not depend on what the model learnt: it is
flagged. The randomised model is a copy: the captioner given is left as it was. The embeddings
(the patch projection, the words' and positions') and the output head are kept: "every layer
random" means every transformer layer of the decoder and of the image encoder.

On a model with random weights (bliptk's tiny net, or a full-size net without its checkpoint) the
check still tests what it tests: whether the method's maps depend on the parameters, not whether
the model is any good.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from ..core.errors import InvalidOptionError
from ..core.figures import new_figure

__all__ = ["SanityCheck", "map_similarity", "plot_sanity_check", "sanity_check", "ssim"]

_FLAG_BELOW = 0.5
"""A method passes when, with every layer random, its maps' mean rank correlation with the original
ones is below this (Adebayo et al. read a map that stays visually the same as a failure)."""


@dataclass
class SanityCheck:
    """What [`sanity_check()`][bliptk.attribution.sanity.sanity_check] returns.

    Attributes:
        methods: The methods checked.
        stages: Each stage's name: ``"original"``, then the block randomised last (``"decoder layer
            11"``, ..., ``"image encoder layer 0"``).
        spearman: Per method, ``(seeds, stages)`` the mean rank correlation over tokens between the
            original maps and the stage's (1 at stage 0).
        ssim: Per method, ``(seeds, stages)`` the mean SSIM over tokens.
        passed: Per method, whether its maps changed under full randomisation (mean Spearman below
            0.5 at the last stage).
        verdicts: Per method, the verdict in words.
        maps: Per method, the first seed's mean map over tokens at each stage ``(stages, grid, grid)``.
        text: The caption explained.
        pretrained: Whether the model had trained weights.
    """

    methods: list[str]
    stages: list[str]
    spearman: dict[str, np.ndarray]
    ssim: dict[str, np.ndarray]
    passed: dict[str, bool]
    verdicts: dict[str, str]
    maps: dict[str, np.ndarray] = field(repr=False)
    text: str = ""
    pretrained: bool = True

    def plot(self, ax=None):
        """See [`plot_sanity_check()`][bliptk.attribution.sanity.plot_sanity_check]."""
        return plot_sanity_check(self, ax=ax)

    def __str__(self) -> str:
        lines = [f"cascading randomisation of {len(self.stages) - 1} blocks, caption {self.text!r}"]
        lines += [f"  {method}: {self.verdicts[method]}" for method in self.methods]
        if not self.pretrained:
            lines.append("  (random weights: this tests the methods' dependence on parameters, not the model)")
        return "\n".join(lines)


def ssim(first: np.ndarray, second: np.ndarray, window: int = 5) -> float:
    """The mean structural similarity (Wang et al. 2004) of two maps scaled to [0, 1], over
    ``window x window`` neighbourhoods (uniform), data range 1."""
    from scipy.ndimage import uniform_filter

    a, b = _scaled(first), _scaled(second)
    size = min(window, *a.shape)
    mean_a, mean_b = uniform_filter(a, size), uniform_filter(b, size)
    var_a = uniform_filter(a * a, size) - mean_a**2
    var_b = uniform_filter(b * b, size) - mean_b**2
    cov = uniform_filter(a * b, size) - mean_a * mean_b
    c1, c2 = 0.01**2, 0.03**2
    values = ((2 * mean_a * mean_b + c1) * (2 * cov + c2)) / ((mean_a**2 + mean_b**2 + c1) * (var_a + var_b + c2))
    return float(values.mean())


def _scaled(values: np.ndarray) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64)
    low, high = values.min(), values.max()
    return (values - low) / (high - low) if high > low else np.zeros_like(values)


def map_similarity(original: np.ndarray, other: np.ndarray) -> tuple[float, float]:
    """The mean Spearman correlation and mean SSIM over tokens of two ``(T, grid, grid)`` maps; a
    constant map (no ranking) correlates 0 with anything but an identical map."""
    from scipy.stats import spearmanr

    correlations, similarities = [], []
    for a, b in zip(original, other, strict=True):
        if np.array_equal(a, b):
            correlations.append(1.0)
        elif np.ptp(a) == 0 or np.ptp(b) == 0:
            correlations.append(0.0)
        else:
            correlations.append(float(spearmanr(a.ravel(), b.ravel()).statistic))
        similarities.append(ssim(a, b))
    return float(np.mean(correlations)) if correlations else 1.0, float(np.mean(similarities)) if similarities else 1.0


def _blocks(captioner) -> list[tuple[str, object]]:
    """The blocks in the order they are randomised: the decoder's layers from the top, then the
    image encoder's."""
    decoder = list(captioner.text_decoder.layers)
    encoder = list(captioner.image_encoder.vision_model.encoder.layers)
    return [(f"decoder layer {i}", decoder[i]) for i in reversed(range(len(decoder)))] + [
        (f"image encoder layer {i}", encoder[i]) for i in reversed(range(len(encoder)))
    ]


def _randomise(block, generator, std: float) -> None:
    """Re-initialise a block as BLIP initialises it: linear weights from N(0, std²), biases 0,
    layer norms 1 and 0."""
    import torch

    with torch.no_grad():
        for module in block.modules():
            if isinstance(module, torch.nn.Linear):
                module.weight.copy_(torch.randn(module.weight.shape, generator=generator) * std)
                if module.bias is not None:
                    module.bias.zero_()
            elif isinstance(module, torch.nn.LayerNorm):
                module.weight.fill_(1.0)
                module.bias.zero_()


def sanity_check(
    captioner,
    image,
    caption=None,
    *,
    method: str | Sequence[str] = "gradcam",
    seeds: int | Sequence[int] = (0,),
    progress: bool = True,
    **options,
) -> SanityCheck:
    """The cascading model-parameter randomisation test of explanation methods (see the module).

    Args:
        captioner: A [`Captioner`][bliptk.model.captioner.Captioner] (torch: its layers are re-initialised, in a copy).
        image: The image (what [`explain()`][bliptk.attribution.explanation.explain] takes).
        caption: The caption to explain (a string or a Caption); None: the model's own.
        method: A method or a list of them (of [`EXPLANATION_METHODS`][bliptk.attribution.registry.EXPLANATION_METHODS]).
        seeds: The seeds of the random weights: each seed is one cascade (its figures show the
            mean and spread).
        progress: Show a progress bar (``tqdm.auto``) of the explanations it makes: one per
            method, layer and seed (a ViT-B/16 cascade is 24 layers).
        **options: What ``explain`` takes besides (``layer``, a method's options, ``prompt``).

    Returns:
        A [`SanityCheck`][bliptk.attribution.sanity.SanityCheck]: per method and stage, Spearman and
        SSIM, a verdict, ``.plot()``.

    Raises:
        InvalidOptionError: What ``explain`` refuses, a captioner of another runtime, no seeds.
    """
    import torch

    from ..model.captioner import Captioner
    from .explanation import explain

    if not isinstance(captioner, Captioner):
        raise InvalidOptionError(
            f"sanity_check re-initialises torch's layers: give a Captioner (bliptk.load), got {type(captioner).__name__}"
        )
    if captioner.weights.dtype == "int8" or captioner.weights.compiled:
        raise InvalidOptionError(
            "sanity_check re-initialises the model's layers, which an int8 or compiled captioner keeps copies of: "
            "give the plain float model (bliptk.load(model))"
        )
    methods = [method] if isinstance(method, str) else list(method)
    seeds = [seeds] if isinstance(seeds, int) else list(seeds)
    if not methods or not seeds:
        raise InvalidOptionError("sanity_check needs at least one method and one seed")
    originals = {name: _explained(explain(captioner, image, caption, method=name, progress=False, **options)) for name in methods}
    text = originals[methods[0]].text
    stages = ["original"] + [name for name, _ in _blocks(captioner)]
    spearman = {name: np.ones((len(seeds), len(stages))) for name in methods}
    similarity = {name: np.ones((len(seeds), len(stages))) for name in methods}
    maps = {name: np.zeros((len(stages), *originals[name].maps.shape[1:]), dtype=np.float32) for name in methods}
    for name in methods:
        maps[name][0] = originals[name].maps.mean(axis=0) if len(originals[name]) else 0
    std = float(getattr(captioner.model.config.text_config, "initializer_range", 0.02))
    from ..core.progress import progress_bar

    bar = progress_bar(total=len(seeds) * (len(stages) - 1) * len(methods), desc="sanity check", unit="map", disable=not progress)
    for row, seed in enumerate(seeds):
        randomised = copy.deepcopy(captioner)
        generator = torch.Generator().manual_seed(seed)
        for stage, (_, block) in enumerate(_blocks(randomised), start=1):
            _randomise(block, generator, std)
            for name in methods:
                given = caption if caption is not None else originals[name].text
                made = explain(randomised, image, given, method=name, progress=False, **_explain_options(originals[name], options))
                explained = _explained(made)
                spearman[name][row, stage], similarity[name][row, stage] = map_similarity(originals[name].maps, explained.maps)
                if row == 0:
                    maps[name][stage] = explained.maps.mean(axis=0) if len(explained) else 0
                bar.update()
        del randomised
    bar.close()
    passed = {name: bool(spearman[name][:, -1].mean() < _FLAG_BELOW) for name in methods}
    verdicts = {name: _verdict(spearman[name][:, -1].mean(), similarity[name][:, -1].mean(), passed[name]) for name in methods}
    return SanityCheck(methods, stages, spearman, similarity, passed, verdicts, maps, text, captioner.pretrained)


def _explained(explanation):
    if isinstance(explanation, list):
        raise InvalidOptionError("sanity_check checks one image's explanation: give one image, not a list")
    return explanation


def _explain_options(original, options: dict) -> dict:
    """The options of the randomised model's explanations: the original's caption is given, so its
    prompt travels with it and decoding options are dropped."""
    return {
        name: value for name, value in options.items() if name not in ("prompt", "max_new_tokens", "num_beams", "temperature", "seed")
    } | {"prompt": original.prompt}


def _verdict(spearman: float, similarity: float, passed: bool) -> str:
    said = f"with every layer random, Spearman {spearman:.2f}, SSIM {similarity:.2f}"
    if passed:
        return f"passes: its maps change when the model's parameters are randomised ({said})"
    return f"FLAGGED: its maps barely change when the model's parameters are randomised ({said}); they do not show what the model learnt"


def plot_sanity_check(result: SanityCheck, ax=None):
    """Spearman (solid) and SSIM (dashed) of each method's maps against the original ones, stage by
    stage (the mean over seeds, and their range shaded), with the 0.5 line below which a method
    passes.

    Args:
        result: From [`sanity_check()`][bliptk.attribution.sanity.sanity_check].
        ax: A matplotlib axes; None makes a new figure.

    Returns:
        The figure.
    """
    if ax is None:
        ax = new_figure(figsize=(max(6.0, 0.35 * len(result.stages)), 3.8), layout="constrained").subplots()
    steps = np.arange(len(result.stages))
    for index, name in enumerate(result.methods):
        colour = f"C{index}"
        for values, style, label in ((result.spearman[name], "-", "Spearman"), (result.ssim[name], "--", "SSIM")):
            ax.plot(steps, values.mean(axis=0), style, color=colour, marker="o", markersize=3, label=f"{name}: {label}")
            if values.shape[0] > 1:
                ax.fill_between(steps, values.min(axis=0), values.max(axis=0), color=colour, alpha=0.15)
    ax.axhline(_FLAG_BELOW, color="grey", linewidth=0.8, linestyle=":", label="flagged above, every layer random")
    ax.set_xticks(steps, [stage.replace("image encoder", "encoder") for stage in result.stages], rotation=60, ha="right", fontsize=7)
    ax.set_ylabel("similarity to the original maps")
    ax.set_ylim(-0.5, 1.05)
    weights = "trained weights" if result.pretrained else "random weights: tests dependence on parameters only"
    ax.set_title(f"cascading randomisation, top layer to bottom\n({weights})", fontsize=9)
    ax.legend(fontsize=7, loc="lower left")
    return ax.figure
