"""One trainer for everything lowloss trains: modes, curves, simplexes, SWA/SWAG/FGE iterates, variational
networks and full-batch regression modes.

:class:`Trainer` minimises a user-given minibatch loss over any set of leaf tensors (a module's
parameters, a curve's control points, a simplex's vertices) with an optimiser from
:func:`make_optimizer` (SGD with momentum, or Adam; parameter groups may scale the scheduled learning
rate), a per-step learning-rate schedule (:mod:`lowloss.engine.schedules`), a progress bar with ETA, an
atomic checkpoint every epoch (or every ``checkpoint_every`` epochs) and exact resume (parameters,
optimiser state, extra state such as BN buffers or SWA moments, and every RNG). :class:`Collect` is the
one hook that takes snapshots or averages along the trajectory (FGE, SSE, SWA, SWAG, MultiSWAG).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import save_file

from ..utils import LowlossError, atomic_path, echo, load_tensors, progress

OPTIMIZERS = ("sgd", "adam")



def supervised_loss(model: torch.nn.Module, classification: bool) -> Callable:
    """The Trainer's `loss_fn` for a module trained on its data: cross-entropy (and the count of correct
    predictions) for classification, mean squared error (count None) for regression."""

    def loss_fn(x, y, step):
        out = model(x)
        if classification:
            return torch.nn.functional.cross_entropy(out, y), (out.argmax(-1) == y).sum().item()
        return torch.nn.functional.mse_loss(out, y), None

    return loss_fn


@dataclass
class TrainState:
    epoch: int = 0
    history: list = field(default_factory=list)


class Stateful:
    """Extra state saved in checkpoints (BN buffers, SWA moments, ...): tensors plus JSON metadata."""

    def state_tensors(self) -> dict[str, torch.Tensor]:
        return {}

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        pass


class TensorState(Stateful):
    """Checkpoints a fixed dict of tensors in place (e.g. a module's BN running statistics)."""

    def __init__(self, tensors: Mapping[str, torch.Tensor]):
        self.tensors = dict(tensors)

    def state_tensors(self):
        return {k: v.detach() for k, v in self.tensors.items()}

    def load_state_tensors(self, tensors):
        for k, v in self.tensors.items():
            if k not in tensors:
                raise LowlossError(f"checkpoint lacks '{k}': it was written by a different configuration")
            v.data.copy_(tensors[k].to(v.device))


def make_optimizer(name: str, params: Mapping[str, torch.Tensor], *, lr: float, momentum: float = 0.9,
                   weight_decay: float = 0.0, nesterov: bool = False, betas: tuple[float, float] = (0.9, 0.999),
                   lr_scales: Mapping[str, float] | None = None) -> torch.optim.Optimizer:
    """The optimiser of a Trainer: "sgd" (momentum, weight decay) or "adam" (betas, weight decay).

    `lr_scales` maps parameter names to a multiplier of the scheduled learning rate: parameters with the
    same multiplier form one parameter group carrying ``lr_scale`` (the Trainer sets each group's rate to
    schedule(epoch) * lr_scale before every step).
    """
    scales = lr_scales or {}
    unknown = sorted(set(scales) - set(params))
    if unknown:
        raise LowlossError(f"learning-rate scales for unknown parameters: {', '.join(unknown[:5])}")
    groups: dict[float, list] = {}
    for n, p in params.items():
        groups.setdefault(float(scales.get(n, 1.0)), []).append(p)
    param_groups = [{"params": ps, "lr_scale": k, "lr": lr * k} for k, ps in groups.items()]
    if name == "sgd":
        return torch.optim.SGD(param_groups, lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov)
    if name == "adam":
        return torch.optim.Adam(param_groups, lr=lr, betas=betas, weight_decay=weight_decay)
    raise LowlossError(f"unknown optimizer '{name}'; valid: {', '.join(OPTIMIZERS)}")


class Collect:
    """The after-step hook of every method that keeps iterates along a trajectory.

    After optimiser step t (0-based) with t >= `first`, (t - first) % `every` == 0 and t <= `last` (if
    given), ``take(t)`` is called. FGE: first = the cycle's lowest-lr step, every = the cycle length; SSE:
    each cycle's last step; SWA/SWAG: every `every` steps after `start`. Chain further hooks with `then`.
    """

    def __init__(self, take: Callable[[int], None], *, every: int, first: int = 0, last: int | None = None):
        if every < 1:
            raise LowlossError(f"collecting every {every} steps: the interval must be at least one step")
        self.take, self.every, self.first, self.last = take, every, first, last

    def due(self, t: int) -> bool:
        return t >= self.first and (t - self.first) % self.every == 0 and (self.last is None or t <= self.last)

    def __call__(self, step: int, epoch_float: float) -> None:
        t = step - 1  # the Trainer counts steps taken; t is the index of the step just taken
        if self.due(t):
            self.take(t)


class Trainer:
    """Minimises `loss_fn(x, y, step) -> (loss, n_correct or None)` over `params` (leaf tensors).

    `optimizer`: "sgd" or "adam" (see :func:`make_optimizer`; `lr_scales` per parameter name).
    `after_step(step, epoch_float)` (e.g. a :class:`Collect`) and `after_epoch(epoch) -> dict` let methods
    collect snapshots or moments; objects in `extra` are saved in and restored from the checkpoint, which
    is written every `checkpoint_every` epochs and after the last one.
    """

    CKPT = "checkpoint.safetensors"

    def __init__(self, params: Mapping[str, torch.Tensor], loss_fn: Callable, data, *, epochs: int,
                 batch_size: int, lr: Callable[[float], float], momentum: float = 0.9, weight_decay: float = 0.0,
                 nesterov: bool = False, generator: torch.Generator | None = None, device=None,
                 run_dir: str | Path | None = None, quiet: bool = False, desc: str = "train",
                 after_step: Callable | None = None, after_epoch: Callable | None = None,
                 extra: Mapping[str, Stateful] | None = None, drop_last: bool = False, augment: bool = True,
                 nan_hint: str = "lower the learning rate (--lr)", optimizer: str = "sgd",
                 betas: tuple[float, float] = (0.9, 0.999), lr_scales: Mapping[str, float] | None = None,
                 checkpoint_every: int = 1, shuffle: bool = True):
        self.params = dict(params)
        for k, p in self.params.items():
            if not p.requires_grad:
                raise LowlossError(f"parameter '{k}' does not require grad and cannot be trained")
        self.loss_fn, self.data = loss_fn, data
        self.epochs, self.batch_size, self.lr = epochs, batch_size, lr
        self.generator = generator if generator is not None else torch.Generator().manual_seed(0)
        self.device, self.run_dir, self.quiet, self.desc = device, (Path(run_dir) if run_dir else None), quiet, desc
        self.after_step, self.after_epoch = after_step, after_epoch
        self.extra = dict(extra or {})
        self.drop_last, self.augment, self.nan_hint = drop_last, augment, nan_hint
        self.opt = make_optimizer(optimizer, self.params, lr=lr(0.0), momentum=momentum, weight_decay=weight_decay,
                                  nesterov=nesterov, betas=betas, lr_scales=lr_scales)
        self.checkpoint_every, self.shuffle = max(1, int(checkpoint_every)), shuffle
        self.state = TrainState()
        self.step = 0

    # ---------------------------------------------------------------- checkpoints
    def _ckpt_path(self) -> Path | None:
        return self.run_dir / self.CKPT if self.run_dir else None

    def save_checkpoint(self) -> None:
        path = self._ckpt_path()
        if path is None:
            return
        t: dict[str, torch.Tensor] = {}
        names = list(self.params)
        for k, p in self.params.items():
            t[f"param/{k}"] = p.detach()
        for i, p in enumerate(self.params.values()):
            for key, v in self.opt.state.get(p, {}).items():
                if v is not None:
                    t[f"optim/{names[i]}/{key}"] = v if torch.is_tensor(v) else torch.tensor(float(v))
        for name, obj in self.extra.items():
            for k, v in obj.state_tensors().items():
                t[f"extra/{name}/{k}"] = v.detach()
        t["rng/generator"] = self.generator.get_state()
        t["rng/torch"] = torch.get_rng_state()
        if torch.cuda.is_available():
            t["rng/cuda"] = torch.cuda.get_rng_state()
        meta = {"epoch": str(self.state.epoch), "step": str(self.step), "history": json.dumps(self.state.history)}
        t = {k: v.detach().cpu().contiguous() for k, v in t.items()}
        with atomic_path(path) as tmp:
            save_file(t, str(tmp), metadata=meta)

    def load_checkpoint(self) -> bool:
        path = self._ckpt_path()
        if path is None or not path.exists():
            return False
        try:
            t, meta = load_tensors(path)
            history = json.loads(meta["history"])
            epoch, step = int(meta["epoch"]), int(meta["step"])
        except (LowlossError, KeyError, ValueError):  # a damaged checkpoint is not trusted: train from the start
            echo(f"{path} is damaged; starting this training over", self.quiet)
            path.unlink(missing_ok=True)
            return False
        for k, p in self.params.items():
            if f"param/{k}" not in t:
                raise LowlossError(f"checkpoint {path} lacks parameter '{k}': it belongs to a different run; "
                                   "remove it or use a new --out directory")
            if t[f"param/{k}"].shape != p.shape:
                raise LowlossError(f"checkpoint {path}: '{k}' has shape {tuple(t[f'param/{k}'].shape)}, "
                                   f"expected {tuple(p.shape)}")
            with torch.no_grad():
                p.copy_(t[f"param/{k}"].to(p.device))
        for k, p in self.params.items():
            pre = f"optim/{k}/"
            for key, v in t.items():
                if key.startswith(pre):
                    name = key[len(pre):]
                    self.opt.state[p][name] = v.clone() if name == "step" else v.to(p.device).clone()
        for name, obj in self.extra.items():
            pre = f"extra/{name}/"
            obj.load_state_tensors({k[len(pre):]: v for k, v in t.items() if k.startswith(pre)})
        self.generator.set_state(t["rng/generator"])
        torch.set_rng_state(t["rng/torch"])
        if "rng/cuda" in t and torch.cuda.is_available():
            torch.cuda.set_rng_state(t["rng/cuda"])
        self.state.epoch = epoch
        self.step = step
        self.state.history = history
        return True

    # ---------------------------------------------------------------- loop
    def run(self, resume: bool = False, stop_after_epochs: int | None = None) -> list[dict]:
        """Train to `epochs` (from the checkpoint when `resume`); `stop_after_epochs` stops early, resumably."""
        if resume:
            self.load_checkpoint()
        n_batches = self.data.num_batches(self.batch_size, self.drop_last)
        total = self.epochs * n_batches
        bar = progress(total=total, desc=self.desc, quiet=self.quiet, initial=self.state.epoch * n_batches,
                       unit="step")
        try:
            while self.state.epoch < self.epochs:
                if stop_after_epochs is not None and self.state.epoch >= stop_after_epochs:
                    break
                epoch = self.state.epoch
                loss_sum, correct, seen = 0.0, 0.0, 0
                batches = self.data.batches(self.batch_size, shuffle=self.shuffle, generator=self.generator,
                                            device=self.device, augment=self.augment, drop_last=self.drop_last)
                for i, (x, y) in enumerate(batches):
                    e = epoch + i / n_batches
                    lr = self.lr(e)
                    for g in self.opt.param_groups:
                        g["lr"] = lr * g.get("lr_scale", 1.0)
                    loss, n_correct = self.loss_fn(x, y, self.step)
                    if not torch.isfinite(loss):
                        raise LowlossError(
                            f"loss became {loss.item()} at epoch {epoch + 1}, step {i + 1} (lr {lr:.3g}): "
                            f"{self.nan_hint}. The last good checkpoint"
                            + (f" ({self._ckpt_path()}) is kept; resume with --resume" if self.run_dir else " is lost")
                        )
                    self.opt.zero_grad(set_to_none=True)
                    loss.backward()
                    self.opt.step()
                    self.step += 1
                    if self.after_step is not None:
                        self.after_step(self.step, epoch + (i + 1) / n_batches)
                    nb = len(y)
                    loss_sum += loss.item() * nb
                    if n_correct is not None:
                        correct += float(n_correct)
                    seen += nb
                    bar.update(1)
                    bar.set_postfix(epoch=f"{epoch + 1}/{self.epochs}", loss=f"{loss_sum / seen:.4f}", lr=f"{lr:.3g}")
                record = {"epoch": epoch + 1, "lr": self.lr(epoch + 1 - 1e-9), "train_loss": loss_sum / max(seen, 1)}
                if correct:
                    record["train_accuracy"] = correct / max(seen, 1)
                if self.after_epoch is not None:
                    record.update(self.after_epoch(epoch + 1) or {})
                self.state.history.append(record)
                self.state.epoch += 1
                if self.state.epoch % self.checkpoint_every == 0 or self.state.epoch == self.epochs:
                    self.save_checkpoint()
        finally:
            bar.close()
        return self.state.history
