"""Benchmark of the plane on Ray (lowloss.engine.executor): does it scale, and what does a chunk cost?

Measured in ONE run on the same machine, on the digits convnet (BatchNorm, statistics recomputed per point),
the same G x G plane through three seeded random initialisations, in chunks of --chunk points:
  * points/s of the local loop (GridStore.compute in this process) at one torch thread, measured before and
    after the Ray runs; the faster of the two is the reference (the conservative ratio on a shared machine);
  * points/s through Ray with one worker (a cluster of 1 CPU) and with two (2 CPUs), one torch thread per
    task; each after a warm-up plane (worker start and imports are not counted, the object-store put is);
  * the ratios: two workers / local (goal >= 1.8 on 2 cores) and the per-chunk overhead of one worker,
    (its seconds per chunk - local seconds per chunk) / local seconds per chunk (goal < 5%);
  * that every plane's arrays equal the local plane's bit for bit;
  * the plan of a 1000 x 1000 plane at --chunk-seconds of work per chunk: points per chunk, chunks, bytes
    shipped once (the pickled task: model, data, plane) and per chunk (indices out, four metrics back), and
    the points/s a cluster of N such workers would reach from the measured per-worker rate.

Usage: python bench/scale.py [--grid 12] [--chunk 12] [--chunk-seconds 20]
The machine may be shared: the load average is printed before and after; compare ratios, not absolutes.
"""

from __future__ import annotations

import argparse
import math
import os
import pickle
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from lowloss import params as P
from lowloss.data import load_dataset
from lowloss.engine.executor import make_executor
from lowloss.methods.plane import METRICS
from lowloss.methods.plane_grid import GridStore, PlaneTask, run_chunk
from lowloss.models import build_model
from lowloss.subspaces.plane import Plane, grid_axes
from lowloss.utils import torch_threads


def make_task(grid: int) -> PlaneTask:
    data = load_dataset("digits")
    points = []
    for seed in range(3):
        torch.manual_seed(seed)
        model = build_model("convnet", data.input_shape, data.num_classes, {})
        points.append(P.flatten(model).detach().clone())
    plane = Plane.through(*points)
    xs, ys = grid_axes(plane.project(torch.stack(points)).numpy(), grid, 0.2, 0.5)
    return PlaneTask(model, data, plane, xs, ys, METRICS, ("train", "test"))


def timed_plane(task: PlaneTask, total: int, chunk: int, executor=None) -> tuple[float, dict]:
    d = Path(tempfile.mkdtemp(prefix="lowloss-scale-"))
    try:
        store = GridStore(d, total, METRICS, quiet=True)
        t0 = time.perf_counter()
        store.compute(None, task, executor=executor, chunk_points=chunk)
        return time.perf_counter() - t0, {m: v.copy() for m, v in store.values.items()}
    finally:
        shutil.rmtree(d, ignore_errors=True)


def on_ray(task, total, chunk, cpus: int) -> tuple[float, dict]:
    import ray

    ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False)
    try:
        ex = make_executor("ray")
        timed_plane(task, min(total, cpus * 2 * chunk), chunk, ex)  # warm-up: start workers, import torch
        return timed_plane(task, total, chunk, ex)
    finally:
        ray.shutdown()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--grid", type=int, default=12)
    ap.add_argument("--chunk", type=int, default=12)
    ap.add_argument("--chunk-seconds", type=float, default=20.0)
    args = ap.parse_args()
    print(f"load average before: {os.getloadavg()}; cores: {os.cpu_count()}")
    task = make_task(args.grid)
    total = args.grid**2
    with torch_threads(1):
        run_chunk(task, np.arange(args.chunk))  # warm-up of this process
        t_local, ref = timed_plane(task, total, args.chunk)
    chunks = math.ceil(total / args.chunk)
    rate_local = total / t_local
    print(f"plane {args.grid}x{args.grid} ({total} points, {chunks} chunks of {args.chunk}), digits convnet "
          f"({sum(p.numel() for p in task.model.parameters())} parameters)")
    print(f"  local loop, 1 thread : {t_local:7.2f} s  {rate_local:7.2f} points/s")
    rates = {}
    for cpus in (1, 2):
        t, vals = on_ray(task, total, args.chunk, cpus)
        same = all(np.array_equal(vals[m], ref[m], equal_nan=True) for m in METRICS)
        rates[cpus] = total / t
        print(f"  ray, {cpus} worker(s)      : {t:7.2f} s  {rates[cpus]:7.2f} points/s  "
              f"bit-identical to local: {same}")
    with torch_threads(1):
        t_again, _ = timed_plane(task, total, args.chunk)
    print(f"  local loop, again    : {t_again:7.2f} s  {total / t_again:7.2f} points/s")
    rate_local = max(rate_local, total / t_again)
    overhead = rate_local / rates[1] - 1  # (seconds per chunk through one worker - locally) / locally
    print(f"  two workers / local  : {rates[2] / rate_local:.2f}x   (goal >= 1.8)")
    print(f"  one worker overhead  : {100 * overhead:+.1f}% per chunk "
          f"({1 / rates[1] * args.chunk:.3f} s vs {1 / rate_local * args.chunk:.3f} s; goal < 5%)")

    # the plan of the blog's 1000 x 1000 plane at about --chunk-seconds of work per chunk and worker
    per_worker = rates[2] / 2
    pts = int(min(max(16, per_worker * args.chunk_seconds), 16384))
    n = 1000 * 1000
    shipped_once = len(pickle.dumps(task, protocol=5))
    idx = np.arange(pts, dtype=np.int64)
    back = {m: np.zeros(pts) for m in METRICS}
    per_chunk = len(pickle.dumps(idx, protocol=5)) + len(pickle.dumps(back, protocol=5))
    print(f"1000x1000 plane at {args.chunk_seconds:g} s per chunk: {pts} points per chunk, {math.ceil(n / pts)} "
          f"chunks, {shipped_once / 2**20:.2f} MiB shipped once (task), {per_chunk / 1024:.1f} KiB per chunk "
          f"(indices out, {len(METRICS)} metrics back)")
    for w in (1, 2, 8, 32, 128):
        print(f"  {w:>4} worker(s): {w * per_worker:9.1f} points/s -> {n / (w * per_worker) / 3600:8.2f} h")
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
