import json
import warnings

import av
import numpy as np
import pytest
import torch
from conftest import VIDEOS
from helpers import make_video
from PIL import Image

import bliptk
from bliptk.cli.main import main

REAL_VIDEOS = {"bigbuckbunny.mp4": 5.28, "car-detection.mp4": 30.16, "bottle-detection.mp4": 39.85}


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return make_video(tmp_path_factory.mktemp("video") / "clip.mp4", frames=40, fps=10)


@pytest.mark.parametrize("name", REAL_VIDEOS)
def test_timestamps_are_uniform_across_the_duration(name):
    path = VIDEOS / name
    info = bliptk.video_info(path)
    assert info.duration == pytest.approx(REAL_VIDEOS[name], abs=0.01)
    frames = bliptk.video_frames(path, 16)
    assert len(frames) == len(frames.timestamps) == 16
    one_frame = 1 / info.average_fps
    for index, time in enumerate(frames.timestamps):
        target = (index + 0.5) * info.duration / 16
        assert target - one_frame <= time <= target  # the frame on screen at the target time
    assert all(frame.mode == "RGB" and frame.size == (info.width, info.height) for frame in frames)


def test_variable_frame_rate_uses_presentation_times(tmp_path):
    """Frames 0.05 s apart, then 0.3 s apart: each sample is the frame on screen at its time."""
    from fractions import Fraction

    times = [0.05 * i for i in range(10)] + [0.5 + 0.3 * i for i in range(10)]
    path = tmp_path / "vfr.mkv"
    with av.open(str(path), "w", format="matroska") as container:
        stream = container.add_stream("mpeg4", rate=20)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        stream.codec_context.time_base = Fraction(1, 1000)
        for index, time in enumerate(times):
            frame = av.VideoFrame.from_ndarray(np.full((32, 32, 3), 10 * index, np.uint8), format="rgb24")
            frame.pts, frame.time_base = round(time * 1000), Fraction(1, 1000)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    frames = bliptk.video_frames(path, 8)
    duration = frames.duration
    for index, time in enumerate(frames.timestamps):
        target = (index + 0.5) * duration / 8
        assert time == pytest.approx(max(t for t in times if t <= target + 1e-9), abs=1e-3)


def test_a_long_video_is_not_decoded_whole(tmp_path):
    long_video = make_video(tmp_path / "long.mp4", frames=600, fps=10, keyframe_interval=10)
    frames = bliptk.video_frames(long_video, 4)
    assert frames.timestamps == pytest.approx([7.5, 22.5, 37.5, 52.5])
    assert frames.decoded_frames < 600 / 4  # seeking skipped most of the video
    # The frame content is the one at that time: grey level 10 * index (mod 256), right of the band.
    levels = [int(np.asarray(frame)[24, 40, 0]) for frame in frames]
    assert levels == pytest.approx([(10 * round(t * 10)) % 256 for t in frames.timestamps], abs=6)


@pytest.mark.parametrize("count", [4, 16])
def test_no_video_is_decoded_more_than_once_over(tmp_path, count):
    """Issue 22's video: one keyframe at the start, so that every seek would land back on it
    (before, 4 frames decoded 30,008 frames of 15,000)."""
    single_keyframe = make_video(tmp_path / "one-keyframe.mp4", frames=1500, fps=25, keyframe_interval=100_000, codec="libx264")
    frames = bliptk.video_frames(single_keyframe, count)
    assert len(frames) == count and frames.decoded_frames <= 1500
    assert frames.timestamps == pytest.approx([(i + 0.5) * 60 / count for i in range(count)], abs=0.04)
    levels = [int(np.asarray(frame)[24, 40, 0]) for frame in frames]
    assert levels == pytest.approx([(10 * round(t * 25)) % 256 for t in frames.timestamps], abs=6)


def test_only_the_returned_frames_are_converted(monkeypatch):
    converted = []
    original = av.VideoFrame.to_image
    monkeypatch.setattr(av.VideoFrame, "to_image", lambda frame, *a, **k: converted.append(frame.pts) or original(frame, *a, **k))
    frames = bliptk.video_frames(VIDEOS / "bottle-detection.mp4", 16)
    assert len(converted) == 16 and frames.decoded_frames <= 1189


