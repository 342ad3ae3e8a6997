"""Stochastic Weight Averaging (Izmailov et al. 2018) and the SGD trajectory that SWA and SWAG share.

From a trained run, SGD continues with a constant learning rate (or a cyclic one: within each cycle of c
steps the rate falls linearly from a1 to a2, Izmailov et al.'s sawtooth) and the iterates are averaged
every c steps (once per epoch by default): w_swa <- w_swa + (w - w_swa) / (n + 1). The running average is
torch's own (``torch.optim.swa_utils.get_swa_avg_fn``, the function ``AveragedModel`` applies), kept on a
flat vector in a checkpointed :class:`RunningAverage`, so an interrupted run resumes exactly. BatchNorm
statistics of the average are recomputed with one pass over the training data
(:func:`lowloss.params.recompute_bn`): the running statistics of the iterates do not describe w_swa.

The SWA output directory is an ordinary run directory (``model.safetensors`` + ``run.json`` with the base
run's model config and an extra ``swa`` section), so every command that takes a run takes an SWA model.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch.optim.swa_utils import get_swa_avg_fn

from .. import params as P
from ..engine.train import Stateful, TensorState, Trainer, supervised_loss
from ..utils import LowlossError, read_json, resolve_device, seed_everything, versions, write_json
from .fge import StepSchedule

_swa_update = get_swa_avg_fn()


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


def swa_cyclic_lr(t: int, cycle: int, lr_high: float, lr_low: float) -> float:
    """Izmailov et al.'s cyclic rate for step t (0-based): linear from a1 to a2 within each cycle of c steps,
    alpha = (1 - u) a1 + u a2 with u = (t mod c + 1) / c, so the cycle's last step (the averaged one) is at a2."""
    u = ((t % cycle) + 1) / cycle
    return (1 - u) * lr_high + u * lr_low


def train_and_collect(model: torch.nn.Module, data, *, epochs: int, lr_at_step: Callable[[int], float],
                      collect_every: int, start_step: int, collectors: dict[str, Stateful], momentum: float,
                      wd: float, batch_size: int, generator: torch.Generator, device, run_dir: Path | None,
                      resume: bool, quiet: bool, desc: str, on_collect: Callable | None = None,
                      stop_after_epochs: int | None = None) -> list[dict]:
    """SGD on `model` (a module lowloss owns); after step t (0-based) with (t + 1) >= start_step + every and
    (t + 1 - start_step) % every == 0, every collector's ``update(vector)`` is called (SWA average, SWAG
    moments). Collectors are checkpointed with the run; `stop_after_epochs` stops early (resumably)."""
    n_batches = data.train.num_batches(batch_size)
    classification = data.num_classes > 0
    model.train()

    loss_fn = supervised_loss(model, classification)

    def after_step(step, epoch_float):
        done = step - start_step  # steps taken since averaging started
        if done >= collect_every and done % collect_every == 0:
            v = P.flatten(model)
            for c in collectors.values():
                c.update(v)
            if on_collect is not None:
                on_collect(step)

    def after_epoch(epoch):
        first = next(iter(collectors.values()))
        return {"collected": getattr(first, "n", 0)}

    trainer = Trainer({n: p for n, p in model.named_parameters() if p.requires_grad}, loss_fn, data.train,
                      epochs=epochs, batch_size=batch_size, lr=StepSchedule(lr_at_step, n_batches),
                      momentum=momentum, weight_decay=wd, generator=generator, device=device, run_dir=run_dir,
                      quiet=quiet, desc=desc, after_step=after_step, after_epoch=after_epoch,
                      extra={"buffers": TensorState(dict(model.named_buffers())), **collectors})
    return trainer.run(resume=resume, stop_after_epochs=stop_after_epochs)


@dataclass
class SWAConfig:
    """SGD from a trained run with averaging. None = the base run's value (momentum, wd, batch size).

    schedule "constant": lr throughout; "cyclic": sawtooth from lr_high to lr over `cycle_epochs`. Averages
    are taken every `every_epochs` epochs (cyclic: at the end of every cycle), from epoch `start` on.
    """

    epochs: int = 10
    lr: float = 0.01
    start: float = 0.0
    every_epochs: float = 1.0
    schedule: str = "constant"
    lr_high: float | None = None
    cycle_epochs: float = 1.0
    momentum: float | None = None
    wd: float | None = None
    batch_size: int | None = None
    seed: int = 0
    device: str = "auto"


