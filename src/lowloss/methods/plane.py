"""The loss surface on the plane through RUN_A RUN_B RUN_C, through a curve (--curve DIR), or through a face
of a simplex (--simplex DIR --face I J K).

The plane through a curve goes through its two endpoints and its middle control point (Garipov et al.)
and shows the curve projected on it; the plane of a simplex face (Benton et al.) shows the simplex's
edges. Gram-Schmidt basis u = (b-a)/|b-a|, v = (c-a)_perp/|..|; every grid point w(x, y) = origin + x u +
y v is computed from the origin and evaluated with BN statistics recomputed per point. The G x G grid
covers the projected points' bounding box plus --margin per side. It is computed in chunks saved
atomically as they finish (chunks/), so an interrupted plane continues where it stopped when the same
command is run again with --resume.

With --adaptive only part of the lattice is evaluated: a coarse sub-lattice (spacing a power of two), then,
level by level, the centre and edge midpoints of every cell still open; a cell is split and refined
further, down to the G x G lattice, while the error predicted for interpolating its halves exceeds --tol in
log10 loss (error rates: --error-tol + a relative part) for some metric: the miss of its corners' bilinear
interpolation at those midpoints times the rate at which that miss shrinks per halving (1/4 on a smooth
surface, measured against the cell's parent where it shrinks more slowly). Every other point is
interpolated (Coons patches, continuous across cells). The lattice points under the anchors, the curve and the
simplex's edges are always evaluated, and so is the minimum of each metric with its eight neighbours.

Writes plane.npz (axes x, y; one [G, G] array per metric indexed [iy, ix]; the boolean mask 'evaluated';
projected points, curve and simplex; origin and basis norms), plane_basis.safetensors (origin, u, v),
run.json (sources, the three points' metrics and coordinates, ranges, timing, points per second, the
engine's plan; with --adaptive the evaluated fraction and points per round) and plane_<metric>.png (with
--adaptive also plane_evaluated.png).
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..config import option, replace, require, split_list
from ..engine.evaluate import evaluate_vectors
from ..engine.executor import EXECUTORS, make_executor
from ..rundir import RunDir, load_npz, load_tensors, read_result, run_method, save_npz
from ..subspaces.adaptive import MIN_POINTS, polyline_indices, refine
from ..subspaces.curves import curve_coefficients
from ..subspaces.plane import ORIGINS, Plane, grid_axes
from ..utils import LowlossError, echo, progress, seed_everything
from .plane_grid import CHUNK_DIR, STATE_FILE, GridStore, PlaneTask
from .plane_inputs import (
    PlaneInputs,
    inputs_from_curve,
    inputs_from_random,
    inputs_from_runs,
    inputs_from_simplex,
    simplex_edges,
)

RESUME_BY_DEFAULT = True  # re-running a plane continues from its saved chunks
INPUTS = {"metavar": "RUN_A RUN_B RUN_C", "nargs": -1, "required": False}
METRICS = ("train_loss", "train_error", "test_loss", "test_error")
PLANE_FILE = "plane.npz"
BASIS_FILE = "plane_basis.safetensors"


def _face(value) -> tuple[int, ...] | None:
    """``("0", "1", "2")`` -> ``(0, 1, 2)``; a one-line error for anything that is not an integer."""
    if value is None:
        return None
    try:
        return tuple(int(i) for i in value)
    except (TypeError, ValueError):
        raise LowlossError(f"--face needs three integer vertex indices, got {value}") from None


@dataclass
class Config:
    """One plane: where it lies, how finely it is sampled, what is measured."""

    curve: str | None = option(None, "A curve run directory (curve.safetensors): the plane through its endpoints "
                                     "and middle control point, with the curve projected on top.", metavar="DIR")
    simplex: str | None = option(None, "A simplex run directory (simplex.safetensors): the plane through the "
                                       "vertices of --face.", metavar="DIR")
    face: tuple[int, int, int] | None = option(None, "Three vertex indices of the --simplex that span the plane.",
                                               metavar="I J K", nargs=3, parse=_face)
    grid: int = option(21, "Grid points per axis (G x G in all).")
    margin: float = option(0.2, "Margin around the projected points' bounding box, as a fraction of its extent "
                                "per side.")
    min_aspect: float = option(0.5, "Widen the shorter side of the grid to at least this fraction of the longer "
                                    "(0: the plain bounding box plus margins).")
    metrics: tuple[str, ...] = option(METRICS, "Comma-separated subset of train_loss, train_error, test_loss, "
                                               "test_error (only the splits needed are evaluated).", parse=split_list)
    bn_subset: int | None = None
    origin: str = option("a", "Plane origin: the first point (Garipov et al.) or the centroid of the three "
                              "(Benton et al.).", choices=ORIGINS)
    curve_points: int = option(61, "Points of the projected curve (equally spaced in t).")
    random: bool = option(False, "Li et al.'s random plane through one RUN: w + x d1 + y d2 with two seeded (--seed) "
                                 "random directions on [-span, span] per axis (see docs/width.md).")
    filter_norm: bool = option(False, "With --random: filter-normalised directions (each filter / neuron scaled to "
                                      "the weights' filter norm; biases and BN parameters: zero); without it each "
                                      "direction is scaled to |w|.")
    dim: int = option(2, "With --random: 2 (a G x G plane) or 1 (a 1-D slice along d1: a G x 1 grid).")
    span: float = option(1.0, "With --random: the grid's half-width, in units of the directions.")
    memory_budget: float | None = option(None, "MiB of activations the evaluation engine may hold at once "
                                               "(default: 1024 on CPU, half the free GPU memory).")
    chunk_points: int | None = option(None, "Grid points per saved chunk (default: adapted to about 20 s of "
                                            "work per chunk).")
    seed: int = 0
    device: str = "auto"
    batch_size: int | None = option(None, "BN statistics batch (None: the whole training set when it fits; see "
                                          "evaluate_vectors).", cli=False)
    chunk_seconds: float = option(20.0, "Seconds of work per saved chunk when chunk_points is None.", cli=False)
    executor: str = option("local", choices=EXECUTORS)
    ray_address: str | None = None
    adaptive: bool = option(False, "Evaluate a coarse sub-lattice, refine only the cells where the surface is not "
                                   "yet known to --tol, interpolate every other grid point (plane.npz's "
                                   "'evaluated' marks the evaluated ones).")
    tol: float = option(0.01, "Adaptive tolerance on the interpolation error: a cell is refined while the error "
                              "predicted for its halves (its corners' miss at its centre and edge midpoints times "
                              "the miss's rate per halving, 1/4 on a smooth surface) exceeds this in log10 loss (or, "
                              "for error rates, --error-tol + tol * ln(10) * error).")
    error_tol: float = option(0.01, "Adaptive absolute slack for error rates (they move in steps of one "
                                    "example), added to the relative part of --tol.")
    coarse_cells: int = option(16, "Adaptive: the coarse lattice's spacing is the largest power of two that leaves "
                                   "at least this many cells per axis.", cli=False)

    def check(self) -> None:
        self.metrics = split_list(self.metrics)
        self.face = _face(self.face)
        _splits_for(self.metrics)
        require(self.grid >= 2, f"--grid {self.grid} is too small: at least 2 points per axis")
        require(self.tol > 0, f"--tol must be > 0 (got {self.tol}); for example --tol 0.01")
        require(self.error_tol >= 0, f"--error-tol must be >= 0 (got {self.error_tol})")
        require(self.coarse_cells >= 1, f"coarse_cells must be >= 1 (got {self.coarse_cells})")
        require(not self.adaptive or self.grid >= MIN_POINTS,
                f"--adaptive needs --grid >= {MIN_POINTS} to refine (got {self.grid}): use a larger --grid or drop "
                "--adaptive")
        require(self.margin >= 0, f"--margin {self.margin} must be >= 0")
        require(self.min_aspect >= 0, f"--min-aspect {self.min_aspect} must be >= 0")
        require(self.origin in ORIGINS, f"--origin must be one of {', '.join(ORIGINS)} (got '{self.origin}')")
        require(self.curve_points >= 2, f"--curve-points must be >= 2 (got {self.curve_points})")
        require(self.memory_budget is None or self.memory_budget > 0,
                f"--memory-budget must be positive MiB (got {self.memory_budget})")
        require(self.chunk_points is None or self.chunk_points >= 1,
                f"--chunk-points must be >= 1 (got {self.chunk_points})")
        require(self.curve is None or self.simplex is None, "give either --curve DIR or --simplex DIR, not both")
        require(self.simplex is None or self.face is not None, "--simplex needs --face I J K (three vertex indices)")
        require(self.face is None or self.simplex is not None, "--face only applies with --simplex DIR")
        require(self.face is None or (len(self.face) == 3 and len(set(self.face)) == 3 and min(self.face) >= 0),
                f"--face needs three different vertex indices >= 0, got {self.face}")
        require(self.dim in (1, 2), f"--dim must be 1 or 2 (got {self.dim})")
        require(self.span > 0, f"--span must be positive (got {self.span})")
        require(self.random or not self.filter_norm, "--filter-norm only applies with --random")
        require(self.random or self.dim == 2, "--dim 1 only applies with --random")
        require(self.dim == 2 or not self.adaptive, "--adaptive refines 2-D grids: drop it with --dim 1")
        require(not self.random or (self.curve is None and self.simplex is None),
                "--random takes one run directory, not --curve / --simplex")


def check_inputs(config: Config, inputs) -> None:
    """Exactly one of: three run directories, one run with --random, --curve DIR, --simplex DIR --face I J K."""
    runs = list(inputs or ())
    if config.random:
        require(len(runs) == 1, f"--random needs exactly one run directory (got {len(runs)})")
        return
    chosen = sum([bool(runs), config.curve is not None, config.simplex is not None])
    require(chosen == 1, "give exactly one of: three run directories, --curve DIR, or --simplex DIR --face I J K")
    require(not runs or len(runs) == 3,
            f"a plane needs exactly three runs (got {len(runs)}); or use --curve / --simplex")


def plane_inputs(config: Config, inputs) -> PlaneInputs:
    """The anchors the config and the input runs name (three runs, --curve or --simplex/--face)."""
    check_inputs(config, inputs)
    if config.random:
        return inputs_from_random(list(inputs)[0], config)
    if inputs:
        return inputs_from_runs(list(inputs), device=config.device)
    if config.curve is not None:
        return inputs_from_curve(config.curve, device=config.device, num_points=config.curve_points)
    return inputs_from_simplex(config.simplex, config.face, device=config.device)


# ---------------------------------------------------------------------------------------------- compute
def _splits_for(metrics) -> tuple[str, ...]:
    bad = [m for m in metrics if m not in METRICS]
    if bad or not metrics:
        raise LowlossError(f"unknown --metrics {bad or '(none)'}; choose from {', '.join(METRICS)}")
    return tuple(s for s in ("train", "test") if any(m.startswith(s + "_") for m in metrics))


def _fingerprint(plane: Plane, xs, ys, cfg: Config, sources: dict) -> dict:
    """What the saved chunks belong to: the grid and the plane itself (checksums of origin, u, v)."""
    o, u, v = (t.double() for t in (plane.origin, plane.u, plane.v))
    w = torch.linspace(-1, 1, o.numel(), dtype=torch.float64, device=o.device)
    return {"grid": cfg.grid, "margin": cfg.margin, "min_aspect": cfg.min_aspect, "metrics": list(cfg.metrics),
            "bn_subset": cfg.bn_subset, "origin": cfg.origin, "batch_size": cfg.batch_size, "sources": sources,
            "x": [float(xs[0]), float(xs[-1])], "y": [float(ys[0]), float(ys[-1])],
            "checksums": [round(float(t @ w), 6) for t in (o, u, v)]}


def fit(config: Config, inputs, run_dir: RunDir, *, quiet: bool = False, anchors: PlaneInputs | None = None,
        stop_after_chunks: int | None = None) -> dict:
    """Evaluate the grid (continuing from saved chunks when resuming) and write the run directory. Returns
    run.json's contents, or ``{"finished": False, "computed", "total"}`` when stopped early on purpose by
    `stop_after_chunks`. `anchors` (Python) gives the plane's points directly instead of `inputs`."""
    config.check()
    seed_everything(config.seed)
    if anchors is None:
        anchors = plane_inputs(config, inputs)
    cfg = config
    memory_budget = int(cfg.memory_budget * 2**20) if cfg.memory_budget else None
    splits = _splits_for(cfg.metrics)
    model, data = anchors.model, anchors.data
    a, b, c = anchors.anchors
    plane = anchors.plane if anchors.plane is not None else Plane.through(a, b, c, origin=cfg.origin)
    points = torch.stack([a, b, c])
    anchor_xy = plane.project(points).cpu().numpy()
    overlay = [anchor_xy]
    curve_xy = simplex_xy = None
    if anchors.curve is not None:
        curve_xy = plane.project(anchors.curve["points"]).cpu().numpy()
        overlay.append(curve_xy)
    if anchors.simplex is not None:
        simplex_xy = plane.project(anchors.simplex["vertices"]).cpu().numpy()
        overlay.append(simplex_xy)
    if anchors.axes is not None:
        xs, ys = (np.asarray(ax, dtype=np.float64) for ax in anchors.axes)
    else:
        xs, ys = grid_axes(np.concatenate(overlay), cfg.grid, cfg.margin, cfg.min_aspect)
    total = len(xs) * len(ys)
    fp = _fingerprint(plane, xs, ys, cfg, anchors.sources)

    chunk_dir = run_dir.file(CHUNK_DIR)
    chunk_dir.mkdir(parents=True, exist_ok=True)
    state = f"{CHUNK_DIR}/{STATE_FILE}"
    try:
        before = run_dir.read_json(state) if run_dir.file(state).exists() else None
    except LowlossError:  # a damaged record: the chunks beside it cannot be trusted, recompute them
        echo(f"{run_dir.file(state)} is damaged; recomputing the plane's saved chunks", quiet)
        for f in chunk_dir.glob("c_*.npz"):
            f.unlink(missing_ok=True)
        before = None
    if before is not None and before != fp:
        raise LowlossError(f"{run_dir.path} holds an interrupted plane through other points or with other "
                           "settings: rerun with the original inputs, or pass --fresh to restart")
    require(not cfg.adaptive or min(len(xs), len(ys)) >= MIN_POINTS,
            f"--adaptive needs at least {MIN_POINTS} grid points per axis (got {len(xs)}x{len(ys)}): use a larger "
            "grid or drop --adaptive")
    run_dir.write_json(state, fp)

    store = GridStore(chunk_dir, total, cfg.metrics, quiet=quiet, desc=f"plane {len(xs)}x{len(ys)}")
    store.executor = make_executor(cfg.executor, cfg.ray_address, device=a.device)
    resumed = store.resumed
    if resumed:
        echo(f"resuming {run_dir.path}: {resumed}/{total} grid points already computed", quiet)
    task = PlaneTask(model, data, plane, xs, ys, tuple(cfg.metrics), splits, cfg.bn_subset, cfg.batch_size,
                     memory_budget)
    t_start = time.perf_counter()
    adaptive = None
    if cfg.adaptive:
        exact = _exact_points(xs, ys, anchor_xy, curve_xy, simplex_xy, anchors.simplex)
        adaptive = _adaptive_grid(cfg, store, task, (len(ys), len(xs)), exact, stop_after_chunks, quiet)
        finished = adaptive is not None
    else:
        finished = store.compute(None, task, chunk_points=cfg.chunk_points, chunk_seconds=cfg.chunk_seconds,
                                 stop_after_chunks=stop_after_chunks)
    elapsed = time.perf_counter() - t_start
    if not finished:
        return {"finished": False, "computed": int(store.done.sum()), "total": total}
    engine, seconds_before = store.engine, store.seconds_before

    computed_now = int(store.done.sum()) - resumed
    anchor_metrics = evaluate_vectors(model, points, data, splits=splits, bn_subset=cfg.bn_subset,
                                      batch_size=cfg.batch_size, memory_budget=memory_budget)
    if adaptive is None:
        arrays, evaluated = store.arrays((len(ys), len(xs))), np.ones((len(ys), len(xs)), bool)
    else:
        arrays, evaluated = adaptive["values"], adaptive["evaluated"]
    if anchors.plane is not None:  # a given basis (random directions): its own lengths
        basis_norms = np.array([float(plane.u.double().norm()), float(plane.v.double().norm())])
    else:
        basis_norms = np.array([float((b - a).double().norm()),
                                float(((c - a).double() - ((c - a).double() @ plane.u.double())
                                       * plane.u.double()).norm())])
    npz = {"x": xs, "y": ys, **arrays, "evaluated": evaluated,
           "point_coords": anchor_xy, "point_labels": np.array(anchors.labels),
           "point_distance": plane.distance(points).cpu().numpy(),
           "origin_norm": np.array(float(plane.origin.double().norm())), "basis_norms": basis_norms}
    if curve_xy is not None:
        npz.update({"curve_coords": curve_xy, "curve_t": anchors.curve["t"].numpy(),
                    "curve_distance": plane.distance(anchors.curve["points"]).cpu().numpy(),
                    "curve_control_coords": plane.project(anchors.curve["controls"]).cpu().numpy()})
    if simplex_xy is not None:
        npz.update({"simplex_coords": simplex_xy, "simplex_edges": np.array(anchors.simplex["edges"], dtype=np.int64),
                    "simplex_labels": np.array(anchors.simplex["labels"]),
                    "simplex_distance": plane.distance(anchors.simplex["vertices"]).cpu().numpy()})
    save_npz(run_dir.file(PLANE_FILE), npz)
    run_dir.save_tensors(BASIS_FILE, {"origin": plane.origin, "u": plane.u, "v": plane.v},
                         {"origin": cfg.origin, "labels": json.dumps(anchors.labels)})
    total_seconds = seconds_before + elapsed
    info = {
        "sources": anchors.sources, "labels": anchors.labels, "fingerprint": fp,
        "points": {lab: {"coords": anchor_xy[i].tolist(),
                         **{m: float(anchor_metrics[m][i]) for m in cfg.metrics}}
                   for i, lab in enumerate(anchors.labels)},
        "basis_norms": basis_norms.tolist(), "origin_norm": float(npz["origin_norm"]),
        "range": {m: [float(np.nanmin(v)), float(np.nanmax(v))] for m, v in arrays.items()},
        "timing": {"seconds": total_seconds, "seconds_this_session": elapsed, "points": int(evaluated.sum()),
                   "points_this_session": computed_now, "resumed_points": resumed,
                   "points_per_second": computed_now / elapsed if elapsed > 0 and computed_now else None},
        "engine": engine, "bn_subset": cfg.bn_subset, "data": data.describe() if hasattr(data, "describe") else None,
        "num_params": int(a.numel()), "grid_shape": [len(xs), len(ys)], "finished": True,
    }
    if adaptive is not None:
        info["adaptive"] = {"tol": cfg.tol, "error_tol": cfg.error_tol, "spacing": adaptive["spacing"],
                            "evaluated": int(evaluated.sum()), "lattice": total,
                            "fraction": float(evaluated.mean()), "exact_points": int(len(exact)),
                            "points_per_round": adaptive["levels"], "cells_refined": adaptive["refined"],
                            "cells_split_by": adaptive["split_by"], "rates": adaptive["rates"],
                            "minimum_rounds": adaptive["minimum_rounds"]}
    if curve_xy is not None:
        info["curve"] = {"kind": anchors.curve["kind"], "points": len(curve_xy),
                         "max_distance_from_plane": float(npz["curve_distance"].max())}
    return run_dir.finish(info, remove=(CHUNK_DIR,))


