"""Fast Geometric Ensembling (Garipov et al. 2018) and Snapshot Ensembles (Huang et al. 2017).

Both run SGD with a cyclic learning rate and keep a snapshot per cycle; they differ in where they start,
the cycle's shape and length, and when the snapshot is taken (METHODS.md section 3):

* FGE starts from a trained run and uses a short triangular cycle of c epochs (2-4 in the paper). With the
  position in the cycle s in [0, 1): lr(s) = (1-2s) a1 + 2s a2 for s < 0.5 and (2s-1) a1 + (2-2s) a2 otherwise
  (a1 high, a2 low). The snapshot is taken right after the step with the cycle's lowest learning rate.
* SSE starts from scratch and uses cosine annealing with restarts, lr(s) = a0 (1 + cos(pi s)) / 2, cycles of
  20-40 epochs in the paper, a snapshot at the end of each cycle.

The schedule is a function of the optimiser step t (s = (t mod C) / C with C steps per cycle), so a cycle
may be a fraction of an epoch. Snapshots live in a checkpointed collector: an interrupted run resumes
exactly.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from .. import params as P
from ..engine.train import TensorState, Trainer, supervised_loss
from ..utils import LowlossError, echo, read_json, resolve_device, seed_everything, versions, write_json
from .ensemble import SnapshotCollector, ensemble_curve, member_probs, save_members, snapshot_predictor


# ---------------------------------------------------------------------------------------------------- schedules
def fge_lr(s: float, lr_high: float, lr_low: float) -> float:
    """Garipov et al.'s triangular cycle at position s in [0, 1): a1 -> a2 (at s = 0.5) -> a1."""
    s = s % 1.0
    if s < 0.5:
        return (1 - 2 * s) * lr_high + 2 * s * lr_low
    return (2 * s - 1) * lr_high + (2 - 2 * s) * lr_low


def sse_lr(s: float, lr0: float) -> float:
    """Huang et al.'s cosine annealing within a cycle, restarted at s = 0."""
    return 0.5 * lr0 * (1 + math.cos(math.pi * (s % 1.0)))


def cycle_steps(cycle_epochs: float, batches_per_epoch: int) -> int:
    c = round(cycle_epochs * batches_per_epoch)
    if c < 2:
        raise LowlossError(f"a cycle of {cycle_epochs} epochs is {c} optimiser step(s) with {batches_per_epoch} "
                           "batches per epoch; use a longer --cycle-epochs (a cycle needs at least 2 steps)")
    return c


def fge_snapshot_index(steps_per_cycle: int) -> int:
    """Index (within its cycle) of the step with the cycle's lowest learning rate: s = 0.5 when C is even;
    for odd C the two middle steps tie and the earlier one is used."""
    return steps_per_cycle // 2


class StepSchedule:
    """Trainer-compatible lr(epoch) built from a per-step rule lr_at_step(t), t = 0, 1, ... (the step index)."""

    def __init__(self, lr_at_step: Callable[[int], float], batches_per_epoch: int):
        self.lr_at_step, self.n = lr_at_step, batches_per_epoch

    def step_of(self, epoch: float) -> int:
        return int(round(epoch * self.n))

    def __call__(self, epoch: float) -> float:
        return self.lr_at_step(self.step_of(epoch))


def fge_schedule(steps_per_cycle: int, lr_high: float, lr_low: float) -> Callable[[int], float]:
    return lambda t: fge_lr((t % steps_per_cycle) / steps_per_cycle, lr_high, lr_low)


def sse_schedule(steps_per_cycle: int, lr0: float) -> Callable[[int], float]:
    return lambda t: sse_lr((t % steps_per_cycle) / steps_per_cycle, lr0)


