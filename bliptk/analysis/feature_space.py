"""The image encoder's feature space: projections to 2-D, thumbnail maps, clusters, neighbours.

Embeddings are L2-normalised before projecting, clustering and comparing, so that distances
follow cosine similarity, the usual measure between image embeddings.
"""

from __future__ import annotations

import functools
import logging
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..core.errors import InvalidArgumentError, InvalidOptionError

logger = logging.getLogger(__name__)

CLUSTER_PALETTE = ("C4", "C5", "C6", "C8", "C9", "C3", "C7")
"""Colours for clusters: matplotlib's default cycle without the three that classes take first
(blue, orange, green), so that a cluster is never drawn in a class's colour of a figure before."""

__all__ = ["CLUSTER_PALETTE", "ClusterResult", "Neighbour", "cluster", "near_duplicates", "nearest", "plot_feature_space", "project"]

PROJECTIONS = ("umap", "tsne", "pca")
CLUSTERINGS = ("kmeans", "agglomerative")
_MIN_POINTS = {"umap": 4, "tsne": 2, "pca": 2}


def _as_matrix(embeddings) -> np.ndarray:
    matrix = np.asarray(embeddings, dtype=np.float64)
    if matrix.ndim != 2:
        raise InvalidOptionError(f"embeddings must be a 2-D array (N, D), got shape {matrix.shape}")
    return matrix


def _unit_rows(embeddings) -> np.ndarray:
    """Each row scaled to unit L2 length (a zero row stays zero)."""
    matrix = _as_matrix(embeddings)
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    return matrix / np.where(norms > 0, norms, 1.0)


def project(embeddings, method: str = "umap", random_state: int = 0, n_components: int = 2, **options) -> np.ndarray:
    """Project embeddings to a few dimensions for plotting.

    Args:
        embeddings: ``(N, D)`` array (for example from [`embed()`][bliptk.model.captioner.Captioner.embed]).
        method: ``"umap"`` (umap-learn), ``"tsne"`` or ``"pca"`` (scikit-learn).
        random_state: Seed; the same seed gives the same projection.
        n_components: Output dimensions.
        **options: Passed to the method (``n_neighbors``, ``min_dist``, ``perplexity``, ...).

    Returns:
        ``(N, n_components)`` float array.

    Raises:
        InvalidOptionError: Unknown method, or fewer points than the method needs (UMAP needs 4,
            the others 2); the message suggests another method.
    """
    if method not in PROJECTIONS:
        raise InvalidOptionError(f"method must be one of {', '.join(PROJECTIONS)}, got {method!r}")
    points = _unit_rows(embeddings)
    count = len(points)
    if count < _MIN_POINTS[method]:
        hint = "; use method='pca' for fewer" if method == "umap" else ""
        raise InvalidOptionError(
            f"{method} needs at least {_MIN_POINTS[method]} points, got {count}{hint}", command_line={"method='pca'": "--method pca"}
        )
    if method == "pca":
        from sklearn.decomposition import PCA

        components = min(n_components, count, points.shape[1])
        projected = PCA(n_components=components, random_state=random_state, **options).fit_transform(points)
        if components < n_components:
            projected = np.pad(projected, ((0, 0), (0, n_components - components)))
        return projected
    if method == "tsne":
        from sklearn.manifold import TSNE

        options.setdefault("perplexity", min(30.0, max(1.0, (count - 1) / 3)))
        options.setdefault("init", "pca" if count > n_components else "random")
        return TSNE(n_components=n_components, random_state=random_state, **options).fit_transform(points)
    umap = _umap()
    options.setdefault("n_neighbors", min(15, count - 1))
    if count <= n_components + 2:
        options.setdefault("init", "random")  # the spectral start needs more points than dimensions
    with warnings.catch_warnings():
        # A seed makes UMAP single-threaded, as wanted for reproducibility; it warns each time.
        warnings.filterwarnings("ignore", message="n_jobs value .* overridden", category=UserWarning)
        return umap.UMAP(n_components=n_components, random_state=random_state, **options).fit_transform(points)


