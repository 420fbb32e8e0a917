"""Word-level summaries over many explanations: where the model looks when it says a word.

[`word_maps()`][bliptk.attribution.words.word_maps] finds every occurrence of a word in the explained
captions (a word of several WordPiece tokens is their maps' mean), scales each occurrence's map to
[0, 1] over its own range (as the figures of its image draw it: images whose maps are larger in
the method's units do not outweigh the others), and averages them (explanations made in one way:
one method, layer, options and contrast, by one model);
[`plot_word_gallery()`][bliptk.attribution.words.plot_word_gallery] draws the mean map beside the
images where the word's map is most concentrated. Concentration is the share of a map's mass (its
scaled values) in its top 10% of patches: near 0.1 when the map is spread over the image, 1 when
only a tenth of it made the word (a constant map, where nothing stands out, scales to 0 and has
none).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from ..core.errors import InvalidOptionError
from ..core.figures import displayable, grid_axes

__all__ = ["WordMap", "WordOccurrence", "caption_words", "concentration", "plot_word_gallery", "word_maps"]

_TOP_SHARE = 0.1


@dataclass(frozen=True)
class WordOccurrence:
    """One occurrence of the word in an explained caption.

    Attributes:
        explanation: The index of its explanation in the list given.
        positions: Its WordPiece tokens' indices in the caption.
        image: The explained image's path (None for one explained in memory).
        text: The caption.
        map: ``(grid, grid)`` its map, scaled to [0, 1].
        concentration: Its map's share of mass in its top 10% of patches.
    """

    explanation: int
    positions: tuple[int, ...]
    image: str | None
    text: str
    map: np.ndarray
    concentration: float


@dataclass(frozen=True)
class WordMap:
    """What [`word_maps()`][bliptk.attribution.words.word_maps] returns.

    Attributes:
        word: The word.
        mean: ``(grid, grid)`` the mean of its occurrences' scaled maps.
        occurrences: Every occurrence, most concentrated first.
        method: The method of the explanations.
        explanations: How many explanations were searched.
    """

    word: str
    mean: np.ndarray
    occurrences: list[WordOccurrence]
    method: str
    explanations: int

    def __str__(self) -> str:
        lines = [
            f"{self.word!r}: {len(self.occurrences)} occurrences in {self.explanations} explained captions ({self.method}); most concentrated:"
        ]
        lines += [f"  {o.concentration:.3f}  {o.image or f'explanation {o.explanation}'}: {o.text}" for o in self.occurrences[:8]]
        return "\n".join(lines)


def caption_words(tokens: list[str]) -> list[tuple[str, tuple[int, ...]]]:
    """The words of WordPiece tokens, each with its tokens' indices: ``["skate", "##board"]`` is
    ``[("skateboard", (0, 1))]``."""
    words: list[tuple[str, list[int]]] = []
    for index, token in enumerate(tokens):
        if token.startswith("##") and words:
            words[-1] = (words[-1][0] + token[2:], [*words[-1][1], index])
        else:
            words.append((token, [index]))
    return [(word, tuple(indices)) for word, indices in words]


def _scaled(values: np.ndarray) -> np.ndarray:
    low, high = float(values.min()), float(values.max())
    return (values - low) / (high - low) if high > low else np.zeros_like(values, dtype=np.float64)


def concentration(scaled_map: np.ndarray) -> float:
    """The share of a map's mass (values in [0, 1]) in its top 10% of patches (at least one)."""
    values = np.sort(np.asarray(scaled_map, dtype=np.float64).ravel())[::-1]
    total = values.sum()
    top = max(1, round(_TOP_SHARE * values.size))
    return float(values[:top].sum() / total) if total > 0 else 0.0


