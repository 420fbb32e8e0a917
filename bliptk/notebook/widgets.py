"""Interactive explorers for notebooks (ipywidgets): thin views over bliptk's public API.

* [`CaptionExplorer`][bliptk.notebook.widgets.CaptionExplorer]: an image, a prompt and the decoding options; the caption, and each
  token's probability with its alternatives. Changing only decoding options re-decodes the cached
  image features; the image encoder runs once per image.
* [`AttentionExplorer`][bliptk.notebook.widgets.AttentionExplorer]: a token slider, a method, a layer and a head selector: the caption's
  cross-attention, or an explanation of each token ([`explain()`][bliptk.attribution.explanation.explain]), drawn over the image.
* [`StepThroughDecoder`][bliptk.notebook.widgets.StepThroughDecoder]: a button that advances decoding one token, showing the input token,
  the KV-cache length, the distribution of the next token and the choice.

Each explorer is displayed as its ``widget``; where no widget frontend exists (a terminal), its
text form says so.
"""

from __future__ import annotations

import html
import io
import threading
import time
from dataclasses import dataclass, field, fields
from typing import Any

import ipywidgets as w
from PIL import Image

from ..core.decoding import DEFAULT_PROMPT, Caption, DecodingOptions
from ..core.figures import displayable
from ..core.preprocess import load_image
from ..model.attention import attention_maps, overlay_attention
from ..model.stepper import Stepper, TokenChoice, token_alternatives

__all__ = ["AttentionExplorer", "CaptionExplorer", "StepThroughDecoder"]

# The layer selector's value for the mean over every decoder layer.
ALL_LAYERS = "all"

_NO_FRONTEND = "{name}: an interactive ipywidgets view; display it in JupyterLab or Jupyter Notebook to use it."


@dataclass(frozen=True)
class _OptionControl:
    """How the caption explorer shows one field of [`DecodingOptions`][bliptk.core.decoding.DecodingOptions]: a widget class, its
    range, and the widget value that stands for the field's None."""

    widget: str
    limits: dict
    none_value: object = None
    tooltip: str | None = None

    def to_option(self, value):
        return None if self.none_value is not None and value == self.none_value else value


# The decoding options the caption explorer offers; each control starts at its field's default.
# Text acts on Enter and sliders on release (continuous_update off), so that typing or dragging
# starts no caption until the value is given.
_OPTION_CONTROLS = {
    "prompt": _OptionControl("Text", {"continuous_update": False}, none_value=DEFAULT_PROMPT, tooltip="Enter to caption"),
    "max_new_tokens": _OptionControl("IntSlider", {"min": 1, "max": 60, "continuous_update": False}),
    "temperature": _OptionControl("FloatSlider", {"min": 0.0, "max": 2.0, "step": 0.05, "continuous_update": False}),
    "top_k": _OptionControl("IntSlider", {"min": 1, "max": 100, "continuous_update": False}),
    "top_p": _OptionControl(
        "FloatSlider", {"min": 0.05, "max": 1.0, "step": 0.05, "continuous_update": False}, none_value=1.0
    ),  # 1: no limit
    "num_beams": _OptionControl("IntSlider", {"min": 1, "max": 8, "continuous_update": False}),
    "num_return_sequences": _OptionControl(
        "IntSlider", {"min": 1, "max": 5, "continuous_update": False}, tooltip="several samples, or the best beams"
    ),
    "seed": _OptionControl("IntText", {"continuous_update": False}, none_value=-1, tooltip="-1: fresh randomness each time"),
}
# The options that only sampling reads: disabled for greedy decoding and beam search.
_SAMPLING_OPTIONS = ("top_k", "top_p", "seed")
_LABELS = {"num_return_sequences": "captions"}


def _option_controls() -> dict:
    """One widget per offered field of [`DecodingOptions`][bliptk.core.decoding.DecodingOptions], at the field's default."""
    defaults = DecodingOptions()
    controls = {}
    for option in fields(DecodingOptions):
        if option.name in _OPTION_CONTROLS:
            spec = _OPTION_CONTROLS[option.name]
            default = getattr(defaults, option.name)
            value = spec.none_value if default is None else default
            label = _LABELS.get(option.name, option.name.replace("_", " "))
            control = getattr(w, spec.widget)(value=value, description=label, **spec.limits)
            control.tooltip = spec.tooltip or option.metadata["help"]
            controls[option.name] = control
    return controls


def _method_label(method) -> str:
    """A method's entry in the explorer's selector: its title, and its cost where it is slow."""
    return f"{method.title} ({method.cost})" if method.cost else method.title


_FIELD_WIDGETS = {int: "BoundedIntText", float: "FloatText", bool: "Checkbox", str: "Text"}


