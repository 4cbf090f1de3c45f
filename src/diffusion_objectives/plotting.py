"""Figures written to files, with matplotlib's object-oriented API: no pyplot global state, no GUI backend
(a :class:`~matplotlib.figure.Figure` saves through the Agg canvas), nothing to close."""

from typing import Any

import matplotlib
from matplotlib.figure import Figure

__all__ = ["subplots", "colormap"]


def subplots(nrows: int = 1, ncols: int = 1, *, figsize: tuple[float, float], **kwargs: Any) -> tuple[Figure, Any]:
    """``(figure, axes)`` as :func:`matplotlib.pyplot.subplots` returns them (``kwargs``: ``sharex``,
    ``squeeze``, ...), for a figure that is only saved."""
    fig = Figure(figsize=figsize)
    return fig, fig.subplots(nrows, ncols, **kwargs)


def colormap(name: str):
    """A registered colormap, ``colormap("viridis")(0.3)`` -> RGBA."""
    return matplotlib.colormaps[name]
