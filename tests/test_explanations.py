"""bliptk.explain against references computed here from transformers' BlipForConditionalGeneration:
its eager attention probabilities (output_attentions=True) and torch.autograd, with the formulas
written out from the papers (LAVIS's compute_gradcam, Chefer et al. 2021, Abnar and Zuidema 2020)."""

from __future__ import annotations

import copy
import sys
from dataclasses import dataclass, field

import numpy as np
import pytest
import torch
from conftest import VIDEOS

import bliptk
from bliptk.attribution import passes, registry
from bliptk.attribution import relevance as relevance_method
from bliptk.core.errors import InvalidOptionError
from bliptk.core.video import VideoFrames


def _pass(captioner, image, prompt: str, token_ids: list[int], encoder_graph: bool = False):
    """transformers' teacher-forced pass: y_t (T,), vision attentions, decoder self- and
    cross-attentions (each a tuple of (1, H, Q, K)), the prompt's length P."""
    model = captioner.model
    pixels = captioner.preprocessor(image)
    prompt_ids = captioner.tokenizer.encode(prompt)
    ids = torch.tensor([prompt_ids + token_ids])
    with torch.enable_grad():
        vision = model.vision_model(pixel_values=pixels, output_attentions=True)
        features = vision.last_hidden_state
        if not encoder_graph:
            features = features.detach().requires_grad_(True)
        out = model.text_decoder(input_ids=ids, encoder_hidden_states=features, output_attentions=True, return_dict=True)
        start = len(prompt_ids) - 1
        logprobs = out.logits[0, start : start + len(token_ids)].log_softmax(-1)
        y = logprobs[torch.arange(len(token_ids)), torch.tensor(token_ids, dtype=torch.long)]
    return y, vision.attentions, out.attentions, out.cross_attentions, len(prompt_ids)


def _close(ours: np.ndarray, reference: np.ndarray, relative: float = 1e-4) -> None:
    scale = np.abs(reference).max()
    assert scale > 0
    np.testing.assert_allclose(ours, reference, rtol=0, atol=relative * scale)


# --- Grad-CAM ---------------------------------------------------------------------------------------------


def _reference_gradcam(captioner, image, caption, layer: int) -> np.ndarray:
    """LAVIS's compute_gradcam for token t: mean over heads of A * clamp(dy_t/dA, min=0) at the
    query that predicts t, class token dropped."""
    y, _, _, cross, prompt_length = _pass(captioner, image, caption.prompt, caption.token_ids)
    weights = cross[layer]
    maps = []
    for t in range(len(caption.token_ids)):
        (gradient,) = torch.autograd.grad(y[t], weights, retain_graph=True)
        p = prompt_length - 1 + t
        maps.append((weights[0, :, p] * gradient[0, :, p].clamp(min=0)).mean(0)[1:].detach())
    grid = captioner.image_encoder.grid_size
    return torch.stack(maps).reshape(-1, grid, grid).numpy()


@pytest.mark.slow
def test_gradcam_equals_transformers_autograd_on_vit_b(vit_b, photos):
    caption = vit_b.caption(photos[0], max_new_tokens=8)
    assert len(caption.token_ids) == 8
    for layer in (6, 11):  # the default (the middle) and the last
        explanation = bliptk.explain(vit_b, photos[0], caption, method="gradcam", layer=layer)
        assert explanation.maps.shape == (8, 24, 24) and explanation.maps.dtype == np.float32
        assert explanation.layer == layer
        _close(explanation.maps, _reference_gradcam(vit_b, photos[0], caption, layer))


def test_gradcam_equals_transformers_autograd_on_tiny(tiny, photos):
    caption = tiny.caption(photos[1], max_new_tokens=6)
    explanation = bliptk.explain(tiny, photos[1], caption)
    assert explanation.layer == 1  # the middle of 2: tiny's last
    _close(explanation.maps, _reference_gradcam(tiny, photos[1], caption, 1))
    _close(bliptk.explain(tiny, photos[1], caption, layer=0).maps, _reference_gradcam(tiny, photos[1], caption, 0))


