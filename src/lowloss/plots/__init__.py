"""Figures: result data in, PNG files out.

Figures are made with matplotlib's object-oriented API (``matplotlib.figure.Figure``), never through
pyplot's global state, so importing or using lowloss never switches the user's matplotlib backend and
works without a display.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.cm
import matplotlib.patches
from matplotlib.figure import Figure

from ..utils import atomic_path


class _Pyplotless:
    """The few pyplot names the figures use, without pyplot: every figure is a standalone ``Figure``."""

    cm = matplotlib.cm
    Rectangle = matplotlib.patches.Rectangle

    @staticmethod
    def figure(**kw) -> Figure:
        return Figure(**kw)

    @staticmethod
    def subplots(*args, figsize=None, **kw):
        fig = Figure(figsize=figsize)
        return fig, fig.subplots(*args, **kw)


plt = _Pyplotless()


def save_figure(fig: Figure, path: str | Path, dpi: int = 130) -> Path:
    """Save `fig` as PNG (atomically: a half-written figure is never left behind)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight", format=path.suffix.lstrip(".") or "png")
    return path


__all__ = ["plt", "save_figure"]
