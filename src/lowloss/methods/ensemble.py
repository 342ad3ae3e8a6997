"""Snapshot sets (FGE, SSE, deep ensembles) and their predictive average.

A snapshot folder holds ``members.safetensors``: one flat parameter vector per member (``member_000``,
``member_001``, ...) plus, for models with BatchNorm, the member's running statistics as they were at the
moment the snapshot was taken (``member_000/<buffer name>``). Snapshots are SGD iterates, i.e. networks
"trained as such", so like an ordinary run they keep the statistics their own training produced
(free, and what FGE/SSE do); ``snapshot_predictor(..., recompute_bn=True)`` recomputes them instead.
Metadata: ``method``, ``base_run`` (the run the snapshots started from, giving model and data) or
``config`` (a TrainConfig as JSON, for snapshot runs from scratch such as SSE), ``count``.

The predictive distribution of every ensemble in lowloss is the mean of the members' softmax outputs,
never of their logits.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from .. import metrics as M
from ..engine.train import Stateful
from ..utils import LowlossError
from .predictor import Predictor

MEMBERS_FILE = "members.safetensors"


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


def save_members(directory: str | Path, members: Sequence[tuple[torch.Tensor, Mapping | None]], *, method: str,
                 base_run: str | Path | None = None, config: dict | None = None, extra_meta: dict | None = None,
                 ) -> Path:
    """Write DIR/members.safetensors (atomically). Either `base_run` or `config` names model and data."""
    from ..rundir import save_tensors as save_state

    if not members:
        raise LowlossError(f"no snapshots to save in {directory}: the schedule collected none "
                           "(train for at least one full cycle)")
    if base_run is None and config is None:
        raise ValueError("save_members needs base_run or config")
    meta = {"method": method, "count": len(members), "base_run": str(Path(base_run).resolve()) if base_run else ""}
    if config is not None:
        meta["config"] = json.dumps(config, sort_keys=True)
    meta.update(extra_meta or {})
    path = Path(directory) / MEMBERS_FILE
    save_state(path, members_to_tensors(members), meta)
    return path


def read_members(directory: str | Path, device=None) -> tuple[list[tuple[torch.Tensor, dict | None]], dict]:
    path = Path(directory) / MEMBERS_FILE
    if not path.exists():
        raise LowlossError(f"{directory} has no {MEMBERS_FILE}: it is not a snapshot folder (fge, sse)")
    with safe_open(str(path), "pt") as f:
        meta = dict(f.metadata() or {})
    tensors = load_file(str(path), device=str(device) if device is not None else "cpu")
    return tensors_to_members(tensors), meta


def model_and_data(meta: dict, directory: Path, device=None):
    """(model, data) for a snapshot folder or SWAG directory, from its base run or its stored config."""
    from ..rundir import build_from_config, load_run

    base = meta.get("base_run") or ""
    if base:
        cand = [Path(base), directory / base, directory.parent / Path(base).name]
        for c in cand:
            if (c / "run.json").exists():
                run = load_run(c, device=device)
                return run.model, run.data
        raise LowlossError(f"{directory} was made from the run {base}, which no longer exists; "
                           "move it back or keep the run next to its snapshots")
    if meta.get("config"):
        return build_from_config(json.loads(meta["config"]), device=device)
    raise LowlossError(f"{directory}: metadata names neither a base run nor a config")


def snapshot_predictor(path, device=None, samples: int | None = None, recompute_bn: bool = False) -> Predictor:
    """A snapshot folder (members.safetensors) as a Predictor. `samples` is ignored (the members are fixed);
    `recompute_bn` drops the stored BN statistics so they are recomputed per member on the training data."""
    path = Path(path)
    model, data = model_and_data(_peek_meta(path / MEMBERS_FILE), path, device)
    dev = next(iter(model.parameters())).device
    members, meta = read_members(path, device=dev)
    if recompute_bn:
        members = [(v, None) for v, _ in members]
    return Predictor(model, data, fixed=members, name=f"{meta.get('method', 'snapshots')} {path}",
                     info={"method": meta.get("method"), "count": len(members)})


def _peek_meta(path: Path) -> dict:
    if not path.exists():
        raise LowlossError(f"{path} does not exist")
    with safe_open(str(path), "pt") as f:
        return dict(f.metadata() or {})


# ---------------------------------------------------------------------------------------------------- evaluation
def member_probs(predictor: Predictor, split: str = "test", generator: torch.Generator | None = None,
                 bn_subset: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax outputs of every member, [M, N, C] (float64), and the labels [N]."""
    logits, y = predictor.member_logits(getattr(predictor.data, split), generator, bn_subset=bn_subset)
    return torch.softmax(logits.double(), -1), y


