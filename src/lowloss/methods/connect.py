"""Connect RUN_A and RUN_B (same architecture and data) with a trained low-loss curve (Garipov et al. 2018).

    l(theta) = E_{t ~ U(0,1)} L(phi_theta(t))  [+ wd/2 ||phi_theta(t)||^2]

The bends of a Bezier curve or polygonal chain between the two networks are trained with one t per
minibatch (or the batch split among --t-per-batch values of t), BatchNorm in train mode, weight decay on
the point phi(t) (not on each control point) and the endpoints fixed unless --free-endpoints. The curve
AND the line segment are then evaluated at --points equally spaced t, with BN statistics recomputed at
each point: train/test loss and error, and the test error and NLL of the two-model ensemble {w_A, phi(t)}.

Writes curve.safetensors (control_0..control_{n-1}, flat parameter vectors), run.json (the evaluation:
t; per path curve/line the lists train_loss, train_error, test_loss, test_error, ensemble_test_error,
ensemble_test_nll; summary.{curve,line}.{barrier, max_train_loss, max_test_error}; endpoint_ensemble;
endpoints; history; timing), curve.png and ensemble.png. An interrupted run (training or evaluation)
continues with --resume.

Regression data (the modes of `lowloss regression`): loss = MSE (the training objective), error = RMSE, no
ensemble metrics; also functions.npz (the predictive functions at --marks equally spaced t and their spread
near and away from the data), path_plane.npz (the train loss on the plane of the final curve) and
regression_path.png (that plane with the marked points beside the functions), instead of ensemble.png.

--frames N saves the curve's control points at N steps spread over training and, after training, evaluates
the train loss on each one's plane (endpoints and middle control point) on a --frame-grid G grid with common
axes: frames/frame_<i>.npz, each written when finished (resumable); `lowloss animate RUN_DIR` makes the video.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .. import metrics as M
from ..config import option, replace, require
from ..data import Dataset
from ..engine.evaluate import evaluate_vectors, predict_outputs
from ..engine.fit import FitConfig, fit_subspace
from ..engine.schedules import SCHEDULES
from ..params import Forward, flatten, has_batchnorm, num_params
from ..rundir import (
    RunDir,
    find_run,
    input_record,
    load_run,
    load_runs,
    load_tensors,
    read_result,
    run_method,
    save_npz,
    save_tensors,
)
from ..subspaces.curves import Curve, Line, curve_class, make_curve
from ..subspaces.plane import grid_axes
from ..utils import LowlossError, load_tensor_metadata, meta_json, progress, seed_everything, torch_threads
from .animate import (
    FRAME_DIR,
    FRAME_MARGIN,
    FRAME_MIN_ASPECT,
    FrameRecorder,
    curve_plane,
    curve_points,
    frame_steps,
    plane_grid,
    record_frames,
    snapshot_files,
)

INPUTS = {"metavar": "RUN_A RUN_B", "nargs": 2}
CURVE_FILE = "curve.safetensors"
PARTIAL_FILE = "curve_eval.partial.json"
NEB_FILE = "neb_state.safetensors"
PATH_KEYS = ("train_loss", "train_error", "test_loss", "test_error", "ensemble_test_error", "ensemble_test_nll")


@dataclass
class Config:
    """One curve fit. Defaults measured on digits (convnet and mlp modes of `lowloss train`)."""

    curve: str = option("bezier", "Curve family: Bezier (Bernstein weights) or polygonal chain through the bends.",
                        choices=("bezier", "polychain"))
    bends: int = option(1, "Number of trainable bends (control points between the endpoints).")
    epochs: int = 20
    lr: float = 0.1
    momentum: float = 0.9
    wd: float = 5e-4
    batch_size: int = 64
    schedule: str = option("curve", "Learning-rate schedule; 'curve' is Garipov et al.'s (constant, linear "
                                    "decay to 1% by 90%).", choices=SCHEDULES)
    t_per_batch: int = option(1, "Values of t per minibatch (the batch is split among them; lower-variance "
                                 "gradient).")
    points: int = option(61, "Equally spaced values of t at which the curve and the line are evaluated.")
    free_endpoints: bool = option(False, "Train the endpoints too (fixed to the two runs by default).")
    method: str = option("curve", "Path finder: a trained curve (--curve, --bends) or AutoNEB, a nudged elastic band "
                                  "whose pivots are inserted where the loss is highest (--neb-*, --spring; "
                                  "--epochs are shared among the rounds).", choices=("curve", "neb"))
    neb_pivots: int = option(2, "AutoNEB: pivots of the first band (between the endpoints).")
    neb_rounds: int = option(3, "AutoNEB: relaxation rounds; pivots are inserted between them.")
    neb_insert: int = option(2, "AutoNEB: pivots inserted after each round (where the loss is highest).")
    spring: float = option(1.0, "AutoNEB: spring constant along the band.")
    align: bool = option(False, "Permute RUN_B's hidden units to match RUN_A (weight matching, as `lowloss "
                                "align`) before connecting them.")
    frames: int | None = option(None, "Record the plane of the curve at N times spread over training, the frames "
                                      "of a video (lowloss animate RUN_DIR); none by default.", metavar="N")
    frame_grid: int = option(41, "Grid points per axis of each frame's plane (G x G), and of the plane of the "
                                 "final curve drawn for regression data.", metavar="G")
    marks: int = option(5, "Regression data: marked points (equally spaced t, ends included) whose predictive "
                           "functions are drawn and compared.")
    seed: int = 0
    bn_subset: int | None = None
    device: str = "auto"

    def check(self) -> None:
        require(self.frames is None or self.frames >= 1,
                f"--frames must be >= 1 (got {self.frames}); leave it out to record no video")
        require(self.frame_grid >= 2, f"--frame-grid must be >= 2 grid points per axis (got {self.frame_grid})")
        require(self.marks >= 2, f"--marks must be >= 2 (got {self.marks}): both endpoints are marked")
        require(self.frames is None or self.method == "curve",
                "--frames records the plane of a trained curve: use it with --method curve")
        require(self.curve in ("bezier", "polychain"),
                f"--curve must be bezier or polychain (got '{self.curve}'); the line is always evaluated as the "
                "baseline")
        require(self.bends >= 1, f"--bends must be >= 1 (got {self.bends})")
        require(self.points >= 2, f"--points must be >= 2 so that both endpoints are evaluated (got {self.points})")
        require(1 <= self.t_per_batch <= self.batch_size,
                f"--t-per-batch must be between 1 and the batch size {self.batch_size} (got {self.t_per_batch})")
        require(self.epochs >= 0, f"--epochs must be >= 0 (got {self.epochs})")
        require(self.schedule in SCHEDULES, f"--schedule must be one of {', '.join(SCHEDULES)}")
        require(self.method in ("curve", "neb"), f"--method must be curve or neb (got '{self.method}')")
        require(self.neb_pivots >= 1 and self.neb_rounds >= 1 and self.neb_insert >= 0,
                "--neb-pivots and --neb-rounds must be >= 1 and --neb-insert >= 0")
        require(self.spring >= 0, f"--spring must be >= 0 (got {self.spring})")


@dataclass
class ConnectResult:
    """What :func:`connect` returns: the trained curve, the line baseline and run.json's contents."""

    curve: Curve
    line: Line
    evaluation: dict
    history: list = field(default_factory=list)
    out: Path | None = None

    @property
    def summary(self) -> dict:
        return self.evaluation["summary"]


