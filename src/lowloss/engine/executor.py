"""Where independent units of work run: in this process (``local``) or as tasks on a Ray cluster (``ray``).

Every command with independent work (plane chunks, ensemble members, budget runs, shift settings, ESPRO
simplexes, study stages) hands it to an :class:`Executor` from :func:`make_executor`:

* ``executor.share(obj)`` makes a big input (a model, a dataset, a plane) available to every task; on Ray
  it is put once into the object store (workers need no shared filesystem) and each worker process
  deserialises it once;
* ``executor.map(fn, items, shared=(handle, ...))`` runs ``fn(*shared, item)`` for every item and yields
  ``(index, result)`` as tasks finish, so the driver writes each result as it arrives;
* ``executor.submit`` / ``executor.wait`` do the same one task at a time (work whose later tasks depend on
  earlier ones, such as the study's stages).

The local executor runs every call in this process, in order, with this process's thread count: the
same numbers as a plain loop. The Ray executor declares each task's resources
(``num_cpus``; ``num_gpus`` when the work is on CUDA), sets the task's torch thread count from its
``num_cpus``, retries a task whose worker process died (``max_retries``), and turns an exception raised in a
task into a one-line :class:`~lowloss.errors.LowlossError` naming the task, after the tasks still running
have finished and been handed to the driver (so their results are written too).

Ray is an optional extra (``pip install 'lowloss[ray]'``), imported only when a Ray executor is made.
"""

from __future__ import annotations

import logging
import os
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from ..errors import LowlossError

EXECUTORS = ("local", "ray")
INSTALL = "pip install 'lowloss[ray]'"
MAX_RETRIES = 3  # a task whose worker process dies is run again this many times
PROBE_SECONDS = 5.0  # how long a Ray address may take to answer before it counts as unreachable


class Executor:
    """The common interface; see the module docstring."""

    name = "local"
    workers = 1  # tasks that can run at the same time
    num_cpus = 1
    num_gpus = 0.0

    def share(self, obj: Any) -> Any:
        return obj

    def submit(self, fn: Callable, item: Any, *, shared: tuple = (), on_driver_node: bool = False,
               label: str = "task", coordinator: bool = False) -> Any:
        """Start ``fn(*shared, item)`` (`on_driver_node`: on the machine of this process, whose files it uses;
        `coordinator`: a task that mostly waits for tasks of its own, so it holds no CPU of the cluster and
        cannot starve them)."""
        raise NotImplementedError

    def wait(self, handles: list) -> tuple[Any, Any]:
        """Block until one of `handles` finishes: ``(handle, result)``; a task that failed raises a
        :class:`~lowloss.errors.LowlossError` whose ``handle`` is that task's handle."""
        raise NotImplementedError

    def cancel(self, handles: Iterable) -> None:
        pass

    def map(self, fn: Callable, items: Iterable, *, shared: tuple = (), label: str = "task",
            window: int | None = None) -> Iterator[tuple[int, Any]]:
        raise NotImplementedError


class LocalExecutor(Executor):
    """Runs every call in this process, in order (same numbers, same threads as a plain loop)."""

    def submit(self, fn, item, *, shared=(), on_driver_node=False, label="task", coordinator=False):
        return _Thunk(fn, shared, item)

    def wait(self, handles):
        h = handles[0]
        return h, h.fn(*h.shared, h.item)

    def map(self, fn, items, *, shared=(), label="task", window=None):
        for i, item in enumerate(items):
            yield i, fn(*shared, item)


class _Thunk:
    def __init__(self, fn, shared, item):
        self.fn, self.shared, self.item = fn, shared, item


# ------------------------------------------------------------------------------------------------ processes
def _set_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(max(1, int(threads)))