def test_gradcam_default_layer_is_the_middle(vit_b):
    assert registry.resolved_layer("gradcam", None, 12) == 6
    assert registry.resolved_layer("attention", None, 12) == 11
    assert registry.resolved_layer("gradcam", -1, 12) == 11
    assert registry.resolved_layer("relevance", None, 12) is None


# --- relevance (Chefer, Gur and Wolf 2021) ------------------------------------------------------------------


def _avg_heads(a, g):
    """Rule 5: Ā = E_h[(∇A ⊙ A)+]."""
    return (g * a).clamp(min=0).mean(dim=0)


def _residual_normalised(r):
    """Eqs. 8-9, with 0/0 = 0: R̂ = R - I, rows scaled to sum 1 where they sum to more than 0, + I."""
    eye = torch.eye(r.shape[-1])
    hat = r - eye
    out = torch.zeros_like(hat)
    for i in range(hat.shape[0]):
        total = hat[i].sum()
        if total > 0:
            out[i] = hat[i] / total
    return out + eye


def _reference_relevance(captioner, image, caption):
    y, vision_attn, self_attn, cross_attn, prompt_length = _pass(captioner, image, caption.prompt, caption.token_ids, encoder_graph=True)
    tensors = [*vision_attn, *self_attn, *cross_attn]
    n_vision, n_text = len(vision_attn), len(self_attn)
    maps, text = [], []
    for t in range(len(caption.token_ids)):
        grads = torch.autograd.grad(y[t], tensors, retain_graph=True)
        a = [x[0].detach() for x in tensors]
        g = [x[0] for x in grads]
        image_tokens = a[0].shape[-1]
        r_ii = torch.eye(image_tokens)
        for layer in range(n_vision):  # rule 6 in the image encoder: R^ii += Ā R^ii
            r_ii = r_ii + _avg_heads(a[layer], g[layer]) @ r_ii
        queries = a[n_vision].shape[-1]
        r_qq, r_qi = torch.eye(queries), torch.zeros(queries, image_tokens)
        for layer in range(n_text):
            s = n_vision + layer
            c = n_vision + n_text + layer
            a_qq = _avg_heads(a[s], g[s])
            r_qq, r_qi = r_qq + a_qq @ r_qq, r_qi + a_qq @ r_qi  # rules 6 and 7
            r_qi = r_qi + _residual_normalised(r_qq).T @ _avg_heads(a[c], g[c]) @ _residual_normalised(r_ii)  # rule 10
        p = prompt_length - 1 + t
        maps.append(r_qi[p, 1:])
        text.append(r_qq[p])
    grid = captioner.image_encoder.grid_size
    return torch.stack(maps).reshape(-1, grid, grid).numpy(), torch.stack(text).numpy()


def test_relevance_equals_the_papers_equations(tiny, photos):
    caption = tiny.caption(photos[2], max_new_tokens=6)
    explanation = bliptk.explain(tiny, photos[2], caption, method="relevance")
    maps, text = _reference_relevance(tiny, photos[2], caption)
    _close(explanation.maps, maps)
    assert explanation.text_relevance.shape == (6, len(tiny.tokenizer.encode(caption.prompt)) + 6)
    _close(explanation.text_relevance, text)
    assert explanation.layer is None and explanation.maps.min() >= 0


def test_relevance_keeps_every_cross_attention_term(tiny, photos):
    """The rows of R^qq after the explained position get no gradient; normalised, they stay
    identity rows. Letting them be NaN and zeroing NaN sums afterwards (Chefer's DETR code) would
    leave only the first cross-attention layer's term... or none: the maps would be all zero."""
    relevance = torch.eye(4)
    relevance[1, 0] = 0.5
    normalised = relevance_method._normalized(relevance)
    assert not normalised.isnan().any()
    torch.testing.assert_close(normalised[2:], torch.eye(4)[2:])
    torch.testing.assert_close(normalised[1], torch.tensor([1.0, 1.0, 0.0, 0.0]))
    explanation = bliptk.explain(tiny, photos[2], tiny.caption(photos[2], max_new_tokens=3), method="relevance")
    assert (explanation.maps.reshape(3, -1).max(axis=1) > 0).all()


