"""Occlusion and Shapley value sampling (bliptk.attribution.masking, occlusion, shapley): against a
masking loop written here, across runtimes, and by Shapley's efficiency."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import bliptk
from bliptk.attribution import masking


def _y(captioner, pixels: torch.Tensor, caption) -> np.ndarray:
    """y_t of the caption's tokens for one image's pixels (1, 3, S, S), through torch's own modules."""
    with torch.no_grad():
        features = captioner.model.vision_model(pixel_values=pixels).last_hidden_state
        prompt = captioner.tokenizer.encode(caption.prompt)
        ids = torch.tensor([prompt + caption.token_ids])
        logits = captioner.model.text_decoder(input_ids=ids, encoder_hidden_states=features).logits
    start = len(prompt) - 1
    logprobs = logits[0, start : start + len(caption.token_ids)].float().log_softmax(-1)
    return logprobs[torch.arange(len(caption.token_ids)), torch.tensor(caption.token_ids)].numpy()


def test_occlusion_equals_a_masking_loop(tiny, photos):
    caption = tiny.caption(photos[0], max_new_tokens=4)
    window = 2
    explanation = bliptk.explain(tiny, photos[0], caption, method="occlusion", occlusion_window=window)
    pixels = tiny.preprocessor(photos[0])
    grid = explanation.maps.shape[-1]
    patch = pixels.shape[-1] // grid
    original = _y(tiny, pixels, caption)
    expected = np.zeros((len(caption.token_ids), grid, grid))
    for top in range(0, grid, window):
        for left in range(0, grid, window):
            masked = pixels.clone()
            masked[..., top * patch : (top + window) * patch, left * patch : (left + window) * patch] = 0
            expected[:, top : top + window, left : left + window] = (original - _y(tiny, masked, caption))[:, None, None]
    np.testing.assert_allclose(explanation.maps, expected, atol=1e-4 * np.abs(expected).max())
    assert explanation.method == "occlusion" and explanation.provenance["occlusion_window"] == window


def test_a_window_that_does_not_divide_the_grid_keeps_a_smaller_last_square():
    mask = masking.patch_mask(size=12, grid=6, window=4)[0, 0, 0]
    assert mask[::2, ::2].tolist() == [[0, 0, 0, 0, 1, 1]] * 4 + [[2, 2, 2, 2, 3, 3]] * 2


def test_occlusion_is_the_same_from_torch_and_onnx(tiny, tiny_export, photos):
    pytest.importorskip("onnxruntime")
    caption = tiny.caption(photos[1], max_new_tokens=4)
    exported = bliptk.load(tiny_export)
    ours = bliptk.explain(tiny, photos[1], caption.text, method="occlusion", occlusion_window=3)
    theirs = bliptk.explain(exported, photos[1], caption.text, method="occlusion", occlusion_window=3)
    assert theirs.tokens == ours.tokens and theirs.provenance["runtime"] == "onnx"
    np.testing.assert_allclose(theirs.maps, ours.maps, atol=1e-4 * np.abs(ours.maps).max())


def test_a_gradient_method_on_another_runtime_names_the_black_box_ones(tiny_export, photos):
    pytest.importorskip("onnxruntime")
    with pytest.raises(bliptk.InvalidOptionError, match=r"gradcam needs torch's Captioner .* black-box method \(occlusion, shapley\)"):
        bliptk.explain(bliptk.load(tiny_export), photos[0], "a dog")


def test_shapley_values_sum_to_the_change_from_the_masked_image(tiny, photos):
    """Efficiency: each sampled order's marginal gains telescope to y(image) - y(all masked)."""
    caption = tiny.caption(photos[2], max_new_tokens=3)
    window = 3  # the tiny net's grid is 6 x 6: 4 squares
    explanation = bliptk.explain(tiny, photos[2], caption, method="shapley", shapley_window=window, shapley_samples=3)
    pixels = tiny.preprocessor(photos[2])
    change = _y(tiny, pixels, caption) - _y(tiny, torch.zeros_like(pixels), caption)
    per_square = explanation.maps[:, ::window, ::window].reshape(len(caption.token_ids), -1)  # each square's value once
    np.testing.assert_allclose(per_square.sum(axis=1), change, atol=1e-4 * np.abs(change).max())
    again = bliptk.explain(tiny, photos[2], caption, method="shapley", shapley_window=window, shapley_samples=3)
    np.testing.assert_array_equal(again.maps, explanation.maps)  # the orders come from shapley_seed
    other = bliptk.explain(tiny, photos[2], caption, method="shapley", shapley_window=window, shapley_samples=3, shapley_seed=1)
    assert not np.array_equal(other.maps, explanation.maps)


def test_each_perturbed_batch_is_computed_once_for_all_tokens(tiny, photos, monkeypatch):
    calls = []
    original = masking.PixelTargets._targets
    monkeypatch.setattr(masking.PixelTargets, "_targets", lambda self, pixels: calls.append(len(pixels)) or original(self, pixels))
    caption = tiny.caption(photos[0], max_new_tokens=5)
    explanation = bliptk.explain(tiny, photos[0], caption, method="occlusion", occlusion_window=2)
    squares = (explanation.maps.shape[-1] // 2) ** 2
    assert len(caption.token_ids) > 1 and sum(calls) == 1 + squares  # the image, then each square once: not once per token


@pytest.mark.parametrize(
    "options, message",
    [
        ({"occlusion_window": 0}, "occlusion_window must be"),
        ({"method": "shapley", "shapley_samples": 0}, "shapley_samples must be"),
        ({"method": "shapley", "shapley_seed": 1.5}, "shapley_seed must be an integer"),
        ({"occlusion_window": 99}, "occlusion_window 99 is larger than the image's grid of 6 x 6 patches: give at most 6"),
        ({"shapley_window": 2}, "shapley_window applies to the shapley method, not occlusion"),
    ],
)
def test_black_box_mistakes_are_named(tiny, photos, options, message):
    options = {"method": "occlusion", **options}
    with pytest.raises(bliptk.InvalidOptionError, match=message):
        bliptk.explain(tiny, photos[0], "a dog", **options)


@pytest.mark.parametrize(
    ("method", "options", "images"),
    [("occlusion", {"occlusion_window": 2}, 9 + 1), ("shapley", {"shapley_window": 3, "shapley_samples": 2}, 2 * 4 + 1)],
)
def test_black_box_methods_report_their_perturbed_images_and_stop_when_told(tiny, photos, method, options, images):
    """Progress counts the perturbed images computed, of as many as the method asks for (the
    image itself and 9 squares; all masked and 2 orders of 4 squares); a hook that raises stops it."""
    caption = tiny.caption(photos[0], max_new_tokens=4)
    reports = []
    bliptk.explain(tiny, photos[0], caption, method=method, progress=lambda done, total: reports.append((done, total)), **options)
    assert reports[-1] == (images, images) and all(total == images for _, total in reports)
    assert [done for done, _ in reports] == sorted(done for done, _ in reports)

    class Stopped(Exception):
        pass

    def stop(done, total):
        raise Stopped

    with pytest.raises(Stopped):
        bliptk.explain(tiny, photos[0], caption, method=method, progress=stop, **options)
