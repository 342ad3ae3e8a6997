"""Simplexes and simplicial complexes in parameter space (Benton et al. 2021, "SPRO").

A :class:`Complex` holds vertices (flat parameter vectors; a trained mode is a fixed buffer, a connector
being trained is an ``nn.Parameter``) and simplexes (tuples of vertex indices). Its coordinates are
barycentric weights over *all* vertices (zero outside the chosen simplex), so a point is
``coefficients @ controls`` like every other linear subspace.

Sampling (the paper's appendix A.1): choose a simplex uniformly, draw e_i = -log(u_i), u_i ~ U(0, 1),
alpha = e / sum(e) (a Dirichlet(1, ..., 1) draw), w = sum_i alpha_i v_i.

Volume: the Cayley-Menger determinant of the k+1 vertices, computed from their pairwise squared
distances in float64. Distances come from the Gram matrix of differences to a base vertex ((k x P) @
(P x k), k small); no P-dimensional determinant is ever formed. :func:`cayley_menger_log_volume` returns
log Vol (``-inf`` for a degenerate simplex, never NaN); :func:`log_squared_volume_plus` is the smooth
``log(Vol^2 + eps)`` that SPRO's regulariser uses (differentiable even at a degenerate simplex, where new
vertices start).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from .base import LinearSubspace

# eigenvalues of the scale-normalised Gram matrix below RTOL * largest mean "no volume": a simplex whose
# height is below ~1e-6 of its diameter is flat at float32 parameter precision
DEGENERATE_RTOL = 1e-12


def pairwise_sq_dists(vertices: torch.Tensor) -> torch.Tensor:
    """[n, P] vertices -> [n, n] squared distances (float64), via the Gram matrix of v_i - v_0.

    Differences to a base vertex keep the computation accurate for vertices far from the origin (the
    norms of the vertices themselves never enter).
    """
    v = vertices.to(torch.float64)
    e = v[1:] - v[:1]                               # [k, P]
    g = e @ e.T                                     # [k, k]
    d = torch.diagonal(g)
    inner = d[:, None] + d[None, :] - 2 * g         # |e_i - e_j|^2 = |v_i - v_j|^2
    inner = inner.clamp_min(0.0) * (1 - torch.eye(len(d), dtype=g.dtype, device=g.device))
    top = torch.cat([torch.zeros(1, dtype=g.dtype, device=g.device), d])
    return torch.cat([top[None, :], torch.cat([d[:, None], inner], 1)], 0)


def _gram_from_sq_dists(sq_dists: torch.Tensor) -> torch.Tensor:
    """Gram matrix of v_i - v_0 from squared distances: G_ij = (d_0i + d_0j - d_ij) / 2.

    det(CM) = (-1)^(k+1) 2^k det(G) for the bordered Cayley-Menger matrix CM, so this is the Cayley-Menger
    determinant in a form whose sign checks and conditioning are simple.
    """
    d = sq_dists.to(torch.float64)
    return 0.5 * (d[0, 1:, None] + d[0, None, 1:] - d[1:, 1:])


def _scale(sq_dists: torch.Tensor) -> torch.Tensor:
    """A (detached) typical squared distance, so that far-apart or tiny simplexes are handled alike."""
    d = sq_dists.detach().to(torch.float64)
    pos = d[d > 0]
    return pos.mean() if pos.numel() else torch.ones((), dtype=torch.float64, device=d.device)


def cayley_menger_log_volume(sq_dists: torch.Tensor, rtol: float = DEGENERATE_RTOL) -> torch.Tensor:
    """log of the k-volume of a simplex given its (k+1) x (k+1) matrix of pairwise squared distances.

    Vol^2 = (-1)^(k+1) / (2^k (k!)^2) det(CM) = det(G) / (k!)^2, computed in float64 after dividing the
    distances by their mean (volumes of simplexes 1e3 apart in 1e5 dimensions stay finite). A degenerate
    simplex (collinear / coplanar vertices, repeated vertices) gives ``-inf``; gradients are finite for
    any non-degenerate simplex. A single vertex (k = 0) has volume 1 (log-volume 0).
    """
    sq = torch.as_tensor(sq_dists).to(torch.float64)
    if sq.ndim != 2 or sq.shape[0] != sq.shape[1]:
        raise ValueError(f"expected a square matrix of squared distances, got shape {tuple(sq.shape)}")
    k = sq.shape[0] - 1
    if k == 0:
        return sq.new_zeros(())
    if not torch.isfinite(sq.detach()).all():
        raise ValueError("squared distances contain NaN or inf")
    s = _scale(sq)
    g = _gram_from_sq_dists(sq / s)
    g = 0.5 * (g + g.T)
    eig = torch.linalg.eigvalsh(g)
    top = eig.detach().abs().max()
    if not bool(top > 0) or bool(eig.detach().min() <= rtol * top):
        return torch.full((), -math.inf, dtype=torch.float64, device=sq.device)
    return 0.5 * (torch.log(eig).sum() + k * torch.log(s)) - math.lgamma(k + 1)


def simplex_log_volume(vertices: torch.Tensor, rtol: float = DEGENERATE_RTOL) -> torch.Tensor:
    """log-volume of the simplex spanned by the rows of `vertices` ([k+1, P])."""
    return cayley_menger_log_volume(pairwise_sq_dists(vertices), rtol=rtol)


def _log_sq_volume_parts(sq_dists: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(a, d) with Vol^2 = exp(a) * d, d a polynomial in the distances (smooth, zero when degenerate)."""
    sq = sq_dists.to(torch.float64)
    k = sq.shape[0] - 1
    s = _scale(sq)
    d = torch.linalg.det(_gram_from_sq_dists(sq / s)) if k > 0 else sq.new_ones(())
    return k * torch.log(s) - 2 * math.lgamma(k + 1), d.clamp_min(0.0)


