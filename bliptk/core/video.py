"""Reading videos with PyAV: uniformly spaced frames, decoded by seeking.

The page captions a video from N uniformly spaced frames (``VideoFrameList[video, N]``) whose image
features are averaged. [`video_frames()`][bliptk.core.video.video_frames] takes the frame shown at the middle of each of N equal
parts of the video (or of a segment of it), honouring rotation metadata and variable frame rates,
and converts only those frames to RGB; decoding jumps ahead by seeking when a keyframe lies between
it and the next frame, and never goes back, so that no video is decoded more than once over.
"""

from __future__ import annotations

import itertools
import logging
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from .errors import InvalidOptionError, MissingDependencyError, VideoLoadError, check_positive_int, option_error
from .files import VIDEO_EXTENSIONS
from .optional import optional
from .preprocess import check_readable_file

__all__ = [
    "DEFAULT_VIDEO_PROMPT",
    "VIDEO_POOLINGS",
    "VideoFrames",
    "VideoInfo",
    "VideoOptions",
    "is_video",
    "plot_video_frames",
    "video_frames",
    "video_info",
]

logger = logging.getLogger(__name__)


DEFAULT_VIDEO_PROMPT = "a video of"
"""The prompt of a video caption when none is given."""
VIDEO_POOLINGS = ("mean", "concat")
"""How a video's frame features are pooled: their mean (the page's), or concatenated."""


@dataclass(frozen=True, kw_only=True)
class VideoOptions:
    """How a video becomes the image features a caption is decoded from. Build it by keyword:
    ``VideoOptions(num_frames=8)``.

    Attributes:
        num_frames: Uniformly spaced frames taken from a video file (the page's
            ``"NumberOfFrames"``).
        pooling: ``"mean"``: the frames' features averaged, ``(N, D)`` (the page's method);
            ``"concat"``: one after another, ``(frames * N, D)`` (as BLIP's authors did for video
            retrieval).

    Each field's ``metadata`` holds its command-line help, as [`DecodingOptions`][bliptk.core.decoding.DecodingOptions]'.
    """

    num_frames: int = field(default=16, metadata={"help": "frames taken from each video, uniformly spaced", "aliases": ("--frames",)})
    pooling: str = field(
        default="mean", metadata={"help": "how a video's frame features are pooled: mean (the page's) or concat", "choices": VIDEO_POOLINGS}
    )

    def __post_init__(self):
        check_positive_int("num_frames", self.num_frames)
        if self.pooling not in VIDEO_POOLINGS:
            raise option_error(f"pooling must be one of {', '.join(VIDEO_POOLINGS)}, got {self.pooling!r}", "pooling")

    def as_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}


class VideoFrames(list):
    """RGB frames of a video (a list of PIL images) with where they come from.

    ``captioner.caption(frames)`` captions them as one video.

    Attributes:
        timestamps: Presentation time of each frame, in seconds from the video's start.
        source: The video file.
        duration: The video's duration in seconds.
        decoded_frames: How many frames were decoded to produce these (the rest were skipped by
            seeking).
    """

    def __init__(self, frames, timestamps, source=None, duration=None, decoded_frames=0):
        super().__init__(frames)
        self.timestamps = list(timestamps)
        self.source = source
        self.duration = duration
        self.decoded_frames = decoded_frames

    def __repr__(self) -> str:
        times = ", ".join(f"{t:.2f}" for t in self.timestamps)
        return f"VideoFrames({len(self)} frames of {self.source}, at [{times}] s)"

    def _repr_png_(self):
        from io import BytesIO

        buffer = BytesIO()
        plot_video_frames(self).savefig(buffer, format="png", dpi=80)
        return buffer.getvalue()


@dataclass(frozen=True)
class VideoInfo:
    """What a video file holds.

    Attributes:
        duration: Seconds from the first frame's start to the end of the stream.
        start_time: Presentation time of the stream's start, in seconds.
        frame_count: Number of frames the container declares (0 when it does not say).
        average_fps: Average frame rate.
        width: Frame width in pixels, as stored (before rotation).
        height: Frame height in pixels, as stored.
        codec: Codec name.
    """

    duration: float
    start_time: float
    frame_count: int
    average_fps: float
    width: int
    height: int
    codec: str


