"""What the tests build and the package does not ship: a Hugging Face cache and small videos."""

from __future__ import annotations

from pathlib import Path
from typing import Any


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


def site_hooks():
    """docs/hooks.py, the documentation site's MkDocs hooks, as a module (they are loaded by path,
    as MkDocs loads them: docs/ is no package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("bliptk_site_hooks", Path(__file__).parent.parent / "docs" / "hooks.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
