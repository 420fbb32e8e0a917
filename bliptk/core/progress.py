"""bliptk's progress bars: ``tqdm.auto`` (a widget in a notebook, text in a terminal), with one
change in a notebook: the bar's output is shown by bliptk and shown again when the bar closes.

A notebook saves, for viewers without widgets (a notebook on GitHub, nbconvert, the documentation
site), the text a widget had when it was first shown: 0%. Shown again as it closed, a saved
notebook reads the bar's final state (``100% 2/2``)."""

from __future__ import annotations

from typing import Any

__all__ = ["progress_bar"]


def progress_bar(**options) -> Any:
    """A ``tqdm.auto`` progress bar whose notebook output ends in its final state.

    Args:
        **options: What ``tqdm`` takes (``total``, ``desc``, ``unit``, ``disable``, ``initial``).

    Returns:
        The bar (a context manager too; close it, or leave the ``with`` block, when done).
    """
    from tqdm.auto import tqdm
    from tqdm.notebook import tqdm_notebook

    if not issubclass(tqdm, tqdm_notebook) or options.get("disable"):
        return tqdm(**options)
    return _notebook_bar_class()(**options)


_NOTEBOOK_BAR: type | None = None


def _notebook_bar_class() -> type:
    global _NOTEBOOK_BAR
    if _NOTEBOOK_BAR is None:
        from tqdm.notebook import tqdm_notebook

        class NotebookBar(tqdm_notebook):
            """tqdm's notebook bar, its output shown through a display handle that is updated on close."""

            def __init__(self, **options):
                super().__init__(display=False, **options)
                from IPython.display import display

                self.shown = display(self.container, display_id=True)  # None outside a kernel

            def close(self):
                super().close()
                if getattr(self, "shown", None) is not None:
                    self.shown.update(self.container)  # its text now the closed bar's
                    self.shown = None

        _NOTEBOOK_BAR = NotebookBar
    return _NOTEBOOK_BAR
