"""Fine-tuning: BLIP's labels and loss against transformers' model, memorising six pairs (full and
LoRA), LoRA merged equal to unmerged, kill and resume, two processes under torchrun, the output
folder and its finetune.json."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

import bliptk
from bliptk.finetuning import DEFAULT_LORA_TARGETS, finetune
from bliptk.testing import hf_generate
from bliptk.training_data import text_example

pytest.importorskip("accelerate")

CAPTIONS = [
    "a dog asleep on a shoe rack",
    "two red buses in the rain",
    "a man riding a wave",
    "a plate of pasta and salad",
    "a cat on a wooden bench",
    "children flying a kite",
]
PROMPT = "a picture of "


@pytest.fixture(scope="module")
def six_photos(photos, tmp_path_factory) -> list[Path]:
    """Six different images: the three test photos and their mirror images, small."""
    folder = tmp_path_factory.mktemp("six")
    paths = []
    for index, photo in enumerate(photos[:3]):
        image = Image.open(photo).convert("RGB").resize((128, 96))
        for flipped, picture in enumerate((image, ImageOps.mirror(image))):
            path = folder / f"photo{index}{'m' if flipped else ''}.png"
            picture.save(path)
            paths.append(path)
    return paths


@pytest.fixture(scope="module")
def pairs(six_photos) -> list[tuple[Path, str]]:
    return list(zip(six_photos, CAPTIONS, strict=True))


def _greedy(captioner, images) -> list[str]:
    return [c.text.removeprefix(PROMPT) for c in captioner.caption(images, PROMPT, max_new_tokens=20)]


def _losses(result) -> list[float]:
    return [entry["loss"] for entry in result.history if "loss" in entry]


# --- the loss -------------------------------------------------------------------------------------------


def test_labels_mask_dec_prompt_and_padding_and_learn_sep(tiny):
    ids, labels = text_example(tiny.tokenizer, PROMPT, "a dog")
    assert ids == [30522, 1037, 3861, 1997, 1037, 3899, 102]
    assert labels == [-100, -100, -100, -100, 1037, 3899, 102]


@pytest.mark.parametrize("smoothing", [0, 0.1])  # 0 as a user writes it, an int
def test_first_batch_loss_equals_transformers_logits_and_the_masking_rule(pairs, tmp_path, smoothing):
    result = finetune("tiny", pairs, out=tmp_path / "run", max_steps=1, batch_size=6, label_smoothing=smoothing)
    reference = bliptk.load("tiny")  # the same seeded weights, untrained
    pixels = reference.preprocessor([image for image, _ in pairs])
    prompt_ids = reference.tokenizer.encode(PROMPT)
    rows = [prompt_ids + reference.tokenizer.encode(caption)[1:] + [102] for _, caption in pairs]
    width = max(map(len, rows))
    ids = torch.tensor([row + [0] * (width - len(row)) for row in rows])
    mask = torch.tensor([[1] * len(row) + [0] * (width - len(row)) for row in rows])
    with torch.no_grad():
        logits = reference.model(pixel_values=pixels, input_ids=ids, attention_mask=mask).logits
    logprobs = logits[:, :-1].log_softmax(-1)
    targets = ids[:, 1:]
    learned = (torch.arange(1, width)[None] >= len(prompt_ids)) & (mask[:, 1:] == 1)  # the caption and [SEP]
    picked = logprobs.gather(-1, targets[..., None])[..., 0]
    per_token = -(1 - smoothing) * picked - smoothing * logprobs.mean(-1)
    expected = per_token[learned].mean().item()
    assert _losses(result)[0] == pytest.approx(expected, rel=1e-5)


# --- memorising, full and LoRA ----------------------------------------------------------------------------


@pytest.mark.slow
def test_six_pairs_are_memorised_and_loaded_back(pairs, tmp_path):
    """BLIP's prompt masked, AdamW lr 1e-3, weight decay 0.05, cosine over 400 steps, batch 6."""
    result = finetune("tiny", pairs, out=tmp_path / "run", lr=1e-3, max_steps=400, batch_size=6, save_steps=400)
    losses = _losses(result)
    assert losses[-1] < 1.5 < 10 < losses[0]  # label smoothing 0.1 over 30,524 tokens keeps it above about 1.36
    captioner = bliptk.load(tmp_path / "run")
    assert _greedy(captioner, [image for image, _ in pairs]) == CAPTIONS
    made = json.loads((tmp_path / "run" / "finetune.json").read_text())
    assert made["finished"] and made["options"]["lr"] == 1e-3 and made["data"]["train"]["rows"] == 6
    assert made["base"]["weights"]["source"] == "random" and captioner.weights.fingerprint != bliptk.load("tiny").weights.fingerprint
    from transformers import BlipForConditionalGeneration

    assert isinstance(BlipForConditionalGeneration.from_pretrained(tmp_path / "run"), BlipForConditionalGeneration)


