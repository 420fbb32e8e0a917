"""How long the caption explorer takes to answer each change a user makes, and how many times the
model runs for it.

    python benchmarks/explorers.py [--model ViT-B/16] [--repeats 3]

Each change is made as JupyterLab sends it. A prompt typed letter by letter reaches the kernel once
per keystroke from a text box with ``continuous_update`` on, once (on Enter) with it off; a slider
dragged across values, once per value passed or once on release. The script reads the controls'
``continuous_update`` to send what the frontend would, runs each change in the explorer, and prints
the median seconds until the explorer has redrawn, with the number of captions the model made. It
runs against whichever bliptk is imported (``PYTHONPATH=...`` to time another tree).
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings
from pathlib import Path

import bliptk
from bliptk.notebook.widgets import CaptionExplorer

ROOT = Path(__file__).resolve().parent.parent
PHOTOS = sorted((ROOT / "tests" / "data" / "images").glob("*.jpg"))[:2]


def sent(control, values: list) -> list:
    """The values of a control the frontend sends while a user types or drags through ``values``."""
    return values if getattr(control, "continuous_update", True) else values[-1:]


def timed_change(explorer: CaptionExplorer, control, values: list) -> tuple[float, int]:
    """Seconds to answer a user's change of ``control`` through ``values``, and the captions made."""
    captions = 0
    original = explorer.captioner.caption_features

    def counting(*args, **kwargs):
        nonlocal captions
        captions += 1
        return original(*args, **kwargs)

    explorer.captioner.caption_features = counting
    started = time.perf_counter()
    try:
        for value in sent(control, values):
            control.value = value
    finally:
        del explorer.captioner.caption_features
    return time.perf_counter() - started, captions


def main(model: str, repeats: int) -> None:
    warnings.simplefilter("ignore")
    captioner = bliptk.load(model, pretrained=False)
    print(f"{model}, random weights, {bliptk.__file__}")
    changes = {
        "type a prompt ('the woman')": lambda e: (e.prompt, [("the woman"[:n]) for n in range(1, 10)], e.prompt, ["a photography of"]),
        "one temperature step": lambda e: (e.temperature, [0.05], e.temperature, [0.0]),
        "drag temperature 0 -> 1": lambda e: (e.temperature, [round(0.05 * n, 2) for n in range(1, 21)], e.temperature, [0.0]),
        "beams 1 -> 3": lambda e: (e.num_beams, [2, 3], e.num_beams, [1]),
        "switch the image": lambda e: (e.image, [str(PHOTOS[1])], e.image, [str(PHOTOS[0])]),
    }
    print(f"{'change':30} {'seconds (median)':>17} {'captions':>9}")
    for name, change in changes.items():
        seconds, runs = [], 0
        for _ in range(repeats):
            explorer = CaptionExplorer(captioner, PHOTOS)
            explorer.features()  # the first image encoded, as after the explorer opened
            control, values, back, back_values = change(explorer)
            elapsed, runs = timed_change(explorer, control, values)
            seconds.append(elapsed)
            for value in back_values:
                back.value = value
        print(f"{name:30} {statistics.median(seconds):17.2f} {runs:9d}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="ViT-B/16")
    parser.add_argument("--repeats", type=int, default=3)
    arguments = parser.parse_args()
    main(arguments.model, arguments.repeats)
