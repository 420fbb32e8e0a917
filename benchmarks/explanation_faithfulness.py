"""Deletion and insertion AUCs of each explanation method on the Karpathy-test photos, against the
random order.

    python benchmarks/explanation_faithfulness.py [--model ViT-B/16] [--tokens 3] [--steps 5] [--ig-steps 16] [--photos DIR]

For each photo, a greedy caption of ``--tokens`` tokens is explained by every method and each
explanation measured by ``bliptk.faithfulness`` (``--steps`` steps, blurred patches), deletion and
insertion.
The table gives the mean AUC over tokens and photos, the random order's, and the share of tokens on
which the map beats the random order. With random weights (the default here: no machine of this
project reaches the Hub) this tests the mechanism, not the model: the captions are random words.
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

import numpy as np

import bliptk

ROOT = Path(__file__).resolve().parent.parent
KARPATHY = ROOT.parent / "shared" / "data" / "images" / "coco-karpathy-test"


def main(model: str, tokens: int, steps: int, ig_steps: int, photos: Path, pretrained: bool) -> None:
    warnings.simplefilter("ignore")
    captioner = bliptk.load(model, pretrained=pretrained)
    paths = sorted(photos.glob("*.jpg"))
    print(
        f"{model}, {'pretrained' if pretrained else 'random weights'}; {len(paths)} photos of {photos.name}; {tokens} tokens each, {steps} perturbation steps"
    )
    results: dict[str, dict[str, list]] = {method: {"deletion": [], "insertion": []} for method in bliptk.EXPLANATION_METHODS}
    seconds = dict.fromkeys(bliptk.EXPLANATION_METHODS, 0.0)
    for path in paths:
        caption = captioner.caption(path, max_new_tokens=tokens)
        for method in bliptk.EXPLANATION_METHODS:
            started = time.perf_counter()
            method_options = {"ig_steps": ig_steps} if method == "integrated_gradients" else {}
            explanation = bliptk.explain(captioner, path, caption, method=method, **method_options)
            seconds[method] += time.perf_counter() - started
            for mode in ("deletion", "insertion"):
                results[method][mode].append(bliptk.faithfulness(captioner, path, explanation, mode=mode, steps=steps))
        print(f"  {path.name}: {caption.text}", flush=True)
    print(
        f"\n{'method':22} {'deletion AUC':>13} {'random':>8} {'better':>7}   {'insertion AUC':>13} {'random':>8} {'better':>7}   {'s/token':>8}"
    )
    count = len(paths) * tokens
    for method, modes in results.items():
        row = []
        for mode in ("deletion", "insertion"):
            auc = np.concatenate([r.auc for r in modes[mode]])
            random_auc = np.concatenate([r.random_auc for r in modes[mode]])
            better = auc < random_auc if mode == "deletion" else auc > random_auc
            row.append(f"{auc.mean():13.5f} {random_auc.mean():8.5f} {better.mean():7.0%}")
        print(f"{method:22} {row[0]}   {row[1]}   {seconds[method] / count:8.2f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="ViT-B/16")
    parser.add_argument("--tokens", type=int, default=3)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--ig-steps", type=int, default=16)
    parser.add_argument("--photos", type=Path, default=KARPATHY)
    parser.add_argument("--pretrained", action="store_true", help="the real weights (needs the Hub or a cache)")
    args = parser.parse_args()
    main(args.model, args.tokens, args.steps, args.ig_steps, args.photos, args.pretrained)