@pytest.mark.slow
def test_lora_memorises_the_six_pairs_too(pairs, tmp_path):
    """More steps and a higher rate than full fine-tuning: the adapters and the head norm start from
    the identity, and the norm's scale must grow for the random net's logits to sharpen."""
    result = finetune("tiny", pairs, out=tmp_path / "run", lora=16, lr=1e-2, max_steps=600, batch_size=6, save_steps=600, label_smoothing=0)
    assert _losses(result)[-1] < 1.5
    assert _greedy(bliptk.load(tmp_path / "run"), [image for image, _ in pairs]) == CAPTIONS


@pytest.mark.slow
def test_lora_trains_under_two_percent_of_vit_b(tmp_path, photos):
    result = finetune(
        "ViT-B/16", [(photos[0], "a dog")], out=tmp_path / "run", load_options={"pretrained": False}, max_steps=1, batch_size=1, lora=16
    )
    share = result.trainable_parameters / result.total_parameters
    assert 0.005 < share < 0.02, share
    base = bliptk.loading.architecture("ViT-B/16")  # shapes only, on the meta device
    adapters = result.trainable_parameters - 2 * 768  # the head norm is trained whole, not added
    assert result.total_parameters == sum(p.numel() for p in base.parameters()) + adapters  # the norm counted once


def test_merged_lora_captions_equal_the_unmerged_model(pairs, tmp_path):
    from peft import PeftModel

    finetune("tiny", pairs, out=tmp_path / "run", lr=5e-3, max_steps=20, batch_size=6, lora={"r": 8, "save_adapter": True})
    merged = bliptk.load(tmp_path / "run")
    unmerged = bliptk.load("tiny")
    unmerged.model = PeftModel.from_pretrained(unmerged.model, tmp_path / "run" / "adapter").eval()
    assert any(torch.count_nonzero(p) for n, p in unmerged.model.named_parameters() if "lora_B" in n)  # the adapter moved
    pixels = merged.preprocessor([image for image, _ in pairs])
    expected = hf_generate(unmerged, pixels, PROMPT, 12)
    assert [c.token_ids for c in merged.caption([image for image, _ in pairs], PROMPT, max_new_tokens=12)] == expected


def test_default_lora_targets_are_the_decoders_linear_layers(tiny):
    import re

    names = [name for name, module in tiny.model.named_modules() if re.fullmatch(f"({DEFAULT_LORA_TARGETS})", name)]
    per_layer = {name.split(".layer.")[1].split(".", 1)[1] for name in names}
    assert per_layer == {
        "attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense",
        "crossattention.self.query", "crossattention.self.key", "crossattention.self.value", "crossattention.output.dense",
        "intermediate.dense", "output.dense",
    }  # fmt: skip
    assert len(names) == 10 * len(tiny.text_decoder.layers)


# --- resume and processes ----------------------------------------------------------------------------------

