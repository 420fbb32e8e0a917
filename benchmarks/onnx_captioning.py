"""ONNX Runtime (float32 and int8) against bliptk's torch paths, in one run.

    python benchmarks/onnx_captioning.py --model ViT-B/16 [--quick]

Exports the full-size architecture with random weights (speed does not depend on weight values) to a
temporary folder, float32 and int8 (``quantize_dynamic``, int8 weights per channel), then:

1. Batch 1, 20 tokens, alternating per photo: torch's exact path (float32), torch's int8 path (the
   fastest at batch 1), ONNX Runtime float32 (same tokens as torch, asserted) and int8.
2. Throughput over the 64 photos of ``benchmarks/photos`` (``caption_files``, preprocessing
   included): torch bfloat16 at batch 16 (its best throughput path), ONNX Runtime float32 and int8.
3. int8 fidelity against float32 ONNX Runtime, teacher-forced along float32's captions: top-1
   agreement and mean KL divergence of the next-token distribution.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

import bliptk
import bliptk.exported

ROOT = Path(__file__).resolve().parent
PHOTOS = sorted((ROOT / "photos").glob("*.jpg"))
EXACT_PHOTOS = sorted((ROOT.parent / "tests" / "data" / "images").glob("*.jpg"))
TOKENS = 20


def timed(function, *args, **kwargs):
    started = time.perf_counter()
    result = function(*args, **kwargs)
    return time.perf_counter() - started, result


def latency(paths: dict, repeats: int) -> None:
    print(f"\n1. batch 1, {TOKENS} tokens, {len(EXACT_PHOTOS)} photos x {repeats} repeats, alternating (seconds per image, median)")
    times = {name: [] for name in paths}
    for repeat in range(repeats):
        for photo in EXACT_PHOTOS:
            tokens = {}
            order = list(paths.items()) if repeat % 2 == 0 else list(paths.items())[::-1]
            for name, captioner in order:
                seconds, caption = timed(captioner.caption, photo, max_new_tokens=TOKENS)
                times[name].append(seconds)
                tokens[name] = caption.token_ids
            assert tokens["ONNX float32"] == tokens["torch float32 (exact)"], "ONNX Runtime and torch disagree"
    reference = statistics.median(times["torch float32 (exact)"])
    for name, seconds in times.items():
        print(f"   {name:22}: {statistics.median(seconds):.3f} s = {statistics.median(seconds) / reference:.2f}x torch's exact path")
    print("   (ONNX float32 gave the same tokens as torch on every photo)")


def throughput(paths: dict, photos: list) -> None:
    print(f"\n2. throughput: {len(photos)} photos, {TOKENS} tokens, preprocessing included")
    for name, (captioner, batch) in paths.items():
        seconds, records = timed(
            lambda captioner=captioner, batch=batch: list(
                captioner.caption_files(photos, max_new_tokens=TOKENS, batch_size=batch, workers=1, progress=False)
            )
        )
        print(f"   {name:26}: {len(records) / seconds:.3f} images/s")


def teacher_forced(runner, pixels: np.ndarray, sequences: np.ndarray, prompt_length: int) -> np.ndarray:
    """Log-probabilities of each next token along ``sequences``, one step at a time: (B, T, V)."""
    from bliptk.core.score_filters import log_softmax

    decoder = runner.decoder
    state = decoder.start(decoder.image_keys_values(runner.encode(pixels)), sequences.shape[1], None, np.arange(len(sequences)))
    steps = [decoder.step(state, sequences[:, :prompt_length])[0]]
    for position in range(prompt_length, sequences.shape[1] - 1):
        steps.append(decoder.step(state, sequences[:, position : position + 1])[0])
    return np.stack([log_softmax(step) for step in steps], axis=1)


def fidelity(exact, quantized, photos: list) -> None:
    print(f"\n3. int8 against float32 (ONNX Runtime) on {len(photos)} photos, teacher-forced along float32's captions")
    agreement, divergence = [], []
    prompt = exact.tokenizer.encode("a photography of")
    for start in range(0, len(photos), 8):
        chunk = photos[start : start + 8]
        captions = exact.caption(chunk, max_new_tokens=TOKENS, min_new_tokens=TOKENS)
        sequences = np.array([prompt + c.token_ids for c in captions], dtype=np.int64)
        pixels = exact.preprocessor.arrays(chunk)
        reference, ours = teacher_forced(exact, pixels, sequences, len(prompt)), teacher_forced(quantized, pixels, sequences, len(prompt))
        agreement.append((ours.argmax(-1) == reference.argmax(-1)).ravel())
        divergence.append((np.exp(reference) * (reference - ours)).sum(-1).ravel())
    print(f"   top-1 agreement {np.concatenate(agreement).mean():.3f}, mean KL {np.concatenate(divergence).mean():.2e} nats")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="ViT-B/16")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="16 photos, 1 repeat")
    args = parser.parse_args()
    warnings.simplefilter("ignore", bliptk.RandomWeightsWarning)  # random weights on purpose
    photos = PHOTOS[:16] if args.quick else PHOTOS
    exact = bliptk.load(args.model, pretrained=False)
    with tempfile.TemporaryDirectory(prefix="bliptk-onnx-") as scratch:
        seconds, folder = timed(bliptk.export, exact, Path(scratch) / "export", int8=True)
        sizes = {path.name: path.stat().st_size / 1e6 for path in folder.glob("*.onnx")}
        print(
            f"{args.model}, random weights: exported in {seconds:.0f} s; graphs float32 {sum(v for k, v in sizes.items() if '.int8.' not in k):.0f} MB, "
            f"int8 {sum(v for k, v in sizes.items() if '.int8.' in k):.0f} MB"
        )
        runner, quantized = bliptk.exported.load(folder), bliptk.exported.load(folder, dtype="int8")
        torch_int8 = bliptk.load(args.model, pretrained=False, dtype="int8")
        latency(
            {"torch float32 (exact)": exact, "torch int8": torch_int8, "ONNX float32": runner, "ONNX int8": quantized},
            1 if args.quick else args.repeats,
        )
        del torch_int8
        best = bliptk.load(args.model, pretrained=False, dtype="bfloat16")
        throughput(
            {"torch bfloat16, batch 16": (best, 16), "ONNX float32, batch 8": (runner, 8), "ONNX int8, batch 8": (quantized, 8)}, photos
        )
        fidelity(runner, quantized, photos)


if __name__ == "__main__":
    main()