# ---------------------------------------------------------------------------------------------------- training
def train_snapshots(model: torch.nn.Module, data, *, lr_at_step: Callable[[int], float], steps_per_cycle: int,
                    cycles: int, snapshot_index: int, momentum: float, wd: float, batch_size: int,
                    generator: torch.Generator, device, run_dir: Path | None, resume: bool, quiet: bool,
                    desc: str, stop_after_epochs: int | None = None) -> tuple[SnapshotCollector, list[dict], bool]:
    """SGD on `model` (a module lowloss owns, e.g. loaded from a run) with a cyclic per-step schedule.

    After step t (0-based) with t mod C == snapshot_index a snapshot (vector, BN running statistics) is
    taken, for the first `cycles` cycles. Training covers ceil(cycles * C / batches) whole epochs; steps
    after the last full cycle (when cycles * C is not a whole number of epochs) collect nothing. Returns the
    collector, the history and whether training finished (`stop_after_epochs` stops early, resumably).
    """
    n_batches = data.train.num_batches(batch_size)
    total_steps = cycles * steps_per_cycle
    epochs = math.ceil(total_steps / n_batches)
    collector = SnapshotCollector()
    model.train()
    classification = data.num_classes > 0
    bn = P.has_batchnorm(model)

    loss_fn = supervised_loss(model, classification)

    def after_step(step, epoch_float):
        t = step - 1  # index of the step just taken
        if t < total_steps and t % steps_per_cycle == snapshot_index:
            collector.take(P.flatten(model), P.buffers(model) if bn else None, step=t, lr=lr_at_step(t))

    def after_epoch(epoch):
        return {"snapshots": len(collector)}

    trainer = Trainer({n: p for n, p in model.named_parameters() if p.requires_grad}, loss_fn, data.train,
                      epochs=epochs, batch_size=batch_size, lr=StepSchedule(lr_at_step, n_batches), momentum=momentum,
                      weight_decay=wd, generator=generator, device=device, run_dir=run_dir, quiet=quiet, desc=desc,
                      after_step=after_step, after_epoch=after_epoch,
                      extra={"buffers": TensorState(dict(model.named_buffers())), "snapshots": collector})
    history = trainer.run(resume=resume, stop_after_epochs=stop_after_epochs)
    return collector, history, trainer.state.epoch >= epochs


@dataclass
class FGEConfig:
    """FGE from a trained run. None means "the base run's value" (momentum, wd, batch size)."""

    cycles: int = 4
    cycle_epochs: float = 2.0
    lr_high: float = 0.025
    lr_low: float = 0.0005
    momentum: float | None = None
    wd: float | None = None
    batch_size: int | None = None
    seed: int = 0
    device: str = "auto"


@dataclass
class SSEConfig:
    """Snapshot ensemble from scratch: `cycles` cosine cycles of `cycle_epochs` epochs each at peak lr `lr`."""

    cycles: int = 4
    cycle_epochs: float = 5.0
    lr: float = 0.1


def _finished(out: Path, json_name: str, config: dict, quiet: bool) -> dict | None:
    if (out / json_name).exists() and (out / "members.safetensors").exists():
        info = read_json(out / json_name)
        if info.get("config") == config:
            echo(f"{out} is already finished; nothing to do", quiet)
            return info
        raise LowlossError(f"{out} already holds a finished {json_name[:-5]} run with another config; "
                           "choose a new --out")
    if (out / Trainer.CKPT).exists() and (out / "config.json").exists() and read_json(out / "config.json") != config:
        raise LowlossError(f"{out} holds an interrupted run with a different config: rerun it with the same "
                           "options and --resume, or choose a new --out")
    return None


def _summarise(out: Path, method: str) -> dict:
    pred = snapshot_predictor(out)
    probs, y = member_probs(pred, "test")
    curve = ensemble_curve(probs, y)
    from .. import metrics as M

    return {"members": [M.classification_metrics(p, y) for p in probs], "ensemble": curve[-1],
            "ensemble_by_size": curve, "method": method}