def _still_image(path: Path) -> bool:
    try:
        with Image.open(path) as image:
            return not getattr(image, "is_animated", False)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        return False


def _check_file(path) -> Path:
    path = Path(path)
    check_readable_file(path, VideoLoadError)
    if _still_image(path):
        raise VideoLoadError(path, "is a still image, not a video; caption it as an image")
    return path


def _av():
    """PyAV, or the error that says how to install it (a torch-free install may lack it)."""
    return optional("av")


def _open(path: Path):
    av = _av()
    try:
        return av.open(str(path), metadata_errors="ignore")
    except PermissionError:
        raise VideoLoadError(path, "permission denied") from None
    except (av.error.FFmpegError, UnicodeDecodeError, ValueError) as error:
        raise VideoLoadError(path, f"not a video PyAV can read, or corrupt or truncated ({error})") from None


def _is_image_format(container) -> bool:
    """FFmpeg reads still images as one-frame videos (the image2 and *_pipe demuxers)."""
    names = container.format.name.split(",")
    return any(name.startswith("image2") or name.endswith("_pipe") for name in names)


def _video_stream(container, path: Path):
    if _is_image_format(container):
        raise VideoLoadError(path, "is a still image, not a video; caption it as an image")
    if not container.streams.video:
        kinds = sorted({stream.type for stream in container.streams})
        detail = " (audio only)" if kinds == ["audio"] else (f" (streams: {', '.join(kinds)})" if kinds else "")
        raise VideoLoadError(path, f"has no video stream{detail}")
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"
    return stream


def _frame_time(frame, stream) -> float | None:
    if frame.pts is not None:
        return float(frame.pts * stream.time_base)
    return frame.time


def _start_and_duration(container, stream, path: Path) -> tuple[float, float]:
    """The stream's start time and duration in seconds, from the container or else by decoding."""
    start = float(stream.start_time * stream.time_base) if stream.start_time is not None else 0.0
    if stream.duration:
        return start, float(stream.duration * stream.time_base)
    if container.duration:
        return start, container.duration / 1_000_000
    return start, _scan_duration(container, stream, path) - start


def video_info(path) -> VideoInfo:
    """Duration, frame count, rate and size of a video file.

    Raises:
        VideoLoadError: The file is missing, empty, a still image, or not a readable video.
    """
    path = _check_file(path)
    with _open(path) as container:
        stream = _video_stream(container, path)
        start, duration = _start_and_duration(container, stream, path)
        return VideoInfo(
            duration=duration,
            start_time=start,
            frame_count=stream.frames or 0,
            average_fps=float(stream.average_rate) if stream.average_rate else 0.0,
            width=stream.codec_context.width,
            height=stream.codec_context.height,
            codec=stream.codec_context.name,
        )


def _scan_duration(container, stream, path: Path) -> float:
    """End time of the stream found by decoding it (for containers that do not say)."""
    av = _av()

    last, step = None, 0.0
    try:
        for frame in container.decode(stream):
            time = _frame_time(frame, stream)
            if time is not None:
                step = time - last if last is not None else step
                last = time
    except av.error.FFmpegError as error:
        raise VideoLoadError(path, f"corrupt or truncated video ({error})") from None
    if last is None:
        raise VideoLoadError(path, "its video stream has no frames")
    container.seek(0)
    return last + step


def _to_image(frame) -> Image.Image:
    image = frame.to_image()
    rotation = getattr(frame, "rotation", 0) or 0
    if rotation % 360:
        # PyAV gives the display matrix's counterclockwise angle; PIL also turns counterclockwise.
        image = image.rotate(rotation, expand=True)
    return image


