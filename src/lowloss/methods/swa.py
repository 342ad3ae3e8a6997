"""Stochastic Weight Averaging (Izmailov et al. 2018): continue SGD from RUN and average the iterates.

SGD runs from RUN's weights at a constant learning rate (--schedule constant) or Izmailov et al.'s
sawtooth (--schedule cyclic: within each cycle of --cycle-epochs the rate falls linearly from --lr-high
to --lr). From epoch --start on, an iterate is averaged every --every epochs (cyclic: at the end of
every cycle): w_swa <- w_swa + (w - w_swa) / (n + 1), torch's own average (the one AveragedModel
applies). BatchNorm statistics of the average are recomputed with one pass over the training data: the
running statistics of the iterates do not describe w_swa. --momentum, --wd and --batch-size default to
the base run's.

OUT is an ordinary run directory, usable wherever a run is: model.safetensors (the average, with its
recomputed BN statistics) and run.json (the base run's architecture under "model", final train/test
metrics, and a "swa" section: iterates averaged, collection steps, the last SGD iterate's metrics).
An interrupted run continues exactly with --resume.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.optim.swa_utils import get_swa_avg_fn

from .. import params as P
from ..config import option, replace, require
from ..data import Dataset
from ..engine.evaluate import bn_buffers_for, evaluate_vector
from ..engine.schedules import StepSchedule, swa_cyclic_lr
from ..engine.train import Collect, Stateful, TensorState, Trainer, supervised_loss
from ..rundir import MODEL_FILE, RunDir, find_run, load_run, read_result, run_method
from ..utils import LowlossError, seed_everything

INPUTS = {"metavar": "RUN", "nargs": 1}
SWA_SCHEDULES = ("constant", "cyclic")
INHERITED = ("momentum", "wd", "batch_size")

_swa_update = get_swa_avg_fn()


@dataclass
class Config:
    """SGD from a trained run with iterate averaging."""

    epochs: int = option(10, "Epochs of SGD from RUN.")
    lr: float = option(0.01, "The constant (SWA) learning rate; cyclic: the rate at each cycle's end.")
    start: float = option(0.0, "Epoch (of this run) at which collecting starts.")
    every_epochs: float = option(1.0, "constant: collect an iterate every this many epochs (0.25 = four times "
                                      "per epoch).", flag="--every")
    schedule: str = option("constant", "constant lr, or Izmailov et al.'s sawtooth from --lr-high to --lr.",
                           choices=SWA_SCHEDULES)
    lr_high: float | None = option(None, "cyclic: learning rate at each cycle's start [default: 5 x --lr].")
    cycle_epochs: float = option(1.0, "cyclic: cycle length in epochs; an iterate is collected at the end of "
                                      "each cycle.")
    momentum: float | None = None
    wd: float | None = None
    batch_size: int | None = None
    seed: int = 0
    device: str = "auto"

    def check(self) -> None:
        require(self.epochs >= 1, f"--epochs must be at least 1 (got {self.epochs})")
        require(self.lr > 0, f"--lr must be positive (got {self.lr})")
        require(self.schedule in SWA_SCHEDULES, f"--schedule must be one of {', '.join(SWA_SCHEDULES)}")
        require(0 <= self.start < self.epochs, f"--start {self.start} must lie in [0, --epochs={self.epochs})")
        require(self.every_epochs > 0, f"--every must be positive (got {self.every_epochs})")
        require(self.cycle_epochs > 0, f"--cycle-epochs must be positive (got {self.cycle_epochs})")
        require(self.schedule != "cyclic" or self.lr_high is None or self.lr_high >= self.lr,
                f"--lr-high ({self.lr_high}) must be at least --lr ({self.lr})")
        check_inherited(self)


def check_inherited(config) -> None:
    """Checks of the hyperparameters that default to the base run's (only those given)."""
    require(config.momentum is None or 0 <= config.momentum < 1,
            f"--momentum must be in [0, 1) (got {config.momentum})")
    require(config.wd is None or config.wd >= 0, f"--wd must be >= 0 (got {config.wd})")
    require(config.batch_size is None or config.batch_size >= 1,
            f"--batch-size must be >= 1 (got {config.batch_size})")


# ---------------------------------------------------------------------------------------------------- library
def base_values(config, source: str | Path, names: tuple[str, ...] = INHERITED) -> dict:
    """``{name: value}`` for the fields `names` of `config`, where None means "the value the run `source`
    trained with": the value its run.json records, or, where that is None too, the value of the run it
    started from (its first input), and so on."""
    values = {n: getattr(config, n) for n in names}
    path = Path(source)
    while any(v is None for v in values.values()):
        recorded = read_result(path).get("config") or {}
        for n in names:
            if values[n] is None:
                values[n] = recorded.get(n)
        inputs = recorded.get("inputs") or []
        if not inputs:
            break
        path = find_run(inputs[0], near=path)
    missing = [n for n, v in values.items() if v is None]
    if missing:
        raise LowlossError(f"{source} records no {', '.join(missing)}: give "
                           f"{', '.join('--' + n.replace('_', '-') for n in missing)}")
    return values


