import json
import os
import subprocess
import sys
import time
import warnings

import pytest
import torch
from helpers import fake_hub_cache

import bliptk
from bliptk.model.loading import resolve_device, resolve_dtype


def _run_cli(*args, env=None, timeout=120):
    return subprocess.run(
        [sys.executable, "-m", "bliptk", *args], capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})}
    )


def test_checkpoint_folder_loads_offline_and_captions(tiny, tiny_checkpoint, photos):
    """A save_pretrained folder, loaded in a fresh process with HF_HUB_OFFLINE=1."""
    result = _run_cli(
        "caption", str(photos[0]), "--model", str(tiny_checkpoint), "--json", "--max-new-tokens", "8", env={"HF_HUB_OFFLINE": "1"}
    )
    assert result.returncode == 0, result.stderr
    record = json.loads(result.stdout)
    expected = tiny.caption(photos[0], max_new_tokens=8)
    assert record["token_ids"] == expected.token_ids and record["caption"] == expected.text


def test_checkpoint_folder_in_process(tiny, tiny_checkpoint, photos):
    loaded = bliptk.load(tiny_checkpoint)
    assert loaded.pretrained is True and loaded.name == str(tiny_checkpoint)
    assert loaded.preprocessor == tiny.preprocessor
    for ours, theirs in zip(loaded.model.state_dict().values(), tiny.model.state_dict().values(), strict=True):
        torch.testing.assert_close(ours, theirs, atol=0, rtol=0)
    assert loaded.caption(photos[1]).token_ids == tiny.caption(photos[1]).token_ids


def test_hub_id_is_read_from_the_hugging_face_cache(tiny, tiny_checkpoint, photos, tmp_path):
    """An architecture name resolves to its hub id, found in HF_HUB_CACHE with no network."""
    fake_hub_cache(tmp_path, tiny_checkpoint)
    result = _run_cli(
        "caption",
        str(photos[0]),
        "--model",
        "ViT-B/16",
        "--json",
        "--max-new-tokens",
        "5",
        env={"HF_HUB_CACHE": str(tmp_path), "HF_HUB_OFFLINE": "1"},
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["token_ids"] == tiny.caption(photos[0], max_new_tokens=5).token_ids


def test_unreachable_hub_id_fails_fast_with_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens on the discard port
    monkeypatch.setattr("huggingface_hub.constants.ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path))
    started = time.monotonic()
    with pytest.raises(bliptk.CheckpointNotFoundError) as error:
        bliptk.load("someone/blip-that-is-not-here")
    assert time.monotonic() - started < 20
    message = str(error.value)
    assert "'someone/blip-that-is-not-here' could not be downloaded" in message
    assert "local checkpoint folder" in message and "pretrained=False" in message


def test_offline_without_cache_says_so(monkeypatch, tmp_path):
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(bliptk.CheckpointNotFoundError, match="HF_HUB_OFFLINE is set"):
        bliptk.load("ViT-L/16")


def test_folder_without_weights_is_refused(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(bliptk.CheckpointNotFoundError, match="needs config.json and model weights"):
        bliptk.load(tmp_path)


def test_unknown_model_lists_the_valid_names(monkeypatch, tmp_path):
    with pytest.raises(bliptk.UnknownModelError, match="ViT-B/16, ViT-L/16"):
        bliptk.load("vit-huge")
    # A name shaped like a hub id is looked up on the Hub, and the error still lists the names.
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(bliptk.CheckpointNotFoundError, match="not an architecture name either: ViT-B/16, ViT-L/16"):
        bliptk.load("ViT-H/14")


def test_random_weights_are_seeded_and_leave_the_global_rng_alone():
    state = torch.random.get_rng_state()
    first, second = bliptk.load("tiny"), bliptk.load("tiny", pretrained=False)
    assert torch.equal(torch.random.get_rng_state(), state)
    torch.testing.assert_close(first.model.state_dict(), second.model.state_dict(), atol=0, rtol=0)
    other = bliptk.load("tiny", weights_seed=1)
    assert not torch.equal(
        other.model.text_decoder.cls.predictions.transform.dense.weight, first.model.text_decoder.cls.predictions.transform.dense.weight
    )
    assert first.pretrained is False and "random weights" in repr(first)


def test_devices():
    assert resolve_device(None) == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(bliptk.DeviceError, match="not a device name"):
        resolve_device("gpu-please")
    if not torch.cuda.is_available():
        with pytest.raises(bliptk.DeviceError, match="CUDA is not available"):
            bliptk.load("tiny", device="cuda")
    with pytest.raises(bliptk.DeviceError):
        resolve_device(f"cuda:{torch.cuda.device_count()}")


def test_dtypes():
    cpu = torch.device("cpu")
    assert resolve_dtype(None, cpu) == torch.float32
    assert resolve_dtype("bfloat16", cpu) == resolve_dtype(torch.bfloat16, cpu) == torch.bfloat16
    with pytest.warns(UserWarning, match="float16 is not supported on CPU"):
        assert resolve_dtype(torch.float16, cpu) == torch.float32
    with pytest.raises(bliptk.InvalidOptionError, match="int8"):
        resolve_dtype("int8", cpu)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        captioner = bliptk.load("tiny", dtype="bfloat16")
    assert captioner.dtype == torch.bfloat16
    assert captioner.encode_image(torch.zeros(3, 8, 8)).dtype == torch.bfloat16


def test_pytorch_weights_load_with_weights_only_and_pickles_are_refused(tiny, photos, tmp_path):
    folder = tmp_path / "bin-checkpoint"
    tiny.model.config.save_pretrained(folder)
    torch.save(tiny.model.state_dict(), folder / "pytorch_model.bin")
    assert bliptk.load(folder).caption(photos[0], max_new_tokens=4).token_ids == tiny.caption(photos[0], max_new_tokens=4).token_ids

    marker = tmp_path / "code-ran"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save({**tiny.model.state_dict(), "payload": Payload()}, folder / "pytorch_model.bin")
    with pytest.raises(bliptk.CheckpointError, match="weights_only=True"):
        bliptk.load(folder)
    assert not marker.exists()


def test_remote_code_in_a_checkpoint_is_never_run(tiny, tiny_checkpoint, photos, tmp_path):
    """A checkpoint whose config points at its own modeling code (auto_map) is loaded as plain
    BLIP, without running that code."""
    folder = tmp_path / "with-code"
    folder.mkdir()
    for file in tiny_checkpoint.iterdir():
        (folder / file.name).write_bytes(file.read_bytes())
    marker = tmp_path / "code-ran"
    (folder / "modeling_evil.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoModel": "modeling_evil.EvilModel", "AutoModelForVision2Seq": "modeling_evil.EvilModel"}
    (folder / "config.json").write_text(json.dumps(config))
    loaded = bliptk.load(folder)
    assert type(loaded.model).__name__ == "BlipForConditionalGeneration" and not marker.exists()
    assert loaded.caption(photos[0], max_new_tokens=3).token_ids == tiny.caption(photos[0], max_new_tokens=3).token_ids
