"""Temperature scaling and reliability of any :class:`~lowloss.methods.predictor.Predictor` (METHODS.md 6).

One scalar T > 0 is fitted by minimising the NLL of softmax(log p / T) on held-out data (Guo et al. 2017),
where log p is the log of the predictor's mean probabilities: for a single network this equals
softmax(logits / T) (log-softmax differs from the logits by a per-example constant); for an ensemble it is
the ensemble's log of mean probabilities, as METHODS.md asks.

Which held-out data? ``lowloss train`` trains on *all* of the train split, so a validation split carved
from train holds examples the networks were fitted on: their NLL there is near zero and the fitted T is
too small (sharpening, the wrong direction). The default is therefore ``test-half``: the test split is
divided once, stratified by class with a fixed seed, into a *calibration half* (T is fitted there) and an
*evaluation half* (every number "before/after" is measured there, never on data T saw). ``train`` (carve
`size` examples from the train split) is available for models trained without those examples; with lowloss
runs it is in-sample and the record says so.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from .. import metrics as M
from ..utils import LowlossError
from .predictor import Predictor

VAL_SOURCES = ("test-half", "train")


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


def calibration_plan(data, source: str = "test-half", size: int | None = None, seed: int = 0) -> CalibrationPlan:
    """Carve the calibration data. `test-half`: a stratified half of the test split (seed `seed`), the other
    half is the evaluation set. `train`: `size` stratified examples of the train split (default 10%), the
    evaluation set is the whole test split (in-sample for lowloss runs: recorded in `info`)."""
    from ..data import stratified_split

    if source not in VAL_SOURCES:
        raise LowlossError(f"--val-source {source!r}: choose one of {', '.join(VAL_SOURCES)}")
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
