"""Figures of the uncertainty tools: reliability diagrams, dataset-shift box plots, a corruption gallery,
1-D regression bands and two-spirals decision functions.

The ``draw_*`` functions are the figures of the calibrate, shift, regression and spirals runs: they read
the run's run.json contents and the arrays it names.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ..rundir import load_tensors
from . import plt, save_figure

METHOD_COLOURS = {"single": "#4c72b0", "ensemble": "#dd8452", "multiswa": "#55a868", "multiswag": "#c44e52",
                  "espro": "#8172b3", "swag": "#c44e52"}
_FALLBACK = ["#937860", "#da8bc3", "#8c8c8c", "#ccb974", "#64b5cd"]


def colour(name: str, i: int = 0) -> str:
    return METHOD_COLOURS.get(name, _FALLBACK[i % len(_FALLBACK)])


def plot_reliability(entries: dict[str, dict], path: str | Path, title: str = "") -> Path:
    """One column per predictor: per-bin accuracy before (filled) and after (outline) temperature scaling
    against the diagonal of perfect calibration, ECE / NLL before -> after; below, examples per bin (log)."""
    n = len(entries)
    cols = min(n, 4)
    rows = math.ceil(n / cols)
    fig = plt.figure(figsize=(3.8 * cols, 5.2 * rows))
    # per row of panels: reliability, counts, and a spacer that leaves room for the next row's titles
    gs = fig.add_gridspec(3 * rows, cols, height_ratios=[3, 1, 0.9] * rows, hspace=0.1, wspace=0.35,
                          top=0.9 if rows == 1 else 0.94, bottom=0.02)
    for k, (name, res) in enumerate(entries.items()):
        r, c = divmod(k, cols)
        ax = fig.add_subplot(gs[3 * r, c])
        axc = fig.add_subplot(gs[3 * r + 1, c], sharex=ax)
        b, a = res["reliability"]["before"], res["reliability"]["after"]
        edges = np.asarray(b["edges"])
        centres, width = (edges[:-1] + edges[1:]) / 2, np.diff(edges)
        styles = ((b, dict(color="#4c72b0", alpha=0.55, label="before")),
                  (a, dict(facecolor="none", edgecolor="#dd8452", linewidth=1.6, label="after")))
        for rel, kw in styles:
            count = np.asarray(rel["count"])
            acc = np.where(count > 0, rel["accuracy"], 0.0)
            ax.bar(centres, acc, width=width, align="center", **kw)
            axc.bar(centres, count, width=width, align="center", **kw)
        ax.plot([0, 1], [0, 1], "k--", lw=0.8, label="perfect")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_ylabel("accuracy")
        ax.tick_params(labelbottom=False)
        axc.set_yscale("log")
        axc.set_ylabel("count")
        axc.set_xlabel("confidence")
        bf, af = res["before"], res["after"]
        m = res.get("members", 1)
        ax.set_title(f"{name}\nT = {res['temperature']:.2f} ({m} member{'s' if m != 1 else ''})", fontsize=9)
        ax.text(0.03, 0.97, f"ECE {bf['ece']:.3f} -> {af['ece']:.3f}\nNLL {bf['nll']:.3f} -> {af['nll']:.3f}\n"
                f"acc {bf['accuracy']:.3f}" + ("\nT not fitted (see note)" if res.get("note") else ""),
                transform=ax.transAxes, va="top", fontsize=8, bbox=dict(facecolor="white", alpha=0.8, edgecolor="none"))
        ax.legend(loc="lower right", fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10, y=0.99)
    return save_figure(fig, path)


def plot_shift(result: dict, path: str | Path, metrics=("accuracy", "nll", "ece")) -> Path:
    """Ovadia et al.'s figure: for each metric, box plots over corruptions at every severity (plus the clean
    test data), one colour per method; top row without, bottom row with temperature scaling. With per-member
    numbers (result["members"]) the top row also shows the single model's mean over corruptions with error
    bars of 2 standard errors over the members' seeds."""
    import matplotlib.patheffects as pe

    methods = result["info"]["methods"]
    sevs = [str(s) for s in result["info"]["severities"]]
    groups = ["clean"] + sevs
    fig, axes = plt.subplots(2, len(metrics), figsize=(4.6 * len(metrics), 7.2), squeeze=False)
    k = len(methods)
    width = 0.8 / k
    for row, scaled in enumerate((False, True)):
        src = result["temperature_scaled"] if scaled else result
        clean = result["clean"]["temperature_scaled"] if scaled else result["clean"]
        for col, metric in enumerate(metrics):
            ax = axes[row, col]
            for j, name in enumerate(methods):
                data = [[clean[name][metric]]] + [[src[name][c][s][metric] for c in src[name] if s in src[name][c]]
                                                  for s in sevs]
                pos = np.arange(len(groups)) + (j - (k - 1) / 2) * width
                bp = ax.boxplot(data, positions=pos, widths=width * 0.85, patch_artist=True, showfliers=True,
                                flierprops=dict(markersize=2, alpha=0.6), medianprops=dict(color="black", lw=1),
                                whis=1.5)
                for patch in bp["boxes"]:
                    patch.set_facecolor(colour(name, j))
                    patch.set_alpha(0.85)
                for fl in bp["fliers"]:
                    fl.set_markerfacecolor(colour(name, j))
                for med in bp["medians"]:  # visible in the method's colour even when a box is one value
                    med.set_color(colour(name, j))
                    med.set_linewidth(2.5)
                    med.set_path_effects([pe.Stroke(linewidth=3.5, foreground="black"), pe.Normal()])
            if not scaled and result.get("members"):  # single model: mean over member seeds with 2-SE bars
                mem = result["members"]
                per = [[r[metric] for r in mem["clean"]]] + [
                    np.mean([[r[metric] for r in mem[c][s]] for c in mem if c != "clean" and s in mem[c]], 0)
                    for s in sevs]
                per = [np.asarray(v, float) for v in per]
                n = len(per[0])
                ax.errorbar(np.arange(len(groups)), [v.mean() for v in per],
                            yerr=[2 * v.std(ddof=1) / np.sqrt(n) if n > 1 else 0 for v in per], color="black",
                            marker="o", ms=3, lw=0.8, capsize=3, zorder=5,
                            label=f"single, mean over corruptions ± 2 SE over {n} seeds")
                ax.legend(loc="best", fontsize=7)
            ax.set_xticks(np.arange(len(groups)))
            ax.set_xticklabels(["test"] + sevs)
            ax.set_xlabel("shift intensity (severity)")
            ax.set_ylabel(metric.upper() if metric != "accuracy" else "accuracy")
            ax.set_title(f"{metric}{' (temperature scaled)' if scaled else ''}", fontsize=10)
            ax.grid(axis="y", alpha=0.3)
            for g in range(len(groups) - 1):
                ax.axvline(g + 0.5, color="grey", lw=0.4, alpha=0.4)
    handles = [plt.Rectangle((0, 0), 1, 1, color=colour(n, j)) for j, n in enumerate(methods)]
    members = result["info"].get("members", {})
    labels = [f"{n} ({members.get(n, '?')})" for n in methods]
    d = result["info"].get("data", {}).get("name", "")
    fig.suptitle(f"dataset shift on {d}: each box spans {len(result['info']['corruptions'])} shift(s) "
                 f"({result['info']['calibration'].get('eval_size', '?')} test images each)", fontsize=11)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    fig.legend(handles, labels, loc="lower center", ncol=len(methods), frameon=False, fontsize=10,
               title="method (members)", title_fontsize=9)
    return save_figure(fig, path)


