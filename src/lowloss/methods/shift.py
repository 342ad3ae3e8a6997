"""Dataset-shift benchmark (Ovadia et al. 2019: CIFAR-10-C style corruptions and rotations of images; for
MNIST-1D the generator's noise, shear, scale and translation turned up) of ensembles of RUN...

Methods: single (one RUN), ensemble (all RUNs, when there are several), multiswa / multiswag (--swag:
the ensemble of the SWAG means, and --samples draws in all spread over the SWAG posteriors), espro
(--espro: --samples draws from each simplex). For every method and every corruption x severity:
accuracy, NLL, ECE and Brier of the method's mean predictive distribution, with and without temperature
scaling (T fitted once per method on clean calibration data, see `lowloss calibrate`).

Writes OUT/run.json ({method: {corruption: {severity: {accuracy, nll, ece, brier}}}}, the same under
"temperature_scaled", clean numbers under "clean", the setting under "info"), OUT/shift.png (box plots over
corruptions per severity), OUT/corruptions.png (one test image under every corruption, from
OUT/gallery.safetensors). Each corrupted split is made once and shared by all methods; each method's
member logits on it are kept in OUT/cache/<method>/<corruption>_<severity>.safetensors (single is member
0 of ensemble, never recomputed), so an interrupted benchmark continues with --resume where it stopped.

With --executor ray every corruption x severity not in the cache is a task on a Ray cluster (the methods'
predictors and the data are shipped once through the object store; each task makes the corrupted split and
returns every method's member logits, which this process caches and scores): the numbers are those of a local
run at the same torch thread count.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from .. import metrics as M
from ..config import option, replace, require
from ..corruptions import (
    CORRUPTIONS,
    SIGNAL_SHIFTS,
    corrupt_pixels,
    is_signal,
    parse_corruptions,
    parse_severities,
    pixel_stats,
    shift_names,
    shift_split,
)
from ..engine.executor import EXECUTORS, Executor, make_executor
from ..errors import LowlossError
from ..rundir import RunDir, load_tensors, read_result, run_method, save_tensors
from ..utils import echo, progress
from . import swag
from .calibrate import (
    CalibrationPlan,
    HeldOut,
    calibration_plan,
    fit_temperature,
    log_mean_probs,
    materialise,
    same_data,
    scaled_probs,
)
from .predictor import Predictor, ensemble_predictor, load_predictor, run_predictor

INPUTS = {"metavar": "RUN...", "nargs": -1}
METHOD_ORDER = ("single", "ensemble", "multiswa", "multiswag", "espro")
METRICS = ("accuracy", "nll", "ece", "brier")
GALLERY_FILE = "gallery.safetensors"
CACHE_DIR = "cache"


@dataclass
class Config(HeldOut):
    """The shift benchmark: which methods, which corruptions, where T is fitted."""

    swag: tuple[str, ...] = option((), "SWAG or MultiSWAG run (lowloss swag), repeatable: adds multiswa (the SWAG "
                                       "means) and multiswag (samples).", multiple=True, metavar="DIR")
    espro: tuple[str, ...] = option((), "ESPRO run (lowloss espro) or simplex run (lowloss simplex), repeatable: "
                                        "adds espro.", multiple=True, metavar="DIR")
    corruptions: str = option("all", "'all' (every corruption that fits the images: saturate needs colour; for "
                                     "MNIST-1D every generator shift: noise, shear, scale, translation) or "
                                     "names, comma-separated.")
    severities: str = option("1-5", "Severities: 1-5, 3 or 1,3,5.")
    samples: int = option(30, "MultiSWAG samples in all; ESPRO samples per simplex.")
    seed: int = 0
    device: str = "auto"
    executor: str = option("local", choices=EXECUTORS)
    ray_address: str | None = None

    def check(self) -> None:
        super().check()
        self.swag = (self.swag,) if isinstance(self.swag, str) else tuple(str(p) for p in self.swag)
        self.espro = (self.espro,) if isinstance(self.espro, str) else tuple(str(p) for p in self.espro)
        if self.corruptions.strip().lower() != "all":
            names = [n.strip().replace("-", "_") for n in self.corruptions.split(",") if n.strip()]
            if not all(n in SIGNAL_SHIFTS for n in names):
                parse_corruptions(self.corruptions)
        parse_severities(self.severities)
        require(self.samples >= 1, f"--samples must be >= 1 (got {self.samples})")
        require(self.executor in EXECUTORS, f"--executor must be one of {', '.join(EXECUTORS)} (got '{self.executor}')")
        for flag, paths in (("--swag", self.swag), ("--espro", self.espro)):
            for p in paths:
                require(Path(p).is_dir(), f"{flag} {p} is not a directory")


# ----------------------------------------------------------------------------------------------- methods
def swag_posteriors(paths) -> list[Path]:
    """The SWAG posteriors of --swag runs: a SWAG run is one, a MultiSWAG run holds one per member."""
    out = []
    for p in map(Path, paths):
        info = read_result(p, "swag")
        if info.get("kind") == "multiswag":
            out.extend(p / m for m in info["members"])
        else:
            out.append(p)
    return out


def swag_methods(paths, samples: int, generator: torch.Generator, device=None) -> dict[str, Predictor]:
    """MultiSWA (the ensemble of the SWAG means, one per posterior) and MultiSWAG (`samples` draws in all,
    spread evenly over the posteriors, drawn posterior by posterior), both with BN recomputed per member."""
    dirs = swag_posteriors(paths)
    per = max(1, -(-samples // len(dirs)))
    means, draws, model, data = [], [], None, None
    for d in dirs:
        pred = swag.load(d, device=device, samples=per)
        model, data = pred.model, pred.data
        p0 = next(iter(model.parameters()))
        means.append((pred.info["means"][0].to(device=p0.device, dtype=p0.dtype), None))
        draws.extend(pred.members(generator))
    return {"multiswa": Predictor(model, data, fixed=means, name=f"multiswa ({len(dirs)} SWAG means)"),
            "multiswag": Predictor(model, data, fixed=draws[:max(samples, len(dirs))],
                                   name=f"multiswag ({len(dirs)} x {per} samples)")}


def espro_method(paths, samples: int, device=None) -> Predictor:
    """ESPRO from --espro runs (an espro run with its simplexes, or single simplex runs): `samples` members
    per simplex."""
    for p in paths:
        read_result(p, ("espro", "simplex"))
    preds = [load_predictor(p, device=device, members=samples) for p in paths]
    if len(preds) == 1:
        return preds[0]

    def sampler(n, generator):
        for p in preds:
            yield from p.sampler(p.num_samples, generator)

    return Predictor(preds[0].model, preds[0].data, sampler=sampler, num_samples=sum(p.num_samples for p in preds),
                     name=f"espro ({len(preds)} runs)")


# ----------------------------------------------------------------------------------------------- cache
class LogitCache:
    """Member logits per (method, key) under a directory, written atomically in their own dtype (a cached
    logit equals the computed one), or no cache (None)."""

    def __init__(self, root: Path | None):
        self.root = Path(root) if root is not None else None

    def path(self, method: str, key: str) -> Path | None:
        return self.root / method / f"{key}.safetensors" if self.root is not None else None

    def has(self, method: str, key: str) -> bool:
        return self.root is not None and self.path(method, key).exists()

    def get(self, method: str, key: str):
        """The cached (logits, labels), or None when absent or damaged (a damaged entry is recomputed)."""
        if not self.has(method, key):
            return None
        try:
            t, _ = load_tensors(self.path(method, key))
            return t["logits"], t["labels"]
        except (LowlossError, KeyError):
            self.path(method, key).unlink(missing_ok=True)
            return None

    def put(self, method: str, key: str, logits: torch.Tensor, labels: torch.Tensor) -> None:
        if self.root is not None:
            save_tensors(self.path(method, key), {"logits": logits, "labels": labels.long()})


def _metrics(logits: torch.Tensor, y: torch.Tensor, t: float = 1.0) -> dict:
    p = scaled_probs(log_mean_probs(logits), t)
    return {k: v for k, v in M.classification_metrics(p, y).items() if k in METRICS}


# ----------------------------------------------------------------------------------------------- benchmark
def _shifted_logits(fixed: dict, data, eval_split, job: tuple) -> dict:
    """What one task of the benchmark computes: the member logits of the methods `names` on one corrupted split."""
    c, s, names, seed = job
    split = shift_split(eval_split, data, c, s, seed=seed)
    return {n: fixed[n].member_logits(split) for n in names}


def run_shift(methods: dict[str, Predictor], data, corruptions, severities, cache: str | Path | None = None, *,
              plan: CalibrationPlan, seed: int = 0, quiet: bool = False, executor: Executor | None = None) -> dict:
    """The benchmark. `methods` maps names (METHOD_ORDER; "single" may be omitted: it is member 0 of
    "ensemble") to predictors on `data`; member logits are cached under `cache` (and read from there when
    present). Through a remote `executor` the corrupted settings' logits are computed as one task per
    corruption x severity. Returns the result (see the module docstring)."""
    cache = LogitCache(cache)
    gen = torch.Generator().manual_seed(seed)
    fixed = {}
    for name, pred in methods.items():
        fixed[name] = materialise(pred, gen, quiet=quiet) if pred.sampler is not None else pred

    shipped: dict = {}  # (method, key) -> logits computed by a remote task (with no cache to hold them)

    def logits_for(name, key, split):
        if (name, key) in shipped:
            return shipped.pop((name, key))
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
    per_member: dict = {}
    jobs = [(c, s) for c in corruptions for s in severities]
    if executor is not None and executor.name != "local":
        todo_jobs = [(c, s, [n for n in names if not cache.has(n, f"{c}_{s}")], seed) for c, s in jobs]
        todo_jobs = [j for j in todo_jobs if j[2]]
        shared = tuple(executor.share(x) for x in ({n: fixed[n] for n in names}, data, plan.eval))
        with progress(total=len(todo_jobs), desc="shift (ray)", quiet=quiet, unit="setting") as bar:
            for k, got in executor.map(_shifted_logits, todo_jobs, shared=shared, label="shift setting"):
                c, s = todo_jobs[k][:2]
                for n, (lg, y) in got.items():
                    cache.put(n, f"{c}_{s}", lg, y)
                    if cache.root is None:
                        shipped[(n, f"{c}_{s}")] = (lg, y)
                bar.update(1)
    for c, s in progress(jobs, desc="shift", quiet=quiet, unit="setting"):
        key = f"{c}_{s}"
        todo = [n for n in names if not cache.has(n, key)]
        split = shift_split(plan.eval, data, c, s, seed=seed) if todo else None
        for name in all_names:
            src = derived.get(name, name)
            lg, y = logits_for(src, key, split)
            lg = view(name, lg)
            result[name].setdefault(c, {})[str(s)] = _metrics(lg, y)
            result["temperature_scaled"][name].setdefault(c, {})[str(s)] = _metrics(lg, y, temps[name])
            if name == "ensemble":  # every member on its own: the seed spread of "single"
                per_member.setdefault(c, {})[str(s)] = [_metrics(lg[i:i + 1], y) for i in range(lg.shape[0])]
    result["clean"] = {**clean, "temperature_scaled": clean_ts}
    if per_member:
        le, ye = logits_for("ensemble", "clean_eval", plan.eval)
        result["members"] = {"clean": [_metrics(le[i:i + 1], ye) for i in range(le.shape[0])], **per_member}
    result["info"] = {"methods": all_names, "members": members, "temperatures": temps, "temperature_notes": notes,
                      "corruptions": list(corruptions), "severities": list(severities), "seed": seed,
                      "calibration": plan.info, "data": data.describe(),
                      "layout": "[method][corruption][severity] = {accuracy, nll, ece, brier}; the same under "
                                "'temperature_scaled'; clean (uncorrupted evaluation half) under 'clean'; "
                                "each member of 'ensemble' alone under members[corruption][severity] (a list) "
                                "and members['clean']"}
    return result


def gallery(data, corruptions, seed: int = 0) -> dict[str, torch.Tensor] | None:
    """The first test image ("clean", [C, H, W] in [0, 1]) and it under every corruption at severities 1-5
    ("<corruption>/<severity>"); None when the test split is not held in memory."""
    if not hasattr(data.test, "x") or is_signal(data):
        return None
    mean, std = pixel_stats(data)
    x0 = (data.test.x[:1].cpu().double() * std + mean).clamp(0, 1)
    out = {"clean": x0[0]}
    for c in corruptions:
        for s in range(1, 6):
            out[f"{c}/{s}"] = corrupt_pixels(x0, c, s, seed=seed)[0]
    return out


def fit(config: Config, inputs, run_dir: RunDir, *, quiet: bool = False) -> dict:
    """Run the benchmark (resuming from the cached logits); returns run.json's contents."""
    runs = [str(r) for r in inputs]
    require(len(runs) >= 1, "give at least one run directory")
    device = config.device
    severities = parse_severities(config.severities)
    methods = {}
    if len(runs) > 1:
        methods["ensemble"] = ensemble_predictor(runs, device=device)
    else:
        methods["single"] = run_predictor(runs[0], device=device)
    data = next(iter(methods.values())).data
    names = shift_names(config.corruptions, data)
    gen = torch.Generator().manual_seed(config.seed)
    if config.swag:
        methods.update(swag_methods(config.swag, config.samples, gen, device=device))
    if config.espro:
        methods["espro"] = espro_method(config.espro, config.samples, device=device)
    same_data(methods)
    plan = calibration_plan(data, config)
    executor = make_executor(config.executor, config.ray_address, device=device)
    result = run_shift(methods, data, names, severities, run_dir.file(CACHE_DIR), plan=plan, seed=config.seed,
                       quiet=quiet, executor=executor)
    images = gallery(data, names, seed=config.seed)
    if images is not None:
        run_dir.save_tensors(GALLERY_FILE, images)
        result["info"]["gallery"] = GALLERY_FILE
    return run_dir.finish(result)


