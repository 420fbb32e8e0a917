"""bliptk.faithfulness: the deletion and insertion curves, measured against transformers' own
forward pass, and a case whose answer is known (a map that is the measured single-patch
occlusion effect beats its reverse)."""

from __future__ import annotations

import dataclasses

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch

import bliptk
from bliptk.attribution.faithfulness import baseline_pixels
from bliptk.core.errors import InvalidOptionError
from bliptk.core.video import VideoFrames


def _transformers_logprobs(captioner, pixels: torch.Tensor, explanation) -> np.ndarray:
    """y_t of every token, ``(B, T)``, from BlipForConditionalGeneration's forward pass."""
    prompt_ids = captioner.tokenizer.encode(explanation.prompt)
    ids = torch.tensor([prompt_ids + explanation.token_ids] * pixels.shape[0])
    with torch.no_grad():
        logits = captioner.model(pixel_values=pixels, input_ids=ids).logits
    start = len(prompt_ids) - 1
    logprobs = logits[:, start : start + len(explanation.token_ids)].log_softmax(-1)
    return logprobs.gather(-1, torch.tensor(explanation.token_ids).view(1, -1, 1).expand(pixels.shape[0], -1, 1))[..., 0].numpy()


def _occlusion_effect(captioner, image, explanation) -> np.ndarray:
    """How much each patch alone, set to the image's mean colour, lowers each token's y: ``(T, G, G)``."""
    pixels = captioner.preprocessor(image)
    grid, size = captioner.image_encoder.grid_size, captioner.image_encoder.patch_size
    mean = pixels.mean(dim=(2, 3), keepdim=True)
    occluded = pixels.repeat(grid * grid, 1, 1, 1)
    for patch in range(grid * grid):
        row, column = divmod(patch, grid)
        occluded[patch, :, row * size : (row + 1) * size, column * size : (column + 1) * size] = mean[0]
    y = _transformers_logprobs(captioner, pixels, explanation)
    effect = y - _transformers_logprobs(captioner, occluded, explanation)  # (G*G, T)
    return effect.T.reshape(-1, grid, grid)


@pytest.fixture(scope="module")
def explained(tiny, photos):
    return bliptk.explain(tiny, photos[0], max_new_tokens=5, method="gradcam")


def test_a_map_of_the_occlusion_effect_beats_its_reverse(tiny, photos, explained):
    effect = _occlusion_effect(tiny, photos[0], explained)
    by_effect = dataclasses.replace(explained, maps=effect)
    reversed_ = dataclasses.replace(explained, maps=-effect)
    deletion = [bliptk.faithfulness(tiny, photos[0], e, mode="deletion", baseline="mean") for e in (by_effect, reversed_)]
    assert (deletion[0].auc < deletion[1].auc).all()
    insertion = [bliptk.faithfulness(tiny, photos[0], e, mode="insertion", baseline="mean") for e in (by_effect, reversed_)]
    assert (insertion[0].auc > insertion[1].auc).all()
    assert deletion[0].summary["better_than_random"] > deletion[1].summary["better_than_random"]


def test_curves_are_the_tokens_probabilities(tiny, photos, explained):
    result = bliptk.faithfulness(tiny, photos[0], explained, steps=4, baseline="mean")
    assert result.curves.shape == result.random_curves.shape == (5, 5)
    np.testing.assert_allclose(result.fractions, [0, 9 / 36, 18 / 36, 27 / 36, 1])
    pixels = tiny.preprocessor(photos[0])
    original, removed = _transformers_logprobs(tiny, torch.cat([pixels, baseline_pixels(pixels, "mean", 16)]), explained)
    caption = tiny.caption(photos[0], max_new_tokens=5)
    np.testing.assert_allclose(np.log(result.curves[:, 0]), caption.logprobs, atol=1e-4)
    np.testing.assert_allclose(np.log(result.curves[:, 0]), original, atol=1e-4)
    np.testing.assert_allclose(np.log(result.curves[:, -1]), removed, atol=1e-4)
    np.testing.assert_allclose(result.random_curves[:, [0, -1]], result.curves[:, [0, -1]])
    # The second step removed the 9 patches the map ranks highest: measured independently.
    for token in range(5):
        top = np.argsort(-explained.maps[token].ravel(), kind="stable")[:9]
        changed = pixels.clone()
        for patch in top:
            row, column = divmod(int(patch), 6)
            changed[..., row * 16 : (row + 1) * 16, column * 16 : (column + 1) * 16] = pixels.mean(dim=(2, 3), keepdim=True)[0]
        np.testing.assert_allclose(np.log(result.curves[token, 1]), _transformers_logprobs(tiny, changed, explained)[0, token], atol=1e-4)
    np.testing.assert_allclose(result.auc, np.trapezoid(result.curves, result.fractions, axis=1))


