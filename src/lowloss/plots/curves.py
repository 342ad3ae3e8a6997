"""Figures of a `lowloss connect` run (from its run.json): metrics along the curve vs the line, and endpoint
ensembles."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..rundir import load_npz
from . import plt, save_figure

CURVE_COLOR, LINE_COLOR = "tab:blue", "tab:red"


def _label(evaluation: dict) -> str:
    cfg = evaluation.get("config", {})
    if cfg.get("method") == "neb":
        return f"AutoNEB ({evaluation.get('cost', {}).get('pivots')} pivots)"
    kind = cfg.get("curve", "curve")
    bends = cfg.get("bends")
    return f"{kind} ({bends} bend{'s' if bends != 1 else ''})" if bends is not None else kind


def _mark_endpoints(ax, t, values, color):
    ax.plot([t[0], t[-1]], [values[0], values[-1]], "o", color=color, ms=6, zorder=5)


def _path_panels(evaluation: dict, right: str, scale: float, right_legend):
    """(figure, axes, curve label): the train loss (left) and `right` times `scale` (right) against t, for the
    line segment and the trained path, endpoints marked; the left legend gives each path's barrier, the right
    one `right_legend(summary of the path)`."""
    t = evaluation["t"]
    summ = evaluation["summary"]
    label = _label(evaluation)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for name, color, lab in (("line", LINE_COLOR, "line segment"), ("curve", CURVE_COLOR, label)):
        res = evaluation[name]
        values = [scale * v for v in res[right]]
        axes[0].plot(t, res["train_loss"], color=color, lw=2, label=f"{lab} (barrier {summ[name]['barrier']:.3g})")
        _mark_endpoints(axes[0], t, res["train_loss"], color)
        axes[1].plot(t, values, color=color, lw=2, label=f"{lab} ({right_legend(summ[name])})")
        _mark_endpoints(axes[1], t, values, color)
    for ax in axes:
        ax.set_xlabel("t")
        ax.set_xlim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    return fig, axes, label


def plot_curve(evaluation: dict, path: str | Path) -> Path:
    """Train loss (log scale) and test error against t, for the trained curve and the line segment.

    The endpoints w_A (t=0) and w_B (t=1) are marked; the barrier of each path is in the legend.
    """
    fig, axes, label = _path_panels(evaluation, "test_error", 100.0,
                                    lambda summ: f"max {100 * summ['max_test_error']:.1f}%")
    axes[0].set_yscale("log")
    axes[0].set_ylabel("train loss (NLL, log scale)")
    axes[1].set_ylabel("test error (%)")
    axes[1].set_ylim(bottom=0)
    for ax in axes:
        ax.legend(fontsize=8)
        for x, name in ((0.0, "$w_A$"), (1.0, "$w_B$")):
            ax.axvline(x, color="0.6", lw=0.8, ls=":")
            ax.annotate(name, (x, 1.0), xycoords=("data", "axes fraction"), xytext=(0, 3),
                        textcoords="offset points", ha="center", va="bottom", fontsize=9)
    bn = " (BN statistics recomputed at every t)" if evaluation.get("bn", {}).get("recomputed") else ""
    fig.suptitle(f"Mode connectivity: {label} vs line{bn}", y=1.04, fontsize=11)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_ensemble(evaluation: dict, path: str | Path) -> Path:
    """Test error and NLL of the two-model ensemble {w_A, phi(t)} against t, along the curve and the line.

    Reference lines: the {w_A, w_B} ensemble and w_A alone. Errors are drawn as steps (they move in units
    of one test example).
    """
    t = evaluation["t"]
    label = _label(evaluation)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    pair = evaluation["endpoint_ensemble"]
    single_err = evaluation["endpoints"]["w_a"]["test_error"]
    for name, color, lab in (("line", LINE_COLOR, "line segment"), ("curve", CURVE_COLOR, label)):
        res = evaluation[name]
        axes[0].plot(t, [100 * e for e in res["ensemble_test_error"]], color=color, lw=2, label=lab, zorder=3,
                     drawstyle="steps-mid")
        axes[1].plot(t, res["ensemble_test_nll"], color=color, lw=2, label=lab, zorder=3)
    # reference lines underneath the paths (a path that sits on a reference line stays visible)
    axes[0].axhline(100 * pair["test_error"], color="k", ls="--", lw=1.2, label="ensemble {$w_A$, $w_B$}", zorder=2)
    axes[0].axhline(100 * single_err, color="0.5", ls=":", lw=1.2, label="$w_A$ alone", zorder=2)
    axes[1].axhline(pair["test_nll"], color="k", ls="--", lw=1.2, label="ensemble {$w_A$, $w_B$}", zorder=2)
    axes[1].axhline(evaluation["endpoints"]["w_a"]["test_loss"], color="0.5", ls=":", lw=1.2, label="$w_A$ alone",
                    zorder=2)
    top = max([100 * single_err, 100 * pair["test_error"]]
              + [100 * e for n in ("curve", "line") for e in evaluation[n]["ensemble_test_error"]])
    axes[0].set_ylim(0, 1.15 * top + 0.1)
    axes[0].set_ylabel("test error of {$w_A$, $\\phi(t)$} (%)")
    axes[1].set_ylabel("test NLL of {$w_A$, $\\phi(t)$}")
    axes[1].set_yscale("log")
    for ax in axes:
        ax.set_xlabel("t")
        ax.set_xlim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("Ensembles of an endpoint and a point on the path (mean of probabilities)", y=1.02, fontsize=11)
    fig.tight_layout()
    return save_figure(fig, path)


MARK_COLOR = "magenta"


def plot_regression_curve(evaluation: dict, path: str | Path) -> Path:
    """Regression: train and test loss (MSE, log scale) against t along the trained curve and the line."""
    fig, axes, label = _path_panels(evaluation, "test_loss", 1.0, lambda summ: f"max {summ['max_test_loss']:.3g}")
    marks = evaluation.get("marks") or {}
    if marks:
        axes[0].plot(marks["t"], marks["train_loss"], "o", mfc="none", mec=MARK_COLOR, mew=1.8, ms=9,
                     label="marked points", zorder=6)
    axes[0].set_ylabel("train loss (MSE, log scale)")
    axes[1].set_ylabel("test loss (MSE, log scale)")
    for ax in axes:
        ax.set_yscale("log")
        ax.legend(fontsize=8)
    fig.suptitle(f"Mode connectivity for regression: {label} vs line", y=1.02, fontsize=11)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_regression_path(plane: dict, functions: dict | None, path: str | Path, spread: dict | None = None) -> Path:
    """The blog's Figure 7: left, the train loss on the plane of the curve with the curve and magenta circles at
    the marked t; right, the predictive functions at those t (magenta lines) over the training data."""
    from matplotlib.colors import LogNorm

    from .plane import log_levels

    x, y, z = (np.asarray(plane[k], dtype=np.float64) for k in ("x", "y", "train_loss"))
    levels = log_levels(z)
    zc = np.clip(np.where(np.isfinite(z), z, levels[-1]), levels[0], levels[-1])
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8), gridspec_kw={"width_ratios": [1.1, 1]})
    ax = axes[0]
    cs = ax.contourf(x, y, zc, levels=levels, norm=LogNorm(levels[0], levels[-1]), cmap="viridis")
    ax.contour(x, y, zc, levels=levels[::3], colors="k", linewidths=0.4, alpha=0.35)
    ratio = (y[-1] - y[0]) / (x[-1] - x[0]) if x[-1] > x[0] else 1.0
    cb = fig.colorbar(cs, ax=ax, fraction=0.046, pad=0.03, shrink=float(np.clip(1.3 * ratio, 0.4, 1.0)))
    ticks = np.geomspace(levels[0], levels[-1], 6)
    cb.set_ticks(ticks)
    cb.set_ticklabels([f"{v:.3g}" for v in ticks])
    cb.set_label("train loss (MSE, log scale)", fontsize=8)
    cc = np.asarray(plane["curve_coords"])
    ax.plot(cc[:, 0], cc[:, 1], color="w", lw=2.0, ls="--", zorder=3)
    pts = np.asarray(plane["point_coords"])
    ax.scatter(pts[:2, 0], pts[:2, 1], s=60, c="w", edgecolors="k", linewidths=1.0, zorder=5)
    for (px, py), lab in zip(pts[:2], ("$w_A$", "$w_B$")):
        ax.annotate(lab, (px, py), xytext=(-14, 8), textcoords="offset points", color="w", fontsize=11)
    mc, mt = np.asarray(plane["mark_coords"]), np.asarray(plane["mark_t"])
    ax.scatter(mc[:, 0], mc[:, 1], s=110, facecolors="none", edgecolors=MARK_COLOR, linewidths=2.2, zorder=6)
    for (px, py), tt in zip(mc, mt):
        ax.annotate(f"t={tt:.2g}", (px, py), xytext=(7, -14), textcoords="offset points", color=MARK_COLOR,
                    fontsize=8, fontweight="bold",
                    bbox={"boxstyle": "round,pad=0.15", "fc": "black", "alpha": 0.5, "lw": 0})
    ax.set_xlim(x[0], x[-1])
    ax.set_ylim(y[0], y[-1])
    ax.set_aspect("equal")
    ax.set_xlabel("x (along $w_B - w_A$)")
    ax.set_ylabel("y (towards the bend)")
    ax.set_title("train loss on the plane of the curve")
    ax = axes[1]
    if functions is not None:
        xs = np.asarray(functions["x"])
        away = np.asarray(functions["away"], dtype=bool)
        lo, hi = float(np.min(functions["curve"])), float(np.max(functions["curve"]))
        ax.fill_between(xs, 0, 1, where=away, color="0.92", lw=0, label="away from the data",
                        transform=ax.get_xaxis_transform())
        ax.scatter(functions["test_x"], functions["test_y"], s=5, c="0.6", label="test data", zorder=2)
        ax.scatter(functions["train_x"], functions["train_y"], s=10, c="k", label="train data", zorder=3)
        for i, f in enumerate(np.asarray(functions["curve"])):
            ax.plot(xs, f, color=MARK_COLOR, lw=1.5, alpha=0.85, zorder=4,
                    label="functions at the marked t" if i == 0 else None)
        ax.set_ylim(lo - 0.3 * (hi - lo), hi + 0.3 * (hi - lo))
        ax.set_xlim(xs[0], xs[-1])
        title = "predictive functions along the curve"
        if spread and spread.get("away_from_data") is not None:
            title += (f"\nmean std across them: {spread['away_from_data']:.3g} away from the data, "
                      f"{spread['near_data']:.3g} near it")
        ax.set_title(title, fontsize=10)
        ax.legend(fontsize=8, loc="best")
        ax.set_xlabel("input x")
        ax.set_ylabel("prediction f(x)")
        ax.grid(alpha=0.3)
    else:
        ax.set_axis_off()
        ax.text(0.5, 0.5, "inputs are not 1-D: no functions to draw", ha="center", va="center")
    fig.suptitle("Functions along a low-loss path (magenta: the same marked points in both panels)", y=1.0,
                 fontsize=11)
    fig.tight_layout()
    return save_figure(fig, path)


def draw_connect(result: dict, out: str | Path) -> list[Path]:
    """curve.png and ensemble.png of a finished `lowloss connect` run (run.json's contents in `result`); for
    regression data curve.png and regression_path.png (the plane of the curve beside the functions)."""
    out = Path(out)
    if result.get("task") == "regression":
        paths = [plot_regression_curve(result, out / "curve.png")]
        if result.get("path_plane"):
            fn = result.get("functions")
            functions = load_npz(out / fn["file"]) if fn else None
            spread = (fn or {}).get("spread", {}).get("curve")
            paths.append(plot_regression_path(load_npz(out / result["path_plane"]["file"]), functions,
                                              out / "regression_path.png", spread))
        return paths
    return [plot_curve(result, out / "curve.png"), plot_ensemble(result, out / "ensemble.png")]


__all__ = ["draw_connect", "plot_curve", "plot_ensemble", "plot_regression_curve", "plot_regression_path"]
