"""What the ``bliptk`` commands share: their exit codes, the parser whose errors are one line, the
flags built from options dataclasses (decoding, video, folder jobs, fine-tuning, the model's
[`LoadOptions`][bliptk.captioning.runtimes.LoadOptions], an explanation method's options), their outputs,
and how they load a model."""

from __future__ import annotations

import argparse
import importlib
import json
import re
from dataclasses import MISSING, fields
from pathlib import Path

from ..captioning.runtimes import RUNTIMES, LoadOptions
from ..core.decoding import DecodingOptions
from ..core.errors import InvalidOptionError
from ..core.models import DEFAULT_MODEL
from ..core.optional import missing_dependency
from ..store.outputs import Output, claim

__all__ = [
    "EXIT_BUG",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_PIPE_CLOSED",
    "EXIT_SOME_FAILED",
    "EXIT_USAGE",
    "Parser",
    "check_prompts",
    "figure_output",
    "folder_images",
    "grid_arguments",
    "load_model",
    "load_options",
    "model_arguments",
    "one_line",
    "option_arguments",
    "options_from",
    "out_arguments",
    "output_file",
    "figure_title",
    "save_figure",
    "torch_module",
]

EXIT_OK, EXIT_SOME_FAILED, EXIT_USAGE, EXIT_INTERRUPTED, EXIT_PIPE_CLOSED = 0, 1, 2, 130, 141
EXIT_BUG = 1  # an unexpected error: a bug of bliptk's, reported in one line (the traceback with --debug)


class Parser(argparse.ArgumentParser):
    """argparse, whose usage errors are one line, as bliptk's own: ``bliptk: error: ...`` and where
    to read more (exit 2), with a hint for a file whose name starts with a dash. A negative number
    is a value, in any notation (``--lr -1e-3``, which argparse alone takes for a flag), so that the
    option's own check says what is wrong with it."""

    argv: list[str] = []

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._negative_number_matcher = re.compile(r"^-(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$|^-(inf|nan)$", re.IGNORECASE)

    def error(self, message: str):
        dashed = [word for word in self.argv if word.startswith("-") and len(word) > 1 and Path(word).exists()]
        if dashed:
            message += f" ({dashed[0]} is a file: write ./{dashed[0]}, or put it after -- at the end of the command)"
        self.exit(EXIT_USAGE, f"bliptk: error: {message}; see {self.prog} --help\n")


# --- flags from options dataclasses -----------------------------------------------------------------


def option_arguments(
    parser: argparse.ArgumentParser,
    options: type,
    names: tuple[str, ...] | None = None,
    unset: tuple[str, ...] = (),
    defaults: dict | None = None,
) -> None:
    """One flag per field of an options dataclass (or of ``names``), with its type, default,
    choices and help from the field: ``max_new_tokens`` becomes ``--max-new-tokens``, a bool a
    switch. A field's ``metadata`` may name its ``flag`` (None: no flag), ``aliases``,
    ``choices`` (or a function that gives them), ``metavar`` and ``per_input`` (False: no flag for a job of one caption per input).
    The flags of ``unset`` default to None, so that a command can tell whether they were given;
    ``defaults`` replaces a field's default (a command's own)."""
    for option in fields(options):
        flag = option.metadata.get("flag", "--" + option.name.replace("_", "-"))
        wanted = option.metadata.get("per_input", True) if names is None else option.name in names
        if flag is None or not wanted:
            continue
        default = (defaults or {}).get(option.name, option.default if option.default is not MISSING else None)
        shown = "" if default is None or default is False else f" (default {default})"
        help = option.metadata.get("help", "") + shown
        if str(option.type) == "bool":
            parser.add_argument(flag, dest=option.name, action="store_true", help=help)
            continue
        kind = next(t for t in (int, float, str) if t.__name__ in str(option.type))
        parser.add_argument(
            flag,
            *option.metadata.get("aliases", ()),
            dest=option.name,
            type=kind,
            default=None if option.name in unset else default,
            choices=_choices(option.metadata.get("choices")),
            metavar=option.metadata.get("metavar"),
            help=help,
        )


def _choices(choices):
    """A field's choices: a tuple, or a function of the registry they come from (read when the flag is made)."""
    return choices() if callable(choices) else choices


def options_from(args, options: type = DecodingOptions, **given):
    """The options dataclass ``options`` of the flags [`option_arguments()`][bliptk.cli.arguments.option_arguments] added
    (``given`` replacing fields)."""
    values = {option.name: getattr(args, option.name) for option in fields(options) if hasattr(args, option.name)}
    return options(**{**values, **given})