def _method_option_controls(options_class) -> dict:
    """One widget per field of an explanation method's options dataclass, at the field's default:
    a number box for numbers (bounded below by the field's ``min`` metadata), a checkbox for
    switches, a text box for text. A method registered with new options gets its controls here."""
    defaults = options_class()
    controls = {}
    for option in fields(options_class):
        default = getattr(defaults, option.name)
        kind = _FIELD_WIDGETS.get(type(default), "Text")
        limits = {"min": option.metadata.get("min", 1), "max": 10**6} if kind == "BoundedIntText" else {}
        control = getattr(w, kind)(value=default, description=option.name.replace("_", " "), continuous_update=False, **limits)
        control.tooltip = option.metadata.get("help", "")
        controls[option.name] = control
    return controls


# Display sizes: the controls' column, and the box a picture or chart is drawn in. The output sits
# beside the controls where there is room for both, and below them where there is not (a narrow
# notebook, a sidebar open), never squeezed under MIN_OUTPUT_WIDTH.
CONTROLS_WIDTH, OUTPUT_WIDTH, MIN_OUTPUT_WIDTH = 330, 480, 360
# The chosen image, shown among the controls: small enough that the controls stay in view.
THUMBNAIL_SIZE = 160
# A change waits this long for newer ones before the model runs, so that only the latest runs.
SETTLE_SECONDS = 0.05


def _show(picture_widget, figure_or_image, size: int = OUTPUT_WIDTH) -> None:
    """Draw a figure or image in an image widget, fitted into a ``size`` square, from pixels at
    twice that size (so that it stays sharp on every screen)."""
    buffer = io.BytesIO()
    if hasattr(figure_or_image, "savefig"):
        width, height = figure_or_image.get_size_inches()
        figure_or_image.savefig(buffer, format="png", dpi=2 * size / width)
    else:
        picture = figure_or_image.copy()
        width, height = picture.size
        picture.thumbnail((2 * size, 2 * size))
        picture.save(buffer, format="PNG")
    scale = size / max(width, height)
    picture_widget.layout.width, picture_widget.layout.height = f"{round(width * scale)}px", f"{round(height * scale)}px"
    picture_widget.value = buffer.getvalue()


def _two_columns(controls: list, output: list):
    """Controls in a fixed column, the output beside them or, where the notebook is too narrow
    for both, below them; long text wraps instead of widening the output."""
    for control in controls:
        if "description_width" in getattr(getattr(control, "style", None), "keys", ()):  # labels whole, alike
            control.style.description_width = "124px"
            control.layout.width = f"{CONTROLS_WIDTH - 10}px"
    left = w.VBox(controls, layout=w.Layout(width=f"{CONTROLS_WIDTH}px", flex="0 0 auto"))
    right = w.VBox(output, layout=w.Layout(flex="1 1 auto", min_width=f"{MIN_OUTPUT_WIDTH}px", max_width=f"{OUTPUT_WIDTH + 40}px"))
    return w.HBox([left, right], layout=w.Layout(align_items="flex-start", flex_flow="row wrap"))


def _picture():
    """An image widget for [`_show()`][bliptk.notebook.widgets._show]."""
    return w.Image(format="png", layout=w.Layout(object_fit="contain"))


def _wrapping(markup: str) -> str:
    """``markup`` (HTML, its text escaped by the caller) in a block that wraps within its column."""
    return f'<div style="white-space: normal; overflow-wrap: anywhere; line-height: 1.4">{markup}</div>'


def _caption_html(text: str) -> str:
    """A caption in bold, escaped, wrapping; a character the fonts cannot draw written as its
    escape, as in the tokens and charts."""
    return _wrapping(f"<b>{_token(text)}</b>")


def _token(text: str) -> str:
    """A token as every explorer shows it, in HTML as in charts: a character the fonts cannot draw
    written as its escape (``\\u0925``), in a ``<bdi>`` so that a right-to-left word piece (Arabic,
    Hebrew) keeps to itself and does not reorder the numbers and words around it."""
    return f"<bdi>{html.escape(displayable(text))}</bdi>"


# Light colours (so that black text stays readable) from unlikely, red, to sure, green: matplotlib's RdYlGn.
_PROBABILITY_COLOURS = ((0.0, (244, 165, 130)), (0.5, (255, 255, 191)), (1.0, (166, 217, 106)))


def probability_colour(probability: float) -> str:
    """The background of a token of this probability: red (unlikely) through yellow to green (sure)."""
    p = min(max(float(probability), 0.0), 1.0)
    (low, start), (high, end) = (_PROBABILITY_COLOURS[0], _PROBABILITY_COLOURS[1]) if p <= 0.5 else _PROBABILITY_COLOURS[1:]
    share = (p - low) / (high - low)
    red, green, blue = (round(a + (b - a) * share) for a, b in zip(start, end, strict=True))
    return f"#{red:02x}{green:02x}{blue:02x}"