def _exact_points(xs, ys, anchor_xy, curve_xy, simplex_xy, simplex) -> np.ndarray:
    """Lattice points an adaptive plane evaluates whatever the refinement decides: the points nearest to
    the three anchors, to the projected curve and to the simplex's edges (the lines drawn on the plane)."""
    lines = [anchor_xy[i:i + 1] for i in range(len(anchor_xy))]
    if curve_xy is not None:
        lines.append(curve_xy)
    if simplex_xy is not None:
        lines += [simplex_xy[i:i + 1] for i in range(len(simplex_xy))]
        lines += [simplex_xy[[i, j]] for i, j in simplex["edges"]]
    return np.unique(np.concatenate([polyline_indices(xs, ys, line) for line in lines]))


def _adaptive_grid(cfg: Config, store: GridStore, task: PlaneTask, shape, exact, stop_after_chunks, quiet):
    """Refine the lattice level by level (one store.compute per round, so every round's points are saved
    as chunks); None when stopped early by `stop_after_chunks`."""
    scales = {m: "log" if m.endswith("_loss") else "linear" for m in cfg.metrics}
    bar = progress(total=None, initial=int(store.done.sum()), desc=f"{store.desc} adaptive", quiet=quiet,
                   unit="pt")

    def evaluate(indices):
        done = store.compute(indices, task, chunk_points=cfg.chunk_points, chunk_seconds=cfg.chunk_seconds,
                             stop_after_chunks=stop_after_chunks, bar=bar)
        return store.values if done else None

    try:
        return refine(shape, evaluate, scales, cfg.tol, error_tol=cfg.error_tol, cells=cfg.coarse_cells,
                      required=exact)
    finally:
        bar.close()


