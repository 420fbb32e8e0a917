import warnings

import pytest
import torch

import bliptk
from conftest import hf_generate

PROMPTS = ["a photography of", "", "the woman"]


@pytest.mark.parametrize("prompt", PROMPTS)
def test_greedy_equals_transformers_generate_tiny(tiny, photos, prompt):
    pixel_values = tiny.preprocessor(photos)
    expected = hf_generate(tiny, pixel_values, prompt, max_new_tokens=20)
    captions = tiny.caption(photos, prompt=prompt, max_new_tokens=20)
    assert [c.token_ids for c in captions] == expected
    assert len({tuple(row) for row in expected}) == len(photos)  # the images do matter


@pytest.mark.parametrize("prompt", PROMPTS)
def test_greedy_equals_transformers_generate_full_size_vit_b(vit_b, photos, prompt):
    pixel_values = vit_b.preprocessor(photos[:2])
    expected = hf_generate(vit_b, pixel_values, prompt, max_new_tokens=12)
    captions = vit_b.caption(photos[:2], prompt=prompt, max_new_tokens=12)
    assert [c.token_ids for c in captions] == expected


def test_caption_fields(tiny, photos):
    caption = tiny.caption(photos[0], max_new_tokens=6)
    assert isinstance(caption, bliptk.Caption)
    assert caption.prompt == "a photography of"
    assert len(caption.token_ids) == len(caption.tokens) == len(caption.logprobs) == 6
    assert caption.tokens == tiny.tokenizer.convert_ids_to_tokens(caption.token_ids)
    assert caption.text == tiny.tokenizer.decode([1037, 5855, 1997] + caption.token_ids)
    assert caption.text.startswith("a photography of") and str(caption) == caption.text
    assert caption.finished is False and caption.cross_attention is None


def test_logprobs_equal_transformers_scores(tiny, photos):
    caption = tiny.caption(photos[0], max_new_tokens=5)
    pixel_values = tiny.preprocessor(photos[0])
    with torch.inference_mode():
        output = tiny.model.generate(
            pixel_values=pixel_values,
            input_ids=torch.tensor([[101, 1037, 5855, 1997, 102]]),
            max_new_tokens=5,
            do_sample=False,
            output_scores=True,
            return_dict_in_generate=True,
        )
    expected = [score.log_softmax(-1)[0, t].item() for score, t in zip(output.scores, caption.token_ids)]
    assert caption.logprobs == pytest.approx(expected, abs=1e-4)
    assert caption.logprob == pytest.approx(sum(expected), abs=1e-3)


def test_a_batch_equals_one_image_at_a_time(tiny, photos):
    batch = tiny.caption(photos, max_new_tokens=10)
    single = [tiny.caption(photo, max_new_tokens=10) for photo in photos]
    assert [c.token_ids for c in batch] == [c.token_ids for c in single]
    assert [c.text for c in batch] == [c.text for c in single]
    small_batches = tiny.caption(photos, max_new_tokens=10, batch_size=2)
    assert [c.token_ids for c in small_batches] == [c.token_ids for c in single]


def test_caption_stops_at_sep(tiny, photos):
    """Force [SEP] to win at the third step: the caption ends there, [SEP] excluded."""
    bias = tiny.model.text_decoder.cls.predictions.decoder.bias
    original = bias.detach().clone()
    features = tiny.encode_image(photos[0])
    free = tiny.caption_features(features, bliptk.DecodingOptions(max_new_tokens=3))[0]
    try:
        with torch.no_grad():
            bias[102] += 100.0
        stopped = tiny.caption_features(features, bliptk.DecodingOptions(max_new_tokens=3))[0]
    finally:
        with torch.no_grad():
            bias.copy_(original)
    assert free.finished is False and len(free.token_ids) == 3
    assert stopped.finished is True and stopped.token_ids == [] and stopped.text == "a photography of"


def test_sampling_with_a_seed_is_reproducible(tiny, photos):
    first = tiny.caption(photos[0], temperature=1.0, seed=7, max_new_tokens=10)
    again = tiny.caption(photos[0], temperature=1.0, seed=7, max_new_tokens=10)
    other = tiny.caption(photos[0], temperature=1.0, seed=8, max_new_tokens=10)
    greedy = tiny.caption(photos[0], max_new_tokens=10)
    assert first.token_ids == again.token_ids
    assert first.token_ids != other.token_ids
    assert first.token_ids != greedy.token_ids


