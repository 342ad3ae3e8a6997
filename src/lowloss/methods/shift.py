"""Dataset-shift benchmark (Ovadia et al. 2019 on CIFAR-10-C style corruptions, METHODS.md 6).

For every method (a :class:`~lowloss.methods.predictor.Predictor`) and every corruption x severity:
accuracy, NLL, ECE and Brier of the method's mean predictive distribution, with and without temperature
scaling (T fitted once per method on clean calibration data, see :mod:`lowloss.methods.calibration`).

Work is cached: each corrupted split is made once and shared by all methods, and each method's member
logits on it are written to ``DIR/cache/<method>/<corruption>_<severity>.safetensors`` (``single`` is
member 0 of ``ensemble``, never recomputed). A rerun of the same command reuses the cache (an interrupted
benchmark resumes where it stopped); a different configuration in the same DIR is refused.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file

from .. import metrics as M
from ..corruptions import CORRUPTIONS, corrupt_split
from ..rundir import save_tensors as save_state
from ..utils import LowlossError, echo, progress, read_json, versions, write_json
from .calibration import CalibrationPlan, fit_temperature, log_mean_probs, materialise, scaled_probs
from .predictor import Predictor

METHOD_ORDER = ("single", "ensemble", "multiswa", "multiswag", "espro")
METRICS = ("accuracy", "nll", "ece", "brier")


# ----------------------------------------------------------------------------------------------- methods
def _swag_dirs(paths) -> list[Path]:
    """SWAG directories from --swag arguments (a SWAG dir, or a MultiSWAG dir listing SWAG dirs)."""
    from .swag import MULTI_FILE, SWAG_FILE, _member_path

    out = []
    for p in map(Path, paths):
        if (p / MULTI_FILE).exists():
            out.extend(_member_path(p, m) for m in read_json(p / MULTI_FILE)["members"])
        elif (p / SWAG_FILE).exists():
            out.append(p)
        else:
            raise LowlossError(f"--swag {p}: neither {SWAG_FILE} nor {MULTI_FILE} found (make one with lowloss swag)")
    return out


def swag_methods(paths, samples: int, generator: torch.Generator, device=None) -> dict[str, Predictor]:
    """MultiSWA (the ensemble of the SWAG means, one per directory) and MultiSWAG (`samples` draws in all,
    spread evenly over the directories), both with BN recomputed per member."""
    from .swag import load_swag, swag_predictor

    dirs = _swag_dirs(paths)
    per = max(1, -(-samples // len(dirs)))
    means, draws, model, data = [], [], None, None
    for d in dirs:
        pred = swag_predictor(d, device=device, samples=per)
        model, data = pred.model, pred.data
        tensors, _ = load_swag(d)
        p0 = next(iter(model.parameters()))
        means.append((tensors["mean"].to(device=p0.device, dtype=p0.dtype), None))
        draws.extend(pred.members(generator))
    return {"multiswa": Predictor(model, data, fixed=means, name=f"multiswa ({len(dirs)} SWAG means)"),
            "multiswag": Predictor(model, data, fixed=draws[:max(samples, len(dirs))],
                                   name=f"multiswag ({len(dirs)} x {per} samples)")}


def espro_method(paths, samples: int, device=None) -> Predictor:
    """ESPRO from --espro directories (an espro dir with simplex_<i>/, or single simplex dirs): `samples`
    members per simplex."""
    from .predictor import load_predictor
    from .spro import SIMPLEX_FILE

    for p in map(Path, paths):
        if not ((p / "espro.json").exists() or (p / SIMPLEX_FILE).exists()):
            raise LowlossError(f"--espro {p}: neither espro.json nor {SIMPLEX_FILE} found (make one with lowloss espro "
                               "or lowloss simplex)")
    preds = [load_predictor(p, device=device, members=samples) for p in paths]
    if len(preds) == 1:
        return preds[0]
    def sampler(n, generator):
        for p in preds:
            yield from p.sampler(p.num_samples, generator)

    return Predictor(preds[0].model, preds[0].data, sampler=sampler, num_samples=sum(p.num_samples for p in preds),
                     name=f"espro ({len(preds)} dirs)")


# ----------------------------------------------------------------------------------------------- cache
class LogitCache:
    """Member logits per (method, key) under DIR/cache, written atomically."""

    def __init__(self, root: Path):
        self.root = Path(root)

    def path(self, method: str, key: str) -> Path:
        return self.root / method / f"{key}.safetensors"

    def get(self, method: str, key: str):
        p = self.path(method, key)
        if not p.exists():
            return None
        t = load_file(str(p))
        return t["logits"], t["labels"]

    def put(self, method: str, key: str, logits: torch.Tensor, labels: torch.Tensor) -> None:
        save_state(self.path(method, key), {"logits": logits.float(), "labels": labels.long()})


def _metrics(logits: torch.Tensor, y: torch.Tensor, t: float = 1.0) -> dict:
    p = scaled_probs(log_mean_probs(logits), t)
    return {k: v for k, v in M.classification_metrics(p, y).items() if k in METRICS}


# ----------------------------------------------------------------------------------------------- benchmark
def run_shift(methods: dict[str, Predictor], data, corruptions, severities, out, *, plan: CalibrationPlan,
              config: dict, seed: int = 0, quiet: bool = False) -> dict:
    """The benchmark. `methods` maps names (METHOD_ORDER; "single" may be omitted: it is member 0 of
    "ensemble") to predictors on `data`. Writes DIR/shift.json and returns it."""
    out = Path(out)
    cache = LogitCache(out / "cache")
    cfg_path = out / "cache" / "config.json"
    if cfg_path.exists() and read_json(cfg_path) != config:
        raise LowlossError(f"{out} holds a shift benchmark with another configuration (runs, methods, split, "
                           "samples or seed); choose a new --out")
    write_json(cfg_path, config)
    gen = torch.Generator().manual_seed(seed)
    fixed = {}
    for name, pred in methods.items():
        fixed[name] = materialise(pred, gen, quiet=quiet) if pred.sampler is not None else pred

    def logits_for(name, key, split):
        got = cache.get(name, key)
        if got is None:
            got = fixed[name].member_logits(split)
            cache.put(name, key, *got)
        return got

    names = list(fixed)
    derived = {"single": "ensemble"} if "ensemble" in fixed and "single" not in fixed else {}
    all_names = [n for n in METHOD_ORDER if n in names or n in derived] + [n for n in names if n not in METHOD_ORDER]

    def view(name, logits):
        return logits[:1] if name in derived else logits

    # temperatures from clean calibration data; clean evaluation numbers
    temps, notes, clean, clean_ts, members = {}, {}, {}, {}, {}
    for name in all_names:
        src = derived.get(name, name)
        lc, yc = logits_for(src, "clean_calibration", plan.calib)
        le, ye = logits_for(src, "clean_eval", plan.eval)
        lc, le = view(name, lc), view(name, le)
        temps[name], note = fit_temperature(log_mean_probs(lc), yc)
        if note:
            notes[name] = note
            echo(f"{name}: {note}", quiet)
        clean[name] = _metrics(le, ye)
        clean_ts[name] = _metrics(le, ye, temps[name])
        members[name] = int(le.shape[0])

    result: dict = {name: {} for name in all_names}
    result["temperature_scaled"] = {name: {} for name in all_names}
    jobs = [(c, s) for c in corruptions for s in severities]
    bar = progress(jobs, desc="shift", quiet=quiet, unit="setting")
    for c, s in bar:
        key = f"{c}_{s}"
        todo = [n for n in names if not cache.path(n, key).exists()]
        split = corrupt_split(plan.eval, data, c, s, seed=seed) if todo else None
        for name in all_names:
            src = derived.get(name, name)
            lg, y = logits_for(src, key, split)
            lg = view(name, lg)
            result[name].setdefault(c, {})[str(s)] = _metrics(lg, y)
            result["temperature_scaled"][name].setdefault(c, {})[str(s)] = _metrics(lg, y, temps[name])
    result["clean"] = {**clean, "temperature_scaled": clean_ts}
    result["info"] = {"methods": all_names, "members": members, "temperatures": temps, "temperature_notes": notes,
                      "corruptions": list(corruptions), "severities": list(severities), "seed": seed,
                      "calibration": plan.info, "data": data.describe(), "config": config, "versions": versions(),
                      "layout": "shift.json[method][corruption][severity] = {accuracy, nll, ece, brier}; the same "
                                "under 'temperature_scaled'; clean (uncorrupted evaluation half) under 'clean'"}
    write_json(out / "shift.json", result)
    echo(f"wrote {out / 'shift.json'}", quiet)
    return result


def summary(result: dict, metric: str = "nll", temperature_scaled: bool = False) -> dict:
    """{method: {severity: mean over corruptions of `metric`}}."""
    src = result["temperature_scaled"] if temperature_scaled else result
    out = {}
    for name in result["info"]["methods"]:
        by_sev: dict = {}
        for sevs in src[name].values():
            for s, m in sevs.items():
                by_sev.setdefault(s, []).append(m[metric])
        out[name] = {s: sum(v) / len(v) for s, v in sorted(by_sev.items())}
    return out


__all__ = ["CORRUPTIONS", "METHOD_ORDER", "run_shift", "summary", "swag_methods", "espro_method", "LogitCache"]
