import datetime
import html
import io
import warnings

import numpy as np
import pytest
from PIL import Image

import bliptk
from bliptk.core.figures import displayable
from bliptk.notebook.widgets import AttentionExplorer, CaptionExplorer, StepThroughDecoder, _wrapping, probability_text


@pytest.fixture
def explorer(tiny, photos):
    return CaptionExplorer(tiny, images=photos[:2], alternatives=4)


def test_caption_explorer_shows_the_api_caption_and_probabilities(tiny, photos, explorer):
    expected = tiny.caption(photos[0])
    assert explorer.caption.token_ids == expected.token_ids and html.escape(displayable(expected.text)) in explorer.text.value
    choices = bliptk.token_alternatives(tiny, tiny.encode_image(photos[0]), expected, 4)
    assert [c.probability for c in explorer.choices] == pytest.approx([c.probability for c in choices], abs=1e-6)
    assert all(
        f"<bdi>{html.escape(displayable(c.token))}</bdi>&nbsp;<small>{probability_text(c.probability)}</small>" in explorer.table.value
        for c in choices
    )
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


def test_attention_explorer_method_selector_draws_each_explanation(tiny, photos):
    view = AttentionExplorer(tiny, photos[0], max_new_tokens=4)
    assert not view.heads.disabled and not view.layer.disabled
    for method, layer, expected_layer in [("gradcam", 0, 0), ("gradcam", "all", 1), ("relevance", 0, None), ("rollout", 0, None)]:
        view.layer.value, view.method.value, view.token.value = layer, method, 2
        expected = bliptk.explain(tiny, photos[0], view.caption, method=method, layer=expected_layer)
        assert view.explanation.method == method and view.explanation.layer == expected_layer
        np.testing.assert_array_equal(np.asarray(view.overlay), np.asarray(bliptk.overlay_attention(photos[0], expected.maps[2])))
        assert view.heads.disabled and view.layer.disabled == (method != "gradcam")
        assert view.label.value.startswith("token 2:") and view.busy.value == ""
    view.method.value = "attention"
    assert view.explanation is None and not view.heads.disabled
    assert len(view._explanations) == 4  # each computed once: switching back reads it
    view.method.value = "rollout"
    assert len(view._explanations) == 4


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
    assert stepper.button.disabled and html.escape(displayable(expected.text)) in stepper.caption.value
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


def test_the_layout_keeps_the_controls_beside_a_bounded_output_or_below_them(tiny, photos, explorer):
    from bliptk.notebook.widgets import CONTROLS_WIDTH, MIN_OUTPUT_WIDTH, OUTPUT_WIDTH

    view = AttentionExplorer(tiny, photos[0], max_new_tokens=4)
    stepper = StepThroughDecoder(tiny, photos[0])
    for widget in (explorer.widget, view.widget, stepper.widget):
        controls, output = widget.children
        assert widget.layout.flex_flow == "row wrap"  # the output goes below the controls rather than shrink
        assert controls.layout.width == f"{CONTROLS_WIDTH}px" and controls.layout.flex == "0 0 auto"
        assert output.layout.min_width == f"{MIN_OUTPUT_WIDTH}px" and output.layout.max_width == f"{OUTPUT_WIDTH + 40}px"
    # A 426 x 640 photo fits a 480 px square, from its own pixels; the chart from pixels at twice its size.
    portrait = AttentionExplorer(tiny, bliptk.example_path("images/woman-with-cake.jpg"), max_new_tokens=2)
    assert (portrait.view.layout.width, portrait.view.layout.height) == ("320px", f"{OUTPUT_WIDTH}px")
    assert Image.open(io.BytesIO(bytes(portrait.view.value))).size == (426, 640)
    bars = len(explorer.choices[0].alternatives)  # the chosen token is among them (greedy)
    height = round(OUTPUT_WIDTH * (0.6 + 0.4 * bars) / 4.8)
    assert (explorer.chart.layout.width, explorer.chart.layout.height) == (f"{OUTPUT_WIDTH}px", f"{height}px")
    assert Image.open(io.BytesIO(bytes(explorer.chart.value))).size == (2 * OUTPUT_WIDTH, 2 * height)
    long_caption = tiny.caption(photos[0], max_new_tokens=25).text
    assert "overflow-wrap: anywhere" in explorer.text.value and html.escape(displayable(long_caption)) in explorer.text.value


def test_tokens_without_a_glyph_are_escaped_without_a_warning(tiny, explorer):
    from bliptk.model.stepper import TokenChoice

    explorer.choices = [TokenChoice("\u0925", 1349, 0.6, [("\u0925", 0.6), ("cake", 0.3)])]
    explorer.token.value = 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        explorer._draw_chart()
        figure = bliptk.plot_attention_map(np.eye(6), "\u0925")
        figure.savefig(io.BytesIO())
    assert figure.axes[0].get_title() == "\\u0925"


