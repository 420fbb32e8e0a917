"""Images per second of the local Ray Data path against the single-process batch command.

    python benchmarks/ray_captioning.py [--model ViT-B/16] [--dtype bfloat16]

Both caption the 64 photos of ``benchmarks/photos`` with random weights (speed does not depend on
them), 20 tokens, batch 8; Ray runs on a local 2-CPU instance (one captioning actor, reads beside
it, its CPU share decided by ``caption_dataset``). Both times include loading the model (in the
Ray actor, after the actor starts), as a command-line run would.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import bliptk
from bliptk.captioning.ray_data import caption_dataset

PHOTOS = sorted((Path(__file__).resolve().parent / "photos").glob("*.jpg"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="ViT-B/16")
    parser.add_argument("--dtype", default="bfloat16")
    args = parser.parse_args()
    import ray

    started = time.perf_counter()
    captioner = bliptk.load(args.model, pretrained=False, dtype=args.dtype)
    records = list(captioner.caption_files(PHOTOS, batch_size=8, workers=1, max_new_tokens=20, progress=False))
    single = len(records) / (time.perf_counter() - started)
    del captioner

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    with tempfile.TemporaryDirectory() as output:
        started = time.perf_counter()
        summary = caption_dataset(
            PHOTOS, output=output, model=args.model, pretrained=False, dtype=args.dtype, batch_size=8, max_new_tokens=20
        )
        on_ray = summary.captioned / (time.perf_counter() - started)
    ray.shutdown()
    print(f"{args.model}, {args.dtype}, {len(PHOTOS)} photos, 20 tokens, batch 8")
    print(f"single process (load + caption_files): {single:.3f} images/s")
    print(f"Ray Data, local, 2 CPUs              : {on_ray:.3f} images/s ({on_ray / single:.2f}x)")


if __name__ == "__main__":
    main()
