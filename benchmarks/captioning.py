"""bliptk against transformers on the same inputs, measured in one run.

    python benchmarks/captioning.py --model ViT-B/16      # or ViT-L/16; --quick for a short run

Builds the full-size architecture with random weights (speed does not depend on weight values),
then prints:

1. Exact path (float32, batch 1, 20 generated tokens): seconds per image of bliptk
   (``image_encoder`` + ``caption_features``) and of ``BlipForConditionalGeneration.generate`` on the
   same pixels, alternating, with the ratio (min and median). Both must give the same tokens.
2. Throughput path: images per second over the 64 photos of ``benchmarks/photos`` with
   ``caption_files`` (bfloat16 where the CPU supports it, batches, preprocessing in worker threads),
   against ``generate`` in float32 at batch 1; and the machine's floor for the same work (encoder
   FLOPs at the bfloat16 peak plus the decoder's weight traffic at memory bandwidth).
3. Encoder GFLOP/s in float32 and bfloat16 against the machine's peaks.
4. How often bfloat16 changes the tokens against float32 on the 64 photos.
5. Peak memory (resident set) of each path in a fresh process, against transformers.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

import bliptk
from bliptk.testing import hf_generate

ROOT = Path(__file__).resolve().parent
PHOTOS = sorted((ROOT / "photos").glob("*.jpg"))
EXACT_PHOTOS = sorted((ROOT.parent / "tests" / "data" / "images").glob("*.jpg"))
TOKENS = 20
PEAK_FP32, PEAK_BF16, MEMORY_BANDWIDTH = 435e9, 870e9, 80e9  # this machine's rough limits (2 cores)


def encoder_flops(config) -> float:
    """Multiply-adds x 2 of the ViT for one image."""
    vision = config.vision_config
    tokens = (vision.image_size // vision.patch_size) ** 2 + 1
    width, layers = vision.hidden_size, vision.num_hidden_layers
    per_layer = 2 * tokens * width * (3 * width + width + 2 * vision.intermediate_size) + 4 * tokens * tokens * width
    patch = 2 * (tokens - 1) * width * 3 * vision.patch_size**2
    return layers * per_layer + patch


def decoder_step_bytes(captioner, bytes_per_value: int) -> float:
    """Weights one decoder step reads (everything but the cross-attention keys and values)."""
    decoder = captioner.model.text_decoder
    skipped = sum(p.numel() for n, p in decoder.named_parameters() if ".crossattention.self.key" in n or ".crossattention.self.value" in n)
    return (sum(p.numel() for p in decoder.parameters()) - skipped) * bytes_per_value


def transformers_generate(captioner, pixel_values):
    return hf_generate(captioner, pixel_values, "a photography of", TOKENS)


def bliptk_exact(captioner, pixel_values):
    features = captioner.image_encoder(pixel_values)
    return [c.token_ids for c in captioner.caption_features(features, bliptk.DecodingOptions(max_new_tokens=TOKENS))]


def timed(function, *args):
    started = time.perf_counter()
    result = function(*args)
    return time.perf_counter() - started, result


def exact_path(captioner, repeats: int) -> None:
    print(f"\n1. exact path: float32, batch 1, {TOKENS} tokens, {len(EXACT_PHOTOS)} photos x {repeats} repeats (alternating)")
    ours, theirs, ratios = [], [], []
    for _ in range(repeats):
        for photo in EXACT_PHOTOS:
            pixels = captioner.preprocessor(photo)
            their_time, their_tokens = timed(transformers_generate, captioner, pixels)
            our_time, our_tokens = timed(bliptk_exact, captioner, pixels)
            assert our_tokens == their_tokens, "bliptk and transformers disagree"
            ours.append(our_time)
            theirs.append(their_time)
            ratios.append(our_time / their_time)
    print(f"   transformers generate: min {min(theirs):.3f} s, median {statistics.median(theirs):.3f} s per image")
    print(f"   bliptk               : min {min(ours):.3f} s, median {statistics.median(ours):.3f} s per image")
    print(f"   ratio bliptk / transformers: min {min(ratios):.2f}, median {statistics.median(ratios):.2f} (same tokens: yes)")


def throughput_path(captioner, fast, photos, baseline_images: int) -> dict:
    print(f"\n2. throughput: {len(photos)} photos, {TOKENS} tokens")
    started = time.perf_counter()
    for photo in photos[:baseline_images]:
        transformers_generate(captioner, captioner.preprocessor(photo))
    baseline = baseline_images / (time.perf_counter() - started)
    print(f"   transformers generate, float32, batch 1 ({baseline_images} photos): {baseline:.3f} images/s")
    records = {}
    for batch_size in (8, 16):
        started = time.perf_counter()
        done = list(fast.caption_files(photos, max_new_tokens=TOKENS, batch_size=batch_size, workers=1, progress=False))
        rate = len(done) / (time.perf_counter() - started)
        records[batch_size] = done
        print(f"   bliptk caption_files, {str(fast.dtype).removeprefix('torch.')}, batch {batch_size}: {rate:.3f} images/s = {rate / baseline:.2f}x transformers")
    floor = encoder_flops(captioner.model.config) / PEAK_BF16 + decoder_step_bytes(captioner, 2) * TOKENS / MEMORY_BANDWIDTH / 16
    print(f"   machine floor (encoder at {PEAK_BF16 / 1e9:.0f} GFLOP/s + decoder weights at {MEMORY_BANDWIDTH / 1e9:.0f} GB/s, batch 16): "
          f"{1 / floor:.2f} images/s; bliptk is at {floor * rate:.2f} of it ({1 / (floor * rate):.2f}x the floor's time)")
    return records[16]


def encoder_speed(captioner, fast) -> None:
    print("\n3. image encoder, batch 8")
    flops = encoder_flops(captioner.model.config)
    pixels = torch.randn(8, 3, captioner.preprocessor.image_size, captioner.preprocessor.image_size)
    for model, peak in ((captioner, PEAK_FP32), (fast, PEAK_BF16)):
        model.image_encoder(pixels[:2])
        seconds = min(timed(model.image_encoder, pixels)[0] for _ in range(2))
        rate = 8 * flops / seconds
        print(f"   {str(model.dtype).removeprefix('torch.'):9}: {seconds / 8:.3f} s/image, {rate / 1e9:.0f} GFLOP/s = {rate / peak:.0%} of {peak / 1e9:.0f} GFLOP/s ({flops / 1e9:.0f} GFLOP per image)")


def bf16_agreement(captioner, fast_records, photos) -> None:
    print("\n4. bfloat16 against float32 tokens (same weights)")
    exact = {str(p): c.token_ids for p, c in zip(photos, captioner.caption(photos, max_new_tokens=TOKENS, batch_size=16))}
    same = 0
    divergences = []
    for record in fast_records:
        ours, reference = record["token_ids"], exact[record["path"]]
        if ours == reference:
            same += 1
        else:
            divergences.append(next((i for i, (a, b) in enumerate(zip(ours, reference)) if a != b), min(len(ours), len(reference))))
    print(f"   identical captions: {same}/{len(fast_records)}", end="")
    if divergences:
        print(f"; where they differ, the first differing token is at position {statistics.median(divergences):.0f} (median)")
    else:
        print()


def peak_memory(model: str) -> None:
    print("\n5. peak memory (resident set while captioning 8 photos at batch 8, model included; fresh process each)")
    results = {}
    for path in ("transformers", "exact", "throughput"):
        output = subprocess.run([sys.executable, __file__, "--model", model, "--memory-probe", path], capture_output=True, text=True, check=True)
        results[path] = json.loads(output.stdout.strip().splitlines()[-1])["peak_mb"]
    for path, megabytes in results.items():
        print(f"   {path:12}: {megabytes:7.0f} MB ({megabytes / results['transformers']:.2f}x transformers)")


def memory_probe(model: str, path: str) -> None:
    import gc

    torch.manual_seed(0)
    captioner = bliptk.load(model, pretrained=False, dtype="bfloat16" if path == "throughput" else None)
    photos = PHOTOS[:8]
    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak: measure the job, not building the model
    if path == "transformers":
        transformers_generate(captioner, captioner.preprocessor(photos))
    elif path == "exact":
        bliptk_exact(captioner, captioner.preprocessor(photos))
    else:
        list(captioner.caption_files(photos, max_new_tokens=TOKENS, batch_size=8, workers=1, progress=False))
    status = Path("/proc/self/status").read_text()
    peak_kb = int(next(line for line in status.splitlines() if line.startswith("VmHWM:")).split()[1])
    print(json.dumps({"peak_mb": peak_kb / 1024}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="ViT-B/16")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="16 photos and 1 repeat")
    parser.add_argument("--memory-probe", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_probe:
        return memory_probe(args.model, args.memory_probe)
    photos = PHOTOS[:16] if args.quick else PHOTOS
    print(f"{args.model}, random weights, torch {torch.__version__}, {torch.get_num_threads()} threads")
    captioner = bliptk.load(args.model, pretrained=False)
    fast = bliptk.load(args.model, pretrained=False, dtype="bfloat16")  # the same seed: the same weights
    exact_path(captioner, 1 if args.quick else args.repeats)
    records = throughput_path(captioner, fast, photos, baseline_images=4 if args.quick else 8)
    encoder_speed(captioner, fast)
    bf16_agreement(captioner, records, photos)
    peak_memory(args.model)


if __name__ == "__main__":
    main()
