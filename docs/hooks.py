"""MkDocs hooks of bliptk's documentation site (mkdocs.yml: ``hooks``).

* The notebooks (``notebooks/*.ipynb``, outside ``docs/``) become pages under ``notebooks/``,
  executed on the tiny random net (``BLIPTK_MODEL=tiny``) so that their pages show their captions
  and figures (mkdocs-jupyter renders them), with a line over the page and under each figure saying
  which weights made it. An executed copy is kept in ``.bliptk-cache/docs/notebooks/`` under a key
  of the notebook and bliptk's source; the test suite's run of each notebook leaves one there too
  (``tests/test_notebooks.py``), so a build after the tests executes nothing again. The exercises
  notebook is the teacher's nbgrader source: the site shows the version students get, as ``nbgrader
  generate_assignment`` makes it (each solution replaced by ``raise NotImplementedError()``, the
  hidden tests removed), not executed, so that the site gives away no answer.
* The gallery page and every guide's figures come from ``docs/gallery.py`` (drawn at build time,
  cached the same way); a notebook page that shows no figure while its notebook draws some, or a
  gallery with a figure missing, is a warning (``mkdocs build --strict`` fails).
* Each notebook page gets a download button for the notebook as committed, without the build's
  outputs (mkdocs-jupyter's ``include_source`` copies the page's notebook beside it; the build then
  puts the committed one in its place).
* The API reference's front page must name every public name of ``bliptk`` (those its
  ``__init__.pyi`` imports): a name it misses is a warning, so ``mkdocs build --strict`` fails.
"""

from __future__ import annotations

import ast
import hashlib
import html
import json
import logging
import os
import posixpath
import re
import shutil
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from mkdocs.plugins import event_priority
from mkdocs.structure.files import File

log = logging.getLogger("mkdocs.hooks.bliptk")

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"
EXERCISES = "07_exercises.ipynb"
REFERENCE_INDEX = "reference/index.md"
PUBLIC_STUB = ROOT / "bliptk" / "__init__.pyi"
EXECUTED = ROOT / ".bliptk-cache" / "docs" / "notebooks"
GALLERY = "gallery.md"
THE_PAGE = "https://resources.wolframcloud.com/NeuralNetRepository/resources/BLIP-Image-Captioning-Nets-Trained-on-MS-COCO-Data"
"""What "the page" means throughout the documentation."""
EXECUTED_WITH = {"BLIPTK_MODEL": "tiny"}
"""The environment a site's notebook runs in (and the test suite runs them in)."""
NOTEBOOK_BANNER = (
    '<p class="bliptk-weights">This page was executed when the site was built, on the tiny random test net '
    "(<code>BLIPTK_MODEL=tiny</code>, 6x6 patches): its captions are random words and its maps show no meaning. "
    'Run the notebook to see the real model\'s (its setup cell loads it). "The page" here is the Wolfram Neural Net '
    f'Repository page <a href="{THE_PAGE}">BLIP Image Captioning Nets Trained on MS-COCO Data</a>, whose examples '
    "these notebooks mirror.</p>"
)
FIGURE_LABEL = '<p class="bliptk-weights">Tiny random net (BLIPTK_MODEL=tiny): random words, random maps.</p>'
IMAGE = re.compile(r"<img\b[^>]*>")

sys.path.insert(0, str(Path(__file__).resolve().parent))
import gallery  # noqa: E402 -- docs/gallery.py, beside this file

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


def executed_path(notebook: Path) -> Path:
    """Where the executed copy of a notebook is kept: its name and a key of its content, the
    environment it runs in and bliptk's source (a change to any of them executes it again)."""
    key = hashlib.sha256(notebook.read_bytes() + json.dumps(EXECUTED_WITH).encode() + gallery.source_hash().encode())
    return EXECUTED / f"{notebook.stem}-{key.hexdigest()[:16]}.ipynb"


