"""Learning-rate schedules, as functions of the (fractional) epoch or of the optimiser step.

The Trainer asks for ``lr(epoch)`` before every step. Epoch schedules (`lr_schedule`) describe a whole
run; step schedules (cyclic rates of FGE, SSE and SWA, where a cycle may be a fraction of an epoch) are
functions of the step index t and become epoch schedules through :class:`StepSchedule`.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from ..utils import LowlossError

SCHEDULES = ("constant", "cosine", "step", "curve", "linear")


def lr_schedule(name: str, lr: float, epochs: float, *, final_ratio: float = 0.01) -> Callable[[float], float]:
    """Learning rate as a function of the (fractional) epoch.

    constant: lr throughout. cosine: lr * (1 + cos(pi e / E)) / 2. step: x0.1 at 50% and 75% of training.
    linear: linear decay from lr to lr * final_ratio. curve: Garipov et al.'s reference schedule, lr for the
    first half, linear decay to lr * final_ratio (1%) by 90%, then constant.
    """
    if name not in SCHEDULES:
        raise LowlossError(f"unknown schedule '{name}'; valid: {', '.join(SCHEDULES)}")

    def f(e: float) -> float:
        p = min(max(e / max(epochs, 1e-12), 0.0), 1.0)
        if name == "constant":
            return lr
        if name == "cosine":
            return lr * 0.5 * (1 + math.cos(math.pi * p))
        if name == "step":
            return lr * (0.1 ** ((p >= 0.5) + (p >= 0.75)))
        if name == "linear":
            return lr * (1 - (1 - final_ratio) * p)
        # curve
        if p <= 0.5:
            return lr
        if p <= 0.9:
            return lr * (1.0 - (p - 0.5) / 0.4 * (1 - final_ratio))
        return lr * final_ratio

    return f


class StepSchedule:
    """Trainer-compatible lr(epoch) built from a per-step rule lr_at_step(t), t = 0, 1, ... (the step index)."""

    def __init__(self, lr_at_step: Callable[[int], float], batches_per_epoch: int):
        self.lr_at_step, self.n = lr_at_step, batches_per_epoch

    def step_of(self, epoch: float) -> int:
        return int(round(epoch * self.n))

    def __call__(self, epoch: float) -> float:
        return self.lr_at_step(self.step_of(epoch))


def cycle_steps(cycle_epochs: float, batches_per_epoch: int) -> int:
    """Optimiser steps in a cycle of `cycle_epochs` epochs (at least 2, or a clear error)."""
    c = round(cycle_epochs * batches_per_epoch)
    if c < 2:
        raise LowlossError(f"a cycle of {cycle_epochs} epochs is {c} optimiser step(s) with {batches_per_epoch} "
                           "batches per epoch; use a longer --cycle-epochs (a cycle needs at least 2 steps)")
    return c


def fge_lr(s: float, lr_high: float, lr_low: float) -> float:
    """Garipov et al.'s triangular cycle at position s in [0, 1): a1 -> a2 (at s = 0.5) -> a1."""
    s = s % 1.0
    if s < 0.5:
        return (1 - 2 * s) * lr_high + 2 * s * lr_low
    return (2 * s - 1) * lr_high + (2 - 2 * s) * lr_low


def sse_lr(s: float, lr0: float) -> float:
    """Huang et al.'s cosine annealing within a cycle, restarted at s = 0."""
    return 0.5 * lr0 * (1 + math.cos(math.pi * (s % 1.0)))


def swa_cyclic_lr(t: int, cycle: int, lr_high: float, lr_low: float) -> float:
    """Izmailov et al.'s cyclic rate for step t (0-based): linear from a1 to a2 within each cycle of c steps,
    alpha = (1 - u) a1 + u a2 with u = (t mod c + 1) / c, so the cycle's last step (the averaged one) is at a2."""
    u = ((t % cycle) + 1) / cycle
    return (1 - u) * lr_high + u * lr_low


def fge_schedule(steps_per_cycle: int, lr_high: float, lr_low: float) -> Callable[[int], float]:
    return lambda t: fge_lr((t % steps_per_cycle) / steps_per_cycle, lr_high, lr_low)


def sse_schedule(steps_per_cycle: int, lr0: float) -> Callable[[int], float]:
    return lambda t: sse_lr((t % steps_per_cycle) / steps_per_cycle, lr0)


__all__ = ["SCHEDULES", "StepSchedule", "cycle_steps", "fge_lr", "fge_schedule", "lr_schedule", "sse_lr",
           "sse_schedule", "swa_cyclic_lr"]
