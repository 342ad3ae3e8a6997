"""Permutation symmetries of a network, found by tracing it, and weight matching (Ainsworth et al. 2023).

Hidden units of a network can be reordered without changing its function: permuting the output channels
of a layer and, the same way, the input channels of every layer that reads them. :func:`permutation_spec`
derives these symmetries from the module itself: it traces it with ``torch.fx``, propagates shapes on one
example input and follows each value's channel axis through the graph:

* ``Linear`` / ``Conv1d/2d/3d`` (``groups=1``) start a new permutation group on their output channels and
  tie their input channels to the group of their input;
* ``BatchNorm`` (weight, bias, running_mean, running_var), activations, dropout, pooling, reductions over
  the spatial axes and scalar arithmetic keep the group;
* flattening ``[N, C, *S] -> [N, C*S]`` keeps it too: a following linear layer sees each channel's
  permutation repeated over its ``S`` spatial positions;
* ``add`` / ``sub`` / ``mul`` of two tensors tie their groups together (residual blocks), by union-find;
* the network's input and output channels are fixed.

Anything else (concatenation, attention, grouped convolutions, parameters used outside a module) is a
one-line :class:`~lowloss.errors.LowlossError` naming the operation.

:func:`weight_matching` then finds, group by group, the permutation of network B that maximises the summed
inner products of all parameters with network A: each group's subproblem is a linear assignment
(``scipy.optimize.linear_sum_assignment``) with the other groups held fixed, swept in a seeded random order
until a sweep no longer improves. :func:`apply_permutation` permutes a state dict (parameters and
buffers); the permuted network computes exactly the same function.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import nn

from .utils import LowlossError

FIXED = 0  # the group of the network's input and output channels: never permuted

_PASS_MODULES = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Tanh, nn.Sigmoid, nn.Softplus,
                 nn.Hardtanh, nn.Mish, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout,
                 nn.Identity, nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
                 nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool1d,
                 nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d)
_F = torch.nn.functional
_PASS_FUNCTIONS = {torch.relu, _F.relu, torch.sigmoid, torch.tanh, _F.gelu, _F.silu, _F.leaky_relu, _F.elu,
                   _F.dropout, _F.max_pool1d, _F.max_pool2d, _F.avg_pool1d, _F.avg_pool2d, _F.adaptive_avg_pool1d,
                   _F.adaptive_avg_pool2d, _F.relu6, _F.softplus, torch.nn.functional.hardtanh, operator.neg}
_PASS_METHODS = {"relu", "sigmoid", "tanh", "contiguous", "clone", "float", "double", "detach", "neg"}
_BINARY_FUNCTIONS = {operator.add, torch.add, operator.sub, torch.sub, operator.mul, torch.mul, operator.truediv,
                     torch.div, operator.iadd, operator.imul}
_BINARY_METHODS = {"add", "sub", "mul", "div", "add_", "mul_"}
_REDUCE_METHODS = {"mean", "sum", "amax", "amin"}
_REDUCE_FUNCTIONS = {torch.mean, torch.sum, torch.amax, torch.amin}
_FLATTEN_FUNCTIONS = {torch.flatten}
_RESHAPE_METHODS = {"view", "reshape", "flatten"}


@dataclass(frozen=True)
class TensorAxes:
    """How one state-dict tensor is permuted: reshaped to `view`, then axis k by the group ``groups[k]``
    (None: not permuted). A linear layer after a flatten has view (out, C, S): its channel axis is C."""

    view: tuple[int, ...]
    groups: tuple[int | None, ...]


@dataclass
class PermutationSpec:
    """The permutation groups of a network (id -> number of units) and, per state-dict key, its axes."""

    sizes: dict[int, int]
    axes: dict[str, TensorAxes]
    parameters: tuple[str, ...] = ()  # the keys that are parameters (the weight-matching objective)
    names: dict[int, str] = field(default_factory=dict)  # group id -> the layer that opened it

    @property
    def groups(self) -> list[int]:
        return sorted(self.sizes)

    def describe(self) -> list[dict]:
        return [{"group": g, "layer": self.names.get(g, ""), "units": self.sizes[g],
                 "tensors": sorted(k for k, a in self.axes.items() if g in a.groups)} for g in self.groups]


class _UnionFind:
    def __init__(self):
        self.parent: dict[int, int] = {FIXED: FIXED}
        self.size: dict[int, int | None] = {FIXED: None}

    def new(self, size: int) -> int:
        g = len(self.parent)
        self.parent[g] = g
        self.size[g] = size
        return g

    def find(self, g: int) -> int:
        while self.parent[g] != g:
            self.parent[g] = self.parent[self.parent[g]]
            g = self.parent[g]
        return g

    def union(self, a: int, b: int, what: str) -> int:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return ra
        if FIXED in (ra, rb):  # the fixed group absorbs the other
            ra, rb = FIXED, rb if ra == FIXED else ra
        sa, sb = self.size[ra], self.size[rb]
        if sa is not None and sb is not None and sa != sb:
            raise LowlossError(f"cannot permute the network: {what} ties {sa} channels to {sb}")
        self.parent[rb] = ra
        return ra


@dataclass(frozen=True)
class _Chan:
    """A tensor whose axis 1 (channels or features) carries group `g`; `spatial` > 0: flattened [N, C*S]."""

    g: int
    spatial: int = 0


def _meta_shape(node) -> tuple[int, ...] | None:
    tm = node.meta.get("tensor_meta")
    return tuple(tm.shape) if tm is not None and hasattr(tm, "shape") else None


def _op_name(node) -> str:
    t = node.target
    name = t if isinstance(t, str) else getattr(t, "__name__", str(t))
    return f"{node.op} {name} (node '{node.name}')"


def permutation_spec(model: nn.Module, input_shape, *, example: torch.Tensor | None = None) -> PermutationSpec:
    """The permutation groups of `model` for inputs of shape [N, *input_shape], found by tracing it.

    A graph it cannot permute is a one-line LowlossError naming the operation.
    """
    import torch.fx
    from torch.fx.passes.shape_prop import ShapeProp

    try:
        gm = torch.fx.symbolic_trace(model)
    except Exception as e:  # noqa: BLE001 (any tracing failure is reported the same way)
        raise LowlossError(f"cannot permute {type(model).__name__}: torch.fx cannot trace it "
                           f"({type(e).__name__}: {str(e).splitlines()[0][:160]})") from None
    p = next(iter(model.parameters()), None)
    if example is None:
        example = torch.zeros(2, *input_shape, dtype=p.dtype if p is not None else torch.float32,
                              device=p.device if p is not None else "cpu")
    was = [(m, m.training) for m in gm.modules()]
    gm.eval()
    try:
        with torch.no_grad():
            ShapeProp(gm).propagate(example)
    except Exception as e:  # noqa: BLE001
        raise LowlossError(f"cannot permute {type(model).__name__}: running it on an input of shape "
                           f"{tuple(example.shape)} failed ({type(e).__name__}: {str(e)[:160]})") from None
    finally:
        for m, t in was:
            m.training = t

    uf = _UnionFind()
    state: dict[str, object] = {}
    raw_axes: dict[str, tuple[tuple[int, ...], tuple[int | None, ...]]] = {}
    names: dict[int, str] = {}
    module_out: dict[str, int] = {}
    module_in: dict[str, _Chan] = {}

    def arg_state(a):
        if isinstance(a, torch.fx.Node):
            return state.get(a.name)
        return None

    def need(node, a) -> _Chan:
        s = arg_state(a)
        if not isinstance(s, _Chan):
            raise LowlossError(f"cannot permute the network: {_op_name(node)} gets an input whose channels "
                               "cannot be followed")
        return s

    def tie_input(node, key: str, s: _Chan) -> None:
        if key in module_in:
            prev = module_in[key]
            if prev.spatial != s.spatial:
                raise LowlossError(f"cannot permute the network: {_op_name(node)} is called on differently "
                                   "shaped inputs")
            uf.union(prev.g, s.g, _op_name(node))
        else:
            module_in[key] = s

    def set_axes(key, view, groups):
        raw_axes[key] = (tuple(int(v) for v in view), tuple(groups))

    def flatten_state(node, s: _Chan, in_shape, out_shape) -> _Chan:
        if in_shape is None or out_shape is None:
            raise LowlossError(f"cannot permute the network: {_op_name(node)} has no known shape")
        if tuple(out_shape) == tuple(in_shape):
            return s
        if len(out_shape) == 2 and out_shape[0] == in_shape[0] and len(in_shape) >= 2 and s.spatial == 0 \
                and out_shape[1] == math.prod(in_shape[1:]):
            return _Chan(s.g, math.prod(in_shape[2:]))
        raise LowlossError(f"cannot permute the network: {_op_name(node)} reshapes {tuple(in_shape)} to "
                           f"{tuple(out_shape)} (only flattening [N, C, ...] to [N, C*...] is supported)")

    for node in gm.graph.nodes:
        shape = _meta_shape(node)
        if node.op == "placeholder":
            state[node.name] = _Chan(FIXED)
        elif node.op == "get_attr":
            raise LowlossError(f"cannot permute the network: {_op_name(node)} uses a parameter or buffer outside "
                               "a module")
        elif node.op == "call_module":
            m = gm.get_submodule(node.target)
            key = node.target
            pre = f"{key}." if key else ""
            if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)):
                if isinstance(m, nn.Linear):
                    in_shape = _meta_shape(node.args[0])
                    if in_shape is None or len(in_shape) != 2:
                        raise LowlossError(f"cannot permute the network: {_op_name(node)} is applied to a tensor "
                                           f"of shape {in_shape} (only [N, features] is supported)")
                elif m.groups != 1:
                    raise LowlossError(f"cannot permute the network: {_op_name(node)} is a grouped convolution "
                                       f"(groups={m.groups})")
                s = need(node, node.args[0])
                tie_input(node, key, s)
                if key not in module_out:
                    out_units = m.out_features if isinstance(m, nn.Linear) else m.out_channels
                    module_out[key] = uf.new(out_units)
                    names[module_out[key]] = key
                g = module_out[key]
                w = m.weight
                if s.spatial:
                    set_axes(pre + "weight", (w.shape[0], w.shape[1] // s.spatial, s.spatial), (g, s.g, None))
                else:
                    set_axes(pre + "weight", w.shape, (g, s.g) + (None,) * (w.dim() - 2))
                if m.bias is not None:
                    set_axes(pre + "bias", m.bias.shape, (g,))
                state[node.name] = _Chan(g)
            elif isinstance(m, nn.modules.batchnorm._BatchNorm):
                s = need(node, node.args[0])
                tie_input(node, key, s)
                g = module_in[key].g
                n = m.num_features
                view, groups = ((n // s.spatial, s.spatial), (g, None)) if s.spatial else ((n,), (g,))
                for k in ("weight", "bias", "running_mean", "running_var"):
                    if getattr(m, k, None) is not None:
                        set_axes(pre + k, view, groups)
                state[node.name] = s
            elif isinstance(m, nn.Flatten):
                s = need(node, node.args[0])
                if m.start_dim != 1 or m.end_dim != -1:
                    raise LowlossError(f"cannot permute the network: {_op_name(node)} flattens dims "
                                       f"{m.start_dim}..{m.end_dim} (only start_dim=1, end_dim=-1)")
                state[node.name] = flatten_state(node, s, _meta_shape(node.args[0]), shape)
            elif isinstance(m, _PASS_MODULES) and not any(True for _ in m.parameters(recurse=False)):
                state[node.name] = need(node, node.args[0])
            else:
                raise LowlossError(f"cannot permute the network: {_op_name(node)} is a {type(m).__name__}, "
                                   "which the permutation analysis does not know")
        elif node.op in ("call_function", "call_method"):
            t = node.target
            is_method = node.op == "call_method"
            tensor_args = [a for a in node.args if isinstance(a, torch.fx.Node) and _meta_shape(a) is not None]
            if shape is None:  # x.size(0), shapes, ints: no channels to follow
                if any(isinstance(arg_state(a), _Chan) for a in tensor_args) and not \
                        (is_method and t in ("size", "dim")) and t is not getattr:
                    raise LowlossError(f"cannot permute the network: {_op_name(node)} turns a tensor into "
                                       "something that is not one")
                state[node.name] = None
            elif (t in _BINARY_FUNCTIONS and not is_method) or (is_method and t in _BINARY_METHODS):
                sts = [need(node, a) for a in tensor_args]
                if len(sts) == 2:
                    if sts[0].spatial != sts[1].spatial or _meta_shape(tensor_args[0]) != _meta_shape(tensor_args[1]):
                        raise LowlossError(f"cannot permute the network: {_op_name(node)} combines tensors of "
                                           f"shapes {_meta_shape(tensor_args[0])} and {_meta_shape(tensor_args[1])}")
                    state[node.name] = _Chan(uf.union(sts[0].g, sts[1].g, _op_name(node)), sts[0].spatial)
                elif len(sts) == 1:
                    state[node.name] = sts[0]
                else:
                    raise LowlossError(f"cannot permute the network: {_op_name(node)} has no tensor input")
            elif (not is_method and t in _PASS_FUNCTIONS) or (is_method and t in _PASS_METHODS):
                state[node.name] = need(node, node.args[0])
            elif (not is_method and t in _FLATTEN_FUNCTIONS) or (is_method and t in _RESHAPE_METHODS):
                s = need(node, node.args[0])
                state[node.name] = flatten_state(node, s, _meta_shape(node.args[0]), shape)
            elif (not is_method and t in _REDUCE_FUNCTIONS) or (is_method and t in _REDUCE_METHODS):
                s = need(node, node.args[0])
                in_shape = _meta_shape(node.args[0])
                dims = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else None)
                dims = (dims,) if isinstance(dims, int) else tuple(dims or ())
                dims = {d % len(in_shape) for d in dims}
                if not dims or 0 in dims or 1 in dims or s.spatial or len(shape) < 2 or shape[1] != in_shape[1]:
                    raise LowlossError(f"cannot permute the network: {_op_name(node)} reduces over dims "
                                       f"{sorted(dims) or 'all'} (only spatial dims >= 2 keep the channels)")
                state[node.name] = s
            else:
                raise LowlossError(f"cannot permute the network: {_op_name(node)} is an operation the permutation "
                                   "analysis does not know")
        elif node.op == "output":
            outs = node.args[0] if isinstance(node.args[0], (tuple, list)) else (node.args[0],)
            for a in outs:
                s = arg_state(a)
                if isinstance(s, _Chan):
                    uf.union(s.g, FIXED, "the network's output")

    sizes = {}
    axes = {}
    for key, (view, groups) in raw_axes.items():
        gs = []
        for g in groups:
            r = None if g is None else uf.find(g)
            if r is not None and r != FIXED:
                sizes[r] = uf.size[r]
                gs.append(r)
            else:
                gs.append(None)
        if any(g is not None for g in gs):
            axes[key] = TensorAxes(view, tuple(gs))
    param_keys = tuple(n for n, _ in model.named_parameters() if n in axes)
    group_names = {r: names.get(r, "") for r in sizes}
    return PermutationSpec(sizes, axes, param_keys, group_names)


# ---------------------------------------------------------------------------------------------- matching
def _permuted(spec: PermutationSpec, key: str, w: torch.Tensor, perms: Mapping[int, torch.Tensor],
              skip_axis: int | None = None) -> torch.Tensor:
    """`w` in its view shape with every permuted axis (but `skip_axis`) reordered by `perms`."""
    ax = spec.axes[key]
    v = w.reshape(ax.view)
    for i, g in enumerate(ax.groups):
        if g is not None and i != skip_axis:
            v = v.index_select(i, perms[g].to(v.device))
    return v


def apply_permutation(spec: PermutationSpec, state: Mapping[str, torch.Tensor],
                      perms: Mapping[int, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A copy of `state` with every permuted tensor reordered: unit i of group g becomes unit perms[g][i]."""
    out = {}
    for k, v in state.items():
        out[k] = _permuted(spec, k, v, perms).reshape(v.shape).clone() if k in spec.axes else v.clone()
    return out


