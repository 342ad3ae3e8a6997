"""lowloss dimension: a lower bound on the dimension of the low-loss manifold connecting two modes."""

from __future__ import annotations

import click

from ..cli import common_options
from .simplex import make_config, spro_options


@click.command()
@click.argument("run_a", type=click.Path(exists=True, file_okay=False))
@click.argument("run_b", type=click.Path(exists=True, file_okay=False))
@click.option("--max-connectors", type=int, default=12, show_default=True,
              help="Stop after this many connectors if the volume has not collapsed.")
@click.option("--eval-samples", type=int, default=10, show_default=True,
              help="Sampled models whose train accuracy is recorded after each connector.")
@click.option("--collapse", type=float, default=1e-3, show_default=True,
              help="The volume has collapsed when the new connector's height over the other vertices, relative to "
                   "the RMS edge, falls below this (or the log-volume is -inf).")
@spro_options(lmbda=0.1)
@common_options(out="runs/dimension")
def command(run_a, run_b, max_connectors, eval_samples, collapse, epochs, lr, lmbda, samples, wd, batch_size,
            resume, out, seed, device, quiet):
    """Add connectors between RUN_A and RUN_B one at a time until the complex's volume collapses.

    Writes OUT/dimension.json (connectors, log_volume, sample_train_accuracy: lists of equal length;
    collapsed_at, dimension_lower_bound) and OUT/dimension.png.
    """
    from ..methods.spro import dimension

    cfg = make_config(epochs, lr, lmbda, samples, wd, batch_size)
    res = dimension(run_a, run_b, out, max_connectors=max_connectors, cfg=cfg, eval_samples=eval_samples,
                    collapse=collapse, seed=seed, device=device, resume=resume, quiet=quiet)
    if not quiet:
        for n, lv, h, acc in zip(res["connectors"], res["log_volume"], res["relative_height"],
                                 res["sample_train_accuracy"]):
            click.echo(f"  {n:>2} connectors: log-volume {lv:9.3f}  relative height {h:.2e}  "
                       f"sample train acc {100 * acc:.2f}%")
        click.echo(f"dimension >= {res['dimension_lower_bound']}"
                   + (f" (collapse at connector {res['collapsed_at']})" if res["collapsed_at"] else
                      " (no collapse within --max-connectors)"))