PROBABILITY_LEGEND = (
    '<div style="font-size: 11px; margin-top: 4px">probability of each token: '
    + "".join(f'<span style="background: {probability_colour(p)}; padding: 0 4px">{p:g}</span>' for p in (0.0, 0.25, 0.5, 0.75, 1.0))
    + "</div>"
)
"""What the colours of the tokens mean, shown under them."""


def probability_text(probability: float) -> str:
    """A probability readable at any magnitude: three decimals down to 0.001, then two significant
    digits in scientific notation (``3.2e-05``), never ``0.000``."""
    if probability >= 0.001 or probability == 0:
        return f"{probability:.3f}"
    return f"{probability:.1e}"


def _tick_text(value: float) -> str:
    """A probability axis' tick: two significant digits (``0.25``, ``3e-05``)."""
    return "0" if value == 0 else f"{value:.2g}"


class _Latest:
    """Runs a function for the latest of a burst of changes only.

    In a notebook kernel, a change waits [`SETTLE_SECONDS`][bliptk.notebook.widgets.SETTLE_SECONDS] for
    newer ones; the changes that arrive while the model works run nothing but the last of them,
    once it is done. Outside a kernel's event loop (a script, a test), it runs at once.
    """

    def __init__(self, function):
        self.function = function
        self.pending = None

    def __call__(self) -> None:
        import asyncio

        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.function()
            return
        if self.pending is not None:
            self.pending.cancel()
        self.pending = loop.call_later(SETTLE_SECONDS, self._run)

    def _run(self) -> None:
        self.pending = None
        self.function()


def _busy_indicator():
    """An HTML widget that says the model is working (empty when it is not)."""
    return w.HTML(layout=w.Layout(min_height="1.5em"))


# A spinner drawn by CSS, not an emoji: without an emoji font an hourglass is an empty box.
_SPINNER = (
    "<style>@keyframes bliptk-spin { to { transform: rotate(360deg) } }</style>"
    '<span class="bliptk-spinner" style="display: inline-block; width: 0.75em; height: 0.75em; margin-right: 0.4em; '
    "vertical-align: -0.1em; border: 2px solid currentColor; border-right-color: transparent; border-radius: 50%; "
    'animation: bliptk-spin 0.8s linear infinite"></span>'
)
_BUSY = f'<span class="bliptk-busy" style="color: #b45309">{_SPINNER}working&hellip;</span>'


class _Explorer:
    widget: Any = None

    def _repr_mimebundle_(self, **kwargs):
        bundle = self.widget._repr_mimebundle_(**kwargs) or {}
        bundle["text/plain"] = _NO_FRONTEND.format(name=type(self).__name__)
        return bundle

    def __repr__(self) -> str:
        return _NO_FRONTEND.format(name=type(self).__name__)


