"""1-D regression uncertainty: predictive bands of ESPRO, deep ensembles and SWAG (Izmailov et al. 2019; the
simplex paper's Figure 10).

Data: the 1-D toy (a random two-layer tanh net at three clusters of inputs plus N(0, 0.1^2) noise; test
inputs span [-3, 3], between and beyond the clusters). Model: a small ReLU MLP with a Gaussian likelihood of
fixed sigma = 0.1; its NLL is MSE / (2 sigma^2) + const, so every trainer here minimises the MSE (the same
minimisers; weight decay and the simplex volume term are relative to the MSE).

Methods (--method), each a set of functions f_m (members):

* ensemble: --modes independently initialised networks (full-batch Adam, cosine learning rate), each a
  run in OUT/modes/mode_<i>.
* swag: SWAG (`lowloss swag`) from the first mode in OUT/swag, --samples draws.
* espro: one simplex of --vertices vertices grown by SPRO (expected MSE over the simplex minus lambda log
  volume) from each of the first --espro-modes modes, in OUT/espro/simplex_<i>; --samples draws in all.

Predictive distribution: mean = (1/M) sum f_m, variance = Var_m f_m + sigma^2 (the std includes the noise).
Scores on the test points: test_ll (log density of that Gaussian, per point), test_ll_mixture (the exact
mixture (1/M) sum N(y; f_m, sigma^2)), rmse. Writes OUT/run.json (the scores and the mean epistemic std near
and away from the data), OUT/bands.safetensors (the bands on a grid) and OUT/regression.png (predictive mean
and +-2 std bands over the data and the true function). The networks are tiny: the CPU is the fastest device.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from .. import metrics as M
from .. import params as P
from ..config import option, replace, require
from ..data import load_dataset, regression_truth
from ..engine.schedules import lr_schedule
from ..engine.train import Trainer, supervised_loss
from ..rundir import MODEL_FILE, RunDir, build_from_config, load_run, read_result, run_method
from ..utils import echo, resolve_device, torch_threads
from . import swag
from .spro import (
    PROGRESS_FILE,
    SIMPLEX_FILE,
    SproConfig,
    grow_complex,
    load_complex,
    sample_vectors,
    save_complex,
)

METHODS = ("espro", "ensemble", "swag")
INPUTS = None  # trains its own modes
BANDS_FILE = "bands.safetensors"
MODE_CHECKPOINT_EVERY = 100  # epochs (one full-batch step each) between checkpoints of a mode
SWAG_MOMENTUM = 0.9


def method_list(value) -> tuple[str, ...]:
    """--method values (repeatable) in the order of METHODS; none given: all of them."""
    given = (value,) if isinstance(value, str) else tuple(value or ())
    return tuple(m for m in METHODS if m in given) + tuple(m for m in given if m not in METHODS) if given else METHODS


@dataclass
class Config:
    """The 1-D toy's methods and their training."""

    method: tuple[str, ...] = option(METHODS, f"Method to fit and draw, repeatable: {', '.join(METHODS)} "
                                              "(default: all).", multiple=True, metavar="METHOD", parse=method_list)
    widths: str = option("50,50", "Hidden widths of the ReLU MLP.")
    modes: int = option(5, "Deep-ensemble size.")
    epochs: int = option(2000, "Full-batch Adam steps per mode (one per epoch), cosine learning rate.")
    lr: float = option(0.01, "Adam learning rate of the modes.")
    wd: float = option(1e-4, "Weight decay (modes, SWAG, simplexes).")
    espro_modes: int = option(3, "Simplexes in the ESPRO ensemble, one grown from each of the first modes.")
    vertices: int = option(3, "Vertices per ESPRO simplex, the mode included.")
    vertex_epochs: int = option(200, "SPRO epochs per added vertex.")
    vertex_lr: float = option(0.01, "SPRO learning rate (SGD).")
    lmbda: float = option(1e-6, "SPRO volume-regulariser LAMBDA.")
    swag_epochs: int = option(100, "SWAG epochs.")
    swag_lr: float = option(0.01, "SWAG constant learning rate.")
    samples: int = option(30, "Members drawn from SWAG and from the ESPRO simplexes (in all).")
    batch_size: int = option(40, "Minibatch size of SWAG and SPRO.")
    data_seed: int = option(0, "Seed of the toy data and its true function.")
    seed: int = 0
    noise: float = option(0.1, "sigma of the Gaussian likelihood.", cli=False)
    device: str = option("cpu", "Device of the networks (they are tiny: the CPU is fastest).")

    def check(self) -> None:
        self.method = method_list(self.method)
        bad = [m for m in self.method if m not in METHODS]
        require(bool(self.method) and not bad,
                f"--method {','.join(bad) or '(none)'}: choose from {', '.join(METHODS)}")
        require(self.modes >= 1 and self.espro_modes >= 1 and self.vertices >= 2 and self.samples >= 1,
                "--modes, --espro-modes and --samples must be >= 1 and --vertices >= 2")
        require("espro" not in self.method or self.espro_modes <= self.modes,
                f"--espro-modes {self.espro_modes} exceeds --modes {self.modes}")
        require(self.epochs >= 1 and self.vertex_epochs >= 1 and self.swag_epochs >= 1,
                "--epochs, --vertex-epochs and --swag-epochs must be >= 1")
        require(self.lr > 0 and self.vertex_lr > 0 and self.swag_lr > 0, "learning rates must be positive")
        require(self.wd >= 0 and self.lmbda >= 0 and self.noise > 0,
                "--wd and --lmbda must be >= 0 and the noise positive")
        require(self.batch_size >= 1, f"--batch-size must be >= 1 (got {self.batch_size})")