# --- rollout -------------------------------------------------------------------------------------------------


def _rollout(layers):
    """Abnar and Zuidema's rollout as Chefer's baseline computes it: (A + I) rows normalised, multiplied up."""
    eye = torch.eye(layers[0].shape[-1])
    joint = None
    for a in layers:
        a = (a + eye) / (a + eye).sum(dim=-1, keepdim=True)
        joint = a if joint is None else a @ joint
    return joint


def test_rollout_equals_chefers_baseline_over_what_the_token_saw(tiny, photos):
    """Chefer's generate_rollout: R^qi = R^qq^T · Ā^qi(last layer) · R^ii, row p, over the
    sequence the model had read when it chose token t (here computed on that prefix alone)."""
    caption = tiny.caption(photos[0], max_new_tokens=5)
    explanation = bliptk.explain(tiny, photos[0], caption, method="rollout")
    grid = tiny.image_encoder.grid_size
    for t in range(5):
        _, vision_attn, self_attn, cross_attn, prompt_length = _pass(tiny, photos[0], caption.prompt, caption.token_ids[:t])
        r_ii = _rollout([a[0].detach().mean(0) for a in vision_attn])
        r_qq = _rollout([a[0].detach().mean(0) for a in self_attn])
        r_qi = r_qq.T @ cross_attn[-1][0].detach().mean(0) @ r_ii
        _close(explanation.maps[t], r_qi[-1, 1:].reshape(grid, grid).numpy())


# --- attention and integrated gradients ---------------------------------------------------------------------


def test_attention_method_is_the_pages_maps(tiny, photos):
    caption = tiny.caption(photos[0], max_new_tokens=7, return_attention=True)
    explanation = bliptk.explain(tiny, photos[0], caption, method="attention")
    _close(explanation.maps, bliptk.attention_maps(caption).numpy(), 1e-5)
    assert explanation.layer == 1
    _close(
        bliptk.explain(tiny, photos[0], caption, method="attention", layer=0).maps, bliptk.attention_maps(caption, layer=0).numpy(), 1e-5
    )


@pytest.mark.slow
def test_integrated_gradients_completeness_on_vit_b(vit_b, photos):
    """captum's attributions add up to y(image) - y(baseline) within 5% at the default 32 steps."""
    caption = vit_b.caption(photos[1], max_new_tokens=1)
    explanation = bliptk.explain(vit_b, photos[1], caption, method="integrated_gradients")
    y, *_ = _pass(vit_b, photos[1], caption.prompt, caption.token_ids)
    assert explanation.maps.shape == (1, 24, 24)
    encoder = vit_b.image_encoder
    with torch.no_grad():
        zero = encoder.run(None, patches=torch.zeros(1, 576, 768))
        y_baseline = passes.token_logprobs(
            vit_b, zero, passes.Target(caption.prompt, vit_b.tokenizer.encode(caption.prompt), caption.token_ids, "")
        )[0]
    difference = (y.detach() - y_baseline).numpy()
    np.testing.assert_allclose(
        explanation.maps.reshape(1, -1).sum(1) - difference, explanation.completeness_gap, atol=1e-3 * np.abs(difference).max()
    )
    assert (np.abs(explanation.completeness_gap) < 0.05 * np.abs(difference)).all()


def test_integrated_gradients_gap_shrinks_with_steps(tiny, photos):
    caption = tiny.caption(photos[1], max_new_tokens=1)
    gaps = [
        abs(float(bliptk.explain(tiny, photos[1], caption, method="integrated_gradients", ig_steps=s).completeness_gap[0]))
        for s in (8, 512)
    ]
    assert gaps[1] < gaps[0] and gaps[1] < 0.05


# --- what explaining must not change, and odd input -----------------------------------------------------


