"""Accuracy, NLL, ECE (15 bins) and Brier of each run in RUNS and of their ensemble (mean of softmax).

Each run is evaluated with its own weights and BN statistics on --split; the runs may differ in
architecture but must share the data. Writes OUT/run.json (the metrics of every run and, for several,
of their ensemble).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from .. import metrics as M
from ..config import option, replace, require
from ..engine.evaluate import predict_probs
from ..rundir import RunDir, load_runs, read_result, run_method

INPUTS = {"metavar": "RUNS", "nargs": -1}


@dataclass
class Config:
    """The runs' metrics on one split."""

    split: str = option("test", "The split to evaluate on.", choices=("test", "train"))
    device: str = "auto"

    def check(self) -> None:
        require(self.split in ("test", "train"), "--split must be test or train")


def format_table(rows: dict[str, dict[str, float]], cols=("accuracy", "nll", "ece", "brier")) -> str:
    """Rows of metrics as an aligned text table."""
    w = max(len(k) for k in rows) if rows else 4
    head = f"{'':<{w}}  " + "  ".join(f"{c:>9}" for c in cols)
    lines = [head] + [f"{k:<{w}}  " + "  ".join(f"{v.get(c, float('nan')):>9.4f}" for c in cols)
                      for k, v in rows.items()]
    return "\n".join(lines)


def fit(config: Config, inputs, run_dir: RunDir, *, quiet: bool = False) -> dict:
    """Metrics of each run and of their ensemble; writes run.json."""
    require(bool(inputs), "give at least one run directory")
    runs = [str(r) for r in inputs]
    loaded = load_runs(runs, device=config.device, same_architecture=False)
    rows, probs = {}, []
    for r in loaded:
        p, y = predict_probs(r.model, r.vector, getattr(r.data, config.split))
        probs.append(p)
        rows[str(r.path)] = M.classification_metrics(p, y)
    if len(loaded) > 1:
        rows[f"ensemble ({len(loaded)})"] = M.classification_metrics(torch.stack(probs).mean(0), y)
    return run_dir.finish({"split": config.split, "runs": runs, "metrics": rows, "ece_bins": M.ECE_BINS})


def summary(info: dict) -> str:
    return "\n" + format_table(info["metrics"])


def load(path: str | Path, device=None) -> dict:
    """run.json of an eval run: ``metrics`` per run (and of the ensemble), ``split``, ``runs``."""
    return read_result(path, "eval")


def evaluate(runs, config: Config | None = None, out: str | Path = "runs/eval", *, quiet: bool = False,
             fresh: bool = False, **overrides) -> dict:
    """Python API: ``evaluate(["runs/m0", "runs/m1"], out="runs/eval")``. Returns run.json's contents."""
    return run_method(sys.modules[__name__], replace(config or Config(), **overrides), [str(r) for r in runs], out,
                      quiet=quiet, fresh=fresh)


__all__ = ["Config", "evaluate", "fit", "format_table", "load", "summary"]