RUN = """
import os, signal, sys, json, bliptk, transformers
from bliptk.finetuning import finetune
pairs, die_at = json.loads(sys.argv[2]), int(sys.argv[4])
train_step = transformers.Trainer.training_step

def training_step(trainer, *args, **kwargs):
    # A hard kill in the middle of step die_at: no handler runs, nothing is flushed or saved.
    if trainer.state.global_step + 1 == die_at:
        os.kill(os.getpid(), signal.SIGKILL)
    return train_step(trainer, *args, **kwargs)

transformers.Trainer.training_step = training_step
finetune("tiny", pairs, out=sys.argv[1], lr=1e-3, max_steps=int(sys.argv[3]), batch_size=2, save_steps=3, resume=True)
"""


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(folder / "model.safetensors")


@pytest.mark.slow
def test_killed_and_resumed_ends_equal_to_an_uninterrupted_run(pairs, tmp_path):
    data = json.dumps([[str(image), caption] for image, caption in pairs])
    steps = 30
    subprocess.run([sys.executable, "-c", RUN, str(tmp_path / "whole"), data, str(steps), "0"], check=True, capture_output=True)
    killed = tmp_path / "killed"
    died = subprocess.run([sys.executable, "-c", RUN, str(killed), data, str(steps), "8"], capture_output=True)
    assert died.returncode == -signal.SIGKILL
    assert not (killed / "model.safetensors").exists()  # it was killed mid-run, after checkpoint 6
    assert sorted(p.name for p in (killed / "checkpoints").glob("checkpoint-*")) == ["checkpoint-3", "checkpoint-6"]
    subprocess.run([sys.executable, "-c", RUN, str(killed), data, str(steps), "0"], check=True, capture_output=True)
    whole, resumed = _weights(tmp_path / "whole"), _weights(killed)
    assert whole.keys() == resumed.keys()
    for name in whole:
        torch.testing.assert_close(resumed[name], whole[name], rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.slow
def test_two_processes_follow_one_process_with_the_whole_batch(pairs, tmp_path):
    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps({"image": str(Path(image).name), "caption": caption}) + "\n" for image, caption in pairs))
    for image, _ in pairs:
        (tmp_path / Path(image).name).write_bytes(Path(image).read_bytes())
    common = ["--model", "tiny", "--train", str(train), "--max-steps", "4", "--lr", "1e-3", "--save-steps", "4"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    single = subprocess.run(
        [sys.executable, "-m", "bliptk", "finetune", *common, "--batch-size", "6", "--out", str(tmp_path / "one")],
        env=env,
        capture_output=True,
        text=True,
    )
    assert single.returncode == 0, single.stderr[-2000:]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    double = subprocess.run(
        [*torchrun, "-m", "bliptk", "finetune", *common, "--batch-size", "3", "--out", str(tmp_path / "two")],
        env=env,
        capture_output=True,
        text=True,
    )
    assert double.returncode == 0, double.stderr[-3000:]
    one, two = (json.loads((tmp_path / name / "finetune.json").read_text())["history"] for name in ("one", "two"))
    losses_one = [e["loss"] for e in one if "loss" in e]
    losses_two = [e["loss"] for e in two if "loss" in e]
    assert len(losses_one) == len(losses_two) == 4
    # Each process averages over its own captions' tokens and the gradients are averaged over the two:
    # a mean of two means, not one mean over all six captions, so the curves agree to about 0.5%.
    np.testing.assert_allclose(losses_two, losses_one, rtol=1e-2)
    assert losses_two[-1] < losses_two[0] - 0.5


# --- the output folder and mistakes -----------------------------------------------------------------------


def test_an_existing_output_is_refused_before_the_model_loads(pairs, tmp_path, monkeypatch):
    out = tmp_path / "run"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    monkeypatch.setattr(bliptk.loading, "load", lambda *a, **k: pytest.fail("loaded a model"))
    with pytest.raises(bliptk.OutputExistsError, match="resume=True"):
        finetune("tiny", pairs, out=out, max_steps=1)


def test_resuming_a_run_made_otherwise_is_refused(pairs, tmp_path):
    finetune("tiny", pairs, out=tmp_path / "run", max_steps=1, batch_size=6)
    with pytest.raises(bliptk.InvalidOptionError, match="other options"):
        finetune("tiny", pairs, out=tmp_path / "run", max_steps=1, batch_size=6, lr=1e-3, resume=True)
    with pytest.raises(bliptk.InvalidOptionError, match="other data"):
        finetune("tiny", pairs[:5], out=tmp_path / "run", max_steps=1, batch_size=6, resume=True)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"lr": -1}, "lr must be a non-negative number"),
        ({"batch_size": 0}, "batch_size must be an integer >= 1"),
        ({"label_smoothing": 1.0}, "label_smoothing must be below 1"),
        ({"dtype": "int8"}, "dtype must be float32, bfloat16"),
        ({"lora": "big"}, "lora must be None, a rank"),
        ({"lora": {"rank": 4}}, "unknown lora option 'rank'"),
        ({"learning_rate": 1e-4}, "unknown option 'learning_rate'"),
    ],
)
def test_option_mistakes_are_named(pairs, tmp_path, options, message):
    with pytest.raises(bliptk.InvalidOptionError, match=message):
        finetune("tiny", pairs, out=tmp_path / "run", **options)


