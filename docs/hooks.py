"""MkDocs hooks of bliptk's documentation site (mkdocs.yml: ``hooks``).

* The notebooks (``notebooks/*.ipynb``, outside ``docs/``) become pages under ``notebooks/``, shown
  as committed, without executing them (mkdocs-jupyter renders them). The exercises notebook is
  the teacher's nbgrader source: the site shows the version students get, as ``nbgrader
  generate_assignment`` makes it (each solution replaced by ``raise NotImplementedError()``, the
  hidden tests removed), so that the site gives away no answer.
* Each notebook page gets a download button for the notebook (mkdocs-jupyter's
  ``include_source`` copies it beside the page).
* The API reference's front page must name every public name of ``bliptk`` (those its
  ``__init__.pyi`` imports): a name it misses is a warning, so ``mkdocs build --strict`` fails.
"""

from __future__ import annotations

import ast
import html
import json
import logging
import posixpath
import re
import shutil
import tempfile
from pathlib import Path

from mkdocs.plugins import event_priority
from mkdocs.structure.files import File

log = logging.getLogger("mkdocs.hooks.bliptk")

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"
EXERCISES = "07_exercises.ipynb"
REFERENCE_INDEX = "reference/index.md"
PUBLIC_STUB = ROOT / "bliptk" / "__init__.pyi"

_scratch: Path | None = None


def student_version(notebook: dict) -> dict:
    """The exercises as ``nbgrader generate_assignment`` releases them: the lines between
    ``### BEGIN SOLUTION`` and ``### END SOLUTION`` replaced by a stub at their indentation, the
    lines between ``### BEGIN HIDDEN TESTS`` and ``### END HIDDEN TESTS`` removed."""
    for cell in notebook["cells"]:
        source = "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]
        kept: list[str] = []
        skipping = None
        for line in source.split("\n"):
            marker = line.strip()
            if skipping is None and marker == "### BEGIN SOLUTION":
                skipping = "### END SOLUTION"
                indent = line[: len(line) - len(line.lstrip())]
                if cell["cell_type"] == "code":
                    kept += [f"{indent}# YOUR CODE HERE", f"{indent}raise NotImplementedError()"]
                else:
                    kept.append("YOUR ANSWER HERE")
            elif skipping is None and marker == "### BEGIN HIDDEN TESTS":
                skipping = "### END HIDDEN TESTS"
            elif skipping is not None:
                if marker == skipping:
                    skipping = None
            else:
                kept.append(line)
        if skipping is not None:
            raise ValueError(f"{EXERCISES}: a cell opens a block it never closes ({skipping} missing)")
        cell["source"] = "\n".join(kept).rstrip("\n")
    return notebook


def on_config(config):
    global _scratch
    _scratch = Path(tempfile.mkdtemp(prefix="bliptk-docs-"))
    return config


@event_priority(100)  # before mkdocs-jupyter's on_files, which turns .ipynb files into pages
def on_files(files, config):
    assert _scratch is not None
    # Plain files (not File.generated): mkdocs-jupyter reads a notebook's path from its src_dir.
    for notebook in sorted(NOTEBOOKS.glob("*.ipynb")):
        src_dir = ROOT
        if notebook.name == EXERCISES:
            src_dir = _scratch
            released = student_version(json.loads(notebook.read_text(encoding="utf-8")))
            (_scratch / "notebooks").mkdir(exist_ok=True)
            (_scratch / "notebooks" / notebook.name).write_text(json.dumps(released, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        files.append(File(f"notebooks/{notebook.name}", str(src_dir), config["site_dir"], config["use_directory_urls"]))
    return files


def _public_names(stub: Path) -> list[str]:
    """The names the stub imports: bliptk's public names (lazy_loader reads the same imports)."""
    names = []
    for node in ast.parse(stub.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.ImportFrom):
            names += [alias.asname or alias.name for alias in node.names]
    return [name for name in names if not name.startswith("__")]


def on_page_markdown(markdown, page, config, files):
    if page.file.src_uri == REFERENCE_INDEX:
        for name in _public_names(PUBLIC_STUB):
            if not re.search(rf"\[`{re.escape(name)}`\]\[", markdown):
                log.warning(f"{REFERENCE_INDEX} does not list bliptk.{name}: add a row that links it to its documentation")
    return markdown


def on_page_content(content, page, config, files):
    source = page.file.src_uri
    if source.startswith("notebooks/") and source.endswith(".ipynb"):
        name = html.escape(posixpath.basename(source))
        # Material's page-action button (floated right of the title), with Material Design's download icon.
        icon = '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 24 24"><path d="M5 20h14v-2H5v2zM19 9h-4V3H9v6H5l7 7 7-7z"/></svg>'
        link = f'<a class="md-content__button md-icon" href="{name}" title="Download {name}" download>{icon}</a>'
        return link + content
    return content


def on_shutdown():
    if _scratch is not None:
        shutil.rmtree(_scratch, ignore_errors=True)
