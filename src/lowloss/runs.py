"""Run directories: training a mode (`lowloss train`) and loading any run back as (model, vector, data).

A run directory holds ``model.safetensors`` (the state dict: parameters and buffers), ``run.json``
(``config``, ``seed``, ``versions``, ``history``, ``final``) and, while training, an atomic per-epoch
``checkpoint.safetensors`` from which ``--resume`` continues exactly.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from . import params as P
from .data import Dataset, load_dataset
from .evaluate import evaluate_vector
from .models import build_model, parse_options
from .train import TensorState, Trainer, lr_schedule, supervised_loss
from .utils import (
    LowlossError,
    atomic_path,
    echo,
    jsonable,
    read_json,
    resolve_device,
    seed_everything,
    versions,
    write_json,
)

MODEL_FILE = "model.safetensors"
RUN_FILE = "run.json"


@dataclass
class TrainConfig:
    """Configuration of one ordinary training run (a "mode")."""

    data: str = "digits"
    model: str = "convnet"
    model_options: dict = field(default_factory=dict)
    epochs: int = 20
    lr: float = 0.05
    momentum: float = 0.9
    wd: float = 5e-4
    batch_size: int = 64
    schedule: str = "cosine"
    seed: int = 0
    data_seed: int = 0
    data_dir: str | None = None
    device: str = "auto"


def save_state(path: Path, state: dict[str, torch.Tensor], metadata: dict | None = None) -> None:
    t = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    with atomic_path(path) as tmp:
        save_file(t, str(tmp), metadata={k: str(v) for k, v in (metadata or {}).items()})


def load_state_into(model: nn.Module, state: dict[str, torch.Tensor], source: str = "checkpoint") -> None:
    """Load a state dict, explaining any mismatch tensor by tensor instead of torch's traceback."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k}: {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
              for k in own if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing from the {source}: {', '.join(missing[:8])}{' ...' if len(missing) > 8 else ''}")
        if unexpected:
            parts.append(f"not in the model: {', '.join(unexpected[:8])}{' ...' if len(unexpected) > 8 else ''}")
        if shapes:
            parts.append(f"shape differs: {'; '.join(shapes[:8])}")
        raise LowlossError(f"the {source} does not fit the model ({' | '.join(parts)}); "
                           "check --model, --model-opt and --data match the run that wrote it")
    model.load_state_dict(state)


@dataclass
class Run:
    """A finished run loaded back: the module (with its weights loaded), its vector, the data, the config."""

    path: Path
    config: dict
    model: nn.Module
    data: Dataset
    device: torch.device

    @property
    def vector(self) -> torch.Tensor:
        return P.flatten(self.model)

    @property
    def buffers(self) -> dict[str, torch.Tensor]:
        return P.buffers(self.model)

    def architecture(self) -> tuple:
        c = self.config
        return (c["model"], tuple(sorted(c.get("model_options", {}).items())), c["data"], c.get("data_seed", 0))


def start_run_dir(out: Path, config: dict, *, resume: bool, quiet: bool, finished: dict | None,
                  same: bool | None = None) -> dict | None:
    """The shared guard of every resumable command's output directory.

    `finished` is the finished run's JSON (None while unfinished) and `same` whether it was made with
    `config` (default: ``finished["config"] == config``). Returns the finished JSON when there is nothing
    to do; raises a clear error for a different finished run, an interrupted run without --resume, or
    --resume with another config; otherwise records `config` in out/config.json and returns None.
    """
    if finished is not None:
        if (finished.get("config") == config if same is None else same) or resume:
            echo(f"{out} is already finished; nothing to do", quiet)
            return finished
        raise LowlossError(f"{out} already holds a finished run with another config; choose a new --out")
    if (out / Trainer.CKPT).exists() and not resume:
        raise LowlossError(f"{out} holds an interrupted run: continue it with --resume or choose a new --out")
    if resume and (out / "config.json").exists() and read_json(out / "config.json") != jsonable(config):
        raise LowlossError(f"--resume with a different config than the interrupted run in {out}")
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "config.json", config)
    return None


def build_from_config(cfg: dict, data: Dataset | None = None, device=None) -> tuple[nn.Module, Dataset]:
    if data is None:
        data = load_dataset(cfg["data"], seed=cfg.get("data_seed", 0), data_dir=cfg.get("data_dir"))
    device = resolve_device(device or cfg.get("device", "auto"))
    data = data.to(device)
    model = build_model(cfg["model"], data.input_shape, data.num_classes, cfg.get("model_options", {})).to(device)
    return model, data