class CaptionExplorer(_Explorer):
    """Caption an image interactively.

    The prompt acts on Enter and the sliders on release; while the model works a busy indicator
    shows, and changes made meanwhile run once, the latest, when it is done. Controls that the
    current options ignore are disabled (top-k, top-p and the seed unless sampling; the
    temperature with beams).

    Args:
        captioner: A [`Captioner`][bliptk.model.captioner.Captioner].
        images: Images (paths) to choose from; an upload box adds more.
        alternatives: How many alternatives to show per token.

    Attributes:
        caption: The caption whose tokens are shown: the first, or the one ``which`` chooses when
            several are asked for (``num_return_sequences``, beams).
        captions: Every caption of the last run.
        which: The selector of the caption whose tokens are shown (hidden for one caption).
        choices: [`token_alternatives()`][bliptk.model.stepper.token_alternatives] of the caption, as shown.
        encoder_runs: How many times the image encoder ran (once per image).
    """

    def __init__(self, captioner, images=(), alternatives: int = 5):
        self.captioner = captioner
        self.alternatives = alternatives
        self.encoder_runs = 0
        self._features: dict[str, object] = {}
        self._images = {str(path): path for path in images}
        self.image = w.Dropdown(options=self._image_choices(), description="image")
        self.thumbnail = w.Image(format="png", layout=w.Layout(max_width=f"{CONTROLS_WIDTH - 10}px", height="auto"))
        self.upload = w.FileUpload(accept="image/*", multiple=False, description="upload")
        self.controls = _option_controls()
        for name, control in self.controls.items():
            setattr(self, name, control)
        self.token = w.IntSlider(value=0, min=0, max=0, description="token", continuous_update=False)
        self.which = w.Dropdown(options=[("caption 1", 0)], value=0, description="tokens of", layout=w.Layout(display="none"))
        self.which.tooltip = "the caption whose tokens, probabilities and alternatives are shown"
        self._choosing = False
        self.busy = _busy_indicator()
        self.text = w.HTML()
        self.table = w.HTML()
        self.chart = _picture()
        self.caption: Caption | None = None
        self.captions: list[Caption] = []
        self.choices: list[TokenChoice] = []
        self._update = _Latest(self.update)
        controls = [self.image, self.upload, *self.controls.values()]
        for control in controls:
            control.observe(self._changed, names="value")
        self.token.observe(lambda change: self._draw_chart(), names="value")
        self.which.observe(lambda change: self._chose_caption(), names="value")
        self.widget = _two_columns(
            [self.image, self.thumbnail, self.upload, *self.controls.values()],
            [self.busy, self.text, self.which, self.table, self.token, self.chart],
        )
        self._enable()
        if self._images:
            self.update()

    def _image_choices(self) -> list[tuple[str, str]]:
        """(label, key) of each image: its file name, not its whole path."""
        from pathlib import Path

        return [(Path(key).name, key) for key in self._images]

    def options(self) -> DecodingOptions:
        """The decoding options the controls say (temperature 0 with beams, which are greedy; as
        many captions as the decoding can make different)."""
        values = {name: _OPTION_CONTROLS[name].to_option(control.value) for name, control in self.controls.items()}
        if values["num_beams"] > 1:
            values["temperature"] = 0.0
            values["num_return_sequences"] = min(values["num_return_sequences"], values["num_beams"])
        elif values["temperature"] == 0:
            values["num_return_sequences"] = 1  # greedy captions would all be the same
        return DecodingOptions(**values)

    def _enable(self) -> None:
        """Disable the controls the current options ignore."""
        beams, greedy = self.controls["num_beams"].value > 1, self.controls["temperature"].value == 0
        self.controls["temperature"].disabled = beams
        for name in _SAMPLING_OPTIONS:
            self.controls[name].disabled = beams or greedy
        self.controls["num_return_sequences"].disabled = greedy and not beams

    def features(self):
        """The chosen image's features, computed once per image."""
        key = self.image.value
        if key not in self._features:
            self._features[key] = self.captioner.encode_image(self._images[key])
            self.encoder_runs += 1
        return self._features[key]

    def _changed(self, change) -> None:
        if change["owner"] is self.upload:
            if self.upload.value:
                item = self.upload.value[0]
                self._images[item["name"]] = load_image(Image.open(io.BytesIO(bytes(item["content"]))))
                self.image.options = self._image_choices()
                self.image.value = item["name"]
            return
        self._enable()
        self.busy.value = _BUSY
        self._update()

    def update(self) -> None:
        """Caption the chosen image with the current options and redraw."""
        if self.image.value is None:
            return
        self.busy.value = _BUSY
        try:
            _show(self.thumbnail, load_image(self._images[self.image.value]), size=THUMBNAIL_SIZE)
            features = self.features()
            options = self.options()
            self.captions = self.captioner.caption_features(features, options)
            # Several captions: the selector says whose tokens are shown (the first, until another is chosen).
            chosen, self._choosing = self.which.value or 0, True
            try:
                self.which.options = [(f"caption {number}", number - 1) for number in range(1, len(self.captions) + 1)]
                self.which.value = min(chosen, len(self.captions) - 1)
            finally:
                self._choosing = False
            self.which.layout.display = None if len(self.captions) > 1 else "none"
            self._show_tokens()
        finally:
            self.busy.value = ""

    def _show_tokens(self) -> None:
        """The chosen caption's tokens, their probabilities and alternatives, and the list of captions."""
        caption = self.caption = self.captions[self.which.value]
        self.choices = token_alternatives(self.captioner, self.features(), caption, self.alternatives)
        if len(self.captions) == 1:
            self.text.value = _caption_html(caption.text)
        else:
            self.text.value = _wrapping(
                "".join(
                    f"{number}. <b>{_token(c.text)}</b>{' <small>(its tokens below)</small>' if c is caption else ''}<br>"
                    for number, c in enumerate(self.captions, 1)
                )
            )
        # Each token with its probability, on a colour of it, in a line that wraps (a 25-token caption
        # takes a few lines); the legend says what the colours mean.
        chips = " ".join(
            f'<span title="token {i}: probability {probability_text(c.probability)}" '
            f'style="white-space: nowrap; background: {probability_colour(c.probability)}; padding: 0 2px; border-radius: 3px">'
            f"{_token(c.token)}&nbsp;<small>{probability_text(c.probability)}</small></span>"
            for i, c in enumerate(self.choices)
        )
        self.table.value = _wrapping(chips) + PROBABILITY_LEGEND
        self.token.max = max(0, len(self.choices) - 1)
        self.token.value = min(self.token.value, self.token.max)
        self._draw_chart()

    def _chose_caption(self) -> None:
        if not self._choosing and self.captions:
            self._show_tokens()

    def _draw_chart(self) -> None:
        from matplotlib.ticker import FuncFormatter, MaxNLocator

        from ..core.figures import new_figure

        if not self.choices:
            self.chart.value = b""
            return
        choice = self.choices[self.token.value]
        bars = list(choice.alternatives)
        if choice.token not in [name for name, _ in bars]:  # a sampled token outside the most probable
            bars.append((choice.token, choice.probability))
        names, values = zip(*bars, strict=True)
        ax = new_figure(figsize=(4.8, 0.6 + 0.4 * len(bars)), layout="constrained").subplots()
        ax.barh(range(len(names))[::-1], values, color=["C3" if name == choice.token else "C0" for name in names])
        ax.set_yticks(range(len(names))[::-1], [displayable(name) for name in names], fontsize=11)
        for row, value in zip(range(len(names))[::-1], values, strict=True):
            ax.text(value, row, f" {probability_text(value)}", va="center", fontsize=10)
        ax.set_xlim(0, max(values) * 1.3)
        # Few ticks, each written as the bars' values are: at small probabilities matplotlib's own
        # ticks (0.00000, 0.00001, ...) ran into each other.
        ax.xaxis.set_major_locator(MaxNLocator(nbins=3))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: _tick_text(value)))
        ax.set_xlabel("probability")
        ax.set_title(f"token {self.token.value}: {displayable(choice.token)} (chosen, red)", fontsize=11)
        _show(self.chart, ax.figure)