@pytest.mark.parametrize("method", registry.EXPLANATION_METHODS)
def test_explaining_changes_no_caption(tiny, photos, method):
    caption = tiny.caption(photos[0], max_new_tokens=4)
    before = copy.deepcopy(caption)
    weights = {name: p.detach().clone() for name, p in tiny.model.named_parameters()}
    steps = {"ig_steps": 4} if method == "integrated_gradients" else {}
    explanation = bliptk.explain(tiny, photos[0], caption, method=method, **steps)
    assert caption == before
    assert tiny.caption(photos[0], max_new_tokens=4) == before
    assert all(p.grad is None and torch.equal(p, weights[name]) for name, p in tiny.model.named_parameters())
    assert explanation.tokens == caption.tokens and explanation.token_ids == caption.token_ids
    assert explanation.maps.shape == (4, 6, 6) and np.isfinite(explanation.maps).all()
    assert explanation.provenance["weights"] == tiny.weights.as_dict()
    assert torch.is_grad_enabled()


def test_caption_as_string_none_or_caption_agree(tiny, photos):
    caption = tiny.caption(photos[0], max_new_tokens=4)
    given = bliptk.explain(tiny, photos[0], caption)
    captioned = bliptk.explain(tiny, photos[0], max_new_tokens=4)
    words = tiny.tokenizer.decode(caption.token_ids)
    as_text = bliptk.explain(tiny, photos[0], words)
    whole = bliptk.explain(tiny, photos[0], caption.text)  # Caption.text starts with the prompt
    for other in (captioned, as_text, whole):
        assert other.token_ids == caption.token_ids and other.prompt == caption.prompt
        np.testing.assert_allclose(other.maps, given.maps, atol=1e-6)
    prompted = bliptk.explain(tiny, photos[0], "a dog", prompt="a picture of")
    assert prompted.prompt == "a picture of" and prompted.tokens == ["a", "dog"] and prompted.text == "a picture of a dog"


def test_a_video_of_identical_frames_explains_as_its_image(tiny, photos):
    frame = bliptk.load_image(photos[0])
    video = VideoFrames([frame, frame], [0.0, 1.0])
    caption = tiny.caption(photos[0], "a video of", max_new_tokens=3)
    for method in registry.EXPLANATION_METHODS:
        steps = {"ig_steps": 8} if method == "integrated_gradients" else {}
        of_image = bliptk.explain(tiny, photos[0], caption, method=method, **steps)
        of_video = bliptk.explain(tiny, video, caption, method=method, **steps)
        np.testing.assert_allclose(of_video.maps, of_image.maps, rtol=1e-4, atol=1e-5 * np.abs(of_image.maps).max())


def test_a_video_file_is_explained_from_its_frames(tiny):
    video = sorted(VIDEOS.glob("*.mp4"))[0]
    explanation = bliptk.explain(tiny, video, max_new_tokens=2, num_frames=2)
    assert explanation.prompt == "a video of" and explanation.maps.shape == (2, 6, 6)
    assert explanation.provenance["num_frames"] == 2


