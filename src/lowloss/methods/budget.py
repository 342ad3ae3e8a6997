"""Compare single / ensemble / sse / fge / swa / swag / multiswag at equal epoch budgets over seeds
(Garipov et al. Table 2, Izmailov et al. Table 1).

One budget B = the epochs E of one ordinary training run trained to convergence (--epochs, default 80: a
digits convnet's test NLL keeps falling until 40-80 epochs, 0.044 at 20 epochs against 0.037 at 40 and at
80, mean of 3 seeds; the papers' budgets are likewise full schedules, 200 CIFAR epochs). At budget B every
method spends B * E epochs per seed (SWAG sampling and BN passes are not training and are not counted):

=========  ======================================================================================
single     one network trained B*E epochs with the ordinary cosine schedule
ensemble   B*M independent networks of E/M epochs each (M = --members-per-budget; M = 1 is the
           papers' "Ind", whose budget-1 ensemble is a single network)
sse        Huang et al.: B*S cosine cycles of E/S epochs from scratch (S = --sse-cycles), a snapshot
           per cycle
fge        a network pretrained round(f*E) epochs (f = --pretrain-fraction), then B*E - f*E epochs of
           triangular cycles of --fge-cycle-epochs, a snapshot at each cycle's lowest lr
swa        the same pretrained network, then B*E - f*E epochs at the constant lr --swa-lr, iterates
           averaged --collect-per-epoch times per epoch, BN recomputed for the average
swag       the very same trajectory as swa (its first moment is the SWA average), K = --rank
           deviations, the BMA of --samples samples at --scale
multiswag  B*M SWAG members with E/M epochs each (pretrain round(f*E/M), collect the rest),
           --samples samples in all, drawn evenly from the members (an equal-weight mixture)
=========  ======================================================================================

The pretrained network is shared by fge, swa and swag of a seed, and the ensemble / MultiSWAG members of
budget B are the first members of budget B+1, so nothing is trained twice. Every trained artifact is an
ordinary run directory (train, fge, sse, swag) under OUT/work/seed<s>/, and every member's test
predictions are cached next to it (preds.safetensors): an interrupted comparison continued with
--resume retrains and re-predicts nothing that was finished.

Writes OUT/run.json ("summary": {method: {budget: {metric: {mean, std}}}}, per-seed numbers,
"paired_vs_single" (method minus single on the same seed), the epoch accounting), OUT/budget.md
(tables) and OUT/budget.png (accuracy and NLL against budget).

With --executor ray every member run is a task on a Ray cluster (one torch thread per task): first every run
that needs no other (ordinary trainings, pretrained networks, SSE), then the runs made from those (FGE, SWA /
SWAG, MultiSWAG members); this process writes each finished run directory, then predicts and scores as a
local comparison does. Members trained at the same thread count have the same weights either way.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import torch

from .. import metrics as M
from ..config import option, replace, require, split_list
from ..data import load_dataset
from ..engine.evaluate import bn_buffers_for, predict_probs
from ..engine.executor import EXECUTORS, make_executor
from ..models import parse_options
from ..rundir import RunDir, load_tensors, read_result, run_method, save_tensors
from ..utils import echo, progress
from . import fge as fge_method
from . import sse as sse_method
from . import swag as swag_method
from . import train as train_method
from .ensemble import RunJob, member_probs, model_and_data, run_jobs, snapshot_predictor
from .predictor import run_predictor

METHODS = ("single", "ensemble", "sse", "fge", "swa", "swag", "multiswag")
METRICS = ("accuracy", "nll", "ece", "brier")
PREDS = "preds.safetensors"
# predictions with recomputed BN statistics name the statistics' semantics (the whole training set in one
# batch) in their cache key
BN_TAG = "_bnwhole"
_T, _FGE, _SWAG = train_method.Config, fge_method.Config, swag_method.Config
INPUTS = None  # trains every member itself


def _int_list(value) -> tuple[int, ...]:
    return tuple(int(v) for v in split_list(value)) if isinstance(value, str) else tuple(int(v) for v in value)


@dataclass
class Config(train_method.Network):
    """The comparison: data, architecture, budgets, seeds and each method's settings."""

    budgets: tuple = option((1, 2, 3), "Budgets to compare, in units of one training run: --budgets 1,2,3.",
                            parse=_int_list)
    seeds: int = option(3, "Number of seeds (from --seed on).")
    seed: int = option(0, "The first seed.")
    epochs: int = option(80, "Epochs of one budget: one ordinary training run, trained to convergence (a digits "
                             "convnet's test NLL stops improving at 40-80 epochs).")
    lr: float = option(_T.lr, "Peak lr of ordinary training runs.")
    momentum: float = _T.momentum
    wd: float = _T.wd
    batch_size: int = _T.batch_size
    members_per_budget: int = option(2, "Deep-ensemble and MultiSWAG members per budget (each trains epochs/M "
                                        "epochs; 1 = the papers' 'Ind', a single network at budget 1).")
    pretrain_fraction: float = option(0.8, "Share of one budget spent pretraining before FGE / SWA / SWAG.")
    fge_cycle_epochs: float = option(1.0, "FGE cycle length in epochs.")
    fge_lr_high: float = option(_FGE.lr_high, "FGE a1.")
    fge_lr_low: float = option(_FGE.lr_low, "FGE a2.")
    sse_cycles: int = option(4, "SSE cosine cycles per budget.")
    sse_lr: float = option(sse_method.Config.lr, "SSE lr at each restart.")
    swa_lr: float = option(swag_method.Config.lr, "Constant lr of SWA / SWAG.")
    collect_per_epoch: int = option(4, "SWA / SWAG iterates collected per epoch.")
    rank: int = option(_SWAG.rank, "SWAG K (deviations kept).")
    scale: float = option(_SWAG.scale, "SWAG sampling scale.")
    samples: int = option(_SWAG.samples, "SWAG samples (MultiSWAG: in all, split evenly among members).")
    methods: tuple = option(METHODS, "Comma-separated subset of the methods.", parse=split_list)
    device: str = "auto"
    executor: str = option("local", choices=EXECUTORS)
    ray_address: str | None = None

    def check(self) -> None:
        self.model_options = parse_options(self.model_options)
        self.budgets = tuple(sorted(set(_int_list(self.budgets))))
        self.methods = split_list(self.methods)
        e = self.epochs
        bad = [m for m in self.methods if m not in METHODS]
        require(not bad, f"unknown method(s) {', '.join(bad)}; valid: {', '.join(METHODS)}")
        require(bool(self.methods), "--methods names no method")
        require(self.executor in EXECUTORS, f"--executor must be one of {', '.join(EXECUTORS)} (got '{self.executor}')")
        require(bool(self.budgets) and all(b >= 1 for b in self.budgets), "--budgets must be positive integers")
        require(self.seeds >= 1, f"--seeds must be at least 1 (got {self.seeds})")
        require(e >= 1, f"--epochs must be at least 1 (got {e})")
        require(self.members_per_budget >= 1, "--members-per-budget must be at least 1")
        require(self.sse_cycles >= 1, "--sse-cycles must be at least 1")
        require(e % self.members_per_budget == 0,
                f"--epochs {e} is not divisible by --members-per-budget {self.members_per_budget}")
        require(e % self.sse_cycles == 0, f"--epochs {e} is not divisible by --sse-cycles {self.sse_cycles}")
        require(0 < self.pretrain_fraction < 1, "--pretrain-fraction must lie in (0, 1)")
        sub = e // self.members_per_budget
        require(1 <= round(self.pretrain_fraction * sub) < sub,
                f"MultiSWAG members have {sub} epochs: with --pretrain-fraction {self.pretrain_fraction} nothing is "
                "left to collect; lower the fraction or --members-per-budget")
        require(self.collect_per_epoch >= 1, "--collect-per-epoch must be at least 1")
        require(self.fge_cycle_epochs > 0, "--fge-cycle-epochs must be positive")