def time_left_text(done: int, total: int, elapsed: float) -> str:
    """How far a long computation is and how long it will take, at the pace so far:
    ``"12 of 384 steps, 0:41, about 21 min left"`` (before the first step: the time spent).

    Args:
        done: The units of work done.
        total: The units of work in all.
        elapsed: Seconds since the work started.
    """
    spent = f"{int(elapsed) // 60}:{int(elapsed) % 60:02d}"
    if done <= 0 or total <= 0:
        return f"{spent}, estimating the time left" if total > 0 else f"{spent}, no estimate for this method"
    left = elapsed * (total - done) / done
    if done >= total:
        estimate = "finishing"
    elif left < 60:
        estimate = f"about {max(1, round(left))} s left"
    elif left < 3600:
        estimate = f"about {round(left / 60)} min left"
    else:
        estimate = f"about {int(left // 3600)} h {round(left % 3600 / 60)} min left"
    return f"{done} of {total} steps, {spent}, {estimate}"


class _Stopped(Exception):
    """Raised in the worker by the progress hook once Stop is pressed: the explanation ends there."""


@dataclass(eq=False)
class _Job:
    """One explanation being computed: what it is, its progress, and its stop flag.

    ``loop`` is the kernel's event loop when the work runs in a worker thread (in a notebook), and
    None when it runs at once in the caller's thread (a script, a test)."""

    key: tuple
    loop: Any
    started: float
    stop: threading.Event = field(default_factory=threading.Event)
    done: int = 0
    total: int = 0
    shown: float = 0.0


# How often a worker's progress is sent to the page (each send is a message to the browser), and
# how often the time spent and left is refreshed while no progress arrives.
PROGRESS_SECONDS, TICK_SECONDS = 0.25, 1.0
# A stale picture (its work under way) is drawn this much faded towards white.
STALE_FADE = 0.65
_clock = time.monotonic


