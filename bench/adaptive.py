"""Benchmark of adaptive planes (`lowloss plane --adaptive`) against full grids, in one run.

For planes through three digits modes of each --models architecture (trained here with lowloss.run("train"),
or reused from --work), at each --grids size G:
  * the adaptive plane at --tol: fraction of the G x G lattice evaluated, wall time of the grid;
  * the full G x G plane (unless --skip-full or G is above --full-max for that model): its wall time, and the
    adaptive plane's errors over the WHOLE lattice: max and 99th percentile of |log10 loss error| (train and
    test loss together) and of |test-error error|;
  * with the full plane skipped and --sample N > 0: the same errors measured on N lattice points drawn at
    random among the INTERPOLATED ones (evaluated here; their max is a lower bound of the lattice's max, their
    99th percentile an upper estimate of the whole lattice's, whose evaluated points have error 0);
then, with --big G (default 1001; 0 skips it), the G x G adaptive plane of the last model: time, fraction, and
with --sample N > 0 its errors on N random interpolated points.

Usage examples (2 CPU cores; every run directory is kept under --work, so a rerun reuses finished planes):
  python bench/adaptive.py --models mlp --grids 201,401                      # full references too
  python bench/adaptive.py --models convnet --grids 101,201 --full-max convnet:101 --big 0
  python bench/adaptive.py --models convnet --grids 401 --skip-full --sample 1000 --big 1001
Goal: at --tol 0.01, <= 5% of the points evaluated at G = 401 with max |log10 loss error| <= 0.02, and the
1001 x 1001 convnet plane in under 20 minutes on 2 cores. The load average is printed: the machine may be shared.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import lowloss
from lowloss.engine.evaluate import evaluate_vectors
from lowloss.methods import plane as PL
from lowloss.rundir import load_runs
from lowloss.study import matmul_gflops
from lowloss.subspaces.adaptive import RATES
from lowloss.subspaces.plane import Plane

LOSSES = ("train_loss", "test_loss")


def modes(work: Path, model: str, epochs: int) -> list[str]:
    out = []
    for s in range(3):
        d = work / f"{model}-seed{s}"
        lowloss.run("train", out=d, model=model, seed=s, epochs=epochs, device="cpu", quiet=True, plots=False,
                    resume=True)
        out.append(str(d))
    return out


def plane_run(work: Path, runs, grid: int, **fields) -> tuple[dict, dict, bool]:
    """A plane (reused when finished before): run.json, plane.npz's arrays, whether it was reused."""
    name = f"plane-{Path(runs[0]).name.split('-')[0]}-{grid}" + (
        f"-adaptive-tol{fields['tol']:g}-err{fields['error_tol']:g}" if fields.get("adaptive") else "-full")
    d = work / name
    reused = (d / "run.json").exists()
    info = json.loads((d / "run.json").read_text()) if reused else {}
    same = {"grid": grid, "adaptive": False, **fields}
    # (a plane finished by an older lowloss whose Config had fewer fields is reused as it is; an adaptive one
    # only when refined by the same rule)
    if (not reused or any(info["config"].get(k, False) != v for k, v in same.items())
            or (fields.get("adaptive") and info.get("adaptive", {}).get("rates") != RATES)):
        reused = False
        info = lowloss.run("plane", inputs=runs, out=d, grid=grid, device="cpu", quiet=True, resume=True,
                           fresh=(d / "run.json").exists(), plots=grid <= 401 or fields.get("adaptive", False),
                           **fields)
    z = np.load(d / "plane.npz")
    info["_dir"] = str(d)
    return info, {k: z[k] for k in z.files}, reused


def errors(adaptive: dict, truth: dict, mask=None) -> dict:
    mask = np.ones(adaptive["train_loss"].shape, bool) if mask is None else mask
    logerr = np.concatenate([np.abs(np.log10(adaptive[m][mask]) - np.log10(truth[m][mask])) for m in LOSSES])
    err = np.abs(adaptive["test_error"][mask] - truth["test_error"][mask])
    return {"log_max": float(logerr.max()), "log_p99": float(np.percentile(logerr, 99)),
            "err_max": float(err.max()), "err_p99": float(np.percentile(err, 99))}


