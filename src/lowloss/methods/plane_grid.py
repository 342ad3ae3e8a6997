"""Evaluating a plane's grid points in resumable chunks.

A :class:`PlaneTask` evaluates any set of flat grid indices (row-major over the G x G lattice) of one
plane: it is self-contained (model, data, plane, axes, engine settings), so it can run in this process or
be shipped to a worker. A :class:`GridStore` keeps what is known of the lattice: it reads the chunks saved
in ``chunks/`` (a damaged or foreign chunk is recomputed, never trusted), computes the indices asked for
that are not known yet in chunks written atomically as they finish, and reports progress.

The chunks run through an executor (:mod:`lowloss.engine.executor`): in this process, one after the other,
or as tasks on a Ray cluster, where the task (model, data, plane) is put into the object store once and
fixed-size chunks go to the workers. Either way only this process writes chunk files, so an interrupted
plane resumes from them the same way. With a fixed `chunk_points` the chunks are the same
slices of the lattice either way, so a plane through Ray equals the local plane bit for bit at the same torch
thread count. Without it, chunk sizes follow the measured speed (a first chunk of 64 points, then about
`chunk_seconds` of work each, at most an equal share per worker) in both cases; a chunk's weight vectors come
from one matrix product whose last-bit rounding can depend on the number of rows, so values then agree to a
few units in the last place.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..engine.evaluate import evaluate_vectors
from ..engine.executor import Executor
from ..rundir import load_npz, save_npz
from ..subspaces.plane import Plane
from ..utils import LowlossError, progress

CHUNK_DIR = "chunks"
STATE_FILE = "state.json"
MAX_CHUNK = 16384
FIRST_CHUNK = 64  # points of the first chunk, whose speed sizes the others when chunk_points is None


@dataclass
class PlaneTask:
    """The metrics of one plane at flat grid indices: ``task(indices) -> ({metric: [n] array}, engine)``."""

    model: nn.Module
    data: object
    plane: Plane
    xs: np.ndarray
    ys: np.ndarray
    metrics: tuple[str, ...]
    splits: tuple[str, ...]
    bn_subset: int | None = None
    batch_size: int | None = None
    memory_budget: int | None = None

    def coordinates(self, indices) -> torch.Tensor:
        """[n, 2] (x, y) of flat row-major indices ``iy * G + ix``."""
        idx = np.asarray(indices, dtype=np.int64)
        g = len(self.xs)
        return torch.from_numpy(np.stack([self.xs[idx % g], self.ys[idx // g]], axis=1).astype(np.float64))

    def __call__(self, indices) -> tuple[dict, dict]:
        vectors = self.plane.points(self.coordinates(indices))
        res = evaluate_vectors(self.model, vectors, self.data, splits=self.splits, bn_subset=self.bn_subset,
                               batch_size=self.batch_size, memory_budget=self.memory_budget)
        return {m: res[m].numpy() for m in self.metrics}, res["engine"]


class GridStore:
    """The known values of a lattice of `total` points, backed by the chunk files in `directory`."""

    def __init__(self, directory: Path, total: int, metrics, *, quiet: bool = False, desc: str = "plane"):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.total, self.metrics, self.quiet, self.desc = total, tuple(metrics), quiet, desc
        self.values = {m: np.full(total, np.nan) for m in self.metrics}
        self.done = np.zeros(total, bool)
        self.seconds_before = 0.0
        self.engine: dict = {}
        self.chunks_run = 0
        self.seconds = 0.0  # of this session's evaluations
        self.executor: Executor | None = None  # where compute() runs chunks unless told otherwise (None: here)
        self._shared: tuple = (None, None)  # (task, its handle in the executor): shipped once per task
        self._read()
        self.resumed = int(self.done.sum())

    def _read(self) -> None:
        for f in sorted(self.directory.glob("c_*.npz")):
            try:  # a damaged chunk (or one without these metrics) is recomputed, not trusted
                z = load_npz(f)
                idx = np.asarray(z["idx"], dtype=np.int64)
                got = {m: np.asarray(z[m], dtype=float) for m in self.metrics}
                if idx.ndim != 1 or not len(idx) or idx.min() < 0 or idx.max() >= self.total \
                        or any(v.shape != idx.shape for v in got.values()):
                    raise ValueError("wrong indices or shape")
                sec = float(z["seconds"])
            except (LowlossError, KeyError, ValueError, TypeError):
                f.unlink(missing_ok=True)
                continue
            for m in self.metrics:
                self.values[m][idx] = got[m]
            self.done[idx] = True
            self.seconds_before += sec

    def missing(self, indices=None) -> np.ndarray:
        """The sorted flat indices among `indices` (default: all) whose values are not known yet."""
        idx = np.arange(self.total) if indices is None else np.unique(np.asarray(indices, dtype=np.int64))
        return idx[~self.done[idx]]

    def save(self, indices: np.ndarray, arrays: dict, seconds: float) -> None:
        """Record the values of `indices` (one chunk file, written atomically)."""
        indices = np.asarray(indices, dtype=np.int64)
        save_npz(self.directory / f"c_{int(indices[0]):09d}_{self.chunks_run:06d}.npz",
                 {"idx": indices, "seconds": seconds, **{m: arrays[m] for m in self.metrics}})
        for m in self.metrics:
            self.values[m][indices] = arrays[m]
        self.done[indices] = True
        self.chunks_run += 1
        self.seconds += seconds

    def compute(self, indices, task, *, executor: Executor | None = None, chunk_points: int | None = None,
                chunk_seconds: float = 20.0, stop_after_chunks: int | None = None, bar=None) -> bool:
        """Evaluate the unknown points among `indices` with `task`, chunk by chunk (through `executor`; default:
        in this process); False when stopped early by `stop_after_chunks` (chunks run in this session,
        counted across calls)."""
        todo = self.missing(indices)
        executor = executor or self.executor
        own_bar = bar is None
        if own_bar:
            bar = progress(total=self.total, initial=int(self.done.sum()), desc=self.desc, quiet=self.quiet,
                           unit="pt")
        try:
            if executor is not None and executor.name != "local":
                return self._compute_on(executor, todo, task, chunk_points, chunk_seconds, stop_after_chunks, bar)
            size = chunk_points or FIRST_CHUNK
            start = 0
            while start < len(todo):
                if stop_after_chunks is not None and self.chunks_run >= stop_after_chunks:
                    return False
                part = todo[start:start + size]
                t0 = time.perf_counter()
                arrays, self.engine = task(part)
                dt = time.perf_counter() - t0
                self.save(part, arrays, dt)
                bar.update(len(part))
                if chunk_points is None:  # aim for chunks of ~chunk_seconds: few files, little lost on a kill
                    size = _chunk_size(len(part), dt, chunk_seconds)
                start += len(part)
        finally:
            if own_bar:
                bar.close()
        return True

    def _compute_on(self, executor: Executor, todo: np.ndarray, task, chunk_points, chunk_seconds,
                    stop_after_chunks, bar) -> bool:
        """`todo` through a remote executor: the task shipped once, fixed-size chunks to the workers, each
        finished chunk saved here as it arrives. Without `chunk_points` a first chunk of FIRST_CHUNK points measures
        a worker's rate, which sizes the rest (at most an equal share per worker, so all of them work)."""
        if not len(todo):
            return True
        if self._shared[0] is not task:
            self._shared = (task, executor.share(task))
        shared = (self._shared[1],)
        start = 0
        size = chunk_points
        while start < len(todo):
            if stop_after_chunks is not None and self.chunks_run >= stop_after_chunks:
                return False
            if size is None:
                parts = [todo[:FIRST_CHUNK]]
            else:
                rest = todo[start:]
                parts = [rest[i:i + size] for i in range(0, len(rest), size)]
            with contextlib.closing(executor.map(run_chunk, parts, shared=shared, label="plane chunk")) as done:
                for k, (arrays, engine, dt) in done:
                    self.engine = engine
                    self.save(parts[k], arrays, dt)
                    bar.update(len(parts[k]))
                    start += len(parts[k])
                    if stop_after_chunks is not None and self.chunks_run >= stop_after_chunks \
                            and start < len(todo):
                        return False
            if size is None:
                share = -(-(len(todo) - start) // executor.workers)
                size = max(1, min(_chunk_size(len(parts[0]), dt, chunk_seconds), share))
        return True

    def arrays(self, shape) -> dict:
        return {m: self.values[m].reshape(shape) for m in self.metrics}


def run_chunk(task: PlaneTask, indices) -> tuple[dict, dict, float]:
    """One chunk, as a worker runs it: (metrics, the engine's plan, seconds)."""
    t0 = time.perf_counter()
    arrays, engine = task(indices)
    return arrays, engine, time.perf_counter() - t0


def _chunk_size(points: int, seconds: float, chunk_seconds: float) -> int:
    """Points per chunk for about `chunk_seconds` of work, from `points` done in `seconds`."""
    return int(min(max(16, points / max(seconds, 1e-6) * chunk_seconds), MAX_CHUNK))
