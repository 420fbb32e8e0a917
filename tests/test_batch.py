import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import fake_hub_cache, make_video
from PIL import Image

import bliptk
from bliptk.captioning.folder import BatchStatus, expand_inputs
from bliptk.cli.main import main
from bliptk.store.records import read_records


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

    monkeypatch.setattr("bliptk.core.preprocess.Image.open", open_image)


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
    assert f"{out} exists; pass --resume to continue it" in capsys.readouterr().err
    good = tmp_path / "good"
    good.mkdir()
    shutil.copy(folder / "cmyk.jpg", good)
    assert main(["caption", str(good), "--model", "tiny", "--max-new-tokens", "3"]) == 0


def test_csv_output_and_resume(tiny, photos, tmp_path):
    out = tmp_path / "captions.csv"
    first = list(tiny.caption_files(photos[:2] + [tmp_path / "gone.png"], out, max_new_tokens=4))
    assert (
        out.read_text().splitlines()[0]
        == "path,kind,caption,token_ids,tokens,logprobs,finished,model,weights,options,error,runtime,entropy,maps"
    )
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
        [
            sys.executable,
            "-m",
            "bliptk",
            "caption",
            str(folder),
            "--out",
            str(out),
            "--model",
            "tiny",
            "--batch-size",
            "2",
            "--workers",
            "1",
            "--max-new-tokens",
            "25",
            *extra,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
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


@pytest.mark.slow
def test_killed_run_resumes_without_loss_or_recomputation(tiny, many_photos, tmp_path):
    out = tmp_path / "captions.jsonl"
    process = _run_batch(many_photos, out)
    _wait_for_lines(out, 10, process)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    finished = read_records(out)
    assert 10 <= len(finished) < 300
    finished_lines = out.read_text().splitlines()[: len(finished)]  # (a line torn by the kill is not finished)

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


@pytest.mark.slow
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
        ({"workers": -1}, "workers must be an integer >= 0"),
        ({"format": "xml"}, "format must be one of jsonl, csv"),
        ({"max_pixels": 0}, "max_pixels must be an integer >= 1"),
        ({"num_return_sequences": 2, "temperature": 1.0}, "one caption per input"),
    ],
)
def test_bad_batch_options_fail_before_any_work(tiny, photos, tmp_path, options, message):
    with pytest.raises(bliptk.InvalidOptionError, match=message):
        next(iter(tiny.caption_files(photos, tmp_path / "out.jsonl", **options)))
    assert not (tmp_path / "out.jsonl").exists()


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["--max-new-tokens", "-2"], "--max-new-tokens must be a non-negative integer"),
        (["--max-new-tokens", "2.5"], "argument --max-new-tokens: invalid int value: '2.5'"),
        (["--temperature", "-1"], "--temperature must be a finite number >= 0"),
        (["--top-k", "0"], "--top-k must be an integer >= 1"),
        (["--top-p", "1.5"], "--top-p must be in (0, 1]"),
        (["--prompt", "a " * 520], "the decoder has 512"),
        (["--model", "ViT-X/99"], "ViT-B/16, ViT-L/16"),
        (["--model", "vit-huge"], "unknown model 'vit-huge'"),
        (["--device", "cuda:7"], "cuda:7"),
        (["--device", "tpu"], "'tpu' is not a device name"),
        (["--resume"], "--resume continues an --out file"),
        (["--workers", "-1"], "--workers must be an integer >= 0"),
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
    assert expand_inputs([str(tmp_path / "*.gif"), "x.jpg"]) == [str(Path.cwd() / "x.jpg")]  # the empty pattern is logged


def test_inputs_are_identified_by_their_resolved_path(photos, tmp_path, monkeypatch):
    (tmp_path / "photos").mkdir()
    for photo in photos:
        shutil.copy(photo, tmp_path / "photos")
    (tmp_path / "link").symlink_to(tmp_path / "photos")
    monkeypatch.chdir(tmp_path)
    absolute = expand_inputs([tmp_path / "photos"])
    assert absolute == [str(tmp_path / "photos" / photo.name) for photo in photos]
    assert expand_inputs(["photos", "./photos/", "link", str(tmp_path / "photos" / photos[0].name)]) == absolute


def test_records_say_which_weights_made_them_and_resume_reuses_only_those(tiny, photos, tmp_path):
    out = tmp_path / "captions.jsonl"
    [record] = tiny.caption_files(photos[:1], out, max_new_tokens=3)
    assert record["weights"] == {"source": "random", "seed": 0, "fingerprint": tiny.weights.fingerprint, "dtype": "float32"}
    assert list(tiny.caption_files(photos[:1], out, max_new_tokens=3, resume=True)) == []  # same weights: reused
    other = bliptk.load("tiny", weights_seed=1)
    [again] = other.caption_files(photos[:1], out, max_new_tokens=3, resume=True)  # other weights: captioned
    assert again["weights"]["seed"] == 1 and again["weights"]["fingerprint"] == other.weights.fingerprint != tiny.weights.fingerprint
    assert again["token_ids"] == other.caption(photos[0], max_new_tokens=3).token_ids
    assert [r["weights"]["seed"] for r in read_records(out)] == [0, 1]
    bf16 = bliptk.load("tiny", dtype="bfloat16")
    assert bf16.weights.fingerprint == tiny.weights.fingerprint and bf16.weights.dtype == "bfloat16"
    assert len(list(bf16.caption_files(photos[:1], out, max_new_tokens=3, resume=True))) == 1  # another dtype: captioned


