"""Export to ONNX and caption with ONNX Runtime: the same tokens as bliptk's torch path, no torch
needed at run time, clear errors for bad exports."""

import json
import shutil
import subprocess
import sys

import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from conftest import VIDEOS  # noqa: E402

import bliptk  # noqa: E402
import bliptk.exported  # noqa: E402
from bliptk.cli.main import main  # noqa: E402

PROMPTS = ["a picture of", "", "the woman"]


@pytest.fixture(scope="module")
def runner(tiny_export):
    return bliptk.exported.load(tiny_export)


def _ids(captions):
    return [c.token_ids for c in captions]


@pytest.mark.parametrize("prompt", PROMPTS)
def test_greedy_tokens_equal_the_torch_path_tiny(tiny, runner, photos, prompt):
    assert _ids(runner.caption(photos[:2], prompt, max_new_tokens=12)) == _ids(tiny.caption(photos[:2], prompt, max_new_tokens=12))


def test_beam_search_sampling_and_mixed_prompts_equal_the_torch_path(tiny, runner, photos):
    assert _ids(runner.caption(photos[:2], num_beams=3, max_new_tokens=10)) == _ids(
        tiny.caption(photos[:2], num_beams=3, max_new_tokens=10)
    )
    sampled = {"temperature": 1.0, "top_k": 20, "seed": 4, "max_new_tokens": 8}
    assert runner.caption(photos[0], **sampled).token_ids == tiny.caption(photos[0], **sampled).token_ids
    prompts = ["a", "the woman is sitting at a table with", ""]
    assert _ids(runner.caption(photos[1], prompts, max_new_tokens=8)) == _ids(tiny.caption(photos[1], prompts, max_new_tokens=8))
    ours, theirs = runner.caption(photos[0], max_new_tokens=6), tiny.caption(photos[0], max_new_tokens=6)
    assert ours.text == theirs.text and ours.logprobs == pytest.approx(theirs.logprobs, abs=1e-4)


def test_several_captions_per_image_and_a_video_as_the_torch_path(tiny, runner, photos):
    sampled = {"temperature": 1.0, "top_k": 20, "seed": 2, "max_new_tokens": 6, "num_return_sequences": 3}
    ours, theirs = runner.caption(photos[:2], **sampled), tiny.caption(photos[:2], **sampled)
    assert [len(group) for group in ours] == [3, 3]
    assert [_ids(group) for group in ours] == [_ids(group) for group in theirs]
    video = VIDEOS / "bigbuckbunny.mp4"
    ours, theirs = (
        runner.caption([video, photos[0]], num_frames=4, max_new_tokens=6),
        tiny.caption([video, photos[0]], num_frames=4, max_new_tokens=6),
    )
    assert [c.prompt for c in ours] == ["a video of", "a photography of"]
    assert _ids(ours) == _ids(theirs)


def test_the_manifest_says_how_the_export_was_made(tiny, tiny_export):
    manifest = json.loads((tiny_export / "manifest.json").read_text())
    assert manifest["format"] == "bliptk-onnx" and manifest["bliptk_version"] == bliptk.__version__ and manifest["opset"] == 20
    assert manifest["model"] == "tiny" and manifest["weights"] == tiny.weights.as_dict()
    check = manifest["check"]
    assert check["features_max_abs_diff"] <= check["tolerance"]["features"] and check["logits_max_abs_diff"] <= check["tolerance"]["logits"]
    assert set(manifest["sha256"]) == {
        "encoder.onnx",
        "image_kv.onnx",
        "decoder.onnx",
        "encoder.int8.onnx",
        "image_kv.int8.onnx",
        "decoder.int8.onnx",
    }
    records = list(bliptk.exported.load(tiny_export).caption_files([bliptk.example_path("images/woman-with-cake.jpg")], max_new_tokens=3))
    assert records[0]["weights"] == tiny.weights.as_dict() and records[0]["runtime"] == "onnx"  # never taken for torch's records


def test_float32_graphs_by_default_int8_on_request(tiny_export, photos):
    assert bliptk.exported.load(tiny_export).weights.dtype == "float32"
    quantized = bliptk.exported.load(tiny_export, dtype="int8")
    with pytest.warns(bliptk.RandomWeightsWarning, match=r"tiny has random weights \(seed 0\)") as said:
        assert quantized.weights.dtype == "int8" and len(quantized.caption(photos[0], max_new_tokens=5).token_ids) == 5
        quantized.caption(photos[1], max_new_tokens=2)
    assert len(said) == 1 and quantized.pretrained is False  # said once, and still random
    assert (tiny_export / "decoder.int8.onnx").stat().st_size < (tiny_export / "decoder.onnx").stat().st_size / 2


