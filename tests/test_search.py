"""Search by caption likelihood: the ranking is score(...).mean sorted, and images are encoded once."""

import shutil

import numpy as np
import pytest

import bliptk
from bliptk.captioning.search import FeatureCache, SearchHit


@pytest.fixture
def folder(photos, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for photo in photos:
        shutil.copy(photo, folder / photo.name)
    return folder


def _encodes(captioner, monkeypatch) -> list[int]:
    """Count the images each call of the captioner's image encoder gets."""
    counted: list[int] = []
    encode = type(captioner).encode

    def counting(self, pixels):
        counted.append(len(pixels))
        return encode(self, pixels)

    monkeypatch.setattr(type(captioner), "encode", counting)
    return counted


def test_hits_are_the_images_sorted_by_the_querys_mean_logprob(tiny, folder):
    paths = sorted(str(p.resolve()) for p in folder.iterdir())
    for query in ["a woman cutting a cake", "an elephant"]:
        means = [s.mean for s in tiny.score(paths, query)]
        expected = sorted(zip(paths, means, strict=True), key=lambda pair: -pair[1])
        hits = bliptk.search(tiny, folder, query)
        assert [(h.path, h.score) for h in hits] == [(p, pytest.approx(m, abs=1e-6)) for p, m in expected]
        assert bliptk.search(tiny, folder, query, top_k=2) == hits[:2] and isinstance(hits[0], SearchHit)


def test_later_queries_reuse_the_features(vit_b_free_tiny, folder, monkeypatch):
    captioner = vit_b_free_tiny
    encoded = _encodes(captioner, monkeypatch)
    first = bliptk.search(captioner, folder, "a dog", batch_size=2)
    assert sum(encoded) == 3  # three photos, once each
    ten = bliptk.search(captioner, folder, [f"a photo number {i}" for i in range(9)] + ["a dog"])
    assert sum(encoded) == 3  # no image encoded again
    assert [h.path for h in ten[-1]] == [h.path for h in first]
    np.testing.assert_allclose([h.score for h in ten[-1]], [h.score for h in first], atol=1e-5)  # (batches of 2, then 16)
    cache = FeatureCache(captioner)
    cache.features([str(p.resolve()) for p in folder.iterdir()])
    assert cache.encoded == 0


@pytest.fixture
def vit_b_free_tiny():
    """A tiny captioner of its own (its features kept in memory are this test's alone)."""
    return bliptk.load("tiny")


def test_a_cache_file_is_reused_across_sessions_and_refused_by_other_weights(folder, tmp_path, monkeypatch):
    cache = tmp_path / "features.npz"
    first = bliptk.load("tiny")
    hits = bliptk.search(first, folder, "a cake", cache=cache)
    assert cache.is_file()
    again = bliptk.load("tiny")  # another session: nothing in memory
    encoded = _encodes(again, monkeypatch)
    assert bliptk.search(again, folder, "a cake", cache=cache) == hits and encoded == []
    photo = next(folder.iterdir())
    photo.write_bytes(photo.read_bytes() + b"\0")  # a changed file is encoded again
    bliptk.search(again, folder, "a cake", cache=cache)
    assert encoded == [1]
    other = bliptk.load("tiny", weights_seed=1)
    with pytest.raises(
        bliptk.InvalidOptionError, match=r"features.npz holds features made by tiny .*'seed': 0.*this search uses tiny .*'seed': 1"
    ):
        bliptk.search(other, folder, "a cake", cache=cache)
    (tmp_path / "junk.npz").write_text("not numpy")
    with pytest.raises(bliptk.InputError, match=r"junk.npz: not a feature cache bliptk wrote"):
        bliptk.search(other, folder, "a cake", cache=tmp_path / "junk.npz")


def test_unreadable_images_are_left_out_and_named(tiny, folder):
    (folder / "broken.jpg").write_text("not a photo")
    with pytest.warns(bliptk.DataWarning, match=r"1 images left out of the search: .*broken.jpg"):
        hits = bliptk.search(tiny, folder, "a cake")
    assert len(hits) == 3 and not any(h.path.endswith("broken.jpg") for h in hits)


def test_the_onnx_runtime_ranks_as_torch(tiny, tiny_export, folder):
    runner = bliptk.load(tiny_export)
    ours, theirs = bliptk.search(runner, folder, "a cake"), bliptk.search(tiny, folder, "a cake")
    assert [h.path for h in ours] == [h.path for h in theirs]
    np.testing.assert_allclose([h.score for h in ours], [h.score for h in theirs], atol=1e-4)


def test_bad_searches_are_refused(tiny, folder, tmp_path):
    with pytest.raises(bliptk.InvalidOptionError, match=r"query is empty"):
        bliptk.search(tiny, folder, "  ")
    with pytest.raises(bliptk.InvalidOptionError, match=r"query 1 is empty"):
        bliptk.search(tiny, folder, ["a dog", ""])
    with pytest.raises(bliptk.InvalidOptionError, match=r"top_k must be an integer >= 1, got 0"):
        bliptk.search(tiny, folder, "a dog", top_k=0)
    (tmp_path / "empty").mkdir()
    with pytest.raises(bliptk.NoInputsError, match=r"empty holds no image or video files"):
        bliptk.search(tiny, tmp_path / "empty", "a dog")


def test_mistakes_a_probe_found_are_said_in_bliptks_words(folder, tmp_path):
    captioner = bliptk.load("tiny")
    for query in (None, 3):
        with pytest.raises(bliptk.InvalidArgumentError, match=r"query must be a string or a list of strings, got"):
            bliptk.search(captioner, folder, query)
    with pytest.raises(bliptk.InvalidOptionError, match=r"nope: no such file or folder"):
        bliptk.search(captioner, tmp_path / "nope", "a cake")
    (tmp_path / "empty.npz").write_bytes(b"")
    (tmp_path / "torn.npz").write_bytes(b"PK\x03\x04garbage")
    np.savez(tmp_path / "other.npz", made=np.array("[1, 2]"), keys=np.array(["x"]), features=np.zeros((1, 2, 2), np.float32))
    for name in ("empty.npz", "torn.npz", "other.npz"):
        with pytest.raises(bliptk.InputError, match=rf"{name}: not a feature cache bliptk wrote"):
            bliptk.search(captioner, folder, "a cake", cache=tmp_path / name)
    # features already in memory are still written to a cache file named later
    bliptk.search(captioner, folder, "a cake")
    bliptk.search(captioner, folder, "a cake", cache=tmp_path / "later.npz")
    assert (tmp_path / "later.npz").is_file() and FeatureCache(captioner, tmp_path / "later.npz").in_file
    with pytest.raises(bliptk.OutputError, match=r"/proc/c.npz: cannot write there"):
        bliptk.search(captioner, folder, "a cake", cache="/proc/c.npz")
