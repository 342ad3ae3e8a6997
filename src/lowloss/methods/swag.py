"""SWAG (Maddox et al. 2019): a Gaussian posterior from the SGD iterates after RUN; MultiSWAG (Wilson &
Izmailov 2020) when several RUNS are given; SWAG over a trained curve's bends (Benton et al.) with --curve.

SGD continues from RUN exactly as in `lowloss swa` (same options) and, per collected iterate w_i, keeps the
running first and second moments (mean, sq_mean; float64) and the last --rank deviations
D_i = w_i - mean_i (mean_i: the running mean including w_i). A sample is
w = mean + sqrt(scale) (sigma z1 / sqrt 2 + D^T z2 / sqrt(2 (K - 1))), sigma^2 = sq_mean - mean^2 (clamped),
K = the deviations collected, with BN statistics recomputed for every sample; the Bayesian model average
is the mean of --samples samples' softmax outputs. --momentum, --wd and --batch-size default to the
base run's.

Writes OUT/swag.safetensors (mean, sq_mean, deviations [K, P] oldest first; metadata n_models, rank,
base_run, scale) and OUT/run.json (SWA-mean and SWAG-BMA test metrics). With several RUNS: one SWAG
run per RUN in OUT/swag_000, OUT/swag_001, ... (seeds --seed, --seed + 1, ...) and OUT/run.json with
the metrics of their equal-weight mixture. With --curve DIR (a `lowloss connect` run): the curve is
trained further at the constant --lr and the moments of its bend parameters are collected; each sample
is a new curve between the same endpoints, and the train loss along --points values of t of the trained,
the mean and --samples sampled curves is reported. Evaluate any of them later with
`lowloss ensemble OUT --samples 30`. An interrupted run continues exactly with --resume.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from .. import metrics as M
from .. import params as P
from ..config import option, replace, require
from ..data import Dataset
from ..engine.evaluate import bn_buffers_for, evaluate_vector, evaluate_vectors
from ..engine.fit import FitConfig, fit_subspace
from ..engine.train import Stateful
from ..rundir import RunDir, load_tensors, read_result, run_method
from ..subspaces.gaussian import SwagGaussian
from ..utils import LowlossError, meta_json, progress, resolve_device, seed_everything
from . import swa
from .ensemble import ensemble_curve, member_probs, model_and_data
from .predictor import Predictor
from .swa import RunningAverage, base_values, collect_every, trajectory_plan

INPUTS = {"metavar": "RUNS", "nargs": -1, "required": False}
SWAG_FILE = "swag.safetensors"


@dataclass
class Config(swa.Config):
    """The SWA trajectory plus the number of deviations kept (K), the sampling scale and the evaluation."""

    rank: int = option(20, "K: number of last deviations kept (0 = SWAG-Diag moments only).")
    scale: float = option(0.5, "Sampling scale (samples use sqrt(scale)); stored as the default for later "
                               "evaluation.")
    samples: int = option(30, "Samples in the Bayesian model average reported at the end (curve SWAG: sampled "
                              "curves).")
    curve: str | None = option(None, "A trained curve directory (lowloss connect): SWAG over its bend parameters "
                                     "instead of RUNS.", metavar="DIR")
    points: int = option(21, "Curve SWAG: points t in [0,1] at which each sampled curve's train loss is "
                             "evaluated.")
    evaluate: bool = option(True, "Evaluate the SWA mean and the SWAG model average on the test set (run.json "
                                  "'metrics').", cli=False)

    def check(self) -> None:
        super().check()
        require(self.rank >= 0, f"--rank must be >= 0 (got {self.rank})")
        require(self.scale >= 0, f"--scale must be >= 0 (got {self.scale})")
        require(self.samples >= 1, f"--samples must be at least 1 (got {self.samples})")
        require(self.points >= 2, f"--points must be at least 2 (got {self.points})")
        require(self.curve is None or self.schedule == "constant",
                "curve SWAG trains the curve at a constant lr: use --schedule constant")


# ---------------------------------------------------------------------------------------------------- moments
class SwagMoments(Stateful):
    """Running SWAG moments of flat vectors: n, mean, sq_mean (float64) and the last `rank` deviations."""

    def __init__(self, rank: int = 20):
        if rank < 0:
            raise LowlossError("--rank must be >= 0")
        self.rank = rank
        self.n = 0
        self.mean: torch.Tensor | None = None
        self.sq_mean: torch.Tensor | None = None
        self._dev: list[torch.Tensor] = []  # oldest first, at most `rank`

    @torch.no_grad()
    def update(self, vector: torch.Tensor) -> None:
        w = vector.detach().reshape(-1).to(torch.float64)
        if self.n == 0:
            self.mean, self.sq_mean = w.clone(), w * w
        else:
            self.mean = self.mean + (w - self.mean) / (self.n + 1)
            self.sq_mean = self.sq_mean + (w * w - self.sq_mean) / (self.n + 1)
        self.n += 1
        if self.rank:
            self._dev.append((w - self.mean).to(vector.dtype))
            if len(self._dev) > self.rank:
                self._dev.pop(0)

    @property
    def collected_deviations(self) -> int:
        return len(self._dev)

    @property
    def deviations(self) -> torch.Tensor:
        if not self._dev:
            return torch.zeros(0, 0 if self.mean is None else self.mean.numel())
        return torch.stack(self._dev)

    def variance(self) -> torch.Tensor:
        return (self.sq_mean - self.mean ** 2).clamp_min(1e-30)

    def state_tensors(self):
        out = {"n": torch.tensor(self.n), "rank": torch.tensor(self.rank)}
        if self.mean is not None:
            out.update(mean=self.mean, sq_mean=self.sq_mean)
        if self._dev:
            out["deviations"] = self.deviations
        return out

    def load_state_tensors(self, tensors):
        self.n = int(tensors.get("n", torch.tensor(0)))
        self.mean = tensors["mean"].clone() if "mean" in tensors else None
        self.sq_mean = tensors["sq_mean"].clone() if "sq_mean" in tensors else None
        self._dev = [d.clone() for d in tensors["deviations"]] if "deviations" in tensors else []

    def gaussian(self, scale: float = 0.5, diagonal: bool = False) -> SwagGaussian:
        if self.n == 0:
            raise LowlossError("no SWAG moments were collected")
        return SwagGaussian(self.mean, self.sq_mean, self.deviations if self._dev else None, scale, diagonal)


def swag_file(moments: SwagMoments, *, base_run: str | Path | None = None, scale: float = 0.5,
              extra_meta: dict | None = None) -> tuple[dict[str, torch.Tensor], dict]:
    """(tensors, metadata) of swag.safetensors."""
    t = {"mean": moments.mean, "sq_mean": moments.sq_mean}
    dev = moments.deviations
    t["deviations"] = dev if dev.numel() else moments.mean.new_zeros(0, moments.mean.numel()).float()
    meta = {"n_models": moments.n, "rank": moments.rank, "collected_deviations": moments.collected_deviations,
            "base_run": str(Path(base_run).resolve()) if base_run else "", "scale": scale}
    meta.update(extra_meta or {})
    return t, meta


def load_swag(path: str | Path, device=None) -> tuple[dict[str, torch.Tensor], dict]:
    """(tensors, metadata) of DIR/swag.safetensors (one SWAG posterior: a SWAG or curve SWAG run)."""
    return load_tensors(Path(path) / SWAG_FILE, device=device)


def gaussian_from(tensors: dict, meta: dict, scale: float | None = None, diagonal: bool = False) -> SwagGaussian:
    s = float(meta.get("scale", 0.5)) if scale is None else float(scale)
    dev = tensors.get("deviations")
    return SwagGaussian(tensors["mean"], tensors["sq_mean"], dev if dev is not None and dev.numel() else None,
                        s, diagonal)


# ---------------------------------------------------------------------------------------------------- predictors
def swag_predictor(path, device=None, samples: int = 30, scale: float | None = None, diagonal: bool = False,
                   ) -> Predictor:
    """The posterior in DIR/swag.safetensors as a Predictor: `samples` draws (BN recomputed for each) averaged
    in probability. ``info["means"]`` holds the SWAG mean (float64). :func:`load` opens any SWAG run."""
    path = Path(path)
    tensors, meta = load_swag(path)
    if meta.get("kind") == "curve":
        return _curve_swag_predictor(path, tensors, meta, device, samples, scale, diagonal)
    model, data = model_and_data(meta, path, device)
    dev = next(iter(model.parameters())).device
    dtype = next(iter(model.parameters())).dtype
    g = gaussian_from({k: v.to(dev) for k, v in tensors.items()}, meta, scale, diagonal)

    def sampler(n, generator):
        for _ in range(n):
            yield g.points(g.sample(1, generator))[0].to(dtype), None

    return Predictor(model, data, sampler=sampler, num_samples=samples, name=f"swag {path}",
                     info={"method": "swag", "scale": g.scale, "rank": g.rank,
                           "n_models": int(meta.get("n_models", 0)), "means": [tensors["mean"]]})


def _curve_swag_predictor(path: Path, tensors, meta, device, samples, scale, diagonal) -> Predictor:
    """Curve SWAG as a Predictor: each member is phi_theta(t) with theta ~ SWAG over the bends, t ~ U(0, 1)."""
    from .connect import load_curve

    curve, run = load_curve(meta["curve"], device=device)
    bends = meta_json(meta, "bends", path / SWAG_FILE)
    dev = curve.device
    g = gaussian_from({k: v.to(dev) for k, v in tensors.items()}, meta, scale, diagonal)
    dtype = next(iter(run.model.parameters())).dtype

    def sampler(n, generator):
        for _ in range(n):
            c = curve_with_bends(curve, g.points(g.sample(1, generator))[0], bends)
            t = torch.rand(1, 1, generator=generator, dtype=torch.float64)
            with torch.no_grad():
                yield c.points(t.to(dev))[0].to(dtype), None

    return Predictor(run.model, run.data, sampler=sampler, num_samples=samples, name=f"curve swag {path}",
                     info={"method": "curve_swag", "scale": g.scale, "rank": g.rank})


def mixture_predictor(dirs, device=None, samples: int = 30, scale: float | None = None, diagonal: bool = False,
                      name: str = "multiswag") -> Predictor:
    """MultiSWAG: an equal-weight mixture of the SWAG posteriors in `dirs`. Sample i comes from posterior
    i mod M (a stratified draw from the mixture), so every posterior gets samples/M of them."""
    members = [swag_predictor(d, device=device, samples=1, scale=scale, diagonal=diagonal) for d in dirs]
    if not members:
        raise LowlossError(f"{name} has no SWAG members")

    def sampler(n, generator):
        iters = [m.sampler(math.ceil(n / len(members)), generator) for m in members]
        for i in range(n):
            yield next(iters[i % len(members)])

    return Predictor(members[0].model, members[0].data, sampler=sampler, num_samples=samples, name=name,
                     info={"method": "multiswag", "members": len(members),
                           "means": [mu for m in members for mu in m.info["means"]]})


def load(path: str | Path, device=None, samples: int = 30, scale: float | None = None,
         diagonal: bool = False) -> Predictor:
    """Any finished SWAG run (SWAG, MultiSWAG, curve SWAG) as a Predictor of `samples` draws (at `scale`,
    default: the stored one). ``info["means"]`` lists the SWAG means (float64; one per posterior, none for
    curve SWAG): their ensemble is MultiSWA."""
    path = Path(path)
    info = read_result(path, "swag")
    if info.get("kind") == "multiswag":
        return mixture_predictor([path / m for m in info["members"]], device=device, samples=samples, scale=scale,
                                 diagonal=diagonal, name=f"multiswag {path}")
    return swag_predictor(path, device=device, samples=samples, scale=scale, diagonal=diagonal)


def _bma_summary(pred: Predictor, seed: int) -> dict:
    probs, y = member_probs(pred, "test", torch.Generator().manual_seed(seed))
    curve = ensemble_curve(probs, y)
    return {"bma": curve[-1], "bma_by_samples": curve, "samples": len(probs),
            "sample_mean_metrics": {k: float(sum(M.classification_metrics(p, y)[k] for p in probs) / len(probs))
                                    for k in ("accuracy", "nll", "ece", "brier")}}


# ---------------------------------------------------------------------------------------------------- method
def fit(config: Config, inputs, run_dir: RunDir, *, quiet: bool = False, data: Dataset | None = None,
        stop_after_epochs: int | None = None) -> dict:
    """SWAG from one run, MultiSWAG from several, or curve SWAG (config.curve); writes run.json."""
    runs = [str(r) for r in (inputs or [])]
    if config.curve is not None:
        require(not runs, "give either RUNS or --curve, not both")
        return _fit_curve(config, run_dir, quiet)
    require(bool(runs), "give a trained run directory (lowloss train), several for MultiSWAG, or --curve DIR")
    if len(runs) == 1:
        return _fit_one(config, runs[0], run_dir, quiet, data, stop_after_epochs)
    members = []
    for i, r in enumerate(runs):
        name = f"swag_{i:03d}"
        run_method(sys.modules[__name__], replace(config, seed=config.seed + i, evaluate=False), [r],
                   run_dir.sub(name), resume=run_dir.resuming, quiet=quiet, data=data)
        members.append(name)
    info = {"kind": "multiswag", "members": members, "base_runs": [str(Path(r).resolve()) for r in runs]}
    if config.evaluate:
        pred = mixture_predictor([run_dir.sub(m) for m in members], device=config.device, samples=config.samples,
                                 name=f"multiswag {run_dir.path}")
        info["metrics"] = {"multiswag": _bma_summary(pred, config.seed)}
    return run_dir.finish(info)


def _fit_one(config: Config, base: str, run_dir: RunDir, quiet: bool, data: Dataset | None,
             stop_after_epochs: int | None) -> dict:
    moments, avg = SwagMoments(config.rank), RunningAverage()
    tr = swa.follow_trajectory(config, base, run_dir, {"swag": moments, "swa": avg}, quiet=quiet, data=data,
                               stop_after_epochs=stop_after_epochs)
    if tr.stopped:
        return {"stopped_after_epoch": tr.trainer.state.epoch}
    run, trainer, model, every, start, n_batches, t0 = (tr.run, tr.trainer, tr.run.model, tr.every, tr.start,
                                                        tr.n_batches, tr.t0)
    run_dir.save_tensors(SWAG_FILE, *swag_file(moments, base_run=base, scale=config.scale))
    info = {"kind": "swag", "seed": config.seed, "n_models": moments.n,
            "collected_deviations": moments.collected_deviations, "collect_every_steps": every, "start_step": start,
            "batches_per_epoch": n_batches, "history": trainer.state.history, "train_seconds": time.time() - t0,
            "bn": "recomputed for every sample and for the SWA mean" if P.has_batchnorm(model) else "none"}
    if config.evaluate and run.data.num_classes > 0:
        swa_vec = avg.mean
        info["metrics"] = {"swa": evaluate_vector(model, swa_vec, run.data,
                                                  bufs=bn_buffers_for(model, swa_vec, run.data.train))["test"]}
        pred = swag_predictor(run_dir.path, device=config.device, samples=config.samples)
        info["metrics"]["swag"] = _bma_summary(pred, config.seed)
    return run_dir.finish(info, model=run.config)


# ---------------------------------------------------------------------------------------------------- curve SWAG
def _bend_indices(curve) -> list[int]:
    idx = [i for i, tr in enumerate(curve.trainable_mask) if tr]
    if not idx:
        raise LowlossError("the curve has no trainable control points (a line segment): nothing to sample")
    return idx


def curve_with_bends(curve, theta: torch.Tensor, bends: list[int]):
    """A copy of `curve` whose trainable controls are replaced by the flat vector theta ([len(bends) * P])."""
    import copy

    c = copy.deepcopy(curve)
    for j, chunk in zip(bends, theta.reshape(len(bends), -1)):
        c.set_control(j, chunk.to(c.control(j).dtype))
    return c


def _curve_train_losses(model, curve, data, t: torch.Tensor) -> list[float]:
    with torch.no_grad():
        vecs = curve.points(t[:, None].to(curve.device)).detach()
    return [float(v) for v in evaluate_vectors(model, vecs, data, splits=("train",))["train_loss"]]


def _fit_curve(config: Config, run_dir: RunDir, quiet: bool) -> dict:
    """SWAG over a trained curve's bends (Benton et al. 2021, section 4.1).

    The curve is trained further with its own objective E_t L(phi_theta(t)) at the constant lr `config.lr`
    (:func:`lowloss.engine.fit.fit_subspace`); every `every_epochs` the bend vector theta is collected into
    SWAG moments. Each SWAG sample of theta is a new curve between the same endpoints; the train loss is
    evaluated at `points` equally spaced t along the trained curve, the SWA-mean curve and `samples` sampled
    curves (BN recomputed per point), and the max along each is reported.
    """
    from .connect import load_curve

    curve_dir = Path(config.curve)
    curve, run = load_curve(curve_dir, device=resolve_device(config.device))
    hp = base_values(config, curve_dir)
    n_batches = run.data.train.num_batches(hp["batch_size"])
    _, every, start = trajectory_plan(config, n_batches)
    bends = _bend_indices(curve)
    gen = seed_everything(config.seed)
    moments = SwagMoments(config.rank)

    def take(t):
        moments.update(torch.cat([curve.control(j).detach().reshape(-1) for j in bends]))

    t0 = time.time()
    fit_cfg = FitConfig(epochs=config.epochs, lr=config.lr, momentum=hp["momentum"], wd=hp["wd"],
                        batch_size=hp["batch_size"], schedule="constant")
    history = fit_subspace(run.model, curve, run.data, fit_cfg, generator=gen, run_dir=run_dir.path,
                           resume=run_dir.resuming, quiet=quiet, desc=f"curve swag {run_dir.path.name}",
                           after_step=collect_every(take, every, start),
                           after_epoch=lambda e: {"collected": moments.n}, extra={"swag": moments})
    if len(history) < config.epochs:
        return {"stopped_after_epoch": len(history)}
    run_dir.save_tensors(SWAG_FILE, *swag_file(
        moments, base_run=run.path, scale=config.scale,
        extra_meta={"kind": "curve", "curve": str(curve_dir.resolve()), "curve_kind": curve.kind,
                    "num_bends": curve.num_bends, "bends": bends}))
    train_seconds = time.time() - t0
    # evaluate: the trained curve, the mean curve and sampled curves along equally spaced t
    t = torch.linspace(0, 1, config.points, dtype=torch.float64)
    g = moments.gaussian(config.scale)
    sample_gen = torch.Generator().manual_seed(config.seed)
    losses = {"trained": _curve_train_losses(run.model, curve, run.data, t),
              "swa_mean": _curve_train_losses(run.model, curve_with_bends(curve, g.mean, bends), run.data, t)}
    sampled = []
    for _ in progress(range(config.samples), desc="sampled curves", quiet=quiet, unit="curve"):
        th = g.points(g.sample(1, sample_gen))[0]
        sampled.append(_curve_train_losses(run.model, curve_with_bends(curve, th, bends), run.data, t))
    maxes = [max(s) for s in sampled]
    metrics = {"t": t.tolist(), "train_loss": {**losses, "sampled": sampled},
               "trained_curve_max_train_loss": max(losses["trained"]),
               "swa_mean_curve_max_train_loss": max(losses["swa_mean"]),
               "sampled_max_train_loss": maxes,
               "sampled_max_train_loss_mean": float(sum(maxes) / max(len(maxes), 1)) if maxes else float("nan"),
               "sampled_max_train_loss_max": max(maxes) if maxes else float("nan"),
               "endpoint_train_loss_max": max(losses["trained"][0], losses["trained"][-1])}
    return run_dir.finish({"kind": "curve_swag", "seed": config.seed, "n_models": moments.n,
                           "collected_deviations": moments.collected_deviations, "collect_every_steps": every,
                           "bends": bends, "curve_kind": curve.kind, "history": history,
                           "train_seconds": train_seconds, "metrics": metrics,
                           "bn": "recomputed at every evaluated point"}, model=run.config)


# ---------------------------------------------------------------------------------------------------- CLI, API
def summary(info: dict) -> str:
    kind, m = info.get("kind", "swag"), info.get("metrics")
    if not m:
        return ""
    if kind == "curve_swag":
        return (f"{info['n_models']} bend iterates | max train loss along the trained curve "
                f"{m['trained_curve_max_train_loss']:.4f}, along {len(m['sampled_max_train_loss'])} sampled curves "
                f"mean {m['sampled_max_train_loss_mean']:.4f} (max {m['sampled_max_train_loss_max']:.4f}) | "
                f"endpoints {m['endpoint_train_loss_max']:.4f}")
    if kind == "multiswag":
        b = m["multiswag"]["bma"]
        return (f"MultiSWAG of {len(info['members'])} runs ({b['members']} samples) test acc {b['accuracy']:.4f} "
                f"nll {b['nll']:.4f} ece {b['ece']:.4f} brier {b['brier']:.4f}")
    a, b = m["swa"], m["swag"]["bma"]
    scale = (info.get("config") or {}).get("scale")
    return (f"{info['n_models']} iterates, K={info['collected_deviations']} | SWA test acc {a['accuracy']:.4f} "
            f"nll {a['nll']:.4f} | SWAG ({b['members']} samples, scale {scale}) acc {b['accuracy']:.4f} "
            f"nll {b['nll']:.4f} ece {b['ece']:.4f}")


def swag(runs=None, config: Config | None = None, out: str | Path = "runs/swag", *, resume: bool = False,
         quiet: bool = False, data: Dataset | None = None, stop_after_epochs: int | None = None,
         **overrides) -> dict:
    """Python API: ``swag("runs/m0", out="runs/swag")``, ``swag(["runs/m0", "runs/m1"], out="runs/ms")`` or
    ``swag(curve="runs/curve", out="runs/cswag")``. Returns run.json's contents."""
    if isinstance(runs, (str, Path)):
        runs = [runs]
    return run_method(sys.modules[__name__], replace(config or Config(), **overrides),
                      [str(r) for r in runs] if runs else None, out, resume=resume, quiet=quiet, data=data,
                      stop_after_epochs=stop_after_epochs)


__all__ = ["Config", "SWAG_FILE", "SwagMoments", "curve_with_bends", "fit", "gaussian_from", "load", "load_swag",
           "mixture_predictor", "summary", "swag", "swag_file", "swag_predictor"]