def keep_executed(notebook: Path, executed: dict, path: Path | None = None) -> None:
    """Keep an executed notebook (nbformat's dict) as the site's copy (at ``path``, by default its
    [`executed_path()`][]), whole or not at all."""
    import nbformat

    path = path or executed_path(notebook)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(f".{os.getpid()}.partial")
    nbformat.write(nbformat.from_dict(executed), str(partial))
    partial.replace(path)
    for older in path.parent.glob(f"{notebook.stem}-*.ipynb"):  # made of another source: never read again
        if older != path:
            older.unlink(missing_ok=True)


def _execute(notebook: Path, path: Path) -> None:
    import nbformat
    from nbclient import NotebookClient

    started = time.perf_counter()
    content = nbformat.read(notebook, as_version=4)
    NotebookClient(content, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}).execute()
    keep_executed(notebook, content, path)
    log.info(f"executed {notebook.name} in {time.perf_counter() - started:.0f} s")


def executed_notebooks(notebooks: list[Path], scratch: Path) -> dict[Path, Path]:
    """Each notebook's executed copy, executing those that have none yet, two at a time (a kernel
    each). The keys are taken once, before any runs: what they ran on is what they are kept as."""
    paths = {notebook: executed_path(notebook) for notebook in notebooks}
    missing = [notebook for notebook, path in paths.items() if not path.is_file()]
    if not missing:
        return paths
    log.info(f"executing {len(missing)} notebooks on the tiny net (kept in {EXECUTED.relative_to(ROOT)}/)")
    saved = {name: os.environ.get(name) for name in [*EXECUTED_WITH, "TMPDIR"]}
    os.environ.update(EXECUTED_WITH, TMPDIR=str(scratch))  # the kernels inherit them
    try:
        with ThreadPoolExecutor(2) as pool:
            list(pool.map(lambda notebook: _execute(notebook, paths[notebook]), missing))
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    return paths


def compact_images(notebook: dict) -> dict:
    """A notebook (nbformat's dict) with each PNG output as a page shows it (bliptk's figure
    files' own size: ``bliptk.core.figures.page_png``); a notebook's overlays are otherwise
    megabytes of page."""
    import base64

    from bliptk.core.figures import page_png

    for cell in notebook["cells"]:
        for output in cell.get("outputs", []):
            data = output.get("data", {})
            if "image/png" in data:
                original = base64.b64decode(data["image/png"])
                shown = page_png(original)
                if len(shown) < len(original):
                    data["image/png"] = base64.b64encode(shown).decode("ascii")
    return notebook


def on_config(config):
    global _scratch
    _scratch = Path(tempfile.mkdtemp(prefix="bliptk-docs-"))
    return config