def test_fewer_frames_than_asked_returns_each_once_with_a_warning(tmp_path):
    short = make_video(tmp_path / "short.mp4", frames=5, fps=10)
    with pytest.warns(UserWarning, match="16 frames asked but the video has only 5"):
        frames = bliptk.video_frames(short, 16)
    assert frames.timestamps == pytest.approx([0.0, 0.1, 0.2, 0.3, 0.4])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(bliptk.video_frames(short, 5)) == 5


def test_rotation_metadata_is_honoured(tmp_path):
    rotated = make_video(tmp_path / "rotated.mp4", frames=3, rotation=90, size=(64, 32))
    frame = np.asarray(bliptk.video_frames(rotated, 1)[0])
    assert frame.shape == (64, 32, 3)  # displayed portrait
    assert frame[-4:, :, 0].min() > 200 and frame[:4, :, 0].max() < 100  # the left band, turned to the bottom


def test_segments(clip):
    frames = bliptk.video_frames(clip, 2, start=1.0, end=2.0)
    assert frames.timestamps == pytest.approx([1.2, 1.7])
    with pytest.raises(bliptk.InvalidOptionError, match="segment"):
        bliptk.video_frames(clip, 2, start=5.0, end=9.0)
    with pytest.raises(bliptk.InvalidOptionError, match="num_frames must be an integer >= 1"):
        bliptk.video_frames(clip, 0)


def test_encode_video_is_the_mean_of_the_frames_features(tiny):
    path = VIDEOS / "bigbuckbunny.mp4"
    frames = bliptk.video_frames(path, 5)
    expected = tiny.encode_image(list(frames)).mean(dim=0)
    features = tiny.encode_video(path, num_frames=5)
    assert features.shape == (37, 48)
    torch.testing.assert_close(features, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(tiny.encode_video(path, num_frames=5, batch_size=2), expected, atol=1e-5, rtol=1e-5)
    caption = tiny.caption(path, num_frames=5, max_new_tokens=8)
    decoded = tiny.caption_features(expected[None], bliptk.DecodingOptions(prompt="a video of", max_new_tokens=8))[0]
    assert caption.token_ids == decoded.token_ids and caption.text.startswith("a video of")
    assert tiny.caption(frames, max_new_tokens=8).token_ids == decoded.token_ids


def test_concat_pooling(tiny):
    frames = bliptk.video_frames(VIDEOS / "bigbuckbunny.mp4", 3)
    features = tiny.encode_video(frames, pooling="concat")
    assert features.shape == (3 * 37, 48)
    torch.testing.assert_close(features, tiny.encode_image(list(frames)).flatten(0, 1))
    caption = tiny.caption(frames, pooling="concat", max_new_tokens=6)
    expected = tiny.caption_features(features[None], bliptk.DecodingOptions(prompt="a video of", max_new_tokens=6))[0]
    assert caption.token_ids == expected.token_ids
    with pytest.raises(bliptk.InvalidOptionError, match="pooling must be one of mean, concat"):
        tiny.encode_video(frames, pooling="max")


def test_videos_are_detected_by_content_or_by_name(tiny, photos, tmp_path, clip):
    disguised = tmp_path / "movie.jpg"
    disguised.write_bytes(clip.read_bytes())
    picture = tmp_path / "picture.png"
    picture.write_bytes(photos[0].read_bytes())
    assert bliptk.is_video(disguised) and not bliptk.is_video(picture) and not bliptk.is_video(photos[0])
    captions = tiny.caption([disguised, picture], max_new_tokens=4, num_frames=4)
    assert captions[0].prompt == "a video of" and captions[1].prompt == "a photography of"
    assert captions[1].token_ids == tiny.caption(photos[0], max_new_tokens=4).token_ids
    assert tiny.caption(disguised, prompt="the", num_frames=4).prompt == "the"
    # A file named as a video is one, whatever it holds: a photo so named fails as a video.
    misnamed = tmp_path / "picture.mp4"
    misnamed.write_bytes(photos[0].read_bytes())
    assert bliptk.is_video(misnamed) and bliptk.is_video(tmp_path / "missing.mov")
    with pytest.raises(bliptk.VideoLoadError, match="is a still image, not a video; caption it as an image"):
        tiny.caption(misnamed)


def test_timeline(tiny, clip):
    rows = bliptk.caption_timeline(tiny, clip, segments=4, num_frames=2, max_new_tokens=5)
    assert [bound for row in rows for bound in (row.start, row.end)] == pytest.approx([0, 1, 1, 2, 2, 3, 3, 4])
    for row in rows:
        frames = bliptk.video_frames(clip, 2, start=row.start, end=row.end)
        assert row.caption.token_ids == tiny.caption(frames, max_new_tokens=5).token_ids
        assert row.caption.prompt == "a video of"
    assert str(rows[0]).startswith("   0.00 -    1.00 s  a video of")


def _audio_only(path):
    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream("aac", rate=16000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
        frame.sample_rate = 16000
        for _ in range(5):
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def _zero_frames(path):
    """A NUT file with a declared video stream that holds no frames (and an audio stream)."""
    with av.open(str(path), "w", format="nut") as container:
        video = container.add_stream("mpeg4", rate=10)
        video.width, video.height, video.pix_fmt = 64, 48, "yuv420p"
        audio = container.add_stream("mp2", rate=16000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1152), np.int16), format="s16", layout="mono")
        frame.sample_rate = 16000
        for packet in audio.encode(frame):
            container.mux(packet)
        for packet in audio.encode():
            container.mux(packet)
    return path


