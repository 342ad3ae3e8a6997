"""Grow one ESPRO simplex per mode RUNS and compare the ensemble of their samples with the deep ensemble.

Each simplex is a `lowloss simplex` run in OUT/simplex_<i> (grown from RUNS[i] with seed --seed + i);
--members samples are drawn from EACH simplex and the ESPRO predictive distribution is the mean of all
their softmax outputs. OUT/run.json holds `espro` and `deep_ensemble` = test accuracy, NLL, ECE (15 bins)
and Brier, the same for every pair of modes (`pairs`), and per simplex its directory, log-volumes and test
metrics. --resume continues an interrupted
run; finished simplexes are kept. With --executor ray the simplexes grow at the same time as tasks on a Ray
cluster (each worker gets a copy of its mode run; this process writes OUT/simplex_<i>).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from .. import metrics as M
from ..config import option, require
from ..engine.evaluate import predict_probs
from ..engine.executor import EXECUTORS, make_executor
from ..rundir import RunDir, load_runs, load_tensors, read_result
from . import simplex
from .ensemble import RunJob, run_jobs
from .spro import SAMPLES_FILE, EsproConfig, complex_predictor, format_metrics, load_complex, spro_fields

INPUTS = {"metavar": "RUNS", "nargs": -1}
SUBRUN = "simplex_{}"


@dataclass
class Config(EsproConfig):
    """ESPRO: one simplex per mode, their samples pooled."""

    seed: int = 0
    device: str = "auto"
    executor: str = option("local", choices=EXECUTORS)
    ray_address: str | None = None

    def check(self) -> None:
        super().check()
        require(self.executor in EXECUTORS, f"--executor must be one of {', '.join(EXECUTORS)} (got '{self.executor}')")


def check_inputs(config: Config, inputs) -> None:
    """At least one mode."""
    require(bool(inputs), "espro needs at least one run directory")


def fit(config: Config, inputs, run_dir: RunDir, *, quiet: bool = False) -> dict:
    """Grow (or reuse) the simplexes, pool their samples, evaluate both ensembles. Returns run.json's contents."""
    config.check()
    check_inputs(config, inputs)
    runs = load_runs(inputs, device=config.device)
    jobs = [RunJob(simplex.__name__, simplex.Config(**spro_fields(config, EsproConfig), seed=config.seed + i,
                                                    device=config.device, sample_train=False),
                   [rd], run_dir.sub(SUBRUN.format(i)), {"run": run}) for i, (rd, run) in enumerate(zip(inputs, runs))]
    executor = make_executor(config.executor, config.ray_address, device=config.device)
    results = dict(run_jobs(jobs, executor, resume=run_dir.resuming, quiet=quiet))
    per, probs, mode_probs, y = [], [], [], None
    for i, (rd, run) in enumerate(zip(inputs, runs)):
        sub, res = jobs[i].out, results[i]
        saved, _ = load_tensors(sub / SAMPLES_FILE)
        probs.append(saved["test_probs"])
        y = saved["test_labels"]
        p, _ = predict_probs(run.model, run.vector, run.data.test, bufs=run.buffers)
        mode_probs.append(p.float().cpu())
        per.append({"run": str(rd), "dir": str(sub), "log_volume": res["log_volume"], "test": res["test"],
                    "train_seconds": res.get("train_seconds")})
    all_probs = torch.cat(probs).double().mean(0)
    return run_dir.finish({"espro": M.classification_metrics(all_probs, y),
                           "deep_ensemble": M.classification_metrics(torch.stack(mode_probs).double().mean(0), y),
                           "pairs": pair_metrics(probs, mode_probs, y),
                           "members_per_simplex": config.members, "simplexes": per})


def pair_metrics(probs: list, mode_probs: list, y) -> dict:
    """ESPRO and the deep ensemble again for every pair of the modes ("0-1": {espro, deep_ensemble}): with three
    modes, three two-mode comparisons, the spread the study's claim judges."""
    out = {}
    for i in range(len(probs)):
        for j in range(i + 1, len(probs)):
            espro = torch.cat([probs[i], probs[j]]).double().mean(0)
            deep = torch.stack([mode_probs[i], mode_probs[j]]).double().mean(0)
            out[f"{i}-{j}"] = {"espro": M.classification_metrics(espro, y),
                               "deep_ensemble": M.classification_metrics(deep, y)}
    return out


def summary(result: dict) -> str:
    cfg = result["config"]
    return "\n".join([f"{len(cfg['inputs'])} modes x {cfg['vertices']} vertices, {cfg['members']} samples per simplex",
                      f"  espro          {format_metrics(result['espro'])}",
                      f"  deep ensemble  {format_metrics(result['deep_ensemble'])}"])


def load(path: str | Path, device=None, members: int | None = None):
    """The ESPRO ensemble of a finished espro run as a :class:`~lowloss.methods.predictor.Predictor`:
    `members` samples from each simplex (default: the run's --members), drawn from the simplexes in turn,
    BN statistics recomputed for each."""
    path = Path(path)
    info = read_result(path, "espro")
    members = members if members is not None else info["config"]["members"]
    loaded = [load_complex(path / SUBRUN.format(i), device=device) for i in range(len(info["simplexes"]))]
    return complex_predictor([c for c, _ in loaded], loaded[0][1], members, f"espro {path}",
                             {"simplexes": len(loaded), "members_per_simplex": members})


__all__ = ["Config", "INPUTS", "check_inputs", "fit", "load", "pair_metrics", "summary"]
