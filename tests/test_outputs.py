"""Where bliptk writes: every output checked before the model loads, written whole or not at all,
and its faults (a read-only folder, a full disk, a link, standard output on a full device) said in
one line, exit 2."""

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import mounted

import bliptk
from bliptk.cli.main import main
from bliptk.store.outputs import checked_output, claim, write_whole
from bliptk.store.records import read_records


@pytest.fixture
def no_model(monkeypatch):
    """Fail the test if a model loads: every output mistake must be found before."""

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the output was checked")

    monkeypatch.setattr("bliptk.model.loading.load", refuse)


def test_a_read_only_folder_is_refused_before_the_model_loads(photos, capsys, no_model):
    with mounted("ro") as read_only:
        if read_only is None:
            pytest.skip("a read-only mount needs root")
        for arguments, out in [
            (["attention", str(photos[0])], read_only / "grid.png"),
            (["embed", str(photos[0].parent)], read_only / "e.npz"),
            (["map", str(photos[0].parent), "--method", "pca"], read_only / "m.png"),
            (["export"], read_only / "export"),
            (["caption", str(photos[0])], read_only / "c.jsonl"),
        ]:
            assert main([*arguments, "--model", "tiny", "--out", str(out)]) == 2, arguments
            assert capsys.readouterr().err == f"bliptk: error: {out}: cannot write there (Read-only file system); choose another output\n"


def test_a_full_disk_stops_an_export_in_one_line(capsys):
    with mounted("", size="64k") as disk:
        if disk is None:
            pytest.skip("a small tmpfs needs root")
        assert main(["export", "--model", "tiny", "--out", str(disk / "export")]) == 2
        assert capsys.readouterr().err.splitlines()[-1].endswith("export: cannot write the export (the disk is full)")


def test_a_figure_is_written_whole_or_not_at_all(tmp_path):
    figure = tmp_path / "grid.png"
    figure.write_bytes(b"old")

    def fails(path):
        path.write_bytes(b"half a pict")
        raise OSError(28, "No space left on device")

    with pytest.raises(bliptk.OutputError, match=r"grid.png: cannot write \(the disk is full\)"):
        write_whole(figure, fails)
    assert figure.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == ["grid.png"]


def test_an_output_that_is_a_link_writes_where_it_points(tiny, photos, tmp_path):
    real, link = tmp_path / "real.jsonl", tmp_path / "link.jsonl"
    list(tiny.caption_files(photos[:1], real, max_new_tokens=2))
    link.symlink_to(real)
    assert checked_output(link, replace=True) == real
    list(tiny.caption_files(photos[1:], link, max_new_tokens=2, resume=True))
    assert link.is_symlink() and len(read_records(real)) == len(photos)