@functools.cache
def _umap():
    """umap-learn, its numba functions compiled once and cached on disk for later processes.

    umap-learn compiles a hundred numba functions on its first projection in each process (10-20 s
    on 2 cores) and does not cache them; numba caches any of them on request, in umap's
    ``__pycache__`` (or numba's user-wide cache where that cannot be written). The first run still
    compiles (and says so, at the INFO level); the next ones read the cache (0.1 s).
    """
    import importlib

    import umap
    from numba.core.registry import CPUDispatcher

    for name in ("umap.umap_", "umap.layouts", "umap.utils", "umap.distances", "umap.sparse", "umap.spectral"):
        for value in vars(importlib.import_module(name)).values():
            if isinstance(value, CPUDispatcher):
                value.enable_caching()
    logger.info("UMAP: its compiled functions come from numba's cache, compiled on the first run of all (10-20 s)")
    return umap


@dataclass(frozen=True)
class ClusterResult:
    """Clusters of a set of embeddings.

    Attributes:
        labels: Cluster index of each point, ``(N,)``.
        k: Number of clusters.
        silhouette: Silhouette score of this clustering (cosine; None when undefined, k = 1 or N).
        silhouette_by_k: When k was chosen, the silhouette of each k tried.
        adjusted_rand_index: Agreement with the true labels, when given (1 = identical).
        purity: Fraction of points whose cluster's majority true label is their own, when given.
    """

    labels: np.ndarray
    k: int
    silhouette: float | None
    silhouette_by_k: dict[int, float] = field(default_factory=dict)
    adjusted_rand_index: float | None = None
    purity: float | None = None


def _fit_clusters(points: np.ndarray, k: int, method: str, random_state: int) -> np.ndarray:
    if method == "kmeans":
        from sklearn.cluster import KMeans

        return KMeans(n_clusters=k, n_init=10, random_state=random_state).fit_predict(points)
    from sklearn.cluster import AgglomerativeClustering

    return AgglomerativeClustering(n_clusters=k, linkage="average", metric="cosine").fit_predict(points)


def cluster(
    embeddings,
    k: int | None = None,
    method: str = "kmeans",
    true_labels: Sequence | None = None,
    random_state: int = 0,
    max_k: int = 10,
) -> ClusterResult:
    """Group embeddings into clusters (scikit-learn).

    Args:
        embeddings: ``(N, D)`` array.
        k: Number of clusters; None chooses it by the best silhouette among 2..``max_k``.
        method: ``"kmeans"`` or ``"agglomerative"`` (average linkage, cosine).
        true_labels: Known classes, to score the clusters (adjusted Rand index, purity).
        random_state: Seed of k-means.
        max_k: Largest k tried when choosing k.

    Returns:
        A [`ClusterResult`][bliptk.analysis.feature_space.ClusterResult].
    """
    from sklearn.metrics import adjusted_rand_score, silhouette_score

    if method not in CLUSTERINGS:
        raise InvalidOptionError(f"method must be one of {', '.join(CLUSTERINGS)}, got {method!r}")
    points = _unit_rows(embeddings)
    count = len(points)
    if true_labels is not None and len(true_labels) != count:
        raise InvalidOptionError(f"{len(true_labels)} true labels for {count} embeddings")

    def silhouette(labels) -> float | None:
        clusters = len(set(labels.tolist()))
        return float(silhouette_score(points, labels, metric="cosine")) if 1 < clusters < count else None

    by_k: dict[int, float] = {}
    if k is None:
        if count < 3:
            raise InvalidOptionError(f"choosing k needs at least 3 embeddings, got {count}; pass k")
        fits = {}
        for candidate in range(2, min(max_k, count - 1) + 1):
            fits[candidate] = _fit_clusters(points, candidate, method, random_state)
            by_k[candidate] = silhouette(fits[candidate]) or -1.0
        k = max(by_k, key=lambda candidate: by_k[candidate])
        labels = fits[k]
    else:
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= count:
            raise InvalidOptionError(f"k must be an integer in [1, {count}], got {k!r}")
        labels = _fit_clusters(points, k, method, random_state) if k > 1 else np.zeros(count, dtype=int)
    ari = purity = None
    if true_labels is not None:
        truth = np.asarray([str(label) for label in true_labels])
        ari = float(adjusted_rand_score(truth, labels))
        purity = sum(np.unique(truth[labels == c], return_counts=True)[1].max() for c in np.unique(labels)) / count
    return ClusterResult(np.asarray(labels), k, silhouette(labels), by_k, ari, None if purity is None else float(purity))


