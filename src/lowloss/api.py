"""Run any method by name, the way the command line and the study do: ``lowloss.run("connect", ...)``.

    run("train", out="runs/m0", epochs=5, seed=1)
    run("connect", inputs=["runs/m0", "runs/m1"], out="runs/curve", bends=2)

Each method is a module ``lowloss.methods.<name>`` with ``Config``, ``fit(config, inputs, run_dir)`` and a
loader; :func:`run` checks the config, opens the run directory (finished runs are returned as they are,
interrupted ones continue with ``resume=True``), calls ``fit`` and draws the method's figures.
"""

from __future__ import annotations

import importlib
import os
from typing import Any

from .errors import LowlossError

# command name -> method module (the module is named after the command)
METHODS: dict[str, str] = {
    "train": "lowloss.methods.train",
    "eval": "lowloss.methods.eval",
    "connect": "lowloss.methods.connect",
    "plane": "lowloss.methods.plane",
    "ensemble": "lowloss.methods.ensemble",
    "fge": "lowloss.methods.fge",
    "sse": "lowloss.methods.sse",
    "swa": "lowloss.methods.swa",
    "swag": "lowloss.methods.swag",
    "budget": "lowloss.methods.budget",
    "simplex": "lowloss.methods.simplex",
    "espro": "lowloss.methods.espro",
    "complex": "lowloss.methods.complex",
    "dimension": "lowloss.methods.dimension",
    "calibrate": "lowloss.methods.calibrate",
    "shift": "lowloss.methods.shift",
    "regression": "lowloss.methods.regression",
    "spirals": "lowloss.methods.spirals",
    "vardrop": "lowloss.methods.vardrop",
    "animate": "lowloss.methods.animate",
    "width": "lowloss.methods.width",
    "align": "lowloss.methods.align",
    "sightsee": "lowloss.methods.sightsee",
}


def method_module(name: str):
    """The module of a method by its command name (a one-line error for an unknown name)."""
    if name not in METHODS:
        raise LowlossError(f"unknown method '{name}'; valid: {', '.join(METHODS)}")
    return importlib.import_module(METHODS[name])


def run(name: str, config=None, inputs=None, out: str | os.PathLike | None = None, *, resume: bool = False,
        fresh: bool = False, quiet: bool = False, plots: bool = True, fit_kwargs: dict | None = None,
        **overrides: Any) -> dict:
    """Run method `name` into `out` (default ``runs/<name>``); `overrides` change fields of `config`
    (default: the method's defaults). Returns the run's run.json contents."""
    from .config import replace
    from .rundir import run_method

    mod = method_module(name)
    config = replace(config if config is not None else mod.Config(), **overrides)
    out = out if out is not None else f"runs/{name}"
    result = run_method(mod, config, inputs, out, resume=resume, fresh=fresh, quiet=quiet, **(fit_kwargs or {}))
    if plots and result and "method" in result:  # a finished run (an early stop returns no run.json)
        from .plots.figures import draw

        draw(name, result, out)
    return result


def connect(model, w_a, w_b, data, *, out=None, plots: bool = True, **kw):
    """:func:`lowloss.methods.connect.connect` (a curve between two vectors of any module) that also draws
    curve.png and ensemble.png into `out`, as ``lowloss connect`` does."""
    from .methods.connect import connect as connect_vectors

    res = connect_vectors(model, w_a, w_b, data, out=out, **kw)
    if plots and out is not None:
        from .plots.figures import draw

        draw("connect", res.evaluation, out)
    return res


__all__ = ["METHODS", "connect", "method_module", "run"]