def test_controls_that_do_not_apply_are_disabled(explorer):
    sampling = [explorer.top_k, explorer.top_p, explorer.seed]
    assert all(control.disabled for control in sampling) and explorer.num_return_sequences.disabled  # greedy
    explorer.temperature.value = 0.8
    assert not any(control.disabled for control in [*sampling, explorer.temperature, explorer.num_return_sequences])
    explorer.num_beams.value = 3
    assert all(control.disabled for control in [*sampling, explorer.temperature]) and not explorer.num_return_sequences.disabled
    assert explorer.options().temperature == 0.0


def test_several_captions_have_a_control(tiny, photos, explorer):
    explorer.temperature.value, explorer.seed.value, explorer.num_return_sequences.value = 1.0, 5, 3
    expected = tiny.caption(photos[0], temperature=1.0, seed=5, num_return_sequences=3)
    assert [c.token_ids for c in explorer.captions] == [c.token_ids for c in expected]
    assert all(f"{n}. <b><bdi>{html.escape(displayable(c.text))}</bdi></b>" in explorer.text.value for n, c in enumerate(expected, 1))
    explorer.temperature.value = 0.0  # greedy: one caption, whatever the control says
    assert len(explorer.captions) == 1


def test_the_chosen_token_is_always_in_the_chart(tiny, photos):
    from bliptk.model.stepper import TokenChoice

    explorer = CaptionExplorer(tiny, images=photos[:1], alternatives=2)
    explorer.choices = [TokenChoice("rare", 7, 2e-6, [("cake", 0.5), ("cat", 0.3)])]
    explorer.token.value = 0
    explorer._draw_chart()
    labels = [text.get_text() for text in _chart_axes(explorer).get_yticklabels()]
    assert labels == ["cake", "cat", "rare"]  # from the top: the most probable, then the chosen one added below


def _chart_axes(explorer):
    import matplotlib.pyplot as plt

    # The chart is drawn from a figure the explorer makes and closes: redraw it to read it.
    figures = []
    original = plt.figure

    def keep(*args, **kwargs):
        figure = original(*args, **kwargs)
        figures.append(figure)
        return figure

    plt.figure = keep
    try:
        explorer._draw_chart()
    finally:
        plt.figure = original
    return figures[-1].axes[0]


def test_probabilities_read_at_any_magnitude():
    from bliptk.notebook.widgets import probability_text

    assert [probability_text(p) for p in (0.4567, 0.001, 0.00032, 2.5e-9, 0.0)] == ["0.457", "0.001", "3.2e-04", "2.5e-09", "0.000"]


def test_the_chosen_image_is_shown(explorer, photos):
    assert Image.open(io.BytesIO(bytes(explorer.thumbnail.value))).size[0] > 100
    before = bytes(explorer.thumbnail.value)
    explorer.image.value = str(photos[1])
    assert bytes(explorer.thumbnail.value) != before


def test_a_busy_indicator_shows_while_the_model_works(explorer):
    seen = []
    explorer.busy.observe(lambda change: seen.append(change["new"]), names="value")
    explorer.max_new_tokens.value = 4
    assert "working" in seen[0] and seen[-1] == "" and len(explorer.caption.token_ids) <= 4


def test_a_burst_of_changes_runs_the_model_once_for_the_latest(explorer, monkeypatch):
    import asyncio

    runs = []
    update = explorer.update
    monkeypatch.setattr(explorer._update, "function", lambda: runs.append(explorer.max_new_tokens.value) or update())

    async def burst():
        for tokens in (3, 4, 5, 6):
            explorer.max_new_tokens.value = tokens
        await asyncio.sleep(0.3)

    asyncio.run(burst())
    assert runs == [6] and len(explorer.caption.token_ids) <= 6


def test_the_stepper_says_why_it_stopped(tiny, photos, sep_likely):
    stepper = StepThroughDecoder(tiny, photos[0], bliptk.DecodingOptions(max_new_tokens=2))
    stepper.next(), stepper.next()
    assert stepper.button.disabled and stepper.status.value == "done: max new tokens (2) reached, the caption is cut there"
    ends = StepThroughDecoder(sep_likely(30.0), photos[0])
    while ends.next() is not None:
        pass
    assert ends.button.disabled and ends.status.value == "done: [SEP] was chosen, which ends a caption"


