"""One error contract: every mistake a caller can make raises a BliptkError, which also keeps the
built-in error it refines, and the command line maps them all to exit code 2."""

import ast
from pathlib import Path

import numpy as np
import pytest
import torch

import bliptk
from bliptk.cli import main


def _caption_with_attention(tiny, photos):
    return tiny.caption(photos[0], max_new_tokens=3, return_attention=True)


MISTAKES = {
    "attention maps of a caption without attention": (
        lambda tiny, photos: bliptk.attention_maps(tiny.caption(photos[0], max_new_tokens=2)),
        ValueError, "caption it with return_attention=True",
    ),
    "an attention layer out of range": (
        lambda tiny, photos: bliptk.attention_maps(_caption_with_attention(tiny, photos), layer=5),
        ValueError, r"layer must be in \[-2, 1\]",
    ),
    "bad attention heads": (
        lambda tiny, photos: bliptk.attention_maps(_caption_with_attention(tiny, photos), heads="median"),
        ValueError, "heads must be",
    ),
    "a decoder state with too many positions": (
        lambda tiny, photos: tiny.text_decoder.start(tiny.encode_image(photos[0]), max_length=513),
        ValueError, "exceeds the decoder's 512 positions",
    ),
    "a full decoder cache": (
        lambda tiny, photos: tiny.text_decoder(torch.tensor([[30522, 1037]]), tiny.text_decoder.start(tiny.encode_image(photos[0]), 1)),
        ValueError, "the cache holds 1 positions; 2 needed",
    ),
    "net information of a number": (lambda tiny, photos: bliptk.net_information(42), TypeError, "not int"),
    "a stepper with beams": (
        lambda tiny, photos: bliptk.Stepper(tiny, photos[0], bliptk.DecodingOptions(num_beams=2)),
        ValueError, "not beam search",
    ),
    "nearest images without a captioner": (lambda tiny, photos: bliptk.nearest(photos[0], photos), TypeError, "pass captioner="),
    "a vocabulary that is not BERT's": (
        lambda tiny, photos: bliptk.Tokenizer(Path(__file__).parent / "data" / "references.json"),
        ValueError, "expected BERT's 30,522-entry vocabulary",
    ),
    "an unknown decoding option": (lambda tiny, photos: tiny.caption(photos[0], beams=3), ValueError, "unknown decoding option"),
    "a projection of too few points": (lambda tiny, photos: bliptk.project(np.eye(3)), ValueError, "umap needs at least 4 points"),
}


@pytest.mark.parametrize("mistake", MISTAKES)
def test_every_mistake_raises_a_bliptk_error_that_keeps_its_builtin_base(tiny, photos, mistake):
    make, builtin, message = MISTAKES[mistake]
    with pytest.raises(bliptk.BliptkError, match=message) as error:
        make(tiny, photos)
    assert isinstance(error.value, builtin)


def test_the_command_line_maps_bliptk_errors_to_exit_2_without_a_table_of_types():
    source = (Path(bliptk.__file__).parent / "cli.py").read_text()
    handled = [node for node in ast.walk(ast.parse(source)) if isinstance(node, ast.ExceptHandler) and node.type is not None]
    caught = {ast.unparse(handler.type) for handler in handled}
    assert caught == {"BliptkError", "KeyboardInterrupt"}


def test_an_error_deep_in_a_command_exits_2(tiny, photos, capsys):
    assert main(["attention", str(photos[0]), "--out", "x.png", "--model", "tiny", "--heads", "median", "--max-new-tokens", "2"]) == 2
    assert capsys.readouterr().err.splitlines()[-1].startswith('bliptk: error: heads must be "mean", "max" or a head index')