def test_preprocessing_without_torch_equals_blip_image_processor(runner, photos):
    from PIL import Image
    from transformers.models.blip.image_processing_pil_blip import BlipImageProcessorPil

    ours = runner.preprocessor.arrays(photos)  # NumPy only, at the tiny net's 96 px
    expected = BlipImageProcessorPil(size={"height": 96, "width": 96})(
        images=[Image.open(p) for p in photos], return_tensors="np"
    ).pixel_values
    assert ours.shape == (3, 3, 96, 96) and abs(ours - expected).max() < 1e-5


def test_the_runner_works_where_torch_cannot_be_imported(tiny, tiny_export, photos):
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "import bliptk.exported\n"
        f"runner = bliptk.exported.load({str(tiny_export)!r})\n"
        f"print(runner.caption({str(photos[0])!r}, max_new_tokens=8).token_ids)\n"
        "assert 'torch' not in {name.split('.')[0] for name, module in sys.modules.items() if module is not None}\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stdout.strip().splitlines()[-1]) == tiny.caption(photos[0], max_new_tokens=8).token_ids


def test_bad_exports_give_clear_errors(tiny_export, tmp_path):
    with pytest.raises(bliptk.CheckpointError, match="not a bliptk ONNX export"):
        bliptk.exported.load(tmp_path)
    broken = tmp_path / "broken"
    shutil.copytree(tiny_export, broken)
    (broken / "decoder.onnx").unlink()
    with pytest.raises(bliptk.CheckpointError, match=r"graph decoder.onnx is missing"):
        bliptk.exported.load(broken)
    newer = tmp_path / "newer"
    shutil.copytree(tiny_export, newer)
    manifest = json.loads((newer / "manifest.json").read_text())
    (newer / "manifest.json").write_text(json.dumps({**manifest, "format_version": 99, "bliptk_version": "9.0"}))
    with pytest.raises(bliptk.CheckpointError, match="exported by bliptk 9.0 in format 99, newer than this bliptk"):
        bliptk.exported.load(newer)
    changed = tmp_path / "changed"
    shutil.copytree(tiny_export, changed)
    shutil.copy(tiny_export / "encoder.int8.onnx", changed / "encoder.onnx")  # other weights under the same name
    with pytest.raises(bliptk.CheckpointError, match=r"encoder.onnx is not the graph that was exported \(its sha256 differs\)"):
        bliptk.exported.load(changed)
    with pytest.warns(bliptk.ExportChangedWarning, match=r"loading its graphs without checking them \(verify=False\)"):
        bliptk.exported.load(changed, verify=False)
    with pytest.raises(bliptk.OutputExistsError):
        bliptk.export(bliptk.load("tiny"), tiny_export)
    retrained = bliptk.load("tiny", weights_seed=1)  # the model's weights changed since the export
    with pytest.warns(bliptk.ExportChangedWarning, match=r"exported from weights with fingerprint \w+; tiny's are now"):
        bliptk.exported.load(tiny_export, against=retrained)


@pytest.mark.slow
def test_the_cli_exports_and_captions_with_an_export(tiny, photos, tmp_path, capsys):
    out = tmp_path / "export"
    assert main(["export", "--model", "tiny", "--out", str(out)]) == 0
    assert "exported tiny to" in capsys.readouterr().out
    assert main(["caption", str(photos[0]), "--model", str(out), "--max-new-tokens", "6"]) == 0
    assert capsys.readouterr().out == f"{photos[0]}: {tiny.caption(photos[0], max_new_tokens=6).text}\n"
    assert main(["embed", str(photos[0].parent), "--model", str(out), "--out", str(tmp_path / "e.npz")]) == 2
    assert "is an ONNX export, which captions only" in capsys.readouterr().err


@pytest.mark.slow
def test_full_size_vit_b_greedy_and_beams_equal_the_torch_path(vit_b, photos, tmp_path):
    runner = bliptk.exported.load(bliptk.export(vit_b, tmp_path / "vit-b"))
    # Every prompt is checked on the tiny net (above); at full size, one, and beams.
    prompt = "the woman"
    assert _ids(runner.caption(photos[:2], prompt, max_new_tokens=10)) == _ids(vit_b.caption(photos[:2], prompt, max_new_tokens=10))
    assert _ids(runner.caption(photos[:2], num_beams=3, max_new_tokens=10)) == _ids(
        vit_b.caption(photos[:2], num_beams=3, max_new_tokens=10)
    )
