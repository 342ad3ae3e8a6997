"""lowloss espro: ESPRO ensembles, one simplex per mode, against the deep ensemble of the same modes."""

from __future__ import annotations

import click

from ..cli import common_options
from .simplex import fmt, make_config, spro_options


@click.command()
@click.argument("runs", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--vertices", "-k", type=int, default=3, show_default=True,
              help="Vertices of each simplex, its mode included.")
@click.option("--members", type=int, default=25, show_default=True,
              help="Sampled models per simplex (BN statistics recomputed for each).")
@spro_options
@common_options(out="runs/espro")
def command(runs, vertices, members, epochs, lr, lmbda, samples, wd, batch_size, resume, out, seed, device, quiet):
    """Grow one simplex per mode RUNS (OUT/simplex_<i>) and compare the ESPRO ensemble with the deep ensemble.

    Writes OUT/espro.json = {espro: metrics, deep_ensemble: metrics, simplexes: [...]}, metrics being test
    accuracy, NLL, ECE (15 bins) and Brier. Finished simplexes are reused when the command is run again.
    """
    from ..methods.spro import espro

    cfg = make_config(epochs, lr, lmbda, samples, wd, batch_size)
    res = espro(list(runs), out, vertices=vertices, cfg=cfg, members=members, seed=seed, device=device,
                resume=resume, quiet=quiet)
    if not quiet:
        click.echo(f"{out}: {len(runs)} modes x {vertices} vertices, {members} samples per simplex")
        click.echo(f"  espro          {fmt(res['espro'])}")
        click.echo(f"  deep ensemble  {fmt(res['deep_ensemble'])}")
