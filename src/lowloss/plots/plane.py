"""Loss-surface plane figures: filled contours with log-spaced levels (as in Garipov et al. and the blog),
the three points marked and labelled, any projected curve or simplex drawn on top, a colour bar."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..rundir import load_npz
from . import plt, save_figure

PLANE_AXES = ("x (along b - a)", "y (orthogonal, towards c)")
RANDOM_AXES = ("x (along random direction d1)", "y (along random direction d2)")
TITLES = {"train_loss": "train loss", "train_error": "train error", "test_loss": "test loss (NLL)",
          "test_error": "test error"}


def log_levels(values: np.ndarray, n: int = 24, max_ratio: float = 1e4) -> np.ndarray:
    """n log-spaced contour levels from the smallest positive value up to the largest (capped at
    `max_ratio` times the smallest, so a far-away blow-up does not flatten the valleys)."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    pos = v[v > 0]
    if pos.size == 0:
        return np.array([1e-6, 1e-5])
    lo = float(pos.min())
    hi = float(min(v.max(), lo * max_ratio))
    if hi <= lo * (1 + 1e-9):
        hi = lo * 10
    return np.geomspace(lo, hi, n)


def plot_plane(npz: dict, metric: str, path: str | Path, title: str | None = None, axis_labels=None) -> Path:
    """One metric of a computed plane (the arrays of plane.npz) as a PNG."""
    from matplotlib.colors import LogNorm

    x, y, z = np.asarray(npz["x"]), np.asarray(npz["y"]), np.asarray(npz[metric], dtype=np.float64)
    levels = log_levels(z)
    zc = np.clip(np.where(np.isfinite(z), z, levels[-1]), levels[0], levels[-1])
    ratio = (y[-1] - y[0]) / (x[-1] - x[0]) if x[-1] > x[0] else 1.0
    fig, ax = plt.subplots(figsize=(7.0, float(np.clip(5.6 * ratio, 3.0, 9.0)) + 0.8))
    cs = ax.contourf(x, y, zc, levels=levels, norm=LogNorm(levels[0], levels[-1]), cmap="viridis", extend="neither")
    ax.contour(x, y, zc, levels=levels[::3], colors="k", linewidths=0.4, alpha=0.35)
    cb = fig.colorbar(cs, ax=ax, fraction=0.046 * min(1.0, max(ratio, 0.3)), pad=0.03)
    cb.set_label(TITLES.get(metric, metric) + " (log scale)")
    ticks = np.geomspace(levels[0], levels[-1], 6)
    cb.set_ticks(ticks)
    cb.set_ticklabels([f"{t:.3g}" for t in ticks])

    if "simplex_coords" in npz:
        sv = np.asarray(npz["simplex_coords"])
        for i, j in np.asarray(npz["simplex_edges"]).reshape(-1, 2):
            ax.plot([sv[i, 0], sv[j, 0]], [sv[i, 1], sv[j, 1]], color="w", lw=1.4, alpha=0.9)
        ax.scatter(sv[:, 0], sv[:, 1], s=18, c="w", edgecolors="k", linewidths=0.6, zorder=4)
        named = {str(v) for v in np.asarray(npz["point_labels"])}
        for (px, py), lab in zip(sv, np.asarray(npz["simplex_labels"])):
            if str(lab) in named:  # the face's vertices are labelled as the plane's points
                continue
            ax.annotate(str(lab), (px, py), xytext=(4, -10), textcoords="offset points", color="w", fontsize=8)
    if "curve_coords" in npz:
        cc = np.asarray(npz["curve_coords"])
        ax.plot(cc[:, 0], cc[:, 1], color="w", lw=2.0, ls="--", label="curve", zorder=3)
        if "curve_control_coords" in npz:
            cp = np.asarray(npz["curve_control_coords"])
            ax.plot(cp[:, 0], cp[:, 1], color="w", lw=0.8, ls=":", alpha=0.7, zorder=3)
    pts = np.asarray(npz["point_coords"])
    ax.scatter(pts[:, 0], pts[:, 1], s=70, c="w", marker="o", edgecolors="k", linewidths=1.2, zorder=5)
    for (px, py), lab in zip(pts, np.asarray(npz["point_labels"])):
        ax.annotate(str(lab), (px, py), xytext=(6, 6), textcoords="offset points", color="w", fontsize=10,
                    fontweight="bold", zorder=6,
                    bbox={"boxstyle": "round,pad=0.15", "fc": "black", "alpha": 0.45, "lw": 0})
    ax.set_xlim(x[0], x[-1])
    ax.set_ylim(y[0], y[-1])
    ax.set_aspect("equal")
    ax.set_xlabel((axis_labels or PLANE_AXES)[0])
    ax.set_ylabel((axis_labels or PLANE_AXES)[1])
    ax.set_title(title or f"{TITLES.get(metric, metric)} on the plane ({len(x)}x{len(y)} grid)")
    ax.tick_params(labelsize=8)
    return save_figure(fig, path)


