"""The documentation site's hooks (docs/hooks.py) and figures (docs/gallery.py): what they put on
the pages. The strict build itself (.ci/run) checks the built pages: a notebook page without its
figures, or a gallery short of one, fails it."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent


@pytest.fixture(scope="module")
def hooks():
    from helpers import site_hooks

    return site_hooks()


def test_the_first_the_page_in_prose_links_to_it(hooks):
    markdown = "```python\n# the page's recipe\n```\n| the page | x |\nSee `the page` and the page's recipe; the page again."
    linked = hooks.link_the_page(markdown)
    assert linked.count(hooks.THE_PAGE) == 1
    assert f"and [the page]({hooks.THE_PAGE})'s recipe; the page again." in linked
    assert linked.startswith("```python\n# the page's recipe\n```\n| the page | x |\nSee `the page`")
    assert hooks.link_the_page("nothing here") == "nothing here"


def test_every_page_explains_the_page_in_a_tooltip():
    abbreviations = (ROOT / "docs" / "includes" / "abbreviations.md").read_text()
    assert "*[the page]: The Wolfram Neural Net Repository page" in abbreviations
    assert "docs/includes/abbreviations.md" in (ROOT / "mkdocs.yml").read_text()


def test_the_command_line_page_lists_every_command_and_option_of_the_parser(hooks):
    from bliptk.cli.main import _parser

    summary, options = hooks.command_tables()
    [commands] = [action for action in _parser()._actions if isinstance(action, argparse._SubParsersAction)]
    assert len(commands.choices) >= 13
    for name, parser in commands.choices.items():
        assert f"[`bliptk {name}`](#bliptk-{name})" in summary and f"### `bliptk {name}` {{#bliptk-{name}}}" in options
        for action in parser._actions:
            for flag in action.option_strings:
                if flag not in ("-h", "--help"):
                    assert f"`{flag}`" in options, (name, flag)
    assert "`--contrast`" in options and "`--lora`" in options  # explain's and finetune's, once missing from the page
    page = (ROOT / "docs" / "guide" / "command-line.md").read_text()
    assert "<!-- commands:" in page and "<!-- options:" in page


def test_a_command_without_a_guide_is_a_warning(hooks, monkeypatch, caplog):
    monkeypatch.delitem(hooks.COMMAND_GUIDES, "explain")
    hooks.command_tables()
    assert "command 'explain' has no guide" in caplog.text


def test_a_notebook_page_says_which_weights_made_its_figures(hooks):
    content = '<div><img src="data:image/png;base64,AAAA"></div><p>text</p><img alt="x" src="y.png"/>'
    labelled = hooks.labelled_figures(content)
    assert labelled.startswith(hooks.NOTEBOOK_BANNER) and "BLIPTK_MODEL=tiny" in hooks.NOTEBOOK_BANNER
    assert labelled.count(hooks.FIGURE_LABEL) == 2
    assert re.search(r'src="y.png"/>' + re.escape(hooks.FIGURE_LABEL), labelled)


def test_an_executed_copy_is_kept_per_content(hooks, tmp_path, monkeypatch):
    monkeypatch.setattr(hooks, "EXECUTED", tmp_path / "executed")
    monkeypatch.setattr(hooks.gallery, "source_hash", lambda: "bliptk's source")
    notebook = tmp_path / "01_x.ipynb"
    notebook.write_text(json.dumps({"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}))
    first = hooks.executed_path(notebook)
    hooks.keep_executed(notebook, json.loads(notebook.read_text()))
    assert first.is_file() and first.name.startswith("01_x-") and list(first.parent.iterdir()) == [first]
    notebook.write_text(notebook.read_text().replace('"cells": []', '"cells": [], "x": 1'))
    assert hooks.executed_path(notebook) != first  # changed: executed again
    hooks.keep_executed(notebook, json.loads(notebook.read_text()))
    assert list(first.parent.iterdir()) == [hooks.executed_path(notebook)]  # the stale copy is gone
    monkeypatch.setattr(hooks.gallery, "source_hash", lambda: "bliptk's source, changed")
    notebook.write_text(notebook.read_text().replace(', "x": 1', ""))
    assert hooks.executed_path(notebook) != first  # bliptk changed: executed again


def test_the_gallery_shows_each_figure_with_its_code_and_each_guide_shows_its_own(hooks):
    gallery = hooks.gallery
    page = gallery.gallery_markdown()
    assert len(gallery.FIGURES) >= 9 and len({figure.name for figure in gallery.FIGURES}) == len(gallery.FIGURES)
    assert page.count("](figures/") == len(gallery.FIGURES)
    for figure in gallery.FIGURES:
        assert figure.code in page and f"(figures/{figure.name}.png)" in page
        assert f"figures/{figure.name}.png" in (ROOT / "docs" / figure.guide).read_text(), figure.guide
        assert figure.model in gallery.WEIGHTS_LINE
    assert "figures/attention-overlays.png" in (ROOT / "docs" / "index.md").read_text()  # the front page opens with one


@pytest.mark.slow
def test_a_gallery_figure_is_drawn_labelled_with_its_weights(hooks, tmp_path):
    from io import BytesIO

    import numpy as np
    from PIL import Image

    [figure] = [figure for figure in hooks.gallery.FIGURES if figure.name == "attention-maps"]
    png = hooks.gallery.draw(hooks.gallery.Figure(figure.name, figure.title, figure.code, figure.guide, model="tiny"), {}, tmp_path)
    picture = np.asarray(Image.open(BytesIO(png)).convert("L"))
    assert picture.shape[1] > 300
    # The weights line at the foot: dark text pixels in the bottom band, under the panels.
    assert (picture[-14:] < 128).any()


def test_a_notebook_page_shows_its_figures_at_a_page_size(hooks):
    import base64
    import io

    import numpy as np
    from PIL import Image

    noise = Image.fromarray(np.random.default_rng(0).integers(0, 255, (1500, 2000, 3), dtype=np.uint8))
    written = io.BytesIO()
    noise.save(written, format="png")
    notebook = {
        "cells": [
            {
                "cell_type": "code",
                "outputs": [
                    {
                        "output_type": "display_data",
                        "data": {"image/png": base64.b64encode(written.getvalue()).decode(), "text/plain": "<Figure>"},
                    }
                ],
            }
        ]
    }
    shown = hooks.compact_images(notebook)["cells"][0]["outputs"][0]["data"]
    picture = Image.open(io.BytesIO(base64.b64decode(shown["image/png"])))
    assert picture.size == (1280, 960) and len(base64.b64decode(shown["image/png"])) < len(written.getvalue()) / 2
    assert shown["text/plain"] == "<Figure>"


@pytest.mark.slow
@pytest.mark.notebooks
def test_the_site_pages_carry_their_figures_as_img_tags(hooks, tmp_path, monkeypatch):
    """What a built page holds: a notebook executed as the site executes them (BLIPTK_MODEL=tiny)
    and rendered as mkdocs-jupyter renders it shows its figure as an <img> with its weights under
    it; the gallery page shows one <img> per figure."""
    import markdown
    import nbformat
    from mkdocs_jupyter.nbconvert2 import nb2html
    from nbclient import NotebookClient

    for name, value in hooks.EXECUTED_WITH.items():
        monkeypatch.setenv(name, value)
    source = 'import bliptk\ncaptioner = bliptk.notebook_model("ViT-B/16")\ncaption = captioner.caption(bliptk.example_path("images/woman-with-cake.jpg"), max_new_tokens=3, return_attention=True)\nbliptk.plot_attention_maps(caption)'
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("# A page"), nbformat.v4.new_code_cell(source)])
    NotebookClient(notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}).execute()
    path = tmp_path / "page.ipynb"
    path.write_text(json.dumps(hooks.compact_images(json.loads(nbformat.writes(notebook)))))
    page = hooks.labelled_figures(nb2html(str(path)))
    assert len(hooks.IMAGE.findall(page)) == 1 and page.count(hooks.FIGURE_LABEL) == 1
    gallery = markdown.markdown(hooks.gallery.gallery_markdown(), extensions=["fenced_code"])
    assert len(hooks.IMAGE.findall(gallery)) == len(hooks.gallery.FIGURES)