def summary(info: dict) -> str:
    if not info.get("finished"):
        return f"stopped after {info.get('computed')}/{info.get('total')} grid points"
    t = info["timing"]
    pps = t.get("points_per_second")
    g = (info.get("config") or {}).get("grid")
    nx, ny = info.get("grid_shape") or (g, g)
    metrics = (info.get("config") or {}).get("metrics") or METRICS
    lines = [f"{nx}x{ny} {'slice' if ny == 1 else 'plane'} in {t['seconds']:.1f}s"
             + (f" ({pps:.1f} points/s)" if pps else "")]
    if info.get("adaptive"):
        ad = info["adaptive"]
        lines[0] += (f"; adaptive (--tol {ad['tol']:g}): {ad['evaluated']} of {ad['lattice']} points evaluated "
                     f"({100 * ad['fraction']:.2f}%), the rest interpolated")
    for lab, p in info["points"].items():
        vals = " ".join(f"{m} {p[m]:.4f}" for m in metrics if m in p)
        lines.append(f"  {lab} at ({p['coords'][0]:.3f}, {p['coords'][1]:.3f}): {vals}")
    return "\n".join(lines)


def load(path, device=None) -> dict:
    """A finished plane: plane.npz's arrays (x, y, one [G, G] array per metric, projected points, curve and
    simplex) and ``basis``: the tensors origin, u, v (w(x, y) = origin + x u + y v)."""
    path = Path(path)
    read_result(path, "plane", needs=(PLANE_FILE, BASIS_FILE))
    arrays = load_npz(path / PLANE_FILE)
    basis, _ = load_tensors(path / BASIS_FILE, device)
    return {**arrays, "basis": basis}


