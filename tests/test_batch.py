import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

import bliptk
from bliptk.batch import BatchStatus, expand_inputs, read_records
from bliptk.cli import main


@pytest.fixture(scope="module")
def mixed_folder(photos, tmp_path_factory):
    """Good photos, every kind of rejected input, and odd but valid images."""
    folder = tmp_path_factory.mktemp("mixed")
    for photo in photos:
        shutil.copy(photo, folder / photo.name)
    reasons = {}
    (folder / "zero.jpg").write_bytes(b"")
    reasons["zero.jpg"] = "empty file (0 bytes)"
    (folder / "notes.jpg").write_text("this is a text file, not a photo\n")
    reasons["notes.jpg"] = "not an image file Pillow can read"
    data = photos[0].read_bytes()
    (folder / "truncated.jpg").write_bytes(data[: len(data) // 3])
    reasons["truncated.jpg"] = "corrupt or truncated image"
    png = io.BytesIO()
    Image.open(photos[1]).save(png, "PNG")
    corrupt = bytearray(png.getvalue())
    corrupt[len(corrupt) // 2 : len(corrupt) // 2 + 64] = bytes(64)
    (folder / "corrupt.png").write_bytes(bytes(corrupt))
    reasons["corrupt.png"] = "corrupt or truncated image"
    Image.new("L", (1200, 1000)).save(folder / "huge.png")
    reasons["huge.png"] = "1200x1000 is 1,200,000 pixels, over the limit of 1,000,000"
    (folder / "photo.heic").write_bytes(b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + bytes(200))
    reasons["photo.heic"] = "not an image file Pillow can read"
    (folder / "locked.jpg").write_bytes(data)
    reasons["locked.jpg"] = "permission denied"
    (folder / "album.jpg").mkdir()  # a directory where a file is expected
    reasons["album.jpg"] = "is a directory"

    Image.new("RGB", (1, 1), (200, 10, 10)).save(folder / "one-pixel.png")
    Image.new("RGB", (1, 4000), (10, 200, 10)).save(folder / "thin.png")
    Image.fromarray(np.linspace(0, 65535, 128 * 96).reshape(96, 128).astype(np.uint16)).save(folder / "sixteen-bit.png")
    Image.open(photos[2]).convert("CMYK").save(folder / "cmyk.jpg")
    palette = Image.open(photos[0]).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    palette.info["transparency"] = 0
    palette.save(folder / "palette.png", transparency=0)
    frames = [Image.new("RGB", (40, 30), colour) for colour in ("red", "green", "blue")]
    frames[0].save(folder / "animated.gif", save_all=True, append_images=frames[1:], duration=100, loop=0)
    odd = ["one-pixel.png", "thin.png", "sixteen-bit.png", "cmyk.jpg", "palette.png", "animated.gif"]
    return folder, reasons, odd


@pytest.fixture
def locked(monkeypatch):
    """The OS answers 'permission denied' for locked.jpg (as root, chmod alone cannot)."""
    original = Image.open

    def open_image(path, *args, **kwargs):
        if str(path).endswith("locked.jpg"):
            raise PermissionError(13, "Permission denied", str(path))
        return original(path, *args, **kwargs)

    monkeypatch.setattr("bliptk.preprocess.Image.open", open_image)


def test_every_input_gets_a_defined_outcome(tiny, photos, mixed_folder, locked, tmp_path):
    folder, reasons, odd = mixed_folder
    out = tmp_path / "captions.jsonl"
    inputs = [folder, str(folder / "*.jpg"), str(tmp_path / "missing.jpg")]
    status = BatchStatus()
    records = list(tiny.caption_files(inputs, out, max_new_tokens=6, max_pixels=1_000_000, status=status, workers=2))
    assert records == read_records(out)
    by_name = {}
    for record in records:
        by_name.setdefault(os.path.basename(record["path"]), []).append(record)
    assert by_name["missing.jpg"][0]["error"] == {"type": "ImageLoadError", "message": f"{tmp_path / 'missing.jpg'}: no such file"}
    for name, reason in reasons.items():
        for record in by_name[name]:
            assert record["error"]["type"] == "ImageLoadError" and reason in record["error"]["message"], name
            assert record["error"]["message"].startswith(str(folder / name)) and record["caption"] is None
    for name in odd + [p.name for p in photos]:
        [record] = [r for r in by_name[name] if r["path"].startswith(str(folder / name))][:1]
        alone = tiny.caption(folder / name, max_new_tokens=6)
        assert record["error"] is None and record["token_ids"] == alone.token_ids and record["caption"] == alone.text
        assert record["logprobs"] == pytest.approx(alone.logprobs, abs=1e-4)
        assert record["model"] == "tiny" and record["options"]["max_new_tokens"] == 6
    assert status.failed == sum(1 for r in records if r["error"]) and status.captioned + status.failed == status.total == len(records)


def test_animated_gif_is_captioned_from_its_first_frame(tiny, mixed_folder):
    folder, _, _ = mixed_folder
    first = Image.new("RGB", (40, 30), "red")
    assert tiny.caption(folder / "animated.gif").token_ids == tiny.caption(first).token_ids


def test_cli_exit_code_says_some_failed(tiny, mixed_folder, locked, tmp_path, capsys):
    folder, reasons, _ = mixed_folder
    out = tmp_path / "out.jsonl"
    code = main(["caption", str(folder), "--out", str(out), "--model", "tiny", "--max-new-tokens", "3", "--max-pixels", "1000000"])
    assert code == 1
    err = capsys.readouterr().err
    assert f"bliptk: error: {folder / 'zero.jpg'}: empty file (0 bytes)" in err
    failed = len([r for r in read_records(out) if r["error"]])
    assert f"{len(read_records(out)) - failed} captioned, {failed} failed, 0 already done" in err
    assert main(["caption", str(folder), "--out", str(out), "--model", "tiny"]) == 2
    assert "exists; pass resume=True (--resume)" in capsys.readouterr().err
    good = tmp_path / "good"
    good.mkdir()
    shutil.copy(folder / "cmyk.jpg", good)
    assert main(["caption", str(good), "--model", "tiny", "--max-new-tokens", "3"]) == 0


def test_csv_output_and_resume(tiny, photos, tmp_path):
    out = tmp_path / "captions.csv"
    first = list(tiny.caption_files(photos[:2] + [tmp_path / "gone.png"], out, max_new_tokens=4))
    assert out.read_text().splitlines()[0] == "path,kind,caption,token_ids,tokens,logprobs,finished,model,options,error"
    assert sorted(r["path"] for r in read_records(out)) == sorted(r["path"] for r in first)
    again = list(tiny.caption_files(photos + [tmp_path / "gone.png"], out, max_new_tokens=4, resume=True))
    assert sorted(r["path"] for r in again) == sorted([str(photos[2]), str(tmp_path / "gone.png")])
    records = read_records(out)
    assert len(records) == 4 and sorted(r["path"] for r in records) == sorted(map(str, photos + [tmp_path / "gone.png"]))
    assert [r["token_ids"] for r in records if r["path"] == str(photos[0])] == [tiny.caption(photos[0], max_new_tokens=4).token_ids]


def test_other_options_are_not_skipped(tiny, photos, tmp_path):
    out = tmp_path / "captions.jsonl"
    list(tiny.caption_files(photos, out, max_new_tokens=3))
    again = list(tiny.caption_files(photos, out, max_new_tokens=5, resume=True))
    assert len(again) == 3 and len(read_records(out)) == 6


def test_torn_last_line_is_dropped_on_resume(tiny, photos, tmp_path):
    out = tmp_path / "captions.jsonl"
    list(tiny.caption_files(photos[:2], out, max_new_tokens=3))
    with open(out, "a") as file:
        file.write('{"path": "' + str(photos[2]) + '", "kind": "ima')
    assert len(read_records(out)) == 2
    list(tiny.caption_files(photos, out, max_new_tokens=3, resume=True))
    lines = out.read_text().splitlines()
    assert len(lines) == 3 and all(json.loads(line)["error"] is None for line in lines)


def _run_batch(folder, out, *extra):
    return subprocess.Popen(
        [sys.executable, "-m", "bliptk", "caption", str(folder), "--out", str(out), "--model", "tiny",
         "--batch-size", "2", "--workers", "1", "--max-new-tokens", "25", *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def _wait_for_lines(out, count, process, limit=120):
    started = time.monotonic()
    while time.monotonic() - started < limit:
        if out.exists() and len(out.read_text().splitlines()) >= count:
            return
        assert process.poll() is None, process.communicate()
        time.sleep(0.05)
    raise AssertionError("the batch made no progress")


@pytest.fixture(scope="module")
def many_photos(photos, tmp_path_factory):
    folder = tmp_path_factory.mktemp("many")
    for index in range(300):
        shutil.copy(photos[index % len(photos)], folder / f"photo-{index:03d}.jpg")
    return folder


def test_killed_run_resumes_without_loss_or_recomputation(tiny, many_photos, tmp_path):
    out = tmp_path / "captions.jsonl"
    process = _run_batch(many_photos, out)
    _wait_for_lines(out, 10, process)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    finished = read_records(out)
    assert 10 <= len(finished) < 300
    finished_lines = [json.dumps(r, ensure_ascii=False) for r in finished]

    resumed = _run_batch(many_photos, out, "--resume")
    _, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    assert f"{300 - len(finished)} captioned, 0 failed, {len(finished)} already done (of 300)" in err
    lines = out.read_text().splitlines()
    records = [json.loads(line) for line in lines]  # every line is valid JSON
    assert len(records) == 300 and len({r["path"] for r in records}) == 300
    assert lines[: len(finished)] == finished_lines  # the finished records were kept, not recomputed
    sample = records[-1]
    assert sample["token_ids"] == tiny.caption(sample["path"]).token_ids


def test_ctrl_c_stops_after_the_current_batch(many_photos, tmp_path):
    out = tmp_path / "captions.jsonl"
    process = _run_batch(many_photos, out)
    _wait_for_lines(out, 6, process)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    assert "interrupted" in err
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert 6 <= len(records) < 300 and len(records) % 2 == 0  # whole batches of 2


@pytest.mark.parametrize(
    "options, message",
    [
        ({"max_new_tokens": -2}, "max_new_tokens must be a non-negative integer"),
        ({"max_new_tokens": 1.5}, "max_new_tokens must be a non-negative integer"),
        ({"temperature": -1.0}, "temperature must be a finite number >= 0"),
        ({"top_k": 0}, "top_k must be an integer >= 1"),
        ({"top_p": 0}, r"top_p must be in \(0, 1\]"),
        ({"top_p": 1.01}, r"top_p must be in \(0, 1\]"),
        ({"prompt": "a " * 520}, "the decoder has 512"),
        ({"batch_size": 0}, "batch_size must be an integer >= 1"),
        ({"workers": -1}, "workers must be an integer >= 0"),
        ({"format": "xml"}, "format must be one of jsonl, csv"),
    ],
)
def test_bad_options_fail_before_any_work(tiny, photos, tmp_path, options, message):
    with pytest.raises(bliptk.InvalidOptionError, match=message):
        next(iter(tiny.caption_files(photos, tmp_path / "out.jsonl", **options)))
    assert not (tmp_path / "out.jsonl").exists()


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["--max-new-tokens", "-2"], "max_new_tokens must be a non-negative integer"),
        (["--max-new-tokens", "2.5"], "argument --max-new-tokens: invalid int value: '2.5'"),
        (["--temperature", "-1"], "temperature must be a finite number >= 0"),
        (["--top-k", "0"], "top_k must be an integer >= 1"),
        (["--top-p", "1.5"], "top_p must be in (0, 1]"),
        (["--prompt", "a " * 520], "the decoder has 512"),
        (["--model", "ViT-X/99"], "ViT-B/16, ViT-L/16"),
        (["--model", "vit-huge"], "unknown model 'vit-huge'"),
        (["--device", "cuda:7"], "cuda:7"),
        (["--device", "tpu"], "'tpu' is not a device name"),
        (["--resume"], "--resume continues an --out file"),
        (["--workers", "-1"], "--workers must be >= 0"),
    ],
)
def test_bad_options_from_the_cli(photos, tmp_path, capsys, monkeypatch, arguments, message):
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path))
    model = [] if "--model" in arguments else ["--model", "tiny"]
    try:
        code = main(["caption", str(photos[0]), *model, *arguments])
    except SystemExit as exit:  # argparse's own usage errors
        code = exit.code
    assert code == 2
    assert message in capsys.readouterr().err


def test_expand_inputs(photos, tmp_path):
    (tmp_path / "b.jpg").write_bytes(b"x")
    (tmp_path / "a.png").write_bytes(b"x")
    (tmp_path / "dir.jpg").mkdir()
    assert expand_inputs([tmp_path]) == [str(tmp_path / "a.png"), str(tmp_path / "b.jpg")]
    assert expand_inputs([str(tmp_path / "*.jpg")]) == [str(tmp_path / "b.jpg"), str(tmp_path / "dir.jpg")]
    assert expand_inputs([str(tmp_path / "*.gif"), "x.jpg"]) == [str(tmp_path / "*.gif"), "x.jpg"]
