"""The backend conformance suite: the one captioning pipeline over each backend (torch, and ONNX
Runtime from a float32 export), checked against transformers' own generation, against the
pipeline's own promises (each caption in a batch as alone), and against each other (ONNX float32
tokens equal torch's, records of one schema)."""

import gc
import weakref

import numpy as np
import pytest
from conftest import VIDEOS

import bliptk
from bliptk.core import pipeline
from bliptk.model.parity import hf_generate
from bliptk.store.records import RECORD_FIELDS, read_records

pytest.importorskip("onnxruntime")

PROMPTS = ["a photography of", "", "the woman"]


@pytest.fixture(scope="module", params=["torch", "onnx"])
def backend(request, tiny, tiny_export):
    return tiny if request.param == "torch" else bliptk.exported.load(tiny_export)


def _ids(captions):
    return [caption.token_ids for caption in captions]


@pytest.mark.parametrize("prompt", PROMPTS)
def test_greedy_tokens_equal_transformers_generate(backend, tiny, photos, prompt):
    pixels = tiny.preprocessor(photos)
    assert _ids(backend.caption(photos, prompt, max_new_tokens=12)) == hf_generate(tiny, pixels, prompt, 12)


def test_beam_search_equals_transformers_generate(backend, tiny, photos):
    pixels = tiny.preprocessor(photos)
    assert _ids(backend.caption(photos, num_beams=3, max_new_tokens=10)) == hf_generate(tiny, pixels, "a photography of", 10, num_beams=3)


def test_several_prompts_of_mixed_lengths_each_as_alone(backend, photos):
    prompts = ["a", "the woman is sitting at a table with", ""]
    together = backend.caption(photos[1], prompts, max_new_tokens=8)
    assert _ids(together) == [backend.caption(photos[1], prompt, max_new_tokens=8).token_ids for prompt in prompts]
    assert [caption.prompt for caption in together] == prompts
    one_each = backend.caption(photos, prompts, max_new_tokens=8)
    assert _ids(one_each) == [
        backend.caption(photo, prompt, max_new_tokens=8).token_ids for photo, prompt in zip(photos, prompts, strict=True)
    ]


def test_seeded_sampling_is_the_same_alone_in_a_batch_and_on_either_backend(backend, tiny, photos):
    sampled = {"temperature": 1.0, "top_k": 20, "seed": 4, "max_new_tokens": 8}
    batch = backend.caption(photos, **sampled)
    assert _ids(batch) == [backend.caption(photo, **sampled).token_ids for photo in photos]
    assert _ids(batch) == _ids(tiny.caption(photos, **sampled))


def test_several_captions_per_image(backend, tiny, photos):
    sampled = {"temperature": 1.0, "top_k": 20, "seed": 2, "max_new_tokens": 6, "num_return_sequences": 3}
    groups = backend.caption(photos[:2], **sampled)
    assert [len(group) for group in groups] == [3, 3]
    assert [_ids(group) for group in groups] == [_ids(group) for group in tiny.caption(photos[:2], **sampled)]
    beams = backend.caption(photos[0], num_beams=3, num_return_sequences=2, max_new_tokens=6)
    assert _ids(beams) == _ids(tiny.caption(photos[0], num_beams=3, num_return_sequences=2, max_new_tokens=6))
    assert beams[0].logprob / len(beams[0].token_ids) >= beams[1].logprob / max(1, len(beams[1].token_ids)) - 1e-4


def test_a_video_is_the_mean_of_its_frames_features(backend, tiny):
    video = VIDEOS / "bigbuckbunny.mp4"
    frames = bliptk.video_frames(video, 4)
    mean = backend.encode(backend.preprocessor.arrays(list(frames))).mean(axis=0)
    expected = bliptk.core.pipeline.caption_features(backend, mean[None], bliptk.DecodingOptions(prompt="a video of", max_new_tokens=6))[0]
    caption = backend.caption(video, num_frames=4, max_new_tokens=6)
    assert caption.token_ids == expected.token_ids and caption.prompt == "a video of"
    assert caption.token_ids == tiny.caption(video, num_frames=4, max_new_tokens=6).token_ids
    concat = backend.caption(frames, pooling="concat", max_new_tokens=4)
    assert concat.token_ids == tiny.caption(frames, pooling="concat", max_new_tokens=4).token_ids


def test_caption_files_with_resume_and_records_of_one_schema(backend, tiny, photos, tmp_path):
    inputs = [*photos, tmp_path / "missing.jpg"]
    out = tmp_path / "records.jsonl"
    records = list(backend.caption_files(inputs, out, max_new_tokens=5))
    assert [list(record) for record in records] == [list(RECORD_FIELDS)] * len(inputs)
    assert [r["token_ids"] for r in records[:-1]] == _ids(tiny.caption(photos, max_new_tokens=5))
    assert records[-1]["error"] == {"type": "ImageLoadError", "message": f"{tmp_path / 'missing.jpg'}: no such file"}
    assert records[0]["weights"] == {**tiny.weights.as_dict(), "dtype": backend.weights.dtype}
    status = bliptk.BatchStatus()
    again = list(backend.caption_files(inputs, out, max_new_tokens=5, resume=True, status=status))
    assert status.skipped == len(photos) and [r["path"] for r in again] == [str(tmp_path / "missing.jpg")]  # only the failure is retried
    assert len(read_records(out)) == len(inputs)


def test_features_of_one_chunk_at_most_are_alive(backend, photos, monkeypatch):
    """48 images in chunks of 8: each chunk is decoded before the next is encoded, and no
    chunk's features outlive its decoding."""
    events, alive = [], []
    encode, keys_values = backend.encode, backend.decoder.image_keys_values

    def watched_encode(pixels):
        gc.collect()
        events.append(("encode", sum(ref() is not None for ref in alive)))
        features = encode(pixels)
        alive.append(weakref.ref(features))
        return features

    def watched_keys_values(features):
        events.append(("decode", None))
        return keys_values(features)

    monkeypatch.setattr(backend, "encode", watched_encode)
    monkeypatch.setattr(backend.decoder, "image_keys_values", watched_keys_values)
    images = [np.asarray(bliptk.load_image(photos[i % len(photos)]))[: 200 + i] for i in range(48)]
    assert len(backend.caption(images, batch_size=8, max_new_tokens=2)) == 48
    assert [kind for kind, _ in events] == ["encode", "decode"] * 6
    assert [count for kind, count in events if kind == "encode"] == [0] * 6


def test_the_random_weights_warning_names_the_callers_line(tiny, photos, tmp_path):
    """However deep in bliptk it is raised (a verb, a generator, an explanation), the warning points at the user's call."""
    calls = {
        "caption": lambda: tiny.caption(photos[0], max_new_tokens=2),
        "caption_files": lambda: list(tiny.caption_files([photos[0]], max_new_tokens=2)),
        "explain": lambda: bliptk.explain(tiny, photos[0], "a dog"),
    }
    for name, call in calls.items():
        pipeline._SAID_RANDOM.clear()
        with pytest.warns(bliptk.RandomWeightsWarning) as caught:
            call()
        assert [w.filename for w in caught] == [__file__], name
