"""Time bliptk.video_frames(path, 16) against decoding every frame of the same video to RGB.

    python benchmarks/video_decoding.py [VIDEO ...]

Repeats alternate between the two so that both see the same machine state; prints min and median
seconds and their ratio.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import av

import bliptk

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_VIDEOS = sorted((ROOT / "tests" / "data" / "video").glob("*.mp4"))


def every_frame(path: Path) -> int:
    with av.open(str(path)) as container:
        return sum(1 for frame in container.decode(video=0) if frame.to_image() is not None)


def main(paths: list[Path], repeats: int = 5, num_frames: int = 16) -> None:
    print(f"{'video':24} {'frames':>7} {'all (s)':>16} {f'{num_frames} (s)':>16} {'ratio':>12}")
    for path in paths:
        whole, sampled = [], []
        for _ in range(repeats):
            started = time.perf_counter()
            total = every_frame(path)
            whole.append(time.perf_counter() - started)
            started = time.perf_counter()
            bliptk.video_frames(path, num_frames)
            sampled.append(time.perf_counter() - started)
        ratio_min, ratio_median = min(sampled) / min(whole), statistics.median(sampled) / statistics.median(whole)
        print(
            f"{path.name:24} {total:7d} {min(whole):7.3f} / {statistics.median(whole):6.3f} "
            f"{min(sampled):7.3f} / {statistics.median(sampled):6.3f} {ratio_min:5.2f} / {ratio_median:4.2f}"
        )
    print("(min / median over alternating repeats; ratio = sampled / every frame)")


if __name__ == "__main__":
    main([Path(p) for p in sys.argv[1:]] or DEFAULT_VIDEOS)