@pytest.mark.slow
def test_standard_output_on_a_full_device_is_an_error_in_one_line():
    result = subprocess.run(f"{sys.executable} -m bliptk models > /dev/full", shell=True, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and result.stderr == "bliptk: error: cannot write to standard output (the disk is full)\n"


def test_a_broken_link_and_a_name_too_long_get_their_own_records(tiny, photos, tmp_path, capsys):
    shutil.copy(photos[0], tmp_path / "photo.jpg")
    (tmp_path / "gone.jpg").symlink_to(tmp_path / "nowhere.jpg")
    long_name = str(tmp_path / ("x" * 300 + ".jpg"))
    records = {Path(r["path"]).name: r for r in tiny.caption_files([tmp_path, long_name], max_new_tokens=2)}
    assert records["gone.jpg"]["error"]["message"] == f"{tmp_path / 'gone.jpg'}: no such file (or a broken link)"
    assert records["x" * 300 + ".jpg"]["error"]["message"].endswith("cannot be read (File name too long)")
    assert main(["caption", long_name, "--model", "tiny", "--max-new-tokens", "2"]) == 1
    assert capsys.readouterr().err.strip().endswith("cannot be read (File name too long)")


# --- one lock for every writer (issue 31) ------------------------------------------------------------------

SLOW_CAPTION_JOB = """
import sys, time
import bliptk.core.pipeline
from bliptk.cli.main import main

caption_pixels = bliptk.core.pipeline.caption_pixels

def slow(*args, **kwargs):  # a job that runs long enough to be written against
    time.sleep(0.4)
    return caption_pixels(*args, **kwargs)

bliptk.core.pipeline.caption_pixels = slow
sys.exit(main(sys.argv[1:]))
"""


def test_no_writer_touches_an_output_a_running_caption_job_holds(photos, tmp_path, capsys):
    """A figure, an export and a fine-tuning run, each started against the records file a caption job
    is writing, with --overwrite where the command has it: each refused, naming the job; the job's
    records complete (issue 31: the figure replaced the records with a PNG, the job said it succeeded)."""
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    for index in range(12):
        shutil.copy(photos[index % len(photos)], inputs / f"{index:02}.jpg")
    out = tmp_path / "run.jsonl"
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps({"image": str(photo), "caption": "a dog"}) + "\n" for photo in photos))
    job = subprocess.Popen(
        [sys.executable, "-c", SLOW_CAPTION_JOB, "caption", str(inputs), "--model", "tiny", "--batch-size", "1", "--out", str(out)],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while not (out.is_file() and out.read_text().count("\n") >= 1) and time.monotonic() < deadline:
            time.sleep(0.05)
        writers = {
            "figure": ["explain", str(photos[0]), "--model", "tiny", "--out", str(out), "--overwrite"],
            "export": ["export", "--model", "tiny", "--out", str(out), "--overwrite"],
            "fine-tuning": ["finetune", "--model", "tiny", "--train", str(data), "--out", str(out), "--max-steps", "1"],
            "attention": ["attention", str(photos[0]), "--model", "tiny", "--out", str(out), "--overwrite"],
        }
        for writer, arguments in writers.items():
            capsys.readouterr()
            assert main(arguments) == 2
            err = capsys.readouterr().err.strip().splitlines()[-1]
            assert re.fullmatch(
                rf"bliptk: error: \S*run.jsonl is being written by process {job.pid} on \S+ \(since .*\); wait for it.*", err
            ), (
                writer,
                err,
            )
        with pytest.raises(bliptk.OutputLockedError, match=rf"being written by process {job.pid}"):
            bliptk.finetune("tiny", data, out=out, max_steps=1)
        assert job.poll() is None, "the job ended before every writer was tried: make it slower"
    finally:
        code = job.wait(timeout=300)
    assert code == 0, job.stderr.read()
    records = read_records(out)
    assert len(records) == 12 and all(record["caption"] for record in records)


def test_files_are_shared_as_the_umask_says(tiny, photos, tmp_path):
    previous = os.umask(0o022)
    try:
        list(tiny.caption_files(photos[:1], tmp_path / "c.jsonl", max_new_tokens=2))
        assert main(["attention", str(photos[0]), "--model", "tiny", "--out", str(tmp_path / "a.png"), "--max-new-tokens", "2"]) == 0
        assert main(["embed", str(photos[0].parent), "--model", "tiny", "--out", str(tmp_path / "e.npz")]) == 0
        os.umask(0o002)
        list(tiny.caption_files(photos[1:2], tmp_path / "c.jsonl", max_new_tokens=2, resume=True))  # the file rewritten
        assert main(["embed", str(photos[0].parent), "--model", "tiny", "--out", str(tmp_path / "e2.npz")]) == 0
    finally:
        os.umask(previous)
    modes = {path.name: path.stat().st_mode & 0o777 for path in tmp_path.iterdir()}
    assert modes == {"c.jsonl": 0o664, "a.png": 0o644, "e.npz": 0o644, "e2.npz": 0o664}


def test_an_export_is_shared_as_the_umask_says(tiny_export):
    mask = os.umask(0)
    os.umask(mask)
    assert tiny_export.stat().st_mode & 0o777 == 0o777 & ~mask
    assert {path.stat().st_mode & 0o777 for path in tiny_export.iterdir()} == {0o666 & ~mask}


def test_an_export_that_fails_leaves_the_folder_as_it_was(tiny, tiny_export, tmp_path, monkeypatch):
    import bliptk.model.exporting

    folder = tmp_path / "export"
    shutil.copytree(tiny_export, folder)
    before = {path.name: path.read_bytes() for path in folder.iterdir()}

    def fails(captioner, building, int8):
        (building / "encoder.onnx").write_bytes(b"half a graph")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(bliptk.model.exporting, "_write_export", fails)
    with pytest.raises(bliptk.OutputError, match=r"export: cannot write the export \(the disk is full\)"):
        bliptk.export(tiny, folder, overwrite=True)
    assert {path.name: path.read_bytes() for path in folder.iterdir()} == before
    assert sorted(path.name for path in tmp_path.iterdir()) == ["export"]  # nothing half-written beside it


def test_a_place_where_no_lock_can_be_made_is_not_called_locked(tmp_path):
    # filelock reads a lock file it cannot create as one another process holds; bliptk says what it is
    with pytest.raises(bliptk.OutputError, match=r"/proc/records.jsonl: cannot write there") as raised:
        claim("/proc/records.jsonl")
    assert not isinstance(raised.value, bliptk.OutputLockedError)
