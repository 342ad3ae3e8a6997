"""Parameters as flat vectors: the three functions everything in lowloss stands on.

* :func:`flatten` / :func:`unflatten` turn a module's trainable parameters into one vector and back
  (views, no copies), following :class:`ParamLayout`.
* :func:`functional_forward` runs a module at any parameter vector with
  ``torch.func.functional_call``; the module itself is never written to, copied or rebuilt.
* :func:`recompute_bn` recomputes BatchNorm running statistics for a given vector with one pass over
  training data (cumulative average, ``momentum=None``), as Garipov et al. do for every point of a curve.
  It returns fresh buffers and leaves the module's own buffers untouched.

A parameter vector covers the parameters with ``requires_grad=True`` in ``named_parameters()`` order;
frozen parameters and buffers (BN statistics) are passed through unchanged.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import torch
from torch import nn
from torch.func import functional_call
from torch.nn.modules.batchnorm import _BatchNorm

from .utils import LowlossError

Forward = Callable[[nn.Module, object], torch.Tensor]


@dataclass(frozen=True)
class ParamLayout:
    """Names, shapes and offsets of a module's trainable parameters inside a flat vector."""

    names: tuple[str, ...]
    shapes: tuple[torch.Size, ...]
    numels: tuple[int, ...]

    @classmethod
    def of(cls, model: nn.Module) -> ParamLayout:
        items = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        return cls(tuple(n for n, _ in items), tuple(p.shape for _, p in items), tuple(p.numel() for _, p in items))

    @property
    def size(self) -> int:
        return sum(self.numels)

    def unflatten(self, vector: torch.Tensor) -> dict[str, torch.Tensor]:
        """Split `vector` (shape [P] or [..., P]) into named views shaped like the parameters."""
        if vector.shape[-1] != self.size:
            raise LowlossError(
                f"parameter vector has {vector.shape[-1]} entries but the model has {self.size} trainable "
                "parameters: the vector was made for a different architecture."
            )
        lead = vector.shape[:-1]
        chunks = torch.split(vector, list(self.numels), dim=-1)
        return {n: c.reshape(tuple(lead) + tuple(s)) for n, c, s in zip(self.names, chunks, self.shapes)}


def layout(model: nn.Module) -> ParamLayout:
    return ParamLayout.of(model)


def num_params(model: nn.Module) -> int:
    return ParamLayout.of(model).size


def flatten(model_or_params: nn.Module | Mapping[str, torch.Tensor]) -> torch.Tensor:
    """One detached vector of the trainable parameters of a module (or of a name->tensor mapping)."""
    if isinstance(model_or_params, nn.Module):
        tensors = [p.detach().reshape(-1) for p in model_or_params.parameters() if p.requires_grad]
    else:
        tensors = [t.detach().reshape(-1) for t in model_or_params.values()]
    if not tensors:
        raise LowlossError("the model has no trainable parameters")
    return torch.cat(tensors)


def unflatten(vector: torch.Tensor, model: nn.Module) -> dict[str, torch.Tensor]:
    """Named views of `vector` shaped like `model`'s trainable parameters (no copy)."""
    return ParamLayout.of(model).unflatten(vector)


def buffers(model: nn.Module) -> dict[str, torch.Tensor]:
    """The module's buffers and frozen parameters: what a parameter vector does not cover."""
    out = {n: b for n, b in model.named_buffers()}
    out.update({n: p.detach() for n, p in model.named_parameters() if not p.requires_grad})
    return out


def state_from_vector(model: nn.Module, vector: torch.Tensor, bufs: Mapping[str, torch.Tensor] | None = None):
    """A `state_dict`-like mapping for `vector` plus buffers (the module's own when `bufs` is None)."""
    out = dict(buffers(model) if bufs is None else bufs)
    out.update({k: v.detach() for k, v in unflatten(vector, model).items()})
    return out


def default_forward(model: nn.Module, x) -> torch.Tensor:
    return model(x)