def run_fge(base_run: str | Path, cfg: FGEConfig, out: str | Path, *, resume: bool = False, quiet: bool = False,
            data=None, stop_after_epochs: int | None = None, evaluate: bool = True) -> dict:
    """Fast Geometric Ensembling from the run in `base_run`; writes out/members.safetensors and out/fge.json."""
    from ..rundir import load_run

    out = Path(out)
    config = {"base_run": str(Path(base_run).resolve()), **asdict(cfg)}
    done = _finished(out, "fge.json", config, quiet)
    if done is not None:
        return done
    if (out / Trainer.CKPT).exists() and not resume:
        raise LowlossError(f"{out} holds an interrupted run: continue it with --resume or choose a new --out")
    run = load_run(base_run, device=cfg.device, data=data)
    bc = run.config
    momentum = bc["momentum"] if cfg.momentum is None else cfg.momentum
    wd = bc["wd"] if cfg.wd is None else cfg.wd
    bs = bc["batch_size"] if cfg.batch_size is None else cfg.batch_size
    if cfg.cycles < 1:
        raise LowlossError("--cycles must be at least 1")
    if not (cfg.lr_high >= cfg.lr_low > 0):
        raise LowlossError(f"need --lr-high >= --lr-low > 0 (got {cfg.lr_high}, {cfg.lr_low})")
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "config.json", config)
    gen = seed_everything(cfg.seed)
    n_batches = run.data.train.num_batches(bs)
    c = cycle_steps(cfg.cycle_epochs, n_batches)
    t0 = time.time()
    collector, history, finished = train_snapshots(
        run.model, run.data, lr_at_step=fge_schedule(c, cfg.lr_high, cfg.lr_low), steps_per_cycle=c,
        cycles=cfg.cycles, snapshot_index=fge_snapshot_index(c), momentum=momentum, wd=wd, batch_size=bs,
        generator=gen, device=resolve_device(cfg.device), run_dir=out, resume=resume, quiet=quiet,
        desc=f"fge {out.name}", stop_after_epochs=stop_after_epochs)
    if not finished:
        return {"stopped_after_epoch": len(history)}
    save_members(out, collector.members, method="fge", base_run=base_run,
                 extra_meta={"steps": collector.steps, "lrs": collector.lrs})
    info = {"method": "fge", "config": config, "versions": versions(), "seed": cfg.seed,
            "steps_per_cycle": c, "batches_per_epoch": n_batches, "snapshot_steps": collector.steps,
            "snapshot_lrs": collector.lrs, "history": history, "train_seconds": time.time() - t0,
            "bn": "running statistics at each snapshot (stored per member)" if P.has_batchnorm(run.model) else "none"}
    if evaluate:
        info["metrics"] = _summarise(out, "fge")
    write_json(out / "fge.json", info)
    (out / Trainer.CKPT).unlink(missing_ok=True)
    return info


def run_sse(train_cfg, cfg: SSEConfig, out: str | Path, *, resume: bool = False, quiet: bool = False,
            data=None, stop_after_epochs: int | None = None, evaluate: bool = True) -> dict:
    """Snapshot ensemble (cosine restarts from scratch) with model, data, momentum, wd, batch size and seed of
    `train_cfg` (a runs.TrainConfig; its epochs, lr and schedule are replaced by the cycles)."""
    from ..models import parse_options
    from ..rundir import build_from_config

    out = Path(out)
    tc = asdict(train_cfg)
    tc["model_options"] = parse_options(tc["model_options"])
    tc.update(epochs=0, schedule="sse", lr=cfg.lr)
    config = {"train": tc, **asdict(cfg)}
    done = _finished(out, "sse.json", config, quiet)
    if done is not None:
        return done
    if (out / Trainer.CKPT).exists() and not resume:
        raise LowlossError(f"{out} holds an interrupted run: continue it with --resume or choose a new --out")
    if cfg.cycles < 1 or cfg.lr <= 0:
        raise LowlossError("--cycles must be >= 1 and --lr > 0")
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "config.json", config)
    gen = seed_everything(train_cfg.seed)
    model, data = build_from_config(tc, data, train_cfg.device)
    n_batches = data.train.num_batches(train_cfg.batch_size)
    c = cycle_steps(cfg.cycle_epochs, n_batches)
    t0 = time.time()
    collector, history, finished = train_snapshots(
        model, data, lr_at_step=sse_schedule(c, cfg.lr), steps_per_cycle=c, cycles=cfg.cycles,
        snapshot_index=c - 1, momentum=train_cfg.momentum, wd=train_cfg.wd, batch_size=train_cfg.batch_size,
        generator=gen, device=resolve_device(train_cfg.device), run_dir=out, resume=resume, quiet=quiet,
        desc=f"sse {out.name}", stop_after_epochs=stop_after_epochs)
    if not finished:
        return {"stopped_after_epoch": len(history)}
    save_members(out, collector.members, method="sse", config=tc,
                 extra_meta={"steps": collector.steps, "lrs": collector.lrs})
    info = {"method": "sse", "config": config, "versions": versions(), "seed": train_cfg.seed,
            "steps_per_cycle": c, "batches_per_epoch": n_batches, "snapshot_steps": collector.steps,
            "snapshot_lrs": collector.lrs, "history": history, "train_seconds": time.time() - t0}
    if evaluate:
        info["metrics"] = _summarise(out, "sse")
    write_json(out / "sse.json", info)
    (out / Trainer.CKPT).unlink(missing_ok=True)
    return info
