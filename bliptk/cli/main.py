"""The ``bliptk`` command (also ``python -m bliptk``): the parser built from the registered commands
([`bliptk.cli.commands`][bliptk.cli.commands]), and how a command's end is said.

Exit codes: 0 success; 1 some inputs failed (each reported), or an unexpected error (a bug,
reported in one line; ``--debug`` shows its traceback); 2 a caller's mistake, a bad input, a broken
file or a missing extra (every [`BliptkError`][bliptk.core.errors.BliptkError]); 130 interrupted (Ctrl-C; finished
records are kept); 141 the output pipe closed (``bliptk info --arrays | head``).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import re
import sys
import warnings

from ..core.errors import BliptkError, OutputError, RandomWeightsWarning, first_line
from ..core.optional import missing_dependency
from ..store.outputs import reason
from .arguments import EXIT_BUG, EXIT_INTERRUPTED, EXIT_PIPE_CLOSED, EXIT_USAGE, Parser, one_line
from .commands import COMMANDS, command_module

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="bliptk",
        description="BLIP image and video captioning: caption, draw where each word looked and why, embed, map, fine-tune, evaluate, "
        "export to ONNX.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log what bliptk does (and show an unexpected error's traceback)")
    parser.add_argument("--debug", action="store_true", help="show an unexpected error's traceback")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        module = command_module(name)
        module.add_arguments(commands.add_parser(name, help=module.HELP, description=_first_paragraph(module.__doc__)))
    return parser


def _first_paragraph(text: str | None) -> str | None:
    """A command module's docstring's first paragraph as its ``--help`` description: on one line,
    in plain text (the documentation's links and code marks taken out)."""
    if not text:
        return None
    paragraph = " ".join(text.strip().split("\n\n")[0].split())
    paragraph = re.sub(r"^``bliptk [\w-]+``: ", "", paragraph)
    paragraph = re.sub(r"\[`([^`]+)`\]\[[^\]]+\]", r"\1", paragraph)  # [`name`][bliptk.x.name] -> name
    return paragraph.replace("``", "")


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"bliptk: warning: {message}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    parser = _parser()
    Parser.argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(name)s: %(message)s")
    stdout = sys.stdout
    with warnings.catch_warnings():
        warnings.showwarning = _show_warning
        warnings.simplefilter("always", RandomWeightsWarning)  # once per captioner, which says it once
        try:
            sys.stdout = _Output(stdout)
            code = command_module(args.command).run(args)
            sys.stdout.flush()
            return code
        except BliptkError as error:
            if isinstance(error, _StdoutError):
                _silence_stdout()
            print(f"bliptk: error: {one_line(error.command_line_message())}", file=sys.stderr)
            return EXIT_USAGE
        except KeyboardInterrupt:
            print("bliptk: interrupted", file=sys.stderr)
            return EXIT_INTERRUPTED
        except BrokenPipeError:  # the reader went away (| head): stop quietly
            _silence_stdout()
            return EXIT_PIPE_CLOSED
        except Exception as error:  # a bug: one line, the traceback on request
            return _unexpected(error, args)
        finally:
            sys.stdout = stdout


def _unexpected(error: Exception, args) -> int:
    missing = missing_dependency(error) if isinstance(error, ModuleNotFoundError) else None
    if missing is not None:  # a package that a feature imports as it runs is not installed
        print(f"bliptk: error: {missing}", file=sys.stderr)
        return EXIT_USAGE
    if args.debug or args.verbose:
        import traceback

        traceback.print_exc()
    print(
        f"bliptk: internal error: {type(error).__name__}: {one_line(first_line(error))}. This is a bug in bliptk; "
        "please report it, with the output of the same command run with --debug",
        file=sys.stderr,
    )
    return EXIT_BUG


class _StdoutError(OutputError):
    """Standard output cannot be written (a full disk behind it, a closed terminal)."""


class _Output:
    """Standard output, whose failures are output errors of the command, not bugs (a closed pipe
    stays a BrokenPipeError, which ends the command quietly)."""

    def __init__(self, stream):
        self.stream = stream

    def write(self, text: str) -> int:
        try:
            return self.stream.write(text)
        except BrokenPipeError:
            raise
        except OSError as problem:
            raise _StdoutError(f"cannot write to standard output ({reason(problem)})") from None

    def flush(self) -> None:
        try:
            self.stream.flush()
        except BrokenPipeError:
            raise
        except OSError as problem:
            raise _StdoutError(f"cannot write to standard output ({reason(problem)})") from None

    def __getattr__(self, name: str):
        return getattr(self.stream, name)


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so that flushing it at exit raises no second BrokenPipeError."""
    with contextlib.suppress(OSError, ValueError):  # no real stdout (pytest's capture)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