@dataclass(frozen=True)
class Neighbour:
    """A neighbour of a query: its index in the collection, the item, and the cosine similarity."""

    index: int
    similarity: float
    item: object = None


def _embeddings_of(data, captioner, pooling: str):
    """(embeddings, items): embed images with the captioner, or take an (N, D) array as is."""
    if isinstance(data, np.ndarray) or (hasattr(data, "ndim") and getattr(data, "ndim", 0) == 2):
        return _as_matrix(data), None
    if captioner is None:
        raise InvalidArgumentError("to compare images, pass captioner= (or pass embeddings as an (N, D) array)")
    from ..core.files import image_files

    if isinstance(data, (str, os.PathLike)) and Path(data).is_dir():
        data = image_files(data)
    items = list(data) if isinstance(data, (list, tuple)) else [data]
    return captioner.embed(items, pooling=pooling), items


def nearest(query, collection, k: int = 5, captioner=None, pooling: str = "cls") -> list[Neighbour]:
    """The ``k`` items of a collection most similar to a query (cosine similarity), best first.

    Args:
        query: An image (with ``captioner``) or an embedding vector ``(D,)``.
        collection: Images, a folder (with ``captioner``), or embeddings ``(N, D)``.
        k: How many neighbours.
        captioner: Embeds images; not needed for embeddings.
        pooling: Embedding pooling when images are embedded.

    Returns:
        Up to ``k`` [`Neighbour`][bliptk.analysis.feature_space.Neighbour] s; an exact duplicate of the query comes first (similarity 1).
    """
    vectors, items = _embeddings_of(collection, captioner, pooling)
    if isinstance(query, np.ndarray) and query.ndim == 1:
        query_vector = query[None]
    else:
        query_vector = _embeddings_of(query if isinstance(query, np.ndarray) else [query], captioner, pooling)[0]
    similarities = _unit_rows(vectors) @ _unit_rows(query_vector)[0]
    order = np.argsort(-similarities, kind="stable")[:k]
    return [Neighbour(int(i), float(similarities[i]), items[i] if items is not None else None) for i in order]


def near_duplicates(collection, threshold: float = 0.95, captioner=None, pooling: str = "cls") -> list[tuple[int, int, float]]:
    """Pairs of near-identical images in a collection.

    Args:
        collection: Images, a folder (with ``captioner``), or embeddings ``(N, D)``.
        threshold: Smallest cosine similarity that counts as a near-duplicate.
        captioner: Embeds images; not needed for embeddings.
        pooling: Embedding pooling when images are embedded.

    Returns:
        ``(i, j, similarity)`` with ``i < j``, most similar first.
    """
    vectors, _ = _embeddings_of(collection, captioner, pooling)
    unit = _unit_rows(vectors)
    similarities = unit @ unit.T
    rows, columns = np.triu_indices(len(unit), k=1)
    keep = similarities[rows, columns] >= threshold
    pairs = [(int(i), int(j), float(similarities[i, j])) for i, j in zip(rows[keep], columns[keep], strict=True)]
    return sorted(pairs, key=lambda pair: -pair[2])


def _thumbnail(item, size: int) -> np.ndarray:
    from ..core.preprocess import load_image

    image = load_image(item)
    image.thumbnail((size, size))
    return np.asarray(image)