class ProcessExecutor(Executor):
    """Tasks in `workers` worker processes of this machine, spawned once, each with `threads` torch threads
    (the study's ``--jobs``: its stages at the same time on one machine, no Ray needed). ``fn``, its shared
    inputs and items must pickle (module-level functions, plain data). An exception raised in a task becomes
    a one-line :class:`~lowloss.errors.LowlossError` naming the task; a worker that dies (killed, out of
    memory) breaks the pool, and every task still running is reported with that one line."""

    name = "processes"

    def __init__(self, workers: int, threads: int = 1):
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        self.workers, self.num_cpus = max(1, int(workers)), max(1, int(threads))
        self._pool = ProcessPoolExecutor(self.workers, mp_context=mp.get_context("spawn"),
                                         initializer=_set_threads, initargs=(self.num_cpus,))
        self._labels: dict = {}

    def submit(self, fn, item, *, shared=(), on_driver_node=False, label: str = "task", coordinator=False):
        future = self._pool.submit(fn, *shared, item)
        self._labels[future] = label
        return future

    def wait(self, handles):
        from concurrent.futures import FIRST_COMPLETED
        from concurrent.futures import wait as wait_futures

        done, _ = wait_futures(list(handles), return_when=FIRST_COMPLETED)
        h = next(f for f in handles if f in done)  # the first finished in submission order (reproducible)
        label = self._labels.pop(h, "task")
        try:
            return h, h.result()
        except Exception as e:  # noqa: BLE001 - every failure becomes the task's one line
            err = process_task_error(label, e)
            err.handle = h  # which task failed (the study keeps waiting for the others)
            raise err from e

    def cancel(self, handles):
        for h in handles:
            self._labels.pop(h, None)
            h.cancel()  # a task already running finishes (its results are then dropped)

    def map(self, fn, items, *, shared=(), label="task", window=None):
        from concurrent.futures import CancelledError, as_completed

        futures = {self._pool.submit(fn, *shared, item): i for i, item in enumerate(items)}
        failure = None
        try:
            for f in as_completed(futures):
                try:
                    result = f.result()
                except CancelledError:
                    continue
                except Exception as e:  # noqa: BLE001 - drop the queued tasks; the running ones still finish
                    failure = failure or process_task_error(f"{label} {futures[f]}", e)
                    self.cancel(futures)
                    continue
                yield futures[f], result
        finally:
            self.cancel(futures)
        if failure is not None:
            raise failure

    def close(self, kill: bool = False) -> None:
        """Drop the queued tasks and stop the worker processes: after the running tasks finish, or at once
        (`kill`: the driver was interrupted; work written so far is kept, and resumes where it can)."""
        if kill:
            for p in list(getattr(self._pool, "_processes", {}).values()):  # CPython's pool keeps its workers here
                p.terminate()
        self._pool.shutdown(wait=True, cancel_futures=True)


def process_task_error(label: str, e: BaseException) -> LowlossError:
    """One line for a task that failed in a worker process."""
    from concurrent.futures.process import BrokenProcessPool

    if isinstance(e, LowlossError):
        return LowlossError(f"{label} failed: {e}")
    if isinstance(e, BrokenProcessPool):
        return LowlossError(f"{label}: a worker process died (killed, or out of memory); run again to resume")
    text = next((t for t in reversed(str(e).strip().splitlines()) if t.strip()), "")
    return LowlossError(f"{label} failed in a worker process ({type(e).__name__}: {text[:300]})")


# ------------------------------------------------------------------------------------------------------ Ray
class _Shared:
    """A big input in the object store, boxed so that Ray hands the task the reference (resolved and cached
    once per worker process by :func:`_resolve`) instead of deserialising it again for every task."""

    def __init__(self, ref):
        self.ref = ref


_WORKER_CACHE: OrderedDict = OrderedDict()
_WORKER_CACHE_SIZE = 8


def _resolve(value):
    if not isinstance(value, _Shared):
        return value
    key = value.ref.hex()
    if key not in _WORKER_CACHE:
        import ray

        _WORKER_CACHE[key] = ray.get(value.ref)
        while len(_WORKER_CACHE) > _WORKER_CACHE_SIZE:
            _WORKER_CACHE.popitem(last=False)
    _WORKER_CACHE.move_to_end(key)
    return _WORKER_CACHE[key]


def lowloss_task(fn, shared, item, threads):
    """What a Ray worker runs: torch threads from the task's CPUs, the shared inputs, then ``fn``. (Its name
    is the worker's process title, ``ray::lowloss_task``, which run-directory locks recognise as lowloss.)"""
    import torch

    torch.set_num_threads(max(1, int(threads)))
    return fn(*[_resolve(s) for s in shared], item)


def worker_pid(_item=None) -> int:
    """The process id of the worker running the task (tests kill a worker through it)."""
    return os.getpid()


def _import_ray():
    try:
        import ray
    except ImportError:
        raise LowlossError(f"--executor ray needs Ray, which is not installed: {INSTALL}") from None
    return ray


def _host_port(address: str) -> tuple[str, int] | None:
    """(host, port) of a Ray address ``host:port`` or ``ray://host:port``; None for ``auto``/``local``."""
    a = address.strip()
    if a in ("auto", "local", ""):
        return None
    if "://" in a:
        a = a.split("://", 1)[1]
    host, _, port = a.rpartition(":")
    if not host or not port.isdigit():
        raise LowlossError(f"--ray-address {address} is not HOST:PORT (e.g. 10.0.0.1:6379, or auto)")
    return host.strip("[]"), int(port)


def _reachable(address: str) -> None:
    """A one-line error unless something answers at `address` within PROBE_SECONDS (Ray itself keeps retrying
    an unreachable address for minutes)."""
    import socket

    hp = _host_port(address)
    if hp is None:
        return
    try:
        with socket.create_connection(hp, timeout=PROBE_SECONDS):
            pass
    except OSError as e:
        raise LowlossError(f"cannot reach the Ray cluster at --ray-address {address} ({e.strerror or e}); start "
                           "it with `ray start --head` there, or check the address and port") from None


