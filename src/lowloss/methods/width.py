"""How wide are the optima of SGD and SWA (Izmailov et al. 2018)? Loss along their line and along random rays.

RUN_SGD is a run that holds a network (a `lowloss train` run, e.g. the one RUN_SWA started from); RUN_SWA
is a `lowloss swa` run of the same architecture, on classification data. The train loss is the objective
SGD minimised: the mean NLL plus the L2 term wd/2 |w|^2, with the weight decay the runs recorded (--wd to
override). Every point is evaluated with its BatchNorm statistics recomputed on the training data.

The line: w(t) = (1 - t) w_SGD + t w_SWA for t in [-extend, 1 + extend] (t = 0 is SGD, t = 1 is SWA,
both always on the grid): train loss and test error against the distance t |w_SWA - w_SGD| (the slides'
"optima width" figure: SWA in a flat region, SGD near its edge).

The random rays: --directions R Gaussian directions d (seeded), the same for both points: unit vectors
(distances are Euclidean) or, with --filter-norm, filter-normalised at each point (Li et al. 2018: each
filter / neuron rescaled to the point's filter norm, biases and BN parameters zero; distances in units of
the direction). For each point w and direction d, the profile L(w + s d) for s in [0, max_distance], and
the width: the first distance where L rises by --rise above L(w), bracketed on the profile (doubling the
distance up to three times for a ray that has not risen yet) and refined by bisection. Without
--max-distance a pilot along the first direction from both points tries scale * 2**k (k = -8..3; scale 1
with --filter-norm, else |w_SWA|) and takes twice the first distance where the loss had risen, rounded up.

Writes width.npz (line: t, distance, train loss / NLL / L2 / error, test loss / error; rays: distance,
profiles [R, n] of both points, widths [R]), run.json (the two points' metrics, widths per direction with
mean and standard error, the paired difference SWA - SGD, timing), width_line.png and width_rays.png.
An interrupted run reuses its finished line (line.npz) with --resume.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from ..config import option, replace, require
from ..engine.evaluate import evaluate_vectors
from ..params import ParamLayout
from ..rundir import MODEL_FILE, RunDir, load_npz, load_runs, read_result, run_method, save_npz
from ..utils import LowlossError, echo, progress, seed_everything
from .plane_inputs import filter_normalize, gaussian_directions, scaled_directions
from .swa import base_values

INPUTS = {"metavar": "RUN_SGD RUN_SWA", "nargs": 2}
WIDTH_FILE = "width.npz"
LINE_FILE = "line.npz"  # the finished line of an interrupted run
PILOT_POWERS = tuple(range(-8, 4))  # the pilot's distances: scale * 2**k
EXPAND = 3  # doublings of the profile's last distance for a ray that has not risen by then
CHUNK = 32  # vectors built and evaluated at once


@dataclass
class Config:
    """The two points, the rays and the resolution of the search."""

    directions: int = option(10, "Random directions (the same for both points).")
    filter_norm: bool = option(False, "Filter-normalised directions (Li et al.): each filter / neuron scaled to the "
                                      "point's filter norm, biases and BN parameters zero; distances in units of "
                                      "the direction. Default: unit directions, Euclidean distances.")
    rise: float = option(0.1, "The width is the distance at which the train loss (with its L2 term) has risen "
                              "by this much.")
    max_distance: float | None = option(None, "Length of each ray's profile (default: from a pilot along the "
                                              "first direction, see above).")
    ray_points: int = option(11, "Points of each ray's profile, the start included.")
    refine: int = option(6, "Bisection steps locating each width between two profile points.")
    extend: float = option(1.0, "The line goes this multiple of |w_SWA - w_SGD| beyond both points.")
    line_points: int = option(31, "Points along the line (t = 0 and t = 1 are added when not among them).")
    wd: float | None = option(None, "Weight decay of the L2 term wd/2 |w|^2 (default: the runs' recorded --wd).")
    bn_subset: int | None = None
    seed: int = 0
    device: str = "auto"
    batch_size: int | None = option(None, "BN statistics batch (None: the whole training set when it fits; see "
                                          "evaluate_vectors).", cli=False)

    def check(self) -> None:
        require(self.directions >= 1, f"--directions must be >= 1 (got {self.directions})")
        require(self.rise > 0, f"--rise must be positive (got {self.rise})")
        require(self.max_distance is None or self.max_distance > 0,
                f"--max-distance must be positive (got {self.max_distance})")
        require(self.ray_points >= 2, f"--ray-points must be >= 2 (got {self.ray_points})")
        require(self.refine >= 0, f"--refine must be >= 0 (got {self.refine})")
        require(self.extend >= 0, f"--extend must be >= 0 (got {self.extend})")
        require(self.line_points >= 2, f"--line-points must be >= 2 (got {self.line_points})")
        require(self.wd is None or self.wd >= 0, f"--wd must be >= 0 (got {self.wd})")
        require(self.bn_subset is None or self.bn_subset >= 1, f"--bn-subset must be >= 1 (got {self.bn_subset})")


# ---------------------------------------------------------------------------------------------- inputs
def _architecture(info: dict) -> tuple:
    arch = info.get("model") if isinstance(info.get("model"), dict) else (info.get("config") or {})
    return (arch.get("model"), tuple(sorted((arch.get("model_options") or {}).items())), arch.get("data"),
            arch.get("data_seed", 0))


def run_weight_decay(config: Config, sgd_dir, swa_dir) -> float:
    """--wd, or the weight decay both runs recorded (an SWA run's own, or that of the run it started from)."""
    if config.wd is not None:
        return float(config.wd)
    wds = [base_values(SimpleNamespace(wd=None), d, ("wd",))["wd"] for d in (sgd_dir, swa_dir)]
    require(math.isclose(wds[0], wds[1]), f"RUN_SGD trained with wd {wds[0]} and RUN_SWA with wd {wds[1]}: give "
                                          "--wd for the L2 term")
    return float(wds[0])


def check_inputs(config: Config, inputs) -> None:
    """RUN_SGD holds a network, RUN_SWA is a `lowloss swa` run, both of one architecture on classification data."""
    runs = list(inputs or ())
    require(len(runs) == 2, f"width needs two runs, RUN_SGD RUN_SWA (got {len(runs)})")
    sgd, swa = (Path(r) for r in runs)
    require(sgd.resolve() != swa.resolve(), f"RUN_SGD and RUN_SWA are the same run ({sgd}): give two runs")
    info_sgd = read_result(sgd, needs=(MODEL_FILE,))
    info_swa = read_result(swa, needs=(MODEL_FILE,))
    if info_swa.get("method") != "swa":
        raise LowlossError(f"RUN_SWA {swa} holds a `{info_swa.get('method')}` run, not a `lowloss swa` run; make one "
                           f"with `lowloss swa {sgd} --out DIR`")
    for path, info in ((sgd, info_sgd), (swa, info_swa)):
        data = info.get("data") if isinstance(info.get("data"), dict) else {}
        if data.get("task") == "regression" or data.get("num_classes") == 0:
            raise LowlossError(f"{path} is a regression run ({data.get('name')}): width measures train loss and "
                               "test error of classifiers; give runs on classification data")
    if _architecture(info_sgd) != _architecture(info_swa):
        raise LowlossError(f"{sgd} and {swa} differ in architecture or data ({_architecture(info_sgd)} vs "
                           f"{_architecture(info_swa)}); give the SWA run's own start or a run like it")
    run_weight_decay(config, sgd, swa)


# ---------------------------------------------------------------------------------------------- the search
def rise_distances(loss_at: Callable[[np.ndarray, np.ndarray], np.ndarray], base, rise: float, distances, *,
                   refine: int = 6, expand: int = EXPAND) -> tuple[np.ndarray, np.ndarray]:
    """Where each of R rays first rises by `rise` above its start, for any loss.

    ``loss_at(rays, s)`` gives the loss of ray ``rays[i]`` at distance ``s[i]`` (arrays of one length, evaluated
    together); `base` [R] the losses at distance 0; `distances` the ascending profile grid (a 0 in it is taken
    from `base`). The first grid point where a ray's loss reaches base + rise brackets its width; a ray that has
    not risen by the last distance is probed at 2, 4, ... 2**`expand` times it. Each bracket is halved `refine`
    times and the width is the linear interpolation of the loss within the final bracket (exact for a linear
    rise, so the closed form of a quadratic is approached as the bracket shrinks). Returns (widths [R], NaN for a
    ray that never rose; the profile [R, n])."""
    base = np.asarray(base, dtype=np.float64).reshape(-1)
    s = np.asarray(distances, dtype=np.float64).reshape(-1)
    r_count, n = len(base), len(s)
    rays, dist = np.repeat(np.arange(r_count), n), np.tile(s, r_count)
    flat = base[rays].copy()
    away = dist > 0
    if away.any():
        flat[away] = np.asarray(loss_at(rays[away], dist[away]), dtype=np.float64)
    profile = flat.reshape(r_count, n)
    target = base + rise
    lo, flo = np.zeros(r_count), base.copy()
    hi, fhi = np.full(r_count, np.nan), np.full(r_count, np.nan)
    for r in range(r_count):
        up = np.flatnonzero(profile[r] >= target[r])
        if len(up):
            j = int(up[0])
            hi[r], fhi[r] = s[j], profile[r, j]
            if j > 0:
                lo[r], flo[r] = s[j - 1], profile[r, j - 1]
        else:
            lo[r], flo[r] = s[-1], profile[r, -1]
    for k in range(1, expand + 1):
        todo = np.flatnonzero(np.isnan(hi))
        if not len(todo):
            break
        d = np.full(len(todo), s[-1] * 2.0 ** k)
        v = np.asarray(loss_at(todo, d), dtype=np.float64)
        rose = v >= target[todo]
        hi[todo[rose]], fhi[todo[rose]] = d[rose], v[rose]
        lo[todo[~rose]], flo[todo[~rose]] = d[~rose], v[~rose]
    found = np.flatnonzero(~np.isnan(hi))
    for _ in range(refine):
        if not len(found):
            break
        mid = (lo[found] + hi[found]) / 2
        v = np.asarray(loss_at(found, mid), dtype=np.float64)
        rose = v >= target[found]
        hi[found[rose]], fhi[found[rose]] = mid[rose], v[rose]
        lo[found[~rose]], flo[found[~rose]] = mid[~rose], v[~rose]
    width = np.full(r_count, np.nan)
    if len(found):
        f = found
        frac = np.clip((target[f] - flo[f]) / np.maximum(fhi[f] - flo[f], 1e-300), 0.0, 1.0)
        width[f] = lo[f] + frac * (hi[f] - lo[f])
    return width, profile


def pilot_distance(loss_at: Callable[[np.ndarray, np.ndarray], np.ndarray], base, rise: float,
                   scale: float) -> float | None:
    """Twice the largest distance (over the rays of `base`) where the loss first reached base + rise among
    scale * 2**k, k in PILOT_POWERS (all rays and distances in one call), rounded up to 1, 2 or 5 times a power
    of ten; None when no ray rose."""
    base = np.asarray(base, dtype=np.float64).reshape(-1)
    ks = np.array(PILOT_POWERS, dtype=np.float64)
    rays = np.repeat(np.arange(len(base)), len(ks))
    dist = np.tile(scale * 2.0 ** ks, len(base))
    v = np.asarray(loss_at(rays, dist), dtype=np.float64).reshape(len(base), len(ks))
    first = [dist[:len(ks)][np.flatnonzero(row >= b + rise)[0]] for row, b in zip(v, base) if (row >= b + rise).any()]
    if not first:
        return None
    return nice_ceil(2 * max(first))


def nice_ceil(x: float) -> float:
    """The smallest of 1, 2, 5 times a power of ten that is >= x."""
    e = math.floor(math.log10(x))
    for m in (1, 2, 5, 10):
        if m * 10.0 ** e >= x * (1 - 1e-12):
            return float(m * 10.0 ** e)
    return float(10.0 ** (e + 1))


def line_t(extend: float, points: int) -> np.ndarray:
    """t from -extend to 1 + extend, `points` equally spaced, with 0 and 1 exactly among them."""
    t = np.linspace(-extend, 1 + extend, points)
    for anchor in (0.0, 1.0):
        i = int(np.argmin(np.abs(t - anchor)))
        if abs(t[i] - anchor) < 1e-9 * max(1.0, 1 + 2 * extend):
            t[i] = anchor
    return np.union1d(t, [0.0, 1.0])


def mean_se(values) -> dict:
    """Mean and standard error of the finite values; the count of NaN (censored) ones."""
    v = np.asarray(values, dtype=np.float64)
    ok = v[np.isfinite(v)]
    n = len(ok)
    return {"mean": float(ok.mean()) if n else None,
            "se": float(ok.std(ddof=1) / math.sqrt(n)) if n > 1 else None,
            "n": n, "censored": int(len(v) - n),
            "per_direction": [float(x) if math.isfinite(x) else None for x in v]}


# ---------------------------------------------------------------------------------------------- the method
class _Objective:
    """Train loss with its L2 term (and, when asked, test metrics) of many vectors, built chunk by chunk."""

    def __init__(self, model, data, wd: float, config: Config, quiet: bool):
        self.model, self.data, self.wd, self.cfg, self.quiet = model, data, wd, config, quiet
        self.evaluations = 0
        self.engine: dict = {}

    def __call__(self, make: Callable[[np.ndarray], torch.Tensor], count: int, splits=("train",),
                 desc: str = "") -> dict[str, np.ndarray]:
        out: dict[str, list] = {}
        starts = range(0, count, CHUNK)
        bar = progress(starts, total=len(starts), desc=desc, quiet=self.quiet or len(starts) < 2, unit="chunk")
        for i in bar:
            idx = np.arange(i, min(i + CHUNK, count))
            v = make(idx)
            res = evaluate_vectors(self.model, v, self.data, splits=splits, bn_subset=self.cfg.bn_subset,
                                   batch_size=self.cfg.batch_size)
            self.engine = res["engine"]
            l2 = 0.5 * self.wd * (v.double() ** 2).sum(-1).cpu()
            out.setdefault("l2", []).append(l2.numpy())
            for s in splits:
                for m in ("loss", "error"):
                    out.setdefault(f"{s}_{m}", []).append(res[f"{s}_{m}"].numpy())
        self.evaluations += count
        arrays = {k: np.concatenate(v) for k, v in out.items()}
        arrays["objective"] = arrays["train_loss"] + arrays["l2"]
        return arrays


def _directions(config: Config, points: list[torch.Tensor], layout: ParamLayout) -> torch.Tensor:
    """[2, R, P]: the seeded Gaussian directions at each point, unit or filter-normalised at that point."""
    g = gaussian_directions(config.directions, layout.size, config.seed)
    per_point = [filter_normalize(g, w.double().cpu(), layout) if config.filter_norm else scaled_directions(g, 1.0)
                 for w in points]
    return torch.stack(per_point).to(dtype=points[0].dtype, device=points[0].device)


def fit(config: Config, inputs, run_dir: RunDir, *, quiet: bool = False) -> dict:
    """The line and the rays; writes width.npz and run.json. Returns run.json's contents."""
    config.check()
    seed_everything(config.seed)
    sgd_dir, swa_dir = (str(p) for p in inputs)
    wd = run_weight_decay(config, sgd_dir, swa_dir)
    runs = load_runs([sgd_dir, swa_dir], device=config.device)
    model, data = runs[0].model, runs[0].data
    if data.num_classes < 2:
        raise LowlossError(f"{sgd_dir} is a regression run ({data.name}): width needs classification data")
    w = [r.vector for r in runs]
    objective = _Objective(model, data, wd, config, quiet)
    t0 = time.perf_counter()

    # the line through the two points
    t = line_t(config.extend, config.line_points)
    line = None
    if run_dir.resuming and run_dir.file(LINE_FILE).exists():
        try:
            saved = load_npz(run_dir.file(LINE_FILE))
            line = saved if np.array_equal(saved["t"], t) else None
        except LowlossError:  # a damaged partial line is recomputed
            line = None
    if line is None:
        tt = torch.as_tensor(t, dtype=w[0].dtype, device=w[0].device)

        def on_line(idx):
            c = tt[torch.as_tensor(idx, device=tt.device)].unsqueeze(1)
            return (1 - c) * w[0] + c * w[1]

        line = {"t": t, **objective(on_line, len(t), ("train", "test"), desc="width line")}
        save_npz(run_dir.file(LINE_FILE), line)
    gap = float((w[1].double() - w[0].double()).norm())
    i_sgd, i_swa = int(np.flatnonzero(t == 0.0)[0]), int(np.flatnonzero(t == 1.0)[0])

    def point(i):
        return {"train_loss": float(line["objective"][i]), "train_nll": float(line["train_loss"][i]),
                "l2": float(line["l2"][i]), "train_error": float(line["train_error"][i]),
                "test_loss": float(line["test_loss"][i]), "test_error": float(line["test_error"][i])}

    points = {"sgd": point(i_sgd), "swa": point(i_swa)}

    # the random rays from both points: rays 0..R-1 start at SGD, R..2R-1 at SWA
    layout = ParamLayout.of(model)
    dirs = _directions(config, w, layout)
    r_count = config.directions
    starts = torch.stack(w)
    base = np.array([points["sgd"]["train_loss"]] * r_count + [points["swa"]["train_loss"]] * r_count)

    def loss_at(rays, dist, desc="width rays"):
        rays = np.asarray(rays, dtype=np.int64)
        pt, dr = torch.as_tensor(rays // r_count), torch.as_tensor(rays % r_count)
        dd = torch.as_tensor(np.asarray(dist, dtype=np.float64))

        def make(idx):
            i = torch.as_tensor(idx)
            s = dd[i].to(dtype=starts.dtype, device=starts.device).unsqueeze(1)
            return starts[pt[i]] + s * dirs[pt[i], dr[i]]

        return objective(make, len(rays), desc=desc)["objective"]

    scale = 1.0 if config.filter_norm else float(w[1].double().norm())
    max_distance = config.max_distance
    pilot = None
    if max_distance is None:
        pilot = pilot_distance(lambda r, d: loss_at(np.asarray(r) * r_count, d, "width pilot"), base[[0, r_count]],
                               config.rise, scale)
        max_distance = pilot if pilot is not None else scale * 2.0 ** PILOT_POWERS[-1]
    distances = np.linspace(0.0, max_distance, config.ray_points)
    widths, profiles = rise_distances(loss_at, base, config.rise, distances, refine=config.refine)
    elapsed = time.perf_counter() - t0

    w_sgd, w_swa = widths[:r_count], widths[r_count:]
    diff = w_swa - w_sgd
    stats = {"sgd": mean_se(w_sgd), "swa": mean_se(w_swa), "difference": mean_se(diff)}
    ratio = (stats["swa"]["mean"] / stats["sgd"]["mean"]
             if stats["sgd"]["mean"] and stats["swa"]["mean"] is not None else None)
    save_npz(run_dir.file(WIDTH_FILE), {
        "line_t": t, "line_distance": t * gap, **{f"line_{k}": v for k, v in line.items() if k != "t"},
        "ray_distance": distances, "ray_loss_sgd": profiles[:r_count], "ray_loss_swa": profiles[r_count:],
        "width_sgd": w_sgd, "width_swa": w_swa, "base_sgd": np.array(base[0]), "base_swa": np.array(base[-1]),
        "rise": np.array(config.rise)})
    kind = "filter-normalised" if config.filter_norm else "unit"
    info = {
        "runs": {"sgd": sgd_dir, "swa": swa_dir}, "wd": wd, "points": points, "distance": gap,
        "width": {"directions": r_count, "kind": kind, "rise": config.rise, "max_distance": max_distance,
                  "pilot_max_distance": pilot,
                  "unit": ("units of the filter-normalised direction (1: a step as large as each filter)"
                           if config.filter_norm else "Euclidean distance in parameter space"),
                  **stats, "ratio": ratio,
                  "direction_norms": {"sgd": dirs[0].double().norm(dim=-1).tolist(),
                                      "swa": dirs[1].double().norm(dim=-1).tolist()}},
        "objective": "mean train NLL + wd/2 |w|^2",
        "timing": {"seconds": elapsed, "evaluations": objective.evaluations,
                   "vectors_per_second": objective.evaluations / elapsed if elapsed > 0 else None},
        "engine": objective.engine, "data": data.describe(), "num_params": layout.size,
    }
    if stats["sgd"]["censored"] or stats["swa"]["censored"]:
        echo(f"{stats['sgd']['censored'] + stats['swa']['censored']} rays never rose by {config.rise} within "
             f"{max_distance * 2 ** EXPAND:.4g}: their width is left out of the means", quiet)
    return run_dir.finish(info, remove=(LINE_FILE,))


def summary(info: dict) -> str:
    wd_, p = info["width"], info["points"]

    def ms(x):
        return f"{x['mean']:.4g}" + (f" +- {x['se']:.2g}" if x.get("se") is not None else "") \
            if x.get("mean") is not None else "n/a"

    return (f"width along {wd_['directions']} {wd_['kind']} directions (rise {wd_['rise']}): SGD {ms(wd_['sgd'])}, "
            f"SWA {ms(wd_['swa'])}" + (f" (ratio {wd_['ratio']:.2f})" if wd_.get("ratio") else "") +
            f" | train loss (with L2) SGD {p['sgd']['train_loss']:.4f} SWA {p['swa']['train_loss']:.4f} | test "
            f"error SGD {p['sgd']['test_error']:.4f} SWA {p['swa']['test_error']:.4f} | |w_SWA - w_SGD| "
            f"{info['distance']:.3f}")


def load(path, device=None) -> dict:
    """A finished width run: width.npz's arrays and ``info`` (run.json's contents)."""
    path = Path(path)
    info = read_result(path, "width", needs=(WIDTH_FILE,))
    return {**load_npz(path / WIDTH_FILE), "info": info}


def width(run_sgd, run_swa, config: Config | None = None, out: str | Path = "runs/width", *, resume: bool = False,
          quiet: bool = False, **overrides) -> dict:
    """Python API: ``width("runs/m0", "runs/swa", directions=20)``. Returns run.json's contents."""
    return run_method(sys.modules[__name__], replace(config or Config(), **overrides), [run_sgd, run_swa], out,
                      resume=resume, quiet=quiet)


__all__ = ["Config", "check_inputs", "fit", "line_t", "load", "mean_se", "nice_ceil", "pilot_distance",
           "rise_distances", "run_weight_decay", "summary", "width"]
