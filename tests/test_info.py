import pytest
import torch
from transformers import BlipForConditionalGeneration

import bliptk
from bliptk.core.models import get_model_spec
from bliptk.model.loading import blip_config


@pytest.fixture(scope="module", params=["ViT-B/16", "ViT-L/16"])
def full_size(request):
    """The full-size architecture on the meta device (shapes without memory)."""
    spec = get_model_spec(request.param)
    with torch.device("meta"):
        return spec, BlipForConditionalGeneration(blip_config(spec))


def test_total_counts_shared_arrays_once(full_size):
    spec, net = full_size
    information = bliptk.net_information(net)
    expected = {"ViT-B/16": 223_971_644, "ViT-L/16": 446_290_492}[spec.name]
    assert information.arrays_total_element_count == expected
    assert sum(information.arrays_element_counts.values()) == expected
    # The tied output embedding is listed once, under the input embedding's name.
    assert "text_decoder.cls.predictions.decoder.weight" not in information.arrays_element_counts
    assert information.arrays_element_counts["text_decoder.bert.embeddings.word_embeddings.weight"] == 30524 * 768


def test_layer_type_counts_follow_the_architecture(full_size):
    spec, net = full_size
    vision_layers = net.config.vision_config.num_hidden_layers
    text_layers = net.config.text_config.num_hidden_layers
    counts = bliptk.net_information(net).layer_type_counts
    assert counts["Linear"] == 4 * vision_layers + 10 * text_layers + 2
    assert counts["LayerNorm"] == 2 * vision_layers + 1 + 1 + 3 * text_layers + 1
    assert counts["Conv2d"] == 1 and counts["Embedding"] == 2
    assert counts["GELUActivation"] == vision_layers + text_layers + 1


def test_parts_and_captioner(tiny):
    whole = bliptk.net_information(tiny)
    encoder = bliptk.net_information(tiny.image_encoder)
    decoder = bliptk.net_information(tiny.text_decoder)
    assert whole.arrays_total_element_count == 1_129_324
    assert encoder.arrays_total_element_count + decoder.arrays_total_element_count == whole.arrays_total_element_count
    assert set(encoder.layer_type_counts) == {"Conv2d", "Dropout", "LayerNorm", "Linear", "GELUActivation"}
    assert "total parameters: 1,129,324" in str(whole)
    with pytest.raises(TypeError, match="Captioner, one of its parts"):
        bliptk.net_information(tiny.tokenizer)
