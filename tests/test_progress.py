"""bliptk's progress bars (bliptk.core.progress): tqdm.auto, whose notebook output is saved in the
state the bar ended in."""

from __future__ import annotations

import pytest

from bliptk.core.progress import progress_bar


def test_outside_a_notebook_it_is_tqdm_text(capsys):
    with progress_bar(total=3, desc="counting", unit="img") as bar:
        bar.update(3)
    assert "counting: 100%" in capsys.readouterr().err
    with progress_bar(total=3, desc="quiet", disable=True) as bar:
        bar.update(3)
    assert capsys.readouterr().err == ""


@pytest.mark.slow
@pytest.mark.notebooks
def test_a_saved_notebook_shows_each_bar_as_it_ended():
    """Widgets save the text they had when shown (0%); bliptk's bars are shown again when closed."""
    import nbformat
    from nbclient import NotebookClient

    source = (
        "from bliptk.core.progress import progress_bar\n"
        "with progress_bar(total=2, desc='first', unit='img') as bar:\n    bar.update(2)\n"
        "second = progress_bar(total=5, desc='second')\nsecond.update(3)\nsecond.close()"
    )
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(source)])
    NotebookClient(notebook, timeout=120, kernel_name="python3").execute()
    bars = [
        output.data["text/plain"]
        for output in notebook.cells[0].outputs
        if "application/vnd.jupyter.widget-view+json" in output.get("data", {})
    ]
    assert len(bars) == 2
    assert bars[0].startswith("first: 100%") and "2/2" in bars[0]
    assert bars[1].startswith("second:  60%") and "3/5" in bars[1]  # stopped early: said as it stopped
