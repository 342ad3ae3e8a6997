"""Run directories: the one place that creates, guards, locks, writes and reads them.

Every method writes one directory::

    config.json               the exact configuration, written when the run starts (compared on resume)
    checkpoint.safetensors    training state while a run is interrupted (exact resume)
    run.json                  written last, atomically: {"method", "config", "versions", ...results}
    <artifacts>               model.safetensors, curve.safetensors, plane.npz, figures, ...

A directory is *finished* when run.json exists, *interrupted* when config.json exists without it, and
*foreign* when it holds files but no config.json. :meth:`RunDir.open` decides what to do with each case
(nothing to do / resume / a one-line error naming the fix); every file is written through a temporary
name and renamed, so a half-written file is never mistaken for a finished one; a lock file keeps two
processes from writing the same directory.

Runs that hold a network (``train``, ``swa``, ...) record its architecture as ``run.json["model"]``
(model, model_options, data, data_seed, data_dir); :func:`load_run` turns such a directory back into the
module with its weights and its data.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import params as P
from .config import check_common
from .data import Dataset, load_dataset
from .models import build_model
from .utils import (
    LowlossError,
    atomic_path,
    echo,
    jsonable,
    load_npz,
    load_tensors,
    read_json_file,
    resolve_device,
    save_npz,
    versions,
    write_json,
)

CONFIG_FILE = "config.json"
RESULT_FILE = "run.json"
CHECKPOINT_FILE = "checkpoint.safetensors"
MODEL_FILE = "model.safetensors"
LOCK_FILE = ".lock"
ARCHITECTURE_KEYS = ("model", "model_options", "data", "data_seed", "data_dir")


# ---------------------------------------------------------------------------------------------- files
# The guarded readers live in utils (the engine reads its checkpoint with them too); they are rundir's API.
def save_tensors(path: str | os.PathLike, tensors: dict[str, torch.Tensor], metadata: dict | None = None) -> None:
    """Tensors as safetensors (CPU, contiguous), atomically; metadata values are stored as strings."""
    t = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        from safetensors.torch import save_file

        save_file(t, str(tmp), metadata={k: str(v) for k, v in (metadata or {}).items()})


def load_state_into(model: nn.Module, state: dict[str, torch.Tensor], source: str = "checkpoint") -> None:
    """Load a state dict, explaining any mismatch tensor by tensor instead of torch's traceback."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k}: {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
              for k in own if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing from the {source}: {', '.join(missing[:8])}{' ...' if len(missing) > 8 else ''}")
        if unexpected:
            parts.append(f"not in the model: {', '.join(unexpected[:8])}{' ...' if len(unexpected) > 8 else ''}")
        if shapes:
            parts.append(f"shape differs: {'; '.join(shapes[:8])}")
        raise LowlossError(f"the {source} does not fit the model ({' | '.join(parts)}); "
                           "check --model, --model-opt and --data match the run that wrote it")
    model.load_state_dict(state)


def _same(a, b) -> bool:
    return json.loads(json.dumps(jsonable(a))) == json.loads(json.dumps(jsonable(b)))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a pid reused by an unrelated program after a kill -9 is no lowloss writer
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().lower()
    except OSError:
        return True
    return not cmd or b"python" in cmd or b"lowloss" in cmd