def sampled_truth(runs, pdir: Path, z: dict, n: int, seed: int = 0) -> tuple[dict, np.ndarray]:
    """The metrics at n random interpolated lattice points, evaluated as the plane evaluates its points."""
    run = load_runs(runs[:1], device="cpu")[0]
    basis = PL.load(pdir)["basis"]
    plane = Plane(basis["origin"], basis["u"], basis["v"])
    idx = np.flatnonzero(~z["evaluated"].ravel())
    idx = np.sort(np.random.default_rng(seed).choice(idx, size=min(n, len(idx)), replace=False))
    g = len(z["x"])
    coords = torch.from_numpy(np.stack([z["x"][idx % g], z["y"][idx // g]], 1))
    res = evaluate_vectors(run.model, plane.points(coords), run.data)
    mask = np.zeros(z["evaluated"].shape, bool)
    mask.ravel()[idx] = True
    truth = {m: np.full(mask.shape, np.nan) for m in PL.METRICS}
    for m in PL.METRICS:
        truth[m].ravel()[idx] = res[m].numpy()
    return truth, mask


def splits(a: dict) -> str:
    """Which metric drove the refinement: cells split per level, and per metric (the one whose predicted
    error was the largest)."""
    by = ", ".join(f"{m} {n}" for m, n in (a.get("cells_split_by") or {}).items())
    return f"cells split per level {a['cells_refined']} ({by})"


def full_allowed(model: str, grid: int, limits: dict) -> bool:
    return grid <= limits.get(model, 10**9)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="mlp,convnet", help="comma-separated: mlp, convnet")
    ap.add_argument("--grids", default="201,401", help="comma-separated grid sizes G")
    ap.add_argument("--tol", type=float, default=0.01)
    ap.add_argument("--error-tol", type=float, default=PL.Config().error_tol, help="absolute slack for error rates")
    ap.add_argument("--skip-full", action="store_true", help="no full reference planes")
    ap.add_argument("--full-max", default="", help="largest G with a full reference per model, e.g. convnet:101")
    ap.add_argument("--sample", type=int, default=0, help="without a full reference: interpolated points to check")
    ap.add_argument("--big", type=int, default=1001, help="the large adaptive plane's G (0: skip)")
    ap.add_argument("--epochs", type=int, default=20, help="training epochs of the modes")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--work", default=os.path.join(tempfile.gettempdir(), "lowloss-bench-adaptive"),
                    help="cache of modes and planes (kept; a rerun reuses them)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    limits = {k: int(v) for k, v in (p.split(":") for p in args.full_max.split(",") if p)}
    models = [m for m in args.models.split(",") if m]
    grids = [int(g) for g in args.grids.split(",") if g]
    t0 = time.perf_counter()
    print(f"threads {args.threads}; load average at start {os.getloadavg()[0]:.2f} (the machine may be shared); "
          f"float32 matmul {matmul_gflops():.0f} GFLOP/s; --tol {args.tol} --error-tol {args.error_tol}; "
          f"smooth rates per halving {RATES}; work {work}")
    print(f"{'model':<8} {'G':>5} {'evaluated':>10} {'adaptive s':>11} {'full s':>9} {'speedup':>8} "
          f"{'max|dlog10 L|':>14} {'p99':>8} {'max|d err|':>10} {'p99':>8}  reference")
    runs = {}
    for model in models:
        runs[model] = modes(work, model, args.epochs)
        for g in grids:
            ad, za, reused_a = plane_run(work, runs[model], g, adaptive=True, tol=args.tol, error_tol=args.error_tol)
            frac = ad["adaptive"]["fraction"]
            ta = ad["timing"]["seconds"]
            print(f"  {model} G={g} adaptive: {ad['adaptive']['evaluated']} points in rounds "
                  f"{ad['adaptive']['points_per_round']}; {splits(ad['adaptive'])}", flush=True)
            row = f"{model:<8} {g:>5} {100 * frac:>9.2f}% {ta:>10.1f}{'*' if reused_a else ' '}"
            if not args.skip_full and full_allowed(model, g, limits):
                full, zf, reused_f = plane_run(work, runs[model], g)
                tf = full["timing"]["seconds"]
                e = errors(za, zf)
                print(f"{row} {tf:>8.1f}{'*' if reused_f else ' '} {tf / ta:>7.1f}x {e['log_max']:>14.4f} "
                      f"{e['log_p99']:>8.4f} {e['err_max']:>10.4f} {e['err_p99']:>8.4f}  full {g}x{g} lattice",
                      flush=True)
            elif args.sample > 0:
                truth, mask = sampled_truth(runs[model], Path(ad["_dir"]), za, args.sample)
                e = errors(za, truth, mask)
                print(f"{row} {'-':>9} {'-':>8} {e['log_max']:>14.4f} {e['log_p99']:>8.4f} {e['err_max']:>10.4f} "
                      f"{e['err_p99']:>8.4f}  {int(mask.sum())} random interpolated points", flush=True)
            else:
                print(f"{row} {'-':>9} {'-':>8} {'-':>14} {'-':>8} {'-':>10} {'-':>8}  none", flush=True)
    if args.big and models:
        model = models[-1]
        ad, za, reused = plane_run(work, runs[model], args.big, adaptive=True, tol=args.tol,
                                   error_tol=args.error_tol)
        a = ad["adaptive"]
        print(f"{model} {args.big}x{args.big} adaptive plane: {ad['timing']['seconds']:.1f}s"
              f"{' (reused)' if reused else ''}, {a['evaluated']} of {a['lattice']} points evaluated "
              f"({100 * a['fraction']:.2f}%), {ad['timing']['points_per_second'] or 0:.1f} points/s; coarse spacing "
              f"{a['spacing']}, points per round {a['points_per_round']}; {splits(a)}", flush=True)
        if args.sample > 0:
            truth, mask = sampled_truth(runs[model], Path(ad["_dir"]), za, args.sample)
            e = errors(za, truth, mask)
            print(f"  on {int(mask.sum())} random interpolated points: max |dlog10 L| {e['log_max']:.4f} (p99 "
                  f"{e['log_p99']:.4f}), max |d err| {e['err_max']:.4f} (p99 {e['err_p99']:.4f})", flush=True)
    print("* reused from an earlier run in --work (its recorded time)")
    print(f"load average at end {os.getloadavg()[0]:.2f}; bench wall time {time.perf_counter() - t0:.0f}s")


if __name__ == "__main__":
    main()
