"""Training a subspace: minimise the expected loss over its coordinates (curves and simplexes share this).

    l(theta) = E_{c ~ sampler} L(phi_theta(c))  [+ wd/2 ||phi_theta(c)||^2]  [+ regulariser(subspace)]

One coordinate per minibatch step as in Garipov et al. (t ~ U(0,1)); optionally the minibatch is split
among K coordinates (`coords_per_batch`, a lower-variance gradient at the same cost) or J full-batch
samples are averaged per step (`samples_per_step`, SPRO's J = 5). BatchNorm layers run in train mode
(batch statistics) while the subspace is trained; the user's module is never written to.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..params import Forward, functional_forward
from .schedules import lr_schedule
from .train import Trainer


@dataclass
class FitConfig:
    epochs: int = 20
    lr: float = 0.05
    momentum: float = 0.9
    wd: float = 5e-4
    batch_size: int = 64
    schedule: str = "curve"
    coords_per_batch: int = 1
    samples_per_step: int = 1


def subspace_loss(model: nn.Module, subspace, x, y, coords: torch.Tensor, *, wd: float = 0.0,
                  classification: bool = True, forward: Forward | None = None):
    """Mean loss over the given coordinates; with several coordinates the batch is split among them.

    Returns (loss, number of correct predictions or None).
    """
    k = coords.shape[0]
    vectors = subspace.points(coords)  # [k, P], differentiable in the trainable controls
    chunks = torch.arange(len(y), device=y.device).tensor_split(k)
    total, correct = 0.0, 0
    for j, idx in enumerate(chunks):
        if len(idx) == 0:
            continue
        xb = x[idx] if k > 1 else x
        yb = y[idx] if k > 1 else y
        out = functional_forward(model, vectors[j], xb, forward=forward)
        if classification:
            loss = nn.functional.cross_entropy(out, yb)
            correct += (out.argmax(-1) == yb).sum().item()
        else:
            loss = nn.functional.mse_loss(out, yb)
        if wd:
            loss = loss + 0.5 * wd * torch.dot(vectors[j], vectors[j])  # no squared temporary of size P
        total = total + loss * (len(idx) / len(y))
    return total, (correct if classification else None)


def fit_subspace(model: nn.Module, subspace, data, cfg: FitConfig, *, generator: torch.Generator,
                 regulariser: Callable[[], torch.Tensor] | None = None, run_dir: str | Path | None = None,
                 resume: bool = False, quiet: bool = False, desc: str = "subspace", device=None,
                 forward: Forward | None = None, after_step=None, after_epoch=None, extra=None) -> list[dict]:
    """Train the trainable control points of `subspace` on `data.train`. Returns the per-epoch history.

    `regulariser()` is added to every step's loss (e.g. -lambda log Vol for SPRO). The checkpoint in
    `run_dir` makes the fit resumable exactly.
    """
    classification = data.num_classes > 0
    sample_gen = torch.Generator(device="cpu").manual_seed(int(torch.randint(0, 2**62, (1,), generator=generator)))
    was_training = [(m, m.training) for m in model.modules()]
    model.train()

    def loss_fn(x, y, step):
        total, correct = 0.0, 0
        for _ in range(cfg.samples_per_step):
            coords = subspace.sample(cfg.coords_per_batch, sample_gen).to(x.device if device is None else device)
            loss, c = subspace_loss(model, subspace, x, y, coords, wd=cfg.wd, classification=classification,
                                    forward=forward)
            total = total + loss / cfg.samples_per_step
            if c is not None:
                correct += c / cfg.samples_per_step
        if regulariser is not None:
            total = total + regulariser()
        return total, (correct if classification else None)

    class _SamplerState:
        def state_tensors(self):
            return {"sample_generator": sample_gen.get_state()}

        def load_state_tensors(self, t):
            if "sample_generator" in t:
                sample_gen.set_state(t["sample_generator"])

    trainable = {n: p for n, p in subspace.named_parameters() if p.requires_grad}
    trainer = Trainer(trainable, loss_fn, data.train, epochs=cfg.epochs, batch_size=cfg.batch_size,
                      lr=lr_schedule(cfg.schedule, cfg.lr, cfg.epochs), momentum=cfg.momentum, weight_decay=0.0,
                      generator=generator, device=device, run_dir=run_dir, quiet=quiet, desc=desc,
                      after_step=after_step, after_epoch=after_epoch,
                      extra={"sampler": _SamplerState(), **(extra or {})})
    try:
        return trainer.run(resume=resume)
    finally:
        for m, was in was_training:
            m.training = was
