"""The decoding engine: greedy, sampling and beam search against transformers, prompts of
different lengths in one batch, and the options."""

import pytest

import bliptk
from bliptk.core.decoding_strategies import decode
from bliptk.model.parity import hf_generate


def _ours(captioner, pixel_values, max_new_tokens, **options):
    features = captioner.image_encoder(pixel_values)
    captions = decode(
        captioner.text_decoder, captioner.tokenizer, features, bliptk.DecodingOptions(max_new_tokens=max_new_tokens, **options)
    )
    return [c.token_ids for c in captions]


@pytest.mark.slow
@pytest.mark.parametrize("max_new_tokens", [4, 12])
def test_three_beams_equal_transformers_full_size_vit_b(vit_b, photos, max_new_tokens):
    pixel_values = vit_b.preprocessor(photos[:2])
    expected = hf_generate(vit_b, pixel_values, "a photography of", max_new_tokens, num_beams=3)
    assert _ours(vit_b, pixel_values, max_new_tokens, num_beams=3) == expected


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
def test_beam_options_equal_transformers_tiny(photos, sep_likely, boost, options):
    captioner = sep_likely(boost)
    pixel_values = captioner.preprocessor(photos)
    assert _ours(captioner, pixel_values, 12, **options) == hf_generate(captioner, pixel_values, "a photography of", 12, **options)


def test_beams_end_at_different_lengths(photos, sep_likely):
    captions = sep_likely(6.0).caption(photos, max_new_tokens=12, num_beams=3, num_return_sequences=3)
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
def test_greedy_processors_equal_transformers(photos, sep_likely, options):
    captioner = sep_likely(6.0)
    pixel_values = captioner.preprocessor(photos)
    assert _ours(captioner, pixel_values, 10, **options) == hf_generate(captioner, pixel_values, "a photography of", 10, **options)


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


PROMPTS_OF_MANY_LENGTHS = ["the woman", "", "a photography of", "there is a very long prompt here with many words in it", None]
STRATEGIES = {
    "greedy": {},
    "sampling": {"temperature": 1.0, "top_k": 20, "seed": 3},
    "beam search": {"num_beams": 3},
}


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_one_image_with_prompts_of_many_lengths_equals_each_alone(tiny, photos, strategy):
    options = {"max_new_tokens": 8, **STRATEGIES[strategy]}
    together = tiny.caption(photos[0], PROMPTS_OF_MANY_LENGTHS, **options)
    alone = [tiny.caption(photos[0], prompt, **options) for prompt in PROMPTS_OF_MANY_LENGTHS]
    assert [c.token_ids for c in together] == [c.token_ids for c in alone]
    assert [c.text for c in together] == [c.text for c in alone]
    assert [c.prompt for c in together] == [p if p is not None else "a photography of" for p in PROMPTS_OF_MANY_LENGTHS]
    for ours, theirs in zip(together, alone, strict=True):
        assert ours.logprobs == pytest.approx(theirs.logprobs, abs=1e-4)
    assert len({tuple(c.token_ids) for c in together}) > 1  # the prompts do matter


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_a_batch_with_one_prompt_per_image_equals_each_alone(tiny, photos, strategy):
    options = {"max_new_tokens": 8, **STRATEGIES[strategy]}
    prompts = ["", "the woman sitting at a table", "a"]
    together = tiny.caption(photos, prompts, **options)
    alone = [tiny.caption(photo, prompt, **options) for photo, prompt in zip(photos, prompts, strict=True)]
    assert [c.token_ids for c in together] == [c.token_ids for c in alone]
    small_batches = tiny.caption(photos, prompts, batch_size=2, **options)
    assert [c.token_ids for c in small_batches] == [c.token_ids for c in alone]


