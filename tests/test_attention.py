import math
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

import bliptk
from bliptk.cli.main import main
from bliptk.model.loading import blip_config


def _transformers_cross_attention(captioner, features, caption):
    """Cross-attention of transformers' decoder run once over prompt + generated tokens, taken at
    the position that predicted each generated token: (T, L, H, N)."""
    prompt_ids = captioner.tokenizer.encode(caption.prompt)
    ids = torch.tensor([prompt_ids + caption.token_ids])
    with torch.inference_mode():
        output = captioner.model.text_decoder(input_ids=ids, encoder_hidden_states=features, output_attentions=True, use_cache=False)
    stacked = torch.stack(output.cross_attentions, dim=1)[0]  # (L, H, S, N)
    positions = [len(prompt_ids) - 1 + i for i in range(len(caption.token_ids))]
    return stacked[:, :, positions].permute(2, 0, 1, 3)


@pytest.mark.parametrize("model", ["tiny", pytest.param("vit_b", marks=pytest.mark.slow)])
def test_captured_weights_equal_transformers(model, photos, request):
    captioner = request.getfixturevalue(model)
    images = photos[:2]
    captions = captioner.caption(images, max_new_tokens=6, return_attention=True)
    features = captioner.encode_image(images)
    for row, caption in enumerate(captions):
        assert caption.cross_attention.shape[0] == len(caption.token_ids) > 0
        expected = _transformers_cross_attention(captioner, features[row : row + 1], caption)
        torch.testing.assert_close(caption.cross_attention, expected, atol=1e-5, rtol=0)


def _transformers_beam_attention(captioner, pixel_values, max_new_tokens: int, num_beams: int):
    """The best beam of transformers' ``generate(num_beams=..., output_attentions=True)``: its
    generated ids (up to [SEP]) and, for each, the cross-attention of the beam row that produced
    it at that step ``(T, L, H, N)``, followed back through ``beam_indices``. ``generate`` keeps no
    cross-attention for a decoder-only model, so a hook collects what each of its forward passes
    returned, rows in the order ``beam_indices`` counts them."""
    from bliptk.core.tokenizer import CLS_TOKEN_ID, SEP_TOKEN_ID

    prompt_ids = captioner.tokenizer.encode("a photography of")[1:]
    steps = []
    hook = captioner.model.text_decoder.register_forward_hook(lambda module, args, output: steps.append(output.cross_attentions))
    try:
        with torch.inference_mode():
            output = captioner.model.generate(
                pixel_values=pixel_values,
                input_ids=torch.tensor([[CLS_TOKEN_ID, *prompt_ids, SEP_TOKEN_ID]]),
                max_new_tokens=max_new_tokens,
                num_beams=num_beams,
                do_sample=False,
                output_attentions=True,
                return_dict_in_generate=True,
            )
    finally:
        hook.remove()
    generated = output.sequences[0, 1 + len(prompt_ids) :].tolist()
    generated = generated[: generated.index(SEP_TOKEN_ID)] if SEP_TOKEN_ID in generated else generated
    beam_rows = output.beam_indices[0].tolist()
    attention = [torch.stack([layer[beam_rows[t], :, -1] for layer in steps[t]]) for t in range(len(generated))]
    if not attention:  # the caption ended at once: no tokens, no attention
        return generated, torch.zeros((0, *torch.stack([layer[0, :, -1] for layer in steps[0]]).shape))
    return generated, torch.stack(attention)


