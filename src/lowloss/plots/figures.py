"""Which figures each method's run directory gets: method name -> drawing function.

A drawing function takes the run's run.json contents and its directory (for the arrays it saved) and
writes PNG files there; it never imports a method.
"""

from __future__ import annotations

import importlib
from pathlib import Path

# method -> "module:function"
FIGURES: dict[str, str] = {
    "budget": "lowloss.plots.budget:draw_budget",
    "calibrate": "lowloss.plots.uncertainty:draw_calibration",
    "shift": "lowloss.plots.uncertainty:draw_shift",
    "regression": "lowloss.plots.uncertainty:draw_regression",
    "spirals": "lowloss.plots.uncertainty:draw_spirals",
    "vardrop": "lowloss.plots.vardrop:draw_vardrop",
    "connect": "lowloss.plots.curves:draw_connect",
    "plane": "lowloss.plots.plane:draw_plane",
    "simplex": "lowloss.plots.simplex:draw_simplex",
    "complex": "lowloss.plots.simplex:draw_complex",
    "dimension": "lowloss.plots.simplex:draw_dimension",
    "animate": "lowloss.plots.animate:draw_animate",
    "width": "lowloss.plots.width:draw_width",
    "align": "lowloss.plots.paths:draw_align",
    "sightsee": "lowloss.plots.paths:draw_sightsee",
}


def draw(method: str, result: dict, out) -> list[Path]:
    """Draw the figures of a finished run of `method` into `out` (nothing for methods without figures)."""
    target = FIGURES.get(method)
    if target is None:
        return []
    module, func = target.split(":")
    return list(getattr(importlib.import_module(module), func)(result, Path(out)) or [])
