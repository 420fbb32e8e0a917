"""Fine-tuning: BLIP's labels and loss against transformers' model, memorising six pairs (full and
LoRA), LoRA merged equal to unmerged, kill and resume, two processes under torchrun, the output
folder and its finetune.json."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps
from transformers import TrainerCallback

import bliptk
from bliptk.model.parity import hf_generate
from bliptk.training.data import text_example
from bliptk.training.finetune import DEFAULT_LORA_TARGETS, finetune

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
    base = bliptk.model.loading.architecture("ViT-B/16")  # shapes only, on the meta device
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
from bliptk.training.finetune import finetune
pairs, die_at = json.loads(sys.argv[2]), int(sys.argv[4])
train_step = transformers.Trainer.training_step

def training_step(trainer, *args, **kwargs):
    # A hard kill in the middle of step die_at: no handler runs, nothing is flushed or saved.
    if trainer.state.global_step + 1 == die_at:
        os.kill(os.getpid(), signal.SIGKILL)
    return train_step(trainer, *args, **kwargs)

transformers.Trainer.training_step = training_step
lora = {"r": 4} if sys.argv[5] == "lora" else None
finetune("tiny", pairs, out=sys.argv[1], lr=1e-3, max_steps=int(sys.argv[3]), batch_size=2, save_steps=3, resume=True, lora=lora, keep_checkpoints=2)
"""


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(folder / "model.safetensors")


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["full", "lora"])
def test_killed_and_resumed_ends_equal_to_an_uninterrupted_run(pairs, tmp_path, kind):
    data = json.dumps([[str(image), caption] for image, caption in pairs])
    steps = 30
    subprocess.run([sys.executable, "-c", RUN, str(tmp_path / "whole"), data, str(steps), "0", kind], check=True, capture_output=True)
    killed = tmp_path / "killed"
    died = subprocess.run([sys.executable, "-c", RUN, str(killed), data, str(steps), "8", kind], capture_output=True)
    assert died.returncode == -signal.SIGKILL
    assert not (killed / "model.safetensors").exists()  # it was killed mid-run, after checkpoint 6
    assert sorted(p.name for p in (killed / "checkpoints").glob("checkpoint-*")) == ["checkpoint-3", "checkpoint-6"]
    subprocess.run([sys.executable, "-c", RUN, str(killed), data, str(steps), "0", kind], check=True, capture_output=True)
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
    import bliptk.model.loading  # imported lazily: patched where it is

    monkeypatch.setattr(bliptk.model.loading, "load", lambda *a, **k: pytest.fail("loaded a model"))
    for resume in (False, True):
        with pytest.raises(bliptk.OutputError, match=r"run holds 1 other file \(notes.txt\), not a fine-tuning run; .*choose another"):
            finetune("tiny", pairs, out=out, max_steps=1, resume=resume)
    assert [p.name for p in out.iterdir()] == ["notes.txt"] and (out / "notes.txt").read_text() == "mine"


