"""``bliptk models``: the model family, one row each."""

from __future__ import annotations

from ..core.models import available_models
from .arguments import EXIT_OK

HELP = "list the model family"


def add_arguments(parser) -> None:
    pass


def run(args) -> int:
    print(available_models(include_test=True))
    return EXIT_OK
