"""Shared fixtures: a tiny random BLIP, its checkpoint folder, and the full-size ViT-B/16
architecture with random weights (logic never depends on weight values)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

import bliptk

DATA = Path(__file__).parent / "data"
PHOTOS = sorted((DATA / "images").glob("*.jpg"))
VIDEOS = DATA / "video"


def make_video(path: Path, frames: int = 20, fps: int = 10, keyframe_interval: int = 10, rotation: int | None = None, size=(64, 48)) -> Path:
    """Write a small MPEG-4 video whose frame i is grey level 10 * i with a white left band."""
    import av
    import numpy as np

    width, height = size
    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.gop_size = keyframe_interval
        if rotation is not None:
            stream.set_display_rotation(rotation)
        for index in range(frames):
            pixels = np.full((height, width, 3), (10 * index) % 256, dtype=np.uint8)
            pixels[:, : width // 4] = 255
            for packet in stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


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


def save_checkpoint(captioner: bliptk.Captioner, folder: Path) -> Path:
    """Write a checkpoint folder as Hugging Face does: weights, config, tokenizer, preprocessor."""
    captioner.model.save_pretrained(folder)
    shutil.copy(captioner.tokenizer.vocab_file, folder / "vocab.txt")
    preprocessor = captioner.preprocessor
    (folder / "preprocessor_config.json").write_text(
        json.dumps(
            {
                "image_processor_type": "BlipImageProcessor",
                "size": {"height": preprocessor.image_size, "width": preprocessor.image_size},
                "image_mean": list(preprocessor.mean),
                "image_std": list(preprocessor.std),
                "do_resize": True,
                "do_normalize": True,
            }
        )
    )
    return folder


@pytest.fixture(scope="session")
def tiny_checkpoint(tiny, tmp_path_factory) -> Path:
    """A checkpoint folder of the tiny model, saved with save_pretrained."""
    return save_checkpoint(tiny, tmp_path_factory.mktemp("tiny-checkpoint"))


def fake_hub_cache(cache: Path, checkpoint: Path, hub_id: str = "Salesforce/blip-image-captioning-base") -> Path:
    """A Hugging Face cache folder (HF_HUB_CACHE layout) holding ``checkpoint`` as ``hub_id``."""
    repo = cache / f"models--{hub_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / "0123abc"
    snapshot.mkdir(parents=True)
    for file in checkpoint.iterdir():
        (snapshot / file.name).write_bytes(file.read_bytes())
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abc")
    return cache


def hf_generate(captioner: bliptk.Captioner, pixel_values: torch.Tensor, prompt: str, max_new_tokens: int, **kwargs):
    """Token ids that ``BlipForConditionalGeneration.generate`` produces after the prompt.

    The prompt goes in as ``BlipProcessor`` makes it ([CLS] ... [SEP]); ``generate`` swaps
    [CLS] for [DEC] and drops the last column. Rows are cut at [SEP] (which ends a caption).
    """
    prompt_ids = captioner.tokenizer.encode(prompt)[1:]
    input_ids = torch.tensor([[101, *prompt_ids, 102]] * pixel_values.shape[0])
    with torch.inference_mode():
        output = captioner.model.generate(
            pixel_values=pixel_values, input_ids=input_ids, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1, **kwargs
        )
    rows = []
    for row in output[:, 1 + len(prompt_ids) :].tolist():
        rows.append(row[: row.index(102)] if 102 in row else row)
    return rows