def test_resuming_a_run_made_otherwise_is_refused_naming_what_differs(pairs, tmp_path):
    finetune("tiny", pairs, out=tmp_path / "run", max_steps=1, batch_size=6)
    with pytest.raises(
        bliptk.OutputExistsError, match="it holds a fine-tuning run: pass resume=True to continue it, or choose another out"
    ):
        finetune("tiny", pairs, out=tmp_path / "run", max_steps=1, batch_size=6)
    with pytest.raises(bliptk.InvalidOptionError, match=r"other options \(lr 1e-05 \(this run: 0.001\)\); resuming needs the same"):
        finetune("tiny", pairs, out=tmp_path / "run", max_steps=1, batch_size=6, lr=1e-3, resume=True)
    with pytest.raises(bliptk.InvalidOptionError, match=r"other data \(train.fingerprint .*; train.rows 6 \(this run: 5\)"):
        finetune("tiny", pairs[:5], out=tmp_path / "run", max_steps=1, batch_size=6, resume=True)
    # How many checkpoints are kept changes nothing the run makes: it resumes.
    finetune("tiny", pairs, out=tmp_path / "run", max_steps=1, batch_size=6, resume=True, keep_checkpoints=3)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"lr": -1}, "lr must be a finite non-negative number"),
        ({"batch_size": 0}, "batch_size must be an integer >= 1"),
        ({"label_smoothing": 1.0}, "label_smoothing must be below 1"),
        ({"dtype": "int8"}, "dtype must be float32, bfloat16"),
        ({"lora": "big"}, "lora must be None, a rank"),
        ({"lora": {"rank": 4}}, "unknown lora option 'rank'"),
        ({"learning_rate": 1e-4}, "unknown option 'learning_rate'"),
        ({"keep_checkpoints": 0}, "keep_checkpoints must be an integer >= 1"),
        ({"seed": -1}, "seed must be a non-negative integer"),
        ({"lora": {"targets": "("}}, r"lora targets '\(' is not a regular expression"),
        ({"lora": {"r": 4, "targets": "nomatch"}}, "lora targets 'nomatch' match none of the model's linear layers"),
        ({"prompt": "a " * 45}, "the prompt takes 46 of the 40 positions of a training text"),
    ],
)
def test_option_mistakes_are_named_before_the_model_loads(pairs, tmp_path, monkeypatch, options, message):
    import bliptk.model.loading  # imported lazily: patched where it is

    monkeypatch.setattr(bliptk.model.loading, "load", lambda *a, **k: pytest.fail("loaded a model"))
    with pytest.raises(bliptk.InvalidOptionError, match=message):
        finetune("tiny", pairs, out=tmp_path / "run", **options)
    assert not (tmp_path / "run").exists()


def test_what_cannot_be_trained_is_refused(tiny, pairs, tmp_path):
    with pytest.raises(bliptk.InvalidArgumentError, match="out must be the output folder, a path; got None"):
        finetune("tiny", pairs, out=None)
    with pytest.raises(bliptk.InvalidOptionError, match=r"fine-tune a float32 \(or bfloat16\) captioner, then quantize the result"):
        finetune("tiny", pairs, out=tmp_path / "run", load_options={"dtype": "int8"})
    with pytest.raises(bliptk.InvalidOptionError, match="unknown load option 'seed'"):
        finetune("tiny", pairs, out=tmp_path / "run", load_options={"seed": 3})
    with pytest.raises(bliptk.InvalidOptionError, match="load_options apply to a model given by name"):
        finetune(tiny, pairs, out=tmp_path / "run", load_options={"pretrained": False})
    assert not (tmp_path / "run").exists()


def test_a_compiled_captioner_is_refused(pairs, tmp_path):
    with pytest.raises(bliptk.InvalidOptionError, match=r"fine-tune an uncompiled captioner.*compile=True"):
        finetune("tiny", pairs, out=tmp_path / "run", load_options={"compile": True}, max_steps=1)
    assert not (tmp_path / "run").exists()


def test_validation_loss_at_each_epoch_and_the_best_kept(pairs, tmp_path, monkeypatch):
    monkeypatch.setattr("bliptk.training.run._caption_metrics", lambda *a: None)  # the loss alone decides
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


# --- in place, seeds, the checkpoint's prompt --------------------------------------------------------------


def test_a_captioner_trained_in_place_is_the_one_in_out(pairs, photos, tmp_path):
    captioner = bliptk.load("tiny")
    base = captioner.weights
    finetune(captioner, pairs, out=tmp_path / "run", lr=1e-3, max_steps=3, batch_size=6)
    loaded = bliptk.load(tmp_path / "run")
    assert captioner.weights.fingerprint != base.fingerprint
    assert (captioner.name, captioner.weights, captioner.prompt) == (loaded.name, loaded.weights, loaded.prompt)
    assert captioner.prompt == PROMPT and captioner.provenance() == loaded.provenance()
    assert [c.token_ids for c in captioner.caption(photos, max_new_tokens=8)] == [
        c.token_ids for c in loaded.caption(photos, max_new_tokens=8)
    ]