# ----------------------------------------------------------------------------------------------- full-batch modes
@dataclass
class ModeConfig:
    """One full-batch mode: an MLP with hidden `widths` trained with Adam on the whole training set at once
    (one step per epoch), cosine learning rate from `lr`, weight decay `wd` (Adam's L2 term, the gradient of
    wd/2 ||w||^2). The regression and spirals methods set every field from their own Config."""

    data: str
    widths: str
    epochs: int
    lr: float
    wd: float
    seed: int
    data_seed: int
    device: str

    def check(self) -> None:
        require(self.epochs >= 1, f"--epochs must be >= 1 (got {self.epochs})")
        require(self.lr > 0, f"--lr must be positive (got {self.lr})")
        require(self.wd >= 0, f"--wd must be >= 0 (got {self.wd})")


def mode_architecture(config: ModeConfig) -> dict:
    return {"model": "mlp", "model_options": {"widths": config.widths}, "data": config.data,
            "data_seed": config.data_seed, "data_dir": None, "device": config.device}


def fit_mode(config: ModeConfig, inputs, run_dir: RunDir, *, quiet: bool = False,
             stop_after_epochs: int | None = None) -> dict:
    """Train a full-batch mode into `run_dir` (model.safetensors and an ordinary network run.json); with
    `stop_after_epochs` it stops there, resumable from the last checkpoint."""
    arch = mode_architecture(config)
    device = resolve_device(config.device)
    data = load_dataset(config.data, seed=config.data_seed)
    torch.manual_seed(config.seed)
    model, data = build_from_config(arch, data, device)
    classification = data.num_classes > 0
    task_loss = supervised_loss(model, classification)
    params = list(model.parameters())

    def loss_fn(x, y, step):  # the task loss plus wd/2 ||w||^2
        loss, correct = task_loss(x, y, step)
        return loss + 0.5 * config.wd * sum(p.pow(2).sum() for p in params), correct

    trainer = Trainer(dict(model.named_parameters()), loss_fn, data.train, epochs=config.epochs,
                      batch_size=len(data.train), lr=lr_schedule("cosine", config.lr, config.epochs),
                      optimizer="adam", shuffle=False, augment=False,
                      checkpoint_every=MODE_CHECKPOINT_EVERY, generator=torch.Generator().manual_seed(config.seed),
                      device=device, run_dir=run_dir.path, quiet=quiet, desc=f"mode {run_dir.path.name}")
    t0 = time.time()
    trainer.run(resume=run_dir.resuming, stop_after_epochs=stop_after_epochs)
    if trainer.state.epoch < config.epochs:  # stopped early on purpose: the checkpoint resumes it
        return {"stopped_after_epoch": trainer.state.epoch}
    with torch.no_grad():
        final = float(task_loss(data.train.x, data.train.y, trainer.step)[0])
    run_dir.save_tensors(MODEL_FILE, model.state_dict(), {"model": "mlp", "data": config.data})
    echo(f"mode {run_dir.path.name}: train loss {final:.4f}", quiet)
    return run_dir.finish({"seed": config.seed, "data": data.describe(), "num_params": P.num_params(model),
                           "history": trainer.state.history, "final": {"train": {"loss": final}},
                           "train_seconds": time.time() - t0}, model=arch)


# run_method's view of a mode sub-run: recorded as a `train` run, so whatever opens a trained network opens it
FULL_BATCH_MODE = SimpleNamespace(__name__="lowloss.methods.train", fit=fit_mode)


