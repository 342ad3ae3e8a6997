"""SPRO and ESPRO (Benton et al. 2021): simplexes and simplicial complexes of low loss, and their ensembles.

SPRO adds connecting vertices to a complex one at a time. The new vertex starts at the mean of the
existing vertices; earlier vertices stay fixed; it is trained (through
:func:`lowloss.engine.fit.fit_subspace`) on

    (1/J) sum_j L(w_j)  -  lambda_i log(Vol^2(K) + 1e-4),       w_j ~ uniform simplex of K, Dirichlet(1)

with J samples per step (J = 5), weight decay on the samples, and the appendix A.3 scaling
lambda_i = max(LAMBDA / log(Vol^2(K_rand,i) + 1e-4), 1e-8) where K_rand,i is the same complex with every
vertex a fresh random initialisation of the network. Unlike the reference code, the whole complex is
regularised (its squared volumes summed) and the J sample losses are averaged.

* :func:`grow_complex` is the engine (resumable per vertex; within a vertex the trainer's checkpoint).
* :func:`espro_simplex` grows a simplex from ONE mode (``lowloss simplex``), :func:`espro` builds one per
  mode and compares the ensemble with the deep ensemble (``lowloss espro``), :func:`mode_complex`
  connects several modes (``lowloss complex``), :func:`dimension` adds connectors between two modes until
  the volume collapses (``lowloss dimension``).
* :func:`load_complex`, :func:`simplex_predictor` and :func:`espro_predictor` open the outputs again.

Run directories: ``simplex.safetensors`` (tensors ``vertex_0``..``vertex_k``, flat [P]; metadata
``simplexes``, ``base_runs``, ``fixed``, ``kinds`` as JSON) and a JSON report. While growing,
``progress.safetensors`` holds the finished vertices and ``vertex_<i>/`` the trainer's checkpoint.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file
from torch import nn

from .. import metrics as M
from ..engine.evaluate import evaluate_vector, evaluate_vectors
from ..rundir import load_run, load_runs
from ..rundir import save_tensors as save_state
from ..subspaces.simplex import Complex, restrict_simplexes
from ..utils import LowlossError, echo, read_json, versions, write_json
from ..engine.fit import FitConfig, fit_subspace

SIMPLEX_FILE = "simplex.safetensors"
PROGRESS_FILE = "progress.safetensors"
SAMPLES_FILE = "samples.safetensors"
CONFIG_FILE = "config.json"
EPS = 1e-4  # inside log(Vol^2 + eps), as in the paper
COMPLEX_LAMBDA = 0.1  # default LAMBDA for mode-connecting complexes and the dimension experiment


@dataclass
class SproConfig:
    """Training of each connecting vertex. Defaults chosen on digits (convnet modes of `lowloss train`)."""

    epochs: int = 3           # per vertex (reference CIFAR runs: 10)
    lr: float = 0.02
    lmbda: float = 1e-6       # LAMBDA of appendix A.3, the reference ESPRO value (best test NLL on digits);
                              # complexes / dimension default to 0.1 (reference complex script)
    samples: int = 5          # J samples of the complex per step
    wd: float = 5e-4
    momentum: float = 0.9
    batch_size: int = 64
    schedule: str = "cosine"

    def check(self) -> None:
        if self.epochs < 1:
            raise LowlossError("--epochs-per-vertex must be at least 1")
        if self.lr <= 0:
            raise LowlossError("--lr must be positive")
        if self.samples < 1:
            raise LowlossError("--samples (J) must be at least 1")
        if self.lmbda < 0:
            raise LowlossError("--lmbda must be >= 0")


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


def save_complex(path: Path, cplx: Complex, base_runs: Sequence, extra_meta: dict | None = None) -> None:
    """simplex.safetensors: vertex_0..vertex_k (flat [P]) and JSON metadata (simplexes, base_runs, fixed)."""
    tensors = {f"vertex_{i}": cplx.control(i).detach() for i in range(cplx.num_vertices)}
    meta = {"simplexes": json.dumps([list(s) for s in cplx.simplexes]),
            "base_runs": json.dumps([str(Path(r).resolve()) for r in base_runs]),
            "fixed": json.dumps([not t for t in cplx.trainable_mask]),
            "kinds": json.dumps(list(cplx.kinds))}
    meta.update({k: json.dumps(v) for k, v in (extra_meta or {}).items()})
    save_state(Path(path), tensors, meta)


def _read_vertices(path: Path, device=None) -> tuple[list[torch.Tensor], dict]:
    with safe_open(str(path), "pt") as f:
        meta = {k: json.loads(v) for k, v in (f.metadata() or {}).items()}
    t = load_file(str(path), device=str(device) if device is not None else "cpu")
    n = len([k for k in t if k.startswith("vertex_")])
    try:
        vertices = [t[f"vertex_{i}"] for i in range(n)]
    except KeyError as e:
        raise LowlossError(f"{path} misses {e.args[0]}: the vertices must be vertex_0 .. vertex_{n - 1}") from None
    return vertices, meta


def _find_run(p: str, directory: Path) -> Path:
    cand = [Path(p), directory / p, directory / Path(p).name, directory.parent / Path(p).name]
    for c in cand:
        if (c / "run.json").exists():
            return c
    raise LowlossError(f"the base run {p} of {directory} is missing; restore it (the simplex stores only its "
                       "vertices, the model and data come from the base run)")


def load_complex(directory, device=None) -> tuple[Complex, object]:
    """Open a simplex / complex directory: (Complex with all vertices fixed, the first base Run)."""
    directory = Path(directory)
    if not (directory / SIMPLEX_FILE).exists():
        hint = " (growing was interrupted: rerun the command with --resume)" if (directory / PROGRESS_FILE).exists() \
            else ""
        raise LowlossError(f"{directory} has no {SIMPLEX_FILE}{hint}")
    base = read_json(directory / "base_runs.json") if (directory / "base_runs.json").exists() else None
    with safe_open(str(directory / SIMPLEX_FILE), "pt") as f:
        meta = f.metadata() or {}
    runs = base or json.loads(meta.get("base_runs", "[]"))
    if not runs:
        raise LowlossError(f"{directory / SIMPLEX_FILE} names no base run")
    run = load_run(_find_run(runs[0], directory), device=device)
    vertices, meta = _read_vertices(directory / SIMPLEX_FILE, device=run.vector.device)
    if vertices[0].numel() != run.vector.numel():
        raise LowlossError(f"{directory}: vertices have {vertices[0].numel()} entries but the base run's model has "
                           f"{run.vector.numel()} parameters")
    cplx = Complex([v.to(run.vector.dtype) for v in vertices], meta["simplexes"], kinds=meta.get("kinds"))
    return cplx.to(run.vector.device), run


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
    if out is not None and resume and (out / PROGRESS_FILE).exists():
        vs, meta = _read_vertices(out / PROGRESS_FILE, device=fixed[0].device)
        if len(vs) < n_fixed or any(not torch.equal(a.to(b.dtype), b) for a, b in zip(vs[:n_fixed], fixed)):
            raise LowlossError(f"{out / PROGRESS_FILE} was grown from other modes; use a new --out")
        vertices = [v.to(fixed[0].dtype) for v in vs]
        logs = meta.get("logs", [])
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
                               resume=resume and vdir is not None and (vdir / "checkpoint.safetensors").exists(),
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
            save_state(out / PROGRESS_FILE, {f"vertex_{j}": v for j, v in enumerate(vertices)},
                       {"logs": json.dumps(logs)})
            ck = vdir / "checkpoint.safetensors"
            ck.unlink(missing_ok=True)
            if vdir.exists() and not any(vdir.iterdir()):
                vdir.rmdir()
        echo(f"vertex {i}: log-volume {lv:.3f}, train loss {log['final_train_loss']:.4f}, lambda {lam:.3g}", quiet)
    structure = restrict_simplexes(simplexes, len(vertices)) or [tuple(range(len(vertices)))]
    kinds = ["mode"] * n_fixed + ["connector"] * (len(vertices) - n_fixed)
    return GrowResult(Complex(vertices, structure, kinds=kinds).to(dev), logs)


# ----------------------------------------------------------------------------------------------- evaluation
def sample_vectors(cplx: Complex, n: int, generator: torch.Generator, simplex: int | None = None) -> torch.Tensor:
    with torch.no_grad():
        return cplx.points(cplx.sample(n, generator, simplex=simplex)).detach()


def _test_metrics(res: dict, i: int) -> dict:
    return {"accuracy": 1.0 - float(res["test_error"][i]), "nll": float(res["test_nll"][i]),
            "ece": float(res["test_ece"][i]), "brier": float(res["test_brier"][i])}


def evaluate_samples(model: nn.Module, vectors: torch.Tensor, data, quiet: bool = True, train: bool = False) -> dict:
    """Single sampled models and their ensemble through the engine (BN recomputed per sample).

    Returns {"sample_mean": mean of each sample's metrics, "ensemble": metrics of the mean of the
    probabilities, "samples": per-sample lists, "probs": [M, N, C] test probabilities, "labels"}. With
    `train`, the samples' train loss and accuracy are measured too.
    """
    splits = ("train", "test") if train else ("test",)
    res = evaluate_vectors(model, vectors, data, splits=splits, calibration=True, return_probs=("test",),
                           quiet=quiet)
    per = [_test_metrics(res, i) for i in range(vectors.shape[0])]
    mean = {k: sum(p[k] for p in per) / len(per) for k in per[0]}
    probs, y = res["probs"]["test"], res["labels"]["test"]
    ens = M.classification_metrics(probs.double().mean(0), y)
    samples = {"test_accuracy": [p["accuracy"] for p in per], "test_nll": [p["nll"] for p in per]}
    if train:
        samples.update(train_loss=res["train_loss"].tolist(), train_accuracy=(1 - res["train_error"]).tolist())
    return {"sample_mean": mean, "ensemble": ens, "samples": samples, "probs": probs, "labels": y}


def mode_metrics(run) -> dict:
    """Test metrics of a trained run at its own weights and BN statistics."""
    r = evaluate_vector(run.model, run.vector, run.data, bufs=run.buffers, splits=("test",))["test"]
    return {k: r[k] for k in ("accuracy", "nll", "ece", "brier")}


# ----------------------------------------------------------------------------------------------- run dirs
def _prepare_out(out: Path, record: dict, result_file: str, resume: bool) -> dict | None:
    """Check an output directory: finished (return its result), resumable, or fresh."""
    if (out / result_file).exists() and (out / SIMPLEX_FILE).exists():
        old = read_json(out / CONFIG_FILE) if (out / CONFIG_FILE).exists() else None
        if old == record or resume:
            return read_json(out / result_file)
        raise LowlossError(f"{out} already holds a finished result with another configuration; choose a new --out")
    if not resume and ((out / PROGRESS_FILE).exists() or any(out.glob("vertex_*/checkpoint.safetensors"))):
        raise LowlossError(f"{out} holds an interrupted run: continue it with --resume or choose a new --out")
    if resume and (out / CONFIG_FILE).exists() and read_json(out / CONFIG_FILE) != record:
        raise LowlossError(f"--resume with a different configuration than the interrupted run in {out}")
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / CONFIG_FILE, record)
    return None


def _finish(out: Path) -> None:
    (out / PROGRESS_FILE).unlink(missing_ok=True)


def espro_simplex(run_dir, out, *, vertices: int = 3, cfg: SproConfig | None = None, members: int = 25,
                  seed: int = 0, device=None, resume: bool = False, quiet: bool = False, run=None,
                  plots: bool = True, face_grid: int = 0, sample_train: bool = True) -> dict:
    """Grow a simplex of `vertices` vertices from one trained mode (ESPRO) and evaluate it.

    Writes ``simplex.safetensors`` and ``simplex.json``: config, per-vertex logs, ``log_volume`` (after each
    added vertex) and ``test`` = {mode, sample_mean, ensemble} each {accuracy, nll, ece, brier}, the ensemble
    being `members` samples with BN recomputed per sample.
    """
    cfg = cfg or SproConfig()
    if vertices < 2:
        raise LowlossError("--vertices counts the mode too: use at least 2 (a segment), 3 for a triangle")
    out = Path(out)
    record = {"command": "simplex", "base_run": str(Path(run_dir).resolve()), "vertices": vertices,
              "spro": asdict(cfg), "members": members, "seed": seed}
    done = _prepare_out(out, record, "simplex.json", resume)
    if done is not None:
        echo(f"{out} is already finished; nothing to do", quiet)
        return done
    run = run or load_run(run_dir, device=device)
    t0 = time.time()
    grown = grow_complex(run.model, run.data, [run.vector], [tuple(range(vertices))], vertices - 1, cfg, seed=seed,
                         out=out, resume=resume, quiet=quiet, desc=f"espro {Path(run_dir).name}")
    save_complex(out / SIMPLEX_FILE, grown.complex, [run_dir])
    ev = evaluate_samples(run.model, sample_vectors(grown.complex, members, torch.Generator().manual_seed(seed)),
                          run.data, quiet=quiet, train=sample_train)
    # the raw test probabilities of every sample (reused by `espro`, kept for re-analysis)
    save_state(out / SAMPLES_FILE, {"test_probs": ev["probs"], "test_labels": ev["labels"]},
               {"members": members, "seed": seed})
    result = {"config": record, "versions": versions(), "base_run": str(run_dir),
              "num_params": int(run.vector.numel()),
              "log_volume": [lg["log_volume"] for lg in grown.logs],
              "vertex_logs": grown.logs,
              "test": {"mode": mode_metrics(run), "sample_mean": ev["sample_mean"], "ensemble": ev["ensemble"]},
              "samples": ev["samples"],
              "train_seconds": sum(lg["seconds"] for lg in grown.logs), "seconds": time.time() - t0}
    write_json(out / "simplex.json", result)
    _finish(out)
    if plots:
        from ..plots.simplex import plot_complex_structure
        plot_complex_structure(grown.complex, out / "structure.png", title=f"ESPRO simplex of {Path(run_dir).name}")
    if face_grid:
        from ..plots.simplex import face_planes
        result["faces"] = face_planes(out, grid=face_grid, device=device, quiet=quiet)
        write_json(out / "simplex.json", result)
    return result


def espro(run_dirs: Sequence, out, *, vertices: int = 3, cfg: SproConfig | None = None, members: int = 25,
          seed: int = 0, device=None, resume: bool = False, quiet: bool = False) -> dict:
    """One ESPRO simplex per mode (DIR/simplex_<i>) and the ensemble of all their samples vs the deep ensemble.

    Writes ``espro.json`` = {espro: metrics, deep_ensemble: metrics, ...} with metrics {accuracy, nll, ece,
    brier} on the test split; `members` samples are drawn from EACH simplex.
    """
    cfg = cfg or SproConfig()
    out = Path(out)
    if len(run_dirs) < 1:
        raise LowlossError("give at least one run directory")
    runs = load_runs(run_dirs, device=device)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / CONFIG_FILE, {"command": "espro", "runs": [str(Path(r).resolve()) for r in run_dirs],
                                   "vertices": vertices, "spro": asdict(cfg), "members": members, "seed": seed})
    per, probs, mode_probs, y = [], [], [], None
    for i, (rd, run) in enumerate(zip(run_dirs, runs)):
        sub = out / f"simplex_{i}"
        res = espro_simplex(rd, sub, vertices=vertices, cfg=cfg, members=members, seed=seed + i, device=device,
                            resume=resume or (sub / SIMPLEX_FILE).exists(), quiet=quiet, run=run, plots=False,
                            sample_train=False)
        if (sub / SAMPLES_FILE).exists():
            saved = load_file(str(sub / SAMPLES_FILE))
            probs.append(saved["test_probs"])
            y = saved["test_labels"]
        else:  # written by an older version: draw the same samples again
            cplx, _ = load_complex(sub, device=device)
            ev = evaluate_samples(run.model, sample_vectors(cplx.to(run.vector.device), members,
                                                            torch.Generator().manual_seed(seed + i)),
                                  run.data, quiet=quiet)
            probs.append(ev["probs"])
            y = ev["labels"]
        from ..engine.evaluate import predict_probs
        p, _ = predict_probs(run.model, run.vector, run.data.test, bufs=run.buffers)
        mode_probs.append(p.float().cpu())
        per.append({"run": str(rd), "dir": str(sub), "log_volume": res["log_volume"], "test": res["test"],
                    "train_seconds": res.get("train_seconds")})
    all_probs = torch.cat(probs).double().mean(0)
    result = {"config": read_json(out / CONFIG_FILE), "versions": versions(),
              "espro": M.classification_metrics(all_probs, y),
              "deep_ensemble": M.classification_metrics(torch.stack(mode_probs).double().mean(0), y),
              "members_per_simplex": members, "simplexes": per}
    write_json(out / "espro.json", result)
    return result


def _mode_connector_structure(num_modes: int, num_connectors: int) -> list[tuple[int, ...]]:
    """Each mode with all connectors, as in the paper's figures 3 and 4(a)."""
    conn = tuple(range(num_modes, num_modes + num_connectors))
    return [(m, *conn) for m in range(num_modes)]


