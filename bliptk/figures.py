"""Figures for bliptk's plot functions."""

from __future__ import annotations

__all__ = ["new_figure"]


def new_figure(**figure_options):
    """A new matplotlib figure that Jupyter displays once, when returned from a cell.

    The figure is made through pyplot, so that Jupyter's inline backend (and its figure
    formatter) is set up, then closed in pyplot at once: it is not kept in pyplot's list of
    open figures, not drawn a second time at the end of the cell, and never shown by
    ``plt.show()``. Saving and drawing on it work as usual.
    """
    import matplotlib.pyplot as plt

    figure = plt.figure(**figure_options)
    plt.close(figure)
    return figure
