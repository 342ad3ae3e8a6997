"""Adaptive sampling of a surface on a lattice: evaluate a coarse sub-lattice, refine only the cells where
the surface is not yet known to tolerance, interpolate every other point. numpy only.

The lattice has shape (ny, nx) and flat row-major indices ``iy * nx + ix`` (as a plane's grid). Cells are
rectangles of lattice points with evaluated corners:

1. The coarse lattice has spacing h = 2^k (the largest power of two, at least 2, that leaves at least
   `cells` cells along the shorter axis); its last row and column are clamped to the lattice's edge, so
   any size works (the last cells are narrower).
2. Each level evaluates the centre and edge midpoints of every open cell (for a cell one point wide along
   an axis, only the midpoints that exist) and measures the cell's miss m: the largest difference between
   them and the bilinear interpolation of the cell's corners, per metric, in units of the tolerance. Once
   they are evaluated the cell is known on its (up to) four halves, whose corners are all evaluated, so
   what decides is the error predicted for interpolating the halves: m * r (the error model below). A cell
   with m * r > 1 for some metric splits and its halves are open at the next level; the halves of the
   other cells are finished. A cell one point wide along both axes has nothing left inside it.
3. Every point that was not evaluated is interpolated inside its finished cell by a Coons patch: the
   cell's four edges interpolated linearly between all evaluated points on them (a finer neighbour's
   points included), blended across the cell. Neighbouring cells agree on their shared edges, so the
   interpolated surface is continuous.
4. Optionally `required` points (say, lattice points under a curve drawn on the plane) are evaluated with
   the coarse lattice, and at the end the minimum of each metric's array and its eight neighbours are
   evaluated, round after round, until the minimum is an evaluated point whose neighbours are all
   evaluated.

Error model. On a smooth surface f the bilinear interpolation of a cell of width h errs by about
h^2/8 * |second derivative| (exactly so for a quadratic, whose largest error is the miss at the centre),
so halving a cell divides the error by r = 1/4: the halves of a cell whose miss is m err by about m / 4.
Where the surface is not that smooth (a crease, the steps of an error rate, a feature narrower than the
cell) the error shrinks more slowly, so the rate is measured as well: r = m / M, the cell's miss over its
parent's miss M at twice the width (for a coarse cell, its parent is its block of 2 x 2 coarse cells,
interpolated from the block's corners at the coarse nodes inside it), clipped to [r_parent, 1], where
r_parent is the rate its parent used (for a coarse cell `rate`, the smooth 1/4): once a lineage of cells
has been seen converging more slowly than h^2, its descendants are not credited with a faster rate. A
cell is refined until the predicted error of its halves, m * r, is within the tolerance: m / 4 where the
surface converges like h^2, up to m where its miss does not shrink. With ``rate=1`` this is the plain rule
"split while the midpoints miss by more than the tolerance", which on a smooth surface refines one level
more than needed (its errors come out about 4 times below the tolerance, for about 4 times the points
where the finest level is reached).
Limits: the checks see a cell only at its centre and edge midpoints. A crease (a kink in log loss) whose
position between them happens to give a fast-looking rate at every level of its lineage is predicted
too small, by up to about 4 times; so is a feature narrower than the coarse spacing that lies between
the checked points. The tolerance is thus met on surfaces smooth at the scale of the finished cells;
measure it on the surfaces that matter (bench/adaptive.py does, for planes).

Tolerances, per metric scale: ``"log"`` (losses) compares log10 values, a miss counts when it exceeds
`tol`; ``"linear"`` (error rates) compares values, a miss counts when it exceeds
``error_tol + tol * ln(10) * |value|`` (relative like a log10 miss of `tol` for large values, absolute
`error_tol` near zero, where an error rate moves in steps of one example). Interpolation happens in the
same space (log10 for ``"log"``). An error rate over N examples is a staircase of steps 1 / N: its
interpolation errs by a few steps wherever many examples change sides, and more refinement does not
remove that part (its measured rate is near 1), which `error_tol` absorbs.

Every decision depends only on the evaluated values, so rerunning the refinement over the values saved by
an interrupted run asks for the same points in the same order.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np

from ..utils import LowlossError

SCALES = ("log", "linear")
MIN_POINTS = 5  # per axis: a coarse lattice of spacing 2 and one level of refinement
LOG_FLOOR = 1e-300
RATE = 0.25  # bilinear interpolation's error ratio per halving of a smooth surface's cell: (1/2)^2
RATES = {"log": RATE, "linear": RATE}


def coarse_spacing(shape, cells: int = 16) -> int:
    """The coarse lattice's spacing: the largest power of two >= 2 that leaves at least `cells` cells along
    the shorter axis (2 when even that leaves fewer)."""
    n = min(int(s) for s in shape)
    if n < MIN_POINTS:
        raise LowlossError(f"an adaptive grid needs at least {MIN_POINTS} points per axis (got {n}): "
                           f"use a larger grid")
    h = 2
    while (n - 1) / (2 * h) >= cells:
        h *= 2
    return h


def axis_nodes(n: int, h: int) -> np.ndarray:
    """0, h, 2h, ... along an axis of n points, with n - 1 as the last node (clamped)."""
    return np.unique(np.r_[np.arange(0, n, h), n - 1]).astype(np.int64)


def _check_scales(scales: Mapping[str, str]) -> dict:
    scales = dict(scales)
    bad = {m: s for m, s in scales.items() if s not in SCALES}
    if bad or not scales:
        raise LowlossError(f"metric scales must be one of {', '.join(SCALES)} (got {bad or 'none'})")
    return scales


def _transform(values: np.ndarray, scale: str) -> np.ndarray:
    v = np.asarray(values, dtype=np.float64)
    if scale == "log":
        with np.errstate(invalid="ignore"):
            return np.log10(np.maximum(v, LOG_FLOOR))
    return v


def _untransform(t: np.ndarray, scale: str) -> np.ndarray:
    return np.power(10.0, t) if scale == "log" else t


class _Cells:
    """Rectangles [x0, x1] x [y0, y1] of lattice points (arrays of equal length)."""

    def __init__(self, x0, x1, y0, y1):
        self.x0, self.x1, self.y0, self.y1 = (np.asarray(a, dtype=np.int64) for a in (x0, x1, y0, y1))

    def __len__(self):
        return len(self.x0)

    def take(self, mask) -> _Cells:
        return _Cells(self.x0[mask], self.x1[mask], self.y0[mask], self.y1[mask])

    @property
    def xm(self):
        return (self.x0 + self.x1) // 2

    @property
    def ym(self):
        return (self.y0 + self.y1) // 2

    def splittable(self) -> np.ndarray:
        return (self.x1 - self.x0 > 1) | (self.y1 - self.y0 > 1)

    def children(self) -> tuple[_Cells, np.ndarray]:
        """The halves along every axis the cell is more than one point wide, and each half's cell index."""
        sx, sy = self.x1 - self.x0 > 1, self.y1 - self.y0 > 1
        xm, ym = self.xm, self.ym
        lx1 = np.where(sx, xm, self.x1)
        ly1 = np.where(sy, ym, self.y1)
        parts = [(self.x0, lx1, self.y0, ly1, np.ones(len(self), bool)),
                 (xm, self.x1, self.y0, ly1, sx),
                 (self.x0, lx1, ym, self.y1, sy),
                 (xm, self.x1, ym, self.y1, sx & sy)]
        kids = _Cells(*(np.concatenate([p[i][p[4]] for p in parts]) for i in range(4)))
        return kids, np.concatenate([np.flatnonzero(p[4]) for p in parts]).astype(np.int64)

    @staticmethod
    def concat(cells) -> _Cells:
        cells = list(cells)
        if not cells:
            return _Cells([], [], [], [])
        return _Cells(*(np.concatenate([getattr(c, a) for c in cells]) for a in ("x0", "x1", "y0", "y1")))