def train_mode(config: ModeConfig, out: str | Path, *, resume: bool = False, quiet: bool = False,
               stop_after_epochs: int | None = None) -> Path:
    """The mode of `config` in the run directory `out` (trained there unless it is finished)."""
    run_method(FULL_BATCH_MODE, config, None, out, resume=resume, quiet=quiet, stop_after_epochs=stop_after_epochs)
    return Path(out)


def mode_config(config, data: str, seed: int) -> ModeConfig:
    """The full-batch mode of a method Config with widths, epochs, lr, wd, data_seed and device."""
    return ModeConfig(data=data, widths=config.widths, epochs=config.epochs, lr=config.lr, wd=config.wd, seed=seed,
                      data_seed=config.data_seed, device=config.device)


# ----------------------------------------------------------------------------------------------- scores
@torch.no_grad()
def _functions(model, vectors, x: torch.Tensor) -> np.ndarray:
    return np.stack([P.functional_forward(model, v, x).reshape(-1).double().cpu().numpy() for v in vectors])


def predictive(funcs_test: np.ndarray, y: np.ndarray, noise: float) -> dict:
    """Scores of members' test predictions [M, N] under y = f + N(0, noise^2)."""
    mean, var = funcs_test.mean(0), funcs_test.var(0) + noise ** 2
    m = M.regression_metrics(torch.from_numpy(mean), torch.from_numpy(var), torch.from_numpy(y))
    comp = -0.5 * (np.log(2 * np.pi * noise ** 2) + (y[None] - funcs_test) ** 2 / noise ** 2)
    mix = np.logaddexp.reduce(comp, axis=0) - np.log(len(funcs_test))
    return {**m, "test_ll_mixture": float(mix.mean())}


# ----------------------------------------------------------------------------------------------- the method
def fit(config: Config, inputs, run_dir: RunDir, *, quiet: bool = False) -> dict:
    """Train what the methods need (modes, SWAG and simplexes kept under OUT), score them, save the bands.
    Runs with one intra-op thread: these networks are tiny, and on a shared machine extra threads only add
    synchronisation overhead (restored afterwards)."""
    with torch_threads(1):
        return _fit(config, run_dir, quiet)


def _fit(config: Config, run_dir: RunDir, quiet: bool) -> dict:
    t0 = time.time()
    device = resolve_device(config.device)
    gen = torch.Generator().manual_seed(config.seed)
    methods = config.method
    n_modes = config.modes if "ensemble" in methods else (config.espro_modes if "espro" in methods else 1)
    mode_dirs = [train_mode(mode_config(config, "regression1d", config.seed + i), run_dir.sub(f"modes/mode_{i}"),
                            resume=run_dir.resuming, quiet=quiet) for i in range(n_modes)]
    base = load_run(mode_dirs[0], device=device)
    model, data = base.model, base.data
    members: dict[str, list[torch.Tensor]] = {}
    info: dict = {}
    if "ensemble" in methods:
        members["ensemble"] = [load_run(d, device=device, data=data).vector for d in mode_dirs]
    if "swag" in methods:
        sdir = run_dir.sub("swag")
        scfg = swag.Config(epochs=config.swag_epochs, lr=config.swag_lr, momentum=SWAG_MOMENTUM, wd=config.wd,
                           batch_size=config.batch_size, seed=config.seed, device=config.device, evaluate=False)
        res = run_method(swag, scfg, [str(mode_dirs[0])], sdir, resume=run_dir.resuming, quiet=quiet, data=data)
        pred = swag.load(sdir, device=device, samples=config.samples)
        members["swag"] = [v for v, _ in pred.members(gen)]
        info["swag"] = {"n_models": res.get("n_models"), "scale": pred.info.get("scale"), "dir": str(sdir)}
    if "espro" in methods:
        members["espro"], info["espro"] = espro_members(config, mode_dirs[:config.espro_modes], run_dir, gen, quiet)
    # evaluation
    grid = np.linspace(-3.0, 3.0, 400)
    truth = regression_truth(config.data_seed)(grid)
    xg = torch.from_numpy(grid.astype(np.float32)).reshape(-1, 1).to(device)
    xt, yt = data.test.x, data.test.y.reshape(-1).double().cpu().numpy()
    clusters = data.meta.get("clusters", [])
    between = (np.abs(grid[:, None] - np.asarray(clusters)[None]).min(1) > 0.6 if clusters
               else np.zeros_like(grid, bool))
    results = {}
    bands = {"train_x": data.train.x.reshape(-1), "train_y": data.train.y.reshape(-1),
             "grid": torch.from_numpy(grid), "truth": torch.from_numpy(truth)}
    for name in (m for m in METHODS if m in members):
        vecs = members[name]
        ft, fg = _functions(model, vecs, xt), _functions(model, vecs, xg)
        score = predictive(ft, yt, config.noise)
        epi = fg.std(0)
        results[name] = {**score, "members": len(vecs),
                         "mean_epistemic_std": {"near_data": float(epi[~between].mean()),
                                                "away_from_data": float(epi[between].mean()) if between.any() else None},
                         **info.get(name, {})}
        bands.update({f"{name}/mean": torch.from_numpy(fg.mean(0)),
                      f"{name}/std": torch.from_numpy(np.sqrt(fg.var(0) + config.noise ** 2)),
                      f"{name}/epistemic_std": torch.from_numpy(epi), f"{name}/functions": torch.from_numpy(fg[:8])})
        echo(f"{name:9s} test log-lik {score['test_ll']:.4f} (mixture {score['test_ll_mixture']:.4f}), "
             f"rmse {score['rmse']:.4f}, {len(vecs)} members", quiet)
    run_dir.save_tensors(BANDS_FILE, bands)
    progress = tuple(f"espro/simplex_{i}/{PROGRESS_FILE}" for i in range(config.espro_modes if "espro" in methods else 0))
    return run_dir.finish({"data": data.describe(), "noise_sigma": config.noise, "results": results,
                           "seconds": time.time() - t0, "bands": BANDS_FILE,
                           "note": "test_ll: Gaussian with the members' mean and variance + sigma^2; test_ll_mixture: "
                                   "exact equal-weight mixture of N(f_m, sigma^2); epistemic std averaged near the "
                                   "clusters and more than 0.6 away from every cluster"}, remove=progress)


