"""Shared fixtures: a tiny random BLIP, its checkpoint folder, and the full-size ViT-B/16
architecture with random weights (logic never depends on weight values).

Session fixtures are never changed in place: a test that needs a changed model builds its own
(``sep_likely``).
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

import bliptk
from bliptk.model.parity import save_checkpoint

if os.environ.get("PYTEST_XDIST_WORKER"):
    # pytest -n N runs N workers on the machine's cores: one thread each, or they fight for them.
    torch.set_num_threads(1)
    # And the processes the tests start (notebook kernels, the CLI, Jupyter's): a kernel with a
    # thread per core beside the other worker busy-waits its OpenMP threads (notebook 10 took 129 s
    # in the suite against 21 s alone).
    os.environ["OMP_NUM_THREADS"] = "1"

DATA = Path(__file__).parent / "data"
PHOTOS = sorted((DATA / "images").glob("*.jpg"))
VIDEOS = DATA / "video"


@pytest.fixture(autouse=True)
def _random_weights_said_afresh():
    """Each test sees random weights and odd prompts said anew (bliptk says each once a process)."""
    from bliptk.core import decoding, pipeline

    pipeline._SAID_RANDOM.clear()
    decoding._WARNED_PROMPTS.clear()


@pytest.fixture(scope="session")
def photos() -> list[Path]:
    """Real COCO photos (Karpathy test split; see tests/data/README.md)."""
    return PHOTOS


@pytest.fixture(scope="session")
def tiny() -> bliptk.Captioner:
    """The 2-layer random test model (seeded, so the same weights every run)."""
    return bliptk.load("tiny")


@pytest.fixture(scope="session")
def vit_b() -> bliptk.Captioner:
    """Full-size ViT-B/16 architecture from the real config, random weights."""
    return bliptk.load("ViT-B/16", pretrained=False)


@pytest.fixture(scope="session")
def tiny_checkpoint(tiny, tmp_path_factory) -> Path:
    """A checkpoint folder of the tiny model, saved with save_pretrained."""
    return save_checkpoint(tiny, tmp_path_factory.mktemp("tiny-checkpoint"))


@pytest.fixture(scope="session")
def tiny_export(tiny, tmp_path_factory) -> Path:
    """An ONNX export of the tiny model, with int8 graphs."""
    pytest.importorskip("onnxscript")
    return bliptk.export(tiny, tmp_path_factory.mktemp("onnx") / "tiny", int8=True)


@pytest.fixture
def sep_likely():
    """A fresh tiny model whose [SEP] bias is raised by ``boost``, so that captions end at many
    different lengths: ``sep_likely(6.5)``."""

    def build(boost: float) -> bliptk.Captioner:
        captioner = bliptk.load("tiny")
        with torch.no_grad():
            captioner.model.text_decoder.cls.predictions.decoder.bias[102] += boost
        return captioner

    return build


@contextmanager
def mounted(options: str, size: str = "64k"):
    """A tmpfs of ``size`` mounted with ``options`` (``ro`` for a read-only folder), or None where
    mounting needs root: for disk-full and read-only tests on real file systems."""
    import subprocess
    import tempfile

    point = Path(tempfile.mkdtemp())
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},{options}", "tmpfs", str(point)]).returncode:
        point.rmdir()
        yield None
        return
    try:
        yield point
    finally:
        subprocess.run(["umount", "-l", str(point)])
        point.rmdir()