def _misses(cells: _Cells, nx: int, values: Mapping[str, np.ndarray], scales, tol: float,
            error_tol: float, xm=None, ym=None) -> np.ndarray:
    """[metrics, n]: each cell's largest miss of its corners' bilinear interpolation at its centre and edge
    midpoints (or at the lattice lines `xm`, `ym` inside it), per metric of `scales`, in units of the
    tolerance (NaN counts as an infinite miss)."""
    x0, x1, y0, y1 = cells.x0, cells.x1, cells.y0, cells.y1
    xm = cells.xm if xm is None else np.asarray(xm, np.int64)
    ym = cells.ym if ym is None else np.asarray(ym, np.int64)
    tx = (xm - x0) / np.maximum(x1 - x0, 1)
    ty = (ym - y0) / np.maximum(y1 - y0, 1)
    checks = [(xm, y0, tx, 0.0), (xm, y1, tx, 1.0), (x0, ym, 0.0, ty), (x1, ym, 1.0, ty), (xm, ym, tx, ty)]
    worst = np.zeros((len(scales), len(cells)))
    for k, (m, scale) in enumerate(scales.items()):
        flat = np.asarray(values[m], dtype=np.float64)
        t = _transform(flat, scale)
        f00, f10, f01, f11 = t[y0 * nx + x0], t[y0 * nx + x1], t[y1 * nx + x0], t[y1 * nx + x1]
        for px, py, u, v in checks:
            guess = (1 - u) * (1 - v) * f00 + u * (1 - v) * f10 + (1 - u) * v * f01 + u * v * f11
            i = py * nx + px
            with np.errstate(invalid="ignore"):
                miss = np.abs(guess - t[i])
                if scale == "log":
                    miss = miss / tol
                else:
                    miss = miss / (error_tol + tol * np.log(10) * np.abs(flat[i]))
            worst[k] = np.where(np.isnan(miss), np.inf, np.maximum(worst[k], miss))
    return worst


