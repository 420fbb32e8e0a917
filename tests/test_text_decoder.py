import pytest
import torch

PROMPT = [30522, 1037, 5855, 1997]


def _features(captioner, photos):
    return captioner.encode_image(photos[:2])


@pytest.mark.parametrize("model", ["tiny", pytest.param("vit_b", marks=pytest.mark.slow)])
def test_logits_equal_transformers_forward(model, photos, request):
    captioner = request.getfixturevalue(model)
    features = _features(captioner, photos)
    ids = torch.tensor([PROMPT + [2450, 2003, 3564]] * 2)
    state = captioner.text_decoder.start(features, max_length=ids.shape[1])
    ours = captioner.text_decoder(ids, state)
    with torch.inference_mode():
        theirs = captioner.model.text_decoder(
            input_ids=ids, encoder_hidden_states=features, use_cache=False
        ).logits
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("model", ["tiny", pytest.param("vit_b", marks=pytest.mark.slow)])
def test_logits_with_cache_equal_logits_without(model, photos, request):
    captioner = request.getfixturevalue(model)
    decoder = captioner.text_decoder
    features = _features(captioner, photos)
    ids = torch.tensor([PROMPT + [2450, 2003, 3564, 2006]] * 2)
    whole = decoder(ids, decoder.start(features, max_length=ids.shape[1]))
    state = decoder.start(features, max_length=ids.shape[1])
    steps = [decoder(ids[:, :4], state)] + [decoder(ids[:, i : i + 1], state) for i in range(4, ids.shape[1])]
    assert state.length == ids.shape[1]
    torch.testing.assert_close(torch.cat(steps, dim=1), whole, atol=1e-5, rtol=1e-5)


def test_cross_attention_weights_leave_logits_unchanged(tiny, photos):
    decoder = tiny.text_decoder
    features = _features(tiny, photos)
    ids = torch.tensor([PROMPT] * 2)
    plain = decoder(ids, decoder.start(features, 4))
    logits, weights = decoder(ids, decoder.start(features, 4), return_cross_attention=True)
    torch.testing.assert_close(logits, plain, atol=1e-4, rtol=1e-4)
    assert len(weights) == 2 and weights[0].shape == (2, 4, 4, 37)
    torch.testing.assert_close(weights[0].sum(-1), torch.ones(2, 4, 4))


def test_cache_overflow_and_position_limit_are_refused(tiny, photos):
    decoder = tiny.text_decoder
    state = decoder.start(_features(tiny, photos), max_length=4)
    decoder(torch.tensor([PROMPT] * 2), state)
    with pytest.raises(ValueError, match="cache holds 4 positions"):
        decoder(torch.tensor([[1037]] * 2), state)
    with pytest.raises(ValueError, match="512 positions"):
        decoder.start(_features(tiny, photos), max_length=513)


def test_select_reorders_rows(tiny, photos):
    decoder = tiny.text_decoder
    features = _features(tiny, photos)
    state = decoder.start(features, max_length=5)
    decoder(torch.tensor([PROMPT] * 2), state)
    swapped = state.select(torch.tensor([1, 0]))
    logits = decoder(torch.tensor([[2450]] * 2), swapped)
    alone = decoder.start(features[1:], max_length=5)
    decoder(torch.tensor([PROMPT]), alone)
    torch.testing.assert_close(logits[0], decoder(torch.tensor([[2450]]), alone)[0], atol=1e-5, rtol=1e-5)
