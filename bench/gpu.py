"""Plane points per second on a GPU (or the CPU): the evaluation engine against the plain per-point loop.

CIFAR-shaped synthetic data made in memory (50,000 train / 10,000 test images of 3x32x32, ten classes whose
means differ a little), preresnet20 and vgg16bn from lowloss's model zoo. For each model, on points of a plane
through the model's initialisation and two random directions:
  * the plain loop as reference code evaluates a point: deep-copy the module, write the vector, recompute BN
    in train mode (cumulative average, batches of 128), evaluate train then test in batches of 128;
  * the engine (lowloss.engine.evaluate.evaluate_vectors) with method="vmap" (chunks of vectors through
    torch.func.vmap) and method="loop" (one vector at a time, whole-set batches), default settings otherwise;
  * memory: torch.cuda.max_memory_allocated per method on a GPU (the process's peak RSS on the CPU);
  * agreement: the engine with the plain loop's BN batches against the plain loop (max |difference|);
  * the cost of a 1000 x 1000 plane extrapolated from each rate, and of an adaptive one evaluating
    --fraction of its points (bench/adaptive.py measures that fraction).

Usage: python bench/gpu.py [--device cuda] [--models preresnet20,vgg16bn] [--points 32] [--plain-points 3]
       python bench/gpu.py --tiny      # seconds on the CPU: 32/16 images, narrow models (the test runs it)
The machine may be shared: compare ratios measured in one run.
"""

from __future__ import annotations

import argparse
import math
import resource
import sys
import time
from pathlib import Path

import torch

from lowloss import params as P
from lowloss.data import Dataset, TensorSplit
from lowloss.engine.evaluate import evaluate_vectors
from lowloss.models import build_model
from lowloss.subspaces.plane import Plane

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/common.py, also when loaded from a file path
from common import plain_loop  # noqa: E402

METRICS = ("train_loss", "train_error", "test_loss", "test_error")
FULL = {"train": 50_000, "test": 10_000, "width": {}}
TINY = {"train": 32, "test": 16, "width": {"preresnet20": 0.25, "vgg16bn": 0.125}}


def synthetic_cifar(n_train: int, n_test: int, device, seed: int = 0) -> Dataset:
    """CIFAR-shaped data made in memory: class k's images are N(mu_k, 1) with small random class means."""
    g = torch.Generator().manual_seed(seed)
    means = 0.3 * torch.randn(10, 3, 32, 32, generator=g)

    def split(n):
        y = torch.randint(0, 10, (n,), generator=g)
        x = torch.randn(n, 3, 32, 32, generator=g) + means[y]
        return TensorSplit(x.to(device), y.to(device))

    return Dataset("synthetic-cifar", split(n_train), split(n_test), (3, 32, 32), 10)


def sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def reset_memory(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def memory_mib(device) -> float:
    """Peak memory of what just ran: the CUDA allocator's peak on a GPU, the process's peak RSS on the CPU."""
    if torch.device(device).type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10


def timed(f, device, reps: int, warmup: bool = True) -> tuple[float, object]:
    """Best wall time of `reps` calls (after one warm-up call unless `warmup` is False), and the last result."""
    out = f() if warmup else None
    best = math.inf
    for _ in range(reps):
        sync(device)
        t = time.perf_counter()
        out = f()
        sync(device)
        best = min(best, time.perf_counter() - t)
    return best, out


def plane_points(model, n: int, scale: float = 0.5, seed: int = 0) -> torch.Tensor:
    """n points of the plane through w and w + scale * |w| / sqrt(P) * (two random directions)."""
    w = P.flatten(model).detach()
    g = torch.Generator().manual_seed(seed)
    step = scale * w.norm() / math.sqrt(w.numel())
    b = w + step * torch.randn(w.numel(), generator=g).to(w)
    c = w + step * torch.randn(w.numel(), generator=g).to(w)
    plane = Plane.through(w, b, c)
    side = max(2, math.ceil(math.sqrt(n)))
    t = torch.linspace(-1.0, 2.0, side, dtype=torch.float64) * float((b - w).norm())
    xy = torch.cartesian_prod(t, t)[:n]
    return plane.points(xy)


def bench_model(name: str, data: Dataset, device, n_points: int, n_plain: int, width: float | None,
                reps: int, warmup: bool = True) -> dict:
    torch.manual_seed(0)
    model = build_model(name, data.input_shape, data.num_classes, {"width": width} if width else None).to(device)
    V = plane_points(model, n_points).to(device)
    row = {"model": name, "params": int(V.shape[1]), "device": str(device), "points": n_points,
           "train": len(data.train), "test": len(data.test)}
    reset_memory(device)
    t, ref = timed(lambda: [plain_loop(model, v, data) for v in V[:n_plain]], device, reps, warmup)
    row["plain_pts_s"] = n_plain / t
    row["plain_mib"] = memory_mib(device)
    for method in ("vmap", "loop"):
        reset_memory(device)
        t, res = timed(lambda m=method: evaluate_vectors(model, V, data, method=m), device, reps, warmup)
        row[f"{method}_pts_s"] = n_points / t
        row[f"{method}_mib"] = memory_mib(device)
        row[f"{method}_engine"] = {k: res["engine"].get(k) for k in ("method", "chunk_size", "eval_batch", "bn_pass")}
    # the engine with the plain loop's BN batches gives the plain loop's numbers (to float32 rounding)
    same = evaluate_vectors(model, V[:n_plain], data, batch_size=128)
    row["max_abs_diff"] = max(abs(float(same[m][i]) - ref[i][j]) for i in range(n_plain)
                              for j, m in enumerate(METRICS))
    return row


def extrapolate(pts_s: float, fraction: float, side: int = 1000) -> dict:
    n = side * side
    return {"full_hours": n / pts_s / 3600, "adaptive_hours": fraction * n / pts_s / 3600}


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--models", default="preresnet20,vgg16bn")
    ap.add_argument("--points", type=int, default=32, help="plane points per engine measurement")
    ap.add_argument("--plain-points", type=int, default=3, help="points of the plain loop")
    ap.add_argument("--reps", type=int, default=2, help="timed repetitions (best taken) after a warm-up")
    ap.add_argument("--fraction", type=float, default=0.05, help="evaluated fraction of an adaptive plane")
    ap.add_argument("--tiny", action="store_true", help="32/16 images, narrow models, 2 points, no warm-up: the "
                                                        "CPU test's size (checks the code path, not speed)")
    ap.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    size = TINY if args.tiny else FULL
    if args.tiny:
        args.points, args.plain_points, args.reps = min(args.points, 2), 1, 1
    device = torch.device(args.device)
    data = synthetic_cifar(size["train"], size["test"], device)
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"device {device} ({gpu}); data {len(data.train)} train / {len(data.test)} test of 3x32x32"
          + (" (--tiny: narrow models)" if args.tiny else ""))
    print(f"{'model':<12} {'params':>9} {'plain pts/s':>12} {'vmap pts/s':>11} {'loop pts/s':>11} {'vmap x':>7} "
          f"{'loop x':>7} {'MiB plain/vmap/loop':>22} {'max|diff|':>10}")
    rows = []
    for name in [m for m in args.models.split(",") if m]:
        r = bench_model(name, data, device, args.points, args.plain_points, size["width"].get(name), args.reps,
                        warmup=not args.tiny)
        best = max(r["vmap_pts_s"], r["loop_pts_s"])
        r["extrapolated"] = {k: extrapolate(r[f"{k}_pts_s"], args.fraction) for k in ("plain", "vmap", "loop")}
        r["best_pts_s"] = best
        rows.append(r)
        print(f"{name:<12} {r['params']:>9} {r['plain_pts_s']:>12.2f} {r['vmap_pts_s']:>11.2f} {r['loop_pts_s']:>11.2f} "
              f"{r['vmap_pts_s'] / r['plain_pts_s']:>6.2f}x {r['loop_pts_s'] / r['plain_pts_s']:>6.2f}x "
              f"{r['plain_mib']:>7.0f}/{r['vmap_mib']:.0f}/{r['loop_mib']:.0f} {r['max_abs_diff']:>10.2e}", flush=True)
        e = r["extrapolated"]
        print(f"{'':<12} 1000x1000 plane: plain loop {e['plain']['full_hours']:.1f} h, engine vmap "
              f"{e['vmap']['full_hours']:.1f} h, loop {e['loop']['full_hours']:.1f} h; adaptive at "
              f"{100 * args.fraction:.0f}% of the points with the faster engine "
              f"{min(e['vmap']['adaptive_hours'], e['loop']['adaptive_hours']):.2f} h "
              f"(vmap plan {r['vmap_engine']})", flush=True)
    return rows


if __name__ == "__main__":
    main()