def test_bad_videos_raise_a_clear_error_naming_the_file(tmp_path, photos):
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    truncated = tmp_path / "truncated.mp4"
    truncated.write_bytes((VIDEOS / "bigbuckbunny.mp4").read_bytes()[:200_000])
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(np.random.default_rng(0).integers(0, 256, 50_000, dtype=np.uint8).tobytes())
    cases = {
        empty: "empty file",
        truncated: "corrupt or truncated",
        corrupt: "corrupt or truncated",
        _audio_only(tmp_path / "audio.m4a"): r"has no video stream \(audio only\)",
        _zero_frames(tmp_path / "zero.nut"): "its video stream has no frames",
        photos[0]: "is a still image, not a video",
        tmp_path / "missing.mp4": "no such file",
        tmp_path: "is a directory",
    }
    for path, reason in cases.items():
        with pytest.raises(bliptk.VideoLoadError, match=reason) as error:
            bliptk.video_frames(path, 4)
        assert str(error.value).startswith(f"{path}: ") and error.value.source == path


def test_frame_strip_renders(tmp_path):
    frames = bliptk.video_frames(VIDEOS / "bigbuckbunny.mp4", 5)
    figure = bliptk.plot_video_frames(frames)
    assert [ax.get_title() for ax in figure.axes] == [f"{t:.2f} s" for t in frames.timestamps]
    figure.savefig(tmp_path / "strip.png", dpi=40)
    assert Image.open(tmp_path / "strip.png").size == tuple((figure.get_size_inches() * 40).round().astype(int))
    assert frames._repr_png_().startswith(b"\x89PNG")
    assert len(bliptk.plot_video_frames(frames, columns=2).axes) == 6


def test_cli_video_options(tiny, clip, capsys):
    assert main(["caption", str(clip), "--model", "tiny", "--frames", "4", "--max-new-tokens", "5", "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["token_ids"] == tiny.caption(clip, num_frames=4, max_new_tokens=5).token_ids
    assert (
        main(
            [
                "caption",
                str(clip),
                "--model",
                "tiny",
                "--frames",
                "2",
                "--segments",
                "2",
                "--pooling",
                "concat",
                "--max-new-tokens",
                "4",
                "--json",
            ]
        )
        == 0
    )
    record = json.loads(capsys.readouterr().out)
    expected = bliptk.caption_timeline(tiny, clip, 2, num_frames=2, pooling="concat", max_new_tokens=4)
    assert [segment["caption"] for segment in record["segments"]] == [row.caption.text for row in expected]
    assert main(["caption", str(clip), "--model", "tiny", "--segments", "2", "--frames", "2", "--max-new-tokens", "3"]) == 0
    assert capsys.readouterr().out.startswith(f"{clip}:\n     0.00 -    2.00 s  a video of")
    assert main(["caption", str(clip), "--model", "tiny", "--frames", "0"]) == 2
    assert "--num-frames must be an integer >= 1, got 0" in capsys.readouterr().err