# ------------------------------------------------------------------------------------------ user data
class DataLoaderSplit:
    """A user's ``torch.utils.data.DataLoader`` seen as a lowloss split.

    The loader's own batch size, order and transforms are used (lowloss' ``batch_size``/shuffling do not
    apply); batches are ``(x, y, ...)`` tuples and are moved to the requested device.
    """

    def __init__(self, loader):
        self.loader = loader

    def __len__(self) -> int:
        return len(self.loader.dataset)

    def num_batches(self, batch_size: int, drop_last: bool = False) -> int:
        return len(self.loader)

    def subset(self, n: int, seed: int = 0):
        return self

    def to(self, device):
        return self

    def batches(self, batch_size: int, *, shuffle: bool = False, generator=None, device=None, augment: bool = False,
                drop_last: bool = False):
        for batch in self.loader:
            if not isinstance(batch, (tuple, list)) or len(batch) < 2:
                raise LowlossError("the DataLoader must yield (inputs, targets) pairs")
            x, y = batch[0], batch[1]
            if device is not None:
                x, y = x.to(device), y.to(device)
            yield x, y


def as_dataset(data, test=None, num_classes: int | None = None) -> Dataset:
    """A lowloss Dataset from a Dataset, a (train_loader, test_loader) pair, or a train DataLoader (+ `test`)."""
    if isinstance(data, Dataset):
        return data
    if isinstance(data, (tuple, list)) and len(data) == 2 and test is None:
        data, test = data
    if not isinstance(data, torch.utils.data.DataLoader):
        raise LowlossError("data must be a lowloss Dataset (lowloss.load_dataset), a torch DataLoader, or a "
                           f"(train_loader, test_loader) pair; got {type(data).__name__}")
    if test is None:
        raise LowlossError("pass the test DataLoader too (test=... or data=(train_loader, test_loader)): the "
                           "path is evaluated on train and test data")
    x0, y0 = next(iter(data))[:2]
    if num_classes is None:
        if y0.dtype.is_floating_point:
            raise LowlossError("connect needs classification targets (integer labels); got float targets")
        num_classes = int(max(int(b[1].max()) for b in data)) + 1
    return Dataset("user", DataLoaderSplit(data), DataLoaderSplit(test), tuple(x0.shape[1:]), int(num_classes),
                   meta={"source": "user DataLoader"})


