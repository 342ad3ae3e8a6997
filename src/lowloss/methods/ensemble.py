"""Mean-of-softmax ensemble of DIRS: each a run, an FGE / SSE snapshot folder, a SWAG or MultiSWAG directory.

Every directory counts as one member with equal weight (a snapshot folder or SWAG directory contributes
its own average: all its snapshots, or --samples draws at --scale with BN statistics recomputed per
draw); run directories together form a deep ensemble. Writes OUT/run.json (accuracy, NLL, ECE, Brier of
each input, of the ensemble, and of the ensemble by size) and OUT/probs.safetensors (the ensemble's
predictive distribution on --split, every input's own, and the labels).

Snapshot folders (``members.safetensors``, written by fge and sse) hold one flat parameter vector per member
(``member_000``, ...) plus, for models with BatchNorm, the member's running statistics as they were when
the snapshot was taken (``member_000/<buffer name>``): snapshots are SGD iterates, networks "trained as
such", so they keep the statistics their own training produced; --recompute-bn recomputes them instead.

With --executor ray every input directory's predictive distribution is computed as a task on a Ray cluster
(the loaded predictor is shipped through the object store), at one torch thread per task; the numbers are
those of a local run at the same thread count. :func:`run_jobs` runs several method runs (ensemble members
of several seeds, a comparison's trainings, a simplex per mode) through an executor: on Ray each run is made
in a worker's scratch directory from shipped copies of its input runs, and this process writes the finished
run directory (workers need no shared filesystem).
"""

from __future__ import annotations

import importlib
import json
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from .. import metrics as M
from ..config import check_common, option, replace, require
from ..engine.executor import EXECUTORS, Executor, make_executor
from ..engine.train import Stateful
from ..rundir import (
    CONFIG_FILE,
    RESULT_FILE,
    RunDir,
    build_from_config,
    config_record,
    find_run,
    load_run,
    load_tensors,
    read_result,
    run_method,
    save_tensors,
)
from ..utils import LowlossError, atomic_path, meta_json, progress
from .predictor import Predictor, load_predictor

INPUTS = {"metavar": "DIRS", "nargs": -1}
MEMBERS_FILE = "members.safetensors"
PROBS_FILE = "probs.safetensors"


@dataclass
class Config:
    """The ensemble of finished run directories."""

    samples: int = option(30, "Samples drawn from each SWAG / MultiSWAG directory (its Bayesian model average).")
    scale: float | None = option(None, "SWAG sampling scale [default: the one stored with each SWAG directory].")
    split: str = option("test", "The split to evaluate on.", choices=("test", "train"))
    recompute_bn: bool = option(False, "Recompute BN statistics for snapshot members too (SWAG samples always "
                                       "are).")
    seed: int = 0
    device: str = "auto"
    executor: str = option("local", choices=EXECUTORS)
    ray_address: str | None = None

    def check(self) -> None:
        require(self.executor in EXECUTORS, f"--executor must be one of {', '.join(EXECUTORS)} (got '{self.executor}')")
        require(self.samples >= 1, f"--samples must be at least 1 (got {self.samples})")
        require(self.scale is None or self.scale >= 0, f"--scale must be >= 0 (got {self.scale})")
        require(self.split in ("test", "train"), "--split must be test or train")


# ---------------------------------------------------------------------------------------------------- snapshots
def member_key(i: int) -> str:
    return f"member_{i:03d}"


