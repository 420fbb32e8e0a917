"""The cascading model-parameter randomisation test (bliptk.attribution.sanity)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import bliptk
from bliptk.attribution import passes, registry
from bliptk.attribution.sanity import map_similarity, ssim


def test_stage_zero_is_the_original_and_randomising_every_layer_drops_gradcam(tiny, photos, capsys):
    before = {name: value.clone() for name, value in tiny.model.state_dict().items()}
    capsys.readouterr()
    result = bliptk.sanity_check(tiny, photos[0], "a dog on a bench", method=["gradcam", "attention"], seeds=[0, 1])
    bar = capsys.readouterr().err
    assert "sanity check: 100%" in bar and "16/16" in bar  # 2 seeds x 4 layers x 2 methods
    assert result.stages == ["original", "decoder layer 1", "decoder layer 0", "image encoder layer 1", "image encoder layer 0"]
    for name in result.methods:
        assert result.spearman[name].shape == (2, 5) and (result.spearman[name][:, 0] == 1).all() and (result.ssim[name][:, 0] == 1).all()
    assert result.spearman["gradcam"][:, -1].mean() < 0.5 and result.passed["gradcam"]
    assert result.verdicts["gradcam"].startswith("passes") and not result.pretrained and "random weights" in str(result)
    assert all(torch.equal(value, before[name]) for name, value in tiny.model.state_dict().items())  # a copy was randomised
    figure = result.plot()
    assert "random weights" in figure.axes[0].get_title() and len(figure.axes[0].get_xticklabels()) == 5


def _brightness(captioner, visual, target, layer, options) -> passes.Maps:
    """A test double that ignores the model: each token's map is the image's brightness per patch."""
    grid = passes.grid_of(captioner.image_encoder.feature_shape[0])
    brightness = torch.nn.functional.adaptive_avg_pool2d(visual.pixels.float().mean(dim=(0, 1))[None], grid).reshape(-1)
    return passes.Maps(brightness.repeat(len(target.token_ids), 1))


@pytest.fixture
def brightness_method():
    registry.register_method(registry.ExplanationMethod("brightness", "brightness", _brightness))
    yield "brightness"
    del registry.METHODS["brightness"]


def test_a_method_that_ignores_the_parameters_is_flagged(tiny, photos, brightness_method):
    result = bliptk.sanity_check(tiny, photos[0], "a dog", method=[brightness_method, "gradcam"])
    assert (result.spearman[brightness_method] == 1).all() and not result.passed[brightness_method]
    assert result.verdicts[brightness_method].startswith("FLAGGED: its maps barely change")
    assert result.passed["gradcam"]


def test_similarities_by_hand():
    a = np.arange(16.0).reshape(1, 4, 4)
    assert map_similarity(a, a) == (1.0, pytest.approx(1.0))
    assert map_similarity(a, -a)[0] == pytest.approx(-1.0)
    assert map_similarity(a, np.zeros_like(a))[0] == 0.0  # a constant map has no ranking
    assert ssim(a[0], a[0] * 3 + 1) == pytest.approx(1.0)  # SSIM of the maps scaled to [0, 1]


def test_sanity_check_mistakes_are_named(tiny, photos, tiny_export):
    with pytest.raises(bliptk.InvalidOptionError, match="sanity_check needs at least one method and one seed"):
        bliptk.sanity_check(tiny, photos[0], "a dog", seeds=[])
    with pytest.raises(bliptk.InvalidOptionError, match="an int8 or compiled captioner keeps copies of: give the plain float model"):
        bliptk.sanity_check(bliptk.load("tiny", dtype="int8"), photos[0], "a dog", method="attention")
    with pytest.raises(bliptk.InvalidOptionError, match="sanity_check re-initialises torch's layers"):
        bliptk.sanity_check(bliptk.load(tiny_export), photos[0], "a dog", method="occlusion")
