"""What ``bliptk.faithfulness`` costs: seconds per perturbed image and for a whole test, batch 1
against larger batches, ViT-B/16 and ViT-L/16 (random weights: time does not depend on weight values).

    python benchmarks/faithfulness_cost.py [--models ViT-B/16 ViT-L/16] [--tokens 3] [--steps 5] [--batches 1 4 8 16] [--rounds 2] [--threads 1]

One photo, a greedy caption of ``--tokens`` tokens (random weights: it never ends early), explained
by Grad-CAM; then ``faithfulness`` (deletion, blur) at each batch size after one warm-up call, the
batch sizes taking turns for ``--rounds`` rounds, the best of each kept (on a shared machine the
other work only slows a run down), each run's float32 matrix-product rate measured just before it. The
test measures ``2 + (T + 1) * (K - 1)`` images for T tokens and K steps, whatever the method (the map
only chooses which patches change), so the seconds per image give any test's cost: the last column is
a 25-token caption at the default 10 steps (236 images). The first line names the CPU, the threads
and the float32 matrix-product rate measured in the same run.
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

from machine import cpu_name, gemm_rate  # benchmarks/machine.py, beside this script

ROOT = Path(__file__).resolve().parent
PHOTO = sorted((ROOT / "photos").glob("*.jpg"))[0]


def images_measured(tokens: int, steps: int) -> int:
    """Images one test measures: the first and last, then K - 1 along each token's order and the random one."""
    return 2 + (tokens + 1) * (steps - 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=["ViT-B/16", "ViT-L/16"])
    parser.add_argument("--tokens", type=int, default=3)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 4, 8, 16])
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    import torch

    import bliptk

    warnings.simplefilter("ignore")
    torch.set_num_threads(args.threads)
    images = images_measured(args.tokens, args.steps)
    print(f"CPU: {cpu_name()}, {torch.get_num_threads()} threads, float32 GEMM {gemm_rate():.0f} GFLOP/s (577x768 @ 768x3072)")
    print(f"{args.tokens} tokens, {args.steps} steps: {images} images per test; deletion, blur baseline; Grad-CAM maps")
    print(f"{'model':9} {'batch':>5} {'s/test':>8} {'s/image':>8} {'GEMM GFLOP/s':>12} {'25 tokens, 10 steps (s)':>24}", flush=True)
    for model in args.models:
        captioner = bliptk.load(model, pretrained=False)
        caption = captioner.caption(PHOTO, max_new_tokens=args.tokens, min_new_tokens=args.tokens)
        explanation = bliptk.explain(captioner, PHOTO, caption, method="gradcam")
        bliptk.faithfulness(captioner, PHOTO, explanation, steps=1, progress=False)  # warm-up: 2 images
        best: dict[int, tuple[float, float]] = {}
        for _ in range(args.rounds):
            for batch in args.batches:
                rate = gemm_rate()
                start = time.perf_counter()
                bliptk.faithfulness(captioner, PHOTO, explanation, steps=args.steps, batch_size=batch, progress=False)
                seconds = time.perf_counter() - start
                if batch not in best or seconds < best[batch][0]:
                    best[batch] = (seconds, rate)
        for batch, (seconds, rate) in best.items():
            per_image = seconds / images
            print(
                f"{model:9} {batch:5d} {seconds:8.1f} {per_image:8.3f} {rate:12.0f} {per_image * images_measured(25, 10):24.0f}", flush=True
            )


if __name__ == "__main__":
    main()
