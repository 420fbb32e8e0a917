import csv

import numpy as np
import pytest
from matplotlib.offsetbox import AnnotationBbox
from matplotlib.text import Text
from PIL import Image

import bliptk
from bliptk.analysis.feature_space import _overlap
from bliptk.cli.main import main


@pytest.fixture(scope="module")
def blobs():
    """Three well-separated Gaussian blobs in 64-D, 20 points each."""
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(3, 64)) * 10
    points = np.concatenate([centre + rng.normal(size=(20, 64)) for centre in centres])
    return points, np.repeat(["a", "b", "c"], 20)


@pytest.mark.parametrize("method", ["umap", "tsne", "pca"])
def test_projections_are_reproducible(blobs, method):
    points, _ = blobs
    first = bliptk.project(points, method=method, random_state=3)
    assert first.shape == (60, 2)
    np.testing.assert_array_equal(first, bliptk.project(points, method=method, random_state=3))


def test_two_images_work_where_the_method_allows(blobs):
    points, _ = blobs
    assert bliptk.project(points[:2], method="pca").shape == (2, 2)
    assert bliptk.project(points[:2], method="tsne").shape == (2, 2)
    with pytest.raises(bliptk.InvalidOptionError, match="umap needs at least 4 points, got 2; use method='pca'"):
        bliptk.project(points[:2], method="umap")
    assert bliptk.project(points[:4], method="umap").shape == (4, 2)
    with pytest.raises(bliptk.InvalidOptionError, match="method must be one of umap, tsne, pca"):
        bliptk.project(points, method="mds")
    with pytest.raises(bliptk.InvalidOptionError, match=r"2-D array \(N, D\)"):
        bliptk.project(points[0])


@pytest.mark.parametrize("method", ["kmeans", "agglomerative"])
def test_clustering_recovers_the_blobs(blobs, method):
    points, truth = blobs
    result = bliptk.cluster(points, method=method, true_labels=truth)
    assert result.k == 3 and max(result.silhouette_by_k, key=result.silhouette_by_k.get) == 3
    assert result.adjusted_rand_index > 0.95 and result.purity == 1.0
    assert result.silhouette > 0.5 and len(result.labels) == 60
    fixed = bliptk.cluster(points, k=2, method=method, true_labels=truth)
    assert fixed.k == 2 and fixed.purity < 1.0 and fixed.silhouette_by_k == {}


def test_cluster_scores_by_hand():
    points = np.array([[1.0, 0], [1, 0.1], [0, 1], [0.1, 1]])
    result = bliptk.cluster(points, k=2, true_labels=["x", "x", "y", "z"])
    assert result.purity == pytest.approx(3 / 4)
    with pytest.raises(bliptk.InvalidOptionError, match=r"k must be an integer in \[1, 4\]"):
        bliptk.cluster(points, k=5)
    with pytest.raises(bliptk.InvalidOptionError, match="choosing k needs at least 3"):
        bliptk.cluster(points[:2])


def test_nearest_returns_an_exact_duplicate_first(tiny, photos, tmp_path):
    duplicate = tmp_path / "copy.jpg"
    duplicate.write_bytes(photos[1].read_bytes())
    collection = [photos[0], duplicate, photos[2]]
    neighbours = bliptk.nearest(photos[1], collection, k=2, captioner=tiny)
    assert neighbours[0].index == 1 and neighbours[0].item == duplicate
    assert neighbours[0].similarity == pytest.approx(1.0, abs=1e-6)
    assert neighbours[0].similarity > neighbours[1].similarity
    embeddings = tiny.embed(collection)
    assert [n.index for n in bliptk.nearest(embeddings[2], embeddings, k=3)][0] == 2


def test_near_duplicates(tiny, photos, tmp_path):
    Image.open(photos[0]).save(tmp_path / "a.png")
    Image.open(photos[0]).resize((300, 200)).save(tmp_path / "b.jpg", quality=70)
    Image.open(photos[2]).save(tmp_path / "c.png")
    pairs = bliptk.near_duplicates(tmp_path, threshold=0.95, captioner=tiny)
    assert [(i, j) for i, j, _ in pairs] == [(0, 1)]
    with pytest.raises(TypeError, match="pass captioner="):
        bliptk.near_duplicates(tmp_path)