def _as_vector(w, model: nn.Module, name: str) -> torch.Tensor:
    if isinstance(w, nn.Module):
        w = flatten(w)
    if not isinstance(w, torch.Tensor):
        raise LowlossError(f"{name} must be a flat parameter vector (lowloss.flatten(model)) or an nn.Module")
    w = w.detach().reshape(-1)
    p = num_params(model)
    if w.numel() != p:
        raise LowlossError(f"{name} has {w.numel()} entries but the model has {p} trainable parameters: the "
                           "endpoints must come from the model's architecture")
    dev = next((q.device for q in model.parameters()), w.device)
    return w.to(device=dev, dtype=next(model.parameters()).dtype)


# ------------------------------------------------------------------------------------------ metrics
def barrier(t, losses) -> float:
    """max_t [L(t) - ((1-t) L(0) + t L(1))]: the height of the path above the chord between its ends."""
    t = torch.as_tensor(t, dtype=torch.float64)
    loss = torch.as_tensor(losses, dtype=torch.float64)
    chord = (1 - t) * loss[0] + t * loss[-1]
    return float((loss - chord).max())


def path_summary(t, res: dict) -> dict:
    return {"max_train_loss": float(max(res["train_loss"])), "max_test_error": float(max(res["test_error"])),
            "barrier": barrier(t, res["train_loss"])}


