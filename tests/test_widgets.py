import datetime
import html
import io
import warnings

import numpy as np
import pytest
from PIL import Image

import bliptk
from bliptk.widgets import AttentionExplorer, CaptionExplorer, StepThroughDecoder


@pytest.fixture
def explorer(tiny, photos):
    return CaptionExplorer(tiny, images=photos[:2], alternatives=4)


def test_caption_explorer_shows_the_api_caption_and_probabilities(tiny, photos, explorer):
    expected = tiny.caption(photos[0])
    assert explorer.caption.token_ids == expected.token_ids and expected.text in explorer.text.value
    choices = bliptk.token_alternatives(tiny, tiny.encode_image(photos[0]), expected, 4)
    assert [c.probability for c in explorer.choices] == pytest.approx([c.probability for c in choices], abs=1e-6)
    assert all(f"{html.escape(c.token)}&nbsp;<small>{c.probability:.3f}</small>" in explorer.table.value for c in choices)
    assert [round(np.exp(lp), 5) for lp in expected.logprobs] == pytest.approx([c.probability for c in choices], abs=1e-5)
    assert bytes(explorer.chart.value).startswith(b"\x89PNG")


def test_changing_decoding_options_does_not_reencode(tiny, photos, explorer, monkeypatch):
    expected = tiny.caption(photos[0], "the woman", max_new_tokens=6, temperature=0.9, seed=3)
    expected_beams = tiny.caption(photos[0], "the woman", max_new_tokens=6, num_beams=3)
    calls = []
    original = type(tiny.image_encoder).forward
    monkeypatch.setattr(type(tiny.image_encoder), "forward", lambda self, x: calls.append(1) or original(self, x))
    explorer.prompt.value = "the woman"
    explorer.max_new_tokens.value = 6
    explorer.temperature.value = 0.9
    explorer.seed.value = 3
    assert calls == []
    assert explorer.caption.token_ids == expected.token_ids
    explorer.temperature.value = 0.0
    explorer.num_beams.value = 3
    assert explorer.caption.token_ids == expected_beams.token_ids and calls == []
    explorer.image.value = str(photos[1])
    assert calls == [1] and explorer.encoder_runs == 2
    explorer.image.value = str(photos[0])
    assert calls == [1]  # cached


def test_upload_and_token_chart(tiny, photos, explorer):
    buffer = io.BytesIO()
    Image.open(photos[2]).save(buffer, "PNG")
    explorer.upload.value = (
        {
            "name": "upload.png",
            "type": "image/png",
            "size": len(buffer.getvalue()),
            "content": memoryview(buffer.getvalue()),
            "last_modified": datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC),
        },
    )
    assert explorer.image.value == "upload.png"
    assert explorer.caption.token_ids == tiny.caption(Image.open(photos[2])).token_ids
    before = bytes(explorer.chart.value)
    explorer.token.value = 2
    assert bytes(explorer.chart.value) != before


def test_attention_explorer_overlays_equal_the_api(tiny, photos):
    view = AttentionExplorer(tiny, photos[0], max_new_tokens=6)
    caption = tiny.caption(photos[0], max_new_tokens=6, return_attention=True)
    assert view.caption.token_ids == caption.token_ids
    for token, layer, heads in [(0, 1, "mean"), (3, 0, 2), (5, "all", "max")]:
        view.token.value, view.layer.value, view.heads.value = token, layer, heads
        expected_map = bliptk.attention_maps(caption, layer=[0, 1] if layer == "all" else layer, heads=heads)[token]
        expected = bliptk.overlay_attention(photos[0], expected_map.numpy())
        assert np.array_equal(np.asarray(view.overlay), np.asarray(expected))
        assert caption.tokens[token] in view.label.value and bytes(view.view.value).startswith(b"\x89PNG")