def plot_corruption_gallery(images: dict[str, list[np.ndarray]], clean: np.ndarray, path: str | Path) -> Path:
    """Rows: corruptions; columns: clean then severities 1-5. Images are [C, H, W] in [0, 1]."""
    rows = len(images)
    fig, axes = plt.subplots(rows, 6, figsize=(6 * 1.2, rows * 1.2), squeeze=False)

    def show(ax, im):
        if im.shape[0] == 1:
            ax.imshow(im[0], cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        else:
            ax.imshow(np.clip(np.transpose(im, (1, 2, 0)), 0, 1), interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])

    for r, (name, ims) in enumerate(images.items()):
        show(axes[r, 0], clean)
        for s, im in enumerate(ims):
            show(axes[r, s + 1], im)
        axes[r, 0].set_ylabel(name.replace("_", " "), rotation=0, ha="right", va="center", fontsize=8)
    for s in range(6):
        axes[0, s].set_title("clean" if s == 0 else f"severity {s}", fontsize=8)
    fig.tight_layout(pad=0.2)
    return save_figure(fig, path)


def plot_regression(x_train, y_train, grid, truth, panels: dict[str, dict], path: str | Path,
                    clusters=None) -> Path:
    """One panel per method: data, true function, predictive mean and +-2 std bands (the std includes the
    observation noise; the inner band is the epistemic part alone)."""
    n = len(panels)
    cols = min(n, 2)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 3.6 * rows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    for j, (ax, (name, p)) in enumerate(zip(axes.flat, panels.items())):
        c = colour(name, j)
        mean, std, epi = np.asarray(p["mean"]), np.asarray(p["std"]), np.asarray(p["epistemic_std"])
        ax.fill_between(grid, mean - 2 * std, mean + 2 * std, color=c, alpha=0.18, lw=0,
                        label="+-2 std (with noise)")
        ax.fill_between(grid, mean - 2 * epi, mean + 2 * epi, color=c, alpha=0.35, lw=0, label="+-2 std (function)")
        for k, f in enumerate(p.get("functions", [])[:8]):
            ax.plot(grid, f, color=c, lw=0.5, alpha=0.5, label="members" if k == 0 else None)
        ax.plot(grid, truth, "k--", lw=1.2, label="true function")
        ax.plot(grid, mean, color=c, lw=1.8, label="predictive mean")
        ax.scatter(x_train, y_train, s=8, color="black", zorder=5, label="data")
        lo, hi = float(np.min(y_train)), float(np.max(y_train))
        pad = 0.6 * (hi - lo)
        ax.set_ylim(lo - pad, hi + pad)
        ax.set_xlim(grid[0], grid[-1])
        ax.set_title(f"{name}: test log-lik {p['test_ll']:.3f}, rmse {p['rmse']:.3f}", fontsize=9)
        ax.set_xlabel("x")
        ax.set_ylabel("y")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.tight_layout(rect=(0, 0.06 if rows > 1 else 0.1, 1, 1))
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=8, frameon=False)
    return save_figure(fig, path)