def test_a_lora_captioner_trained_in_place_captions_as_the_merged_checkpoint(pairs, photos, tmp_path):
    captioner = bliptk.load("tiny")
    finetune(captioner, pairs, out=tmp_path / "run", lr=1e-2, max_steps=5, batch_size=6, lora=4)
    loaded = bliptk.load(tmp_path / "run")
    assert captioner.weights == loaded.weights and not any("lora" in name for name, _ in captioner.model.named_parameters())
    assert [c.token_ids for c in captioner.caption(photos, max_new_tokens=8)] == [
        c.token_ids for c in loaded.caption(photos, max_new_tokens=8)
    ]


def test_an_int8_captioner_is_refused(pairs, tmp_path):
    with pytest.raises(bliptk.InvalidOptionError, match="fine-tune a float32"):
        finetune(bliptk.load("tiny", dtype="int8"), pairs, out=tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_lora_runs_with_one_seed_are_equal(pairs, tmp_path):
    """The adapters are initialised after the seed (issue 31: lr 0, one step, runs differed by 0.35)."""
    for name in ("a", "b", "c"):
        finetune("tiny", pairs, out=tmp_path / name, lr=0, max_steps=1, batch_size=6, lora=4, seed=1 if name == "c" else 0)
    adapters = {name: _adapters(tmp_path / name) for name in "abc"}
    assert adapters["a"].keys() == adapters["b"].keys() and adapters["a"]
    assert all(torch.equal(adapters["a"][key], adapters["b"][key]) for key in adapters["a"])
    assert any(not torch.equal(adapters["a"][key], adapters["c"][key]) for key in adapters["a"] if "lora_A" in key)


def _adapters(run: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    [checkpoint] = (run / "checkpoints").glob("checkpoint-*")
    return load_file(checkpoint / "adapter_model.safetensors")


def test_the_checkpoint_captions_after_the_prompt_it_learned(pairs, photos, tmp_path, capsys):
    out = tmp_path / "run"
    finetune("tiny", pairs, out=out, max_steps=1, batch_size=6, prompt="a snapshot of ")
    assert json.loads((out / "captioning.json").read_text()) == {"prompt": "a snapshot of ", "random_origin": {"model": "tiny", "seed": 0}}
    [checkpoint] = (out / "checkpoints").iterdir()  # a checkpoint too is captioned after its prompt
    assert bliptk.load(checkpoint).prompt == "a snapshot of "
    tuned = bliptk.load(out)
    assert tuned.prompt == "a snapshot of " and tuned.caption(photos[0], max_new_tokens=3).text.startswith("a snapshot of")
    assert tuned.caption(photos[0], "a photo of", max_new_tokens=3).text.startswith("a photo of")  # a given prompt wins
    from bliptk.cli.main import main

    assert main(["caption", str(photos[0]), "--model", str(out), "--max-new-tokens", "3"]) == 0
    assert capsys.readouterr().out.startswith(f"{photos[0]}: a snapshot of")
    [record] = tuned.caption_files([photos[0]], max_new_tokens=3)
    assert record["options"]["prompt"] == "a snapshot of " and record["caption"].startswith("a snapshot of")


def test_an_export_of_a_fine_tuned_checkpoint_keeps_its_prompt(pairs, photos, tmp_path):
    pytest.importorskip("onnxscript")
    finetune("tiny", pairs, out=tmp_path / "run", max_steps=1, batch_size=6, prompt="a snapshot of ")
    tuned = bliptk.load(tmp_path / "run")
    folder = bliptk.export(tuned, tmp_path / "export")
    runner = bliptk.exported.load(folder)
    assert runner.prompt == "a snapshot of " and json.loads((folder / "manifest.json").read_text())["prompt"] == "a snapshot of "
    assert runner.caption(photos[0], max_new_tokens=4).token_ids == tuned.caption(photos[0], max_new_tokens=4).token_ids
    assert runner.caption(photos[0], max_new_tokens=4).text.startswith("a snapshot of")


# --- recovery: torn checkpoints, a full disk, undecodable images -------------------------------------------


def _run_with_checkpoints(pairs, out: Path, steps: int = 4, **options):
    return finetune("tiny", pairs, out=out, lr=1e-3, max_steps=steps, batch_size=3, save_steps=2, keep_checkpoints=2, **options)


@pytest.mark.parametrize(
    ("tear", "why"),
    [
        (
            lambda c: (c / "model.safetensors").write_bytes((c / "model.safetensors").read_bytes()[:1000]),
            r"model.safetensors is 1,000 bytes",
        ),
        (lambda c: (c / "trainer_state.json").unlink(), "trainer_state.json is missing"),
        (lambda c: (c / "bliptk-complete.json").unlink(), "it was not saved whole"),
    ],
    ids=["truncated weights", "no trainer state", "killed while saving"],
)
def test_a_torn_last_checkpoint_resumes_from_the_one_before(pairs, tmp_path, tear, why):
    whole = _run_with_checkpoints(pairs, tmp_path / "whole")
    torn = tmp_path / "torn"
    _run_with_checkpoints(pairs, torn)
    # As if killed after checkpoint 4, before the final save: no final weights, the run not finished.
    (torn / "model.safetensors").unlink()
    made = json.loads((torn / "finetune.json").read_text())
    (torn / "finetune.json").write_text(json.dumps({**made, "finished": False}))
    tear(torn / "checkpoints" / "checkpoint-4")
    with pytest.warns(
        bliptk.CheckpointWarning, match=rf"checkpoint-4 is torn \({why}.*\): removed, resuming from the checkpoint before it"
    ):
        resumed = _run_with_checkpoints(pairs, torn, resume=True)
    assert [e["step"] for e in resumed.history if "loss" in e][-2:] == [3, 4]  # steps 3 and 4 trained again
    expected, got = _weights(tmp_path / "whole"), _weights(torn)
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-5, atol=1e-6, msg=name)
    assert len(whole.history) > 0


def test_a_full_disk_while_saving_is_one_line_and_the_run_resumes(pairs, tmp_path, monkeypatch, capsys):
    from conftest import mounted

    from bliptk.cli.main import main

    with mounted("", size="24m") as disk:
        if disk is None:
            pytest.skip("a small tmpfs needs root")
        monkeypatch.setattr("bliptk.training.finetune.check_space", lambda *a: None)  # the estimate would refuse the run first
        data = _jsonl(pairs, tmp_path / "train.jsonl")
        command = ["finetune", "--model", "tiny", "--train", str(data), "--max-steps", "6", "--save-steps", "1", "--batch-size", "3"]
        assert main([*command, "--out", str(disk / "run"), "--keep-checkpoints", "4"]) == 2
        err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("bliptk: error")]
        assert len(err) == 1 and re.fullmatch(
            rf"bliptk: error: {disk}/run: cannot save checkpoint checkpoint-\d \(the disk is full\); it was removed, the "
            r"checkpoints before it are kept: free space, then --resume",
            err[0],
        ), err
        saved = sorted((disk / "run" / "checkpoints").iterdir())
        assert saved and all((checkpoint / "bliptk-complete.json").is_file() for checkpoint in saved)  # no torn one left
        subprocess.run(["mount", "-o", "remount,size=200m", str(disk)], check=True)
        assert main([*command, "--out", str(disk / "run"), "--keep-checkpoints", "4", "--resume"]) == 0
        assert bliptk.load(disk / "run").weights.source == "pretrained"