def test_plot_has_one_thumbnail_per_image(tiny, photos, tmp_path):
    images = photos * 2
    figure = bliptk.plot_feature_space(images, captioner=tiny, labels=["x", "y", "z"] * 2, method="pca", callouts=True)
    boxes = [a for a in figure.axes[0].artists if isinstance(a, AnnotationBbox)]
    assert len(boxes) == 6
    assert [t.get_text() for t in figure.axes[0].get_legend().get_texts()] == ["x", "y", "z"]
    assert sorted(t.get_text() for t in figure.axes[0].texts) == ["x", "x", "y", "y", "z", "z"]
    figure.savefig(tmp_path / "map.png", dpi=50)
    assert Image.open(tmp_path / "map.png").size == (400, 350)


def test_large_sets_are_dots_with_a_legend(blobs):
    points, truth = blobs
    from matplotlib.figure import Figure

    ax = Figure().subplots()
    figure = bliptk.plot_feature_space(points, labels=truth, method="pca", ax=ax)
    assert figure is ax.figure and not ax.artists
    assert [len(c.get_offsets()) for c in ax.collections] == [20, 20, 20]
    with pytest.raises(bliptk.InvalidOptionError, match="3 labels for 60 points"):
        bliptk.plot_feature_space(points, labels=truth[:3], method="pca")
    with pytest.raises(bliptk.InvalidOptionError, match="thumbnails need the images"):
        bliptk.plot_feature_space(points, thumbnails=True, method="pca")


def test_cli_embed_and_map(tiny, photos, tmp_path, capsys):
    folder = tmp_path / "photos"
    folder.mkdir()
    for photo in photos:
        (folder / photo.name).write_bytes(photo.read_bytes())
    labels = tmp_path / "labels.csv"
    labels.write_text("file,label\n" + "".join(f"{p.name},{'ab'[i % 2]}\n" for i, p in enumerate(photos)))
    out = tmp_path / "embeddings.npz"
    assert main(["embed", str(folder), "--out", str(out), "--model", "tiny", "--pooling", "mean"]) == 0
    saved = np.load(out)
    assert [p.split("/")[-1] for p in saved["paths"]] == [p.name for p in photos]
    np.testing.assert_allclose(saved["embeddings"], tiny.embed(photos, pooling="mean"), atol=1e-6)
    png = tmp_path / "map.png"
    assert (
        main(["map", str(folder), "--out", str(png), "--model", "tiny", "--method", "pca", "--clusters", "2", "--labels", str(labels)]) == 0
    )
    assert "k=2" in capsys.readouterr().out and Image.open(png).size == (800, 700)
    assert main(["map", str(tmp_path / "nowhere"), "--out", str(tmp_path / "other.png"), "--model", "tiny"]) == 2
    assert "not a folder" in capsys.readouterr().err


# --- callouts (notebook 04): each label beside its point, covering no thumbnail and no other label ---


@pytest.fixture(scope="module")
def feature_space(tiny):
    """Notebook 04's photos and labels, embedded by the tiny net."""
    folder = bliptk.example_path("images/feature-space")
    with open(f"{folder}/labels.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    paths = [f"{folder}/{row['file']}" for row in rows]
    return tiny.embed(paths), paths, [row["label"] for row in rows]


def test_callouts_cover_no_thumbnail_and_no_other_callout(feature_space):
    embeddings, paths, labels = feature_space
    # Notebook 04's figure: with the tiny net's map, a label beyond its thumbnail's top-right corner
    # (the only place callouts took) covered a neighbour there.
    figure = bliptk.plot_feature_space(embeddings, images=paths, labels=labels, callouts=True, random_state=37)
    figure.draw_without_rendering()
    ax, renderer = figure.axes[0], figure._get_renderer()
    thumbnails = [artist.get_window_extent(renderer) for artist in ax.artists if isinstance(artist, AnnotationBbox)]
    texts = [Text.get_window_extent(text, renderer) for text in ax.texts]
    assert sorted(text.get_text() for text in ax.texts) == sorted(labels) and len(thumbnails) == len(labels)
    assert [(i, j) for i, text in enumerate(texts) for j, box in enumerate(thumbnails) if _overlap(text, box)] == []
    assert [(i, j) for i, text in enumerate(texts) for j in range(i + 1, len(texts)) if _overlap(text, texts[j])] == []
    assert all(_overlap(text, ax.get_window_extent(renderer)) == text.width * text.height for text in texts)  # inside the axes
    # Where the top-right corner is free, the label is there (the page's look).
    assert (
        sum(text.get_horizontalalignment() == "left" and text.get_verticalalignment() == "bottom" for text in ax.texts) >= len(labels) // 2
    )
