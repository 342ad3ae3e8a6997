"""One SGD trainer for everything lowloss trains: modes, curves, simplexes, SWA/SWAG/FGE iterates.

:class:`Trainer` minimises a user-given minibatch loss over any set of leaf tensors (a module's
parameters, a curve's control points, a simplex's vertices) with SGD + momentum, a per-step learning
rate schedule, a progress bar with ETA, an atomic checkpoint every epoch and exact resume (parameters,
optimiser state, extra state such as BN buffers or SWA moments, and every RNG).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .utils import LowlossError, atomic_path, progress

SCHEDULES = ("constant", "cosine", "step", "curve", "linear")


def supervised_loss(model: torch.nn.Module, classification: bool) -> Callable:
    """The Trainer's `loss_fn` for a module trained on its data: cross-entropy (and the count of correct
    predictions) for classification, mean squared error (count None) for regression."""

    def loss_fn(x, y, step):
        out = model(x)
        if classification:
            return torch.nn.functional.cross_entropy(out, y), (out.argmax(-1) == y).sum().item()
        return torch.nn.functional.mse_loss(out, y), None

    return loss_fn


def lr_schedule(name: str, lr: float, epochs: float, *, final_ratio: float = 0.01) -> Callable[[float], float]:
    """Learning rate as a function of the (fractional) epoch.

    constant: lr throughout. cosine: lr * (1 + cos(pi e / E)) / 2. step: x0.1 at 50% and 75% of training.
    linear: linear decay from lr to lr * final_ratio. curve: Garipov et al.'s reference schedule, lr for the
    first half, linear decay to lr * final_ratio (1%) by 90%, then constant.
    """
    if name not in SCHEDULES:
        raise LowlossError(f"unknown schedule '{name}'; valid: {', '.join(SCHEDULES)}")

    def f(e: float) -> float:
        p = min(max(e / max(epochs, 1e-12), 0.0), 1.0)
        if name == "constant":
            return lr
        if name == "cosine":
            return lr * 0.5 * (1 + math.cos(math.pi * p))
        if name == "step":
            return lr * (0.1 ** ((p >= 0.5) + (p >= 0.75)))
        if name == "linear":
            return lr * (1 - (1 - final_ratio) * p)
        # curve
        if p <= 0.5:
            return lr
        if p <= 0.9:
            return lr * (1.0 - (p - 0.5) / 0.4 * (1 - final_ratio))
        return lr * final_ratio

    return f


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


class Trainer:
    """SGD over `params` (leaf tensors) minimising `loss_fn(x, y, step) -> (loss, n_correct or None)`.

    `after_step(step, epoch_float)` and `after_epoch(epoch) -> dict` let methods collect snapshots or
    moments; objects in `extra` are saved in and restored from the checkpoint.
    """

    CKPT = "checkpoint.safetensors"

    def __init__(self, params: Mapping[str, torch.Tensor], loss_fn: Callable, data, *, epochs: int,
                 batch_size: int, lr: Callable[[float], float], momentum: float = 0.9, weight_decay: float = 0.0,
                 nesterov: bool = False, generator: torch.Generator | None = None, device=None,
                 run_dir: str | Path | None = None, quiet: bool = False, desc: str = "train",
                 after_step: Callable | None = None, after_epoch: Callable | None = None,
                 extra: Mapping[str, Stateful] | None = None, drop_last: bool = False, augment: bool = True,
                 nan_hint: str = "lower the learning rate (--lr)"):
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
        self.opt = torch.optim.SGD(list(self.params.values()), lr=lr(0.0), momentum=momentum,
                                   weight_decay=weight_decay, nesterov=nesterov)
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
            st = self.opt.state.get(p, {})
            if "momentum_buffer" in st and st["momentum_buffer"] is not None:
                t[f"momentum/{names[i]}"] = st["momentum_buffer"]
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
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            meta = f.metadata()
        t = load_file(str(path))
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
            if f"momentum/{k}" in t:
                self.opt.state[p]["momentum_buffer"] = t[f"momentum/{k}"].to(p.device).clone()
        for name, obj in self.extra.items():
            pre = f"extra/{name}/"
            obj.load_state_tensors({k[len(pre):]: v for k, v in t.items() if k.startswith(pre)})
        self.generator.set_state(t["rng/generator"])
        torch.set_rng_state(t["rng/torch"])
        if "rng/cuda" in t and torch.cuda.is_available():
            torch.cuda.set_rng_state(t["rng/cuda"])
        self.state.epoch = int(meta["epoch"])
        self.step = int(meta["step"])
        self.state.history = json.loads(meta["history"])
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
                batches = self.data.batches(self.batch_size, shuffle=True, generator=self.generator,
                                            device=self.device, augment=self.augment, drop_last=self.drop_last)
                for i, (x, y) in enumerate(batches):
                    e = epoch + i / n_batches
                    lr = self.lr(e)
                    for g in self.opt.param_groups:
                        g["lr"] = lr
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
                self.save_checkpoint()
        finally:
            bar.close()
        return self.state.history
