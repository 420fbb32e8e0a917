"""Where bliptk writes: every output checked before the model loads, written whole or not at all,
and its faults (a read-only folder, a full disk, a link, standard output on a full device) said in
one line, exit 2."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import mounted

import bliptk
from bliptk.cli import main
from bliptk.outputs import checked_output, write_whole
from bliptk.records import read_records


@pytest.fixture
def no_model(monkeypatch):
    """Fail the test if a model loads: every output mistake must be found before."""

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the output was checked")

    monkeypatch.setattr("bliptk.loading.load", refuse)


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
