"""Which figures each method's run directory gets: method name -> drawing function.

A drawing function takes the run's run.json contents and its directory (for the arrays it saved) and
writes PNG files there; it never imports a method.
"""

from __future__ import annotations

import importlib
from pathlib import Path

# method -> "module:function"
FIGURES: dict[str, str] = {}


def draw(method: str, result: dict, out) -> list[Path]:
    """Draw the figures of a finished run of `method` into `out` (nothing for methods without figures)."""
    target = FIGURES.get(method)
    if target is None:
        return []
    module, func = target.split(":")
    return list(getattr(importlib.import_module(module), func)(result, Path(out)) or [])