def test_several_samples_per_image_equal_each_image_alone(tiny, photos):
    together = tiny.caption(photos, ["", "the woman", "a"], temperature=1.0, seed=5, num_return_sequences=2, max_new_tokens=6)
    alone = [
        tiny.caption(photo, prompt, temperature=1.0, seed=5, num_return_sequences=2, max_new_tokens=6)
        for photo, prompt in zip(photos, ["", "the woman", "a"], strict=True)
    ]
    assert [[c.token_ids for c in per_image] for per_image in together] == [[c.token_ids for c in per_image] for per_image in alone]


def test_prompts_must_match_the_images(tiny, photos):
    with pytest.raises(bliptk.InvalidOptionError, match="2 prompts for 3 images"):
        tiny.caption(photos, ["a", "b"])
    with pytest.raises(bliptk.InvalidOptionError, match="unknown option.*tempreature"):
        tiny.caption(photos[0], tempreature=1.0)


def test_options_are_built_by_keyword_only(tiny, photos):
    with pytest.raises(TypeError):
        bliptk.DecodingOptions("the woman", 20)
    options = bliptk.DecodingOptions(prompt="the woman", max_new_tokens=5)
    assert tiny.caption(photos[0], options=options).token_ids == tiny.caption(photos[0], "the woman", max_new_tokens=5).token_ids
    assert (
        tiny.caption(photos[0], options=options, max_new_tokens=2).token_ids
        == tiny.caption(photos[0], "the woman", max_new_tokens=2).token_ids
    )


BAD_OPTIONS = [
    ({"max_new_tokens": -1}, "max_new_tokens must be a non-negative integer"),
    ({"max_new_tokens": 2.5}, "max_new_tokens must be a non-negative integer"),
    ({"temperature": -0.1}, "temperature must be a finite number >= 0"),
    ({"top_k": 0}, "top_k must be an integer >= 1"),
    ({"top_p": 0.0}, r"top_p must be in \(0, 1\]"),
    ({"top_p": 1.5}, r"top_p must be in \(0, 1\]"),
    ({"batch_size": 0}, "batch_size must be an integer >= 1"),
    ({"prompt": "word " * 600}, "the decoder has 512"),
]


@pytest.mark.parametrize("options, message", BAD_OPTIONS)
@pytest.mark.parametrize("verb", ["caption", "caption_files"])
def test_bad_options_are_refused_before_any_work(tiny, photos, tmp_path, verb, options, message):
    out = tmp_path / "out.jsonl"
    with pytest.raises(bliptk.InvalidOptionError, match=message):
        if verb == "caption":
            tiny.caption(photos[0], **options)
        else:
            next(iter(tiny.caption_files(photos, out, **options)))
    assert not out.exists()


def test_a_word_piece_first_starts_a_word_after_the_prompt(photos):
    """The ids are transformers' (their decode glues the piece onto the prompt: "a picture ofএএ");
    the text keeps the prompt's last word whole."""
    import torch

    piece = 29887  # "##এ"
    captioner = bliptk.load("tiny")
    with torch.no_grad():
        captioner.model.text_decoder.cls.predictions.decoder.bias[piece] += 50.0
    caption = captioner.caption(photos[0], "a picture of ", max_new_tokens=2)
    assert caption.token_ids == [piece, piece] and caption.tokens == ["##এ", "##এ"]
    assert caption.token_ids == hf_generate(captioner, captioner.preprocessor(photos[0]), "a picture of ", 2)[0]
    assert caption.text == "a picture of এএ"
    tokenizer = captioner.tokenizer
    prompt, dog, s = tokenizer.encode("a picture of"), 3899, 2015  # [DEC] a picture of; "dog", "##s"
    assert tokenizer.caption_text(prompt, [piece, dog]) == "a picture of এ dog"
    assert tokenizer.caption_text(prompt, [dog, s]) == "a picture of dogs"  # later pieces join their word
    assert tokenizer.caption_text(tokenizer.encode(""), [piece, dog]) == "এ dog"
    assert tokenizer.caption_text(prompt, []) == "a picture of"
