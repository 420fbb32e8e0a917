"""Explanations and their files (bliptk.attribution.result): round trips, and files that are no explanation."""

from __future__ import annotations

import numpy as np
import pytest

import bliptk


@pytest.fixture(scope="module")
def explained(tiny, photos):
    return bliptk.explain(tiny, photos[0], method="relevance", max_new_tokens=3, contrast={0: "cat"})


@pytest.mark.parametrize("suffix", [".npz", ".safetensors"])
@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_save_and_load_round_trip(explained, tmp_path, suffix, dtype):
    path = explained.save(tmp_path / f"one{suffix}", dtype=dtype)
    loaded = bliptk.load_explanation(path)
    np.testing.assert_array_equal(loaded.maps, explained.maps.astype(dtype).astype(np.float32))
    assert loaded.maps.dtype == np.float32 and set(loaded.extras) == {"text_relevance"}
    np.testing.assert_array_equal(loaded.text_relevance, explained.text_relevance.astype(dtype).astype(np.float32))
    for name in ("tokens", "token_ids", "method", "layer", "prompt", "text", "provenance", "contrast", "image"):
        assert getattr(loaded, name) == getattr(explained, name), name
    assert loaded.image == str(explained.image) and loaded.contrast == {0: "cat"}


def test_float16_halves_the_maps(explained, tmp_path):
    full = explained.save(tmp_path / "a.safetensors").stat().st_size
    half = explained.save(tmp_path / "b.safetensors", dtype="float16").stat().st_size
    assert half < full


def test_saving_refuses_what_it_should(explained, tmp_path):
    explained.save(tmp_path / "one.npz")
    with pytest.raises(bliptk.OutputExistsError, match="pass overwrite=True"):
        explained.save(tmp_path / "one.npz")
    explained.save(tmp_path / "one.npz", overwrite=True)
    with pytest.raises(bliptk.InvalidOptionError, match=r"saved as .npz or .safetensors, not '.png'"):
        explained.save(tmp_path / "one.png")
    with pytest.raises(bliptk.InvalidOptionError, match="dtype must be one of float32, float16"):
        explained.save(tmp_path / "two.npz", dtype="int8")


def test_a_file_that_is_no_explanation_is_an_input_error(tmp_path):
    np.savez(tmp_path / "other.npz", maps=np.zeros(3))
    with pytest.raises(bliptk.InputError, match="not an explanation saved by bliptk .*no metadata"):
        bliptk.load_explanation(tmp_path / "other.npz")
    (tmp_path / "torn.safetensors").write_bytes(b"\x10\x00garbage")
    with pytest.raises(bliptk.InputError, match="not an explanation saved by bliptk"):
        bliptk.load_explanation(tmp_path / "torn.safetensors")
    with pytest.raises(bliptk.InputError, match="no such explanation file"):
        bliptk.load_explanation(tmp_path / "missing.npz")


def test_an_explanation_with_pickled_objects_is_not_unpickled(tmp_path):
    np.savez(tmp_path / "pickled.npz", metadata=np.array([{"format": "bliptk-explanation"}], dtype=object))
    with pytest.raises(bliptk.InputError, match="not an explanation saved by bliptk"):
        bliptk.load_explanation(tmp_path / "pickled.npz")