def identity_perms(spec: PermutationSpec) -> dict[int, torch.Tensor]:
    return {g: torch.arange(n) for g, n in spec.sizes.items()}


def matching_objective(spec: PermutationSpec, state_a, state_b, perms) -> float:
    """Sum over the parameters of <w_A, permuted w_B>: what weight matching maximises."""
    total = 0.0
    for k in spec.parameters:
        a = state_a[k].double().reshape(-1)
        b = _permuted(spec, k, state_b[k].double(), perms).reshape(-1)
        total += float(a @ b)
    return total


def weight_matching(spec: PermutationSpec, state_a: Mapping[str, torch.Tensor], state_b: Mapping[str, torch.Tensor],
                    *, max_iter: int = 100, seed: int = 0) -> tuple[dict[int, torch.Tensor], dict]:
    """Permutations of B's hidden units that maximise sum <w_A, P(w_B)> over the parameters (coordinate ascent
    over the groups, one linear assignment per group). Returns (perms, info: sweeps, objective before/after,
    fraction of units moved)."""
    from scipy.optimize import linear_sum_assignment

    perms = identity_perms(spec)
    touching = {g: [(k, i) for k in spec.parameters for i, gg in enumerate(spec.axes[k].groups) if gg == g]
                for g in spec.sizes}
    a64 = {k: state_a[k].detach().double().cpu() for k in spec.parameters}
    b64 = {k: state_b[k].detach().double().cpu() for k in spec.parameters}
    gen = torch.Generator().manual_seed(int(seed))
    before = matching_objective(spec, a64, b64, perms)
    sweeps = 0
    while sweeps < max_iter:
        sweeps += 1
        improved = False
        for j in torch.randperm(len(spec.groups), generator=gen).tolist():
            g = spec.groups[j]
            n = spec.sizes[g]
            cost = torch.zeros(n, n, dtype=torch.float64)
            for k, axis in touching[g]:
                wa = a64[k].reshape(spec.axes[k].view).movedim(axis, 0).reshape(n, -1)
                wb = _permuted(spec, k, b64[k], perms, skip_axis=axis).movedim(axis, 0).reshape(n, -1)
                cost += wa @ wb.T
            rows, cols = linear_sum_assignment(cost.numpy(), maximize=True)
            new = torch.as_tensor(cols, dtype=torch.long)[torch.as_tensor(rows).argsort()]
            old_val = float(cost[torch.arange(n), perms[g]].sum())
            new_val = float(cost[torch.arange(n), new].sum())
            if new_val > old_val + 1e-12 * max(1.0, abs(old_val)):
                perms[g] = new
                improved = True
        if not improved:
            break
    after = matching_objective(spec, a64, b64, perms)
    moved = sum(int((p != torch.arange(len(p))).sum()) for p in perms.values())
    units = sum(spec.sizes.values())
    return perms, {"sweeps": sweeps, "objective_before": before, "objective_after": after,
                   "groups": len(spec.sizes), "units": units, "moved_fraction": moved / max(units, 1)}


__all__ = ["FIXED", "PermutationSpec", "TensorAxes", "apply_permutation", "identity_perms", "matching_objective",
           "permutation_spec", "weight_matching"]
