"""The points a plane is drawn through: three runs, a curve's endpoints and bend, a face of a simplex, or one
run and two random directions.

Each source gives a :class:`PlaneInputs`: the model and its data, three labelled flat parameter vectors
(the plane goes through them) and what to project on the plane (a curve, a simplex's edges). A random plane
(Li et al. 2018) gives its own :class:`~lowloss.subspaces.plane.Plane` and grid axes instead.

Random directions: an isotropic Gaussian draw of the whole parameter vector (seeded, float64 on the CPU, so
the same seed gives the same directions on every device), then either

* filter-normalised (:func:`filter_normalize`, Li et al.'s "filter" normalisation with "ignore biasbn"):
  every slice along the first dimension of a weight tensor of two or more dimensions (an output filter of
  a convolution, a neuron's row of a linear layer) is rescaled to the norm of the same slice of the weights,
  and every one-dimensional parameter (biases, BatchNorm's scale and shift) gets a zero direction, so
  moving along it leaves them at the run's values; planes of networks of different scale are comparable;
* or scaled as a whole (:func:`scaled_directions`): to unit norm (``lowloss width``: distances are
  Euclidean) or to the norm of the weights (``lowloss plane --random`` without ``--filter-norm``: a
  coordinate of 1 is a step as long as the weights).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..params import ParamLayout
from ..rundir import load_run, load_runs
from ..subspaces.curves import curve_coefficients
from ..subspaces.plane import Plane
from ..utils import LowlossError


@dataclass
class PlaneInputs:
    """What a plane is drawn through: the model and data, three labelled anchors, and what to overlay."""

    model: nn.Module
    data: object
    labels: list[str]
    anchors: list[torch.Tensor]  # a, b, c as flat [P] vectors
    sources: dict = field(default_factory=dict)
    curve: dict | None = None  # {"kind", "controls": [n, P], "t": [T], "points": [T, P]}
    simplex: dict | None = None  # {"vertices": [V, P], "labels", "edges": [(i, j)], "simplexes"}
    plane: object | None = None  # a given Plane (origin, u, v) instead of the one through the anchors
    axes: tuple | None = None  # given grid axes (xs, ys) instead of the projected points' bounding box


# ---------------------------------------------------------------------------------------------- inputs
def simplex_edges(simplexes) -> list[tuple[int, int]]:
    """Every edge (i < j) of every simplex of a complex, once."""
    edges = set()
    for s in simplexes:
        for a in range(len(s)):
            for b in range(a + 1, len(s)):
                edges.add((min(s[a], s[b]), max(s[a], s[b])))
    return sorted(edges)


def inputs_from_runs(run_dirs, device=None) -> PlaneInputs:
    """The plane through three finished runs of one architecture."""
    if len(run_dirs) != 3:
        raise LowlossError(f"a plane needs exactly three runs (got {len(run_dirs)}); or use --curve / --simplex")
    runs = load_runs(run_dirs, device=device)
    return PlaneInputs(runs[0].model, runs[0].data, [Path(r).name for r in run_dirs],
                       [r.vector for r in runs], {"runs": [str(r) for r in run_dirs]})


def inputs_from_curve(curve_dir, device=None, num_points: int = 61) -> PlaneInputs:
    """The plane through a curve's endpoints and middle control point, the curve projected on it."""
    from .connect import curve_runs, load_curve

    curve, run = load_curve(curve_dir, device=device)
    runs = curve_runs(curve_dir)
    controls = curve.controls().detach().to(run.vector)
    n = controls.shape[0]
    mid = n // 2
    t = torch.linspace(0, 1, num_points, dtype=torch.float64)
    coeff = curve_coefficients(curve.kind, t, n).to(controls)
    names = [Path(runs[0]).name, Path(runs[-1]).name] if len(runs) >= 2 else ["A", "B"]
    labels = [names[0], names[1], "bend" if n == 3 else f"control {mid}"]
    return PlaneInputs(run.model, run.data, labels, [controls[0], controls[-1], controls[mid]],
                       {"curve": str(curve_dir), "runs": runs, "curve_kind": curve.kind, "num_controls": n},
                       curve={"kind": curve.kind, "controls": controls, "t": t, "points": coeff @ controls})


def inputs_from_simplex(simplex_dir, face, device=None) -> PlaneInputs:
    """The plane through three vertices of a simplex or complex, its edges projected on it."""
    from .spro import load_complex

    cplx, run = load_complex(simplex_dir, device=device)
    verts = cplx.vertices().detach().to(run.vector)
    face = [int(i) for i in face]
    if len(face) != 3 or len(set(face)) != 3 or not all(0 <= i < len(verts) for i in face):
        raise LowlossError(f"--face needs three different vertex indices in 0..{len(verts) - 1}, got {face}")
    simplexes = [list(s) for s in cplx.simplexes]
    labels = [f"v{i}" for i in face]
    return PlaneInputs(run.model, run.data, labels, [verts[i] for i in face],
                       {"simplex": str(simplex_dir), "face": face, "base_run": str(run.path)},
                       simplex={"vertices": verts, "labels": [f"v{i}" for i in range(len(verts))],
                                "edges": simplex_edges(simplexes), "simplexes": simplexes})


