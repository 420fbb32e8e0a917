"""How bliptk tells its user something that is no warning: a plain line of output in a notebook
(where standard error shows as a box, and a warning repeats a line of bliptk's source), one line
on standard error elsewhere, as a command line tool speaks."""

from __future__ import annotations

import sys

__all__ = ["in_notebook", "say"]


def in_notebook() -> bool:
    """Whether this runs in a Jupyter kernel."""
    shell = sys.modules["IPython"].get_ipython() if "IPython" in sys.modules else None
    return shell is not None and hasattr(shell, "kernel")


def say(message: str) -> None:
    """One line for the user: printed in a notebook, on standard error elsewhere (``bliptk: ...``)."""
    if in_notebook():
        print(message, flush=True)
    else:
        print(f"bliptk: {message}", file=sys.stderr, flush=True)