def ensemble_curve(probs: torch.Tensor, labels: torch.Tensor) -> list[dict]:
    """Metrics of the ensemble of the first m members, m = 1..M (how the ensemble improves with size)."""
    csum = probs.double().cumsum(0)
    return [{"members": m + 1, **M.classification_metrics(csum[m] / (m + 1), labels)} for m in range(len(probs))]


def ensemble_metrics(probs: torch.Tensor, labels: torch.Tensor) -> dict:
    """accuracy / nll / ece / brier of the mean-of-softmax ensemble of `probs` ([M, N, C])."""
    return M.classification_metrics(M.ensemble_probs(probs.double()), labels)


def open_directory(path, device=None, samples: int = 30, scale: float | None = None,
                   recompute_bn: bool = False) -> Predictor:
    """Any lowloss output directory as a Predictor, passing each kind only the options that apply to it."""
    from .predictor import load_predictor

    path = Path(path)
    if (path / "swag.safetensors").exists() or (path / "multiswag.json").exists():
        return load_predictor(path, device=device, samples=samples, scale=scale)
    if (path / MEMBERS_FILE).exists():
        return load_predictor(path, device=device, recompute_bn=recompute_bn)
    return load_predictor(path, device=device)


def evaluate_directories(dirs, *, out: Path | None = None, samples: int = 30, scale: float | None = None,
                         split: str = "test", recompute_bn: bool = False, seed: int = 0, device=None,
                         quiet: bool = True) -> dict:
    """Metrics of each directory's predictive distribution and of their equal-weight average."""
    from ..rundir import save_tensors as save_state
    from ..utils import progress, versions, write_json

    inputs, per_dir, labels = [], [], None
    for i, d in enumerate(progress(list(dirs), desc="ensemble", quiet=quiet, unit="dir")):
        pred = open_directory(d, device=device, samples=samples, scale=scale, recompute_bn=recompute_bn)
        probs, y = member_probs(pred, split, torch.Generator().manual_seed(seed + i))
        if labels is not None and (len(y) != len(labels) or not torch.equal(y, labels)):
            raise LowlossError(f"{d} was evaluated on different {split} data than {dirs[0]}: ensembles need "
                               "the same dataset and --data-seed")
        labels = y
        mean = probs.mean(0)
        per_dir.append(mean)
        inputs.append({"name": str(d), "members": len(probs), "metrics": M.classification_metrics(mean, y),
                       "member_mean_nll": float(sum(M.nll(p, y) for p in probs) / len(probs))})
    stacked = torch.stack(per_dir)
    res = {"split": split, "inputs": inputs, "ensemble": ensemble_metrics(stacked, labels),
           "ensemble_by_size": ensemble_curve(stacked, labels), "samples": samples, "scale": scale,
           "seed": seed, "ece_bins": M.ECE_BINS, "recompute_bn": recompute_bn, "versions": versions()}
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "ensemble.json", res)
        t = {"ensemble": stacked.mean(0).float(), "labels": labels, **{f"input_{i:03d}": p.float()
                                                                        for i, p in enumerate(per_dir)}}
        save_state(out / "probs.safetensors", t, {"split": split, "inputs": [str(d) for d in dirs]})
    return res