def accounting(c: Config, b: int) -> dict:
    """Epochs each method spends at budget b, and how (recorded in run.json)."""
    e = c.epochs
    pre = round(c.pretrain_fraction * e)
    sub = e // c.members_per_budget
    sub_pre = round(c.pretrain_fraction * sub)
    return {
        "single": {"epochs": b * e, "runs": 1},
        "ensemble": {"epochs": b * e, "members": b * c.members_per_budget, "epochs_per_member": sub},
        "sse": {"epochs": b * e, "cycles": b * c.sse_cycles, "cycle_epochs": e / c.sse_cycles},
        "fge": {"epochs": b * e, "pretrain_epochs": pre, "cycles": int((b * e - pre) // c.fge_cycle_epochs),
                "cycle_epochs": c.fge_cycle_epochs},
        "swa": {"epochs": b * e, "pretrain_epochs": pre, "swa_epochs": b * e - pre,
                "averaged": (b * e - pre) * c.collect_per_epoch},
        "swag": {"epochs": b * e, "pretrain_epochs": pre, "swag_epochs": b * e - pre,
                 "collected": (b * e - pre) * c.collect_per_epoch, "samples": c.samples},
        "multiswag": {"epochs": b * e, "members": b * c.members_per_budget, "pretrain_epochs_per_member": sub_pre,
                      "swag_epochs_per_member": sub - sub_pre, "samples": c.samples},
    }


# ---------------------------------------------------------------------------------------------------- caching
def cached_probs(directory: Path, key: str, compute, need: int | None = None) -> torch.Tensor:
    """Member test probabilities [M, N, C] cached in directory/preds.safetensors under `key`.

    `need` (sampled methods) asks for at least that many members: a cache with more is cut to its prefix
    (samples are drawn sequentially from a fixed generator, so a prefix is the smaller run).
    """
    path = Path(directory) / PREDS
    store: dict[str, torch.Tensor] = {}
    if path.exists():
        store = load_tensors(path)[0]
        if key in store and (need is None or store[key].shape[0] >= need):
            p = store[key]
            return p[:need] if need is not None else p
    p = compute().float().cpu()
    store[key] = p
    save_tensors(path, store, {"note": "test-set softmax outputs per member, float32"})
    return p[:need] if need is not None else p


def _probs_of(pred, seed: int = 0) -> torch.Tensor:
    probs, _ = member_probs(pred, "test", torch.Generator().manual_seed(seed))
    return probs


# ---------------------------------------------------------------------------------------------------- members
class _Comparison:
    """The member runs of one comparison and their cached test predictions."""

    def __init__(self, c: Config, run_dir: RunDir, quiet: bool):
        self.c, self.run_dir, self.quiet = c, run_dir, quiet
        self.data = load_dataset(c.data, seed=c.data_seed, data_dir=c.data_dir)
        test = self.data.test
        self.labels = test.y.cpu() if hasattr(test, "y") else torch.cat([y.cpu() for _, y in test.batches(1024)])
        self.seconds: dict[str, dict[str, float]] = {}  # tag -> {member directory: its training seconds}

    def member(self, module, config, inputs, path: Path, tag: str) -> Path:
        """Run (or reuse) one member run directory; its training time is counted under `tag`."""
        info = run_method(module, config, inputs, path, resume=self.run_dir.resuming, quiet=True, data=self.data)
        self.seconds.setdefault(tag, {})[str(path)] = float(info.get("train_seconds", 0.0))
        return path

    def seed_dir(self, s: int) -> Path:
        return self.run_dir.sub("work") / f"seed{s}"

    def train(self, d: Path, seed: int, epochs: int, tag: str) -> Path:
        c = self.c
        cfg = train_method.Config(data=c.data, model=c.model, model_options=dict(c.model_options), epochs=epochs,
                                  lr=c.lr, momentum=c.momentum, wd=c.wd, batch_size=c.batch_size, schedule="cosine",
                                  seed=seed, data_seed=c.data_seed, data_dir=c.data_dir, device=c.device)
        return self.member(train_method, cfg, None, d, tag)

    def probs(self, d: Path, key: str, compute, need: int | None = None) -> torch.Tensor:
        return cached_probs(d, key, compute, need)

    def run_probs(self, d: Path) -> torch.Tensor:
        return self.probs(d, "run", lambda: _probs_of(run_predictor(d, device=self.c.device)))

    def pretrain(self, s: int) -> Path:
        pre = round(self.c.pretrain_fraction * self.c.epochs)
        return self.train(self.seed_dir(s) / f"pretrain_e{pre}", s, pre, "pretrain")

    @staticmethod
    def member_seed(s: int, j: int) -> int:
        return 1000 * (s + 1) + j

    # methods: each returns the member probabilities [M, N, C] of (method, budget, seed) ------------------
    def single(self, s: int, b: int) -> torch.Tensor:
        e = b * self.c.epochs
        return self.run_probs(self.train(self.seed_dir(s) / f"single_e{e}", s, e, "single"))

    def ensemble(self, s: int, b: int) -> torch.Tensor:
        c = self.c
        sub = c.epochs // c.members_per_budget
        probs = []
        for j in range(b * c.members_per_budget):
            d = self.train(self.seed_dir(s) / f"ensemble_e{sub}_m{j}", self.member_seed(s, j), sub, "ensemble")
            probs.append(self.run_probs(d))
        return torch.cat(probs)

    def sse(self, s: int, b: int) -> torch.Tensor:
        c = self.c
        cfg = sse_method.Config(data=c.data, data_dir=c.data_dir, data_seed=c.data_seed, model=c.model,
                                model_options=dict(c.model_options), cycles=b * c.sse_cycles,
                                cycle_epochs=c.epochs / c.sse_cycles, lr=c.sse_lr, momentum=c.momentum, wd=c.wd,
                                batch_size=c.batch_size, seed=s, device=c.device, evaluate=False)
        d = self.member(sse_method, cfg, None, self.seed_dir(s) / f"sse_b{b}", "sse")
        return self.probs(d, "members", lambda: _probs_of(snapshot_predictor(d, device=c.device)))

    def fge(self, s: int, b: int) -> torch.Tensor:
        c = self.c
        acc = accounting(c, b)["fge"]
        base = self.pretrain(s)
        cfg = fge_method.Config(cycles=acc["cycles"], cycle_epochs=c.fge_cycle_epochs, lr_high=c.fge_lr_high,
                                lr_low=c.fge_lr_low, seed=s, device=c.device, evaluate=False)
        d = self.member(fge_method, cfg, [str(base)], self.seed_dir(s) / f"fge_b{b}", "fge")
        return self.probs(d, "members", lambda: _probs_of(snapshot_predictor(d, device=c.device)))

    def _swag_dir(self, base: Path, d: Path, epochs: int, seed: int, tag: str) -> Path:
        c = self.c
        cfg = swag_method.Config(epochs=epochs, lr=c.swa_lr, every_epochs=1.0 / c.collect_per_epoch, rank=c.rank,
                                 scale=c.scale, seed=seed, device=c.device, evaluate=False)
        return self.member(swag_method, cfg, [str(base)], d, tag)

    def _swag_samples(self, d: Path, n: int, seed: int) -> torch.Tensor:
        c = self.c
        key = f"swag_scale{c.scale:g}_seed{seed}{BN_TAG}"
        return self.probs(d, key, lambda: _probs_of(swag_method.swag_predictor(d, device=c.device, samples=n,
                                                                                 scale=c.scale), seed), need=n)

    def _swa_probs(self, d: Path) -> torch.Tensor:
        def compute():
            tensors, meta = swag_method.load_swag(d)
            model, data = model_and_data(meta, d, self.c.device)
            p0 = next(iter(model.parameters()))
            v = tensors["mean"].to(p0.device, p0.dtype)
            probs, _ = predict_probs(model, v, data.test, bufs=bn_buffers_for(model, v, data.train))
            return probs[None]

        return self.probs(d, "swa" + BN_TAG, compute)

    def swag_run(self, s: int, b: int) -> Path:
        c = self.c
        pre = round(c.pretrain_fraction * c.epochs)
        return self._swag_dir(self.pretrain(s), self.seed_dir(s) / f"swag_b{b}", b * c.epochs - pre, s, "swag")

    def swa(self, s: int, b: int) -> torch.Tensor:
        return self._swa_probs(self.swag_run(s, b))

    def swag(self, s: int, b: int) -> torch.Tensor:
        return self._swag_samples(self.swag_run(s, b), self.c.samples, s)

    def multiswag(self, s: int, b: int) -> torch.Tensor:
        c = self.c
        sub = c.epochs // c.members_per_budget
        sub_pre = round(c.pretrain_fraction * sub)
        m = b * c.members_per_budget
        per = math.ceil(c.samples / m)
        probs = []
        for j in range(m):
            seed = self.member_seed(s, j)
            base = self.train(self.seed_dir(s) / f"multiswag_pre_e{sub_pre}_m{j}", seed, sub_pre, "multiswag")
            d = self._swag_dir(base, self.seed_dir(s) / f"multiswag_m{j}", sub - sub_pre, seed, "multiswag")
            probs.append(self._swag_samples(d, per, seed))
        # stratified equal-weight mixture: the same number of samples from every member
        return torch.cat(probs)


class _Planner(_Comparison):
    """The member runs a comparison needs (``jobs``: directory -> RunJob), recorded instead of run."""

    def __init__(self, c: Config, run_dir: RunDir, quiet: bool):
        super().__init__(c, run_dir, quiet)
        self.jobs: dict[str, RunJob] = {}

    def member(self, module, config, inputs, path: Path, tag: str) -> Path:
        self.jobs.setdefault(str(path), RunJob(module.__name__, config, inputs, Path(path)))
        return path

    def probs(self, d, key, compute, need=None) -> torch.Tensor:
        return torch.zeros(1, 1, 1)


def _run_members(c: Config, run_dir: RunDir, tasks, executor, quiet: bool) -> None:
    """Every member run of the comparison through the executor, runs made from other runs after those."""
    planner = _Planner(c, run_dir, quiet)
    for s, b, m in tasks:
        getattr(planner, m)(s, b)
    todo = list(planner.jobs.values())
    with progress(total=len(todo), desc="budget runs", quiet=quiet, unit="run") as bar:
        while todo:
            waiting = {str(j.out) for j in todo}
            ready = [j for j in todo if not any(str(p) in waiting for p in j.inputs or ())]
            for _ in run_jobs(ready, executor, resume=True, quiet=True):
                bar.update(1)
            todo = [j for j in todo if j not in ready]


# ---------------------------------------------------------------------------------------------------- method
def fit(config: Config, inputs, run_dir: RunDir, *, quiet: bool = False) -> dict:
    """Train (or reuse) every member, evaluate every method at every budget and seed; writes run.json and
    budget.md."""
    c = config
    executor = make_executor(c.executor, c.ray_address, device=c.device)  # an unreachable cluster: error first
    comp = _Comparison(c, run_dir, quiet)
    seeds = list(range(c.seed, c.seed + c.seeds))
    tasks = [(s, b, m) for s in seeds for b in c.budgets for m in c.methods]
    if executor.name != "local":
        _run_members(c, run_dir, tasks, executor, quiet)
    raw: dict = {m: {str(b): {} for b in c.budgets} for m in c.methods}
    for s, b, m in progress(tasks, desc="budget", quiet=quiet, unit="task"):
        probs = getattr(comp, m)(s, b)
        met = M.classification_metrics(M.ensemble_probs(probs.double()), comp.labels)
        met["members"] = int(probs.shape[0])
        raw[m][str(b)][str(s)] = met
        echo(f"seed {s} budget {b} {m:<9} members {probs.shape[0]:>3}  acc {met['accuracy']:.4f}  "
             f"nll {met['nll']:.4f}  ece {met['ece']:.4f}  brier {met['brier']:.4f}", quiet)
    summary_ = {m: {str(b): {k: _mean_std([raw[m][str(b)][str(s)][k] for s in seeds]) for k in METRICS}
                    for b in c.budgets} for m in c.methods}
    paired = {}  # method minus single on the same seed: seed-to-seed spread cancels
    if "single" in c.methods:
        paired = {m: {str(b): {k: _mean_std([raw[m][str(b)][str(s)][k] - raw["single"][str(b)][str(s)][k]
                                             for s in seeds]) for k in ("accuracy", "nll")}
                      for b in c.budgets} for m in c.methods if m != "single"}
    run_dir.file("budget.md").write_text(markdown_table(summary_, c, seeds, paired))
    return run_dir.finish({"seeds": seeds, "ece_bins": M.ECE_BINS,
                           "accounting": {str(b): accounting(c, b) for b in c.budgets}, "per_seed": raw,
                           "seconds": {tag: sum(per.values()) for tag, per in comp.seconds.items()},
                           "summary": summary_, "paired_vs_single": paired})


def _mean_std(xs: list[float]) -> dict:
    t = torch.tensor(xs, dtype=torch.float64)
    return {"mean": t.mean().item(), "std": t.std(unbiased=True).item() if len(xs) > 1 else 0.0}


def markdown_table(summary: dict, c, seeds, paired: dict | None = None) -> str:
    """The comparison as markdown tables (`c`: a Config or its record; data, model and epochs are used)."""
    lines = [f"# Equal-budget comparison: {c.data} / {c.model}", "",
             f"1 budget = {c.epochs} epochs; mean ± std over seeds {seeds}; accuracy and NLL, ECE "
             f"({M.ECE_BINS} equal-width bins), Brier on the test set; ensembles average softmax outputs.", ""]
    paired = paired or {}
    for b in sorted({int(x) for m in summary.values() for x in m}):
        lines += [f"## Budget {b} ({b * c.epochs} epochs)", "",
                  "| method | accuracy (%) | NLL | ECE | Brier | NLL - single (paired) |", "|---|---|---|---|---|---|"]
        for m, per_b in summary.items():
            if str(b) not in per_b:
                continue
            r = per_b[str(b)]
            d = paired.get(m, {}).get(str(b), {}).get("nll")
            dd = f"{d['mean']:+.4f} ± {d['std']:.4f}" if d else "-"
            lines.append(f"| {m} | {100 * r['accuracy']['mean']:.2f} ± {100 * r['accuracy']['std']:.2f} | "
                         f"{r['nll']['mean']:.4f} ± {r['nll']['std']:.4f} | {r['ece']['mean']:.4f} ± "
                         f"{r['ece']['std']:.4f} | {r['brier']['mean']:.4f} ± {r['brier']['std']:.4f} | {dd} |")
        lines.append("")
    return "\n".join(lines)


def summary(info: dict) -> str:
    """budget.md's tables."""
    return "\n" + markdown_table(info["summary"], SimpleNamespace(**info["config"]), info["seeds"],
                                  info.get("paired_vs_single"))


def load(path: str | Path, device=None) -> dict:
    """run.json of a comparison: ``summary``, ``per_seed``, ``paired_vs_single``, ``accounting``, ``seconds``."""
    return read_result(path, "budget")


def compare(config: Config | None = None, out: str | Path = "runs/budget", *, resume: bool = False,
            quiet: bool = False, **overrides) -> dict:
    """Python API: ``compare(out="runs/budget", model="mlp", budgets=(1, 2))``. Returns run.json's contents."""
    return run_method(sys.modules[__name__], replace(config or Config(), **overrides), None, out, resume=resume,
                      quiet=quiet)


__all__ = ["Config", "METHODS", "accounting", "cached_probs", "compare", "fit", "load", "markdown_table",
           "summary"]