def video_frames(path, num_frames: int = 16, *, start: float | None = None, end: float | None = None) -> VideoFrames:
    """Uniformly spaced RGB frames of a video.

    Frame ``i`` is the one shown at the middle of the ``i``-th of ``num_frames`` equal parts of
    ``[start, end)`` (the whole video by default). When the video has fewer frames than asked,
    each frame is returned once, with a warning; a frame is never repeated.

    Args:
        path: A video file PyAV can open (mp4, mov, mkv, webm, avi, animated GIF, ...).
        num_frames: How many frames.
        start: Start of the segment to sample, seconds from the video's start.
        end: End of the segment, seconds from the video's start.

    Returns:
        [`VideoFrames`][bliptk.core.video.VideoFrames]: the frames, their ``timestamps``, ``duration`` and ``decoded_frames``.

    Raises:
        VideoLoadError: The file is missing, empty, corrupt, audio only, has no frames, or is a
            still image; the message names it.
        InvalidOptionError: ``num_frames`` < 1, or the segment is empty or outside the video.
    """
    check_positive_int("num_frames", num_frames)
    path = _check_file(path)
    av = _av()
    with _open(path) as container:
        stream = _video_stream(container, path)
        first, duration = _start_and_duration(container, stream, path)
    segment_start = 0.0 if start is None else float(start)
    segment_end = duration if end is None else min(float(end), duration)
    if not 0 <= segment_start < segment_end:
        raise InvalidOptionError(f"{path}: segment [{start}, {end}) is empty or outside the video's {duration:.2f} s")
    step = (segment_end - segment_start) / num_frames
    targets = [first + segment_start + (i + 0.5) * step for i in range(num_frames)]
    try:
        frames, times, decoded = _frames_at(path, targets)
    except av.error.FFmpegError as error:
        raise VideoLoadError(path, f"corrupt or truncated video ({error})") from None
    if not frames:
        raise VideoLoadError(path, "its video stream has no frames")
    if len(frames) < num_frames:
        warnings.warn(
            f"{path}: {num_frames} frames asked but the {'segment' if start or end else 'video'} has only "
            f"{len(frames)}; returning each frame once",
            stacklevel=2,
        )
    logger.debug("%s: %d frames from %d decoded", path, len(frames), decoded)
    return VideoFrames(frames, [t - first for t in times], source=str(path), duration=duration, decoded_frames=decoded)


class _Demuxer:
    """One opened copy of a video file: its stream, and a decoding iterator once it decodes."""

    def __init__(self, path: Path):
        self.container = _open(path)
        self.stream = _video_stream(self.container, path)
        self.frames: Iterator | None = None

    def keyframe_before(self, target: float) -> tuple[float | None, object] | None:
        """Seek to the keyframe at or before ``target`` (seconds) and read its packet: the
        keyframe's time (None when the packet has no timestamp) and the packet; None when the
        container cannot seek."""
        av = _av()
        stream = self.stream
        try:
            self.container.seek(int(target / stream.time_base), stream=stream, backward=True, any_frame=False)
            packet = next(self.container.demux(stream), None)
        except av.error.FFmpegError:
            return None
        if packet is None:
            return None
        stamp = packet.pts if packet.pts is not None else packet.dts
        return (None if stamp is None else float(stamp * stream.time_base)), packet

    def decode_from(self, packet=None) -> None:
        """Decode from ``packet`` on (None: from the file's start)."""

        def frames():
            packets = self.container.demux(self.stream)
            for each in itertools.chain([] if packet is None else [packet], packets):
                yield from each.decode()

        self.frames = frames()

    def close(self) -> None:
        self.container.close()