def _chunk_size(p: int, k: int) -> int:
    """Points per call of the engine: all of them for small models, fewer when [K, P] would be large."""
    return max(1, min(k, (256 * 2**20) // max(4 * p, 1), 64))


def evaluate_path(model: nn.Module, path: Curve, t: torch.Tensor, data: Dataset, probs_a: torch.Tensor,
                  labels: torch.Tensor, *, done: dict | None = None, on_chunk=None, bar=None,
                  bn_subset: int | None = None, forward: Forward | None = None) -> dict:
    """Train/test loss and error at each t (BN recomputed per point) and the {w_A, phi(t)} ensemble.

    `done` holds lists already computed (resumed evaluation); `on_chunk(res)` is called after each chunk.
    """
    res = {k: list((done or {}).get(k, [])) for k in PATH_KEYS}
    start = len(res["train_loss"])
    chunk = _chunk_size(path.control(0).numel(), len(t))
    for s in range(start, len(t), chunk):
        with torch.no_grad():
            vecs = path.points(t[s:s + chunk, None].to(path.device)).detach()
        r = evaluate_vectors(model, vecs, data, return_probs=("test",), bn_subset=bn_subset, forward=forward)
        for k in ("train_loss", "train_error", "test_loss", "test_error"):
            res[k].extend(float(v) for v in r[k])
        for pk in r["probs"]["test"]:
            ens = (probs_a + pk.double()) / 2  # the ensemble averages probabilities
            res["ensemble_test_error"].append(1.0 - M.accuracy(ens, labels))
            res["ensemble_test_nll"].append(M.nll(ens, labels))
        if bar is not None:
            bar.update(len(vecs))
        if on_chunk is not None:
            on_chunk(res)
    return res


# ------------------------------------------------------------------------------------------ method
def fit(config: Config, inputs, run_dir: RunDir, *, quiet: bool = False, model: nn.Module | None = None,
        w_a: torch.Tensor | None = None, w_b: torch.Tensor | None = None, data: Dataset | None = None,
        forward: Forward | None = None) -> dict:
    """Train the curve between RUN_A and RUN_B (or, from Python, between `w_a` and `w_b` of `model` on
    `data`), evaluate it against the line and write the run directory. Returns run.json's contents."""
    config.check()
    if inputs:
        a, b = load_runs(inputs, device=config.device)
        if torch.equal(a.vector, b.vector):
            raise LowlossError(f"{inputs[0]} and {inputs[1]} hold identical weights: connect two different modes "
                               "(e.g. lowloss train --seed 0 and --seed 1)")
        model, w_a, w_b, data = a.model, a.vector, b.vector, a.data
    elif model is None or w_a is None or w_b is None or data is None:
        raise LowlossError("connect needs two run directories RUN_A RUN_B (or, from Python, model, w_a, w_b and "
                           "data: lowloss.connect)")
    regression = data.num_classes <= 0
    w_a, w_b = _as_vector(w_a, model, "w_a"), _as_vector(w_b, model, "w_b")
    device = w_a.device
    data = data.to(device)
    runs = input_record(inputs) or []

    gen = seed_everything(config.seed)
    alignment = None
    if config.align:  # B permuted to match A: the same function, another point of weight space
        from .align import align_vector

        w_b, alignment = align_vector(model, w_a, w_b, data.input_shape, seed=config.seed)
    path = make_curve(config.curve, w_a, w_b, config.bends, fix_endpoints=not config.free_endpoints)
    fit_cfg = FitConfig(epochs=config.epochs, lr=config.lr, momentum=config.momentum, wd=config.wd,
                        batch_size=config.batch_size, schedule=config.schedule, coords_per_batch=config.t_per_batch)
    t0 = time.time()
    if config.method == "neb":
        from ..subspaces.neb import NEBConfig, neb_path

        neb_cfg = NEBConfig(pivots=config.neb_pivots, rounds=config.neb_rounds, insert=config.neb_insert,
                            epochs=max(1, -(-config.epochs // config.neb_rounds)), lr=config.lr,
                            momentum=config.momentum, wd=config.wd, spring=config.spring,
                            batch_size=config.batch_size, bn_subset=config.bn_subset)
        path, history, cost = neb_path(model, w_a, w_b, data, neb_cfg, generator=gen, state_file=run_dir.file(NEB_FILE),
                                       resume=run_dir.resuming, quiet=quiet, device=device, forward=forward)
    else:
        recorder = None
        if config.frames:  # the curve's controls at N steps; their planes are evaluated after training
            per_epoch = data.train.num_batches(config.batch_size)
            recorder = FrameRecorder(path, run_dir.file(FRAME_DIR),
                                     frame_steps(config.epochs * per_epoch, config.frames), per_epoch)
        history = fit_subspace(model, path, data, fit_cfg, generator=gen, run_dir=run_dir.path,
                               resume=run_dir.resuming, quiet=quiet, desc=f"connect {run_dir.path.name}",
                               device=device, forward=forward, after_step=recorder)
        cost = {"gradient_evaluations": config.epochs * data.train.num_batches(config.batch_size)}
    train_seconds = time.time() - t0
    save_curve(run_dir.file(CURVE_FILE), path, runs, config.free_endpoints)

    t1 = time.time()
    evaluate = _evaluate_regression if regression else _evaluate
    result = evaluate(model, path, Line(w_a, w_b), data, config, run_dir, quiet, forward)
    result.update({"runs": runs, "history": history, "num_params": int(w_a.numel()), "data": data.describe(),
                   "timing": {"train_seconds": train_seconds, "eval_seconds": time.time() - t1,
                              "points_evaluated": 2 * config.points + 2},
                   "cost": {**cost, "unit": "gradient evaluations: one network's forward and backward pass over "
                                             f"one minibatch of {config.batch_size} examples"}})
    if alignment is not None:
        result["alignment"] = alignment
    if config.frames:
        result["frames"] = record_frames(model, data, path.kind, run_dir, frames=config.frames,
                                         grid=config.frame_grid, bn_subset=config.bn_subset, quiet=quiet,
                                         threads=1 if regression and device.type == "cpu" else None)
    return run_dir.finish(result, remove=(PARTIAL_FILE, NEB_FILE, *snapshot_files(config.frames)))


def _evaluate(model, path, line, data, cfg: Config, run_dir: RunDir, quiet: bool, forward) -> dict:
    """Endpoints, then the curve and the line at cfg.points values of t; resumable through a partial file."""
    t = torch.linspace(0, 1, cfg.points, dtype=torch.float64)
    partial = {}
    if run_dir.resuming and run_dir.file(PARTIAL_FILE).exists():
        try:
            partial = run_dir.read_json(PARTIAL_FILE)
        except LowlossError:  # a damaged partial evaluation is recomputed, not trusted
            partial = {}
        partial = partial if isinstance(partial, dict) else {}
    total = 2 + 2 * cfg.points
    bar = progress(total=total, desc="evaluate path", quiet=quiet, unit="pt")
    try:
        ends = evaluate_vectors(model, torch.stack([line.control(0), line.control(1)]), data,
                                return_probs=("test",), bn_subset=cfg.bn_subset, forward=forward)
        bar.update(2)
        probs_a, probs_b = (p.double() for p in ends["probs"]["test"])
        labels = ends["labels"]["test"]
        pair = (probs_a + probs_b) / 2
        endpoints = {name: {k: float(ends[k][i]) for k in ("train_loss", "train_error", "test_loss", "test_error")}
                     for i, name in enumerate(("w_a", "w_b"))}
        result = {"t": t.tolist()}

        def save_partial(name):
            def f(res):
                run_dir.write_json(PARTIAL_FILE, {**{k: v for k, v in result.items() if k != "t"}, name: res})
            return f

        for name, p in (("curve", path), ("line", line)):
            done = partial.get(name)
            if done:
                bar.update(len(done["train_loss"]))
            result[name] = evaluate_path(model, p, t, data, probs_a, labels, done=done, on_chunk=save_partial(name),
                                         bar=bar, bn_subset=cfg.bn_subset, forward=forward)
    finally:
        bar.close()
    result["summary"] = {name: path_summary(t, result[name]) for name in ("curve", "line")}
    result["endpoint_ensemble"] = {"test_error": 1.0 - M.accuracy(pair, labels), "test_nll": M.nll(pair, labels)}
    result["endpoints"] = endpoints
    result["bn"] = ({"recomputed": True, "subset": cfg.bn_subset or "all training data"}
                    if has_batchnorm(model)
                    else {"recomputed": False})
    return result


# ------------------------------------------------------------------------------------------ regression
REGRESSION_KEYS = ("train_loss", "train_error", "test_loss", "test_error")
FUNCTIONS_FILE = "functions.npz"
PATH_PLANE_FILE = "path_plane.npz"
PATH_PLANE_DIR = "path_plane_chunks"
FUNCTION_POINTS = 400  # inputs of the grid on which the predictive functions are drawn
AWAY_FROM_DATA = 0.25  # an input farther than this from every training input is "away from the data"


def function_spread(functions: np.ndarray, away: np.ndarray) -> dict:
    """Mean over inputs of the pointwise standard deviation of functions [M, X] across the M of them, near the
    training data and away from it (`away`: [X] bool)."""
    sd = functions.std(0)
    return {"near_data": float(sd[~away].mean()) if (~away).any() else None,
            "away_from_data": float(sd[away].mean()) if away.any() else None}


def _evaluate_regression(model, path, line, data, cfg: Config, run_dir: RunDir, quiet: bool, forward) -> dict:
    """Regression data: train/test loss (MSE, the training objective) and error (RMSE) along the curve and
    the line; for 1-D inputs the predictive functions at the --marks marked t (functions.npz) and their
    spread near and away from the data; the train loss on the plane of the curve (path_plane.npz). On the CPU
    with one intra-op thread: regression networks are tiny, and extra threads only add synchronisation."""
    cpu = path.control(0).device.type == "cpu"
    with torch_threads(1) if cpu else contextlib.nullcontext():
        return _regression_evaluation(model, path, line, data, cfg, run_dir, quiet, forward)


def _regression_evaluation(model, path, line, data, cfg: Config, run_dir: RunDir, quiet: bool, forward) -> dict:
    t = torch.linspace(0, 1, cfg.points, dtype=torch.float64)
    result: dict = {"t": t.tolist(), "task": "regression"}
    for name, p in (("curve", path), ("line", line)):
        with torch.no_grad():
            vecs = p.points(t[:, None].to(p.device)).detach()
        r = evaluate_vectors(model, vecs, data, bn_subset=cfg.bn_subset, forward=forward)
        result[name] = {k: [float(v) for v in r[k]] for k in REGRESSION_KEYS}
    result["summary"] = {name: {"max_train_loss": float(max(result[name]["train_loss"])),
                                "max_test_loss": float(max(result[name]["test_loss"])),
                                "max_test_error": float(max(result[name]["test_error"])),
                                "barrier": barrier(t, result[name]["train_loss"])} for name in ("curve", "line")}
    result["endpoints"] = {name: {k: result["curve"][k][i] for k in REGRESSION_KEYS}
                           for name, i in (("w_a", 0), ("w_b", -1))}
    result["bn"] = {"recomputed": has_batchnorm(model)}
    controls = path.controls().detach()
    plane = curve_plane(controls)
    marks = torch.linspace(0, 1, cfg.marks, dtype=torch.float64)
    with torch.no_grad():
        mark_vecs = path.points(marks[:, None].to(path.device)).detach()
    mark_eval = evaluate_vectors(model, mark_vecs, data, splits=("train",), bn_subset=cfg.bn_subset, forward=forward)
    result["marks"] = {"t": marks.tolist(), "train_loss": [float(v) for v in mark_eval["train_loss"]]}
    if tuple(data.input_shape) == (1,):
        xtr = data.train.x.reshape(-1).double().cpu()
        xte = data.test.x.reshape(-1).double().cpu()
        xg = torch.linspace(float(min(xtr.min(), xte.min())), float(max(xtr.max(), xte.max())), FUNCTION_POINTS,
                            dtype=torch.float64)
        away = ((xg[:, None] - xtr[None]).abs().min(1).values > AWAY_FROM_DATA).numpy()
        xin = xg[:, None].to(device=mark_vecs.device, dtype=mark_vecs.dtype)
        with torch.no_grad():
            line_vecs = line.points(marks[:, None].to(line.device)).detach()
        f_curve = predict_outputs(model, mark_vecs, xin, forward=forward).reshape(cfg.marks, -1).double().cpu().numpy()
        f_line = predict_outputs(model, line_vecs, xin, forward=forward).reshape(cfg.marks, -1).double().cpu().numpy()
        save_npz(run_dir.file(FUNCTIONS_FILE), {
            "x": xg.numpy(), "away": away, "t": marks.numpy(), "curve": f_curve, "line": f_line,
            "train_x": xtr.numpy(), "train_y": data.train.y.reshape(-1).double().cpu().numpy(),
            "test_x": xte.numpy(), "test_y": data.test.y.reshape(-1).double().cpu().numpy(),
            "mark_train_loss": mark_eval["train_loss"].numpy()})
        result["functions"] = {"file": FUNCTIONS_FILE, "points": FUNCTION_POINTS, "away_distance": AWAY_FROM_DATA,
                               "away_fraction": float(away.mean()),
                               "spread": {"curve": function_spread(f_curve, away),
                                          "line": function_spread(f_line, away)}}
    # the plane of the curve (through the endpoints and the middle control point), as `lowloss plane --curve`
    tc, pts = curve_points(path.kind, controls, cfg.points)
    curve_xy, ctrl_xy = plane.project(pts).cpu().numpy(), plane.project(controls).cpu().numpy()
    xs, ys = grid_axes(np.concatenate([curve_xy, ctrl_xy]), cfg.frame_grid, FRAME_MARGIN, FRAME_MIN_ASPECT)
    arrays, _engine, secs = plane_grid(model, data, plane, xs, ys, run_dir.file(PATH_PLANE_DIR),
                                       bn_subset=cfg.bn_subset, quiet=quiet, desc="plane of the curve")
    n = controls.shape[0]
    save_npz(run_dir.file(PATH_PLANE_FILE), {
        "x": xs, "y": ys, "train_loss": arrays["train_loss"], "curve_coords": curve_xy, "curve_t": tc.numpy(),
        "control_coords": ctrl_xy, "mark_coords": plane.project(mark_vecs).cpu().numpy(), "mark_t": marks.numpy(),
        "point_coords": ctrl_xy[[0, n - 1, n // 2]]})
    shutil.rmtree(run_dir.file(PATH_PLANE_DIR), ignore_errors=True)
    result["path_plane"] = {"file": PATH_PLANE_FILE, "grid": cfg.frame_grid, "seconds": secs,
                            "curve_max_distance_from_plane": float(plane.distance(pts).max())}
    return result


def summary(info: dict) -> str:
    if info.get("task") == "regression":
        s = info["summary"]
        lines = [f"{name:>5}: barrier {s[name]['barrier']:.4g}  max train loss (MSE) {s[name]['max_train_loss']:.4g}"
                 f"  max test RMSE {s[name]['max_test_error']:.4g}" for name in ("curve", "line")]
        sp = (info.get("functions") or {}).get("spread", {}).get("curve")
        if sp and sp.get("away_from_data") is not None:
            lines.append(f"functions at {len(info['marks']['t'])} marked t: mean std {sp['away_from_data']:.4g} away "
                         f"from the data, {sp['near_data']:.4g} near it")
        return "\n".join(lines)
    s, pair = info["summary"], info["endpoint_ensemble"]
    lines = [f"{name:>5}: barrier {s[name]['barrier']:.4f}  max train loss {s[name]['max_train_loss']:.4f}  "
             f"max test error {100 * s[name]['max_test_error']:.2f}%" for name in ("curve", "line")]
    lines.append(f"ensemble {{w_A, w_B}}: test error {100 * pair['test_error']:.2f}%  NLL {pair['test_nll']:.4f}")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------ files
def save_curve(path: Path, curve: Curve, runs, free_endpoints: bool = False) -> None:
    """control_0..control_{n-1} as flat [P] float32 vectors; metadata curve, num_bends, runs (JSON list)."""
    tensors = {f"control_{i}": curve.control(i).detach().float() for i in range(curve.num_controls)}
    save_tensors(path, tensors, {"curve": curve.kind, "num_bends": str(curve.num_bends), "runs": json.dumps(runs),
                               "free_endpoints": json.dumps(bool(free_endpoints))})


def _read_curve(directory, device=None, *, controls: bool = True) -> tuple[Curve | None, list[str]]:
    """The one reader of curve.safetensors: (the curve, or None without `controls`; the recorded runs)."""
    f = Path(directory) / CURVE_FILE
    if not f.exists():
        raise LowlossError(f"{directory} has no {CURVE_FILE}: it is not a finished `lowloss connect` run (an "
                           "interrupted one continues with the same command and --resume)")
    if not controls:
        return None, meta_json(load_tensor_metadata(f), "runs", f, [])
    tensors, meta = load_tensors(f, device)
    n = int(meta.get("num_bends", len(tensors) - 2)) + 2
    try:
        points = [tensors[f"control_{i}"] for i in range(n)]
    except KeyError as e:
        raise LowlossError(f"{f} lacks {e}: it was not written by lowloss connect") from None
    kind = meta.get("curve", "bezier")
    free = bool(meta_json(meta, "free_endpoints", f, False))
    if kind == "line":
        curve = Line(points[0], points[-1])
    else:
        curve = curve_class(kind)(points, [free] + [True] * (n - 2) + [free])
    return curve, meta_json(meta, "runs", f, [])


def load_controls(directory, device=None) -> Curve:
    """Just the curve of a `lowloss connect` directory (no run needed)."""
    return _read_curve(directory, device)[0]


def curve_runs(directory) -> list[str]:
    """The run directories a curve was trained between, as recorded in its curve.safetensors."""
    return _read_curve(directory, controls=False)[1]


def load_curve(directory, device=None):
    """Open a `lowloss connect` directory: (the trained curve as a subspace, the Run of RUN_A).

    The curve's controls are on the run's device; the Run gives the module, the data and w_A.
    """
    directory = Path(directory)
    curve, runs = _read_curve(directory)
    if not runs:
        raise LowlossError(f"{directory / CURVE_FILE} records no run directories (it was made with the Python API "
                           "on a user model): load the controls with lowloss.methods.connect.load_controls")
    run_a = find_run(runs[0], directory)
    run = load_run(run_a, device=device)
    if run.vector.numel() != curve.control(0).numel():
        raise LowlossError(f"{run_a} has {run.vector.numel()} parameters but the curve in {directory} has "
                           f"{curve.control(0).numel()}: the run directory was replaced")
    return curve.to(run.vector.device), run


def load(path, device=None):
    """A finished `lowloss connect` directory: (the trained curve, the Run of RUN_A)."""
    read_result(path, "connect", needs=(CURVE_FILE,))
    return load_curve(path, device=device)


# ------------------------------------------------------------------------------------------ Python API
def connect(model: nn.Module, w_a, w_b, data, *, config: Config | None = None, out=None, resume: bool = False,
            quiet: bool = False, forward: Forward | None = None, test=None, num_classes: int | None = None,
            **overrides) -> ConnectResult:
    """Train a curve from `w_a` to `w_b` on `data` and evaluate it against the line segment.

    `model` is any ``nn.Module`` (never modified); `w_a`, `w_b` are flat parameter vectors
    (``lowloss.flatten(net)``) or modules of the same architecture. `data` is a lowloss Dataset, a
    ``(train_loader, test_loader)`` pair, or a train DataLoader with `test=` (classification). `forward`
    customises the call for models that do not take ``model(x)``. Settings are `config` (a
    :class:`Config`) and/or its fields as keywords (``curve="polychain", bends=3``); the device is the
    model's.

    With `out` the run directory is written as by ``lowloss connect`` (figures: ``lowloss.run`` or
    :func:`lowloss.plots.figures.draw`); without it the run happens in a temporary directory. Returns a
    :class:`ConnectResult`: the curve as saved in curve.safetensors (float32 control points on the model's
    device), the line, run.json's contents (``evaluation``) and the training history.
    """
    config = replace(config or Config(), **overrides)
    config.check()
    data = as_dataset(data, test, num_classes)
    w_a, w_b = _as_vector(w_a, model, "w_a"), _as_vector(w_b, model, "w_b")
    if out is None:
        with tempfile.TemporaryDirectory(prefix="lowloss-connect-") as tmp:
            res = connect(model, w_a, w_b, data, config=config, out=tmp, quiet=quiet, forward=forward)
        res.out = None
        return res
    info = run_method(sys.modules[__name__], config, None, out, resume=resume, quiet=quiet, model=model, w_a=w_a,
                      w_b=w_b, data=data, forward=forward)
    curve = load_controls(out, device=w_a.device).to(w_a.dtype)
    return ConnectResult(curve, Line(curve.control(0), curve.control(curve.num_controls - 1)), info,
                         info.get("history", []), Path(out))


__all__ = ["Config", "ConnectResult", "as_dataset", "barrier", "connect", "curve_runs", "evaluate_path", "fit",
           "load", "load_controls", "load_curve", "save_curve", "summary"]
