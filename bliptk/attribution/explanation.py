"""Why the model chose each word: one map over the image patches per caption token.

[`explain()`][bliptk.attribution.explanation.explain] runs the caption through the model, teacher-forced
(the prompt and the caption's tokens as the decoder's input), and makes one ``(grid, grid)`` map per
token with a method of the registry ([`bliptk.attribution.registry`][bliptk.attribution.registry]),
one module each: the page's cross-attention ([`bliptk.attribution.cross_attention`][bliptk.attribution.cross_attention]),
Grad-CAM ([`bliptk.attribution.gradcam`][bliptk.attribution.gradcam]), relevance
([`bliptk.attribution.relevance`][bliptk.attribution.relevance]), attention rollout
([`bliptk.attribution.rollout`][bliptk.attribution.rollout]), integrated gradients
([`bliptk.attribution.integrated_gradients`][bliptk.attribution.integrated_gradients]). Token t is
predicted at decoder position p; its target is y = log p(w_t), the log-softmax of the logits at p.

The formulas and costs are in the guide (docs/guide/explaining.md). Explaining never changes a
caption: [`Captioner.caption()`][bliptk.model.captioner.Captioner.caption] stays gradient-free, and the model's weights are only read.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..core import pipeline
from ..core.decoding import Caption
from ..core.errors import InvalidOptionError, option_error
from ..core.video import VideoFrames
from .passes import explained_target, grid_of, pixels_fingerprint, visual_input
from .registry import METHOD_NAMES, method_of, method_options, resolved_layer

__all__ = ["Explanation", "explain"]


@dataclass(eq=False)
class Explanation:
    """What [`explain()`][bliptk.attribution.explanation.explain] returns: one map per caption token.

    Attributes:
        maps: ``(T, grid, grid)`` float32, one map per caption token (grid = 24 at 384 px with
            16 px patches). Higher means more (each method's own units; the figures rescale each
            map to its range).
        tokens: The caption's WordPiece tokens, T of them (the ending ``[SEP]`` not included).
        token_ids: Their ids.
        method: The method that made the maps (one of
            [`EXPLANATION_METHODS`][bliptk.attribution.registry.EXPLANATION_METHODS]).
        layer: The decoder layer of ``"attention"`` and ``"gradcam"`` (0-based), else None.
        prompt: The prompt the caption follows.
        text: The caption, prompt included.
        extras: A method's other outputs, named arrays: ``"text_relevance"`` (relevance),
            ``"completeness_gap"`` (integrated gradients); see their properties.
        provenance: The model and weights, and the options the maps were made with.
    """

    maps: np.ndarray
    tokens: list[str]
    token_ids: list[int]
    method: str
    layer: int | None
    prompt: str
    text: str
    extras: dict[str, np.ndarray] = field(default_factory=dict)
    provenance: dict = field(default_factory=dict)

    @property
    def text_relevance(self) -> np.ndarray | None:
        """For ``"relevance"``, ``(T, P + T)``: each token's relevance over the decoder's input
        positions (``[DEC]`` and the prompt's P - 1 tokens, then the caption's tokens), row t being
        row p of R^qq, identity term included; later positions get 0. Else None."""
        return self.extras.get("text_relevance")

    @property
    def completeness_gap(self) -> np.ndarray | None:
        """For ``"integrated_gradients"``, ``(T,)``: the sum of each token's attributions minus
        ``y(image) - y(baseline)``, as captum reports it. Else None."""
        return self.extras.get("completeness_gap")

    @property
    def name(self) -> str:
        """The method's name in figures (``"Grad-CAM"``, ...)."""
        return METHOD_NAMES[self.method]

    def __len__(self) -> int:
        return len(self.tokens)

    def __repr__(self) -> str:
        layer = "" if self.layer is None else f", layer {self.layer}"
        return f"Explanation({self.method}{layer}, {len(self.tokens)} tokens of {self.text!r})"


