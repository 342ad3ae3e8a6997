"""1-D regression uncertainty (Izmailov et al. 2019; the simplex paper's Figure 10, METHODS.md 6).

Data: :func:`lowloss.data.load_regression1d` (a random two-layer tanh net at three clusters of inputs plus
N(0, 0.1^2) noise; test inputs span [-3, 3], between and beyond the clusters). Model: a small ReLU MLP with
a Gaussian likelihood of fixed sigma = 0.1; its NLL is MSE / (2 sigma^2) + const, so every trainer here
minimises the MSE (the same minimisers; weight decay and the simplex volume term are relative to the MSE).

Methods, each a set of functions f_m (members):

* ``ensemble``: `modes` independently initialised networks (full-batch Adam, cosine schedule).
* ``swag``: SWAG (:mod:`lowloss.methods.swag`) from the first mode, `samples` draws.
* ``espro``: one simplex of `vertices` vertices grown from each of the first `espro_modes` modes with
  :func:`lowloss.methods.spro.grow_complex` (SPRO: expected MSE over the simplex minus lambda log volume),
  `samples` draws in all.

Predictive distribution: mean = (1/M) sum f_m, variance = Var_m f_m + sigma^2 (the "std includes the noise").
Scores on the test points: ``test_ll`` (log density of that Gaussian, per point), ``test_ll_mixture`` (the
exact mixture (1/M) sum N(y; f_m, sigma^2)), ``rmse``.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from .. import metrics as M
from .. import params as P
from ..utils import LowlossError, echo, read_json, versions, write_json

METHODS = ("espro", "ensemble", "swag")


@dataclass
class RegressionConfig:
    methods: tuple = METHODS
    widths: str = "50,50"
    modes: int = 5              # deep-ensemble size
    epochs: int = 2000          # full-batch Adam steps per mode
    lr: float = 0.01
    wd: float = 1e-4
    espro_modes: int = 3        # simplexes in the ESPRO ensemble (grown from the first modes)
    vertices: int = 3           # vertices per simplex, the mode included
    vertex_epochs: int = 200    # SPRO epochs per added vertex
    vertex_lr: float = 0.01
    lmbda: float = 1e-6
    swag_epochs: int = 100
    swag_lr: float = 0.01
    samples: int = 30           # members drawn from SWAG / from the ESPRO simplexes (in all)
    batch_size: int = 40
    data_seed: int = 0
    seed: int = 0
    noise: float = 0.1

    def check(self) -> None:
        bad = [m for m in self.methods if m not in METHODS]
        if bad or not self.methods:
            raise LowlossError(f"--method {','.join(bad) or '(none)'}: choose from {', '.join(METHODS)}")
        if self.modes < 1 or self.espro_modes < 1 or self.vertices < 2 or self.samples < 1:
            raise LowlossError("--modes, --espro-modes and --samples must be >= 1 and --vertices >= 2")
        if "espro" in self.methods and self.espro_modes > self.modes:
            raise LowlossError(f"--espro-modes {self.espro_modes} exceeds --modes {self.modes}")


def full_batch_config(data: str, widths: str, epochs: int, lr: float, wd: float, seed: int, data_seed: int) -> dict:
    """A lowloss run config for a full-batch Adam mode (so load_run / SWAG / simplexes can open it)."""
    return {"data": data, "model": "mlp", "model_options": {"widths": widths}, "epochs": epochs, "lr": lr,
            "momentum": 0.9, "wd": wd, "batch_size": 40, "schedule": "cosine", "seed": seed, "data_seed": data_seed,
            "data_dir": None, "device": "cpu", "optimizer": "adam, full batch, cosine (lowloss regression/spirals)"}


def train_full_batch(config: dict, out: Path, quiet: bool = True) -> Path:
    """Train an MLP mode with full-batch Adam on the task's loss (MSE or cross-entropy) + wd/2 ||w||^2, with a
    cosine learning rate; write a run directory (model.safetensors, run.json). Reused when already there."""
    from ..data import load_dataset
    from ..models import build_model
    from ..rundir import MODEL_FILE
    from ..rundir import RESULT_FILE as RUN_FILE
    from ..rundir import save_tensors as save_state

    out = Path(out)
    if (out / RUN_FILE).exists() and (out / MODEL_FILE).exists():
        if read_json(out / RUN_FILE)["config"] != config:
            raise LowlossError(f"{out} holds a mode trained with another configuration; choose a new --out")
        return out
    data = load_dataset(config["data"], seed=config["data_seed"])
    torch.manual_seed(config["seed"])
    model = build_model("mlp", data.input_shape, data.num_classes, config["model_options"])
    steps = config["epochs"]
    opt = torch.optim.Adam(model.parameters(), lr=config["lr"])
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / steps)))
    x, y = data.train.x, data.train.y

    def task_loss():
        o = model(x)
        return torch.nn.functional.cross_entropy(o, y) if data.num_classes else torch.nn.functional.mse_loss(o, y)

    t0 = time.time()
    for _ in range(steps):
        reg = 0.5 * config["wd"] * sum(p.pow(2).sum() for p in model.parameters())
        loss = task_loss() + reg
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    with torch.no_grad():
        final = float(task_loss())
    save_state(out / MODEL_FILE, model.state_dict(), {"model": "mlp", "data": config["data"]})
    write_json(out / RUN_FILE, {"config": config, "seed": config["seed"], "versions": versions(),
                                "data": data.describe(), "num_params": P.num_params(model),
                                "final": {"train": {"loss": final}}, "train_seconds": time.time() - t0})
    echo(f"mode {out.name}: train loss {final:.4f}", quiet)
    return out


def train_mode_regression(cfg: RegressionConfig, seed: int, out: Path, quiet: bool = True) -> Path:
    """One mode of the toy: full-batch Adam on the MSE (+ wd/2 ||w||^2), cosine learning rate."""
    return train_full_batch(full_batch_config("regression1d", cfg.widths, cfg.epochs, cfg.lr, cfg.wd, seed,
                                              cfg.data_seed), out, quiet)


@torch.no_grad()
def _functions(model, vectors, x: torch.Tensor) -> np.ndarray:
    return np.stack([P.functional_forward(model, v, x).reshape(-1).double().numpy() for v in vectors])


def predictive(funcs_test: np.ndarray, y: np.ndarray, noise: float) -> dict:
    """Scores of members' test predictions [M, N] under y = f + N(0, noise^2)."""
    mean, var = funcs_test.mean(0), funcs_test.var(0) + noise ** 2
    m = M.regression_metrics(torch.from_numpy(mean), torch.from_numpy(var), torch.from_numpy(y))
    comp = -0.5 * (np.log(2 * np.pi * noise ** 2) + (y[None] - funcs_test) ** 2 / noise ** 2)
    mix = np.logaddexp.reduce(comp, axis=0) - np.log(len(funcs_test))
    return {**m, "test_ll_mixture": float(mix.mean())}