@pytest.mark.parametrize(
    "photo, steps, reason", [(0, 12, "max new tokens (12) reached, where beam search ends"), (2, 2, "no running beam")]
)
def test_beam_steps_follow_the_beams_to_the_returned_caption(sep_likely, photos, photo, steps, reason):
    # [SEP] raised by 6.5: on the first photo the best caption ends by [SEP] after 10 tokens while
    # beams run on to the limit; on the third the search stops early, none of its beams can win.
    captioner, options = sep_likely(6.5), bliptk.DecodingOptions(num_beams=3, max_new_tokens=12)
    expected = captioner.caption(photos[photo], num_beams=3, max_new_tokens=12)
    stepper = bliptk.Stepper(captioner, photos[photo], options)
    taken = stepper.run()
    assert len(taken) == steps and reason in stepper.stop_reason
    assert stepper.token_ids == expected.token_ids and stepper.text == expected.text and stepper.caption().token_ids == expected.token_ids
    assert taken[0].input_tokens == ["[DEC]", "a", "photography", "of"] and taken[0].cache_length == 4
    for index, step in enumerate(taken[:-1]):
        running = [beam for beam in step.beams if not beam.finished]
        assert len(running) == 3 and all(len(beam.token_ids) == index + 1 for beam in running)
        assert [beam.score for beam in running] == sorted((beam.score for beam in running), reverse=True)
        if not step.finished:  # the best continuation goes on as the best beam
            assert running[0].token_ids[-1] == step.chosen_id
    finished = [beam for beam in taken[-1].beams if beam.finished]
    assert len(finished) == 3 and finished[0].token_ids == expected.token_ids


def test_the_step_through_decoder_lists_the_beams(sep_likely, photos):
    captioner = sep_likely(6.5)
    expected = captioner.caption(photos[0], num_beams=3, max_new_tokens=12)
    view = StepThroughDecoder(captioner, photos[0], bliptk.DecodingOptions(num_beams=3, max_new_tokens=12))
    view.next()
    # 10 next tokens, then 3 running beams and the caption that ended at once, [SEP] first.
    assert "beam (&#10003; finished)" in view.state.value and view.state.value.count("<tr>") == 1 + 10 + 1 + 3 + 1
    assert "<td>&#10003; <bdi>a photography of</bdi></td>" in view.state.value
    while view.next() is not None:
        pass
    assert view.button.disabled and view.status.value.startswith("done: max new tokens (12) reached, where beam search ends")
    assert html.escape(displayable(expected.text)) in view.caption.value and view.state.value.count("<td>&#10003; ") == 3


def test_each_token_is_coloured_by_its_probability_with_a_legend(explorer):
    from bliptk.notebook.widgets import PROBABILITY_LEGEND, probability_colour

    assert [probability_colour(p) for p in (0.0, 0.25, 0.5, 1.0, 1.5)] == ["#f4a582", "#fad2a0", "#ffffbf", "#a6d96a", "#a6d96a"]
    for choice in explorer.choices:
        colour = probability_colour(choice.probability)
        assert (
            f'background: {colour}; padding: 0 2px; border-radius: 3px"><bdi>{html.escape(displayable(choice.token))}</bdi>'
            in explorer.table.value
        )
    assert explorer.table.value.endswith(PROBABILITY_LEGEND) and "probability of each token" in PROBABILITY_LEGEND


def test_stop_mid_integrated_gradients_ends_it_before_the_remaining_steps(tiny, photos, monkeypatch):
    view = AttentionExplorer(tiny, photos[0], max_new_tokens=3)
    view.method_controls["integrated_gradients"]["ig_steps"].value = 8
    # Every pass of the path's steps: the image encoder run on patch embeddings that take a gradient.
    passes = []
    original = type(tiny.image_encoder).run

    def counted(self, *args, **kwargs):
        if getattr(kwargs.get("patches"), "requires_grad", False):
            passes.append(kwargs["patches"].shape[0])
        return original(self, *args, **kwargs)

    monkeypatch.setattr(type(tiny.image_encoder), "run", counted)
    seen = []

    def press_stop_after_the_first_token(change):
        seen.append(change["new"])
        if change["new"] >= 8:  # the first token's 8 steps done, 16 to go
            view.stop_button.click()

    view.progress.observe(press_stop_after_the_first_token, names="value")
    view.method.value = "integrated_gradients"
    assert seen == [8] and passes == [8]  # the second token's steps never ran
    assert view.status.value == _wrapping('<span class="bliptk-stopped">integrated gradients stopped after 8 of 24 steps</span>')
    assert view.method.value == "attention" and view.explanation is None and not view.stale  # back to the map shown before
    assert view.progress_box.layout.display == "none" and view.busy.value == "" and view._explanations == {}
    view.token.value = 2  # usable at once
    assert view.label.value.startswith("token 2:") and view.label.value.endswith("<small>(cross-attention)</small>")


