"""Why the model chose each word: one map over the image patches per caption token.

[`explain()`][bliptk.attribution.explanation.explain] runs the caption through the model, teacher-forced
(the prompt and the caption's tokens as the decoder's input), and makes one ``(grid, grid)`` map per
token with a method of the registry ([`bliptk.attribution.registry`][bliptk.attribution.registry]),
one module each: the page's cross-attention ([`bliptk.attribution.cross_attention`][bliptk.attribution.cross_attention]),
Grad-CAM ([`bliptk.attribution.gradcam`][bliptk.attribution.gradcam]), relevance
([`bliptk.attribution.relevance`][bliptk.attribution.relevance]), attention rollout
([`bliptk.attribution.rollout`][bliptk.attribution.rollout]), integrated gradients
([`bliptk.attribution.integrated_gradients`][bliptk.attribution.integrated_gradients]), and two
black-box methods that explain any runtime, an ONNX export too: occlusion
([`bliptk.attribution.occlusion`][bliptk.attribution.occlusion]) and Shapley value sampling
([`bliptk.attribution.shapley`][bliptk.attribution.shapley]). Token t is predicted at decoder position
p; its target is y = log p(w_t), the log-softmax of the logits at p, or with a contrast (a foil word
f for token t) y = log p(w_t) - log p(f): why this word and not that one.

The formulas and costs are in the guide (docs/guide/explaining.md). Explaining never changes a
caption: [`Captioner.caption()`][bliptk.model.captioner.Captioner.caption] stays gradient-free, and the model's weights are only read.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np

from ..core import pipeline
from ..core.decoding import Caption
from ..core.errors import InvalidOptionError, check_positive_int, option_error
from ..core.optional import optional
from ..core.video import VideoFrames
from .passes import Target, Visual, encoded, explained_target, frame_features, grid_of, pixels_fingerprint, visual_input
from .registry import METHODS, ExplanationMethod, method_of, method_options, resolved_layer
from .result import Explanation

__all__ = [
    "Explanation",
    "ExplainRequest",
    "explain",
    "explain_visuals",
    "explanation_request",
    "foil_id",
    "ProgressBar",
    "report_progress",
    "reporting_progress",
    "resolve_contrast",
]

# The progress hook of the explanation running in this thread (a context variable, so that the
# methods' signature stays (captioner, visual, target, layer, options) and an explorer's worker
# thread has its own).
_PROGRESS: ContextVar[Callable[[int, int], None] | None] = ContextVar("bliptk_explain_progress", default=None)


def report_progress(done: int, total: int) -> None:
    """Tell the running explanation's ``progress`` hook (if any) that ``done`` of ``total`` units of
    work are done; called by the slow methods between units (integrated gradients' path steps,
    relevance's token passes). The hook may raise to stop the explanation: the error propagates
    from here, before the next unit runs."""
    hook = _PROGRESS.get()
    if hook is not None:
        hook(done, total)


@contextmanager
def reporting_progress(hook: Callable[[int, int], None] | None) -> Iterator[None]:
    """Within this block, [`report_progress()`][bliptk.attribution.explanation.report_progress] calls ``hook`` (None: nothing)."""
    token = _PROGRESS.set(hook)
    try:
        yield
    finally:
        _PROGRESS.reset(token)
        if isinstance(hook, ProgressBar):
            hook.close()  # a failed or stopped explanation's bar, left as it got


@dataclass(frozen=True)
class ExplainRequest:
    """What an explanation is asked to be, checked: the method, its decoder layer and options,
    the decoding options of captions made on the way, the prompt, the contrast."""

    method: ExplanationMethod
    layer: int | None
    settings: object
    decoding_options: dict
    prompt: str | None
    contrast: dict


def explanation_request(captioner, method, layer, prompt, contrast, options: dict) -> ExplainRequest:
    """Check what [`explain()`][bliptk.attribution.explanation.explain] is asked (before any work):
    the runtime against the method, the layer, the method's own options, the contrast.

    Raises:
        InvalidOptionError: See ``explain``.
    """
    from ..captioning.backend import CaptionBackend
    from ..model.captioner import Captioner

    chosen = method_of(method)
    torch_captioner = isinstance(captioner, Captioner)
    if not torch_captioner and not (chosen.black_box and isinstance(captioner, CaptionBackend)):
        black_box = ", ".join(name for name, each in METHODS.items() if each.black_box)
        raise InvalidOptionError(
            f"{method} needs torch's Captioner (bliptk.load of a checkpoint), got {type(captioner).__name__}: "
            f"explain another runtime (an ONNX export) with a black-box method ({black_box})"
        )
    layer = resolved_layer(method, layer, len(captioner.text_decoder.layers) if torch_captioner else 0)
    settings, decoding_options = method_options(chosen, options)
    if chosen.gradients and captioner.weights.dtype == "int8":
        raise option_error(
            f"{method} follows gradients, which the int8 decoder's weights have none of: explain with the float model "
            "(bliptk.load(model) or dtype='bfloat16')",
            "method",
        )
    if contrast is not None and not isinstance(contrast, dict):
        raise option_error(
            f"contrast is a dict of caption tokens to foil words ({{'dog': 'cat'}}), got {type(contrast).__name__}", "contrast"
        )
    contrast = dict(contrast or {})
    if contrast and not chosen.takes_target:
        raise option_error(
            f"{method} maps do not depend on the token's probability, so a contrast changes nothing: use a gradient or black-box method",
            "contrast",
        )
    for key, foil in contrast.items():
        if isinstance(key, bool) or not isinstance(key, int | str) or not isinstance(foil, str):
            raise option_error(f"contrast maps a caption token (its index, or the token) to a foil word, got {key!r}: {foil!r}", "contrast")
        foil_id(captioner.tokenizer, foil)
    if chosen.black_box:
        optional("captum")  # said before any work, not by each input
        check_windows(captioner, settings)
    return ExplainRequest(chosen, layer, settings, decoding_options, prompt, contrast)


def check_windows(captioner, settings) -> None:
    """A black-box method's window (a field named ``*_window``) fits the model's grid of patches.

    Raises:
        InvalidOptionError: A window larger than the grid, naming the largest.
    """
    from dataclasses import fields

    for option in fields(settings):
        window = getattr(settings, option.name)
        if option.name.endswith("_window") and window > (grid := patch_grid(captioner)):
            raise option_error(
                f"{option.name} {window} is larger than the image's grid of {grid} x {grid} patches: give at most {grid}", option.name
            )


def patch_grid(captioner) -> int:
    """The side of the model's grid of image patches (24 at 384 px with 16 px patches)."""
    if hasattr(captioner, "image_encoder"):
        return grid_of(captioner.image_encoder.feature_shape[0])
    size = captioner.preprocessor.image_size
    return grid_of(captioner.encode(np.zeros((1, 3, size, size), dtype=np.float32)).shape[1])


def foil_id(tokenizer, foil: str) -> int:
    """The id of a foil word, which must be one WordPiece token.

    Raises:
        InvalidOptionError: It is several tokens (named) or none.
    """
    ids = tokenizer.encode(foil)[1:]
    if len(ids) != 1:
        pieces = ", ".join(tokenizer.convert_ids_to_tokens(ids)) or "none"
        raise option_error(f"a foil is one WordPiece token; {foil!r} is {len(ids)} ({pieces})", "contrast")
    [token] = tokenizer.convert_ids_to_tokens(ids)
    if token.startswith("[") and token.endswith("]"):  # [UNK] (text outside the vocabulary), [SEP], [PAD]...
        said = "outside BLIP's vocabulary (read as [UNK])" if token == "[UNK]" else f"the special token {token}"
        raise option_error(f"the foil {foil!r} is {said}: a foil is a word of the vocabulary", "contrast")
    return ids[0]


def resolve_contrast(tokenizer, target: Target, contrast: dict, required: bool = True) -> Target:
    """The target with its foils: ``contrast`` maps a token (its index, negative from the end, or
    the token itself: its first occurrence) to a foil word (one WordPiece token).

    Args:
        tokenizer: The model's tokenizer.
        target: The caption.
        contrast: The contrast asked for.
        required: A token the caption lacks (or an index past its end, or a foil that is the token
            itself) is an error; else that pair is left out: a folder's captions that do not say
            the word are explained plainly.

    Raises:
        InvalidOptionError: An index out of range, a token not in the caption, a foil that is
            the token itself.
    """
    tokens = tokenizer.convert_ids_to_tokens(target.token_ids)
    foils: dict[int, int] = {}
    for key, foil in contrast.items():
        try:
            index = _contrast_index(tokens, key)
            foil_token = foil_id(tokenizer, foil)
            if foil_token == target.token_ids[index]:
                raise option_error(f"the foil {foil!r} is the caption's own token {index}: name another word", "contrast")
        except InvalidOptionError:
            if required:
                raise
            continue
        foils[index] = foil_token
    return replace(target, foils=foils)


def _contrast_index(tokens: list[str], key) -> int:
    if isinstance(key, str):
        if key not in tokens:
            raise option_error(f"the caption's tokens {tokens} have no {key!r} to contrast", "contrast")
        return tokens.index(key)
    if not -len(tokens) <= key < len(tokens):
        raise option_error(f"contrast index {key} is outside the caption's {len(tokens)} tokens {tokens}", "contrast")
    return key % len(tokens)


def explain(
    captioner,
    image,
    caption: Caption | str | None = None,
    *,
    method: str = "gradcam",
    layer: int | None = None,
    prompt: str | None = None,
    contrast: dict | None = None,
    batch_size: int = 8,
    progress: bool | Callable[[int, int], None] | None = None,
    **options,
) -> Explanation | list[Explanation]:
    """One map per caption token: which image patches made the model choose it.

    Args:
        captioner: A [`Captioner`][bliptk.model.captioner.Captioner]; for the black-box methods
            (``"occlusion"``, ``"shapley"``), any runtime's captioner (an ONNX export too).
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
        contrast: Contrastive targets, ``{token: foil}``: the token (its index in the caption,
            or the token itself) explained as ``log p(token) - log p(foil)`` at its step: why
            this word and not the foil (one WordPiece token). For the methods that explain a
            target (gradient and black-box ones).
        batch_size: Images explained together, for a list of images, by a method that batches
            (Grad-CAM: one pass and one backward per token position for all of them).
        progress: A progress bar (``tqdm.auto``) of the units of work of the methods that report
            them (integrated gradients: its path steps, over all tokens; relevance: each token's
            backward passes; occlusion and Shapley sampling: the perturbed images): None shows it
            for the slow methods (those the registry gives a ``cost``), True for any that reports,
            False never. Or a function, called as ``progress(done, total)`` between the units, from
            the thread that explains; an exception it raises stops the explanation before the next
            unit and propagates from ``explain``: an explorer's Stop button.
        **options: The method's own options (its registry entry's: ``ig_steps`` of integrated
            gradients, 32; ``occlusion_window``, 2; ...); for the caption made when ``caption``
            is None, fields of [`DecodingOptions`][bliptk.core.decoding.DecodingOptions] (``max_new_tokens``,
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
            given Caption's, a method that follows gradients on an int8 captioner, a method that
            needs torch on another runtime, a contrast the caption or the method cannot take.
    """
    check_positive_int("batch_size", batch_size)
    if progress is not None and not isinstance(progress, bool) and not callable(progress):
        raise option_error(f"progress is True, False, None or a function (done, total), got {type(progress).__name__}", "progress")
    request = explanation_request(captioner, method, layer, prompt, contrast, options)
    if not callable(progress):
        progress = ProgressBar(request.method.title) if progress or (progress is None and request.method.cost) else None
    if isinstance(image, list | tuple) and not isinstance(image, VideoFrames):
        captions = list(caption) if isinstance(caption, list | tuple) else [caption] * len(image)
        if len(captions) != len(image):
            raise InvalidOptionError(f"{len(captions)} captions for {len(image)} images: give one caption per image, or one for all")
        with reporting_progress(progress):
            return explain_images(captioner, list(image), captions, request, batch_size)
    if isinstance(caption, list | tuple):
        raise InvalidOptionError("a list of captions goes with a list of images, one caption per image")
    with reporting_progress(progress):
        return explain_images(captioner, [image], [caption], request, batch_size)[0]


class ProgressBar:
    """A ``tqdm.auto`` bar fed by [`report_progress()`][bliptk.attribution.explanation.report_progress]:
    made at the first report (so a method that reports nothing shows nothing), a new one when the
    count starts again (the next image of a list), each closed when its count is complete."""

    def __init__(self, title: str):
        self.title = title
        self.bar: Any = None
        self.last = (-1, -1)

    def __call__(self, done: int, total: int) -> None:
        from ..core.progress import progress_bar

        if (done, total) == self.last:
            return
        if self.bar is None or done < self.bar.n:
            if self.bar is not None:
                self.bar.close()
            self.bar = progress_bar(total=total, desc=self.title, unit="step")
        self.bar.total = total
        self.bar.update(done - self.bar.n)
        self.last = (done, total)
        if done >= total:
            self.close()

    def close(self) -> None:
        """Close the bar now (a failed or stopped explanation's, as it got), ready for a new one."""
        if self.bar is not None:
            self.bar.close()
        self.bar, self.last = None, (-1, -1)


def explain_images(captioner, images: list, captions: list, request: ExplainRequest, batch_size: int = 8) -> list[Explanation]:
    """Explain images (each with its caption, or None to caption it), their options checked."""
    options, video_options = pipeline.resolve_options(**request.decoding_options)
    options = pipeline.own_options(captioner, options)
    decoding_given = any(name not in ("num_frames", "pooling") for name in request.decoding_options)
    visuals = [visual_input(captioner, image, video_options) for image in images]
    targets = explained_targets(captioner, visuals, captions, request, options, decoding_given, batch_size)
    pipeline.say_if_random(captioner)
    return explain_visuals(captioner, visuals, targets, request, [_source(image) for image in images], batch_size)


def explained_targets(
    captioner,
    visuals: list[Visual],
    captions: list,
    request: ExplainRequest,
    options,
    decoding_given: bool,
    batch_size: int = 8,
    required: bool = True,
) -> list[Target]:
    """Each image's caption to explain, its contrast resolved: those given, and those to make
    (caption None) captioned a batch at a time, their images encoded together."""
    made: dict[int, Caption] = {}
    pending = [index for index, caption in enumerate(captions) if caption is None]
    for start in range(0, len(pending), batch_size):
        chunk = pending[start : start + batch_size]
        encode_together(captioner, [visuals[index] for index in chunk])
        features = np.concatenate([encoded(captioner, visuals[index]).numpy() for index in chunk])
        prompts = [pipeline.request_prompt(request.prompt, options, visuals[index].video) for index in chunk]
        captioned = pipeline.caption_features(captioner, features, options, prompts)
        if len(captioned) != len(chunk):
            raise option_error("explain explains one caption: num_return_sequences must be 1", "num_return_sequences")
        made.update(zip(chunk, captioned, strict=True))
    targets = []
    for index, (visual, caption) in enumerate(zip(visuals, captions, strict=True)):
        mine = index in made
        target = explained_target(
            captioner, visual, made.get(index, caption), None if mine else request.prompt, options, decoding_given and not mine
        )
        targets.append(resolve_contrast(captioner.tokenizer, target, request.contrast, required))
    return targets


def _source(image) -> str | None:
    return os.fspath(image) if isinstance(image, str | os.PathLike) else None


def explain_visuals(
    captioner, visuals: list[Visual], targets: list[Target], request: ExplainRequest, sources: Sequence[str | None], batch_size: int = 8
) -> list[Explanation]:
    """The explanations of images already read and captioned: the method's maps, a batch at a time
    where the method batches (its images encoded together), one at a time otherwise."""
    method = request.method
    batched = method.batch_function()
    if batched is None:
        results = [
            method.function()(captioner, visual, target, request.layer, request.settings)
            for visual, target in zip(visuals, targets, strict=True)
        ]
    else:
        results = []
        for start in range(0, len(visuals), batch_size):
            chunk = visuals[start : start + batch_size]
            encode_together(captioner, chunk)
            results.extend(batched(captioner, chunk, targets[start : start + batch_size], request.layer, request.settings))
    return [
        _explanation(captioner, visual, target, maps, request, source)
        for visual, target, maps, source in zip(visuals, targets, results, sources, strict=True)
    ]


def encode_together(captioner, visuals: list[Visual]) -> None:
    """Encode the images among ``visuals`` (not yet encoded, not videos) in one batch."""
    import torch

    waiting = [visual for visual in visuals if visual.features is None and not visual.video]
    if len(waiting) > 1:
        stacked = Visual(torch.cat([visual.pixels for visual in waiting]), video=False)
        features = encoded_rows(captioner, stacked)
        for visual, row in zip(waiting, features, strict=True):
            visual.features = row[None]


def encoded_rows(captioner, visual: Visual):
    """Each frame's features ``(F, N, D)``, float32, without pooling."""
    import torch

    return torch.cat([frame_features(captioner, chunk) for chunk in visual.pixels.split(8)])


def _explanation(captioner, visual: Visual, target: Target, result, request: ExplainRequest, source: str | None) -> Explanation:
    grid = grid_of(result.patches.shape[1] + 1)
    tokens = captioner.tokenizer.convert_ids_to_tokens(target.token_ids)
    contrast = {t: captioner.tokenizer.convert_ids_to_tokens([foil])[0] for t, foil in sorted(target.foils.items())}
    return Explanation(
        maps=result.patches.reshape(-1, grid, grid).numpy().astype(np.float32),
        tokens=tokens,
        token_ids=list(target.token_ids),
        method=request.method.name,
        layer=request.layer,
        prompt=target.prompt,
        text=target.text,
        extras={name: values.numpy().astype(np.float32) for name, values in result.extras.items()},
        provenance={
            **captioner.provenance(),
            "method": request.method.name,
            "layer": request.layer,
            **asdict(request.settings),  # type: ignore[call-overload]
            **({"contrast": {str(t): foil for t, foil in contrast.items()}} if contrast else {}),
            "num_frames": int(visual.pixels.shape[0]) if visual.video else None,
            "pixels": pixels_fingerprint(visual.pixels),
        },
        contrast=contrast,
        image=source,
    )