def word_maps(explanations, word: str) -> WordMap:
    """Average the maps of every occurrence of ``word`` over many explanations.

    Args:
        explanations: A list of [`Explanation`][bliptk.attribution.explanation.Explanation]s, or the
            folder of an explanation job ([`explain_files()`][bliptk.attribution.folder.explain_files]).
        word: The word (case-insensitive), as the captions spell it.

    Returns:
        A [`WordMap`][bliptk.attribution.words.WordMap]: the mean map and each occurrence, most
        concentrated first.

    Raises:
        InvalidOptionError: No caption says the word (the message names the words said most), or
            the explanations were made in several ways (methods, layers, options, contrasts, models).
    """
    if isinstance(explanations, str | os.PathLike):
        from .folder import load_explanations

        explanations = load_explanations(explanations)
    if not isinstance(word, str) or not word.strip():
        raise InvalidOptionError(f"word must be a word of the captions, got {word!r}")
    wanted = word.strip().lower()
    found = []
    for index, explanation in enumerate(explanations):
        for said, positions in caption_words(explanation.tokens):
            if said.lower() == wanted:
                scaled = _scaled(np.asarray(explanation.maps, dtype=np.float64)[list(positions)].mean(axis=0))
                found.append(WordOccurrence(index, positions, explanation.image, explanation.text, scaled, concentration(scaled)))
    if not found:
        counts: dict[str, int] = {}
        for explanation in explanations:
            for said, _ in caption_words(explanation.tokens):
                counts[said.lower()] = counts.get(said.lower(), 0) + 1
        common = ", ".join(w for w, _ in sorted(counts.items(), key=lambda item: -item[1])[:10]) or "none"
        raise InvalidOptionError(f"no caption of the {len(explanations)} explanations says {word!r}; the words said most: {common}")
    made = {_made(explanations[o.explanation]) for o in found}
    if len(made) > 1:
        differ = sorted({name for a in made for b in made for name in dict(a) if dict(a).get(name) != dict(b).get(name)})
        raise InvalidOptionError(
            f"the explanations were made in {len(made)} ways (their {', '.join(differ)} differ): summarise one job's at a time "
            "(load_explanations(folder, options=...))"
        )
    methods = {explanations[o.explanation].method for o in found}
    ordered = sorted(found, key=lambda o: -o.concentration)
    return WordMap(word, np.mean([o.map for o in found], axis=0), ordered, methods.pop(), len(explanations))


def _made(explanation) -> tuple:
    """How an explanation was made (its provenance but what is the image's own), comparable."""
    import json

    own = ("pixels", "num_frames")
    return tuple(sorted((name, json.dumps(value, sort_keys=True)) for name, value in explanation.provenance.items() if name not in own))


def plot_word_gallery(word_map: WordMap, top: int = 7, columns: int = 4, alpha: float = 0.5, fig=None):
    """The word's mean map, then the images where its map is most concentrated, each with its map
    over it.

    Args:
        word_map: From [`word_maps()`][bliptk.attribution.words.word_maps].
        top: How many images.
        columns: Panels per row.
        alpha: Opacity of the maps over the images.
        fig: A figure to draw into; None makes a new one.

    Returns:
        The figure.
    """
    from ..model.attention import plot_attention_map

    shown = word_map.occurrences[:top]
    fig, axes = grid_axes(len(shown) + 1, columns, 2.6, fig)
    plot_attention_map(word_map.mean, title=f"{word_map.word!r}: mean of {len(word_map.occurrences)}", ax=axes[0])
    axes[0].title.set_fontsize(8)
    for ax, occurrence in zip(axes[1:], shown, strict=True):
        name = os.path.basename(occurrence.image) if occurrence.image else f"explanation {occurrence.explanation}"
        plot_attention_map(occurrence.map, image=occurrence.image, alpha=alpha, ax=ax)
        ax.set_title(displayable(f"{name}\nconcentration {occurrence.concentration:.2f}"), fontsize=8)
    fig.suptitle(
        displayable(f"where the model looks when it says {word_map.word!r} ({word_map.method}; each map scaled to its own range)"),
        fontsize=10,
    )
    return fig
