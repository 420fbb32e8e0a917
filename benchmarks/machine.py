"""What the benchmarks say about the machine beside each figure: the CPU's name and the float32
matrix-product rate measured in the same run (so a figure can be read against the limit it ran under)."""

from __future__ import annotations

import platform
import time
from pathlib import Path


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``), or what ``platform`` knows."""
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def gemm_rate() -> float:
    """float32 GFLOP/s of a (577, 768) x (768, 3072) product (a ViT-B/16 MLP's), best of 5."""
    import torch

    a, b = torch.randn(577, 768), torch.randn(768, 3072)
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * 577 * 768 * 3072 / best / 1e9