def test_insertion_runs_the_other_way(tiny, photos, explained):
    deletion = bliptk.faithfulness(tiny, photos[0], explained, steps=3)
    insertion = bliptk.faithfulness(tiny, photos[0], explained, steps=3, mode="insertion")
    np.testing.assert_allclose(insertion.curves[:, 0], deletion.curves[:, -1], rtol=1e-5)
    np.testing.assert_allclose(insertion.curves[:, -1], deletion.curves[:, 0], rtol=1e-5)


def test_the_random_order_follows_the_seed(tiny, photos, explained):
    first, again, other = (bliptk.faithfulness(tiny, photos[0], explained, steps=3, seed=s) for s in (0, 0, 1))
    np.testing.assert_array_equal(first.random_curves, again.random_curves)
    assert not np.allclose(first.random_curves[:, 1:-1], other.random_curves[:, 1:-1])


def test_blur_keeps_a_flat_image_flat_and_smooths_a_textured_one():
    flat = torch.full((1, 3, 32, 32), 0.25)
    torch.testing.assert_close(baseline_pixels(flat, "blur", 16), flat)
    checker = (torch.arange(96).view(1, 1, 1, 96) + torch.arange(96).view(1, 1, 96, 1)) % 2 * 1.0
    blurred = baseline_pixels(checker.expand(1, 3, 96, 96), "blur", 16)
    assert blurred.shape == (1, 3, 96, 96) and blurred.std() < 0.1 * checker.std()
    torch.testing.assert_close(blurred.mean(), checker.mean(), atol=0.01, rtol=0)


def test_a_video_of_identical_frames_measures_as_its_image(tiny, photos, explained):
    frame = bliptk.load_image(photos[0])
    video = VideoFrames([frame, frame], [0.0, 1.0])
    of_video = dataclasses.replace(explained, provenance={**explained.provenance, "num_frames": 2})
    np.testing.assert_allclose(
        bliptk.faithfulness(tiny, video, of_video, steps=3).curves,
        bliptk.faithfulness(tiny, photos[0], explained, steps=3).curves,
        rtol=1e-4,
    )


def test_no_tokens_no_curves(tiny, photos, explained):
    empty = dataclasses.replace(explained, maps=explained.maps[:0], tokens=[], token_ids=[])
    result = bliptk.faithfulness(tiny, photos[0], empty, steps=2)
    assert result.curves.shape == (0, 3) and np.isnan(result.summary["auc"])


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"mode": "erase"}, "mode must be one of deletion, insertion, got 'erase'"),
        ({"baseline": "zero"}, "baseline must be one of blur, mean, got 'zero'"),
        ({"steps": 0}, "steps must be an integer >= 1, got 0"),
        ({"batch_size": -1}, "batch_size must be an integer >= 1, got -1"),
    ],
)
def test_mistakes_are_named(tiny, photos, explained, arguments, message):
    with pytest.raises(InvalidOptionError, match=message.replace("(", r"\(")):
        bliptk.faithfulness(tiny, photos[0], explained, **arguments)


def test_maps_of_another_grid_are_refused(tiny, photos, explained):
    other = dataclasses.replace(explained, maps=np.zeros((5, 24, 24), np.float32))
    with pytest.raises(InvalidOptionError, match=r"the explanation's maps are \(24, 24\), the captioner's patches 6 x 6"):
        bliptk.faithfulness(tiny, photos[0], other)


