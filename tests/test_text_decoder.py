import pytest
import torch

import bliptk
from bliptk.model import text_decoder

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
        theirs = captioner.model.text_decoder(input_ids=ids, encoder_hidden_states=features, use_cache=False).logits
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("split", [True, False])  # whichever product this machine's steps take
@pytest.mark.parametrize("model", ["tiny", pytest.param("vit_b", marks=pytest.mark.slow)])
def test_logits_with_cache_equal_logits_without(model, photos, request, split, monkeypatch):
    monkeypatch.setattr(text_decoder, "split_product_pays", lambda: split)
    captioner = request.getfixturevalue(model)
    decoder = captioner.text_decoder
    features = _features(captioner, photos)
    ids = torch.tensor([PROMPT + [2450, 2003, 3564, 2006]] * 2)
    whole = decoder(ids, decoder.start(features, max_length=ids.shape[1]))
    state = decoder.start(features, max_length=ids.shape[1])
    steps = [decoder(ids[:, :4], state)] + [decoder(ids[:, i : i + 1], state) for i in range(4, ids.shape[1])]
    assert state.length == ids.shape[1]
    # One token at a time takes the matrix-vector products (split or not), the whole sequence a matrix product:
    # the same sums in another order, so equal to float32 rounding (as against transformers).
    torch.testing.assert_close(torch.cat(steps, dim=1), whole, atol=1e-4, rtol=1e-4)


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


@pytest.mark.parametrize("slow, expected", [("linear", True), ("split", False)])
def test_the_split_product_is_taken_only_where_it_reads_clearly_faster(monkeypatch, slow, expected):
    import time as clock

    def slowed(function, name):
        def product(*args):
            result = function(*args)
            if name == slow:
                clock.sleep(0.02)  # far beyond the 1.3x margin
            return result

        return product

    monkeypatch.setattr(text_decoder.F, "linear", slowed(text_decoder.F.linear, "linear"))
    monkeypatch.setattr(text_decoder, "_split_product", slowed(text_decoder._split_product, "split"))
    text_decoder.split_product_pays.cache_clear()
    try:
        assert text_decoder.split_product_pays() is expected
    finally:
        text_decoder.split_product_pays.cache_clear()


def test_the_choice_can_be_pinned(monkeypatch):
    for pinned in (True, False):
        monkeypatch.setenv("BLIPTK_SPLIT_PRODUCT", str(int(pinned)))
        text_decoder.split_product_pays.cache_clear()
        assert text_decoder.split_product_pays() is pinned
    text_decoder.split_product_pays.cache_clear()


def test_the_split_product_is_the_linear_layer(tiny):
    from bliptk.model.text_decoder import _split_product

    generator = torch.Generator().manual_seed(0)
    for rows, (outputs, inputs) in [(1, (768, 768)), (3, (3072, 768)), (8, (30524, 48))]:
        weight, x = torch.randn(outputs, inputs, generator=generator), torch.randn(rows, inputs, generator=generator)
        torch.testing.assert_close(_split_product(weight, x), torch.nn.functional.linear(x, weight), atol=1e-4, rtol=1e-5)


def test_int8_weights_round_trip_within_half_a_step():
    from bliptk.model.text_decoder import quantize_int8

    weight = torch.randn(64, 32, generator=torch.Generator().manual_seed(1)) * torch.linspace(0.1, 3, 64)[:, None]
    values, scales = quantize_int8(weight)
    assert values.dtype == torch.int8 and scales.shape == (64,) and int(values.abs().max()) == 127
    assert bool(((values.float() * scales[:, None] - weight).abs() <= scales[:, None] / 2 + 1e-6).all())


def test_an_int8_decoder_steps_with_int8_weights_close_to_bfloat16(photos):
    quantized, plain = bliptk.load("tiny", dtype="int8"), bliptk.load("tiny", dtype="bfloat16")
    assert quantized.weights.dtype == "int8" and quantized.dtype == torch.bfloat16
    assert len(quantized.text_decoder.int8_weights) == 2 * 8 + 2  # every projection of a step, and the head's two
    features = plain.encode_image(photos[0])
    ours = quantized.text_decoder(torch.tensor([PROMPT]), quantized.text_decoder.start(features, 4))[0, -1].float()
    theirs = plain.text_decoder(torch.tensor([PROMPT]), plain.text_decoder.start(features, 4))[0, -1].float()
    # int8 weights at work: not bfloat16's logits, yet close to them (6% on this small random net).
    assert not torch.equal(ours, theirs) and (ours - theirs).norm() / theirs.norm() < 0.1
    assert len(quantized.caption(photos[0], max_new_tokens=5).token_ids) == 5
    with pytest.raises(bliptk.InvalidOptionError, match="int8 decoding runs on the CPU over a bfloat16 model"):
        bliptk.load("tiny").text_decoder.quantize()