class RunningAverage(Stateful):
    """The SWA average of flat parameter vectors: exactly what ``AveragedModel.update_parameters`` computes
    (the first vector is copied, later ones averaged with torch's SWA average function)."""

    def __init__(self):
        self.mean: torch.Tensor | None = None
        self.n = 0

    def update(self, vector: torch.Tensor) -> None:
        v = vector.detach()
        if self.mean is None or self.n == 0:
            self.mean = v.clone()
        else:
            self.mean = _swa_update(self.mean, v, self.n)
        self.n += 1

    def state_tensors(self):
        if self.mean is None:
            return {"n": torch.tensor(0)}
        return {"n": torch.tensor(self.n), "mean": self.mean}

    def load_state_tensors(self, tensors):
        self.n = int(tensors.get("n", torch.tensor(0)))
        self.mean = tensors["mean"].clone() if "mean" in tensors else None


def train_trajectory(model: torch.nn.Module, data: Dataset, lr_at_step: Callable[[int], float], collect: Collect,
                     collectors: Mapping[str, Stateful], *, epochs: int, momentum: float, wd: float,
                     batch_size: int, generator: torch.Generator, device, run_dir: Path | None, resume: bool,
                     quiet: bool, desc: str, after_epoch: Callable[[int], dict] | None = None,
                     stop_after_epochs: int | None = None) -> Trainer:
    """SGD on `model` (a module lowloss owns, e.g. loaded from a run) for `epochs` epochs with the per-step
    learning rate ``lr_at_step(t)`` (t = 0, 1, ...: the optimiser step), the trajectory of FGE, SSE, SWA and
    SWAG. `collect` (a :class:`Collect`) takes snapshots or updates averages after its steps; `collectors`
    hold what it keeps and are checkpointed with the run (BN buffers too), so an interrupted run resumes
    exactly. Returns the Trainer after :meth:`Trainer.run` (`stop_after_epochs` stops early, resumably)."""
    n_batches = data.train.num_batches(batch_size)
    model.train()
    trainer = Trainer({n: p for n, p in model.named_parameters() if p.requires_grad},
                      supervised_loss(model, data.num_classes > 0), data.train, epochs=epochs,
                      batch_size=batch_size, lr=StepSchedule(lr_at_step, n_batches), momentum=momentum,
                      weight_decay=wd, generator=generator, device=device, run_dir=run_dir, quiet=quiet, desc=desc,
                      after_step=collect, after_epoch=after_epoch,
                      extra={"buffers": TensorState(dict(model.named_buffers())), **collectors})
    trainer.run(resume=resume, stop_after_epochs=stop_after_epochs)
    return trainer


def trajectory_plan(config, n_batches: int) -> tuple[Callable[[int], float], int, int]:
    """(lr_at_step, collect every this many steps, start step) of an SWA-like config (SWA and SWAG share it).

    Iterates are collected after steps t = start + k * every - 1, k = 1, 2, ..."""
    start = int(round(config.start * n_batches))
    if config.schedule == "constant":
        every = max(1, int(round(config.every_epochs * n_batches)))
        lr = config.lr

        def lr_at_step(t):
            return lr
    else:
        every = max(1, int(round(config.cycle_epochs * n_batches)))
        high = config.lr_high if config.lr_high is not None else 5 * config.lr

        def lr_at_step(t):
            return swa_cyclic_lr(t - start if t >= start else t, every, high, config.lr)
    if start + every > config.epochs * n_batches:
        raise LowlossError(f"averaging every {every} steps from step {start} collects nothing in {config.epochs} "
                           "epochs: lower --start or --every, or raise --epochs")
    return lr_at_step, every, start


def collect_every(take: Callable[[int], None], every: int, start: int) -> Collect:
    """The Collect of an SWA-like trajectory: after steps start + k * every - 1, k >= 1."""
    return Collect(take, every=every, first=start + every - 1)


@dataclass
class Trajectory:
    """What :func:`follow_trajectory` ran: the base run (its module trained further), the trainer and the
    collection plan."""

    run: object
    trainer: Trainer
    every: int
    start: int
    n_batches: int
    t0: float

    @property
    def stopped(self) -> bool:
        return self.trainer.state.epoch < self.trainer.epochs


