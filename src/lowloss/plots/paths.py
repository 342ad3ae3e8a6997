"""Figures of paths between modes: the line before and after permutation alignment (`lowloss align`), the
cost of path finders (trained curves vs nudged elastic bands), and loss-landscape sightseeing."""

from __future__ import annotations

from pathlib import Path

from . import plt, save_figure

BEFORE, AFTER = "tab:red", "tab:green"


def draw_align(result: dict, out: str | Path) -> list[Path]:
    """line.png: train loss and test error along the straight line from A to B and from A to the aligned B."""
    if "line" not in result:
        return []
    t = result["t"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for name, color, lab in (("before", BEFORE, "A to B"), ("after", AFTER, "A to B permuted to match A")):
        line = result["line"][name]
        axes[0].plot(t, line["train_loss"], "o-", color=color, lw=2, ms=3,
                     label=f"{lab} (barrier {line['barrier']:.3g})")
        axes[1].plot(t, [100 * e for e in line["test_error"]], "o-", color=color, lw=2, ms=3,
                     label=f"{lab} (max {100 * max(line['test_error']):.1f}%)")
    axes[0].set_yscale("log")
    axes[0].set_ylabel("train loss (NLL, log scale)")
    axes[1].set_ylabel("test error (%)")
    axes[1].set_ylim(bottom=0)
    for ax in axes:
        ax.set_xlabel("t (position on the straight line)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    al = result["alignment"]
    fig.suptitle(f"Weight matching: {al['groups']} permutation groups, {100 * al['moved_fraction']:.0f}% of "
                 f"{al['units']} units moved", y=1.03, fontsize=11)
    fig.tight_layout()
    return [save_figure(fig, Path(out) / "line.png")]


def draw_path_costs(rows: dict[str, dict], path: str | Path) -> Path:
    """Barrier and maximum train loss against gradient evaluations, one marker per path finder.

    `rows`: name -> {"gradient_evaluations", "barrier", "max_train_loss", optionally "rounds": [{
    "gradient_evaluations", "barrier"}, ...] (the NEB's trace after each round)}.
    """
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    colors = {"line": "tab:red", "curve": "tab:blue", "neb": "tab:orange"}
    for name, r in rows.items():
        c = colors.get(name.split()[0], None)
        for ax, key in zip(axes, ("barrier", "max_train_loss")):
            ax.plot([r["gradient_evaluations"]], [r[key]], "o", ms=9, color=c, label=name, zorder=4)
            trace = r.get("rounds") or []
            if trace and key in trace[0]:
                ax.plot([x["gradient_evaluations"] for x in trace], [x[key] for x in trace], "--", color=c,
                        lw=1.2, alpha=0.8, zorder=3)
    axes[0].set_ylabel("train-loss barrier")
    axes[1].set_ylabel("maximum train loss on the path")
    for ax in axes:
        ax.set_xlabel("gradient evaluations (one network, one minibatch)")
        ax.set_yscale("symlog", linthresh=1e-2)
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("Path finders between the same two modes: quality against cost", y=1.02, fontsize=11)
    fig.tight_layout()
    return save_figure(fig, path)


def draw_sightsee(result: dict, out: str | Path) -> list[Path]:
    """sightsee.png: the target picture, the trained grid's log train loss (held-out points marked) and the
    plane through the trained origin and directions (log train loss; the picture's parallelogram outlined)."""
    import numpy as np

    from ..utils import load_npz

    g = result["grid"]
    fig, axes = plt.subplots(1, 3, figsize=(14, 4.4))
    axes[0].imshow(np.array(result["lightness"]).reshape(g, g), cmap="gray", vmin=0, vmax=1)
    axes[0].set_title("target picture (dark = low loss)")
    loss = np.log10(np.maximum(np.array(result["train_loss"]), 1e-12)).reshape(g, g)
    im = axes[1].imshow(loss, cmap="viridis")
    held = result["held_out"]
    axes[1].plot([i % g for i in held], [i // g for i in held], "x", color="w", ms=4, label="held out")
    axes[1].set_title(f"log10 train loss on the grid (held-out corr. {result['agreement']['held_out']:.2f})")
    fig.colorbar(im, ax=axes[1], fraction=0.046)
    axes[1].legend(fontsize=7, loc="lower right")
    for ax in axes[:2]:
        ax.set_xticks([])
        ax.set_yticks([])
    plane = Path(out) / "plane" / "plane.npz"
    if plane.exists():
        z = load_npz(plane)
        x, y, tl = z["x"], z["y"], np.log10(np.maximum(z["train_loss"], 1e-12))
        pc = axes[2].pcolormesh(x, y, tl, cmap="viridis", shading="auto")
        fig.colorbar(pc, ax=axes[2], fraction=0.046)
        c = np.array(result["corners"])  # (-1,-1), (-1,1), (1,-1), (1,1)
        ring = c[[0, 1, 3, 2, 0]]
        axes[2].plot(ring[:, 0], ring[:, 1], "w--", lw=1)
        axes[2].plot([0], [0], "r*", ms=10, label="origin")
        axes[2].legend(fontsize=7)
        axes[2].set_title("plane through origin, origin+u, origin+v (log10 train loss)")
        axes[2].set_aspect("equal")
    acc = result["origin"]["test_accuracy"]
    fig.suptitle(f"Loss-landscape sightseeing: test accuracy at the origin {100 * acc:.1f}%", y=1.02, fontsize=11)
    fig.tight_layout()
    return [save_figure(fig, Path(out) / "sightsee.png")]


__all__ = ["draw_align", "draw_path_costs", "draw_sightsee"]
