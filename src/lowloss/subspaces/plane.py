"""The plane through three points of parameter space (Garipov et al. 2018; Benton et al. 2021, sec. 4).

    u = (b - a) / |b - a|,   v = (c - a) - <c - a, u> u,   v <- v / |v|        (Gram-Schmidt)
    w(x, y) = origin + x u + y v

`origin` is ``a`` (the blog post / curve paper) or the centroid (a + b + c) / 3 (the simplex paper); the
coordinates of the three points are recorded either way. Every point is computed from the origin (never
by walking the grid with in-place adds), so grid points are independent: chunkable, resumable, shardable.
The basis is built in float64 and stored in the points' dtype.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ..utils import LowlossError
from .base import Subspace

ORIGINS = ("a", "centroid")


class Plane(Subspace):
    """A 2-D affine subspace: coordinates [K, 2] -> parameter vectors [K, P]."""

    dim = 2

    def __init__(self, origin: torch.Tensor, u: torch.Tensor, v: torch.Tensor):
        super().__init__()
        self.register_buffer("origin", origin.detach().reshape(-1).clone())
        self.register_buffer("u", u.detach().reshape(-1).clone().to(self.origin))
        self.register_buffer("v", v.detach().reshape(-1).clone().to(self.origin))

    @classmethod
    def through(cls, a: torch.Tensor, b: torch.Tensor, c: torch.Tensor, origin: str = "a") -> Plane:
        """The plane through a, b, c with the Gram-Schmidt basis of (b - a, c - a)."""
        if origin not in ORIGINS:
            raise LowlossError(f"plane origin '{origin}' is not one of {', '.join(ORIGINS)}")
        if not (a.shape == b.shape == c.shape):
            raise LowlossError(f"the three points differ in size ({a.numel()}, {b.numel()}, {c.numel()}): "
                               "they must come from one architecture")
        a64, b64, c64 = (t.detach().reshape(-1).double() for t in (a, b, c))
        u = b64 - a64
        nu = u.norm()
        if not torch.isfinite(nu) or nu == 0:
            raise LowlossError("the first two points of the plane coincide (|b - a| = 0): pick different points")
        u = u / nu
        v = c64 - a64
        v = v - (v @ u) * u
        v = v - (v @ u) * u  # a second Gram-Schmidt pass keeps u and v orthogonal to float64 precision
        nv = v.norm()
        if nv <= 1e-9 * max(float(nu), float((c64 - a64).norm())):
            raise LowlossError("the three points are collinear (c lies on the line through a and b): "
                               "no plane is defined; pick a third point off that line")
        v = v / nv
        o = a64 if origin == "a" else (a64 + b64 + c64) / 3
        dtype = a.dtype if a.is_floating_point() else torch.float32
        return cls(o.to(dtype), u.to(dtype), v.to(dtype))

    def basis(self) -> torch.Tensor:
        """[2, P]: the orthonormal directions u and v."""
        return torch.stack([self.u, self.v])

    def points(self, coords: torch.Tensor) -> torch.Tensor:
        """w(x, y) = origin + x u + y v for coordinates [K, 2] -> [K, P], each from the origin."""
        c = torch.as_tensor(coords).to(dtype=self.origin.dtype, device=self.origin.device).reshape(-1, 2)
        return torch.addmm(self.origin.unsqueeze(0), c, self.basis())

    def project(self, w: torch.Tensor) -> torch.Tensor:
        """Plane coordinates of points w ([P] or [K, P] -> [2] or [K, 2]): the orthogonal projection, in float64."""
        w = torch.as_tensor(w).to(self.origin.device)
        d = w.double() - self.origin.double()
        return d @ self.basis().double().T

    def distance(self, w: torch.Tensor) -> torch.Tensor:
        """Distance of points w from the plane (0 for points in it)."""
        w = torch.as_tensor(w).to(self.origin.device)
        d = w.double() - self.origin.double()
        return (d - self.project(w) @ self.basis().double()).norm(dim=-1)

    def sample(self, n: int, generator: torch.Generator | None = None, box=((-1.0, 1.0), (-1.0, 1.0))) -> torch.Tensor:
        """n coordinates uniform in a box ((xmin, xmax), (ymin, ymax)), shape [n, 2]."""
        lo = torch.tensor([box[0][0], box[1][0]], dtype=torch.float64)
        hi = torch.tensor([box[0][1], box[1][1]], dtype=torch.float64)
        u = torch.rand(n, 2, generator=generator, dtype=torch.float64)
        return (lo + u * (hi - lo)).to(dtype=self.origin.dtype, device=self.origin.device)


def grid_axes(coords: np.ndarray | Sequence, grid: int, margin: float = 0.2,
              min_aspect: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """x and y axes of a G x G grid over the bounding box of `coords` ([n, 2]) widened by `margin` of the
    extent on each side (the reference default is 0.2). With `min_aspect` > 0 the shorter side is widened
    symmetrically to at least that fraction of the longer one (a curve whose bend lies close to the line
    between its endpoints otherwise gives a thin strip that hides the valley's surroundings)."""
    if grid < 2:
        raise LowlossError(f"--grid {grid} is too small: at least 2 points per axis")
    if margin < 0:
        raise LowlossError(f"--margin {margin} must be >= 0")
    pts = np.asarray(coords, dtype=np.float64).reshape(-1, 2)
    lo, hi = pts.min(0), pts.max(0)
    ext = hi - lo
    ext = np.where(ext > 0, ext, max(float(ext.max()), 1.0))
    lo, hi = lo - margin * ext, hi + margin * ext
    if min_aspect > 0:
        span = hi - lo
        need = min_aspect * span.max()
        grow = np.maximum(need - span, 0) / 2
        lo, hi = lo - grow, hi + grow
    return np.linspace(lo[0], hi[0], grid), np.linspace(lo[1], hi[1], grid)


def grid_coordinates(xs: np.ndarray, ys: np.ndarray, start: int = 0, stop: int | None = None) -> np.ndarray:
    """Coordinates of flat grid indices [start, stop) in row-major order (index = iy * G + ix), [n, 2]."""
    g = len(xs)
    stop = len(xs) * len(ys) if stop is None else stop
    idx = np.arange(start, stop)
    return np.stack([np.asarray(xs)[idx % g], np.asarray(ys)[idx // g]], 1)
