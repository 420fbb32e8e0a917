"""Records: whatever a path or a caption holds, a record reads back as it was written, a torn
last line is dropped wherever it tears, an output has one writer, and a full disk loses no
finished record."""

import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import mounted
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import bliptk
from bliptk.captioning.folder import BatchStatus
from bliptk.cli.main import main
from bliptk.core.decoding import Caption
from bliptk.store.records import RECORD_FIELDS, RecordOutput, done_inputs, input_identity, make_record, read_records

PROVENANCE = {"model": "tiny", "weights": {"source": "random", "seed": 0, "fingerprint": "0123456789abcdef", "dtype": "float32"}}
OPTIONS = {"prompt": None, "max_new_tokens": 5}

# Any file name the OS allows: bytes but NUL and "/", read as Python reads them (undecodable bytes
# become surrogate escapes); joined into paths of a few parts.
names = st.binary(min_size=1, max_size=12).filter(lambda b: b"\x00" not in b and b"/" not in b and b not in (b".", b"..")).map(os.fsdecode)
paths = st.lists(names, min_size=1, max_size=3).map(lambda parts: "/" + "/".join(parts))
texts = st.text(st.characters(blacklist_categories=["Cs"]), max_size=40)  # a caption is text (no lone surrogates)
finite = st.floats(allow_nan=False, allow_infinity=False)


@st.composite
def records(draw):
    path = draw(paths)
    if draw(st.booleans()):
        error = {"type": "ImageLoadError", "message": f"{path}: " + draw(texts)}
        return make_record(path, draw(st.sampled_from(["image", "video"])), PROVENANCE, OPTIONS, error=error)
    length = draw(st.integers(0, 4))
    caption = Caption(
        text=draw(texts),
        prompt=draw(texts),
        token_ids=draw(st.lists(st.integers(0, 30523), min_size=length, max_size=length)),
        tokens=draw(st.lists(texts, min_size=length, max_size=length)),
        logprobs=draw(st.lists(finite, min_size=length, max_size=length)),
        finished=draw(st.booleans()),
    )
    return make_record(path, "image", PROVENANCE, OPTIONS, caption)


def _write(path: Path, written: list[dict]) -> None:
    with RecordOutput(path) as output:
        output.start([])
        for record in written:
            output.write(record)


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(written=st.lists(records(), min_size=1, max_size=4), cut=st.floats(0, 1, exclude_max=True))
def test_any_path_and_caption_round_trip_and_a_torn_tail_is_dropped(tmp_path, suffix, written, cut):
    path = tmp_path / f"records{suffix}"
    path.unlink(missing_ok=True)
    _write(path, written)
    assert read_records(path) == written
    # A kill leaves the last record cut anywhere: exactly the records before it read back.
    data = path.read_bytes()
    whole = len(data) - len(data.splitlines(keepends=True)[-1]) if suffix == ".jsonl" else _start_of_last_row(path, written)
    torn = whole + int(cut * (len(data) - whole))
    path.write_bytes(data[:torn])
    read = read_records(path)
    # Only a cut in the line ending, or before a CSV field's closing quote, leaves the record whole.
    assert read == written[:-1] or (read == written and torn >= len(data.rstrip(b"\r\n")) - 1)
    # ...and a resumed run keeps them, one record per input, and redoes the torn one.
    with RecordOutput(path, resume=True) as output:
        assert output.existing == read
        done = done_inputs(output.existing, PROVENANCE, OPTIONS)
        output.start(output.existing)
        if read != written:
            output.write(written[-1])
    assert read_records(path) == written
    assert done == {input_identity(r["path"]) for r in read if not r["error"]}


def _start_of_last_row(path: Path, written: list[dict]) -> int:
    """Where the last CSV row starts: the size of the file holding all records but the last."""
    shorter = path.with_name("shorter.csv")
    shorter.unlink(missing_ok=True)
    _write(shorter, written[:-1])
    return shorter.stat().st_size


def test_a_malformed_line_that_is_not_the_last_is_no_file_of_ours(tmp_path):
    notes = tmp_path / "notes.jsonl"
    notes.write_text('{"path": "a.jpg", "model": "m", "options": {}, "error": null}\nmy shopping list\nmilk\n')
    with pytest.raises(bliptk.InputError, match="line 2 is not a bliptk record"):
        read_records(notes)
    with pytest.raises(bliptk.OutputError, match="it is no records file of bliptk's, so it is left alone: choose another output"):
        RecordOutput(notes, resume=True)
    assert notes.read_text().endswith("milk\n")  # untouched
    binary = tmp_path / "photo.csv"
    binary.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(bliptk.OutputError, match="the header is not a bliptk records file's"):
        RecordOutput(binary, resume=True)