def plot_feature_space(
    data,
    *,
    images=None,
    labels: Sequence | None = None,
    captioner=None,
    method: str = "umap",
    random_state: int = 0,
    pooling: str = "cls",
    thumbnails: bool | None = None,
    thumbnail_size: int = 48,
    max_thumbnails: int = 300,
    callouts: bool = False,
    palette: str | Sequence[str] = "tab10",
    ax=None,
):
    """Plot a set of images in the encoder's feature space, projected to 2-D (the page's
    ``FeatureSpacePlot``).

    Args:
        data: Images (paths, PIL images, a folder), embedded with ``captioner``; or embeddings
            ``(N, D)``, with ``images`` for thumbnails.
        images: The images of precomputed embeddings, for thumbnails.
        labels: A label per point: thumbnails get a frame and dots a colour per label, with a
            legend (cluster labels from [`cluster()`][bliptk.analysis.feature_space.cluster] work too).
        captioner: Embeds images given as ``data``.
        method: Projection, ``"umap"``, ``"tsne"`` or ``"pca"``.
        random_state: Projection seed.
        pooling: Embedding pooling when images are embedded.
        thumbnails: Draw each point as its image; None draws them when images are known and
            there are at most ``max_thumbnails`` points, else coloured dots.
        thumbnail_size: Thumbnail size in pixels.
        max_thumbnails: Above this many points, dots are drawn instead of thumbnails.
        callouts: Write each point's label (or file name) next to it, with a line to it (the
            page's ``LabelingFunction -> Callout``) that stops at the thumbnail's edge.
        palette: The colours the labels take, in sorted order: a matplotlib colormap's name, or
            colours. Give clusters other colours than classes
            ([`CLUSTER_PALETTE`][bliptk.analysis.feature_space.CLUSTER_PALETTE]), so that a colour means one
            thing in each figure.
        ax: A matplotlib axes to draw on; None makes a new figure.

    Returns:
        The figure.
    """
    from ..core.figures import new_figure

    vectors, items = _embeddings_of(data, captioner, pooling)
    if images is not None:
        items = list(images)
        if len(items) != len(vectors):
            raise InvalidOptionError(f"{len(items)} images for {len(vectors)} embeddings")
    if labels is not None and len(labels) != len(vectors):
        raise InvalidOptionError(f"{len(labels)} labels for {len(vectors)} points")
    draw_thumbnails = items is not None and len(vectors) <= max_thumbnails if thumbnails is None else thumbnails
    if draw_thumbnails and items is None:
        raise InvalidOptionError("thumbnails need the images: pass images= with embeddings")
    points = project(vectors, method=method, random_state=random_state)
    if ax is None:
        ax = new_figure(figsize=(8, 7), layout="constrained").subplots()
    names = [str(label) for label in labels] if labels is not None else None
    colours = _colours(sorted(set(names or [])), palette)
    if draw_thumbnails:
        _draw_thumbnails(ax, points, items, names, colours, thumbnail_size)
    else:
        _draw_dots(ax, points, names, colours)
    if colours:
        ax.legend(loc="best", fontsize="small")
    ax.margins(0.12)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(f"image features, {method.upper() if method != 'tsne' else 't-SNE'}")
    if callouts:  # last: each is placed where it covers no thumbnail, in the figure as laid out
        texts = names or [_short_name(item, i) for i, item in enumerate(items or range(len(points)))]
        _draw_callouts(ax, points, texts, thumbnail_size if draw_thumbnails else 4)
    return ax.figure


def _draw_thumbnails(ax, points: np.ndarray, items: list, names: list[str] | None, colours: dict[str, object], size: int) -> None:
    """Each point as its image, framed in its label's colour."""
    from matplotlib.offsetbox import AnnotationBbox, OffsetImage

    ax.scatter(points[:, 0], points[:, 1], s=0)  # sets the data limits; the thumbnails do not
    for index, (x, y) in enumerate(points):
        frame = {"edgecolor": colours[names[index]], "linewidth": 2} if names else {}
        ax.add_artist(
            AnnotationBbox(OffsetImage(_thumbnail(items[index], size), zoom=1.0), (x, y), frameon=bool(names), pad=0.1, bboxprops=frame)
        )
    for name, colour in colours.items():
        ax.scatter([], [], color=colour, marker="s", label=name)  # legend entries