def follow_trajectory(config, base: str, run_dir: RunDir, collectors: Mapping[str, Stateful], *, quiet: bool,
                      data: Dataset | None, stop_after_epochs: int | None) -> Trajectory:
    """The SGD trajectory SWA and SWAG share: from the run `base`, with the config's schedule (and the base
    run's momentum, wd and batch size unless given); after each collection step every collector's
    ``update(vector)`` is called, in the order given."""
    run = load_run(base, device=config.device, data=data)
    hp = base_values(config, base)
    n_batches = run.data.train.num_batches(hp["batch_size"])
    lr_at_step, every, start = trajectory_plan(config, n_batches)
    gen = seed_everything(config.seed)
    model = run.model
    first = next(iter(collectors.values()))

    def take(t):
        v = P.flatten(model)
        for c in collectors.values():
            c.update(v)

    t0 = time.time()
    trainer = train_trajectory(model, run.data, lr_at_step, collect_every(take, every, start), dict(collectors),
                               epochs=config.epochs, momentum=hp["momentum"], wd=hp["wd"],
                               batch_size=hp["batch_size"], generator=gen, device=run.device,
                               run_dir=run_dir.path, resume=run_dir.resuming, quiet=quiet,
                               desc=f"{run_dir.method} {run_dir.path.name}",
                               after_epoch=lambda e: {"collected": first.n}, stop_after_epochs=stop_after_epochs)
    return Trajectory(run, trainer, every, start, n_batches, t0)


# ---------------------------------------------------------------------------------------------------- method
def fit(config: Config, inputs, run_dir: RunDir, *, quiet: bool = False, data: Dataset | None = None,
        stop_after_epochs: int | None = None) -> dict:
    """SWA from the run inputs[0]; writes model.safetensors (BN recomputed for the average) and run.json."""
    avg = RunningAverage()
    tr = follow_trajectory(config, inputs[0], run_dir, {"swa": avg}, quiet=quiet, data=data,
                           stop_after_epochs=stop_after_epochs)
    if tr.stopped:
        return {"stopped_after_epoch": tr.trainer.state.epoch}
    run, trainer, model, every, start, n_batches, t0 = (tr.run, tr.trainer, tr.run.model, tr.every, tr.start,
                                                        tr.n_batches, tr.t0)
    last_sgd = P.flatten(model).clone()
    last_bufs = {k: v.clone() for k, v in P.buffers(model).items()}
    bufs = bn_buffers_for(model, avg.mean, run.data.train)
    final = evaluate_vector(model, avg.mean, run.data, bufs=bufs)
    sgd_final = evaluate_vector(model, last_sgd, run.data, bufs=last_bufs)
    run_dir.save_tensors(MODEL_FILE, P.state_from_vector(model, avg.mean, bufs),
                         {"model": run.config["model"], "data": run.config["data"], "method": "swa"})
    return run_dir.finish({
        "seed": config.seed, "data": run.data.describe(), "num_params": P.num_params(model),
        "history": trainer.state.history, "final": final, "train_seconds": time.time() - t0,
        "swa": {"config": run_dir.config, "n_averaged": avg.n, "collect_every_steps": every, "start_step": start,
                "batches_per_epoch": n_batches, "last_sgd_iterate": sgd_final,
                "bn": "recomputed for the average on the training data" if P.has_batchnorm(model) else "none"}},
        model=run.config)


def summary(info: dict) -> str:
    f, s = info["final"]["test"], info["swa"]["last_sgd_iterate"]["test"]
    return (f"{info['swa']['n_averaged']} iterates averaged | SWA test acc {f['accuracy']:.4f} nll {f['nll']:.4f} "
            f"ece {f['ece']:.4f} | last SGD iterate acc {s['accuracy']:.4f} nll {s['nll']:.4f}")


def load(path: str | Path, device=None, data: Dataset | None = None):
    """The averaged network as a :class:`lowloss.rundir.Run` (module with weights, data, architecture)."""
    read_result(path, "swa", needs=(MODEL_FILE,))
    return load_run(path, device=device, data=data)


def swa(run: str | Path, config: Config | None = None, out: str | Path = "runs/swa", *, resume: bool = False,
        quiet: bool = False, data: Dataset | None = None, stop_after_epochs: int | None = None,
        **overrides) -> dict:
    """Python API: ``swa("runs/m0", out="runs/swa", epochs=5)``. Returns run.json's contents."""
    return run_method(sys.modules[__name__], replace(config or Config(), **overrides), [run], out, resume=resume,
                      quiet=quiet, data=data, stop_after_epochs=stop_after_epochs)


__all__ = ["Config", "RunningAverage", "base_values", "collect_every", "fit", "load", "summary", "swa",
           "train_trajectory", "trajectory_plan"]