def trajectory_plan(cfg, n_batches: int) -> tuple[Callable[[int], float], int, int]:
    """(lr_at_step, collect_every steps, start step) for an SWAConfig-like config (SWA and SWAG share it)."""
    if cfg.epochs < 1:
        raise LowlossError("--epochs must be at least 1")
    if cfg.lr <= 0:
        raise LowlossError("--lr must be positive")
    start = int(round(cfg.start * n_batches))
    if not 0 <= start < cfg.epochs * n_batches:
        raise LowlossError(f"--start {cfg.start} must lie in [0, --epochs={cfg.epochs})")
    if cfg.schedule == "constant":
        every = max(1, int(round(cfg.every_epochs * n_batches)))
        lr = cfg.lr

        def lr_at_step(t):
            return lr
    elif cfg.schedule == "cyclic":
        every = max(1, int(round(cfg.cycle_epochs * n_batches)))
        high = cfg.lr_high if cfg.lr_high is not None else 5 * cfg.lr
        if high < cfg.lr:
            raise LowlossError(f"--lr-high ({high}) must be at least --lr ({cfg.lr})")

        def lr_at_step(t):
            return swa_cyclic_lr(t - start if t >= start else t, every, high, cfg.lr)
    else:
        raise LowlossError(f"unknown SWA schedule '{cfg.schedule}'; valid: constant, cyclic")
    if start + every > cfg.epochs * n_batches:
        raise LowlossError(f"averaging every {every} steps from step {start} collects nothing in {cfg.epochs} "
                           "epochs: lower --start or --every, or raise --epochs")
    return lr_at_step, every, start


def base_hyper(run, cfg) -> tuple[float, float, int]:
    bc = run.config
    return (bc["momentum"] if cfg.momentum is None else cfg.momentum, bc["wd"] if cfg.wd is None else cfg.wd,
            bc["batch_size"] if cfg.batch_size is None else cfg.batch_size)


def run_swa(base_run: str | Path, cfg: SWAConfig, out: str | Path, *, resume: bool = False, quiet: bool = False,
            data=None, stop_after_epochs: int | None = None) -> dict:
    """SWA from `base_run`; writes an ordinary run directory (model.safetensors with recomputed BN, run.json)."""
    from ..engine.evaluate import bn_buffers_for, evaluate_vector
    from ..rundir import MODEL_FILE, load_run, start_run_dir
    from ..rundir import RESULT_FILE as RUN_FILE
    from ..rundir import save_tensors as save_state

    out = Path(out)
    config = {"base_run": str(Path(base_run).resolve()), **asdict(cfg)}
    finished = read_json(out / RUN_FILE) if (out / RUN_FILE).exists() and (out / MODEL_FILE).exists() else None
    done = start_run_dir(out, config, resume=resume, quiet=quiet, finished=finished,
                         same=finished is not None and finished.get("swa", {}).get("config") == config)
    if done is not None:
        return done
    run = load_run(base_run, device=cfg.device, data=data)
    momentum, wd, bs = base_hyper(run, cfg)
    n_batches = run.data.train.num_batches(bs)
    lr_at_step, every, start = trajectory_plan(cfg, n_batches)
    gen = seed_everything(cfg.seed)
    avg = RunningAverage()
    t0 = time.time()
    history = train_and_collect(run.model, run.data, epochs=cfg.epochs, lr_at_step=lr_at_step, collect_every=every,
                                start_step=start, collectors={"swa": avg}, momentum=momentum, wd=wd, batch_size=bs,
                                generator=gen, device=resolve_device(cfg.device), run_dir=out, resume=resume,
                                quiet=quiet, desc=f"swa {out.name}", stop_after_epochs=stop_after_epochs)
    if len(history) < cfg.epochs:
        return {"stopped_after_epoch": len(history)}
    model = run.model
    last_sgd = P.flatten(model).clone()
    last_bufs = {k: v.clone() for k, v in P.buffers(model).items()}
    bufs = bn_buffers_for(model, avg.mean, run.data.train)
    final = evaluate_vector(model, avg.mean, run.data, bufs=bufs)
    sgd_final = evaluate_vector(model, last_sgd, run.data, bufs=last_bufs)
    state = P.state_from_vector(model, avg.mean, bufs)
    save_state(out / MODEL_FILE, state, {"model": run.config["model"], "data": run.config["data"], "method": "swa"})
    info = {"config": run.config, "seed": cfg.seed, "versions": versions(), "data": run.data.describe(),
            "num_params": P.num_params(model), "history": history, "final": final,
            "train_seconds": time.time() - t0,
            "swa": {"config": config, "n_averaged": avg.n, "collect_every_steps": every, "start_step": start,
                    "batches_per_epoch": n_batches, "last_sgd_iterate": sgd_final,
                    "bn": "recomputed for the average on the training data" if P.has_batchnorm(model) else "none"}}
    write_json(out / RUN_FILE, info)
    (out / Trainer.CKPT).unlink(missing_ok=True)
    return info