def espro_members(config: Config, mode_dirs, run_dir: RunDir, gen: torch.Generator, quiet: bool):
    """Grow one simplex per mode in OUT/espro/simplex_<i> (resuming continues from the vertices already
    grown, kept in its progress.safetensors); `samples` draws spread over the simplexes."""
    device = resolve_device(config.device)
    scfg = SproConfig(epochs=config.vertex_epochs, lr=config.vertex_lr, lmbda=config.lmbda, wd=config.wd,
                      batch_size=config.batch_size)
    per = max(1, -(-config.samples // len(mode_dirs)))
    vecs, logs = [], []
    for i, d in enumerate(mode_dirs):
        sdir = run_dir.sub(f"espro/simplex_{i}")
        run = load_run(d, device=device)
        grown = grow_complex(run.model, run.data, [run.vector], [tuple(range(config.vertices))], config.vertices - 1,
                             scfg, seed=config.seed + i, out=sdir, resume=run_dir.resuming, quiet=quiet,
                             desc=f"espro simplex {i}")
        save_complex(sdir / SIMPLEX_FILE, grown.complex, [d])
        run_dir.write_json(f"espro/simplex_{i}/simplex_log.json", {"logs": grown.logs})
        cplx, _ = load_complex(sdir, device=device)
        with torch.no_grad():
            lv = float(cplx.log_volume())
        logs.append({"dir": str(sdir), "log_volume": lv})
        vecs.extend(list(sample_vectors(cplx, per, gen)))
    return vecs, {"simplexes": logs, "samples_per_simplex": per, "spro": dataclasses.asdict(scfg)}


def summary(result: dict) -> str:
    return "\n".join(f"{name:9s} test log-lik {r['test_ll']:.4f}  mixture {r['test_ll_mixture']:.4f}  "
                     f"rmse {r['rmse']:.4f}" for name, r in result["results"].items())


def load(path: str | Path, device=None) -> dict:
    """The scores of a finished regression run (run.json's contents: ``results`` per method)."""
    return read_result(path, "regression")


def run_regression(config: Config | None = None, out: str | Path = "runs/regression", *, resume: bool = False,
                   quiet: bool = False, **overrides) -> dict:
    """Python API: ``run_regression(out="runs/reg", method=("ensemble",), modes=3)``."""
    return run_method(sys.modules[__name__], replace(config or Config(), **overrides), None, out, resume=resume,
                      quiet=quiet)


__all__ = ["BANDS_FILE", "Config", "FULL_BATCH_MODE", "INPUTS", "METHODS", "ModeConfig", "espro_members", "fit",
           "fit_mode", "load", "method_list", "mode_config", "predictive", "run_regression", "summary", "train_mode"]