@pytest.mark.parametrize(
    "model, boost, max_new_tokens",
    [("tiny", 0.0, 10), ("tiny", 6.5, 12), pytest.param("vit_b", 0.0, 8, marks=pytest.mark.slow)],
)
def test_a_beam_captions_attention_equals_transformers_generate_for_that_beam(model, boost, max_new_tokens, photos, request, sep_likely):
    # The tiny net's best beam changes parents along the way (beam_indices 0, 2, 2, 2, 2, 1, ...);
    # with [SEP] raised by 6.5 it ends by [SEP] on the first photo, and at once on the second.
    captioner = request.getfixturevalue(model) if model == "vit_b" else sep_likely(boost)
    for photo in photos[:2]:
        pixel_values = captioner.preprocessor(photo)
        expected_ids, expected = _transformers_beam_attention(captioner, pixel_values, max_new_tokens, num_beams=3)
        caption = captioner.caption(photo, num_beams=3, max_new_tokens=max_new_tokens, return_attention=True)
        assert caption.token_ids == expected_ids
        torch.testing.assert_close(caption.cross_attention, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("model", ["tiny", pytest.param("vit_b", marks=pytest.mark.slow)])
def test_capture_does_not_change_the_caption(model, photos, request):
    captioner = request.getfixturevalue(model)
    plain = captioner.caption(photos, max_new_tokens=8)
    captured = captioner.caption(photos, max_new_tokens=8, return_attention=True)
    assert [c.token_ids for c in captured] == [c.token_ids for c in plain]
    for ours, theirs in zip(captured, plain, strict=True):
        assert ours.logprobs == pytest.approx(theirs.logprobs, abs=1e-4)
    assert all(c.cross_attention is None for c in plain)


def test_unconditional_prompt_and_finished_caption_shapes(tiny, photos):
    caption = tiny.caption(photos[0], prompt="", max_new_tokens=3, return_attention=True)
    assert caption.cross_attention.shape == (3, 2, 4, 37)
    torch.testing.assert_close(caption.cross_attention.sum(-1), torch.ones(3, 2, 4))


@pytest.mark.slow
def test_vit_l_shapes(photos):
    vit_l = bliptk.load("ViT-L/16", pretrained=False)
    caption = vit_l.caption(photos[0], max_new_tokens=3, return_attention=True)
    assert caption.cross_attention.shape == (3, 12, 12, 577)
    assert bliptk.attention_maps(caption).shape == (3, 24, 24)


def test_grid_follows_the_image_size(tmp_path, photos):
    config = blip_config(bliptk.core.models.get_model_spec("tiny"))
    config.vision_config.image_size = 160  # 10 x 10 patches of 16 px
    config.save_pretrained(tmp_path)
    captioner = bliptk.load(tmp_path, pretrained=False)
    caption = captioner.caption(photos[0], max_new_tokens=4, return_attention=True)
    assert caption.cross_attention.shape == (4, 2, 4, 101)
    assert bliptk.attention_maps(caption).shape == (4, 10, 10)


def test_a_capture_that_raises_leaves_nothing_behind(photos, monkeypatch):
    """Attention is computed in the decoding pass itself: a failure mid-caption leaves the
    captioner as it was, and the next captions, with and without attention, are the same."""
    captioner = bliptk.load("tiny")
    before = captioner.caption(photos[0], max_new_tokens=6, return_attention=True)
    layer = captioner.model.text_decoder.bert.encoder.layer[1].output.LayerNorm
    original_forward = layer.forward
    calls = {"n": 0}

    def failing_forward(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("boom in step 3")
        return original_forward(*args, **kwargs)

    monkeypatch.setattr(layer, "forward", failing_forward)
    with pytest.raises(RuntimeError, match="boom in step 3"):
        captioner.caption(photos[0], max_new_tokens=6, return_attention=True)
    monkeypatch.undo()
    after = captioner.caption(photos[0], max_new_tokens=6, return_attention=True)
    assert after.token_ids == before.token_ids and torch.equal(after.cross_attention, before.cross_attention)
    assert captioner.caption(photos[0], max_new_tokens=6).cross_attention is None


def test_maps_follow_the_pages_recipe(tiny, photos):
    caption = tiny.caption(photos[0], max_new_tokens=5, return_attention=True)
    weights = caption.cross_attention.numpy()  # (T, L, H, N)
    last = weights[:, -1, :, 1:]  # the last layer, without the first image token
    last = last - last.min(axis=0, keepdims=True)  # each patch's minimum over the tokens
    expected = last.reshape(5, 4, 6, 6).mean(axis=1)
    np.testing.assert_allclose(bliptk.attention_maps(caption).numpy(), expected, atol=1e-7)


def test_map_options(tiny, photos):
    caption = tiny.caption(photos[0], max_new_tokens=5, return_attention=True)
    weights = caption.cross_attention.numpy()
    raw = weights[..., 1:].reshape(5, 2, 4, 6, 6)
    np.testing.assert_allclose(bliptk.attention_maps(caption, layer=0, heads=2, subtract_min=False).numpy(), raw[:, 0, 2], atol=1e-7)
    np.testing.assert_allclose(
        bliptk.attention_maps(caption, layer=[0, 1], heads="max", subtract_min=False).numpy(), raw.mean(1).max(1), atol=1e-7
    )
    np.testing.assert_allclose(bliptk.attention_maps(caption, heads=-1, subtract_min=False).numpy(), raw[:, -1, -1], atol=1e-7)
    with pytest.raises(ValueError, match="return_attention=True"):
        bliptk.attention_maps(tiny.caption(photos[0], max_new_tokens=2))
    with pytest.raises(ValueError, match=r"layer must be in \[-2, 1\]"):
        bliptk.attention_maps(caption, layer=2)
    with pytest.raises(ValueError, match="heads must be"):
        bliptk.attention_maps(caption, heads="median")


def test_overlay_is_red_where_the_map_is_high(photos):
    image = Image.new("RGB", (64, 32), (255, 255, 255))
    attention_map = np.zeros((4, 4))
    attention_map[0, 0] = 1.0
    overlaid = np.asarray(bliptk.overlay_attention(image, attention_map, alpha=0.4))
    assert overlaid.shape == (32, 64, 3)
    assert overlaid[0, 0].tolist() == [255, 153, 153]  # 0.6 * white + 0.4 * red
    assert overlaid[-1, -1].tolist() == [255, 255, 255]
    # On a dark photo the low end leaves it as it is (no white veil) and the high end is as red.
    dark = np.asarray(bliptk.overlay_attention(Image.new("RGB", (64, 32), (20, 20, 20)), attention_map))
    assert dark[-1, -1].tolist() == [20, 20, 20]
    assert dark[0, 0].tolist() == [161, 8, 8]  # 0.4 * dark + 0.6 * red, the default opacity


def _titles(figure):
    return [ax.get_title() for ax in figure.axes if ax.get_title()]


def test_drawings_render_headless_one_panel_per_token(tiny, photos, tmp_path):
    caption = tiny.caption(photos[0], max_new_tokens=7, return_attention=True)
    maps = bliptk.plot_attention_maps(caption, columns=5)
    overlays = bliptk.plot_attention_overlays(photos[0], caption, columns=3, layer=0, heads="max")
    for figure, name, columns, rows, scales in ((maps, "maps.png", 5, 2, 0), (overlays, "overlays.png", 3, 3, 1)):
        assert _titles(figure) == caption.tokens
        assert len(figure.axes) == columns * rows + scales  # the overlays have their colour scale
        figure.savefig(tmp_path / name, dpi=50)
        width, height = figure.get_size_inches() * 50
        assert np.allclose(Image.open(tmp_path / name).size, (width, height), atol=1)  # pixels of a whole-inch figure, rounded
    single = bliptk.plot_attention_map(bliptk.attention_maps(caption)[0], "token", image=photos[0])
    assert _titles(single) == ["token"]
    from matplotlib.figure import Figure

    ax = Figure().subplots()
    assert bliptk.plot_attention_map(np.eye(6), ax=ax) is ax.figure


def test_cli_writes_the_grid(tiny, photos, tmp_path, capsys):
    out = tmp_path / "grid.png"
    args = ["attention", str(photos[0]), "--out", str(out), "--model", "tiny", "--max-new-tokens", "4", "--prompt", "the woman"]
    assert main(args + ["--layer", "0", "1", "--columns", "2"]) == 0
    caption = tiny.caption(photos[0], prompt="the woman", max_new_tokens=4)
    assert capsys.readouterr().out.startswith(f"{photos[0]}: {caption.text}\n")
    assert Image.open(out).size == (560, 478)  # 2 x 2 panels of 2.8 inches as tall as the photo, with the colour scale, at 100 dpi
    assert main(args + ["--layer", "7"]) == 2  # an existing --out is replaced only on request
    assert capsys.readouterr().err == f"bliptk: error: {out} exists; pass --overwrite to replace it, or choose another file\n"
    assert main(args + ["--layer", "7", "--overwrite"]) == 2
    assert capsys.readouterr().err.splitlines()[-1].startswith("bliptk: error: --layer must be in [-2, 1]")


def test_attention_entropy_spans_one_patch_to_all_alike(tiny, photos):
    caption = tiny.caption(photos[0], max_new_tokens=4, return_attention=True)
    entropy = bliptk.attention_entropy(caption)
    assert entropy.shape == (4, 2, 4) and bool((entropy > 0).all()) and bool((entropy < math.log(36)).all())
    uniform = replace(caption, cross_attention=torch.full_like(caption.cross_attention, 1 / 37))
    torch.testing.assert_close(bliptk.attention_entropy(uniform), torch.full((4, 2, 4), math.log(36)))
    one_patch = torch.zeros_like(caption.cross_attention)
    one_patch[..., 0], one_patch[..., 7] = 0.5, 0.5  # the class token is dropped
    torch.testing.assert_close(bliptk.attention_entropy(replace(caption, cross_attention=one_patch)), torch.zeros(4, 2, 4))
    with pytest.raises(bliptk.InvalidOptionError, match="return_attention=True"):
        bliptk.attention_entropy(tiny.caption(photos[0], max_new_tokens=2))


def test_an_image_far_wider_than_tall_is_drawn_square_without_a_warning(tiny, tmp_path):
    """A 5000 x 20 image drew slivers with a matplotlib warning (issue 31)."""
    import warnings

    import numpy as np

    strip = np.random.default_rng(0).integers(0, 256, (20, 5000, 3), dtype=np.uint8)
    caption = tiny.caption(strip, max_new_tokens=3, return_attention=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        figure = bliptk.plot_attention_overlays(strip, caption)
        figure.savefig(tmp_path / "strip.png")
    image_axes = [ax for ax in figure.axes if ax.images]
    heights = {ax.images[0].get_array().shape[:2] for ax in image_axes}
    assert heights == {(384, 384)}  # as the model sees it
    assert all(ax.get_position().height > 0.1 for ax in image_axes)


def test_a_character_no_font_draws_is_escaped_and_said_once_under_the_figure(photos):
    """Escaped the same way in every panel, and the figure says what the escapes are."""
    from types import SimpleNamespace

    from bliptk.core.figures import ESCAPE_NOTE, displayable

    if displayable("猫") == "猫":
        pytest.skip("this machine has a font that draws CJK: nothing is escaped")
    drawn = SimpleNamespace(maps=np.random.default_rng(0).random((3, 4, 4)), tokens=["a", "猫", "on"], name="Grad-CAM")
    for figure in (bliptk.plot_attention_maps(drawn), bliptk.plot_attention_overlays(photos[0], drawn)):
        assert "\\u732b" in _titles(figure) and figure.get_supxlabel() == ESCAPE_NOTE
    plain = SimpleNamespace(maps=drawn.maps, tokens=["a", "cat", "on"], name="Grad-CAM")
    assert bliptk.plot_attention_maps(plain).get_supxlabel() == ""
