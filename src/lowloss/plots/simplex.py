"""Figures for simplexes and complexes: the complex's structure, the dimensionality curve, the faces' planes.

They read what the runs saved: ``structure.npz`` (pairwise squared distances of the vertices, simplex
log-volumes, simplexes, vertex kinds), run.json, and the ``plane.npz`` of each face plane.
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np

from ..errors import LowlossError
from ..rundir import load_npz
from . import plt, save_figure

STRUCTURE_FILE = "structure.npz"


def mds_layout(sq_dists: np.ndarray) -> np.ndarray:
    """Classical multidimensional scaling: [n, n] squared distances -> [n, 2] coordinates.

    Double-centred Gram matrix B = -J D J / 2, coordinates from its top two eigenpairs (distances between
    the drawn points are the best rank-2 approximation of the true ones).
    """
    d = np.asarray(sq_dists, dtype=np.float64)
    n = d.shape[0]
    j = np.eye(n) - np.ones((n, n)) / n
    b = -0.5 * j @ d @ j
    w, v = np.linalg.eigh(b)
    order = np.argsort(w)[::-1][:2]
    xy = v[:, order] * np.sqrt(np.clip(w[order], 0, None))
    if xy.shape[1] < 2:
        xy = np.concatenate([xy, np.zeros((n, 2 - xy.shape[1]))], 1)
    return xy


def _hull(points: np.ndarray) -> np.ndarray:
    """Convex hull (monotone chain) of a few 2-D points, in order."""
    pts = sorted(map(tuple, points))
    if len(pts) <= 2:
        return np.array(pts)

    def cross(o, a, b):
        return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])

    lower, upper = [], []
    for p in pts:
        while len(lower) >= 2 and cross(lower[-2], lower[-1], p) <= 0:
            lower.pop()
        lower.append(p)
    for p in reversed(pts):
        while len(upper) >= 2 and cross(upper[-2], upper[-1], p) <= 0:
            upper.pop()
        upper.append(p)
    return np.array(lower[:-1] + upper[:-1])


def read_structure(directory) -> dict:
    """DIR/structure.npz as {"sq_dists": [n, n], "log_volumes": [S], "simplexes": [tuple], "kinds": [str]}."""
    path = Path(directory) / STRUCTURE_FILE
    z = load_npz(path)
    missing = [k for k in ("sq_dists", "log_volumes", "simplexes", "kinds") if k not in z]
    if missing:
        raise LowlossError(f"{path} lacks {', '.join(missing)}: it is not a file lowloss wrote; re-run the "
                           "command that wrote it")
    return {"sq_dists": z["sq_dists"], "log_volumes": z["log_volumes"],
            "simplexes": [tuple(int(i) for i in row if i >= 0) for row in z["simplexes"]],
            "kinds": [str(k) for k in z["kinds"]]}


def plot_complex_structure(structure: dict, path, title: str = "simplicial complex"):
    """Vertices laid out by MDS of their pairwise distances; simplexes filled, modes vs connectors marked.

    `structure` is :func:`read_structure`'s dict."""
    d, lvs = structure["sq_dists"], structure["log_volumes"]
    simplexes, kinds = structure["simplexes"], structure["kinds"]
    xy = mds_layout(d)
    # thin complexes (connectors near the segment between modes) would be invisible at equal scale:
    # stretch the second axis then, and say so on the axis label
    w1, w2 = np.ptp(xy[:, 0]), np.ptp(xy[:, 1])
    stretch = 1.0
    if w1 > 0 and 0 < w2 < 0.1 * w1:
        stretch = 0.3 * w1 / w2
        xy = xy * np.array([1.0, stretch])
    fig, ax = plt.subplots(figsize=(5.6, 4.8))
    colors = plt.cm.tab10(np.arange(len(simplexes)) % 10)
    for s, c, lv in zip(simplexes, colors, lvs):
        pts = xy[list(s)]
        if len(s) >= 3:
            h = _hull(pts)
            ax.fill(h[:, 0], h[:, 1], color=c, alpha=0.18, lw=0,
                    label=f"{len(s) - 1}-simplex {list(s)}: log vol {lv:.1f}")
        for a, b in itertools.combinations(s, 2):
            ax.plot(xy[[a, b], 0], xy[[a, b], 1], color=c, lw=1.0, alpha=0.8)
        if len(s) < 3:
            ax.plot([], [], color=c, label=f"1-simplex {list(s)}: log length {lv:.1f}")
    modes = [i for i, k in enumerate(kinds) if k == "mode"]
    conns = [i for i, k in enumerate(kinds) if k != "mode"]
    ax.scatter(xy[modes, 0], xy[modes, 1], marker="*", s=220, c="black", zorder=3, label="mode (fixed)")
    if conns:
        ax.scatter(xy[conns, 0], xy[conns, 1], marker="o", s=70, c="tab:red", edgecolors="black", zorder=3,
                   label="connector (trained)")
    for i, (x, y) in enumerate(xy):
        ax.annotate(str(i), (x, y), xytext=(6, 6), textcoords="offset points", fontsize=9)
    ax.set_aspect("equal", "datalim")
    ax.margins(0.15)
    ax.set_xlabel("MDS axis 1 (parameter-space distance)")
    ax.set_ylabel("MDS axis 2" + (f" (stretched x{stretch:.3g})" if stretch != 1.0 else ""))
    ax.set_title(f"{title}\n(MDS of pairwise distances; diameter {math.sqrt(d.max()):.3g})", fontsize=10)
    ax.legend(fontsize=7, loc="best", framealpha=0.8)
    return save_figure(fig, path)