class AttentionExplorer(_Explorer):
    """Browse where each token of a caption looked, and why it was chosen.

    The method selector lists every registered explanation method
    ([`bliptk.attribution.registry`][bliptk.attribution.registry]), the slow ones marked with their
    cost: the caption's cross-attention (the page's maps, with the layer and head selectors), and
    the explanations of [`explain()`][bliptk.attribution.explanation.explain]: Grad-CAM at the
    chosen layer (its default, the middle one, for "all"), relevance, rollout, integrated gradients,
    occlusion and Shapley sampling. A method's own options (integrated gradients' steps) show while
    it is selected. Each explanation is computed once per layer and options, when first chosen;
    the selectors a method ignores are disabled.

    In a notebook an explanation is computed in a worker thread, so that the kernel stays free:
    the map on screen is faded and labelled "computing" meanwhile, and a slow method (one with a
    ``cost`` in the registry) shows a progress bar with the time left and a Stop button. Stop ends
    the work at its next unit (integrated gradients' steps, relevance's passes, occlusion's and
    Shapley sampling's perturbed images: each reports them) and goes back to the map shown before,
    saying what was stopped. Outside a kernel's event loop (a script, a test), the work runs at
    once in the caller's thread.

    Args:
        captioner: A [`Captioner`][bliptk.model.captioner.Captioner].
        image: The image.
        prompt: The prompt (None: "a photography of").
        **decoding_options: For the caption (greedy by default).

    Attributes:
        caption: The caption, with its cross-attention.
        overlay: The picture shown (a PIL image): the selected map over the image.
        explanation: The [`Explanation`][bliptk.attribution.explanation.Explanation] shown, or None for the caption's attention.
        stale: Whether the picture shown is an older map, faded, while a new one is computed.
        progress: The progress bar of a slow method (hidden while none runs).
        stop_button: Ends the slow method that runs.
        status: What became of the last computation that did not finish ("stopped", an error).
    """

    def __init__(self, captioner, image, prompt: str | None = None, **decoding_options):
        from ..attribution.registry import METHODS

        self.captioner = captioner
        self.picture = load_image(image)
        self.caption = captioner.caption(self.picture, prompt, return_attention=True, **decoding_options)
        layers, heads = self.caption.cross_attention.shape[1:3]
        self.method = w.Dropdown(options=[(_method_label(m), m.name) for m in METHODS.values()], value="attention", description="method")
        self.token = w.IntSlider(value=0, min=0, max=max(0, len(self.caption.tokens) - 1), description="token", continuous_update=False)
        self.layer = w.Dropdown(options=[("all", ALL_LAYERS)] + [(str(i), i) for i in range(layers)], value=layers - 1, description="layer")
        self.heads = w.Dropdown(
            options=[("mean", "mean"), ("max", "max")] + [(str(i), i) for i in range(heads)], value="mean", description="heads"
        )
        # Each method's own options (integrated gradients' steps), shown while it is selected.
        self.method_controls = {m.name: _method_option_controls(m.options) for m in METHODS.values()}
        self.busy = _busy_indicator()
        self.status = w.HTML()
        self.label = w.HTML()
        self.view = _picture()
        self.progress = w.IntProgress(value=0, min=0, max=1, bar_style="info", layout=w.Layout(flex="1 1 auto", width="auto"))
        self.progress_text = w.HTML()
        self.stop_button = w.Button(
            description="Stop", button_style="danger", tooltip="stop the slow method", layout=w.Layout(width="80px")
        )
        self.stop_button.on_click(lambda _: self.stop())
        self.progress.add_class("bliptk-progress")
        self.progress_box = w.VBox(
            [w.HBox([self.progress, self.stop_button], layout=w.Layout(align_items="center")), self.progress_text],
            layout=w.Layout(display="none"),
        )
        self.overlay: Image.Image | None = None
        self.explanation = None
        self.stale = False
        self._explanations: dict = {}
        self._job: _Job | None = None
        self._drawn: dict = {}  # the controls' values of the map on screen, to go back to after a stop
        self._restoring = False
        self._update = _Latest(self.update)
        self.token.observe(lambda change: self.update(), names="value")
        own = [control for controls in self.method_controls.values() for control in controls.values()]
        for control in (self.method, self.layer, self.heads, *own):
            control.observe(self._changed, names="value")
        caption = w.HTML(_caption_html(self.caption.text))
        column = [caption, self.method, *own, self.token, self.layer, self.heads, self.busy, self.status, self.label]
        self.widget = _two_columns(column, [self.progress_box, self.view])
        self._enable()
        self.update()

    def map_options(self) -> dict:
        """The [`attention_maps()`][bliptk.model.attention.attention_maps] options the controls say."""
        layers = self.caption.cross_attention.shape[1]
        layer = list(range(layers)) if self.layer.value == ALL_LAYERS else self.layer.value
        return {"layer": layer, "heads": self.heads.value}

    def method_options(self) -> dict:
        """The selected method's own options, as its controls say (keywords of ``explain``)."""
        return {name: control.value for name, control in self.method_controls[self.method.value].items()}

    def _enable(self) -> None:
        """Disable the selectors the method ignores (heads unless attention, the layer unless the
        method takes one) and show only the selected method's own options."""
        from ..attribution.registry import METHODS

        self.heads.disabled = self.method.value != "attention"
        self.layer.disabled = not METHODS[self.method.value].takes_layer
        for name, controls in self.method_controls.items():
            for control in controls.values():
                control.layout.display = None if name == self.method.value else "none"

    def _changed(self, change) -> None:
        if self._restoring:
            return
        self._enable()
        self.busy.value = _BUSY
        self._update()

    def _key(self) -> tuple | None:
        """What the controls ask to explain: (method, layer, options); None for the caption's attention."""
        from ..attribution.registry import METHODS

        method = self.method.value
        if method == "attention":
            return None
        layer = None if not METHODS[method].takes_layer or self.layer.value == ALL_LAYERS else self.layer.value
        return (method, layer, tuple(sorted(self.method_options().items())))

    def update(self) -> None:
        """Redraw the selected token's map; an explanation not yet computed is computed first, once
        (in a notebook, in a worker thread, the older map faded meanwhile)."""
        if not self.caption.tokens:
            self.busy.value = ""
            self.label.value = "the caption has no generated tokens"
            return
        key = self._key()
        if key is not None and key not in self._explanations:
            self._fade(key)
            if self._job is None:
                self._start(key)
            return
        self.explanation = None if key is None else self._explanations[key]
        self._draw()
        if self._job is None:
            self.busy.value = ""

    def _draw(self) -> None:
        index = self.token.value
        if self.explanation is None:
            token_map = attention_maps(self.caption, **self.map_options())[index].numpy()
            how = "cross-attention"
        else:
            token_map = self.explanation.maps[index]
            layer = "" if self.explanation.layer is None else f", layer {self.explanation.layer}"
            how = self.explanation.name + layer
        self.overlay = overlay_attention(self.picture, token_map)
        self.stale = False
        self.label.value = f"token {index}: <b>{_token(self.caption.tokens[index])}</b> <small>({how})</small>"
        _show(self.view, self.overlay)
        self._drawn = {control: control.value for control in self._restorable()}

    def _restorable(self) -> list:
        """The controls whose values make the map: the method, the layer, the method's own options."""
        return [self.method, self.layer, *self.method_controls[self.method.value].values()]

    def _fade(self, key: tuple) -> None:
        """Say that ``key``'s map is being computed, over the older map faded (not a map of it)."""
        from ..attribution.registry import METHODS

        title = METHODS[key[0]].title
        index = self.token.value
        self.busy.value = _BUSY
        waiting = "" if self._job is None or self._job.key == key else f", after {METHODS[self._job.key[0]].title}"
        self.label.value = f"token {index}: <b>{_token(self.caption.tokens[index])}</b> <small>(computing {title}&hellip;{waiting})</small>"
        if self.overlay is not None and not self.stale:
            self.stale = True
            _show(self.view, Image.blend(self.overlay.convert("RGB"), Image.new("RGB", self.overlay.size, "white"), STALE_FADE))

    def _start(self, key: tuple) -> None:
        """Compute ``key``'s explanation: in a worker thread in a notebook, at once elsewhere."""
        import asyncio

        from ..attribution.registry import METHODS

        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        job = self._job = _Job(key, loop, _clock())
        self.status.value = ""
        if METHODS[key[0]].cost:
            self.progress.value, self.progress.max = 0, 1
            self.progress_text.value = f"{html.escape(METHODS[key[0]].title)}: {time_left_text(0, 0, 0)}"
            self.stop_button.disabled = False
            self.progress_box.layout.display = None
        if loop is None:
            self._work(job)
            return
        threading.Thread(target=self._work, args=(job,), name="bliptk-explorer", daemon=True).start()
        loop.call_later(TICK_SECONDS, self._tick, job)

    def _work(self, job: _Job) -> None:
        """The explanation (in the worker thread, in a notebook); its outcome goes to ``_finish``."""
        from ..attribution.explanation import explain

        method, layer, options = job.key
        try:
            explained = explain(
                self.captioner,
                self.picture,
                self.caption,
                method=method,
                layer=layer,
                progress=lambda done, total: self._report(job, done, total),
                **dict(options),
            )
            outcome: tuple = ("done", explained)
        except _Stopped:
            outcome = ("stopped", None)
        except Exception as error:  # shown in the explorer, which stays usable
            outcome = ("failed", error)
        self._on_main(job, self._finish, job, *outcome)

    def _on_main(self, job: _Job, function, *arguments) -> None:
        """Run ``function`` in the kernel's thread (widgets are changed there only)."""
        if job.loop is None:
            function(*arguments)
        else:
            job.loop.call_soon_threadsafe(function, *arguments)

    def _report(self, job: _Job, done: int, total: int) -> None:
        """The progress hook (in the worker thread): ends the work once Stop is pressed, and sends
        the progress to the page (at most every ``PROGRESS_SECONDS`` from a worker)."""
        if job.stop.is_set():
            raise _Stopped
        job.done, job.total = done, total
        now = _clock()
        if job.loop is None or now - job.shown >= PROGRESS_SECONDS or done >= total:
            job.shown = now
            self._on_main(job, self._show_progress, job)

    def _show_progress(self, job: _Job) -> None:
        from ..attribution.registry import METHODS

        if job is not self._job:
            return
        title = html.escape(METHODS[job.key[0]].title)
        self.progress_text.value = f"{title}: {time_left_text(job.done, job.total, _clock() - job.started)}"
        self.progress.max = max(1, job.total)
        self.progress.value = min(job.done, self.progress.max)

    def _tick(self, job: _Job) -> None:
        """The time spent and left, refreshed while the worker runs."""
        if job is self._job:
            self._show_progress(job)
            job.loop.call_later(TICK_SECONDS, self._tick, job)

    def stop(self) -> None:
        """End the explanation being computed: the worker stops at its next step, and the explorer
        goes back at once to the map shown before, saying what was stopped."""
        job = self._job
        if job is None:
            return
        job.stop.set()
        self.stop_button.disabled = True
        if job.loop is not None:  # the worker's last step may run on; its result is dropped
            self._finish(job, "stopped", None)

    def _finish(self, job: _Job, outcome: str, result) -> None:
        """The end of a job (in the kernel's thread): its map drawn, or what stopped it said and the
        controls set back to the map on screen."""
        from ..attribution.registry import METHODS

        if job is not self._job:  # a stopped job's worker ending after its stop
            return
        self._job = None
        self.progress_box.layout.display = "none"
        if outcome == "done":
            self._explanations[job.key] = result
            self.update()
            return
        title = html.escape(METHODS[job.key[0]].title)
        if outcome == "stopped":
            steps = f" after {job.done} of {job.total} steps" if job.total else ""
            self.status.value = _wrapping(f'<span class="bliptk-stopped">{title} stopped{steps}</span>')
        else:
            self.status.value = _wrapping(
                f'<span class="bliptk-failed" style="color: #b91c1c">{title} failed: {html.escape(str(result))}</span>'
            )
        if self._key() == job.key:
            self._restore()
        self.update()

    def _restore(self) -> None:
        """Set the controls back to the map on screen (without a change that would start work)."""
        self._restoring = True
        try:
            for control, value in self._drawn.items():
                control.value = value
        finally:
            self._restoring = False
        self._enable()