def explain(
    captioner,
    image,
    caption: Caption | str | None = None,
    *,
    method: str = "gradcam",
    layer: int | None = None,
    prompt: str | None = None,
    **options,
) -> Explanation | list[Explanation]:
    """One map per caption token: which image patches made the model choose it.

    Args:
        captioner: A [`Captioner`][bliptk.model.captioner.Captioner] (explanations need torch's gradients; an ONNX
            export captions only).
        image: What ``caption`` takes: a path, PIL image, array or tensor; or a video (file or
            frames), whose pooled features are explained.
        caption: A [`Caption`][bliptk.core.decoding.Caption] from ``captioner.caption`` (its tokens are explained, along
            its own prompt); a string, explained teacher-forced after ``prompt`` (a string that
            starts with the prompt, as ``Caption.text`` does, is taken whole); or None: the image
            is captioned first, with the decoding options.
        method: One of [`EXPLANATION_METHODS`][bliptk.attribution.registry.EXPLANATION_METHODS] (see the module's description).
        layer: The decoder layer (0-based; negative counts from the end) of a method that takes
            one: ``"attention"`` (default: the last, the page's) and ``"gradcam"`` (default: the
            middle).
        prompt: The prompt of a string caption, or of the caption made for None (default: "a
            photography of", or "a video of" for a video).
        **options: The method's own options (its registry entry's: ``ig_steps`` of integrated
            gradients, 32); for the caption made when ``caption`` is None, fields of
            [`DecodingOptions`][bliptk.core.decoding.DecodingOptions] (``max_new_tokens``,
            ``num_beams``, ...); and fields of [`VideoOptions`][bliptk.core.video.VideoOptions]
            (``num_frames``) for a video.

    Returns:
        An [`Explanation`][bliptk.attribution.explanation.Explanation]: ``maps`` ``(T, grid, grid)``, ``tokens``, ``method``,
        ``layer``, and the method's extras. For a list of images (not a video's
        [`VideoFrames`][bliptk.core.video.VideoFrames]), a list: one explanation per image, of the caption
        given for it (``caption`` a list as long), or of the same ``caption``.

    Raises:
        InvalidOptionError: An unknown method or option, a layer out of range, a layer for a
            method without one, decoding options with a given caption, a prompt other than a
            given Caption's, a method that follows gradients on an int8 captioner.
    """
    from ..model.captioner import Captioner

    if not isinstance(captioner, Captioner):
        raise InvalidOptionError(f"explanations need torch's Captioner (bliptk.load); got {type(captioner).__name__}")
    chosen = method_of(method)
    layer = resolved_layer(method, layer, len(captioner.text_decoder.layers))
    settings, decoding_options = method_options(chosen, options)
    if chosen.gradients and captioner.weights.dtype == "int8":
        raise option_error(
            f"{method} follows gradients, which the int8 decoder's weights have none of: explain with the float model "
            "(bliptk.load(model) or dtype='bfloat16')",
            "method",
        )
    if isinstance(image, list | tuple) and not isinstance(image, VideoFrames):
        captions = list(caption) if isinstance(caption, list | tuple) else [caption] * len(image)
        if len(captions) != len(image):
            raise InvalidOptionError(f"{len(captions)} captions for {len(image)} images: give one caption per image, or one for all")
        return [
            _explain_one(captioner, each, said, chosen, layer, prompt, settings, decoding_options)
            for each, said in zip(image, captions, strict=True)
        ]
    if isinstance(caption, list | tuple):
        raise InvalidOptionError("a list of captions goes with a list of images, one caption per image")
    return _explain_one(captioner, image, caption, chosen, layer, prompt, settings, decoding_options)


def _explain_one(captioner, image, caption, method, layer: int | None, prompt: str | None, settings, decoding_options: dict) -> Explanation:
    """[`explain()`][bliptk.attribution.explanation.explain] of one image or video, its options checked."""
    from dataclasses import asdict

    options, video_options = pipeline.resolve_options(**decoding_options)
    options = pipeline.own_options(captioner, options)
    decoding_given = any(name not in ("num_frames", "pooling") for name in decoding_options)
    visual = visual_input(captioner, image, video_options)
    target = explained_target(captioner, visual, caption, prompt, options, decoding_given)
    pipeline.say_if_random(captioner)
    result = method.function()(captioner, visual, target, layer, settings)
    grid = grid_of(captioner.image_encoder.feature_shape[0])
    return Explanation(
        maps=result.patches.reshape(-1, grid, grid).numpy().astype(np.float32),
        tokens=captioner.tokenizer.convert_ids_to_tokens(target.token_ids),
        token_ids=target.token_ids,
        method=method.name,
        layer=layer,
        prompt=target.prompt,
        text=target.text,
        extras={name: values.numpy().astype(np.float32) for name, values in result.extras.items()},
        provenance={
            **captioner.provenance(),
            "method": method.name,
            "layer": layer,
            **asdict(settings),
            "num_frames": int(visual.pixels.shape[0]) if visual.video else None,
            "pixels": pixels_fingerprint(visual.pixels),
        },
    )
