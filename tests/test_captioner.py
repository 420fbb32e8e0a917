import warnings

import numpy as np
import pytest
import torch

import bliptk
from bliptk.model.parity import hf_generate

PROMPTS = ["a photography of", "", "the woman"]


@pytest.mark.parametrize("prompt", PROMPTS)
def test_greedy_equals_transformers_generate_tiny(tiny, photos, prompt):
    pixel_values = tiny.preprocessor(photos)
    expected = hf_generate(tiny, pixel_values, prompt, max_new_tokens=20)
    captions = tiny.caption(photos, prompt=prompt, max_new_tokens=20)
    assert [c.token_ids for c in captions] == expected
    assert len({tuple(row) for row in expected}) == len(photos)  # the images do matter


@pytest.mark.slow
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
    expected = [score.log_softmax(-1)[0, t].item() for score, t in zip(output.scores, caption.token_ids, strict=True)]
    assert caption.logprobs == pytest.approx(expected, abs=1e-4)
    assert caption.logprob == pytest.approx(sum(expected), abs=1e-3)


def test_a_batch_equals_one_image_at_a_time(tiny, photos):
    batch = tiny.caption(photos, max_new_tokens=10)
    single = [tiny.caption(photo, max_new_tokens=10) for photo in photos]
    assert [c.token_ids for c in batch] == [c.token_ids for c in single]
    assert [c.text for c in batch] == [c.text for c in single]
    small_batches = tiny.caption(photos, max_new_tokens=10, batch_size=2)
    assert [c.token_ids for c in small_batches] == [c.token_ids for c in single]


def test_caption_stops_at_sep(tiny, photos, sep_likely):
    """With [SEP] made certain, the caption ends at once, [SEP] excluded; without, it runs to the limit."""
    free = tiny.caption(photos[0], max_new_tokens=3)
    stopped = sep_likely(100.0).caption(photos[0], max_new_tokens=3)
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
    checked = 0
    for seed in range(5):
        caption = tiny.caption_features(features, bliptk.DecodingOptions(temperature=2.0, top_k=k, seed=seed, max_new_tokens=8))[0]
        ids = torch.tensor([[30522, 1037, 5855, 1997] + caption.token_ids])
        logits = tiny.text_decoder(ids, tiny.text_decoder.start(features, ids.shape[1]))
        top = logits[0, 3:].topk(k, dim=-1).indices
        for step, token in enumerate(caption.token_ids):
            assert token in top[step].tolist()
            checked += 1
    assert checked >= 20  # the samples had tokens to check


def test_unconditional_caption_has_no_prompt_text(tiny, photos):
    caption = tiny.caption(photos[0], prompt="", max_new_tokens=5)
    assert caption.prompt == "" and caption.text == tiny.tokenizer.decode(caption.token_ids)


def test_zero_new_tokens_gives_the_prompt(tiny, photos):
    caption = tiny.caption(photos[0], prompt="the park is", max_new_tokens=0)
    assert caption.text == "the park is" and caption.token_ids == []


def test_encode_image_shape(tiny, photos):
    assert tiny.encode_image(photos).shape == (3, 37, 48)


@pytest.mark.slow
def test_encode_image_shape_full_size(vit_b, photos):
    assert vit_b.encode_image(photos[0]).shape == (1, 577, 768)


def test_top_k_and_top_p_keep_the_right_tokens():
    from bliptk.core.decoding_strategies import sampling_distribution

    probabilities = np.array([[0.5, 0.3, 0.15, 0.05]])
    scores = np.log(probabilities)
    assert np.flatnonzero(sampling_distribution(scores, 1.0, top_p=0.8)[0]).tolist() == [0, 1]  # 0.5 + 0.3 reaches 0.8
    assert np.flatnonzero(sampling_distribution(scores, 1.0, top_p=0.81)[0]).tolist() == [0, 1, 2]
    assert np.flatnonzero(sampling_distribution(scores, 1.0, top_p=0.1)[0]).tolist() == [0]
    np.testing.assert_allclose(sampling_distribution(scores, 1.0, top_k=2)[0], [0.625, 0.375, 0, 0])
    np.testing.assert_allclose(sampling_distribution(scores, 0.5)[0], probabilities[0] ** 2 / (probabilities[0] ** 2).sum())


def test_a_sample_is_drawn_from_its_distribution():
    from bliptk.core.decoding_strategies import draw

    generator = np.random.default_rng(0)
    counts = np.bincount([draw(np.array([0.7, 0.0, 0.3]), generator) for _ in range(4000)], minlength=3)
    assert counts[1] == 0 and abs(counts[0] / 4000 - 0.7) < 0.03


@pytest.mark.parametrize("model", ["tiny", pytest.param("vit_b", marks=pytest.mark.slow)])
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
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        bliptk.load("tiny").embed(photos[0])  # the same random weights: said once a process, whatever holds them
    with pytest.warns(bliptk.RandomWeightsWarning, match=r"tiny has random weights \(seed 1\).*embeddings carry no meaning"):
        bliptk.load("tiny", weights_seed=1).embed(photos[0])  # other random weights: said again
    pretrained = bliptk.load(tiny_checkpoint)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pretrained.caption(photos[0], max_new_tokens=2)
        pretrained.embed(photos[0])
    assert pretrained.weights.source == "pretrained" and pretrained.weights.seed is None
    assert pretrained.weights.fingerprint == random.weights.fingerprint  # the checkpoint holds those weights
