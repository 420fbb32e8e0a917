"""The runtime seam: one description of what to load, one load for every runtime, the runtime chosen
by the model (an export folder is ONNX Runtime's), options a runtime does not take refused, and
what a model does with its inputs known without loading it."""

from __future__ import annotations

import json
import shutil

import pytest

import bliptk
from bliptk.captioning import runtimes
from bliptk.captioning.runtimes import RUNTIMES, LoadOptions, Runtime, describe, register_runtime, runtime_of


def test_a_checkpoint_loads_into_torch_and_an_export_into_onnx_runtime(tiny_checkpoint, tiny_export, photos):
    torch_captioner = bliptk.load(tiny_checkpoint)
    exported = bliptk.load(tiny_export)
    assert (type(torch_captioner).__name__, torch_captioner.runtime) == ("Captioner", "torch")
    assert (type(exported).__name__, exported.runtime) == ("OnnxCaptioner", "onnx")
    assert exported.caption(photos[0], max_new_tokens=5).token_ids == torch_captioner.caption(photos[0], max_new_tokens=5).token_ids
    assert bliptk.load(LoadOptions(model=str(tiny_export), dtype="int8")).weights.dtype == "int8"
    assert runtime_of(LoadOptions(model=str(tiny_checkpoint))).name == "torch"


def test_records_say_the_runtime_when_it_is_not_torch(tiny, tiny_export, photos):
    [torch_record] = tiny.caption_files(photos[:1], max_new_tokens=2)
    [onnx_record] = bliptk.load(tiny_export).caption_files(photos[:1], max_new_tokens=2)
    assert torch_record["runtime"] is None and "runtime" not in tiny.provenance()
    assert onnx_record["runtime"] == "onnx" and onnx_record["weights"] == tiny.weights.as_dict()


def test_options_a_runtime_does_not_take_are_refused_in_its_words(tiny_export):
    with pytest.raises(
        bliptk.InvalidOptionError, match=r"runs in onnx, which has its own weights and runs on the CPU .*: drop compile, device"
    ):
        bliptk.load(tiny_export, device="cpu", compile=True)
    with pytest.raises(bliptk.InvalidOptionError, match=r"drop pretrained=False"):
        bliptk.load(tiny_export, pretrained=False)
    with pytest.raises(bliptk.InvalidOptionError, match=r"dtype of the onnx runtime must be one of float32, int8, got 'bfloat16'"):
        bliptk.load(tiny_export, dtype="bfloat16")
    with pytest.raises(bliptk.InvalidOptionError, match=r"runtime must be one of torch, onnx, got 'tensorrt'"):
        bliptk.load("tiny", runtime="tensorrt")
    with pytest.raises(bliptk.InvalidOptionError, match=r"unknown option 'seed'; load takes model, runtime, pretrained"):
        bliptk.load("tiny", seed=3)


def test_what_a_model_does_with_its_inputs_is_known_without_loading_it(tiny, tiny_checkpoint, tiny_export, tmp_path, monkeypatch):
    folder = tmp_path / "checkpoint"
    shutil.copytree(tiny_checkpoint, folder)
    config = json.loads((folder / "preprocessor_config.json").read_text())
    config.update(image_mean=[0.5, 0.5, 0.5], image_std=[0.25, 0.25, 0.25])
    (folder / "preprocessor_config.json").write_text(json.dumps(config))
    (folder / "captioning.json").write_text(json.dumps({"prompt": "a snapshot of "}))
    loaded = bliptk.load(folder)
    monkeypatch.setattr("bliptk.model.loading.load", lambda *a, **k: pytest.fail("loaded a model"))
    described = describe(str(folder))
    assert described.preprocessor == loaded.preprocessor and described.preprocessor.mean == (0.5, 0.5, 0.5)
    assert described.prompt == loaded.prompt == "a snapshot of "
    assert describe("tiny").preprocessor == tiny.preprocessor and describe("tiny").prompt is None
    assert describe(tiny_export).preprocessor == tiny.preprocessor


def test_a_runtime_is_one_module_and_one_registration(tiny, photos, tmp_path, monkeypatch):
    """A toy runtime: the torch captioner under another name, chosen for folders it recognises."""
    import sys
    import types

    module = types.ModuleType("toy_runtime")

    def load_model(options):
        captioner = bliptk.load("tiny")
        captioner.runtime = "toy"  # what its records say
        return captioner

    module.load_model = load_model
    module.recognises = lambda model: model.endswith(".toy")
    monkeypatch.setitem(sys.modules, "toy_runtime", module)
    monkeypatch.setattr(runtimes, "RUNTIMES", dict(RUNTIMES))
    register_runtime(Runtime("toy", "toy_runtime", dtypes=("float32",), options=frozenset(), recognises="toy_runtime:recognises"))
    captioner = bliptk.load("model.toy")
    [record] = captioner.caption_files(photos[:1], max_new_tokens=2)
    assert record["runtime"] == "toy" and record["caption"] == tiny.caption(photos[0], max_new_tokens=2).text
