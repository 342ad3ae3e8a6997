"""SPRO (Benton et al. 2021): growing simplexes and simplicial complexes of low loss, one vertex at a time.

Library code of the ``simplex``, ``espro``, ``complex`` and ``dimension`` methods (and of the SPRO
simplexes inside ``regression`` and ``spirals``). A new vertex starts at the mean of the existing vertices;
earlier vertices stay fixed; it is trained (through :func:`lowloss.engine.fit.fit_subspace`) on

    (1/J) sum_j L(w_j)  -  lambda_i log(Vol^2(K) + 1e-4),       w_j ~ uniform simplex of K, Dirichlet(1)

with J samples per step (J = 5), weight decay on the samples, and the appendix A.3 scaling
lambda_i = max(LAMBDA / log(Vol^2(K_rand,i) + 1e-4), 1e-8) where K_rand,i is the same complex with every
vertex a fresh random initialisation of the network. Unlike the reference code, the whole complex is
regularised (its squared volumes summed) and the J sample losses are averaged.

* :class:`SproConfig` holds the training hyper-parameters of a vertex; the methods' Configs extend it
  (:class:`EsproConfig` for simplexes grown from one mode, :class:`ConnectingSproConfig` for complexes
  that connect modes, whose default LAMBDA is the reference complex script's 0.1).
* :func:`grow_complex` is the engine (resumable per vertex; within a vertex the trainer's checkpoint).
* :func:`save_complex` writes ``simplex.safetensors`` (tensors ``vertex_0``..``vertex_k``, flat [P];
  metadata ``simplexes``, ``base_runs``, ``fixed``, ``kinds`` as JSON), :func:`load_simplex` reads it,
  :func:`load_complex` turns it into a :class:`~lowloss.subspaces.simplex.Complex` with its base run.
* :func:`save_structure` writes ``structure.npz`` (pairwise squared distances of the vertices, simplex
  log-volumes, simplexes, vertex kinds): what the structure figure draws.

While a complex grows, ``progress.safetensors`` holds the finished vertices and ``vertex_<i>/`` the
trainer's checkpoint of the vertex being trained.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..config import option, require
from ..engine.evaluate import evaluate_vector
from ..engine.fit import FitConfig, fit_subspace
from ..engine.schedules import SCHEDULES
from ..rundir import CHECKPOINT_FILE, find_run, load_run, load_tensors, save_npz, save_tensors
from ..subspaces.simplex import Complex, pairwise_sq_dists, restrict_simplexes
from ..utils import LowlossError, echo, meta_json

SIMPLEX_FILE = "simplex.safetensors"
PROGRESS_FILE = "progress.safetensors"
SAMPLES_FILE = "samples.safetensors"
STRUCTURE_FILE = "structure.npz"
EPS = 1e-4  # inside log(Vol^2 + eps), as in the paper
COMPLEX_LAMBDA = 0.1  # default LAMBDA for mode-connecting complexes and the dimension experiment
LMBDA_HELP = "LAMBDA of the volume regulariser; lambda_i = max(LAMBDA / log(Vol^2(K_rand) + 1e-4), 1e-8)."


@dataclass
class SproConfig:
    """Training of each connecting vertex. Defaults chosen on digits (convnet modes of `lowloss train`);
    LAMBDA 1e-6 is the reference ESPRO value (best test NLL on digits), the reference CIFAR runs train
    10 epochs per vertex."""

    epochs: int = option(3, "Epochs of SGD for each added vertex (the schedule restarts at every vertex).",
                         flag="--epochs-per-vertex")
    lr: float = 0.02
    lmbda: float = option(1e-6, LMBDA_HELP)
    samples: int = option(5, "J: samples of the complex per step whose losses are averaged.")
    wd: float = 5e-4
    momentum: float = 0.9
    batch_size: int = 64
    schedule: str = option("cosine", "Learning-rate schedule within each vertex.", choices=SCHEDULES)

    def check(self) -> None:
        require(self.epochs >= 1, f"--epochs-per-vertex must be at least 1 (got {self.epochs})")
        require(self.lr > 0, f"--lr must be positive (got {self.lr})")
        require(self.samples >= 1, f"--samples (J) must be at least 1 (got {self.samples})")
        require(self.lmbda >= 0, f"--lmbda must be >= 0 (got {self.lmbda})")
        require(self.wd >= 0, f"--wd must be >= 0 (got {self.wd})")
        require(0 <= self.momentum < 1, f"--momentum must be in [0, 1) (got {self.momentum})")
        require(self.batch_size >= 1, f"--batch-size must be >= 1 (got {self.batch_size})")
        require(self.schedule in SCHEDULES, f"--schedule must be one of {', '.join(SCHEDULES)}")


@dataclass
class EsproConfig(SproConfig):
    """SPRO training of simplexes grown from one mode each, and their evaluated samples (simplex, espro)."""

    vertices: int = option(3, "Vertices of each simplex, the mode included (3 = a triangle: the mode and two "
                              "trained vertices).")
    members: int = option(25, "Sampled models per simplex in the evaluated ensemble (BN statistics recomputed "
                              "for each).")

    def check(self) -> None:
        super().check()
        require(self.vertices >= 2, "--vertices counts the mode too: use at least 2 (a segment), 3 for a triangle")
        require(self.members >= 1, f"--members must be at least 1 (got {self.members})")


@dataclass
class ConnectingSproConfig(SproConfig):
    """SPRO training of connectors between modes (complex, dimension): LAMBDA of the reference complex script."""

    lmbda: float = option(COMPLEX_LAMBDA, LMBDA_HELP)


def spro_fields(config, base: type = SproConfig) -> dict:
    """The values of `base`'s fields in `config` (a Config that extends it): ``SproConfig(**spro_fields(c))``."""
    return {f.name: getattr(config, f.name) for f in dataclasses.fields(base)}