class SnapshotCollector(Stateful):
    """Collects (vector, BN buffers) snapshots during training; saved in and restored from checkpoints.

    `take(vector, buffers)` stores detached copies. `steps` records the optimiser step and `lrs` the learning
    rate of the step that produced each snapshot (kept in the checkpoint too, so a resumed run reports the
    same provenance).
    """

    def __init__(self):
        self.members: list[tuple[torch.Tensor, dict[str, torch.Tensor] | None]] = []
        self.steps: list[int] = []
        self.lrs: list[float] = []

    def take(self, vector: torch.Tensor, bufs: Mapping[str, torch.Tensor] | None = None, *, step: int = -1,
             lr: float = float("nan")) -> None:
        b = {k: v.detach().clone() for k, v in bufs.items()} if bufs else None
        self.members.append((vector.detach().clone(), b))
        self.steps.append(int(step))
        self.lrs.append(float(lr))

    def __len__(self) -> int:
        return len(self.members)

    def state_tensors(self) -> dict[str, torch.Tensor]:
        out = members_to_tensors(self.members)
        out["steps"] = torch.tensor(self.steps, dtype=torch.int64)
        out["lrs"] = torch.tensor(self.lrs, dtype=torch.float64)
        return out

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        self.members = tensors_to_members(tensors)
        self.steps = [int(s) for s in tensors.get("steps", torch.zeros(0)).tolist()]
        self.lrs = [float(s) for s in tensors.get("lrs", torch.zeros(0)).tolist()]


def members_to_tensors(members: Sequence[tuple[torch.Tensor, Mapping | None]]) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    seen: set[int] = set()

    def own(t: torch.Tensor) -> torch.Tensor:  # safetensors refuses tensors that share memory
        t = t.detach()
        if t.untyped_storage().data_ptr() in seen:
            return t.clone()
        seen.add(t.untyped_storage().data_ptr())
        return t

    for i, (v, b) in enumerate(members):
        out[member_key(i)] = own(v)
        for k, t in (b or {}).items():
            out[f"{member_key(i)}/{k}"] = own(t)
    return out


def tensors_to_members(tensors: Mapping[str, torch.Tensor]) -> list[tuple[torch.Tensor, dict | None]]:
    n = 0
    while member_key(n) in tensors:
        n += 1
    out = []
    for i in range(n):
        pre = member_key(i) + "/"
        bufs = {k[len(pre):]: v for k, v in tensors.items() if k.startswith(pre)}
        out.append((tensors[member_key(i)], bufs or None))
    return out


def members_file(members: Sequence[tuple[torch.Tensor, Mapping | None]], *, method: str,
                 base_run: str | Path | None = None, config: dict | None = None, extra_meta: dict | None = None,
                 ) -> tuple[dict[str, torch.Tensor], dict]:
    """(tensors, metadata) of members.safetensors. Either `base_run` or `config` (an architecture record:
    model, model_options, data, data_seed, data_dir) names model and data."""
    if not members:
        raise LowlossError("no snapshots to save: the schedule collected none (train for at least one full cycle)")
    if base_run is None and config is None:
        raise ValueError("a snapshot file needs base_run or config")
    meta = {"method": method, "count": len(members), "base_run": str(Path(base_run).resolve()) if base_run else ""}
    if config is not None:
        meta["config"] = json.dumps(config, sort_keys=True)
    meta.update(extra_meta or {})
    return members_to_tensors(members), meta


def save_members(directory: str | Path, members: Sequence[tuple[torch.Tensor, Mapping | None]], *, method: str,
                 base_run: str | Path | None = None, config: dict | None = None, extra_meta: dict | None = None,
                 ) -> Path:
    """Write DIR/members.safetensors (atomically); see :func:`members_file`."""
    path = Path(directory) / MEMBERS_FILE
    save_tensors(path, *members_file(members, method=method, base_run=base_run, config=config,
                                     extra_meta=extra_meta))
    return path


def read_members(directory: str | Path, device=None) -> tuple[list[tuple[torch.Tensor, dict | None]], dict]:
    """The members and metadata of DIR/members.safetensors."""
    tensors, meta = load_tensors(Path(directory) / MEMBERS_FILE, device=device)
    return tensors_to_members(tensors), meta