def _per_simplex_eval(model, cplx: Complex, data, n: int, seed: int, quiet: bool) -> list[dict]:
    out = []
    for s in range(len(cplx.simplexes)):
        vecs = sample_vectors(cplx, n, torch.Generator().manual_seed(seed * 31 + s), simplex=s)
        res = evaluate_vectors(model, vecs, data, splits=("train", "test"), quiet=quiet)
        out.append({"simplex": list(cplx.simplexes[s]),
                    "train_loss": res["train_loss"].tolist(), "train_error": res["train_error"].tolist(),
                    "test_loss": res["test_loss"].tolist(), "test_error": res["test_error"].tolist(),
                    "mean": {k: float(res[k].mean()) for k in ("train_loss", "train_error", "test_loss", "test_error")}})
    return out


def mode_complex(run_dirs: Sequence, out, *, connectors: int = 3, cfg: SproConfig | None = None,
                 simplexes: Sequence[Sequence[int]] | None = None, eval_samples: int = 10, seed: int = 0,
                 device=None, resume: bool = False, quiet: bool = False) -> dict:
    """A mode-connecting complex: modes fixed, `connectors` trained one at a time; loss/error per simplex."""
    cfg = cfg or SproConfig(lmbda=COMPLEX_LAMBDA)
    if len(run_dirs) < 2:
        raise LowlossError("a mode-connecting complex needs at least two runs")
    if connectors < 1:
        raise LowlossError("--connectors must be at least 1")
    m = len(run_dirs)
    structure = [tuple(s) for s in simplexes] if simplexes else _mode_connector_structure(m, connectors)
    n = m + connectors
    for s in structure:
        if any(i < 0 or i >= n for i in s):
            raise LowlossError(f"simplex {list(s)} refers to a vertex outside 0..{n - 1} (modes 0..{m - 1}, "
                               f"connectors {m}..{n - 1})")
    out = Path(out)
    record = {"command": "complex", "runs": [str(Path(r).resolve()) for r in run_dirs], "connectors": connectors,
              "simplexes": [list(s) for s in structure], "spro": asdict(cfg), "eval_samples": eval_samples,
              "seed": seed}
    done = _prepare_out(out, record, "complex.json", resume)
    if done is not None:
        echo(f"{out} is already finished; nothing to do", quiet)
        return done
    runs = load_runs(run_dirs, device=device)
    model, data = runs[0].model, runs[0].data
    grown = grow_complex(model, data, [r.vector for r in runs], structure, connectors, cfg, seed=seed, out=out,
                         resume=resume, quiet=quiet, desc="complex")
    cplx = grown.complex
    save_complex(out / SIMPLEX_FILE, cplx, run_dirs)
    with torch.no_grad():
        lvs = cplx.log_volumes().tolist()
    result = {"config": record, "versions": versions(), "log_volume": [lg["log_volume"] for lg in grown.logs],
              "simplex_log_volumes": lvs, "modes": [mode_metrics(r) for r in runs],
              "simplexes": _per_simplex_eval(model, cplx, data, eval_samples, seed, quiet),
              "vertex_logs": grown.logs}
    write_json(out / "complex.json", result)
    _finish(out)
    from ..plots.simplex import plot_complex_structure
    plot_complex_structure(cplx, out / "structure.png", title=f"complex: {m} modes, {connectors} connectors")
    return result