# ----------------------------------------------------------------------------------------------- helpers
def random_init_vector(model: nn.Module, seed: int) -> torch.Tensor:
    """A fresh random initialisation of `model` as a flat vector, without touching the module.

    Every submodule's ``reset_parameters`` runs on stand-in tensors (parameters and buffers swapped in
    with ``torch.nn.utils.stateless``), so the user's weights and BN statistics are never written to.
    Parameters of modules without ``reset_parameters`` keep their current values.
    """
    from torch.nn.utils.stateless import _reparametrize_module

    pb = {n: p.detach().clone() for n, p in model.named_parameters()}
    pb.update({n: b.detach().clone() for n, b in model.named_buffers()})
    with torch.random.fork_rng(devices=[]), torch.no_grad(), _reparametrize_module(model, pb):
        torch.manual_seed(seed)
        for m in model.modules():
            if hasattr(m, "reset_parameters") and callable(m.reset_parameters):
                m.reset_parameters()
    return torch.cat([pb[n].reshape(-1) for n, p in model.named_parameters() if p.requires_grad])


def regularisation_scale(model: nn.Module, simplexes: Sequence[Sequence[int]], num_vertices: int, lmbda: float,
                         seed: int) -> tuple[float, float]:
    """Appendix A.3: lambda_i = max(LAMBDA / log(Vol^2(K_rand) + 1e-4), 1e-8). Returns (lambda_i, log term)."""
    if lmbda == 0:
        return 0.0, float("nan")
    rand = [random_init_vector(model, seed * 1009 + j) for j in range(num_vertices)]
    k_rand = Complex(rand, simplexes)
    with torch.no_grad():
        log_term = float(k_rand.log_squared_volume_plus(EPS))
    return max(lmbda / log_term, 1e-8) if log_term > 0 else 1e-8, log_term


def _mean_vertex(vertices: Sequence[torch.Tensor]) -> torch.Tensor:
    return torch.stack([v.detach() for v in vertices]).mean(0)


def mode_connector_structure(num_modes: int, num_connectors: int) -> list[tuple[int, ...]]:
    """Each mode with all connectors, as in the paper's figures 3 and 4(a)."""
    conn = tuple(range(num_modes, num_modes + num_connectors))
    return [(m, *conn) for m in range(num_modes)]


