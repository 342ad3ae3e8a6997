"""Predictors: any ensemble of networks that share one module, evaluated as the mean of softmax outputs.

A single run, a deep ensemble, FGE/SSE snapshots, SWAG / MultiSWAG samples and ESPRO simplex samples are
all a :class:`Predictor`: a module plus a sequence of members, each a parameter vector with BN buffers
(or ``None``: recompute BN statistics for that member on the training data). :func:`load_predictor` opens
any lowloss run directory as a Predictor, so downstream tools (ensemble evaluation, calibration, dataset
shift, the study) treat every method alike.

Method directories register a loader by marker file in :data:`LOADERS`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..engine.evaluate import bn_buffers_for, predict_logits
from ..params import has_batchnorm
from ..utils import LowlossError

Member = tuple[torch.Tensor, "Mapping[str, torch.Tensor] | None"]


@dataclass
class Predictor:
    """A module and its members. `members()` yields (vector, buffers-or-None) pairs.

    `sampler(n, generator)` (optional) draws n new members (SWAG, simplexes); fixed ensembles use `fixed`.
    """

    model: nn.Module
    data: object  # lowloss.data.Dataset: train split for BN, test split by default
    fixed: list = field(default_factory=list)
    sampler: Callable[[int, torch.Generator], list] | None = None
    num_samples: int = 0
    name: str = "predictor"
    info: dict = field(default_factory=dict)

    def members(self, generator: torch.Generator | None = None) -> Iterator[Member]:
        yield from self.fixed
        if self.sampler is not None and self.num_samples:
            gen = generator if generator is not None else torch.Generator().manual_seed(0)
            yield from self.sampler(self.num_samples, gen)

    def __len__(self) -> int:
        return len(self.fixed) + (self.num_samples if self.sampler is not None else 0)

    @torch.no_grad()
    def member_logits(self, split, generator: torch.Generator | None = None, bn_subset: int | None = None,
                      transform: Callable | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits of every member, [M, N, C], and labels [N]. `transform(x)` alters inputs (corruptions)."""
        outs, y = [], None
        split = _Transformed(split, transform) if transform is not None else split
        for vector, bufs in self.members(generator):
            if bufs is None and has_batchnorm(self.model):
                bufs = bn_buffers_for(self.model, vector, self.data.train, bn_subset=bn_subset)
            logits, y = predict_logits(self.model, vector, split, bufs=bufs)
            outs.append(logits.float().cpu())
        if not outs:
            raise LowlossError(f"{self.name} has no members to predict with")
        return torch.stack(outs), y.cpu()

    def predict_probs(self, split, generator: torch.Generator | None = None, **kw) -> tuple[torch.Tensor, torch.Tensor]:
        """Bayesian-model-average / ensemble predictive distribution: mean of the members' softmax."""
        logits, y = self.member_logits(split, generator, **kw)
        return torch.softmax(logits.double(), -1).mean(0), y


class _Transformed:
    """A split whose inputs pass through `transform` batch by batch (e.g. a corruption)."""

    def __init__(self, split, transform):
        self.split, self.transform = split, transform

    def __len__(self):
        return len(self.split)

    def batches(self, batch_size, **kw):
        for x, y in self.split.batches(batch_size, **kw):
            yield self.transform(x), y


# marker file inside a run directory -> "module:function(path, device) -> Predictor"
# (the loader's module may not be installed in a trimmed build: such markers are skipped)
LOADERS: dict[str, str] = {
    "members.safetensors": "lowloss.methods.ensemble:snapshot_predictor",   # FGE / SSE snapshot folders
    "swag.safetensors": "lowloss.methods.swag:swag_predictor",              # SWAG (and curve SWAG)
    "multiswag.json": "lowloss.methods.swag:multiswag_predictor",           # MultiSWAG mixtures
    "simplex.safetensors": "lowloss.methods.spro:simplex_predictor",        # one ESPRO simplex
    "espro.json": "lowloss.methods.spro:espro_predictor",                   # ESPRO ensemble of simplexes
    "vardrop.json": "lowloss.methods.vardrop:vardrop_predictor",            # a variational network
    "run.json": "lowloss.methods.predictor:run_predictor",                  # one trained network
}


def run_predictor(path, device=None) -> Predictor:
    from ..rundir import load_run

    run = load_run(path, device=device)
    return Predictor(run.model, run.data, fixed=[(run.vector, run.buffers)], name=str(path))


def ensemble_predictor(paths, device=None) -> Predictor:
    """A deep ensemble of finished run directories (same architecture and data)."""
    from ..rundir import load_runs

    runs = load_runs(paths, device=device)
    members = [(r.vector, r.buffers) for r in runs]
    return Predictor(runs[0].model, runs[0].data, fixed=members, name=f"ensemble of {len(runs)}")


def load_predictor(path, device=None, **kw) -> Predictor:
    """Open any lowloss output directory as a Predictor (dispatching on its marker file)."""
    path = Path(path)
    # method-specific markers first: a method directory may also contain a run.json of its base run
    for marker in LOADERS:  # ordered: method markers before run.json
        if (path / marker).exists():
            mod, _, fn = LOADERS[marker].partition(":")
            return getattr(importlib.import_module(mod), fn)(path, device=device, **kw)
    raise LowlossError(f"{path} is not a lowloss run, snapshot, SWAG or simplex directory "
                       f"(none of {', '.join(sorted(LOADERS))} found)")
