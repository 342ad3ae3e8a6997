"""Curves in parameter space, t in [0, 1] -> phi(t) (Garipov et al. 2018, "mode connectivity").

Every curve here is a :class:`~lowloss.subspaces.base.LinearSubspace`: phi(t) = sum_i a_i(t) p_i, with the
control points p_0 = w_A, ..., p_{n-1} = w_B stored as flat parameter vectors of ANY ``nn.Module`` (no
curve-aware layers, no copy of the model per bend) and the coefficients a(t) in closed form:

* :class:`Line`       a(t) = (1 - t, t)                                          (the baseline segment)
* :class:`Bezier`     a_i(t) = C(n-1, i) t^i (1-t)^(n-1-i)                         (Bernstein polynomials)
* :class:`PolyChain`  a_i(t) = max(0, 1 - |t (n-1) - i|)                          (hat functions; knots at i/(n-1))

Coordinates are [K, 1] tensors of t (a [K] tensor or a float is accepted too); the training distribution
is t ~ U(0, 1). :func:`make_curve` builds a curve between two modes with the bends initialised on the
segment, p_i = w_A + (i / (n-1)) (w_B - w_A), and the endpoints fixed (buffers) unless asked otherwise.
"""

from __future__ import annotations

import math

import torch

from ..utils import LowlossError
from .base import LinearSubspace

CURVES = ("line", "bezier", "polychain")


def _as_t(coords: torch.Tensor) -> torch.Tensor:
    """[K, 1], [K] or scalar t -> a [K] tensor."""
    t = torch.as_tensor(coords)
    if t.dim() == 2:
        if t.shape[1] != 1:
            raise LowlossError(f"curve coordinates must have shape [K, 1] (one t per point), got {tuple(t.shape)}")
        return t[:, 0]
    return t.reshape(-1)


def bezier_coefficients(t: torch.Tensor, n: int) -> torch.Tensor:
    """Bernstein weights of a Bezier curve with n control points: [K] t -> [K, n].

    a_i(t) = C(n-1, i) t^i (1-t)^(n-1-i). At t=0 and t=1 the weights are exactly one-hot (0^0 = 1), so
    phi(0) and phi(1) are exactly the endpoints.
    """
    if n < 2:
        raise LowlossError(f"a Bezier curve needs at least 2 control points, got {n}")
    t = _as_t(t)
    i = torch.arange(n, dtype=t.dtype, device=t.device)
    binom = torch.tensor([math.comb(n - 1, k) for k in range(n)], dtype=t.dtype, device=t.device)
    tt = t[:, None]
    return binom * tt.pow(i) * (1 - tt).pow(n - 1 - i)


def polychain_coefficients(t: torch.Tensor, n: int) -> torch.Tensor:
    """Hat-function weights of a polygonal chain with n control points at t = i/(n-1): [K] t -> [K, n].

    a_i(t) = max(0, 1 - |t (n-1) - i|): at most two neighbouring weights are non-zero and they sum to 1.
    """
    if n < 2:
        raise LowlossError(f"a polygonal chain needs at least 2 control points, got {n}")
    t = _as_t(t)
    i = torch.arange(n, dtype=t.dtype, device=t.device)
    return (1 - (t[:, None] * (n - 1) - i).abs()).clamp_min(0)