@event_priority(100)  # before mkdocs-jupyter's on_files, which turns .ipynb files into pages
def on_files(files, config):
    assert _scratch is not None
    notebooks = sorted(NOTEBOOKS.glob("*.ipynb"))
    executed = executed_notebooks([notebook for notebook in notebooks if notebook.name != EXERCISES], _scratch)
    (_scratch / "notebooks").mkdir(exist_ok=True)
    # Plain files (not File.generated): mkdocs-jupyter reads a notebook's path from its src_dir.
    for notebook in notebooks:
        if notebook.name == EXERCISES:
            released = student_version(json.loads(notebook.read_text(encoding="utf-8")))
            (_scratch / "notebooks" / notebook.name).write_text(json.dumps(released, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        else:
            shown = compact_images(json.loads(executed[notebook].read_text(encoding="utf-8")))
            (_scratch / "notebooks" / notebook.name).write_text(json.dumps(shown, ensure_ascii=False), encoding="utf-8")
        files.append(File(f"notebooks/{notebook.name}", str(_scratch), config["site_dir"], config["use_directory_urls"]))
    started = time.perf_counter()
    for name, png in gallery.figure_pngs(_scratch).items():
        files.append(File.generated(config, f"figures/{name}.png", content=png))
    log.info(f"gallery figures ready in {time.perf_counter() - started:.0f} s")
    files.append(File.generated(config, GALLERY, content=gallery.gallery_markdown()))
    return files


def _public_names(stub: Path) -> list[str]:
    """The names the stub imports: bliptk's public names (lazy_loader reads the same imports)."""
    names = []
    for node in ast.parse(stub.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.ImportFrom):
            names += [alias.asname or alias.name for alias in node.names]
    return [name for name in names if not name.startswith("__")]


def link_the_page(markdown: str) -> str:
    """The first "the page" of a page's prose (outside code) as a link to it, for a reader who lands
    from a search; every other one has a tooltip (the abbreviation in ``docs/includes/``)."""
    fenced = False
    lines = markdown.split("\n")
    for number, line in enumerate(lines):
        if line.lstrip().startswith(("```", "~~~")):
            fenced = not fenced
        if fenced or line.lstrip().startswith(("|", "#", "*[")):
            continue
        # Outside inline code and links: split on backtick spans, look at the even (prose) parts.
        parts = re.split(r"(`[^`]*`)", line)
        for index in range(0, len(parts), 2):
            found = re.search(r"(?<![\[\w])([Tt]he page)\b(?![\]\w])", parts[index])
            if found:
                parts[index] = parts[index][: found.start()] + f"[{found.group(1)}]({THE_PAGE})" + parts[index][found.end() :]
                lines[number] = "".join(parts)
                return "\n".join(lines)
    return markdown


COMMAND_LINE = "guide/command-line.md"
COMMAND_GUIDES = {
    "caption": "[captioning](captioning.md), [folders](folders.md), [video](video.md), [Ray](ray.md)",
    "attention": "[cross-attention](attention.md)",
    "explain": "[explaining captions](explaining.md)",
    "score": "[confidence](confidence.md)",
    "search": "[confidence](confidence.md)",
    "embed": "[feature space](feature-space.md)",
    "map": "[feature space](feature-space.md)",
    "finetune": "[fine-tuning](finetuning.md)",
    "eval": "[evaluation](evaluation.md)",
    "eval-coco": "[evaluation](evaluation.md)",
    "export": "[ONNX](onnx.md)",
    "models": "[captioning](captioning.md#models-and-weights)",
    "info": "[captioning](captioning.md#models-and-weights)",
}
"""The guide of each command (a command the parser has and this lacks is a warning)."""


def _commands() -> dict:
    import argparse

    from bliptk.cli.main import _parser

    [subparsers] = [action for action in _parser()._actions if isinstance(action, argparse._SubParsersAction)]
    return dict(subparsers.choices)


def _cell(text: str) -> str:
    return html.escape(" ".join(str(text).split()), quote=False).replace("|", "\\|")


def _option_rows(parser) -> list[str]:
    import argparse

    rows = []
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        names = ", ".join(f"`{name}`" for name in action.option_strings) or f"`{action.metavar or action.dest}`"
        if action.option_strings and action.nargs != 0:
            names += f" `{action.metavar or action.dest.upper()}`"
        if action.choices is not None and not isinstance(action.choices, dict):
            names += "<br>" + " ".join(f"`{choice}`" for choice in action.choices)
        help_text = (action.help or "") % {"default": action.default} if action.help else ""
        default = "" if action.default in (None, False, argparse.SUPPRESS) or not action.option_strings else f"`{action.default}`"
        rows.append(f"| {names} | {default} | {_cell(help_text)} |")
    return rows


def command_tables() -> tuple[str, str]:
    """The command-line guide's two generated parts: one row per command, then each command's
    options (flags, choices, default, help), all from the parser."""
    commands = _commands()
    for name in commands:
        if name not in COMMAND_GUIDES:
            log.warning(f"{COMMAND_LINE}: command {name!r} has no guide in docs/hooks.py's COMMAND_GUIDES")
    summary = ['<div class="names-table" markdown>', "", "| command | what it does | guide |", "| --- | --- | --- |"]
    summary += [
        f"| [`bliptk {name}`](#bliptk-{name}) | {_cell(parser.description or '')} | {COMMAND_GUIDES.get(name, '')} |"
        for name, parser in commands.items()
    ]
    summary += ["", "</div>"]
    options = []
    for name, parser in commands.items():
        options += [
            f"### `bliptk {name}` {{#bliptk-{name}}}",
            "",
            _cell(parser.description or ""),
            "",
            "```text",
            parser.format_usage().strip(),
            "```",
            "",
        ]
        options += [
            '<div class="names-table" markdown>',
            "",
            "| argument | default | what it does |",
            "| --- | --- | --- |",
            *_option_rows(parser),
            "",
            "</div>",
            "",
        ]
    return "\n".join(summary), "\n".join(options)


def on_page_markdown(markdown, page, config, files):
    markdown = link_the_page(markdown)
    if page.file.src_uri == COMMAND_LINE:
        summary, options = command_tables()
        markdown = re.sub(r"<!-- commands:.*?-->", lambda _: summary, markdown)
        markdown = re.sub(r"<!-- options:.*?-->", lambda _: options, markdown)
    if page.file.src_uri == REFERENCE_INDEX:
        for name in _public_names(PUBLIC_STUB):
            if not re.search(rf"\[`{re.escape(name)}`\]\[", markdown):
                log.warning(f"{REFERENCE_INDEX} does not list bliptk.{name}: add a row that links it to its documentation")
    return markdown


def _draws_figures(notebook: Path) -> bool:
    """Whether a notebook's code draws a figure (a plot function of bliptk's or matplotlib's)."""
    code = "\n".join(
        "".join(cell["source"]) for cell in json.loads(notebook.read_text(encoding="utf-8"))["cells"] if cell["cell_type"] == "code"
    )
    return re.search(r"\bplot_\w+\(|\.plot\(|plt\.", code) is not None


def labelled_figures(content: str) -> str:
    """A notebook page's HTML with the weights said over the page and under each figure."""
    return NOTEBOOK_BANNER + IMAGE.sub(lambda image: image.group(0) + FIGURE_LABEL, content)


def on_page_content(content, page, config, files):
    source = page.file.src_uri
    if source == GALLERY and len(IMAGE.findall(content)) < len(gallery.FIGURES):
        log.warning(f"the gallery shows {len(IMAGE.findall(content))} images of its {len(gallery.FIGURES)} figures")
    if source.startswith("notebooks/") and source.endswith(".ipynb"):
        notebook = NOTEBOOKS / posixpath.basename(source)
        if notebook.name != EXERCISES:
            if not IMAGE.search(content) and _draws_figures(notebook):
                log.warning(f"{source} draws figures but its page shows none: was it executed?")
            content = labelled_figures(content)
        name = html.escape(posixpath.basename(source))
        # Material's page-action button (floated right of the title), with Material Design's download icon.
        icon = '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 24 24"><path d="M5 20h14v-2H5v2zM19 9h-4V3H9v6H5l7 7 7-7z"/></svg>'
        link = f'<a class="md-content__button md-icon" href="{name}" title="Download {name}" download>{icon}</a>'
        return link + content
    return content


def on_post_build(config):
    # mkdocs-jupyter's download copies the page's own (executed) notebook beside it: put the notebook
    # as committed there, without the build's outputs (the exercises as students get them).
    assert _scratch is not None
    for notebook in sorted(NOTEBOOKS.glob("*.ipynb")):
        target = Path(config["site_dir"]) / "notebooks" / notebook.stem / notebook.name
        if target.is_file() and notebook.name != EXERCISES:
            shutil.copyfile(notebook, target)


def on_shutdown():
    if _scratch is not None:
        shutil.rmtree(_scratch, ignore_errors=True)