def load_run(path: str | Path, device=None, data: Dataset | None = None) -> Run:
    """Load a run directory written by `lowloss train` (or anything that writes run.json + model.safetensors)."""
    path = Path(path)
    if not (path / RUN_FILE).exists() or not (path / MODEL_FILE).exists():
        hint = " (training was interrupted: finish it with lowloss train --resume)" if (path / Trainer.CKPT).exists() else ""
        raise LowlossError(f"{path} is not a finished run directory: it needs {RUN_FILE} and {MODEL_FILE}{hint}")
    info = read_json(path / RUN_FILE)
    cfg = info["config"]
    model, data = build_from_config(cfg, data, device)
    load_state_into(model, load_file(str(path / MODEL_FILE), device=str(next(iter(model.parameters())).device)),
                    source=str(path / MODEL_FILE))
    return Run(path, cfg, model, data, resolve_device(device or cfg.get("device", "auto")))


def load_runs(paths, device=None, same_architecture: bool = True) -> list[Run]:
    """Several runs on the same data (and, by default, the same architecture; checked with a clear error)."""
    runs: list[Run] = []
    for p in paths:
        r = load_run(p, device=device, data=runs[0].data if runs else None)
        if runs and not same_architecture and r.architecture()[2:] != runs[0].architecture()[2:]:
            raise LowlossError(f"{p} and {runs[0].path} were trained on different data or splits "
                               f"({r.architecture()[2:]} vs {runs[0].architecture()[2:]})")
        if runs and same_architecture and r.architecture() != runs[0].architecture():
            raise LowlossError(f"{p} and {runs[0].path} differ in architecture or data "
                               f"({r.architecture()} vs {runs[0].architecture()}); they must match")
        runs.append(r)
    return runs


def train_mode(config: TrainConfig, out: str | Path, *, resume: bool = False, quiet: bool = False,
               data: Dataset | None = None, stop_after_epochs: int | None = None) -> dict:
    """Train one network with SGD and write a run directory. Returns the contents of run.json."""
    out = Path(out)
    cfg = asdict(config)
    cfg["model_options"] = parse_options(cfg["model_options"])
    finished = read_json(out / RUN_FILE) if (out / RUN_FILE).exists() and (out / MODEL_FILE).exists() else None
    done = start_run_dir(out, cfg, resume=resume, quiet=quiet, finished=finished)
    if done is not None:
        return done

    device = resolve_device(config.device)
    gen = seed_everything(config.seed)
    model, data = build_from_config(cfg, data, device)
    model.train()
    classification = data.num_classes > 0

    loss_fn = supervised_loss(model, classification)

    def after_epoch(epoch):
        if not classification:
            return {}
        res = evaluate_vector(model, P.flatten(model), data, splits=("test",))
        model.train()
        return {"test_loss": res["test"]["loss"], "test_accuracy": res["test"]["accuracy"]}

    trainer = Trainer(dict((n, p) for n, p in model.named_parameters() if p.requires_grad), loss_fn, data.train,
                      epochs=config.epochs, batch_size=config.batch_size,
                      lr=lr_schedule(config.schedule, config.lr, config.epochs), momentum=config.momentum,
                      weight_decay=config.wd, generator=gen, device=device, run_dir=out, quiet=quiet,
                      desc=f"train {out.name}", after_epoch=after_epoch,
                      extra={"buffers": TensorState(dict(model.named_buffers()))})
    t0 = time.time()
    trainer.run(resume=resume, stop_after_epochs=stop_after_epochs)
    if trainer.state.epoch < config.epochs:  # stopped early on purpose: the checkpoint resumes it
        return {"stopped_after_epoch": trainer.state.epoch}
    history = trainer.state.history
    final = evaluate_vector(model, P.flatten(model), data) if classification else {}
    final = {"train": {k: final["train"][k] for k in ("loss", "accuracy")}, "test": final["test"]} if final else {}
    info = {"config": cfg, "seed": config.seed, "versions": versions(), "data": data.describe(),
            "num_params": P.num_params(model), "history": history, "final": final,
            "train_seconds": time.time() - t0}
    save_state(out / MODEL_FILE, model.state_dict(), {"model": cfg["model"], "data": cfg["data"]})
    write_json(out / RUN_FILE, info)
    (out / Trainer.CKPT).unlink(missing_ok=True)
    return info
