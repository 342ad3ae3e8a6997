"""Loss-landscape sightseeing (Skorokhodov & Burtsev 2019): train a plane near RUN whose loss draws a picture.

The plane is w(a, b) = origin + a u + b v for (a, b) in [-1, 1]^2. Its origin (starting at the run's weights)
and its two directions u, v are trained together so that the train loss on a G x G grid of points matches
the picture (--picture FILE.png, or a built-in 16x16 "LL" when none is given): dark pixels ask for low loss,
light ones for high, as a squared error on log loss, target log L = log(--low) + lightness * (log(--high) -
log(--low)), averaged over --points-per-step grid points per minibatch, plus --anchor * |origin - w|^2 / |w|^2
keeping the origin near the mode. A fixed, seeded fraction of the grid (--holdout) is never trained on: the
agreement is the correlation between picture lightness and log train loss on those held-out points. The
plane through origin, origin + u, origin + v is then computed with `lowloss plane`'s engine (sub-run plane/)
and drawn beside the picture.

Writes sightsee.safetensors (origin, u, v), plane/ (a plane run: plane.npz, plane_basis.safetensors), run.json
(agreement on held-out and on all grid points, test accuracy at the origin, the target and measured losses
per grid point, gradient evaluations) and sightsee.png.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..config import option, require
from ..engine.evaluate import evaluate_vector, evaluate_vectors
from ..engine.train import Trainer
from ..params import functional_forward
from ..rundir import RunDir, load_run, read_result, run_method
from ..utils import LowlossError, seed_everything

INPUTS = {"metavar": "RUN", "nargs": 1}
PLANE_FILE = "sightsee.safetensors"

LL = ["................",
      "................",
      ".##......##.....",
      ".##......##.....",
      ".##......##.....",
      ".##......##.....",
      ".##......##.....",
      ".##......##.....",
      ".##......##.....",
      ".##......##.....",
      ".##......##.....",
      ".#######.#######",
      ".#######.#######",
      "................",
      "................",
      "................"]


def default_picture() -> np.ndarray:
    """The built-in 16x16 picture, the letters "LL": lightness in [0, 1] (0 = dark), rows top to bottom."""
    return np.array([[0.0 if ch == "#" else 1.0 for ch in row] for row in LL])


def picture(config: Config) -> np.ndarray:
    """The config's picture (or the built-in one) as a grid x grid lightness array."""
    if config.picture is not None:
        return read_picture(config.picture, config.grid)
    from PIL import Image

    im = Image.fromarray((default_picture() * 255).astype(np.uint8)).resize((config.grid, config.grid),
                                                                             Image.Resampling.BOX)
    return np.asarray(im, dtype=np.float64) / 255.0


def read_picture(path: str | Path, grid: int) -> np.ndarray:
    """An image file as a grid x grid lightness array in [0, 1] (0 = dark), rows top to bottom."""
    from PIL import Image, UnidentifiedImageError

    p = Path(path)
    if not p.is_file():
        raise LowlossError(f"--picture {p} does not exist; give a PNG/JPEG file (or leave it out for the built-in)")
    try:
        with Image.open(p) as im:
            im = im.convert("L").resize((grid, grid), Image.Resampling.BOX)
            arr = np.asarray(im, dtype=np.float64) / 255.0
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise LowlossError(f"--picture {p} is not an image PIL can read ({type(e).__name__}); give a PNG or JPEG "
                           "file") from None
    return arr


@dataclass
class Config:
    """One sightseeing plane."""

    picture: str | None = option(None, "Image whose dark regions become low loss (PNG, JPEG, ...; default: the "
                                       "built-in 16x16 \"LL\").", metavar="FILE")
    grid: int = option(16, "Grid points per axis the picture is resized to.")
    low: float = option(0.05, "Target train loss of the darkest pixels.")
    high: float = option(2.0, "Target train loss of the lightest pixels.")
    holdout: float = option(0.2, "Fraction of grid points never trained on (the agreement is measured there).")
    anchor: float = option(1.0, "Weight of |origin - w|^2 / |w|^2, which keeps the origin near the run's weights.")
    radius: float = option(0.5, "Initial length of u and v relative to |w|.")
    points_per_step: int = option(8, "Grid points whose loss is matched per minibatch step.")
    epochs: int = 10
    lr: float = 0.002
    batch_size: int = 128
    plane_grid: int = option(31, "Grid points per axis of the plane drawn beside the picture.")
    bn_subset: int | None = None
    seed: int = 0
    device: str = "auto"

    def check(self) -> None:
        require(self.grid >= 4, f"--grid must be >= 4 (got {self.grid})")
        require(0 < self.low < self.high, f"--low and --high must satisfy 0 < low < high (got {self.low}, {self.high})")
        require(0 < self.holdout < 1, f"--holdout must be in (0, 1) (got {self.holdout})")
        require(self.anchor >= 0 and self.radius > 0, "--anchor must be >= 0 and --radius > 0")
        require(self.points_per_step >= 1 and self.epochs >= 1 and self.lr > 0 and self.batch_size >= 1,
                "--points-per-step, --epochs and --batch-size must be >= 1 and --lr positive")
        require(self.plane_grid >= 2, f"--plane-grid must be >= 2 (got {self.plane_grid})")