def test_sampled_tokens_are_among_the_top_k(tiny, photos):
    """Replay each sampled caption through the decoder and rank the sampled tokens."""
    k = 3
    features = tiny.encode_image(photos[0])
    for seed in range(5):
        caption = tiny.caption_features(features, bliptk.DecodingOptions(temperature=2.0, top_k=k, seed=seed, max_new_tokens=8))[0]
        ids = torch.tensor([[30522, 1037, 5855, 1997] + caption.token_ids])
        logits = tiny.text_decoder(ids, tiny.text_decoder.start(features, ids.shape[1]))
        top = logits[0, 3:-1].topk(k, dim=-1).indices if caption.token_ids else None
        for step, token in enumerate(caption.token_ids):
            assert token in top[step].tolist()


def test_unconditional_caption_has_no_prompt_text(tiny, photos):
    caption = tiny.caption(photos[0], prompt="", max_new_tokens=5)
    assert caption.prompt == "" and caption.text == tiny.tokenizer.decode(caption.token_ids)


def test_zero_new_tokens_gives_the_prompt(tiny, photos):
    caption = tiny.caption(photos[0], prompt="the park is", max_new_tokens=0)
    assert caption.text == "the park is" and caption.token_ids == []


@pytest.mark.parametrize(
    "options, message",
    [
        ({"max_new_tokens": -1}, "max_new_tokens must be a non-negative integer"),
        ({"max_new_tokens": 2.5}, "max_new_tokens must be a non-negative integer"),
        ({"temperature": -0.1}, "temperature must be a finite number >= 0"),
        ({"top_k": 0}, "top_k must be an integer >= 1"),
        ({"top_p": 0.0}, r"top_p must be in \(0, 1\]"),
        ({"top_p": 1.5}, r"top_p must be in \(0, 1\]"),
        ({"batch_size": 0}, "batch_size must be an integer >= 1"),
        ({"prompt": "word " * 600}, "the decoder has 512"),
    ],
)
def test_bad_options_are_refused(tiny, photos, options, message):
    with pytest.raises(bliptk.InvalidOptionError, match=message):
        tiny.caption(photos[0], **options)


def test_encode_image_shape(tiny, vit_b, photos):
    assert tiny.encode_image(photos).shape == (3, 37, 48)
    assert vit_b.encode_image(photos[0]).shape == (1, 577, 768)


def test_top_p_keeps_the_smallest_nucleus():
    from bliptk.decoding import sample_next_token

    probabilities = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    logits = probabilities.log().repeat(2000, 1)
    generator = torch.Generator().manual_seed(0)
    drawn = sample_next_token(logits, 1.0, top_p=0.8, generator=generator)
    assert set(drawn.tolist()) == {0, 1}  # 0.5 + 0.3 reaches 0.8
    drawn = sample_next_token(logits, 1.0, top_p=0.81, generator=generator)
    assert set(drawn.tolist()) == {0, 1, 2}
    assert set(sample_next_token(logits, 1.0, top_p=0.1, generator=generator).tolist()) == {0}


@pytest.mark.parametrize("model", ["tiny", "vit_b"])
def test_image_features_equal_transformers_vision_model(model, photos, request):
    captioner = request.getfixturevalue(model)
    pixel_values = captioner.preprocessor(photos)
    with torch.inference_mode():
        expected = captioner.model.vision_model(pixel_values=pixel_values).last_hidden_state
    torch.testing.assert_close(captioner.image_encoder(pixel_values), expected, atol=1e-4, rtol=1e-4)


def test_random_weights_say_so_once_and_pretrained_ones_never(tiny_checkpoint, photos):
    random = bliptk.load("tiny")
    with pytest.warns(bliptk.RandomWeightsWarning, match=r"tiny has random weights \(seed 0\): its captions are random words") as said:
        random.caption(photos[0], max_new_tokens=2)
        random.caption(photos[:2], max_new_tokens=2)
        random.embed(photos[0])
    assert len(said) == 1
    with pytest.warns(bliptk.RandomWeightsWarning, match="embeddings carry no meaning"):
        bliptk.load("tiny").embed(photos[0])  # each captioner says it once
    pretrained = bliptk.load(tiny_checkpoint)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pretrained.caption(photos[0], max_new_tokens=2)
        pretrained.embed(photos[0])
    assert pretrained.weights.source == "pretrained" and pretrained.weights.seed is None
    assert pretrained.weights.fingerprint == random.weights.fingerprint  # the checkpoint holds those weights
