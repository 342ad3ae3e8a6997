"""Figures of a `lowloss connect` run (from its run.json): metrics along the curve vs the line, and endpoint
ensembles."""

from __future__ import annotations

from pathlib import Path

from . import plt, save_figure

CURVE_COLOR, LINE_COLOR = "tab:blue", "tab:red"


def _label(evaluation: dict) -> str:
    cfg = evaluation.get("config", {})
    kind = cfg.get("curve", "curve")
    bends = cfg.get("bends")
    return f"{kind} ({bends} bend{'s' if bends != 1 else ''})" if bends is not None else kind


def _mark_endpoints(ax, t, values, color):
    ax.plot([t[0], t[-1]], [values[0], values[-1]], "o", color=color, ms=6, zorder=5)


def plot_curve(evaluation: dict, path: str | Path) -> Path:
    """Train loss (log scale) and test error against t, for the trained curve and the line segment.

    The endpoints w_A (t=0) and w_B (t=1) are marked; the barrier of each path is in the legend.
    """
    t = evaluation["t"]
    summ = evaluation["summary"]
    label = _label(evaluation)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for name, color, lab in (("line", LINE_COLOR, "line segment"), ("curve", CURVE_COLOR, label)):
        res = evaluation[name]
        b = summ[name]["barrier"]
        axes[0].plot(t, res["train_loss"], color=color, lw=2, label=f"{lab} (barrier {b:.3g})")
        _mark_endpoints(axes[0], t, res["train_loss"], color)
        axes[1].plot(t, [100 * e for e in res["test_error"]], color=color, lw=2,
                     label=f"{lab} (max {100 * summ[name]['max_test_error']:.1f}%)")
        _mark_endpoints(axes[1], t, [100 * e for e in res["test_error"]], color)
    axes[0].set_yscale("log")
    axes[0].set_ylabel("train loss (NLL, log scale)")
    axes[1].set_ylabel("test error (%)")
    axes[1].set_ylim(bottom=0)
    for ax in axes:
        ax.set_xlabel("t")
        ax.set_xlim(-0.02, 1.02)
        ax.grid(alpha=0.3)
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


def draw_connect(result: dict, out: str | Path) -> list[Path]:
    """curve.png and ensemble.png of a finished `lowloss connect` run (run.json's contents in `result`)."""
    out = Path(out)
    return [plot_curve(result, out / "curve.png"), plot_ensemble(result, out / "ensemble.png")]


__all__ = ["draw_connect", "plot_curve", "plot_ensemble"]