def functional_forward(model: nn.Module, vector: torch.Tensor, x, bufs: Mapping[str, torch.Tensor] | None = None,
                       forward: Forward | None = None) -> torch.Tensor:
    """Run `model` on `x` with its parameters replaced by `vector` (and buffers by `bufs`).

    Gradients flow back into `vector`. `forward(module, x)` customises the call for models whose
    forward takes dicts or several arguments; by default ``module(x)``.
    """
    pb = dict(_own_buffers_safe(model) if bufs is None else bufs)
    pb.update(unflatten(vector, model))
    if forward is None:
        return functional_call(model, pb, (x,), strict=False)
    with _swap_tensors(model, pb):
        return forward(model, x)


def _own_buffers_safe(model: nn.Module) -> dict[str, torch.Tensor]:
    """The module's buffers, with copies for BN layers in train mode: their in-place running-statistics
    update must not write into the user's module."""
    out = buffers(model)
    for name, m in batchnorm_modules(model):
        if m.training:
            pre = f"{name}." if name else ""
            for k in ("running_mean", "running_var", "num_batches_tracked"):
                if pre + k in out and out[pre + k] is not None:
                    out[pre + k] = out[pre + k].clone()
    return out


@contextlib.contextmanager
def _swap_tensors(model: nn.Module, tensors: Mapping[str, torch.Tensor]):
    """Temporarily replace parameters/buffers by the given tensors for a custom forward callable."""
    from torch.nn.utils.stateless import _reparametrize_module

    with _reparametrize_module(model, dict(tensors)):
        yield


def batchnorm_modules(model: nn.Module) -> list[tuple[str, _BatchNorm]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, _BatchNorm) and m.track_running_stats]


def has_batchnorm(model: nn.Module) -> bool:
    return bool(batchnorm_modules(model))


@contextlib.contextmanager
def bn_statistics_mode(model: nn.Module):
    """BN layers in train mode with cumulative averaging (momentum=None), everything else in eval mode.

    Dropout therefore stays off while statistics are collected. Modes and momenta are restored on exit.
    """
    saved = [(m, m.training) for m in model.modules()]
    bns = [m for _, m in batchnorm_modules(model)]
    momenta = [m.momentum for m in bns]
    try:
        model.eval()
        for m in bns:
            m.train()
            m.momentum = None
        yield
    finally:
        for m, mom in zip(bns, momenta):
            m.momentum = mom
        for m, was in saved:
            m.training = was


def fresh_bn_buffers(model: nn.Module, device: torch.device | None = None) -> dict[str, torch.Tensor]:
    """Copies of the module's buffers with every BN layer's running statistics reset."""
    out = {n: b.detach().clone() for n, b in buffers(model).items()}
    for name, m in batchnorm_modules(model):
        pre = f"{name}." if name else ""
        if m.running_mean is not None:
            out[pre + "running_mean"].zero_()
            out[pre + "running_var"].fill_(1.0)
        if m.num_batches_tracked is not None:
            out[pre + "num_batches_tracked"].zero_()
    if device is not None:
        out = {k: v.to(device) for k, v in out.items()}
    return out


@torch.no_grad()
def recompute_bn(model: nn.Module, vector: torch.Tensor, batches: Iterable, *, forward: Forward | None = None,
                 ) -> dict[str, torch.Tensor]:
    """BatchNorm running statistics for the network at `vector`, from one pass over `batches`.

    `batches` yields inputs or (inputs, targets) pairs from the training data. Returns new buffers
    (for :func:`functional_forward`); the module's own buffers are not modified. For a model without
    BatchNorm the module's buffers are returned as they are and nothing is computed.
    """
    if not has_batchnorm(model):
        return buffers(model)
    bufs = fresh_bn_buffers(model, device=vector.device)
    seen = 0
    with bn_statistics_mode(model):
        for batch in batches:
            x = batch[0] if isinstance(batch, (tuple, list)) else batch
            functional_forward(model, vector, x, bufs, forward=forward)
            seen += 1
    if seen == 0:
        raise LowlossError("recompute_bn got no batches: pass the training data to recompute BN statistics")
    return bufs