def test_the_progress_bar_counts_steps_and_says_the_time_left(tiny, photos, monkeypatch):
    from bliptk.notebook import widgets

    assert widgets.time_left_text(12, 384, 41) == "12 of 384 steps, 0:41, about 21 min left"
    assert widgets.time_left_text(1, 2, 9.6) == "1 of 2 steps, 0:09, about 10 s left"
    assert widgets.time_left_text(1, 400, 10) == "1 of 400 steps, 0:10, about 1 h 6 min left"
    assert widgets.time_left_text(3, 3, 70) == "3 of 3 steps, 1:10, finishing"
    assert widgets.time_left_text(0, 24, 3) == "0:03, estimating the time left"
    assert widgets.time_left_text(0, 0, 5) == "0:05, no estimate for this method"
    view = AttentionExplorer(tiny, photos[0], max_new_tokens=3)
    ticks = iter(range(0, 1000, 2))  # a clock that moves 2 s each time it is read
    monkeypatch.setattr(widgets, "_clock", lambda: next(ticks))
    shown = []
    view.progress.observe(lambda change: shown.append((change["new"], view.progress.max, view.progress_text.value)), names="value")
    labels, boxes = [], []
    view.label.observe(lambda change: labels.append(change["new"]), names="value")
    view.progress_box.layout.observe(lambda change: boxes.append(change["new"]), names="display")
    view.method.value = "relevance"
    # 3 decoder backward passes, then 3 through the encoder's graph; each reported before it runs.
    assert [value for value, _, _ in shown] == [1, 2, 3, 4, 5, 6] and {most for _, most, _ in shown} == {6}
    assert shown[2][2] == "relevance: 3 of 6 steps, 0:16, about 16 s left"  # the clock read twice a step
    assert boxes == [None, "none"] and view.progress_box.layout.display == "none"
    # Meanwhile the older map was faded and said to be computing; then the new one is drawn.
    assert labels[0].endswith("<small>(computing relevance&hellip;)</small>") and labels[-1].endswith("<small>(relevance)</small>")
    assert not view.stale and view.explanation.method == "relevance"
    view.method.value = "gradcam"  # a quick method: no progress bar
    assert boxes == [None, "none"]


def test_the_method_selector_marks_the_slow_methods(tiny, photos):
    view = AttentionExplorer(tiny, photos[0], max_new_tokens=2)
    assert list(view.method.options) == [
        ("cross-attention", "attention"),
        ("Grad-CAM", "gradcam"),
        ("relevance (slow: tens of seconds)", "relevance"),
        ("attention rollout", "rollout"),
        ("integrated gradients (slow: minutes)", "integrated_gradients"),
        ("occlusion (slow: a minute)", "occlusion"),
        ("Shapley sampling (slow: minutes)", "shapley"),
    ]


def test_a_stale_map_is_faded_while_the_new_one_is_computed(tiny, photos):
    from bliptk.notebook.widgets import STALE_FADE

    view = AttentionExplorer(tiny, photos[0], max_new_tokens=3)
    before = view.overlay
    pictures = []
    view.view.observe(lambda change: pictures.append(Image.open(io.BytesIO(bytes(change["new"])))), names="value")
    view.method.value = "rollout"
    faded = Image.blend(before.convert("RGB"), Image.new("RGB", before.size, "white"), STALE_FADE)
    assert len(pictures) == 2 and np.array_equal(np.asarray(pictures[0].convert("RGB")), np.asarray(faded))
    assert np.array_equal(np.asarray(pictures[1].convert("RGB")), np.asarray(view.overlay.convert("RGB")))


def test_right_to_left_tokens_are_isolated(tiny, explorer, monkeypatch):
    from bliptk.model.stepper import TokenChoice
    from bliptk.notebook import widgets

    hebrew, arabic = "\u05e9\u05dc\u05d5\u05dd", "\u0645\u0631\u062d\u0628\u0627"
    monkeypatch.setattr(
        widgets,
        "token_alternatives",
        lambda *args: [TokenChoice(hebrew, 1, 0.6, [(hebrew, 0.6)]), TokenChoice(arabic, 2, 0.25, [(arabic, 0.25)])],
    )
    explorer._show_tokens()
    for token, probability in ((hebrew, "0.600"), (arabic, "0.250")):
        assert f"<bdi>{html.escape(displayable(token))}</bdi>&nbsp;<small>{probability}</small>" in explorer.table.value
    assert widgets._caption_html(hebrew).endswith(f"<b><bdi>{displayable(hebrew)}</bdi></b></div>")