def _coarse_parents(gx, gy, nx: int, values, scales, tol: float, error_tol: float):
    """The misses of the coarse cells' parents ([n] in the coarse cells' row-major order; inf where an axis
    has a single coarse cell): the block of 2 x 2 coarse cells holding a cell (the last two along an axis
    when the cell is the last of an odd count), interpolated from its corners at the coarse nodes inside
    it, which are all evaluated."""
    cx, cy = len(gx) - 1, len(gy) - 1
    if cx < 2 or cy < 2:
        return np.full((len(scales), cx * cy), np.inf)
    jx = np.minimum(np.arange(cx) - np.arange(cx) % 2, cx - 2)
    jy = np.minimum(np.arange(cy) - np.arange(cy) % 2, cy - 2)
    JX, JY = (a.ravel() for a in np.meshgrid(jx, jy))
    blocks = _Cells(gx[JX], gx[JX + 2], gy[JY], gy[JY + 2])
    return _misses(blocks, nx, values, scales, tol, error_tol, xm=gx[JX + 1], ym=gy[JY + 1])


def child_miss(miss, parent_miss, rate=RATE) -> tuple[np.ndarray, np.ndarray]:
    """The predicted largest interpolation error inside a cell's halves (in units of the tolerance; see the
    module's docstring) and the rate used: ``miss * r`` with r = miss / parent_miss clipped to [rate, 1]
    (`rate` where there is no parent: parent_miss inf). `rate` may be per cell: the parent's rate."""
    miss = np.asarray(miss, np.float64)
    parent_miss = np.broadcast_to(np.asarray(parent_miss, np.float64), miss.shape)
    rate = np.broadcast_to(np.asarray(rate, np.float64), miss.shape)
    with np.errstate(invalid="ignore", divide="ignore"):
        r = np.clip(miss / parent_miss, rate, 1.0)
    r = np.where(np.isfinite(parent_miss) & (parent_miss > 0), r, rate)
    return miss * r, r


def _line_fill(t: np.ndarray, known: np.ndarray, axis: int) -> np.ndarray:
    """Linear interpolation of `t` ([ny, nx]) along rows (axis 1) or columns (axis 0) between the known
    points of each line; NaN on lines with fewer than one known point."""
    tt = t if axis == 1 else t.T
    kk = known if axis == 1 else known.T
    out = np.full(tt.shape, np.nan)
    pos = np.arange(tt.shape[1])
    for r in np.flatnonzero(kk.any(1)):
        k = np.flatnonzero(kk[r])
        out[r] = np.interp(pos, k, tt[r, k])
    return out if axis == 1 else out.T


def interpolate(shape, values: Mapping[str, np.ndarray], evaluated: np.ndarray, leaves: _Cells,
                scales: Mapping[str, str]) -> dict:
    """Full [ny, nx] arrays: the evaluated values where `evaluated`, Coons patches of the finished cells
    (`leaves`, corners evaluated) everywhere else."""
    ny, nx = shape
    known = np.asarray(evaluated, bool).reshape(ny, nx)
    groups: dict = {}
    wx, wy = leaves.x1 - leaves.x0, leaves.y1 - leaves.y0
    for k in np.flatnonzero((wx > 1) | (wy > 1)):
        groups.setdefault((int(wx[k]), int(wy[k])), []).append(k)
    out = {}
    for m, scale in scales.items():
        raw = np.asarray(values[m], dtype=np.float64).reshape(ny, nx)
        t = np.where(known, _transform(raw, scale), np.nan)
        rows, cols = _line_fill(t, known, 1), _line_fill(t, known, 0)
        z = t.copy()
        for (gx, gy), ks in groups.items():
            ks = np.asarray(ks)
            x0, x1, y0, y1 = leaves.x0[ks, None], leaves.x1[ks, None], leaves.y0[ks, None], leaves.y1[ks, None]
            ox, oy = np.arange(gx + 1), np.arange(gy + 1)
            u, v = ox / gx, oy / gy
            X, Y = x0 + ox, y0 + oy  # [k, gx+1], [k, gy+1]
            c0, c1 = rows[y0, X], rows[y1, X]  # bottom and top edges [k, gx+1]
            d0, d1 = cols[Y, x0], cols[Y, x1]  # left and right edges [k, gy+1]
            f00, f10, f01, f11 = (a[:, :, None] for a in (t[y0, x0], t[y0, x1], t[y1, x0], t[y1, x1]))
            U, V = u[None, None, :], v[None, :, None]
            patch = ((1 - V) * c0[:, None, :] + V * c1[:, None, :] + (1 - U) * d0[:, :, None] + U * d1[:, :, None]
                     - ((1 - U) * (1 - V) * f00 + U * (1 - V) * f10 + (1 - U) * V * f01 + U * V * f11))
            z[Y[:, :, None], X[:, None, :]] = patch
        z = _untransform(z, scale)
        out[m] = np.where(known, raw, z)
    return out


