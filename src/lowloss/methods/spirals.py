"""Two spirals: functional diversity inside one simplex (the simplex paper's Figure 7).

A small ReLU MLP is trained on the two-spirals data (full-batch Adam, cosine learning rate; a run in
OUT/mode), a simplex of --vertices vertices (a tetrahedron by default) is grown from it with SPRO
(OUT/simplex.safetensors, OUT/simplex_log.json; an interrupted run continues with --resume), and the decision functions (probability of class 1 over
the plane) of --shown models sampled uniformly from the simplex are drawn next to the decision function of
their ensemble (mean probability of --members samples): OUT/spirals.png, from OUT/decision.safetensors.
OUT/run.json holds the train/test accuracy and NLL of the samples, the vertices and the ensemble, and the
fraction of the plane where the shown samples disagree. The networks are tiny: the CPU is the fastest device.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .. import metrics as M
from .. import params as P
from ..config import option, replace, require
from ..rundir import RunDir, load_run, read_result, run_method
from ..utils import echo, resolve_device, torch_threads
from .regression import mode_config, train_mode
from .spro import (
    PROGRESS_FILE,
    SIMPLEX_FILE,
    SproConfig,
    grow_complex,
    load_complex,
    sample_vectors,
    save_complex,
)

INPUTS = None  # trains its own mode
DECISION_FILE = "decision.safetensors"


@dataclass
class Config:
    """The mode, its simplex and the pictures."""

    widths: str = option("64,64,64", "Hidden widths of the ReLU MLP.")
    epochs: int = option(2000, "Full-batch Adam steps of the mode (one per epoch), cosine learning rate.")
    lr: float = option(0.01, "Adam learning rate of the mode.")
    wd: float = option(1e-4, "Weight decay (mode and simplex).")
    vertices: int = option(4, "Vertices of the simplex, the mode included (4 = a tetrahedron).")
    vertex_epochs: int = option(150, "SPRO epochs per added vertex.")
    vertex_lr: float = option(0.05, "SPRO learning rate (SGD).")
    lmbda: float = option(0.05, "SPRO volume-regulariser LAMBDA (with the digits value 1e-6 the simplex stays tiny "
                                "and the samples look alike).")
    batch_size: int = option(100, "SPRO minibatch size.")
    shown: int = option(11, "Sampled models drawn.")
    members: int = option(50, "Samples in the ensemble.")
    grid: int = option(150, "Resolution of each picture.")
    data_seed: int = option(0, "Seed of the spirals data.")
    seed: int = 0
    device: str = option("cpu", "Device of the networks (they are tiny: the CPU is fastest).")

    def check(self) -> None:
        require(self.vertices >= 2 and self.shown >= 1 and self.members >= 1 and self.grid >= 10,
                "--vertices must be >= 2, --shown and --members >= 1, --grid >= 10")
        require(self.epochs >= 1 and self.vertex_epochs >= 1, "--epochs and --vertex-epochs must be >= 1")
        require(self.lr > 0 and self.vertex_lr > 0, "--lr and --vertex-lr must be positive")
        require(self.wd >= 0 and self.lmbda >= 0, "--wd and --lmbda must be >= 0")
        require(self.batch_size >= 1, f"--batch-size must be >= 1 (got {self.batch_size})")


@torch.no_grad()
def _probs(model, vectors, x: torch.Tensor) -> torch.Tensor:
    """[K, N] probability of class 1 for each parameter vector."""
    return torch.stack([torch.softmax(P.functional_forward(model, v, x).double(), -1)[:, 1] for v in vectors]).cpu()


def fit(config: Config, inputs, run_dir: RunDir, *, quiet: bool = False) -> dict:
    """Train the mode, grow the simplex (both kept under OUT), measure and save the decision functions.
    Runs with one intra-op thread: these networks are tiny, and on a shared machine extra threads only add
    synchronisation overhead (restored afterwards)."""
    with torch_threads(1):
        return _fit(config, run_dir, quiet)


def _fit(config: Config, run_dir: RunDir, quiet: bool) -> dict:
    t0 = time.time()
    device = resolve_device(config.device)
    mode_dir = train_mode(mode_config(config, "spirals", config.seed), run_dir.sub("mode"), resume=run_dir.resuming,
                          quiet=quiet)
    run = load_run(mode_dir, device=device)
    scfg = SproConfig(epochs=config.vertex_epochs, lr=config.vertex_lr, lmbda=config.lmbda, wd=config.wd,
                      batch_size=config.batch_size)
    grown = grow_complex(run.model, run.data, [run.vector], [tuple(range(config.vertices))], config.vertices - 1,
                         scfg, seed=config.seed, out=run_dir.path, resume=run_dir.resuming, quiet=quiet,
                         desc="spirals simplex")
    save_complex(run_dir.file(SIMPLEX_FILE), grown.complex, [mode_dir])
    run_dir.write_json("simplex_log.json", {"spro": dataclasses.asdict(scfg), "logs": grown.logs})
    cplx, run = load_complex(run_dir.path, device=device)
    model, data = run.model, run.data
    gen = torch.Generator().manual_seed(config.seed)
    shown = sample_vectors(cplx, config.shown, gen)
    ens = sample_vectors(cplx, config.members, gen)
    xtr, ytr, xte, yte = data.train.x, data.train.y.cpu(), data.test.x, data.test.y.cpu()

    def acc(p, y):
        return float(((p > 0.5).long() == y).double().mean())

    def nll(p, y):
        return M.nll(torch.stack([1 - p, p], -1), y)

    rows = []
    for name, vecs in (("sample", shown), ("vertex", cplx.vertices().detach())):
        ptr, pte = _probs(model, vecs, xtr), _probs(model, vecs, xte)
        rows += [{"kind": name, "index": i, "train_accuracy": acc(ptr[i], ytr), "test_accuracy": acc(pte[i], yte),
                  "test_nll": nll(pte[i], yte)} for i in range(len(vecs))]
    e_tr, e_te = _probs(model, ens, xtr), _probs(model, ens, xte)
    ensemble = {"members": config.members, "train_accuracy": acc(e_tr.mean(0), ytr),
                "test_accuracy": acc(e_te.mean(0), yte), "test_nll": nll(e_te.mean(0), yte),
                "member_mean_test_accuracy": float(np.mean([acc(p, yte) for p in e_te])),
                "member_mean_test_nll": float(np.mean([nll(p, yte) for p in e_te]))}
    # disagreement of the shown samples on the plane: the fraction of grid points where the class differs
    lim = float(max(xtr.abs().max(), xte.abs().max())) * 1.1
    g = np.linspace(-lim, lim, config.grid)
    xx, yy = np.meshgrid(g, g)
    xg = torch.from_numpy(np.stack([xx.ravel(), yy.ravel()], 1).astype(np.float32)).to(device)
    pg = _probs(model, shown, xg)
    pe = _probs(model, ens, xg).mean(0)
    labels = (pg > 0.5)
    disagreement = float((labels != labels[0]).any(0).double().mean())
    samples = [r for r in rows if r["kind"] == "sample"]
    with torch.no_grad():
        log_volume = float(cplx.log_volume())
    run_dir.save_tensors(DECISION_FILE, {"train_x": xtr, "train_y": ytr, "grid": torch.from_numpy(g),
                                         "samples": pg, "ensemble": pe})
    echo(f"samples: train acc {np.mean([s['train_accuracy'] for s in samples]):.3f}, test acc "
         f"{np.mean([s['test_accuracy'] for s in samples]):.3f}; ensemble test acc {ensemble['test_accuracy']:.3f}; "
         f"samples disagree on {100 * disagreement:.1f}% of the plane", quiet)
    return run_dir.finish({"data": data.describe(), "log_volume": log_volume, "samples": samples,
                           "vertices": [r for r in rows if r["kind"] == "vertex"], "ensemble": ensemble,
                           "grid_disagreement": disagreement, "seconds": time.time() - t0, "decision": DECISION_FILE,
                           "note": "grid_disagreement: fraction of the plotted plane where the shown samples do not "
                                   "all agree on the class"}, remove=(PROGRESS_FILE,))


def summary(result: dict) -> str:
    s = result["samples"]
    return (f"samples: train acc {np.mean([r['train_accuracy'] for r in s]):.3f}, test acc "
            f"{np.mean([r['test_accuracy'] for r in s]):.3f}; ensemble test acc "
            f"{result['ensemble']['test_accuracy']:.3f}; samples disagree on {100 * result['grid_disagreement']:.1f}% "
            "of the plane")


def load(path: str | Path, device=None) -> dict:
    """The measurements of a finished spirals run (run.json's contents)."""
    return read_result(path, "spirals")


def run_spirals(config: Config | None = None, out: str | Path = "runs/spirals", *, resume: bool = False,
                quiet: bool = False, **overrides) -> dict:
    """Python API: ``run_spirals(out="runs/sp", epochs=1000, grid=100)``."""
    return run_method(sys.modules[__name__], replace(config or Config(), **overrides), None, out, resume=resume,
                      quiet=quiet)


__all__ = ["Config", "DECISION_FILE", "INPUTS", "fit", "load", "run_spirals", "summary"]