# --- the model -----------------------------------------------------------------------------------------


def model_arguments(parser: argparse.ArgumentParser, *, runtimes: tuple[str, ...] = ("torch",), dtype: bool = True) -> None:
    """The model flags, one per field of [`LoadOptions`][bliptk.captioning.runtimes.LoadOptions] that a
    runtime the command works with takes (``--model``, ``--random-weights``, ``--device``,
    ``--dtype`` and ``--compile`` (with ``dtype``), ``--threads``...), with the field's help."""
    taken = (
        {"model", "dtype"}
        | {name for runtime in runtimes for name in RUNTIMES[runtime].options}
        | ({"runtime"} if len(runtimes) > 1 else set())
    )
    for option in fields(LoadOptions):
        flag = option.metadata.get("flag")
        if flag is None or option.name not in taken or (option.name in ("dtype", "compile") and not dtype):
            continue  # without dtype: the model as it is trained or exported, in float32, eager
        help = option.metadata["help"]
        if option.name == "model":
            also = "".join(RUNTIMES[runtime].models for runtime in runtimes)
            parser.add_argument(flag, default=DEFAULT_MODEL, help=f"{help}{also} (default {DEFAULT_MODEL})")
        elif option.name == "pretrained":  # the flag says the opposite: --random-weights
            parser.add_argument(flag, dest="random_weights", action="store_true", help=help)
        elif option.type == "bool":
            parser.add_argument(flag, action="store_true", help=help)
        elif option.name == "dtype":
            choices = tuple(dict.fromkeys(d for runtime in runtimes for d in RUNTIMES[runtime].dtypes))
            parser.add_argument(flag, default=None, choices=choices, help=". ".join(RUNTIMES[runtime].dtype_help for runtime in runtimes))
        elif option.name == "runtime":
            parser.add_argument(flag, default=None, choices=tuple(runtimes), help=help)
        else:
            kind = int if "int" in str(option.type) else str
            parser.add_argument(flag, dest=option.name, type=kind, default=None, help=help)


def load_options(args) -> LoadOptions:
    """The [`LoadOptions`][bliptk.captioning.runtimes.LoadOptions] the model flags give."""
    given = {
        name: getattr(args, name) for name in ("runtime", "dtype", "device", "compile", "threads") if getattr(args, name, None) is not None
    }
    return LoadOptions(model=args.model, pretrained=not getattr(args, "random_weights", False), **given)


def load_model(args, runtimes: tuple[str, ...] = ("torch",)):
    """The captioner the model flags name, in the runtime they choose (``bliptk.load``), which must
    be one the command works with (an ONNX export captions only)."""
    from ..captioning.runtimes import load, runtime_of

    options = load_options(args)
    runtime = runtime_of(options)
    if runtime.name not in runtimes:
        raise InvalidOptionError(f"{args.model} is {runtime.described()}, which captions only; give the model itself for {args.command}")
    return load(options)


def torch_module(name: str):
    """A module of bliptk's that needs torch (``"model.loading"``); without torch, the error that
    says what to install."""
    try:
        return importlib.import_module(f"bliptk.{name}")
    except ModuleNotFoundError as error:
        missing = missing_dependency(error)
        if missing is None:
            raise
        raise missing from None


def model_tokenizer(args):
    """The tokenizer of the model ``--model`` names, without loading it: its folder's
    ``vocab.txt`` where it has one, else the vocabulary that ships with bliptk."""
    from ..core.tokenizer import load_tokenizer

    vocabulary = Path(args.model) / "vocab.txt"
    return load_tokenizer(vocabulary if vocabulary.is_file() else None)


def check_prompts(args, options: DecodingOptions) -> None:
    """Check the prompt against the vocabulary the model will use (it fits the decoder; characters
    outside the vocabulary are warned about), before any model loads."""
    from ..core.decoding import prompt_ids

    prompt_ids(model_tokenizer(args), options.prompt_text, options.max_new_tokens, 512)


def check_captions(args, captions: list[str], what: str = "caption") -> None:
    """Refuse an empty caption or query, or one too long for the decoder after ``--prompt``,
    before any model loads (``what``: ``"caption"`` or ``"query"``)."""
    from ..core.decoding import DEFAULT_PROMPT
    from ..core.scoring import caption_ids

    tokenizer = model_tokenizer(args)
    prompt = DEFAULT_PROMPT if args.prompt is None else args.prompt
    for index, caption in enumerate(captions):
        caption_ids(tokenizer, caption, prompt, 512, f"{what} {index + 1}" if len(captions) > 1 else f"the {what}")


