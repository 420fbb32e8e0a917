"""What bliptk's tests and benchmarks compare against and build on (as ``numpy.testing`` is for
NumPy): ``transformers``' own generation on the same inputs, checkpoint folders, a Hugging Face
cache, small videos.

Public, so that a user can check bliptk the same way: ``hf_generate(captioner, pixels, "the woman",
20)`` gives the token ids ``BlipForConditionalGeneration.generate`` makes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..core.tokenizer import CLS_TOKEN_ID, SEP_TOKEN_ID

__all__ = ["fake_hub_cache", "hf_generate", "make_video", "save_checkpoint"]


def hf_generate(captioner, pixel_values: torch.Tensor, prompt: str, max_new_tokens: int, **generate_options) -> list[list[int]]:
    """Token ids that ``BlipForConditionalGeneration.generate`` produces after the prompt.

    The prompt goes in as ``BlipProcessor`` makes it (``[CLS] ... [SEP]``); ``generate`` swaps
    ``[CLS]`` for ``[DEC]`` and drops the last column. Rows are cut at ``[SEP]`` (which ends a
    caption).

    Args:
        captioner: A [`Captioner`][bliptk.model.captioner.Captioner] (its ``model`` generates).
        pixel_values: ``(B, 3, S, S)`` preprocessed images.
        prompt: The prompt, the same for every image.
        max_new_tokens: Passed to ``generate``.
        **generate_options: Also passed (``num_beams``, ``repetition_penalty``, ...); greedy by
            default.

    Returns:
        The generated ids of each image (beam search: the best beam).
    """
    prompt_ids = captioner.tokenizer.encode(prompt)[1:]
    input_ids = torch.tensor([[CLS_TOKEN_ID, *prompt_ids, SEP_TOKEN_ID]] * pixel_values.shape[0])
    options = {"do_sample": False, "num_beams": 1, **generate_options}
    with torch.inference_mode():
        output = captioner.model.generate(pixel_values=pixel_values, input_ids=input_ids, max_new_tokens=max_new_tokens, **options)
    rows = []
    for row in output[:, 1 + len(prompt_ids) :].tolist():
        rows.append(row[: row.index(SEP_TOKEN_ID)] if SEP_TOKEN_ID in row else row)
    return rows


def save_checkpoint(captioner, folder: Path) -> Path:
    """Write a captioner as a checkpoint folder ([`bliptk.model.loading.save_checkpoint()`][bliptk.model.loading.save_checkpoint])."""
    from .loading import save_checkpoint as save

    return save(captioner.model, captioner.tokenizer, captioner.preprocessor, folder)


def fake_hub_cache(cache: Path, checkpoint: Path, hub_id: str = "Salesforce/blip-image-captioning-base") -> Path:
    """A Hugging Face cache folder (``HF_HUB_CACHE`` layout) holding ``checkpoint`` as ``hub_id``."""
    repo = Path(cache) / f"models--{hub_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / "0123abc"
    snapshot.mkdir(parents=True)
    for file in Path(checkpoint).iterdir():
        (snapshot / file.name).write_bytes(file.read_bytes())
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abc")
    return Path(cache)


def make_video(
    path: Path,
    frames: int = 20,
    fps: int = 10,
    keyframe_interval: int = 10,
    rotation: int | None = None,
    size=(64, 48),
    codec: str = "mpeg4",
) -> Path:
    """Write a small MPEG-4 video whose frame i is grey level 10 * i with a white left band.

    Keyframes come exactly every ``keyframe_interval`` frames (the encoder's own scene cuts are
    off): up to 600 with ``"mpeg4"``, any number with ``"libx264"`` (one keyframe for a whole
    video).
    """
    import av
    import numpy as np

    width, height = size
    options = {"x264-params": f"keyint={keyframe_interval}:scenecut=0"} if codec == "libx264" else {"sc_threshold": "1000000000"}
    with av.open(str(path), "w", format="mp4") as container:
        stream: Any = container.add_stream(codec, rate=fps, options=options)  # a video stream (PyAV types it as any stream)
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
    return Path(path)
