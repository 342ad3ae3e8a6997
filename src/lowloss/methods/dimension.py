"""Add connectors between RUN_A and RUN_B one at a time until the complex's volume collapses (paper's figure 5).

Both modes form a simplex with all connectors trained so far (SPRO). After each connector: the complex's
log-volume, the newest connector's relative height (its distance from the affine hull of the other
vertices over the RMS edge: Vol_k = Vol_{k-1} h / k) and the mean train accuracy of --eval-samples
sampled models. The volume has collapsed when the log-volume is -inf or the relative height falls below
--collapse: the new point found no new direction of low loss. The collapsing connector is recorded, then
growing stops; the dimension of the low-loss region is at least the number of connectors before it.

Writes OUT/simplex.safetensors, OUT/run.json (connectors, log_volume, sample_train_accuracy,
sample_train_loss, relative_height: lists of equal length; collapsed_at, dimension_lower_bound),
OUT/dimension.png, OUT/structure.npz and OUT/structure.png. --resume continues an interrupted run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch

from ..config import option, require
from ..engine.evaluate import evaluate_vectors
from ..rundir import RunDir, load_runs, read_result
from ..subspaces.simplex import Complex, pairwise_sq_dists, simplex_log_volume
from .spro import (
    PROGRESS_FILE,
    SIMPLEX_FILE,
    STRUCTURE_FILE,
    ConnectingSproConfig,
    SproConfig,
    grow_complex,
    load_complex,
    mode_connector_structure,
    sample_vectors,
    save_complex,
    save_structure,
    spro_fields,
)

INPUTS = {"metavar": "RUN_A RUN_B", "nargs": 2}


@dataclass
class Config(ConnectingSproConfig):
    """Connectors between two modes until the volume collapses."""

    max_connectors: int = option(12, "Stop after this many connectors if the volume has not collapsed.")
    eval_samples: int = option(10, "Sampled models whose train accuracy is recorded after each connector.")
    collapse: float = option(1e-3, "The volume has collapsed when the new connector's height over the other "
                                   "vertices, relative to the RMS edge, falls below this (or the log-volume is "
                                   "-inf).")
    seed: int = 0
    device: str = "auto"

    def check(self) -> None:
        super().check()
        require(self.max_connectors >= 1, f"--max-connectors must be at least 1 (got {self.max_connectors})")
        require(self.eval_samples >= 1, f"--eval-samples must be at least 1 (got {self.eval_samples})")
        require(self.collapse >= 0, f"--collapse must be >= 0 (got {self.collapse})")


def relative_height(cplx: Complex) -> float:
    """Height of the newest vertex over the face of the other vertices, divided by the simplex's RMS edge.

    From Vol_k = Vol_{k-1} h / k; the smallest over the simplexes holding the newest vertex. 0 when the new
    vertex lies in the affine hull of the others (the volume has collapsed), ~0.7 for a regular simplex.
    """
    new = cplx.num_vertices - 1
    v = cplx.vertices().detach()
    out = math.inf
    for s in cplx.simplexes:
        if new not in s:
            continue
        k = len(s) - 1
        rest = [i for i in s if i != new]
        lv, lv0 = float(simplex_log_volume(v[list(s)])), float(simplex_log_volume(v[rest]))
        if not math.isfinite(lv) or not math.isfinite(lv0):
            return 0.0
        d = pairwise_sq_dists(v[list(s)])
        rms = math.sqrt(float(d.sum()) / (len(s) * k))
        out = min(out, math.exp(lv - lv0) * k / rms)
    return out if math.isfinite(out) else 0.0


def check_inputs(config: Config, inputs) -> None:
    """Exactly two modes."""
    require(len(inputs or ()) == 2, f"dimension takes two runs, RUN_A and RUN_B (got {len(inputs or ())})")


def fit(config: Config, inputs, run_dir: RunDir, *, quiet: bool = False) -> dict:
    """Grow connectors until the volume collapses (or --max-connectors). Returns run.json's contents."""
    config.check()
    check_inputs(config, inputs)
    runs = load_runs(inputs, device=config.device)
    model, data = runs[0].model, runs[0].data
    structure = mode_connector_structure(2, config.max_connectors)

    def on_vertex(cplx, i):
        vecs = sample_vectors(cplx, config.eval_samples, torch.Generator().manual_seed(config.seed * 31 + i))
        res = evaluate_vectors(model, vecs, data, splits=("train",), quiet=True)
        return {"sample_train_accuracy": float(1 - res["train_error"].mean()),
                "sample_train_loss": float(res["train_loss"].mean()), "relative_height": relative_height(cplx)}

    def stop(cplx, logs):
        return not math.isfinite(logs[-1]["log_volume"]) or logs[-1]["relative_height"] < config.collapse

    grown = grow_complex(model, data, [r.vector for r in runs], structure, config.max_connectors,
                         SproConfig(**spro_fields(config)), seed=config.seed, out=run_dir.path,
                         resume=run_dir.resuming, quiet=quiet, on_vertex=on_vertex, stop=stop, desc="dimension")
    logs = grown.logs
    collapsed = next((j + 1 for j, lg in enumerate(logs) if lg.get("stopped")), None)
    save_complex(run_dir.file(SIMPLEX_FILE), grown.complex, inputs)
    save_structure(run_dir.file(STRUCTURE_FILE), grown.complex)
    return run_dir.finish({"connectors": list(range(1, len(logs) + 1)),
                           "log_volume": [lg["log_volume"] for lg in logs],
                           "sample_train_accuracy": [lg["sample_train_accuracy"] for lg in logs],
                           "sample_train_loss": [lg["sample_train_loss"] for lg in logs],
                           "relative_height": [lg["relative_height"] for lg in logs],
                           "collapsed_at": collapsed,
                           "dimension_lower_bound": (collapsed - 1) if collapsed else len(logs),
                           "vertex_logs": logs}, remove=(PROGRESS_FILE,))


def summary(result: dict) -> str:
    lines = [f"{len(result['connectors'])} connectors between two modes"]
    for n, lv, h, acc in zip(result["connectors"], result["log_volume"], result["relative_height"],
                             result["sample_train_accuracy"]):
        lines.append(f"  {n:>2} connectors: log-volume {lv:9.3f}  relative height {h:.2e}  "
                     f"sample train acc {100 * acc:.2f}%")
    lines.append(f"dimension >= {result['dimension_lower_bound']}"
                 + (f" (collapse at connector {result['collapsed_at']})" if result["collapsed_at"] else
                    " (no collapse within --max-connectors)"))
    return "\n".join(lines)


def load(path: str | Path, device=None):
    """The complex of a finished dimension run: (:class:`~lowloss.subspaces.simplex.Complex`, RUN_A's
    :class:`~lowloss.rundir.Run`, whose module and data the vertices belong to)."""
    read_result(path, "dimension", needs=(SIMPLEX_FILE,))
    return load_complex(path, device=device)


__all__ = ["Config", "INPUTS", "check_inputs", "fit", "load", "relative_height", "summary"]
