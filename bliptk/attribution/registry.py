"""The explanation methods [`explain()`][bliptk.attribution.explanation.explain] knows, one table,
importable without torch: each method's name, its title in figures, whether it takes a decoder
layer (and which by default), whether it follows gradients, its own options, and where its
implementation is. The command line's ``--method`` and ``--layer`` and the method's own flags, the
attention explorer's selector and its controls, and ``explain`` itself all read this table.

Adding a method is one module (a function ``(captioner, visual, target, layer, options) ->
Maps``: see [`bliptk.attribution.passes`][bliptk.attribution.passes]) and one
``register_method(ExplanationMethod(...))``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any

from ..core.errors import check_positive_int, option_error

__all__ = [
    "DEFAULT_IG_STEPS",
    "EXPLANATION_METHODS",
    "METHODS",
    "METHOD_NAMES",
    "ExplanationMethod",
    "IntegratedGradientsOptions",
    "NoOptions",
    "OcclusionOptions",
    "ShapleyOptions",
    "method_options",
    "register_method",
    "resolved_layer",
]


@dataclass(frozen=True)
class NoOptions:
    """The options of a method that has none."""


DEFAULT_IG_STEPS = 32
"""Integrated gradients' steps along the path from the baseline (captum's Gauss-Legendre rule):
the completeness gap stays under 5% of y(image) - y(baseline) on the tested checkpoints."""


@dataclass(frozen=True)
class IntegratedGradientsOptions:
    """Integrated gradients' options.

    Attributes:
        ig_steps: Steps of the path from the baseline (each a forward and backward pass of the
            whole model per token).
    """

    ig_steps: int = field(default=DEFAULT_IG_STEPS, metadata={"help": "integrated gradients' steps"})

    def __post_init__(self):
        check_positive_int("ig_steps", self.ig_steps)


@dataclass(frozen=True)
class OcclusionOptions:
    """Occlusion's options.

    Attributes:
        occlusion_window: The side of the squares of patches masked together (1: each patch
            alone, a forward pass per patch; 2: a quarter of them).
    """

    occlusion_window: int = field(default=2, metadata={"help": "occlusion: side of the square of patches masked together"})

    def __post_init__(self):
        check_positive_int("occlusion_window", self.occlusion_window)


@dataclass(frozen=True)
class ShapleyOptions:
    """Shapley value sampling's options.

    Attributes:
        shapley_window: The side of the squares of patches that are one player.
        shapley_samples: Random orders of the squares (each ``squares + 1`` forward passes).
        shapley_seed: The seed of the orders.
    """

    shapley_window: int = field(default=4, metadata={"help": "shapley: side of the square of patches that is one player"})
    shapley_samples: int = field(default=8, metadata={"help": "shapley: random orders of the squares"})
    shapley_seed: int = field(default=0, metadata={"help": "shapley: seed of the orders"})

    def __post_init__(self):
        check_positive_int("shapley_window", self.shapley_window)
        check_positive_int("shapley_samples", self.shapley_samples)
        if isinstance(self.shapley_seed, bool) or not isinstance(self.shapley_seed, int):
            raise option_error(f"shapley_seed must be an integer, got {self.shapley_seed!r}", "shapley_seed")


@dataclass(frozen=True)
class ExplanationMethod:
    """One explanation method.

    Attributes:
        name: Its name (``method=``, ``--method``).
        title: Its name in figures and selectors (``"Grad-CAM"``).
        implementation: Its maps' function, or ``"module:function"`` to import it when it first
            explains (so that the table stays importable without torch).
        layer: Which decoder layer it takes by default: ``"last"``, ``"middle"``, or None for a
            method that uses every layer (and takes none).
        gradients: It follows gradients (so an int8 decoder, which has none, cannot be explained by it).
        options: Its own options, a frozen dataclass whose fields are keywords of ``explain`` (and
            flags of ``bliptk explain``); [`NoOptions`][bliptk.attribution.registry.NoOptions] for none.
        cost: How long it takes where that is long, in words, for the explorers' selector and the
            command line's help (``"slow: minutes"``, on a CPU with ViT-B/16), or "" for a method
            that answers in a second or two. The explorers show a progress bar and a Stop button
            while a method with a cost runs.
        black_box: It needs only a runtime's ``encode`` and decoder (no gradient, no attention):
            any runtime's captioner, an ONNX export's too, is explained by it.
        batch: A function ``(captioner, visuals, targets, layer, options) -> list[Maps]`` that
            explains several images at once (or ``"module:function"``); None: one at a time.
    """

    name: str
    title: str
    implementation: str | Callable[..., Any]
    layer: str | None = None
    gradients: bool = False
    options: type = NoOptions
    cost: str = ""
    black_box: bool = False
    batch: str | Callable[..., Any] | None = None

    @property
    def takes_layer(self) -> bool:
        return self.layer is not None

    @property
    def takes_target(self) -> bool:
        """Its maps explain a target (the token's log-probability), which a contrast can change:
        the methods that follow gradients and the black-box ones, not the attention maps."""
        return self.gradients or self.black_box

    def function(self) -> Callable[..., Any]:
        return _imported(self.implementation)

    def batch_function(self) -> Callable[..., Any] | None:
        return None if self.batch is None else _imported(self.batch)


def _imported(implementation: str | Callable[..., Any]) -> Callable[..., Any]:
    if callable(implementation):
        return implementation
    module, _, name = implementation.partition(":")
    return getattr(importlib.import_module(module), name)


METHODS: dict[str, ExplanationMethod] = {}
"""The registered methods, by name, in the order the guide presents them."""


def register_method(method: ExplanationMethod) -> None:
    """Make a method known to ``explain``, the command line and the explorers."""
    METHODS[method.name] = method


for _method in (
    ExplanationMethod("attention", "cross-attention", "bliptk.attribution.cross_attention:cross_attention", layer="last"),
    ExplanationMethod(
        "gradcam",
        "Grad-CAM",
        "bliptk.attribution.gradcam:gradcam",
        layer="middle",
        gradients=True,
        batch="bliptk.attribution.gradcam:gradcam_batch",
    ),
    ExplanationMethod(
        "relevance",
        "relevance",
        "bliptk.attribution.relevance:relevance",
        gradients=True,
        cost="slow: tens of seconds",
        batch="bliptk.attribution.relevance:relevance_batch",
    ),
    ExplanationMethod("rollout", "attention rollout", "bliptk.attribution.rollout:attention_rollout"),
    ExplanationMethod(
        "integrated_gradients",
        "integrated gradients",
        "bliptk.attribution.integrated_gradients:integrated_gradients",
        gradients=True,
        options=IntegratedGradientsOptions,
        cost="slow: minutes",
    ),
    ExplanationMethod(
        "occlusion", "occlusion", "bliptk.attribution.occlusion:occlusion", options=OcclusionOptions, cost="slow: a minute", black_box=True
    ),
    ExplanationMethod(
        "shapley", "Shapley sampling", "bliptk.attribution.shapley:shapley", options=ShapleyOptions, cost="slow: minutes", black_box=True
    ),
):
    register_method(_method)


class _Names(Sequence):
    """The registered methods' names, read from the table whenever used (a method registered later is among them)."""

    def __getitem__(self, index):
        return tuple(METHODS)[index]

    def __len__(self) -> int:
        return len(METHODS)

    def __repr__(self) -> str:
        return repr(tuple(METHODS))


class _Titles(Mapping):
    """Each registered method's title, read from the table whenever used."""

    def __getitem__(self, name: str) -> str:
        return METHODS[name].title

    def __iter__(self):
        return iter(METHODS)

    def __len__(self) -> int:
        return len(METHODS)


EXPLANATION_METHODS: Sequence[str] = _Names()
"""The methods [`explain()`][bliptk.attribution.explanation.explain] knows, in the order the guide presents them."""
METHOD_NAMES: Mapping[str, str] = _Titles()
"""Each method's name in figures."""


def method_of(method) -> ExplanationMethod:
    """The registered method of a name.

    Raises:
        InvalidOptionError: No such method.
    """
    if not isinstance(method, str) or method not in METHODS:
        raise option_error(f"method must be one of {', '.join(METHODS)}, got {method!r}", "method")
    return METHODS[method]


def method_options(method: ExplanationMethod, keywords: dict) -> tuple[Any, dict]:
    """The method's options, its fields taken from ``keywords`` (the other keywords left: decoding
    options); a field of another method's options is an error naming the method it belongs to."""
    mine = {f.name for f in fields(method.options)}
    given = {name: value for name, value in keywords.items() if name in mine}
    others = {f.name: other.name for other in METHODS.values() if other is not method for f in fields(other.options)}
    misplaced = sorted(name for name in keywords if name in others and name not in mine)
    if misplaced:
        raise option_error(f"{misplaced[0]} applies to the {others[misplaced[0]]} method, not {method.name}", misplaced[0])
    return replace(method.options(), **given), {name: value for name, value in keywords.items() if name not in mine}


def resolved_layer(method: str, layer, layers: int) -> int | None:
    """The decoder layer a method uses, 0-based: its default (``"attention"``: the last, the
    page's; ``"gradcam"``: the middle, ``layers // 2``, 6 of BLIP's 12, the layer LAVIS's
    ``compute_gradcam`` takes for BLIP (``block_num=6``), as ALBEF, whose Grad-CAM LAVIS adapted,
    takes the middle of its fusion layers); a method that uses every layer takes none.

    Raises:
        InvalidOptionError: An unknown method, a layer out of range, or a layer for a method that
            takes none.
    """
    chosen = method_of(method)
    if not chosen.takes_layer:
        if layer is not None:
            names = [m.name for m in METHODS.values() if m.takes_layer]
            takers = " and ".join([", ".join(names[:-1]), names[-1]] if len(names) > 1 else names)
            raise option_error(f"{method} uses all decoder layers: drop layer (it applies to {takers})", "layer")
        return None
    if layer is None:
        return layers - 1 if chosen.layer == "last" else layers // 2
    if isinstance(layer, bool) or not isinstance(layer, int) or not -layers <= layer < layers:
        raise option_error(
            f"layer must be an integer in [{-layers}, {layers - 1}] (the decoder has {layers} layers), got {layer!r}", "layer"
        )
    return layer % layers
