"""The commands of ``bliptk``, registered here by one row each: the command's name and its module,
which has ``HELP`` (one line), ``add_arguments(parser)`` and ``run(args) -> int`` (the exit code).
Adding a command is that module and one ``register_command(...)``. The modules import only what
their flags need; what needs torch is imported when the command runs."""

from __future__ import annotations

import importlib
from types import ModuleType

__all__ = ["COMMANDS", "command_module", "register_command"]

COMMANDS: dict[str, str] = {}
"""Each command's module, by name, in the order ``bliptk --help`` lists them."""


def register_command(name: str, module: str) -> None:
    """Make ``bliptk NAME`` run ``module``."""
    COMMANDS[name] = module


for _name, _module in (
    ("caption", "bliptk.cli.caption"),
    ("attention", "bliptk.cli.attention"),
    ("explain", "bliptk.cli.explain"),
    ("score", "bliptk.cli.score"),
    ("search", "bliptk.cli.search"),
    ("embed", "bliptk.cli.embed"),
    ("map", "bliptk.cli.feature_map"),
    ("finetune", "bliptk.cli.finetune"),
    ("eval", "bliptk.cli.evaluate"),
    ("eval-coco", "bliptk.cli.evaluate_coco"),
    ("export", "bliptk.cli.export"),
    ("models", "bliptk.cli.models"),
    ("info", "bliptk.cli.info"),
):
    register_command(_name, _module)


def command_module(name: str) -> ModuleType:
    """The module of a registered command."""
    return importlib.import_module(COMMANDS[name])