def _run_regression(cfg: RegressionConfig, out, *, quiet: bool = False) -> dict:
    """Train what the methods need (resumable per mode / SWAG / simplex), evaluate, write regression.json
    and regression.png."""
    from ..data import regression_truth
    from ..plots.uncertainty import plot_regression
    from ..rundir import load_run

    cfg.check()
    out = Path(out)
    record = asdict(cfg)
    record["methods"] = list(cfg.methods)
    if (out / "config.json").exists() and read_json(out / "config.json") != record:
        raise LowlossError(f"{out} holds a regression run with another configuration; choose a new --out")
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "config.json", record)
    t0 = time.time()
    gen = torch.Generator().manual_seed(cfg.seed)
    n_modes = cfg.modes if "ensemble" in cfg.methods else (cfg.espro_modes if "espro" in cfg.methods else 1)
    mode_dirs = [train_mode_regression(cfg, cfg.seed + i, out / "modes" / f"mode_{i}", quiet) for i in range(n_modes)]
    base = load_run(mode_dirs[0], device="cpu")
    model, data = base.model, base.data
    members: dict[str, list[torch.Tensor]] = {}
    info: dict = {}
    if "ensemble" in cfg.methods:
        members["ensemble"] = [load_run(d, device="cpu", data=data).vector for d in mode_dirs]
    if "swag" in cfg.methods:
        from .swag import SWAGConfig, run_swag, swag_predictor

        scfg = SWAGConfig(epochs=cfg.swag_epochs, lr=cfg.swag_lr, momentum=0.9, wd=cfg.wd, batch_size=cfg.batch_size,
                          seed=cfg.seed, device="cpu")
        res = run_swag(mode_dirs[0], scfg, out / "swag", quiet=quiet, evaluate=False,
                       resume=(out / "swag" / "checkpoint.safetensors").exists())
        pred = swag_predictor(out / "swag", device="cpu", samples=cfg.samples)
        members["swag"] = [v for v, _ in pred.members(gen)]
        info["swag"] = {"n_models": res.get("n_models"), "scale": pred.info.get("scale"), "dir": str(out / "swag")}
    if "espro" in cfg.methods:
        members["espro"], info["espro"] = _espro_members(cfg, mode_dirs[:cfg.espro_modes], out, gen, quiet)
    # evaluation
    grid = np.linspace(-3.0, 3.0, 400)
    truth_fn = regression_truth(cfg.data_seed)
    xg = torch.from_numpy(grid.astype(np.float32)).reshape(-1, 1)
    xt, yt = data.test.x, data.test.y.reshape(-1).double().numpy()
    results, panels = {}, {}
    for name in (m for m in METHODS if m in members):
        vecs = members[name]
        ft, fg = _functions(model, vecs, xt), _functions(model, vecs, xg)
        score = predictive(ft, yt, cfg.noise)
        clusters = data.meta.get("clusters", [])
        between = np.abs(grid[:, None] - np.asarray(clusters)[None]).min(1) > 0.6 if clusters else np.zeros_like(grid, bool)
        epi = fg.std(0)
        results[name] = {**score, "members": len(vecs),
                         "mean_epistemic_std": {"near_data": float(epi[~between].mean()),
                                                "away_from_data": float(epi[between].mean()) if between.any() else None},
                         **info.get(name, {})}
        panels[name] = {"mean": fg.mean(0), "std": np.sqrt(fg.var(0) + cfg.noise ** 2), "epistemic_std": epi,
                        "functions": fg[:8], **score}
        echo(f"{name:9s} test log-lik {score['test_ll']:.4f} (mixture {score['test_ll_mixture']:.4f}), "
             f"rmse {score['rmse']:.4f}, {len(vecs)} members", quiet)
    result = {"config": record, "versions": versions(), "data": data.describe(), "noise_sigma": cfg.noise,
              "results": results, "seconds": time.time() - t0,
              "note": "test_ll: Gaussian with the members' mean and variance + sigma^2; test_ll_mixture: exact "
                      "equal-weight mixture of N(f_m, sigma^2); epistemic std averaged near the clusters and "
                      "more than 0.6 away from every cluster"}
    write_json(out / "regression.json", result)
    plot_regression(data.train.x.reshape(-1).numpy(), data.train.y.reshape(-1).numpy(), grid, truth_fn(grid), panels,
                    out / "regression.png")
    return result


