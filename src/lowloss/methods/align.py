"""Permute RUN_B's hidden units to match RUN_A (weight matching, Ainsworth et al. 2023 "Git Re-Basin").

The permutation symmetries are found by tracing the network with torch.fx (linear and convolution stacks,
BatchNorm, flatten, residual additions; see lowloss.permute); each group of hidden units of B is then
reordered by a linear assignment that maximises the summed inner products of all weights touching it with
A's, group after group in a seeded order until a sweep no longer improves. The aligned network computes
exactly B's function (the test logits are compared and recorded). With --points the straight line from A to
B and from A to the aligned B are evaluated (train/test loss and error, BN statistics recomputed per point)
and their barriers recorded (Entezari et al. 2022: after alignment the barrier mostly vanishes).

Writes model.safetensors (B's state dict, permuted: loadable like a `lowloss train` run, so connect, plane
and eval accept it), permutation.safetensors (one index vector per group: aligned unit i = B's unit
perm[i]) and run.json (groups, sweeps, objective before/after, max logit difference, lines before/after
alignment with their barriers), line.png.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .. import params as P
from ..config import option, require
from ..engine.evaluate import evaluate_vectors, predict_logits
from ..permute import apply_permutation, permutation_spec, weight_matching
from ..rundir import MODEL_FILE, RunDir, load_run, load_runs
from ..utils import LowlossError

INPUTS = {"metavar": "RUN_A RUN_B", "nargs": 2}
PERM_FILE = "permutation.safetensors"


@dataclass
class Config:
    """One alignment of B to A."""

    max_iter: int = option(100, "Sweeps over the permutation groups at most (weight matching stops earlier when "
                                "a sweep no longer improves).")
    points: int = option(11, "Points on each straight line (A to B, A to aligned B) at which the loss is evaluated "
                             "(0: skip the lines).")
    bn_subset: int | None = None
    seed: int = option(0, "Seed of the order in which the permutation groups are visited.")
    device: str = "auto"

    def check(self) -> None:
        require(self.max_iter >= 1, f"--max-iter must be >= 1 (got {self.max_iter})")
        require(self.points == 0 or self.points >= 2,
                f"--points must be 0 (no lines) or >= 2 so that both endpoints are evaluated (got {self.points})")
        require(self.bn_subset is None or self.bn_subset >= 1, f"--bn-subset must be >= 1 (got {self.bn_subset})")


def align_states(model: nn.Module, state_a: dict, state_b: dict, input_shape, *, seed: int = 0,
                 max_iter: int = 100) -> tuple[dict, dict, dict]:
    """B's state dict permuted to match A's: (aligned state, perms {group: index vector}, info)."""
    spec = permutation_spec(model, input_shape)
    if not spec.sizes:
        raise LowlossError(f"{type(model).__name__} has no hidden units to permute (no permutation group)")
    perms, info = weight_matching(spec, state_a, state_b, max_iter=max_iter, seed=seed)
    info["group_layers"] = {str(g): spec.names.get(g, "") for g in spec.groups}
    return apply_permutation(spec, state_b, perms), perms, info


def align_vector(model: nn.Module, w_a: torch.Tensor, w_b: torch.Tensor, input_shape, *, seed: int = 0,
                 max_iter: int = 100) -> tuple[torch.Tensor, dict]:
    """The flat parameter vector of B permuted to match A (buffers: the module's own, permuted alike)."""
    sa, sb = P.state_from_vector(model, w_a), P.state_from_vector(model, w_b)
    aligned, _, info = align_states(model, sa, sb, input_shape, seed=seed, max_iter=max_iter)
    names = P.layout(model).names
    return torch.cat([aligned[n].reshape(-1) for n in names]).to(w_b), info


def _vector_and_buffers(model: nn.Module, state: dict) -> tuple[torch.Tensor, dict]:
    names = P.layout(model).names
    vec = torch.cat([state[n].reshape(-1) for n in names])
    bufs = {k: v for k, v in state.items() if k not in set(names)}
    return vec, bufs


def barrier(t: torch.Tensor, losses) -> float:
    """max_t [L(t) - ((1-t) L(0) + t L(1))]: the height of the path above the chord between its ends."""
    loss = torch.as_tensor(losses, dtype=torch.float64)
    return float((loss - ((1 - t) * loss[0] + t * loss[-1])).max())


def _line(model, w_a, w_b, data, points: int, bn_subset) -> dict:
    t = torch.linspace(0, 1, points, dtype=torch.float64)
    vecs = (1 - t.to(w_a))[:, None] * w_a[None] + t.to(w_a)[:, None] * w_b[None]
    r = evaluate_vectors(model, vecs, data, bn_subset=bn_subset)
    out = {k: [float(v) for v in r[k]] for k in ("train_loss", "train_error", "test_loss", "test_error")}
    out["barrier"] = barrier(t, out["train_loss"])
    out["test_barrier"] = barrier(t, out["test_loss"])
    return out


def fit(config: Config, inputs, run_dir: RunDir, *, quiet: bool = False) -> dict:
    """Align RUN_B to RUN_A and write the run directory. Returns run.json's contents."""
    config.check()
    a, b = load_runs(inputs, device=config.device)
    if not a.data.input_shape:
        raise LowlossError(f"{inputs[0]} has data without an input shape: cannot trace the network")
    t0 = time.time()
    state_a = {k: v.detach() for k, v in a.model.state_dict().items()}
    state_b = {k: v.detach() for k, v in b.model.state_dict().items()}
    aligned, perms, info = align_states(a.model, state_a, state_b, a.data.input_shape, seed=config.seed,
                                        max_iter=config.max_iter)
    seconds = time.time() - t0
    vec_b, bufs_b = _vector_and_buffers(b.model, state_b)
    vec_al, bufs_al = _vector_and_buffers(b.model, aligned)
    logits_b, _ = predict_logits(b.model, vec_b, b.data.test, bufs=bufs_b)
    logits_al, y = predict_logits(b.model, vec_al, b.data.test, bufs=bufs_al)
    diff = float((logits_b - logits_al).abs().max())
    scale = float(logits_b.abs().max())
    if diff > 1e-4 * max(1.0, scale):
        raise LowlossError(f"aligning {inputs[1]} changed its function (test logits differ by {diff:.3g}): the "
                           "network has an operation the permutation analysis mis-reads; please report it")
    result = {"runs": [str(Path(p).resolve()) for p in inputs], "alignment": info, "align_seconds": seconds,
              "max_logit_difference": diff,
              "test_accuracy": float((logits_al.argmax(-1) == y).double().mean()) if a.data.num_classes else None}
    if config.points and a.data.num_classes > 0:
        lines = {"before": _line(a.model, a.vector, vec_b, a.data, config.points, config.bn_subset),
                 "after": _line(a.model, a.vector, vec_al, a.data, config.points, config.bn_subset)}
        result["t"] = torch.linspace(0, 1, config.points, dtype=torch.float64).tolist()
        result["line"] = lines
        result["summary"] = {"barrier_before": lines["before"]["barrier"], "barrier_after": lines["after"]["barrier"],
                             "max_test_error_before": max(lines["before"]["test_error"]),
                             "max_test_error_after": max(lines["after"]["test_error"])}
    run_dir.save_tensors(PERM_FILE, {f"group_{g}": p for g, p in perms.items()})
    run_dir.save_tensors(MODEL_FILE, aligned, {"model": b.config["model"], "data": b.config["data"]})
    arch = {k: b.config.get(k) for k in ("model", "model_options", "data", "data_seed", "data_dir")}
    return run_dir.finish(result, model=arch)


def summary(info: dict) -> str:
    al = info["alignment"]
    s = (f"{al['groups']} permutation groups, {al['units']} units ({100 * al['moved_fraction']:.0f}% moved), "
         f"{al['sweeps']} sweeps; inner product {al['objective_before']:.4g} -> {al['objective_after']:.4g}; "
         f"max logit difference {info['max_logit_difference']:.2g}")
    if "summary" in info:
        s += (f"\nline barrier (train loss): A-B {info['summary']['barrier_before']:.4f}, "
              f"A-aligned B {info['summary']['barrier_after']:.4f}")
    return s


def load(path: str | Path, device=None):
    """The aligned network as a :class:`lowloss.rundir.Run` (as `lowloss train` runs load)."""
    return load_run(path, device=device)


__all__ = ["Config", "align_states", "align_vector", "fit", "load", "summary"]