def faces(simplexes) -> list[tuple[int, int, int]]:
    """Every 2-face (triangle) of every simplex of a complex, once."""
    out: list[tuple[int, int, int]] = []
    for s in simplexes:
        for f in itertools.combinations(sorted(s), 3):
            if f not in out:
                out.append(f)
    return out


# ----------------------------------------------------------------------------------------------- files
def _vertex_list(tensors: dict, path: Path) -> list[torch.Tensor]:
    """vertex_0 .. vertex_{n-1} of a safetensors file's tensors, in order."""
    n = len([k for k in tensors if k.startswith("vertex_")])
    try:
        return [tensors[f"vertex_{i}"].reshape(-1) for i in range(n)]
    except KeyError as e:
        raise LowlossError(f"{path} misses {e.args[0]}: the vertices must be vertex_0 .. vertex_{n - 1}") from None


def save_complex(path: Path, cplx: Complex, base_runs: Sequence, extra_meta: dict | None = None) -> None:
    """simplex.safetensors: vertex_0..vertex_k (flat [P]) and JSON metadata (simplexes, base_runs, fixed, kinds)."""
    tensors = {f"vertex_{i}": cplx.control(i).detach() for i in range(cplx.num_vertices)}
    meta = {"simplexes": json.dumps([list(s) for s in cplx.simplexes]),
            "base_runs": json.dumps([str(Path(r).resolve()) for r in base_runs]),
            "fixed": json.dumps([not t for t in cplx.trainable_mask]),
            "kinds": json.dumps(list(cplx.kinds))}
    meta.update({k: json.dumps(v) for k, v in (extra_meta or {}).items()})
    save_tensors(Path(path), tensors, meta)


def load_simplex(directory: str | Path, device=None) -> dict:
    """DIR/simplex.safetensors as {"vertices": [n, P], "simplexes": [[i, ...]], "base_runs", "kinds", "fixed"}.

    The one reader of the file (the model and data come from ``base_runs[0]``, see :func:`load_complex`).
    """
    directory = Path(directory)
    path = directory / SIMPLEX_FILE
    if not path.exists():
        hint = (" (growing was interrupted: rerun the command with --resume)"
                if (directory / PROGRESS_FILE).exists() else "")
        raise LowlossError(f"{directory} has no {SIMPLEX_FILE}{hint}")
    tensors, raw = load_tensors(path, device=device)
    meta = {k: meta_json(raw, k, path) for k in raw}
    vertices = _vertex_list(tensors, path)
    if not vertices:
        raise LowlossError(f"{path} holds no vertex_0 .. vertex_k")
    n = len(vertices)
    base_runs = meta.get("base_runs") or []
    if not base_runs:
        raise LowlossError(f"{path} names no base run (metadata base_runs): the model and data come from it")
    return {"vertices": torch.stack(vertices),
            "simplexes": [list(map(int, s)) for s in meta.get("simplexes", [list(range(n))])],
            "base_runs": base_runs, "kinds": meta.get("kinds"), "fixed": meta.get("fixed")}


def load_complex(directory, device=None) -> tuple[Complex, object]:
    """Open a directory holding simplex.safetensors: (Complex with all vertices fixed, the first base Run)."""
    directory = Path(directory)
    s = load_simplex(directory)
    run = load_run(find_run(s["base_runs"][0], directory), device=device)
    vertices = s["vertices"]
    if vertices.shape[1] != run.vector.numel():
        raise LowlossError(f"{directory}: vertices have {vertices.shape[1]} entries but the base run's model has "
                           f"{run.vector.numel()} parameters")
    cplx = Complex([v.to(device=run.vector.device, dtype=run.vector.dtype) for v in vertices], s["simplexes"],
                   kinds=s["kinds"])
    return cplx.to(run.vector.device), run


