"""AutoNEB: minimum-energy paths between two modes by a nudged elastic band (Draxler et al. 2018).

The path is a polygonal chain through pivots p_0 = w_A, p_1, ..., p_n = w_B (the endpoints stay fixed).
Each pivot moves under the NEB force

    F_i = -(I - tau_i tau_i^T) grad L(p_i)  +  k (|p_{i+1} - p_i| - |p_i - p_{i-1}|) tau_i,

the true gradient of the energy (the minibatch train loss, plus wd/2 |p|^2) with its component along the
path removed, and a spring along the path that keeps the pivots evenly spaced; tau_i is the unit tangent
(p_{i+1} - p_{i-1}) / |...|. Both parts come out of one backward pass of torch autograd through the functional
model: the loss is evaluated at q_i = p_i - ((p_i - stop(p_i)) . tau_i) tau_i (equal to p_i, with Jacobian
I - tau tau^T) and the spring is the linear term -k (d_i - d_{i-1}) p_i . tau_i with stopped coefficients.
The pivots are trained by the one Trainer (SGD with momentum) on minibatches.

AutoNEB runs a few rounds: after each, the energy (train loss, BN statistics recomputed per point through
the evaluation engine) is evaluated at points inside every segment, and new pivots are inserted where it is
highest; then the band relaxes again. Gradient evaluations (one network's forward and backward pass over
one minibatch) are counted so that the cost can be compared with curve training.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from ..engine.evaluate import evaluate_vectors
from ..engine.schedules import lr_schedule
from ..engine.train import Trainer
from ..params import Forward, functional_forward
from ..utils import LowlossError
from .curves import PolyChain, segment_points


@dataclass
class NEBConfig:
    pivots: int = 2  # inner pivots of the first band
    rounds: int = 3  # relaxations; pivots are inserted between them
    insert: int = 2  # pivots inserted after each round but the last (at most one per segment)
    epochs: int = 2  # epochs of minibatch steps per round
    lr: float = 0.05
    momentum: float = 0.9
    wd: float = 5e-4
    spring: float = 1.0
    batch_size: int = 64
    points_per_segment: int = 4  # interior points per segment at which the energy is evaluated for insertion
    bn_subset: int | None = None


@dataclass
class NEBResult:
    pivots: list[torch.Tensor]
    rounds: list[dict] = field(default_factory=list)
    gradient_evaluations: int = 0
    energy_evaluations: int = 0

    def chain(self) -> PolyChain:
        n = len(self.pivots)
        return PolyChain(self.pivots, [False] + [True] * (n - 2) + [False])


class _Band(nn.Module):
    """The inner pivots as parameters (what the Trainer moves); the endpoints as buffers."""

    def __init__(self, pivots: list[torch.Tensor]):
        super().__init__()
        self.register_buffer("start", pivots[0].detach().clone())
        self.register_buffer("end", pivots[-1].detach().clone())
        self.inner = nn.ParameterList([nn.Parameter(p.detach().clone()) for p in pivots[1:-1]])

    def all(self) -> list[torch.Tensor]:
        return [self.start, *self.inner, self.end]


def neb_loss(model: nn.Module, band: _Band, x, y, *, spring: float, wd: float = 0.0,
             forward: Forward | None = None) -> tuple[torch.Tensor, int]:
    """A surrogate whose gradient w.r.t. each inner pivot is minus its NEB force and whose value is the mean
    minibatch energy of the inner pivots. Returns (surrogate, correct predictions summed over the pivots)."""
    pts = band.all()
    n = len(pts) - 2
    surrogate, energy, correct = 0.0, 0.0, 0
    with torch.no_grad():
        d = [torch.linalg.vector_norm(pts[i + 1] - pts[i]) for i in range(n + 1)]
    for i in range(1, n + 1):
        p = pts[i]
        with torch.no_grad():
            tau = pts[i + 1] - pts[i - 1]
            tau = tau / torch.linalg.vector_norm(tau).clamp_min(1e-12)
        q = p - torch.dot(p - p.detach(), tau) * tau  # = p, with gradient projected perpendicular to tau
        out = functional_forward(model, q, x, forward=forward)
        e = nn.functional.cross_entropy(out, y)
        if wd:
            e = e + 0.5 * wd * torch.dot(q, q)
        correct += int((out.argmax(-1) == y).sum())
        spring_term = -spring * (d[i] - d[i - 1]) * torch.dot(p - p.detach(), tau)  # value 0, gradient -F_spring
        surrogate = surrogate + e + spring_term
        energy = energy + e.detach()
    return (energy / n) + (surrogate - surrogate.detach()), correct / n


def _energy_profile(model, pivots, data, per_segment: int, bn_subset, forward) -> tuple[list[float], list]:
    """Train loss at each pivot and at `per_segment` interior points of each segment: (losses, points), in
    path order."""
    vecs, where = [], []
    for j in range(len(pivots) - 1):
        for s in range(per_segment + 1):
            a = s / (per_segment + 1)
            vecs.append((1 - a) * pivots[j] + a * pivots[j + 1])
            where.append((j, a))
    vecs.append(pivots[-1])
    where.append((len(pivots) - 1, 0.0))
    losses = []
    with torch.no_grad():
        stack = torch.stack([v.detach() for v in vecs])
        for s in range(0, len(stack), 16):
            r = evaluate_vectors(model, stack[s:s + 16], data, splits=("train",), bn_subset=bn_subset,
                                 forward=forward)
            losses.extend(float(v) for v in r["train_loss"])
    return losses, where


def auto_neb(model: nn.Module, w_a: torch.Tensor, w_b: torch.Tensor, data, cfg: NEBConfig, *,
             generator: torch.Generator, quiet: bool = False, device=None, forward: Forward | None = None,
             on_round: Callable[[NEBResult], None] | None = None, start: NEBResult | None = None) -> NEBResult:
    """Relax a band from w_A to w_B for cfg.rounds rounds, inserting pivots where the energy is highest.

    `start` continues from a saved state (the pivots and rounds done); `on_round(result)` is called after each
    round (to save it).
    """
    if data.num_classes <= 0:
        raise LowlossError("the nudged elastic band's energy is the classification loss; this data is a regression")
    res = start or NEBResult(segment_points(w_a.detach(), w_b.detach(), cfg.pivots + 2))
    was = [(m, m.training) for m in model.modules()]
    nb = data.train.num_batches(cfg.batch_size)
    base_seed = int(torch.randint(0, 2**62, (1,), generator=generator))  # round r draws from base_seed + r
    try:
        while len(res.rounds) < cfg.rounds:
            r = len(res.rounds)
            band = _Band(res.pivots)
            n = len(res.pivots) - 2
            model.train()

            def loss_fn(x, y, step, band=band):
                return neb_loss(model, band, x, y, spring=cfg.spring, wd=cfg.wd, forward=forward)

            params = {f"pivot_{i + 1}": p for i, p in enumerate(band.inner)}
            trainer = Trainer(params, loss_fn, data.train, epochs=cfg.epochs, batch_size=cfg.batch_size,
                              lr=lr_schedule("cosine", cfg.lr, cfg.epochs), momentum=cfg.momentum,
                              weight_decay=0.0, generator=torch.Generator().manual_seed(base_seed + r), device=device, quiet=quiet,
                              desc=f"neb round {r + 1}/{cfg.rounds} ({n} pivots)",
                              nan_hint="lower the learning rate (--lr) or the spring constant")
            history = trainer.run()
            for m, t in was:
                m.training = t
            res.gradient_evaluations += cfg.epochs * nb * n
            pivots = [p.detach().clone() for p in band.all()]
            losses, where = _energy_profile(model, pivots, data, cfg.points_per_segment, cfg.bn_subset, forward)
            res.energy_evaluations += len(losses)
            t = torch.linspace(0, 1, len(losses), dtype=torch.float64)
            chord = (1 - t) * losses[0] + t * losses[-1]
            record = {"round": r + 1, "pivots": n, "gradient_evaluations": res.gradient_evaluations,
                      "max_train_loss": max(losses),
                      "barrier": float((torch.tensor(losses, dtype=torch.float64) - chord).max()),
                      "history": history}
            if r + 1 < cfg.rounds and cfg.insert > 0:  # new pivots inside the segments of highest energy
                best: dict[int, tuple[float, float]] = {}
                for loss, (j, a) in zip(losses, where):
                    if 0 < a < 1 and (j not in best or loss > best[j][0]):
                        best[j] = (loss, a)
                chosen = sorted(best, key=lambda j: -best[j][0])[:cfg.insert]
                new = []
                for j in range(len(pivots) - 1):
                    new.append(pivots[j])
                    if j in chosen:
                        a = best[j][1]
                        new.append((1 - a) * pivots[j] + a * pivots[j + 1])
                new.append(pivots[-1])
                record["inserted_in_segments"] = sorted(chosen)
                pivots = new
            res.pivots = pivots
            res.rounds.append(record)
            if on_round is not None:
                on_round(res)
    finally:
        for m, t in was:
            m.training = t
    return res


def save_state(path, res: NEBResult) -> None:
    """The band after a round (pivots and the rounds' records), atomically: what a resumed run continues from."""
    import json

    from safetensors.torch import save_file

    from ..utils import atomic_path

    tensors = {f"pivot_{i}": p.detach().cpu().contiguous() for i, p in enumerate(res.pivots)}
    meta = {"rounds": json.dumps(res.rounds), "gradient_evaluations": str(res.gradient_evaluations),
            "energy_evaluations": str(res.energy_evaluations)}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)