# ---------------------------------------------------------------------------------------------- random planes
def gaussian_directions(count: int, size: int, seed: int) -> torch.Tensor:
    """[count, size] independent standard normal directions, float64 on the CPU, from `seed` alone."""
    g = torch.Generator().manual_seed(int(seed))
    return torch.randn(count, size, generator=g, dtype=torch.float64)


def filter_normalize(direction: torch.Tensor, weights: torch.Tensor, layout: ParamLayout) -> torch.Tensor:
    """Li et al.'s filter normalisation of a flat `direction` ([P], or [K, P] for K directions) at the flat
    `weights` [P]: for every parameter tensor of two or more dimensions, each slice along its first dimension
    (a filter or a neuron) is rescaled to the norm of the same slice of the weights; one-dimensional tensors
    (biases, BatchNorm parameters) get zeros. Computed in float64; returned in the direction's dtype."""
    d = direction.detach().double()
    lead = d.shape[:-1]
    w = weights.detach().double().to(d.device)
    out = torch.zeros_like(d)
    offset = 0
    for shape, n in zip(layout.shapes, layout.numels):
        if len(shape) >= 2:
            rows = shape[0]
            dd = d[..., offset:offset + n].reshape(*lead, rows, -1)
            ww = w[offset:offset + n].reshape(rows, -1)
            scale = ww.norm(dim=-1) / dd.norm(dim=-1).clamp_min(1e-300)
            out[..., offset:offset + n] = (dd * scale.unsqueeze(-1)).reshape(*lead, n)
        offset += n
    return out.to(direction.dtype)


def scaled_directions(directions: torch.Tensor, norm: float = 1.0) -> torch.Tensor:
    """Each row of `directions` ([K, P]) rescaled to the Euclidean norm `norm`."""
    d = directions.double()
    return (d * (norm / d.norm(dim=-1, keepdim=True))).to(directions.dtype)


def symmetric_axis(span: float, points: int) -> np.ndarray:
    """`points` values from -span to span, exactly antisymmetric (the middle one of an odd count is 0.0)."""
    a = span * np.linspace(-1.0, 1.0, points)
    return (a - a[::-1]) / 2


def random_plane_directions(weights: torch.Tensor, layout: ParamLayout, seed: int,
                            filter_norm: bool) -> torch.Tensor:
    """[2, P] the directions d1, d2 of a random plane at `weights`: filter-normalised, or each scaled to the
    norm of the weights (in the weights' dtype and device)."""
    g = gaussian_directions(2, layout.size, seed)
    w = weights.detach().double().cpu()
    d = filter_normalize(g, w, layout) if filter_norm else scaled_directions(g, float(w.norm()))
    return d.to(dtype=weights.dtype, device=weights.device)


def inputs_from_random(run_dir, config) -> PlaneInputs:
    """Li et al.'s random plane (or, with ``config.dim == 1``, line) through one run:
    w(x, y) = w + x d1 + y d2 with the seeded directions of :func:`random_plane_directions` (``config.seed``,
    ``config.filter_norm``) on the grid [-span, span]^2 of ``config.grid`` points per axis (dim 1: y = 0 only,
    a G x 1 grid). d1, d2 are not orthonormal, so the run's weights, the only point drawn, are the plane's
    origin: all three anchors are the weights and lie at (0, 0) exactly."""
    run = load_run(run_dir, device=config.device)
    w = run.vector
    layout = ParamLayout.of(run.model)
    d = random_plane_directions(w, layout, config.seed, config.filter_norm)
    xs = symmetric_axis(config.span, config.grid)
    ys = xs.copy() if config.dim == 2 else np.zeros(1)
    name = Path(run_dir).name
    norms = d.double().norm(dim=-1).tolist()
    random = {"seed": config.seed, "filter_norm": bool(config.filter_norm), "dim": config.dim, "span": config.span,
              "weight_norm": float(w.double().norm()), "direction_norms": norms[:config.dim],
              "directions": ("filter-normalised (each filter / neuron to the weights' filter norm; biases and BN "
                             "parameters: zero)") if config.filter_norm else "isotropic, each scaled to |w|"}
    return PlaneInputs(run.model, run.data, [name] * 3, [w, w, w], {"runs": [str(run_dir)], "random": random},
                       plane=Plane(w, d[0], d[1]), axes=(xs, ys))