def save_structure(path: Path, cplx: Complex) -> Path:
    """structure.npz: what the structure figure draws. ``sq_dists`` [n, n] pairwise squared distances of
    the vertices, ``log_volumes`` [S], ``simplexes`` [S, max size] (padded with -1), ``kinds`` [n]."""
    with torch.no_grad():
        d = pairwise_sq_dists(cplx.vertices()).cpu().numpy()
        lvs = cplx.log_volumes().cpu().numpy()
    width = max(len(s) for s in cplx.simplexes)
    simplexes = np.full((len(cplx.simplexes), width), -1, dtype=np.int64)
    for i, s in enumerate(cplx.simplexes):
        simplexes[i, : len(s)] = s
    path = Path(path)
    save_npz(path, {"sq_dists": d, "log_volumes": lvs, "simplexes": simplexes, "kinds": np.array(list(cplx.kinds))})
    return path


# ----------------------------------------------------------------------------------------------- engine
@dataclass
class GrowResult:
    complex: Complex
    logs: list


def grow_complex(model: nn.Module, data, fixed: Sequence[torch.Tensor], simplexes: Sequence[Sequence[int]],
                 num_connectors: int, cfg: SproConfig, *, seed: int = 0, out: str | Path | None = None,
                 resume: bool = False, quiet: bool = False, on_vertex: Callable | None = None,
                 after_epoch: Callable | None = None, stop: Callable | None = None, desc: str = "spro") -> GrowResult:
    """Add `num_connectors` trainable vertices to the fixed vertices, one at a time (SPRO).

    `simplexes` is the final structure over all len(fixed) + num_connectors vertices; while vertex n is
    trained the complex holds the faces of those simplexes on vertices 0..n. `on_vertex(complex, i)`
    returns extra entries for vertex i's log (e.g. sample accuracies); `stop(complex, logs)` -> True stops
    adding vertices (dimension experiment). With `out`, every finished vertex is saved (progress.safetensors)
    and `resume=True` continues at the next vertex, or inside a vertex from the trainer's checkpoint.
    """
    cfg.check()
    out = Path(out) if out is not None else None
    fixed = [f.detach().reshape(-1) for f in fixed]
    n_fixed = len(fixed)
    vertices = list(fixed)
    logs: list[dict] = []
    progress_saved = None
    if out is not None and resume and (out / PROGRESS_FILE).exists():
        try:
            tensors, meta = load_tensors(out / PROGRESS_FILE, device=fixed[0].device)
            progress_saved = tensors, meta, meta_json(meta, "logs", out / PROGRESS_FILE, [])
        except LowlossError:  # damaged progress is not trusted: the vertices are grown again
            echo(f"{out / PROGRESS_FILE} is damaged; growing the complex again", quiet)
            (out / PROGRESS_FILE).unlink(missing_ok=True)
    if progress_saved is not None:
        tensors, meta, saved_logs = progress_saved
        vs = _vertex_list(tensors, out / PROGRESS_FILE)
        if len(vs) < n_fixed or any(not torch.equal(a.to(b.dtype), b) for a, b in zip(vs[:n_fixed], fixed)):
            raise LowlossError(f"{out / PROGRESS_FILE} was grown from other modes; use a new --out")
        vertices = [v.to(fixed[0].dtype) for v in vs]
        logs = list(saved_logs)
        echo(f"resuming: {len(vertices) - n_fixed} of {num_connectors} connectors already trained", quiet)
    dev = fixed[0].device
    fit = FitConfig(epochs=cfg.epochs, lr=cfg.lr, momentum=cfg.momentum, wd=cfg.wd, batch_size=cfg.batch_size,
                    schedule=cfg.schedule, coords_per_batch=1, samples_per_step=cfg.samples)
    stopped = bool(logs and logs[-1].get("stopped"))
    while len(vertices) < n_fixed + num_connectors and not stopped:
        i = len(vertices)
        structure = restrict_simplexes(simplexes, i + 1)
        if not structure:
            raise LowlossError(f"no simplex contains vertex {i}: check the complex's structure")
        lam, log_rand = regularisation_scale(model, structure, i + 1, cfg.lmbda, seed * 7919 + i)
        cplx = Complex(vertices + [_mean_vertex(vertices)], structure, trainable=[False] * i + [True],
                       kinds=["mode"] * n_fixed + ["connector"] * (i + 1 - n_fixed)).to(dev)

        def regulariser(c=cplx, lam=lam):
            return (-lam * c.log_squared_volume_plus(EPS)).to(c.dtype)

        vdir = out / f"vertex_{i}" if out is not None else None
        t0 = time.time()
        history = fit_subspace(model, cplx, data, fit, generator=torch.Generator().manual_seed(seed * 7919 + i),
                               regulariser=regulariser if lam > 0 else None, run_dir=vdir,
                               resume=resume and vdir is not None and (vdir / CHECKPOINT_FILE).exists(),
                               quiet=quiet, desc=f"{desc} vertex {i}",
                               after_epoch=(lambda e, i=i: after_epoch(i, e)) if after_epoch else None)
        with torch.no_grad():
            lv = float(cplx.log_volume())
        log = {"vertex": i, "lambda": lam, "log_sq_volume_random": log_rand, "simplexes": [list(s) for s in structure],
               "log_volume": lv, "history": history, "seconds": time.time() - t0,
               "final_train_loss": history[-1]["train_loss"] if history else None}
        vertices.append(cplx.control(i).detach().clone())
        final = Complex(vertices, structure, kinds=cplx.kinds).to(dev)
        if on_vertex is not None:
            log.update(on_vertex(final, i) or {})
        if stop is not None and stop(final, logs + [log]):
            log["stopped"] = True
            stopped = True
        logs.append(log)
        if out is not None:
            save_tensors(out / PROGRESS_FILE, {f"vertex_{j}": v for j, v in enumerate(vertices)},
                         {"logs": json.dumps(logs)})
            (vdir / CHECKPOINT_FILE).unlink(missing_ok=True)
            if vdir.exists() and not any(vdir.iterdir()):
                vdir.rmdir()
        echo(f"vertex {i}: log-volume {lv:.3f}, train loss {log['final_train_loss']:.4f}, lambda {lam:.3g}", quiet)
    structure = restrict_simplexes(simplexes, len(vertices)) or [tuple(range(len(vertices)))]
    kinds = ["mode"] * n_fixed + ["connector"] * (len(vertices) - n_fixed)
    return GrowResult(Complex(vertices, structure, kinds=kinds).to(dev), logs)


