"""Benchmark of the evaluation engine (lowloss.engine.evaluate.evaluate_vectors) and of `lowloss plane`.

Measured in ONE run on the same machine:
  * float32 matmul FLOP/s (torch.mm, 2048 x 2048): the physical reference;
  * points/s of the plain loop as the reference code does it: per point, deep-copy the module, write the
    vector with vector_to_parameters, recompute BN (train mode, cumulative average, batches of 128),
    evaluate train then test with batches of 128; first with glibc's default allocator (as the reference
    code runs), then with the allocator setting the engine makes (lowloss.utils.keep_freed_memory), which
    speeds the plain loop up too;
  * points/s of the engine on the same kind of points, and its achieved FLOP/s (FLOPs counted with
    torch.utils.flop_counter over the passes it makes) as a fraction of the matmul's;
  * agreement of the two on shared points (max |difference| of the four metrics);
  * wall time of `lowloss plane` through three digits mlp modes at --grid 201 (modes trained here).

Usage: python bench/plane.py [--threads 2] [--grid 201] [--skip-plane] [--out /tmp/lowloss-bench-plane]
The machine may be shared: the load average is printed before and after; compare ratios, not absolutes.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

from lowloss import params as P
from lowloss.data import load_dataset
from lowloss.engine.evaluate import evaluate_vectors
from lowloss.models import build_model
from lowloss.utils import keep_freed_memory

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/common.py, also when loaded from a file path
from common import plain_loop  # noqa: E402


def best_time(f, reps: int = 3) -> float:
    f()
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        f()
        best = min(best, time.perf_counter() - t)
    return best


def matmul_flops(n: int = 2048) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    return 2 * n**3 / best_time(lambda: a @ b, 5)


def flops_per_point(model, data, separate_bn_pass: bool) -> float:
    """FLOPs of the passes one point costs: one evaluation of train + test [+ a separate BN statistics pass]."""
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.cat([data.train.x, data.test.x])
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        model.eval()
        model(x)
        if separate_bn_pass and P.has_batchnorm(model):
            model(data.train.x)
    return float(fc.get_total_flops())


def points(name: str, data, n: int, seed: int = 0):
    torch.manual_seed(seed)
    model = build_model(name, data.input_shape, data.num_classes)
    w = P.flatten(model)
    g = torch.Generator().manual_seed(seed)
    return model, w, w + 0.01 * torch.randn(n, w.numel(), generator=g)


def plain_seconds(name: str, data, n_plain: int) -> float:
    model, _, V = points(name, data, n_plain)
    return best_time(lambda: [plain_loop(model, v, data) for v in V[:n_plain]], 2) / n_plain


def bench_model(name: str, data, n_plain: int, n_engine: int, seed: int = 0) -> dict:
    model, w, V = points(name, data, n_engine, seed)
    plain_s = plain_seconds(name, data, n_plain)
    evaluate_vectors(model, V[:2], data)  # warm-up (allocations, oneDNN primitive caches)
    res = {}

    def run():
        res["r"] = evaluate_vectors(model, V, data)

    engine_s = best_time(run, 2) / n_engine
    row = {"model": name, "params": w.numel(), "plain_pts_s": 1 / plain_s, "engine_pts_s": 1 / engine_s,
           "speedup": plain_s / engine_s, "engine": res["r"]["engine"],
           "flops_per_point": flops_per_point(model, data, res["r"]["engine"]["bn_pass"] == "separate")}

    def table(r):
        return torch.stack([r["train_loss"], r["train_error"], r["test_loss"], r["test_error"]], 1)

    # agreement on shared points; the engine with the plain loop's BN batches must agree to float32 rounding
    ref = torch.tensor([plain_loop(model, v, data) for v in V[:2]], dtype=torch.float64)
    row["max_abs_diff"] = float((table(evaluate_vectors(model, V[:2], data, batch_size=128)) - ref).abs().max())
    if P.has_batchnorm(model):  # the default (fused, whole-set statistics) against the plain loop's batches of 128
        row["fused_vs_plain"] = float((table(res["r"])[:2] - ref).abs().max())

        def run_sep():
            res["s"] = evaluate_vectors(model, V, data, batch_size=1024)

        row["separate_pts_s"] = n_engine / best_time(run_sep, 2)
    return row


def bench_plane(out: Path, grid: int) -> dict:
    from lowloss.api import run
    from lowloss.methods.train import Config as TrainConfig
    from lowloss.methods.train import train as train_mode

    runs = []
    for s in range(3):
        d = out / f"mlp{s}"
        train_mode(TrainConfig(model="mlp", seed=s, device="cpu"), d, quiet=True)
        runs.append(str(d))
    pdir = out / f"plane{grid}"
    t = time.perf_counter()
    info = run("plane", inputs=runs, out=pdir, fresh=True, quiet=True, grid=grid, device="cpu")  # with figures
    return {"grid": grid, "seconds": time.perf_counter() - t, "compute_seconds": info["timing"]["seconds"],
            "points_per_second": info["timing"]["points_per_second"], "dir": str(pdir)}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--grid", type=int, default=201)
    ap.add_argument("--skip-plane", action="store_true")
    ap.add_argument("--out", default=os.path.join(tempfile.gettempdir(), "lowloss-bench-plane"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    load0 = os.getloadavg()
    data = load_dataset("digits")
    # the plain loops first as the reference code runs them (glibc's default allocator), then with the setting
    # the engine makes at its first CPU call (keep freed memory), which helps the plain loop too
    default_alloc = {"mlp": plain_seconds("mlp", data, 8), "convnet": plain_seconds("convnet", data, 3)}
    tuned = keep_freed_memory()
    mm = matmul_flops()
    print(f"threads {args.threads}; load average at start {load0[0]:.2f} (the machine may be shared); "
          f"glibc keeps freed memory (both loops): {tuned}")
    print(f"float32 matmul (torch.mm 2048^2): {mm / 1e9:.1f} GFLOP/s")
    rows = [bench_model("mlp", data, n_plain=8, n_engine=64), bench_model("convnet", data, n_plain=3, n_engine=8)]
    mm2 = matmul_flops()
    ref = max(mm, mm2)
    print(f"float32 matmul again after the models: {mm2 / 1e9:.1f} GFLOP/s (reference: the larger)")
    for r in rows:
        r["plain_default_pts_s"] = 1 / default_alloc[r["model"]]
    print("plain loop, glibc's default allocator (as the reference code runs): "
          + ", ".join(f"{r['model']} {r['plain_default_pts_s']:.2f} pts/s (engine {r['engine_pts_s'] / r['plain_default_pts_s']:.2f}x)"
                      for r in rows))
    print("below, the plain loop runs with the engine's allocator setting too:")
    print(f"{'model':<8} {'params':>8} {'plain pts/s':>12} {'engine pts/s':>13} {'speedup':>8} "
          f"{'engine GFLOP/s':>15} {'of matmul':>10} {'max|diff|':>10}  plan")
    for r in rows:
        gf = r["flops_per_point"] * r["engine_pts_s"]
        e = r["engine"]
        print(f"{r['model']:<8} {r['params']:>8} {r['plain_pts_s']:>12.2f} {r['engine_pts_s']:>13.2f} "
              f"{r['speedup']:>7.2f}x {gf / 1e9:>15.1f} {gf / ref:>10.2f} {r['max_abs_diff']:>10.2e}  "
              f"{e['method']} chunk={e['chunk_size']} batch={e['eval_batch']} passes={e['passes']} "
              f"bn={e['bn_pass']}")
        if "separate_pts_s" in r:
            print(f"{'':<8} BN statistics as a separate pass (batches of 1024): {r['separate_pts_s']:.2f} pts/s "
                  f"({r['separate_pts_s'] / r['plain_pts_s']:.2f}x the plain loop); the fused "
                  f"default differs from the plain loop (BN batches of 128) by at most {r['fused_vs_plain']:.1e}")
    if not args.skip_plane:
        p = bench_plane(Path(args.out), args.grid)
        print(f"lowloss plane, three digits mlp modes, --grid {p['grid']}: {p['seconds']:.1f}s end to end "
              f"({p['compute_seconds']:.1f}s grid, {p['points_per_second']:.0f} points/s); figures in {p['dir']}")
    print(f"load average at end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
