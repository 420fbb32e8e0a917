"""The compiled path: captions equal eager's, smaller batches padded rather than compiled again,
eager with one warning where inductor cannot compile, and the on-disk cache reused by another
process with other weights, which it computes with (not the first process's)."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings

import pytest
import torch

import bliptk
from bliptk.core.errors import CompileWarning
from bliptk.model import compiled as compiled_module

pytestmark = [
    pytest.mark.slow,  # each test compiles (5-20 s on two cores)
    pytest.mark.skipif(compiled_module.compile_unavailable(torch.device("cpu")) is not None, reason="inductor cannot compile here"),
]


@pytest.fixture
def fresh_warnings(monkeypatch):
    monkeypatch.setattr(compiled_module, "_SAID", set())


def test_compiled_captions_equal_eager(tiny, photos):
    compiled = bliptk.load("tiny", compile=True)
    assert compiled.weights.compiled and compiled.weights.as_dict()["compiled"] is True
    assert "compiled" not in tiny.weights.as_dict()  # eager records stay as they were
    pixels = tiny.preprocessor(photos[:3])
    torch.testing.assert_close(compiled.image_encoder(pixels), tiny.image_encoder(pixels), rtol=1e-4, atol=1e-5)
    assert compiled.image_encoder.compiled.sizes == {3}
    for options in ({}, {"num_beams": 3}):
        ours = [c.token_ids for c in compiled.caption(photos[:3], max_new_tokens=12, **options)]
        assert ours == [c.token_ids for c in tiny.caption(photos[:3], max_new_tokens=12, **options)]


def test_a_smaller_batch_is_padded_to_a_compiled_size(tiny, photos):
    compiled = bliptk.load("tiny", compile=True)
    pixels = tiny.preprocessor(photos[:3])
    compiled.image_encoder(pixels)
    torch._dynamo.utils.counters.clear()
    last = compiled.image_encoder(pixels[:2])
    assert compiled.image_encoder.compiled.sizes == {3}
    assert not torch._dynamo.utils.counters["stats"]["unique_graphs"]  # nothing compiled again
    torch.testing.assert_close(last, tiny.image_encoder(pixels[:2]), rtol=1e-4, atol=1e-5)


def test_without_a_compiler_it_says_so_once_and_runs_eager(tiny, photos, fresh_warnings):
    from torch._inductor import config

    with config.patch({"cpp.cxx": ("/nonexistent/g++",)}):
        with pytest.warns(CompileWarning, match=r"no C\+\+ compiler .*bliptk runs eager"):
            captioner = bliptk.load("tiny", compile=True)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            again = bliptk.load("tiny", compile=True)  # said once
    assert captioner.image_encoder.compiled.compiled is None and again.image_encoder.compiled.compiled is None
    assert captioner.weights.compiled  # asked for: records match those of a run that could compile
    assert [c.token_ids for c in captioner.caption(photos[:2])] == [c.token_ids for c in tiny.caption(photos[:2])]


def test_an_inductor_failure_falls_back_to_eager(tiny, photos, fresh_warnings):
    from torch._inductor.exc import InvalidCxxCompiler

    captioner = bliptk.load("tiny", compile=True)

    def failing(batch):
        raise InvalidCxxCompiler()

    captioner.image_encoder.compiled.compiled = failing
    with pytest.warns(CompileWarning, match="inductor failed: InvalidCxxCompiler"):
        captions = captioner.caption(photos[:2])
    assert [c.token_ids for c in captions] == [c.token_ids for c in tiny.caption(photos[:2])]
    assert captioner.image_encoder.compiled.compiled is None


def test_a_caller_error_is_not_taken_for_a_compile_failure(photos, fresh_warnings):
    captioner = bliptk.load("tiny", compile=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error", CompileWarning)  # no fallback to eager: the error is the caller's
        with pytest.raises(RuntimeError, match="channels|size|shape"):
            captioner.image_encoder(torch.zeros(1, 4, 96, 96))  # four channels: the caller's mistake
    assert captioner.image_encoder.compiled.compiled is not None


CACHED = """
import json, sys, torch, bliptk
compiled, eager = bliptk.load("tiny", compile=True, weights_seed=1), bliptk.load("tiny", weights_seed=1)
pixels = torch.randn(2, 3, 96, 96)
features = compiled.image_encoder(pixels)
print(json.dumps({"cache_hits": torch._dynamo.utils.counters["inductor"]["fxgraph_cache_hit"],
                  "difference": (features - eager.image_encoder(pixels)).abs().max().item()}))
"""


def test_the_disk_cache_serves_another_process_with_its_own_weights(tiny):
    bliptk.load("tiny", compile=True).image_encoder(torch.randn(2, 3, 96, 96))  # compiled here (or read from the cache)
    done = subprocess.run([sys.executable, "-c", CACHED], capture_output=True, text=True, check=True)
    other = json.loads(done.stdout.strip().splitlines()[-1])  # other weights (seed 1), the same architecture
    assert other["cache_hits"] >= 1  # it read this process's compiled code from torch's disk cache
    assert other["difference"] < 1e-4  # and computed with its own weights, not seed 0's