def test_odd_file_names_get_exactly_one_record_each_and_resume(tiny, photos, tmp_path):
    folder = tmp_path / "odd"
    folder.mkdir()
    names = ["new\nline.jpg", 'quote",comma.jpg', "émoji 🐈.jpg", "-dash.jpg", " spaces .jpg", os.fsdecode(b"latin-\xe9.jpg")]
    for name, photo in zip(names, photos * 2, strict=False):
        shutil.copy(photo, folder / name)
    for suffix in (".jsonl", ".csv"):
        out = tmp_path / f"out{suffix}"
        first = list(tiny.caption_files(folder, out, max_new_tokens=2))
        assert sorted(r["path"] for r in first) == sorted(str(folder / name) for name in names)
        assert not any(r["error"] for r in first)
        assert read_records(out) == first
        assert list(tiny.caption_files(folder, out, max_new_tokens=2, resume=True)) == []  # all done: found again by path
        assert read_records(out) == first


def test_the_plain_output_keeps_one_line_per_input(tiny, photos, tmp_path, capsys):
    odd = tmp_path / "two\nlines.jpg"
    shutil.copy(photos[0], odd)
    assert main(["caption", str(odd), "--model", "tiny", "--max-new-tokens", "2"]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and out.startswith(str(tmp_path / "two\\nlines.jpg") + ": a photography of")


# --- one writer per output -----------------------------------------------------------------------------

SLOW_RUN = """
import sys, time
import bliptk
from bliptk.store.records import RecordOutput
with RecordOutput(sys.argv[1]) as output:
    output.start([])
    print("locked", flush=True)
    time.sleep(float(sys.argv[2]))
"""


def test_a_second_run_on_the_same_output_fails_at_once_naming_the_first(tiny, photos, tmp_path, capsys):
    out = tmp_path / "c.jsonl"
    holder = subprocess.Popen([sys.executable, "-c", SLOW_RUN, str(out), "30"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "locked\n"
        with pytest.raises(bliptk.OutputLockedError, match=rf"c.jsonl is being written by process {holder.pid} on \S+ \(since "):
            next(tiny.caption_files(photos, out, resume=True, max_new_tokens=2))
        assert main(["caption", str(photos[0]), "--model", "tiny", "--out", str(out), "--resume"]) == 2
        assert f"is being written by process {holder.pid}" in capsys.readouterr().err
    finally:
        holder.kill()
        holder.wait()
    # The OS released the lock of the killed process: the output can be written again.
    assert [r["path"] for r in tiny.caption_files(photos, out, resume=True, max_new_tokens=2)] == list(map(str, photos))


@pytest.mark.slow
def test_two_concurrent_runs_lose_no_record(photos, tmp_path):
    """The reproduction of issue 22: two runs of different inputs into one --out at once."""
    set_a, set_b, out = tmp_path / "a", tmp_path / "b", tmp_path / "c.jsonl"
    for folder, chosen in ((set_a, photos[:2]), (set_b, photos[2:])):
        folder.mkdir()
        for photo in chosen:
            shutil.copy(photo, folder)
    command = [sys.executable, "-m", "bliptk", "caption", "--model", "tiny", "--random-weights", "--max-new-tokens", "5", "--out", str(out)]
    runs = [subprocess.Popen([*command, str(folder)], stderr=subprocess.PIPE, text=True) for folder in (set_a, set_b)]
    results = [(run.wait(timeout=300), run.stderr.read()) for run in runs]
    codes = sorted(code for code, _ in results)
    written = {record["path"] for record in read_records(out)}
    if codes == [0, 0]:  # one finished before the other started (and the second, without --resume, refused)
        pytest.fail(f"both runs claimed success: {results}")
    assert codes == [0, 2]
    [(_, refused)] = [(code, err) for code, err in results if code == 2]
    assert "is being written by process" in refused or "exists; pass --resume" in refused
    [(_, succeeded)] = [(code, err) for code, err in results if code == 0]
    claimed = int(succeeded.split("bliptk: ")[-1].split(" captioned")[0])
    assert claimed == len(written)  # what the run that succeeded says it wrote is in the file


# --- output paths, before the model loads --------------------------------------------------------------


def test_output_mistakes_are_reported_before_the_model_loads(photos, tmp_path, capsys, monkeypatch):
    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded before the output was checked")

    monkeypatch.setattr("bliptk.model.loading.load", no_model)
    (tmp_path / "folder.jsonl").mkdir()
    (tmp_path / "taken.jsonl").write_text("{}\n")
    cases = [
        (tmp_path / "nosuch" / "dir" / "x.jsonl", "the folder " + str(tmp_path / "nosuch" / "dir") + " does not exist"),
        (tmp_path / "folder.jsonl", "folder.jsonl is a folder; name a file"),
        (tmp_path / "taken.jsonl", "taken.jsonl exists; pass --resume to continue it, or choose another file"),
        (tmp_path / "x.parquet", "records are written as .jsonl or .csv, not .parquet (Parquet shards are written by the Ray path"),
    ]
    for out, message in cases:
        assert main(["caption", str(photos[0]), "--model", "tiny", "--out", str(out)]) == 2
        assert message in capsys.readouterr().err
    assert main(["caption", str(photos[0]), "--model", "tiny", "--out", str(tmp_path / "folder.jsonl"), "--resume"]) == 2
    assert "is a folder" in capsys.readouterr().err
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith((".tmp", ".lock"))] == []
    with mounted("ro") as read_only:
        if read_only is None:
            pytest.skip("a read-only mount needs root")
        assert main(["caption", str(photos[0]), "--model", "tiny", "--out", str(read_only / "x.jsonl")]) == 2
        assert "x.jsonl: cannot write there (Read-only file system); choose another output" in capsys.readouterr().err


class _FullDisk:
    """A records file whose writes fail with ENOSPC after ``room`` bytes (where no tmpfs can be mounted)."""

    def __init__(self, real, room: int):
        self.real, self.room = real, room

    def write(self, data):
        if len(data) > self.room:
            raise OSError(errno.ENOSPC, "No space left on device")
        self.room -= len(data)
        return self.real.write(data)

    def __getattr__(self, name):
        return getattr(self.real, name)


def test_a_full_disk_keeps_every_finished_record_and_resume_finishes(tiny, photos, tmp_path, capsys, monkeypatch):
    folder = tmp_path / "photos"
    folder.mkdir()
    for index in range(12):
        shutil.copy(photos[index % len(photos)], folder / f"{index:02}.jpg")
    with mounted("", size="8k") as disk:
        if disk is None:  # not root: the writer itself meets a full disk
            disk = tmp_path
            original = RecordOutput.start

            def start_then_fill(self, kept):
                original(self, kept)
                self._file = _FullDisk(self._file, 8192 - self.path.stat().st_size)

            monkeypatch.setattr(RecordOutput, "start", start_then_fill)
        out = disk / "c.jsonl"
        status = BatchStatus()
        arguments = ["caption", str(folder), "--model", "tiny", "--out", str(out), "--max-new-tokens", "20", "--batch-size", "2"]
        assert main(arguments) == 2
        err = capsys.readouterr().err
        assert (
            "c.jsonl: cannot write: the disk is full. The " in err
            and "records finished before are kept; free space, then run again with --resume" in err
        )
        kept = read_records(out)
        assert 0 < len(kept) < 12 and not any(r["error"] for r in kept)
        assert [p for p in disk.iterdir() if p.name.endswith(".tmp")] == []
        # Resuming while the disk is still full fails the same way, and leaves no temporary file behind.
        assert main(arguments + ["--resume"]) == 2
        assert "the disk is full" in capsys.readouterr().err and [p for p in disk.iterdir() if p.name.endswith(".tmp")] == []
        assert read_records(out) == kept
        # Space is back: the resumed run finishes the rest, and every input has exactly one record.
        moved = tmp_path / "c.jsonl"
        shutil.copy(out, moved)
        monkeypatch.undo()
        assert list(tiny.caption_files(folder, moved, max_new_tokens=20, resume=True, status=status)) != []
        final = read_records(moved)
        assert sorted(r["path"] for r in final) == sorted(str(p) for p in folder.iterdir()) and status.skipped == len(kept)


@pytest.mark.parametrize("left_out", [("entropy",), ("runtime", "entropy")])
def test_records_files_of_earlier_versions_read_and_resume(tiny, photos, tmp_path, left_out):
    import csv

    out = tmp_path / "captions.csv"
    made = list(tiny.caption_files(photos[:2], out, max_new_tokens=3))
    rows = list(csv.DictReader(out.open(newline="")))
    with out.open("w", newline="") as file:  # as bliptk 0.2 (no runtime) and 0.3 (no entropy) wrote them
        writer = csv.DictWriter(file, [name for name in RECORD_FIELDS if name not in left_out], extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    assert read_records(out) == made
    assert list(tiny.caption_files(photos[:2], out, resume=True, max_new_tokens=3)) == []  # done: nothing captioned again


def test_onnx_records_of_bliptk_0_2_read_as_the_onnx_runtimes(tmp_path):
    line = {"path": "a.jpg", "caption": "a dog", "model": "m", "weights": {"dtype": "onnx int8"}, "options": {}, "error": None}
    (tmp_path / "old.jsonl").write_text(json.dumps(line) + "\n")
    [record] = read_records(tmp_path / "old.jsonl")
    assert record["runtime"] == "onnx" and record["weights"] == {"dtype": "int8"} and record["entropy"] is None