def _draw_dots(ax, points: np.ndarray, names: list[str] | None, colours: dict[str, object]) -> None:
    """Each point as a dot, coloured by its label."""
    if not names:
        ax.scatter(points[:, 0], points[:, 1], s=12)
        return
    for name, colour in colours.items():
        chosen = [i for i, label in enumerate(names) if label == name]
        ax.scatter(points[chosen, 0], points[chosen, 1], s=12, color=colour, label=name)


# Where a callout's text may go from its point, in order of preference: beyond a corner (the
# page's look), then beside, above or below.
_CALLOUT_DIRECTIONS = ((1, 1), (-1, 1), (1, -1), (-1, -1), (1, 0), (-1, 0), (0, 1), (0, -1))


def _draw_callouts(ax, points: np.ndarray, texts: list[str], marker_size: float) -> None:
    """Each point's text beside it, with a line to it (the page's ``Callout``): the text set off
    beyond the thumbnail's corner, the line stopping at its edge rather than crossing it. Where
    that corner's text would cover another thumbnail or text (or leave the axes), another corner
    or side is taken: the first that covers nothing, else the one that covers least."""
    from matplotlib.offsetbox import AnnotationBbox
    from matplotlib.text import Text

    figure = ax.figure
    figure.draw_without_rendering()  # the layout settled, so that the boxes in pixels are the final ones
    renderer = figure._get_renderer()
    taken = [artist.get_window_extent(renderer) for artist in ax.artists if isinstance(artist, AnnotationBbox)]
    if not taken:  # dots: a box of the dot's size around each
        half = renderer.points_to_pixels(marker_size) / 2
        taken = [_box(centre[0], centre[1], half) for centre in ax.transData.transform(points)]
    if ax.get_legend() is not None:
        taken.append(ax.get_legend().get_window_extent(renderer))
    bounds = ax.get_window_extent(renderer)
    offset = marker_size / 2 + 10  # points (a thumbnail's pixels at 72 dpi and above are fewer points)
    for (x, y), text in zip(points, texts, strict=True):
        best = None
        for dx, dy in _CALLOUT_DIRECTIONS:
            diagonal = dx != 0 and dy != 0
            callout = ax.annotate(
                text,
                (x, y),
                xytext=(dx * offset, dy * offset),
                textcoords="offset points",
                ha={1: "left", -1: "right", 0: "center"}[dx],
                va={1: "bottom", -1: "top", 0: "center"}[dy],
                fontsize="small",
                # The line stops at the thumbnail's edge: its corner lies 0.71 of a side from its centre, its sides 0.5.
                arrowprops={"arrowstyle": "-", "color": "0.4", "shrinkA": 0, "shrinkB": marker_size * (0.75 if diagonal else 0.55)},
            )
            callout.set_in_layout(False)  # placed within the settled layout, not moving it
            callout.update_positions(renderer)
            box = Text.get_window_extent(callout, renderer)  # the text alone, not its line
            covered = sum(_overlap(box, other) for other in taken) + box.width * box.height - _overlap(box, bounds)
            if best is None or covered < best[0]:
                if best is not None:
                    best[1].remove()
                best = (covered, callout, box)
            else:
                callout.remove()
            if covered == 0:
                break
        assert best is not None
        taken.append(best[2])


def _box(x: float, y: float, half: float):
    from matplotlib.transforms import Bbox

    return Bbox([[x - half, y - half], [x + half, y + half]])


def _overlap(a, b) -> float:
    """The area two boxes (in pixels) share."""
    width = min(a.x1, b.x1) - max(a.x0, b.x0)
    height = min(a.y1, b.y1) - max(a.y0, b.y0)
    return max(0.0, width) * max(0.0, height)


def _colours(names: list[str], palette: str | Sequence[str]) -> dict[str, object]:
    """A colour per name, from the palette's colours in order (round again when there are more
    names than colours)."""
    import matplotlib

    if isinstance(palette, str):
        colormap = matplotlib.colormaps[palette]
        colours = list(getattr(colormap, "colors", [colormap(i / 9) for i in range(10)]))
    else:
        colours = list(palette)
    return {name: colours[index % len(colours)] for index, name in enumerate(names)}


def _short_name(item, index: int) -> str:
    return Path(str(item)).stem if isinstance(item, str | os.PathLike) else str(index)