def test_several_captions_choose_whose_tokens_are_shown(tiny, photos, explorer):
    assert explorer.which.layout.display == "none"  # one caption: nothing to choose
    explorer.temperature.value, explorer.seed.value, explorer.num_return_sequences.value = 1.0, 5, 3
    assert explorer.which.layout.display is None and list(explorer.which.options) == [("caption 1", 0), ("caption 2", 1), ("caption 3", 2)]
    assert explorer.caption is explorer.captions[0]
    explorer.which.value = 2
    third = explorer.captions[2]
    expected = bliptk.token_alternatives(tiny, tiny.encode_image(photos[0]), third, 4)
    assert explorer.caption is third and [c.token for c in explorer.choices] == [c.token for c in expected]
    assert f"3. <b><bdi>{html.escape(displayable(third.text))}</bdi></b> <small>(its tokens below)</small>" in explorer.text.value
    assert explorer.text.value.count("(its tokens below)") == 1


def test_the_chart_ticks_do_not_overlap_at_small_probabilities(tiny, photos):
    from bliptk.model.stepper import TokenChoice

    explorer = CaptionExplorer(tiny, images=photos[:1], alternatives=3)
    explorer.choices = [TokenChoice("cake", 7, 3e-4, [("cake", 3e-4), ("cat", 2e-4), ("dog", 1e-4)])]
    explorer.token.value = 0
    ax = _chart_axes(explorer)
    ax.figure.draw_without_rendering()
    boxes = sorted(
        (label.get_window_extent() for label in ax.get_xticklabels() if label.get_visible() and label.get_text()), key=lambda b: b.x0
    )
    assert len(boxes) >= 2 and all(left.x1 < right.x0 for left, right in zip(boxes, boxes[1:], strict=False))


def test_in_a_kernel_the_work_runs_in_a_thread_and_stop_answers_at_once(tiny, photos, monkeypatch):
    import asyncio
    import threading

    view = AttentionExplorer(tiny, photos[0], max_new_tokens=3)
    view.method_controls["integrated_gradients"]["ig_steps"].value = 8
    # The worker's first pass waits until the kernel's side has pressed Stop: no dependence on timing.
    computing, release, passes = threading.Event(), threading.Event(), []
    original = type(tiny.image_encoder).run

    def gated(self, *args, **kwargs):
        if getattr(kwargs.get("patches"), "requires_grad", False):
            passes.append(threading.current_thread().name)
            computing.set()
            release.wait(60)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(type(tiny.image_encoder), "run", gated)

    async def scenario():
        view.method.value = "integrated_gradients"
        while not computing.is_set():
            await asyncio.sleep(0.01)
        # The kernel's thread is free while the worker computes: Stop and a slider move are answered.
        assert view.progress_box.layout.display is None and view.stale and "computing integrated gradients" in view.label.value
        view.stop_button.click()
        assert view.method.value == "attention" and not view.stale and view.progress_box.layout.display == "none"
        assert view.status.value == _wrapping('<span class="bliptk-stopped">integrated gradients stopped after 0 of 24 steps</span>')
        view.token.value = 1
        assert view.label.value.startswith("token 1:") and view.label.value.endswith("(cross-attention)</small>")
        [worker] = [thread for thread in threading.enumerate() if thread.name == "bliptk-explorer"]
        release.set()
        await asyncio.to_thread(worker.join, 60)
        await asyncio.sleep(0)  # the worker's outcome, sent to this loop, is dropped: the job was stopped
        return worker

    worker = asyncio.run(scenario())
    assert not worker.is_alive() and passes == ["bliptk-explorer"]  # the pass under way ended; no later one ran
    assert view.method.value == "attention" and view._explanations == {} and view.label.value.startswith("token 1:")


def test_an_explanation_that_fails_is_said_and_the_explorer_stays_usable(tiny, photos, monkeypatch):
    from bliptk.attribution import explanation
    from bliptk.core.errors import InvalidOptionError

    def failing(*args, **kwargs):
        raise InvalidOptionError("occlusion_window 9 is larger than the image's grid")

    monkeypatch.setattr(explanation, "explain", failing)
    view = AttentionExplorer(tiny, photos[0], max_new_tokens=3)
    view.method.value = "occlusion"
    assert view.status.value == _wrapping(
        '<span class="bliptk-failed" style="color: #b91c1c">occlusion failed: occlusion_window 9 is larger than the image&#x27;s grid</span>'
    )
    assert view.method.value == "attention" and view.progress_box.layout.display == "none" and view.busy.value == ""
