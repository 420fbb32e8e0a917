"""Step time and peak memory of fine-tuning, each way, against the same step through plain
``transformers`` (forward with labels, backward, AdamW).

    python benchmarks/finetuning.py [--models ViT-B/16 ViT-L/16] [--batch 4] [--steps 4] [--ways full bf16 lora frozen checkpointing]

Each (model, way) runs in a fresh process, so that its peak resident memory (``ru_maxrss``; on a GPU
also ``torch.cuda.max_memory_allocated``) is its own. bliptk's step is ``bliptk.finetune``'s
(``Trainer``, ``--steps`` steps, the median after the first); the reference is a plain loop over the
same batch: ``BlipForConditionalGeneration(pixel_values, input_ids, attention_mask, labels)``,
``loss.backward()``, ``AdamW.step()``. Random weights from the real configs: time and memory do not
depend on weight values. The ways: ``full`` float32, ``bf16`` autocast, ``lora`` (rank 16, the
decoder, and the head norm), ``frozen`` (the image encoder frozen), ``checkpointing`` (gradient checkpointing).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PHOTOS = sorted((ROOT / "tests" / "data" / "images").glob("*.jpg"))
WAYS = {
    "full": {},
    "bf16": {"dtype": "bfloat16"},
    "lora": {"lora": 16},
    "frozen": {"freeze_vision": True},
    "checkpointing": {"gradient_checkpointing": True},
}


def _peak_gib() -> float:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # kilobytes on Linux


def _pairs(batch: int) -> list:
    captions = ["a dog asleep on a shoe rack", "a red bus in the rain", "a man riding a wave", "a plate of pasta"]
    return [(PHOTOS[i % len(PHOTOS)], captions[i % len(captions)]) for i in range(batch)]


def _bliptk(model: str, way: str, batch: int, steps: int) -> dict:
    import bliptk

    with tempfile.TemporaryDirectory() as out:
        result = bliptk.finetune(
            model,
            _pairs(batch),
            out=f"{out}/run",
            max_steps=steps,
            batch_size=batch,
            save_steps=10**6,
            load_options={"pretrained": False},
            **WAYS[way],
        )
    return {
        "seconds": statistics.median(result.step_seconds[1:]),
        "peak_gib": _peak_gib(),
        "trained": result.trainable_parameters / result.total_parameters,
    }


def _reference(model: str, way: str, batch: int, steps: int) -> dict:
    """The same step in plain transformers (and peft for LoRA): no bliptk in the loop."""
    import torch

    import bliptk
    from bliptk.training.data import text_example
    from bliptk.training.finetune import DEFAULT_LORA_TARGETS, HEAD_NORM

    captioner = bliptk.load(model, pretrained=False)
    net = captioner.model.float().train()
    if way == "frozen":
        net.vision_model.requires_grad_(False)
    if way == "checkpointing":
        net.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if way == "lora":
        from peft import LoraConfig, get_peft_model

        config = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules=f"({DEFAULT_LORA_TARGETS})", modules_to_save=[HEAD_NORM])
        net = get_peft_model(net, config)
    pairs = _pairs(batch)
    pixels = captioner.preprocessor([image for image, _ in pairs])
    rows = [text_example(captioner.tokenizer, "a picture of ", caption) for _, caption in pairs]
    width = max(len(ids) for ids, _ in rows)
    ids = torch.tensor([i + [0] * (width - len(i)) for i, _ in rows])
    labels = torch.tensor([label + [-100] * (width - len(label)) for _, label in rows])
    mask = (torch.arange(width)[None] < torch.tensor([[len(i)] for i, _ in rows])).long()
    optimizer = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=1e-5, weight_decay=0.05)
    seconds = []
    for _ in range(steps):
        started = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=way == "bf16"):
            loss = net(pixel_values=pixels, input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        seconds.append(time.perf_counter() - started)
    return {"seconds": statistics.median(seconds[1:]), "peak_gib": _peak_gib()}


def main(models: list[str], ways: list[str], batch: int, steps: int) -> None:
    import torch

    print(f"batch {batch}, {steps} steps each (median after the first), torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(
        f"{'model':9} {'way':14} {'bliptk s/step':>13} {'peak GiB':>9} {'transformers s/step':>20} {'peak GiB':>9} {'ratio':>6} {'trained':>8}"
    )
    for model in models:
        for way in ways:
            ours, theirs = (_one(kind, model, way, batch, steps) for kind in ("bliptk", "reference"))
            print(
                f"{model:9} {way:14} {ours['seconds']:13.2f} {ours['peak_gib']:9.2f} {theirs['seconds']:20.2f} {theirs['peak_gib']:9.2f} "
                f"{ours['seconds'] / theirs['seconds']:6.2f} {ours['trained']:8.2%}",
                flush=True,
            )


def _one(kind: str, model: str, way: str, batch: int, steps: int) -> dict:
    command = [sys.executable, __file__, "--one", kind, model, way, "--batch", str(batch), "--steps", str(steps)]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["ViT-B/16", "ViT-L/16"])
    parser.add_argument("--ways", nargs="+", default=list(WAYS), choices=list(WAYS))
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--one", nargs=3, metavar=("KIND", "MODEL", "WAY"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        warnings.simplefilter("ignore")
        kind, model, way = args.one
        run = _bliptk if kind == "bliptk" else _reference
        print(json.dumps(run(model, way, args.batch, args.steps)))
    else:
        main(args.models, args.ways, args.batch, args.steps)
