"""Temperature scaling of runs and ensembles: T, accuracy, NLL, ECE and Brier before and after, reliability.

Every RUN is opened as a predictor (a trained network, FGE/SSE snapshots, SWAG / MultiSWAG, a simplex, ESPRO,
a variational network); with several trained networks their deep ensemble is added. One scalar T > 0 is
fitted per predictor by minimising the NLL of softmax(log p / T) on held-out data (Guo et al. 2017), where
log p is the log of the predictor's mean probabilities: for a single network this equals softmax(logits / T)
(log-softmax differs from the logits by a per-example constant); for an ensemble it is the ensemble's log of
mean probabilities.

Which held-out data? ``lowloss train`` trains on *all* of the train split, so a validation split carved
from train holds examples the networks were fitted on: their NLL there is near zero and the fitted T is
too small (sharpening, the wrong direction). The default is therefore ``test-half``: the test split is
divided once, stratified by class with a fixed seed, into a *calibration half* (T is fitted there) and an
*evaluation half* (every number "before/after" is measured there, never on data T saw). ``train`` (carve
--val-size examples from the train split) is available for models trained without those examples; with
lowloss runs it is in-sample and the record says so. When every calibration example is classified
correctly T is not identifiable and T = 1 is kept, with a note.

Writes OUT/run.json (per predictor: T, accuracy, NLL, ECE, Brier before and after, on the evaluation data
and on the fitting data, and the per-bin reliability) and OUT/reliability.png.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .. import metrics as M
from ..config import option, replace, require
from ..rundir import RunDir, read_result, run_method
from ..utils import LowlossError, echo
from .predictor import LOADERS, Predictor, ensemble_predictor, load_predictor

VAL_SOURCES = ("test-half", "train")
INPUTS = {"metavar": "RUN...", "nargs": -1}


@dataclass
class HeldOut:
    """Where the temperature is fitted (the options calibrate and shift share)."""

    val_source: str = option("test-half", "Where T is fitted. test-half: a fixed stratified half of the test split "
                                          "(metrics on the other half); train: part of the train split (in-sample "
                                          "for lowloss runs, which train on all of it).", choices=VAL_SOURCES)
    val_size: int | None = option(None, "Examples used to fit T (default: half the test split, or 10% of train).")
    val_seed: int = option(0, "Seed of the calibration split.")

    def check(self) -> None:
        require(self.val_source in VAL_SOURCES,
                f"--val-source {self.val_source!r}: choose one of {', '.join(VAL_SOURCES)}")
        require(self.val_size is None or self.val_size >= 1, f"--val-size must be >= 1 (got {self.val_size})")


@dataclass
class Config(HeldOut):
    """Temperature scaling of predictors."""

    samples: int = option(30, "Members drawn from sampled predictors (SWAG: samples, simplex/ESPRO: per simplex).")
    ensemble: bool = option(True, "With several trained networks among the RUNs, add their deep ensemble.")
    seed: int = 0
    device: str = "auto"

    def check(self) -> None:
        super().check()
        require(self.samples >= 1, f"--samples must be >= 1 (got {self.samples})")


# ----------------------------------------------------------------------------------------------- splits
def split_labels(split) -> torch.Tensor:
    """The labels of a split (a resident tensor, a dataset's `targets`, or one pass over it)."""
    if hasattr(split, "y"):
        return split.y.detach().cpu()
    ds = getattr(split, "dataset", None)
    if ds is not None and hasattr(ds, "targets"):
        return torch.as_tensor(ds.targets)
    return torch.cat([y.cpu() for _, y in split.batches(1024)])


def take(split, idx: np.ndarray):
    """The examples `idx` of a split, as a split of the same kind."""
    from ..data import LoaderSplit, TensorSplit

    if isinstance(split, TensorSplit):
        i = torch.as_tensor(idx, dtype=torch.long, device=split.x.device)
        return TensorSplit(split.x[i], split.y[i])
    if isinstance(split, LoaderSplit):
        return LoaderSplit(torch.utils.data.Subset(split.dataset, [int(j) for j in idx]), num_workers=split.num_workers)
    raise LowlossError(f"cannot take a subset of a {type(split).__name__}")


@dataclass
class CalibrationPlan:
    """Where temperature is fitted (`calib`) and where everything is measured (`eval`)."""

    calib: object
    eval: object
    info: dict = field(default_factory=dict)


def calibration_plan(data, held_out: HeldOut | None = None, **overrides) -> CalibrationPlan:
    """Carve the calibration data (`held_out`: a :class:`HeldOut` or a method Config built on it; `overrides`
    change its fields). `test-half`: a stratified half (or --val-size examples) of the test split, seed
    --val-seed; the rest of the test split is the evaluation set. `train`: --val-size stratified examples of the
    train split (default 10%), the evaluation set is the whole test split (in-sample for lowloss runs: recorded
    in `info`)."""
    held_out = replace(held_out or HeldOut(), **overrides)
    held_out.check()
    source, size, seed = held_out.val_source, held_out.val_size, held_out.val_seed
    from ..data import stratified_split

    if source == "test-half":
        y = split_labels(data.test).numpy()
        n_cal = size if size is not None else len(y) // 2
        if not 0 < n_cal < len(y):
            raise LowlossError(f"--val-size {n_cal} must be between 1 and {len(y) - 1} (the test split has {len(y)})")
        ev_idx, cal_idx = stratified_split(y, n_cal, seed)
        info = {"source": source, "seed": seed, "calibration_size": int(len(cal_idx)), "eval_size": int(len(ev_idx)),
                "note": "temperature fitted on a stratified part of the test split; all metrics are on the "
                        "disjoint rest of the test split"}
        return CalibrationPlan(take(data.test, cal_idx), take(data.test, ev_idx), info)
    y = split_labels(data.train).numpy()
    n_cal = size if size is not None else max(1, len(y) // 10)
    if not 0 < n_cal < len(y):
        raise LowlossError(f"--val-size {n_cal} must be between 1 and {len(y) - 1} (the train split has {len(y)})")
    _, cal_idx = stratified_split(y, n_cal, seed)
    info = {"source": source, "seed": seed, "calibration_size": int(len(cal_idx)), "eval_size": len(data.test),
            "note": "temperature fitted on a stratified part of the TRAIN split; lowloss runs train on all of "
                    "train, so this is in-sample (the fitted T is biased low); metrics are on the test split"}
    return CalibrationPlan(take(data.train, cal_idx), data.test, info)


# ----------------------------------------------------------------------------------------------- members
def materialise(pred: Predictor, generator: torch.Generator | None = None, bn_subset: int | None = None,
                quiet: bool = True) -> Predictor:
    """A copy of `pred` with a fixed list of members, BN buffers computed once per member.

    Sampled predictors (SWAG, simplexes) draw their samples here, once: every later split (calibration,
    evaluation, each corruption) then sees the same members and no member's BN statistics are recomputed.
    """
    from ..engine.evaluate import bn_buffers_for
    from ..params import has_batchnorm
    from ..utils import progress

    gen = generator if generator is not None else torch.Generator().manual_seed(0)
    bn = has_batchnorm(pred.model)
    fixed = []
    for vector, bufs in progress(pred.members(gen), total=len(pred), desc=f"members {pred.name}", quiet=quiet,
                                 unit="net"):
        if bufs is None and bn:
            bufs = bn_buffers_for(pred.model, vector, pred.data.train, bn_subset=bn_subset)
        fixed.append((vector.detach(), bufs))
    return Predictor(pred.model, pred.data, fixed=fixed, name=pred.name, info=dict(pred.info))


def log_mean_probs(member_logits: torch.Tensor) -> torch.Tensor:
    """log of the members' mean softmax, [M, N, C] -> [N, C] (float64): the ensemble's 'logits'."""
    lp = torch.log_softmax(member_logits.double(), -1)
    return torch.logsumexp(lp, 0) - math.log(lp.shape[0])


def scaled_probs(logp: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    return torch.softmax(logp.double() / temperature, -1)


# ----------------------------------------------------------------------------------------------- scaling
T_BOUNDS = (0.05, 20.0)


def fit_temperature(logp: torch.Tensor, labels: torch.Tensor) -> tuple[float, str | None]:
    """T minimising the NLL of softmax(logp / T) (:func:`lowloss.metrics.fit_temperature`), and a note.

    When every fitting example is classified correctly the NLL keeps falling as T -> 0: T is not
    identifiable, and a tiny T would be ruinous on new data. Then T = 1 (no scaling) is returned with a note.
    Otherwise T is clipped to T_BOUNDS (0.05 .. 20; a note says so when it is).
    """
    y = labels.long().cpu()
    if bool((logp.argmax(-1).cpu() == y).all()):
        return 1.0, (f"all {len(y)} calibration examples are classified correctly: the NLL falls without bound "
                     "as T -> 0, so T is not identifiable; kept T = 1 (use more calibration data)")
    t = M.fit_temperature(logp, y)
    lo, hi = T_BOUNDS
    if not lo <= t <= hi:
        return min(max(t, lo), hi), f"fitted T = {t:.4g} clipped to [{lo}, {hi}]"
    return t, None


def calibrate_logits(logp_cal: torch.Tensor, y_cal: torch.Tensor, logp_eval: torch.Tensor, y_eval: torch.Tensor,
                     reliability: bool = True) -> dict:
    """Fit T on (logp_cal, y_cal); metrics before/after on the evaluation data and on the fitting data."""
    t, note = fit_temperature(logp_cal, y_cal)
    p0, p1 = scaled_probs(logp_eval), scaled_probs(logp_eval, t)
    out = {"temperature": t, "note": note,
           "before": M.classification_metrics(p0, y_eval), "after": M.classification_metrics(p1, y_eval),
           "fit_data": {"before": M.classification_metrics(scaled_probs(logp_cal), y_cal),
                        "after": M.classification_metrics(scaled_probs(logp_cal, t), y_cal)}}
    if reliability:
        out["reliability"] = {"before": M.reliability(p0, y_eval), "after": M.reliability(p1, y_eval)}
    return out


def calibrate_predictor(pred: Predictor, plan: CalibrationPlan, generator: torch.Generator | None = None,
                        quiet: bool = True) -> dict:
    """Temperature scaling of one predictor (its members' log of mean probabilities) under `plan`."""
    fixed = materialise(pred, generator, quiet=quiet) if pred.sampler is not None else pred
    lc, yc = fixed.member_logits(plan.calib)
    le, ye = fixed.member_logits(plan.eval)
    if lc.shape[-1] < 2:
        raise LowlossError(f"{pred.name} is not a classifier (output size {lc.shape[-1]}); temperature scaling "
                           "needs class probabilities")
    res = calibrate_logits(log_mean_probs(lc), yc, log_mean_probs(le), ye)
    res["members"] = int(lc.shape[0])
    return res


# ----------------------------------------------------------------------------------------------- the method
def unique_names(paths) -> list[str]:
    """The directory names of `paths`, made unique with #2, #3, ... (the predictors' names)."""
    seen: dict[str, int] = {}
    out = []
    for p in paths:
        n = Path(p).name or str(p)
        seen[n] = seen.get(n, 0) + 1
        out.append(n if seen[n] == 1 else f"{n}#{seen[n]}")
    return out


def holds_one_network(path) -> bool:
    """Whether `path` is a run that opens as one trained network (``train``, ``swa``): deep-ensemble material."""
    return LOADERS.get(read_result(path).get("method", "")) == LOADERS["train"]


def same_data(preds: dict[str, Predictor]) -> None:
    """A one-line error unless every predictor uses the same data and test split as the first."""
    first = next(iter(preds.values()))
    for name, pr in preds.items():
        if pr.data.name != first.data.name or len(pr.data.test) != len(first.data.test):
            raise LowlossError(f"{name} uses data {pr.data.name} ({len(pr.data.test)} test examples), unlike "
                               f"{first.data.name} ({len(first.data.test)}); all of them need the same data and "
                               "split")


def fit(config: Config, inputs, run_dir: RunDir, *, quiet: bool = False) -> dict:
    """Fit and measure the temperature of every predictor; returns run.json's contents."""
    paths = [str(p) for p in inputs]
    require(len(paths) >= 1, "give at least one run directory")
    preds = {name: load_predictor(p, device=config.device, samples=config.samples, members=config.samples)
             for name, p in zip(unique_names(paths), paths)}
    plain = [p for p in paths if holds_one_network(p)]
    if len(plain) > 1 and config.ensemble:
        try:
            preds[f"ensemble of {len(plain)}"] = ensemble_predictor(plain, device=config.device)
        except LowlossError as e:  # different architectures cannot share one module
            echo(f"no deep ensemble of the runs: {e}", quiet)
    same_data(preds)
    first = next(iter(preds.values()))
    plan = calibration_plan(first.data, config)
    results = {}
    for name, pr in preds.items():
        results[name] = calibrate_predictor(pr, plan, torch.Generator().manual_seed(config.seed), quiet=quiet)
    return run_dir.finish({"paths": paths, "calibration": plan.info, "seed": config.seed, "samples": config.samples,
                           "data": first.data.describe(), "results": results})


def summary(result: dict) -> str:
    lines = [f"T fitted on {result['calibration']['calibration_size']} examples ({result['calibration']['source']}), "
             f"measured on {result['calibration']['eval_size']}"]
    for name, r in result["results"].items():
        b, a = r["before"], r["after"]
        lines.append(f"  {name}: T={r['temperature']:.3f}  acc {b['accuracy']:.4f}  nll {b['nll']:.4f}->{a['nll']:.4f}  "
                     f"ece {b['ece']:.4f}->{a['ece']:.4f}  brier {b['brier']:.4f}->{a['brier']:.4f}")
        if r["note"]:
            lines.append(f"    note: {r['note']}")
    return "\n".join(lines)


def load(path: str | Path, device=None) -> dict:
    """The calibration results of a finished run: {predictor name: {temperature, before, after, ...}} under
    ``results``, the split under ``calibration`` (run.json's contents)."""
    return read_result(path, "calibrate")


def calibrate(inputs, config: Config | None = None, out: str | Path = "runs/calibrate", *, resume: bool = False,
              quiet: bool = False, **overrides) -> dict:
    """Python API: ``calibrate(["runs/m0", "runs/m1"], out="runs/cal", val_source="train")``."""
    return run_method(sys.modules[__name__], replace(config or Config(), **overrides), list(inputs), out,
                      resume=resume, quiet=quiet)


__all__ = ["Config", "HeldOut", "INPUTS", "CalibrationPlan", "T_BOUNDS", "VAL_SOURCES", "calibrate",
           "calibrate_logits", "calibrate_predictor", "calibration_plan", "fit", "fit_temperature", "load",
           "log_mean_probs", "materialise", "scaled_probs", "summary"]