def test_plot_draws_each_method_against_random(tiny, photos, explained):
    results = [bliptk.faithfulness(tiny, photos[0], explained, steps=3)]
    results.append(bliptk.faithfulness(tiny, photos[0], bliptk.explain(tiny, photos[0], explained.text, method="rollout"), steps=3))
    fig = bliptk.plot_faithfulness(results)
    labels = [line.get_label() for line in fig.axes[0].get_lines()]
    assert labels[0].startswith("gradcam (AUC") and labels[1].startswith("rollout (AUC") and labels[-1] == "random order"
    np.testing.assert_allclose(fig.axes[0].get_lines()[0].get_ydata(), results[0].curves.mean(axis=0))
    _, ax = plt.subplots()
    assert bliptk.plot_faithfulness(results[0], ax=ax) is ax.figure
    plt.close("all")


def test_a_contrastive_explanation_is_measured_on_what_it_explains(tiny, photos):
    """Its token's value is p(token) / p(foil), exp of log p(token) - log p(foil); the others' are their probabilities."""
    from dataclasses import replace

    caption = tiny.caption(photos[0], max_new_tokens=3)
    plain = bliptk.explain(tiny, photos[0], caption)
    contrasted = replace(plain, contrast={1: "cat"})
    ours, theirs = (bliptk.faithfulness(tiny, photos[0], e, steps=2) for e in (contrasted, plain))
    np.testing.assert_allclose(ours.curves[[0, 2]], theirs.curves[[0, 2]])
    [score] = tiny.score(photos[0], [caption.text])
    [with_foil] = tiny.score(
        photos[0], [caption.prompt + " " + tiny.tokenizer.decode([*caption.token_ids[:1], tiny.tokenizer.encode("cat")[1]])]
    )
    np.testing.assert_allclose(ours.curves[1, 0], np.exp(score.logprobs[1] - with_foil.logprobs[1]), rtol=1e-4)


def test_batches_measure_what_one_image_at_a_time_measures(tiny, photos, explained):
    one, three = (bliptk.faithfulness(tiny, photos[0], explained, steps=4, batch_size=b, progress=False) for b in (1, 3))
    np.testing.assert_allclose(three.curves, one.curves, rtol=0, atol=1e-5)
    np.testing.assert_allclose(three.random_curves, one.random_curves, rtol=0, atol=1e-5)
    np.testing.assert_allclose(three.auc, one.auc, rtol=0, atol=1e-5)


class _RecordedBar:
    """A stand-in for tqdm.auto.tqdm that keeps what it was told."""

    made: list[_RecordedBar] = []

    def __init__(self, total=None, disable=False, **kwargs):
        self.total, self.disable, self.n, self.kwargs = total, disable, 0, kwargs
        _RecordedBar.made.append(self)

    def update(self, n=1):
        self.n += n

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_the_bar_counts_the_images_measured(tiny, photos, explained, monkeypatch):
    import tqdm.auto

    monkeypatch.setattr(tqdm.auto, "tqdm", _RecordedBar)
    _RecordedBar.made.clear()
    measured = []
    hook = tiny.image_encoder.register_forward_hook(lambda module, args, output: measured.append(args[0].shape[0]))
    try:
        bliptk.faithfulness(tiny, photos[0], explained, steps=4, batch_size=4)
    finally:
        hook.remove()
    [bar] = _RecordedBar.made
    # 5 tokens, 4 steps: the first and last image, then 3 steps along each of the 5 orders and the random one.
    assert sum(measured) == bar.total == bar.n == 2 + 6 * 3
    assert max(measured) == 4 and bar.kwargs["desc"] == "faithfulness" and not bar.disable


def test_the_bar_can_be_silenced(tiny, photos, explained, capsys):
    bliptk.faithfulness(tiny, photos[0], explained, steps=2, progress=True)
    assert "faithfulness: 100%" in capsys.readouterr().err
    bliptk.faithfulness(tiny, photos[0], explained, steps=2, progress=False)
    assert capsys.readouterr().err == ""
    # None (the default): a bar only when the images take more than one batch (2 + 6 * 1 = 8 here).
    bliptk.faithfulness(tiny, photos[0], explained, steps=2, batch_size=8)
    assert capsys.readouterr().err == ""
    bliptk.faithfulness(tiny, photos[0], explained, steps=2, batch_size=7)
    assert "faithfulness: 100%" in capsys.readouterr().err
