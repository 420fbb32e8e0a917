"""Explaining a folder: time per image and peak memory at batch 1 and batch 8, per method.

    python benchmarks/explaining_folders.py [--models ViT-B/16 ViT-L/16] [--images 32] [--methods gradcam attention ...]

Each (model, method, batch size) runs ``bliptk.explain_files`` over a folder of ``--images`` photos
(copies of ``benchmarks/photos``) in a fresh process, so that its peak resident memory
(``ru_maxrss``) is its own, after one warm-up image. Captions are greedy, ``--max-new-tokens`` (20)
long (random weights: they never end early), so every image has as many tokens. The slow methods
(relevance, occlusion, Shapley, integrated gradients) run on ``--slow-images`` images. The line
per method gives the seconds per image at each batch size and their ratio (batch 1 / batch 8:
above 1, batching pays), and the CPU they ran on with its float32 matrix-product rate. Random
weights: timing and memory do not depend on weight values.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

from machine import cpu_name, gemm_rate  # benchmarks/machine.py, beside this script

ROOT = Path(__file__).resolve().parent
PHOTOS = sorted((ROOT / "photos").glob("*.jpg"))
SLOW = {"relevance", "occlusion", "shapley", "integrated_gradients"}


def one(model: str, method: str, images: int, batch_size: int, tokens: int) -> dict:
    import bliptk

    warnings.simplefilter("ignore")
    captioner = bliptk.load(model, pretrained=False)
    folder = Path(tempfile.mkdtemp(prefix="bliptk-explain-bench-"))
    try:
        for index in range(images + 1):
            shutil.copy(PHOTOS[index % len(PHOTOS)], folder / f"{index:05d}.jpg")
        options = {"ig_steps": 8} if method == "integrated_gradients" else {"occlusion_window": 4} if method == "occlusion" else {}
        run = dict(method=method, batch_size=batch_size, max_new_tokens=tokens, min_new_tokens=tokens, progress=False, workers=1, **options)
        list(bliptk.explain_files(captioner, [folder / "00000.jpg"], folder / "warm", **run))
        paths = sorted(str(p) for p in folder.glob("*.jpg"))[1:]
        start = time.perf_counter()
        records = list(bliptk.explain_files(captioner, paths, folder / "out", **run))
        seconds = time.perf_counter() - start
        assert not any(r["error"] for r in records), [r["error"] for r in records if r["error"]]
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return {"per_image": seconds / images, "peak_gib": peak, "tokens": tokens}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=["ViT-B/16", "ViT-L/16"])
    parser.add_argument("--methods", nargs="+", default=["gradcam", "attention", "rollout", "relevance", "occlusion"])
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--slow-images", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=20)
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        model, method, images, batch = args.one.split(",")
        print(json.dumps(one(model, method, int(images), int(batch), args.max_new_tokens)))
        return
    import torch

    print(f"CPU: {cpu_name()}, {torch.get_num_threads()} threads, float32 GEMM {gemm_rate():.0f} GFLOP/s (577x768 @ 768x3072)")
    print(
        f"{'model':9} {'method':21} {'images':>6} {'s/image b1':>10} {'s/image b8':>10} {'b1/b8':>6} {'peak GiB b1':>11} {'peak GiB b8':>11}"
    )
    for model in args.models:
        for method in args.methods:
            images = args.slow_images if method in SLOW else args.images
            results = []
            for batch in (1, 8):
                command = [
                    sys.executable,
                    __file__,
                    "--one",
                    f"{model},{method},{images},{batch}",
                    "--max-new-tokens",
                    str(args.max_new_tokens),
                ]
                done = subprocess.run(command, capture_output=True, text=True, check=False)
                if done.returncode != 0:
                    raise SystemExit(done.stderr)
                results.append(json.loads(done.stdout.strip().splitlines()[-1]))
            b1, b8 = results
            print(
                f"{model:9} {method:21} {images:6d} {b1['per_image']:10.2f} {b8['per_image']:10.2f} {b1['per_image'] / b8['per_image']:6.2f} "
                f"{b1['peak_gib']:11.2f} {b8['peak_gib']:11.2f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