def lattice_neighbours(index: int, shape) -> np.ndarray:
    """Flat indices of the 3 x 3 block around a flat index (clipped at the lattice's edges)."""
    ny, nx = shape
    iy, ix = divmod(int(index), nx)
    ys = np.arange(max(iy - 1, 0), min(iy + 2, ny))
    xs = np.arange(max(ix - 1, 0), min(ix + 2, nx))
    return (ys[:, None] * nx + xs[None, :]).ravel()


def nearest_indices(xs, ys, points) -> np.ndarray:
    """Sorted unique flat indices of the lattice points nearest to `points` ([n, 2] coordinates x, y) that
    lie inside the lattice's box (increasing axes)."""
    xs, ys = np.asarray(xs, np.float64), np.asarray(ys, np.float64)
    p = np.asarray(points, np.float64).reshape(-1, 2)
    ex = 1e-9 * max(xs[-1] - xs[0], 1e-300)
    ey = 1e-9 * max(ys[-1] - ys[0], 1e-300)
    inside = ((p[:, 0] >= xs[0] - ex) & (p[:, 0] <= xs[-1] + ex) & (p[:, 1] >= ys[0] - ey)
              & (p[:, 1] <= ys[-1] + ey))
    p = p[inside]

    def nearest(axis, q):
        j = np.clip(np.searchsorted(axis, q), 1, len(axis) - 1)
        return np.where(np.abs(q - axis[j - 1]) <= np.abs(axis[j] - q), j - 1, j)

    return np.unique(nearest(ys, p[:, 1]) * len(xs) + nearest(xs, p[:, 0])).astype(np.int64)


def polyline_indices(xs, ys, polyline) -> np.ndarray:
    """Every lattice point nearest to some point of a polyline ([n, 2] vertices): each segment is cut where
    it crosses the midlines between lattice rows and columns, and one point of every piece is taken."""
    xs, ys = np.asarray(xs, np.float64), np.asarray(ys, np.float64)
    p = np.asarray(polyline, np.float64).reshape(-1, 2)
    mx, my = (xs[:-1] + xs[1:]) / 2, (ys[:-1] + ys[1:]) / 2
    pieces = [p]
    for a, b in zip(p[:-1], p[1:]):
        cuts = [np.array([0.0, 1.0])]
        for mids, k in ((mx, 0), (my, 1)):
            if b[k] != a[k]:
                t = (mids - a[k]) / (b[k] - a[k])
                cuts.append(t[(t > 0) & (t < 1)])
        t = np.sort(np.concatenate(cuts))
        pieces.append(a + ((t[:-1] + t[1:]) / 2)[:, None] * (b - a))
    return nearest_indices(xs, ys, np.concatenate(pieces))