def test_a_caption_of_no_tokens_has_no_maps(sep_likely, photos):
    captioner = sep_likely(60.0)
    caption = captioner.caption(photos[0])
    assert caption.token_ids == []
    for method in registry.EXPLANATION_METHODS:
        steps = {"ig_steps": 2} if method == "integrated_gradients" else {}
        explanation = bliptk.explain(captioner, photos[0], caption, method=method, **steps)
        assert explanation.maps.shape == (0, 6, 6)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (
            {"method": "lrp"},
            "method must be one of attention, gradcam, relevance, rollout, integrated_gradients, occlusion, shapley, got 'lrp'",
        ),
        ({"method": "relevance", "layer": 1}, "relevance uses all decoder layers: drop layer (it applies to attention and gradcam)"),
        ({"layer": 2}, "layer must be an integer in [-2, 1] (the decoder has 2 layers), got 2"),
        ({"layer": True}, "layer must be an integer in [-2, 1]"),
        ({"method": "integrated_gradients", "ig_steps": 0}, "ig_steps must be an integer >= 1, got 0"),
        ({"ig_steps": 8}, "ig_steps applies to the integrated_gradients method, not gradcam"),
        ({"caption": "", "prompt": "a"}, "the caption '' has no tokens after the prompt 'a' to explain"),
        ({"caption": 3}, "caption must be a Caption, a string or None, got int"),
        ({"caption": "a dog", "max_new_tokens": 3}, "decoding options apply when explain captions the image itself"),
        ({"num_return_sequences": 2, "temperature": 1.0}, "explain explains one caption: num_return_sequences must be 1"),
        ({"max_new_tokens": 511}, "prompt (4 tokens) plus max_new_tokens (511) is 515 positions; the decoder has 512"),
        ({"beams": 2}, "unknown option(s) beams"),
    ],
)
def test_mistakes_are_named(tiny, photos, arguments, message):
    with pytest.raises(InvalidOptionError) as raised:
        bliptk.explain(tiny, photos[0], **arguments)
    assert message in str(raised.value)


def test_a_given_captions_prompt_and_options_are_its_own(tiny, photos):
    caption = tiny.caption(photos[0], max_new_tokens=2)
    with pytest.raises(InvalidOptionError, match="the caption was made from the prompt 'a photography of', not 'a picture of'"):
        bliptk.explain(tiny, photos[0], caption, prompt="a picture of")
    with pytest.raises(InvalidOptionError, match="decoding options apply when explain captions the image itself"):
        bliptk.explain(tiny, photos[0], caption, num_beams=3)
    with pytest.raises(InvalidOptionError, match="gradcam needs torch's Captioner .*, got str: explain another runtime"):
        bliptk.explain("tiny", photos[0])
    with pytest.raises(InvalidOptionError, match="pooling='mean'"):
        bliptk.explain(tiny, VideoFrames([bliptk.load_image(photos[0])], [0.0]), "a dog", pooling="concat")
    with pytest.raises(bliptk.ImageLoadError):
        bliptk.explain(tiny, "no-such-photo.jpg")


def test_figures_draw_an_explanation(tiny, photos):
    explanation = bliptk.explain(tiny, photos[0], max_new_tokens=3, method="relevance")
    fig = bliptk.plot_attention_overlays(photos[0], explanation, columns=2)
    assert [ax.get_title() for ax in fig.axes if ax.get_title()] == explanation.tokens
    assert "relevance: relative importance" in fig.axes[-1].get_ylabel()
    fig = bliptk.plot_attention_maps(explanation)
    np.testing.assert_allclose(fig.axes[0].images[0].get_array(), explanation.maps[0])
    with pytest.raises(InvalidOptionError, match="layer apply to a caption's attention; an Explanation's maps are made already"):
        bliptk.plot_attention_maps(explanation, layer=0)


def test_integrated_gradients_without_captum_names_the_install(tiny, photos, monkeypatch):
    monkeypatch.setitem(sys.modules, "captum", None)
    with pytest.raises(bliptk.MissingDependencyError, match=r"captum.*pip install 'captum"):
        bliptk.explain(tiny, photos[0], "a cake", method="integrated_gradients")


def test_a_list_of_images_gets_one_explanation_each(tiny, photos):
    """Not one explanation of their mean features, with no word (issue 31); explained as a batch,
    each equal to explaining it alone (to float32 rounding: the batch's products are summed in
    another order)."""
    both = bliptk.explain(tiny, photos[:2], "a dog")
    assert [e.token_ids for e in both] == [bliptk.explain(tiny, photo, "a dog").token_ids for photo in photos[:2]]
    for got, photo in zip(both, photos[:2], strict=True):
        _close(got.maps, bliptk.explain(tiny, photo, "a dog").maps, 1e-5)
        assert got.image == str(photo)
    assert [e.text for e in bliptk.explain(tiny, photos[:2], ["a dog", "a cat"])] == ["a photography of a dog", "a photography of a cat"]


