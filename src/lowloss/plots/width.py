"""Optimum-width figures (`lowloss width`) and the 1-D random slice of `lowloss plane --random --dim 1`.

width_line.png: train loss (NLL + L2) and test error along the line through SGD and SWA, both points marked;
width_rays.png: the train loss along each random ray from SGD and from SWA, the rise threshold and the width
of every ray marked; plane_slice.png: the metrics of a G x 1 plane against the coordinate along d1.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..rundir import load_npz
from . import plt, save_figure

SGD_COLOR, SWA_COLOR = "tab:orange", "tab:blue"


def _mark_points(ax, gap: float) -> None:
    for x, lab, col, dx, ha in ((0.0, "SGD", SGD_COLOR, -3, "right"), (gap, "SWA", SWA_COLOR, 3, "left")):
        ax.axvline(x, color=col, lw=1.0, ls="--", alpha=0.8)
        ax.annotate(lab, (x, 1.0), xycoords=("data", "axes fraction"), xytext=(dx, -14), textcoords="offset points",
                    color=col, fontsize=9, fontweight="bold", ha=ha)


def plot_line(z: dict, info: dict, path: str | Path) -> Path:
    """Train loss (with L2) and test error against the distance along the line from SGD through SWA."""
    x = np.asarray(z["line_distance"])
    gap = float(info["distance"])
    fig, axes = plt.subplots(1, 2, figsize=(11.0, 4.0))
    ax = axes[0]
    ax.plot(x, z["line_objective"], color="k", lw=1.8, label="train loss (NLL + L2)")
    ax.plot(x, z["line_train_loss"], color="0.5", lw=1.0, ls=":", label="train NLL")
    ax.set_yscale("log")
    ax.set_ylabel("train loss (log scale)")
    ax.legend(fontsize=8, loc="best")
    ax = axes[1]
    ax.plot(x, 100 * np.asarray(z["line_test_error"]), color="tab:red", lw=1.8, label="test error")
    ax.plot(x, 100 * np.asarray(z["line_train_error"]), color="0.5", lw=1.0, ls=":", label="train error")
    ax.set_ylabel("error (%)")
    lo = min(float(np.min(z["line_test_error"])), float(np.min(z["line_train_error"])))
    ax.set_ylim(max(0.0, 100 * lo - 1.0), min(100.0, max(100 * lo + 10.0, 3 * 100 * lo + 1)))
    ax.legend(fontsize=8, loc="best")
    p = info["points"]
    for ax in axes:
        _mark_points(ax, gap)
        ax.set_xlabel("distance from SGD along the line through SWA")
        ax.tick_params(labelsize=8)
    axes[0].set_title(f"train loss: SGD {p['sgd']['train_loss']:.4f}, SWA {p['swa']['train_loss']:.4f}", fontsize=10)
    axes[1].set_title(f"test error: SGD {100 * p['sgd']['test_error']:.2f}%, SWA {100 * p['swa']['test_error']:.2f}%",
                      fontsize=10)
    fig.suptitle(f"The line through SGD and SWA (|w_SWA - w_SGD| = {gap:.3g}, wd {info['wd']:g})", fontsize=11)
    return save_figure(fig, path)


def plot_rays(z: dict, info: dict, path: str | Path) -> Path:
    """The train loss along every random ray from SGD and from SWA, with the rise threshold and the widths."""
    w = info["width"]
    d = np.asarray(z["ray_distance"])
    fig, ax = plt.subplots(figsize=(7.5, 4.6))
    for key, col, lab in (("sgd", SGD_COLOR, "SGD"), ("swa", SWA_COLOR, "SWA")):
        prof = np.asarray(z[f"ray_loss_{key}"])
        base = float(z[f"base_{key}"])
        for i, row in enumerate(prof):
            ax.plot(d, row, color=col, lw=0.8, alpha=0.55, label=None if i else lab)
        widths = np.asarray(z[f"width_{key}"])
        ok = np.isfinite(widths)
        ax.scatter(widths[ok], np.full(ok.sum(), base + w["rise"]), color=col, s=18, zorder=4, edgecolors="k",
                   linewidths=0.4)
        ax.axhline(base + w["rise"], color=col, lw=0.8, ls="--", alpha=0.8)
        st = w[key]
        if st["mean"] is not None:
            ax.axvline(st["mean"], color=col, lw=1.6, alpha=0.9,
                       label=f"{lab} width {st['mean']:.3g}" + (f" +- {st['se']:.2g}" if st["se"] is not None else ""))
    ax.set_yscale("log")
    ax.set_xlim(0, d[-1])
    ax.set_xlabel(f"distance along the ray ({w['kind']} directions)")
    ax.set_ylabel("train loss (NLL + L2, log scale)")
    ax.set_title(f"{w['directions']} random directions: width = distance where the loss rises by {w['rise']:g}",
                 fontsize=10)
    ax.legend(fontsize=8, loc="upper left")
    ax.tick_params(labelsize=8)
    return save_figure(fig, path)


def draw_width(result: dict, out: str | Path) -> list[Path]:
    """width_line.png and width_rays.png of a finished `lowloss width` run (arrays in OUT/width.npz)."""
    out = Path(out)
    z = load_npz(out / "width.npz")
    return [plot_line(z, result, out / "width_line.png"), plot_rays(z, result, out / "width_rays.png")]


SLICE_TITLES = {"train_loss": "train loss", "test_loss": "test loss", "train_error": "train error",
                "test_error": "test error"}


def plot_slice(npz: dict, path: str | Path, label: str = "run") -> Path:
    """The metrics of a G x 1 plane (a 1-D slice: y = 0 only) against x: losses on a log scale, errors in %."""
    x = np.asarray(npz["x"])
    fig, axes = plt.subplots(1, 2, figsize=(11.0, 4.0))
    for m, col in (("train_loss", "k"), ("test_loss", "tab:red")):
        if m in npz:
            axes[0].plot(x, np.asarray(npz[m]).reshape(-1), color=col, lw=1.6, label=SLICE_TITLES[m])
    for m, col in (("train_error", "k"), ("test_error", "tab:red")):
        if m in npz:
            axes[1].plot(x, 100 * np.asarray(npz[m]).reshape(-1), color=col, lw=1.6, label=SLICE_TITLES[m])
    axes[0].set_yscale("log")
    axes[0].set_ylabel("loss (log scale)")
    axes[1].set_ylabel("error (%)")
    for ax in axes:
        ax.axvline(0.0, color="0.3", lw=1.0, ls="--")
        ax.annotate(label, (0.0, 1.0), xycoords=("data", "axes fraction"), xytext=(3, -14),
                    textcoords="offset points", fontsize=9, fontweight="bold")
        ax.set_xlabel("x (along the random direction d1)")
        ax.tick_params(labelsize=8)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    return save_figure(fig, path)


def draw_slice(result: dict, out: str | Path) -> list[Path]:
    """plane_slice.png of a finished `lowloss plane --random --dim 1` run (OUT/plane.npz with one row)."""
    if not result.get("finished"):
        return []
    out = Path(out)
    npz = load_npz(out / "plane.npz")
    labels = list(result.get("labels") or ["run"])
    return [plot_slice(npz, out / "plane_slice.png", str(labels[0]))]


__all__ = ["draw_slice", "draw_width", "plot_line", "plot_rays", "plot_slice"]