def model_and_data(meta: dict, directory: Path, device=None):
    """(model, data) for a snapshot folder or SWAG directory, from the base run or the architecture its
    file's metadata names."""
    base = meta.get("base_run") or ""
    if base:
        run = load_run(find_run(base, Path(directory)), device=device)
        return run.model, run.data
    if meta.get("config"):
        return build_from_config(meta_json(meta, "config", directory), device=device)
    raise LowlossError(f"{directory}: metadata names neither a base run nor a config")


def snapshot_predictor(path, device=None, samples: int | None = None, recompute_bn: bool = False) -> Predictor:
    """A snapshot folder (members.safetensors) as a Predictor. `samples` is ignored (the members are fixed);
    `recompute_bn` drops the stored BN statistics so they are recomputed per member on the training data."""
    path = Path(path)
    members, meta = read_members(path)
    model, data = model_and_data(meta, path, device)
    dev = next(iter(model.parameters())).device
    members = [(v.to(dev), None if recompute_bn or b is None else {k: t.to(dev) for k, t in b.items()})
               for v, b in members]
    return Predictor(model, data, fixed=members, name=f"{meta.get('method', 'snapshots')} {path}",
                     info={"method": meta.get("method"), "count": len(members)})


# ---------------------------------------------------------------------------------------------------- evaluation
def member_probs(predictor: Predictor, split: str = "test", generator: torch.Generator | None = None,
                 bn_subset: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax outputs of every member, [M, N, C] (float64), and the labels [N]."""
    return predictor.member_probs(getattr(predictor.data, split), generator, bn_subset=bn_subset)


def ensemble_curve(probs: torch.Tensor, labels: torch.Tensor) -> list[dict]:
    """Metrics of the ensemble of the first m members, m = 1..M (how the ensemble improves with size)."""
    csum = probs.double().cumsum(0)
    return [{"members": m + 1, **M.classification_metrics(csum[m] / (m + 1), labels)} for m in range(len(probs))]


def ensemble_metrics(probs: torch.Tensor, labels: torch.Tensor) -> dict:
    """accuracy / nll / ece / brier of the mean-of-softmax ensemble of `probs` ([M, N, C])."""
    return M.classification_metrics(M.ensemble_probs(probs.double()), labels)


def snapshot_metrics(predictor: Predictor) -> dict:
    """Test metrics of every member and of the ensemble by size (what fge and sse report)."""
    probs, y = member_probs(predictor, "test")
    curve = ensemble_curve(probs, y)
    return {"members": [M.classification_metrics(p, y) for p in probs], "ensemble": curve[-1],
            "ensemble_by_size": curve}


# ---------------------------------------------------------------------------------------------------- method
def _probs_task(pred: Predictor, job: tuple) -> tuple[torch.Tensor, torch.Tensor]:
    split, seed = job
    return member_probs(pred, split, torch.Generator().manual_seed(seed))


def _dir_probs(config: Config, dirs: list[str], quiet: bool) -> Iterator[tuple[str, tuple]]:
    """(directory, (member probs, labels)) of every input, in order: each computed in this process, or as
    a task per directory through Ray (the predictor loaded here and shipped)."""
    def predictor(d):
        return load_predictor(d, device=config.device, samples=config.samples, scale=config.scale,
                              recompute_bn=config.recompute_bn)

    if config.executor == "local":
        for i, d in enumerate(progress(dirs, desc="ensemble", quiet=quiet, unit="dir")):
            yield d, member_probs(predictor(d), config.split, torch.Generator().manual_seed(config.seed + i))
        return
    ex = make_executor(config.executor, config.ray_address, device=config.device)
    got: dict[int, tuple] = {}
    with progress(total=len(dirs), desc="ensemble", quiet=quiet, unit="dir") as bar:
        refs = [ex.submit(_probs_task, (config.split, config.seed + i), shared=(ex.share(predictor(d)),),
                          label=f"ensemble member {d}") for i, d in enumerate(dirs)]
        index = {r: i for i, r in enumerate(refs)}
        pending = list(refs)
        try:
            while pending:
                done, res = ex.wait(pending)
                pending.remove(done)
                got[index[done]] = tuple(t.cpu() for t in res)
                bar.update(1)
        finally:
            ex.cancel(pending)
    for i, d in enumerate(dirs):
        yield d, got[i]


# ---------------------------------------------------------------------------------------------------- many runs
@dataclass
class RunJob:
    """One method run: ``run_method(<module>, config, inputs, out)``; `fit_kw` are passed to a local run only
    (e.g. already loaded data)."""

    module: str
    config: object
    inputs: list | None
    out: Path
    fit_kw: dict | None = None


def pack_dir(path: Path) -> dict[str, bytes]:
    """The files of a run directory (no lock, no temporary files) as ``{relative path: bytes}``."""
    path = Path(path)
    return {str(f.relative_to(path)): f.read_bytes() for f in sorted(path.rglob("*"))
            if f.is_file() and not f.name.startswith(".")}


def _unpack(files: dict[str, bytes], path: Path) -> None:
    for rel, data in files.items():
        with atomic_path(path / rel) as tmp:
            tmp.write_bytes(data)


def remote_run(job: tuple) -> tuple[dict[str, bytes], list[str]]:
    """What a worker does for :func:`run_jobs`: write the shipped input runs into a scratch directory, make the
    run there, return its files and the scratch input paths (which the driver replaces by its own)."""
    import tempfile

    module, config, inputs, name = job
    with tempfile.TemporaryDirectory(prefix="lowloss-") as tmp:
        paths = []
        for k, (base, files) in enumerate(inputs or ()):
            p = Path(tmp) / "in" / str(k) / base
            _unpack(files, p)
            paths.append(str(p.resolve()))
        out = Path(tmp) / "out" / name
        run_method(importlib.import_module(module), config, paths if inputs is not None else None, out, quiet=True)
        return pack_dir(out), paths


def _write_run(job: RunJob, files: dict[str, bytes], scratch: list[str]) -> dict:
    """Write a run made on a worker into job.out through RunDir (guarded, locked), run.json last."""
    module = importlib.import_module(job.module)
    name = module.__name__.rsplit(".", 1)[-1]
    inputs = [str(p) for p in job.inputs] if job.inputs is not None else None
    rd = RunDir.open(job.out, name, config_record(job.config, inputs), resume=True, quiet=True)
    if rd.finished is not None:
        return rd.finished
    with rd:
        mine = [str(Path(p).resolve()) for p in inputs or ()]
        info = json.loads(_replace_paths(files.pop(RESULT_FILE), scratch, mine))
        files.pop(CONFIG_FILE, None)
        _unpack({k: _replace_paths(v, scratch, mine) if k.endswith(".json") else v for k, v in files.items()},
                rd.path)
        rest = {k: v for k, v in info.items() if k not in ("method", "config", "versions", "model")}
        return rd.finish(rest, model=info.get("model"))


def _replace_paths(data: bytes, old: list[str], new: list[str]) -> bytes:
    text = data.decode()
    for o, n in sorted(zip(old, new), key=lambda p: -len(p[0])):
        text = text.replace(json.dumps(o)[1:-1], json.dumps(n)[1:-1])
    return text.encode()


def run_jobs(jobs: Sequence[RunJob], executor: Executor | None = None, *, resume: bool = True,
             quiet: bool = False) -> Iterator[tuple[int, dict]]:
    """Run (or reuse) every job; yields ``(index, run.json contents)`` as runs finish. Locally each job is
    ``run_method`` in this process, in order. Through Ray every job whose directory holds no finished run
    becomes a task: its input runs are shipped to the worker, which makes the run in a scratch directory and
    returns the files; this process writes them into job.out. Jobs must not depend on each other's output
    (run dependent jobs in a later call)."""
    remote = []
    for i, job in enumerate(jobs):
        local = executor is None or executor.name == "local" or (Path(job.out) / RESULT_FILE).exists()
        if local:
            yield i, run_method(importlib.import_module(job.module), job.config, job.inputs, job.out,
                                resume=resume, quiet=quiet, **(job.fit_kw or {}))
        else:
            remote.append(i)
    if not remote:
        return

    def ship(job: RunJob):
        ins = None if job.inputs is None else [(Path(p).name, pack_dir(Path(p))) for p in job.inputs]
        name = importlib.import_module(job.module)
        check_common(job.config)  # bad settings: one line here, before any task starts
        job.config.check()
        if hasattr(name, "check_inputs") and job.inputs is not None:
            name.check_inputs(job.config, job.inputs)
        return (job.module, job.config, ins, Path(job.out).name)

    tasks = [ship(jobs[i]) for i in remote]
    for k, (files, scratch) in executor.map(remote_run, tasks, label="run"):
        yield remote[k], _write_run(jobs[remote[k]], files, scratch)


def fit(config: Config, inputs, run_dir: RunDir, *, quiet: bool = False) -> dict:
    """Evaluate each input directory's predictive distribution and their equal-weight average."""
    require(bool(inputs), "give at least one run, snapshot or SWAG directory")
    dirs = [str(d) for d in inputs]
    split = config.split
    results, per_dir, labels = [], [], None
    for d, (probs, y) in _dir_probs(config, dirs, quiet):
        if labels is not None and (len(y) != len(labels) or not torch.equal(y, labels)):
            raise LowlossError(f"{d} was evaluated on different {split} data than {dirs[0]}: ensembles need "
                               "the same dataset and --data-seed")
        labels = y
        mean = probs.mean(0)
        per_dir.append(mean)
        results.append({"name": d, "members": len(probs), "metrics": M.classification_metrics(mean, y),
                        "member_mean_nll": float(sum(M.nll(p, y) for p in probs) / len(probs))})
    stacked = torch.stack(per_dir)
    run_dir.save_tensors(PROBS_FILE, {"ensemble": stacked.mean(0).float(), "labels": labels,
                                      **{f"input_{i:03d}": p.float() for i, p in enumerate(per_dir)}},
                         {"split": split, "inputs": dirs})
    return run_dir.finish({"split": split, "inputs": results, "ensemble": ensemble_metrics(stacked, labels),
                           "ensemble_by_size": ensemble_curve(stacked, labels), "samples": config.samples,
                           "scale": config.scale, "seed": config.seed, "ece_bins": M.ECE_BINS,
                           "recompute_bn": config.recompute_bn})


def summary(info: dict) -> str:
    from .eval import format_table

    rows = {r["name"]: r["metrics"] for r in info["inputs"]}
    rows[f"ensemble ({len(info['inputs'])})"] = info["ensemble"]
    return "\n" + format_table(rows)


def load(path: str | Path, device=None) -> dict[str, torch.Tensor]:
    """probs.safetensors: ``ensemble`` ([N, C]), ``input_000``, ... (each input's own) and ``labels``."""
    read_result(path, "ensemble", needs=(PROBS_FILE,))
    return load_tensors(Path(path) / PROBS_FILE, device=device)[0]


def ensemble(dirs, config: Config | None = None, out: str | Path = "runs/ensemble", *, quiet: bool = False,
             fresh: bool = False, **overrides) -> dict:
    """Python API: ``ensemble(["runs/m0", "runs/fge"], out="runs/ens", samples=10)``. Returns run.json."""
    return run_method(sys.modules[__name__], replace(config or Config(), **overrides), [str(d) for d in dirs], out,
                      quiet=quiet, fresh=fresh)


__all__ = ["Config", "MEMBERS_FILE", "RunJob", "SnapshotCollector", "ensemble", "ensemble_curve", "ensemble_metrics", "fit",
           "load", "member_probs", "members_file", "model_and_data", "pack_dir", "read_members", "run_jobs", "save_members",
           "snapshot_metrics", "snapshot_predictor", "summary"]
