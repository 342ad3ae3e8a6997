"""Train one network (a "mode"): the ordinary run every other method starts from.

SGD with momentum and weight decay under an epoch schedule, on any model of the zoo or a user's
package.module:factory. The run directory holds model.safetensors (the state dict: parameters and
buffers) and run.json (config, the architecture under "model", history, final train/test metrics); an
interrupted run continues exactly from checkpoint.safetensors with --resume.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from .. import params as P
from ..config import option, replace, require
from ..data import Dataset
from ..engine.evaluate import evaluate_vector
from ..engine.schedules import SCHEDULES, lr_schedule
from ..engine.train import TensorState, Trainer, supervised_loss
from ..models import parse_options
from ..rundir import MODEL_FILE, RunDir, build_from_config, load_run, run_method
from ..utils import resolve_device, seed_everything

INPUTS = None  # trains from scratch: no input runs


@dataclass
class Network:
    """The fields of every method that builds a network from scratch: its data and its architecture."""

    data: str = "digits"
    data_dir: str | None = None
    data_seed: int = 0
    model: str = "convnet"
    model_options: dict = option(default_factory=dict, flag="--model-opt", metavar="KEY=VALUE", multiple=True,
                                 parse=parse_options)


@dataclass
class Config(Network):
    """One ordinary training run."""

    epochs: int = 20
    lr: float = 0.05
    momentum: float = 0.9
    wd: float = 5e-4
    batch_size: int = 64
    schedule: str = option("cosine", "Learning-rate schedule; 'curve' is Garipov et al.'s (constant, linear "
                                     "decay to 1% by 90%).", choices=SCHEDULES)
    seed: int = 0
    device: str = "auto"

    def check(self) -> None:
        self.model_options = parse_options(self.model_options)
        require(self.epochs >= 0, f"--epochs must be >= 0 (got {self.epochs})")
        require(self.lr > 0, f"--lr must be positive (got {self.lr})")
        require(self.batch_size >= 1, f"--batch-size must be >= 1 (got {self.batch_size})")
        require(0 <= self.momentum < 1, f"--momentum must be in [0, 1) (got {self.momentum})")
        require(self.wd >= 0, f"--wd must be >= 0 (got {self.wd})")
        require(self.schedule in SCHEDULES, f"--schedule must be one of {', '.join(SCHEDULES)}")


def architecture(config: Config) -> dict:
    """What load_run needs to rebuild the network: model, model_options, data, data_seed, data_dir."""
    return {"model": config.model, "model_options": parse_options(config.model_options), "data": config.data,
            "data_seed": config.data_seed, "data_dir": config.data_dir, "device": config.device}


def fit(config: Config, inputs, run_dir: RunDir, *, quiet: bool = False, data: Dataset | None = None,
        stop_after_epochs: int | None = None) -> dict:
    """Train the network and write the run directory. Returns run.json's contents."""
    config.check()
    arch = architecture(config)
    device = resolve_device(config.device)
    gen = seed_everything(config.seed)
    model, data = build_from_config(arch, data, device)
    model.train()
    classification = data.num_classes > 0
    out = run_dir.path

    def after_epoch(epoch):
        if not classification:
            return {}
        res = evaluate_vector(model, P.flatten(model), data, splits=("test",))
        model.train()
        return {"test_loss": res["test"]["loss"], "test_accuracy": res["test"]["accuracy"]}

    trainer = Trainer(dict((n, p) for n, p in model.named_parameters() if p.requires_grad),
                      supervised_loss(model, classification), data.train, epochs=config.epochs,
                      batch_size=config.batch_size, lr=lr_schedule(config.schedule, config.lr, config.epochs),
                      momentum=config.momentum, weight_decay=config.wd, generator=gen, device=device, run_dir=out,
                      quiet=quiet, desc=f"train {out.name}", after_epoch=after_epoch,
                      extra={"buffers": TensorState(dict(model.named_buffers()))})
    t0 = time.time()
    trainer.run(resume=run_dir.resuming, stop_after_epochs=stop_after_epochs)
    if trainer.state.epoch < config.epochs:  # stopped early on purpose: the checkpoint resumes it
        return {"stopped_after_epoch": trainer.state.epoch}
    final = evaluate_vector(model, P.flatten(model), data) if classification else {}
    final = {"train": {k: final["train"][k] for k in ("loss", "accuracy")}, "test": final["test"]} if final else {}
    run_dir.save_tensors(MODEL_FILE, model.state_dict(), {"model": config.model, "data": config.data})
    return run_dir.finish({"seed": config.seed, "data": data.describe(), "num_params": P.num_params(model),
                           "history": trainer.state.history, "final": final,
                           "train_seconds": time.time() - t0}, model=arch)


def summary(info: dict) -> str:
    f = info.get("final")
    if not f:
        return ""
    return (f"train loss {f['train']['loss']:.4f} acc {f['train']['accuracy']:.4f} | test loss "
            f"{f['test']['loss']:.4f} acc {f['test']['accuracy']:.4f} ece {f['test']['ece']:.4f} "
            f"({info.get('train_seconds', 0):.1f}s)")


def load(path: str | Path, device=None, data: Dataset | None = None):
    """The trained network as a :class:`lowloss.rundir.Run` (module with weights, data, architecture)."""
    return load_run(path, device=device, data=data)


def train(config: Config | None = None, out: str | Path = "runs/mode", *, resume: bool = False,
          quiet: bool = False, data: Dataset | None = None, stop_after_epochs: int | None = None,
          **overrides) -> dict:
    """Python API: ``train(Config(model="mlp"), "runs/m0")`` or ``train(out="runs/m0", epochs=5)``."""
    import sys

    return run_method(sys.modules[__name__], replace(config or Config(), **overrides), None, out, resume=resume,
                      quiet=quiet, data=data, stop_after_epochs=stop_after_epochs)


__all__ = ["Config", "Network", "architecture", "fit", "load", "summary", "train"]