def plot_dimension(result: dict, path):
    """log-volume of the two-mode complex and the sampled models' train accuracy against the number of connectors."""
    n = result["connectors"]
    lv = [v if v is not None and v > -1e300 else np.nan for v in result["log_volume"]]
    acc = [100 * a for a in result["sample_train_accuracy"]]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(n, lv, "o-", color="tab:blue", label="log-volume of the complex")
    ax.set_xlabel("number of connecting points")
    ax.set_ylabel("log volume", color="tab:blue")
    ax.set_xticks(n)
    c = result.get("collapsed_at")
    if c:
        ax.axvline(c, color="tab:red", ls="--", lw=1, label=f"collapse at {c}")
    ax2 = ax.twinx()
    ax2.plot(n, acc, "s:", color="tab:green", label="sample train accuracy")
    ax2.set_ylabel("sampled models' train accuracy (%)", color="tab:green")
    lo = min(acc) if acc else 0
    ax2.set_ylim(max(0, lo - 5), 100.5)
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, fontsize=8, loc="lower left")
    ax.set_title("Dimensionality of the mode-connecting complex")
    return save_figure(fig, path)


def draw_simplex(result: dict, out: Path) -> list[Path]:
    """A simplex run: structure.png, and plane_<metric>.png in each face plane's directory."""
    from .plane import plot_planes

    paths = [plot_complex_structure(read_structure(out), out / "structure.png",
                                    title=f"ESPRO simplex of {Path(result['base_run']).name}")]
    for f in result.get("faces") or []:
        paths += plot_planes(out / "faces" / Path(f["dir"]).name)
    return paths


def draw_complex(result: dict, out: Path) -> list[Path]:
    """A complex run: structure.png."""
    title = f"complex: {len(result['modes'])} modes, {result['config']['connectors']} connectors"
    return [plot_complex_structure(read_structure(out), out / "structure.png", title=title)]


def draw_dimension(result: dict, out: Path) -> list[Path]:
    """A dimension run: dimension.png and structure.png."""
    return [plot_dimension(result, out / "dimension.png"),
            plot_complex_structure(read_structure(out), out / "structure.png", title="dimension complex")]