def plot_evaluated(npz: dict, metric: str, path: str | Path, axis_labels=None) -> Path:
    """Where an adaptive plane evaluated its points: `metric`'s contours in grey, the evaluated lattice points
    in red (everything else was interpolated)."""
    from matplotlib.colors import ListedColormap, LogNorm

    x, y, z = np.asarray(npz["x"]), np.asarray(npz["y"]), np.asarray(npz[metric], dtype=np.float64)
    ev = np.asarray(npz["evaluated"], bool)
    levels = log_levels(z)
    zc = np.clip(np.where(np.isfinite(z), z, levels[-1]), levels[0], levels[-1])
    ratio = (y[-1] - y[0]) / (x[-1] - x[0]) if x[-1] > x[0] else 1.0
    fig, ax = plt.subplots(figsize=(7.0, float(np.clip(5.6 * ratio, 3.0, 9.0)) + 0.8))
    ax.contourf(x, y, zc, levels=levels, norm=LogNorm(levels[0], levels[-1]), cmap="Greys_r", alpha=0.8)
    dx = (x[-1] - x[0]) / max(len(x) - 1, 1) / 2
    dy = (y[-1] - y[0]) / max(len(y) - 1, 1) / 2
    ax.imshow(np.where(ev, 1.0, np.nan), origin="lower", extent=(x[0] - dx, x[-1] + dx, y[0] - dy, y[-1] + dy),
              cmap=ListedColormap(["#d62728"]), vmin=0, vmax=1, interpolation="nearest", aspect="auto", zorder=2)
    pts = np.asarray(npz["point_coords"])
    ax.scatter(pts[:, 0], pts[:, 1], s=50, c="w", marker="o", edgecolors="k", linewidths=1.0, zorder=5)
    if "curve_coords" in npz:
        cc = np.asarray(npz["curve_coords"])
        ax.plot(cc[:, 0], cc[:, 1], color="tab:blue", lw=1.0, ls="--", zorder=3)
    ax.set_xlim(x[0], x[-1])
    ax.set_ylim(y[0], y[-1])
    ax.set_aspect("equal")
    ax.set_xlabel((axis_labels or PLANE_AXES)[0])
    ax.set_ylabel((axis_labels or PLANE_AXES)[1])
    ax.set_title(f"evaluated points (red): {int(ev.sum())} of {ev.size} ({100 * ev.mean():.2f}%); "
                 f"{TITLES.get(metric, metric)} in grey", fontsize=10)
    ax.tick_params(labelsize=8)
    return save_figure(fig, path, dpi=max(130, int(min(len(x), 1200) / 5)))


def plot_planes(directory: str | Path, metrics=None, axis_labels=None) -> list[Path]:
    """DIR/plane_<metric>.png for every metric in DIR/plane.npz (or the given ones)."""
    directory = Path(directory)
    npz = load_npz(directory / "plane.npz")
    metrics = metrics or [m for m in TITLES if m in npz]
    paths = [plot_plane(npz, m, directory / f"plane_{m}.png", axis_labels=axis_labels) for m in metrics]
    if "evaluated" in npz and not np.asarray(npz["evaluated"]).all():  # an adaptive plane: where it looked
        paths.append(plot_evaluated(npz, metrics[0], directory / "plane_evaluated.png", axis_labels=axis_labels))
    return paths


def draw_plane(result: dict, out: str | Path) -> list[Path]:
    """plane_<metric>.png for each metric of a finished `lowloss plane` run (run.json's contents in `result`,
    the arrays in OUT/plane.npz); nothing for a plane stopped before its grid was complete."""
    if not result.get("finished"):
        return []
    random = (result.get("sources") or {}).get("random")
    if random and random.get("dim") == 1:  # a G x 1 slice along one random direction: a line figure
        from .width import draw_slice

        return draw_slice(result, out)
    labels = RANDOM_AXES if random else PLANE_AXES
    return plot_planes(out, list((result.get("config") or {}).get("metrics") or []) or None, axis_labels=labels)


__all__ = ["draw_plane", "log_levels", "plot_evaluated", "plot_plane", "plot_planes"]