def log_squared_volume_plus(sq_dists_list: Sequence[torch.Tensor], eps: float = 1e-4) -> torch.Tensor:
    """log(sum_s Vol_s^2 + eps) over simplexes s, smooth in the vertices (SPRO's regulariser).

    For one simplex this is the paper's log(Vol^2 + 1e-4); for a complex the squared volumes of its
    simplexes are summed. Computed as a_max + log(sum_s exp(a_s - a_max) d_s + eps exp(-a_max)) so that
    neither huge nor tiny volumes overflow.
    """
    parts = [_log_sq_volume_parts(sq) for sq in sq_dists_list]
    a = torch.stack([p[0] for p in parts])
    d = torch.stack([p[1] for p in parts])
    amax = a.max().detach()
    return amax + torch.log((torch.exp(a - amax) * d).sum() + eps * torch.exp(-amax))


def dirichlet_ones(n: int, k: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """n points uniform on the standard (k-1)-simplex: e = -log(u), alpha = e / sum(e). Shape [n, k]."""
    u = torch.rand(n, k, generator=generator, dtype=torch.float64)
    e = -torch.log1p(-u)  # -log(1 - u): u in [0, 1) so the argument is never 0
    return e / e.sum(1, keepdim=True)


class Complex(LinearSubspace):
    """A simplicial complex: vertices (fixed buffers or trainable parameters) and simplexes (index tuples).

    ``kinds`` labels vertices ("mode" or "connector") for figures and reports. Coordinates are barycentric
    weights over all vertices, shape [K, num_vertices]; :meth:`sample` chooses a simplex uniformly and
    draws Dirichlet(1, ..., 1) weights on it.
    """

    def __init__(self, vertices: Sequence[torch.Tensor], simplexes: Sequence[Sequence[int]],
                 trainable: Sequence[bool] | None = None, kinds: Sequence[str] | None = None):
        vertices = list(vertices)
        n = len(vertices)
        trainable = [False] * n if trainable is None else list(trainable)
        super().__init__(vertices, trainable)
        simplexes = [tuple(int(i) for i in s) for s in simplexes]
        if not simplexes:
            raise ValueError("a complex needs at least one simplex")
        for s in simplexes:
            if len(set(s)) != len(s) or not s:
                raise ValueError(f"simplex {s} repeats a vertex or is empty")
            if min(s) < 0 or max(s) >= n:
                raise ValueError(f"simplex {s} refers to a vertex outside 0..{n - 1}")
        self.simplexes = simplexes
        self.dim = n
        self.kinds = list(kinds) if kinds is not None else ["mode" if not t else "connector" for t in trainable]

    @property
    def num_vertices(self) -> int:
        return self.num_controls

    def vertices(self) -> torch.Tensor:
        return self.controls()

    def coefficients(self, coords: torch.Tensor) -> torch.Tensor:
        if coords.shape[-1] != self.num_vertices:
            raise ValueError(f"barycentric coordinates need {self.num_vertices} weights, got {coords.shape[-1]}")
        return coords

    def sample(self, n: int, generator: torch.Generator | None = None, simplex: int | None = None) -> torch.Tensor:
        """n barycentric coordinates: a uniformly chosen simplex each (or the given one), Dirichlet(1) on it."""
        counts = torch.tensor([len(s) for s in self.simplexes])
        if simplex is None:
            which = torch.randint(len(self.simplexes), (n,), generator=generator)
        else:
            which = torch.full((n,), int(simplex), dtype=torch.long)
        coords = torch.zeros(n, self.num_vertices, dtype=torch.float64)
        # i.i.d. Exp(1) draws: the first m of them, normalised, are Dirichlet(1, ..., 1) on an m-vertex simplex
        u = torch.rand(n, int(counts.max()), generator=generator, dtype=torch.float64)
        e = -torch.log1p(-u)
        for i, s in enumerate(self.simplexes):
            rows = (which == i).nonzero().reshape(-1)
            if len(rows):
                a = e[rows, : len(s)]
                coords[rows[:, None], torch.tensor(s)[None, :]] = a / a.sum(1, keepdim=True)
        return coords.to(device=self.device, dtype=self.dtype)

    def simplex_sq_dists(self, i: int) -> torch.Tensor:
        return pairwise_sq_dists(self.vertices()[list(self.simplexes[i])])

    def log_volumes(self) -> torch.Tensor:
        """log Vol of each simplex, shape [S] (``-inf`` where degenerate)."""
        v = self.vertices()
        return torch.stack([simplex_log_volume(v[list(s)]) for s in self.simplexes])

    def log_volume(self) -> torch.Tensor:
        """log of the complex's volume, the sum of its simplexes' volumes (as in the paper)."""
        return torch.logsumexp(self.log_volumes(), 0)

    def log_squared_volume_plus(self, eps: float = 1e-4) -> torch.Tensor:
        """log(sum_s Vol_s^2 + eps): smooth, differentiable in the trainable vertices (SPRO regulariser)."""
        v = self.vertices()
        return log_squared_volume_plus([pairwise_sq_dists(v[list(s)]) for s in self.simplexes], eps)

    def extra_repr(self) -> str:
        return f"vertices={self.num_vertices}, simplexes={self.simplexes}, trainable={list(self.trainable_mask)}"


def restrict_simplexes(simplexes: Sequence[Sequence[int]], num_vertices: int) -> list[tuple[int, ...]]:
    """The simplexes of a complex in which only vertices 0..num_vertices-1 exist yet (faces, deduplicated)."""
    out: list[tuple[int, ...]] = []
    for s in simplexes:
        t = tuple(i for i in s if i < num_vertices)
        if len(t) >= 2 and t not in out:
            out.append(t)
    return out