def test_a_compiled_captioner_is_refused(pairs, tmp_path):
    with pytest.raises(bliptk.InvalidOptionError, match=r"fine-tune an uncompiled captioner.*compile=True"):
        finetune("tiny", pairs, out=tmp_path / "run", load_options={"compile": True}, max_steps=1)
    assert not (tmp_path / "run").exists()


def test_validation_loss_at_each_epoch_and_the_best_kept(pairs, tmp_path, monkeypatch):
    monkeypatch.setattr("bliptk.finetuning._caption_metrics", lambda *a: None)  # the loss alone decides
    result = finetune("tiny", pairs, out=tmp_path / "run", val=pairs[:2], epochs=3, batch_size=3, lr=1e-3)
    evaluations = [e for e in result.history if "eval_loss" in e]
    assert [e["step"] for e in evaluations] == [0, 2, 4, 6]  # the base model first
    assert result.best_checkpoint.endswith(f"checkpoint-{min(evaluations[1:], key=lambda e: e['eval_loss'])['step']}")
    figure = result.plot()
    assert [line.get_label() for line in figure.axes[0].lines] == ["training loss", "validation loss"]


@pytest.mark.slow
def test_coco_metrics_before_training_and_at_each_epoch(pairs, tmp_path):
    pytest.importorskip("pycocoevalcap")
    val = pairs[:3]
    result = finetune("tiny", pairs, out=tmp_path / "run", val=val, epochs=1, batch_size=3, lr=1e-3)
    scored = [e for e in result.history if "eval_CIDEr" in e]
    assert [e["step"] for e in scored] == [0, 2] and [e["step"] for e in result.history if "eval_loss" in e] == [0, 2]
    # Before training: the untrained net's captions with the paper's decoding, scored by bliptk.evaluate.
    untrained = bliptk.load("tiny")
    captions = untrained.caption([image for image, _ in val], PROMPT, num_beams=3, max_new_tokens=16, min_new_tokens=1)
    expected = bliptk.evaluate(
        [{"image_id": str(image), "caption": c.text} for (image, _), c in zip(val, captions, strict=True)],
        [{"image_id": str(image), "captions": [caption]} for image, caption in val],
    )
    assert {name: scored[0][f"eval_{name}"] for name in expected.metrics} == pytest.approx(dict(expected.metrics))
    assert result.best_checkpoint.endswith(f"checkpoint-{max(scored[1:], key=lambda e: e['eval_CIDEr'])['step']}")
    figure = result.plot()
    assert [line.get_label() for line in figure.axes[1].lines] == ["CIDEr"]
