"""Grow a low-loss simplex from one mode RUN (ESPRO, Benton et al. 2021), vertex by vertex; evaluate its samples.

Vertex 0 is the mode (fixed). Each new vertex starts at the mean of the others, which stay fixed, and
minimises (1/J) sum_j L(w_j) - lambda_i log(Vol^2 + 1e-4) over J Dirichlet samples w_j of the simplex per
step, lambda_i scaled by a simplex of random initialisations (appendix A.3).

Writes OUT/simplex.safetensors (vertex_0 = the mode, ...), OUT/samples.safetensors (test probabilities of
the --members sampled models), OUT/structure.npz and OUT/structure.png (the vertices laid out by their
distances), and OUT/run.json: per-vertex logs, log_volume after each vertex, test metrics of the mode, of
the mean sampled model and of the ensemble of --members samples (BN statistics recomputed per sample).
--face-planes G adds the loss in the plane of every triangular face (OUT/faces/face_i_j_k/, as
`lowloss plane --simplex OUT --face i j k`). --resume continues an interrupted run at the next vertex, or
inside a vertex from its checkpoint.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch

from .. import metrics as M
from ..config import option, require
from ..engine.evaluate import evaluate_vectors
from ..rundir import RunDir, load_run, read_result, run_method
from .spro import (
    PROGRESS_FILE,
    SAMPLES_FILE,
    SIMPLEX_FILE,
    STRUCTURE_FILE,
    EsproConfig,
    SproConfig,
    complex_predictor,
    faces,
    format_metrics,
    grow_complex,
    load_complex,
    load_simplex,
    mode_metrics,
    sample_vectors,
    save_complex,
    save_structure,
    spro_fields,
)

INPUTS = {"metavar": "RUN", "nargs": 1}
FACE_DIR = "faces"
FACE_METRICS = ("train_loss", "test_error")


@dataclass
class Config(EsproConfig):
    """One ESPRO simplex grown from one trained mode."""

    face_planes: int = option(0, "Also compute the loss in the plane of every triangular face on a GxG grid "
                                 "(through the plane engine, OUT/faces/face_i_j_k/); 0 = skip (each face costs "
                                 "G^2 evaluations).")
    sample_train: bool = option(True, "Also measure the sampled models' train loss and accuracy.", cli=False)
    seed: int = 0
    device: str = "auto"

    def check(self) -> None:
        super().check()
        require(self.face_planes >= 0, f"--face-planes must be >= 0 (got {self.face_planes})")


def _test_metrics(res: dict, i: int) -> dict:
    return {"accuracy": 1.0 - float(res["test_error"][i]), "nll": float(res["test_nll"][i]),
            "ece": float(res["test_ece"][i]), "brier": float(res["test_brier"][i])}


def evaluate_samples(model, vectors: torch.Tensor, data, quiet: bool = True, train: bool = False) -> dict:
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


def face_planes(run_dir: RunDir, grid: int, *, device: str, quiet: bool = False) -> list[dict]:
    """The loss in the plane of each triangular face of the simplex in `run_dir`: one `plane` sub-run per face
    in ``faces/face_<i>_<j>_<k>/`` (``lowloss plane --simplex DIR --face i j k --grid G``)."""
    from . import plane

    results = []
    for f in faces(load_simplex(run_dir.path)["simplexes"]):
        d = run_dir.sub(f"{FACE_DIR}/face_{f[0]}_{f[1]}_{f[2]}")
        cfg = plane.Config(simplex=str(run_dir.path), face=f, grid=grid, metrics=FACE_METRICS, device=device)
        info = run_method(plane, cfg, None, d, resume=run_dir.resuming, quiet=quiet)
        results.append({"face": list(f), "dir": str(d), "points": info.get("points")})
    return results


def check_inputs(config: Config, inputs) -> None:
    """Exactly one mode."""
    require(len(inputs or ()) == 1, f"simplex grows from one run (got {len(inputs or ())})")


def fit(config: Config, inputs, run_dir: RunDir, *, quiet: bool = False, run=None) -> dict:
    """Grow the simplex from inputs[0] (`run`: that run already loaded) and evaluate it. Returns run.json's contents."""
    config.check()
    check_inputs(config, inputs)
    base = inputs[0]
    run = run or load_run(base, device=config.device)
    t0 = time.time()
    grown = grow_complex(run.model, run.data, [run.vector], [tuple(range(config.vertices))], config.vertices - 1,
                         SproConfig(**spro_fields(config)), seed=config.seed, out=run_dir.path,
                         resume=run_dir.resuming, quiet=quiet, desc=f"espro {Path(base).name}")
    save_complex(run_dir.file(SIMPLEX_FILE), grown.complex, [base])
    save_structure(run_dir.file(STRUCTURE_FILE), grown.complex)
    ev = evaluate_samples(run.model, sample_vectors(grown.complex, config.members,
                                                    torch.Generator().manual_seed(config.seed)),
                          run.data, quiet=quiet, train=config.sample_train)
    # the raw test probabilities of every sample (the espro ensemble pools them)
    run_dir.save_tensors(SAMPLES_FILE, {"test_probs": ev["probs"], "test_labels": ev["labels"]},
                         {"members": config.members, "seed": config.seed})
    result = {"base_run": str(base), "num_params": int(run.vector.numel()),
              "log_volume": [lg["log_volume"] for lg in grown.logs],
              "vertex_logs": grown.logs,
              "test": {"mode": mode_metrics(run), "sample_mean": ev["sample_mean"], "ensemble": ev["ensemble"]},
              "samples": ev["samples"],
              "train_seconds": sum(lg["seconds"] for lg in grown.logs), "seconds": time.time() - t0}
    if config.face_planes:
        result["faces"] = face_planes(run_dir, config.face_planes, device=config.device, quiet=quiet)
    return run_dir.finish(result, remove=(PROGRESS_FILE,))


def summary(result: dict) -> str:
    t = result["test"]
    lines = [f"log-volume after each vertex {[round(v, 3) for v in result['log_volume']]}"]
    lines += [f"  {k:<12} {format_metrics(t[k])}" for k in ("mode", "sample_mean", "ensemble")]
    return "\n".join(lines)


def load(path: str | Path, device=None, members: int | None = None):
    """A directory holding simplex.safetensors (a `simplex`, `complex` or `dimension` run) as a
    :class:`~lowloss.methods.predictor.Predictor`: `members` Dirichlet samples (default: the run's --members,
    or its --eval-samples), BN statistics recomputed for each."""
    info = read_result(path, ("simplex", "complex", "dimension"), needs=(SIMPLEX_FILE,))
    cfg = info.get("config") or {}
    members = members if members is not None else cfg.get("members", cfg.get("eval_samples"))
    cplx, run = load_complex(path, device=device)
    return complex_predictor([cplx], run, members, f"simplex {path}",
                             {"simplexes": cplx.simplexes, "vertices": cplx.num_vertices})


__all__ = ["Config", "INPUTS", "check_inputs", "evaluate_samples", "face_planes", "fit", "load", "summary"]