class Curve(LinearSubspace):
    """A curve t in [0,1] -> phi(t) through control points; subclasses give the coefficients."""

    dim = 1
    kind = "curve"

    @property
    def num_bends(self) -> int:
        return self.num_controls - 2

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """t ~ U(0, 1), shape [n, 1] (drawn on the CPU generator, moved to the curve's device)."""
        t = torch.rand(n, 1, generator=generator, dtype=torch.float64)
        return t.to(dtype=self.dtype, device=self.device)

    def coefficients(self, coords: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def points(self, coords) -> torch.Tensor:
        """phi(t) for K values of t: [K, 1] (or [K]) -> [K, P]; differentiable in the trainable controls.

        Computed as a sum of scaled control points rather than ``coefficients @ stack(controls)``: no
        [n, P] stacked copy of the controls is made per call (one step of curve training calls this once).
        """
        t = _as_t(torch.as_tensor(coords)).to(dtype=self.dtype, device=self.device)
        a = self.coefficients(t)  # [K, n]
        out = a[:, :1] * self.control(0)[None, :]
        for i in range(1, self.num_controls):  # one fused multiply-add per control point
            out = torch.addcmul(out, a[:, i:i + 1], self.control(i)[None, :])
        return out

    def extra_repr(self) -> str:
        fixed = [i for i, tr in enumerate(self.trainable_mask) if not tr]
        return f"controls={self.num_controls}, params={self.control(0).numel()}, fixed={fixed}"


class Line(Curve):
    """The line segment phi(t) = (1-t) w_A + t w_B: the baseline with nothing to train."""

    kind = "line"

    def __init__(self, w_a: torch.Tensor, w_b: torch.Tensor, trainable=(False, False)):
        super().__init__([w_a, w_b], trainable)

    def coefficients(self, coords: torch.Tensor) -> torch.Tensor:
        t = _as_t(coords)
        return torch.stack([1 - t, t], dim=1)


class Bezier(Curve):
    """Bezier curve phi(t) = sum_i C(n-1,i) t^i (1-t)^(n-1-i) p_i; one bend = the quadratic curve
    (1-t)^2 w_A + 2t(1-t) theta + t^2 w_B of Garipov et al."""

    kind = "bezier"

    def coefficients(self, coords: torch.Tensor) -> torch.Tensor:
        return bezier_coefficients(coords, self.num_controls)


class PolyChain(Curve):
    """Polygonal chain through the control points, equally spaced in t (one bend: two line segments
    meeting at theta at t = 0.5)."""

    kind = "polychain"

    def coefficients(self, coords: torch.Tensor) -> torch.Tensor:
        return polychain_coefficients(coords, self.num_controls)


_CLASSES = {"line": Line, "bezier": Bezier, "polychain": PolyChain}


def curve_coefficients(kind: str, t: torch.Tensor, n: int) -> torch.Tensor:
    """[T] t -> [T, n] weights of a curve's n control points: Bezier (Bernstein; a line is the 2-point Bezier)
    or polygonal chain (hat functions)."""
    if kind in ("bezier", "line"):
        return bezier_coefficients(t, n)
    if kind == "polychain":
        return polychain_coefficients(t, n)
    raise LowlossError(f"unknown curve kind '{kind}' (bezier, polychain or line)")


def curve_class(kind: str) -> type[Curve]:
    if kind not in _CLASSES:
        raise LowlossError(f"unknown curve '{kind}'; valid: {', '.join(CURVES)}")
    return _CLASSES[kind]


def segment_points(w_a: torch.Tensor, w_b: torch.Tensor, n: int) -> list[torch.Tensor]:
    """n points equally spaced on the segment: p_i = w_A + (i/(n-1)) (w_B - w_A), endpoints exact."""
    pts = [w_a]
    for i in range(1, n - 1):
        pts.append(w_a + (i / (n - 1)) * (w_b - w_a))
    pts.append(w_b)
    return pts


def make_curve(kind: str, w_a: torch.Tensor, w_b: torch.Tensor, bends: int = 1, *,
               fix_endpoints: bool = True) -> Curve:
    """A curve from w_A to w_B (flat parameter vectors of one architecture) with `bends` bends.

    Bends start on the segment between the endpoints (so the untrained curve is the line, reparametrised).
    With `fix_endpoints` the endpoints are buffers; otherwise they are trained too. A ``line`` has no
    bends and nothing to train.
    """
    cls = curve_class(kind)
    w_a, w_b = w_a.detach().reshape(-1), w_b.detach().reshape(-1)
    if w_a.shape != w_b.shape:
        raise LowlossError(f"the endpoints have {w_a.numel()} and {w_b.numel()} parameters: "
                           "they must come from the same architecture")
    if kind == "line":
        if bends:
            raise LowlossError("a line has no bends: use --bends 0 or --curve bezier/polychain")
        return Line(w_a, w_b)
    if bends < 1:
        raise LowlossError(f"a {kind} curve needs at least one bend (got --bends {bends})")
    n = bends + 2
    trainable = [not fix_endpoints] + [True] * bends + [not fix_endpoints]
    return cls(segment_points(w_a, w_b, n), trainable)


__all__ = ["CURVES", "Bezier", "Curve", "Line", "PolyChain", "bezier_coefficients", "curve_class",
           "make_curve", "polychain_coefficients", "segment_points"]
