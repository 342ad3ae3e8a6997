"""lowloss ensemble: the predictive average of any set of runs, snapshot folders, SWAG or MultiSWAG dirs."""

from __future__ import annotations

from pathlib import Path

import click

from ..cli import common_options


@click.command()
@click.argument("dirs", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--samples", type=int, default=30, show_default=True,
              help="Samples drawn from each SWAG / MultiSWAG directory (its Bayesian model average).")
@click.option("--scale", type=float, default=None,
              help="SWAG sampling scale [default: the one stored with each SWAG directory].")
@click.option("--split", type=click.Choice(["test", "train"]), default="test", show_default=True)
@click.option("--recompute-bn", is_flag=True,
              help="Recompute BN statistics for snapshot members too (SWAG samples always are).")
@common_options(out="runs/ensemble")
def command(dirs, samples, scale, split, recompute_bn, out, seed, device, quiet):
    """Mean-of-softmax ensemble of DIRS (each a run, FGE/SSE folder, SWAG or MultiSWAG directory).

    Every directory counts as one member with equal weight (a snapshot folder or SWAG directory contributes
    its own average); run directories together form a deep ensemble. Writes OUT/ensemble.json (metrics of
    each input, of the ensemble, and of the ensemble by size) and OUT/probs.safetensors (the averaged
    predictive distribution and every input's own).
    """
    from ..methods.ensemble import evaluate_directories

    res = evaluate_directories(dirs, out=Path(out), samples=samples, scale=scale, split=split,
                               recompute_bn=recompute_bn, seed=seed, device=device, quiet=quiet)
    if not quiet:
        from .eval import format_table

        rows = {r["name"]: r["metrics"] for r in res["inputs"]}
        rows[f"ensemble ({len(dirs)})"] = res["ensemble"]
        click.echo(format_table(rows))