def refine(shape, evaluate: Callable[[np.ndarray], Mapping[str, np.ndarray] | None], scales: Mapping[str, str],
           tol: float, *, error_tol: float = 0.01, cells: int = 16, required=None,
           minimum: bool = True, rate=None) -> dict | None:
    """Sample a surface on the (ny, nx) lattice adaptively (see the module's docstring).

    `evaluate(indices)` evaluates the flat indices asked for (it may skip the ones it knows already) and
    returns every metric's values as flat [ny * nx] arrays (known where evaluated), or None to stop (the
    refinement then returns None; call it again later with the values saved to continue). Returns
    ``{"values": {metric: [ny, nx]}, "evaluated": bool [ny, nx], "spacing": h, "levels": [points asked per
    round], "refined": [cells split per level], "split_by": {metric: cells split because of it (its
    predicted error the largest)}, "minimum_rounds": n, "rates": the smooth rates per scale}``.
    `rate`: the smooth surface's error ratio per halving, one number or one per scale (default RATES);
    1 gives the plain rule that splits while the midpoints miss by more than the tolerance."""
    ny, nx = (int(s) for s in shape)
    scales = _check_scales(scales)
    if not tol > 0:
        raise LowlossError(f"the adaptive tolerance must be > 0 (got {tol})")
    if not error_tol >= 0:
        raise LowlossError(f"the error-rate tolerance must be >= 0 (got {error_tol})")
    rate = {**RATES, **(rate if isinstance(rate, Mapping) else dict.fromkeys(SCALES, rate))} if rate is not None \
        else RATES
    if not all(0 < float(rate[s]) <= 1 for s in SCALES):
        raise LowlossError(f"the interpolation error's rates per halving must be in (0, 1] (got {rate})")
    rates = np.array([[float(rate[s])] for s in scales.values()])
    h = coarse_spacing((ny, nx), cells)
    asked = np.zeros(ny * nx, bool)
    levels: list[int] = []

    def ask(indices) -> Mapping[str, np.ndarray] | None:
        idx = np.unique(np.asarray(indices, dtype=np.int64))
        levels.append(int((~asked[idx]).sum()))
        got = evaluate(idx)
        if got is not None:
            asked[idx] = True
        return got

    gx, gy = axis_nodes(nx, h), axis_nodes(ny, h)
    first = (gy[:, None] * nx + gx[None, :]).ravel()
    if required is not None:
        first = np.concatenate([first, np.asarray(required, dtype=np.int64).ravel()])
    values = ask(first)
    if values is None:
        return None
    X0, Y0 = np.meshgrid(gx[:-1], gy[:-1])
    X1, Y1 = np.meshgrid(gx[1:], gy[1:])
    open_ = _Cells(X0.ravel(), X1.ravel(), Y0.ravel(), Y1.ravel())
    # each open cell's parent's miss and the largest rate measured in its lineage (at least the smooth one)
    parent = _coarse_parents(gx, gy, nx, values, scales, tol, error_tol)
    prate = np.broadcast_to(rates, parent.shape)
    names = list(scales)
    leaves, refined, split_by = [], [], np.zeros(len(names), np.int64)
    while len(open_):
        split = open_.splittable()
        leaves.append(open_.take(~split))
        open_, parent, prate = open_.take(split), parent[:, split], prate[:, split]
        if not len(open_):
            break
        xm, ym = open_.xm, open_.ym
        mids = np.concatenate([ym * nx + xm, open_.y0 * nx + xm, open_.y1 * nx + xm, ym * nx + open_.x0,
                               ym * nx + open_.x1])
        values = ask(mids)
        if values is None:
            return None
        miss = _misses(open_, nx, values, scales, tol, error_tol)
        predicted, r = child_miss(miss, parent, prate)
        bad = predicted.max(0) > 1
        refined.append(int(bad.sum()))
        split_by += np.bincount(predicted[:, bad].argmax(0), minlength=len(names))
        leaves.append(open_.take(~bad).children()[0])
        open_, up = open_.take(bad).children()
        parent, prate = miss[:, bad][:, up], r[:, bad][:, up]
    leaves = _Cells.concat(leaves)

    rounds = 0
    while True:
        arrays = interpolate((ny, nx), values, asked, leaves, scales)
        new = []
        if minimum:
            for m in scales:
                a = arrays[m].ravel()
                finite = np.isfinite(a)
                if not finite.any():
                    continue
                ties = np.flatnonzero(finite & (a == a[finite].min()))
                best = ties[asked[ties]][0] if asked[ties].any() else ties[0]
                block = lattice_neighbours(best, (ny, nx))
                new.append(block[~asked[block]])
        new = np.concatenate(new) if new else np.zeros(0, np.int64)
        if not len(new):
            break
        rounds += 1
        values = ask(new)
        if values is None:
            return None
    return {"values": arrays, "evaluated": asked.reshape(ny, nx), "spacing": h, "levels": levels,
            "refined": refined, "split_by": dict(zip(names, split_by.tolist())), "minimum_rounds": rounds,
            "rates": {k: float(rate[k]) for k in SCALES}}


__all__ = ["MIN_POINTS", "RATE", "RATES", "SCALES", "child_miss", "axis_nodes", "coarse_spacing", "interpolate", "lattice_neighbours",
           "nearest_indices", "polyline_indices", "refine"]