class _FrameWalk:
    """One forward walk through a video's frames, toward later and later target times.

    Decoding never goes back, so no frame is decoded twice: at most one pass over the file,
    whatever its keyframes. Before jumping ahead to a target, a second copy of the file seeks there
    and reads one packet, the keyframe decoding would restart from; decoding jumps (on that copy)
    only when that keyframe lies past the last decoded frame, and otherwise decodes on.
    """

    def __init__(self, path: Path):
        self.path = path
        self.current: _Demuxer | None = None  # the copy that decodes
        self.spare = _Demuxer(path)  # the copy that looks ahead
        self.shown: tuple[float, Any] | None = None  # the latest decoded (time, frame) at or before the current target
        self.ahead: tuple[float, Any] | None = None  # a decoded (time, frame) past the current target, not yet shown
        self.position: float | None = None  # time of the latest decoded frame
        self.decoded = 0

    def frame_at(self, target: float):
        """``(time, frame)`` shown at ``target`` (the last frame starting at or before it; the
        first frame for a target before it), or None for a video with no frame."""
        if self.position is None or target > self.position:
            self._jump_toward(target)
        while self.ahead is not None or self._decode_next():
            assert self.ahead is not None
            if self.ahead[0] > target:
                break
            self.shown, self.ahead = self.ahead, None
        return self.shown if self.shown is not None else self.ahead

    def _jump_toward(self, target: float) -> None:
        """Restart decoding from the keyframe before ``target`` where it lies past the last decoded frame."""
        found = self.spare.keyframe_before(target)
        keyframe = found[0] if found is not None else None
        if self.current is None or (keyframe is not None and (self.position is None or keyframe > self.position)):
            if self.current is not None:
                self.current.close()
            self.current, self.spare = self.spare, _Demuxer(self.path)
            self.current.decode_from(found[1] if found is not None else None)
            self.shown = self.ahead = None

    def _decode_next(self) -> bool:
        """Decode the next frame into ``ahead``; False at the end of the video."""
        assert self.current is not None and self.current.frames is not None
        frame = next(self.current.frames, None)
        if frame is None:
            return False
        self.decoded += 1
        stream = self.current.stream
        time = _frame_time(frame, stream)
        if time is None:
            time = (self.position + 1 / float(stream.average_rate or 25)) if self.position is not None else 0.0
        self.ahead, self.position = (time, frame), time
        return True

    def close(self) -> None:
        for demuxer in (self.current, self.spare):
            if demuxer is not None:
                demuxer.close()


def _frames_at(path: Path, targets: list[float]):
    """The frame shown at each target time (the last frame starting at or before it), each decoded
    once ([`_FrameWalk`][bliptk.core.video._FrameWalk]). Returns distinct frames (as RGB images),
    their times, and how many frames were decoded."""
    images, times = [], []
    chosen_pts = None
    walk = _FrameWalk(path)
    try:
        for target in targets:
            pick = walk.frame_at(target)
            if pick is None:
                continue
            if pick[1].pts is None or pick[1].pts != chosen_pts:
                chosen_pts = pick[1].pts
                images.append(_to_image(pick[1]))
                times.append(pick[0])
    finally:
        walk.close()
    return images, times, walk.decoded


def is_video(source) -> bool:
    """Whether ``source`` is a video: [`VideoFrames`][bliptk.core.video.VideoFrames]; a file whose name says so (``.mp4``,
    ``.mov``, ... [`VIDEO_EXTENSIONS`][bliptk.core.files.VIDEO_EXTENSIONS]), whatever it holds, so that a broken one
    fails as a video; or a file Pillow does not read as an image and PyAV reads as a video
    (animated GIFs count as images)."""
    if isinstance(source, VideoFrames):
        return True
    if not isinstance(source, (str, Path)) and not hasattr(source, "__fspath__"):
        return False
    path = Path(source)
    if path.suffix.lower() in VIDEO_EXTENSIONS:
        return True
    try:
        if not path.is_file() or path.stat().st_size == 0:
            return False
        with Image.open(path):
            return False
    except Exception:  # anything Pillow cannot open (or refuses to) may still be a video
        pass
    try:
        av = _av()
    except MissingDependencyError:
        return False
    try:
        with av.open(str(path), metadata_errors="ignore") as container:
            return bool(container.streams.video) and not _is_image_format(container)
    except (av.error.FFmpegError, UnicodeDecodeError, ValueError, OSError):
        return False


def plot_video_frames(frames: VideoFrames, columns: int | None = None, fig=None):
    """The frames in a strip (or a grid of ``columns``), each titled with its time (the page's
    ``VideoFrameList``).

    Args:
        frames: What [`video_frames()`][bliptk.core.video.video_frames] returned (or any list of images).
        columns: Frames per row; None puts up to 8 in a row.
        fig: A matplotlib figure to draw into (cleared first); None makes a new one.

    Returns:
        The figure.
    """
    from .figures import grid_axes

    columns = columns or min(len(frames), 8)
    width, height = frames[0].size
    panel = 2.0
    fig, axes = grid_axes(len(frames), columns, panel, fig, aspect=height / width)
    timestamps = getattr(frames, "timestamps", [None] * len(frames))
    for ax, frame, time in zip(axes, frames, timestamps, strict=True):
        ax.imshow(frame)
        ax.set_axis_off()
        if time is not None:
            ax.set_title(f"{time:.2f} s")
    return fig
