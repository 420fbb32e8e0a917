"""Explanation jobs over folders (bliptk.attribution.folder, bliptk explain FOLDER --out): one record
and one map per input, killed and resumed, one writer per folder."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import bliptk
from bliptk.attribution.folder import MAPS_FOLDER, RECORDS_FILE, ExplanationOutput


@pytest.fixture(scope="module")
def folder(photos, tmp_path_factory):
    made = tmp_path_factory.mktemp("photos")
    for index in range(12):
        shutil.copy(photos[index % len(photos)], made / f"photo-{index:02d}.jpg")
    (made / "broken.jpg").write_bytes(b"not a picture")
    return made


def _maps(out) -> dict[str, np.ndarray]:
    return {r["path"]: bliptk.load_explanation(out / r["maps"]).maps for r in bliptk.read_records(out / RECORDS_FILE) if r["maps"]}


def test_a_folder_gets_one_record_and_one_map_per_input(tiny, folder, tmp_path):
    out = tmp_path / "explained"
    records = list(bliptk.explain_files(tiny, folder, out, batch_size=4, max_new_tokens=4))
    assert len(records) == 13 and len(list((out / MAPS_FOLDER).iterdir())) == 12
    [failed] = [r for r in records if r["error"]]
    assert failed["path"].endswith("broken.jpg") and failed["error"]["type"] == "ImageLoadError" and failed["maps"] is None
    record = next(r for r in records if r["path"].endswith("photo-01.jpg"))
    assert record["options"]["method"] == "gradcam" and record["options"]["layer"] == 1 and record["weights"]["source"] == "random"
    loaded = bliptk.load_explanation(out / record["maps"])
    alone = bliptk.explain(tiny, record["path"], max_new_tokens=4)
    assert loaded.tokens == alone.tokens == record["tokens"] and loaded.text == record["caption"] and loaded.image == record["path"]
    np.testing.assert_allclose(loaded.maps, alone.maps, atol=1e-5 * np.abs(alone.maps).max())  # explained in a batch of 4
    assert [e.image for e in bliptk.load_explanations(out)] == [r["path"] for r in records if not r["error"]]


def test_a_second_run_is_refused_and_a_resumed_one_skips_what_is_done(tiny, folder, tmp_path):
    out = tmp_path / "explained"
    list(bliptk.explain_files(tiny, folder, out, batch_size=4, max_new_tokens=4))
    with pytest.raises(bliptk.OutputExistsError, match="pass resume=True"):
        list(bliptk.explain_files(tiny, folder, out, max_new_tokens=4))
    status = bliptk.BatchStatus()
    again = list(bliptk.explain_files(tiny, folder, out, max_new_tokens=4, resume=True, status=status))
    assert [r["path"] for r in again] == [str(folder / "broken.jpg")] and status.skipped == 12  # the failure is retried
    other = list(bliptk.explain_files(tiny, folder, out, max_new_tokens=4, resume=True, method="occlusion", occlusion_window=3))
    assert len(other) == 13 and len(list((out / MAPS_FOLDER).iterdir())) == 24  # made otherwise: explained again, beside
    (out / next(r["maps"] for r in other if r["maps"])).unlink()  # a map that went missing is made again
    assert len(list(bliptk.explain_files(tiny, folder, out, max_new_tokens=4, resume=True, method="occlusion", occlusion_window=3))) == 2


def test_the_inputs_folder_is_not_the_jobs(tiny, folder):
    with pytest.raises(bliptk.OutputError, match="is the folder of the inputs; write the explanations into a folder of their own"):
        list(bliptk.explain_files(tiny, folder, folder))
    assert not (folder / RECORDS_FILE).exists()


def test_two_jobs_on_one_folder_are_refused(tiny, folder, tmp_path):
    out = tmp_path / "explained"
    with ExplanationOutput(out), pytest.raises(bliptk.OutputLockedError, match=r"explanations.jsonl"):
        list(bliptk.explain_files(tiny, folder, out, max_new_tokens=4))


def test_a_record_naming_a_file_outside_its_folder_is_not_read(tiny, photos, tmp_path):
    out = tmp_path / "explained"
    [record] = list(bliptk.explain_files(tiny, [photos[0]], out, max_new_tokens=2))
    lines = (out / RECORDS_FILE).read_text().replace(record["maps"], "../elsewhere.npz")
    (out / RECORDS_FILE).write_text(lines)
    with pytest.raises(bliptk.InputError, match="a record names '../elsewhere.npz', outside the folder"):
        bliptk.load_explanations(out)
    with pytest.raises(bliptk.InputError, match="not the folder of an explanation job"):
        bliptk.load_explanations(tmp_path)


def _run(folder, out, *extra):
    command = [sys.executable, "-m", "bliptk", "explain", str(folder), "--out", str(out), "--model", "tiny", "--batch-size", "1"]
    return subprocess.Popen([*command, "--workers", "0", "--max-new-tokens", "20", *extra], stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
def test_a_killed_job_resumes_to_exactly_one_record_and_map_per_input(tiny, folder, tmp_path):
    many = tmp_path / "many"
    many.mkdir()
    for index in range(60):
        shutil.copy(folder / f"photo-{index % 12:02d}.jpg", many / f"photo-{index:02d}.jpg")
    out, whole = tmp_path / "killed", tmp_path / "whole"
    process = _run(many, out)
    started = time.monotonic()
    while not ((out / RECORDS_FILE).exists() and len((out / RECORDS_FILE).read_text().splitlines()) >= 5):
        assert process.poll() is None and time.monotonic() - started < 120, process.communicate()
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    finished = len(bliptk.read_records(out / RECORDS_FILE))
    assert 5 <= finished < 60
    resumed = _run(many, out, "--resume")
    assert resumed.wait(timeout=300) == 0, resumed.communicate()
    assert _run(many, whole).wait(timeout=300) == 0
    records = [json.loads(line) for line in (out / RECORDS_FILE).read_text().splitlines()]
    assert len(records) == 60 == len({r["path"] for r in records}) and len(list((out / MAPS_FOLDER).iterdir())) == 60
    ours, theirs = _maps(out), _maps(whole)
    assert ours.keys() == theirs.keys()
    for path, maps in ours.items():
        np.testing.assert_array_equal(maps, theirs[path])


def test_the_command_line_explains_a_folder_and_summarises_a_word(tiny, folder, tmp_path, capsys):
    from bliptk.cli.main import main

    out = tmp_path / "explained"
    args = [
        str(folder),
        "--out",
        str(out),
        "--model",
        "tiny",
        "--max-new-tokens",
        "3",
        "--map-dtype",
        "float16",
        "--map-format",
        "safetensors",
    ]
    assert main(["explain", *args, "--contrast", "a=cat"]) == 1  # broken.jpg failed
    err = capsys.readouterr().err
    assert "12 explained, 1 failed, 0 already done (of 13)" in err and "broken.jpg" in err
    records = bliptk.read_records(out / RECORDS_FILE)
    assert all(r["maps"].endswith(".safetensors") for r in records if r["maps"])
    assert records[0]["options"]["map_dtype"] == "float16" and records[0]["options"]["contrast"] == [["a", "cat"]]
    word = next(r for r in records if r["tokens"])["tokens"][0]
    assert main(["explain", *args, "--contrast", "a=cat", "--resume", "--summary", word]) == 1
    printed = capsys.readouterr().out
    assert f"{word!r}: " in printed and (out / f"summary-{''.join(c if c.isalnum() else '_' for c in word)}.png").is_file()
    assert main(["explain", str(folder / "photo-00.jpg"), "--out", str(tmp_path / "one.png"), "--model", "tiny", "--resume"]) == 2
    assert "--resume apply to a folder's job" in capsys.readouterr().err
    assert (
        main(["explain", str(folder / "photo-00.jpg"), "--out", str(tmp_path / "one.png"), "--model", "tiny", "--map-dtype", "float16"])
        == 2
    )
    assert "--map-dtype apply to a folder's job" in capsys.readouterr().err
    assert main(["explain", *args, "--overwrite"]) == 2
    assert "--overwrite replaces one image's PNG; a folder's job is continued with --resume" in capsys.readouterr().err
    assert main(["explain", *args[:2], str(tmp_path / "x"), "--model", "tiny", "--contrast", "dog"]) == 2
    assert "--contrast dog: write WORD=FOIL" in capsys.readouterr().err


def test_the_options_are_checked_before_any_work(tiny, folder, tmp_path):
    out = tmp_path / "explained"
    with pytest.raises(
        bliptk.InvalidOptionError, match="occlusion_window 7 is larger than the image's grid of 6 x 6 patches: give at most 6"
    ):
        list(bliptk.explain_files(tiny, folder, out, method="occlusion", occlusion_window=7))
    with pytest.raises(bliptk.InvalidOptionError, match=r"prompt \(\d+ tokens\) plus max_new_tokens"):
        list(bliptk.explain_files(tiny, folder, out, prompt="a " * 600))
    assert not out.exists()


def test_one_jobs_explanations_are_summarised_not_a_mix(tiny, folder, tmp_path, capsys):
    out = tmp_path / "explained"
    photos = sorted(folder.glob("photo-0[0-2].jpg"))
    list(bliptk.explain_files(tiny, photos, out, max_new_tokens=3))
    list(bliptk.explain_files(tiny, photos, out, max_new_tokens=3, resume=True, contrast={0: "cat", 9: "dog"}))
    assert [e.contrast for e in bliptk.load_explanations(out)] == [{}] * 3 + [{0: "cat"}] * 3  # 9 is past the end: left out
    word = bliptk.load_explanations(out)[0].tokens[0]
    with pytest.raises(bliptk.InvalidOptionError, match=r"made in 2 ways \(their contrast differ\): summarise one job's at a time"):
        bliptk.word_maps(out, word)
    made = bliptk.attribution.folder.job_record_options(tiny, max_new_tokens=3)
    assert len(bliptk.word_maps(bliptk.load_explanations(out, made), word).occurrences) >= 1
    from bliptk.cli.main import main

    common = [*map(str, photos), "--out", str(out), "--model", "tiny", "--max-new-tokens", "3", "--resume"]
    assert main(["explain", *common, "--summary", word]) == 0  # this job's three, not six
    assert "in 3 explained captions" in capsys.readouterr().out


def test_records_that_name_no_map_file_of_the_folder_are_refused(tiny, photos, tmp_path):
    out = tmp_path / "explained"
    [record] = list(bliptk.explain_files(tiny, [photos[0]], out, max_new_tokens=2))
    lines = (out / RECORDS_FILE).read_text()
    for odd in ('"maps": 3', '"maps": "/etc/hosts"'):
        (out / RECORDS_FILE).write_text(lines.replace(f'"maps": "{record["maps"]}"', odd))
        with pytest.raises(bliptk.InputError, match="outside the folder or missing"):
            bliptk.load_explanations(out)
        assert len(list(bliptk.explain_files(tiny, [photos[0]], out, max_new_tokens=2, resume=True))) == 1  # not done: made again