def load_state(path, device=None) -> NEBResult | None:
    """The band saved by :func:`save_state`; None when it is missing or damaged (the band then starts over)."""
    import json
    from pathlib import Path

    from ..utils import load_tensors

    if not Path(path).exists():
        return None
    try:
        t, meta = load_tensors(path, device)
        pivots = [t[f"pivot_{i}"] for i in range(len(t))]
        return NEBResult(pivots, json.loads(meta["rounds"]), int(meta["gradient_evaluations"]),
                         int(meta["energy_evaluations"]))
    except (LowlossError, KeyError, ValueError):
        return None


def neb_path(model: nn.Module, w_a: torch.Tensor, w_b: torch.Tensor, data, cfg: NEBConfig, *,
             generator: torch.Generator, state_file=None, resume: bool = False, quiet: bool = False, device=None,
             forward: Forward | None = None) -> tuple[PolyChain, list[dict], dict]:
    """AutoNEB from w_A to w_B as a path finder: (the polygonal chain through the pivots, the per-round
    records, the cost). With `state_file` each round is saved, and `resume` continues from it."""
    start = None
    if resume and state_file is not None:
        start = load_state(state_file, w_a.device)
        if start is not None and (start.pivots[0].numel() != w_a.numel()
                                  or not torch.equal(start.pivots[0].to(w_a), w_a.detach())):
            start = None
    if start is not None:
        start.pivots = [p.to(w_a) for p in start.pivots]
    res = auto_neb(model, w_a, w_b, data, cfg, generator=generator, quiet=quiet, device=device, forward=forward,
                   start=start, on_round=(lambda r: save_state(state_file, r)) if state_file is not None else None)
    cost = {"gradient_evaluations": res.gradient_evaluations, "energy_evaluations": res.energy_evaluations,
            "pivots": len(res.pivots) - 2}
    return res.chain(), res.rounds, cost


__all__ = ["NEBConfig", "NEBResult", "auto_neb", "load_state", "neb_loss", "neb_path", "save_state"]