# ---------------------------------------------------------------------------------------------- Python API
def plane(runs=None, config: Config | None = None, out: str | Path = "runs/plane", *, resume: bool = True,
          fresh: bool = False, quiet: bool = False, stop_after_chunks: int | None = None, **overrides) -> dict:
    """Python API: ``plane(["runs/m0", "runs/m1", "runs/m2"], grid=51)`` or ``plane(curve="runs/curve")``.

    An interrupted plane in `out` with the same settings continues (`resume`, on by default). Returns
    run.json's contents."""
    return run_method(sys.modules[__name__], replace(config or Config(), **overrides), list(runs or ()), out,
                      resume=resume, fresh=fresh, quiet=quiet, stop_after_chunks=stop_after_chunks)


def compute_plane(anchors: PlaneInputs, config: Config | None = None, out: str | Path = "runs/plane", *,
                  resume: bool = True, fresh: bool = False, quiet: bool = False,
                  stop_after_chunks: int | None = None, **overrides) -> dict:
    """The plane through points of your own: `anchors` holds any module, its data, three flat parameter
    vectors with labels, and optionally a curve or simplex to project. Same run directory as :func:`plane`."""
    return run_method(sys.modules[__name__], replace(config or Config(), **overrides), None, out, resume=resume,
                      fresh=fresh, quiet=quiet, check_inputs=False, anchors=anchors,
                      stop_after_chunks=stop_after_chunks)


__all__ = ["Config", "METRICS", "PlaneInputs", "check_inputs", "compute_plane", "curve_coefficients", "fit",
           "inputs_from_curve", "inputs_from_runs", "inputs_from_simplex", "load", "plane", "plane_inputs",
           "simplex_edges", "summary"]
