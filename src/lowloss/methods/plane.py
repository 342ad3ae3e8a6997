"""Loss-surface planes: metrics on a G x G grid in the plane through three points (METHODS.md section 2).

The plane goes through three run directories, through a curve (its two endpoints and its middle control
point, as in Garipov et al.), or through three vertices of a simplex (Benton et al.). Every grid point is
w(x, y) = origin + x u + y v, evaluated by :func:`lowloss.engine.evaluate.evaluate_vectors` (BN statistics
recomputed per point when the model has BatchNorm). The grid is computed in chunks that are saved
atomically as they finish (``DIR/chunks/``), so an interrupted run continues where it stopped.

Outputs: ``DIR/plane.npz`` (axes ``x``, ``y``; one [G, G] array per metric indexed [iy, ix]; projected
points, curve and simplex; origin and basis norms), ``DIR/plane_basis.safetensors`` (origin, u, v) and
``DIR/plane.json`` (config, sources, timing, points per second, engine plan, versions).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..engine.evaluate import evaluate_vectors
from ..subspaces.plane import Plane, grid_axes, grid_coordinates
from ..utils import LowlossError, atomic_path, echo, progress, read_json, versions, write_json

METRICS = ("train_loss", "train_error", "test_loss", "test_error")
PLANE_FILE = "plane.npz"
PLANE_JSON = "plane.json"
BASIS_FILE = "plane_basis.safetensors"
CHUNK_DIR = "chunks"
STATE_FILE = "state.json"
CURVE_FILE = "curve.safetensors"
SIMPLEX_FILE = "simplex.safetensors"


@dataclass
class PlaneConfig:
    grid: int = 21
    margin: float = 0.2
    min_aspect: float = 0.5  # the shorter grid side is at least this fraction of the longer one
    metrics: tuple[str, ...] = METRICS
    bn_subset: int | None = None
    origin: str = "a"
    batch_size: int | None = None  # BN statistics batch (None: the whole training set when it fits; see evaluate_vectors)
    memory_budget: int | None = None
    chunk_points: int | None = None  # grid points per saved chunk; None: adapt to ~chunk_seconds
    chunk_seconds: float = 20.0
    curve_points: int = 61


@dataclass
class PlaneInputs:
    """What a plane is drawn through: the model and data, three labelled anchors, and what to overlay."""

    model: nn.Module
    data: object
    labels: list[str]
    anchors: list[torch.Tensor]  # a, b, c as flat [P] vectors
    sources: dict = field(default_factory=dict)
    curve: dict | None = None  # {"kind", "controls": [n, P], "t": [T], "points": [T, P]}
    simplex: dict | None = None  # {"vertices": [V, P], "labels", "edges": [(i, j)], "simplexes"}


# ---------------------------------------------------------------------------------------------- curves
def curve_coefficients(kind: str, t: torch.Tensor, n: int) -> torch.Tensor:
    """[T] t -> [T, n] weights of the control points: Bezier (Bernstein) or polygonal chain (hat functions)."""
    try:
        from ..subspaces import curves as C

        if kind == "bezier":
            return C.bezier_coefficients(t, n)
        if kind == "polychain":
            return C.polychain_coefficients(t, n)
    except ImportError:  # pragma: no cover - the curves module ships with lowloss; formulas kept for safety
        pass
    i = torch.arange(n, dtype=t.dtype)
    if kind == "bezier":
        binom = torch.tensor([math.comb(n - 1, k) for k in range(n)], dtype=t.dtype)
        return binom * t[:, None].pow(i) * (1 - t[:, None]).pow(n - 1 - i)
    if kind == "polychain":
        return (1 - (t[:, None] * (n - 1) - i).abs()).clamp_min(0)
    if kind == "line" and n == 2:
        return torch.stack([1 - t, t], 1)
    raise LowlossError(f"unknown curve kind '{kind}' (bezier, polychain or line)")


def _numbered_vectors(path: Path, prefix: str, minimum: int, what: str) -> tuple[torch.Tensor, dict]:
    """<prefix>_0 .. <prefix>_{n-1} of a safetensors file stacked as flat vectors [n, P], and its metadata."""
    from safetensors import safe_open

    if not path.exists():
        raise LowlossError(f"{path.parent} holds no {path.name}: pass {what}")
    with safe_open(str(path), framework="pt") as fh:
        meta = fh.metadata() or {}
        keys = set(fh.keys())
        n = len([k for k in keys if k.startswith(f"{prefix}_")])
        missing = [f"{prefix}_{i}" for i in range(n) if f"{prefix}_{i}" not in keys]
        if n < minimum or missing:
            raise LowlossError(f"{path} must hold {prefix}_0 .. {prefix}_{{n-1}} with n >= {minimum}; "
                               f"missing {missing or 'all'}")
        return torch.stack([fh.get_tensor(f"{prefix}_{i}").reshape(-1) for i in range(n)]), meta


def load_curve(directory: str | Path) -> dict:
    """DIR/curve.safetensors: control_0..control_{n-1} and metadata curve, num_bends, runs (JSON list)."""
    path = Path(directory) / CURVE_FILE
    controls, meta = _numbered_vectors(path, "control", 2, "a curve run directory (lowloss connect --out)")
    n = len(controls)
    kind = meta.get("curve", "bezier")
    runs = json.loads(meta.get("runs", "[]"))
    if not runs:
        raise LowlossError(f"{path} names no runs in its metadata ('runs'): the model and data come from them")
    return {"kind": kind, "controls": controls, "runs": runs, "num_bends": int(meta.get("num_bends", n - 2))}


def load_simplex(directory: str | Path) -> dict:
    """DIR/simplex.safetensors: vertex_0..vertex_k and metadata simplexes, base_runs (JSON)."""
    path = Path(directory) / SIMPLEX_FILE
    vertices, meta = _numbered_vectors(path, "vertex", 3, "a simplex run directory (lowloss simplex --out)")
    n = len(vertices)
    simplexes = json.loads(meta.get("simplexes", json.dumps([list(range(n))])))
    base_runs = json.loads(meta.get("base_runs", "[]"))
    if not base_runs:
        raise LowlossError(f"{path} names no base_runs in its metadata: the model and data come from base_runs[0]")
    return {"vertices": vertices, "simplexes": [list(map(int, s)) for s in simplexes], "base_runs": base_runs}


def simplex_edges(simplexes) -> list[tuple[int, int]]:
    """Every edge (i < j) of every simplex of a complex, once."""
    edges = set()
    for s in simplexes:
        for a in range(len(s)):
            for b in range(a + 1, len(s)):
                edges.add((min(s[a], s[b]), max(s[a], s[b])))
    return sorted(edges)


# ---------------------------------------------------------------------------------------------- inputs
def inputs_from_runs(run_dirs, device=None) -> PlaneInputs:
    from ..rundir import load_runs

    if len(run_dirs) != 3:
        raise LowlossError(f"a plane needs exactly three runs (got {len(run_dirs)}); or use --curve / --simplex")
    runs = load_runs(run_dirs, device=device)
    return PlaneInputs(runs[0].model, runs[0].data, [Path(r).name for r in run_dirs],
                       [r.vector for r in runs], {"runs": [str(r) for r in run_dirs]})


def inputs_from_curve(curve_dir, device=None, num_points: int = 61) -> PlaneInputs:
    from ..rundir import load_run

    c = load_curve(curve_dir)
    run = load_run(c["runs"][0], device=device)
    controls = c["controls"].to(run.vector)
    if controls.shape[1] != run.vector.numel():
        raise LowlossError(f"the curve in {curve_dir} has {controls.shape[1]} parameters but the model of "
                           f"{c['runs'][0]} has {run.vector.numel()}: they do not belong together")
    n = controls.shape[0]
    mid = n // 2
    t = torch.linspace(0, 1, num_points, dtype=torch.float64)
    coeff = curve_coefficients(c["kind"], t, n).to(controls)
    names = [Path(c["runs"][0]).name, Path(c["runs"][-1]).name] if len(c["runs"]) >= 2 else ["A", "B"]
    labels = [names[0], names[1], "bend" if n == 3 else f"control {mid}"]
    return PlaneInputs(run.model, run.data, labels, [controls[0], controls[-1], controls[mid]],
                       {"curve": str(curve_dir), "runs": c["runs"], "curve_kind": c["kind"], "num_controls": n},
                       curve={"kind": c["kind"], "controls": controls, "t": t, "points": coeff @ controls})


def inputs_from_simplex(simplex_dir, face, device=None) -> PlaneInputs:
    from ..rundir import load_run

    s = load_simplex(simplex_dir)
    verts = s["vertices"]
    face = [int(i) for i in face]
    if len(face) != 3 or len(set(face)) != 3 or not all(0 <= i < len(verts) for i in face):
        raise LowlossError(f"--face needs three different vertex indices in 0..{len(verts) - 1}, got {face}")
    run = load_run(s["base_runs"][0], device=device)
    verts = verts.to(run.vector)
    if verts.shape[1] != run.vector.numel():
        raise LowlossError(f"the simplex in {simplex_dir} has {verts.shape[1]} parameters but the model of "
                           f"{s['base_runs'][0]} has {run.vector.numel()}")
    labels = [f"v{i}" for i in face]
    return PlaneInputs(run.model, run.data, labels, [verts[i] for i in face],
                       {"simplex": str(simplex_dir), "face": face, "base_runs": s["base_runs"]},
                       simplex={"vertices": verts, "labels": [f"v{i}" for i in range(len(verts))],
                                "edges": simplex_edges(s["simplexes"]), "simplexes": s["simplexes"]})


# ---------------------------------------------------------------------------------------------- compute
def _splits_for(metrics) -> tuple[str, ...]:
    bad = [m for m in metrics if m not in METRICS]
    if bad or not metrics:
        raise LowlossError(f"unknown --metrics {bad or '(none)'}; choose from {', '.join(METRICS)}")
    return tuple(s for s in ("train", "test") if any(m.startswith(s + "_") for m in metrics))


def _fingerprint(plane: Plane, xs, ys, cfg: PlaneConfig, sources: dict) -> dict:
    o, u, v = (t.double() for t in (plane.origin, plane.u, plane.v))
    w = torch.linspace(-1, 1, o.numel(), dtype=torch.float64, device=o.device)
    return {"grid": cfg.grid, "margin": cfg.margin, "min_aspect": cfg.min_aspect, "metrics": list(cfg.metrics), "bn_subset": cfg.bn_subset,
            "origin": cfg.origin, "batch_size": cfg.batch_size, "sources": sources,
            "x": [float(xs[0]), float(xs[-1])], "y": [float(ys[0]), float(ys[-1])],
            "checksums": [round(float(t @ w), 6) for t in (o, u, v)]}


def _read_chunks(chunk_dir: Path, total: int, metrics) -> tuple[dict, np.ndarray, float]:
    values = {m: np.full(total, np.nan) for m in metrics}
    done = np.zeros(total, bool)
    seconds = 0.0
    for f in sorted(chunk_dir.glob("c_*.npz")):
        with np.load(f) as z:
            a, b = int(z["start"]), int(z["stop"])
            for m in metrics:
                values[m][a:b] = z[m]
            done[a:b] = True
            seconds += float(z["seconds"])
    return values, done, seconds


def _missing_ranges(done: np.ndarray) -> list[tuple[int, int]]:
    out, i, n = [], 0, len(done)
    while i < n:
        if done[i]:
            i += 1
            continue
        j = i
        while j < n and not done[j]:
            j += 1
        out.append((i, j))
        i = j
    return out


def compute_plane(inputs: PlaneInputs, cfg: PlaneConfig, out: str | Path, *, quiet: bool = False,
                  fresh: bool = False, stop_after_chunks: int | None = None) -> dict:
    """Evaluate the grid (resuming from saved chunks) and write plane.npz / plane.json. Returns a summary
    (with ``"finished": False`` when stopped early on purpose by `stop_after_chunks`)."""
    from ..rundir import save_tensors as save_state

    out = Path(out)
    splits = _splits_for(cfg.metrics)
    model, data = inputs.model, inputs.data
    a, b, c = inputs.anchors
    plane = Plane.through(a, b, c, origin=cfg.origin)
    anchors = torch.stack([a, b, c])
    anchor_xy = plane.project(anchors).cpu().numpy()
    overlay = [anchor_xy]
    curve_xy = simplex_xy = None
    if inputs.curve is not None:
        curve_xy = plane.project(inputs.curve["points"]).cpu().numpy()
        overlay.append(curve_xy)
    if inputs.simplex is not None:
        simplex_xy = plane.project(inputs.simplex["vertices"]).cpu().numpy()
        overlay.append(simplex_xy)
    xs, ys = grid_axes(np.concatenate(overlay), cfg.grid, cfg.margin, cfg.min_aspect)
    total = cfg.grid * cfg.grid
    fp = _fingerprint(plane, xs, ys, cfg, inputs.sources)

    chunk_dir = out / CHUNK_DIR
    if fresh and chunk_dir.exists():
        for f in chunk_dir.glob("*"):
            f.unlink()
    if (out / PLANE_JSON).exists() and (out / PLANE_FILE).exists() and not fresh:
        info = read_json(out / PLANE_JSON)
        if info.get("fingerprint") == fp:
            echo(f"{out} already holds this plane; nothing to compute", quiet)
            return info
        raise LowlossError(f"{out} already holds a different plane; choose a new --out (or --fresh to replace it)")
    chunk_dir.mkdir(parents=True, exist_ok=True)
    state = chunk_dir / STATE_FILE
    if state.exists() and read_json(state) != fp:
        raise LowlossError(f"{out} holds an interrupted plane with other settings (grid, margin, metrics, points "
                           "or bn-subset differ): rerun with the original settings, or pass --fresh to restart")
    write_json(state, fp)

    values, done, seconds_before = _read_chunks(chunk_dir, total, cfg.metrics)
    resumed = int(done.sum())
    if resumed:
        echo(f"resuming {out}: {resumed}/{total} grid points already computed", quiet)
    chunk = cfg.chunk_points or 64
    chunks_run = 0
    engine: dict = {}
    t_start = time.perf_counter()
    bar = progress(total=total, initial=resumed, desc=f"plane {cfg.grid}x{cfg.grid}", quiet=quiet, unit="pt")
    stopped = False
    for lo, hi in _missing_ranges(done):
        start = lo
        while start < hi:
            stop = min(start + chunk, hi)
            t0 = time.perf_counter()
            coords = torch.from_numpy(grid_coordinates(xs, ys, start, stop))
            vectors = plane.points(coords)
            res = evaluate_vectors(model, vectors, data, splits=splits, bn_subset=cfg.bn_subset,
                                   batch_size=cfg.batch_size, memory_budget=cfg.memory_budget)
            dt = time.perf_counter() - t0
            engine = res["engine"]
            arrays = {m: res[m].numpy() for m in cfg.metrics}
            with atomic_path(chunk_dir / f"c_{start:09d}.npz") as tmp:
                with open(tmp, "wb") as fh:
                    np.savez(fh, start=start, stop=stop, seconds=dt, **arrays)
            for m in cfg.metrics:
                values[m][start:stop] = arrays[m]
            done[start:stop] = True
            bar.update(stop - start)
            if cfg.chunk_points is None:  # aim for chunks of ~chunk_seconds: few files, little lost on a kill
                rate = (stop - start) / max(dt, 1e-6)
                chunk = int(min(max(16, rate * cfg.chunk_seconds), 16384))
            start = stop
            chunks_run += 1
            if stop_after_chunks is not None and chunks_run >= stop_after_chunks:
                stopped = True
                break
        if stopped:
            break
    bar.close()
    elapsed = time.perf_counter() - t_start
    if stopped and not done.all():
        return {"finished": False, "computed": int(done.sum()), "total": total}

    computed_now = total - resumed
    anchor_metrics = evaluate_vectors(model, anchors, data, splits=splits, bn_subset=cfg.bn_subset,
                                      batch_size=cfg.batch_size, memory_budget=cfg.memory_budget)
    g = cfg.grid
    arrays = {m: values[m].reshape(g, g) for m in cfg.metrics}
    basis_norms = np.array([float((b - a).double().norm()),
                            float(((c - a).double() - ((c - a).double() @ plane.u.double()) * plane.u.double()).norm())])
    npz = {"x": xs, "y": ys, **arrays, "point_coords": anchor_xy, "point_labels": np.array(inputs.labels),
           "point_distance": plane.distance(anchors).cpu().numpy(),
           "origin_norm": np.array(float(plane.origin.double().norm())), "basis_norms": basis_norms}
    if curve_xy is not None:
        npz.update({"curve_coords": curve_xy, "curve_t": inputs.curve["t"].numpy(),
                    "curve_distance": plane.distance(inputs.curve["points"]).cpu().numpy(),
                    "curve_control_coords": plane.project(inputs.curve["controls"]).cpu().numpy()})
    if simplex_xy is not None:
        npz.update({"simplex_coords": simplex_xy, "simplex_edges": np.array(inputs.simplex["edges"], dtype=np.int64),
                    "simplex_labels": np.array(inputs.simplex["labels"]),
                    "simplex_distance": plane.distance(inputs.simplex["vertices"]).cpu().numpy()})
    with atomic_path(out / PLANE_FILE) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, **npz)
    save_state(out / BASIS_FILE, {"origin": plane.origin, "u": plane.u, "v": plane.v},
               {"origin": cfg.origin, "labels": json.dumps(inputs.labels)})
    total_seconds = seconds_before + elapsed
    info = {
        "config": asdict(cfg), "sources": inputs.sources, "labels": inputs.labels, "fingerprint": fp,
        "points": {lab: {"coords": anchor_xy[i].tolist(),
                         **{m: float(anchor_metrics[m][i]) for m in cfg.metrics}} for i, lab in enumerate(inputs.labels)},
        "basis_norms": basis_norms.tolist(), "origin_norm": float(npz["origin_norm"]),
        "range": {m: [float(np.nanmin(v)), float(np.nanmax(v))] for m, v in arrays.items()},
        "timing": {"seconds": total_seconds, "seconds_this_session": elapsed, "points": total,
                   "points_this_session": computed_now, "resumed_points": resumed,
                   "points_per_second": computed_now / elapsed if elapsed > 0 and computed_now else None},
        "engine": engine, "bn_subset": cfg.bn_subset, "data": data.describe() if hasattr(data, "describe") else None,
        "num_params": int(a.numel()), "versions": versions(), "finished": True,
    }
    if curve_xy is not None:
        info["curve"] = {"kind": inputs.curve["kind"], "points": len(curve_xy),
                         "max_distance_from_plane": float(npz["curve_distance"].max())}
    write_json(out / PLANE_JSON, info)
    for f in chunk_dir.glob("*"):
        f.unlink()
    chunk_dir.rmdir()
    return info
