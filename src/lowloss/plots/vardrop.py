"""Figure of variational dropout runs: per-layer histograms of log alpha = log(sigma^2 / mu^2).

log alpha = -2 log SNR with SNR = |mu| / sigma. Weights right of log alpha = 3 (SNR < 0.22) carry their
information in the variance rather than the mean: a network whose weights all sit there has drifted to a
variance network (Neklyudov et al. 2018), and its deterministic (mean-weight) prediction fails.
Variance layers (mu = 0) have log alpha = +inf and are drawn as a bar beyond the right edge; layers left
point estimates (sigma = 0, log alpha = -inf) are named in the legend.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from ..rundir import load_tensors
from . import plt, save_figure

VARIANCE_THRESHOLD = 3.0


def draw_vardrop(result: dict, out: Path) -> list[Path]:
    """``log_alpha.png`` of a vardrop run (one posterior, or the comparison of several): the per-layer log alpha
    arrays its run.json names under ``log_alpha``."""
    out = Path(out)
    files = result["log_alpha"]
    if isinstance(files, str):
        files = {result["config"]["posterior"]: files}
    stats = {}
    for post, name in files.items():
        tensors, meta = load_tensors(out / name)
        stats[post] = {layer: tensors[layer] for layer in meta["layers"].split(",")}
    cfg = result["config"]
    return [plot_log_alpha(stats, out / "log_alpha.png", title=f"{cfg['model']} on {cfg['data']}")]


def plot_log_alpha(stats: dict[str, dict[str, torch.Tensor]], path: str | Path, *, bins: int = 56,
                   lo: float = -12.0, hi: float = 16.0, title: str = "") -> Path:
    """`stats`: {posterior: {layer name: per-weight log alpha (1-D; +inf for variance layers, -inf for layers
    left point estimates, which are only named in the legend)}}.

    One panel per posterior; per layer a step histogram (fraction of the layer's weights per bin, so
    layers of different sizes compare), a vertical line where all of a layer's weights share one log
    alpha (layer-wise, dropout), and a bar at "+inf" for variance layers. Finite values outside
    [lo, hi] are drawn in the edge bins (their count is in the legend).
    """
    names = list(stats)
    if not names:
        raise ValueError("no runs to plot")
    cols = min(3, len(names))
    rows = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.8 * cols, 3.4 * rows), squeeze=False)
    edges = torch.linspace(lo, hi, bins + 1, dtype=torch.float64)
    inf_x = hi + 2.5
    for ax, post in zip(axes.flat, names):
        total, above = 0, 0
        for i, (layer, la) in enumerate(stats[post].items()):
            color = f"C{i % 10}"
            la = la.reshape(-1).double()
            n = la.numel()
            if bool((torch.isinf(la) & (la < 0)).all()):  # a point-estimate layer: named in the legend only
                ax.plot([], [], color=color, lw=0, marker="x", label=f"{layer} ({n}): point estimate")
                continue
            total += n
            above += int((la > VARIANCE_THRESHOLD).sum())
            inf = torch.isinf(la) & (la > 0)
            fin = la[~inf]
            if inf.all():
                ax.bar([inf_x], [1.0], width=1.0, color=color, alpha=0.5, label=f"{layer} ({n}): variance, +inf")
                continue
            if fin.max() - fin.min() < 1e-6:
                v = float(fin[0])
                ax.axvline(min(max(v, lo), hi), color=color, lw=1.6, ls=(0, (4, 2 + i)),
                           label=f"{layer} ({n}): all {v:.2f}")
                continue
            out = int(((fin < lo) | (fin > hi)).sum())
            weights = torch.full_like(fin, 1.0 / n)
            ax.hist(fin.clamp(lo, hi).numpy(), bins=edges.numpy(), weights=weights.numpy(), histtype="step",
                    lw=1.4, color=color, label=f"{layer} ({n})" + (f", {out} clipped" if out else ""))
        frac = above / max(total, 1)
        ax.axvline(VARIANCE_THRESHOLD, color="k", ls="--", lw=0.8)
        ax.set_xlim(lo - 0.5, inf_x + 1.0)
        ticks = list(range(int(lo), int(hi) - 1, 4))
        ax.set_xticks(ticks + [inf_x], [str(t) for t in ticks] + ["+inf"])
        ax.set_yscale("log")
        ax.set_ylim(1e-4, 1.5)
        ax.legend(fontsize=6.3, loc="upper left")
        ax.set_title(f"{post}: {100 * frac:.1f}% of variational weights with log alpha > {VARIANCE_THRESHOLD:g}",
                     fontsize=9)
        ax.set_xlabel("log alpha = log(sigma^2 / mu^2)   [SNR |mu|/sigma = exp(-log alpha / 2)]", fontsize=7.5)
        ax.set_ylabel("fraction of the layer's weights", fontsize=7.5)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    fig.suptitle((title + ": " if title else "") + "log alpha per layer (dashed: log alpha = 3, SNR 0.22)",
                 fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)
