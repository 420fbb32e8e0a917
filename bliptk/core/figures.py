"""Figures for bliptk's plot functions."""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Any

__all__ = ["PAGE_PIXELS", "compact_png", "page_png", "displayable", "grid_axes", "new_figure", "note_escapes"]


def new_figure(**figure_options):
    """A new matplotlib figure that Jupyter displays once, when returned from a cell.

    The figure is made through pyplot, so that Jupyter's inline backend (and its figure
    formatter) is set up, then closed in pyplot at once: it is not kept in pyplot's list of
    open figures, not drawn a second time at the end of the cell, and never shown by
    ``plt.show()``. Saving and drawing on it work as usual.
    """
    import matplotlib.pyplot as plt

    figure = plt.figure(**figure_options)
    plt.close(figure)
    return figure


PAGE_PIXELS = 1280
"""The longest side, in pixels, of a figure [`compact_png()`][bliptk.core.figures.compact_png] writes: a page's width."""


def compact_png(figure, dpi: float = 100, metadata: dict[str, str] | None = None, **savefig_options) -> bytes:
    """A figure as a PNG that suits a page ([`page_png()`][bliptk.core.figures.page_png]), drawn at
    a resolution that keeps its longest side within [`PAGE_PIXELS`][bliptk.core.figures.PAGE_PIXELS].

    Args:
        figure: A matplotlib figure.
        dpi: Its resolution, lowered for a figure too large for a page.
        metadata: PNG text chunks (``Software``, ``Description``, ...).
        **savefig_options: For matplotlib's ``savefig`` (``bbox_inches="tight"``, ...).

    Returns:
        The PNG file's bytes.
    """
    import io

    width, height = figure.get_size_inches()
    drawn = io.BytesIO()
    figure.savefig(drawn, dpi=min(dpi, PAGE_PIXELS / max(width, height, 1e-6)), format="png", **savefig_options)
    return page_png(drawn.getvalue(), metadata)


def page_png(png: bytes, metadata: dict[str, str] | None = None) -> bytes:
    """A PNG made to suit a page: at most [`PAGE_PIXELS`][bliptk.core.figures.PAGE_PIXELS] on its
    longest side, in 128 colours (an adaptive palette: the photos under maps keep their look, at a
    fifth of the bytes of full colour).

    Args:
        png: A PNG file's bytes.
        metadata: PNG text chunks to write (``Software``, ``Description``, ...).

    Returns:
        The new PNG's bytes.
    """
    import io

    from PIL import Image, PngImagePlugin

    picture = Image.open(io.BytesIO(png)).convert("RGB")
    picture.thumbnail((PAGE_PIXELS, PAGE_PIXELS))
    chunks = PngImagePlugin.PngInfo()
    for key, value in (metadata or {}).items():
        chunks.add_text(key, value)
    written = io.BytesIO()
    picture.quantize(128, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(
        written, format="png", optimize=True, pnginfo=chunks
    )
    return written.getvalue()


def grid_axes(count: int, columns: int, panel_inches: float, fig=None, aspect: float = 1.0):
    """A grid of ``count`` panels, ``columns`` to a row, in a new figure or in ``fig`` (cleared).

    Args:
        count: Number of panels.
        columns: Panels per row (fewer when there are fewer panels).
        panel_inches: Width of a panel.
        fig: A figure to draw into; None makes a new one.
        aspect: Height / width of a panel's picture, to size the rows.

    Returns:
        ``(figure, axes)``: the first ``count`` axes; spare axes of the last row are hidden.
    """
    columns = max(1, min(columns, count))
    rows = max(1, math.ceil(count / columns))
    if fig is None:
        fig = new_figure(figsize=(columns * panel_inches, rows * (panel_inches * aspect + 0.3)), layout="constrained")
    else:
        fig.clear()
    axes = fig.subplots(rows, columns, squeeze=False).ravel()
    for ax in axes[count:]:
        ax.set_axis_off()
    return fig, axes[:count]


def displayable(text: str) -> str:
    """``text`` with each character that matplotlib's fonts cannot draw written as an escape
    (``\\u0925``), so that a token from any script shows as something, with no empty box and no
    "missing glyph" warning in the notebook."""
    fonts = _fonts()
    return "".join(c if c.isspace() or any(font.get_char_index(ord(c)) for font in fonts) else f"\\u{ord(c):04x}" for c in text)


ESCAPE_NOTE = (
    "\\uXXXX: a character no font on this machine draws, written as its code point (a font of its script, e.g. Noto Sans CJK, draws it)"
)
"""What a figure says under itself when [`displayable()`][bliptk.core.figures.displayable] wrote a character as an escape."""


def note_escapes(figure, texts) -> bool:
    """Say under a figure what ``\\uXXXX`` means, when any of ``texts`` (its tokens, its title)
    has a character that [`displayable()`][bliptk.core.figures.displayable] writes as one.

    Returns:
        Whether the note was added.
    """
    if all(displayable(str(text)) == str(text) for text in texts):
        return False
    figure.supxlabel(ESCAPE_NOTE, fontsize=7, color="0.35")
    return True


@lru_cache(maxsize=1)
def _fonts():
    """The fonts matplotlib draws text with (its ``font.family``, fallbacks included)."""
    from matplotlib import font_manager, ft2font, rcParams

    generic = ("serif", "sans-serif", "monospace", "cursive", "fantasy")
    settings: Any = rcParams  # read by computed keys, which matplotlib's typed keys cannot name
    names = [name for family in settings["font.family"] for name in (settings[f"font.{family}"] if family in generic else [family])]
    paths = []
    for name in names:
        try:
            path = font_manager.findfont(font_manager.FontProperties(family=name), fallback_to_default=False)
        except ValueError:  # a font of the list that this machine lacks
            continue
        if path not in paths:
            paths.append(path)
    return [ft2font.FT2Font(path) for path in paths]
