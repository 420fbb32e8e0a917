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
from dataclasses import dataclass, fields
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
    written as its escape (``\\u0925``)."""
    return html.escape(displayable(text))


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


_BUSY = '<span class="bliptk-busy" style="color: #b45309">&#9203; working&hellip;</span>'


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
        caption: The caption shown (the first, when several are asked for).
        captions: Every caption of the last run.
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
        self.widget = _two_columns(
            [self.image, self.thumbnail, self.upload, *self.controls.values()], [self.busy, self.text, self.table, self.token, self.chart]
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
            caption = self.caption = self.captions[0]
            self.choices = token_alternatives(self.captioner, features, caption, self.alternatives)
        finally:
            self.busy.value = ""
        if len(self.captions) == 1:
            self.text.value = _caption_html(caption.text)
        else:
            self.text.value = _wrapping("".join(f"{number}. <b>{_token(c.text)}</b><br>" for number, c in enumerate(self.captions, 1)))
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

    def _draw_chart(self) -> None:
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
        ax.set_xlabel("probability")
        ax.set_title(f"token {self.token.value}: {displayable(choice.token)} (chosen, red)", fontsize=11)
        _show(self.chart, ax.figure)


class AttentionExplorer(_Explorer):
    """Browse where each token of a caption looked, and why it was chosen.

    The method selector lists every registered explanation method
    ([`bliptk.attribution.registry`][bliptk.attribution.registry]), the slow ones marked: the
    caption's cross-attention (the page's maps, with the layer and head selectors), and the
    explanations of [`explain()`][bliptk.attribution.explanation.explain]: Grad-CAM at the chosen
    layer (its default, the middle one, for "all"), relevance, rollout and integrated gradients
    over every layer. A method's own options (integrated gradients' steps) show while it is
    selected. Each explanation is computed once per layer and options, when first chosen, while a
    busy indicator shows; the selectors a method ignores are disabled.

    Args:
        captioner: A [`Captioner`][bliptk.model.captioner.Captioner].
        image: The image.
        prompt: The prompt (None: "a photography of").
        **decoding_options: For the caption (greedy by default).

    Attributes:
        caption: The caption, with its cross-attention.
        overlay: The picture shown (a PIL image): the selected map over the image.
        explanation: The [`Explanation`][bliptk.attribution.explanation.Explanation] shown, or None for the caption's attention.
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
        self.label = w.HTML()
        self.view = _picture()
        self.overlay: Image.Image | None = None
        self.explanation = None
        self._explanations: dict = {}
        self._update = _Latest(self.update)
        self.token.observe(lambda change: self.update(), names="value")
        own = [control for controls in self.method_controls.values() for control in controls.values()]
        for control in (self.method, self.layer, self.heads, *own):
            control.observe(self._changed, names="value")
        caption = w.HTML(_caption_html(self.caption.text))
        column = [caption, self.method, *own, self.token, self.layer, self.heads, self.busy, self.label]
        self.widget = _two_columns(column, [self.view])
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
        self._enable()
        self.busy.value = _BUSY
        self._update()

    def _explained(self):
        """The selected method's explanation of the caption, computed once per layer and options;
        None for attention (drawn from the caption's own cross-attention, with the head selector)."""
        from ..attribution.explanation import explain
        from ..attribution.registry import METHODS

        method = self.method.value
        if method == "attention":
            return None
        layer = None if not METHODS[method].takes_layer or self.layer.value == ALL_LAYERS else self.layer.value
        options = self.method_options()
        key = (method, layer, tuple(sorted(options.items())))
        if key not in self._explanations:
            self._explanations[key] = explain(self.captioner, self.picture, self.caption, method=method, layer=layer, **options)
        return self._explanations[key]

    def update(self) -> None:
        """Redraw the selected token's map (computing the selected explanation first, once)."""

        if not self.caption.tokens:
            self.busy.value = ""
            self.label.value = "the caption has no generated tokens"
            return
        self.busy.value = _BUSY
        try:
            self.explanation = self._explained()
        finally:
            self.busy.value = ""
        index = self.token.value
        if self.explanation is None:
            token_map = attention_maps(self.caption, **self.map_options())[index].numpy()
            how = "cross-attention"
        else:
            token_map = self.explanation.maps[index]
            layer = "" if self.explanation.layer is None else f", layer {self.explanation.layer}"
            how = self.explanation.name + layer
        self.overlay = overlay_attention(self.picture, token_map)
        self.label.value = f"token {index}: <b>{_token(self.caption.tokens[index])}</b> <small>({how})</small>"
        _show(self.view, self.overlay)


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
