"""How bliptk tells its user something: a plain line of output in a notebook (where standard error
shows as a box, and a warning repeats a line of bliptk's source), one line on standard error
elsewhere, as a command line tool speaks; and a warning that points at the user's own line."""

from __future__ import annotations

import os
import sys
import warnings

__all__ = ["in_notebook", "say", "warn"]

_PACKAGE = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep


def warn(message: str, category: type[Warning]) -> None:
    """``warnings.warn`` at the caller's line: the first frame outside bliptk, however deep inside
    bliptk the warning is raised (so that it names the user's call, not a line of bliptk)."""
    frame = sys._getframe(0)
    level = 1
    while frame.f_back is not None and frame.f_code.co_filename.startswith(_PACKAGE):
        frame = frame.f_back
        level += 1
    warnings.warn(message, category, stacklevel=level)


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
