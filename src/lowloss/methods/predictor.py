"""Predictors: any ensemble of networks that share one module, evaluated as the mean of softmax outputs.

A single run, a deep ensemble, FGE/SSE snapshots, SWAG / MultiSWAG samples and ESPRO simplex samples are
all a :class:`Predictor`: a module plus a sequence of members, each a parameter vector with BN buffers
(or ``None``: recompute BN statistics for that member on the training data). :func:`load_predictor` opens
any finished lowloss run directory as a Predictor, so downstream tools (ensemble evaluation, calibration,
dataset shift, the study) treat every method alike.

:data:`LOADERS` names the loader of each method (the ``method`` of a run's run.json).
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import torch
from torch import nn

from ..engine.evaluate import EVAL_BATCH, plan_evaluation, run_plan
from ..params import has_batchnorm
from ..rundir import MODEL_FILE, load_run, load_runs, read_result
from ..utils import LowlossError

Member = tuple[torch.Tensor, "Mapping[str, torch.Tensor] | None"]
GROUP = 64  # members evaluated in one call of the evaluation engine (at most; bounded by VECTOR_BYTES too)
VECTOR_BYTES = 1 << 28  # stacked member vectors held at once


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
    def member_probs(self, split, generator: torch.Generator | None = None, bn_subset: int | None = None,
                     transform: Callable | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Softmax outputs of every member on `split`, [M, N, C] (float64), and the labels [N].

        Computed by the evaluation engine (:func:`lowloss.engine.evaluate.plan_evaluation` with
        ``scores="probs"``: each member's float32 logits, split in prediction batches, softmax in float64):
        members without buffers in groups, with BN statistics recomputed on the training data (or `bn_subset`
        examples of it) when the module has BatchNorm; members with buffers one by one, with their own.
        `transform(x)` alters the inputs batch by batch (corruptions)."""
        if getattr(self.data, "task", "classification") != "classification":
            raise LowlossError(f"{self.name} predicts regression targets: member probabilities need a classifier")
        split = _Transformed(split, transform) if transform is not None else split
        data = SimpleNamespace(train=self.data.train, test=split, task="classification")
        recompute = has_batchnorm(self.model)
        probs: list[torch.Tensor] = []
        labels = [None]
        group: list[torch.Tensor] = []

        def run(vectors: list[torch.Tensor], recompute_bn: bool, bufs=None) -> None:
            v = torch.stack(vectors)
            plan = plan_evaluation(self.model, v, data, splits=("test",), recompute=recompute_bn,
                                   bn_subset=bn_subset, eval_batch=EVAL_BATCH, method="loop", channels_last=False,
                                   fuse_bn=False, one_pass=False, scores="probs", return_probs=("test",))
            res = run_plan(plan, self.model, v, data, bufs=bufs)
            probs.append(res["probs"]["test"])
            labels[0] = res["labels"]["test"]

        for vector, bufs in self.members(generator):
            if bufs:
                if group:
                    run(group, recompute)
                    group = []
                run([vector], False, bufs)
                continue
            group.append(vector)
            if len(group) >= max(1, min(GROUP, VECTOR_BYTES // max(vector.numel() * vector.element_size(), 1))):
                run(group, recompute)
                group = []
        if group:
            run(group, recompute)
        if not probs:
            raise LowlossError(f"{self.name} has no members to predict with")
        return torch.cat(probs).double(), labels[0]

    def member_logits(self, split, generator: torch.Generator | None = None, bn_subset: int | None = None,
                      transform: Callable | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Log-probabilities of every member, [M, N, C] (float64; the logits up to a per-example constant,
        which no softmax, temperature or ensemble average sees), and labels [N]."""
        probs, y = self.member_probs(split, generator, bn_subset=bn_subset, transform=transform)
        return probs.clamp_min(torch.finfo(probs.dtype).tiny).log(), y

    def predict_probs(self, split, generator: torch.Generator | None = None, **kw) -> tuple[torch.Tensor, torch.Tensor]:
        """Bayesian-model-average / ensemble predictive distribution: mean of the members' softmax."""
        probs, y = self.member_probs(split, generator, **kw)
        return probs.mean(0), y


class _Transformed:
    """A split whose inputs pass through `transform` batch by batch (e.g. a corruption)."""

    def __init__(self, split, transform):
        self.split, self.transform = split, transform

    def __len__(self):
        return len(self.split)

    def batches(self, batch_size, **kw):
        for x, y in self.split.batches(batch_size, **kw):
            yield self.transform(x), y


# run.json "method" -> "module:function(path, device=None, **options) -> Predictor"
# (the loader's module may not be installed in a trimmed build: load_predictor then says so)
LOADERS: dict[str, str] = {
    "train": "lowloss.methods.predictor:run_predictor",        # one trained network
    "swa": "lowloss.methods.predictor:run_predictor",          # an averaged network
    "fge": "lowloss.methods.ensemble:snapshot_predictor",      # FGE snapshots
    "sse": "lowloss.methods.ensemble:snapshot_predictor",      # SSE snapshots
    "swag": "lowloss.methods.swag:load",                       # SWAG, MultiSWAG, curve SWAG
    "simplex": "lowloss.methods.simplex:load",                 # one simplex (SPRO)
    "complex": "lowloss.methods.simplex:load",                 # a simplicial complex
    "dimension": "lowloss.methods.simplex:load",               # the valley's last complex
    "espro": "lowloss.methods.espro:load",                     # ESPRO ensemble of simplexes
    "vardrop": "lowloss.methods.vardrop:vardrop_predictor",    # a variational network
}


def run_predictor(path, device=None) -> Predictor:
    run = load_run(path, device=device)
    return Predictor(run.model, run.data, fixed=[(run.vector, run.buffers)], name=str(path))


def ensemble_predictor(paths, device=None) -> Predictor:
    """A deep ensemble of finished run directories (same architecture and data)."""
    runs = load_runs(paths, device=device)
    members = [(r.vector, r.buffers) for r in runs]
    return Predictor(runs[0].model, runs[0].data, fixed=members, name=f"ensemble of {len(runs)}")


def load_predictor(path, device=None, **options) -> Predictor:
    """Open any finished lowloss run directory as a Predictor (by the method its run.json names).

    `options` go to the method's loader where it takes them (``samples``, ``scale`` for SWAG; ``recompute_bn``
    for snapshots; ``members`` for simplexes) and are ignored where they do not apply."""
    path = Path(path)
    info = read_result(path)
    method = info.get("method", "")
    target = LOADERS.get(method)
    if target is None:
        if isinstance(info.get("model"), dict) and (path / MODEL_FILE).exists():
            target = LOADERS["train"]
        else:
            raise LowlossError(f"{path} holds a `{method}` run, which is not a predictor (predictors: "
                               f"{', '.join(sorted(LOADERS))}, or any run that holds a network)")
    module, _, name = target.partition(":")
    try:
        fn = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
        raise LowlossError(f"{path}: the `{method}` loader {target} is not available ({e})") from None
    params = inspect.signature(fn).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    return fn(path, device=device, **{k: v for k, v in options.items() if takes_any or k in params})


__all__ = ["LOADERS", "Member", "Predictor", "ensemble_predictor", "load_predictor", "run_predictor"]