def _beams_table(beams) -> str:
    """Beam search's beams after a step, best first: the running ones, then the finished
    captions (marked); empty for greedy decoding and sampling."""
    if not beams:
        return ""
    rows = "".join(
        f"<tr><td>{'&#10003; ' if beam.finished else ''}{_token(beam.text)}</td><td>{beam.score:.3f}</td></tr>" for beam in beams
    )
    return f"<table><tr><th>beam (&#10003; finished)</th><th>score</th></tr>{rows}</table>"


class StepThroughDecoder(_Explorer):
    """Advance decoding one token per button press (the page's ``NestWhile`` loop, visible). With
    ``num_beams``, each press extends every beam, and the beams and finished captions are listed.

    Args:
        captioner: A [`Captioner`][bliptk.model.captioner.Captioner].
        image: The image.
        options: Decoding options (greedy by default).
        top: How many of the most probable next tokens to list.

    Attributes:
        stepper: The [`Stepper`][bliptk.model.stepper.Stepper] it drives.
        status: Why the stepper stopped, once it has (empty before).
    """

    def __init__(self, captioner, image, options: DecodingOptions | None = None, top: int = 10):
        self.stepper = Stepper(captioner, image, options, top=top)
        self.button = w.Button(description="next token")
        self.reset_button = w.Button(description="restart")
        self.status = w.HTML()
        self.state = w.HTML()
        self.caption = w.HTML(_caption_html(self.stepper.text))
        self.button.on_click(lambda _: self.next())
        self.reset_button.on_click(lambda _: self.reset())
        self._arguments = (captioner, image, options, top)
        self.widget = _two_columns([w.HBox([self.button, self.reset_button]), self.status, self.caption], [self.state])

    def next(self):
        """Advance one token and redraw; returns the [`DecodeStep`][bliptk.model.stepper.DecodeStep] (None when done)."""
        step = self.stepper.step()
        self.caption.value = _caption_html(self.stepper.text)
        if step is None:
            self._stopped()
            return None
        rows = "".join(
            f"<tr><td>{'&rarr; ' if token == step.chosen_token else ''}{_token(token)}</td><td>{probability_text(p)}</td></tr>"
            for token, p in step.top
        )
        self.state.value = (
            _wrapping(
                f"step {step.index}: input {_token(' '.join(step.input_tokens))} &middot; KV cache {step.cache_length} positions"
                f" &middot; chosen <b>{_token(step.chosen_token)}</b> ({probability_text(step.chosen_probability)})"
            )
            + f"<table><tr><th>next token</th><th>probability</th></tr>{rows}</table>"
            + _beams_table(step.beams)
        )
        if self.stepper.done:
            self._stopped()
        return step

    def _stopped(self) -> None:
        """Grey the button out, and say why."""
        self.button.disabled = True
        self.status.value = f"done: {html.escape(self.stepper.stop_reason)}"

    def reset(self) -> None:
        """Start the caption again."""
        captioner, _, options, top = self._arguments
        self.stepper = Stepper(captioner, self.stepper.features, options, top=top)  # the image is encoded once
        self.button.disabled = False
        self.status.value = ""
        self.caption.value = _caption_html(self.stepper.text)
        self.state.value = ""