# ---------------------------------------------------------------------------------------------- RunDir
class RunDir:
    """One run directory. Open it with :meth:`open`, write artifacts with its methods, end with :meth:`finish`.

    ``open(path, method, config)`` returns a RunDir whose ``finished`` is the run.json of a finished run
    with the same config (nothing to do) or None (the method runs; ``resuming`` says whether an interrupted
    run with the same config is being continued).
    """

    def __init__(self, path: str | os.PathLike, method: str = "", config: dict | None = None, *,
                 quiet: bool = False):
        self.path = Path(path)
        self.method = method
        self.config = jsonable(config or {})
        self.quiet = quiet
        self.finished: dict | None = None
        self.resuming = False
        self._locked = False

    # ------------------------------------------------------------------ lifecycle
    @classmethod
    def open(cls, path: str | os.PathLike, method: str, config: dict, *, resume: bool = False,
             fresh: bool = False, quiet: bool = False) -> RunDir:
        """Guard `path` for a run of `method` with `config`.

        - finished with the same config: ``finished`` holds its run.json (nothing to do);
        - finished with another config: an error (choose a new --out, or --fresh);
        - interrupted: with `resume` and the same config it continues; without `resume` an error;
        - files that lowloss did not write: an error; `fresh` empties a directory lowloss wrote first.
        """
        rd = cls(path, method, config, quiet=quiet)
        p = rd.path
        rd._refuse_live_writer()  # before anything else: --fresh must not delete a directory being written
        if fresh and p.exists():
            rd._clear()
        if p.exists() and not p.is_dir():
            raise LowlossError(f"--out {p} is a file; choose a directory")
        res, cfg = p / RESULT_FILE, p / CONFIG_FILE
        if res.exists():
            info = read_json_file(res)
            if info.get("method", method) != method:
                raise LowlossError(f"{p} holds a finished `{info.get('method')}` run, not `{method}`; choose a "
                                   "new --out")
            if _same(info.get("config"), rd.config):
                echo(f"{p} is already finished; nothing to do", quiet)
                rd.finished = info
                return rd
            raise LowlossError(f"{p} already holds a finished {method} run with another config; choose a new "
                               "--out (or --fresh to replace it)")
        if cfg.exists():
            before = read_json_file(cfg)
            if not resume:
                raise LowlossError(f"{p} holds an interrupted {method} run: continue it with --resume or choose a "
                                   "new --out")
            if not _same(before, rd.config):
                raise LowlossError(f"--resume with a different config than the interrupted run in {p} (it was "
                                   f"{json.dumps(before)[:300]}); use the same options or a new --out")
            rd.resuming = True
        elif p.exists() and any(not f.name.startswith(".") for f in p.iterdir()):
            raise LowlossError(f"{p} holds files that no lowloss run wrote (no {CONFIG_FILE}); choose a new --out")
        created = not p.exists()
        rd._lock()
        try:
            write_json(p / CONFIG_FILE, rd.config)
        except BaseException:  # e.g. a full or read-only disk: leave nothing behind that we made
            if rd.resuming:
                rd.release()
            else:
                rd.discard(remove_directory=created)
            raise
        return rd

    def _lock_owner(self) -> int:
        """The pid of another live process holding this directory's lock, else 0 (no lock, or a stale one)."""
        lock = self.path / LOCK_FILE
        try:
            pid = int(lock.read_text().strip() or 0)
        except (OSError, ValueError):  # no lock, or one cut short by a kill: nobody holds it
            return 0
        return pid if pid and pid != os.getpid() and _pid_alive(pid) else 0

    def _refuse_live_writer(self) -> None:
        pid = self._lock_owner()
        if pid:
            raise LowlossError(f"{self.path} is being written by another lowloss process (pid {pid}); "
                               "wait for it or choose a new --out")

    def _lock(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        lock = self.path / LOCK_FILE
        # the lock appears with its pid already in it (written aside, then hard-linked: atomic), so another
        # process never reads an empty lock and takes it for a stale one
        tmp = self.path / f"{LOCK_FILE}.{os.getpid()}.tmp"
        tmp.write_text(str(os.getpid()))
        try:
            for _ in range(3):
                try:
                    os.link(tmp, lock)
                except FileExistsError:
                    self._refuse_live_writer()
                    lock.unlink(missing_ok=True)  # stale: its process is gone (or it is ours)
                    continue
                self._locked = True
                return
        finally:
            tmp.unlink(missing_ok=True)
        raise LowlossError(f"{self.path} is being locked by another lowloss process at the same time; choose a "
                           "new --out or try again")

    def release(self) -> None:
        """Drop the lock (done by :meth:`finish`, and by `run_method` however `fit` ends)."""
        if self._locked:
            self._locked = False
            try:
                (self.path / LOCK_FILE).unlink(missing_ok=True)
            except OSError:  # the location went read-only: the lock is recognised as stale later
                pass

    def discard(self, *, remove_directory: bool) -> None:
        """Forget a new run that stopped on bad input before it saved any work: everything it wrote (and its
        directory, when this run created it), so that the corrected command starts afresh."""
        import shutil

        self.release()
        if remove_directory:
            shutil.rmtree(self.path, ignore_errors=True)
            return
        for entry in self.path.iterdir():  # the directory was empty when the run opened it
            if entry.is_dir():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                try:
                    entry.unlink(missing_ok=True)
                except OSError:  # a read-only location: there is nothing of ours to remove either
                    pass

    def __enter__(self) -> RunDir:
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def _clear(self) -> None:
        import shutil

        if (self.path / CONFIG_FILE).exists() or (self.path / RESULT_FILE).exists():
            shutil.rmtree(self.path)
        elif self.path.exists() and any(self.path.iterdir()):
            raise LowlossError(f"--fresh would delete {self.path}, which no lowloss run wrote; remove it yourself")

    def finish(self, result: dict, *, model: dict | None = None, remove: tuple[str, ...] = ()) -> dict:
        """Write run.json (method, config, versions, `model` architecture if any, then `result`), remove the
        checkpoint and the partial files or directories named in `remove`, release the lock. Returns run.json's contents."""
        info = {"method": self.method, "config": self.config, "versions": versions()}
        if model is not None:
            info["model"] = {k: model.get(k) for k in ARCHITECTURE_KEYS}
        info.update(result)
        info = jsonable(info)
        write_json(self.path / RESULT_FILE, info)
        for name in (CHECKPOINT_FILE, *remove):
            target = self.path / name
            if target.is_dir():
                import shutil

                shutil.rmtree(target)
            else:
                target.unlink(missing_ok=True)
        self.release()
        self.finished = info
        return info

    # ------------------------------------------------------------------ files
    def file(self, name: str) -> Path:
        return self.path / name

    @property
    def checkpoint(self) -> Path:
        return self.path / CHECKPOINT_FILE

    def write_json(self, name: str, obj: Any) -> Path:
        write_json(self.path / name, obj)
        return self.path / name

    def read_json(self, name: str) -> Any:
        return read_json_file(self.path / name)

    def save_tensors(self, name: str, tensors: dict[str, torch.Tensor], metadata: dict | None = None) -> Path:
        save_tensors(self.path / name, tensors, metadata)
        return self.path / name

    def load_tensors(self, name: str, device=None):
        return load_tensors(self.path / name, device)

    def sub(self, name: str) -> Path:
        """The path of a sub-run (budget members, MultiSWAG members, study stages)."""
        return self.path / name


def read_result(path: str | os.PathLike, method: str | tuple[str, ...] | None = None, *,
                needs: tuple[str, ...] = ()) -> dict:
    """run.json of a finished run directory (of `method`, holding the files `needs`), or a one-line error."""
    path = Path(path)
    methods = (method,) if isinstance(method, str) else method
    what = f"`lowloss {methods[0]}`" if methods else "lowloss"
    if not (path / RESULT_FILE).exists():
        hint = (" (it was interrupted: finish it with the same command and --resume)"
                if (path / CONFIG_FILE).exists() else "")
        raise LowlossError(f"{path} is not a finished {what} run directory: it has no {RESULT_FILE}{hint}")
    info = read_json_file(path / RESULT_FILE)
    if methods and info.get("method", methods[0]) not in methods:
        raise LowlossError(f"{path} holds a `{info.get('method')}` run; expected a {what} run")
    for n in needs:
        if not (path / n).exists():
            raise LowlossError(f"{path} lacks {n}: re-run the command that wrote it")
    return info


def find_run(recorded: str | os.PathLike, near: str | os.PathLike) -> Path:
    """A run directory recorded in another run: as recorded, else beside `near` or inside it (a moved tree)."""
    p, near = Path(recorded), Path(near)
    for c in (p, near.parent / p.name, near / p.name):
        if (c / RESULT_FILE).exists():
            return c
    raise LowlossError(f"{near} was made from the run {p}, which is gone (looked in {p}, {near.parent / p.name}, "
                       f"{near / p.name}); put it back or re-run")


# ---------------------------------------------------------------------------------------------- networks
@dataclass
class Run:
    """A finished run that holds a network: the module (weights loaded), the data, the architecture."""

    path: Path
    config: dict
    model: nn.Module
    data: Dataset
    device: torch.device

    @property
    def vector(self) -> torch.Tensor:
        return P.flatten(self.model)

    @property
    def buffers(self) -> dict[str, torch.Tensor]:
        return P.buffers(self.model)

    def architecture(self) -> tuple:
        c = self.config
        return (c["model"], tuple(sorted((c.get("model_options") or {}).items())), c["data"],
                c.get("data_seed", 0))


def build_from_config(cfg: dict, data: Dataset | None = None, device=None) -> tuple[nn.Module, Dataset]:
    """The module and data an architecture record (model, model_options, data, data_seed, data_dir) describes."""
    if data is None:
        data = load_dataset(cfg["data"], seed=cfg.get("data_seed", 0), data_dir=cfg.get("data_dir"))
    device = resolve_device(device or cfg.get("device", "auto"))
    data = data.to(device)
    model = build_model(cfg["model"], data.input_shape, data.num_classes, cfg.get("model_options") or {}).to(device)
    return model, data


def load_run(path: str | os.PathLike, device=None, data: Dataset | None = None) -> Run:
    """Load a run directory that holds a network (``lowloss train``, ``swa``, ...) as a :class:`Run`."""
    path = Path(path)
    info = read_result(path, needs=(MODEL_FILE,))
    arch = info.get("model") if isinstance(info.get("model"), dict) else info["config"]
    arch = {**arch, "device": (info.get("config") or {}).get("device", "auto")}
    model, data = build_from_config(arch, data, device)
    state, _ = load_tensors(path / MODEL_FILE, device=next(iter(model.parameters())).device)
    load_state_into(model, state, source=str(path / MODEL_FILE))
    return Run(path, arch, model, data, resolve_device(device or arch.get("device", "auto")))


def load_runs(paths, device=None, same_architecture: bool = True) -> list[Run]:
    """Several runs on the same data (and, by default, the same architecture; checked with a clear error)."""
    runs: list[Run] = []
    for p in paths:
        r = load_run(p, device=device, data=runs[0].data if runs else None)
        if runs and not same_architecture and r.architecture()[2:] != runs[0].architecture()[2:]:
            raise LowlossError(f"{p} and {runs[0].path} were trained on different data or splits "
                               f"({r.architecture()[2:]} vs {runs[0].architecture()[2:]})")
        if runs and same_architecture and r.architecture() != runs[0].architecture():
            raise LowlossError(f"{p} and {runs[0].path} differ in architecture or data "
                               f"({r.architecture()} vs {runs[0].architecture()}); they must match")
        runs.append(r)
    return runs


def input_record(inputs) -> list[str] | None:
    """How a run records its input run directories: absolute paths (None when it has none)."""
    if inputs is None:
        return None
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    return [str(Path(p).resolve()) for p in inputs]


def run_method(method, config, inputs, out: str | os.PathLike, *, resume: bool = False, fresh: bool = False,
               quiet: bool = False, check_inputs: bool = True, **fit_kw) -> dict:
    """Run one method the one way: check the config (and the inputs, with the method's ``check_inputs``), open
    (guard, lock) the run directory, call
    ``method.fit(config, inputs, run_dir, quiet=..., **fit_kw)``; a finished run is returned as it is.

    `method` is a method module (``lowloss.methods.connect``); the config recorded in config.json and
    run.json is the Config's fields plus the input run directories as absolute paths.
    """
    name = method.__name__.rsplit(".", 1)[-1]
    check_common(config)
    config.check()
    if check_inputs and hasattr(method, "check_inputs"):  # bad input runs: an error before anything is written
        method.check_inputs(config, inputs)
    record = config_record(config, inputs)
    existed = Path(out).exists()  # RunDir.open refuses a non-empty directory that holds no run of ours
    rd = RunDir.open(out, name, record, resume=resume, fresh=fresh, quiet=quiet)
    if rd.finished is not None:
        return rd.finished
    with rd:
        try:
            return method.fit(config, inputs, rd, quiet=quiet, **fit_kw)
        except LowlossError:
            if not rd.resuming and not rd.checkpoint.exists():
                rd.discard(remove_directory=not existed)  # bad input found inside fit: leave no stale run
            raise
        except OSError:  # a full or read-only disk: a new run that saved no work yet leaves nothing behind
            if not rd.resuming and rd.path.is_dir() and \
                    {f.name for f in rd.path.iterdir() if not f.name.startswith(".")} <= {CONFIG_FILE}:
                rd.discard(remove_directory=not existed)
            raise


PLACEMENT_FIELDS = ("executor", "ray_address")  # config fields that choose where work runs, not what it is


def config_record(config, inputs=None) -> dict:
    """The JSON a run directory records for `config` (and its input runs)."""
    import dataclasses

    record = jsonable(dataclasses.asdict(config))
    for name in PLACEMENT_FIELDS:  # where the work runs is not what it computes
        record.pop(name, None)
    ins = input_record(inputs)
    if ins is not None:
        record["inputs"] = ins
    return record


__all__ = ["CHECKPOINT_FILE", "CONFIG_FILE", "MODEL_FILE", "RESULT_FILE", "Run", "RunDir", "build_from_config",
           "find_run", "load_npz", "load_run", "load_runs", "load_state_into", "load_tensors", "read_json_file",
           "read_result", "run_method", "save_npz", "save_tensors"]
