"""Functional diversity inside one simplex: two spirals (the simplex paper's Figure 7, METHODS.md 6).

A small ReLU MLP is trained on the two-spirals data (full-batch Adam), a simplex of `vertices` vertices
(a tetrahedron by default) is grown from it with SPRO (:func:`lowloss.methods.spro.grow_complex`), and the
decision functions (probability of class 1 over the plane) of models sampled uniformly from the simplex
are drawn next to the decision function of their ensemble (mean probability of `members` samples).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from .. import metrics as M
from .. import params as P
from ..utils import LowlossError, echo, read_json, versions, write_json
from .regression import full_batch_config, train_full_batch


@dataclass
class SpiralsConfig:
    widths: str = "64,64,64"
    epochs: int = 2000          # full-batch Adam steps of the mode
    lr: float = 0.01
    wd: float = 1e-4
    vertices: int = 4           # the mode + 3 trained vertices: a tetrahedron
    vertex_epochs: int = 150    # SPRO epochs per added vertex
    vertex_lr: float = 0.05
    lmbda: float = 0.05         # with the digits default 1e-6 the simplex stays tiny (samples look alike)
    batch_size: int = 100
    shown: int = 11             # sampled models drawn (plus the ensemble's panel)
    members: int = 50           # samples in the ensemble
    grid: int = 150             # resolution of the decision-function pictures
    data_seed: int = 0
    seed: int = 0

    def check(self) -> None:
        if self.vertices < 2 or self.shown < 1 or self.members < 1 or self.grid < 10:
            raise LowlossError("--vertices must be >= 2, --shown and --members >= 1, --grid >= 10")


@torch.no_grad()
def _probs(model, vectors, x: torch.Tensor) -> torch.Tensor:
    """[K, N] probability of class 1 for each parameter vector."""
    return torch.stack([torch.softmax(P.functional_forward(model, v, x).double(), -1)[:, 1] for v in vectors])


def _run_spirals(cfg: SpiralsConfig, out, *, quiet: bool = False) -> dict:
    from ..plots.uncertainty import plot_spirals
    from ..rundir import load_run
    from .spro import SIMPLEX_FILE, SproConfig, grow_complex, load_complex, sample_vectors, save_complex

    cfg.check()
    out = Path(out)
    record = asdict(cfg)
    if (out / "config.json").exists() and read_json(out / "config.json") != record:
        raise LowlossError(f"{out} holds a spirals run with another configuration; choose a new --out")
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "config.json", record)
    t0 = time.time()
    mode_dir = train_full_batch(full_batch_config("spirals", cfg.widths, cfg.epochs, cfg.lr, cfg.wd, cfg.seed,
                                                  cfg.data_seed), out / "mode", quiet)
    if not (out / SIMPLEX_FILE).exists():
        run = load_run(mode_dir, device="cpu")
        scfg = SproConfig(epochs=cfg.vertex_epochs, lr=cfg.vertex_lr, lmbda=cfg.lmbda, wd=cfg.wd,
                          batch_size=cfg.batch_size)
        grown = grow_complex(run.model, run.data, [run.vector], [tuple(range(cfg.vertices))], cfg.vertices - 1, scfg,
                             seed=cfg.seed, out=None, quiet=quiet, desc="spirals simplex")
        save_complex(out / SIMPLEX_FILE, grown.complex, [mode_dir])
        write_json(out / "simplex_log.json", {"spro": asdict(scfg), "logs": grown.logs})
    cplx, run = load_complex(out, device="cpu")
    model, data = run.model, run.data
    gen = torch.Generator().manual_seed(cfg.seed)
    shown = sample_vectors(cplx, cfg.shown, gen)
    ens = sample_vectors(cplx, cfg.members, gen)
    xtr, ytr, xte, yte = data.train.x, data.train.y, data.test.x, data.test.y

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
    ensemble = {"members": cfg.members, "train_accuracy": acc(e_tr.mean(0), ytr), "test_accuracy": acc(e_te.mean(0), yte),
                "test_nll": nll(e_te.mean(0), yte),
                "member_mean_test_accuracy": float(np.mean([acc(p, yte) for p in e_te])),
                "member_mean_test_nll": float(np.mean([nll(p, yte) for p in e_te]))}
    # disagreement of the shown samples on the plane: the fraction of grid points where the class differs
    lim = float(max(xtr.abs().max(), xte.abs().max())) * 1.1
    g = np.linspace(-lim, lim, cfg.grid)
    xx, yy = np.meshgrid(g, g)
    xg = torch.from_numpy(np.stack([xx.ravel(), yy.ravel()], 1).astype(np.float32))
    pg = _probs(model, shown, xg)
    pe = _probs(model, ens, xg).mean(0)
    labels = (pg > 0.5)
    disagreement = float((labels != labels[0]).any(0).double().mean())
    samples = [r for r in rows if r["kind"] == "sample"]
    with torch.no_grad():
        log_volume = float(cplx.log_volume())
    result = {"config": record, "versions": versions(), "data": data.describe(), "log_volume": log_volume,
              "samples": samples, "vertices": [r for r in rows if r["kind"] == "vertex"], "ensemble": ensemble,
              "grid_disagreement": disagreement, "seconds": time.time() - t0,
              "note": "grid_disagreement: fraction of the plotted plane where the shown samples do not all agree "
                      "on the class"}
    write_json(out / "spirals.json", result)
    panels = [(f"sample {i + 1}: train {s['train_accuracy']:.3f} test {s['test_accuracy']:.3f}",
               pg[i].reshape(xx.shape).numpy()) for i, s in enumerate(samples)]
    panels.append((f"ensemble of {cfg.members}: train {ensemble['train_accuracy']:.3f} "
                   f"test {ensemble['test_accuracy']:.3f}", pe.reshape(xx.shape).numpy()))
    plot_spirals(xtr.numpy(), ytr.numpy(), xx, yy, panels, out / "spirals.png")
    echo(f"samples: train acc {np.mean([s['train_accuracy'] for s in samples]):.3f}, test acc "
         f"{np.mean([s['test_accuracy'] for s in samples]):.3f}; ensemble test acc {ensemble['test_accuracy']:.3f}; "
         f"samples disagree on {100 * disagreement:.1f}% of the plane", quiet)
    return result


def run_spirals(cfg, out, *, quiet: bool = False) -> dict:
    """See the module docstring. Runs with one intra-op thread: these networks are tiny, and on a shared
    machine extra threads only add synchronisation overhead (restored afterwards)."""
    from ..utils import torch_threads

    with torch_threads(1):
        return _run_spirals(cfg, out, quiet=quiet)