# --- outputs -------------------------------------------------------------------------------------------


def out_arguments(parser, what: str) -> None:
    parser.add_argument("--out", required=True, help=what)
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists")


def grid_arguments(parser) -> None:
    """The options of a grid of per-token maps."""
    parser.add_argument("--raw", action="store_true", help="draw the raw maps instead of overlays on the image")
    parser.add_argument("--columns", type=int, default=6, help="panels per row (default 6)")


def output_file(args, suffix: str = "") -> Output:
    """The --out file of a command that writes one, claimed before any model loads (locked against
    every other bliptk process, its folder checked), replaced only with --overwrite."""
    if args.out == "-":
        raise InvalidOptionError(f"--out -: {args.command} writes a file, not standard output; name the file")
    out = Path(args.out)
    if suffix and out.suffix != suffix:  # as np.savez names it
        out = out.with_name(out.name + suffix)
    return claim(out, replace=args.overwrite)


def figure_output(args) -> Output:
    """The --out PNG of a figure command: a name without an extension is written as named, one
    with another extension (.jpg, .pdf) refused, since the file is a PNG with its provenance in it."""
    output = output_file(args)  # the lock first: an output another process holds is said to be so, whatever its name
    name = output.path.name
    suffix = (output.path.suffix or (name if name.startswith(".") else "")).lower()  # ".jpg" is a JPEG's name, not a hidden PNG
    if suffix and suffix != ".png":
        output.close()
        raise InvalidOptionError(
            f"--out {one_line(args.out)}: figures are written as PNG, with how they were made in their metadata; name the file .png"
        )
    return output


def save_figure(out: Output, figure, provenance: dict, what: str) -> None:
    """Write a figure as PNG, whole or not at all, titled with what it shows and how it was made
    ([`figure_title()`][bliptk.cli.arguments.figure_title]), with the provenance in its metadata
    (the ``Description`` text chunk: model, weights, options, as JSON), sized for a page
    ([`compact_png()`][bliptk.core.figures.compact_png])."""
    from ..core.figures import compact_png, displayable, note_escapes
    from ..version import __version__

    title = figure_title(provenance, what)
    figure.suptitle(displayable(title), fontsize=9)
    note_escapes(figure, [title])
    metadata = {"Software": f"bliptk {__version__}", "Description": json.dumps(provenance)}
    png = compact_png(figure, metadata=metadata)
    out.write(lambda path: path.write_bytes(png))


def figure_title(provenance: dict, what: str) -> str:
    """A figure's title: the caption it explains (when it has one), then what it shows, the model
    and its weights, random ones said plainly: ``"a photography of a dog\nGrad-CAM, layer 6 ·
    ViT-B/16 · RANDOM WEIGHTS (seed 0): not a trained model"``."""
    weights = provenance.get("weights") or {}
    if weights.get("source") == "random":
        said = f"RANDOM WEIGHTS (seed {weights.get('seed')}): not a trained model, its words mean nothing"
    else:
        said = "pretrained weights"
    if weights.get("dtype") not in (None, "float32"):
        said += f", {weights['dtype']}"
    caption = provenance.get("text") or provenance.get("caption")  # the text explained, prompt included, where it differs
    lines = [one_line(str(caption))] if caption else []
    return "\n".join([*lines, f"{what} · {one_line(str(provenance.get('model')))} · {said}"])


def folder_images(args) -> list[Path]:
    """The images of a command's FOLDER (with ``--recursive``, its subfolders' too).

    Raises:
        InvalidOptionError: FOLDER is no folder.
        NoInputsError: It holds no image file (saying how many its subfolders hold).
    """
    from ..core.errors import NoInputsError
    from ..core.files import image_files

    if not Path(args.folder).is_dir():
        raise InvalidOptionError(f"{args.folder}: not a folder")
    paths = image_files(args.folder, recursive=args.recursive)
    if not paths:
        raise NoInputsError(
            [f"folder {args.folder} holds no image files"], 0 if args.recursive else len(image_files(args.folder, recursive=True))
        )
    return paths


def one_line(text: str) -> str:
    """``text`` on one line: a path may hold a newline or other control characters (escaped as in
    Python, ``\\n``), or bytes that are no UTF-8 (as ``\\x..``)."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape", "backslashreplace").decode("ascii") for c in text)
