"""lowloss eval: metrics of runs and of their ensemble."""

from __future__ import annotations

from pathlib import Path

import click

from ..cli import common_options


def format_table(rows: dict[str, dict[str, float]], cols=("accuracy", "nll", "ece", "brier")) -> str:
    w = max(len(k) for k in rows) if rows else 4
    head = f"{'':<{w}}  " + "  ".join(f"{c:>9}" for c in cols)
    lines = [head] + [f"{k:<{w}}  " + "  ".join(f"{v.get(c, float('nan')):>9.4f}" for c in cols) for k, v in rows.items()]
    return "\n".join(lines)


@click.command(name="eval")
@click.argument("runs", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--split", type=click.Choice(["test", "train"]), default="test", show_default=True)
@common_options(out="runs/eval")
def command(runs, split, out, seed, device, quiet):
    """Accuracy, NLL, ECE (15 bins) and Brier of each run and of their ensemble (mean of softmax)."""
    import torch

    from .. import metrics as M
    from ..engine.evaluate import predict_probs
    from ..runs import load_runs
    from ..utils import write_json

    loaded = load_runs(runs, device=device, same_architecture=False)
    rows, probs = {}, []
    for r in loaded:
        p, y = predict_probs(r.model, r.vector, getattr(r.data, split))
        probs.append(p)
        rows[str(r.path)] = M.classification_metrics(p, y)
    if len(loaded) > 1:
        rows[f"ensemble ({len(loaded)})"] = M.classification_metrics(torch.stack(probs).mean(0), y)
    if not quiet:
        click.echo(format_table(rows))
    Path(out).mkdir(parents=True, exist_ok=True)
    write_json(Path(out) / "eval.json", {"split": split, "runs": list(runs), "metrics": rows,
                                         "ece_bins": M.ECE_BINS})