# ----------------------------------------------------------------------------------------------- evaluation
def sample_vectors(cplx: Complex, n: int, generator: torch.Generator, simplex: int | None = None) -> torch.Tensor:
    """n parameter vectors [n, P] drawn from the complex (a uniformly chosen simplex each, Dirichlet(1) on it)."""
    with torch.no_grad():
        return cplx.points(cplx.sample(n, generator, simplex=simplex)).detach()


def mode_metrics(run) -> dict:
    """Test metrics of a trained run at its own weights and BN statistics."""
    r = evaluate_vector(run.model, run.vector, run.data, bufs=run.buffers, splits=("test",))["test"]
    return {k: r[k] for k in ("accuracy", "nll", "ece", "brier")}


def format_metrics(m: dict) -> str:
    return f"acc {m['accuracy']:.4f}  nll {m['nll']:.4f}  ece {m['ece']:.4f}  brier {m['brier']:.4f}"


def complex_predictor(complexes: Sequence[Complex], run, members: int, name: str, info: dict | None = None):
    """A Predictor of `members` samples from each complex (drawn in turn, one generator), BN recomputed each."""
    from .predictor import Predictor

    complexes = list(complexes)

    def sampler(n: int, gen: torch.Generator):
        for j in range(n):
            yield sample_vectors(complexes[j % len(complexes)], 1, gen)[0], None

    return Predictor(run.model, run.data, sampler=sampler, num_samples=members * len(complexes), name=name,
                     info=info or {})


__all__ = ["COMPLEX_LAMBDA", "ConnectingSproConfig", "EsproConfig", "GrowResult", "PROGRESS_FILE", "SAMPLES_FILE",
           "SIMPLEX_FILE", "STRUCTURE_FILE", "SproConfig", "complex_predictor", "faces", "format_metrics",
           "grow_complex", "load_complex", "load_simplex", "mode_connector_structure", "mode_metrics",
           "random_init_vector", "regularisation_scale", "sample_vectors", "save_complex", "save_structure",
           "spro_fields"]