def check_inputs(config: Config, inputs) -> None:
    pic = picture(config)
    require(float(pic.max() - pic.min()) > 0.05, f"--picture {config.picture} is blank (all pixels about the same "
                                                 "lightness): nothing to draw; give a picture with dark and light "
                                                 "regions")


def _targets(pic: np.ndarray, low: float, high: float) -> np.ndarray:
    lo, hi = math.log(low), math.log(high)
    return lo + pic * (hi - lo)


def _coords(grid: int) -> tuple[np.ndarray, np.ndarray]:
    """(a, b) of every pixel, row-major from the top row: a from -1 (left) to 1, b from 1 (top) to -1."""
    xs = np.linspace(-1, 1, grid)
    a, b = np.meshgrid(xs, xs[::-1])
    return a.reshape(-1), b.reshape(-1)


def _corr(x, y) -> float:
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if x.std() == 0 or y.std() == 0:
        return float("nan")
    return float(np.corrcoef(x, y)[0, 1])


def fit(config: Config, inputs, run_dir: RunDir, *, quiet: bool = False) -> dict:
    """Train the plane, measure it, compute and save the plane through it. Returns run.json's contents."""
    from .plane import Config as PlaneConfig
    from .plane import PlaneInputs, compute_plane

    config.check()
    pic = picture(config)
    run = load_run(inputs[0], device=config.device)
    if run.data.num_classes <= 0:
        raise LowlossError("sightseeing matches classification losses; this run was trained on regression data")
    model, data, w0 = run.model, run.data, run.vector
    gen = seed_everything(config.seed)
    g = config.grid
    target = torch.tensor(_targets(pic, config.low, config.high).reshape(-1), dtype=w0.dtype, device=w0.device)
    a_np, b_np = _coords(g)
    ab = torch.tensor(np.stack([a_np, b_np], 1), dtype=w0.dtype, device=w0.device)
    perm = torch.randperm(g * g, generator=gen)
    n_hold = max(1, int(round(config.holdout * g * g)))
    held, train_idx = perm[:n_hold], perm[n_hold:]
    scale = float(w0.norm())
    directions = torch.randn(2, w0.numel(), generator=gen).to(w0)
    directions = directions / directions.norm(dim=1, keepdim=True) * config.radius * scale
    origin = nn.Parameter(w0.clone())
    u, v = nn.Parameter(directions[0].clone()), nn.Parameter(directions[1].clone())
    pick = torch.Generator().manual_seed(int(torch.randint(0, 2**62, (1,), generator=gen)))

    def loss_fn(x, y, step):
        idx = train_idx[torch.randint(len(train_idx), (config.points_per_step,), generator=pick)]
        total = 0.0
        for i in idx.tolist():
            w = origin + ab[i, 0] * u + ab[i, 1] * v
            ce = nn.functional.cross_entropy(functional_forward(model, w, x), y)
            total = total + (torch.log(ce.clamp_min(1e-8)) - target[i]) ** 2
        total = total / len(idx)
        if config.anchor:
            total = total + config.anchor * (origin - w0).pow(2).sum() / scale ** 2
        return total, None

    was = [(m, m.training) for m in model.modules()]
    model.train()
    t0 = time.time()
    try:
        trainer = Trainer({"origin": origin, "u": u, "v": v}, loss_fn, data.train, epochs=config.epochs,
                          batch_size=config.batch_size, lr=lambda e: config.lr, optimizer="adam", generator=gen,
                          run_dir=run_dir.path, quiet=quiet, desc=f"sightsee {run_dir.path.name}",
                          nan_hint="lower the learning rate (--lr)")
        history = trainer.run(resume=run_dir.resuming)
    finally:
        for m, t in was:
            m.training = t
    train_seconds = time.time() - t0
    o, uu, vv = origin.detach(), u.detach(), v.detach()
    run_dir.save_tensors(PLANE_FILE, {"origin": o, "u": uu, "v": vv})
    with torch.no_grad():
        pts = o[None] + ab[:, :1] * uu[None] + ab[:, 1:] * vv[None]
    losses = []
    for s in range(0, len(pts), 32):
        r = evaluate_vectors(model, pts[s:s + 32], data, splits=("train",), bn_subset=config.bn_subset)
        losses.extend(float(x) for x in r["train_loss"])
    log_loss = np.log(np.maximum(np.array(losses), 1e-12))
    light = pic.reshape(-1)
    h, tr = held.numpy(), train_idx.numpy()
    at_origin = evaluate_vector(model, o, data, recompute=True)
    # the plane through origin, origin + u, origin + v, on a grid covering the picture's parallelogram
    plane_dir = run_dir.sub("plane")
    corners = torch.stack([o + sa * uu + sb * vv for sa in (-1, 1) for sb in (-1, 1)])
    from ..subspaces.plane import Plane

    plane = Plane.through(o, o + uu, o + vv)
    xy = plane.project(corners).cpu().numpy()
    pad = 0.05 * (xy.max(0) - xy.min(0))
    axes = tuple(np.linspace(xy[:, k].min() - pad[k], xy[:, k].max() + pad[k], config.plane_grid) for k in (0, 1))
    anchors = PlaneInputs(model, data, ["origin", "origin+u", "origin+v"], [o, o + uu, o + vv],
                          sources={"sightsee": str(run_dir.path.resolve())}, axes=axes)
    compute_plane(anchors, PlaneConfig(grid=config.plane_grid, metrics=("train_loss", "test_error"),
                                       bn_subset=config.bn_subset, device=config.device), plane_dir, quiet=True)
    return run_dir.finish({
        "run": str(Path(inputs[0]).resolve()), "picture": config.picture or "built-in LL", "grid": g,
        "lightness": light.tolist(), "target_log_loss": target.tolist(), "train_loss": losses,
        "held_out": sorted(h.tolist()), "corners": xy.tolist(),
        "agreement": {"held_out": _corr(light[h], log_loss[h]), "trained": _corr(light[tr], log_loss[tr]),
                      "all": _corr(light, log_loss)},
        "origin": {"test_accuracy": at_origin["test"]["accuracy"], "test_loss": at_origin["test"]["loss"],
                   "train_loss": at_origin["train"]["loss"], "distance_to_run": float((o - w0).norm() / scale)},
        "run_test_accuracy": evaluate_vector(model, w0, data, recompute=True, splits=("test",))["test"]["accuracy"],
        "plane": str(plane_dir.resolve()), "history": history, "train_seconds": train_seconds,
        "cost": {"gradient_evaluations": len(history) * data.train.num_batches(config.batch_size)
                 * config.points_per_step}})


def summary(info: dict) -> str:
    ag = info["agreement"]
    return (f"agreement (corr. of picture lightness and log train loss): held-out {ag['held_out']:.3f}, "
            f"trained {ag['trained']:.3f}; test accuracy at the origin {100 * info['origin']['test_accuracy']:.2f}% "
            f"(run {100 * info['run_test_accuracy']:.2f}%)")


def load(path, device=None) -> dict:
    """run.json of a finished `lowloss sightsee` directory and its plane (origin, u, v tensors)."""
    from ..rundir import load_tensors

    info = read_result(path, "sightsee", needs=(PLANE_FILE,))
    t, _ = load_tensors(Path(path) / PLANE_FILE, device)
    return {**info, "tensors": t}


def sightsee(run, config: Config | None = None, out: str | Path = "runs/sightsee", **overrides) -> dict:
    """Python API: ``sightsee("runs/m0", picture="smile.png")``."""
    import sys

    from ..config import replace

    return run_method(sys.modules[__name__], replace(config or Config(), **overrides), [run], out)


__all__ = ["Config", "default_picture", "fit", "load", "picture", "read_picture", "sightsee", "summary"]
