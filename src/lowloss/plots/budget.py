"""Figure of the equal-budget comparison: test accuracy and NLL against budget, one line per method."""

from __future__ import annotations

from pathlib import Path

from . import plt, save_figure

STYLE = {"single": ("k", "o"), "ensemble": ("tab:blue", "s"), "sse": ("tab:orange", "^"),
         "fge": ("tab:green", "D"), "swa": ("tab:purple", "v"), "swag": ("tab:red", "P"),
         "multiswag": ("tab:brown", "X")}


def draw_budget(result: dict, out: Path) -> list[Path]:
    """OUT/budget.png of a finished `lowloss budget` run (its run.json contents)."""
    c, seeds = result["config"], result["seeds"]
    title = (f"{c['data']} {c['model']}, mean ± std over {len(seeds)} seed{'s' if len(seeds) > 1 else ''}, "
             f"1 budget = {c['epochs']} epochs")
    return [plot_budget(result["summary"], Path(out) / "budget.png", title=title,
                        paired=result.get("paired_vs_single") or None, num_seeds=len(seeds))]


def plot_budget(summary: dict, path: str | Path, title: str = "", paired: dict | None = None,
                num_seeds: int = 1) -> Path:
    """`summary` is run.json's "summary": {method: {budget: {metric: {mean, std}}}}; error bars are the std
    over seeds. With `paired` (run.json's "paired_vs_single": method minus single on the same seed) a third
    panel shows each method's NLL difference to the single model with +-2 standard errors of the paired
    difference (std / sqrt(seeds)): below zero beyond its bar is a gain beyond seed noise."""
    fig, axes = plt.subplots(1, 3 if paired else 2, figsize=(16 if paired else 11, 4))
    n = max(len(summary), 1)
    for i, (method, per_b) in enumerate(summary.items()):
        bs = sorted(per_b, key=float)
        x = [float(b) + 0.04 * (i - (n - 1) / 2) for b in bs]  # small offsets keep error bars apart
        color, marker = STYLE.get(method, (None, "o"))
        for ax, key, scale in ((axes[0], "accuracy", 100.0), (axes[1], "nll", 1.0)):
            ax.errorbar(x, [scale * per_b[b][key]["mean"] for b in bs], yerr=[scale * per_b[b][key]["std"] for b in bs],
                        label=method, color=color, marker=marker, capsize=3, lw=1.5, ms=6)
    budgets = sorted({float(b) for per_b in summary.values() for b in per_b})
    for ax, lab in ((axes[0], "test accuracy (%)"), (axes[1], "test NLL")):
        ax.set_xlabel("budget (units of one ordinary training run)")
        ax.set_ylabel(lab)
        ax.set_xticks(budgets)
        ax.set_xticklabels([f"{b:g}" for b in budgets])
        ax.set_xlim(min(budgets) - 0.3, max(budgets) + 0.3)
        ax.grid(alpha=0.3)
    if paired:
        ax = axes[2]
        n = max(len(paired), 1)
        for i, (method, per_b) in enumerate(paired.items()):
            bs = sorted(per_b, key=float)
            x = [float(b) + 0.04 * (i - (n - 1) / 2) for b in bs]
            color, marker = STYLE.get(method, (None, "o"))
            se = [2 * per_b[b]["nll"]["std"] / max(num_seeds, 1) ** 0.5 for b in bs]
            ax.errorbar(x, [per_b[b]["nll"]["mean"] for b in bs], yerr=se, color=color, marker=marker, capsize=3,
                        lw=1.5, ms=6, label=method)
        ax.axhline(0, color="k", lw=1)
        ax.set_xlabel("budget (units of one ordinary training run)")
        ax.set_ylabel("NLL - single model's NLL")
        ax.set_xticks(budgets)
        ax.set_xticklabels([f"{b:g}" for b in budgets])
        ax.set_xlim(min(budgets) - 0.3, max(budgets) + 0.3)
        ax.grid(alpha=0.3)
        ax.set_title(f"paired on the seed, ±2 SE ({num_seeds} seeds)")
    axes[0].set_title("accuracy (higher is better)")
    axes[1].set_title("NLL (lower is better)")
    handles, labels = axes[1].get_legend_handles_labels()
    fig.legend(handles, labels, loc="center right", fontsize=9, frameon=False)
    if title:
        fig.suptitle(title)
    fig.tight_layout(rect=(0, 0, 0.88, 1))
    return save_figure(fig, path)