@pytest.mark.parametrize("method", ["gradcam", "relevance"])
def test_a_batch_of_captions_of_different_lengths_explains_each_as_alone(tiny, photos, method):
    """The batched methods pad the shorter captions at the end: each row equals its caption alone."""
    captions = ["a dog", "a cat on a red bench by the sea", "two"]
    together = bliptk.explain(tiny, photos[:3], captions, method=method, prompt="a picture of")
    for got, photo, caption in zip(together, photos[:3], captions, strict=True):
        alone = bliptk.explain(tiny, photo, caption, method=method, prompt="a picture of")
        assert got.tokens == alone.tokens
        _close(got.maps, alone.maps, 1e-5)
        for name, values in alone.extras.items():
            _close(got.extras[name], values, 1e-5)
    with pytest.raises(bliptk.InvalidOptionError, match="1 captions for 2 images"):
        bliptk.explain(tiny, photos[:2], ["a dog"])


@dataclass(frozen=True)
class _CentreOptions:
    width: float = field(default=0.25, metadata={"help": "the bump's width, a fraction of the image"})


def _centre(captioner, visual, target, layer, options) -> passes.Maps:
    """A toy method: every token's map is a bump at the image centre, scaled by its 1-based layer."""
    grid = passes.grid_of(passes.encoded(captioner, visual).shape[1])
    axis = (torch.arange(grid) + 0.5) / grid - 0.5
    bump = torch.exp(-(axis[:, None] ** 2 + axis[None, :] ** 2) / (2 * options.width**2)).flatten() * (layer + 1)
    return passes.Maps(passes.stacked([bump for _ in target.token_ids], grid * grid), {"layer_used": torch.tensor([layer])})


@pytest.fixture
def centre_method():
    registry.register_method(
        registry.ExplanationMethod("centre", "centre bump", _centre, layer="last", options=_CentreOptions, cost="instant")
    )
    yield registry.METHODS["centre"]
    del registry.METHODS["centre"]


