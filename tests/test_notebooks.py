"""Every notebook under notebooks/ runs top to bottom on the tiny random model, with its kernel
started at the repository root (as VS Code, papermill and a plain NotebookClient start it)."""

import shutil
import tempfile
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def _scratch_folders(folder: Path) -> set[str]:
    """bliptk's temporary folders in a temporary folder (the notebooks' runs, exports, shards)."""
    return {path.name for path in folder.glob("bliptk-*")}


def test_there_are_notebooks():
    assert [n.name for n in NOTEBOOKS][:1] == ["01_captioning_basics.ipynb"]


@pytest.mark.slow
@pytest.mark.notebooks
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs_from_the_repository_root(path, monkeypatch):
    notebook = nbformat.read(path, as_version=4)
    assert all(not cell.get("outputs") for cell in notebook.cells if cell.cell_type == "code"), "commit without outputs"
    from helpers import site_hooks

    hooks = site_hooks()
    for name, value in hooks.EXECUTED_WITH.items():
        monkeypatch.setenv(name, value)  # BLIPTK_MODEL=tiny, as the site runs them; figures drawn inline, as a reader sees them
    # The kernel's own temporary folder: what other tests (pytest -n) make at the same time is not its.
    # A short path, as Ray puts its sockets under it (a Unix socket's path has 107 bytes at most).
    scratch = Path(tempfile.mkdtemp(prefix="nb-"))
    monkeypatch.setenv("TMPDIR", str(scratch))
    client = NotebookClient(notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}})
    try:
        client.execute()
        assert _scratch_folders(scratch) == set(), "the notebook left temporary folders behind"
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    # No box of stderr in a notebook: random weights are said in one plain line, once. (Ray says a
    # few things of its own on stderr when it starts, in the Ray notebook: nothing of bliptk's.)
    streams = [output for cell in notebook.cells for output in cell.get("outputs", []) if output.output_type == "stream"]
    stderr = [output.text for output in streams if output.name == "stderr"]
    if path.name == "08_scale_out.ipynb":
        stderr = [text for text in stderr if "bliptk" in text or "Warning" in text]
    assert stderr == []
    said = [line for output in streams for line in output.text.splitlines() if "has random weights" in line]
    assert len(said) <= 1 and all(line.startswith("tiny has random weights (seed 0)") for line in said), said
    if path.name != hooks.EXERCISES:  # the site shows the students' version, not executed
        hooks.keep_executed(path, notebook)  # the site's copy: a docs build after the tests executes nothing again


def test_one_table_says_which_model_each_notebook_loads():
    """The documentation's notebook index is the one place that says it; each notebook's setup cell agrees."""
    import re

    table = dict(re.findall(r"^\| \[(\d\d_\w+)\]\(\1\.ipynb\) \| ([^|]+) \|", (ROOT / "docs" / "notebooks" / "index.md").read_text(), re.M))
    for path in NOTEBOOKS:
        source = "\n".join(cell.source for cell in nbformat.read(path, as_version=4).cells)
        [default] = re.findall(r'MODEL = os.environ.get\("BLIPTK_MODEL", "([^"]+)"\)', source)
        assert table[path.stem].strip() == default, path.name
    assert len(table) == len(NOTEBOOKS)


def _setup_cells(notebook) -> int:
    """How many cells, from the top, load the notebook's model (up to its notebook_model call)."""
    return 1 + max(i for i, cell in enumerate(notebook.cells) if "notebook_model(" in cell.source)


@pytest.mark.slow
@pytest.mark.notebooks
def test_without_weights_or_variable_every_setup_runs_on_random_weights_said_in_one_line(monkeypatch, tmp_path):
    """What a reader offline gets from a fresh clone: every notebook's setup cells run (on the
    full-size architecture with random weights) and say so in one line; the cells after them are
    the tiny-net runs' above, on a bigger net. One kernel for all (a clean namespace for each), as
    a kernel's start and imports cost more than a setup cell."""
    monkeypatch.delenv("BLIPTK_MODEL", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty cache: no weights at hand
    monkeypatch.setenv("MPLBACKEND", "Agg")
    scratch = Path(tempfile.mkdtemp(prefix="nb-"))
    monkeypatch.setenv("TMPDIR", str(scratch))
    notebooks = [nbformat.read(path, as_version=4) for path in NOTEBOOKS]
    client = NotebookClient(nbformat.v4.new_notebook(), timeout=600, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}})
    try:
        with client.setup_kernel():
            for notebook in notebooks:
                client.nb = notebook
                for index, cell in enumerate(notebook.cells[: _setup_cells(notebook)]):
                    client.execute_cell(cell, index)
                client.execute_cell(nbformat.v4.new_code_cell("%reset -f"), 0)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    for path, notebook in zip(NOTEBOOKS, notebooks, strict=True):
        outputs = [output for cell in notebook.cells for output in cell.get("outputs", [])]
        assert [output for output in outputs if output.output_type == "error"] == [], path.name
        streams = [output for output in outputs if output.output_type == "stream"]
        lines = [line for output in streams if output.name == "stdout" for line in output.text.splitlines()]
        said = [line for line in lines if "pretrained weights are not at hand" in line]
        assert len(said) == 1 and said[0].startswith("ViT-") and "BLIPTK_MODEL=tiny" in said[0], (path.name, lines)
        stderr = [output.text for output in streams if output.name == "stderr"]
        if path.name == "08_scale_out.ipynb":
            stderr = [text for text in stderr if "bliptk" in text or "Warning" in text]  # Ray's own start-up lines
        assert stderr == [], path.name
