"""One error contract: every mistake a caller can make raises a BliptkError, which also keeps the
built-in error it refines, and the command line maps them all to exit code 2."""

import ast
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import DATA, VIDEOS

import bliptk
import bliptk.exported
from bliptk.cli.main import main
from bliptk.core.tokenizer import Tokenizer

REFERENCES = DATA / "references.json"


def _caption_with_attention(tiny, photos):
    return tiny.caption(photos[0], max_new_tokens=3, return_attention=True)


MISTAKES = {
    "attention maps of a caption without attention": (
        lambda tiny, photos: bliptk.attention_maps(tiny.caption(photos[0], max_new_tokens=2)),
        ValueError,
        "caption it with return_attention=True",
    ),
    "an attention layer out of range": (
        lambda tiny, photos: bliptk.attention_maps(_caption_with_attention(tiny, photos), layer=5),
        ValueError,
        r"layer must be in \[-2, 1\]",
    ),
    "bad attention heads": (
        lambda tiny, photos: bliptk.attention_maps(_caption_with_attention(tiny, photos), heads="median"),
        ValueError,
        "heads must be",
    ),
    "a decoder state with too many positions": (
        lambda tiny, photos: tiny.text_decoder.start(tiny.encode_image(photos[0]), max_length=513),
        ValueError,
        "exceeds the decoder's 512 positions",
    ),
    "a full decoder cache": (
        lambda tiny, photos: tiny.text_decoder(torch.tensor([[30522, 1037]]), tiny.text_decoder.start(tiny.encode_image(photos[0]), 1)),
        ValueError,
        "the cache holds 1 positions; 2 needed",
    ),
    "net information of a number": (lambda tiny, photos: bliptk.net_information(42), TypeError, "not int"),
    "a stepper for several captions": (
        lambda tiny, photos: bliptk.Stepper(tiny, photos[0], bliptk.DecodingOptions(num_beams=2, num_return_sequences=2)),
        ValueError,
        "the stepper follows one caption: num_return_sequences must be 1, got 2",
    ),
    "nearest images without a captioner": (lambda tiny, photos: bliptk.nearest(photos[0], photos), TypeError, "pass captioner="),
    "a vocabulary that is not BERT's": (
        lambda tiny, photos: Tokenizer(Path(__file__).parent / "data" / "references.json"),
        ValueError,
        "expected BERT's 30,522-entry vocabulary",
    ),
    "an unknown option": (lambda tiny, photos: tiny.caption(photos[0], beams=3), ValueError, "unknown option"),
    "a projection of too few points": (lambda tiny, photos: bliptk.project(np.eye(3)), ValueError, "umap needs at least 4 points"),
}


@pytest.mark.parametrize("mistake", MISTAKES)
def test_every_mistake_raises_a_bliptk_error_that_keeps_its_builtin_base(tiny, photos, mistake):
    make, builtin, message = MISTAKES[mistake]
    with pytest.raises(bliptk.BliptkError, match=message) as error:
        make(tiny, photos)
    assert isinstance(error.value, builtin)


def test_the_command_line_maps_bliptk_errors_to_exit_2_without_a_table_of_types():
    source = (Path(bliptk.__file__).parent / "cli" / "main.py").read_text()
    main_function = next(node for node in ast.parse(source).body if isinstance(node, ast.FunctionDef) and node.name == "main")
    handled = [node for node in ast.walk(main_function) if isinstance(node, ast.ExceptHandler) and node.type is not None]
    caught = [ast.unparse(handler.type) for handler in handled]
    assert caught == ["BliptkError", "KeyboardInterrupt", "BrokenPipeError", "Exception"]


def test_an_error_deep_in_a_command_exits_2(tiny, photos, capsys):
    assert main(["attention", str(photos[0]), "--out", "x.png", "--model", "tiny", "--heads", "median", "--max-new-tokens", "2"]) == 2
    assert capsys.readouterr().err.splitlines()[-1].startswith('bliptk: error: --heads must be "mean", "max" or a head index')


# --- the faults of issue 22, each for the command line and the Python API -------------------------------
#
# Each case builds what it needs under a folder of its own and says: the command line's arguments
# (None where the fault has no command-line form), the Python call, the error type, and the message
# (a regex; ``cli`` when the command line words it otherwise). The command line must exit 2 with
# that message on one line and no traceback; the Python call must raise that type. Faults that need
# more than one process or a full disk have their own tests in test_records.py (two runs on one
# output, a full disk, a read-only folder); bad inputs, which end in records rather than errors, are
# in test_every_bad_input_gets_its_own_error_record below.


@dataclass
class Fault:
    cli: list[str] | None
    api: Callable | None
    error: type
    message: str
    cli_message: str | None = None


def _records(folder: Path, names: list[str]) -> Path:
    records = folder / "predictions.jsonl"
    records.write_text(
        "".join(json.dumps({"path": name, "caption": "a cat", "error": None, "model": "m", "options": {}}) + "\n" for name in names)
    )
    return records


def _references(folder: Path, references) -> Path:
    path = folder / "references.json"
    path.write_text(json.dumps(references))
    return path


def _checkpoint(ctx, change) -> Path:
    folder = ctx.tmp / "checkpoint"
    shutil.copytree(ctx.tiny_checkpoint, folder)
    change(folder)
    return folder


def _wrong_shape(folder: Path) -> None:
    from safetensors.torch import load_file, save_file

    weights = load_file(folder / "model.safetensors")
    weights["text_decoder.bert.encoder.layer.0.attention.self.query.weight"] = torch.zeros(3, 3)
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})


