"""Figures (matplotlib, Agg backend). Every figure is written atomically as PNG."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from ..utils import atomic_path  # noqa: E402


def save_figure(fig, path: str | Path, dpi: int = 130) -> Path:
    """Save `fig` as PNG (atomically: a half-written figure is never left behind) and close it."""
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight", format=path.suffix.lstrip(".") or "png")
    plt.close(fig)
    return path


__all__ = ["plt", "save_figure"]
