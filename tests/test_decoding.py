import pytest
import torch

import bliptk
from bliptk.decoding import decode


def _transformers_beams(captioner, pixel_values, max_new_tokens, **options):
    prompt = captioner.tokenizer.encode("a photography of")[1:]
    input_ids = torch.tensor([[101, *prompt, 102]] * pixel_values.shape[0])
    with torch.inference_mode():
        output = captioner.model.generate(pixel_values=pixel_values, input_ids=input_ids, max_new_tokens=max_new_tokens, do_sample=False, **options)
    return [row[: row.index(102)] if 102 in row else row for row in output[:, 1 + len(prompt) :].tolist()]


def _ours(captioner, features, max_new_tokens, **options):
    captions = decode(captioner.text_decoder, captioner.tokenizer, features, bliptk.DecodingOptions(max_new_tokens=max_new_tokens, **options))
    return [c.token_ids for c in captions]


@pytest.mark.parametrize("max_new_tokens", [4, 12])
def test_three_beams_equal_transformers_full_size_vit_b(vit_b, photos, max_new_tokens):
    pixel_values = vit_b.preprocessor(photos[:2])
    features = vit_b.image_encoder(pixel_values)
    expected = _transformers_beams(vit_b, pixel_values, max_new_tokens, num_beams=3)
    assert _ours(vit_b, features, max_new_tokens, num_beams=3) == expected


@pytest.fixture
def sep_likely(tiny):
    """Raise [SEP]'s bias so that captions end at many different lengths."""
    bias = tiny.model.text_decoder.cls.predictions.decoder.bias
    original = bias.detach().clone()

    def set_bias(boost):
        with torch.no_grad():
            bias.copy_(original)
            bias[102] += boost

    yield set_bias
    with torch.no_grad():
        bias.copy_(original)


@pytest.mark.parametrize("boost", [0.0, 6.5])
@pytest.mark.parametrize(
    "options",
    [
        {"num_beams": 3},
        {"num_beams": 2, "length_penalty": 2.0},
        {"num_beams": 4, "length_penalty": -1.0},
        {"num_beams": 3, "min_new_tokens": 4},
        {"num_beams": 4, "repetition_penalty": 1.5},
        {"num_beams": 3, "num_return_sequences": 3},
    ],
    ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()),
)
def test_beam_options_equal_transformers_tiny(tiny, photos, sep_likely, boost, options):
    sep_likely(boost)
    pixel_values = tiny.preprocessor(photos)
    features = tiny.image_encoder(pixel_values)
    assert _ours(tiny, features, 12, **options) == _transformers_beams(tiny, pixel_values, 12, **options)


def test_beams_end_at_different_lengths(tiny, photos, sep_likely):
    sep_likely(6.0)
    captions = tiny.caption(photos, max_new_tokens=12, num_beams=3, num_return_sequences=3)
    lengths = {len(c.token_ids) for per_image in captions for c in per_image}
    assert len(lengths) > 2 and any(c.finished for per_image in captions for c in per_image)
    for per_image in captions:
        assert len(per_image) == 3
        for caption in per_image:
            assert len(caption.logprobs) == len(caption.token_ids)


@pytest.mark.parametrize(
    "options",
    [{"repetition_penalty": 1.3}, {"min_new_tokens": 5}],
)
def test_greedy_processors_equal_transformers(tiny, photos, sep_likely, options):
    sep_likely(6.0)
    pixel_values = tiny.preprocessor(photos)
    features = tiny.image_encoder(pixel_values)
    assert _ours(tiny, features, 10, **options) == _transformers_beams(tiny, pixel_values, 10, num_beams=1, **options)


def test_several_samples_per_image(tiny, photos):
    captions = tiny.caption(photos[:2], temperature=1.0, seed=0, num_return_sequences=3, max_new_tokens=6)
    assert [len(per_image) for per_image in captions] == [3, 3]
    assert len({tuple(c.token_ids) for c in captions[0]}) == 3
    single = tiny.caption(photos[0], temperature=1.0, seed=0, num_return_sequences=2, max_new_tokens=6)
    assert isinstance(single, list) and len(single) == 2


@pytest.mark.parametrize(
    "options, message",
    [
        ({"num_beams": 0}, "num_beams must be an integer >= 1"),
        ({"num_beams": 2, "temperature": 1.0}, "beam search is deterministic"),
        ({"num_beams": 2, "num_return_sequences": 3}, r"num_return_sequences \(3\) cannot exceed num_beams \(2\)"),
        ({"num_return_sequences": 2}, "several greedy captions would all be the same"),
        ({"min_new_tokens": -1}, "min_new_tokens must be a non-negative integer"),
        ({"repetition_penalty": 0}, "repetition_penalty must be a number > 0"),
        ({"length_penalty": float("nan")}, "length_penalty must be a finite number"),
    ],
)
def test_bad_beam_options(tiny, photos, options, message):
    with pytest.raises(bliptk.InvalidOptionError, match=message):
        tiny.caption(photos[0], **options)
