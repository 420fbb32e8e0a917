import numpy as np
import pytest
from PIL import Image

import bliptk
from bliptk.model.embeddings import content_key


def test_embed_equals_the_encoder_output_pooled_by_hand(tiny, photos):
    features = tiny.encode_image(photos)
    np.testing.assert_allclose(tiny.embed(photos), features[:, 0].numpy(), atol=1e-6)
    np.testing.assert_allclose(tiny.embed(photos, pooling="mean"), features[:, 1:].mean(1).numpy(), atol=1e-6)


def test_batched_equals_one_by_one(tiny, photos):
    together = tiny.embed(photos, batch_size=3)
    alone = np.concatenate([tiny.embed(photo) for photo in photos])
    np.testing.assert_allclose(together, alone, atol=1e-5)
    np.testing.assert_allclose(tiny.embed(photos, batch_size=1), together, atol=1e-5)
    assert together.shape == (3, 48) and together.dtype == np.float32


def test_a_folder_is_read_in_image_files_order(tiny, photos, tmp_path):
    for photo in photos:
        (tmp_path / photo.name).write_bytes(photo.read_bytes())
    (tmp_path / "notes.txt").write_text("not an image")
    assert [p.name for p in bliptk.image_files(tmp_path)] == [p.name for p in photos]
    np.testing.assert_allclose(tiny.embed(tmp_path), tiny.embed(photos), atol=1e-6)


def test_the_cache_skips_the_encoder_on_a_second_run(tiny, photos, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    first = tiny.embed(photos, cache=cache)
    forward_calls = []
    original = type(tiny.image_encoder).forward
    monkeypatch.setattr(type(tiny.image_encoder), "forward", lambda self, x: forward_calls.append(len(x)) or original(self, x))
    second = tiny.embed(photos, cache=cache)
    assert forward_calls == [] and np.array_equal(first, second)
    # A renamed copy is found by content; a changed image is computed.
    copy = tmp_path / "renamed.jpg"
    copy.write_bytes(photos[0].read_bytes())
    changed = tmp_path / "changed.png"
    Image.open(photos[0]).rotate(90).save(changed)
    tiny.embed([copy, changed], cache=cache)
    assert forward_calls == [1]
    # Another model or pooling does not read these entries.
    tiny.embed(photos, pooling="mean", cache=cache)
    assert forward_calls == [1, 3]
    other = bliptk.load("tiny", weights_seed=1)
    assert other.weights.fingerprint != tiny.weights.fingerprint
    assert not np.allclose(other.embed(photos, cache=cache), first)


def test_content_keys():
    image = Image.new("RGB", (4, 4), (1, 2, 3))
    assert content_key(image) == content_key(image.copy()) != content_key(Image.new("RGB", (4, 4), (1, 2, 4)))
    assert content_key(np.zeros((2, 2))) != content_key(np.zeros((2, 3)))


def test_bad_options(tiny, photos):
    with pytest.raises(bliptk.InvalidOptionError, match="pooling must be one of cls, mean"):
        tiny.embed(photos, pooling="pooler")
    with pytest.raises(bliptk.InvalidOptionError, match="batch_size"):
        tiny.embed(photos, batch_size=0)