def test_records_of_an_older_bliptk_without_weights_are_kept_and_redone(tiny, photos, tmp_path):
    out = tmp_path / "captions.jsonl"
    [record] = tiny.caption_files(photos[:1], out, max_new_tokens=3)
    old = {name: value for name, value in record.items() if name != "weights"}
    out.write_text(json.dumps(old) + "\n")
    [redone] = tiny.caption_files(photos[:1], out, max_new_tokens=3, resume=True)
    assert redone["weights"] == tiny.weights.as_dict() and read_records(out) == [{**old, "weights": None}, redone]


@pytest.mark.slow
def test_random_weight_records_are_not_reused_by_a_pretrained_run(tiny, tiny_checkpoint, photos, tmp_path, monkeypatch, capsys):
    """The reproduction of issue 14: ViT-B/16 with --random-weights, then ViT-B/16 from the
    Hugging Face cache with --resume, into the same file."""
    folder, out = tmp_path / "photos", tmp_path / "caps.jsonl"
    folder.mkdir()
    for photo in photos:
        shutil.copy(photo, folder)
    command = ["caption", str(folder), "--model", "ViT-B/16", "--out", str(out), "--max-new-tokens", "3"]
    assert main(command + ["--random-weights"]) == 0
    err = capsys.readouterr().err
    assert err.count("bliptk: warning: ViT-B/16 has random weights (seed 0): its captions are random words") == 1
    assert [r["weights"]["source"] for r in read_records(out)] == ["random"] * 3

    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(fake_hub_cache(tmp_path / "hub", tiny_checkpoint)))
    assert main(command + ["--resume"]) == 0
    err = capsys.readouterr().err
    assert "3 captioned, 0 failed, 0 already done (of 3)" in err and "warning" not in err
    pretrained = [r for r in read_records(out) if r["weights"]["source"] == "pretrained"]
    assert len(read_records(out)) == 6 and len(pretrained) == 3
    assert pretrained[0]["weights"]["fingerprint"] == tiny.weights.fingerprint  # the cache holds the tiny net's weights
    assert pretrained[0]["token_ids"] == tiny.caption(pretrained[0]["path"], max_new_tokens=3).token_ids
    assert main(command + ["--resume"]) == 0
    assert "0 captioned, 0 failed, 3 already done (of 3)" in capsys.readouterr().err


def test_a_video_that_fails_unexpectedly_becomes_an_error_record(tiny, photos, tmp_path, monkeypatch):
    video = make_video(tmp_path / "clip.mp4")

    def broken_decoder(*args, **kwargs):
        raise RuntimeError("the decoder fell over")

    monkeypatch.setattr("bliptk.core.pipeline.video_frames", broken_decoder)
    records = {Path(r["path"]).name: r for r in tiny.caption_files([video, photos[0]], max_new_tokens=3)}
    assert records["clip.mp4"]["kind"] == "video" and records["clip.mp4"]["caption"] is None
    assert records["clip.mp4"]["error"] == {"type": "VideoLoadError", "message": f"{video}: RuntimeError: the decoder fell over"}
    assert records[photos[0].name]["error"] is None


def test_a_file_named_like_a_pattern_is_a_file(photos, tmp_path):
    bracketed = tmp_path / "photo[1].jpg"
    shutil.copy(photos[0], bracketed)
    assert expand_inputs([bracketed]) == [str(bracketed)]


def test_resume_finds_inputs_given_another_way(tiny, photos, tmp_path, monkeypatch):
    """Issue 22: the same folder given as an absolute path captioned all again."""
    folder = tmp_path / "photos"
    folder.mkdir()
    for photo in photos:
        shutil.copy(photo, folder)
    monkeypatch.chdir(tmp_path)
    first = list(tiny.caption_files("photos", "c.jsonl", max_new_tokens=2))
    assert [r["path"] for r in first] == [str(folder / p.name) for p in photos]
    status = BatchStatus()
    assert (
        list(tiny.caption_files([str(folder), "./photos/" + photos[0].name], "c.jsonl", max_new_tokens=2, resume=True, status=status)) == []
    )
    assert status.skipped == len(photos) and read_records(tmp_path / "c.jsonl") == first


def test_scores_add_each_tokens_entropy_and_are_part_of_the_work(sep_likely, photos, tmp_path):
    captioner = sep_likely(5.0)
    out = tmp_path / "captions.jsonl"
    records = list(captioner.caption_files(photos, out, scores=True, max_new_tokens=10, batch_size=2))
    for record in records:
        scored = captioner.score(record["path"], record["caption"])[0]
        assert scored.token_ids[:-1] == record["token_ids"] and record["options"]["scores"] is True
        assert record["entropy"] == pytest.approx(scored.entropy[: len(record["token_ids"])].tolist(), abs=1e-4)  # batch of 2 vs alone
    assert read_records(out) == records
    # the same job without scores is other work: its records are made again, and have no entropy
    again = list(captioner.caption_files(photos, out, resume=True, max_new_tokens=10))
    assert len(again) == 3 and all(r["entropy"] is None and "scores" not in r["options"] for r in again)
    assert '"entropy"' not in out.read_text().splitlines()[-1]  # left out of a line without scores
    assert list(captioner.caption_files(photos, out, resume=True, scores=True, max_new_tokens=10)) == []
