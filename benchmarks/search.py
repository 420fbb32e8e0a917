"""Search by caption likelihood: bliptk against scoring with transformers, in one run.

    python benchmarks/search.py                                # tiny net, 1,000 images
    python benchmarks/search.py --model ViT-B/16 --images 32   # full size, random weights

Copies the photos of ``benchmarks/photos`` into a temporary folder until it holds ``--images``
distinct files, then:

1. The machine: its CPU, and the float32 matrix-product rate at the image encoder's shapes.
2. One query over every image with ``bliptk.search`` (encoding each image once), then nine more
   queries over the same images: their time, and how many images the image encoder saw (the second
   and later queries must encode none).
3. ``transformers``' way: ``BlipForConditionalGeneration`` forward with the query teacher-forced,
   the mean log-probability of its tokens; every query runs the whole model over every image
   (there is no feature reuse to call), measured on ``--baseline-images`` images and scaled to all.
4. The ratio of the two for one query and for ten, and whether both rank the images the same.
"""

from __future__ import annotations

import argparse
import itertools
import platform
import shutil
import tempfile
import time
import warnings
from pathlib import Path

import torch

import bliptk
from bliptk.core.tokenizer import DEC_TOKEN_ID, SEP_TOKEN_ID
from bliptk.model.image_encoder import TensorPreprocessor

ROOT = Path(__file__).resolve().parent
PHOTOS = sorted((ROOT / "photos").glob("*.jpg"))
QUERIES = [
    "a dog on a beach",
    "a plate of food on a table",
    "a man riding a horse",
    "two people playing tennis",
    "a red bus on a street",
    "a cat sleeping on a sofa",
    "a kitchen with a refrigerator",
    "a train at a station",
    "a giraffe eating leaves",
    "a boy flying a kite",
]
PROMPT = "a photography of"


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def gemm_rate(config) -> float:
    """float32 FLOP/s of the encoder's matrix products, best of 3."""
    vision = config.vision_config
    width, hidden, tokens = vision.hidden_size, vision.intermediate_size, (vision.image_size // vision.patch_size) ** 2 + 1
    total, seconds = 0.0, 0.0
    for k, n in [(width, 3 * width), (width, hidden), (hidden, width)]:
        a, b = torch.randn(tokens, k), torch.randn(k, n)
        best = float("inf")
        for _ in range(3):
            start = time.perf_counter()
            a @ b
            best = min(best, time.perf_counter() - start)
        total, seconds = total + 2 * tokens * k * n, seconds + best
    return total / seconds


def image_folder(count: int) -> Path:
    folder = Path(tempfile.mkdtemp(prefix="bliptk-search-bench-"))
    for index in range(count):
        shutil.copy(PHOTOS[index % len(PHOTOS)], folder / f"{index:05d}.jpg")
    return folder


def transformers_means(captioner, paths: list[str], query: str, batch: int = 16) -> list[float]:
    """The mean log-probability of the query's tokens (and [SEP]) per image, by
    BlipForConditionalGeneration's own forward pass (vision model included, every call)."""
    tokenizer = captioner.tokenizer
    prompt_ids, query_ids = tokenizer.encode(PROMPT)[1:], tokenizer.encode(query)[1:]
    ids = [DEC_TOKEN_ID, *prompt_ids, *query_ids, SEP_TOKEN_ID]
    targets = torch.tensor(ids[1 + len(prompt_ids) :])
    preprocess = TensorPreprocessor.of(captioner.preprocessor)
    means = []
    with torch.inference_mode():
        for start in range(0, len(paths), batch):
            pixels = preprocess(paths[start : start + batch])
            input_ids = torch.tensor([ids] * len(pixels))
            logits = captioner.model(pixel_values=pixels, input_ids=input_ids).logits
            logprobs = torch.log_softmax(logits[:, len(prompt_ids) : -1].float(), dim=-1)
            means += logprobs.gather(-1, targets.expand(len(pixels), -1)[..., None])[..., 0].mean(-1).tolist()
    return means


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--baseline-images", type=int, default=None, help="images transformers scores (default: all)")
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()
    warnings.simplefilter("ignore", bliptk.RandomWeightsWarning)
    captioner = bliptk.load(args.model, pretrained=False)
    print(f"model {args.model} (random weights), {args.images} images, CPU: {cpu_name()}, {torch.get_num_threads()} threads")
    print(f"1. float32 matrix products at the encoder's shapes: {gemm_rate(captioner.model.config) / 1e9:.0f} GFLOP/s")
    folder = image_folder(args.images)
    try:
        encoded: list[int] = []
        encode = type(captioner).encode
        type(captioner).encode = lambda self, pixels: encoded.append(len(pixels)) or encode(self, pixels)  # type: ignore[method-assign]
        start = time.perf_counter()
        first = bliptk.search(captioner, folder, QUERIES[0], batch_size=args.batch_size)
        one = time.perf_counter() - start
        after_first = sum(encoded)
        start = time.perf_counter()
        bliptk.search(captioner, folder, QUERIES[1:], batch_size=args.batch_size)
        nine = time.perf_counter() - start
        print(
            f"2. bliptk.search: 1 query over {len(first)} images {one:.2f} s (encoded {after_first} images); "
            f"9 more queries {nine:.2f} s ({nine / 9:.2f} s each, encoded {sum(encoded) - after_first} more images)"
        )
        paths = sorted(str(p.resolve()) for p in folder.iterdir())
        baseline = paths[: args.baseline_images or len(paths)]
        start = time.perf_counter()
        theirs = transformers_means(captioner, baseline, QUERIES[0], args.batch_size)
        per_query = (time.perf_counter() - start) * len(paths) / len(baseline)
        print(
            f"3. transformers forward, teacher-forced: 1 query over {len(baseline)} images {per_query * len(baseline) / len(paths):.2f} s; "
            f"over {len(paths)}: {per_query:.2f} s{' (scaled)' if len(baseline) < len(paths) else ''}; 10 queries {10 * per_query:.2f} s"
        )
        ours = {hit.path: hit.score for hit in first}
        difference = max(abs(ours[p] - t) for p, t in zip(baseline, theirs, strict=True))
        # the same ranking, up to ties (copies of one photo score alike, to float rounding)
        ours_order = sorted(baseline, key=lambda p: -ours[p])
        theirs_of = dict(zip(baseline, theirs, strict=True))
        same_order = all(theirs_of[a] >= theirs_of[b] - 1e-5 for a, b in itertools.pairwise(ours_order))
        print(
            f"4. one query: bliptk {per_query / one:.2f}x transformers' speed; ten queries: {10 * per_query / (one + nine):.2f}x; "
            f"largest score difference {difference:.1e}, the same ranking: {same_order}"
        )
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
