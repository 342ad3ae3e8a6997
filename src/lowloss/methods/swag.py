"""SWAG (Maddox et al. 2019), MultiSWAG (Wilson & Izmailov 2020) and SWAG over a curve's bends (Benton et al.).

SWAG runs the SWA trajectory (:func:`lowloss.methods.swa.train_and_collect`) and keeps, per collected
iterate w_i, the running first and second moments (mean, sq_mean; float64) and the last K deviations
D_i = w_i - mean_i (mean_i: the running mean including w_i). Samples follow METHODS.md section 4 (see
:class:`lowloss.subspaces.gaussian.SwagGaussian`), BN statistics are recomputed for every sample, and the
Bayesian model average is the mean of ~30 samples' softmax outputs.

``DIR/swag.safetensors``: ``mean``, ``sq_mean``, ``deviations`` ([K, P], oldest first) with metadata
``n_models``, ``rank``, ``base_run``, ``scale``. MultiSWAG: ``DIR/multiswag.json`` lists SWAG directories
(one per independent run) sampled as an equal-weight mixture.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from .. import metrics as M
from .. import params as P
from ..engine.train import Stateful, Trainer
from ..subspaces.gaussian import SwagGaussian
from ..utils import (
    LowlossError,
    echo,
    progress,
    read_json,
    resolve_device,
    seed_everything,
    versions,
    write_json,
)
from .ensemble import ensemble_curve, member_probs, model_and_data
from .predictor import Predictor
from .swa import RunningAverage, SWAConfig, base_hyper, train_and_collect, trajectory_plan

SWAG_FILE = "swag.safetensors"
MULTI_FILE = "multiswag.json"


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


@dataclass
class SWAGConfig(SWAConfig):
    """SWAConfig plus the number of deviations kept (K) and the default sampling scale."""

    rank: int = 20
    scale: float = 0.5


def save_swag(out: Path, moments: SwagMoments, *, base_run: str | Path | None = None, config: dict | None = None,
              scale: float = 0.5, extra_meta: dict | None = None) -> Path:
    import json

    from ..rundir import save_tensors as save_state

    t = {"mean": moments.mean, "sq_mean": moments.sq_mean}
    dev = moments.deviations
    t["deviations"] = dev if dev.numel() else moments.mean.new_zeros(0, moments.mean.numel()).float()
    meta = {"n_models": moments.n, "rank": moments.rank, "collected_deviations": len(moments._dev),
            "base_run": str(Path(base_run).resolve()) if base_run else "", "scale": scale}
    if config is not None:
        meta["config"] = json.dumps(config, sort_keys=True)
    meta.update(extra_meta or {})
    path = Path(out) / SWAG_FILE
    save_state(path, t, meta)
    return path


def load_swag(path: str | Path, device=None) -> tuple[dict[str, torch.Tensor], dict]:
    f = Path(path) / SWAG_FILE
    if not f.exists():
        raise LowlossError(f"{path} has no {SWAG_FILE}: run `lowloss swag` first")
    with safe_open(str(f), "pt") as h:
        meta = dict(h.metadata() or {})
    return load_file(str(f), device=str(device) if device is not None else "cpu"), meta


def gaussian_from(tensors: dict, meta: dict, scale: float | None = None, diagonal: bool = False) -> SwagGaussian:
    s = float(meta.get("scale", 0.5)) if scale is None else float(scale)
    dev = tensors.get("deviations")
    return SwagGaussian(tensors["mean"], tensors["sq_mean"], dev if dev is not None and dev.numel() else None,
                        s, diagonal)


def swag_predictor(path, device=None, samples: int = 30, scale: float | None = None, diagonal: bool = False,
                   ) -> Predictor:
    """A SWAG directory as a Predictor: `samples` draws (BN recomputed for each) averaged in probability."""
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
                     info={"method": "swag", "scale": g.scale, "rank": g.rank, "n_models": int(meta.get("n_models", 0))})


def _curve_swag_predictor(path: Path, tensors, meta, device, samples, scale, diagonal) -> Predictor:
    """Curve SWAG as a Predictor: each member is phi_theta(t) with theta ~ SWAG over the bends, t ~ U(0, 1)."""
    import json

    from .connect import load_curve

    curve, run = load_curve(meta["curve"], device=device)
    bends = json.loads(meta["bends"])
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


def multiswag_predictor(path, device=None, samples: int = 30, scale: float | None = None,
                        diagonal: bool = False) -> Predictor:
    """MultiSWAG: an equal-weight mixture of the SWAG posteriors listed in DIR/multiswag.json. Sample i comes
    from member i mod M (a stratified draw from the mixture), so every member gets samples/M of them."""
    path = Path(path)
    info = read_json(path / MULTI_FILE)
    members = [swag_predictor(_member_path(path, m), device=device, samples=1, scale=scale, diagonal=diagonal)
               for m in info["members"]]
    if not members:
        raise LowlossError(f"{path / MULTI_FILE} lists no SWAG members")

    def sampler(n, generator):
        iters = [m.sampler(math.ceil(n / len(members)), generator) for m in members]
        for i in range(n):
            yield next(iters[i % len(members)])

    return Predictor(members[0].model, members[0].data, sampler=sampler, num_samples=samples,
                     name=f"multiswag {path}", info={"method": "multiswag", "members": len(members)})


def _member_path(root: Path, m: str) -> Path:
    p = Path(m)
    return p if p.is_absolute() else root / p


def _bma_summary(pred: Predictor, seed: int) -> dict:
    probs, y = member_probs(pred, "test", torch.Generator().manual_seed(seed))
    curve = ensemble_curve(probs, y)
    return {"bma": curve[-1], "bma_by_samples": curve, "samples": len(probs),
            "sample_mean_metrics": {k: float(sum(M.classification_metrics(p, y)[k] for p in probs) / len(probs))
                                    for k in ("accuracy", "nll", "ece", "brier")}}


def run_swag(base_run: str | Path, cfg: SWAGConfig, out: str | Path, *, resume: bool = False, quiet: bool = False,
             data=None, samples: int = 30, evaluate: bool = True, stop_after_epochs: int | None = None) -> dict:
    """SWAG from `base_run`: writes out/swag.safetensors and out/swag.json (SWA and SWAG metrics)."""
    from ..engine.evaluate import bn_buffers_for, evaluate_vector
    from ..rundir import load_run, start_run_dir

    out = Path(out)
    config = {"base_run": str(Path(base_run).resolve()), **asdict(cfg)}
    finished = read_json(out / "swag.json") if (out / "swag.json").exists() and (out / SWAG_FILE).exists() else None
    done = start_run_dir(out, config, resume=resume, quiet=quiet, finished=finished)
    if done is not None:
        return done
    run = load_run(base_run, device=cfg.device, data=data)
    momentum, wd, bs = base_hyper(run, cfg)
    n_batches = run.data.train.num_batches(bs)
    lr_at_step, every, start = trajectory_plan(cfg, n_batches)
    gen = seed_everything(cfg.seed)
    moments, avg = SwagMoments(cfg.rank), RunningAverage()
    t0 = time.time()
    history = train_and_collect(run.model, run.data, epochs=cfg.epochs, lr_at_step=lr_at_step, collect_every=every,
                                start_step=start, collectors={"swag": moments, "swa": avg}, momentum=momentum,
                                wd=wd, batch_size=bs, generator=gen, device=resolve_device(cfg.device), run_dir=out,
                                resume=resume, quiet=quiet, desc=f"swag {out.name}",
                                stop_after_epochs=stop_after_epochs)
    if len(history) < cfg.epochs:
        return {"stopped_after_epoch": len(history)}
    save_swag(out, moments, base_run=base_run, scale=cfg.scale)
    info = {"method": "swag", "config": config, "versions": versions(), "seed": cfg.seed,
            "n_models": moments.n, "collected_deviations": len(moments._dev), "collect_every_steps": every,
            "start_step": start, "batches_per_epoch": n_batches, "history": history,
            "train_seconds": time.time() - t0,
            "bn": "recomputed for every sample and for the SWA mean" if P.has_batchnorm(run.model) else "none"}
    if evaluate and run.data.num_classes > 0:
        model = run.model
        swa_vec = avg.mean
        info["metrics"] = {"swa": evaluate_vector(model, swa_vec, run.data,
                                                  bufs=bn_buffers_for(model, swa_vec, run.data.train))["test"]}
        pred = swag_predictor(out, device=cfg.device, samples=samples)
        info["metrics"]["swag"] = _bma_summary(pred, cfg.seed)
    write_json(out / "swag.json", info)
    (out / Trainer.CKPT).unlink(missing_ok=True)
    return info


def run_multiswag(base_runs, cfg: SWAGConfig, out: str | Path, *, resume: bool = False, quiet: bool = False,
                  samples: int = 30) -> dict:
    """One SWAG per independent run (out/swag_000, ...), then out/multiswag.json (an equal-weight mixture)."""
    out = Path(out)
    if len(base_runs) < 2:
        raise LowlossError("MultiSWAG needs at least two independent runs")
    members = []
    for i, r in enumerate(base_runs):
        sub = out / f"swag_{i:03d}"
        sub_cfg = SWAGConfig(**{**asdict(cfg), "seed": cfg.seed + i})
        run_swag(r, sub_cfg, sub, resume=resume or (sub / Trainer.CKPT).exists(), quiet=quiet, samples=samples,
                 evaluate=False)
        members.append(sub.name)
    info = {"method": "multiswag", "members": members, "base_runs": [str(Path(r).resolve()) for r in base_runs],
            "config": asdict(cfg), "versions": versions()}
    write_json(out / MULTI_FILE, info)
    pred = multiswag_predictor(out, device=cfg.device, samples=samples)
    info["metrics"] = {"multiswag": _bma_summary(pred, cfg.seed)}
    write_json(out / MULTI_FILE, info)
    return info


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
    from ..engine.evaluate import evaluate_vectors

    with torch.no_grad():
        vecs = curve.points(t[:, None].to(curve.device)).detach()
    return [float(v) for v in evaluate_vectors(model, vecs, data, splits=("train",))["train_loss"]]


def run_curve_swag(curve_dir: str | Path, cfg: SWAGConfig, out: str | Path, *, samples: int = 10, points: int = 21,
                   resume: bool = False, quiet: bool = False) -> dict:
    """SWAG over a trained curve's bends (Benton et al. 2021, section 4.1).

    The curve is trained further with its own objective E_t L(phi_theta(t)) at the constant lr `cfg.lr`
    (lowloss.engine.fit.fit_subspace); every `every_epochs` the bend vector theta is collected into SWAG
    moments. Each SWAG sample of theta is a new curve between the same endpoints; the train loss is
    evaluated at `points` equally spaced t along the trained curve, the SWA-mean curve and `samples` sampled
    curves (BN recomputed per point), and the max along each is reported.
    """
    from .connect import load_curve
    from ..engine.fit import FitConfig, fit_subspace

    curve_dir, out = Path(curve_dir), Path(out)
    config = {"curve": str(curve_dir.resolve()), **asdict(cfg), "samples": samples, "points": points}
    if (out / "curve_swag.json").exists() and (out / SWAG_FILE).exists():
        info = read_json(out / "curve_swag.json")
        if info.get("config") == config:
            echo(f"{out} is already finished; nothing to do", quiet)
            return info
        raise LowlossError(f"{out} already holds a finished curve SWAG run with another config; choose a new --out")
    if (out / Trainer.CKPT).exists() and not resume:
        raise LowlossError(f"{out} holds an interrupted run: continue it with --resume or choose a new --out")
    curve, run = load_curve(curve_dir, device=resolve_device(cfg.device))
    ccfg = read_json(curve_dir / "config.json") if (curve_dir / "config.json").exists() else {}
    rc = run.config
    momentum = cfg.momentum if cfg.momentum is not None else ccfg.get("momentum", rc["momentum"])
    wd = cfg.wd if cfg.wd is not None else ccfg.get("wd", rc["wd"])
    bs = cfg.batch_size if cfg.batch_size is not None else ccfg.get("batch_size", rc["batch_size"])
    if cfg.schedule != "constant":
        raise LowlossError("curve SWAG trains the curve at a constant lr: use --schedule constant")
    n_batches = run.data.train.num_batches(bs)
    _, every, start = trajectory_plan(cfg, n_batches)
    bends = _bend_indices(curve)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "config.json", config)
    gen = seed_everything(cfg.seed)
    moments = SwagMoments(cfg.rank)

    def theta():
        return torch.cat([curve.control(j).detach().reshape(-1) for j in bends])

    def after_step(step, epoch_float):
        done = step - start
        if done >= every and done % every == 0:
            moments.update(theta())

    t0 = time.time()
    fit_cfg = FitConfig(epochs=cfg.epochs, lr=cfg.lr, momentum=momentum, wd=wd, batch_size=bs, schedule="constant")
    history = fit_subspace(run.model, curve, run.data, fit_cfg, generator=gen, run_dir=out, resume=resume,
                           quiet=quiet, desc=f"curve swag {out.name}", after_step=after_step,
                           after_epoch=lambda e: {"collected": moments.n}, extra={"swag": moments})
    if len(history) < cfg.epochs:
        return {"stopped_after_epoch": len(history)}
    save_swag(out, moments, base_run=run.path, scale=cfg.scale,
              extra_meta={"kind": "curve", "curve": str(curve_dir.resolve()), "curve_kind": curve.kind,
                          "num_bends": curve.num_bends, "bends": bends})
    train_seconds = time.time() - t0
    # evaluate: the trained curve, the mean curve and sampled curves along equally spaced t
    t = torch.linspace(0, 1, points, dtype=torch.float64)
    g = moments.gaussian(cfg.scale)
    sample_gen = torch.Generator().manual_seed(cfg.seed)
    losses = {"trained": _curve_train_losses(run.model, curve, run.data, t),
              "swa_mean": _curve_train_losses(run.model, curve_with_bends(curve, g.mean, bends), run.data, t)}
    sampled = []
    for _ in progress(range(samples), desc="sampled curves", quiet=quiet, unit="curve"):
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
    info = {"method": "curve_swag", "config": config, "versions": versions(), "seed": cfg.seed, "n_models": moments.n,
            "collected_deviations": len(moments._dev), "collect_every_steps": every, "bends": bends,
            "curve_kind": curve.kind, "history": history, "train_seconds": train_seconds, "metrics": metrics,
            "bn": "recomputed at every evaluated point"}
    write_json(out / "curve_swag.json", info)
    (out / Trainer.CKPT).unlink(missing_ok=True)
    return info
