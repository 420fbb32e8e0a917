"""Time per caption token and peak memory of each explanation method, and Grad-CAM against the same
quantity computed through ``transformers``' modules.

    python benchmarks/explaining.py [--models ViT-B/16 ViT-L/16] [--tokens 20] [--ig-tokens 2]

Each (model, method) runs in a fresh process, so that its peak resident memory (``ru_maxrss``) is
its own: the model loaded and a caption made first (the "before" column), then one explanation of a
caption of ``--tokens`` tokens (random weights: a greedy caption that never ends early). Integrated
gradients costs ``ig_steps`` passes of the whole model per token: it is timed on the caption's
first ``--ig-tokens`` tokens (a prefix explains exactly its own tokens: the decoder is causal).
The Grad-CAM reference is the test's: ``BlipForConditionalGeneration``'s decoder with
``output_attentions=True`` and ``torch.autograd.grad`` per token. Random weights: timing and memory do
not depend on weight values.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PHOTO = sorted((ROOT / "tests" / "data" / "images").glob("*.jpg"))[0]


def _peak_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # kilobytes on Linux


def _reference_gradcam(captioner, caption, layer: int):
    import torch

    features = captioner.encode_image(PHOTO).clone().requires_grad_(True)
    prompt_ids = captioner.tokenizer.encode(caption.prompt)
    ids = torch.tensor([prompt_ids + caption.token_ids])
    with torch.enable_grad():
        out = captioner.model.text_decoder(input_ids=ids, encoder_hidden_states=features, output_attentions=True)
        weights, logprobs = out.cross_attentions[layer], out.logits[0].log_softmax(-1)
        for t, token in enumerate(caption.token_ids):
            p = len(prompt_ids) - 1 + t
            (gradient,) = torch.autograd.grad(logprobs[p, token], weights, retain_graph=True)
            (weights[0, :, p] * gradient[0, :, p].clamp(min=0)).mean(0)


def one(model: str, method: str, tokens: int, ig_tokens: int) -> dict:
    """Measure one method in this process; returns seconds per token and peak memory."""
    import dataclasses

    import torch

    import bliptk

    warnings.simplefilter("ignore")
    torch.manual_seed(0)
    captioner = bliptk.load(model, pretrained=False)
    caption = captioner.caption(PHOTO, max_new_tokens=tokens)
    if method == "integrated_gradients":
        n = ig_tokens
        caption = dataclasses.replace(caption, token_ids=caption.token_ids[:n], tokens=caption.tokens[:n], logprobs=caption.logprobs[:n])
    before = _peak_gib()
    started = time.perf_counter()
    if method == "gradcam (transformers' modules)":
        _reference_gradcam(captioner, caption, len(captioner.text_decoder.layers) // 2)
    else:
        bliptk.explain(captioner, PHOTO, caption, method=method)
    seconds = time.perf_counter() - started
    return {
        "seconds_per_token": seconds / len(caption.token_ids),
        "tokens": len(caption.token_ids),
        "before_gib": before,
        "peak_gib": _peak_gib(),
    }


def main(models: list[str], tokens: int, ig_tokens: int) -> None:
    import torch

    methods = ["attention", "gradcam", "gradcam (transformers' modules)", "relevance", "rollout", "integrated_gradients"]
    print(f"{torch.get_num_threads()} threads; caption of {tokens} tokens (integrated gradients: {ig_tokens}); {PHOTO.name}")
    for model in models:
        print(f"\n{model}, random weights")
        print(f"{'method':34} {'s/token':>8} {'tokens':>7} {'before GiB':>11} {'peak GiB':>9}")
        rows = {}
        for method in methods:
            command = [sys.executable, __file__, "--one", model, method, "--tokens", str(tokens), "--ig-tokens", str(ig_tokens)]
            result = subprocess.run(command, capture_output=True, text=True, check=True)
            rows[method] = row = json.loads(result.stdout.strip().splitlines()[-1])
            print(
                f"{method:34} {row['seconds_per_token']:8.3f} {row['tokens']:7d} {row['before_gib']:11.2f} {row['peak_gib']:9.2f}",
                flush=True,
            )
        ratio = rows["gradcam"]["seconds_per_token"] / rows["gradcam (transformers' modules)"]["seconds_per_token"]
        print(f"gradcam: bliptk / transformers' modules = {ratio:.2f}x the time")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["ViT-B/16", "ViT-L/16"])
    parser.add_argument("--tokens", type=int, default=20)
    parser.add_argument("--ig-tokens", type=int, default=2)
    parser.add_argument("--one", nargs=2, metavar=("MODEL", "METHOD"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one(*args.one, args.tokens, args.ig_tokens)))
    else:
        main(args.models, args.tokens, args.ig_tokens)
