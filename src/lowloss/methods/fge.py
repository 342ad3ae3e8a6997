"""Fast Geometric Ensembling (Garipov et al. 2018): a triangular cyclic lr from RUN's weights, a snapshot at
every cycle's lowest lr.

With the position in the cycle s in [0, 1): lr(s) = (1-2s) a1 + 2s a2 for s < 0.5 and (2s-1) a1 + (2-2s) a2
otherwise (a1 = --lr-high, a2 = --lr-low); cycles of --cycle-epochs epochs (2-4 in the paper; fractions of
an epoch allowed, at least 2 optimiser steps). The schedule is a function of the optimiser step t
(s = (t mod C) / C with C steps per cycle) and the snapshot is taken right after the step with the cycle's
lowest learning rate. --momentum, --wd and --batch-size default to the base run's.

Writes OUT/members.safetensors (one vector plus BN running statistics per snapshot) and OUT/run.json
(snapshot steps and lrs, history, member and ensemble test metrics). Evaluate it with others using
`lowloss ensemble OUT ...`. An interrupted run continues exactly with --resume.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from .. import params as P
from ..config import option, replace, require
from ..data import Dataset
from ..engine.schedules import cycle_steps, fge_schedule
from ..engine.train import Collect, Trainer
from ..rundir import RunDir, load_run, read_result, run_method
from ..utils import seed_everything
from .ensemble import MEMBERS_FILE, SnapshotCollector, members_file, snapshot_metrics, snapshot_predictor
from .predictor import Predictor
from .swa import base_values, check_inherited, train_trajectory

INPUTS = {"metavar": "RUN", "nargs": 1}


@dataclass
class Config:
    """FGE from a trained run."""

    cycles: int = option(4, "Number of cycles = snapshots.")
    cycle_epochs: float = option(2.0, "Cycle length in epochs (2-4 in the paper; fractions allowed, >= 2 steps).")
    lr_high: float = option(0.025, "a1: learning rate at the start and end of each cycle.")
    lr_low: float = option(0.0005, "a2: learning rate at mid-cycle, where the snapshot is taken.")
    momentum: float | None = None
    wd: float | None = None
    batch_size: int | None = None
    seed: int = 0
    device: str = "auto"
    evaluate: bool = option(True, "Evaluate the members and their ensemble on the test set (run.json "
                                  "'metrics').", cli=False)

    def check(self) -> None:
        require(self.cycles >= 1, f"--cycles must be at least 1 (got {self.cycles})")
        require(self.cycle_epochs > 0, f"--cycle-epochs must be positive (got {self.cycle_epochs})")
        require(self.lr_high >= self.lr_low > 0,
                f"need --lr-high >= --lr-low > 0 (got {self.lr_high}, {self.lr_low})")
        check_inherited(self)


def fge_snapshot_index(steps_per_cycle: int) -> int:
    """Index (within its cycle) of the step with the cycle's lowest learning rate: s = 0.5 when C is even;
    for odd C the two middle steps tie and the earlier one is used."""
    return steps_per_cycle // 2


def collect_snapshots(model: torch.nn.Module, data: Dataset, lr_at_step: Callable[[int], float], *,
                      steps_per_cycle: int, cycles: int, snapshot_index: int, hp: dict, generator: torch.Generator,
                      device, run_dir: RunDir, quiet: bool, desc: str,
                      stop_after_epochs: int | None = None) -> tuple[SnapshotCollector, Trainer]:
    """SGD with a cyclic per-step schedule; a snapshot (vector, BN running statistics) after each step t with
    t mod C == snapshot_index, for the first `cycles` cycles (FGE and SSE).

    Training covers ceil(cycles * C / batches) whole epochs; steps after the last full cycle (when
    cycles * C is not a whole number of epochs) collect nothing. Returns (collector, trainer)."""
    n_batches = data.train.num_batches(hp["batch_size"])
    total_steps = cycles * steps_per_cycle
    epochs = math.ceil(total_steps / n_batches)
    collector = SnapshotCollector()
    bn = P.has_batchnorm(model)

    def take(t):
        collector.take(P.flatten(model), P.buffers(model) if bn else None, step=t, lr=lr_at_step(t))

    trainer = train_trajectory(
        model, data, lr_at_step, Collect(take, every=steps_per_cycle, first=snapshot_index, last=total_steps - 1),
        {"snapshots": collector}, epochs=epochs, momentum=hp["momentum"], wd=hp["wd"], batch_size=hp["batch_size"],
        generator=generator, device=device, run_dir=run_dir.path, resume=run_dir.resuming, quiet=quiet, desc=desc,
        after_epoch=lambda e: {"snapshots": len(collector)}, stop_after_epochs=stop_after_epochs)
    return collector, trainer


def fit(config: Config, inputs, run_dir: RunDir, *, quiet: bool = False, data: Dataset | None = None,
        stop_after_epochs: int | None = None) -> dict:
    """FGE from the run inputs[0]; writes members.safetensors and run.json."""
    base = inputs[0]
    run = load_run(base, device=config.device, data=data)
    hp = base_values(config, base)
    gen = seed_everything(config.seed)
    n_batches = run.data.train.num_batches(hp["batch_size"])
    c = cycle_steps(config.cycle_epochs, n_batches)
    t0 = time.time()
    collector, trainer = collect_snapshots(
        run.model, run.data, fge_schedule(c, config.lr_high, config.lr_low), steps_per_cycle=c, cycles=config.cycles,
        snapshot_index=fge_snapshot_index(c), hp=hp, generator=gen, device=run.device, run_dir=run_dir, quiet=quiet,
        desc=f"fge {run_dir.path.name}", stop_after_epochs=stop_after_epochs)
    if trainer.state.epoch < trainer.epochs:
        return {"stopped_after_epoch": trainer.state.epoch}
    run_dir.save_tensors(MEMBERS_FILE, *members_file(collector.members, method="fge", base_run=base,
                                                     extra_meta={"steps": collector.steps, "lrs": collector.lrs}))
    info = {"seed": config.seed, "steps_per_cycle": c, "batches_per_epoch": n_batches,
            "snapshot_steps": collector.steps, "snapshot_lrs": collector.lrs, "history": trainer.state.history,
            "train_seconds": time.time() - t0,
            "bn": "running statistics at each snapshot (stored per member)" if P.has_batchnorm(run.model) else "none"}
    if config.evaluate:
        info["metrics"] = {**snapshot_metrics(Predictor(run.model, run.data, fixed=collector.members)),
                           "method": "fge"}
    return run_dir.finish(info, model=run.config)


def summary(info: dict) -> str:
    """Ensemble and best member test metrics (nothing when the run was not evaluated)."""
    if "metrics" not in info:
        return f"{len(info['snapshot_steps'])} snapshots"
    e, members = info["metrics"]["ensemble"], info["metrics"]["members"]
    best = min(m["nll"] for m in members)
    return (f"{e['members']} snapshots | ensemble test acc {e['accuracy']:.4f} nll {e['nll']:.4f} "
            f"ece {e['ece']:.4f} brier {e['brier']:.4f} | best member nll {best:.4f}")


def load(path: str | Path, device=None, recompute_bn: bool = False) -> Predictor:
    """The snapshots as a :class:`~lowloss.methods.predictor.Predictor` (their stored BN statistics, or
    recomputed with `recompute_bn`)."""
    read_result(path, "fge", needs=(MEMBERS_FILE,))
    return snapshot_predictor(path, device=device, recompute_bn=recompute_bn)


def fge(run: str | Path, config: Config | None = None, out: str | Path = "runs/fge", *, resume: bool = False,
        quiet: bool = False, data: Dataset | None = None, stop_after_epochs: int | None = None,
        **overrides) -> dict:
    """Python API: ``fge("runs/m0", out="runs/fge", cycles=8)``. Returns run.json's contents."""
    return run_method(sys.modules[__name__], replace(config or Config(), **overrides), [run], out, resume=resume,
                      quiet=quiet, data=data, stop_after_epochs=stop_after_epochs)


__all__ = ["Config", "collect_snapshots", "fge", "fge_snapshot_index", "fit", "load", "summary"]