def _espro_members(cfg: RegressionConfig, mode_dirs, out: Path, gen: torch.Generator, quiet: bool):
    """Grow (or reopen) one simplex per mode; `samples` draws spread over the simplexes."""
    from ..rundir import load_run
    from .spro import SIMPLEX_FILE, SproConfig, grow_complex, load_complex, sample_vectors, save_complex

    scfg = SproConfig(epochs=cfg.vertex_epochs, lr=cfg.vertex_lr, lmbda=cfg.lmbda, wd=cfg.wd,
                      batch_size=cfg.batch_size)
    per = max(1, -(-cfg.samples // len(mode_dirs)))
    vecs, logs = [], []
    for i, d in enumerate(mode_dirs):
        sdir = out / "espro" / f"simplex_{i}"
        if not (sdir / SIMPLEX_FILE).exists():
            run = load_run(d, device="cpu")
            grown = grow_complex(run.model, run.data, [run.vector], [tuple(range(cfg.vertices))], cfg.vertices - 1,
                                 scfg, seed=cfg.seed + i, out=None, quiet=quiet, desc=f"espro simplex {i}")
            sdir.mkdir(parents=True, exist_ok=True)
            save_complex(sdir / SIMPLEX_FILE, grown.complex, [d])
            write_json(sdir / "simplex_log.json", {"logs": grown.logs})
        cplx, _ = load_complex(sdir, device="cpu")
        with torch.no_grad():
            lv = float(cplx.log_volume())
        logs.append({"dir": str(sdir), "log_volume": lv})
        vecs.extend(list(sample_vectors(cplx, per, gen)))
    return vecs, {"simplexes": logs, "samples_per_simplex": per, "spro": asdict(scfg)}


def run_regression(cfg, out, *, quiet: bool = False) -> dict:
    """See the module docstring. Runs with one intra-op thread: these networks are tiny, and on a shared
    machine extra threads only add synchronisation overhead (restored afterwards)."""
    from ..utils import torch_threads

    with torch_threads(1):
        return _run_regression(cfg, out, quiet=quiet)