def test_step_through_decoder(tiny, photos):
    stepper = StepThroughDecoder(tiny, photos[0], bliptk.DecodingOptions(max_new_tokens=5))
    expected = tiny.caption(photos[0], max_new_tokens=5)
    steps = []
    for _ in range(5):
        stepper.button.click()
        steps.append(stepper.stepper.steps[-1])
    assert [s.chosen_id for s in steps] == expected.token_ids
    assert [s.cache_length for s in steps] == [4, 5, 6, 7, 8]
    assert steps[0].input_tokens == ["[DEC]", "a", "photography", "of"] and steps[1].input_ids == [expected.token_ids[0]]
    assert stepper.button.disabled and expected.text in stepper.caption.value
    assert steps[0].top[0][0] == steps[0].chosen_token  # greedy: the most probable
    assert "KV cache 8 positions" in stepper.state.value
    stepper.reset_button.click()
    assert not stepper.button.disabled and stepper.stepper.steps == []


def test_sampled_steps_equal_the_sampled_caption(tiny, photos):
    options = bliptk.DecodingOptions(max_new_tokens=8, temperature=1.0, top_k=5, seed=11)
    stepper = bliptk.Stepper(tiny, photos[1], options)
    stepper.run()
    assert stepper.token_ids == tiny.caption_features(tiny.encode_image(photos[1]), options)[0].token_ids


def test_text_form_says_a_frontend_is_needed(tiny, photos, explorer):
    assert "display it in JupyterLab or Jupyter Notebook" in repr(explorer)
    bundle = explorer._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" in bundle and "ipywidgets view" in bundle["text/plain"]


def test_the_controls_start_at_the_decoding_options_defaults(explorer):
    defaults = bliptk.DecodingOptions()
    assert explorer.options() == defaults
    assert explorer.prompt.value == bliptk.DEFAULT_PROMPT and explorer.max_new_tokens.value == defaults.max_new_tokens


def test_the_layout_keeps_the_controls_beside_a_bounded_output(tiny, photos, explorer):
    from bliptk.widgets import CONTROLS_WIDTH, OUTPUT_WIDTH

    view = AttentionExplorer(tiny, photos[0], max_new_tokens=4)
    stepper = StepThroughDecoder(tiny, photos[0])
    for widget in (explorer.widget, view.widget, stepper.widget):
        controls, output = widget.children
        assert controls.layout.width == f"{CONTROLS_WIDTH}px" and controls.layout.flex == "0 0 auto"
        assert output.layout.min_width == "0" and output.layout.max_width == f"{OUTPUT_WIDTH + 40}px"
    # A 426 x 640 photo fits a 480 px square, from its own pixels; the chart from pixels at twice its size.
    portrait = AttentionExplorer(tiny, bliptk.example_path("images/woman-with-cake.jpg"), max_new_tokens=2)
    assert (portrait.view.layout.width, portrait.view.layout.height) == ("320px", f"{OUTPUT_WIDTH}px")
    assert Image.open(io.BytesIO(bytes(portrait.view.value))).size == (426, 640)
    assert (explorer.chart.layout.width, explorer.chart.layout.height) == (f"{OUTPUT_WIDTH}px", "260px")
    assert Image.open(io.BytesIO(bytes(explorer.chart.value))).size == (2 * OUTPUT_WIDTH, 520)
    long_caption = tiny.caption(photos[0], max_new_tokens=25).text
    assert "overflow-wrap: anywhere" in explorer.text.value and html.escape(long_caption) in explorer.text.value


def test_tokens_without_a_glyph_are_escaped_without_a_warning(tiny, explorer):
    from bliptk.stepper import TokenChoice

    explorer.choices = [TokenChoice("\u0925", 1349, 0.6, [("\u0925", 0.6), ("cake", 0.3)])]
    explorer.token.value = 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        explorer._draw_chart()
        figure = bliptk.plot_attention_map(np.eye(6), "\u0925")
        figure.savefig(io.BytesIO())
    assert figure.axes[0].get_title() == "\\u0925"
