"""Snapshot Ensembles (Huang et al. 2017): train from scratch with cosine restarts; a snapshot at the end of
every cycle.

Within each cycle of --cycle-epochs epochs (20-40 in the paper on CIFAR; fractions of an epoch allowed)
the learning rate follows lr(s) = a0 (1 + cos(pi s)) / 2 with s = (t mod C) / C the position of optimiser
step t in its cycle of C steps and a0 = --lr, restarted at every cycle; the snapshot is taken after each
cycle's last step.

Writes OUT/members.safetensors (one vector plus BN running statistics per snapshot) and OUT/run.json
(the architecture under "model", snapshot steps and lrs, history, member and ensemble test metrics).
An interrupted run continues exactly with --resume.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path

from ..config import option, replace, require
from ..data import Dataset
from ..engine.schedules import cycle_steps, sse_schedule
from ..models import parse_options
from ..rundir import RunDir, build_from_config, read_result, run_method
from ..utils import resolve_device, seed_everything
from .ensemble import MEMBERS_FILE, members_file, snapshot_metrics, snapshot_predictor
from .fge import collect_snapshots
from .fge import summary as snapshot_summary
from .predictor import Predictor
from .train import Config as TrainConfig
from .train import Network, architecture

INPUTS = None  # trains from scratch: no input runs


@dataclass
class Config(Network):
    """A snapshot ensemble from scratch: `cycles` cosine cycles of `cycle_epochs` epochs at peak lr `lr`."""

    cycles: int = option(4, "Number of cycles = snapshots.")
    cycle_epochs: float = option(5.0, "Epochs per cosine cycle (20-40 in the paper on CIFAR).")
    lr: float = option(0.1, "a0: learning rate at each restart.")
    momentum: float = TrainConfig.momentum
    wd: float = TrainConfig.wd
    batch_size: int = TrainConfig.batch_size
    seed: int = 0
    device: str = "auto"
    evaluate: bool = option(True, "Evaluate the members and their ensemble on the test set (run.json "
                                  "'metrics').", cli=False)

    def check(self) -> None:
        self.model_options = parse_options(self.model_options)
        require(self.cycles >= 1, f"--cycles must be at least 1 (got {self.cycles})")
        require(self.cycle_epochs > 0, f"--cycle-epochs must be positive (got {self.cycle_epochs})")
        require(self.lr > 0, f"--lr must be positive (got {self.lr})")
        require(self.batch_size >= 1, f"--batch-size must be >= 1 (got {self.batch_size})")
        require(0 <= self.momentum < 1, f"--momentum must be in [0, 1) (got {self.momentum})")
        require(self.wd >= 0, f"--wd must be >= 0 (got {self.wd})")


def fit(config: Config, inputs, run_dir: RunDir, *, quiet: bool = False, data: Dataset | None = None,
        stop_after_epochs: int | None = None) -> dict:
    """Train from scratch with cosine restarts; writes members.safetensors and run.json."""
    arch = architecture(config)
    gen = seed_everything(config.seed)
    model, data = build_from_config(arch, data, config.device)
    n_batches = data.train.num_batches(config.batch_size)
    c = cycle_steps(config.cycle_epochs, n_batches)
    t0 = time.time()
    collector, trainer = collect_snapshots(
        model, data, sse_schedule(c, config.lr), steps_per_cycle=c, cycles=config.cycles, snapshot_index=c - 1,
        hp={"momentum": config.momentum, "wd": config.wd, "batch_size": config.batch_size}, generator=gen,
        device=resolve_device(config.device), run_dir=run_dir, quiet=quiet, desc=f"sse {run_dir.path.name}",
        stop_after_epochs=stop_after_epochs)
    if trainer.state.epoch < trainer.epochs:
        return {"stopped_after_epoch": trainer.state.epoch}
    run_dir.save_tensors(MEMBERS_FILE, *members_file(collector.members, method="sse", config=arch,
                                                     extra_meta={"steps": collector.steps, "lrs": collector.lrs}))
    info = {"seed": config.seed, "steps_per_cycle": c, "batches_per_epoch": n_batches,
            "snapshot_steps": collector.steps, "snapshot_lrs": collector.lrs, "history": trainer.state.history,
            "train_seconds": time.time() - t0}
    if config.evaluate:
        info["metrics"] = {**snapshot_metrics(Predictor(model, data, fixed=collector.members)), "method": "sse"}
    return run_dir.finish(info, model=arch)


def summary(info: dict) -> str:
    return snapshot_summary(info)


def load(path: str | Path, device=None, recompute_bn: bool = False) -> Predictor:
    """The snapshots as a :class:`~lowloss.methods.predictor.Predictor` (their stored BN statistics, or
    recomputed with `recompute_bn`)."""
    read_result(path, "sse", needs=(MEMBERS_FILE,))
    return snapshot_predictor(path, device=device, recompute_bn=recompute_bn)


def sse(config: Config | None = None, out: str | Path = "runs/sse", *, resume: bool = False, quiet: bool = False,
        data: Dataset | None = None, stop_after_epochs: int | None = None, **overrides) -> dict:
    """Python API: ``sse(out="runs/sse", model="mlp", cycles=4)``. Returns run.json's contents."""
    return run_method(sys.modules[__name__], replace(config or Config(), **overrides), None, out, resume=resume,
                      quiet=quiet, data=data, stop_after_epochs=stop_after_epochs)


__all__ = ["Config", "fit", "load", "sse", "summary"]