def mean_over_corruptions(result: dict, metric: str = "nll", temperature_scaled: bool = False) -> dict:
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


def summary(result: dict) -> str:
    lines = []
    for scaled in (False, True):
        table = mean_over_corruptions(result, "nll", temperature_scaled=scaled)
        lines.append(f"mean NLL over corruptions{' (temperature scaled)' if scaled else ''}:")
        lines.append("  " + " " * 10 + "".join(f"{'sev ' + k:>9}" for k in next(iter(table.values()))))
        lines.extend(f"  {name:<10}" + "".join(f"{v:>9.4f}" for v in row.values()) for name, row in table.items())
    return "\n".join(lines)


def load(path: str | Path, device=None) -> dict:
    """The benchmark's numbers (run.json's contents; see the module docstring for the layout)."""
    return read_result(path, "shift")


def shift(inputs, config: Config | None = None, out: str | Path = "runs/shift", *, resume: bool = False,
          quiet: bool = False, **overrides) -> dict:
    """Python API: ``shift(["runs/m0", "runs/m1"], out="runs/shift", corruptions="gaussian_noise")``."""
    return run_method(sys.modules[__name__], replace(config or Config(), **overrides), list(inputs), out,
                      resume=resume, quiet=quiet)


__all__ = ["CORRUPTIONS", "Config", "INPUTS", "LogitCache", "METHOD_ORDER", "espro_method", "fit", "gallery", "load",
           "mean_over_corruptions", "run_shift", "shift", "summary", "swag_methods", "swag_posteriors"]
