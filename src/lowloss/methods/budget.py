"""Equal-budget comparison of ensembling and averaging methods (Garipov et al. Table 2, Izmailov et al. Table 1).

One budget B = the epochs E of one ordinary training run trained to convergence (``epochs_per_budget``,
default 80: a digits convnet's test NLL keeps falling until 40-80 epochs, 0.044 at 20 epochs against
0.037 at 40 and at 80, mean of 3 seeds; the papers' budgets are likewise full schedules, 200 CIFAR epochs).
At budget B every method spends B * E epochs per seed (SWAG sampling and BN passes are not training and
are not counted):

=========  ======================================================================================
single     one network trained B*E epochs with the ordinary cosine schedule
ensemble   B*M independent networks of E/M epochs each (M = members_per_budget; M = 1 is the
           papers' "Ind", whose budget-1 ensemble is a single network)
sse        Huang et al.: B*S cosine cycles of E/S epochs from scratch, a snapshot per cycle
fge        a network pretrained round(f*E) epochs (f = 0.8), then B*E - f*E epochs of triangular
           cycles of `fge_cycle_epochs`, a snapshot at each cycle's lowest lr
swa        the same pretrained network, then B*E - f*E epochs at the constant lr `swa_lr`,
           iterates averaged `collect_per_epoch` times per epoch, BN recomputed for the average
swag       the very same trajectory as swa (its first moment is the SWA average), K = rank
           deviations, the BMA of `samples` samples at `scale`
multiswag  B*M SWAG members with E/M epochs each (pretrain round(f*E/M), collect the rest),
           `samples` samples in all, drawn evenly from the members (an equal-weight mixture)
=========  ======================================================================================

The pretrained network is shared by fge, swa and swag of a seed and the ensemble / MultiSWAG members of
budget B are the first members of budget B+1, so nothing is trained twice. Every trained artifact is a
lowloss run / snapshot / SWAG directory under DIR/work/seed<s>/, and every member's test predictions are
cached next to it (preds.safetensors): re-running the comparison retrains and re-predicts nothing.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from .. import metrics as M
from ..engine.train import Trainer
from ..rundir import save_tensors as save_state
from ..utils import LowlossError, echo, progress, read_json, versions, write_json
from .train import Config as TrainConfig
from .train import train as train_mode

METHODS = ("single", "ensemble", "sse", "fge", "swa", "swag", "multiswag")
METRICS = ("accuracy", "nll", "ece", "brier")
PREDS = "preds.safetensors"
# predictions whose BN statistics are recomputed carry the statistics' semantics in their cache key, so a
# cache written under the earlier default (a cumulative average over batches of 1024) is recomputed
BN_TAG = "_bnwhole"
_T = TrainConfig()


@dataclass
class BudgetConfig:
    data: str = "digits"
    model: str = "convnet"
    model_options: dict = field(default_factory=dict)
    data_seed: int = 0
    data_dir: str | None = None
    budgets: tuple = (1, 2, 3)
    seeds: int = 3
    first_seed: int = 0
    epochs_per_budget: int = 80  # a converged run (see the module docstring); lowloss train's default is 20
    lr: float = _T.lr
    momentum: float = _T.momentum
    wd: float = _T.wd
    batch_size: int = _T.batch_size
    members_per_budget: int = 2
    pretrain_fraction: float = 0.8
    fge_cycle_epochs: float = 1.0
    fge_lr_high: float = 0.025
    fge_lr_low: float = 0.0005
    sse_cycles_per_budget: int = 4
    sse_lr: float = 0.1
    swa_lr: float = 0.01
    collect_per_epoch: int = 4
    rank: int = 20
    scale: float = 0.5
    samples: int = 30
    methods: tuple = METHODS
    device: str = "auto"


def check_config(c: BudgetConfig) -> None:
    e = c.epochs_per_budget
    bad = [m for m in c.methods if m not in METHODS]
    if bad:
        raise LowlossError(f"unknown method(s) {', '.join(bad)}; valid: {', '.join(METHODS)}")
    if any(b < 1 or int(b) != b for b in c.budgets):
        raise LowlossError("--budgets must be positive integers")
    if e % c.members_per_budget:
        raise LowlossError(f"--epochs {e} is not divisible by --members-per-budget {c.members_per_budget}")
    if e % c.sse_cycles_per_budget:
        raise LowlossError(f"--epochs {e} is not divisible by --sse-cycles {c.sse_cycles_per_budget}")
    if not 0 < c.pretrain_fraction < 1:
        raise LowlossError("--pretrain-fraction must lie in (0, 1)")
    sub = e // c.members_per_budget
    if round(c.pretrain_fraction * sub) >= sub or round(c.pretrain_fraction * sub) < 1:
        raise LowlossError(f"MultiSWAG members have {sub} epochs: with --pretrain-fraction {c.pretrain_fraction} "
                           "nothing is left to collect; lower the fraction or --members-per-budget")


def accounting(c: BudgetConfig, b: int) -> dict:
    """Epochs each method spends at budget b, and how (recorded in budget.json)."""
    e = c.epochs_per_budget
    pre = round(c.pretrain_fraction * e)
    sub = e // c.members_per_budget
    sub_pre = round(c.pretrain_fraction * sub)
    return {
        "single": {"epochs": b * e, "runs": 1},
        "ensemble": {"epochs": b * e, "members": b * c.members_per_budget, "epochs_per_member": sub},
        "sse": {"epochs": b * e, "cycles": b * c.sse_cycles_per_budget, "cycle_epochs": e / c.sse_cycles_per_budget},
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
    path = directory / PREDS
    store: dict[str, torch.Tensor] = {}
    if path.exists():
        store = load_file(str(path))
        if key in store and (need is None or store[key].shape[0] >= need):
            p = store[key]
            return p[:need] if need is not None else p
    p = compute().float().cpu()
    store[key] = p
    save_state(path, store, {"note": "test-set softmax outputs per member, float32"})
    return p[:need] if need is not None else p


def _labels(data) -> torch.Tensor:
    return data.test.y.cpu() if hasattr(data.test, "y") else torch.cat([y.cpu() for _, y in data.test.batches(1024)])


def _probs_of(pred, seed: int = 0) -> torch.Tensor:
    from .ensemble import member_probs

    probs, _ = member_probs(pred, "test", torch.Generator().manual_seed(seed))
    return probs


# ---------------------------------------------------------------------------------------------------- runner
class BudgetRunner:
    def __init__(self, cfg: BudgetConfig, out: str | Path, quiet: bool = False):
        check_config(cfg)
        self.cfg, self.out, self.quiet = cfg, Path(out), quiet
        from ..data import load_dataset

        self.data = load_dataset(cfg.data, seed=cfg.data_seed, data_dir=cfg.data_dir)
        self.labels = _labels(self.data)
        self.timings: dict[str, float] = {}

    def _tc(self, seed: int, epochs: int) -> TrainConfig:
        c = self.cfg
        return TrainConfig(data=c.data, model=c.model, model_options=dict(c.model_options), epochs=epochs, lr=c.lr,
                           momentum=c.momentum, wd=c.wd, batch_size=c.batch_size, schedule="cosine", seed=seed,
                           data_seed=c.data_seed, data_dir=c.data_dir, device=c.device)

    def _time(self, name, fn):
        t0 = time.time()
        r = fn()
        self.timings[name] = self.timings.get(name, 0.0) + time.time() - t0
        return r

    # artifacts ----------------------------------------------------------------------------------------
    def train(self, d: Path, seed: int, epochs: int, tag: str) -> Path:
        if not (d / "run.json").exists():
            self._time(tag, lambda: train_mode(self._tc(seed, epochs), d, resume=(d / Trainer.CKPT).exists(),
                                               quiet=True, data=self.data))
        return d

    def run_probs(self, d: Path) -> torch.Tensor:
        from .predictor import run_predictor

        return cached_probs(d, "run", lambda: _probs_of(run_predictor(d, device=self.cfg.device)))

    def seed_dir(self, s: int) -> Path:
        return self.out / "work" / f"seed{s}"

    def pretrain(self, s: int) -> Path:
        e = self.cfg.epochs_per_budget
        pre = round(self.cfg.pretrain_fraction * e)
        return self.train(self.seed_dir(s) / f"pretrain_e{pre}", s, pre, "pretrain")

    def member_seed(self, s: int, j: int) -> int:
        return 1000 * (s + 1) + j

    # methods: each returns the member probabilities [M, N, C] of (method, budget, seed) ------------------
    def single(self, s: int, b: int) -> torch.Tensor:
        e = b * self.cfg.epochs_per_budget
        return self.run_probs(self.train(self.seed_dir(s) / f"single_e{e}", s, e, "single"))

    def ensemble(self, s: int, b: int) -> torch.Tensor:
        c = self.cfg
        sub = c.epochs_per_budget // c.members_per_budget
        probs = []
        for j in range(b * c.members_per_budget):
            d = self.train(self.seed_dir(s) / f"ensemble_e{sub}_m{j}", self.member_seed(s, j), sub, "ensemble")
            probs.append(self.run_probs(d))
        return torch.cat(probs)

    def sse(self, s: int, b: int) -> torch.Tensor:
        from .ensemble import snapshot_predictor
        from .fge import SSEConfig, run_sse

        c = self.cfg
        d = self.seed_dir(s) / f"sse_b{b}"
        if not (d / "sse.json").exists():
            sc = SSEConfig(cycles=b * c.sse_cycles_per_budget, cycle_epochs=c.epochs_per_budget / c.sse_cycles_per_budget,
                           lr=c.sse_lr)
            self._time("sse", lambda: run_sse(self._tc(s, 0), sc, d, resume=(d / Trainer.CKPT).exists(), quiet=True,
                                              data=self.data, evaluate=False))
        return cached_probs(d, "members", lambda: _probs_of(snapshot_predictor(d, device=c.device)))

    def fge(self, s: int, b: int) -> torch.Tensor:
        from .ensemble import snapshot_predictor
        from .fge import FGEConfig, run_fge

        c = self.cfg
        acc = accounting(c, b)["fge"]
        base = self.pretrain(s)
        d = self.seed_dir(s) / f"fge_b{b}"
        if not (d / "fge.json").exists():
            fc = FGEConfig(cycles=acc["cycles"], cycle_epochs=c.fge_cycle_epochs, lr_high=c.fge_lr_high,
                           lr_low=c.fge_lr_low, seed=s, device=c.device)
            self._time("fge", lambda: run_fge(base, fc, d, resume=(d / Trainer.CKPT).exists(), quiet=True,
                                              data=self.data, evaluate=False))
        return cached_probs(d, "members", lambda: _probs_of(snapshot_predictor(d, device=c.device)))

    def _swag_dir(self, base: Path, d: Path, epochs: int, seed: int) -> Path:
        from .swag import SWAGConfig, run_swag

        c = self.cfg
        if not (d / "swag.json").exists():
            sc = SWAGConfig(epochs=epochs, lr=c.swa_lr, every_epochs=1.0 / c.collect_per_epoch, rank=c.rank,
                            scale=c.scale, seed=seed, device=c.device)
            self._time("swag", lambda: run_swag(base, sc, d, resume=(d / Trainer.CKPT).exists(), quiet=True,
                                                data=self.data, evaluate=False))
        return d

    def _swag_samples(self, d: Path, n: int, seed: int) -> torch.Tensor:
        from .swag import swag_predictor

        c = self.cfg
        key = f"swag_scale{c.scale:g}_seed{seed}{BN_TAG}"
        return cached_probs(d, key, lambda: _probs_of(swag_predictor(d, device=c.device, samples=n, scale=c.scale),
                                                      seed), need=n)

    def _swa_probs(self, d: Path) -> torch.Tensor:
        from ..engine.evaluate import bn_buffers_for, predict_probs
        from .ensemble import model_and_data
        from .swag import load_swag

        def compute():
            tensors, meta = load_swag(d)
            model, data = model_and_data(meta, d, self.cfg.device)
            p0 = next(iter(model.parameters()))
            v = tensors["mean"].to(p0.device, p0.dtype)
            probs, _ = predict_probs(model, v, data.test, bufs=bn_buffers_for(model, v, data.train))
            return probs[None]

        return cached_probs(d, "swa" + BN_TAG, compute)

    def swag_run(self, s: int, b: int) -> Path:
        c = self.cfg
        pre = round(c.pretrain_fraction * c.epochs_per_budget)
        return self._swag_dir(self.pretrain(s), self.seed_dir(s) / f"swag_b{b}", b * c.epochs_per_budget - pre, s)

    def swa(self, s: int, b: int) -> torch.Tensor:
        return self._swa_probs(self.swag_run(s, b))

    def swag(self, s: int, b: int) -> torch.Tensor:
        return self._swag_samples(self.swag_run(s, b), self.cfg.samples, s)

    def multiswag(self, s: int, b: int) -> torch.Tensor:
        c = self.cfg
        sub = c.epochs_per_budget // c.members_per_budget
        sub_pre = round(c.pretrain_fraction * sub)
        m = b * c.members_per_budget
        per = math.ceil(c.samples / m)
        probs = []
        for j in range(m):
            seed = self.member_seed(s, j)
            base = self.train(self.seed_dir(s) / f"multiswag_pre_e{sub_pre}_m{j}", seed, sub_pre, "multiswag")
            d = self._swag_dir(base, self.seed_dir(s) / f"multiswag_m{j}", sub - sub_pre, seed)
            probs.append(self._swag_samples(d, per, seed))
        # stratified equal-weight mixture: the same number of samples from every member
        return torch.cat(probs)

    # the whole comparison ---------------------------------------------------------------------------------
    def run(self) -> dict:
        c = self.cfg
        self.out.mkdir(parents=True, exist_ok=True)
        config = asdict(c)
        if (self.out / "budget_config.json").exists():
            old = read_json(self.out / "budget_config.json")
            free = ("budgets", "seeds", "first_seed", "methods")
            keep = {k: v for k, v in old.items() if k not in free}
            now = {k: v for k, v in config.items() if k not in free}
            if keep != now:
                raise LowlossError(f"{self.out} holds a comparison with other settings (only --budgets, --seeds, "
                                   "--seed and --methods may change between runs); choose a new --out")
        write_json(self.out / "budget_config.json", config)
        seeds = list(range(c.first_seed, c.first_seed + c.seeds))
        tasks = [(s, b, m) for s in seeds for b in sorted(c.budgets) for m in c.methods]
        raw: dict = {m: {str(b): {} for b in c.budgets} for m in c.methods}
        bar = progress(tasks, desc="budget", quiet=self.quiet, unit="task")
        for s, b, m in bar:
            probs = getattr(self, m)(s, b)
            met = M.classification_metrics(M.ensemble_probs(probs.double()), self.labels)
            met["members"] = int(probs.shape[0])
            raw[m][str(b)][str(s)] = met
            echo(f"seed {s} budget {b} {m:<9} members {probs.shape[0]:>3}  acc {met['accuracy']:.4f}  "
                 f"nll {met['nll']:.4f}  ece {met['ece']:.4f}  brier {met['brier']:.4f}", self.quiet)
        summary = {m: {str(b): {k: _mean_std([raw[m][str(b)][str(s)][k] for s in seeds]) for k in METRICS}
                       for b in c.budgets} for m in c.methods}
        paired = {}  # method minus single on the same seed: seed-to-seed spread cancels
        if "single" in c.methods:
            paired = {m: {str(b): {k: _mean_std([raw[m][str(b)][str(s)][k] - raw["single"][str(b)][str(s)][k]
                                                 for s in seeds]) for k in ("accuracy", "nll")}
                          for b in c.budgets} for m in c.methods if m != "single"}
        result = {"config": config, "versions": versions(), "seeds": seeds, "ece_bins": M.ECE_BINS,
                  "accounting": {str(b): accounting(c, b) for b in c.budgets}, "per_seed": raw,
                  "seconds": self.timings, "summary": summary, "paired_vs_single": paired}
        write_json(self.out / "budget_details.json", result)
        write_json(self.out / "budget.json", summary)
        (self.out / "budget.md").write_text(markdown_table(summary, c, seeds, paired))
        from ..plots.budget import plot_budget

        plot_budget(summary, self.out / "budget.png", title=f"{c.data} {c.model}, mean ± std over {len(seeds)} seed{'s' if len(seeds) > 1 else ''}, "
                    f"1 budget = {c.epochs_per_budget} epochs")
        return result


def _mean_std(xs: list[float]) -> dict:
    t = torch.tensor(xs, dtype=torch.float64)
    return {"mean": t.mean().item(), "std": t.std(unbiased=True).item() if len(xs) > 1 else 0.0}


def markdown_table(summary: dict, c: BudgetConfig, seeds, paired: dict | None = None) -> str:
    lines = [f"# Equal-budget comparison: {c.data} / {c.model}", "",
             f"1 budget = {c.epochs_per_budget} epochs; mean ± std over seeds {seeds}; accuracy and NLL, ECE "
             f"({M.ECE_BINS} equal-width bins), Brier on the test set; ensembles average softmax outputs.", ""]
    paired = paired or {}
    for b in sorted({int(x) for m in summary.values() for x in m}):
        lines += [f"## Budget {b} ({b * c.epochs_per_budget} epochs)", "",
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


def read_cached_keys(directory: Path) -> list[str]:
    p = Path(directory) / PREDS
    if not p.exists():
        return []
    with safe_open(str(p), "pt") as f:
        return list(f.keys())
