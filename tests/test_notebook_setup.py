"""The model a notebook runs on (bliptk.notebook.setup): BLIPTK_MODEL, else the notebook's own, else,
with no weights at hand, random weights said in one line."""

from __future__ import annotations

import pytest

import bliptk


@pytest.fixture
def no_weights(monkeypatch, tmp_path):
    """Offline, with an empty Hugging Face cache: no checkpoint can be found."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.delenv("BLIPTK_MODEL", raising=False)


def test_without_weights_a_notebook_runs_on_random_weights_said_in_one_line(no_weights, photos, capsys):
    with pytest.raises(bliptk.CheckpointNotFoundError):
        bliptk.load("ViT-B/16")  # what the setup cell used to stop at
    captioner = bliptk.notebook_model("ViT-B/16")
    assert captioner.name == "ViT-B/16" and captioner.weights.source == "random"
    captioner.caption(photos[0], max_new_tokens=2)  # its random weights are said once: by the line above
    out = capsys.readouterr()
    lines = [line for line in (out.out + out.err).splitlines() if line]
    assert len(lines) == 1 and "ViT-B/16: its pretrained weights are not at hand" in lines[0] and "BLIPTK_MODEL=tiny" in lines[0]


def test_the_variable_chooses_the_model(no_weights, monkeypatch, capsys):
    monkeypatch.setenv("BLIPTK_MODEL", "tiny")
    assert bliptk.notebook_model("ViT-L/16").name == "tiny"
    assert "not at hand" not in capsys.readouterr().out


def test_a_broken_checkpoint_folder_is_said_not_replaced(no_weights, tmp_path):
    (tmp_path / "broken").mkdir()
    with pytest.raises(bliptk.CheckpointNotFoundError, match="is not a checkpoint folder"):
        bliptk.notebook_model(str(tmp_path / "broken"))


def test_in_a_notebook_bliptk_errors_are_one_line_and_others_keep_their_traceback(no_weights, capsys):
    from IPython.core.interactiveshell import InteractiveShell

    shell = InteractiveShell.instance()
    shell.set_custom_exc((KeyError,), lambda shell, *error, tb_offset=None: print("theirs") or [])
    try:
        assert bliptk.notebook.setup.show_errors_in_one_line()
        assert bliptk.notebook.setup.show_errors_in_one_line()  # once only
        capsys.readouterr()
        result = shell.run_cell("import bliptk; bliptk.load('ViT-B/16')")
        assert isinstance(result.error_in_exec, bliptk.CheckpointNotFoundError)
        lines = [line for line in capsys.readouterr().out.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("CheckpointNotFoundError: checkpoint 'Salesforce/blip-image-captioning-base'")
        assert lines[0].endswith("(%tb shows where)")
        shell.run_cell("%tb")
        where = capsys.readouterr().out
        assert "Traceback" in where and "resolve_checkpoint" in where and "CheckpointNotFoundError" in where
        shell.run_cell("1 / 0")
        assert "Traceback" in capsys.readouterr().out
        shell.run_cell("raise KeyError('kept')")  # another library's handler, installed before, still answers its own
        assert capsys.readouterr().out == "theirs\n"
    finally:
        shell.set_custom_exc((), None)
        InteractiveShell.clear_instance()


def test_outside_ipython_errors_are_left_alone():
    assert not bliptk.notebook.setup.show_errors_in_one_line()
