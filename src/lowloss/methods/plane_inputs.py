"""The points a plane is drawn through: three runs, a curve's endpoints and bend, or a face of a simplex.

Each source gives a :class:`PlaneInputs`: the model and its data, three labelled flat parameter vectors
(the plane goes through them) and what to project on the plane (a curve, a simplex's edges).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..rundir import load_runs
from ..subspaces.curves import bezier_coefficients, polychain_coefficients
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
def curve_coefficients(kind: str, t: torch.Tensor, n: int) -> torch.Tensor:
    """[T] t -> [T, n] weights of the control points: Bezier (Bernstein; a line is the 2-point Bezier) or
    polygonal chain (hat functions)."""
    if kind in ("bezier", "line"):
        return bezier_coefficients(t, n)
    if kind == "polychain":
        return polychain_coefficients(t, n)
    raise LowlossError(f"unknown curve kind '{kind}' (bezier, polychain or line)")


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