def _jsonl(pairs, path: Path) -> Path:
    path.write_text("".join(json.dumps({"image": str(image), "caption": caption}) + "\n" for image, caption in pairs))
    return path


def test_an_image_that_does_not_decode_is_left_out_and_the_run_finishes(pairs, tmp_path):
    """A truncated JPEG passes the read-time check (Pillow's verify) and fails when decoded."""
    from PIL import Image as PILImage

    broken = tmp_path / "truncated.jpg"
    data = Path(pairs[0][0]).read_bytes() if Path(pairs[0][0]).suffix == ".jpg" else None
    if data is None:
        PILImage.open(pairs[0][0]).convert("RGB").save(tmp_path / "whole.jpg")
        data = (tmp_path / "whole.jpg").read_bytes()
    broken.write_bytes(data[: len(data) // 2])
    train = [(broken, "a broken photo"), *pairs[:2]]
    with pytest.warns(bliptk.DataWarning, match=r"truncated.jpg: does not decode \(.*truncated.*\); left out of its batch") as said:
        result = finetune("tiny", train, out=tmp_path / "run", lr=1e-3, epochs=2, batch_size=1)
    assert len([w for w in said if "does not decode" in str(w.message)]) == 1  # named once, though met each epoch
    assert result.undecodable == [str(broken)] and result.skipped["train"] == 2
    steps = [e for e in result.history if "step" in e and "train_runtime" not in e]
    assert [e["step"] for e in steps] == [1, 2, 3, 4, 5, 6] and sum("loss" not in e for e in steps) == 2  # its batches: no loss
    made = json.loads((tmp_path / "run" / "finetune.json").read_text())
    assert made["finished"] and made["undecodable"] == [str(broken)]


def test_checkpoints_kept_are_as_many_as_asked(pairs, tmp_path):
    finetune("tiny", pairs, out=tmp_path / "one", max_steps=4, batch_size=3, save_steps=1)
    finetune("tiny", pairs, out=tmp_path / "three", max_steps=4, batch_size=3, save_steps=1, keep_checkpoints=3)
    assert sorted(p.name for p in (tmp_path / "one" / "checkpoints").iterdir()) == ["checkpoint-4"]
    assert sorted(p.name for p in (tmp_path / "three" / "checkpoints").iterdir()) == ["checkpoint-2", "checkpoint-3", "checkpoint-4"]


def test_outputs_are_shared_as_the_umask_says(pairs, tmp_path):
    previous = os.umask(0o027)
    try:
        finetune("tiny", pairs, out=tmp_path / "run", max_steps=1, batch_size=6)
    finally:
        os.umask(previous)
    for name in ("finetune.json", "model.safetensors", "config.json", "captioning.json", "vocab.txt"):
        assert (tmp_path / "run" / name).stat().st_mode & 0o777 == 0o640, name


def test_resuming_a_finished_run_trains_nothing_and_loads_no_model(pairs, photos, tmp_path, monkeypatch):
    """Ctrl-C in such a resume left finetune.json unfinished and its history gone (issue 31's probe)."""
    out = tmp_path / "run"
    first = finetune("tiny", pairs, out=out, lr=1e-3, max_steps=2, batch_size=6)
    manifest = (out / "finetune.json").read_bytes()
    weights = (out / "model.safetensors").read_bytes()
    import bliptk.model.loading  # imported lazily: patched where it is

    monkeypatch.setattr(bliptk.model.loading, "load", lambda *a, **k: pytest.fail("loaded a model"))
    again = finetune("tiny", pairs, out=out, lr=1e-3, max_steps=2, batch_size=6, resume=True)
    assert again.history == first.history and again.best_checkpoint == first.best_checkpoint
    assert (out / "finetune.json").read_bytes() == manifest and (out / "model.safetensors").read_bytes() == weights
    monkeypatch.undo()
    captioner = bliptk.load("tiny")  # given to train in place, it becomes the finished run's model
    finetune(captioner, pairs, out=out, lr=1e-3, max_steps=2, batch_size=6, resume=True)
    assert captioner.weights == bliptk.load(out).weights and captioner.prompt == PROMPT


class _Interrupt(TrainerCallback):
    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == 2:
            raise KeyboardInterrupt


@pytest.mark.parametrize("lora", [None, 4])
def test_a_captioner_interrupted_in_place_does_not_pass_for_its_base(pairs, photos, tmp_path, monkeypatch, lora):
    """Full training changed its weights: its fingerprint says so. LoRA's adapters are removed: it is
    its base again, exactly (issue 31's probe: the base's fingerprint was kept over half-trained weights)."""
    from bliptk.training import run

    monkeypatch.setattr(run._Progress, "on_step_end", _Interrupt.on_step_end)
    captioner, base = bliptk.load("tiny"), bliptk.load("tiny")
    with pytest.raises(KeyboardInterrupt):
        finetune(captioner, pairs, out=tmp_path / "run", lr=1e-2, max_steps=4, batch_size=3, save_steps=1, lora=lora)
    assert captioner.name == "tiny" and captioner.model.training is False
    if lora is None:
        assert captioner.weights.fingerprint != base.weights.fingerprint
    else:
        assert captioner.weights == base.weights and not any("lora" in name for name, _ in captioner.model.named_parameters())
        assert captioner.caption(photos[0], max_new_tokens=6).token_ids == base.caption(photos[0], max_new_tokens=6).token_ids


def test_a_captioner_trained_in_place_with_a_frozen_encoder_is_explained(pairs, photos, tmp_path):
    captioner = bliptk.load("tiny")
    finetune(captioner, pairs, out=tmp_path / "run", max_steps=1, batch_size=6, freeze_vision=True)
    explanation = bliptk.explain(captioner, photos[0], "a dog", method="relevance")  # gradients reach the image again
    assert np.isfinite(explanation.maps).all() and explanation.maps.any()


def test_checkpoints_and_adapters_are_shared_as_the_umask_says(pairs, tmp_path):
    previous = os.umask(0o027)
    try:
        finetune("tiny", pairs, out=tmp_path / "full", max_steps=1, batch_size=6)
        finetune("tiny", pairs, out=tmp_path / "lora", max_steps=1, batch_size=6, lora={"r": 4, "save_adapter": True})
    finally:
        os.umask(previous)
    files = [p for run in ("full", "lora") for p in (tmp_path / run).rglob("*") if p.is_file()]
    assert (
        files and {p.relative_to(tmp_path).as_posix(): p.stat().st_mode & 0o777 for p in files if p.stat().st_mode & 0o777 != 0o640} == {}
    )


def test_a_finished_run_resumed_from_another_base_is_refused(pairs, tmp_path, capsys):
    from bliptk.cli.main import main

    out = tmp_path / "run"
    finetune("tiny", pairs, out=out, max_steps=1, batch_size=6)
    with pytest.raises(
        bliptk.InvalidOptionError, match=r"run holds a run made with other base weights \(fingerprint .*; seed 0 \(this run: 7\)\)"
    ):
        finetune(bliptk.load("tiny", weights_seed=7), pairs, out=out, max_steps=1, batch_size=6, resume=True)
    with pytest.raises(bliptk.InvalidOptionError, match=r"other base model \("):
        finetune("ViT-B/16", pairs, out=out, max_steps=1, batch_size=6, resume=True, load_options={"pretrained": False})
    data = _jsonl(pairs, tmp_path / "train.jsonl")
    arguments = ["finetune", "--model", "tiny", "--train", str(data), "--max-steps", "1", "--batch-size", "6", "--resume"]
    finetune("tiny", data, out=tmp_path / "cli", max_steps=1, batch_size=6)
    assert main([*arguments, "--out", str(tmp_path / "cli")]) == 0
    assert capsys.readouterr().out == f"the run in {tmp_path / 'cli'} had finished: nothing to train; its model is there\n"
    # The same run, with its data under another name and float32 said aloud: the same, so it resumes.
    renamed = _jsonl(pairs, tmp_path / "renamed.jsonl")
    assert main([*arguments[:4], str(renamed), *arguments[5:], "--dtype", "float32", "--out", str(tmp_path / "cli")]) == 0


def test_a_finished_run_whose_weights_are_gone_saves_them_again(pairs, tmp_path):
    out = tmp_path / "run"
    finetune("tiny", pairs, out=out, max_steps=2, batch_size=6)
    weights = (out / "model.safetensors").read_bytes()
    (out / "model.safetensors").unlink()
    finetune("tiny", pairs, out=out, max_steps=2, batch_size=6, resume=True)
    assert (out / "model.safetensors").read_bytes() == weights


def test_gradient_checkpointing_says_nothing_a_user_cannot_act_on(pairs, tmp_path):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)  # transformers' deprecation of gradient_checkpointing_enable
        finetune("tiny", pairs, out=tmp_path / "run", max_steps=1, batch_size=6, gradient_checkpointing=True)


# --- random weights, said --------------------------------------------------------------------------------


def test_a_run_from_random_weights_says_so_and_so_do_its_captions(pairs, photos, tmp_path):
    from bliptk.core import pipeline

    out = tmp_path / "run"
    with pytest.warns(bliptk.RandomWeightsWarning, match=r"^fine-tuning from random weights \(tiny, seed 0\), not pretrained ones"):
        finetune("tiny", pairs, out=out, max_steps=2, batch_size=6, save_steps=1, keep_checkpoints=2)
    origin = {"model": "tiny", "seed": 0}
    assert json.loads((out / "finetune.json").read_text())["random_origin"] == origin
    assert json.loads((out / "captioning.json").read_text()) == {"prompt": PROMPT, "random_origin": origin}
    checkpoint = out / "checkpoints" / "checkpoint-1"
    assert json.loads((checkpoint / "captioning.json").read_text()) == {"prompt": PROMPT, "random_origin": origin}
    pipeline._RANDOM_ORIGINS.clear()  # as a fresh process knows nothing of the run
    captioner = bliptk.load(out)
    assert captioner.weights.source == "pretrained"  # a checkpoint: its records name its own weights
    # Its weights as its files say, unloaded (a resumed caption job with nothing to do): the loaded ones'.
    assert bliptk.model.loading.checkpoint_identity(out) == (str(out), captioner.weights, PROMPT)
    said = rf"^{re.escape(str(out))} was fine-tuned from random weights \(tiny, seed 0\), not from pretrained ones: its captions"
    with pytest.warns(bliptk.RandomWeightsWarning, match=said):
        captioner.caption(photos[0], max_new_tokens=2)
    # A run from that checkpoint descends from the same random weights.
    with pytest.warns(bliptk.RandomWeightsWarning, match=r"^fine-tuning from random weights \(tiny, seed 0\)"):
        finetune(out, pairs, out=tmp_path / "again", max_steps=1, batch_size=6)
    assert json.loads((tmp_path / "again" / "finetune.json").read_text())["random_origin"] == origin


def test_a_run_from_pretrained_weights_says_nothing_of_random_ones(pairs, photos, tiny_checkpoint, tmp_path, monkeypatch):
    import warnings

    from bliptk.core import pipeline

    # tiny_checkpoint holds tiny's seed-0 weights: a run of another test that fine-tuned those from random
    # weights without changing them (lr 0) would have said of these very bytes that they came from random ones.
    monkeypatch.setattr(pipeline, "_RANDOM_ORIGINS", {})

    with warnings.catch_warnings():
        warnings.simplefilter("error", bliptk.RandomWeightsWarning)
        finetune(tiny_checkpoint, pairs, out=tmp_path / "run", max_steps=1, batch_size=6)
        bliptk.load(tmp_path / "run").caption(photos[0], max_new_tokens=2)
    assert json.loads((tmp_path / "run" / "finetune.json").read_text())["random_origin"] is None
    assert json.loads((tmp_path / "run" / "captioning.json").read_text()) == {"prompt": PROMPT}


def test_a_captioner_trained_in_place_from_random_weights_says_so_when_it_captions(pairs, photos, tmp_path):
    captioner = bliptk.load("tiny")
    with pytest.warns(bliptk.RandomWeightsWarning):
        finetune(captioner, pairs, out=tmp_path / "run", max_steps=1, batch_size=6)
    with pytest.warns(bliptk.RandomWeightsWarning, match=r"was fine-tuned from random weights \(tiny, seed 0\)"):
        captioner.caption(photos[0], max_new_tokens=2)


# --- the progress bar in a notebook ----------------------------------------------------------------------


@pytest.mark.slow
def test_a_notebook_saves_the_bar_as_it_ended(pairs, tmp_path):
    """tqdm's notebook widget carries, for viewers without widgets (a saved notebook on GitHub, the
    docs), the text it had when shown: 0%. The run's bar is shown again once closed."""
    import nbformat
    from nbclient import NotebookClient

    source = (
        "import warnings\nwarnings.simplefilter('ignore')\nfrom bliptk.training.finetune import finetune\n"
        f"finetune('tiny', {[(str(image), caption) for image, caption in pairs]!r}, out={str(tmp_path / 'run')!r}, max_steps=2, batch_size=6)\n"
        "None"
    )
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(source)])
    NotebookClient(notebook, timeout=300, kernel_name="python3").execute()
    outputs = notebook.cells[0].outputs
    bars = [o.data["text/plain"] for o in outputs if "application/vnd.jupyter.widget-view+json" in o.get("data", {})]
    assert len(bars) == 1 and bars[0].startswith("fine-tuning"), outputs
    assert "100%" in bars[0] and "2/2" in bars[0], bars[0]