def _truncate(file: Path) -> None:
    data = file.read_bytes()
    file.write_bytes(data[: len(data) // 2])


def _absurd(folder: Path) -> None:
    config = json.loads((folder / "config.json").read_text())
    config["text_config"]["hidden_size"] = config["text_config"]["intermediate_size"] = 10**6
    (folder / "config.json").write_text(json.dumps(config))


def _export(ctx, change) -> Path:
    folder = ctx.tmp / "export"
    shutil.copytree(ctx.tiny_export, folder)
    change(folder)
    return folder


def _manifest(change):
    def edit(folder: Path) -> None:
        manifest = json.loads((folder / "manifest.json").read_text())
        change(manifest)
        (folder / "manifest.json").write_text(json.dumps(manifest))

    return edit


def _overwrite_bytes(file: Path) -> None:
    data = bytearray(file.read_bytes())
    data[len(data) // 3 : len(data) // 3 + 256] = bytes(range(256))
    file.write_bytes(bytes(data))


def _link_out(folder: Path) -> None:
    outside = folder.parent / "outside.onnx"
    shutil.copy(folder / "decoder.onnx", outside)
    (folder / "decoder.onnx").unlink()
    (folder / "decoder.onnx").symlink_to(outside)


def _caption_with(model: Path, photo: Path) -> list[str]:
    return ["caption", str(photo), "--model", str(model), "--max-new-tokens", "2"]


# --- the faults of issue 31: fine-tuning, explanations, every writer -----------------------------------------


def _pairs(ctx, name: str = "train.jsonl", **row) -> Path:
    data = ctx.tmp / name
    data.write_text("".join(json.dumps({"image": str(photo), "caption": "a dog", **row}) + "\n" for photo in ctx.photos))
    return data


def _finetune(ctx, *arguments: str) -> list[str]:
    return ["finetune", "--model", "tiny", "--train", str(_pairs(ctx)), "--max-steps", "1", "--batch-size", "3", *arguments]


def _api_finetune(ctx, model="tiny", **options):
    return lambda: bliptk.finetune(model, [(photo, "a dog") for photo in ctx.photos], max_steps=1, batch_size=3, **options)


def _run(ctx) -> Path:
    """A finished one-step fine-tuning run, of the data the faults' runs train on."""
    out = ctx.tmp / "run"
    bliptk.finetune("tiny", _pairs(ctx), out=out, max_steps=1, batch_size=3, lr=1e-3)
    return out


def _holding(ctx, name: str, content: str) -> Path:
    folder = ctx.tmp / "held"
    folder.mkdir(exist_ok=True)
    (folder / name).write_text(content)
    return folder


def _explain(ctx, *arguments: str) -> list[str]:
    return ["explain", str(ctx.photos[0]), "--model", "tiny", "--out", str(ctx.tmp / "why.png"), *arguments]


def _unwritable_cache(ctx) -> Path:
    blocker = ctx.tmp / "a-file"
    blocker.write_text("x")
    ctx.monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(blocker / "cache"))
    return blocker


def _no_room(ctx) -> None:
    import shutil as shell

    usage = shell.disk_usage(ctx.tmp)
    ctx.monkeypatch.setattr("bliptk.training.folder.shutil.disk_usage", lambda path: usage._replace(free=1000))
    ctx.monkeypatch.setattr("bliptk.model.loading.load", lambda *a, **k: pytest.fail("loaded a model"))


FAULTS_OF_ISSUE_31: dict[str, Callable] = {
    "finetune: --resume into the model's own checkpoint": lambda ctx: Fault(
        _finetune(ctx, "--out", str(_checkpoint(ctx, lambda f: None)), "--resume", "--model", str(ctx.tmp / "checkpoint")),
        _api_finetune(ctx, ctx.tmp / "checkpoint", out=ctx.tmp / "checkpoint", resume=True),
        bliptk.OutputError,
        r"out \S+/checkpoint is the model's own folder \S+/checkpoint, or inside it; write the result to a folder of its own",
        r"--out \S+/checkpoint is the model's own folder",
    ),
    "finetune: --out inside the model's folder": lambda ctx: Fault(
        _finetune(ctx, "--out", str(_checkpoint(ctx, lambda f: None) / "tuned"), "--model", str(ctx.tmp / "checkpoint")),
        _api_finetune(ctx, ctx.tmp / "checkpoint", out=ctx.tmp / "checkpoint" / "tuned"),
        bliptk.OutputError,
        r"checkpoint/tuned is the model's own folder \S+/checkpoint, or inside it",
    ),
    "finetune: --resume into a folder of foreign files": lambda ctx: Fault(
        _finetune(ctx, "--out", str(_holding(ctx, "config.json", "{}")), "--resume"),
        _api_finetune(ctx, out=ctx.tmp / "held", resume=True),
        bliptk.OutputError,
        r"held holds 1 other file \(config.json\), not a fine-tuning run; resume continues a run that bliptk finetune began there; "
        r"choose another \(new or empty\) out",
        r"held holds 1 other file \(config.json\), not a fine-tuning run; --resume continues .*choose another \(new or empty\) --out",
    ),
    "finetune: --resume into an ONNX export": lambda ctx: Fault(
        _finetune(ctx, "--out", str(_export(ctx, lambda f: None)), "--resume"),
        _api_finetune(ctx, out=ctx.tmp / "export", resume=True),
        bliptk.OutputError,
        r"export holds an ONNX export \(manifest.json\), not a fine-tuning run",
    ),
    "finetune: --resume into a checkpoint folder": lambda ctx: Fault(
        _finetune(ctx, "--out", str(_checkpoint(ctx, lambda f: None)), "--resume"),
        _api_finetune(ctx, out=ctx.tmp / "checkpoint", resume=True),
        bliptk.OutputError,
        r"checkpoint holds a checkpoint \(config.json and its weights\), not a fine-tuning run",
    ),
    "finetune: a finished run without --resume": lambda ctx: Fault(
        _finetune(ctx, "--out", str(_run(ctx))),
        _api_finetune(ctx, out=ctx.tmp / "run"),
        bliptk.OutputExistsError,
        r"run exists; it holds a fine-tuning run: pass resume=True to continue it, or choose another out$",
        r"run exists; it holds a fine-tuning run: pass --resume to continue it, or choose another --out$",
    ),
    "finetune: resuming with another --lr": lambda ctx: Fault(
        _finetune(ctx, "--out", str(_run(ctx)), "--resume", "--lr", "0.01"),
        lambda: bliptk.finetune("tiny", ctx.tmp / "train.jsonl", out=ctx.tmp / "run", max_steps=1, batch_size=3, resume=True, lr=0.01),
        bliptk.InvalidOptionError,
        r"run holds a run made with other options \(lr 0.001 \(this run: 0.01\)\); resuming needs the same",
    ),
    "export: --overwrite into a fine-tuning run": lambda ctx: Fault(
        ["export", "--model", "tiny", "--overwrite", "--out", str(_run(ctx))],
        lambda: bliptk.export(ctx.tiny, ctx.tmp / "run", overwrite=True),
        bliptk.OutputError,
        r"run holds a fine-tuning run \(finetune.json\); an export goes in a folder of its own: choose another \(new or empty\) folder",
    ),
    "export: into a checkpoint folder": lambda ctx: Fault(
        ["export", "--model", "tiny", "--out", str(_checkpoint(ctx, lambda f: None))],
        lambda: bliptk.export(ctx.tiny, ctx.tmp / "checkpoint"),
        bliptk.OutputError,
        r"checkpoint holds a checkpoint \(config.json and its weights\); an export goes in a folder of its own",
    ),
    "export: into the model's own folder": lambda ctx: Fault(
        ["export", "--model", str(_checkpoint(ctx, lambda f: None)), "--out", str(ctx.tmp / "checkpoint" / "onnx")],
        None,
        bliptk.OutputError,
        r"--out \S+/checkpoint/onnx is the model's own folder",
    ),
    "finetune: out=None": lambda ctx: Fault(
        None, _api_finetune(ctx, out=None), bliptk.InvalidArgumentError, r"out must be the output folder, a path; got None"
    ),
    "finetune: LoRA targets that match nothing": lambda ctx: Fault(
        None,
        _api_finetune(ctx, out=ctx.tmp / "run", lora={"r": 4, "targets": "nomatch"}),
        bliptk.InvalidOptionError,
        r"lora targets 'nomatch' match none of the model's linear layers",
    ),
    "finetune: an int8 model": lambda ctx: Fault(
        None,
        _api_finetune(ctx, out=ctx.tmp / "run", load_options={"dtype": "int8"}),
        bliptk.InvalidOptionError,
        r"fine-tune a float32 \(or bfloat16\) captioner, then quantize the result",
    ),
    "finetune: --train a folder": lambda ctx: Fault(
        ["finetune", "--model", "tiny", "--train", str(ctx.photos[0].parent), "--out", str(ctx.tmp / "run")],
        lambda: bliptk.finetune("tiny", ctx.photos[0].parent, out=ctx.tmp / "run"),
        bliptk.InputError,
        r"images: is a folder; training data is a .jsonl file of image-caption lines, or COCO caption annotations",
    ),
    "finetune: training data that is not UTF-8": lambda ctx: Fault(
        ["finetune", "--model", "tiny", "--train", str(_latin1(ctx)), "--out", str(ctx.tmp / "run")],
        lambda: bliptk.finetune("tiny", ctx.tmp / "latin1.jsonl", out=ctx.tmp / "run"),
        bliptk.InputError,
        r"latin1.jsonl: line 1 is not UTF-8 text \(byte 0xe9 at column \d+\); save the file as UTF-8",
    ),
    "finetune: a negative --lr": lambda ctx: Fault(
        _finetune(ctx, "--out", str(ctx.tmp / "run"), "--lr", "-1e-3"),
        _api_finetune(ctx, out=ctx.tmp / "run", lr=-1e-3),
        bliptk.InvalidOptionError,
        r"lr must be a finite non-negative number, got -0.001",
        r"--lr must be a finite non-negative number, got -0.001",
    ),
    "finetune: a prompt that leaves no room for a caption": lambda ctx: Fault(
        _finetune(ctx, "--out", str(ctx.tmp / "run"), "--prompt", "a " * 40),
        _api_finetune(ctx, out=ctx.tmp / "run", prompt="a " * 40),
        bliptk.InvalidOptionError,
        r"the prompt takes 41 of the 40 positions of a training text \(\[DEC\], the prompt, the caption, \[SEP\]\), leaving no room",
        r"the --prompt takes 41 of the 40 positions of a training text \(\[DEC\], the prompt, the caption, \[SEP\]\), leaving no room",
    ),
    "finetune: a disk too small for the checkpoints": lambda ctx: Fault(
        _finetune(ctx, "--out", str(ctx.tmp / "run")) if _no_room(ctx) is None else None,
        _api_finetune(ctx, out=ctx.tmp / "run"),
        bliptk.OutputError,
        r"run: this run needs about \d+ MB \(up to 1 checkpoints of \d+ MB and the final weights\), the disk has 0 MB free; free space, "
        r"or choose another out",
        r"the disk has 0 MB free; free space, or choose another --out",
    ),
    "finetune: --keep-checkpoints 0": lambda ctx: Fault(
        _finetune(ctx, "--out", str(ctx.tmp / "run"), "--keep-checkpoints", "0"),
        _api_finetune(ctx, out=ctx.tmp / "run", keep_checkpoints=0),
        bliptk.InvalidOptionError,
        r"keep_checkpoints must be an integer >= 1, got 0",
        r"--keep-checkpoints must be an integer >= 1, got 0",
    ),
    "explain: a method that is a list": lambda ctx: Fault(
        None,
        lambda: bliptk.explain(ctx.tiny, ctx.photos[0], "a dog", method=["gradcam"]),
        bliptk.InvalidOptionError,
        r"method must be one of attention, gradcam, relevance, rollout, integrated_gradients, occlusion, shapley, got \['gradcam'\]",
    ),
    "explain: --caption with --num-beams": lambda ctx: Fault(
        _explain(ctx, "--caption", "a dog", "--num-beams", "3"),
        lambda: bliptk.explain(ctx.tiny, ctx.photos[0], "a dog", num_beams=3),
        bliptk.InvalidOptionError,
        r"decoding options apply when explain captions the image itself \(caption=None\), not to a given caption",
        r"--num-beams apply when explain captions the image itself; with --caption, that caption is explained",
    ),
    "explain: --out -": lambda ctx: Fault(
        ["explain", str(ctx.photos[0]), "--model", "tiny", "--out", "-"],
        None,
        bliptk.InvalidOptionError,
        r"--out -: explain writes a file, not standard output; name the file",
    ),
    "explain: --out x.jpg": lambda ctx: Fault(
        ["explain", str(ctx.photos[0]), "--model", "tiny", "--out", str(ctx.tmp / "x.jpg")],
        None,
        bliptk.InvalidOptionError,
        r"x.jpg: figures are written as PNG, with how they were made in their metadata; name the file .png",
    ),
    "explain: --out .jpg": lambda ctx: Fault(
        ["explain", str(ctx.photos[0]), "--model", "tiny", "--out", str(ctx.tmp / ".jpg")],
        None,
        bliptk.InvalidOptionError,
        r"\.jpg: figures are written as PNG, with how they were made in their metadata; name the file .png",
    ),
    "explain: --columns 0": lambda ctx: Fault(
        _explain(ctx, "--columns", "0"), None, bliptk.InvalidOptionError, r"--columns must be an integer >= 1, got 0"
    ),
    "explain: a layer the decoder lacks": lambda ctx: Fault(
        _explain(ctx, "--layer", "5")
        if ctx.monkeypatch.setattr("bliptk.model.loading.load", lambda *a, **k: pytest.fail("loaded")) is None
        else None,
        lambda: bliptk.explain(ctx.tiny, ctx.photos[0], "a dog", layer=5),
        bliptk.InvalidOptionError,
        r"layer must be an integer in \[-2, 1\] \(the decoder has 2 layers\), got 5",
        r"--layer must be an integer in \[-2, 1\]",
    ),
    "explain: a caption longer than the decoder": lambda ctx: Fault(
        _explain(ctx, "--caption", "dog " * 600),
        lambda: bliptk.explain(ctx.tiny, ctx.photos[0], "dog " * 600),
        bliptk.InvalidOptionError,
        r"the caption has 600 tokens; after the prompt's 4 positions the decoder has room for 508: explain a shorter caption",
    ),
    "explain: --ig-steps 0": lambda ctx: Fault(
        _explain(ctx, "--method", "integrated_gradients", "--ig-steps", "0"),
        lambda: bliptk.explain(ctx.tiny, ctx.photos[0], "a dog", method="integrated_gradients", ig_steps=0),
        bliptk.InvalidOptionError,
        r"ig_steps must be an integer >= 1, got 0",
        r"--ig-steps must be an integer >= 1, got 0",
    ),
    "faithfulness: a caption where the explanation goes": lambda ctx: Fault(
        None,
        lambda: bliptk.faithfulness(ctx.tiny, ctx.photos[0], ctx.tiny.caption(ctx.photos[0], max_new_tokens=2)),
        bliptk.InvalidArgumentError,
        r"explanation must be an Explanation, as bliptk.explain\(captioner, image, caption\) returns; got Caption",
    ),
    "faithfulness: a negative seed": lambda ctx: Fault(
        None,
        lambda: bliptk.faithfulness(ctx.tiny, ctx.photos[0], bliptk.explain(ctx.tiny, ctx.photos[0], "a dog"), seed=-1),
        bliptk.InvalidOptionError,
        r"seed must be an integer >= 0, got -1",
    ),
    "compile: TORCHINDUCTOR_CACHE_DIR that cannot be made": lambda ctx: Fault(
        ["caption", str(ctx.photos[0]), "--model", "tiny", "--compile"] if _unwritable_cache(ctx) else None,
        lambda: bliptk.load("tiny", compile=True),
        bliptk.InvalidOptionError,
        r"TORCHINDUCTOR_CACHE_DIR=\S+/a-file/cache cannot be made or written \(Not a directory\); torch makes it whenever it "
        r"loads a model: point TORCHINDUCTOR_CACHE_DIR at a folder you can write, or unset it",
    ),
    "TORCHINDUCTOR_CACHE_DIR that cannot be made, without compiling": lambda ctx: Fault(
        ["caption", str(ctx.photos[0]), "--model", "tiny"] if _unwritable_cache(ctx) else None,
        lambda: bliptk.load("tiny"),
        bliptk.InvalidOptionError,
        r"TORCHINDUCTOR_CACHE_DIR=\S+/a-file/cache cannot be made \(Not a directory\); torch makes it whenever it loads a model",
    ),
    "explain: gradients of an int8 captioner": lambda ctx: Fault(
        _explain(ctx, "--dtype", "int8"),
        lambda: bliptk.explain(bliptk.load("tiny", dtype="int8"), ctx.photos[0], "a dog"),
        bliptk.InvalidOptionError,
        r"gradcam follows gradients, which the int8 decoder's weights have none of: explain with the float model",
        r"gradcam follows gradients, which the int8 decoder's weights have none of",
    ),
    "faithfulness: an explanation of another image": lambda ctx: Fault(
        None,
        lambda: bliptk.faithfulness(ctx.tiny, ctx.photos[1], bliptk.explain(ctx.tiny, ctx.photos[0], "a dog")),
        bliptk.InvalidOptionError,
        r"the explanation is of another image than this one \(their pixels differ\); give the image it explains",
    ),
    "faithfulness: an explanation made with other weights": lambda ctx: Fault(
        None,
        lambda: bliptk.faithfulness(bliptk.load("tiny", weights_seed=1), ctx.photos[0], bliptk.explain(ctx.tiny, ctx.photos[0], "a dog")),
        bliptk.InvalidOptionError,
        r"the explanation was made with other weights \(fingerprint \w+\) than this captioner's \(\w+\)",
    ),
    "finetune: a model of no known kind": lambda ctx: Fault(
        None,
        _api_finetune(ctx, 42, out=ctx.tmp / "run"),
        bliptk.InvalidArgumentError,
        r"model must be a Captioner \(bliptk.load\), an architecture name, a hub id or a checkpoint folder; got int",
    ),
    "load: a model of no known kind": lambda ctx: Fault(
        None,
        lambda: bliptk.load(42),
        bliptk.InvalidArgumentError,
        r"model must be an architecture name \(.*\), a hub id, a checkpoint folder or an export folder; got int",
    ),
    "finetune: float16 on a CPU": lambda ctx: Fault(
        _finetune(ctx, "--out", str(ctx.tmp / "run"), "--dtype", "float16"),
        _api_finetune(ctx, out=ctx.tmp / "run", dtype="float16", load_options={"device": "cpu"}),
        bliptk.InvalidOptionError,
        r"dtype float16 trains on a GPU; on a CPU use bfloat16 \(autocast\) or float32",
        r"--dtype float16 trains on a GPU",
    ),
    "finetune: --images that is no folder": lambda ctx: Fault(
        _finetune(ctx, "--out", str(ctx.tmp / "run"), "--images", str(ctx.tmp / "nowhere")),
        _api_finetune(ctx, out=ctx.tmp / "run", images=ctx.tmp / "nowhere"),
        bliptk.InputError,
        r"nowhere: is not a folder; images= names the folder the data file's image paths are relative to",
        r"nowhere: is not a folder; --images names the folder",
    ),
    "export: a model name where the captioner goes": lambda ctx: Fault(
        None,
        lambda: bliptk.export("tiny", ctx.tmp / "export"),
        bliptk.InvalidArgumentError,
        r"export needs a Captioner, as bliptk.load\(model\) returns; got str",
    ),
    "export: --overwrite of an export beside other files": lambda ctx: Fault(
        ["export", "--model", "tiny", "--overwrite", "--out", str(_export(ctx, lambda f: (f / "notes.txt").write_text("mine")))],
        lambda: bliptk.export(ctx.tiny, ctx.tmp / "export", overwrite=True),
        bliptk.OutputError,
        r"export holds an ONNX export and 1 other file \(notes.txt\), which replacing the export would remove: move them out",
    ),
    "onnx: loading a folder that does not exist": lambda ctx: Fault(
        _caption_with(ctx.tmp / "nowhere", ctx.photos[0]) if False else None,
        lambda: bliptk.exported.load(ctx.tmp / "nowhere"),
        bliptk.CheckpointError,
        r"nowhere: no such folder; give the folder bliptk export wrote",
    ),
    "onnx: loading a fine-tuning run": lambda ctx: Fault(
        None,
        lambda: bliptk.exported.load(_run(ctx)),
        bliptk.CheckpointError,
        r"run: not a bliptk ONNX export \(no manifest.json\); it holds a fine-tuning run \(finetune.json\); export a model with",
    ),
    "eval-coco: --out the annotations": lambda ctx: Fault(
        [
            "eval-coco",
            "--images",
            str(ctx.photos[0].parent),
            "--annotations",
            str(_copy(REFERENCES, ctx.tmp / "refs.json")),
            "--model",
            "tiny",
            "--out",
            str(ctx.tmp / "refs.json"),
            "--resume",
        ],
        None,
        bliptk.InvalidOptionError,
        r"--out \S+refs.json is the --annotations file; write the results to a file of their own",
    ),
    "eval-coco: --resume onto a JSON file that is no results": lambda ctx: Fault(
        [
            "eval-coco",
            "--images",
            str(ctx.photos[0].parent),
            "--annotations",
            str(REFERENCES),
            "--model",
            "tiny",
            "--out",
            str(_text(ctx.tmp / "settings.json", '{"mine": 1}')),
            "--resume",
        ],
        None,
        bliptk.OutputError,
        r"settings.json is no COCO results file \(not a list of \{image_id, caption\}\), so it is left alone: choose another --out",
    ),
    "eval: --worst -1": lambda ctx: Fault(
        [
            "eval",
            str(_json(ctx.tmp / "p.json", [{"image_id": 1, "caption": "a"}])),
            str(_json(ctx.tmp / "r.json", {"1": ["a"]})),
            "--worst",
            "-1",
        ],
        None,
        bliptk.InvalidOptionError,
        r"--worst must be an integer >= 0, got -1",
    ),
}


def _copy(source: Path, target: Path) -> Path:
    shutil.copy(source, target)
    return target


def _latin1(ctx) -> Path:
    data = ctx.tmp / "latin1.jsonl"
    data.write_bytes(json.dumps({"image": str(ctx.photos[0]), "caption": "caf"}).encode()[:-2] + b'\xe9"}\n')
    return data


FAULTS: dict[str, Callable] = {
    "eval: two files with one image id": lambda ctx: Fault(
        ["eval", str(_records(ctx.tmp, ["photos/a/img1.jpg", "photos/b/IMG_0001.png"])), str(_references(ctx.tmp, {"1": ["a cat"]}))],
        lambda: bliptk.evaluate(ctx.tmp / "predictions.jsonl", ctx.tmp / "references.json"),
        bliptk.EvaluationError,
        r"photos/a/img1.jpg and photos/b/IMG_0001.png both have image id 1",
    ),
    "eval: a binary predictions file": lambda ctx: Fault(
        ["eval", str(_binary(ctx.tmp / "predictions.json")), str(_references(ctx.tmp, {"1": ["a cat"]}))],
        lambda: bliptk.evaluate(ctx.tmp / "predictions.json", {1: ["a cat"]}),
        bliptk.EvaluationError,
        r"predictions.json: not a text file \(not UTF-8\)",
    ),
    "eval: ids mixing numbers and names": lambda ctx: Fault(
        [
            "eval",
            str(_json(ctx.tmp / "mixed.json", [{"image_id": 1, "caption": "a"}, {"image_id": "cat", "caption": "b"}])),
            str(_references(ctx.tmp, {"1": ["a"], "2": ["b"]})),
        ],
        lambda: bliptk.evaluate([{"image_id": 1, "caption": "a"}, {"image_id": "cat", "caption": "b"}], {1: ["a"], "cat": ["b"]}),
        bliptk.EvaluationError,
        r"mix numeric image ids and names \(e.g. 1 and 'cat'\)",
    ),
    "eval: a null caption": lambda ctx: Fault(
        None,
        lambda: bliptk.evaluate([{"image_id": 1, "caption": None}], {1: ["a cat"]}),
        bliptk.EvaluationError,
        r"prediction 0 has no caption \(null\)",
    ),
    "out: a folder that does not exist": lambda ctx: Fault(
        ["caption", str(ctx.photos[0]), "--model", "tiny", "--out", str(ctx.tmp / "nosuch" / "dir" / "x.jsonl")],
        lambda: next(ctx.tiny.caption_files(ctx.photos[0], ctx.tmp / "nosuch" / "dir" / "x.jsonl")),
        bliptk.OutputError,
        r"x.jsonl: the folder \S+/nosuch/dir does not exist; create it, or choose another output",
    ),
    "out: a folder": lambda ctx: Fault(
        ["caption", str(ctx.photos[0]), "--model", "tiny", "--out", str(_folder(ctx.tmp / "out.jsonl")), "--resume"],
        lambda: next(ctx.tiny.caption_files(ctx.photos[0], ctx.tmp / "out.jsonl", resume=True)),
        bliptk.OutputError,
        r"out.jsonl is a folder; name a file",
    ),
    "out: Parquet without Ray": lambda ctx: Fault(
        ["caption", str(ctx.photos[0]), "--model", "tiny", "--out", str(ctx.tmp / "x.parquet")],
        lambda: next(ctx.tiny.caption_files(ctx.photos[0], ctx.tmp / "x.parquet")),
        bliptk.InvalidOptionError,
        r"records are written as .jsonl or .csv, not .parquet \(Parquet shards are written by the Ray path: ray=True",
        r"not .parquet \(Parquet shards are written by the Ray path: ray=True, --ray\); name the file so, or pass --format",
    ),
    "out: an existing figure": lambda ctx: Fault(
        ["attention", str(ctx.photos[0]), "--model", "tiny", "--out", str(_file(ctx.tmp / "grid.png"))],
        None,
        bliptk.OutputExistsError,
        r"grid.png exists; pass --overwrite to replace it, or choose another file",
    ),
    "checkpoint: a tensor of the wrong shape": lambda ctx: Fault(
        _caption_with(_checkpoint(ctx, _wrong_shape), ctx.photos[0]),
        lambda: bliptk.load(ctx.tmp / "checkpoint"),
        bliptk.CheckpointError,
        r"the weights do not fit its config.json: text_decoder.bert.encoder.layer.0.attention.self.query.weight is \(3, 3\), the config says \(32, 32\)",
    ),
    "checkpoint: a truncated safetensors file": lambda ctx: Fault(
        _caption_with(_checkpoint(ctx, lambda f: _truncate(f / "model.safetensors")), ctx.photos[0]),
        lambda: bliptk.load(ctx.tmp / "checkpoint"),
        bliptk.CheckpointError,
        r"model.safetensors: not a readable safetensors file, or truncated",
    ),
    "checkpoint: an invalid config.json": lambda ctx: Fault(
        _caption_with(_checkpoint(ctx, lambda f: (f / "config.json").write_text("{oops")), ctx.photos[0]),
        lambda: bliptk.load(ctx.tmp / "checkpoint"),
        bliptk.CheckpointError,
        r"config.json is not a BLIP captioning config",
    ),
    "checkpoint: absurd sizes": lambda ctx: Fault(
        _caption_with(_checkpoint(ctx, _absurd), ctx.photos[0]),
        lambda: bliptk.load(ctx.tmp / "checkpoint", pretrained=False),
        bliptk.CheckpointError,
        r"describes a net of [\d,.]+ GB in float32, more than this machine's [\d,.]+ GB of memory",
    ),
    "export: a graph with overwritten bytes": lambda ctx: Fault(
        _caption_with(_export(ctx, lambda f: _overwrite_bytes(f / "decoder.onnx")), ctx.photos[0]),
        lambda: bliptk.exported.load(ctx.tmp / "export"),
        bliptk.CheckpointError,
        r"decoder.onnx is not the graph that was exported \(its sha256 differs\)",
    ),
    "export: a corrupted graph, unchecked": lambda ctx: Fault(
        None,
        lambda: _unchecked(_export(ctx, lambda f: _truncate(f / "decoder.onnx"))),
        bliptk.CheckpointError,
        r"decoder.onnx: ONNX Runtime cannot read this graph",
    ),
    "export: a manifest missing a key": lambda ctx: Fault(
        _caption_with(_export(ctx, _manifest(lambda m: m.pop("config"))), ctx.photos[0]),
        lambda: bliptk.exported.load(ctx.tmp / "export"),
        bliptk.CheckpointError,
        r"manifest.json: config is missing; the export is damaged: export the model again",
    ),
    "export: a manifest field of the wrong type": lambda ctx: Fault(
        _caption_with(_export(ctx, _manifest(lambda m: m.update(graphs=["encoder.onnx"]))), ctx.photos[0]),
        lambda: bliptk.exported.load(ctx.tmp / "export"),
        bliptk.CheckpointError,
        r"manifest.json: graphs must be a dict, not list",
    ),
    "export: a manifest that is no JSON": lambda ctx: Fault(
        _caption_with(_export(ctx, lambda f: (f / "manifest.json").write_text("{oops")), ctx.photos[0]),
        lambda: bliptk.exported.load(ctx.tmp / "export"),
        bliptk.CheckpointError,
        r"manifest.json: not valid JSON",
    ),
    "export: a graph outside the folder": lambda ctx: Fault(
        _caption_with(_export(ctx, _manifest(lambda m: m["graphs"].update(decoder="../../outside/decoder.onnx"))), ctx.photos[0]),
        lambda: bliptk.exported.load(ctx.tmp / "export"),
        bliptk.CheckpointError,
        r"graph '../../outside/decoder.onnx' is not a file name inside the export; bliptk reads only its own folder",
    ),
    "export: an absolute graph path": lambda ctx: Fault(
        _caption_with(_export(ctx, _manifest(lambda m: m["graphs"].update(encoder="/etc/passwd"))), ctx.photos[0]),
        lambda: bliptk.exported.load(ctx.tmp / "export"),
        bliptk.CheckpointError,
        r"graph '/etc/passwd' is not a file name inside the export",
    ),
    "export: a tokenizer outside the folder": lambda ctx: Fault(
        _caption_with(_export(ctx, _manifest(lambda m: m.update(tokenizer="../../../etc/passwd"))), ctx.photos[0]),
        lambda: bliptk.exported.load(ctx.tmp / "export"),
        bliptk.CheckpointError,
        r"tokenizer '../../../etc/passwd' is not a file name inside the export",
    ),
    "export: a link that leads out": lambda ctx: Fault(
        None,
        lambda: bliptk.exported.load(_export(ctx, _link_out)),
        bliptk.CheckpointError,
        r"decoder.onnx is a link that leads out of the export",
    ),
    "export: a graph without a hash": lambda ctx: Fault(
        _caption_with(_export(ctx, _manifest(lambda m: m["sha256"].pop("decoder.onnx"))), ctx.photos[0]),
        lambda: bliptk.exported.load(ctx.tmp / "export"),
        bliptk.CheckpointError,
        r"the manifest has no sha256 of decoder.onnx, so it cannot be checked",
    ),
    "prompt: not a string": lambda ctx: Fault(
        None,
        lambda: ctx.tiny.caption(ctx.photos[0], prompt=123),
        bliptk.InvalidOptionError,
        r"a prompt must be a string or None, got int 123",
    ),
    "option: a negative seed": lambda ctx: Fault(
        ["caption", str(ctx.photos[0]), "--model", "tiny", "--temperature", "1", "--seed", "-1"],
        lambda: ctx.tiny.caption(ctx.photos[0], temperature=1.0, seed=-1),
        bliptk.InvalidOptionError,
        r"seed must be an integer >= 0 or None, got -1",
        r"--seed must be an integer >= 0 or None, got -1",
    ),
    "option: UMAP of too few images": lambda ctx: Fault(
        ["map", str(ctx.photos[0].parent), "--model", "tiny", "--out", str(ctx.tmp / "map.png")],
        lambda: bliptk.project(np.eye(3)),
        bliptk.InvalidOptionError,
        r"umap needs at least 4 points, got 3; use method='pca' for fewer",
        r"umap needs at least 4 points, got 3; use --method pca for fewer",
    ),
    # What the second probe found (issue 22's closing note).
    "out: a file of notes resumed": lambda ctx: Fault(
        ["caption", str(ctx.photos[0]), "--model", "tiny", "--out", str(_text(ctx.tmp / "c.jsonl", "my notes, no newline")), "--resume"],
        lambda: next(ctx.tiny.caption_files(ctx.photos[0], ctx.tmp / "c.jsonl", resume=True)),
        bliptk.OutputError,
        r"c.jsonl: line 1 is not a bliptk record .*it is no records file of bliptk's, so it is left alone",
    ),
    "out: a FIFO": lambda ctx: Fault(
        ["caption", str(ctx.photos[0]), "--model", "tiny", "--out", str(_fifo(ctx.tmp / "p.jsonl"))],
        lambda: next(ctx.tiny.caption_files(ctx.photos[0], ctx.tmp / "p.jsonl")),
        bliptk.OutputError,
        r"p.jsonl is not a regular file \(a FIFO, socket or device\); name a file",
    ),
    "out: a name too long": lambda ctx: Fault(
        ["caption", str(ctx.photos[0]), "--model", "tiny", "--out", str(ctx.tmp / ("x" * 300 + ".jsonl"))],
        lambda: next(ctx.tiny.caption_files(ctx.photos[0], ctx.tmp / ("x" * 300 + ".jsonl"))),
        bliptk.OutputError,
        r"x+\.jsonl: cannot write there \(the name is too long for the file system\); choose another output",
    ),
    "out: --format parquet without Ray": lambda ctx: Fault(
        ["caption", str(ctx.photos[0]), "--model", "tiny", "--out", str(ctx.tmp / "c.jsonl"), "--format", "parquet"],
        lambda: next(ctx.tiny.caption_files(ctx.photos[0], ctx.tmp / "c.jsonl", format="parquet")),
        bliptk.InvalidOptionError,
        r"format must be one of jsonl, csv, got 'parquet' \(Parquet shards are written by the Ray path: ray=True",
        r"--format must be one of jsonl, csv, got 'parquet' \(Parquet shards are written by the Ray path: ray=True, --ray\)",
    ),
    "eval-coco: results named as records": lambda ctx: Fault(
        [
            "eval-coco",
            "--images",
            str(ctx.photos[0].parent),
            "--annotations",
            str(REFERENCES),
            "--model",
            "tiny",
            "--out",
            str(ctx.tmp / "r.jsonl"),
        ],
        None,
        bliptk.InvalidOptionError,
        r"--out \S+r.jsonl: the results are a COCO results .json file \(the records go beside it, as .jsonl\)",
    ),
    "eval-coco: results that exist": lambda ctx: Fault(
        [
            "eval-coco",
            "--images",
            str(ctx.photos[0].parent),
            "--annotations",
            str(REFERENCES),
            "--model",
            "tiny",
            "--out",
            str(_text(ctx.tmp / "r.json", "[]")),
        ],
        None,
        bliptk.OutputExistsError,
        r"r.json exists; pass --resume to continue that run, or choose another file",
    ),
    "export: --out naming a file": lambda ctx: Fault(
        ["export", "--model", "tiny", "--out", str(_text(ctx.tmp / "exp", "x"))],
        lambda: bliptk.export(ctx.tiny, ctx.tmp / "exp"),
        bliptk.OutputError,
        r"exp is a file, not a folder; choose another output",
    ),
    "export: over an export": lambda ctx: Fault(
        ["export", "--model", "tiny", "--out", str(ctx.tiny_export)],
        lambda: bliptk.export(ctx.tiny, ctx.tiny_export),
        bliptk.OutputExistsError,
        r"exists; pass overwrite=True to replace it, or choose another file",
        r"exists; pass --overwrite to replace it, or choose another file",
    ),
    "map: a labels file that does not exist": lambda ctx: Fault(
        [
            "map",
            str(ctx.photos[0].parent),
            "--model",
            "tiny",
            "--method",
            "pca",
            "--labels",
            str(ctx.tmp / "missing.csv"),
            "--out",
            str(ctx.tmp / "m.png"),
        ],
        None,
        bliptk.InputError,
        r"missing.csv: cannot be read as a labels CSV \(.*No such file",
    ),
    "map: a labels file without the columns": lambda ctx: Fault(
        [
            "map",
            str(ctx.photos[0].parent),
            "--model",
            "tiny",
            "--method",
            "pca",
            "--labels",
            str(_text(ctx.tmp / "l.csv", "name,kind\na,b\n")),
            "--out",
            str(ctx.tmp / "m.png"),
        ],
        None,
        bliptk.InputError,
        r"l.csv: a labels CSV needs the columns file and label, got name, kind",
    ),
    "map: clusters out of range": lambda ctx: Fault(
        ["map", str(ctx.photos[0].parent), "--model", "tiny", "--method", "pca", "--clusters", "0", "--out", str(ctx.tmp / "m.png")],
        None,
        bliptk.InvalidOptionError,
        r"--clusters must be auto or an integer in \[1, 3\] \(the folder's images\), got '0'",
    ),
    "checkpoint: a preprocessor config that is no JSON": lambda ctx: Fault(
        _caption_with(_checkpoint(ctx, lambda f: (f / "preprocessor_config.json").write_text("{oops")), ctx.photos[0]),
        lambda: bliptk.load(ctx.tmp / "checkpoint"),
        bliptk.CheckpointError,
        r"preprocessor_config.json is not a preprocessor config",
    ),
    "checkpoint: a preprocessor config of the wrong size": lambda ctx: Fault(
        _caption_with(_checkpoint(ctx, lambda f: (f / "preprocessor_config.json").write_text('{"size": "abc"}')), ctx.photos[0]),
        lambda: bliptk.load(ctx.tmp / "checkpoint"),
        bliptk.CheckpointError,
        r"preprocessor_config.json is not a preprocessor config \(size must be a positive integer, got 'abc'\)",
    ),
    "checkpoint: a tensor missing": lambda ctx: Fault(
        _caption_with(_checkpoint(ctx, _drop_tensor), ctx.photos[0]),
        lambda: bliptk.load(ctx.tmp / "checkpoint"),
        bliptk.CheckpointError,
        r"its weights lack 1 of the architecture's tensors \(text_decoder.bert.encoder.layer.0.attention.self.query.weight\)",
    ),
    "model: an empty name": lambda ctx: Fault(
        ["caption", str(ctx.photos[0]), "--model", ""],
        lambda: bliptk.load(""),
        bliptk.UnknownModelError,
        r"a model is needed: an architecture name",
    ),
    "export: a config that is not its graphs'": lambda ctx: Fault(
        _caption_with(_export(ctx, _manifest(lambda m: m["config"].update(layers=3))), ctx.photos[0]),
        lambda: bliptk.exported.load(ctx.tmp / "export"),
        bliptk.CheckpointError,
        r"graph has not the 3 layers manifest.json's config says",
    ),
    "export: graphs in each other's place": lambda ctx: Fault(
        _caption_with(_export(ctx, _swap_graphs), ctx.photos[0]),
        lambda: bliptk.exported.load(ctx.tmp / "export"),
        bliptk.CheckpointError,
        r"the encoder graph has no input pixel_values of 4 dimensions",
    ),
    "eval: annotations that are no list": lambda ctx: Fault(
        ["eval", str(_json(ctx.tmp / "p.json", [{"image_id": 1, "caption": "a"}])), str(_json(ctx.tmp / "r.json", {"annotations": 5}))],
        lambda: bliptk.evaluate([{"image_id": 1, "caption": "a"}], {"annotations": 5}),
        bliptk.EvaluationError,
        r"annotations must be a list of \{image_id, caption\}, not int",
    ),
    "eval: captions that are no list": lambda ctx: Fault(
        [
            "eval",
            str(_json(ctx.tmp / "p.json", [{"image_id": 1, "caption": "a"}])),
            str(_json(ctx.tmp / "r.json", [{"image_id": 1, "captions": None}])),
        ],
        lambda: bliptk.evaluate([{"image_id": 1, "caption": "a"}], [{"image_id": 1, "captions": None}]),
        bliptk.EvaluationError,
        r"references of 1 must be a list of captions \(strings\), got None",
    ),
    "eval: predictions that are a folder": lambda ctx: Fault(
        ["eval", str(_folder(ctx.tmp / "pdir")), str(_json(ctx.tmp / "r.json", {"1": ["a"]}))],
        lambda: bliptk.evaluate(ctx.tmp / "pdir", {1: ["a"]}),
        bliptk.EvaluationError,
        r"predictions \S+pdir: is a folder; give a JSON file or bliptk records",
    ),
    "image: no pixels": lambda ctx: Fault(
        None, lambda: ctx.tiny.caption(np.zeros((0, 0, 3), np.uint8)), bliptk.ImageLoadError, r"ndarray: has no pixels \(0x0\)"
    ),
    **FAULTS_OF_ISSUE_31,
}


def _text(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def _fifo(path: Path) -> Path:
    os.mkfifo(path)
    return path


def _drop_tensor(folder: Path) -> None:
    from safetensors.torch import load_file, save_file

    weights = load_file(folder / "model.safetensors")
    del weights["text_decoder.bert.encoder.layer.0.attention.self.query.weight"]
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})


def _swap_graphs(folder: Path) -> None:
    _manifest(lambda m: m["graphs"].update(encoder=m["graphs"]["decoder"], decoder=m["graphs"]["encoder"]))(folder)


def _unchecked(folder: Path):
    with pytest.warns(bliptk.ExportChangedWarning, match="without checking them"):
        return bliptk.exported.load(folder, verify=False)


def _json(path: Path, data) -> Path:
    path.write_text(json.dumps(data))
    return path


def _binary(path: Path) -> Path:
    path.write_bytes(bytes(range(256)) * 8)
    return path


def _folder(path: Path) -> Path:
    path.mkdir()
    return path


def _file(path: Path) -> Path:
    path.write_bytes(b"\x89PNG")
    return path


@dataclass
class _Context:
    tmp: Path
    tiny: object
    photos: list
    tiny_checkpoint: Path
    tiny_export: Path
    monkeypatch: pytest.MonkeyPatch


@pytest.mark.parametrize("fault", FAULTS)
def test_every_fault_is_a_bliptk_error_in_python_and_exit_2_in_one_line(
    fault, tiny, photos, tiny_checkpoint, tiny_export, tmp_path, capsys, caplog, monkeypatch
):
    case = FAULTS[fault](_Context(tmp_path, tiny, photos, tiny_checkpoint, tiny_export, monkeypatch))
    if case.api is not None:
        with pytest.raises(case.error, match=case.message):
            case.api()
    if case.cli is not None:
        capsys.readouterr()
        assert main(case.cli) == 2
        err = capsys.readouterr().err
        # transformers' own progress bar while weights load is no message of bliptk's
        lines = [line for line in err.splitlines() if line and not line.startswith("bliptk: warning:") and "it/s]" not in line]
        assert len(lines) == 1 and lines[0].startswith("bliptk: error: "), err
        assert re.search(case.cli_message or case.message, lines[0]), lines[0]
    assert "Traceback" not in caplog.text


def test_the_onnx_loader_opens_no_file_outside_the_export(tiny_export, tmp_path):
    """An audit hook sees every file Python opens: none outside the folder, whatever the manifest names."""
    opened: list[str] = []

    def watch(event, args):
        if event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
            opened.append(os.fsdecode(args[0]))

    sys.addaudithook(watch)
    folder = tmp_path / "export"
    for name, change in [
        ("graphs.decoder", lambda m: m["graphs"].update(decoder="../outside.onnx")),
        ("tokenizer", lambda m: m.update(tokenizer="/etc/passwd")),
        ("preprocessor", lambda m: m.update(preprocessor="../../x.json")),
    ]:
        shutil.rmtree(folder, ignore_errors=True)
        shutil.copytree(tiny_export, folder)
        (tmp_path / "outside.onnx").write_bytes((folder / "decoder.onnx").read_bytes())
        _manifest(change)(folder)
        opened.clear()
        with pytest.raises(bliptk.CheckpointError, match="is not a file name inside the export"):
            bliptk.exported.load(folder)
        outside = [
            path
            for path in opened
            if not Path(path).resolve().is_relative_to(folder.resolve()) and path.endswith((".onnx", ".json", ".txt", "passwd"))
        ]
        assert outside == [], name


@pytest.fixture(scope="module")
def bad_videos(tmp_path_factory, tiny):
    """Broken videos, each named as a video (issue 22: they were reported as images)."""
    import av

    folder = tmp_path_factory.mktemp("bad-videos")
    (folder / "zero.mp4").write_bytes(b"")
    data = (VIDEOS / "bigbuckbunny.mp4").read_bytes()
    (folder / "truncated.mp4").write_bytes(data[: len(data) // 3])
    (folder / "noise.mp4").write_bytes(np.random.default_rng(0).integers(0, 256, 20_000, dtype=np.uint8).tobytes())
    with av.open(str(folder / "audio-only.mp4"), "w") as container:
        stream = container.add_stream("aac", rate=16000)
        for index in range(20):
            samples = np.zeros((1, 1024), dtype=np.float32)
            frame = av.AudioFrame.from_ndarray(samples, format="fltp", layout="mono")
            frame.sample_rate, frame.pts = 16000, index * 1024
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return folder


BAD_VIDEOS = {
    "zero.mp4": "empty file (0 bytes)",
    "truncated.mp4": "not a video PyAV can read, or corrupt or truncated",
    "noise.mp4": "not a video PyAV can read, or corrupt or truncated",
    "audio-only.mp4": "has no video stream (audio only)",
}


def test_every_bad_video_fails_as_a_video_with_its_own_record(tiny, bad_videos, capsys, caplog):
    records = {Path(r["path"]).name: r for r in tiny.caption_files(bad_videos, max_new_tokens=2)}
    assert {name: (r["kind"], r["error"]["type"]) for name, r in records.items()} == {
        name: ("video", "VideoLoadError") for name in BAD_VIDEOS
    }
    for name, reason in BAD_VIDEOS.items():
        assert reason in records[name]["error"]["message"], records[name]
    assert main(["caption", str(bad_videos), "--model", "tiny", "--max-new-tokens", "2"]) == 1
    err = capsys.readouterr().err.splitlines()
    assert sorted(line for line in err if line.startswith("bliptk: error:")) == sorted(
        f"bliptk: error: {bad_videos / name}: {records[name]['error']['message'].split(': ', 1)[1]}" for name in BAD_VIDEOS
    )
    assert "Traceback" not in caplog.text and "unexpected error" not in caplog.text


def test_a_decompression_bomb_is_refused_in_the_documented_words(tiny, tmp_path, caplog):
    import zlib

    bomb = tmp_path / "bomb.png"  # 30000 x 30000 grey pixels, 900 million, in a few hundred kilobytes
    row = b"\x00" + bytes(30000)
    data = zlib.compress(row * 30000, 9)

    def chunk(kind: bytes, body: bytes) -> bytes:
        return len(body).to_bytes(4, "big") + kind + body + zlib.crc32(kind + body).to_bytes(4, "big")

    header = (30000).to_bytes(4, "big") * 2 + bytes([8, 0, 0, 0, 0])
    bomb.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b""))
    [record] = tiny.caption_files(bomb)
    assert record["error"] == {
        "type": "ImageLoadError",
        "message": f"{bomb}: 900,000,000 pixels, over the limit of 100,000,000 (max_pixels)",
    }
    assert "unexpected error" not in caplog.text


def test_a_symlink_loop_and_a_fifo_in_a_folder_each_get_a_record(tiny, photos, tmp_path):
    shutil.copy(photos[0], tmp_path / "photo.jpg")
    (tmp_path / "loop.jpg").symlink_to(tmp_path / "loop.jpg")
    os.mkfifo(tmp_path / "pipe.jpg")
    records = {Path(r["path"]).name: r for r in tiny.caption_files(tmp_path, max_new_tokens=2)}
    assert set(records) == {"photo.jpg", "loop.jpg", "pipe.jpg"} and records["photo.jpg"]["error"] is None
    assert records["loop.jpg"]["error"]["message"].endswith("loop.jpg: cannot be read (Too many levels of symbolic links)")
    assert records["pipe.jpg"]["error"]["message"].endswith(
        "pipe.jpg: is not a regular file (a FIFO, socket or device); bliptk reads files only"
    )


def test_prompts_outside_the_vocabulary_are_warned_about_once(tiny, photos):
    with pytest.warns(bliptk.PromptWarning, match=r"prompt 'a 猫 on a 🛋' has text outside BLIP's vocabulary, .* loses: '猫', '🛋'") as said:
        tiny.caption(photos[0], prompt="a 猫 on a 🛋", max_new_tokens=2)
        tiny.caption(photos[:2], prompt="a 猫 on a 🛋", max_new_tokens=2)
    assert len([warning for warning in said if warning.category is bliptk.PromptWarning]) == 1
    blank = tiny.caption(photos[0], prompt="   ", max_new_tokens=6)
    assert not blank.text.startswith("##") and blank.text == tiny.tokenizer.decode(blank.token_ids)


@pytest.mark.slow
def test_a_missing_torch_or_pyav_is_a_missing_dependency_error(photos, tmp_path):
    """A torch-free install: the command line names what to install, no traceback."""
    (tmp_path / "clip.mp4").write_bytes((VIDEOS / "bigbuckbunny.mp4").read_bytes())
    code = "import sys; sys.modules['torch'] = sys.modules['av'] = None\nfrom bliptk.cli.main import main\nsys.exit(main(sys.argv[1:]))"
    torchless = subprocess.run(
        [sys.executable, "-c", code, "caption", str(photos[0]), "--model", "ViT-B/16", "--random-weights"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert torchless.returncode == 2 and torchless.stderr.startswith(
        "bliptk: error: PyTorch is not installed: see the README's Install section"
    )
    assert "Traceback" not in torchless.stderr
    script = "import sys; sys.modules['av'] = None\nfrom bliptk.cli.main import main\nsys.exit(main(sys.argv[1:]))"
    no_av = subprocess.run(
        [sys.executable, "-c", script, "caption", str(tmp_path / "clip.mp4"), str(photos[0]), "--model", "tiny", "--max-new-tokens", "2"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert no_av.returncode == 1 and "Traceback" not in no_av.stderr, no_av.stderr
    assert "bliptk: error: reading videos needs PyAV: pip install av" in no_av.stderr and no_av.stdout.startswith(
        f"{photos[0]}: a photography of"
    )


@pytest.mark.slow
def test_a_closed_pipe_ends_the_command_quietly():
    result = subprocess.run(
        f"{sys.executable} -m bliptk info --model tiny --arrays | head -n 1", shell=True, capture_output=True, text=True, timeout=120
    )
    assert result.stdout == "model: tiny\n" and result.stderr == ""


def test_an_unexpected_error_is_reported_as_a_bug_in_one_line(photos, capsys, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("something inside went wrong")

    monkeypatch.setattr("bliptk.model.info.net_information", broken)
    assert main(["info", "--model", "tiny"]) == 1
    assert capsys.readouterr().err == (
        "bliptk: internal error: RuntimeError: something inside went wrong. This is a bug in bliptk; please report it, "
        "with the output of the same command run with --debug\n"
    )
    assert main(["--debug", "info", "--model", "tiny"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("Traceback (most recent call last):") and 'raise RuntimeError("something inside went wrong")' in err


def test_an_existing_output_is_an_output_error_and_an_option_error(tiny, photos, tmp_path):
    out = tmp_path / "records.jsonl"
    out.write_text('{"path": "a.jpg"}\n')
    for kind in (bliptk.OutputError, bliptk.InvalidOptionError):
        with pytest.raises(kind, match=r"records.jsonl exists; pass resume=True to continue it, or choose another file"):
            next(tiny.caption_files(photos[0], out))
