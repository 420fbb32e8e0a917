import pytest
import torch
from transformers import BlipForConditionalGeneration

import bliptk
from bliptk.cli.main import main
from bliptk.core.models import get_model_spec
from bliptk.model.loading import blip_config


def test_family_table_has_one_row_per_architecture():
    table = bliptk.available_models()
    assert [spec.name for spec in table] == ["ViT-B/16", "ViT-L/16"]
    base, large = table
    assert base.hub_id == "Salesforce/blip-image-captioning-base"
    assert large.hub_id == "Salesforce/blip-image-captioning-large"
    assert (base.image_size, base.feature_shape) == (384, (577, 768))
    assert (large.image_size, large.feature_shape) == (384, (577, 1024))
    assert "tiny" in [spec.name for spec in bliptk.available_models(include_test=True)]


def test_table_prints_and_renders_in_jupyter():
    text = str(bliptk.available_models())
    assert "ViT-L/16" in text and "446,290,492" in text and "(577, 1024)" in text
    assert bliptk.available_models()._repr_html_().count("<tr>") == 3


@pytest.mark.parametrize("name", ["ViT-B/16", "ViT-L/16", "tiny"])
def test_parameter_count_matches_the_built_architecture(name):
    spec = get_model_spec(name)
    with torch.device("meta"):
        net = BlipForConditionalGeneration(blip_config(spec))
    assert sum(p.numel() for p in net.parameters()) == spec.parameters


def test_the_default_model_is_the_pages_default(photos, tmp_path, monkeypatch, capsys):
    """With no model named, bliptk asks for the large checkpoint (here: offline, an empty cache)."""
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(bliptk.CheckpointNotFoundError, match="'Salesforce/blip-image-captioning-large'"):
        bliptk.load()
    assert main(["caption", str(photos[0])]) == 2
    assert "checkpoint 'Salesforce/blip-image-captioning-large' is not in the Hugging Face cache" in capsys.readouterr().err


def test_hub_id_resolves_to_its_architecture():
    assert get_model_spec("Salesforce/blip-image-captioning-base").name == "ViT-B/16"


def test_unknown_name_lists_the_valid_ones():
    with pytest.raises(bliptk.UnknownModelError, match=r"ViT-B/16, ViT-L/16"):
        get_model_spec("ViT-H/14")