def connect(address: str | None = None, **init_kw) -> Any:
    """The ray module, connected: to the cluster already joined by this process (a Ray task, or a driver that
    called ``ray.init``), else to `address` (default: the ``RAY_ADDRESS`` environment variable), else to a
    local cluster started on demand."""
    ray = _import_ray()
    if ray.is_initialized():
        return ray
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address:
        _reachable(address)
    try:
        ray.init(address=address, include_dashboard=False, logging_level=logging.WARNING, **init_kw)
    except (ConnectionError, RuntimeError, TimeoutError) as e:
        where = f"--ray-address {address}" if address else "a local Ray cluster"
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise LowlossError(f"could not connect to {where} ({first}); check that `ray start` runs there") from None
    return ray


class RayExecutor(Executor):
    """Tasks on a Ray cluster; see the module docstring."""

    name = "ray"

    def __init__(self, address: str | None = None, *, num_cpus: float = 1, num_gpus: float = 0,
                 max_retries: int = MAX_RETRIES):
        self.ray = connect(address)
        self.num_cpus, self.num_gpus, self.max_retries = num_cpus, num_gpus, max_retries
        res = self.ray.cluster_resources()
        slots = [res.get("CPU", 1) / num_cpus if num_cpus else float("inf")]
        if num_gpus:
            slots.append(res.get("GPU", 0) / num_gpus)
        self.workers = max(1, int(min(slots)))
        self._remote = self.ray.remote(lowloss_task)
        self._options = {"num_cpus": num_cpus, "num_gpus": num_gpus, "max_retries": max_retries}
        self._labels: dict = {}

    def share(self, obj):
        return _Shared(self.ray.put(obj))

    def submit(self, fn, item, *, shared=(), on_driver_node=False, label: str = "task", coordinator=False):
        opts = dict(self._options)
        if coordinator:
            opts.update(num_cpus=0, num_gpus=0)
        if on_driver_node:  # work that reads and writes the driver's files (a study stage)
            from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

            node = self.ray.get_runtime_context().get_node_id()
            opts["scheduling_strategy"] = NodeAffinitySchedulingStrategy(node, soft=False)
        ref = self._remote.options(**opts).remote(fn, tuple(shared), item, max(1, int(self.num_cpus)))
        self._labels[ref] = label
        return ref

    def wait(self, handles):
        [done], _ = self.ray.wait(list(handles), num_returns=1)
        label = self._labels.pop(done, "task")
        try:
            return done, self.ray.get(done)
        except self.ray.exceptions.RayError as e:
            err = task_error(label, e)
            err.handle = done  # which task failed (the study keeps waiting for the others)
            raise err from None

    def cancel(self, handles):
        for h in handles:
            self._labels.pop(h, None)
            try:
                self.ray.cancel(h)
            except Exception:  # already finished or gone: nothing to stop
                pass

    def map(self, fn, items, *, shared=(), label="task", window=None):
        items = list(items)
        window = window or 2 * self.workers
        pending: dict = {}
        nxt, failure = 0, None
        try:
            while pending or (nxt < len(items) and failure is None):
                while failure is None and nxt < len(items) and len(pending) < window:
                    pending[self.submit(fn, items[nxt], shared=shared, label=f"{label} {nxt}")] = nxt
                    nxt += 1
                [done], _ = self.ray.wait(list(pending), num_returns=1)
                i = pending.pop(done)
                lab = self._labels.pop(done, f"{label} {i}")
                try:
                    result = self.ray.get(done)
                except self.ray.exceptions.RayError as e:  # let the running tasks finish and be written first
                    failure = failure or task_error(lab, e)
                    continue
                yield i, result
        finally:
            self.cancel(list(pending))
        if failure is not None:
            raise failure


def task_error(label: str, e: BaseException) -> LowlossError:
    """One line for a task that failed on a Ray worker: the task and the original error."""
    cause = getattr(e, "cause", None)
    if isinstance(cause, LowlossError):
        return LowlossError(f"{label} failed on a Ray worker: {cause}")
    err = cause if cause is not None else e
    text = str(err).strip().splitlines()
    detail = next((t for t in reversed(text) if t.strip()), "") if cause is None else (text[0] if text else "")
    return LowlossError(f"{label} failed on a Ray worker ({type(err).__name__}: {detail[:300]})")


def make_executor(name: str = "local", address: str | None = None, *, num_cpus: float = 1,
                  num_gpus: float | None = None, device=None) -> Executor:
    """The executor `name` (``local`` or ``ray``). For Ray: `address` (default ``RAY_ADDRESS``, else a local
    cluster started on demand), `num_cpus` per task (also its torch thread count), and `num_gpus` per task
    (default: 1 when `device` is CUDA, else 0)."""
    if name == "local":
        return LocalExecutor()
    if name != "ray":
        raise LowlossError(f"--executor must be one of {', '.join(EXECUTORS)} (got '{name}')")
    if num_gpus is None:
        if device is not None:
            from ..utils import resolve_device

            device = resolve_device(device)
        num_gpus = 1 if device is not None and device.type == "cuda" else 0
    return RayExecutor(address, num_cpus=num_cpus, num_gpus=num_gpus)


__all__ = ["EXECUTORS", "Executor", "LocalExecutor", "ProcessExecutor", "RayExecutor", "connect", "make_executor", "task_error",
           "worker_pid"]
