"""Cross-attention maps: where the decoder looked, per generated token.

``captioner.caption(image, return_attention=True)`` fills ``Caption.cross_attention``, the
weights ``(T, L, H, N)`` that each of the T generated tokens' predicting position put on the N
image features (N = 1 + grid**2, 577 at 384 px) in each of the L decoder layers and H heads.
This module turns them into one ``(T, grid, grid)`` map per token, following the page by
default, and draws them.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

from ..core.decoding import Caption
from ..core.errors import InvalidOptionError, option_error
from ..core.figures import displayable, grid_axes, new_figure, note_escapes
from ..core.preprocess import load_image

__all__ = [
    "attention_entropy",
    "attention_maps",
    "overlay_attention",
    "plot_attention_map",
    "plot_attention_maps",
    "plot_attention_overlays",
]


def attention_maps(
    caption: Caption,
    layer: int | Sequence[int] = -1,
    heads: str | int = "mean",
    subtract_min: bool = True,
) -> torch.Tensor:
    """One map over the image patches per generated token.

    The page's recipe is the default: the last layer's weights, without the first image token
    (the ViT's class token), minus each patch's minimum over the generated tokens (per head),
    averaged over the heads, reshaped to the patch grid.

    Args:
        caption: A caption generated with ``return_attention=True``.
        layer: A decoder layer index (negative counts from the end), or a list of them, whose
            weights are averaged.
        heads: ``"mean"`` or ``"max"`` over the heads, or one head's index.
        subtract_min: Subtract each patch's minimum over the tokens, as the page does, which
            removes what every token looks at alike.

    Returns:
        ``(T, grid, grid)`` float tensor, ``(T, 24, 24)`` at 384 px with 16 px patches.

    Raises:
        InvalidOptionError: The caption carries no attention, or an option is out of range.
    """
    return cross_attention_maps(_cross_attention(caption), layer, heads, subtract_min)


def cross_attention_maps(
    weights: torch.Tensor, layer: int | Sequence[int] = -1, heads: str | int = "mean", subtract_min: bool = True
) -> torch.Tensor:
    """[`attention_maps()`][bliptk.model.attention.attention_maps] of cross-attention weights ``(T, L, H, N)``, wherever they come from
    (a caption's, or an explanation's teacher-forced pass)."""
    tokens, layers, num_heads, features = weights.shape
    grid = math.isqrt(features - 1)
    if grid * grid != features - 1:
        raise InvalidOptionError(f"{features} image features are not 1 + a square grid of patches")
    layer_list = [layer] if isinstance(layer, int) else list(layer)
    if not layer_list or any(not -layers <= i < layers for i in layer_list):
        raise option_error(f"layer must be in [{-layers}, {layers - 1}] (the decoder has {layers} layers), got {layer!r}", "layer")
    patches = weights[:, layer_list, :, 1:].float().mean(dim=1)  # (T, H, grid**2)
    if subtract_min and tokens > 0:
        patches = patches - patches.min(dim=0, keepdim=True).values
    if heads == "mean":
        patches = patches.mean(dim=1)
    elif heads == "max":
        patches = patches.max(dim=1).values
    elif isinstance(heads, int) and not isinstance(heads, bool) and -num_heads <= heads < num_heads:
        patches = patches[:, heads]
    else:
        raise option_error(f'heads must be "mean", "max" or a head index in [{-num_heads}, {num_heads - 1}], got {heads!r}', "heads")
    return patches.reshape(tokens, grid, grid)


def attention_entropy(caption: Caption) -> torch.Tensor:
    """How spread out each token's attention over the image patches is, per layer and head.

    The entropy (in nats) of the weights on the ``grid**2`` patches, the first image feature (the
    ViT's class token) dropped and the rest renormalised to sum to 1: 0 when a head looks at one
    patch, ``log(grid**2)`` (6.36 for 24 x 24) when it looks at all alike. The mean over tokens
    and heads, ``attention_entropy(caption).mean(dim=(0, 2))``, tells which layer looks most
    sharply.

    Args:
        caption: A caption generated with ``return_attention=True``.

    Returns:
        ``(T, L, H)`` float tensor.

    Raises:
        InvalidOptionError: The caption carries no attention.
    """
    patches = _cross_attention(caption)[..., 1:].float()
    patches = patches / patches.sum(dim=-1, keepdim=True)
    return -(patches * patches.clamp_min(1e-12).log()).sum(dim=-1)


def _cross_attention(caption: Caption) -> torch.Tensor:
    """The caption's cross-attention weights ``(T, L, H, N)``, or the error that it has none."""
    if caption.cross_attention is None:
        raise InvalidOptionError("this caption carries no cross-attention; caption it with return_attention=True")
    return caption.cross_attention


def _rescaled(attention_map) -> np.ndarray:
    """Rescale a map to [0, 1] (the page's ``ImageAdjust``)."""
    values = np.asarray(attention_map, dtype=np.float64)
    low, high = values.min(), values.max()
    return (values - low) / (high - low) if high > low else np.zeros_like(values)


def overlay_attention(image, attention_map, alpha: float = 0.6) -> Image.Image:
    """Draw one attention map over an image: untouched where ignored, red where looked at.

    The red's opacity follows the map (``alpha`` at its highest value, none at its lowest), so the
    overlay reads on dark photos as on light ones; the page's recipe (a white-to-red map blended
    at 0.4 everywhere) veils a dark photo in white where the map is low.

    Args:
        image: The captioned image (path, PIL image, array or tensor).
        attention_map: ``(grid, grid)`` map, for example one row of [`attention_maps()`][bliptk.model.attention.attention_maps].
        alpha: Opacity of the red where the map is highest.

    Returns:
        An RGB image of the input's size.
    """
    picture = load_image(image)
    heat = Image.fromarray((_rescaled(attention_map) * 255).round().astype(np.uint8)).resize(picture.size, Image.Resampling.BICUBIC)
    opacity = alpha * np.asarray(heat, dtype=np.float64)[..., None] / 255.0
    red = np.array([1.0, 0.0, 0.0])
    blended = (1 - opacity) * np.asarray(picture, dtype=np.float64) / 255.0 + opacity * red
    return Image.fromarray((blended * 255).round().clip(0, 255).astype(np.uint8))


def plot_attention_map(attention_map, title: str | None = None, image=None, alpha: float = 0.6, ax=None):
    """Draw one ``(grid, grid)`` map: raw (red where high), or over ``image`` when given.

    Args:
        attention_map: The map, for example one row of [`attention_maps()`][bliptk.model.attention.attention_maps].
        title: Panel title, usually the token.
        image: The captioned image, to draw the map over it (see [`overlay_attention()`][bliptk.model.attention.overlay_attention]).
        alpha: Opacity of the red over the image where the map is highest.
        ax: A matplotlib axes to draw on; None makes a new figure.

    Returns:
        The figure the axes belongs to.
    """
    if ax is None:
        ax = new_figure(figsize=(3, 3), layout="constrained").subplots()
    values = np.asarray(attention_map, dtype=np.float64)
    if image is None:
        ax.imshow(values, cmap="Reds", interpolation="nearest")
    else:
        ax.imshow(overlay_attention(image, values, alpha))
    if title is not None:
        ax.set_title(displayable(title))
    ax.set_axis_off()
    return ax.figure


def _token_maps(source, map_options: dict) -> tuple[np.ndarray, list[str], str]:
    """The maps ``(T, grid, grid)``, tokens and name of what a figure draws: a caption's
    cross-attention (made with ``map_options``), or maps made already: anything with ``maps``,
    ``tokens`` and ``name``, as an [`Explanation`][bliptk.attribution.explanation.Explanation] (which this module
    does not import: explanations build on attention, not the other way)."""
    if hasattr(source, "maps"):
        if map_options:
            raise option_error(
                f"{', '.join(sorted(map_options))} apply to a caption's attention; an Explanation's maps are made already "
                "(choose the layer with explain(..., layer=))",
                next(iter(sorted(map_options))),
            )
        return source.maps, source.tokens, source.name
    return attention_maps(source, **map_options).numpy(), source.tokens, "attention"


def plot_attention_maps(caption, columns: int = 5, fig=None, **map_options):
    """The raw maps in a grid, one panel per generated token (the page's MatrixPlot grid).

    Args:
        caption: A caption generated with ``return_attention=True``, or an
            [`Explanation`][bliptk.attribution.explanation.Explanation] (its maps are drawn).
        columns: Panels per row.
        fig: A matplotlib figure to draw into (cleared first); None makes a new one.
        **map_options: ``layer``, ``heads``, ``subtract_min`` for [`attention_maps()`][bliptk.model.attention.attention_maps]
            (a caption's only).

    Returns:
        The figure, one panel per token, titled with the token.
    """
    maps, tokens, _ = _token_maps(caption, map_options)
    fig, axes = grid_axes(len(tokens), columns, 2.0, fig)
    for ax, token_map, token in zip(axes, maps, tokens, strict=True):
        plot_attention_map(token_map, token, ax=ax)
    note_escapes(fig, tokens)
    return fig


# The most one side of an image may exceed the other for the overlays to draw it in its own shape.
_MOST_STRETCHED = 4


def plot_attention_overlays(image, caption, columns: int = 5, alpha: float = 0.6, fig=None, **map_options):
    """Each token's map upsampled and laid over the image, in a grid (the page's
    ``visualizeAttention`` grid), with the colour scale.

    Args:
        image: The captioned image.
        caption: Its caption, generated with ``return_attention=True``, or an
            [`Explanation`][bliptk.attribution.explanation.Explanation] of it (its maps are drawn).
        columns: Panels per row.
        alpha: Opacity of the red where a map is highest.
        fig: A matplotlib figure to draw into (cleared first); None makes a new one.
        **map_options: ``layer``, ``heads``, ``subtract_min`` for [`attention_maps()`][bliptk.model.attention.attention_maps]
            (a caption's only).

    Returns:
        The figure, one panel per token, titled with the token. An image more than four times as
        wide as it is tall (or as tall as wide) is drawn as the model sees it, squared.
    """
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import LinearSegmentedColormap

    picture = load_image(image)
    maps, tokens, name = _token_maps(caption, map_options)
    width, height = picture.size
    if not 1 / _MOST_STRETCHED <= height / width <= _MOST_STRETCHED:
        # A panel that shape would be a sliver: draw the image as the model sees it, squared (its maps' grid is square).
        side = max(16, min(max(width, height), 384))
        picture = picture.resize((side, side), Image.Resampling.BICUBIC)
        width = height = side
    fig, axes = grid_axes(len(tokens), columns, 2.8, fig, aspect=height / width)
    for ax, token_map, token in zip(axes, maps, tokens, strict=True):
        plot_attention_map(token_map, token, image=picture, alpha=alpha, ax=ax)
        ax.title.set_fontsize(12)
    if len(axes):
        scale = ScalarMappable(cmap=LinearSegmentedColormap.from_list("attention", ["white", "red"]))
        one_row = len(axes) <= columns
        shrink = 0.9 if one_row else 0.5
        bar = fig.colorbar(scale, ax=list(axes), shrink=shrink, aspect=20 if one_row else 30, pad=0.02)
        # The label runs along the bar: wrapped to the bar's length (about 15 characters of 8 pt an
        # inch), so that a row of wide pictures, which is short, does not have a label taller than itself.
        length = shrink * fig.get_size_inches()[1]
        lines = textwrap.wrap(f"{name}: relative importance, each word's map scaled to its own range", max(12, int(15 * length)))
        bar.set_label("\n".join(lines), fontsize=8)
        bar.set_ticks([0, 1], labels=["least", "most"])
    note_escapes(fig, tokens)
    return fig