def plot_spirals(x, y, xx, yy, panels: list[tuple[str, np.ndarray]], path: str | Path, cols: int = 4) -> Path:
    """Decision functions (probability of class 1 on a grid) of several models, training data on top."""
    n = len(panels)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.0 * cols, 3.0 * rows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    for ax, (title, z) in zip(axes.flat, panels):
        ax.contourf(xx, yy, z, levels=np.linspace(0, 1, 11), cmap="RdBu_r", alpha=0.85)
        ax.contour(xx, yy, z, levels=[0.5], colors="k", linewidths=0.8)
        ax.scatter(x[y == 0, 0], x[y == 0, 1], s=3, c="#08306b", alpha=0.6)
        ax.scatter(x[y == 1, 0], x[y == 1, 1], s=3, c="#67000d", alpha=0.6)
        ax.set_title(title, fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_aspect("equal")
    fig.tight_layout()
    return save_figure(fig, path)


# ----------------------------------------------------------------------------------------------- the runs' figures
def draw_calibration(result: dict, out: Path) -> list[Path]:
    """reliability.png of a calibrate run."""
    plan = result["calibration"]
    return [plot_reliability(result["results"], Path(out) / "reliability.png",
                             title=f"reliability on {plan['eval_size']} held-out {result['data']['name']} examples; "
                                   f"T fitted on {plan['calibration_size']} ({plan['source']})")]


def draw_shift(result: dict, out: Path) -> list[Path]:
    """shift.png of a shift run, and corruptions.png from the gallery it saved."""
    out = Path(out)
    paths = [plot_shift(result, out / "shift.png")]
    name = result["info"].get("gallery")
    if name:
        images, _ = load_tensors(out / name)
        gallery = {c: [images[f"{c}/{s}"].numpy() for s in range(1, 6)] for c in result["info"]["corruptions"]}
        paths.append(plot_corruption_gallery(gallery, images["clean"].numpy(), out / "corruptions.png"))
    return paths


def draw_regression(result: dict, out: Path) -> list[Path]:
    """regression.png of a regression run, from the bands it saved."""
    out = Path(out)
    bands, _ = load_tensors(out / result["bands"])
    panels = {name: {"mean": bands[f"{name}/mean"].numpy(), "std": bands[f"{name}/std"].numpy(),
                     "epistemic_std": bands[f"{name}/epistemic_std"].numpy(),
                     "functions": bands[f"{name}/functions"].numpy(), **r}
              for name, r in result["results"].items()}
    return [plot_regression(bands["train_x"].numpy(), bands["train_y"].numpy(), bands["grid"].numpy(),
                            bands["truth"].numpy(), panels, out / "regression.png")]


def draw_spirals(result: dict, out: Path) -> list[Path]:
    """spirals.png of a spirals run, from the decision functions it saved."""
    out = Path(out)
    t, _ = load_tensors(out / result["decision"])
    g = t["grid"].numpy()
    xx, yy = np.meshgrid(g, g)
    panels = [(f"sample {i + 1}: train {s['train_accuracy']:.3f} test {s['test_accuracy']:.3f}",
               t["samples"][i].reshape(xx.shape).numpy()) for i, s in enumerate(result["samples"])]
    e = result["ensemble"]
    panels.append((f"ensemble of {e['members']}: train {e['train_accuracy']:.3f} test {e['test_accuracy']:.3f}",
                   t["ensemble"].reshape(xx.shape).numpy()))
    return [plot_spirals(t["train_x"].numpy(), t["train_y"].numpy(), xx, yy, panels, out / "spirals.png")]