def test_a_registered_method_is_found_by_explain_the_cli_and_the_explorer(centre_method, tiny, photos, tmp_path, capsys):
    from bliptk.cli.main import main
    from bliptk.notebook.widgets import AttentionExplorer

    caption = tiny.caption(photos[0], max_new_tokens=3)
    explanation = bliptk.explain(tiny, photos[0], caption, method="centre", layer=0, width=0.5)
    assert "centre" in bliptk.EXPLANATION_METHODS and registry.METHOD_NAMES["centre"] == "centre bump"
    assert explanation.maps.shape == (3, 6, 6) and explanation.layer == 0 and explanation.extras["layer_used"].tolist() == [0]
    assert np.isclose(explanation.maps[0, 2, 2], explanation.maps[0].max()) and explanation.provenance["width"] == 0.5
    assert bliptk.explain(tiny, photos[0], caption, method="centre").layer == 1  # "last" of the tiny net's 2 layers
    with pytest.raises(InvalidOptionError, match="width applies to the centre method, not gradcam"):
        bliptk.explain(tiny, photos[0], caption, width=0.5)

    with pytest.raises(SystemExit):
        main(["explain", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert (
        "centre: centre bump (instant)" in help_text
        and "--width WIDTH" in help_text
        and "decoder layer of attention, gradcam, centre" in help_text
    )
    out = tmp_path / "centre.png"
    assert (
        main(
            [
                "explain",
                str(photos[0]),
                "--model",
                "tiny",
                "--method",
                "centre",
                "--width",
                "0.5",
                "--max-new-tokens",
                "3",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert out.exists()

    view = AttentionExplorer(tiny, photos[0], max_new_tokens=3)
    assert ("centre bump (instant)", "centre") in view.method.options
    view.method.value = "centre"
    assert not view.layer.disabled and view.method_controls["centre"]["width"].layout.display is None
    assert view.method_controls["integrated_gradients"]["ig_steps"].layout.display == "none"
    view.method_controls["centre"]["width"].value = 0.5
    np.testing.assert_allclose(view.explanation.maps, explanation.maps * 2)  # the explorer's default layer is the last


# --- contrastive targets ------------------------------------------------------------------------------


def _with_token(caption, index: int, token_id: int):
    """The caption with token ``index`` replaced (teacher-forced, so that the steps before it are the same)."""
    from dataclasses import replace

    return replace(caption, token_ids=[*caption.token_ids[:index], token_id, *caption.token_ids[index + 1 :]])


def test_integrated_gradients_contrast_is_the_difference_of_the_two_maps(tiny, photos):
    """IG is linear in the target: the map of y_w - y_f is the map of y_w minus the map of y_f."""
    caption = tiny.caption(photos[0], max_new_tokens=4)
    foil = "cat"
    foil_id = tiny.tokenizer.encode(foil)[1]
    contrasted = bliptk.explain(tiny, photos[0], caption, method="integrated_gradients", contrast={2: foil}, ig_steps=8)
    plain = bliptk.explain(tiny, photos[0], caption, method="integrated_gradients", ig_steps=8)
    foiled = bliptk.explain(tiny, photos[0], _with_token(caption, 2, foil_id), method="integrated_gradients", ig_steps=8)
    _close(contrasted.maps[2], plain.maps[2] - foiled.maps[2])
    np.testing.assert_array_equal(np.delete(contrasted.maps, 2, axis=0), np.delete(plain.maps, 2, axis=0))  # the others as they were
    assert contrasted.contrast == {2: "cat"} and contrasted.provenance["contrast"] == {"2": "cat"}
    assert "not 'cat'" in repr(contrasted)


def test_a_contrast_names_a_token_by_index_or_by_itself(tiny, photos):
    caption = tiny.caption(photos[1], max_new_tokens=3)
    word = caption.tokens[1]
    by_word = bliptk.explain(tiny, photos[1], caption, contrast={word: "cat"})
    by_index = bliptk.explain(tiny, photos[1], caption, contrast={-2: "cat"})
    np.testing.assert_array_equal(by_word.maps, by_index.maps)
    assert by_word.contrast == {1: "cat"}
    assert not np.array_equal(by_word.maps[1], bliptk.explain(tiny, photos[1], caption).maps[1])


def _reference_contrastive_gradcam(captioner, image, caption, layer: int, index: int, foil_id: int) -> np.ndarray:
    """LAVIS's Grad-CAM of y = log p(w_t) - log p(foil) at token ``index``, from transformers' autograd."""
    model = captioner.model
    pixels = captioner.preprocessor(image)
    prompt_ids = captioner.tokenizer.encode(caption.prompt)
    ids = torch.tensor([prompt_ids + caption.token_ids])
    with torch.enable_grad():
        features = model.vision_model(pixel_values=pixels).last_hidden_state.detach()
        out = model.text_decoder(input_ids=ids, encoder_hidden_states=features, output_attentions=True, return_dict=True)
        p = len(prompt_ids) - 1 + index
        logprobs = out.logits[0, p].float().log_softmax(-1)
        y = logprobs[caption.token_ids[index]] - logprobs[foil_id]
        weights = out.cross_attentions[layer]
        (gradient,) = torch.autograd.grad(y, weights)
    return (weights[0, :, p] * gradient[0, :, p].clamp(min=0)).mean(0)[1:].detach().numpy()


@pytest.mark.slow
def test_contrastive_gradcam_equals_transformers_autograd_on_vit_b(vit_b, photos):
    caption = vit_b.caption(photos[0], max_new_tokens=5)
    foil_id = vit_b.tokenizer.encode("cat")[1]
    explanation = bliptk.explain(vit_b, photos[0], caption, contrast={3: "cat"})
    reference = _reference_contrastive_gradcam(vit_b, photos[0], caption, explanation.layer, 3, foil_id)
    _close(explanation.maps[3].ravel(), reference)


@pytest.mark.parametrize(
    "contrast, method, message",
    [
        ({0: "skateboard"}, "gradcam", r"a foil is one WordPiece token; 'skateboard' is 2 \(skate, ##board\)"),
        ({"zebra": "cat"}, "gradcam", r"the caption's tokens \['a', 'dog'\] have no 'zebra' to contrast"),
        ({5: "cat"}, "gradcam", r"contrast index 5 is outside the caption's 2 tokens"),
        ({"dog": "dog"}, "gradcam", "the foil 'dog' is the caption's own token 1"),
        ({"dog": "cat"}, "attention", "attention maps do not depend on the token's probability"),
        ({"dog": 3}, "gradcam", "contrast maps a caption token"),
        ({"dog": "[SEP]"}, "gradcam", r"the foil '\[SEP\]' is the special token \[SEP\]: a foil is a word of the vocabulary"),
        ({"dog": "🐱"}, "gradcam", r"the foil '🐱' is outside BLIP's vocabulary \(read as \[UNK\]\)"),
        (["dog", "cat"], "gradcam", r"contrast is a dict of caption tokens to foil words \({'dog': 'cat'}\), got list"),
    ],
)
def test_contrast_mistakes_are_named(tiny, photos, contrast, method, message):
    with pytest.raises(InvalidOptionError, match=message):
        bliptk.explain(tiny, photos[0], "a dog", method=method, contrast=contrast)


def test_slow_methods_show_a_progress_bar_unless_told_not_to(tiny, photos, capsys):
    caption = tiny.caption(photos[0], max_new_tokens=3)
    capsys.readouterr()
    bliptk.explain(tiny, photos[0], caption, method="relevance")  # slow: its registry entry has a cost
    bar = capsys.readouterr().err
    assert "relevance: 100%" in bar and "6/6" in bar
    bliptk.explain(tiny, photos[0], caption, method="relevance", progress=False)
    bliptk.explain(tiny, photos[0], caption, method="gradcam")  # quick: no bar
    assert capsys.readouterr().err == ""
    bliptk.explain(tiny, photos[0], caption, method="integrated_gradients", ig_steps=4, progress=True)
    assert "12/12" in capsys.readouterr().err
    with pytest.raises(bliptk.InvalidOptionError, match="progress is True, False, None or a function"):
        bliptk.explain(tiny, photos[0], caption, progress="yes")


def test_explain_reports_its_steps_to_a_progress_hook(tiny, photos):
    caption = tiny.caption(photos[0], max_new_tokens=3)
    reports = []
    bliptk.explain(
        tiny, photos[0], caption, method="integrated_gradients", ig_steps=4, progress=lambda done, total: reports.append((done, total))
    )
    steps = [done for index, (done, _) in enumerate(reports) if index == 0 or reports[index - 1][0] != done]
    assert steps == [0, 4, 8, 12] and {total for _, total in reports} == {12}  # before each token's steps, and after
    reports.clear()
    bliptk.explain(tiny, photos[0], caption, method="relevance", progress=lambda done, total: reports.append((done, total)))
    assert reports == [(0, 6), (1, 6), (2, 6), (3, 6), (4, 6), (5, 6), (6, 6)]


def test_a_failed_explanation_closes_its_bar_as_it_got(tiny, photos, monkeypatch, capsys):
    from bliptk.attribution import relevance as relevance_module

    caption = tiny.caption(photos[0], max_new_tokens=3)
    bars = []
    original = bliptk.attribution.explanation.ProgressBar.close
    monkeypatch.setattr(
        bliptk.attribution.explanation.ProgressBar, "close", lambda self: bars.append(self.bar is not None) or original(self)
    )
    real = relevance_module.report_progress

    def fail_after_one(done, total):
        real(done, total)
        if done == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(relevance_module, "report_progress", fail_after_one)
    with pytest.raises(KeyboardInterrupt):
        bliptk.explain(tiny, photos[0], caption, method="relevance")
    assert bars and bars[-1]  # the open bar was closed when the explanation stopped
    assert "relevance:  17%" in capsys.readouterr().err  # left as it got: 1 of 6