def relative_height(cplx: Complex) -> float:
    """Height of the newest vertex over the face of the other vertices, divided by the simplex's RMS edge.

    From Vol_k = Vol_{k-1} h / k; the smallest over the simplexes holding the newest vertex. 0 when the new
    vertex lies in the affine hull of the others (the volume has collapsed), ~0.7 for a regular simplex.
    """
    from ..subspaces.simplex import pairwise_sq_dists, simplex_log_volume

    new = cplx.num_vertices - 1
    v = cplx.vertices().detach()
    out = math.inf
    for s in cplx.simplexes:
        if new not in s:
            continue
        k = len(s) - 1
        rest = [i for i in s if i != new]
        lv, lv0 = float(simplex_log_volume(v[list(s)])), float(simplex_log_volume(v[rest]))
        if not math.isfinite(lv) or not math.isfinite(lv0):
            return 0.0
        d = pairwise_sq_dists(v[list(s)])
        rms = math.sqrt(float(d.sum()) / (len(s) * k))
        out = min(out, math.exp(lv - lv0) * k / rms)
    return out if math.isfinite(out) else 0.0


def dimension(run_a, run_b, out, *, max_connectors: int = 12, cfg: SproConfig | None = None,
              eval_samples: int = 10, collapse: float = 1e-3, seed: int = 0, device=None, resume: bool = False,
              quiet: bool = False) -> dict:
    """Add connectors between two modes one at a time until the volume collapses (paper's figure 5).

    After each connector: the complex's log-volume, the newest connector's relative height (its distance
    from the affine hull of the other vertices over the RMS edge: Vol_k = Vol_{k-1} h / k) and the mean
    train accuracy of `eval_samples` sampled models. The volume has collapsed when the log-volume is -inf or
    the relative height falls below `collapse`: the new point found no new direction of low loss. The
    collapsing connector is recorded, then we stop; the dimension is at least the connectors before it.
    """
    cfg = cfg or SproConfig(lmbda=COMPLEX_LAMBDA)
    if max_connectors < 1:
        raise LowlossError("--max-connectors must be at least 1")
    out = Path(out)
    record = {"command": "dimension", "runs": [str(Path(r).resolve()) for r in (run_a, run_b)],
              "max_connectors": max_connectors, "spro": asdict(cfg), "eval_samples": eval_samples,
              "collapse": collapse, "seed": seed}
    done = _prepare_out(out, record, "dimension.json", resume)
    if done is not None:
        echo(f"{out} is already finished; nothing to do", quiet)
        return done
    runs = load_runs([run_a, run_b], device=device)
    model, data = runs[0].model, runs[0].data
    structure = _mode_connector_structure(2, max_connectors)

    def on_vertex(cplx, i):
        vecs = sample_vectors(cplx, eval_samples, torch.Generator().manual_seed(seed * 31 + i))
        res = evaluate_vectors(model, vecs, data, splits=("train",), quiet=True)
        return {"sample_train_accuracy": float(1 - res["train_error"].mean()),
                "sample_train_loss": float(res["train_loss"].mean()), "relative_height": relative_height(cplx)}

    def stop(cplx, logs):
        return not math.isfinite(logs[-1]["log_volume"]) or logs[-1]["relative_height"] < collapse

    grown = grow_complex(model, data, [r.vector for r in runs], structure, max_connectors, cfg, seed=seed, out=out,
                         resume=resume, quiet=quiet, on_vertex=on_vertex, stop=stop, desc="dimension")
    logs = grown.logs
    lv = [lg["log_volume"] for lg in logs]
    collapsed = next((j + 1 for j, lg in enumerate(logs) if lg.get("stopped")), None)
    save_complex(out / SIMPLEX_FILE, grown.complex, [run_a, run_b])
    result = {"config": record, "versions": versions(),
              "connectors": list(range(1, len(logs) + 1)), "log_volume": lv,
              "sample_train_accuracy": [lg["sample_train_accuracy"] for lg in logs],
              "sample_train_loss": [lg["sample_train_loss"] for lg in logs],
              "relative_height": [lg["relative_height"] for lg in logs],
              "collapsed_at": collapsed,
              "dimension_lower_bound": (collapsed - 1) if collapsed else len(logs),
              "vertex_logs": logs}
    write_json(out / "dimension.json", result)
    _finish(out)
    from ..plots.simplex import plot_complex_structure, plot_dimension
    plot_dimension(result, out / "dimension.png")
    plot_complex_structure(grown.complex, out / "structure.png", title="dimension complex")
    return result


# ----------------------------------------------------------------------------------------------- predictors
def _complex_sampler(cplx: Complex):
    def sampler(n: int, gen: torch.Generator):
        for _ in range(n):
            yield sample_vectors(cplx, 1, gen)[0], None
    return sampler


def simplex_predictor(path, device=None, members: int = 25):
    """One simplex (or complex) directory as a Predictor: `members` Dirichlet samples, BN recomputed each."""
    from .predictor import Predictor

    cplx, run = load_complex(path, device=device)
    return Predictor(run.model, run.data, sampler=_complex_sampler(cplx), num_samples=members,
                     name=f"simplex {path}", info={"simplexes": cplx.simplexes, "vertices": cplx.num_vertices})


def espro_predictor(path, device=None, members: int = 25):
    """An ESPRO directory (espro.json + simplex_<i>/) as a Predictor: `members` samples from each simplex."""
    from .predictor import Predictor

    path = Path(path)
    subs = sorted((p for p in path.glob("simplex_*") if (p / SIMPLEX_FILE).exists()),
                  key=lambda p: int(p.name.split("_")[-1]))
    if not subs:
        raise LowlossError(f"{path} holds no simplex_<i>/{SIMPLEX_FILE}")
    loaded = [load_complex(s, device=device) for s in subs]
    model, data = loaded[0][1].model, loaded[0][1].data
    complexes = [c for c, _ in loaded]

    def sampler(n: int, gen: torch.Generator):
        for j in range(n):
            yield sample_vectors(complexes[j % len(complexes)], 1, gen)[0], None

    return Predictor(model, data, sampler=sampler, num_samples=members * len(complexes),
                     name=f"espro {path}", info={"simplexes": len(complexes), "members_per_simplex": members})
